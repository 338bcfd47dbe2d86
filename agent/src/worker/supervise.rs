//! Running a worker's process and keeping it running: [`Workers::launch`] spawns it and waits
//! until its control socket answers; one supervising task per worker waits for its exit (its
//! own child, or through a pidfd when it was adopted) and, with restart policy on failure,
//! starts it again at once, then with a doubling backoff while it keeps failing soon after
//! starting ([`Backoff`]); the configuration last applied to it is replayed before it reports
//! started again.

use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use nix::sys::signal::Signal;
use switchyard::pb::agent::v1::{self as pb, LogStream, ProcessEventType, WorkerStatus};

use super::pid::ProcessId;
use super::{Worker, Workers, control, files, record};

/// Delays between restarts of a failing worker.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// The delay before the second restart of a crash loop (the first is immediate).
    pub initial: Duration,
    /// The longest delay.
    pub max: Duration,
    /// A worker that served this long before failing is not in a crash loop: its failure
    /// count starts over.
    pub stable: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(60),
            stable: Duration::from_secs(10),
        }
    }
}

impl Backoff {
    /// The delay before the restart that follows `failures` consecutive failures soon after
    /// starting (counting the one just seen): none after the first, then `initial`, doubling
    /// up to `max`.
    pub fn delay(&self, failures: u32) -> Duration {
        match failures {
            0 | 1 => Duration::ZERO,
            n => self
                .initial
                .saturating_mul(1u32 << (n - 2).min(30))
                .min(self.max),
        }
    }
}

/// How a process ended.
#[derive(Debug, Clone, Default)]
pub(super) struct Exit {
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub reason: String,
}

impl Exit {
    fn from_status(status: std::io::Result<std::process::ExitStatus>) -> Self {
        let (code, signal) = match &status {
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
        Exit {
            code,
            signal,
            reason,
        }
    }

    pub(super) fn unknown(reason: impl Into<String>) -> Self {
        Exit {
            reason: reason.into(),
            ..Exit::default()
        }
    }
}

/// A start that did not come up: what to tell the caller, and how the process ended.
#[derive(Debug)]
pub(super) struct LaunchFailure {
    pub what: String,
    pub exit: Exit,
}

/// A worker's running process.
#[derive(Debug)]
pub(super) enum Process {
    /// Our child: its exit status is known.
    Child(tokio::process::Child),
    /// Adopted from an earlier agent: not our child, its exit status is unknown.
    Adopted(ProcessId),
}

impl Process {
    /// Waits until the process has exited.
    async fn wait(self) -> Exit {
        match self {
            Process::Child(mut child) => Exit::from_status(child.wait().await),
            Process::Adopted(id) => {
                id.exited().await;
                Exit::unknown("exited (exit status unknown: adopted, not started by this agent)")
            }
        }
    }
}

impl Workers {
    /// The command line of a worker process.
    fn command(&self, worker: &Worker) -> tokio::process::Command {
        let c = &self.config;
        let mut command = tokio::process::Command::new(&c.exe);
        command
            .arg("worker")
            .args(["--id", &worker.id, "--node", &c.node, "--type"])
            .arg(record::kind_name(worker.kind))
            .arg("--control")
            .arg(control::socket_path(&c.runtime_dir, &worker.id))
            .args(["--parent-pid", &std::process::id().to_string()])
            .arg("--agent-key")
            .arg(c.runtime_dir.join(control::KEY_FILE))
            .args(["--adopt-grace", &c.adopt_grace.as_secs_f64().to_string()])
            // A stopping web worker drains within the agent's stop timeout.
            .args([
                "--drain-timeout",
                &(c.stop_timeout.as_secs_f64() * 0.8).to_string(),
            ]);
        if !worker.options.cpu_affinity.is_empty() {
            let cpus: Vec<String> = worker
                .options
                .cpu_affinity
                .iter()
                .map(u32::to_string)
                .collect();
            command.args(["--cpu-affinity", &cpus.join(",")]);
        }
        command
            .args(&worker.options.arguments)
            .envs(&worker.options.env)
            .stdin(Stdio::null())
            // Its own process group: a terminal's Ctrl-C reaches the agent, which decides.
            .process_group(0);
        command
    }

    /// The write end of a new FIFO for the worker's `stream`, whose read end is pumped into
    /// the worker's log (`None`: no FIFO could be made; use a pipe).
    fn log_fifo(&self, worker: &Arc<Worker>, stream: LogStream) -> Option<std::fs::File> {
        let path = files::log_fifo(&self.config.runtime_dir, &worker.id, stream);
        let made = files::make_fifo(&path).and_then(|()| {
            let rx = tokio::net::unix::pipe::OpenOptions::new().open_receiver(&path)?;
            // Opening for writing does not block: the read end is open.
            let tx = std::fs::OpenOptions::new().write(true).open(&path)?;
            Ok((rx, tx))
        });
        match made {
            Ok((rx, tx)) => {
                let w = worker.clone();
                tokio::spawn(async move { w.log.pump(rx, stream).await });
                Some(tx)
            }
            Err(e) => {
                tracing::warn!(worker = %worker.id, error = %e, "cannot make a log FIFO; using a pipe (this output is lost when the agent restarts)");
                None
            }
        }
    }

