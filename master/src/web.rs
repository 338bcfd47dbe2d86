//! Web clusters (the reference's WebClusterManager): definitions, node memberships and web
//! services, with the status transitions the admin API drives (docs/api.md, cluster life cycle).

use switchyard::auth::Principal;
use switchyard::error::Reason;
use switchyard::pb::agent::v1 as apb;
use switchyard::pb::master::v1::{
    ClusterStatus, EventType, NodeStatus, StatusChange, WebCluster, WebClusterNode,
    WebClusterNodeConfig, WebService, event, web_service,
};

use crate::core::{Core, new_oid, now_ns, who};
use crate::error::{Error, Result};
use crate::store::{StoreExt, Txn, codec, keys};
use crate::validate;

/// The most member nodes a rolling restart replaces at once.
pub const MAX_RESTART_PARALLEL: u32 = 64;

/// What Get returns instead of a stored TLS key.
pub const REDACTED: &str = "<redacted>";

/// The cluster as the API shows it: the TLS private key never leaves the master.
pub fn redact(mut c: WebCluster) -> WebCluster {
    if c.tls_key.is_some() {
        c.tls_key = Some(REDACTED.to_owned());
    }
    c
}

/// Validates a web cluster's transport keys: a missing key is INVALID_ARGUMENT, a key that is
/// set but unusable INVALID_CONFIGURATION (README, "Errors"); either names the field.
fn check_transport(c: &WebCluster) -> Result<()> {
    validate::port("webcluster.tcp_port", c.tcp_port)?;
    if let Some(v) = c.tcp_version
        && v != 4
        && v != 6
    {
        return Err(Error::invalid_config(
            "webcluster.tcp_version",
            format!("{v} is not 4 or 6"),
        ));
    }
    if let Some(b) = c.tcp_backlog
        && !(1..=65535).contains(&b)
    {
        return Err(Error::invalid_config(
            "webcluster.tcp_backlog",
            format!("{b} is not in 1..65535"),
        ));
    }
    if let Some(i) = &c.tcp_interface
        && i.parse::<std::net::IpAddr>().is_err()
    {
        return Err(Error::invalid_config(
            "webcluster.tcp_interface",
            format!("'{i}' is not an IP address"),
        ));
    }
    match (&c.tls_key, &c.tls_certificate) {
        (Some(k), Some(cert)) => {
            validate::pem("webcluster.tls_key", k, "PRIVATE KEY")?;
            validate::pem("webcluster.tls_certificate", cert, "CERTIFICATE")?;
        }
        (None, None) => {}
        (Some(_), None) => {
            return Err(Error::invalid(
                "webcluster.tls_certificate",
                "required with tls_key",
            ));
        }
        (None, Some(_)) => {
            return Err(Error::invalid(
                "webcluster.tls_key",
                "required with tls_certificate",
            ));
        }
    }
    for (i, pem) in c.tls_chain_certificates.iter().enumerate() {
        validate::pem(
            &format!("webcluster.tls_chain_certificates[{i}]"),
            pem,
            "CERTIFICATE",
        )?;
    }
    for (i, pem) in c.tls_ca_certificates.iter().enumerate() {
        validate::pem(
            &format!("webcluster.tls_ca_certificates[{i}]"),
            pem,
            "CERTIFICATE",
        )?;
    }
    Ok(())
}

/// Validates a web service at Add time (docs/api.md, web services): the error names the field;
/// a missing key is INVALID_ARGUMENT, a key that is set but unusable INVALID_CONFIGURATION.
async fn check_service(core: &Core, s: &mut WebService) -> Result<()> {
    check_service_keys(s)?;
    if let Some(web_service::Service::WebsocketReverseproxy(w)) = &s.service
        && let Some(g) = &w.workergroup
    {
        let rc = validate::oid(
            "webservice.websocket_reverseproxy.workergroup.routercluster_oid",
            &g.routercluster_oid,
        )?;
        let wg = validate::oid(
            "webservice.websocket_reverseproxy.workergroup.workergroup_oid",
            &g.workergroup_oid,
        )?;
        if core
            .store
            .get(&keys::workergroup(&rc, &wg))
            .await?
            .is_none()
        {
            return Err(Error::not_found(format_args!(
                "worker group {wg} in router cluster {rc}"
            )));
        }
    }
    Ok(())
}

