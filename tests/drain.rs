//! Draining a node (issue 18): a drained node's router workers are re-placed on the other
//! members while an Autobahn client pair keeps publishing and calling, and its web work moves
//! to a standby member under curl load; the node shows DRAINING then DRAINED; undraining moves
//! nothing back. Bad input names the field; an unknown node is NOT_FOUND. Real master, agent
//! and worker processes.

mod common;
mod load;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Pki, Proc, channel, eventually_async};
use switchyard::pb::agent::v1::{
    self as apb, WorkerStatus, node_controller_service_client::NodeControllerServiceClient,
};
use switchyard::pb::master::v1::{
    self as pb, ClusterStatus, DrainStatus, EventType, event,
    event_service_client::EventServiceClient, node_service_client::NodeServiceClient,
    router_cluster_service_client::RouterClusterServiceClient,
};
use tonic::transport::Channel;

struct Cluster {
    pki: Pki,
    _data: tempfile::TempDir,
    _master: Proc,
    agents: BTreeMap<String, Proc>,
    nodes: NodeServiceClient<Channel>,
    router: RouterClusterServiceClient<Channel>,
    ch: Channel,
}

impl Cluster {
    async fn new(names: &[&str]) -> Cluster {
        let pki = Pki::new(names);
        let data = tempfile::tempdir().unwrap();
        let master = Proc::master(&pki, data.path());
        let agents = names
            .iter()
            .map(|n| (n.to_string(), Proc::agent(&pki, n, master.addr)))
            .collect();
        common::nodes_online(&pki, master.addr, names.len(), Duration::from_secs(15)).await;
        let ch = channel(&pki, "admin", master.addr).await;
        Cluster {
            nodes: NodeServiceClient::new(ch.clone()),
            router: RouterClusterServiceClient::new(ch.clone()),
            ch,
            pki,
            _data: data,
            _master: master,
            agents,
        }
    }

    /// (id, pid) of the started router workers on `node`.
    async fn workers(&self, node: &str) -> Vec<(String, u32)> {
        let addr = self.agents[node].addr;
        let mut nc = NodeControllerServiceClient::new(channel(&self.pki, "admin", addr).await);
        let mut out: Vec<_> = nc
            .list_workers(apb::ListWorkersRequest::default())
            .await
            .unwrap()
            .into_inner()
            .workers
            .into_iter()
            .filter(|w| w.status == WorkerStatus::Started as i32)
            .map(|w| (w.id, w.pid))
            .collect();
        out.sort();
        out
    }

    async fn all_workers(&self) -> BTreeMap<String, Vec<(String, u32)>> {
        let mut out = BTreeMap::new();
        for n in self.agents.keys() {
            out.insert(n.clone(), self.workers(n).await);
        }
        out
    }

