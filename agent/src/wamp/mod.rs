//! The WAMP router a `router` worker runs (docs/architecture.md, "Router workers and links"): WebSocket at `/ws` and `/`, subprotocols
//! `wamp.2.json`, `wamp.2.msgpack` and `wamp.2.cbor`, the Basic Profile (sessions, realms, pub/sub, RPC, error
//! URIs) plus publisher exclusion, black/white listing and progressive call results, and
//! router-to-router links that join the workers of a group into one routing fabric.
//!
//! - [`message`]: codes, serializers, frames.
//! - [`realm`]: broker, dealer and the link logic, per realm.
//! - [`session`]: one client connection.
//! - [`link`]: the client side of a router link.
//! - [`traffic`]: messages received and sent, by type.
//!
//! Why not a library: the maintained Rust WAMP routers (e.g. `battler-wamp`) expose no hook
//! between their broker/dealer and the outside, and router links need exactly that (forward a
//! local publish to peers, register a local procedure on peers, route a peer's invocation to a
//! local callee). The protocol surface is small; it is tested against Autobahn|Python.

pub mod link;
pub mod message;
pub mod realm;
pub mod session;
pub mod traffic;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::lock;
use link::{LinkHandle, LinkSpec};
use realm::Realm;

/// The router's listener.
#[derive(Debug, Clone)]
pub struct Transport {
    /// The port picked.
    pub port: u16,
    /// The bound address.
    pub listening: SocketAddr,
    /// When it started.
    pub started: SystemTime,
}

/// A link as reported.
#[derive(Debug, Clone)]
pub struct LinkView {
    /// Its target.
    pub spec: LinkSpec,
    /// Whether it is connected.
    pub connected: bool,
}

/// Why the router cannot listen.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// Every port of the range is taken.
    #[error("no free port in {start}-{end} on {interface}")]
    NoFreePort {
        /// The interface.
        interface: IpAddr,
        /// First port.
        start: u16,
        /// Last port.
        end: u16,
    },
    /// Binding failed otherwise.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
}

/// The router of one worker.
#[derive(Debug)]
pub struct Router {
    worker: String,
    realms: RwLock<BTreeMap<String, Arc<Realm>>>,
    secret: RwLock<String>,
    links: Mutex<BTreeMap<String, LinkHandle>>,
    transport: Mutex<Option<Transport>>,
    shutdown: CancellationToken,
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|e| e.into_inner())
}

impl Router {
    /// The router of worker `worker`; everything stops with `shutdown`.
    pub fn new(worker: &str, shutdown: CancellationToken) -> Arc<Router> {
        Arc::new(Router {
            worker: worker.to_owned(),
            realms: RwLock::default(),
            secret: RwLock::default(),
            links: Mutex::default(),
            transport: Mutex::default(),
            shutdown,
        })
    }

    /// The worker id.
    pub fn worker(&self) -> &str {
        &self.worker
    }

    /// The secret router links present and accept (empty: links are refused).
    pub fn link_secret(&self) -> String {
        read(&self.secret).clone()
    }

    /// A started realm.
    pub fn realm(&self, name: &str) -> Option<Arc<Realm>> {
        read(&self.realms).get(name).cloned()
    }

    /// Starts realm `name` (idempotent); returns it.
    pub fn start_realm(&self, name: &str) -> Arc<Realm> {
        write(&self.realms)
            .entry(name.to_owned())
            .or_insert_with(|| Realm::new(name))
            .clone()
    }

    /// Stops realm `name`, disconnecting its sessions.
    pub fn stop_realm(&self, name: &str) -> Option<Arc<Realm>> {
        let realm = write(&self.realms).remove(name)?;
        realm.close_all(message::uri::SYSTEM_SHUTDOWN);
        Some(realm)
    }

    /// Every realm, by name.
    pub fn realms(&self) -> Vec<Arc<Realm>> {
        read(&self.realms).values().cloned().collect()
    }

    /// The listener, once started.
    pub fn transport(&self) -> Option<Transport> {
        lock(&self.transport).clone()
    }

    /// Listens on the first free port of `start..=end` on `interface` and serves WAMP there.
    /// The caller checks that no transport is running yet.
    pub async fn listen(
        self: &Arc<Self>,
        interface: IpAddr,
        start: u16,
        end: u16,
        secret: String,
    ) -> Result<Transport, ListenError> {
        let mut bound = None;
        for port in start..=end {
            let addr = SocketAddr::new(interface, port);
            match TcpListener::bind(addr).await {
                Ok(l) => {
                    bound = Some(l);
                    break;
                }
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => continue,
                Err(source) => return Err(ListenError::Bind { addr, source }),
            }
        }
        let listener = bound.ok_or(ListenError::NoFreePort {
            interface,
            start,
            end,
        })?;
        let listening = listener.local_addr().map_err(|source| ListenError::Bind {
            addr: SocketAddr::new(interface, start),
            source,
        })?;
        *write(&self.secret) = secret;
        let transport = Transport {
            port: listening.port(),
            listening,
            started: SystemTime::now(),
        };
        *lock(&self.transport) = Some(transport.clone());
        let router = self.clone();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = router.shutdown.cancelled() => break,
                    a = listener.accept() => a,
                };
                match accepted {
                    Ok((stream, _)) => {
                        tokio::spawn(session::serve(
                            router.clone(),
                            stream,
                            router.shutdown.clone(),
                        ));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                }
            }
        });
        tracing::info!(worker = %self.worker, %listening, "WAMP router listening");
        Ok(transport)
    }

    /// Starts link `spec.id` (idempotent; a changed target replaces the link).
    pub fn start_link(self: &Arc<Self>, spec: LinkSpec) -> LinkView {
        let mut links = lock(&self.links);
        if let Some(existing) = links.get(&spec.id) {
            if existing.spec == spec {
                return view(existing);
            }
            existing.stop.cancel();
        }
        let handle = LinkHandle::start(self.clone(), spec.clone());
        let v = view(&handle);
        links.insert(spec.id, handle);
        v
    }

    /// Stops link `id`.
    pub fn stop_link(&self, id: &str) -> Option<LinkView> {
        let handle = lock(&self.links).remove(id)?;
        handle.stop.cancel();
        Some(view(&handle))
    }

    /// Every link, by id.
    pub fn links(&self) -> Vec<LinkView> {
        lock(&self.links).values().map(view).collect()
    }
}

fn view(h: &LinkHandle) -> LinkView {
    LinkView {
        spec: h.spec.clone(),
        connected: h.connected.load(Ordering::SeqCst),
    }
}
