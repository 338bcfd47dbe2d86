//! Process control of the current process: [`LocalProcess`] implements NativeProcessService for
//! "this process". The agent uses it for `"controller"`; every worker serves it on its control
//! socket, and the agent forwards calls addressed to the worker there.
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

use switchyard::error::{Reason, internal, invalid_argument, status};
use switchyard::pb::agent::v1::native_process_service_server::NativeProcessService;
use switchyard::pb::agent::v1::{self as pb, ProcessEventType, process_event};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::events::{EventBus, EventStream, async_stream};
use crate::lock;
use crate::manhole::{self, ManholeError, RunningManhole};

/// Metadata key carrying the original caller's principal on forwarded calls.
pub const WHO_METADATA: &str = "switchyard-who";

/// Longest accepted stats interval, seconds.
pub const MAX_INTERVAL: f64 = 3600.0;
/// Shortest accepted stats stream interval, seconds.
pub const MIN_STREAM_INTERVAL: f64 = 0.05;

/// The principal to name in events: the original caller when the call was forwarded (by the
/// master's gateway, whose role is `master`, or by the agent over a worker's private control
/// socket, where there is no TLS principal), else the direct caller.
pub fn who<T>(request: &Request<T>) -> String {
    let caller = switchyard::auth::caller(request);
    let forwarded = caller.is_none_or(|p| p.role == switchyard::auth::Role::Master);
    if forwarded
        && let Some(who) = request
            .metadata()
            .get(WHO_METADATA)
            .and_then(|v| v.to_str().ok())
    {
        return who.to_owned();
    }
    caller.map_or_else(String::new, |p| p.uri())
}

/// Validates a stats interval in seconds (`field` names it in the error).
pub fn check_interval(field: &str, interval: f64, min: f64) -> Result<Duration, Status> {
    if !interval.is_finite() || interval < min || interval > MAX_INTERVAL {
        return Err(invalid_argument(
            field,
            format!("must be between {min} and {MAX_INTERVAL} seconds, got {interval}"),
        ));
    }
    Ok(Duration::from_secs_f64(interval))
}

/// NativeProcessService for the current process.
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
}

fn manhole_status(e: ManholeError) -> Status {
    match e {
        ManholeError::Invalid { field, message } => invalid_argument(&field, message),
        ManholeError::CannotListen { .. } => status(Reason::CannotListen, e.to_string()),
    }
}

#[tonic::async_trait]
impl NativeProcessService for LocalProcess {
    async fn get_cpu_count(
        &self,
        request: Request<pb::GetCpuCountRequest>,
    ) -> Result<Response<pb::GetCpuCountResponse>, Status> {
        let count = if request.get_ref().logical {
            std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
        } else {
            affinity::physical_cores()
        };
        Ok(Response::new(pb::GetCpuCountResponse { count }))
    }

    async fn get_cpus(
        &self,
        _request: Request<pb::GetCpusRequest>,
    ) -> Result<Response<pb::GetCpusResponse>, Status> {
        Ok(Response::new(pb::GetCpusResponse {
            cpus: self.inner.start_cpus.clone(),
        }))
    }

    async fn get_cpu_affinity(
        &self,
        _request: Request<pb::GetCpuAffinityRequest>,
    ) -> Result<Response<pb::GetCpuAffinityResponse>, Status> {
        let cpus = affinity::get(self.inner.pid).map_err(|e| internal("affinity", &e))?;
        Ok(Response::new(pb::GetCpuAffinityResponse { cpus }))
    }

    async fn set_cpu_affinity(
        &self,
        request: Request<pb::SetCpuAffinityRequest>,
    ) -> Result<Response<pb::SetCpuAffinityResponse>, Status> {
        let who = who(&request);
        let req = request.into_inner();
        let to_status = |e: affinity::AffinityError| match e {
            affinity::AffinityError::Invalid(m) => {
                invalid_argument("cpus", m.trim_start_matches("cpus: "))
            }
            affinity::AffinityError::Os(m) => internal("set affinity", &m),
        };
        let cpus = affinity::resolve(&req.cpus, req.relative, &self.inner.start_cpus)
            .map_err(to_status)?;
        let affinity = affinity::set_process(self.inner.pid, &cpus).map_err(to_status)?;
        self.publish(
            ProcessEventType::OnCpuAffinitySet,
            &who,
            process_event::Details::CpuAffinity(pb::CpuAffinityEventDetails {
                cpus: req.cpus,
                relative: req.relative,
                affinity: affinity.clone(),
            }),
        );
        Ok(Response::new(pb::SetCpuAffinityResponse { affinity }))
    }

    async fn get_process_info(
        &self,
        _request: Request<pb::GetProcessInfoRequest>,
    ) -> Result<Response<pb::GetProcessInfoResponse>, Status> {
        let info = tokio::task::spawn_blocking(info::current)
            .await
            .map_err(|e| internal("process info", &e))?
            .map_err(|e| internal("process info", &e))?;
        Ok(Response::new(info))
    }

    async fn get_process_stats(
        &self,
        _request: Request<pb::GetProcessStatsRequest>,
    ) -> Result<Response<pb::GetProcessStatsResponse>, Status> {
        let stats = lock(&self.inner.sampler)
            .sample(self.inner.pid)
            .map_err(|e| internal("process stats", &e))?;
        Ok(Response::new(pb::GetProcessStatsResponse {
            stats: Some(stats),
        }))
    }

    async fn get_process_monitor(
        &self,
        _request: Request<pb::GetProcessMonitorRequest>,
    ) -> Result<Response<pb::GetProcessMonitorResponse>, Status> {
        let monitor = lock(&self.inner.monitor_sampler)
            .monitor(self.inner.pid)
            .map_err(|e| internal("process monitor", &e))?;
        Ok(Response::new(monitor))
    }

