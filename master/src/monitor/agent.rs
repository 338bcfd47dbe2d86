//! The seam between monitors and agents: [`AgentApi`], the agent calls a monitor makes, each
//! with its deadline. [`Agents`] implements it over the master's pooled mTLS channels; the
//! in-process monitor tests implement it with a fake (`monitor/tests.rs`).

use futures::future::BoxFuture;
use switchyard::pb::agent::v1 as apb;
use switchyard::pb::master::v1::Node;

use crate::agents::{Agents, act, call};

/// The reply of an agent call: a gRPC status is what agents (and deadlines) fail with.
pub type AgentFuture<'a, T> = BoxFuture<'a, Result<T, tonic::Status>>;

/// Declares [`AgentApi`] and its implementation for [`Agents`] from one list, so that a call
/// is named once with its request, response and deadline (`call`: observing, `act`: acting).
macro_rules! agent_calls {
    ($( $(#[$doc:meta])* $name:ident($req:ty) -> $resp:ty, $deadline:ident; )*) => {
        /// The agent calls monitors make, one per `NodeControllerService` method they use.
        pub trait AgentApi: Send + Sync + std::fmt::Debug {
            $( $(#[$doc])* fn $name(&self, node: &Node, req: $req) -> AgentFuture<'_, $resp>; )*
        }

        impl AgentApi for Agents {
            $(
                fn $name(&self, node: &Node, req: $req) -> AgentFuture<'_, $resp> {
                    let client = self.node_controller(node);
                    let request = self.as_leader(req);
                    Box::pin(async move {
                        let mut client = client.map_err(tonic::Status::unavailable)?;
                        $deadline(client.$name(request?)).await
                    })
                }
            )*
        }
    };
}

agent_calls! {
    /// The node's workers.
    list_workers(apb::ListWorkersRequest) -> apb::ListWorkersResponse, call;
    /// Starts a worker (waits until it answers).
    start_worker(apb::StartWorkerRequest) -> apb::StartWorkerResponse, act;
    /// Stops a worker (waits until it is reaped).
    stop_worker(apb::StopWorkerRequest) -> apb::StopWorkerResponse, act;
    /// A web worker's listener (NOT_STARTED when it has none).
    get_web_transport(apb::GetWebTransportRequest) -> apb::GetWebTransportResponse, call;
    /// Starts a web worker's listener.
    start_web_transport(apb::StartWebTransportRequest) -> apb::StartWebTransportResponse, act;
    /// A web worker's services.
    list_web_services(apb::ListWebServicesRequest) -> apb::ListWebServicesResponse, call;
    /// Mounts (or replaces) a service on a web worker.
    start_web_service(apb::StartWebServiceRequest) -> apb::StartWebServiceResponse, act;
    /// Unmounts a service of a web worker.
    stop_web_service(apb::StopWebServiceRequest) -> apb::StopWebServiceResponse, act;
    /// A router worker's WAMP listener (NOT_STARTED when it has none).
    get_router_transport(apb::GetRouterTransportRequest) -> apb::GetRouterTransportResponse, call;
    /// Starts a router worker's WAMP listener on a free port of a range.
    start_router_transport(apb::StartRouterTransportRequest) -> apb::StartRouterTransportResponse, call;
    /// A router worker's realms.
    list_router_realms(apb::ListRouterRealmsRequest) -> apb::ListRouterRealmsResponse, call;
    /// Starts a realm on a router worker.
    start_router_realm(apb::StartRouterRealmRequest) -> apb::StartRouterRealmResponse, call;
    /// Stops a realm of a router worker.
    stop_router_realm(apb::StopRouterRealmRequest) -> apb::StopRouterRealmResponse, call;
    /// A router worker's links.
    list_router_links(apb::ListRouterLinksRequest) -> apb::ListRouterLinksResponse, call;
    /// Starts (or re-points) a router link.
    start_router_link(apb::StartRouterLinkRequest) -> apb::StartRouterLinkResponse, call;
    /// Stops a router link.
    stop_router_link(apb::StopRouterLinkRequest) -> apb::StopRouterLinkResponse, call;
}

/// Whether a call failed because the node did not answer: the node's remaining work is skipped
/// for the iteration, so one partitioned node delays the others by at most one deadline.
pub fn unreachable(s: &tonic::Status) -> bool {
    matches!(
        s.code(),
        tonic::Code::DeadlineExceeded | tonic::Code::Unavailable
    )
}
