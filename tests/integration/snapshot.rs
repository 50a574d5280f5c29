//! Initial snapshots (issue 13): every existing row, then every change, none twice — with a
//! writer changing the tables while they are copied, with both plugins; snapshot rows equal
//! to the same rows streamed as INSERTs; a run killed during its snapshot and started again;
//! a snapshot lost during its copy (a worker's or the exporting connection killed) and taken
//! again by the stream itself; the errors that say what to do.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use arrow_array::RecordBatch;
use wal2arrow_consumer::client::Error as ClientError;
use wal2arrow_consumer::{
    ChangeBatch, Consumer, Error, Event, Lsn, PluginChoice, PluginOptions, ReplicationClient,
    SnapshotEvent, SnapshotMode,
};
use wal2arrow_harness::{Cluster, TestDb};
use wal2arrow_schema::samples::Rng;
use wal2arrow_sinks::parquet::{ParquetOptions, ParquetSink};
use wal2arrow_sinks::{Progress, RunOptions};

use crate::cli::{cli, current_lsn, parquet_stream, run, scratch_dir, send_signal};
use crate::common::{config, read_txns, sql, wait_for};
use crate::random_dml::{State, final_rows, replay};
use crate::types::{all_types_sql, assert_matches, columns, rows_with_op, select_all};

/// Rows of each table that exist before the slot (the main test's; the kill test's are fewer).
const ROWS: u64 = 200_000;

/// Four tables of `rows` rows: every type of the mapping (`t_all`, from the type tests' seed
/// rows, NULLs included), narrow rows, a text key, and wide rows with NaN and arrays.
fn setup(db: &TestDb<'_>, rows: u64) {
    db.psql(&all_types_sql());
    let cols: Vec<String> = columns().iter().map(|c| format!("s.{}", c.0)).collect();
    db.psql(&format!(
        "CREATE TABLE t_all (LIKE all_types); ALTER TABLE t_all ADD PRIMARY KEY (id);
         INSERT INTO t_all SELECT g, {cols} FROM generate_series(1, {rows}) g
           JOIN seed s ON s.id = CASE WHEN g % 20000 = 0 THEN 3 ELSE (ARRAY[1, 2, 4, 5])[g % 4 + 1] END;
         CREATE TABLE t_narrow (id int8 PRIMARY KEY, v int4, note text, at timestamptz);
         INSERT INTO t_narrow SELECT g, CASE WHEN g % 7 = 0 THEN NULL ELSE g END, 'n' || g,
           '2024-01-01'::timestamptz + g * interval '1 s' FROM generate_series(1, {rows}) g;
         CREATE TABLE t_key (k text PRIMARY KEY, qty int4, data jsonb);
         INSERT INTO t_key SELECT 'k' || g, g % 100,
           CASE WHEN g % 5 = 0 THEN NULL ELSE jsonb_build_object('g', g) END
           FROM generate_series(1, {rows}) g;
         CREATE TABLE t_wide (id int4 PRIMARY KEY, a numeric(12,2), b float8, c bytea, d uuid,
                              e date, f int4[]);
         INSERT INTO t_wide SELECT g, g / 7.0, CASE WHEN g % 11 = 0 THEN 'NaN' ELSE g * 1.5 END,
           CASE WHEN g % 3 = 0 THEN NULL ELSE int4send(g) END, md5(g::text)::uuid,
           '2000-01-01'::date + g % 5000, ARRAY[g, NULL, -g] FROM generate_series(1, {rows}) g;
         VACUUM ANALYZE;",
        cols = cols.join(", ")
    ));
}

