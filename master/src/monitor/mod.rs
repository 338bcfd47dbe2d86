//! Monitors: what makes started clusters run (docs/architecture.md, "Monitors").
//!
//! The [`Supervisor`] keeps one monitor task per cluster in STARTING/RUNNING/DEGRADED/STOPPING
//! (resumed from the store at start). A monitor is an actor woken by a ticker and, at once, by
//! any event about its cluster and by node status changes. Each iteration observes the member
//! nodes over mTLS (concurrently, with deadlines), computes a plan with the pure functions of
//! [`web`] and [`placement`], executes it, and sets the cluster's status with a reason. It never
//! exits on an error: it logs, counts and retries on the next wake-up.

pub mod placement;
pub mod router;
pub mod router_workers;
pub mod status;
pub mod web;
pub mod web_monitor;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use switchyard::pb::master::v1::{ClusterStatus, EventType, RouterCluster, WebCluster, event};
use tokio::sync::Notify;

use crate::agents::Agents;
use crate::core::Core;
use crate::store::{StoreExt, keys};

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
#[derive(Debug, Default)]
pub struct Stats {
    /// Reconciliation iterations.
    pub iterations: AtomicU64,
    /// Iterations that hit an error.
    pub errors: AtomicU64,
}

/// Starts, wakes and resumes monitors.
#[derive(Debug)]
pub struct Supervisor {
    core: Arc<Core>,
    config: MonitorConfig,
    monitors: std::sync::Mutex<HashMap<String, Arc<Notify>>>,
    /// Counters.
    pub stats: Stats,
}

impl Supervisor {
    /// A supervisor; call [`Supervisor::run`] to start it.
    pub fn new(core: Arc<Core>, config: MonitorConfig) -> Arc<Self> {
        Arc::new(Supervisor {
            core,
            config,
            monitors: Default::default(),
            stats: Stats::default(),
        })
    }

