//! The master's `/metrics`: per-cluster status and desired/running workers (as the monitors last
//! saw them), node liveness, monitor iterations and errors, and RPC counts and latencies.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use switchyard::metrics::{RpcMetrics, Scrape};
use switchyard::pb::master::v1::{ClusterStatus, NodeStatus, RouterCluster, WebCluster};

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
}

/// Worker counts by cluster oid, written by the monitors.
#[derive(Debug, Default)]
pub struct ClusterGauges(Mutex<BTreeMap<String, WorkerCounts>>);

impl ClusterGauges {
    /// Records the counts of cluster `oid`.
    pub fn set(&self, oid: &str, counts: WorkerCounts) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(oid.to_owned(), counts);
    }

    /// Forgets cluster `oid` (its monitor ended).
    pub fn remove(&self, oid: &str) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).remove(oid);
    }

    fn get(&self, oid: &str) -> WorkerCounts {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(oid)
            .copied()
            .unwrap_or_default()
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClusterLabels {
    kind: String,
    cluster: String,
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

/// The master's scrape.
pub fn scrape(core: Arc<Core>, supervisor: Arc<Supervisor>, rpc: Arc<RpcMetrics>) -> Scrape {
    Arc::new(move || {
        let (core, supervisor, rpc) = (core.clone(), supervisor.clone(), rpc.clone());
        Box::pin(async move { registry(&core, &supervisor, &rpc).await })
    })
}

async fn registry(core: &Core, supervisor: &Supervisor, rpc: &RpcMetrics) -> Registry {
    let mut r = Registry::default();
    rpc.register(&mut r);

    let status = Family::<StatusLabels, Gauge>::default();
    let desired = Family::<ClusterLabels, Gauge>::default();
    let running = Family::<ClusterLabels, Gauge>::default();
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
        status
            .get_or_create(&StatusLabels {
                kind: kind.to_owned(),
                cluster: name.clone(),
                status: status_name(s),
            })
            .set(1);
        let counts = if s == ClusterStatus::Stopped as i32 {
            WorkerCounts::default()
        } else {
            core.gauges.get(&oid)
        };
        let labels = ClusterLabels {
            kind: kind.to_owned(),
            cluster: name,
        };
        desired.get_or_create(&labels).set(counts.desired as i64);
        running.get_or_create(&labels).set(counts.running as i64);
    }
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
    for n in core.list_nodes(None).await.unwrap_or_default() {
        online
            .get_or_create(&NodeLabels { node: n.authid })
            .set(i64::from(n.status == NodeStatus::Online as i32));
    }
    r.register(
        "switchyard_node_online",
        "1 while a node's agent heartbeats, 0 when it is offline",
        online,
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
    let restarts = Counter::<u64>::default();
    restarts.inc_by(supervisor.stats.restarts.load(Ordering::Relaxed));
    r.register(
        "switchyard_monitor_restarts",
        "Monitors restarted after they ended unexpectedly (a panic; see the master's log)",
        restarts,
    );
    r
}
