//! A connection in replication mode: `IDENTIFY_SYSTEM`, `CREATE_REPLICATION_SLOT`,
//! `DROP_REPLICATION_SLOT` and `START_REPLICATION`, which turns it into a [`ChangeStream`].
//! See [the protocol docs](https://www.postgresql.org/docs/15/protocol-replication.html).

use wal2arrow_schema::{Lsn, PluginOptions};
use wal2arrow_wal2json::{JsonDecoder, wal2json_options};

use crate::catalog::Catalog;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::plugin::WAL2JSON_SESSION;
use crate::protocol::conn::{Connection, quote_ident, quote_literal};
use crate::stream::ChangeStream;

/// What `IDENTIFY_SYSTEM` reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SystemInfo {
    /// The cluster's system identifier.
    pub system_id: String,
    /// Current timeline.
    pub timeline: u32,
    /// Current WAL flush position.
    pub xlogpos: Lsn,
    /// The database connected to.
    pub dbname: Option<String>,
}

/// A slot created by [`ReplicationClient::create_slot`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreatedSlot {
    /// Slot name.
    pub name: String,
    /// The first position the slot can stream from: changes committed after it.
    pub consistent_point: Lsn,
    /// The exported snapshot's name ([`ReplicationClient::create_slot_exporting`]): it sees
    /// exactly what committed before the consistent point, while this connection stays idle.
    pub snapshot: Option<String>,
}

/// A connection in replication mode, before streaming starts.
#[derive(Debug)]
pub struct ReplicationClient {
    conn: Connection,
    config: Config,
}

impl ReplicationClient {
    /// Connects with `replication=database` and authenticates.
    ///
    /// # Errors
    ///
    /// Connection, timeout, authentication and server errors; see [`Error`].
    pub async fn connect(config: &Config) -> Result<ReplicationClient> {
        let conn = Connection::connect(config).await?;
        Ok(ReplicationClient { conn, config: config.clone() })
    }

    /// Whether the connection is encrypted with TLS.
    pub fn is_tls(&self) -> bool {
        self.conn.is_tls()
    }

    /// The server's version string (`server_version`), as it reported it at startup.
    pub fn server_version(&self) -> Option<&str> {
        self.conn.parameters.get("server_version").map(String::as_str)
    }

    /// The server's major version (`14`, `17`, …), from [`server_version`](Self::server_version).
    pub fn server_major(&self) -> Option<u32> {
        self.server_version().and_then(|v| {
            v.split(|c: char| !c.is_ascii_digit()).next().and_then(|m| m.parse().ok())
        })
    }

    /// `IDENTIFY_SYSTEM`.
    ///
    /// # Errors
    ///
    /// Server and connection errors.
    pub async fn identify_system(&mut self) -> Result<SystemInfo> {
        let rows = self.conn.simple_query("IDENTIFY_SYSTEM").await?;
        let row = rows.first().ok_or_else(|| Error::protocol("IDENTIFY_SYSTEM returned no row"))?;
        let field = |i: usize| row.get(i).cloned().flatten();
        Ok(SystemInfo {
            system_id: field(0).unwrap_or_default(),
            timeline: field(1).and_then(|t| t.parse().ok()).unwrap_or(0),
            xlogpos: parse_lsn(field(2))?,
            dbname: field(3),
        })
    }

    /// `CREATE_REPLICATION_SLOT name [TEMPORARY] LOGICAL plugin (SNAPSHOT 'nothing')`.
    ///
    /// A temporary slot disappears when this connection ends, so it must be created on the
    /// connection that then streams from it.
    ///
    /// # Errors
    ///
    /// The server's error: the slot exists (SQLSTATE 42710), the plugin cannot be loaded or
    /// is not in `output_plugin_libraries`, no free slots, no REPLICATION privilege.
    pub async fn create_slot(
        &mut self,
        name: &str,
        plugin: &str,
        temporary: bool,
    ) -> Result<CreatedSlot> {
        self.create_slot_as(name, plugin, temporary, "nothing", false).await
    }

    /// `CREATE_REPLICATION_SLOT name LOGICAL plugin (SNAPSHOT 'nothing', FAILOVER)`: a
    /// persistent slot that PostgreSQL 17 and later synchronizes to physical standbys (with
    /// `sync_replication_slots` on the standby), so that streaming can go on from the new
    /// primary after a failover.
    ///
    /// # Errors
    ///
    /// [`Error::Slot`] on a server older than 17, which has no failover slots; otherwise as
    /// [`create_slot`](Self::create_slot).
    pub async fn create_failover_slot(&mut self, name: &str, plugin: &str) -> Result<CreatedSlot> {
        self.check_failover(name)?;
        self.create_slot_as(name, plugin, false, "nothing", true).await
    }

