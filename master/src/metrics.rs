//! The master's `/metrics`: per-cluster status and desired/running/unplaced workers (as the
//! monitors last saw them) and when each was last converged, node liveness (last heartbeat,
//! offline transitions by reason), monitor iterations, latencies, errors and restarts, store
//! commit latency, and RPC counts and latencies. docs/operations.md lists every family.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use switchyard::metrics::{RpcMetrics, Scrape};
use switchyard::pb::master::v1::{ClusterStatus, NodeStatus, RouterCluster, WebCluster};
use switchyard::tls::CertSwap;

use crate::core::Core;
use crate::monitor::Supervisor;
use crate::store::{StoreExt, keys};

/// What a monitor last saw of its cluster.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkerCounts {
    /// Workers that should run.
    pub desired: u64,
    /// Workers found running.
    pub running: u64,
    /// Router workers no member can take within its hardlimit.
    pub unplaced: u64,
}

/// What the monitors last saw, by cluster oid.
#[derive(Debug, Default)]
pub struct ClusterGauges(Mutex<BTreeMap<String, ClusterSeen>>);

#[derive(Debug, Clone, Copy, Default)]
struct ClusterSeen {
    counts: WorkerCounts,
    /// When an iteration last found the cluster converged (RUNNING, nothing to do).
    converged: Option<SystemTime>,
}

impl ClusterGauges {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, ClusterSeen>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records the counts of cluster `oid`.
    pub fn set(&self, oid: &str, counts: WorkerCounts) {
        self.lock().entry(oid.to_owned()).or_default().counts = counts;
    }

    /// Records that cluster `oid` is converged now.
    pub fn converged(&self, oid: &str) {
        self.lock().entry(oid.to_owned()).or_default().converged = Some(SystemTime::now());
    }

    /// Forgets cluster `oid` (its monitor ended).
    pub fn remove(&self, oid: &str) {
        self.lock().remove(oid);
    }

    fn get(&self, oid: &str) -> ClusterSeen {
        self.lock().get(oid).copied().unwrap_or_default()
    }
}

/// Nodes gone offline, by node and reason (`missed`: no heartbeat within the grace period;
/// `stream_ended`: the heartbeat stream broke).
pub type OfflineCounters = Family<NodeReasonLabels, Counter>;

/// Labels of [`OfflineCounters`].
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeReasonLabels {
    /// The node's authid.
    pub node: String,
    /// Why it went offline.
    pub reason: &'static str,
}

/// Labels of the monitor iteration histogram.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// `web` or `router`.
    pub kind: &'static str,
}

/// Monitor iteration durations by kind of cluster.
pub type IterationSeconds = Family<KindLabels, Histogram, fn() -> Histogram>;

/// A histogram of monitor iterations: 1 ms .. 8 s.
pub fn iteration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 14))
}

fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClusterLabels {
    kind: String,
    cluster: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InfoLabels {
    kind: String,
    cluster: String,
    cluster_oid: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    kind: String,
    cluster: String,
    status: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeLabels {
    node: String,
}

fn status_name(s: i32) -> String {
    ClusterStatus::try_from(s)
        .map(|s| {
            s.as_str_name()
                .trim_start_matches("CLUSTER_STATUS_")
                .to_ascii_lowercase()
        })
        .unwrap_or_default()
}

/// The master's scrape; `certs` is the certificate its server presents (none without mTLS).
pub fn scrape(
    core: Arc<Core>,
    supervisor: Arc<Supervisor>,
    rpc: Arc<RpcMetrics>,
    certs: Option<Arc<CertSwap>>,
) -> Scrape {
    Arc::new(move || {
        let (core, supervisor, rpc) = (core.clone(), supervisor.clone(), rpc.clone());
        let certs = certs.clone();
        Box::pin(async move {
            let mut r = registry(&core, &supervisor, &rpc).await;
            switchyard::metrics::register_certificate_validity(&mut r, "master", certs.as_deref());
            r
        })
    })
}

async fn registry(core: &Core, supervisor: &Supervisor, rpc: &RpcMetrics) -> Registry {
    let mut r = Registry::default();
    rpc.register(&mut r);

    let status = Family::<StatusLabels, Gauge>::default();
    let desired = Family::<ClusterLabels, Gauge>::default();
    let running = Family::<ClusterLabels, Gauge>::default();
    let unplaced = Family::<ClusterLabels, Gauge>::default();
    let converged = Family::<ClusterLabels, Gauge<f64, AtomicU64>>::default();
    let info = Family::<InfoLabels, Gauge>::default();
    let mut clusters: Vec<(&str, String, String, i32)> = Vec::new();
    for c in core
        .store
        .list::<WebCluster>(keys::WEBCLUSTERS)
        .await
        .unwrap_or_default()
    {
        clusters.push(("web", c.oid, c.name, c.status));
    }
    for c in core
        .store
        .list::<RouterCluster>(keys::ROUTERCLUSTERS)
        .await
        .unwrap_or_default()
    {
        clusters.push(("router", c.oid, c.name, c.status));
    }
    for (kind, oid, name, s) in clusters {
        info.get_or_create(&InfoLabels {
            kind: kind.to_owned(),
            cluster: name.clone(),
            cluster_oid: oid.clone(),
        })
        .set(1);
        status
            .get_or_create(&StatusLabels {
                kind: kind.to_owned(),
                cluster: name.clone(),
                status: status_name(s),
            })
            .set(1);
        let seen = if s == ClusterStatus::Stopped as i32 {
            ClusterSeen::default()
        } else {
            core.gauges.get(&oid)
        };
        let labels = ClusterLabels {
            kind: kind.to_owned(),
            cluster: name,
        };
        desired
            .get_or_create(&labels)
            .set(seen.counts.desired as i64);
        running
            .get_or_create(&labels)
            .set(seen.counts.running as i64);
        if kind == "router" {
            unplaced
                .get_or_create(&labels)
                .set(seen.counts.unplaced as i64);
        }
        if let Some(t) = seen.converged {
            converged.get_or_create(&labels).set(unix_seconds(t));
        }
    }
    r.register(
        "switchyard_cluster_unplaced_workers",
        "Router workers of a started cluster that no member can take within its hardlimit",
        unplaced,
    );
    r.register(
        "switchyard_cluster_last_converged_timestamp_seconds",
        "When the cluster's monitor last found it converged (RUNNING, nothing to do); alert on time() minus this",
        converged,
    );
    r.register(
        "switchyard_cluster_info",
        "1 for each cluster: its name (cluster) and oid (cluster_oid, the label of the agents' traffic series)",
        info,
    );
    r.register(
        "switchyard_cluster_status",
        "1 for each cluster's current status (label status)",
        status,
    );
    r.register(
        "switchyard_cluster_desired_workers",
        "Workers a started cluster should run, as its monitor last planned",
        desired,
    );
    r.register(
        "switchyard_cluster_running_workers",
        "Workers of a cluster found running by its monitor",
        running,
    );

    let online = Family::<NodeLabels, Gauge>::default();
    let last_heartbeat = Family::<NodeLabels, Gauge<f64, AtomicU64>>::default();
    for n in core.list_nodes(None).await.unwrap_or_default() {
        let labels = NodeLabels { node: n.authid };
        online
            .get_or_create(&labels)
            .set(i64::from(n.status == NodeStatus::Online as i32));
        if let Some(t) = n.last_heartbeat.and_then(|t| SystemTime::try_from(t).ok()) {
            last_heartbeat.get_or_create(&labels).set(unix_seconds(t));
        }
    }
    r.register(
        "switchyard_node_online",
        "1 while a node's agent heartbeats, 0 when it is offline",
        online,
    );
    r.register(
        "switchyard_node_last_heartbeat_timestamp_seconds",
        "When this master last received the node's heartbeat (late heartbeats: time() minus this)",
        last_heartbeat,
    );
    r.register(
        "switchyard_node_offline",
        "Times a node went offline, by reason: missed (no heartbeat within the grace period) or stream_ended",
        core.offline_total.clone(),
    );
    r.register(
        "switchyard_store_commit_duration_seconds",
        "Time from commit to durable acknowledgement by the master's store (sled flush, etcd quorum)",
        core.commit_seconds.clone(),
    );

    let iterations = Counter::<u64>::default();
    iterations.inc_by(supervisor.stats.iterations.load(Ordering::Relaxed));
    let errors = Counter::<u64>::default();
    errors.inc_by(supervisor.stats.errors.load(Ordering::Relaxed));
    r.register(
        "switchyard_monitor_iterations",
        "Reconciliation iterations of all monitors",
        iterations,
    );
    r.register(
        "switchyard_monitor_errors",
        "Reconciliation iterations that failed (retried)",
        errors,
    );
    r.register(
        "switchyard_monitor_iteration_duration_seconds",
        "Duration of one reconciliation iteration (observe, plan, execute, status)",
        supervisor.stats.iteration_seconds.clone(),
    );
    let restarts = Counter::<u64>::default();
    restarts.inc_by(supervisor.stats.restarts.load(Ordering::Relaxed));
    r.register(
        "switchyard_monitor_restarts",
        "Monitors restarted after they ended unexpectedly (a panic; see the master's log)",
        restarts,
    );
    let leader = Gauge::<i64>::default();
    leader.set(i64::from(core.leadership.is_leader()));
    r.register(
        "switchyard_master_is_leader",
        "1 while this master leads (runs the monitors), 0 while it follows",
        leader,
    );
    let epoch = Gauge::<i64>::default();
    epoch.set(core.leadership.view().epoch as i64);
    r.register(
        "switchyard_master_leader_epoch",
        "The leadership epoch this master knows (grows with every new leader; 0 on sled)",
        epoch,
    );
    r
}
