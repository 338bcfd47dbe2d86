//! One reconciliation iteration of a router cluster: place ([`super::placement::place`]), store
//! the placements, start placed workers, stop workers that are not placed where they run, bring
//! each running worker's transport, realms and links in line ([`super::router_workers`]), record
//! the ports, set the status.

use std::collections::{BTreeMap, BTreeSet};

use switchyard::pb::agent::v1::{self as apb, WorkerStatus, WorkerType};
use switchyard::pb::master::v1::{
    ClusterStatus, ClusterWorker, EventType, Node, NodeStatus, Placement, RouterCluster,
    RouterClusterNode, RouterWorkerGroup, event,
};

use super::Outcome;
use super::placement::{self, Group, Member, Slot};
use super::router_workers::{PeerWorker, configure, link_secrets};
use super::status::set_status;
use crate::agents::{Agents, act, call};
use crate::core::{Core, new_oid, now_ns};
use crate::store::{StoreExt, Txn, codec, keys};

/// Stores the new placements (one transaction) and publishes what changed.
async fn store_placements(
    core: &Core,
    oid: &str,
    old: &[Placement],
    slots: &[Slot],
    nodes: &BTreeMap<String, Node>,
) -> Result<(), String> {
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
    core.store.commit(txn).await.map_err(|e| e.to_string())?;
    for p in changed {
        tracing::info!(cluster = %oid, worker = %p.worker_name, node = %p.node_authid, "placed");
        core.events.publish(
            EventType::OnPlacementChanged,
            oid,
            None,
            event::Object::Placement(p),
        );
    }
    Ok(())
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
    entries: std::collections::HashMap<WorkerKey, Checked>,
    since: std::time::Instant,
}

impl Default for Verified {
    fn default() -> Self {
        Verified {
            entries: Default::default(),
            since: std::time::Instant::now(),
        }
    }
}

impl Verified {
    /// How long a verification is trusted.
    pub const TTL: std::time::Duration = std::time::Duration::from_secs(30);

    fn expire(&mut self) {
        if self.since.elapsed() > Self::TTL {
            self.entries.clear();
            self.since = std::time::Instant::now();
        }
    }

    fn port_if_current(&self, key: &WorkerKey, pid: u32, fp: u64) -> Option<u32> {
        self.entries
            .get(key)
            .filter(|(p, f, _)| *p == pid && *f == fp)
            .map(|(_, _, port)| *port)
    }

    fn record(&mut self, checked: Vec<(WorkerKey, Option<Checked>)>) {
        for (key, fresh) in checked {
            match fresh {
                Some(c) => {
                    self.entries.insert(key, c);
                }
                None => {
                    self.entries.remove(&key);
                }
            }
        }
    }
}

/// A digest of everything a router worker is configured from.
fn fingerprint(group: &RouterWorkerGroup, secret: &str, worker: &str, peers: &[PeerWorker]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    group.realms.hash(&mut h);
    group.port_range.map(|r| (r.start, r.end)).hash(&mut h);
    secret.hash(&mut h);
    worker.hash(&mut h);
    let mut p: Vec<(&str, &str, u32)> = peers
        .iter()
        .map(|p| (p.worker.as_str(), p.host.as_str(), p.port))
        .collect();
    p.sort();
    p.hash(&mut h);
    h.finish()
}

/// Whether a call failed because the node did not answer: the node's remaining work is skipped
/// this iteration, so one partitioned node delays the others by at most one deadline.
pub(super) fn unreachable(s: &tonic::Status) -> bool {
    matches!(
        s.code(),
        tonic::Code::DeadlineExceeded | tonic::Code::Unavailable
    )
}

/// The address peers and web workers reach a node's router workers at.
fn node_host(n: &Node) -> String {
    if n.cluster_ip.is_empty() {
        "127.0.0.1".to_owned()
    } else {
        n.cluster_ip.clone()
    }
}

