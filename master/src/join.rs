//! Node certificates issued by the master (docs/security.md, "Joining a node", "Rotation",
//! "Revocation"): a new node joins with a join token and a CSR, a node renews its certificate
//! with its current one, and a removed node's certificates are revoked.
//!
//! A join registers the node (its name is then taken) and counts the token's use in one store
//! transaction, conditional on the token's record and the name being unchanged: two joins racing
//! for the last use of a token or for one name cannot both win. The certificate is signed before
//! and handed out only once that transaction committed.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use switchyard::error::Reason;
use switchyard::issuer::{CaSigner, NodeCertRequest, SignedCert};
use switchyard::pb::master::v1::{
    JoinNodeRequest, JoinNodeResponse, Node, NodeStatus, RenewNodeCertificateResponse,
    RevocationList, RevokedNode,
};
use switchyard::pki::PkiError;
use switchyard::revocation::Revocations;

use crate::core::{Core, new_oid};
use crate::error::{Error, Result};
use crate::store::{StoreError, StoreExt, Txn, codec, keys};
use crate::tokens::{self, TokenRecord};

/// The default lifetime of node certificates the master issues.
pub const DEFAULT_NODE_CERT_TTL: Duration = Duration::from_secs(7 * 86_400);

/// What the master issues node certificates with.
#[derive(Debug)]
pub struct Issuing {
    /// The CA key (`None`: the PKI directory has no `ca.key`; joins and renewals are refused).
    pub signer: Option<Arc<CaSigner>>,
    /// The lifetime of the certificates it issues (`--node-cert-ttl`).
    pub node_cert_ttl: Duration,
    /// Revoked node certificates, checked by the role layer and sent to agents.
    pub revocations: Arc<Revocations>,
}

impl Default for Issuing {
    fn default() -> Self {
        Issuing {
            signer: None,
            node_cert_ttl: DEFAULT_NODE_CERT_TTL,
            revocations: Arc::default(),
        }
    }
}

/// Attempts of a join that lost a race on its token's record before it gives up.
const JOIN_ATTEMPTS: usize = 8;

impl Core {
    fn signer(&self) -> Result<&CaSigner> {
        self.issuing().signer.as_deref().ok_or_else(|| {
            Error::domain(
                Reason::FeatureUnavailable,
                "this master holds no CA key (ca.key in its PKI directory): issue node certificates with `switchyard-master ca issue`",
            )
        })
    }

    fn sign(&self, authid: &str, csr_pem: &str) -> Result<SignedCert> {
        let floor = self
            .issuing()
            .revocations
            .revoked_until(authid)
            .map(|s| UNIX_EPOCH + Duration::from_secs(s.max(0) as u64));
        self.signer()?
            .sign_node(&NodeCertRequest {
                csr_pem,
                authid,
                ttl: self.issuing().node_cert_ttl,
                not_before_floor: floor,
            })
            .map_err(|e| match e {
                PkiError::Argument(message) => Error::invalid("csr_pem", message),
                other => Error::domain(Reason::Internal, other.to_string()),
            })
    }

