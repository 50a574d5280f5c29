//! The wal2json fallback (issue 5): the same workload streamed through wal2arrow and through
//! wal2json from two slots at the same position gives the same events and the same Arrow
//! batches, differing only where the README says; and a server that refuses wal2arrow gets the
//! fallback automatically, with a log line saying why.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow_array::builder::{ListBuilder, StringBuilder};
use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, Float64Type};
use arrow_array::{Array, ArrayRef, Float32Array, Float64Array, RecordBatch, StringArray};
use arrow_schema::DataType;
use wal2arrow_consumer::{
    ChangeStream, Consumer, Event, Lsn, OutputPlugin, PluginChoice, PluginOptions,
    ReplicationClient,
};
use wal2arrow_harness::{Cluster, ClusterOptions, TestDb};

use crate::common::{config, read_events, sql};
use crate::types::{all_types_sql, columns};

/// Tables, types and seed data; created before the slots.
fn setup_sql() -> String {
    all_types_sql()
        + "CREATE TABLE keyed (b int, a int, v int4, price numeric(12,2), note text, PRIMARY KEY (b, a));
         CREATE TABLE by_index (id int NOT NULL, code text NOT NULL, v int);
         CREATE UNIQUE INDEX by_index_code ON by_index (code, id);
         ALTER TABLE by_index REPLICA IDENTITY USING INDEX by_index_code;
         CREATE TABLE toasted (id int PRIMARY KEY, big text, n int);
         ALTER TABLE toasted ALTER COLUMN big SET STORAGE EXTERNAL;
         CREATE TABLE parent (id int PRIMARY KEY);
         CREATE TABLE child (id int PRIMARY KEY, p int REFERENCES parent);
         CREATE TABLE excluded (id int PRIMARY KEY);
         SELECT pg_replication_origin_create('upstream_a');"
}

/// Every DML kind, both kinds of messages, TRUNCATE, an origin, and DDL between changes.
fn workload(db: &TestDb<'_>) {
    let assignments: Vec<String> = columns().iter().map(|(c, ..)| format!("{c} = s.{c}")).collect();
    for step in [
        "INSERT INTO all_types SELECT * FROM seed ORDER BY id".to_owned(),
        format!(
            "UPDATE all_types t SET {} FROM seed s WHERE s.id = t.id % 5 + 1",
            assignments.join(", ")
        ),
        "DELETE FROM all_types".to_owned(),
        // Interleaved tables, batches split at batch-rows, an excluded table.
        "BEGIN;
         INSERT INTO keyed SELECT g % 7, g, g * 10, g * 1.25, 'n' || g FROM generate_series(1, 250) g;
         INSERT INTO by_index SELECT g, 'c' || g, g FROM generate_series(1, 120) g;
         INSERT INTO excluded VALUES (1);
         INSERT INTO keyed VALUES (100, 1, 1, 1, 'late');
         COMMIT;"
            .to_owned(),
        // Key unchanged (no old image), key changed (old key), by index.
        "UPDATE keyed SET v = v + 1 WHERE a <= 5".to_owned(),
        "UPDATE keyed SET a = a + 1000 WHERE a <= 3".to_owned(),
        "UPDATE by_index SET v = 0 WHERE id <= 2; UPDATE by_index SET code = code || 'x' WHERE id = 3"
            .to_owned(),
        "DELETE FROM keyed WHERE a > 200 AND a < 1000; DELETE FROM by_index WHERE id > 100".to_owned(),
        // Unchanged TOAST values.
        "INSERT INTO toasted VALUES (1, repeat('x', 100000), 1);
         UPDATE toasted SET n = 2;
         UPDATE toasted SET big = 'small', n = 3;"
            .to_owned(),
        // Messages in a transaction, between its rows, and outside any.
        "BEGIN;
         INSERT INTO keyed VALUES (500, 1, 1, 1, 'm1');
         SELECT pg_logical_emit_message(true, 'app', 'between ✓');
         INSERT INTO keyed VALUES (500, 2, 1, 1, 'm2');
         COMMIT;
         SELECT pg_logical_emit_message(false, 'app', 'outside \"quoted\" \\ text');"
            .to_owned(),
        // TRUNCATE of several tables, and one between rows of a transaction.
        "INSERT INTO parent VALUES (1); INSERT INTO child VALUES (1, 1);
         TRUNCATE parent, child;
         BEGIN; INSERT INTO parent VALUES (5); TRUNCATE child; INSERT INTO child VALUES (7, 5); COMMIT;"
            .to_owned(),
        // A transaction replayed from a replication origin.
        "SELECT pg_replication_origin_session_setup('upstream_a');
         INSERT INTO keyed VALUES (700, 1, 1, 1, 'from upstream');
         SELECT pg_replication_origin_session_reset();"
            .to_owned(),
        // DDL: a new column, a new typmod, then a dropped and a renamed column.
        "ALTER TABLE keyed ADD COLUMN extra text;
         ALTER TABLE keyed ALTER COLUMN price TYPE numeric(14,4);
         INSERT INTO keyed VALUES (600, 1, 1, 1.5, 'after', 'e');
         UPDATE keyed SET extra = 'u' WHERE b = 600;
         ALTER TABLE keyed DROP COLUMN v;
         ALTER TABLE keyed RENAME COLUMN note TO memo;
         INSERT INTO keyed VALUES (601, 1, 2.5, 'renamed', 'e2');
         DELETE FROM keyed WHERE b = 600;"
            .to_owned(),
        "SELECT pg_logical_emit_message(false, 'diff', 'end')".to_owned(),
    ] {
        db.psql(&step);
    }
}

