//! The high-level API: configure a [`Consumer`] with its builder, [`start`](Consumer::start)
//! it, and read a [`CdcStream`] of [`Event`]s.
//!
//! A background task owns the replication connection. It keeps talking to the server while
//! your code is busy (status updates every `max_poll_interval`, so a slow consumer is never
//! dropped for `wal_sender_timeout`), sends heartbeats while the database is idle, and on a
//! transient failure — the connection dropped, the server restarted, the slot still held by a
//! dying session — reconnects with exponential backoff and resumes from the acknowledged
//! position, announcing it with [`Event::Restarted`]. Events reach you through a bounded
//! channel: when you read slowly, the task stops reading from the server and the WAL waits
//! there, in the slot, rather than in memory here.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

/// What a [`CdcStream`] asks of its driver.
#[derive(Debug)]
enum Command {
    /// Send a status update now and answer once it is written.
    SyncAcks(oneshot::Sender<Result<Lsn>>),
}
use tokio::task::JoinHandle;
use tokio::time::Instant;
use wal2arrow_client::sql::quote_ident;
use wal2arrow_client::{
    AckHandle, ChangeStream, Config, CreatedSlot, Error as ClientError, Event, InProgress,
    OutputPlugin, ReplicationClient, RootCerts, SlotProblem, SlotResolution, Snapshot,
    SnapshotProgress, SslMode, Step, StreamedStats, resolve_slot, sql_client,
};
use wal2arrow_schema::patterns::TablePattern;
use wal2arrow_schema::{Lsn, PluginOptions, TableFilter};

use crate::error::{Error, Result};
use crate::preflight::{AllowList, Preflight, refused_report};
use crate::report::PreflightReport;
use crate::settings::{Backoff, PluginChoice, SlotMode, SnapshotMode, SnapshotResume};

/// The prefix of the heartbeat messages the consumer emits.
pub const HEARTBEAT_PREFIX: &str = "wal2arrow.heartbeat";

/// Builds a [`Consumer`]; [`build`](Self::build) checks the settings.
#[derive(Clone, Debug)]
pub struct ConsumerBuilder {
    config: Config,
    slot: SlotMode,
    tables: Vec<String>,
    plugin: PluginOptions,
    max_poll_interval: Duration,
    heartbeat_interval: Option<Duration>,
    start_lsn: Lsn,
    backoff: Backoff,
    buffer_events: usize,
    preflight: bool,
    publication: Option<String>,
    output_plugin: PluginChoice,
    snapshot: SnapshotMode,
    snapshot_workers: Option<usize>,
    snapshot_chunk_pages: u32,
    resumable_snapshot: bool,
    snapshot_resume: Option<SnapshotResume>,
    tables_held: Option<Option<Vec<String>>>,
    failover: bool,
    backfill: Vec<String>,
    backfill_chunk_rows: u32,
    in_progress: InProgress,
}

impl Default for ConsumerBuilder {
    fn default() -> Self {
        ConsumerBuilder {
            config: Config::default(),
            slot: SlotMode::Persistent { name: "wal2arrow".into(), create_if_missing: true },
            tables: Vec::new(),
            // Large transactions come while in progress (kept until they commit, see
            // `in_progress`), not spilled to the server's disk until their commit.
            plugin: PluginOptions { streaming: true, ..PluginOptions::default() },
            max_poll_interval: Duration::from_secs(1),
            heartbeat_interval: Some(Duration::from_secs(10)),
            start_lsn: Lsn::INVALID,
            backoff: Backoff::default(),
            buffer_events: 64,
            preflight: true,
            publication: None,
            output_plugin: PluginChoice::Auto,
            snapshot: SnapshotMode::Auto,
            snapshot_workers: None,
            snapshot_chunk_pages: wal2arrow_client::snapshot::DEFAULT_CHUNK_PAGES,
            resumable_snapshot: false,
            snapshot_resume: None,
            tables_held: None,
            failover: false,
            backfill: Vec::new(),
            backfill_chunk_rows: crate::backfill::DEFAULT_CHUNK_ROWS,
            in_progress: InProgress::default(),
        }
    }
}

impl ConsumerBuilder {
    /// Connection settings from a libpq connection string (keyword/value or URI).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for a malformed string.
    pub fn dsn(mut self, dsn: &str) -> Result<Self> {
        self.config = Config::from_dsn(dsn)?;
        Ok(self)
    }

    /// Connection settings.
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// Server host name or address.
    pub fn host(mut self, host: impl Into<String>) -> Self {
        self.config.host = host.into();
        self
    }

    /// Server port.
    pub fn port(mut self, port: u16) -> Self {
        self.config.port = port;
        self
    }

    /// Database.
    pub fn dbname(mut self, dbname: impl Into<String>) -> Self {
        self.config.dbname = Some(dbname.into());
        self
    }

    /// User name.
    pub fn user(mut self, user: impl Into<String>) -> Self {
        self.config.user = user.into();
        self
    }

    /// Password.
    pub fn password(mut self, password: impl Into<String>) -> Self {
        self.config.password = Some(password.into());
        self
    }

