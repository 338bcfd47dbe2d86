//! Reconcile tests that run in-process, in milliseconds: a real [`Core`] on the in-memory store
//! and a fake agent behind the [`AgentApi`] seam that keeps each node's workers in a map. The
//! end-to-end tests in `tests/monitors.rs` drive the same monitors against real agents.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use switchyard::error::{Reason, status};
use switchyard::pb::agent::v1::{self as apb, WorkerStatus, WorkerType};
use switchyard::pb::master::v1::{
    self as mpb, ClusterStatus, HeartbeatRequest, Node, RouterCluster, WebCluster,
};
use tokio_util::sync::CancellationToken;
use tonic::Status;

use super::agent::{AgentApi, AgentFuture};
use super::owner::{Owner, live};
use super::{MonitorConfig, MonitorError, Outcome, Supervisor, router_monitor, web_monitor};
use crate::agents::Agents;
use crate::core::{Core, HeartbeatConfig};
use crate::store::memory::MemoryStore;
use crate::store::{ChangeStream, Revision, Rows, Store, StoreError, StoreFuture, Txn, keys};

/// One fake worker: what the agent would report and what its controls hold.
#[derive(Debug, Clone, Default)]
struct FakeWorker {
    worker: apb::Worker,
    web_transport: bool,
    services: BTreeMap<String, apb::WebService>,
    router_port: Option<u32>,
    realms: BTreeSet<String>,
    links: BTreeMap<String, apb::RouterLink>,
}

/// A fake agent for every node: node oid → worker id → worker.
#[derive(Debug, Default)]
struct FakeAgents {
    nodes: Mutex<HashMap<String, BTreeMap<String, FakeWorker>>>,
    next_pid: AtomicU32,
    /// Panic in the next ListWorkers (a monitor bug, as the supervisor sees it).
    panic_once: AtomicBool,
}

impl FakeAgents {
    fn with<T: Send + 'static>(
        &self,
        node: &Node,
        f: impl FnOnce(&mut BTreeMap<String, FakeWorker>) -> Result<T, Status>,
    ) -> AgentFuture<'_, T> {
        let mut nodes = self.nodes.lock().unwrap();
        let result = f(nodes.entry(node.oid.clone()).or_default());
        Box::pin(async move { result })
    }

    fn with_worker<T: Send + 'static>(
        &self,
        node: &Node,
        id: &str,
        f: impl FnOnce(&mut FakeWorker) -> Result<T, Status>,
    ) -> AgentFuture<'_, T> {
        let id = id.to_owned();
        self.with(node, move |ws| match ws.get_mut(&id) {
            Some(w) if w.worker.status == WorkerStatus::Started as i32 => f(w),
            _ => Err(status(Reason::NoSuchObject, format!("no worker {id}"))),
        })
    }

    /// The live workers on `node`, by id.
    fn live(&self, node: &str) -> BTreeMap<String, FakeWorker> {
        let nodes = self.nodes.lock().unwrap();
        let ws = nodes.get(node).cloned().unwrap_or_default();
        ws.into_iter()
            .filter(|(_, w)| live(w.worker.status))
            .collect()
    }

    /// Puts a running worker on `node`, as if started earlier (by anyone).
    fn plant(&self, node: &str, id: &str, kind: WorkerType, owner: Option<Owner>) {
        let worker = apb::Worker {
            id: id.to_owned(),
            pid: 1_000_000 + self.next_pid.fetch_add(1, Ordering::Relaxed),
            r#type: kind as i32,
            status: WorkerStatus::Started as i32,
            options: owner.map(|o| o.options()),
            ..Default::default()
        };
        let mut nodes = self.nodes.lock().unwrap();
        let fake = FakeWorker {
            worker,
            ..Default::default()
        };
        nodes
            .entry(node.to_owned())
            .or_default()
            .insert(id.to_owned(), fake);
    }
}

fn not_started() -> Status {
    status(Reason::NotStarted, "not started")
}

