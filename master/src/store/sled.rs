//! The embedded default [`Store`]: one sled tree under `--data-dir`, with group commit.
//!
//! A commit applies its transaction to sled atomically (a sled transaction checks the conditions
//! and writes), then waits for durability. Durability is shared: one flusher task flushes once for
//! every commit that arrived while the previous flush ran, so concurrent writers share fsyncs and
//! durability does not cap throughput.
//!
//! Revisions: transactions are applied one at a time (in memory, before the shared flush), each
//! with the next revision, which is written in the same sled transaction under
//! [`REVISION_KEY`] so that it survives a restart.

use std::path::Path;
use std::sync::Mutex;

use sled::transaction::{ConflictableTransactionError, TransactionError};
use tokio::sync::{mpsc, oneshot};

use super::changes::ChangeLog;
use super::{ChangeStream, Condition, Revision, Rows, Store, StoreError, StoreFuture, Txn};

/// Where the last revision is kept (outside every table's prefix).
pub const REVISION_KEY: &[u8] = b"\0meta/revision";

/// The sled-backed store.
#[derive(Debug)]
pub struct SledStore {
    db: sled::Db,
    tree: sled::Tree,
    /// The last committed revision; held while a transaction is applied.
    revision: Mutex<Revision>,
    /// The latest transactions, for watchers.
    changes: ChangeLog,
    flush: mpsc::UnboundedSender<oneshot::Sender<Result<(), String>>>,
    flusher: tokio::task::JoinHandle<()>,
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

impl SledStore {
    /// Opens (or creates) the database in `dir` and starts its flusher.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .path(dir.join("switchyard.sled"))
            .flush_every_ms(None)
            .open()
            .map_err(backend)?;
        let tree = db.open_tree("v1").map_err(backend)?;
        let revision = match tree.get(REVISION_KEY).map_err(backend)? {
            Some(v) => {
                Revision::from_be_bytes(v.as_ref().try_into().map_err(|_| StoreError::Corrupt {
                    key: String::from_utf8_lossy(REVISION_KEY).into_owned(),
                    reason: format!("{} bytes, expected 8", v.len()),
                })?)
            }
            None => 0,
        };
        let (flush, waiters) = mpsc::unbounded_channel();
        let flusher = tokio::spawn(flusher(db.clone(), waiters));
        Ok(SledStore {
            db,
            tree,
            revision: Mutex::new(revision),
            changes: ChangeLog::default(),
            flush,
            flusher,
        })
    }

    /// Flushes, stops the flusher and releases the database (its file lock) for reopening.
    pub async fn close(self) -> Result<(), StoreError> {
        self.sync().await?;
        let SledStore {
            db,
            tree,
            flush,
            flusher,
            ..
        } = self;
        drop((tree, flush));
        let _ = flusher.await;
        drop(db);
        Ok(())
    }

    /// Flushes everything now (shutdown).
    pub async fn sync(&self) -> Result<(), StoreError> {
        self.db
            .flush_async()
            .await
            .map(|_| ())
            .map_err(|e| StoreError::Backend(e.to_string()))
    }
}

/// Flushes once per batch of waiting commits.
async fn flusher(
    db: sled::Db,
    mut waiters: mpsc::UnboundedReceiver<oneshot::Sender<Result<(), String>>>,
) {
    let mut batch = Vec::new();
    while waiters.recv_many(&mut batch, 4096).await > 0 {
        let result = db
            .flush_async()
            .await
            .map(|_| ())
            .map_err(|e| e.to_string());
        for waiter in batch.drain(..) {
            let _ = waiter.send(result.clone());
        }
    }
}

