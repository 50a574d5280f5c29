//! Delivery promises that once failed (issue 11): file sinks restarted on the same output keep
//! what earlier runs wrote, `--until-lsn` ends as soon as the server's position passes it, an
//! UPDATE's images never straddle two batches (plugin and fallback cut batches alike), an
//! oversized message is a definite error before it is allocated, and heartbeats never hold up
//! the replication loop's status updates.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arrow_array::cast::AsArray;
use arrow_array::types::{UInt8Type, UInt64Type};
use tokio::io::AsyncWriteExt;
use wal2arrow_client::Error as ClientError;
use wal2arrow_consumer::{
    Consumer, Event, Lsn, PluginChoice, PluginOptions, ReplicationClient, SnapshotMode,
};
use wal2arrow_harness::{Cluster, TestDb};
use wal2arrow_sinks::ipc::read_segments;

use crate::cli::{cli, current_lsn, run, scratch_dir, send_signal};
use crate::common::{config, confirmed_flush, read_events, read_txns, sql, wait_for};

/// A change as a file sink identifies it: (commit LSN, change LSN, event type) — an update's
/// old and new image are one `update`.
type ChangeKey = (u64, u64, String);

/// Every change a reference slot holds up to the logical message `end`, as keys.
async fn reference_changes(db: &TestDb<'_>, slot: &str, tables: &str) -> BTreeSet<ChangeKey> {
    let options = PluginOptions {
        tables: wal2arrow_schema::TableFilter::parse_list(tables).unwrap(),
        ..PluginOptions::default()
    };
    let mut stream = ReplicationClient::connect(&config(db))
        .await
        .unwrap()
        .start(slot, Lsn::INVALID, &options)
        .await
        .unwrap();
    let events = read_events(
        &mut stream,
        Duration::from_secs(60),
        |e| matches!(e.last(), Some(Event::Message(m)) if m.prefix == "end"),
    )
    .await;
    let mut out = BTreeSet::new();
    for e in &events {
        let Event::Change(c) = e else { continue };
        let ops = c.batch.column_by_name("_op").unwrap().as_dictionary::<UInt8Type>();
        let names = ops.values().as_string::<i32>();
        let lsns = c.batch.column_by_name("_lsn").unwrap().as_primitive::<UInt64Type>();
        for row in 0..c.num_rows() {
            let op = names.value(ops.keys().value(row) as usize);
            if op != "update_before" {
                out.insert((c.commit_lsn.0, lsns.value(row), op.to_owned()));
            }
        }
    }
    stream.close().await.unwrap();
    out
}

/// The value of `"key":"…"` in a JSON line.
fn json_field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let at = line.find(&format!("\"{key}\":\""))? + key.len() + 4;
    Some(&line[at..at + line[at..].find('"')?])
}

fn jsonl_changes(text: &str) -> (BTreeSet<ChangeKey>, usize) {
    let mut set = BTreeSet::new();
    let mut lines = 0;
    for line in text.lines() {
        let kind = json_field(line, "event_type").expect("every line is an event");
        if !matches!(kind, "insert" | "update" | "delete") {
            continue;
        }
        lines += 1;
        let lsn = |k| json_field(line, k).unwrap().parse::<Lsn>().unwrap().0;
        set.insert((lsn("commit_lsn"), lsn("lsn"), kind.to_owned()));
    }
    (set, lines)
}

fn ipc_changes(bytes: &[u8]) -> (BTreeSet<ChangeKey>, usize) {
    let mut set = BTreeSet::new();
    let mut rows = 0;
    for b in read_segments(bytes).unwrap() {
        let Some(ops) = b.column_by_name("_op") else { continue };
        let ops = ops.as_dictionary::<UInt8Type>();
        let names = ops.values().as_string::<i32>();
        let lsns = b.column_by_name("_lsn").unwrap().as_primitive::<UInt64Type>();
        let commits = b.column_by_name("_commit_lsn").unwrap().as_primitive::<UInt64Type>();
        for row in 0..b.num_rows() {
            let op = names.value(ops.keys().value(row) as usize);
            if op != "update_before" {
                rows += 1;
                set.insert((commits.value(row), lsns.value(row), op.to_owned()));
            }
        }
    }
    (set, rows)
}

