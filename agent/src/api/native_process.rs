//! `switchyard.agent.v1.NativeProcessService` of the node: calls for `"controller"` are served by
//! the agent's own [`LocalProcess`](crate::process::LocalProcess); calls for a worker are forwarded
//! to the worker over its control socket, with the caller's deadline and principal, and the
//! worker's answer (a status included) is relayed unchanged. Stats streams and `Watch` are
//! node-wide and served here.

use std::collections::HashMap;
use std::sync::Arc;

use switchyard::pb::agent::v1::native_process_service_client::NativeProcessServiceClient;
use switchyard::pb::agent::v1::native_process_service_server::NativeProcessService;
use switchyard::pb::agent::v1::{self as pb, WorkerStatus};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use super::forwarded;
use crate::Agent;
use crate::controller::CONTROLLER;
use crate::error::{Error, Result};
use crate::events::async_stream;
use crate::process::{MIN_STREAM_INTERVAL, check_interval, stats};

/// Process control of the node.
#[derive(Debug)]
pub struct NativeProcessApi {
    agent: Arc<Agent>,
}

impl NativeProcessApi {
    /// Process control for `agent`.
    pub fn new(agent: Arc<Agent>) -> Self {
        NativeProcessApi { agent }
    }
}

/// Where a call goes.
enum Route {
    Controller,
    Worker(NativeProcessServiceClient<Channel>),
}

fn route(agent: &Agent, process: &str) -> Result<Route> {
    match process {
        "" => Err(Error::invalid(
            "process",
            "required: \"controller\" or a worker id",
        )),
        CONTROLLER => Ok(Route::Controller),
        id => {
            let worker = agent.workers.get(id)?;
            worker.check_started()?;
            Ok(Route::Worker(worker.client()))
        }
    }
}

/// Serves a unary call for the controller, or forwards it to the worker and relays its answer
/// (the worker's own status on failure: it already carries the code and reason).
macro_rules! routed {
    ($self:ident, $request:ident, $method:ident) => {{
        match route(&$self.agent, &$request.get_ref().process)? {
            Route::Controller => {
                NativeProcessService::$method(&$self.agent.controller, $request).await
            }
            Route::Worker(mut client) => client.$method(forwarded($request)).await,
        }
    }};
}

#[tonic::async_trait]
impl NativeProcessService for NativeProcessApi {
    async fn get_cpu_count(
        &self,
        request: Request<pb::GetCpuCountRequest>,
    ) -> Result<Response<pb::GetCpuCountResponse>, Status> {
        routed!(self, request, get_cpu_count)
    }

    async fn get_cpus(
        &self,
        request: Request<pb::GetCpusRequest>,
    ) -> Result<Response<pb::GetCpusResponse>, Status> {
        routed!(self, request, get_cpus)
    }

    async fn get_cpu_affinity(
        &self,
        request: Request<pb::GetCpuAffinityRequest>,
    ) -> Result<Response<pb::GetCpuAffinityResponse>, Status> {
        routed!(self, request, get_cpu_affinity)
    }

    async fn set_cpu_affinity(
        &self,
        request: Request<pb::SetCpuAffinityRequest>,
    ) -> Result<Response<pb::SetCpuAffinityResponse>, Status> {
        routed!(self, request, set_cpu_affinity)
    }

    async fn get_process_info(
        &self,
        request: Request<pb::GetProcessInfoRequest>,
    ) -> Result<Response<pb::GetProcessInfoResponse>, Status> {
        routed!(self, request, get_process_info)
    }

    async fn get_process_stats(
        &self,
        request: Request<pb::GetProcessStatsRequest>,
    ) -> Result<Response<pb::GetProcessStatsResponse>, Status> {
        routed!(self, request, get_process_stats)
    }

    async fn get_process_monitor(
        &self,
        request: Request<pb::GetProcessMonitorRequest>,
    ) -> Result<Response<pb::GetProcessMonitorResponse>, Status> {
        routed!(self, request, get_process_monitor)
    }

    async fn set_process_stats_monitoring(
        &self,
        request: Request<pb::SetProcessStatsMonitoringRequest>,
    ) -> Result<Response<pb::SetProcessStatsMonitoringResponse>, Status> {
        routed!(self, request, set_process_stats_monitoring)
    }

