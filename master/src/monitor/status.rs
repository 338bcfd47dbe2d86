//! The monitors' status decisions and writes, shared by web and router clusters: [`decide`]
//! turns what an iteration found into the cluster's next status (pure), [`set_status`] writes it
//! atomically against the value read and publishes the transition's event.

use switchyard::pb::master::v1::{ClusterStatus, EventType, RouterCluster, WebCluster, event};

use super::Outcome;
use crate::core::{Core, now_ns};
use crate::store::{StoreError, StoreExt, Txn, codec, keys};

/// What one iteration found, as far as the cluster's status is concerned.
#[derive(Debug, Clone, Default)]
pub struct Findings {
    /// The cluster is STOPPING.
    pub stopping: bool,
    /// Some online node could not be observed (its workers are unknown).
    pub unobserved: bool,
    /// Actions were attempted: the next observation must confirm them.
    pub acted: bool,
    /// Actions that failed, one line each.
    pub failures: Vec<String>,
    /// Why nothing can run at all (ERROR), if so.
    pub cannot_run: Option<String>,
    /// Why, although converged, some wanted workers cannot run (DEGRADED), if so.
    pub shortfall: Option<String>,
    /// Not converged, and nothing to do until something changes (e.g. workers placed on a node
    /// that did not answer): keep the status, try again on the next tick.
    pub pending: bool,
}

/// What the monitor does after an iteration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every worker of a stopping cluster is gone: set STOPPED and end the monitor.
    Stopped,
    /// Keep the status; continue as told.
    Keep(Outcome),
    /// Set this status and reason, then wait for the next tick or change.
    Set(ClusterStatus, String),
}

/// The status the findings call for. A stopping cluster is STOPPED only once an iteration
/// observed every online node and had nothing left to stop.
pub fn decide(f: &Findings) -> Verdict {
    let retry = if f.failures.is_empty() {
        Outcome::Again
    } else {
        Outcome::Continue
    };
    if f.stopping {
        return if !f.acted && !f.unobserved {
            Verdict::Stopped
        } else if f.acted {
            Verdict::Keep(retry)
        } else {
            // Waiting for a node to answer: at the ticker's pace, not in a loop.
            Verdict::Keep(Outcome::Continue)
        };
    }
    if let Some(reason) = &f.cannot_run {
        Verdict::Set(ClusterStatus::Error, reason.clone())
    } else if let Some(first) = f.failures.first() {
        let reason = format!("{} action(s) failed: {first}", f.failures.len());
        Verdict::Set(ClusterStatus::Degraded, reason)
    } else if f.acted {
        Verdict::Keep(Outcome::Again)
    } else if let Some(reason) = &f.shortfall {
        Verdict::Set(ClusterStatus::Degraded, reason.clone())
    } else if f.pending {
        Verdict::Keep(Outcome::Continue)
    } else {
        Verdict::Set(ClusterStatus::Running, String::new())
    }
}

/// Applies `verdict` to cluster `oid`; returns what the monitor does next.
pub async fn apply<C: ClusterRecord>(
    core: &Core,
    oid: &str,
    verdict: Verdict,
) -> Result<Outcome, StoreError> {
    match verdict {
        Verdict::Stopped => {
            set_status::<C>(core, oid, ClusterStatus::Stopped, "").await?;
            Ok(Outcome::Done)
        }
        Verdict::Keep(outcome) => Ok(outcome),
        Verdict::Set(status, reason) => {
            set_status::<C>(core, oid, status, &reason).await?;
            if status == ClusterStatus::Running {
                core.gauges.converged(oid);
            }
            Ok(Outcome::Continue)
        }
    }
}

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
) -> Result<(), StoreError> {
    let key = C::key(oid);
    let Some((mut c, bytes)) = core.store.load::<C>(&key).await? else {
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
    core.commit_as_leader(
        Txn::new()
            .equals(key.clone(), bytes)
            .put(key, codec::encode(&c)),
    )
    .await?;
    tracing::info!(kind = C::KIND, cluster = %c.name(), from = ?from, to = ?status, reason, "cluster status");
    if let Some((kind, object)) = c.event(status) {
        core.events.publish(kind, oid, None, object);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stopping_cluster_is_stopped_only_when_nothing_was_left_and_every_node_answered() {
        let stopping = Findings {
            stopping: true,
            ..Default::default()
        };
        assert_eq!(decide(&stopping), Verdict::Stopped);
        let acted = Findings {
            acted: true,
            ..stopping.clone()
        };
        assert_eq!(decide(&acted), Verdict::Keep(Outcome::Again));
        let unobserved = Findings {
            unobserved: true,
            ..stopping.clone()
        };
        assert_eq!(decide(&unobserved), Verdict::Keep(Outcome::Continue));
        let failed = Findings {
            acted: true,
            failures: vec!["n1 stop w: timed out".into()],
            ..stopping
        };
        assert_eq!(decide(&failed), Verdict::Keep(Outcome::Continue));
    }

    #[test]
    fn running_only_when_converged_without_shortfall() {
        assert_eq!(
            decide(&Findings::default()),
            Verdict::Set(ClusterStatus::Running, String::new())
        );
        let converging = Findings {
            acted: true,
            ..Default::default()
        };
        assert_eq!(decide(&converging), Verdict::Keep(Outcome::Again));
        let short = Findings {
            shortfall: Some("1 worker cannot be placed".into()),
            ..Default::default()
        };
        assert_eq!(
            decide(&short),
            Verdict::Set(ClusterStatus::Degraded, "1 worker cannot be placed".into())
        );
        let failed = Findings {
            acted: true,
            failures: vec!["a".into(), "b".into()],
            ..Default::default()
        };
        assert_eq!(
            decide(&failed),
            Verdict::Set(ClusterStatus::Degraded, "2 action(s) failed: a".into())
        );
        let broken = Findings {
            cannot_run: Some("the cluster has no member nodes".into()),
            failures: vec!["a".into()],
            ..Default::default()
        };
        assert!(matches!(
            decide(&broken),
            Verdict::Set(ClusterStatus::Error, _)
        ));
    }
}
