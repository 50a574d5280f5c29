//! Transactions streamed before they commit (`streaming`): a cluster with
//! `logical_decoding_work_mem = 64kB`, so that every transaction of more than a few hundred
//! rows is decoded while in progress.

use std::collections::BTreeSet;
use std::sync::OnceLock;
use std::time::Duration;

use arrow_array::Int64Array;
use arrow_array::cast::AsArray;
use wal2arrow_consumer::{CdcStream, Consumer, Event, InProgress, SnapshotMode};
use wal2arrow_harness::{Cluster, ClusterOptions, TestDb};

use crate::common::{config, sql, wait_for};

/// The cluster of these tests: 64 kB of decoding memory per walsender.
pub(crate) fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        let mut opts = ClusterOptions::with_plugin().expect("the plugin");
        opts.settings.push(("logical_decoding_work_mem".into(), "'64kB'".into()));
        Cluster::start(&opts).expect("a cluster with 64kB of decoding memory")
    })
}

/// The slot's streaming and spill figures: (stream_txns, stream_bytes, spill_txns, spill_bytes).
pub(crate) fn slot_stats(db: &TestDb<'_>, slot: &str) -> (i64, i64, i64, i64) {
    let out = db.psql(&format!(
        "SELECT stream_txns, stream_bytes, spill_txns, spill_bytes \
         FROM pg_stat_replication_slots WHERE slot_name = '{slot}'"
    ));
    let v: Vec<i64> = out.trim().split('|').map(|s| s.trim().parse().unwrap_or(0)).collect();
    match v.as_slice() {
        [a, b, c, d] => (*a, *b, *c, *d),
        _ => (0, 0, 0, 0),
    }
}

fn consumer(db: &TestDb<'_>, slot: &str, tables: &str, mode: InProgress) -> Consumer {
    Consumer::builder()
        .config(config(db))
        .slot(slot)
        .tables([tables])
        .snapshot(SnapshotMode::Never)
        .in_progress(mode)
        .build()
        .unwrap()
}

/// The `id` column's values of a batch.
fn ids(batch: &arrow_array::RecordBatch) -> Vec<i64> {
    let col = batch.column_by_name("id").unwrap();
    match col.data_type() {
        arrow_schema::DataType::Int64 => {
            col.as_any().downcast_ref::<Int64Array>().unwrap().values().to_vec()
        }
        _ => col
            .as_primitive::<arrow_array::types::Int32Type>()
            .values()
            .iter()
            .map(|v| i64::from(*v))
            .collect(),
    }
}

