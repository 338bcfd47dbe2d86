//! An in-memory [`Store`] for unit tests of pure logic: same semantics, no durability.

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::{Rows, Store, StoreError, StoreFuture, Txn, check_conditions};

/// A store in a `BTreeMap`.
#[derive(Debug, Default)]
pub struct MemoryStore {
    map: Mutex<BTreeMap<Vec<u8>, Vec<u8>>>,
}

impl Store for MemoryStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned())
    }

    fn scan(&self, prefix: &[u8]) -> Result<Rows, StoreError> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        Ok(map
            .range(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn commit(&self, txn: Txn) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
            check_conditions(&txn.conditions, |k| map.get(k).cloned())?;
            for k in txn.deletes {
                map.remove(&k);
            }
            for (k, v) in txn.puts {
                map.insert(k, v);
            }
            Ok(())
        })
    }
}
