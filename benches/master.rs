//! Master API benchmark (issue 4), against the same mTLS setup in one run:
//! - GetWebCluster throughput at 64 calls in flight, against a real master process, as a ratio to
//!   a bare tonic server (grpc.health.v1 Check, same certificates, no role layer, no store)
//!   measured the same way in the same run (target ≥ 0.9);
//! - durable CreateWebCluster/s at 64 in flight (each acknowledged only after an fsync shared by
//!   group commit; target ≥ 5,000/s).
//!
//! The two throughput phases alternate for `BENCH_ROUNDS` rounds (default 5) and the median ratio
//! is reported: the machine's load drifts, and back-to-back phases compare like with like.
//!
//! `cargo bench --bench master` (`BENCH_SECONDS=N` per phase, default 5).

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Pki, Proc, channel};
use switchyard::pb::master::v1::{self as pb, web_cluster_service_client::WebClusterServiceClient};
use switchyard::pki::Identity;
use tonic::transport::Channel;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

const IN_FLIGHT: usize = 64;

/// Runs `call` from 64 tasks for `secs`; returns calls per second.
async fn drive<F, Fut>(secs: u64, call: F) -> f64
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), String>> + Send,
{
    let call = Arc::new(call);
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    let tasks: Vec<_> = (0..IN_FLIGHT as u64)
        .map(|t| {
            let call = call.clone();
            let done = done.clone();
            tokio::spawn(async move {
                let mut i = 0u64;
                while Instant::now() < deadline {
                    if let Err(e) = call(t * 1_000_000_000 + i).await {
                        panic!("call failed: {e}");
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

/// The baseline runs in its own process, like the master: this benchmark binary re-executed with
/// `SWITCHYARD_BENCH_ECHO=<pki dir>`, serving only grpc.health.v1 with the master's certificate.
fn echo_server(pki: &Pki) -> (std::process::Child, std::net::SocketAddr) {
    use std::io::BufRead;
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .env("SWITCHYARD_BENCH_ECHO", &pki.path)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    (child, line.trim().parse().unwrap())
}

async fn serve_echo(pki_dir: std::path::PathBuf) {
    let tls = Identity::load(&pki_dir, "master").unwrap().server_tls();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    println!("{}", listener.local_addr().unwrap());
    let (_, health) = tonic_health::server::health_reporter();
    tonic::transport::Server::builder()
        .tls_config(tls)
        .unwrap()
        .add_service(health)
        .serve_with_incoming(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
        )
        .await
        .unwrap();
}

#[tokio::main]
async fn main() {
    if let Some(dir) = std::env::var_os("SWITCHYARD_BENCH_ECHO") {
        return serve_echo(dir.into()).await;
    }
    let secs: u64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let rounds_wanted: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5)
        .max(1);
    let pki = Pki::new(&[]);
    let data = tempfile::tempdir().unwrap();
    let master = Proc::master(&pki, data.path());
    let admin: Channel = channel(&pki, "admin", master.addr).await;

    // Baseline: a bare tonic server with the same certificates.
    let (mut echo_process, echo) = echo_server(&pki);
    let echo_channel = channel(&pki, "admin", echo).await;
    let check = {
        let health = HealthClient::new(echo_channel);
        move |_| {
            let mut h = health.clone();
            async move {
                h.check(HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
            }
        }
    };

    // GetWebCluster on the master.
    let web = WebClusterServiceClient::new(admin.clone());
    let oid = common::create_web_cluster(&mut web.clone(), "bench", 8080).await;
    let get = {
        let web = web.clone();
        move |_| {
            let mut web = web.clone();
            let oid = oid.clone();
            async move {
                web.get_web_cluster(pb::GetWebClusterRequest {
                    webcluster_oid: oid,
                })
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
            }
        }
    };
    let _ = drive(1, check.clone()).await;
    let _ = drive(1, get.clone()).await;
    // Alternating rounds: the load of this shared machine drifts over seconds, so each ratio
    // compares phases measured back to back, and the median ignores a disturbed round.
    let mut rounds = Vec::new();
    for _ in 0..rounds_wanted {
        let echo_rps = drive(secs, check.clone()).await;
        let get_rps = drive(secs, get.clone()).await;
        rounds.push((echo_rps, get_rps, get_rps / echo_rps));
    }

    // Durable creates.
    let create_rps = drive(secs, move |i| {
        let mut web = web.clone();
        async move {
            let req = pb::CreateWebClusterRequest {
                webcluster: Some(pb::WebCluster {
                    name: format!("bench_{i}"),
                    tcp_port: 8080,
                    ..Default::default()
                }),
            };
            web.create_web_cluster(req)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
    })
    .await;
    drop(master);
    let _ = echo_process.kill();

    println!(
        "master API benchmark ({IN_FLIGHT} in flight, mTLS, {secs} s per phase, {rounds_wanted} alternating rounds)"
    );
    for (i, (echo_rps, get_rps, ratio)) in rounds.iter().enumerate() {
        println!(
            "  round {}: bare tonic server (health Check) {echo_rps:>8.0} calls/s, master GetWebCluster {get_rps:>8.0} calls/s, ratio {ratio:.2}",
            i + 1
        );
    }
    let mut ratios: Vec<f64> = rounds.iter().map(|r| r.2).collect();
    ratios.sort_by(f64::total_cmp);
    println!(
        "  GetWebCluster / bare tonic: median ratio {:.2} (min {:.2}, max {:.2}; target >= 0.90)",
        ratios[ratios.len() / 2],
        ratios[0],
        ratios[ratios.len() - 1]
    );
    println!("  master CreateWebCluster (durable)  {create_rps:>10.0} calls/s  (target >= 5000)");
}