impl SledStore {
    /// Applies `txn` in one sled transaction with the next revision; nothing if a condition
    /// fails.
    fn apply(&self, txn: &Txn) -> Result<Revision, StoreError> {
        let mut revision = self.revision.lock().unwrap_or_else(|p| p.into_inner());
        let next = *revision + 1;
        let applied = self.tree.transaction(|t| {
            for c in &txn.conditions {
                let (key, ok) = match c {
                    Condition::Absent(k) => (k, t.get(k)?.is_none()),
                    Condition::Equals(k, v) => (k, t.get(k)?.as_deref() == Some(v.as_slice())),
                };
                if !ok {
                    return Err(ConflictableTransactionError::Abort(
                        String::from_utf8_lossy(key).into_owned(),
                    ));
                }
            }
            for k in &txn.deletes {
                t.remove(k.as_slice())?;
            }
            for (k, v) in &txn.puts {
                t.insert(k.as_slice(), v.as_slice())?;
            }
            t.insert(REVISION_KEY, &next.to_be_bytes())?;
            Ok(())
        });
        match applied {
            Ok(()) => {
                *revision = next;
                self.changes.append(next, txn);
                Ok(next)
            }
            Err(TransactionError::Abort(key)) => Err(StoreError::Conflict(key)),
            Err(TransactionError::Storage(e)) => Err(backend(e)),
        }
    }
}

impl Store for SledStore {
    fn get<'a>(&'a self, key: &'a [u8]) -> StoreFuture<'a, Option<Vec<u8>>> {
        let value = self.tree.get(key).map(|v| v.map(|v| v.to_vec()));
        Box::pin(async move { value.map_err(backend) })
    }

    fn scan<'a>(&'a self, prefix: &'a [u8]) -> StoreFuture<'a, Rows> {
        let rows = self
            .tree
            .scan_prefix(prefix)
            .map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(backend))
            .collect();
        Box::pin(async move { rows })
    }

    fn watch(&self, prefix: &[u8], after: Revision) -> ChangeStream {
        let revision = self.revision.lock().unwrap_or_else(|p| p.into_inner());
        self.changes.watch(prefix, after, *revision)
    }

    fn revision(&self) -> Revision {
        *self.revision.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn commit(&self, txn: Txn) -> StoreFuture<'_, Revision> {
        Box::pin(async move {
            let revision = self.apply(&txn)?;
            let (tx, rx) = oneshot::channel();
            let stopped = || StoreError::Backend("flusher stopped".into());
            self.flush.send(tx).map_err(|_| stopped())?;
            rx.await
                .map_err(|_| stopped())?
                .map_err(StoreError::Backend)?;
            Ok(revision)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn conditions_make_transactions_all_or_nothing_and_data_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SledStore::open(dir.path()).unwrap();
            store
                .commit(
                    Txn::new()
                        .absent(b"a".to_vec())
                        .put(b"a".to_vec(), b"1".to_vec()),
                )
                .await
                .unwrap();
            let conflict = store
                .commit(
                    Txn::new()
                        .absent(b"a".to_vec())
                        .put(b"b".to_vec(), b"2".to_vec()),
                )
                .await;
            assert!(matches!(conflict, Err(StoreError::Conflict(_))));
            assert_eq!(store.get(b"b").await.unwrap(), None, "nothing half-written");
            store
                .commit(
                    Txn::new()
                        .put(b"p/1".to_vec(), vec![])
                        .put(b"p/2".to_vec(), vec![])
                        .put(b"q/1".to_vec(), vec![]),
                )
                .await
                .unwrap();
            assert_eq!(store.scan(b"p/").await.unwrap().len(), 2);
            store.close().await.unwrap();
        }
        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(store.get(b"a").await.unwrap().as_deref(), Some(&b"1"[..]));
    }

    #[tokio::test]
    async fn concurrent_commits_share_flushes() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(SledStore::open(dir.path()).unwrap());
        let tasks: Vec<_> = (0..64)
            .map(|i| {
                let s = store.clone();
                tokio::spawn(async move {
                    s.commit(Txn::new().put(format!("k/{i}").into_bytes(), vec![1]))
                        .await
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        assert_eq!(store.scan(b"k/").await.unwrap().len(), 64);
    }
}
