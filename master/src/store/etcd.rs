//! The [`Store`] on etcd, for masters whose state must outlive one machine.
//!
//! - Keys live under a prefix (`/switchyard/` by default) so that several installations can
//!   share one etcd; values keep the versioned record format of [`super::codec`].
//! - A [`Txn`] is one etcd transaction: `Absent` compares the key's version with 0, `Equals` its
//!   value; puts and deletes are its success operations. It is acknowledged once etcd
//!   acknowledged it (a quorum has it), and only after this master's cache has seen it.
//! - Reads come from a cache of the whole prefix, filled by one range read and kept current by
//!   an etcd watch from the revision read (so a change committed by another master reaches this
//!   one's cache within a watch round trip). While the watch is down, reads go to etcd.
//! - Every call has a deadline and moves on to the next endpoint when one does not answer;
//!   etcd unreachable or without quorum is [`StoreError::Unavailable`], never a half write.
//!
//! The client code is generated from `master/proto/etcd/rpc.proto` (a subset of etcd's v3 API).

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use futures::StreamExt;

use super::{Change, ChangeStream, Condition, Revision, Rows, Store, StoreError, StoreFuture, Txn};

mod batch;
mod lease;

/// The generated etcd v3 client (a subset; see `master/proto/etcd/rpc.proto`).
#[allow(missing_docs, clippy::all, missing_debug_implementations)]
pub mod pb {
    tonic::include_proto!("etcdserverpb");
}

use pb::kv_client::KvClient;
use pb::watch_client::WatchClient;

/// How a master reaches etcd.
#[derive(Debug, Clone)]
pub struct EtcdConfig {
    /// `http://host:port` or `https://host:port`, one per member.
    pub endpoints: Vec<String>,
    /// The key prefix of this installation.
    pub prefix: String,
    /// TLS to etcd (for `https` endpoints).
    pub tls: Option<EtcdTls>,
    /// Deadline of one call to one endpoint.
    pub request_timeout: Duration,
}

impl EtcdConfig {
    /// A configuration with the default prefix and deadline.
    pub fn new(endpoints: Vec<String>) -> Self {
        EtcdConfig {
            endpoints,
            prefix: DEFAULT_PREFIX.to_owned(),
            tls: None,
            request_timeout: Duration::from_secs(2),
        }
    }
}

/// The default key prefix.
pub const DEFAULT_PREFIX: &str = "/switchyard/";

/// TLS files for etcd: its CA, and a client certificate if etcd requires one.
#[derive(Debug, Clone)]
pub struct EtcdTls {
    /// CA bundle (PEM) that signed etcd's server certificates.
    pub ca: PathBuf,
    /// Client certificate (PEM).
    pub cert: Option<PathBuf>,
    /// Client key (PEM).
    pub key: Option<PathBuf>,
}

/// The etcd-backed store.
#[derive(Debug)]
pub struct EtcdStore {
    endpoints: Arc<Endpoints>,
    prefix: Vec<u8>,
    cache: Arc<Cache>,
    /// Commits, batched into etcd transactions.
    writer: batch::Writer,
    stop: CancellationToken,
}

impl Drop for EtcdStore {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The members and which one answered last.
#[derive(Debug)]
struct Endpoints {
    channels: Vec<(String, Channel)>,
    current: AtomicUsize,
    timeout: Duration,
}

impl Endpoints {
    fn new(config: &EtcdConfig) -> Result<Self, StoreError> {
        if config.endpoints.is_empty() {
            return Err(StoreError::Backend("no etcd endpoint given".into()));
        }
        let tls = match &config.tls {
            Some(tls) => Some(client_tls(tls)?),
            None => None,
        };
        let mut channels = Vec::new();
        for url in &config.endpoints {
            let mut endpoint = Endpoint::from_shared(url.clone())
                .map_err(|e| StoreError::Backend(format!("bad etcd endpoint {url}: {e}")))?
                .connect_timeout(config.request_timeout)
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(10))
                .keep_alive_timeout(config.request_timeout);
            if let Some(tls) = &tls {
                endpoint = endpoint
                    .tls_config(tls.clone())
                    .map_err(|e| StoreError::Backend(format!("etcd TLS for {url}: {e}")))?;
            }
            channels.push((url.clone(), endpoint.connect_lazy()));
        }
        Ok(Endpoints {
            channels,
            current: AtomicUsize::new(0),
            timeout: config.request_timeout,
        })
    }

