//! Rolling restarts (issue 18): every web worker of a running cluster is replaced by a new
//! process, node by node, while curl keeps sending requests (on keep-alive connections and on
//! a new connection each): not one fails. Real master, agent and worker processes.

mod common;
mod load;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{Pki, Proc, channel, eventually, eventually_async};
use load::{Load, MigrateReq};
use switchyard::pb::agent::v1::WorkerStatus;
use switchyard::pb::master::v1::{
    self as pb, ClusterStatus, web_cluster_service_client::WebClusterServiceClient,
    web_service::Service,
};
use tonic::transport::Channel;

async fn cluster(web: &WebClusterServiceClient<Channel>, oid: &str) -> Option<pb::WebCluster> {
    let mut web = web.clone();
    web.get_web_cluster(pb::GetWebClusterRequest {
        webcluster_oid: oid.to_owned(),
    })
    .await
    .ok()?
    .into_inner()
    .webcluster
}

/// (node, worker id, pid) of every started worker of the cluster, sorted.
async fn started(web: &WebClusterServiceClient<Channel>, oid: &str) -> Vec<(String, String, u32)> {
    let mut web = web.clone();
    let mut out: Vec<_> = web
        .list_web_cluster_workers(pb::ListWebClusterWorkersRequest {
            webcluster_oid: oid.to_owned(),
            filter_online: false,
        })
        .await
        .unwrap()
        .into_inner()
        .workers
        .into_iter()
        .filter(|w| w.status == WorkerStatus::Started as i32)
        .map(|w| (w.node_authid, w.worker_id, w.pid))
        .collect();
    out.sort();
    out
}