/// The checks of [`check_service`] that need no store.
fn check_service_keys(s: &mut WebService) -> Result<()> {
    s.path = validate::path("webservice.path", &s.path)?;
    use web_service::Service;
    match &mut s.service {
        None => {
            return Err(Error::invalid(
                "webservice.service",
                "one of static, json, redirect, reverseproxy, nodeinfo, websocket_reverseproxy is required",
            ));
        }
        Some(Service::Static(st)) => {
            if st.directory.trim().is_empty() {
                return Err(Error::invalid("webservice.static.directory", "required"));
            }
            if !std::path::Path::new(&st.directory).is_absolute() {
                return Err(Error::invalid_config(
                    "webservice.static.directory",
                    format!("'{}' is not an absolute path", st.directory),
                ));
            }
        }
        Some(Service::Json(j)) => {
            if j.value.is_none() {
                return Err(Error::invalid(
                    "webservice.json.value",
                    "required (any JSON value)",
                ));
            }
        }
        Some(Service::Redirect(r)) => validate::url("webservice.redirect.url", &r.url)?,
        Some(Service::Reverseproxy(p)) => {
            if p.host.trim().is_empty() {
                return Err(Error::invalid("webservice.reverseproxy.host", "required"));
            }
            if p.port == 0 {
                p.port = 80;
            }
            validate::port("webservice.reverseproxy.port", p.port)?;
            if !p.path.is_empty() && !p.path.starts_with('/') {
                return Err(Error::invalid_config(
                    "webservice.reverseproxy.path",
                    "must start with /",
                ));
            }
        }
        Some(Service::Nodeinfo(_)) => {}
        Some(Service::WebsocketReverseproxy(w)) => check_websocket(w)?,
    }
    Ok(())
}

fn check_websocket(w: &mut apb::WebSocketReverseProxyService) -> Result<()> {
    w.backends.clear(); // output only: resolved by the master
    match (&w.backend, &w.workergroup) {
        (Some(b), None) => {
            if b.host.trim().is_empty() {
                return Err(Error::invalid(
                    "webservice.websocket_reverseproxy.backend.host",
                    "required",
                ));
            }
            validate::port("webservice.websocket_reverseproxy.backend.port", b.port)?;
        }
        (None, Some(g)) => {
            validate::oid(
                "webservice.websocket_reverseproxy.workergroup.routercluster_oid",
                &g.routercluster_oid,
            )?;
            validate::oid(
                "webservice.websocket_reverseproxy.workergroup.workergroup_oid",
                &g.workergroup_oid,
            )?;
        }
        _ => {
            return Err(Error::invalid(
                "webservice.websocket_reverseproxy",
                "exactly one of backend and workergroup is required",
            ));
        }
    }
    Ok(())
}

impl Core {
    async fn load_webcluster(&self, oid: &str) -> Result<(WebCluster, Vec<u8>)> {
        self.store
            .load::<WebCluster>(&keys::webcluster(oid))
            .await?
            .ok_or_else(|| Error::not_found(format_args!("web cluster {oid}")))
    }

    /// Creates a web cluster in status STOPPED.
    pub async fn create_webcluster(
        &self,
        spec: Option<WebCluster>,
        caller: Option<&Principal>,
    ) -> Result<WebCluster> {
        let spec = spec.ok_or_else(|| Error::invalid("webcluster", "required"))?;
        validate::name("webcluster.name", &spec.name)?;
        check_transport(&spec)?;
        let cluster = WebCluster {
            oid: new_oid(),
            status: ClusterStatus::Stopped as i32,
            status_reason: String::new(),
            changed: now_ns(),
            owner: caller.map(|p| p.uri()).unwrap_or_default(),
            who: None,
            tcp_shared: Some(spec.tcp_shared.unwrap_or(true)),
            restart_generation: 0,
            restarting: false,
            restart_max_parallel: 0,
            ..spec
        };
        let name_key = keys::webcluster_name(&cluster.name);
        let created = self
            .store
            .commit(
                Txn::new()
                    .absent(name_key.clone())
                    .put(name_key, cluster.oid.clone().into_bytes())
                    .put(keys::webcluster(&cluster.oid), codec::encode(&cluster)),
            )
            .await;
        if let Err(crate::store::StoreError::Conflict(_)) = created {
            return Err(Error::domain(
                Reason::AlreadyExists,
                format!("a web cluster named '{}' already exists", cluster.name),
            ));
        }
        created?;
        let out = redact(cluster);
        self.events.publish(
            EventType::OnWebclusterCreated,
            &out.oid,
            Some(who(caller)),
            event::Object::Webcluster(out.clone()),
        );
        Ok(out)
    }

