//! Restart benchmarks (issue 18), real master, agent and worker processes, load from wrk
//! (`-t2 -c64`, wrk's default 2 s request timeout), all in one run:
//! 1. a 1-node web cluster (`parallel 2`, a json value at `/`) while its agent restarts: SIGTERM
//!    with `--keep-workers` and kill -9, each followed by a new agent on the same runtime
//!    directory that adopts the workers; in alternating windows with a baseline of the same
//!    length without a restart;
//! 2. a 2-node × 2-worker cluster (two agents on this machine) during a rolling restart
//!    (RestartWebCluster, one node at a time) vs a baseline window;
//! 3. the time to re-adopt 50 workers: from the new agent's start until ListWorkers on it reports
//!    all 50 started with the same pids, and the agent's own `elapsed_ms` of its adoption.
//!
//! Per window: requests, failed requests (wrk's non-2xx responses plus its socket errors:
//! connect, read, write, timeout) and p99. The bench sets `net.ipv4.tcp_migrate_req = 1` for
//! its run, as docs/operations.md ("Rolling restarts") asks of web nodes.
//!
//! `cargo bench --bench restarts` (needs Debian's `wrk`: `scripts/bench-tools.sh`).
//! `BENCH_ROUNDS=N` (default 3) rounds of `BENCH_SECONDS=S` (default 5) windows.

#[path = "../tests/common/mod.rs"]
mod common;
#[allow(dead_code)]
#[path = "../tests/load/mod.rs"]
mod load;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Pki, Proc, channel, eventually_async, process_gone, system_tool};
use load::MigrateReq;
use switchyard::pb::agent::v1::{
    self as apb, WorkerStatus, WorkerType,
    node_controller_service_client::NodeControllerServiceClient,
};
use switchyard::pb::master::v1::{
    self as pb, ClusterStatus, web_cluster_service_client::WebClusterServiceClient,
    web_service::Service,
};
use tonic::transport::Channel;

/// No master: heartbeats go nowhere (the adoption benchmark needs none).
const NO_MASTER: &str = "127.0.0.1:9";

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// One wrk window.
#[derive(Debug, Clone, Copy)]
struct Window {
    requests: u64,
    /// Non-2xx/3xx responses plus socket errors.
    failed: u64,
    p99_ms: f64,
}