    /// Node-wide: the agent samples `/proc/<pid>` of every requested process itself, so one
    /// stream of many workers costs one timer and a few file reads per sample.
    async fn stream_process_stats(
        &self,
        request: Request<pb::StreamProcessStatsRequest>,
    ) -> Result<Response<tonic::codegen::BoxStream<pb::StreamProcessStatsResponse>>, Status> {
        let req = request.into_inner();
        let period = check_interval("interval", req.interval, MIN_STREAM_INTERVAL)?;
        for (i, p) in req.processes.iter().enumerate() {
            match p.as_str() {
                "" => {
                    return Err(
                        Error::invalid(format!("processes[{i}]"), "empty process name").into(),
                    );
                }
                CONTROLLER => {}
                id => {
                    self.agent.workers.get(id)?;
                }
            }
        }
        let agent = self.agent.clone();
        let stream = async_stream(move |tx| async move {
            let mut ticker = tokio::time::interval(period);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut samplers: HashMap<(String, u32), (stats::Sampler, u64)> = HashMap::new();
            loop {
                tokio::select! {
                    _ = agent.shutdown.cancelled() => return,
                    _ = ticker.tick() => {}
                }
                let targets = targets(&agent, &req.processes);
                samplers.retain(|key, _| targets.contains(key));
                for (name, pid) in targets {
                    let (sampler, seq) = samplers.entry((name.clone(), pid)).or_default();
                    let Ok(stats) = sampler.sample(pid) else {
                        continue;
                    };
                    *seq += 1;
                    let item = pb::StreamProcessStatsResponse {
                        seq: *seq,
                        process: name,
                        stats: Some(stats),
                    };
                    if tx.send(Ok(item)).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(stream))
    }

    async fn start_manhole(
        &self,
        request: Request<pb::StartManholeRequest>,
    ) -> Result<Response<pb::StartManholeResponse>, Status> {
        routed!(self, request, start_manhole)
    }

    async fn stop_manhole(
        &self,
        request: Request<pb::StopManholeRequest>,
    ) -> Result<Response<pb::StopManholeResponse>, Status> {
        routed!(self, request, stop_manhole)
    }

    async fn get_manhole(
        &self,
        request: Request<pb::GetManholeRequest>,
    ) -> Result<Response<pb::GetManholeResponse>, Status> {
        routed!(self, request, get_manhole)
    }

    async fn trigger_gc(
        &self,
        request: Request<pb::TriggerGcRequest>,
    ) -> Result<Response<pb::TriggerGcResponse>, Status> {
        routed!(self, request, trigger_gc)
    }

    async fn utcnow(
        &self,
        request: Request<pb::UtcnowRequest>,
    ) -> Result<Response<pb::UtcnowResponse>, Status> {
        routed!(self, request, utcnow)
    }

    async fn started(
        &self,
        request: Request<pb::StartedRequest>,
    ) -> Result<Response<pb::StartedResponse>, Status> {
        routed!(self, request, started)
    }

    async fn uptime(
        &self,
        request: Request<pb::UptimeRequest>,
    ) -> Result<Response<pb::UptimeResponse>, Status> {
        routed!(self, request, uptime)
    }

    /// Node-wide: the agent's bus carries its own events and those relayed from every worker.
    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<tonic::codegen::BoxStream<pb::WatchResponse>>, Status> {
        NativeProcessService::watch(&self.agent.controller, request).await
    }
}

/// The processes a stats stream samples now: the named ones, or the controller and every live
/// worker; each with its pid.
fn targets(agent: &Agent, names: &[String]) -> Vec<(String, u32)> {
    let all = names.is_empty();
    let mut out = Vec::new();
    if all || names.iter().any(|n| n == CONTROLLER) {
        out.push((CONTROLLER.to_owned(), std::process::id()));
    }
    for worker in agent.workers.list() {
        let id = worker.id();
        if worker.status() == WorkerStatus::Started && (all || names.iter().any(|n| n == id)) {
            out.push((id.to_owned(), worker.pid()));
        }
    }
    out
}
