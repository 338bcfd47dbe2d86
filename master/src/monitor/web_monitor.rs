//! One reconciliation iteration of a web cluster: observe the cluster's workers on every online
//! node, plan ([`super::web::plan`]), execute, decide the status ([`super::status::decide`]).

use std::collections::BTreeMap;

use futures::future::BoxFuture;
use switchyard::error::reason_of;
use switchyard::pb::agent::v1::{self as apb, WorkerStatus, WorkerType};
use switchyard::pb::master::v1::{
    ClusterStatus, EventType, Node, NodeStatus, Placement, WebCluster, WebClusterNode, WebService,
    web_service,
};

use super::agent::AgentApi;
use super::owner::{Owner, web_prefix};
use super::status::{Findings, apply, decide};
use super::web::{Action, Desired, Member, WorkerObs, assign, plan, rolling};
use super::{Executor, MonitorError, Outcome, Step, execute, nodes_by_oid, observe_online};
use crate::core::Core;
use crate::store::{StoreError, StoreExt, keys};

/// One iteration for web cluster `oid`.
pub async fn reconcile(
    core: &Core,
    agents: &dyn AgentApi,
    oid: &str,
) -> Result<Outcome, MonitorError> {
    let Some((cluster, _)) = core
        .store
        .load::<WebCluster>(&keys::webcluster(oid))
        .await?
    else {
        return Ok(Outcome::Done);
    };
    let status = ClusterStatus::try_from(cluster.status).unwrap_or(ClusterStatus::Unspecified);
    if status == ClusterStatus::Stopped {
        return Ok(Outcome::Done);
    }
    let stopping = status == ClusterStatus::Stopping;
    let members: Vec<WebClusterNode> = core.store.list(&keys::webcluster_nodes(oid)).await?;
    let nodes = nodes_by_oid(core).await?;

    // Every online node, not only members: a removed member may still run workers of ours.
    let owner = Owner::web(oid);
    let (observed, unobserved) =
        observe_online(&nodes, |node| observe_node(agents, node, &owner)).await;
    // Liveness comes from heartbeats: a member that answered one call late is not failed over.
    let facts: Vec<Member> = members
        .iter()
        .map(|m| Member {
            node: m.node_oid.clone(),
            parallel: m.parallel.max(1),
            standby: m.standby,
            online: nodes
                .get(&m.node_oid)
                .is_some_and(|n| n.status == NodeStatus::Online as i32),
            drained: nodes.get(&m.node_oid).is_some_and(super::drain::drained),
        })
        .collect();
    let (assigned, unreplaced) = if stopping {
        (BTreeMap::new(), 0)
    } else {
        assign(&facts)
    };
    let services = core
        .store
        .list::<WebService>(&keys::webservices(oid))
        .await?;
    let mut agent_services = BTreeMap::new();
    for s in &services {
        agent_services.insert(s.path.clone(), to_agent(core, &nodes, s).await?);
    }
    let desired = Desired {
        prefix: web_prefix(oid),
        nodes: assigned,
        transport: transport(&cluster),
        services: agent_services,
        generation: cluster.restart_generation,
        max_parallel: cluster.restart_max_parallel.max(1),
        draining: nodes
            .values()
            .filter(|n| super::drain::drained(n))
            .map(|n| n.oid.clone())
            .collect(),
    };
    let actions = plan(&desired, &observed);
    core.gauges.set(
        oid,
        crate::metrics::WorkerCounts {
            desired: desired.nodes.values().map(|n| u64::from(*n)).sum(),
            running: observed
                .values()
                .flat_map(|ws| ws.values())
                .filter(|w| w.status == WorkerStatus::Started)
                .count() as u64,
            unplaced: 0,
        },
    );
    let acted = !actions.is_empty();
    let exec = WebExecutor {
        core,
        agents,
        owner: &owner,
        transport: &desired.transport,
    };
    let failures = execute(&exec, &nodes, actions).await;
    for e in &failures {
        tracing::warn!(cluster = %cluster.name, error = %e, "action failed");
    }
    for e in &unobserved {
        tracing::warn!(cluster = %cluster.name, error = %e, "node not observed");
    }
    let done = cluster.restarting && (stopping || (!acted && !rolling(&desired, &observed)));
    if done {
        super::restart::finish::<WebCluster>(core, oid).await?;
    }
    let findings = Findings {
        stopping,
        crash_looping: crash_looping(&observed, &nodes),
        unobserved: !unobserved.is_empty() || super::online_unseen(core, &observed).await?,
        acted,
        failures,
        cannot_run: cannot_run(&facts, desired.nodes.is_empty()),
        shortfall: (unreplaced > 0).then(|| {
            format!(
                "{unreplaced} active member(s) offline or drained and no standby to replace them"
            )
        }),
        // Workers assigned to an online node that did not answer: wait for it.
        pending: desired.nodes.keys().any(|n| !observed.contains_key(n)),
    };
    Ok(apply::<WebCluster>(core, oid, decide(&findings)).await?)
}

