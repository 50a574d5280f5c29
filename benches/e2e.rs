//! The end-to-end benchmark: one scratch PostgreSQL, every contender decoding the same WAL,
//! side by side in one run.
//!
//! ```sh
//! cargo run --release -p wal2arrow-benches --bin e2e -- --out BENCHMARKS.md
//! ```
//!
//! For each workload it creates one slot per contender and round (`--repeat`, 3 by default)
//! *before* generating the workload, so all of them decode the same WAL, then streams the
//! slots one after another (never two at once: the machine has two cores), the contenders
//! interleaved round by round, and reports each contender's median round of:
//!
//! - **events/s** end to end: rows from `START_REPLICATION` until the consumer holds them —
//!   as Arrow `RecordBatch`es for wal2arrow and for wal2json through the fallback parser, as
//!   raw bytes for pgoutput and test_decoding, which have no Arrow path;
//! - the **walsender's CPU seconds** (from `/proc/<pid>/stat`);
//! - **bytes per row** sent by the server.
//!
//! The contenders: wal2arrow → consumer; wal2json v2 → the fallback → RecordBatches;
//! pgoutput protocol 2 in binary mode (raw); test_decoding (raw); and the **decode floor** —
//! pgoutput with a publication that contains no tables: PostgreSQL decoding the WAL and
//! sending nothing.
//!
//! The workloads: W1 1,000,000 inserts into `(id int8 pk, a int4, b float8, c text(20),
//! d timestamptz, e bool)` in 1,000-row transactions; W2 300,000 inserts into a 21-column
//! table of mixed types with ~10% NULLs; W3 500,000 updates of W1's rows; W4 100,000
//! single-row transactions; W5 200,000 inserts with a 20 kB text stored out of line (TOAST),
//! then W5U, updates of those rows that leave it unchanged; W6 50,000 transactions inserting
//! a row into each of two tables drawn at random from 1,000 (the schema caches); W7 one
//! 2,000,000-row transaction, streamed in progress by wal2arrow, pgoutput and the floor
//! (wal2json cannot; test_decoding prints no rows when it does). Each reports the wal2arrow consumer's peak memory. Then commit-to-batch
//! latency under steady load (1,000 and 10,000 transactions per second), (SNAPSHOT)
//! snapshot throughput on W1's and W2's tables against binary `COPY` and ADBC, (LARGE) the
//! time from `COMMIT` to the last row in the consumer's hands for one 1,000,000-row
//! transaction, decoded at commit or streamed while in progress, with the server's spill and
//! stream bytes, (SINKS, or KAFKA) W1 through `wal2arrow_sinks::run` into each sink —
//! Parquet, Arrow IPC, JSON lines, and Kafka (a tansu broker) in both formats — beside the
//! library's own rate on the same WAL, and (PYTHON) W1 into a Python loop that counts rows
//! with the `wal2arrow` package, beside the Rust consumer. The targets table checks the
//! project's targets, issue 18's included, against the figures.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use wal2arrow_consumer::{
    ChangeStream, Config, Event, InProgress, Lsn, PluginOptions, RawFrame, ReplicationClient,
};
use wal2arrow_harness::{Cluster, ClusterOptions, TestDb};

/// Where the generated part of `--out`'s file ends; what follows it is kept on rewrite.
const ANALYSIS_MARKER: &str = "<!-- written by hand below: e2e keeps it when rewriting -->";

/// One contender's result on one workload.
#[derive(Clone, Debug)]
struct Measured {
    contender: Contender,
    rows: u64,
    elapsed: Duration,
    walsender_cpu: Duration,
    bytes: u64,
}

impl Measured {
    fn rows_per_sec(&self) -> f64 {
        self.rows as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Contender {
    Wal2Arrow,
    Wal2Json,
    PgOutput,
    TestDecoding,
    Floor,
}

const CONTENDERS: [Contender; 5] = [
    Contender::Wal2Arrow,
    Contender::Wal2Json,
    Contender::PgOutput,
    Contender::TestDecoding,
    Contender::Floor,
];

impl Contender {
    fn name(self) -> &'static str {
        match self {
            Contender::Wal2Arrow => "wal2arrow",
            Contender::Wal2Json => "wal2json",
            Contender::PgOutput => "pgoutput",
            Contender::TestDecoding => "test_decoding",
            Contender::Floor => "floor",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Contender::Wal2Arrow => "wal2arrow → consumer (RecordBatch)",
            Contender::Wal2Json => "wal2json v2 → fallback (RecordBatch)",
            Contender::PgOutput => "pgoutput proto 2, binary (raw)",
            Contender::TestDecoding => "test_decoding (raw)",
            Contender::Floor => "decode floor: pgoutput, empty publication",
        }
    }

    fn slot(self, workload: &str, round: usize) -> String {
        let p = match self {
            Contender::Wal2Arrow => "arrow",
            Contender::Wal2Json => "json",
            Contender::PgOutput => "pgo",
            Contender::TestDecoding => "td",
            Contender::Floor => "floor",
        };
        format!("{}_{p}_{round}", workload.to_lowercase())
    }

    fn plugin(self) -> &'static str {
        match self {
            Contender::Wal2Arrow => "wal2arrow",
            Contender::Wal2Json => "wal2json",
            Contender::PgOutput | Contender::Floor => "pgoutput",
            Contender::TestDecoding => "test_decoding",
        }
    }
}

struct Workload {
    name: &'static str,
    title: String,
    /// Creates its tables and publication, before the slots (empty when [`SCHEMA`] has them).
    setup: &'static str,
    /// The workload whose rows it changes, generated first when that one is not measured.
    needs: Option<&'static str>,
    /// Generates the changes.
    generate: String,
    rows: u64,
    /// Sent while in progress (one transaction larger than `logical_decoding_work_mem`):
    /// wal2arrow, pgoutput and the floor ask for it. wal2json cannot stream; test_decoding
    /// can (`stream-changes`) but then prints no rows, so it decodes at commit.
    streaming: bool,
}

fn workloads(scale: f64) -> Vec<Workload> {
    let n = |base: u64| ((base as f64 * scale).round() as u64).max(1000) / 1000 * 1000;
    let (w1, w2, w3, w4) = (n(1_000_000), n(300_000), n(500_000), n(100_000));
    let (w5, w6, w7) = (n(200_000), n(50_000), n(2_000_000));
    let plain = |name, title, generate, rows| Workload {
        name,
        title,
        setup: "",
        needs: None,
        generate,
        rows,
        streaming: false,
    };
    vec![
        plain(
            "W1",
            format!(
                "W1: {w1} inserts into (id int8 pk, a int4, b float8, c text, d timestamptz, e bool), 1,000-row transactions"
            ),
            gen_w1("w1", w1, 1000),
            w1,
        ),
        plain(
            "W2",
            format!(
                "W2: {w2} inserts into a 21-column mixed-type table (~10% NULLs), 1,000-row transactions"
            ),
            gen_batches(w2, 1000, W2_INSERT),
            w2,
        ),
        Workload {
            needs: Some("W1"),
            ..plain(
                "W3",
                format!("W3: {w3} updates of W1's rows, 1,000-row transactions"),
                gen_batches(
                    w3,
                    1000,
                    "UPDATE w1 SET a = a + 1, b = b * 2 WHERE id > $1 AND id <= $1 + $2",
                ),
                w3,
            )
        },
        plain("W4", format!("W4: {w4} single-row transactions"), format!("CALL gen_w4({w4})"), w4),
        Workload {
            setup: W5_SETUP,
            ..plain(
                "W5",
                format!(
                    "W5: {w5} inserts into (id int8 pk, a int4, big text) with a 20 kB `big` stored out of line (TOAST), 100-row transactions"
                ),
                gen_batches(
                    w5,
                    100,
                    "INSERT INTO w5 SELECT g, g, repeat(md5(g::text), 640) FROM generate_series($1 + 1, $1 + $2) g",
                ),
                w5,
            )
        },
        Workload {
            needs: Some("W5"),
            ..plain(
                "W5U",
                format!(
                    "W5U: {w5} updates of W5's rows that leave the TOASTed `big` unchanged, 1,000-row transactions"
                ),
                gen_batches(w5, 1000, "UPDATE w5 SET a = a + 1 WHERE id > $1 AND id <= $1 + $2"),
                w5,
            )
        },
        Workload {
            setup: W6_SETUP,
            ..plain(
                "W6",
                format!(
                    "W6: {w6} transactions each inserting a row into two tables drawn at random from 1,000"
                ),
                format!("CALL gen_w6({w6})"),
                2 * w6,
            )
        },
        Workload {
            setup: "CREATE TABLE w7 (LIKE w1 INCLUDING ALL); CREATE PUBLICATION pub_w7 FOR TABLE w7",
            streaming: true,
            ..plain(
                "W7",
                format!(
                    "W7: one transaction of {w7} inserts (W1's shape), streamed in progress by wal2arrow, pgoutput and the floor"
                ),
                gen_w1("w7", w7, w7),
                w7,
            )
        },
    ]
}

