//! etcd leases, for the leader election (`crate::leader`): a lease is granted with a TTL, kept
//! alive by this master, and every key written with it disappears when it expires or is revoked.

use std::time::Duration;

use super::pb::{self, kv_client::KvClient, lease_client::LeaseClient};
use super::{EtcdStore, Revision, StoreError};

impl EtcdStore {
    /// A new lease of `ttl` (etcd may raise it to its minimum); returns its id and TTL.
    pub async fn grant_lease(&self, ttl: Duration) -> Result<(i64, Duration), StoreError> {
        let req = pb::LeaseGrantRequest {
            ttl: ttl.as_secs().max(1) as i64,
            id: 0,
        };
        let resp = self
            .endpoints
            .call("lease grant", true, |ch| async move {
                LeaseClient::new(ch).lease_grant(req).await
            })
            .await?;
        if !resp.error.is_empty() {
            return Err(StoreError::Backend(format!(
                "etcd lease grant: {}",
                resp.error
            )));
        }
        Ok((resp.id, Duration::from_secs(resp.ttl.max(0) as u64)))
    }

    /// Renews lease `id` once; returns the TTL it has now (zero: it expired).
    pub async fn keep_alive(&self, id: i64) -> Result<Duration, StoreError> {
        let resp = self
            .endpoints
            .call("lease keep-alive", false, |ch| async move {
                let mut client = LeaseClient::new(ch);
                let once = tokio_stream::iter([pb::LeaseKeepAliveRequest { id }]);
                let mut replies = client.lease_keep_alive(once).await?.into_inner();
                match replies.message().await? {
                    Some(r) => Ok(tonic::Response::new(r)),
                    None => Err(tonic::Status::unavailable("keep-alive stream ended")),
                }
            })
            .await?;
        Ok(Duration::from_secs(resp.ttl.max(0) as u64))
    }

    /// Revokes lease `id`: its keys are deleted at once.
    pub async fn revoke_lease(&self, id: i64) -> Result<(), StoreError> {
        self.endpoints
            .call("lease revoke", true, |ch| async move {
                LeaseClient::new(ch)
                    .lease_revoke(pb::LeaseRevokeRequest { id })
                    .await
            })
            .await
            .map(drop)
    }

    /// Writes `key` = `value` with lease `id` if `key` does not exist; returns the revision of
    /// the write, or `None` when the key exists.
    pub async fn create_leased(
        &self,
        key: &[u8],
        value: Vec<u8>,
        id: i64,
    ) -> Result<Option<Revision>, StoreError> {
        use pb::compare::{CompareResult, CompareTarget, TargetUnion};
        use pb::request_op::Request;
        let full = self.full(key);
        let req = pb::TxnRequest {
            compare: vec![pb::Compare {
                result: CompareResult::Equal as i32,
                target: CompareTarget::Version as i32,
                key: full.clone(),
                target_union: Some(TargetUnion::Version(0)),
            }],
            success: vec![pb::RequestOp {
                request: Some(Request::RequestPut(pb::PutRequest {
                    key: full,
                    value,
                    lease: id,
                })),
            }],
            failure: Vec::new(),
        };
        let resp = self
            .endpoints
            .call("txn", true, |ch| {
                let req = req.clone();
                async move { KvClient::new(ch).txn(req).await }
            })
            .await?;
        if !resp.succeeded {
            return Ok(None);
        }
        let revision = resp.header.map_or(0, |h| h.revision.max(0) as Revision);
        self.await_cache(revision).await;
        Ok(Some(revision))
    }

    /// Writes `key` = `value` with lease `id` (whether or not it exists).
    pub async fn put_leased(&self, key: &[u8], value: Vec<u8>, id: i64) -> Result<(), StoreError> {
        let req = pb::PutRequest {
            key: self.full(key),
            value,
            lease: id,
        };
        self.endpoints
            .call("put", true, |ch| {
                let req = req.clone();
                async move { KvClient::new(ch).put(req).await }
            })
            .await
            .map(drop)
    }

    /// The value of `key` and the revision that created it, read from etcd itself.
    pub async fn get_with_revision(
        &self,
        key: &[u8],
    ) -> Result<Option<(Vec<u8>, Revision)>, StoreError> {
        let req = pb::RangeRequest {
            key: self.full(key),
            ..Default::default()
        };
        let resp = self
            .endpoints
            .call("range", false, |ch| {
                let req = req.clone();
                async move { KvClient::new(ch).range(req).await }
            })
            .await?;
        Ok(resp
            .kvs
            .into_iter()
            .next()
            .map(|kv| (kv.value, kv.create_revision.max(0) as Revision)))
    }
}
