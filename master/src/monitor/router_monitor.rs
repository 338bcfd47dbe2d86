//! One reconciliation iteration of a router cluster: place ([`super::placement::place`]) and
//! store the placements, observe every online node's router workers, plan
//! ([`super::router::plan`]), execute, record the ports workers listen on, decide the status.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use switchyard::error::reason_of;
use switchyard::pb::agent::v1::{self as apb, WorkerStatus, WorkerType};
use switchyard::pb::master::v1::{
    ClusterStatus, EventType, Node, NodeStatus, Placement, RouterCluster, RouterClusterNode,
    RouterWorkerGroup, event,
};

use super::agent::AgentApi;
use super::owner::Owner;
use super::placement::{self, Group, Member, Slot};
use super::router::{Action, Config, Desired, Observed, Seen, WorkerObs, WorkerSpec, plan};
use super::status::{Findings, apply, decide};
use super::{Executor, MonitorError, Outcome, Step, execute, nodes_by_oid, observe_online};
use crate::core::{Core, new_oid, now_ns};
use crate::store::{StoreError, StoreExt, Txn, codec, keys};

/// One iteration for router cluster `oid`.
pub async fn reconcile(
    core: &Core,
    agents: &dyn AgentApi,
    oid: &str,
    verified: &mut Verified,
) -> Result<Outcome, MonitorError> {
    verified.expire();
    let Some((cluster, _)) = core
        .store
        .load::<RouterCluster>(&keys::routercluster(oid))
        .await?
    else {
        return Ok(Outcome::Done);
    };
    let status = ClusterStatus::try_from(cluster.status).unwrap_or(ClusterStatus::Unspecified);
    if status == ClusterStatus::Stopped {
        return Ok(Outcome::Done);
    }
    let stopping = status == ClusterStatus::Stopping;
    let members: Vec<RouterClusterNode> = core.store.list(&keys::routercluster_nodes(oid)).await?;
    let groups: Vec<RouterWorkerGroup> = core.store.list(&keys::workergroups(oid)).await?;
    let nodes = nodes_by_oid(core).await?;

    // Placement: nothing is placed while stopping.
    let facts = member_facts(&members, &nodes);
    let placed_groups = if stopping { &[][..] } else { &groups[..] };
    let old: Vec<Placement> = core.store.list(&keys::placements(oid)).await?;
    let placed = placement::place(&group_facts(placed_groups), &facts, &slots_of(&old));
    store_placements(core, oid, &old, &placed.slots, &nodes).await?;
    let current: Vec<Placement> = core.store.list(&keys::placements(oid)).await?;
    let secrets = link_secrets(core, oid, placed_groups).await?;
    let desired = super::router::desired(
        oid,
        placed_groups,
        &placed.slots,
        &current,
        &nodes,
        &secrets,
    );

    let (observed, unobserved) = {
        let known = &*verified;
        let desired = &desired;
        observe_online(&nodes, |node| {
            observe_node(agents, node, oid, desired, known)
        })
        .await
    };
    let planned = plan(oid, &desired, &observed);
    core.gauges.set(
        oid,
        crate::metrics::WorkerCounts {
            desired: placed.slots.len() as u64,
            running: running_wanted(&desired, &observed),
            unplaced: placed.unplaced.len() as u64,
        },
    );
    let mut acted = !planned.actions.is_empty();
    verified.record(&desired, &observed, &planned.actions);
    let exec = RouterExecutor {
        core,
        agents,
        started: Mutex::default(),
    };
    let failures = execute(&exec, &nodes, planned.actions).await;
    for e in &failures {
        tracing::warn!(cluster = %cluster.name, error = %e, "action failed");
    }
    let mut ports = observed_ports(&desired, &observed);
    ports.extend(exec.started.into_inner().unwrap_or_else(|p| p.into_inner()));
    acted |= store_ports(core, oid, &current, &ports).await?;

    let shortfall = shortfall(&placed.unplaced, &planned.blocked);
    for e in &unobserved {
        tracing::warn!(cluster = %cluster.name, error = %e, "node not observed");
    }
    let findings = Findings {
        stopping,
        unobserved: !unobserved.is_empty() || super::online_unseen(core, &observed).await?,
        acted,
        failures,
        cannot_run: if members.is_empty() {
            Some("the cluster has no member nodes".to_owned())
        } else if facts.iter().all(|m| !m.online) {
            Some("no member node is online".to_owned())
        } else {
            None
        },
        shortfall,
        // Placed on a node that did not answer: wait for it (or for it to go offline).
        pending: placed.slots.iter().any(|s| !observed.contains_key(&s.node)),
    };
    Ok(apply::<RouterCluster>(core, oid, decide(&findings)).await?)
}

