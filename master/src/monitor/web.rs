//! Web cluster reconciliation as a pure function: what should run where (`Desired`), what runs
//! (`Observed`), and the actions between them (`plan`).

use std::collections::{BTreeMap, BTreeSet};

use switchyard::pb::agent::v1::{WebService, WebTransport, WorkerStatus};

/// What a web cluster wants.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    /// Worker id prefix `cpw-<cluster oid>-` (see `owner::web_prefix`).
    pub prefix: String,
    /// Node oid → number of web workers.
    pub nodes: BTreeMap<String, u32>,
    /// The listener every worker runs.
    pub transport: WebTransport,
    /// The services every worker serves, by path.
    pub services: BTreeMap<String, WebService>,
    /// The workers' generation (the cluster's `restart_generation`).
    pub generation: u32,
    /// Nodes replaced at once by a rolling restart.
    pub max_parallel: u32,
    /// Drained nodes: their workers stop only once the other nodes' workers serve.
    pub draining: BTreeSet<String>,
}

/// One observed worker of the cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerObs {
    /// Its status.
    pub status: WorkerStatus,
    /// Whether its transport runs.
    pub transport: bool,
    /// Its services, by path.
    pub services: BTreeMap<String, WebService>,
}

/// What runs: node oid → worker id → worker (only reachable nodes are present).
pub type Observed = BTreeMap<String, BTreeMap<String, WorkerObs>>;

/// One step towards the desired state.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Start worker `id` on `node`.
    StartWorker { node: String, id: String },
    /// Start the transport of worker `id`.
    StartTransport { node: String, id: String },
    /// Mount a service on worker `id`.
    StartService {
        node: String,
        id: String,
        service: WebService,
    },
    /// Unmount the service on `path` of worker `id`.
    StopService {
        node: String,
        id: String,
        path: String,
    },
    /// Stop worker `id` on `node`.
    StopWorker { node: String, id: String },
}

impl Action {
    /// The node the action runs on.
    pub fn node(&self) -> &str {
        match self {
            Action::StartWorker { node, .. }
            | Action::StartTransport { node, .. }
            | Action::StartService { node, .. }
            | Action::StopService { node, .. }
            | Action::StopWorker { node, .. } => node,
        }
    }
}

/// Worker `i` of generation `generation` of a cluster: `<prefix><i>` for generation 0 (the
/// workers of a cluster never restarted), `<prefix>g<generation>-<i>` after a rolling restart.
pub fn worker_id(prefix: &str, generation: u32, i: u32) -> String {
    if generation == 0 {
        format!("{prefix}{i}")
    } else {
        format!("{prefix}g{generation}-{i}")
    }
}

/// Whether `w` serves as desired: started, listening, with exactly the desired services.
fn ready(desired: &Desired, w: &WorkerObs) -> bool {
    w.status == WorkerStatus::Started && w.transport && w.services == desired.services
}

/// One node's workers, split by what the plan makes of them.
struct NodeView<'a> {
    node: &'a str,
    /// The ids of the current generation's workers wanted here.
    wanted: Vec<String>,
    /// Live workers of the cluster here that are not wanted (older generations, surplus).
    others: Vec<&'a str>,
    /// Whether a wanted worker is live here (the node's replacement has begun).
    begun: bool,
    /// Whether every wanted worker is ready.
    all_ready: bool,
}

fn view<'a>(
    desired: &Desired,
    node: &'a str,
    workers: &'a BTreeMap<String, WorkerObs>,
) -> NodeView<'a> {
    let n = desired.nodes.get(node).copied().unwrap_or(0);
    let wanted: Vec<String> = (0..n)
        .map(|i| worker_id(&desired.prefix, desired.generation, i))
        .collect();
    let set: BTreeSet<&str> = wanted.iter().map(String::as_str).collect();
    let others = workers
        .iter()
        .filter(|(id, w)| !set.contains(id.as_str()) && super::owner::live(w.status as i32))
        .map(|(id, _)| id.as_str())
        .collect();
    let begun = wanted.iter().any(|id| {
        workers
            .get(id)
            .is_some_and(|w| super::owner::live(w.status as i32))
    });
    let all_ready = wanted
        .iter()
        .all(|id| workers.get(id).is_some_and(|w| ready(desired, w)));
    NodeView {
        node,
        wanted,
        others,
        begun,
        all_ready,
    }
}

