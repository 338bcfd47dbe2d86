//! `switchyard.master.v1.WebClusterService`.

use std::sync::Arc;

use switchyard::auth::caller;
use switchyard::pb::master::v1::web_cluster_service_server::WebClusterService;
use switchyard::pb::master::v1::*;
use tonic::{Request, Response, Status};

use super::{filter, items};
use crate::core::Core;

/// Web clusters.
#[derive(Debug)]
pub struct WebClusterApi(pub Arc<Core>);

type R<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl WebClusterService for WebClusterApi {
    async fn create_web_cluster(
        &self,
        req: Request<CreateWebClusterRequest>,
    ) -> R<CreateWebClusterResponse> {
        let c = self
            .0
            .create_webcluster(req.get_ref().webcluster.clone(), caller(&req))
            .await?;
        Ok(Response::new(CreateWebClusterResponse {
            webcluster: Some(c),
        }))
    }

    async fn delete_web_cluster(
        &self,
        req: Request<DeleteWebClusterRequest>,
    ) -> R<DeleteWebClusterResponse> {
        let c = self
            .0
            .delete_webcluster(&req.get_ref().webcluster_oid, caller(&req))
            .await?;
        Ok(Response::new(DeleteWebClusterResponse {
            webcluster: Some(c),
        }))
    }

    async fn get_web_cluster(
        &self,
        req: Request<GetWebClusterRequest>,
    ) -> R<GetWebClusterResponse> {
        let c = self.0.get_webcluster(&req.get_ref().webcluster_oid).await?;
        Ok(Response::new(GetWebClusterResponse {
            webcluster: Some(c),
        }))
    }

    async fn get_web_cluster_by_name(
        &self,
        req: Request<GetWebClusterByNameRequest>,
    ) -> R<GetWebClusterByNameResponse> {
        let c = self
            .0
            .get_webcluster_by_name(&req.get_ref().webcluster_name)
            .await?;
        Ok(Response::new(GetWebClusterByNameResponse {
            webcluster: Some(c),
        }))
    }

    async fn list_web_clusters(
        &self,
        req: Request<ListWebClustersRequest>,
    ) -> R<ListWebClustersResponse> {
        let all = self.0.list_webclusters().await?;
        let items = items(all, req.get_ref().return_names, |c| &c.oid, |c| &c.name);
        Ok(Response::new(ListWebClustersResponse { items }))
    }

    async fn start_web_cluster(
        &self,
        req: Request<StartWebClusterRequest>,
    ) -> R<StartWebClusterResponse> {
        let change = self
            .0
            .change_webcluster(&req.get_ref().webcluster_oid, true, caller(&req))
            .await?;
        Ok(Response::new(StartWebClusterResponse {
            change: Some(change),
        }))
    }

    async fn stop_web_cluster(
        &self,
        req: Request<StopWebClusterRequest>,
    ) -> R<StopWebClusterResponse> {
        let change = self
            .0
            .change_webcluster(&req.get_ref().webcluster_oid, false, caller(&req))
            .await?;
        Ok(Response::new(StopWebClusterResponse {
            change: Some(change),
        }))
    }

    async fn restart_web_cluster(
        &self,
        req: Request<RestartWebClusterRequest>,
    ) -> R<RestartWebClusterResponse> {
        let r = req.get_ref();
        let c = self
            .0
            .restart_webcluster(&r.webcluster_oid, r.max_parallel, caller(&req))
            .await?;
        Ok(Response::new(RestartWebClusterResponse {
            webcluster: Some(c),
        }))
    }

    async fn add_web_cluster_node(
        &self,
        req: Request<AddWebClusterNodeRequest>,
    ) -> R<AddWebClusterNodeResponse> {
        let r = req.get_ref();
        let node = self
            .0
            .add_webcluster_node(&r.webcluster_oid, &r.node_oid, r.config, caller(&req))
            .await?;
        Ok(Response::new(AddWebClusterNodeResponse {
            node: Some(node),
        }))
    }

    async fn remove_web_cluster_node(
        &self,
        req: Request<RemoveWebClusterNodeRequest>,
    ) -> R<RemoveWebClusterNodeResponse> {
        let r = req.get_ref();
        let node = self
            .0
            .remove_webcluster_node(&r.webcluster_oid, &r.node_oid, caller(&req))
            .await?;
        Ok(Response::new(RemoveWebClusterNodeResponse {
            node: Some(node),
        }))
    }

    async fn get_web_cluster_node(
        &self,
        req: Request<GetWebClusterNodeRequest>,
    ) -> R<GetWebClusterNodeResponse> {
        let r = req.get_ref();
        let node = self
            .0
            .get_webcluster_node(&r.webcluster_oid, &r.node_oid)
            .await?;
        Ok(Response::new(GetWebClusterNodeResponse {
            node: Some(node),
        }))
    }

    async fn list_web_cluster_nodes(
        &self,
        req: Request<ListWebClusterNodesRequest>,
    ) -> R<ListWebClusterNodesResponse> {
        let r = req.get_ref();
        let status = filter::<NodeStatus>("filter_by_status", r.filter_by_status)?;
        let nodes = self
            .0
            .list_webcluster_nodes(&r.webcluster_oid, status)
            .await?;
        let items = items(nodes, r.return_names, |m| &m.node_oid, |m| &m.node_authid);
        Ok(Response::new(ListWebClusterNodesResponse { items }))
    }

    async fn add_web_cluster_service(
        &self,
        req: Request<AddWebClusterServiceRequest>,
    ) -> R<AddWebClusterServiceResponse> {
        let r = req.get_ref();
        let s = self
            .0
            .add_webcluster_service(&r.webcluster_oid, r.webservice.clone(), caller(&req))
            .await?;
        Ok(Response::new(AddWebClusterServiceResponse {
            webservice: Some(s),
        }))
    }

    async fn remove_web_cluster_service(
        &self,
        req: Request<RemoveWebClusterServiceRequest>,
    ) -> R<RemoveWebClusterServiceResponse> {
        let r = req.get_ref();
        let s = self
            .0
            .remove_webcluster_service(&r.webcluster_oid, &r.webservice_oid, caller(&req))
            .await?;
        Ok(Response::new(RemoveWebClusterServiceResponse {
            webservice: Some(s),
        }))
    }

    async fn get_web_cluster_service(
        &self,
        req: Request<GetWebClusterServiceRequest>,
    ) -> R<GetWebClusterServiceResponse> {
        let r = req.get_ref();
        let s = self
            .0
            .get_webcluster_service(&r.webcluster_oid, &r.webservice_oid)
            .await?;
        Ok(Response::new(GetWebClusterServiceResponse {
            webservice: Some(s),
        }))
    }

    async fn get_web_cluster_service_by_path(
        &self,
        req: Request<GetWebClusterServiceByPathRequest>,
    ) -> R<GetWebClusterServiceByPathResponse> {
        let r = req.get_ref();
        let s = self
            .0
            .get_webcluster_service_by_path(&r.webcluster_oid, &r.path)
            .await?;
        Ok(Response::new(GetWebClusterServiceByPathResponse {
            webservice: Some(s),
        }))
    }

    async fn list_web_cluster_services(
        &self,
        req: Request<ListWebClusterServicesRequest>,
    ) -> R<ListWebClusterServicesResponse> {
        let r = req.get_ref();
        let services = self
            .0
            .list_webcluster_services(&r.webcluster_oid, &r.prefix)
            .await?
            .into_iter()
            .map(|s| (s.path, s.oid))
            .collect();
        Ok(Response::new(ListWebClusterServicesResponse { services }))
    }

    async fn list_web_cluster_workers(
        &self,
        req: Request<ListWebClusterWorkersRequest>,
    ) -> R<ListWebClusterWorkersResponse> {
        let r = req.get_ref();
        let workers = self
            .0
            .list_webcluster_workers(&r.webcluster_oid, r.filter_online)
            .await?;
        Ok(Response::new(ListWebClusterWorkersResponse { workers }))
    }

    async fn stat_web_cluster(
        &self,
        req: Request<StatWebClusterRequest>,
    ) -> R<StatWebClusterResponse> {
        Ok(Response::new(
            self.0
                .stat_webcluster(&req.get_ref().webcluster_oid)
                .await?,
        ))
    }
}