fn member_facts(members: &[RouterClusterNode], nodes: &BTreeMap<String, Node>) -> Vec<Member> {
    members
        .iter()
        .map(|m| Member {
            node: m.node_oid.clone(),
            authid: m.node_authid.clone(),
            softlimit: m.softlimit,
            hardlimit: m.hardlimit,
            online: nodes
                .get(&m.node_oid)
                .is_some_and(|n| n.status == NodeStatus::Online as i32),
        })
        .collect()
}

fn group_facts(groups: &[RouterWorkerGroup]) -> Vec<Group> {
    groups
        .iter()
        .map(|g| Group {
            oid: g.oid.clone(),
            name: g.name.clone(),
            scale: g.scale.max(1),
        })
        .collect()
}

fn slots_of(placements: &[Placement]) -> Vec<Slot> {
    placements
        .iter()
        .map(|p| Slot {
            group: p.workergroup_oid.clone(),
            worker: p.worker_name.clone(),
            node: p.node_oid.clone(),
        })
        .collect()
}

/// The DEGRADED reason of a converged cluster, if some wanted workers cannot run.
fn shortfall(unplaced: &[String], blocked: &[String]) -> Option<String> {
    if !unplaced.is_empty() {
        Some(format!(
            "{} worker(s) cannot be placed within the members' hardlimits: {}",
            unplaced.len(),
            unplaced.join(", ")
        ))
    } else if !blocked.is_empty() {
        Some(format!(
            "{} worker(s) wait for their id to be free: {}",
            blocked.len(),
            blocked.join(", ")
        ))
    } else {
        None
    }
}

/// Wanted workers that run where they are wanted.
fn running_wanted(desired: &Desired, observed: &Observed) -> u64 {
    desired
        .iter()
        .flat_map(|(node, ws)| ws.iter().map(move |(id, s)| (node, id, s)))
        .filter(|(node, id, s)| {
            observed
                .get(*node)
                .and_then(|ws| ws.get(*id))
                .is_some_and(|w| {
                    w.status == WorkerStatus::Started && w.owner.as_ref() == Some(&s.owner)
                })
        })
        .count() as u64
}

/// Observes every router worker of one node; the configuration only of the started workers
/// this cluster wants there, unless [`Verified`] vouches for them.
async fn observe_node(
    agents: &dyn AgentApi,
    node: &Node,
    cluster: &str,
    desired: &Desired,
    verified: &Verified,
) -> Result<BTreeMap<String, WorkerObs>, tonic::Status> {
    let list = apb::ListWorkersRequest {
        r#type: WorkerType::Router as i32,
        status: 0,
    };
    let workers = agents.list_workers(node, list).await?.workers;
    let wanted = desired.get(&node.oid);
    let mut out = BTreeMap::new();
    for w in workers {
        let owner = Owner::of(&w);
        let status = WorkerStatus::try_from(w.status).unwrap_or(WorkerStatus::Unspecified);
        let spec = wanted.and_then(|ws| ws.get(&w.id)).filter(|s| {
            owner.as_ref() == Some(&s.owner) && owner.as_ref().is_some_and(|o| o.cluster == cluster)
        });
        let config = match spec {
            Some(spec) if status == WorkerStatus::Started => {
                let key = (node.oid.clone(), w.id.clone());
                Some(
                    match verified.port_if_current(&key, w.pid, fingerprint(&w.id, spec)) {
                        Some(port) => Config::Verified { port },
                        None => Config::Seen(observe_config(agents, node, &w.id).await?),
                    },
                )
            }
            _ => None,
        };
        out.insert(
            w.id.clone(),
            WorkerObs {
                status,
                pid: w.pid,
                owner,
                config,
            },
        );
    }
    Ok(out)
}

