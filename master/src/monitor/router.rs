//! Router cluster reconciliation as pure functions: what every placed router worker should be
//! ([`desired`]: its owner, realms, port range, link secret and a link to every other placed
//! worker of its group), what runs ([`Observed`]), and the actions between them ([`plan`]).
//! Placement itself is [`super::placement::place`]; the executor is `router_monitor.rs`.

use std::collections::{BTreeMap, BTreeSet};

use switchyard::pb::agent::v1::{self as apb, WorkerStatus};
use switchyard::pb::master::v1::{Node, NodeStatus, Placement, RouterWorkerGroup};

use super::owner::{Owner, live};
use super::placement::Slot;

/// What one router worker should be.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerSpec {
    /// Its cluster and worker group.
    pub owner: Owner,
    /// The realms it serves.
    pub realms: BTreeSet<String>,
    /// The port range its WAMP listener takes a free port from.
    pub port_range: (u32, u32),
    /// The secret its group's links authenticate with.
    pub secret: String,
    /// Its links to the group's other workers, by link id.
    pub links: BTreeMap<String, apb::RouterLink>,
    /// Its placement's worker name (`<group>_<n>`: its links are named after it).
    pub name: String,
    /// The port its placement records on this node (0: none yet); its peers link to it there.
    pub placed_port: u32,
}

/// What a router cluster wants: node oid → worker id → worker.
pub type Desired = BTreeMap<String, BTreeMap<String, WorkerSpec>>;

/// What a running router worker serves, as observed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Seen {
    /// Its WAMP port, if its listener runs.
    pub port: Option<u32>,
    /// Its realms.
    pub realms: BTreeSet<String>,
    /// Its links, by id.
    pub links: BTreeMap<String, apb::RouterLink>,
}

/// How much of a worker's configuration the executor looked at.
#[derive(Debug, Clone, PartialEq)]
pub enum Config {
    /// Found exactly as desired earlier, and neither its process nor its desired state changed
    /// since: not observed again.
    Verified {
        /// Its WAMP port.
        port: u32,
    },
    /// Observed now.
    Seen(Seen),
}

/// One observed router worker of a node (any owner).
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerObs {
    /// Its status.
    pub status: WorkerStatus,
    /// Its process id.
    pub pid: u32,
    /// Who started it, from its labels (none: not started by a monitor).
    pub owner: Option<Owner>,
    /// Its configuration, for the started workers the cluster wants where they run.
    pub config: Option<Config>,
}

/// What runs: node oid → worker id → worker (only nodes that answered are present).
pub type Observed = BTreeMap<String, BTreeMap<String, WorkerObs>>;

/// One step towards the desired state.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Stop worker `id` (of worker group `group`, for the event).
    StopWorker {
        node: String,
        id: String,
        group: String,
    },
    /// Start worker `id`, labelled with its owner.
    StartWorker {
        node: String,
        id: String,
        owner: Owner,
    },
    /// Start the WAMP listener of worker `id`.
    StartTransport {
        node: String,
        id: String,
        group: String,
        port_range: (u32, u32),
        secret: String,
    },
    /// Start realm `realm` on worker `id`.
    StartRealm {
        node: String,
        id: String,
        realm: String,
    },
    /// Stop realm `realm` of worker `id`.
    StopRealm {
        node: String,
        id: String,
        realm: String,
    },
    /// Start (or re-point) a link of worker `id`.
    StartLink {
        node: String,
        id: String,
        link: apb::RouterLink,
    },
    /// Stop link `link` of worker `id`.
    StopLink {
        node: String,
        id: String,
        link: String,
    },
}

impl Action {
    /// The node the action runs on.
    pub fn node(&self) -> &str {
        self.target().0
    }

    /// The worker the action is about.
    pub fn worker(&self) -> &str {
        self.target().1
    }

    fn target(&self) -> (&str, &str) {
        match self {
            Action::StopWorker { node, id, .. }
            | Action::StartWorker { node, id, .. }
            | Action::StartTransport { node, id, .. }
            | Action::StartRealm { node, id, .. }
            | Action::StopRealm { node, id, .. }
            | Action::StartLink { node, id, .. }
            | Action::StopLink { node, id, .. } => (node, id),
        }
    }
}