/// One random transaction of the concurrent writer: inserts, updates (key changes among them,
/// and updates that leave TOAST values unchanged) and deletes on every table.
fn write_txn(rng: &mut Rng, t: u64, rows: u64) -> String {
    let cols: Vec<String> = columns().iter().map(|c| format!("s.{}", c.0)).collect();
    let mut sql = String::from("BEGIN;\n");
    for i in 0..1 + rng.below(5) {
        let id = 1 + rng.below(rows);
        let new = 1_000_000 + t * 10 + i;
        let stmt = match rng.below(12) {
            0 => format!(
                "INSERT INTO t_narrow VALUES ({new}, {t}, 'new {t}', now()) ON CONFLICT DO NOTHING;"
            ),
            1 => format!(
                "UPDATE t_narrow SET v = coalesce(v, 0) + 1, note = 'u{t}' WHERE id = {id};"
            ),
            2 => format!("UPDATE t_narrow SET id = id + 5000000 WHERE id = {id};"),
            3 => format!("DELETE FROM t_narrow WHERE id = {id};"),
            4 => format!("UPDATE t_key SET k = k || 'x', qty = qty + 1 WHERE k = 'k{id}';"),
            5 => format!("DELETE FROM t_key WHERE k = 'k{id}';"),
            6 => format!(
                "INSERT INTO t_all SELECT {new}, {} FROM seed s WHERE s.id = {};",
                cols.join(", "),
                1 + rng.below(5)
            ),
            7 => format!("UPDATE t_all SET c_int4 = {t}, c_text = 'w{t}' WHERE id = {id};"),
            8 => format!("UPDATE t_all SET id = id + 5000000 WHERE id = {id};"),
            9 => format!("DELETE FROM t_all WHERE id = {id};"),
            10 => format!("UPDATE t_wide SET a = a + 1, f = f || {t} WHERE id = {id};"),
            _ => format!("DELETE FROM t_wide WHERE id = {id};"),
        };
        sql.push_str(&stmt);
        sql.push('\n');
    }
    sql.push_str("COMMIT;");
    sql
}

fn keys() -> HashMap<&'static str, &'static str> {
    HashMap::from([("t_all", "id"), ("t_narrow", "id"), ("t_key", "k"), ("t_wide", "id")])
}

