//! Issue 9 acceptance: the master as the one endpoint. With grpcurl against the master only,
//! node and process control of every node; the cluster-wide stats stream survives node loss.

mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Pki, Proc, channel, eventually_async, grpcurl, stderr, stdout};
use serde_json::{Value, json};
use switchyard::pb::master::v1::{
    self as pb, event_service_client::EventServiceClient, node_service_client::NodeServiceClient,
    web_cluster_service_client::WebClusterServiceClient,
};

struct Gw {
    pki: Pki,
    master: String,
}

impl Gw {
    /// grpcurl against the master, for `node` (None: no `switchyard-node` header), as `who`.
    fn call(
        &self,
        who: &str,
        node: Option<&str>,
        method: &str,
        body: Value,
        extra: &[&str],
    ) -> std::process::Output {
        let mut args: Vec<String> = Vec::new();
        if let Some(n) = node {
            args.extend(["-H".into(), format!("switchyard-node: {n}")]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        args.extend([
            "-d".into(),
            body.to_string(),
            self.master.clone(),
            format!("switchyard.agent.v1.{method}"),
        ]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        grpcurl(&self.pki.grpcurl_tls(Some(who)), &args)
    }

    fn ok(&self, node: &str, method: &str, body: Value) -> Value {
        let out = self.call("admin", Some(node), method, body, &[]);
        assert!(out.status.success(), "{method} on {node}: {}", stderr(&out));
        serde_json::from_str(&stdout(&out)).unwrap()
    }
}

async fn wait_status(
    pki: &Pki,
    master: std::net::SocketAddr,
    authid: &str,
    status: pb::NodeStatus,
) {
    let nodes = NodeServiceClient::new(channel(pki, "admin", master).await);
    eventually_async("the node status", Duration::from_secs(15), || {
        let mut nodes = nodes.clone();
        let authid = authid.to_owned();
        async move {
            let n = nodes
                .get_node_by_name(pb::GetNodeByNameRequest { authid })
                .await
                .ok()?
                .into_inner()
                .node?;
            (n.status == status as i32).then_some(())
        }
    })
    .await;
}

#[tokio::test]
async fn grpcurl_controls_every_node_through_the_master_only() {
    let pki = Pki::new(&["node1", "node2"]);
    let data = tempfile::tempdir().unwrap();
    let master = Proc::master(&pki, data.path());
    let _a1 = Proc::agent(&pki, "node1", master.addr);
    let a2 = Proc::agent(&pki, "node2", master.addr);
    for n in ["node1", "node2"] {
        wait_status(&pki, master.addr, n, pb::NodeStatus::Online).await;
    }
    let gw = Gw {
        pki,
        master: master.addr.to_string(),
    };

    // StartWorker / StopWorker on node1.
    let w = gw.ok(
        "node1",
        "NodeControllerService/StartWorker",
        json!({"workerId": "gw1", "workerType": "WORKER_TYPE_WEB"}),
    );
    assert_eq!(w["worker"]["status"], "WORKER_STATUS_STARTED");
    let stopped = gw.ok(
        "node1",
        "NodeControllerService/StopWorker",
        json!({"workerId": "gw1"}),
    );
    assert_eq!(stopped["worker"]["status"], "WORKER_STATUS_STOPPED");

    // Process control of a worker on node2 (the node named by oid this time).
    let w = gw.ok(
        "node2",
        "NodeControllerService/StartWorker",
        json!({"workerId": "gw2", "workerType": "WORKER_TYPE_ROUTER"}),
    );
    let pid = w["worker"]["pid"].as_u64().unwrap();
    let node2_oid = {
        let mut nodes = NodeServiceClient::new(channel(&gw.pki, "admin", master.addr).await);
        nodes
            .get_node_by_name(pb::GetNodeByNameRequest {
                authid: "node2".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .node
            .unwrap()
            .oid
    };
    let stats = gw.ok(
        &node2_oid,
        "NativeProcessService/GetProcessStats",
        json!({"process": "gw2"}),
    );
    assert_eq!(stats["stats"]["pid"].as_u64(), Some(pid));
    let aff = gw.ok(
        "node2",
        "NativeProcessService/SetCpuAffinity",
        json!({"process": "gw2", "cpus": [0], "relative": true}),
    );
    assert_eq!(aff["affinity"].as_array().unwrap().len(), 1);
    let gc = gw.ok(
        "node2",
        "NativeProcessService/TriggerGc",
        json!({"process": "gw2"}),
    );
    assert!(
        gc["residentBefore"]
            .as_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            > 0
    );

    // The agent's events name the original caller, not the master.
    // Watch shows new events only: keep setting the affinity (polling, with a deadline) until the
    // forwarded stream, ended by grpcurl's -max-time, has been open.
    let watcher = std::thread::spawn({
        let tls = gw.pki.grpcurl_tls(Some("admin"));
        let master = gw.master.clone();
        move || {
            let tls: Vec<String> = tls;
            grpcurl(
                &tls,
                &[
                    "-H",
                    "switchyard-node: node2",
                    "-max-time",
                    "4",
                    "-d",
                    r#"{"types":["PROCESS_EVENT_TYPE_ON_CPU_AFFINITY_SET"]}"#,
                    &master,
                    "switchyard.agent.v1.NativeProcessService/Watch",
                ],
            )
        }
    });
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline && !watcher.is_finished() {
        gw.ok(
            "node2",
            "NativeProcessService/SetCpuAffinity",
            json!({"process": "gw2", "cpus": [0], "relative": true}),
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let events = stdout(&watcher.join().unwrap());
    assert!(
        events.contains("\"who\": \"spiffe://switchyard/admin/admin\""),
        "{events}"
    );

    // A forwarded stream: several samples, then the client ends it (cancel).
    let out = gw.call(
        "admin",
        Some("node2"),
        "NativeProcessService/StreamProcessStats",
        json!({"interval": 0.2, "processes": ["gw2"]}),
        &["-max-time", "1.5"],
    );
    let samples = stdout(&out).matches("\"seq\"").count();
    assert!(samples >= 3, "{samples} samples: {}", stdout(&out));
    // Errors from the agent come back unchanged, with their details.
    let out = gw.call(
        "admin",
        Some("node2"),
        "NativeProcessService/SetCpuAffinity",
        json!({"process": "gw2", "cpus": [999], "relative": true}),
        &[],
    );
    let err = stderr(&out);
    assert!(
        err.contains("InvalidArgument")
            && err.contains("cpus")
            && err.contains("\"reason\":\"INVALID_ARGUMENT\""),
        "{err}"
    );

    // No node named, an unknown node, an offline node.
    let out = gw.call(
        "admin",
        None,
        "NativeProcessService/Uptime",
        json!({"process": "controller"}),
        &[],
    );
    assert!(
        stderr(&out).contains("InvalidArgument") && stderr(&out).contains("switchyard-node"),
        "{}",
        stderr(&out)
    );
    let out = gw.call(
        "admin",
        Some("ghost"),
        "NativeProcessService/Uptime",
        json!({"process": "controller"}),
        &[],
    );
    assert!(stderr(&out).contains("NotFound"), "{}", stderr(&out));
    // A node certificate cannot use the gateway.
    let out = gw.call(
        "node1",
        Some("node2"),
        "NativeProcessService/Uptime",
        json!({"process": "controller"}),
        &[],
    );
    assert!(
        stderr(&out).contains("PermissionDenied"),
        "{}",
        stderr(&out)
    );
    assert!(
        Command::new("kill")
            .args(["-KILL", &a2.pid().to_string()])
            .status()
            .unwrap()
            .success()
    );
    wait_status(&gw.pki, master.addr, "node2", pb::NodeStatus::Offline).await;
    let out = gw.call(
        "admin",
        Some("node2"),
        "NativeProcessService/Uptime",
        json!({"process": "controller"}),
        &[],
    );
    let err = stderr(&out);
    assert!(
        err.contains("Unavailable") && err.contains("offline"),
        "{err}"
    );
}

#[tokio::test]
async fn cluster_stats_stream_survives_node_loss_and_return() {
    let pki = Pki::new(&["node1", "node2"]);
    let data = tempfile::tempdir().unwrap();
    let master = Proc::master(&pki, data.path());
    let _a1 = Proc::agent(&pki, "node1", master.addr);
    let mut a2 = Proc::agent(&pki, "node2", master.addr);
    for n in ["node1", "node2"] {
        wait_status(&pki, master.addr, n, pb::NodeStatus::Online).await;
    }
    let ch = channel(&pki, "admin", master.addr).await;
    let mut web = WebClusterServiceClient::new(ch.clone());
    let port = common::free_port();
    let oid = common::create_web_cluster(&mut web, "statsite", port).await;
    for n in ["node1", "node2"] {
        web.add_web_cluster_node(pb::AddWebClusterNodeRequest {
            webcluster_oid: oid.clone(),
            node_oid: n.into(),
            config: Some(pb::WebClusterNodeConfig {
                parallel: 2,
                standby: false,
            }),
        })
        .await
        .unwrap();
    }
    web.start_web_cluster(pb::StartWebClusterRequest {
        webcluster_oid: oid.clone(),
    })
    .await
    .unwrap();

    let mut events = EventServiceClient::new(ch);
    let mut stream = events
        .stream_cluster_stats(pb::StreamClusterStatsRequest {
            cluster_oid: oid.clone(),
            interval: 0.2,
        })
        .await
        .unwrap()
        .into_inner();
    let mut seen = BTreeSet::new();
    let prefix = format!("cpw-{oid}-");
    let deadline = Instant::now() + Duration::from_secs(20);
    while seen.len() < 4 {
        let left = deadline.saturating_duration_since(Instant::now());
        let s = tokio::time::timeout(left, stream.message())
            .await
            .expect("samples of all 4 workers")
            .unwrap()
            .unwrap();
        assert_eq!(s.cluster_oid, oid);
        assert!(s.worker_id.starts_with(&prefix), "{}", s.worker_id);
        assert!(s.stats.unwrap().pid > 0);
        seen.insert((s.node_authid, s.worker_id));
    }

    // Node loss does not end the stream; node1's samples keep coming.
    assert!(
        Command::new("kill")
            .args(["-KILL", &a2.pid().to_string()])
            .status()
            .unwrap()
            .success()
    );
    wait_status(&pki, master.addr, "node2", pb::NodeStatus::Offline).await;
    let mut after_loss = 0;
    while after_loss < 4 {
        let s = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("the stream goes on")
            .unwrap()
            .unwrap();
        if s.node_authid == "node1" {
            after_loss += 1;
        }
    }
    // node2 returns (its workers are started again by the monitor): its samples resume.
    a2 = Proc::agent(&pki, "node2", master.addr);
    let resumed = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let s = stream.message().await.unwrap().unwrap();
            if s.node_authid == "node2" {
                return s;
            }
        }
    })
    .await
    .expect("node2's samples resume");
    assert!(resumed.worker_id.starts_with(&prefix));
    drop(a2);

    // Bad input.
    let e = events
        .stream_cluster_stats(pb::StreamClusterStatsRequest {
            cluster_oid: String::new(),
            interval: 0.0,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    let e = events
        .stream_cluster_stats(pb::StreamClusterStatsRequest {
            cluster_oid: "00000000-0000-4000-8000-000000000000".into(),
            interval: 1.0,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
}