    /// Resumes the monitors of every active cluster, then follows events until shutdown.
    ///
    /// Resuming waits one heartbeat grace period first: a restarted master knows no node as
    /// online until its agents reconnect, and must not judge (or re-place) their workers before.
    pub async fn run(self: Arc<Self>) {
        let mut events = self.core.events.subscribe();
        tokio::select! {
            _ = self.core.shutdown.cancelled() => return,
            _ = tokio::time::sleep(self.core.heartbeat.grace) => {}
        }
        let active = |s: i32| {
            matches!(
                ClusterStatus::try_from(s),
                Ok(ClusterStatus::Starting
                    | ClusterStatus::Running
                    | ClusterStatus::Degraded
                    | ClusterStatus::Stopping
                    | ClusterStatus::Error)
            )
        };
        for c in self
            .core
            .store
            .list::<WebCluster>(keys::WEBCLUSTERS)
            .unwrap_or_default()
        {
            if active(c.status) {
                self.ensure(Kind::Web, &c.oid);
            }
        }
        for c in self
            .core
            .store
            .list::<RouterCluster>(keys::ROUTERCLUSTERS)
            .unwrap_or_default()
        {
            if active(c.status) {
                self.ensure(Kind::Router, &c.oid);
            }
        }
        loop {
            let event = tokio::select! {
                _ = self.core.shutdown.cancelled() => return,
                e = events.recv() => e,
            };
            let event = match event {
                Ok(e) => e,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    self.wake_all();
                    continue;
                }
                Err(_) => return,
            };
            use EventType as E;
            let kind = EventType::try_from(event.r#type).unwrap_or(E::Unspecified);
            match (kind, &event.object) {
                (E::OnNodeReady, Some(event::Object::Node(node))) => {
                    self.wake_all();
                    tokio::spawn(sweep(
                        self.core.clone(),
                        self.core.agents.clone(),
                        node.clone(),
                    ));
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
    }

    fn wake(&self, oid: &str) {
        if let Some(n) = self
            .monitors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(oid)
        {
            n.notify_one();
        }
    }

    fn wake_all(&self) {
        for n in self
            .monitors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
        {
            n.notify_one();
        }
    }

    /// Starts the monitor of cluster `oid` unless it runs.
    fn ensure(self: &Arc<Self>, kind: Kind, oid: &str) {
        let notify = {
            let mut monitors = self.monitors.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(n) = monitors.get(oid) {
                n.notify_one();
                return;
            }
            let n = Arc::new(Notify::new());
            monitors.insert(oid.to_owned(), n.clone());
            n
        };
        let this = self.clone();
        let oid = oid.to_owned();
        tokio::spawn(async move {
            tracing::info!(cluster = %oid, ?kind, "monitor started");
            loop {
                this.clone().monitor(kind, &oid, notify.clone()).await;
                // Deregister under the lock, unless the cluster was started again meanwhile
                // (its start event found this monitor registered and only woke it).
                let mut monitors = this.monitors.lock().unwrap_or_else(|p| p.into_inner());
                if this.core.shutdown.is_cancelled() || !is_active(&this.core, kind, &oid) {
                    monitors.remove(&oid);
                    break;
                }
            }
            tracing::info!(cluster = %oid, "monitor ended");
        });
    }

    /// The monitor loop of one cluster; returns once the cluster is STOPPED or deleted.
    async fn monitor(self: Arc<Self>, kind: Kind, oid: &str, notify: Arc<Notify>) {
        let mut verified = router::Verified::default();
        let mut ticker = tokio::time::interval(self.config.period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.core.shutdown.cancelled() => return,
                _ = ticker.tick() => {}
                _ = notify.notified() => {}
            }
            self.stats.iterations.fetch_add(1, Ordering::Relaxed);
            let outcome = match kind {
                Kind::Web => web_monitor::reconcile(&self.core, &self.core.agents, oid).await,
                Kind::Router => {
                    router::reconcile(&self.core, &self.core.agents, oid, &mut verified).await
                }
            };
            match outcome {
                Ok(Outcome::Done) => {
                    self.core.gauges.remove(oid);
                    return;
                }
                Ok(Outcome::Continue) => {}
                Ok(Outcome::Again) => notify.notify_one(),
                Err(error) => {
                    self.stats.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(cluster = %oid, %error, "reconciliation failed; retrying");
                }
            }
        }
    }
}

/// Whether cluster `oid` is in a status that needs a monitor.
fn is_active(core: &Core, kind: Kind, oid: &str) -> bool {
    let status = match kind {
        Kind::Web => core
            .store
            .load::<WebCluster>(&keys::webcluster(oid))
            .ok()
            .flatten()
            .map(|(c, _)| c.status),
        Kind::Router => core
            .store
            .load::<RouterCluster>(&keys::routercluster(oid))
            .ok()
            .flatten()
            .map(|(c, _)| c.status),
    };
    status.is_some_and(|s| s != ClusterStatus::Stopped as i32)
}

/// A node came (back) online: stop its workers that belong to no active cluster (a cluster
/// stopped or deleted while the node was unreachable). Active clusters' monitors handle the rest.
async fn sweep(core: Arc<Core>, agents: Arc<Agents>, node: switchyard::pb::master::v1::Node) {
    use switchyard::pb::agent::v1 as apb;
    let Ok(mut nc) = agents.node_controller(&node) else {
        return;
    };
    let Ok(list) = crate::agents::call(nc.list_workers(apb::ListWorkersRequest::default())).await
    else {
        return;
    };
    let webs = core
        .store
        .list::<WebCluster>(keys::WEBCLUSTERS)
        .unwrap_or_default();
    let routers = core
        .store
        .list::<RouterCluster>(keys::ROUTERCLUSTERS)
        .unwrap_or_default();
    let active_web: Vec<String> = webs
        .iter()
        .filter(|c| c.status != ClusterStatus::Stopped as i32)
        .map(|c| web_monitor::prefix(&c.oid))
        .collect();
    let mut active_groups = std::collections::BTreeSet::new();
    for c in routers
        .iter()
        .filter(|c| c.status != ClusterStatus::Stopped as i32)
    {
        for g in core
            .store
            .list::<switchyard::pb::master::v1::RouterWorkerGroup>(&keys::workergroups(&c.oid))
            .unwrap_or_default()
        {
            active_groups.insert(g.name);
        }
    }
    for w in list.workers {
        let live = matches!(
            apb::WorkerStatus::try_from(w.status),
            Ok(apb::WorkerStatus::Started | apb::WorkerStatus::Starting)
        );
        let stale = match apb::WorkerType::try_from(w.r#type) {
            Ok(apb::WorkerType::Web) => {
                w.id.starts_with("cpw-") && !active_web.iter().any(|p| w.id.starts_with(p))
            }
            Ok(apb::WorkerType::Router) => {
                w.id.rsplit_once('_')
                    .is_some_and(|(g, n)| n.parse::<u32>().is_ok() && !active_groups.contains(g))
            }
            _ => false,
        };
        if live && stale {
            tracing::info!(node = %node.authid, worker = %w.id, "stopping a worker of no active cluster");
            let _ = crate::agents::act(nc.stop_worker(apb::StopWorkerRequest {
                worker_id: w.id,
                kill: false,
            }))
            .await;
        }
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