impl AgentApi for FakeAgents {
    fn list_workers(
        &self,
        node: &Node,
        req: apb::ListWorkersRequest,
    ) -> AgentFuture<'_, apb::ListWorkersResponse> {
        if self.panic_once.swap(false, Ordering::SeqCst) {
            panic!("injected monitor panic");
        }
        self.with(node, move |ws| {
            let workers = ws
                .values()
                .filter(|w| req.r#type == 0 || w.worker.r#type == req.r#type)
                .map(|w| w.worker.clone())
                .collect();
            Ok(apb::ListWorkersResponse { workers })
        })
    }

    fn start_worker(
        &self,
        node: &Node,
        req: apb::StartWorkerRequest,
    ) -> AgentFuture<'_, apb::StartWorkerResponse> {
        let pid = 1 + self.next_pid.fetch_add(1, Ordering::Relaxed);
        self.with(node, move |ws| {
            if ws
                .get(&req.worker_id)
                .is_some_and(|w| live(w.worker.status))
            {
                return Err(status(Reason::AlreadyExists, "already running"));
            }
            let worker = apb::Worker {
                id: req.worker_id.clone(),
                pid,
                r#type: req.worker_type,
                status: WorkerStatus::Started as i32,
                options: req.options,
                ..Default::default()
            };
            let fake = FakeWorker {
                worker: worker.clone(),
                ..Default::default()
            };
            ws.insert(req.worker_id, fake);
            Ok(apb::StartWorkerResponse {
                worker: Some(worker),
            })
        })
    }

    fn stop_worker(
        &self,
        node: &Node,
        req: apb::StopWorkerRequest,
    ) -> AgentFuture<'_, apb::StopWorkerResponse> {
        self.with(node, move |ws| {
            let w = ws
                .get_mut(&req.worker_id)
                .ok_or_else(|| status(Reason::NoSuchObject, "no such worker"))?;
            w.worker.status = WorkerStatus::Stopped as i32;
            Ok(apb::StopWorkerResponse {
                worker: Some(w.worker.clone()),
            })
        })
    }

    fn get_web_transport(
        &self,
        node: &Node,
        req: apb::GetWebTransportRequest,
    ) -> AgentFuture<'_, apb::GetWebTransportResponse> {
        self.with_worker(node, &req.worker_id, |w| {
            w.web_transport
                .then(apb::GetWebTransportResponse::default)
                .ok_or_else(not_started)
        })
    }

    fn start_web_transport(
        &self,
        node: &Node,
        req: apb::StartWebTransportRequest,
    ) -> AgentFuture<'_, apb::StartWebTransportResponse> {
        self.with_worker(node, &req.worker_id, |w| {
            w.web_transport = true;
            Ok(apb::StartWebTransportResponse::default())
        })
    }

    fn list_web_services(
        &self,
        node: &Node,
        req: apb::ListWebServicesRequest,
    ) -> AgentFuture<'_, apb::ListWebServicesResponse> {
        self.with_worker(node, &req.worker_id, |w| {
            let services = w.services.values().cloned().collect();
            Ok(apb::ListWebServicesResponse { services })
        })
    }

    fn start_web_service(
        &self,
        node: &Node,
        req: apb::StartWebServiceRequest,
    ) -> AgentFuture<'_, apb::StartWebServiceResponse> {
        self.with_worker(node, &req.worker_id, move |w| {
            let s = req.service.unwrap_or_default();
            w.services.insert(s.path.clone(), s);
            Ok(apb::StartWebServiceResponse::default())
        })
    }

    fn stop_web_service(
        &self,
        node: &Node,
        req: apb::StopWebServiceRequest,
    ) -> AgentFuture<'_, apb::StopWebServiceResponse> {
        self.with_worker(node, &req.worker_id, move |w| {
            w.services.remove(&req.path);
            Ok(apb::StopWebServiceResponse::default())
        })
    }

    fn get_router_transport(
        &self,
        node: &Node,
        req: apb::GetRouterTransportRequest,
    ) -> AgentFuture<'_, apb::GetRouterTransportResponse> {
        self.with_worker(node, &req.worker_id, |w| {
            let port = w.router_port.ok_or_else(not_started)?;
            Ok(apb::GetRouterTransportResponse {
                transport: Some(apb::RouterTransportStatus {
                    port,
                    ..Default::default()
                }),
            })
        })
    }

    fn start_router_transport(
        &self,
        node: &Node,
        req: apb::StartRouterTransportRequest,
    ) -> AgentFuture<'_, apb::StartRouterTransportResponse> {
        let port = 20_000 + self.next_pid.fetch_add(1, Ordering::Relaxed);
        self.with_worker(node, &req.worker_id, move |w| {
            w.router_port = Some(port);
            Ok(apb::StartRouterTransportResponse {
                transport: Some(apb::RouterTransportStatus {
                    port,
                    ..Default::default()
                }),
            })
        })
    }

    fn list_router_realms(
        &self,
        node: &Node,
        req: apb::ListRouterRealmsRequest,
    ) -> AgentFuture<'_, apb::ListRouterRealmsResponse> {
        self.with_worker(node, &req.worker_id, |w| {
            let realms = w
                .realms
                .iter()
                .map(|r| apb::RouterRealm {
                    name: r.clone(),
                    ..Default::default()
                })
                .collect();
            Ok(apb::ListRouterRealmsResponse { realms })
        })
    }

    fn start_router_realm(
        &self,
        node: &Node,
        req: apb::StartRouterRealmRequest,
    ) -> AgentFuture<'_, apb::StartRouterRealmResponse> {
        self.with_worker(node, &req.worker_id, move |w| {
            w.realms.insert(req.realm);
            Ok(apb::StartRouterRealmResponse::default())
        })
    }

    fn stop_router_realm(
        &self,
        node: &Node,
        req: apb::StopRouterRealmRequest,
    ) -> AgentFuture<'_, apb::StopRouterRealmResponse> {
        self.with_worker(node, &req.worker_id, move |w| {
            w.realms.remove(&req.realm);
            Ok(apb::StopRouterRealmResponse::default())
        })
    }

    fn list_router_links(
        &self,
        node: &Node,
        req: apb::ListRouterLinksRequest,
    ) -> AgentFuture<'_, apb::ListRouterLinksResponse> {
        self.with_worker(node, &req.worker_id, |w| {
            let links = w.links.values().cloned().collect();
            Ok(apb::ListRouterLinksResponse { links })
        })
    }

    fn start_router_link(
        &self,
        node: &Node,
        req: apb::StartRouterLinkRequest,
    ) -> AgentFuture<'_, apb::StartRouterLinkResponse> {
        self.with_worker(node, &req.worker_id, move |w| {
            let link = req.link.unwrap_or_default();
            w.links.insert(link.id.clone(), link);
            Ok(apb::StartRouterLinkResponse::default())
        })
    }

    fn stop_router_link(
        &self,
        node: &Node,
        req: apb::StopRouterLinkRequest,
    ) -> AgentFuture<'_, apb::StopRouterLinkResponse> {
        self.with_worker(node, &req.worker_id, move |w| {
            w.links.remove(&req.link_id);
            Ok(apb::StopRouterLinkResponse::default())
        })
    }
}