/// The workers their agents restart after a crash, as `node/worker`.
fn crash_looping(observed: &super::web::Observed, nodes: &BTreeMap<String, Node>) -> Vec<String> {
    observed
        .iter()
        .flat_map(|(node, ws)| {
            let authid = nodes.get(node).map_or(node.as_str(), |n| &n.authid);
            ws.iter()
                .filter(|(_, w)| w.status == WorkerStatus::Restarting)
                .map(move |(id, _)| format!("{authid}/{id}"))
        })
        .collect()
}

/// Why a web cluster cannot run at all, if so: no members, or nobody to run workers.
fn cannot_run(members: &[Member], nobody_runs: bool) -> Option<String> {
    if members.is_empty() {
        return Some("the cluster has no member nodes".to_owned());
    }
    if !nobody_runs {
        return None;
    }
    Some(if members.iter().all(|m| m.standby) {
        "the cluster has no active member: a standby member runs workers only in place of an \
         offline active member"
            .to_owned()
    } else if members.iter().any(|m| m.drained) {
        "no active member is online and undrained, and no standby member is online and \
         undrained to take over"
            .to_owned()
    } else {
        "no active member is online, and no standby member is online to take over".to_owned()
    })
}

/// Observes the workers `owner` started on one node, with their listener and services.
async fn observe_node(
    agents: &dyn AgentApi,
    node: &Node,
    owner: &Owner,
) -> Result<BTreeMap<String, WorkerObs>, tonic::Status> {
    let list = apb::ListWorkersRequest {
        r#type: WorkerType::Web as i32,
        status: 0,
    };
    let workers = agents.list_workers(node, list).await?.workers;
    let mut out = BTreeMap::new();
    for w in workers
        .into_iter()
        .filter(|w| Owner::of(w).as_ref() == Some(owner))
    {
        let status = WorkerStatus::try_from(w.status).unwrap_or(WorkerStatus::Unspecified);
        let mut obs = WorkerObs {
            status,
            transport: false,
            services: BTreeMap::new(),
        };
        if status == WorkerStatus::Started {
            // Only an answer counts: a call that fails (a node freezing mid-observation) fails
            // the node's observation, rather than passing for "no listener, no services".
            let id = w.id.clone();
            let get = apb::GetWebTransportRequest { worker_id: id };
            obs.transport = match agents.get_web_transport(node, get).await {
                Ok(_) => true,
                Err(s) if reason_of(&s).as_deref() == Some("NOT_STARTED") => false,
                Err(s) => return Err(s),
            };
            let list = apb::ListWebServicesRequest {
                worker_id: w.id.clone(),
            };
            obs.services = agents
                .list_web_services(node, list)
                .await?
                .services
                .into_iter()
                .map(|s| (s.path.clone(), s))
                .collect();
        }
        out.insert(w.id, obs);
    }
    Ok(out)
}

impl Step for Action {
    fn node(&self) -> &str {
        Action::node(self)
    }

    fn worker(&self) -> &str {
        match self {
            Action::StartWorker { id, .. }
            | Action::StartTransport { id, .. }
            | Action::StartService { id, .. }
            | Action::StopService { id, .. }
            | Action::StopWorker { id, .. } => id,
        }
    }

    fn blocks(&self) -> bool {
        matches!(
            self,
            Action::StartWorker { .. }
                | Action::StartTransport { .. }
                | Action::StartService { .. }
        )
    }

    fn describe(&self) -> String {
        let (what, id) = match self {
            Action::StartWorker { id, .. } => ("start", id),
            Action::StartTransport { id, .. } => ("start the listener of", id),
            Action::StartService { id, .. } => ("mount a service on", id),
            Action::StopService { id, .. } => ("unmount a service of", id),
            Action::StopWorker { id, .. } => ("stop", id),
        };
        format!("{what} {id}")
    }
}

/// Runs web actions against the agents.
#[derive(Debug)]
struct WebExecutor<'a> {
    core: &'a Core,
    agents: &'a dyn AgentApi,
    owner: &'a Owner,
    transport: &'a apb::WebTransport,
}

