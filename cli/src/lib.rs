//! The `wal2arrow` command: `check`, `stream`, `slots` and (with the `demo` feature, on by
//! default) `demo`.
//!
//! The binary is `fn main() -> ExitCode { wal2arrow_cli::main() }`; the code lives
//! in the library so that tests run exactly what users run.
//!
//! Exit codes: 0 done (stopped by Ctrl-C/SIGTERM, `--until-lsn`, `--idle-timeout` or
//! `--max-transactions`), 1 failed while running, 2 bad usage or settings, 3 the server is
//! not ready (a failed check: the report says what to change), 4 cannot connect or log in,
//! 130 interrupted twice (stopped at once, nothing flushed).

#![warn(missing_docs)]

#[cfg(feature = "demo")]
mod demo;
mod metrics;
mod print;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use wal2arrow_schema::{Lsn, TableFilter, TablePattern};

use wal2arrow_consumer::client::{self, Config, OutputPlugin, RootCerts};
use wal2arrow_consumer::{Consumer, ConsumerBuilder, ErrorClass, PluginChoice, SnapshotMode};
use wal2arrow_sinks::ipc::IpcSink;
use wal2arrow_sinks::jsonl::JsonLinesSink;
use wal2arrow_sinks::parquet::{ParquetOptions, ParquetSink};
use wal2arrow_sinks::{Error, Progress, RunOptions, Sink, Stopped};

#[derive(Parser)]
#[command(
    name = "wal2arrow",
    version,
    about = "Arrow-native change data capture for PostgreSQL",
    after_help = "Exit codes: 0 done, 1 failed while running, 2 bad usage or settings, 3 the server is \
                  not ready (see `check`), 4 cannot connect or log in, 130 interrupted twice."
)]
struct Cli {
    /// Log level: error, warn, info, debug or trace (or a tracing filter).
    #[arg(long, global = true, default_value = "warn", env = "WAL2ARROW_LOG")]
    log_level: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check that the server is ready: every check, and the exact fix for each failure.
    Check(CheckArgs),
    /// Stream the selected tables into a sink (Parquet, Arrow IPC, JSON lines, or tables on
    /// the terminal) until stopped.
    Stream(Box<StreamArgs>),
    /// List, create or drop replication slots.
    Slots(SlotsArgs),
    /// Backfill tables while a stream runs: ask the stream on --slot (running now or started
    /// later) to read the tables' existing rows again, in chunks between its changes.
    Snapshot(BackfillArgs),
    /// Configure the server and a role for streams (as a superuser): wal_level, slots and
    /// WAL senders, output_plugin_libraries, REPLICATION, USAGE and SELECT grants.
    Setup(SetupArgs),
    /// The demo: a scratch PostgreSQL with the plugin, a short workload streamed to Parquet,
    /// read back and summarised; everything it started is stopped.
    #[cfg(feature = "demo")]
    Demo(demo::DemoArgs),
}

/// Where to connect. Precedence: flags, then `--dsn`, then the `PG*` environment variables
/// (`PGHOST`, `PGPORT`, `PGUSER`, `PGPASSWORD`, `PGDATABASE`, `PGSSLMODE`, …). Passwords come
/// from the DSN or `PGPASSWORD`, never a flag, and are never printed.
#[derive(Args, Clone, Debug, Default)]
struct ConnArgs {
    /// libpq connection string: `host=… user=… dbname=…` or `postgresql://user@host/db`.
    #[arg(long, env = "WAL2ARROW_DSN", hide_env_values = true)]
    dsn: Option<String>,
    /// Server host: a name, an address, or a Unix-domain socket directory (`/var/run/postgresql`).
    #[arg(long)]
    host: Option<String>,
    /// Server port.
    #[arg(long)]
    port: Option<u16>,
    /// Database.
    #[arg(long)]
    dbname: Option<String>,
    /// User.
    #[arg(long)]
    user: Option<String>,
    /// TLS: disable, prefer, require, verify-ca, verify-full.
    #[arg(long)]
    sslmode: Option<String>,
    /// CA certificates (PEM) for verify-ca / verify-full, or `system`.
    #[arg(long)]
    sslrootcert: Option<String>,
    /// The largest message accepted from the server, in bytes (default 256 MiB).
    #[arg(long, value_name = "BYTES")]
    max_message_size: Option<usize>,
}