/// A store that fails scans of one prefix on demand (an unreadable table).
#[derive(Debug, Default)]
struct FlakyStore {
    inner: MemoryStore,
    failing: Mutex<Option<Vec<u8>>>,
}

impl Store for FlakyStore {
    fn get<'a>(&'a self, key: &'a [u8]) -> StoreFuture<'a, Option<Vec<u8>>> {
        self.inner.get(key)
    }

    fn scan<'a>(&'a self, prefix: &'a [u8]) -> StoreFuture<'a, Rows> {
        match &*self.failing.lock().unwrap() {
            Some(p) if prefix.starts_with(p) => {
                Box::pin(async { Err(StoreError::Backend("injected read error".into())) })
            }
            _ => self.inner.scan(prefix),
        }
    }

    fn commit(&self, txn: Txn) -> StoreFuture<'_, Revision> {
        self.inner.commit(txn)
    }

    fn watch(&self, prefix: &[u8], after: Revision) -> ChangeStream {
        self.inner.watch(prefix, after)
    }

    fn revision(&self) -> Revision {
        self.inner.revision()
    }
}

/// A core on `store` with nodes `names` online; returns it and the nodes' oids by name.
async fn core_with(store: Arc<dyn Store>, names: &[&str]) -> (Arc<Core>, BTreeMap<String, String>) {
    let heartbeat = HeartbeatConfig {
        interval: Duration::from_millis(10),
        grace: Duration::from_millis(20),
    };
    let agents = Arc::new(Agents::new(None));
    let core = Arc::new(Core::new(
        store,
        heartbeat,
        agents,
        CancellationToken::new(),
    ));
    let mut oids = BTreeMap::new();
    for name in names {
        online(&core, name).await;
        oids.insert(
            (*name).to_owned(),
            core.get_node_by_name(name).await.unwrap().oid,
        );
    }
    (core, oids)
}

