//! A real network partition: one agent runs in a network namespace made by this test, linked to
//! the host by a veth pair; the link is cut with `ip link set down`. The master detects it within
//! the heartbeat grace period, re-places the router worker, and when the link heals the returned
//! node's leftover worker is stopped: no worker runs twice.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::netns::Net;
use common::{Proc, agent_bin, eventually_async, master_bin, system_tool};
use switchyard::pb::agent::v1::{
    self as apb, WorkerStatus, node_controller_service_client::NodeControllerServiceClient,
};
use switchyard::pb::master::v1::{
    self as pb, router_cluster_service_client::RouterClusterServiceClient,
};

fn ca(dir: &std::path::Path, args: &[&str]) {
    let out = Command::new(master_bin())
        .args(args)
        .arg("--pki-dir")
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn router_workers(pki: &std::path::Path, addr: std::net::SocketAddr) -> Option<usize> {
    let identity = switchyard::pki::Identity::load(pki, "admin").unwrap();
    let ch = tonic::transport::Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(identity.client_tls(&addr.ip().to_string()))
        .unwrap()
        .connect_timeout(Duration::from_millis(500))
        .timeout(Duration::from_secs(1))
        .connect()
        .await
        .ok()?;
    let mut nc = NodeControllerServiceClient::new(ch);
    let l = nc
        .list_workers(apb::ListWorkersRequest {
            r#type: 0,
            status: WorkerStatus::Started as i32,
        })
        .await
        .ok()?
        .into_inner();
    Some(
        l.workers
            .iter()
            .filter(|w| w.id.starts_with("grp_"))
            .count(),
    )
}

#[tokio::test]
async fn a_partitioned_node_is_detected_within_grace_and_healed_without_duplicates() {
    let net = Net::new();
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    ca(&pki, &["ca", "init"]);
    ca(
        &pki,
        &["ca", "issue", "--role", "master", "--san", &net.host_ip],
    );
    ca(&pki, &["ca", "issue", "--role", "admin", "--name", "admin"]);
    ca(&pki, &["ca", "issue", "--role", "node", "--name", "node1"]);
    ca(
        &pki,
        &[
            "ca", "issue", "--role", "node", "--name", "node2", "--san", &net.ns_ip,
        ],
    );

    let port = std::net::TcpListener::bind((net.host_ip.as_str(), 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let master_addr = format!("{}:{port}", net.host_ip);
    let mut m = Command::new(master_bin());
    m.args(["serve", "--listen", &master_addr, "--data-dir"])
        .arg(dir.path().join("data"))
        .arg("--pki-dir")
        .arg(&pki);
    let master = Proc::spawn(m);
    let mut a1 = Command::new(agent_bin());
    a1.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--name",
        "node1",
        "--master",
        &master_addr,
        "--pki-dir",
    ])
    .arg(&pki);
    let node1 = Proc::spawn(a1);
    let mut a2 = Command::new(system_tool("ip"));
    a2.args(["netns", "exec", &net.ns])
        .arg(agent_bin())
        .args([
            "serve",
            "--listen",
            &format!("{}:0", net.ns_ip),
            "--name",
            "node2",
            "--master",
            &master_addr,
            "--pki-dir",
        ])
        .arg(&pki);
    let node2 = Proc::spawn(a2);

    let identity = switchyard::pki::Identity::load(&pki, "admin").unwrap();
    let ch = tonic::transport::Channel::from_shared(format!("https://{master_addr}"))
        .unwrap()
        .tls_config(identity.client_tls(&net.host_ip))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let nodes = pb::node_service_client::NodeServiceClient::new(ch.clone());
    let online = |n: &str| {
        let mut nodes = nodes.clone();
        let n = n.to_owned();
        async move {
            let node = nodes
                .get_node_by_name(pb::GetNodeByNameRequest { authid: n })
                .await
                .ok()?
                .into_inner()
                .node?;
            Some(node.status == pb::NodeStatus::Online as i32)
        }
    };
    for n in ["node1", "node2"] {
        eventually_async("nodes online", Duration::from_secs(15), || async {
            online(n).await.filter(|o| *o)
        })
        .await;
    }
    let mut router = RouterClusterServiceClient::new(ch);
    let rc = common::create_router_cluster(&mut router, "part").await;
    for n in ["node1", "node2"] {
        common::add_router_node(&mut router, &rc, n, None)
            .await
            .unwrap();
    }
    router
        .add_router_cluster_worker_group(pb::AddRouterClusterWorkerGroupRequest {
            routercluster_oid: rc.clone(),
            workergroup: Some(pb::RouterWorkerGroup {
                name: "grp".into(),
                scale: 2,
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    router
        .start_router_cluster(pb::StartRouterClusterRequest {
            routercluster_oid: rc.clone(),
        })
        .await
        .unwrap();
    eventually_async(
        "one worker on each node",
        Duration::from_secs(15),
        || async {
            let a = router_workers(&pki, node1.addr).await?;
            let b = router_workers(&pki, node2.addr).await?;
            (a == 1 && b == 1).then_some(())
        },
    )
    .await;

    // Cut the link: offline within the grace period, the worker re-placed on node1.
    net.link(false);
    let cut = Instant::now();
    eventually_async("node2 offline", Duration::from_secs(3), || async {
        online("node2").await.filter(|o| !*o)
    })
    .await;
    let detected = cut.elapsed();
    eventually_async("re-placement on node1", Duration::from_secs(3), || async {
        (router_workers(&pki, node1.addr).await? == 2).then_some(())
    })
    .await;
    println!(
        "partition detected after {detected:?}, re-placed after {:?}",
        cut.elapsed()
    );
    assert!(
        detected < Duration::from_millis(2500),
        "detected within the grace period (+ one check): {detected:?}"
    );

    // Heal: node2 returns; its leftover worker is stopped; exactly 2 workers run.
    net.link(true);
    eventually_async("node2 online again", Duration::from_secs(10), || async {
        online("node2").await.filter(|o| *o)
    })
    .await;
    eventually_async(
        "no duplicates after healing",
        Duration::from_secs(10),
        || async {
            let a = router_workers(&pki, node1.addr).await?;
            let b = router_workers(&pki, node2.addr).await?;
            (a == 2 && b == 0).then_some(())
        },
    )
    .await;
    drop((node1, node2, master));
}