fn spawn_wrk(url: &str, secs: u64) -> Child {
    Command::new(system_tool("wrk"))
        .args(["-t2", "-c64", &format!("-d{secs}s"), "--latency", url])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

async fn finish_wrk(child: Child) -> Window {
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    parse_wrk(&String::from_utf8_lossy(&out.stdout))
}

/// Requests, failures and p99 from wrk's `--latency` report.
fn parse_wrk(text: &str) -> Window {
    let requests = text
        .lines()
        .find_map(|l| l.trim().split_once(" requests in "))
        .map(|(n, _)| n.trim().parse().unwrap())
        .unwrap_or_else(|| panic!("wrk output: {text}"));
    let non_2xx: u64 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Non-2xx or 3xx responses:"))
        .map_or(0, |v| v.trim().parse().unwrap());
    // "Socket errors: connect 0, read 1, write 0, timeout 0"
    let socket: u64 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Socket errors:"))
        .map_or(0, |v| {
            v.split(',')
                .filter_map(|kv| kv.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum()
        });
    let p99_ms = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("99%"))
        .map(|v| {
            let v = v.trim();
            let (num, unit) = v.split_at(v.find(|c: char| c.is_alphabetic()).unwrap());
            let n: f64 = num.parse().unwrap();
            match unit {
                "us" => n / 1000.0,
                "s" => n * 1000.0,
                "m" => n * 60_000.0,
                _ => n,
            }
        })
        .unwrap_or_else(|| panic!("wrk output without 99%: {text}"));
    Window {
        requests,
        failed: non_2xx + socket,
        p99_ms,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Sums and medians of one kind of window over the rounds, as one line.
fn summary(label: &str, windows: &[Window]) -> String {
    let requests: u64 = windows.iter().map(|w| w.requests).sum();
    let failed: u64 = windows.iter().map(|w| w.failed).sum();
    let p99: Vec<f64> = windows.iter().map(|w| w.p99_ms).collect();
    let max = p99.iter().cloned().fold(0.0, f64::max);
    format!(
        "{label:<22} {failed} failed of {requests} requests; p99 median {:.2} ms (max {max:.2} ms)",
        median(p99)
    )
}

fn print_window(round: u64, label: &str, w: &Window, note: &str) {
    println!(
        "  round {round} {label:<20} {:>8} requests {:>4} failed  p99 {:>8.2} ms{note}",
        w.requests, w.failed, w.p99_ms
    );
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig} {pid}");
}

/// An agent named `name` on runtime directory `run` that keeps its workers on SIGTERM.
fn keeping_agent(pki: &Pki, name: &str, master: &str, run: &Path) -> Proc {
    let run = run.display().to_string();
    let args = ["--runtime-dir", run.as_str(), "--keep-workers"];
    Proc::agent_with(pki, name, master.parse().unwrap(), &args)
}

/// (id, pid) of every started worker of `agent`, sorted.
async fn started_workers(pki: &Pki, agent: &Proc) -> Vec<(String, u32)> {
    let mut nc = NodeControllerServiceClient::new(channel(pki, "admin", agent.addr).await);
    let mut out: Vec<(String, u32)> = nc
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

/// Stops `agent` (SIGTERM, its workers kept; or kill -9) and starts a new one on the same
/// runtime directory; returns it and the time from the signal until it served.
async fn restart_agent(agent: Proc, kill: bool, start: impl FnOnce() -> Proc) -> (Proc, Duration) {
    let t0 = Instant::now();
    if kill {
        let mut agent = agent;
        agent.kill9();
    } else {
        let pid = agent.pid();
        signal(pid, "TERM");
        // Polled asynchronously: a stopping agent waits for the connections to it to close.
        eventually_async(
            "the agent to exit",
            Duration::from_secs(30),
            || async move { process_gone(pid).then_some(()) },
        )
        .await;
        drop(agent);
    }
    let agent = start();
    (agent, t0.elapsed())
}

async fn cluster(web: &WebClusterServiceClient<Channel>, oid: &str) -> Option<pb::WebCluster> {
    web.clone()
        .get_web_cluster(pb::GetWebClusterRequest {
            webcluster_oid: oid.to_owned(),
        })
        .await
        .ok()?
        .into_inner()
        .webcluster
}

/// (node, worker id, pid) of every started worker of the cluster, sorted.
async fn cluster_workers(
    web: &WebClusterServiceClient<Channel>,
    oid: &str,
) -> Vec<(String, String, u32)> {
    let mut out: Vec<_> = web
        .clone()
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

/// A started web cluster on `nodes` (`parallel 2` each) serving a json value at `/`, once
/// RUNNING with all its workers; returns its oid.
async fn json_cluster(
    web: &mut WebClusterServiceClient<Channel>,
    port: u16,
    nodes: &[&str],
) -> String {
    let oid = common::create_web_cluster(web, "bench", port).await;
    for node in nodes {
        web.add_web_cluster_node(pb::AddWebClusterNodeRequest {
            webcluster_oid: oid.clone(),
            node_oid: (*node).into(),
            config: Some(pb::WebClusterNodeConfig {
                parallel: 2,
                standby: false,
            }),
        })
        .await
        .unwrap();
    }
    let json = apb::JsonService {
        value: Some(prost_types::Value {
            kind: Some(prost_types::value::Kind::StringValue("hello".into())),
        }),
        options: None,
    };
    web.add_web_cluster_service(pb::AddWebClusterServiceRequest {
        webcluster_oid: oid.clone(),
        webservice: Some(pb::WebService {
            path: "/".into(),
            service: Some(Service::Json(json)),
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
    wait_settled(web, &oid, nodes.len() * 2).await;
    oid
}

/// Waits until the cluster is RUNNING, not restarting, with `n` started workers.
async fn wait_settled(web: &WebClusterServiceClient<Channel>, oid: &str, n: usize) {
    eventually_async("the cluster RUNNING", Duration::from_secs(90), || async {
        let c = cluster(web, oid).await?;
        let settled = c.status == ClusterStatus::Running as i32 && !c.restarting;
        (settled && cluster_workers(web, oid).await.len() == n).then_some(())
    })
    .await;
}

/// Part 1: agent restarts (SIGTERM with keep, kill -9) of a 1-node cluster vs baselines.
async fn agent_restarts(rounds: u64, secs: u64) {
    println!(
        "\n1. a 1-node web cluster (parallel 2, json) while its agent restarts, wrk -t2 -c64, {secs} s windows"
    );
    let pki = Pki::new(&["node1"]);
    let data = tempfile::tempdir().unwrap();
    let run = tempfile::tempdir().unwrap();
    let run_dir = run.path().join("run");
    let master = Proc::master(&pki, data.path());
    let master_addr = master.addr.to_string();
    let start = || keeping_agent(&pki, "node1", &master_addr, &run_dir);
    let mut agent = start();
    common::nodes_online(&pki, master.addr, 1, Duration::from_secs(20)).await;
    let mut web = WebClusterServiceClient::new(channel(&pki, "admin", master.addr).await);
    let port = common::free_port();
    json_cluster(&mut web, port, &["node1"]).await;
    let url = format!("http://127.0.0.1:{port}/");
    let workers = started_workers(&pki, &agent).await;
    assert_eq!(workers.len(), 2, "{workers:?}");
    // Into the restart window before the restart (wrk connected and at full rate).
    let lead_in = Duration::from_millis(secs * 1000 / 4);

    let (mut base, mut term, mut kill) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=rounds {
        let w = finish_wrk(spawn_wrk(&url, secs)).await;
        print_window(round, "baseline", &w, "");
        base.push(w);
        for killed in [false, true] {
            let wrk = spawn_wrk(&url, secs);
            tokio::time::sleep(lead_in).await;
            let (next, took) = restart_agent(agent, killed, start).await;
            agent = next;
            let w = finish_wrk(wrk).await;
            let same = started_workers(&pki, &agent).await == workers;
            assert!(
                agent
                    .logs()
                    .contains("adopted the workers of the previous agent"),
                "{}",
                agent.logs()
            );
            let label = if killed {
                "kill -9 + new"
            } else {
                "SIGTERM --keep + new"
            };
            let note = format!(
                "  (signal → new agent serving {:.0} ms; same worker pids: {same})",
                took.as_secs_f64() * 1000.0
            );
            print_window(round, label, &w, &note);
            assert!(same, "the new agent adopted other workers");
            let kind = if killed { &mut kill } else { &mut term };
            kind.push(w);
        }
    }
    println!("{}", summary("baseline", &base));
    println!("{}", summary("SIGTERM --keep-workers", &term));
    println!("{}", summary("kill -9", &kill));
}

/// Part 2: rolling restarts of a 2-node × 2-worker cluster vs baselines.
async fn rolling_restarts(rounds: u64, secs: u64) {
    println!(
        "\n2. a 2-node × 2-worker web cluster (two agents on this machine, json) during a rolling restart, {secs} s windows"
    );
    let pki = Pki::new(&["node1", "node2"]);
    let data = tempfile::tempdir().unwrap();
    let master = Proc::master(&pki, data.path());
    let _a1 = Proc::agent(&pki, "node1", master.addr);
    let _a2 = Proc::agent(&pki, "node2", master.addr);
    common::nodes_online(&pki, master.addr, 2, Duration::from_secs(20)).await;
    let mut web = WebClusterServiceClient::new(channel(&pki, "admin", master.addr).await);
    let port = common::free_port();
    let oid = json_cluster(&mut web, port, &["node1", "node2"]).await;
    let url = format!("http://127.0.0.1:{port}/");
    let lead_in = Duration::from_millis(secs * 1000 / 5);

    let (mut base, mut roll) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        let w = finish_wrk(spawn_wrk(&url, secs)).await;
        print_window(round, "baseline", &w, "");
        base.push(w);

        let before = cluster_workers(&web, &oid).await;
        let wrk = spawn_wrk(&url, secs);
        tokio::time::sleep(lead_in).await;
        let t0 = Instant::now();
        web.restart_web_cluster(pb::RestartWebClusterRequest {
            webcluster_oid: oid.clone(),
            max_parallel: None,
        })
        .await
        .unwrap();
        wait_settled(&web, &oid, 4).await;
        let took = t0.elapsed();
        let w = finish_wrk(wrk).await;
        let after = cluster_workers(&web, &oid).await;
        let all_new = after
            .iter()
            .all(|(_, _, pid)| before.iter().all(|(_, _, old)| old != pid));
        let inside = took + lead_in <= Duration::from_secs(secs);
        let note = format!(
            "  (roll {:.0} ms{}; every pid new: {all_new})",
            took.as_secs_f64() * 1000.0,
            if inside {
                ""
            } else {
                ", longer than the window"
            }
        );
        print_window(round, "rolling restart", &w, &note);
        assert!(all_new, "{before:?} → {after:?}");
        roll.push(w);
    }
    println!("{}", summary("baseline", &base));
    println!("{}", summary("rolling restart", &roll));
}

/// Part 3: a new agent re-adopting 50 workers (SIGTERM with keep, then a new agent).
async fn adoption(rounds: u64) {
    const WORKERS: usize = 50;
    println!("\n3. re-adopting {WORKERS} web workers after SIGTERM --keep-workers (no master)");
    let pki = Pki::new(&["node1"]);
    let run = tempfile::tempdir().unwrap();
    let run_dir = run.path().join("run");
    let start = || keeping_agent(&pki, "node1", NO_MASTER, &run_dir);
    let mut agent = start();
    {
        let mut nc = NodeControllerServiceClient::new(channel(&pki, "admin", agent.addr).await);
        for i in 0..WORKERS {
            nc.start_worker(apb::StartWorkerRequest {
                worker_id: format!("w{i:02}"),
                worker_type: WorkerType::Web as i32,
                options: None,
            })
            .await
            .unwrap();
        }
    }
    let workers = started_workers(&pki, &agent).await;
    assert_eq!(workers.len(), WORKERS);

    let (mut listed_ms, mut logged_ms) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        let pid = agent.pid();
        signal(pid, "TERM");
        eventually_async(
            "the agent to exit",
            Duration::from_secs(30),
            || async move { process_gone(pid).then_some(()) },
        )
        .await;
        drop(agent);
        let t0 = Instant::now();
        agent = start();
        let serving = t0.elapsed();
        eventually_async("50 workers listed", Duration::from_secs(30), || async {
            (started_workers(&pki, &agent).await == workers).then_some(())
        })
        .await;
        let listed = t0.elapsed();
        let (adopted, elapsed_ms) = agent
            .logs()
            .lines()
            .find_map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).ok()?;
                let f = &v["fields"];
                if f["message"] != "adopted the workers of the previous agent" {
                    return None;
                }
                Some((f["adopted"].as_u64()?, f["elapsed_ms"].as_f64()?))
            })
            .unwrap_or_else(|| panic!("no adoption logged:\n{}", agent.logs()));
        println!(
            "  round {round}: serving after {:.0} ms, ListWorkers reports all {WORKERS} with the same pids after {:.0} ms; agent logged adopted={adopted} elapsed_ms={elapsed_ms:.1}",
            serving.as_secs_f64() * 1000.0,
            listed.as_secs_f64() * 1000.0
        );
        assert_eq!(adopted, WORKERS as u64);
        listed_ms.push(listed.as_secs_f64() * 1000.0);
        logged_ms.push(elapsed_ms);
    }
    println!(
        "re-adopting {WORKERS} workers: new agent start → all listed with the same pids, median {:.0} ms; the agent's adoption (elapsed_ms), median {:.1} ms",
        median(listed_ms),
        median(logged_ms)
    );
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

#[tokio::main]
async fn main() {
    let rounds = env_u64("BENCH_ROUNDS", 3).max(1);
    let secs = env_u64("BENCH_SECONDS", 5).max(2);
    let _migrate = MigrateReq::enable();
    let migrate = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_migrate_req")
        .unwrap_or_else(|_| "unknown".into());
    println!(
        "net.ipv4.tcp_migrate_req = {} for this run (set by the bench as docs/operations.md asks of web nodes; restored after)",
        migrate.trim()
    );
    println!("load average at start: {}", load_average());
    // Build (or find) the binaries before anything is timed.
    common::agent_bin();
    agent_restarts(rounds, secs).await;
    rolling_restarts(rounds, secs).await;
    adoption(rounds).await;
    println!("\nload average at end: {}", load_average());
}