    /// A web cluster by oid (TLS key redacted).
    pub async fn get_webcluster(&self, oid: &str) -> Result<WebCluster> {
        let oid = validate::oid("webcluster_oid", oid)?;
        Ok(redact(self.load_webcluster(&oid).await?.0))
    }

    /// A web cluster by oid with its TLS key (for the monitors).
    pub async fn get_webcluster_secret(&self, oid: &str) -> Result<WebCluster> {
        Ok(self.load_webcluster(oid).await?.0)
    }

    /// A web cluster by name.
    pub async fn get_webcluster_by_name(&self, name: &str) -> Result<WebCluster> {
        if name.is_empty() {
            return Err(Error::invalid("webcluster_name", "required"));
        }
        let oid = self
            .store
            .load_str(&keys::webcluster_name(name))
            .await?
            .ok_or_else(|| Error::not_found(format_args!("web cluster '{name}'")))?;
        Ok(redact(self.load_webcluster(&oid).await?.0))
    }

    /// Every web cluster.
    pub async fn list_webclusters(&self) -> Result<Vec<WebCluster>> {
        Ok(self
            .store
            .list::<WebCluster>(keys::WEBCLUSTERS)
            .await?
            .into_iter()
            .map(redact)
            .collect())
    }

    /// Deletes a STOPPED web cluster with its memberships and services, atomically.
    pub async fn delete_webcluster(
        &self,
        oid: &str,
        caller: Option<&Principal>,
    ) -> Result<WebCluster> {
        let oid = validate::oid("webcluster_oid", oid)?;
        let (cluster, bytes) = self.load_webcluster(&oid).await?;
        if cluster.status != ClusterStatus::Stopped as i32 {
            return Err(Error::domain(
                Reason::NotStopped,
                format!(
                    "web cluster '{}' is {}; stop it first",
                    cluster.name,
                    status_name(cluster.status)
                ),
            ));
        }
        let key = keys::webcluster(&oid);
        let mut txn = Txn::new()
            .equals(key.clone(), bytes)
            .delete(key)
            .delete(keys::webcluster_name(&cluster.name));
        for (k, _) in self.store.scan(&keys::webcluster_nodes(&oid)).await? {
            txn = txn.delete(k);
        }
        for s in self
            .store
            .list::<WebService>(&keys::webservices(&oid))
            .await?
        {
            txn = txn
                .delete(keys::webservice(&oid, &s.oid))
                .delete(keys::webservice_path(&oid, &s.path));
        }
        self.store
            .commit(txn)
            .await
            .map_err(|e| conflict_retry(e, "web cluster"))?;
        let out = redact(cluster);
        self.events.publish(
            EventType::OnWebclusterDeleted,
            &oid,
            Some(who(caller)),
            event::Object::Webcluster(out.clone()),
        );
        Ok(out)
    }

    /// STOPPED → STARTING (start) or STARTING/RUNNING/DEGRADED → STOPPING (stop).
    pub async fn change_webcluster(
        &self,
        oid: &str,
        start: bool,
        caller: Option<&Principal>,
    ) -> Result<StatusChange> {
        let oid = validate::oid("webcluster_oid", oid)?;
        let (mut cluster, bytes) = self.load_webcluster(&oid).await?;
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
                    "cannot {verb} web cluster '{}': it is {}",
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
        let key = keys::webcluster(&oid);
        self.store
            .commit(
                Txn::new()
                    .equals(key.clone(), bytes)
                    .put(key, codec::encode(&cluster)),
            )
            .await
            .map_err(|e| conflict_retry(e, "web cluster"))?;
        let kind = if start {
            EventType::OnWebclusterStarting
        } else {
            EventType::OnWebclusterStopping
        };
        self.events.publish(
            kind,
            &oid,
            Some(who.clone()),
            event::Object::Webcluster(redact(cluster.clone())),
        );
        Ok(StatusChange {
            oid,
            status: to as i32,
            changed: cluster.changed,
            who: Some(who),
        })
    }

