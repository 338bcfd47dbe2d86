//! The master as the one endpoint (README, "The master as the one endpoint"): the master also serves the agents'
//! `NodeControllerService` and `NativeProcessService`, forwarding each call to the node named by
//! the `switchyard-node` request metadata (authid or oid) over its pooled mTLS channel, unary and
//! streaming alike, with the caller's deadline (`grpc-timeout`) and principal (`switchyard-who`,
//! which the agent names in its events); status codes and error details come back unchanged, and
//! a cancelled call cancels the forwarded one. Unknown node: NOT_FOUND; offline: UNAVAILABLE;
//! none named: INVALID_ARGUMENT. Admin role only (the role layer's master policy).
//!
//! ```sh
//! grpcurl -H 'switchyard-node: node1' ... master:9700 switchyard.agent.v1.NativeProcessService/GetProcessStats
//! ```

use std::sync::Arc;

use switchyard::error::{Reason, invalid_argument, status};
use switchyard::pb::agent::v1 as pb;
use switchyard::pb::agent::v1::native_process_service_server::NativeProcessService;
use switchyard::pb::agent::v1::node_controller_service_server::NodeControllerService;
use switchyard::pb::master::v1::{Node, NodeStatus};
use tonic::codegen::BoxStream;
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status};

use crate::agents::Agents;
use crate::core::Core;

/// The request metadata key naming the target node.
pub const NODE_METADATA: &str = "switchyard-node";
/// The metadata key carrying the original caller to the agent.
pub const WHO_METADATA: &str = "switchyard-who";

type R<T> = Result<Response<T>, Status>;

/// The gateway to every node.
#[derive(Debug, Clone)]
pub struct Gateway(pub Arc<Core>);

impl Gateway {
    /// The node a call names.
    async fn node<T>(&self, request: &Request<T>) -> Result<Node, Status> {
        let name = request
            .metadata()
            .get(NODE_METADATA)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
            .ok_or_else(|| {
                invalid_argument(
                    NODE_METADATA,
                    "name the target node (authid or oid) in this request metadata key",
                )
            })?;
        let node = self
            .0
            .resolve_node(NODE_METADATA, name)
            .await
            .map_err(Status::from)?;
        if node.status != NodeStatus::Online as i32 {
            return Err(status(
                Reason::NodeUnavailable,
                format!(
                    "node '{}' is offline (no heartbeat within the grace period)",
                    node.authid
                ),
            ));
        }
        Ok(node)
    }

    /// The client of the named node and the request to send it.
    async fn route<T, C>(
        &self,
        request: Request<T>,
        client: fn(&Agents, &Node) -> Result<C, String>,
    ) -> Result<(C, Request<T>), Status> {
        let node = self.node(&request).await?;
        let client = client(&self.0.agents, &node).map_err(|e| {
            status(
                Reason::NodeUnavailable,
                format!("node '{}': {e}", node.authid),
            )
        })?;
        let who = switchyard::auth::caller(&request).map(|p| p.uri());
        let timeout = request.metadata().get("grpc-timeout").cloned();
        let mut out = Request::new(request.into_inner());
        if let Some(t) = timeout {
            out.metadata_mut().insert("grpc-timeout", t);
        }
        if let Some(v) = who.and_then(|w| MetadataValue::try_from(w).ok()) {
            out.metadata_mut().insert(WHO_METADATA, v);
        }
        Ok((client, out))
    }
}

#[tonic::async_trait]
impl NodeControllerService for Gateway {
    async fn get_status(&self, request: Request<pb::GetStatusRequest>) -> R<pb::GetStatusResponse> {
        let (mut client, request) = self.route(request, Agents::node_controller).await?;
        client.get_status(request).await
    }

    async fn get_system_stats(
        &self,
        request: Request<pb::GetSystemStatsRequest>,
    ) -> R<pb::GetSystemStatsResponse> {
        let (mut client, request) = self.route(request, Agents::node_controller).await?;
        client.get_system_stats(request).await
    }

    async fn list_workers(
        &self,
        request: Request<pb::ListWorkersRequest>,
    ) -> R<pb::ListWorkersResponse> {
        let (mut client, request) = self.route(request, Agents::node_controller).await?;
        client.list_workers(request).await
    }

    async fn get_worker(&self, request: Request<pb::GetWorkerRequest>) -> R<pb::GetWorkerResponse> {
        let (mut client, request) = self.route(request, Agents::node_controller).await?;
        client.get_worker(request).await
    }

    async fn start_worker(
        &self,
        request: Request<pb::StartWorkerRequest>,
    ) -> R<pb::StartWorkerResponse> {
        let (mut client, request) = self.route(request, Agents::node_controller).await?;
        client.start_worker(request).await
    }

