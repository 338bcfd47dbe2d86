//! The agent's workers: separate OS processes started from the agent's own executable in worker
//! mode ([`child`]), each serving process control on a private Unix socket ([`control`]), with
//! their output kept in a bounded ring ([`log`]).
//!
//! Life cycle: starting → started (its control socket answers) → stopping → stopped. A started
//! worker that exits without a stop request is failed (with exit code or signal) and published
//! as `on_worker_failed`; with restart policy on failure (the default) it is then restarting
//! until the agent has started it again ([`supervise`], with its configuration replayed,
//! [`applied`]) and published as `on_worker_restarted`. One task per worker supervises it.
//!
//! Workers outlive their agent: each has a record in the runtime directory ([`record`],
//! [`files`]), and a new agent on the same directory adopts the live ones ([`adopt`]).

pub mod adopt;
pub mod applied;
pub mod child;
pub mod control;
pub mod files;
pub mod log;
pub mod pid;
pub mod record;
pub mod router_control;
pub mod simulated;
mod supervise;
pub mod web_control;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use switchyard::pb::agent::v1::native_process_service_client::NativeProcessServiceClient;
use switchyard::pb::agent::v1::node_controller_service_client::NodeControllerServiceClient;
use switchyard::pb::agent::v1::{
    self as pb, ProcessEventType, RestartPolicy, WorkerStatus, WorkerType, process_event,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::controller::CONTROLLER;
use crate::error::{Error, Result};
use crate::events::EventBus;
use applied::{Applied, Change};
use control::AgentKey;
use log::LogRing;
use pid::ProcessId;
pub use supervise::Backoff;

/// How workers are run.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// The executable started in worker mode (`<exe> worker ...`).
    pub exe: PathBuf,
    /// Directory of the control sockets and records (created 0700).
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
    /// Time a worker whose agent is gone keeps serving, waiting to be adopted.
    pub adopt_grace: Duration,
    /// Delays between restarts of a failing worker.
    pub backoff: Backoff,
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
#[derive(Debug, Clone, Default)]
struct State {
    status: WorkerStatus,
    /// The pid of its current (or last) process; 0 before spawn.
    pid: u32,
    /// Its running process, if any.
    process: Option<ProcessId>,
    /// The running process was started by an earlier agent (it is not our child).
    adopted: bool,
    started: Option<SystemTime>,
    started_instant: Option<Instant>,
    startup_time: Option<Duration>,
    exit_code: Option<i32>,
    exit_signal: Option<i32>,
    reason: String,
    restarts: u32,
    next_restart: Option<SystemTime>,
}

/// One worker.
#[derive(Debug)]
pub struct Worker {
    id: String,
    kind: WorkerType,
    options: pb::WorkerOptions,
    created: SystemTime,
    state: watch::Sender<State>,
    /// Cancelled when a stop is requested.
    stop: CancellationToken,
    /// The worker's output.
    pub log: LogRing,
    client: NativeProcessServiceClient<Channel>,
    controls: NodeControllerServiceClient<Channel>,
    applied: Mutex<Applied>,
    /// Whether the record may still be written (false once the worker ended for good).
    record_open: Mutex<bool>,
}

impl Worker {
    /// The worker id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The worker's pid (0 before spawn).
    pub fn pid(&self) -> u32 {
        self.state.borrow().pid
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

    /// Whether the worker is (still) there: a process starting, started or stopping, or one
    /// its agent is about to start again.
    pub fn is_live(&self) -> bool {
        matches!(
            self.status(),
            WorkerStatus::Starting
                | WorkerStatus::Started
                | WorkerStatus::Stopping
                | WorkerStatus::Restarting
        )
    }

    /// Whether the agent starts the worker again when it fails.
    pub fn restarts_on_failure(&self) -> bool {
        self.options.restart_policy != RestartPolicy::Never as i32
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

    /// The labels it was started with (a monitor's owner labels among them).
    pub fn labels(&self) -> &std::collections::HashMap<String, String> {
        &self.options.labels
    }

    /// How long the current process has served (zero unless started).
    fn serving_for(&self) -> Duration {
        let s = self.state.borrow();
        match (s.status, s.started_instant) {
            (WorkerStatus::Started, Some(t)) => t.elapsed(),
            _ => Duration::ZERO,
        }
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
            pid: s.pid,
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
            restarts: s.restarts,
            next_restart: s.next_restart.map(Into::into),
            adopted: s.adopted,
        }
    }
}

/// The registry of this agent's workers.
#[derive(Debug, Clone)]
pub struct Workers {
    config: Arc<WorkerConfig>,
    key: AgentKey,
    workers: Arc<Mutex<BTreeMap<String, Arc<Worker>>>>,
    events: EventBus,
    shutdown: CancellationToken,
    /// With [`Launcher::Record`]: the one channel every simulated worker's controls share.
    simulated: Option<Channel>,
    /// Starts per worker id since the agent started, its own restarts included (restarts =
    /// starts - 1); an adopted worker counts its recorded restarts.
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
    /// An empty registry; creates the runtime directory (0700) and its agent key.
    pub fn new(
        config: WorkerConfig,
        events: EventBus,
        shutdown: CancellationToken,
    ) -> std::io::Result<Self> {
        control::ensure_runtime_dir(&config.runtime_dir)?;
        let key = AgentKey::load_or_create(&config.runtime_dir)?;
        let simulated = if config.launcher == Launcher::Record {
            let socket = simulated_socket(&config.runtime_dir);
            simulated::serve(&socket, key.clone(), shutdown.clone())?;
            Some(control::channel(socket, key.clone()))
        } else {
            None
        };
        Ok(Workers {
            simulated,
            key,
            starts: Arc::default(),
            config: Arc::new(config),
            workers: Arc::default(),
            events,
            shutdown,
        })
    }

    fn map(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Arc<Worker>>> {
        crate::lock(&self.workers)
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
        crate::lock(&self.starts).get(id).copied().unwrap_or(0)
    }

    fn count_start(&self, id: &str, n: u64) {
        *crate::lock(&self.starts).entry(id.to_owned()).or_default() += n;
    }

    /// Every worker, sorted by id.
    pub fn list(&self) -> Vec<Arc<Worker>> {
        self.map().values().cloned().collect()
    }

    /// A new worker object (no process yet), in status starting.
    fn new_worker(&self, id: &str, kind: WorkerType, options: pb::WorkerOptions) -> Worker {
        let socket = control::socket_path(&self.config.runtime_dir, id);
        let channel = self
            .simulated
            .clone()
            .unwrap_or_else(|| control::channel(socket, self.key.clone()));
        Worker {
            id: id.to_owned(),
            kind,
            options,
            created: SystemTime::now(),
            state: watch::channel(State {
                status: WorkerStatus::Starting,
                ..State::default()
            })
            .0,
            stop: CancellationToken::new(),
            log: LogRing::new(self.config.log_lines),
            // Both services of the worker share one connection to its control socket.
            client: NativeProcessServiceClient::new(channel.clone()),
            controls: NodeControllerServiceClient::new(channel),
            applied: Mutex::default(),
            record_open: Mutex::new(true),
        }
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
        if kind == WorkerType::Unspecified {
            return Err(Error::invalid("worker_type", "required: web or router"));
        }
        RestartPolicy::try_from(options.restart_policy)
            .map_err(|_| Error::invalid("options.restart_policy", "unknown restart policy"))?;
        let worker = Arc::new(self.new_worker(id, kind, options));
        {
            let mut map = self.map();
            if map.get(id).is_some_and(|w| w.is_live()) {
                return Err(Error::WorkerRunning(id.to_owned()));
            }
            map.insert(id.to_owned(), worker.clone());
        }
        self.count_start(id, 1);
        if self.simulated.is_some() {
            worker.state.send_modify(|s| {
                s.status = WorkerStatus::Started;
                s.started = Some(SystemTime::now());
                s.started_instant = Some(Instant::now());
                s.startup_time = Some(Duration::ZERO);
            });
            self.publish(&worker, ProcessEventType::OnWorkerStarted, who);
            return Ok(worker);
        }
        let spawned = Instant::now();
        let process = match self.launch(&worker).await {
            Ok(process) => process,
            Err(failure) => {
                self.ended(&worker, &failure.exit);
                return Err(start_failed(id, failure.what));
            }
        };
        if !self.ready(&worker, spawned) {
            return Err(start_failed(id, "exited during start-up"));
        }
        tracing::info!(worker = %id, pid = worker.pid(), startup = ?spawned.elapsed(), "worker started");
        self.publish(&worker, ProcessEventType::OnWorkerStarted, who);
        tokio::spawn(self.clone().supervise(worker.clone(), process));
        Ok(worker)
    }

    /// Marks a worker whose process answers as started; false if it ended meanwhile.
    fn ready(&self, worker: &Arc<Worker>, spawned: Instant) -> bool {
        let became_ready = worker.state.send_if_modified(|s| {
            if !matches!(s.status, WorkerStatus::Starting | WorkerStatus::Restarting) {
                return false;
            }
            s.status = WorkerStatus::Started;
            s.started = Some(SystemTime::now());
            s.started_instant = Some(Instant::now());
            s.startup_time = Some(spawned.elapsed());
            s.next_restart = None;
            s.reason.clear();
            true
        });
        if became_ready {
            self.persist(worker);
            tokio::spawn(self.clone().relay_events(worker.clone()));
        }
        became_ready
    }

    /// Stops a worker: SIGTERM, then SIGKILL after the stop timeout (at once with `kill`).
    /// Returns once the process is reaped. Stopping a worker that already ended returns it as
    /// is; stopping one that waits to be restarted cancels the restart.
    pub async fn stop(&self, id: &str, kill_now: bool, who: &str) -> Result<Arc<Worker>> {
        check_worker_id("worker_id", id)?;
        let worker = self.get(id)?;
        if !worker.is_live() {
            return Ok(worker);
        }
        worker.stop.cancel();
        worker.state.send_modify(|s| {
            if matches!(
                s.status,
                WorkerStatus::Starting | WorkerStatus::Started | WorkerStatus::Restarting
            ) {
                s.status = WorkerStatus::Stopping;
            }
        });
        if self.simulated.is_some() {
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

    /// Stops every live worker (the agent stops for good).
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

    /// Records a successful control call on worker `id`, to replay it if the worker restarts.
    pub fn applied(&self, id: &str, change: Change) {
        if let Ok(worker) = self.get(id) {
            crate::lock(&worker.applied).apply(change);
            self.persist(&worker);
        }
    }

    /// Signals the worker's process, if it runs (and is still the process we started).
    fn signal(&self, worker: &Worker, signal: Signal) {
        let process = worker.state.borrow().process;
        if let Some(p) = process.filter(ProcessId::is_running) {
            let _ = kill(Pid::from_raw(p.pid as i32), signal);
        }
    }

    /// Writes the worker's record (not once it ended for good, nor for simulated workers).
    fn persist(&self, worker: &Worker) {
        if self.simulated.is_some() {
            return;
        }
        let open = crate::lock(&worker.record_open);
        if !*open {
            return;
        }
        let s = worker.state.borrow().clone();
        let record = record::Record {
            version: record::VERSION,
            id: worker.id.clone(),
            kind: record::kind_name(worker.kind).to_owned(),
            process: s.process,
            socket: control::socket_path(&self.config.runtime_dir, &worker.id),
            created_ms: record::to_ms(worker.created),
            started_ms: s.started.map(record::to_ms),
            restarts: s.restarts,
            labels: worker
                .options
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            options: record::Pb(worker.options.clone()),
            applied: crate::lock(&worker.applied).clone(),
        };
        let path = files::record(&self.config.runtime_dir, &worker.id);
        if let Err(e) = record.write(&path) {
            tracing::error!(worker = %worker.id, error = %e, "cannot write the worker's record: a new agent could not adopt it");
        }
    }

    /// The worker ended for good: its record and files go, so no later agent revives it.
    fn retire(&self, worker: &Worker) {
        let mut open = crate::lock(&worker.record_open);
        *open = false;
        files::remove_all(&self.config.runtime_dir, &worker.id);
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
