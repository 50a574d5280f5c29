//! The client's error type.
//!
//! Errors are classified the way an operator needs them ([`Error::class`]): *transient* ones
//! (the connection dropped, the server restarted or is starting up, the slot still held by an
//! exiting session, a timeout) are worth retrying with backoff; *definite* ones (bad
//! credentials, a missing privilege, a misconfigured server, malformed bytes from the server)
//! end the stream and say what to do; *configuration* errors are the caller's settings. The
//! server's errors are classified by SQLSTATE, never by their text, which depends on the
//! server's `lc_messages`; the server's own words (message, detail, hint) are kept for people.

use std::fmt;
use std::time::Duration;

use wal2arrow_schema::{Lsn, WireError};

/// An error the server sent (an `ErrorResponse`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DbError {
    /// `ERROR`, `FATAL` or `PANIC` (not translated: PostgreSQL sends it apart).
    pub severity: String,
    /// The SQLSTATE code, as `42704`.
    pub code: String,
    /// The primary message, in the server's `lc_messages` language.
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

impl std::error::Error for DbError {}

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

/// How an error should be handled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// Retrying, with backoff, can help.
    Transient,
    /// Retrying cannot help: something must change first; the message says what.
    Definite,
    /// The caller's settings are invalid.
    Configuration,
}

/// Everything that can go wrong talking to PostgreSQL.
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
    Auth {
        /// What happened and what to check.
        message: String,
        /// The server's error, when it sent one.
        source: Option<Box<DbError>>,
    },
    /// TLS could not be set up as `sslmode` asks (no TLS on the server, an untrusted or
    /// mismatched certificate).
    Tls(String),
    /// The server reported an error.
    Server(Box<DbError>),
    /// An ordinary SQL query (over tokio-postgres) failed without a server error.
    Sql(tokio_postgres::Error),
    /// The connection failed or was closed mid-stream.
    Io(std::io::Error),
    /// The server sent something the replication protocol does not allow.
    Protocol {
        /// What is wrong.
        message: String,
        /// The last WAL position received before it, when streaming.
        after: Option<Lsn>,
    },
    /// A wal2arrow message could not be decoded.
    Wire {
        /// WAL position of the XLogData that carried it.
        lsn: Lsn,
        /// What is wrong with it.
        source: WireError,
    },
    /// A wal2json message could not be decoded (the fallback path).
    Wal2Json(wal2arrow_wal2json::DecodeError),
    /// The replication slot cannot be used as asked.
    Slot(String),
    /// A snapshot cannot be taken as asked (no `SELECT` on a table); the message says what
    /// to do.
    Snapshot(String),
    /// The exported snapshot a copy was reading is gone: the replication connection that
    /// exported it was closed or used. Transient: a new slot exports a new snapshot, and
    /// the copy starts over (rows already read belong to the lost one).
    SnapshotGone(String),
    /// The server sent a message larger than `max_message_size` allows: the stream stops
    /// before allocating it.
    MessageTooLarge {
        /// The message's size, as its length word says.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// A spill file of a transaction streamed before its commit could not be created, written
    /// or read back (a full disk, a directory without permission). Definite: reconnecting
    /// would only receive the transaction again and fail at the same point.
    Spill {
        /// The file.
        path: std::path::PathBuf,
        /// What failed: "cannot create", "cannot write", "cannot read back".
        action: String,
        /// The I/O error.
        source: std::io::Error,
    },
}

impl Error {
    /// A protocol violation outside streaming.
    pub(crate) fn protocol(message: impl Into<String>) -> Error {
        Error::Protocol { message: message.into(), after: None }
    }

    /// How to handle this error (see the module docs).
    pub fn class(&self) -> ErrorClass {
        match self {
            Error::Config(_) => ErrorClass::Configuration,
            Error::Connect { .. } | Error::Timeout { .. } | Error::SnapshotGone(_) => {
                ErrorClass::Transient
            }
            // Lost, reset, timed out: try again. Bytes that do not parse would come again.
            Error::Io(e) if io_is_transient(e) => ErrorClass::Transient,
            // 57P01 admin_shutdown, 57P02 crash_shutdown, 57P03 cannot_connect_now, 55006
            // object_in_use (slot still held by a dying walsender), 53300 too many connections,
            // 08xxx connection exceptions.
            Error::Server(e)
                if e.code == "57P01"
                    || e.code == "57P02"
                    || e.code == "57P03"
                    || e.code == "55006"
                    || e.code == "53300"
                    || e.code.starts_with("08") =>
            {
                ErrorClass::Transient
            }
            // The connection closed or failed under the query; not a conversion or a bad
            // statement, which would fail again.
            Error::Sql(e)
                if e.is_closed()
                    || std::error::Error::source(e)
                        .and_then(|s| s.downcast_ref::<std::io::Error>())
                        .is_some_and(io_is_transient) =>
            {
                ErrorClass::Transient
            }
            _ => ErrorClass::Definite,
        }
    }

    /// Whether retrying (reconnecting with backoff) can help: the connection dropped, the
    /// server restarted or is starting up, or we timed out.
    pub fn is_transient(&self) -> bool {
        self.class() == ErrorClass::Transient
    }

