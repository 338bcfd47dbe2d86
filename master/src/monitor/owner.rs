//! Which cluster a worker belongs to, read from the worker itself.
//!
//! A monitor labels every worker it starts with its cluster's oid (and, for router workers,
//! its worker group's oid); agents report those labels back in `ListWorkers`. Ownership is
//! therefore never derived from store rows that can be deleted: a worker whose group, member
//! or whole cluster is gone is still recognised, and stopped, by the labels it carries.

use std::collections::HashMap;

use switchyard::pb::agent::v1 as apb;

/// Label naming the cluster (web or router) that started a worker.
pub const CLUSTER_LABEL: &str = "switchyard.cluster";
/// Label naming the router worker group a router worker serves.
pub const GROUP_LABEL: &str = "switchyard.workergroup";

/// Who started a worker, from its labels.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Owner {
    /// The cluster's oid.
    pub cluster: String,
    /// The worker group's oid (empty for web workers).
    pub group: String,
}

impl Owner {
    /// The owner of a web worker of cluster `cluster`.
    pub fn web(cluster: &str) -> Self {
        Owner {
            cluster: cluster.to_owned(),
            group: String::new(),
        }
    }

    /// The owner of a router worker of group `group` of cluster `cluster`.
    pub fn router(cluster: &str, group: &str) -> Self {
        Owner {
            cluster: cluster.to_owned(),
            group: group.to_owned(),
        }
    }

    /// The owner a worker reports, if a monitor started it.
    pub fn of(worker: &apb::Worker) -> Option<Self> {
        let labels = &worker.options.as_ref()?.labels;
        Some(Owner {
            cluster: labels.get(CLUSTER_LABEL)?.clone(),
            group: labels.get(GROUP_LABEL).cloned().unwrap_or_default(),
        })
    }

    /// The start options carrying this owner.
    pub fn options(&self) -> apb::WorkerOptions {
        let mut labels = HashMap::from([(CLUSTER_LABEL.to_owned(), self.cluster.clone())]);
        if !self.group.is_empty() {
            labels.insert(GROUP_LABEL.to_owned(), self.group.clone());
        }
        apb::WorkerOptions {
            labels,
            ..Default::default()
        }
    }
}

/// Whether a worker is (still) there: starting, serving, stopping, or restarting (its agent
/// starts it again after a failure: a monitor waits for it rather than starting it itself).
pub fn live(status: i32) -> bool {
    matches!(
        apb::WorkerStatus::try_from(status),
        Ok(apb::WorkerStatus::Starting
            | apb::WorkerStatus::Started
            | apb::WorkerStatus::Stopping
            | apb::WorkerStatus::Restarting)
    )
}

/// The id prefix of web cluster `cluster`'s workers: `cpw-<the whole oid>-`. The whole oid,
/// so that two clusters' ids cannot collide.
pub fn web_prefix(cluster: &str) -> String {
    format!("cpw-{cluster}-")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_round_trip_through_worker_options() {
        for owner in [Owner::web("c1"), Owner::router("c2", "g1")] {
            let worker = apb::Worker {
                options: Some(owner.options()),
                ..Default::default()
            };
            assert_eq!(Owner::of(&worker), Some(owner));
        }
        assert_eq!(
            Owner::of(&apb::Worker::default()),
            None,
            "no labels: not ours"
        );
    }

    #[test]
    fn web_ids_of_clusters_sharing_an_oid_prefix_differ() {
        let a = "0123abcd-0000-4000-8000-000000000001";
        let b = "0123abcd-0000-4000-8000-000000000002";
        assert_ne!(web_prefix(a), web_prefix(b));
        assert!(!web_prefix(b).starts_with(&web_prefix(a)));
    }
}