    /// Longest wait to connect and authenticate (default 30 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.config.connect_timeout = timeout;
        self
    }

    /// The largest message accepted from the server (default 256 MiB; see
    /// [`Config::max_message_size`]).
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.config.max_message_size = bytes;
        self
    }

    /// TLS mode (default `prefer`).
    pub fn ssl_mode(mut self, mode: SslMode) -> Self {
        self.config.ssl_mode = mode;
        self
    }

    /// Trusted CAs for `verify-ca` / `verify-full`.
    pub fn ssl_root_cert(mut self, roots: RootCerts) -> Self {
        self.config.ssl_root_cert = Some(roots);
        self
    }

    /// Stream from the persistent slot `name` (default `wal2arrow`), created if missing.
    pub fn slot(mut self, name: impl Into<String>) -> Self {
        self.slot = SlotMode::Persistent { name: name.into(), create_if_missing: true };
        self
    }

    /// Stream from the persistent slot `name`, which must exist.
    pub fn existing_slot(mut self, name: impl Into<String>) -> Self {
        self.slot = SlotMode::Persistent { name: name.into(), create_if_missing: false };
        self
    }

    /// Stream from a temporary slot (see [`SlotMode::Temporary`]).
    pub fn temporary_slot(mut self, name: impl Into<String>) -> Self {
        self.slot = SlotMode::Temporary { name: name.into() };
        self
    }

    /// Capture only tables matching these patterns (`public.users`, `public.*`, `*.orders`,
    /// `public.user_*`, `public.user_[0-9]+`); default: every table. Tables created later that
    /// match are captured too.
    pub fn tables<I, S>(mut self, patterns: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.tables = patterns.into_iter().map(Into::into).collect();
        self
    }

    /// Most rows of one table per batch (default 8192).
    pub fn batch_rows(mut self, rows: u32) -> Self {
        self.plugin.batch_rows = rows;
        self
    }

    /// Whether the server sends transactions larger than its `logical_decoding_work_mem` while
    /// they are in progress (default true; the plugin's `streaming` option). They reach you
    /// as [`in_progress`](Self::in_progress) says — by default whole, at their commit, as any
    /// other — but the server no longer writes them to its disk until the commit, and the
    /// last row arrives soon after the commit rather than minutes later. Off: the server
    /// decodes each transaction only once it committed (and spills large ones to its disk
    /// meanwhile). The wal2json fallback never streams.
    pub fn streaming(mut self, on: bool) -> Self {
        self.plugin.streaming = on;
        self
    }

    /// What happens to transactions the server streams before they commit (see
    /// [`streaming`](Self::streaming)): by default ([`InProgress::Buffer`], 48 MiB in memory
    /// for all of them, then spill files in the system's temporary directory) they are kept
    /// and delivered at their commit, whole and in commit order, and dropped if they abort;
    /// [`InProgress::Deliver`] hands their batches on as they arrive, for applications that
    /// stage them (see [`Event::StreamCommit`]).
    pub fn in_progress(mut self, mode: InProgress) -> Self {
        self.in_progress = mode;
        self
    }

    /// Every other plugin option (`tables` and `batch-rows` set here win).
    pub fn plugin_options(mut self, options: PluginOptions) -> Self {
        let (tables, batch_rows) = (self.plugin.tables.clone(), self.plugin.batch_rows);
        self.plugin = PluginOptions { tables, batch_rows, ..options };
        self
    }

    /// How long the stream may go without telling the server its position (default 1 s):
    /// status updates go out at least this often, even while your code is busy.
    pub fn max_poll_interval(mut self, interval: Duration) -> Self {
        self.max_poll_interval = interval;
        self
    }

    /// After this long without events, emit a heartbeat message so the slot can advance
    /// (default 10 s); `None` turns heartbeats off.
    pub fn heartbeat_interval(mut self, interval: Option<Duration>) -> Self {
        self.heartbeat_interval = interval;
        self
    }

    /// Start from this position instead of the slot's `confirmed_flush_lsn` (the server
    /// starts at the later of the two).
    pub fn start_lsn(mut self, lsn: Lsn) -> Self {
        self.start_lsn = lsn;
        self
    }

    /// Reconnection backoff.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// How many events may wait for your code (default 64): the bound on the stream's memory.
    pub fn buffer_events(mut self, events: usize) -> Self {
        self.buffer_events = events;
        self
    }

    /// Run the preflight checks before starting (default true); a failure is
    /// [`Error::Preflight`], naming each problem and its fix.
    pub fn preflight(mut self, check: bool) -> Self {
        self.preflight = check;
        self
    }

    /// Create this publication for the matched tables (all tables without patterns) if it
    /// does not exist. wal2arrow does not need one — only tools reading pgoutput do — and a
    /// publication that publishes updates and deletes makes UPDATE and DELETE *fail* on its
    /// tables that have no replica identity: a warning is logged for that.
    pub fn create_publication(mut self, name: impl Into<String>) -> Self {
        self.publication = Some(name.into());
        self
    }

    /// Which output plugin to stream with (default [`PluginChoice::Auto`]: wal2arrow, falling
    /// back to wal2json when the server cannot load it).
    pub fn output_plugin(mut self, choice: PluginChoice) -> Self {
        self.output_plugin = choice;
        self
    }

    /// Whether to start with a snapshot of the tables' existing rows (default
    /// [`SnapshotMode::Auto`]: when this stream creates its slot). Snapshot rows arrive as one
    /// pseudo-transaction (xid 0, commit LSN the slot's consistent point) of batches whose
    /// `_op` is `read`, with [`Event::Snapshot`] progress events; acknowledge its commit's
    /// `end_lsn` once the rows are durable — a new persistent slot is made permanent only
    /// then, so a snapshot cut short is taken again, whole, by the next run (unless a sink
    /// records finished ranges: [`resumable_snapshot`](Self::resumable_snapshot)).
    pub fn snapshot(mut self, mode: SnapshotMode) -> Self {
        self.snapshot = mode;
        self
    }

    /// Connections the snapshot copies with (default: the number of CPUs, 2 to 4).
    pub fn snapshot_workers(mut self, workers: usize) -> Self {
        self.snapshot_workers = Some(workers);
        self
    }

    /// Heap pages per range a snapshot worker copies at a time (default 4096, 32 MiB).
    pub fn snapshot_chunk_pages(mut self, pages: u32) -> Self {
        self.snapshot_chunk_pages = pages;
        self
    }

    /// For a sink that records each finished range of an initial snapshot durably
    /// ([`SnapshotEvent::ChunkDone`](wal2arrow_client::SnapshotEvent::ChunkDone); the Parquet
    /// sink does): a new persistent slot is created persistent at once instead of after the
    /// snapshot, so a run that dies during the snapshot leaves it behind, and the next run —
    /// given what the sink recorded, `from` — copies only the ranges not recorded, then
    /// streams from the slot's consistent point. `from` must be the snapshot of this very slot
    /// (its consistent point is checked); with `None`, a snapshot is taken as usual, and an
    /// existing slot is not snapshotted again. A record whose `lsn` is
    /// [`Lsn::INVALID`] says only that a snapshot was about to begin: record it durably before
    /// [`start`](Consumer::start) creates the slot, and a run that dies before the snapshot's
    /// LSN is recorded leaves a slot the next run (passing it) snapshots at its position
    /// ([`SnapshotMode::Auto`]) instead of streaming without the tables' rows. Resuming needs
    /// [`SlotMode::Persistent`] and [`SnapshotMode::Auto`] or [`SnapshotMode::Initial`].
    pub fn resumable_snapshot(mut self, from: Option<SnapshotResume>) -> Self {
        self.resumable_snapshot = true;
        self.snapshot_resume = from;
        self
    }

    /// For a sink that keeps the record of the tables whose existing rows it holds
    /// ([`SnapshotEvent::TablesHeld`](wal2arrow_client::SnapshotEvent::TablesHeld); the Parquet
    /// sink does): `held` is that record from the last run (`None`: there is none yet). The
    /// stream then backfills the captured tables the record lacks — at start, and when it first
    /// shows a table that existed before it started — and sends the record again whenever it
    /// changes (see [`crate::coverage`]).
    pub fn tables_held(mut self, held: Option<Vec<String>>) -> Self {
        self.tables_held = Some(held);
        self
    }

    /// Backfill these tables (patterns) once the stream runs: their existing rows arrive again,
    /// in chunks in key order, as `read` rows between the stream's changes (see
    /// [`crate::backfill`]); [`CdcStream::backfill`] asks later. Each needs a primary key.
    pub fn backfill<I, S>(mut self, tables: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.backfill = tables.into_iter().map(Into::into).collect();
        self
    }

    /// Rows per backfill chunk (default 10,000): memory holds one chunk.
    pub fn backfill_chunk_rows(mut self, rows: u32) -> Self {
        self.backfill_chunk_rows = rows;
        self
    }

    /// Report a partition's rows as its partition root's (default true; the plugin option
    /// `publish-via-root`): see the README's "Partitioned tables". The wal2json fallback
    /// always reports partitions under their own names.
    pub fn publish_via_root(mut self, on: bool) -> Self {
        self.plugin.publish_via_root = on;
        self
    }

    /// Make the slot a failover slot (PostgreSQL 17 and later; default false): PostgreSQL
    /// synchronizes it to physical standbys that have `sync_replication_slots` on, so the
    /// stream can go on from a promoted standby. A slot this stream creates is created so
    /// (one made after a snapshot is altered so), and an existing slot is altered so. On an
    /// older server, starting fails with [`Error::Client`] ([`ClientError::Slot`]) saying so.
    pub fn failover_slot(mut self, failover: bool) -> Self {
        self.failover = failover;
        self
    }

    /// Checks the settings and makes the consumer.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the setting that is invalid and what it accepts.
    pub fn build(mut self) -> Result<Consumer> {
        self.config.validate()?;
        validate_slot_name(self.slot.name())?;
        let patterns = self
            .tables
            .iter()
            .map(|p| TablePattern::parse(p).map_err(|e| Error::Config(format!("tables: {e}"))))
            .collect::<Result<Vec<_>>>()?;
        self.plugin.tables = TableFilter::new(patterns);
        if !(1..=wal2arrow_schema::options::MAX_BATCH_ROWS).contains(&self.plugin.batch_rows) {
            return Err(Error::Config(format!(
                "batch_rows must be 1 to {}, not {}",
                wal2arrow_schema::options::MAX_BATCH_ROWS,
                self.plugin.batch_rows
            )));
        }
        if self.max_poll_interval.is_zero() || self.max_poll_interval > Duration::from_secs(3600) {
            return Err(Error::Config("max_poll_interval must be between 1 ms and 1 hour".into()));
        }
        if self.heartbeat_interval.is_some_and(|h| h.is_zero()) {
            return Err(Error::Config(
                "heartbeat_interval must be positive (None turns it off)".into(),
            ));
        }
        if self.snapshot_workers.is_some_and(|w| !(1..=64).contains(&w)) {
            return Err(Error::Config("snapshot_workers must be 1 to 64".into()));
        }
        if self.failover && matches!(self.slot, SlotMode::Temporary { .. }) {
            return Err(Error::Config(
                "failover_slot: a temporary slot cannot be a failover slot (PostgreSQL keeps \
                 it only for its session); use a persistent slot"
                    .into(),
            ));
        }
        if self.backfill_chunk_rows == 0 {
            return Err(Error::Config("backfill_chunk_rows must be at least 1".into()));
        }
        if let InProgress::Buffer { memory, spill_dir } = &self.in_progress {
            if *memory == 0 {
                return Err(Error::Config(
                    "in_progress: the memory for streamed transactions must be at least 1 byte"
                        .into(),
                ));
            }
            if !spill_dir.is_dir() {
                return Err(Error::Config(format!(
                    "in_progress: spill directory {} is not a directory",
                    spill_dir.display()
                )));
            }
        }
        // The backfill's messages must reach the stream whatever the prefix filters say.
        let ours = [crate::backfill::WATERMARK_PREFIX, crate::backfill::SIGNAL_PREFIX];
        if !self.plugin.add_msg_prefixes.is_empty() {
            for p in ours {
                if !self.plugin.add_msg_prefixes.iter().any(|a| a == p) {
                    self.plugin.add_msg_prefixes.push(p.to_owned());
                }
            }
        }
        self.plugin.filter_msg_prefixes.retain(|p| !ours.contains(&p.as_str()));
        if self.snapshot_chunk_pages == 0 {
            return Err(Error::Config("snapshot_chunk_pages must be at least 1".into()));
        }
        if let Some(resume) = self.snapshot_resume.as_ref().filter(|r| !r.lsn.is_invalid()) {
            let why = match (&self.slot, self.snapshot) {
                (SlotMode::Temporary { .. }, _) => Some("a temporary slot"),
                (_, SnapshotMode::Never) => Some("no snapshot (SnapshotMode::Never)"),
                (_, SnapshotMode::Only) => Some("a snapshot alone (SnapshotMode::Only)"),
                _ => None,
            };
            if let Some(why) = why {
                return Err(Error::Config(format!(
                    "the sink holds part of a snapshot taken at {} for slot {:?}, which a run \
                     with {why} cannot finish: stream with the default --snapshot (auto) to \
                     resume it, or start over with an empty output",
                    resume.lsn,
                    self.slot.name()
                )));
            }
            if resume.chunk_pages == 0 {
                return Err(Error::Config(
                    "a resumed snapshot's chunk_pages must be at least 1".into(),
                ));
            }
        }
        if self.buffer_events == 0 {
            return Err(Error::Config("buffer_events must be at least 1".into()));
        }
        if self.backoff.initial.is_zero() || self.backoff.max < self.backoff.initial {
            return Err(Error::Config("backoff: initial must be positive and at most max".into()));
        }
        Ok(Consumer { settings: Arc::new(self) })
    }
}

