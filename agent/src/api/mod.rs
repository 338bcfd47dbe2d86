//! The agent's gRPC services.

mod native_process;
mod node_controller;

use std::sync::Arc;

use switchyard::pb::agent::v1::{
    native_process_service_server::NativeProcessServiceServer,
    node_controller_service_server::NodeControllerServiceServer,
};
use tonic::service::Routes;

pub use native_process::NativeProcessApi;
pub(crate) use native_process::forwarded;
pub use node_controller::NodeControllerApi;

use crate::Agent;

/// Every agent service, ready to serve.
pub fn routes(agent: Arc<Agent>) -> Routes {
    Routes::new(NodeControllerServiceServer::new(NodeControllerApi::new(
        agent.clone(),
    )))
    .add_service(NativeProcessServiceServer::new(NativeProcessApi::new(
        agent,
    )))
}
