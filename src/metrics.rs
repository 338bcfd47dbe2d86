//! Prometheus metrics shared by master and agent: the RPC metrics layer of every gRPC server,
//! and the `/metrics` HTTP endpoint (`--metrics-listen`), whose registry is built at each scrape
//! from the process's live state plus the long-lived counters.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Labels of an RPC count.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    /// `/package.Service/Method`.
    pub method: String,
    /// The gRPC status code name (`OK`, `NOT_FOUND`, ...).
    pub code: String,
}

/// Labels of an RPC latency.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    /// `/package.Service/Method`.
    pub method: String,
}

fn latency_histogram() -> Histogram {
    // 100 µs .. ~26 s.
    Histogram::new(exponential_buckets(0.0001, 4.0, 10))
}

/// RPC counts by method and code, and latencies by method.
///
/// Label values are bounded: a method is labelled with its path only if some service of ours
/// (or health, reflection) defines it, else [`OTHER_METHOD`], so callers cannot grow the
/// families with made-up paths. Each known method's OK counter and histogram are resolved once,
/// so a call records without allocating or hashing labels.
#[derive(Debug, Clone)]
pub struct RpcMetrics {
    requests: Family<RpcLabels, Counter>,
    latency: Family<MethodLabels, Histogram, fn() -> Histogram>,
    methods: Arc<HashMap<&'static str, OnceLock<Arc<MethodMetrics>>>>,
    other: Arc<OnceLock<Arc<MethodMetrics>>>,
}

/// The method label of calls to paths no service defines.
pub const OTHER_METHOD: &str = "other";

/// One method's handles into the families.
#[derive(Debug)]
pub struct MethodMetrics {
    method: &'static str,
    ok: Counter,
    latency: Histogram,
}

impl Default for RpcMetrics {
    fn default() -> Self {
        RpcMetrics {
            requests: Family::default(),
            latency: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            methods: Arc::new(
                known_methods()
                    .iter()
                    .map(|m| (m.as_str(), OnceLock::new()))
                    .collect(),
            ),
            other: Arc::default(),
        }
    }
}

/// `/package.Service/Method` of every RPC in the descriptor sets our servers serve.
fn known_methods() -> &'static [String] {
    static KNOWN: OnceLock<Vec<String>> = OnceLock::new();
    KNOWN.get_or_init(|| {
        let sets = [
            crate::pb::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
        ];
        let mut out = Vec::new();
        for set in sets {
            let Ok(set) = <names::FileDescriptorSet as prost::Message>::decode(set) else {
                continue;
            };
            for file in &set.file {
                for service in &file.service {
                    for method in &service.method {
                        out.push(format!(
                            "/{}.{}/{}",
                            file.package, service.name, method.name
                        ));
                    }
                }
            }
        }
        out
    })
}

/// The names-only view of `google.protobuf.FileDescriptorSet` (same field numbers): decoding
/// it skips everything else, so finding the method names does not materialise the whole
/// descriptor set with its source info (about 1 MiB of short-lived heap that stayed resident).
mod names {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct FileDescriptorSet {
        #[prost(message, repeated, tag = "1")]
        pub file: Vec<File>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct File {
        #[prost(string, tag = "2")]
        pub package: String,
        #[prost(message, repeated, tag = "6")]
        pub service: Vec<Service>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Service {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(message, repeated, tag = "2")]
        pub method: Vec<Method>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Method {
        #[prost(string, tag = "1")]
        pub name: String,
    }
}

impl RpcMetrics {
    /// Adds the RPC families to `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "switchyard_grpc_requests",
            "gRPC requests served, by method and status code",
            self.requests.clone(),
        );
        registry.register(
            "switchyard_grpc_request_duration_seconds",
            "Time to the response headers of gRPC requests (the whole call for unary RPCs)",
            self.latency.clone(),
        );
    }

