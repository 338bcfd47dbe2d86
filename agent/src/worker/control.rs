//! A worker's control socket: the worker serves NativeProcessService (and its web or router
//! controls) on a Unix domain socket in the agent's runtime directory (directory 0700, socket
//! 0600). The agent connects with a tonic channel.
//!
//! Who may connect: the worker's agent, which is not always its parent (a new agent adopts the
//! workers of the previous one, see `docs/operations.md`, "Upgrading an agent"). The rule: the
//! peer runs as the worker's own uid (SO_PEERCRED) and opens the connection with the runtime
//! directory's agent key, a random secret in `agent.key` (0600) that only the agent's user can
//! read. The key is a preamble sent before HTTP/2 starts; a connection without it is closed.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tonic::transport::{Channel, Endpoint, Uri};

/// The agent key's file in the runtime directory.
pub const KEY_FILE: &str = "agent.key";
/// What a control connection starts with, before the key.
const MAGIC: &[u8; 8] = b"SWYCTL1\n";
/// Time a new connection has to present the key.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);

/// The secret that proves a connection comes from the runtime directory's agent.
#[derive(Clone, PartialEq, Eq)]
pub struct AgentKey([u8; 32]);

impl std::fmt::Debug for AgentKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AgentKey(..)")
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl AgentKey {
    /// The key of `runtime_dir`, created (0600) when it has none yet.
    pub fn load_or_create(runtime_dir: &Path) -> std::io::Result<Self> {
        let path = runtime_dir.join(KEY_FILE);
        match Self::load(&path) {
            Ok(key) => return Ok(key),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let key = AgentKey(rand::random());
        let tmp = runtime_dir.join(format!(".{KEY_FILE}.{}", std::process::id()));
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        writeln!(file, "{}", hex(&key.0))?;
        drop(file);
        std::fs::rename(&tmp, &path)?;
        Ok(key)
    }

    /// The key in `path`.
    pub fn load(path: &Path) -> std::io::Result<Self> {
        let text = std::fs::read_to_string(path)?;
        let text = text.trim();
        let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "malformed agent key");
        if text.len() != 64 || !text.is_ascii() {
            return Err(bad());
        }
        let mut key = [0u8; 32];
        for (i, byte) in key.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(AgentKey(key))
    }

    fn preamble(&self) -> [u8; 40] {
        let mut out = [0u8; 40];
        out[..8].copy_from_slice(MAGIC);
        out[8..].copy_from_slice(&self.0);
        out
    }

    /// Compares in constant time.
    fn matches(&self, preamble: &[u8; 40]) -> bool {
        let expected = self.preamble();
        expected
            .iter()
            .zip(preamble)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

/// Creates the runtime directory with mode 0700 (tightening it if it exists).
pub fn ensure_runtime_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// The control socket path of worker `id`.
pub fn socket_path(runtime_dir: &Path, id: &str) -> PathBuf {
    runtime_dir.join(format!("{id}.sock"))
}

/// Binds the control socket (mode 0600) and yields the connections that pass the rule above;
/// `on_agent` is told the pid of each accepted peer (the agent serving this worker now).
pub fn listen(
    path: &Path,
    key: AgentKey,
    on_agent: impl Fn(u32) + Send + Sync + 'static,
) -> std::io::Result<impl Stream<Item = std::io::Result<UnixStream>> + Send + 'static> {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let key = Arc::new(key);
    let on_agent = Arc::new(on_agent);
    let uid = nix::unistd::geteuid().as_raw();
    tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    if tx.send(Err(e)).await.is_err() {
                        return;
                    }
                    continue;
                }
            };
            let (tx, key, on_agent) = (tx.clone(), key.clone(), on_agent.clone());
            // One task per connection: a peer that sends nothing delays nobody else.
            tokio::spawn(async move {
                match handshake(stream, &key, uid).await {
                    Ok((stream, pid)) => {
                        on_agent(pid);
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Err(why) => tracing::warn!(%why, "refused a control connection"),
                }
            });
        }
    });
    Ok(tokio_stream::wrappers::ReceiverStream::new(rx))
}

/// Checks the peer's uid and key; returns the stream and the peer's pid.
async fn handshake(
    mut stream: UnixStream,
    key: &AgentKey,
    uid: u32,
) -> Result<(UnixStream, u32), String> {
    let cred = stream
        .peer_cred()
        .map_err(|e| format!("no peer credentials: {e}"))?;
    let pid = cred.pid().and_then(|p| u32::try_from(p).ok()).unwrap_or(0);
    if cred.uid() != uid {
        return Err(format!(
            "peer pid {pid} runs as uid {}, not {uid}",
            cred.uid()
        ));
    }
    let mut preamble = [0u8; 40];
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, stream.read_exact(&mut preamble)).await {
        Ok(Ok(_)) if key.matches(&preamble) => Ok((stream, pid)),
        Ok(Ok(_)) => Err(format!("peer pid {pid} did not present the agent key")),
        Ok(Err(e)) => Err(format!("peer pid {pid}: {e}")),
        Err(_) => Err(format!(
            "peer pid {pid} sent no agent key within {HANDSHAKE_TIMEOUT:?}"
        )),
    }
}

/// A channel to the worker whose control socket is `path` (connects on first use, reconnects),
/// presenting `key` on every connection.
pub fn channel(path: PathBuf, key: AgentKey) -> Channel {
    Endpoint::from_static("http://worker.invalid").connect_with_connector_lazy(tower::service_fn(
        move |_: Uri| {
            let (path, preamble) = (path.clone(), key.preamble());
            async move {
                let mut stream = UnixStream::connect(path).await?;
                stream.write_all(&preamble).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    #[test]
    fn a_key_is_created_once_private_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let key = AgentKey::load_or_create(dir.path()).unwrap();
        let mode = std::fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(AgentKey::load_or_create(dir.path()).unwrap(), key);
        std::fs::write(dir.path().join(KEY_FILE), "short\n").unwrap();
        assert!(AgentKey::load_or_create(dir.path()).is_err());
    }

    #[tokio::test]
    async fn only_connections_with_the_key_get_through() {
        let dir = tempfile::tempdir().unwrap();
        let key = AgentKey::load_or_create(dir.path()).unwrap();
        let path = dir.path().join("w.sock");
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = seen.clone();
        let mut incoming = listen(&path, key.clone(), move |pid| {
            sink.lock().unwrap().push(pid);
        })
        .unwrap();

        // Wrong key: closed, never yielded.
        let mut bad = UnixStream::connect(&path).await.unwrap();
        let other = AgentKey([7; 32]);
        bad.write_all(&other.preamble()).await.unwrap();
        let mut buf = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(5), bad.read(&mut buf))
            .await
            .unwrap()
            .unwrap_or(0);
        assert_eq!(n, 0, "a connection with the wrong key is closed");

        // The right key: yielded, and the peer's pid reported.
        let mut good = UnixStream::connect(&path).await.unwrap();
        good.write_all(&key.preamble()).await.unwrap();
        let accepted = tokio::time::timeout(Duration::from_secs(5), incoming.next())
            .await
            .unwrap();
        assert!(matches!(accepted, Some(Ok(_))));
        assert_eq!(*seen.lock().unwrap(), [std::process::id()]);
    }
}
