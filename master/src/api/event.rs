//! `switchyard.master.v1.EventService`.

use std::sync::Arc;

use switchyard::pb::master::v1::event_service_server::EventService;
use switchyard::pb::master::v1::{
    StreamClusterStatsRequest, StreamClusterStatsResponse, WatchRequest, WatchResponse,
};
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status};

use crate::core::Core;

/// The event stream.
#[derive(Debug)]
pub struct EventApi(pub Arc<Core>);

#[tonic::async_trait]
impl EventService for EventApi {
    async fn watch(
        &self,
        req: Request<WatchRequest>,
    ) -> Result<Response<BoxStream<WatchResponse>>, Status> {
        let stream = self
            .0
            .events
            .watch(req.into_inner(), self.0.shutdown.clone())?;
        Ok(Response::new(stream))
    }

    async fn stream_cluster_stats(
        &self,
        req: Request<StreamClusterStatsRequest>,
    ) -> Result<Response<BoxStream<StreamClusterStatsResponse>>, Status> {
        let r = req.get_ref();
        Ok(Response::new(
            self.0
                .stream_cluster_stats(&r.cluster_oid, r.interval)
                .await?,
        ))
    }
}
