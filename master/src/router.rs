//! Router clusters (the reference's RouterClusterManager): definitions, node memberships with
//! utilisation limits, and worker groups (whose placements the monitors will maintain).

use switchyard::auth::Principal;
use switchyard::error::Reason;
use switchyard::pb::master::v1::{
    ClusterStatus, EventType, NodeStatus, Placement, PortRange, RouterCluster, RouterClusterNode,
    RouterClusterNodeConfig, RouterWorkerGroup, StatusChange, event,
};

use crate::core::{Core, new_oid, now_ns, who};
use crate::error::{Error, Result};
use crate::store::{StoreError, StoreExt, Txn, codec, keys};
use crate::validate;
use crate::web::{conflict_retry, status_name, transition};

/// Default realms of a worker group.
pub const DEFAULT_REALM: &str = "realm1";
/// Default port range of a worker group.
pub const DEFAULT_PORT_RANGE: (u32, u32) = (10000, 10100);

fn check_realm(field: &str, realm: &str) -> Result<()> {
    let ok = !realm.is_empty()
        && realm.len() <= 255
        && realm.split('.').all(|c| {
            !c.is_empty()
                && c.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        });
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            field,
            format!("'{realm}' is not a realm name (dot-separated [a-z0-9_] components)"),
        ))
    }
}

/// A worker group's port range, the router workers' transport configuration: unset ports are
/// INVALID_ARGUMENT, unusable ones INVALID_CONFIGURATION.
fn check_port_range(range: &PortRange) -> Result<()> {
    validate::port("workergroup.port_range.start", range.start)?;
    validate::port("workergroup.port_range.end", range.end)?;
    if range.start > range.end {
        return Err(Error::invalid_config(
            "workergroup.port_range",
            format!("start {} is after end {}", range.start, range.end),
        ));
    }
    Ok(())
}

impl Core {
    async fn load_routercluster(&self, oid: &str) -> Result<(RouterCluster, Vec<u8>)> {
        self.store
            .load::<RouterCluster>(&keys::routercluster(oid))
            .await?
            .ok_or_else(|| Error::not_found(format_args!("router cluster {oid}")))
    }

    /// Creates a router cluster in status STOPPED.
    pub async fn create_routercluster(
        &self,
        spec: Option<RouterCluster>,
        caller: Option<&Principal>,
    ) -> Result<RouterCluster> {
        let spec = spec.ok_or_else(|| Error::invalid("routercluster", "required"))?;
        validate::name("routercluster.name", &spec.name)?;
        let cluster = RouterCluster {
            oid: new_oid(),
            status: ClusterStatus::Stopped as i32,
            status_reason: String::new(),
            changed: now_ns(),
            owner: caller.map(|p| p.uri()).unwrap_or_default(),
            who: None,
            restart_generation: 0,
            restarting: false,
            ..spec
        };
        let name_key = keys::routercluster_name(&cluster.name);
        let created = self
            .store
            .commit(
                Txn::new()
                    .absent(name_key.clone())
                    .put(name_key, cluster.oid.clone().into_bytes())
                    .put(keys::routercluster(&cluster.oid), codec::encode(&cluster)),
            )
            .await;
        if let Err(StoreError::Conflict(_)) = created {
            return Err(Error::domain(
                Reason::AlreadyExists,
                format!("a router cluster named '{}' already exists", cluster.name),
            ));
        }
        created?;
        self.events.publish(
            EventType::OnRouterclusterCreated,
            &cluster.oid,
            Some(who(caller)),
            event::Object::Routercluster(cluster.clone()),
        );
        Ok(cluster)
    }

    /// A router cluster by oid.
    pub async fn get_routercluster(&self, oid: &str) -> Result<RouterCluster> {
        let oid = validate::oid("routercluster_oid", oid)?;
        Ok(self.load_routercluster(&oid).await?.0)
    }

    /// A router cluster by name.
    pub async fn get_routercluster_by_name(&self, name: &str) -> Result<RouterCluster> {
        if name.is_empty() {
            return Err(Error::invalid("routercluster_name", "required"));
        }
        let oid = self
            .store
            .load_str(&keys::routercluster_name(name))
            .await?
            .ok_or_else(|| Error::not_found(format_args!("router cluster '{name}'")))?;
        Ok(self.load_routercluster(&oid).await?.0)
    }

