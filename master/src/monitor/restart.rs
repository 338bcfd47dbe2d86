//! The end of a rolling restart (docs/operations.md, "Rolling restarts"): the restart API
//! stores a cluster's next worker generation with `restarting` set; the cluster's monitor
//! replaces the older generations' workers and, once none is left, clears `restarting` here
//! and publishes `on_webcluster_restarted` / `on_routercluster_restarted`.

use switchyard::pb::master::v1::{EventType, RouterCluster, WebCluster, event};

use super::status::ClusterRecord;
use crate::store::{StoreError, StoreExt, Txn, codec};

/// A cluster record that can be rolled.
pub trait Restartable: ClusterRecord {
    /// The `restarting` flag.
    fn restarting_mut(&mut self) -> &mut bool;
    /// The generation being rolled out.
    fn generation(&self) -> u32;
    /// The event that the roll is complete, with the object as Get returns it.
    fn restarted(self) -> (EventType, event::Object);
}

impl Restartable for WebCluster {
    fn restarting_mut(&mut self) -> &mut bool {
        &mut self.restarting
    }
    fn generation(&self) -> u32 {
        self.restart_generation
    }
    fn restarted(self) -> (EventType, event::Object) {
        (
            EventType::OnWebclusterRestarted,
            event::Object::Webcluster(crate::web::redact(self)),
        )
    }
}

impl Restartable for RouterCluster {
    fn restarting_mut(&mut self) -> &mut bool {
        &mut self.restarting
    }
    fn generation(&self) -> u32 {
        self.restart_generation
    }
    fn restarted(self) -> (EventType, event::Object) {
        (
            EventType::OnRouterclusterRestarted,
            event::Object::Routercluster(self),
        )
    }
}

/// Clears `restarting` on cluster `oid` (atomically against the value read) and publishes the
/// event; nothing when it is not set.
pub async fn finish<C: Restartable>(core: &crate::core::Core, oid: &str) -> Result<(), StoreError> {
    let key = C::key(oid);
    let Some((mut c, bytes)) = core.store.load::<C>(&key).await? else {
        return Ok(());
    };
    if !*c.restarting_mut() {
        return Ok(());
    }
    *c.restarting_mut() = false;
    core.commit_as_leader(
        Txn::new()
            .equals(key.clone(), bytes)
            .put(key, codec::encode(&c)),
    )
    .await?;
    tracing::info!(kind = C::KIND, cluster = %c.name(), generation = c.generation(), "rolling restart complete");
    let (kind, object) = c.restarted();
    core.events.publish(kind, oid, None, object);
    Ok(())
}