    /// Joins a new node with a join token: registers it and returns its certificate.
    pub async fn join_node(&self, req: &JoinNodeRequest) -> Result<JoinNodeResponse> {
        let ca_pem = self.signer()?.ca_pem().to_owned();
        let authid = req.authid.as_str();
        if !switchyard::auth::valid_name(authid) {
            return Err(Error::invalid(
                "authid",
                "1..63 of [a-z0-9_.-], starting with a letter or digit",
            ));
        }
        let (id, secret) = tokens::parse(&req.token).ok_or_else(|| {
            Error::domain(Reason::TokenInvalid, "the join token is unknown or wrong")
        })?;
        let token_key = keys::join_token(id);
        let name_key = keys::node_name(authid);
        for _ in 0..JOIN_ATTEMPTS {
            let (record, bytes) = self
                .store
                .load::<TokenRecord>(&token_key)
                .await?
                .ok_or_else(|| {
                    Error::domain(Reason::TokenInvalid, "the join token is unknown or wrong")
                })?;
            tokens::admit(&record, secret, authid)?;
            if let Some(oid) = self.store.load_str(&name_key).await? {
                let status = match self.node_status(&oid) {
                    NodeStatus::Online => "online",
                    _ => "offline",
                };
                return Err(Error::domain(
                    Reason::AlreadyExists,
                    format!(
                        "node '{authid}' already exists ({status}); remove it first (switchyard node remove {authid}) to give its name to a new machine"
                    ),
                ));
            }
            let signed = self.sign(authid, &req.csr_pem)?;
            let node = Node {
                oid: new_oid(),
                authid: authid.to_owned(),
                registered: Some(SystemTime::now().into()),
                ..Default::default()
            };
            let txn = Txn::new()
                .equals(token_key.clone(), bytes)
                .put(
                    token_key.clone(),
                    codec::encode(&tokens::used(record, authid)),
                )
                .absent(name_key.clone())
                .put(name_key.clone(), node.oid.clone().into_bytes())
                .put(keys::node(&node.oid), codec::encode(&node));
            match self.store.commit(txn).await {
                Ok(_) => {
                    tracing::info!(node = %authid, oid = %node.oid, token = %id, "node joined");
                    return Ok(JoinNodeResponse {
                        certificate_pem: signed.pem,
                        ca_pem,
                        node_oid: node.oid,
                    });
                }
                // The token was used or the name taken meanwhile: look again.
                Err(StoreError::Conflict(_)) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::domain(
            Reason::ConcurrentChange,
            "the join token changed concurrently; try again",
        ))
    }

    /// A new certificate for the registered node `authid` (the caller, by its certificate).
    pub async fn renew_node_certificate(
        &self,
        authid: &str,
        csr_pem: &str,
    ) -> Result<RenewNodeCertificateResponse> {
        let ca_pem = self.signer()?.ca_pem().to_owned();
        if self
            .store
            .load_str(&keys::node_name(authid))
            .await?
            .is_none()
        {
            return Err(Error::domain(
                Reason::NotAuthorized,
                format!("node '{authid}' is not registered; it cannot renew its certificate"),
            ));
        }
        let signed = self.sign(authid, csr_pem)?;
        tracing::info!(node = %authid, not_after = ?signed.not_after, "node certificate renewed");
        Ok(RenewNodeCertificateResponse {
            certificate_pem: signed.pem,
            ca_pem,
        })
    }

    /// Loads the revocations from the store into the list the role layer checks.
    pub async fn load_revocations(&self) -> Result<(), StoreError> {
        let nodes = self
            .store
            .list::<RevokedNode>(keys::REVOKED_NODES)
            .await?
            .into_iter()
            .map(|r| (r.authid, r.revoked_until.map_or(0, |t| t.seconds)))
            .collect();
        self.issuing().revocations.replace(nodes);
        Ok(())
    }

    /// The store write that revokes `authid`'s certificates up to now, and the cut (Unix
    /// seconds) to apply in memory once it committed.
    pub(crate) fn revocation(&self, authid: &str) -> (Vec<u8>, Vec<u8>, i64) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let until = self
            .issuing()
            .revocations
            .revoked_until(authid)
            .map_or(now, |t| t.max(now));
        let record = RevokedNode {
            authid: authid.to_owned(),
            revoked_until: Some(prost_types::Timestamp {
                seconds: until,
                nanos: 0,
            }),
        };
        (keys::revoked_node(authid), codec::encode(&record), until)
    }