    /// Starts a rolling restart of a RUNNING or DEGRADED web cluster, `max_parallel` member
    /// nodes at a time (default 1): stores the next worker generation, which the monitor rolls
    /// out (docs/operations.md, "Rolling restarts"). Returns the cluster as stored.
    pub async fn restart_webcluster(
        &self,
        oid: &str,
        max_parallel: Option<u32>,
        caller: Option<&Principal>,
    ) -> Result<WebCluster> {
        let oid = validate::oid("webcluster_oid", oid)?;
        let max_parallel = max_parallel.unwrap_or(1);
        if !(1..=MAX_RESTART_PARALLEL).contains(&max_parallel) {
            return Err(Error::invalid(
                "max_parallel",
                format!("must be between 1 and {MAX_RESTART_PARALLEL}"),
            ));
        }
        let (mut cluster, bytes) = self.load_webcluster(&oid).await?;
        let status = ClusterStatus::try_from(cluster.status).unwrap_or(ClusterStatus::Unspecified);
        if !matches!(status, ClusterStatus::Running | ClusterStatus::Degraded) {
            return Err(Error::domain(
                Reason::NotStarted,
                format!(
                    "cannot restart web cluster '{}': it is {} (only a RUNNING or DEGRADED cluster restarts)",
                    cluster.name,
                    status_name(cluster.status)
                ),
            ));
        }
        let who = who(caller);
        cluster.restart_generation = cluster.restart_generation.wrapping_add(1);
        cluster.restarting = true;
        cluster.restart_max_parallel = max_parallel;
        cluster.changed = now_ns();
        cluster.who = Some(who.clone());
        let key = keys::webcluster(&oid);
        self.store
            .commit(
                Txn::new()
                    .equals(key.clone(), bytes)
                    .put(key, codec::encode(&cluster)),
            )
            .await
            .map_err(|e| conflict_retry(e, "web cluster"))?;
        tracing::info!(cluster = %cluster.name, generation = cluster.restart_generation, max_parallel, "rolling restart accepted");
        let out = redact(cluster);
        self.events.publish(
            EventType::OnWebclusterRestarting,
            &oid,
            Some(who),
            event::Object::Webcluster(out.clone()),
        );
        Ok(out)
    }

    /// Adds a node (by oid or authid) to a web cluster.
    pub async fn add_webcluster_node(
        &self,
        cluster_oid: &str,
        node: &str,
        config: Option<WebClusterNodeConfig>,
        caller: Option<&Principal>,
    ) -> Result<WebClusterNode> {
        let cluster_oid = validate::oid("webcluster_oid", cluster_oid)?;
        let (cluster, _) = self.load_webcluster(&cluster_oid).await?;
        let node = self.resolve_node("node_oid", node).await?;
        let config = config.unwrap_or_default();
        let membership = WebClusterNode {
            cluster_oid: cluster_oid.clone(),
            node_oid: node.oid.clone(),
            parallel: if config.parallel == 0 {
                1
            } else {
                config.parallel
            },
            standby: config.standby,
            node_authid: node.authid.clone(),
        };
        if membership.parallel > 1024 {
            return Err(Error::invalid("config.parallel", "must be 1..1024"));
        }
        let key = keys::webcluster_node(&cluster_oid, &node.oid);
        let cluster_key = keys::webcluster(&cluster_oid);
        let added = self
            .store
            .commit(
                Txn::new()
                    .absent(key.clone())
                    .put(key, codec::encode(&membership))
                    // The cluster must still exist.
                    .equals(cluster_key, codec::encode(&cluster)),
            )
            .await;
        if let Err(crate::store::StoreError::Conflict(k)) = &added
            && k.starts_with("wcn/")
        {
            return Err(Error::domain(
                Reason::AlreadyExists,
                format!(
                    "node '{}' is already a member of web cluster '{}'",
                    node.authid, cluster.name
                ),
            ));
        }
        added.map_err(|e| conflict_retry(e, "web cluster"))?;
        self.events.publish(
            EventType::OnWebclusterNodeAdded,
            &cluster_oid,
            Some(who(caller)),
            event::Object::WebclusterNode(membership.clone()),
        );
        Ok(membership)
    }

