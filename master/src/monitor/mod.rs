//! Monitors: what makes started clusters run (docs/architecture.md, "Monitors").
//!
//! The [`Supervisor`] keeps one monitor task per cluster in STARTING/RUNNING/DEGRADED/STOPPING/
//! ERROR (resumed from the store at start), tracks every task it spawns, and restarts a monitor
//! that ends unexpectedly. A monitor is an actor woken by a ticker and, at once, by any event
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
pub mod owner;
pub mod placement;
pub mod router;
pub mod router_monitor;
pub mod status;
pub mod web;
pub mod web_monitor;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use switchyard::pb::agent::v1 as apb;
use switchyard::pb::master::v1::{
    ClusterStatus, ClusterWorker, EventType, Node, NodeStatus, RouterCluster, WebCluster, event,
};
use tokio::sync::Notify;
use tokio_util::task::TaskTracker;

use crate::core::Core;
use crate::store::{StoreError, StoreExt, keys};
use agent::{AgentApi, unreachable};
use owner::{Owner, live};

/// How often the supervisor looks in the store for active clusters without a monitor.
const RESUME_EVERY: Duration = Duration::from_secs(10);

/// How many times a sweep is tried while the store cannot answer.
const SWEEP_ATTEMPTS: usize = 10;

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

/// Starts, wakes and resumes monitors, and restarts one that ends unexpectedly.
#[derive(Debug)]
pub struct Supervisor {
    core: Arc<Core>,
    agents: Arc<dyn AgentApi>,
    config: MonitorConfig,
    monitors: std::sync::Mutex<HashMap<String, Arc<Notify>>>,
    tasks: TaskTracker,
    /// The stop token of the current term of leadership.
    term: std::sync::Mutex<Option<tokio_util::sync::CancellationToken>>,
    /// Counters.
    pub stats: Stats,
}

impl Supervisor {
    /// A supervisor whose monitors call `agents`; call [`Supervisor::run`] to start it.
    pub fn new(core: Arc<Core>, agents: Arc<dyn AgentApi>, config: MonitorConfig) -> Arc<Self> {
        Arc::new(Supervisor {
            core,
            agents,
            config,
            monitors: Default::default(),
            tasks: TaskTracker::new(),
            term: Default::default(),
            stats: Stats::default(),
        })
    }

    /// Runs the monitors in each term this master leads (docs/operations.md, "Several
    /// masters"): when a term ends, every monitor of it stops before the next term starts.
    pub async fn run(self: Arc<Self>) {
        let mut view = self.core.leadership.subscribe();
        loop {
            let term = loop {
                if let Some(term) = view.borrow_and_update().term.clone()
                    && term.holds()
                {
                    break term;
                }
                tokio::select! {
                    _ = self.core.shutdown.cancelled() => return,
                    changed = view.changed() => if changed.is_err() { return },
                }
            };
            *self.term.lock().unwrap_or_else(|p| p.into_inner()) = Some(term.stop.clone());
            tracing::info!(epoch = term.epoch, "monitors starting for this term");
            self.lead().await;
            term.stop.cancel();
            self.drain(Duration::from_secs(10)).await;
            self.tasks.reopen();
            self.lock_monitors().clear();
            if self.core.shutdown.is_cancelled() {
                return;
            }
            tracing::warn!(
                epoch = term.epoch,
                "monitors stopped: this master no longer leads"
            );
        }
    }

    /// Cancelled when this term of leadership ends (or on shutdown).
    fn stop(&self) -> tokio_util::sync::CancellationToken {
        self.term
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or_else(|| self.core.shutdown.clone())
    }

