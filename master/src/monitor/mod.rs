//! Monitors: what makes started clusters run (docs/architecture.md, "Monitors").
//!
//! The [`Supervisor`] ([`supervisor`]) keeps, in each term this master leads, one monitor task
//! per cluster in STARTING/RUNNING/DEGRADED/STOPPING/ERROR (resumed from the store), tracks every
//! task it spawns, and restarts a monitor that ends unexpectedly. A monitor is an actor woken by a ticker and, at once, by any event
//! about its cluster and by node status changes. Each iteration has the same shape for both
//! kinds of cluster:
//!
//! 1. observe every online node over the [`agent::AgentApi`] seam (concurrently, deadlines);
//!    workers are recognised by the owner labels they carry ([`owner`]), never by store rows;
//! 2. plan with a pure function: [`web::plan`], or [`placement::place`] then [`router::plan`];
//! 3. execute the actions ([`execute`]: concurrent across nodes, ordered within one);
//! 4. decide the status with the pure [`status::decide`] and write it.
//!
//! A monitor never exits on an error: it logs, counts and retries on the next wake-up.

pub mod agent;
pub mod drain;
pub mod owner;
pub mod placement;
pub mod restart;
pub mod router;
pub mod router_monitor;
pub mod status;
pub mod supervisor;
pub mod web;
pub mod web_monitor;

#[cfg(test)]
mod tests;

pub use supervisor::Supervisor;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use futures::future::BoxFuture;
use switchyard::pb::agent::v1 as apb;
use switchyard::pb::master::v1::{ClusterWorker, EventType, Node, NodeStatus, event};

use crate::core::Core;
use crate::store::StoreError;
use agent::unreachable;

/// Which kind of cluster a monitor runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A web cluster.
    Web,
    /// A router cluster.
    Router,
}

/// Monitor settings.
#[derive(Debug, Clone, Copy)]
pub struct MonitorConfig {
    /// The ticker period.
    pub period: Duration,
}

impl Default for MonitorConfig {
    fn default() -> Self {
        MonitorConfig {
            period: Duration::from_secs(1),
        }
    }
}

/// Counters of all monitors.
#[derive(Debug)]
pub struct Stats {
    /// Reconciliation iterations.
    pub iterations: AtomicU64,
    /// Iterations that hit an error.
    pub errors: AtomicU64,
    /// Monitors restarted after they ended unexpectedly (a panic).
    pub restarts: AtomicU64,
    /// Iteration durations by kind of cluster.
    pub iteration_seconds: crate::metrics::IterationSeconds,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            iterations: AtomicU64::default(),
            errors: AtomicU64::default(),
            restarts: AtomicU64::default(),
            iteration_seconds: prometheus_client::metrics::family::Family::new_with_constructor(
                crate::metrics::iteration_histogram,
            ),
        }
    }
}

/// Why an iteration failed; the monitor logs it, counts it and retries.
#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    /// Reading or writing the store failed (a conflict means someone changed the cluster
    /// meanwhile: the iteration is retried at once).
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// A read through the master's core failed.
    #[error(transparent)]
    Core(#[from] crate::error::Error),
    /// An agent call failed (where the whole step depends on it).
    #[error("agent: {}", .0.message())]
    Agent(#[from] tonic::Status),
}

impl MonitorError {
    /// Whether to retry at once rather than on the next tick.
    fn retry_now(&self) -> bool {
        matches!(self, MonitorError::Store(StoreError::Conflict(_)))
    }
}

/// What a reconciliation iteration asks of its monitor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The cluster is STOPPED or gone: end the monitor.
    Done,
    /// Wait for the next tick or event.
    Continue,
    /// Actions ran: observe again at once.
    Again,
}

/// Every node by oid, with its liveness.
async fn nodes_by_oid(core: &Core) -> Result<BTreeMap<String, Node>, MonitorError> {
    Ok(core
        .list_nodes(None)
        .await?
        .into_iter()
        .map(|n| (n.oid.clone(), n))
        .collect())
}

/// Whether a node is online now that the iteration did not observe (it came back meanwhile):
/// a stopping cluster is not STOPPED before that node was looked at too.
async fn online_unseen<T>(
    core: &Core,
    observed: &BTreeMap<String, T>,
) -> Result<bool, MonitorError> {
    Ok(nodes_by_oid(core)
        .await?
        .values()
        .any(|n| n.status == NodeStatus::Online as i32 && !observed.contains_key(&n.oid)))
}

