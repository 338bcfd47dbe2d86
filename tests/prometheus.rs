//! Issue 20 acceptance: a real Prometheus (Debian's `prometheus`, which ships `promtool`)
//! scrapes a master and two agents with the shipped `deploy/prometheus/` configuration while
//! they run a web cluster and a router cluster under known traffic. Checked through
//! Prometheus' HTTP API: every family docs/operations.md lists is scraped with sane values
//! (request counts are those sent), every query of the Grafana dashboard returns data, the
//! alert rules pass `promtool check rules` and their unit tests, and the node-offline alert
//! fires live when an agent is killed.

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Pki, Proc, channel, eventually, eventually_async, repo, tool};
use serde_json::Value;
use switchyard::pb::agent::v1 as apb;
use switchyard::pb::master::v1::{
    self as pb, router_cluster_service_client::RouterClusterServiceClient,
    web_cluster_service_client::WebClusterServiceClient, web_service::Service,
};

/// Requests the test sends that a service answers (200, 7 body bytes each).
const OK_REQUESTS: u64 = 20;
/// Requests to a path no service serves (404).
const MISSING_REQUESTS: u64 = 5;
/// The JSON service's body: `"hello"`.
const BODY_LEN: u64 = 7;

/// A program of the Debian package `prometheus` on `PATH`; missing fails the test, naming the
/// package.
fn prometheus_tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    find_tool(std::env::split_paths(&path), name)
}

fn find_tool(mut dirs: impl Iterator<Item = PathBuf>, name: &str) -> PathBuf {
    dirs.find_map(|dir| Some(dir.join(name)).filter(|p| p.exists()))
        .unwrap_or_else(|| {
            panic!(
                "`{name}` is missing: install the Debian package `prometheus` \
                 (apt-get install prometheus; scripts/test.sh does)"
            )
        })
}

