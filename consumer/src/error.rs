//! The consumer's error type.
//!
//! Errors are classified the way an operator needs them: [`Error::is_transient`] ones (the
//! connection dropped, the server restarted, a timeout) are worth retrying with backoff; the
//! others are definite (bad credentials, a missing privilege, a misconfigured server, a
//! protocol violation) and say what to change.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use wal2arrow_schema::{Lsn, WireError};

/// An error the server sent (an `ErrorResponse`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DbError {
    /// `ERROR`, `FATAL` or `PANIC`.
    pub severity: String,
    /// The SQLSTATE code, as `42704`.
    pub code: String,
    /// The primary message.
    pub message: String,
    /// Optional detail.
    pub detail: Option<String>,
    /// Optional hint: what to do about it.
    pub hint: Option<String>,
}

impl fmt::Display for DbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} (SQLSTATE {})", self.severity, self.message, self.code)?;
        if let Some(d) = &self.detail {
            write!(f, "\nDETAIL: {d}")?;
        }
        if let Some(h) = &self.hint {
            write!(f, "\nHINT: {h}")?;
        }
        Ok(())
    }
}

/// Everything that can go wrong in the consumer.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is invalid; the message names the setting and what it accepts.
    Config(String),
    /// Could not reach the server (refused, unreachable, DNS, no socket file).
    Connect {
        /// `host:port` tried, or the Unix-domain socket's path.
        addr: String,
        /// What happened.
        source: std::io::Error,
    },
    /// An operation did not finish in time.
    Timeout {
        /// What was being waited for.
        what: &'static str,
        /// How long we waited.
        after: Duration,
    },
    /// The server refused our credentials, or asked for a method we do not support.
    Auth(String),
    /// TLS could not be set up as `sslmode` asks (no TLS on the server, an untrusted or
    /// mismatched certificate).
    Tls(String),
    /// The server reported an error.
    Server(DbError),
    /// An ordinary SQL query (over tokio-postgres) failed.
    Sql(tokio_postgres::Error),
    /// The connection failed or was closed mid-stream.
    Io(std::io::Error),
    /// The server sent something the replication protocol does not allow.
    Protocol(String),
    /// A wal2arrow message could not be decoded.
    Wire {
        /// WAL position of the XLogData that carried it.
        lsn: Lsn,
        /// What is wrong with it.
        source: WireError,
    },
    /// A wal2json message could not be decoded (the fallback path).
    Wal2Json {
        /// WAL position of the XLogData that carried it.
        lsn: Lsn,
        /// What is wrong with it.
        message: String,
    },
    /// The replication slot cannot be used as asked.
    Slot(String),
    /// The server is not ready for streaming: the report says what failed and how to fix it.
    Preflight(Box<crate::preflight::PreflightReport>),
    /// The stream feeding a router's readers failed (every reader sees the same error).
    Upstream(std::sync::Arc<Error>),
    /// A sink could not write its output: the file or directory, what was being done, and the
    /// operating system's error. Never retried as a connection error.
    Sink {
        /// The file or directory (`-` for standard output).
        path: PathBuf,
        /// What was being done: `cannot write to`, `cannot fsync`, ….
        action: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A router queue could not spill to (or read back from) its file in `spill_dir`.
    Spill {
        /// The spill file.
        path: PathBuf,
        /// What was being done.
        action: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The server sent a message larger than `max_message_size` allows: the stream stops
    /// before allocating it.
    MessageTooLarge {
        /// The message's size, as its length word says.
        size: usize,
        /// The limit.
        max: usize,
    },
}

impl Error {
    /// A sink error for `path`.
    pub fn sink(
        path: impl Into<PathBuf>,
        action: impl Into<String>,
        source: std::io::Error,
    ) -> Error {
        Error::Sink { path: path.into(), action: action.into(), source }
    }
}

impl Error {
    /// Whether retrying (reconnecting with backoff) can help: the connection dropped, the
    /// server restarted or is starting up, or we timed out.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Connect { .. } | Error::Timeout { .. } | Error::Io(_) => true,
            // 57P01 admin_shutdown, 57P02 crash_shutdown, 57P03 cannot_connect_now,
            // 55006 object_in_use (slot still held by a dying walsender), 53300 too many
            // connections.
            Error::Server(e) => {
                matches!(e.code.as_str(), "57P01" | "57P02" | "57P03" | "55006" | "53300")
            }
            Error::Sql(e) => e.is_closed() || e.code().is_none(),
            _ => false,
        }
    }

    /// The SQLSTATE code, when the server sent one.
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Server(e) => Some(&e.code),
            Error::Sql(e) => e.code().map(|c| c.code()),
            Error::Upstream(e) => e.code(),
            _ => None,
        }
    }

    /// What to check, for server errors whose SQLSTATE says it (a wrong password, a missing
    /// role or database, a missing privilege).
    pub fn advice(&self) -> Option<&'static str> {
        Some(match self.code()? {
            "28P01" => {
                "check the password: it comes from the connection string (password=), PGPASSWORD \
                 or the password file (~/.pgpass, or PGPASSFILE)"
            }
            "28000" => {
                "check the user name (user=, PGUSER) and that pg_hba.conf lets it connect from \
                 here, to this database, for replication as well"
            }
            "3D000" => "check the database name (dbname=, PGDATABASE)",
            "42501" => "the role lacks a privilege: see `wal2arrow check` for what to grant",
            "53300" => {
                "the server has no free connection slots: retry later, or raise max_connections"
            }
            _ => return None,
        })
    }

    /// Whether this is the server refusing to let us in: bad password, unknown role or
    /// database, or no TLS where `sslmode` requires it.
    pub fn is_login_failure(&self) -> bool {
        matches!(self, Error::Auth(_) | Error::Tls(_))
            || matches!(self.code(), Some("28P01" | "28000" | "3D000"))
    }

    /// The server's error, when it sent one.
    pub fn db_error(&self) -> Option<&DbError> {
        match self {
            Error::Server(e) => Some(e),
            _ => None,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Config(m) => write!(f, "invalid configuration: {m}"),
            Error::Connect { addr, source } => write!(
                f,
                "cannot connect to PostgreSQL at {addr}: {source} (is the server running and \
                 accepting connections there? check host and port, or PGHOST and PGPORT)"
            ),
            Error::Timeout { what, after } => write!(f, "timed out after {after:?} {what}"),
            Error::Auth(m) => write!(f, "authentication failed: {m}"),
            Error::Tls(m) => write!(f, "TLS: {m}"),
            Error::Server(e) => {
                write!(f, "server error: {e}")?;
                if let Some(advice) = self.advice() {
                    write!(f, "\n{advice}")?;
                }
                Ok(())
            }
            Error::Sql(e) => {
                write!(f, "SQL query failed: {e}")?;
                if let Some(source) = std::error::Error::source(e) {
                    write!(f, ": {source}")?;
                }
                Ok(())
            }
            Error::Io(e) => write!(f, "connection failed: {e}"),
            Error::Protocol(m) => write!(f, "replication protocol violation: {m}"),
            Error::Wire { lsn, source } => {
                write!(f, "cannot decode the message at LSN {lsn}: {source}")
            }
            Error::Wal2Json { lsn, message } => {
                write!(f, "cannot decode the wal2json message at LSN {lsn}: {message}")
            }
            Error::Slot(m) => write!(f, "replication slot: {m}"),
            Error::Upstream(e) => write!(f, "{e}"),
            Error::Sink { path, action, source } => {
                write!(f, "sink error: {action} {}: {source}", path.display())
            }
            Error::Spill { path, action, source } => write!(
                f,
                "router spill file: {action} {}: {source} (check spill_dir: its free space and \
                 permissions)",
                path.display()
            ),
            Error::MessageTooLarge { size, max } => write!(
                f,
                "the server sent a message of {size} bytes, more than max_message_size ({max} \
                 bytes): a row that large needs a higher limit (ConsumerBuilder::max_message_size, \
                 --max-message-size); a length like this one can also mean a damaged connection"
            ),
            Error::Preflight(r) => {
                writeln!(f, "the server is not ready for wal2arrow:")?;
                for c in r.failures() {
                    if let crate::preflight::Outcome::Fail { problem, fix } = &c.outcome {
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
            Error::Connect { source, .. } => Some(source),
            Error::Sql(e) => Some(e),
            Error::Io(e) => Some(e),
            Error::Wire { source, .. } => Some(source),
            Error::Upstream(e) => Some(e.as_ref()),
            Error::Sink { source, .. } | Error::Spill { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Io(e)
    }
}

impl From<arrow_schema::ArrowError> for Error {
    fn from(e: arrow_schema::ArrowError) -> Self {
        Error::Protocol(format!("Arrow: {e}"))
    }
}

impl From<tokio_postgres::Error> for Error {
    /// The server's errors become [`Error::Server`] (message, detail, hint and SQLSTATE, as
    /// the server sent them; tokio-postgres itself only says "db error"); others stay
    /// [`Error::Sql`].
    fn from(e: tokio_postgres::Error) -> Self {
        match e.as_db_error() {
            Some(db) => Error::Server(DbError::from(db)),
            None => Error::Sql(e),
        }
    }
}

impl From<&tokio_postgres::error::DbError> for DbError {
    fn from(db: &tokio_postgres::error::DbError) -> DbError {
        DbError {
            severity: db.severity().to_owned(),
            code: db.code().code().to_owned(),
            message: db.message().to_owned(),
            detail: db.detail().map(str::to_owned),
            hint: db.hint().map(str::to_owned),
        }
    }
}

/// The consumer's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
