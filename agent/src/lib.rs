//! The Switchyard agent: one per node. It serves the node controller and process control of
//! itself ("controller") and, with later steps, of the worker processes it starts.
//!
//! - [`api`]: the gRPC services.
//! - [`controller`]: facts about the agent process itself (identity, start time).
#![forbid(unsafe_code)]

pub mod api;
pub mod controller;

use std::sync::Arc;

use switchyard::auth::Policy;
use switchyard::server::{self, Security};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// What the agent serves with.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// The node's authid (its certificate's name).
    pub authid: String,
    /// The master's address, for heartbeats.
    pub master: String,
    /// mTLS (the default) or explicit plaintext.
    pub security: Security,
}

/// Runs the agent on `listener` until `shutdown` is cancelled.
pub async fn serve(
    listener: TcpListener,
    options: AgentOptions,
    shutdown: CancellationToken,
) -> Result<(), server::ServeError> {
    let controller = Arc::new(controller::Controller::new(options.authid.clone()));
    let local = listener
        .local_addr()
        .map_or_else(|_| "?".to_owned(), |a| a.to_string());
    tracing::info!(listen = %local, authid = %options.authid, master = %options.master, "agent serving");
    server::serve(
        listener,
        options.security,
        Policy::Agent,
        api::routes(controller),
        switchyard::pb::AGENT_SERVICES,
        shutdown,
    )
    .await?;
    tracing::info!("agent stopped");
    Ok(())
}
