//! The agent's error type and its one mapping to gRPC (README, "Errors").
//!
//! Domain modules (`worker/`, `process/`, `manhole/`, `web/`, `events`) return [`Error`], whose
//! variants say what failed; the gRPC adapters in `api/` convert it once, with `?`. The
//! conversion picks the code and the `ErrorInfo` reason from the table in `switchyard::error`,
//! logs the detail of internal failures and gives clients only their context, never a path.

use switchyard::error::{Reason, internal, invalid_argument, invalid_configuration, status};

/// What can go wrong in the agent or one of its workers.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A malformed argument: a required field missing, a bad id or name (names the field).
    #[error("invalid {field}: {message}")]
    InvalidArgument {
        /// The offending field.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// A service, transport or manhole configuration value that is present but unusable
    /// (names the field).
    #[error("invalid {field}: {message}")]
    InvalidConfiguration {
        /// The offending field.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// No worker with this id on this node.
    #[error("no worker '{0}' on this node")]
    NoSuchWorker(String),
    /// A worker with this id runs already.
    #[error("worker '{0}' is already running on this node")]
    WorkerRunning(String),
    /// The worker exists but is not started (`status`: its status, lowercase).
    #[error("worker '{id}' is {status}")]
    WorkerNotStarted {
        /// The worker id.
        id: String,
        /// Its status now.
        status: String,
    },
    /// A web-worker control sent to a router worker, or the other way round.
    #[error("worker '{id}' is not a {expected} worker")]
    WrongWorkerType {
        /// The worker id.
        id: String,
        /// "web" or "router".
        expected: &'static str,
    },
    /// The worker process did not come up (`what` happened; the cause is in its log).
    #[error("worker '{id}' {what}")]
    WorkerStart {
        /// The worker id.
        id: String,
        /// What happened, e.g. "did not answer within 10s".
        what: String,
    },
    /// The worker has its transport already.
    #[error("{kind} worker '{worker}' already has a transport")]
    TransportStarted {
        /// "web" or "router".
        kind: &'static str,
        /// The worker id.
        worker: String,
    },
    /// The worker has no transport yet.
    #[error("{kind} worker '{worker}' has no transport")]
    NoTransport {
        /// "web" or "router".
        kind: &'static str,
        /// The worker id.
        worker: String,
    },
    /// A port or endpoint cannot be listened on.
    #[error("{0}")]
    CannotListen(String),
    /// A web service is mounted on this path already.
    #[error("a service is already mounted on {0}")]
    ServiceExists(String),
    /// No web service is mounted on this path.
    #[error("no service on {0}")]
    NoSuchService(String),
    /// The router worker serves no such realm.
    #[error("no realm '{0}'")]
    NoSuchRealm(String),
    /// A link names a realm the router worker does not serve.
    #[error("realm '{0}' is not started on this worker")]
    RealmNotStarted(String),
    /// A link needs the transport's link secret, and there is none yet.
    #[error("the worker has no transport with a link secret; start it first")]
    NoLinkSecret,
    /// The router worker has no such link.
    #[error("no link '{0}'")]
    NoSuchLink(String),
    /// This process runs a manhole already.
    #[error("a manhole is already running in this process")]
    ManholeRunning,
    /// This process runs no manhole.
    #[error("no manhole runs in this process")]
    NoManhole,
    /// A `Watch` fell behind the bus and lost events.
    #[error("watcher too slow: {0} events dropped; reconnect")]
    WatcherLagged(u64),
    /// A log follower fell behind and lost lines.
    #[error("log follower too slow: {0} lines dropped; reconnect")]
    LogFollowerLagged(u64),
    /// An unexpected failure: clients see `context` only, the log gets `detail`.
    #[error("{context}: {detail}")]
    Internal {
        /// What was being done, e.g. "process stats".
        context: &'static str,
        /// The cause (may name paths: never sent to clients).
        detail: String,
    },
}

/// Shorthand for results of the agent's domain modules.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A malformed argument, naming `field`.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::InvalidArgument {
            field: field.into(),
            message: message.into(),
        }
    }

    /// An unusable configuration value, naming `field`.
    pub fn invalid_config(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::InvalidConfiguration {
            field: field.into(),
            message: message.into(),
        }
    }

    /// An unexpected failure while doing `context`.
    pub fn internal(context: &'static str, detail: impl std::fmt::Display) -> Self {
        Error::Internal {
            context,
            detail: detail.to_string(),
        }
    }

    /// The reason clients branch on (the table in `src/error.rs`); `None` for the lag errors,
    /// which end a stream with RESOURCE_EXHAUSTED and no reason.
    fn reason(&self) -> Option<Reason> {
        Some(match self {
            Error::InvalidArgument { .. } => Reason::InvalidArgument,
            Error::InvalidConfiguration { .. } | Error::WrongWorkerType { .. } => {
                Reason::InvalidConfiguration
            }
            Error::NoSuchWorker(_)
            | Error::NoSuchService(_)
            | Error::NoSuchRealm(_)
            | Error::NoSuchLink(_) => Reason::NoSuchObject,
            Error::WorkerRunning(_) | Error::ServiceExists(_) => Reason::AlreadyExists,
            Error::WorkerNotStarted { .. }
            | Error::NoTransport { .. }
            | Error::RealmNotStarted(_)
            | Error::NoLinkSecret
            | Error::NoManhole => Reason::NotStarted,
            Error::TransportStarted { .. } | Error::ManholeRunning => Reason::AlreadyStarted,
            Error::CannotListen(_) => Reason::CannotListen,
            Error::WorkerStart { .. } | Error::Internal { .. } => Reason::Internal,
            Error::WatcherLagged(_) | Error::LogFollowerLagged(_) => return None,
        })
    }
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        match (e.reason(), e) {
            (_, Error::InvalidArgument { field, message }) => invalid_argument(&field, message),
            (_, Error::InvalidConfiguration { field, message }) => {
                invalid_configuration(&field, message)
            }
            (_, Error::Internal { context, detail }) => internal(context, &detail),
            (Some(reason), e) => {
                if reason == Reason::Internal {
                    tracing::error!(error = %e, "internal error");
                }
                status(reason, e.to_string())
            }
            // Lag ends a stream: the code says "reconnect"; there is no reason to branch on.
            (None, e) => tonic::Status::resource_exhausted(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard::error::reason_of;
    use tonic::Code;

    #[test]
    fn each_error_keeps_its_code_and_reason() {
        for (e, code, reason) in [
            (
                Error::invalid("worker_id", "required"),
                Code::InvalidArgument,
                Some("INVALID_ARGUMENT"),
            ),
            (
                Error::invalid_config("transport.tcp_version", "5 is not 4 or 6"),
                Code::InvalidArgument,
                Some("INVALID_CONFIGURATION"),
            ),
            (
                Error::WrongWorkerType {
                    id: "w".into(),
                    expected: "web",
                },
                Code::InvalidArgument,
                Some("INVALID_CONFIGURATION"),
            ),
            (
                Error::NoSuchWorker("w".into()),
                Code::NotFound,
                Some("NO_SUCH_OBJECT"),
            ),
            (
                Error::WorkerRunning("w".into()),
                Code::AlreadyExists,
                Some("ALREADY_EXISTS"),
            ),
            (
                Error::NoTransport {
                    kind: "web",
                    worker: "w".into(),
                },
                Code::FailedPrecondition,
                Some("NOT_STARTED"),
            ),
            (
                Error::ManholeRunning,
                Code::FailedPrecondition,
                Some("ALREADY_STARTED"),
            ),
            (
                Error::CannotListen("cannot listen on 127.0.0.1:1".into()),
                Code::Unavailable,
                Some("CANNOT_LISTEN"),
            ),
            (
                Error::WorkerStart {
                    id: "w".into(),
                    what: "did not answer within 10s".into(),
                },
                Code::Internal,
                Some("INTERNAL"),
            ),
            (Error::WatcherLagged(3), Code::ResourceExhausted, None),
        ] {
            let text = e.to_string();
            let s = tonic::Status::from(e);
            assert_eq!(s.code(), code, "{text}");
            assert_eq!(reason_of(&s).as_deref(), reason, "{text}");
        }
    }

    #[test]
    fn internal_detail_stays_in_the_log() {
        let s = tonic::Status::from(Error::internal(
            "process info",
            "reading /proc/1/fd: permission denied",
        ));
        assert_eq!(s.code(), Code::Internal);
        assert!(!s.message().contains("/proc"), "{}", s.message());
        assert!(s.message().contains("process info"), "{}", s.message());
    }

    #[test]
    fn field_errors_carry_a_bad_request_violation() {
        use tonic_types::StatusExt;
        let s = tonic::Status::from(Error::invalid_config("service.static.directory", "gone"));
        let br = s.get_details_bad_request().expect("BadRequest");
        assert_eq!(br.field_violations[0].field, "service.static.directory");
    }
}
