//! Issue 6 acceptance: a real master and real agents (separate processes); clusters started
//! through the API run, converge, stop, and survive node loss and master restarts. Also the
//! regression tests of docs/crossbar.md (what the reference gets wrong).

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Pki, Proc, channel, eventually_async, process_gone, system_tool};
use switchyard::pb::agent::v1::{
    self as apb, WorkerStatus, WorkerType,
    node_controller_service_client::NodeControllerServiceClient,
};
use switchyard::pb::master::v1::{
    self as pb, ClusterStatus, router_cluster_service_client::RouterClusterServiceClient,
    web_cluster_service_client::WebClusterServiceClient, web_service::Service,
};
use tonic::transport::Channel;

struct Cluster {
    pki: Pki,
    _data: tempfile::TempDir,
    master: Proc,
    agents: BTreeMap<String, Proc>,
    web: WebClusterServiceClient<Channel>,
    router: RouterClusterServiceClient<Channel>,
}

impl Cluster {
    async fn new(nodes: &[&str]) -> Cluster {
        let pki = Pki::new(nodes);
        let data = tempfile::tempdir().unwrap();
        // A restart test brings the master back on this address: keep it out of the ephemeral
        // range, where reconnecting agents could take it (TCP self-connect).
        let port = common::stable_port();
        let master = Proc::master_on(&pki, data.path(), &format!("127.0.0.1:{port}"));
        let agents = nodes
            .iter()
            .map(|n| (n.to_string(), Proc::agent(&pki, n, master.addr)))
            .collect();
        let ch = channel(&pki, "admin", master.addr).await;
        let c = Cluster {
            web: WebClusterServiceClient::new(ch.clone()),
            router: RouterClusterServiceClient::new(ch),
            pki,
            _data: data,
            master,
            agents,
        };
        for n in nodes {
            c.wait_online(n).await;
        }
        c
    }

    async fn wait_online(&self, authid: &str) {
        let mut nodes = switchyard::pb::master::v1::node_service_client::NodeServiceClient::new(
            channel(&self.pki, "admin", self.master.addr).await,
        );
        eventually_async("the node to be online", Duration::from_secs(15), || {
            let authid = authid.to_owned();
            let mut nodes = nodes.clone();
            async move {
                let n = nodes
                    .get_node_by_name(pb::GetNodeByNameRequest { authid })
                    .await
                    .ok()?
                    .into_inner()
                    .node?;
                (n.status == pb::NodeStatus::Online as i32).then_some(())
            }
        })
        .await;
        let _ = &mut nodes;
    }

    async fn agent(&self, node: &str) -> NodeControllerServiceClient<Channel> {
        NodeControllerServiceClient::new(channel(&self.pki, "admin", self.agents[node].addr).await)
    }