    /// Resumes the monitors of every active cluster, then follows events until the term ends.
    ///
    /// Resuming waits one heartbeat grace period first unless the previous leader's view of the
    /// nodes was restored: a master that knows no node as online until its agents reconnect
    /// must not judge (or re-place) their workers before.
    async fn lead(self: &Arc<Self>) {
        let stop = self.stop();
        let mut events = self.core.events.subscribe();
        if !self.core.take_over_liveness().await {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(self.core.heartbeat.grace) => {}
            }
        }
        if !self.resume().await {
            return;
        }
        // Monitors start from start events; a start event missed (this receiver lagged, or the
        // store's event history was compacted past it) is found by resuming again from the
        // store, now and then.
        let mut safety = tokio::time::interval(RESUME_EVERY);
        safety.reset();
        loop {
            let event = tokio::select! {
                _ = stop.cancelled() => return,
                _ = safety.tick() => {
                    self.resume().await;
                    continue;
                }
                e = events.recv() => e,
            };
            let event = match event {
                Ok(e) => e,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    self.wake_all();
                    self.resume().await;
                    continue;
                }
                Err(_) => return,
            };
            self.dispatch(&event);
        }
    }

    /// Waits (at most `grace`) for every monitor and sweep to finish its iteration after
    /// shutdown was signalled.
    pub async fn drain(&self, grace: Duration) {
        self.tasks.close();
        if tokio::time::timeout(grace, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(tasks = self.tasks.len(), "monitors still busy at shutdown");
        }
    }

    /// Starts the monitors of the active clusters in the store, retrying until it can read
    /// them; false on shutdown.
    async fn resume(self: &Arc<Self>) -> bool {
        loop {
            match active_clusters(&self.core).await {
                Ok(active) => {
                    for (kind, oid) in active {
                        self.ensure(kind, &oid);
                    }
                    return true;
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot read the clusters to resume; retrying");
                    tokio::select! {
                        _ = self.stop().cancelled_owned() => return false,
                        _ = tokio::time::sleep(self.config.period) => {}
                    }
                }
            }
        }
    }

    /// Wakes or starts the monitors an event concerns.
    fn dispatch(self: &Arc<Self>, event: &switchyard::pb::master::v1::Event) {
        use EventType as E;
        let kind = EventType::try_from(event.r#type).unwrap_or(E::Unspecified);
        match (kind, &event.object) {
            (E::OnNodeReady, Some(event::Object::Node(node))) => {
                self.wake_all();
                let (core, agents, node) = (self.core.clone(), self.agents.clone(), node.clone());
                let (period, stop) = (self.config.period, self.stop());
                self.tasks.spawn(sweep(core, agents, node, period, stop));
            }
            (E::OnNodeReady | E::OnNodeShutdown | E::OnNodeRemoved, _) => self.wake_all(),
            (E::OnWebclusterStarting, _) => self.ensure(Kind::Web, &event.oid),
            (E::OnRouterclusterStarting, _) => self.ensure(Kind::Router, &event.oid),
            (_, Some(event::Object::Webcluster(c))) => self.wake(&c.oid),
            (_, Some(event::Object::WebclusterNode(m))) => self.wake(&m.cluster_oid),
            (_, Some(event::Object::Webservice(s))) => self.wake(&s.webcluster_oid),
            (_, Some(event::Object::Routercluster(c))) => self.wake(&c.oid),
            (_, Some(event::Object::RouterclusterNode(m))) => self.wake(&m.cluster_oid),
            (_, Some(event::Object::Workergroup(g))) => self.wake(&g.cluster_oid),
            _ => {}
        }
    }

    fn lock_monitors(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Notify>>> {
        self.monitors.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wake(&self, oid: &str) {
        if let Some(n) = self.lock_monitors().get(oid) {
            n.notify_one();
        }
    }

    fn wake_all(&self) {
        for n in self.lock_monitors().values() {
            n.notify_one();
        }
    }

    /// Starts the monitor of cluster `oid` unless it runs.
    fn ensure(self: &Arc<Self>, kind: Kind, oid: &str) {
        let notify = {
            let mut monitors = self.lock_monitors();
            if let Some(n) = monitors.get(oid) {
                n.notify_one();
                return;
            }
            let n = Arc::new(Notify::new());
            monitors.insert(oid.to_owned(), n.clone());
            n
        };
        let span = tracing::info_span!("monitor", cluster = %oid, ?kind);
        let this = self.clone();
        let oid = oid.to_owned();
        self.tasks.spawn(tracing::Instrument::instrument(
            async move { this.supervise(kind, oid, notify).await },
            span,
        ));
    }

    /// Runs the monitor of `oid` until its cluster is STOPPED or gone, restarting it (after one
    /// period) when it ends unexpectedly; then deregisters it.
    async fn supervise(self: Arc<Self>, kind: Kind, oid: String, notify: Arc<Notify>) {
        tracing::info!("monitor started");
        loop {
            let run = tokio::spawn(tracing::Instrument::in_current_span(self.clone().monitor(
                kind,
                oid.clone(),
                notify.clone(),
            )));
            if let Err(e) = run.await {
                self.stats.restarts.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "monitor ended unexpectedly; restarting it");
                tokio::select! {
                    _ = self.stop().cancelled_owned() => {}
                    _ = tokio::time::sleep(self.config.period) => {}
                }
            }
            // A store that cannot tell keeps the monitor.
            let ended = self.stop().is_cancelled()
                || matches!(is_active(&self.core, kind, &oid).await, Ok(false));
            if !ended {
                continue;
            }
            self.lock_monitors().remove(&oid);
            if self.stop().is_cancelled() || !self.active_after_all(kind, &oid).await {
                break;
            }
            // Started again before the deregistration: its start event found this monitor
            // registered and only woke it. Take the registration back, unless that start came
            // after the deregistration and started a new monitor.
            let mut monitors = self.lock_monitors();
            if monitors.contains_key(&oid) {
                break;
            }
            monitors.insert(oid.clone(), notify.clone());
        }
        tracing::info!("monitor ended");
    }

    /// Whether cluster `oid` is active after all, asking the store until it answers (or
    /// shutdown).
    async fn active_after_all(&self, kind: Kind, oid: &str) -> bool {
        loop {
            match is_active(&self.core, kind, oid).await {
                Ok(active) => return active,
                Err(error) => tracing::warn!(%error, "cannot read the cluster; asking again"),
            }
            tokio::select! {
                _ = self.stop().cancelled_owned() => return false,
                _ = tokio::time::sleep(self.config.period) => {}
            }
        }
    }

    /// The monitor loop of one cluster; returns once the cluster is STOPPED or deleted, or on
    /// shutdown.
    async fn monitor(self: Arc<Self>, kind: Kind, oid: String, notify: Arc<Notify>) {
        let mut verified = router_monitor::Verified::default();
        let mut ticker = tokio::time::interval(self.config.period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.stop().cancelled_owned() => return,
                _ = ticker.tick() => {}
                _ = notify.notified() => {}
            }
            self.stats.iterations.fetch_add(1, Ordering::Relaxed);
            let agents = &*self.agents;
            let started = std::time::Instant::now();
            let outcome = match kind {
                Kind::Web => web_monitor::reconcile(&self.core, agents, &oid).await,
                Kind::Router => {
                    router_monitor::reconcile(&self.core, agents, &oid, &mut verified).await
                }
            };
            let labels = crate::metrics::KindLabels {
                kind: match kind {
                    Kind::Web => "web",
                    Kind::Router => "router",
                },
            };
            let histogram = self.stats.iteration_seconds.get_or_create(&labels);
            histogram.observe(started.elapsed().as_secs_f64());
            match outcome {
                Ok(Outcome::Done) => {
                    self.core.gauges.remove(&oid);
                    return;
                }
                Ok(Outcome::Continue) => {}
                Ok(Outcome::Again) => notify.notify_one(),
                Err(error) => {
                    self.stats.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%error, "reconciliation failed; retrying");
                    if error.retry_now() {
                        notify.notify_one();
                    }
                }
            }
        }
    }
}

