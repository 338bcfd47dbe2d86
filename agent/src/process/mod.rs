//! Process control of the current process: [`LocalProcess`] does what NativeProcessService
//! asks of "this process" (its gRPC adapter is `api/process.rs`). The agent uses it for
//! `"controller"`; every worker serves it on its control socket, and the agent forwards calls
//! addressed to the worker there.
//!
//! - [`stats`]: counters from `/proc/<pid>`, rates between samples.
//! - [`affinity`]: CPU affinity of every thread.
//! - [`info`]: descriptors, files, sockets.
//! - [`gc`]: allocator trim.

pub mod affinity;
pub mod gc;
pub mod info;
pub mod stats;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use switchyard::pb::agent::v1::{self as pb, ProcessEventType, process_event};
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::events::{EventBus, EventStream, async_stream};
use crate::lock;
use crate::manhole::{self, RunningManhole};

/// Longest accepted stats interval, seconds.
pub const MAX_INTERVAL: f64 = 3600.0;
/// Shortest accepted stats stream interval, seconds.
pub const MIN_STREAM_INTERVAL: f64 = 0.05;

/// Validates a stats interval in seconds (`field` names it in the error).
pub fn check_interval(field: &str, interval: f64, min: f64) -> Result<Duration> {
    if !interval.is_finite() || interval < min || interval > MAX_INTERVAL {
        return Err(Error::invalid(
            field,
            format!("must be between {min} and {MAX_INTERVAL} seconds, got {interval}"),
        ));
    }
    Ok(Duration::from_secs_f64(interval))
}

/// Process control of the current process.
#[derive(Debug)]
pub struct LocalProcess {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// "controller" or the worker id: the `process` of published events.
    name: String,
    pid: u32,
    started_at: SystemTime,
    started: Instant,
    start_cpus: Vec<u32>,
    events: EventBus,
    sampler: Mutex<stats::Sampler>,
    monitor_sampler: Mutex<stats::Sampler>,
    monitoring: Mutex<Option<(CancellationToken, f64)>>,
    manhole: tokio::sync::Mutex<Option<RunningManhole>>,
    shutdown: CancellationToken,
}

/// The error of an affinity call: a bad `cpus` argument, or an OS failure while doing `context`.
fn affinity_error(context: &'static str) -> impl Fn(affinity::AffinityError) -> Error {
    move |e| match e {
        affinity::AffinityError::Invalid(m) => Error::invalid("cpus", m),
        affinity::AffinityError::Os(m) => Error::internal(context, m),
    }
}

impl LocalProcess {
    /// Process control of the current process, named `name`, publishing to `events`.
    pub fn new(name: &str, events: EventBus, shutdown: CancellationToken) -> Self {
        let pid = std::process::id();
        LocalProcess {
            inner: Arc::new(Inner {
                name: name.to_owned(),
                pid,
                started_at: SystemTime::now(),
                started: Instant::now(),
                start_cpus: affinity::get(pid).unwrap_or_default(),
                events,
                sampler: Mutex::default(),
                monitor_sampler: Mutex::default(),
                monitoring: Mutex::default(),
                manhole: tokio::sync::Mutex::default(),
                shutdown,
            }),
        }
    }

    /// When this process started (wall clock).
    pub fn started_at(&self) -> SystemTime {
        self.inner.started_at
    }

    /// Seconds since this process started.
    pub fn uptime_secs(&self) -> f64 {
        self.inner.started.elapsed().as_secs_f64()
    }

    fn publish(&self, kind: ProcessEventType, who: &str, details: process_event::Details) {
        self.inner
            .events
            .publish(kind, &self.inner.name, who, details);
    }

    /// The host's CPU cores, logical (hyper-threads) or physical, whatever this process's
    /// affinity.
    pub fn cpu_count(&self, logical: bool) -> u32 {
        if logical {
            affinity::logical_cpus()
        } else {
            affinity::physical_cores()
        }
    }