async fn online(core: &Core, name: &str) {
    let hb = HeartbeatRequest {
        authid: name.to_owned(),
        endpoint: "127.0.0.1:1".to_owned(),
        ..Default::default()
    };
    core.heartbeat(&hb, true).await.unwrap();
}

/// Runs iterations while the monitor asks for another at once (at most 20).
async fn converge(
    core: &Core,
    agents: &FakeAgents,
    router: bool,
    oid: &str,
) -> Result<Outcome, MonitorError> {
    let mut verified = router_monitor::Verified::default();
    for _ in 0..20 {
        let outcome = if router {
            router_monitor::reconcile(core, agents, oid, &mut verified).await?
        } else {
            web_monitor::reconcile(core, agents, oid).await?
        };
        if outcome != Outcome::Again {
            return Ok(outcome);
        }
    }
    panic!("cluster {oid} did not settle in 20 iterations");
}

async fn web_status(core: &Core, oid: &str) -> (ClusterStatus, String) {
    let c: WebCluster = core.get_webcluster(oid).await.unwrap();
    (ClusterStatus::try_from(c.status).unwrap(), c.status_reason)
}

async fn router_status(core: &Core, oid: &str) -> (ClusterStatus, String) {
    let c: RouterCluster = core.get_routercluster(oid).await.unwrap();
    (ClusterStatus::try_from(c.status).unwrap(), c.status_reason)
}

async fn web_cluster(core: &Core, name: &str, members: &[(&str, u32)]) -> String {
    let spec = WebCluster {
        name: name.to_owned(),
        tcp_port: 8080,
        ..Default::default()
    };
    let oid = core.create_webcluster(Some(spec), None).await.unwrap().oid;
    for (node, parallel) in members {
        let config = mpb::WebClusterNodeConfig {
            parallel: *parallel,
            standby: false,
        };
        core.add_webcluster_node(&oid, node, Some(config), None)
            .await
            .unwrap();
    }
    oid
}

async fn add_service(
    core: &Core,
    oid: &str,
    path: &str,
    service: mpb::web_service::Service,
) -> String {
    let s = mpb::WebService {
        path: path.to_owned(),
        service: Some(service),
        ..Default::default()
    };
    core.add_webcluster_service(oid, Some(s), None)
        .await
        .unwrap()
        .oid
}

async fn router_cluster(
    core: &Core,
    name: &str,
    nodes: &[&str],
    groups: &[(&str, u32)],
) -> (String, Vec<String>) {
    let spec = RouterCluster {
        name: name.to_owned(),
        ..Default::default()
    };
    let oid = core
        .create_routercluster(Some(spec), None)
        .await
        .unwrap()
        .oid;
    for node in nodes {
        core.add_routercluster_node(&oid, node, None, None)
            .await
            .unwrap();
    }
    let mut group_oids = Vec::new();
    for (group, scale) in groups {
        let g = mpb::RouterWorkerGroup {
            name: (*group).to_owned(),
            scale: *scale,
            ..Default::default()
        };
        group_oids.push(core.add_workergroup(&oid, Some(g), None).await.unwrap().oid);
    }
    (oid, group_oids)
}