/// Records the WAMP port each placed worker listens on; true when a port changed.
async fn store_ports(
    core: &Core,
    oid: &str,
    current: &[Placement],
    ports: &[(String, String, u32)],
) -> Result<bool, String> {
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
    core.store.commit(txn).await.map_err(|e| e.to_string())?;
    for p in changed {
        tracing::info!(cluster = %oid, worker = %p.worker_name, port = p.tcp_listening_port, "router worker listening");
        core.events.publish(
            EventType::OnPlacementChanged,
            oid,
            None,
            event::Object::Placement(p),
        );
    }
    Ok(true)
}

fn publish_worker(core: &Core, node: &Node, w: &apb::Worker, group: &str, kind: EventType) {
    let cw = ClusterWorker {
        node_oid: node.oid.clone(),
        node_authid: node.authid.clone(),
        worker_id: w.id.clone(),
        pid: w.pid,
        status: w.status,
        observed: Some(std::time::SystemTime::now().into()),
        workergroup_oid: group.to_owned(),
        port: 0,
    };
    core.events
        .publish(kind, &node.oid, None, event::Object::Worker(cw));
}

/// One iteration for router cluster `oid`.
pub async fn reconcile(
    core: &Core,
    agents: &Agents,
    oid: &str,
    verified: &mut Verified,
) -> Result<Outcome, String> {
    verified.expire();
    let Some((cluster, _)) = core
        .store
        .load::<RouterCluster>(&keys::routercluster(oid))
        .map_err(|e| e.to_string())?
    else {
        return Ok(Outcome::Done);
    };
    let status = ClusterStatus::try_from(cluster.status).unwrap_or(ClusterStatus::Unspecified);
    if status == ClusterStatus::Stopped {
        return Ok(Outcome::Done);
    }
    let stopping = status == ClusterStatus::Stopping;
    let members: Vec<RouterClusterNode> = core
        .store
        .list(&keys::routercluster_nodes(oid))
        .map_err(|e| e.to_string())?;
    let groups: Vec<RouterWorkerGroup> = core
        .store
        .list(&keys::workergroups(oid))
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
    let old: Vec<Placement> = core
        .store
        .list(&keys::placements(oid))
        .map_err(|e| e.to_string())?;

    // Placement (nothing is placed while stopping).
    let member_facts: Vec<Member> = members
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
        .collect();
    let group_facts: Vec<Group> = if stopping {
        Vec::new()
    } else {
        groups
            .iter()
            .map(|g| Group {
                oid: g.oid.clone(),
                name: g.name.clone(),
                scale: g.scale.max(1),
            })
            .collect()
    };
    let existing: Vec<Slot> = old
        .iter()
        .map(|p| Slot {
            group: p.workergroup_oid.clone(),
            worker: p.worker_name.clone(),
            node: p.node_oid.clone(),
        })
        .collect();
    let placed = placement::place(&group_facts, &member_facts, &existing);
    store_placements(core, oid, &old, &placed.slots, &nodes).await?;

    // Workers of this cluster: ids `<group name>_<n>` of its (current or just removed) groups.
    let names: BTreeSet<String> = groups.iter().map(|g| g.name.clone()).collect();
    let ours = |id: &str| {
        id.rsplit_once('_')
            .is_some_and(|(g, n)| names.contains(g) && n.parse::<u32>().is_ok())
    };
    let wanted: BTreeMap<(String, String), String> = placed
        .slots
        .iter()
        .map(|s| ((s.node.clone(), s.worker.clone()), s.group.clone()))
        .collect();
    // What each running worker serves: its group, the group's secret and its placed peers.
    let current: Vec<Placement> = core
        .store
        .list(&keys::placements(oid))
        .map_err(|e| e.to_string())?;
    let group_by_oid: BTreeMap<&str, &RouterWorkerGroup> =
        groups.iter().map(|g| (g.oid.as_str(), g)).collect();
    let secrets = if stopping {
        BTreeMap::new()
    } else {
        link_secrets(core, oid, &groups).await?
    };
    let mut peers: BTreeMap<&str, Vec<PeerWorker>> = BTreeMap::new();
    for p in current.iter().filter(|p| p.tcp_listening_port != 0) {
        if let Some(n) = nodes
            .get(&p.node_oid)
            .filter(|n| n.status == NodeStatus::Online as i32)
        {
            peers
                .entry(p.workergroup_oid.as_str())
                .or_default()
                .push(PeerWorker {
                    worker: p.worker_name.clone(),
                    host: node_host(n),
                    port: p.tcp_listening_port,
                });
        }
    }
    let (group_by_oid, secrets, peers) = (&group_by_oid, &secrets, &peers);
    let known = &*verified;

    let mut problems = Vec::new();
    let mut acted = false;
    let mut errors = Vec::new();
    let mut ports: Vec<(String, String, u32)> = Vec::new();
    let observations = futures::future::join_all(online.iter().map(|node| async move {
        let mut nc = agents.node_controller(node)?;
        let ws = call(nc.list_workers(apb::ListWorkersRequest {
            r#type: WorkerType::Router as i32,
            status: 0,
        }))
        .await
        .map_err(|s| format!("{}: ListWorkers: {}", node.authid, s.message()))?;
        Ok::<_, String>((nc, ws.workers))
    }))
    .await;
    let runs = online
        .iter()
        .zip(observations)
        .filter_map(|(node, obs)| match obs {
            Err(e) => {
                problems.push(e);
                None
            }
            Ok((mut nc, workers)) => {
                let pids: BTreeMap<String, u32> =
                    workers.iter().map(|w| (w.id.clone(), w.pid)).collect();
                let running: BTreeSet<String> = workers
                    .iter()
                    .filter(|w| {
                        w.status == WorkerStatus::Started as i32
                            || w.status == WorkerStatus::Starting as i32
                    })
                    .map(|w| w.id.clone())
                    .collect();
                let to_stop: Vec<String> = running
                    .iter()
                    .filter(|id| {
                        ours(id) && !wanted.contains_key(&(node.oid.clone(), (*id).clone()))
                    })
                    .cloned()
                    .collect();
                let to_start: Vec<(String, String)> = wanted
                    .iter()
                    .filter(|((n, id), _)| *n == node.oid && !running.contains(id))
                    .map(|((_, id), g)| (id.clone(), g.clone()))
                    .collect();
                let up = wanted
                    .keys()
                    .filter(|(n, id)| *n == node.oid && running.contains(id))
                    .count() as u64;
                let here: Vec<(String, String)> = wanted
                    .iter()
                    .filter(|((n, _), _)| *n == node.oid)
                    .map(|((_, id), g)| (id.clone(), g.clone()))
                    .collect();
                Some(async move {
                    let mut errs = Vec::new();
                    let mut did = false;
                    for id in to_stop {
                        did = true;
                        match act(nc.stop_worker(apb::StopWorkerRequest {
                            worker_id: id.clone(),
                            kill: false,
                        }))
                        .await
                        {
                            Ok(r) => {
                                if let Some(w) = r.worker {
                                    publish_worker(core, node, &w, "", EventType::OnWorkerStopped);
                                }
                            }
                            Err(s) => {
                                errs.push(format!("{} stop {id}: {}", node.authid, s.message()));
                                if unreachable(&s) {
                                    return (did, errs, Vec::new(), Vec::new(), up);
                                }
                            }
                        }
                    }
                    for (id, group) in to_start {
                        did = true;
                        let req = apb::StartWorkerRequest {
                            worker_id: id.clone(),
                            worker_type: WorkerType::Router as i32,
                            options: None,
                        };
                        match act(nc.start_worker(req)).await {
                            Ok(r) => {
                                if let Some(w) = r.worker {
                                    publish_worker(
                                        core,
                                        node,
                                        &w,
                                        &group,
                                        EventType::OnWorkerStarted,
                                    );
                                }
                            }
                            Err(s) => {
                                errs.push(format!("{} start {id}: {}", node.authid, s.message()));
                                if unreachable(&s) {
                                    return (did, errs, Vec::new(), Vec::new(), up);
                                }
                            }
                        }
                    }
                    let mut ports = Vec::new();
                    let mut checked = Vec::new();
                    for (id, group_oid) in here {
                        let (Some(group), Some(secret)) = (
                            group_by_oid.get(group_oid.as_str()),
                            secrets.get(&group_oid),
                        ) else {
                            continue;
                        };
                        let group_peers = peers.get(group_oid.as_str()).map_or(&[][..], |v| v);
                        let pid = pids.get(&id).copied().unwrap_or(0);
                        let fp = fingerprint(group, secret, &id, group_peers);
                        let key = (node.oid.clone(), id.clone());
                        if let Some(port) = known.port_if_current(&key, pid, fp) {
                            ports.push((group_oid, id, port));
                            continue;
                        }
                        match configure(&mut nc, &id, group, secret, group_peers).await {
                            Ok(c) => {
                                did |= c.acted;
                                // Remembered only when found exactly as desired; anything
                                // changed is verified again next time.
                                let fresh = (!c.acted && pid != 0).then_some((pid, fp, c.port));
                                checked.push((key, fresh));
                                ports.push((group_oid, id, c.port));
                            }
                            Err(e) => {
                                checked.push((key, None));
                                errs.push(format!("{}: {}", node.authid, e.message));
                                if e.unreachable {
                                    break;
                                }
                            }
                        }
                    }
                    (did, errs, ports, checked, up)
                })
            }
        });
    let runs: Vec<_> = runs.collect();
    let mut up_total = 0;
    for (did, errs, p, checked, up) in futures::future::join_all(runs).await {
        up_total += up;
        acted |= did;
        errors.extend(errs);
        ports.extend(p);
        verified.record(checked);
    }
    acted |= store_ports(core, oid, &current, &ports).await?;
    core.gauges.set(
        oid,
        crate::metrics::WorkerCounts {
            desired: placed.slots.len() as u64,
            running: up_total,
        },
    );
    for e in &errors {
        tracing::warn!(cluster = %cluster.name, error = %e, "action failed");
    }

    if stopping {
        if !acted && problems.is_empty() {
            set_status::<RouterCluster>(core, oid, ClusterStatus::Stopped, "").await?;
            return Ok(Outcome::Done);
        }
        return Ok(if errors.is_empty() {
            Outcome::Again
        } else {
            Outcome::Continue
        });
    }
    let placed_on_online = placed
        .slots
        .iter()
        .all(|s| online.iter().any(|n| n.oid == s.node));
    let (next, reason) = if members.is_empty() {
        (
            ClusterStatus::Error,
            "the cluster has no member nodes".to_owned(),
        )
    } else if member_facts.iter().all(|m| !m.online) {
        (ClusterStatus::Error, "no member node is online".to_owned())
    } else if !errors.is_empty() {
        (
            ClusterStatus::Degraded,
            format!("{} action(s) failed: {}", errors.len(), errors[0]),
        )
    } else if acted {
        return Ok(Outcome::Again);
    } else if !placed.unplaced.is_empty() {
        (
            ClusterStatus::Degraded,
            format!(
                "{} worker(s) cannot be placed within the members' hardlimits: {}",
                placed.unplaced.len(),
                placed.unplaced.join(", ")
            ),
        )
    } else if !placed_on_online {
        return Ok(Outcome::Again);
    } else {
        (ClusterStatus::Running, String::new())
    };
    set_status::<RouterCluster>(core, oid, next, &reason).await?;
    Ok(Outcome::Continue)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_changed_since_its_verification_is_observed_again() {
        let mut v = Verified::default();
        let key = ("n1".to_owned(), "g_0".to_owned());
        v.record(vec![(key.clone(), Some((100, 7, 10000)))]);
        assert_eq!(v.port_if_current(&key, 100, 7), Some(10000));
        assert_eq!(v.port_if_current(&key, 101, 7), None, "another process");
        assert_eq!(
            v.port_if_current(&key, 100, 8),
            None,
            "another desired state"
        );
        // The monitor changed something (or failed): the old verification no longer holds, even
        // if the desired state later returns to what it was.
        v.record(vec![(key.clone(), None)]);
        assert_eq!(v.port_if_current(&key, 100, 7), None);
    }
}
