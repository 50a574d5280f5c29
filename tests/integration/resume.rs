//! Never losing a change (issue 4): a consumer killed with SIGKILL and restarted, a server
//! restart, a dropped connection, a slow reader, and the idle heartbeat.

use std::collections::{BTreeSet, HashMap};
use std::process::{Child, Command};
use std::time::Duration;

use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;
use wal2arrow_consumer::{Consumer, Event, Lsn, Position, SnapshotMode};
use wal2arrow_harness::{Cluster, ClusterOptions, TestDb};

use crate::common::{confirmed_flush, sql, wait_for};

const TXNS: i64 = 120;
const ROWS: i64 = 25;

/// Inserts transactions `from..to` of `ROWS` rows each; transaction `t` has ids
/// `t * ROWS + 1 ..= (t + 1) * ROWS`.
async fn insert_txns(client: &tokio_postgres::Client, from: i64, to: i64, pause: Duration) {
    for t in from..to {
        client
            .batch_execute(&format!(
                "INSERT INTO items SELECT g, repeat('x', 50) FROM generate_series({}, {}) g",
                t * ROWS + 1,
                (t + 1) * ROWS
            ))
            .await
            .unwrap();
        tokio::time::sleep(pause).await;
    }
}

fn spawn_sink(db: &TestDb<'_>, slot: &str, out: &std::path::Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_cdc_sink"))
        .args([db.dsn().as_str(), slot])
        .arg(out)
        .spawn()
        .unwrap()
}

/// The sink's file: rows as (position, id), and acknowledged LSNs, in file order.
fn read_sink(out: &std::path::Path) -> (Vec<(Position, i64)>, Vec<Lsn>) {
    let text = std::fs::read_to_string(out).unwrap_or_default();
    let (mut rows, mut acks) = (Vec::new(), Vec::new());
    for line in text.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        match f.as_slice() {
            ["R", lsn, ordinal, id] => rows.push((
                Position { commit_lsn: lsn.parse().unwrap(), ordinal: ordinal.parse().unwrap() },
                id.parse().unwrap(),
            )),
            ["A", lsn] => acks.push(lsn.parse().unwrap()),
            _ => {} // a line cut by the kill
        }
    }
    (rows, acks)
}