fn plugin_options() -> PluginOptions {
    let mut options = PluginOptions { batch_rows: 100, ..PluginOptions::default() };
    options.tables = wal2arrow_schema::TableFilter::parse_list(
        "public.all_types, public.keyed, public.by_*, public.toasted, public.parent, public.child",
    )
    .unwrap();
    options
}

async fn stream_until_end(stream: &mut ChangeStream) -> Vec<Event> {
    read_events(
        stream,
        Duration::from_secs(120),
        |events| matches!(events.last(), Some(Event::Message(m)) if m.prefix == "diff"),
    )
    .await
}

fn describe(e: &Event) -> String {
    match e {
        Event::Begin(b) => format!("Begin xid={} commit={}", b.xid, b.commit_lsn),
        Event::Relation(r) => format!("Relation {}", r.qualified_name),
        Event::Change(c) => {
            format!("Change {} rows={} {:?}", c.table(), c.num_rows(), c.position())
        }
        Event::Truncate(t) => format!(
            "Truncate {:?}",
            t.relations.iter().map(|r| r.qualified_name.clone()).collect::<Vec<_>>()
        ),
        Event::Message(m) => format!("Message {} {}", m.prefix, m.lsn),
        Event::Commit(c) => format!("Commit {} batches={}", c.commit_lsn, c.batches),
        other => format!("{other:?}"),
    }
}

