//! The one mapping from Switchyard's error vocabulary to gRPC (README, "Errors").
//!
//! The reference's WAMP error URIs become a gRPC code plus a `google.rpc.ErrorInfo` whose
//! `reason` clients branch on (domain `switchyard`). Each crate keeps one
//! `impl From<Error> for tonic::Status` that calls into this module; nothing else builds
//! error statuses by hand.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// The `ErrorInfo.domain` of every Switchyard error.
pub const DOMAIN: &str = "switchyard";

/// `ErrorInfo.reason` values and the gRPC code each maps to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// wamp.error.invalid_argument
    InvalidArgument,
    /// wamp.error.invalid_configuration
    InvalidConfiguration,
    /// crossbar.error.no_such_object
    NoSuchObject,
    /// crossbar.error.already_exists
    AlreadyExists,
    /// crossbar.error.not_stopped
    NotStopped,
    /// crossbar.error.cannot_start
    CannotStart,
    /// crossbar.error.cannot_stop
    CannotStop,
    /// wamp.error.not_authorized
    NotAuthorized,
    /// crossbar.error.feature_unavailable
    FeatureUnavailable,
    /// crossbar.error.already_started
    AlreadyStarted,
    /// crossbar.error.not_started
    NotStarted,
    /// crossbar.error.cannot_listen
    CannotListen,
    /// A node is offline or unreachable.
    NodeUnavailable,
    /// The master's store (etcd) is unreachable or has no quorum.
    StoreUnavailable,
    /// The object is still used by another (e.g. a node that is a cluster member).
    InUse,
    /// The object changed concurrently; read it again and retry.
    ConcurrentChange,
    /// No client certificate where one is required (only `NodeService/JoinNode` is open
    /// without one).
    Unauthenticated,
    /// The caller's certificate has expired (a connection opened before it did).
    CertificateExpired,
    /// The caller's certificate was revoked: its node was removed.
    CertificateRevoked,
    /// The join token is unknown or its secret is wrong.
    TokenInvalid,
    /// The join token has expired.
    TokenExpired,
    /// The join token has been used as often as it may.
    TokenExhausted,
    /// The join token was revoked.
    TokenRevoked,
    /// The join token does not allow this node name (its name prefix).
    NameNotAllowed,
    /// A control call from a master whose leadership epoch is older than the newest this agent
    /// has seen: a deposed leader (docs/operations.md, "Several masters").
    StaleLeader,
    /// Anything else: logged with context, never detailed to the client.
    Internal,
}

impl Reason {
    /// The `ErrorInfo.reason` string.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::InvalidArgument => "INVALID_ARGUMENT",
            Reason::InvalidConfiguration => "INVALID_CONFIGURATION",
            Reason::NoSuchObject => "NO_SUCH_OBJECT",
            Reason::AlreadyExists => "ALREADY_EXISTS",
            Reason::NotStopped => "NOT_STOPPED",
            Reason::CannotStart => "CANNOT_START",
            Reason::CannotStop => "CANNOT_STOP",
            Reason::NotAuthorized => "NOT_AUTHORIZED",
            Reason::FeatureUnavailable => "FEATURE_UNAVAILABLE",
            Reason::AlreadyStarted => "ALREADY_STARTED",
            Reason::NotStarted => "NOT_STARTED",
            Reason::CannotListen => "CANNOT_LISTEN",
            Reason::NodeUnavailable => "NODE_UNAVAILABLE",
            Reason::StoreUnavailable => "STORE_UNAVAILABLE",
            Reason::InUse => "IN_USE",
            Reason::ConcurrentChange => "CONCURRENT_CHANGE",
            Reason::Unauthenticated => "UNAUTHENTICATED",
            Reason::CertificateExpired => "CERTIFICATE_EXPIRED",
            Reason::CertificateRevoked => "CERTIFICATE_REVOKED",
            Reason::TokenInvalid => "TOKEN_INVALID",
            Reason::TokenExpired => "TOKEN_EXPIRED",
            Reason::TokenExhausted => "TOKEN_EXHAUSTED",
            Reason::TokenRevoked => "TOKEN_REVOKED",
            Reason::NameNotAllowed => "NAME_NOT_ALLOWED",
            Reason::StaleLeader => "STALE_LEADER",
            Reason::Internal => "INTERNAL",
        }
    }

    /// The gRPC code of this reason.
    pub fn code(self) -> Code {
        match self {
            Reason::InvalidArgument | Reason::InvalidConfiguration => Code::InvalidArgument,
            Reason::NoSuchObject => Code::NotFound,
            Reason::AlreadyExists => Code::AlreadyExists,
            Reason::NotStopped
            | Reason::CannotStart
            | Reason::CannotStop
            | Reason::AlreadyStarted
            | Reason::NotStarted
            | Reason::InUse
            | Reason::StaleLeader => Code::FailedPrecondition,
            Reason::ConcurrentChange => Code::Aborted,
            Reason::NotAuthorized
            | Reason::CertificateRevoked
            | Reason::TokenInvalid
            | Reason::TokenExpired
            | Reason::TokenExhausted
            | Reason::TokenRevoked
            | Reason::NameNotAllowed => Code::PermissionDenied,
            Reason::Unauthenticated | Reason::CertificateExpired => Code::Unauthenticated,
            Reason::FeatureUnavailable => Code::Unimplemented,
            Reason::CannotListen | Reason::NodeUnavailable | Reason::StoreUnavailable => {
                Code::Unavailable
            }
            Reason::Internal => Code::Internal,
        }
    }
}

