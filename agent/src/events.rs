//! The node's process events (`on_worker_*`, `on_cpu_affinity_set`, `on_gc_finished`,
//! `on_manhole_*`, `on_process_stats*`): one broadcast bus per process; the agent relays its
//! workers' events into its own, and `Watch` streams it. A watcher that falls behind the bounded
//! buffer is ended with RESOURCE_EXHAUSTED instead of slowing anyone down.

use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use futures::Stream;
use switchyard::pb::agent::v1::{ProcessEvent, ProcessEventType, WatchRequest, process_event};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::error::{Error, Result};

/// Events buffered per watcher before it is dropped.
pub const WATCH_BUFFER: usize = 1024;

/// A broadcast bus of process events. Events travel as `Arc`s: the ring holds pointers, not
/// whole events (a `ProcessEvent` is ~400 bytes, so 1024 inline slots cost ~400 KiB resident),
/// and each watcher's receive is a reference-count bump instead of a deep copy.
#[derive(Debug, Clone)]
pub struct EventBus {
    tx: broadcast::Sender<Arc<ProcessEvent>>,
}

impl Default for EventBus {
    fn default() -> Self {
        EventBus {
            tx: broadcast::channel(WATCH_BUFFER).0,
        }
    }
}

impl EventBus {
    /// Publishes an event (dropped when nobody watches).
    pub fn publish(
        &self,
        kind: ProcessEventType,
        process: &str,
        who: &str,
        details: process_event::Details,
    ) {
        self.send(ProcessEvent {
            r#type: kind as i32,
            ts: Some(SystemTime::now().into()),
            process: process.to_owned(),
            who: who.to_owned(),
            details: Some(details),
        });
    }

    /// Publishes a ready-made event (relayed from a worker).
    pub fn send(&self, event: ProcessEvent) {
        let _ = self.tx.send(Arc::new(event));
    }

    /// A filtered stream of events from now on, ending on `shutdown` or when the watcher lags.
    pub fn watch(&self, filter: WatchRequest, shutdown: CancellationToken) -> Result<EventStream> {
        for t in &filter.types {
            if ProcessEventType::try_from(*t).map_or(true, |t| t == ProcessEventType::Unspecified) {
                return Err(Error::invalid("types", format!("unknown event type {t}")));
            }
        }
        let mut rx = self.tx.subscribe();
        let stream = async_stream(move |yield_| async move {
            loop {
                let event = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    r = rx.recv() => r,
                };
                match event {
                    Ok(e) => {
                        let type_ok = filter.types.is_empty() || filter.types.contains(&e.r#type);
                        let proc_ok =
                            filter.processes.is_empty() || filter.processes.contains(&e.process);
                        if type_ok
                            && proc_ok
                            && yield_.send(Ok(Arc::unwrap_or_clone(e))).await.is_err()
                        {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        // The stream's last item: a wire status, converted here.
                        let _ = yield_.send(Err(Error::WatcherLagged(n).into())).await;
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Ok(stream)
    }
}

/// A boxed stream of watch results (wire statuses: a stream ends with one).
pub type EventStream = Pin<Box<dyn Stream<Item = Result<ProcessEvent, Status>> + Send>>;

/// A stream fed by a producer task through a small channel.
pub fn async_stream<T, F, Fut>(producer: F) -> Pin<Box<dyn Stream<Item = T> + Send>>
where
    T: Send + 'static,
    F: FnOnce(tokio::sync::mpsc::Sender<T>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(producer(tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}