impl ConnArgs {
    fn config(&self) -> Result<Config, Error> {
        let mut c = Config::from_env()?;
        if let Some(dsn) = &self.dsn {
            c.apply_dsn(dsn)?;
        }
        if let Some(h) = &self.host {
            c.host = h.clone();
        }
        if let Some(p) = self.port {
            c.port = p;
        }
        if let Some(d) = &self.dbname {
            c.dbname = Some(d.clone());
        }
        if let Some(u) = &self.user {
            c.user = u.clone();
        }
        if let Some(m) = &self.sslmode {
            c.ssl_mode = m.parse()?;
        }
        if let Some(r) = &self.sslrootcert {
            c.ssl_root_cert =
                Some(if r == "system" { RootCerts::System } else { RootCerts::File(r.into()) });
        }
        if let Some(m) = self.max_message_size {
            c.max_message_size = m;
        }
        c.validate()?;
        Ok(c)
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
enum PluginArg {
    /// wal2arrow, or wal2json when the server cannot load wal2arrow.
    #[default]
    Auto,
    /// wal2arrow only.
    Wal2arrow,
    /// wal2json only.
    Wal2json,
}

impl From<PluginArg> for PluginChoice {
    fn from(p: PluginArg) -> PluginChoice {
        match p {
            PluginArg::Auto => PluginChoice::Auto,
            PluginArg::Wal2arrow => PluginChoice::Wal2Arrow,
            PluginArg::Wal2json => PluginChoice::Wal2Json,
        }
    }
}

/// Which tables, and which slot.
#[derive(Args, Clone, Debug)]
struct SelectArgs {
    /// Replication slot (created if missing).
    #[arg(long, default_value = "wal2arrow")]
    slot: String,
    /// Table patterns (`public.users`, `public.*`, `*.orders`, `public.user_*`, regular
    /// expressions; repeat the flag or separate with commas). Default: every table.
    #[arg(long = "tables", value_name = "PATTERNS")]
    tables: Vec<String>,
    /// Output plugin: auto (wal2arrow, falling back to wal2json), wal2arrow, wal2json.
    #[arg(long, value_enum, default_value_t)]
    plugin: PluginArg,
}

impl SelectArgs {
    fn patterns(&self) -> Result<Vec<String>, Error> {
        Ok(table_patterns(&self.tables)?.iter().map(|p| p.as_str().to_owned()).collect())
    }
}

/// The patterns of repeated `--tables` flags, each a comma-separated list.
fn table_patterns(lists: &[String]) -> Result<Vec<TablePattern>, Error> {
    let mut out = Vec::new();
    for list in lists {
        let filter =
            TableFilter::parse_list(list).map_err(|e| Error::Config(format!("--tables: {e}")))?;
        out.extend(filter.patterns().iter().cloned());
    }
    Ok(out)
}

#[derive(Args)]
struct CheckArgs {
    #[command(flatten)]
    conn: ConnArgs,
    #[command(flatten)]
    select: SelectArgs,
}

#[derive(Args)]
struct BackfillArgs {
    #[command(flatten)]
    conn: ConnArgs,
    /// The slot of the stream that copies the rows.
    #[arg(long, default_value = "wal2arrow")]
    slot: String,
    /// Tables to backfill (patterns as for `stream`; each needs a primary key).
    #[arg(long = "tables", value_name = "PATTERNS", required = true)]
    tables: Vec<String>,
}

#[derive(Args)]
struct SetupArgs {
    /// How to connect: as a superuser.
    #[command(flatten)]
    conn: ConnArgs,
    /// The role streams will connect as (created, with LOGIN and REPLICATION, if missing).
    #[arg(long)]
    role: String,
    /// Tables the role will stream (patterns as for `stream`). Default: every table.
    #[arg(long = "tables", value_name = "PATTERNS")]
    tables: Vec<String>,
    /// Print the SQL and change nothing.
    #[arg(long)]
    dry_run: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum SinkArg {
    /// Tables on standard output, for people.
    Print,
    /// JSON lines (the wal2json connector's event shape).
    Jsonl,
    /// Arrow IPC stream segments.
    Ipc,
    /// A Parquet directory per table, exactly-once.
    Parquet,
    /// Kafka topics, one per table (`--kafka-brokers`), at-least-once.
    Kafka,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum KafkaFormatArg {
    /// Debezium's PostgreSQL change events (JSON), one message per row.
    Debezium,
    /// Arrow IPC, one message per batch.
    Arrow,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum ProgressArg {
    /// A live line when standard error is a terminal, a line every 10 s otherwise.
    Auto,
    /// A live line.
    Always,
    /// None.
    Never,
}

/// `--snapshot`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum SnapshotArg {
    /// Copy the tables' existing rows first; the slot must be new (created by this run).
    Initial,
    /// Only changes committed after the slot was created.
    Never,
    /// Copy the tables' rows and stop (through a temporary slot; no slot is left).
    Only,
}

#[derive(Args)]
struct StreamArgs {
    #[command(flatten)]
    conn: ConnArgs,
    #[command(flatten)]
    select: SelectArgs,
    /// Where changes go; repeat it to feed several (`--sink kafka --sink parquet`): kafka
    /// beside at most one of parquet, ipc, jsonl and print (they share `--out`).
    #[arg(long, value_enum, default_value = "print")]
    sink: Vec<SinkArg>,
    /// Output: a directory for parquet (required), a file or `-` (standard output) for ipc and
    /// jsonl.
    #[arg(long, short)]
    out: Option<PathBuf>,
    /// Parquet: start a new file after this many rows.
    #[arg(long, default_value_t = 1_000_000)]
    roll_rows: usize,
    /// Parquet: start a new file after about this many bytes.
    #[arg(long, default_value_t = 128 << 20)]
    roll_bytes: usize,
    /// Parquet: flush (finish the files, checkpoint, acknowledge) at least this often.
    #[arg(long, default_value_t = 60)]
    roll_seconds: u64,
    /// Most rows of one table per batch.
    #[arg(long, default_value_t = wal2arrow_schema::options::DEFAULT_BATCH_ROWS)]
    batch_rows: u32,
    /// Stop once everything up to this LSN is written and acknowledged (for scripts).
    #[arg(long, value_name = "LSN")]
    until_lsn: Option<Lsn>,
    /// Stop after this many seconds without a change.
    #[arg(long, value_name = "SECONDS")]
    idle_timeout: Option<u64>,
    /// Stop after this many transactions.
    #[arg(long)]
    max_transactions: Option<u64>,
    /// Start at this LSN instead of where the slot stands (the later of the two wins).
    #[arg(long, value_name = "LSN")]
    start_lsn: Option<Lsn>,
    /// Use a temporary slot (gone when the stream ends: nothing resumes).
    #[arg(long)]
    temporary_slot: bool,
    /// Start with the tables' existing rows (`_op` = read): default `initial` when this run
    /// creates the slot, `never` when it exists.
    #[arg(long, value_enum)]
    snapshot: Option<SnapshotArg>,
    /// Connections the snapshot copies with (default: the number of CPUs, 2 to 4).
    #[arg(long, value_name = "N")]
    snapshot_workers: Option<usize>,
    /// Heap pages each snapshot worker copies at a time (default 4096, 32 MiB); with
    /// `--sink parquet`, the unit an interrupted snapshot resumes from.
    #[arg(long, value_name = "PAGES")]
    snapshot_chunk_pages: Option<u32>,
    /// Send a heartbeat after this many idle seconds, so the slot advances (0: never).
    #[arg(long, default_value_t = 10)]
    heartbeat_seconds: u64,
    /// Report each partition's rows under the partition's own name instead of its partition
    /// root's.
    #[arg(long)]
    no_publish_via_root: bool,
    /// Make the slot a failover slot, kept on standbys across a failover (PostgreSQL 17+).
    #[arg(long)]
    failover: bool,
    /// Skip the checks before streaming.
    #[arg(long)]
    no_preflight: bool,
    /// Have the server decode each transaction only once it committed, instead of streaming
    /// large ones while in progress (it then spills them to its disk until their commit).
    #[arg(long)]
    no_streaming: bool,
    /// Memory for transactions streamed before their commit, kept until it (all together);
    /// beyond it they spill to files in `--spill-dir`.
    #[arg(long, value_name = "MIB", default_value_t = 48)]
    stream_memory_mb: usize,
    /// Where transactions streamed before their commit spill beyond `--stream-memory-mb`
    /// (default: the system's temporary directory).
    #[arg(long, value_name = "DIR")]
    spill_dir: Option<PathBuf>,
    /// Kafka: the brokers, `HOST:PORT[,…]` (`bootstrap.servers`).
    #[arg(long, value_name = "BROKERS")]
    kafka_brokers: Option<String>,
    /// Kafka: topics are `PREFIX.schema.table` (also Debezium's `source.name`).
    #[arg(long, value_name = "PREFIX", default_value = "wal2arrow")]
    topic_prefix: String,
    /// Kafka: the message format.
    #[arg(long, value_enum, default_value = "debezium")]
    kafka_format: KafkaFormatArg,
    /// Kafka: a librdkafka producer property, `KEY=VALUE` (repeatable).
    #[arg(long, value_name = "KEY=VALUE")]
    kafka_property: Vec<String>,
    /// Kafka (debezium format): no tombstone after deletes.
    #[arg(long)]
    no_tombstones: bool,
    /// Kafka (debezium format): Debezium's transaction metadata — BEGIN and END messages on
    /// `PREFIX.transaction`, and each event's `transaction` block.
    #[arg(long)]
    kafka_transaction_metadata: bool,
    /// Kafka (debezium format): keys and values as Kafka Connect's `{"schema", "payload"}`
    /// (`schemas.enable=true` for JsonConverter), with Debezium's logical type names.
    #[arg(long)]
    kafka_schemas: bool,
    /// Kafka: Kafka transactions, with `transactional.id` `wal2arrow-DATABASE-SLOT` (or the
    /// one given as `--kafka-property transactional.id=…`): each flush is one Kafka
    /// transaction recording the position it holds, so a restart skips what Kafka has and
    /// read_committed consumers see each change once.
    #[arg(long)]
    kafka_transactions: bool,
    /// Serve Prometheus metrics (`/metrics`) and a health check (`/health`) here: `PORT`
    /// (on 127.0.0.1) or `HOST:PORT`.
    #[arg(long, value_name = "ADDR")]
    metrics_addr: Option<String>,
    /// Progress line on standard error.
    #[arg(long, value_enum, default_value = "auto")]
    progress: ProgressArg,
}

#[derive(Args)]
struct SlotsArgs {
    #[command(subcommand)]
    action: SlotsAction,
}

#[derive(Subcommand)]
enum SlotsAction {
    /// List the server's replication slots with their lag (bytes and time).
    List {
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Create a logical replication slot.
    Create {
        /// Slot name.
        name: String,
        /// Output plugin of the slot.
        #[arg(long, value_enum, default_value = "wal2arrow")]
        plugin: PluginArg,
        /// A failover slot, kept on standbys across a failover (PostgreSQL 17+).
        #[arg(long)]
        failover: bool,
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Drop a replication slot.
    Drop {
        /// Slot name.
        name: String,
        /// Drop it even while a consumer streams from it (that consumer is disconnected).
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        conn: ConnArgs,
    },
}

/// A command's failure, with its exit code.
struct Failure {
    code: u8,
    message: String,
}

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        let stream = e.stream_error();
        let unreachable =
            stream.and_then(wal2arrow_consumer::Error::client_error).is_some_and(|c| {
                matches!(c, client::Error::Connect { .. } | client::Error::Timeout { .. })
            });
        let code = match stream {
            Some(wal2arrow_consumer::Error::Preflight(_)) => 3,
            // Cannot reach the server; or it refuses us: bad password, no such role or
            // database, no TLS where sslmode requires it.
            Some(s) if unreachable || s.is_login_failure() => 4,
            _ if e.class() == ErrorClass::Configuration => 2,
            _ => 1,
        };
        Failure { code, message: e.to_string() }
    }
}

impl From<wal2arrow_consumer::Error> for Failure {
    fn from(e: wal2arrow_consumer::Error) -> Failure {
        Error::from(e).into()
    }
}

impl From<client::Error> for Failure {
    fn from(e: client::Error) -> Failure {
        Error::from(e).into()
    }
}

impl From<String> for Failure {
    fn from(message: String) -> Failure {
        Failure { code: 1, message }
    }
}

type CmdResult = Result<(), Failure>;

/// Runs the `wal2arrow` command with the process's arguments.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = match tracing_subscriber::EnvFilter::try_new(&cli.log_level) {
        Ok(filter) => filter,
        Err(e) => {
            // Bad usage (exit 2), like any other setting: a filter that does not parse would
            // otherwise hide the very logs it asked for.
            eprintln!(
                "wal2arrow: --log-level (or WAL2ARROW_LOG) {:?}: {e}; give error, warn, info, \
                 debug or trace, or a tracing filter such as `warn,wal2arrow_sinks=debug`",
                cli.log_level
            );
            return ExitCode::from(2);
        }
    };
    // Colour only on a terminal, and never with NO_COLOR set (https://no-color.org).
    let colour = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("wal2arrow: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Check(args) => check(args).await,
            Command::Stream(args) => stream(*args).await,
            Command::Slots(args) => slots(args).await,
            Command::Setup(args) => setup(args).await,
            Command::Snapshot(args) => backfill(args).await,
            #[cfg(feature = "demo")]
            Command::Demo(args) => demo::run(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("wal2arrow: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

fn consumer_builder(conn: &ConnArgs, select: &SelectArgs) -> Result<ConsumerBuilder, Error> {
    Ok(Consumer::builder()
        .config(conn.config()?)
        .slot(&select.slot)
        .tables(select.patterns()?)
        .output_plugin(select.plugin.into()))
}

async fn check(args: CheckArgs) -> CmdResult {
    let consumer = consumer_builder(&args.conn, &args.select)?.build()?;
    let report = consumer.check().await?;
    println!("{report}");
    if report.is_ok() {
        println!("ready to stream");
        Ok(())
    } else {
        Err(Failure { code: 3, message: "the server is not ready: fix the failures above".into() })
    }
}

async fn backfill(args: BackfillArgs) -> CmdResult {
    let config = args.conn.config()?;
    let patterns: Vec<String> =
        table_patterns(&args.tables)?.iter().map(|p| p.as_str().to_owned()).collect();
    let tables = wal2arrow_consumer::backfill::request(&config, &args.slot, &patterns).await?;
    println!(
        "asked the stream on slot {:?} to backfill {}: it copies their rows in chunks between \
         its changes (a stream started later does it when it gets there)",
        args.slot,
        tables.join(", ")
    );
    Ok(())
}

async fn setup(args: SetupArgs) -> CmdResult {
    let config = args.conn.config()?;
    let tables = TableFilter::new(table_patterns(&args.tables)?);
    let plan = wal2arrow_consumer::setup::plan(&config, &args.role, &tables).await?;
    let pending = |plan: &wal2arrow_consumer::setup::SetupPlan| {
        if !plan.pending_restart.is_empty() {
            println!(
                "-- already configured, in effect after PostgreSQL restarts: {}",
                plan.pending_restart.join(", ")
            );
        }
    };
    if plan.is_empty() {
        pending(&plan);
        println!("-- nothing to change for role {:?}", args.role);
        return Ok(());
    }
    print!("{plan}");
    pending(&plan);
    if args.dry_run {
        println!("-- dry run: nothing was changed");
        return Ok(());
    }
    wal2arrow_consumer::setup::apply(&config, &plan).await?;
    println!("-- done: {} change(s) made", plan.steps.len());
    if plan.needs_restart() {
        println!(
            "-- restart PostgreSQL for the settings marked above, then `wal2arrow check` as {:?}",
            args.role
        );
    }
    if !plan.manual.is_empty() {
        return Err(Failure {
            code: 3,
            message: "the server needs changes setup cannot make: see \"by hand\" above".into(),
        });
    }
    Ok(())
}

async fn slots(args: SlotsArgs) -> CmdResult {
    match args.action {
        SlotsAction::List { conn } => {
            let slots = client::list_slots(&conn.config()?).await?;
            println!(
                "{:<24} {:<10} {:<10} {:<8} {:>14} {:>14} {:>10}  status",
                "slot", "plugin", "database", "active", "lag", "retained", "lag time"
            );
            for s in &slots {
                println!(
                    "{:<24} {:<10} {:<10} {:<8} {:>14} {:>14} {:>10}  {}",
                    s.name,
                    s.plugin.as_deref().unwrap_or("(physical)"),
                    s.database.as_deref().unwrap_or("-"),
                    if s.active_pid.is_some() { "yes" } else { "no" },
                    s.lag_bytes.map_or("-".into(), bytes),
                    s.retained_bytes.map_or("-".into(), bytes),
                    s.lag_time.map_or("-".into(), |t| format!("{:.1} s", t.as_secs_f64())),
                    s.wal_status.as_deref().unwrap_or("-"),
                );
            }
            if slots.is_empty() {
                println!("(no replication slots)");
            }
            Ok(())
        }
        SlotsAction::Create { name, plugin, failover, conn } => {
            let plugin = match plugin {
                PluginArg::Wal2json => OutputPlugin::Wal2Json,
                _ => OutputPlugin::Wal2Arrow,
            };
            let config = conn.config()?;
            let created = if failover {
                client::create_failover_slot(&config, &name, plugin).await?
            } else {
                client::create_slot_with(&config, &name, plugin).await?
            };
            let kind = if failover { ", failover" } else { "" };
            println!(
                "created slot {} ({plugin}{kind}) at {}",
                created.name, created.consistent_point
            );
            Ok(())
        }
        SlotsAction::Drop { name, force, conn } => {
            client::drop_slot(&conn.config()?, &name, force).await?;
            println!("dropped slot {name}");
            Ok(())
        }
    }
}

fn bytes(n: i64) -> String {
    let n = n.max(0) as f64;
    match n {
        n if n >= 1e9 => format!("{:.1} GB", n / 1e9),
        n if n >= 1e6 => format!("{:.1} MB", n / 1e6),
        n if n >= 1e3 => format!("{:.1} kB", n / 1e3),
        n => format!("{n} B"),
    }
}

/// Whether replication slot `name` exists.
async fn slot_exists(config: &Config, name: &str) -> Result<bool, Error> {
    let sql = wal2arrow_consumer::sql_client(config).await?;
    Ok(wal2arrow_consumer::find_slot(&sql, name).await?.is_some())
}

async fn stream(args: StreamArgs) -> CmdResult {
    let config = args.conn.config()?;
    let mut builder = consumer_builder(&args.conn, &args.select)?
        .batch_rows(args.batch_rows)
        .preflight(!args.no_preflight)
        .publish_via_root(!args.no_publish_via_root)
        .failover_slot(args.failover)
        .streaming(!args.no_streaming)
        .in_progress(wal2arrow_consumer::InProgress::Buffer {
            memory: args.stream_memory_mb.saturating_mul(1 << 20),
            spill_dir: args.spill_dir.clone().unwrap_or_else(std::env::temp_dir),
        })
        .heartbeat_interval(
            (args.heartbeat_seconds > 0).then(|| Duration::from_secs(args.heartbeat_seconds)),
        );
    if args.temporary_slot {
        builder = builder.temporary_slot(&args.select.slot);
    }
    if let Some(lsn) = args.start_lsn {
        builder = builder.start_lsn(lsn);
    }
    if let Some(mode) = args.snapshot {
        builder = builder.snapshot(match mode {
            SnapshotArg::Initial => SnapshotMode::Initial,
            SnapshotArg::Never => SnapshotMode::Never,
            SnapshotArg::Only => SnapshotMode::Only,
        });
    }
    if let Some(workers) = args.snapshot_workers {
        builder = builder.snapshot_workers(workers);
    }
    if let Some(pages) = args.snapshot_chunk_pages {
        builder = builder.snapshot_chunk_pages(pages);
    }
    let source = format!("{}/{}", config.dbname(), args.select.slot);
    let mut kinds = args.sink.clone();
    kinds.sort_by_key(|k| *k as u8);
    kinds.dedup();
    if kinds.iter().filter(|k| **k != SinkArg::Kafka).count() > 1 {
        return Err(Failure {
            code: 2,
            message: "--sink: parquet, ipc, jsonl and print share --out: give one of them (and \
                      kafka beside it, if you like)"
                .into(),
        });
    }
    let file_sink = kinds.iter().copied().find(|k| *k != SinkArg::Kafka);
    // An output that cannot be written is bad usage, found before anything streams.
    if let Some(out) = &args.out
        && file_sink.is_some_and(|k| k != SinkArg::Print)
    {
        wal2arrow_sinks::check_writable(out, file_sink == Some(SinkArg::Parquet))
            .map_err(|e| Failure { code: 2, message: format!("--out: {e}") })?;
    }
    let out_path = args.out.clone().unwrap_or_else(|| PathBuf::from("-"));
    // The Parquet sink records a snapshot's finished ranges: an interrupted one resumes.
    let mut resumable: Option<Option<wal2arrow_consumer::SnapshotResume>> = None;
    // It also keeps the record of the tables it holds: tables it lacks are backfilled.
    let mut held: Option<Option<Vec<String>>> = None;
    let mut sinks: Vec<Box<dyn Sink>> = Vec::new();
    let mut kafka: Option<wal2arrow_sinks::kafka::KafkaSink> = None;
    for kind in &kinds {
        let sink: Box<dyn Sink> = match kind {
            SinkArg::Print => Box::new(print::PrintSink),
            SinkArg::Jsonl => Box::new(JsonLinesSink::open(&out_path)?),
            SinkArg::Ipc => Box::new(IpcSink::open(&out_path)?),
            SinkArg::Kafka => {
                let brokers = args.kafka_brokers.clone().ok_or_else(|| {
                    Error::Config("--sink kafka needs --kafka-brokers HOST:PORT[,…]".into())
                })?;
                let mut options = wal2arrow_sinks::kafka::KafkaOptions::new(brokers);
                options.topic_prefix = args.topic_prefix.clone();
                options.format = match args.kafka_format {
                    KafkaFormatArg::Debezium => wal2arrow_sinks::kafka::KafkaFormat::Debezium,
                    KafkaFormatArg::Arrow => wal2arrow_sinks::kafka::KafkaFormat::Arrow,
                };
                options.tombstones = !args.no_tombstones;
                options.transaction_metadata = args.kafka_transaction_metadata;
                options.schemas = args.kafka_schemas;
                if options.format != wal2arrow_sinks::kafka::KafkaFormat::Debezium {
                    let flag = if options.transaction_metadata {
                        Some("--kafka-transaction-metadata")
                    } else if options.schemas {
                        Some("--kafka-schemas")
                    } else {
                        None
                    };
                    if let Some(flag) = flag {
                        return Err(Error::Config(format!(
                            "{flag} is for Debezium's JSON: it needs --kafka-format debezium \
                             (Arrow messages carry their schema, and their transaction in headers)"
                        ))
                        .into());
                    }
                }
                options.database = config.dbname().to_owned();
                for p in &args.kafka_property {
                    let (k, v) = p.split_once('=').ok_or_else(|| {
                        Error::Config(format!("--kafka-property {p:?}: expected KEY=VALUE"))
                    })?;
                    let (k, v) = (k.trim(), v.trim());
                    if k == "transactional.id" {
                        options.transactional_id = Some(v.to_owned());
                    } else {
                        options.properties.push((k.to_owned(), v.to_owned()));
                    }
                }
                if args.kafka_transactions && options.transactional_id.is_none() {
                    options.transactional_id =
                        Some(format!("wal2arrow-{}-{}", options.database, args.select.slot));
                }
                if options.transactional_id.is_some() {
                    // The position Kafka holds is only meaningful for this cluster and
                    // database: recorded with it, and checked when read back.
                    let system = client::ReplicationClient::connect(&config)
                        .await?
                        .identify_system()
                        .await?;
                    options.source = format!("{}/{}", system.system_id, options.database);
                }
                // Its Kafka transactions start once the slot is held (below): a second stream
                // started by mistake must not fence the running one.
                kafka = Some(wal2arrow_sinks::kafka::KafkaSink::new(options)?);
                continue;
            }
            SinkArg::Parquet => {
                let dir = args
                    .out
                    .clone()
                    .ok_or_else(|| Error::Config("--sink parquet needs --out DIRECTORY".into()))?;
                if args.temporary_slot {
                    tracing::warn!(
                        "a temporary slot cannot resume: a restarted run misses what happened in between"
                    );
                }
                let options = ParquetOptions {
                    roll_rows: args.roll_rows.max(1),
                    roll_bytes: args.roll_bytes.max(1),
                    roll_interval: Duration::from_secs(args.roll_seconds.max(1)),
                    ..ParquetOptions::default()
                };
                let sink = ParquetSink::open(dir, &source, options)?;
                let mut sink = sink;
                let snapshots = !args.temporary_slot
                    && !matches!(args.snapshot, Some(SnapshotArg::Never | SnapshotArg::Only));
                if sink.is_fresh() && snapshots && !slot_exists(&config, &args.select.slot).await? {
                    // This run creates the slot and snapshots: say so durably first (see
                    // ParquetSink::mark_snapshot_pending).
                    sink.mark_snapshot_pending()?;
                }
                resumable = Some(sink.snapshot_resume());
                held = Some(sink.tables_held());
                Box::new(sink)
            }
        };
        sinks.push(sink);
    }
    if let Some(from) = resumable {
        builder = builder.resumable_snapshot(from);
    }
    if let Some(held) = held {
        builder = builder.tables_held(held);
    }
    let consumer = builder.build()?;
    let health = Arc::new(Mutex::new(metrics::Health::default()));
    if let Some(addr) = &args.metrics_addr {
        let addr = metrics::parse_addr(addr).map_err(|message| Failure { code: 2, message })?;
        metrics::serve(addr, Arc::clone(&health))
            .await
            .map_err(|message| Failure { code: 2, message })?;
    }
    let mut stream = consumer.start().await?;
    if let Some(reason) = stream.fallback_reason() {
        eprintln!("wal2arrow: streaming with wal2json ({reason})");
    }
    if let Some(mut kafka) = kafka {
        if let Err(e) = kafka.start_transactions() {
            stream.close().await;
            return Err(e.into());
        }
        sinks.push(Box::new(kafka));
    }
    let sink: Box<dyn Sink> = if sinks.len() == 1 {
        sinks.pop().expect("one sink")
    } else {
        Box::new(wal2arrow_sinks::fanout::Fanout::new(sinks))
    };
    let run_options = RunOptions {
        until_lsn: args.until_lsn,
        idle_timeout: args.idle_timeout.map(Duration::from_secs),
        max_transactions: args.max_transactions,
        finish_timeout: None,
    };
    let live = match args.progress {
        ProgressArg::Always => Some(true),
        ProgressArg::Never => None,
        ProgressArg::Auto => Some(std::io::stderr().is_terminal()),
    };
    let mut line = ProgressLine::new(live);
    let result = wal2arrow_sinks::run(
        &mut stream,
        sink,
        &run_options,
        shutdown_signal(),
        &mut |p: &Progress| {
            if let Ok(mut h) = health.lock() {
                *h = metrics::Health {
                    acknowledged: p.acknowledged.to_string(),
                    lag_bytes: p.lag_bytes,
                    transactions: p.transactions,
                };
            }
            line.show(p)
        },
    )
    .await;
    line.clear();
    stream.close().await;
    let report = result?;
    eprintln!("{}", summary(&report.progress, report.stopped));
    Ok(())
}

/// Completes at the first Ctrl-C or SIGTERM; a second one ends the process at once (130).
async fn shutdown_signal() {
    let wait = || async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("a SIGTERM handler can be installed");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    wait().await;
    eprintln!("\nwal2arrow: stopping (flushing, acknowledging); interrupt again to quit at once");
    tokio::spawn(async move {
        wait().await;
        eprintln!("wal2arrow: interrupted twice: quitting without flushing");
        std::process::exit(130);
    });
}

fn summary(p: &Progress, stopped: Stopped) -> String {
    let why = match stopped {
        Stopped::Shutdown => "stopped on request",
        Stopped::UntilLsn => "reached --until-lsn",
        Stopped::Idle => "idle timeout",
        Stopped::MaxTransactions => "reached --max-transactions",
        Stopped::StreamEnded => "the stream ended",
    };
    let mut s = format!(
        "{} transactions, {} rows in {:.1} s ({why}); acknowledged up to {}",
        p.transactions,
        p.total_rows(),
        p.elapsed.as_secs_f64(),
        p.acknowledged
    );
    if p.skipped_transactions > 0 {
        s.push_str(&format!(
            "; {} transactions skipped (already written by an earlier run)",
            p.skipped_transactions
        ));
    }
    for (table, rows) in &p.rows {
        s.push_str(&format!("\n  {table}: {rows} rows"));
    }
    s
}

/// The progress line of an initial snapshot: tables done, rows, bytes, rate, and what remains
/// (by heap pages read, the one measure known in advance).
fn snapshot_line(elapsed: Duration, s: &wal2arrow_consumer::SnapshotStats) -> String {
    let secs = elapsed.as_secs_f64().max(0.001);
    let rate = s.rows as f64 / secs;
    let left = if s.pages_done > 0 && s.pages > s.pages_done {
        let remaining = secs * (s.pages - s.pages_done) as f64 / s.pages_done as f64;
        format!("~{remaining:.0} s left")
    } else {
        "estimating".to_owned()
    };
    format!(
        "{:>6.0} s | snapshot {}/{} tables | {} rows ({rate:.0}/s) | {} | {:.0}% of pages | {left}",
        secs,
        s.tables_done,
        s.tables,
        s.rows,
        bytes(s.bytes as i64),
        if s.pages == 0 { 100.0 } else { 100.0 * s.pages_done as f64 / s.pages as f64 },
    )
}

/// The progress line: rewritten in place on a terminal, a plain line every 10 s otherwise.
struct ProgressLine {
    /// `None`: off; `Some(true)`: live; `Some(false)`: periodic.
    live: Option<bool>,
    last: Option<(Duration, u64)>,
    shown: bool,
}

impl ProgressLine {
    fn new(live: Option<bool>) -> ProgressLine {
        ProgressLine { live, last: None, shown: false }
    }

    fn show(&mut self, p: &Progress) {
        let Some(live) = self.live else { return };
        let (t0, e0) = self.last.unwrap_or_default();
        let dt = p.elapsed.saturating_sub(t0).as_secs_f64();
        if !live && dt < 10.0 {
            return;
        }
        let rate = if dt > 0.0 { (p.events - e0) as f64 / dt } else { 0.0 };
        self.last = Some((p.elapsed, p.events));
        let mut tables: Vec<String> =
            p.rows.iter().take(3).map(|(t, r)| format!("{t} {r}")).collect();
        if p.rows.len() > 3 {
            tables.push(format!("+{} tables", p.rows.len() - 3));
        }
        if let Some(snap) = p.snapshot.filter(|s| !s.complete) {
            let text = snapshot_line(p.elapsed, &snap);
            if live {
                eprint!("\r\x1b[K{text}");
                self.shown = true;
            } else {
                eprintln!("{text}");
            }
            return;
        }
        let text = format!(
            "{:>6.0} s | {} events ({rate:.0}/s) | {} rows{} | {} | lag {} | acked {}",
            p.elapsed.as_secs_f64(),
            p.events,
            p.total_rows(),
            if tables.is_empty() { String::new() } else { format!(" ({})", tables.join(", ")) },
            bytes(p.bytes as i64),
            bytes(p.lag_bytes as i64),
            p.acknowledged
        );
        if live {
            eprint!("\r\x1b[K{text}");
            self.shown = true;
        } else {
            eprintln!("{text}");
        }
    }

    fn clear(&mut self) {
        if self.shown {
            eprint!("\r\x1b[K");
        }
    }
}