    /// Every router cluster.
    pub async fn list_routerclusters(&self) -> Result<Vec<RouterCluster>> {
        Ok(self
            .store
            .list::<RouterCluster>(keys::ROUTERCLUSTERS)
            .await?)
    }

    /// Deletes a STOPPED router cluster with its memberships, worker groups and placements.
    pub async fn delete_routercluster(
        &self,
        oid: &str,
        caller: Option<&Principal>,
    ) -> Result<RouterCluster> {
        let oid = validate::oid("routercluster_oid", oid)?;
        let (cluster, bytes) = self.load_routercluster(&oid).await?;
        if cluster.status != ClusterStatus::Stopped as i32 {
            return Err(Error::domain(
                Reason::NotStopped,
                format!(
                    "router cluster '{}' is {}; stop it first",
                    cluster.name,
                    status_name(cluster.status)
                ),
            ));
        }
        let key = keys::routercluster(&oid);
        let mut txn = Txn::new()
            .equals(key.clone(), bytes)
            .delete(key)
            .delete(keys::routercluster_name(&cluster.name));
        for prefix in [
            keys::routercluster_nodes(&oid),
            keys::placements(&oid),
            keys::link_secrets(&oid),
        ] {
            for (k, _) in self.store.scan(&prefix).await? {
                txn = txn.delete(k);
            }
        }
        for g in self
            .store
            .list::<RouterWorkerGroup>(&keys::workergroups(&oid))
            .await?
        {
            txn = txn
                .delete(keys::workergroup(&oid, &g.oid))
                .delete(keys::workergroup_name(&oid, &g.name))
                .delete(keys::workergroup_global(&g.name));
        }
        self.store
            .commit(txn)
            .await
            .map_err(|e| conflict_retry(e, "router cluster"))?;
        self.events.publish(
            EventType::OnRouterclusterDeleted,
            &oid,
            Some(who(caller)),
            event::Object::Routercluster(cluster.clone()),
        );
        Ok(cluster)
    }

    /// Starts a rolling restart of a RUNNING or DEGRADED router cluster: stores the next worker
    /// generation, which the monitor rolls out one worker of a group at a time
    /// (docs/operations.md, "Rolling restarts"). Returns the cluster as stored.
    pub async fn restart_routercluster(
        &self,
        oid: &str,
        caller: Option<&Principal>,
    ) -> Result<RouterCluster> {
        let oid = validate::oid("routercluster_oid", oid)?;
        let (mut cluster, bytes) = self.load_routercluster(&oid).await?;
        let status = ClusterStatus::try_from(cluster.status).unwrap_or(ClusterStatus::Unspecified);
        if !matches!(status, ClusterStatus::Running | ClusterStatus::Degraded) {
            return Err(Error::domain(
                Reason::NotStarted,
                format!(
                    "cannot restart router cluster '{}': it is {} (only a RUNNING or DEGRADED cluster restarts)",
                    cluster.name,
                    status_name(cluster.status)
                ),
            ));
        }
        let who = who(caller);
        cluster.restart_generation = cluster.restart_generation.wrapping_add(1);
        cluster.restarting = true;
        cluster.changed = now_ns();
        cluster.who = Some(who.clone());
        let key = keys::routercluster(&oid);
        self.store
            .commit(
                Txn::new()
                    .equals(key.clone(), bytes)
                    .put(key, codec::encode(&cluster)),
            )
            .await
            .map_err(|e| conflict_retry(e, "router cluster"))?;
        tracing::info!(cluster = %cluster.name, generation = cluster.restart_generation, "rolling restart accepted");
        self.events.publish(
            EventType::OnRouterclusterRestarting,
            &oid,
            Some(who),
            event::Object::Routercluster(cluster.clone()),
        );
        Ok(cluster)
    }

