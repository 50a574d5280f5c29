//! The `wal2arrow` command (issue 6), run as a process against the real server: `check`,
//! `slots`, `stream` into every sink, clean shutdown on SIGTERM, and a Parquet sink killed
//! with SIGKILL that still ends up holding every change exactly once.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow_array::RecordBatch;
use arrow_array::cast::AsArray;
use arrow_select::concat::concat_batches;
use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};
use wal2arrow_consumer::{Event, Lsn, PluginOptions, ReplicationClient};
use wal2arrow_harness::{Cluster, TestDb};
use wal2arrow_sinks::ipc::read_segments;
use wal2arrow_sinks::parquet::restore;

use crate::common::{config, confirmed_flush, read_events, rows, sql, wait_for};
use crate::types::all_types_sql;

/// The command, with no connection settings from this process's environment.
pub(crate) fn cli(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_wal2arrow_cli"));
    c.args(args)
        .env_remove("WAL2ARROW_DSN")
        .env("WAL2ARROW_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for var in ["PGHOST", "PGHOSTADDR", "PGPORT", "PGUSER", "PGPASSWORD", "PGDATABASE"] {
        c.env_remove(var);
    }
    c
}

/// `wal2arrow stream` of `tables` on `slot` into the Parquet directory `out`, without a
/// progress line, with `extra` options and, when given, `--until-lsn`.
pub(crate) fn parquet_stream(
    dsn: &str,
    slot: &str,
    tables: &str,
    out: &Path,
    extra: &[&str],
    until: Option<&str>,
) -> Command {
    let out = out.to_str().expect("a UTF-8 path");
    let mut args = vec!["stream", "--dsn", dsn, "--slot", slot, "--tables", tables];
    args.extend(["--sink", "parquet", "--out", out, "--progress", "never"]);
    args.extend_from_slice(extra);
    if let Some(until) = until {
        args.extend(["--until-lsn", until]);
    }
    cli(&args)
}

