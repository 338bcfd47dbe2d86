//! Gateway benchmark (issue 9): p50/p99 of GetProcessStats through the master's gateway vs
//! directly on the agent, 2,000 sequential calls each, same run, same mTLS.
//!
//! `cargo bench --bench gateway` (`BENCH_CALLS=N`).

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::{Pki, Proc, channel, eventually_async};
use switchyard::pb::agent::v1::{
    GetProcessStatsRequest, native_process_service_client::NativeProcessServiceClient,
};
use switchyard::pb::master::v1 as pb;
use tonic::transport::Channel;

async fn measure(
    client: &mut NativeProcessServiceClient<Channel>,
    calls: usize,
    via_gateway: bool,
) -> Vec<f64> {
    let mut ms = Vec::with_capacity(calls);
    for _ in 0..calls {
        let mut req = tonic::Request::new(GetProcessStatsRequest {
            process: "controller".into(),
        });
        if via_gateway {
            req.metadata_mut()
                .insert("switchyard-node", "node1".parse().unwrap());
        }
        let t0 = Instant::now();
        client.get_process_stats(req).await.unwrap();
        ms.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
    ms
}

fn p(v: &[f64], q: f64) -> f64 {
    v[((v.len() as f64 - 1.0) * q).round() as usize]
}

#[tokio::main]
async fn main() {
    let calls: usize = std::env::var("BENCH_CALLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000);
    let pki = Pki::new(&["node1"]);
    let data = tempfile::tempdir().unwrap();
    let master = Proc::master(&pki, data.path());
    let agent = Proc::agent(&pki, "node1", master.addr);
    let nodes =
        pb::node_service_client::NodeServiceClient::new(channel(&pki, "admin", master.addr).await);
    eventually_async("node1 online", Duration::from_secs(15), || {
        let mut nodes = nodes.clone();
        async move {
            let n = nodes
                .get_node_by_name(pb::GetNodeByNameRequest {
                    authid: "node1".into(),
                })
                .await
                .ok()?
                .into_inner()
                .node?;
            (n.status == pb::NodeStatus::Online as i32).then_some(())
        }
    })
    .await;
    let mut direct = NativeProcessServiceClient::new(channel(&pki, "admin", agent.addr).await);
    let mut gateway = NativeProcessServiceClient::new(channel(&pki, "admin", master.addr).await);
    measure(&mut direct, 100, false).await;
    measure(&mut gateway, 100, true).await;
    let d = measure(&mut direct, calls, false).await;
    let g = measure(&mut gateway, calls, true).await;
    println!("gateway benchmark: GetProcessStats, {calls} sequential calls each, mTLS");
    println!(
        "  direct on the agent     p50 {:.3} ms  p99 {:.3} ms",
        p(&d, 0.5),
        p(&d, 0.99)
    );
    println!(
        "  through the master      p50 {:.3} ms  p99 {:.3} ms  (target p50 <= 0.5 ms)",
        p(&g, 0.5),
        p(&g, 0.99)
    );
}