    /// Start (STOPPED → STARTING) or stop (→ STOPPING) a router cluster.
    pub async fn change_routercluster(
        &self,
        oid: &str,
        start: bool,
        caller: Option<&Principal>,
    ) -> Result<StatusChange> {
        let oid = validate::oid("routercluster_oid", oid)?;
        let (mut cluster, bytes) = self.load_routercluster(&oid).await?;
        let from = ClusterStatus::try_from(cluster.status).unwrap_or(ClusterStatus::Unspecified);
        let to = transition(from, start).ok_or_else(|| {
            let (reason, verb) = if start {
                (Reason::CannotStart, "start")
            } else {
                (Reason::CannotStop, "stop")
            };
            Error::domain(
                reason,
                format!(
                    "cannot {verb} router cluster '{}': it is {}",
                    cluster.name,
                    status_name(cluster.status)
                ),
            )
        })?;
        let who = who(caller);
        cluster.status = to as i32;
        cluster.status_reason.clear();
        cluster.changed = now_ns();
        cluster.who = Some(who.clone());
        let key = keys::routercluster(&oid);
        self.store
            .commit(
                Txn::new()
                    .equals(key.clone(), bytes)
                    .put(key, codec::encode(&cluster)),
            )
            .await
            .map_err(|e| conflict_retry(e, "router cluster"))?;
        let kind = if start {
            EventType::OnRouterclusterStarting
        } else {
            EventType::OnRouterclusterStopping
        };
        self.events.publish(
            kind,
            &oid,
            Some(who.clone()),
            event::Object::Routercluster(cluster.clone()),
        );
        Ok(StatusChange {
            oid,
            status: to as i32,
            changed: cluster.changed,
            who: Some(who),
        })
    }

    /// Adds a node to a router cluster with its limits.
    pub async fn add_routercluster_node(
        &self,
        cluster_oid: &str,
        node: &str,
        config: Option<RouterClusterNodeConfig>,
        caller: Option<&Principal>,
    ) -> Result<RouterClusterNode> {
        let cluster_oid = validate::oid("routercluster_oid", cluster_oid)?;
        let (cluster, bytes) = self.load_routercluster(&cluster_oid).await?;
        let node = self.resolve_node("node_oid", node).await?;
        let config = config.unwrap_or_default();
        if config.hardlimit == Some(0) {
            return Err(Error::invalid("config.hardlimit", "must be at least 1"));
        }
        if let (Some(soft), Some(hard)) = (config.softlimit, config.hardlimit)
            && soft > hard
        {
            return Err(Error::invalid(
                "config.softlimit",
                format!("{soft} exceeds hardlimit {hard}"),
            ));
        }
        let membership = RouterClusterNode {
            cluster_oid: cluster_oid.clone(),
            node_oid: node.oid.clone(),
            softlimit: config.softlimit,
            hardlimit: config.hardlimit,
            node_authid: node.authid.clone(),
        };
        let key = keys::routercluster_node(&cluster_oid, &node.oid);
        let added = self
            .store
            .commit(
                Txn::new()
                    .absent(key.clone())
                    .put(key, codec::encode(&membership))
                    .equals(keys::routercluster(&cluster_oid), bytes),
            )
            .await;
        if let Err(StoreError::Conflict(k)) = &added
            && k.starts_with("rcn/")
        {
            return Err(Error::domain(
                Reason::AlreadyExists,
                format!(
                    "node '{}' is already a member of router cluster '{}'",
                    node.authid, cluster.name
                ),
            ));
        }
        added.map_err(|e| conflict_retry(e, "router cluster"))?;
        self.events.publish(
            EventType::OnRouterclusterNodeAdded,
            &cluster_oid,
            Some(who(caller)),
            event::Object::RouterclusterNode(membership.clone()),
        );
        Ok(membership)
    }

    /// Removes a node from a router cluster.
    pub async fn remove_routercluster_node(
        &self,
        cluster_oid: &str,
        node: &str,
        caller: Option<&Principal>,
    ) -> Result<RouterClusterNode> {
        let membership = self.get_routercluster_node(cluster_oid, node).await?;
        self.store
            .commit(Txn::new().delete(keys::routercluster_node(
                &membership.cluster_oid,
                &membership.node_oid,
            )))
            .await?;
        self.events.publish(
            EventType::OnRouterclusterNodeRemoved,
            &membership.cluster_oid,
            Some(who(caller)),
            event::Object::RouterclusterNode(membership.clone()),
        );
        Ok(membership)
    }

