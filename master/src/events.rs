//! The master's event stream (EventService.Watch): every `on_*` event of the reference, typed,
//! with a sequence number; filterable by type and oid. A watcher that falls behind the bounded
//! buffer is ended with RESOURCE_EXHAUSTED; publishing never waits for anyone.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use switchyard::pb::master::v1::{Event, EventType, WatchRequest, Who, event};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::error::{Error, Result};

/// Events buffered per watcher before it is dropped.
pub const WATCH_BUFFER: usize = 4096;

/// The master's event bus. Events travel as `Arc`s: the ring holds pointers rather than whole
/// events (4096 inline slots of a 600-byte `Event` are 2.4 MB, allocated up front), and every
/// receive (each watcher, the monitors' supervisor) is a reference-count bump, not a deep copy.
#[derive(Debug, Clone)]
pub struct Events {
    tx: broadcast::Sender<Arc<Event>>,
    seq: Arc<AtomicU64>,
}

impl Default for Events {
    fn default() -> Self {
        Self::with_capacity(WATCH_BUFFER)
    }
}

impl Events {
    /// A bus buffering `capacity` events per watcher.
    pub fn with_capacity(capacity: usize) -> Self {
        Events {
            tx: broadcast::channel(capacity).0,
            seq: Arc::default(),
        }
    }

    /// A receiver of every event from now on (for the monitors' supervisor).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.tx.subscribe()
    }

    /// Publishes an event about `oid`.
    pub fn publish(&self, kind: EventType, oid: &str, who: Option<Who>, object: event::Object) {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        let _ = self.tx.send(Arc::new(Event {
            seq,
            r#type: kind as i32,
            ts: Some(SystemTime::now().into()),
            oid: oid.to_owned(),
            who,
            object: Some(object),
        }));
    }

    /// A filtered stream of the events from now on.
    pub fn watch(
        &self,
        filter: WatchRequest,
        shutdown: CancellationToken,
    ) -> Result<tonic::codegen::BoxStream<switchyard::pb::master::v1::WatchResponse>> {
        for (i, t) in filter.types.iter().enumerate() {
            if EventType::try_from(*t).map_or(true, |t| t == EventType::Unspecified) {
                return Err(Error::invalid(
                    format!("types[{i}]"),
                    format!("unknown event type {t}"),
                ));
            }
        }
        for (i, oid) in filter.oids.iter().enumerate() {
            crate::validate::oid(&format!("oids[{i}]"), oid)?;
        }
        let mut rx = self.tx.subscribe();
        let (tx, out) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tx.closed() => return,
                    next = rx.recv() => next,
                };
                match next {
                    Ok(e) => {
                        if matches(&filter, &e)
                            && tx
                                .send(Ok(switchyard::pb::master::v1::WatchResponse {
                                    event: Some(Arc::unwrap_or_clone(e)),
                                }))
                                .await
                                .is_err()
                        {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        let _ = tx
                            .send(Err(Status::resource_exhausted(format!(
                                "watcher too slow: {n} events dropped; reconnect"
                            ))))
                            .await;
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(out)))
    }
}

fn object_oids(e: &Event) -> Vec<&str> {
    use event::Object::*;
    match &e.object {
        Some(Webcluster(o)) => vec![o.oid.as_str()],
        Some(WebclusterNode(o)) => vec![o.cluster_oid.as_str(), o.node_oid.as_str()],
        Some(Webservice(o)) => vec![o.oid.as_str(), o.webcluster_oid.as_str()],
        Some(Routercluster(o)) => vec![o.oid.as_str()],
        Some(RouterclusterNode(o)) => vec![o.cluster_oid.as_str(), o.node_oid.as_str()],
        Some(Workergroup(o)) => vec![o.oid.as_str(), o.cluster_oid.as_str()],
        Some(Node(o)) => vec![o.oid.as_str()],
        Some(Worker(o)) => vec![o.node_oid.as_str()],
        Some(Placement(o)) => vec![o.oid.as_str(), o.cluster_oid.as_str(), o.node_oid.as_str()],
        None => vec![],
    }
}

fn matches(filter: &WatchRequest, e: &Event) -> bool {
    let type_ok = filter.types.is_empty() || filter.types.contains(&e.r#type);
    let oid_ok = filter.oids.is_empty()
        || filter
            .oids
            .iter()
            .any(|o| *o == e.oid || object_oids(e).contains(&o.as_str()));
    type_ok && oid_ok
}
