//! Replication slots: list them with their lag, create and drop them.

use std::time::Duration;

use wal2arrow_schema::Lsn;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::protocol::conn::quote_literal;
use crate::stream::{CreatedSlot, OutputPlugin, PLUGIN_NAME, ReplicationClient, sql_client};

/// A replication slot, with how far behind it is.
#[derive(Clone, Debug, PartialEq)]
pub struct SlotInfo {
    /// Slot name.
    pub name: String,
    /// Output plugin (logical slots).
    pub plugin: Option<String>,
    /// `logical` or `physical`.
    pub slot_type: String,
    /// Database (logical slots).
    pub database: Option<String>,
    /// Dropped when its session ends.
    pub temporary: bool,
    /// The process streaming from it, if any.
    pub active_pid: Option<i32>,
    /// The oldest WAL the slot keeps.
    pub restart_lsn: Option<Lsn>,
    /// Where a restarted stream resumes: what its consumer acknowledged.
    pub confirmed_flush_lsn: Option<Lsn>,
    /// `reserved`, `extended`, `unreserved` or `lost` (PostgreSQL's `wal_status`).
    pub wal_status: Option<String>,
    /// WAL written since the consumer's acknowledged position, in bytes.
    pub lag_bytes: Option<i64>,
    /// WAL the slot keeps on disk (since `restart_lsn`), in bytes.
    pub retained_bytes: Option<i64>,
    /// For an active slot: how long ago the WAL its consumer last acknowledged was written
    /// (`pg_stat_replication.flush_lag`), zero when it has caught up; `None` for an inactive
    /// slot, or while PostgreSQL has no measurement.
    pub lag_time: Option<Duration>,
}

/// Lists the replication slots of the server.
///
/// # Errors
///
/// Connection and SQL errors.
pub async fn list_slots(config: &Config) -> Result<Vec<SlotInfo>> {
    let sql = sql_client(config).await?;
    let rows = sql
        .query(
            "SELECT s.slot_name::text, s.plugin::text, s.slot_type, s.database::text, s.temporary,
                    s.active_pid, s.restart_lsn::text, s.confirmed_flush_lsn::text, s.wal_status,
                    (pg_current_wal_lsn() - coalesce(s.confirmed_flush_lsn, s.restart_lsn))::int8,
                    (pg_current_wal_lsn() - s.restart_lsn)::int8,
                    extract(epoch FROM r.flush_lag)::float8
             FROM pg_replication_slots s LEFT JOIN pg_stat_replication r ON r.pid = s.active_pid
             ORDER BY 1",
            &[],
        )
        .await?;
    let lsn = |v: Option<String>| v.and_then(|s| s.parse().ok());
    Ok(rows
        .iter()
        .map(|r| {
            let (active, lag_bytes) =
                (r.get::<_, Option<i32>>(5).is_some(), r.get::<_, Option<i64>>(9));
            let measured = r.get::<_, Option<f64>>(11).map(|s| Duration::from_secs_f64(s.max(0.0)));
            // PostgreSQL clears flush_lag once the client has caught up.
            let lag_time = measured.or((active && lag_bytes == Some(0)).then_some(Duration::ZERO));
            SlotInfo {
                name: r.get(0),
                plugin: r.get(1),
                slot_type: r.get(2),
                database: r.get(3),
                temporary: r.get(4),
                active_pid: r.get(5),
                restart_lsn: lsn(r.get(6)),
                confirmed_flush_lsn: lsn(r.get(7)),
                wal_status: r.get(8),
                lag_bytes,
                retained_bytes: r.get(10),
                lag_time,
            }
        })
        .collect())
}

/// Creates a persistent wal2arrow slot in `config`'s database.
///
/// # Errors
///
/// The server's error (the slot exists, no free slot, the plugin cannot load, …).
pub async fn create_slot(config: &Config, name: &str) -> Result<CreatedSlot> {
    ReplicationClient::connect(config).await?.create_slot(name, PLUGIN_NAME, false).await
}

/// Creates a persistent slot for `plugin` in `config`'s database.
///
/// # Errors
///
/// As [`create_slot`].
pub async fn create_slot_with(
    config: &Config,
    name: &str,
    plugin: OutputPlugin,
) -> Result<CreatedSlot> {
    ReplicationClient::connect(config).await?.create_slot(name, plugin.name(), false).await
}

/// Drops a slot. A slot in use is an error unless `force`, which ends the session using it
/// first.
///
/// # Errors
///
/// [`Error::Slot`] for a missing slot or one in use; SQL errors.
pub async fn drop_slot(config: &Config, name: &str, force: bool) -> Result<()> {
    let sql = sql_client(config).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let row = sql
            .query_opt("SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1", &[&name])
            .await?
            .ok_or_else(|| Error::Slot(format!("slot {name:?} does not exist")))?;
        match row.get::<_, Option<i32>>(0) {
            Some(pid) if !force => {
                return Err(Error::Slot(format!(
                    "slot {name:?} is in use by process {pid}: stop its consumer, or drop it with force"
                )));
            }
            Some(pid) => {
                sql.execute("SELECT pg_terminate_backend($1)", &[&pid]).await?;
            }
            None => match sql
                .execute(&format!("SELECT pg_drop_replication_slot({})", quote_literal(name)), &[])
                .await
            {
                Ok(_) => return Ok(()),
                // Taken again between the check and the drop: look again.
                Err(e) if e.code().is_some_and(|c| c.code() == "55006") => {}
                Err(e) => return Err(e.into()),
            },
        }
        if tokio::time::Instant::now() > deadline {
            return Err(Error::Slot(format!("slot {name:?} stayed in use for 10 s")));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
