//! `reverseproxy` (HTTP, with X-Forwarded-For/-Proto/-Port/-Host; an unreachable backend is a
//! 502 at once, a slow one a 504 after the client timeout) and `websocket_reverseproxy` (the
//! upgrade is forwarded to the backend, then bytes are piped both ways).
//!
//! The HTTP proxy is its own small HTTP/1.1 client, on the listener's thread: the request head
//! is written in one piece, the response head parsed with httparse from one read buffer, and
//! the body handed on as slices of that buffer (a small response is complete in the first read
//! and goes back to the client without another copy or task). Backend connections are kept
//! alive in a per-listener [`Pool`] and reused (most recent first); one the backend closed
//! meanwhile is noticed before reuse, and a request without a body that fails on a reused
//! connection before any answer is retried once on a new one.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::{Body as _, Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use switchyard::pb::agent::v1::{ReverseProxyService, WebSocketBackend};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{Body, Shared, text};

/// Idle connections kept per backend.
const MAX_IDLE: usize = 256;
/// An idle connection unused for this long is closed rather than reused.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest response head accepted from a backend.
const MAX_HEAD: usize = 64 * 1024;
/// The most response header fields accepted from a backend.
const MAX_HEADERS: usize = 128;
/// A new read buffer's size: small responses share one until it is used up.
const READ_BUFFER: usize = 16 * 1024;
/// How long connecting to a backend may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A `reverseproxy` service, prepared once: the backend and its address.
#[derive(Debug)]
pub struct Backend {
    /// The service as configured (port defaulted).
    pub spec: ReverseProxyService,
    /// `host:port`, the pool's key.
    authority: Arc<str>,
}

impl Backend {
    /// The prepared backend of `spec`.
    pub fn new(spec: ReverseProxyService) -> Self {
        let authority = if spec.host.contains(':') && !spec.host.starts_with('[') {
            format!("[{}]:{}", spec.host, spec.port)
        } else {
            format!("{}:{}", spec.host, spec.port)
        };
        Self {
            spec,
            authority: authority.into(),
        }
    }
}

/// Idle keep-alive connections to the backends of one listener, by backend address (a
/// listener has few backends: a list, found by the address's pointer). Used on the listener's
/// thread only (its sockets belong to that thread's runtime).
#[derive(Debug, Default)]
pub struct Pool {
    idle: Mutex<Vec<(Arc<str>, Vec<Idle>)>>,
}

/// An idle connection with what is left of its read buffer (reused for the next response).
#[derive(Debug)]
struct Idle {
    stream: TcpStream,
    buf: BytesMut,
    since: Instant,
}

impl Pool {
    /// The most recently used idle connection to `authority` that is still open.
    fn take(&self, authority: &Arc<str>) -> Option<(TcpStream, BytesMut)> {
        let mut idle = crate::lock(&self.idle);
        let (_, list) = idle
            .iter_mut()
            .find(|(a, _)| Arc::ptr_eq(a, authority) || a == authority)?;
        let now = Instant::now();
        while let Some(conn) = list.pop() {
            if now.duration_since(conn.since) > IDLE_TIMEOUT {
                // Everything before it is older still.
                list.clear();
                return None;
            }
            // An idle connection has nothing to read: if it is readable, the backend closed
            // it (or broke the protocol). This costs no system call while nothing arrived.
            let mut probe = [0u8; 1];
            match conn.stream.try_read(&mut probe) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Some((conn.stream, conn.buf));
                }
                _ => continue,
            }
        }
        None
    }

    /// Keeps `stream` (with the unused rest of its read buffer) for reuse, and closes
    /// connections idle too long.
    fn put(&self, authority: &Arc<str>, stream: TcpStream, buf: BytesMut) {
        debug_assert!(buf.is_empty());
        let mut idle = crate::lock(&self.idle);
        let at = match idle
            .iter()
            .position(|(a, _)| Arc::ptr_eq(a, authority) || a == authority)
        {
            Some(at) => at,
            None => {
                idle.push((Arc::clone(authority), Vec::new()));
                idle.len() - 1
            }
        };
        let list = &mut idle[at].1;
        let now = Instant::now();
        let stale = list.partition_point(|c| now.duration_since(c.since) > IDLE_TIMEOUT);
        list.drain(..stale);
        if list.len() < MAX_IDLE {
            list.push(Idle {
                stream,
                buf,
                since: now,
            });
        }
    }
}

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The hop-by-hop fields (RFC 9110, 7.6.1), which a proxy does not forward.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    [
        header::CONNECTION,
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ]
    .contains(name)
        || *name == KEEP_ALIVE
}