    /// Pumps the output of an adopted worker from its FIFOs.
    pub(super) fn follow_log(&self, worker: &Arc<Worker>) {
        for stream in [LogStream::Stdout, LogStream::Stderr] {
            let path = files::log_fifo(&self.config.runtime_dir, &worker.id, stream);
            if let Ok(rx) = tokio::net::unix::pipe::OpenOptions::new().open_receiver(&path) {
                let w = worker.clone();
                tokio::spawn(async move { w.log.pump(rx, stream).await });
            }
        }
    }

    /// Spawns the worker's process and waits until it answers on its control socket.
    pub(super) async fn launch(&self, worker: &Arc<Worker>) -> Result<Process, LaunchFailure> {
        let mut child = self.spawn(worker)?;
        let timeout = self.config.start_timeout;
        let answered = tokio::select! {
            ready = tokio::time::timeout(timeout, answers(worker)) => Some(ready.is_ok()),
            _ = worker.stop.cancelled() => None,
            status = child.wait() => {
                let exit = Exit::from_status(status);
                let what = format!("exited during start-up: {}", exit.reason);
                return Err(LaunchFailure { what, exit });
            }
        };
        match answered {
            Some(true) => Ok(Process::Child(child)),
            Some(false) => {
                let _ = child.start_kill();
                let exit = Exit::from_status(child.wait().await);
                let what = format!("did not answer within {timeout:?}");
                Err(LaunchFailure { what, exit })
            }
            None => {
                self.signal(worker, Signal::SIGTERM);
                let exit = match tokio::time::timeout(self.config.stop_timeout, child.wait()).await
                {
                    Ok(status) => Exit::from_status(status),
                    Err(_) => {
                        let _ = child.start_kill();
                        Exit::from_status(child.wait().await)
                    }
                };
                let what = "was stopped during start-up".to_owned();
                Err(LaunchFailure { what, exit })
            }
        }
    }

    /// Spawns the worker's process, its output pumped into its log; records it.
    fn spawn(&self, worker: &Arc<Worker>) -> Result<tokio::process::Child, LaunchFailure> {
        let mut command = self.command(worker);
        let out = self.log_fifo(worker, LogStream::Stdout);
        let err = self.log_fifo(worker, LogStream::Stderr);
        let piped = (out.is_none(), err.is_none());
        command.stdout(out.map_or_else(Stdio::piped, Stdio::from));
        command.stderr(err.map_or_else(Stdio::piped, Stdio::from));
        let spawned = command.spawn();
        // Our copies of the FIFOs' write ends close here: EOF comes when the worker exits.
        drop(command);
        let mut child = spawned.map_err(|e| LaunchFailure {
            what: "could not be started".to_owned(),
            exit: Exit::unknown(format!("cannot spawn {}: {e}", self.config.exe.display())),
        })?;
        for (piped, stream) in [(piped.0, LogStream::Stdout), (piped.1, LogStream::Stderr)] {
            let reader: Option<Box<dyn tokio::io::AsyncRead + Send + Unpin>> = match stream {
                _ if !piped => None,
                LogStream::Stderr => child.stderr.take().map(|r| Box::new(r) as _),
                _ => child.stdout.take().map(|r| Box::new(r) as _),
            };
            if let Some(reader) = reader {
                let w = worker.clone();
                tokio::spawn(async move { w.log.pump(reader, stream).await });
            }
        }
        let pid = child.id().unwrap_or(0);
        let process = ProcessId::of(pid);
        worker.state.send_modify(|s| {
            s.pid = pid;
            s.process = process;
            s.adopted = false;
        });
        self.persist(worker);
        Ok(child)
    }

    /// Supervises a started worker until it ends for good.
    pub(super) async fn supervise(self, worker: Arc<Worker>, process: Process) {
        let exit = process.wait().await;
        self.after_exit(worker, exit).await;
    }

    /// The worker's process ended with `exit`: it ended for good (stop requested, or restart
    /// policy never), or it is started again until it runs, backing off while it keeps failing.
    pub(super) async fn after_exit(self, worker: Arc<Worker>, mut exit: Exit) {
        let mut failures = 0u32;
        loop {
            // `exit`: how the last process, or the last attempt to start one, ended.
            if worker.stop.is_cancelled() || !worker.restarts_on_failure() {
                self.ended(&worker, &exit);
                return;
            }
            failures = if worker.serving_for() >= self.config.backoff.stable {
                1
            } else {
                failures + 1
            };
            let delay = self.config.backoff.delay(failures);
            let first = worker.status() != WorkerStatus::Restarting;
            self.restarting(&worker, &exit, delay);
            if first {
                self.publish(&worker, ProcessEventType::OnWorkerFailed, "");
            }
            if !self.wait_to_restart(&worker, delay, &exit).await {
                return;
            }
            let spawned = Instant::now();
            exit = match self.launch(&worker).await {
                Ok(process) => {
                    self.restarted(&worker, spawned).await;
                    process.wait().await
                }
                Err(failure) => Exit {
                    reason: format!("restart {}", failure.what),
                    ..failure.exit
                },
            };
        }
    }