/// Slot names are what PostgreSQL accepts: 1 to 63 lower-case letters, digits, underscores.
fn validate_slot_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "slot name {name:?}: use 1 to 63 lower-case letters, digits and underscores"
        )))
    }
}

/// A configured consumer; [`start`](Self::start) it to get a [`CdcStream`].
#[derive(Clone, Debug)]
pub struct Consumer {
    settings: Arc<ConsumerBuilder>,
}

impl Consumer {
    /// A builder with the defaults.
    pub fn builder() -> ConsumerBuilder {
        ConsumerBuilder::default()
    }

    /// The connection settings.
    pub fn config(&self) -> &Config {
        &self.settings.config
    }

    /// The slot.
    pub fn slot(&self) -> &SlotMode {
        &self.settings.slot
    }

    /// The plugin options the stream will use.
    pub fn plugin_options(&self) -> &PluginOptions {
        &self.settings.plugin
    }

    /// Every preflight check, including loading the plugin into a temporary slot: what
    /// `wal2arrow check` reports.
    ///
    /// # Errors
    ///
    /// When the server cannot be reached; failed checks are in the report.
    pub async fn check(&self) -> Result<PreflightReport> {
        let s = &self.settings;
        Preflight::full(&s.config, &s.slot, &s.plugin.tables)
            .with_plugin(s.output_plugin)
            .with_failover(s.failover)
            .run()
            .await
    }

    /// Connects, runs the preflight checks, makes sure the slot exists with the wal2arrow
    /// plugin (creating a missing one if allowed), starts replication and returns the stream.
    ///
    /// # Errors
    ///
    /// [`Error::Preflight`] naming each unmet requirement and its fix; connection and
    /// authentication errors; `Error::Client(client::Error::Slot(..))` for a slot that cannot
    /// be used (missing, of another plugin or database); the server's refusal to start.
    pub async fn start(&self) -> Result<CdcStream> {
        let s = &self.settings;
        if s.preflight || s.publication.is_some() {
            let report = Preflight::new(&s.config, &s.slot, &s.plugin.tables)
                .with_plugin(s.output_plugin)
                .with_failover(s.failover)
                .run()
                .await?;
            if s.preflight && !report.is_ok() {
                return Err(Error::Preflight(Box::new(report)));
            }
            if let Some(name) = &s.publication {
                ensure_publication(&s.config, name, &s.plugin.tables, &report.tables).await?;
            }
        }
        let plugin_state = Arc::new(PluginState::default());
        let acks = AckHandle::new(s.start_lsn);
        let (tx, rx) = mpsc::channel(s.buffer_events);
        let (close_tx, close_rx) = oneshot::channel();
        let (commands_tx, commands_rx) = mpsc::channel(4);
        let stats = Arc::new(StreamStats::default());
        let driver = Driver {
            plugin_state: Arc::clone(&plugin_state),
            settings: Arc::clone(s),
            tx,
            acks: acks.clone(),
            stats: Arc::clone(&stats),
            commands: commands_rx,
            backfill: crate::backfill::Backfill::new(
                &s.config,
                &s.plugin,
                s.slot.name(),
                s.backfill_chunk_rows,
            ),
            coverage: None,
        };
        let (first, output_plugin) = match prepare_snapshot(s, &plugin_state).await? {
            Some(pending) => {
                let plugin = pending.plugin;
                (First::Snapshot(pending), plugin)
            }
            None => {
                let mut session = Session::connect(s, s.start_lsn, &plugin_state).await?;
                driver.attach(&mut session);
                let plugin = session.stream.output_plugin();
                (First::Session(session), plugin)
            }
        };
        let fallback_reason = plugin_state.fallback_reason();
        if !s.backfill.is_empty() {
            crate::backfill::request(&s.config, s.slot.name(), &s.backfill).await?;
        }
        let task = tokio::spawn(driver.run(first, close_rx));
        Ok(CdcStream {
            rx,
            delivered: Lsn::INVALID,
            acks,
            close: Some(close_tx),
            commands: commands_tx,
            task: Some(task),
            stats,
            output_plugin,
            fallback_reason,
            config: s.config.clone(),
            slot: s.slot.name().to_owned(),
            in_progress: s.in_progress.clone(),
        })
    }
}

/// Creates the publication `name` if missing (see [`ConsumerBuilder::create_publication`]).
async fn ensure_publication(
    config: &Config,
    name: &str,
    filter: &TableFilter,
    tables: &[(String, String)],
) -> Result<()> {
    let sql = sql_client(config).await?;
    if sql.query_opt("SELECT 1 FROM pg_publication WHERE pubname = $1", &[&name]).await?.is_some() {
        return Ok(());
    }
    let target = if filter.is_all() {
        "ALL TABLES".to_owned()
    } else {
        let list: Vec<String> =
            tables.iter().map(|(s, t)| format!("{}.{}", quote_ident(s), quote_ident(t))).collect();
        format!("TABLE {}", list.join(", "))
    };
    sql.batch_execute(&format!("CREATE PUBLICATION {} FOR {target}", quote_ident(name))).await?;
    tracing::warn!(
        publication = %name,
        "created publication {name:?}: UPDATE and DELETE now fail on its tables that have no replica \
         identity (add a primary key or REPLICA IDENTITY FULL)"
    );
    Ok(())
}

/// What the sessions of one stream learnt about the plugins: shared across reconnections.
#[derive(Debug, Default)]
struct PluginState {
    /// Why the stream uses wal2json rather than wal2arrow (said once, in the log).
    fallback: std::sync::Mutex<Option<String>>,
    /// wal2json accepts `numeric-data-types-as-string`: 0 not known yet, 1 yes, 2 no.
    numbers_as_strings: std::sync::atomic::AtomicU8,
}

impl PluginState {
    fn fallback_reason(&self) -> Option<String> {
        self.fallback.lock().map(|f| f.clone()).unwrap_or_default()
    }

    /// Records (and logs, the first time) why the stream reads wal2json.
    fn fell_back(&self, slot: &str, reason: String) {
        let Ok(mut f) = self.fallback.lock() else { return };
        if f.is_none() {
            tracing::warn!(
                slot = %slot,
                "wal2arrow cannot be used ({reason}); falling back to wal2json: same batches, \
                 parsed from JSON (slower; see the README's wal2json fallback section)"
            );
            *f = Some(reason);
        }
    }
}

/// One replication connection.
struct Session {
    stream: ChangeStream,
}

impl Session {
    /// Connects and starts streaming from `from` (or the slot's position), with the plugin the
    /// slot was made for; a missing slot is created with wal2arrow, or — when the choice
    /// allows and the server refuses wal2arrow — with wal2json.
    async fn connect(s: &ConsumerBuilder, from: Lsn, state: &PluginState) -> Result<Session> {
        let mut repl = ReplicationClient::connect(&s.config).await?;
        let plugin = match &s.slot {
            SlotMode::Temporary { name } => {
                create_slot(&mut repl, name, true, false, s, state).await?.0
            }
            SlotMode::Persistent { name, create_if_missing } => {
                let sql = sql_client(&s.config).await?;
                let allowed = s.output_plugin.allowed();
                match resolve_slot(&sql, name, s.config.dbname(), allowed).await? {
                    SlotResolution::Missing if *create_if_missing => {
                        create_slot(&mut repl, name, false, false, s, state).await?.0
                    }
                    SlotResolution::Missing => {
                        let plugin = s.output_plugin.first();
                        return Err(Error::Client(
                            SlotProblem::Missing { name: name.clone(), plugin }.into(),
                        ));
                    }
                    SlotResolution::Unusable(problem) => {
                        return Err(Error::Client(problem.into()));
                    }
                    SlotResolution::Usable(_, plugin) => {
                        if s.failover {
                            // Idempotent; refused with a clear error before 17.
                            repl.set_failover(name, true).await?;
                        }
                        if plugin == OutputPlugin::Wal2Json && s.output_plugin == PluginChoice::Auto
                        {
                            state
                                .fell_back(name, format!("slot {name:?} was created for wal2json"));
                        }
                        plugin
                    }
                }
            }
        };
        Session::start_on(repl, s, plugin, from, state).await
    }

    /// Starts streaming the stream's slot on `repl`, with `plugin`.
    async fn start_on(
        repl: ReplicationClient,
        s: &ConsumerBuilder,
        plugin: OutputPlugin,
        from: Lsn,
        state: &PluginState,
    ) -> Result<Session> {
        let started = match plugin {
            OutputPlugin::Wal2Arrow => repl.start(s.slot.name(), from, &s.plugin).await,
            OutputPlugin::Wal2Json => start_wal2json(repl, s, from, state).await,
        };
        let mut stream = match started {
            Ok(stream) => stream,
            // An existing slot whose plugin the server will not load (any more).
            Err(e) if plugin_unavailable(&e) => {
                return Err(Error::Preflight(Box::new(refused(&s.config, plugin, &e).await)));
            }
            Err(e) => return Err(e.into()),
        };
        stream.set_status_interval(s.max_poll_interval);
        stream.set_in_progress(s.in_progress.clone());
        Ok(Session { stream })
    }
}

