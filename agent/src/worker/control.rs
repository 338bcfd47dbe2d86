//! A worker's control socket: the worker serves NativeProcessService on a Unix domain socket in
//! the agent's runtime directory (directory 0700, socket 0600), and accepts connections only from
//! its parent agent (checked with SO_PEERCRED). The agent connects with a tonic channel.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use futures::Stream;
use hyper_util::rt::TokioIo;
use tokio::net::{UnixListener, UnixStream};
use tonic::transport::{Channel, Endpoint, Uri};

/// Creates the runtime directory with mode 0700 (tightening it if it exists).
pub fn ensure_runtime_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// The control socket path of worker `id`.
pub fn socket_path(runtime_dir: &Path, id: &str) -> PathBuf {
    runtime_dir.join(format!("{id}.sock"))
}

/// Binds the control socket (mode 0600) and yields only connections from process `parent`.
pub fn listen(
    path: &Path,
    parent: u32,
) -> std::io::Result<impl Stream<Item = std::io::Result<UnixStream>> + Send + 'static> {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(futures::stream::unfold(
        listener,
        move |listener| async move {
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => {
                        let peer = stream.peer_cred().ok().and_then(|c| c.pid());
                        if peer == Some(parent as i32) {
                            return Some((Ok(stream), listener));
                        }
                        tracing::warn!(?peer, "refused a control connection not from the agent");
                    }
                    Err(e) => return Some((Err(e), listener)),
                }
            }
        },
    ))
}

/// A channel to the worker whose control socket is `path` (connects on first use, reconnects).
pub fn channel(path: PathBuf) -> Channel {
    Endpoint::from_static("http://worker.invalid").connect_with_connector_lazy(tower::service_fn(
        move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        },
    ))
}