/// Every id once after dropping replays by position; replays only after `last_ack`.
fn assert_exactly_once(rows: &[(Position, i64)], expected: i64, last_ack: Lsn) {
    let mut by_id: HashMap<i64, Vec<Position>> = HashMap::new();
    for (pos, id) in rows {
        by_id.entry(*id).or_default().push(*pos);
    }
    let ids: BTreeSet<i64> = by_id.keys().copied().collect();
    assert_eq!(ids, (1..=expected).collect::<BTreeSet<_>>(), "every committed row arrived");
    let mut replayed = 0;
    for (id, positions) in &by_id {
        if positions.len() > 1 {
            replayed += 1;
            assert!(
                positions.iter().all(|p| *p == positions[0]),
                "id {id}: a replay has the same position"
            );
            assert!(
                positions[0].commit_lsn >= last_ack,
                "id {id} replayed from before the last acknowledgement"
            );
        }
    }
    // Dropping replays by position leaves each row once.
    let unique: BTreeSet<(Position, i64)> = rows.iter().copied().collect();
    assert_eq!(
        unique.len() as i64,
        expected,
        "{replayed} rows were replayed; by position they are duplicates"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_killed_with_sigkill_and_restarted_loses_nothing() {
    let db = Cluster::shared().database("sigkill");
    db.psql("CREATE TABLE items (id int8 PRIMARY KEY, pad text)");
    let out = std::env::temp_dir().join(format!(
        "wal2arrow-sink-{}-{}.txt",
        std::process::id(),
        db.name()
    ));
    let _ = std::fs::remove_file(&out);
    let mut sink = spawn_sink(&db, "sink_slot", &out);
    wait_for("the sink's slot", Duration::from_secs(30), || {
        db.psql(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'sink_slot' AND active",
        ) == "1"
    })
    .await;

    let client = sql(&db).await;
    let workload =
        tokio::spawn(async move { insert_txns(&client, 0, TXNS, Duration::from_millis(10)).await });
    // Kill it in the middle of the workload, once it has acknowledged some transactions.
    wait_for("the first acknowledgements", Duration::from_secs(60), || {
        read_sink(&out).1.len() >= 20
    })
    .await;
    sink.kill().unwrap(); // SIGKILL
    sink.wait().unwrap();
    // What the server knows was acknowledged: the sink told it of every commit it recorded.
    let last_ack = confirmed_flush(&db, "sink_slot");
    let recorded = *read_sink(&out).1.last().unwrap();
    assert!(
        last_ack >= recorded,
        "every recorded acknowledgement reached the server: {last_ack} < {recorded}"
    );
    let mut sink = spawn_sink(&db, "sink_slot", &out);
    workload.await.unwrap();
    wait_for("every row", Duration::from_secs(120), || {
        read_sink(&out).0.iter().map(|r| r.1).collect::<BTreeSet<_>>().len() as i64 == TXNS * ROWS
    })
    .await;
    sink.kill().unwrap();
    sink.wait().unwrap();
    let (rows, _) = read_sink(&out);
    assert_exactly_once(&rows, TXNS * ROWS, last_ack);
    let _ = std::fs::remove_file(&out);
}

/// Collects rows from a high-level stream in a task, acknowledging each commit.
struct Collector {
    rows: std::sync::Arc<std::sync::Mutex<Vec<(Position, i64)>>>,
    restarts: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Collector {
    fn start(mut stream: wal2arrow_consumer::CdcStream) -> Collector {
        let rows = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let restarts = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (r, rs) = (rows.clone(), restarts.clone());
        let task = tokio::spawn(async move {
            let mut pending = Vec::new();
            while let Some(event) = stream.next().await {
                match event.expect("no definite error") {
                    Event::Change(c) => {
                        for id in c.batch.column(0).as_primitive::<Int64Type>().values() {
                            pending.push((c.position(), *id));
                        }
                    }
                    Event::Restarted { reason, .. } => {
                        pending.clear();
                        rs.lock().unwrap().push(reason);
                    }
                    Event::Commit(c) => {
                        r.lock().unwrap().append(&mut pending);
                        stream.ack(c.end_lsn);
                    }
                    _ => {}
                }
            }
        });
        Collector { rows, restarts, task }
    }

    fn ids(&self) -> usize {
        self.rows.lock().unwrap().iter().map(|r| r.1).collect::<BTreeSet<_>>().len()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_survives_a_server_restart_and_a_dropped_connection() {
    let cluster = Cluster::start(&ClusterOptions::with_plugin().unwrap()).unwrap();
    let db = cluster.database("restart");
    db.psql("CREATE TABLE items (id int8 PRIMARY KEY, pad text)");
    let consumer = Consumer::builder()
        .dsn(&db.dsn())
        .unwrap()
        .slot("restart_slot")
        .max_poll_interval(Duration::from_millis(200))
        .backoff(wal2arrow_consumer::Backoff {
            initial: Duration::from_millis(50),
            max: Duration::from_secs(1),
        })
        .build()
        .unwrap();
    let collector = Collector::start(consumer.start().await.unwrap());

    // A third of the workload, a server restart while it streams, another third, a
    // terminated walsender, the rest.
    insert_txns(&sql(&db).await, 0, TXNS / 3, Duration::ZERO).await;
    wait_for("some rows", Duration::from_secs(30), || collector.ids() > 0).await;
    cluster.restart().unwrap();
    insert_txns(&sql(&db).await, TXNS / 3, 2 * TXNS / 3, Duration::ZERO).await;
    wait_for("rows after the restart", Duration::from_secs(60), || {
        collector.ids() as i64 > TXNS / 3 * ROWS
    })
    .await;
    db.psql("SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = 'restart_slot'");
    insert_txns(&sql(&db).await, 2 * TXNS / 3, TXNS, Duration::ZERO).await;
    wait_for("every row", Duration::from_secs(60), || collector.ids() as i64 == TXNS * ROWS).await;

    let restarts = collector.restarts.lock().unwrap().clone();
    assert!(
        restarts.len() >= 2,
        "a restart for the server and one for the dropped connection: {restarts:?}"
    );
    let rows = collector.rows.lock().unwrap().clone();
    assert_exactly_once(&rows, TXNS * ROWS, Lsn::INVALID);
    collector.task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_idle_heartbeat_advances_confirmed_flush_lsn() {
    let db = Cluster::shared().database("heartbeat");
    db.psql("CREATE TABLE quiet (v int)");
    let consumer = Consumer::builder()
        .dsn(&db.dsn())
        .unwrap()
        .slot("heartbeat_slot")
        .snapshot(SnapshotMode::Never)
        .tables(["public.quiet"])
        .heartbeat_interval(Some(Duration::from_millis(200)))
        .max_poll_interval(Duration::from_millis(100))
        .build()
        .unwrap();
    let stream = consumer.start().await.unwrap();
    let confirmed = || confirmed_flush(&db, "heartbeat_slot");
    let before = confirmed();
    // Nothing happens in the database; nobody reads the stream or acknowledges anything.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = confirmed();
    let stats = stream.stats();
    assert!(stats.heartbeats >= 5, "{stats:?}");
    assert_eq!(stats.events, 0, "heartbeats are not delivered");
    assert!(after > before, "confirmed_flush_lsn advanced: {before} → {after}");
    // The slot keeps up with the server's WAL: whatever the end of WAL is now (other tests on the
    // shared cluster write WAL all the time), the heartbeats carry the slot past it within a few
    // heartbeat intervals, without a row or an acknowledgement.
    let end_of_wal: wal2arrow_consumer::Lsn =
        db.psql("SELECT pg_current_wal_lsn()").trim().parse().unwrap();
    wait_for("the slot to reach the end of WAL", Duration::from_secs(10), || {
        confirmed() >= end_of_wal
    })
    .await;
    stream.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_is_not_dropped_for_wal_sender_timeout() {
    let mut opts = ClusterOptions::with_plugin().unwrap();
    opts.settings.push(("wal_sender_timeout".into(), "'2s'".into()));
    let cluster = Cluster::start(&opts).unwrap();
    let db = cluster.database("slow_reader");
    db.psql("CREATE TABLE items (id int8 PRIMARY KEY, pad text)");
    let consumer = Consumer::builder()
        .dsn(&db.dsn())
        .unwrap()
        .slot("slow_slot")
        .buffer_events(2)
        .max_poll_interval(Duration::from_millis(300))
        .build()
        .unwrap();
    let mut stream = consumer.start().await.unwrap();
    insert_txns(&sql(&db).await, 0, 20, Duration::ZERO).await;
    // The reader sleeps far past wal_sender_timeout with the buffer full.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let mut commits = 0;
    while commits < 20 {
        match tokio::time::timeout(Duration::from_secs(30), stream.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            Event::Commit(c) => {
                commits += 1;
                stream.ack(c.end_lsn);
            }
            Event::Restarted { reason, .. } => panic!("the connection was dropped: {reason}"),
            _ => {}
        }
    }
    assert!(!cluster.log().contains("terminating walsender process due to replication timeout"));
    stream.close().await;
}
