//! `wal2arrow demo`: the README's first command. Builds the plugin, starts a scratch
//! PostgreSQL with it, creates the `users` and `orders` tables of the original connector's
//! example, runs a short mixed workload, streams it to Parquet in a local directory with the
//! same code as `wal2arrow stream --sink parquet`, reads the files back and summarises them,
//! then stops and removes the server.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use arrow_array::RecordBatch;
use clap::Args;
use wal2arrow_harness::{Cluster, ClusterOptions};

use super::{CmdResult, Failure};
use wal2arrow_consumer::{Config, Consumer, Lsn};
use wal2arrow_sinks::parquet::{CHECKPOINT_FILE, ParquetOptions, ParquetSink, read_dir};
use wal2arrow_sinks::{Error, Progress, RunOptions, Stopped};

#[derive(Args)]
pub(super) struct DemoArgs {
    /// The plugin library (wal2arrow.so). Default: built from the source tree this binary
    /// was built from, else the one installed into PostgreSQL (`cargo pgrx install`).
    #[arg(long, env = "WAL2ARROW_PLUGIN")]
    plugin: Option<PathBuf>,
    /// Where the Parquet files go (replaced if it holds an earlier demo's output).
    #[arg(long, default_value = "demo-output")]
    out: PathBuf,
}

const SCHEMA: &str = "
    CREATE TABLE users (
        id serial PRIMARY KEY, name text NOT NULL, email varchar(100), active bool,
        balance numeric(12,2), created_at timestamptz DEFAULT now());
    CREATE TABLE orders (
        id serial PRIMARY KEY, user_id int4 NOT NULL, amount_cents int8, status text,
        tags text[], placed_on date DEFAULT current_date);";

const WORKLOAD: [&str; 6] = [
    "INSERT INTO users (name, email, active, balance) VALUES
        ('Alice', 'alice@example.com', true, 120.50), ('Bob', 'bob@example.com', true, 0),
        ('Carol', NULL, false, -15.25)",
    "INSERT INTO orders (user_id, amount_cents, status, tags) VALUES
        (1, 1999, 'paid', '{gift}'), (1, 4550, 'paid', NULL), (2, 120, 'pending', '{}'),
        (3, NULL, 'cancelled', '{late,\"needs review\"}'), (2, 8800, 'paid', '{bulk}'),
        (1, 300, 'refunded', NULL), (3, 1250, 'pending', NULL), (2, 99, 'paid', '{sample}')",
    "BEGIN;
     INSERT INTO users (name, email, active, balance) VALUES ('Dan', 'dan@example.com', true, 70);
     INSERT INTO orders (user_id, amount_cents, status) VALUES (4, 7000, 'paid');
     COMMIT",
    "BEGIN;
     UPDATE orders SET status = 'paid' WHERE status = 'pending';
     UPDATE users SET id = 10, active = true WHERE name = 'Carol';
     COMMIT",
    "DELETE FROM orders WHERE status = 'cancelled'",
    "INSERT INTO orders (user_id, amount_cents, status)
        SELECT 1 + g % 4, g * 10, 'paid' FROM generate_series(1, 1000) g",
];

pub(super) async fn run(args: DemoArgs) -> CmdResult {
    prepare_output(&args.out)?;
    let plugin = find_plugin(args.plugin)?;
    eprintln!("starting a scratch PostgreSQL with the plugin {}…", plugin.display());
    let cluster =
        Cluster::start(&ClusterOptions { plugin: Some(plugin), ..ClusterOptions::default() })
            .map_err(|e| e.to_string())?;
    let result = demo(&cluster, &args.out).await;
    drop(cluster); // stops the server and removes its files, whatever happened
    eprintln!("scratch PostgreSQL stopped and removed");
    result
}

/// The plugin to load: the one asked for; else built from the source tree (a checkout);
/// else the one installed into the PostgreSQL the demo runs.
fn find_plugin(asked: Option<PathBuf>) -> Result<PathBuf, Failure> {
    if let Some(p) = asked {
        return if p.is_file() {
            Ok(p)
        } else {
            Err(Failure {
                code: 2,
                message: format!("--plugin {} is not a file (a built wal2arrow.so)", p.display()),
            })
        };
    }
    if wal2arrow_harness::source_tree().is_some() {
        eprintln!("building the wal2arrow plugin (cargo build -p wal2arrow --release)…");
        return wal2arrow_harness::plugin_library().map_err(|e| Failure::from(e.to_string()));
    }
    let bin = wal2arrow_harness::pg_bin_dir().map_err(|e| Failure::from(e.to_string()))?;
    wal2arrow_harness::installed_plugin(&bin).ok_or_else(|| Failure {
        code: 2,
        message: format!(
            "no wal2arrow plugin found in {}'s library directory: install it \
             (cd wal2arrow && cargo pgrx install --release) or pass --plugin PATH/TO/wal2arrow.so",
            bin.display()
        ),
    })
}

