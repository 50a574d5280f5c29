//! The Kafka sink against a real Kafka-protocol broker (tansu, started by the harness), read
//! back with an independent client (Python's confluent-kafka, `kafka_read.py`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};

use serde_json::Value;
use wal2arrow_harness::{Cluster, KafkaBroker, TestDb};

use crate::cli::{cli, current_lsn, run, send_signal};
use crate::common::{sql, wait_for};

/// Every message of `topics`: (topic, partition, offset, key, value, headers).
pub(crate) fn read_topics(broker: &KafkaBroker, topics: &[String], arrow: bool) -> Vec<Value> {
    read_topics_as(broker, topics, if arrow { Some("--arrow") } else { None })
}

/// As [`read_topics`], `how` the values are printed (`--arrow`: rows pyarrow decodes;
/// `--raw`: base64).
fn read_topics_as(broker: &KafkaBroker, topics: &[String], how: Option<&str>) -> Vec<Value> {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("integration/kafka_read.py");
    let mut cmd = std::process::Command::new("python3");
    cmd.arg(script).arg(broker.address()).arg(topics.join(","));
    if let Some(how) = how {
        cmd.arg(how);
    }
    let out = cmd.output().expect("python3 runs");
    assert!(out.status.success(), "kafka_read.py: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let values: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    for v in &values {
        assert!(v.get("unread").is_none() && v.get("missing_topic").is_none(), "{v:?}");
    }
    values
}

fn stream_to_kafka(
    db: &TestDb<'_>,
    broker: &KafkaBroker,
    slot: &str,
    extra: &[&str],
    until: Option<&str>,
) -> tokio::process::Command {
    let dsn = db.dsn();
    let brokers = broker.address();
    let mut args = vec![
        "stream",
        "--dsn",
        &dsn,
        "--slot",
        slot,
        "--tables",
        "public.*",
        "--sink",
        "kafka",
        "--kafka-brokers",
        &brokers,
        "--progress",
        "never",
    ];
    args.extend_from_slice(extra);
    if let Some(u) = until {
        args.extend(["--until-lsn", u]);
    }
    cli(&args)
}

/// `stream --sink kafka` on `slot` up to the server's position now: (exit code, stdout,
/// stderr).
async fn stream_until_now(
    db: &TestDb<'_>,
    broker: &KafkaBroker,
    slot: &str,
    extra: &[&str],
) -> (i32, String, String) {
    let until = current_lsn(db);
    run(stream_to_kafka(db, broker, slot, extra, Some(&until))).await
}