    /// Marks the worker restarting after `exit`, next attempt in `delay`; logs and records it.
    fn restarting(&self, worker: &Worker, exit: &Exit, delay: Duration) {
        let at = SystemTime::now() + delay;
        let when = if delay.is_zero() {
            "now".to_owned()
        } else {
            format!("in {:.1}s", delay.as_secs_f64())
        };
        worker.state.send_modify(|s| {
            if s.status == WorkerStatus::Stopping {
                return;
            }
            s.status = WorkerStatus::Restarting;
            s.process = None;
            s.adopted = false;
            s.exit_code = exit.code;
            s.exit_signal = exit.signal;
            s.reason = format!("{}; restarting {when}", exit.reason);
            s.next_restart = Some(at);
        });
        tracing::warn!(worker = %worker.id, reason = %exit.reason, ?delay, "worker failed; restarting it");
        self.persist(worker);
    }

    /// Waits `delay` before a restart attempt; false if the worker was stopped meanwhile (it is
    /// then stopped) or the agent is shutting down (the attempt is left to the next agent).
    async fn wait_to_restart(&self, worker: &Worker, delay: Duration, exit: &Exit) -> bool {
        tokio::select! {
            biased;
            _ = worker.stop.cancelled() => {}
            _ = tokio::time::sleep(delay) => {}
        }
        if self.shutdown.is_cancelled() && !worker.stop.is_cancelled() {
            // Keep the record as it is; stop_all (a stop for good) still ends it.
            worker.stop.cancelled().await;
        }
        if worker.stop.is_cancelled() {
            self.ended(worker, exit);
            return false;
        }
        worker.state.send_modify(|s| s.restarts += 1);
        self.count_start(&worker.id, 1);
        true
    }

    /// A restarted process answers: replays the worker's configuration, then reports it started.
    async fn restarted(&self, worker: &Arc<Worker>, spawned: Instant) {
        let applied = crate::lock(&worker.applied).clone();
        let failed = applied.replay(&worker.id, &mut worker.controls()).await;
        if !failed.is_empty() {
            tracing::warn!(worker = %worker.id, ?failed, "restarted worker: some of its configuration could not be replayed (its monitor applies it again)");
        }
        if self.ready(worker, spawned) {
            let restarts = worker.state.borrow().restarts;
            tracing::info!(worker = %worker.id, pid = worker.pid(), restarts, "worker restarted");
            self.publish(worker, ProcessEventType::OnWorkerRestarted, "");
        }
    }

    /// The worker ended for good: stopped if that was asked for, else failed.
    pub(super) fn ended(&self, worker: &Worker, exit: &Exit) {
        let requested = worker.stop.is_cancelled();
        // Files first: whoever waits for the status (a stop) finds them gone.
        self.retire(worker);
        worker.state.send_modify(|s| {
            s.status = if requested {
                WorkerStatus::Stopped
            } else {
                WorkerStatus::Failed
            };
            s.process = None;
            s.next_restart = None;
            if exit.code.is_some() || exit.signal.is_some() || !requested {
                s.exit_code = exit.code;
                s.exit_signal = exit.signal;
            }
            s.reason = if requested {
                String::new()
            } else {
                exit.reason.clone()
            };
        });
        if requested {
            tracing::info!(worker = %worker.id, reason = %exit.reason, "worker stopped");
        } else {
            tracing::warn!(worker = %worker.id, reason = %exit.reason, "worker failed");
            self.publish(worker, ProcessEventType::OnWorkerFailed, "");
        }
    }
}

/// Resolves once the worker answers on its control socket.
pub(super) async fn answers(worker: &Worker) {
    let mut client = worker.client();
    loop {
        let probe = client.uptime(pb::UptimeRequest {
            process: worker.id.clone(),
        });
        if tokio::time::timeout(Duration::from_millis(500), probe)
            .await
            .is_ok_and(|r| r.is_ok())
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_restart_is_immediate_then_the_delay_doubles_to_the_cap() {
        let b = Backoff {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(3),
            stable: Duration::from_secs(10),
        };
        let delays: Vec<u128> = (1..=7).map(|n| b.delay(n).as_millis()).collect();
        assert_eq!(delays, [0, 500, 1000, 2000, 3000, 3000, 3000]);
        assert_eq!(b.delay(1000), Duration::from_secs(3), "no overflow");
    }
}
