//! The agent's workers: separate OS processes started from the agent's own executable in worker
//! mode ([`child`]), each serving process control on a private Unix socket ([`control`]), with
//! their output kept in a bounded ring ([`log`]).
//!
//! Life cycle: starting → started (its control socket answers) → stopping → stopped; a process
//! that exits without a stop request, or never answers, is failed (with exit code or signal) and
//! published as `on_worker_failed`. One task per worker waits for its exit and reaps it.

pub mod child;
pub mod control;
pub mod log;
pub mod router_control;
pub mod simulated;
pub mod web_control;

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use switchyard::pb::agent::v1::native_process_service_client::NativeProcessServiceClient;
use switchyard::pb::agent::v1::node_controller_service_client::NodeControllerServiceClient;
use switchyard::pb::agent::v1::{
    self as pb, LogStream, ProcessEventType, WorkerStatus, WorkerType, process_event,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::controller::CONTROLLER;
use crate::error::{Error, Result};
use crate::events::EventBus;
use log::LogRing;

/// How workers are run.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// The executable started in worker mode (`<exe> worker ...`).
    pub exe: PathBuf,
    /// Directory of the control sockets (created 0700).
    pub runtime_dir: PathBuf,
    /// Time from SIGTERM to SIGKILL on a graceful stop.
    pub stop_timeout: Duration,
    /// Time a new worker has to answer on its control socket.
    pub start_timeout: Duration,
    /// Lines of output kept per worker.
    pub log_lines: usize,
    /// The node's authid, passed to workers.
    pub node: String,
    /// How workers are run.
    pub launcher: Launcher,
}

/// How a worker is run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Launcher {
    /// A separate process: `<exe> worker ...` (what the agent does).
    #[default]
    Process,
    /// Nothing runs: starts and stops are recorded and the worker controls are answered from
    /// memory ([`simulated`]). Only for benchmarks, whose figures must say "simulated".
    Record,
}

/// The mutable state of a worker.
#[derive(Debug, Clone)]
struct State {
    status: WorkerStatus,
    started: Option<SystemTime>,
    started_instant: Option<Instant>,
    startup_time: Option<Duration>,
    exit_code: Option<i32>,
    exit_signal: Option<i32>,
    reason: String,
}

/// One worker.
#[derive(Debug)]
pub struct Worker {
    id: String,
    kind: WorkerType,
    options: pb::WorkerOptions,
    created: SystemTime,
    pid: Mutex<u32>,
    state: watch::Sender<State>,
    stop_requested: std::sync::atomic::AtomicBool,
    /// The worker's output.
    pub log: LogRing,
    client: NativeProcessServiceClient<Channel>,
    controls: NodeControllerServiceClient<Channel>,
}

