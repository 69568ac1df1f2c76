//! The one error type of the core and its [`ErrorKind`], the single source of C status codes
//! and Python exception classes.
//!
//! Everything builds on this module, so it builds on nothing of the crate's but the crypto
//! errors it converts: the lifecycle rule a [`ErrorKind::State`] error reports is a
//! violation of the state machine (`state.rs`), which builds on the model,
//! which builds on this module. The error holds it without naming its type here; the state
//! machine converts its violations into errors and reads them back ([`Error::violation`]).

use std::fmt;

/// Broad class of an error; stable, used to pick C status codes and Python exceptions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Bad input from the caller (malformed id, price out of range, bad config value...).
    Validation,
    /// The operation is not allowed in the seed's current state (wrong status, not the
    /// publisher, bid window closed...).
    State,
    /// The seed (or other object) does not exist here.
    NotFound,
    /// The database failed or is unusable.
    Store,
    /// The transport failed.
    Network,
    /// A cryptographic check failed.
    Crypto,
    /// The task runner could not run the command.
    Runner,
    /// The resource is held by someone else (another listener on the data directory, a run in
    /// progress).
    Busy,
    /// Invalid configuration.
    Config,
    /// File system or other I/O failure.
    Io,
    /// The node has been stopped.
    Stopped,
    /// A bug: an invariant did not hold.
    Internal,
}

impl ErrorKind {
    /// Every kind, for bindings that map each one to their own error type.
    pub const ALL: [ErrorKind; 12] = [
        ErrorKind::Validation,
        ErrorKind::State,
        ErrorKind::NotFound,
        ErrorKind::Store,
        ErrorKind::Network,
        ErrorKind::Crypto,
        ErrorKind::Runner,
        ErrorKind::Busy,
        ErrorKind::Config,
        ErrorKind::Io,
        ErrorKind::Stopped,
        ErrorKind::Internal,
    ];

    /// Parses a kind name (see [`ErrorKind::as_str`]).
    pub fn parse(name: &str) -> Option<ErrorKind> {
        Self::ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// A short stable name for the kind.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Validation => "validation",
            ErrorKind::State => "state",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Store => "store",
            ErrorKind::Network => "network",
            ErrorKind::Crypto => "crypto",
            ErrorKind::Runner => "runner",
            ErrorKind::Busy => "busy",
            ErrorKind::Config => "config",
            ErrorKind::Io => "io",
            ErrorKind::Stopped => "stopped",
            ErrorKind::Internal => "internal",
        }
    }
}

crate::display_as_str!(ErrorKind);

/// An error from the Crabnet core: a kind, a human-readable message and, for lifecycle
/// errors, the rule that was violated.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    kind: ErrorKind,
    message: String,
    /// The broken rule (a `state::Violation`), see the module docs.
    violation: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl Error {
    /// Creates an error of the given kind.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
            violation: None,
            source: None,
        }
    }

    /// Creates an error with an underlying cause.
    pub fn with_source(
        kind: ErrorKind,
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Error {
            kind,
            message: message.into(),
            violation: None,
            source: Some(Box::new(source)),
        }
    }

    /// An error that reports the broken rule `rule`, with the rule's message.
    pub(crate) fn with_rule(
        kind: ErrorKind,
        rule: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Error {
            kind,
            message: rule.to_string(),
            violation: Some(Box::new(rule)),
            source: None,
        }
    }

    /// The broken rule, if it is a `T`.
    pub(crate) fn rule<T: std::error::Error + 'static>(&self) -> Option<&T> {
        self.violation.as_deref()?.downcast_ref()
    }

    /// The error's kind.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    pub(crate) fn internal(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::Internal, message)
    }
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        let busy = matches!(
            e.sqlite_error_code(),
            Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
        );
        let kind = if busy {
            ErrorKind::Busy
        } else {
            ErrorKind::Store
        };
        Error::with_source(kind, format!("database error: {e}"), e)
    }
}

/// Implements `From<$source> for Error`: an error of kind `ErrorKind::$kind` with the source's
/// message, and the source itself as the error's source.
macro_rules! error_from {
    ($source:ty => $kind:ident) => {
        impl From<$source> for $crate::error::Error {
            fn from(e: $source) -> Self {
                use $crate::error::{Error, ErrorKind};
                Error::with_source(ErrorKind::$kind, e.to_string(), e)
            }
        }
    };
}
pub(crate) use error_from;

error_from!(crate::crypto::CryptoError => Crypto);

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::with_source(ErrorKind::Io, format!("i/o error: {e}"), e)
    }
}

/// A [`ErrorKind::Config`] error naming `key` and the allowed range unless
/// `min <= value <= max`.
pub(crate) fn check_range<T: PartialOrd + fmt::Display>(
    key: &str,
    value: T,
    min: T,
    max: T,
) -> Result<()> {
    if value < min || value > max {
        return Err(Error::new(
            ErrorKind::Config,
            format!("{key} must be between {min} and {max} (got {value})"),
        ));
    }
    Ok(())
}

/// Result alias for the core.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Asserts that `result` is an error whose message contains `needle` (for tests).
#[cfg(test)]
#[track_caller]
pub(crate) fn assert_err_contains<T: fmt::Debug>(result: Result<T>, needle: &str) {
    let e = result.unwrap_err().to_string();
    assert!(e.contains(needle), "{e:?} does not contain {needle:?}");
}
