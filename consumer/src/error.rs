//! The consumer's error type: the client's errors, and what the consumer adds — settings it
//! checks, a server not ready for streaming ([`PreflightReport`]), a router's spill files, and
//! a stream failure every router reader sees.
//!
//! This module depends on nothing above it: the preflight report is a leaf module
//! ([`crate::report`]).

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

pub use wal2arrow_client::{DbError, ErrorClass};

use crate::report::{Outcome, PreflightReport};

/// Everything that can go wrong in the consumer.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// Talking to PostgreSQL failed: connecting, authenticating, streaming, decoding.
    Client(wal2arrow_client::Error),
    /// The consumer's settings are invalid; the message names the setting and what it
    /// accepts.
    Config(String),
    /// The server is not ready for streaming: the report says what failed and how to fix it.
    Preflight(Box<PreflightReport>),
    /// A router queue could not spill to (or read back from) its file in `spill_dir`.
    Spill {
        /// The spill file.
        path: PathBuf,
        /// What was being done.
        action: String,
        /// The cause.
        source: std::io::Error,
    },
    /// An Arrow computation on a batch failed (splitting it by key).
    Arrow(arrow_schema::ArrowError),
    /// The stream feeding a router's readers failed (every reader sees the same error).
    Upstream(Arc<Error>),
    /// The stream has ended: nothing more can be asked of it.
    Ended,
    /// A task of the consumer panicked (a bug; the panic message was printed): what it was.
    Panicked(String),
}

impl Error {
    /// How to handle this error: retry the transient, fix what a definite one names, correct
    /// the settings.
    pub fn class(&self) -> ErrorClass {
        match self {
            Error::Client(e) => e.class(),
            Error::Config(_) => ErrorClass::Configuration,
            Error::Preflight(_)
            | Error::Spill { .. }
            | Error::Arrow(_)
            | Error::Ended
            | Error::Panicked(_) => ErrorClass::Definite,
            Error::Upstream(e) => e.class(),
        }
    }

    /// Whether retrying (reconnecting with backoff) can help.
    pub fn is_transient(&self) -> bool {
        self.class() == ErrorClass::Transient
    }

    /// The SQLSTATE code, when the server sent one.
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Client(e) => e.code(),
            Error::Upstream(e) => e.code(),
            _ => None,
        }
    }

    /// The server's error, when it sent one.
    pub fn db_error(&self) -> Option<&DbError> {
        match self {
            Error::Client(e) => e.db_error(),
            Error::Upstream(e) => e.db_error(),
            _ => None,
        }
    }

    /// The client's error underneath, if this is one.
    pub fn client_error(&self) -> Option<&wal2arrow_client::Error> {
        match self {
            Error::Client(e) => Some(e),
            Error::Upstream(e) => e.client_error(),
            _ => None,
        }
    }

    /// Whether this is the server refusing to let us in (see
    /// [`wal2arrow_client::Error::is_login_failure`]).
    pub fn is_login_failure(&self) -> bool {
        self.client_error().is_some_and(wal2arrow_client::Error::is_login_failure)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Client(e) => write!(f, "{e}"),
            Error::Config(m) => write!(f, "invalid configuration: {m}"),
            Error::Upstream(e) => write!(f, "{e}"),
            Error::Ended => write!(f, "the stream has ended"),
            Error::Arrow(e) => write!(f, "Arrow: {e}"),
            Error::Panicked(what) => {
                write!(f, "{what} panicked (see the message above); please report it as a bug")
            }
            Error::Spill { path, action, source } => write!(
                f,
                "router spill file: {action} {}: {source} (check spill_dir: its free space and \
                 permissions)",
                path.display()
            ),
            Error::Preflight(r) => {
                writeln!(f, "the server is not ready for wal2arrow:")?;
                for c in r.failures() {
                    if let Outcome::Fail { problem, fix } = &c.outcome {
                        writeln!(f, "  {}: {problem}\n    fix: {fix}", c.name)?;
                    }
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Client(e) => Some(e),
            Error::Spill { source, .. } => Some(source),
            Error::Arrow(e) => Some(e),
            Error::Upstream(e) => Some(e.as_ref()),
            _ => None,
        }
    }
}

impl From<wal2arrow_client::Error> for Error {
    fn from(e: wal2arrow_client::Error) -> Self {
        match e {
            // The client's configuration errors are the consumer's.
            wal2arrow_client::Error::Config(m) => Error::Config(m),
            e => Error::Client(e),
        }
    }
}

impl From<tokio_postgres::Error> for Error {
    fn from(e: tokio_postgres::Error) -> Self {
        Error::Client(e.into())
    }
}

/// The consumer's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