    /// Removes a node from a web cluster.
    pub async fn remove_webcluster_node(
        &self,
        cluster_oid: &str,
        node: &str,
        caller: Option<&Principal>,
    ) -> Result<WebClusterNode> {
        let membership = self.get_webcluster_node(cluster_oid, node).await?;
        let key = keys::webcluster_node(&membership.cluster_oid, &membership.node_oid);
        self.store.commit(Txn::new().delete(key)).await?;
        self.events.publish(
            EventType::OnWebclusterNodeRemoved,
            &membership.cluster_oid,
            Some(who(caller)),
            event::Object::WebclusterNode(membership.clone()),
        );
        Ok(membership)
    }

    /// A membership of a web cluster.
    pub async fn get_webcluster_node(
        &self,
        cluster_oid: &str,
        node: &str,
    ) -> Result<WebClusterNode> {
        let cluster_oid = validate::oid("webcluster_oid", cluster_oid)?;
        let (cluster, _) = self.load_webcluster(&cluster_oid).await?;
        let node = self.resolve_node("node_oid", node).await?;
        self.store
            .load::<WebClusterNode>(&keys::webcluster_node(&cluster_oid, &node.oid))
            .await?
            .map(|(m, _)| m)
            .ok_or_else(|| {
                Error::not_found(format_args!(
                    "node '{}' in web cluster '{}'",
                    node.authid, cluster.name
                ))
            })
    }

    /// The memberships of a web cluster, optionally only of nodes in `status`.
    pub async fn list_webcluster_nodes(
        &self,
        cluster_oid: &str,
        status: Option<NodeStatus>,
    ) -> Result<Vec<WebClusterNode>> {
        let cluster_oid = validate::oid("webcluster_oid", cluster_oid)?;
        self.load_webcluster(&cluster_oid).await?;
        Ok(self
            .store
            .list::<WebClusterNode>(&keys::webcluster_nodes(&cluster_oid))
            .await?
            .into_iter()
            .filter(|m| status.is_none_or(|s| self.node_status(&m.node_oid) == s))
            .collect())
    }

    /// Adds a web service (validated at Add time).
    pub async fn add_webcluster_service(
        &self,
        cluster_oid: &str,
        spec: Option<WebService>,
        caller: Option<&Principal>,
    ) -> Result<WebService> {
        let cluster_oid = validate::oid("webcluster_oid", cluster_oid)?;
        let (cluster, _) = self.load_webcluster(&cluster_oid).await?;
        let mut service = spec.ok_or_else(|| Error::invalid("webservice", "required"))?;
        check_service(self, &mut service).await?;
        service.oid = new_oid();
        service.webcluster_oid = cluster_oid.clone();
        let path_key = keys::webservice_path(&cluster_oid, &service.path);
        let added = self
            .store
            .commit(
                Txn::new()
                    .absent(path_key.clone())
                    .put(path_key, service.oid.clone().into_bytes())
                    .put(
                        keys::webservice(&cluster_oid, &service.oid),
                        codec::encode(&service),
                    )
                    .equals(keys::webcluster(&cluster_oid), codec::encode(&cluster)),
            )
            .await;
        if let Err(crate::store::StoreError::Conflict(k)) = &added
            && k.starts_with("wspath/")
        {
            return Err(Error::domain(
                Reason::AlreadyExists,
                format!(
                    "web cluster '{}' already has a service on path {}",
                    cluster.name, service.path
                ),
            ));
        }
        added.map_err(|e| conflict_retry(e, "web cluster"))?;
        self.events.publish(
            EventType::OnWebserviceAdded,
            &service.oid,
            Some(who(caller)),
            event::Object::Webservice(service.clone()),
        );
        Ok(service)
    }

    /// Removes a web service.
    pub async fn remove_webcluster_service(
        &self,
        cluster_oid: &str,
        service_oid: &str,
        caller: Option<&Principal>,
    ) -> Result<WebService> {
        let service = self
            .get_webcluster_service(cluster_oid, service_oid)
            .await?;
        self.store
            .commit(
                Txn::new()
                    .delete(keys::webservice(&service.webcluster_oid, &service.oid))
                    .delete(keys::webservice_path(
                        &service.webcluster_oid,
                        &service.path,
                    )),
            )
            .await?;
        self.events.publish(
            EventType::OnWebserviceRemoved,
            &service.oid,
            Some(who(caller)),
            event::Object::Webservice(service.clone()),
        );
        Ok(service)
    }

