//! Issue 8 acceptance: the `switchyard` CLI drives a whole web cluster life cycle against a real
//! master and agent (tables and JSON asserted), streams events and stats through the master,
//! and fails with one clear line (gRPC code and reason) and the documented exit codes.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{Pki, Proc, cli_bin, eventually, system_tool};
use serde_json::Value;

struct Env {
    pki: Pki,
    master: Proc,
    _agent: Proc,
}

impl Env {
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(cli_bin());
        c.args(args)
            .env("SWITCHYARD_MASTER", self.master.addr.to_string())
            .env("SWITCHYARD_PKI_DIR", &self.pki.path);
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("run switchyard")
    }

    /// Runs a command that must succeed; returns its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "switchyard {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        serde_json::from_str(&self.ok(&all)).expect("JSON output")
    }
}

fn lines_with<'a>(text: &'a str, words: &[&str]) -> Vec<&'a str> {
    text.lines()
        .filter(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            words.iter().all(|w| cols.contains(w))
        })
        .collect()
}

#[test]
fn the_cli_drives_a_web_cluster_life_cycle() {
    let pki = Pki::new(&["node1"]);
    let data = tempfile::tempdir().unwrap();
    let master = Proc::master(&pki, data.path());
    let agent = Proc::agent(&pki, "node1", master.addr);
    let env = Env {
        pki,
        master,
        _agent: agent,
    };
    eventually(
        "node1 online in `node list`",
        Duration::from_secs(15),
        || {
            let out = env.ok(&["node", "list"]);
            (!lines_with(&out, &["node1", "ONLINE"]).is_empty()).then_some(())
        },
    );
    let node = env.json(&["node", "show", "node1"]);
    assert_eq!(node["status"], "NODE_STATUS_ONLINE");

    // Events, watched while the cluster is created.
    let mut watch = env
        .cmd(&["watch", "--type", "on_webcluster_created", "-o", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = watch.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });

    let www = tempfile::tempdir().unwrap();
    std::fs::write(www.path().join("index.html"), "hello from the cli\n").unwrap();
    let port = common::free_port().to_string();
    let out = env.ok(&[
        "webcluster",
        "create",
        "site",
        "--tcp-port",
        &port,
        "--tcp-interface",
        "127.0.0.1",
        "--tcp-shared",
    ]);
    assert_eq!(lines_with(&out, &["name", "site"]).len(), 1, "{out}");
    assert_eq!(lines_with(&out, &["status", "STOPPED"]).len(), 1, "{out}");
    let event: Value = loop {
        // The watch may have subscribed after the create: create more until one is seen.
        match rx.recv_timeout(Duration::from_secs(2)) {
            Ok(line) => break serde_json::from_str(&line).unwrap(),
            Err(_) => {
                let name = format!("probe{}", common::free_port());
                env.ok(&["webcluster", "create", &name, "--tcp-port", "1"]);
                env.ok(&["webcluster", "delete", &name]);
            }
        }
    };
    assert_eq!(event["type"], "EVENT_TYPE_ON_WEBCLUSTER_CREATED");
    let _ = watch.kill();
    let _ = watch.wait();

    let out = env.ok(&["webcluster", "add-node", "site", "node1", "--parallel", "2"]);
    assert_eq!(lines_with(&out, &["node1", "2", "false"]).len(), 1, "{out}");
    let dir = www.path().to_str().unwrap();
    env.ok(&[
        "webcluster",
        "add-service",
        "site",
        "/",
        "--type",
        "static",
        "--directory",
        dir,
    ]);
    env.ok(&[
        "webcluster",
        "add-service",
        "site",
        "/api",
        "--type",
        "json",
        "--value",
        r#"{"ok":true}"#,
    ]);
    let out = env.ok(&["webcluster", "services", "site"]);
    assert_eq!(lines_with(&out, &["/", "static", dir]).len(), 1, "{out}");
    assert_eq!(lines_with(&out, &["/api", "json"]).len(), 1, "{out}");
    let services = env.json(&["webcluster", "services", "site"]);
    assert_eq!(
        services[1]["json"]["value"],
        serde_json::json!({"ok": true}),
        "{services}"
    );

    let out = env.ok(&["webcluster", "start", "site"]);
    assert_eq!(lines_with(&out, &["status", "STARTING"]).len(), 1, "{out}");
    eventually("RUNNING", Duration::from_secs(15), || {
        (env.json(&["webcluster", "show", "site"])["status"] == "CLUSTER_STATUS_RUNNING")
            .then_some(())
    });
    let curl = |path: &str| {
        let out = Command::new(system_tool("curl"))
            .args(["-s", "--max-time", "5"])
            .arg(format!("http://127.0.0.1:{port}{path}"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    assert_eq!(curl("/"), "hello from the cli\n");
    assert_eq!(curl("/api").trim(), r#"{"ok":true}"#);

    let workers = env.json(&["webcluster", "workers", "site"]);
    assert_eq!(workers["workers"].as_array().unwrap().len(), 2);
    let out = env.ok(&["webcluster", "workers", "site"]);
    assert!(out.starts_with("NODE"), "{out}");
    assert_eq!(lines_with(&out, &["node1", "STARTED"]).len(), 2, "{out}");
    let out = env.ok(&["webcluster", "stat", "site"]);
    assert!(out.contains("2/2 running"), "{out}");
    let out = env.ok(&["webcluster", "list"]);
    assert_eq!(
        lines_with(&out, &["site", "RUNNING", &port]).len(),
        1,
        "{out}"
    );
    let out = env.ok(&["webcluster", "nodes", "site"]);
    assert_eq!(lines_with(&out, &["node1", "2", "false"]).len(), 1, "{out}");

    // Live stats of a worker through the master's gateway.
    let worker = workers["workers"][0]["workerId"]
        .as_str()
        .unwrap()
        .to_owned();
    let out = env.ok(&[
        "stats",
        "node1",
        &worker,
        "--count",
        "2",
        "--interval",
        "0.2",
        "-o",
        "json",
    ]);
    let samples: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(samples.len(), 2);
    assert_eq!(samples[0]["process"], worker.as_str());
    assert!(samples[0]["stats"]["pid"].as_u64().unwrap() > 0);
    let out = env.ok(&["stats", "node1", "--count", "1"]);
    assert!(out.starts_with("node1 controller  pid "), "{out}");

    env.ok(&["webcluster", "stop", "site"]);
    eventually("STOPPED", Duration::from_secs(15), || {
        (env.json(&["webcluster", "show", "site"])["status"] == "CLUSTER_STATUS_STOPPED")
            .then_some(())
    });
    env.ok(&["webcluster", "delete", "site"]);
    assert_eq!(env.json(&["webcluster", "list"]), serde_json::json!([]));

    // Errors: one line with code and reason; exit codes 1 (API), 2 (usage), 64 (config).
    let out = env.run(&["webcluster", "show", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("error: NOT_FOUND (NO_SUCH_OBJECT): "),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    let out = env.run(&["webcluster", "create", "x", "--tcp-port", "eighty"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("invalid value 'eighty' for '--tcp-port"),
        "{err}"
    );
    let out = env.run(&["webcluster", "frobnicate"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Usage:"));
    let out = env.run(&["webcluster", "add-service", "x", "/", "--type", "static"]);
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    let out = env
        .cmd(&["node", "list"])
        .env_remove("SWITCHYARD_PKI_DIR")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--pki-dir"));
}
