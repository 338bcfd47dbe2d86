//! Inside a router worker: the router-worker controls of NodeControllerService (transport,
//! realms, links), served on the worker's control socket; the agent forwards them here.

use std::net::IpAddr;
use std::sync::Arc;

use switchyard::error::{Reason, invalid_argument, status};
use switchyard::pb::agent::v1::node_controller_service_server::NodeControllerService;
use switchyard::pb::agent::v1::{self as pb};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::wamp::link::LinkSpec;
use crate::wamp::message::valid_uri;
use crate::wamp::realm::Realm;
use crate::wamp::{LinkView, ListenError, Router, Transport};

/// Default port range of a router worker (the reference's).
pub const DEFAULT_PORTS: (u16, u16) = (10000, 10100);

/// The router side of one worker.
#[derive(Debug)]
pub struct RouterControl {
    router: Arc<Router>,
    starting: tokio::sync::Mutex<()>,
}

impl RouterControl {
    /// The controls of router worker `worker`; its router stops with `shutdown`.
    pub fn new(worker: &str, shutdown: CancellationToken) -> Self {
        RouterControl {
            router: Router::new(worker, shutdown),
            starting: tokio::sync::Mutex::default(),
        }
    }
}

fn transport_pb(t: &Transport) -> pb::RouterTransportStatus {
    pb::RouterTransportStatus {
        port: u32::from(t.port),
        listening: t.listening.to_string(),
        started: Some(t.started.into()),
        subprotocols: crate::wamp::message::Serializer::ALL
            .iter()
            .map(|s| s.subprotocol().to_owned())
            .collect(),
    }
}

fn realm_pb(r: &Realm) -> pb::RouterRealm {
    pb::RouterRealm {
        name: r.name.clone(),
        sessions: r.sessions() as u32,
        started: Some(r.started.into()),
    }
}

fn link_pb(l: &LinkView) -> pb::RouterLink {
    pb::RouterLink {
        id: l.spec.id.clone(),
        realm: l.spec.realm.clone(),
        peer_host: l.spec.host.clone(),
        peer_port: u32::from(l.spec.port),
        peer_path: l.spec.path.clone(),
        connected: l.connected,
    }
}

fn port(field: &str, value: u32, default: u16) -> Result<u16, Status> {
    match value {
        0 => Ok(default),
        1..=65535 => Ok(value as u16),
        _ => Err(invalid_argument(
            field,
            format!("{value} is not a port (1..65535)"),
        )),
    }
}

fn realm_name(field: &str, name: &str) -> Result<(), Status> {
    if valid_uri(name) {
        Ok(())
    } else {
        Err(invalid_argument(
            field,
            format!("'{name}' is not a realm name (a WAMP URI such as realm1)"),
        ))
    }
}

#[tonic::async_trait]
impl NodeControllerService for RouterControl {
    async fn start_router_transport(
        &self,
        req: Request<pb::StartRouterTransportRequest>,
    ) -> Result<Response<pb::StartRouterTransportResponse>, Status> {
        let req = req.into_inner();
        let interface: IpAddr = if req.interface.is_empty() {
            IpAddr::from([0, 0, 0, 0])
        } else {
            req.interface.parse().map_err(|_| {
                invalid_argument(
                    "interface",
                    format!("'{}' is not an IP address", req.interface),
                )
            })?
        };
        let start = port("port_range_start", req.port_range_start, DEFAULT_PORTS.0)?;
        let end = port(
            "port_range_end",
            req.port_range_end,
            DEFAULT_PORTS.1.max(start),
        )?;
        if end < start {
            return Err(invalid_argument(
                "port_range_end",
                format!("{end} is below port_range_start {start}"),
            ));
        }
        let _guard = self.starting.lock().await;
        if self.router.transport().is_some() {
            return Err(status(
                Reason::AlreadyStarted,
                format!(
                    "router worker '{}' already has a transport",
                    self.router.worker()
                ),
            ));
        }
        let t = self
            .router
            .listen(interface, start, end, req.link_secret)
            .await
            .map_err(|e| match e {
                e @ ListenError::NoFreePort { .. } => status(Reason::CannotListen, e.to_string()),
                e @ ListenError::Bind { .. } => status(Reason::CannotListen, e.to_string()),
            })?;
        Ok(Response::new(pb::StartRouterTransportResponse {
            transport: Some(transport_pb(&t)),
        }))
    }

