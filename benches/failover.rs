//! Leader failover (docs/operations.md, "Several masters"): three masters on a one-member etcd,
//! one agent running a web cluster. Each round stops the leader and measures the time until a
//! follower has completed its first reconciliation as the new leader (its
//! `switchyard_monitor_iteration_duration_seconds_count` above zero: a follower runs none),
//! then starts the stopped master again as a follower.
//! - kill -9: p50/p99 over `BENCH_RUNS` (default 10) rounds; target p99 ≤ 3 s;
//! - graceful stop (SIGTERM: the leader resigns, revoking its lease): target ≤ 0.5 s.
//!
//! `cargo bench --bench failover`

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use common::etcd::Etcd;
use common::{Pki, Proc, channel, eventually_async};
use switchyard::pb::master::v1::{
    self as pb, control_plane_service_client::ControlPlaneServiceClient,
    web_cluster_service_client::WebClusterServiceClient,
};

const MASTERS: [&str; 3] = ["m1", "m2", "m3"];

struct Master {
    proc: Option<Proc>,
    listen: String,
    metrics: SocketAddr,
}

fn spawn(pki: &Pki, etcd: &Etcd, name: &str, m: &Master) -> Proc {
    let mut cmd = Command::new(common::master_bin());
    cmd.args(["serve", "--listen", &m.listen, "--name", name])
        .args(["--metrics-listen", &m.metrics.to_string()])
        .args(["--store", "etcd", "--etcd-endpoints", &etcd.endpoints()])
        .arg("--pki-dir")
        .arg(&pki.path);
    Proc::spawn(cmd)
}

/// Completed reconciliations of the master whose metrics are at `addr` (`None`: no answer).
fn reconciliations(addr: SocketAddr) -> Option<f64> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
    s.set_read_timeout(Some(Duration::from_millis(500))).ok()?;
    write!(s, "GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    Some(
        body.lines()
            .filter(|l| l.starts_with("switchyard_monitor_iteration_duration_seconds_count"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum(),
    )
}

async fn leader(pki: &Pki, masters: &BTreeMap<String, Master>) -> String {
    eventually_async("a leader", Duration::from_secs(20), || async {
        for m in masters.values() {
            let Some(p) = &m.proc else { continue };
            let mut cp = ControlPlaneServiceClient::new(channel(pki, "admin", p.addr).await);
            if let Ok(r) = cp.get_control_plane(pb::GetControlPlaneRequest {}).await {
                let r = r.into_inner();
                if !r.leader.is_empty() {
                    return Some(r.leader);
                }
            }
        }
        None
    })
    .await
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// Stops the leader with `sig`; returns the seconds until a follower completed a reconciliation.
async fn round(pki: &Pki, etcd: &Etcd, masters: &mut BTreeMap<String, Master>, sig: &str) -> f64 {
    let old = leader(pki, masters).await;
    let pid = masters[&old].proc.as_ref().unwrap().pid();
    let stopped = Instant::now();
    Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap();
    let followers: Vec<SocketAddr> = masters
        .iter()
        .filter(|(n, _)| **n != old)
        .map(|(_, m)| m.metrics)
        .collect();
    let deadline = stopped + Duration::from_secs(20);
    let took = loop {
        if followers
            .iter()
            .any(|a| reconciliations(*a).is_some_and(|n| n > 0.0))
        {
            break stopped.elapsed();
        }
        assert!(Instant::now() < deadline, "no new leader reconciled");
        std::thread::sleep(Duration::from_millis(5));
    };
    let m = masters.get_mut(&old).unwrap();
    m.proc.take().unwrap().kill9();
    m.proc = Some(spawn(pki, etcd, &old, m));
    // The restarted master must be a follower with its own metrics before the next round.
    eventually_async(
        "the restarted master serving",
        Duration::from_secs(10),
        || async { reconciliations(masters[&old].metrics).map(|_| ()) },
    )
    .await;
    took.as_secs_f64()
}

#[tokio::main]
async fn main() {
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let pki = Pki::new(&["node1"]);
    for m in MASTERS {
        pki.issue("master", m);
    }
    let etcd = Etcd::start(1);
    let mut masters: BTreeMap<String, Master> = MASTERS
        .iter()
        .map(|n| {
            let metrics = format!("127.0.0.1:{}", common::stable_port())
                .parse()
                .unwrap();
            let listen = format!("127.0.0.1:{}", common::stable_port());
            (
                n.to_string(),
                Master {
                    proc: None,
                    listen,
                    metrics,
                },
            )
        })
        .collect();
    for (n, m) in masters.iter_mut() {
        m.proc = Some(spawn(&pki, &etcd, n, m));
    }
    let list: Vec<String> = masters.values().map(|m| m.listen.clone()).collect();
    let mut cmd = Command::new(common::agent_bin());
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--name", "node1"])
        .args(["--master", &list.join(","), "--pki-dir"])
        .arg(&pki.path);
    let _agent = Proc::spawn(cmd);
    let first = leader(&pki, &masters).await;
    let first_addr = masters[&first].proc.as_ref().unwrap().addr;
    common::nodes_online(&pki, first_addr, 1, Duration::from_secs(20)).await;
    let mut web = WebClusterServiceClient::new(channel(&pki, "admin", first_addr).await);
    let oid = common::create_web_cluster(&mut web, "bench", common::free_port()).await;
    common::add_web_node(&mut web, &oid, "node1", 1, false).await;
    web.start_web_cluster(pb::StartWebClusterRequest {
        webcluster_oid: oid,
    })
    .await
    .unwrap();

    let mut killed = Vec::new();
    let mut graceful = Vec::new();
    for i in 0..runs {
        killed.push(round(&pki, &etcd, &mut masters, "-KILL").await);
        if i % 2 == 0 {
            graceful.push(round(&pki, &etcd, &mut masters, "-TERM").await);
        }
    }
    println!(
        "kill -9 leader -> first reconcile of the new leader: p50 {:.2} s, p99 {:.2} s over {} kills (target p99 <= 3 s)",
        percentile(&mut killed, 0.5),
        percentile(&mut killed, 0.99),
        killed.len()
    );
    println!(
        "graceful stop of the leader -> first reconcile of the new leader: p50 {:.3} s, max {:.3} s over {} stops (target <= 0.5 s)",
        percentile(&mut graceful, 0.5),
        percentile(&mut graceful, 1.0),
        graceful.len()
    );
}
