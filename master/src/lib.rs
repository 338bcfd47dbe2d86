//! The Switchyard master: the admin API over the cluster store, the node-facing heartbeat API,
//! the event stream, and (in later steps) the monitors that make started clusters run.
//!
//! - [`api`]: the gRPC services (thin adapters over the core).
//! - [`dev`]: `switchyard-master dev`, a whole local cluster with generated certificates.
//! - [`serve`]: binds everything to a listener until shutdown.
#![forbid(unsafe_code)]

pub mod api;
pub mod dev;

use std::path::PathBuf;

use switchyard::auth::Policy;
use switchyard::server::{self, Security};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// What the master serves with.
#[derive(Debug, Clone)]
pub struct MasterOptions {
    /// Directory of the master's database.
    pub data_dir: PathBuf,
    /// mTLS (the default) or explicit plaintext.
    pub security: Security,
}

/// Errors that stop the master.
#[derive(Debug, thiserror::Error)]
pub enum MasterError {
    /// The data directory is unusable.
    #[error("cannot use data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The gRPC server failed.
    #[error(transparent)]
    Serve(#[from] server::ServeError),
}

/// Runs the master on `listener` until `shutdown` is cancelled.
pub async fn serve(
    listener: TcpListener,
    options: MasterOptions,
    shutdown: CancellationToken,
) -> Result<(), MasterError> {
    std::fs::create_dir_all(&options.data_dir).map_err(|source| MasterError::DataDir {
        path: options.data_dir.clone(),
        source,
    })?;
    let local = listener
        .local_addr()
        .map_or_else(|_| "?".to_owned(), |a| a.to_string());
    tracing::info!(listen = %local, data_dir = %options.data_dir.display(), "master serving");
    server::serve(
        listener,
        options.security,
        Policy::Master,
        api::routes(),
        switchyard::pb::MASTER_SERVICES,
        shutdown,
    )
    .await?;
    tracing::info!("master stopped");
    Ok(())
}
