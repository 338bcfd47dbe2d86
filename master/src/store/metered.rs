//! A [`Store`] that times its commits, for `switchyard_store_commit_duration_seconds`.

use std::sync::Arc;
use std::time::Instant;

use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

use super::{ChangeStream, Revision, Rows, Store, StoreFuture, Txn};

/// `inner`, with every commit's duration (until durable) recorded in `seconds`.
#[derive(Debug)]
pub struct MeteredStore {
    inner: Arc<dyn Store>,
    /// Commit durations, seconds (0.5 ms .. 4 s).
    pub seconds: Histogram,
}

impl MeteredStore {
    /// Times the commits of `inner`.
    pub fn new(inner: Arc<dyn Store>) -> Self {
        MeteredStore {
            inner,
            seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 14)),
        }
    }
}

impl Store for MeteredStore {
    fn get<'a>(&'a self, key: &'a [u8]) -> StoreFuture<'a, Option<Vec<u8>>> {
        self.inner.get(key)
    }

    fn scan<'a>(&'a self, prefix: &'a [u8]) -> StoreFuture<'a, Rows> {
        self.inner.scan(prefix)
    }

    fn commit(&self, txn: Txn) -> StoreFuture<'_, Revision> {
        Box::pin(async move {
            let started = Instant::now();
            let result = self.inner.commit(txn).await;
            self.seconds.observe(started.elapsed().as_secs_f64());
            result
        })
    }

    fn watch(&self, prefix: &[u8], after: Revision) -> ChangeStream {
        self.inner.watch(prefix, after)
    }

    fn revision(&self) -> Revision {
        self.inner.revision()
    }
}