/// Runs the command to completion: (exit code, stdout, stderr).
pub(crate) async fn run(mut command: Command) -> (i32, String, String) {
    let out = tokio::time::timeout(Duration::from_secs(120), command.output())
        .await
        .expect("the command finishes")
        .expect("the command runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub(crate) fn scratch_dir(label: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("w2a-cli-{label}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

pub(crate) fn current_lsn(db: &TestDb<'_>) -> String {
    db.psql("SELECT pg_current_wal_lsn()").trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_every_check_and_exits_3_when_the_server_is_not_ready() {
    let db = Cluster::shared().database("cli_check");
    db.psql("CREATE TABLE t (id int PRIMARY KEY)");
    let dsn = db.dsn();
    let (code, out, err) =
        run(cli(&["check", "--dsn", &dsn, "--slot", "cli_check", "--tables", "public.t"])).await;
    assert_eq!(code, 0, "{out}{err}");
    for check in
        ["wal_level", "replication privilege", "output_plugin_libraries", "plugin loadable"]
    {
        assert!(
            out.lines().any(|l| l.contains(check) && l.trim_start().starts_with("ok")),
            "{check}:\n{out}"
        );
    }
    assert!(out.contains("ready to stream"));

    let (code, out, err) =
        run(cli(&["check", "--dsn", &dsn, "--tables", "public.nothing_like_it"])).await;
    assert_eq!(code, 3, "{out}{err}");
    assert!(out.contains("FAIL  tables") && out.contains("public.nothing_like_it"), "{out}");
    assert!(err.contains("not ready"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slots_are_created_listed_with_lag_and_dropped() {
    let db = Cluster::shared().database("cli_slots");
    let dsn = db.dsn();
    let (code, out, err) = run(cli(&["slots", "create", "cli_slot_a", "--dsn", &dsn])).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("created slot cli_slot_a (wal2arrow)"), "{out}");
    let b_plugin = if wal2arrow_harness::wal2json_installed() { "wal2json" } else { "wal2arrow" };
    let (code, out, err) =
        run(cli(&["slots", "create", "cli_slot_b", "--plugin", b_plugin, "--dsn", &dsn])).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("({b_plugin})")), "{out}");
    db.psql("CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g");

    let (code, out, err) = run(cli(&["slots", "list", "--dsn", &dsn])).await;
    assert_eq!(code, 0, "{err}");
    let line = |name: &str| {
        out.lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{name}:\n{out}"))
            .to_owned()
    };
    let a = line("cli_slot_a");
    assert!(
        a.contains("wal2arrow") && a.contains("cli_slots") && a.contains(" kB"),
        "lag in bytes: {a}"
    );
    assert!(line("cli_slot_b").contains(b_plugin));
    assert!(out.lines().next().unwrap().contains("lag time"));

    for name in ["cli_slot_a", "cli_slot_b"] {
        let (code, out, err) = run(cli(&["slots", "drop", name, "--dsn", &dsn])).await;
        assert_eq!(code, 0, "{err}");
        assert!(out.contains(&format!("dropped slot {name}")));
    }
    let (code, _, err) = run(cli(&["slots", "drop", "cli_slot_a", "--dsn", &dsn])).await;
    assert_eq!(code, 1);
    assert!(err.contains("does not exist"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_settings_come_from_flags_the_dsn_or_pg_variables_and_failures_have_exit_codes()
{
    let db = Cluster::shared().database("cli_conn");
    let cluster = db.cluster();
    let port = cluster.port().to_string();
    // PG* variables only.
    let mut env_only = cli(&["slots", "list"]);
    env_only
        .env("PGHOST", cluster.host())
        .env("PGPORT", &port)
        .env("PGUSER", cluster.superuser())
        .env("PGDATABASE", db.name());
    let (code, _, err) = run(env_only).await;
    assert_eq!(code, 0, "{err}");
    // Flags.
    let (code, _, err) = run(cli(&[
        "slots",
        "list",
        "--host",
        cluster.host(),
        "--port",
        &port,
        "--user",
        cluster.superuser(),
        "--dbname",
        db.name(),
    ]))
    .await;
    assert_eq!(code, 0, "{err}");
    // Flags win over the DSN: the DSN's port is wrong, the flag's right.
    let dsn = format!("host=127.0.0.1 port=1 user={} dbname={}", cluster.superuser(), db.name());
    let (code, _, err) = run(cli(&["slots", "list", "--dsn", &dsn, "--port", &port])).await;
    assert_eq!(code, 0, "{err}");

    // Bad settings: 2. Unreachable server: 4, fast, and the password is never shown.
    let (code, _, err) = run(cli(&["slots", "list", "--dsn", "host=x colour=blue"])).await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("colour"), "{err}");
    let (code, _, err) = run(cli(&["stream", "--sink", "parquet", "--dsn", &db.dsn()])).await;
    assert_eq!(code, 2, "parquet needs --out: {err}");
    let started = std::time::Instant::now();
    let (code, out, err) = run(cli(&[
        "stream",
        "--dsn",
        "host=127.0.0.1 port=1 user=u password=sekrit-value connect_timeout=3",
    ]))
    .await;
    assert_eq!(code, 4, "{err}");
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(!err.contains("sekrit") && !out.contains("sekrit"), "{err}");
    // Unix-domain sockets, as libpq: PGHOST or host= a socket directory.
    let socket_dir = cluster.socket_dir().display().to_string();
    let mut socket = cli(&["slots", "list"]);
    socket
        .env("PGHOST", &socket_dir)
        .env("PGPORT", &port)
        .env("PGUSER", cluster.superuser())
        .env("PGDATABASE", db.name());
    let (code, _, err) = run(socket).await;
    assert_eq!(code, 0, "{err}");
    let dsn =
        format!("host={socket_dir} port={port} user={} dbname={}", cluster.superuser(), db.name());
    let (code, _, err) = run(cli(&["check", "--dsn", &dsn, "--slot", "sockets"])).await;
    assert_eq!(code, 0, "{err}");
    let mut missing = cli(&["slots", "list"]);
    missing.env("PGHOST", "/nonexistent-socket-dir").env("PGPORT", &port);
    let (code, _, err) = run(missing).await;
    assert_eq!(code, 4, "{err}");
    assert!(err.contains(&format!("/nonexistent-socket-dir/.s.PGSQL.{port}")), "{err}");
}

/// Reads every finished Parquet file of a table directory with the parquet crate, restoring
/// the two types the sink stores differently.
pub(crate) fn read_parquet_dir(dir: &Path) -> Vec<RecordBatch> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "parquet"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let builder = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
            std::fs::File::open(&f).unwrap(),
        )
        .unwrap();
        // Batches come without the schema-level metadata; the builder's schema has it.
        let schema = std::sync::Arc::clone(builder.schema());
        for b in builder.build().unwrap() {
            out.push(
                restore(&b.unwrap().with_schema(std::sync::Arc::clone(&schema)).unwrap()).unwrap(),
            );
        }
    }
    out
}

/// `batches` (of one table) concatenated, with only the stream's columns (up to
/// `_unrepresentable`).
fn stream_columns(batches: &[RecordBatch]) -> RecordBatch {
    let schema = batches[0].schema();
    let all = concat_batches(&schema, batches).unwrap();
    let last = schema.index_of("_unrepresentable").unwrap();
    all.project(&(0..=last).collect::<Vec<_>>()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_writes_every_sink_and_parquet_and_ipc_read_back_as_the_stream() {
    let db = Cluster::shared().database("cli_sinks");
    db.psql(&all_types_sql());
    db.psql(
        "SELECT pg_create_logical_replication_slot('cli_pq', 'wal2arrow');
         SELECT pg_copy_logical_replication_slot('cli_pq', 'cli_ipc');
         SELECT pg_copy_logical_replication_slot('cli_pq', 'cli_jsonl');
         SELECT pg_copy_logical_replication_slot('cli_pq', 'cli_ref');",
    );
    let cols: Vec<String> =
        crate::types::columns().iter().map(|(c, ..)| format!("{c} = s.{c}")).collect();
    db.psql(&format!(
        "INSERT INTO all_types SELECT * FROM seed ORDER BY id;
         UPDATE all_types t SET {} FROM seed s WHERE s.id = t.id % 5 + 1;
         DELETE FROM all_types WHERE id > 3;
         TRUNCATE all_types;
         SELECT pg_logical_emit_message(true, 'cli', 'done');",
        cols.join(", ")
    ));
    let until = current_lsn(&db);
    let dsn = db.dsn();
    let dir = scratch_dir("sinks");
    let (pq_dir, ipc_file, jsonl_file) =
        (dir.join("parquet"), dir.join("out.arrows"), dir.join("out.jsonl"));
    std::fs::create_dir_all(&dir).unwrap();
    for (slot, sink, out) in [
        ("cli_pq", "parquet", &pq_dir),
        ("cli_ipc", "ipc", &ipc_file),
        ("cli_jsonl", "jsonl", &jsonl_file),
    ] {
        let (code, out_text, err) = run(cli(&[
            "stream",
            "--dsn",
            &dsn,
            "--slot",
            slot,
            "--tables",
            "public.all_types",
            "--sink",
            sink,
            "--out",
            out.to_str().unwrap(),
            "--until-lsn",
            &until,
            "--progress",
            "never",
        ]))
        .await;
        assert_eq!(code, 0, "{sink}: {out_text}{err}");
        assert!(
            err.contains("5 transactions") && err.contains("reached --until-lsn"),
            "{sink}: {err}"
        );
    }

    // The stream itself, from the fourth slot.
    let options = PluginOptions {
        tables: wal2arrow_schema::TableFilter::parse_list("public.all_types").unwrap(),
        ..PluginOptions::default()
    };
    let mut stream = ReplicationClient::connect(&config(&db))
        .await
        .unwrap()
        .start("cli_ref", Lsn::INVALID, &options)
        .await
        .unwrap();
    let events = read_events(
        &mut stream,
        Duration::from_secs(60),
        |e| matches!(e.last(), Some(Event::Message(m)) if m.prefix == "cli"),
    )
    .await;
    let reference: Vec<RecordBatch> = events
        .iter()
        .filter_map(|e| if let Event::Change(c) = e { Some(c.batch.clone()) } else { None })
        .collect();
    let expected = stream_columns(&reference);
    assert_eq!(expected.num_rows(), 5 + 10 + 2, "inserts, updates with old rows, deletes");

    // Parquet: same columns, same Arrow types, same values, for every type.
    let parquet = read_parquet_dir(&pq_dir.join("public.all_types"));
    let got = stream_columns(&parquet);
    assert_eq!(got.schema(), expected.schema(), "Arrow types and metadata");
    for (i, f) in expected.schema().fields().iter().enumerate() {
        assert_eq!(
            got.column(i).as_ref(),
            expected.column(i).as_ref(),
            "Parquet column {}",
            f.name()
        );
    }
    let truncates = read_parquet_dir(&pq_dir.join("_truncates"));
    assert_eq!(truncates.iter().map(RecordBatch::num_rows).sum::<usize>(), 1);
    assert!(pq_dir.join("_wal2arrow_checkpoint.json").exists());

    // Arrow IPC: every segment reads back with arrow-ipc's StreamReader.
    let segments = read_segments(std::fs::File::open(&ipc_file).unwrap()).unwrap();
    let tables: Vec<RecordBatch> = segments
        .iter()
        .filter(|b| {
            b.schema().metadata().get("wal2arrow:table").map(String::as_str) == Some("all_types")
        })
        .cloned()
        .collect();
    assert_eq!(stream_columns(&tables), expected, "IPC batches");
    assert!(segments.iter().any(|b| b.schema().metadata()["wal2arrow:table"] == "_truncates"));
    assert!(segments.iter().any(|b| b.schema().metadata()["wal2arrow:table"] == "_messages"));

    // JSON lines: one line per event, in the connector's event shape.
    let jsonl = std::fs::read_to_string(&jsonl_file).unwrap();
    let count = |kind: &str| {
        jsonl.lines().filter(|l| l.starts_with(&format!("{{\"event_type\":\"{kind}\""))).count()
    };
    assert_eq!(
        (
            count("begin"),
            count("insert"),
            count("update"),
            count("delete"),
            count("truncate"),
            count("message"),
            count("commit")
        ),
        (5, 5, 5, 2, 1, 1, 5),
        "{jsonl}"
    );
    assert!(
        jsonl.contains(r#""c_text":"hello""#) && jsonl.contains(r#""old_data":{"id":1"#),
        "{jsonl}"
    );
    assert!(jsonl.contains(r#""key_data":{"id":4}"#), "{jsonl}");
    stream.close().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let client = sql(&db).await;
    for slot in ["cli_pq", "cli_ipc", "cli_jsonl", "cli_ref"] {
        client.execute("SELECT pg_drop_replication_slot($1)", &[&slot]).await.unwrap();
    }
}

/// Collects a child's stderr in the background.
pub(crate) fn capture_stderr(child: &mut Child) -> Arc<Mutex<String>> {
    let text = Arc::new(Mutex::new(String::new()));
    let mut err = child.stderr.take().unwrap();
    let sink = Arc::clone(&text);
    tokio::spawn(async move {
        let mut buf = [0u8; 4096];
        while let Ok(n) = err.read(&mut buf).await {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_flushes_acknowledges_and_exits_0() {
    let db = Cluster::shared().database("cli_term");
    db.psql("CREATE TABLE t (id int PRIMARY KEY, v text)");
    let dir = scratch_dir("term");
    let mut child = cli(&[
        "stream",
        "--dsn",
        &db.dsn(),
        "--slot",
        "cli_term",
        "--tables",
        "public.t",
        "--sink",
        "parquet",
        "--out",
        dir.to_str().unwrap(),
        "--roll-seconds",
        "3600",
        "--progress",
        "always",
    ])
    .spawn()
    .unwrap();
    let stderr = capture_stderr(&mut child);
    wait_for("the slot", Duration::from_secs(30), || {
        db.psql("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'cli_term' AND active")
            .trim()
            == "1"
    })
    .await;
    db.psql(
        "INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 100) g;
         INSERT INTO t SELECT g, 'v' || g FROM generate_series(101, 150) g;
         UPDATE t SET v = 'changed' WHERE id <= 10;",
    );
    wait_for("the rows to arrive", Duration::from_secs(30), || {
        stderr.lock().unwrap().contains(" 160 rows")
    })
    .await;
    assert!(
        !dir.join("public.t").read_dir().is_ok_and(|mut d| d
            .any(|f| { f.is_ok_and(|f| f.path().extension().is_some_and(|x| x == "parquet")) })),
        "nothing is flushed before the stop (roll every hour)"
    );

    // SIGTERM: finish, flush, acknowledge, exit 0.
    let pid = child.id().unwrap();
    assert_eq!(send_signal(pid, "TERM"), 0);
    let status =
        tokio::time::timeout(Duration::from_secs(30), child.wait()).await.unwrap().unwrap();
    assert_eq!(status.code(), Some(0), "{}", stderr.lock().unwrap());
    let batches = read_parquet_dir(&dir.join("public.t"));
    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
    assert_eq!(rows, 160, "every row flushed");
    // Acknowledged past the last transaction written (to its end LSN, after its commit LSN).
    // Not compared with pg_current_wal_lsn(): other tests' databases write WAL past it.
    let last_commit = batches
        .iter()
        .flat_map(|b| {
            let c = b.column_by_name("_commit_lsn").unwrap();
            c.as_primitive::<arrow_array::types::UInt64Type>().values().to_vec()
        })
        .max()
        .unwrap();
    let confirmed = confirmed_flush(&db, "cli_term");
    assert!(confirmed > Lsn(last_commit), "acknowledged before exiting: {confirmed}");
    assert!(stderr.lock().unwrap().contains("stopped on request"));
    let _ = std::fs::remove_dir_all(&dir);
    sql(&db).await.execute("SELECT pg_drop_replication_slot('cli_term')", &[]).await.unwrap();
}

/// Sends a signal with the `kill` command.
pub(crate) fn send_signal(pid: u32, signal: &str) -> i32 {
    std::process::Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .status()
        .map(|s| s.code().unwrap_or(-1))
        .unwrap_or(-1)
}

/// A change as compared: table, `_lsn`, `_op`, the values rendered, `_missing`.
type Change = (String, u64, String, Vec<Option<String>>, Vec<String>);

/// Every row of `batches`, sorted.
fn row_set(tables: &BTreeMap<String, Vec<RecordBatch>>) -> Vec<Change> {
    use arrow_array::cast::AsArray;
    let mut out = Vec::new();
    for (table, batches) in tables {
        if batches.is_empty() {
            continue;
        }
        let b = stream_columns(batches);
        let lsns =
            b.column_by_name("_lsn").unwrap().as_primitive::<arrow_array::types::UInt64Type>();
        for (i, (op, values, missing)) in rows(&b).into_iter().enumerate() {
            out.push((table.clone(), lsns.value(i), op, values, missing));
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parquet_stream_killed_with_sigkill_and_restarted_holds_every_change_exactly_once() {
    let db = Cluster::shared().database("cli_crash");
    db.psql(
        "CREATE TABLE a (id int PRIMARY KEY, v int, note text);
         CREATE TABLE b (id int PRIMARY KEY, w text);
         SELECT pg_create_logical_replication_slot('cli_crash', 'wal2arrow');
         SELECT pg_copy_logical_replication_slot('cli_crash', 'cli_crash_ref');",
    );
    let dir = scratch_dir("crash");
    let dsn = db.dsn();
    let args = |until: Option<&str>| {
        let mut a: Vec<String> = [
            "stream",
            "--dsn",
            &dsn,
            "--slot",
            "cli_crash",
            "--tables",
            "public.a,public.b",
            "--sink",
            "parquet",
            "--out",
            dir.to_str().unwrap(),
            "--roll-rows",
            "150",
            "--roll-seconds",
            "1",
            "--progress",
            "never",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        if let Some(u) = until {
            a.extend(["--until-lsn".to_owned(), u.to_owned()]);
        }
        a
    };
    // The workload: 120 transactions over a few seconds, inserts, updates and deletes.
    let name = db.name().to_owned();
    let workload = std::thread::spawn(move || {
        for t in 0..120u32 {
            let base = t * 10;
            Cluster::shared()
                .psql(
                    &name,
                    &format!(
                        "BEGIN;
                         INSERT INTO a SELECT g, g, 'n' || g FROM generate_series({base}, {base} + 9) g;
                         INSERT INTO b VALUES ({t}, repeat('w', {t}));
                         UPDATE a SET v = v + 1 WHERE id % 7 = {} AND id < {base};
                         DELETE FROM b WHERE id = {};
                         COMMIT;",
                        t % 7,
                        t.saturating_sub(3)
                    ),
                )
                .unwrap();
            std::thread::sleep(Duration::from_millis(25));
        }
    });
    // Two runs killed with SIGKILL mid-workload, each after it flushed at least once.
    let checkpoint = dir.join("_wal2arrow_checkpoint.json");
    for round in 0..2u64 {
        let argv = args(None);
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let mut child = cli(&argv).spawn().unwrap();
        let before = std::fs::read_to_string(&checkpoint).unwrap_or_default();
        wait_for(&format!("a flush in round {round}"), Duration::from_secs(30), || {
            std::fs::read_to_string(&checkpoint).unwrap_or_default() != before
        })
        .await;
        tokio::time::sleep(Duration::from_millis(300 + 200 * round)).await;
        assert!(!workload.is_finished(), "killed in the middle of the workload");
        assert_eq!(send_signal(child.id().unwrap(), "KILL"), 0);
        child.wait().await.unwrap();
    }
    tokio::task::spawn_blocking(move || workload.join().unwrap()).await.unwrap();
    db.psql("SELECT pg_logical_emit_message(true, 'crash', 'end')");
    let until = current_lsn(&db);
    // The last run finishes the job.
    let argv = args(Some(&until));
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let (code, out, err) = run(cli(&argv)).await;
    assert_eq!(code, 0, "{out}{err}");

    // The reference: the same changes from a copy of the slot, read once, in one go.
    let options = PluginOptions {
        tables: wal2arrow_schema::TableFilter::parse_list("public.a,public.b").unwrap(),
        ..PluginOptions::default()
    };
    let mut stream = ReplicationClient::connect(&config(&db))
        .await
        .unwrap()
        .start("cli_crash_ref", Lsn::INVALID, &options)
        .await
        .unwrap();
    let events = read_events(
        &mut stream,
        Duration::from_secs(60),
        |e| matches!(e.last(), Some(Event::Message(m)) if m.prefix == "crash"),
    )
    .await;
    let mut reference: BTreeMap<String, Vec<RecordBatch>> = BTreeMap::new();
    for e in &events {
        if let Event::Change(c) = e {
            reference.entry(c.relation.name.clone()).or_default().push(c.batch.clone());
        }
    }
    let mut written: BTreeMap<String, Vec<RecordBatch>> = BTreeMap::new();
    for table in ["a", "b"] {
        written.insert(table.into(), read_parquet_dir(&dir.join(format!("public.{table}"))));
    }
    let (expected, got) = (row_set(&reference), row_set(&written));
    assert!(expected.len() > 2000, "{} changes", expected.len());
    let missing: Vec<_> = expected.iter().filter(|r| !got.contains(r)).take(5).collect();
    assert!(missing.is_empty(), "changes missing from the Parquet files: {missing:?}");
    assert_eq!(got.len(), expected.len(), "no change twice");
    assert_eq!(got, expected);
    // No temporary file is left; the slot is where the checkpoint says.
    for table in ["public.a", "public.b"] {
        for f in std::fs::read_dir(dir.join(table)).unwrap() {
            let name = f.unwrap().file_name().to_string_lossy().into_owned();
            assert!(name.ends_with(".parquet") && !name.starts_with('.'), "{name}");
        }
    }
    stream.close().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let client = sql(&db).await;
    for slot in ["cli_crash", "cli_crash_ref"] {
        client.execute("SELECT pg_drop_replication_slot($1)", &[&slot]).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_streams_to_parquet_reads_it_back_and_leaves_nothing_running() {
    let plugin = wal2arrow_harness::plugin_library().unwrap();
    let out = scratch_dir("demo");
    let mut command = cli(&["demo", "--out", out.to_str().unwrap()]);
    command.env("WAL2ARROW_PLUGIN", &plugin);
    let child = command.spawn().unwrap();
    let pid = child.id().unwrap();
    let result = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let (stdout, stderr) =
        (String::from_utf8_lossy(&result.stdout), String::from_utf8_lossy(&result.stderr));
    assert_eq!(result.status.code(), Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("streamed 6 transactions"), "{stdout}");
    assert!(
        stdout.contains("public.users: 6 rows") && stdout.contains("public.orders: 1012 rows"),
        "{stdout}"
    );
    assert!(stderr.contains("scratch PostgreSQL stopped and removed"), "{stderr}");
    let rows: usize =
        read_parquet_dir(&out.join("public.orders")).iter().map(RecordBatch::num_rows).sum();
    assert_eq!(rows, 1012);
    // Nothing of the demo's cluster (named after the demo's process) is left running.
    let marker = format!("wal2arrow-scratch-{pid}-");
    let left: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(&marker))
        .collect();
    assert!(left.is_empty(), "still running: {left:?}");
    let _ = std::fs::remove_dir_all(&out);
}

/// `GET path` on 127.0.0.1:`port`: (status code, body); `None` while nothing listens.
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let status = out.split_whitespace().nth(1)?.parse().ok()?;
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Some((status, body))
}

/// The value of the sample `name` (with its labels, as rendered) in Prometheus text.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_endpoint_shows_rows_rising_and_lag_falling_to_zero() {
    let db = Cluster::shared().database("cli_metrics");
    db.psql("CREATE TABLE m (id int8 PRIMARY KEY, v text)");
    let dir = scratch_dir("metrics");
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("out.jsonl");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dsn = db.dsn();
    let mut child = cli(&[
        "stream",
        "--dsn",
        &dsn,
        "--slot",
        "metrics",
        "--tables",
        "public.m",
        "--sink",
        "jsonl",
        "--out",
        out.to_str().unwrap(),
        "--progress",
        "never",
        "--heartbeat-seconds",
        "1",
        "--metrics-addr",
        &port.to_string(),
    ])
    .spawn()
    .unwrap();
    wait_for("the health check", Duration::from_secs(30), || {
        http_get(port, "/health")
            .is_some_and(|(code, body)| code == 200 && body.contains("lag_bytes"))
    })
    .await;
    let rows = || {
        let (code, text) = http_get(port, "/metrics").expect("metrics");
        assert_eq!(code, 200);
        sample(&text, "wal2arrow_rows_total{table=\"public.m\"}").unwrap_or(0.0)
    };
    let writer = sql(&db).await;
    writer
        .batch_execute("INSERT INTO m SELECT g, 'x' FROM generate_series(1, 1000) g")
        .await
        .unwrap();
    wait_for("the first rows counted", Duration::from_secs(30), || rows() >= 1000.0).await;
    writer
        .batch_execute("INSERT INTO m SELECT g, 'y' FROM generate_series(1001, 3000) g")
        .await
        .unwrap();
    wait_for("more rows counted", Duration::from_secs(30), || rows() >= 3000.0).await;
    // Written, acknowledged, caught up: the lag falls to 0.
    wait_for("the lag to reach 0", Duration::from_secs(60), || {
        let (_, text) = http_get(port, "/metrics").unwrap();
        sample(&text, "wal2arrow_lag_bytes") == Some(0.0)
            && sample(&text, "wal2arrow_acknowledged_lsn").is_some_and(|v| v > 0.0)
    })
    .await;
    let (_, text) = http_get(port, "/metrics").unwrap();
    for name in [
        "wal2arrow_transactions_total",
        "wal2arrow_lag_seconds",
        "wal2arrow_reconnects_total",
        "wal2arrow_sink_flush_seconds_count",
    ] {
        assert!(sample(&text, name).is_some(), "{name} in:\n{text}");
    }
    assert!(text.contains("# HELP wal2arrow_rows_total"), "{text}");
    // No connection details: no database, host, user or password.
    for secret in [db.name(), "host=", "user=", "dbname", "password"] {
        assert!(!text.contains(secret), "{secret:?} in the metrics");
    }
    assert_eq!(http_get(port, "/nothing").unwrap().0, 404);
    assert_eq!(send_signal(child.id().unwrap(), "TERM"), 0);
    assert!(child.wait().await.unwrap().success());
    let _ = std::fs::remove_dir_all(&dir);
}
