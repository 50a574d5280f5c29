//! Backfills while streaming (issue 13): a table's existing rows arrive in chunks between the
//! stream's changes while a writer keeps changing them, and replaying the stream gives the
//! table's final rows exactly; a backfill is asked for by a logical message, by the builder,
//! by the stream handle and by `wal2arrow snapshot --tables`; a table without a key is refused
//! with what to do.

use std::collections::BTreeMap;
use std::time::Duration;

use wal2arrow_consumer::{Consumer, Event, PluginChoice, SnapshotEvent, SnapshotMode};
use wal2arrow_harness::{Cluster, TestDb};

use crate::cli::{cli, run};
use crate::common::{config, rows, sql};

type Rows = BTreeMap<i64, Vec<Option<String>>>;

/// Applies a change batch's rows to `state` (keyed by the first column).
fn apply(state: &mut Rows, batch: &arrow_array::RecordBatch) {
    for (op, values, missing) in rows(batch) {
        let key: i64 = values[0].as_ref().unwrap().parse().unwrap();
        match op.as_str() {
            "delete" | "update_before" => {
                state.remove(&key);
            }
            _ => {
                assert!(missing.is_empty(), "no TOAST here: {missing:?}");
                state.insert(key, values);
            }
        }
    }
}

async fn final_rows(db: &TestDb<'_>) -> Rows {
    let client = sql(db).await;
    client
        .query("SELECT id::text, v::text, note FROM items ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| {
            let key: String = r.get(0);
            (key.parse().unwrap(), vec![Some(key), r.get(1), r.get(2)])
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_under_concurrent_writes_replays_to_the_final_rows() {
    backfill_under_writes("backfill", false, PluginChoice::Wal2Arrow).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_through_the_wal2json_fallback_replays_to_the_final_rows() {
    if !wal2arrow_harness::wal2json_installed() {
        eprintln!("skipped: this server has no wal2json");
        return;
    }
    backfill_under_writes("backfill_json", false, PluginChoice::Wal2Json).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_cut_by_a_lost_connection_reads_its_unacknowledged_chunks_again() {
    backfill_under_writes("backfill_cut", true, PluginChoice::Wal2Arrow).await;
}

/// 20,000 rows backfilled in chunks of 700 while a writer changes, deletes, re-keys and adds
/// rows; with `cut`, the replication connection is killed after the fifth chunk.
async fn backfill_under_writes(label: &str, cut: bool, plugin: PluginChoice) {
    let db = Cluster::shared().database(label);
    db.psql(
        "CREATE TABLE items (id int8 PRIMARY KEY, v int, note text);
         INSERT INTO items SELECT g, g % 97, 'row ' || g FROM generate_series(1, 20000) g;
         CREATE TABLE done (id int PRIMARY KEY);",
    );
    let consumer = Consumer::builder()
        .config(config(&db))
        .slot(format!("{label}_slot"))
        .output_plugin(plugin)
        .snapshot(SnapshotMode::Never)
        .backfill(["public.items"])
        .backfill_chunk_rows(700)
        .heartbeat_interval(None)
        .build()
        .unwrap();
    let mut stream = consumer.start().await.unwrap();
    // A writer changing rows everywhere in the key space while the chunks are read: updates,
    // key changes, deletes, inserts of new keys and of keys deleted before.
    let writer_db = db.dsn();
    let writer = tokio::spawn(async move {
        let client = wal2arrow_consumer::sql_client(
            &wal2arrow_consumer::Config::from_dsn(&writer_db).unwrap(),
        )
        .await
        .unwrap();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % 20_000) as i64 + 1
        };
        for round in 0..300 {
            let (a, b, c) = (next(), next(), next());
            client
                .batch_execute(&format!(
                    "BEGIN;
                     UPDATE items SET v = v + 1000, note = 'upd {round}' WHERE id = {a};
                     DELETE FROM items WHERE id = {b};
                     UPDATE items SET id = id + 100000 WHERE id = {c};
                     INSERT INTO items VALUES ({b}, -{round}, 'back {round}') ON CONFLICT (id) DO NOTHING;
                     INSERT INTO items VALUES ({} , {round}, 'new {round}');
                     COMMIT;",
                    200_000 + round
                ))
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        client.batch_execute("INSERT INTO done VALUES (1)").await.unwrap();
    });

    let mut state = Rows::new();
    let (mut started, mut done_rows, mut writer_done) = (0, None, false);
    let (mut chunks, mut restarts) = (0, 0);
    let read = async {
        while done_rows.is_none() || !writer_done {
            let event = stream.next().await.expect("open").expect("no error");
            match &event {
                Event::Change(c) if c.table() == "public.done" => writer_done = true,
                Event::Change(c) => {
                    assert_eq!(c.table(), "public.items");
                    apply(&mut state, &c.batch);
                    if rows(&c.batch)[0].0 == "read" {
                        chunks += 1;
                        if cut && chunks == 5 {
                            db.psql(&format!(
                                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots \
                                 WHERE slot_name = '{label}_slot'"
                            ));
                        }
                    }
                }
                // Transactions from `from` on come again; applying them again is harmless
                // (every row is applied by key).
                Event::Restarted { .. } => restarts += 1,
                Event::Snapshot(SnapshotEvent::BackfillStarted { relation }) => {
                    assert_eq!(relation.qualified_name, "public.items");
                    started += 1;
                }
                Event::Snapshot(SnapshotEvent::BackfillDone { rows, .. }) => {
                    done_rows = Some(*rows)
                }
                Event::Commit(c) => stream.ack(c.end_lsn),
                _ => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(180), read).await.expect("backfill and writer end");
    writer.await.unwrap();
    assert_eq!(restarts, usize::from(cut), "one reconnection when cut");
    assert!(started >= 1);
    let expected = final_rows(&db).await;
    assert_eq!(state.len(), expected.len(), "as many rows");
    assert!(state == expected, "replaying the stream gives the table's rows");
    // The backfill read about every row once (rows changed while their chunk was read are left
    // to the stream, so a few less).
    let copied = done_rows.unwrap();
    assert!((19_000..=20_300).contains(&copied), "{copied} rows backfilled");
    stream.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfills_are_asked_for_by_the_handle_and_the_command_line_and_keyless_tables_refused() {
    let db = Cluster::shared().database("backfill_ask");
    db.psql(
        "CREATE TABLE a (id int PRIMARY KEY, v text);
         INSERT INTO a SELECT g, 'a' || g FROM generate_series(1, 50) g;
         CREATE TABLE b (k text, n int, v int, PRIMARY KEY (k, n));
         INSERT INTO b SELECT 'k' || (g % 3), g, g FROM generate_series(1, 40) g;
         CREATE TABLE keyless (v int); INSERT INTO keyless VALUES (1);
         CREATE TABLE no_identity (id int PRIMARY KEY); ALTER TABLE no_identity REPLICA IDENTITY NOTHING;",
    );
    let consumer = Consumer::builder()
        .config(config(&db))
        .slot("backfill_ask_slot")
        .snapshot(SnapshotMode::Never)
        .backfill_chunk_rows(7)
        .heartbeat_interval(None)
        .build()
        .unwrap();
    let mut stream = consumer.start().await.unwrap();
    // The handle.
    let asked = stream.backfill(&["public.a".to_owned()]).await.unwrap();
    assert_eq!(asked, ["public.a"]);
    // The command line, for a table with a two-column key.
    let (code, out, err) = run(cli(&[
        "snapshot",
        "--dsn",
        &db.dsn(),
        "--slot",
        "backfill_ask_slot",
        "--tables",
        "public.b",
    ]))
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("public.b"), "{out}");
    // A signal for another slot is not for this stream.
    let (code, _, err) =
        run(cli(&["snapshot", "--dsn", &db.dsn(), "--slot", "other_slot", "--tables", "public.a"]))
            .await;
    assert_eq!(code, 0, "{err}");
    // Keyless: refused before anything is asked.
    let e = stream.backfill(&["public.keyless".to_owned()]).await.unwrap_err().to_string();
    assert!(e.contains("cannot backfill public.keyless") && e.contains("primary key"), "{e}");
    // Its deletes would carry no key to recognise them by.
    let e = stream.backfill(&["public.no_identity".to_owned()]).await.unwrap_err().to_string();
    assert!(e.contains("cannot backfill public.no_identity"), "{e}");
    let (code, _, err) =
        run(cli(&["snapshot", "--dsn", &db.dsn(), "--slot", "x", "--tables", "public.keyless"]))
            .await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("needs a primary key"), "{err}");

    let mut got: BTreeMap<String, Vec<Vec<Option<String>>>> = BTreeMap::new();
    let mut done = Vec::new();
    let read = async {
        while done.len() < 2 {
            match stream.next().await.expect("open").expect("no error") {
                Event::Change(c) => {
                    for (op, values, _) in rows(&c.batch) {
                        assert_eq!(op, "read");
                        got.entry(c.table().to_owned()).or_default().push(values);
                    }
                }
                Event::Snapshot(SnapshotEvent::BackfillDone { relation, rows }) => {
                    done.push((relation.qualified_name.clone(), rows));
                }
                Event::Message(m) => panic!("a watermark or signal was delivered: {}", m.prefix),
                _ => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), read).await.expect("both backfills end");
    assert_eq!(done, [("public.a".to_owned(), 50), ("public.b".to_owned(), 40)]);
    // In key order, every row once.
    let a: Vec<i64> =
        got["public.a"].iter().map(|v| v[0].as_ref().unwrap().parse().unwrap()).collect();
    assert_eq!(a, (1..=50).collect::<Vec<_>>());
    let b: Vec<(String, i64)> = got["public.b"]
        .iter()
        .map(|v| (v[0].clone().unwrap(), v[1].as_ref().unwrap().parse().unwrap()))
        .collect();
    let mut sorted = b.clone();
    sorted.sort();
    assert_eq!(b, sorted);
    assert_eq!(b.len(), 40);
    stream.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncate_during_a_backfill_ends_it_and_no_row_read_before_comes_after() {
    let db = Cluster::shared().database("backfill_truncate");
    db.psql(
        "CREATE TABLE t (id int PRIMARY KEY, v text);
         INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 3000) g;",
    );
    let consumer = Consumer::builder()
        .config(config(&db))
        .slot("backfill_truncate_slot")
        .snapshot(SnapshotMode::Never)
        .backfill(["public.t"])
        .backfill_chunk_rows(10)
        .heartbeat_interval(None)
        .build()
        .unwrap();
    let mut stream = consumer.start().await.unwrap();
    let (mut read_chunks, mut truncated, mut after_truncate, mut done) = (0, false, 0, None);
    let read = async {
        while done.is_none() {
            match stream.next().await.expect("open").expect("no error") {
                Event::Change(c) => {
                    assert!(rows(&c.batch).iter().all(|r| r.0 == "read"));
                    if truncated {
                        after_truncate += c.num_rows();
                    }
                    read_chunks += 1;
                    if read_chunks == 3 {
                        db.psql("TRUNCATE t");
                    }
                }
                Event::Truncate(_) => truncated = true,
                Event::Snapshot(SnapshotEvent::BackfillDone { rows, .. }) => {
                    assert!(truncated, "the backfill ends with the truncate, not before");
                    done = Some(rows);
                }
                _ => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), read).await.expect("the backfill ends");
    assert_eq!(after_truncate, 0, "no row read before the TRUNCATE comes after it");
    assert!(done.unwrap() < 3000);
    stream.close().await;
}

/// The tables the Parquet output at `dir` says it holds.
fn tables_held(dir: &std::path::Path) -> Vec<String> {
    let path = dir.join(wal2arrow_sinks::parquet::CHECKPOINT_FILE);
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let Some(list) = text.split("\"tables_held\":[").nth(1) else { return Vec::new() };
    let list = list.split(']').next().unwrap_or_default();
    list.split(',').map(|t| t.trim_matches('"').to_owned()).filter(|t| !t.is_empty()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_that_start_matching_later_are_backfilled_while_writes_continue() {
    use std::collections::HashMap;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use crate::cli::{current_lsn, parquet_stream, scratch_dir, send_signal};
    use crate::common::wait_for;
    use crate::random_dml::{final_rows, read_rows, replay};

    let db = Cluster::shared().database("backfill_new");
    db.psql(
        "CREATE TABLE a (id int8 PRIMARY KEY, v int4, note text);
         INSERT INTO a SELECT g, g, 'a' || g FROM generate_series(1, 20000) g;
         CREATE TABLE b (id int8 PRIMARY KEY, v int4, note text);
         INSERT INTO b SELECT g, g, 'b' || g FROM generate_series(1, 30000) g;
         CREATE SCHEMA hidden;
         CREATE TABLE hidden.c (id int8 PRIMARY KEY, v int4, note text);
         INSERT INTO hidden.c SELECT g, g, 'c' || g FROM generate_series(1, 10000) g;",
    );
    let dir = scratch_dir("backfill-new");
    let dsn = db.dsn();
    let stream = |tables: &str, until: Option<&str>| {
        parquet_stream(&dsn, "grow", tables, &dir, &["--roll-seconds", "1"], until)
    };
    let spawn = |tables: &str| stream(tables, None).spawn().unwrap();
    // A writer on a and b throughout.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, name) = (Arc::clone(&stop), db.name().to_owned());
        std::thread::spawn(move || {
            let mut t: u64 = 0;
            while !stop.load(Ordering::SeqCst) {
                let id = 1 + (t * 7919) % 30000;
                let sql = format!(
                    "BEGIN; UPDATE a SET v = v + 1, note = 'w{t}' WHERE id = {id};
                     UPDATE b SET v = -v WHERE id = {id};
                     UPDATE b SET id = id + 100000 WHERE id = {};
                     DELETE FROM b WHERE id = {};
                     INSERT INTO b VALUES ({}, {t}, 'new'); COMMIT;",
                    1 + (t * 31) % 30000,
                    1 + (t * 17) % 30000,
                    200_000 + t
                );
                Cluster::shared().psql(&name, &sql).unwrap();
                t += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    // The first run captures a only: its snapshot, then its changes.
    let mut child = spawn("public.a");
    wait_for("a held", Duration::from_secs(60), || tables_held(&dir) == ["public.a"]).await;
    assert_eq!(send_signal(child.id().unwrap(), "TERM"), 0);
    child.wait().await.unwrap();

    // The second captures public.*: b, already there, is backfilled at start; hidden.c, moved
    // in while it streams, when the stream first shows it; d, created meanwhile, is not read.
    let mut child = spawn("public.*");
    wait_for("b held", Duration::from_secs(120), || {
        tables_held(&dir).contains(&"public.b".to_owned())
    })
    .await;
    db.psql(
        "ALTER TABLE hidden.c SET SCHEMA public; UPDATE c SET v = -1 WHERE id = 5;
         CREATE TABLE d (id int8 PRIMARY KEY, v int4, note text);
         INSERT INTO d SELECT g, g, 'd' || g FROM generate_series(1, 500) g;",
    );
    wait_for("c and d held", Duration::from_secs(120), || {
        let held = tables_held(&dir);
        held.contains(&"public.c".to_owned()) && held.contains(&"public.d".to_owned())
    })
    .await;
    db.psql("UPDATE c SET note = 'after' WHERE id <= 10; DELETE FROM d WHERE id = 1;");
    stop.store(true, Ordering::SeqCst);
    tokio::task::spawn_blocking(move || writer.join().unwrap()).await.unwrap();
    assert_eq!(send_signal(child.id().unwrap(), "TERM"), 0);
    child.wait().await.unwrap();
    let until = current_lsn(&db);
    let (code, stdout, err) = run(stream("public.*", Some(&until))).await;
    assert_eq!(code, 0, "{stdout}{err}");

    // a was read once (its snapshot), b and c once each (their backfills), d never.
    let read: Vec<usize> = ["a", "b", "c", "d"].iter().map(|t| read_rows(&dir, t)).collect();
    assert_eq!(read[0], 20_000, "a: {read:?}");
    assert!(read[1] > 25_000 && read[1] <= 40_000, "b: {read:?}");
    assert!(read[2] > 9_000 && read[2] <= 10_000, "c: {read:?}");
    assert_eq!(read[3], 0, "d: {read:?}");
    let keys = HashMap::from([("a", "id"), ("b", "id"), ("c", "id"), ("d", "id")]);
    let replayed = replay(&dir, &keys);
    let expected = final_rows(&db, PluginChoice::Wal2Arrow, &keys).await;
    for table in ["a", "b", "c", "d"] {
        let (got, want) = (&replayed[table], &expected[table]);
        for (k, row) in want {
            assert_eq!(got.get(k), Some(row), "{table} key {k}");
        }
        assert_eq!(got.len(), want.len(), "{table}: no row too many");
    }
    let _ = std::fs::remove_dir_all(&dir);
    sql(&db).await.execute("SELECT pg_drop_replication_slot('grow')", &[]).await.unwrap();
}