/// Whether a stored cluster's status needs a monitor.
fn needs_monitor(status: i32) -> bool {
    matches!(
        ClusterStatus::try_from(status),
        Ok(ClusterStatus::Starting
            | ClusterStatus::Running
            | ClusterStatus::Degraded
            | ClusterStatus::Stopping
            | ClusterStatus::Error)
    )
}

/// Every stored cluster that needs a monitor.
async fn active_clusters(core: &Core) -> Result<Vec<(Kind, String)>, StoreError> {
    let webs = core.store.list::<WebCluster>(keys::WEBCLUSTERS).await?;
    let routers = core
        .store
        .list::<RouterCluster>(keys::ROUTERCLUSTERS)
        .await?;
    let web = webs
        .into_iter()
        .filter(|c| needs_monitor(c.status))
        .map(|c| (Kind::Web, c.oid));
    let router = routers
        .into_iter()
        .filter(|c| needs_monitor(c.status))
        .map(|c| (Kind::Router, c.oid));
    Ok(web.chain(router).collect())
}

/// Whether cluster `oid` is in a status that needs a monitor.
async fn is_active(core: &Core, kind: Kind, oid: &str) -> Result<bool, StoreError> {
    let status = match kind {
        Kind::Web => core
            .store
            .load::<WebCluster>(&keys::webcluster(oid))
            .await?
            .map(|(c, _)| c.status),
        Kind::Router => core
            .store
            .load::<RouterCluster>(&keys::routercluster(oid))
            .await?
            .map(|(c, _)| c.status),
    };
    Ok(status.is_some_and(needs_monitor))
}