/// Polls `f` until it holds or `within` passes; whether it held.
fn holds_within(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn deploy(file: &str) -> PathBuf {
    repo().join("deploy").join(file)
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

/// A Prometheus server of its own: the shipped prometheus.yml and alerts.yml with a 1 s
/// scrape and evaluation interval, the given targets, a temporary TSDB, a free loopback port.
struct Prometheus {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(master: SocketAddr, agents: &[SocketAddr]) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = std::fs::read_to_string(deploy("prometheus/prometheus.yml")).unwrap();
        for key in ["scrape_interval: 15s", "evaluation_interval: 15s"] {
            assert!(config.contains(key), "prometheus.yml sets {key}");
        }
        let config = config
            .replace("scrape_interval: 15s", "scrape_interval: 1s")
            .replace("evaluation_interval: 15s", "evaluation_interval: 1s");
        std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
        std::fs::copy(
            deploy("prometheus/alerts.yml"),
            dir.path().join("alerts.yml"),
        )
        .unwrap();
        std::fs::create_dir(dir.path().join("targets")).unwrap();
        let list = |addrs: &[SocketAddr]| {
            let quoted: Vec<String> = addrs.iter().map(|a| format!("\"{a}\"")).collect();
            format!("- targets: [{}]\n", quoted.join(", "))
        };
        std::fs::write(dir.path().join("targets/master.yml"), list(&[master])).unwrap();
        std::fs::write(dir.path().join("targets/agents.yml"), list(agents)).unwrap();
        let listen = format!("127.0.0.1:{}", common::free_port());
        let child = Command::new(prometheus_tool("prometheus"))
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={listen}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("prometheus.log")).unwrap())
            .spawn()
            .expect("start prometheus");
        let p = Prometheus {
            child,
            url: format!("http://{listen}"),
            _dir: dir,
        };
        eventually("prometheus to be ready", Duration::from_secs(30), || {
            p.get("/-/ready", &[]).map(drop)
        });
        p
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// GET `path` with url-encoded `params`; the body on a 2xx.
    fn get(&self, path: &str, params: &[(&str, &str)]) -> Option<String> {
        let mut cmd = Command::new(common::system_tool("curl"));
        cmd.args(["-sf", "--max-time", "10", "-G"])
            .arg(format!("{}{path}", self.url));
        for (k, v) in params {
            cmd.arg("--data-urlencode").arg(format!("{k}={v}"));
        }
        let out = cmd.output().ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The result vector of the instant query `q` (panics on a query error).
    fn query(&self, q: &str) -> Vec<Value> {
        let body = self
            .get("/api/v1/query", &[("query", q)])
            .unwrap_or_else(|| panic!("query {q} failed (bad PromQL?)"));
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["status"], "success", "{q}: {v}");
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    /// The value of the one-series query `q`, if it has exactly one series.
    fn value(&self, q: &str) -> Option<f64> {
        let r = self.query(q);
        if r.len() != 1 {
            return None;
        }
        r[0]["value"][1].as_str()?.parse().ok()
    }

    /// Waits until `q` has the value `want` (within `within`).
    fn wait_value(&self, q: &str, want: f64, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let got = self.value(q);
            if got == Some(want) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{q}: {got:?}, expected {want}\nseries: {:?}",
                self.query(q)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The active alerts.
    fn alerts(&self) -> Vec<Value> {
        let body = self.get("/api/v1/alerts", &[]).expect("alerts");
        let v: Value = serde_json::from_str(&body).unwrap();
        v["data"]["alerts"].as_array().cloned().unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The metric families docs/operations.md documents, with their types.
fn documented_families() -> Vec<(String, String)> {
    let doc = std::fs::read_to_string(repo().join("docs/operations.md")).unwrap();
    let section = doc
        .split("\n## Metrics\n")
        .nth(1)
        .expect("docs/operations.md has a Metrics section");
    let section = section.split("\n## ").next().unwrap();
    let families: Vec<(String, String)> = section
        .lines()
        .filter_map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            let name = cells
                .get(1)?
                .strip_prefix("`switchyard_")?
                .strip_suffix('`')?;
            Some((format!("switchyard_{name}"), cells.get(2)?.to_string()))
        })
        .collect();
    assert!(families.len() >= 30, "the metrics table: {families:?}");
    families
}

/// Every query of every panel of the Grafana dashboard.
fn dashboard_queries() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(deploy("grafana/switchyard.json")).unwrap();
    let dash: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut out = Vec::new();
    let mut panels: Vec<Value> = dash["panels"].as_array().cloned().unwrap_or_default();
    while let Some(p) = panels.pop() {
        if let Some(inner) = p["panels"].as_array() {
            panels.extend(inner.iter().cloned());
        }
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().expect("every target has an expr");
            out.push((
                p["title"].as_str().unwrap_or("?").to_owned(),
                expr.to_owned(),
            ));
        }
    }
    assert!(out.len() >= 20, "the dashboard's queries: {out:?}");
    out
}

/// One HTTP/1.1 request on a new connection; the status code.
fn http_get(port: u16, path: &str) -> Option<u16> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    s.read_to_string(&mut response).ok()?;
    response.split(' ').nth(1)?.parse().ok()
}

fn check_rules() {
    let promtool = prometheus_tool("promtool");
    let out = run_ok(
        Command::new(&promtool)
            .args(["check", "rules"])
            .arg(deploy("prometheus/alerts.yml")),
    );
    assert!(out.contains("SUCCESS"), "{out}");
    run_ok(
        Command::new(&promtool)
            .args(["check", "config"])
            .arg(deploy("prometheus/prometheus.yml")),
    );
    // The rule unit tests include the node-offline alert firing after its minute.
    let out = run_ok(
        Command::new(&promtool)
            .args(["test", "rules", "alerts_test.yml"])
            .current_dir(deploy("prometheus")),
    );
    assert!(out.contains("SUCCESS"), "{out}");
    let tests = std::fs::read_to_string(deploy("prometheus/alerts_test.yml")).unwrap();
    assert!(tests.contains("alertname: SwitchyardNodeOffline"));
}

