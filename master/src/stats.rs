//! The monitors' view on demand: which workers of a cluster run where, with live process stats
//! (ListWebClusterWorkers, StatWebCluster, StatRouterCluster, StatRouterClusterWorkerGroup).

use std::collections::BTreeMap;

use switchyard::pb::agent::v1::{self as apb, WorkerType};
use switchyard::pb::master::v1::{
    ClusterWorker, Node, NodeStatus, Placement, RouterWorkerGroup, StatRouterClusterResponse,
    StatWebClusterResponse, WebClusterNode, WorkerGroupStat, WorkerStat,
};

use crate::agents::call;
use crate::core::Core;
use crate::error::Result;
use crate::monitor::owner::Owner;
use crate::monitor::web::{Member, assign};
use crate::store::{StoreExt, keys};
use crate::validate;

impl Core {
    async fn nodes_by_oid(&self) -> Result<BTreeMap<String, Node>> {
        Ok(self
            .list_nodes(None)
            .await?
            .into_iter()
            .map(|n| (n.oid.clone(), n))
            .collect())
    }

    /// Workers on `node` of `kind` that pass `keep`; nothing for an offline or unreachable node.
    async fn workers_on(
        &self,
        node: &Node,
        kind: WorkerType,
        keep: impl Fn(&apb::Worker) -> bool,
    ) -> Vec<ClusterWorker> {
        if node.status != NodeStatus::Online as i32 {
            return Vec::new();
        }
        let Ok(mut nc) = self.agents.node_controller(node) else {
            return Vec::new();
        };
        let Ok(list) = call(nc.list_workers(apb::ListWorkersRequest {
            r#type: kind as i32,
            status: 0,
        }))
        .await
        else {
            return Vec::new();
        };
        list.workers
            .into_iter()
            .filter(|w| keep(w))
            .map(|w| ClusterWorker {
                node_oid: node.oid.clone(),
                node_authid: node.authid.clone(),
                worker_id: w.id,
                pid: w.pid,
                status: w.status,
                observed: Some(std::time::SystemTime::now().into()),
                workergroup_oid: String::new(),
                port: 0,
            })
            .collect()
    }

    /// Process stats (and web request counters) of workers.
    async fn stat_workers(
        &self,
        nodes: &BTreeMap<String, Node>,
        workers: Vec<ClusterWorker>,
        web: bool,
    ) -> Vec<WorkerStat> {
        let stats = workers.into_iter().map(|w| async move {
            let node = nodes.get(&w.node_oid);
            let mut stat = WorkerStat {
                worker: None,
                stats: None,
                requests: 0,
            };
            if let Some(node) = node
                && w.status == apb::WorkerStatus::Started as i32
            {
                if let Ok(mut np) = self.agents.native_process(node) {
                    stat.stats = call(np.get_process_stats(apb::GetProcessStatsRequest {
                        process: w.worker_id.clone(),
                    }))
                    .await
                    .ok()
                    .and_then(|r| r.stats);
                }
                if web && let Ok(mut nc) = self.agents.node_controller(node) {
                    stat.requests = call(nc.get_web_transport(apb::GetWebTransportRequest {
                        worker_id: w.worker_id.clone(),
                    }))
                    .await
                    .ok()
                    .and_then(|r| r.transport)
                    .map_or(0, |t| t.requests);
                }
            }
            stat.worker = Some(w);
            stat
        });
        futures::future::join_all(stats).await
    }

    /// The workers of a web cluster, as its monitor sees them: on every online node, the web
    /// workers labelled with the cluster (a removed member's workers too, until they stop).
    pub async fn list_webcluster_workers(
        &self,
        oid: &str,
        online_only: bool,
    ) -> Result<Vec<ClusterWorker>> {
        let oid = validate::oid("webcluster_oid", oid)?;
        self.get_webcluster(&oid).await?;
        let nodes = self.nodes_by_oid().await?;
        let owner = Owner::web(&oid);
        let ours = |w: &apb::Worker| Owner::of(w).as_ref() == Some(&owner);
        let mut out = Vec::new();
        for node in nodes.values() {
            if online_only && node.status != NodeStatus::Online as i32 {
                continue;
            }
            out.extend(self.workers_on(node, WorkerType::Web, ours).await);
        }
        Ok(out)
    }

