//! `switchyard.agent.v1.NodeControllerService`: the agent, its host, its workers and their logs.
//! The web- and router-worker controls are forwarded to the worker's control socket and its
//! answer (a status included) is relayed unchanged; what a successful one changed is recorded,
//! to be replayed if the agent restarts the worker (`worker/applied.rs`).

use std::sync::Arc;

use switchyard::pb::agent::v1::node_controller_service_client::NodeControllerServiceClient;
use switchyard::pb::agent::v1::node_controller_service_server::NodeControllerService;
use switchyard::pb::agent::v1::{self as pb, WorkerStatus, WorkerType};
use tokio::sync::broadcast::error::RecvError;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use super::who;
use crate::Agent;
use crate::error::{Error, Result};
use crate::events::async_stream;
use crate::worker::applied::Change;
use crate::worker::check_worker_id;

/// The node controller.
#[derive(Debug)]
pub struct NodeControllerApi {
    agent: Arc<Agent>,
}

impl NodeControllerApi {
    /// A node controller for `agent`.
    pub fn new(agent: Arc<Agent>) -> Self {
        NodeControllerApi { agent }
    }
}

fn enum_filter<E: TryFrom<i32>>(field: &str, value: i32) -> Result<Option<E>> {
    if value == 0 {
        return Ok(None);
    }
    E::try_from(value)
        .map(Some)
        .map_err(|_| Error::invalid(field, format!("unknown value {value}")))
}

/// The controls client of a started worker of type `kind`, or the error to answer with.
fn typed_worker(
    agent: &Agent,
    id: &str,
    kind: WorkerType,
) -> Result<NodeControllerServiceClient<Channel>> {
    check_worker_id("worker_id", id)?;
    let worker = agent.workers.get(id)?;
    if worker.kind() != kind {
        return Err(Error::WrongWorkerType {
            id: id.to_owned(),
            expected: if kind == WorkerType::Web {
                "web"
            } else {
                "router"
            },
        });
    }
    worker.check_started()?;
    Ok(worker.controls())
}

/// Forwards a web- or router-worker control to the worker, with the caller's deadline and
/// principal; relays the worker's answer (its status on failure carries the code and reason).
macro_rules! forward {
    ($self:ident, $kind:ident, $request:ident, $method:ident) => {{
        let mut client = typed_worker(
            &$self.agent,
            &$request.get_ref().worker_id,
            WorkerType::$kind,
        )?;
        client.$method(crate::api::forwarded($request)).await
    }};
}

#[tonic::async_trait]
impl NodeControllerService for NodeControllerApi {
    async fn start_web_transport(
        &self,
        request: Request<pb::StartWebTransportRequest>,
    ) -> Result<Response<pb::StartWebTransportResponse>, Status> {
        let (id, transport) = (
            request.get_ref().worker_id.clone(),
            request.get_ref().transport.clone(),
        );
        let response = forward!(self, Web, request, start_web_transport)?;
        self.agent
            .workers
            .applied(&id, Change::WebTransport(transport));
        Ok(response)
    }

    async fn get_web_transport(
        &self,
        request: Request<pb::GetWebTransportRequest>,
    ) -> Result<Response<pb::GetWebTransportResponse>, Status> {
        forward!(self, Web, request, get_web_transport)
    }

    async fn stop_web_transport(
        &self,
        request: Request<pb::StopWebTransportRequest>,
    ) -> Result<Response<pb::StopWebTransportResponse>, Status> {
        let id = request.get_ref().worker_id.clone();
        let response = forward!(self, Web, request, stop_web_transport)?;
        self.agent.workers.applied(&id, Change::WebTransport(None));
        Ok(response)
    }

    async fn start_web_service(
        &self,
        request: Request<pb::StartWebServiceRequest>,
    ) -> Result<Response<pb::StartWebServiceResponse>, Status> {
        let id = request.get_ref().worker_id.clone();
        let response = forward!(self, Web, request, start_web_service)?;
        if let Some(service) = response.get_ref().service.clone() {
            let path = service.path.clone();
            self.agent
                .workers
                .applied(&id, Change::WebService(path, Some(service)));
        }
        Ok(response)
    }

