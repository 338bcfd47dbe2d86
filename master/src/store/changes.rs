//! The watch of the embedded stores (memory, sled): a bounded log of the latest committed
//! transactions in memory, appended in revision order while the store applies them, and a
//! broadcast of each new one. A watcher replays the log after its revision, then follows; one
//! that falls too far behind gets [`StoreError::Compacted`] and can read the store again.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use tokio::sync::broadcast;

use super::{Change, ChangeStream, Revision, StoreError, Txn};

/// Transactions kept for watchers that resume.
const KEPT: usize = 16 * 1024;

/// One committed transaction's changes.
type Entry = Arc<(Revision, Vec<Change>)>;

/// The recent changes of a store.
#[derive(Debug)]
pub struct ChangeLog {
    log: Mutex<VecDeque<Entry>>,
    tx: broadcast::Sender<Entry>,
}

impl Default for ChangeLog {
    fn default() -> Self {
        ChangeLog {
            log: Mutex::new(VecDeque::new()),
            tx: broadcast::channel(KEPT).0,
        }
    }
}

impl ChangeLog {
    /// Records `txn`, committed at `revision` (called in revision order).
    pub fn append(&self, revision: Revision, txn: &Txn) {
        let changes = txn
            .deletes
            .iter()
            .map(|k| Change {
                revision,
                key: k.clone(),
                value: None,
            })
            .chain(txn.puts.iter().map(|(k, v)| Change {
                revision,
                key: k.clone(),
                value: Some(v.clone()),
            }))
            .collect();
        let entry = Arc::new((revision, changes));
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        if log.len() == KEPT {
            log.pop_front();
        }
        log.push_back(entry.clone());
        let _ = self.tx.send(entry);
    }

    /// The changes of keys under `prefix` committed after revision `after` (0: from now on).
    pub fn watch(&self, prefix: &[u8], after: Revision, current: Revision) -> ChangeStream {
        let (backlog, rx) = {
            let log = self.log.lock().unwrap_or_else(|p| p.into_inner());
            let rx = self.tx.subscribe();
            let after = if after == 0 { current } else { after };
            let oldest = log.front().map_or(current + 1, |e| e.0);
            if after + 1 < oldest {
                let e = StoreError::Compacted(oldest);
                return futures::stream::once(async move { Err(e) }).boxed();
            }
            let backlog: Vec<Entry> = log.iter().filter(|e| e.0 > after).cloned().collect();
            (backlog, rx)
        };
        let prefix = prefix.to_vec();
        let replay = futures::stream::iter(backlog.into_iter().map(Ok));
        let follow = tokio_stream::wrappers::BroadcastStream::new(rx).map(|r| {
            r.map_err(|_| {
                StoreError::Backend("the watcher fell behind; resume from its revision".into())
            })
        });
        // The subscription was taken with the backlog, under the log's lock: the broadcast
        // carries exactly the entries after it.
        replay
            .chain(follow)
            // A watcher that fell behind is told so, and the stream ends there: it resumes
            // after the last revision it saw (the trait's contract), never past a gap.
            .scan(false, |ended, e| {
                let item = (!*ended).then(|| {
                    *ended = e.is_err();
                    e
                });
                futures::future::ready(item)
            })
            .flat_map(move |e| {
                let changes: Vec<Result<Change, StoreError>> = match e {
                    Ok(entry) => entry
                        .1
                        .iter()
                        .filter(|c| c.key.starts_with(&prefix))
                        .cloned()
                        .map(Ok)
                        .collect(),
                    Err(e) => vec![Err(e)],
                };
                futures::stream::iter(changes)
            })
            .boxed()
    }
}