    /// A membership of a router cluster.
    pub async fn get_routercluster_node(
        &self,
        cluster_oid: &str,
        node: &str,
    ) -> Result<RouterClusterNode> {
        let cluster_oid = validate::oid("routercluster_oid", cluster_oid)?;
        let (cluster, _) = self.load_routercluster(&cluster_oid).await?;
        let node = self.resolve_node("node_oid", node).await?;
        self.store
            .load::<RouterClusterNode>(&keys::routercluster_node(&cluster_oid, &node.oid))
            .await?
            .map(|(m, _)| m)
            .ok_or_else(|| {
                Error::not_found(format_args!(
                    "node '{}' in router cluster '{}'",
                    node.authid, cluster.name
                ))
            })
    }

    /// The memberships of a router cluster, optionally only of nodes in `status`.
    pub async fn list_routercluster_nodes(
        &self,
        cluster_oid: &str,
        status: Option<NodeStatus>,
    ) -> Result<Vec<RouterClusterNode>> {
        let cluster_oid = validate::oid("routercluster_oid", cluster_oid)?;
        self.load_routercluster(&cluster_oid).await?;
        Ok(self
            .store
            .list::<RouterClusterNode>(&keys::routercluster_nodes(&cluster_oid))
            .await?
            .into_iter()
            .filter(|m| status.is_none_or(|s| self.node_status(&m.node_oid) == s))
            .collect())
    }

    /// Adds a worker group.
    pub async fn add_workergroup(
        &self,
        cluster_oid: &str,
        spec: Option<RouterWorkerGroup>,
        caller: Option<&Principal>,
    ) -> Result<RouterWorkerGroup> {
        let cluster_oid = validate::oid("routercluster_oid", cluster_oid)?;
        let (cluster, bytes) = self.load_routercluster(&cluster_oid).await?;
        let spec = spec.unwrap_or_default();
        let oid = new_oid();
        let name = if spec.name.is_empty() {
            format!("cwg_{}", &oid[..8])
        } else {
            spec.name.clone()
        };
        validate::name("workergroup.name", &name)?;
        let scale = if spec.scale == 0 { 1 } else { spec.scale };
        if !(1..=128).contains(&scale) {
            return Err(Error::invalid(
                "workergroup.scale",
                format!("{scale} is not in 1..128"),
            ));
        }
        let realms = if spec.realms.is_empty() {
            vec![DEFAULT_REALM.to_owned()]
        } else {
            spec.realms.clone()
        };
        for (i, r) in realms.iter().enumerate() {
            check_realm(&format!("workergroup.realms[{i}]"), r)?;
        }
        let range = spec.port_range.unwrap_or(PortRange {
            start: DEFAULT_PORT_RANGE.0,
            end: DEFAULT_PORT_RANGE.1,
        });
        check_port_range(&range)?;
        let group = RouterWorkerGroup {
            oid,
            cluster_oid: cluster_oid.clone(),
            name,
            scale,
            label: spec.label,
            description: spec.description,
            tags: spec.tags,
            status: cluster.status,
            changed: now_ns(),
            realms,
            port_range: Some(range),
        };
        let name_key = keys::workergroup_name(&cluster_oid, &group.name);
        let global_key = keys::workergroup_global(&group.name);
        if let Some(owner) = self.store.load_str(&global_key).await?
            && !owner.starts_with(&cluster_oid)
        {
            return Err(Error::domain(
                Reason::AlreadyExists,
                format!(
                    "another router cluster has a worker group named '{}' (worker ids are \
                     <group>_<n> on every node, so group names are unique across clusters)",
                    group.name
                ),
            ));
        }
        let added = self
            .store
            .commit(
                Txn::new()
                    .absent(name_key.clone())
                    .absent(global_key.clone())
                    .put(name_key, group.oid.clone().into_bytes())
                    .put(
                        global_key,
                        format!("{cluster_oid}/{}", group.oid).into_bytes(),
                    )
                    .put(
                        keys::workergroup(&cluster_oid, &group.oid),
                        codec::encode(&group),
                    )
                    .equals(keys::routercluster(&cluster_oid), bytes),
            )
            .await;
        if let Err(StoreError::Conflict(k)) = &added
            && (k.starts_with("wgname/") || k.starts_with("wgglobal/"))
        {
            return Err(Error::domain(
                Reason::AlreadyExists,
                format!(
                    "router cluster '{}' already has a worker group named '{}'",
                    cluster.name, group.name
                ),
            ));
        }
        added.map_err(|e| conflict_retry(e, "router cluster"))?;
        self.events.publish(
            EventType::OnRouterclusterWorkergroupAdded,
            &group.oid,
            Some(who(caller)),
            event::Object::Workergroup(group.clone()),
        );
        Ok(group)
    }

