//! The master's clients of agents: one lazily connected mTLS channel per node (the master's own
//! certificate), reused by every monitor; every call has a deadline.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use switchyard::pb::agent::v1::native_process_service_client::NativeProcessServiceClient;
use switchyard::pb::agent::v1::node_controller_service_client::NodeControllerServiceClient;
use switchyard::pb::master::v1::Node;
use switchyard::pki::Identity;
use tonic::transport::{Channel, Endpoint};

/// Deadline of an observing call (list, get, stats): short, so that a frozen or partitioned
/// node delays a monitor by less than the heartbeat grace period.
pub const OBSERVE_TIMEOUT: Duration = Duration::from_secs(1);
/// Deadline of an acting call (start/stop a worker, which waits for the process).
pub const ACT_TIMEOUT: Duration = Duration::from_secs(5);

/// Channels to agents, by node oid.
#[derive(Debug)]
pub struct Agents {
    identity: Option<Identity>,
    channels: Mutex<HashMap<String, (String, Channel)>>,
    /// The leadership whose epoch marks the monitors' calls (unset: unmarked, unfenced).
    leadership: std::sync::OnceLock<std::sync::Arc<crate::leader::Leadership>>,
}

impl Agents {
    /// Agents called with `identity` (`None`: plaintext, for `--insecure` clusters).
    pub fn new(identity: Option<Identity>) -> Self {
        Agents {
            identity,
            channels: Mutex::default(),
            leadership: std::sync::OnceLock::new(),
        }
    }

    /// Marks the monitors' calls with `leadership`'s epoch, and refuses them once this master
    /// no longer surely leads (docs/operations.md, "Several masters").
    pub fn lead_with(&self, leadership: std::sync::Arc<crate::leader::Leadership>) {
        let _ = self.leadership.set(leadership);
    }

    /// `message` as a monitor's call: marked with the leadership epoch, or refused here when
    /// this master no longer leads.
    pub fn as_leader<T>(&self, message: T) -> Result<tonic::Request<T>, tonic::Status> {
        let mut request = tonic::Request::new(message);
        let Some(leadership) = self.leadership.get() else {
            return Ok(request);
        };
        let term = leadership.term().ok_or_else(|| {
            switchyard::error::status(
                switchyard::error::Reason::StaleLeader,
                "this master is no longer the leader",
            )
        })?;
        if term.epoch > 0 {
            request.metadata_mut().insert(
                switchyard::fencing::EPOCH_METADATA,
                tonic::metadata::MetadataValue::from(term.epoch),
            );
        }
        Ok(request)
    }

    /// A node-controller client of `node` (reconnects when its endpoint changes).
    pub fn node_controller(
        &self,
        node: &Node,
    ) -> Result<NodeControllerServiceClient<Channel>, String> {
        self.channel(node).map(NodeControllerServiceClient::new)
    }

    /// A process-control client of `node`.
    pub fn native_process(
        &self,
        node: &Node,
    ) -> Result<NativeProcessServiceClient<Channel>, String> {
        self.channel(node).map(NativeProcessServiceClient::new)
    }

    /// The channel to `node` (one per node, replaced when its endpoint changes).
    fn channel(&self, node: &Node) -> Result<Channel, String> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((endpoint, channel)) = channels.get(&node.oid)
            && *endpoint == node.endpoint
        {
            return Ok(channel.clone());
        }
        let scheme = if self.identity.is_some() {
            "https"
        } else {
            "http"
        };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{}", node.endpoint))
            .map_err(|e| format!("bad endpoint {}: {e}", node.endpoint))?
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true);
        if let Some(identity) = &self.identity {
            let host = node
                .endpoint
                .rsplit_once(':')
                .map_or(node.endpoint.as_str(), |(h, _)| h)
                .trim_start_matches('[')
                .trim_end_matches(']');
            endpoint = endpoint
                .tls_config(identity.client_tls(host))
                .map_err(|e| e.to_string())?;
        }
        let channel = endpoint.connect_lazy();
        channels.insert(node.oid.clone(), (node.endpoint.clone(), channel.clone()));
        Ok(channel)
    }
}

/// Runs an observing agent call with [`OBSERVE_TIMEOUT`].
pub async fn call<T>(
    fut: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, tonic::Status> {
    within(OBSERVE_TIMEOUT, fut).await
}

/// Runs an acting agent call with [`ACT_TIMEOUT`].
pub async fn act<T>(
    fut: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, tonic::Status> {
    within(ACT_TIMEOUT, fut).await
}

async fn within<T>(
    timeout: Duration,
    fut: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, tonic::Status> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r.map(tonic::Response::into_inner),
        Err(_) => Err(tonic::Status::deadline_exceeded("agent call timed out")),
    }
}
