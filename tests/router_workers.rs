//! Issue 7 acceptance: router workers are real WAMP routers. Autobahn|Python (a client nobody
//! here wrote) talks to them directly, across the router links of a worker group, and through a
//! web cluster's `websocket_reverseproxy`; a killed router node's placements move and clients
//! reconnecting through the web cluster keep exchanging messages.

mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use common::{Pki, Proc, channel, eventually_async, tool};
use serde_json::Value;
use switchyard::error::reason_of;
use switchyard::pb::agent::v1::{
    self as apb, WorkerStatus, WorkerType,
    node_controller_service_client::NodeControllerServiceClient,
};
use switchyard::pb::master::v1::{
    self as pb, ClusterStatus, router_cluster_service_client::RouterClusterServiceClient,
    web_cluster_service_client::WebClusterServiceClient,
};
use tonic::Code;
use tonic::transport::Channel;

/// Runs `tests/python/wamp_check.py` and returns its JSON report.
fn wamp_check(args: &[&str]) -> Value {
    let out = Command::new(tool("python"))
        .arg(common::repo().join("tests/python/wamp_check.py"))
        .args(args)
        .output()
        .expect("run wamp_check.py");
    assert!(
        out.status.success(),
        "wamp_check.py {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "wamp_check.py printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// A range of `n` free loopback ports below the ephemeral range.
fn port_range(n: u16) -> (u16, u16) {
    loop {
        let start = common::stable_port();
        if (start..start + n).all(|p| std::net::TcpListener::bind(("0.0.0.0", p)).is_ok()) {
            return (start, start + n - 1);
        }
    }
}

fn reason(s: &tonic::Status) -> String {
    reason_of(s).unwrap_or_default()
}

#[tokio::test]
async fn a_router_worker_serves_wamp_to_autobahn() {
    let pki = Pki::new(&["node1"]);
    let agent = Proc::agent(&pki, "node1", "127.0.0.1:9".parse().unwrap());
    let mut nc = NodeControllerServiceClient::new(channel(&pki, "admin", agent.addr).await);
    for (id, kind) in [("r1", WorkerType::Router), ("w1", WorkerType::Web)] {
        nc.start_worker(apb::StartWorkerRequest {
            worker_id: id.into(),
            worker_type: kind as i32,
            options: None,
        })
        .await
        .unwrap();
    }

    // Controls addressed to the wrong kind of worker, or before the transport, are refused.
    let e = nc
        .get_router_transport(apb::GetRouterTransportRequest {
            worker_id: "w1".into(),
        })
        .await
        .unwrap_err();
    assert!(e.message().contains("not a router worker"), "{e:?}");
    let e = nc
        .list_web_services(apb::ListWebServicesRequest {
            worker_id: "r1".into(),
        })
        .await
        .unwrap_err();
    assert!(e.message().contains("not a web worker"), "{e:?}");
    let e = nc
        .get_router_transport(apb::GetRouterTransportRequest {
            worker_id: "r1".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "NOT_STARTED");

    // The transport takes the first free port of its range.
    let (start, end) = port_range(3);
    let taken = std::net::TcpListener::bind(("0.0.0.0", start)).unwrap();
    let transport = |id: &str, start: u16, end: u16| apb::StartRouterTransportRequest {
        worker_id: id.into(),
        interface: "127.0.0.1".into(),
        port_range_start: start.into(),
        port_range_end: end.into(),
        link_secret: "s3cret".into(),
    };
    let t = nc
        .start_router_transport(transport("r1", start, end))
        .await
        .unwrap()
        .into_inner()
        .transport
        .unwrap();
    assert_eq!(t.port, u32::from(start) + 1, "the taken port is skipped");
    assert!(t.subprotocols.contains(&"wamp.2.json".to_owned()));
    let e = nc
        .start_router_transport(transport("r1", start, end))
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "ALREADY_STARTED");
    nc.start_worker(apb::StartWorkerRequest {
        worker_id: "r2".into(),
        worker_type: WorkerType::Router as i32,
        options: None,
    })
    .await
    .unwrap();
    let e = nc
        .start_router_transport(transport("r2", start, start))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (Code::Unavailable, "CANNOT_LISTEN")
    );
    drop(taken);
    let e = nc
        .start_router_transport(transport("r2", 20, 10))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("port_range_end"), "{e:?}");

    // Realms: idempotent start, validated names.
    for _ in 0..2 {
        nc.start_router_realm(apb::StartRouterRealmRequest {
            worker_id: "r1".into(),
            realm: "realm1".into(),
        })
        .await
        .unwrap();
    }
    let e = nc
        .start_router_realm(apb::StartRouterRealmRequest {
            worker_id: "r1".into(),
            realm: "bad realm".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("realm"), "{e:?}");
    let realms = nc
        .list_router_realms(apb::ListRouterRealmsRequest {
            worker_id: "r1".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .realms;
    assert_eq!(
        realms.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
        ["realm1"]
    );
    let link = |realm: &str, host: &str| apb::StartRouterLinkRequest {
        worker_id: "r1".into(),
        link: Some(apb::RouterLink {
            id: "peer".into(),
            realm: realm.into(),
            peer_host: host.into(),
            peer_port: 9,
            ..Default::default()
        }),
    };
    let e = nc.start_router_link(link("realm2", "h")).await.unwrap_err();
    assert_eq!(reason(&e), "NOT_STARTED");
    let e = nc.start_router_link(link("realm1", "")).await.unwrap_err();
    assert!(e.message().contains("link.peer_host"), "{e:?}");

    // Autobahn, with each serializer, and with none named (it offers CBOR first).
    let url = format!("ws://127.0.0.1:{}/ws", t.port);
    for serializer in [Some("json"), Some("msgpack"), Some("cbor"), None] {
        let mut args = vec!["basic", url.as_str()];
        if let Some(s) = serializer {
            args.extend(["--serializer", s]);
        }
        let r = wamp_check(&args);
        assert_eq!(
            r["serializer"],
            serializer.unwrap_or("cbor"),
            "negotiated serializer"
        );
        assert_eq!(
            r["event"],
            serde_json::json!({"args": [1, "two"], "kwargs": {"k": "v"}})
        );
        assert_eq!(r["own_event"], serde_json::json!(["me"]));
        assert_eq!(r["add"], 5);
        assert_eq!(r["fail"], "com.example.error.oops");
        assert_eq!(r["missing"], "wamp.error.no_such_procedure");
        assert_eq!(r["duplicate"], "wamp.error.procedure_already_exists");
        assert_eq!(r["no_realm"], "wamp.error.no_such_realm");
        assert_eq!(r["after_leave"], "wamp.error.no_such_procedure");
    }
    // The router also answers at "/", and refuses other paths and non-WAMP subprotocols.
    let status = |path: &str, proto: &str| {
        let out = Command::new(common::system_tool("curl"))
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--max-time",
                "5",
            ])
            .args(["-H", "Connection: Upgrade", "-H", "Upgrade: websocket"])
            .args(["-H", "Sec-WebSocket-Version: 13"])
            .args(["-H", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=="])
            .args(["-H", &format!("Sec-WebSocket-Protocol: {proto}")])
            .arg(format!("http://127.0.0.1:{}{path}", t.port))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    assert_eq!(status("/", "wamp.2.json"), "101");
    assert_eq!(status("/other", "wamp.2.json"), "404");
    assert_eq!(status("/ws", "mqtt"), "400");

    // Sessions are counted while joined and gone after; a stopped realm is gone.
    eventually_async("no sessions left", Duration::from_secs(5), || {
        let mut nc = nc.clone();
        async move {
            let realms = nc
                .list_router_realms(apb::ListRouterRealmsRequest {
                    worker_id: "r1".into(),
                })
                .await
                .ok()?
                .into_inner()
                .realms;
            (realms[0].sessions == 0).then_some(())
        }
    })
    .await;
    nc.stop_router_realm(apb::StopRouterRealmRequest {
        worker_id: "r1".into(),
        realm: "realm1".into(),
    })
    .await
    .unwrap();
    let e = nc
        .stop_router_realm(apb::StopRouterRealmRequest {
            worker_id: "r1".into(),
            realm: "realm1".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
}

struct Fabric {
    pki: Pki,
    _data: tempfile::TempDir,
    _master: Proc,
    agents: std::collections::BTreeMap<String, Proc>,
    router: RouterClusterServiceClient<Channel>,
    web: WebClusterServiceClient<Channel>,
}

impl Fabric {
    async fn new(nodes: &[&str]) -> Fabric {
        let pki = Pki::new(nodes);
        let data = tempfile::tempdir().unwrap();
        let master = Proc::master(&pki, data.path());
        let agents = nodes
            .iter()
            .map(|n| (n.to_string(), Proc::agent(&pki, n, master.addr)))
            .collect();
        let ch = channel(&pki, "admin", master.addr).await;
        Fabric {
            router: RouterClusterServiceClient::new(ch.clone()),
            web: WebClusterServiceClient::new(ch),
            pki,
            _data: data,
            _master: master,
            agents,
        }
    }

    async fn agent(&self, node: &str) -> NodeControllerServiceClient<Channel> {
        NodeControllerServiceClient::new(channel(&self.pki, "admin", self.agents[node].addr).await)
    }

    /// The group's placements once every one is on an online node with a port and the
    /// cluster is RUNNING.
    async fn running_placements(&self, rc: &str, group: &str) -> Vec<pb::Placement> {
        eventually_async(
            "the router cluster RUNNING with every port known",
            Duration::from_secs(20),
            || {
                let mut router = self.router.clone();
                let (rc, group) = (rc.to_owned(), group.to_owned());
                async move {
                    let c = router
                        .get_router_cluster(pb::GetRouterClusterRequest {
                            routercluster_oid: rc.clone(),
                        })
                        .await
                        .ok()?
                        .into_inner()
                        .routercluster?;
                    let stat = router
                        .stat_router_cluster_worker_group(pb::StatRouterClusterWorkerGroupRequest {
                            routercluster_oid: rc,
                            workergroup_oid: group,
                        })
                        .await
                        .ok()?
                        .into_inner()
                        .stat?;
                    (c.status == ClusterStatus::Running as i32
                        && stat.running_workers == stat.desired_workers
                        && stat.placements.iter().all(|p| p.tcp_listening_port != 0))
                    .then_some(stat.placements)
                }
            },
        )
        .await
    }
}

fn ws(port: u32) -> String {
    format!("ws://127.0.0.1:{port}/ws")
}

fn assert_fabric(r: &Value, subscribers: usize) {
    let events = r["events"].as_array().unwrap();
    assert_eq!(events.len(), subscribers);
    for e in events {
        assert_eq!(e[0], "hello", "every subscriber got the publish: {r}");
    }
    assert_eq!(r["call"]["served_by"], "callee", "{r}");
    assert_eq!(r["call"]["echo"], "ping", "{r}");
}

#[tokio::test]
async fn a_router_group_routes_across_nodes_and_behind_a_web_cluster() {
    let nodes = ["node1", "node2"];
    let mut f = Fabric::new(&nodes).await;
    let rc = common::create_router_cluster(&mut f.router, "wamp").await;
    for n in nodes {
        eventually_async("the node to register", Duration::from_secs(15), || {
            let mut router = f.router.clone();
            let rc = rc.clone();
            async move {
                common::add_router_node(&mut router, &rc, n, Some(2))
                    .await
                    .ok()
            }
        })
        .await;
    }
    let (start, end) = port_range(8);
    let group = f
        .router
        .add_router_cluster_worker_group(pb::AddRouterClusterWorkerGroupRequest {
            routercluster_oid: rc.clone(),
            workergroup: Some(pb::RouterWorkerGroup {
                name: "grp".into(),
                scale: 2,
                port_range: Some(pb::PortRange {
                    start: start.into(),
                    end: end.into(),
                }),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .workergroup
        .unwrap();
    f.router
        .start_router_cluster(pb::StartRouterClusterRequest {
            routercluster_oid: rc.clone(),
        })
        .await
        .unwrap();
    let placements = f.running_placements(&rc, &group.oid).await;
    let on: BTreeSet<&str> = placements.iter().map(|p| p.node_authid.as_str()).collect();
    assert_eq!(on.len(), 2, "one worker per node: {placements:?}");
    for p in &placements {
        assert!((u32::from(start)..=u32::from(end)).contains(&p.tcp_listening_port));
    }
    let (a, b) = (
        ws(placements[0].tcp_listening_port),
        ws(placements[1].tcp_listening_port),
    );

    // Across the group's router links, both ways.
    let r = wamp_check(&[
        "fabric",
        "--subscriber",
        &a,
        "--subscriber",
        &b,
        "--publisher",
        &b,
        "--callee",
        &a,
        "--caller",
        &b,
    ]);
    assert_fabric(&r, 2);
    let r = wamp_check(&[
        "fabric",
        "--subscriber",
        &b,
        "--publisher",
        &a,
        "--callee",
        &b,
        "--caller",
        &a,
    ]);
    assert_fabric(&r, 1);

    // A web cluster on node1 fronts the group.
    let web_port = common::stable_port();
    let wc = common::create_web_cluster(&mut f.web, "front", web_port).await;
    f.web
        .add_web_cluster_node(pb::AddWebClusterNodeRequest {
            webcluster_oid: wc.clone(),
            node_oid: "node1".into(),
            config: Some(pb::WebClusterNodeConfig {
                parallel: 1,
                standby: false,
            }),
        })
        .await
        .unwrap();
    f.web
        .add_web_cluster_service(pb::AddWebClusterServiceRequest {
            webcluster_oid: wc.clone(),
            webservice: Some(pb::WebService {
                path: "/wamp".into(),
                service: Some(pb::web_service::Service::WebsocketReverseproxy(
                    apb::WebSocketReverseProxyService {
                        workergroup: Some(apb::WorkerGroupTarget {
                            routercluster_oid: rc.clone(),
                            workergroup_oid: group.oid.clone(),
                            path: String::new(),
                        }),
                        ..Default::default()
                    },
                )),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    f.web
        .start_web_cluster(pb::StartWebClusterRequest {
            webcluster_oid: wc.clone(),
        })
        .await
        .unwrap();
    let front = format!("ws://127.0.0.1:{web_port}/wamp");
    let ports = |ps: &[pb::Placement]| -> BTreeSet<u32> {
        ps.iter().map(|p| p.tcp_listening_port).collect()
    };
    f.wait_backends(&ports(&placements)).await;
    let r = wamp_check(&[
        "fabric",
        "--subscriber",
        &a,
        "--subscriber",
        &b,
        "--publisher",
        &front,
        "--callee",
        &b,
        "--caller",
        &front,
    ]);
    assert_fabric(&r, 2);

    // node2's agent dies: its worker moves to node1; clients reconnecting through the web
    // cluster exchange messages again.
    let victim = f.agents.remove("node2").unwrap();
    Command::new("kill")
        .args(["-KILL", &victim.pid().to_string()])
        .status()
        .unwrap();
    let moved = eventually_async(
        "the group re-placed on node1",
        Duration::from_secs(20),
        || {
            let f = &f;
            let (rc, g) = (rc.clone(), group.oid.clone());
            async move {
                let ps = f.running_placements(&rc, &g).await;
                ps.iter().all(|p| p.node_authid == "node1").then_some(ps)
            }
        },
    )
    .await;
    f.wait_backends(&ports(&moved)).await;
    let r = wamp_check(&[
        "fabric",
        "--subscriber",
        &front,
        "--subscriber",
        &front,
        "--publisher",
        &front,
        "--callee",
        &front,
        "--caller",
        &front,
    ]);
    assert_fabric(&r, 2);
}

impl Fabric {
    /// Waits until node1's web worker spreads `/wamp` over exactly the routers on `ports`.
    async fn wait_backends(&self, ports: &BTreeSet<u32>) {
        let nc = self.agent("node1").await;
        eventually_async(
            "the web worker's backends to follow the placements",
            Duration::from_secs(20),
            || {
                let mut nc = nc.clone();
                async move {
                    let workers = nc
                        .list_workers(apb::ListWorkersRequest {
                            r#type: WorkerType::Web as i32,
                            status: WorkerStatus::Started as i32,
                        })
                        .await
                        .ok()?
                        .into_inner()
                        .workers;
                    let w = workers.first()?;
                    let services = nc
                        .list_web_services(apb::ListWebServicesRequest {
                            worker_id: w.id.clone(),
                        })
                        .await
                        .ok()?
                        .into_inner()
                        .services;
                    let backends: BTreeSet<u32> = services
                        .iter()
                        .filter_map(|s| match &s.service {
                            Some(apb::web_service::Service::WebsocketReverseproxy(x)) => {
                                Some(x.backends.iter().map(|b| b.port))
                            }
                            _ => None,
                        })
                        .flatten()
                        .collect();
                    (&backends == ports).then_some(())
                }
            },
        )
        .await;
    }
}

/// The router links of worker `worker` on `nc`, sorted by id.
async fn links(
    nc: &mut NodeControllerServiceClient<Channel>,
    worker: &str,
) -> Vec<apb::RouterLink> {
    nc.list_router_links(apb::ListRouterLinksRequest {
        worker_id: worker.into(),
    })
    .await
    .unwrap()
    .into_inner()
    .links
}

/// How many times `worker`'s log says a router link came up.
async fn link_ups(nc: &mut NodeControllerServiceClient<Channel>, worker: &str) -> usize {
    nc.get_worker_log(apb::GetWorkerLogRequest {
        worker_id: worker.into(),
        limit: 1000,
    })
    .await
    .unwrap()
    .into_inner()
    .lines
    .iter()
    .filter(|l| l.line.contains("router link up"))
    .count()
}

/// A router link whose peer freezes without closing its socket (SIGSTOP: the kernel still
/// acknowledges TCP, nothing answers) is dropped after the link idle limit instead of holding
/// on until TCP gives up, and reconnects when the peer is back; a healthy, idle link is kept
/// alive by its pings and does not flap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_link_peer_is_dropped_and_the_link_recovers() {
    let pki = Pki::new(&["node1"]);
    let agent = Proc::agent(&pki, "node1", "127.0.0.1:9".parse().unwrap());
    let mut nc = NodeControllerServiceClient::new(channel(&pki, "admin", agent.addr).await);
    let (start, end) = port_range(2);
    let mut ports = Vec::new();
    for id in ["ra", "rb"] {
        nc.start_worker(apb::StartWorkerRequest {
            worker_id: id.into(),
            worker_type: WorkerType::Router as i32,
            options: None,
        })
        .await
        .unwrap();
        let t = nc
            .start_router_transport(apb::StartRouterTransportRequest {
                worker_id: id.into(),
                interface: "127.0.0.1".into(),
                port_range_start: start.into(),
                port_range_end: end.into(),
                link_secret: "s3cret".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .transport
            .unwrap();
        ports.push(t.port);
        nc.start_router_realm(apb::StartRouterRealmRequest {
            worker_id: id.into(),
            realm: "realm1".into(),
        })
        .await
        .unwrap();
    }
    nc.start_router_link(apb::StartRouterLinkRequest {
        worker_id: "ra".into(),
        link: Some(apb::RouterLink {
            id: "to-rb".into(),
            realm: "realm1".into(),
            peer_host: "127.0.0.1".into(),
            peer_port: ports[1],
            peer_path: "/ws".into(),
            ..Default::default()
        }),
    })
    .await
    .unwrap();
    let probe = nc.clone();
    let connected = move |want: bool| {
        let nc = probe.clone();
        move || {
            let mut nc = nc.clone();
            async move { (links(&mut nc, "ra").await[0].connected == want).then_some(()) }
        }
    };
    eventually_async(
        "the link to come up",
        Duration::from_secs(20),
        connected(true),
    )
    .await;

    // Healthy and idle for longer than the idle limit (10 s) plus a ping interval: still the
    // same connection, kept alive by pings and pongs.
    let watched = std::time::Instant::now();
    while watched.elapsed() < Duration::from_secs(14) {
        assert!(
            links(&mut nc, "ra").await[0].connected,
            "the idle link dropped"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(link_ups(&mut nc, "ra").await, 1, "the healthy link flapped");

    // Freeze the peer: the link is dropped within the idle limit (plus polling slack).
    let rb_pid = nc
        .get_worker(apb::GetWorkerRequest {
            worker_id: "rb".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .worker
        .unwrap()
        .pid
        .to_string();
    let signal = |sig: &str| {
        let out = Command::new("kill")
            .args([sig, rb_pid.as_str()])
            .output()
            .unwrap();
        assert!(out.status.success(), "kill {sig}: {out:?}");
    };
    signal("-STOP");
    let frozen = std::time::Instant::now();
    eventually_async(
        "the link to a frozen peer to drop",
        Duration::from_secs(20),
        connected(false),
    )
    .await;
    let detected = frozen.elapsed();
    signal("-CONT");
    assert!(
        detected >= Duration::from_secs(7),
        "dropped after {detected:?}: sooner than the idle limit allows, so not by the idle check"
    );

    // The peer is back: the link reconnects by itself.
    eventually_async(
        "the link to come back",
        Duration::from_secs(20),
        connected(true),
    )
    .await;
    assert_eq!(link_ups(&mut nc, "ra").await, 2);
}