/// A JSON-lines or IPC stream killed with SIGKILL after it acknowledged transactions, then
/// restarted on the same `--out`: the file still holds what the first run wrote (the slot will
/// not send it again), and with the second run's output it holds every change — copies of an
/// unacknowledged tail allowed, identified by their positions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_sinks_restarted_on_the_same_out_keep_what_earlier_runs_wrote() {
    for sink in ["jsonl", "ipc"] {
        let db = Cluster::shared().database(&format!("restart_{sink}"));
        db.psql(&format!(
            "CREATE TABLE r (id int PRIMARY KEY, v text);
             SELECT pg_create_logical_replication_slot('restart_{sink}', 'wal2arrow');
             SELECT pg_copy_logical_replication_slot('restart_{sink}', 'restart_{sink}_ref');"
        ));
        let out = scratch_dir(&format!("restart.{sink}"));
        let dsn = db.dsn();
        let slot = format!("restart_{sink}");
        let args = |until: Option<&str>| {
            let mut a: Vec<String> = [
                "stream", "--dsn", &dsn, "--slot", &slot, "--tables", "public.r", "--sink", sink,
                "--out",
            ]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
            a.push(out.to_str().unwrap().to_owned());
            a.extend(["--progress".to_owned(), "never".to_owned()]);
            if let Some(u) = until {
                a.extend(["--until-lsn".to_owned(), u.to_owned()]);
            }
            a
        };
        let name = db.name().to_owned();
        let workload = std::thread::spawn(move || {
            for t in 0..80u32 {
                Cluster::shared()
                    .psql(
                        &name,
                        &format!(
                            "BEGIN; INSERT INTO r SELECT g, 'v' FROM generate_series({0}, {0} + 4) g;
                             UPDATE r SET v = 'u{t}' WHERE id = {0}; DELETE FROM r WHERE id = {0} + 1;
                             COMMIT;",
                            t * 5
                        ),
                    )
                    .unwrap();
                std::thread::sleep(Duration::from_millis(40));
            }
        });
        let argv = args(None);
        let mut child = cli(&argv.iter().map(String::as_str).collect::<Vec<_>>()).spawn().unwrap();
        let slot_position = || confirmed_flush(&db, &slot);
        let start = slot_position();
        wait_for("an acknowledgement", Duration::from_secs(30), || slot_position() != start).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!workload.is_finished(), "killed in the middle of the workload");
        assert_eq!(send_signal(child.id().unwrap(), "KILL"), 0);
        child.wait().await.unwrap();
        let acked = slot_position();
        let first_run = std::fs::read(&out).unwrap();
        assert!(!first_run.is_empty(), "{sink}: the first run wrote");

        tokio::task::spawn_blocking(move || workload.join().unwrap()).await.unwrap();
        db.psql("SELECT pg_logical_emit_message(false, 'end', '')");
        let until = current_lsn(&db);
        let argv = args(Some(&until));
        let (code, stdout, stderr) =
            run(cli(&argv.iter().map(String::as_str).collect::<Vec<_>>())).await;
        assert_eq!(code, 0, "{sink}: {stdout}{stderr}");

        let expected = reference_changes(&db, &format!("restart_{sink}_ref"), "public.r").await;
        assert_eq!(expected.len(), 80 * 7, "{sink}: 5 inserts, an update and a delete each");
        let bytes = std::fs::read(&out).unwrap();
        let (got, copies) = if sink == "jsonl" {
            jsonl_changes(&String::from_utf8(bytes).unwrap())
        } else {
            ipc_changes(&bytes)
        };
        let acked_changes: Vec<_> = expected.iter().filter(|k| Lsn(k.0) < acked).collect();
        assert!(!acked_changes.is_empty(), "{sink}: the first run acknowledged changes");
        let lost: Vec<_> = acked_changes.iter().filter(|k| !got.contains(**k)).take(3).collect();
        assert!(lost.is_empty(), "{sink}: acknowledged changes gone from the file: {lost:?}");
        assert_eq!(got, expected, "{sink}: every change, at least once");
        assert!(copies >= expected.len());
        let _ = std::fs::remove_file(&out);
        let client = sql(&db).await;
        for s in [slot.clone(), format!("{slot}_ref")] {
            client.execute("SELECT pg_drop_replication_slot($1)", &[&s]).await.unwrap();
        }
    }
}

