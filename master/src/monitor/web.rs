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

/// Worker id `i` of a cluster.
pub fn worker_id(prefix: &str, i: u32) -> String {
    format!("{prefix}{i}")
}

/// The actions that take `observed` to `desired`, in per-node execution order. Unreachable
/// nodes (absent from `observed`) get no actions.
pub fn plan(desired: &Desired, observed: &Observed) -> Vec<Action> {
    let mut actions = Vec::new();
    for (node, workers) in observed {
        let wanted: BTreeSet<String> = desired
            .nodes
            .get(node)
            .map(|n| (0..*n).map(|i| worker_id(&desired.prefix, i)).collect())
            .unwrap_or_default();
        for (id, w) in workers {
            if !wanted.contains(id) && super::owner::live(w.status as i32) {
                actions.push(Action::StopWorker {
                    node: node.clone(),
                    id: id.clone(),
                });
            }
        }
        for id in &wanted {
            let current = workers.get(id);
            if current.is_some_and(|w| {
                matches!(
                    w.status,
                    WorkerStatus::Starting | WorkerStatus::Stopping | WorkerStatus::Restarting
                )
            }) {
                // On its way up or down, or its agent restarts it (configuration included):
                // observed again next time.
                continue;
            }
            let Some(w) = current.filter(|w| w.status == WorkerStatus::Started) else {
                // Missing, stopped or failed: (re)start it with its transport and services.
                actions.push(Action::StartWorker {
                    node: node.clone(),
                    id: id.clone(),
                });
                actions.push(Action::StartTransport {
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
                continue;
            };
            if !w.transport {
                actions.push(Action::StartTransport {
                    node: node.clone(),
                    id: id.clone(),
                });
            }
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
        }
    }
    actions
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
}

/// Which nodes run workers: every online active member, plus one online standby member for
/// each offline active member (in oid order). Returns the nodes and the number of active
/// members nobody replaces.
pub fn assign(members: &[Member]) -> (BTreeMap<String, u32>, usize) {
    let mut nodes = BTreeMap::new();
    let mut standbys = members.iter().filter(|m| m.standby && m.online);
    let mut unreplaced = 0;
    for m in members.iter().filter(|m| !m.standby) {
        if m.online {
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
        assert_eq!(
            a[1],
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

    #[test]
    fn standby_members_replace_offline_active_members() {
        let m = |node: &str, standby, online| Member {
            node: node.into(),
            parallel: 2,
            standby,
            online,
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
