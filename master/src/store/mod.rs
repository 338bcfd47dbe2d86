//! The master's only way to persist: the [`Store`] trait, a sled implementation
//! ([`sled::SledStore`], the embedded default) and an in-memory one ([`memory::MemoryStore`],
//! for unit tests of pure logic).
//!
//! The model is one ordered key space divided into tables by key prefix ([`keys`]): every range
//! scan is bounded to one prefix, so a cluster's scan sees exactly its own rows. Writes are
//! [`Txn`]s: conditions plus puts and deletes, applied atomically, and acknowledged only once
//! durable. Values are versioned records ([`codec`]): one version byte, then a protobuf message,
//! which later versions can read.

pub mod changes;
pub mod codec;
pub mod copy;
pub mod etcd;
pub mod keys;
pub mod memory;
pub mod metered;
pub mod sled;

use std::future::Future;
use std::pin::Pin;

/// Store failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A [`Condition`] of the transaction did not hold; nothing was written.
    #[error("condition failed on key {0}")]
    Conflict(String),
    /// A stored value could not be decoded.
    #[error("corrupt record at {key}: {reason}")]
    Corrupt {
        /// The key.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// The backend failed.
    #[error("storage backend: {0}")]
    Backend(String),
    /// A watch asked for changes older than the backend still has (the oldest it has): read
    /// the current state again and watch from its revision.
    #[error("changes before revision {0} are no longer kept")]
    Compacted(Revision),
    /// The backend cannot be reached now (etcd down or without quorum); nothing was written,
    /// or, for a commit, the outcome is unknown. Retrying later is the remedy.
    #[error("{0}")]
    Unavailable(String),
}

/// A precondition of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    /// The key must not exist.
    Absent(Vec<u8>),
    /// The key must hold exactly this value.
    Equals(Vec<u8>, Vec<u8>),
}

/// One atomic, durable change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Txn {
    /// Checked first; if any fails, nothing is written.
    pub conditions: Vec<Condition>,
    /// Keys written.
    pub puts: Vec<(Vec<u8>, Vec<u8>)>,
    /// Keys removed.
    pub deletes: Vec<Vec<u8>>,
}

impl Txn {
    /// An empty transaction.
    pub fn new() -> Self {
        Txn::default()
    }

    /// Requires `key` to be absent.
    pub fn absent(mut self, key: Vec<u8>) -> Self {
        self.conditions.push(Condition::Absent(key));
        self
    }

    /// Requires `key` to hold `value`.
    pub fn equals(mut self, key: Vec<u8>, value: Vec<u8>) -> Self {
        self.conditions.push(Condition::Equals(key, value));
        self
    }

    /// Writes `value` at `key`.
    pub fn put(mut self, key: Vec<u8>, value: Vec<u8>) -> Self {
        self.puts.push((key, value));
        self
    }

    /// Removes `key`.
    pub fn delete(mut self, key: Vec<u8>) -> Self {
        self.deletes.push(key);
        self
    }
}

/// Rows of a scan: (key, value) pairs in key order.
pub type Rows = Vec<(Vec<u8>, Vec<u8>)>;

/// A boxed future of a store operation.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// A commit's place in the store's history: every committed transaction gets a revision
/// greater than all before it (etcd's revision; the embedded stores count their own).
pub type Revision = u64;

/// One committed change of a key: its new value, or `None` when it was deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The revision of the transaction that made it.
    pub revision: Revision,
    /// The key.
    pub key: Vec<u8>,
    /// The new value (`None`: deleted).
    pub value: Option<Vec<u8>>,
}

/// Committed changes in revision order (changes of one transaction share its revision).
pub type ChangeStream = futures::stream::BoxStream<'static, Result<Change, StoreError>>;

/// The master's persistence.
pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    /// The value at `key`.
    fn get<'a>(&'a self, key: &'a [u8]) -> StoreFuture<'a, Option<Vec<u8>>>;

    /// Every (key, value) whose key starts with `prefix`, in key order.
    fn scan<'a>(&'a self, prefix: &'a [u8]) -> StoreFuture<'a, Rows>;

    /// Applies `txn` atomically; resolves once it is durable, with its revision.
    fn commit(&self, txn: Txn) -> StoreFuture<'_, Revision>;

    /// Every change of a key under `prefix` committed after revision `after` (0: from now on),
    /// in revision order, without end. A watcher resumes after a broken stream by watching
    /// again after the last revision it saw: nothing is lost or repeated. Changes older than
    /// the backend keeps end the stream with [`StoreError::Compacted`].
    fn watch(&self, prefix: &[u8], after: Revision) -> ChangeStream;

    /// The revision of the last commit this store knows of (a watch from it misses nothing
    /// committed later).
    fn revision(&self) -> Revision;
}

/// Checks `conditions` against a lookup function (shared by the implementations).
pub fn check_conditions(
    conditions: &[Condition],
    mut get: impl FnMut(&[u8]) -> Option<Vec<u8>>,
) -> Result<(), StoreError> {
    for c in conditions {
        let (key, ok) = match c {
            Condition::Absent(k) => (k, get(k).is_none()),
            Condition::Equals(k, v) => (k, get(k).as_deref() == Some(v.as_slice())),
        };
        if !ok {
            return Err(StoreError::Conflict(
                String::from_utf8_lossy(key).into_owned(),
            ));
        }
    }
    Ok(())
}

/// Typed reads over a [`Store`]: decode records, keep the raw bytes for `Equals` conditions.
pub trait StoreExt {
    /// The record at `key` and its raw bytes.
    fn load<M: prost::Message + Default>(
        &self,
        key: &[u8],
    ) -> impl Future<Output = Result<Option<(M, Vec<u8>)>, StoreError>> + Send;
    /// Every record under `prefix`, in key order.
    fn list<M: prost::Message + Default>(
        &self,
        prefix: &[u8],
    ) -> impl Future<Output = Result<Vec<M>, StoreError>> + Send;
    /// The UTF-8 string at `key` (index entries).
    fn load_str(
        &self,
        key: &[u8],
    ) -> impl Future<Output = Result<Option<String>, StoreError>> + Send;
}

impl<S: Store + ?Sized> StoreExt for S {
    async fn load<M: prost::Message + Default>(
        &self,
        key: &[u8],
    ) -> Result<Option<(M, Vec<u8>)>, StoreError> {
        match self.get(key).await? {
            Some(bytes) => Ok(Some((codec::decode(key, &bytes)?, bytes))),
            None => Ok(None),
        }
    }

    async fn list<M: prost::Message + Default>(&self, prefix: &[u8]) -> Result<Vec<M>, StoreError> {
        self.scan(prefix)
            .await?
            .iter()
            .map(|(k, v)| codec::decode(k, v))
            .collect()
    }

    async fn load_str(&self, key: &[u8]) -> Result<Option<String>, StoreError> {
        Ok(self
            .get(key)
            .await?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }
}