    async fn stop_worker(
        &self,
        request: Request<pb::StopWorkerRequest>,
    ) -> R<pb::StopWorkerResponse> {
        let (mut client, request) = self.route(request, Agents::node_controller).await?;
        client.stop_worker(request).await
    }

    async fn get_worker_log(
        &self,
        request: Request<pb::GetWorkerLogRequest>,
    ) -> R<pb::GetWorkerLogResponse> {
        let (mut client, request) = self.route(request, Agents::node_controller).await?;
        client.get_worker_log(request).await
    }

    async fn stream_worker_log(
        &self,
        request: Request<pb::StreamWorkerLogRequest>,
    ) -> R<BoxStream<pb::StreamWorkerLogResponse>> {
        let (mut client, request) = self.route(request, Agents::node_controller).await?;
        let stream = client.stream_worker_log(request).await?.into_inner();
        Ok(Response::new(Box::pin(stream)))
    }

    async fn start_web_transport(
        &self,
        request: Request<pb::StartWebTransportRequest>,
    ) -> R<pb::StartWebTransportResponse> {
        let (mut client, request) = self.route(request, Agents::node_controller).await?;
        client.start_web_transport(request).await
    }

    async fn get_web_transport(
        &self,
        request: Request<pb::GetWebTransportRequest>,
    ) -> R<pb::GetWebTransportResponse> {
        let (mut client, request) = self.route(request, Agents::node_controller).await?;
        client.get_web_transport(request).await
    }

    async fn stop_web_transport(
        &self,
        request: Request<pb::StopWebTransportRequest>,
    ) -> R<pb::StopWebTransportResponse> {
        let (mut client, request) = self.route(request, Agents::node_controller).await?;
        client.stop_web_transport(request).await
    }

    async fn start_web_service(
        &self,
        request: Request<pb::StartWebServiceRequest>,
    ) -> R<pb::StartWebServiceResponse> {
        let (mut client, request) = self.route(request, Agents::node_controller).await?;
        client.start_web_service(request).await
    }

    async fn stop_web_service(
        &self,
        request: Request<pb::StopWebServiceRequest>,
    ) -> R<pb::StopWebServiceResponse> {
        let (mut client, request) = self.route(request, Agents::node_controller).await?;
        client.stop_web_service(request).await
    }

    async fn list_web_services(
        &self,
        request: Request<pb::ListWebServicesRequest>,
    ) -> R<pb::ListWebServicesResponse> {
        let (mut client, request) = self.route(request, Agents::node_controller).await?;
        client.list_web_services(request).await
    }

    async fn start_router_transport(
        &self,
        request: Request<pb::StartRouterTransportRequest>,
    ) -> R<pb::StartRouterTransportResponse> {
        let (mut client, request) = self.route(request, Agents::node_controller).await?;
        client.start_router_transport(request).await
    }

    async fn get_router_transport(
        &self,
        request: Request<pb::GetRouterTransportRequest>,
    ) -> R<pb::GetRouterTransportResponse> {
        let (mut client, request) = self.route(request, Agents::node_controller).await?;
        client.get_router_transport(request).await
    }

    async fn start_router_realm(
        &self,
        request: Request<pb::StartRouterRealmRequest>,
    ) -> R<pb::StartRouterRealmResponse> {
        let (mut client, request) = self.route(request, Agents::node_controller).await?;
        client.start_router_realm(request).await
    }

    async fn stop_router_realm(
        &self,
        request: Request<pb::StopRouterRealmRequest>,
    ) -> R<pb::StopRouterRealmResponse> {
        let (mut client, request) = self.route(request, Agents::node_controller).await?;
        client.stop_router_realm(request).await
    }

    async fn list_router_realms(
        &self,
        request: Request<pb::ListRouterRealmsRequest>,
    ) -> R<pb::ListRouterRealmsResponse> {
        let (mut client, request) = self.route(request, Agents::node_controller).await?;
        client.list_router_realms(request).await
    }

    async fn start_router_link(
        &self,
        request: Request<pb::StartRouterLinkRequest>,
    ) -> R<pb::StartRouterLinkResponse> {
        let (mut client, request) = self.route(request, Agents::node_controller).await?;
        client.start_router_link(request).await
    }

    async fn stop_router_link(
        &self,
        request: Request<pb::StopRouterLinkRequest>,
    ) -> R<pb::StopRouterLinkResponse> {
        let (mut client, request) = self.route(request, Agents::node_controller).await?;
        client.stop_router_link(request).await
    }

    async fn list_router_links(
        &self,
        request: Request<pb::ListRouterLinksRequest>,
    ) -> R<pb::ListRouterLinksResponse> {
        let (mut client, request) = self.route(request, Agents::node_controller).await?;
        client.list_router_links(request).await
    }
}

