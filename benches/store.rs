//! The master's store backends side by side (issue 15), each a real master process with mTLS:
//! - durable CreateWebCluster/s at 64 in flight on sled, on a 1-member etcd and on a 3-member
//!   etcd (all on this machine), as ratios to sled (target on a 3-member etcd: >= 3,000/s);
//! - GetWebCluster/s at 64 in flight, etcd-backed master / sled-backed master (reads come from
//!   the etcd store's watch-fed cache; target >= 0.9).
//!
//! Phases alternate for `BENCH_ROUNDS` rounds (default 3) of `BENCH_SECONDS` (default 5) each;
//! medians are reported. `cargo bench --bench store` (needs `etcd`: `scripts/test.sh` installs it).

#[path = "../tests/common/mod.rs"]
mod common;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::etcd::Etcd;
use common::{Pki, Proc, channel, master_bin};
use switchyard::pb::master::v1::{self as pb, web_cluster_service_client::WebClusterServiceClient};
use tonic::transport::Channel;

const IN_FLIGHT: u64 = 64;

/// Runs `call` from 64 tasks for `secs`; returns calls per second.
async fn drive<F, Fut>(secs: u64, call: F) -> f64
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), tonic::Status>> + Send,
{
    let call = Arc::new(call);
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    let tasks: Vec<_> = (0..IN_FLIGHT)
        .map(|t| {
            let (call, done) = (call.clone(), done.clone());
            tokio::spawn(async move {
                let mut i = 0u64;
                while Instant::now() < deadline {
                    call(t * 1_000_000_000 + i).await.expect("call failed");
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

/// A master on `store` (its `serve` arguments) and an admin client of it.
async fn master(pki: &Pki, store: &[&str]) -> (Proc, WebClusterServiceClient<Channel>) {
    let mut cmd = Command::new(master_bin());
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--pki-dir"])
        .arg(&pki.path)
        .args(store);
    let m = Proc::spawn(cmd);
    let web = WebClusterServiceClient::new(channel(pki, "admin", m.addr).await);
    (m, web)
}

fn creates(
    web: &WebClusterServiceClient<Channel>,
    tag: &'static str,
    round: usize,
) -> impl Fn(u64) -> futures::future::BoxFuture<'static, Result<(), tonic::Status>> + Send + Sync + 'static
{
    let web = web.clone();
    move |i| {
        let mut web = web.clone();
        Box::pin(async move {
            let req = pb::CreateWebClusterRequest {
                webcluster: Some(pb::WebCluster {
                    name: format!("{tag}_{round}_{i}"),
                    tcp_port: 8080,
                    ..Default::default()
                }),
            };
            web.create_web_cluster(req).await.map(|_| ())
        })
    }
}

fn gets(
    web: &WebClusterServiceClient<Channel>,
    oid: String,
) -> impl Fn(u64) -> futures::future::BoxFuture<'static, Result<(), tonic::Status>> + Send + Sync + 'static
{
    let web = web.clone();
    move |_| {
        let mut web = web.clone();
        let webcluster_oid = oid.clone();
        Box::pin(async move {
            web.get_web_cluster(pb::GetWebClusterRequest { webcluster_oid })
                .await
                .map(|_| ())
        })
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main]
async fn main() {
    let env = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(default)
    };
    let (secs, rounds) = (
        env("BENCH_SECONDS", 5),
        env("BENCH_ROUNDS", 3).max(1) as usize,
    );
    let pki = Pki::new(&[]);
    let data = tempfile::tempdir().unwrap();
    let (etcd1, etcd3) = (Etcd::start(1), Etcd::start(3));
    let data_dir = data.path().to_str().unwrap().to_owned();
    let (_sled_master, sled) = master(&pki, &["--data-dir", &data_dir]).await;
    let e1 = etcd1.endpoints();
    let (_etcd1_master, on_etcd1) =
        master(&pki, &["--store", "etcd", "--etcd-endpoints", &e1]).await;
    let e3 = etcd3.endpoints();
    let (_etcd3_master, on_etcd3) =
        master(&pki, &["--store", "etcd", "--etcd-endpoints", &e3]).await;

    let mut create = (Vec::new(), Vec::new(), Vec::new());
    let mut get = (Vec::new(), Vec::new());
    let sled_oid = common::create_web_cluster(&mut sled.clone(), "read", 8080).await;
    let etcd_oid = common::create_web_cluster(&mut on_etcd3.clone(), "read", 8080).await;
    for r in 0..rounds {
        create.0.push(drive(secs, creates(&sled, "sled", r)).await);
        create
            .1
            .push(drive(secs, creates(&on_etcd1, "etcd1", r)).await);
        create
            .2
            .push(drive(secs, creates(&on_etcd3, "etcd3", r)).await);
        get.0.push(drive(secs, gets(&sled, sled_oid.clone())).await);
        get.1
            .push(drive(secs, gets(&on_etcd3, etcd_oid.clone())).await);
    }

    println!(
        "store benchmark ({IN_FLIGHT} in flight, mTLS, {secs} s per phase, {rounds} alternating rounds; medians)"
    );
    for r in 0..rounds {
        println!(
            "  round {}: creates/s sled {:.0}, etcd×1 {:.0}, etcd×3 {:.0}; gets/s sled {:.0}, etcd×3 {:.0}",
            r + 1,
            create.0[r],
            create.1[r],
            create.2[r],
            get.0[r],
            get.1[r]
        );
    }
    let (s, e1, e3) = (median(create.0), median(create.1), median(create.2));
    println!(
        "  durable CreateWebCluster/s: sled {s:.0}; etcd 1 member {e1:.0} ({:.2}x sled); etcd 3 members {e3:.0} ({:.2}x sled; target >= 3000/s)",
        e1 / s,
        e3 / s
    );
    let ratios: Vec<f64> = get.0.iter().zip(&get.1).map(|(s, e)| e / s).collect();
    let (gs, ge) = (median(get.0), median(get.1));
    println!(
        "  GetWebCluster/s: sled {gs:.0}; etcd 3 members {ge:.0}; median ratio etcd/sled {:.2} (target >= 0.90)",
        median(ratios)
    );
}
