//! `NativeProcessService` for "this process": the gRPC adapter of
//! [`LocalProcess`](crate::process::LocalProcess). Each call reads its arguments and the
//! caller, calls the process, and converts the crate error once (`?`). The agent calls it for
//! `"controller"`; a worker serves it on its control socket.

use switchyard::pb::agent::v1::native_process_service_server::NativeProcessService;
use switchyard::pb::agent::v1::{self as pb};
use tonic::{Request, Response, Status};

use super::who;
use crate::process::LocalProcess;

type R<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl NativeProcessService for LocalProcess {
    /// Logical cores unless `logical` is set to false (the reference's default).
    async fn get_cpu_count(
        &self,
        request: Request<pb::GetCpuCountRequest>,
    ) -> R<pb::GetCpuCountResponse> {
        let logical = request.get_ref().logical.unwrap_or(true);
        Ok(Response::new(pb::GetCpuCountResponse {
            count: self.cpu_count(logical),
        }))
    }

    async fn get_cpus(&self, _request: Request<pb::GetCpusRequest>) -> R<pb::GetCpusResponse> {
        Ok(Response::new(pb::GetCpusResponse {
            cpus: self.start_cpus(),
        }))
    }

    async fn get_cpu_affinity(
        &self,
        _request: Request<pb::GetCpuAffinityRequest>,
    ) -> R<pb::GetCpuAffinityResponse> {
        Ok(Response::new(pb::GetCpuAffinityResponse {
            cpus: self.cpu_affinity()?,
        }))
    }

    /// `cpus` are relative indexes unless `relative` is set to false (the reference's default).
    async fn set_cpu_affinity(
        &self,
        request: Request<pb::SetCpuAffinityRequest>,
    ) -> R<pb::SetCpuAffinityResponse> {
        let who = who(&request);
        let req = request.into_inner();
        let relative = req.relative.unwrap_or(true);
        Ok(Response::new(pb::SetCpuAffinityResponse {
            affinity: self.set_affinity(req.cpus, relative, &who)?,
        }))
    }

    async fn get_process_info(
        &self,
        _request: Request<pb::GetProcessInfoRequest>,
    ) -> R<pb::GetProcessInfoResponse> {
        Ok(Response::new(self.process_info().await?))
    }

    async fn get_process_stats(
        &self,
        _request: Request<pb::GetProcessStatsRequest>,
    ) -> R<pb::GetProcessStatsResponse> {
        Ok(Response::new(pb::GetProcessStatsResponse {
            stats: Some(self.process_stats()?),
        }))
    }

    async fn get_process_monitor(
        &self,
        _request: Request<pb::GetProcessMonitorRequest>,
    ) -> R<pb::GetProcessMonitorResponse> {
        Ok(Response::new(self.process_monitor()?))
    }

    async fn set_process_stats_monitoring(
        &self,
        request: Request<pb::SetProcessStatsMonitoringRequest>,
    ) -> R<pb::SetProcessStatsMonitoringResponse> {
        let who = who(&request);
        let interval = self.set_stats_monitoring(request.get_ref().interval, &who)?;
        Ok(Response::new(pb::SetProcessStatsMonitoringResponse {
            interval,
        }))
    }

    async fn stream_process_stats(
        &self,
        request: Request<pb::StreamProcessStatsRequest>,
    ) -> R<tonic::codegen::BoxStream<pb::StreamProcessStatsResponse>> {
        Ok(Response::new(
            self.stats_stream(request.get_ref().interval)?,
        ))
    }

    async fn start_manhole(
        &self,
        request: Request<pb::StartManholeRequest>,
    ) -> R<pb::StartManholeResponse> {
        let who = who(&request);
        let manhole = self
            .manhole_start(request.into_inner().config, &who)
            .await?;
        Ok(Response::new(pb::StartManholeResponse {
            manhole: Some(manhole),
        }))
    }

    async fn stop_manhole(
        &self,
        request: Request<pb::StopManholeRequest>,
    ) -> R<pb::StopManholeResponse> {
        let manhole = self.manhole_stop(&who(&request)).await?;
        Ok(Response::new(pb::StopManholeResponse {
            manhole: Some(manhole),
        }))
    }

    async fn get_manhole(
        &self,
        _request: Request<pb::GetManholeRequest>,
    ) -> R<pb::GetManholeResponse> {
        Ok(Response::new(pb::GetManholeResponse {
            manhole: self.manhole().await,
        }))
    }

    async fn trigger_gc(&self, request: Request<pb::TriggerGcRequest>) -> R<pb::TriggerGcResponse> {
        Ok(Response::new(self.trim(&who(&request)).await?))
    }

    async fn utcnow(&self, _request: Request<pb::UtcnowRequest>) -> R<pb::UtcnowResponse> {
        Ok(Response::new(pb::UtcnowResponse {
            utcnow: crate::controller::iso8601(std::time::SystemTime::now()),
        }))
    }

    async fn started(&self, _request: Request<pb::StartedRequest>) -> R<pb::StartedResponse> {
        Ok(Response::new(pb::StartedResponse {
            started: crate::controller::iso8601(self.started_at()),
        }))
    }

    async fn uptime(&self, _request: Request<pb::UptimeRequest>) -> R<pb::UptimeResponse> {
        Ok(Response::new(pb::UptimeResponse {
            uptime: self.uptime_secs(),
        }))
    }

    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> R<tonic::codegen::BoxStream<pb::WatchResponse>> {
        use futures::StreamExt;
        let events = self.events(request.into_inner())?;
        Ok(Response::new(Box::pin(events.map(|r| {
            r.map(|event| pb::WatchResponse { event: Some(event) })
        }))))
    }
}
