//! `switchyard.agent.v1.NativeProcessService` for the controller (workers come with issue 3).

use std::sync::Arc;
use std::time::SystemTime;

use switchyard::pb::agent::v1::{
    StartedRequest, StartedResponse, UptimeRequest, UptimeResponse, UtcnowRequest, UtcnowResponse,
    native_process_service_server::NativeProcessService,
};
use tonic::{Request, Response, Status};

use super::{Target, no_such_worker, parse_process};
use crate::controller::{Controller, iso8601};

/// Process control.
#[derive(Debug)]
pub struct NativeProcessApi {
    controller: Arc<Controller>,
}

impl NativeProcessApi {
    /// Process control for this agent.
    pub fn new(controller: Arc<Controller>) -> Self {
        NativeProcessApi { controller }
    }

    /// The controller, or NOT_FOUND for a worker id (this agent runs no workers yet).
    fn controller_for(&self, process: &str) -> Result<&Controller, Status> {
        match parse_process(process)? {
            Target::Controller => Ok(&self.controller),
            Target::Worker(id) => Err(no_such_worker(&id)),
        }
    }
}

#[tonic::async_trait]
impl NativeProcessService for NativeProcessApi {
    async fn utcnow(
        &self,
        request: Request<UtcnowRequest>,
    ) -> Result<Response<UtcnowResponse>, Status> {
        self.controller_for(&request.get_ref().process)?;
        Ok(Response::new(UtcnowResponse {
            utcnow: iso8601(SystemTime::now()),
        }))
    }

    async fn started(
        &self,
        request: Request<StartedRequest>,
    ) -> Result<Response<StartedResponse>, Status> {
        let controller = self.controller_for(&request.get_ref().process)?;
        Ok(Response::new(StartedResponse {
            started: iso8601(controller.started_at()),
        }))
    }

    async fn uptime(
        &self,
        request: Request<UptimeRequest>,
    ) -> Result<Response<UptimeResponse>, Status> {
        let controller = self.controller_for(&request.get_ref().process)?;
        Ok(Response::new(UptimeResponse {
            uptime: controller.uptime(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    fn api() -> NativeProcessApi {
        NativeProcessApi::new(Arc::new(Controller::new("node1".into())))
    }

    #[tokio::test]
    async fn controller_uptime_and_start_are_real() {
        let api = api();
        let req = |p: &str| {
            Request::new(UptimeRequest {
                process: p.to_owned(),
            })
        };
        let up = api.uptime(req("controller")).await.unwrap().into_inner();
        assert!(up.uptime >= 0.0 && up.uptime < 60.0, "{}", up.uptime);
        let started = api
            .started(Request::new(StartedRequest {
                process: "controller".into(),
            }))
            .await
            .unwrap()
            .into_inner();
        assert!(started.started.ends_with('Z'), "{}", started.started);
    }

    #[tokio::test]
    async fn bad_process_names_are_rejected() {
        let api = api();
        let empty = api
            .uptime(Request::new(UptimeRequest::default()))
            .await
            .unwrap_err();
        assert_eq!(empty.code(), Code::InvalidArgument);
        assert!(empty.message().contains("process"), "{}", empty.message());
        let unknown = api
            .uptime(Request::new(UptimeRequest {
                process: "w1".into(),
            }))
            .await
            .unwrap_err();
        assert_eq!(unknown.code(), Code::NotFound);
    }
}
