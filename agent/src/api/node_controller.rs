//! `switchyard.agent.v1.NodeControllerService`.

use std::sync::Arc;

use switchyard::pb::agent::v1::{
    GetStatusRequest, GetStatusResponse, node_controller_service_server::NodeControllerService,
};
use tonic::{Request, Response, Status};

use crate::controller::Controller;

/// The node controller.
#[derive(Debug)]
pub struct NodeControllerApi {
    controller: Arc<Controller>,
}

impl NodeControllerApi {
    /// A node controller for this agent.
    pub fn new(controller: Arc<Controller>) -> Self {
        NodeControllerApi { controller }
    }
}

#[tonic::async_trait]
impl NodeControllerService for NodeControllerApi {
    async fn get_status(
        &self,
        _request: Request<GetStatusRequest>,
    ) -> Result<Response<GetStatusResponse>, Status> {
        let c = &self.controller;
        Ok(Response::new(GetStatusResponse {
            authid: c.authid.clone(),
            version: switchyard::VERSION.to_owned(),
            pid: c.pid,
            started: Some(c.started_at().into()),
            uptime: c.uptime(),
            workers: 0,
            workers_started: 0,
            node_oid: String::new(),
            master_connected: false,
        }))
    }
}