    /// The SQLSTATE code, when the server sent one.
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Server(e) => Some(&e.code),
            Error::Auth { source: Some(e), .. } => Some(&e.code),
            Error::Sql(e) => e.code().map(|c| c.code()),
            _ => None,
        }
    }

    /// The server's error, when it sent one.
    pub fn db_error(&self) -> Option<&DbError> {
        match self {
            Error::Server(e) | Error::Auth { source: Some(e), .. } => Some(e),
            _ => None,
        }
    }

    /// What to check, for server errors whose SQLSTATE says it (a wrong password, a missing
    /// role or database, a missing privilege).
    pub fn advice(&self) -> Option<&'static str> {
        advice(self.code()?)
    }

    /// Whether this is the server refusing to let us in: bad password, unknown role or
    /// database, or no TLS where `sslmode` requires it.
    pub fn is_login_failure(&self) -> bool {
        matches!(self, Error::Auth { .. } | Error::Tls(_))
            || matches!(self.code(), Some("28P01" | "28000" | "3D000"))
    }
}

/// Whether an I/O error is the connection failing (transient) rather than bytes that do not
/// parse: tokio-postgres and postgres-protocol report malformed messages as `InvalidData` or
/// `InvalidInput`, which reconnecting would only receive again.
pub(crate) fn io_is_transient(e: &std::io::Error) -> bool {
    !matches!(e.kind(), std::io::ErrorKind::InvalidData | std::io::ErrorKind::InvalidInput)
}

/// What to check for a SQLSTATE, when it says.
pub(crate) fn advice(code: &str) -> Option<&'static str> {
    Some(match code {
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
        "53300" => "the server has no free connection slots: retry later, or raise max_connections",
        _ => return None,
    })
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
            Error::Auth { message, .. } => write!(f, "authentication failed: {message}"),
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
            Error::Protocol { message, after } => {
                write!(f, "replication protocol violation: {message}")?;
                if let Some(lsn) = after {
                    write!(f, " (after LSN {lsn})")?;
                }
                Ok(())
            }
            Error::Wire { lsn, source } => {
                write!(f, "cannot decode the message at LSN {lsn}: {source}")
            }
            Error::Wal2Json(e) => write!(f, "{e}"),
            Error::Slot(m) => write!(f, "replication slot: {m}"),
            Error::Snapshot(m) => write!(f, "snapshot: {m}"),
            Error::SnapshotGone(m) => write!(f, "snapshot lost: {m}"),
            Error::MessageTooLarge { size, max } => write!(
                f,
                "the server sent a message of {size} bytes, more than max_message_size ({max} \
                 bytes): a row that large needs a higher limit (ConsumerBuilder::max_message_size, \
                 --max-message-size); a length like this one can also mean a damaged connection"
            ),
            Error::Spill { path, action, source } => write!(
                f,
                "{action} the spill file {} of a transaction streamed before its commit: \
                 {source} (give the spill directory room or permission, point it elsewhere — \
                 InProgress::Buffer's spill_dir, --spill-dir — or raise the memory for such \
                 transactions)",
                path.display()
            ),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Connect { source, .. } => Some(source),
            Error::Auth { source: Some(e), .. } | Error::Server(e) => Some(e),
            Error::Sql(e) => Some(e),
            Error::Io(e) => Some(e),
            Error::Wire { source, .. } => Some(source),
            Error::Wal2Json(e) => Some(e),
            Error::Spill { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Io(e)
    }
}

impl From<tokio_postgres::Error> for Error {
    /// The server's errors become [`Error::Server`] (message, detail, hint and SQLSTATE, as
    /// the server sent them; tokio-postgres itself only says "db error"); others stay
    /// [`Error::Sql`].
    fn from(e: tokio_postgres::Error) -> Self {
        match e.as_db_error() {
            Some(db) => Error::Server(Box::new(DbError::from(db))),
            None => Error::Sql(e),
        }
    }
}

impl From<wal2arrow_wal2json::DecodeError> for Error {
    fn from(e: wal2arrow_wal2json::DecodeError) -> Self {
        Error::Wal2Json(e)
    }
}

/// The client's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    fn server(code: &str) -> Error {
        Error::Server(Box::new(DbError {
            severity: "FATAL".into(),
            code: code.into(),
            message: "whatever the server's language says".into(),
            detail: None,
            hint: None,
        }))
    }

    #[test]
    fn classes_come_from_sqlstates_not_from_text() {
        for transient in ["57P01", "57P03", "55006", "53300", "08006"] {
            assert_eq!(server(transient).class(), ErrorClass::Transient, "{transient}");
        }
        for definite in ["28P01", "42501", "3D000", "58P01", "22023"] {
            assert_eq!(server(definite).class(), ErrorClass::Definite, "{definite}");
        }
        assert!(server("3D000").is_login_failure());
        assert!(server("3D000").to_string().contains("check the database name"));
        assert_eq!(Error::Config("x".into()).class(), ErrorClass::Configuration);
        // A lost snapshot is taken again from a new slot; one the role cannot read is not.
        assert!(Error::SnapshotGone("x".into()).is_transient());
        assert_eq!(Error::Snapshot("x".into()).class(), ErrorClass::Definite);
        let malformed = Error::Protocol { message: "bad frame".into(), after: Some(Lsn(42)) };
        assert_eq!(malformed.class(), ErrorClass::Definite, "never a reconnect loop");
        assert!(malformed.to_string().contains("after LSN 0/2A"), "{malformed}");
        // A connection that drops is retried; bytes that do not parse are not.
        let io = |kind| Error::Io(std::io::Error::new(kind, "x"));
        assert_eq!(io(std::io::ErrorKind::ConnectionReset).class(), ErrorClass::Transient);
        assert_eq!(io(std::io::ErrorKind::UnexpectedEof).class(), ErrorClass::Transient);
        assert_eq!(io(std::io::ErrorKind::InvalidData).class(), ErrorClass::Definite);
        assert_eq!(io(std::io::ErrorKind::InvalidInput).class(), ErrorClass::Definite);
    }
}