/// Removes the hop-by-hop fields and those the Connection field names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
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
    let hop: Vec<HeaderName> = headers
        .keys()
        .filter(|n| is_hop_by_hop(n))
        .cloned()
        .collect();
    for name in hop {
        headers.remove(name);
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

/// The client of a connection, as the proxy forwards it.
#[derive(Debug)]
pub struct Client {
    /// Its address.
    pub addr: SocketAddr,
    /// Its IP as an X-Forwarded-For value, made once per connection.
    ip: std::sync::OnceLock<HeaderValue>,
}

impl Client {
    /// The client at `addr`.
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            ip: std::sync::OnceLock::new(),
        }
    }

    fn ip(&self) -> &HeaderValue {
        self.ip.get_or_init(|| {
            HeaderValue::from_maybe_shared(Bytes::from(self.addr.ip().to_string()))
                .expect("an IP address is a valid header value")
        })
    }
}

fn forwarded(
    shared: &Shared,
    headers: &mut HeaderMap,
    client: &Client,
    proto: Option<&str>,
    port: Option<u32>,
) {
    let xff = match headers.get(X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prev) => {
            HeaderValue::from_maybe_shared(Bytes::from(format!("{prev}, {}", client.addr.ip())))
                .ok()
        }
        None => Some(client.ip().clone()),
    };
    if let Some(v) = xff {
        headers.insert(X_FORWARDED_FOR, v);
    }
    let proto = match proto {
        Some(p) => HeaderValue::from_str(p).ok(),
        None if shared.https => Some(HeaderValue::from_static("https")),
        None => Some(HeaderValue::from_static("http")),
    };
    if let Some(v) = proto {
        headers.insert(X_FORWARDED_PROTO, v);
    }
    headers.insert(
        X_FORWARDED_PORT,
        HeaderValue::from(port.unwrap_or(u32::from(shared.port))),
    );
    if let Some(host) = headers.get(header::HOST).cloned() {
        headers.insert(X_FORWARDED_HOST, host);
    }
}

/// Why an exchange with a backend failed.
#[derive(Debug)]
enum Failure {
    /// Connecting failed or took too long.
    Connect(io::Error),
    /// The connection failed before the backend answered anything (worth a retry on a reused
    /// connection).
    Unanswered(io::Error),
    /// The backend's answer was cut short or broke HTTP/1.1.
    Answer(String),
}

/// Forwards an HTTP request to `backend`; `&path[at..]` is the path below the mount point.
pub async fn http(
    shared: &Shared,
    backend: &Backend,
    at: usize,
    req: Request<Incoming>,
    client: &Client,
) -> Response<Body> {
    let spec = &backend.spec;
    let (mut parts, body) = req.into_parts();
    let target = target_path(
        if spec.path.is_empty() {
            "/"
        } else {
            &spec.path
        },
        &parts.uri.path()[at..],
        parts.uri.query(),
    );
    strip_hop_by_hop(&mut parts.headers);
    forwarded(
        shared,
        &mut parts.headers,
        client,
        spec.forwarded_proto.as_deref(),
        spec.forwarded_port,
    );
    if !parts.headers.contains_key(header::HOST)
        && let Ok(host) = HeaderValue::from_str(&backend.authority)
    {
        parts.headers.insert(header::HOST, host);
    }
    let body = (!body.is_end_stream()).then_some(body);
    let chunked = body.is_some() && !parts.headers.contains_key(header::CONTENT_LENGTH);
    let head = request_head(&parts, &target, chunked);
    let head_only = parts.method == http::Method::HEAD;
    // Sent again on a new connection if a reused one fails unanswered: only what can be sent
    // twice without harm (RFC 9110, 9.2.2) and has no body to replay.
    let replayable = body.is_none() && parts.method.is_idempotent();
    let timeout = Duration::from_secs(u64::from(
        shared.transport.http_client_timeout.unwrap_or(60).max(1),
    ));
    let request = Outgoing {
        head: &head,
        body,
        chunked,
        head_only,
        replayable,
    };
    let exchange = exchange(&shared.pool, backend, request);
    match tokio::time::timeout(timeout, exchange).await {
        Ok(Ok(response)) => response,
        Ok(Err(Failure::Connect(e) | Failure::Unanswered(e))) => {
            tracing::warn!(backend = %backend.authority, error = %e, "backend unreachable");
            text(
                StatusCode::BAD_GATEWAY,
                format!("backend unreachable: {e}\n"),
            )
        }
        Ok(Err(Failure::Answer(e))) => {
            tracing::warn!(backend = %backend.authority, error = %e, "bad answer from the backend");
            text(
                StatusCode::BAD_GATEWAY,
                format!("bad answer from the backend: {e}\n"),
            )
        }
        Err(_) => text(StatusCode::GATEWAY_TIMEOUT, "backend timed out\n"),
    }
}

