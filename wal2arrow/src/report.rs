//! Errors raised to PostgreSQL: every one an `ERROR` with an SQLSTATE, a message and, where
//! there is something to do, a hint. Raising one unwinds to the callback's `#[pg_guard]`,
//! which hands it to `ereport`: the session ends with the error, the server keeps running.

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::{PgLogLevel, PgSqlErrorCode};
use wal2arrow_schema::{EncodeError, OptionError};

/// Raises an `ERROR` for a refused plugin option.
pub(crate) fn option_error(e: &OptionError) -> ! {
    raise(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, e.to_string(), Some(e.hint()))
}

/// Raises an `ERROR` for a batch that could not be encoded (a bug, never the data's fault).
pub(crate) fn encode_error(table: &str, e: &EncodeError) -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
        format!("wal2arrow could not encode a batch of table {table}: {e}"),
        Some("This is a bug in wal2arrow; please report it with the server log.".into()),
    )
}

fn raise(code: PgSqlErrorCode, message: String, hint: Option<String>) -> ! {
    let mut report = ErrorReport::new(code, message, "wal2arrow");
    if let Some(hint) = hint {
        report = report.set_hint(hint);
    }
    report.report(PgLogLevel::ERROR);
    unreachable!("an ERROR report does not return")
}

/// Raises an `ERROR` for a partition whose partition root cannot be opened (its catalog entry
/// is gone under the change's historic snapshot, which a consistent catalog rules out).
pub(crate) fn partition_root_missing(partition: &str, root: pgrx::pg_sys::Oid) -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE,
        format!(
            "wal2arrow could not open the partition root (OID {}) of partition {partition}",
            root.to_u32()
        ),
        Some(
            "Stream with the plugin option publish-via-root off to report the partition under \
             its own name, and report this with the server log."
                .into(),
        ),
    )
}
