//! The master's core state, shared by every API service: the store, the event bus and the
//! nodes' liveness. Each concept adds its operations in its own module (`web`, `router`, `nodes`).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use switchyard::auth::Principal;
use switchyard::pb::master::v1::Who;
use tokio_util::sync::CancellationToken;

use crate::agents::Agents;
use crate::events::Events;
use crate::nodes::Liveness;
use crate::store::Store;

/// Node liveness settings.
#[derive(Debug, Clone, Copy)]
pub struct HeartbeatConfig {
    /// The interval agents are asked to heartbeat at.
    pub interval: Duration,
    /// A node is offline after this long without a heartbeat.
    pub grace: Duration,
}

impl Default for HeartbeatConfig {
    fn default() -> Self {
        HeartbeatConfig {
            interval: Duration::from_millis(500),
            grace: Duration::from_millis(1500),
        }
    }
}

/// Everything the master's services share.
#[derive(Debug)]
pub struct Core {
    /// The durable store.
    pub store: Arc<dyn Store>,
    /// The event bus.
    pub events: Events,
    /// Which nodes are online.
    pub liveness: Liveness,
    /// Heartbeat settings.
    pub heartbeat: HeartbeatConfig,
    /// Cancelled on shutdown.
    pub shutdown: CancellationToken,
    /// Clients of the agents.
    pub agents: Arc<Agents>,
    /// Desired and running workers per cluster, as the monitors last saw them (for metrics).
    pub gauges: crate::metrics::ClusterGauges,
    /// Commit durations of the store (for metrics).
    pub commit_seconds: prometheus_client::metrics::histogram::Histogram,
    /// Nodes gone offline, by node and why (for metrics).
    pub offline_total: crate::metrics::OfflineCounters,
    /// Which master leads (on sled: this one, always).
    pub leadership: Arc<crate::leader::Leadership>,
    /// Node certificates: the CA key, their lifetime, the revocations (set once at start-up,
    /// [`Core::start_issuing`]; defaults until then).
    issuing: std::sync::OnceLock<crate::join::Issuing>,
}

impl Core {
    /// A core over `store`.
    pub fn new(
        store: Arc<dyn Store>,
        heartbeat: HeartbeatConfig,
        agents: Arc<Agents>,
        shutdown: CancellationToken,
    ) -> Self {
        let metered = crate::store::metered::MeteredStore::new(store);
        let commit_seconds = metered.seconds.clone();
        let store: Arc<dyn Store> = Arc::new(metered);
        Core {
            events: Events::start(store.clone(), shutdown.clone()),
            store,
            commit_seconds,
            offline_total: Default::default(),
            liveness: Liveness::default(),
            heartbeat,
            agents,
            gauges: Default::default(),
            leadership: Arc::new(crate::leader::Leadership::single(
                "master",
                "",
                shutdown.clone(),
            )),
            issuing: std::sync::OnceLock::new(),
            shutdown,
        }
    }

    /// This core with `leadership` (several masters on etcd) instead of leading alone.
    pub fn with_leadership(mut self, leadership: Arc<crate::leader::Leadership>) -> Self {
        self.leadership = leadership;
        self
    }

    /// Commits a write only the leader makes (monitors, node liveness), conditioned on this
    /// master still leading: UNAVAILABLE once it does not.
    pub async fn commit_as_leader(
        &self,
        txn: crate::store::Txn,
    ) -> Result<crate::store::Revision, crate::store::StoreError> {
        let term = self.leadership.term().ok_or_else(|| {
            crate::leader::fenced(crate::store::StoreError::Conflict(
                String::from_utf8_lossy(crate::store::keys::LEADER).into_owned(),
            ))
        })?;
        let txn = term.fence(txn)?;
        self.store.commit(txn).await.map_err(crate::leader::fenced)
    }
}

impl Core {
    /// How this master issues node certificates.
    pub fn issuing(&self) -> &crate::join::Issuing {
        self.issuing.get_or_init(Default::default)
    }

    /// Issues node certificates with `signer` for `node_cert_ttl`, with the revocations of the
    /// store; returns the revocations for the role layer. Called once, before serving.
    pub async fn start_issuing(
        &self,
        signer: Option<Arc<switchyard::issuer::CaSigner>>,
        node_cert_ttl: Duration,
    ) -> Result<Arc<switchyard::revocation::Revocations>, crate::store::StoreError> {
        let revocations = Arc::new(switchyard::revocation::Revocations::new());
        let issuing = crate::join::Issuing {
            signer,
            node_cert_ttl,
            revocations: revocations.clone(),
        };
        if self.issuing.set(issuing).is_err() {
            tracing::error!("node certificate issuing started twice; keeping the first");
        }
        self.load_revocations().await?;
        Ok(self.issuing().revocations.clone())
    }
}

/// Nanoseconds since the Unix epoch (the reference's `changed`).
pub fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

/// A new object id.
pub fn new_oid() -> String {
    uuid::Uuid::new_v4().hyphenated().to_string()
}

/// The reference's `who` of a caller.
pub fn who(principal: Option<&Principal>) -> Who {
    match principal {
        Some(p) => Who {
            principal: p.uri(),
            role: p.role.as_str().to_owned(),
            name: p.name.clone(),
        },
        None => Who::default(),
    }
}