/// A running router worker's listener, realms and links.
async fn observe_config(
    agents: &dyn AgentApi,
    node: &Node,
    id: &str,
) -> Result<Seen, tonic::Status> {
    let worker_id = id.to_owned();
    let get = apb::GetRouterTransportRequest {
        worker_id: worker_id.clone(),
    };
    let port = match agents.get_router_transport(node, get).await {
        Ok(r) => Some(r.transport.map(|t| t.port).unwrap_or_default()),
        Err(s) if reason_of(&s).as_deref() == Some("NOT_STARTED") => None,
        Err(s) => return Err(s),
    };
    let realms = apb::ListRouterRealmsRequest {
        worker_id: worker_id.clone(),
    };
    let realms = agents.list_router_realms(node, realms).await?.realms;
    let links = apb::ListRouterLinksRequest { worker_id };
    let links = agents.list_router_links(node, links).await?.links;
    Ok(Seen {
        port,
        realms: realms.into_iter().map(|r| r.name).collect(),
        links: links.into_iter().map(|l| (l.id.clone(), l)).collect(),
    })
}

/// The ports observed workers of the cluster listen on: (group oid, worker id, port).
fn observed_ports(desired: &Desired, observed: &Observed) -> Vec<(String, String, u32)> {
    let mut out = Vec::new();
    for (node, ws) in desired {
        for (id, spec) in ws {
            let port = match observed
                .get(node)
                .and_then(|o| o.get(id))
                .and_then(|w| w.config.as_ref())
            {
                Some(Config::Verified { port }) => *port,
                Some(Config::Seen(seen)) => seen.port.unwrap_or_default(),
                None => 0,
            };
            if port != 0 {
                out.push((spec.owner.group.clone(), id.clone(), port));
            }
        }
    }
    out
}

impl Step for Action {
    fn node(&self) -> &str {
        Action::node(self)
    }

    fn worker(&self) -> &str {
        Action::worker(self)
    }

    fn blocks(&self) -> bool {
        matches!(
            self,
            Action::StartWorker { .. } | Action::StartTransport { .. }
        )
    }

    fn describe(&self) -> String {
        let id = self.worker();
        match self {
            Action::StopWorker { .. } => format!("stop {id}"),
            Action::StartWorker { .. } => format!("start {id}"),
            Action::StartTransport { .. } => format!("{id}: StartRouterTransport"),
            Action::StartRealm { realm, .. } => format!("{id}: StartRouterRealm {realm}"),
            Action::StopRealm { realm, .. } => format!("{id}: StopRouterRealm {realm}"),
            Action::StartLink { link, .. } => format!("{id}: StartRouterLink {}", link.id),
            Action::StopLink { link, .. } => format!("{id}: StopRouterLink {link}"),
        }
    }
}

/// Runs router actions against the agents; remembers the ports new listeners got.
#[derive(Debug)]
struct RouterExecutor<'a> {
    core: &'a Core,
    agents: &'a dyn AgentApi,
    /// (group oid, worker id, port) of every listener started.
    started: Mutex<Vec<(String, String, u32)>>,
}

impl Executor for RouterExecutor<'_> {
    type Action = Action;

    fn run<'s>(
        &'s self,
        node: &'s Node,
        action: Action,
    ) -> BoxFuture<'s, Result<(), tonic::Status>> {
        let agents = self.agents;
        Box::pin(async move {
            match action {
                Action::StopWorker { id, group, .. } => {
                    let req = apb::StopWorkerRequest {
                        worker_id: id,
                        kill: false,
                    };
                    let w = agents.stop_worker(node, req).await?.worker;
                    let kind = EventType::OnWorkerStopped;
                    super::publish_worker(self.core, node, w, &group, kind);
                }
                Action::StartWorker { id, owner, .. } => {
                    let req = apb::StartWorkerRequest {
                        worker_id: id,
                        worker_type: WorkerType::Router as i32,
                        options: Some(owner.options()),
                    };
                    let w = agents.start_worker(node, req).await?.worker;
                    let kind = EventType::OnWorkerStarted;
                    super::publish_worker(self.core, node, w, &owner.group, kind);
                }
                Action::StartTransport {
                    id,
                    group,
                    port_range,
                    secret,
                    ..
                } => {
                    let req = apb::StartRouterTransportRequest {
                        worker_id: id.clone(),
                        interface: String::new(),
                        port_range_start: port_range.0,
                        port_range_end: port_range.1,
                        link_secret: secret,
                    };
                    let r = agents.start_router_transport(node, req).await?;
                    let port = r.transport.map(|t| t.port).unwrap_or_default();
                    let mut started = self.started.lock().unwrap_or_else(|p| p.into_inner());
                    started.push((group, id, port));
                }
                Action::StartRealm { id, realm, .. } => {
                    let req = apb::StartRouterRealmRequest {
                        worker_id: id,
                        realm,
                    };
                    agents.start_router_realm(node, req).await?;
                }
                Action::StopRealm { id, realm, .. } => {
                    let req = apb::StopRouterRealmRequest {
                        worker_id: id,
                        realm,
                    };
                    agents.stop_router_realm(node, req).await?;
                }
                Action::StartLink { id, link, .. } => {
                    let req = apb::StartRouterLinkRequest {
                        worker_id: id,
                        link: Some(link),
                    };
                    agents.start_router_link(node, req).await?;
                }
                Action::StopLink { id, link, .. } => {
                    let req = apb::StopRouterLinkRequest {
                        worker_id: id,
                        link_id: link,
                    };
                    agents.stop_router_link(node, req).await?;
                }
            }
            Ok(())
        })
    }
}

