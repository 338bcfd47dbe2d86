//! Agent footprint benchmark (issue 3): the agent's RSS when idle, then its CPU and RSS while 50
//! workers run and every process is streamed at 1 Hz (StreamProcessStats) for 30 s. Then
//! (issue 18) the agent restarts keeping its workers, and the time a new agent takes to adopt
//! the 50 workers is measured: its own figure, and from its spawn until it serves them all.
//!
//! `cargo bench --bench agent` (release binaries; `BENCH_SECONDS=N` shortens the run,
//! `BENCH_WORKERS=N` changes the 50). Prints figures against the targets: idle RSS ≤ 10 MiB,
//! ≤ 1% of one core with 50 streamed workers. Real processes, real mTLS, real worker processes.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::{Pki, Proc, channel, process_gone};
use switchyard::pb::agent::v1::{
    self as pb, WorkerType, native_process_service_client::NativeProcessServiceClient,
    node_controller_service_client::NodeControllerServiceClient,
};

/// Workers started (`BENCH_WORKERS` overrides).
fn workers() -> usize {
    std::env::var("BENCH_WORKERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(50)
}

/// (CPU seconds, RSS bytes) of `pid` from /proc.
fn cpu_and_rss(pid: u32) -> (f64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks = 100.0; // USER_HZ on Linux
    let utime: f64 = fields[11].parse().unwrap();
    let stime: f64 = fields[12].parse().unwrap();
    let rss_pages: u64 = fields[21].parse().unwrap();
    ((utime + stime) / ticks, rss_pages * 4096)
}

/// Anonymous (private, unreclaimable) resident bytes of `pid`; the rest of its RSS is clean
/// file pages (the executable's code and read-only data, libc), shared with every worker.
fn anonymous(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Anonymous:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap()
        * 1024
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

#[tokio::main]
async fn main() {
    let seconds: u64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let pki = Pki::new(&["node1"]);
    let run = tempfile::tempdir().unwrap();
    let run_dir = run.path().join("run").display().to_string();
    let args = ["--runtime-dir", run_dir.as_str(), "--keep-workers"];
    let no_master = "127.0.0.1:9".parse().unwrap();
    let agent = Proc::agent_with(&pki, "node1", no_master, &args);
    let pid = agent.pid();
    let ch = channel(&pki, "admin", agent.addr).await;
    let mut nc = NodeControllerServiceClient::new(ch.clone());
    let mut np = NativeProcessServiceClient::new(ch);

    // Idle: one call so that TLS and the service stack are warm, then settle.
    nc.get_status(pb::GetStatusRequest {}).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, idle_rss) = cpu_and_rss(pid);
    let idle_anonymous = anonymous(pid);

    let began = Instant::now();
    let count = workers();
    for i in 0..count {
        nc.start_worker(pb::StartWorkerRequest {
            worker_id: format!("bench-{i}"),
            worker_type: WorkerType::Web as i32,
            options: None,
        })
        .await
        .unwrap();
    }
    let start_elapsed = began.elapsed();

    let mut stream = np
        .stream_process_stats(pb::StreamProcessStatsRequest {
            interval: 1.0,
            processes: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    let consumer = tokio::spawn(async move {
        let mut n = 0u64;
        while let Ok(Some(_)) = stream.message().await {
            n += 1;
        }
        n
    });
    // Let the first samples through, then measure a steady window.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (cpu0, _) = cpu_and_rss(pid);
    let t0 = Instant::now();
    let mut max_rss = 0;
    while t0.elapsed() < Duration::from_secs(seconds) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        max_rss = max_rss.max(cpu_and_rss(pid).1);
    }
    let (cpu1, rss_end) = cpu_and_rss(pid);
    let window = t0.elapsed().as_secs_f64();
    let cpu_percent = (cpu1 - cpu0) / window * 100.0;
    let pids: Vec<u32> = nc
        .list_workers(pb::ListWorkersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .workers
        .iter()
        .map(|w| w.pid)
        .collect();
    drop((nc, np));

    // Restart keeping the workers; a new agent adopts them before it serves.
    let stopped = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(stopped.success());
    let samples = consumer.await.unwrap_or(0);
    while !process_gone(pid) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(agent);
    let spawned = Instant::now();
    let next = Proc::agent_with(&pki, "node1", no_master, &args);
    let serving = spawned.elapsed();
    let mut nc = NodeControllerServiceClient::new(channel(&pki, "admin", next.addr).await);
    let adopted: Vec<u32> = nc
        .list_workers(pb::ListWorkersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .workers
        .iter()
        .filter(|w| w.adopted && w.status == pb::WorkerStatus::Started as i32)
        .map(|w| w.pid)
        .collect();
    let listed = spawned.elapsed();
    assert_eq!(adopted, pids, "the new agent serves the same workers");
    let own_ms = next
        .logs()
        .lines()
        .filter(|l| l.contains("adopted the workers of the previous agent"))
        .find_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            v["fields"]["elapsed_ms"].as_f64()
        })
        .unwrap_or(f64::NAN);
    drop(nc);
    // A stop for good: the workers go with the agent.
    let stop = std::process::Command::new(common::agent_bin())
        .args(["stop", "--runtime-dir", &run_dir])
        .output()
        .unwrap();
    assert!(stop.status.success(), "{stop:?}");

    println!(
        "agent footprint benchmark ({count} workers, StreamProcessStats at 1 Hz, {window:.0} s window)"
    );
    println!(
        "  idle RSS                         {:>8.2} MiB   (target <= 10 MiB)",
        mib(idle_rss)
    );
    println!(
        "    of which anonymous             {:>8.2} MiB   (the rest: code and read-only pages of the executable and libc)",
        mib(idle_anonymous)
    );
    println!(
        "  start {count} workers                 {:>8.2} s     ({:.0} workers/s)",
        start_elapsed.as_secs_f64(),
        count as f64 / start_elapsed.as_secs_f64()
    );
    println!(
        "  agent CPU while streaming        {:>8.3} %     of one core (target <= 1%)",
        cpu_percent
    );
    println!(
        "  agent RSS while streaming (max)  {:>8.2} MiB   (end {:.2} MiB)",
        mib(max_rss),
        mib(rss_end)
    );
    println!("  samples received                 {samples:>8}");
    println!(
        "  re-adopt {count} workers (agent's own)  {own_ms:>8.1} ms    (records read, pid and start time checked, control sockets answered)"
    );
    println!(
        "  new agent serving after spawn    {:>8.1} ms    (all {count} listed adopted after {:.1} ms)",
        serving.as_secs_f64() * 1000.0,
        listed.as_secs_f64() * 1000.0
    );
}
