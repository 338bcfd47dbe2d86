//! `switchyard.master.v1.ControlPlaneService`: the masters and their leader.

use std::sync::Arc;

use switchyard::pb::master::v1::control_plane_service_server::ControlPlaneService;
use switchyard::pb::master::v1::{GetControlPlaneRequest, GetControlPlaneResponse};
use tonic::{Request, Response, Status};

use crate::core::Core;
use crate::error::Error;

/// The control plane's members.
#[derive(Debug)]
pub struct ControlPlaneApi(pub Arc<Core>);

#[tonic::async_trait]
impl ControlPlaneService for ControlPlaneApi {
    async fn get_control_plane(
        &self,
        _req: Request<GetControlPlaneRequest>,
    ) -> Result<Response<GetControlPlaneResponse>, Status> {
        let leadership = &self.0.leadership;
        let view = leadership.view();
        let members = leadership
            .members(&*self.0.store)
            .await
            .map_err(Error::from)?;
        Ok(Response::new(GetControlPlaneResponse {
            members,
            epoch: view.epoch,
            leader: view.leader.map(|l| l.name).unwrap_or_default(),
        }))
    }
}