/// The replayed tables equal the expected ones, row by row. With `wal2json_floats`, a float
/// or numeric that wal2json 2.5 streamed as `null` may be NaN or ±Infinity in the source (the README's
/// fallback section: without `numeric-data-types-as-string` wal2json cannot say which); the
/// snapshot itself reads them exactly.
fn assert_same(
    got: &HashMap<String, State>,
    want: &HashMap<String, State>,
    what: &str,
    wal2json_floats: bool,
    rows: u64,
) {
    let lenient = |got: &Option<String>, want: &Option<String>| {
        wal2json_floats
            && got.is_none()
            && matches!(
                want.as_deref(),
                Some("NaN" | "inf" | "-inf" | "Infinity" | "-Infinity" | "<unrepresentable>")
            )
    };
    for table in keys().keys() {
        let (got, want) = (
            got.get(*table).cloned().unwrap_or_default(),
            want.get(*table).cloned().unwrap_or_default(),
        );
        assert!(want.len() as u64 > rows / 2, "{what}: {table} has {} rows", want.len());
        for (k, row) in &want {
            let mut replayed = got.get(k).cloned();
            if let Some(r) = replayed.as_mut() {
                for (column, value) in r.iter_mut() {
                    if let Some(w) = row.get(column)
                        && lenient(value, w)
                    {
                        value.clone_from(w);
                    }
                }
            }
            assert_eq!(replayed.as_ref(), Some(row), "{what}: {table} key {k}");
        }
        assert_eq!(got.len(), want.len(), "{what}: {table} rows");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_initial_snapshot_under_concurrent_writes_replays_to_the_final_rows_with_both_plugins() {
    let with_json = wal2arrow_harness::wal2json_installed();
    for plugin in [PluginChoice::Wal2Arrow, PluginChoice::Wal2Json]
        .into_iter()
        .filter(|p| *p == PluginChoice::Wal2Arrow || with_json)
    {
        let label = if plugin == PluginChoice::Wal2Json { "json" } else { "arrow" };
        let db = Cluster::shared().database(&format!("snapshot_{label}"));
        setup(&db, ROWS);
        // The writer runs from before the slot exists until a while after the snapshot ends.
        let (stop, written, writer) = spawn_writer(&db, ROWS);
        wait_for("the writer to start", Duration::from_secs(30), || {
            written.load(Ordering::SeqCst) > 3
        })
        .await;
        let dir = scratch_dir(&format!("snapshot-{label}"));
        let consumer = Consumer::builder()
            .config(config(&db))
            .slot("snap")
            .output_plugin(plugin)
            .tables(["public.t_*"])
            .batch_rows(5000)
            .snapshot_workers(2)
            .snapshot_chunk_pages(500)
            .heartbeat_interval(None)
            .build()
            .unwrap();
        let mut stream = consumer.start().await.unwrap();
        let sink = ParquetSink::open(&dir, "snapshot", ParquetOptions::default()).unwrap();
        // Writes committed while the snapshot was being copied.
        let (mut during_start, mut during_end) = (None, None);
        let mut watch = |p: &Progress| {
            let Some(s) = p.snapshot else { return };
            let n = written.load(Ordering::SeqCst);
            if !s.complete && s.tables > 0 {
                during_start.get_or_insert(n);
            } else if s.complete && during_end.is_none() {
                during_end = Some(n);
                stop.store(true, Ordering::SeqCst);
            }
        };
        let report = wal2arrow_sinks::run(
            &mut stream,
            sink,
            &RunOptions { idle_timeout: Some(Duration::from_secs(5)), ..RunOptions::default() },
            std::future::pending(),
            &mut watch,
        )
        .await
        .unwrap();
        stream.close().await;
        stop.store(true, Ordering::SeqCst);
        tokio::task::spawn_blocking(move || writer.join().unwrap()).await.unwrap();
        let (start, end) = (during_start.expect("seen mid-snapshot"), during_end.expect("seen"));
        assert!(end > start, "{label}: the writer committed during the snapshot ({start}..{end})");
        assert_eq!(report.progress.rows.len(), 4, "{label}: {:?}", report.progress.rows);
        // The slot is persistent, and no temporary slot is left.
        // This database's slots only: other tests' temporary snapshot slots come and go.
        let slots = db.psql(
            "SELECT string_agg(slot_name || ':' || temporary, ',' ORDER BY slot_name) \
             FROM pg_replication_slots WHERE database = current_database()",
        );
        assert!(slots.contains("snap:false"), "{label}: {slots}");
        assert!(!slots.contains("_snap_"), "{label}: {slots}");
        // The last changes may have come after the stream went idle: read them too.
        let until = current_lsn(&db);
        let consumer = Consumer::builder()
            .config(config(&db))
            .existing_slot("snap")
            .output_plugin(plugin)
            .tables(["public.t_*"])
            .heartbeat_interval(None)
            .build()
            .unwrap();
        let mut stream = consumer.start().await.unwrap();
        let sink = ParquetSink::open(&dir, "snapshot", ParquetOptions::default()).unwrap();
        wal2arrow_sinks::run(
            &mut stream,
            sink,
            &RunOptions { until_lsn: Some(until.parse().unwrap()), ..RunOptions::default() },
            std::future::pending(),
            &mut |_| {},
        )
        .await
        .unwrap();
        stream.close().await;

        let replayed = replay(&dir, &keys());
        // The source's rows, exactly (through the plugin, whatever this run streamed with).
        let expected = final_rows(&db, PluginChoice::Wal2Arrow, &keys()).await;
        assert_same(&replayed, &expected, label, plugin == PluginChoice::Wal2Json, ROWS);
        let _ = std::fs::remove_dir_all(&dir);
        sql(&db).await.execute("SELECT pg_drop_replication_slot('snap')", &[]).await.unwrap();
    }
}

/// Reads a stream to its end (a snapshot-only stream ends after the snapshot).
async fn read_to_end(mut stream: wal2arrow_consumer::CdcStream) -> Vec<Event> {
    let mut events = Vec::new();
    let read = async {
        while let Some(e) = stream.next().await {
            events.push(e.expect("no error"));
        }
    };
    tokio::time::timeout(Duration::from_secs(120), read).await.expect("the snapshot ends");
    events
}

fn changes(events: &[Event]) -> Vec<ChangeBatch> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Change(c) => Some(c.clone()),
            _ => None,
        })
        .collect()
}