/// The outcome of [`plan`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// The actions, in per-node execution order.
    pub actions: Vec<Action>,
    /// Wanted workers whose id is held on their node by a live worker the cluster does not
    /// own (another cluster's, or one an operator started): they start once it is gone.
    pub blocked: Vec<String>,
}

/// The realms of a group (default `realm1`).
pub fn realms(group: &RouterWorkerGroup) -> BTreeSet<String> {
    if group.realms.is_empty() {
        BTreeSet::from(["realm1".to_owned()])
    } else {
        group.realms.iter().cloned().collect()
    }
}

/// A placed worker of a group whose port is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerWorker {
    /// Its worker id.
    pub worker: String,
    /// Its node's address.
    pub host: String,
    /// Its WAMP port.
    pub port: u32,
}

/// The desired links of `worker`: to every other peer, for every realm.
pub fn desired_links(
    worker: &str,
    realms: &BTreeSet<String>,
    peers: &[PeerWorker],
) -> BTreeMap<String, apb::RouterLink> {
    let mut links = BTreeMap::new();
    for p in peers.iter().filter(|p| p.worker != worker) {
        for r in realms {
            let id = format!("{}@{}", p.worker, r);
            let link = apb::RouterLink {
                id: id.clone(),
                realm: r.clone(),
                peer_host: p.host.clone(),
                peer_port: p.port,
                peer_path: "/ws".to_owned(),
                connected: false,
            };
            links.insert(id, link);
        }
    }
    links
}

/// The address peers and web workers reach a node's router workers at.
pub fn node_host(n: &Node) -> String {
    if n.cluster_ip.is_empty() {
        "127.0.0.1".to_owned()
    } else {
        n.cluster_ip.clone()
    }
}

