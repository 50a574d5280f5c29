//! `wal2arrow`: stream PostgreSQL changes as Arrow from the command line.
//!
//! - `wal2arrow demo` starts a scratch PostgreSQL with the plugin, makes some changes and
//!   prints them as the consumer receives them, then stops everything it started;
//! - `wal2arrow stream` streams a slot of a real database and prints each batch.

use std::process::ExitCode;
use std::time::Duration;

use arrow_array::RecordBatch;
use clap::{Args, Parser, Subcommand};
use wal2arrow_consumer::{ChangeStream, Config, Event, Lsn, PluginOptions, StreamOptions};
use wal2arrow_harness::{Cluster, ClusterOptions};

#[derive(Parser)]
#[command(name = "wal2arrow", version, about = "Arrow-native change data capture for PostgreSQL")]
struct Cli {
    /// Log level: error, warn, info, debug or trace.
    #[arg(long, global = true, default_value = "warn", env = "WAL2ARROW_LOG")]
    log_level: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start a scratch PostgreSQL with the plugin, make changes, and print them as streamed.
    Demo(DemoArgs),
    /// Stream a replication slot and print every batch as a table.
    Stream(StreamArgs),
}

#[derive(Args)]
struct DemoArgs {
    /// The plugin library (wal2arrow.so). Default: built from this source tree.
    #[arg(long, env = "WAL2ARROW_PLUGIN")]
    plugin: Option<std::path::PathBuf>,
}

#[derive(Args)]
struct StreamArgs {
    /// Connection string (keyword/value or postgres:// URI); the password is never printed.
    #[arg(long, env = "WAL2ARROW_DSN")]
    dsn: String,
    /// Replication slot (created with the wal2arrow plugin if missing).
    #[arg(long, default_value = "wal2arrow")]
    slot: String,
    /// Most rows of one table per batch.
    #[arg(long, default_value_t = wal2arrow_schema::options::DEFAULT_BATCH_ROWS)]
    batch_rows: u32,
    /// Stop after this many transactions.
    #[arg(long)]
    max_transactions: Option<u64>,
    /// Stop after this long without a transaction (seconds).
    #[arg(long)]
    idle_timeout: Option<u64>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("wal2arrow: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Demo(args) => demo(args).await,
            Command::Stream(args) => stream(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wal2arrow: {e}");
            ExitCode::FAILURE
        }
    }
}

type CliResult = Result<(), Box<dyn std::error::Error>>;

async fn stream(args: StreamArgs) -> CliResult {
    let config = Config::from_dsn(&args.dsn)?;
    let mut options = StreamOptions::new(&args.slot);
    options.plugin = PluginOptions { batch_rows: args.batch_rows, ..PluginOptions::default() };
    let mut stream = wal2arrow_consumer::open(&config, &options).await?;
    let idle = args.idle_timeout.map(Duration::from_secs);
    let summary = print_transactions(&mut stream, args.max_transactions, idle).await?;
    stream.close().await?;
    eprintln!("{summary}");
    Ok(())
}

/// What a run streamed.
#[derive(Default)]
struct Summary {
    transactions: u64,
    rows: std::collections::BTreeMap<String, usize>,
    last_ack: Lsn,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{} transactions streamed, acknowledged up to {}",
            self.transactions, self.last_ack
        )?;
        for (table, rows) in &self.rows {
            writeln!(f, "  {table}: {rows} rows")?;
        }
        Ok(())
    }
}

/// Prints each transaction's batches as tables, acknowledging each commit after printing.
async fn print_transactions(
    stream: &mut ChangeStream,
    max_transactions: Option<u64>,
    idle: Option<Duration>,
) -> Result<Summary, Box<dyn std::error::Error>> {
    let mut summary = Summary::default();
    while max_transactions.is_none_or(|m| summary.transactions < m) {
        let next = match idle {
            Some(idle) => match tokio::time::timeout(idle, stream.next_event()).await {
                Ok(event) => event?,
                Err(_) => break,
            },
            None => stream.next_event().await?,
        };
        let Some(event) = next else { break };
        match event {
            Event::Begin(b) => println!("BEGIN xid {} (commit LSN {})", b.xid, b.commit_lsn),
            Event::Relation(r) => {
                println!("schema of {}: {} columns", r.qualified_name, r.table_columns())
            }
            Event::Change(c) => {
                println!("{} — {} rows", c.table(), c.num_rows());
                println!("{}", pretty(&c.batch)?);
                *summary.rows.entry(c.table().to_owned()).or_default() += c.num_rows();
            }
            Event::Truncate(t) => {
                let names: Vec<&str> =
                    t.relations.iter().map(|r| r.qualified_name.as_str()).collect();
                println!(
                    "TRUNCATE {}{}{}",
                    names.join(", "),
                    if t.restart_identity == Some(true) { " RESTART IDENTITY" } else { "" },
                    if t.cascade == Some(true) { " CASCADE" } else { "" }
                );
            }
            Event::Message(m) => println!(
                "MESSAGE {}prefix {:?}: {}",
                if m.transactional { "(transactional) " } else { "" },
                m.prefix,
                String::from_utf8_lossy(m.content.as_slice())
            ),
            Event::Restarted { from, reason } => {
                println!("RESTARTED from {from} after: {reason}");
            }
            Event::Commit(c) => {
                println!("COMMIT xid {} at {} ({} events)\n", c.xid, c.commit_lsn, c.batches);
                stream.ack(c.end_lsn);
                summary.transactions += 1;
                summary.last_ack = c.end_lsn;
            }
            other => println!("{other:?}"),
        }
    }
    Ok(summary)
}

