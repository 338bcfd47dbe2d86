//! The master's event stream (EventService.Watch): every `on_*` event of the reference, typed,
//! with a sequence number; filterable by type and oid. A watcher that falls behind the bounded
//! buffer is ended with RESOURCE_EXHAUSTED; publishing never waits for anyone.
//!
//! Events travel through the store, so that every master sees every master's events, in one
//! order: [`Events::publish`] queues an event; a writer task commits the queued events as rows
//! of the `ev/` table (a batch per transaction); a pump task follows the store's watch of that
//! table and hands each event, in commit order, to this master's watchers and monitors. A
//! janitor keeps the newest [`KEPT_EVENTS`] rows. This costs one batched write per burst of
//! events; on etcd it is what lets every client of the store (another master, a restarted one)
//! see the events in one order (docs/architecture.md, "The store"). An event is written after the
//! change it reports, in publishing order: two changes committed at nearly the same time by
//! different tasks may be reported in the other order, and a master that dies between a change
//! and its event loses that event.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use switchyard::pb::master::v1::{Event, EventType, WatchRequest, Who, event};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::error::{Error, Result};
use crate::store::{Revision, Store, StoreError, Txn, keys};

/// Events buffered per watcher before it is dropped.
pub const WATCH_BUFFER: usize = 4096;

/// Event rows the store keeps (for watchers of other masters that resume after a hiccup).
pub const KEPT_EVENTS: usize = 8192;

/// The master's event bus. Events travel as `Arc`s: the ring holds pointers rather than whole
/// events (4096 inline slots of a 600-byte `Event` are 2.4 MB, allocated up front), and every
/// receive (each watcher, the monitors' supervisor) is a reference-count bump, not a deep copy.
#[derive(Debug, Clone)]
pub struct Events {
    tx: broadcast::Sender<Arc<Event>>,
    outbox: mpsc::UnboundedSender<Event>,
}

impl Events {
    /// The bus of a master on `store`: starts its writer, pump and janitor (until `shutdown`).
    pub fn start(store: Arc<dyn Store>, shutdown: CancellationToken) -> Self {
        let (tx, _) = broadcast::channel(WATCH_BUFFER);
        let (outbox, queued) = mpsc::unbounded_channel();
        // The pump watches from the store's current revision: taken now, before anything can
        // be published, so that no event of this master is missed.
        let from = store.revision();
        tokio::spawn(write(store.clone(), queued, shutdown.clone()));
        tokio::spawn(pump(store.clone(), from, tx.clone(), shutdown.clone()));
        tokio::spawn(janitor(store, shutdown));
        Events { tx, outbox }
    }

