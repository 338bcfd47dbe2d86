//! `EventService.StreamClusterStats`: one stream of the process stats of every worker of a cluster
//! (or of all clusters), merged from the per-node `StreamProcessStats` feeds of the agents. A node
//! that goes away ends only its own feed; the feed is re-opened when the node is online again, so
//! the merged stream survives node loss and return.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use switchyard::pb::agent::v1 as apb;
use switchyard::pb::master::v1::{
    ClusterStatus, Node, NodeStatus, RouterCluster, RouterWorkerGroup, StreamClusterStatsResponse,
    WebCluster,
};
use tokio::sync::mpsc;
use tonic::Status;
use tonic::codegen::BoxStream;

use crate::core::Core;
use crate::error::{Error, Result};
use crate::monitor::owner::web_prefix;
use crate::store::{StoreExt, keys};
use crate::validate;

/// Which worker ids belong to which cluster, and which nodes to listen to.
#[derive(Debug, Default)]
struct Matcher {
    /// (web worker id prefix, cluster oid).
    web: Vec<(String, String)>,
    /// router group name → cluster oid.
    groups: HashMap<String, String>,
}

impl Matcher {
    fn cluster_of(&self, worker: &str) -> Option<&str> {
        if let Some((_, oid)) = self
            .web
            .iter()
            .find(|(p, _)| worker.starts_with(p.as_str()))
        {
            return Some(oid);
        }
        let (group, n) = worker.rsplit_once('_')?;
        n.parse::<u32>().ok()?;
        self.groups.get(group).map(String::as_str)
    }
}

impl Core {
    /// Which workers belong to which running cluster; a store error is returned (the stream
    /// keeps its previous matcher), never taken for "no cluster".
    async fn matcher(&self, only: Option<&str>) -> Result<Matcher> {
        let mut m = Matcher::default();
        let running = |s: i32| s != ClusterStatus::Stopped as i32;
        for c in self.store.list::<WebCluster>(keys::WEBCLUSTERS).await? {
            if running(c.status) && only.is_none_or(|o| o == c.oid) {
                m.web.push((web_prefix(&c.oid), c.oid));
            }
        }
        for c in self
            .store
            .list::<RouterCluster>(keys::ROUTERCLUSTERS)
            .await?
        {
            if running(c.status) && only.is_none_or(|o| o == c.oid) {
                let groups = keys::workergroups(&c.oid);
                for g in self.store.list::<RouterWorkerGroup>(&groups).await? {
                    m.groups.insert(g.name, c.oid.clone());
                }
            }
        }
        Ok(m)
    }

    /// The merged stats stream of cluster `cluster_oid` (empty: every cluster).
    pub async fn stream_cluster_stats(
        self: &Arc<Self>,
        cluster_oid: &str,
        interval: f64,
    ) -> Result<BoxStream<StreamClusterStatsResponse>> {
        if !interval.is_finite() || !(0.05..=3600.0).contains(&interval) {
            return Err(Error::invalid(
                "interval",
                format!("must be between 0.05 and 3600 seconds, got {interval}"),
            ));
        }
        let only = if cluster_oid.is_empty() {
            None
        } else {
            let oid = validate::oid("cluster_oid", cluster_oid)?;
            let exists = self.store.get(&keys::webcluster(&oid)).await?.is_some()
                || self.store.get(&keys::routercluster(&oid)).await?.is_some();
            if !exists {
                return Err(Error::not_found(format_args!("cluster {oid}")));
            }
            Some(oid)
        };
        let (tx, rx) = mpsc::channel(256);
        let core = self.clone();
        tokio::spawn(async move {
            let matcher = Arc::new(RwLock::new(Matcher::default()));
            let mut feeds: HashMap<String, tokio::task::JoinHandle<()>> = HashMap::new();
            let mut ticker = tokio::time::interval(Duration::from_millis(250));
            loop {
                tokio::select! {
                    _ = core.shutdown.cancelled() => break,
                    _ = tx.closed() => break,
                    _ = ticker.tick() => {}
                }
                match core.matcher(only.as_deref()).await {
                    Ok(m) => *matcher.write().unwrap_or_else(|p| p.into_inner()) = m,
                    Err(error) => {
                        tracing::warn!(%error, "cannot read the clusters; keeping the last view");
                    }
                }
                feeds.retain(|_, task| !task.is_finished());
                let online = match core.list_nodes(Some(NodeStatus::Online)).await {
                    Ok(nodes) => nodes,
                    Err(error) => {
                        tracing::warn!(%error, "cannot list the nodes; retrying");
                        continue;
                    }
                };
                for node in online {
                    if let std::collections::hash_map::Entry::Vacant(slot) =
                        feeds.entry(node.oid.clone())
                    {
                        slot.insert(tokio::spawn(feed(
                            core.clone(),
                            node,
                            interval,
                            matcher.clone(),
                            tx.clone(),
                        )));
                    }
                }
            }
            for (_, task) in feeds {
                task.abort();
            }
        });
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }
}

/// Forwards one node's samples of cluster workers until the node's stream ends.
async fn feed(
    core: Arc<Core>,
    node: Node,
    interval: f64,
    matcher: Arc<RwLock<Matcher>>,
    tx: mpsc::Sender<Result<StreamClusterStatsResponse, Status>>,
) {
    let Ok(mut client) = core.agents.native_process(&node) else {
        return;
    };
    let Ok(response) = client
        .stream_process_stats(apb::StreamProcessStatsRequest {
            interval,
            processes: vec![],
        })
        .await
    else {
        return;
    };
    let mut stream = response.into_inner();
    while let Ok(Some(sample)) = stream.message().await {
        let cluster = matcher
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .cluster_of(&sample.process)
            .map(str::to_owned);
        let Some(cluster_oid) = cluster else { continue };
        let item = StreamClusterStatsResponse {
            cluster_oid,
            node_oid: node.oid.clone(),
            node_authid: node.authid.clone(),
            worker_id: sample.process,
            seq: sample.seq,
            stats: sample.stats,
        };
        if tx.send(Ok(item)).await.is_err() {
            return;
        }
    }
}