/// The request line and headers, for HTTP/1.1 to the backend.
fn request_head(parts: &http::request::Parts, target: &str, chunked: bool) -> BytesMut {
    let mut head = BytesMut::with_capacity(128 + target.len() + parts.headers.len() * 48);
    head.extend_from_slice(parts.method.as_str().as_bytes());
    head.extend_from_slice(b" ");
    head.extend_from_slice(target.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in &parts.headers {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    if chunked {
        head.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    head.extend_from_slice(b"\r\n");
    head
}

/// A request as it goes to the backend.
struct Outgoing<'a> {
    /// Its request line and headers.
    head: &'a [u8],
    body: Option<Incoming>,
    /// The body goes chunked (its length is unknown).
    chunked: bool,
    /// HEAD: the answer has no body.
    head_only: bool,
    /// It may be sent again (idempotent, no body).
    replayable: bool,
}

/// Sends the request on a pooled connection (or a new one) and reads the answer's head. A
/// replayable request is sent again on a new connection if a reused one fails unanswered (the
/// backend closed it meanwhile).
async fn exchange(
    pool: &Arc<Pool>,
    backend: &Backend,
    mut request: Outgoing<'_>,
) -> Result<Response<Body>, Failure> {
    loop {
        let (mut stream, buf, reused) = match pool.take(&backend.authority) {
            Some((stream, buf)) => (stream, buf, true),
            None => (connect(&backend.authority).await?, BytesMut::new(), false),
        };
        let body = request.body.take();
        let sent = send(&mut stream, request.head, body, request.chunked).await;
        let answer = match sent {
            Ok(()) => read_head(&mut stream, buf).await,
            Err(e) => Err(e),
        };
        match answer {
            Ok((head, buf)) => {
                return Ok(respond(pool, backend, stream, head, buf, request.head_only));
            }
            Err(Failure::Unanswered(_)) if reused && request.replayable => continue,
            Err(e) => return Err(e),
        }
    }
}

async fn connect(authority: &str) -> Result<TcpStream, Failure> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(authority))
        .await
        .map_err(|_| {
            Failure::Connect(io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))
        })?
        .map_err(Failure::Connect)?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// Writes the request head, then its body (chunked when its length is unknown).
async fn send(
    stream: &mut TcpStream,
    head: &[u8],
    body: Option<Incoming>,
    chunked: bool,
) -> Result<(), Failure> {
    stream.write_all(head).await.map_err(Failure::Unanswered)?;
    let Some(mut body) = body else {
        return Ok(());
    };
    let failed = |e: io::Error| Failure::Answer(format!("sending the request body: {e}"));
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| failed(io::Error::other(e)))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if data.is_empty() {
            continue;
        }
        if chunked {
            let size = format!("{:x}\r\n", data.len());
            stream.write_all(size.as_bytes()).await.map_err(failed)?;
        }
        stream.write_all(&data).await.map_err(failed)?;
        if chunked {
            stream.write_all(b"\r\n").await.map_err(failed)?;
        }
    }
    if chunked {
        stream.write_all(b"0\r\n\r\n").await.map_err(failed)?;
    }
    Ok(())
}

/// A backend's response head and how its body is framed.
#[derive(Debug)]
struct Head {
    status: StatusCode,
    headers: HeaderMap,
    framing: Framing,
    /// Whether the connection may carry another request after this response.
    keep_alive: bool,
}

