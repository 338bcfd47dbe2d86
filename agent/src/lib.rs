//! The Switchyard agent: one per node. It starts and stops native worker processes and serves
//! the node controller and process control of itself ("controller") and of each worker.
//!
//! - [`api`]: the gRPC services (thin adapters over the parts below).
//! - [`error`]: what can fail, and its one mapping to a gRPC status.
//! - [`worker`]: worker processes: spawn, readiness, stop, supervision and restarts, logs,
//!   control sockets, records and adoption by a restarted agent.
//! - [`runtime`]: the runtime directory (one agent at a time) and `switchyard-agent stop`.
//! - [`process`]: process control of the current process (stats, affinity, info, trim).
//! - [`manhole`]: the SSH debug console.
//! - [`events`]: the node's process event bus behind `Watch`.
//! - [`join`]: joining the cluster with a join token; [`certs`]: the node's certificate,
//!   renewed while the agent runs.
//! - [`system`]: host statistics.
//! - [`web`], [`wamp`]: what web and router workers serve.
#![deny(unsafe_code)]

pub mod api;
pub mod certs;
pub mod cli;
pub mod controller;
pub mod error;
pub mod events;
pub mod heartbeat;
pub mod join;
pub mod manhole;
pub mod metrics;
pub mod process;
pub mod runtime;
pub mod system;
pub mod wamp;
pub mod web;
pub mod worker;

mod sys;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use switchyard::auth::Policy;
use switchyard::server::{self, Security};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use events::EventBus;
use process::LocalProcess;
use runtime::{RuntimeDir, RuntimeDirError};
use worker::{Backoff, WorkerConfig, Workers};

/// What the agent serves with.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// The node's authid (its certificate's name).
    pub authid: String,
    /// The masters' addresses (host:port), for heartbeats: the agent finds the leader among
    /// them.
    pub masters: Vec<String>,
    /// mTLS (the default) or explicit plaintext.
    pub security: Security,
    /// The executable started in worker mode.
    pub worker_exe: PathBuf,
    /// Directory for the workers' control sockets and records (created 0700); a new agent on
    /// the same directory adopts the workers of the previous one.
    pub runtime_dir: PathBuf,
    /// Time from SIGTERM to SIGKILL when stopping a worker.
    pub stop_timeout: Duration,
    /// The node certificate used to call the master (`None` with `--insecure`).
    pub identity: Option<switchyard::pki::Identity>,
    /// Where renewed certificates are written (`None`: kept in memory only).
    pub pki_dir: Option<PathBuf>,
    /// The endpoint the master should call (default: the bound listen address).
    pub advertise: Option<String>,
    /// Labels reported to the master.
    pub labels: std::collections::HashMap<String, String>,
    /// How workers are run (benchmarks record instead of spawning).
    pub launcher: worker::Launcher,
    /// Where `/metrics` is served (none: not served).
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Whether the workers keep running when the agent stops (decided by whoever stops it).
    pub keep_workers: KeepWorkers,
    /// Time a worker whose agent is gone keeps serving, waiting for a new agent to adopt it.
    pub adopt_grace: Duration,
    /// Delays between the agent's restarts of a failing worker.
    pub backoff: Backoff,
}

/// Whether the agent leaves its workers running when its shutdown token is cancelled, for a new
/// agent on the same runtime directory to adopt (else it stops them). Whoever cancels the token
/// sets it first: the command line keeps them on SIGTERM with `--keep-workers`, never on SIGINT
/// (`switchyard-agent stop`).
#[derive(Debug, Clone, Default)]
pub struct KeepWorkers(Arc<AtomicBool>);

impl KeepWorkers {
    /// Keep the workers (`true`) or stop them when the agent stops.
    pub fn set(&self, keep: bool) {
        self.0.store(keep, Ordering::SeqCst);
    }

