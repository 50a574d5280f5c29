//! The replication client: slots, `START_REPLICATION`, and the stream of change events.
//!
//! ## Positions and acknowledgements
//!
//! The consumer tells the server three positions in its standby status updates
//! ([protocol docs][proto]): *write* (received), *flush* and *apply*. For a logical slot the
//! server only cares about *flush*: it becomes the slot's `confirmed_flush_lsn`, the point a
//! restarted stream resumes from, and the WAL before it may be recycled. wal2arrow sends as
//! *flush* (and *apply*) only what the application [acknowledged](ChangeStream::ack) — a
//! transaction's `end_lsn` once it is durably handled — so a crash can replay transactions but
//! never skip one (at-least-once).
//!
//! Status updates go out when the server asks for one in a keepalive (it does so before
//! `wal_sender_timeout` would end the connection) and every `status_interval` (10 s by
//! default, as `pg_recvlogical`).
//!
//! When everything delivered has been acknowledged and no transaction is open, the stream
//! also confirms the WAL end a keepalive reports: the walsender sends that position only once
//! it has sent every change before it, so nothing is skipped, and the slot keeps up with WAL
//! written by other databases or filtered tables. Heartbeat messages (see
//! [`ChangeStream::set_heartbeat_prefix`]) do the same for a database with no activity at all.
//!
//! [proto]: https://www.postgresql.org/docs/15/protocol-replication.html

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arrow_array::RecordBatch;
use arrow_buffer::Buffer;
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use tokio::time::Instant;
use wal2arrow_schema::types::PG_EPOCH_MICROS;
use wal2arrow_schema::{Decoder, Lsn, Message as WireMessage, PluginOptions, Relation};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::protocol::conn::{Connection, db_error, quote_ident, quote_literal};
use crate::protocol::frame::Frame;
use crate::wal2json::catalog::Catalog;
use crate::wal2json::{JsonDecoder, Output, wal2json_options};

/// The output plugin's name, as given to `CREATE_REPLICATION_SLOT … LOGICAL`.
pub const PLUGIN_NAME: &str = "wal2arrow";

/// The output plugins a stream can decode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OutputPlugin {
    /// wal2arrow: Arrow IPC encoded in the server, decoded here without copying.
    Wal2Arrow,
    /// wal2json (format version 2), for servers where wal2arrow cannot be installed: parsed
    /// here into the same Arrow batches (see the README's "The wal2json fallback").
    Wal2Json,
}

impl OutputPlugin {
    /// The plugin's name, as in `CREATE_REPLICATION_SLOT … LOGICAL name`.
    pub fn name(self) -> &'static str {
        match self {
            OutputPlugin::Wal2Arrow => PLUGIN_NAME,
            OutputPlugin::Wal2Json => "wal2json",
        }
    }

    /// The plugin of that name, if it is one of these.
    pub fn from_name(name: &str) -> Option<OutputPlugin> {
        match name {
            PLUGIN_NAME => Some(OutputPlugin::Wal2Arrow),
            "wal2json" => Some(OutputPlugin::Wal2Json),
            _ => None,
        }
    }
}