/// `--until-lsn` just past a non-transactional message (no commit reaches it): the command
/// ends as soon as the server's position passes it, not after `--roll-seconds` (60 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn until_lsn_past_the_last_commit_ends_as_soon_as_the_server_passes_it() {
    let db = Cluster::shared().database("until_message");
    db.psql(
        "CREATE TABLE u (id int PRIMARY KEY);
         SELECT pg_create_logical_replication_slot('until_message', 'wal2arrow');
         INSERT INTO u VALUES (1), (2);
         SELECT pg_logical_emit_message(false, 'marker', 'x');",
    );
    let until = current_lsn(&db);
    let dir = scratch_dir("until");
    let started = std::time::Instant::now();
    let (code, out, err) = run(cli(&[
        "stream",
        "--dsn",
        &db.dsn(),
        "--slot",
        "until_message",
        "--sink",
        "parquet",
        "--out",
        dir.to_str().unwrap(),
        "--until-lsn",
        &until,
        "--progress",
        "never",
    ]))
    .await;
    let took = started.elapsed();
    assert_eq!(code, 0, "{out}{err}");
    assert!(err.contains("reached --until-lsn"), "{err}");
    assert!(took < Duration::from_secs(20), "ended after {took:?}, not after the roll interval");
    let until: Lsn = until.parse().unwrap();
    assert!(confirmed_flush(&db, "until_message") >= until, "acknowledged up to --until-lsn");
    let rows: usize = wal2arrow_sinks::parquet::read_dir(&dir.join("public.u"))
        .unwrap()
        .iter()
        .map(|b| b.num_rows())
        .sum();
    assert_eq!(rows, 2);
    let _ = std::fs::remove_dir_all(&dir);
}

/// With `batch-rows` 3, a transaction of two inserts and a key-changing update: the update's
/// old and new image go to the next batch together, with the plugin and with the wal2json
/// fallback alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_updates_images_stay_in_one_batch_with_both_plugins() {
    let db = Cluster::shared().database("straddle");
    db.psql("CREATE TABLE s (id int PRIMARY KEY, v text)");
    let with_json = wal2arrow_harness::wal2json_installed();
    for choice in [PluginChoice::Wal2Arrow, PluginChoice::Wal2Json]
        .into_iter()
        .filter(|c| *c == PluginChoice::Wal2Arrow || with_json)
    {
        let slot =
            format!("straddle_{}", if choice == PluginChoice::Wal2Json { "json" } else { "arrow" });
        let consumer = Consumer::builder()
            .config(config(&db))
            .slot(&slot)
            .output_plugin(choice)
            .tables(["public.s"])
            .batch_rows(3)
            .heartbeat_interval(None)
            .build()
            .unwrap();
        let mut stream = consumer.start().await.unwrap();
        db.psql(
            "BEGIN; INSERT INTO s VALUES (1, 'a'), (2, 'b'); UPDATE s SET id = 10 WHERE id = 1;
             INSERT INTO s VALUES (3, 'c'); COMMIT;
             DELETE FROM s;",
        );
        let mut batches: Vec<Vec<String>> = Vec::new();
        let mut commits = 0;
        while commits < 2 {
            let event = tokio::time::timeout(Duration::from_secs(30), stream.next())
                .await
                .expect("events arrive")
                .expect("open")
                .expect("no error");
            match event {
                Event::Change(c) => {
                    let ops = c.batch.column_by_name("_op").unwrap().as_dictionary::<UInt8Type>();
                    let names = ops.values().as_string::<i32>();
                    batches.push(
                        (0..c.num_rows())
                            .map(|r| names.value(ops.keys().value(r) as usize).to_owned())
                            .collect(),
                    );
                }
                Event::Commit(c) => {
                    commits += 1;
                    stream.ack(c.end_lsn);
                }
                _ => {}
            }
        }
        stream.close().await;
        let expected: Vec<Vec<&str>> = vec![
            vec!["insert", "insert"],
            vec!["update_before", "update", "insert"],
            vec!["delete", "delete", "delete"],
        ];
        assert_eq!(batches, expected, "{choice:?}");
        // The walsender ends shortly after the stream closes.
        let active = format!("SELECT active FROM pg_replication_slots WHERE slot_name = '{slot}'");
        crate::common::wait_for("the slot to be released", Duration::from_secs(30), || {
            db.psql(&active).trim() != "t"
        })
        .await;
        sql(&db).await.execute("SELECT pg_drop_replication_slot($1)", &[&slot]).await.unwrap();
    }
}