    /// The CPUs this process was allowed to run on when it started.
    pub fn start_cpus(&self) -> Vec<u32> {
        self.inner.start_cpus.clone()
    }

    /// The CPUs this process may run on now.
    pub fn cpu_affinity(&self) -> Result<Vec<u32>> {
        affinity::get(self.inner.pid).map_err(affinity_error("affinity"))
    }

    /// Pins every thread to `cpus` (indexes into [`Self::start_cpus`] when `relative`), publishes
    /// `on_cpu_affinity_set` naming `who`, and returns the affinity read back.
    pub fn set_affinity(&self, cpus: Vec<u32>, relative: bool, who: &str) -> Result<Vec<u32>> {
        let to_error = affinity_error("set affinity");
        let resolved =
            affinity::resolve(&cpus, relative, &self.inner.start_cpus).map_err(&to_error)?;
        let affinity = affinity::set_process(self.inner.pid, &resolved).map_err(&to_error)?;
        self.publish(
            ProcessEventType::OnCpuAffinitySet,
            who,
            process_event::Details::CpuAffinity(pb::CpuAffinityEventDetails {
                cpus,
                relative,
                affinity: affinity.clone(),
            }),
        );
        Ok(affinity)
    }

    /// Open descriptors, threads, files and sockets.
    pub async fn process_info(&self) -> Result<pb::GetProcessInfoResponse> {
        tokio::task::spawn_blocking(info::current)
            .await
            .map_err(|e| Error::internal("process info", e))?
            .map_err(|e| Error::internal("process info", e))
    }

    /// A stats sample (rates since the previous call).
    pub fn process_stats(&self) -> Result<pb::ProcessStats> {
        lock(&self.inner.sampler)
            .sample(self.inner.pid)
            .map_err(|e| Error::internal("process stats", e))
    }

    /// The monitor view of the process.
    pub fn process_monitor(&self) -> Result<pb::GetProcessMonitorResponse> {
        lock(&self.inner.monitor_sampler)
            .monitor(self.inner.pid)
            .map_err(|e| Error::internal("process monitor", e))
    }

    /// Publishes `on_process_stats` every `interval` seconds (0: stops), replacing an earlier
    /// setting, and `on_process_stats_monitoring_set` naming `who`.
    pub fn set_stats_monitoring(&self, interval: f64, who: &str) -> Result<f64> {
        let period = if interval == 0.0 {
            None
        } else {
            Some(check_interval("interval", interval, MIN_STREAM_INTERVAL)?)
        };
        let mut slot = lock(&self.inner.monitoring);
        if let Some((token, _)) = slot.take() {
            token.cancel();
        }
        if let Some(period) = period {
            let token = self.inner.shutdown.child_token();
            *slot = Some((token.clone(), interval));
            tokio::spawn(publish_stats(self.inner.clone(), period, token));
        }
        drop(slot);
        self.publish(
            ProcessEventType::OnProcessStatsMonitoringSet,
            who,
            process_event::Details::StatsMonitoring(pb::StatsMonitoringEventDetails { interval }),
        );
        Ok(interval)
    }

    /// A stream of stats samples every `interval` seconds, until shutdown.
    pub fn stats_stream(
        &self,
        interval: f64,
    ) -> Result<tonic::codegen::BoxStream<pb::StreamProcessStatsResponse>> {
        let period = check_interval("interval", interval, MIN_STREAM_INTERVAL)?;
        let inner = self.inner.clone();
        Ok(async_stream(move |tx| async move {
            let mut sampler = stats::Sampler::default();
            let mut ticker = tokio::time::interval(period);
            let mut seq = 0;
            loop {
                tokio::select! {
                    _ = inner.shutdown.cancelled() => return,
                    _ = ticker.tick() => {}
                }
                let item = sampler
                    .sample(inner.pid)
                    .map(|stats| {
                        seq += 1;
                        pb::StreamProcessStatsResponse {
                            seq,
                            process: inner.name.clone(),
                            stats: Some(stats),
                        }
                    })
                    // A stream's items are wire results: the error is converted here, once.
                    .map_err(|e| Error::internal("process stats", e).into());
                if tx.send(item).await.is_err() {
                    return;
                }
            }
        }))
    }