    /// Started workers on `node` whose id starts with `prefix`.
    async fn workers(&self, node: &str, prefix: &str) -> Vec<apb::Worker> {
        let mut nc = self.agent(node).await;
        nc.list_workers(apb::ListWorkersRequest {
            r#type: 0,
            status: WorkerStatus::Started as i32,
        })
        .await
        .map(|r| {
            r.into_inner()
                .workers
                .into_iter()
                .filter(|w| w.id.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default()
    }

    async fn web_status(&self, oid: &str) -> pb::WebCluster {
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

    async fn wait_web(&self, oid: &str, status: ClusterStatus, within: Duration) -> pb::WebCluster {
        eventually_async(&format!("web cluster {status:?}"), within, || async {
            let c = self.web_status(oid).await;
            (c.status == status as i32).then_some(c)
        })
        .await
    }

    async fn router_status(&self, oid: &str) -> pb::RouterCluster {
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

    fn kill_agent(&mut self, node: &str) -> Proc {
        let agent = self.agents.remove(node).unwrap();
        assert!(
            Command::new("kill")
                .args(["-KILL", &agent.pid().to_string()])
                .status()
                .unwrap()
                .success()
        );
        agent
    }

    fn restart_agent(&mut self, node: &str) {
        let agent = Proc::agent(&self.pki, node, self.master.addr);
        self.agents.insert(node.to_owned(), agent);
    }
}

fn curl(url: &str, extra: &[&str]) -> String {
    let out = Command::new(system_tool("curl"))
        .args(["-s", "--max-time", "5"])
        .args(extra)
        .arg(url)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn json(v: serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match v {
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap()),
        serde_json::Value::String(s) => Kind::StringValue(s),
        other => Kind::StringValue(other.to_string()),
    };
    prost_types::Value { kind: Some(kind) }
}

async fn create_web(c: &Cluster, name: &str, port: u16, extra: pb::WebCluster) -> String {
    c.web
        .clone()
        .create_web_cluster(pb::CreateWebClusterRequest {
            webcluster: Some(pb::WebCluster {
                name: name.into(),
                tcp_port: u32::from(port),
                tcp_interface: Some("127.0.0.1".into()),
                ..extra
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .webcluster
        .unwrap()
        .oid
}

async fn add_node(c: &Cluster, oid: &str, node: &str, parallel: u32, standby: bool) {
    c.web
        .clone()
        .add_web_cluster_node(pb::AddWebClusterNodeRequest {
            webcluster_oid: oid.into(),
            node_oid: node.into(),
            config: Some(pb::WebClusterNodeConfig { parallel, standby }),
        })
        .await
        .unwrap();
}

async fn add_service(c: &Cluster, oid: &str, path: &str, service: Service) -> pb::WebService {
    c.web
        .clone()
        .add_web_cluster_service(pb::AddWebClusterServiceRequest {
            webcluster_oid: oid.into(),
            webservice: Some(pb::WebService {
                path: path.into(),
                service: Some(service),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .webservice
        .unwrap()
}

fn grpcurl_start(c: &Cluster, service: &str, method: &str, field: &str, oid: &str) {
    let body = format!("{{\"{field}\": \"{oid}\"}}");
    let out = common::grpcurl(
        &c.pki.grpcurl_tls(Some("admin")),
        &[
            "-d",
            &body,
            &c.master.addr.to_string(),
            &format!("switchyard.master.v1.{service}/{method}"),
        ],
    );
    assert!(out.status.success(), "{}", common::stderr(&out));
}

#[tokio::test]
async fn a_web_cluster_runs_serves_converges_and_stops() {
    let c = Cluster::new(&["node1", "node2"]).await;
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("file.txt"), "served by the cluster").unwrap();
    let port = common::free_port();
    let oid = create_web(&c, "site", port, Default::default()).await;
    let prefix = format!("cpw-{oid}-");
    add_node(&c, &oid, "node1", 2, false).await;
    add_node(&c, &oid, "node2", 2, false).await;
    add_service(
        &c,
        &oid,
        "/",
        Service::Static(apb::StaticService {
            directory: tmp.path().display().to_string(),
            options: None,
        }),
    )
    .await;
    add_service(
        &c,
        &oid,
        "/settings",
        Service::Json(apb::JsonService {
            value: Some(json(serde_json::json!(42))),
            options: None,
        }),
    )
    .await;
    grpcurl_start(
        &c,
        "WebClusterService",
        "StartWebCluster",
        "webclusterOid",
        &oid,
    );
    c.wait_web(&oid, ClusterStatus::Running, Duration::from_secs(15))
        .await;

    let mut pids = Vec::new();
    for n in ["node1", "node2"] {
        let ws = c.workers(n, &prefix).await;
        assert_eq!(
            ws.iter().map(|w| w.id.clone()).collect::<Vec<_>>(),
            [format!("{prefix}0"), format!("{prefix}1")],
            "{n}"
        );
        pids.extend(ws.iter().map(|w| w.pid));
    }
    assert_eq!(pids.len(), 4);
    assert!(pids.iter().all(|p| !process_gone(*p)));
    // The monitor's view through the master.
    let listed = c
        .web
        .clone()
        .list_web_cluster_workers(pb::ListWebClusterWorkersRequest {
            webcluster_oid: oid.clone(),
            filter_online: true,
        })
        .await
        .unwrap()
        .into_inner()
        .workers;
    let mut listed_pids: Vec<u32> = listed.iter().map(|w| w.pid).collect();
    listed_pids.sort();
    let mut sorted = pids.clone();
    sorted.sort();
    assert_eq!(listed_pids, sorted);
    let stat = c
        .web
        .clone()
        .stat_web_cluster(pb::StatWebClusterRequest {
            webcluster_oid: oid.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((stat.desired_workers, stat.running_workers), (4, 4));
    for w in &stat.workers {
        assert_eq!(
            w.stats.as_ref().unwrap().pid,
            w.worker.as_ref().unwrap().pid,
            "stats of each worker report its own pid"
        );
    }
    assert!(stat.total_resident > 0);
    let base = format!("http://127.0.0.1:{port}");
    assert_eq!(
        curl(&format!("{base}/file.txt"), &[]),
        "served by the cluster"
    );
    assert_eq!(curl(&format!("{base}/settings"), &[]), "42");

    // A service added while running is served by every worker.
    add_service(&c, &oid, "/info", Service::Nodeinfo(Default::default())).await;
    eventually_async(
        "every worker to serve /info",
        Duration::from_secs(10),
        || async {
            for n in ["node1", "node2"] {
                let mut nc = c.agent(n).await;
                for i in 0..2 {
                    let list = nc
                        .list_web_services(apb::ListWebServicesRequest {
                            worker_id: format!("{prefix}{i}"),
                        })
                        .await
                        .ok()?
                        .into_inner();
                    list.services.iter().find(|s| s.path == "/info")?;
                }
            }
            Some(())
        },
    )
    .await;
    assert!(curl(&format!("{base}/info"), &[]).contains("\"node\""));

    // A member removed while running: its workers are stopped.
    c.web
        .clone()
        .remove_web_cluster_node(pb::RemoveWebClusterNodeRequest {
            webcluster_oid: oid.clone(),
            node_oid: "node2".into(),
        })
        .await
        .unwrap();
    eventually_async(
        "node2's workers to stop",
        Duration::from_secs(10),
        || async { c.workers("node2", &prefix).await.is_empty().then_some(()) },
    )
    .await;
    assert_eq!(
        c.web_status(&oid).await.status,
        ClusterStatus::Running as i32
    );

    // Stop: every worker stops, the port closes, the cluster is STOPPED and can be deleted.
    grpcurl_start(
        &c,
        "WebClusterService",
        "StopWebCluster",
        "webclusterOid",
        &oid,
    );
    c.wait_web(&oid, ClusterStatus::Stopped, Duration::from_secs(15))
        .await;
    for p in &pids {
        assert!(process_gone(*p), "worker {p} outlived STOPPED");
    }
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the port is closed"
    );
    c.web
        .clone()
        .delete_web_cluster(pb::DeleteWebClusterRequest {
            webcluster_oid: oid,
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn a_standby_member_takes_over_and_hands_back() {
    let mut c = Cluster::new(&["node1", "node2", "node3"]).await;
    let oid = create_web(&c, "standby", common::free_port(), Default::default()).await;
    let prefix = format!("cpw-{oid}-");
    add_node(&c, &oid, "node1", 1, false).await;
    add_node(&c, &oid, "node2", 1, false).await;
    add_node(&c, &oid, "node3", 1, true).await;
    add_service(&c, &oid, "/", Service::Nodeinfo(Default::default())).await;
    c.web
        .clone()
        .start_web_cluster(pb::StartWebClusterRequest {
            webcluster_oid: oid.clone(),
        })
        .await
        .unwrap();
    c.wait_web(&oid, ClusterStatus::Running, Duration::from_secs(15))
        .await;
    assert!(
        c.workers("node3", &prefix).await.is_empty(),
        "a standby runs nothing while every active member is online"
    );

    let _dead = c.kill_agent("node1");
    let killed = Instant::now();
    eventually_async(
        "the standby to run the workers",
        Duration::from_secs(3),
        || async { (!c.workers("node3", &prefix).await.is_empty()).then_some(()) },
    )
    .await;
    println!("standby took over {:?} after kill -9", killed.elapsed());
    // Documented: a replaced member keeps the cluster RUNNING.
    c.wait_web(&oid, ClusterStatus::Running, Duration::from_secs(5))
        .await;

    c.restart_agent("node1");
    eventually_async(
        "node1 to run again and the standby to hand back",
        Duration::from_secs(15),
        || async {
            (c.workers("node3", &prefix).await.is_empty()
                && c.workers("node1", &prefix).await.len() == 1)
                .then_some(())
        },
    )
    .await;
}

async fn router_counts(c: &Cluster, nodes: &[&str]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for n in nodes {
        if c.agents.contains_key(*n) {
            out.insert(n.to_string(), c.workers(n, "grp_").await.len());
        }
    }
    out
}

#[tokio::test]
async fn router_workers_are_placed_within_limits_and_re_placed_on_node_loss() {
    let nodes = ["node1", "node2", "node3"];
    let mut c = Cluster::new(&nodes).await;
    let rc = common::create_router_cluster(&mut c.router.clone(), "routers").await;
    for n in nodes {
        common::add_router_node(&mut c.router.clone(), &rc, n, Some(2))
            .await
            .unwrap();
    }
    c.router
        .clone()
        .add_router_cluster_worker_group(pb::AddRouterClusterWorkerGroupRequest {
            routercluster_oid: rc.clone(),
            workergroup: Some(pb::RouterWorkerGroup {
                name: "grp".into(),
                scale: 4,
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    grpcurl_start(
        &c,
        "RouterClusterService",
        "StartRouterCluster",
        "routerclusterOid",
        &rc,
    );
    eventually_async("RUNNING", Duration::from_secs(15), || async {
        (c.router_status(&rc).await.status == ClusterStatus::Running as i32).then_some(())
    })
    .await;
    let mut counts: Vec<usize> = router_counts(&c, &nodes).await.into_values().collect();
    counts.sort();
    assert_eq!(counts, [1, 1, 2], "least-loaded within hardlimit 2");
    let stat = c
        .router
        .clone()
        .stat_router_cluster(pb::StatRouterClusterRequest {
            routercluster_oid: rc.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stat.workergroups.len(), 1);
    let g = &stat.workergroups[0];
    assert_eq!(
        (g.desired_workers, g.running_workers, g.placements.len()),
        (4, 4, 4)
    );
    assert!(g.workers.iter().all(|w| w.stats.is_some()));

    // Kill the node with two workers: its workers run elsewhere within 3 s, never above 2.
    let before = router_counts(&c, &nodes).await;
    let victim = before.iter().find(|(_, n)| **n == 2).unwrap().0.clone();
    let _dead = c.kill_agent(&victim);
    let killed = Instant::now();
    eventually_async("re-placement", Duration::from_secs(3), || async {
        let counts = router_counts(&c, &nodes).await;
        (counts.values().sum::<usize>() == 4).then_some(())
    })
    .await;
    println!("re-placed {:?} after kill -9", killed.elapsed());
    assert!(router_counts(&c, &nodes).await.values().all(|n| *n <= 2));

    // The node returns: nothing healthy moves, nothing runs twice.
    c.restart_agent(&victim);
    c.wait_online(&victim).await;
    let settled = eventually_async("a stable total of 4", Duration::from_secs(10), || async {
        let counts = router_counts(&c, &nodes).await;
        (counts.values().sum::<usize>() == 4).then_some(counts)
    })
    .await;
    assert_eq!(settled[&victim], 0, "healthy workers did not move back");
    let mut ids = Vec::new();
    for n in nodes {
        ids.extend(c.workers(n, "grp_").await.into_iter().map(|w| w.id));
    }
    ids.sort();
    assert_eq!(
        ids,
        ["grp_0", "grp_1", "grp_2", "grp_3"],
        "no worker runs twice"
    );
}

/// A worker group removed from a running router cluster leaves nothing running (its workers
/// are recognised by the owner labels they carry, not by the group's deleted rows), and
/// StopRouterCluster reports STOPPED only once no worker of the cluster runs on any node.
#[tokio::test]
async fn a_removed_worker_group_leaves_nothing_running_and_stop_reaches_stopped() {
    let nodes = ["node1", "node2"];
    let c = Cluster::new(&nodes).await;
    let rc = common::create_router_cluster(&mut c.router.clone(), "routers").await;
    for n in nodes {
        common::add_router_node(&mut c.router.clone(), &rc, n, None)
            .await
            .unwrap();
    }
    let mut group_oids = BTreeMap::new();
    for (name, scale) in [("grp1", 3), ("grp2", 1)] {
        let g = c
            .router
            .clone()
            .add_router_cluster_worker_group(pb::AddRouterClusterWorkerGroupRequest {
                routercluster_oid: rc.clone(),
                workergroup: Some(pb::RouterWorkerGroup {
                    name: name.into(),
                    scale,
                    ..Default::default()
                }),
            })
            .await
            .unwrap()
            .into_inner()
            .workergroup
            .unwrap();
        group_oids.insert(name, g.oid);
    }
    grpcurl_start(
        &c,
        "RouterClusterService",
        "StartRouterCluster",
        "routerclusterOid",
        &rc,
    );
    eventually_async("RUNNING", Duration::from_secs(15), || async {
        (c.router_status(&rc).await.status == ClusterStatus::Running as i32).then_some(())
    })
    .await;
    let running = |prefix: &'static str| {
        let c = &c;
        async move {
            let mut ids = Vec::new();
            for n in nodes {
                ids.extend(c.workers(n, prefix).await.into_iter().map(|w| w.id));
            }
            ids.sort();
            ids
        }
    };
    assert_eq!(running("grp2_").await, ["grp2_0"]);

    c.router
        .clone()
        .remove_router_cluster_worker_group(pb::RemoveRouterClusterWorkerGroupRequest {
            routercluster_oid: rc.clone(),
            workergroup_oid: group_oids["grp2"].clone(),
        })
        .await
        .unwrap();
    eventually_async("grp2_0 to stop", Duration::from_secs(10), || async {
        running("grp2_").await.is_empty().then_some(())
    })
    .await;
    assert_eq!(running("grp1_").await, ["grp1_0", "grp1_1", "grp1_2"]);

    c.router
        .clone()
        .stop_router_cluster(pb::StopRouterClusterRequest {
            routercluster_oid: rc.clone(),
        })
        .await
        .unwrap();
    eventually_async("STOPPED", Duration::from_secs(15), || async {
        (c.router_status(&rc).await.status == ClusterStatus::Stopped as i32).then_some(())
    })
    .await;
    assert!(
        running("grp").await.is_empty(),
        "{:?}",
        running("grp").await
    );
}

#[tokio::test]
async fn a_restarted_master_resumes_monitors_without_restarting_workers() {
    let mut c = Cluster::new(&["node1"]).await;
    let oid = create_web(&c, "resume", common::free_port(), Default::default()).await;
    let prefix = format!("cpw-{oid}-");
    add_node(&c, &oid, "node1", 2, false).await;
    add_service(&c, &oid, "/", Service::Nodeinfo(Default::default())).await;
    c.web
        .clone()
        .start_web_cluster(pb::StartWebClusterRequest {
            webcluster_oid: oid.clone(),
        })
        .await
        .unwrap();
    c.wait_web(&oid, ClusterStatus::Running, Duration::from_secs(15))
        .await;
    let before: Vec<(String, u32)> = c
        .workers("node1", &prefix)
        .await
        .into_iter()
        .map(|w| (w.id, w.pid))
        .collect();
    assert_eq!(before.len(), 2);

    let addr: SocketAddr = c.master.addr;
    c.master.kill9();
    c.master = Proc::master_on(&c.pki, c._data.path(), &addr.to_string());
    c.web = WebClusterServiceClient::new(channel(&c.pki, "admin", addr).await);
    c.wait_online("node1").await;
    // Add a service: the resumed monitor must act on it, on the same workers.
    add_service(&c, &oid, "/more", Service::Nodeinfo(Default::default())).await;
    eventually_async(
        "the resumed monitor to add the service",
        Duration::from_secs(10),
        || async {
            let mut nc = c.agent("node1").await;
            let l = nc
                .list_web_services(apb::ListWebServicesRequest {
                    worker_id: format!("{prefix}0"),
                })
                .await
                .ok()?
                .into_inner();
            l.services.iter().find(|s| s.path == "/more").map(|_| ())
        },
    )
    .await;
    let after: Vec<(String, u32)> = c
        .workers("node1", &prefix)
        .await
        .into_iter()
        .map(|w| (w.id, w.pid))
        .collect();
    assert_eq!(after, before, "no worker was started twice");
    c.wait_web(&oid, ClusterStatus::Running, Duration::from_secs(5))
        .await;
    let _ = &mut c;
}

/// docs/crossbar.md: DEGRADED and ERROR are assigned with reasons; TLS fields reach the workers; each
/// cluster sees exactly its own rows.
#[tokio::test]
async fn reference_bugs_stay_fixed() {
    let c = Cluster::new(&["node1"]).await;
    // ERROR: nothing can run without members.
    let lonely = create_web(&c, "lonely", common::free_port(), Default::default()).await;
    c.web
        .clone()
        .start_web_cluster(pb::StartWebClusterRequest {
            webcluster_oid: lonely.clone(),
        })
        .await
        .unwrap();
    let e = c
        .wait_web(&lonely, ClusterStatus::Error, Duration::from_secs(10))
        .await;
    assert!(e.status_reason.contains("no member"), "{}", e.status_reason);

    // DEGRADED: a worker group that cannot fit within the hardlimits.
    let rc = c
        .router
        .clone()
        .create_router_cluster(pb::CreateRouterClusterRequest {
            routercluster: Some(pb::RouterCluster {
                name: "tight".into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .routercluster
        .unwrap()
        .oid;
    c.router
        .clone()
        .add_router_cluster_node(pb::AddRouterClusterNodeRequest {
            routercluster_oid: rc.clone(),
            node_oid: "node1".into(),
            config: Some(pb::RouterClusterNodeConfig {
                softlimit: None,
                hardlimit: Some(1),
            }),
        })
        .await
        .unwrap();
    c.router
        .clone()
        .add_router_cluster_worker_group(pb::AddRouterClusterWorkerGroupRequest {
            routercluster_oid: rc.clone(),
            workergroup: Some(pb::RouterWorkerGroup {
                name: "big".into(),
                scale: 3,
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    c.router
        .clone()
        .start_router_cluster(pb::StartRouterClusterRequest {
            routercluster_oid: rc.clone(),
        })
        .await
        .unwrap();
    let d = eventually_async("DEGRADED", Duration::from_secs(10), || async {
        let r = c.router_status(&rc).await;
        (r.status == ClusterStatus::Degraded as i32).then_some(r)
    })
    .await;
    assert!(d.status_reason.contains("hardlimit"), "{}", d.status_reason);
    assert_eq!(
        c.workers("node1", "big_").await.len(),
        1,
        "hardlimit 1 is honoured"
    );

    // TLS fields are applied by the workers; two clusters on one node see only their own services.
    c.pki.issue("node", "sitecert");
    let read = |f: &str| std::fs::read_to_string(c.pki.path.join(f)).unwrap();
    let tls_port = common::free_port();
    let a = create_web(
        &c,
        "tlssite",
        tls_port,
        pb::WebCluster {
            tls_key: Some(read("sitecert.key")),
            tls_certificate: Some(read("sitecert.pem")),
            ..Default::default()
        },
    )
    .await;
    let b = create_web(&c, "other", common::free_port(), Default::default()).await;
    for (oid, path) in [(&a, "/only-a"), (&b, "/only-b")] {
        add_node(&c, oid, "node1", 1, false).await;
        add_service(&c, oid, path, Service::Nodeinfo(Default::default())).await;
        c.web
            .clone()
            .start_web_cluster(pb::StartWebClusterRequest {
                webcluster_oid: oid.clone(),
            })
            .await
            .unwrap();
    }
    c.wait_web(&a, ClusterStatus::Running, Duration::from_secs(15))
        .await;
    c.wait_web(&b, ClusterStatus::Running, Duration::from_secs(15))
        .await;
    let out = curl(
        &format!("https://localhost:{tls_port}/only-a"),
        &["--cacert", &c.pki.file("ca.pem")],
    );
    assert!(
        out.contains("\"node\":\"node1\""),
        "HTTPS with the cluster's certificate: {out}"
    );
    let mut nc = c.agent("node1").await;
    // Both clusters are checked, so that the check holds whichever oid sorts first (the
    // reference's unbounded scans leaked the rows of clusters sorting after the one scanned).
    for (oid, path) in [(&a, "/only-a"), (&b, "/only-b")] {
        let services = nc
            .list_web_services(apb::ListWebServicesRequest {
                worker_id: format!("cpw-{oid}-0"),
            })
            .await
            .unwrap()
            .into_inner()
            .services;
        assert_eq!(
            services.iter().map(|s| s.path.as_str()).collect::<Vec<_>>(),
            [path],
            "cluster {oid} serves only its own service"
        );
    }
    let all = nc
        .list_workers(apb::ListWorkersRequest {
            r#type: WorkerType::Web as i32,
            status: WorkerStatus::Started as i32,
        })
        .await
        .unwrap()
        .into_inner()
        .workers;
    assert_eq!(
        all.len(),
        2,
        "one worker per cluster, none for the member-less cluster"
    );
}

/// A frozen agent (SIGSTOP: a partition as the master sees it) is offline after the grace period;
/// a cluster stopped meanwhile becomes STOPPED, and the node's leftover workers are stopped when
/// it returns.
#[tokio::test]
async fn workers_of_a_cluster_stopped_while_a_node_was_away_stop_when_it_returns() {
    let c = Cluster::new(&["node1", "node2"]).await;
    let oid = create_web(&c, "away", common::free_port(), Default::default()).await;
    let prefix = format!("cpw-{oid}-");
    add_node(&c, &oid, "node1", 1, false).await;
    add_node(&c, &oid, "node2", 1, false).await;
    add_service(&c, &oid, "/", Service::Nodeinfo(Default::default())).await;
    c.web
        .clone()
        .start_web_cluster(pb::StartWebClusterRequest {
            webcluster_oid: oid.clone(),
        })
        .await
        .unwrap();
    c.wait_web(&oid, ClusterStatus::Running, Duration::from_secs(15))
        .await;
    let left_behind = c.workers("node2", &prefix).await;
    assert_eq!(left_behind.len(), 1);

    let frozen = c.agents["node2"].pid().to_string();
    assert!(
        Command::new("kill")
            .args(["-STOP", &frozen])
            .status()
            .unwrap()
            .success()
    );
    let stopped_at = Instant::now();
    let degraded = c
        .wait_web(&oid, ClusterStatus::Degraded, Duration::from_secs(5))
        .await;
    println!(
        "partition detected after {:?}: {}",
        stopped_at.elapsed(),
        degraded.status_reason
    );
    c.web
        .clone()
        .stop_web_cluster(pb::StopWebClusterRequest {
            webcluster_oid: oid.clone(),
        })
        .await
        .unwrap();
    c.wait_web(&oid, ClusterStatus::Stopped, Duration::from_secs(10))
        .await;
    assert!(
        !process_gone(left_behind[0].pid),
        "the unreachable node's worker is still there"
    );

    assert!(
        Command::new("kill")
            .args(["-CONT", &frozen])
            .status()
            .unwrap()
            .success()
    );
    eventually_async(
        "the returned node's leftover worker to stop",
        Duration::from_secs(10),
        || async { process_gone(left_behind[0].pid).then_some(()) },
    )
    .await;
}