/// `n` rows of W1's shape into `table`, `per` rows a transaction.
fn gen_w1(table: &str, n: u64, per: u64) -> String {
    gen_batches(
        n,
        per,
        &format!(
            "INSERT INTO {table} SELECT g, (g % 100000)::int4, g * 0.5, substr(md5(g::text), 1, 20),
                timestamptz '2024-01-01 00:00:00+00' + g * interval '1 ms', g % 2 = 0
            FROM generate_series($1 + 1, $1 + $2) g"
        ),
    )
}

/// Runs `stmt` (`$1`: rows written so far, `$2`: `per`) and commits, until `n` rows.
fn gen_batches(n: u64, per: u64, stmt: &str) -> String {
    format!("CALL gen_batches({n}, {per}, $stmt${stmt}$stmt$)")
}

/// W2's transaction (see [`gen_batches`]): 21 columns of mixed types, ~10% NULLs.
const W2_INSERT: &str = r#"INSERT INTO w2 SELECT g,
        CASE WHEN g % 10 <> 1 THEN (g % 32000)::int2 END,
        CASE WHEN g % 10 <> 2 THEN g::int4 END,
        CASE WHEN g % 10 <> 3 THEN g::int8 * 1000003 END,
        CASE WHEN g % 10 <> 4 THEN (g * 0.25)::float4 END,
        CASE WHEN g % 10 <> 5 THEN g * 0.125 END,
        CASE WHEN g % 10 <> 6 THEN (g % 1000000) / 100.0 END,
        CASE WHEN g % 10 <> 7 THEN repeat(md5(g::text), 3) || substr(md5(g::text), 1, 4) END,
        CASE WHEN g % 10 <> 8 THEN 'varchar ' || g END,
        CASE WHEN g % 10 <> 9 THEN g % 3 = 0 END,
        CASE WHEN g % 10 <> 0 THEN date '2024-01-01' + (g % 1000) END,
        CASE WHEN g % 10 <> 1 THEN timestamp '2024-01-01' + g * interval '1 s' END,
        CASE WHEN g % 10 <> 2 THEN timestamptz '2024-01-01 00:00:00+00' + g * interval '1 ms' END,
        CASE WHEN g % 10 <> 3 THEN md5(g::text)::uuid END,
        CASE WHEN g % 10 <> 4 THEN jsonb_build_object('id', g, 'tag', 't' || (g % 7)) END,
        CASE WHEN g % 10 <> 5 THEN decode(md5(g::text) || md5((g + 1)::text), 'hex') END,
        CASE WHEN g % 10 <> 6 THEN ARRAY[g::int4, (g + 1)::int4, (g + 2)::int4] END,
        CASE WHEN g % 10 <> 7 THEN (g % 1000)::int4 END,
        CASE WHEN g % 10 <> 8 THEN 't' || g END,
        CASE WHEN g % 10 <> 9 THEN g * 1.5 END,
        CASE WHEN g % 10 <> 0 THEN g END
    FROM generate_series($1 + 1, $1 + $2) g"#;

/// W5's table: `big` is stored out of line and uncompressed (`STORAGE EXTERNAL`), so every
/// value is TOASTed and an update that leaves it alone logs it as unchanged.
const W5_SETUP: &str = r#"
CREATE TABLE w5 (id int8 PRIMARY KEY, a int4, big text);
ALTER TABLE w5 ALTER COLUMN big SET STORAGE EXTERNAL;
CREATE PUBLICATION pub_w5 FOR TABLE w5;
CREATE PUBLICATION pub_w5u FOR TABLE w5;
"#;

/// W6's 1,000 tables, their publication, and the generator: each transaction inserts one row
/// into each of two tables picked by a fixed pseudo-random sequence.
const W6_SETUP: &str = r#"
DO $$
BEGIN
    FOR t IN 0..999 LOOP
        EXECUTE format('CREATE TABLE w6_%s (id int8 PRIMARY KEY, a int4, c text)', t);
    END LOOP;
    EXECUTE 'CREATE PUBLICATION pub_w6 FOR TABLE '
        || (SELECT string_agg(format('w6_%s', t), ', ') FROM generate_series(0, 999) t);
END $$;
CREATE PROCEDURE gen_w6(n int) LANGUAGE plpgsql AS $$
BEGIN
    PERFORM setseed(0.5);
    FOR g IN 1..n LOOP
        EXECUTE format('INSERT INTO w6_%s VALUES ($1, $1, md5($1::text))', floor(random() * 1000)::int)
            USING g;
        EXECUTE format('INSERT INTO w6_%s VALUES ($1, $1, md5($1::text))', floor(random() * 1000)::int)
            USING g + n;
        COMMIT;
    END LOOP;
END $$;
"#;

const SCHEMA: &str = r#"
CREATE TABLE w1 (id int8 PRIMARY KEY, a int4, b float8, c text, d timestamptz, e bool);
CREATE TABLE w4 (id int8 PRIMARY KEY, a int4, b float8, c text, d timestamptz, e bool);
CREATE TABLE w2 (
    id int8 PRIMARY KEY, c_int2 int2, c_int4 int4, c_int8 int8, c_float4 float4, c_float8 float8,
    c_numeric numeric(12,2), c_text text, c_varchar varchar(40), c_bool bool, c_date date,
    c_ts timestamp, c_tstz timestamptz, c_uuid uuid, c_jsonb jsonb, c_bytea bytea, c_arr int4[],
    c_int4_b int4, c_text_b text, c_float8_b float8, c_int8_b int8);
CREATE PUBLICATION pub_w1 FOR TABLE w1;
CREATE PUBLICATION pub_w2 FOR TABLE w2;
CREATE PUBLICATION pub_w3 FOR TABLE w1;
CREATE PUBLICATION pub_w4 FOR TABLE w4;
CREATE PUBLICATION pub_empty;
CREATE PROCEDURE gen_batches(n int, per int, stmt text) LANGUAGE plpgsql AS $$
DECLARE i int := 0;
BEGIN
    WHILE i < n LOOP
        EXECUTE stmt USING i, per;
        COMMIT;
        i := i + per;
    END LOOP;
END $$;
CREATE PROCEDURE gen_w4(n int) LANGUAGE plpgsql AS $$
BEGIN
    FOR g IN 1..n LOOP
        INSERT INTO w4 VALUES (g, g, g * 0.5, substr(md5(g::text), 1, 20),
            timestamptz '2024-01-01 00:00:00+00' + g * interval '1 ms', g % 2 = 0);
        COMMIT;
    END LOOP;
END $$;
CREATE TABLE lat (id bigserial PRIMARY KEY, v int4);
CREATE PROCEDURE gen_rate(rate int, secs float8) LANGUAGE plpgsql AS $$
DECLARE started timestamptz := clock_timestamp(); n bigint := 0; due float8;
BEGIN
    LOOP
        INSERT INTO lat (v) VALUES (n);
        COMMIT;
        n := n + 1;
        IF n % 10 = 0 THEN
            due := extract(epoch FROM clock_timestamp() - started) * rate;
            IF n > due THEN PERFORM pg_sleep((n - due) / rate); END IF;
            EXIT WHEN clock_timestamp() - started > secs * interval '1 s';
        END IF;
    END LOOP;
END $$;
"#;

struct Args {
    scale: f64,
    only: Vec<String>,
    contenders: Vec<String>,
    latency_secs: f64,
    repeat: usize,
    out: Option<PathBuf>,
}