/// What every placed worker of cluster `cluster` should be, by node and agent id (of worker
/// generation `generation`). `placements` are the stored ones (their ports make the peers, on
/// online nodes only); `secrets` are by group oid.
pub fn desired(
    cluster: &str,
    groups: &[RouterWorkerGroup],
    slots: &[Slot],
    placements: &[Placement],
    nodes: &BTreeMap<String, Node>,
    secrets: &BTreeMap<String, String>,
    generation: u32,
) -> Desired {
    let mut peers: BTreeMap<&str, Vec<PeerWorker>> = BTreeMap::new();
    for p in placements.iter().filter(|p| p.tcp_listening_port != 0) {
        let online = nodes
            .get(&p.node_oid)
            .filter(|n| n.status == NodeStatus::Online as i32);
        if let Some(n) = online {
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
    let mut out = Desired::new();
    for s in slots {
        let (Some(g), Some(secret)) = (
            groups.iter().find(|g| g.oid == s.group),
            secrets.get(&s.group),
        ) else {
            continue;
        };
        let realms = realms(g);
        let range = g.port_range.unwrap_or_default();
        let group_peers = peers.get(s.group.as_str()).map_or(&[][..], Vec::as_slice);
        let placed_port = placements
            .iter()
            .find(|p| {
                p.workergroup_oid == s.group && p.worker_name == s.worker && p.node_oid == s.node
            })
            .map_or(0, |p| p.tcp_listening_port);
        let spec = WorkerSpec {
            name: s.worker.clone(),
            placed_port,
            owner: Owner::router(cluster, &g.oid),
            links: desired_links(&s.worker, &realms, group_peers),
            realms,
            port_range: (range.start, range.end),
            secret: secret.clone(),
        };
        out.entry(s.node.clone())
            .or_default()
            .insert(agent_id(&s.worker, generation), spec);
    }
    out
}

/// The agent's id of generation `generation` of placed worker `name`: the name itself for
/// generation 0 (a cluster never restarted), `<name>.g<generation>` after a rolling restart.
pub fn agent_id(name: &str, generation: u32) -> String {
    if generation == 0 {
        name.to_owned()
    } else {
        format!("{name}.g{generation}")
    }
}

/// The placed worker name of agent id `id` (group names have no dots).
pub fn slot_name(id: &str) -> &str {
    id.split_once(".g").map_or(id, |(name, _)| name)
}

/// A rolling restart, one worker of a group at a time: `desired` names the current
/// generation's ids; a placed worker that still runs as an older generation on its node keeps
/// its old id (and is configured as it is) unless it is its group's one worker being replaced.
/// The one being replaced gets its new id: the new process starts next to the old one, which
/// [`plan`] stops once the new one serves (see `hand_over`).
pub fn roll(desired: Desired, observed: &Observed) -> Desired {
    let old_of = |node: &str, id: &str, spec: &WorkerSpec| -> Option<String> {
        let ws = observed.get(node)?;
        ws.iter()
            .filter(|(other, w)| {
                other.as_str() != id
                    && slot_name(other) == spec.name
                    && w.owner.as_ref() == Some(&spec.owner)
                    && live(w.status as i32)
            })
            .map(|(other, _)| other.clone())
            .next()
    };
    let new_live = |node: &str, id: &str| {
        observed
            .get(node)
            .and_then(|ws| ws.get(id))
            .is_some_and(|w| live(w.status as i32))
    };
    // Groups with a replacement under way, and each group's first worker waiting for one.
    let mut busy: BTreeSet<String> = BTreeSet::new();
    let mut waiting: Vec<(String, String, String, String)> = Vec::new();
    for (node, ws) in &desired {
        for (id, spec) in ws {
            if let Some(old) = old_of(node, id, spec) {
                if new_live(node, id) {
                    busy.insert(spec.owner.group.clone());
                } else {
                    waiting.push((spec.owner.group.clone(), node.clone(), id.clone(), old));
                }
            }
        }
    }
    waiting.sort_by(|a, b| (&a.0, slot_name(&a.2), &a.1).cmp(&(&b.0, slot_name(&b.2), &b.1)));
    let mut out = desired;
    for (group, node, id, old) in waiting {
        if busy.insert(group) {
            continue; // This group's turn: it starts under its new id.
        }
        if let Some(ws) = out.get_mut(&node)
            && let Some(spec) = ws.remove(&id)
        {
            ws.insert(old, spec);
        }
    }
    out
}

/// The actions that take `observed` to `desired` for cluster `cluster`. On each node that
/// answered: live workers the cluster owns that are not wanted there (or are wanted for
/// another group) stop; wanted workers that are not running start, fully configured; running
/// wanted workers get what differs. Unreachable nodes get nothing.
pub fn plan(cluster: &str, desired: &Desired, observed: &Observed) -> Plan {
    let none = BTreeMap::new();
    let mut out = Plan::default();
    for (node, workers) in observed {
        let wanted = desired.get(node).unwrap_or(&none);
        for (id, w) in workers {
            let ours = w.owner.as_ref().is_some_and(|o| o.cluster == cluster);
            let right = wanted.get(id).map(|s| &s.owner) == w.owner.as_ref();
            if let Some(owner) = w
                .owner
                .as_ref()
                .filter(|_| ours && !right && live(w.status as i32))
            {
                out.actions.push(Action::StopWorker {
                    node: node.clone(),
                    id: id.clone(),
                    group: owner.group.clone(),
                });
            }
        }
        for (id, spec) in wanted {
            let current = workers.get(id);
            match current {
                Some(w) if w.owner.as_ref() == Some(&spec.owner) && live(w.status as i32) => {
                    if let Some(Config::Seen(seen)) = &w.config {
                        configure(&mut out.actions, node, id, spec, seen);
                    }
                }
                Some(w)
                    if live(w.status as i32)
                        && w.owner.as_ref().is_none_or(|o| o.cluster != cluster) =>
                {
                    out.blocked
                        .push(format!("{id} (held by another worker on its node)"));
                }
                _ => {
                    out.actions.push(Action::StartWorker {
                        node: node.clone(),
                        id: id.clone(),
                        owner: spec.owner.clone(),
                    });
                    configure(&mut out.actions, node, id, spec, &Seen::default());
                }
            }
        }
    }
    hand_over(cluster, desired, observed, &mut out);
    out
}

/// Keeps a worker that is replaced (re-placed on another node: its node drained or no member
/// any more; or restarted: a new process of a newer generation on its node) running until its
/// replacement serves: started, listening on the port its placement records (where its peers
/// look for it), and its group's workers linked (no other action planned for the group). Its
/// WAMP clients then reconnect to a worker that is there.
fn hand_over(cluster: &str, desired: &Desired, observed: &Observed, out: &mut Plan) {
    let owner_of = |a: &Action| -> Option<Owner> {
        match a {
            Action::StopWorker { .. } => None,
            Action::StartWorker { owner, .. } => Some(owner.clone()),
            other => desired
                .get(other.node())
                .and_then(|ws| ws.get(other.worker()))
                .map(|s| s.owner.clone()),
        }
    };
    let busy: BTreeSet<Owner> = out.actions.iter().filter_map(owner_of).collect();
    let replaced_by_ready = |node: &str, id: &str, group: &str| -> Option<bool> {
        let owner = Owner::router(cluster, group);
        let (new_node, new_id, spec) = desired.iter().find_map(|(n, ws)| {
            ws.iter()
                .find(|(i, s)| {
                    (n.as_str(), i.as_str()) != (node, id)
                        && s.owner == owner
                        && s.name == slot_name(id)
                })
                .map(|(i, s)| (n, i, s))
        })?;
        let ready = observed
            .get(new_node)
            .and_then(|ws| ws.get(new_id))
            .is_some_and(|w| {
                let port = match &w.config {
                    Some(Config::Verified { port }) => Some(*port),
                    Some(Config::Seen(seen)) => seen.port,
                    None => None,
                };
                w.status == WorkerStatus::Started
                    && w.owner.as_ref() == Some(&owner)
                    && port.is_some_and(|p| p != 0 && p == spec.placed_port)
            });
        Some(ready && !busy.contains(&owner))
    };
    let serving = |node: &str, id: &str| {
        observed
            .get(node)
            .and_then(|ws| ws.get(id))
            .is_some_and(|w| w.status == WorkerStatus::Started)
    };
    out.actions.retain(|a| match a {
        Action::StopWorker { node, id, group } if serving(node, id) => {
            replaced_by_ready(node, id, group).unwrap_or(true)
        }
        _ => true,
    });
}

/// The actions that bring a running (or just started) worker from `seen` to `spec`.
fn configure(actions: &mut Vec<Action>, node: &str, id: &str, spec: &WorkerSpec, seen: &Seen) {
    let (node, id) = (node.to_owned(), id.to_owned());
    if seen.port.is_none() {
        actions.push(Action::StartTransport {
            node: node.clone(),
            id: id.clone(),
            group: spec.owner.group.clone(),
            port_range: spec.port_range,
            secret: spec.secret.clone(),
        });
    }
    for realm in spec.realms.difference(&seen.realms) {
        let (node, id, realm) = (node.clone(), id.clone(), realm.clone());
        actions.push(Action::StartRealm { node, id, realm });
    }
    for realm in seen.realms.difference(&spec.realms) {
        let (node, id, realm) = (node.clone(), id.clone(), realm.clone());
        actions.push(Action::StopRealm { node, id, realm });
    }
    for link in seen.links.keys().filter(|l| !spec.links.contains_key(*l)) {
        let (node, id, link) = (node.clone(), id.clone(), link.clone());
        actions.push(Action::StopLink { node, id, link });
    }
    for (link_id, link) in &spec.links {
        // A missing link starts; one whose target changed is re-pointed by starting it again.
        let same = seen.links.get(link_id).is_some_and(|l| {
            l.realm == link.realm
                && l.peer_host == link.peer_host
                && l.peer_port == link.peer_port
                && l.peer_path == link.peer_path
        });
        if !same {
            let (node, id, link) = (node.clone(), id.clone(), link.clone());
            actions.push(Action::StartLink { node, id, link });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const C: &str = "cluster-1";

    fn spec(group: &str, peers: &[(&str, u32)]) -> WorkerSpec {
        let realms = BTreeSet::from(["realm1".to_owned()]);
        let peers: Vec<PeerWorker> = peers
            .iter()
            .map(|(w, port)| PeerWorker {
                worker: (*w).into(),
                host: "10.0.0.1".into(),
                port: *port,
            })
            .collect();
        WorkerSpec {
            owner: Owner::router(C, group),
            links: desired_links("self", &realms, &peers),
            realms,
            port_range: (10000, 10100),
            secret: "s".into(),
            name: "g_0".into(),
            placed_port: 10000,
        }
    }

    fn running(owner: Owner, spec: &WorkerSpec) -> WorkerObs {
        WorkerObs {
            status: WorkerStatus::Started,
            pid: 100,
            owner: Some(owner),
            config: Some(Config::Seen(Seen {
                port: Some(10000),
                realms: spec.realms.clone(),
                links: spec.links.clone(),
            })),
        }
    }

    fn desired_on(node: &str, workers: &[(&str, WorkerSpec)]) -> Desired {
        let ws = workers.iter().map(|(id, s)| {
            let name = slot_name(id).to_owned();
            ((*id).to_owned(), WorkerSpec { name, ..s.clone() })
        });
        [(node.to_owned(), ws.collect())].into()
    }

    fn stop(node: &str, id: &str) -> Action {
        stop_of(node, id, "g")
    }

    fn stop_of(node: &str, id: &str, group: &str) -> Action {
        Action::StopWorker {
            node: node.into(),
            id: id.into(),
            group: group.into(),
        }
    }

    #[test]
    fn a_converged_cluster_needs_nothing_and_a_verified_worker_is_not_reconfigured() {
        let s = spec("g", &[("g_1", 10001)]);
        let d = desired_on("n1", &[("g_0", s.clone())]);
        let o: Observed = [(
            "n1".into(),
            [("g_0".into(), running(s.owner.clone(), &s))].into(),
        )]
        .into();
        assert_eq!(plan(C, &d, &o), Plan::default());
        let mut verified = running(s.owner.clone(), &s);
        verified.config = Some(Config::Verified { port: 10000 });
        let o: Observed = [("n1".into(), [("g_0".into(), verified)].into())].into();
        assert_eq!(plan(C, &d, &o), Plan::default());
    }

    #[test]
    fn a_worker_its_agent_restarts_is_waited_for() {
        let s = spec("g", &[("g_1", 10001)]);
        let d = desired_on("n1", &[("g_0", s.clone())]);
        let restarting = WorkerObs {
            status: WorkerStatus::Restarting,
            pid: 0,
            owner: Some(s.owner.clone()),
            config: None,
        };
        let o: Observed = [("n1".into(), [("g_0".into(), restarting.clone())].into())].into();
        assert_eq!(
            plan(C, &d, &o),
            Plan::default(),
            "not started a second time"
        );
        let elsewhere = desired_on("n2", &[("g_0", s.clone())]);
        assert_eq!(plan(C, &elsewhere, &o).actions, [stop("n1", "g_0")]);
    }

    #[test]
    fn a_new_worker_starts_fully_configured() {
        let s = spec("g", &[("g_1", 10001)]);
        let d = desired_on("n1", &[("g_0", s.clone())]);
        let o: Observed = [("n1".into(), BTreeMap::new())].into();
        let p = plan(C, &d, &o);
        let kinds: Vec<&str> = p
            .actions
            .iter()
            .map(|a| match a {
                Action::StartWorker { .. } => "worker",
                Action::StartTransport { .. } => "transport",
                Action::StartRealm { .. } => "realm",
                Action::StartLink { .. } => "link",
                _ => "other",
            })
            .collect();
        assert_eq!(kinds, ["worker", "transport", "realm", "link"]);
        assert_eq!(
            p.actions[0],
            Action::StartWorker {
                node: "n1".into(),
                id: "g_0".into(),
                owner: Owner::router(C, "g")
            }
        );
    }

    #[test]
    fn a_rolling_restart_replaces_one_worker_of_a_group_at_a_time_new_before_old() {
        let s = spec("g", &[]);
        let named = |name: &str| WorkerSpec {
            name: name.into(),
            ..s.clone()
        };
        // Generation 1 is wanted; generation 0 runs.
        let mut d: Desired = desired_on("n1", &[]);
        d.get_mut("n1")
            .unwrap()
            .insert(agent_id("g_0", 1), named("g_0"));
        d.entry("n2".into())
            .or_default()
            .insert(agent_id("g_1", 1), named("g_1"));
        let mut o: Observed = [
            (
                "n1".into(),
                [("g_0".into(), running(s.owner.clone(), &s))].into(),
            ),
            (
                "n2".into(),
                [("g_1".into(), running(s.owner.clone(), &s))].into(),
            ),
        ]
        .into();
        let rolled = roll(d.clone(), &o);
        assert!(rolled["n1"].contains_key("g_0.g1"), "{rolled:?}");
        assert!(
            rolled["n2"].contains_key("g_1"),
            "the group's other worker waits, under its old id: {rolled:?}"
        );
        let p = plan(C, &rolled, &o);
        assert!(matches!(&p.actions[0], Action::StartWorker { id, .. } if id == "g_0.g1"));
        assert!(
            p.actions
                .iter()
                .all(|a| !matches!(a, Action::StopWorker { .. })),
            "{:?}",
            p.actions
        );
        // The new process serves on the placement's port: the old one stops; g_1 still waits.
        o.get_mut("n1")
            .unwrap()
            .insert("g_0.g1".into(), running(s.owner.clone(), &s));
        let rolled = roll(d.clone(), &o);
        assert!(rolled["n2"].contains_key("g_1"));
        assert_eq!(plan(C, &rolled, &o).actions, [stop("n1", "g_0")]);
        // g_0 done: g_1's turn.
        o.get_mut("n1").unwrap().remove("g_0");
        let rolled = roll(d, &o);
        assert!(rolled["n2"].contains_key("g_1.g1"), "{rolled:?}");
        assert_eq!(slot_name("g_1.g1"), "g_1");
        assert_eq!(slot_name("g_1"), "g_1");
    }

    #[test]
    fn a_re_placed_worker_stops_only_once_its_replacement_serves_and_is_linked() {
        let s = spec("g", &[("g_1", 10001)]);
        let d = desired_on("n2", &[("g_0", s.clone())]);
        let old = running(s.owner.clone(), &s);
        let mut o: Observed = [
            ("n1".into(), [("g_0".into(), old)].into()),
            ("n2".into(), BTreeMap::new()),
        ]
        .into();
        let p = plan(C, &d, &o);
        assert!(matches!(&p.actions[0], Action::StartWorker { node, .. } if node == "n2"));
        assert!(
            !p.actions.contains(&stop("n1", "g_0")),
            "the old worker serves until the new one does"
        );
        // Started and configured, but its port not recorded yet (peers cannot link to it).
        let new = running(s.owner.clone(), &s);
        o.get_mut("n2").unwrap().insert("g_0".into(), new);
        let unlisted = WorkerSpec {
            placed_port: 0,
            ..s.clone()
        };
        let p = plan(C, &desired_on("n2", &[("g_0", unlisted)]), &o);
        assert_eq!(p.actions, []);
        // Listening, and nothing left to configure in its group: the old one stops.
        assert_eq!(plan(C, &d, &o).actions, [stop("n1", "g_0")]);
        // A peer still to be linked to it keeps the old one.
        let mut peer = s.clone();
        peer.links.insert(
            "g_0@realm1".into(),
            apb::RouterLink {
                id: "g_0@realm1".into(),
                realm: "realm1".into(),
                peer_host: "10.0.0.2".into(),
                peer_port: 10000,
                peer_path: "/ws".into(),
                connected: false,
            },
        );
        let mut d2 = d.clone();
        d2.entry("n3".into())
            .or_default()
            .insert("g_1".into(), peer.clone());
        o.insert(
            "n3".into(),
            [("g_1".into(), running(s.owner.clone(), &s))].into(),
        );
        let p = plan(C, &d2, &o);
        assert!(!p.actions.contains(&stop("n1", "g_0")), "{:?}", p.actions);
        assert!(!p.actions.is_empty());
    }

    #[test]
    fn a_returned_node_s_worker_that_was_re_placed_is_stopped() {
        // n1 came back with g_0, which was re-placed on n2 (running there) while n1 was away.
        let s = spec("g", &[]);
        let d = desired_on("n2", &[("g_0", s.clone())]);
        let o: Observed = [
            (
                "n1".into(),
                [("g_0".into(), running(s.owner.clone(), &s))].into(),
            ),
            (
                "n2".into(),
                [("g_0".into(), running(s.owner.clone(), &s))].into(),
            ),
        ]
        .into();
        assert_eq!(plan(C, &d, &o).actions, [stop("n1", "g_0")]);
    }

    #[test]
    fn surplus_and_removed_groups_workers_stop_by_their_labels() {
        let s = spec("g", &[]);
        let d = desired_on("n1", &[("g_0", s.clone())]);
        let removed = Owner::router(C, "removed-group");
        let o: Observed = [(
            "n1".into(),
            [
                ("g_0".into(), running(s.owner.clone(), &s)),
                ("g_1".into(), running(s.owner.clone(), &s)), // scale lowered
                ("old_0".into(), running(removed.clone(), &s)), // its group is gone
            ]
            .into(),
        )]
        .into();
        assert_eq!(
            plan(C, &d, &o).actions,
            [stop("n1", "g_1"), stop_of("n1", "old_0", "removed-group")]
        );
    }

    #[test]
    fn a_worker_of_a_removed_group_with_a_reused_name_is_replaced() {
        // Group "g" was removed and a new group "g" (another oid) added: same worker ids.
        let s = spec("new-g", &[]);
        let d = desired_on("n1", &[("g_0", s.clone())]);
        let o: Observed = [(
            "n1".into(),
            [("g_0".into(), running(Owner::router(C, "old-g"), &s))].into(),
        )]
        .into();
        let p = plan(C, &d, &o);
        assert_eq!(p.actions[0], stop_of("n1", "g_0", "old-g"));
        assert!(
            matches!(&p.actions[1], Action::StartWorker { owner, .. } if owner.group == "new-g")
        );
    }

    #[test]
    fn other_clusters_and_unlabelled_workers_are_never_touched() {
        let s = spec("g", &[]);
        let theirs = Owner::router("cluster-2", "h");
        let o: Observed = [(
            "n1".into(),
            [
                ("h_0".into(), running(theirs.clone(), &s)),
                (
                    "g_0".into(),
                    WorkerObs {
                        owner: None,
                        ..running(theirs, &s)
                    },
                ),
            ]
            .into(),
        )]
        .into();
        let p = plan(C, &Desired::new(), &o);
        assert_eq!(p, Plan::default());
        // ... and a wanted id held by someone else is reported, not fought over.
        let d = desired_on("n1", &[("g_0", s)]);
        let p = plan(C, &d, &o);
        assert!(p.actions.is_empty());
        assert_eq!(p.blocked.len(), 1);
    }

    #[test]
    fn links_are_re_pointed_when_a_peer_moves_and_dropped_when_it_leaves() {
        let before = spec("g", &[("g_1", 10001), ("g_2", 10002)]);
        let after = spec("g", &[("g_1", 10005)]); // g_1 moved, g_2 left
        let d = desired_on("n1", &[("g_0", after.clone())]);
        let o: Observed = [(
            "n1".into(),
            [("g_0".into(), running(before.owner.clone(), &before))].into(),
        )]
        .into();
        let p = plan(C, &d, &o);
        assert_eq!(
            p.actions,
            [
                Action::StopLink {
                    node: "n1".into(),
                    id: "g_0".into(),
                    link: "g_2@realm1".into()
                },
                Action::StartLink {
                    node: "n1".into(),
                    id: "g_0".into(),
                    link: after.links["g_1@realm1"].clone()
                },
            ]
        );
    }

    #[test]
    fn stopping_stops_every_worker_the_cluster_owns_and_nothing_else() {
        let s = spec("g", &[]);
        let o: Observed = [
            (
                "n1".into(),
                [("g_0".into(), running(s.owner.clone(), &s))].into(),
            ),
            (
                "n2".into(),
                [
                    ("g_1".into(), running(s.owner.clone(), &s)),
                    ("h_0".into(), running(Owner::router("cluster-2", "h"), &s)),
                ]
                .into(),
            ),
        ]
        .into();
        assert_eq!(
            plan(C, &Desired::new(), &o).actions,
            [stop("n1", "g_0"), stop("n2", "g_1")]
        );
    }

    #[test]
    fn links_form_a_full_mesh_per_realm_without_self_links() {
        let peer = |w: &str, port| PeerWorker {
            worker: w.to_owned(),
            host: "10.0.0.1".to_owned(),
            port,
        };
        let peers = [peer("g_1", 10000), peer("g_2", 10001), peer("g_3", 10002)];
        let realms = BTreeSet::from(["realm1".to_owned(), "realm2".to_owned()]);
        let links = desired_links("g_2", &realms, &peers);
        let ids: Vec<&str> = links.keys().map(String::as_str).collect();
        assert_eq!(
            ids,
            ["g_1@realm1", "g_1@realm2", "g_3@realm1", "g_3@realm2"]
        );
        assert_eq!(links["g_3@realm2"].peer_port, 10002);
    }

    #[test]
    fn a_group_without_realms_serves_realm1() {
        assert_eq!(
            realms(&RouterWorkerGroup::default()),
            BTreeSet::from(["realm1".to_owned()])
        );
    }
}
