//! Event streams and worker-side effects that no other end-to-end test checks: the master's
//! EventService.Watch (deletes, router life cycles, worker groups and memberships, workers started
//! and stopped by the monitors, node shutdown and removal, oid and type filters, a slow watcher
//! ended with RESOURCE_EXHAUSTED), the agent's StreamWorkerLog and NativeProcessService.Watch
//! (GC and manhole events), and a web service removed from a running cluster leaving every
//! worker. Real master and agent processes, real mTLS; every wait polls with a deadline.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Pki, Proc, channel, eventually, eventually_async, system_tool};
use switchyard::pb::agent::v1::{
    self as apb, ProcessEventType, WorkerStatus, WorkerType,
    native_process_service_client::NativeProcessServiceClient,
    node_controller_service_client::NodeControllerServiceClient, process_event::Details,
};
use switchyard::pb::master::v1::{
    self as pb, ClusterStatus, EventType, NodeStatus, event::Object,
    event_service_client::EventServiceClient, node_service_client::NodeServiceClient,
    router_cluster_service_client::RouterClusterServiceClient,
    web_cluster_service_client::WebClusterServiceClient,
};
use tonic::transport::Channel;
use tonic::{Code, Status};

/// How long any awaited event or state may take.
const WITHIN: Duration = Duration::from_secs(30);
/// The principal of the tests' admin certificate.
const ADMIN: &str = "spiffe://switchyard/admin/admin";