fn nodeinfo() -> mpb::web_service::Service {
    mpb::web_service::Service::Nodeinfo(Default::default())
}

#[tokio::test]
async fn a_web_cluster_runs_follows_its_services_and_stops_in_process() {
    let (core, nodes) = core_with(Arc::new(MemoryStore::default()), &["n1", "n2"]).await;
    let fake = FakeAgents::default();
    let oid = web_cluster(&core, "site", &[("n1", 2), ("n2", 1)]).await;
    add_service(&core, &oid, "/", nodeinfo()).await;
    let info = add_service(&core, &oid, "/info", nodeinfo()).await;
    core.change_webcluster(&oid, true, None).await.unwrap();

    converge(&core, &fake, false, &oid).await.unwrap();
    assert_eq!(web_status(&core, &oid).await.0, ClusterStatus::Running);
    let (n1, n2) = (fake.live(&nodes["n1"]), fake.live(&nodes["n2"]));
    assert_eq!((n1.len(), n2.len()), (2, 1));
    for w in n1.values().chain(n2.values()) {
        assert_eq!(Owner::of(&w.worker), Some(Owner::web(&oid)), "labelled");
        assert!(w.web_transport);
        assert_eq!(w.services.keys().collect::<Vec<_>>(), ["/", "/info"]);
    }

    core.remove_webcluster_service(&oid, &info, None)
        .await
        .unwrap();
    converge(&core, &fake, false, &oid).await.unwrap();
    for w in fake
        .live(&nodes["n1"])
        .values()
        .chain(fake.live(&nodes["n2"]).values())
    {
        assert_eq!(
            w.services.keys().collect::<Vec<_>>(),
            ["/"],
            "removed everywhere"
        );
    }

    core.change_webcluster(&oid, false, None).await.unwrap();
    assert_eq!(
        converge(&core, &fake, false, &oid).await.unwrap(),
        Outcome::Done
    );
    assert_eq!(web_status(&core, &oid).await.0, ClusterStatus::Stopped);
    assert!(fake.live(&nodes["n1"]).is_empty() && fake.live(&nodes["n2"]).is_empty());
}

#[tokio::test]
async fn web_clusters_whose_oids_share_a_prefix_leave_each_other_alone() {
    let (core, nodes) = core_with(Arc::new(MemoryStore::default()), &["n1"]).await;
    let fake = FakeAgents::default();
    let a = web_cluster(&core, "alpha", &[("n1", 1)]).await;
    // A worker of another cluster whose oid starts like this one's, under the id scheme that
    // took only 8 characters of the oid.
    let b = format!("{}-ffff-4fff-8fff-ffffffffffff", &a[..8]);
    let theirs = format!("cpw-{}-0", &a[..8]);
    fake.plant(&nodes["n1"], &theirs, WorkerType::Web, Some(Owner::web(&b)));
    core.change_webcluster(&a, true, None).await.unwrap();
    converge(&core, &fake, false, &a).await.unwrap();
    core.change_webcluster(&a, false, None).await.unwrap();
    converge(&core, &fake, false, &a).await.unwrap();
    assert_eq!(web_status(&core, &a).await.0, ClusterStatus::Stopped);
    assert_eq!(
        fake.live(&nodes["n1"]).keys().collect::<Vec<_>>(),
        [&theirs],
        "the other cluster's worker still runs"
    );
}

