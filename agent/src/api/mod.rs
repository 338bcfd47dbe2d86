//! The agent's gRPC services.
//!
//! RPCs whose capability has not landed yet answer UNIMPLEMENTED (the generated default), never a
//! fake success: worker processes and the rest of process control arrive with issue 3, web and
//! router worker controls with issues 5 and 7.

mod native_process;
mod node_controller;

use std::sync::Arc;

use switchyard::error::{Reason, invalid_argument, status};
use switchyard::pb::agent::v1::{
    native_process_service_server::NativeProcessServiceServer,
    node_controller_service_server::NodeControllerServiceServer,
};
use tonic::Status;
use tonic::service::Routes;

pub use native_process::NativeProcessApi;
pub use node_controller::NodeControllerApi;

use crate::controller::{CONTROLLER, Controller};

/// Every agent service, ready to serve.
pub fn routes(controller: Arc<Controller>) -> Routes {
    Routes::new(NodeControllerServiceServer::new(NodeControllerApi::new(
        controller.clone(),
    )))
    .add_service(NativeProcessServiceServer::new(NativeProcessApi::new(
        controller,
    )))
}

/// The target of a process-control call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The agent itself.
    Controller,
    /// A worker, by id.
    Worker(String),
}

/// Parses the `process` field: "controller" or a worker id; empty is INVALID_ARGUMENT.
pub fn parse_process(process: &str) -> Result<Target, Status> {
    match process {
        "" => Err(invalid_argument(
            "process",
            "required: \"controller\" or a worker id",
        )),
        CONTROLLER => Ok(Target::Controller),
        id => Ok(Target::Worker(id.to_owned())),
    }
}

/// NOT_FOUND for a worker id this agent does not know.
pub fn no_such_worker(id: &str) -> Status {
    status(
        Reason::NoSuchObject,
        format!("no worker '{id}' on this node"),
    )
}