/// What the README documents wal2json 2.5 cannot express, applied to a wal2arrow batch:
/// NaN and ±Infinity in float4, float8 and numeric columns arrive as NULL (JSON has no such
/// numbers, and wal2json before 2.6 cannot send them as strings).
fn as_wal2json_25_sends(batch: &RecordBatch) -> RecordBatch {
    use arrow_array::types::UInt8Type;
    let schema = batch.schema();
    let identity_key = schema.metadata()["wal2arrow:identity_key"].clone();
    let ops = batch.column_by_name("_op").unwrap().as_dictionary::<UInt8Type>();
    let op_names = ops.values().as_string::<i32>();
    // A column's value is in the row (so a NaN there would be NULL instead of missing) in new
    // images, and in old images for the identity key's columns.
    let carries = |row: usize, column: &str| {
        let op = op_names.value(ops.keys().value(row) as usize);
        matches!(op, "insert" | "update") || identity_key.contains(&format!("\"{column}\""))
    };
    let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
    let mut nan_columns = Vec::new();
    for (i, field) in schema.fields().iter().enumerate() {
        let oid = field.metadata().get("wal2arrow:typoid").map(String::as_str);
        if !matches!(oid, Some("700" | "701" | "1700")) {
            continue;
        }
        let col = batch.column(i);
        columns[i] = match field.data_type() {
            DataType::Float32 => Arc::new(Float32Array::from_iter(
                col.as_primitive::<Float32Type>().iter().map(|v| v.filter(|f| f.is_finite())),
            )),
            DataType::Float64 => Arc::new(Float64Array::from_iter(
                col.as_primitive::<Float64Type>().iter().map(|v| v.filter(|f| f.is_finite())),
            )),
            DataType::Utf8 => Arc::new(StringArray::from_iter(
                col.as_string::<i32>()
                    .iter()
                    .map(|v| v.filter(|t| !matches!(*t, "NaN" | "Infinity" | "-Infinity"))),
            )),
            // Decimal128: NaN is already NULL; it only leaves `_missing`.
            _ => Arc::clone(col),
        };
        nan_columns.push(field.name().clone());
    }
    let last = columns.len() - 1;
    let missing = batch.column(last).as_list::<i32>();
    let DataType::List(item) = schema.field(last).data_type().clone() else { unreachable!() };
    let mut b = ListBuilder::new(StringBuilder::new()).with_field(item);
    for row in 0..batch.num_rows() {
        let names: Vec<String> = if missing.is_null(row) {
            Vec::new()
        } else {
            missing
                .value(row)
                .as_string::<i32>()
                .iter()
                .flatten()
                .filter(|n| !(nan_columns.iter().any(|c| c == n) && carries(row, n)))
                .map(str::to_owned)
                .collect()
        };
        if names.is_empty() {
            b.append_null();
        } else {
            names.iter().for_each(|n| b.values().append_value(n));
            b.append(true);
        }
    }
    columns[last] = Arc::new(b.finish());
    RecordBatch::try_new(schema, columns).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_plugins_give_the_same_events_and_arrow_batches() {
    if !wal2arrow_harness::wal2json_installed() {
        return;
    }
    let db = Cluster::shared().database("differential");
    db.psql(&setup_sql());
    // Two slots at exactly the same position: the second is a copy of the first, with the
    // other plugin.
    db.psql(
        "SELECT pg_create_logical_replication_slot('diff_arrow', 'wal2arrow');
         SELECT pg_copy_logical_replication_slot('diff_arrow', 'diff_json', false, 'wal2json');",
    );
    let positions = db.psql(
        "SELECT string_agg(confirmed_flush_lsn::text, ' ') FROM pg_replication_slots \
         WHERE slot_name IN ('diff_arrow', 'diff_json')",
    );
    let p: Vec<&str> = positions.split_whitespace().collect();
    assert_eq!(p.len(), 2);
    assert_eq!(p[0], p[1], "both slots start at the same LSN");
    workload(&db);

    let options = plugin_options();
    let cfg = config(&db);
    let mut arrow = ReplicationClient::connect(&cfg)
        .await
        .unwrap()
        .start("diff_arrow", Lsn::INVALID, &options)
        .await
        .unwrap();
    let mut json = ReplicationClient::connect(&cfg)
        .await
        .unwrap()
        .start_wal2json("diff_json", Lsn::INVALID, &options, false)
        .await
        .unwrap();
    assert_eq!(arrow.output_plugin(), OutputPlugin::Wal2Arrow);
    assert_eq!(json.output_plugin(), OutputPlugin::Wal2Json);
    let a = stream_until_end(&mut arrow).await;
    let j = stream_until_end(&mut json).await;

    let listing = |events: &[Event]| events.iter().map(describe).collect::<Vec<_>>().join("\n");
    assert_eq!(
        a.iter().map(describe).collect::<Vec<_>>(),
        j.iter().map(describe).collect::<Vec<_>>(),
        "the same events in the same order\nwal2arrow:\n{}\nwal2json:\n{}",
        listing(&a),
        listing(&j)
    );
    let (mut batches, mut rows, mut nan_values) = (0, 0, 0);
    for (x, y) in a.iter().zip(&j) {
        match (x, y) {
            (Event::Begin(x), Event::Begin(y)) => assert_eq!(x, y),
            (Event::Commit(x), Event::Commit(y)) => assert_eq!(x, y),
            (Event::Relation(x), Event::Relation(y)) => {
                assert_eq!(x.schema, y.schema, "schema of {}", x.qualified_name);
                assert_eq!(x.relid, y.relid);
            }
            (Event::Change(x), Event::Change(y)) => {
                assert_eq!(
                    (x.table(), x.position(), x.xid, x.commit_time_us, &x.origin),
                    (y.table(), y.position(), y.xid, y.commit_time_us, &y.origin)
                );
                let documented = as_wal2json_25_sends(&x.batch);
                if documented != x.batch {
                    nan_values += 1;
                }
                for c in 0..x.batch.num_columns() {
                    assert_eq!(
                        documented.column(c).as_ref(),
                        y.batch.column(c).as_ref(),
                        "{} column {} at {:?}",
                        x.table(),
                        x.batch.schema().field(c).name(),
                        x.position()
                    );
                }
                assert_eq!(documented, y.batch);
                batches += 1;
                rows += x.num_rows();
            }
            (Event::Truncate(x), Event::Truncate(y)) => {
                let names = |t: &wal2arrow_consumer::TruncateEvent| {
                    t.relations.iter().map(|r| r.qualified_name.clone()).collect::<Vec<_>>()
                };
                assert_eq!(names(x), names(y));
                assert_eq!((x.commit_lsn, x.ordinal), (y.commit_lsn, y.ordinal));
                assert!(x.cascade.is_some() && x.restart_identity.is_some());
                assert_eq!((y.cascade, y.restart_identity), (None, None), "wal2json does not say");
            }
            (Event::Message(x), Event::Message(y)) => {
                assert_eq!(
                    (x.transactional, x.lsn, &x.prefix, x.content.as_slice(), x.txn),
                    (y.transactional, y.lsn, &y.prefix, y.content.as_slice(), y.txn)
                );
            }
            (x, y) => panic!("{} vs {}", describe(x), describe(y)),
        }
    }
    // The workload really covered what it claims.
    assert!(batches > 20 && rows > 450, "{batches} batches, {rows} rows");
    assert!(nan_values > 0, "the documented NaN difference was exercised");
    let kinds = |f: fn(&Event) -> bool| a.iter().filter(|e| f(e)).count();
    assert_eq!(kinds(|e| matches!(e, Event::Truncate(_))), 2);
    assert!(kinds(|e| matches!(e, Event::Relation(r) if r.name == "keyed")) >= 3, "DDL seen");
    assert!(
        a.iter()
            .any(|e| matches!(e, Event::Change(c) if c.origin.as_deref() == Some("upstream_a")))
    );
    let missing_toast = a.iter().any(|e| {
        matches!(e, Event::Change(c) if c.table() == "public.toasted"
            && (0..c.num_rows()).any(|r| c.missing(r) == ["big"]))
    });
    assert!(missing_toast, "an unchanged TOAST value was exercised");
    arrow.close().await.unwrap();
    json.close().await.unwrap();
    let client = sql(&db).await;
    for slot in ["diff_arrow", "diff_json"] {
        client.execute("SELECT pg_drop_replication_slot($1)", &[&slot]).await.unwrap();
    }
}

/// A `tracing` writer that keeps what is logged.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_server_without_wal2arrow_gets_the_wal2json_fallback_and_a_log_line() {
    if !wal2arrow_harness::wal2json_installed() {
        return;
    }
    // wal2arrow is neither installed nor listed in output_plugin_libraries (on servers that
    // have the setting): the server refuses it either way.
    let cluster = Cluster::start(&ClusterOptions {
        plugin: None,
        output_plugins: Some(vec!["pgoutput".into(), "test_decoding".into(), "wal2json".into()]),
        ..ClusterOptions::default()
    })
    .unwrap();
    let db = cluster.database("fallback");
    db.psql(
        "CREATE TABLE t (id int PRIMARY KEY, amount numeric(10,2), at timestamptz, tags text[])",
    );

    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let consumer = Consumer::builder()
        .dsn(&db.dsn())
        .unwrap()
        .slot("fallback_slot")
        .tables(["public.t"])
        .heartbeat_interval(None)
        .build()
        .unwrap();
    let report = consumer.check().await.unwrap();
    assert!(report.is_ok(), "the fallback is usable:\n{report}");
    let warned = report
        .checks
        .iter()
        .any(|c| matches!(&c.outcome, wal2arrow_consumer::Outcome::Warn { problem, .. } if problem.contains("fall back to wal2json")));
    assert!(warned, "the preflight report says it falls back:\n{report}");

    let mut stream = consumer.start().await.unwrap();
    assert_eq!(stream.output_plugin(), OutputPlugin::Wal2Json);
    let reason = stream.fallback_reason().expect("a reason").to_owned();
    assert!(
        reason.contains("may not be used as an output plugin")
            || reason.contains("could not access file"),
        "{reason}"
    );
    db.psql(
        "INSERT INTO t VALUES (1, 12.34, '2024-05-06 07:08:09.123456+00', '{a,NULL,\"b c\"}'), \
         (2, NULL, NULL, NULL)",
    );
    let mut batch = None;
    while batch.is_none() {
        match tokio::time::timeout(Duration::from_secs(30), stream.next()).await {
            Ok(Some(Ok(Event::Change(c)))) => batch = Some(c),
            Ok(Some(Ok(_))) => {}
            other => panic!("no batch: {other:?}"),
        }
    }
    let batch = batch.unwrap();
    assert_eq!(batch.table(), "public.t");
    let rendered = crate::common::rows(&batch.batch);
    assert_eq!(
        rendered,
        [
            (
                "insert".to_owned(),
                vec![
                    Some("1".to_owned()),
                    Some("12.34".to_owned()),
                    Some("2024-05-06T07:08:09.123456Z".to_owned()),
                    Some("[a, , b c]".to_owned())
                ],
                vec![]
            ),
            ("insert".to_owned(), vec![Some("2".to_owned()), None, None, None], vec![]),
        ]
    );
    assert_eq!(batch.batch.schema().field(1).data_type(), &DataType::Decimal128(10, 2));
    stream.close().await;

    let logged = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<&str> =
        logged.lines().filter(|l| l.contains("falling back to wal2json")).collect();
    assert_eq!(lines.len(), 1, "logged once: {logged}");
    assert!(lines[0].contains("WARN") && lines[0].contains(&reason), "{}", lines[0]);

    // A restarted consumer reads the slot with the plugin it was made for, and says why.
    let again = consumer.start().await.unwrap();
    assert_eq!(again.output_plugin(), OutputPlugin::Wal2Json);
    assert!(again.fallback_reason().unwrap().contains("created for wal2json"));
    again.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_explicit_wal2json_stream_applies_every_filter_and_its_slot_keeps_its_plugin() {
    if !wal2arrow_harness::wal2json_installed() {
        return;
    }
    let db = Cluster::shared().database("explicit_json");
    db.psql(
        "CREATE TABLE a (id int PRIMARY KEY); CREATE TABLE b (id int PRIMARY KEY);
         SELECT pg_replication_origin_create('noisy');",
    );
    let options = PluginOptions {
        add_msg_prefixes: vec!["keep".into()],
        // `noisy` exists now (wal2json filters it by ID), `late` is created after the start
        // (only the consumer can filter it).
        filter_origins: vec!["noisy".into(), "late".into()],
        ..PluginOptions::default()
    };
    let consumer = Consumer::builder()
        .dsn(&db.dsn())
        .unwrap()
        .slot("explicit_json")
        .tables(["public.a"])
        .plugin_options(options)
        .output_plugin(PluginChoice::Wal2Json)
        .heartbeat_interval(None)
        .build()
        .unwrap();
    let mut stream = consumer.start().await.unwrap();
    assert_eq!(stream.output_plugin(), OutputPlugin::Wal2Json);
    assert_eq!(stream.fallback_reason(), None, "asked for, not a fallback");
    db.psql(
        "SELECT pg_replication_origin_create('late');
         INSERT INTO a VALUES (1); INSERT INTO b VALUES (1);
         SELECT pg_logical_emit_message(false, 'keep', 'yes');
         SELECT pg_logical_emit_message(false, 'drop', 'no');
         SELECT pg_replication_origin_session_setup('noisy');
         INSERT INTO a VALUES (2);
         SELECT pg_replication_origin_session_reset();
         SELECT pg_replication_origin_session_setup('late');
         INSERT INTO a VALUES (3);
         SELECT pg_replication_origin_session_reset();
         INSERT INTO a VALUES (4);
         SELECT pg_logical_emit_message(false, 'keep', 'end');",
    );
    let mut rows = Vec::new();
    let mut messages = Vec::new();
    while messages.last().map(String::as_str) != Some("end") {
        match tokio::time::timeout(Duration::from_secs(30), stream.next()).await {
            Ok(Some(Ok(Event::Change(c)))) => {
                assert_eq!(c.table(), "public.a");
                let ids = c.batch.column(0).as_primitive::<arrow_array::types::Int32Type>();
                rows.extend(ids.values().iter().copied());
            }
            Ok(Some(Ok(Event::Message(m)))) => {
                assert_eq!(m.prefix, "keep");
                messages.push(String::from_utf8_lossy(m.content.as_slice()).into_owned());
            }
            Ok(Some(Ok(_))) => {}
            other => panic!("stream ended: {other:?}"),
        }
    }
    assert_eq!(rows, [1, 4], "table b and both filtered origins are left out");
    assert_eq!(messages, ["yes", "end"]);
    stream.close().await;

    // The slot was made for wal2json: a consumer allowed only wal2arrow refuses it.
    let e = Consumer::builder()
        .dsn(&db.dsn())
        .unwrap()
        .slot("explicit_json")
        .output_plugin(PluginChoice::Wal2Arrow)
        .preflight(false)
        .build()
        .unwrap()
        .start()
        .await
        .unwrap_err();
    assert!(
        matches!(e.client_error(), Some(wal2arrow_client::Error::Slot(_)))
            && e.to_string().contains("wal2json"),
        "{e}"
    );
    let report = Consumer::builder()
        .dsn(&db.dsn())
        .unwrap()
        .slot("explicit_json")
        .output_plugin(PluginChoice::Wal2Arrow)
        .build()
        .unwrap()
        .check()
        .await
        .unwrap();
    assert!(
        matches!(&report.check("slot").unwrap().outcome, wal2arrow_consumer::Outcome::Fail { .. }),
        "{report}"
    );
    sql(&db).await.execute("SELECT pg_drop_replication_slot('explicit_json')", &[]).await.unwrap();
}
