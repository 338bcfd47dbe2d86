//! Router worker benchmark (issue 7): pub/sub events/s and RPC calls/s through one Switchyard
//! router worker with Autobahn|Python clients, and through one Crossbar.io router worker (same
//! realm, same clients, same serializer) in the same run; prints both and the ratios.
//!
//! `cargo bench --bench wamp` (needs `scripts/bench-tools.sh`: Crossbar.io and Autobahn in
//! `.bench-venv`; `BENCH_SECONDS=N` per measurement, default 5; `BENCH_SERIALIZER=msgpack`).

#[path = "../tests/common/mod.rs"]
mod common;

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{Pki, Proc, channel, eventually, repo};
use switchyard::pb::agent::v1::{
    self as pb, WorkerType, node_controller_service_client::NodeControllerServiceClient,
};

fn bench_python() -> PathBuf {
    let p = repo().join(".bench-venv/bin/python");
    assert!(
        p.exists(),
        "{} is missing: run scripts/bench-tools.sh first",
        p.display()
    );
    p
}

/// (events/s, calls/s) of the Autobahn load against `url`.
fn load(url: &str, secs: u64, serializer: &str) -> (f64, f64) {
    let out = Command::new(bench_python())
        .arg(repo().join("benches/wamp_bench.py"))
        .arg(url)
        .args(["--seconds", &secs.to_string(), "--serializer", serializer])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "wamp_bench.py against {url} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    (
        v["events_per_s"].as_f64().unwrap(),
        v["calls_per_s"].as_f64().unwrap(),
    )
}

/// A Crossbar.io node with one router worker serving realm1 to anonymous clients on `port`.
struct Crossbar(Child);

impl Crossbar {
    fn start(dir: &std::path::Path, port: u16) -> Crossbar {
        let cbdir = dir.join(".crossbar");
        std::fs::create_dir_all(&cbdir).unwrap();
        let config = serde_json::json!({
            "version": 2,
            "controller": {},
            "workers": [{
                "type": "router",
                "realms": [{
                    "name": "realm1",
                    "roles": [{
                        "name": "anonymous",
                        "permissions": [{
                            "uri": "", "match": "prefix",
                            "allow": {"call": true, "register": true, "publish": true, "subscribe": true},
                            "disclose": {"caller": false, "publisher": false},
                            "cache": true
                        }]
                    }]
                }],
                "transports": [{
                    "type": "websocket",
                    "endpoint": {"type": "tcp", "port": port, "interface": "127.0.0.1"},
                    "serializers": ["json", "msgpack"]
                }]
            }]
        });
        std::fs::write(cbdir.join("config.json"), config.to_string()).unwrap();
        let child = Command::new(repo().join(".bench-venv/bin/crossbar"))
            .args(["start", "--cbdir"])
            .arg(&cbdir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start crossbar");
        eventually("Crossbar.io to listen", Duration::from_secs(60), || {
            TcpStream::connect(("127.0.0.1", port)).ok().map(|_| ())
        });
        Crossbar(child)
    }
}

impl Drop for Crossbar {
    fn drop(&mut self) {
        // SIGTERM lets the controller stop its router worker process too.
        let _ = Command::new("kill").arg(self.0.id().to_string()).status();
        let _ = self.0.wait();
    }
}

#[tokio::main]
async fn main() {
    let secs: u64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let serializer = std::env::var("BENCH_SERIALIZER").unwrap_or_else(|_| "json".into());
    let _ = bench_python();

    let pki = Pki::new(&["node1"]);
    let agent = Proc::agent(&pki, "node1", "127.0.0.1:9".parse().unwrap());
    let mut nc = NodeControllerServiceClient::new(channel(&pki, "admin", agent.addr).await);
    nc.start_worker(pb::StartWorkerRequest {
        worker_id: "router".into(),
        worker_type: WorkerType::Router as i32,
        options: None,
    })
    .await
    .unwrap();
    let port = common::free_port();
    nc.start_router_transport(pb::StartRouterTransportRequest {
        worker_id: "router".into(),
        interface: "127.0.0.1".into(),
        port_range_start: port.into(),
        port_range_end: port.into(),
        link_secret: String::new(),
    })
    .await
    .unwrap();
    nc.start_router_realm(pb::StartRouterRealmRequest {
        worker_id: "router".into(),
        realm: "realm1".into(),
    })
    .await
    .unwrap();

    let tmp = tempfile::tempdir().unwrap();
    let cb_port = common::free_port();
    let crossbar = Crossbar::start(tmp.path(), cb_port);

    println!("Autobahn|Python clients, {serializer}, {secs} s per measurement, 64 in flight");
    let (cb_events, cb_calls) = load(&format!("ws://127.0.0.1:{cb_port}/"), secs, &serializer);
    println!("crossbar.io router: {cb_events:>9.0} events/s  {cb_calls:>9.0} calls/s");
    drop(crossbar);
    let (sy_events, sy_calls) = load(&format!("ws://127.0.0.1:{port}/ws"), secs, &serializer);
    println!("switchyard router:  {sy_events:>9.0} events/s  {sy_calls:>9.0} calls/s");
    println!(
        "ratio (switchyard / crossbar): events {:.2}, calls {:.2} (target >= 1.0)",
        sy_events / cb_events,
        sy_calls / cb_calls
    );
}