/// The object an event carries, as the variant `$variant` (panics naming the event otherwise).
macro_rules! object {
    ($event:expr, $variant:ident) => {
        match &$event.object {
            Some(Object::$variant(o)) => o.clone(),
            other => panic!("event {:?} carries {other:?}", $event.r#type),
        }
    };
}

/// One Watch stream, read in the background: every event it delivered, and how it ended.
#[derive(Clone)]
struct Recorder {
    events: Arc<Mutex<Vec<pb::Event>>>,
    end: Arc<Mutex<Option<Result<(), Status>>>>,
}

impl Recorder {
    async fn watch(ch: &Channel, types: &[EventType], oids: &[&str]) -> Recorder {
        let mut stream = EventServiceClient::new(ch.clone())
            .watch(pb::WatchRequest {
                types: types.iter().map(|t| *t as i32).collect(),
                oids: oids.iter().map(|o| o.to_string()).collect(),
            })
            .await
            .unwrap()
            .into_inner();
        let rec = Recorder {
            events: Arc::default(),
            end: Arc::default(),
        };
        let (events, end) = (rec.events.clone(), rec.end.clone());
        tokio::spawn(async move {
            let ended = loop {
                match stream.message().await {
                    Ok(Some(m)) => events.lock().unwrap().extend(m.event),
                    Ok(None) => break Ok(()),
                    Err(status) => break Err(status),
                }
            };
            *end.lock().unwrap() = Some(ended);
        });
        rec
    }

    fn events(&self) -> Vec<pb::Event> {
        self.events.lock().unwrap().clone()
    }

    /// The first recorded event matching `f`, waiting for it.
    async fn wait(&self, what: &str, f: impl Fn(&pb::Event) -> bool) -> pb::Event {
        eventually_async(what, WITHIN, || {
            let found = self.events().into_iter().find(|e| f(e));
            async move { found }
        })
        .await
    }

    /// The first recorded event of type `kind` about `oid`.
    async fn wait_for(&self, kind: EventType, oid: &str) -> pb::Event {
        self.wait(&format!("{kind:?} of {oid}"), |e| {
            e.r#type == kind as i32 && e.oid == oid
        })
        .await
    }

    /// The `on_worker_*` events of type `kind` for each of `ids`, by worker id.
    async fn workers(
        &self,
        kind: EventType,
        ids: &BTreeSet<String>,
    ) -> BTreeMap<String, pb::Event> {
        eventually_async(&format!("{kind:?} of {ids:?}"), WITHIN, || {
            let mut found = BTreeMap::new();
            for e in self.events() {
                if e.r#type == kind as i32
                    && let Some(Object::Worker(w)) = &e.object
                    && ids.contains(&w.worker_id)
                {
                    found.entry(w.worker_id.clone()).or_insert(e);
                }
            }
            let all = found.len() == ids.len();
            async move { all.then_some(found) }
        })
        .await
    }
}

/// A master and one agent per node, all online, with admin clients of the master.
struct Setup {
    pki: Pki,
    _data: tempfile::TempDir,
    master: Proc,
    agents: BTreeMap<String, Proc>,
    ch: Channel,
    web: WebClusterServiceClient<Channel>,
    router: RouterClusterServiceClient<Channel>,
    nodes: NodeServiceClient<Channel>,
}

impl Setup {
    async fn new(nodes: &[&str]) -> Setup {
        let pki = Pki::new(nodes);
        let data = tempfile::tempdir().unwrap();
        let master = Proc::master(&pki, data.path());
        let agents = nodes
            .iter()
            .map(|n| (n.to_string(), Proc::agent(&pki, n, master.addr)))
            .collect();
        common::nodes_online(&pki, master.addr, nodes.len(), WITHIN).await;
        let ch = channel(&pki, "admin", master.addr).await;
        Setup {
            web: WebClusterServiceClient::new(ch.clone()),
            router: RouterClusterServiceClient::new(ch.clone()),
            nodes: NodeServiceClient::new(ch.clone()),
            ch,
            pki,
            _data: data,
            master,
            agents,
        }
    }

    async fn node(&self, authid: &str) -> pb::Node {
        self.nodes
            .clone()
            .get_node_by_name(pb::GetNodeByNameRequest {
                authid: authid.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .node
            .unwrap()
    }

    async fn agent(&self, node: &str) -> NodeControllerServiceClient<Channel> {
        NodeControllerServiceClient::new(channel(&self.pki, "admin", self.agents[node].addr).await)
    }

    /// The started workers on `node`, by id.
    async fn agent_workers(&self, node: &str) -> BTreeMap<String, apb::Worker> {
        self.agent(node)
            .await
            .list_workers(apb::ListWorkersRequest {
                r#type: WorkerType::Unspecified as i32,
                status: WorkerStatus::Started as i32,
            })
            .await
            .unwrap()
            .into_inner()
            .workers
            .into_iter()
            .map(|w| (w.id.clone(), w))
            .collect()
    }

    async fn get_web(&self, oid: &str) -> pb::WebCluster {
        self.web
            .clone()
            .get_web_cluster(pb::GetWebClusterRequest {
                webcluster_oid: oid.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .webcluster
            .unwrap()
    }

    async fn wait_web(&self, oid: &str, status: ClusterStatus) -> pb::WebCluster {
        eventually_async(&format!("web cluster {status:?}"), WITHIN, || async {
            let c = self.get_web(oid).await;
            (c.status == status as i32).then_some(c)
        })
        .await
    }

    async fn get_router(&self, oid: &str) -> pb::RouterCluster {
        self.router
            .clone()
            .get_router_cluster(pb::GetRouterClusterRequest {
                routercluster_oid: oid.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .routercluster
            .unwrap()
    }

    async fn wait_router(&self, oid: &str, status: ClusterStatus) -> pb::RouterCluster {
        eventually_async(&format!("router cluster {status:?}"), WITHIN, || async {
            let c = self.get_router(oid).await;
            (c.status == status as i32).then_some(c)
        })
        .await
    }

    /// A nodeinfo service on `path` of web cluster `oid`; returns its oid.
    async fn add_nodeinfo(&self, oid: &str, path: &str) -> String {
        self.web
            .clone()
            .add_web_cluster_service(pb::AddWebClusterServiceRequest {
                webcluster_oid: oid.into(),
                webservice: Some(pb::WebService {
                    path: path.into(),
                    service: Some(pb::web_service::Service::Nodeinfo(Default::default())),
                    ..Default::default()
                }),
            })
            .await
            .unwrap()
            .into_inner()
            .webservice
            .unwrap()
            .oid
    }

    async fn add_web_node(&self, oid: &str, node: &str, parallel: u32) {
        self.web
            .clone()
            .add_web_cluster_node(pb::AddWebClusterNodeRequest {
                webcluster_oid: oid.into(),
                node_oid: node.into(),
                config: Some(pb::WebClusterNodeConfig {
                    parallel,
                    standby: false,
                }),
            })
            .await
            .unwrap();
    }

    async fn start_web(&self, oid: &str) {
        self.web
            .clone()
            .start_web_cluster(pb::StartWebClusterRequest {
                webcluster_oid: oid.into(),
            })
            .await
            .unwrap();
    }

    async fn stop_web(&self, oid: &str) {
        self.web
            .clone()
            .stop_web_cluster(pb::StopWebClusterRequest {
                webcluster_oid: oid.into(),
            })
            .await
            .unwrap();
    }

    /// The web cluster's workers as the master lists them, by id.
    async fn web_workers(&self, oid: &str) -> BTreeMap<String, pb::ClusterWorker> {
        self.web
            .clone()
            .list_web_cluster_workers(pb::ListWebClusterWorkersRequest {
                webcluster_oid: oid.into(),
                filter_online: false,
            })
            .await
            .unwrap()
            .into_inner()
            .workers
            .into_iter()
            .map(|w| (w.worker_id.clone(), w))
            .collect()
    }
}

/// `a` happened before `b` on the master's event stream.
fn before(a: &pb::Event, b: &pb::Event) -> bool {
    a.seq < b.seq
}

#[tokio::test]
async fn web_cluster_workers_stop_and_delete_are_watched_with_their_objects() {
    let s = Setup::new(&["node1"]).await;
    let node = s.node("node1").await;
    let rec = Recorder::watch(&s.ch, &[], &[]).await;
    let mut web = s.web.clone();
    let oid = common::create_web_cluster(&mut web, "evweb", common::free_port()).await;
    s.add_web_node(&oid, "node1", 2).await;
    s.add_nodeinfo(&oid, "/").await;
    s.start_web(&oid).await;

    // on_webcluster_started: the cluster as Get returns it, RUNNING.
    let running = s.wait_web(&oid, ClusterStatus::Running).await;
    let started = rec.wait_for(EventType::OnWebclusterStarted, &oid).await;
    let c = object!(started, Webcluster);
    assert_eq!(
        (&c.oid, &c.name, c.status),
        (&oid, &running.name, running.status)
    );
    assert!(started.who.is_none(), "monitor-driven: {:?}", started.who);

    // on_worker_started for each worker the monitor started: the worker as the master lists it,
    // with the pid the agent reports.
    let listed = eventually_async("two web workers", WITHIN, || async {
        let w = s.web_workers(&oid).await;
        (w.len() == 2 && w.values().all(|w| w.pid != 0)).then_some(w)
    })
    .await;
    let ids: BTreeSet<String> = listed.keys().cloned().collect();
    let on_agent = s.agent_workers("node1").await;
    let worker_started = rec.workers(EventType::OnWorkerStarted, &ids).await;
    for (id, e) in &worker_started {
        let w = object!(e, Worker);
        assert_eq!(e.oid, node.oid, "worker events are about their node");
        assert_eq!((&w.node_oid, w.node_authid.as_str()), (&node.oid, "node1"));
        assert_eq!(w.pid, listed[id].pid, "{id}: the pid the master lists");
        assert_eq!(w.pid, on_agent[id].pid, "{id}: the pid the agent reports");
        assert_eq!(w.status, WorkerStatus::Started as i32);
        assert!(
            before(e, &started),
            "workers start before the cluster is RUNNING"
        );
    }

    // Stop: on_worker_stopped for the same workers, then on_webcluster_stopped.
    s.stop_web(&oid).await;
    let stopped_cluster = s.wait_web(&oid, ClusterStatus::Stopped).await;
    let stopping = rec.wait_for(EventType::OnWebclusterStopping, &oid).await;
    let stopped = rec.wait_for(EventType::OnWebclusterStopped, &oid).await;
    assert_eq!(object!(stopped, Webcluster), stopped_cluster);
    let worker_stopped = rec.workers(EventType::OnWorkerStopped, &ids).await;
    for (id, e) in &worker_stopped {
        let w = object!(e, Worker);
        assert_eq!(w.pid, listed[id].pid, "{id}");
        assert_eq!(w.status, WorkerStatus::Stopped as i32, "{id}");
        assert!(
            before(&stopping, e) && before(e, &stopped),
            "{id}: stopped in between"
        );
    }

    // Delete: on_webcluster_deleted carries the cluster as Get returned it last, and the caller.
    let last = s.get_web(&oid).await;
    web.delete_web_cluster(pb::DeleteWebClusterRequest {
        webcluster_oid: oid.clone(),
    })
    .await
    .unwrap();
    let deleted = rec.wait_for(EventType::OnWebclusterDeleted, &oid).await;
    assert_eq!(object!(deleted, Webcluster), last);
    assert_eq!(deleted.who.as_ref().unwrap().principal, ADMIN);
    assert!(before(&stopped, &deleted));
    assert!(rec.end.lock().unwrap().is_none(), "the watch is still open");
}

impl Setup {
    /// Adds the worker group `name` (ports from a free one on) to router cluster `oid`.
    async fn add_group(&self, oid: &str, name: &str) -> pb::RouterWorkerGroup {
        let start = u32::from(common::free_port());
        self.router
            .clone()
            .add_router_cluster_worker_group(pb::AddRouterClusterWorkerGroupRequest {
                routercluster_oid: oid.into(),
                workergroup: Some(pb::RouterWorkerGroup {
                    name: name.into(),
                    port_range: Some(pb::PortRange {
                        start,
                        end: start + 20,
                    }),
                    ..Default::default()
                }),
            })
            .await
            .unwrap()
            .into_inner()
            .workergroup
            .unwrap()
    }

    async fn get_group(&self, oid: &str, group: &str) -> pb::RouterWorkerGroup {
        self.router
            .clone()
            .get_router_cluster_worker_group(pb::GetRouterClusterWorkerGroupRequest {
                routercluster_oid: oid.into(),
                workergroup_oid: group.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .workergroup
            .unwrap()
    }

    async fn get_router_member(&self, oid: &str, node: &str) -> pb::RouterClusterNode {
        self.router
            .clone()
            .get_router_cluster_node(pb::GetRouterClusterNodeRequest {
                routercluster_oid: oid.into(),
                node_oid: node.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .node
            .unwrap()
    }

    /// The only worker of router cluster `oid` (one group of scale 1), once it runs and is
    /// placed, as StatRouterCluster reports it.
    async fn router_worker(&self, oid: &str) -> pb::WorkerGroupStat {
        eventually_async("the group's worker and placement", WITHIN, || {
            let mut router = self.router.clone();
            let req = pb::StatRouterClusterRequest {
                routercluster_oid: oid.into(),
            };
            async move {
                let stat = router.stat_router_cluster(req).await.ok()?.into_inner();
                let g = stat.workergroups.into_iter().next()?;
                (g.workers.len() == 1 && g.placements.len() == 1).then_some(g)
            }
        })
        .await
    }
}

#[tokio::test]
async fn router_cluster_members_groups_and_delete_are_watched_with_their_objects() {
    let s = Setup::new(&["node1"]).await;
    let node = s.node("node1").await;
    let rec = Recorder::watch(&s.ch, &[], &[]).await;
    let mut router = s.router.clone();
    let oid = common::create_router_cluster(&mut router, "evrouter").await;
    let created = rec.wait_for(EventType::OnRouterclusterCreated, &oid).await;
    assert_eq!(object!(created, Routercluster), s.get_router(&oid).await);
    assert_eq!(created.who.as_ref().unwrap().principal, ADMIN);

    // Added: each event carries the object as its Get returns it.
    common::add_router_node(&mut router, &oid, "node1", Some(3))
        .await
        .unwrap();
    let member = s.get_router_member(&oid, &node.oid).await;
    let added = rec
        .wait_for(EventType::OnRouterclusterNodeAdded, &oid)
        .await;
    assert_eq!(object!(added, RouterclusterNode), member);
    let group = s.add_group(&oid, "evgrp").await;
    let g_added = rec
        .wait_for(EventType::OnRouterclusterWorkergroupAdded, &group.oid)
        .await;
    assert_eq!(
        object!(g_added, Workergroup),
        s.get_group(&oid, &group.oid).await
    );

    // Removed and deleted: each event carries what Get returned last.
    let last_group = s.get_group(&oid, &group.oid).await;
    router
        .remove_router_cluster_worker_group(pb::RemoveRouterClusterWorkerGroupRequest {
            routercluster_oid: oid.clone(),
            workergroup_oid: group.oid.clone(),
        })
        .await
        .unwrap();
    let g_removed = rec
        .wait_for(EventType::OnRouterclusterWorkergroupRemoved, &group.oid)
        .await;
    assert_eq!(object!(g_removed, Workergroup), last_group);
    router
        .remove_router_cluster_node(pb::RemoveRouterClusterNodeRequest {
            routercluster_oid: oid.clone(),
            node_oid: "node1".into(),
        })
        .await
        .unwrap();
    let removed = rec
        .wait_for(EventType::OnRouterclusterNodeRemoved, &oid)
        .await;
    assert_eq!(object!(removed, RouterclusterNode), member);
    let last = s.get_router(&oid).await;
    router
        .delete_router_cluster(pb::DeleteRouterClusterRequest {
            routercluster_oid: oid.clone(),
        })
        .await
        .unwrap();
    let deleted = rec.wait_for(EventType::OnRouterclusterDeleted, &oid).await;
    assert_eq!(object!(deleted, Routercluster), last);
    assert_eq!(deleted.who.as_ref().unwrap().principal, ADMIN);
    for (kind, e) in [
        ("added", &g_added),
        ("removed", &g_removed),
        ("deleted", &deleted),
    ] {
        assert!(before(&created, e), "created before {kind}");
    }
}

#[tokio::test]
async fn router_cluster_start_and_stop_are_watched_with_its_worker() {
    let s = Setup::new(&["node1"]).await;
    let node = s.node("node1").await;
    let mut router = s.router.clone();
    let oid = common::create_router_cluster(&mut router, "evrun").await;
    common::add_router_node(&mut router, &oid, "node1", None)
        .await
        .unwrap();
    let group = s.add_group(&oid, "evrungrp").await;
    let rec = Recorder::watch(&s.ch, &[], &[]).await;

    // Start: starting, the worker started and placed, then started (RUNNING).
    router
        .start_router_cluster(pb::StartRouterClusterRequest {
            routercluster_oid: oid.clone(),
        })
        .await
        .unwrap();
    let running = s.wait_router(&oid, ClusterStatus::Running).await;
    let starting = rec.wait_for(EventType::OnRouterclusterStarting, &oid).await;
    let c = object!(starting, Routercluster);
    assert_eq!(
        (&c.name, c.status),
        (&running.name, ClusterStatus::Starting as i32)
    );
    assert_eq!(starting.who.as_ref().unwrap().principal, ADMIN);
    let started = rec.wait_for(EventType::OnRouterclusterStarted, &oid).await;
    let c = object!(started, Routercluster);
    assert_eq!(
        (&c.oid, &c.name, c.status),
        (&oid, &running.name, running.status)
    );
    let stat = s.router_worker(&oid).await;
    let worker_id = stat.workers[0].worker.clone().unwrap().worker_id;
    let ids = BTreeSet::from([worker_id.clone()]);
    let worker_started = &rec.workers(EventType::OnWorkerStarted, &ids).await[&worker_id];
    let w = object!(worker_started, Worker);
    assert_eq!((&w.node_oid, &w.workergroup_oid), (&node.oid, &group.oid));
    assert_eq!(w.pid, s.agent_workers("node1").await[&worker_id].pid);
    assert!(before(&starting, worker_started) && before(worker_started, &started));
    let placed = rec.wait_for(EventType::OnPlacementChanged, &oid).await;
    let p = object!(placed, Placement);
    assert_eq!(
        (&p.oid, &p.workergroup_oid, &p.node_oid, &p.worker_name),
        (&stat.placements[0].oid, &group.oid, &node.oid, &worker_id)
    );

    // Stop: stopping, the worker stopped, then stopped (STOPPED).
    router
        .stop_router_cluster(pb::StopRouterClusterRequest {
            routercluster_oid: oid.clone(),
        })
        .await
        .unwrap();
    let stopped_cluster = s.wait_router(&oid, ClusterStatus::Stopped).await;
    let stopping = rec.wait_for(EventType::OnRouterclusterStopping, &oid).await;
    assert_eq!(
        object!(stopping, Routercluster).status,
        ClusterStatus::Stopping as i32
    );
    let stopped = rec.wait_for(EventType::OnRouterclusterStopped, &oid).await;
    assert_eq!(object!(stopped, Routercluster), stopped_cluster);
    let worker_stopped = &rec.workers(EventType::OnWorkerStopped, &ids).await[&worker_id];
    let w2 = object!(worker_stopped, Worker);
    assert_eq!((w2.pid, w2.status), (w.pid, WorkerStatus::Stopped as i32));
    assert!(before(&stopping, worker_stopped) && before(worker_stopped, &stopped));
}

#[tokio::test]
async fn node_shutdown_and_removal_are_watched() {
    let mut s = Setup::new(&["node1"]).await;
    let node = s.node("node1").await;
    assert_eq!(node.status, NodeStatus::Online as i32);
    let rec = Recorder::watch(
        &s.ch,
        &[EventType::OnNodeShutdown, EventType::OnNodeRemoved],
        &[],
    )
    .await;

    // The agent dies: on_node_shutdown, the node OFFLINE as Get now returns it.
    drop(s.agents.remove("node1"));
    let down = rec.wait_for(EventType::OnNodeShutdown, &node.oid).await;
    let n = object!(down, Node);
    let now = s.node("node1").await;
    assert_eq!(
        (&n.oid, &n.authid, &n.endpoint, n.status),
        (
            &now.oid,
            &now.authid,
            &now.endpoint,
            NodeStatus::Offline as i32
        )
    );

    // RemoveNode: on_node_removed with the node; Get no longer finds it.
    s.nodes
        .remove_node(pb::RemoveNodeRequest {
            node_oid: node.oid.clone(),
        })
        .await
        .unwrap();
    let removed = rec.wait_for(EventType::OnNodeRemoved, &node.oid).await;
    let n = object!(removed, Node);
    assert_eq!((&n.oid, &n.authid), (&node.oid, &node.authid));
    let e = s
        .nodes
        .get_node(pb::GetNodeRequest {
            node_oid: node.oid.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert_eq!(
        rec.events().len(),
        2,
        "only the two watched types: {:?}",
        rec.events()
    );
}

/// The cluster oid an event is about: its own oid, or its object's cluster.
fn cluster_of(e: &pb::Event) -> String {
    match &e.object {
        Some(Object::Webservice(s)) => s.webcluster_oid.clone(),
        Some(Object::WebclusterNode(m)) => m.cluster_oid.clone(),
        _ => e.oid.clone(),
    }
}

#[tokio::test]
async fn a_watch_filtered_by_oid_sees_only_that_clusters_events() {
    let s = Setup::new(&["node1"]).await;
    let mut web = s.web.clone();
    let a = common::create_web_cluster(&mut web, "filtera", 8080).await;
    let b = common::create_web_cluster(&mut web, "filterb", 8080).await;
    let only_a = Recorder::watch(&s.ch, &[], &[&a]).await;
    let a_services = Recorder::watch(&s.ch, &[EventType::OnWebserviceAdded], &[&a]).await;
    let everything = Recorder::watch(&s.ch, &[], &[]).await;

    // The same changes to both clusters, b first each time.
    let mut services = BTreeMap::new();
    for c in [&b, &a] {
        s.add_web_node(c, "node1", 1).await;
    }
    for c in [&b, &a] {
        services.insert(c.clone(), s.add_nodeinfo(c, "/first").await);
    }
    for c in [&b, &a] {
        web.remove_web_cluster_service(pb::RemoveWebClusterServiceRequest {
            webcluster_oid: c.clone(),
            webservice_oid: services[c].clone(),
        })
        .await
        .unwrap();
    }
    for c in [&b, &a] {
        web.remove_web_cluster_node(pb::RemoveWebClusterNodeRequest {
            webcluster_oid: c.clone(),
            node_oid: "node1".into(),
        })
        .await
        .unwrap();
    }
    // Last: one more service each; a's is the marker both filtered watchers wait for.
    s.add_nodeinfo(&b, "/last").await;
    let marker = s.add_nodeinfo(&a, "/last").await;
    everything
        .wait_for(EventType::OnWebserviceAdded, &marker)
        .await;
    only_a.wait_for(EventType::OnWebserviceAdded, &marker).await;
    a_services
        .wait_for(EventType::OnWebserviceAdded, &marker)
        .await;

    let kinds = |rec: &Recorder| -> Vec<(i32, String)> {
        rec.events()
            .iter()
            .map(|e| (e.r#type, cluster_of(e)))
            .collect()
    };
    let of_a = |kinds: &[EventType]| -> Vec<(i32, String)> {
        kinds.iter().map(|k| (*k as i32, a.clone())).collect()
    };
    assert_eq!(
        kinds(&only_a),
        of_a(&[
            EventType::OnWebclusterNodeAdded,
            EventType::OnWebserviceAdded,
            EventType::OnWebserviceRemoved,
            EventType::OnWebclusterNodeRemoved,
            EventType::OnWebserviceAdded,
        ]),
        "a's events only, in order"
    );
    assert_eq!(
        kinds(&a_services),
        of_a(&[EventType::OnWebserviceAdded, EventType::OnWebserviceAdded])
    );
    // The unfiltered watcher saw b's as well (so the filters had something to leave out).
    let all = kinds(&everything);
    assert_eq!(all.len(), 10, "{all:?}");
    assert_eq!(all.iter().filter(|(_, c)| *c == b).count(), 5, "{all:?}");
}

/// Creates and deletes `pairs` web clusters from 16 concurrent clients (two events each) while
/// a probe keeps reading the cluster list; returns the probe's slowest read.
async fn create_and_delete(web: &WebClusterServiceClient<Channel>, pairs: usize) -> Duration {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let burst: Vec<_> = (0..16)
        .map(|_| {
            let (mut web, next) = (web.clone(), next.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= pairs {
                        return;
                    }
                    let oid =
                        common::create_web_cluster(&mut web, &format!("burst{i}"), 8080).await;
                    web.delete_web_cluster(pb::DeleteWebClusterRequest {
                        webcluster_oid: oid,
                    })
                    .await
                    .unwrap();
                }
            })
        })
        .collect();
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    let mut probe = web.clone();
    while !burst.iter().all(|t| t.is_finished()) {
        let t = Instant::now();
        probe
            .list_web_clusters(pb::ListWebClustersRequest {
                return_names: false,
            })
            .await
            .unwrap();
        slowest = slowest.max(t.elapsed());
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "the burst never ended"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for t in burst {
        t.await.unwrap();
    }
    slowest
}

#[tokio::test]
async fn a_watcher_that_does_not_read_is_dropped_with_resource_exhausted() {
    use switchyard_master::events::WATCH_BUFFER;
    let s = Setup::new(&[]).await;
    // The slow watcher's own connection, with a 1 KiB HTTP/2 stream window: unread, it holds a
    // few events, so the master cannot push the whole burst into client-side buffers (with the
    // default 2 MiB window the client would buffer it all and never lag).
    let tls = switchyard::pki::Identity::load(&s.pki.path, "admin")
        .unwrap()
        .client_tls("localhost");
    let slow_ch = Channel::from_shared(format!("https://{}", s.master.addr))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .initial_stream_window_size(Some(1024))
        .connect()
        .await
        .unwrap();
    let mut slow = EventServiceClient::new(slow_ch)
        .watch(pb::WatchRequest::default())
        .await
        .unwrap()
        .into_inner();
    let fast = Recorder::watch(&s.ch, &[], &[]).await;

    // Well past the watcher's buffer.
    let pairs = WATCH_BUFFER / 2 + 500;
    let started = Instant::now();
    let slowest = create_and_delete(&s.web, pairs).await;
    let produced = 2 * pairs;
    println!(
        "{produced} events in {:?}; slowest read meanwhile {slowest:?}",
        started.elapsed()
    );
    // Publishing never waited for the slow watcher (the burst finished), reads stayed quick, and
    // a watcher that reads kept up with everything.
    assert!(slowest < Duration::from_secs(5), "a read took {slowest:?}");
    eventually_async(
        &format!("the reading watcher to get all {produced} events"),
        WITHIN,
        || {
            let n = fast.events.lock().unwrap().len();
            async move { (n >= produced).then_some(()) }
        },
    )
    .await;
    assert!(
        fast.end.lock().unwrap().is_none(),
        "the reading watcher stays open"
    );

    // The slow watcher now reads: what was already in flight, then RESOURCE_EXHAUSTED, long
    // before the whole burst.
    let mut delivered = 0;
    let status = loop {
        match tokio::time::timeout(Duration::from_secs(10), slow.message())
            .await
            .expect("the slow watcher's stream neither ends nor delivers")
        {
            Ok(Some(_)) => delivered += 1,
            Ok(None) => panic!("ended without an error after {delivered} events"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("too slow"), "{status:?}");
    assert!(
        delivered > 0 && delivered + WATCH_BUFFER < produced,
        "{delivered} of {produced} events delivered before the drop"
    );
    println!("the slow watcher got {delivered} of {produced} events, then {status:?}");
}

/// An agent with no master (its own API needs none; its heartbeats go nowhere).
fn lone_agent() -> (Pki, Proc) {
    let pki = Pki::new(&["node1"]);
    let agent = Proc::agent(&pki, "node1", "127.0.0.1:9".parse().unwrap());
    (pki, agent)
}

async fn start_web_worker(nc: &mut NodeControllerServiceClient<Channel>, id: &str) {
    nc.start_worker(apb::StartWorkerRequest {
        worker_id: id.into(),
        worker_type: WorkerType::Web as i32,
        options: None,
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn stream_worker_log_sends_the_kept_lines_then_follows() {
    let (pki, agent) = lone_agent();
    let mut nc = NodeControllerServiceClient::new(channel(&pki, "admin", agent.addr).await);
    start_web_worker(&mut nc, "logw").await;
    let mut stream = nc
        .stream_worker_log(apb::StreamWorkerLogRequest {
            worker_id: "logw".into(),
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let mut lines: Vec<apb::LogLine> = Vec::new();
    let mut read_until = async |lines: &mut Vec<apb::LogLine>, needle: &str| {
        let deadline = Instant::now() + WITHIN;
        while !lines.iter().any(|l| l.line.contains(needle)) {
            let left = deadline.saturating_duration_since(Instant::now());
            let m = tokio::time::timeout(left, stream.message())
                .await
                .unwrap_or_else(|_| panic!("no line with {needle:?}: {lines:?}"))
                .unwrap()
                .expect("the stream stays open");
            lines.push(m.line.unwrap());
        }
    };
    // The kept lines first: from the worker's first line on.
    read_until(&mut lines, "worker serving").await;
    assert_eq!(lines[0].seq, 1);
    let kept = nc
        .get_worker_log(apb::GetWorkerLogRequest {
            worker_id: "logw".into(),
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .lines;
    assert_eq!(
        &kept[..lines.len()],
        &lines[..],
        "the stream starts with the kept lines"
    );

    // Then new lines, as the worker writes them (starting a service logs its path).
    for path in ["/followed-1", "/followed-2"] {
        let service = apb::WebService {
            path: path.into(),
            service: Some(apb::web_service::Service::Nodeinfo(Default::default())),
        };
        nc.start_web_service(apb::StartWebServiceRequest {
            worker_id: "logw".into(),
            service: Some(service),
        })
        .await
        .unwrap();
        read_until(&mut lines, path).await;
    }
    let seqs: Vec<u64> = lines.iter().map(|l| l.seq).collect();
    assert_eq!(
        seqs,
        (1..=lines.len() as u64).collect::<Vec<_>>(),
        "no line lost or repeated between the kept lines and the followed ones"
    );
    assert!(lines.last().unwrap().line.contains("web service started"));

    // `limit` starts with that many of the newest kept lines.
    let newest = nc
        .stream_worker_log(apb::StreamWorkerLogRequest {
            worker_id: "logw".into(),
            limit: 1,
        })
        .await
        .unwrap()
        .into_inner()
        .message()
        .await
        .unwrap()
        .unwrap()
        .line
        .unwrap();
    assert_eq!(newest.seq, lines.last().unwrap().seq);

    let e = nc
        .stream_worker_log(apb::StreamWorkerLogRequest {
            worker_id: "ghost".into(),
            limit: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e}");
}

/// Starts and stops a manhole in `process`; the events that must tell of it, with the manhole
/// each carries (as StartManhole and StopManhole returned it, or in between).
async fn manhole_round(
    np: &mut NativeProcessServiceClient<Channel>,
    process: &str,
) -> Vec<(ProcessEventType, apb::Manhole)> {
    let config = apb::ManholeConfig {
        interface: "127.0.0.1".into(),
        port: u32::from(common::free_port()),
        users: vec![apb::ManholeUser {
            user: "alice".into(),
            password: "s3cret".into(),
            ..Default::default()
        }],
        host_key: String::new(),
    };
    let running = np
        .start_manhole(apb::StartManholeRequest {
            process: process.into(),
            config: Some(config.clone()),
        })
        .await
        .unwrap()
        .into_inner()
        .manhole
        .unwrap();
    assert_eq!(running.status, apb::ManholeStatus::Started as i32);
    let stopped = np
        .stop_manhole(apb::StopManholeRequest {
            process: process.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .manhole
        .unwrap();
    let starting = apb::Manhole {
        status: apb::ManholeStatus::Starting as i32,
        port: config.port,
        interface: config.interface,
        who: ADMIN.into(),
        ..Default::default()
    };
    let stopping = apb::Manhole {
        status: apb::ManholeStatus::Stopping as i32,
        ..running.clone()
    };
    vec![
        (ProcessEventType::OnManholeStarting, starting),
        (ProcessEventType::OnManholeStarted, running),
        (ProcessEventType::OnManholeStopping, stopping),
        (ProcessEventType::OnManholeStopped, stopped),
    ]
}

#[tokio::test]
async fn gc_and_manhole_events_of_the_agent_and_a_worker() {
    let (pki, agent) = lone_agent();
    let ch = channel(&pki, "admin", agent.addr).await;
    let mut np = NativeProcessServiceClient::new(ch.clone());
    start_web_worker(&mut NodeControllerServiceClient::new(ch), "evw").await;
    let mut watches = BTreeMap::new();
    for process in ["controller", "evw"] {
        let stream = np
            .watch(apb::WatchRequest {
                types: vec![],
                processes: vec![process.into()],
            })
            .await
            .unwrap()
            .into_inner();
        watches.insert(process, stream);
    }

    // The same calls on the agent itself, then on its worker (whose events the agent relays),
    // then a last GC on the agent: each watcher sees exactly its own process's events.
    let mut expected: BTreeMap<&str, Vec<apb::ProcessEvent>> = BTreeMap::new();
    for (round, process) in ["controller", "evw", "controller"].into_iter().enumerate() {
        let mut want = Vec::new();
        let mut event = |kind: ProcessEventType, details| {
            want.push(apb::ProcessEvent {
                r#type: kind as i32,
                ts: None,
                process: process.into(),
                who: ADMIN.into(),
                details: Some(details),
            })
        };
        let gc = np
            .trigger_gc(apb::TriggerGcRequest {
                process: process.into(),
            })
            .await
            .unwrap()
            .into_inner();
        event(
            ProcessEventType::OnGcFinished,
            Details::Gc(apb::GcEventDetails { result: Some(gc) }),
        );
        if round < 2 {
            for (kind, manhole) in manhole_round(&mut np, process).await {
                event(
                    kind,
                    Details::Manhole(apb::ManholeEventDetails {
                        manhole: Some(manhole),
                    }),
                );
            }
        }
        expected.entry(process).or_default().extend(want);
    }
    for (process, want) in expected {
        let stream = watches.get_mut(process).unwrap();
        let mut got = Vec::new();
        while got.len() < want.len() {
            let e = tokio::time::timeout(WITHIN, stream.message())
                .await
                .unwrap_or_else(|_| panic!("{process}: only {got:?}"))
                .unwrap()
                .unwrap()
                .event
                .unwrap();
            assert!(e.ts.is_some());
            got.push(apb::ProcessEvent { ts: None, ..e });
        }
        assert_eq!(got, want, "{process}");
    }
}

/// On one connection: GET /keep (a nodeinfo service: which worker answers), then GET `path`;
/// (worker id, status of `path`).
fn worker_and_status(port: u16, path: &str) -> (String, u16) {
    let out = Command::new(system_tool("curl"))
        .args([
            "-s",
            "--max-time",
            "5",
            "-w",
            "\n%{http_code} %{num_connects}\n",
        ])
        .arg(format!("http://127.0.0.1:{port}/keep"))
        .arg(format!("http://127.0.0.1:{port}{path}"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "curl: {text:?} {:?}", out.status);
    let lines: Vec<&str> = text.lines().collect();
    let info: serde_json::Value =
        serde_json::from_str(lines[0]).unwrap_or_else(|e| panic!("{e}: {text:?}"));
    assert_eq!(lines[1], "200 1", "{text:?}");
    let (status, connects) = lines
        .last()
        .and_then(|l| l.split_once(' '))
        .unwrap_or_else(|| panic!("{text:?}"));
    assert_eq!(
        connects, "0",
        "the second request reused the connection: {text:?}"
    );
    (
        info["worker"].as_str().unwrap().to_owned(),
        status.parse().unwrap(),
    )
}

/// Requests `path` until every one of `workers` has answered it, each time with `status`.
fn every_worker_answers(port: u16, path: &str, status: u16, workers: &BTreeSet<String>) {
    let mut seen = BTreeSet::new();
    eventually(
        &format!("every worker to answer {path} with {status}"),
        WITHIN,
        || {
            let (worker, got) = worker_and_status(port, path);
            assert!(
                workers.contains(&worker),
                "{worker} is not listed: {workers:?}"
            );
            assert_eq!(got, status, "{worker} answers {path} with {got}");
            seen.insert(worker);
            (seen == *workers).then_some(())
        },
    );
}

#[tokio::test]
async fn a_removed_service_leaves_every_worker_of_a_running_cluster() {
    let s = Setup::new(&["node1"]).await;
    let mut web = s.web.clone();
    let port = common::free_port();
    let oid = common::create_web_cluster(&mut web, "shrink", port).await;
    s.add_web_node(&oid, "node1", 2).await;
    s.add_nodeinfo(&oid, "/keep").await;
    let gone = s.add_nodeinfo(&oid, "/gone").await;
    s.start_web(&oid).await;
    s.wait_web(&oid, ClusterStatus::Running).await;
    let workers: BTreeSet<String> = eventually_async("two web workers", WITHIN, || async {
        let w = s.web_workers(&oid).await;
        (w.len() == 2).then(|| w.into_keys().collect())
    })
    .await;
    let mut agent = s.agent("node1").await;
    let served = |agent: &mut NodeControllerServiceClient<Channel>, id: &str| {
        let (mut agent, id) = (agent.clone(), id.to_owned());
        async move {
            agent
                .list_web_services(apb::ListWebServicesRequest { worker_id: id })
                .await
                .unwrap()
                .into_inner()
                .services
                .into_iter()
                .map(|s| s.path)
                .collect::<Vec<_>>()
        }
    };
    for id in &workers {
        assert_eq!(served(&mut agent, id).await, ["/gone", "/keep"], "{id}");
    }
    every_worker_answers(port, "/gone", 200, &workers);

    web.remove_web_cluster_service(pb::RemoveWebClusterServiceRequest {
        webcluster_oid: oid.clone(),
        webservice_oid: gone,
    })
    .await
    .unwrap();
    eventually_async("every worker to drop /gone", WITHIN, || {
        let mut agent = agent.clone();
        let workers = workers.clone();
        async move {
            for id in &workers {
                if served(&mut agent, id).await != ["/keep"] {
                    return None;
                }
            }
            Some(())
        }
    })
    .await;
    every_worker_answers(port, "/gone", 404, &workers);
    assert_eq!(
        s.web_workers(&oid)
            .await
            .into_keys()
            .collect::<BTreeSet<_>>(),
        workers,
        "the same workers serve on: the service left them, they were not replaced"
    );
}