/// Whether a rolling restart is under way: some observed node still runs workers the current
/// generation replaces, or a node that should run workers was not observed.
pub fn rolling(desired: &Desired, observed: &Observed) -> bool {
    desired.nodes.keys().any(|n| !observed.contains_key(n))
        || observed.iter().any(|(node, workers)| {
            let v = view(desired, node, workers);
            !v.wanted.is_empty() && !v.others.is_empty()
        })
}

/// The actions that take `observed` to `desired`, in per-node execution order. Unreachable
/// nodes (absent from `observed`) get no actions.
///
/// A node whose wanted workers run only as older generations (a rolling restart) keeps them
/// until its turn: at most `max_parallel` nodes are replaced at once, each by starting the new
/// generation's workers and stopping the old ones only once every new one serves. A drained
/// node's workers stop only once every other node's wanted workers serve.
pub fn plan(desired: &Desired, observed: &Observed) -> Vec<Action> {
    let views: Vec<NodeView> = observed
        .iter()
        .map(|(node, workers)| view(desired, node, workers))
        .collect();
    let elsewhere_ready = desired.nodes.keys().all(|n| {
        views
            .iter()
            .find(|v| v.node == n.as_str())
            .is_some_and(|v| v.all_ready)
    });
    let in_progress = views
        .iter()
        .filter(|v| !v.wanted.is_empty() && !v.others.is_empty() && v.begun)
        .count();
    let mut turns = (desired.max_parallel.max(1) as usize).saturating_sub(in_progress);
    let mut actions = Vec::new();
    for v in &views {
        let workers = &observed[v.node];
        let node = v.node.to_owned();
        let stop_others = |actions: &mut Vec<Action>| {
            // One already stopping drains its connections: not stopped twice.
            let stopping = |id: &str| {
                workers
                    .get(id)
                    .is_some_and(|w| w.status == WorkerStatus::Stopping)
            };
            for id in v.others.iter().filter(|id| !stopping(id)) {
                actions.push(Action::StopWorker {
                    node: node.clone(),
                    id: (*id).to_owned(),
                });
            }
        };
        if v.wanted.is_empty() {
            // Not wanted here at all; a drained node hands over first.
            if !desired.draining.contains(v.node) || elsewhere_ready {
                stop_others(&mut actions);
            }
            continue;
        }
        if !v.others.is_empty() {
            for id in &v.others {
                if let Some(w) = workers
                    .get(*id)
                    .filter(|w| w.status == WorkerStatus::Started)
                {
                    configure(&mut actions, desired, v.node, id, w);
                }
            }
            if !v.begun {
                if turns == 0 {
                    continue;
                }
                turns -= 1;
            } else if v.all_ready {
                stop_others(&mut actions);
                continue;
            }
        }
        for id in &v.wanted {
            start_or_configure(&mut actions, desired, v.node, id, workers.get(id));
        }
    }
    actions
}

/// The actions for wanted worker `id`: started with its transport and services when missing,
/// stopped or failed; configured when it runs; nothing while it is on its way.
fn start_or_configure(
    actions: &mut Vec<Action>,
    desired: &Desired,
    node: &str,
    id: &str,
    current: Option<&WorkerObs>,
) {
    if current.is_some_and(|w| {
        matches!(
            w.status,
            WorkerStatus::Starting | WorkerStatus::Stopping | WorkerStatus::Restarting
        )
    }) {
        // On its way up or down, or its agent restarts it (configuration included):
        // observed again next time.
        return;
    }
    let (node, id) = (node.to_owned(), id.to_owned());
    match current.filter(|w| w.status == WorkerStatus::Started) {
        Some(w) => configure(actions, desired, &node, &id, w),
        None => {
            // Missing, stopped or failed: (re)start it with its transport and services.
            // Services before the listener: a worker takes its first request (on a shared
            // port, as soon as it listens) only once it serves everything.
            actions.push(Action::StartWorker {
                node: node.clone(),
                id: id.clone(),
            });
            for s in desired.services.values() {
                actions.push(Action::StartService {
                    node: node.clone(),
                    id: id.clone(),
                    service: s.clone(),
                });
            }
            actions.push(Action::StartTransport {
                node: node.clone(),
                id: id.clone(),
            });
        }
    }
}