#[tokio::test]
async fn a_rolling_restart_replaces_every_worker_without_failing_a_request() {
    let _migrate = MigrateReq::enable();
    let pki = Pki::new(&["node1", "node2"]);
    let data = tempfile::tempdir().unwrap();
    let master = Proc::master(&pki, data.path());
    let _a1 = Proc::agent(&pki, "node1", master.addr);
    let _a2 = Proc::agent(&pki, "node2", master.addr);
    common::nodes_online(&pki, master.addr, 2, Duration::from_secs(15)).await;
    let mut web = WebClusterServiceClient::new(channel(&pki, "admin", master.addr).await);
    let port = common::free_port();
    let oid = common::create_web_cluster(&mut web, "site", port).await;
    for node in ["node1", "node2"] {
        common::add_web_node(&mut web, &oid, node, 2, false).await;
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
    let before = eventually_async("4 workers, RUNNING", Duration::from_secs(30), || async {
        let c = cluster(&web, &oid).await?;
        let s = started(&web, &oid).await;
        (c.status == ClusterStatus::Running as i32 && s.len() == 4).then_some(s)
    })
    .await;

    let dir = tempfile::tempdir().unwrap();
    let url = format!("http://127.0.0.1:{port}/");
    let keep_alive = Load::start(&url, dir.path(), false);
    let close = Load::start(&url, dir.path(), true);
    eventually("requests served", Duration::from_secs(30), || {
        (keep_alive.answered() >= 300 && close.answered() >= 300).then_some(())
    });

    // One node at a time (the default).
    let restarted = web
        .restart_web_cluster(pb::RestartWebClusterRequest {
            webcluster_oid: oid.clone(),
            max_parallel: None,
        })
        .await
        .unwrap()
        .into_inner()
        .webcluster
        .unwrap();
    assert!(restarted.restarting);
    assert_eq!(restarted.restart_generation, 1);
    let seen_running_mid_roll = Arc::new(AtomicBool::new(false));
    let after = eventually_async("the roll to finish", Duration::from_secs(90), || {
        let seen = seen_running_mid_roll.clone();
        let (web, oid) = (&web, &oid);
        async move {
            let c = cluster(web, oid).await?;
            assert_ne!(
                c.status,
                ClusterStatus::Degraded as i32,
                "{}",
                c.status_reason
            );
            if c.restarting {
                if c.status == ClusterStatus::Running as i32 {
                    seen.store(true, Ordering::SeqCst);
                }
                return None;
            }
            let s = started(web, oid).await;
            (c.status == ClusterStatus::Running as i32 && s.len() == 4).then_some(s)
        }
    })
    .await;
    assert!(
        seen_running_mid_roll.load(Ordering::SeqCst),
        "the status stays RUNNING during the roll"
    );
    for (node, id, pid) in &after {
        assert!(id.contains("-g1-"), "{node}/{id} is of the new generation");
        assert!(
            before.iter().all(|(_, _, old)| old != pid),
            "{node}/{id} kept pid {pid}"
        );
    }
    for (_, _, pid) in &before {
        let gone = eventually_async("old workers gone", Duration::from_secs(10), || async {
            common::process_gone(*pid).then_some(())
        });
        gone.await;
    }

    // The new workers serve too.
    let during = keep_alive.answered() + close.answered();
    eventually("more requests served", Duration::from_secs(60), || {
        (keep_alive.answered() + close.answered() >= (during + 400).max(3000)).then_some(())
    });
    let (ok_k, failed_k) = keep_alive.finish();
    let (ok_c, failed_c) = close.finish();
    println!(
        "keep-alive: {ok_k} answered, {failed_k} failed; close: {ok_c} answered, {failed_c} failed"
    );
    assert_eq!(
        failed_k + failed_c,
        0,
        "requests failed during the rolling restart"
    );
    assert!(
        ok_k + ok_c >= 3000,
        "only {} requests: not a load test",
        ok_k + ok_c
    );

    // A stopped cluster cannot be restarted; bad input names the field.
    let err = web
        .restart_web_cluster(pb::RestartWebClusterRequest {
            webcluster_oid: oid.clone(),
            max_parallel: Some(0),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("max_parallel"), "{}", err.message());
    web.stop_web_cluster(pb::StopWebClusterRequest {
        webcluster_oid: oid.clone(),
    })
    .await
    .unwrap();
    eventually_async("STOPPED", Duration::from_secs(30), || async {
        let c = cluster(&web, &oid).await?;
        (c.status == ClusterStatus::Stopped as i32).then_some(())
    })
    .await;
    let err = web
        .restart_web_cluster(pb::RestartWebClusterRequest {
            webcluster_oid: oid.clone(),
            max_parallel: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
}

/// (node, id, pid) of every started router worker on the nodes of `agents`.
async fn router_workers(pki: &Pki, agents: &[(&str, &Proc)]) -> Vec<(String, String, u32)> {
    use switchyard::pb::agent::v1::{
        self as apb, node_controller_service_client::NodeControllerServiceClient,
    };
    let mut out = Vec::new();
    for (name, agent) in agents {
        let mut nc = NodeControllerServiceClient::new(channel(pki, "admin", agent.addr).await);
        let ws = nc
            .list_workers(apb::ListWorkersRequest {
                r#type: apb::WorkerType::Router as i32,
                status: 0,
            })
            .await
            .unwrap()
            .into_inner()
            .workers;
        out.extend(
            ws.into_iter()
                .filter(|w| w.status == WorkerStatus::Started as i32)
                .map(|w| (name.to_string(), w.id, w.pid)),
        );
    }
    out.sort();
    out
}

#[tokio::test]
async fn a_router_cluster_restart_replaces_every_worker_and_the_group_serves_after() {
    use switchyard::pb::master::v1::router_cluster_service_client::RouterClusterServiceClient;
    let pki = Pki::new(&["node1", "node2"]);
    let data = tempfile::tempdir().unwrap();
    let master = Proc::master(&pki, data.path());
    let a1 = Proc::agent(&pki, "node1", master.addr);
    let a2 = Proc::agent(&pki, "node2", master.addr);
    let agents = [("node1", &a1), ("node2", &a2)];
    common::nodes_online(&pki, master.addr, 2, Duration::from_secs(15)).await;
    let mut router = RouterClusterServiceClient::new(channel(&pki, "admin", master.addr).await);
    let rc = common::create_router_cluster(&mut router, "wamp").await;
    for n in ["node1", "node2"] {
        common::add_router_node(&mut router, &rc, n, Some(2))
            .await
            .unwrap();
    }
    let group = router
        .add_router_cluster_worker_group(pb::AddRouterClusterWorkerGroupRequest {
            routercluster_oid: rc.clone(),
            workergroup: Some(pb::RouterWorkerGroup {
                name: "grp".into(),
                scale: 2,
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .workergroup
        .unwrap()
        .oid;
    router
        .start_router_cluster(pb::StartRouterClusterRequest {
            routercluster_oid: rc.clone(),
        })
        .await
        .unwrap();
    let state = |router: RouterClusterServiceClient<Channel>| {
        let (rc, group) = (rc.clone(), group.clone());
        async move {
            let mut router = router;
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
            Some((c, stat.placements))
        }
    };
    let serving = |c: &pb::RouterCluster, p: &[pb::Placement]| {
        c.status == ClusterStatus::Running as i32
            && !c.restarting
            && p.len() == 2
            && p.iter().all(|p| p.tcp_listening_port != 0)
    };
    eventually_async(
        "the router cluster RUNNING",
        Duration::from_secs(30),
        || async {
            let (c, p) = state(router.clone()).await?;
            serving(&c, &p).then_some(())
        },
    )
    .await;
    let before = router_workers(&pki, &agents).await;
    assert_eq!(before.len(), 2, "{before:?}");

    let accepted = router
        .restart_router_cluster(pb::RestartRouterClusterRequest {
            routercluster_oid: rc.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .routercluster
        .unwrap();
    assert!(accepted.restarting);
    let (placements, after) =
        eventually_async("the roll to finish", Duration::from_secs(60), || async {
            let (c, p) = state(router.clone()).await?;
            assert_ne!(
                c.status,
                ClusterStatus::Degraded as i32,
                "{}",
                c.status_reason
            );
            let w = router_workers(&pki, &agents).await;
            // New before old: never fewer started workers than the group's scale, and never
            // more than one extra (one worker of the group at a time).
            assert!((2..=3).contains(&w.len()), "{w:?}");
            (serving(&c, &p) && w.len() == 2).then_some((p, w))
        })
        .await;
    for (node, id, pid) in &after {
        assert!(id.ends_with(".g1"), "{node}/{id} is of the new generation");
        assert!(
            before.iter().all(|(_, _, old)| old != pid),
            "{node}/{id} kept pid {pid}"
        );
    }

    // The group routes across its new workers, both ways.
    let url = |p: &pb::Placement| format!("ws://127.0.0.1:{}/ws", p.tcp_listening_port);
    let (a, b) = (url(&placements[0]), url(&placements[1]));
    for (from, to) in [(&a, &b), (&b, &a)] {
        let out = Command::new(common::tool("python"))
            .arg(common::repo().join("tests/python/wamp_check.py"))
            .args(["fabric", "--subscriber", to, "--publisher", from])
            .args(["--callee", to, "--caller", from])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(r["events"][0][0], "hello", "{r}");
        assert_eq!(r["call"]["echo"], "ping", "{r}");
    }
}

#[tokio::test]
async fn a_rolling_restart_continues_after_the_master_restarts() {
    let pki = Pki::new(&["node1", "node2"]);
    let data = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", common::stable_port());
    let mut master = Proc::master_on(&pki, data.path(), &listen);
    let _a1 = Proc::agent(&pki, "node1", master.addr);
    let _a2 = Proc::agent(&pki, "node2", master.addr);
    common::nodes_online(&pki, master.addr, 2, Duration::from_secs(15)).await;
    let mut web = WebClusterServiceClient::new(channel(&pki, "admin", master.addr).await);
    let oid = common::create_web_cluster(&mut web, "site", common::free_port()).await;
    for node in ["node1", "node2"] {
        common::add_web_node(&mut web, &oid, node, 2, false).await;
    }
    web.start_web_cluster(pb::StartWebClusterRequest {
        webcluster_oid: oid.clone(),
    })
    .await
    .unwrap();
    let before = eventually_async("4 workers, RUNNING", Duration::from_secs(30), || async {
        let c = cluster(&web, &oid).await?;
        let s = started(&web, &oid).await;
        (c.status == ClusterStatus::Running as i32 && s.len() == 4).then_some(s)
    })
    .await;
    web.restart_web_cluster(pb::RestartWebClusterRequest {
        webcluster_oid: oid.clone(),
        max_parallel: None,
    })
    .await
    .unwrap();
    // The master dies mid-roll (one node at a time: the second node has not rolled yet).
    let c = cluster(&web, &oid).await.unwrap();
    assert!(c.restarting);
    master.kill9();
    let master = Proc::master_on(&pki, data.path(), &listen);
    let web = WebClusterServiceClient::new(channel(&pki, "admin", master.addr).await);
    let after = eventually_async("the roll to finish", Duration::from_secs(60), || async {
        let c = cluster(&web, &oid).await?;
        let s = started(&web, &oid).await;
        (!c.restarting && c.status == ClusterStatus::Running as i32 && s.len() == 4).then_some(s)
    })
    .await;
    for (node, id, pid) in &after {
        assert!(id.contains("-g1-"), "{node}/{id} is of the new generation");
        assert!(before.iter().all(|(_, _, old)| old != pid), "{node}/{id}");
    }
}

#[tokio::test]
async fn a_rolling_restart_starts_the_worker_binary_installed_now() {
    use std::os::unix::fs::MetadataExt;
    let pki = Pki::new(&["node1"]);
    let data = tempfile::tempdir().unwrap();
    let bin = tempfile::tempdir().unwrap();
    // The worker executable, installed as a package manager does: a new file renamed over the
    // path (the running workers keep the old one).
    let exe = bin.path().join("switchyard-worker");
    let install = || {
        let tmp = bin.path().join(".switchyard-worker.new");
        std::fs::copy(common::agent_bin(), &tmp).unwrap();
        std::fs::rename(&tmp, &exe).unwrap();
        std::fs::metadata(&exe).unwrap().ino()
    };
    let first = install();
    let master = Proc::master(&pki, data.path());
    let exe_arg = exe.display().to_string();
    let _agent = Proc::agent_with(&pki, "node1", master.addr, &["--worker-exe", &exe_arg]);
    common::nodes_online(&pki, master.addr, 1, Duration::from_secs(15)).await;
    let mut web = WebClusterServiceClient::new(channel(&pki, "admin", master.addr).await);
    let oid = common::create_web_cluster(&mut web, "site", common::free_port()).await;
    common::add_web_node(&mut web, &oid, "node1", 2, false).await;
    web.start_web_cluster(pb::StartWebClusterRequest {
        webcluster_oid: oid.clone(),
    })
    .await
    .unwrap();
    let running_inodes = |web: WebClusterServiceClient<Channel>| {
        let oid = oid.clone();
        async move {
            let c = cluster(&web, &oid).await?;
            let s = started(&web, &oid).await;
            let done = c.status == ClusterStatus::Running as i32 && !c.restarting && s.len() == 2;
            done.then(|| {
                s.iter()
                    .map(|(_, _, pid)| std::fs::metadata(format!("/proc/{pid}/exe")).unwrap().ino())
                    .collect::<Vec<u64>>()
            })
        }
    };
    let before = eventually_async("2 workers, RUNNING", Duration::from_secs(30), || {
        running_inodes(web.clone())
    })
    .await;
    assert!(before.iter().all(|i| *i == first), "{before:?} vs {first}");

    let second = install();
    assert_ne!(first, second);
    web.restart_web_cluster(pb::RestartWebClusterRequest {
        webcluster_oid: oid.clone(),
        max_parallel: None,
    })
    .await
    .unwrap();
    let after = eventually_async("the roll to finish", Duration::from_secs(60), || async {
        let inodes = running_inodes(web.clone()).await?;
        (inodes.iter().all(|i| *i == second)).then_some(inodes)
    })
    .await;
    assert_eq!(after.len(), 2);
}