/// Rows of about 100 kB: the plugin and the fallback cut their batches at the same row (the
/// 16 MiB policy of wal2arrow-schema), where the plugin once measured only every 64th row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plugin_and_the_fallback_cut_large_batches_at_the_same_rows() {
    if !wal2arrow_harness::wal2json_installed() {
        return;
    }
    let db = Cluster::shared().database("big_batches");
    db.psql(
        "CREATE TABLE big (id int PRIMARY KEY, body text);
         SELECT pg_create_logical_replication_slot('big_arrow', 'wal2arrow');
         SELECT pg_create_logical_replication_slot('big_json', 'wal2json');
         INSERT INTO big SELECT g, (SELECT string_agg(md5(g::text || ':' || i), '')
                                    FROM generate_series(1, 3200) i)
           FROM generate_series(1, 250) g;",
    );
    let mut sizes = Vec::new();
    for (slot, choice) in
        [("big_arrow", PluginChoice::Wal2Arrow), ("big_json", PluginChoice::Wal2Json)]
    {
        let consumer = Consumer::builder()
            .config(config(&db))
            .existing_slot(slot)
            .output_plugin(choice)
            .heartbeat_interval(None)
            .build()
            .unwrap();
        let mut stream = consumer.start().await.unwrap();
        let mut rows = Vec::new();
        loop {
            let event = tokio::time::timeout(Duration::from_secs(60), stream.next())
                .await
                .expect("events arrive")
                .expect("open")
                .expect("no error");
            match event {
                Event::Change(c) => rows.push(c.num_rows()),
                Event::Commit(_) if !rows.is_empty() => break,
                _ => {}
            }
        }
        stream.close().await;
        assert_eq!(rows.iter().sum::<usize>(), 250);
        sizes.push(rows);
    }
    assert!(sizes[0].len() > 1, "rows of 100 kB make more than one 16 MiB batch: {:?}", sizes[0]);
    assert_eq!(sizes[0], sizes[1], "the same batch boundaries");
}

/// A message over `max_message_size` ends the stream with a definite error naming the limit,
/// before anything of its size is allocated; it is not retried as a lost connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_the_maximum_size_is_a_definite_error() {
    let db = Cluster::shared().database("too_large");
    db.psql("CREATE TABLE t (id int PRIMARY KEY, body text)");
    let consumer = Consumer::builder()
        .config(config(&db))
        .slot("too_large")
        .max_message_size(1 << 20)
        .heartbeat_interval(None)
        .build()
        .unwrap();
    let mut stream = consumer.start().await.unwrap();
    // 3 MiB of incompressible text in one row: one Batch message of over 3 MiB.
    db.psql(
        "INSERT INTO t SELECT 1, string_agg(md5(i::text), '') FROM generate_series(1, 100000) i",
    );
    let error = loop {
        match tokio::time::timeout(Duration::from_secs(30), stream.next()).await.unwrap() {
            Some(Ok(Event::Restarted { reason, .. })) => panic!("retried: {reason}"),
            Some(Ok(_)) => {}
            Some(Err(e)) => break e,
            None => panic!("the stream ended without an error"),
        }
    };
    assert!(
        matches!(error.client_error(), Some(ClientError::MessageTooLarge { max, .. }) if *max == 1 << 20),
        "{error}"
    );
    assert!(!error.is_transient());
    assert!(error.to_string().contains("max_message_size"), "{error}");
    assert!(stream.next().await.is_none(), "the stream ended");
    assert_eq!(stream.stats().reconnects, 0);
}

/// A TCP proxy to the server whose new connections can be made to hang: accepted, never
/// answered — a server that stopped responding for everything but the connection already
/// open.
struct Proxy {
    port: u16,
    frozen: Arc<AtomicBool>,
}