/// Creates the slot with the plugin the choice allows, falling back to wal2json when the
/// server refuses wal2arrow and the choice is [`PluginChoice::Auto`]; with `export`, the slot
/// exports a snapshot ([`CreatedSlot::snapshot`]).
async fn create_slot(
    repl: &mut ReplicationClient,
    name: &str,
    temporary: bool,
    export: bool,
    s: &ConsumerBuilder,
    state: &PluginState,
) -> Result<(OutputPlugin, CreatedSlot)> {
    let first = match s.output_plugin {
        PluginChoice::Wal2Json => OutputPlugin::Wal2Json,
        _ => OutputPlugin::Wal2Arrow,
    };
    let create = async |repl: &mut ReplicationClient, plugin: OutputPlugin| {
        if export {
            repl.create_slot_exporting(name, plugin.name(), temporary).await
        } else if s.failover && !temporary {
            repl.create_failover_slot(name, plugin.name()).await
        } else {
            repl.create_slot(name, plugin.name(), temporary).await
        }
    };
    match create(repl, first).await {
        Ok(created) => {
            tracing::info!(slot = %name, plugin = %first, lsn = %created.consistent_point, "created replication slot");
            Ok((first, created))
        }
        Err(e) if s.output_plugin == PluginChoice::Auto && plugin_unavailable(&e) => {
            let reason = e.db_error().map_or_else(|| e.to_string(), |d| d.message.clone());
            match create(repl, OutputPlugin::Wal2Json).await {
                Ok(created) => {
                    state.fell_back(name, reason);
                    tracing::info!(slot = %name, plugin = "wal2json", lsn = %created.consistent_point, "created replication slot");
                    Ok((OutputPlugin::Wal2Json, created))
                }
                Err(e2) if plugin_unavailable(&e2) => {
                    let mut report = refused(&s.config, OutputPlugin::Wal2Arrow, &e).await;
                    report
                        .checks
                        .extend(refused(&s.config, OutputPlugin::Wal2Json, &e2).await.checks);
                    Err(Error::Preflight(Box::new(report)))
                }
                Err(e2) => Err(e2.into()),
            }
        }
        Err(e) if plugin_unavailable(&e) => {
            Err(Error::Preflight(Box::new(refused(&s.config, first, &e).await)))
        }
        Err(e) => Err(e.into()),
    }
}

/// A slot created with an exported snapshot whose rows are still to be copied: its
/// replication connection must stay idle until they are.
struct PendingSnapshot {
    repl: ReplicationClient,
    created: CreatedSlot,
    plugin: OutputPlugin,
    /// The persistent slot to make of the temporary one once the snapshot is acknowledged.
    persist_as: Option<String>,
    /// Stream changes after the snapshot (not with [`SnapshotMode::Only`]).
    then_stream: bool,
    /// The slot is persistent already: finished ranges may be made durable, and a lost
    /// snapshot is resumed by the next run rather than taken again here.
    resumable: bool,
    /// Resuming: the ranges to leave out, and the persistent slot's consistent point, from
    /// which a new session streams after the copy (`repl` holds a temporary slot made only to
    /// export the snapshot).
    resume: Option<SnapshotResume>,
}

impl PendingSnapshot {
    /// A snapshot of a persistent slot, whose finished ranges may be made durable: a new one,
    /// or one resumed (`resume`).
    fn resumable(
        repl: ReplicationClient,
        created: CreatedSlot,
        plugin: OutputPlugin,
        resume: Option<SnapshotResume>,
    ) -> PendingSnapshot {
        PendingSnapshot {
            repl,
            created,
            plugin,
            persist_as: None,
            then_stream: true,
            resumable: true,
            resume,
        }
    }
}

/// A snapshot that failed, and whether taking a new one can help (it was lost before its
/// commit was delivered).
struct SnapshotFailed {
    error: Error,
    retry: bool,
}

impl SnapshotFailed {
    fn fatal(error: Error) -> SnapshotFailed {
        SnapshotFailed { error, retry: false }
    }
}

/// How the driver begins.
enum First {
    Session(Session),
    Snapshot(PendingSnapshot),
}

/// Creates the slot with an exported snapshot when the stream starts with one.
///
/// A new persistent slot is first created as a temporary one, and made persistent (copied,
/// `pg_copy_logical_replication_slot`) only once the snapshot's rows are acknowledged: a run
/// that dies during the snapshot leaves no slot behind, so the next run takes the snapshot
/// again instead of streaming changes to tables it never copied.
async fn prepare_snapshot(
    s: &ConsumerBuilder,
    state: &PluginState,
) -> Result<Option<PendingSnapshot>> {
    let temporary = |persist_as: Option<String>, then_stream: bool| async move {
        let name = match &persist_as {
            Some(name) => snapshot_slot_name(name),
            None if then_stream => s.slot.name().to_owned(),
            None => snapshot_slot_name(s.slot.name()),
        };
        let mut repl = ReplicationClient::connect(&s.config).await?;
        if let Some(persistent) = persist_as.as_ref().filter(|_| s.failover) {
            // Before the copy, not after it.
            repl.check_failover(persistent)?;
        }
        let (plugin, created) = create_slot(&mut repl, &name, true, true, s, state).await?;
        Ok::<_, Error>(Some(PendingSnapshot {
            repl,
            created,
            plugin,
            persist_as,
            then_stream,
            resumable: false,
            resume: None,
        }))
    };
    // A sink that records finished ranges: the slot is persistent from the start.
    let persistent = async |name: &str| {
        let mut repl = ReplicationClient::connect(&s.config).await?;
        if s.failover {
            repl.check_failover(name)?;
        }
        let (plugin, created) = create_slot(&mut repl, name, false, true, s, state).await?;
        if s.failover {
            // The exporting connection must stay idle: another one makes it a failover slot.
            let mut alter = ReplicationClient::connect(&s.config).await?;
            alter.set_failover(name, true).await?;
        }
        Ok::<_, Error>(Some(PendingSnapshot::resumable(repl, created, plugin, None)))
    };
    match (&s.slot, s.snapshot) {
        (_, SnapshotMode::Never) => Ok(None),
        (_, SnapshotMode::Only) => temporary(None, false).await,
        (SlotMode::Temporary { .. }, _) => temporary(None, true).await,
        (SlotMode::Persistent { name, create_if_missing }, mode) => {
            let sql = sql_client(&s.config).await?;
            let resolved =
                resolve_slot(&sql, name, s.config.dbname(), s.output_plugin.allowed()).await?;
            // An empty output (a resume record without an LSN): made whole even when the slot
            // exists — a run that created the slot may have died before recording anything.
            let fresh = s.snapshot_resume.as_ref().is_some_and(|r| r.lsn.is_invalid());
            let resume = s.snapshot_resume.as_ref().filter(|r| !r.lsn.is_invalid());
            match (resolved, resume) {
                (SlotResolution::Missing, Some(resume)) => {
                    Err(Error::Client(ClientError::Snapshot(format!(
                        "the output holds part of a snapshot taken at {} for slot {name:?}, \
                         but the slot is gone: the changes since cannot be recovered, and \
                         finishing the snapshot from a new slot would mix two of them; start \
                         over with an empty output (a new run then takes a new snapshot)",
                        resume.lsn
                    ))))
                }
                (SlotResolution::Usable(slot, plugin), Some(resume)) => {
                    resume_snapshot(s, state, name, &slot, plugin, resume).await
                }
                (SlotResolution::Usable(slot, plugin), None)
                    if fresh && mode == SnapshotMode::Auto =>
                {
                    let Some(lsn) = slot.confirmed_flush_lsn else { return Ok(None) };
                    tracing::info!(
                        slot = %name,
                        lsn = %lsn,
                        "the output is empty: copying the tables now, then streaming the slot's \
                         changes from its position"
                    );
                    let whole = SnapshotResume {
                        lsn,
                        chunk_pages: s.snapshot_chunk_pages,
                        done: Vec::new(),
                        next_ordinal: 0,
                    };
                    resume_snapshot(s, state, name, &slot, plugin, &whole).await
                }
                (SlotResolution::Missing, None) if *create_if_missing && s.resumable_snapshot => {
                    persistent(name).await
                }
                (SlotResolution::Missing, None) if *create_if_missing => {
                    temporary(Some(name.clone()), true).await
                }
                (SlotResolution::Usable(..), None) if mode == SnapshotMode::Initial => {
                    Err(Error::Client(ClientError::Snapshot(format!(
                        "slot {name:?} already exists: an initial snapshot is taken only by the \
                         run that creates the slot (the snapshot must end exactly where the slot \
                         starts). Stream without one (--snapshot never / SnapshotMode::Never), \
                         take the snapshot on its own (--snapshot only), or drop the slot to \
                         start over (wal2arrow slots drop {name})"
                    ))))
                }
                // Missing and not to be created, or unusable: the session says why.
                _ => Ok(None),
            }
        }
    }
}