    /// Per-worker stats of a web cluster, aggregated.
    pub async fn stat_webcluster(&self, oid: &str) -> Result<StatWebClusterResponse> {
        let cluster = self.get_webcluster(oid).await?;
        let nodes = self.nodes_by_oid().await?;
        let members: Vec<WebClusterNode> = self
            .store
            .list(&keys::webcluster_nodes(&cluster.oid))
            .await?;
        let facts: Vec<Member> = members
            .iter()
            .map(|m| Member {
                node: m.node_oid.clone(),
                parallel: m.parallel.max(1),
                standby: m.standby,
                online: nodes
                    .get(&m.node_oid)
                    .is_some_and(|n| n.status == NodeStatus::Online as i32),
                drained: nodes
                    .get(&m.node_oid)
                    .is_some_and(crate::monitor::drain::drained),
            })
            .collect();
        let desired: u32 = assign(&facts).0.values().sum();
        let workers = self.list_webcluster_workers(&cluster.oid, false).await?;
        let running = workers
            .iter()
            .filter(|w| w.status == apb::WorkerStatus::Started as i32)
            .count() as u32;
        let stats = self.stat_workers(&nodes, workers, true).await;
        Ok(StatWebClusterResponse {
            oid: cluster.oid,
            status: cluster.status,
            status_reason: cluster.status_reason,
            desired_workers: desired,
            running_workers: running,
            total_requests: stats.iter().map(|s| s.requests).sum(),
            total_resident: stats
                .iter()
                .filter_map(|s| s.stats.as_ref())
                .map(|s| s.resident)
                .sum(),
            total_cpu_percent: stats
                .iter()
                .filter_map(|s| s.stats.as_ref())
                .map(|s| s.cpu_percent)
                .sum(),
            workers: stats,
        })
    }

    async fn stat_group(
        &self,
        nodes: &BTreeMap<String, Node>,
        group: RouterWorkerGroup,
    ) -> Result<WorkerGroupStat> {
        let placements: Vec<Placement> = self
            .store
            .list(&keys::group_placements(&group.cluster_oid, &group.oid))
            .await?;
        let mut workers = Vec::new();
        for (node_oid, names) in
            placements
                .iter()
                .fold(BTreeMap::<&str, Vec<&str>>::new(), |mut m, p| {
                    m.entry(p.node_oid.as_str())
                        .or_default()
                        .push(p.worker_name.as_str());
                    m
                })
        {
            if let Some(node) = nodes.get(node_oid) {
                let mut ws = self
                    .workers_on(node, WorkerType::Router, |w| {
                        names.contains(&crate::monitor::router::slot_name(&w.id))
                    })
                    .await;
                for w in &mut ws {
                    w.workergroup_oid = group.oid.clone();
                    w.port = placements
                        .iter()
                        .find(|p| p.worker_name == crate::monitor::router::slot_name(&w.worker_id))
                        .map_or(0, |p| p.tcp_listening_port);
                }
                workers.extend(ws);
            }
        }
        let running = workers
            .iter()
            .filter(|w| w.status == apb::WorkerStatus::Started as i32)
            .count() as u32;
        Ok(WorkerGroupStat {
            desired_workers: group.scale,
            running_workers: running,
            workers: self.stat_workers(nodes, workers, false).await,
            placements,
            workergroup: Some(group),
        })
    }

    /// Placements, worker status and per-worker stats of a router cluster.
    pub async fn stat_routercluster(&self, oid: &str) -> Result<StatRouterClusterResponse> {
        let cluster = self.get_routercluster(oid).await?;
        let nodes = self.nodes_by_oid().await?;
        let mut groups = Vec::new();
        for g in self.list_workergroups(&cluster.oid, None).await? {
            groups.push(self.stat_group(&nodes, g).await?);
        }
        Ok(StatRouterClusterResponse {
            oid: cluster.oid,
            status: cluster.status,
            status_reason: cluster.status_reason,
            workergroups: groups,
        })
    }

    /// Placements, worker status and per-worker stats of one worker group.
    pub async fn stat_workergroup(
        &self,
        cluster_oid: &str,
        group_oid: &str,
    ) -> Result<WorkerGroupStat> {
        let group = self.get_workergroup(cluster_oid, group_oid).await?;
        let nodes = self.nodes_by_oid().await?;
        self.stat_group(&nodes, group).await
    }
}
