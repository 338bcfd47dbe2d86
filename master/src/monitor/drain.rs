//! Drained nodes (docs/operations.md, "Draining a node"). `DrainNode` stores the node as
//! DRAINING; placement and the web monitor then treat it as unavailable for new work (router
//! workers are re-placed, web work moves to a standby member), and the monitors stop its
//! workers once their replacements run. This watcher looks at every DRAINING node that is
//! online and marks it DRAINED once no worker a cluster started runs on it.

use std::sync::Arc;
use std::time::Duration;

use switchyard::pb::agent::v1 as apb;
use switchyard::pb::master::v1::{DrainStatus, Node, NodeStatus};

use super::agent::AgentApi;
use super::owner::{Owner, live};
use crate::core::Core;

/// Whether node `n` is drained (DRAINING or DRAINED): it takes no placements.
pub fn drained(n: &Node) -> bool {
    n.drain != DrainStatus::Unspecified as i32
}

/// Whether `workers` (one node's) include a live worker a cluster's monitor started.
pub fn holds_cluster_work(workers: &[apb::Worker]) -> bool {
    workers
        .iter()
        .any(|w| live(w.status) && Owner::of(w).is_some())
}

/// Checks the DRAINING nodes every `period` until `stop` (the end of the leader's term).
pub async fn watch(
    core: Arc<Core>,
    agents: Arc<dyn AgentApi>,
    period: Duration,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        if let Err(error) = check(&core, &*agents).await {
            tracing::warn!(%error, "cannot check the draining nodes; retrying");
        }
    }
}

async fn check(core: &Core, agents: &dyn AgentApi) -> Result<(), super::MonitorError> {
    let draining = core.list_nodes(Some(NodeStatus::Online)).await?;
    for node in draining
        .iter()
        .filter(|n| n.drain == DrainStatus::Draining as i32)
    {
        let list = apb::ListWorkersRequest::default();
        match agents.list_workers(node, list).await {
            Ok(r) if !holds_cluster_work(&r.workers) => {
                core.mark_drained(&node.oid).await?;
            }
            Ok(_) => {}
            Err(s) => {
                tracing::debug!(node = %node.authid, error = %s.message(), "draining node not observed")
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use apb::WorkerStatus;

    fn worker(owner: Option<Owner>, status: WorkerStatus) -> apb::Worker {
        apb::Worker {
            status: status as i32,
            options: owner.map(|o| o.options()),
            ..Default::default()
        }
    }

    #[test]
    fn only_live_workers_of_a_cluster_keep_a_node_draining() {
        let ours = || Some(Owner::web("c1"));
        assert!(holds_cluster_work(&[worker(ours(), WorkerStatus::Started)]));
        assert!(holds_cluster_work(&[worker(
            ours(),
            WorkerStatus::Stopping
        )]));
        assert!(!holds_cluster_work(&[worker(
            ours(),
            WorkerStatus::Stopped
        )]));
        assert!(
            !holds_cluster_work(&[worker(None, WorkerStatus::Started)]),
            "a worker an operator started by hand is not a cluster's"
        );
        assert!(!holds_cluster_work(&[]));
    }
}
