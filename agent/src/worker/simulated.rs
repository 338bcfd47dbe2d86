//! The recording launcher ([`super::Launcher::Record`]), for benchmarks that must be labelled
//! simulated: a started worker runs nothing; its router-worker controls are answered from memory
//! by one in-process server per agent (on a control socket like a real worker's), recording the
//! transport (a synthetic port from the requested range), realms and links the master asks for.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::Mutex;

use switchyard::pb::agent::v1::node_controller_service_server::{
    NodeControllerService, NodeControllerServiceServer,
};
use switchyard::pb::agent::v1::{self as pb};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::error::Error;

#[derive(Debug, Default)]
struct SimWorker {
    port: u32,
    realms: BTreeSet<String>,
    links: BTreeMap<String, pb::RouterLink>,
}

/// The simulated workers of one agent, by id.
#[derive(Debug, Default)]
pub struct SimulatedControls {
    workers: Mutex<HashMap<String, SimWorker>>,
}

impl SimulatedControls {
    fn with<T>(&self, id: &str, f: impl FnOnce(&mut SimWorker) -> T) -> T {
        let mut map = self.workers.lock().unwrap_or_else(|e| e.into_inner());
        f(map.entry(id.to_owned()).or_default())
    }
}

/// Serves [`SimulatedControls`] on `socket` (connections presenting the agent key only).
pub fn serve(
    socket: &Path,
    key: super::control::AgentKey,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let incoming = super::control::listen(socket, key, |_| {})?;
    tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(NodeControllerServiceServer::new(
                SimulatedControls::default(),
            ))
            .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
            .await;
    });
    Ok(())
}

fn transport(port: u32) -> pb::RouterTransportStatus {
    pb::RouterTransportStatus {
        port,
        listening: format!("simulated:{port}"),
        started: None,
        subprotocols: vec!["wamp.2.json".to_owned()],
        ..Default::default()
    }
}

fn realm(name: &str) -> pb::RouterRealm {
    pb::RouterRealm {
        name: name.to_owned(),
        sessions: 0,
        started: None,
    }
}

#[tonic::async_trait]
impl NodeControllerService for SimulatedControls {
    async fn start_router_transport(
        &self,
        req: Request<pb::StartRouterTransportRequest>,
    ) -> Result<Response<pb::StartRouterTransportResponse>, Status> {
        let req = req.into_inner();
        let port = self.with(&req.worker_id, |w| {
            if w.port == 0 {
                w.port = req.port_range_start.max(1);
            }
            w.port
        });
        Ok(Response::new(pb::StartRouterTransportResponse {
            transport: Some(transport(port)),
        }))
    }

    async fn get_router_transport(
        &self,
        req: Request<pb::GetRouterTransportRequest>,
    ) -> Result<Response<pb::GetRouterTransportResponse>, Status> {
        match self.with(&req.get_ref().worker_id, |w| w.port) {
            0 => Err(Error::NoTransport {
                kind: "router",
                worker: req.into_inner().worker_id,
            }
            .into()),
            port => Ok(Response::new(pb::GetRouterTransportResponse {
                transport: Some(transport(port)),
            })),
        }
    }

    async fn start_router_realm(
        &self,
        req: Request<pb::StartRouterRealmRequest>,
    ) -> Result<Response<pb::StartRouterRealmResponse>, Status> {
        let req = req.into_inner();
        self.with(&req.worker_id, |w| w.realms.insert(req.realm.clone()));
        Ok(Response::new(pb::StartRouterRealmResponse {
            realm: Some(realm(&req.realm)),
        }))
    }

    async fn stop_router_realm(
        &self,
        req: Request<pb::StopRouterRealmRequest>,
    ) -> Result<Response<pb::StopRouterRealmResponse>, Status> {
        let req = req.into_inner();
        self.with(&req.worker_id, |w| w.realms.remove(&req.realm));
        Ok(Response::new(pb::StopRouterRealmResponse {
            realm: Some(realm(&req.realm)),
        }))
    }

    async fn list_router_realms(
        &self,
        req: Request<pb::ListRouterRealmsRequest>,
    ) -> Result<Response<pb::ListRouterRealmsResponse>, Status> {
        let realms = self.with(&req.get_ref().worker_id, |w| {
            w.realms.iter().map(|r| realm(r)).collect()
        });
        Ok(Response::new(pb::ListRouterRealmsResponse { realms }))
    }

    async fn start_router_link(
        &self,
        req: Request<pb::StartRouterLinkRequest>,
    ) -> Result<Response<pb::StartRouterLinkResponse>, Status> {
        let req = req.into_inner();
        let link = req.link.unwrap_or_default();
        self.with(&req.worker_id, |w| {
            w.links.insert(link.id.clone(), link.clone())
        });
        Ok(Response::new(pb::StartRouterLinkResponse {
            link: Some(link),
        }))
    }

    async fn stop_router_link(
        &self,
        req: Request<pb::StopRouterLinkRequest>,
    ) -> Result<Response<pb::StopRouterLinkResponse>, Status> {
        let req = req.into_inner();
        let link = self.with(&req.worker_id, |w| w.links.remove(&req.link_id));
        Ok(Response::new(pb::StopRouterLinkResponse { link }))
    }

    async fn list_router_links(
        &self,
        req: Request<pb::ListRouterLinksRequest>,
    ) -> Result<Response<pb::ListRouterLinksResponse>, Status> {
        let links = self.with(&req.get_ref().worker_id, |w| {
            w.links.values().cloned().collect()
        });
        Ok(Response::new(pb::ListRouterLinksResponse { links }))
    }
}