/// Reads until a complete final response head (skipping 1xx answers) into `buf` (the rest of
/// the connection's last buffer: responses share one allocation until it is used up); returns
/// it and the bytes read after it.
async fn read_head(stream: &mut TcpStream, mut buf: BytesMut) -> Result<(Head, BytesMut), Failure> {
    loop {
        reserve(&mut buf);
        while !buf.is_empty() {
            match parse_head(&mut buf)? {
                Some(head) if head.status.is_informational() => continue,
                Some(head) => return Ok((head, buf)),
                None => break,
            }
        }
        if buf.len() >= MAX_HEAD {
            return Err(Failure::Answer("response head too large".into()));
        }
        let answered = !buf.is_empty();
        match stream.read_buf(&mut buf).await {
            Ok(0) if answered => {
                return Err(Failure::Answer(
                    "connection closed in the response head".into(),
                ));
            }
            Ok(0) => {
                return Err(Failure::Unanswered(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed without a response",
                )));
            }
            Ok(_) => {}
            Err(e) if answered => return Err(Failure::Answer(e.to_string())),
            Err(e) => return Err(Failure::Unanswered(e)),
        }
    }
}

/// Makes room for a read: at least a few KiB, in a new buffer of [`READ_BUFFER`] bytes if the
/// old one is used up.
fn reserve(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < 4096 {
        buf.reserve(READ_BUFFER);
    }
}

/// Parses one response head off the front of `buf`; `None` if it is not complete yet. Header
/// values are slices of the read buffer, not copies.
fn parse_head(buf: &mut BytesMut) -> Result<Option<Head>, Failure> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut fields);
    let len = match response.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(Failure::Answer(format!("malformed response head: {e}"))),
    };
    let status = response
        .code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or_else(|| Failure::Answer("no status code".into()))?;
    let http10 = response.version == Some(0);
    // Where each name and value lies in the buffer, to slice them out of it once frozen.
    let base = buf.as_ptr() as usize;
    let offset = |p: *const u8| p as usize - base;
    let mut spans = [(0, 0, 0, 0); MAX_HEADERS];
    let count = response.headers.len();
    for (span, h) in spans.iter_mut().zip(response.headers.iter()) {
        let (n, v) = (offset(h.name.as_ptr()), offset(h.value.as_ptr()));
        *span = (n, n + h.name.len(), v, v + h.value.len());
    }
    let head = buf.split_to(len).freeze();
    let fields = Fields::read(&head, &spans[..count])?;
    // How the body is delimited (RFC 9112, 6.3), before the request method is known.
    let framing = if status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        Framing::Length(0)
    } else {
        match (fields.chunked, fields.length) {
            (Some(true), _) => Framing::Chunked(Chunked::Size),
            (Some(false), _) | (None, None) => Framing::Eof,
            (None, Some(n)) => Framing::Length(n),
        }
    };
    let keep_alive = !http10 && !fields.close && !matches!(framing, Framing::Eof);
    Ok(Some(Head {
        status,
        headers: fields.headers,
        framing,
        keep_alive,
    }))
}

/// A response head's fields: those forwarded, and what the hop-by-hop ones (read here, not
/// kept) and Content-Length say.
struct Fields {
    headers: HeaderMap,
    /// Connection: close.
    close: bool,
    /// Whether chunked is the last transfer coding, if there is one.
    chunked: Option<bool>,
    length: Option<u64>,
}

