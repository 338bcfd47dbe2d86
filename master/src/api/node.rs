//! `switchyard.master.v1.NodeService`: agents' heartbeat streams and the admin's node list.

use std::sync::Arc;

use switchyard::auth::{Role, caller};
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
        let node = core.heartbeat(&first, true).await?;
        let interval_ms = core.heartbeat.interval.as_millis() as u32;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let _ = tx
            .send(Ok(HeartbeatResponse {
                node_oid: node.oid.clone(),
                heartbeat_interval_ms: interval_ms,
            }))
            .await;
        let authid = first.authid.clone();
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    _ = core.shutdown.cancelled() => break,
                    next = incoming.message() => next,
                };
                match next {
                    Ok(Some(hb)) if hb.authid == authid => match core.heartbeat(&hb, false).await {
                        Ok(node) => {
                            let reply = HeartbeatResponse {
                                node_oid: node.oid,
                                heartbeat_interval_ms: interval_ms,
                            };
                            if tx.send(Ok(reply)).await.is_err() {
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