    async fn stop_web_service(
        &self,
        request: Request<pb::StopWebServiceRequest>,
    ) -> Result<Response<pb::StopWebServiceResponse>, Status> {
        let id = request.get_ref().worker_id.clone();
        let response = forward!(self, Web, request, stop_web_service)?;
        if let Some(service) = &response.get_ref().service {
            let path = service.path.clone();
            self.agent
                .workers
                .applied(&id, Change::WebService(path, None));
        }
        Ok(response)
    }

    async fn list_web_services(
        &self,
        request: Request<pb::ListWebServicesRequest>,
    ) -> Result<Response<pb::ListWebServicesResponse>, Status> {
        forward!(self, Web, request, list_web_services)
    }

    async fn start_router_transport(
        &self,
        request: Request<pb::StartRouterTransportRequest>,
    ) -> Result<Response<pb::StartRouterTransportResponse>, Status> {
        let asked = request.get_ref().clone();
        let response = forward!(self, Router, request, start_router_transport)?;
        if let Some(t) = &response.get_ref().transport {
            let id = asked.worker_id.clone();
            self.agent
                .workers
                .applied(&id, Change::RouterTransport(asked, t.port));
        }
        Ok(response)
    }

    async fn get_router_transport(
        &self,
        request: Request<pb::GetRouterTransportRequest>,
    ) -> Result<Response<pb::GetRouterTransportResponse>, Status> {
        forward!(self, Router, request, get_router_transport)
    }

    async fn start_router_realm(
        &self,
        request: Request<pb::StartRouterRealmRequest>,
    ) -> Result<Response<pb::StartRouterRealmResponse>, Status> {
        let (id, realm) = (
            request.get_ref().worker_id.clone(),
            request.get_ref().realm.clone(),
        );
        let response = forward!(self, Router, request, start_router_realm)?;
        self.agent
            .workers
            .applied(&id, Change::RouterRealm(realm, true));
        Ok(response)
    }

    async fn stop_router_realm(
        &self,
        request: Request<pb::StopRouterRealmRequest>,
    ) -> Result<Response<pb::StopRouterRealmResponse>, Status> {
        let (id, realm) = (
            request.get_ref().worker_id.clone(),
            request.get_ref().realm.clone(),
        );
        let response = forward!(self, Router, request, stop_router_realm)?;
        self.agent
            .workers
            .applied(&id, Change::RouterRealm(realm, false));
        Ok(response)
    }

    async fn list_router_realms(
        &self,
        request: Request<pb::ListRouterRealmsRequest>,
    ) -> Result<Response<pb::ListRouterRealmsResponse>, Status> {
        forward!(self, Router, request, list_router_realms)
    }

    async fn start_router_link(
        &self,
        request: Request<pb::StartRouterLinkRequest>,
    ) -> Result<Response<pb::StartRouterLinkResponse>, Status> {
        let id = request.get_ref().worker_id.clone();
        let response = forward!(self, Router, request, start_router_link)?;
        if let Some(link) = response.get_ref().link.clone() {
            let link_id = link.id.clone();
            self.agent
                .workers
                .applied(&id, Change::RouterLink(link_id, Some(link)));
        }
        Ok(response)
    }

    async fn stop_router_link(
        &self,
        request: Request<pb::StopRouterLinkRequest>,
    ) -> Result<Response<pb::StopRouterLinkResponse>, Status> {
        let (id, link) = (
            request.get_ref().worker_id.clone(),
            request.get_ref().link_id.clone(),
        );
        let response = forward!(self, Router, request, stop_router_link)?;
        self.agent
            .workers
            .applied(&id, Change::RouterLink(link, None));
        Ok(response)
    }

    async fn list_router_links(
        &self,
        request: Request<pb::ListRouterLinksRequest>,
    ) -> Result<Response<pb::ListRouterLinksResponse>, Status> {
        forward!(self, Router, request, list_router_links)
    }

