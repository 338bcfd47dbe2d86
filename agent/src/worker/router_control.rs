//! Inside a router worker: its transport, realms and links. The agent forwards the
//! router-worker controls of NodeControllerService to the worker's control socket, where
//! `api/worker_controls.rs` serves them with this.

use std::net::IpAddr;
use std::sync::Arc;

use switchyard::pb::agent::v1::{self as pb};
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::wamp::link::LinkSpec;
use crate::wamp::message::valid_uri;
use crate::wamp::realm::Realm;
use crate::wamp::{LinkView, Router, Transport};

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
        messages_received: crate::wamp::traffic::RECEIVED.by_type(),
        messages_sent: crate::wamp::traffic::SENT.by_type(),
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

/// A port of the transport's range: 0 takes `default`, above 65535 is INVALID_CONFIGURATION.
fn port(field: &str, value: u32, default: u16) -> Result<u16> {
    match value {
        0 => Ok(default),
        1..=65535 => Ok(value as u16),
        _ => Err(Error::invalid_config(
            field,
            format!("{value} is not a port (1..65535)"),
        )),
    }
}

fn realm_name(field: &str, name: &str) -> Result<()> {
    if valid_uri(name) {
        Ok(())
    } else {
        Err(Error::invalid(
            field,
            format!("'{name}' is not a realm name (a WAMP URI such as realm1)"),
        ))
    }
}

impl RouterControl {
    /// Listens on the first free port of the request's range (the transport's configuration:
    /// an unusable interface or range is INVALID_CONFIGURATION).
    pub async fn start_transport(
        &self,
        req: pb::StartRouterTransportRequest,
    ) -> Result<pb::RouterTransportStatus> {
        let interface: IpAddr = if req.interface.is_empty() {
            IpAddr::from([0, 0, 0, 0])
        } else {
            req.interface.parse().map_err(|_| {
                Error::invalid_config(
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
            return Err(Error::invalid_config(
                "port_range_end",
                format!("{end} is below port_range_start {start}"),
            ));
        }
        let _guard = self.starting.lock().await;
        if self.router.transport().is_some() {
            return Err(Error::TransportStarted {
                kind: "router",
                worker: self.router.worker().to_owned(),
            });
        }
        let t = self
            .router
            .listen(interface, start, end, req.link_secret)
            .await
            .map_err(|e| Error::CannotListen(e.to_string()))?;
        Ok(transport_pb(&t))
    }

    /// The running transport.
    pub fn transport(&self) -> Result<pb::RouterTransportStatus> {
        let t = self.router.transport().ok_or_else(|| Error::NoTransport {
            kind: "router",
            worker: self.router.worker().to_owned(),
        })?;
        Ok(transport_pb(&t))
    }

    /// Starts serving realm `name` (idempotent).
    pub fn start_realm(&self, name: &str) -> Result<pb::RouterRealm> {
        realm_name("realm", name)?;
        Ok(realm_pb(&self.router.start_realm(name)))
    }

    /// Stops serving realm `name`.
    pub fn stop_realm(&self, name: &str) -> Result<pb::RouterRealm> {
        realm_name("realm", name)?;
        let realm = self
            .router
            .stop_realm(name)
            .ok_or_else(|| Error::NoSuchRealm(name.to_owned()))?;
        Ok(realm_pb(&realm))
    }

    /// Every realm served.
    pub fn realms(&self) -> Vec<pb::RouterRealm> {
        self.router.realms().iter().map(|r| realm_pb(r)).collect()
    }

    /// Starts a router link to a peer worker of the group.
    pub fn start_link(&self, link: Option<pb::RouterLink>) -> Result<pb::RouterLink> {
        let link = link.ok_or_else(|| Error::invalid("link", "required"))?;
        if link.id.trim().is_empty() {
            return Err(Error::invalid("link.id", "required"));
        }
        realm_name("link.realm", &link.realm)?;
        if link.peer_host.trim().is_empty() {
            return Err(Error::invalid("link.peer_host", "required"));
        }
        if !(1..=65535).contains(&link.peer_port) {
            return Err(Error::invalid(
                "link.peer_port",
                format!("{} is not a port (1..65535)", link.peer_port),
            ));
        }
        let path = if link.peer_path.is_empty() {
            "/ws".to_owned()
        } else if link.peer_path.starts_with('/') {
            link.peer_path.clone()
        } else {
            return Err(Error::invalid("link.peer_path", "must start with '/'"));
        };
        if self.router.realm(&link.realm).is_none() {
            return Err(Error::RealmNotStarted(link.realm));
        }
        if self.router.link_secret().is_empty() {
            return Err(Error::NoLinkSecret);
        }
        let view = self.router.start_link(LinkSpec {
            id: link.id,
            realm: link.realm,
            host: link.peer_host,
            port: link.peer_port as u16,
            path,
        });
        Ok(link_pb(&view))
    }

    /// Stops link `id`.
    pub fn stop_link(&self, id: &str) -> Result<pb::RouterLink> {
        if id.is_empty() {
            return Err(Error::invalid("link_id", "required"));
        }
        let view = self
            .router
            .stop_link(id)
            .ok_or_else(|| Error::NoSuchLink(id.to_owned()))?;
        Ok(link_pb(&view))
    }

    /// Every link.
    pub fn links(&self) -> Vec<pb::RouterLink> {
        self.router.links().iter().map(link_pb).collect()
    }
}