/// The output directory must be new, empty, or an earlier demo's.
fn prepare_output(out: &std::path::Path) -> CmdResult {
    match std::fs::read_dir(out) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("cannot read {}: {e}", out.display()).into()),
        Ok(mut entries) => {
            let earlier = out.join(CHECKPOINT_FILE).exists();
            if earlier || entries.next().is_none() {
                std::fs::remove_dir_all(out)
                    .map_err(|e| Failure::from(format!("cannot clear {}: {e}", out.display())))
            } else {
                Err(Failure {
                    code: 2,
                    message: format!(
                        "{} exists and is not an earlier demo's output: pass --out NEW_DIRECTORY",
                        out.display()
                    ),
                })
            }
        }
    }
}

async fn demo(cluster: &Cluster, out: &std::path::Path) -> CmdResult {
    eprintln!(
        "PostgreSQL on 127.0.0.1:{} (output_plugin_libraries {})",
        cluster.port(),
        if cluster.has_output_plugin_libraries() { "lists wal2arrow" } else { "not present" }
    );
    cluster.psql("postgres", SCHEMA).map_err(|e| e.to_string())?;
    let config = Config::from_dsn(&cluster.dsn("postgres"))?;
    let consumer = Consumer::builder()
        .config(config.clone())
        .slot("demo")
        .tables(["public.users", "public.orders"])
        .heartbeat_interval(None)
        .build()?;
    // Starting creates the slot: changes from here on are captured.
    let mut stream = consumer.start().await?;
    eprintln!("streaming with {}; running the workload…", stream.output_plugin());
    for sql in WORKLOAD {
        cluster.psql("postgres", sql).map_err(|e| e.to_string())?;
    }
    let until: Lsn = cluster
        .psql("postgres", "SELECT pg_current_wal_lsn()")
        .map_err(|e| e.to_string())?
        .trim()
        .parse()
        .map_err(|e| format!("{e}"))?;
    let sink = ParquetSink::open(
        out,
        &format!("{}/demo", config.dbname()),
        ParquetOptions { roll_interval: Duration::from_secs(1), ..ParquetOptions::default() },
    )?;
    let options = RunOptions {
        until_lsn: Some(until),
        idle_timeout: Some(Duration::from_secs(60)),
        ..RunOptions::default()
    };
    let report = wal2arrow_sinks::run(
        &mut stream,
        sink,
        &options,
        std::future::pending(),
        &mut |_: &Progress| {},
    )
    .await?;
    stream.close().await;
    if report.stopped != Stopped::UntilLsn {
        return Err(format!("the stream stopped early: {:?}", report.stopped).into());
    }
    let p = &report.progress;
    println!(
        "streamed {} transactions, {} rows to {} (acknowledged up to {})\n",
        p.transactions,
        p.total_rows(),
        out.display(),
        p.acknowledged
    );
    for table in ["public.users", "public.orders"] {
        let dir = out.join(table);
        let batches = read_dir(&dir)?;
        let files = std::fs::read_dir(&dir)
            .map(|d| {
                d.flatten().filter(|e| e.path().extension().is_some_and(|x| x == "parquet")).count()
            })
            .unwrap_or(0);
        let mut ops: BTreeMap<String, usize> = BTreeMap::new();
        for b in &batches {
            count_ops(b, &mut ops);
        }
        let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
        println!(
            "{table}: {rows} rows in {files} Parquet file(s) — {}",
            ops.iter().map(|(op, n)| format!("{n} {op}")).collect::<Vec<_>>().join(", ")
        );
        let first = first_rows(&batches, 8).map_err(Error::from)?;
        println!("{}\n", arrow_cast::pretty::pretty_format_batches(&[first]).map_err(Error::from)?);
    }
    let expected = WORKLOAD.len() as u64;
    if p.transactions != expected {
        return Err(format!("expected {expected} transactions, streamed {}", p.transactions).into());
    }
    println!(
        "read them with any Parquet reader, e.g. duckdb -c \"SELECT * FROM '{}/public.orders/*.parquet'\"",
        out.display()
    );
    Ok(())
}

fn count_ops(batch: &RecordBatch, ops: &mut BTreeMap<String, usize>) {
    use arrow_array::cast::AsArray;
    use arrow_array::types::UInt8Type;
    let Some(col) = batch.column_by_name("_op") else { return };
    let dict = col.as_dictionary::<UInt8Type>();
    let names = dict.values().as_string::<i32>();
    for key in dict.keys().values() {
        *ops.entry(names.value(usize::from(*key)).to_owned()).or_default() += 1;
    }
}

/// The first `n` rows, without the columns a reader rarely looks at first.
fn first_rows(batches: &[RecordBatch], n: usize) -> Result<RecordBatch, arrow_schema::ArrowError> {
    let Some(schema) = batches.first().map(RecordBatch::schema) else {
        return Ok(RecordBatch::new_empty(std::sync::Arc::new(arrow_schema::Schema::empty())));
    };
    let all = arrow_select::concat::concat_batches(&schema, batches)?;
    let keep: Vec<usize> = schema
        .fields()
        .iter()
        .enumerate()
        .filter(|(_, f)| {
            !matches!(
                f.name().as_str(),
                "_missing" | "_unrepresentable" | "_ordinal" | "_commit_time"
            )
        })
        .map(|(i, _)| i)
        .collect();
    all.slice(0, n.min(all.num_rows())).project(&keep)
}
