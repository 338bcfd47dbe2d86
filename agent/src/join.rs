//! Joining the cluster with a join token (docs/security.md, "Joining a node"): on a node with
//! no certificate, the agent makes its key, connects to the master trusting it only by the CA
//! pin (a server whose chain lacks the pinned CA fails the handshake, before anything is sent),
//! sends a CSR with the token to `NodeService/JoinNode`, and writes what it gets back: its key
//! (0600), its certificate and the CA bundle. Nothing is written when the join fails.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use switchyard::pb::master::v1::JoinNodeRequest;
use switchyard::pb::master::v1::node_service_client::NodeServiceClient;
use switchyard::pki::Identity;
use switchyard::tls::PinVerifier;
use tonic::transport::Endpoint;

/// Why a join failed.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// The master is not the pinned CA's, or refused the join: retrying will not help.
    #[error("{0}")]
    Refused(String),
    /// The master could not be reached, or the files not written.
    #[error("{0}")]
    Failed(String),
}

/// What to join with.
#[derive(Debug, Clone)]
pub struct JoinRequest<'a> {
    /// The master's `host:port`.
    pub master: &'a str,
    /// The node's authid.
    pub authid: &'a str,
    /// The join token.
    pub token: &'a str,
    /// `--ca-pin`: `sha256:<hex>`.
    pub ca_pin: &'a str,
    /// Extra DNS/IP names for the certificate.
    pub sans: Vec<String>,
    /// Where the files go.
    pub pki_dir: &'a Path,
}

/// Joins; returns the node's new identity, written to `pki_dir`.
pub async fn join(request: &JoinRequest<'_>) -> Result<Identity, JoinError> {
    let pin = switchyard::issuer::parse_pin(request.ca_pin).map_err(JoinError::Refused)?;
    let (key, csr_pem) = switchyard::issuer::node_csr(request.authid, &request.sans)
        .map_err(|e| JoinError::Failed(e.to_string()))?;
    let verifier = PinVerifier::new(pin);
    let channel = pinned_channel(request.master, &verifier)
        .await
        .map_err(|e| match verifier.mismatch() {
            Some(presented) => JoinError::Refused(format!(
                "the master at {} is not the pinned CA's: it presented CA {}, --ca-pin is {}; nothing was sent",
                request.master,
                if presented.is_empty() { "(none)".to_owned() } else { presented.join(", ") },
                request.ca_pin
            )),
            None => JoinError::Failed(format!("cannot reach the master at {}: {e}", request.master)),
        })?;
    let joined = NodeServiceClient::new(channel)
        .join_node(JoinNodeRequest {
            token: request.token.trim().to_owned(),
            authid: request.authid.to_owned(),
            csr_pem,
        })
        .await
        .map_err(|s| {
            let message = format!("join refused: {}", crate::heartbeat::describe(&s));
            match s.code() {
                tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => {
                    JoinError::Failed(message)
                }
                _ => JoinError::Refused(message),
            }
        })?
        .into_inner();
    let pinned_ca = switchyard::issuer::pem_certificates(&joined.ca_pem)
        .iter()
        .any(|der| switchyard::issuer::spki_digest(der) == Some(pin));
    if !pinned_ca {
        return Err(JoinError::Refused(
            "the master's CA bundle lacks the pinned CA".into(),
        ));
    }
    let identity = Identity::from_pem(joined.ca_pem, joined.certificate_pem, key);
    crate::certs::check_identity(&identity, request.authid).map_err(JoinError::Refused)?;
    crate::certs::write_identity(request.pki_dir, request.authid, &identity).map_err(|e| {
        JoinError::Failed(format!("cannot write {}: {e}", request.pki_dir.display()))
    })?;
    tracing::info!(node = %request.authid, oid = %joined.node_oid, pki_dir = %request.pki_dir.display(), "joined the cluster");
    Ok(identity)
}

/// A channel to `master` over TLS verified by `verifier` (no client certificate).
async fn pinned_channel(
    master: &str,
    verifier: &Arc<PinVerifier>,
) -> Result<tonic::transport::Channel, String> {
    let config = verifier.client_config().map_err(|e| e.to_string())?;
    let host = master
        .rsplit_once(':')
        .map_or(master, |(h, _)| h)
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let server_name = rustls::pki_types::ServerName::try_from(host)
        .map_err(|e| format!("bad master address {master}: {e}"))?;
    let addr = master.to_owned();
    let connector = tower::service_fn(move |_: http::Uri| {
        let (config, server_name, addr) = (config.clone(), server_name.clone(), addr.clone());
        async move {
            let tcp = tokio::net::TcpStream::connect(&addr).await?;
            tcp.set_nodelay(true)?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(server_name, tcp)
                .await?;
            Ok::<_, std::io::Error>(TokioIo::new(tls))
        }
    });
    let endpoint = Endpoint::from_shared(format!("http://{master}"))
        .map_err(|e| format!("bad master address {master}: {e}"))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(15));
    endpoint
        .connect_with_connector(connector)
        .await
        .map_err(|e| {
            let mut msg = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                msg.push_str(&format!(": {s}"));
                source = s.source();
            }
            msg
        })
}