/// A batch without `_op` and `_lsn`, which differ between a snapshot row and an INSERT.
fn without_op_and_lsn(b: &RecordBatch) -> RecordBatch {
    let schema = b.schema();
    let keep: Vec<usize> = (0..b.num_columns())
        .filter(|&i| !matches!(schema.field(i).name().as_str(), "_op" | "_lsn"))
        .collect();
    b.project(&keep).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_rows_equal_the_same_rows_streamed_as_inserts_batch_by_batch_for_every_type() {
    let db = Cluster::shared().database("snapshot_types");
    db.psql(&all_types_sql());
    let options = PluginOptions {
        batch_rows: 2,
        tables: wal2arrow_schema::TableFilter::parse_list("public.all_types").unwrap(),
        ..PluginOptions::default()
    };
    let mut repl = ReplicationClient::connect(&config(&db)).await.unwrap();
    repl.create_slot("types_ins", "wal2arrow", false).await.unwrap();
    db.psql("INSERT INTO all_types SELECT * FROM seed ORDER BY id");
    let mut stream = ReplicationClient::connect(&config(&db))
        .await
        .unwrap()
        .start("types_ins", Lsn::INVALID, &options)
        .await
        .unwrap();
    let inserted: Vec<ChangeBatch> =
        read_txns(&mut stream, 1, Duration::from_secs(30)).await.remove(0).batches;
    stream.close().await.unwrap();

    let consumer = Consumer::builder()
        .config(config(&db))
        .temporary_slot("types_snap")
        .tables(["public.all_types"])
        .batch_rows(2)
        .snapshot(SnapshotMode::Only)
        .heartbeat_interval(None)
        .build()
        .unwrap();
    let events = read_to_end(consumer.start().await.unwrap()).await;
    let read = changes(&events);
    assert_eq!(read.len(), inserted.len(), "as many batches");
    for (i, (r, w)) in read.iter().zip(&inserted).enumerate() {
        let (r, w) = (without_op_and_lsn(&r.batch), without_op_and_lsn(&w.batch));
        assert_eq!(r.schema(), w.schema(), "batch {i}: schema and field metadata");
        for c in 0..r.num_columns() {
            let name = r.schema().field(c).name().clone();
            assert_eq!(r.column(c).as_ref(), w.column(c).as_ref(), "batch {i}: values of {name}");
        }
    }
    // And both equal what SELECT returns.
    let client = sql(&db).await;
    let cols = columns();
    let rows = select_all(&client, &cols).await;
    assert_matches(&rows_with_op(&read, "read"), &rows, &cols, "snapshot");
    // The events around the rows: started, each table, complete, and one pseudo-transaction.
    let kinds: Vec<&str> = events
        .iter()
        .filter_map(|e| match e {
            Event::Begin(b) => {
                assert_eq!(b.xid, 0);
                Some("begin")
            }
            Event::Commit(_) => Some("commit"),
            Event::Snapshot(SnapshotEvent::Started { tables: 1, .. }) => Some("started"),
            Event::Snapshot(SnapshotEvent::TableStarted { .. }) => Some("table"),
            Event::Snapshot(SnapshotEvent::ChunkDone { chunk, .. }) => {
                assert_eq!(chunk.first_page, 0);
                Some("range")
            }
            Event::Snapshot(SnapshotEvent::TableDone { rows: 5, .. }) => Some("done"),
            Event::Snapshot(SnapshotEvent::Complete { rows: 5, tables: 1, .. }) => Some("complete"),
            Event::Snapshot(other) => panic!("{other:?}"),
            _ => None,
        })
        .collect();
    assert_eq!(kinds, ["started", "table", "begin", "range", "done", "commit", "complete"]);
    // `only` leaves no slot.
    let slots =
        db.psql("SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'types_snap%'");
    assert_eq!(slots.trim(), "0");
    client.execute("SELECT pg_drop_replication_slot('types_ins')", &[]).await.unwrap();
}

/// The concurrent writer of [`write_txn`]s on `db`: runs until `stop`, then 30 more.
fn spawn_writer(
    db: &TestDb<'_>,
    rows: u64,
) -> (Arc<AtomicBool>, Arc<AtomicU64>, std::thread::JoinHandle<()>) {
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let (stop2, written2, name) = (Arc::clone(&stop), Arc::clone(&written), db.name().to_owned());
    let seed = Rng::seed_from_env();
    eprintln!("snapshot writer: WAL2ARROW_SEED={seed}");
    let handle = std::thread::spawn(move || {
        let mut rng = Rng::new(seed);
        let (mut t, mut after_stop) = (0, 0);
        while after_stop < 30 {
            Cluster::shared().psql(&name, &write_txn(&mut rng, t, rows)).unwrap();
            written2.fetch_add(1, Ordering::SeqCst);
            t += 1;
            if stop2.load(Ordering::SeqCst) {
                after_stop += 1;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    });
    (stop, written, handle)
}

/// `read` rows in the published Parquet files of the four tables.
fn read_rows(dir: &std::path::Path) -> usize {
    keys().keys().map(|t| crate::random_dml::read_rows(dir, t)).sum()
}

/// Rows of each table in the kill test.
const KILL_ROWS: u64 = 60_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_killed_mid_copy_resumes_from_its_durable_ranges_and_ends_exact() {
    let db = Cluster::shared().database("snapshot_kill");
    // Another sink than Parquet keeps nothing of a snapshot cut short: the slot is made
    // persistent only after it, so a kill leaves none and the next run starts over.
    db.psql(
        "CREATE TABLE small (id int8 PRIMARY KEY, note text);
         INSERT INTO small SELECT g, repeat('x', 50) || g FROM generate_series(1, 300000) g;",
    );
    let dir = scratch_dir("snapshot-kill");
    std::fs::create_dir_all(&dir).unwrap();
    let (dsn, jsonl) = (db.dsn(), dir.join("out.jsonl"));
    let mut child = cli(&[
        "stream",
        "--dsn",
        &dsn,
        "--slot",
        "other",
        "--tables",
        "public.small",
        "--sink",
        "jsonl",
        "--out",
        jsonl.to_str().unwrap(),
        "--progress",
        "never",
    ])
    .spawn()
    .unwrap();
    wait_for("snapshot rows written", Duration::from_secs(60), || {
        std::fs::metadata(&jsonl).is_ok_and(|m| m.len() > 100_000)
    })
    .await;
    assert_eq!(send_signal(child.id().unwrap(), "KILL"), 0);
    child.wait().await.unwrap();
    wait_for("the temporary slot to go", Duration::from_secs(30), || {
        db.psql("SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'other%'").trim()
            == "0"
    })
    .await;
    db.psql("DROP TABLE small");

    // The Parquet sink records finished ranges: killed mid-copy under a concurrent writer,
    // the next run copies only the others, then streams from the slot's consistent point.
    setup(&db, KILL_ROWS);
    let out = dir.join("parquet");
    let options = [
        "--batch-rows",
        "2000",
        "--snapshot-workers",
        "2",
        "--snapshot-chunk-pages",
        "50",
        "--roll-seconds",
        "1",
        "--roll-rows",
        "500",
    ];
    let stream =
        |until: Option<&str>| parquet_stream(&dsn, "killed", "public.t_*", &out, &options, until);
    let spawn = |until: Option<&str>| {
        let mut c = stream(until);
        c.env("WAL2ARROW_LOG", "info");
        c
    };
    let (stop, written, writer) = spawn_writer(&db, KILL_ROWS);
    wait_for("the writer to start", Duration::from_secs(30), || written.load(Ordering::SeqCst) > 3)
        .await;
    let checkpoint = out.join(wal2arrow_sinks::parquet::CHECKPOINT_FILE);
    let durable_ranges = || {
        std::fs::read_to_string(&checkpoint)
            .map_or(0, |c| c.split("\"done\":[").nth(1).map_or(0, |d| d.matches('@').count()))
    };
    let mut child = spawn(None).spawn().unwrap();
    // Killed once a good part of the ranges is durable.
    wait_for("durable snapshot ranges", Duration::from_secs(120), || durable_ranges() >= 16).await;
    assert_eq!(send_signal(child.id().unwrap(), "KILL"), 0);
    child.wait().await.unwrap();
    let done_at_kill = durable_ranges();
    let read_at_kill = read_rows(&out);
    assert!(read_at_kill > 8_000, "rows durable at the kill: {read_at_kill}");
    // The slot stays, at its consistent point; the writer goes on meanwhile.
    assert_eq!(
        db.psql("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'killed'").trim(),
        "1"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    // A run that would stream without finishing the snapshot is refused, saying what to do.
    let never = parquet_stream(&dsn, "killed", "public.t_*", &out, &["--snapshot", "never"], None);
    let (code, stdout, err) = run(never).await;
    assert_eq!(code, 2, "{stdout}{err}");
    assert!(err.contains("holds part of a snapshot") && err.contains("--snapshot"), "{err}");

    let mut child = spawn(None).spawn().unwrap();
    let log = crate::cli::capture_stderr(&mut child);
    wait_for("the resumed snapshot to complete", Duration::from_secs(300), || {
        std::fs::read_to_string(&checkpoint)
            .is_ok_and(|c| !c.contains("\"snapshot\"") && !c.contains("\"commit_lsn\":\"0/0\""))
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    tokio::task::spawn_blocking(move || writer.join().unwrap()).await.unwrap();
    assert_eq!(send_signal(child.id().unwrap(), "TERM"), 0);
    child.wait().await.unwrap();
    let log = log.lock().unwrap().clone();
    assert!(
        log.contains("resuming the snapshot")
            && log.contains(&format!("chunks_done={done_at_kill}")),
        "{log}"
    );
    let until = current_lsn(&db);
    let (code, stdout, err) = run(stream(Some(&until))).await;
    assert_eq!(code, 0, "{stdout}{err}");

    // The ranges durable at the kill were not read again: every row was read about once
    // (rows moved by an update between the two snapshots may be read in both).
    let total_rows: usize = 4 * KILL_ROWS as usize;
    let read_in_all = read_rows(&out);
    eprintln!(
        "resumed snapshot: {done_at_kill} ranges ({read_at_kill} rows) durable at the kill; \
         {read_in_all} rows read in all, the tables had {total_rows}"
    );
    assert!(
        read_in_all < total_rows + 5_000 && read_in_all + 5_000 > total_rows,
        "read rows: {read_in_all} (durable at the kill: {read_at_kill}, tables: {total_rows})"
    );
    let replayed = replay(&out, &keys());
    let expected = final_rows(&db, PluginChoice::Wal2Arrow, &keys()).await;
    assert_same(&replayed, &expected, "resumed", false, KILL_ROWS);
    let _ = std::fs::remove_dir_all(&dir);
    sql(&db).await.execute("SELECT pg_drop_replication_slot('killed')", &[]).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_errors_say_what_to_do() {
    let db = Cluster::shared().database("snapshot_errors");
    db.psql(
        "CREATE TABLE open_t (id int PRIMARY KEY); CREATE TABLE secret (id int PRIMARY KEY);
         INSERT INTO open_t VALUES (1); INSERT INTO secret VALUES (1);
         SELECT pg_create_logical_replication_slot('exists', 'wal2arrow');",
    );
    // An initial snapshot of a slot that exists.
    let consumer = Consumer::builder()
        .config(config(&db))
        .slot("exists")
        .snapshot(SnapshotMode::Initial)
        .build()
        .unwrap();
    let e = consumer.start().await.unwrap_err();
    let message = e.to_string();
    assert!(matches!(&e, Error::Client(ClientError::Snapshot(_))), "{e:?}");
    assert!(
        message.contains("already exists") && message.contains("--snapshot never"),
        "{message}"
    );
    // A table the role cannot read.
    let role = format!("{}_reader", db.name());
    db.psql(&format!("CREATE ROLE {role} LOGIN REPLICATION; GRANT SELECT ON open_t TO {role};"));
    let mut cfg = config(&db);
    cfg.user = role.clone();
    let consumer = Consumer::builder()
        .config(cfg)
        .temporary_slot("denied")
        .snapshot(SnapshotMode::Only)
        .preflight(false)
        .build()
        .unwrap();
    let mut stream = consumer.start().await.unwrap();
    let e = loop {
        match tokio::time::timeout(Duration::from_secs(30), stream.next()).await.unwrap() {
            Some(Ok(_)) => {}
            Some(Err(e)) => break e,
            None => panic!("the snapshot should fail"),
        }
    };
    let message = e.to_string();
    assert!(
        message.contains("public.secret") && message.contains("(GRANT SELECT ON public.secret TO "),
        "{message}"
    );
    assert!(!message.contains("open_t"), "{message}");
    stream.close().await;
    sql(&db).await.execute("SELECT pg_drop_replication_slot('exists')", &[]).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_lost_during_its_copy_is_taken_again_whole_from_a_new_slot() {
    let db = Cluster::shared().database("snapshot_lost");
    db.psql(
        "CREATE TABLE big (id int8 PRIMARY KEY, v text);
         INSERT INTO big SELECT g, repeat('x', 100) FROM generate_series(1, 200000) g;",
    );
    // A worker's backend dies (its COPY fails), with a snapshot taken on its own; or the
    // walsender that exported the snapshot of a stream (a temporary slot) does: the workers,
    // which imported it, finish, but the slot the changes would come from is gone.
    let kills = [
        (
            "a worker",
            SnapshotMode::Only,
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE datname = current_database() AND query LIKE 'COPY (SELECT%' \
             AND pid <> pg_backend_pid()",
        ),
        (
            "the exporting connection",
            SnapshotMode::Initial,
            "SELECT count(pg_terminate_backend(active_pid)) FROM pg_replication_slots \
             WHERE slot_name = 'lost' AND active_pid IS NOT NULL",
        ),
    ];
    for (victim, mode, kill) in kills {
        let consumer = Consumer::builder()
            .config(config(&db))
            .temporary_slot("lost")
            .snapshot(mode)
            .snapshot_workers(1)
            .snapshot_chunk_pages(64)
            .batch_rows(1000)
            .buffer_events(1)
            .build()
            .unwrap();
        let mut stream = consumer.start().await.unwrap();
        let (mut killed, mut restarted, mut rows_after, mut started_after) = (false, 0, 0, false);
        let mut complete = false;
        let read = async {
            while let Some(e) = stream.next().await {
                match e.unwrap_or_else(|e| panic!("{victim}: no error reaches the user: {e}")) {
                    Event::Change(c) if restarted > 0 => rows_after += c.num_rows() as u64,
                    Event::Change(_) if !killed => {
                        killed = true;
                        let n: i64 = sql(&db).await.query_one(kill, &[]).await.unwrap().get(0);
                        assert_eq!(n, 1, "{victim}: one backend terminated");
                    }
                    Event::Restarted { from, reason } => {
                        assert!(killed, "{victim}: restarted only after the kill");
                        assert_eq!(from, Lsn::INVALID, "{victim}: from the start");
                        assert!(!reason.is_empty());
                        restarted += 1;
                    }
                    Event::Snapshot(SnapshotEvent::Started { .. }) if restarted > 0 => {
                        started_after = true;
                    }
                    Event::Snapshot(SnapshotEvent::Complete { .. }) => {
                        // The stream streams changes after it (Initial) or ends (Only).
                        complete = true;
                        break;
                    }
                    _ => {}
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(120), read).await.expect("the snapshot ends");
        assert_eq!(restarted, 1, "{victim}: one Restarted");
        assert!(started_after && complete, "{victim}: a new snapshot, copied to its end");
        assert_eq!(rows_after, 200_000, "{victim}: every row, once, after the restart");
        assert_eq!(stream.stats().reconnects, 1, "{victim}");
        stream.close().await;
        let left =
            || db.psql("SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'lost%'");
        wait_for("no slot left", Duration::from_secs(10), || left().trim() == "0").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_recorded_but_not_begun_is_taken_and_one_without_rows_leaves_no_record() {
    let db = Cluster::shared().database("snapshot_fresh");
    db.psql(
        "CREATE TABLE f (id int8 PRIMARY KEY, v text);
         CREATE TABLE e (id int8 PRIMARY KEY, v text);
         INSERT INTO e SELECT g, 'before' || g FROM generate_series(1, 3000) g;",
    );
    let dsn = db.dsn();
    let dir = scratch_dir("snapshot-fresh");
    let stream = |slot: &str, table: &str, out: &std::path::Path, until: &str| {
        run(parquet_stream(&dsn, slot, table, out, &[], Some(until)))
    };
    let checkpoint = |out: &std::path::Path| {
        std::fs::read_to_string(out.join(wal2arrow_sinks::parquet::CHECKPOINT_FILE)).unwrap()
    };

    // A resumable snapshot of an empty table: no rows, no commit — and no record left that
    // would make the next run refuse the slot, which moved on.
    let out_f = dir.join("f");
    let (code, o, e) = stream("fresh_f", "public.f", &out_f, &current_lsn(&db)).await;
    assert_eq!(code, 0, "{o}{e}");
    assert!(!checkpoint(&out_f).contains("\"snapshot\""), "{}", checkpoint(&out_f));
    db.psql("INSERT INTO f VALUES (1, 'one'), (2, 'two'); SELECT pg_switch_wal();");
    let (code, o, e) = stream("fresh_f", "public.f", &out_f, &current_lsn(&db)).await;
    assert_eq!(code, 0, "{o}{e}");

    // A run that recorded its coming snapshot, created the slot and died before recording the
    // snapshot's LSN (made here by hand): the next run copies the tables now, and the slot's
    // changes since its position follow.
    let out_e = dir.join("e");
    let source = format!("{}/fresh_e", db.name());
    ParquetSink::open(&out_e, &source, ParquetOptions::default())
        .unwrap()
        .mark_snapshot_pending()
        .unwrap();
    let (code, o, e) = run(cli(&["slots", "create", "fresh_e", "--dsn", &dsn])).await;
    assert_eq!(code, 0, "{o}{e}");
    db.psql(
        "INSERT INTO e SELECT g, 'after' || g FROM generate_series(3001, 3500) g;
         UPDATE e SET v = 'changed' WHERE id <= 100; DELETE FROM e WHERE id > 3400;",
    );
    let (code, o, e) = stream("fresh_e", "public.e", &out_e, &current_lsn(&db)).await;
    assert_eq!(code, 0, "{o}{e}");
    let keys = HashMap::from([("e", "id"), ("f", "id")]);
    let expected = final_rows(&db, PluginChoice::Wal2Arrow, &keys).await;
    for (table, out) in [("e", &out_e), ("f", &out_f)] {
        let replayed = replay(out, &HashMap::from([(table, "id")]));
        let (got, want) = (&replayed[table], &expected[table]);
        assert_eq!(got, want, "{table}");
    }
    assert_eq!(expected["e"].len(), 3400);
    let _ = std::fs::remove_dir_all(&dir);
    let client = sql(&db).await;
    for slot in ["fresh_f", "fresh_e"] {
        client.execute("SELECT pg_drop_replication_slot($1)", &[&slot]).await.unwrap();
    }
}