    /// A receiver of every event from now on (for the monitors' supervisor).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.tx.subscribe()
    }

    /// Publishes an event about `oid`.
    pub fn publish(&self, kind: EventType, oid: &str, who: Option<Who>, object: event::Object) {
        let _ = self.outbox.send(Event {
            seq: 0,
            r#type: kind as i32,
            ts: Some(SystemTime::now().into()),
            oid: oid.to_owned(),
            who,
            object: Some(object),
        });
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

/// The key of an event row: time-ordered (for the janitor), unique.
fn event_key(e: &Event) -> Vec<u8> {
    let ns = e.ts.as_ref().map_or(0, |t| {
        t.seconds.max(0) as u128 * 1_000_000_000 + t.nanos.max(0) as u128
    });
    let unique = uuid::Uuid::new_v4().simple();
    [keys::EVENTS, format!("{ns:020}-{unique}").as_bytes()].concat()
}

/// Events per transaction: below etcd's default limit of 128 operations per transaction.
const BATCH: usize = 100;

/// Commits queued events, a batch per transaction, in the order they were published. A store
/// that does not answer is retried (events wait, in order); each row is written only if absent,
/// so a retried batch that had been applied after all is not written twice. A batch the store
/// refuses for good is logged and dropped rather than holding every later event back.
async fn write(
    store: Arc<dyn Store>,
    mut queued: mpsc::UnboundedReceiver<Event>,
    shutdown: CancellationToken,
) {
    let mut batch = Vec::new();
    loop {
        let stopping = tokio::select! {
            n = queued.recv_many(&mut batch, BATCH) => {
                if n == 0 {
                    return;
                }
                false
            }
            _ = shutdown.cancelled() => {
                // What was published before shutdown is still written, then the task ends.
                while batch.len() < BATCH {
                    match queued.try_recv() {
                        Ok(e) => batch.push(e),
                        Err(_) => break,
                    }
                }
                true
            }
        };
        if !batch.is_empty() {
            commit_events(&*store, batch.drain(..), &shutdown).await;
        }
        if stopping && queued.is_empty() {
            return;
        }
    }
}

async fn commit_events(
    store: &dyn Store,
    events: impl Iterator<Item = Event>,
    shutdown: &CancellationToken,
) {
    let txn = events.fold(Txn::new(), |txn, e| {
        let key = event_key(&e);
        txn.absent(key.clone())
            .put(key, crate::store::codec::encode(&e))
    });
    let mut delay = Duration::from_millis(50);
    let mut retried = false;
    loop {
        match store.commit(txn.clone()).await {
            Ok(_) => return,
            // Written by an earlier attempt whose answer was lost.
            Err(StoreError::Conflict(_)) if retried => return,
            Err(StoreError::Unavailable(error)) if !shutdown.is_cancelled() => {
                tracing::warn!(%error, retry_in = ?delay, "cannot record events; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
                retried = true;
            }
            Err(error) => {
                let n = txn.puts.len();
                tracing::error!(%error, events = n, "events dropped: the store refused them");
                return;
            }
        }
    }
}

/// Hands every event committed to the store (by any client of it) to this master's
/// subscribers, in commit order, with this master's sequence numbers. A broken watch resumes
/// after the last revision delivered, after a short pause.
async fn pump(
    store: Arc<dyn Store>,
    from: Revision,
    tx: broadcast::Sender<Arc<Event>>,
    shutdown: CancellationToken,
) {
    let mut seq = 0u64;
    let mut last = from;
    let mut changes = store.watch(keys::EVENTS, last);
    let mut delay = Duration::from_millis(20);
    loop {
        let next = tokio::select! {
            _ = shutdown.cancelled() => return,
            next = changes.next() => next,
        };
        let change = match next {
            Some(Ok(c)) => c,
            broken => {
                match broken {
                    Some(Err(StoreError::Compacted(oldest))) => {
                        tracing::warn!(
                            after = last,
                            oldest,
                            "events were lost to the store's retention"
                        );
                        last = oldest.saturating_sub(1);
                    }
                    Some(Err(error)) => tracing::warn!(%error, "event watch broke; resuming"),
                    _ => tracing::warn!("event watch ended; resuming"),
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(2));
                changes = store.watch(keys::EVENTS, last);
                continue;
            }
        };
        delay = Duration::from_millis(20);
        last = change.revision;
        let Some(bytes) = change.value else { continue }; // the janitor's deletes
        match crate::store::codec::decode::<Event>(&change.key, &bytes) {
            Ok(mut e) => {
                seq += 1;
                e.seq = seq;
                let _ = tx.send(Arc::new(e));
            }
            Err(error) => tracing::warn!(%error, "skipping an unreadable event"),
        }
    }
}

/// Deletes all but the newest [`KEPT_EVENTS`] event rows, every few seconds.
async fn janitor(store: Arc<dyn Store>, shutdown: CancellationToken) {
    let mut ticker = tokio::time::interval(Duration::from_secs(10));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let rows = match store.scan(keys::EVENTS).await {
            Ok(rows) => rows,
            Err(error) => {
                tracing::debug!(%error, "event janitor: cannot scan");
                continue;
            }
        };
        let surplus = rows.len().saturating_sub(KEPT_EVENTS);
        for chunk in rows[..surplus].chunks(BATCH) {
            let txn = chunk
                .iter()
                .fold(Txn::new(), |t, (k, _)| t.delete(k.clone()));
            if let Err(error) = store.commit(txn).await {
                tracing::debug!(%error, "event janitor: cannot delete");
                break;
            }
        }
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
        Some(Master(o)) => vec![o.name.as_str()],
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
