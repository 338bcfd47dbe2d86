//! One WebSocket connection to the router: subprotocol negotiation, HELLO/WELCOME (anonymous
//! for clients, ticket for router links), then messages into the realm until GOODBYE or close.

use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode, header};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_util::sync::CancellationToken;

use super::Router;
use super::message::{Fields, Frame, Serializer, code, new_id, uri};
use super::realm::Peer;

/// Frames queued to one peer before it counts as too slow and is disconnected.
pub const QUEUE: usize = 8192;
/// The limit on one incoming message.
const MAX_MESSAGE: usize = 16 << 20;
/// How long a new connection may take to say HELLO (and to authenticate).
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// The authid prefix router links present.
pub const LINK_AUTHID_PREFIX: &str = "rlink:";
/// How often a router link's client side sends a WebSocket ping (the peer answers with a pong).
pub const LINK_PING: Duration = Duration::from_secs(3);
/// How long either end of a router link waits without receiving any frame (message, ping or
/// pong) before it counts the peer as gone and drops the link: a peer that vanished without
/// closing its socket (host frozen or cut off) would otherwise hold the link, and the
/// subscriptions it carries, until TCP gives up minutes later. The link's client then
/// reconnects with backoff.
pub const LINK_IDLE: Duration = Duration::from_secs(10);

fn reject(status: StatusCode, text: &str) -> ErrorResponse {
    let mut r = ErrorResponse::new(Some(text.to_owned()));
    *r.status_mut() = status;
    r
}

/// Serves one accepted TCP connection until it ends or `shutdown`.
pub async fn serve(router: Arc<Router>, stream: TcpStream, shutdown: CancellationToken) {
    let _ = stream.set_nodelay(true);
    let mut serializer = None;
    // The callback's signature (and its large error type) is tungstenite's.
    #[allow(clippy::result_large_err)]
    let callback = |req: &Request, mut resp: Response| {
        let path = req.uri().path();
        if path != "/" && path != "/ws" {
            return Err(reject(
                StatusCode::NOT_FOUND,
                "WAMP is served at /ws and /\n",
            ));
        }
        let offered = req
            .headers()
            .get_all(header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|v| v.to_str().ok());
        let Some(chosen) = Serializer::negotiate(offered) else {
            return Err(reject(
                StatusCode::BAD_REQUEST,
                "no supported WebSocket subprotocol (wamp.2.json, wamp.2.msgpack, wamp.2.cbor)\n",
            ));
        };
        resp.headers_mut().insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(chosen.subprotocol()),
        );
        serializer = Some(chosen);
        Ok(resp)
    };
    let config = WebSocketConfig::default().max_message_size(Some(MAX_MESSAGE));
    let ws = match tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(config))
        .await
    {
        Ok(ws) => ws,
        Err(e) => {
            tracing::debug!(error = %e, "WebSocket handshake failed");
            return;
        }
    };
    let Some(serializer) = serializer else {
        return;
    };
    run(router, ws, serializer, shutdown).await;
}

/// Sends every queued frame, batching what is ready into one flush; with `ping`, also a
/// WebSocket ping at that interval.
pub async fn write_frames<S>(
    mut sink: S,
    mut rx: mpsc::Receiver<Arc<Frame>>,
    serializer: Serializer,
    ping: Option<Duration>,
) where
    S: futures::Sink<Message, Error = tungstenite::Error> + Unpin,
{
    let mut ticker = ping.map(|every| {
        let mut t = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    });
    loop {
        let frame = tokio::select! {
            f = rx.recv() => f,
            _ = async { ticker.as_mut().expect("guarded").tick().await }, if ticker.is_some() => {
                if sink.send(Message::Ping(Default::default())).await.is_err() {
                    return;
                }
                continue;
            }
        };
        let Some(frame) = frame else { break };
        count_sent(&frame);
        if sink.feed(frame.encode(serializer)).await.is_err() {
            return;
        }
        while let Ok(frame) = rx.try_recv() {
            count_sent(&frame);
            if sink.feed(frame.encode(serializer)).await.is_err() {
                return;
            }
        }
        if sink.flush().await.is_err() {
            return;
        }
    }
    let _ = sink.close().await;
}

fn count_sent(frame: &Frame) {
    if let Some(message) = frame.value().as_array() {
        super::traffic::SENT.count(message);
    }
}

/// The next WAMP message, `None` when the connection closed.
pub async fn next_message<S>(
    stream: &mut S,
    serializer: Serializer,
) -> Option<Result<Vec<Value>, String>>
where
    S: futures::Stream<Item = Result<Message, tungstenite::Error>> + Unpin,
{
    next_message_within(stream, serializer, None).await
}

/// [`next_message`], but with `idle`, also `None` when no frame at all (pings and pongs count)
/// arrives for that long: the peer is presumed gone.
pub async fn next_message_within<S>(
    stream: &mut S,
    serializer: Serializer,
    idle: Option<Duration>,
) -> Option<Result<Vec<Value>, String>>
where
    S: futures::Stream<Item = Result<Message, tungstenite::Error>> + Unpin,
{
    loop {
        let next = match idle {
            Some(idle) => match tokio::time::timeout(idle, stream.next()).await {
                Ok(next) => next,
                Err(_) => {
                    tracing::info!(?idle, "peer silent: dropping the connection");
                    return None;
                }
            },
            None => stream.next().await,
        };
        match next? {
            Ok(m @ (Message::Text(_) | Message::Binary(_))) => {
                let decoded = serializer.decode(&m);
                if let Ok(message) = &decoded {
                    super::traffic::RECEIVED.count(message);
                }
                return Some(decoded);
            }
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => continue,
        }
    }
}

