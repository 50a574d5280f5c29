//! Replication slots: list them with their lag, create and drop them, and
//! [`resolve_slot`] — the one place that decides whether a stream may use a slot, and says
//! what to do when it may not.

use std::time::Duration;

use wal2arrow_schema::Lsn;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::plugin::{OutputPlugin, PLUGIN_NAME};
use crate::protocol::conn::quote_literal;
use crate::replication::{CreatedSlot, ReplicationClient, parse_lsn};
use crate::sql::sql_client;

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

/// Creates a persistent failover slot for `plugin` (PostgreSQL 17 and later): see
/// [`ReplicationClient::create_failover_slot`].
///
/// # Errors
///
/// [`Error::Slot`] on a server older than 17; otherwise as [`create_slot`].
pub async fn create_failover_slot(
    config: &Config,
    name: &str,
    plugin: OutputPlugin,
) -> Result<CreatedSlot> {
    ReplicationClient::connect(config).await?.create_failover_slot(name, plugin.name()).await
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

/// A slot as `pg_replication_slots` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotState {
    /// Output plugin (`None` for physical slots).
    pub plugin: Option<String>,
    /// Database of a logical slot.
    pub database: Option<String>,
    /// A session is streaming from it now.
    pub active: bool,
    /// Where a restarted stream resumes.
    pub confirmed_flush_lsn: Option<Lsn>,
}

/// Looks a slot up in `pg_replication_slots`.
///
/// # Errors
///
/// SQL errors.
pub async fn find_slot(client: &tokio_postgres::Client, name: &str) -> Result<Option<SlotState>> {
    let row = client
        .query_opt(
            "SELECT plugin::text, database::text, active, confirmed_flush_lsn::text \
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&name],
        )
        .await?;
    row.map(|r| {
        Ok(SlotState {
            plugin: r.get(0),
            database: r.get(1),
            active: r.get(2),
            confirmed_flush_lsn: r
                .get::<_, Option<String>>(3)
                .map(|s| parse_lsn(Some(s)))
                .transpose()?,
        })
    })
    .transpose()
}

/// Why a stream cannot use a slot, with what to do about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SlotProblem {
    /// The slot does not exist, and the stream may not create it.
    Missing {
        /// The slot's name.
        name: String,
        /// The plugin it should be created with.
        plugin: OutputPlugin,
    },
    /// The slot was created for a plugin this stream may not read.
    OtherPlugin {
        /// The slot's name.
        name: String,
        /// Its plugin (`None` for a physical slot).
        found: Option<String>,
        /// What the stream may read, in words.
        allowed: String,
    },
    /// The slot belongs to another database.
    OtherDatabase {
        /// The slot's name.
        name: String,
        /// Its database.
        found: String,
        /// The stream's database.
        wanted: String,
    },
}

impl SlotProblem {
    /// What is wrong.
    pub fn problem(&self) -> String {
        match self {
            SlotProblem::Missing { name, .. } => format!("slot {name:?} does not exist"),
            SlotProblem::OtherPlugin { name, found, allowed } => format!(
                "slot {name:?} exists with plugin {}, which this stream may not use ({allowed})",
                found.as_deref().unwrap_or("(physical)")
            ),
            SlotProblem::OtherDatabase { name, found, wanted } => {
                format!("slot {name:?} belongs to database {found:?}, not {wanted:?}")
            }
        }
    }

    /// What to do.
    pub fn fix(&self) -> String {
        match self {
            SlotProblem::Missing { name, plugin } => format!(
                "SELECT pg_create_logical_replication_slot({}, '{plugin}'); or let the consumer \
                 create it",
                quote_literal(name)
            ),
            SlotProblem::OtherPlugin { name, .. } => format!(
                "use another slot name, or SELECT pg_drop_replication_slot({}); if nothing else \
                 needs it",
                quote_literal(name)
            ),
            SlotProblem::OtherDatabase { .. } => {
                "connect to that database, or use another slot name".to_owned()
            }
        }
    }
}

impl From<SlotProblem> for Error {
    fn from(p: SlotProblem) -> Error {
        Error::Slot(format!("{}; fix: {}", p.problem(), p.fix()))
    }
}

/// What a slot name resolves to for a stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SlotResolution {
    /// No slot of that name.
    Missing,
    /// A slot the stream can read, with the plugin it was created for.
    Usable(SlotState, OutputPlugin),
    /// A slot the stream cannot use.
    Unusable(SlotProblem),
}

/// How a list of plugins reads: `wal2arrow`, `wal2json`, or `wal2arrow, or wal2json as the
/// fallback`.
pub fn describe_plugins(allowed: &[OutputPlugin]) -> String {
    match allowed {
        [OutputPlugin::Wal2Arrow, OutputPlugin::Wal2Json] => {
            "wal2arrow, or wal2json as the fallback".to_owned()
        }
        [one] => format!("{one} only"),
        more => more.iter().map(|p| p.name()).collect::<Vec<_>>().join(" or "),
    }
}

/// Looks `name` up for a stream of `database` that may read the plugins in `allowed` (a slot
/// is always read with the plugin it was created for). The stream (`open`), the consumer and
/// its preflight all decide with this.
///
/// # Errors
///
/// SQL errors.
pub async fn resolve_slot(
    sql: &tokio_postgres::Client,
    name: &str,
    database: &str,
    allowed: &[OutputPlugin],
) -> Result<SlotResolution> {
    let Some(state) = find_slot(sql, name).await? else { return Ok(SlotResolution::Missing) };
    let plugin = state.plugin.as_deref().and_then(OutputPlugin::from_name);
    Ok(match plugin {
        Some(p) if allowed.contains(&p) => {
            if state.database.as_deref() == Some(database) {
                SlotResolution::Usable(state, p)
            } else {
                SlotResolution::Unusable(SlotProblem::OtherDatabase {
                    name: name.to_owned(),
                    found: state.database.clone().unwrap_or_default(),
                    wanted: database.to_owned(),
                })
            }
        }
        _ => SlotResolution::Unusable(SlotProblem::OtherPlugin {
            name: name.to_owned(),
            found: state.plugin.clone(),
            allowed: describe_plugins(allowed),
        }),
    })
}
