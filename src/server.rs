//! The gRPC server both the master and the agent run: mTLS (or explicit plaintext), the role
//! layer, server reflection v1 and v1alpha, `grpc.health.v1`, TCP_NODELAY, graceful shutdown.
//!
//! The caller binds the listener and owns the shutdown token (tests bind `127.0.0.1:0`). TLS
//! handshakes run here on rustls ([`crate::tls`]), each in its own task with a deadline, so a
//! slow or silent client holds up nobody; tonic sees finished TLS streams.

use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;

use crate::auth::{AuthLayer, Policy};
use crate::tls::ServerTls;

/// How long a client has to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How a server protects its port.
#[derive(Debug, Clone)]
pub enum Security {
    /// Mutual TLS: a certificate of the cluster CA is required (the master admits connections
    /// without one to `NodeService/JoinNode` only).
    Mtls(ServerTls),
    /// Plaintext, every caller an admin. Only through `--insecure`; logs a warning.
    Insecure,
}

/// Errors of [`serve`].
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The transport failed (TLS configuration, accept loop).
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The reflection service could not be built from the descriptor sets.
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}

/// Serves `routes` (the server's own gRPC services, named in `services`) plus reflection and
/// health on `listener` until `shutdown` is cancelled, then drains in-flight calls.
pub async fn serve(
    listener: TcpListener,
    security: Security,
    policy: Policy,
    routes: Routes,
    services: &[&str],
    rpc: std::sync::Arc<crate::metrics::RpcMetrics>,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    let (health, health_service) = tonic_health::server::health_reporter();
    for name in services {
        health
            .set_service_status(*name, ServingStatus::Serving)
            .await;
    }

    let reflection_v1 = reflection(services).build_v1()?;
    let reflection_v1alpha = reflection(services).build_v1alpha()?;

    let routes = routes
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);

    let names = services.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    let drained = async move {
        shutdown.cancelled().await;
        for name in names {
            health
                .set_service_status(name, ServingStatus::NotServing)
                .await;
        }
    };
    let builder = Server::builder().layer(crate::metrics::RpcMetricsLayer(rpc));
    match security {
        Security::Mtls(tls) => {
            let incoming = tls_incoming(listener, tls.acceptor());
            builder
                .layer(AuthLayer::new(policy, tls.revocations().clone()))
                .add_routes(routes)
                .serve_with_incoming_shutdown(incoming, drained)
                .await?;
        }
        Security::Insecure => {
            tracing::warn!(
                "serving PLAINTEXT gRPC without authentication (--insecure): every caller is an admin"
            );
            let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
            builder
                .layer(AuthLayer::insecure(policy))
                .add_routes(routes)
                .serve_with_incoming_shutdown(incoming, drained)
                .await?;
        }
    }
    Ok(())
}

/// TLS connections of `listener`, handshakes in their own tasks. Accepting stops (and the port
/// closes) when the server drops the stream: at shutdown, after the health services were marked
/// not serving.
fn tls_incoming(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
) -> tokio_stream::wrappers::ReceiverStream<Result<TlsStream<TcpStream>, std::io::Error>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = tx.closed() => return,
                accepted = listener.accept() => accepted,
            };
            let (tcp, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: pause instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(tls)).await;
                    }
                    Ok(Err(error)) => tracing::debug!(%peer, %error, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// Reflection advertising exactly the services this server serves, with their comments.
fn reflection<'b>(services: &[&str]) -> tonic_reflection::server::Builder<'b> {
    let mut builder = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET)
        // google.rpc.ErrorInfo & co., so grpcurl can decode error details.
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
        .with_service_name("grpc.health.v1.Health")
        .with_service_name("grpc.reflection.v1.ServerReflection")
        .with_service_name("grpc.reflection.v1alpha.ServerReflection");
    for name in services {
        builder = builder.with_service_name(*name);
    }
    builder
}
