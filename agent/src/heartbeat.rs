//! The agent's heartbeat stream to the master: registers the node on first contact and keeps it
//! online; reconnects with exponential backoff while the master is away.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use switchyard::pb::master::v1::HeartbeatRequest;
use switchyard::pb::master::v1::node_service_client::NodeServiceClient;
use switchyard::pki::Identity;
use tokio_util::sync::CancellationToken;
use tonic::transport::Endpoint;

use crate::worker::Workers;

/// Where and as whom to heartbeat.
#[derive(Debug, Clone)]
pub struct HeartbeatConfig {
    /// The master's `host:port`.
    pub master: String,
    /// The node's certificate; `None` with `--insecure` (plaintext).
    pub identity: Option<Identity>,
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

/// Heartbeats until `shutdown`.
pub async fn run(
    config: HeartbeatConfig,
    link: std::sync::Arc<MasterLink>,
    workers: Workers,
    shutdown: CancellationToken,
) {
    let mut backoff = BACKOFF_MIN;
    loop {
        let result = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = session(&config, &link, &workers, &shutdown) => r,
        };
        link.connected.store(false, Ordering::Relaxed);
        match result {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(master = %config.master, error = %e, retry_in = ?backoff, "heartbeat to master failed");
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
        if link.connected() {
            backoff = BACKOFF_MIN;
        }
    }
}

/// One heartbeat stream; returns `Ok` only on shutdown.
async fn session(
    config: &HeartbeatConfig,
    link: &MasterLink,
    workers: &Workers,
    shutdown: &CancellationToken,
) -> Result<(), String> {
    let scheme = if config.identity.is_some() {
        "https"
    } else {
        "http"
    };
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://{}", config.master))
        .map_err(|e| format!("bad master address: {e}"))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true);
    if let Some(identity) = &config.identity {
        let host = config
            .master
            .rsplit_once(':')
            .map_or(config.master.as_str(), |(h, _)| h)
            .trim_start_matches('[')
            .trim_end_matches(']');
        endpoint = endpoint
            .tls_config(identity.client_tls(host))
            .map_err(|e| e.to_string())?;
    }
    let channel = endpoint.connect().await.map_err(|e| e.to_string())?;
    let mut client = NodeServiceClient::new(channel);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let beat = || HeartbeatRequest {
        authid: config.authid.clone(),
        endpoint: config.endpoint.clone(),
        cluster_ip: config.cluster_ip.clone(),
        cpu_count: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
        version: switchyard::VERSION.to_owned(),
        labels: config.labels.clone(),
        workers: workers.list().iter().filter(|w| w.is_live()).count() as u32,
    };
    tx.send(beat()).await.map_err(|e| e.to_string())?;
    let mut replies = client
        .heartbeat(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map_err(|s| format!("{}: {}", s.code(), s.message()))?
        .into_inner();
    let mut interval = Duration::from_millis(500);
    let mut ticker = tokio::time::interval(interval);
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = ticker.tick() => {
                tx.send(beat()).await.map_err(|_| "heartbeat stream closed".to_owned())?;
            }
            reply = replies.message() => match reply {
                Ok(Some(r)) => {
                    if !link.connected.swap(true, Ordering::Relaxed) {
                        tracing::info!(master = %config.master, node_oid = %r.node_oid, "connected to master");
                    }
                    *link.node_oid.lock().unwrap_or_else(|p| p.into_inner()) = r.node_oid;
                    let wanted = Duration::from_millis(u64::from(r.heartbeat_interval_ms.max(10)));
                    if wanted != interval {
                        interval = wanted;
                        ticker = tokio::time::interval(interval);
                        ticker.tick().await;
                    }
                }
                Ok(None) => return Err("the master ended the heartbeat stream".into()),
                Err(s) => return Err(format!("{}: {}", s.code(), s.message())),
            },
        }
    }
}
