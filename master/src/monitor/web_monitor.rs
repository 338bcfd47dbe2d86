//! One reconciliation iteration of a web cluster: observe, plan ([`super::web::plan`]), execute,
//! set the status.

use std::collections::BTreeMap;

use switchyard::pb::agent::v1::{self as apb, WorkerStatus, WorkerType};
use switchyard::pb::master::v1::{
    ClusterStatus, ClusterWorker, EventType, Node, NodeStatus, Placement, WebCluster,
    WebClusterNode, WebService, event, web_service,
};

use super::Outcome;
use super::status::set_status;
use super::web::{Action, Desired, Member, Observed, WorkerObs, assign, plan};
use crate::agents::{Agents, act, call};
use crate::core::Core;
use crate::store::{StoreExt, keys};

/// The worker id prefix of a web cluster: `cpw-<oid 8>-`.
pub fn prefix(oid: &str) -> String {
    format!("cpw-{}-", &oid[..8.min(oid.len())])
}

/// The agent-side form of a stored web service; a worker-group target is resolved to the
/// group's placed router workers.
fn to_agent(core: &Core, nodes: &BTreeMap<String, Node>, s: &WebService) -> apb::WebService {
    use apb::web_service::Service as A;
    use web_service::Service as M;
    let service = s.service.clone().map(|svc| match svc {
        M::Static(x) => A::Static(x),
        M::Json(x) => A::Json(x),
        M::Redirect(x) => A::Redirect(x),
        M::Reverseproxy(x) => A::Reverseproxy(x),
        M::Nodeinfo(x) => A::Nodeinfo(x),
        M::WebsocketReverseproxy(mut x) => {
            if let Some(g) = &x.workergroup {
                let placements = core
                    .store
                    .list::<Placement>(&keys::group_placements(
                        &g.routercluster_oid,
                        &g.workergroup_oid,
                    ))
                    .unwrap_or_default();
                let path = if g.path.is_empty() {
                    "/ws".to_owned()
                } else {
                    g.path.clone()
                };
                x.backends = placements
                    .iter()
                    .filter(|p| p.tcp_listening_port != 0)
                    .filter_map(|p| {
                        let n = nodes.get(&p.node_oid)?;
                        (n.status == NodeStatus::Online as i32).then(|| apb::WebSocketBackend {
                            host: n.cluster_ip.clone(),
                            port: p.tcp_listening_port,
                            path: path.clone(),
                        })
                    })
                    .collect();
            }
            A::WebsocketReverseproxy(x)
        }
    });
    apb::WebService {
        path: s.path.clone(),
        service,
    }
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

/// Observes the cluster's workers on one node.
async fn observe_node(
    agents: &Agents,
    node: &Node,
    prefix: &str,
) -> Result<BTreeMap<String, WorkerObs>, String> {
    let mut nc = agents.node_controller(node)?;
    let workers = call(nc.list_workers(apb::ListWorkersRequest {
        r#type: WorkerType::Web as i32,
        status: 0,
    }))
    .await
    .map_err(|s| format!("{}: ListWorkers: {}", node.authid, s.message()))?
    .workers;
    let mut out = BTreeMap::new();
    for w in workers.into_iter().filter(|w| w.id.starts_with(prefix)) {
        let status = WorkerStatus::try_from(w.status).unwrap_or(WorkerStatus::Unspecified);
        let mut obs = WorkerObs {
            status,
            transport: false,
            services: BTreeMap::new(),
        };
        if status == WorkerStatus::Started {
            obs.transport = call(nc.get_web_transport(apb::GetWebTransportRequest {
                worker_id: w.id.clone(),
            }))
            .await
            .is_ok();
            if let Ok(list) = call(nc.list_web_services(apb::ListWebServicesRequest {
                worker_id: w.id.clone(),
            }))
            .await
            {
                obs.services = list
                    .services
                    .into_iter()
                    .map(|s| (s.path.clone(), s))
                    .collect();
            }
        }
        out.insert(w.id, obs);
    }
    Ok(out)
}

/// Runs one node's actions in order; returns the errors.
async fn execute_node(
    core: &Core,
    agents: &Agents,
    node: &Node,
    desired: &Desired,
    actions: Vec<Action>,
) -> Vec<String> {
    let mut errors = Vec::new();
    let mut nc = match agents.node_controller(node) {
        Ok(nc) => nc,
        Err(e) => return vec![e],
    };
    let mut failed_workers = std::collections::BTreeSet::new();
    for action in actions {
        let result = match &action {
            Action::StartWorker { id, .. }
            | Action::StartTransport { id, .. }
            | Action::StartService { id, .. }
                if failed_workers.contains(id) =>
            {
                continue;
            }
            Action::StartWorker { id, .. } => {
                let r = act(nc.start_worker(apb::StartWorkerRequest {
                    worker_id: id.clone(),
                    worker_type: WorkerType::Web as i32,
                    options: None,
                }))
                .await;
                if let Ok(w) = &r {
                    publish_worker(core, node, w.worker.as_ref(), EventType::OnWorkerStarted);
                }
                r.map(|_| ())
            }
            Action::StartTransport { id, .. } => {
                act(nc.start_web_transport(apb::StartWebTransportRequest {
                    worker_id: id.clone(),
                    transport: Some(desired.transport.clone()),
                }))
                .await
                .map(|_| ())
            }
            Action::StartService { id, service, .. } => {
                act(nc.start_web_service(apb::StartWebServiceRequest {
                    worker_id: id.clone(),
                    service: Some(service.clone()),
                }))
                .await
                .map(|_| ())
            }
            Action::StopService { id, path, .. } => {
                act(nc.stop_web_service(apb::StopWebServiceRequest {
                    worker_id: id.clone(),
                    path: path.clone(),
                }))
                .await
                .map(|_| ())
            }
            Action::StopWorker { id, .. } => {
                let r = act(nc.stop_worker(apb::StopWorkerRequest {
                    worker_id: id.clone(),
                    kill: false,
                }))
                .await;
                if let Ok(w) = &r {
                    publish_worker(core, node, w.worker.as_ref(), EventType::OnWorkerStopped);
                }
                r.map(|_| ())
            }
        };
        if let Err(status) = result {
            let id = match &action {
                Action::StartWorker { id, .. }
                | Action::StartTransport { id, .. }
                | Action::StartService { id, .. } => {
                    failed_workers.insert(id.clone());
                    id
                }
                Action::StopService { id, .. } | Action::StopWorker { id, .. } => id,
            };
            errors.push(format!("{} {id}: {}", node.authid, status.message()));
        }
    }
    errors
}

fn publish_worker(core: &Core, node: &Node, worker: Option<&apb::Worker>, kind: EventType) {
    let Some(w) = worker else { return };
    let cw = ClusterWorker {
        node_oid: node.oid.clone(),
        node_authid: node.authid.clone(),
        worker_id: w.id.clone(),
        pid: w.pid,
        status: w.status,
        observed: Some(std::time::SystemTime::now().into()),
        workergroup_oid: String::new(),
        port: 0,
    };
    core.events
        .publish(kind, &node.oid, None, event::Object::Worker(cw));
}

/// One iteration for web cluster `oid`.
pub async fn reconcile(core: &Core, agents: &Agents, oid: &str) -> Result<Outcome, String> {
    let Some((cluster, _)) = core
        .store
        .load::<WebCluster>(&keys::webcluster(oid))
        .map_err(|e| e.to_string())?
    else {
        return Ok(Outcome::Done);
    };
    let status = ClusterStatus::try_from(cluster.status).unwrap_or(ClusterStatus::Unspecified);
    if status == ClusterStatus::Stopped {
        return Ok(Outcome::Done);
    }
    let stopping = status == ClusterStatus::Stopping;
    let members: Vec<WebClusterNode> = core
        .store
        .list(&keys::webcluster_nodes(oid))
        .map_err(|e| e.to_string())?;
    let nodes: BTreeMap<String, Node> = core
        .list_nodes(None)
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|n| (n.oid.clone(), n))
        .collect();
    let online: Vec<&Node> = nodes
        .values()
        .filter(|n| n.status == NodeStatus::Online as i32)
        .collect();
    let prefix = prefix(oid);

    // Observe every online node (a removed member may still run workers of this cluster).
    let observations = futures::future::join_all(online.iter().map(|n| async {
        // One deadline for the whole node: a frozen node must not hold the monitor longer.
        tokio::time::timeout(
            crate::agents::OBSERVE_TIMEOUT,
            observe_node(agents, n, &prefix),
        )
        .await
        .unwrap_or_else(|_| Err(format!("{}: observation timed out", n.authid)))
    }))
    .await;
    let mut observed: Observed = BTreeMap::new();
    let mut problems = Vec::new();
    for (node, obs) in online.iter().zip(observations) {
        match obs {
            Ok(o) => {
                observed.insert(node.oid.clone(), o);
            }
            Err(e) => problems.push(e),
        }
    }

    let member_facts: Vec<Member> = members
        .iter()
        .map(|m| Member {
            node: m.node_oid.clone(),
            parallel: m.parallel.max(1),
            standby: m.standby,
            online: observed.contains_key(&m.node_oid),
        })
        .collect();
    let (assigned, unreplaced) = if stopping {
        (BTreeMap::new(), 0)
    } else {
        assign(&member_facts)
    };
    let services = core
        .store
        .list::<WebService>(&keys::webservices(oid))
        .map_err(|e| e.to_string())?;
    let desired = Desired {
        prefix: prefix.clone(),
        nodes: assigned,
        transport: transport(&cluster),
        services: services
            .iter()
            .map(|s| (s.path.clone(), to_agent(core, &nodes, s)))
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
        },
    );

    let mut by_node: BTreeMap<String, Vec<Action>> = BTreeMap::new();
    for a in &actions {
        by_node
            .entry(a.node().to_owned())
            .or_default()
            .push(a.clone());
    }
    let runs = by_node.into_iter().filter_map(|(node, list)| {
        let node = nodes.get(&node)?;
        Some(execute_node(core, agents, node, &desired, list))
    });
    let errors: Vec<String> = futures::future::join_all(runs)
        .await
        .into_iter()
        .flatten()
        .collect();
    for e in &errors {
        tracing::warn!(cluster = %cluster.name, error = %e, "action failed");
    }

    if stopping {
        if actions.is_empty() && problems.is_empty() {
            set_status::<WebCluster>(core, oid, ClusterStatus::Stopped, "").await?;
            return Ok(Outcome::Done);
        }
        return Ok(if errors.is_empty() {
            Outcome::Again
        } else {
            Outcome::Continue
        });
    }
    let (next, reason) = if members.is_empty() {
        (
            ClusterStatus::Error,
            "the cluster has no member nodes".to_owned(),
        )
    } else if desired.nodes.is_empty() {
        (ClusterStatus::Error, "no member node is online".to_owned())
    } else if !errors.is_empty() {
        (
            ClusterStatus::Degraded,
            format!("{} action(s) failed: {}", errors.len(), errors[0]),
        )
    } else if !actions.is_empty() {
        // Converging: keep the status until the next observation confirms.
        return Ok(Outcome::Again);
    } else if unreplaced > 0 {
        (
            ClusterStatus::Degraded,
            format!("{unreplaced} active member(s) offline and no standby to replace them"),
        )
    } else {
        (ClusterStatus::Running, String::new())
    };
    set_status::<WebCluster>(core, oid, next, &reason).await?;
    Ok(Outcome::Continue)
}