#[tonic::async_trait]
impl NativeProcessService for Gateway {
    async fn get_cpu_count(
        &self,
        request: Request<pb::GetCpuCountRequest>,
    ) -> R<pb::GetCpuCountResponse> {
        let (mut client, request) = self.route(request, Agents::native_process).await?;
        client.get_cpu_count(request).await
    }

    async fn get_cpus(&self, request: Request<pb::GetCpusRequest>) -> R<pb::GetCpusResponse> {
        let (mut client, request) = self.route(request, Agents::native_process).await?;
        client.get_cpus(request).await
    }

    async fn get_cpu_affinity(
        &self,
        request: Request<pb::GetCpuAffinityRequest>,
    ) -> R<pb::GetCpuAffinityResponse> {
        let (mut client, request) = self.route(request, Agents::native_process).await?;
        client.get_cpu_affinity(request).await
    }

    async fn set_cpu_affinity(
        &self,
        request: Request<pb::SetCpuAffinityRequest>,
    ) -> R<pb::SetCpuAffinityResponse> {
        let (mut client, request) = self.route(request, Agents::native_process).await?;
        client.set_cpu_affinity(request).await
    }

    async fn get_process_info(
        &self,
        request: Request<pb::GetProcessInfoRequest>,
    ) -> R<pb::GetProcessInfoResponse> {
        let (mut client, request) = self.route(request, Agents::native_process).await?;
        client.get_process_info(request).await
    }

    async fn get_process_stats(
        &self,
        request: Request<pb::GetProcessStatsRequest>,
    ) -> R<pb::GetProcessStatsResponse> {
        let (mut client, request) = self.route(request, Agents::native_process).await?;
        client.get_process_stats(request).await
    }

    async fn get_process_monitor(
        &self,
        request: Request<pb::GetProcessMonitorRequest>,
    ) -> R<pb::GetProcessMonitorResponse> {
        let (mut client, request) = self.route(request, Agents::native_process).await?;
        client.get_process_monitor(request).await
    }

    async fn set_process_stats_monitoring(
        &self,
        request: Request<pb::SetProcessStatsMonitoringRequest>,
    ) -> R<pb::SetProcessStatsMonitoringResponse> {
        let (mut client, request) = self.route(request, Agents::native_process).await?;
        client.set_process_stats_monitoring(request).await
    }

    async fn stream_process_stats(
        &self,
        request: Request<pb::StreamProcessStatsRequest>,
    ) -> R<BoxStream<pb::StreamProcessStatsResponse>> {
        let (mut client, request) = self.route(request, Agents::native_process).await?;
        let stream = client.stream_process_stats(request).await?.into_inner();
        Ok(Response::new(Box::pin(stream)))
    }

    async fn start_manhole(
        &self,
        request: Request<pb::StartManholeRequest>,
    ) -> R<pb::StartManholeResponse> {
        let (mut client, request) = self.route(request, Agents::native_process).await?;
        client.start_manhole(request).await
    }

    async fn stop_manhole(
        &self,
        request: Request<pb::StopManholeRequest>,
    ) -> R<pb::StopManholeResponse> {
        let (mut client, request) = self.route(request, Agents::native_process).await?;
        client.stop_manhole(request).await
    }

    async fn get_manhole(
        &self,
        request: Request<pb::GetManholeRequest>,
    ) -> R<pb::GetManholeResponse> {
        let (mut client, request) = self.route(request, Agents::native_process).await?;
        client.get_manhole(request).await
    }

    async fn trigger_gc(&self, request: Request<pb::TriggerGcRequest>) -> R<pb::TriggerGcResponse> {
        let (mut client, request) = self.route(request, Agents::native_process).await?;
        client.trigger_gc(request).await
    }

    async fn utcnow(&self, request: Request<pb::UtcnowRequest>) -> R<pb::UtcnowResponse> {
        let (mut client, request) = self.route(request, Agents::native_process).await?;
        client.utcnow(request).await
    }

    async fn started(&self, request: Request<pb::StartedRequest>) -> R<pb::StartedResponse> {
        let (mut client, request) = self.route(request, Agents::native_process).await?;
        client.started(request).await
    }

    async fn uptime(&self, request: Request<pb::UptimeRequest>) -> R<pb::UptimeResponse> {
        let (mut client, request) = self.route(request, Agents::native_process).await?;
        client.uptime(request).await
    }

    async fn watch(&self, request: Request<pb::WatchRequest>) -> R<BoxStream<pb::WatchResponse>> {
        let (mut client, request) = self.route(request, Agents::native_process).await?;
        let stream = client.watch(request).await?.into_inner();
        Ok(Response::new(Box::pin(stream)))
    }
}
