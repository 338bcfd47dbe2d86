//! The Switchyard master: the admin API over the durable cluster store, the node-facing
//! heartbeat API, the event stream, and the monitors that make started clusters run.
//!
//! - [`store`]: the `Store` trait, sled (default) and in-memory implementations.
//! - [`core`]: state shared by the services; [`web`], [`router`], [`nodes`]: its operations;
//!   [`tokens`], [`join`]: join tokens, node certificates issued online, revocation.
//! - [`api`]: the gRPC services (thin adapters).
//! - [`events`]: the event bus behind `EventService.Watch`.
//! - [`monitor`]: one monitor per started cluster; [`agents`]: the master's agent clients.
//! - [`dev`]: `switchyard-master dev`, a whole local cluster with generated certificates.
#![forbid(unsafe_code)]

pub mod agents;
pub mod api;
pub mod cli;
pub mod cluster_stats;
pub mod core;
pub mod dev;
pub mod error;
pub mod events;
pub mod gateway;
pub mod join;
pub mod leader;
pub mod metrics;
pub mod monitor;
pub mod nodes;
pub mod router;
pub mod stats;
pub mod store;
pub mod tokens;
pub mod validate;
pub mod web;

use std::path::PathBuf;
use std::sync::Arc;

use switchyard::auth::Policy;
use switchyard::server::{self, Security};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::core::Core;
pub use crate::core::HeartbeatConfig;

/// Where the master keeps its state.
#[derive(Debug, Clone)]
pub enum StoreChoice {
    /// The embedded default: a sled database in this directory.
    Sled(PathBuf),
    /// etcd, shared by every master of an installation.
    Etcd(store::etcd::EtcdConfig),
}

/// What the master serves with.
#[derive(Debug, Clone)]
pub struct MasterOptions {
    /// The master's store.
    pub store: StoreChoice,
    /// mTLS (the default) or explicit plaintext.
    pub security: Security,
    /// Node liveness settings.
    pub heartbeat: HeartbeatConfig,
    /// The master's certificate, used to call agents (`None` with `--insecure`).
    pub identity: Option<switchyard::pki::Identity>,
    /// Monitor settings.
    pub monitor: monitor::MonitorConfig,
    /// Where `/metrics` is served (none: not served).
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// The CA key node certificates are signed with (joins, renewals); `None`: not issued here.
    pub signer: Option<Arc<switchyard::issuer::CaSigner>>,
    /// The lifetime of the node certificates the master issues.
    pub node_cert_ttl: std::time::Duration,
    /// This master among the masters of its store.
    pub control_plane: ControlPlane,
}

/// A master's place among the masters sharing one store (docs/operations.md, "Several masters").
#[derive(Debug, Clone)]
pub struct ControlPlane {
    /// Its name.
    pub name: String,
    /// Where agents and clients reach it (host:port; empty: the address it listens on).
    pub advertise: String,
    /// The leader's etcd lease.
    pub leader_lease: std::time::Duration,
}

impl Default for ControlPlane {
    fn default() -> Self {
        ControlPlane {
            name: "master".to_owned(),
            advertise: String::new(),
            leader_lease: leader::DEFAULT_LEASE,
        }
    }
}