    /// Runs `call` against the member that answered last, then the others in turn while they
    /// do not answer (unavailable or past the deadline: down, or without quorum). A call that
    /// writes (`writes`) moves on only when the member could not be reached at all: one that
    /// reached a member and then failed or timed out may have been applied, and is answered
    /// `Unavailable` (outcome unknown) rather than sent again elsewhere.
    async fn call<T, F, Fut>(&self, what: &str, writes: bool, call: F) -> Result<T, StoreError>
    where
        F: Fn(Channel) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let start = self.current.load(Ordering::Relaxed);
        let mut last = String::new();
        for i in 0..self.channels.len() {
            let n = (start + i) % self.channels.len();
            let (url, channel) = &self.channels[n];
            let (failure, unreached) =
                match tokio::time::timeout(self.timeout, call(channel.clone())).await {
                    Ok(Ok(response)) => {
                        self.current.store(n, Ordering::Relaxed);
                        return Ok(response.into_inner());
                    }
                    Ok(Err(s)) if !retryable(&s) => {
                        return Err(StoreError::Backend(format!("etcd {what}: {}", s.message())));
                    }
                    Ok(Err(s)) => (format!("{url}: {}", s.message()), not_connected(&s)),
                    Err(_) => (format!("{url}: no answer within {:?}", self.timeout), false),
                };
            last = failure;
            if writes && !unreached {
                return Err(StoreError::Unavailable(format!(
                    "etcd did not confirm the {what} (down or without quorum; it may still apply it: retry): {last}"
                )));
            }
        }
        Err(StoreError::Unavailable(format!(
            "etcd is unreachable or has no quorum ({what}; last: {last})"
        )))
    }

    fn any(&self) -> Channel {
        let n = self.current.load(Ordering::Relaxed) % self.channels.len();
        self.channels[n].1.clone()
    }

    fn rotate(&self) {
        self.current.fetch_add(1, Ordering::Relaxed);
    }
}

/// Whether the request never reached the member (no connection): safe to send elsewhere.
fn not_connected(s: &tonic::Status) -> bool {
    use std::error::Error as _;
    s.code() == tonic::Code::Unavailable
        && s.source().is_some_and(|e| {
            e.downcast_ref::<tonic::transport::Error>().is_some()
                || e.to_string().contains("connect")
        })
        || s.message().contains("error trying to connect")
        || s.message().contains("transport error")
}

/// Whether another member may answer where this one failed.
fn retryable(s: &tonic::Status) -> bool {
    use tonic::Code;
    matches!(
        s.code(),
        Code::Unavailable | Code::DeadlineExceeded | Code::Unknown | Code::Cancelled
    ) || s.message().contains("leader changed")
        || s.message().contains("no leader")
        || s.message().contains("timed out")
}

fn client_tls(tls: &EtcdTls) -> Result<ClientTlsConfig, StoreError> {
    let read = |p: &PathBuf| {
        std::fs::read(p)
            .map_err(|e| StoreError::Backend(format!("cannot read {}: {e}", p.display())))
    };
    let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(&tls.ca)?));
    match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => {
            config = config.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        (None, None) => {}
        _ => {
            return Err(StoreError::Backend(
                "an etcd client certificate needs both --etcd-cert and --etcd-key".into(),
            ));
        }
    }
    Ok(config)
}

/// The end of the range of keys starting with `prefix` (etcd's "prefix end").
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0] // every key
}

/// The cached copy of every key under the prefix (keys without the prefix).
#[derive(Debug)]
struct Cache {
    state: RwLock<CacheState>,
    /// A commit waited in vain for the watch: reconnect (a member cut off from the leader can
    /// keep a watch open and silent).
    behind: tokio::sync::Notify,
    /// The revision the cache reflects, for commits waiting to read their own write.
    applied: watch::Sender<Revision>,
}

#[derive(Debug, Default)]
struct CacheState {
    map: BTreeMap<Vec<u8>, Vec<u8>>,
    revision: Revision,
    /// The watch is running: the cache follows etcd.
    live: bool,
}

impl Cache {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, CacheState> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, CacheState> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    fn set_live(&self, live: bool) {
        self.write().live = live;
        // Wake commits waiting for a watch that went away: they read from etcd now.
        self.applied.send_modify(|_| {});
    }
}

