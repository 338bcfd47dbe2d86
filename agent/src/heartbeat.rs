//! The agent's heartbeat stream to the master: registers the node on first contact and keeps it
//! online; reconnects with exponential backoff while the master is away. The master's answers
//! carry the revocation list ([`switchyard::revocation`]) the agent's role layer checks.
//!
//! With several masters (`--master a,b,c`) the agent heartbeats to the leader: a follower's
//! answers name the leader, and the stream moves there; a master that does not answer within
//! three heartbeat intervals (down, or stopped) is left for the next one in the list. The
//! leader's epoch in every answer raises the epoch below which the agent refuses control calls
//! (`switchyard::fencing`; docs/operations.md, "Several masters").
//!
//! When the node's certificate is renewed ([`crate::certs`]), the stream moves to a connection
//! made with the new certificate: the new stream is up (its first answer arrived) before the old
//! one is dropped, and the master keeps a node online while any of its streams is.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use std::sync::Arc;

use switchyard::pb::master::v1::node_service_client::NodeServiceClient;
use switchyard::pb::master::v1::{HeartbeatRequest, HeartbeatResponse};
use switchyard::pki::Identity;
use switchyard::revocation::Revocations;
use tokio_util::sync::CancellationToken;
use tonic::transport::Endpoint;

use crate::certs::NodeCerts;
use crate::worker::Workers;

/// Where and as whom to heartbeat.
#[derive(Debug, Clone)]
pub struct HeartbeatConfig {
    /// The masters' `host:port`s, tried in turn.
    pub masters: Vec<String>,
    /// The newest leadership epoch seen, raised by the masters' answers.
    pub epochs: Arc<switchyard::fencing::EpochGuard>,
    /// The node's certificate; `None` with `--insecure` (plaintext).
    pub certs: Option<Arc<NodeCerts>>,
    /// The revocations the master sends, checked by the agent's role layer.
    pub revocations: Arc<Revocations>,
    /// The node's authid.
    pub authid: String,
    /// The agent endpoint the master should call.
    pub endpoint: String,
    /// The node's address in the cluster network.
    pub cluster_ip: String,
    /// Free-form labels.
    pub labels: HashMap<String, String>,
}

/// What the agent knows about its master connection (GetStatus).
#[derive(Debug, Default)]
pub struct MasterLink {
    connected: AtomicBool,
    node_oid: Mutex<String>,
}

