//! Monitor benchmarks (issue 6), real master and agents:
//! - start → all 8 web workers of a 1-node cluster serving (StartWebCluster until every worker
//!   answers with its transport and services, i.e. the cluster is RUNNING and the port serves):
//!   p50/p99 over 20 runs (target p99 ≤ 300 ms), after the master's start-up grace period (a
//!   master defers monitors for 1.5 s after it starts so that agents reconnect first);
//! - kill -9 of an agent → its router workers running elsewhere: p50/p99 over 10 runs
//!   (target ≤ 3 s).
//! - placements/s: `benches/placements.rs` (simulated agents).
//!
//! `cargo bench --bench monitor` (`BENCH_RUNS=N` scales the run counts down).

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::{Pki, Proc, channel, eventually_async};
use switchyard::pb::agent::v1::{
    self as apb, WorkerStatus, node_controller_service_client::NodeControllerServiceClient,
};
use switchyard::pb::master::v1::{
    self as pb, ClusterStatus, router_cluster_service_client::RouterClusterServiceClient,
    web_cluster_service_client::WebClusterServiceClient,
};

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main]
async fn main() {
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let names = ["node1", "node2", "node3"];
    let pki = Pki::new(&names);
    let data = tempfile::tempdir().unwrap();
    let master = Proc::master(&pki, data.path());
    let master_started = tokio::time::Instant::now();
    let mut agents: Vec<Proc> = names
        .iter()
        .map(|n| Proc::agent(&pki, n, master.addr))
        .collect();
    common::nodes_online(&pki, master.addr, 3, Duration::from_secs(20)).await;
    let ch = channel(&pki, "admin", master.addr).await;
    let mut web = WebClusterServiceClient::new(ch.clone());
    let mut router = RouterClusterServiceClient::new(ch);

    // 1. start → 8 web workers serving.
    let port = common::free_port();
    let oid = common::create_web_cluster(&mut web, "bench", port).await;
    web.add_web_cluster_node(pb::AddWebClusterNodeRequest {
        webcluster_oid: oid.clone(),
        node_oid: "node1".into(),
        config: Some(pb::WebClusterNodeConfig {
            parallel: 8,
            standby: false,
        }),
    })
    .await
    .unwrap();
    let svc = pb::WebService {
        path: "/".into(),
        service: Some(pb::web_service::Service::Nodeinfo(Default::default())),
        ..Default::default()
    };
    web.add_web_cluster_service(pb::AddWebClusterServiceRequest {
        webcluster_oid: oid.clone(),
        webservice: Some(svc),
    })
    .await
    .unwrap();
    // A master defers its monitors for one heartbeat grace period (1.5 s) after it starts, so
    // that agents reconnect before anything is judged offline; measure the steady state after it.
    tokio::time::sleep_until(master_started + Duration::from_secs(2)).await;
    let mut start_ms = Vec::new();
    for _ in 0..runs {
        let t0 = Instant::now();
        web.start_web_cluster(pb::StartWebClusterRequest {
            webcluster_oid: oid.clone(),
        })
        .await
        .unwrap();
        let w = web.clone();
        eventually_async("RUNNING", Duration::from_secs(30), || {
            let mut w = w.clone();
            let oid = oid.clone();
            async move {
                let c = w
                    .get_web_cluster(pb::GetWebClusterRequest {
                        webcluster_oid: oid,
                    })
                    .await
                    .ok()?
                    .into_inner()
                    .webcluster?;
                (c.status == ClusterStatus::Running as i32).then_some(())
            }
        })
        .await;
        start_ms.push(t0.elapsed().as_secs_f64() * 1000.0);
        web.stop_web_cluster(pb::StopWebClusterRequest {
            webcluster_oid: oid.clone(),
        })
        .await
        .unwrap();
        let w = web.clone();
        eventually_async("STOPPED", Duration::from_secs(30), || {
            let mut w = w.clone();
            let oid = oid.clone();
            async move {
                let c = w
                    .get_web_cluster(pb::GetWebClusterRequest {
                        webcluster_oid: oid,
                    })
                    .await
                    .ok()?
                    .into_inner()
                    .webcluster?;
                (c.status == ClusterStatus::Stopped as i32).then_some(())
            }
        })
        .await;
    }

    // 2. kill -9 → router workers running elsewhere.
    let rc = common::create_router_cluster(&mut router, "benchrc").await;
    for n in names {
        common::add_router_node(&mut router, &rc, n, None)
            .await
            .unwrap();
    }
    router
        .add_router_cluster_worker_group(pb::AddRouterClusterWorkerGroupRequest {
            routercluster_oid: rc.clone(),
            workergroup: Some(pb::RouterWorkerGroup {
                name: "grp".into(),
                scale: 6,
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
    let mut replace_ms = Vec::new();
    for run in 0..runs.div_ceil(2) {
        let victim = run % 3;
        let count = |skip: usize| {
            let pki = &pki;
            let addrs: Vec<_> = agents
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != skip)
                .map(|(_, a)| a.addr)
                .collect();
            async move {
                let mut total = 0;
                for a in addrs {
                    let mut nc = NodeControllerServiceClient::new(channel(pki, "admin", a).await);
                    let l = nc
                        .list_workers(apb::ListWorkersRequest {
                            r#type: 0,
                            status: WorkerStatus::Started as i32,
                        })
                        .await
                        .ok()?
                        .into_inner();
                    total += l
                        .workers
                        .iter()
                        .filter(|w| w.id.starts_with("grp_"))
                        .count();
                }
                Some(total)
            }
        };
        eventually_async("6 router workers", Duration::from_secs(30), || async {
            (count(usize::MAX).await? == 6).then_some(())
        })
        .await;
        let pid = agents[victim].pid();
        assert!(
            std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status()
                .unwrap()
                .success()
        );
        let t0 = Instant::now();
        eventually_async("re-placement", Duration::from_secs(30), || async {
            (count(victim).await? == 6).then_some(())
        })
        .await;
        replace_ms.push(t0.elapsed().as_secs_f64() * 1000.0);
        agents[victim] = Proc::agent(&pki, names[victim], master.addr);
        common::nodes_online(&pki, master.addr, 3, Duration::from_secs(20)).await;
    }

    println!("monitor benchmark (real master and agents)");
    println!(
        "  start -> 8 web workers serving   p50 {:>7.1} ms  p99 {:>7.1} ms  over {} runs (target p99 <= 300 ms)",
        percentile(&mut start_ms.clone(), 0.5),
        percentile(&mut start_ms, 0.99),
        runs
    );
    println!(
        "  kill -9 -> workers re-placed     p50 {:>7.1} ms  p99 {:>7.1} ms  over {} runs (target <= 3000 ms)",
        percentile(&mut replace_ms.clone(), 0.5),
        percentile(&mut replace_ms, 0.99),
        replace_ms.len()
    );
    println!("  placements/s against 100 simulated agents: see `cargo bench --bench placements`");
}
