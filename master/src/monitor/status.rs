//! The monitors' status writes, shared by web and router clusters: compare, write atomically
//! against the read value, publish the transition's event.

use switchyard::pb::master::v1::{ClusterStatus, EventType, RouterCluster, WebCluster, event};

use crate::core::{Core, now_ns};
use crate::store::{StoreExt, Txn, codec, keys};

/// A stored cluster whose status a monitor sets.
pub trait ClusterRecord: prost::Message + Default + Clone {
    /// "web" or "router", for logs.
    const KIND: &'static str;
    /// The record's key.
    fn key(oid: &str) -> Vec<u8>;
    /// The record's name.
    fn name(&self) -> &str;
    /// Mutable status, reason and change time.
    fn status_mut(&mut self) -> (&mut i32, &mut String, &mut i64);
    /// The event of a transition to `status`, with the object as Get returns it.
    fn event(self, status: ClusterStatus) -> Option<(EventType, event::Object)>;
}

impl ClusterRecord for WebCluster {
    const KIND: &'static str = "web";
    fn key(oid: &str) -> Vec<u8> {
        keys::webcluster(oid)
    }
    fn name(&self) -> &str {
        &self.name
    }
    fn status_mut(&mut self) -> (&mut i32, &mut String, &mut i64) {
        (&mut self.status, &mut self.status_reason, &mut self.changed)
    }
    fn event(self, status: ClusterStatus) -> Option<(EventType, event::Object)> {
        let kind = match status {
            ClusterStatus::Running => EventType::OnWebclusterStarted,
            ClusterStatus::Degraded => EventType::OnWebclusterDegraded,
            ClusterStatus::Error => EventType::OnWebclusterError,
            ClusterStatus::Stopped => EventType::OnWebclusterStopped,
            _ => return None,
        };
        Some((kind, event::Object::Webcluster(crate::web::redact(self))))
    }
}

impl ClusterRecord for RouterCluster {
    const KIND: &'static str = "router";
    fn key(oid: &str) -> Vec<u8> {
        keys::routercluster(oid)
    }
    fn name(&self) -> &str {
        &self.name
    }
    fn status_mut(&mut self) -> (&mut i32, &mut String, &mut i64) {
        (&mut self.status, &mut self.status_reason, &mut self.changed)
    }
    fn event(self, status: ClusterStatus) -> Option<(EventType, event::Object)> {
        let kind = match status {
            ClusterStatus::Running => EventType::OnRouterclusterStarted,
            ClusterStatus::Degraded => EventType::OnRouterclusterDegraded,
            ClusterStatus::Error => EventType::OnRouterclusterError,
            ClusterStatus::Stopped => EventType::OnRouterclusterStopped,
            _ => return None,
        };
        Some((kind, event::Object::Routercluster(self)))
    }
}

/// Sets the status (and reason) of cluster `oid` if it changed, with its event. A cluster the
/// admin just asked to stop is only ever moved on to STOPPED.
pub async fn set_status<C: ClusterRecord>(
    core: &Core,
    oid: &str,
    status: ClusterStatus,
    reason: &str,
) -> Result<(), String> {
    let key = C::key(oid);
    let Some((mut c, bytes)) = core.store.load::<C>(&key).map_err(|e| e.to_string())? else {
        return Ok(());
    };
    let (current, current_reason, changed) = c.status_mut();
    if *current == status as i32 && current_reason == reason {
        return Ok(());
    }
    let from = ClusterStatus::try_from(*current).unwrap_or(ClusterStatus::Unspecified);
    if from == ClusterStatus::Stopping && status != ClusterStatus::Stopped {
        return Ok(());
    }
    *current = status as i32;
    *current_reason = reason.to_owned();
    *changed = now_ns();
    core.store
        .commit(
            Txn::new()
                .equals(key.clone(), bytes)
                .put(key, codec::encode(&c)),
        )
        .await
        .map_err(|e| e.to_string())?;
    tracing::info!(kind = C::KIND, cluster = %c.name(), from = ?from, to = ?status, reason, "cluster status");
    if let Some((kind, object)) = c.event(status) {
        core.events.publish(kind, oid, None, object);
    }
    Ok(())
}