    /// The handles of the method at `path` (or of [`OTHER_METHOD`]).
    pub fn method(&self, path: &str) -> Arc<MethodMetrics> {
        let (method, slot) = match self.methods.get_key_value(path) {
            Some((method, slot)) => (*method, slot),
            None => (OTHER_METHOD, &*self.other),
        };
        slot.get_or_init(|| {
            Arc::new(MethodMetrics {
                method,
                ok: self
                    .requests
                    .get_or_create(&RpcLabels {
                        method: method.to_owned(),
                        code: "OK".to_owned(),
                    })
                    .clone(),
                latency: self
                    .latency
                    .get_or_create(&MethodLabels {
                        method: method.to_owned(),
                    })
                    .clone(),
            })
        })
        .clone()
    }

    fn record(&self, method: &MethodMetrics, code: &str, seconds: f64) {
        if code == "OK" {
            method.ok.inc();
        } else {
            self.requests
                .get_or_create(&RpcLabels {
                    method: method.method.to_owned(),
                    code: code.to_owned(),
                })
                .inc();
        }
        method.latency.observe(seconds);
    }
}

/// The gRPC status code name of a numeric code.
pub fn code_name(code: i32) -> &'static str {
    match tonic::Code::from(code) {
        tonic::Code::Ok => "OK",
        tonic::Code::Cancelled => "CANCELLED",
        tonic::Code::Unknown => "UNKNOWN",
        tonic::Code::InvalidArgument => "INVALID_ARGUMENT",
        tonic::Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        tonic::Code::NotFound => "NOT_FOUND",
        tonic::Code::AlreadyExists => "ALREADY_EXISTS",
        tonic::Code::PermissionDenied => "PERMISSION_DENIED",
        tonic::Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        tonic::Code::FailedPrecondition => "FAILED_PRECONDITION",
        tonic::Code::Aborted => "ABORTED",
        tonic::Code::OutOfRange => "OUT_OF_RANGE",
        tonic::Code::Unimplemented => "UNIMPLEMENTED",
        tonic::Code::Internal => "INTERNAL",
        tonic::Code::Unavailable => "UNAVAILABLE",
        tonic::Code::DataLoss => "DATA_LOSS",
        tonic::Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// A tower layer recording [`RpcMetrics`] for every request of a gRPC server. The code is
/// the `grpc-status` of the response headers (errors are trailers-only responses), else `OK`.
#[derive(Debug, Clone)]
pub struct RpcMetricsLayer(pub Arc<RpcMetrics>);

impl<S> tower::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcMetricsService {
            inner,
            metrics: self.0.clone(),
        }
    }
}

/// See [`RpcMetricsLayer`].
#[derive(Debug, Clone)]
pub struct RpcMetricsService<S> {
    inner: S,
    metrics: Arc<RpcMetrics>,
}

impl<S, B, RB> tower::Service<http::Request<B>> for RpcMetricsService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>> + Send,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let method = self.metrics.method(req.uri().path());
        let metrics = self.metrics.clone();
        let started = Instant::now();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let result = fut.await;
            let code = match &result {
                Ok(resp) => resp
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok())
                    .map_or("OK", code_name),
                Err(_) => "INTERNAL",
            };
            metrics.record(&method, code, started.elapsed().as_secs_f64());
            result
        })
    }
}

/// Builds the registry for one scrape.
pub type Scrape = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Registry> + Send>> + Send + Sync>;