impl Proxy {
    async fn start(target: u16) -> Proxy {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let frozen = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&frozen);
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((mut client, _)) = listener.accept().await {
                if flag.load(Ordering::SeqCst) {
                    held.push(client); // never answered
                    continue;
                }
                tokio::spawn(async move {
                    let Ok(mut server) =
                        tokio::net::TcpStream::connect(("127.0.0.1", target)).await
                    else {
                        let _ = client.shutdown().await;
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                });
            }
        });
        Proxy { port, frozen }
    }
}

/// The heartbeat's SQL connection hangs (a server that accepts connections and never answers
/// them, for up to `connect_timeout`): status updates still reach the server every
/// `max_poll_interval`, because heartbeats run on their own task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_heartbeat_never_delays_status_updates() {
    let db = Cluster::shared().database("heartbeat_hang");
    db.psql("CREATE TABLE t (id int PRIMARY KEY)");
    let proxy = Proxy::start(db.cluster().port()).await;
    let mut c = config(&db);
    c.port = proxy.port;
    c.application_name = "heartbeat_hang".into();
    c.connect_timeout = Duration::from_secs(30);
    let consumer = Consumer::builder()
        .config(c)
        .slot("heartbeat_hang")
        .snapshot(SnapshotMode::Never)
        .max_poll_interval(Duration::from_millis(200))
        .heartbeat_interval(Some(Duration::from_millis(300)))
        .build()
        .unwrap();
    let mut stream = consumer.start().await.unwrap();
    // From now on, new connections (the heartbeat's) hang; the replication one keeps going.
    proxy.frozen.store(true, Ordering::SeqCst);
    let client = sql(&db).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut stale = Vec::new();
    for _ in 0..10 {
        let age: f64 = client
            .query_one(
                "SELECT extract(epoch FROM now() - reply_time)::float8 FROM pg_stat_replication \
                 WHERE application_name = 'heartbeat_hang'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        stale.push(age);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(
        stale.iter().all(|age| *age < 1.5),
        "status updates stalled while the heartbeat hung: ages {stale:?}"
    );
    // The stream itself still works.
    db.psql("INSERT INTO t VALUES (1)");
    let event = loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.next()).await.unwrap() {
            Some(Ok(Event::Change(c))) => break c,
            Some(Ok(_)) => {}
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(event.num_rows(), 1);
    stream.close().await;
}

/// Rows of one transaction come grouped per table, so `_lsn` is in WAL order within a table,
/// not across tables: what the README's ordering section says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lsn_is_ordered_per_table_and_truncates_keep_their_place() {
    let db = Cluster::shared().database("lsn_order");
    db.psql("CREATE TABLE a (id int PRIMARY KEY); CREATE TABLE b (id int PRIMARY KEY)");
    let mut stream = wal2arrow_consumer::open(
        &config(&db),
        &wal2arrow_consumer::StreamOptions::new("lsn_order"),
    )
    .await
    .unwrap();
    db.psql(
        "BEGIN; INSERT INTO a VALUES (1); INSERT INTO b VALUES (1); INSERT INTO a VALUES (2);
         TRUNCATE b; INSERT INTO b VALUES (2); COMMIT;",
    );
    let txns = read_txns(&mut stream, 1, Duration::from_secs(30)).await;
    let order: Vec<String> = txns[0]
        .events
        .iter()
        .filter_map(|e| match e {
            Event::Change(c) => Some(format!("{} {}", c.relation.name, c.num_rows())),
            Event::Truncate(t) => Some(format!("truncate {}", t.relations[0].name)),
            _ => None,
        })
        .collect();
    // b's first row goes out before the TRUNCATE (it must precede it); a's rows wait, as one
    // batch, for the commit: a's second row (after b's) comes after b's first row in WAL but
    // before it in the stream.
    assert_eq!(order, ["a 2", "b 1", "truncate b", "b 1"]);
    let lsn_of = |i: usize| {
        txns[0].batches[i]
            .batch
            .column_by_name("_lsn")
            .unwrap()
            .as_primitive::<UInt64Type>()
            .values()
            .to_vec()
    };
    let (a, b1) = (lsn_of(0), lsn_of(1));
    assert!(a[0] < a[1], "per table in WAL order");
    assert!(a[1] > b1[0], "across tables not: a's second row is later in WAL than b's first");
    stream.close().await.unwrap();
}