/// The messages of one topic by key, in partition order: (op or "tombstone", value).
fn by_key(messages: &[Value], topic: &str) -> BTreeMap<String, Vec<(String, Value)>> {
    let mut sorted: Vec<&Value> = messages.iter().filter(|m| m["topic"] == topic).collect();
    sorted.sort_by_key(|m| (m["partition"].as_i64(), m["offset"].as_i64()));
    let mut out: BTreeMap<String, Vec<(String, Value)>> = BTreeMap::new();
    let mut partition_of: HashMap<String, i64> = HashMap::new();
    for m in sorted {
        let key = m["key"].as_str().unwrap_or("null").to_owned();
        let p = m["partition"].as_i64().unwrap();
        assert_eq!(*partition_of.entry(key.clone()).or_insert(p), p, "one partition per key");
        let (op, value) = match m["value"].as_str() {
            None => ("tombstone".to_owned(), Value::Null),
            Some(v) => {
                let v: Value = serde_json::from_str(v).unwrap();
                (v["op"].as_str().unwrap().to_owned(), v)
            }
        };
        out.entry(key).or_default().push((op, value));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_arrive_on_table_topics_keyed_in_order_as_debezium_envelopes() {
    let broker = KafkaBroker::start().expect("a Kafka broker (tansu)");
    let db = Cluster::shared().database("kafka_debezium");
    db.psql(
        "CREATE TABLE users (id int8 PRIMARY KEY, name text, score numeric(10,2), born date,
            seen timestamptz, tags int4[], blob bytea, u uuid, doc jsonb, t time, ts timestamp,
            f float8, b bool, big text);
         ALTER TABLE users ALTER COLUMN big SET STORAGE EXTERNAL;
         CREATE TABLE other (id int4 PRIMARY KEY);
         INSERT INTO users (id, name) VALUES (0, 'before the slot');
         INSERT INTO other VALUES (1), (2);",
    );
    // The first run creates the slot and copies the rows there (op r).
    let (code, out, err) = stream_until_now(&db, &broker, "dbz", &["--topic-prefix", "app"]).await;
    assert_eq!(code, 0, "{out}{err}");
    db.psql(
        "INSERT INTO users VALUES (1, 'Alice', 12.5, '2024-01-02', '2024-01-01 00:00:00+00',
            '{1,2}', '\\xdeadbeef', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{\"a\": 1}',
            '12:34:56.789', '2024-01-01 10:00:00', 1.5, true, repeat('x', 10000));
         INSERT INTO users (id, name) VALUES (2, 'Bob'), (3, 'Carol');
         UPDATE users SET name = 'Alicia' WHERE id = 1;
         UPDATE users SET id = 20 WHERE id = 2;
         DELETE FROM users WHERE id = 3;
         TRUNCATE other;",
    );
    let (code, out, err) = stream_until_now(&db, &broker, "dbz", &["--topic-prefix", "app"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let messages =
        read_topics(&broker, &["app.public.users".into(), "app.public.other".into()], false);
    let users = by_key(&messages, "app.public.users");
    let ops = |k: &str| users[k].iter().map(|(op, _)| op.as_str()).collect::<Vec<_>>();
    assert_eq!(ops("{\"id\":0}"), ["r"]);
    assert_eq!(ops("{\"id\":1}"), ["c", "u"]);
    assert_eq!(ops("{\"id\":2}"), ["c", "d", "tombstone"], "a key change is a delete…");
    assert_eq!(ops("{\"id\":20}"), ["c"], "…and a create");
    assert_eq!(ops("{\"id\":3}"), ["c", "d", "tombstone"]);
    // The documented example, field by field (README, sinks/src/kafka.rs).
    let created = &users["{\"id\":1}"][0].1;
    assert_eq!(created["before"], Value::Null);
    let mut after = created["after"].clone();
    let big = after.as_object_mut().unwrap().remove("big").unwrap();
    assert_eq!(big.as_str().map(str::len), Some(10000));
    let expected = serde_json::json!({
        "id": 1, "name": "Alice", "score": "12.50", "born": 19724,
        "seen": "2024-01-01T00:00:00.000000Z", "tags": [1, 2], "blob": "3q2+7w==",
        "u": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "doc": "{\"a\": 1}",
        "t": 45_296_789_000i64, "ts": 1_704_103_200_000_000i64, "f": 1.5, "b": true,
    });
    assert_eq!(after, expected);
    let source = &created["source"];
    assert_eq!(source["connector"], "postgresql");
    assert_eq!(source["name"], "app");
    assert_eq!(source["db"], db.name());
    assert_eq!(source["schema"], "public");
    assert_eq!(source["table"], "users");
    assert_eq!(source["snapshot"], "false");
    assert!(source["txId"].as_i64().unwrap() > 0 && source["lsn"].as_i64().unwrap() > 0);
    assert!(source["ts_ms"].as_i64().unwrap() > 1_700_000_000_000);
    assert!(created["ts_ms"].as_i64().unwrap() >= source["ts_ms"].as_i64().unwrap());
    assert_eq!(created["transaction"], Value::Null);
    // The update: the unchanged TOASTed column is not sent, and said so (never a placeholder).
    let updated = &users["{\"id\":1}"][1].1;
    assert_eq!(updated["after"]["name"], "Alicia");
    assert!(updated["after"].get("big").is_none(), "{updated}");
    assert_eq!(updated["missing"], serde_json::json!(["big"]));
    // A delete: the old key before, nothing after.
    let deleted = &users["{\"id\":3}"][1].1;
    assert_eq!(deleted["before"]["id"], 3);
    assert_eq!(deleted["after"], Value::Null);
    assert_eq!(users["{\"id\":0}"][0].1["source"]["snapshot"], "true");
    // The truncate: op t on the other table's topic, without a key.
    let other = by_key(&messages, "app.public.other");
    let last = other["null"].last().unwrap();
    assert_eq!(last.0, "t");
    // Every message names its transaction and place in the headers.
    for m in &messages {
        let h = &m["headers"];
        assert!(h["wal2arrow.commit_lsn"].is_string() && h["wal2arrow.ordinal"].is_string(), "{m}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_arrow_format_sends_batches_that_decode_with_pyarrow_to_the_rows() {
    let broker = KafkaBroker::start().expect("a Kafka broker (tansu)");
    let db = Cluster::shared().database("kafka_arrow");
    db.psql("CREATE TABLE t (id int8 PRIMARY KEY, v text)");
    let args = ["--kafka-format", "arrow", "--topic-prefix", "arr", "--batch-rows", "1000"];
    let (code, out, err) = stream_until_now(&db, &broker, "arrow", &args).await;
    assert_eq!(code, 0, "{out}{err}");
    db.psql("INSERT INTO t SELECT g, 'row ' || g FROM generate_series(1, 5000) g");
    // A small message limit splits the batches.
    db.psql("INSERT INTO t SELECT g, repeat('y', 500) FROM generate_series(5001, 6000) g");
    let mut args = args.to_vec();
    args.extend(["--kafka-property", "message.max.bytes=200000"]);
    let (code, out, err) = stream_until_now(&db, &broker, "arrow", &args).await;
    assert_eq!(code, 0, "{out}{err}");
    let messages = read_topics(&broker, &["arr.public.t".into()], true);
    let mut ids = Vec::new();
    let mut parts = HashSet::new();
    for m in &messages {
        let v = &m["value"];
        assert!(v["columns"].as_array().unwrap().iter().any(|c| c == "_op"), "{v}");
        for row in v["data"].as_array().unwrap() {
            ids.push(row["id"].as_i64().unwrap());
            if row["id"].as_i64().unwrap() <= 5000 {
                assert_eq!(row["v"].as_str().unwrap(), format!("row {}", row["id"]));
            }
        }
        let h = &m["headers"];
        assert_eq!(h["wal2arrow.table"], "public.t");
        parts.insert((
            h["wal2arrow.commit_lsn"].as_str().unwrap().to_owned(),
            h["wal2arrow.ordinal"].as_str().unwrap().to_owned(),
            h["wal2arrow.part"].as_str().unwrap().to_owned(),
        ));
        assert_eq!(m["key"], "public.t");
    }
    ids.sort_unstable();
    assert_eq!(ids, (1..=6000).collect::<Vec<i64>>(), "every row once");
    assert_eq!(parts.len(), messages.len(), "(commit LSN, ordinal, part) identifies each message");
    assert!(messages.len() > 7, "the wide batch was split: {} messages", messages.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_type_reaches_kafka_as_arrow_equal_to_the_batches_a_consumer_reads() {
    use wal2arrow_consumer::{PluginOptions, StreamOptions};
    let broker = KafkaBroker::start().expect("a Kafka broker (tansu)");
    let db = Cluster::shared().database("kafka_types");
    db.psql(&crate::types::all_types_sql());
    let args = ["--kafka-format", "arrow", "--topic-prefix", "ty", "--batch-rows", "1000"];
    let (code, out, err) = stream_until_now(&db, &broker, "types", &args).await;
    assert_eq!(code, 0, "{out}{err}");
    // A second slot, read by the consumer itself, decodes the same WAL.
    let mut options = StreamOptions::new("types_direct");
    options.plugin = PluginOptions { batch_rows: 1000, ..PluginOptions::default() };
    let mut direct = wal2arrow_consumer::open(&crate::common::config(&db), &options).await.unwrap();
    db.psql(
        "INSERT INTO all_types SELECT * FROM seed;
         UPDATE all_types SET c_text = 'changed' WHERE id = 1;
         UPDATE all_types SET id = 10 WHERE id = 5;
         DELETE FROM all_types WHERE id = 2;",
    );
    let txns = crate::common::read_txns(&mut direct, 4, Duration::from_secs(60)).await;
    let expected: Vec<arrow_array::RecordBatch> = txns
        .iter()
        .flat_map(|t| t.batches.iter())
        .filter(|b| b.table() == "public.all_types")
        .map(|b| b.batch.clone())
        .collect();
    direct.close().await.unwrap();
    let (code, out, err) = stream_until_now(&db, &broker, "types", &args).await;
    assert_eq!(code, 0, "{out}{err}");

    let messages = read_topics_as(&broker, &["ty.public.all_types".into()], Some("--raw"));
    let mut sorted: Vec<&Value> = messages.iter().collect();
    sorted.sort_by_key(|m| (m["partition"].as_i64(), m["offset"].as_i64()));
    let mut got = Vec::new();
    for m in sorted {
        let bytes = base64_decode(m["value"].as_str().unwrap());
        let reader =
            arrow_ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None).unwrap();
        for b in reader {
            got.push(b.unwrap());
        }
    }
    assert!(!expected.is_empty());
    let schema = expected[0].schema();
    assert_eq!(got[0].schema(), schema, "the schema, field metadata included");
    let concat =
        |b: &[arrow_array::RecordBatch]| arrow_select::concat::concat_batches(&schema, b).unwrap();
    let (got, expected) = (concat(&got), concat(&expected));
    assert_eq!(got.num_rows(), expected.num_rows());
    for (c, field) in schema.fields().iter().enumerate() {
        assert_eq!(got.column(c).as_ref(), expected.column(c).as_ref(), "column {}", field.name());
    }
}

fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let digits: Vec<u8> = text.bytes().filter(|&c| c != b'=').map(value).collect();
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for chunk in digits.chunks(4) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, &d)| n | u32::from(d) << (18 - 6 * i));
        out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_metadata_frames_each_transaction_and_a_row_too_large_is_named() {
    let broker = KafkaBroker::start().expect("a Kafka broker (tansu)");
    let db = Cluster::shared().database("kafka_txmeta");
    db.psql("CREATE TABLE a (id int8 PRIMARY KEY, v text); CREATE TABLE b (id int8 PRIMARY KEY)");
    let args = ["--topic-prefix", "tx", "--kafka-transaction-metadata"];
    let (code, out, err) = stream_until_now(&db, &broker, "txmeta", &args).await;
    assert_eq!(code, 0, "{out}{err}");
    db.psql(
        "BEGIN; INSERT INTO a VALUES (1, 'x'), (2, 'y'); INSERT INTO b VALUES (1); COMMIT;
         DELETE FROM a WHERE id = 1;",
    );
    let (code, out, err) = stream_until_now(&db, &broker, "txmeta", &args).await;
    assert_eq!(code, 0, "{out}{err}");
    let topics: Vec<String> =
        ["tx.transaction", "tx.public.a", "tx.public.b"].map(Into::into).to_vec();
    let messages = read_topics(&broker, &topics, false);
    let meta = by_id(&messages);
    assert_eq!(meta.len(), 2, "two transactions: {meta:?}");
    let mut ends: Vec<&Value> = meta
        .values()
        .map(|m| {
            assert_eq!(
                m.iter().map(|v| v["status"].as_str().unwrap()).collect::<Vec<_>>(),
                ["BEGIN", "END"]
            );
            assert_eq!(m[0]["event_count"], Value::Null);
            &m[1]
        })
        .collect();
    ends.sort_by_key(|e| e["event_count"].as_i64());
    assert_eq!(ends[0]["event_count"], 1, "the delete (its tombstone is not an event)");
    assert_eq!(
        ends[0]["data_collections"],
        serde_json::json!([{"data_collection": "public.a", "event_count": 1}])
    );
    assert_eq!(ends[1]["event_count"], 3);
    assert_eq!(
        ends[1]["data_collections"],
        serde_json::json!([
            {"data_collection": "public.a", "event_count": 2},
            {"data_collection": "public.b", "event_count": 1}
        ])
    );
    // Each event names its transaction and its place in it.
    let first_id = ends[1]["id"].as_str().unwrap();
    let mut blocks: Vec<(i64, i64, String)> = messages
        .iter()
        .filter(|m| m["topic"] != "tx.transaction")
        .filter_map(|m| m["value"].as_str())
        .map(|v| serde_json::from_str::<Value>(v).unwrap())
        .filter(|v| v["transaction"]["id"] == first_id)
        .map(|v| {
            let t = &v["transaction"];
            (
                t["total_order"].as_i64().unwrap(),
                t["data_collection_order"].as_i64().unwrap(),
                v["source"]["table"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    blocks.sort();
    assert_eq!(blocks, [(1, 1, "a".into()), (2, 2, "a".into()), (3, 1, "b".into())]);
    let (xid, lsn) = first_id.split_once(':').unwrap();
    assert!(xid.parse::<u32>().unwrap() > 0 && lsn.parse::<u64>().unwrap() > 0, "{first_id}");

    // A row over message.max.bytes stops the stream, naming it and the setting.
    db.psql("INSERT INTO a VALUES (7, repeat('z', 5000))");
    let mut args = args.to_vec();
    args.extend(["--kafka-property", "message.max.bytes=2000"]);
    let (code, out, err) = stream_until_now(&db, &broker, "txmeta", &args).await;
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("the insert of public.a with key {\"id\":7}")
            && err.contains("over message.max.bytes (2000)")
            && err.contains("--kafka-property message.max.bytes="),
        "{err}"
    );
}

/// The transaction-metadata messages by transaction ID, in partition order.
fn by_id(messages: &[Value]) -> BTreeMap<String, Vec<Value>> {
    let mut sorted: Vec<&Value> =
        messages.iter().filter(|m| m["topic"] == "tx.transaction").collect();
    sorted.sort_by_key(|m| (m["partition"].as_i64(), m["offset"].as_i64()));
    let mut out: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for m in sorted {
        let v: Value = serde_json::from_str(m["value"].as_str().unwrap()).unwrap();
        assert_eq!(
            m["key"].as_str().unwrap(),
            format!("{{\"id\":\"{}\"}}", v["id"].as_str().unwrap())
        );
        out.entry(v["id"].as_str().unwrap().to_owned()).or_default().push(v);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_twice_and_restarted_every_change_is_in_kafka_and_copies_are_identifiable() {
    killed_twice_and_restarted("kafka_kill", &[]).await;
}

/// The same with Kafka transactions: each restart fences the killed producer (aborting its
/// open transaction) and resumes from the position Kafka holds. (The test broker does not
/// hide aborted transactions from readers, so copies may still be read here: what is checked
/// is that nothing is lost and the restarts go through.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_twice_with_kafka_transactions_nothing_is_lost() {
    killed_twice_and_restarted("kafka_kill_txn", &["--kafka-transactions"]).await;
}

async fn killed_twice_and_restarted(label: &str, extra: &[&str]) {
    let broker = KafkaBroker::start().expect("a Kafka broker (tansu)");
    let db = Cluster::shared().database(label);
    db.psql("CREATE TABLE k (id int8 PRIMARY KEY, v int8)");
    let (code, out, err) = stream_until_now(&db, &broker, label, extra).await;
    assert_eq!(code, 0, "{out}{err}");
    // A writer: transactions of inserts, updates and deletes, at least 300 and on until both
    // runs are killed (so each has changes to send).
    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn({
        let dsn = db.dsn();
        let stop = stop.clone();
        async move {
            let config = wal2arrow_consumer::Config::from_dsn(&dsn).unwrap();
            let c = wal2arrow_consumer::sql_client(&config).await.unwrap();
            let mut i = 0i64;
            while i < 300 || !stop.load(Ordering::SeqCst) {
                // The updates touch the latest 1,100 ids only, so the work per transaction
                // stays the same however long the writer runs.
                c.batch_execute(&format!(
                    "BEGIN; INSERT INTO k SELECT g, 0 FROM generate_series({}, {}) g;
                     UPDATE k SET v = v + 1 WHERE id > {} AND id % 7 = {};
                     DELETE FROM k WHERE id = {}; COMMIT;",
                    i * 100 + 1,
                    i * 100 + 100,
                    i * 100 - 1000,
                    i % 7,
                    i * 50 + 3
                ))
                .await
                .unwrap();
                i += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            i
        }
    });
    // Each run is killed once Kafka holds some of its changes (its sink says so at debug
    // level), and a little later, in the middle of more.
    let mut killed_args = extra.to_vec();
    killed_args.extend(["--log-level", "warn,wal2arrow_sinks=debug"]);
    for _ in 0..2 {
        let mut child = stream_to_kafka(&db, &broker, label, &killed_args, None).spawn().unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let mut seen = String::new();
        let committed = tokio::time::timeout(Duration::from_secs(120), async {
            while let Some(line) = lines.next_line().await.unwrap() {
                seen.push_str(&line);
                seen.push('\n');
                if line.contains("Kafka committed the changes up to this commit")
                    && !line.contains("commit_lsn=0/0")
                {
                    return true;
                }
            }
            false
        })
        .await;
        assert!(matches!(committed, Ok(true)), "no commit reached Kafka: {seen}");
        // Keep the pipe drained so the run never blocks on its log.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(send_signal(child.id().unwrap(), "KILL"), 0);
        child.wait().await.unwrap();
    }
    stop.store(true, Ordering::SeqCst);
    let written = writer.await.unwrap() as usize;
    let transactions = extra.contains(&"--kafka-transactions");
    let mut last = extra.to_vec();
    last.extend(["--log-level", "info"]);
    let (code, out, err) = stream_until_now(&db, &broker, label, &last).await;
    assert_eq!(code, 0, "{out}{err}");
    if transactions {
        // The restart read back a position the killed runs' Kafka transactions recorded.
        let held = err
            .lines()
            .find(|l| l.contains("Kafka holds the changes up to this commit"))
            .unwrap_or_else(|| panic!("the position read back: {err}"));
        assert!(!held.contains("commit_lsn=0/0"), "{held}");
        let offsets = read_topics(&broker, &["wal2arrow.wal2arrow-offsets".into()], false);
        assert!(!offsets.is_empty(), "position records");
    }
    let messages = read_topics(&broker, &["wal2arrow.public.k".into()], false);
    // Copies removed by (commit LSN, ordinal, row, tombstone or not): exactly the changes.
    let mut unique = HashSet::new();
    let mut copies = 0;
    let mut ops: HashMap<String, usize> = HashMap::new();
    for m in &messages {
        let h = &m["headers"];
        let id = (
            h["wal2arrow.commit_lsn"].as_str().unwrap().to_owned(),
            h["wal2arrow.ordinal"].as_str().unwrap().to_owned(),
            h["wal2arrow.row"].as_str().unwrap().to_owned(),
            m["value"].is_null(),
        );
        if !unique.insert(id) {
            copies += 1;
            continue;
        }
        let op = match m["value"].as_str() {
            None => "tombstone".to_owned(),
            Some(v) => serde_json::from_str::<Value>(v).unwrap()["op"].as_str().unwrap().to_owned(),
        };
        *ops.entry(op).or_default() += 1;
    }
    assert_eq!(ops.get("c").copied().unwrap_or(0), written * 100, "every insert once: {ops:?}");
    assert_eq!(ops.get("d"), ops.get("tombstone"), "a tombstone per delete");
    assert_eq!(ops.get("d").copied().unwrap_or(0), written, "{ops:?}");
    let rows_now: usize = db.psql("SELECT count(*) FROM k").trim().parse().unwrap();
    assert_eq!(rows_now, written * 100 - written);
    // Each key's last message, in its partition's order, is the row as the table has it now
    // (a tombstone: gone): updates included, copies and all.
    let mut rebuilt: BTreeMap<i64, i64> = BTreeMap::new();
    for (key, changes) in by_key(&messages, "wal2arrow.public.k") {
        let id = serde_json::from_str::<Value>(&key).unwrap()["id"].as_i64().unwrap();
        let (op, value) = changes.last().unwrap();
        if op != "tombstone" {
            rebuilt.insert(id, value["after"]["v"].as_i64().unwrap());
        }
    }
    let table: BTreeMap<i64, i64> = db
        .psql("SELECT id || ' ' || v FROM k")
        .lines()
        .map(|l| {
            let (id, v) = l.trim().split_once(' ').unwrap();
            (id.parse().unwrap(), v.parse().unwrap())
        })
        .collect();
    assert_eq!(rebuilt, table, "the topic, replayed, is the table");
    eprintln!(
        "killed twice ({extra:?}): {} messages, {copies} copies of the unacknowledged tail",
        messages.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_stream_feeds_kafka_and_parquet_and_a_kill_leaves_parquet_exact() {
    let broker = KafkaBroker::start().expect("a Kafka broker (tansu)");
    let db = Cluster::shared().database("kafka_fanout");
    db.psql("CREATE TABLE f (id int8 PRIMARY KEY, v int8)");
    let dir = crate::cli::scratch_dir("kafka-fanout");
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("parquet");
    let out_arg = out.to_str().unwrap().to_owned();
    let extra = ["--sink", "parquet", "--out", &out_arg, "--roll-seconds", "1"];
    let (code, o, e) = stream_until_now(&db, &broker, "fan", &extra).await;
    assert_eq!(code, 0, "{o}{e}");
    let writer = tokio::spawn({
        let dsn = db.dsn();
        async move {
            let config = wal2arrow_consumer::Config::from_dsn(&dsn).unwrap();
            let c = wal2arrow_consumer::sql_client(&config).await.unwrap();
            for i in 0..200i64 {
                c.batch_execute(&format!(
                    "INSERT INTO f SELECT g, g FROM generate_series({}, {}) g",
                    i * 100 + 1,
                    i * 100 + 100
                ))
                .await
                .unwrap();
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
        }
    });
    let mut child = stream_to_kafka(&db, &broker, "fan", &extra, None).spawn().unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(send_signal(child.id().unwrap(), "KILL"), 0);
    child.wait().await.unwrap();
    writer.await.unwrap();
    let (code, o, e) = stream_until_now(&db, &broker, "fan", &extra).await;
    assert_eq!(code, 0, "{o}{e}");
    // Parquet: every row exactly once.
    let batches = wal2arrow_sinks::parquet::read_dir(&out.join("public.f")).unwrap();
    let mut ids: Vec<i64> = Vec::new();
    for b in &batches {
        use arrow_array::cast::AsArray;
        let col = b.column_by_name("id").unwrap().as_primitive::<arrow_array::types::Int64Type>();
        ids.extend(col.values().iter().copied());
    }
    ids.sort_unstable();
    assert_eq!(ids, (1..=20_000).collect::<Vec<i64>>(), "Parquet: every row exactly once");
    // Kafka: every row at least once, once by (commit LSN, ordinal, row).
    let messages = read_topics(&broker, &["wal2arrow.public.f".into()], false);
    let mut unique = HashSet::new();
    for m in &messages {
        let h = &m["headers"];
        let v: Value = serde_json::from_str(m["value"].as_str().unwrap()).unwrap();
        unique.insert((
            h["wal2arrow.commit_lsn"].as_str().unwrap().to_owned(),
            h["wal2arrow.ordinal"].as_str().unwrap().to_owned(),
            h["wal2arrow.row"].as_str().unwrap().to_owned(),
            v["after"]["id"].as_i64().unwrap(),
        ));
    }
    let kafka_ids: HashSet<i64> = unique.iter().map(|u| u.3).collect();
    assert_eq!(kafka_ids.len(), 20_000, "Kafka: every row");
    assert_eq!(unique.len(), 20_000, "Kafka: copies identified by their headers");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_stopped_mid_stream_holds_the_slot_back_and_nothing_is_lost_when_it_returns() {
    let broker = KafkaBroker::start().expect("a Kafka broker (tansu)");
    let db = Cluster::shared().database("kafka_broker_down");
    db.psql("CREATE TABLE b (id int8 PRIMARY KEY, v int8)");
    let (code, o, e) = stream_until_now(&db, &broker, "down", &[]).await;
    assert_eq!(code, 0, "{o}{e}");
    let mut child = stream_to_kafka(&db, &broker, "down", &["--heartbeat-seconds", "1"], None)
        .env("WAL2ARROW_LOG", "warn")
        .spawn()
        .unwrap();
    let log = crate::cli::capture_stderr(&mut child);
    let writer = sql(&db).await;
    writer.batch_execute("INSERT INTO b SELECT g, 0 FROM generate_series(1, 100) g").await.unwrap();
    let flushed = |db: &TestDb<'_>| crate::common::confirmed_flush(db, "down");
    let first = current_lsn(&db).parse::<wal2arrow_consumer::Lsn>().unwrap();
    wait_for("the first rows acknowledged", Duration::from_secs(30), || flushed(&db) >= first)
        .await;
    // The broker goes away; the writer goes on.
    broker.stop();
    writer
        .batch_execute("INSERT INTO b SELECT g, 1 FROM generate_series(101, 200) g")
        .await
        .unwrap();
    let stopped_at = current_lsn(&db).parse::<wal2arrow_consumer::Lsn>().unwrap();
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert!(flushed(&db) < stopped_at, "nothing acknowledged that the broker did not take");
    assert!(child.try_wait().unwrap().is_none(), "the stream waits for the broker");
    assert!(log.lock().unwrap().contains("has not acknowledged"), "it says why it waits");
    // It comes back — empty: this broker keeps its data in memory, so it lost the topic and
    // the producer's state. The stream either goes on, or (here) stops with an error saying
    // so; run again, as a supervisor would, it sends everything after the last acknowledged
    // transaction: nothing is lost.
    broker.restart().unwrap();
    writer
        .batch_execute("INSERT INTO b SELECT g, 2 FROM generate_series(201, 300) g")
        .await
        .unwrap();
    let end = current_lsn(&db);
    let status = tokio::time::timeout(Duration::from_secs(90), child.wait()).await;
    match status {
        Ok(status) => {
            assert_eq!(status.unwrap().code(), Some(1));
            let log = log.lock().unwrap().clone();
            assert!(log.contains("answers again but has not acknowledged"), "{log}");
        }
        Err(_) => {
            assert_eq!(send_signal(child.id().unwrap(), "TERM"), 0);
            child.wait().await.unwrap();
        }
    }
    assert!(flushed(&db) < stopped_at, "nothing acknowledged that the broker did not take");
    let (code, o, e) = run(stream_to_kafka(&db, &broker, "down", &[], Some(&end))).await;
    assert_eq!(code, 0, "{o}{e}");
    assert!(flushed(&db) >= end.parse().unwrap(), "the slot moved past the outage");
    let messages = read_topics(&broker, &["wal2arrow.public.b".into()], false);
    let ids: HashSet<i64> = messages
        .iter()
        .filter_map(|m| m["value"].as_str())
        .map(|v| serde_json::from_str::<Value>(v).unwrap()["after"]["id"].as_i64().unwrap())
        .collect();
    let after_outage: HashSet<i64> = (101..=300).collect();
    assert!(after_outage.is_subset(&ids), "every row from the outage on reached the new broker");
}

/// What Debezium's PostgreSQL connector sends for `col` of type `pgtype` (with
/// `decimal.handling.mode=string`, microsecond times, base64 binary), computed by PostgreSQL
/// itself: the oracle the sink's JSON is checked against. `NULL` for a value Arrow cannot hold.
fn debezium_json_sql(col: &str, pgtype: &str, dt: &arrow_schema::DataType) -> String {
    use arrow_schema::DataType as D;
    let specials = |c: &str| {
        format!(
            "CASE WHEN {c} IS NULL THEN NULL WHEN {c} = 'NaN' THEN to_json('NaN'::text) \
             WHEN {c} = 'Infinity' THEN to_json('Infinity'::text) \
             WHEN {c} = '-Infinity' THEN to_json('-Infinity'::text) ELSE to_json({c}) END"
        )
    };
    match pgtype {
        "int2" | "int4" | "int8" | "posint" | "bool" => format!("to_json({col})"),
        "oid" => format!("to_json({col}::int8)"),
        "float4" | "float8" => specials(col),
        _ if matches!(dt, D::Decimal128(..)) => format!(
            "CASE WHEN {col}::text IN ('NaN', 'Infinity', '-Infinity') THEN NULL \
             ELSE to_json({col}::text) END"
        ),
        "money" => format!("to_json({col}::numeric::text)"),
        "bytea" => format!("to_json(replace(encode({col}, 'base64'), E'\\n', ''))"),
        "date" => format!(
            "to_json(CASE WHEN {col} = 'infinity' THEN 2147483647 WHEN {col} = '-infinity' \
             THEN -2147483648 ELSE {col} - date '1970-01-01' END)"
        ),
        "time" => format!("to_json((extract(epoch FROM {col}) * 1000000)::int8)"),
        "timetz" => format!(
            "to_json(to_char(timestamp '2000-01-01' + make_interval(secs => \
             ((extract(epoch FROM {col}::time) - extract(timezone FROM {col}))::numeric \
             % 86400 + 86400) % 86400), 'HH24:MI:SS.US') || 'Z')"
        ),
        "timestamp" => format!(
            "to_json(CASE WHEN {col} = 'infinity' THEN 9223372036854775807 \
             WHEN {col} = '-infinity' THEN -9223372036854775808 \
             ELSE (extract(epoch FROM {col}) * 1000000)::int8 END)"
        ),
        "timestamptz" => format!(
            "to_json(CASE WHEN {col} = 'infinity' THEN 'infinity' \
             WHEN {col} = '-infinity' THEN '-infinity' \
             ELSE to_char({col} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') END)"
        ),
        // Months of 30.4375 days (2,629,800,000,000 µs), within the int64 range.
        "interval" => format!(
            "CASE WHEN {col} IS NOT NULL THEN to_json(greatest(least((extract(year FROM {col}) * 12 + extract(month FROM {col})) \
             * 2629800000000 + extract(day FROM {col}) * 86400000000 \
             + (extract(hour FROM {col}) * 3600 + extract(minute FROM {col}) * 60) * 1000000 \
             + extract(microseconds FROM {col}), 9223372036854775807), \
             -9223372036854775808)::int8) END"
        ),
        "int4[]" | "text[]" | "uuid[]" => format!("to_json({col})"),
        "numeric(6,2)[]" => format!(
            "CASE WHEN {col} IS NOT NULL THEN coalesce((SELECT json_agg(x::text ORDER BY o) \
             FROM unnest({col}) WITH ORDINALITY u(x, o)), '[]') END"
        ),
        // Two levels, as the Arrow type declares: a 1-D value wrapped, deeper ones flattened
        // below the first dimension.
        "int4[][]" => format!(
            "CASE WHEN {col} IS NULL THEN NULL WHEN array_ndims({col}) IS NULL THEN '[]' \
             WHEN array_ndims({col}) = 1 THEN json_build_array(to_json({col})) \
             ELSE (SELECT json_agg((SELECT json_agg(x ORDER BY o) \
                   FROM unnest({col}[i:i]) WITH ORDINALITY u(x, o)) ORDER BY i) \
                   FROM generate_subscripts({col}, 1) i) END"
        ),
        // Everything else is its output function's text.
        _ => format!("CASE WHEN num_nonnulls({col}) = 1 THEN to_json(format('%s', {col})) END"),
    }
}

/// The Connect schema Debezium gives a column: (type, logical name), arrays as
/// ("array", item's).
fn debezium_schema_of(pgtype: &str) -> Value {
    let plain = |t: &str| serde_json::json!({"type": t});
    let named = |t: &str, n: &str| serde_json::json!({"type": t, "name": n});
    let array = |item: Value| serde_json::json!({"type": "array", "items": item});
    match pgtype {
        "int2" => plain("int16"),
        "int4" | "posint" => plain("int32"),
        "int8" | "oid" => plain("int64"),
        "float4" => plain("float"),
        "float8" => plain("double"),
        "bool" => plain("boolean"),
        "bytea" => plain("bytes"),
        "date" => named("int32", "io.debezium.time.Date"),
        "time" => named("int64", "io.debezium.time.MicroTime"),
        "timetz" => named("string", "io.debezium.time.ZonedTime"),
        "timestamp" => named("int64", "io.debezium.time.MicroTimestamp"),
        "timestamptz" => named("string", "io.debezium.time.ZonedTimestamp"),
        "interval" => named("int64", "io.debezium.time.MicroDuration"),
        "uuid" => named("string", "io.debezium.data.Uuid"),
        "json" | "jsonb" => named("string", "io.debezium.data.Json"),
        "int4[]" => array(plain("int32")),
        "int4[][]" => array(array(plain("int32"))),
        "uuid[]" => array(named("string", "io.debezium.data.Uuid")),
        "text[]" | "numeric(6,2)[]" => array(plain("string")),
        _ => plain("string"),
    }
}

/// A schema as [`debezium_schema_of`] states it: type, name, items (field, optional and
/// version left out).
fn schema_shape(schema: &Value) -> Value {
    let mut out = serde_json::Map::new();
    out.insert("type".into(), schema["type"].clone());
    if let Some(n) = schema.get("name") {
        out.insert("name".into(), n.clone());
    }
    if let Some(items) = schema.get("items") {
        out.insert("items".into(), schema_shape(items));
    }
    Value::Object(out)
}

/// Whether a JSON value fits its Connect schema (as JsonConverter would read it).
fn fits(value: &Value, schema: &Value) -> bool {
    match (value, schema["type"].as_str().unwrap()) {
        (Value::Null, _) => schema["optional"] == true,
        (Value::Number(n), "int16" | "int32" | "int64") => n.is_i64() || n.is_u64(),
        // NaN and infinities are strings (documented).
        (Value::Number(_), "float" | "double") => true,
        (Value::String(s), "float" | "double") => {
            matches!(s.as_str(), "NaN" | "Infinity" | "-Infinity")
        }
        (Value::Bool(_), "boolean") => true,
        (Value::String(_), "string" | "bytes") => true,
        (Value::Array(items), "array") => items.iter().all(|i| fits(i, &schema["items"])),
        _ => false,
    }
}

/// JSON values equal, numbers by value (`7` and `7.0` are one number).
fn same_json(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(x), Some(y)) => x == y,
            _ => x.as_f64() == y.as_f64(),
        },
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same_json(a, b))
        }
        _ => a == b,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_random_workload_of_every_type_arrives_as_debezium_would_send_it_with_schemas() {
    let broker = KafkaBroker::start().expect("a Kafka broker (tansu)");
    let db = Cluster::shared().database("kafka_dbz_types");
    db.psql(&crate::types::all_types_sql());
    let columns = crate::types::columns();
    let client = crate::common::sql(&db).await;
    // The oracle: each seed row as Debezium's `after`, by seed id, computed by PostgreSQL.
    let exprs: Vec<String> = columns
        .iter()
        .map(|(c, t, dt, _)| format!("'{c}', {}", debezium_json_sql(c, t, dt)))
        .collect();
    // What Arrow's types cannot hold (README's type table): numeric NaN and infinities in
    // decimal columns, and the time 24:00:00.
    let unrep: Vec<String> = columns
        .iter()
        .filter_map(|(c, t, dt, _)| match (*t, dt) {
            (_, arrow_schema::DataType::Decimal128(..)) => Some(format!(
                "CASE WHEN {c}::text IN ('NaN', 'Infinity', '-Infinity') THEN '{c}' END"
            )),
            ("time" | "timetz", _) => Some(format!("CASE WHEN {c}::time = '24:00' THEN '{c}' END")),
            _ => None,
        })
        .collect();
    // json_build_object takes at most 100 arguments: two objects, merged.
    let half = exprs.len() / 2;
    let query = format!(
        "SELECT id, (jsonb_build_object({}) || jsonb_build_object({}))::text,
                array_remove(ARRAY[{}]::text[], NULL) FROM seed ORDER BY id",
        exprs[..half].join(", "),
        exprs[half..].join(", "),
        unrep.join(", ")
    );
    let mut seed: BTreeMap<i32, (serde_json::Map<String, Value>, Vec<String>)> = BTreeMap::new();
    for row in client.query(&query, &[]).await.unwrap() {
        let after: Value = serde_json::from_str(row.get::<_, &str>(1)).unwrap();
        seed.insert(row.get(0), (after.as_object().unwrap().clone(), row.get(2)));
    }
    let seeds: Vec<i32> = seed.keys().copied().collect();
    let names: Vec<&str> = columns.iter().map(|(c, ..)| *c).collect();
    let list = names.join(", ");

    let args = ["--topic-prefix", "dz", "--kafka-schemas"];
    let (code, out, err) = stream_until_now(&db, &broker, "dzt", &args).await;
    assert_eq!(code, 0, "{out}{err}");

    // A random workload (fixed seed, printed) over ids 1..=12, each row a copy of a seed row:
    // inserts, updates to another seed row's values, key changes, deletes; then a truncate.
    // The model keeps what each key's messages must be, in order: (op, before, after) as
    // (seed id, row id) pairs.
    type Image = Option<(i32, i32)>;
    let mut rng = 0x9e37_79b9_7f4a_7c15_u64 ^ std::process::id() as u64;
    eprintln!("workload seed {rng:#x}");
    let mut next = move |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    let mut live: BTreeMap<i32, i32> = BTreeMap::new(); // row id → seed id
    let mut expected: BTreeMap<i32, Vec<(&str, Image, Image)>> = BTreeMap::new();
    let mut script = String::new();
    for _txn in 0..25 {
        script.push_str("BEGIN;\n");
        for _ in 0..1 + next(5) {
            let id = 1 + next(12) as i32;
            let s = seeds[next(seeds.len() as u64) as usize];
            match (live.get(&id).copied(), next(3)) {
                (None, _) => {
                    script.push_str(&format!(
                        "INSERT INTO all_types (id, {list}) SELECT {id}, {list} FROM seed WHERE id = {s};\n"
                    ));
                    live.insert(id, s);
                    expected.entry(id).or_default().push(("c", None, Some((s, id))));
                }
                (Some(old), 0) => {
                    script.push_str(&format!(
                        "UPDATE all_types SET ({list}) = (SELECT {list} FROM seed WHERE id = {s}) WHERE id = {id};\n"
                    ));
                    live.insert(id, s);
                    expected.entry(id).or_default().push(("u", Some((old, id)), Some((s, id))));
                }
                (Some(old), 1) => {
                    let to = 1 + next(12) as i32;
                    if live.contains_key(&to) {
                        continue;
                    }
                    script.push_str(&format!("UPDATE all_types SET id = {to} WHERE id = {id};\n"));
                    live.remove(&id);
                    live.insert(to, old);
                    expected.entry(id).or_default().push(("d", Some((old, id)), None));
                    expected.entry(id).or_default().push(("tombstone", None, None));
                    expected.entry(to).or_default().push(("c", None, Some((old, to))));
                }
                (Some(old), _) => {
                    script.push_str(&format!("DELETE FROM all_types WHERE id = {id};\n"));
                    live.remove(&id);
                    expected.entry(id).or_default().push(("d", Some((old, id)), None));
                    expected.entry(id).or_default().push(("tombstone", None, None));
                }
            }
        }
        script.push_str("COMMIT;\n");
    }
    let count = |op: &str| expected.values().flatten().filter(|e| e.0 == op).count();
    assert!(count("c") > 0 && count("u") > 0 && count("d") > 0, "a workload of every kind");
    script.push_str("TRUNCATE all_types;\n");
    db.psql(&script);
    let (code, out, err) = stream_until_now(&db, &broker, "dzt", &args).await;
    assert_eq!(code, 0, "{out}{err}");

    let messages = read_topics(&broker, &["dz.public.all_types".into()], false);
    let mut sorted: Vec<&Value> = messages.iter().collect();
    sorted.sort_by_key(|m| (m["partition"].as_i64(), m["offset"].as_i64()));
    let mut got: BTreeMap<i32, Vec<&Value>> = BTreeMap::new();
    let mut truncates = 0;
    let mut schema_checked = false;
    for m in &sorted {
        let value: Option<Value> = m["value"].as_str().map(|v| serde_json::from_str(v).unwrap());
        let Some(key) = m["key"].as_str() else {
            // The truncate: no key, op t.
            let v = value.unwrap();
            assert_eq!(v["payload"]["op"], "t", "{v}");
            truncates += 1;
            continue;
        };
        let key: Value = serde_json::from_str(key).unwrap();
        assert_eq!(key["schema"]["name"], "dz.public.all_types.Key");
        assert_eq!(
            key["schema"]["fields"],
            serde_json::json!([{"type": "int32", "optional": false, "field": "id"}])
        );
        let id = key["payload"]["id"].as_i64().unwrap() as i32;
        got.entry(id).or_default().push(m);
        let Some(v) = value else { continue };
        // The envelope's schema: Debezium's names, and each column's type as Debezium's.
        let schema = &v["schema"];
        assert_eq!(schema["name"], "dz.public.all_types.Envelope");
        let field = |name: &str| {
            schema["fields"]
                .as_array()
                .unwrap()
                .iter()
                .find(|f| f["field"] == name)
                .unwrap()
                .clone()
        };
        assert_eq!(field("source")["name"], "io.debezium.connector.postgresql.Source");
        assert_eq!(field("after")["name"], "dz.public.all_types.Value");
        let fields = field("after")["fields"].as_array().unwrap().clone();
        if !schema_checked {
            for (c, t, ..) in &columns {
                let f = fields.iter().find(|f| f["field"] == *c).unwrap();
                assert_eq!(schema_shape(f), debezium_schema_of(t), "the schema of {c} ({t})");
            }
            schema_checked = true;
        }
        // Every value fits its schema, as JsonConverter would read it.
        for image in ["before", "after"] {
            if let Some(row) = v["payload"][image].as_object() {
                for f in &fields {
                    let name = f["field"].as_str().unwrap();
                    if let Some(x) = row.get(name) {
                        assert!(fits(x, f), "{image}.{name} = {x} does not fit {f}");
                    }
                }
            }
        }
    }
    assert_eq!(truncates, 1, "one truncate message");

    // Each key's messages, in partition order, are the model's, field by field.
    let image = |img: Image, v: &Value, what: &str| {
        let Some((s, id)) = img else {
            assert_eq!(*v, Value::Null, "{what}");
            return;
        };
        let (want, lost) = &seed[&s];
        let row = v.as_object().unwrap_or_else(|| panic!("{what}: {v}"));
        for (c, _, _, _) in &columns {
            let got = &row[*c];
            if lost.iter().any(|l| l == c) {
                assert_eq!(*got, Value::Null, "{what}: {c} is unrepresentable, sent as null");
                continue;
            }
            assert!(
                same_json(got, &want[*c]),
                "{what}: {c} = {got}, Debezium's is {} (the row: {v})",
                want[*c]
            );
        }
        assert_eq!(row["id"], id, "{what}");
    };
    assert_eq!(got.keys().collect::<Vec<_>>(), expected.keys().collect::<Vec<_>>());
    for (id, want) in &expected {
        let msgs = &got[id];
        assert_eq!(msgs.len(), want.len(), "key {id}: {msgs:?}");
        for (i, (m, (op, before, after))) in msgs.iter().zip(want).enumerate() {
            let what = format!("key {id}, message {i} ({op})");
            let Some(v) = m["value"].as_str() else {
                assert_eq!(*op, "tombstone", "{what}");
                continue;
            };
            let v: Value = serde_json::from_str(v).unwrap();
            let p = &v["payload"];
            assert_eq!(p["op"], *op, "{what}");
            assert!(p.get("missing").is_none(), "{what}: nothing is TOASTed unchanged here");
            let (s, _) = after.or(*before).unwrap();
            let lost = &seed[&s].1;
            let listed: Vec<String> = p
                .get("unrepresentable")
                .map(|u| serde_json::from_value(u.clone()).unwrap())
                .unwrap_or_default();
            assert_eq!(&listed, lost, "{what}: unrepresentable");
            image(*before, &p["before"], &format!("{what}, before"));
            image(*after, &p["after"], &format!("{what}, after"));
            assert_eq!(p["source"]["table"], "all_types");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_transactions_record_their_position_and_a_restart_skips_what_kafka_holds() {
    let broker = KafkaBroker::start().expect("a Kafka broker (tansu)");
    let db = Cluster::shared().database("kafka_txn");
    db.psql("CREATE TABLE t (id int8 PRIMARY KEY, v text)");
    // Two slots at one position, streaming under one transactional.id: the second is what a
    // restart whose slot was not acknowledged sees (every transaction delivered again).
    let args = ["--topic-prefix", "kt", "--kafka-property", "transactional.id=kt-shared"];
    for slot in ["kt_first", "kt_again"] {
        let (code, out, err) = stream_until_now(&db, &broker, slot, &args).await;
        assert_eq!(code, 0, "{out}{err}");
    }
    for t in 0..3 {
        db.psql(&format!(
            "INSERT INTO t SELECT g, 'row ' || g FROM generate_series({}, {}) g",
            t * 100 + 1,
            t * 100 + 100
        ));
    }
    let third_commit = current_lsn(&db);
    let (code, out, err) =
        run(stream_to_kafka(&db, &broker, "kt_first", &args, Some(&third_commit))).await;
    assert_eq!(code, 0, "{out}{err}");
    // The position Kafka holds, recorded in the same Kafka transaction as the rows.
    let offsets = read_topics(&broker, &["kt.wal2arrow-offsets".into()], false);
    let last = offsets.iter().rfind(|m| m["key"] == "kt-shared").expect("a position record");
    let record: Value = serde_json::from_str(last["value"].as_str().unwrap()).unwrap();
    assert_eq!(record["transactional_id"], "kt-shared");
    let held: wal2arrow_consumer::Lsn = record["commit_lsn"].as_str().unwrap().parse().unwrap();
    let third_commit: wal2arrow_consumer::Lsn = third_commit.parse().unwrap();
    assert!(held > wal2arrow_consumer::Lsn(0) && held <= third_commit, "{record}");
    db.psql("INSERT INTO t SELECT g, 'row ' || g FROM generate_series(301, 400) g");
    let mut again = args.to_vec();
    again.extend(["--log-level", "info"]);
    let (code, out, err) = stream_until_now(&db, &broker, "kt_again", &again).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        err.contains("Kafka holds the changes up to this commit")
            && err.contains(&held.to_string()),
        "the restart read the position back: {err}"
    );
    // Every row once: the three transactions Kafka held were skipped, the fourth written.
    let messages = read_topics(&broker, &["kt.public.t".into()], false);
    let mut ids: Vec<i64> = messages
        .iter()
        .map(|m| {
            let v: Value = serde_json::from_str(m["value"].as_str().unwrap()).unwrap();
            v["after"]["id"].as_i64().unwrap()
        })
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, (1..=400).collect::<Vec<i64>>(), "every row exactly once");
    // The second slot was acknowledged past the transactions it skipped.
    let flushed = crate::common::confirmed_flush(&db, "kt_again");
    assert!(flushed > held, "confirmed_flush {flushed}, Kafka held {held}");
    // The record names its source: the same ID and topics used for another database are
    // refused, not taken for positions of this one.
    let other = Cluster::shared().database("kafka_txn_other");
    other.psql("CREATE TABLE t (id int8 PRIMARY KEY, v text)");
    let (code, out, err) = stream_until_now(&other, &broker, "kt_other", &args).await;
    assert_ne!(code, 0, "{out}{err}");
    assert!(
        err.contains("is of another PostgreSQL source")
            && err.contains("Use another transactional.id"),
        "{err}"
    );
}