    /// `ALTER_REPLICATION_SLOT name (FAILOVER true|false)`: makes an existing slot a failover
    /// slot, or no longer one (PostgreSQL 17 and later). A slot copied with
    /// `pg_copy_logical_replication_slot` never is one: this is how it becomes one.
    ///
    /// # Errors
    ///
    /// [`Error::Slot`] on a server older than 17; the server's error otherwise (no such slot,
    /// a temporary slot, a slot in use).
    pub async fn set_failover(&mut self, name: &str, failover: bool) -> Result<()> {
        self.check_failover(name)?;
        self.conn
            .simple_query(&format!(
                "ALTER_REPLICATION_SLOT {} (FAILOVER {failover})",
                quote_ident(name)
            ))
            .await
            .map(drop)
    }

    /// Whether the server can make `name` a failover slot (PostgreSQL 17 and later).
    ///
    /// # Errors
    ///
    /// [`Error::Slot`] on an older server, saying what to do instead.
    pub fn check_failover(&self, name: &str) -> Result<()> {
        match self.server_major() {
            Some(m) if m < 17 => Err(Error::Slot(format!(
                "slot {name:?} cannot be a failover slot: failover slots need PostgreSQL 17 or \
                 later, and this server is {}; create it without failover (the README's \
                 \"Failover and standbys\" says what each major offers instead)",
                self.server_version().unwrap_or("older")
            ))),
            _ => Ok(()),
        }
    }

    /// `CREATE_REPLICATION_SLOT name [TEMPORARY] LOGICAL plugin (SNAPSHOT 'export')`: the slot,
    /// and a snapshot ([`CreatedSlot::snapshot`]) other connections can import with
    /// `SET TRANSACTION SNAPSHOT` to read the tables as of the slot's consistent point — see
    /// [`crate::snapshot`]. The snapshot is destroyed by the next command on this connection,
    /// or its end: keep it idle until every importer has imported it.
    ///
    /// # Errors
    ///
    /// As [`create_slot`](Self::create_slot).
    pub async fn create_slot_exporting(
        &mut self,
        name: &str,
        plugin: &str,
        temporary: bool,
    ) -> Result<CreatedSlot> {
        self.create_slot_as(name, plugin, temporary, "export", false).await
    }

    async fn create_slot_as(
        &mut self,
        name: &str,
        plugin: &str,
        temporary: bool,
        snapshot: &str,
        failover: bool,
    ) -> Result<CreatedSlot> {
        // The options list is PostgreSQL 15's syntax; 14 knows only the keywords; FAILOVER
        // is 17's (checked by the caller).
        let options = match (self.server_major(), snapshot) {
            (Some(m), "export") if m < 15 => "EXPORT_SNAPSHOT".to_owned(),
            (Some(m), _) if m < 15 => "NOEXPORT_SNAPSHOT".to_owned(),
            _ if failover => format!("(SNAPSHOT '{snapshot}', FAILOVER)"),
            _ => format!("(SNAPSHOT '{snapshot}')"),
        };
        let sql = format!(
            "CREATE_REPLICATION_SLOT {}{} LOGICAL {} {options}",
            quote_ident(name),
            if temporary { " TEMPORARY" } else { "" },
            quote_ident(plugin),
        );
        let rows = self.conn.simple_query(&sql).await?;
        let row = rows
            .first()
            .ok_or_else(|| Error::protocol("CREATE_REPLICATION_SLOT returned no row"))?;
        Ok(CreatedSlot {
            name: row.first().cloned().flatten().unwrap_or_else(|| name.to_owned()),
            consistent_point: parse_lsn(row.get(1).cloned().flatten())?,
            snapshot: row.get(2).cloned().flatten().filter(|s| !s.is_empty()),
        })
    }

    /// `DROP_REPLICATION_SLOT name`: drops a slot (a temporary one of this connection, or an
    /// unused persistent one).
    ///
    /// # Errors
    ///
    /// The server's error (no such slot, in use by another session).
    pub async fn drop_slot(&mut self, name: &str) -> Result<()> {
        self.conn
            .simple_query(&format!("DROP_REPLICATION_SLOT {}", quote_ident(name)))
            .await
            .map(drop)
    }