    async fn get_status(
        &self,
        _request: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::GetStatusResponse>, Status> {
        let workers = self.agent.workers.list();
        let started = workers
            .iter()
            .filter(|w| w.status() == WorkerStatus::Started)
            .count();
        Ok(Response::new(pb::GetStatusResponse {
            authid: self.agent.authid.clone(),
            version: switchyard::VERSION.to_owned(),
            pid: std::process::id(),
            started: Some(self.agent.controller.started_at().into()),
            uptime: self.agent.controller.uptime_secs(),
            workers: workers.len() as u32,
            workers_started: started as u32,
            node_oid: self.agent.master.node_oid(),
            master_connected: self.agent.master.connected(),
        }))
    }

    async fn get_system_stats(
        &self,
        _request: Request<pb::GetSystemStatsRequest>,
    ) -> Result<Response<pb::GetSystemStatsResponse>, Status> {
        let agent = self.agent.clone();
        let stats = tokio::task::spawn_blocking(move || agent.host.stats())
            .await
            .map_err(|e| Error::internal("system stats", e))?;
        Ok(Response::new(stats))
    }

    async fn list_workers(
        &self,
        request: Request<pb::ListWorkersRequest>,
    ) -> Result<Response<pb::ListWorkersResponse>, Status> {
        let req = request.get_ref();
        let kind: Option<WorkerType> = enum_filter("type", req.r#type)?;
        let status: Option<WorkerStatus> = enum_filter("status", req.status)?;
        let workers = self
            .agent
            .workers
            .list()
            .iter()
            .map(|w| w.to_pb())
            .filter(|w| kind.is_none_or(|k| w.r#type == k as i32))
            .filter(|w| status.is_none_or(|s| w.status == s as i32))
            .collect();
        Ok(Response::new(pb::ListWorkersResponse { workers }))
    }

    async fn get_worker(
        &self,
        request: Request<pb::GetWorkerRequest>,
    ) -> Result<Response<pb::GetWorkerResponse>, Status> {
        let id = &request.get_ref().worker_id;
        check_worker_id("worker_id", id)?;
        let worker = self.agent.workers.get(id)?;
        Ok(Response::new(pb::GetWorkerResponse {
            worker: Some(worker.to_pb()),
        }))
    }

    async fn start_worker(
        &self,
        request: Request<pb::StartWorkerRequest>,
    ) -> Result<Response<pb::StartWorkerResponse>, Status> {
        let who = who(&request);
        let req = request.into_inner();
        let kind = WorkerType::try_from(req.worker_type)
            .map_err(|_| Error::invalid("worker_type", "unknown worker type"))?;
        let worker = self
            .agent
            .workers
            .start(&req.worker_id, kind, req.options.unwrap_or_default(), &who)
            .await?;
        Ok(Response::new(pb::StartWorkerResponse {
            worker: Some(worker.to_pb()),
        }))
    }

    async fn stop_worker(
        &self,
        request: Request<pb::StopWorkerRequest>,
    ) -> Result<Response<pb::StopWorkerResponse>, Status> {
        let who = who(&request);
        let req = request.into_inner();
        let worker = self
            .agent
            .workers
            .stop(&req.worker_id, req.kill, &who)
            .await?;
        Ok(Response::new(pb::StopWorkerResponse {
            worker: Some(worker.to_pb()),
        }))
    }

    async fn get_worker_log(
        &self,
        request: Request<pb::GetWorkerLogRequest>,
    ) -> Result<Response<pb::GetWorkerLogResponse>, Status> {
        let req = request.get_ref();
        check_worker_id("worker_id", &req.worker_id)?;
        let worker = self.agent.workers.get(&req.worker_id)?;
        Ok(Response::new(pb::GetWorkerLogResponse {
            lines: worker.log.tail(req.limit as usize),
        }))
    }

    async fn stream_worker_log(
        &self,
        request: Request<pb::StreamWorkerLogRequest>,
    ) -> Result<Response<tonic::codegen::BoxStream<pb::StreamWorkerLogResponse>>, Status> {
        let req = request.into_inner();
        check_worker_id("worker_id", &req.worker_id)?;
        let worker = self.agent.workers.get(&req.worker_id)?;
        let shutdown = self.agent.shutdown.clone();
        let stream = async_stream(move |tx| async move {
            let (backlog, mut rx) = worker.log.follow(req.limit as usize);
            let mut last = 0;
            for line in backlog {
                last = line.seq;
                if tx
                    .send(Ok(pb::StreamWorkerLogResponse { line: Some(line) }))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            loop {
                let next = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    next = rx.recv() => next,
                };
                match next {
                    Ok(line) if line.seq > last => {
                        last = line.seq;
                        if tx
                            .send(Ok(pb::StreamWorkerLogResponse { line: Some(line) }))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(RecvError::Lagged(n)) => {
                        // The stream's last item: a wire status, converted here.
                        let _ = tx.send(Err(Error::LogFollowerLagged(n).into())).await;
                        return;
                    }
                    Err(RecvError::Closed) => return,
                }
            }
        });
        Ok(Response::new(stream))
    }
}