impl std::fmt::Display for OutputPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Session settings for a wal2json stream: they fix the text forms wal2json writes values in
/// (its output functions run in the walsender, under the session's settings), so that the
/// fallback parses them exactly.
const WAL2JSON_SESSION: &str = "SET DateStyle = 'ISO'; SET TimeZone = 'UTC'; \
     SET IntervalStyle = 'iso_8601'; SET bytea_output = 'hex'; SET lc_monetary = 'C'; \
     SET extra_float_digits = 3";

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

    /// `IDENTIFY_SYSTEM`.
    ///
    /// # Errors
    ///
    /// Server and connection errors.
    pub async fn identify_system(&mut self) -> Result<SystemInfo> {
        let rows = self.conn.simple_query("IDENTIFY_SYSTEM").await?;
        let row = rows
            .first()
            .ok_or_else(|| Error::Protocol("IDENTIFY_SYSTEM returned no row".into()))?;
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
        let sql = format!(
            "CREATE_REPLICATION_SLOT {}{} LOGICAL {} (SNAPSHOT 'nothing')",
            quote_ident(name),
            if temporary { " TEMPORARY" } else { "" },
            quote_ident(plugin),
        );
        let rows = self.conn.simple_query(&sql).await?;
        let row = rows
            .first()
            .ok_or_else(|| Error::Protocol("CREATE_REPLICATION_SLOT returned no row".into()))?;
        Ok(CreatedSlot {
            name: row.first().cloned().flatten().unwrap_or_else(|| name.to_owned()),
            consistent_point: parse_lsn(row.get(1).cloned().flatten())?,
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
        Ok(ChangeStream {
            conn: self.conn,
            format: Format::Wal2Arrow(Decoder::new()),
            pending: VecDeque::new(),
            bundled: VecDeque::new(),
            decoded: Vec::new(),
            inflight: None,
            received: start,
            acked: AckHandle(Arc::new(AtomicU64::new(start.0))),
            delivered_through: start,
            heartbeat_prefix: None,
            server_wal_end: start,
            keepalive_position: start,
            position_out: None,
            status_interval: DEFAULT_STATUS_INTERVAL,
            next_status: Instant::now() + DEFAULT_STATUS_INTERVAL,
            txn: None,
            done: false,
            received_bytes: 0,
        })
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
        stream.format = Format::Wal2Json(Box::new(JsonSession {
            decoder: JsonDecoder::new(options.clone(), numbers_as_strings),
            catalog: Catalog::new(config),
            out: Vec::new(),
        }));
        Ok(stream)
    }
}

/// How a stream's payloads are decoded.
#[derive(Debug)]
enum Format {
    Wal2Arrow(Decoder),
    Wal2Json(Box<JsonSession>),
}

#[derive(Debug)]
struct JsonSession {
    decoder: JsonDecoder,
    catalog: Catalog,
    out: Vec<Output>,
}

fn parse_lsn(text: Option<String>) -> Result<Lsn> {
    let text = text.ok_or_else(|| Error::Protocol("missing LSN".into()))?;
    text.parse().map_err(|e| Error::Protocol(format!("{e}")))
}

/// Default interval between unsolicited standby status updates.
pub const DEFAULT_STATUS_INTERVAL: Duration = Duration::from_secs(10);

/// Acknowledges positions of a stream, from any task: the stream reports the highest one to
/// the server as flushed, and a restarted stream resumes after it.
#[derive(Clone, Debug, Default)]
pub struct AckHandle(Arc<AtomicU64>);

impl AckHandle {
    /// Acknowledges everything up to `lsn`. Positions never move back.
    pub fn ack(&self, lsn: Lsn) {
        self.0.fetch_max(lsn.0, Ordering::SeqCst);
    }

    /// The highest position acknowledged.
    pub fn acknowledged(&self) -> Lsn {
        Lsn(self.0.load(Ordering::SeqCst))
    }
}

/// Where an event sits in the stream: its transaction's commit LSN and its ordinal within the
/// transaction. Unique and ordered; after a restart, replayed events have the positions they
/// had the first time, so a sink that stores the last position it applied can drop them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    /// The transaction's commit LSN.
    pub commit_lsn: Lsn,
    /// The event's ordinal in the transaction.
    pub ordinal: u32,
}

/// A transaction started (its changes follow, up to [`Event::Commit`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnBegin {
    /// Transaction ID (0 with `include-xids` off).
    pub xid: u32,
    /// LSN of its commit record.
    pub commit_lsn: Lsn,
    /// Commit time, microseconds since the Unix epoch (0 with `include-timestamps` off).
    pub commit_time_us: i64,
    /// The replication origin the transaction was replayed from, if any (with
    /// `include-origin`, the default). Set on the [`ChangeBatch`]es, not on this event, which
    /// precedes the plugin's Origin message.
    pub origin: Option<String>,
}

/// A transaction committed: all its batches were delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TxnCommit {
    /// Transaction ID.
    pub xid: u32,
    /// LSN of its commit record.
    pub commit_lsn: Lsn,
    /// LSN just past the commit: [`ChangeStream::ack`] this once the transaction is durably
    /// handled.
    pub end_lsn: Lsn,
    /// Commit time, microseconds since the Unix epoch.
    pub commit_time_us: i64,
    /// How many events (batches, truncates, transactional messages) the transaction had.
    pub batches: u32,
}

/// Rows of one table changed by one transaction, as an Arrow [`RecordBatch`].
#[derive(Clone, Debug)]
pub struct ChangeBatch {
    /// The table (its schema, name and OID).
    pub relation: Arc<Relation>,
    /// Transaction ID.
    pub xid: u32,
    /// LSN of the transaction's commit record.
    pub commit_lsn: Lsn,
    /// Commit time, microseconds since the Unix epoch.
    pub commit_time_us: i64,
    /// The replication origin the transaction was replayed from, if any.
    pub origin: Option<Arc<str>>,
    /// Position of this event within its transaction (0, 1, …; batches, truncates and
    /// transactional messages count): with `commit_lsn` it identifies the batch exactly,
    /// across restarts.
    pub ordinal: u32,
    /// The rows: the table's columns, then `_op` (`insert`, `update`, `delete`,
    /// `update_before`), `_lsn` (each row's change LSN; absent with `include-lsn` off),
    /// `_missing` (the columns whose value the change does not carry) and `_unrepresentable`
    /// (those whose value the Arrow type cannot hold); see [`missing`](Self::missing) and
    /// [`unrepresentable`](Self::unrepresentable).
    pub batch: RecordBatch,
    payload: Buffer,
    source_bytes: usize,
}

