//! Heartbeat load on the leader (docs/operations.md, "Several masters"), SIMULATED agents: three
//! real masters on a one-member etcd, and `BENCH_AGENTS` (default 1,000) agents in this process,
//! each with its own node certificate and its own mTLS heartbeat stream, started spread over the
//! three masters and following the followers' answers to the leader, heartbeating at the
//! masters' 2 Hz. Prints the leader's CPU (user + system, from /proc) over a 10 s window, and
//! checks that no node went offline (target: ≤ 0.25 core, no false offline).
//!
//! `cargo bench --bench heartbeats`

#[path = "../tests/common/mod.rs"]
mod common;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::etcd::Etcd;
use common::{Pki, Proc, channel, eventually_async};
use switchyard::auth::Role;
use switchyard::pb::master::v1::{
    self as pb, control_plane_service_client::ControlPlaneServiceClient,
    node_service_client::NodeServiceClient,
};
use switchyard::pki::{Identity, IssueRequest};
use tonic::transport::Endpoint;

const MASTERS: [&str; 3] = ["m1", "m2", "m3"];

/// One simulated agent: heartbeats to `masters[first]`, moving to the leader it is told of.
async fn agent(
    identity: Identity,
    authid: String,
    masters: Arc<Vec<String>>,
    first: usize,
    up: Arc<AtomicUsize>,
) {
    let mut target = masters[first].clone();
    let mut counted = false;
    loop {
        let Ok(endpoint) = Endpoint::from_shared(format!("https://{target}")) else {
            return;
        };
        let Ok(endpoint) = endpoint.tls_config(identity.client_tls("localhost")) else {
            return;
        };
        let Ok(ch) = endpoint.connect().await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let beat = pb::HeartbeatRequest {
            authid: authid.clone(),
            endpoint: "127.0.0.1:9".into(),
            cluster_ip: "127.0.0.1".into(),
            cpu_count: 1,
            version: "bench".into(),
            ..Default::default()
        };
        let _ = tx.send(beat.clone()).await;
        let Ok(replies) = NodeServiceClient::new(ch)
            .heartbeat(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
        else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let mut replies = replies.into_inner();
        while let Ok(Some(r)) = replies.message().await {
            if !r.leader_address.is_empty() && r.leader_address != target {
                target = r.leader_address;
                break;
            }
            if !counted && !r.leader_address.is_empty() {
                counted = true;
                up.fetch_add(1, Ordering::Relaxed);
            }
            tokio::time::sleep(Duration::from_millis(u64::from(r.heartbeat_interval_ms))).await;
            if tx.send(beat.clone()).await.is_err() {
                break;
            }
        }
    }
}

/// CPU seconds (user + system) of process `pid` so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = stat.rsplit_once(')').unwrap().1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0 // USER_HZ
}

fn metric(addr: std::net::SocketAddr, name: &str) -> f64 {
    let out = Command::new("curl")
        .args(["-sf", "--max-time", "5"])
        .arg(format!("http://{addr}/metrics"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::var("BENCH_AGENTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    let pki = Pki::new(&[]);
    for m in MASTERS {
        pki.issue("master", m);
    }
    let names: Vec<String> = (0..n).map(|i| format!("sim{i}")).collect();
    for name in &names {
        let req = IssueRequest {
            role: Role::Node,
            name: name.clone(),
            sans: vec![],
        };
        switchyard::pki::issue(&pki.path, &req).unwrap();
    }
    let etcd = Etcd::start(1);
    let mut masters = Vec::new();
    let mut metrics = Vec::new();
    for m in MASTERS {
        let listen = format!("127.0.0.1:{}", common::stable_port());
        let metrics_addr: std::net::SocketAddr = format!("127.0.0.1:{}", common::stable_port())
            .parse()
            .unwrap();
        let mut cmd = Command::new(common::master_bin());
        cmd.args(["serve", "--listen", &listen, "--name", m])
            .args(["--metrics-listen", &metrics_addr.to_string()])
            .args(["--store", "etcd", "--etcd-endpoints", &etcd.endpoints()])
            .arg("--pki-dir")
            .arg(&pki.path);
        masters.push(Proc::spawn(cmd));
        metrics.push(metrics_addr);
    }
    let leader = eventually_async("a leader", Duration::from_secs(20), || async {
        let mut cp = ControlPlaneServiceClient::new(channel(&pki, "admin", masters[0].addr).await);
        let r = cp
            .get_control_plane(pb::GetControlPlaneRequest {})
            .await
            .ok()?
            .into_inner();
        MASTERS.iter().position(|m| *m == r.leader)
    })
    .await;
    let addrs = Arc::new(
        masters
            .iter()
            .map(|m| m.addr.to_string())
            .collect::<Vec<_>>(),
    );
    let up = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    for (i, name) in names.iter().enumerate() {
        let identity = Identity::load(&pki.path, name).unwrap();
        tokio::spawn(agent(
            identity,
            name.clone(),
            addrs.clone(),
            i % 3,
            up.clone(),
        ));
    }
    let leader_addr = masters[leader].addr;
    eventually_async(
        "every simulated node online",
        Duration::from_secs(120),
        || async {
            let mut nodes = NodeServiceClient::new(channel(&pki, "admin", leader_addr).await);
            let l = nodes
                .list_nodes(pb::ListNodesRequest {
                    return_names: true,
                    filter_by_status: pb::NodeStatus::Online as i32,
                })
                .await
                .ok()?
                .into_inner();
            (l.items.len() == n).then_some(())
        },
    )
    .await;
    println!(
        "{n} simulated nodes online at the leader after {:?}",
        started.elapsed()
    );
    // Settle, then measure.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let offline_before = metric(metrics[leader], "switchyard_node_offline_total");
    let pids: Vec<u32> = masters.iter().map(Proc::pid).collect();
    let (cpu0, t0): (Vec<f64>, Instant) = (
        pids.iter().map(|p| cpu_seconds(*p)).collect(),
        Instant::now(),
    );
    tokio::time::sleep(Duration::from_secs(10)).await;
    let secs = t0.elapsed().as_secs_f64();
    let cores: Vec<f64> = pids
        .iter()
        .zip(&cpu0)
        .map(|(p, c)| (cpu_seconds(*p) - c) / secs)
        .collect();
    let offline = metric(metrics[leader], "switchyard_node_offline_total") - offline_before;
    let followers: Vec<String> = (0..3)
        .filter(|i| *i != leader)
        .map(|i| format!("{:.3}", cores[i]))
        .collect();
    println!(
        "leader CPU with {n} nodes heartbeating at 2 Hz: {:.3} core (target <= 0.25); followers {} core; nodes gone offline while measured: {offline} (target 0)",
        cores[leader],
        followers.join(" and ")
    );
    assert_eq!(offline, 0.0, "a node went offline falsely");
}
