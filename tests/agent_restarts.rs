//! Issue 18 (the agent's half): workers outlive their agent's restart and are adopted by the
//! next agent on the same runtime directory; a crashed worker is restarted by its agent at
//! once, its configuration replayed, with a growing backoff while it keeps failing. Real
//! master, agent and worker processes; load from curl.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use common::{Pki, Proc, channel, eventually, eventually_async, process_gone, system_tool};
use switchyard::pb::agent::v1::{
    self as apb, ProcessEventType, WorkerStatus, WorkerType,
    native_process_service_client::NativeProcessServiceClient,
    node_controller_service_client::NodeControllerServiceClient,
};
use switchyard::pb::master::v1::{
    self as pb, ClusterStatus, web_cluster_service_client::WebClusterServiceClient,
    web_service::Service,
};
use tonic::transport::Channel;

/// No master: heartbeats go nowhere, so whatever restarts a worker is its agent.
const NO_MASTER: &str = "127.0.0.1:9";

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig} {pid}");
}

/// An agent on runtime directory `run` that keeps its workers on SIGTERM. Its workers wait
/// 10 s for a new agent (the harness kills agents when a test ends: they do not linger 30 s).
fn agent(pki: &Pki, master: &str, run: &Path, extra: &[&str]) -> Proc {
    let run = run.display().to_string();
    let mut args = vec![
        "--runtime-dir",
        run.as_str(),
        "--keep-workers",
        "--adopt-grace",
        "10",
    ];
    args.extend_from_slice(extra);
    Proc::agent_with(pki, "node1", master.parse().unwrap(), &args)
}

async fn nc(pki: &Pki, agent: &Proc) -> NodeControllerServiceClient<Channel> {
    NodeControllerServiceClient::new(channel(pki, "admin", agent.addr).await)
}

async fn workers(nc: &mut NodeControllerServiceClient<Channel>) -> Vec<apb::Worker> {
    nc.list_workers(apb::ListWorkersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .workers
}

async fn get(nc: &mut NodeControllerServiceClient<Channel>, id: &str) -> apb::Worker {
    nc.get_worker(apb::GetWorkerRequest {
        worker_id: id.into(),
    })
    .await
    .unwrap()
    .into_inner()
    .worker
    .unwrap()
}

/// `curl` requests in a loop, from a thread, until stopped: (answered 200, anything else).
struct Load {
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<(u64, u64)>,
}

impl Load {
    fn start(url: &str, dir: &Path) -> Load {
        // One curl process runs 200 requests on one connection; a new one follows at once.
        let config = dir.join("curl.txt");
        let mut f = std::fs::File::create(&config).unwrap();
        for _ in 0..200 {
            writeln!(f, "url = \"{url}\"\noutput = \"/dev/null\"").unwrap();
        }
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicU64::new(0));
        let (flag, count) = (stop.clone(), answered.clone());
        let curl = system_tool("curl");
        let thread = std::thread::spawn(move || {
            let (mut ok, mut failed) = (0, 0);
            while !flag.load(Ordering::SeqCst) {
                let out = Command::new(&curl)
                    .args(["-s", "--max-time", "10", "-w", "%{http_code}\\n", "-K"])
                    .arg(&config)
                    .output()
                    .unwrap();
                for code in String::from_utf8_lossy(&out.stdout).lines() {
                    if code == "200" {
                        ok += 1;
                        count.fetch_add(1, Ordering::SeqCst);
                    } else {
                        failed += 1;
                    }
                }
                if !out.status.success() {
                    failed += 1;
                }
            }
            (ok, failed)
        });
        Load {
            stop,
            answered,
            thread,
        }
    }

    fn answered(&self) -> u64 {
        self.answered.load(Ordering::SeqCst)
    }

    fn finish(self) -> (u64, u64) {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().unwrap()
    }
}