impl ChangeBatch {
    /// A change batch built outside a stream (tests of sinks and routers).
    #[cfg(test)]
    pub(crate) fn for_tests(
        relation: Arc<Relation>,
        batch: RecordBatch,
        commit_lsn: Lsn,
        ordinal: u32,
    ) -> ChangeBatch {
        ChangeBatch {
            relation,
            xid: 7,
            commit_lsn,
            commit_time_us: 0,
            origin: None,
            ordinal,
            batch,
            payload: Buffer::from_vec(Vec::<u8>::new()),
            source_bytes: 0,
        }
    }

    /// `schema.table`.
    pub fn table(&self) -> &str {
        &self.relation.qualified_name
    }

    /// Number of rows.
    pub fn num_rows(&self) -> usize {
        self.batch.num_rows()
    }

    /// The rows without the system columns: exactly the table's columns.
    pub fn table_rows(&self) -> RecordBatch {
        let n = self.relation.table_columns();
        self.batch.project(&(0..n).collect::<Vec<_>>()).expect("table columns are in range")
    }

    /// The received XLogData payload the batch's arrays point into (empty for the wal2json
    /// fallback, whose batches are built here rather than borrowed).
    pub fn payload(&self) -> &Buffer {
        &self.payload
    }

    /// How many bytes the server sent for these rows: the payload's size, or with the
    /// wal2json fallback the size of the JSON the rows were parsed from.
    pub fn source_bytes(&self) -> usize {
        self.source_bytes
    }

    /// The batch's position, for dropping replayed batches after a restart.
    pub fn position(&self) -> Position {
        Position { commit_lsn: self.commit_lsn, ordinal: self.ordinal }
    }

    /// The names of the columns whose value row `row` does not carry (`_missing`): unchanged
    /// TOAST values in new images, columns outside the key in old images, every column of a
    /// DELETE without any identity. Their slots in the value columns are NULL, but the values
    /// are not NULL — they were not sent: a reader rebuilding rows keeps what it has.
    pub fn missing(&self, row: usize) -> Vec<String> {
        names_at(&self.batch, self.relation.missing_index(), row)
    }

    /// The names of the columns whose value row `row` carried but the column's Arrow type
    /// cannot hold (`_unrepresentable`): `NaN` in a `Decimal128` column (for an array, its
    /// elements that cannot be held are NULL), and with the wal2json fallback what JSON cannot
    /// carry. Their slots are NULL, but the values are neither NULL nor unchanged; ask for
    /// `numeric-as-string` to receive such values exactly.
    pub fn unrepresentable(&self, row: usize) -> Vec<String> {
        names_at(&self.batch, self.relation.missing_index() + 1, row)
    }
}

/// The names listed in row `row` of a `List<Utf8>` column.
fn names_at(batch: &RecordBatch, column: usize, row: usize) -> Vec<String> {
    use arrow_array::Array;
    use arrow_array::cast::AsArray;
    let list = batch.column(column).as_list::<i32>();
    if list.is_null(row) {
        return Vec::new();
    }
    let names = list.value(row);
    let names = names.as_string::<i32>();
    (0..names.len()).map(|i| names.value(i).to_owned()).collect()
}

/// Tables truncated by one `TRUNCATE` command.
#[derive(Clone, Debug)]
pub struct TruncateEvent {
    /// The tables (those the `tables` option captures), cascaded ones included.
    pub relations: Vec<Arc<Relation>>,
    /// `TRUNCATE … CASCADE`; `None` when the plugin does not say (wal2json).
    pub cascade: Option<bool>,
    /// `TRUNCATE … RESTART IDENTITY`; `None` when the plugin does not say (wal2json).
    pub restart_identity: Option<bool>,
    /// Transaction ID.
    pub xid: u32,
    /// LSN of the transaction's commit record.
    pub commit_lsn: Lsn,
    /// Position within the transaction (see [`ChangeBatch::ordinal`]).
    pub ordinal: u32,
}

/// A logical decoding message, from `pg_logical_emit_message(transactional, prefix, content)`.
#[derive(Clone, Debug)]
pub struct LogicalMessage {
    /// Transactional messages arrive inside their transaction, when it commits; others arrive
    /// at once, outside any transaction, whether or not the transaction that sent them commits.
    pub transactional: bool,
    /// The message's LSN.
    pub lsn: Lsn,
    /// The prefix (filtered by the `add-msg-prefixes` / `filter-msg-prefixes` options).
    pub prefix: String,
    /// The content: a slice of the received payload.
    pub content: Buffer,
    /// For transactional messages: the transaction's ID, commit LSN and position in it.
    pub txn: Option<(u32, Lsn, u32)>,
}

impl LogicalMessage {
    /// The position to acknowledge once a non-transactional message is handled: just past it.
    /// (Transactional messages are acknowledged with their transaction's commit.)
    pub fn ack_lsn(&self) -> Lsn {
        Lsn(self.lsn.0 + 1)
    }
}

