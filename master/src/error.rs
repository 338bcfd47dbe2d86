//! The master's error type and its one mapping to gRPC (via `switchyard::error`).

use switchyard::error::{Reason, internal, invalid_argument, invalid_configuration, status};

use crate::store::StoreError;

/// What can go wrong in the master's core.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad input; names the field.
    #[error("invalid {field}: {message}")]
    InvalidArgument {
        /// The offending field.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// A service or transport configuration value that is present but unusable; names the
    /// field (reason `INVALID_CONFIGURATION`, README "Errors").
    #[error("invalid {field}: {message}")]
    InvalidConfiguration {
        /// The offending field.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// A domain error with its reason (the table in `src/error.rs`).
    #[error("{message}")]
    Domain {
        /// The reason clients branch on.
        reason: Reason,
        /// What happened.
        message: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Shorthand for results of the master's core.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// INVALID_ARGUMENT naming `field`.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::InvalidArgument {
            field: field.into(),
            message: message.into(),
        }
    }

    /// INVALID_ARGUMENT with reason `INVALID_CONFIGURATION`, naming `field`.
    pub fn invalid_config(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::InvalidConfiguration {
            field: field.into(),
            message: message.into(),
        }
    }

    /// A domain error.
    pub fn domain(reason: Reason, message: impl Into<String>) -> Self {
        Error::Domain {
            reason,
            message: message.into(),
        }
    }

    /// NOT_FOUND (`NO_SUCH_OBJECT`).
    pub fn not_found(what: impl std::fmt::Display) -> Self {
        Error::domain(Reason::NoSuchObject, format!("no such {what}"))
    }
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        match e {
            Error::InvalidArgument { field, message } => invalid_argument(&field, message),
            Error::InvalidConfiguration { field, message } => {
                invalid_configuration(&field, message)
            }
            Error::Domain { reason, message } => status(reason, message),
            Error::Store(StoreError::Unavailable(message)) => {
                status(Reason::StoreUnavailable, message)
            }
            Error::Store(e) => internal("store", &e),
        }
    }
}
