//! Group commit on etcd: commits waiting at the same moment go to etcd as one transaction when
//! their keys are disjoint (at most [`MAX_OPS`] operations, within etcd's `--max-txn-ops`), the
//! way sled shares one flush between concurrent writers. etcd then orders, replicates and applies
//! one entry instead of many. A batch whose conditions do not all hold is sent again one
//! transaction at a time, so each commit gets its own answer; an outcome etcd did not confirm is
//! `Unavailable` for every commit of the batch (each may have been applied).

use std::collections::HashSet;
use std::sync::Arc;

use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::pb::{self, kv_client::KvClient};
use super::{Cache, Condition, Endpoints, Revision, StoreError, Txn};

/// The most operations (compares plus writes) of commits batched together.
const MAX_OPS: usize = 96;
/// Batches in flight at once (each one etcd round trip).
const IN_FLIGHT: usize = 8;

/// One commit waiting for its batch.
struct Pending {
    txn: Txn,
    done: oneshot::Sender<Result<Revision, StoreError>>,
}

/// What a batch needs of the store.
#[derive(Debug)]
struct Shared {
    endpoints: Arc<Endpoints>,
    prefix: Vec<u8>,
    cache: Arc<Cache>,
}

/// The store's commits, batched.
#[derive(Debug)]
pub(super) struct Writer {
    shared: Arc<Shared>,
    queue: mpsc::Sender<Pending>,
}

impl Writer {
    /// Starts the batching task (until `stop`).
    pub(super) fn start(
        endpoints: Arc<Endpoints>,
        prefix: Vec<u8>,
        cache: Arc<Cache>,
        stop: CancellationToken,
    ) -> Writer {
        let shared = Arc::new(Shared {
            endpoints,
            prefix,
            cache,
        });
        let (queue, rx) = mpsc::channel(1024);
        let batching = shared.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = batching.batch(rx) => {}
            }
        });
        Writer { shared, queue }
    }

    /// Commits `txn` (in a batch with others waiting now, if any).
    pub(super) async fn commit(&self, txn: Txn) -> Result<Revision, StoreError> {
        let (done, result) = oneshot::channel();
        let stopped = || StoreError::Unavailable("the etcd store is stopping".into());
        self.queue
            .send(Pending { txn, done })
            .await
            .map_err(|_| stopped())?;
        result.await.unwrap_or_else(|_| Err(stopped()))
    }

    /// Waits until the cache reflects `revision`.
    pub(super) async fn await_cache(&self, revision: Revision) {
        self.shared.await_cache(revision).await;
    }
}

fn keys(txn: &Txn) -> impl Iterator<Item = &Vec<u8>> {
    let conditions = txn.conditions.iter().map(|c| match c {
        Condition::Absent(k) | Condition::Equals(k, _) => k,
    });
    conditions
        .chain(txn.puts.iter().map(|(k, _)| k))
        .chain(txn.deletes.iter())
}

fn ops(txn: &Txn) -> usize {
    txn.conditions.len() + txn.puts.len() + txn.deletes.len()
}

impl Shared {
    /// Forms batches from the queue and sends each (at most [`IN_FLIGHT`] at once).
    async fn batch(self: Arc<Self>, mut rx: mpsc::Receiver<Pending>) {
        let in_flight = Arc::new(Semaphore::new(IN_FLIGHT));
        let mut carried: Option<Pending> = None;
        loop {
            let first = match carried.take() {
                Some(p) => p,
                None => match rx.recv().await {
                    Some(p) => p,
                    None => return,
                },
            };
            let Ok(permit) = in_flight.clone().acquire_owned().await else {
                return;
            };
            let mut seen: HashSet<Vec<u8>> = keys(&first.txn).cloned().collect();
            let mut total = ops(&first.txn);
            let mut batch = vec![first];
            while let Ok(next) = rx.try_recv() {
                let clash = keys(&next.txn).any(|k| seen.contains(k));
                if clash || total + ops(&next.txn) > MAX_OPS {
                    carried = Some(next);
                    break;
                }
                seen.extend(keys(&next.txn).cloned());
                total += ops(&next.txn);
                batch.push(next);
            }
            let this = self.clone();
            tokio::spawn(async move {
                let _permit = permit;
                this.send(batch).await;
            });
        }
    }

