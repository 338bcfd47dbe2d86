//! Placement throughput (issue 6), SIMULATED: a real master process against 100 agents running
//! in this process, each serving the real agent API over mTLS with the recording launcher
//! (`Launcher::Record`: a started worker runs nothing; its router controls are answered from
//! memory). One router cluster with the 100 nodes as members (hardlimit 100 each) and worker
//! groups of `BENCH_GROUP_SCALE` (default 4) workers, 100 workers per agent: 10,000 placements.
//!
//! Prints: placements/s (StartRouterCluster → every worker started on its agent) and configured
//! workers/s (→ RUNNING: every worker has its transport, realm and links to its group's peers).
//! Target ≥ 10,000 placements/s.
//!
//! `cargo bench --bench placements` (`BENCH_AGENTS=N`, `BENCH_PER_AGENT=N` scale it).

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::{Pki, Proc, channel, eventually_async};
use switchyard::pb::agent::v1::{
    self as apb, WorkerStatus, node_controller_service_client::NodeControllerServiceClient,
};
use switchyard::pb::master::v1::{
    self as pb, ClusterStatus, router_cluster_service_client::RouterClusterServiceClient,
};
use switchyard::pki::Identity;
use switchyard::server::Security;
use switchyard_agent::worker::Launcher;
use switchyard_agent::{AgentOptions, serve};
use tokio_util::sync::CancellationToken;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() {
    let agents = env("BENCH_AGENTS", 100);
    let per_agent = env("BENCH_PER_AGENT", 100);
    let scale = env("BENCH_GROUP_SCALE", 4);
    let total = agents * per_agent;
    assert!(
        total.is_multiple_of(scale),
        "agents × per-agent must be a multiple of the group scale"
    );
    let names: Vec<String> = (1..=agents).map(|i| format!("node{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let pki = Pki::new(&refs);
    let data = tempfile::tempdir().unwrap();
    let master = Proc::master(&pki, data.path());
    let master_started = tokio::time::Instant::now();
    let runtime = tempfile::tempdir().unwrap();

    // The agents, in this process, over real mTLS, recording instead of spawning.
    let shutdown = CancellationToken::new();
    let mut addrs = Vec::new();
    for name in &names {
        let identity = Identity::load(&pki.path, name).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        addrs.push(listener.local_addr().unwrap());
        let options = AgentOptions {
            authid: name.clone(),
            masters: vec![master.addr.to_string()],
            security: Security::Mtls(
                identity
                    .server(switchyard::tls::ClientAuth::Required)
                    .unwrap(),
            ),
            worker_exe: "/nonexistent".into(),
            runtime_dir: runtime.path().join(name),
            stop_timeout: Duration::from_secs(1),
            identity: Some(identity),
            pki_dir: None,
            advertise: None,
            labels: Default::default(),
            launcher: Launcher::Record,
            metrics_listen: None,
            keep_workers: Default::default(),
            adopt_grace: Duration::from_secs(30),
            backoff: Default::default(),
        };
        tokio::spawn(serve(listener, options, shutdown.clone()));
    }
    let admin = channel(&pki, "admin", master.addr).await;
    let mut router = RouterClusterServiceClient::new(admin);
    common::nodes_online(&pki, master.addr, agents, Duration::from_secs(60)).await;

    let rc = common::create_router_cluster(&mut router, "bench").await;
    for name in &names {
        common::add_router_node(&mut router, &rc, name, Some(per_agent as u32))
            .await
            .unwrap();
    }
    let groups = total / scale;
    let adds = (0..groups).map(|g| {
        let mut router = router.clone();
        let rc = rc.clone();
        async move {
            router
                .add_router_cluster_worker_group(pb::AddRouterClusterWorkerGroupRequest {
                    routercluster_oid: rc,
                    workergroup: Some(pb::RouterWorkerGroup {
                        name: format!("g{g:05}"),
                        scale: scale as u32,
                        ..Default::default()
                    }),
                })
                .await
                .unwrap();
        }
    });
    futures::future::join_all(adds).await;

    let mut controllers = Vec::new();
    for a in &addrs {
        controllers.push(NodeControllerServiceClient::new(
            channel(&pki, "admin", *a).await,
        ));
    }
    // A master defers monitors for one heartbeat grace period after it starts (agents
    // reconnect first); start the clock after that, or it measures the grace period.
    tokio::time::sleep_until(master_started + Duration::from_secs(2)).await;
    let started = Instant::now();
    router
        .start_router_cluster(pb::StartRouterClusterRequest {
            routercluster_oid: rc.clone(),
        })
        .await
        .unwrap();
    eventually_async(
        "every worker started on its agent",
        Duration::from_secs(600),
        || {
            let controllers = controllers.clone();
            async move {
                let counts =
                    futures::future::join_all(controllers.into_iter().map(|mut nc| async move {
                        nc.list_workers(apb::ListWorkersRequest {
                            r#type: 0,
                            status: WorkerStatus::Started as i32,
                        })
                        .await
                        .map(|r| r.into_inner().workers.len())
                        .unwrap_or(0)
                    }))
                    .await;
                (counts.iter().sum::<usize>() == total).then_some(())
            }
        },
    )
    .await;
    let t_started = started.elapsed();
    eventually_async("RUNNING", Duration::from_secs(900), || {
        let mut router = router.clone();
        let rc = rc.clone();
        async move {
            let c = router
                .get_router_cluster(pb::GetRouterClusterRequest {
                    routercluster_oid: rc,
                })
                .await
                .ok()?
                .into_inner()
                .routercluster?;
            (c.status == ClusterStatus::Running as i32).then_some(())
        }
    })
    .await;
    let t_running = started.elapsed();
    println!(
        "SIMULATED (recording launcher): {agents} agents × {per_agent} workers, groups of {scale}"
    );
    println!(
        "placed and started: {total} workers in {:.2} s = {:.0} placements/s (target >= 10,000)",
        t_started.as_secs_f64(),
        total as f64 / t_started.as_secs_f64()
    );
    println!(
        "configured (transport, realm, {} links each) → RUNNING: {:.2} s = {:.0} workers/s",
        scale - 1,
        t_running.as_secs_f64(),
        total as f64 / t_running.as_secs_f64()
    );
    if std::env::var("BENCH_DEBUG").is_ok() {
        eprintln!("{}", master.logs());
    }
    shutdown.cancel();
}