impl EtcdStore {
    /// Connects to etcd and fills the cache; waits (with backoff, logging what it waits for)
    /// until etcd answers or `shutdown` is cancelled.
    pub async fn connect(
        config: EtcdConfig,
        shutdown: CancellationToken,
    ) -> Result<Self, StoreError> {
        let endpoints = Arc::new(Endpoints::new(&config)?);
        let prefix = config.prefix.clone().into_bytes();
        let cache = Arc::new(Cache {
            state: RwLock::new(CacheState::default()),
            behind: tokio::sync::Notify::new(),
            applied: watch::channel(0).0,
        });
        let mut delay = Duration::from_millis(100);
        loop {
            match load_all(&endpoints, &prefix).await {
                Ok((map, revision)) => {
                    *cache.write() = CacheState {
                        map,
                        revision,
                        live: false,
                    };
                    cache.applied.send_replace(revision);
                    break;
                }
                Err(error) => {
                    tracing::warn!(endpoints = ?config.endpoints, %error, retry_in = ?delay, "waiting for etcd");
                    tokio::select! {
                        _ = shutdown.cancelled() => return Err(error),
                        _ = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
        let stop = shutdown.child_token();
        tokio::spawn(follow(
            endpoints.clone(),
            prefix.clone(),
            cache.clone(),
            stop.clone(),
        ));
        tracing::info!(endpoints = ?config.endpoints, prefix = %config.prefix, revision = *cache.applied.borrow(), "etcd store ready");
        let writer = batch::Writer::start(
            endpoints.clone(),
            prefix.clone(),
            cache.clone(),
            stop.clone(),
        );
        Ok(EtcdStore {
            endpoints,
            prefix,
            cache,
            writer,
            stop,
        })
    }

    fn full(&self, key: &[u8]) -> Vec<u8> {
        [self.prefix.as_slice(), key].concat()
    }

    /// Reads `[key, end)` from etcd itself (while the cache does not follow).
    async fn range(&self, key: Vec<u8>, end: Vec<u8>) -> Result<Rows, StoreError> {
        let (rows, _) = range_all(&self.endpoints, key, end).await?;
        let n = self.prefix.len();
        Ok(rows
            .into_iter()
            .map(|(k, v)| (k[n..].to_vec(), v))
            .collect())
    }

    /// Waits until the cache reflects `revision` (or stops following etcd: reads go there then).
    async fn await_cache(&self, revision: Revision) {
        self.writer.await_cache(revision).await;
    }
}

/// Reads every key of `[key, end)` at one revision, in pages.
async fn range_all(
    endpoints: &Endpoints,
    key: Vec<u8>,
    end: Vec<u8>,
) -> Result<(Rows, Revision), StoreError> {
    const PAGE: i64 = 5000;
    let mut rows = Vec::new();
    let mut from = key;
    let mut at = 0i64;
    loop {
        let req = pb::RangeRequest {
            key: from.clone(),
            range_end: end.clone(),
            limit: PAGE,
            revision: at,
            serializable: false,
        };
        let resp = endpoints
            .call("range", false, |ch| {
                let req = req.clone();
                async move { KvClient::new(ch).range(req).await }
            })
            .await?;
        if at == 0 {
            at = resp.header.as_ref().map_or(0, |h| h.revision);
        }
        let more = resp.more;
        for kv in resp.kvs {
            rows.push((kv.key, kv.value));
        }
        match rows.last() {
            Some((last, _)) if more => from = [last.as_slice(), &[0]].concat(),
            _ => return Ok((rows, at.max(0) as Revision)),
        }
    }
}

async fn load_all(
    endpoints: &Endpoints,
    prefix: &[u8],
) -> Result<(BTreeMap<Vec<u8>, Vec<u8>>, Revision), StoreError> {
    let (rows, revision) = range_all(endpoints, prefix.to_vec(), prefix_end(prefix)).await?;
    let n = prefix.len();
    Ok((
        rows.into_iter()
            .map(|(k, v)| (k[n..].to_vec(), v))
            .collect(),
        revision,
    ))
}

/// Keeps the cache following etcd: a watch from the cache's revision; when it breaks (or a
/// commit found it behind), the prefix is read again at one revision and watched from there, so
/// the cache never goes live on state older than what a reader may have read from etcd itself
/// meanwhile.
async fn follow(
    endpoints: Arc<Endpoints>,
    prefix: Vec<u8>,
    cache: Arc<Cache>,
    stop: CancellationToken,
) {
    let mut delay = Duration::from_millis(50);
    let mut reload = false;
    while !stop.is_cancelled() {
        if reload {
            match load_all(&endpoints, &prefix).await {
                Ok((map, revision)) => {
                    let mut state = cache.write();
                    state.map = map;
                    state.revision = revision;
                    drop(state);
                    cache.applied.send_replace(revision);
                }
                Err(error) => {
                    tracing::warn!(%error, retry_in = ?delay, "cannot read the prefix from etcd");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(Duration::from_secs(2));
                    continue;
                }
            }
        }
        let from = cache.read().revision + 1;
        let broken = tokio::select! {
            _ = stop.cancelled() => return,
            _ = cache.behind.notified() => Broken::Stream("a commit found the watch behind".into()),
            b = watch_from(&endpoints, &prefix, &cache, from) => b,
        };
        cache.set_live(false);
        reload = true;
        match broken {
            Broken::Compacted(_) => tracing::warn!("etcd compacted past the cache: reloading"),
            Broken::Stream(error) => {
                tracing::warn!(%error, retry_in = ?delay, "etcd watch broke; reloading and resuming");
                endpoints.rotate();
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
    }
}

enum Broken {
    Compacted(Revision),
    Stream(String),
}

/// What one watch response carries.
enum Batch {
    /// The watch was created: the changes after its start revision follow.
    Created,
    /// Changes in revision order (keys without the prefix).
    Changes(Vec<Change>),
    /// Every change up to this revision was sent.
    Progress(Revision),
}

/// An etcd watch of every key under `prefix`, from revision `from` on.
struct EtcdWatch {
    stream: tonic::Streaming<pb::WatchResponse>,
    /// Keeps the request side of the stream open.
    _requests: mpsc::Sender<pb::WatchRequest>,
    prefix_len: usize,
}

impl EtcdWatch {
    async fn open(endpoints: &Endpoints, prefix: &[u8], from: Revision) -> Result<Self, Broken> {
        let (tx, rx) = mpsc::channel(1);
        let create = pb::WatchRequest {
            request_union: Some(pb::watch_request::RequestUnion::CreateRequest(
                pb::WatchCreateRequest {
                    key: prefix.to_vec(),
                    range_end: prefix_end(prefix),
                    start_revision: from as i64,
                    progress_notify: true,
                },
            )),
        };
        tx.send(create)
            .await
            .map_err(|e| Broken::Stream(e.to_string()))?;
        let mut requests = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        // A member cut off from the leader then cancels the watch instead of keeping it silent.
        requests.metadata_mut().insert(
            "hasleader",
            tonic::metadata::MetadataValue::from_static("true"),
        );
        let mut client = WatchClient::new(endpoints.any());
        let stream = tokio::time::timeout(endpoints.timeout, client.watch(requests))
            .await
            .map_err(|_| Broken::Stream("no answer".into()))?
            .map_err(|s| Broken::Stream(s.message().to_owned()))?
            .into_inner();
        Ok(EtcdWatch {
            stream,
            _requests: tx,
            prefix_len: prefix.len(),
        })
    }

    /// The next response, or why the watch ended.
    async fn next(&mut self) -> Result<Batch, Broken> {
        let resp = match self.stream.message().await {
            Ok(Some(r)) => r,
            Ok(None) => return Err(Broken::Stream("stream ended".into())),
            Err(s) => return Err(Broken::Stream(s.message().to_owned())),
        };
        if resp.canceled {
            return Err(if resp.compact_revision > 0 {
                Broken::Compacted(resp.compact_revision as Revision)
            } else {
                Broken::Stream(format!("watch cancelled: {}", resp.cancel_reason))
            });
        }
        if resp.created {
            return Ok(Batch::Created);
        }
        if resp.events.is_empty() {
            let header = resp.header.map_or(0, |h| h.revision.max(0) as Revision);
            return Ok(Batch::Progress(header));
        }
        let n = self.prefix_len;
        let changes = resp
            .events
            .into_iter()
            .filter_map(|e| {
                let kv = e.kv?;
                let deleted = e.r#type == pb::event::EventType::Delete as i32;
                Some(Change {
                    revision: kv.mod_revision.max(0) as Revision,
                    key: kv.key.get(n..)?.to_vec(),
                    value: (!deleted).then_some(kv.value),
                })
            })
            .collect();
        Ok(Batch::Changes(changes))
    }
}

/// One watch: applies every change to the cache in revision order until the stream ends.
async fn watch_from(endpoints: &Endpoints, prefix: &[u8], cache: &Cache, from: Revision) -> Broken {
    let mut watch = match EtcdWatch::open(endpoints, prefix, from).await {
        Ok(w) => w,
        Err(broken) => return broken,
    };
    loop {
        let changes = match watch.next().await {
            Err(broken) => return broken,
            Ok(Batch::Created) => {
                cache.set_live(true);
                continue;
            }
            Ok(Batch::Progress(revision)) => {
                let mut state = cache.write();
                state.revision = state.revision.max(revision);
                let revision = state.revision;
                drop(state);
                cache.applied.send_replace(revision);
                continue;
            }
            Ok(Batch::Changes(changes)) => changes,
        };
        let mut state = cache.write();
        let mut revision = state.revision;
        for c in changes {
            revision = revision.max(c.revision);
            match c.value {
                Some(v) => state.map.insert(c.key, v),
                None => state.map.remove(&c.key),
            };
        }
        state.revision = revision;
        drop(state);
        cache.applied.send_replace(revision);
    }
}

/// The changes under `prefix` after `after`, for [`Store::watch`]: its own etcd watch, resumed
/// from the last revision delivered when it breaks (nothing lost or repeated).
async fn changes_after(
    endpoints: Arc<Endpoints>,
    prefix: Vec<u8>,
    mut after: Revision,
    tx: mpsc::Sender<Result<Change, StoreError>>,
) {
    let mut delay = Duration::from_millis(50);
    while !tx.is_closed() {
        let mut watch = match EtcdWatch::open(&endpoints, &prefix, after + 1).await {
            Ok(w) => w,
            Err(Broken::Compacted(oldest)) => {
                let _ = tx.send(Err(StoreError::Compacted(oldest))).await;
                return;
            }
            Err(Broken::Stream(error)) => {
                tracing::debug!(%error, "etcd watch: reconnecting");
                endpoints.rotate();
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        loop {
            let next = tokio::select! {
                _ = tx.closed() => return,
                next = watch.next() => next,
            };
            match next {
                Ok(Batch::Changes(changes)) => {
                    delay = Duration::from_millis(50);
                    for c in changes {
                        after = after.max(c.revision);
                        if tx.send(Ok(c)).await.is_err() {
                            return;
                        }
                    }
                }
                Ok(Batch::Created | Batch::Progress(_)) => {}
                Err(Broken::Compacted(oldest)) => {
                    let _ = tx.send(Err(StoreError::Compacted(oldest))).await;
                    return;
                }
                Err(Broken::Stream(error)) => {
                    tracing::debug!(%error, "etcd watch: resuming");
                    endpoints.rotate();
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                    break;
                }
            }
        }
    }
}

impl Store for EtcdStore {
    fn get<'a>(&'a self, key: &'a [u8]) -> StoreFuture<'a, Option<Vec<u8>>> {
        Box::pin(async move {
            {
                let state = self.cache.read();
                if state.live {
                    return Ok(state.map.get(key).cloned());
                }
            }
            let full = self.full(key);
            let rows = self.range(full.clone(), Vec::new()).await?;
            Ok(rows.into_iter().next().map(|(_, v)| v))
        })
    }

    fn scan<'a>(&'a self, prefix: &'a [u8]) -> StoreFuture<'a, Rows> {
        Box::pin(async move {
            {
                let state = self.cache.read();
                if state.live {
                    return Ok(state
                        .map
                        .range(prefix.to_vec()..)
                        .take_while(|(k, _)| k.starts_with(prefix))
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect());
                }
            }
            let full = self.full(prefix);
            let end = prefix_end(&full);
            self.range(full, end).await
        })
    }

    fn revision(&self) -> Revision {
        self.cache.read().revision
    }

    fn watch(&self, prefix: &[u8], after: Revision) -> ChangeStream {
        let after = if after == 0 {
            self.cache.read().revision
        } else {
            after
        };
        let (tx, rx) = mpsc::channel(1024);
        let full = self.full(prefix);
        let endpoints = self.endpoints.clone();
        let stop = self.stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = changes_after(endpoints, full, after, tx) => {}
            }
        });
        // Keys come back without the watched (full) prefix; put the store-relative part back.
        let prefix = prefix.to_vec();
        tokio_stream::wrappers::ReceiverStream::new(rx)
            .map(move |c| {
                c.map(|mut c| {
                    c.key = [prefix.as_slice(), &c.key].concat();
                    c
                })
            })
            .boxed()
    }

    fn commit(&self, txn: Txn) -> StoreFuture<'_, Revision> {
        Box::pin(self.writer.commit(txn))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prefix_end_covers_exactly_the_prefix() {
        assert_eq!(prefix_end(b"/switchyard/"), b"/switchyard0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
    }
}