/// Sets up the resumption of a snapshot an earlier run began at slot `name`'s consistent
/// point: a temporary slot exports a new snapshot for the ranges not yet durable; the changes
/// stream from the persistent slot afterwards.
async fn resume_snapshot(
    s: &ConsumerBuilder,
    state: &PluginState,
    name: &str,
    slot: &wal2arrow_client::SlotState,
    plugin: OutputPlugin,
    resume: &SnapshotResume,
) -> Result<Option<PendingSnapshot>> {
    if slot.confirmed_flush_lsn != Some(resume.lsn) {
        return Err(Error::Client(ClientError::Snapshot(format!(
            "the output holds part of a snapshot taken at {} for slot {name:?}, but the slot now \
             starts at {}: it is not the slot that snapshot was taken for (or something else \
             acknowledged it), and finishing the snapshot would mix the two; start over with an \
             empty output and a new slot",
            resume.lsn,
            slot.confirmed_flush_lsn.map_or_else(|| "no position".to_owned(), |l| l.to_string())
        ))));
    }
    let mut repl = ReplicationClient::connect(&s.config).await?;
    let temporary = snapshot_slot_name(name);
    let created = match repl.create_slot_exporting(&temporary, plugin.name(), true).await {
        Ok(created) => created,
        Err(e) if plugin_unavailable(&e) => {
            return Err(Error::Preflight(Box::new(refused(&s.config, plugin, &e).await)));
        }
        Err(e) => return Err(e.into()),
    };
    if plugin == OutputPlugin::Wal2Json {
        state.fell_back(name, format!("slot {name:?} was created for wal2json"));
    }
    tracing::info!(
        slot = %name,
        lsn = %resume.lsn,
        chunks_done = resume.done.len(),
        "resuming the snapshot: copying the ranges not yet durable in a new snapshot, then \
         streaming from the slot's consistent point"
    );
    Ok(Some(PendingSnapshot::resumable(repl, created, plugin, Some(resume.clone()))))
}

/// Whether replication slot `name` exists (false too when that cannot be found out).
async fn slot_exists(config: &Config, name: &str) -> bool {
    let Ok(sql) = sql_client(config).await else { return false };
    sql.query_opt("SELECT 1 FROM pg_replication_slots WHERE slot_name = $1", &[&name])
        .await
        .is_ok_and(|row| row.is_some())
}

/// A unique name for the temporary slot a snapshot is taken through.
fn snapshot_slot_name(base: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let base: String = base.chars().take(40).collect();
    format!("{base}_snap_{}_{}", std::process::id(), nanos % 1_000_000)
}

/// The preflight report for a server that refused `plugin`, naming the fix (the allow-list,
/// or installing the library).
async fn refused(config: &Config, plugin: OutputPlugin, e: &ClientError) -> PreflightReport {
    let allow_list = match sql_client(config).await {
        Ok(sql) => AllowList::read(&sql).await.unwrap_or(AllowList::Hidden),
        Err(_) => AllowList::Hidden,
    };
    refused_report(plugin, e, &allow_list)
}

/// Whether the server refused the plugin itself, as opposed to anything else that can go wrong
/// creating a slot or starting to stream: SQLSTATE 58P01 (the library is not installed) or
/// 42501 — which on a replication connection, whose role already has REPLICATION, means the
/// library is not in `output_plugin_libraries`.
fn plugin_unavailable(e: &ClientError) -> bool {
    matches!(e.code(), Some("58P01" | "42501"))
}

/// Starts a wal2json stream, finding out once whether wal2json takes numbers as strings.
async fn start_wal2json(
    repl: ReplicationClient,
    s: &ConsumerBuilder,
    from: Lsn,
    state: &PluginState,
) -> std::result::Result<ChangeStream, ClientError> {
    use std::sync::atomic::Ordering::Relaxed;
    let slot = s.slot.name();
    match state.numbers_as_strings.load(Relaxed) {
        1 => return repl.start_wal2json(slot, from, &s.plugin, true).await,
        2 => return repl.start_wal2json(slot, from, &s.plugin, false).await,
        _ => {}
    }
    if matches!(s.slot, SlotMode::Temporary { .. }) {
        // A refused option would end the connection, and the temporary slot with it: ask
        // only for what every wal2json 2.x accepts.
        state.numbers_as_strings.store(2, Relaxed);
        return repl.start_wal2json(slot, from, &s.plugin, false).await;
    }
    match repl.start_wal2json(slot, from, &s.plugin, true).await {
        Ok(stream) => {
            state.numbers_as_strings.store(1, Relaxed);
            Ok(stream)
        }
        // invalid_parameter_value from the startup callback: wal2json before 2.6 does not
        // know numeric-data-types-as-string (the only option it might refuse). NaN and
        // ±Infinity of float and numeric columns then arrive as null (see the README).
        Err(e) if e.code() == Some("22023") => {
            state.numbers_as_strings.store(2, Relaxed);
            let repl = ReplicationClient::connect(&s.config).await?;
            repl.start_wal2json(slot, from, &s.plugin, false).await
        }
        Err(e) => Err(e),
    }
}

/// `before` (ended sessions) plus `now` (the current one).
fn add_streamed(before: &StreamedStats, now: &StreamedStats) -> StreamedStats {
    StreamedStats {
        transactions: before.transactions + now.transactions,
        blocks: before.blocks + now.blocks,
        committed: before.committed + now.committed,
        aborted: before.aborted + now.aborted,
        subtransactions_aborted: before.subtransactions_aborted + now.subtransactions_aborted,
        spilled_bytes: before.spilled_bytes + now.spilled_bytes,
        memory: now.memory,
        peak_memory: before.peak_memory.max(now.peak_memory),
    }
}

/// Counters of a running stream.
#[derive(Debug, Default)]
pub struct StreamStats {
    events: AtomicU64,
    batches: AtomicU64,
    rows: AtomicU64,
    bytes: AtomicU64,
    transactions: AtomicU64,
    reconnects: AtomicU64,
    heartbeats: AtomicU64,
    /// Shared with each session's stream, which moves it on every frame.
    server_wal_end: Arc<AtomicU64>,
    /// The initial snapshot's counters, once one runs.
    snapshot: std::sync::Mutex<Option<Arc<SnapshotProgress>>>,
    /// Streamed transactions: the figures of this session's stream plus the sessions' before.
    streamed: std::sync::Mutex<(StreamedStats, StreamedStats)>,
}

/// A snapshot of [`StreamStats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Events delivered.
    pub events: u64,
    /// Change batches delivered.
    pub batches: u64,
    /// Rows in them.
    pub rows: u64,
    /// Payload bytes received for them.
    pub bytes: u64,
    /// Transactions committed.
    pub transactions: u64,
    /// Reconnections after failures.
    pub reconnects: u64,
    /// Heartbeats sent.
    pub heartbeats: u64,
    /// The server's WAL end as last reported: minus the acknowledged position, the backlog.
    pub server_wal_end: Lsn,
    /// The initial snapshot's progress, when the stream took one.
    pub snapshot: Option<SnapshotStats>,
    /// Transactions the server streamed before their commit (all sessions; `memory` and
    /// `peak_memory` of the current one).
    pub streamed: StreamedStats,
}

/// How far an initial snapshot has come ([`StatsSnapshot::snapshot`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SnapshotStats {
    /// Tables to copy.
    pub tables: u64,
    /// Tables whose rows were all delivered.
    pub tables_done: u64,
    /// Heap pages to read (the tables' size when the copy began).
    pub pages: u64,
    /// Heap pages read.
    pub pages_done: u64,
    /// Rows delivered.
    pub rows: u64,
    /// `COPY` text bytes delivered.
    pub bytes: u64,
    /// Every row was delivered ([`wal2arrow_client::SnapshotEvent::Complete`]).
    pub complete: bool,
}

/// The event stream of a started [`Consumer`].
///
/// It is a [`futures_core::Stream`] of `Result<Event>`; [`next`](Self::next) does the same
/// without a `StreamExt`. Acknowledge each transaction's `end_lsn` once you have durably
/// handled it ([`ack`](Self::ack)): that is what the slot advances to, and where a restarted
/// stream resumes. The server hears of acknowledgements with the next status update, within
/// `max_poll_interval`; after a crash, everything after the last position the server heard of
/// is delivered again. [`sync_acks`](Self::sync_acks) tells it at once.
///
/// Cancel safety: [`next`](Self::next) is cancel safe; an event is never lost by dropping its
/// future.
#[derive(Debug)]
pub struct CdcStream {
    rx: mpsc::Receiver<Item>,
    /// Everything the server sent before this position has been handed out by `next`.
    delivered: Lsn,
    acks: AckHandle,
    close: Option<oneshot::Sender<()>>,
    commands: mpsc::Sender<Command>,
    task: Option<JoinHandle<()>>,
    stats: Arc<StreamStats>,
    output_plugin: OutputPlugin,
    fallback_reason: Option<String>,
    config: Config,
    slot: String,
    in_progress: InProgress,
}

impl CdcStream {
    /// What the stream does with transactions streamed before their commit
    /// ([`ConsumerBuilder::in_progress`]).
    pub fn in_progress(&self) -> &InProgress {
        &self.in_progress
    }

    /// Asks this stream to backfill the tables matching `patterns` (see [`crate::backfill`]):
    /// their existing rows arrive in chunks, as `read` rows between the changes, with
    /// [`SnapshotEvent`](wal2arrow_client::SnapshotEvent)`::BackfillStarted` and
    /// `BackfillDone`. Returns the tables asked for.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for patterns that match no table or a table without a primary key.
    pub async fn backfill(&self, patterns: &[String]) -> Result<Vec<String>> {
        crate::backfill::request(&self.config, &self.slot, patterns).await
    }

    /// The plugin the stream reads.
    pub fn output_plugin(&self) -> OutputPlugin {
        self.output_plugin
    }

    /// Why the stream reads wal2json rather than wal2arrow (`None` when it reads wal2arrow, or
    /// wal2json because it was asked to).
    pub fn fallback_reason(&self) -> Option<&str> {
        self.fallback_reason.as_deref()
    }