/// Stores the new placements (one transaction) and publishes what changed.
async fn store_placements(
    core: &Core,
    oid: &str,
    old: &[Placement],
    slots: &[Slot],
    nodes: &BTreeMap<String, Node>,
) -> Result<(), StoreError> {
    let old_by_worker: BTreeMap<(&str, &str), &Placement> = old
        .iter()
        .map(|p| ((p.workergroup_oid.as_str(), p.worker_name.as_str()), p))
        .collect();
    let new_keys: BTreeSet<(&str, &str)> = slots
        .iter()
        .map(|s| (s.group.as_str(), s.worker.as_str()))
        .collect();
    let mut txn = Txn::new();
    let mut changed = Vec::new();
    for p in old {
        if !new_keys.contains(&(p.workergroup_oid.as_str(), p.worker_name.as_str())) {
            txn = txn.delete(keys::placement(oid, &p.workergroup_oid, &p.oid));
        }
    }
    for s in slots {
        match old_by_worker.get(&(s.group.as_str(), s.worker.as_str())) {
            Some(p) if p.node_oid == s.node => {}
            existing => {
                let placement = Placement {
                    oid: existing.map_or_else(new_oid, |p| p.oid.clone()),
                    cluster_oid: oid.to_owned(),
                    workergroup_oid: s.group.clone(),
                    node_oid: s.node.clone(),
                    worker_name: s.worker.clone(),
                    tcp_listening_port: 0,
                    changed: now_ns(),
                    node_authid: nodes
                        .get(&s.node)
                        .map(|n| n.authid.clone())
                        .unwrap_or_default(),
                };
                txn = txn.put(
                    keys::placement(oid, &s.group, &placement.oid),
                    codec::encode(&placement),
                );
                changed.push(placement);
            }
        }
    }
    if txn.puts.is_empty() && txn.deletes.is_empty() {
        return Ok(());
    }
    core.commit_as_leader(txn).await?;
    for p in changed {
        tracing::info!(cluster = %oid, worker = %p.worker_name, node = %p.node_authid, "placed");
        publish_placement(core, oid, p);
    }
    Ok(())
}

/// Records the WAMP port each placed worker listens on; true when a port changed.
async fn store_ports(
    core: &Core,
    oid: &str,
    current: &[Placement],
    ports: &[(String, String, u32)],
) -> Result<bool, StoreError> {
    let mut txn = Txn::new();
    let mut changed = Vec::new();
    for (group, worker, port) in ports {
        if let Some(p) = current
            .iter()
            .find(|p| &p.workergroup_oid == group && &p.worker_name == worker)
            .filter(|p| p.tcp_listening_port != *port && *port != 0)
        {
            let mut p = p.clone();
            p.tcp_listening_port = *port;
            p.changed = now_ns();
            txn = txn.put(
                keys::placement(oid, &p.workergroup_oid, &p.oid),
                codec::encode(&p),
            );
            changed.push(p);
        }
    }
    if changed.is_empty() {
        return Ok(false);
    }
    core.commit_as_leader(txn).await?;
    for p in changed {
        tracing::info!(cluster = %oid, worker = %p.worker_name, port = p.tcp_listening_port, "router worker listening");
        publish_placement(core, oid, p);
    }
    Ok(true)
}