impl Worker {
    /// The worker id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The worker's pid (0 before spawn).
    pub fn pid(&self) -> u32 {
        *self.pid.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The worker's status now.
    pub fn status(&self) -> WorkerStatus {
        self.state.borrow().status
    }

    /// Ok if the worker is started, else NOT_STARTED naming its status.
    pub fn check_started(&self) -> Result<()> {
        match self.status() {
            WorkerStatus::Started => Ok(()),
            status => Err(Error::WorkerNotStarted {
                id: self.id.clone(),
                status: status
                    .as_str_name()
                    .trim_start_matches("WORKER_STATUS_")
                    .to_lowercase(),
            }),
        }
    }

    /// Whether the process is (still) running: starting, started or stopping.
    pub fn is_live(&self) -> bool {
        matches!(
            self.status(),
            WorkerStatus::Starting | WorkerStatus::Started | WorkerStatus::Stopping
        )
    }

    /// A process-control client connected to the worker's control socket.
    pub fn client(&self) -> NativeProcessServiceClient<Channel> {
        self.client.clone()
    }

    /// A client of the worker's own controls (web transport and services) on its control socket.
    pub fn controls(&self) -> NodeControllerServiceClient<Channel> {
        self.controls.clone()
    }

    /// The worker's kind.
    pub fn kind(&self) -> WorkerType {
        self.kind
    }

    /// The worker as the API returns it.
    pub fn to_pb(&self) -> pb::Worker {
        let s = self.state.borrow().clone();
        let mut options = self.options.clone();
        // Environment values may be secrets: echo the names only.
        for value in options.env.values_mut() {
            value.clear();
        }
        pb::Worker {
            id: self.id.clone(),
            pid: self.pid(),
            r#type: self.kind as i32,
            status: s.status as i32,
            created: Some(self.created.into()),
            started: s.started.map(Into::into),
            startup_time: s
                .startup_time
                .and_then(|d| prost_types::Duration::try_from(d).ok()),
            uptime: match (s.status, s.started_instant) {
                (WorkerStatus::Started, Some(t)) => t.elapsed().as_secs_f64(),
                _ => 0.0,
            },
            exit_code: s.exit_code,
            exit_signal: s.exit_signal,
            reason: s.reason,
            options: Some(options),
        }
    }
}

/// The registry of this agent's workers.
#[derive(Debug, Clone)]
pub struct Workers {
    config: Arc<WorkerConfig>,
    workers: Arc<Mutex<BTreeMap<String, Arc<Worker>>>>,
    events: EventBus,
    shutdown: CancellationToken,
    /// With [`Launcher::Record`]: the one channel every simulated worker's controls share.
    simulated: Option<Channel>,
    /// Starts per worker id since the agent started (restarts = starts - 1).
    starts: Arc<Mutex<BTreeMap<String, u64>>>,
}

/// Validates a worker id: 1..64 of `[A-Za-z0-9_.-]`, not "controller".
pub fn check_worker_id(field: &str, id: &str) -> Result<()> {
    if id.is_empty() {
        return Err(Error::invalid(field, "required"));
    }
    if id == CONTROLLER {
        return Err(Error::invalid(
            field,
            "\"controller\" names the agent itself, not a worker",
        ));
    }
    if id.len() > 64
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        || id.starts_with('.')
    {
        return Err(Error::invalid(
            field,
            "use 1..64 characters of [A-Za-z0-9_.-], not starting with '.'",
        ));
    }
    Ok(())
}

fn start_failed(id: &str, what: impl Into<String>) -> Error {
    Error::WorkerStart {
        id: id.to_owned(),
        what: what.into(),
    }
}

/// The one control socket of an agent's simulated workers.
fn simulated_socket(runtime_dir: &std::path::Path) -> PathBuf {
    runtime_dir.join("simulated.sock")
}

impl Workers {
    /// An empty registry; creates the runtime directory (0700).
    pub fn new(
        config: WorkerConfig,
        events: EventBus,
        shutdown: CancellationToken,
    ) -> std::io::Result<Self> {
        control::ensure_runtime_dir(&config.runtime_dir)?;
        let simulated = if config.launcher == Launcher::Record {
            let socket = simulated_socket(&config.runtime_dir);
            simulated::serve(&socket, shutdown.clone())?;
            Some(control::channel(socket))
        } else {
            None
        };
        Ok(Workers {
            simulated,
            starts: Arc::default(),
            config: Arc::new(config),
            workers: Arc::default(),
            events,
            shutdown,
        })
    }

