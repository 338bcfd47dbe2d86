//! `switchyard-master store copy`: every row of one store into another, e.g. to move a single
//! master's sled data to etcd. The master must be stopped (nothing may write meanwhile).
//!
//! Idempotent: a target that already holds exactly the source's rows is left as it is; a target
//! holding anything else is refused unless forced (then same keys are overwritten, others kept).

use std::collections::BTreeMap;

use super::{Store, StoreError, Txn};

/// Rows per transaction: below etcd's default limit of 128 operations per transaction.
const BATCH: usize = 100;

/// Why a copy did not happen.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// The target holds rows that are not the source's (how many).
    #[error("the target already holds {0} rows")]
    NotEmpty(usize),
    /// A store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What was copied, by table (the key's first segment).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Copied {
    /// Rows per table.
    pub tables: BTreeMap<String, usize>,
    /// The target already held exactly these rows: nothing was written.
    pub unchanged: bool,
}

impl Copied {
    /// Rows in all.
    pub fn total(&self) -> usize {
        self.tables.values().sum()
    }
}

/// The rows of a store's tables: the state. A backend's own bookkeeping keys (starting with a
/// NUL byte) and the event history (`ev/`, of no use to a new master) are left out.
async fn rows(store: &dyn Store) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError> {
    let mut rows = store.scan(b"").await?;
    rows.retain(|(k, _)| !k.starts_with(b"\0") && !k.starts_with(super::keys::EVENTS));
    Ok(rows)
}

/// Copies every row of `from` into `to`.
pub async fn copy(from: &dyn Store, to: &dyn Store, force: bool) -> Result<Copied, CopyError> {
    let source = rows(from).await?;
    let existing = rows(to).await?;
    let mut copied = Copied::default();
    for (k, _) in &source {
        let table = k.split(|b| *b == b'/').next().unwrap_or_default();
        *copied
            .tables
            .entry(String::from_utf8_lossy(table).into_owned())
            .or_default() += 1;
    }
    if !existing.is_empty() {
        if existing == source {
            copied.unchanged = true;
            return Ok(copied);
        }
        if !force {
            return Err(CopyError::NotEmpty(existing.len()));
        }
    }
    for chunk in source.chunks(BATCH) {
        let mut txn = Txn::new();
        for (k, v) in chunk {
            txn = txn.put(k.clone(), v.clone());
        }
        to.commit(txn).await?;
    }
    Ok(copied)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;

    async fn store_with(rows: &[(&str, &str)]) -> MemoryStore {
        let s = MemoryStore::default();
        let mut txn = Txn::new();
        for (k, v) in rows {
            txn = txn.put(k.as_bytes().to_vec(), v.as_bytes().to_vec());
        }
        s.commit(txn).await.unwrap();
        s
    }

    #[tokio::test]
    async fn copies_everything_once_and_refuses_a_foreign_target() {
        let from = store_with(&[("wc/1", "a"), ("wc/2", "b"), ("wcn/1/n", "c")]).await;
        let to = MemoryStore::default();
        let c = copy(&from, &to, false).await.unwrap();
        assert_eq!(c.total(), 3);
        assert_eq!(c.tables["wc"], 2);
        assert_eq!(rows(&to).await.unwrap(), rows(&from).await.unwrap());
        // Again: the target holds exactly the source's rows.
        assert!(copy(&from, &to, false).await.unwrap().unchanged);
        // A target with other rows is refused, unless forced.
        let other = store_with(&[("wc/9", "z")]).await;
        assert!(matches!(
            copy(&from, &other, false).await,
            Err(CopyError::NotEmpty(1))
        ));
        copy(&from, &other, true).await.unwrap();
        assert_eq!(rows(&other).await.unwrap().len(), 4);
    }
}
