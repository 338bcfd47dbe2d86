//! The [`Supervisor`]: one monitor task per active cluster, in each term this master leads
//! (docs/operations.md, "Several masters"); resumed from the store, woken by events, restarted
//! when it ends unexpectedly; and the sweep of a node that comes back online.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use switchyard::pb::agent::v1 as apb;
use switchyard::pb::master::v1::{
    ClusterStatus, EventType, Node, RouterCluster, WebCluster, event,
};
use tokio::sync::Notify;
use tokio_util::task::TaskTracker;

use super::agent::AgentApi;
use super::owner::{Owner, live};
use super::{
    Kind, MonitorConfig, MonitorError, Outcome, Stats, drain, publish_worker, router_monitor,
    web_monitor,
};
use crate::core::Core;
use crate::store::{StoreError, StoreExt, keys};

/// How many times a sweep is tried while the store cannot answer.
const SWEEP_ATTEMPTS: usize = 10;

/// How often the supervisor looks in the store for active clusters without a monitor.
const RESUME_EVERY: Duration = Duration::from_secs(10);

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
        let (core, agents) = (self.core.clone(), self.agents.clone());
        self.tasks
            .spawn(drain::watch(core, agents, self.config.period, stop.clone()));
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