/// Serves `GET /metrics` (Prometheus text format) on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, scrape: Scrape, shutdown: CancellationToken) {
    let addr: Option<SocketAddr> = listener.local_addr().ok();
    tracing::info!(metrics_listen = ?addr, "metrics endpoint ready");
    loop {
        let (stream, _) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics accept failed");
                    continue;
                }
            },
        };
        let scrape = scrape.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let scrape = scrape.clone();
                async move {
                    if req.uri().path() != "/metrics" {
                        hyper::Response::builder()
                            .status(404)
                            .body(Full::new(Bytes::from_static(b"see /metrics\n")))
                    } else {
                        let registry = scrape().await;
                        let mut text = String::new();
                        match prometheus_client::encoding::text::encode(&mut text, &registry) {
                            Ok(()) => hyper::Response::builder()
                                .header(
                                    "content-type",
                                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                                )
                                .body(Full::new(Bytes::from(text))),
                            Err(_) => hyper::Response::builder()
                                .status(500)
                                .body(Full::new(Bytes::from_static(b"encoding failed\n"))),
                        }
                    }
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_methods_are_every_method_of_the_served_descriptor_sets() {
        // The names-only decode must agree with the full descriptor types.
        let mut full = Vec::new();
        for set in [
            crate::pb::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
        ] {
            let set = <prost_types::FileDescriptorSet as prost::Message>::decode(set).unwrap();
            for file in &set.file {
                for service in &file.service {
                    for method in &service.method {
                        full.push(format!(
                            "/{}.{}/{}",
                            file.package(),
                            service.name(),
                            method.name()
                        ));
                    }
                }
            }
        }
        assert_eq!(known_methods(), full.as_slice());
        for m in [
            "/switchyard.master.v1.WebClusterService/CreateWebCluster",
            "/switchyard.agent.v1.NativeProcessService/StreamProcessStats",
            "/grpc.health.v1.Health/Check",
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        ] {
            assert!(known_methods().iter().any(|k| k == m), "{m} missing");
        }
    }

    #[test]
    fn rpc_metrics_encode_with_method_and_code() {
        let m = RpcMetrics::default();
        let list = m.method("/switchyard.master.v1.NodeService/ListNodes");
        m.record(&list, "OK", 0.002);
        m.record(&list, "OK", 0.003);
        let get = m.method("/switchyard.master.v1.NodeService/GetNode");
        m.record(&get, "NOT_FOUND", 0.001);
        for made_up in ["/switchyard.master.v1.NodeService/Nope", "/x.Y/Z", "/"] {
            m.record(&m.method(made_up), "UNIMPLEMENTED", 0.0);
        }
        let mut r = Registry::default();
        m.register(&mut r);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &r).unwrap();
        assert!(text.contains(
            r#"switchyard_grpc_requests_total{method="/switchyard.master.v1.NodeService/GetNode",code="NOT_FOUND"} 1"#
        ), "{text}");
        assert!(text.contains(
            r#"switchyard_grpc_requests_total{method="/switchyard.master.v1.NodeService/ListNodes",code="OK"} 2"#
        ), "{text}");
        assert!(
            text.contains(
                r#"switchyard_grpc_requests_total{method="other",code="UNIMPLEMENTED"} 3"#
            ),
            "made-up paths share one label: {text}"
        );
        assert!(!text.contains("Nope"), "{text}");
        assert!(
            text.contains("switchyard_grpc_request_duration_seconds_count"),
            "{text}"
        );
    }
}

/// Labels of the certificate validity gauges.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CertificateLabels {
    /// Whose certificate: `master` or `node`.
    pub role: &'static str,
    /// `server`: the certificate the process serves (and calls) with; `ca`: its CA.
    pub kind: &'static str,
}

/// Adds `switchyard_certificate_expiry_timestamp_seconds` and
/// `switchyard_certificate_not_before_timestamp_seconds` for the certificate `certs` serves now
/// and its CA (nothing without mTLS); `role` is `master` or `node`.
pub fn register_certificate_validity(
    registry: &mut Registry,
    role: &'static str,
    certs: Option<&crate::tls::CertSwap>,
) {
    let Some(certs) = certs else { return };
    let expiry = Family::<CertificateLabels, prometheus_client::metrics::gauge::Gauge>::default();
    let not_before =
        Family::<CertificateLabels, prometheus_client::metrics::gauge::Gauge>::default();
    let (server, ca) = certs.validity();
    for (kind, validity) in [("server", server), ("ca", ca)] {
        if let Some((nb, na)) = validity {
            let labels = CertificateLabels { role, kind };
            expiry.get_or_create(&labels).set(na);
            not_before.get_or_create(&labels).set(nb);
        }
    }
    registry.register(
        "switchyard_certificate_expiry_timestamp_seconds",
        "When the certificate this process serves with (kind=server) and its CA (kind=ca) expire, Unix seconds",
        expiry,
    );
    registry.register(
        "switchyard_certificate_not_before_timestamp_seconds",
        "Start of the validity of the certificate this process serves with (kind=server) and of its CA (kind=ca), Unix seconds",
        not_before,
    );
}