impl Fields {
    /// Reads the fields at `spans` (name start and end, value start and end) of `head`.
    fn read(head: &Bytes, spans: &[(usize, usize, usize, usize)]) -> Result<Self, Failure> {
        let mut fields = Fields {
            headers: HeaderMap::with_capacity(spans.len()),
            close: false,
            chunked: None,
            length: None,
        };
        let mut listed = false;
        for &(n, n_end, v, v_end) in spans {
            let name = HeaderName::from_bytes(&head[n..n_end])
                .map_err(|_| Failure::Answer("bad header name".into()))?;
            let value = &head[v..v_end];
            if name == header::CONNECTION {
                for token in tokens(value) {
                    let close = token.eq_ignore_ascii_case(b"close");
                    fields.close |= close;
                    listed |= !close && !token.eq_ignore_ascii_case(b"keep-alive");
                }
                continue;
            }
            if name == header::TRANSFER_ENCODING {
                // The last field has the last coding.
                fields.chunked = tokens(value)
                    .last()
                    .map(|t| t.eq_ignore_ascii_case(b"chunked"));
                continue;
            }
            if is_hop_by_hop(&name) {
                continue;
            }
            if name == header::CONTENT_LENGTH {
                let n = std::str::from_utf8(value)
                    .ok()
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .ok_or_else(|| Failure::Answer("bad content-length".into()))?;
                if fields.length.is_some_and(|l| l != n) {
                    return Err(Failure::Answer("conflicting content-lengths".into()));
                }
                fields.length = Some(n);
            }
            let value = HeaderValue::from_maybe_shared(head.slice(v..v_end))
                .map_err(|_| Failure::Answer(format!("bad value of header {name}")))?;
            fields.headers.append(name, value);
        }
        if listed {
            strip_listed(head, spans, &mut fields.headers);
        }
        Ok(fields)
    }
}

/// The comma-separated tokens of a field value, trimmed.
fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// Removes the fields a response's Connection field names (besides close and keep-alive).
fn strip_listed(head: &[u8], spans: &[(usize, usize, usize, usize)], headers: &mut HeaderMap) {
    for &(n, n_end, v, v_end) in spans {
        if head[n..n_end].eq_ignore_ascii_case(b"connection") {
            for token in tokens(&head[v..v_end]) {
                if let Ok(name) = HeaderName::from_bytes(token) {
                    headers.remove(name);
                }
            }
        }
    }
}

/// The response to the client: the backend's head and its body, as slices of what was read.
fn respond(
    pool: &Arc<Pool>,
    backend: &Backend,
    stream: TcpStream,
    head: Head,
    mut buf: BytesMut,
    head_only: bool,
) -> Response<Body> {
    let framing = if head_only {
        Framing::Length(0)
    } else {
        head.framing
    };
    let body = match framing {
        // Complete already: the connection goes back to the pool at once.
        Framing::Length(n) if buf.len() as u64 >= n => {
            let data = buf.split_to(n as usize).freeze();
            if head.keep_alive && buf.is_empty() {
                pool.put(&backend.authority, stream, buf);
            }
            super::full(data)
        }
        framing => Body::stream(UpstreamBody {
            conn: Some(Lease {
                stream,
                pool: Arc::clone(pool),
                authority: Arc::clone(&backend.authority),
                keep_alive: head.keep_alive,
            }),
            buf,
            framing,
        }),
    };
    let mut response = Response::new(body);
    *response.status_mut() = head.status;
    *response.headers_mut() = head.headers;
    response
}

/// How a response body is delimited.
#[derive(Debug)]
enum Framing {
    /// This many bytes still to come.
    Length(u64),
    /// Chunked transfer coding, in this state.
    Chunked(Chunked),
    /// Until the backend closes the connection.
    Eof,
}

/// Where a chunked body's decoder is.
#[derive(Debug, PartialEq, Eq)]
enum Chunked {
    /// Before a chunk-size line.
    Size,
    /// Inside a chunk, this many bytes left.
    Data(u64),
    /// After a chunk's data, before its CRLF.
    DataEnd,
    /// In the trailer section.
    Trailer,
    /// After the last chunk and the trailers.
    Done,
}

