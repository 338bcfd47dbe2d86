//! `switchyard.master.v1.RouterClusterService`.

use std::sync::Arc;

use switchyard::auth::caller;
use switchyard::pb::master::v1::router_cluster_service_server::RouterClusterService;
use switchyard::pb::master::v1::*;
use tonic::{Request, Response, Status};

use super::{filter, items};
use crate::core::Core;

/// Router clusters.
#[derive(Debug)]
pub struct RouterClusterApi(pub Arc<Core>);

type R<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl RouterClusterService for RouterClusterApi {
    async fn create_router_cluster(
        &self,
        req: Request<CreateRouterClusterRequest>,
    ) -> R<CreateRouterClusterResponse> {
        let c = self
            .0
            .create_routercluster(req.get_ref().routercluster.clone(), caller(&req))
            .await?;
        Ok(Response::new(CreateRouterClusterResponse {
            routercluster: Some(c),
        }))
    }

    async fn delete_router_cluster(
        &self,
        req: Request<DeleteRouterClusterRequest>,
    ) -> R<DeleteRouterClusterResponse> {
        let c = self
            .0
            .delete_routercluster(&req.get_ref().routercluster_oid, caller(&req))
            .await?;
        Ok(Response::new(DeleteRouterClusterResponse {
            routercluster: Some(c),
        }))
    }

    async fn get_router_cluster(
        &self,
        req: Request<GetRouterClusterRequest>,
    ) -> R<GetRouterClusterResponse> {
        let c = self
            .0
            .get_routercluster(&req.get_ref().routercluster_oid)
            .await?;
        Ok(Response::new(GetRouterClusterResponse {
            routercluster: Some(c),
        }))
    }

    async fn get_router_cluster_by_name(
        &self,
        req: Request<GetRouterClusterByNameRequest>,
    ) -> R<GetRouterClusterByNameResponse> {
        let c = self
            .0
            .get_routercluster_by_name(&req.get_ref().routercluster_name)
            .await?;
        Ok(Response::new(GetRouterClusterByNameResponse {
            routercluster: Some(c),
        }))
    }

    async fn list_router_clusters(
        &self,
        req: Request<ListRouterClustersRequest>,
    ) -> R<ListRouterClustersResponse> {
        let all = self.0.list_routerclusters().await?;
        let items = items(all, req.get_ref().return_names, |c| &c.oid, |c| &c.name);
        Ok(Response::new(ListRouterClustersResponse { items }))
    }

    async fn start_router_cluster(
        &self,
        req: Request<StartRouterClusterRequest>,
    ) -> R<StartRouterClusterResponse> {
        let change = self
            .0
            .change_routercluster(&req.get_ref().routercluster_oid, true, caller(&req))
            .await?;
        Ok(Response::new(StartRouterClusterResponse {
            change: Some(change),
        }))
    }

    async fn stop_router_cluster(
        &self,
        req: Request<StopRouterClusterRequest>,
    ) -> R<StopRouterClusterResponse> {
        let change = self
            .0
            .change_routercluster(&req.get_ref().routercluster_oid, false, caller(&req))
            .await?;
        Ok(Response::new(StopRouterClusterResponse {
            change: Some(change),
        }))
    }

    async fn restart_router_cluster(
        &self,
        req: Request<RestartRouterClusterRequest>,
    ) -> R<RestartRouterClusterResponse> {
        let c = self
            .0
            .restart_routercluster(&req.get_ref().routercluster_oid, caller(&req))
            .await?;
        Ok(Response::new(RestartRouterClusterResponse {
            routercluster: Some(c),
        }))
    }

    async fn add_router_cluster_node(
        &self,
        req: Request<AddRouterClusterNodeRequest>,
    ) -> R<AddRouterClusterNodeResponse> {
        let r = req.get_ref();
        let node = self
            .0
            .add_routercluster_node(&r.routercluster_oid, &r.node_oid, r.config, caller(&req))
            .await?;
        Ok(Response::new(AddRouterClusterNodeResponse {
            node: Some(node),
        }))
    }

    async fn remove_router_cluster_node(
        &self,
        req: Request<RemoveRouterClusterNodeRequest>,
    ) -> R<RemoveRouterClusterNodeResponse> {
        let r = req.get_ref();
        let node = self
            .0
            .remove_routercluster_node(&r.routercluster_oid, &r.node_oid, caller(&req))
            .await?;
        Ok(Response::new(RemoveRouterClusterNodeResponse {
            node: Some(node),
        }))
    }

    async fn get_router_cluster_node(
        &self,
        req: Request<GetRouterClusterNodeRequest>,
    ) -> R<GetRouterClusterNodeResponse> {
        let r = req.get_ref();
        let node = self
            .0
            .get_routercluster_node(&r.routercluster_oid, &r.node_oid)
            .await?;
        Ok(Response::new(GetRouterClusterNodeResponse {
            node: Some(node),
        }))
    }

    async fn list_router_cluster_nodes(
        &self,
        req: Request<ListRouterClusterNodesRequest>,
    ) -> R<ListRouterClusterNodesResponse> {
        let r = req.get_ref();
        let status = filter::<NodeStatus>("filter_by_status", r.filter_by_status)?;
        let nodes = self
            .0
            .list_routercluster_nodes(&r.routercluster_oid, status)
            .await?;
        let items = items(nodes, r.return_names, |m| &m.node_oid, |m| &m.node_authid);
        Ok(Response::new(ListRouterClusterNodesResponse { items }))
    }

    async fn add_router_cluster_worker_group(
        &self,
        req: Request<AddRouterClusterWorkerGroupRequest>,
    ) -> R<AddRouterClusterWorkerGroupResponse> {
        let r = req.get_ref();
        let g = self
            .0
            .add_workergroup(&r.routercluster_oid, r.workergroup.clone(), caller(&req))
            .await?;
        Ok(Response::new(AddRouterClusterWorkerGroupResponse {
            workergroup: Some(g),
        }))
    }

    async fn remove_router_cluster_worker_group(
        &self,
        req: Request<RemoveRouterClusterWorkerGroupRequest>,
    ) -> R<RemoveRouterClusterWorkerGroupResponse> {
        let r = req.get_ref();
        let g = self
            .0
            .remove_workergroup(&r.routercluster_oid, &r.workergroup_oid, caller(&req))
            .await?;
        Ok(Response::new(RemoveRouterClusterWorkerGroupResponse {
            workergroup: Some(g),
        }))
    }

    async fn get_router_cluster_worker_group(
        &self,
        req: Request<GetRouterClusterWorkerGroupRequest>,
    ) -> R<GetRouterClusterWorkerGroupResponse> {
        let r = req.get_ref();
        let g = self
            .0
            .get_workergroup(&r.routercluster_oid, &r.workergroup_oid)
            .await?;
        Ok(Response::new(GetRouterClusterWorkerGroupResponse {
            workergroup: Some(g),
        }))
    }

    async fn get_router_cluster_worker_group_by_name(
        &self,
        req: Request<GetRouterClusterWorkerGroupByNameRequest>,
    ) -> R<GetRouterClusterWorkerGroupByNameResponse> {
        let r = req.get_ref();
        let g = self
            .0
            .get_workergroup_by_name(&r.routercluster_name, &r.workergroup_name)
            .await?;
        Ok(Response::new(GetRouterClusterWorkerGroupByNameResponse {
            workergroup: Some(g),
        }))
    }

    async fn list_router_cluster_worker_groups(
        &self,
        req: Request<ListRouterClusterWorkerGroupsRequest>,
    ) -> R<ListRouterClusterWorkerGroupsResponse> {
        let r = req.get_ref();
        let status = filter::<ClusterStatus>("filter_by_status", r.filter_by_status)?;
        let groups = self
            .0
            .list_workergroups(&r.routercluster_oid, status)
            .await?;
        let items = items(groups, r.return_names, |g| &g.oid, |g| &g.name);
        Ok(Response::new(ListRouterClusterWorkerGroupsResponse {
            items,
        }))
    }

    async fn stat_router_cluster(
        &self,
        req: Request<StatRouterClusterRequest>,
    ) -> R<StatRouterClusterResponse> {
        Ok(Response::new(
            self.0
                .stat_routercluster(&req.get_ref().routercluster_oid)
                .await?,
        ))
    }

    async fn stat_router_cluster_worker_group(
        &self,
        req: Request<StatRouterClusterWorkerGroupRequest>,
    ) -> R<StatRouterClusterWorkerGroupResponse> {
        let r = req.get_ref();
        let stat = self
            .0
            .stat_workergroup(&r.routercluster_oid, &r.workergroup_oid)
            .await?;
        Ok(Response::new(StatRouterClusterWorkerGroupResponse {
            stat: Some(stat),
        }))
    }
}