fn pretty(batch: &RecordBatch) -> Result<String, arrow_schema::ArrowError> {
    Ok(arrow_cast::pretty::pretty_format_batches(std::slice::from_ref(batch))?.to_string())
}

const DEMO_SCHEMA: &str = "
    CREATE TABLE users (
        id serial PRIMARY KEY, name text NOT NULL, email varchar(100), active bool,
        created_at timestamptz DEFAULT now());
    CREATE TABLE orders (
        id serial PRIMARY KEY, user_id int4 NOT NULL, amount_cents int8, status text,
        placed_on date DEFAULT current_date);";

const DEMO_WORKLOAD: [&str; 5] = [
    "INSERT INTO users (name, email, active) VALUES
        ('Alice', 'alice@example.com', true), ('Bob', 'bob@example.com', true),
        ('Carol', NULL, false)",
    "INSERT INTO orders (user_id, amount_cents, status) VALUES
        (1, 1999, 'paid'), (1, 4550, 'paid'), (2, 120, 'pending'), (3, NULL, 'cancelled'),
        (2, 8800, 'paid'), (1, 300, 'refunded'), (3, 1250, 'pending'), (2, 99, 'paid')",
    "BEGIN;
     INSERT INTO users (name, email, active) VALUES ('Dan', 'dan@example.com', true);
     INSERT INTO orders (user_id, amount_cents, status) VALUES (4, 7000, 'paid');
     COMMIT",
    "BEGIN;
     UPDATE orders SET status = 'paid' WHERE status = 'pending';
     UPDATE users SET id = 10, active = true WHERE name = 'Carol';
     COMMIT",
    "DELETE FROM orders WHERE status = 'cancelled'",
];

async fn demo(args: DemoArgs) -> CliResult {
    let plugin = match args.plugin {
        Some(p) => p,
        None => {
            eprintln!("building the wal2arrow plugin (cargo build -p wal2arrow --release)…");
            wal2arrow_harness::plugin_library()?
        }
    };
    eprintln!("starting a scratch PostgreSQL with the plugin {}…", plugin.display());
    let cluster =
        Cluster::start(&ClusterOptions { plugin: Some(plugin), ..ClusterOptions::default() })?;
    let result = run_demo(&cluster).await;
    drop(cluster); // stops the server and removes its files, whatever happened
    eprintln!("scratch PostgreSQL stopped and removed");
    result
}

async fn run_demo(cluster: &Cluster) -> CliResult {
    eprintln!(
        "PostgreSQL on 127.0.0.1:{} (output_plugin_libraries {})",
        cluster.port(),
        if cluster.has_output_plugin_libraries() { "lists wal2arrow" } else { "not present" }
    );
    cluster.psql("postgres", DEMO_SCHEMA)?;
    let config = Config::from_dsn(&cluster.dsn("postgres"))?;
    let mut stream = wal2arrow_consumer::open(&config, &StreamOptions::new("demo")).await?;
    for sql in DEMO_WORKLOAD {
        cluster.psql("postgres", sql)?;
    }
    let summary = print_transactions(
        &mut stream,
        Some(DEMO_WORKLOAD.len() as u64),
        Some(Duration::from_secs(60)),
    )
    .await?;
    stream.close().await?;
    print!("{summary}");
    if summary.transactions != DEMO_WORKLOAD.len() as u64 {
        return Err(format!(
            "expected {} transactions, streamed {}",
            DEMO_WORKLOAD.len(),
            summary.transactions
        )
        .into());
    }
    Ok(())
}