/// Whether the cluster `oid` (web or router) exists in a status that has a monitor (its workers
/// are that monitor's business).
async fn cluster_running(core: &Core, oid: &str) -> Result<bool, StoreError> {
    Ok(is_active(core, Kind::Web, oid).await? || is_active(core, Kind::Router, oid).await?)
}

/// A node came (back) online: stop its workers whose cluster is stopped or gone (stopped or
/// deleted while the node was unreachable), recognised by their owner labels. Running
/// clusters' monitors handle the rest. Retried while the store cannot answer.
async fn sweep(
    core: Arc<Core>,
    agents: Arc<dyn AgentApi>,
    node: Node,
    period: Duration,
    stop: tokio_util::sync::CancellationToken,
) {
    for _ in 0..SWEEP_ATTEMPTS {
        match sweep_once(&core, &*agents, &node).await {
            Ok(()) => return,
            Err(error) => tracing::warn!(node = %node.authid, %error, "sweep failed; retrying"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(period) => {}
        }
    }
}

async fn sweep_once(core: &Core, agents: &dyn AgentApi, node: &Node) -> Result<(), MonitorError> {
    let list = apb::ListWorkersRequest::default();
    let list = agents.list_workers(node, list).await?;
    let mut running: HashMap<String, bool> = HashMap::new();
    for w in list.workers.into_iter().filter(|w| live(w.status)) {
        let Some(owner) = Owner::of(&w) else { continue };
        let keep = match running.get(&owner.cluster) {
            Some(k) => *k,
            None => *running
                .entry(owner.cluster.clone())
                .or_insert(cluster_running(core, &owner.cluster).await?),
        };
        if !keep {
            tracing::info!(node = %node.authid, worker = %w.id, cluster = %owner.cluster, "stopping a worker of a stopped or deleted cluster");
            let req = apb::StopWorkerRequest {
                worker_id: w.id.clone(),
                kill: false,
            };
            let r = agents.stop_worker(node, req).await?;
            publish_worker(
                core,
                node,
                r.worker,
                &owner.group,
                EventType::OnWorkerStopped,
            );
        }
    }
    Ok(())
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