impl Executor for WebExecutor<'_> {
    type Action = Action;

    fn run<'s>(
        &'s self,
        node: &'s Node,
        action: Action,
    ) -> BoxFuture<'s, Result<(), tonic::Status>> {
        let agents = self.agents;
        Box::pin(async move {
            match action {
                Action::StartWorker { id, .. } => {
                    let req = apb::StartWorkerRequest {
                        worker_id: id,
                        worker_type: WorkerType::Web as i32,
                        options: Some(self.owner.options()),
                    };
                    let w = agents.start_worker(node, req).await?.worker;
                    super::publish_worker(self.core, node, w, "", EventType::OnWorkerStarted);
                }
                Action::StartTransport { id, .. } => {
                    let req = apb::StartWebTransportRequest {
                        worker_id: id,
                        transport: Some(self.transport.clone()),
                    };
                    agents.start_web_transport(node, req).await?;
                }
                Action::StartService { id, service, .. } => {
                    let req = apb::StartWebServiceRequest {
                        worker_id: id,
                        service: Some(service),
                    };
                    agents.start_web_service(node, req).await?;
                }
                Action::StopService { id, path, .. } => {
                    let req = apb::StopWebServiceRequest {
                        worker_id: id,
                        path,
                    };
                    agents.stop_web_service(node, req).await?;
                }
                Action::StopWorker { id, .. } => {
                    let req = apb::StopWorkerRequest {
                        worker_id: id,
                        kill: false,
                    };
                    let w = agents.stop_worker(node, req).await?.worker;
                    super::publish_worker(self.core, node, w, "", EventType::OnWorkerStopped);
                }
            }
            Ok(())
        })
    }
}

/// The agent-side form of a stored web service; a worker-group target is resolved to the
/// group's placed router workers on online nodes. A store error is returned, never turned into
/// an empty backend list pushed to running workers.
async fn to_agent(
    core: &Core,
    nodes: &BTreeMap<String, Node>,
    s: &WebService,
) -> Result<apb::WebService, StoreError> {
    use apb::web_service::Service as A;
    use web_service::Service as M;
    let service = match s.service.clone() {
        None => None,
        Some(M::Static(x)) => Some(A::Static(x)),
        Some(M::Json(x)) => Some(A::Json(x)),
        Some(M::Redirect(x)) => Some(A::Redirect(x)),
        Some(M::Reverseproxy(x)) => Some(A::Reverseproxy(x)),
        Some(M::Nodeinfo(x)) => Some(A::Nodeinfo(x)),
        Some(M::WebsocketReverseproxy(mut x)) => {
            if let Some(g) = &x.workergroup {
                let key = keys::group_placements(&g.routercluster_oid, &g.workergroup_oid);
                let placements = core.store.list::<Placement>(&key).await?;
                let path = if g.path.is_empty() { "/ws" } else { &g.path };
                x.backends = placements
                    .iter()
                    .filter(|p| p.tcp_listening_port != 0)
                    .filter_map(|p| {
                        let n = nodes.get(&p.node_oid)?;
                        (n.status == NodeStatus::Online as i32).then(|| apb::WebSocketBackend {
                            host: n.cluster_ip.clone(),
                            port: p.tcp_listening_port,
                            path: path.to_owned(),
                        })
                    })
                    .collect();
            }
            Some(A::WebsocketReverseproxy(x))
        }
    };
    Ok(apb::WebService {
        path: s.path.clone(),
        service,
    })
}

fn transport(c: &WebCluster) -> apb::WebTransport {
    apb::WebTransport {
        tcp_version: c.tcp_version,
        tcp_port: c.tcp_port,
        tcp_shared: Some(c.tcp_shared.unwrap_or(true)),
        tcp_interface: c.tcp_interface.clone(),
        tcp_backlog: c.tcp_backlog,
        tls_key: c.tls_key.clone(),
        tls_certificate: c.tls_certificate.clone(),
        tls_chain_certificates: c.tls_chain_certificates.clone(),
        tls_ca_certificates: c.tls_ca_certificates.clone(),
        tls_dhparam: c.tls_dhparam.clone(),
        tls_ciphers: c.tls_ciphers.clone(),
        http_client_timeout: c.http_client_timeout,
        http_hsts: c.http_hsts,
        http_hsts_max_age: c.http_hsts_max_age,
        http_access_log: c.http_access_log,
        http_display_tracebacks: c.http_display_tracebacks,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(standby: bool, online: bool) -> Member {
        Member {
            node: "n".into(),
            parallel: 1,
            standby,
            online,
            drained: false,
        }
    }

    #[test]
    fn the_error_reason_says_what_is_true() {
        assert_eq!(
            cannot_run(&[], true).unwrap(),
            "the cluster has no member nodes"
        );
        let standby_only = cannot_run(&[member(true, true)], true).unwrap();
        assert!(standby_only.contains("no active member"), "{standby_only}");
        assert!(!standby_only.contains("online,"), "{standby_only}");
        let all_down = cannot_run(&[member(false, false), member(true, false)], true).unwrap();
        assert!(
            all_down.contains("no active member is online"),
            "{all_down}"
        );
        assert_eq!(cannot_run(&[member(false, true)], false), None);
        let drained = Member {
            drained: true,
            ..member(false, true)
        };
        let reason = cannot_run(&[drained], true).unwrap();
        assert!(reason.contains("undrained"), "{reason}");
    }
}