#[tokio::test]
async fn a_standby_only_cluster_says_why_it_cannot_run() {
    let (core, _) = core_with(Arc::new(MemoryStore::default()), &["n1"]).await;
    let fake = FakeAgents::default();
    let spec = WebCluster {
        name: "spare".to_owned(),
        tcp_port: 8080,
        ..Default::default()
    };
    let oid = core.create_webcluster(Some(spec), None).await.unwrap().oid;
    let standby = mpb::WebClusterNodeConfig {
        parallel: 1,
        standby: true,
    };
    core.add_webcluster_node(&oid, "n1", Some(standby), None)
        .await
        .unwrap();
    core.change_webcluster(&oid, true, None).await.unwrap();
    converge(&core, &fake, false, &oid).await.unwrap();
    let (status, reason) = web_status(&core, &oid).await;
    assert_eq!(status, ClusterStatus::Error);
    assert!(reason.contains("no active member"), "{reason}");
    assert!(!reason.contains("no member node is online"), "{reason}");
}

#[tokio::test]
async fn a_removed_worker_group_leaves_nothing_running_and_stop_waits_for_every_worker() {
    let (core, nodes) = core_with(Arc::new(MemoryStore::default()), &["n1", "n2"]).await;
    let fake = FakeAgents::default();
    let (oid, groups) =
        router_cluster(&core, "routers", &["n1", "n2"], &[("grp1", 3), ("grp2", 1)]).await;
    core.change_routercluster(&oid, true, None).await.unwrap();
    converge(&core, &fake, true, &oid).await.unwrap();
    assert_eq!(router_status(&core, &oid).await.0, ClusterStatus::Running);
    let all = |fake: &FakeAgents| -> BTreeSet<String> {
        nodes
            .values()
            .flat_map(|n| fake.live(n).into_keys())
            .collect()
    };
    assert_eq!(
        all(&fake),
        ["grp1_0", "grp1_1", "grp1_2", "grp2_0"]
            .map(String::from)
            .into()
    );
    // Every worker is configured: a port, realm1, a link to each other worker of its group.
    for w in nodes.values().flat_map(|n| fake.live(n).into_values()) {
        assert!(
            w.router_port.is_some() && w.realms.contains("realm1"),
            "{w:?}"
        );
    }
    let grp1_0 = nodes
        .values()
        .find_map(|n| fake.live(n).remove("grp1_0"))
        .unwrap();
    assert_eq!(
        grp1_0.links.keys().collect::<Vec<_>>(),
        ["grp1_1@realm1", "grp1_2@realm1"]
    );

    core.remove_workergroup(&oid, &groups[1], None)
        .await
        .unwrap();
    converge(&core, &fake, true, &oid).await.unwrap();
    assert_eq!(
        all(&fake),
        ["grp1_0", "grp1_1", "grp1_2"].map(String::from).into(),
        "grp2_0 stopped"
    );

    core.change_routercluster(&oid, false, None).await.unwrap();
    assert_eq!(
        converge(&core, &fake, true, &oid).await.unwrap(),
        Outcome::Done
    );
    assert_eq!(router_status(&core, &oid).await.0, ClusterStatus::Stopped);
    assert!(
        all(&fake).is_empty(),
        "STOPPED with nothing left: {:?}",
        all(&fake)
    );
}

#[tokio::test]
async fn router_workers_leave_an_offline_node_and_its_return_moves_nothing_healthy() {
    let (core, nodes) = core_with(Arc::new(MemoryStore::default()), &["n1", "n2"]).await;
    let fake = FakeAgents::default();
    let (oid, _) = router_cluster(&core, "routers", &["n1", "n2"], &[("grp", 4)]).await;
    core.change_routercluster(&oid, true, None).await.unwrap();
    converge(&core, &fake, true, &oid).await.unwrap();
    assert_eq!(
        (fake.live(&nodes["n1"]).len(), fake.live(&nodes["n2"]).len()),
        (2, 2)
    );

    // n1 goes offline (its workers keep running where the master cannot see them).
    core.heartbeat_stream_ended(&nodes["n1"]).await;
    converge(&core, &fake, true, &oid).await.unwrap();
    assert_eq!(fake.live(&nodes["n2"]).len(), 4, "re-placed on n2");
    assert_eq!(router_status(&core, &oid).await.0, ClusterStatus::Running);
    let pids = |n: &str| -> BTreeMap<String, u32> {
        fake.live(n)
            .into_iter()
            .map(|(id, w)| (id, w.worker.pid))
            .collect()
    };
    let on_n2 = pids(&nodes["n2"]);

    // n1 returns with its two stale workers: they stop; nothing healthy moves.
    online(&core, "n1").await;
    converge(&core, &fake, true, &oid).await.unwrap();
    assert!(
        fake.live(&nodes["n1"]).is_empty(),
        "{:?}",
        fake.live(&nodes["n1"]).keys()
    );
    assert_eq!(pids(&nodes["n2"]), on_n2);
    // Links point at the workers' current ports.
    for w in fake.live(&nodes["n2"]).values() {
        for l in w.links.values() {
            let peer = l.id.split('@').next().unwrap();
            assert_eq!(
                Some(l.peer_port),
                fake.live(&nodes["n2"])[peer].router_port,
                "{}",
                l.id
            );
        }
    }
}