    fn map(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Arc<Worker>>> {
        self.workers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A worker by id, or NOT_FOUND.
    pub fn get(&self, id: &str) -> Result<Arc<Worker>> {
        self.map()
            .get(id)
            .cloned()
            .ok_or_else(|| Error::NoSuchWorker(id.to_owned()))
    }

    /// How often worker `id` was started since the agent started.
    pub fn starts(&self, id: &str) -> u64 {
        self.starts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .copied()
            .unwrap_or(0)
    }

    /// Every worker, sorted by id.
    pub fn list(&self) -> Vec<Arc<Worker>> {
        self.map().values().cloned().collect()
    }

    /// Starts a worker process and waits until it answers on its control socket.
    pub async fn start(
        &self,
        id: &str,
        kind: WorkerType,
        options: pb::WorkerOptions,
        who: &str,
    ) -> Result<Arc<Worker>> {
        check_worker_id("worker_id", id)?;
        let kind_arg = match kind {
            WorkerType::Web => "web",
            WorkerType::Router => "router",
            WorkerType::Unspecified => {
                return Err(Error::invalid("worker_type", "required: web or router"));
            }
        };
        let record = self.simulated.is_some();
        let socket = control::socket_path(&self.config.runtime_dir, id);
        let channel = self
            .simulated
            .clone()
            .unwrap_or_else(|| control::channel(socket.clone()));
        let worker = Arc::new(Worker {
            id: id.to_owned(),
            kind,
            options: options.clone(),
            created: SystemTime::now(),
            pid: Mutex::new(0),
            state: watch::channel(State {
                status: WorkerStatus::Starting,
                started: None,
                started_instant: None,
                startup_time: None,
                exit_code: None,
                exit_signal: None,
                reason: String::new(),
            })
            .0,
            stop_requested: false.into(),
            log: LogRing::new(self.config.log_lines),
            // Both services of the worker share one connection to its control socket.
            client: NativeProcessServiceClient::new(channel.clone()),
            controls: NodeControllerServiceClient::new(channel),
        });
        {
            let mut map = self.map();
            if map.get(id).is_some_and(|w| w.is_live()) {
                return Err(Error::WorkerRunning(id.to_owned()));
            }
            map.insert(id.to_owned(), worker.clone());
        }
        *self
            .starts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(id.to_owned())
            .or_default() += 1;
        if record {
            worker.state.send_modify(|s| {
                s.status = WorkerStatus::Started;
                s.started = Some(SystemTime::now());
                s.started_instant = Some(Instant::now());
                s.startup_time = Some(Duration::ZERO);
            });
            self.publish(&worker, ProcessEventType::OnWorkerStarted, who);
            return Ok(worker);
        }

        let mut command = tokio::process::Command::new(&self.config.exe);
        command
            .arg("worker")
            .args([
                "--id",
                id,
                "--node",
                &self.config.node,
                "--type",
                kind_arg,
                "--control",
            ])
            .arg(&socket)
            .args(["--parent-pid", &std::process::id().to_string()]);
        if !options.cpu_affinity.is_empty() {
            let cpus: Vec<String> = options.cpu_affinity.iter().map(u32::to_string).collect();
            command.args(["--cpu-affinity", &cpus.join(",")]);
        }
        command
            .args(&options.arguments)
            .envs(&options.env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let spawned = Instant::now();
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(e) => {
                self.fail(
                    &worker,
                    format!("cannot spawn {}: {e}", self.config.exe.display()),
                );
                return Err(start_failed(id, "could not be started"));
            }
        };
        *worker.pid.lock().unwrap_or_else(|p| p.into_inner()) = child.id().unwrap_or(0);
        if let Some(out) = child.stdout.take() {
            let w = worker.clone();
            tokio::spawn(async move { w.log.pump(out, LogStream::Stdout).await });
        }
        if let Some(err) = child.stderr.take() {
            let w = worker.clone();
            tokio::spawn(async move { w.log.pump(err, LogStream::Stderr).await });
        }
        tokio::spawn(self.clone().reap(worker.clone(), child, socket));

        // Ready when the control socket answers.
        let mut client = worker.client();
        let deadline = spawned + self.config.start_timeout;
        let mut state = worker.state.subscribe();
        loop {
            let probe = client.uptime(pb::UptimeRequest {
                process: id.to_owned(),
            });
            if tokio::time::timeout(Duration::from_millis(500), probe)
                .await
                .is_ok_and(|r| r.is_ok())
            {
                break;
            }
            if !worker.is_live() {
                let reason = worker.state.borrow().reason.clone();
                return Err(start_failed(
                    id,
                    format!("exited during start-up: {reason}"),
                ));
            }
            if Instant::now() > deadline {
                self.signal(&worker, Signal::SIGKILL);
                return Err(start_failed(
                    id,
                    format!("did not answer within {:?}", self.config.start_timeout),
                ));
            }
            let _ = tokio::time::timeout(Duration::from_millis(20), state.changed()).await;
        }
        let became_ready = worker.state.send_if_modified(|s| {
            if s.status != WorkerStatus::Starting {
                return false;
            }
            s.status = WorkerStatus::Started;
            s.started = Some(SystemTime::now());
            s.started_instant = Some(Instant::now());
            s.startup_time = Some(spawned.elapsed());
            true
        });
        if !became_ready {
            return Err(start_failed(id, "exited during start-up"));
        }
        tokio::spawn(self.clone().relay_events(worker.clone()));
        tracing::info!(worker = %id, pid = worker.pid(), startup = ?spawned.elapsed(), "worker started");
        self.publish(&worker, ProcessEventType::OnWorkerStarted, who);
        Ok(worker)
    }

    /// Stops a worker: SIGTERM, then SIGKILL after the stop timeout (at once with `kill`).
    /// Returns once the process is reaped. Stopping a worker that already ended returns it as is.
    pub async fn stop(&self, id: &str, kill_now: bool, who: &str) -> Result<Arc<Worker>> {
        check_worker_id("worker_id", id)?;
        let worker = self.get(id)?;
        if !worker.is_live() {
            return Ok(worker);
        }
        worker
            .stop_requested
            .store(true, std::sync::atomic::Ordering::SeqCst);
        worker.state.send_modify(|s| {
            if matches!(s.status, WorkerStatus::Starting | WorkerStatus::Started) {
                s.status = WorkerStatus::Stopping;
            }
        });
        if self.config.launcher == Launcher::Record {
            worker
                .state
                .send_modify(|s| s.status = WorkerStatus::Stopped);
            self.publish(&worker, ProcessEventType::OnWorkerStopped, who);
            return Ok(worker);
        }
        let mut state = worker.state.subscribe();
        let ended = |s: &State| matches!(s.status, WorkerStatus::Stopped | WorkerStatus::Failed);
        if !kill_now {
            self.signal(&worker, Signal::SIGTERM);
            if tokio::time::timeout(self.config.stop_timeout, state.wait_for(ended))
                .await
                .is_ok()
            {
                self.publish(&worker, ProcessEventType::OnWorkerStopped, who);
                return Ok(worker);
            }
            tracing::warn!(worker = %id, "did not stop after SIGTERM; killing it");
        }
        self.signal(&worker, Signal::SIGKILL);
        let _ = state.wait_for(ended).await;
        self.publish(&worker, ProcessEventType::OnWorkerStopped, who);
        Ok(worker)
    }

    /// Stops every live worker (agent shutdown).
    pub async fn stop_all(&self) {
        let ids: Vec<String> = self
            .list()
            .into_iter()
            .filter(|w| w.is_live())
            .map(|w| w.id.clone())
            .collect();
        let stops = ids.iter().map(|id| self.stop(id, false, ""));
        futures::future::join_all(stops).await;
    }

    fn signal(&self, worker: &Worker, signal: Signal) {
        let pid = worker.pid();
        if pid != 0 {
            let _ = kill(Pid::from_raw(pid as i32), signal);
        }
    }

    fn fail(&self, worker: &Worker, reason: String) {
        tracing::warn!(worker = %worker.id, %reason, "worker failed");
        worker.state.send_modify(|s| {
            s.status = WorkerStatus::Failed;
            s.reason = reason;
        });
    }

    /// Waits for the process to exit, reaps it, and records how it ended.
    async fn reap(self, worker: Arc<Worker>, mut child: tokio::process::Child, socket: PathBuf) {
        let exit = child.wait().await;
        let _ = std::fs::remove_file(&socket);
        let requested = worker
            .stop_requested
            .load(std::sync::atomic::Ordering::SeqCst);
        let (code, signal) = match &exit {
            Ok(s) => (s.code(), s.signal()),
            Err(_) => (None, None),
        };
        let reason = match (code, signal) {
            (Some(c), _) => format!("exited with code {c}"),
            (_, Some(s)) => format!(
                "killed by signal {}",
                Signal::try_from(s).map_or_else(|_| s.to_string(), |s| s.as_str().to_owned())
            ),
            _ => "exit status unknown".to_owned(),
        };
        worker.state.send_modify(|s| {
            s.exit_code = code;
            s.exit_signal = signal;
            s.status = if requested {
                WorkerStatus::Stopped
            } else {
                WorkerStatus::Failed
            };
            s.reason = if requested {
                String::new()
            } else {
                reason.clone()
            };
        });
        if requested {
            tracing::info!(worker = %worker.id, %reason, "worker stopped");
        } else {
            tracing::warn!(worker = %worker.id, %reason, "worker failed");
            self.publish(&worker, ProcessEventType::OnWorkerFailed, "");
        }
    }

    /// Relays the worker's own process events into the node's event bus.
    async fn relay_events(self, worker: Arc<Worker>) {
        let mut client = worker.client();
        let Ok(response) = client.watch(pb::WatchRequest::default()).await else {
            return;
        };
        let mut stream = response.into_inner();
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                next = stream.message() => match next {
                    Ok(Some(pb::WatchResponse { event: Some(event) })) => self.events.send(event),
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => return,
                },
            }
        }
    }

    fn publish(&self, worker: &Worker, kind: ProcessEventType, who: &str) {
        self.events.publish(
            kind,
            &worker.id,
            who,
            process_event::Details::Worker(pb::WorkerEventDetails {
                worker: Some(worker.to_pb()),
            }),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_ids_are_validated() {
        for ok in ["w1", "cpw-0a1b2c3d-0", "group_1", "a.b"] {
            assert!(check_worker_id("worker_id", ok).is_ok(), "{ok}");
        }
        for bad in ["", "controller", "a/b", ".hidden", "x y", &"w".repeat(65)] {
            let err = check_worker_id("worker_id", bad).unwrap_err();
            assert!(
                matches!(&err, Error::InvalidArgument { field, .. } if field == "worker_id"),
                "{bad}: {err}"
            );
        }
    }
}
