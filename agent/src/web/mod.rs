//! The web worker's HTTP server (the reference's proxy worker): one HTTP/1.1 + HTTP/2 listener
//! (optionally TLS, optionally sharing its port with the node's other web workers), serving the
//! web services of [`routes`] by longest path prefix.
//!
//! - [`listener`]: the socket (SO_REUSEPORT for `tcp_shared`); [`tls`]: rustls from `tls_*`.
//! - [`static_files`]: `static`; [`proxy`]: `reverseproxy` and `websocket_reverseproxy`.
//! - [`sendfile`]: large files from the page cache to the socket on plaintext HTTP/1.x.

pub mod listener;
pub mod proxy;
pub mod routes;
pub mod sendfile;
pub mod static_files;
pub mod tls;
pub mod traffic;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, combinators::UnsyncBoxBody};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use switchyard::pb::agent::v1::{WebTransport, WebTransportStatus};
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use routes::{Handler, Routes};

/// The error of a response body.
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// Response bodies of the web worker: bytes in memory (most answers: no allocation besides the
/// bytes), or a stream (files, proxied bodies).
#[derive(Debug)]
pub enum Body {
    /// All of it, once.
    Full(Option<Bytes>),
    /// A stream of frames.
    Stream(UnsyncBoxBody<Bytes, BodyError>),
}

impl Body {
    /// A streamed body.
    pub fn stream<B>(body: B) -> Self
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BodyError>,
    {
        Body::Stream(body.map_err(Into::into).boxed_unsync())
    }
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            Body::Full(bytes) => {
                std::task::Poll::Ready(bytes.take().map(|b| Ok(hyper::body::Frame::data(b))))
            }
            Body::Stream(body) => std::pin::Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Full(bytes) => bytes.is_none(),
            Body::Stream(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match self {
            Body::Full(bytes) => {
                hyper::body::SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            Body::Stream(body) => body.size_hint(),
        }
    }
}

/// A body from bytes.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    let bytes = bytes.into();
    Body::Full((!bytes.is_empty()).then_some(bytes))
}

/// A plain-text response.
pub fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Who serves: for `nodeinfo` and logs.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The node's authid.
    pub node: String,
    /// The worker id.
    pub worker: String,
    /// When the worker started.
    pub started: Instant,
}

/// State shared by every connection of a listener.
#[derive(Debug)]
pub struct Shared {
    /// The services.
    pub routes: Arc<Routes>,
    /// The transport's configuration.
    pub transport: WebTransport,
    /// Whether the listener speaks TLS.
    pub https: bool,
    /// The bound port.
    pub port: u16,
    /// Who serves.
    pub identity: Identity,
    /// Requests served.
    pub requests: AtomicU64,
    /// What requests no service matched got.
    pub unrouted: Arc<traffic::Traffic>,
    /// Connections open now.
    pub connections: Arc<traffic::Connections>,
    /// Idle backend connections of `reverseproxy`.
    pub pool: Arc<proxy::Pool>,
}

/// A running listener.
#[derive(Debug)]
pub struct WebServer {
    /// Its shared state.
    pub shared: Arc<Shared>,
    listening: SocketAddr,
    started: SystemTime,
    stop: CancellationToken,
    drain: Drain,
    done: tokio::sync::oneshot::Receiver<()>,
}

/// A graceful stop of a listener: `start` closes the listener (after accepting what already
/// waits in its queue) and asks every connection to close after its current response;
/// `connections` tracks them, for [`WebServer::drain`] to wait for until its timeout.
#[derive(Debug, Clone, Default)]
struct Drain {
    start: CancellationToken,
    connections: tokio_util::task::TaskTracker,
}

/// How long an idle keep-alive connection of a draining listener is kept open for a request
/// already on its way (which then gets `Connection: close` with its response).
const DRAIN_IDLE_GRACE: Duration = Duration::from_millis(300);