/// One event of the change stream. New kinds may be added: match with a wildcard arm.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Event {
    /// A transaction begins.
    Begin(TxnBegin),
    /// A table's schema, sent before its first batch in the session and after it changes.
    Relation(Arc<Relation>),
    /// Changed rows of one table.
    Change(ChangeBatch),
    /// Tables were truncated.
    Truncate(TruncateEvent),
    /// A logical decoding message.
    Message(LogicalMessage),
    /// The transaction committed.
    Commit(TxnCommit),
    /// The connection was lost and re-established (by [`crate::CdcStream`]): everything after
    /// the acknowledged position `from` is delivered again, starting with a Begin. Drop any
    /// transaction received only in part.
    Restarted {
        /// The position the stream resumed from.
        from: Lsn,
        /// Why the connection was lost.
        reason: String,
    },
}

#[derive(Debug)]
struct OpenTxn {
    begin: TxnBegin,
    origin: Option<Arc<str>>,
    /// Batches, truncates and transactional messages so far.
    events: u32,
}

/// A running logical replication stream of wal2arrow messages (or of wal2json's, decoded into
/// the same events).
#[derive(Debug)]
pub struct ChangeStream {
    conn: Connection,
    format: Format,
    /// Messages the wal2json decoder produced and not yet delivered.
    pending: VecDeque<Output>,
    /// Messages of a wal2arrow Bundle not yet delivered, with the payload slices they came in.
    bundled: VecDeque<(WireMessage, Buffer)>,
    /// Reused for decoding a payload into its messages.
    decoded: Vec<(WireMessage, Buffer)>,
    /// A wal2json payload whose decoding waits on the catalog (kept across cancellation).
    inflight: Option<(Buffer, Lsn)>,
    received: Lsn,
    acked: AckHandle,
    /// Where acknowledgements must reach before the stream may confirm on its own: past the
    /// last delivered commit or non-transactional message.
    delivered_through: Lsn,
    heartbeat_prefix: Option<String>,
    server_wal_end: Lsn,
    /// The highest position a keepalive reported.
    keepalive_position: Lsn,
    /// Where the server position is published as it advances (see
    /// [`set_position_out`](Self::set_position_out)).
    position_out: Option<Arc<AtomicU64>>,
    status_interval: Duration,
    next_status: Instant,
    txn: Option<OpenTxn>,
    done: bool,
    received_bytes: u64,
}

/// What [`ChangeStream::next_step`] yields.
#[derive(Debug)]
pub(crate) enum Step {
    /// An event.
    Event(Event),
    /// A keepalive moved the server's position here: every event before it was yielded.
    Position(Lsn),
}

/// An undecoded frame of a replication stream ([`ChangeStream::next_raw`]).
#[derive(Clone, Debug)]
pub enum RawFrame {
    /// XLogData: the plugin's bytes, and the WAL positions the server sent with them.
    Data {
        /// The position of the data.
        wal_start: Lsn,
        /// The server's end of WAL as it sent them.
        wal_end: Lsn,
        /// The plugin's output.
        payload: Buffer,
    },
    /// A keepalive: the server has sent everything up to `wal_end`.
    Keepalive {
        /// The server's position.
        wal_end: Lsn,
    },
}

impl ChangeStream {
    /// The server's end of WAL as of its last message: the difference to
    /// [`acknowledged`](Self::acknowledged) is the slot's backlog in bytes.
    pub fn server_wal_end(&self) -> Lsn {
        self.server_wal_end
    }

    /// Publishes the server's position ([`server_wal_end`](Self::server_wal_end)) into `cell`
    /// whenever a frame moves it, keepalives included: for progress and lag figures (it moves
    /// as a frame is read, before its events are returned).
    pub(crate) fn set_position_out(&mut self, cell: Arc<AtomicU64>) {
        cell.fetch_max(self.server_wal_end.0, Ordering::SeqCst);
        self.position_out = Some(cell);
    }

    fn server_position(&mut self, wal_end: Lsn) {
        self.server_wal_end = self.server_wal_end.max(wal_end);
        if let Some(cell) = &self.position_out {
            cell.fetch_max(wal_end.0, Ordering::SeqCst);
        }
    }

    /// Sets how often an unsolicited status update is sent (default 10 s).
    pub fn set_status_interval(&mut self, interval: Duration) {
        self.status_interval = interval;
        self.next_status = Instant::now() + interval;
    }

    /// The position acknowledged so far (sent to the server as *flush*).
    pub fn acknowledged(&self) -> Lsn {
        self.acked.acknowledged()
    }

    /// A handle to acknowledge positions from another task.
    pub fn ack_handle(&self) -> AckHandle {
        self.acked.clone()
    }

    /// Makes the stream report (and auto-advance) `handle` instead of its own: several
    /// streams, one after another, can then share one acknowledged position.
    pub fn set_ack_handle(&mut self, handle: AckHandle) {
        handle.ack(self.acked.acknowledged());
        self.acked = handle;
    }