impl MasterLink {
    /// Whether the heartbeat stream is up.
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// The node oid the master assigned (empty before the first answer).
    pub fn node_oid(&self) -> String {
        self.node_oid
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Capped at two heartbeat intervals, so a restarted master sees its nodes again within its grace period.
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// The pause after the master refused the node's certificate (revoked or expired): retrying
/// cannot help until an operator acts, so the master is not asked every second.
const REFUSED_BACKOFF: Duration = Duration::from_secs(30);

/// How a heartbeat session ended.
enum Ended {
    /// Shutdown.
    Shutdown,
    /// The master answered that another one leads, at this address.
    Leader(String),
    /// The stream failed.
    Failed(String),
}

impl From<String> for Ended {
    fn from(e: String) -> Self {
        Ended::Failed(e)
    }
}

/// Heartbeats until `shutdown`.
pub async fn run(
    config: HeartbeatConfig,
    link: std::sync::Arc<MasterLink>,
    workers: Workers,
    shutdown: CancellationToken,
) {
    let mut backoff = BACKOFF_MIN;
    let mut next = 0;
    let mut master = config.masters.first().cloned().unwrap_or_default();
    loop {
        let result = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = session(&config, &master, &link, &workers, &shutdown) => r,
        };
        link.connected.store(false, Ordering::Relaxed);
        let mut pause = backoff;
        match result {
            Ended::Shutdown => return,
            Ended::Leader(leader) => {
                tracing::info!(from = %master, to = %leader, "moving the heartbeat stream to the leader");
                master = leader;
                continue;
            }
            Ended::Failed(e)
                if e.contains("CERTIFICATE_REVOKED") || e.contains("CERTIFICATE_EXPIRED") =>
            {
                tracing::error!(%master, error = %e, retry_in = ?REFUSED_BACKOFF, "the master refuses this node's certificate: join again with a new token");
                pause = REFUSED_BACKOFF;
            }
            Ended::Failed(e) => {
                tracing::warn!(%master, error = %e, retry_in = ?backoff, "heartbeat to master failed");
                if config.masters.len() > 1 {
                    // Another master may answer at once: try it before pausing.
                    next = (next + 1) % config.masters.len();
                    master = config.masters[next].clone();
                    if next != 0 {
                        pause = Duration::ZERO;
                    }
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
        if link.connected() {
            backoff = BACKOFF_MIN;
        }
    }
}

/// A gRPC status as one line: code, reason, message.
pub fn describe(status: &tonic::Status) -> String {
    match switchyard::error::reason_of(status) {
        Some(reason) => format!("{:?} ({reason}): {}", status.code(), status.message()),
        None => format!("{:?}: {}", status.code(), status.message()),
    }
}

/// The endpoint of the master at `master` (`host:port`), over mTLS as `identity` (`None`:
/// plaintext).
pub fn master_endpoint(master: &str, identity: Option<&Identity>) -> Result<Endpoint, String> {
    let scheme = if identity.is_some() { "https" } else { "http" };
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://{master}"))
        .map_err(|e| format!("bad master address: {e}"))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true);
    if let Some(identity) = identity {
        let host = master
            .rsplit_once(':')
            .map_or(master, |(h, _)| h)
            .trim_start_matches('[')
            .trim_end_matches(']');
        endpoint = endpoint
            .tls_config(identity.client_tls(host))
            .map_err(|e| e.to_string())?;
    }
    Ok(endpoint)
}

/// One open heartbeat stream.
struct Beats {
    tx: tokio::sync::mpsc::Sender<HeartbeatRequest>,
    replies: tonic::Streaming<HeartbeatResponse>,
}

fn beat(config: &HeartbeatConfig, workers: &Workers) -> HeartbeatRequest {
    HeartbeatRequest {
        authid: config.authid.clone(),
        endpoint: config.endpoint.clone(),
        cluster_ip: config.cluster_ip.clone(),
        cpu_count: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
        version: switchyard::VERSION.to_owned(),
        labels: config.labels.clone(),
        workers: workers.list().iter().filter(|w| w.is_live()).count() as u32,
        revocations_version: config.revocations.version(),
    }
}

/// Opens a stream with the current certificate; returns it once the master answered.
async fn open(
    config: &HeartbeatConfig,
    master: &str,
    workers: &Workers,
) -> Result<(Beats, HeartbeatResponse), String> {
    let identity = config.certs.as_ref().map(|c| c.current());
    let channel = master_endpoint(master, identity.as_ref())?
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    let mut client = NodeServiceClient::new(channel);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(beat(config, workers))
        .await
        .map_err(|e| e.to_string())?;
    let mut replies = client
        .heartbeat(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map_err(|s| describe(&s))?
        .into_inner();
    match replies.message().await {
        Ok(Some(first)) => Ok((Beats { tx, replies }, first)),
        Ok(None) => Err("the master ended the heartbeat stream".into()),
        Err(s) => Err(describe(&s)),
    }
}

/// Resolves at the next certificate renewal (never without certificates).
async fn renewed(changes: &mut Option<tokio::sync::watch::Receiver<u64>>) {
    match changes {
        Some(rx) => {
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}

/// One heartbeat session (its stream moved to each renewed certificate); returns `Ok` only
/// on shutdown.
async fn session(
    config: &HeartbeatConfig,
    master: &str,
    link: &MasterLink,
    workers: &Workers,
    shutdown: &CancellationToken,
) -> Ended {
    match beating(config, master, link, workers, shutdown).await {
        Ok(ended) | Err(ended) => ended,
    }
}

async fn beating(
    config: &HeartbeatConfig,
    master: &str,
    link: &MasterLink,
    workers: &Workers,
    shutdown: &CancellationToken,
) -> Result<Ended, Ended> {
    let mut changes = config.certs.as_ref().map(|c| c.subscribe());
    let (mut beats, first) = open(config, master, workers).await?;
    let mut interval = Duration::from_millis(500);
    let mut ticker = tokio::time::interval(interval);
    ticker.tick().await;
    let mut reply = Some(first);
    let mut last_answer = tokio::time::Instant::now();
    loop {
        if let Some(r) = reply.take() {
            last_answer = tokio::time::Instant::now();
            if !r.leader_address.is_empty() && r.leader_address != master {
                config.epochs.observe(r.leader_epoch);
                return Ok(Ended::Leader(r.leader_address));
            }
            answered(config, master, link, r, &mut interval, &mut ticker).await;
        }
        // A master that stops answering (stopped, or cut off) is left for another.
        let silent = last_answer + (interval * 3).max(Duration::from_secs(1));
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(Ended::Shutdown),
            _ = tokio::time::sleep_until(silent) => {
                return Err(Ended::Failed(format!("no answer for {:?}", silent - last_answer)));
            }
            _ = ticker.tick() => {
                beats.tx.send(beat(config, workers)).await.map_err(|_| "heartbeat stream closed".to_owned())?;
            }
            _ = renewed(&mut changes) => match open(config, master, workers).await {
                Ok((next, first)) => {
                    tracing::info!(%master, "heartbeat stream moved to the renewed certificate");
                    beats = next; // the old stream ends here, after the new one is up
                    reply = Some(first);
                }
                Err(e) => tracing::warn!(%master, error = %e, "cannot open a heartbeat stream with the renewed certificate; keeping the old one"),
            },
            next = beats.replies.message() => match next {
                Ok(Some(r)) => reply = Some(r),
                Ok(None) => return Err("the master ended the heartbeat stream".to_owned().into()),
                Err(s) => return Err(describe(&s).into()),
            },
        }
    }
}

/// Takes in one answer of the master: the node oid, the interval, the revocations.
async fn answered(
    config: &HeartbeatConfig,
    master: &str,
    link: &MasterLink,
    r: HeartbeatResponse,
    interval: &mut Duration,
    ticker: &mut tokio::time::Interval,
) {
    config.epochs.observe(r.leader_epoch);
    if !link.connected.swap(true, Ordering::Relaxed) {
        tracing::info!(%master, node_oid = %r.node_oid, epoch = r.leader_epoch, "connected to master");
    }
    *link.node_oid.lock().unwrap_or_else(|p| p.into_inner()) = r.node_oid;
    if let Some(list) = r.revocations {
        let nodes = list
            .nodes
            .into_iter()
            .map(|n| (n.authid, n.revoked_until.map_or(0, |t| t.seconds)))
            .collect();
        config.revocations.replace(nodes);
        tracing::info!(version = r.revocations_version, "revocation list updated");
    }
    let wanted = Duration::from_millis(u64::from(r.heartbeat_interval_ms.max(10)));
    if wanted != *interval {
        *interval = wanted;
        *ticker = tokio::time::interval(wanted);
        ticker.tick().await;
    }
}
