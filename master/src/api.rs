//! The master's gRPC services.
//!
//! Every RPC of the contract is routed. RPCs whose capability has not landed yet answer
//! UNIMPLEMENTED (the generated default), never a fake success: the cluster store and admin API
//! arrive with issue 4, monitors with issue 6, the node gateway with issue 9.

use switchyard::pb::master::v1::{
    event_service_server::{EventService, EventServiceServer},
    node_service_server::{NodeService, NodeServiceServer},
    router_cluster_service_server::{RouterClusterService, RouterClusterServiceServer},
    web_cluster_service_server::{WebClusterService, WebClusterServiceServer},
};
use tonic::service::Routes;

/// `switchyard.master.v1.WebClusterService`.
#[derive(Debug, Default)]
pub struct WebClusterApi;
impl WebClusterService for WebClusterApi {}

/// `switchyard.master.v1.RouterClusterService`.
#[derive(Debug, Default)]
pub struct RouterClusterApi;
impl RouterClusterService for RouterClusterApi {}

/// `switchyard.master.v1.NodeService`.
#[derive(Debug, Default)]
pub struct NodeApi;
impl NodeService for NodeApi {}

/// `switchyard.master.v1.EventService`.
#[derive(Debug, Default)]
pub struct EventApi;
impl EventService for EventApi {}

/// Every master service, ready to serve.
pub fn routes() -> Routes {
    Routes::new(WebClusterServiceServer::new(WebClusterApi))
        .add_service(RouterClusterServiceServer::new(RouterClusterApi))
        .add_service(NodeServiceServer::new(NodeApi))
        .add_service(EventServiceServer::new(EventApi))
}