    /// Logical messages with this prefix (non-transactional ones, as from the heartbeat) are
    /// not delivered: they only let the stream confirm its position while caught up.
    pub fn set_heartbeat_prefix(&mut self, prefix: Option<String>) {
        self.heartbeat_prefix = prefix;
    }

    /// Whether every delivered transaction and message has been acknowledged and no
    /// transaction is open: the stream may then confirm positions on its own.
    pub fn caught_up(&self) -> bool {
        self.txn.is_none() && self.acked.acknowledged() >= self.delivered_through
    }

    /// How many payloads the decoder had to copy for alignment (zero when zero-copy holds;
    /// always zero for wal2json).
    pub fn realigned_payloads(&self) -> u64 {
        match &self.format {
            Format::Wal2Arrow(d) => d.realigned_payloads(),
            Format::Wal2Json(_) => 0,
        }
    }

    /// The plugin whose output this stream decodes.
    pub fn output_plugin(&self) -> OutputPlugin {
        match &self.format {
            Format::Wal2Arrow(_) => OutputPlugin::Wal2Arrow,
            Format::Wal2Json(_) => OutputPlugin::Wal2Json,
        }
    }

    /// Acknowledges everything up to `lsn` (normally a [`TxnCommit::end_lsn`]) as durably
    /// handled. The server hears of it with the next status update; positions never move
    /// back.
    pub fn ack(&mut self, lsn: Lsn) {
        self.acked.ack(lsn);
    }

    /// The next event, or `None` once the server ended the stream.
    ///
    /// Cancel safety: this method is cancel safe. A call dropped in `select!` loses no data;
    /// the next call continues where it stopped.
    ///
    /// # Errors
    ///
    /// The server's errors (a plugin ERROR ends the stream), connection failures, and
    /// [`Error::Wire`] for a message that cannot be decoded.
    pub async fn next_event(&mut self) -> Result<Option<Event>> {
        loop {
            match self.next_step().await? {
                Some(Step::Event(event)) => return Ok(Some(event)),
                Some(Step::Position(_)) => {}
                None => return Ok(None),
            }
        }
    }

    /// The next event, or the server's position when a keepalive moved it: every event of
    /// the data before that position has been returned by then (the walsender sends a
    /// keepalive's position only after everything before it). Cancel safe, as
    /// [`next_event`](Self::next_event).
    pub(crate) async fn next_step(&mut self) -> Result<Option<Step>> {
        if self.done && self.pending.is_empty() && self.bundled.is_empty() {
            return Ok(None);
        }
        loop {
            if let Some((message, payload)) = self.bundled.pop_front() {
                let bytes = payload.len();
                if let Some(event) = self.deliver(message, payload, bytes)? {
                    return Ok(Some(Step::Event(event)));
                }
                continue;
            }
            if let Some(output) = self.pending.pop_front() {
                let payload = Buffer::from_vec(Vec::<u8>::new());
                if let Some(event) = self.deliver(output.message, payload, output.source_bytes)? {
                    return Ok(Some(Step::Event(event)));
                }
                continue;
            }
            if let Some((payload, lsn)) = self.inflight.clone() {
                self.decode_json(&payload, lsn).await?;
                self.inflight = None;
                continue;
            }
            let Some(frame) = self.read_frame().await? else { return Ok(None) };
            match frame {
                Frame::XLogData { wal_start, payload, .. } => {
                    let Format::Wal2Arrow(decoder) = &mut self.format else {
                        self.inflight = Some((payload, wal_start));
                        continue;
                    };
                    // One message, or a Bundle of a transaction's messages.
                    let decoded = decoder.decode_into(&payload, &mut self.decoded);
                    self.bundled.extend(self.decoded.drain(..));
                    decoded.map_err(|source| Error::Wire { lsn: wal_start, source })?;
                }
                Frame::Keepalive { wal_end, reply } => {
                    if self.caught_up() {
                        self.acked.ack(wal_end);
                    }
                    let moved = wal_end > self.keepalive_position;
                    self.keepalive_position = self.keepalive_position.max(wal_end);
                    if reply {
                        self.send_status(false).await?;
                    }
                    if moved {
                        return Ok(Some(Step::Position(wal_end)));
                    }
                }
                _ => unreachable!("read_frame returns data and keepalives only"),
            }
        }
    }

    /// The next frame, undecoded: for plugins other than wal2arrow and wal2json (the
    /// benchmarks read pgoutput and test_decoding with it). Keepalives that ask for a reply
    /// are answered, and status updates go out on the timer, reporting
    /// [`acknowledged`](Self::acknowledged) as flushed. `None` once the server ended the
    /// stream.
    ///
    /// Cancel safety: cancel safe, as [`next_event`](Self::next_event).
    ///
    /// # Errors
    ///
    /// The server's errors and connection failures.
    pub async fn next_raw(&mut self) -> Result<Option<RawFrame>> {
        Ok(match self.read_frame().await? {
            Some(Frame::XLogData { wal_start, wal_end, payload }) => {
                Some(RawFrame::Data { wal_start, wal_end, payload })
            }
            Some(Frame::Keepalive { wal_end, reply }) => {
                if reply {
                    self.send_status(false).await?;
                }
                Some(RawFrame::Keepalive { wal_end })
            }
            Some(_) => unreachable!("read_frame returns data and keepalives only"),
            None => None,
        })
    }