fn publish_placement(core: &Core, oid: &str, p: Placement) {
    let object = event::Object::Placement(p);
    core.events
        .publish(EventType::OnPlacementChanged, oid, None, object);
}

/// The secrets the groups' links authenticate with, by group oid: created once (one
/// transaction for every group that has none yet) and kept in the store.
pub async fn link_secrets(
    core: &Core,
    cluster: &str,
    groups: &[RouterWorkerGroup],
) -> Result<BTreeMap<String, String>, StoreError> {
    loop {
        let mut secrets = BTreeMap::new();
        let mut txn = Txn::new();
        for g in groups {
            let key = keys::link_secret(cluster, &g.oid);
            match core.store.load_str(&key).await? {
                Some(s) => {
                    secrets.insert(g.oid.clone(), s);
                }
                None => {
                    let secret = format!(
                        "{}{}",
                        uuid::Uuid::new_v4().simple(),
                        uuid::Uuid::new_v4().simple()
                    );
                    txn = txn
                        .absent(key.clone())
                        .put(key, secret.clone().into_bytes());
                    secrets.insert(g.oid.clone(), secret);
                }
            }
        }
        if txn.puts.is_empty() {
            return Ok(secrets);
        }
        match core.commit_as_leader(txn).await {
            // Another writer created one meanwhile: read them again.
            Err(StoreError::Conflict(_)) => continue,
            done => return done.map(|_| secrets),
        }
    }
}

/// (node oid, worker id).
type WorkerKey = (String, String);
/// (pid, fingerprint, port) a worker was verified at.
type Checked = (u32, u64, u32);

/// What a monitor remembers between iterations: router workers found exactly as desired, by
/// (node, worker), with the pid and desired-state fingerprint they were verified at. A worker
/// whose pid and desired state are unchanged is not observed again until the memory expires
/// (every [`Verified::TTL`]), so a steady cluster costs one ListWorkers per node per tick rather
/// than three calls per worker.
#[derive(Debug)]
pub struct Verified {
    entries: HashMap<WorkerKey, Checked>,
    since: Instant,
}

impl Default for Verified {
    fn default() -> Self {
        Verified {
            entries: HashMap::new(),
            since: Instant::now(),
        }
    }
}

impl Verified {
    /// How long a verification is trusted.
    pub const TTL: Duration = Duration::from_secs(30);

    fn expire(&mut self) {
        if self.since.elapsed() > Self::TTL {
            self.entries.clear();
            self.since = Instant::now();
        }
    }

    fn port_if_current(&self, key: &WorkerKey, pid: u32, fp: u64) -> Option<u32> {
        self.entries
            .get(key)
            .filter(|(p, f, _)| *p == pid && *f == fp)
            .map(|(_, _, port)| *port)
    }

    /// Remembers the wanted workers observed exactly as desired (no action planned for them);
    /// forgets every worker something is done to.
    fn record(&mut self, desired: &Desired, observed: &Observed, actions: &[Action]) {
        let touched: BTreeSet<(&str, &str)> =
            actions.iter().map(|a| (a.node(), a.worker())).collect();
        for (node, ws) in observed {
            for (id, w) in ws {
                let key = (node.clone(), id.clone());
                let spec = desired.get(node).and_then(|d| d.get(id));
                match (&w.config, spec) {
                    (Some(Config::Seen(seen)), Some(spec))
                        if !touched.contains(&(node.as_str(), id.as_str())) =>
                    {
                        if w.pid != 0 {
                            let port = seen.port.unwrap_or_default();
                            self.entries
                                .insert(key, (w.pid, fingerprint(id, spec), port));
                        }
                    }
                    (Some(Config::Verified { .. }), _) => {}
                    _ => {
                        self.entries.remove(&key);
                    }
                }
            }
        }
    }
}

/// A digest of everything a router worker is configured from.
fn fingerprint(worker: &str, spec: &WorkerSpec) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    worker.hash(&mut h);
    spec.owner.hash(&mut h);
    spec.realms.hash(&mut h);
    spec.port_range.hash(&mut h);
    spec.secret.hash(&mut h);
    for (id, l) in &spec.links {
        (id, &l.realm, &l.peer_host, l.peer_port, &l.peer_path).hash(&mut h);
    }
    h.finish()
}