impl WebServer {
    /// Binds and starts serving `routes` with `transport` on the listener's own thread.
    ///
    /// Each listener is one event loop on one thread (a tokio current-thread runtime), like an
    /// nginx worker or a Crossbar.io proxy worker: a web cluster scales over a node's cores with
    /// `parallel` (workers sharing the port), and a loop never hands a connection, a request or
    /// a file read to another thread, which on a loaded machine costs more than it gains.
    pub fn start(transport: WebTransport, routes: Arc<Routes>, identity: Identity) -> Result<Self> {
        let tls = tls::server_config(&transport)?;
        let listener = listener::bind(&transport)?;
        let listening = listener
            .local_addr()
            .map_err(|e| Error::CannotListen(e.to_string()))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::CannotListen(format!("cannot start the web runtime: {e}")))?;
        let listener = {
            let _entered = runtime.enter();
            tokio::net::TcpListener::from_std(listener)
                .map_err(|e| Error::CannotListen(format!("cannot listen on {listening}: {e}")))?
        };
        let shared = Arc::new(Shared {
            routes,
            https: tls.is_some(),
            port: listening.port(),
            identity,
            requests: AtomicU64::new(0),
            unrouted: Arc::default(),
            connections: Arc::default(),
            pool: Arc::default(),
            transport,
        });
        let stop = CancellationToken::new();
        let drain = Drain::default();
        let (finished, done) = tokio::sync::oneshot::channel();
        let serve = accept_loop(
            listener,
            tls.map(tokio_rustls::TlsAcceptor::from),
            shared.clone(),
            stop.clone(),
            drain.clone(),
        );
        std::thread::Builder::new()
            .name(format!("web {listening}"))
            .spawn(move || {
                runtime.block_on(serve);
                // Dropping the runtime ends every connection still open.
                drop(runtime);
                let _ = finished.send(());
            })
            .map_err(|e| Error::CannotListen(format!("cannot start the web thread: {e}")))?;
        tracing::info!(%listening, https = shared.https, shared_port = shared.transport.tcp_shared.unwrap_or(false), "web transport listening");
        Ok(WebServer {
            shared,
            listening,
            started: SystemTime::now(),
            stop,
            drain,
            done,
        })
    }

    /// The status GetWebTransport returns (the TLS key is never echoed).
    pub fn status(&self) -> WebTransportStatus {
        let mut transport = self.shared.transport.clone();
        if transport.tls_key.is_some() {
            transport.tls_key = Some("<redacted>".into());
        }
        WebTransportStatus {
            transport: Some(transport),
            listening: self.listening.to_string(),
            started: Some(self.started.into()),
            requests: self.shared.requests.load(Ordering::Relaxed),
            open_connections: u32::try_from(self.shared.connections.get()).unwrap_or(u32::MAX),
            traffic: self.traffic(),
        }
    }

    /// Stops gracefully: stops accepting (the port closes, once the connections already in its
    /// queue are accepted), lets open connections finish their requests (keep-alive ones are
    /// told `Connection: close`, HTTP/2 ones get GOAWAY) for at most `timeout`, then ends the
    /// rest. Clients reconnect to the node's other workers on the shared port.
    pub async fn drain(mut self, timeout: Duration) -> WebTransportStatus {
        let status = self.status();
        self.drain.start.cancel();
        let _ = tokio::time::timeout(timeout, &mut self.done).await;
        self.stop.cancel();
        let _ = (&mut self.done).await;
        status
    }

    /// What each service (and no service) answered.
    fn traffic(&self) -> Vec<switchyard::pb::agent::v1::WebServiceTraffic> {
        let mut out: Vec<_> = (self.shared.routes.list().iter())
            .map(|r| r.traffic.to_pb(&r.spec.path))
            .collect();
        out.push(self.shared.unrouted.to_pb(traffic::UNROUTED));
        out
    }

    /// Stops listening (the port closes) and ends its connections.
    pub async fn stop(mut self) -> WebTransportStatus {
        let status = self.status();
        self.stop.cancel();
        let _ = (&mut self.done).await;
        status
    }
}

impl Drop for WebServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shared: Arc<Shared>,
    stop: CancellationToken,
    drain: Drain,
) {
    let timeout = Duration::from_secs(u64::from(
        shared.transport.http_client_timeout.unwrap_or(60).max(1),
    ));
    let serve = |stream: tokio::net::TcpStream, peer| {
        let _ = stream.set_nodelay(true);
        drain.connections.spawn(connection(
            stream,
            peer,
            tls.clone(),
            shared.clone(),
            timeout,
            drain.start.clone(),
        ));
    };
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            _ = drain.start.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        serve(stream, peer);
    }
    // Draining: what the kernel queued on this socket is served, then it closes (closing
    // resets what is queued after that, unless the kernel migrates it to the port's other
    // sockets: net.ipv4.tcp_migrate_req, see docs/operations.md, "Rolling restarts").
    while let Some(Ok((stream, peer))) = futures::FutureExt::now_or_never(listener.accept()) {
        serve(stream, peer);
    }
    drop(listener);
    drain.connections.close();
    tokio::select! {
        _ = stop.cancelled() => {}
        _ = drain.connections.wait() => {}
    }
}

/// Serves connection `$conn` to its end; once the listener drains (`$draining`), shuts it down
/// gracefully (a request in flight is answered, an idle connection closes) after
/// [`DRAIN_IDLE_GRACE`]. A macro: the connection's type has no name worth spelling out.
macro_rules! until_drained {
    ($conn:expr, $draining:expr) => {{
        let mut conn = std::pin::pin!($conn);
        tokio::select! {
            served = conn.as_mut() => served,
            _ = $draining.cancelled() => {
                tokio::select! {
                    served = conn.as_mut() => served,
                    _ = tokio::time::sleep(DRAIN_IDLE_GRACE) => {
                        conn.as_mut().graceful_shutdown();
                        conn.await
                    }
                }
            }
        }
    }};
}