#[tokio::test]
async fn a_store_read_error_is_retried_not_pushed_to_workers_as_an_empty_backend_list() {
    let store = Arc::new(FlakyStore::default());
    let (core, nodes) = core_with(store.clone(), &["n1"]).await;
    let fake = FakeAgents::default();
    let (routers, groups) = router_cluster(&core, "routers", &["n1"], &[("grp", 2)]).await;
    core.change_routercluster(&routers, true, None)
        .await
        .unwrap();
    converge(&core, &fake, true, &routers).await.unwrap();
    let oid = web_cluster(&core, "front", &[("n1", 1)]).await;
    let target = apb::WorkerGroupTarget {
        routercluster_oid: routers.clone(),
        workergroup_oid: groups[0].clone(),
        path: String::new(),
    };
    let proxy = apb::WebSocketReverseProxyService {
        workergroup: Some(target),
        ..Default::default()
    };
    add_service(
        &core,
        &oid,
        "/wamp",
        mpb::web_service::Service::WebsocketReverseproxy(proxy),
    )
    .await;
    core.change_webcluster(&oid, true, None).await.unwrap();
    converge(&core, &fake, false, &oid).await.unwrap();
    let backends = |fake: &FakeAgents| {
        let w = fake
            .live(&nodes["n1"])
            .into_values()
            .find(|w| !w.services.is_empty())
            .unwrap();
        match w.services["/wamp"].service.clone() {
            Some(apb::web_service::Service::WebsocketReverseproxy(p)) => p.backends.len(),
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(backends(&fake), 2);

    *store.failing.lock().unwrap() = Some(keys::placements(&routers));
    let err = web_monitor::reconcile(&core, &fake, &oid)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("injected"), "{err}");
    assert_eq!(backends(&fake), 2, "the workers keep their backends");
    *store.failing.lock().unwrap() = None;
    converge(&core, &fake, false, &oid).await.unwrap();
    assert_eq!(web_status(&core, &oid).await.0, ClusterStatus::Running);
}

#[tokio::test]
async fn the_supervisor_restarts_a_monitor_that_panicked() {
    let (core, nodes) = core_with(Arc::new(MemoryStore::default()), &["n1"]).await;
    let fake = Arc::new(FakeAgents::default());
    let config = MonitorConfig {
        period: Duration::from_millis(20),
    };
    let supervisor = Supervisor::new(core.clone(), fake.clone(), config);
    let running = tokio::spawn(supervisor.clone().run());
    let oid = web_cluster(&core, "site", &[("n1", 1)]).await;
    fake.panic_once.store(true, Ordering::SeqCst);
    // The supervisor finds the start either by its event or, after its start-up grace, in the
    // store.
    core.change_webcluster(&oid, true, None).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while web_status(&core, &oid).await.0 != ClusterStatus::Running {
        assert!(
            Instant::now() < deadline,
            "not RUNNING: {:?}",
            web_status(&core, &oid).await
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(supervisor.stats.restarts.load(Ordering::Relaxed), 1);
    assert_eq!(fake.live(&nodes["n1"]).len(), 1);
    core.shutdown.cancel();
    running.await.unwrap();
    supervisor.drain(Duration::from_secs(5)).await;
}