/// How long observing one node may take in all: each call has its own (shorter) deadline, and
/// the first that fails ends the node's observation, so a frozen node costs one call deadline.
const OBSERVE_NODE_TIMEOUT: Duration = crate::agents::ACT_TIMEOUT;

/// Observes every online node concurrently with `observe`; returns what the nodes that
/// answered hold, by node oid, and one line per node that did not.
async fn observe_online<'a, T, F, Fut>(
    nodes: &'a BTreeMap<String, Node>,
    observe: F,
) -> (BTreeMap<String, T>, Vec<String>)
where
    F: Fn(&'a Node) -> Fut,
    Fut: Future<Output = Result<T, tonic::Status>>,
{
    let online: Vec<&Node> = nodes
        .values()
        .filter(|n| n.status == NodeStatus::Online as i32)
        .collect();
    let results = futures::future::join_all(online.iter().map(|n| async {
        match tokio::time::timeout(OBSERVE_NODE_TIMEOUT, observe(n)).await {
            Ok(Ok(t)) => Ok(t),
            Ok(Err(s)) => Err(format!("{}: {}", n.authid, s.message())),
            Err(_) => Err(format!("{}: observation timed out", n.authid)),
        }
    }))
    .await;
    let mut observed = BTreeMap::new();
    let mut problems = Vec::new();
    for (node, result) in online.into_iter().zip(results) {
        match result {
            Ok(t) => {
                observed.insert(node.oid.clone(), t);
            }
            Err(e) => problems.push(e),
        }
    }
    (observed, problems)
}

/// A planned action, as the generic executor sees it.
trait Step: Send {
    /// The node (oid) it runs on.
    fn node(&self) -> &str;
    /// The worker it is about.
    fn worker(&self) -> &str;
    /// Whether its failure makes the worker's later actions pointless (a start step).
    fn blocks(&self) -> bool;
    /// What it does, for error lines.
    fn describe(&self) -> String;
}

/// Runs one action of a monitor against an agent.
trait Executor: Sync {
    /// The monitor's action type.
    type Action: Step;
    /// Runs `action` on `node`.
    fn run<'s>(
        &'s self,
        node: &'s Node,
        action: Self::Action,
    ) -> BoxFuture<'s, Result<(), tonic::Status>>;
}

/// Executes `actions`: concurrently across nodes, in order within a node. A failed start step
/// skips the worker's remaining actions; a node that does not answer has its remaining actions
/// skipped. Returns one line per failure.
async fn execute<E: Executor>(
    exec: &E,
    nodes: &BTreeMap<String, Node>,
    actions: Vec<E::Action>,
) -> Vec<String> {
    let mut by_node: BTreeMap<String, Vec<E::Action>> = BTreeMap::new();
    for a in actions {
        by_node.entry(a.node().to_owned()).or_default().push(a);
    }
    let runs = by_node.into_iter().filter_map(|(oid, list)| {
        let node = nodes.get(&oid)?;
        Some(async move {
            let mut failures = Vec::new();
            let mut blocked = BTreeSet::new();
            for action in list {
                if blocked.contains(action.worker()) {
                    continue;
                }
                let (what, worker, blocks) = (
                    action.describe(),
                    action.worker().to_owned(),
                    action.blocks(),
                );
                if let Err(s) = exec.run(node, action).await {
                    failures.push(format!("{} {what}: {}", node.authid, s.message()));
                    if unreachable(&s) {
                        break;
                    }
                    if blocks {
                        blocked.insert(worker);
                    }
                }
            }
            failures
        })
    });
    futures::future::join_all(runs)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// Publishes `on_worker_started` / `on_worker_stopped` for a worker a monitor started/stopped.
fn publish_worker(
    core: &Core,
    node: &Node,
    worker: Option<apb::Worker>,
    group: &str,
    kind: EventType,
) {
    let Some(w) = worker else { return };
    let cw = ClusterWorker {
        node_oid: node.oid.clone(),
        node_authid: node.authid.clone(),
        worker_id: w.id,
        pid: w.pid,
        status: w.status,
        observed: Some(std::time::SystemTime::now().into()),
        workergroup_oid: group.to_owned(),
        port: 0,
    };
    core.events
        .publish(kind, &node.oid, None, event::Object::Worker(cw));
}
