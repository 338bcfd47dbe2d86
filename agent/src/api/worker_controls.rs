//! Inside a worker: the web- or router-worker controls of `NodeControllerService`, served on the
//! worker's control socket (the agent forwards them there, `api/node_controller.rs`). Thin
//! adapters over [`WebControl`] and [`RouterControl`]: the crate error is converted once (`?`).
//! The other RPCs of the service answer UNIMPLEMENTED here (tonic's default).

use switchyard::pb::agent::v1::node_controller_service_server::NodeControllerService;
use switchyard::pb::agent::v1::{self as pb};
use tonic::{Request, Response, Status};

use crate::worker::router_control::RouterControl;
use crate::worker::web_control::WebControl;

type R<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl NodeControllerService for WebControl {
    async fn start_web_transport(
        &self,
        req: Request<pb::StartWebTransportRequest>,
    ) -> R<pb::StartWebTransportResponse> {
        let status = self.start_transport(req.into_inner().transport).await?;
        Ok(Response::new(pb::StartWebTransportResponse {
            transport: Some(status),
        }))
    }

    async fn get_web_transport(
        &self,
        _req: Request<pb::GetWebTransportRequest>,
    ) -> R<pb::GetWebTransportResponse> {
        Ok(Response::new(pb::GetWebTransportResponse {
            transport: Some(self.transport().await?),
        }))
    }

    async fn stop_web_transport(
        &self,
        _req: Request<pb::StopWebTransportRequest>,
    ) -> R<pb::StopWebTransportResponse> {
        Ok(Response::new(pb::StopWebTransportResponse {
            transport: Some(self.stop_transport().await?),
        }))
    }

    async fn start_web_service(
        &self,
        req: Request<pb::StartWebServiceRequest>,
    ) -> R<pb::StartWebServiceResponse> {
        Ok(Response::new(pb::StartWebServiceResponse {
            service: Some(self.start_service(req.into_inner().service)?),
        }))
    }

    async fn stop_web_service(
        &self,
        req: Request<pb::StopWebServiceRequest>,
    ) -> R<pb::StopWebServiceResponse> {
        Ok(Response::new(pb::StopWebServiceResponse {
            service: Some(self.stop_service(&req.get_ref().path)?),
        }))
    }

    async fn list_web_services(
        &self,
        _req: Request<pb::ListWebServicesRequest>,
    ) -> R<pb::ListWebServicesResponse> {
        Ok(Response::new(pb::ListWebServicesResponse {
            services: self.services(),
        }))
    }
}

#[tonic::async_trait]
impl NodeControllerService for RouterControl {
    async fn start_router_transport(
        &self,
        req: Request<pb::StartRouterTransportRequest>,
    ) -> R<pb::StartRouterTransportResponse> {
        Ok(Response::new(pb::StartRouterTransportResponse {
            transport: Some(self.start_transport(req.into_inner()).await?),
        }))
    }

    async fn get_router_transport(
        &self,
        _req: Request<pb::GetRouterTransportRequest>,
    ) -> R<pb::GetRouterTransportResponse> {
        Ok(Response::new(pb::GetRouterTransportResponse {
            transport: Some(self.transport()?),
        }))
    }

    async fn start_router_realm(
        &self,
        req: Request<pb::StartRouterRealmRequest>,
    ) -> R<pb::StartRouterRealmResponse> {
        Ok(Response::new(pb::StartRouterRealmResponse {
            realm: Some(self.start_realm(&req.get_ref().realm)?),
        }))
    }

    async fn stop_router_realm(
        &self,
        req: Request<pb::StopRouterRealmRequest>,
    ) -> R<pb::StopRouterRealmResponse> {
        Ok(Response::new(pb::StopRouterRealmResponse {
            realm: Some(self.stop_realm(&req.get_ref().realm)?),
        }))
    }

    async fn list_router_realms(
        &self,
        _req: Request<pb::ListRouterRealmsRequest>,
    ) -> R<pb::ListRouterRealmsResponse> {
        Ok(Response::new(pb::ListRouterRealmsResponse {
            realms: self.realms(),
        }))
    }

    async fn start_router_link(
        &self,
        req: Request<pb::StartRouterLinkRequest>,
    ) -> R<pb::StartRouterLinkResponse> {
        Ok(Response::new(pb::StartRouterLinkResponse {
            link: Some(self.start_link(req.into_inner().link)?),
        }))
    }

    async fn stop_router_link(
        &self,
        req: Request<pb::StopRouterLinkRequest>,
    ) -> R<pb::StopRouterLinkResponse> {
        Ok(Response::new(pb::StopRouterLinkResponse {
            link: Some(self.stop_link(&req.get_ref().link_id)?),
        }))
    }

    async fn list_router_links(
        &self,
        _req: Request<pb::ListRouterLinksRequest>,
    ) -> R<pb::ListRouterLinksResponse> {
        Ok(Response::new(pb::ListRouterLinksResponse {
            links: self.links(),
        }))
    }
}