    /// Starts streaming `slot` from `start` (`Lsn::INVALID`: from the slot's
    /// `confirmed_flush_lsn`) with the given plugin options.
    ///
    /// # Errors
    ///
    /// The server's error — a missing slot, a slot in use, or a plugin option the plugin
    /// refuses (the error's hint lists the valid ones).
    pub async fn start(
        self,
        slot: &str,
        start: Lsn,
        options: &PluginOptions,
    ) -> Result<ChangeStream> {
        let pairs = options.to_pairs();
        let pairs: Vec<(&str, Option<&str>)> =
            pairs.iter().map(|(k, v)| (*k, Some(v.as_str()))).collect();
        self.start_with_pairs(slot, start, &pairs).await
    }

    /// [`start`](Self::start) with raw option pairs (a `None` value sends the option without
    /// one): for plugins other than wal2arrow, and for testing how the plugin answers options
    /// it does not know.
    ///
    /// # Errors
    ///
    /// As [`start`](Self::start).
    pub async fn start_with_pairs(
        mut self,
        slot: &str,
        start: Lsn,
        options: &[(&str, Option<&str>)],
    ) -> Result<ChangeStream> {
        let opts: Vec<String> = options
            .iter()
            .map(|(k, v)| match v {
                Some(v) => format!("{} {}", quote_ident(k), quote_literal(v)),
                None => quote_ident(k),
            })
            .collect();
        let mut sql = format!("START_REPLICATION SLOT {} LOGICAL {start}", quote_ident(slot));
        if !opts.is_empty() {
            sql.push_str(&format!(" ({})", opts.join(", ")));
        }
        self.conn.start_copy_both(&sql, self.config.connect_timeout).await?;
        Ok(ChangeStream::new(self.conn, start))
    }
}

impl ReplicationClient {
    /// Starts streaming a **wal2json** slot, decoded into the same events a wal2arrow stream
    /// yields (see [`OutputPlugin::Wal2Json`]). `options` are applied as the plugin would:
    /// batching, tables, message prefixes, origins, the include flags. Catalog lookups the
    /// JSON needs go over a separate SQL connection with the same settings.
    ///
    /// `numbers_as_strings` asks wal2json 2.6+ for numbers as strings
    /// (`numeric-data-types-as-string`), which keeps NaN and ±Infinity apart from NULL;
    /// wal2json 2.5 refuses the option.
    ///
    /// # Errors
    ///
    /// As [`start`](Self::start); the server refuses an option this wal2json lacks.
    pub async fn start_wal2json(
        mut self,
        slot: &str,
        start: Lsn,
        options: &PluginOptions,
        numbers_as_strings: bool,
    ) -> Result<ChangeStream> {
        self.conn.simple_query(WAL2JSON_SESSION).await?;
        let mut pairs = wal2json_options(options, numbers_as_strings);
        // wal2json filters origins by ID: those that exist now are dropped in the server too
        // (the decoder filters by name either way, so origins created later are caught).
        if !options.filter_origins.is_empty() && !options.filter_origins.iter().any(|o| o == "*") {
            let names: Vec<String> =
                options.filter_origins.iter().map(|o| quote_literal(o)).collect();
            let rows = self
                .conn
                .simple_query(&format!(
                    "SELECT string_agg(roident::text, ',') FROM pg_replication_origin \
                     WHERE roname IN ({})",
                    names.join(", ")
                ))
                .await?;
            if let Some(ids) = rows.first().and_then(|r| r.first().cloned().flatten()) {
                pairs.push(("filter-origins", ids));
            }
        }
        let pairs: Vec<(&str, Option<&str>)> =
            pairs.iter().map(|(k, v)| (*k, Some(v.as_str()))).collect();
        let config = self.config.clone();
        let mut stream = self.start_with_pairs(slot, start, &pairs).await?;
        stream.read_wal2json(
            JsonDecoder::new(options.clone(), numbers_as_strings),
            Catalog::new(config),
        );
        Ok(stream)
    }
}

pub(crate) fn parse_lsn(text: Option<String>) -> Result<Lsn> {
    let text = text.ok_or_else(|| Error::protocol("missing LSN"))?;
    text.parse().map_err(|e| Error::protocol(format!("{e}")))
}
