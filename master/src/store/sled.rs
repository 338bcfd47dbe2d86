//! The embedded default [`Store`]: one sled tree under `--data-dir`, with group commit.
//!
//! A commit applies its transaction to sled atomically (a sled transaction checks the conditions
//! and writes), then waits for durability. Durability is shared: one flusher task flushes once for
//! every commit that arrived while the previous flush ran, so concurrent writers share fsyncs and
//! durability does not cap throughput.

use std::path::Path;

use sled::transaction::{ConflictableTransactionError, TransactionError};
use tokio::sync::{mpsc, oneshot};

use super::{Condition, Rows, Store, StoreError, StoreFuture, Txn};

/// The sled-backed store.
#[derive(Debug)]
pub struct SledStore {
    db: sled::Db,
    tree: sled::Tree,
    flush: mpsc::UnboundedSender<oneshot::Sender<Result<(), String>>>,
    flusher: tokio::task::JoinHandle<()>,
}

impl SledStore {
    /// Opens (or creates) the database in `dir` and starts its flusher.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .path(dir.join("switchyard.sled"))
            .flush_every_ms(None)
            .open()
            .map_err(|e| StoreError::Backend(e.to_string()))?;
        let tree = db
            .open_tree("v1")
            .map_err(|e| StoreError::Backend(e.to_string()))?;
        let (flush, waiters) = mpsc::unbounded_channel();
        let flusher = tokio::spawn(flusher(db.clone(), waiters));
        Ok(SledStore {
            db,
            tree,
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

impl Store for SledStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.tree
            .get(key)
            .map(|v| v.map(|v| v.to_vec()))
            .map_err(|e| StoreError::Backend(e.to_string()))
    }

    fn scan(&self, prefix: &[u8]) -> Result<Rows, StoreError> {
        self.tree
            .scan_prefix(prefix)
            .map(|r| {
                r.map(|(k, v)| (k.to_vec(), v.to_vec()))
                    .map_err(|e| StoreError::Backend(e.to_string()))
            })
            .collect()
    }

    fn commit(&self, txn: Txn) -> StoreFuture<'_, ()> {
        Box::pin(async move {
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
                Ok(())
            });
            match applied {
                Ok(()) => {}
                Err(TransactionError::Abort(key)) => return Err(StoreError::Conflict(key)),
                Err(TransactionError::Storage(e)) => {
                    return Err(StoreError::Backend(e.to_string()));
                }
            }
            let (tx, rx) = oneshot::channel();
            self.flush
                .send(tx)
                .map_err(|_| StoreError::Backend("flusher stopped".into()))?;
            rx.await
                .map_err(|_| StoreError::Backend("flusher stopped".into()))?
                .map_err(StoreError::Backend)
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
            assert_eq!(store.get(b"b").unwrap(), None, "nothing half-written");
            store
                .commit(
                    Txn::new()
                        .put(b"p/1".to_vec(), vec![])
                        .put(b"p/2".to_vec(), vec![])
                        .put(b"q/1".to_vec(), vec![]),
                )
                .await
                .unwrap();
            assert_eq!(store.scan(b"p/").unwrap().len(), 2);
            store.close().await.unwrap();
        }
        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(store.get(b"a").unwrap().as_deref(), Some(&b"1"[..]));
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
        assert_eq!(store.scan(b"k/").unwrap().len(), 64);
    }
}