fn abort(reason: &str, message: String) -> Arc<Frame> {
    Frame::new(json!([code::ABORT, {"message": message}, reason]))
}

async fn run(
    router: Arc<Router>,
    ws: WebSocketStream<TcpStream>,
    serializer: Serializer,
    shutdown: CancellationToken,
) {
    let (sink, mut stream) = ws.split();
    let (tx, rx) = mpsc::channel::<Arc<Frame>>(QUEUE);
    let writer = tokio::spawn(write_frames(sink, rx, serializer, None));

    let hello =
        match tokio::time::timeout(HELLO_TIMEOUT, next_message(&mut stream, serializer)).await {
            Ok(Some(Ok(m))) => m,
            Ok(Some(Err(e))) => {
                let _ = tx.send(abort(uri::PROTOCOL_VIOLATION, e)).await;
                drop(tx);
                let _ = writer.await;
                return;
            }
            _ => return,
        };
    let joined = welcome(&router, &hello, &tx, &mut stream, serializer).await;
    let Some((realm, session, link)) = joined else {
        drop(tx);
        let _ = writer.await;
        return;
    };
    let kick = CancellationToken::new();
    realm.join(
        session,
        Peer {
            tx: tx.clone(),
            kick: kick.clone(),
            link,
        },
    );
    tracing::debug!(realm = %realm.name, session, link, "session joined");
    loop {
        let msg = tokio::select! {
            _ = kick.cancelled() => break,
            _ = shutdown.cancelled() => {
                let _ = tx.try_send(Frame::new(json!([code::GOODBYE, {}, uri::SYSTEM_SHUTDOWN])));
                break;
            }
            m = next_message_within(&mut stream, serializer, link.then_some(LINK_IDLE)) => m,
        };
        match msg {
            None => break,
            Some(Err(e)) => {
                let _ = tx.try_send(abort(uri::PROTOCOL_VIOLATION, e));
                break;
            }
            Some(Ok(m)) if Fields(&m).code() == code::GOODBYE => {
                // Leave first: once the client has our GOODBYE, nothing routes to it any more.
                realm.leave(session);
                let _ = tx.try_send(Frame::new(json!([code::GOODBYE, {}, uri::GOODBYE_AND_OUT])));
                break;
            }
            Some(Ok(m)) => {
                if let Err(e) = realm.handle(session, &m) {
                    let _ = tx.try_send(abort(uri::PROTOCOL_VIOLATION, e));
                    break;
                }
            }
        }
    }
    realm.leave(session);
    drop(tx);
    let _ = tokio::time::timeout(Duration::from_secs(5), writer).await;
    tracing::debug!(realm = %realm.name, session, "session left");
}

/// Checks HELLO, authenticates a router link, queues WELCOME (or ABORT) and returns the realm,
/// the new session id and whether it is a link.
async fn welcome<S>(
    router: &Router,
    hello: &[Value],
    tx: &mpsc::Sender<Arc<Frame>>,
    stream: &mut S,
    serializer: Serializer,
) -> Option<(Arc<super::realm::Realm>, u64, bool)>
where
    S: futures::Stream<Item = Result<Message, tungstenite::Error>> + Unpin,
{
    let f = Fields(hello);
    let refuse = |reason: &str, message: String| {
        let _ = tx.try_send(abort(reason, message));
        None
    };
    if f.code() != code::HELLO {
        return refuse(
            uri::PROTOCOL_VIOLATION,
            "the first message must be HELLO".into(),
        );
    }
    let (name, details) = match (f.str(1, "HELLO.Realm"), f.dict(2, "HELLO.Details")) {
        (Ok(n), Ok(d)) => (n.to_owned(), d),
        (Err(e), _) | (_, Err(e)) => return refuse(uri::PROTOCOL_VIOLATION, e),
    };
    let Some(realm) = router.realm(&name) else {
        return refuse(
            uri::NO_SUCH_REALM,
            format!("no realm '{name}' on this router"),
        );
    };
    let authid = details
        .get("authid")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let ticket = details
        .get("authmethods")
        .and_then(Value::as_array)
        .is_some_and(|m| m.iter().any(|v| v == "ticket"));
    let link = ticket && authid.starts_with(LINK_AUTHID_PREFIX);
    if link {
        let _ = tx.try_send(Frame::new(json!([code::CHALLENGE, "ticket", {}])));
        let answer = tokio::time::timeout(HELLO_TIMEOUT, next_message(stream, serializer)).await;
        let secret = router.link_secret();
        let ok = matches!(&answer, Ok(Some(Ok(m)))
            if Fields(m).code() == code::AUTHENTICATE
                && !secret.is_empty()
                && Fields(m).str(1, "AUTHENTICATE.Signature").is_ok_and(|s| constant_time_eq(s, &secret)));
        if !ok {
            return refuse(uri::NOT_AUTHORIZED, "router link refused".into());
        }
    }
    let session = new_id();
    let (authrole, authmethod, authid) = if link {
        ("rlink", "ticket", authid)
    } else {
        ("anonymous", "anonymous", format!("anonymous-{session}"))
    };
    let _ = tx.try_send(Frame::new(json!([code::WELCOME, session, {
        "realm": name,
        "authid": authid,
        "authrole": authrole,
        "authmethod": authmethod,
        "roles": {
            "broker": {"features": {"publisher_exclusion": true, "subscriber_blackwhite_listing": true}},
            "dealer": {"features": {"progressive_call_results": true}},
        },
    }])));
    Some((realm, session, link))
}

fn constant_time_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
