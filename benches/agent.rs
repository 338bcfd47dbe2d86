//! Agent footprint benchmark (issue 3): the agent's RSS when idle, then its CPU and RSS while 50
//! workers run and every process is streamed at 1 Hz (StreamProcessStats) for 30 s.
//!
//! `cargo bench --bench agent` (release binaries; `BENCH_SECONDS=N` shortens the run).
//! Prints figures against the targets: idle RSS ≤ 10 MiB, ≤ 1% of one core with 50 streamed
//! workers. Real processes, real mTLS, real worker processes.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::{Pki, Proc, channel};
use switchyard::pb::agent::v1::{
    self as pb, WorkerType, native_process_service_client::NativeProcessServiceClient,
    node_controller_service_client::NodeControllerServiceClient,
};

const WORKERS: usize = 50;

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
    let agent = Proc::agent(&pki, "node1", "127.0.0.1:9".parse().unwrap());
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
    for i in 0..WORKERS {
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
    drop(agent);
    let samples = consumer.await.unwrap_or(0);

    println!(
        "agent footprint benchmark ({WORKERS} workers, StreamProcessStats at 1 Hz, {window:.0} s window)"
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
        "  start {WORKERS} workers                 {:>8.2} s     ({:.0} workers/s)",
        start_elapsed.as_secs_f64(),
        WORKERS as f64 / start_elapsed.as_secs_f64()
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
}