async fn web_cluster(
    web: &mut WebClusterServiceClient<tonic::transport::Channel>,
) -> (String, u16) {
    let port = common::free_port();
    let oid = common::create_web_cluster(web, "site", port).await;
    for node in ["node1", "node2"] {
        common::add_web_node(web, &oid, node, 1, false).await;
    }
    let hello = prost_types::Value {
        kind: Some(prost_types::value::Kind::StringValue("hello".into())),
    };
    for (path, service) in [
        (
            "/json",
            Service::Json(apb::JsonService {
                value: Some(hello),
                options: None,
            }),
        ),
        ("/info", Service::Nodeinfo(Default::default())),
    ] {
        web.add_web_cluster_service(pb::AddWebClusterServiceRequest {
            webcluster_oid: oid.clone(),
            webservice: Some(pb::WebService {
                path: path.into(),
                service: Some(service),
                ..Default::default()
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
    (oid, port)
}

/// A router cluster with one group of 2 workers (one per node); its oid, the group's oid and
/// the workers' ports once they run.
async fn router_cluster(
    router: &mut RouterClusterServiceClient<tonic::transport::Channel>,
) -> (String, String, Vec<u32>) {
    let rc = common::create_router_cluster(router, "wamp").await;
    for n in ["node1", "node2"] {
        common::add_router_node(router, &rc, n, Some(1))
            .await
            .unwrap();
    }
    let start = common::stable_port();
    let group = router
        .add_router_cluster_worker_group(pb::AddRouterClusterWorkerGroupRequest {
            routercluster_oid: rc.clone(),
            workergroup: Some(pb::RouterWorkerGroup {
                name: "grp".into(),
                scale: 2,
                port_range: Some(pb::PortRange {
                    start: start.into(),
                    end: u32::from(start) + 20,
                }),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .workergroup
        .unwrap()
        .oid;
    router
        .start_router_cluster(pb::StartRouterClusterRequest {
            routercluster_oid: rc.clone(),
        })
        .await
        .unwrap();
    let ports = eventually_async("the router workers' ports", Duration::from_secs(30), || {
        let mut router = router.clone();
        let (rc, group) = (rc.clone(), group.clone());
        async move {
            let stat = router
                .stat_router_cluster_worker_group(pb::StatRouterClusterWorkerGroupRequest {
                    routercluster_oid: rc,
                    workergroup_oid: group,
                })
                .await
                .ok()?
                .into_inner()
                .stat?;
            let ports: Vec<u32> = stat
                .placements
                .iter()
                .map(|p| p.tcp_listening_port)
                .collect();
            (stat.running_workers == 2 && ports.len() == 2 && ports.iter().all(|p| *p != 0))
                .then_some(ports)
        }
    })
    .await;
    (rc, group, ports)
}

/// Runs `tests/python/wamp_check.py basic` (Autobahn|Python) against one router worker.
fn wamp_traffic(port: u32) {
    run_ok(
        Command::new(tool("python"))
            .arg(repo().join("tests/python/wamp_check.py"))
            .args(["basic", &format!("ws://127.0.0.1:{port}/ws")]),
    );
}

/// A child process killed when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A WAMP client session (Autobahn|Python) that stays joined to `realm1` on `port` until the
/// returned child is dropped.
fn wamp_session(port: u32) -> Killed {
    const HOLD: &str = r#"
import asyncio, sys
from autobahn.asyncio.wamp import ApplicationRunner, ApplicationSession
class S(ApplicationSession):
    async def onJoin(self, details):
        print("joined", flush=True)
ApplicationRunner(sys.argv[1], "realm1").run(S)
"#;
    let mut child = Killed(
        Command::new(tool("python"))
            .args(["-c", HOLD, &format!("ws://127.0.0.1:{port}/ws")])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("run python"),
    );
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.0.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "joined", "the WAMP session did not join");
    child
}

fn check_families(p: &Prometheus) {
    let mut missing = Vec::new();
    for (family, kind) in documented_families() {
        let series = if kind == "histogram" {
            format!("{family}_count")
        } else {
            family.clone()
        };
        let q = format!("count({series})");
        if !holds_within(Duration::from_secs(15), || !p.query(&q).is_empty()) {
            missing.push(series);
        }
    }
    assert!(
        missing.is_empty(),
        "documented families Prometheus has no series of: {missing:?}"
    );
}

fn check_dashboard(p: &Prometheus) {
    let mut empty = BTreeSet::new();
    for (title, expr) in dashboard_queries() {
        let q = expr.replace("$__rate_interval", "1m");
        if !holds_within(Duration::from_secs(15), || !p.query(&q).is_empty()) {
            empty.insert(format!("{title}: {expr}"));
        }
    }
    assert!(
        empty.is_empty(),
        "dashboard queries without data: {empty:#?}"
    );
}

#[tokio::test]
async fn prometheus_scrapes_alerts_and_feeds_the_dashboard() {
    check_rules();

    let pki = Pki::new(&["node1", "node2"]);
    let data = tempfile::tempdir().unwrap();
    let metrics = ["--metrics-listen", "127.0.0.1:0"];
    let master = Proc::master_with(&pki, data.path(), "127.0.0.1:0", &metrics);
    let mut node1 = Proc::agent_with(&pki, "node1", master.addr, &metrics);
    let mut node2 = Proc::agent_with(&pki, "node2", master.addr, &metrics);
    common::nodes_online(&pki, master.addr, 2, Duration::from_secs(20)).await;
    let prom = Prometheus::start(
        master.metrics_addr(),
        &[node1.metrics_addr(), node2.metrics_addr()],
    );

    let admin = channel(&pki, "admin", master.addr).await;
    let mut web = WebClusterServiceClient::new(admin.clone());
    let mut router = RouterClusterServiceClient::new(admin);
    let (web_oid, web_port) = web_cluster(&mut web).await;
    let (rc, group, ports) = router_cluster(&mut router).await;
    let within = Duration::from_secs(30);
    for (kind, name) in [("web", "site"), ("router", "wamp")] {
        prom.wait_value(
            &format!(
                "switchyard_cluster_status{{kind=\"{kind}\",cluster=\"{name}\",status=\"running\"}}"
            ),
            1.0,
            within,
        );
    }
    prom.wait_value(
        &format!("switchyard_cluster_info{{cluster=\"site\",cluster_oid=\"{web_oid}\"}}"),
        1.0,
        within,
    );

    // Known traffic: the web cluster's two workers share the port, so the counts add up
    // across them.
    eventually("the web port to answer", within, || {
        (http_get(web_port, "/info") == Some(200)).then_some(())
    });
    for _ in 0..OK_REQUESTS {
        assert_eq!(http_get(web_port, "/json"), Some(200));
    }
    for _ in 0..MISSING_REQUESTS {
        assert_eq!(http_get(web_port, "/nope"), Some(404));
    }
    wamp_traffic(ports[0]);

    let site = format!("cluster_oid=\"{web_oid}\"");
    prom.wait_value(
        &format!("sum(switchyard_web_responses_total{{{site},path=\"/json\",class=\"2xx\"}})"),
        OK_REQUESTS as f64,
        within,
    );
    prom.wait_value(
        &format!("sum(switchyard_web_responses_total{{{site},path=\"none\",class=\"4xx\"}})"),
        MISSING_REQUESTS as f64,
        within,
    );
    for class in ["1xx", "3xx", "5xx"] {
        prom.wait_value(
            &format!("sum(switchyard_web_responses_total{{{site},class=\"{class}\"}})"),
            0.0,
            within,
        );
    }
    prom.wait_value(
        &format!("sum(switchyard_web_request_duration_seconds_count{{{site},path=\"/json\"}})"),
        OK_REQUESTS as f64,
        within,
    );
    prom.wait_value(
        &format!(
            "sum(switchyard_web_request_duration_seconds_bucket{{{site},path=\"/json\",le=\"+Inf\"}})"
        ),
        OK_REQUESTS as f64,
        within,
    );
    prom.wait_value(
        &format!("sum(switchyard_web_sent_bytes_total{{{site},path=\"/json\"}})"),
        (OK_REQUESTS * BODY_LEN) as f64,
        within,
    );
    prom.wait_value(
        &format!("count(switchyard_web_open_connections{{{site}}})"),
        2.0,
        within,
    );
    let latency = prom
        .value(&format!(
            "sum(switchyard_web_request_duration_seconds_sum{{{site},path=\"/json\"}})"
        ))
        .unwrap();
    assert!(
        latency > 0.0 && latency < OK_REQUESTS as f64,
        "latency sum {latency}"
    );

    // The router group: Autobahn's session joined, published and called on one worker; the
    // two workers keep one link each to the other.
    let grp = format!("cluster_oid=\"{rc}\",workergroup_oid=\"{group}\"");
    for (family, kind, at_least) in [
        ("received", "HELLO", 3.0),
        ("received", "PUBLISH", 2.0),
        ("received", "CALL", 4.0),
        ("received", "REGISTER", 2.0),
        ("sent", "WELCOME", 2.0),
        ("sent", "EVENT", 1.0),
        ("sent", "RESULT", 1.0),
    ] {
        let q = format!(
            "sum(switchyard_router_messages_{family}_total{{{grp},type=\"{kind}\"}}) >= {at_least}"
        );
        eventually(&q, within, || prom.value(&q));
    }
    prom.wait_value(
        &format!("sum(switchyard_router_links{{{grp}}})"),
        2.0,
        within,
    );
    prom.wait_value(
        &format!("sum(switchyard_router_links_up{{{grp}}})"),
        2.0,
        within,
    );
    let session = wamp_session(ports[1]);
    prom.wait_value(
        &format!("sum(switchyard_router_sessions{{{grp},realm=\"realm1\"}})"),
        1.0,
        within,
    );

    // Nodes, agents, certificates.
    for node in ["node1", "node2"] {
        prom.wait_value(
            &format!("switchyard_node_online{{node=\"{node}\"}}"),
            1.0,
            within,
        );
        let age = prom
            .value(&format!(
                "time() - switchyard_node_last_heartbeat_timestamp_seconds{{node=\"{node}\"}}"
            ))
            .unwrap();
        assert!(age < 10.0, "heartbeat of {node} {age} s old");
    }
    prom.wait_value("count(switchyard_agent_info)", 2.0, within);
    prom.wait_value("sum(switchyard_master_is_leader)", 1.0, within);
    for (role, n) in [("master", 1.0), ("node", 2.0)] {
        // Issued for 7 days at most (node certificates) or for the PKI's lifetime.
        let q = format!(
            "count(switchyard_certificate_expiry_timestamp_seconds{{role=\"{role}\",kind=\"server\"}} - time() > 3600)"
        );
        prom.wait_value(&q, n, within);
        let q = format!(
            "count(switchyard_certificate_not_before_timestamp_seconds{{role=\"{role}\",kind=\"ca\"}} < time())"
        );
        prom.wait_value(&q, n, within);
    }
    prom.wait_value("sum(switchyard_workers{status=\"started\"})", 4.0, within);

    // node2's agent dies: the node goes offline, and the rule fires after its minute.
    node2.kill9();
    prom.wait_value("switchyard_node_online{node=\"node2\"}", 0.0, within);
    prom.wait_value(
        "sum(switchyard_node_offline_total{node=\"node2\"})",
        1.0,
        within,
    );
    check_families(&prom);
    check_dashboard(&prom);
    let firing = eventually(
        "SwitchyardNodeOffline firing for node2",
        Duration::from_secs(120),
        || {
            prom.alerts().into_iter().find(|a| {
                a["labels"]["alertname"] == "SwitchyardNodeOffline"
                    && a["labels"]["node"] == "node2"
                    && a["state"] == "firing"
            })
        },
    );
    assert_eq!(firing["labels"]["severity"], "page");
    let others: Vec<Value> = prom
        .alerts()
        .into_iter()
        .filter(|a| a["labels"]["alertname"] == "SwitchyardNodeOffline")
        .filter(|a| a["labels"]["node"] != "node2")
        .collect();
    assert!(others.is_empty(), "only node2 is offline: {others:?}");
    assert!(
        !prom.log().contains("level=error"),
        "prometheus logged errors:\n{}",
        prom.log()
    );
    drop(session);
    node1.kill9();
}

#[test]
fn a_missing_prometheus_names_the_debian_package() {
    let message = std::panic::catch_unwind(|| {
        find_tool([PathBuf::from("/nonexistent")].into_iter(), "promtool")
    })
    .unwrap_err();
    let text = message
        .downcast_ref::<String>()
        .cloned()
        .unwrap_or_default();
    assert!(text.contains("Debian package `prometheus`"), "{text}");
}
