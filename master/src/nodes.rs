//! Nodes: registered by their first heartbeat (durably, with a new oid), online while their
//! heartbeat stream is up and heartbeats arrive within the grace period, offline at once when the
//! stream breaks. Liveness lives in the leader's memory; the node record changes only when what
//! the agent reports changes, so heartbeats cost no disk writes. The leader writes a node's
//! liveness (`nodelive/`) when it changes: followers answer with it, and a new leader starts
//! from it (docs/operations.md, "Several masters").

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Instant, SystemTime};

use switchyard::error::Reason;
use switchyard::pb::master::v1::{
    DrainStatus, EventType, HeartbeatRequest, Node, NodeStatus, event,
};

use crate::core::{Core, new_oid};
use crate::error::{Error, Result};
use crate::store::{StoreExt, Txn, codec, keys};
use crate::validate;

#[derive(Debug, Clone, Copy)]
struct Live {
    last_seen: Instant,
    last_seen_at: SystemTime,
    streams: u32,
    online: bool,
    /// Restored from the previous leader's view, not yet confirmed by a heartbeat to this one.
    presumed: bool,
}

/// In-memory liveness of nodes, by oid.
#[derive(Debug, Default)]
pub struct Liveness {
    nodes: Mutex<HashMap<String, Live>>,
}

impl Liveness {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Live>> {
        self.nodes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether node `oid` is online now.
    pub fn is_online(&self, oid: &str) -> bool {
        self.lock().get(oid).is_some_and(|l| l.online)
    }
}

impl Core {
    /// The status of node `oid`.
    pub fn node_status(&self, oid: &str) -> NodeStatus {
        if self.liveness.is_online(oid) {
            NodeStatus::Online
        } else {
            NodeStatus::Offline
        }
    }

    /// `node` with its status and last heartbeat: the leader's own view, or on a follower the
    /// leader's as last written.
    async fn with_liveness(&self, mut node: Node) -> Node {
        if !self.leadership.is_leader() {
            let row = self.store.load::<Node>(&keys::node_live(&node.oid)).await;
            let (status, last) = match row {
                Ok(Some((live, _))) => (live.status, live.last_heartbeat),
                _ => (NodeStatus::Offline as i32, None),
            };
            node.status = status;
            node.last_heartbeat = last;
            return node;
        }
        let live = self.liveness.lock().get(&node.oid).copied();
        node.status = if live.is_some_and(|l| l.online) {
            NodeStatus::Online
        } else {
            NodeStatus::Offline
        } as i32;
        if let Some(l) = live {
            node.last_heartbeat = Some(l.last_seen_at.into());
        }
        node
    }

    /// At the start of a term: the nodes the previous leader saw online are presumed online
    /// (their agents reconnect within the grace period, or go offline then), and no other node
    /// is. Whether any was.
    pub async fn take_over_liveness(&self) -> bool {
        let rows = match self.store.list::<Node>(keys::NODE_LIVENESS).await {
            Ok(rows) => rows,
            Err(error) => {
                tracing::warn!(%error, "cannot read the nodes' last liveness; waiting for heartbeats");
                return false;
            }
        };
        let mut live = self.liveness.lock();
        // What this master knew from an earlier term of its own is stale: start from the rows.
        live.clear();
        let mut restored = false;
        for node in rows
            .iter()
            .filter(|n| n.status == NodeStatus::Online as i32)
        {
            live.entry(node.oid.clone()).or_insert_with(|| {
                restored = true;
                Live {
                    last_seen: Instant::now(),
                    last_seen_at: SystemTime::now(),
                    streams: 0,
                    online: true,
                    presumed: true,
                }
            });
        }
        restored
    }

    /// Writes node `oid`'s liveness for followers and the next leader.
    async fn record_liveness(&self, oid: &str, online: bool) {
        let row = Node {
            oid: oid.to_owned(),
            status: if online {
                NodeStatus::Online
            } else {
                NodeStatus::Offline
            } as i32,
            last_heartbeat: Some(SystemTime::now().into()),
            ..Default::default()
        };
        let txn = Txn::new().put(keys::node_live(oid), codec::encode(&row));
        if let Err(error) = self.commit_as_leader(txn).await {
            tracing::warn!(%oid, %error, "cannot record the node's liveness");
        }
    }