/// Two samples of each of `ids` from StreamProcessStats, with the pids they report.
async fn streamed_pids(pki: &Pki, agent: &Proc, ids: &[String]) -> Vec<(String, u32)> {
    let mut np = NativeProcessServiceClient::new(channel(pki, "admin", agent.addr).await);
    let mut stream = np
        .stream_process_stats(apb::StreamProcessStatsRequest {
            interval: 0.1,
            processes: ids.to_vec(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut seen: Vec<(String, u32, u64)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ids
        .iter()
        .all(|id| seen.iter().any(|(p, _, seq)| p == id && *seq >= 2))
    {
        let left = deadline.saturating_duration_since(Instant::now());
        let msg = tokio::time::timeout(left, stream.message())
            .await
            .expect("two stats samples of every worker")
            .unwrap()
            .unwrap();
        seen.push((msg.process, msg.stats.unwrap().pid, msg.seq));
    }
    let mut pids: Vec<(String, u32)> = seen.into_iter().map(|(p, pid, _)| (p, pid)).collect();
    pids.sort();
    pids.dedup();
    pids
}

async fn web_cluster(
    web: &mut WebClusterServiceClient<Channel>,
    port: u16,
    parallel: u32,
) -> String {
    let oid = common::create_web_cluster(web, "site", port).await;
    web.add_web_cluster_node(pb::AddWebClusterNodeRequest {
        webcluster_oid: oid.clone(),
        node_oid: "node1".into(),
        config: Some(pb::WebClusterNodeConfig {
            parallel,
            standby: false,
        }),
    })
    .await
    .unwrap();
    web.add_web_cluster_service(pb::AddWebClusterServiceRequest {
        webcluster_oid: oid.clone(),
        webservice: Some(pb::WebService {
            path: "/".into(),
            service: Some(Service::Nodeinfo(Default::default())),
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
    oid
}

async fn wait_running(web: &WebClusterServiceClient<Channel>, oid: &str) {
    eventually_async("the web cluster RUNNING", Duration::from_secs(20), || {
        let mut web = web.clone();
        let oid = oid.to_owned();
        async move {
            let c = web
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
}

/// (id, pid) of every started worker, sorted.
fn started(ws: &[apb::Worker]) -> Vec<(String, u32)> {
    ws.iter()
        .filter(|w| w.status == WorkerStatus::Started as i32)
        .map(|w| (w.id.clone(), w.pid))
        .collect()
}

/// Waits until process `pid` is gone (polling asynchronously: a stopping agent waits for this
/// test's connections to it to close, which needs this runtime).
async fn wait_gone(pid: u32, what: &str) {
    eventually_async(what, Duration::from_secs(20), || async move {
        process_gone(pid).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_web_cluster_serves_every_request_while_its_agent_restarts_and_keeps_its_workers() {
    let pki = Pki::new(&["node1"]);
    let data = tempfile::tempdir().unwrap();
    let run = tempfile::tempdir().unwrap();
    let run_dir = run.path().join("run");
    let master = Proc::master(&pki, data.path());
    let master_addr = master.addr.to_string();
    let first = agent(&pki, &master_addr, &run_dir, &[]);
    common::nodes_online(&pki, master.addr, 1, Duration::from_secs(15)).await;
    let mut web = WebClusterServiceClient::new(channel(&pki, "admin", master.addr).await);
    let port = common::free_port();
    let oid = web_cluster(&mut web, port, 2).await;
    wait_running(&web, &oid).await;
    let before = started(&workers(&mut nc(&pki, &first).await).await);
    assert_eq!(before.len(), 2, "{before:?}");

    let load = Load::start(&format!("http://127.0.0.1:{port}/"), run.path());
    // The load runs against the undisturbed cluster first.
    eventually("requests served", Duration::from_secs(20), || {
        (load.answered() >= 500).then_some(())
    });

    // A restart: SIGTERM with --keep-workers, then a new agent on the same runtime directory.
    signal(first.pid(), "TERM");
    wait_gone(first.pid(), "the first agent to exit").await;
    for (_, pid) in &before {
        assert!(!process_gone(*pid), "worker {pid} died with its agent");
    }
    let second = agent(&pki, &master_addr, &run_dir, &[]);
    assert!(
        second
            .logs()
            .contains("adopted the workers of the previous agent"),
        "{}",
        second.logs()
    );
    let mut nc2 = nc(&pki, &second).await;
    let listed = workers(&mut nc2).await;
    assert_eq!(started(&listed), before, "the same worker processes");
    assert!(listed.iter().all(|w| w.adopted), "{listed:?}");
    let ids: Vec<String> = before.iter().map(|(id, _)| id.clone()).collect();
    assert_eq!(
        streamed_pids(&pki, &second, &ids).await,
        before,
        "stats of the adopted workers"
    );

    // A crash: kill -9, then a new agent.
    let mut second = second;
    second.kill9();
    let third = agent(&pki, &master_addr, &run_dir, &[]);
    let mut nc3 = nc(&pki, &third).await;
    assert_eq!(started(&workers(&mut nc3).await), before);
    assert_eq!(streamed_pids(&pki, &third, &ids).await, before);

    // The master sees its workers again and leaves them as they are.
    wait_running(&web, &oid).await;
    let during = load.answered();
    eventually("more requests served", Duration::from_secs(60), || {
        (load.answered() >= (during + 500).max(3000)).then_some(())
    });
    let (ok, failed) = load.finish();
    println!("{ok} requests answered, {failed} failed, across two agent restarts");
    assert_eq!(failed, 0, "requests failed during the agent restarts");
    assert!(ok >= 3000, "only {ok} requests: not a load test");
    assert_eq!(
        started(&workers(&mut nc3).await),
        before,
        "the monitor started no other worker"
    );

    // A second agent on the same runtime directory is refused, naming the one serving.
    let out = Command::new(common::agent_bin())
        .args([
            "serve",
            "--insecure",
            "--name",
            "node1",
            "--master",
            NO_MASTER,
        ])
        .args(["--listen", "127.0.0.1:0", "--runtime-dir"])
        .arg(&run_dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("in use by agent pid {}", third.pid())),
        "{err}"
    );

    // Stopping for good stops the workers too, and clears the runtime directory.
    let mut stop = Command::new(common::agent_bin());
    stop.args(["stop", "--runtime-dir"]).arg(&run_dir);
    // Off this runtime: the stopping agent waits for our connections to it to close.
    let out = tokio::task::spawn_blocking(move || stop.output().unwrap())
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    for (_, pid) in &before {
        assert!(process_gone(*pid), "worker {pid} outlived `stop`");
    }
    assert!(process_gone(third.pid()));
    assert!(!run_dir.exists(), "the runtime directory is removed");
}

/// A started web worker `id` serving `directory` on `port`.
async fn web_worker(
    nc: &mut NodeControllerServiceClient<Channel>,
    id: &str,
    port: u16,
    directory: &Path,
) -> apb::Worker {
    let w = nc
        .start_worker(apb::StartWorkerRequest {
            worker_id: id.into(),
            worker_type: WorkerType::Web as i32,
            options: None,
        })
        .await
        .unwrap()
        .into_inner()
        .worker
        .unwrap();
    nc.start_web_transport(apb::StartWebTransportRequest {
        worker_id: id.into(),
        transport: Some(apb::WebTransport {
            tcp_port: port.into(),
            tcp_interface: Some("127.0.0.1".into()),
            ..Default::default()
        }),
    })
    .await
    .unwrap();
    nc.start_web_service(apb::StartWebServiceRequest {
        worker_id: id.into(),
        service: Some(apb::WebService {
            path: "/".into(),
            service: Some(apb::web_service::Service::Static(apb::StaticService {
                directory: directory.display().to_string(),
                options: None,
            })),
        }),
    })
    .await
    .unwrap();
    w
}

fn curl(url: &str) -> Option<String> {
    let out = Command::new(system_tool("curl"))
        .args(["-sf", "--max-time", "2", url])
        .output()
        .unwrap();
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::test]
async fn a_killed_worker_is_restarted_by_its_agent_at_once_configured_as_before() {
    let pki = Pki::new(&["node1"]);
    let run = tempfile::tempdir().unwrap();
    std::fs::write(run.path().join("index.html"), "restored").unwrap();
    let a = agent(
        &pki,
        NO_MASTER,
        &run.path().join("run"),
        &["--metrics-listen", "127.0.0.1:0"],
    );
    let mut nc = nc(&pki, &a).await;
    let port = common::free_port();
    let url = format!("http://127.0.0.1:{port}/index.html");
    let w = web_worker(&mut nc, "w", port, run.path()).await;
    assert_eq!(curl(&url).as_deref(), Some("restored"));
    let mut np = NativeProcessServiceClient::new(channel(&pki, "admin", a.addr).await);
    let mut watch = np
        .watch(apb::WatchRequest {
            types: vec![
                ProcessEventType::OnWorkerFailed as i32,
                ProcessEventType::OnWorkerRestarted as i32,
            ],
            processes: vec!["w".into()],
        })
        .await
        .unwrap()
        .into_inner();

    signal(w.pid, "KILL");
    let killed = Instant::now();
    let back = eventually("the worker to serve again", Duration::from_secs(10), || {
        curl(&url).filter(|body| body == "restored")
    });
    let took = killed.elapsed();
    // The agent's own account: from seeing the exit to serving again, configuration replayed.
    let logged = |message: &str| {
        eventually(message, Duration::from_secs(5), || {
            a.logs().lines().find_map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).ok()?;
                (v["fields"]["message"] == message).then_some(())?;
                let ts = v["timestamp"].as_str()?;
                time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339).ok()
            })
        })
    };
    let restart = logged("worker restarted") - logged("worker failed; restarting it");
    println!("a killed worker served again {took:?} later; its agent restarted it in {restart}");
    assert!(
        restart < time::Duration::seconds(1),
        "{restart}: not before a monitor's next tick (1 s)"
    );
    assert_eq!(back, "restored", "its transport and service were replayed");
    let now = get(&mut nc, "w").await;
    assert_eq!(now.status, WorkerStatus::Started as i32);
    assert_ne!(now.pid, w.pid);
    assert_eq!(now.restarts, 1);
    assert_eq!(now.exit_signal, Some(9), "the last failure: {now:?}");
    assert!(now.next_restart.is_none());
    let mut events = Vec::new();
    while events.len() < 2 {
        let e = tokio::time::timeout(Duration::from_secs(5), watch.message())
            .await
            .expect("events")
            .unwrap()
            .unwrap()
            .event
            .unwrap();
        events.push(e.r#type);
    }
    assert_eq!(
        events,
        [
            ProcessEventType::OnWorkerFailed as i32,
            ProcessEventType::OnWorkerRestarted as i32
        ]
    );
    let metrics = curl(&format!("http://{}/metrics", a.metrics_addr())).unwrap();
    assert!(
        metrics.lines().any(
            |l| l.starts_with("switchyard_worker_restarts_total{worker=\"w\"") && l.ends_with(" 1")
        ),
        "{metrics}"
    );
}

/// A worker executable that runs the agent's, or exits 3 once `broken` exists.
fn flaky_worker_exe(dir: &Path) -> std::path::PathBuf {
    let exe = dir.join("worker.sh");
    let broken = dir.join("broken");
    std::fs::write(
        &exe,
        format!(
            "#!/bin/sh\n[ -e '{}' ] && exit 3\nexec '{}' \"$@\"\n",
            broken.display(),
            common::agent_bin().display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    exe
}

#[tokio::test]
async fn a_worker_that_fails_at_start_up_is_retried_ever_later_and_reported() {
    let pki = Pki::new(&["node1"]);
    let dir = tempfile::tempdir().unwrap();
    let exe = flaky_worker_exe(dir.path());
    let run = dir.path().join("run");
    let a = agent(
        &pki,
        NO_MASTER,
        &run,
        &[
            "--worker-exe",
            &exe.display().to_string(),
            "--restart-backoff",
            "0.2",
            "--restart-backoff-max",
            "3",
        ],
    );
    let mut nc = nc(&pki, &a).await;
    let w = nc
        .start_worker(apb::StartWorkerRequest {
            worker_id: "loop".into(),
            worker_type: WorkerType::Web as i32,
            options: None,
        })
        .await
        .unwrap()
        .into_inner()
        .worker
        .unwrap();

    // A new worker build that cannot start, then the worker crashes.
    std::fs::write(dir.path().join("broken"), "").unwrap();
    signal(w.pid, "KILL");
    // Each failed attempt schedules the next one: collect when they are due.
    let mut due: Vec<SystemTime> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let reported = loop {
        let w = get(&mut nc, "loop").await;
        if let Some(t) = w.next_restart {
            let t = SystemTime::try_from(t).unwrap();
            if due.last() != Some(&t) {
                due.push(t);
            }
        }
        if due.len() >= 5 {
            break w;
        }
        assert!(Instant::now() < deadline, "five restart attempts: {due:?}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    assert_eq!(reported.status, WorkerStatus::Restarting as i32);
    assert!(
        reported.reason.contains("exited with code 3"),
        "{}",
        reported.reason
    );
    assert_eq!(reported.exit_code, Some(3));
    let gaps: Vec<Duration> = due
        .windows(2)
        .map(|p| p[1].duration_since(p[0]).unwrap())
        .collect();
    println!("restart attempts due {gaps:?} apart");
    // They grow (doubling from 0.2 s), up to the 3 s cap. Each gap also holds one failed
    // start-up, whose length varies on a loaded machine: allow that much.
    assert!(
        gaps.windows(2)
            .all(|g| g[1] + Duration::from_millis(150) >= g[0]),
        "the intervals never shrink: {gaps:?}"
    );
    assert!(
        gaps[gaps.len() - 1] > gaps[0] * 3,
        "the intervals grow: {gaps:?}"
    );
    assert!(
        gaps.iter().all(|g| *g < Duration::from_secs(4)),
        "capped at 3 s: {gaps:?}"
    );
    assert!(reported.restarts >= 4, "{reported:?}");

    // Fixed: the next attempt brings it back, its restarts counted.
    std::fs::remove_file(dir.path().join("broken")).unwrap();
    let fixed = eventually_async("the worker back", Duration::from_secs(15), || {
        let mut nc = nc.clone();
        async move {
            let w = get(&mut nc, "loop").await;
            (w.status == WorkerStatus::Started as i32).then_some(w)
        }
    })
    .await;
    assert!(fixed.restarts > reported.restarts, "{fixed:?}");
    assert!(fixed.reason.is_empty() && fixed.next_restart.is_none());

    // In a backoff, a stop cancels the restart at once.
    std::fs::write(dir.path().join("broken"), "").unwrap();
    signal(fixed.pid, "KILL");
    let due = eventually_async("waiting between attempts", Duration::from_secs(15), || {
        let mut nc = nc.clone();
        async move {
            let w = get(&mut nc, "loop").await;
            let t = SystemTime::try_from(w.next_restart?).ok()?;
            (w.status == WorkerStatus::Restarting as i32
                && t.duration_since(SystemTime::now()).ok()? > Duration::from_secs(1))
            .then_some(t)
        }
    })
    .await;
    let stopped = nc
        .stop_worker(apb::StopWorkerRequest {
            worker_id: "loop".into(),
            kill: false,
        })
        .await
        .unwrap()
        .into_inner()
        .worker
        .unwrap();
    assert_eq!(stopped.status, WorkerStatus::Stopped as i32);
    assert!(
        SystemTime::now() < due,
        "the stop waited for the restart that was due"
    );
    assert!(
        !run.join("loop.json").exists(),
        "a stopped worker leaves no record"
    );
}

#[tokio::test]
async fn a_reused_pid_is_never_adopted() {
    let pki = Pki::new(&["node1"]);
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    std::fs::write(dir.path().join("index.html"), "fresh").unwrap();
    let first = agent(&pki, NO_MASTER, &run, &[]);
    let port = common::free_port();
    let w = web_worker(&mut nc(&pki, &first).await, "w", port, dir.path()).await;
    signal(first.pid(), "TERM");
    wait_gone(first.pid(), "the agent to exit").await;

    // The worker dies while no agent runs, and its pid now names another process.
    signal(w.pid, "KILL");
    wait_gone(w.pid, "the worker to die").await;
    let mut other = Command::new("sleep").arg("60").spawn().unwrap();
    let record = run.join("w.json");
    let mut r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap();
    r["process"]["pid"] = other.id().into();
    std::fs::write(&record, serde_json::to_vec(&r).unwrap()).unwrap();

    let second = agent(&pki, NO_MASTER, &run, &[]);
    let nc2 = nc(&pki, &second).await;
    let again = eventually_async("w started again", Duration::from_secs(15), || {
        let mut nc = nc2.clone();
        async move {
            let w = get(&mut nc, "w").await;
            (w.status == WorkerStatus::Started as i32).then_some(w)
        }
    })
    .await;
    assert_ne!(again.pid, other.id(), "the other process was not adopted");
    let logs = second.logs();
    assert!(
        logs.contains("exited while no agent was running") && !logs.contains("did not answer"),
        "the recorded worker is known gone, without trying the other process:\n{logs}"
    );
    assert!(!again.adopted);
    assert_eq!(again.restarts, 1);
    assert!(
        other.try_wait().unwrap().is_none(),
        "the other process was left alone"
    );
    let url = format!("http://127.0.0.1:{port}/index.html");
    let body = eventually("w to serve", Duration::from_secs(5), || curl(&url));
    assert_eq!(body, "fresh", "restarted with its configuration");
    let _ = other.kill();
    let _ = other.wait();
}

#[tokio::test]
async fn a_cluster_worker_in_a_crash_loop_is_left_to_its_agent_by_the_monitor() {
    let pki = Pki::new(&["node1"]);
    let dir = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let exe = flaky_worker_exe(dir.path());
    let master = Proc::master_with(
        &pki,
        data.path(),
        "127.0.0.1:0",
        &["--metrics-listen", "127.0.0.1:0"],
    );
    let a = agent(
        &pki,
        &master.addr.to_string(),
        &dir.path().join("run"),
        &["--worker-exe", &exe.display().to_string()],
    );
    common::nodes_online(&pki, master.addr, 1, Duration::from_secs(15)).await;
    let mut web = WebClusterServiceClient::new(channel(&pki, "admin", master.addr).await);
    let port = common::free_port();
    let oid = web_cluster(&mut web, port, 2).await;
    wait_running(&web, &oid).await;
    let mut nc = nc(&pki, &a).await;
    let before = workers(&mut nc).await;
    let victim = before[0].clone();

    // Its worker build breaks and it crashes: the agent retries it (1 s, 2 s, ...).
    std::fs::write(dir.path().join("broken"), "").unwrap();
    signal(victim.pid, "KILL");
    eventually_async("the worker restarting", Duration::from_secs(10), || {
        let mut nc = nc.clone();
        let id = victim.id.clone();
        async move {
            let w = get(&mut nc, &id).await;
            (w.status == WorkerStatus::Restarting as i32 && w.restarts >= 2).then_some(())
        }
    })
    .await;
    // Meanwhile the monitor observes it on its ticks and starts nothing in its place.
    let iterations = || {
        let text = curl(&format!("http://{}/metrics", master.metrics_addr())).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix("switchyard_monitor_iterations_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap()
    };
    // (A tick that observed it just before it died may have tried its listener: from now on.)
    let logged = master.logs().lines().count();
    let seen = iterations();
    eventually("two monitor iterations", Duration::from_secs(10), || {
        (iterations() >= seen + 2.0).then_some(())
    });
    let since: Vec<String> = master
        .logs()
        .lines()
        .skip(logged)
        .map(str::to_owned)
        .collect();
    assert!(
        !since.iter().any(|l| l.contains("action failed")),
        "the monitor tried to act on the restarting worker:\n{since:#?}"
    );
    let listed = workers(&mut nc).await;
    assert_eq!(listed.len(), 2, "{listed:?}");

    // Fixed: the agent brings it back, the same worker, its restarts counted.
    std::fs::remove_file(dir.path().join("broken")).unwrap();
    let back = eventually_async("the worker back", Duration::from_secs(15), || {
        let mut nc = nc.clone();
        let id = victim.id.clone();
        async move {
            let w = get(&mut nc, &id).await;
            (w.status == WorkerStatus::Started as i32).then_some(w)
        }
    })
    .await;
    assert!(back.restarts >= 2, "{back:?}");
    assert_ne!(back.pid, victim.pid);
    wait_running(&web, &oid).await;
    let body = curl(&format!("http://127.0.0.1:{port}/")).unwrap();
    assert!(body.contains("\"node\""), "{body}");
}

#[tokio::test]
async fn a_killed_router_worker_comes_back_on_its_port_with_its_realms() {
    let pki = Pki::new(&["node1"]);
    let run = tempfile::tempdir().unwrap();
    let a = agent(&pki, NO_MASTER, &run.path().join("run"), &[]);
    let mut nc = nc(&pki, &a).await;
    let w = nc
        .start_worker(apb::StartWorkerRequest {
            worker_id: "r".into(),
            worker_type: WorkerType::Router as i32,
            options: None,
        })
        .await
        .unwrap()
        .into_inner()
        .worker
        .unwrap();
    let low = u32::from(common::free_port());
    let port = nc
        .start_router_transport(apb::StartRouterTransportRequest {
            worker_id: "r".into(),
            interface: "127.0.0.1".into(),
            port_range_start: low,
            port_range_end: low + 20,
            link_secret: "s".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .transport
        .unwrap()
        .port;
    for realm in ["realm1", "realm2"] {
        nc.start_router_realm(apb::StartRouterRealmRequest {
            worker_id: "r".into(),
            realm: realm.into(),
        })
        .await
        .unwrap();
    }
    nc.stop_router_realm(apb::StopRouterRealmRequest {
        worker_id: "r".into(),
        realm: "realm2".into(),
    })
    .await
    .unwrap();

    signal(w.pid, "KILL");
    let back = eventually_async("the router worker back", Duration::from_secs(10), || {
        let mut nc = nc.clone();
        async move {
            let w = get(&mut nc, "r").await;
            (w.status == WorkerStatus::Started as i32 && w.restarts == 1).then_some(w)
        }
    })
    .await;
    assert_ne!(back.pid, w.pid);
    let t = nc
        .get_router_transport(apb::GetRouterTransportRequest {
            worker_id: "r".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .transport
        .unwrap();
    assert_eq!(t.port, port, "the port its placement knows");
    let realms: Vec<String> = nc
        .list_router_realms(apb::ListRouterRealmsRequest {
            worker_id: "r".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .realms
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(realms, ["realm1"]);
}