fn parse_args() -> Args {
    let mut args = Args {
        scale: 1.0,
        only: Vec::new(),
        contenders: Vec::new(),
        latency_secs: 10.0,
        repeat: 3,
        out: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| usage(&format!("{a} needs a value")));
        match a.as_str() {
            "--scale" => {
                args.scale = value().parse().unwrap_or_else(|_| usage("--scale: a number"))
            }
            "--workloads" => args.only = value().split(',').map(str::to_uppercase).collect(),
            "--contenders" => args.contenders = value().split(',').map(str::to_lowercase).collect(),
            "--latency-seconds" => {
                args.latency_secs = value().parse().unwrap_or_else(|_| usage("--latency-seconds"))
            }
            "--repeat" => {
                args.repeat = value()
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .unwrap_or_else(|| usage("--repeat: a count of 1 or more"))
            }
            "--out" => args.out = Some(value().into()),
            "--help" | "-h" => usage(""),
            other => usage(&format!("unknown argument {other}")),
        }
    }
    args
}

fn usage(problem: &str) -> ! {
    if !problem.is_empty() {
        eprintln!("e2e: {problem}");
    }
    eprintln!(
        "usage: e2e [--scale F] \
         [--workloads W1,W2,W3,W4,W5,W5U,W6,W7,LATENCY,SNAPSHOT,LARGE,SINKS,PYTHON] \
         [--contenders wal2arrow,wal2json,pgoutput,test_decoding,floor] [--latency-seconds S] \
         [--repeat N] [--out FILE.md]"
    );
    std::process::exit(2)
}

fn main() {
    let args = parse_args();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let report = runtime.block_on(run(&args));
    println!("{report}");
    if let Some(path) = &args.out {
        // The analysis below the marker is written by hand: keep it.
        let kept = std::fs::read_to_string(path)
            .ok()
            .and_then(|old| old.find(ANALYSIS_MARKER).map(|at| old[at..].to_owned()))
            .unwrap_or_default();
        let report = format!("{report}{kept}");
        std::fs::write(path, report).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        eprintln!("wrote {}", path.display());
    }
}

fn psql(db: &TestDb<'_>, sql: &str) -> String {
    db.cluster().psql(db.name(), sql).unwrap_or_else(|e| panic!("{e}"))
}

/// Drops a slot once its walsender has gone: it ends after the stream closes, but only once
/// it is done with the transaction it was decoding (a large one can take seconds).
async fn drop_slot(db: &TestDb<'_>, slot: &str) {
    let active = format!("SELECT active FROM pg_replication_slots WHERE slot_name = '{slot}'");
    let deadline = Instant::now() + Duration::from_secs(300);
    while psql(db, &active).trim() == "t" {
        assert!(Instant::now() < deadline, "slot {slot}: its walsender did not end in 5 minutes");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    psql(db, &format!("SELECT pg_drop_replication_slot('{slot}')"));
}

async fn run(args: &Args) -> String {
    eprintln!("building the plugin and starting a scratch PostgreSQL…");
    let options = ClusterOptions::with_plugin().expect("the plugin builds");
    let cluster = Cluster::start(&ClusterOptions {
        settings: vec![
            ("shared_buffers".into(), "'512MB'".into()),
            ("max_wal_size".into(), "'8GB'".into()),
            ("checkpoint_timeout".into(), "'1h'".into()),
            ("wal_sender_timeout".into(), "'5min'".into()),
            ("autovacuum".into(), "off".into()),
        ],
        ..options
    })
    .expect("the scratch cluster starts");
    let db = cluster.database("bench");
    psql(&db, SCHEMA);
    let config = Config::from_dsn(&db.dsn()).expect("a DSN");
    let clk_tck: f64 = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0);

    let mut report = header(&cluster, args);
    let wanted = |name: &str| args.only.is_empty() || args.only.iter().any(|w| w == name);
    let mut results: Vec<(String, Vec<Measured>)> = Vec::new();
    let mut peak_rss: Option<u64> = None;
    let mut rss_by_workload: Vec<(&str, Option<u64>)> = Vec::new();
    let mut sink_ratios: Vec<(&str, f64)> = Vec::new();
    let all = workloads(args.scale);
    for w in &all {
        if !wanted(w.name) {
            // W3 updates W1's rows, W5U W5's: they must exist.
            if all.iter().any(|d| d.needs == Some(w.name) && wanted(d.name)) {
                if !w.setup.is_empty() {
                    psql(&db, w.setup);
                }
                psql(&db, &w.generate);
            }
            continue;
        }
        if !w.setup.is_empty() {
            psql(&db, w.setup);
        }
        let chosen = |c: &Contender| {
            args.contenders.is_empty() || args.contenders.iter().any(|n| n == c.name())
        };
        eprintln!("{}: creating the slots…", w.name);
        for round in 0..args.repeat {
            for c in CONTENDERS.iter().filter(|c| chosen(c)) {
                psql(
                    &db,
                    &format!(
                        "SELECT pg_create_logical_replication_slot('{}', '{}')",
                        c.slot(w.name, round),
                        c.plugin()
                    ),
                );
            }
        }
        eprintln!("{}: generating the workload…", w.name);
        let started = Instant::now();
        psql(&db, &w.generate);
        let target: Lsn = psql(&db, "SELECT pg_current_wal_lsn()").trim().parse().unwrap();
        eprintln!("{}: generated in {:.1} s", w.name, started.elapsed().as_secs_f64());
        // Rounds interleave the contenders, so a slow spell of the machine touches all of
        // them alike; each contender's median round is reported.
        let mut rounds: Vec<Vec<Measured>> = vec![Vec::new(); CONTENDERS.len()];
        let mut rss = None;
        for round in 0..args.repeat {
            for (i, &c) in CONTENDERS.iter().enumerate().filter(|(_, c)| chosen(c)) {
                if c == Contender::Wal2Arrow && round == 0 {
                    reset_peak_rss();
                }
                let slot = c.slot(w.name, round);
                let m = measure(c, w, &slot, &config, target, clk_tck).await;
                if c == Contender::Wal2Arrow && round == 0 {
                    rss = peak_rss_bytes();
                    if w.name == "W1" {
                        peak_rss = rss;
                    }
                }
                eprintln!(
                    "  {:<45} {:>12.0} rows/s  walsender {:>6.2} s  {:>6.1} B/row",
                    c.label(),
                    m.rows_per_sec(),
                    m.walsender_cpu.as_secs_f64(),
                    m.bytes as f64 / m.rows.max(1) as f64
                );
                drop_slot(&db, &slot).await;
                rounds[i].push(m);
            }
        }
        let measured: Vec<Measured> = rounds.into_iter().filter_map(median).collect();
        report.push_str(&table(w, &measured, rss));
        results.push((w.name.to_owned(), measured));
        rss_by_workload.push((w.name, rss));
    }
    let mut latencies = Vec::new();
    if wanted("LATENCY") {
        for rate in [1_000u32, 10_000] {
            eprintln!("latency at {rate} tx/s…");
            latencies.push(latency(&db, &config, rate, args.latency_secs).await);
        }
        report.push_str(&latency_table(&latencies));
    }
    if wanted("SNAPSHOT") {
        // The tables W1 and W2 leave behind (generated here when those did not run).
        for w in workloads(args.scale).iter().filter(|w| w.name == "W1" || w.name == "W2") {
            let left_behind = wanted(w.name) || (w.name == "W1" && wanted("W3"));
            if !left_behind {
                psql(&db, &w.generate);
            }
        }
        psql(&db, "VACUUM ANALYZE w1; VACUUM ANALYZE w2");
        report.push_str(&snapshot_bench(&db, &config, args.repeat).await);
    }
    if wanted("SINKS") || wanted("KAFKA") {
        let rows = ((1_000_000.0 * args.scale).round() as u64).max(1000) / 1000 * 1000;
        let (section, ratios) = sinks_bench(&db, &config, rows, args.repeat).await;
        report.push_str(&section);
        sink_ratios = ratios;
    }
    if wanted("PYTHON") {
        let rows = ((1_000_000.0 * args.scale).round() as u64).max(1000) / 1000 * 1000;
        report.push_str(&python_bench(&db, &config, rows, args.repeat).await);
    }
    if wanted("LARGE") {
        let rows = ((1_000_000.0 * args.scale).round() as u64).max(1000);
        report.push_str(&large_bench(&db, &config, rows, args.repeat).await);
    }
    report.push_str(&targets(&results, &latencies, peak_rss, &rss_by_workload, &sink_ratios));
    report
}