    async fn with_cluster_status(&self, mut g: RouterWorkerGroup) -> RouterWorkerGroup {
        if let Ok((c, _)) = self.load_routercluster(&g.cluster_oid).await {
            g.status = c.status;
        }
        g
    }

    /// Removes a worker group and its placements.
    pub async fn remove_workergroup(
        &self,
        cluster_oid: &str,
        group_oid: &str,
        caller: Option<&Principal>,
    ) -> Result<RouterWorkerGroup> {
        let group = self.get_workergroup(cluster_oid, group_oid).await?;
        let mut txn = Txn::new()
            .delete(keys::workergroup(&group.cluster_oid, &group.oid))
            .delete(keys::workergroup_name(&group.cluster_oid, &group.name))
            .delete(keys::workergroup_global(&group.name))
            .delete(keys::link_secret(&group.cluster_oid, &group.oid));
        for (k, _) in self
            .store
            .scan(&keys::group_placements(&group.cluster_oid, &group.oid))
            .await?
        {
            txn = txn.delete(k);
        }
        self.store.commit(txn).await?;
        self.events.publish(
            EventType::OnRouterclusterWorkergroupRemoved,
            &group.oid,
            Some(who(caller)),
            event::Object::Workergroup(group.clone()),
        );
        Ok(group)
    }

    /// A worker group by oid.
    pub async fn get_workergroup(
        &self,
        cluster_oid: &str,
        group_oid: &str,
    ) -> Result<RouterWorkerGroup> {
        let cluster_oid = validate::oid("routercluster_oid", cluster_oid)?;
        let group_oid = validate::oid("workergroup_oid", group_oid)?;
        self.load_routercluster(&cluster_oid).await?;
        let (g, _) = self
            .store
            .load::<RouterWorkerGroup>(&keys::workergroup(&cluster_oid, &group_oid))
            .await?
            .ok_or_else(|| Error::not_found(format_args!("worker group {group_oid}")))?;
        Ok(self.with_cluster_status(g).await)
    }

    /// A worker group by cluster name and group name.
    pub async fn get_workergroup_by_name(
        &self,
        cluster_name: &str,
        group_name: &str,
    ) -> Result<RouterWorkerGroup> {
        let cluster = self.get_routercluster_by_name(cluster_name).await?;
        if group_name.is_empty() {
            return Err(Error::invalid("workergroup_name", "required"));
        }
        let oid = self
            .store
            .load_str(&keys::workergroup_name(&cluster.oid, group_name))
            .await?
            .ok_or_else(|| {
                Error::not_found(format_args!(
                    "worker group '{group_name}' in router cluster '{cluster_name}'"
                ))
            })?;
        self.get_workergroup(&cluster.oid, &oid).await
    }

    /// The worker groups of a router cluster, optionally only those in `status`.
    pub async fn list_workergroups(
        &self,
        cluster_oid: &str,
        status: Option<ClusterStatus>,
    ) -> Result<Vec<RouterWorkerGroup>> {
        let cluster_oid = validate::oid("routercluster_oid", cluster_oid)?;
        let (cluster, _) = self.load_routercluster(&cluster_oid).await?;
        Ok(self
            .store
            .list::<RouterWorkerGroup>(&keys::workergroups(&cluster_oid))
            .await?
            .into_iter()
            .map(|mut g| {
                g.status = cluster.status;
                g
            })
            .filter(|g| status.is_none_or(|s| g.status == s as i32))
            .collect())
    }

