//! The agent's gRPC services: thin adapters that read a request, call the domain modules, and
//! convert their [`Error`](crate::error::Error) to a `Status` once (`?`, `crate::error`).
//!
//! - [`NodeControllerApi`], [`NativeProcessApi`]: what the agent serves on its port.
//! - `process.rs`: NativeProcessService of "this process" (the controller, or a worker on its
//!   control socket).
//! - `worker_controls.rs`: the web- and router-worker controls a worker serves on its control
//!   socket.
//!
//! Calls for a worker are forwarded over its control socket; the worker's answer, a status
//! included, is relayed to the caller as it is.

mod native_process;
mod node_controller;
mod process;
mod worker_controls;

use std::sync::Arc;

use switchyard::pb::agent::v1::{
    native_process_service_server::NativeProcessServiceServer,
    node_controller_service_server::NodeControllerServiceServer,
};
use tonic::Request;
use tonic::metadata::MetadataValue;
use tonic::service::Routes;

pub use native_process::NativeProcessApi;
pub use node_controller::NodeControllerApi;

use crate::Agent;

/// Metadata key carrying the original caller's principal on forwarded calls.
pub const WHO_METADATA: &str = "switchyard-who";

/// Every agent service, ready to serve.
pub fn routes(agent: Arc<Agent>) -> Routes {
    // A deposed leader's control calls are refused (switchyard::fencing).
    let epochs = agent.epochs.clone();
    let fenced = move |request: Request<()>| epochs.check(&request).map(|()| request);
    Routes::new(NodeControllerServiceServer::with_interceptor(
        NodeControllerApi::new(agent.clone()),
        fenced,
    ))
    .add_service(NativeProcessServiceServer::new(NativeProcessApi::new(
        agent,
    )))
}

/// The principal to name in events: the original caller when the call was forwarded (by the
/// master's gateway, whose role is `master`, or by the agent over a worker's private control
/// socket, where there is no TLS principal), else the direct caller.
pub fn who<T>(request: &Request<T>) -> String {
    let caller = switchyard::auth::caller(request);
    let forwarded = caller.is_none_or(|p| p.role == switchyard::auth::Role::Master);
    if forwarded
        && let Some(who) = request
            .metadata()
            .get(WHO_METADATA)
            .and_then(|v| v.to_str().ok())
    {
        return who.to_owned();
    }
    caller.map_or_else(String::new, |p| p.uri())
}

/// The request to send to a worker: same message and deadline, plus the original caller.
fn forwarded<T>(request: Request<T>) -> Request<T> {
    let who = who(&request);
    let timeout = request.metadata().get("grpc-timeout").cloned();
    let mut out = Request::new(request.into_inner());
    if let Some(timeout) = timeout {
        out.metadata_mut().insert("grpc-timeout", timeout);
    }
    if let Ok(who) = MetadataValue::try_from(who) {
        out.metadata_mut().insert(WHO_METADATA, who);
    }
    out
}
