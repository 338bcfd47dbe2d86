//! Issue 8 acceptance, operations: configuration layers (file < environment < flag) and their
//! errors (exit 64 naming the key), the systemd units (`systemd-analyze verify`), and the
//! Prometheus endpoints of master and agent, scraped and parsed with the official Python
//! client's parser.

mod common;

use std::collections::BTreeMap;
use std::process::{Command, Output};
use std::time::Duration;

use common::{Pki, Proc, agent_bin, channel, eventually, master_bin, repo, system_tool, tool};
use serde_json::Value;
use switchyard::pb::master::v1::{self as pb, web_cluster_service_client::WebClusterServiceClient};

fn print_config(bin: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(bin);
    c.args(args).arg("--print-config");
    for (k, v) in env {
        c.env(k, v);
    }
    // Nothing from the test's own environment leaks in.
    for k in [
        "SWITCHYARD_HEARTBEAT_GRACE_MS",
        "SWITCHYARD_LOG_FORMAT",
        "SWITCHYARD_MASTER",
    ] {
        if !env.iter().any(|(e, _)| e == &k) {
            c.env_remove(k);
        }
    }
    c.output().unwrap()
}

fn toml_of(out: &Output) -> toml::Table {
    assert!(
        out.status.success(),
        "--print-config failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    toml::from_str(&String::from_utf8_lossy(&out.stdout)).expect("--print-config prints TOML")
}

#[test]
fn configuration_is_file_then_environment_then_flags() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("master.toml");
    std::fs::write(
        &file,
        "data_dir = \"/var/lib/x\"\nheartbeat_grace_ms = 3000\nlisten = \"127.0.0.1:9800\"\n",
    )
    .unwrap();
    let f = file.to_str().unwrap();
    let serve = ["serve", "--config", f];

    let c = toml_of(&print_config(&master_bin(), &serve, &[]));
    assert_eq!(c["heartbeat_grace_ms"].as_integer(), Some(3000), "file");
    assert_eq!(
        c["heartbeat_interval_ms"].as_integer(),
        Some(500),
        "default"
    );
    assert_eq!(c["data_dir"].as_str(), Some("/var/lib/x"));
    let env = [("SWITCHYARD_HEARTBEAT_GRACE_MS", "4000")];
    let c = toml_of(&print_config(&master_bin(), &serve, &env));
    assert_eq!(
        c["heartbeat_grace_ms"].as_integer(),
        Some(4000),
        "env over file"
    );
    assert_eq!(c["listen"].as_str(), Some("127.0.0.1:9800"), "file kept");
    let c = toml_of(&print_config(
        &master_bin(),
        &[&serve[..], &["--heartbeat-grace-ms", "5000"]].concat(),
        &env,
    ));
    assert_eq!(
        c["heartbeat_grace_ms"].as_integer(),
        Some(5000),
        "flag over env"
    );

    // The agent: same layering, labels as a table.
    let afile = dir.path().join("agent.toml");
    std::fs::write(
        &afile,
        "name = \"n1\"\nmaster = \"file:1\"\nstop_timeout = 2.5\n[labels]\nzone = \"a\"\n",
    )
    .unwrap();
    let a = ["serve", "--config", afile.to_str().unwrap()];
    let c = toml_of(&print_config(&agent_bin(), &a, &[]));
    assert_eq!(c["master"].as_str(), Some("file:1"));
    assert_eq!(c["labels"]["zone"].as_str(), Some("a"));
    assert_eq!(c["stop_timeout"].as_float(), Some(2.5));
    let c = toml_of(&print_config(
        &agent_bin(),
        &a,
        &[("SWITCHYARD_MASTER", "env:2")],
    ));
    assert_eq!(c["master"].as_str(), Some("env:2"));
    let c = toml_of(&print_config(
        &agent_bin(),
        &[&a[..], &["--master", "flag:3"]].concat(),
        &[("SWITCHYARD_MASTER", "env:2")],
    ));
    assert_eq!(c["master"].as_str(), Some("flag:3"));

    // The shipped examples are valid.
    for (bin, example) in [(master_bin(), "master.toml"), (agent_bin(), "agent.toml")] {
        let path = repo().join("deploy").join(example);
        toml_of(&print_config(
            &bin,
            &["serve", "--config", path.to_str().unwrap()],
            &[],
        ));
    }
}