/// W1's shape through every sink: `wal2arrow_sinks::run` with the Parquet, Arrow IPC, JSON
/// lines and Kafka sinks (Debezium JSON, one message per row; Arrow IPC, one per batch; into a
/// tansu broker on loopback, memory storage), each slot read to the end of the same WAL,
/// beside the library's own rate (the same `CdcStream`, rows counted and acknowledged). Times
/// run from starting the stream to the last transaction acknowledged: for the file sinks,
/// written and flushed (fsync) at the end; for Kafka, every message acknowledged by the broker.
async fn sinks_bench(
    db: &TestDb<'_>,
    config: &Config,
    rows: u64,
    repeat: usize,
) -> (String, Vec<(&'static str, f64)>) {
    use wal2arrow_consumer::{Consumer, SnapshotMode};
    use wal2arrow_sinks::Sink;
    use wal2arrow_sinks::kafka::{KafkaFormat, KafkaOptions, KafkaSink};
    let broker = wal2arrow_harness::KafkaBroker::start().expect("a Kafka broker (tansu)");
    let dir = std::env::temp_dir().join(format!("wal2arrow-e2e-sinks-{}", std::process::id()));
    psql(db, "CREATE TABLE kw1 (LIKE w1 INCLUDING ALL)");
    let names = [
        "library (CdcStream, rows counted)",
        "Parquet sink",
        "Arrow IPC sink",
        "JSON lines sink",
        "Kafka sink, debezium",
        "Kafka sink, arrow",
    ];
    for round in 0..repeat {
        for k in 0..names.len() {
            psql(
                db,
                &format!(
                    "SELECT pg_create_logical_replication_slot('sinks_{k}_{round}', 'wal2arrow')"
                ),
            );
        }
    }
    // 1,000-row transactions, as W1.
    psql(db, &gen_w1("kw1", rows, 1000));
    let target: Lsn = psql(db, "SELECT pg_current_wal_lsn()").trim().parse().unwrap();
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    for round in 0..repeat {
        for j in 0..names.len() {
            let k = (j + round) % names.len();
            let slot = format!("sinks_{k}_{round}");
            let out = dir.join(&slot);
            std::fs::create_dir_all(&out).expect("a scratch directory");
            let consumer = Consumer::builder()
                .config(config.clone())
                .slot(&slot)
                .tables(["public.kw1"])
                .snapshot(SnapshotMode::Never)
                .preflight(false)
                .heartbeat_interval(None)
                .build()
                .expect("a consumer");
            let started = Instant::now();
            let mut stream = consumer.start().await.expect("a stream");
            let run_options = wal2arrow_sinks::RunOptions {
                until_lsn: Some(target),
                ..wal2arrow_sinks::RunOptions::default()
            };
            let kafka = |format| {
                let mut options = KafkaOptions::new(broker.address());
                options.topic_prefix = format!("bench{k}{round}");
                options.format = format;
                Box::new(KafkaSink::new(options).expect("a producer")) as Box<dyn Sink>
            };
            let sink: Option<Box<dyn Sink>> = match k {
                0 => None,
                1 => Some(Box::new(
                    wal2arrow_sinks::parquet::ParquetSink::open(&out, &slot, Default::default())
                        .expect("a Parquet sink"),
                )),
                2 => Some(Box::new(
                    wal2arrow_sinks::ipc::IpcSink::open(&out.join("changes.arrows"))
                        .expect("an IPC sink"),
                )),
                3 => Some(Box::new(
                    wal2arrow_sinks::jsonl::JsonLinesSink::open(&out.join("changes.jsonl"))
                        .expect("a JSON lines sink"),
                )),
                4 => Some(kafka(KafkaFormat::Debezium)),
                _ => Some(kafka(KafkaFormat::Arrow)),
            };
            let mut got = 0u64;
            if let Some(sink) = sink {
                let report = wal2arrow_sinks::run(
                    &mut stream,
                    sink,
                    &run_options,
                    std::future::pending(),
                    &mut |_| {},
                )
                .await
                .expect("the run");
                got = report.progress.total_rows();
            } else {
                while let Some(e) = stream.next().await {
                    match e.expect("an event") {
                        Event::Change(c) => got += c.num_rows() as u64,
                        Event::Commit(c) => {
                            stream.ack(c.end_lsn);
                            if c.end_lsn >= target || got >= rows {
                                break;
                            }
                        }
                        _ => {}
                    }
                }
            }
            let secs = started.elapsed().as_secs_f64();
            stream.close().await;
            drop_slot(db, &slot).await;
            let _ = std::fs::remove_dir_all(&out);
            assert!(got >= rows, "{}: {got} of {rows} rows", names[k]);
            eprintln!("  SINKS {:<40} {:>10.0} rows/s", names[k], rows as f64 / secs);
            times[k].push(secs);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    let median = |t: &mut Vec<f64>| {
        t.sort_by(f64::total_cmp);
        t[t.len().saturating_sub(1) / 2]
    };
    let rates: Vec<f64> = times.iter_mut().map(|t| rows as f64 / median(t)).collect();
    let mut out = format!(
        "\n## SINKS: W1 through each sink ({} rows, 1,000-row transactions)\n\n\
         `wal2arrow_sinks::run` with each sink, beside the library's own rate on the same WAL: \
         files in the temporary directory (written, flushed and synced by the end), Kafka into \
         a tansu broker on loopback (memory storage, idempotent producer, `acks=all`, every \
         message acknowledged by the broker by the end). Median of the rounds (each starts \
         with another contender).\n\n\
         | how | rows/s | × the library |\n|---|---:|---:|\n",
        thousands(rows as f64)
    );
    for (name, rate) in names.iter().zip(&rates) {
        let _ = writeln!(out, "| {name} | {} | {:.2}× |", thousands(*rate), rate / rates[0]);
    }
    let ratios = names.iter().zip(&rates).skip(1).map(|(n, r)| (*n, r / rates[0])).collect();
    (out, ratios)
}

/// The Python loop of the PYTHON benchmark: streams a slot with the `wal2arrow` package,
/// counts rows and acknowledges each commit, up to `rows` rows; prints the rows and the
/// seconds from opening the stream to the last commit acknowledged.
const PYTHON_COUNT: &str = r#"
import sys, time
import wal2arrow

dsn, slot, rows = sys.argv[1], sys.argv[2], int(sys.argv[3])
started = time.perf_counter()
got = 0
with wal2arrow.stream(dsn, slot=slot, create_slot=False, tables=["public.pw1"], snapshot="never",
                      preflight=False, heartbeat_interval=None) as stream:
    for event in stream:
        if type(event) is wal2arrow.ChangeBatch:
            got += event.num_rows
        elif type(event) is wal2arrow.Commit:
            stream.ack(event.end_lsn)
            if got >= rows:
                break
    secs = time.perf_counter() - started
print(got, secs)
"#;

/// W1's shape into a Python loop that only counts rows (the `wal2arrow` package, built and
/// installed by scripts/python.sh into `target/python-venv`, or the interpreter
/// `WAL2ARROW_PYTHON` names), beside the Rust consumer doing the same on the same WAL.
async fn python_bench(db: &TestDb<'_>, config: &Config, rows: u64, repeat: usize) -> String {
    use wal2arrow_consumer::{Consumer, SnapshotMode};
    let python = std::env::var("WAL2ARROW_PYTHON").unwrap_or_else(|_| {
        let target = std::env::var("CARGO_TARGET_DIR")
            .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../target").into());
        format!("{target}/python-venv/bin/python")
    });
    let probe = std::process::Command::new(&python).args(["-c", "import wal2arrow"]).output();
    if !probe.is_ok_and(|o| o.status.success()) {
        panic!(
            "PYTHON needs the wal2arrow package: run scripts/python.sh (it installs it into \
             target/python-venv), or set WAL2ARROW_PYTHON to an interpreter that has it ({python})"
        );
    }
    psql(db, "CREATE TABLE pw1 (LIKE w1 INCLUDING ALL)");
    let names = ["Rust (CdcStream, rows counted)", "Python (wal2arrow.stream, rows counted)"];
    for round in 0..repeat {
        for k in 0..names.len() {
            psql(
                db,
                &format!(
                    "SELECT pg_create_logical_replication_slot('py_{k}_{round}', 'wal2arrow')"
                ),
            );
        }
    }
    psql(db, &gen_w1("pw1", rows, 1000));
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    for round in 0..repeat {
        for j in 0..names.len() {
            let k = (j + round) % names.len();
            let slot = format!("py_{k}_{round}");
            let (got, secs) = if k == 0 {
                let consumer = Consumer::builder()
                    .config(config.clone())
                    .slot(&slot)
                    .tables(["public.pw1"])
                    .snapshot(SnapshotMode::Never)
                    .preflight(false)
                    .heartbeat_interval(None)
                    .build()
                    .expect("a consumer");
                let started = Instant::now();
                let mut stream = consumer.start().await.expect("a stream");
                let mut got = 0u64;
                while let Some(e) = stream.next().await {
                    match e.expect("an event") {
                        Event::Change(c) => got += c.num_rows() as u64,
                        Event::Commit(c) => {
                            stream.ack(c.end_lsn);
                            if got >= rows {
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                let secs = started.elapsed().as_secs_f64();
                stream.close().await;
                (got, secs)
            } else {
                let out = tokio::process::Command::new(&python)
                    .args(["-c", PYTHON_COUNT, &db.dsn(), &slot, &rows.to_string()])
                    .current_dir(std::env::temp_dir())
                    .output()
                    .await
                    .expect("python runs");
                let text = String::from_utf8_lossy(&out.stdout);
                assert!(out.status.success(), "python: {}", String::from_utf8_lossy(&out.stderr));
                let mut it = text.split_whitespace();
                let got: u64 = it.next().and_then(|v| v.parse().ok()).expect("rows printed");
                let secs: f64 = it.next().and_then(|v| v.parse().ok()).expect("seconds printed");
                (got, secs)
            };
            drop_slot(db, &slot).await;
            assert!(got >= rows, "{}: {got} of {rows} rows", names[k]);
            eprintln!("  PYTHON {:<45} {:>10.0} rows/s", names[k], rows as f64 / secs);
            times[k].push(secs);
        }
    }
    let median = |t: &mut Vec<f64>| {
        t.sort_by(f64::total_cmp);
        t[t.len().saturating_sub(1) / 2]
    };
    let rates: Vec<f64> = times.iter_mut().map(|t| rows as f64 / median(t)).collect();
    let mut out = format!(
        "\n## PYTHON: W1 into a Python loop ({} rows, 1,000-row transactions)\n\n\
         The `wal2arrow` package's `stream()` iterated by a Python loop that adds up \
         `num_rows` and acknowledges each commit, beside the Rust consumer doing the same; from \
         opening the stream to the last commit acknowledged, on the same WAL. Median of the \
         rounds.\n\n| how | rows/s | × Rust |\n|---|---:|---:|\n",
        thousands(rows as f64)
    );
    for (name, rate) in names.iter().zip(&rates) {
        let _ = writeln!(out, "| {name} | {} | {:.2}× |", thousands(*rate), rate / rates[0]);
    }
    out
}

/// How the LARGE benchmark has its transaction decoded and handed on.
const LARGE_MODES: [(&str, bool, bool); 3] = [
    ("decoded at commit (`streaming` off: the server spills it until then)", false, false),
    ("streamed in progress, kept by the consumer until commit (the default)", true, false),
    ("streamed in progress, delivered in progress (`InProgress::Deliver`)", true, true),
];

/// One large transaction (W1's shape), written while the consumer is connected: the time from
/// `COMMIT` to its last row in the consumer's hands, for each of [`LARGE_MODES`], with the
/// slot's spill and stream bytes (`pg_stat_replication_slots`) and the consumer's own spill.
/// The server's `logical_decoding_work_mem` is its default, 64 MB. Median of `repeat` rounds,
/// interleaved.
async fn large_bench(db: &TestDb<'_>, config: &Config, rows: u64, repeat: usize) -> String {
    psql(db, "CREATE TABLE large (LIKE w1 INCLUDING ALL)");
    let sql = wal2arrow_client::sql_client(config).await.expect("SQL");
    let insert = format!(
        "BEGIN; INSERT INTO large SELECT g, (g % 100000)::int4, g * 0.5, \
         substr(md5(g::text), 1, 20), timestamptz '2024-01-01 00:00:00+00' + g * interval '1 ms', \
         g % 2 = 0 FROM generate_series(1, {rows}) g"
    );
    // Per mode: (latency s, server spill bytes, server stream bytes, consumer spill bytes).
    let mut results: Vec<Vec<(f64, i64, i64, u64)>> = vec![Vec::new(); LARGE_MODES.len()];
    for round in 0..repeat {
        for k in 0..LARGE_MODES.len() {
            let mode = (k + round) % LARGE_MODES.len();
            let (_, streaming, deliver) = LARGE_MODES[mode];
            let slot = format!("large_{mode}_{round}");
            psql(db, &format!("SELECT pg_create_logical_replication_slot('{slot}', 'wal2arrow')"));
            let options = PluginOptions {
                tables: wal2arrow_schema_filter("large"),
                streaming,
                ..PluginOptions::default()
            };
            let client = ReplicationClient::connect(config).await.expect("replication");
            let mut stream = client.start(&slot, Lsn::INVALID, &options).await.expect("start");
            if deliver {
                stream.set_in_progress(InProgress::Deliver);
            }
            let reader = tokio::spawn(async move {
                let mut got = 0u64;
                loop {
                    match stream.next_event().await.expect("event").expect("open") {
                        Event::Change(c) => got += c.num_rows() as u64,
                        Event::Commit(c) | Event::StreamCommit(c) if got >= rows => {
                            stream.ack(c.end_lsn);
                            let last = Instant::now();
                            let spilled = stream.streamed_stats().spilled_bytes;
                            let _ = stream.close().await;
                            return (last, spilled);
                        }
                        _ => {}
                    }
                }
            });
            sql.batch_execute(&insert).await.expect("the transaction");
            let committed = Instant::now();
            sql.batch_execute("COMMIT").await.expect("COMMIT");
            let (last, consumer_spill) = reader.await.expect("the reader");
            let latency = last.saturating_duration_since(committed).as_secs_f64();
            let stats = psql(
                db,
                &format!(
                    "SELECT spill_bytes, stream_bytes FROM pg_stat_replication_slots \
                     WHERE slot_name = '{slot}'"
                ),
            );
            let mut it = stats.trim().split('|').map(|v| v.trim().parse::<i64>().unwrap_or(0));
            let (spill, streamed) = (it.next().unwrap_or(0), it.next().unwrap_or(0));
            eprintln!(
                "  LARGE {:<72} {latency:>7.3} s  server spill {:>6} MB  streamed {:>6} MB",
                LARGE_MODES[mode].0,
                spill >> 20,
                streamed >> 20
            );
            drop_slot(db, &slot).await;
            psql(db, "TRUNCATE large");
            results[mode].push((latency, spill, streamed, consumer_spill));
        }
    }
    let mut out = format!(
        "\n## LARGE: one {}-row transaction, `COMMIT` → last row\n\n\
         The consumer is connected while the transaction is written (W1's shape, one \
         `INSERT … SELECT`); the time runs from sending `COMMIT` to the consumer holding the \
         transaction's last row. `logical_decoding_work_mem` is the server's default (64 MB). \
         Median of the rounds; the ratio is against decoding at commit.\n\n\
         | how | COMMIT → last row | vs decoded at commit | server spill | server streamed | consumer spill |\n\
         |---|---:|---:|---:|---:|---:|\n",
        thousands(rows as f64)
    );
    let medians: Vec<(f64, i64, i64, u64)> = results
        .into_iter()
        .map(|mut r| {
            r.sort_by(|a, b| a.0.total_cmp(&b.0));
            r[r.len().saturating_sub(1) / 2]
        })
        .collect();
    let base = medians[0].0;
    for ((name, _, _), (latency, spill, streamed, consumer)) in LARGE_MODES.iter().zip(&medians) {
        let _ = writeln!(
            out,
            "| {name} | {:.0} ms | {:.2}× | {} MB | {} MB | {} MB |",
            latency * 1e3,
            latency / base.max(1e-9),
            spill >> 20,
            streamed >> 20,
            consumer >> 20
        );
    }
    out
}

/// Snapshot throughput: each of W1's and W2's tables read whole, side by side in one run —
/// `COPY … TO STDOUT (FORMAT binary)` into nothing (the physical limit of copying), the
/// wal2arrow snapshot (exported snapshot, ctid ranges, binary `COPY` decoded into Arrow) with 1
/// and 2 workers, and Apache Arrow's ADBC PostgreSQL driver (binary `COPY` into Arrow, through
/// `benches/adbc_copy.py`). Median of `repeat` rounds, interleaved.
async fn snapshot_bench(db: &TestDb<'_>, config: &Config, repeat: usize) -> String {
    let mut out = String::from(
        "\n## Snapshot: reading a table whole\n\n\
         Rows per second, median of the rounds; ratios against binary `COPY` into nothing. \
         Every contender's time runs from connecting to the last row in hand.\n\n\
         | table | binary COPY, discarded | wal2arrow snapshot, 1 worker | wal2arrow snapshot, 2 workers | ADBC PostgreSQL → Arrow |\n\
         |---|---:|---:|---:|---:|\n",
    );
    let adbc = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("adbc_copy.py");
    for table in ["w1", "w2"] {
        let rows: u64 = psql(db, &format!("SELECT count(*) FROM {table}")).trim().parse().unwrap();
        let mut times: [Vec<f64>; 4] = Default::default();
        for round in 0..repeat {
            // Each round starts with a different contender, so that no one always follows
            // the same other (a cache the previous one warmed, a CPU it left hot).
            for k in 0..4 {
                let contender = (k + round) % 4;
                match contender {
                    0 => {
                        let started = Instant::now();
                        let sql = format!("COPY {table} TO STDOUT (FORMAT binary)");
                        let bytes = wal2arrow_client::snapshot::copy_to_nothing(config, &sql)
                            .await
                            .expect("COPY");
                        times[0].push(started.elapsed().as_secs_f64());
                        std::hint::black_box(bytes);
                    }
                    1 | 2 => {
                        let (i, workers) = (contender, contender);
                        let mut repl =
                            ReplicationClient::connect(config).await.expect("replication");
                        let slot = format!("snap_bench_{round}_{workers}");
                        let created = repl
                            .create_slot_exporting(&slot, "wal2arrow", true)
                            .await
                            .expect("a slot");
                        let options = PluginOptions {
                            tables: wal2arrow_schema_filter(table),
                            ..PluginOptions::default()
                        };
                        let snapshot = wal2arrow_client::Snapshot::new(
                            config,
                            created.snapshot.as_deref().expect("exported"),
                            created.consistent_point,
                            &options,
                        )
                        .workers(workers);
                        let started = Instant::now();
                        let mut got = 0u64;
                        snapshot
                            .run(async |e: Event| {
                                if let Event::Change(c) = e {
                                    got += c.num_rows() as u64;
                                }
                                true
                            })
                            .await
                            .expect("the snapshot");
                        times[i].push(started.elapsed().as_secs_f64());
                        assert_eq!(got, rows, "{table}: rows copied");
                        drop(repl);
                    }
                    _ => {
                        match std::process::Command::new("python3")
                            .arg(&adbc)
                            .arg(db.dsn())
                            .arg(table)
                            .output()
                        {
                            Ok(o) if o.status.success() => {
                                let text = String::from_utf8_lossy(&o.stdout);
                                let mut it = text.split_whitespace();
                                let n: u64 = it.next().and_then(|v| v.parse().ok()).unwrap_or(0);
                                let secs: f64 =
                                    it.next().and_then(|v| v.parse().ok()).unwrap_or(f64::NAN);
                                assert_eq!(n, rows, "{table}: rows ADBC read");
                                times[3].push(secs);
                            }
                            Ok(o) => eprintln!(
                                "ADBC not measured (pip install adbc-driver-postgresql pyarrow): {}",
                                String::from_utf8_lossy(&o.stderr).lines().last().unwrap_or("")
                            ),
                            Err(e) => eprintln!("ADBC not measured: {e}"),
                        }
                    }
                }
            }
        }
        let rate = |t: &mut Vec<f64>| {
            t.sort_by(f64::total_cmp);
            t.get(t.len() / 2).map(|s| rows as f64 / s)
        };
        let rates: Vec<Option<f64>> = times.iter_mut().map(rate).collect();
        let base = rates[0];
        let cell = |r: Option<f64>| match (r, base) {
            (Some(r), Some(b)) => format!("{} ({:.2}×)", thousands(r), r / b),
            (Some(r), None) => thousands(r),
            _ => "n/a".to_owned(),
        };
        eprintln!("snapshot {table}: seconds per round {times:?}");
        let _ = writeln!(
            out,
            "| {table} ({} rows) | {} | {} | {} | {} |",
            thousands(rows as f64),
            cell(rates[0]),
            cell(rates[1]),
            cell(rates[2]),
            cell(rates[3])
        );
    }
    out
}

/// A table filter of exactly `public.<table>`.
fn wal2arrow_schema_filter(table: &str) -> wal2arrow_schema::TableFilter {
    wal2arrow_schema::TableFilter::parse_list(&format!("public.{table}")).expect("a table name")
}

fn header(cluster: &Cluster, args: &Args) -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let mem_gb = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|k| k.parse::<f64>().ok()))
        })
        .map_or(0.0, |kb| kb / 1024.0 / 1024.0);
    let version = cluster.psql("postgres", "SHOW server_version").unwrap_or_default();
    let mut s = String::from("# Benchmarks\n\n");
    let _ = writeln!(
        s,
        "Produced by `cargo run --release -p wal2arrow-benches --bin e2e --{}{}{}{}` — the end-to-end \
         benchmark program in [`benches/e2e.rs`](benches/e2e.rs): one scratch PostgreSQL, one slot per \
         contender and round created before each workload so all decode the same WAL, contenders \
         streamed one after another in {} interleaved rounds; each figure is the contender's median \
         round. Ratios are within this one run; absolute numbers vary between machines and runs.\n",
        if args.scale == 1.0 { String::new() } else { format!(" --scale {}", args.scale) },
        if args.only.is_empty() {
            String::new()
        } else {
            format!(" --workloads {}", args.only.join(","))
        },
        if args.repeat == 3 { String::new() } else { format!(" --repeat {}", args.repeat) },
        args.out.as_ref().map_or(String::new(), |p| format!(" --out {}", p.display())),
        args.repeat
    );
    let _ = writeln!(
        s,
        "Machine: {cpu}, {cores} cores, {mem_gb:.0} GiB; PostgreSQL {} (fsync off, scratch cluster); \
         wal2json 2.5. Run {}.\n",
        version.trim(),
        chrono_like_now()
    );
    s.push_str(
        "**events/s**: rows from `START_REPLICATION` until the consumer holds them (as Arrow \
         RecordBatches for wal2arrow and wal2json, as raw bytes for pgoutput and test_decoding); \
         **× wal2arrow**: how many times faster wal2arrow is; **walsender CPU**: the server process's \
         CPU time; **bytes/row**: what the server sent, per row.\n\n",
    );
    s
}

/// The current UTC date and time, without a date crate.
fn chrono_like_now() -> String {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let days = secs / 86_400;
    let (h, m) = ((secs % 86_400) / 3600, (secs % 3600) / 60);
    let (year, month, d) = wal2arrow_schema::types::civil_from_days(days as i64);
    format!("{year:04}-{month:02}-{d:02} {h:02}:{m:02} UTC")
}

fn table(w: &Workload, measured: &[Measured], rss: Option<u64>) -> String {
    let arrow =
        measured.iter().find(|m| m.contender == Contender::Wal2Arrow).map(Measured::rows_per_sec);
    let mut s = format!("## {}\n\n", w.title);
    s.push_str(
        "| contender | events/s | × wal2arrow | walsender CPU (s) | CPU µs/row | bytes/row |\n",
    );
    s.push_str("|---|---:|---:|---:|---:|---:|\n");
    for m in measured {
        let ratio = arrow.map_or("-".into(), |a| format!("{:.2}", a / m.rows_per_sec().max(1e-9)));
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.2} | {:.2} | {:.1} |",
            m.contender.label(),
            thousands(m.rows_per_sec()),
            ratio,
            m.walsender_cpu.as_secs_f64(),
            m.walsender_cpu.as_secs_f64() * 1e6 / m.rows.max(1) as f64,
            m.bytes as f64 / m.rows.max(1) as f64
        );
    }
    if let Some(rss) = rss {
        let _ = writeln!(
            s,
            "\nThe wal2arrow consumer's peak resident memory (the benchmark process's, first round): \
             {:.1} MB.",
            rss as f64 / 1e6
        );
    }
    s.push('\n');
    s
}

