//! Issue 3 acceptance: a real agent process starting real worker processes, controlled over
//! mTLS with a tonic client; OpenSSH against the manhole.

mod common;

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{
    Pki, Proc, channel, eventually, eventually_async, grpcurl, process_gone, stderr, stdout,
    system_tool,
};
use switchyard::pb::agent::v1::{
    self as pb, ProcessEventType, WorkerStatus, WorkerType,
    native_process_service_client::NativeProcessServiceClient,
    node_controller_service_client::NodeControllerServiceClient,
};
use tonic::Code;
use tonic::transport::Channel;

struct Node {
    _pki: Pki,
    agent: Proc,
    nc: NodeControllerServiceClient<Channel>,
    np: NativeProcessServiceClient<Channel>,
}

async fn node() -> Node {
    let pki = Pki::new(&["node1"]);
    // No master is needed for the agent's own API; heartbeats go nowhere here.
    let agent = Proc::agent(&pki, "node1", "127.0.0.1:9".parse().unwrap());
    let ch = channel(&pki, "admin", agent.addr).await;
    Node {
        nc: NodeControllerServiceClient::new(ch.clone()),
        np: NativeProcessServiceClient::new(ch),
        _pki: pki,
        agent,
    }
}

async fn start(
    nc: &mut NodeControllerServiceClient<Channel>,
    id: &str,
    kind: WorkerType,
    args: &[&str],
) -> pb::Worker {
    nc.start_worker(pb::StartWorkerRequest {
        worker_id: id.into(),
        worker_type: kind as i32,
        options: Some(pb::WorkerOptions {
            arguments: args.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }),
    })
    .await
    .unwrap_or_else(|e| panic!("start {id}: {e}"))
    .into_inner()
    .worker
    .unwrap()
}

fn exists(pid: u32) -> bool {
    !process_gone(pid)
}