    /// Sends one batch and answers each of its commits.
    async fn send(&self, mut batch: Vec<Pending>) {
        if batch.len() == 1 {
            let p = batch.pop().expect("one");
            let _ = p.done.send(self.commit_one(&p.txn).await);
            return;
        }
        let mut req = pb::TxnRequest::default();
        for p in &batch {
            let one = self.to_etcd(&p.txn);
            req.compare.extend(one.compare);
            req.success.extend(one.success);
        }
        match self.call(req).await {
            Ok(resp) if resp.succeeded => {
                let revision = resp.header.map_or(0, |h| h.revision.max(0) as Revision);
                self.await_cache(revision).await;
                for p in batch {
                    let _ = p.done.send(Ok(revision));
                }
            }
            // Some condition failed: each commit on its own, for its own answer.
            Ok(_) => {
                let each = batch.into_iter().map(|p| async move {
                    let _ = p.done.send(self.commit_one(&p.txn).await);
                });
                futures::future::join_all(each).await;
            }
            Err(error) => {
                let message = error.to_string();
                for p in batch {
                    let _ = p.done.send(Err(match &error {
                        StoreError::Backend(_) => StoreError::Backend(message.clone()),
                        _ => StoreError::Unavailable(message.clone()),
                    }));
                }
            }
        }
    }

    async fn call(&self, req: pb::TxnRequest) -> Result<pb::TxnResponse, StoreError> {
        self.endpoints
            .call("txn", true, |ch| {
                let req = req.clone();
                async move { KvClient::new(ch).txn(req).await }
            })
            .await
    }

    /// One commit as one etcd transaction.
    async fn commit_one(&self, txn: &Txn) -> Result<Revision, StoreError> {
        let resp = self.call(self.to_etcd(txn)).await?;
        if !resp.succeeded {
            return Err(StoreError::Conflict(self.failed_condition(txn, &resp)));
        }
        let revision = resp.header.map_or(0, |h| h.revision.max(0) as Revision);
        self.await_cache(revision).await;
        Ok(revision)
    }

    /// Waits until the cache reflects `revision` (or stops following etcd: reads go there then).
    async fn await_cache(&self, revision: Revision) {
        let mut applied = self.cache.applied.subscribe();
        let caught_up = applied.wait_for(|r| *r >= revision || !self.cache.read().live);
        if tokio::time::timeout(self.endpoints.timeout, caught_up)
            .await
            .is_err()
        {
            tracing::warn!(
                revision,
                "the etcd watch is behind this master's own write; reconnecting it"
            );
            self.cache.set_live(false);
            self.cache.behind.notify_one();
        }
    }
}

impl Shared {
    /// The etcd transaction of `txn`: its conditions as compares, its writes as success
    /// operations; the failure operations read the compared keys (to name the one that failed).
    fn to_etcd(&self, txn: &Txn) -> pb::TxnRequest {
        use pb::compare::{CompareResult, CompareTarget, TargetUnion};
        use pb::request_op::Request;
        let mut compare = Vec::new();
        let mut failure = Vec::new();
        for c in &txn.conditions {
            let (key, target, union) = match c {
                Condition::Absent(k) => (k, CompareTarget::Version, TargetUnion::Version(0)),
                Condition::Equals(k, v) => (k, CompareTarget::Value, TargetUnion::Value(v.clone())),
            };
            let key = [self.prefix.as_slice(), key.as_slice()].concat();
            failure.push(pb::RequestOp {
                request: Some(Request::RequestRange(pb::RangeRequest {
                    key: key.clone(),
                    ..Default::default()
                })),
            });
            compare.push(pb::Compare {
                result: CompareResult::Equal as i32,
                target: target as i32,
                key,
                target_union: Some(union),
            });
        }
        let deletes = txn.deletes.iter().map(|k| pb::RequestOp {
            request: Some(Request::RequestDeleteRange(pb::DeleteRangeRequest {
                key: [self.prefix.as_slice(), k].concat(),
                range_end: Vec::new(),
            })),
        });
        let puts = txn.puts.iter().map(|(k, v)| pb::RequestOp {
            request: Some(Request::RequestPut(pb::PutRequest {
                key: [self.prefix.as_slice(), k].concat(),
                value: v.clone(),
                lease: 0,
            })),
        });
        pb::TxnRequest {
            compare,
            success: deletes.chain(puts).collect(),
            failure,
        }
    }

    /// The key of the first condition that did not hold, from the failure reads.
    fn failed_condition(&self, txn: &Txn, resp: &pb::TxnResponse) -> String {
        use pb::response_op::Response;
        for (c, r) in txn.conditions.iter().zip(&resp.responses) {
            let found = match &r.response {
                Some(Response::ResponseRange(r)) => r.kvs.first().map(|kv| kv.value.as_slice()),
                _ => None,
            };
            let (key, held) = match c {
                Condition::Absent(k) => (k, found.is_none()),
                Condition::Equals(k, v) => (k, found == Some(v.as_slice())),
            };
            if !held {
                return String::from_utf8_lossy(key).into_owned();
            }
        }
        "a condition".to_owned()
    }
}
