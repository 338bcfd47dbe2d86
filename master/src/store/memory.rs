//! An in-memory [`Store`] for unit tests of pure logic: same semantics, no durability.

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::changes::ChangeLog;
use super::{ChangeStream, Revision, Rows, Store, StoreFuture, Txn, check_conditions};

/// A store in a `BTreeMap`.
#[derive(Debug, Default)]
pub struct MemoryStore {
    state: Mutex<State>,
    changes: ChangeLog,
}

#[derive(Debug, Default)]
struct State {
    map: BTreeMap<Vec<u8>, Vec<u8>>,
    revision: Revision,
}

impl MemoryStore {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Store for MemoryStore {
    fn get<'a>(&'a self, key: &'a [u8]) -> StoreFuture<'a, Option<Vec<u8>>> {
        let value = self.lock().map.get(key).cloned();
        Box::pin(async move { Ok(value) })
    }

    fn scan<'a>(&'a self, prefix: &'a [u8]) -> StoreFuture<'a, Rows> {
        let rows = self
            .lock()
            .map
            .range(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Box::pin(async move { Ok(rows) })
    }

    fn commit(&self, txn: Txn) -> StoreFuture<'_, Revision> {
        Box::pin(async move {
            let mut state = self.lock();
            check_conditions(&txn.conditions, |k| state.map.get(k).cloned())?;
            for k in &txn.deletes {
                state.map.remove(k);
            }
            for (k, v) in &txn.puts {
                state.map.insert(k.clone(), v.clone());
            }
            state.revision += 1;
            self.changes.append(state.revision, &txn);
            Ok(state.revision)
        })
    }

    fn watch(&self, prefix: &[u8], after: Revision) -> ChangeStream {
        let state = self.lock();
        self.changes.watch(prefix, after, state.revision)
    }

    fn revision(&self) -> Revision {
        self.lock().revision
    }
}
