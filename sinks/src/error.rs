//! The sinks' error type: the stream's errors, and what writing adds — a file or directory
//! that cannot be written (with its path), output that belongs to something else.

use std::fmt;
use std::path::PathBuf;

pub use wal2arrow_consumer::ErrorClass;

/// Everything that can go wrong while feeding a sink.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The change stream failed: connecting, streaming, decoding (see
    /// [`wal2arrow_consumer::Error`]).
    Stream(wal2arrow_consumer::Error),
    /// A file or directory could not be opened, written, synced or read. Never retried as a
    /// connection error: the path and the operating system's reason say what to fix.
    Sink {
        /// The file or directory (`-` for standard output).
        path: PathBuf,
        /// What was being done: `cannot write to`, `cannot fsync`, ….
        action: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The output cannot be used as it is (it holds another source's output, or is damaged),
    /// or a sink option is invalid; the message says what to do.
    Config(String),
    /// Arrow could not build a batch (never for a batch the stream produced).
    Arrow(arrow_schema::ArrowError),
    /// The sink panicked (a bug; the panic message was printed): which.
    Panicked(String),
    /// The Kafka broker refused or lost messages (the message names the topic and what to do);
    /// nothing after them was acknowledged to PostgreSQL.
    Kafka(String),
}

impl Error {
    /// A [`Error::Sink`] error.
    pub fn sink(
        path: impl Into<PathBuf>,
        action: impl Into<String>,
        source: std::io::Error,
    ) -> Error {
        Error::Sink { path: path.into(), action: action.into(), source }
    }

    /// How to handle this error. A sink's errors are definite: the disk will not fix itself
    /// by reconnecting to PostgreSQL.
    pub fn class(&self) -> ErrorClass {
        match self {
            Error::Stream(e) => e.class(),
            Error::Config(_) => ErrorClass::Configuration,
            Error::Sink { .. } | Error::Arrow(_) | Error::Panicked(_) | Error::Kafka(_) => {
                ErrorClass::Definite
            }
        }
    }

    /// Whether retrying can help (only some stream errors).
    pub fn is_transient(&self) -> bool {
        self.class() == ErrorClass::Transient
    }

    /// The SQLSTATE code, when the server sent one.
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Stream(e) => e.code(),
            _ => None,
        }
    }

    /// The stream's error, if this is one.
    pub fn stream_error(&self) -> Option<&wal2arrow_consumer::Error> {
        match self {
            Error::Stream(e) => Some(e),
            _ => None,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Stream(e) => write!(f, "{e}"),
            Error::Sink { path, action, source } => {
                write!(f, "sink error: {action} {}: {source}", path.display())
            }
            Error::Config(m) => write!(f, "{m}"),
            Error::Kafka(m) => write!(f, "sink error: {m}"),
            Error::Arrow(e) => write!(f, "sink error: Arrow: {e}"),
            Error::Panicked(what) => write!(
                f,
                "sink error: {what} panicked (see the message above); please report it as a bug"
            ),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Stream(e) => Some(e),
            Error::Sink { source, .. } => Some(source),
            Error::Arrow(e) => Some(e),
            Error::Config(_) | Error::Panicked(_) | Error::Kafka(_) => None,
        }
    }
}

impl From<wal2arrow_consumer::Error> for Error {
    fn from(e: wal2arrow_consumer::Error) -> Self {
        Error::Stream(e)
    }
}

impl From<wal2arrow_consumer::client::Error> for Error {
    fn from(e: wal2arrow_consumer::client::Error) -> Self {
        Error::Stream(e.into())
    }
}

impl From<arrow_schema::ArrowError> for Error {
    fn from(e: arrow_schema::ArrowError) -> Self {
        Error::Arrow(e)
    }
}

/// The sinks' result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