    /// Bytes of XLogData payload received so far.
    pub fn received_bytes(&self) -> u64 {
        self.received_bytes
    }

    /// Reads the next XLogData or keepalive frame (the caller answers a keepalive's reply
    /// request), handling everything else: status updates on the timer, notices, the end of
    /// the stream (`None`), errors.
    async fn read_frame(&mut self) -> Result<Option<Frame>> {
        loop {
            if self.done {
                return Ok(None);
            }
            if Instant::now() >= self.next_status {
                self.send_status(false).await?;
            }
            // Frames already read need no timer; wait (with the status timer) only for more.
            let frame = match self.conn.reader.try_frame()? {
                Some(frame) => frame,
                None => {
                    let due = self.next_status;
                    tokio::select! {
                        filled = self.conn.reader.fill(&mut self.conn.stream) => filled?,
                        () = tokio::time::sleep_until(due) => self.send_status(false).await?,
                    }
                    continue;
                }
            };
            match frame {
                Frame::XLogData { wal_end, ref payload, .. } => {
                    self.server_position(wal_end);
                    self.received_bytes += payload.len() as u64;
                    return Ok(Some(frame));
                }
                Frame::Keepalive { wal_end, .. } => {
                    self.server_position(wal_end);
                    return Ok(Some(frame));
                }
                Frame::CopyBoth => return Err(Error::Protocol("second CopyBothResponse".into())),
                Frame::Other(mut bytes) => match Message::parse(&mut bytes)? {
                    Some(Message::ErrorResponse(e)) => {
                        self.done = true;
                        return Err(Error::Server(db_error(e.fields())));
                    }
                    Some(Message::NoticeResponse(n)) => {
                        let n = db_error(n.fields());
                        tracing::info!(code = %n.code, "server notice: {}", n.message);
                    }
                    Some(Message::CopyDone) => {
                        self.done = true;
                        self.conn.queue(|b| {
                            frontend::copy_done(b);
                            Ok(())
                        })?;
                        self.conn.flush().await?;
                        return Ok(None);
                    }
                    // A walsender that shuts down ends the stream with CommandComplete.
                    Some(Message::CommandComplete(_) | Message::ReadyForQuery(_)) => {
                        self.done = true;
                        return Ok(None);
                    }
                    Some(Message::ParameterStatus(_)) => {}
                    Some(_) => {
                        return Err(Error::Protocol("unexpected message while streaming".into()));
                    }
                    None => return Err(Error::Protocol("incomplete message".into())),
                },
            }
        }
    }

    /// Decodes a wal2json payload into [`pending`](Self::pending), asking the catalog what the
    /// decoder needs. Cancel safe: the payload stays in `inflight` until decoded, and what the
    /// decoder produced before a catalog question is already in `pending`.
    async fn decode_json(&mut self, payload: &Buffer, lsn: Lsn) -> Result<()> {
        let Format::Wal2Json(session) = &mut self.format else {
            return Err(Error::Protocol("a wal2json payload on a wal2arrow stream".into()));
        };
        loop {
            let step = session.decoder.decode_at(payload.as_slice(), lsn, &mut session.out);
            self.pending.extend(session.out.drain(..));
            match step? {
                None => return Ok(()),
                Some(lookup) => {
                    session.catalog.answer(lookup, &mut session.decoder.catalog).await?;
                }
            }
        }
    }

    /// Turns a decoded message into the event to return, if any: heartbeats are swallowed
    /// (and confirmed when caught up), and delivered positions recorded.
    fn deliver(
        &mut self,
        message: WireMessage,
        payload: Buffer,
        source_bytes: usize,
    ) -> Result<Option<Event>> {
        let Some(event) = self.event(message, payload, source_bytes)? else { return Ok(None) };
        if let Event::Message(m) = &event
            && !m.transactional
            && self.heartbeat_prefix.as_deref() == Some(m.prefix.as_str())
        {
            if self.caught_up() {
                self.acked.ack(m.ack_lsn());
            }
            return Ok(None);
        }
        match &event {
            Event::Commit(c) => self.delivered_through = self.delivered_through.max(c.end_lsn),
            Event::Message(m) if !m.transactional => {
                self.delivered_through = self.delivered_through.max(m.ack_lsn())
            }
            _ => {}
        }
        Ok(Some(event))
    }