#[tokio::test]
async fn workers_are_real_processes_with_a_life_cycle() {
    let mut n = node().await;
    let mut watch =
        n.np.watch(pb::WatchRequest::default())
            .await
            .unwrap()
            .into_inner();

    let w1 = start(&mut n.nc, "w1", WorkerType::Web, &[]).await;
    // w2 is not restarted by its agent when it fails (the default is: tests/agent_restarts.rs).
    let w2 =
        n.nc.start_worker(pb::StartWorkerRequest {
            worker_id: "w2".into(),
            worker_type: WorkerType::Router as i32,
            options: Some(pb::WorkerOptions {
                restart_policy: pb::RestartPolicy::Never as i32,
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .worker
        .unwrap();
    assert_eq!(w1.status, WorkerStatus::Started as i32);
    assert!(w1.pid != 0 && w2.pid != 0 && w1.pid != w2.pid);
    assert!(exists(w1.pid) && exists(w2.pid));
    assert!(w1.startup_time.is_some() && w1.started.is_some());
    for w in [&w1, &w2] {
        let stats =
            n.np.get_process_stats(pb::GetProcessStatsRequest {
                process: w.id.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .stats
            .unwrap();
        assert_eq!(stats.pid, w.pid, "stats of {} report its own pid", w.id);
        let info =
            n.np.get_process_info(pb::GetProcessInfoRequest {
                process: w.id.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(info.pid, w.pid);
        assert!(
            info.threads >= 2,
            "a worker is multi-threaded: {}",
            info.threads
        );
    }
    let listed =
        n.nc.list_workers(pb::ListWorkersRequest::default())
            .await
            .unwrap()
            .into_inner();
    let ids: Vec<_> = listed.workers.iter().map(|w| w.id.as_str()).collect();
    assert_eq!(ids, ["w1", "w2"]);
    let web_only =
        n.nc.list_workers(pb::ListWorkersRequest {
            r#type: WorkerType::Web as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(web_only.workers.len(), 1);

    // The worker's output is kept.
    let log =
        n.nc.get_worker_log(pb::GetWorkerLogRequest {
            worker_id: "w1".into(),
            limit: 10,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        log.lines.iter().any(|l| l.line.contains("worker serving")),
        "{:?}",
        log.lines
    );

    // Bad ids and duplicates.
    let dup =
        n.nc.start_worker(pb::StartWorkerRequest {
            worker_id: "w1".into(),
            worker_type: WorkerType::Web as i32,
            options: None,
        })
        .await
        .unwrap_err();
    assert_eq!(dup.code(), Code::AlreadyExists);
    for bad in ["", "controller"] {
        let e =
            n.nc.start_worker(pb::StartWorkerRequest {
                worker_id: bad.into(),
                worker_type: WorkerType::Web as i32,
                options: None,
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{bad:?}");
        assert!(e.message().contains("worker_id"), "{}", e.message());
    }
    let e =
        n.nc.start_worker(pb::StartWorkerRequest {
            worker_id: "w9".into(),
            worker_type: 0,
            options: None,
        })
        .await
        .unwrap_err();
    assert!(
        e.code() == Code::InvalidArgument && e.message().contains("worker_type"),
        "{e}"
    );

    // StopWorker reaps the process.
    let stopped =
        n.nc.stop_worker(pb::StopWorkerRequest {
            worker_id: "w1".into(),
            kill: false,
        })
        .await
        .unwrap()
        .into_inner()
        .worker
        .unwrap();
    assert_eq!(stopped.status, WorkerStatus::Stopped as i32);
    assert!(process_gone(w1.pid), "w1 still runs after StopWorker");
    let e =
        n.nc.stop_worker(pb::StopWorkerRequest {
            worker_id: "nope".into(),
            kill: false,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e =
        n.np.uptime(pb::UptimeRequest {
            process: "w1".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "a stopped worker: {e}");

    // A worker killed behind the agent's back is reported failed, with an event.
    assert!(
        Command::new("kill")
            .args(["-KILL", &w2.pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
    let failed = eventually_async("w2 to be reported failed", Duration::from_secs(10), || {
        let mut nc = n.nc.clone();
        async move {
            let w = nc
                .get_worker(pb::GetWorkerRequest {
                    worker_id: "w2".into(),
                })
                .await
                .ok()?
                .into_inner()
                .worker?;
            (w.status == WorkerStatus::Failed as i32).then_some(w)
        }
    })
    .await;
    assert_eq!(failed.exit_signal, Some(9), "{failed:?}");
    assert!(failed.reason.contains("SIGKILL"), "{}", failed.reason);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let event = tokio::time::timeout(left, watch.message())
            .await
            .expect("events")
            .unwrap()
            .unwrap()
            .event
            .unwrap();
        seen.push((event.r#type, event.process.clone()));
        if event.r#type == ProcessEventType::OnWorkerFailed as i32 && event.process == "w2" {
            break;
        }
    }
    assert!(
        seen.contains(&(ProcessEventType::OnWorkerStarted as i32, "w1".into())),
        "{seen:?}"
    );
    assert!(
        seen.contains(&(ProcessEventType::OnWorkerStopped as i32, "w1".into())),
        "{seen:?}"
    );

    // The id of a stopped worker can be used again.
    let again = start(&mut n.nc, "w1", WorkerType::Web, &[]).await;
    assert_ne!(again.pid, w1.pid);
    drop(n.agent);
}

fn cpus_allowed(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
        .map(|t| {
            let status = std::fs::read_to_string(t.path().join("status")).unwrap();
            status
                .lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                .unwrap()
                .trim()
                .to_owned()
        })
        .collect()
}

#[tokio::test]
async fn cpu_affinity_applies_to_every_thread() {
    let mut n = node().await;
    let w = start(&mut n.nc, "aff", WorkerType::Web, &[]).await;
    let mut watch =
        n.np.watch(pb::WatchRequest {
            types: vec![ProcessEventType::OnCpuAffinitySet as i32],
            processes: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    let cpus =
        n.np.get_cpus(pb::GetCpusRequest {
            process: "aff".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .cpus;
    assert!(!cpus.is_empty());
    let last = cpus.len() as u32 - 1;
    let target = cpus[last as usize];
    // `relative` unset: indexes into the start set (the reference's default).
    let got =
        n.np.set_cpu_affinity(pb::SetCpuAffinityRequest {
            process: "aff".into(),
            cpus: vec![last],
            relative: None,
        })
        .await
        .unwrap()
        .into_inner()
        .affinity;
    assert_eq!(got, vec![target]);
    let threads = cpus_allowed(w.pid);
    assert!(threads.len() >= 2, "{threads:?}");
    assert!(
        threads.iter().all(|t| *t == target.to_string()),
        "every thread pinned: {threads:?}"
    );
    let event = tokio::time::timeout(Duration::from_secs(5), watch.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
        .event
        .unwrap();
    assert_eq!(event.process, "aff");
    assert_eq!(event.who, "spiffe://switchyard/admin/admin");

    // Absolute CPU ids, then back to the full start set.
    let first = cpus[0];
    n.np.set_cpu_affinity(pb::SetCpuAffinityRequest {
        process: "aff".into(),
        cpus: vec![first],
        relative: Some(false),
    })
    .await
    .unwrap();
    assert!(cpus_allowed(w.pid).iter().all(|t| *t == first.to_string()));
    let all =
        n.np.set_cpu_affinity(pb::SetCpuAffinityRequest {
            process: "aff".into(),
            cpus: (0..cpus.len() as u32).collect(),
            relative: Some(true),
        })
        .await
        .unwrap()
        .into_inner()
        .affinity;
    assert_eq!(all, cpus);

    // Bad input: INVALID_ARGUMENT naming `cpus`, and the affinity is unchanged.
    for (cpus_arg, relative) in [
        (vec![cpus.len() as u32 + 7], true),
        (vec![4096], false),
        (vec![], false),
    ] {
        let e =
            n.np.set_cpu_affinity(pb::SetCpuAffinityRequest {
                process: "aff".into(),
                cpus: cpus_arg.clone(),
                relative: Some(relative),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{cpus_arg:?}: {e}");
        assert!(e.message().contains("cpus"), "{}", e.message());
    }
    let now =
        n.np.get_cpu_affinity(pb::GetCpuAffinityRequest {
            process: "aff".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .cpus;
    assert_eq!(now, cpus);

    // The controller too: the host's logical CPUs.
    let count =
        n.np.get_cpu_count(pb::GetCpuCountRequest {
            process: "controller".into(),
            logical: Some(true),
        })
        .await
        .unwrap()
        .into_inner()
        .count;
    assert_eq!(count, host_cpus());
    let e =
        n.np.get_cpus(pb::GetCpusRequest {
            process: "ghost".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
}

/// The host's logical CPUs as `nproc --all` counts them (plain `nproc` counts only the CPUs the
/// calling process may use).
fn host_cpus() -> u32 {
    let out = Command::new(system_tool("nproc"))
        .arg("--all")
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// The reference's defaults, with grpcurl: GetCpuCount counts the host's logical CPUs unless
/// `logical` is false, and SetCpuAffinity takes indexes into the start set unless `relative` is
/// false. The agent runs pinned to the host's last CPU, so relative index 0 (that CPU) and CPU
/// id 0 differ, and a count of the CPUs the agent may use (1) differs from the host's.
#[test]
fn cpu_count_and_affinity_default_to_the_references_choices() {
    let pki = Pki::new(&["node1"]);
    let host = host_cpus();
    let last = host - 1;
    let mut cmd = Command::new(system_tool("taskset"));
    cmd.args(["--cpu-list", &last.to_string()])
        .arg(common::agent_bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--name", "node1"])
        .args(["--master", "127.0.0.1:9", "--pki-dir"])
        .arg(&pki.path);
    let agent = Proc::spawn(cmd);
    let tls = pki.grpcurl_tls(Some("admin"));
    let addr = agent.addr.to_string();
    let call = |method: &str, body: &str| {
        grpcurl(
            &tls,
            &["-d", body, &addr, &format!("switchyard.agent.v1.{method}")],
        )
    };
    let ok = |method: &str, body: &str| -> serde_json::Value {
        let out = call(method, body);
        assert!(out.status.success(), "{method} {body}: {}", stderr(&out));
        serde_json::from_str(&stdout(&out)).unwrap()
    };
    let count = |body: &str| ok("NativeProcessService/GetCpuCount", body)["count"].clone();

    // `process` is required; with it and nothing else, the host's logical CPUs.
    let e = stderr(&call("NativeProcessService/GetCpuCount", "{}"));
    assert!(
        e.contains("InvalidArgument") && e.contains("process"),
        "{e}"
    );
    assert_eq!(count(r#"{"process":"controller"}"#), host);
    assert_eq!(count(r#"{"process":"controller","logical":true}"#), host);
    let physical = count(r#"{"process":"controller","logical":false}"#)
        .as_u64()
        .unwrap();
    assert!((1..=u64::from(host)).contains(&physical), "{physical}");
    // A worker pinned to one CPU (it inherits the agent's affinity) counts the host's too.
    ok(
        "NodeControllerService/StartWorker",
        r#"{"workerId":"pinned","workerType":"WORKER_TYPE_WEB"}"#,
    );
    assert_eq!(
        ok("NativeProcessService/GetCpus", r#"{"process":"pinned"}"#)["cpus"],
        serde_json::json!([last])
    );
    assert_eq!(count(r#"{"process":"pinned"}"#), host);

    // `relative` unset: index 0 of the start set [last], not CPU 0.
    assert_eq!(
        ok(
            "NativeProcessService/GetCpus",
            r#"{"process":"controller"}"#
        )["cpus"],
        serde_json::json!([last])
    );
    let set = |body: &str| ok("NativeProcessService/SetCpuAffinity", body)["affinity"].clone();
    assert_eq!(
        set(r#"{"process":"controller","cpus":[0]}"#),
        serde_json::json!([last])
    );
    assert!(
        cpus_allowed(agent.pid())
            .iter()
            .all(|t| *t == last.to_string()),
        "{:?}",
        cpus_allowed(agent.pid())
    );
    // `relative: false`: CPU ids.
    assert_eq!(
        set(r#"{"process":"controller","cpus":[0],"relative":false}"#),
        serde_json::json!([0])
    );
    assert!(cpus_allowed(agent.pid()).iter().all(|t| t == "0"));
}

#[tokio::test]
async fn stats_stream_delivers_samples_of_every_process() {
    let mut n = node().await;
    start(&mut n.nc, "s1", WorkerType::Web, &[]).await;
    start(&mut n.nc, "s2", WorkerType::Router, &[]).await;
    let mut stream =
        n.np.stream_process_stats(pb::StreamProcessStatsRequest {
            interval: 0.2,
            processes: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    let began = Instant::now();
    let mut seqs: HashMap<String, Vec<u64>> = HashMap::new();
    while !["controller", "s1", "s2"]
        .iter()
        .all(|p| seqs.get(*p).is_some_and(|s| s.len() >= 5))
    {
        let left = Duration::from_millis(1500).saturating_sub(began.elapsed());
        let msg = tokio::time::timeout(left, stream.message())
            .await
            .unwrap_or_else(|_| panic!("fewer than 5 samples per process in 1.5 s: {seqs:?}"))
            .unwrap()
            .unwrap();
        assert!(msg.stats.as_ref().unwrap().pid != 0);
        seqs.entry(msg.process).or_default().push(msg.seq);
    }
    for (process, s) in &seqs {
        assert!(s.windows(2).all(|w| w[1] == w[0] + 1), "{process}: {s:?}");
    }
    drop(stream);

    // Periodic stats events through SetProcessStatsMonitoring.
    let mut watch =
        n.np.watch(pb::WatchRequest {
            types: vec![ProcessEventType::OnProcessStats as i32],
            processes: vec!["s1".into()],
        })
        .await
        .unwrap()
        .into_inner();
    n.np.set_process_stats_monitoring(pb::SetProcessStatsMonitoringRequest {
        process: "s1".into(),
        interval: 0.1,
    })
    .await
    .unwrap();
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let e = tokio::time::timeout(Duration::from_secs(5), watch.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
            .event
            .unwrap();
        if let Some(pb::process_event::Details::ProcessStats(d)) = e.details {
            seen.push(d.seq);
        }
    }
    assert_eq!(seen, [1, 2, 3]);

    // Bad input.
    for interval in [0.0, -1.0, f64::NAN, 1e9] {
        let e =
            n.np.stream_process_stats(pb::StreamProcessStatsRequest {
                interval,
                processes: vec![],
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().contains("interval"), "{}", e.message());
    }
    let e =
        n.np.stream_process_stats(pb::StreamProcessStatsRequest {
            interval: 1.0,
            processes: vec!["ghost".into()],
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e =
        n.np.set_process_stats_monitoring(pb::SetProcessStatsMonitoringRequest {
            process: "s1".into(),
            interval: -2.0,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn trigger_gc_returns_freed_heap_to_the_os() {
    let mut n = node().await;
    start(
        &mut n.nc,
        "heap",
        WorkerType::Web,
        &["--ballast-mib", "192"],
    )
    .await;
    let r =
        n.np.trigger_gc(pb::TriggerGcRequest {
            process: "heap".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        r.resident_after + 100 * 1024 * 1024 < r.resident_before,
        "trim should release the freed 192 MiB: {r:?}"
    );
    assert!(r.duration >= 0.0);
    let r =
        n.np.trigger_gc(pb::TriggerGcRequest {
            process: "controller".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.resident_before > 0);
}

fn ssh(
    port: u16,
    user: &str,
    extra: &[&str],
    command: &str,
    password: Option<&str>,
) -> std::process::Output {
    let mut cmd = match password {
        Some(pw) => {
            let mut c = Command::new(system_tool("sshpass"));
            c.args(["-p", pw]).arg(system_tool("ssh"));
            c
        }
        None => Command::new(system_tool("ssh")),
    };
    cmd.args(["-p", &port.to_string()])
        .args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
        ])
        .args(["-o", "ConnectTimeout=10", "-o", "LogLevel=ERROR"])
        .args(extra)
        .arg(format!("{user}@127.0.0.1"))
        .arg(command)
        .output()
        .unwrap()
}

#[tokio::test]
async fn manhole_is_an_ssh_console_for_exactly_the_configured_users() {
    let mut n = node().await;
    let w = start(&mut n.nc, "mh", WorkerType::Web, &[]).await;
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("id");
    let out = Command::new(system_tool("ssh-keygen"))
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(out.status.success());
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();

    let port = common::free_port();
    let config = pb::ManholeConfig {
        interface: "127.0.0.1".into(),
        port: u32::from(port),
        users: vec![
            pb::ManholeUser {
                user: "alice".into(),
                password: "s3cret".into(),
                ..Default::default()
            },
            pb::ManholeUser {
                user: "bob".into(),
                authorized_keys: vec![public],
                ..Default::default()
            },
        ],
        host_key: String::new(),
    };
    let started =
        n.np.start_manhole(pb::StartManholeRequest {
            process: "mh".into(),
            config: Some(config.clone()),
        })
        .await
        .unwrap()
        .into_inner()
        .manhole
        .unwrap();
    assert_eq!(started.port, u32::from(port));
    assert_eq!(started.users, ["alice", "bob"]);
    let e =
        n.np.start_manhole(pb::StartManholeRequest {
            process: "mh".into(),
            config: Some(config.clone()),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert_eq!(
        switchyard::error::reason_of(&e).as_deref(),
        Some("ALREADY_STARTED")
    );
    let got =
        n.np.get_manhole(pb::GetManholeRequest {
            process: "mh".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.manhole.unwrap().port, u32::from(port));

    let password_only = [
        "-o",
        "PreferredAuthentications=password",
        "-o",
        "PubkeyAuthentication=no",
    ];
    // Password user, exec request: `stats` reports the worker's pid.
    let out = ssh(port, "alice", &password_only, "stats", Some("s3cret"));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains(&format!("pid: {}", w.pid)), "{text}");
    // Key user.
    let key_opts = [
        "-i",
        key.to_str().unwrap(),
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "BatchMode=yes",
    ];
    let out = ssh(port, "bob", &key_opts, "uptime", None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse::<f64>()
            .is_ok()
    );
    // Wrong password, unconfigured user, key of a password-only user: refused.
    let out = ssh(port, "alice", &password_only, "stats", Some("wrong"));
    assert!(!out.status.success(), "a wrong password was accepted");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("pid:"));
    let out = ssh(port, "mallory", &password_only, "stats", Some("s3cret"));
    assert!(!out.status.success(), "an unconfigured user was accepted");
    let out = ssh(port, "alice", &key_opts, "stats", None);
    assert!(!out.status.success(), "alice has no authorized key");
    // Interactive shell (no pty): commands line by line.
    let mut child = Command::new(system_tool("sshpass"))
        .args(["-p", "s3cret"])
        .arg(system_tool("ssh"))
        .args([
            "-T",
            "-p",
            &port.to_string(),
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=ERROR",
        ])
        .args(password_only)
        .arg("alice@127.0.0.1")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"help\nstats\nexit\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("loglevel") && text.contains(&format!("pid: {}", w.pid)),
        "{text}"
    );

    // Stop closes the port.
    n.np.stop_manhole(pb::StopManholeRequest {
        process: "mh".into(),
    })
    .await
    .unwrap();
    eventually("the manhole port to close", Duration::from_secs(5), || {
        std::net::TcpStream::connect(("127.0.0.1", port))
            .is_err()
            .then_some(())
    });
    let e =
        n.np.stop_manhole(pb::StopManholeRequest {
            process: "mh".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        switchyard::error::reason_of(&e).as_deref(),
        Some("NOT_STARTED")
    );

    // Bad configuration names the field.
    let e =
        n.np.start_manhole(pb::StartManholeRequest {
            process: "mh".into(),
            config: Some(pb::ManholeConfig {
                port: u32::from(port),
                ..Default::default()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("config.users"), "{}", e.message());
    // A taken port: CANNOT_LISTEN.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut busy = config.clone();
    busy.port = u32::from(taken.local_addr().unwrap().port());
    let e =
        n.np.start_manhole(pb::StartManholeRequest {
            process: "mh".into(),
            config: Some(busy),
        })
        .await
        .unwrap_err();
    assert_eq!(
        switchyard::error::reason_of(&e).as_deref(),
        Some("CANNOT_LISTEN"),
        "{e}"
    );
}

/// A killed agent's workers keep serving for the adopt grace (waiting for a new agent on the
/// same runtime directory, tests/agent_restarts.rs), then exit by themselves.
#[tokio::test]
async fn workers_of_a_killed_agent_exit_after_the_adopt_grace() {
    let pki = Pki::new(&["node1"]);
    let mut agent = Proc::agent_with(
        &pki,
        "node1",
        "127.0.0.1:9".parse().unwrap(),
        &["--adopt-grace", "2"],
    );
    let mut nc = NodeControllerServiceClient::new(channel(&pki, "admin", agent.addr).await);
    let a = start(&mut nc, "k1", WorkerType::Web, &[]).await;
    let b = start(&mut nc, "k2", WorkerType::Router, &[]).await;
    agent.kill9();
    let killed = Instant::now();
    assert!(
        exists(a.pid) && exists(b.pid),
        "workers outlive their agent"
    );
    eventually(
        "workers to exit after the grace",
        Duration::from_secs(15),
        || (process_gone(a.pid) && process_gone(b.pid)).then_some(()),
    );
    assert!(
        killed.elapsed() >= Duration::from_millis(1900),
        "exited after {:?}, before the 2 s grace",
        killed.elapsed()
    );
}

#[tokio::test]
async fn system_stats_and_status() {
    let mut n = node().await;
    start(&mut n.nc, "st", WorkerType::Web, &[]).await;
    let s =
        n.nc.get_system_stats(pb::GetSystemStatsRequest {})
            .await
            .unwrap()
            .into_inner();
    assert!(s.memory_total > 0 && s.cpu_count >= 1);
    let st =
        n.nc.get_status(pb::GetStatusRequest {})
            .await
            .unwrap()
            .into_inner();
    assert_eq!((st.workers, st.workers_started), (1, 1));
    assert_eq!(st.pid, n.agent.pid());
}
