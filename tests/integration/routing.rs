//! Routing to parallel readers (issue 4): per table, hash partitions, key partitions; bounded
//! memory with a stalled reader; acknowledgements across readers.

use std::collections::HashMap;
use std::time::Duration;

use arrow_array::cast::AsArray;
use arrow_array::types::{Int32Type, Int64Type};
use wal2arrow_consumer::{Consumer, Partitioning, Reader, Routed, Router, RouterOptions};
use wal2arrow_harness::{Cluster, TestDb};

use crate::common::{config, confirmed_flush, sql, wait_for};

fn consumer(db: &TestDb<'_>, slot: &str) -> Consumer {
    Consumer::builder()
        .config(config(db))
        .slot(slot)
        .max_poll_interval(Duration::from_millis(200))
        .build()
        .unwrap()
}

fn spill_dir(label: &str) -> std::path::PathBuf {
    let dir =
        std::env::temp_dir().join(format!("wal2arrow-spill-test-{}-{label}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Reads `rows` rows from a reader, acknowledging each delivery, returning the first column as
/// int8 in delivery order.
async fn read_ids(reader: &mut Reader, rows: usize) -> Vec<i64> {
    let mut ids = Vec::new();
    while ids.len() < rows {
        let d = tokio::time::timeout(Duration::from_secs(60), reader.next())
            .await
            .unwrap_or_else(|_| panic!("only {} of {rows} rows arrived", ids.len()))
            .expect("stream open")
            .expect("no error");
        if let Routed::Batch(b) = &d.routed {
            ids.extend(b.batch.column(0).as_primitive::<Int64Type>().values().iter().copied());
        }
        d.ack.ack();
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_reader_spills_within_its_budget_while_another_table_keeps_flowing() {
    let db = Cluster::shared().database("spill");
    db.psql("CREATE TABLE wide (id int8 PRIMARY KEY, pad text); CREATE TABLE narrow (id int8 PRIMARY KEY)");
    let budget = 256 << 10;
    let dir = spill_dir("stall");
    let stream = consumer(&db, "spill_slot").start().await.unwrap();
    let router = Router::start(
        stream,
        RouterOptions {
            memory_per_queue: budget,
            spill_dir: dir.clone(),
            ..RouterOptions::default()
        },
    )
    .unwrap();
    let mut wide = router.table("public.wide");
    let mut narrow = router.table("public.narrow");

    // 100 transactions, each 200 wide rows (~50 kB) and 5 narrow ones.
    let client = sql(&db).await;
    for t in 0..100i64 {
        client
            .batch_execute(&format!(
                "BEGIN;
                 INSERT INTO wide SELECT g, repeat('w', 200) FROM generate_series({}, {}) g;
                 INSERT INTO narrow SELECT g FROM generate_series({}, {}) g;
                 COMMIT",
                t * 200 + 1,
                (t + 1) * 200,
                t * 5 + 1,
                (t + 1) * 5
            ))
            .await
            .unwrap();
    }
    let last_end: wal2arrow_consumer::Lsn = db.psql("SELECT pg_current_wal_lsn()").parse().unwrap();

    // The narrow reader gets everything while nobody reads the wide table.
    let ids = read_ids(&mut narrow, 500).await;
    assert_eq!(ids, (1..=500).collect::<Vec<_>>());
    let stats: HashMap<String, _> = router.stats().into_iter().collect();
    let w = &stats["public.wide"];
    assert!(w.spilled_total > 0 && w.spilled > 0, "the stalled queue spilled: {w:?}");
    // A batch joins memory only while the queue is under budget, so memory never exceeds the
    // budget by more than one batch (~50 kB here).
    assert!(w.peak_memory_bytes <= budget + (64 << 10), "memory stayed within the budget: {w:?}");
    println!("wide queue after the narrow reader finished: {w:?}");
    assert!(std::fs::read_dir(&dir).unwrap().count() == 1, "one spill file");
    // The slot is held back by the unread wide rows: it must not pass their transactions.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let confirmed = confirmed_flush(&db, "spill_slot");
    assert!(confirmed < last_end, "the slot waits for the wide reader: {confirmed}");

    // The wide reader catches up, in order, from memory and then from disk.
    let ids = read_ids(&mut wide, 20_000).await;
    assert_eq!(ids, (1..=20_000).collect::<Vec<_>>());
    // The drained spill file is removed (on a blocking thread, not waited for by the reader).
    wait_for("the drained spill file to be removed", Duration::from_secs(5), || {
        std::fs::read_dir(&dir).unwrap().count() == 0
    })
    .await;
    // Everything acknowledged: the slot reaches the end.
    wait_for(&format!("the slot to reach {last_end}"), Duration::from_secs(10), || {
        confirmed_flush(&db, "spill_slot") >= last_end
    })
    .await;
    router.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_partitions_keep_each_tables_order_and_truncates_follow_their_rows() {
    let db = Cluster::shared().database("hashed");
    let tables = ["t_a", "t_b", "t_c", "t_d"];
    for t in tables {
        db.psql(&format!("CREATE TABLE {t} (id int8 PRIMARY KEY)"));
    }
    let stream = consumer(&db, "hashed_slot").start().await.unwrap();
    let router = Router::start(
        stream,
        RouterOptions {
            partitioning: Partitioning::Hashed(2),
            spill_dir: spill_dir("hashed"),
            ..RouterOptions::default()
        },
    )
    .unwrap();
    let client = sql(&db).await;
    for round in 0..10i64 {
        for t in tables {
            client.batch_execute(&format!("INSERT INTO {t} VALUES ({round})")).await.unwrap();
        }
    }
    client.batch_execute("TRUNCATE t_a").await.unwrap();
    let mut seen: HashMap<String, Vec<i64>> = HashMap::new();
    let mut truncated = Vec::new();
    for p in 0..2 {
        let mut reader = router.partition(p);
        let expected_rows =
            tables.iter().filter(|t| Router::partition_of(&format!("public.{t}"), 2) == p).count()
                * 10;
        let expect_truncate = Router::partition_of("public.t_a", 2) == p;
        let mut rows = 0;
        while rows < expected_rows || (expect_truncate && truncated.is_empty()) {
            let d = tokio::time::timeout(Duration::from_secs(30), reader.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            match &d.routed {
                Routed::Batch(b) => {
                    assert_eq!(
                        Router::partition_of(b.table(), 2),
                        p,
                        "{} in the right partition",
                        b.table()
                    );
                    let ids = b.batch.column(0).as_primitive::<Int64Type>().values().to_vec();
                    rows += ids.len();
                    seen.entry(b.table().to_owned()).or_default().extend(ids);
                }
                Routed::Truncate { relation, .. } => {
                    assert_eq!(
                        seen[&relation.qualified_name].len(),
                        10,
                        "the truncate follows the rows before it"
                    );
                    truncated.push(relation.qualified_name.clone());
                }
                Routed::Message(_) => panic!("no message reader was asked for"),
            }
            d.ack.ack();
        }
    }
    for t in tables {
        assert_eq!(seen[&format!("public.{t}")], (0..10).collect::<Vec<_>>(), "{t} in order");
    }
    assert_eq!(truncated, ["public.t_a"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_partitions_keep_each_keys_changes_in_order() {
    let db = Cluster::shared().database("keyed");
    db.psql("CREATE TABLE accounts (id int4 PRIMARY KEY, balance int4)");
    let stream = consumer(&db, "keyed_slot").start().await.unwrap();
    let router = Router::start(
        stream,
        RouterOptions {
            key_partitions: HashMap::from([("public.accounts".to_owned(), 3)]),
            spill_dir: spill_dir("keyed"),
            ..RouterOptions::default()
        },
    )
    .unwrap();
    let client = sql(&db).await;
    client
        .batch_execute("INSERT INTO accounts SELECT g, 0 FROM generate_series(1, 30) g")
        .await
        .unwrap();
    for step in 1..=5 {
        client.batch_execute(&format!("UPDATE accounts SET balance = {step}")).await.unwrap();
    }
    let mut partition_of_id: HashMap<i32, usize> = HashMap::new();
    let mut balances: HashMap<i32, Vec<i32>> = HashMap::new();
    let mut total = 0;
    for p in 0..3 {
        let mut reader = router.key_partition("public.accounts", p);
        // Drain what this partition has: stop after a quiet second.
        while let Ok(Some(d)) = tokio::time::timeout(Duration::from_secs(2), reader.next()).await {
            let d = d.unwrap();
            if let Routed::Batch(b) = &d.routed {
                assert_eq!(b.key_partition, Some(p));
                let ids = b.batch.column(0).as_primitive::<Int32Type>();
                let bal = b.batch.column(1).as_primitive::<Int32Type>();
                for i in 0..b.batch.num_rows() {
                    let id = ids.value(i);
                    assert_eq!(
                        *partition_of_id.entry(id).or_insert(p),
                        p,
                        "id {id} always in one partition"
                    );
                    balances.entry(id).or_default().push(bal.value(i));
                    total += 1;
                }
            }
            d.ack.ack();
        }
    }
    assert_eq!(total, 30 * 6);
    for id in 1..=30 {
        assert_eq!(balances[&id], [0, 1, 2, 3, 4, 5], "id {id}: its changes in order");
    }
    let used: std::collections::BTreeSet<usize> = partition_of_id.values().copied().collect();
    assert_eq!(used.len(), 3, "30 keys spread over the 3 partitions");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_reach_a_message_reader_and_do_not_hold_the_slot_without_one() {
    let db = Cluster::shared().database("routed_messages");
    db.psql("CREATE TABLE m (v int)");
    let stream = consumer(&db, "routed_msg_slot").start().await.unwrap();
    let router = Router::start(
        stream,
        RouterOptions { spill_dir: spill_dir("messages"), ..RouterOptions::default() },
    )
    .unwrap();
    let mut messages = router.messages();
    db.psql("SELECT pg_logical_emit_message(false, 'app', 'hello'); SELECT pg_logical_emit_message(true, 'app', 'in tx')");
    let mut got = Vec::new();
    while got.len() < 2 {
        let d = tokio::time::timeout(Duration::from_secs(30), messages.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Routed::Message(m) = &d.routed {
            got.push((m.transactional, String::from_utf8_lossy(m.content.as_slice()).into_owned()));
        }
        d.ack.ack();
    }
    assert_eq!(got, [(false, "hello".to_owned()), (true, "in tx".to_owned())]);
    router.stop();

    // Without a message reader, messages are not queued: the slot moves past them.
    let stream = consumer(&db, "routed_nomsg_slot").start().await.unwrap();
    let acks = stream.ack_handle();
    let router = Router::start(
        stream,
        RouterOptions { spill_dir: spill_dir("nomessages"), ..RouterOptions::default() },
    )
    .unwrap();
    db.psql("SELECT pg_logical_emit_message(true, 'app', 'nobody listens')");
    let target: wal2arrow_consumer::Lsn = db.psql("SELECT pg_current_wal_lsn()").parse().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while acks.acknowledged() < target {
        assert!(std::time::Instant::now() < deadline, "acknowledged {}", acks.acknowledged());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(router.stats().iter().all(|(name, _)| name != "messages"));
}

/// wal2json-fallback batches (built by the consumer: no payload) count against the memory
/// bound by their arrays' size, and a stalled queue of them spills like any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fallback_batches_count_against_the_memory_bound_and_spill() {
    if !wal2arrow_harness::wal2json_installed() {
        return;
    }
    let db = Cluster::shared().database("spill_json");
    db.psql("CREATE TABLE wide (id int8 PRIMARY KEY, pad text)");
    let budget = 128 << 10;
    let dir = spill_dir("json");
    let stream = Consumer::builder()
        .config(config(&db))
        .slot("spill_json")
        .output_plugin(wal2arrow_consumer::PluginChoice::Wal2Json)
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();
    let router = Router::start(
        stream,
        RouterOptions {
            memory_per_queue: budget,
            spill_dir: dir.clone(),
            ..RouterOptions::default()
        },
    )
    .unwrap();
    let mut wide = router.table("public.wide");
    let client = sql(&db).await;
    for t in 0..40i64 {
        client
            .batch_execute(&format!(
                "INSERT INTO wide SELECT g, repeat('w', 200) FROM generate_series({}, {}) g",
                t * 100 + 1,
                (t + 1) * 100
            ))
            .await
            .unwrap();
    }
    // Wait until the router has taken in everything (nobody reads yet).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let stats = loop {
        let stats: HashMap<String, _> = router.stats().into_iter().collect();
        if let Some(w) = stats.get("public.wide")
            && (w.in_memory as u64 + w.spilled) >= 40
        {
            break w.clone();
        }
        assert!(std::time::Instant::now() < deadline, "batches did not arrive: {stats:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(stats.memory_bytes > 0, "fallback batches have a size: {stats:?}");
    assert!(stats.spilled_total > 0, "the stalled queue spilled: {stats:?}");
    assert!(stats.peak_memory_bytes <= budget + (128 << 10), "within the budget: {stats:?}");
    let ids = read_ids(&mut wide, 4000).await;
    assert_eq!(ids, (1..=4000).collect::<Vec<_>>());
    router.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A messages reader that falls behind spills too (messages once stayed in memory without
/// bound), and gets every message back in order, transactional ones with their transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_messages_queue_spills_and_reads_back_in_order() {
    let db = Cluster::shared().database("spill_messages");
    let dir = spill_dir("messages");
    let stream = consumer(&db, "spill_messages").start().await.unwrap();
    let router = Router::start(
        stream,
        RouterOptions {
            memory_per_queue: 16 << 10,
            spill_dir: dir.clone(),
            ..RouterOptions::default()
        },
    )
    .unwrap();
    let mut messages = router.messages();
    let client = sql(&db).await;
    for i in 0..300 {
        let transactional = i % 3 == 0;
        client
            .execute(
                "SELECT pg_logical_emit_message($1, 'app', $2)",
                &[&transactional, &format!("message {i} {}", "x".repeat(200))],
            )
            .await
            .unwrap();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let stats: HashMap<String, _> = router.stats().into_iter().collect();
        if let Some(m) = stats.get("messages")
            && m.in_memory as u64 + m.spilled >= 300
        {
            assert!(m.spilled_total > 0, "the messages queue spilled: {m:?}");
            assert!(m.peak_memory_bytes <= (16 << 10) + 1024, "within the budget: {m:?}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "messages did not arrive: {stats:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut last = wal2arrow_consumer::Lsn::INVALID;
    for i in 0..300 {
        let d = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let Routed::Message(m) = &d.routed else { panic!("{:?}", d.routed) };
        let text = String::from_utf8_lossy(m.content.as_slice()).into_owned();
        assert!(text.starts_with(&format!("message {i} ")), "{i}: {text}");
        assert_eq!(m.transactional, i % 3 == 0);
        assert_eq!(m.txn.is_some(), m.transactional);
        last = m.lsn;
        d.ack.ack();
    }
    // Every message acknowledged, transactional ones included: the slot passes them all.
    wait_for(&format!("the slot to pass {last}"), Duration::from_secs(10), || {
        confirmed_flush(&db, "spill_messages") > last
    })
    .await;
    router.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Readers waiting on drained queues are told the stream ended when the router is stopped or
/// dropped, instead of waiting forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_or_dropping_the_router_ends_waiting_readers() {
    let db = Cluster::shared().database("router_stop");
    db.psql("CREATE TABLE t (id int8 PRIMARY KEY)");
    for (i, drop_it) in [false, true].into_iter().enumerate() {
        let stream = consumer(&db, &format!("router_stop_{i}")).start().await.unwrap();
        let router = Router::start(
            stream,
            RouterOptions { spill_dir: spill_dir("stop"), ..RouterOptions::default() },
        )
        .unwrap();
        let mut reader = router.table("public.t");
        let waiting = tokio::spawn(async move { reader.next().await.map(|r| r.is_ok()) });
        tokio::time::sleep(Duration::from_millis(300)).await;
        if drop_it {
            drop(router);
        } else {
            router.stop();
        }
        let ended = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the waiting reader was told the stream ended")
            .unwrap();
        assert_eq!(ended, None, "a clean end");
    }
}
