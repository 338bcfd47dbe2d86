//! Shared core of Switchyard: what the master and the agent both need.
//!
//! - [`pb`]: the generated gRPC API (`switchyard.master.v1`, `switchyard.agent.v1`) and the
//!   encoded file descriptor set served by reflection.
//! - [`pki`]: the cluster CA and certificate issuance (`ca init`, `ca issue`), key files 0600.
//! - [`issuer`]: node certificates issued online (CA pins, CSRs, the master's signer);
//!   [`revocation`]: revoked node certificates; [`tls`]: rustls configurations (swappable
//!   server certificates, optional client certificates, the CA-pin verifier).
//! - [`auth`]: principals from certificate URI SANs and the role policy, enforced by one tower
//!   layer per server (docs/security.md).
//! - [`error`]: the single mapping of domain errors to gRPC status codes and `ErrorInfo` reasons
//!   (README, "Errors").
//! - [`server`]: the common gRPC server: mTLS, role layer, reflection v1 + v1alpha, health,
//!   graceful shutdown.
//! - [`telemetry`], [`shutdown`]: tracing set-up and the one cancellation root of a process.
#![forbid(unsafe_code)]

pub mod auth;
pub mod config;
pub mod error;
pub mod fencing;
pub mod issuer;
pub mod metrics;
pub mod pb;
pub mod pki;
pub mod revocation;
pub mod server;
pub mod shutdown;
pub mod telemetry;
pub mod tls;

/// The version of this build, reported by agents and the master.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Exit code for invalid configuration or unusable start-up files (`EX_USAGE`-like, sysexits 64).
pub const EXIT_CONFIG: u8 = 64;