    /// Turns a decoded message into an event; `None` for messages that only update state (an
    /// Origin message).
    fn event(
        &mut self,
        message: WireMessage,
        payload: Buffer,
        source_bytes: usize,
    ) -> Result<Option<Event>> {
        fn open<'t>(txn: &'t mut Option<OpenTxn>, what: &str) -> Result<&'t mut OpenTxn> {
            txn.as_mut()
                .ok_or_else(|| Error::Protocol(format!("{what} arrived outside a transaction")))
        }
        Ok(Some(match message {
            WireMessage::Begin(b) => {
                let begin = TxnBegin {
                    xid: b.xid,
                    commit_lsn: b.final_lsn,
                    commit_time_us: b.commit_time_us,
                    origin: None,
                };
                self.txn = Some(OpenTxn { begin: begin.clone(), origin: None, events: 0 });
                Event::Begin(begin)
            }
            WireMessage::Origin { name, .. } => {
                let txn = open(&mut self.txn, "an origin")?;
                txn.begin.origin = Some(name.clone());
                txn.origin = Some(name.into());
                return Ok(None);
            }
            WireMessage::Schema(relation) => Event::Relation(relation),
            WireMessage::Batch(b) => {
                let txn = open(&mut self.txn, "a batch")?;
                txn.events += 1;
                Event::Change(ChangeBatch {
                    relation: b.relation,
                    xid: txn.begin.xid,
                    commit_lsn: txn.begin.commit_lsn,
                    commit_time_us: txn.begin.commit_time_us,
                    origin: txn.origin.clone(),
                    ordinal: txn.events - 1,
                    batch: b.batch,
                    payload,
                    source_bytes,
                })
            }
            WireMessage::Truncate { relations, cascade, restart_identity } => {
                let txn = open(&mut self.txn, "a truncate")?;
                txn.events += 1;
                Event::Truncate(TruncateEvent {
                    relations,
                    cascade,
                    restart_identity,
                    xid: txn.begin.xid,
                    commit_lsn: txn.begin.commit_lsn,
                    ordinal: txn.events - 1,
                })
            }
            WireMessage::Message { transactional, lsn, prefix, content } => {
                let txn = if transactional {
                    let txn = open(&mut self.txn, "a transactional message")?;
                    txn.events += 1;
                    Some((txn.begin.xid, txn.begin.commit_lsn, txn.events - 1))
                } else {
                    None
                };
                Event::Message(LogicalMessage { transactional, lsn, prefix, content, txn })
            }
            WireMessage::Commit(c) => {
                let txn = self.txn.take().ok_or_else(|| {
                    Error::Protocol("a commit arrived outside a transaction".into())
                })?;
                self.received = self.received.max(c.end_lsn);
                Event::Commit(TxnCommit {
                    xid: txn.begin.xid,
                    commit_lsn: c.commit_lsn,
                    end_lsn: c.end_lsn,
                    commit_time_us: c.commit_time_us,
                    batches: txn.events,
                })
            }
        }))
    }

    /// Sends a standby status update now: received (*write*) and acknowledged (*flush*,
    /// *apply*) positions.
    ///
    /// # Errors
    ///
    /// When the connection fails.
    pub async fn send_status(&mut self, reply_requested: bool) -> Result<()> {
        let now_us =
            SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0)
                - PG_EPOCH_MICROS;
        let flushed = self.acked.acknowledged();
        let written = self.received.max(flushed);
        let mut body = Vec::with_capacity(34);
        body.push(b'r');
        body.extend_from_slice(&written.0.to_be_bytes());
        body.extend_from_slice(&flushed.0.to_be_bytes());
        body.extend_from_slice(&flushed.0.to_be_bytes());
        body.extend_from_slice(&now_us.to_be_bytes());
        body.push(u8::from(reply_requested));
        self.conn.queue(|b| {
            frontend::CopyData::new(&body[..])?.write(b);
            Ok(())
        })?;
        self.conn.flush().await?;
        self.next_status = Instant::now() + self.status_interval;
        Ok(())
    }

    /// Sends a final status update and ends the stream cleanly (CopyDone, Terminate).
    ///
    /// # Errors
    ///
    /// When the connection fails; the server may already be gone.
    pub async fn close(mut self) -> Result<()> {
        self.send_status(false).await?;
        if !self.done {
            self.conn.queue(|b| {
                frontend::copy_done(b);
                Ok(())
            })?;
        }
        self.conn.queue(|b| {
            frontend::terminate(b);
            Ok(())
        })?;
        self.conn.flush().await
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

/// Opens an ordinary SQL connection (tokio-postgres) with the same settings; the connection's
/// I/O runs on a spawned task. The whole start-up — connecting, TLS, authentication — is
/// bounded by `connect_timeout`.
///
/// # Errors
///
/// Connection, TLS, timeout and authentication errors, classified as on the replication
/// connection ([`Error::Connect`], [`Error::Tls`], [`Error::Timeout`], [`Error::Auth`], the
/// server's error).
pub async fn sql_client(config: &Config) -> Result<tokio_postgres::Client> {
    config.validate()?;
    let tls = match crate::tls::client_config(config)? {
        Some(tls) => tls,
        // sslmode=disable: tokio-postgres never calls the connector.
        None => crate::tls::client_config(&Config {
            ssl_mode: crate::config::SslMode::Require,
            ..config.clone()
        })?
        .expect("require has a TLS configuration"),
    };
    let pg_config = config.to_tokio_postgres();
    let connect = pg_config.connect(crate::tls::MakeRustls(tls));
    let (client, connection) = match tokio::time::timeout(config.connect_timeout, connect).await {
        Ok(Ok(connected)) => connected,
        Ok(Err(e)) => return Err(connect_error(config, e)),
        Err(_) => {
            return Err(Error::Timeout {
                what: "connecting and authenticating",
                after: config.connect_timeout,
            });
        }
    };
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!("SQL connection ended: {e}");
        }
    });
    Ok(client)
}

