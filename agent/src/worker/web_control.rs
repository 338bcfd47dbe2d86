//! Inside a web worker: the web-worker controls of NodeControllerService (StartWebTransport,
//! GetWebTransport, StopWebTransport, StartWebService, StopWebService, ListWebServices), served on
//! the worker's control socket; the agent forwards them here.

use std::sync::Arc;
use std::time::Instant;

use switchyard::error::{Reason, invalid_argument, status};
use switchyard::pb::agent::v1::node_controller_service_server::NodeControllerService;
use switchyard::pb::agent::v1::{self as pb};
use tonic::{Request, Response, Status};

use crate::web::routes::{self, Routes};
use crate::web::{Identity, StartError, WebServer};

/// The web side of one worker.
#[derive(Debug)]
pub struct WebControl {
    identity: Identity,
    routes: Arc<Routes>,
    server: tokio::sync::Mutex<Option<WebServer>>,
}

impl WebControl {
    /// The controls of web worker `worker` on node `node`.
    pub fn new(node: String, worker: String) -> Self {
        WebControl {
            identity: Identity {
                node,
                worker,
                started: Instant::now(),
            },
            routes: Arc::default(),
            server: tokio::sync::Mutex::default(),
        }
    }
}

fn not_started(worker: &str) -> Status {
    status(
        Reason::NotStarted,
        format!("web worker '{worker}' has no transport"),
    )
}

#[tonic::async_trait]
impl NodeControllerService for WebControl {
    async fn start_web_transport(
        &self,
        req: Request<pb::StartWebTransportRequest>,
    ) -> Result<Response<pb::StartWebTransportResponse>, Status> {
        let transport = req
            .into_inner()
            .transport
            .ok_or_else(|| invalid_argument("transport", "required"))?;
        let mut slot = self.server.lock().await;
        if slot.is_some() {
            return Err(status(
                Reason::AlreadyStarted,
                format!(
                    "web worker '{}' already has a transport",
                    self.identity.worker
                ),
            ));
        }
        let server = WebServer::start(transport, self.routes.clone(), self.identity.clone())
            .map_err(|e| match e {
                StartError::Invalid { field, message } => invalid_argument(&field, message),
                StartError::CannotListen(m) => status(Reason::CannotListen, m),
            })?;
        let status = server.status();
        *slot = Some(server);
        Ok(Response::new(pb::StartWebTransportResponse {
            transport: Some(status),
        }))
    }

    async fn get_web_transport(
        &self,
        _req: Request<pb::GetWebTransportRequest>,
    ) -> Result<Response<pb::GetWebTransportResponse>, Status> {
        let slot = self.server.lock().await;
        let server = slot
            .as_ref()
            .ok_or_else(|| not_started(&self.identity.worker))?;
        Ok(Response::new(pb::GetWebTransportResponse {
            transport: Some(server.status()),
        }))
    }

    async fn stop_web_transport(
        &self,
        _req: Request<pb::StopWebTransportRequest>,
    ) -> Result<Response<pb::StopWebTransportResponse>, Status> {
        let server = self
            .server
            .lock()
            .await
            .take()
            .ok_or_else(|| not_started(&self.identity.worker))?;
        Ok(Response::new(pb::StopWebTransportResponse {
            transport: Some(server.stop().await),
        }))
    }

    async fn start_web_service(
        &self,
        req: Request<pb::StartWebServiceRequest>,
    ) -> Result<Response<pb::StartWebServiceResponse>, Status> {
        let spec = req
            .into_inner()
            .service
            .ok_or_else(|| invalid_argument("service", "required"))?;
        let route = routes::prepare(spec).map_err(|e| invalid_argument(&e.field, e.message))?;
        let spec = route.spec.clone();
        if !self.routes.add(route) {
            return Err(status(
                Reason::AlreadyExists,
                format!("a service is already mounted on {}", spec.path),
            ));
        }
        tracing::info!(path = %spec.path, "web service started");
        Ok(Response::new(pb::StartWebServiceResponse {
            service: Some(spec),
        }))
    }

    async fn stop_web_service(
        &self,
        req: Request<pb::StopWebServiceRequest>,
    ) -> Result<Response<pb::StopWebServiceResponse>, Status> {
        let path = routes::check_path(&req.get_ref().path)
            .map_err(|e| invalid_argument("path", e.message))?;
        let removed = self
            .routes
            .remove(&path)
            .ok_or_else(|| status(Reason::NoSuchObject, format!("no service on {path}")))?;
        tracing::info!(%path, "web service stopped");
        Ok(Response::new(pb::StopWebServiceResponse {
            service: Some(removed.spec.clone()),
        }))
    }

    async fn list_web_services(
        &self,
        _req: Request<pb::ListWebServicesRequest>,
    ) -> Result<Response<pb::ListWebServicesResponse>, Status> {
        let services = self.routes.list().iter().map(|r| r.spec.clone()).collect();
        Ok(Response::new(pb::ListWebServicesResponse { services }))
    }
}