#[test]
fn invalid_configuration_names_the_key_and_exits_64() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&std::path::Path, &str, &str); 5] = [
        (&master_bin(), "lisen = \"127.0.0.1:1\"\n", "lisen"),
        (
            &master_bin(),
            "heartbeat_grace_ms = \"soon\"\n",
            "heartbeat_grace_ms",
        ),
        (
            &master_bin(),
            "heartbeat_interval_ms = 5\n",
            "heartbeat_interval_ms",
        ),
        (
            &agent_bin(),
            "name = \"n1\"\nstop_timeout = \"long\"\n",
            "stop_timeout",
        ),
        (&agent_bin(), "nmae = \"n1\"\n", "nmae"),
    ];
    for (i, (bin, text, key)) in cases.iter().enumerate() {
        let file = dir.path().join(format!("c{i}.toml"));
        std::fs::write(&file, text).unwrap();
        let out = Command::new(bin)
            .args(["serve", "--config", file.to_str().unwrap()])
            .env_remove("SWITCHYARD_LOG_FORMAT")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{text}: {err}");
        assert!(err.contains(key), "the error names `{key}`: {err}");
    }
    // A missing required option names it too.
    let out = Command::new(master_bin())
        .args(["serve"])
        .env_remove("SWITCHYARD_DATA_DIR")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("data_dir is required"));
}

#[test]
fn the_systemd_units_verify() {
    let dir = tempfile::tempdir().unwrap();
    let bins = master_bin().parent().unwrap().to_owned();
    let mut units = Vec::new();
    for unit in ["switchyard-master.service", "switchyard-agent.service"] {
        let text = std::fs::read_to_string(repo().join("deploy/systemd").join(unit)).unwrap();
        assert!(text.contains("NoNewPrivileges=yes") && text.contains("ProtectSystem=strict"));
        // The units name the installed binaries; verify against the built ones.
        let local = text.replace("/usr/local/bin/", &format!("{}/", bins.display()));
        let path = dir.path().join(unit);
        std::fs::write(&path, local).unwrap();
        units.push(path);
    }
    let out = Command::new(system_tool("systemd-analyze"))
        .args(["verify", "--man=no"])
        .args(&units)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "systemd-analyze verify: {err}");
    assert!(err.trim().is_empty(), "systemd-analyze warnings: {err}");
}

