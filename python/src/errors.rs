//! The Python exceptions: one per kind of the consumer's errors, all under `Wal2ArrowError`,
//! with the consumer's message and three attributes: `transient` (retrying can help),
//! `kind` (`"transient"`, `"definite"` or `"configuration"`) and `sqlstate` (the server's
//! code, or `None`). `PreflightError` adds `report`.

use pyo3::create_exception;
use pyo3::prelude::*;
use wal2arrow_consumer::client::Error as ClientError;
use wal2arrow_consumer::{Error, ErrorClass};

create_exception!(
    wal2arrow,
    Wal2ArrowError,
    pyo3::exceptions::PyException,
    "Base class of every wal2arrow error."
);
create_exception!(
    wal2arrow,
    ConfigError,
    Wal2ArrowError,
    "An argument or setting is invalid: the message names it and what it accepts."
);
create_exception!(
    wal2arrow,
    PreflightError,
    Wal2ArrowError,
    "The server is not ready for streaming; `report` lists every check and the fix of each failure."
);
create_exception!(
    wal2arrow,
    ConnectError,
    Wal2ArrowError,
    "The server could not be reached, did not answer in time, or the connection was lost."
);
create_exception!(
    wal2arrow,
    AuthError,
    Wal2ArrowError,
    "The server refused the credentials (or asked for an unsupported method)."
);
create_exception!(
    wal2arrow,
    TlsError,
    Wal2ArrowError,
    "TLS could not be set up as `sslmode` asks."
);
create_exception!(
    wal2arrow,
    ServerError,
    Wal2ArrowError,
    "The server reported an error (`sqlstate` holds its code)."
);
create_exception!(
    wal2arrow,
    SlotError,
    Wal2ArrowError,
    "The replication slot cannot be used as asked (missing, in use, of another plugin)."
);
create_exception!(
    wal2arrow,
    ProtocolError,
    Wal2ArrowError,
    "The server sent something that could not be decoded."
);
create_exception!(
    wal2arrow,
    SpillError,
    Wal2ArrowError,
    "A spill file could not be written or read back (check the spill directory)."
);
create_exception!(
    wal2arrow,
    StreamEnded,
    Wal2ArrowError,
    "The stream has ended (closed): nothing more can be asked of it."
);

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("Wal2ArrowError", py.get_type::<Wal2ArrowError>())?;
    m.add("ConfigError", py.get_type::<ConfigError>())?;
    m.add("PreflightError", py.get_type::<PreflightError>())?;
    m.add("ConnectError", py.get_type::<ConnectError>())?;
    m.add("AuthError", py.get_type::<AuthError>())?;
    m.add("TlsError", py.get_type::<TlsError>())?;
    m.add("ServerError", py.get_type::<ServerError>())?;
    m.add("SlotError", py.get_type::<SlotError>())?;
    m.add("ProtocolError", py.get_type::<ProtocolError>())?;
    m.add("SpillError", py.get_type::<SpillError>())?;
    m.add("StreamEnded", py.get_type::<StreamEnded>())?;
    Ok(())
}

/// A configuration error, raised as `ConfigError`.
pub(crate) fn config(py: Python<'_>, message: impl Into<String>) -> PyErr {
    convert(py, &Error::Config(message.into()))
}

/// The Python exception for a consumer error.
pub(crate) fn convert(py: Python<'_>, e: &Error) -> PyErr {
    let message = e.to_string();
    let err = match e {
        Error::Config(_) => ConfigError::new_err(message),
        Error::Preflight(_) => PreflightError::new_err(message),
        Error::Spill { .. } => SpillError::new_err(message),
        Error::Ended => StreamEnded::new_err(message),
        Error::Upstream(inner) => return convert(py, inner),
        Error::Client(c) => match c {
            ClientError::Config(_) => ConfigError::new_err(message),
            ClientError::Connect { .. } | ClientError::Timeout { .. } | ClientError::Io(_) => {
                ConnectError::new_err(message)
            }
            ClientError::Auth { .. } => AuthError::new_err(message),
            ClientError::Tls(_) => TlsError::new_err(message),
            ClientError::Server(_) | ClientError::Snapshot(_) | ClientError::SnapshotGone(_) => {
                ServerError::new_err(message)
            }
            ClientError::Sql(_) if c.db_error().is_some() => ServerError::new_err(message),
            ClientError::Sql(_) => ConnectError::new_err(message),
            ClientError::Slot(_) => SlotError::new_err(message),
            ClientError::Protocol { .. }
            | ClientError::Wire { .. }
            | ClientError::Wal2Json(_)
            | ClientError::MessageTooLarge { .. } => ProtocolError::new_err(message),
            ClientError::Spill { .. } => SpillError::new_err(message),
            _ => Wal2ArrowError::new_err(message),
        },
        _ => Wal2ArrowError::new_err(message),
    };
    let value = err.value(py);
    let kind = match e.class() {
        ErrorClass::Transient => "transient",
        ErrorClass::Definite => "definite",
        ErrorClass::Configuration => "configuration",
    };
    // Attributes of a fresh exception instance: setting them cannot fail but for memory.
    let _ = value.setattr("transient", e.is_transient());
    let _ = value.setattr("kind", kind);
    let _ = value.setattr("sqlstate", e.code());
    if let Error::Preflight(report) = e
        && let Ok(report) = Py::new(py, crate::admin::Report::from(report.as_ref()))
    {
        let _ = value.setattr("report", report);
    }
    err
}