    /// Starts the manhole with `config`, publishing `on_manhole_starting`/`started`.
    pub async fn manhole_start(
        &self,
        config: Option<pb::ManholeConfig>,
        who: &str,
    ) -> Result<pb::Manhole> {
        let config = config.ok_or_else(|| Error::invalid("config", "required"))?;
        let mut slot = self.inner.manhole.lock().await;
        if slot.is_some() {
            return Err(Error::ManholeRunning);
        }
        self.publish(
            ProcessEventType::OnManholeStarting,
            who,
            process_event::Details::Manhole(pb::ManholeEventDetails {
                manhole: Some(pb::Manhole {
                    status: pb::ManholeStatus::Starting as i32,
                    port: config.port,
                    interface: config.interface.clone(),
                    who: who.to_owned(),
                    ..Default::default()
                }),
            }),
        );
        let running = manhole::start(config, who, self.inner.started).await?;
        let info = running.info.clone();
        *slot = Some(running);
        self.publish(
            ProcessEventType::OnManholeStarted,
            who,
            process_event::Details::Manhole(pb::ManholeEventDetails {
                manhole: Some(info.clone()),
            }),
        );
        Ok(info)
    }

    /// Stops the manhole, publishing `on_manhole_stopping`/`stopped`.
    pub async fn manhole_stop(&self, who: &str) -> Result<pb::Manhole> {
        let running = self
            .inner
            .manhole
            .lock()
            .await
            .take()
            .ok_or(Error::NoManhole)?;
        let mut stopping = running.info.clone();
        stopping.status = pb::ManholeStatus::Stopping as i32;
        self.publish(
            ProcessEventType::OnManholeStopping,
            who,
            process_event::Details::Manhole(pb::ManholeEventDetails {
                manhole: Some(stopping),
            }),
        );
        let info = running.stop().await;
        self.publish(
            ProcessEventType::OnManholeStopped,
            who,
            process_event::Details::Manhole(pb::ManholeEventDetails {
                manhole: Some(info.clone()),
            }),
        );
        Ok(info)
    }

    /// The running manhole, if any.
    pub async fn manhole(&self) -> Option<pb::Manhole> {
        self.inner
            .manhole
            .lock()
            .await
            .as_ref()
            .map(|m| m.info.clone())
    }

    /// Trims the allocator, publishing `on_gc_finished` naming `who`.
    pub async fn trim(&self, who: &str) -> Result<pb::TriggerGcResponse> {
        let result = tokio::task::spawn_blocking(gc::trim)
            .await
            .map_err(|e| Error::internal("trim", e))?;
        self.publish(
            ProcessEventType::OnGcFinished,
            who,
            process_event::Details::Gc(pb::GcEventDetails {
                result: Some(result),
            }),
        );
        Ok(result)
    }

    /// The process's events from now on, filtered.
    pub fn events(&self, filter: pb::WatchRequest) -> Result<EventStream> {
        self.inner.events.watch(filter, self.inner.shutdown.clone())
    }
}

/// The stats monitoring task: a sample every `period`, published as `on_process_stats`.
async fn publish_stats(inner: Arc<Inner>, period: Duration, token: CancellationToken) {
    let mut sampler = stats::Sampler::default();
    let mut ticker = tokio::time::interval(period);
    let mut seq = 0u64;
    loop {
        tokio::select! {
            _ = token.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let Ok(stats) = sampler.sample(inner.pid) else {
            continue;
        };
        seq += 1;
        inner.events.publish(
            ProcessEventType::OnProcessStats,
            &inner.name,
            "",
            process_event::Details::ProcessStats(pb::ProcessStatsEventDetails {
                seq,
                stats: Some(stats),
            }),
        );
    }
}