    async fn node(&self, name: &str) -> pb::Node {
        self.nodes
            .clone()
            .get_node_by_name(pb::GetNodeByNameRequest {
                authid: name.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .node
            .unwrap()
    }

    async fn status(&self, rc: &str) -> i32 {
        self.router
            .clone()
            .get_router_cluster(pb::GetRouterClusterRequest {
                routercluster_oid: rc.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .routercluster
            .unwrap()
            .status
    }
}

/// Every master event from now on, as it arrives.
async fn record_events(c: &Cluster) -> Arc<Mutex<Vec<pb::Event>>> {
    let mut watch = EventServiceClient::new(c.ch.clone())
        .watch(pb::WatchRequest::default())
        .await
        .unwrap()
        .into_inner();
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    tokio::spawn(async move {
        while let Ok(Some(r)) = watch.message().await {
            if let Some(e) = r.event {
                sink.lock().unwrap().push(e);
            }
        }
    });
    events
}

/// The group's placements: (node authid, port).
async fn placements(c: &Cluster, rc: &str, group: &str) -> Vec<(String, u32)> {
    c.router
        .clone()
        .stat_router_cluster_worker_group(pb::StatRouterClusterWorkerGroupRequest {
            routercluster_oid: rc.into(),
            workergroup_oid: group.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .stat
        .unwrap()
        .placements
        .into_iter()
        .map(|p| (p.node_authid, p.tcp_listening_port))
        .collect()
}

/// `tests/python/wamp_steady.py` publishing and calling until `stop` exists.
fn steady(from: u32, to: u32, stop: &std::path::Path) -> std::process::Child {
    let url = |port: u32| format!("ws://127.0.0.1:{port}/ws");
    Command::new(common::tool("python"))
        .arg(common::repo().join("tests/python/wamp_steady.py"))
        .args(["--publisher", &url(from), "--caller", &url(from)])
        .args(["--subscriber", &url(to), "--callee", &url(to)])
        .arg("--stop")
        .arg(stop)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run wamp_steady.py")
}

fn total(w: &BTreeMap<String, Vec<(String, u32)>>) -> usize {
    w.values().map(Vec::len).sum()
}

#[tokio::test]
async fn a_drained_node_hands_its_router_workers_over_and_undrain_moves_nothing() {
    let names = ["node1", "node2", "node3"];
    let c = Cluster::new(&names).await;
    let rc = common::create_router_cluster(&mut c.router.clone(), "routers").await;
    for n in names {
        common::add_router_node(&mut c.router.clone(), &rc, n, None)
            .await
            .unwrap();
    }
    let group = c
        .router
        .clone()
        .add_router_cluster_worker_group(pb::AddRouterClusterWorkerGroupRequest {
            routercluster_oid: rc.clone(),
            workergroup: Some(pb::RouterWorkerGroup {
                name: "grp".into(),
                scale: 3,
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .workergroup
        .unwrap()
        .oid;
    c.router
        .clone()
        .start_router_cluster(pb::StartRouterClusterRequest {
            routercluster_oid: rc.clone(),
        })
        .await
        .unwrap();
    let before = eventually_async("3 workers, RUNNING", Duration::from_secs(30), || async {
        let w = c.all_workers().await;
        (c.status(&rc).await == ClusterStatus::Running as i32 && total(&w) == 3).then_some(w)
    })
    .await;
    let victim = before
        .iter()
        .find(|(_, w)| !w.is_empty())
        .unwrap()
        .0
        .clone();
    // A WAMP client pair on the two other nodes' workers publishes and calls throughout.
    let ports = eventually_async("every port known", Duration::from_secs(15), || async {
        let p = placements(&c, &rc, &group).await;
        p.iter().all(|(_, port)| *port != 0).then_some(p)
    })
    .await;
    let others: Vec<u32> = ports
        .iter()
        .filter(|(n, _)| *n != victim)
        .map(|(_, p)| *p)
        .collect();
    assert_eq!(others.len(), 2, "{ports:?}");
    let dir = tempfile::tempdir().unwrap();
    let stop = dir.path().join("stop");
    let client = steady(others[0], others[1], &stop);

    let node = c.node(&victim).await;
    assert_eq!(node.drain, DrainStatus::Unspecified as i32);
    let events = record_events(&c).await;
    let drained = c
        .nodes
        .clone()
        .drain_node(pb::DrainNodeRequest {
            node_oid: node.oid.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .node
        .unwrap();
    assert_eq!(
        drained.drain,
        DrainStatus::Draining as i32,
        "DRAINING at first"
    );
    let after = eventually_async("the hand-over", Duration::from_secs(30), || async {
        let w = c.all_workers().await;
        // New before old: the moved worker's replacement starts before it stops.
        assert!((3..=4).contains(&total(&w)), "{w:?}");
        let done = w[&victim].is_empty()
            && total(&w) == 3
            && c.node(&victim).await.drain == DrainStatus::Drained as i32
            && c.status(&rc).await == ClusterStatus::Running as i32;
        done.then_some(w)
    })
    .await;
    std::fs::write(&stop, "").unwrap();
    let out = tokio::task::spawn_blocking(move || client.wait_with_output().unwrap())
        .await
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "wamp_steady.py printed no JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    println!("WAMP client during the drain: {report}");
    assert_eq!(report["ready"], true, "{report}");
    assert!(report["published"].as_u64().unwrap() >= 20, "{report}");
    assert_eq!(report["received"], report["published"], "{report}");
    assert_eq!(report["call_failures"], 0, "{report}");
    // Its replacement was listening on its new placement before the moved worker stopped.
    let moved_name = before[&victim][0].0.clone();
    let seen = events.lock().unwrap().clone();
    let listening = seen.iter().position(|e| match &e.object {
        Some(event::Object::Placement(p)) => {
            p.worker_name == moved_name && p.node_oid != node.oid && p.tcp_listening_port != 0
        }
        _ => false,
    });
    let stopped = seen.iter().position(|e| match &e.object {
        Some(event::Object::Worker(w)) => {
            e.r#type == EventType::OnWorkerStopped as i32
                && w.node_oid == node.oid
                && w.worker_id == moved_name
        }
        _ => false,
    });
    let (Some(listening), Some(stopped)) = (listening, stopped) else {
        panic!("no placement with a port ({listening:?}) or no stop ({stopped:?}): {seen:?}");
    };
    assert!(
        listening < stopped,
        "the old worker stopped before its replacement listened: {seen:?}"
    );
    let kinds: Vec<i32> = seen.iter().map(|e| e.r#type).collect();
    let draining = kinds
        .iter()
        .position(|k| *k == EventType::OnNodeDraining as i32);
    let drained = kinds
        .iter()
        .position(|k| *k == EventType::OnNodeDrained as i32);
    assert!(draining.is_some() && draining < drained, "{kinds:?}");
    // The moved worker serves where it was placed.
    let moved = placements(&c, &rc, &group).await;
    assert!(
        moved.iter().all(|(n, p)| *n != victim && *p != 0),
        "{moved:?}"
    );
    // The workers that were elsewhere kept their processes.
    for (n, ws) in before.iter().filter(|(n, _)| **n != victim) {
        for w in ws {
            assert!(after[n].contains(w), "{n}: {w:?} moved");
        }
    }

    // Undrain: eligible again, nothing moves (watched for a few monitor periods).
    let undrained = c
        .nodes
        .clone()
        .undrain_node(pb::UndrainNodeRequest {
            node_oid: node.oid.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .node
        .unwrap();
    assert_eq!(undrained.drain, DrainStatus::Unspecified as i32);
    let watch = Instant::now();
    while watch.elapsed() < Duration::from_secs(4) {
        assert_eq!(c.all_workers().await, after, "undrain moved a worker");
    }
}

#[tokio::test]
async fn drain_names_the_field_of_bad_input_and_refuses_unknown_nodes() {
    let c = Cluster::new(&["node1"]).await;
    for bad in ["", "node1", "not-an-oid"] {
        let err = c
            .nodes
            .clone()
            .drain_node(pb::DrainNodeRequest {
                node_oid: bad.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{bad:?}: {err:?}");
        assert!(err.message().contains("node_oid"), "{}", err.message());
    }
    let unknown = "00000000-0000-4000-8000-000000000000";
    for drain in [true, false] {
        let err = if drain {
            c.nodes
                .clone()
                .drain_node(pb::DrainNodeRequest {
                    node_oid: unknown.into(),
                })
                .await
                .map(drop)
        } else {
            c.nodes
                .clone()
                .undrain_node(pb::UndrainNodeRequest {
                    node_oid: unknown.into(),
                })
                .await
                .map(drop)
        }
        .unwrap_err();
        assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    }
    // Draining twice changes nothing; a node with nothing of a cluster on it becomes DRAINED.
    let oid = c.node("node1").await.oid;
    for _ in 0..2 {
        c.nodes
            .clone()
            .drain_node(pb::DrainNodeRequest {
                node_oid: oid.clone(),
            })
            .await
            .unwrap();
    }
    eventually_async("DRAINED", Duration::from_secs(15), || async {
        (c.node("node1").await.drain == DrainStatus::Drained as i32).then_some(())
    })
    .await;

    // The CLI, by node name.
    let cli = |args: &[&str]| {
        let out = Command::new(common::cli_bin())
            .args(args)
            .env("SWITCHYARD_MASTER", c._master.addr.to_string())
            .env("SWITCHYARD_PKI_DIR", &c.pki.path)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        (
            out.status.success(),
            text,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, shown, _) = cli(&["node", "show", "node1"]);
    assert!(ok && shown.contains("DRAINED"), "{shown}");
    let (ok, said, err) = cli(&["node", "undrain", "node1"]);
    assert!(ok, "{err}");
    assert!(said.contains("no longer drained"), "{said}");
    let (ok, said, err) = cli(&["node", "drain", "node1"]);
    assert!(ok, "{err}");
    assert!(said.contains("node node1 is DRAINING"), "{said}");
    let (ok, _, err) = cli(&["node", "drain", "nosuchnode"]);
    assert!(!ok && err.contains("nosuchnode"), "{err}");
}

#[tokio::test]
async fn a_drained_node_s_web_work_moves_to_the_standby_without_failing_a_request() {
    use switchyard::pb::master::v1::{
        web_cluster_service_client::WebClusterServiceClient, web_service::Service,
    };
    let _migrate = load::MigrateReq::enable();
    let c = Cluster::new(&["node1", "node2"]).await;
    let mut web = WebClusterServiceClient::new(c.ch.clone());
    let port = common::free_port();
    let oid = common::create_web_cluster(&mut web, "site", port).await;
    for (node, standby) in [("node1", false), ("node2", true)] {
        common::add_web_node(&mut web, &oid, node, 2, standby).await;
    }
    web.add_web_cluster_service(pb::AddWebClusterServiceRequest {
        webcluster_oid: oid.clone(),
        webservice: Some(pb::WebService {
            path: "/".into(),
            service: Some(Service::Nodeinfo(Default::default())),
            ..Default::default()
        }),
    })
    .await
    .unwrap();
    web.start_web_cluster(pb::StartWebClusterRequest {
        webcluster_oid: oid.clone(),
    })
    .await
    .unwrap();
    let web_workers = |node: &'static str| {
        let web = web.clone();
        let oid = oid.clone();
        async move {
            let mut web = web;
            web.list_web_cluster_workers(pb::ListWebClusterWorkersRequest {
                webcluster_oid: oid,
                filter_online: false,
            })
            .await
            .unwrap()
            .into_inner()
            .workers
            .into_iter()
            .filter(|w| w.node_authid == node && w.status == WorkerStatus::Started as i32)
            .count()
        }
    };
    let status = || {
        let web = web.clone();
        let oid = oid.clone();
        async move {
            let mut web = web;
            web.get_web_cluster(pb::GetWebClusterRequest {
                webcluster_oid: oid,
            })
            .await
            .unwrap()
            .into_inner()
            .webcluster
            .unwrap()
            .status
        }
    };
    eventually_async(
        "node1 serving, RUNNING",
        Duration::from_secs(30),
        || async {
            (status().await == ClusterStatus::Running as i32
                && web_workers("node1").await == 2
                && web_workers("node2").await == 0)
                .then_some(())
        },
    )
    .await;

    let dir = tempfile::tempdir().unwrap();
    let url = format!("http://127.0.0.1:{port}/");
    let keep_alive = load::Load::start(&url, dir.path(), false);
    let close = load::Load::start(&url, dir.path(), true);
    common::eventually("requests served", Duration::from_secs(30), || {
        (keep_alive.answered() >= 300 && close.answered() >= 300).then_some(())
    });
    let node1 = c.node("node1").await.oid;
    c.nodes
        .clone()
        .drain_node(pb::DrainNodeRequest {
            node_oid: node1.clone(),
        })
        .await
        .unwrap();
    eventually_async(
        "the standby serving, node1 DRAINED",
        Duration::from_secs(30),
        || async {
            let n1 = web_workers("node1").await;
            let n2 = web_workers("node2").await;
            assert!(
                n1 + n2 >= 2,
                "fewer workers than wanted: node1 {n1}, node2 {n2}"
            );
            (n1 == 0
                && n2 == 2
                && c.node("node1").await.drain == DrainStatus::Drained as i32
                && status().await == ClusterStatus::Running as i32)
                .then_some(())
        },
    )
    .await;
    let during = keep_alive.answered() + close.answered();
    common::eventually("more requests served", Duration::from_secs(60), || {
        (keep_alive.answered() + close.answered() >= (during + 400).max(2000)).then_some(())
    });
    let (ok_k, failed_k) = keep_alive.finish();
    let (ok_c, failed_c) = close.finish();
    println!(
        "keep-alive: {ok_k} answered, {failed_k} failed; close: {ok_c} answered, {failed_c} failed"
    );
    assert_eq!(failed_k + failed_c, 0, "requests failed during the drain");
}