    /// Sends the acknowledged position to the server now, and returns it once written.
    ///
    /// # Errors
    ///
    /// When the stream has ended, or the connection failed while writing (the position is
    /// then sent after the reconnection).
    pub async fn sync_acks(&self) -> Result<Lsn> {
        let (reply, answer) = oneshot::channel();
        let ended = || Error::Ended;
        self.commands.send(Command::SyncAcks(reply)).await.map_err(|_| ended())?;
        answer.await.map_err(|_| ended())?
    }

    /// The next event; `None` once the stream has ended (closed, or after an error).
    pub async fn next(&mut self) -> Option<Result<Event>> {
        loop {
            let item = self.rx.recv().await?;
            if let Some(event) = self.take(item) {
                return Some(event);
            }
        }
    }

    /// Records what an item says of the stream's position; the event it carries, if any.
    fn take(&mut self, item: Item) -> Option<Result<Event>> {
        match item {
            Item::Position(lsn) => {
                self.delivered = self.delivered.max(lsn);
                None
            }
            Item::Event(event) => {
                if let Ok(Event::Restarted { from, .. }) = &event {
                    // What was handed out before may come again: only the new session's
                    // positions count from here.
                    self.delivered = *from;
                }
                Some(event)
            }
        }
    }

    /// Events received and waiting for [`next`](Self::next).
    pub fn pending_events(&self) -> usize {
        self.rx.len()
    }

    /// Whether everything the server sent before `lsn` has been handed out by
    /// [`next`](Self::next) (in this session: a [`Event::Restarted`] starts over): the server
    /// reported a position at or past `lsn` in a keepalive, and every event before that
    /// keepalive has been returned. A position travels in the stream's own queue, after the
    /// events before it, so this never runs ahead of what the caller has seen.
    pub fn has_delivered_through(&self, lsn: Lsn) -> bool {
        self.delivered >= lsn
    }

    /// Acknowledges everything up to `lsn` (a [`crate::TxnCommit::end_lsn`], or a
    /// non-transactional message's [`crate::LogicalMessage::ack_lsn`]).
    pub fn ack(&self, lsn: Lsn) {
        self.acks.ack(lsn);
    }

    /// A handle to acknowledge from other tasks.
    pub fn ack_handle(&self) -> AckHandle {
        self.acks.clone()
    }

    /// The counters so far.
    pub fn stats(&self) -> StatsSnapshot {
        let s = &self.stats;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StatsSnapshot {
            events: get(&s.events),
            batches: get(&s.batches),
            rows: get(&s.rows),
            bytes: get(&s.bytes),
            transactions: get(&s.transactions),
            reconnects: get(&s.reconnects),
            heartbeats: get(&s.heartbeats),
            server_wal_end: Lsn(s.server_wal_end.load(Ordering::SeqCst)),
            snapshot: s.snapshot.lock().ok().and_then(|p| p.clone()).map(|p| SnapshotStats {
                tables: get(&p.tables),
                tables_done: get(&p.tables_done),
                pages: get(&p.pages),
                pages_done: get(&p.pages_done),
                rows: get(&p.rows),
                bytes: get(&p.bytes),
                complete: p.complete.load(Ordering::Relaxed),
            }),
            streamed: s.streamed.lock().map(|g| add_streamed(&g.0, &g.1)).unwrap_or_default(),
        }
    }