    /// A web service by oid.
    pub async fn get_webcluster_service(
        &self,
        cluster_oid: &str,
        service_oid: &str,
    ) -> Result<WebService> {
        let cluster_oid = validate::oid("webcluster_oid", cluster_oid)?;
        let service_oid = validate::oid("webservice_oid", service_oid)?;
        self.load_webcluster(&cluster_oid).await?;
        self.store
            .load::<WebService>(&keys::webservice(&cluster_oid, &service_oid))
            .await?
            .map(|(s, _)| s)
            .ok_or_else(|| Error::not_found(format_args!("web service {service_oid}")))
    }

    /// A web service by path.
    pub async fn get_webcluster_service_by_path(
        &self,
        cluster_oid: &str,
        path: &str,
    ) -> Result<WebService> {
        let cluster_oid = validate::oid("webcluster_oid", cluster_oid)?;
        let path = validate::path("path", path)?;
        self.load_webcluster(&cluster_oid).await?;
        let oid = self
            .store
            .load_str(&keys::webservice_path(&cluster_oid, &path))
            .await?
            .ok_or_else(|| Error::not_found(format_args!("web service on path {path}")))?;
        self.get_webcluster_service(&cluster_oid, &oid).await
    }

    /// The services of a web cluster whose path starts with `prefix`.
    pub async fn list_webcluster_services(
        &self,
        cluster_oid: &str,
        prefix: &str,
    ) -> Result<Vec<WebService>> {
        let cluster_oid = validate::oid("webcluster_oid", cluster_oid)?;
        self.load_webcluster(&cluster_oid).await?;
        Ok(self
            .store
            .list::<WebService>(&keys::webservices(&cluster_oid))
            .await?
            .into_iter()
            .filter(|s| s.path.starts_with(prefix))
            .collect())
    }
}

/// The status after a start (`start`) or stop, if allowed from `from` (docs/api.md, cluster life cycle).
pub fn transition(from: ClusterStatus, start: bool) -> Option<ClusterStatus> {
    use ClusterStatus::*;
    match (from, start) {
        (Stopped, true) => Some(Starting),
        (Starting | Running | Degraded | Error, false) => Some(Stopping),
        _ => None,
    }
}

/// "STOPPED", "RUNNING", ...
pub fn status_name(status: i32) -> &'static str {
    ClusterStatus::try_from(status)
        .map_or("UNKNOWN", |s| s.as_str_name())
        .trim_start_matches("CLUSTER_STATUS_")
}

