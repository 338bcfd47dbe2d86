//! Adopting the workers of an earlier agent on the same runtime directory, before the agent
//! serves (so that nobody sees the node without its workers and starts them twice).
//!
//! For each record: a process with the recorded pid *and* start time that answers on its
//! control socket (with the agent key) is adopted: it keeps its pid, options, configuration
//! and restart count, and is supervised through a pidfd (it is not our child: its exit status
//! will be unknown). A recorded process that is gone (or whose pid now names another process)
//! failed while no agent watched: with restart policy on failure it is started again, its
//! configuration replayed. One that runs but does not answer is killed and treated the same.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use switchyard::pb::agent::v1::WorkerStatus;

use super::pid::ProcessId;
use super::record::{self, Record};
use super::supervise::{Exit, Process, answers};
use super::{Worker, Workers, check_worker_id};

/// Time an adopted worker has to answer on its control socket.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// What adoption found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Adoption {
    /// Live workers adopted as they are.
    pub adopted: usize,
    /// Recorded workers that were gone, now restarting.
    pub restarting: usize,
    /// Recorded workers that were gone for good (restart policy never, or unusable records).
    pub dropped: usize,
}

enum Outcome {
    Adopted,
    Restarting,
    Dropped,
}

impl Workers {
    /// Adopts every worker recorded in the runtime directory (concurrently).
    pub async fn adopt(&self) -> Adoption {
        if self.simulated.is_some() {
            return Adoption::default();
        }
        let (records, bad) = match Record::read_all(&self.config.runtime_dir) {
            Ok(found) => found,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the worker records");
                return Adoption::default();
            }
        };
        let mut report = Adoption::default();
        for (path, why) in bad {
            tracing::warn!(record = %path.display(), %why, "ignoring an unusable worker record");
            report.dropped += 1;
        }
        let outcomes =
            futures::future::join_all(records.into_iter().map(|r| self.adopt_one(r))).await;
        for outcome in outcomes {
            match outcome {
                Outcome::Adopted => report.adopted += 1,
                Outcome::Restarting => report.restarting += 1,
                Outcome::Dropped => report.dropped += 1,
            }
        }
        report
    }

    async fn adopt_one(&self, r: Record) -> Outcome {
        let kind = record::kind_of(&r.kind);
        let (Some(kind), Ok(())) = (kind, check_worker_id("id", &r.id)) else {
            return Outcome::Dropped;
        };
        let mut worker = self.new_worker(&r.id, kind, r.options.0.clone());
        worker.created = record::from_ms(r.created_ms);
        *crate::lock(&worker.applied) = r.applied.clone();
        worker.state.send_modify(|s| {
            s.restarts = r.restarts;
            s.pid = r.process.map_or(0, |p| p.pid);
        });
        let worker = Arc::new(worker);
        self.map().insert(r.id.clone(), worker.clone());
        self.count_start(&r.id, 1 + u64::from(r.restarts));

        let live = r.process.filter(ProcessId::is_running);
        let exit = match live {
            Some(process) => match self.take_over(&worker, process, &r).await {
                Ok(()) => {
                    tracing::info!(worker = %r.id, pid = process.pid, "adopted a worker");
                    let me = self.clone();
                    tokio::spawn(me.supervise(worker, Process::Adopted(process)));
                    return Outcome::Adopted;
                }
                Err(exit) => exit,
            },
            None => Exit::unknown("exited while no agent was running (exit status unknown)"),
        };
        tracing::warn!(worker = %r.id, reason = %exit.reason, "a recorded worker is gone");
        let restarts = worker.restarts_on_failure();
        tokio::spawn(self.clone().after_exit(worker, exit));
        if restarts {
            Outcome::Restarting
        } else {
            Outcome::Dropped
        }
    }

    /// Connects to a live recorded worker; on success it is started (adopted), else it is
    /// killed and the error says so.
    async fn take_over(
        &self,
        worker: &Arc<Worker>,
        process: ProcessId,
        r: &Record,
    ) -> Result<(), Exit> {
        worker.state.send_modify(|s| {
            s.process = Some(process);
            s.adopted = true;
        });
        self.follow_log(worker);
        if tokio::time::timeout(ANSWER_TIMEOUT, answers(worker))
            .await
            .is_err()
        {
            if process.is_running() {
                let _ = kill(Pid::from_raw(process.pid as i32), Signal::SIGKILL);
                process.exited().await;
            }
            return Err(Exit::unknown(format!(
                "did not answer on its control socket within {ANSWER_TIMEOUT:?} after the agent restarted; killed"
            )));
        }
        let started = r.started_ms.map(record::from_ms);
        let served = started
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .unwrap_or_default();
        worker.state.send_modify(|s| {
            s.status = WorkerStatus::Started;
            s.started = started.or_else(|| Some(SystemTime::now()));
            s.started_instant = Instant::now().checked_sub(served).or(Some(Instant::now()));
        });
        self.persist(worker);
        tokio::spawn(self.clone().relay_events(worker.clone()));
        Ok(())
    }
}