/// Errors that stop the master.
#[derive(Debug, thiserror::Error)]
pub enum MasterError {
    /// The data directory is unusable.
    #[error("cannot use data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The store cannot be opened.
    #[error("cannot open the store {store}: {source}")]
    Store {
        /// The store, as configured.
        store: String,
        /// The cause.
        source: store::StoreError,
    },
    /// The metrics port cannot be bound.
    #[error("cannot listen for metrics on {addr}: {source}")]
    MetricsListen {
        /// The address.
        addr: std::net::SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The gRPC server failed.
    #[error(transparent)]
    Serve(#[from] server::ServeError),
}

/// Runs the master on `listener` until `shutdown` is cancelled.
pub async fn serve(
    listener: TcpListener,
    options: MasterOptions,
    shutdown: CancellationToken,
) -> Result<(), MasterError> {
    let opened = open_store(&options.store, &shutdown).await?;
    let mut cp = options.control_plane.clone();
    if cp.advertise.is_empty() {
        cp.advertise = listener
            .local_addr()
            .map_or_else(|_| String::new(), |a| a.to_string());
    }
    let leadership = Arc::new(match &opened.etcd {
        Some(_) => leader::Leadership::elected(&cp.name, &cp.advertise, cp.leader_lease),
        None => leader::Leadership::single(&cp.name, &cp.advertise, shutdown.clone()),
    });
    let agents = Arc::new(agents::Agents::new(options.identity.clone()));
    agents.lead_with(leadership.clone());
    let core = Arc::new(
        Core::new(
            opened.store,
            options.heartbeat,
            agents.clone(),
            shutdown.clone(),
        )
        .with_leadership(leadership.clone()),
    );
    let electing = opened
        .etcd
        .map(|etcd| tokio::spawn(leadership.run(etcd, core.clone(), shutdown.clone())));
    let revocations = core
        .start_issuing(options.signer.clone(), options.node_cert_ttl)
        .await
        .map_err(|source| MasterError::Store {
            store: options.store.to_string(),
            source,
        })?;
    let served_certs = match &options.security {
        Security::Mtls(tls) => Some(tls.certificates().clone()),
        Security::Insecure => None,
    };
    let security = match options.security {
        Security::Mtls(tls) => Security::Mtls(tls.with_revocations(revocations)),
        Security::Insecure => Security::Insecure,
    };
    tokio::spawn(expire_heartbeats(core.clone()));
    let supervisor = monitor::Supervisor::new(core.clone(), agents.clone(), options.monitor);
    let supervising = tokio::spawn(supervisor.clone().run());
    let rpc = Arc::new(switchyard::metrics::RpcMetrics::default());
    if let Some(addr) = options.metrics_listen {
        let metrics_listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| MasterError::MetricsListen { addr, source })?;
        tokio::spawn(switchyard::metrics::serve(
            metrics_listener,
            metrics::scrape(core.clone(), supervisor.clone(), rpc.clone(), served_certs),
            shutdown.clone(),
        ));
    }
    let local = listener
        .local_addr()
        .map_or_else(|_| "?".to_owned(), |a| a.to_string());
    tracing::info!(listen = %local, store = %options.store, "master serving");
    let served = server::serve(
        listener,
        security,
        Policy::Master,
        api::routes(core),
        switchyard::pb::MASTER_SERVICES,
        rpc,
        shutdown.clone(),
    )
    .await;
    // The server stopped because `shutdown` was cancelled (or failed): let every monitor finish
    // its iteration before the final flush.
    shutdown.cancel();
    let _ = supervising.await;
    supervisor.drain(std::time::Duration::from_secs(10)).await;
    if let Some(electing) = electing {
        let _ = electing.await; // resigned: the lease is revoked
    }
    if let Some(sled) = opened.sled
        && let Err(error) = sled.sync().await
    {
        tracing::error!(%error, "final flush failed");
    }
    served?;
    tracing::info!("master stopped");
    Ok(())
}

impl std::fmt::Display for StoreChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreChoice::Sled(dir) => write!(f, "sled:{}", dir.display()),
            StoreChoice::Etcd(c) => {
                write!(f, "etcd:{} (prefix {})", c.endpoints.join(","), c.prefix)
            }
        }
    }
}

/// An opened store, and its concrete backend for what only it can do.
#[derive(Debug)]
pub struct OpenedStore {
    /// The store.
    pub store: Arc<dyn store::Store>,
    /// The same, on sled (for the final flush).
    pub sled: Option<Arc<store::sled::SledStore>>,
    /// The same, on etcd (for the leader election).
    pub etcd: Option<Arc<store::etcd::EtcdStore>>,
}

/// Opens the chosen store (waiting for etcd while it does not answer).
pub async fn open_store(
    choice: &StoreChoice,
    shutdown: &CancellationToken,
) -> Result<OpenedStore, MasterError> {
    match choice {
        StoreChoice::Sled(dir) => {
            std::fs::create_dir_all(dir).map_err(|source| MasterError::DataDir {
                path: dir.clone(),
                source,
            })?;
            let sled = Arc::new(store::sled::SledStore::open(dir).map_err(|source| {
                MasterError::Store {
                    store: choice.to_string(),
                    source,
                }
            })?);
            Ok(OpenedStore {
                store: sled.clone(),
                sled: Some(sled),
                etcd: None,
            })
        }
        StoreChoice::Etcd(config) => {
            let etcd = store::etcd::EtcdStore::connect(config.clone(), shutdown.clone())
                .await
                .map_err(|source| MasterError::Store {
                    store: choice.to_string(),
                    source,
                })?;
            let etcd = Arc::new(etcd);
            Ok(OpenedStore {
                store: etcd.clone(),
                sled: None,
                etcd: Some(etcd),
            })
        }
    }
}

/// Marks nodes offline whose heartbeats stopped, a few times per grace period.
async fn expire_heartbeats(core: Arc<Core>) {
    let mut ticker = tokio::time::interval(core.heartbeat.grace / 5);
    loop {
        tokio::select! {
            _ = core.shutdown.cancelled() => return,
            _ = ticker.tick() => core.expire_heartbeats().await,
        }
    }
}