/// A conflict on an `Equals` condition means someone changed the object meanwhile.
pub fn conflict_retry(e: crate::store::StoreError, what: &str) -> Error {
    match e {
        crate::store::StoreError::Conflict(_) => Error::domain(
            Reason::ConcurrentChange,
            format!("the {what} changed concurrently (or was deleted); read it again and retry"),
        ),
        other => other.into(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Arc;

    use switchyard::pb::master::v1::HeartbeatRequest;

    use super::*;
    use crate::store::Store;
    use crate::store::memory::MemoryStore;

    /// A core over an in-memory store, with the node `node1` registered (by a heartbeat).
    pub(crate) async fn core_with_node() -> (Core, String) {
        let core = Core::new(
            Arc::new(MemoryStore::default()),
            crate::core::HeartbeatConfig::default(),
            Arc::new(crate::agents::Agents::new(None)),
            tokio_util::sync::CancellationToken::new(),
        );
        let node = core
            .heartbeat(
                &HeartbeatRequest {
                    authid: "node1".into(),
                    ..Default::default()
                },
                true,
            )
            .await
            .unwrap();
        (core, node.oid)
    }

    /// The keys under `prefix`, readable.
    pub(crate) async fn keys_under(store: &dyn Store, prefix: &[u8]) -> Vec<String> {
        store
            .scan(prefix)
            .await
            .unwrap()
            .into_iter()
            .map(|(k, _)| String::from_utf8_lossy(&k).into_owned())
            .collect()
    }

    /// Every key of the store containing `needle` (an oid or a name), in any table.
    /// Every row of the state (the event history, `ev/`, names deleted objects by design).
    pub(crate) async fn keys_naming(store: &dyn Store, needle: &str) -> Vec<String> {
        store
            .scan(b"")
            .await
            .unwrap()
            .into_iter()
            .filter(|(k, _)| !k.starts_with(keys::EVENTS))
            .filter(|(k, v)| {
                let hit = |b: &[u8]| b.windows(needle.len()).any(|w| w == needle.as_bytes());
                hit(k) || hit(v)
            })
            .map(|(k, _)| String::from_utf8_lossy(&k).into_owned())
            .collect()
    }

    async fn cluster_with_rows(core: &Core, name: &str) -> (String, Vec<String>) {
        let spec = WebCluster {
            name: name.into(),
            tcp_port: 8080,
            ..Default::default()
        };
        let oid = core.create_webcluster(Some(spec), None).await.unwrap().oid;
        core.add_webcluster_node(&oid, "node1", None, None)
            .await
            .unwrap();
        let mut services = Vec::new();
        for path in ["/", "/info"] {
            let s = WebService {
                path: path.into(),
                service: Some(web_service::Service::Nodeinfo(Default::default())),
                ..Default::default()
            };
            let s = core
                .add_webcluster_service(&oid, Some(s), None)
                .await
                .unwrap();
            services.push(s.oid);
        }
        (oid, services)
    }

    #[tokio::test]
    async fn delete_webcluster_removes_every_row_of_that_cluster_only() {
        let (core, node) = core_with_node().await;
        let (gone, gone_services) = cluster_with_rows(&core, "gone").await;
        let (kept, _) = cluster_with_rows(&core, "kept").await;
        let deleted = core.delete_webcluster(&gone, None).await.unwrap();
        assert_eq!(
            (deleted.oid.as_str(), deleted.name.as_str()),
            (gone.as_str(), "gone")
        );

        let store = &*core.store;
        for prefix in [
            keys::webcluster(&gone),
            keys::webcluster_nodes(&gone),
            keys::webservices(&gone),
            keys::webservice_path(&gone, ""),
            keys::webcluster_name("gone"),
        ] {
            assert_eq!(
                keys_under(store, &prefix).await,
                Vec::<String>::new(),
                "rows left under {}",
                String::from_utf8_lossy(&prefix)
            );
        }
        assert_eq!(
            store
                .get(&keys::webcluster_node(&gone, &node))
                .await
                .unwrap(),
            None
        );
        for s in &gone_services {
            assert_eq!(store.get(&keys::webservice(&gone, s)).await.unwrap(), None);
            assert_eq!(keys_naming(store, s).await, Vec::<String>::new());
        }
        assert_eq!(keys_naming(store, &gone).await, Vec::<String>::new());

        // The other cluster keeps all of its rows.
        assert_eq!(core.get_webcluster_by_name("kept").await.unwrap().oid, kept);
        assert_eq!(
            keys_under(store, &keys::webcluster_nodes(&kept))
                .await
                .len(),
            1
        );
        assert_eq!(keys_under(store, &keys::webservices(&kept)).await.len(), 2);
        assert_eq!(
            keys_under(store, &keys::webservice_path(&kept, ""))
                .await
                .len(),
            2
        );
        // No membership row of the deleted cluster holds the node: it can be forgotten once the
        // kept cluster lets it go.
        core.remove_webcluster_node(&kept, "node1", None)
            .await
            .unwrap();
        core.remove_node(&node, None).await.unwrap();
    }

    #[test]
    fn transitions_follow_the_status_machine() {
        use ClusterStatus::*;
        assert_eq!(transition(Stopped, true), Some(Starting));
        for s in [Starting, Running, Degraded, Stopping] {
            assert_eq!(transition(s, true), None, "{s:?}");
        }
        for s in [Starting, Running, Degraded] {
            assert_eq!(transition(s, false), Some(Stopping), "{s:?}");
        }
        assert_eq!(transition(Stopped, false), None);
        assert_eq!(transition(Stopping, false), None);
    }

    use crate::validate::tests::reason;

    fn cluster(f: impl FnOnce(&mut WebCluster)) -> WebCluster {
        let mut c = WebCluster {
            name: "site".into(),
            tcp_port: 8080,
            ..Default::default()
        };
        f(&mut c);
        c
    }

    #[test]
    fn unusable_transport_keys_are_invalid_configuration() {
        assert!(check_transport(&cluster(|_| {})).is_ok());
        for (bad, field) in [
            (cluster(|c| c.tcp_port = 70000), "webcluster.tcp_port"),
            (
                cluster(|c| c.tcp_version = Some(5)),
                "webcluster.tcp_version",
            ),
            (
                cluster(|c| c.tcp_backlog = Some(0)),
                "webcluster.tcp_backlog",
            ),
            (
                cluster(|c| c.tcp_interface = Some("localhost:1".into())),
                "webcluster.tcp_interface",
            ),
            (
                cluster(|c| {
                    c.tls_key = Some("garbage".into());
                    c.tls_certificate = Some("garbage".into());
                }),
                "webcluster.tls_key",
            ),
            (
                cluster(|c| c.tls_ca_certificates = vec!["nope".into()]),
                "webcluster.tls_ca_certificates[0]",
            ),
        ] {
            let e = check_transport(&bad).unwrap_err();
            assert!(e.to_string().contains(field), "{field}: {e}");
            assert_eq!(reason(Err::<(), _>(e)), "INVALID_CONFIGURATION", "{field}");
        }
    }

    #[test]
    fn missing_transport_keys_are_invalid_argument() {
        for (bad, field) in [
            (cluster(|c| c.tcp_port = 0), "webcluster.tcp_port"),
            (
                cluster(|c| c.tls_key = Some("k".into())),
                "webcluster.tls_certificate",
            ),
        ] {
            let e = check_transport(&bad).unwrap_err();
            assert!(e.to_string().contains(field), "{field}: {e}");
            assert_eq!(reason(Err::<(), _>(e)), "INVALID_ARGUMENT", "{field}");
        }
    }

    fn service(s: web_service::Service) -> WebService {
        WebService {
            path: "/x".into(),
            service: Some(s),
            ..Default::default()
        }
    }

    #[test]
    fn service_keys_missing_are_arguments_unusable_are_configurations() {
        use web_service::Service;
        let static_dir = |d: &str| {
            service(Service::Static(apb::StaticService {
                directory: d.into(),
                options: None,
            }))
        };
        let proxy = |host: &str, port: u32, path: &str| {
            service(Service::Reverseproxy(apb::ReverseProxyService {
                host: host.into(),
                port,
                path: path.into(),
                ..Default::default()
            }))
        };
        let backend = |host: &str, port: u32| {
            service(Service::WebsocketReverseproxy(
                apb::WebSocketReverseProxyService {
                    backend: Some(apb::WebSocketBackend {
                        host: host.into(),
                        port,
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            ))
        };
        let redirect =
            |url: &str| service(Service::Redirect(apb::RedirectService { url: url.into() }));
        let mut cases = vec![
            (
                static_dir("www"),
                "webservice.static.directory",
                "INVALID_CONFIGURATION",
            ),
            (
                static_dir(""),
                "webservice.static.directory",
                "INVALID_ARGUMENT",
            ),
            (
                redirect("not a url"),
                "webservice.redirect.url",
                "INVALID_CONFIGURATION",
            ),
            (
                redirect("/relative"),
                "webservice.redirect.url",
                "INVALID_CONFIGURATION",
            ),
            (redirect(""), "webservice.redirect.url", "INVALID_ARGUMENT"),
            (
                proxy("h", 70000, ""),
                "webservice.reverseproxy.port",
                "INVALID_CONFIGURATION",
            ),
            (
                proxy("h", 80, "x"),
                "webservice.reverseproxy.path",
                "INVALID_CONFIGURATION",
            ),
            (
                proxy("", 80, ""),
                "webservice.reverseproxy.host",
                "INVALID_ARGUMENT",
            ),
            (
                backend("h", 70000),
                "webservice.websocket_reverseproxy.backend.port",
                "INVALID_CONFIGURATION",
            ),
            (
                backend("h", 0),
                "webservice.websocket_reverseproxy.backend.port",
                "INVALID_ARGUMENT",
            ),
            (
                service(Service::WebsocketReverseproxy(Default::default())),
                "webservice.websocket_reverseproxy",
                "INVALID_ARGUMENT",
            ),
            (
                WebService {
                    path: "/a/../b".into(),
                    ..static_dir("/srv")
                },
                "webservice.path",
                "INVALID_ARGUMENT",
            ),
        ];
        for (s, field, expected) in &mut cases {
            let e = check_service_keys(s).unwrap_err();
            assert!(e.to_string().contains(*field), "{field}: {e}");
            assert_eq!(reason(Err::<(), _>(e)), *expected, "{field}: {s:?}");
        }
        assert!(check_service_keys(&mut static_dir("/srv/www")).is_ok());
        assert!(check_service_keys(&mut proxy("h", 0, "/api")).is_ok());
    }
}