    /// The placements of a router cluster.
    pub async fn list_placements(&self, cluster_oid: &str) -> Result<Vec<Placement>> {
        Ok(self
            .store
            .list::<Placement>(&keys::placements(cluster_oid))
            .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::tests::reason;

    #[test]
    fn port_ranges_and_realms() {
        let range = |start, end| PortRange { start, end };
        assert!(check_port_range(&range(10000, 10100)).is_ok());
        assert!(check_port_range(&range(8080, 8080)).is_ok());
        assert_eq!(
            reason(check_port_range(&range(10100, 10000))),
            "INVALID_CONFIGURATION"
        );
        assert_eq!(
            reason(check_port_range(&range(10000, 70000))),
            "INVALID_CONFIGURATION"
        );
        assert_eq!(reason(check_port_range(&range(0, 100))), "INVALID_ARGUMENT");
        // A realm is a name: a bad one is a malformed argument.
        assert!(check_realm("realm", "realm1").is_ok());
        assert_eq!(
            reason(check_realm("realm", "Bad Realm")),
            "INVALID_ARGUMENT"
        );
    }

    use crate::web::tests::{core_with_node, keys_naming, keys_under};

    /// A router cluster with `node1`, two worker groups, and the placements and link secrets its
    /// monitor would have stored while it ran (written directly: no monitor runs here).
    async fn cluster_with_rows(core: &Core, name: &str) -> (String, Vec<RouterWorkerGroup>) {
        let spec = RouterCluster {
            name: name.into(),
            ..Default::default()
        };
        let oid = core
            .create_routercluster(Some(spec), None)
            .await
            .unwrap()
            .oid;
        let node = core
            .add_routercluster_node(&oid, "node1", None, None)
            .await
            .unwrap()
            .node_oid;
        let mut groups = Vec::new();
        let mut txn = Txn::new();
        for g in ["a", "b"] {
            let spec = RouterWorkerGroup {
                name: format!("{name}_{g}"),
                ..Default::default()
            };
            let group = core.add_workergroup(&oid, Some(spec), None).await.unwrap();
            let placement = Placement {
                oid: new_oid(),
                cluster_oid: oid.clone(),
                workergroup_oid: group.oid.clone(),
                node_oid: node.clone(),
                worker_name: format!("{}_1", group.name),
                ..Default::default()
            };
            txn = txn
                .put(
                    keys::placement(&oid, &group.oid, &placement.oid),
                    codec::encode(&placement),
                )
                .put(keys::link_secret(&oid, &group.oid), b"secret".to_vec());
            groups.push(group);
        }
        core.store.commit(txn).await.unwrap();
        (oid, groups)
    }

    #[tokio::test]
    async fn delete_routercluster_removes_every_row_of_that_cluster_only() {
        let (core, node) = core_with_node().await;
        let (gone, gone_groups) = cluster_with_rows(&core, "gone").await;
        let (kept, kept_groups) = cluster_with_rows(&core, "kept").await;
        let deleted = core.delete_routercluster(&gone, None).await.unwrap();
        assert_eq!(
            (deleted.oid.as_str(), deleted.name.as_str()),
            (gone.as_str(), "gone")
        );

        let store = &*core.store;
        let tables = |oid: &str| {
            [
                keys::routercluster(oid),
                keys::routercluster_nodes(oid),
                keys::workergroups(oid),
                keys::workergroup_name(oid, ""),
                keys::placements(oid),
                keys::link_secrets(oid),
            ]
        };
        for prefix in tables(&gone) {
            assert_eq!(
                keys_under(store, &prefix).await,
                Vec::<String>::new(),
                "rows left under {}",
                String::from_utf8_lossy(&prefix)
            );
        }
        assert_eq!(
            store.get(&keys::routercluster_name("gone")).await.unwrap(),
            None
        );
        assert_eq!(
            store
                .get(&keys::routercluster_node(&gone, &node))
                .await
                .unwrap(),
            None
        );
        for g in &gone_groups {
            assert_eq!(
                store.get(&keys::workergroup_global(&g.name)).await.unwrap(),
                None
            );
            assert_eq!(keys_naming(store, &g.oid).await, Vec::<String>::new());
        }
        assert_eq!(keys_naming(store, &gone).await, Vec::<String>::new());

        // The other cluster keeps all of its rows, in every table.
        for prefix in tables(&kept) {
            assert!(
                !keys_under(store, &prefix).await.is_empty(),
                "the kept cluster lost its rows under {}",
                String::from_utf8_lossy(&prefix)
            );
        }
        for g in &kept_groups {
            assert!(
                store
                    .get(&keys::workergroup_global(&g.name))
                    .await
                    .unwrap()
                    .is_some()
            );
        }
        // The deleted cluster's group names are free again.
        let again = core
            .create_routercluster(
                Some(RouterCluster {
                    name: "gone".into(),
                    ..Default::default()
                }),
                None,
            )
            .await
            .unwrap();
        core.add_workergroup(&again.oid, Some(gone_groups[0].clone()), None)
            .await
            .unwrap();
    }
}