/// A status with the code of `reason` and an `ErrorInfo` carrying it.
pub fn status(reason: Reason, message: impl Into<String>) -> Status {
    let details = ErrorDetails::with_error_info(reason.as_str(), DOMAIN, []);
    Status::with_error_details(reason.code(), message, details)
}

/// INVALID_ARGUMENT naming the offending field, with a `BadRequest` field violation: the call is
/// malformed (a required field missing, a malformed oid, a bad name).
pub fn invalid_argument(field: &str, description: impl Into<String>) -> Status {
    bad_field(Reason::InvalidArgument, field, description.into())
}

/// INVALID_ARGUMENT with reason `INVALID_CONFIGURATION` and a `BadRequest` field violation: a
/// service, transport or manhole configuration value is present but unusable (README, "Errors").
pub fn invalid_configuration(field: &str, description: impl Into<String>) -> Status {
    bad_field(Reason::InvalidConfiguration, field, description.into())
}

fn bad_field(reason: Reason, field: &str, description: String) -> Status {
    let mut details = ErrorDetails::with_error_info(reason.as_str(), DOMAIN, []);
    details.add_bad_request_violation(field, description.clone());
    Status::with_error_details(
        reason.code(),
        format!("invalid {field}: {description}"),
        details,
    )
}

/// INTERNAL for an unexpected failure: the detail is logged here, the client sees none of it.
pub fn internal(context: &str, error: &dyn std::fmt::Display) -> Status {
    tracing::error!(%error, context, "internal error");
    status(Reason::Internal, format!("internal error ({context})"))
}

/// The `ErrorInfo.reason` of a status, if it carries one (for clients and tests).
pub fn reason_of(status: &Status) -> Option<String> {
    status.get_details_error_info().map(|info| info.reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_map_to_the_spec_codes() {
        assert_eq!(Reason::NotStopped.code(), Code::FailedPrecondition);
        assert_eq!(Reason::CannotListen.code(), Code::Unavailable);
        assert_eq!(Reason::FeatureUnavailable.code(), Code::Unimplemented);
        assert_eq!(Reason::NoSuchObject.code(), Code::NotFound);
    }

    #[test]
    fn status_carries_error_info_reason() {
        let s = status(Reason::AlreadyExists, "web cluster 'c1' exists");
        assert_eq!(s.code(), Code::AlreadyExists);
        assert_eq!(reason_of(&s).as_deref(), Some("ALREADY_EXISTS"));
    }

    #[test]
    fn invalid_argument_names_the_field() {
        let s = invalid_argument("webcluster.name", "must match ^[a-z][a-z0-9_]{2,63}$");
        assert_eq!(s.code(), Code::InvalidArgument);
        assert!(s.message().contains("webcluster.name"), "{}", s.message());
        let br = s.get_details_bad_request().expect("bad request details");
        assert_eq!(br.field_violations[0].field, "webcluster.name");
    }

    #[test]
    fn invalid_configuration_is_invalid_argument_with_its_own_reason() {
        let s = invalid_configuration("webcluster.tcp_version", "must be 4 or 6");
        assert_eq!(s.code(), Code::InvalidArgument);
        assert_eq!(reason_of(&s).as_deref(), Some("INVALID_CONFIGURATION"));
        assert!(
            s.message().contains("webcluster.tcp_version"),
            "{}",
            s.message()
        );
        let br = s.get_details_bad_request().expect("bad request details");
        assert_eq!(br.field_violations[0].field, "webcluster.tcp_version");
        assert_eq!(br.field_violations[0].description, "must be 4 or 6");
    }
}