    async fn get_router_transport(
        &self,
        _req: Request<pb::GetRouterTransportRequest>,
    ) -> Result<Response<pb::GetRouterTransportResponse>, Status> {
        let t = self.router.transport().ok_or_else(|| {
            status(
                Reason::NotStarted,
                format!("router worker '{}' has no transport", self.router.worker()),
            )
        })?;
        Ok(Response::new(pb::GetRouterTransportResponse {
            transport: Some(transport_pb(&t)),
        }))
    }

    async fn start_router_realm(
        &self,
        req: Request<pb::StartRouterRealmRequest>,
    ) -> Result<Response<pb::StartRouterRealmResponse>, Status> {
        let name = req.into_inner().realm;
        realm_name("realm", &name)?;
        let realm = self.router.start_realm(&name);
        Ok(Response::new(pb::StartRouterRealmResponse {
            realm: Some(realm_pb(&realm)),
        }))
    }

    async fn stop_router_realm(
        &self,
        req: Request<pb::StopRouterRealmRequest>,
    ) -> Result<Response<pb::StopRouterRealmResponse>, Status> {
        let name = req.into_inner().realm;
        realm_name("realm", &name)?;
        let realm = self
            .router
            .stop_realm(&name)
            .ok_or_else(|| status(Reason::NoSuchObject, format!("no realm '{name}'")))?;
        Ok(Response::new(pb::StopRouterRealmResponse {
            realm: Some(realm_pb(&realm)),
        }))
    }

    async fn list_router_realms(
        &self,
        _req: Request<pb::ListRouterRealmsRequest>,
    ) -> Result<Response<pb::ListRouterRealmsResponse>, Status> {
        Ok(Response::new(pb::ListRouterRealmsResponse {
            realms: self.router.realms().iter().map(|r| realm_pb(r)).collect(),
        }))
    }

    async fn start_router_link(
        &self,
        req: Request<pb::StartRouterLinkRequest>,
    ) -> Result<Response<pb::StartRouterLinkResponse>, Status> {
        let link = req
            .into_inner()
            .link
            .ok_or_else(|| invalid_argument("link", "required"))?;
        if link.id.trim().is_empty() {
            return Err(invalid_argument("link.id", "required"));
        }
        realm_name("link.realm", &link.realm)?;
        if link.peer_host.trim().is_empty() {
            return Err(invalid_argument("link.peer_host", "required"));
        }
        if !(1..=65535).contains(&link.peer_port) {
            return Err(invalid_argument(
                "link.peer_port",
                format!("{} is not a port (1..65535)", link.peer_port),
            ));
        }
        let path = if link.peer_path.is_empty() {
            "/ws".to_owned()
        } else if link.peer_path.starts_with('/') {
            link.peer_path.clone()
        } else {
            return Err(invalid_argument("link.peer_path", "must start with '/'"));
        };
        if self.router.realm(&link.realm).is_none() {
            return Err(status(
                Reason::NotStarted,
                format!("realm '{}' is not started on this worker", link.realm),
            ));
        }
        if self.router.link_secret().is_empty() {
            return Err(status(
                Reason::NotStarted,
                "the worker has no transport with a link secret; start it first",
            ));
        }
        let view = self.router.start_link(LinkSpec {
            id: link.id,
            realm: link.realm,
            host: link.peer_host,
            port: link.peer_port as u16,
            path,
        });
        Ok(Response::new(pb::StartRouterLinkResponse {
            link: Some(link_pb(&view)),
        }))
    }

    async fn stop_router_link(
        &self,
        req: Request<pb::StopRouterLinkRequest>,
    ) -> Result<Response<pb::StopRouterLinkResponse>, Status> {
        let id = req.into_inner().link_id;
        if id.is_empty() {
            return Err(invalid_argument("link_id", "required"));
        }
        let view = self
            .router
            .stop_link(&id)
            .ok_or_else(|| status(Reason::NoSuchObject, format!("no link '{id}'")))?;
        Ok(Response::new(pb::StopRouterLinkResponse {
            link: Some(link_pb(&view)),
        }))
    }

    async fn list_router_links(
        &self,
        _req: Request<pb::ListRouterLinksRequest>,
    ) -> Result<Response<pb::ListRouterLinksResponse>, Status> {
        Ok(Response::new(pb::ListRouterLinksResponse {
            links: self.router.links().iter().map(link_pb).collect(),
        }))
    }
}