    /// Whether the workers are kept.
    pub fn get(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Errors that stop the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The runtime directory is unusable or in use by another agent.
    #[error(transparent)]
    RuntimeDir(#[from] RuntimeDirError),
    /// Host statistics are unavailable.
    #[error("cannot read host statistics: {0}")]
    Host(#[from] sysinfo::Error),
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

/// Everything the agent's services share.
#[derive(Debug)]
pub struct Agent {
    /// The node's authid.
    pub authid: String,
    /// Process control of the agent itself.
    pub controller: LocalProcess,
    /// The workers.
    pub workers: Workers,
    /// The node's process events.
    pub events: EventBus,
    /// Host statistics.
    pub host: system::Host,
    /// Cancelled on shutdown; ends long-lived streams.
    pub shutdown: CancellationToken,
    /// The heartbeat link to the master.
    pub master: Arc<heartbeat::MasterLink>,
    /// The newest leadership epoch seen: control calls of an older one are refused.
    pub epochs: Arc<switchyard::fencing::EpochGuard>,
}

/// Runs the agent on `listener` until `shutdown` is cancelled, then stops its workers (or,
/// with [`AgentOptions::keep_workers`] set, leaves them to the next agent). Before it serves,
/// it adopts the workers an earlier agent left in its runtime directory.
pub async fn serve(
    listener: TcpListener,
    options: AgentOptions,
    shutdown: CancellationToken,
) -> Result<(), AgentError> {
    let runtime_dir = RuntimeDir::open(&options.runtime_dir)?;
    let events = EventBus::default();
    let workers = Workers::new(
        WorkerConfig {
            exe: options.worker_exe.clone(),
            runtime_dir: options.runtime_dir.clone(),
            stop_timeout: options.stop_timeout,
            start_timeout: Duration::from_secs(10),
            log_lines: 1000,
            node: options.authid.clone(),
            launcher: options.launcher,
            adopt_grace: options.adopt_grace,
            backoff: options.backoff,
        },
        events.clone(),
        shutdown.clone(),
    )
    .map_err(|source| RuntimeDirError::Io {
        path: options.runtime_dir.clone(),
        source,
    })?;
    let adopting = Instant::now();
    let adoption = workers.adopt().await;
    if adoption != Default::default() {
        tracing::info!(
            adopted = adoption.adopted,
            restarting = adoption.restarting,
            dropped = adoption.dropped,
            elapsed_ms = adopting.elapsed().as_secs_f64() * 1000.0,
            "adopted the workers of the previous agent"
        );
    }
    let agent = Arc::new(Agent {
        authid: options.authid.clone(),
        controller: LocalProcess::new(controller::CONTROLLER, events.clone(), shutdown.clone()),
        workers: workers.clone(),
        events,
        host: system::Host::new()?,
        shutdown: shutdown.clone(),
        master: Arc::default(),
        epochs: Arc::default(),
    });
    let local = listener
        .local_addr()
        .map_or_else(|_| "?".to_owned(), |a| a.to_string());
    let endpoint = options.advertise.clone().unwrap_or_else(|| local.clone());
    let cluster_ip = endpoint
        .rsplit_once(':')
        .map_or(endpoint.as_str(), |(h, _)| h)
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let revocations = Arc::new(switchyard::revocation::Revocations::new());
    let (security, certs) = match options.security {
        Security::Mtls(tls) => {
            let certs = options.identity.clone().map(|identity| {
                certs::NodeCerts::new(
                    options.pki_dir.clone(),
                    options.authid.clone(),
                    certs::sans_for(&endpoint),
                    identity,
                    tls.certificates().clone(),
                )
            });
            (
                Security::Mtls(tls.with_revocations(revocations.clone())),
                certs,
            )
        }
        Security::Insecure => (Security::Insecure, None),
    };
    if let Some(certs) = &certs {
        tokio::spawn(certs::run(
            certs.clone(),
            options.masters.clone(),
            shutdown.clone(),
        ));
    }
    tokio::spawn(heartbeat::run(
        heartbeat::HeartbeatConfig {
            masters: options.masters.clone(),
            epochs: agent.epochs.clone(),
            certs,
            revocations,
            authid: options.authid.clone(),
            endpoint,
            cluster_ip,
            labels: options.labels.clone(),
        },
        agent.master.clone(),
        workers.clone(),
        shutdown.clone(),
    ));
    let served_certs = match &security {
        Security::Mtls(tls) => Some(tls.certificates().clone()),
        Security::Insecure => None,
    };
    let rpc = Arc::new(switchyard::metrics::RpcMetrics::default());
    if let Some(addr) = options.metrics_listen {
        let metrics_listener = TcpListener::bind(addr)
            .await
            .map_err(|source| AgentError::MetricsListen { addr, source })?;
        tokio::spawn(switchyard::metrics::serve(
            metrics_listener,
            metrics::scrape(agent.clone(), rpc.clone(), served_certs),
            shutdown.clone(),
        ));
    }
    tracing::info!(listen = %local, authid = %options.authid, masters = ?options.masters, "agent serving");
    let served = server::serve(
        listener,
        security,
        Policy::Agent,
        api::routes(agent),
        switchyard::pb::AGENT_SERVICES,
        rpc,
        shutdown,
    )
    .await;
    if options.keep_workers.get() {
        let live = workers.list().iter().filter(|w| w.is_live()).count();
        tracing::info!(
            workers = live,
            grace = ?options.adopt_grace,
            runtime_dir = %options.runtime_dir.display(),
            "agent stopping; its workers keep serving for the next agent on this runtime directory to adopt"
        );
    } else {
        workers.stop_all().await;
        runtime_dir.remove();
    }
    served?;
    tracing::info!("agent stopped");
    Ok(())
}

/// Locks `m`, carrying on past a panic of another holder (every guarded value here stays
/// consistent between statements).
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
