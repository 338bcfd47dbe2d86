//! `reverseproxy` (HTTP, with X-Forwarded-For/-Proto/-Port/-Host; an unreachable backend is a
//! 502 at once, a slow one a 504 after the client timeout) and `websocket_reverseproxy` (the
//! upgrade is forwarded to the backend, then bytes are piped both ways).

use std::net::SocketAddr;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use switchyard::pb::agent::v1::{ReverseProxyService, WebSocketBackend};

use super::{Body, Shared, text};

/// The pooled HTTP client of a listener.
pub type Client = hyper_util::client::legacy::Client<HttpConnector, Incoming>;

/// A client with a short connect timeout.
pub fn client() -> Client {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(Duration::from_secs(5)));
    connector.set_nodelay(true);
    hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build(connector)
}

const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in listed {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(*name);
    }
}

fn target_path(base: &str, rest: &str, query: Option<&str>) -> String {
    // The mount point itself maps to the backend path as given ("/ws" stays "/ws"); anything
    // below it is appended.
    let mut p = if rest.is_empty() {
        base.to_owned()
    } else {
        format!("{}{rest}", base.trim_end_matches('/'))
    };
    if !p.starts_with('/') {
        p.insert(0, '/');
    }
    if let Some(q) = query {
        p.push('?');
        p.push_str(q);
    }
    p
}

fn forwarded(
    shared: &Shared,
    headers: &mut HeaderMap,
    peer: SocketAddr,
    proto: Option<&str>,
    port: Option<u32>,
) {
    let ip = peer.ip().to_string();
    let xff = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(prev) => format!("{prev}, {ip}"),
        None => ip,
    };
    let proto = proto.map_or(
        if shared.https { "https" } else { "http" }.to_owned(),
        str::to_owned,
    );
    let port = port.unwrap_or(u32::from(shared.port)).to_string();
    for (name, value) in [
        ("x-forwarded-for", xff),
        ("x-forwarded-proto", proto),
        ("x-forwarded-port", port),
    ] {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(name, v);
        }
    }
    if let Some(host) = headers.get(header::HOST).cloned() {
        headers.insert("x-forwarded-host", host);
    }
}

/// Forwards an HTTP request to `backend`.
pub async fn http(
    shared: &Shared,
    backend: &ReverseProxyService,
    rest: &str,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Response<Body> {
    let (mut parts, body) = req.into_parts();
    let path = target_path(
        if backend.path.is_empty() {
            "/"
        } else {
            &backend.path
        },
        rest,
        parts.uri.query(),
    );
    let uri = match format!("http://{}:{}{}", backend.host, backend.port, path).parse::<http::Uri>()
    {
        Ok(u) => u,
        Err(e) => return text(StatusCode::BAD_GATEWAY, format!("bad backend URI: {e}\n")),
    };
    strip_hop_by_hop(&mut parts.headers);
    forwarded(
        shared,
        &mut parts.headers,
        peer,
        backend.forwarded_proto.as_deref(),
        backend.forwarded_port,
    );
    parts.uri = uri;
    parts.version = http::Version::HTTP_11;
    let timeout = Duration::from_secs(u64::from(
        shared.transport.http_client_timeout.unwrap_or(60).max(1),
    ));
    match tokio::time::timeout(
        timeout,
        shared.client.request(Request::from_parts(parts, body)),
    )
    .await
    {
        Ok(Ok(resp)) => {
            let (mut parts, body) = resp.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            Response::from_parts(
                parts,
                body.map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)
                    .boxed_unsync(),
            )
        }
        Ok(Err(e)) => {
            tracing::warn!(backend = %format!("{}:{}", backend.host, backend.port), error = %e, "backend unreachable");
            text(
                StatusCode::BAD_GATEWAY,
                format!("backend unreachable: {e}\n"),
            )
        }
        Err(_) => text(StatusCode::GATEWAY_TIMEOUT, "backend timed out\n"),
    }
}

fn is_upgrade(headers: &HeaderMap) -> bool {
    headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// Forwards a WebSocket upgrade to `backend` and pipes the upgraded connections.
pub async fn websocket(
    shared: &Shared,
    backend: &WebSocketBackend,
    rest: &str,
    mut req: Request<Incoming>,
) -> Response<Body> {
    if !is_upgrade(req.headers()) {
        return text(
            StatusCode::UPGRADE_REQUIRED,
            "this path accepts WebSocket connections only\n",
        );
    }
    let addr = format!("{}:{}", backend.host, backend.port);
    let stream = match tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::TcpStream::connect(&addr),
    )
    .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            return text(
                StatusCode::BAD_GATEWAY,
                format!("backend {addr} unreachable: {e}\n"),
            );
        }
        Err(_) => {
            return text(
                StatusCode::GATEWAY_TIMEOUT,
                format!("backend {addr} timed out\n"),
            );
        }
    };
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) = match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
    {
        Ok(pair) => pair,
        Err(e) => return text(StatusCode::BAD_GATEWAY, format!("backend {addr}: {e}\n")),
    };
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    let path = target_path(
        if backend.path.is_empty() {
            "/"
        } else {
            &backend.path
        },
        rest,
        req.uri().query(),
    );
    let mut upstream = Request::builder().method(http::Method::GET).uri(path);
    for (name, value) in req.headers() {
        if name != header::HOST {
            upstream = upstream.header(name, value);
        }
    }
    let upstream = match upstream
        .header(header::HOST, &addr)
        .body(http_body_util::Empty::<bytes::Bytes>::new())
    {
        Ok(r) => r,
        Err(e) => return text(StatusCode::BAD_GATEWAY, format!("{e}\n")),
    };
    let _ = shared;
    let mut backend_response = match sender.send_request(upstream).await {
        Ok(r) => r,
        Err(e) => return text(StatusCode::BAD_GATEWAY, format!("backend {addr}: {e}\n")),
    };
    if backend_response.status() != StatusCode::SWITCHING_PROTOCOLS {
        let (parts, body) = backend_response.into_parts();
        return Response::from_parts(
            parts,
            body.map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)
                .boxed_unsync(),
        );
    }
    let client_upgrade = hyper::upgrade::on(&mut req);
    let backend_upgrade = hyper::upgrade::on(&mut backend_response);
    tokio::spawn(async move {
        match (client_upgrade.await, backend_upgrade.await) {
            (Ok(client), Ok(backend)) => {
                let _ = tokio::io::copy_bidirectional(
                    &mut TokioIo::new(client),
                    &mut TokioIo::new(backend),
                )
                .await;
            }
            (c, b) => tracing::debug!(
                client = c.is_ok(),
                backend = b.is_ok(),
                "websocket upgrade failed"
            ),
        }
    });
    let mut response = Response::new(super::full(bytes::Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    *response.headers_mut() = backend_response.headers().clone();
    response
}

#[cfg(test)]
mod tests {
    use super::target_path;

    #[test]
    fn the_mount_point_maps_to_the_backend_path_as_given() {
        assert_eq!(target_path("/ws", "", None), "/ws");
        assert_eq!(target_path("/ws", "/", None), "/ws/");
        assert_eq!(target_path("/", "", None), "/");
        assert_eq!(target_path("", "", Some("a=1")), "/?a=1");
        assert_eq!(target_path("/api/", "/v1/x", None), "/api/v1/x");
        assert_eq!(target_path("/", "/x", Some("q")), "/x?q");
    }
}