impl Chunked {
    /// Decodes from `buf`: the next data slice, or `None` when more input is needed or the body
    /// is done (then the state is `Done`).
    fn decode(&mut self, buf: &mut BytesMut) -> io::Result<Option<Bytes>> {
        let bad = |what: &str| {
            io::Error::new(io::ErrorKind::InvalidData, format!("chunked body: {what}"))
        };
        loop {
            match self {
                Chunked::Size | Chunked::Trailer => {
                    let Some(eol) = buf.windows(2).position(|w| w == b"\r\n") else {
                        if buf.len() > 4096 {
                            return Err(bad("line too long"));
                        }
                        return Ok(None);
                    };
                    let line = buf.split_to(eol + 2);
                    if *self == Chunked::Trailer {
                        if eol == 0 {
                            *self = Chunked::Done;
                        }
                        continue;
                    }
                    let digits = line[..eol].split(|&b| b == b';').next().unwrap_or(&[]);
                    let digits =
                        std::str::from_utf8(digits.trim_ascii()).map_err(|_| bad("size"))?;
                    if digits.is_empty() || digits.len() > 15 {
                        return Err(bad("size"));
                    }
                    let size = u64::from_str_radix(digits, 16).map_err(|_| bad("size"))?;
                    *self = if size == 0 {
                        Chunked::Trailer
                    } else {
                        Chunked::Data(size)
                    };
                }
                Chunked::Data(left) => {
                    if buf.is_empty() {
                        return Ok(None);
                    }
                    let take = (*left).min(buf.len() as u64);
                    *left -= take;
                    if *left == 0 {
                        *self = Chunked::DataEnd;
                    }
                    return Ok(Some(buf.split_to(take as usize).freeze()));
                }
                Chunked::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(None);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(bad("no CRLF after a chunk"));
                    }
                    buf.advance(2);
                    *self = Chunked::Size;
                }
                Chunked::Done => return Ok(None),
            }
        }
    }
}

/// A backend connection lent to a response body; back to the pool when the body is complete
/// and the connection may be reused.
#[derive(Debug)]
struct Lease {
    stream: TcpStream,
    pool: Arc<Pool>,
    authority: Arc<str>,
    keep_alive: bool,
}

/// A response body read from the backend as the client takes it.
#[derive(Debug)]
struct UpstreamBody {
    /// `None` once the body is complete.
    conn: Option<Lease>,
    buf: BytesMut,
    framing: Framing,
}

impl UpstreamBody {
    /// The body is complete: the connection is reused if nothing was left over.
    fn finish(&mut self) {
        if let Some(lease) = self.conn.take()
            && lease.keep_alive
            && self.buf.is_empty()
        {
            lease.pool.put(
                &lease.authority,
                lease.stream,
                std::mem::take(&mut self.buf),
            );
        }
    }

    /// The next data slice from what was read, if any; `Ok(None)` when more must be read.
    fn decoded(&mut self) -> io::Result<Option<Bytes>> {
        match &mut self.framing {
            Framing::Length(left) => {
                if *left == 0 || self.buf.is_empty() {
                    return Ok(None);
                }
                let take = (*left).min(self.buf.len() as u64);
                *left -= take;
                Ok(Some(self.buf.split_to(take as usize).freeze()))
            }
            Framing::Chunked(state) => state.decode(&mut self.buf),
            Framing::Eof => Ok((!self.buf.is_empty()).then(|| self.buf.split().freeze())),
        }
    }

    fn done(&self) -> bool {
        match &self.framing {
            Framing::Length(left) => *left == 0,
            Framing::Chunked(state) => *state == Chunked::Done,
            Framing::Eof => false,
        }
    }
}

impl hyper::body::Body for UpstreamBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<io::Result<Frame<Bytes>>>> {
        let this = self.get_mut();
        loop {
            if let Some(data) = this.decoded()? {
                if this.done() {
                    this.finish();
                }
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
            if this.done() {
                this.finish();
                return Poll::Ready(None);
            }
            let Some(lease) = &this.conn else {
                return Poll::Ready(None);
            };
            ready!(lease.stream.poll_read_ready(cx))?;
            reserve(&mut this.buf);
            match lease.stream.try_read_buf(&mut this.buf) {
                Ok(0) if matches!(this.framing, Framing::Eof) => {
                    this.conn = None;
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the backend closed the connection inside the body",
                    ))));
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Some(Err(e))),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done() && self.buf.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Length(left) => SizeHint::with_exact(left),
            _ => SizeHint::default(),
        }
    }
}