/// Serves one connection: HTTP/1.1 or HTTP/2, over TLS when configured. Plaintext connections
/// send large files with `sendfile` ([`sendfile::Conn`]). Stopping the listener drops its
/// runtime, which ends every connection (and every WebSocket pipe) it still has.
async fn connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shared: Arc<Shared>,
    timeout: Duration,
    draining: CancellationToken,
) {
    let _open = shared.connections.open();
    let jobs = sendfile::Jobs::default();
    let files = tls.is_none().then(|| jobs.clone());
    let client = Arc::new(proxy::Client::new(peer));
    let closing = draining.clone();
    let service = hyper::service::service_fn(move |req| {
        let shared = shared.clone();
        let files = files.clone();
        let client = client.clone();
        let closing = closing.clone();
        async move {
            let mut response = handle(shared, req, &client, files).await;
            if closing.is_cancelled() {
                // The listener drains: the client sends its next request to another worker.
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            Ok::<_, Infallible>(response)
        }
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(timeout)
        // Placeholders must be queued as they are, never copied (see `sendfile`).
        .writev(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(timeout));
    let served = match tls {
        Some(acceptor) => match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
            Ok(Ok(tls)) => {
                let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), service);
                until_drained!(conn, draining)
            }
            _ => return,
        },
        None => {
            let io = TokioIo::new(sendfile::Conn::new(stream, jobs));
            let conn = builder.serve_connection_with_upgrades(io, service);
            until_drained!(conn, draining)
        }
    };
    if let Err(error) = served {
        tracing::debug!(%error, %peer, "connection ended with an error");
    }
}

/// Serves one request; `files` is set on plaintext connections, which send files with
/// `sendfile` on HTTP/1.x.
async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
    client: &proxy::Client,
    files: Option<sendfile::Jobs>,
) -> Response<Body> {
    let peer = client.addr;
    let started = Instant::now();
    let head = req.method() == http::Method::HEAD;
    // What the access log names, taken only when it is on.
    let logged = shared
        .transport
        .http_access_log
        .unwrap_or(false)
        .then(|| (req.method().clone(), req.uri().path().to_owned()));
    shared.requests.fetch_add(1, Ordering::Relaxed);
    let path = req.uri().path();
    let found = shared.routes.lookup(path);
    let mut response = match &found {
        None => text(StatusCode::NOT_FOUND, "not found\n"),
        Some((route, at)) => match &route.handler {
            Handler::Static(site) => site.serve(&path[*at..], &req, files.as_ref()),
            Handler::Json { body, options } => json(body, options, &req),
            Handler::Redirect(url) => {
                let mut r = text(
                    StatusCode::TEMPORARY_REDIRECT,
                    format!("redirecting to {url}\n"),
                );
                if let Ok(v) = HeaderValue::from_str(url) {
                    r.headers_mut().insert(header::LOCATION, v);
                }
                r
            }
            Handler::Proxy(backend) => proxy::http(&shared, backend, *at, req, client).await,
            Handler::NodeInfo => nodeinfo(&shared),
            Handler::WebSocket { backends, next } => {
                let i = next.fetch_add(1, Ordering::Relaxed) % backends.len();
                proxy::websocket(&shared, &backends[i], *at, req).await
            }
        },
    };
    if response.status().is_server_error()
        && !shared.transport.http_display_tracebacks.unwrap_or(false)
    {
        // Error details stay in the log unless the cluster asks to display them.
        let status = response.status();
        response = text(
            status,
            format!("{}\n", status.canonical_reason().unwrap_or("error")),
        );
    }
    if shared.https && shared.transport.http_hsts.unwrap_or(false) {
        let age = shared.transport.http_hsts_max_age.unwrap_or(31_536_000);
        if let Ok(v) = HeaderValue::from_str(&format!("max-age={age}")) {
            response
                .headers_mut()
                .insert(header::STRICT_TRANSPORT_SECURITY, v);
        }
    }
    let traffic = found.as_ref().map_or(&shared.unrouted, |(r, _)| &r.traffic);
    traffic.record(response.status().as_u16(), started.elapsed());
    let response = traffic::count_body(traffic, head, response);
    if let Some((method, path)) = logged {
        tracing::info!(target: "access", %peer, %method, %path, status = response.status().as_u16(), ms = started.elapsed().as_secs_f64() * 1000.0, "request");
    }
    response
}

fn json(
    body: &Bytes,
    options: &switchyard::pb::agent::v1::JsonOptions,
    req: &Request<Incoming>,
) -> Response<Body> {
    let mut r = if req.method() == http::Method::OPTIONS && options.allow_cross_origin {
        let mut r = Response::new(full(Bytes::new()));
        *r.status_mut() = StatusCode::NO_CONTENT;
        r
    } else {
        Response::new(full(body.clone()))
    };
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if options.allow_cross_origin {
        h.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, HEAD, OPTIONS"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("*"),
        );
    }
    if options.discourage_caching {
        h.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-store, no-cache, must-revalidate, max-age=0"),
        );
        h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
        h.insert(header::EXPIRES, HeaderValue::from_static("0"));
    }
    r
}

fn nodeinfo(shared: &Shared) -> Response<Body> {
    let info = serde_json::json!({
        "node": shared.identity.node,
        "worker": shared.identity.worker,
        "pid": std::process::id(),
        "version": switchyard::VERSION,
        "uptime": shared.identity.started.elapsed().as_secs_f64(),
    });
    let mut r = Response::new(full(info.to_string()));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}
