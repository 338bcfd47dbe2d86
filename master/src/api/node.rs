//! `switchyard.master.v1.NodeService`: agents' heartbeat streams (which carry the revocation
//! list to them), joins and certificate renewals, join tokens, and the admin's node list.

use std::sync::Arc;

use switchyard::auth::{PeerCert, Role, caller};
use switchyard::error::{Reason, status};
use switchyard::pb::master::v1::node_service_server::NodeService;
use switchyard::pb::master::v1::*;
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status, Streaming};

use super::{filter, items};
use crate::core::Core;

/// Nodes.
#[derive(Debug)]
pub struct NodeApi(pub Arc<Core>);

type R<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl NodeService for NodeApi {
    /// The first message is checked before the stream is accepted: a node may only heartbeat
    /// for the authid of its own certificate.
    async fn heartbeat(
        &self,
        req: Request<Streaming<HeartbeatRequest>>,
    ) -> R<BoxStream<HeartbeatResponse>> {
        let principal = caller(&req).cloned();
        let req_cert = req.extensions().get::<std::sync::Arc<PeerCert>>().cloned();
        let insecure = req
            .extensions()
            .get::<switchyard::auth::Insecure>()
            .is_some();
        let mut incoming = req.into_inner();
        let first = incoming.message().await?.ok_or_else(|| {
            Status::cancelled("the heartbeat stream ended before its first heartbeat")
        })?;
        let allowed = insecure
            || principal
                .as_ref()
                .is_some_and(|p| p.role == Role::Node && p.name == first.authid);
        if !allowed {
            let who = principal.map_or_else(|| "an unknown caller".to_owned(), |p| p.uri());
            return Err(status(
                Reason::NotAuthorized,
                format!("{who} may not heartbeat for node '{}'", first.authid),
            ));
        }
        let core = self.0.clone();
        let cert = req_cert;
        let revoked = move |core: &Core| {
            cert.as_ref()
                .zip(principal.as_ref())
                .is_some_and(|(c, p)| core.issuing().revocations.is_revoked(p, c.not_before))
        };
        let node = core.heartbeat(&first, true).await?;
        let interval_ms = core.heartbeat.interval.as_millis() as u32;
        let reply = move |core: &Core, node_oid: String, agent_version: u64| {
            let version = core.issuing().revocations.version();
            let view = core.leadership.view();
            HeartbeatResponse {
                leader_address: (view.epoch > 0)
                    .then(|| view.leader.map(|l| l.address))
                    .flatten()
                    .unwrap_or_default(),
                leader_epoch: view.epoch,
                node_oid,
                heartbeat_interval_ms: interval_ms,
                revocations_version: version,
                revocations: (version != agent_version).then(|| core.revocation_list()),
            }
        };
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let _ = tx
            .send(Ok(reply(
                &core,
                node.oid.clone(),
                first.revocations_version,
            )))
            .await;
        let authid = first.authid.clone();
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    _ = core.shutdown.cancelled() => break,
                    next = incoming.message() => next,
                };
                match next {
                    // Removed meanwhile: the stream ends with the reason, and does not register
                    // the node again.
                    Ok(Some(_)) if revoked(&core) => {
                        let _ = tx
                            .send(Err(status(
                                Reason::CertificateRevoked,
                                format!("the certificate of node '{authid}' was revoked"),
                            )))
                            .await;
                        break;
                    }
                    Ok(Some(hb)) if hb.authid == authid => match core.heartbeat(&hb, false).await {
                        Ok(node) => {
                            let r = reply(&core, node.oid, hb.revocations_version);
                            if tx.send(Ok(r)).await.is_err() {
                                break;
                            }
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e.into())).await;
                            break;
                        }
                    },
                    Ok(Some(_)) => {
                        let _ = tx
                            .send(Err(status(
                                Reason::NotAuthorized,
                                "the authid of a heartbeat stream cannot change",
                            )))
                            .await;
                        break;
                    }
                    Ok(None) | Err(_) => break,
                }
            }
            core.heartbeat_stream_ended(&node.oid).await;
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn join_node(&self, req: Request<JoinNodeRequest>) -> R<JoinNodeResponse> {
        Ok(Response::new(self.0.join_node(req.get_ref()).await?))
    }

    async fn renew_node_certificate(
        &self,
        req: Request<RenewNodeCertificateRequest>,
    ) -> R<RenewNodeCertificateResponse> {
        let authid = match caller(&req) {
            Some(p) if p.role == Role::Node => p.name.clone(),
            _ => {
                return Err(status(
                    Reason::NotAuthorized,
                    "only a node renews its own certificate",
                ));
            }
        };
        let renewed = self
            .0
            .renew_node_certificate(&authid, &req.get_ref().csr_pem)
            .await?;
        Ok(Response::new(renewed))
    }

    async fn create_join_token(
        &self,
        req: Request<CreateJoinTokenRequest>,
    ) -> R<CreateJoinTokenResponse> {
        let r = req.get_ref();
        let spec = crate::tokens::TokenSpec {
            ttl: std::time::Duration::from_secs(u64::from(r.ttl_seconds)),
            uses: r.uses,
            name_prefix: r.name_prefix.clone(),
            description: r.description.clone(),
        };
        let (token, info) = crate::tokens::create(self.0.store.as_ref(), &spec).await?;
        let who = caller(&req).map_or_else(String::new, |p| p.uri());
        tracing::info!(token = %info.id, %who, "join token created");
        Ok(Response::new(CreateJoinTokenResponse {
            token,
            join_token: Some(info),
        }))
    }

    async fn list_join_tokens(
        &self,
        _req: Request<ListJoinTokensRequest>,
    ) -> R<ListJoinTokensResponse> {
        let join_tokens = crate::tokens::list(self.0.store.as_ref()).await?;
        Ok(Response::new(ListJoinTokensResponse { join_tokens }))
    }

    async fn revoke_join_token(
        &self,
        req: Request<RevokeJoinTokenRequest>,
    ) -> R<RevokeJoinTokenResponse> {
        let info = crate::tokens::revoke(self.0.store.as_ref(), &req.get_ref().id).await?;
        tracing::info!(token = %info.id, "join token revoked");
        Ok(Response::new(RevokeJoinTokenResponse {
            join_token: Some(info),
        }))
    }

    async fn list_nodes(&self, req: Request<ListNodesRequest>) -> R<ListNodesResponse> {
        let r = req.get_ref();
        let status = filter::<NodeStatus>("filter_by_status", r.filter_by_status)?;
        let nodes = self.0.list_nodes(status).await?;
        let items = items(nodes, r.return_names, |n| &n.oid, |n| &n.authid);
        Ok(Response::new(ListNodesResponse { items }))
    }

    async fn get_node(&self, req: Request<GetNodeRequest>) -> R<GetNodeResponse> {
        let node = self.0.get_node(&req.get_ref().node_oid).await?;
        Ok(Response::new(GetNodeResponse { node: Some(node) }))
    }

    async fn get_node_by_name(
        &self,
        req: Request<GetNodeByNameRequest>,
    ) -> R<GetNodeByNameResponse> {
        let node = self.0.get_node_by_name(&req.get_ref().authid).await?;
        Ok(Response::new(GetNodeByNameResponse { node: Some(node) }))
    }

    async fn remove_node(&self, req: Request<RemoveNodeRequest>) -> R<RemoveNodeResponse> {
        let node = self
            .0
            .remove_node(&req.get_ref().node_oid, caller(&req))
            .await?;
        Ok(Response::new(RemoveNodeResponse { node: Some(node) }))
    }
}