    async fn set_process_stats_monitoring(
        &self,
        request: Request<pb::SetProcessStatsMonitoringRequest>,
    ) -> Result<Response<pb::SetProcessStatsMonitoringResponse>, Status> {
        let who = who(&request);
        let interval = request.get_ref().interval;
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
            let inner = self.inner.clone();
            tokio::spawn(async move {
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
            });
        }
        drop(slot);
        self.publish(
            ProcessEventType::OnProcessStatsMonitoringSet,
            &who,
            process_event::Details::StatsMonitoring(pb::StatsMonitoringEventDetails { interval }),
        );
        Ok(Response::new(pb::SetProcessStatsMonitoringResponse {
            interval,
        }))
    }

    async fn stream_process_stats(
        &self,
        request: Request<pb::StreamProcessStatsRequest>,
    ) -> Result<Response<tonic::codegen::BoxStream<pb::StreamProcessStatsResponse>>, Status> {
        let period = check_interval("interval", request.get_ref().interval, MIN_STREAM_INTERVAL)?;
        let inner = self.inner.clone();
        let stream = async_stream(move |tx| async move {
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
                    .map_err(|e| internal("process stats", &e));
                if tx.send(item).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(stream))
    }

    async fn start_manhole(
        &self,
        request: Request<pb::StartManholeRequest>,
    ) -> Result<Response<pb::StartManholeResponse>, Status> {
        let who = who(&request);
        let config = request
            .into_inner()
            .config
            .ok_or_else(|| invalid_argument("config", "required"))?;
        let mut slot = self.inner.manhole.lock().await;
        if slot.is_some() {
            return Err(status(
                Reason::AlreadyStarted,
                "a manhole is already running in this process",
            ));
        }
        self.publish(
            ProcessEventType::OnManholeStarting,
            &who,
            process_event::Details::Manhole(pb::ManholeEventDetails {
                manhole: Some(pb::Manhole {
                    status: pb::ManholeStatus::Starting as i32,
                    port: config.port,
                    interface: config.interface.clone(),
                    who: who.clone(),
                    ..Default::default()
                }),
            }),
        );
        let running = manhole::start(config, &who, self.inner.started)
            .await
            .map_err(manhole_status)?;
        let info = running.info.clone();
        *slot = Some(running);
        self.publish(
            ProcessEventType::OnManholeStarted,
            &who,
            process_event::Details::Manhole(pb::ManholeEventDetails {
                manhole: Some(info.clone()),
            }),
        );
        Ok(Response::new(pb::StartManholeResponse {
            manhole: Some(info),
        }))
    }

    async fn stop_manhole(
        &self,
        request: Request<pb::StopManholeRequest>,
    ) -> Result<Response<pb::StopManholeResponse>, Status> {
        let who = who(&request);
        let running = self
            .inner
            .manhole
            .lock()
            .await
            .take()
            .ok_or_else(|| status(Reason::NotStarted, "no manhole runs in this process"))?;
        let mut stopping = running.info.clone();
        stopping.status = pb::ManholeStatus::Stopping as i32;
        self.publish(
            ProcessEventType::OnManholeStopping,
            &who,
            process_event::Details::Manhole(pb::ManholeEventDetails {
                manhole: Some(stopping),
            }),
        );
        let info = running.stop().await;
        self.publish(
            ProcessEventType::OnManholeStopped,
            &who,
            process_event::Details::Manhole(pb::ManholeEventDetails {
                manhole: Some(info.clone()),
            }),
        );
        Ok(Response::new(pb::StopManholeResponse {
            manhole: Some(info),
        }))
    }

    async fn get_manhole(
        &self,
        _request: Request<pb::GetManholeRequest>,
    ) -> Result<Response<pb::GetManholeResponse>, Status> {
        let manhole = self
            .inner
            .manhole
            .lock()
            .await
            .as_ref()
            .map(|m| m.info.clone());
        Ok(Response::new(pb::GetManholeResponse { manhole }))
    }

    async fn trigger_gc(
        &self,
        request: Request<pb::TriggerGcRequest>,
    ) -> Result<Response<pb::TriggerGcResponse>, Status> {
        let who = who(&request);
        let result = tokio::task::spawn_blocking(gc::trim)
            .await
            .map_err(|e| internal("trim", &e))?;
        self.publish(
            ProcessEventType::OnGcFinished,
            &who,
            process_event::Details::Gc(pb::GcEventDetails {
                result: Some(result),
            }),
        );
        Ok(Response::new(result))
    }

    async fn utcnow(
        &self,
        _request: Request<pb::UtcnowRequest>,
    ) -> Result<Response<pb::UtcnowResponse>, Status> {
        Ok(Response::new(pb::UtcnowResponse {
            utcnow: crate::controller::iso8601(SystemTime::now()),
        }))
    }

    async fn started(
        &self,
        _request: Request<pb::StartedRequest>,
    ) -> Result<Response<pb::StartedResponse>, Status> {
        Ok(Response::new(pb::StartedResponse {
            started: crate::controller::iso8601(self.inner.started_at),
        }))
    }

    async fn uptime(
        &self,
        _request: Request<pb::UptimeRequest>,
    ) -> Result<Response<pb::UptimeResponse>, Status> {
        Ok(Response::new(pb::UptimeResponse {
            uptime: self.uptime_secs(),
        }))
    }

    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<tonic::codegen::BoxStream<pb::WatchResponse>>, Status> {
        let events: EventStream = self
            .inner
            .events
            .watch(request.into_inner(), self.inner.shutdown.clone())?;
        use futures::StreamExt;
        Ok(Response::new(Box::pin(events.map(|r| {
            r.map(|event| pb::WatchResponse { event: Some(event) })
        }))))
    }
}