/// The next event, failing the test after `timeout`.
async fn next(stream: &mut CdcStream, timeout: Duration) -> Event {
    tokio::time::timeout(timeout, stream.next())
        .await
        .expect("an event in time")
        .expect("the stream goes on")
        .expect("no error")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_transaction_reaches_the_consumer_before_its_commit_and_the_server_spills_nothing()
{
    let db = cluster().database("streamed_early");
    db.psql("CREATE TABLE big (id int8 PRIMARY KEY, v text)");
    let mut stream =
        consumer(&db, "early", "public.big", InProgress::Deliver).start().await.unwrap();
    let writer = sql(&db).await;
    writer.batch_execute("BEGIN").await.unwrap();
    writer
        .batch_execute("INSERT INTO big SELECT g, 'row ' || g FROM generate_series(1, 2000000) g")
        .await
        .unwrap();
    // Still open: the first batches arrive now, marked as in progress.
    let mut xid = None;
    let mut rows = 0usize;
    let mut seen = Vec::new();
    while rows < 100_000 {
        match next(&mut stream, Duration::from_secs(60)).await {
            Event::Change(c) => {
                let sub = c.in_progress.expect("an in-progress batch");
                assert!(c.commit_lsn.is_invalid(), "no commit LSN before the commit");
                assert_eq!(*xid.get_or_insert(c.xid), c.xid, "one transaction");
                assert_eq!(sub, c.xid, "no subtransaction");
                rows += c.num_rows();
                seen.extend(ids(&c.batch));
            }
            Event::Relation(_) => {}
            other => panic!("before the commit only batches arrive: {other:?}"),
        }
    }
    let (stream_txns, stream_bytes, spill_txns, spill_bytes) = slot_stats(&db, "early");
    assert!(stream_txns >= 1 && stream_bytes > 0, "streamed: {stream_txns} {stream_bytes}");
    assert_eq!((spill_txns, spill_bytes), (0, 0), "nothing spilled on the server");
    writer.batch_execute("COMMIT").await.unwrap();
    let commit = loop {
        match next(&mut stream, Duration::from_secs(120)).await {
            Event::Change(c) => {
                assert_eq!(c.in_progress, Some(c.xid));
                rows += c.num_rows();
                seen.extend(ids(&c.batch));
            }
            Event::StreamCommit(commit) => break commit,
            Event::Relation(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(Some(commit.xid), xid);
    assert!(!commit.commit_lsn.is_invalid() && commit.end_lsn > commit.commit_lsn);
    assert_eq!(rows, 2_000_000);
    assert_eq!(seen, (1..=2_000_000).collect::<Vec<i64>>(), "every row once, in order");
    // Statistics can lag (PostgreSQL 14 reports them through its collector): wait until they
    // count the transaction as decoded, then check that none of it was spilled.
    let total = || {
        let q = "SELECT total_txns FROM pg_stat_replication_slots WHERE slot_name = 'early'";
        db.psql(q).trim().parse::<i64>().unwrap_or(0)
    };
    wait_for("the slot's figures to count the transaction", Duration::from_secs(30), || {
        total() >= 1
    })
    .await;
    let (_, _, spill_txns, spill_bytes) = slot_stats(&db, "early");
    assert_eq!((spill_txns, spill_bytes), (0, 0), "nothing spilled on the server");
    stream.ack(commit.end_lsn);
    stream.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_default_a_streamed_transaction_arrives_whole_at_its_commit_from_memory_and_spill() {
    let db = cluster().database("streamed_default");
    db.psql("CREATE TABLE big (id int8 PRIMARY KEY, v text)");
    let spill = tempfile_dir("stream-spill");
    let mode = InProgress::Buffer { memory: 4 << 20, spill_dir: spill.clone() };
    let mut stream = consumer(&db, "whole", "public.big", mode).start().await.unwrap();
    let writer = sql(&db).await;
    writer.batch_execute("BEGIN").await.unwrap();
    writer
        .batch_execute("INSERT INTO big SELECT g, 'row ' || g FROM generate_series(1, 2000000) g")
        .await
        .unwrap();
    // The server streams it (its figures say so) and the consumer keeps it: nothing arrives.
    wait_for("the server to stream the transaction", Duration::from_secs(60), || {
        slot_stats(&db, "whole").1 > 100 << 20
    })
    .await;
    let early = tokio::time::timeout(Duration::from_secs(2), stream.next()).await;
    assert!(
        matches!(early, Err(_) | Ok(Some(Ok(Event::Relation(_))))),
        "nothing of an uncommitted transaction: {early:?}"
    );
    wait_for("the consumer to spill", Duration::from_secs(60), || {
        stream.stats().streamed.spilled_bytes > 0
    })
    .await;
    assert!(std::fs::read_dir(&spill).unwrap().count() == 1, "one spill file");
    writer.batch_execute("COMMIT").await.unwrap();
    let mut seen = Vec::new();
    let mut begun = false;
    let commit = loop {
        match next(&mut stream, Duration::from_secs(120)).await {
            Event::Begin(b) => {
                assert!(!begun);
                begun = true;
                assert!(!b.commit_lsn.is_invalid());
            }
            Event::Change(c) => {
                assert!(begun && c.in_progress.is_none() && !c.commit_lsn.is_invalid());
                seen.extend(ids(&c.batch));
            }
            Event::Commit(c) => break c,
            Event::Relation(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(seen.len(), 2_000_000);
    assert_eq!(seen, (1..=2_000_000).collect::<Vec<i64>>(), "complete and in order");
    let stats = stream.stats().streamed;
    assert!(stats.transactions == 1 && stats.committed == 1 && stats.blocks > 1, "{stats:?}");
    assert!(stats.peak_memory <= 4 << 20, "memory bounded: {stats:?}");
    assert_eq!(stats.memory, 0, "all handed on");
    assert_eq!(std::fs::read_dir(&spill).unwrap().count(), 0, "spill file removed");
    stream.ack(commit.end_lsn);
    stream.close().await;
    let _ = std::fs::remove_dir_all(&spill);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aborts_savepoints_and_interleaved_streamed_transactions_deliver_exactly_what_committed() {
    let db = cluster().database("streamed_aborts");
    db.psql("CREATE TABLE t (id int8 PRIMARY KEY, tag text)");
    let mut stream =
        consumer(&db, "aborts", "public.t", InProgress::default()).start().await.unwrap();
    let a = sql(&db).await;
    let b = sql(&db).await;
    let insert = |from: i64, to: i64, tag: &str| {
        format!("INSERT INTO t SELECT g, '{tag}' FROM generate_series({from}, {to}) g;")
    };
    // 1. Aborted whole after being streamed.
    a.batch_execute(&format!("BEGIN; {} ", insert(1, 300_000, "aborted"))).await.unwrap();
    wait_for("the aborted transaction to stream", Duration::from_secs(60), || {
        slot_stats(&db, "aborts").0 >= 1
    })
    .await;
    a.batch_execute("ROLLBACK").await.unwrap();
    // 2. Savepoints: one rolled back after streaming, one released, one nested rolled back.
    a.batch_execute(&format!(
        "BEGIN; {} SAVEPOINT s1; {} ROLLBACK TO SAVEPOINT s1; {} SAVEPOINT s2; {} RELEASE s2; \
         SAVEPOINT s3; {} SAVEPOINT s4; {} ROLLBACK TO SAVEPOINT s3; {} COMMIT;",
        insert(1_000_001, 1_100_000, "kept"),
        insert(1_100_001, 1_200_000, "rolled back"),
        insert(1_200_001, 1_300_000, "kept"),
        insert(1_300_001, 1_350_000, "released"),
        insert(1_350_001, 1_400_000, "rolled back"),
        insert(1_400_001, 1_450_000, "rolled back nested"),
        insert(1_450_001, 1_500_000, "kept"),
    ))
    .await
    .unwrap();
    // 3. Two large transactions interleaved; the one begun second commits first.
    a.batch_execute(&format!("BEGIN; {}", insert(2_000_001, 2_100_000, "first begun")))
        .await
        .unwrap();
    b.batch_execute(&format!("BEGIN; {}", insert(3_000_001, 3_100_000, "second begun")))
        .await
        .unwrap();
    a.batch_execute(&insert(2_100_001, 2_200_000, "first begun")).await.unwrap();
    b.batch_execute(&insert(3_100_001, 3_200_000, "second begun")).await.unwrap();
    b.batch_execute("COMMIT").await.unwrap();
    a.batch_execute("COMMIT").await.unwrap();

    let mut txns: Vec<(Vec<i64>, BTreeSet<String>)> = Vec::new();
    let mut open: Option<(Vec<i64>, BTreeSet<String>)> = None;
    while txns.len() < 3 {
        match next(&mut stream, Duration::from_secs(120)).await {
            Event::Begin(_) => open = Some(Default::default()),
            Event::Change(c) => {
                let (ids_seen, tags) = open.as_mut().expect("inside a transaction");
                ids_seen.extend(ids(&c.batch));
                let tag = c.batch.column_by_name("tag").unwrap().as_string::<i32>();
                tags.extend(tag.iter().flatten().map(str::to_owned));
            }
            Event::Commit(c) => {
                txns.push(open.take().expect("a Begin"));
                stream.ack(c.end_lsn);
            }
            Event::Relation(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    let range = |a: i64, b: i64| (a..=b).collect::<Vec<i64>>();
    let savepoints: Vec<i64> =
        [range(1_000_001, 1_100_000), range(1_200_001, 1_350_000), range(1_450_001, 1_500_000)]
            .concat();
    assert_eq!(txns[0].0, savepoints, "exactly the rows that survived, in order");
    assert_eq!(txns[0].1, BTreeSet::from(["kept".to_owned(), "released".to_owned()]));
    assert_eq!(txns[1].0, range(3_000_001, 3_200_000), "the first to commit comes first");
    assert_eq!(txns[2].0, range(2_000_001, 2_200_000));
    let stats = stream.stats().streamed;
    assert_eq!(stats.aborted, 1, "{stats:?}");
    assert!(stats.subtransactions_aborted >= 2, "rolled back after streaming: {stats:?}");
    assert_eq!(stats.committed, 3, "{stats:?}");
    assert_eq!(stats.memory, 0, "{stats:?}");
    let (stream_txns, _, _, spill_bytes) = slot_stats(&db, "aborts");
    assert!(stream_txns >= 4, "all four streamed: {stream_txns}");
    assert_eq!(spill_bytes, 0);
    stream.close().await;
}

/// A fresh directory under the scratch root.
pub(crate) fn tempfile_dir(label: &str) -> std::path::PathBuf {
    let dir = crate::cli::scratch_dir(label);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Every row of `public.<table>` in the Parquet output `dir`: (op, id, v).
fn parquet_changes(dir: &std::path::Path, table: &str) -> Vec<(String, i64, Option<i64>)> {
    use arrow_array::Array;
    use arrow_array::types::UInt8Type;
    let batches = wal2arrow_sinks::parquet::read_dir(&dir.join(format!("public.{table}")))
        .unwrap_or_default();
    let mut out = Vec::new();
    for b in &batches {
        let ops = b.column_by_name("_op").unwrap().as_dictionary::<UInt8Type>();
        let names = ops.values().as_string::<i32>();
        let v = b.column_by_name("v").unwrap().as_primitive::<arrow_array::types::Int64Type>();
        for (r, id) in ids(b).into_iter().enumerate() {
            let op = names.value(ops.keys().value(r) as usize).to_owned();
            out.push((op, id, (!v.is_null(r)).then(|| v.value(r))));
        }
    }
    out
}

/// The peak resident memory (`VmHWM`) of process `pid`, in bytes.
fn peak_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse::<u64>().ok().map(|kb| kb * 1024)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_killed_during_a_streamed_transaction_loses_nothing_and_writes_nothing_twice() {
    use crate::cli::{current_lsn, parquet_stream, run, send_signal};
    let db = cluster().database("streamed_kill");
    db.psql("CREATE TABLE k (id int8 PRIMARY KEY, v int8)");
    let dir = tempfile_dir("streamed-kill");
    let out = dir.join("parquet");
    let dsn = db.dsn();
    let options = ["--roll-seconds", "1", "--stream-memory-mb", "2", "--spill-dir"];
    let spill = dir.to_str().unwrap().to_owned();
    let stream = |until: Option<&str>| {
        let mut args: Vec<&str> = options.to_vec();
        args.push(&spill);
        parquet_stream(&dsn, "killed", "public.k", &out, &args, until)
    };
    let small = |from: i64| {
        format!("INSERT INTO k SELECT g, 0 FROM generate_series({from}, {}) g", from + 99)
    };
    // The slot first (its creation waits for transactions in progress to end).
    let (code, stdout, err) = run(stream(Some(&current_lsn(&db)))).await;
    assert_eq!(code, 0, "{stdout}{err}");
    let mut child = stream(None).spawn().unwrap();
    let writer = sql(&db).await;
    for i in 0..10 {
        writer.batch_execute(&small(1 + i * 100)).await.unwrap();
    }
    // A large transaction, streamed to the consumer while in progress; the consumer is
    // killed before its commit.
    writer
        .batch_execute(
            "BEGIN; INSERT INTO k SELECT g, 0 FROM generate_series(1001, 301000) g;
             UPDATE k SET v = 1 WHERE id <= 500; DELETE FROM k WHERE id BETWEEN 501 AND 600;",
        )
        .await
        .unwrap();
    wait_for("the transaction to be streamed", Duration::from_secs(60), || {
        slot_stats(&db, "killed").1 > 8 << 20
    })
    .await;
    wait_for("the consumer to spill", Duration::from_secs(60), || {
        std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("wal2arrow-xact-"))
    })
    .await;
    assert_eq!(send_signal(child.id().unwrap(), "KILL"), 0);
    child.wait().await.unwrap();
    writer.batch_execute("COMMIT").await.unwrap();
    for i in 0..10 {
        writer.batch_execute(&small(301_001 + i * 100)).await.unwrap();
    }
    // Restarted, it receives the transaction again, whole, and writes it once.
    let until = current_lsn(&db);
    let (code, stdout, err) = run(stream(Some(&until))).await;
    assert_eq!(code, 0, "{stdout}{err}");
    let changes = parquet_changes(&out, "k");
    let mut seen = std::collections::HashSet::new();
    for c in &changes {
        assert!(seen.insert((c.0.clone(), c.1)), "written twice: {c:?}");
    }
    let count = |op: &str| changes.iter().filter(|c| c.0 == op).count();
    assert_eq!(count("insert"), 302_000, "every inserted row once");
    assert_eq!(count("update"), 500);
    assert_eq!(count("delete"), 100);
    assert_eq!(changes.len(), 302_600, "nothing else");
    // And the rows rebuilt from the files are the table's.
    let mut rows = std::collections::BTreeMap::new();
    let mut ordered = changes.clone();
    ordered.sort_by_key(|c| (c.1, c.0 != "insert", c.0 == "delete"));
    for (op, id, v) in ordered {
        match op.as_str() {
            "insert" | "update" => {
                rows.insert(id, v);
            }
            "delete" => {
                rows.remove(&id);
            }
            other => panic!("{other}"),
        }
    }
    let table: std::collections::BTreeMap<i64, Option<i64>> = sql(&db)
        .await
        .query("SELECT id, v FROM k", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get::<_, i64>(0), r.get::<_, Option<i64>>(1)))
        .collect();
    assert_eq!(rows, table);
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("wal2arrow-xact-"))
        .collect();
    assert!(left.is_empty(), "the killed run's spill file is removed by the next: {left:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_five_million_row_transaction_passes_through_a_consumer_in_bounded_memory() {
    use crate::cli::{current_lsn, parquet_stream};
    let db = cluster().database("streamed_rss");
    db.psql("CREATE TABLE k (id int8 PRIMARY KEY, v int8)");
    let dir = tempfile_dir("streamed-rss");
    let out = dir.join("parquet");
    let dsn = db.dsn();
    // The slot first, so that the stream below receives the transaction.
    let (code, stdout, err) = crate::cli::run(parquet_stream(
        &dsn,
        "rss",
        "public.k",
        &out,
        &[],
        Some(&current_lsn(&db)),
    ))
    .await;
    assert_eq!(code, 0, "{stdout}{err}");
    db.psql("INSERT INTO k SELECT g, g FROM generate_series(1, 5000000) g");
    let until = current_lsn(&db);
    let spill = dir.join("spill");
    std::fs::create_dir_all(&spill).unwrap();
    let args = ["--spill-dir", spill.to_str().unwrap()];
    let mut child =
        parquet_stream(&dsn, "rss", "public.k", &out, &args, Some(&until)).spawn().unwrap();
    let pid = child.id().unwrap();
    let mut peak = 0;
    let mut spilled = false;
    let status = loop {
        if let Some(p) = peak_rss(pid) {
            peak = peak.max(p);
        }
        spilled |= std::fs::read_dir(&spill).unwrap().next().is_some();
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success());
    let rows = parquet_changes(&out, "k").len();
    assert_eq!(rows, 5_000_000);
    let (stream_txns, _, _, spill_bytes) = slot_stats(&db, "rss");
    assert!(stream_txns >= 1, "streamed");
    assert_eq!(spill_bytes, 0);
    assert!(spilled, "past its 48 MiB the consumer spilled the transaction");
    assert_eq!(std::fs::read_dir(&spill).unwrap().count(), 0, "and removed the file");
    eprintln!("a 5,000,000-row transaction: consumer peak RSS {} MB", peak >> 20);
    assert!(peak < 200 << 20, "peak RSS {} MB", peak >> 20);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_truncates_and_schema_changes_inside_a_streamed_transaction_keep_their_place() {
    let db = cluster().database("streamed_kinds");
    db.psql(
        "CREATE TABLE t (id int8 PRIMARY KEY, tag text);
         CREATE TABLE u (id int8 PRIMARY KEY);
         INSERT INTO u SELECT generate_series(1, 10);",
    );
    let mut stream =
        consumer(&db, "kinds", "public.*", InProgress::default()).start().await.unwrap();
    sql(&db)
        .await
        .batch_execute(
            "BEGIN;
             INSERT INTO t SELECT g, 'a' FROM generate_series(1, 100000) g;
             SELECT pg_logical_emit_message(true, 'mark', 'between');
             ALTER TABLE t ADD COLUMN extra int4 DEFAULT 7;
             INSERT INTO t SELECT g, 'b', g FROM generate_series(100001, 200000) g;
             TRUNCATE u;
             INSERT INTO u SELECT generate_series(1, 3);
             COMMIT;",
        )
        .await
        .unwrap();
    // In order: t's first rows (two columns), the message, t's rows with the new column, the
    // truncate of u, u's new rows.
    let mut seen: Vec<String> = Vec::new();
    let mut t_rows = (0usize, 0usize);
    let mut u_schema = false;
    loop {
        match next(&mut stream, Duration::from_secs(120)).await {
            Event::Begin(_) => seen.push("begin".into()),
            // A table's schema comes before its first event (u's before t's last rows, which
            // are written out when the truncate comes, as in any transaction).
            Event::Relation(r) if r.qualified_name == "public.u" => u_schema = true,
            Event::Relation(r) => {
                let n = r.table_columns();
                seen.push(format!("schema {} {n}", r.qualified_name));
            }
            Event::Change(c) if c.table() == "public.t" => {
                if c.relation.table_columns() == 2 {
                    assert_eq!(t_rows.1, 0, "old-layout rows after new-layout ones");
                    t_rows.0 += c.num_rows();
                } else {
                    let extra = c.batch.column_by_name("extra").expect("the new column");
                    assert_eq!(extra.null_count(), 0);
                    t_rows.1 += c.num_rows();
                }
                if seen.last().map(String::as_str) != Some("rows public.t") {
                    seen.push("rows public.t".into());
                }
            }
            Event::Change(c) => seen.push(format!("rows {} {}", c.table(), c.num_rows())),
            Event::Message(m) => {
                assert!(m.transactional);
                seen.push(format!("message {}", m.prefix));
            }
            Event::Truncate(tr) => {
                assert!(u_schema, "u's schema before its truncate");
                let names: Vec<&str> =
                    tr.relations.iter().map(|r| r.qualified_name.as_str()).collect();
                seen.push(format!("truncate {}", names.join(",")));
            }
            Event::Commit(c) => {
                stream.ack(c.end_lsn);
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(t_rows, (100_000, 100_000));
    let expected = [
        "begin",
        "schema public.t 2",
        "rows public.t",
        "message mark",
        "schema public.t 3",
        "rows public.t",
        "truncate public.u",
        "rows public.u 3",
    ];
    assert_eq!(seen, expected, "{seen:#?}");
    assert!(stream.stats().streamed.committed == 1, "it was streamed");
    stream.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivered_in_progress_a_rolled_back_savepoint_is_reported_for_exactly_its_batches() {
    let db = cluster().database("streamed_deliver_abort");
    db.psql("CREATE TABLE t (id int8 PRIMARY KEY)");
    let mut stream =
        consumer(&db, "deliver", "public.t", InProgress::Deliver).start().await.unwrap();
    sql(&db)
        .await
        .batch_execute(
            "BEGIN;
             INSERT INTO t SELECT generate_series(1, 100000);
             SAVEPOINT s;
             INSERT INTO t SELECT generate_series(100001, 200000);
             ROLLBACK TO SAVEPOINT s;
             INSERT INTO t SELECT generate_series(200001, 250000);
             COMMIT;
             BEGIN;
             INSERT INTO t SELECT generate_series(300001, 400000);
             ROLLBACK;",
        )
        .await
        .unwrap();
    // Stage by (sub)transaction, as an application would. A transaction the server decided
    // not to stream comes as an ordinary one (Begin, batches, Commit): taken whole.
    let mut staged: Vec<(u32, u32, Vec<i64>)> = Vec::new();
    let mut ordinary: Vec<i64> = Vec::new();
    let mut committed: Vec<i64> = Vec::new();
    // Handles one event; how many rows have committed.
    let mut handle = |event: Event, stream: &CdcStream| {
        match event {
            Event::Change(c) => match c.in_progress {
                Some(sub) => staged.push((c.xid, sub, ids(&c.batch))),
                None => ordinary.extend(ids(&c.batch)),
            },
            Event::Begin(_) => ordinary.clear(),
            Event::Commit(c) => {
                committed.append(&mut ordinary);
                stream.ack(c.end_lsn);
            }
            Event::StreamAbort { xid, subxid } if xid == subxid => {
                assert!(staged.iter().any(|s| s.0 == xid));
                staged.retain(|s| s.0 != xid);
            }
            Event::StreamAbort { xid, subxid } => {
                let before = staged.len();
                staged.retain(|s| !(s.0 == xid && s.1 == subxid));
                assert!(staged.len() < before, "the savepoint's batches were delivered");
            }
            Event::StreamCommit(c) => {
                for (_, _, ids) in staged.iter().filter(|s| s.0 == c.xid) {
                    committed.extend(ids);
                }
                staged.retain(|s| s.0 != c.xid);
                stream.ack(c.end_lsn);
            }
            Event::Relation(_) => {}
            other => panic!("unexpected {other:?}"),
        }
        committed.len()
    };
    let mut done = 0;
    while done < 150_000 {
        let event = next(&mut stream, Duration::from_secs(120)).await;
        done = handle(event, &stream);
    }
    // The aborted transaction: whatever of it was streamed is followed by its abort.
    while let Ok(Some(Ok(event))) =
        tokio::time::timeout(Duration::from_secs(5), stream.next()).await
    {
        handle(event, &stream);
    }
    let expected: Vec<i64> = (1..=100_000).chain(200_001..=250_000).collect();
    assert_eq!(committed, expected, "exactly the surviving rows, in order");
    assert!(staged.is_empty());
    stream.close().await;
}
