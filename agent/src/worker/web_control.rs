//! Inside a web worker: its transport (one listener) and its web services. The agent forwards
//! the web-worker controls of NodeControllerService (StartWebTransport, GetWebTransport,
//! StopWebTransport, StartWebService, StopWebService, ListWebServices) to the worker's control
//! socket, where `api/worker_controls.rs` serves them with this.

use std::sync::Arc;
use std::time::Instant;

use switchyard::pb::agent::v1::{self as pb};

use crate::error::{Error, Result};
use crate::web::routes::{self, Routes};
use crate::web::{Identity, WebServer};

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

    fn no_transport(&self) -> Error {
        Error::NoTransport {
            kind: "web",
            worker: self.identity.worker.clone(),
        }
    }

    /// Binds the transport and starts serving the services on it.
    pub async fn start_transport(
        &self,
        transport: Option<pb::WebTransport>,
    ) -> Result<pb::WebTransportStatus> {
        let transport = transport.ok_or_else(|| Error::invalid("transport", "required"))?;
        let mut slot = self.server.lock().await;
        if slot.is_some() {
            return Err(Error::TransportStarted {
                kind: "web",
                worker: self.identity.worker.clone(),
            });
        }
        let server = WebServer::start(transport, self.routes.clone(), self.identity.clone())?;
        let status = server.status();
        *slot = Some(server);
        Ok(status)
    }

    /// The running transport.
    pub async fn transport(&self) -> Result<pb::WebTransportStatus> {
        let slot = self.server.lock().await;
        let server = slot.as_ref().ok_or_else(|| self.no_transport())?;
        Ok(server.status())
    }

    /// Stops the transport (its port closes).
    pub async fn stop_transport(&self) -> Result<pb::WebTransportStatus> {
        let server = self
            .server
            .lock()
            .await
            .take()
            .ok_or_else(|| self.no_transport())?;
        Ok(server.stop().await)
    }

    /// Stops the transport gracefully, if it runs: the port closes, open connections finish
    /// for at most `timeout` ([`WebServer::drain`]). What a stopping worker does.
    pub async fn drain(&self, timeout: std::time::Duration) {
        let server = self.server.lock().await.take();
        if let Some(server) = server {
            tracing::info!(worker = %self.identity.worker, ?timeout, "draining the web listener");
            server.drain(timeout).await;
        }
    }

    /// Validates `service` and mounts it on its path.
    pub fn start_service(&self, service: Option<pb::WebService>) -> Result<pb::WebService> {
        let spec = service.ok_or_else(|| Error::invalid("service", "required"))?;
        let route = routes::prepare(spec)?;
        let spec = route.spec.clone();
        if !self.routes.add(route) {
            return Err(Error::ServiceExists(spec.path));
        }
        tracing::info!(path = %spec.path, "web service started");
        Ok(spec)
    }

    /// Unmounts the service on `path`.
    pub fn stop_service(&self, path: &str) -> Result<pb::WebService> {
        let path = routes::check_path(path).map_err(|e| match e {
            // The request names the field `path`, not `service.path`.
            Error::InvalidArgument { message, .. } => Error::invalid("path", message),
            other => other,
        })?;
        let removed = self
            .routes
            .remove(&path)
            .ok_or_else(|| Error::NoSuchService(path.clone()))?;
        tracing::info!(%path, "web service stopped");
        Ok(removed.spec.clone())
    }

    /// Every mounted service, by path.
    pub fn services(&self) -> Vec<pb::WebService> {
        self.routes.list().iter().map(|r| r.spec.clone()).collect()
    }
}