    /// The revocation list as agents receive it.
    pub fn revocation_list(&self) -> RevocationList {
        RevocationList {
            nodes: self
                .issuing()
                .revocations
                .snapshot()
                .into_iter()
                .map(|(authid, until)| RevokedNode {
                    authid,
                    revoked_until: Some(prost_types::Timestamp {
                        seconds: until,
                        nanos: 0,
                    }),
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;
    use crate::tokens::TokenSpec;
    use switchyard::pb::master::v1::RemoveNodeRequest;

    async fn core(ca: &std::path::Path) -> Arc<Core> {
        switchyard::pki::init_ca(ca).unwrap();
        let core = Arc::new(Core::new(
            Arc::new(MemoryStore::default()),
            Default::default(),
            Arc::new(crate::agents::Agents::new(None)),
            tokio_util::sync::CancellationToken::new(),
        ));
        let signer = CaSigner::load(ca).unwrap().map(Arc::new);
        core.start_issuing(signer, Duration::from_secs(60))
            .await
            .unwrap();
        core
    }

    fn request(token: &str, authid: &str) -> JoinNodeRequest {
        let (_, csr_pem) = switchyard::issuer::node_csr(authid, &[]).unwrap();
        JoinNodeRequest {
            token: token.to_owned(),
            authid: authid.to_owned(),
            csr_pem,
        }
    }

    fn reason(e: Error) -> Reason {
        match e {
            Error::Domain { reason, .. } => reason,
            other => panic!("{other}"),
        }
    }

    fn not_before(pem: &str) -> i64 {
        let der = switchyard::issuer::pem_certificates(pem).remove(0);
        switchyard::issuer::validity(&der).unwrap().0
    }

    #[tokio::test]
    async fn racing_joins_for_the_last_use_of_a_token_have_one_winner() {
        let dir = tempfile::tempdir().unwrap();
        let core = core(dir.path()).await;
        let spec = TokenSpec {
            ttl: Duration::from_secs(60),
            ..Default::default()
        };
        let (token, _) = tokens::create(core.store.as_ref(), &spec).await.unwrap();
        let joins = (0..8).map(|i| {
            let (core, req) = (core.clone(), request(&token, &format!("n{i}")));
            tokio::spawn(async move { core.join_node(&req).await })
        });
        let results = futures::future::join_all(joins).await;
        let (won, lost): (Vec<_>, Vec<_>) = results
            .into_iter()
            .map(|r| r.unwrap())
            .partition(|r| r.is_ok());
        assert_eq!(won.len(), 1);
        for e in lost {
            assert_eq!(reason(e.unwrap_err()), Reason::TokenExhausted);
        }
        assert_eq!(core.list_nodes(None).await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_removed_nodes_next_certificate_starts_after_its_revocation() {
        let dir = tempfile::tempdir().unwrap();
        let core = core(dir.path()).await;
        let spec = TokenSpec {
            ttl: Duration::from_secs(60),
            uses: 2,
            ..Default::default()
        };
        let (token, _) = tokens::create(core.store.as_ref(), &spec).await.unwrap();
        let first = core.join_node(&request(&token, "n1")).await.unwrap();
        // The name is taken while the node is registered.
        let taken = core.join_node(&request(&token, "n1")).await.unwrap_err();
        assert_eq!(reason(taken), Reason::AlreadyExists);
        let api = crate::api::NodeApi(core.clone());
        use switchyard::pb::master::v1::node_service_server::NodeService;
        api.remove_node(tonic::Request::new(RemoveNodeRequest {
            node_oid: first.node_oid.clone(),
        }))
        .await
        .unwrap();
        let until = core.issuing().revocations.revoked_until("n1").unwrap();
        assert!(not_before(&first.certificate_pem) <= until);
        // Renewals need a registered node; a new join gets a certificate past the revocation.
        let (_, csr) = switchyard::issuer::node_csr("n1", &[]).unwrap();
        let unregistered = core.renew_node_certificate("n1", &csr).await.unwrap_err();
        assert_eq!(reason(unregistered), Reason::NotAuthorized);
        let again = core.join_node(&request(&token, "n1")).await.unwrap();
        assert!(not_before(&again.certificate_pem) > until);
        let renewed = core.renew_node_certificate("n1", &csr).await.unwrap();
        assert!(not_before(&renewed.certificate_pem) > until);
        // The revocation survives a restart of the master (it is in the store).
        core.issuing().revocations.replace(Default::default());
        core.load_revocations().await.unwrap();
        assert_eq!(core.issuing().revocations.revoked_until("n1"), Some(until));
    }

    #[tokio::test]
    async fn without_a_ca_key_joins_are_unavailable() {
        let core = Arc::new(Core::new(
            Arc::new(MemoryStore::default()),
            Default::default(),
            Arc::new(crate::agents::Agents::new(None)),
            tokio_util::sync::CancellationToken::new(),
        ));
        let e = core.join_node(&request("x", "n1")).await.unwrap_err();
        assert_eq!(reason(e), Reason::FeatureUnavailable);
    }
}