    /// Ends the stream: sends the final acknowledged position to the server and closes the
    /// connection.
    pub async fn close(mut self) {
        if let Some(close) = self.close.take() {
            let _ = close.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for CdcStream {
    fn drop(&mut self) {
        if let Some(close) = self.close.take() {
            let _ = close.send(());
        }
    }
}

impl futures_core::Stream for CdcStream {
    type Item = Result<Event>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            match self.rx.poll_recv(cx) {
                Poll::Ready(Some(item)) => {
                    if let Some(event) = self.take(item) {
                        return Poll::Ready(Some(event));
                    }
                }
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// What the driver hands a [`CdcStream`]: an event, or how far the server's position has
/// come with every event before it already queued.
#[derive(Debug)]
enum Item {
    Event(Result<Event>),
    Position(Lsn),
}

/// The background task behind a [`CdcStream`].
struct Driver {
    plugin_state: Arc<PluginState>,
    settings: Arc<ConsumerBuilder>,
    tx: mpsc::Sender<Item>,
    acks: AckHandle,
    stats: Arc<StreamStats>,
    commands: mpsc::Receiver<Command>,
    backfill: crate::backfill::Backfill,
    /// The record of the tables held ([`ConsumerBuilder::tables_held`]).
    coverage: Option<crate::coverage::Coverage>,
}

/// How a session ended.
enum Ended {
    /// Closed by the user, or the receiver went away.
    Closed,
}

impl Driver {
    async fn run(mut self, first: First, mut close: oneshot::Receiver<()>) {
        let snapshot_taken = matches!(first, First::Snapshot(_));
        let mut session = match first {
            First::Session(s) => Some(s),
            First::Snapshot(pending) => match self.snapshot_until_copied(pending, &mut close).await
            {
                Ok(Some(s)) => Some(s),
                // Closed, or the snapshot was all that was asked.
                Ok(None) => return,
                Err(e) => {
                    let _ = self.tx.send(Item::Event(Err(e))).await;
                    return;
                }
            },
        };
        if let (Some(held), Some(s)) = (&self.settings.tables_held, &session)
            && !matches!(self.settings.slot, SlotMode::Temporary { .. })
        {
            let settings = &self.settings;
            let as_root = settings.plugin.publish_via_root
                && s.stream.output_plugin() != OutputPlugin::Wal2Json;
            let started = crate::coverage::Coverage::start(
                &settings.config,
                &settings.plugin.tables,
                held.as_deref(),
                snapshot_taken,
                as_root,
            )
            .await;
            match started {
                Ok((coverage, backfill)) => {
                    for table in &backfill {
                        self.backfill.enqueue(table);
                    }
                    if self.tx.send(Item::Event(Ok(coverage.event()))).await.is_err() {
                        return;
                    }
                    self.coverage = Some(coverage);
                }
                Err(e) => {
                    let _ = self.tx.send(Item::Event(Err(e))).await;
                    return;
                }
            }
        }
        let mut delay = self.settings.backoff.initial;
        loop {
            let result = match session.take() {
                Some(s) => self.stream(s, &mut close).await,
                None => Err(Error::Config("the stream has no session".into())),
            };
            if let Ok(mut g) = self.stats.streamed.lock() {
                // The session's figures count as an ended one's from now on.
                g.0 = add_streamed(&g.0, &g.1);
                g.1 = StreamedStats::default();
            }
            let error = match result {
                Ok(Ended::Closed) => return,
                Err(e) => e,
            };
            let temporary = matches!(self.settings.slot, SlotMode::Temporary { .. });
            if !error.is_transient() || temporary {
                let error = if temporary && error.is_transient() {
                    Error::Client(ClientError::Slot(format!(
                        "the connection was lost ({error}) and the temporary slot with it: \
                         changes since then cannot be recovered; use a persistent slot to resume"
                    )))
                } else {
                    error
                };
                let _ = self.tx.send(Item::Event(Err(error))).await;
                return;
            }
            // Reconnect with backoff, resuming after what was acknowledged.
            // Why the connection was lost (for `Restarted`), and why the last attempt failed.
            let reason = error.to_string();
            let mut latest = None;
            loop {
                match &latest {
                    None => {
                        tracing::warn!(error = %reason, retry_in = ?delay, "replication connection lost; reconnecting")
                    }
                    Some(e) => {
                        tracing::warn!(error = %e, retry_in = ?delay, "reconnecting failed; retrying")
                    }
                }
                let backoff = tokio::time::sleep(delay);
                tokio::pin!(backoff);
                loop {
                    tokio::select! {
                        () = &mut backoff => break,
                        _ = &mut close => return,
                        // No connection to write to: said at once, the position goes with the
                        // next connection.
                        Some(Command::SyncAcks(reply)) = self.commands.recv() => {
                            let _ = reply.send(Err(Error::Client(ClientError::Io(
                                std::io::Error::other(format!(
                                    "reconnecting ({reason}): the acknowledged position is sent \
                                     once the connection is back"
                                )),
                            ))));
                        }
                    }
                }
                delay = (delay * 2).min(self.settings.backoff.max);
                let from = self.acks.acknowledged();
                match Session::connect(&self.settings, from, &self.plugin_state).await {
                    Ok(mut s) => {
                        self.backfill.rewind(from);
                        // The new stream's acknowledgements flow into the same handle.
                        self.attach(&mut s);
                        self.stats.reconnects.fetch_add(1, Ordering::Relaxed);
                        if self
                            .tx
                            .send(Item::Event(Ok(Event::Restarted {
                                from,
                                reason: reason.clone(),
                            })))
                            .await
                            .is_err()
                        {
                            return;
                        }
                        // A sink that took back what followed its last flush took back the
                        // record of the tables held with it: say it again.
                        if let Some(record) = self.coverage.as_ref().map(|c| c.event())
                            && self.tx.send(Item::Event(Ok(record))).await.is_err()
                        {
                            return;
                        }
                        delay = self.settings.backoff.initial;
                        session = Some(s);
                        break;
                    }
                    Err(e) if e.is_transient() => latest = Some(e),
                    Err(e) => {
                        let _ = self.tx.send(Item::Event(Err(e))).await;
                        return;
                    }
                }
            }
        }
    }

    /// Makes a new session report into this stream: its acknowledgements, server position and
    /// heartbeats.
    fn attach(&self, session: &mut Session) {
        session.stream.set_ack_handle(self.acks.clone());
        session.stream.set_position_out(Arc::clone(&self.stats.server_wal_end));
        session.stream.set_heartbeat_prefix(
            self.settings.heartbeat_interval.map(|_| HEARTBEAT_PREFIX.to_owned()),
        );
    }

    /// Takes the snapshot ([`snapshot`](Self::snapshot)); when it is lost before its rows were
    /// all delivered — the connection that exported it, or a worker's, dropped — announces
    /// [`Event::Restarted`] (sinks take back the rows of the lost one) and takes a new one
    /// from a new slot, with backoff.
    async fn snapshot_until_copied(
        &mut self,
        mut pending: PendingSnapshot,
        close: &mut oneshot::Receiver<()>,
    ) -> Result<Option<Session>> {
        let backoff = self.settings.backoff;
        let mut delay = backoff.initial;
        loop {
            let error = match self.snapshot(pending, close).await {
                Ok(session) => return Ok(session),
                Err(SnapshotFailed { error, retry: false }) => return Err(error),
                Err(SnapshotFailed { error, retry: true }) => error,
            };
            let reason = error.to_string();
            let mut attempt = 0;
            pending = loop {
                tracing::warn!(error = %reason, retry_in = ?delay, "the snapshot was lost; taking a new one");
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    _ = &mut *close => return Ok(None),
                }
                delay = (delay * 2).min(backoff.max);
                attempt += 1;
                match prepare_snapshot(&self.settings, &self.plugin_state).await {
                    Ok(Some(p)) => break p,
                    Ok(None) => {
                        return Err(Error::Client(ClientError::Snapshot(format!(
                            "the snapshot was lost ({reason}) and, while a new one was being \
                             set up, slot {:?} was created by someone else: its changes do not \
                             line up with a snapshot; drop it and start again",
                            self.settings.slot.name()
                        ))));
                    }
                    Err(e) if e.is_transient() => {}
                    // A temporary slot of the lost connection is dropped when its walsender
                    // exits, which may be a moment after the connection closed.
                    Err(e) if e.code() == Some("42710") && attempt < 10 => {}
                    Err(e) => return Err(e),
                }
            };
            self.stats.reconnects.fetch_add(1, Ordering::Relaxed);
            let restarted = Event::Restarted { from: Lsn::INVALID, reason };
            if self.tx.send(Item::Event(Ok(restarted))).await.is_err() {
                return Ok(None);
            }
        }
    }

    /// Copies the snapshot, then — once its rows are acknowledged — makes the slot persistent
    /// and starts streaming on the connection that exported it. `None`: the stream ends
    /// (closed, or [`SnapshotMode::Only`]).
    async fn snapshot(
        &mut self,
        pending: PendingSnapshot,
        close: &mut oneshot::Receiver<()>,
    ) -> std::result::Result<Option<Session>, SnapshotFailed> {
        let s = Arc::clone(&self.settings);
        let PendingSnapshot {
            mut repl,
            created,
            plugin,
            persist_as,
            then_stream,
            resumable,
            resume,
        } = pending;
        let Some(name) = created.snapshot.clone() else {
            return Err(SnapshotFailed::fatal(Error::Client(ClientError::Snapshot(
                "the server created the slot without exporting a snapshot".into(),
            ))));
        };
        let lsn = created.consistent_point;
        // wal2json reports a partition's rows under the partition's own name: so does the
        // snapshot then, or a replica would hold each row under two names.
        let options = PluginOptions {
            publish_via_root: s.plugin.publish_via_root && plugin == OutputPlugin::Wal2Arrow,
            ..s.plugin.clone()
        };
        let mut snapshot = Snapshot::new(&s.config, &name, lsn, &options)
            .chunk_pages(s.snapshot_chunk_pages)
            .resumable(resumable);
        if let Some(r) = &resume {
            snapshot =
                snapshot.chunk_pages(r.chunk_pages).resume(r.lsn, r.done.clone(), r.next_ordinal);
        }
        // Where the stream starts after the copy: the slot's consistent point.
        let stream_from = resume.as_ref().map_or(lsn, |r| r.lsn);
        if let Some(workers) = s.snapshot_workers {
            snapshot = snapshot.workers(workers);
        }
        if let Ok(mut progress) = self.stats.snapshot.lock() {
            *progress = Some(snapshot.progress());
        }
        let (tx, stats) = (self.tx.clone(), Arc::clone(&self.stats));
        // Once the snapshot's commit is out, sinks may have made it durable: a snapshot lost
        // after that is not taken again (two would be mixed).
        let committed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let lost = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (seen, lost_seen) = (Arc::clone(&committed), Arc::clone(&lost));
        let (config, slot) = (s.config.clone(), created.name.clone());
        let emit = async move |event: Event| {
            if matches!(event, Event::Commit(_)) {
                // Workers that had imported the snapshot finish their copy even when the
                // connection that exported it is gone; but its temporary slot went with it, so
                // the changes after the snapshot are lost: before the commit goes out (while a
                // new snapshot can still replace this one), make sure the slot is there. A
                // snapshot that is all that was asked (`Only`) needs no slot after it.
                if then_stream && !resumable && !slot_exists(&config, &slot).await {
                    lost_seen.store(true, Ordering::SeqCst);
                    return false;
                }
                seen.store(true, Ordering::SeqCst);
            }
            count(&stats, &event);
            tx.send(Item::Event(Ok(event))).await.is_ok()
        };
        let copied = tokio::select! {
            rows = snapshot.run(emit) => rows,
            _ = &mut *close => return Ok(None),
        };
        let copied = match copied {
            Ok(_) if lost.load(Ordering::SeqCst) => Err(ClientError::SnapshotGone(format!(
                "the replication connection that exported the snapshot closed during the copy, \
                 and its temporary slot {:?} with it",
                created.name
            ))),
            other => other,
        };
        let rows = match copied {
            Ok(rows) => rows,
            Err(e) if resumable => {
                // Ranges already durable must not be mixed with a new snapshot's: the next
                // run resumes this one.
                let slot = s.slot.name();
                return Err(SnapshotFailed::fatal(Error::Client(ClientError::Snapshot(format!(
                    "the snapshot stopped ({e}); slot {slot:?} is kept at its consistent point \
                     {stream_from}: run again with the same output to resume the snapshot from \
                     the ranges it made durable"
                )))));
            }
            Err(e) => {
                let retry = e.is_transient() && !committed.load(Ordering::SeqCst);
                if retry {
                    // The temporary slot goes with its connection; dropped here when that
                    // is still open, so a new one of the same name can be made.
                    let _ =
                        tokio::time::timeout(Duration::from_secs(5), repl.drop_slot(&created.name))
                            .await;
                }
                return Err(SnapshotFailed { error: e.into(), retry });
            }
        };
        if self.tx.is_closed() {
            return Ok(None);
        }
        tracing::info!(rows, lsn = %lsn, slot = %created.name, "snapshot copied");
        if !then_stream {
            return Ok(None);
        }
        if let Some(persistent) = persist_as {
            // The slot becomes persistent only once the snapshot is durable wherever it went
            // (a snapshot without rows has nothing to make durable).
            let mut said = false;
            let waiting = Instant::now();
            while rows > 0 && self.acks.acknowledged() < lsn {
                if !said && waiting.elapsed() > Duration::from_secs(10) {
                    said = true;
                    tracing::info!(
                        lsn = %lsn,
                        "waiting for the snapshot to be acknowledged (ack its commit's end_lsn) \
                         before creating slot {persistent:?} and streaming changes"
                    );
                }
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(20)) => {}
                    _ = &mut *close => return Ok(None),
                }
            }
            let sql = sql_client(&s.config).await.map_err(|e| SnapshotFailed::fatal(e.into()))?;
            sql.execute(
                "SELECT pg_copy_logical_replication_slot($1, $2, false)",
                &[&created.name, &persistent],
            )
            .await
            .map_err(|e| {
                SnapshotFailed::fatal(Error::Client(ClientError::Snapshot(format!(
                    "the snapshot was copied and acknowledged, but slot {persistent:?} could not \
                     be made from its temporary slot {:?} ({}): changes after the snapshot \
                     cannot be streamed; take the snapshot again (a new run does) after removing \
                     what this one wrote",
                    created.name,
                    e.as_db_error().map_or_else(|| e.to_string(), |d| d.message().to_owned())
                ))))
            })?;
            if s.failover {
                // A copied slot is never a failover slot: make it one.
                let altered = async {
                    let mut alter = ReplicationClient::connect(&s.config).await?;
                    alter.set_failover(&persistent, true).await
                };
                altered.await.map_err(|e| SnapshotFailed::fatal(e.into()))?;
            }
            tracing::info!(slot = %persistent, lsn = %lsn, "created replication slot from the snapshot's");
        }
        let session = if resumable {
            // The persistent slot, from its consistent point, on a connection of its own (a
            // resumed snapshot's `repl` holds only the temporary slot that exported it).
            drop(repl);
            Session::connect(&s, stream_from, &self.plugin_state).await
        } else {
            Session::start_on(repl, &s, plugin, Lsn::INVALID, &self.plugin_state).await
        };
        let mut session = session.map_err(SnapshotFailed::fatal)?;
        self.attach(&mut session);
        Ok(Some(session))
    }

    /// Streams one session until it ends.
    async fn stream(
        &mut self,
        mut session: Session,
        close: &mut oneshot::Receiver<()>,
    ) -> Result<Ended> {
        let stream = &mut session.stream;
        // Heartbeats run on their own task: their SQL connection and query never hold up the
        // status updates of this loop.
        let heartbeat = Heartbeat::spawn(&self.settings, Arc::clone(&self.stats));
        // A position that found the queue full: sent before the next event.
        let mut position: Option<Lsn> = None;
        self.backfill.set_wal2json(stream.output_plugin() == OutputPlugin::Wal2Json);
        // Chunks to read again after a reconnection start without waiting for an event.
        self.backfill.tick().await;
        loop {
            let step = tokio::select! {
                step = stream.next_step() => step?,
                Some(Command::SyncAcks(reply)) = self.commands.recv() => {
                    sync_acks(stream, &self.acks, reply).await?;
                    continue;
                }
                _ = &mut *close => {
                    let _ = stream.send_status(false).await;
                    return Ok(Ended::Closed);
                }
                () = self.backfill.join(), if self.backfill.reading() => {
                    // A failed read is tried again at once (no event may come soon).
                    self.backfill.tick().await;
                    continue;
                }
            };
            if let Ok(mut g) = self.stats.streamed.lock() {
                g.1 = stream.streamed_stats();
            }
            let event = match step {
                Some(Step::Event(event)) => event,
                Some(Step::Position(lsn)) => {
                    // Only a hint: sent if there is room, else before the next event.
                    match self.tx.try_reserve() {
                        Ok(permit) => permit.send(Item::Position(lsn)),
                        Err(mpsc::error::TrySendError::Closed(())) => return Ok(Ended::Closed),
                        Err(mpsc::error::TrySendError::Full(())) => position = Some(lsn),
                    }
                    continue;
                }
                None => {
                    // Only a walsender that is shutting down ends the stream: come back later.
                    return Err(Error::Client(ClientError::Io(std::io::Error::new(
                        std::io::ErrorKind::ConnectionAborted,
                        "the server ended the stream (it is shutting down)",
                    ))));
                }
            };
            if let Some(lsn) = position
                && let Ok(permit) = self.tx.try_reserve()
            {
                permit.send(Item::Position(lsn));
                position = None;
            }
            heartbeat.activity();
            // Backfills take their watermarks and signals out, and put chunks in.
            let events = if matches!(event, Event::Message(_)) || self.backfill.busy() {
                self.backfill.on_event(event).await
            } else {
                vec![event]
            };
            let events = match &mut self.coverage {
                None => events,
                Some(coverage) => {
                    let mut out = Vec::with_capacity(events.len() + 1);
                    for event in events {
                        let (changed, wanted) = coverage.observe(&event);
                        out.push(event);
                        if changed {
                            out.push(coverage.event());
                        }
                        if let Some(table) = wanted {
                            self.backfill.enqueue(&table);
                        }
                    }
                    out
                }
            };
            for event in events {
                count(&self.stats, &event);
                let permit = match self.tx.try_reserve() {
                    Ok(permit) => permit,
                    Err(mpsc::error::TrySendError::Closed(())) => return Ok(Ended::Closed),
                    Err(mpsc::error::TrySendError::Full(())) => {
                        // The reader is slow: wait for room, keeping the server informed so
                        // it does not drop us for wal_sender_timeout.
                        let period = self.settings.max_poll_interval;
                        let mut status = tokio::time::interval_at(Instant::now() + period, period);
                        loop {
                            tokio::select! {
                                permit = self.tx.reserve() => match permit {
                                    Ok(permit) => break permit,
                                    Err(_) => return Ok(Ended::Closed),
                                },
                                _ = status.tick() => stream.send_status(false).await?,
                                // Asked by the reader between two events: answered now, not
                                // once the queue has room (the reader may be waiting for it).
                                Some(Command::SyncAcks(reply)) = self.commands.recv() => {
                                    sync_acks(stream, &self.acks, reply).await?;
                                }
                                _ = &mut *close => {
                                    let _ = stream.send_status(false).await;
                                    return Ok(Ended::Closed);
                                }
                            }
                        }
                    }
                };
                permit.send(Item::Event(Ok(event)));
            }
            if self.backfill.busy() {
                self.backfill.prune(self.acks.acknowledged());
                self.backfill.tick().await;
            }
        }
    }
}

/// Sends a status update now and answers `reply` with the position once written.
async fn sync_acks(
    stream: &mut ChangeStream,
    acks: &AckHandle,
    reply: oneshot::Sender<Result<Lsn>>,
) -> Result<()> {
    let sent = stream.send_status(false).await;
    let failed = sent.as_ref().err().map(ToString::to_string);
    let _ = reply.send(sent.map(|()| acks.acknowledged()).map_err(Error::from));
    match failed {
        Some(e) => Err(Error::Client(ClientError::Io(std::io::Error::other(e)))),
        None => Ok(()),
    }
}

/// Counts an event delivered.
fn count(s: &StreamStats, event: &Event) {
    s.events.fetch_add(1, Ordering::Relaxed);
    match event {
        Event::Change(c) => {
            s.batches.fetch_add(1, Ordering::Relaxed);
            s.rows.fetch_add(c.num_rows() as u64, Ordering::Relaxed);
            s.bytes.fetch_add(c.source_bytes() as u64, Ordering::Relaxed);
        }
        Event::Commit(_) => {
            s.transactions.fetch_add(1, Ordering::Relaxed);
        }
        _ => {}
    }
}

/// Emits a `pg_logical_emit_message` when the stream has been idle for the heartbeat interval,
/// from a task of its own, over its own SQL connection (opened on first use, reopened after a
/// failure). Connecting is bounded by `connect_timeout` and so is each heartbeat's query: a
/// server that does not answer delays only the next heartbeat, never the replication loop.
/// The task ends when this is dropped.
struct Heartbeat {
    /// Milliseconds since `base` at the last activity; `u64::MAX` when heartbeats are off.
    last_activity: Arc<AtomicU64>,
    base: Instant,
    task: Option<JoinHandle<()>>,
}

impl Heartbeat {
    fn spawn(s: &ConsumerBuilder, stats: Arc<StreamStats>) -> Heartbeat {
        let base = Instant::now();
        let last_activity = Arc::new(AtomicU64::new(0));
        let task = s.heartbeat_interval.map(|interval| {
            let config = s.config.clone();
            let last = Arc::clone(&last_activity);
            tokio::spawn(async move {
                let mut client: Option<tokio_postgres::Client> = None;
                loop {
                    let due = base + Duration::from_millis(last.load(Ordering::Relaxed)) + interval;
                    if Instant::now() < due {
                        tokio::time::sleep_until(due).await;
                        continue;
                    }
                    last.store(base.elapsed().as_millis() as u64, Ordering::Relaxed);
                    if Self::beat(&config, &mut client).await {
                        stats.heartbeats.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        });
        Heartbeat { last_activity, base, task }
    }

    /// Something was received: the next heartbeat is due an interval from now.
    fn activity(&self) {
        self.last_activity.store(self.base.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// One heartbeat; whether it was sent.
    async fn beat(config: &Config, client: &mut Option<tokio_postgres::Client>) -> bool {
        if client.as_ref().is_none_or(tokio_postgres::Client::is_closed) {
            match sql_client(config).await {
                Ok(c) => *client = Some(c),
                Err(e) => {
                    tracing::warn!(error = %e, "heartbeat: cannot connect");
                    return false;
                }
            }
        }
        let c = client.as_ref().expect("connected above");
        let sent = tokio::time::timeout(
            config.connect_timeout,
            c.execute("SELECT pg_logical_emit_message(false, $1, '')", &[&HEARTBEAT_PREFIX]),
        )
        .await;
        match sent {
            Ok(Ok(_)) => true,
            Ok(Err(e)) => {
                tracing::warn!(error = %Error::from(e), "heartbeat failed (the role needs EXECUTE on pg_logical_emit_message)");
                *client = None;
                false
            }
            Err(_) => {
                tracing::warn!(after = ?config.connect_timeout, "heartbeat: the server did not answer in time");
                *client = None;
                false
            }
        }
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builder_checks_every_setting() {
        assert!(Consumer::builder().build().is_ok());
        for (b, what) in [
            (Consumer::builder().slot("Bad-Name"), "slot name"),
            (Consumer::builder().slot(""), "slot name"),
            (Consumer::builder().tables(["users"]), "tables"),
            (Consumer::builder().tables(["public.(x"]), "tables"),
            (Consumer::builder().batch_rows(0), "batch_rows"),
            (Consumer::builder().max_poll_interval(Duration::ZERO), "max_poll_interval"),
            (Consumer::builder().heartbeat_interval(Some(Duration::ZERO)), "heartbeat_interval"),
            (Consumer::builder().buffer_events(0), "buffer_events"),
            (Consumer::builder().port(0), "port"),
            (Consumer::builder().ssl_mode(SslMode::VerifyFull), "sslrootcert"),
        ] {
            let e = b.build().unwrap_err();
            assert!(matches!(e, Error::Config(_)) && e.to_string().contains(what), "{what}: {e}");
        }
        let c =
            Consumer::builder().tables(["public.*", "*.orders"]).batch_rows(10).build().unwrap();
        assert_eq!(c.plugin_options().tables.patterns().len(), 2);
        assert_eq!(c.plugin_options().batch_rows, 10);
    }
}