/// The actions that bring running worker `id` to the desired transport and services.
fn configure(actions: &mut Vec<Action>, desired: &Desired, node: &str, id: &str, w: &WorkerObs) {
    let (node, id) = (node.to_owned(), id.to_owned());
    for (path, s) in &w.services {
        if desired.services.get(path) != Some(s) {
            actions.push(Action::StopService {
                node: node.clone(),
                id: id.clone(),
                path: path.clone(),
            });
        }
    }
    for (path, s) in &desired.services {
        if w.services.get(path) != Some(s) {
            actions.push(Action::StartService {
                node: node.clone(),
                id: id.clone(),
                service: s.clone(),
            });
        }
    }
    if !w.transport {
        actions.push(Action::StartTransport { node, id });
    }
}

/// Membership facts the monitor derives desired nodes from.
#[derive(Debug, Clone)]
pub struct Member {
    /// The node's oid.
    pub node: String,
    /// Web workers on it.
    pub parallel: u32,
    /// Standby member.
    pub standby: bool,
    /// Online now.
    pub online: bool,
    /// Drained (it runs nothing, and its place is taken as if it were offline).
    pub drained: bool,
}

/// Which nodes run workers: every online active member, plus one online standby member for
/// each offline active member (in oid order); a drained member counts as offline. Returns the nodes and the number of active
/// members nobody replaces.
pub fn assign(members: &[Member]) -> (BTreeMap<String, u32>, usize) {
    let mut nodes = BTreeMap::new();
    let mut standbys = members
        .iter()
        .filter(|m| m.standby && m.online && !m.drained);
    let mut unreplaced = 0;
    for m in members.iter().filter(|m| !m.standby) {
        if m.online && !m.drained {
            nodes.insert(m.node.clone(), m.parallel);
        } else if let Some(s) = standbys.next() {
            nodes.insert(s.node.clone(), s.parallel);
        } else {
            unreplaced += 1;
        }
    }
    (nodes, unreplaced)
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard::pb::agent::v1::web_service::Service;

    fn svc(path: &str) -> WebService {
        WebService {
            path: path.into(),
            service: Some(Service::Nodeinfo(Default::default())),
        }
    }

    fn desired(nodes: &[(&str, u32)], services: &[&str]) -> Desired {
        Desired {
            prefix: "cpw-abcdef01-".into(),
            nodes: nodes.iter().map(|(n, p)| (n.to_string(), *p)).collect(),
            transport: WebTransport::default(),
            services: services.iter().map(|p| (p.to_string(), svc(p))).collect(),
            generation: 0,
            max_parallel: 1,
            draining: BTreeSet::new(),
        }
    }

    fn running(services: &[&str]) -> WorkerObs {
        WorkerObs {
            status: WorkerStatus::Started,
            transport: true,
            services: services.iter().map(|p| (p.to_string(), svc(p))).collect(),
        }
    }

    #[test]
    fn starts_missing_workers_with_transport_and_services() {
        let d = desired(&[("n1", 2)], &["/"]);
        let o: Observed = [("n1".to_string(), BTreeMap::new())].into();
        let a = plan(&d, &o);
        assert_eq!(a.len(), 6);
        assert_eq!(
            a[0],
            Action::StartWorker {
                node: "n1".into(),
                id: "cpw-abcdef01-0".into()
            }
        );
        assert!(
            matches!(&a[1], Action::StartService { id, .. } if id == "cpw-abcdef01-0"),
            "services are mounted before the worker listens: {a:?}"
        );
        assert_eq!(
            a[2],
            Action::StartTransport {
                node: "n1".into(),
                id: "cpw-abcdef01-0".into()
            }
        );
    }

    #[test]
    fn converged_means_no_actions() {
        let d = desired(&[("n1", 1)], &["/", "/a"]);
        let o: Observed = [(
            "n1".to_string(),
            [("cpw-abcdef01-0".to_string(), running(&["/", "/a"]))].into(),
        )]
        .into();
        assert!(plan(&d, &o).is_empty());
    }

    #[test]
    fn services_follow_the_cluster_both_ways() {
        let d = desired(&[("n1", 1)], &["/", "/new"]);
        let o: Observed = [(
            "n1".to_string(),
            [("cpw-abcdef01-0".to_string(), running(&["/", "/old"]))].into(),
        )]
        .into();
        let a = plan(&d, &o);
        assert!(a.contains(&Action::StopService {
            node: "n1".into(),
            id: "cpw-abcdef01-0".into(),
            path: "/old".into()
        }));
        assert!(a.contains(&Action::StartService {
            node: "n1".into(),
            id: "cpw-abcdef01-0".into(),
            service: svc("/new")
        }));
        assert_eq!(a.len(), 2);
    }

    #[test]
    fn surplus_workers_stop_when_parallel_drops_or_the_member_leaves() {
        let d = desired(&[("n1", 1)], &[]);
        let two: BTreeMap<_, _> = [
            ("cpw-abcdef01-0".to_string(), running(&[])),
            ("cpw-abcdef01-1".to_string(), running(&[])),
        ]
        .into();
        let o: Observed = [("n1".to_string(), two.clone()), ("n2".to_string(), two)].into();
        let a = plan(&d, &o);
        assert_eq!(
            a,
            vec![
                Action::StopWorker {
                    node: "n1".into(),
                    id: "cpw-abcdef01-1".into()
                },
                Action::StopWorker {
                    node: "n2".into(),
                    id: "cpw-abcdef01-0".into()
                },
                Action::StopWorker {
                    node: "n2".into(),
                    id: "cpw-abcdef01-1".into()
                },
            ]
        );
    }

    #[test]
    fn failed_workers_are_restarted_and_unreachable_nodes_left_alone() {
        let d = desired(&[("n1", 1), ("n2", 1)], &[]);
        let failed = WorkerObs {
            status: WorkerStatus::Failed,
            transport: false,
            services: BTreeMap::new(),
        };
        let o: Observed = [(
            "n1".to_string(),
            [("cpw-abcdef01-0".to_string(), failed)].into(),
        )]
        .into();
        let a = plan(&d, &o);
        assert_eq!(
            a[0],
            Action::StartWorker {
                node: "n1".into(),
                id: "cpw-abcdef01-0".into()
            }
        );
        assert!(a.iter().all(|x| x.node() == "n1"));
    }

    #[test]
    fn a_worker_on_its_way_up_or_down_is_left_alone() {
        let d = desired(&[("n1", 2)], &[]);
        let on_the_way = |status| WorkerObs {
            status,
            transport: false,
            services: BTreeMap::new(),
        };
        let o: Observed = [(
            "n1".to_string(),
            [
                (
                    "cpw-abcdef01-0".to_string(),
                    on_the_way(WorkerStatus::Starting),
                ),
                (
                    "cpw-abcdef01-1".to_string(),
                    on_the_way(WorkerStatus::Stopping),
                ),
            ]
            .into(),
        )]
        .into();
        assert!(plan(&d, &o).is_empty(), "{:?}", plan(&d, &o));
    }

    #[test]
    fn a_worker_its_agent_restarts_is_waited_for_and_stopped_when_unwanted() {
        let restarting = WorkerObs {
            status: WorkerStatus::Restarting,
            transport: false,
            services: BTreeMap::new(),
        };
        let d = desired(&[("n1", 1)], &["/"]);
        let o: Observed = [(
            "n1".to_string(),
            [("cpw-abcdef01-0".to_string(), restarting.clone())].into(),
        )]
        .into();
        assert_eq!(plan(&d, &o), [], "neither started again nor configured");
        let gone = desired(&[], &["/"]);
        assert_eq!(
            plan(&gone, &o),
            [Action::StopWorker {
                node: "n1".into(),
                id: "cpw-abcdef01-0".into()
            }]
        );
    }

    fn ids(a: &[Action], kind: &str) -> Vec<String> {
        a.iter()
            .filter_map(|x| match (x, kind) {
                (Action::StartWorker { node, id }, "start")
                | (Action::StopWorker { node, id }, "stop") => Some(format!("{node}/{id}")),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_rolling_restart_replaces_max_parallel_nodes_new_before_old() {
        let mut d = desired(&[("n1", 2), ("n2", 2), ("n3", 2)], &["/"]);
        d.generation = 1;
        d.max_parallel = 2;
        let old: BTreeMap<String, WorkerObs> = [
            ("cpw-abcdef01-0".to_string(), running(&["/"])),
            ("cpw-abcdef01-1".to_string(), running(&["/"])),
        ]
        .into();
        let mut o: Observed = ["n1", "n2", "n3"]
            .iter()
            .map(|n| (n.to_string(), old.clone()))
            .collect();
        assert!(rolling(&d, &o));
        let a = plan(&d, &o);
        assert_eq!(
            ids(&a, "start"),
            [
                "n1/cpw-abcdef01-g1-0",
                "n1/cpw-abcdef01-g1-1",
                "n2/cpw-abcdef01-g1-0",
                "n2/cpw-abcdef01-g1-1"
            ],
            "two nodes at a time, and the third waits"
        );
        assert!(
            ids(&a, "stop").is_empty(),
            "nothing stops before its replacement serves"
        );
        // n1's new workers serve, n2's still start: n1's old ones stop, n3 still waits.
        let mut new = |node: &str, status| {
            let w = o.get_mut(node).unwrap();
            for i in 0..2 {
                let mut obs = running(&["/"]);
                obs.status = status;
                w.insert(format!("cpw-abcdef01-g1-{i}"), obs);
            }
        };
        new("n1", WorkerStatus::Started);
        new("n2", WorkerStatus::Starting);
        let a = plan(&d, &o);
        assert_eq!(ids(&a, "stop"), ["n1/cpw-abcdef01-0", "n1/cpw-abcdef01-1"]);
        assert!(ids(&a, "start").is_empty(), "{a:?}");
        // n1 done: n3's turn.
        o.get_mut("n1").unwrap().retain(|id, _| id.contains("-g1-"));
        let a = plan(&d, &o);
        assert_eq!(
            ids(&a, "start"),
            ["n3/cpw-abcdef01-g1-0", "n3/cpw-abcdef01-g1-1"]
        );
        assert!(rolling(&d, &o));
        for n in ["n2", "n3"] {
            let w = o.get_mut(n).unwrap();
            w.retain(|id, _| id.contains("-g1-"));
            for obs in w.values_mut() {
                obs.status = WorkerStatus::Started;
            }
            for i in 0..2 {
                w.insert(format!("cpw-abcdef01-g1-{i}"), running(&["/"]));
            }
        }
        assert!(!rolling(&d, &o));
        assert_eq!(plan(&d, &o), []);
    }

    #[test]
    fn a_drained_node_stops_its_workers_once_the_standby_serves() {
        let mut d = desired(&[("standby", 1)], &[]);
        d.draining = ["drained".to_string()].into();
        let mut o: Observed = [
            (
                "drained".to_string(),
                [("cpw-abcdef01-0".to_string(), running(&[]))].into(),
            ),
            ("standby".to_string(), BTreeMap::new()),
        ]
        .into();
        let a = plan(&d, &o);
        assert_eq!(ids(&a, "start"), ["standby/cpw-abcdef01-0"]);
        assert!(ids(&a, "stop").is_empty());
        o.get_mut("standby")
            .unwrap()
            .insert("cpw-abcdef01-0".to_string(), running(&[]));
        assert_eq!(ids(&plan(&d, &o), "stop"), ["drained/cpw-abcdef01-0"]);
    }

    #[test]
    fn standby_members_replace_offline_active_members() {
        let m = |node: &str, standby, online| Member {
            node: node.into(),
            parallel: 2,
            standby,
            online,
            drained: false,
        };
        let (nodes, unreplaced) = assign(&[
            m("a", false, true),
            m("b", false, false),
            m("s", true, true),
        ]);
        assert_eq!(nodes.keys().collect::<Vec<_>>(), ["a", "s"]);
        assert_eq!(unreplaced, 0);
        let (nodes, _) = assign(&[m("a", false, true), m("b", false, true), m("s", true, true)]);
        assert!(
            !nodes.contains_key("s"),
            "a standby runs nothing while every active member is online"
        );
        let (nodes, unreplaced) = assign(&[
            m("a", false, false),
            m("b", false, false),
            m("s", true, true),
        ]);
        assert_eq!((nodes.len(), unreplaced), (1, 1));
    }
}
