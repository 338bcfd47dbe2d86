//! The client side of a router link: a WAMP session on a peer router worker of the group,
//! authenticated with the group's link secret, kept connected (reconnecting with backoff) until
//! the link is stopped. Messages the peer sends over it go to [`super::realm::Realm::link_message`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use serde_json::json;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_util::sync::CancellationToken;

use super::Router;
use super::message::{Fields, Frame, Serializer, code};
use super::session::{
    LINK_AUTHID_PREFIX, LINK_IDLE, LINK_PING, QUEUE, next_message, next_message_within,
    write_frames,
};

/// Where a link goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkSpec {
    /// The link id (unique per worker).
    pub id: String,
    /// The realm it forwards.
    pub realm: String,
    /// The peer's host.
    pub host: String,
    /// The peer's port.
    pub port: u16,
    /// The peer's WebSocket path.
    pub path: String,
}

/// A running link.
#[derive(Debug)]
pub struct LinkHandle {
    /// Its target.
    pub spec: LinkSpec,
    /// Whether it is connected now.
    pub connected: Arc<AtomicBool>,
    /// Cancelled to stop it.
    pub stop: CancellationToken,
}

impl LinkHandle {
    /// Starts the link's task.
    pub fn start(router: Arc<Router>, spec: LinkSpec) -> LinkHandle {
        let handle = LinkHandle {
            spec: spec.clone(),
            connected: Arc::default(),
            stop: CancellationToken::new(),
        };
        let (connected, stop) = (handle.connected.clone(), handle.stop.clone());
        // The realm knows this instance by a key of its own, so a replaced link's last
        // `link_down` cannot remove its successor.
        let key = format!("{}#{}", spec.id, super::message::new_id());
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(50);
            loop {
                let result = tokio::select! {
                    _ = stop.cancelled() => break,
                    r = connect(&router, &spec, &key, &connected) => r,
                };
                if connected.swap(false, Ordering::SeqCst) {
                    backoff = Duration::from_millis(50);
                }
                if let Some(realm) = router.realm(&spec.realm) {
                    realm.link_down(&key);
                }
                if let Err(e) = result {
                    tracing::debug!(link = %spec.id, error = %e, "router link down");
                }
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
            if let Some(realm) = router.realm(&spec.realm) {
                realm.link_down(&key);
            }
        });
        handle
    }
}

/// One connection of the link, until it breaks.
async fn connect(
    router: &Arc<Router>,
    spec: &LinkSpec,
    key: &str,
    connected: &AtomicBool,
) -> Result<(), String> {
    let url = format!("ws://{}:{}{}", spec.host, spec.port, spec.path);
    let mut request = url
        .as_str()
        .into_client_request()
        .map_err(|e| e.to_string())?;
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static(Serializer::Json.subprotocol()),
    );
    let (ws, _) = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_tungstenite::connect_async(request),
    )
    .await
    .map_err(|_| format!("{url}: connect timed out"))?
    .map_err(|e| format!("{url}: {e}"))?;
    let (sink, mut stream) = ws.split();
    let (tx, rx) = mpsc::channel(QUEUE);
    let writer = tokio::spawn(write_frames(sink, rx, Serializer::Json, Some(LINK_PING)));
    let serializer = Serializer::Json;
    let _ = tx
        .send(Frame::new(json!([code::HELLO, spec.realm, {
            "authid": format!("{LINK_AUTHID_PREFIX}{}", router.worker()),
            "authmethods": ["ticket"],
            "roles": {"publisher": {}, "subscriber": {}, "caller": {}, "callee": {}},
        }])))
        .await;
    let mut welcomed = false;
    for _ in 0..2 {
        let m = tokio::time::timeout(
            Duration::from_secs(5),
            next_message(&mut stream, serializer),
        )
        .await
        .map_err(|_| "no WELCOME from the peer".to_owned())?
        .ok_or("the peer closed the link")??;
        match Fields(&m).code() {
            code::CHALLENGE => {
                let _ = tx
                    .send(Frame::new(json!([
                        code::AUTHENTICATE,
                        router.link_secret(),
                        {}
                    ])))
                    .await;
            }
            code::WELCOME => {
                welcomed = true;
                break;
            }
            _ => return Err(format!("the peer refused the link: {:?}", m.get(2))),
        }
    }
    if !welcomed {
        return Err("the peer did not welcome the link".to_owned());
    }
    let realm = router
        .realm(&spec.realm)
        .ok_or_else(|| format!("realm '{}' is not started here", spec.realm))?;
    realm.link_up(key, tx.clone());
    connected.store(true, Ordering::SeqCst);
    tracing::info!(link = %spec.id, realm = %spec.realm, peer = %url, "router link up");
    let result = loop {
        match next_message_within(&mut stream, serializer, Some(LINK_IDLE)).await {
            None => break Err("the peer closed the link or fell silent".to_owned()),
            Some(Err(e)) => break Err(e),
            Some(Ok(m)) => {
                let c = Fields(&m).code();
                if c == code::GOODBYE || c == code::ABORT {
                    break Err(format!("the peer ended the link: {:?}", m.get(2)));
                }
                if let Err(e) = realm.link_message(key, &m) {
                    break Err(e);
                }
            }
        }
    };
    realm.link_down(key);
    drop(tx);
    writer.abort();
    result
}