fn is_upgrade(headers: &HeaderMap) -> bool {
    headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// Forwards a WebSocket upgrade to `backend` and pipes the upgraded connections; `&path[at..]`
/// is the path below the mount point.
pub async fn websocket(
    shared: &Shared,
    backend: &WebSocketBackend,
    at: usize,
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
        &req.uri().path()[at..],
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
        return Response::from_parts(parts, Body::stream(body));
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
    use super::*;

    /// Decodes `wire` fed in pieces of `step` bytes; the data and whether the body ended.
    fn dechunk(wire: &[u8], step: usize) -> io::Result<(Vec<u8>, bool, BytesMut)> {
        let mut state = Chunked::Size;
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for piece in wire.chunks(step) {
            buf.extend_from_slice(piece);
            while let Some(data) = state.decode(&mut buf)? {
                out.extend_from_slice(&data);
            }
        }
        Ok((out, state == Chunked::Done, buf))
    }

    #[test]
    fn chunked_bodies_decode_however_they_arrive() {
        let wire =
            b"5;ext=1\r\nhello\r\n7\r\n, world\r\nA\r\n0123456789\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        for step in [1, 2, 3, 7, wire.len()] {
            let (data, done, rest) = dechunk(wire, step).unwrap();
            assert_eq!(data, b"hello, world0123456789", "step {step}");
            assert!(done, "step {step}");
            assert_eq!(&rest[..], b"NEXT", "what follows the body stays unread");
        }
        let (data, done, _) = dechunk(b"3\r\nab", 1).unwrap();
        assert_eq!((data.as_slice(), done), (&b"ab"[..], false), "incomplete");
        for bad in [
            &b"zz\r\n"[..],
            b"3\r\nabcXX",
            b"\r\n",
            b"1234567890abcdef0\r\n",
        ] {
            assert!(
                dechunk(bad, 1).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    fn head(wire: &[u8]) -> (Head, BytesMut) {
        let mut buf = BytesMut::from(wire);
        let head = match parse_head(&mut buf) {
            Ok(Some(h)) => h,
            other => panic!("{other:?}"),
        };
        (head, buf)
    }

    #[test]
    fn response_heads_give_status_headers_framing_and_reuse() {
        let (h, rest) = head(
            b"HTTP/1.1 201 Created\r\nContent-Length: 3\r\nX-A: a b\r\nKeep-Alive: 5\r\n\r\nabc",
        );
        assert_eq!(h.status, StatusCode::CREATED);
        assert_eq!(h.headers["x-a"], "a b");
        assert!(
            h.headers.get("keep-alive").is_none(),
            "hop-by-hop headers are dropped"
        );
        assert!(matches!(h.framing, Framing::Length(3)) && h.keep_alive);
        assert_eq!(&rest[..], b"abc");
        let (h, _) = head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n");
        assert!(matches!(h.framing, Framing::Chunked(Chunked::Size)) && h.keep_alive);
        assert!(h.headers.get("transfer-encoding").is_none());
        let (h, _) = head(b"HTTP/1.1 200 OK\r\n\r\n");
        assert!(
            matches!(h.framing, Framing::Eof) && !h.keep_alive,
            "until close"
        );
        let (h, _) = head(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n");
        assert!(!h.keep_alive);
        let (h, _) =
            head(b"HTTP/1.1 200 OK\r\nConnection: x-secret\r\nX-Secret: 1\r\nX-Kept: 2\r\n\r\n");
        assert!(h.headers.get("x-secret").is_none() && h.headers["x-kept"] == "2");
        let (h, _) = head(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n");
        assert!(!h.keep_alive, "HTTP/1.0");
        let (h, _) = head(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\n\r\n");
        assert!(matches!(h.framing, Framing::Length(0)), "304 has no body");
        assert!(
            parse_head(&mut BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-"[..]))
                .unwrap()
                .is_none()
        );
        for bad in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
            b"NOT HTTP\r\n\r\n",
        ] {
            assert!(parse_head(&mut BytesMut::from(bad)).is_err());
        }
    }

    #[test]
    fn request_heads_are_http11_with_the_headers_given() {
        let (mut parts, ()) = Request::post("http://x/a?b")
            .header("host", "example.org")
            .header("x-forwarded-for", "10.0.0.1")
            .body(())
            .unwrap()
            .into_parts();
        parts
            .headers
            .append("x-many", HeaderValue::from_static("1"));
        parts
            .headers
            .append("x-many", HeaderValue::from_static("2"));
        let head = request_head(&parts, "/base/a?b", true);
        assert_eq!(
            &head[..],
            b"POST /base/a?b HTTP/1.1\r\nhost: example.org\r\nx-forwarded-for: 10.0.0.1\r\n\
              x-many: 1\r\nx-many: 2\r\ntransfer-encoding: chunked\r\n\r\n"
        );
    }

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
