//! The gRPC server both the master and the agent run: mTLS (or explicit plaintext), the role
//! layer, server reflection v1 and v1alpha, `grpc.health.v1`, TCP_NODELAY, graceful shutdown.
//!
//! The caller binds the listener and owns the shutdown token (tests bind `127.0.0.1:0`).

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Server, ServerTlsConfig};
use tonic_health::ServingStatus;

use crate::auth::{AuthLayer, Policy};

/// How a server protects its port.
#[derive(Debug, Clone)]
pub enum Security {
    /// Mutual TLS: a certificate of the cluster CA is required to connect.
    Mtls(ServerTlsConfig),
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

    let mut builder = Server::builder();
    let layer = match security {
        Security::Mtls(tls) => {
            builder = builder.tls_config(tls)?;
            AuthLayer::new(policy)
        }
        Security::Insecure => {
            tracing::warn!(
                "serving PLAINTEXT gRPC without authentication (--insecure): every caller is an admin"
            );
            AuthLayer::insecure(policy)
        }
    };
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let names = services.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    builder
        .layer(crate::metrics::RpcMetricsLayer(rpc))
        .layer(layer)
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming, async move {
            shutdown.cancelled().await;
            for name in names {
                health
                    .set_service_status(name, ServingStatus::NotServing)
                    .await;
            }
        })
        .await?;
    Ok(())
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