/// Scrapes `addr` and parses the exposition with prometheus_client's parser.
fn scrape(addr: std::net::SocketAddr) -> BTreeMap<String, Value> {
    let out = Command::new(system_tool("curl"))
        .args(["-sf", "--max-time", "5"])
        .arg(format!("http://{addr}/metrics"))
        .output()
        .unwrap();
    assert!(out.status.success(), "scrape of {addr} failed");
    let mut parser = Command::new(tool("python"))
        .arg(repo().join("tests/python/parse_metrics.py"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    parser.stdin.take().unwrap().write_all(&out.stdout).unwrap();
    let parsed = parser.wait_with_output().unwrap();
    assert!(
        parsed.status.success(),
        "the exposition does not parse: {}\n{}",
        String::from_utf8_lossy(&parsed.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    serde_json::from_slice(&parsed.stdout).unwrap()
}

/// The value of the sample `name` whose labels include `labels`.
fn sample(
    families: &BTreeMap<String, Value>,
    family: &str,
    name: &str,
    labels: &[(&str, &str)],
) -> Option<f64> {
    families.get(family)?["samples"]
        .as_array()?
        .iter()
        .find(|s| s[0] == name && labels.iter().all(|(k, v)| s[1][*k].as_str() == Some(*v)))
        .and_then(|s| s[2].as_f64())
}

#[tokio::test]
async fn metrics_are_scraped_and_parse() {
    let pki = Pki::new(&["node1"]);
    let data = tempfile::tempdir().unwrap();
    let master = Proc::master_with(
        &pki,
        data.path(),
        "127.0.0.1:0",
        &["--metrics-listen", "127.0.0.1:0"],
    );
    let agent = Proc::agent_with(
        &pki,
        "node1",
        master.addr,
        &["--metrics-listen", "127.0.0.1:0"],
    );
    let mut web = WebClusterServiceClient::new(channel(&pki, "admin", master.addr).await);
    let port = common::free_port();
    let oid = common::create_web_cluster(&mut web, "site", port).await;
    let _ = web
        .get_web_cluster_by_name(pb::GetWebClusterByNameRequest {
            webcluster_name: "nope".into(),
        })
        .await
        .unwrap_err();
    common::eventually_async("node1 to register", Duration::from_secs(15), || {
        let mut web = web.clone();
        let oid = oid.clone();
        async move {
            web.add_web_cluster_node(pb::AddWebClusterNodeRequest {
                webcluster_oid: oid,
                node_oid: "node1".into(),
                config: Some(pb::WebClusterNodeConfig {
                    parallel: 1,
                    standby: false,
                }),
            })
            .await
            .ok()
        }
    })
    .await;
    web.add_web_cluster_service(pb::AddWebClusterServiceRequest {
        webcluster_oid: oid.clone(),
        webservice: Some(pb::WebService {
            path: "/".into(),
            service: Some(pb::web_service::Service::Nodeinfo(Default::default())),
            ..Default::default()
        }),
    })
    .await
    .unwrap();
    web.start_web_cluster(pb::StartWebClusterRequest {
        webcluster_oid: oid.clone(),
    })
    .await
    .unwrap();

    let m = master.metrics_addr();
    let families = eventually(
        "the cluster RUNNING in the metrics",
        Duration::from_secs(15),
        || {
            let f = scrape(m);
            (sample(
                &f,
                "switchyard_cluster_status",
                "switchyard_cluster_status",
                &[("cluster", "site"), ("status", "running")],
            ) == Some(1.0)
                && sample(
                    &f,
                    "switchyard_cluster_running_workers",
                    "switchyard_cluster_running_workers",
                    &[("cluster", "site")],
                ) == Some(1.0))
            .then_some(f)
        },
    );
    assert_eq!(
        sample(
            &families,
            "switchyard_cluster_desired_workers",
            "switchyard_cluster_desired_workers",
            &[("kind", "web"), ("cluster", "site")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &families,
            "switchyard_node_online",
            "switchyard_node_online",
            &[("node", "node1")]
        ),
        Some(1.0)
    );
    assert!(
        sample(
            &families,
            "switchyard_monitor_iterations",
            "switchyard_monitor_iterations_total",
            &[]
        )
        .unwrap()
            >= 1.0
    );
    assert_eq!(families["switchyard_monitor_errors"]["type"], "counter");
    // The control plane a pager needs: when the cluster and the node were last seen well, how
    // long iterations and commits take.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    for (family, labels) in [
        (
            "switchyard_cluster_last_converged_timestamp_seconds",
            &[("kind", "web"), ("cluster", "site")][..],
        ),
        (
            "switchyard_node_last_heartbeat_timestamp_seconds",
            &[("node", "node1")][..],
        ),
    ] {
        let t = sample(&families, family, family, labels).unwrap_or_else(|| panic!("{family}"));
        assert!(
            (now - 60.0..=now + 1.0).contains(&t),
            "{family} = {t}, now {now}"
        );
    }
    for (family, labels) in [
        (
            "switchyard_monitor_iteration_duration_seconds",
            &[("kind", "web")][..],
        ),
        ("switchyard_store_commit_duration_seconds", &[][..]),
    ] {
        assert_eq!(families[family]["type"], "histogram", "{family}");
        let count = sample(&families, family, &format!("{family}_count"), labels).unwrap();
        assert!(count >= 1.0, "{family}: {count}");
    }
    let create = "/switchyard.master.v1.WebClusterService/CreateWebCluster";
    assert_eq!(
        sample(
            &families,
            "switchyard_grpc_requests",
            "switchyard_grpc_requests_total",
            &[("method", create), ("code", "OK")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &families,
            "switchyard_grpc_requests",
            "switchyard_grpc_requests_total",
            &[
                (
                    "method",
                    "/switchyard.master.v1.WebClusterService/GetWebClusterByName"
                ),
                ("code", "NOT_FOUND")
            ]
        ),
        Some(1.0)
    );
    assert_eq!(
        families["switchyard_grpc_request_duration_seconds"]["type"],
        "histogram"
    );
    assert_eq!(
        sample(
            &families,
            "switchyard_grpc_request_duration_seconds",
            "switchyard_grpc_request_duration_seconds_count",
            &[("method", create)]
        ),
        Some(1.0)
    );

    let a = scrape(agent.metrics_addr());
    let worker = format!("cpw-{oid}-0");
    for w in ["controller", worker.as_str()] {
        let cpu = sample(
            &a,
            "switchyard_process_cpu_seconds",
            "switchyard_process_cpu_seconds_total",
            &[("worker", w)],
        )
        .unwrap_or_else(|| panic!("cpu of {w}"));
        if w == "controller" {
            // The agent has been serving RPCs and heartbeats for seconds: it used CPU.
            assert!(cpu > 0.0, "controller cpu {cpu}");
        }
        let rss = sample(
            &a,
            "switchyard_process_resident_bytes",
            "switchyard_process_resident_bytes",
            &[("worker", w)],
        )
        .unwrap();
        assert!(rss > 1_000_000.0, "{w} resident {rss}");
        assert!(
            sample(
                &a,
                "switchyard_process_fds",
                "switchyard_process_fds",
                &[("worker", w)]
            )
            .unwrap()
                >= 3.0
        );
        assert!(
            sample(
                &a,
                "switchyard_process_threads",
                "switchyard_process_threads",
                &[("worker", w)]
            )
            .unwrap()
                >= 1.0
        );
    }
    assert_eq!(
        sample(
            &a,
            "switchyard_worker_restarts",
            "switchyard_worker_restarts_total",
            &[("worker", worker.as_str()), ("type", "web")]
        ),
        Some(0.0)
    );
    assert_eq!(
        sample(
            &a,
            "switchyard_workers",
            "switchyard_workers",
            &[("status", "started")]
        ),
        Some(1.0)
    );
    assert!(
        sample(
            &a,
            "switchyard_grpc_requests",
            "switchyard_grpc_requests_total",
            &[
                (
                    "method",
                    "/switchyard.agent.v1.NodeControllerService/StartWorker"
                ),
                ("code", "OK")
            ]
        )
        .unwrap()
            >= 1.0
    );
}