/// Classifies a failed tokio-postgres connection attempt as the replication connection's are.
/// The server's errors are read by SQLSTATE; tokio-postgres's own failures carry no kind
/// that can be asked, so its (fixed, English) descriptions of TLS and configuration errors are
/// recognised here, in this one place.
fn connect_error(config: &Config, e: tokio_postgres::Error) -> Error {
    if let Some(db) = e.as_db_error() {
        return crate::protocol::conn::login_error(crate::error::DbError::from(db));
    }
    let text = e.to_string();
    let detail = std::error::Error::source(&e).map(ToString::to_string).unwrap_or_default();
    // Before the I/O causes: our TLS connector reports certificate failures as io::Error.
    if text.starts_with("error performing TLS handshake") {
        return Error::Tls(if detail.contains("does not support TLS") {
            format!(
                "the server at {} does not accept TLS, and sslmode={} requires it: turn ssl on \
                 in postgresql.conf, or use sslmode=prefer",
                config.address(),
                config.ssl_mode.as_str()
            )
        } else {
            format!("TLS handshake with {} failed: {detail}", config.address())
        });
    }
    if text.starts_with("invalid configuration") && config.resolved_password().is_none() {
        return crate::protocol::conn::no_password(config);
    }
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return Error::Connect {
                addr: config.address(),
                source: std::io::Error::new(io.kind(), io.to_string()),
            };
        }
        source = s.source();
    }
    Error::Sql(e)
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

/// How to open a [`ChangeStream`] with [`open`].
#[derive(Clone, Debug)]
pub struct StreamOptions {
    /// Slot name.
    pub slot: String,
    /// Create the slot if it does not exist (default true).
    pub create_slot: bool,
    /// Where to start; `Lsn::INVALID` (default) resumes from the slot's `confirmed_flush_lsn`.
    pub start_lsn: Lsn,
    /// Options for the plugin.
    pub plugin: PluginOptions,
}

impl StreamOptions {
    /// Options for `slot` with defaults otherwise.
    pub fn new(slot: impl Into<String>) -> StreamOptions {
        StreamOptions {
            slot: slot.into(),
            create_slot: true,
            start_lsn: Lsn::INVALID,
            plugin: PluginOptions::default(),
        }
    }
}

/// Opens a wal2arrow change stream: looks the slot up, creates it if it is missing (and
/// allowed to), refuses a slot of another plugin or database, and starts replication.
///
/// # Errors
///
/// [`Error::Slot`] for a slot that cannot be used as asked; connection, authentication and
/// server errors otherwise.
pub async fn open(config: &Config, options: &StreamOptions) -> Result<ChangeStream> {
    let sql = sql_client(config).await?;
    let existing = find_slot(&sql, &options.slot).await?;
    let mut repl = ReplicationClient::connect(config).await?;
    match existing {
        None if options.create_slot => {
            let created = repl.create_slot(&options.slot, PLUGIN_NAME, false).await?;
            tracing::info!(slot = %created.name, lsn = %created.consistent_point, "created replication slot");
        }
        None => {
            return Err(Error::Slot(format!(
                "slot {:?} does not exist; create it (SELECT pg_create_logical_replication_slot({}, \
                 'wal2arrow')) or let the consumer create it",
                options.slot,
                quote_literal(&options.slot)
            )));
        }
        Some(s) if s.plugin.as_deref() != Some(PLUGIN_NAME) => {
            return Err(Error::Slot(format!(
                "slot {:?} exists with plugin {}, not wal2arrow: use another slot name, or drop \
                 it (SELECT pg_drop_replication_slot({})) if nothing else needs it",
                options.slot,
                s.plugin.as_deref().unwrap_or("(physical)"),
                quote_literal(&options.slot)
            )));
        }
        Some(s) if s.database.as_deref() != Some(config.dbname()) => {
            return Err(Error::Slot(format!(
                "slot {:?} belongs to database {:?}, not {:?}",
                options.slot,
                s.database.unwrap_or_default(),
                config.dbname()
            )));
        }
        Some(_) => {}
    }
    repl.start(&options.slot, options.start_lsn, &options.plugin).await
}