    /// Records a heartbeat from the node `authid` (already checked against its certificate).
    /// The first one registers the node. Returns the node. Only the leader keeps liveness: a
    /// follower registers the node and answers.
    pub async fn heartbeat(&self, req: &HeartbeatRequest, first_of_stream: bool) -> Result<Node> {
        if !switchyard::auth::valid_name(&req.authid) {
            return Err(Error::invalid("authid", "not a valid node authid"));
        }
        let name_key = keys::node_name(&req.authid);
        let existing = match self.store.load_str(&name_key).await? {
            Some(oid) => self.store.load::<Node>(&keys::node(&oid)).await?,
            None => None,
        };
        let reported = |mut n: Node| {
            n.endpoint = req.endpoint.clone();
            n.cluster_ip = req.cluster_ip.clone();
            n.cpu_count = req.cpu_count;
            n.version = req.version.clone();
            n.labels = req.labels.clone();
            n.workers = req.workers;
            n
        };
        let node = match existing {
            Some((node, bytes)) => {
                let updated = reported(node.clone());
                let changed = Node {
                    workers: 0,
                    last_heartbeat: None,
                    ..updated.clone()
                } != Node {
                    workers: 0,
                    last_heartbeat: None,
                    ..node.clone()
                };
                if changed {
                    let key = keys::node(&node.oid);
                    self.store
                        .commit(
                            Txn::new()
                                .equals(key.clone(), bytes)
                                .put(key, codec::encode(&updated)),
                        )
                        .await?;
                }
                updated
            }
            None => {
                let node = reported(Node {
                    oid: new_oid(),
                    authid: req.authid.clone(),
                    registered: Some(SystemTime::now().into()),
                    ..Default::default()
                });
                let registered = self
                    .store
                    .commit(
                        Txn::new()
                            .absent(name_key.clone())
                            .put(name_key, node.oid.clone().into_bytes())
                            .put(keys::node(&node.oid), codec::encode(&node)),
                    )
                    .await;
                match registered {
                    Ok(_) => node,
                    // Two streams of one new node raced: the other registered it.
                    Err(crate::store::StoreError::Conflict(_)) => {
                        return Box::pin(self.heartbeat(req, first_of_stream)).await;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        };
        if !self.leadership.is_leader() {
            return Ok(node);
        }
        let (became_online, confirmed) = {
            let mut live = self.liveness.lock();
            let entry = live.entry(node.oid.clone()).or_insert(Live {
                last_seen: Instant::now(),
                last_seen_at: SystemTime::now(),
                streams: 0,
                online: false,
                presumed: false,
            });
            entry.last_seen = Instant::now();
            entry.last_seen_at = SystemTime::now();
            if first_of_stream {
                entry.streams += 1;
            }
            let (was, presumed) = (entry.online, entry.presumed);
            entry.online = true;
            entry.presumed = false;
            (!was, presumed)
        };
        if became_online {
            self.record_liveness(&node.oid, true).await;
        }
        let node = self.with_liveness(node).await;
        if became_online || confirmed {
            tracing::info!(node = %node.authid, oid = %node.oid, "node online");
            self.events.publish(
                EventType::OnNodeReady,
                &node.oid,
                None,
                event::Object::Node(node.clone()),
            );
        }
        Ok(node)
    }

    /// A heartbeat stream of node `oid` ended: offline at once unless another stream is up.
    pub async fn heartbeat_stream_ended(&self, oid: &str) {
        let went_offline = {
            let mut live = self.liveness.lock();
            match live.get_mut(oid) {
                Some(l) => {
                    l.streams = l.streams.saturating_sub(1);
                    let off = l.streams == 0 && l.online;
                    if l.streams == 0 {
                        l.online = false;
                    }
                    off
                }
                None => false,
            }
        };
        if went_offline {
            self.node_went_offline(oid, "stream_ended", "heartbeat stream ended")
                .await;
        }
    }

    /// Marks nodes offline whose last heartbeat is older than the grace period.
    pub async fn expire_heartbeats(&self) {
        let grace = self.heartbeat.grace;
        let expired: Vec<String> = {
            let mut live = self.liveness.lock();
            live.iter_mut()
                .filter(|(_, l)| l.online && l.last_seen.elapsed() > grace)
                .map(|(oid, l)| {
                    l.online = false;
                    oid.clone()
                })
                .collect()
        };
        for oid in expired {
            self.node_went_offline(&oid, "missed", "no heartbeat within the grace period")
                .await;
        }
    }

    async fn node_went_offline(&self, oid: &str, reason: &'static str, why: &str) {
        self.record_liveness(oid, false).await;
        if let Ok(Some((node, _))) = self.store.load::<Node>(&keys::node(oid)).await {
            tracing::warn!(node = %node.authid, %oid, why, "node offline");
            let labels = crate::metrics::NodeReasonLabels {
                node: node.authid.clone(),
                reason,
            };
            self.offline_total.get_or_create(&labels).inc();
            let node = self.with_liveness(node).await;
            self.events.publish(
                EventType::OnNodeShutdown,
                oid,
                None,
                event::Object::Node(node),
            );
        }
    }

    /// A node by oid.
    pub async fn get_node(&self, oid: &str) -> Result<Node> {
        let oid = validate::oid("node_oid", oid)?;
        let (node, _) = self
            .store
            .load::<Node>(&keys::node(&oid))
            .await?
            .ok_or_else(|| Error::not_found(format_args!("node {oid}")))?;
        Ok(self.with_liveness(node).await)
    }

    /// A node by authid.
    pub async fn get_node_by_name(&self, authid: &str) -> Result<Node> {
        if authid.is_empty() {
            return Err(Error::invalid("authid", "required"));
        }
        let oid = self
            .store
            .load_str(&keys::node_name(authid))
            .await?
            .ok_or_else(|| Error::not_found(format_args!("node '{authid}'")))?;
        self.get_node(&oid).await
    }

    /// A node by oid or authid (`field` names the argument in errors).
    pub async fn resolve_node(&self, field: &str, oid_or_name: &str) -> Result<Node> {
        if oid_or_name.is_empty() {
            return Err(Error::invalid(field, "required"));
        }
        match uuid::Uuid::parse_str(oid_or_name) {
            Ok(_) => self.get_node(oid_or_name).await,
            Err(_) => self.get_node_by_name(oid_or_name).await,
        }
    }

    /// Every node, optionally only those in `status`.
    pub async fn list_nodes(&self, status: Option<NodeStatus>) -> Result<Vec<Node>> {
        let mut nodes = Vec::new();
        for node in self.store.list::<Node>(keys::NODES).await? {
            let node = self.with_liveness(node).await;
            if status.is_none_or(|s| node.status == s as i32) {
                nodes.push(node);
            }
        }
        Ok(nodes)
    }

    /// Drains (`drain`) or undrains node `oid`, stored on its record (docs/operations.md,
    /// "Draining a node"). A drained node starts DRAINING; the drain watcher
    /// ([`crate::monitor::drain`]) makes it DRAINED once nothing of a cluster runs on it.
    /// Asking for the state the node is in changes nothing.
    pub async fn set_drain(
        &self,
        oid: &str,
        drain: bool,
        caller: Option<&switchyard::auth::Principal>,
    ) -> Result<Node> {
        let oid = validate::oid("node_oid", oid)?;
        let key = keys::node(&oid);
        let (mut node, bytes) = self
            .store
            .load::<Node>(&key)
            .await?
            .ok_or_else(|| Error::not_found(format_args!("node {oid}")))?;
        let drained = node.drain != DrainStatus::Unspecified as i32;
        if drained == drain {
            return Ok(self.with_liveness(node).await);
        }
        node.drain = if drain {
            DrainStatus::Draining
        } else {
            DrainStatus::Unspecified
        } as i32;
        self.store
            .commit(
                Txn::new()
                    .equals(key.clone(), bytes)
                    .put(key, codec::encode(&node)),
            )
            .await
            .map_err(|e| crate::web::conflict_retry(e, "node"))?;
        let (kind, what) = if drain {
            (EventType::OnNodeDraining, "node draining")
        } else {
            (EventType::OnNodeUndrained, "node undrained")
        };
        tracing::info!(node = %node.authid, %oid, "{what}");
        let node = self.with_liveness(node).await;
        self.events.publish(
            kind,
            &oid,
            Some(crate::core::who(caller)),
            event::Object::Node(node.clone()),
        );
        Ok(node)
    }

    /// Marks drained node `oid` DRAINED (nothing of a cluster runs on it any more), unless it
    /// was undrained meanwhile; true when it changed.
    pub async fn mark_drained(&self, oid: &str) -> Result<bool> {
        let key = keys::node(oid);
        let Some((mut node, bytes)) = self.store.load::<Node>(&key).await? else {
            return Ok(false);
        };
        if node.drain != DrainStatus::Draining as i32 {
            return Ok(false);
        }
        node.drain = DrainStatus::Drained as i32;
        self.commit_as_leader(
            Txn::new()
                .equals(key.clone(), bytes)
                .put(key, codec::encode(&node)),
        )
        .await?;
        tracing::info!(node = %node.authid, %oid, "node drained: nothing of a cluster runs on it");
        let node = self.with_liveness(node).await;
        self.events.publish(
            EventType::OnNodeDrained,
            oid,
            None,
            event::Object::Node(node),
        );
        Ok(true)
    }

    /// Forgets a node that is no cluster's member, revoking its certificates.
    pub async fn remove_node(
        &self,
        oid: &str,
        caller: Option<&switchyard::auth::Principal>,
    ) -> Result<Node> {
        let node = self.get_node(oid).await?;
        let member = async |prefix: &[u8]| -> Result<bool> {
            Ok(self
                .store
                .scan(prefix)
                .await?
                .iter()
                .any(|(k, _)| k.ends_with(node.oid.as_bytes())))
        };
        if member(b"wcn/").await? || member(b"rcn/").await? {
            return Err(Error::domain(
                Reason::InUse,
                format!(
                    "node '{}' is a member of a cluster; remove it from its clusters first",
                    node.authid
                ),
            ));
        }
        // Its certificates are revoked in the same transaction: the name is free for a new
        // machine, never for the old certificate.
        let (revoked_key, revoked, until) = self.revocation(&node.authid);
        self.store
            .commit(
                Txn::new()
                    .delete(keys::node(&node.oid))
                    .delete(keys::node_live(&node.oid))
                    .delete(keys::node_name(&node.authid))
                    .put(revoked_key, revoked),
            )
            .await?;
        self.issuing().revocations.revoke(&node.authid, until);
        tracing::warn!(node = %node.authid, oid = %node.oid, "node removed; its certificates are revoked");
        self.liveness.lock().remove(&node.oid);
        self.events.publish(
            EventType::OnNodeRemoved,
            &node.oid,
            Some(crate::core::who(caller)),
            event::Object::Node(node.clone()),
        );
        Ok(node)
    }
}