fn thousands(v: f64) -> String {
    let n = v.round() as u64;
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The walsender of `slot`'s CPU time so far.
async fn walsender(config: &Config, slot: &str) -> Option<u32> {
    let client = wal2arrow_consumer::sql_client(config).await.ok()?;
    for _ in 0..100 {
        let row = client
            .query_opt("SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1", &[&slot])
            .await
            .ok()?;
        if let Some(pid) = row.and_then(|r| r.get::<_, Option<i32>>(0)) {
            return u32::try_from(pid).ok();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

fn cpu_time(pid: u32, clk_tck: f64) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at ") ".
    let fields: Vec<&str> =
        stat.rsplit_once(") ").map_or(vec![], |(_, rest)| rest.split(' ').collect());
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    Duration::from_secs_f64((ticks(11) + ticks(12)) / clk_tck)
}

/// The round with the median events/s (the lower middle one of an even count).
fn median(mut rounds: Vec<Measured>) -> Option<Measured> {
    rounds.sort_by(|a, b| a.rows_per_sec().total_cmp(&b.rows_per_sec()));
    let middle = rounds.len().checked_sub(1)? / 2;
    Some(rounds.swap_remove(middle))
}

async fn measure(
    c: Contender,
    w: &Workload,
    slot: &str,
    config: &Config,
    target: Lsn,
    clk_tck: f64,
) -> Measured {
    let started = Instant::now();
    let client = ReplicationClient::connect(config).await.expect("a replication connection");
    let options = PluginOptions { streaming: w.streaming, ..PluginOptions::default() };
    let mut stream = match c {
        Contender::Wal2Arrow => client.start(slot, Lsn::INVALID, &options).await,
        Contender::Wal2Json => client.start_wal2json(slot, Lsn::INVALID, &options, false).await,
        Contender::PgOutput => {
            let publication = format!("pub_{}", w.name.to_lowercase());
            let streaming = if w.streaming { "on" } else { "off" };
            client
                .start_with_pairs(
                    slot,
                    Lsn::INVALID,
                    &[
                        ("proto_version", Some("2")),
                        ("publication_names", Some(&publication)),
                        ("binary", Some("true")),
                        ("streaming", Some(streaming)),
                    ],
                )
                .await
        }
        Contender::TestDecoding => {
            client.start_with_pairs(slot, Lsn::INVALID, &[("skip-empty-xacts", Some("1"))]).await
        }
        Contender::Floor if w.streaming => {
            // A floor that streams, as wal2arrow and pgoutput do on this workload (without,
            // the server would spill the transaction to disk and read it back).
            client
                .start_with_pairs(
                    slot,
                    Lsn::INVALID,
                    &[
                        ("proto_version", Some("2")),
                        ("publication_names", Some("pub_empty")),
                        ("streaming", Some("on")),
                    ],
                )
                .await
        }
        Contender::Floor => {
            client
                .start_with_pairs(
                    slot,
                    Lsn::INVALID,
                    &[("proto_version", Some("1")), ("publication_names", Some("pub_empty"))],
                )
                .await
        }
    }
    .unwrap_or_else(|e| panic!("{}: {e}", c.label()));
    let pid = walsender(config, slot).await;
    let rows = match c {
        Contender::Wal2Arrow | Contender::Wal2Json => arrow_rows(&mut stream, w.rows).await,
        Contender::PgOutput => {
            raw_rows(&mut stream, w.rows, |p| matches!(p.first(), Some(b'I' | b'U' | b'D'))).await
        }
        Contender::TestDecoding => {
            raw_rows(&mut stream, w.rows, |p| p.starts_with(b"table ")).await
        }
        Contender::Floor => {
            until_caught_up(&mut stream, target).await;
            w.rows
        }
    };
    let elapsed = started.elapsed();
    let walsender_cpu = pid.map_or(Duration::ZERO, |p| cpu_time(p, clk_tck));
    let bytes = stream.received_bytes();
    let _ = stream.close().await;
    Measured { contender: c, rows, elapsed, walsender_cpu, bytes }
}

/// Reads Arrow batches until `expected` rows arrived and their transaction committed; each
/// batch is dropped once counted.
async fn arrow_rows(stream: &mut ChangeStream, expected: u64) -> u64 {
    let mut rows = 0u64;
    loop {
        match stream.next_event().await.expect("stream event").expect("stream open") {
            Event::Change(c) => rows += c.num_rows() as u64,
            Event::Commit(c) | Event::StreamCommit(c) => {
                stream.ack(c.end_lsn);
                if rows >= expected {
                    return rows;
                }
            }
            _ => {}
        }
    }
}

/// Reads raw frames until `expected` row messages arrived.
async fn raw_rows(stream: &mut ChangeStream, expected: u64, is_row: impl Fn(&[u8]) -> bool) -> u64 {
    let mut rows = 0u64;
    while rows < expected {
        if let RawFrame::Data { payload, .. } =
            stream.next_raw().await.expect("stream frame").expect("stream open")
        {
            rows += u64::from(is_row(payload.as_slice()));
        }
    }
    rows
}

/// Reads until the server reports having processed the WAL up to `target`.
async fn until_caught_up(stream: &mut ChangeStream, target: Lsn) {
    loop {
        match stream.next_raw().await.expect("stream frame").expect("stream open") {
            RawFrame::Keepalive { wal_end } | RawFrame::Data { wal_end, .. }
                if wal_end >= target =>
            {
                return;
            }
            _ => {}
        }
    }
}

fn reset_peak_rss() {
    // "5" resets the peak resident set size (Linux 4.0+).
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

struct Latency {
    rate: u32,
    achieved: f64,
    p50: Duration,
    p99: Duration,
    max: Duration,
    samples: usize,
}

/// Commit-to-batch latency: a steady load of single-row transactions at `rate` per second for
/// `secs` seconds; each batch's arrival time minus its transaction's commit time (both on this
/// machine's clock), the first second left out as warm-up.
async fn latency(db: &TestDb<'_>, config: &Config, rate: u32, secs: f64) -> Latency {
    let slot = format!("lat_{rate}");
    psql(db, &format!("SELECT pg_create_logical_replication_slot('{slot}', 'wal2arrow')"));
    let mut stream = ReplicationClient::connect(config)
        .await
        .unwrap()
        .start(&slot, Lsn::INVALID, &PluginOptions::default())
        .await
        .unwrap();
    let dsn = db.dsn();
    let generate = format!("CALL gen_rate({rate}, {secs})");
    let started_us = now_us();
    let (tx, mut rx) = tokio::sync::oneshot::channel();
    // The load runs in a thread (psql blocks); its end is signalled through `tx`.
    let psql_bin = wal2arrow_harness::pg_bin_dir().expect("PostgreSQL binaries").join("psql");
    let sql_thread = std::thread::spawn(move || {
        let out = std::process::Command::new(psql_bin)
            .args([dsn.as_str(), "-q", "-c", &generate])
            .output();
        let _ = tx.send(());
        out
    });
    let mut samples: Vec<i64> = Vec::new();
    let mut txns = 0u64;
    let warmup_until = started_us + 1_000_000;
    let mut done = false;
    loop {
        let next = tokio::select! {
            e = stream.next_event() => e,
            _ = &mut rx, if !done => { done = true; continue; }
            () = tokio::time::sleep(Duration::from_millis(500)), if done => break,
        };
        match next.expect("stream event").expect("stream open") {
            Event::Change(c) => {
                let now = now_us();
                if c.commit_time_us >= warmup_until {
                    samples.push(now - c.commit_time_us);
                }
            }
            Event::Commit(c) => {
                txns += 1;
                stream.ack(c.end_lsn);
            }
            _ => {}
        }
    }
    let out = sql_thread.join().expect("the load thread").expect("psql runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let _ = stream.close().await;
    drop_slot(db, &slot).await;
    samples.sort_unstable();
    let pct = |p: f64| {
        let i = ((samples.len() as f64 * p).ceil() as usize).clamp(1, samples.len().max(1)) - 1;
        Duration::from_micros(samples.get(i).copied().unwrap_or(0).max(0) as u64)
    };
    Latency {
        rate,
        achieved: txns as f64 / secs,
        p50: pct(0.50),
        p99: pct(0.99),
        max: pct(1.0),
        samples: samples.len(),
    }
}

fn now_us() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0)
}

fn latency_table(l: &[Latency]) -> String {
    let mut s = String::from(
        "## Commit-to-batch latency (wal2arrow)\n\nFrom the commit on the server to the RecordBatch in \
         the consumer's hands, single-row transactions at a steady rate.\n\n\
         | target rate (tx/s) | achieved (tx/s) | samples | p50 | p99 | max |\n|---:|---:|---:|---:|---:|---:|\n",
    );
    for x in l {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.2} ms | {:.2} ms | {:.2} ms |",
            thousands(f64::from(x.rate)),
            thousands(x.achieved),
            x.samples,
            x.p50.as_secs_f64() * 1e3,
            x.p99.as_secs_f64() * 1e3,
            x.max.as_secs_f64() * 1e3
        );
    }
    s.push('\n');
    s
}

fn targets(
    results: &[(String, Vec<Measured>)],
    latencies: &[Latency],
    peak_rss: Option<u64>,
    rss_by_workload: &[(&str, Option<u64>)],
    sink_ratios: &[(&str, f64)],
) -> String {
    let get = |w: &str, c: Contender| {
        results
            .iter()
            .find(|(n, _)| n == w)
            .and_then(|(_, ms)| ms.iter().find(|m| m.contender == c))
    };
    let ratio = |w: &str, c: Contender| -> Option<f64> {
        Some(get(w, Contender::Wal2Arrow)?.rows_per_sec() / get(w, c)?.rows_per_sec())
    };
    // The floor's own ratio to a peer: what a plugin that costs nothing, read by a consumer
    // that costs nothing, would reach. No contender can beat it.
    let ceiling = |w: &str, c: Contender| -> Option<f64> {
        Some(get(w, Contender::Floor)?.rows_per_sec() / get(w, c)?.rows_per_sec())
    };
    let mut s = String::from(
        "## Targets\n\n**ceiling**: the decode floor's own ratio to the same peer — what an output \
         plugin and a consumer that cost nothing would reach; no contender can beat it.\n\n\
         | target | measured | ceiling | |\n|---|---:|---:|---|\n",
    );
    let mut row = |name: &str,
                   value: Option<f64>,
                   bound: Option<f64>,
                   unit: &str,
                   ok: &dyn Fn(f64) -> bool| {
        let (v, verdict) = match value {
            Some(v) => (format!("{v:.2}{unit}"), if ok(v) { "met" } else { "**missed**" }),
            None => ("not run".into(), ""),
        };
        let bound = bound.map_or(String::new(), |b| format!("{b:.2}{unit}"));
        let _ = writeln!(s, "| {name} | {v} | {bound} | {verdict} |");
    };
    let peer = |w: &str, c: Contender| (ratio(w, c), ceiling(w, c));
    let (v, b) = peer("W1", Contender::Wal2Json);
    row("W1: ≥ 8× wal2json v2", v, b, "×", &|v| v >= 8.0);
    let (v, b) = peer("W1", Contender::PgOutput);
    row("W1: ≥ 4× pgoutput binary", v, b, "×", &|v| v >= 4.0);
    row("W1: ≥ 0.8× the decode floor", ratio("W1", Contender::Floor), None, "×", &|v| v >= 0.8);
    let (v, b) = peer("W2", Contender::Wal2Json);
    row("W2: ≥ 4× wal2json v2", v, b, "×", &|v| v >= 4.0);
    let (v, b) = peer("W3", Contender::Wal2Json);
    row("W3: ≥ 5× wal2json v2", v, b, "×", &|v| v >= 5.0);
    let (v, b) = peer("W4", Contender::Wal2Json);
    row("W4: ≥ 2× wal2json v2", v, b, "×", &|v| v >= 2.0);
    let (v, b) = peer("W4", Contender::PgOutput);
    row("W4: ahead of pgoutput binary", v, b, "×", &|v| v > 1.0);
    let cpu_per_row =
        |c: Contender| get("W1", c).map(|m| m.walsender_cpu.as_secs_f64() / m.rows.max(1) as f64);
    let cpu_ratio =
        cpu_per_row(Contender::Wal2Arrow).zip(cpu_per_row(Contender::Floor)).map(|(a, f)| a / f);
    row("W1: walsender CPU per row ≤ 1.5× the floor's", cpu_ratio, None, "×", &|v| v <= 1.5);
    let size = get("W1", Contender::Wal2Arrow).map(|m| m.bytes as f64 / m.rows.max(1) as f64);
    row("W1: ≤ 60 bytes per row", size, None, " B", &|v| v <= 60.0);
    let at = |rate: u32| latencies.iter().find(|l| l.rate == rate);
    row(
        "latency p50 < 10 ms at 10,000 tx/s",
        at(10_000).map(|l| l.p50.as_secs_f64() * 1e3),
        None,
        " ms",
        &|v| v < 10.0,
    );
    row(
        "latency p99 < 50 ms at 10,000 tx/s",
        at(10_000).map(|l| l.p99.as_secs_f64() * 1e3),
        None,
        " ms",
        &|v| v < 50.0,
    );
    let rss = peak_rss.map(|b| b as f64 / 1e6);
    row("consumer peak RSS streaming W1 < 200 MB", rss, None, " MB", &|v| v < 200.0);
    // Issue 18's targets.
    for (w, at_least) in [("W1", 0.92), ("W2", 0.75), ("W3", 0.92), ("W4", 0.7)] {
        row(
            &format!("{w}: ≥ {at_least}× the decode floor (issue 18)"),
            ratio(w, Contender::Floor),
            None,
            "×",
            &|v| v >= at_least,
        );
    }
    for w in ["W1", "W2"] {
        let per_row =
            |c: Contender| get(w, c).map(|m| m.walsender_cpu.as_secs_f64() / m.rows.max(1) as f64);
        let cpu = per_row(Contender::Wal2Arrow).zip(per_row(Contender::Floor)).map(|(a, f)| a / f);
        row(&format!("{w}: walsender CPU per row ≤ 1.2× the floor's"), cpu, None, "×", &|v| {
            v <= 1.2
        });
    }
    let one_row = get("W4", Contender::Wal2Arrow).map(|m| m.bytes as f64 / m.rows.max(1) as f64);
    row("W4: a one-row transaction ≤ 300 bytes on the wire", one_row, None, " B", &|v| {
        v <= 300.0
    });
    for (sink, r) in sink_ratios {
        let at_least = if sink.starts_with("JSON") { 0.6 } else { 0.85 };
        row(&format!("SINKS: {sink} ≥ {at_least}× the library"), Some(*r), None, "×", &|v| {
            v >= at_least
        });
    }
    let (worst, most) = rss_by_workload
        .iter()
        .filter_map(|(w, b)| Some((*w, (*b)?)))
        .max_by_key(|(_, b)| *b)
        .map_or(("", None), |(w, b)| (w, Some(b as f64 / 1e6)));
    row(
        &format!("consumer peak RSS ≤ 100 MB on every workload (most: {worst})"),
        most,
        None,
        " MB",
        &|v| v <= 100.0,
    );
    s.push('\n');
    s
}
