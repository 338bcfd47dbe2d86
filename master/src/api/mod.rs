//! The master's gRPC services: thin adapters (validate → core → convert) over [`Core`].
//!
//! The master also serves the agents' services as a gateway to every node ([`crate::gateway`]).

mod control_plane;
mod event;
mod node;
mod router;
mod web;

use std::sync::Arc;

use switchyard::pb::agent::v1::{
    native_process_service_server::NativeProcessServiceServer,
    node_controller_service_server::NodeControllerServiceServer,
};
use switchyard::pb::master::v1::{
    control_plane_service_server::ControlPlaneServiceServer,
    event_service_server::EventServiceServer, node_service_server::NodeServiceServer,
    router_cluster_service_server::RouterClusterServiceServer,
    web_cluster_service_server::WebClusterServiceServer,
};
use tonic::service::Routes;

use crate::core::Core;
use crate::error::{Error, Result};

pub use control_plane::ControlPlaneApi;
pub use event::EventApi;
pub use node::NodeApi;
pub use router::RouterClusterApi;
pub use web::WebClusterApi;

/// Every master service, ready to serve.
pub fn routes(core: Arc<Core>) -> Routes {
    Routes::new(WebClusterServiceServer::new(WebClusterApi(core.clone())))
        .add_service(RouterClusterServiceServer::new(RouterClusterApi(
            core.clone(),
        )))
        .add_service(NodeServiceServer::new(NodeApi(core.clone())))
        .add_service(EventServiceServer::new(EventApi(core.clone())))
        .add_service(ControlPlaneServiceServer::new(ControlPlaneApi(
            core.clone(),
        )))
        .add_service(NodeControllerServiceServer::new(crate::gateway::Gateway(
            core.clone(),
        )))
        .add_service(NativeProcessServiceServer::new(crate::gateway::Gateway(
            core,
        )))
}

/// An optional enum filter: 0 is "any", unknown values are INVALID_ARGUMENT naming `field`.
fn filter<E: TryFrom<i32>>(field: &str, value: i32) -> Result<Option<E>> {
    if value == 0 {
        return Ok(None);
    }
    E::try_from(value)
        .map(Some)
        .map_err(|_| Error::invalid(field, format!("unknown value {value}")))
}

/// Oids, or sorted names with `return_names`.
fn items<T>(
    objects: Vec<T>,
    return_names: bool,
    oid: impl Fn(&T) -> &str,
    name: impl Fn(&T) -> &str,
) -> Vec<String> {
    if return_names {
        let mut names: Vec<String> = objects.iter().map(|o| name(o).to_owned()).collect();
        names.sort();
        names
    } else {
        objects.iter().map(|o| oid(o).to_owned()).collect()
    }
}
