//! The complete change model (issue 3): UPDATE and DELETE with every replica identity,
//! unchanged TOAST values, TRUNCATE, logical messages, origins, table patterns, DDL mid-stream,
//! a million-row transaction, the include options, and every way to get an option wrong.

use std::time::Duration;

use arrow_array::RecordBatch;
use wal2arrow_client::Error;
use wal2arrow_consumer::{Event, StreamOptions};
use wal2arrow_harness::Cluster;
use wal2arrow_schema::Message;

use crate::common::{config, peek, read_events, read_txns, rows, sql, start_retrying};

type Row = (String, Vec<Option<String>>, Vec<String>);

fn row(op: &str, values: &[Option<&str>], missing: &[&str]) -> Row {
    (
        op.to_owned(),
        values.iter().map(|v| v.map(str::to_owned)).collect(),
        missing.iter().map(|m| (*m).to_owned()).collect(),
    )
}

/// All rows of the table `table` in decoded messages, in stream order.
fn table_rows(messages: &[Message], table: &str) -> Vec<Row> {
    messages
        .iter()
        .filter_map(|m| match m {
            Message::Batch(b) if b.relation.qualified_name == table => Some(rows(&b.batch)),
            _ => None,
        })
        .flatten()
        .collect()
}

fn batches(messages: &[Message]) -> Vec<&RecordBatch> {
    messages
        .iter()
        .filter_map(|m| if let Message::Batch(b) = m { Some(&b.batch) } else { None })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_images_follow_each_replica_identity() {
    let db = Cluster::shared().database("replica_identity");
    db.psql(
        "CREATE TABLE ri_default (id int PRIMARY KEY, v text, w int);
         CREATE TABLE ri_index (a int NOT NULL, b int NOT NULL, v text);
         CREATE UNIQUE INDEX ri_index_ab ON ri_index (a, b);
         ALTER TABLE ri_index REPLICA IDENTITY USING INDEX ri_index_ab;
         CREATE TABLE ri_full (id int, v text);
         ALTER TABLE ri_full REPLICA IDENTITY FULL;
         CREATE TABLE ri_nothing (id int PRIMARY KEY, v text);
         ALTER TABLE ri_nothing REPLICA IDENTITY NOTHING;
         CREATE TABLE ri_nokey (id int, v text);
         SELECT pg_create_logical_replication_slot('ri', 'wal2arrow');",
    );
    for sql in [
        "INSERT INTO ri_default VALUES (1, 'a', 10)",
        "UPDATE ri_default SET v = 'b'",
        "UPDATE ri_default SET id = 2",
        "DELETE FROM ri_default",
        "INSERT INTO ri_index VALUES (1, 2, 'x')",
        "UPDATE ri_index SET v = 'y'",
        "UPDATE ri_index SET a = 5",
        "DELETE FROM ri_index",
        "INSERT INTO ri_full VALUES (1, 'x')",
        "UPDATE ri_full SET v = 'y'",
        "DELETE FROM ri_full",
        "INSERT INTO ri_nothing VALUES (1, 'x')",
        "UPDATE ri_nothing SET v = 'y'",
        "DELETE FROM ri_nothing",
        "INSERT INTO ri_nokey VALUES (1, 'x')",
        "DELETE FROM ri_nokey",
    ] {
        db.psql(sql);
    }
    let client = sql(&db).await;
    let m = peek(&client, "ri", &[]).await.unwrap();
    let (one, two, ten, x, y) = (Some("1"), Some("2"), Some("10"), Some("x"), Some("y"));
    // DEFAULT: the primary key, and only when it changed.
    assert_eq!(
        table_rows(&m, "public.ri_default"),
        [
            row("insert", &[one, Some("a"), ten], &[]),
            row("update", &[one, Some("b"), ten], &[]),
            row("update_before", &[one, None, None], &["v", "w"]),
            row("update", &[two, Some("b"), ten], &[]),
            row("delete", &[two, None, None], &["v", "w"]),
        ]
    );
    // USING INDEX: the index's columns.
    assert_eq!(
        table_rows(&m, "public.ri_index"),
        [
            row("insert", &[one, two, x], &[]),
            row("update", &[one, two, y], &[]),
            row("update_before", &[one, two, None], &["v"]),
            row("update", &[Some("5"), two, y], &[]),
            row("delete", &[Some("5"), two, None], &["v"]),
        ]
    );
    // FULL: the whole old row, every time.
    assert_eq!(
        table_rows(&m, "public.ri_full"),
        [
            row("insert", &[one, x], &[]),
            row("update_before", &[one, x], &[]),
            row("update", &[one, y], &[]),
            row("delete", &[one, y], &[]),
        ]
    );
    // NOTHING, and DEFAULT without a key: a delete whose row is unknown.
    assert_eq!(
        table_rows(&m, "public.ri_nothing"),
        [
            row("insert", &[one, x], &[]),
            row("update", &[one, y], &[]),
            row("delete", &[None, None], &["id", "v"])
        ]
    );
    assert_eq!(
        table_rows(&m, "public.ri_nokey"),
        [row("insert", &[one, x], &[]), row("delete", &[None, None], &["id", "v"])]
    );
    // The schema says which columns old images carry.
    let schema_of = |t: &str| {
        m.iter()
            .find_map(|m| match m {
                Message::Schema(r) if r.qualified_name == t => Some(r.clone()),
                _ => None,
            })
            .unwrap()
    };
    let d = schema_of("public.ri_default");
    assert_eq!(
        (d.primary_key.clone(), d.identity_key.clone()),
        (vec!["id".to_owned()], vec!["id".to_owned()])
    );
    let i = schema_of("public.ri_index");
    assert_eq!(i.identity_key, ["a", "b"]);
    assert_eq!(i.replica_identity.as_str(), "index");
    assert_eq!(schema_of("public.ri_full").identity_key, ["id", "v"]);
    assert!(schema_of("public.ri_nothing").identity_key.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_toast_values_are_missing_not_null() {
    let db = Cluster::shared().database("toast");
    db.psql(
        "CREATE TABLE docs (id int PRIMARY KEY, body text, n int);
         ALTER TABLE docs ALTER body SET STORAGE EXTERNAL;
         SELECT pg_create_logical_replication_slot('toast', 'wal2arrow');",
    );
    let big = "(SELECT string_agg(md5(i::text), '') FROM generate_series(1, 400) i)";
    db.psql(&format!("INSERT INTO docs VALUES (1, {big}, 0)"));
    db.psql("UPDATE docs SET n = 1"); // body unchanged: stays in the TOAST table, not in the WAL
    db.psql("UPDATE docs SET body = body || '!', n = 2"); // body changed: in the WAL
    db.psql("UPDATE docs SET body = NULL, n = 3"); // a real NULL
    db.psql("UPDATE docs SET n = 4");
    let expected_body: String = db.psql(&format!("SELECT {big}"));
    let m = peek(&sql(&db).await, "toast", &[]).await.unwrap();
    let r = table_rows(&m, "public.docs");
    let body = |i: usize| r[i].1[1].clone();
    assert_eq!(body(0).as_deref(), Some(expected_body.as_str()));
    assert_eq!(
        (body(1), r[1].2.clone()),
        (None, vec!["body".to_owned()]),
        "unchanged TOAST: missing, not NULL"
    );
    assert_eq!(body(2), Some(format!("{expected_body}!")));
    assert!(r[2].2.is_empty());
    assert_eq!((body(3), r[3].2.clone()), (None, vec![]), "a real NULL is not missing");
    assert_eq!((body(4), r[4].2.clone()), (None, vec![]));
    assert_eq!(
        r.iter().map(|r| r.0.as_str()).collect::<Vec<_>>(),
        ["insert", "update", "update", "update", "update"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncate_names_every_table_and_its_flags_after_the_rows_before_it() {
    let db = Cluster::shared().database("truncate");
    db.psql(
        "CREATE TABLE parent (id int PRIMARY KEY);
         CREATE TABLE child (id int REFERENCES parent);
         CREATE TABLE counter (id serial, v int);
         CREATE TABLE other (v int);",
    );
    let mut stream =
        wal2arrow_consumer::open(&config(&db), &StreamOptions::new("truncate_slot")).await.unwrap();
    db.psql("BEGIN; INSERT INTO parent VALUES (1); INSERT INTO child VALUES (1); INSERT INTO counter (v) VALUES (1); COMMIT");
    db.psql("TRUNCATE parent CASCADE");
    db.psql("BEGIN; INSERT INTO counter (v) VALUES (2); TRUNCATE counter, other RESTART IDENTITY; COMMIT");
    let txns = read_txns(&mut stream, 3, Duration::from_secs(30)).await;
    let kinds = |t: &crate::common::Txn| -> Vec<String> {
        t.events
            .iter()
            .map(|e| match e {
                Event::Relation(r) => format!("schema {}", r.qualified_name),
                Event::Change(c) => format!("batch {}", c.table()),
                Event::Truncate(t) => {
                    let mut names: Vec<&str> =
                        t.relations.iter().map(|r| r.qualified_name.as_str()).collect();
                    names.sort();
                    format!(
                        "truncate {} cascade={} restart={}",
                        names.join(","),
                        t.cascade.unwrap(),
                        t.restart_identity.unwrap()
                    )
                }
                other => format!("{other:?}"),
            })
            .collect()
    };
    assert_eq!(kinds(&txns[1]), ["truncate public.child,public.parent cascade=true restart=false"]);
    assert_eq!(
        kinds(&txns[2]),
        [
            "schema public.other",
            "batch public.counter",
            "truncate public.counter,public.other cascade=false restart=true"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logical_messages_arrive_in_place_and_prefix_filters_apply() {
    let db = Cluster::shared().database("messages");
    db.psql("CREATE TABLE m (v int)");
    let mut options = StreamOptions::new("messages_slot");
    options.plugin.add_msg_prefixes = vec!["keep".into(), "also".into()];
    options.plugin.filter_msg_prefixes = vec!["also".into()];
    let mut stream = wal2arrow_consumer::open(&config(&db), &options).await.unwrap();
    db.psql(
        "BEGIN;
         INSERT INTO m VALUES (1);
         SELECT pg_logical_emit_message(true, 'keep', 'in the transaction');
         SELECT pg_logical_emit_message(true, 'drop', 'not asked for');
         SELECT pg_logical_emit_message(true, 'also', 'filtered out');
         INSERT INTO m VALUES (2);
         COMMIT",
    );
    db.psql("SELECT pg_logical_emit_message(false, 'keep', '\\x00ff'::bytea)");
    let events = read_events(&mut stream, Duration::from_secs(30), |e| {
        e.iter().any(|e| matches!(e, Event::Message(m) if !m.transactional))
    })
    .await;
    let shape: Vec<String> = events
        .iter()
        .filter_map(|e| match e {
            Event::Begin(_) => Some("begin".into()),
            Event::Change(c) => Some(format!("batch {}", c.num_rows())),
            Event::Message(m) => Some(format!(
                "message {} {} {:?} {}",
                if m.transactional { "tx" } else { "now" },
                m.prefix,
                m.content.as_slice(),
                m.txn.map_or("-".to_owned(), |t| t.2.to_string())
            )),
            Event::Commit(_) => Some("commit".into()),
            _ => None,
        })
        .collect();
    assert_eq!(
        shape,
        [
            "begin",
            "batch 1",
            &format!("message tx keep {:?} 1", b"in the transaction"),
            "batch 1",
            "commit",
            "message now keep [0, 255] -",
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origins_are_reported_and_filter_origins_drops_them() {
    let db = Cluster::shared().database("origins");
    db.psql(
        "CREATE TABLE o (v text);
         SELECT pg_replication_origin_create('replica_a');
         SELECT pg_create_logical_replication_slot('origins', 'wal2arrow');",
    );
    let replicated = sql(&db).await;
    replicated
        .batch_execute("SELECT pg_replication_origin_session_setup('replica_a')")
        .await
        .unwrap();
    replicated.batch_execute("INSERT INTO o VALUES ('from replica_a')").await.unwrap();
    replicated.batch_execute("SELECT pg_replication_origin_session_reset()").await.unwrap();
    db.psql("INSERT INTO o VALUES ('local')");
    let client = sql(&db).await;

    let all = peek(&client, "origins", &[]).await.unwrap();
    let origins: Vec<&str> = all
        .iter()
        .filter_map(
            |m| if let Message::Origin { name, .. } = m { Some(name.as_str()) } else { None },
        )
        .collect();
    assert_eq!(origins, ["replica_a"]);
    let values: Vec<_> =
        table_rows(&all, "public.o").into_iter().map(|r| r.1[0].clone().unwrap()).collect();
    assert_eq!(values, ["from replica_a", "local"]);

    let filtered = peek(&client, "origins", &[("filter-origins", "replica_a")]).await.unwrap();
    let values: Vec<_> =
        table_rows(&filtered, "public.o").into_iter().map(|r| r.1[0].clone().unwrap()).collect();
    assert_eq!(values, ["local"]);
    let star = peek(&client, "origins", &[("filter-origins", "*")]).await.unwrap();
    assert_eq!(table_rows(&star, "public.o").len(), 1);
    let quiet = peek(&client, "origins", &[("include-origin", "false")]).await.unwrap();
    assert!(!quiet.iter().any(|m| matches!(m, Message::Origin { .. })));

    // Over the replication protocol, the origin is on the transaction's batches.
    let mut stream =
        wal2arrow_consumer::open(&config(&db), &StreamOptions::new("origins")).await.unwrap();
    let txns = read_txns(&mut stream, 2, Duration::from_secs(30)).await;
    let batch_origin = |t: &crate::common::Txn| {
        t.batches.first().and_then(|b| b.origin.as_deref().map(str::to_owned))
    };
    let origins: Vec<Option<String>> =
        txns.iter().filter(|t| !t.batches.is_empty()).map(batch_origin).collect();
    assert_eq!(origins, [Some("replica_a".to_owned()), None]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_table_pattern_form_selects_its_tables() {
    let db = Cluster::shared().database("patterns");
    db.psql(
        "CREATE SCHEMA sales; CREATE SCHEMA analytics; CREATE SCHEMA \"my.schema\";
         CREATE TABLE public.users (v int); CREATE TABLE public.user_001 (v int);
         CREATE TABLE public.user_x (v int); CREATE TABLE public.orders (v int);
         CREATE TABLE sales.orders (v int); CREATE TABLE analytics.events (v int);
         CREATE TABLE \"my.schema\".\"Mixed\" (v int);
         SELECT pg_create_logical_replication_slot('patterns', 'wal2arrow');",
    );
    db.psql(
        "INSERT INTO public.users VALUES (1); INSERT INTO public.user_001 VALUES (1);
         INSERT INTO public.user_x VALUES (1); INSERT INTO public.orders VALUES (1);
         INSERT INTO sales.orders VALUES (1); INSERT INTO analytics.events VALUES (1);
         INSERT INTO \"my.schema\".\"Mixed\" VALUES (1); TRUNCATE sales.orders",
    );
    let client = sql(&db).await;
    let tables = |messages: &[Message]| {
        let mut t: Vec<String> = messages
            .iter()
            .filter_map(|m| match m {
                Message::Batch(b) => Some(b.relation.qualified_name.clone()),
                Message::Truncate { relations, .. } => Some(format!(
                    "truncate {}",
                    relations
                        .iter()
                        .map(|r| r.qualified_name.as_str())
                        .collect::<Vec<_>>()
                        .join(",")
                )),
                _ => None,
            })
            .collect();
        t.sort();
        t
    };
    for (pattern, expected) in [
        ("public.users", vec!["public.users"]),
        ("public.*", vec!["public.orders", "public.user_001", "public.user_x", "public.users"]),
        ("*.orders", vec!["public.orders", "sales.orders", "truncate sales.orders"]),
        ("public.user_*", vec!["public.user_001", "public.user_x"]),
        ("public.user_[0-9]+", vec!["public.user_001"]),
        ("public.users, analytics.*", vec!["analytics.events", "public.users"]),
        ("\"my.schema\".\"Mixed\"", vec!["my.schema.Mixed"]),
        ("nothing.here", vec![]),
    ] {
        let m = peek(&client, "patterns", &[("tables", pattern)]).await.unwrap();
        assert_eq!(tables(&m), expected, "tables = {pattern}");
        let schemas = m.iter().filter(|m| matches!(m, Message::Schema(_))).count();
        assert_eq!(
            schemas,
            expected.iter().filter(|e| !e.starts_with("truncate")).count(),
            "{pattern}: schemas only for captured tables"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ddl_mid_stream_sends_a_new_schema_before_the_next_change() {
    let db = Cluster::shared().database("ddl");
    db.psql("CREATE TABLE evolving (id int, a text)");
    let mut stream =
        wal2arrow_consumer::open(&config(&db), &StreamOptions::new("ddl_slot")).await.unwrap();
    for sql in [
        "INSERT INTO evolving VALUES (1, 'one')",
        "ALTER TABLE evolving ADD COLUMN b int DEFAULT 7",
        "INSERT INTO evolving VALUES (2, 'two', 2)",
        "ALTER TABLE evolving DROP COLUMN a",
        "INSERT INTO evolving VALUES (3, 3)",
        "ALTER TABLE evolving RENAME COLUMN b TO c",
        "INSERT INTO evolving VALUES (4, 4)",
        "ALTER TABLE evolving ALTER COLUMN c TYPE bigint",
        "INSERT INTO evolving VALUES (5, 5)",
        // DDL inside the transaction that also changes rows: two batches, two schemas.
        "BEGIN; INSERT INTO evolving VALUES (6, 6); ALTER TABLE evolving ADD COLUMN d text; \
         INSERT INTO evolving VALUES (7, 7, 'seven'); COMMIT",
    ] {
        db.psql(sql);
    }
    let txns = read_txns(&mut stream, 10, Duration::from_secs(60)).await;
    let mut seen = Vec::new();
    for t in &txns {
        for e in &t.events {
            match e {
                Event::Relation(r) => {
                    let cols: Vec<String> = r.schema.fields()[..r.table_columns()]
                        .iter()
                        .map(|f| {
                            format!("{}:{}", f.name(), f.metadata()["ADBC:postgresql:typname"])
                        })
                        .collect();
                    seen.push(format!("schema {}", cols.join(",")));
                }
                Event::Change(c) => {
                    assert_eq!(
                        c.batch.schema(),
                        c.relation.schema,
                        "a batch uses the schema before it"
                    );
                    for (_, values, _) in rows(&c.batch) {
                        seen.push(format!(
                            "row {}",
                            values
                                .iter()
                                .map(|v| v.clone().unwrap_or("∅".into()))
                                .collect::<Vec<_>>()
                                .join(",")
                        ));
                    }
                }
                _ => {}
            }
        }
    }
    assert_eq!(
        seen,
        [
            "schema id:int4,a:text",
            "row 1,one",
            "schema id:int4,a:text,b:int4",
            "row 2,two,2",
            "schema id:int4,b:int4",
            "row 3,3",
            "schema id:int4,c:int4",
            "row 4,4",
            "schema id:int4,c:int8",
            "row 5,5",
            "row 6,6",
            "schema id:int4,c:int8,d:text",
            "row 7,7,seven",
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_row_transaction_streams_in_bounded_batches() {
    let db = Cluster::shared().database("million");
    db.psql("CREATE TABLE big (id int8, payload text)");
    let mut options = StreamOptions::new("million_slot");
    options.plugin.batch_rows = 50_000;
    let mut stream = wal2arrow_consumer::open(&config(&db), &options).await.unwrap();
    db.psql("INSERT INTO big SELECT g, 'row ' || g FROM generate_series(1, 1000000) g");
    let txns = read_txns(&mut stream, 1, Duration::from_secs(300)).await;
    let sizes: Vec<usize> = txns[0].batches.iter().map(|b| b.num_rows()).collect();
    assert_eq!(sizes.iter().sum::<usize>(), 1_000_000);
    assert!(sizes.iter().all(|s| *s <= 50_000), "{sizes:?}");
    assert_eq!(sizes.len(), 20);
    // No message holds more than one batch's worth of rows.
    let largest = txns[0].batches.iter().map(|b| b.payload().len()).max().unwrap();
    assert!(largest < 50_000 * 40, "largest message {largest} bytes");
    // Every id once, in order.
    let mut next = 1i64;
    for b in &txns[0].batches {
        use arrow_array::cast::AsArray;
        for id in b.batch.column(0).as_primitive::<arrow_array::types::Int64Type>().values() {
            assert_eq!(*id, next);
            next += 1;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn include_options_and_skip_empty_xacts() {
    let db = Cluster::shared().database("include_options");
    db.psql(
        "CREATE TABLE kept (v int); CREATE TABLE skipped (v int);
         SELECT pg_create_logical_replication_slot('incl', 'wal2arrow');",
    );
    db.psql("INSERT INTO kept VALUES (1)");
    db.psql("INSERT INTO skipped VALUES (1)");
    let client = sql(&db).await;
    let begins = |m: &[Message]| {
        m.iter()
            .filter_map(|m| if let Message::Begin(b) = m { Some(*b) } else { None })
            .collect::<Vec<_>>()
    };
    let all = peek(&client, "incl", &[("tables", "public.kept")]).await.unwrap();
    assert!(begins(&all).len() >= 2, "empty transactions are sent by default");
    assert!(begins(&all).iter().all(|b| b.xid != 0 && b.commit_time_us > 0));
    let skipping = peek(&client, "incl", &[("tables", "public.kept"), ("skip-empty-xacts", "on")])
        .await
        .unwrap();
    assert_eq!(begins(&skipping).len(), 1, "only the transaction with a captured change");
    let bare = peek(
        &client,
        "incl",
        &[
            ("tables", "public.kept"),
            ("include-xids", "0"),
            ("include-timestamps", "no"),
            ("include-lsn", "false"),
        ],
    )
    .await
    .unwrap();
    assert!(begins(&bare).iter().all(|b| b.xid == 0 && b.commit_time_us == 0));
    let schema = batches(&bare)[0].schema();
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(names, ["v", "_op", "_missing", "_unrepresentable"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_option_is_an_error_and_the_server_stays_up() {
    let cluster = Cluster::shared();
    let db = cluster.database("bad_options");
    db.psql("SELECT pg_create_logical_replication_slot('bad', 'wal2arrow')");
    let pid = cluster.postmaster_pid().unwrap();
    let client = sql(&db).await;
    for (options, message) in [
        (vec![("no-such-option", Some("1"))], "unrecognized wal2arrow option \"no-such-option\""),
        (vec![("batch-rows", Some("10")), ("batch-rows", Some("20"))], "given more than once"),
        (vec![("batch-rows", Some("0"))], "out of range (1 to 1000000)"),
        (vec![("batch-rows", Some("1000001"))], "out of range"),
        (vec![("batch-rows", Some("many"))], "expected a whole number"),
        (vec![("proto-version", Some("2"))], "out of range (3 to 4)"),
        (vec![("proto-version", Some("5"))], "out of range (3 to 4)"),
        (
            vec![("proto-version", Some("3")), ("streaming", Some("on"))],
            "'proto-version' 4 or later (given 3)",
        ),
        (vec![("streaming", Some("sometimes"))], "expected a boolean"),
        (vec![("include-xids", Some("sometimes"))], "expected a boolean"),
        (vec![("skip-empty-xacts", Some("2"))], "expected a boolean"),
        (vec![("tables", Some("users"))], "name the schema"),
        (vec![("tables", Some("public.(users"))], "invalid table pattern"),
    ] {
        let mut sql = String::from(
            "SELECT count(*) FROM pg_logical_slot_peek_binary_changes('bad', NULL, NULL",
        );
        for (k, v) in &options {
            sql.push_str(&format!(
                ", '{k}', {}",
                v.map_or("NULL".to_owned(), |v| format!("'{v}'"))
            ));
        }
        sql.push(')');
        let err = client.query_one(&sql, &[]).await.unwrap_err();
        let db_err = err.as_db_error().unwrap_or_else(|| panic!("{options:?}: {err}"));
        assert_eq!(db_err.code().code(), "22023", "{options:?}");
        assert!(db_err.message().contains(message), "{options:?}: {}", db_err.message());
        assert!(
            db_err.hint().is_some_and(|h| !h.is_empty()),
            "{options:?}: a hint says what to do"
        );
    }
    // Over the replication protocol too, where an option can come without a value (the SQL
    // interface cannot pass one).
    for (options, message) in [
        (vec![("tables", Some("users"))], "name the schema"),
        (vec![("batch-rows", None)], "needs a value"),
        (vec![("tables", None)], "needs a value"),
        (vec![("add-msg-prefixes", None)], "needs a value"),
        (vec![("filter-origins", None)], "needs a value"),
    ] {
        let e = start_retrying(&config(&db), "bad", &options).await.unwrap_err();
        assert!(
            matches!(&e, Error::Server(d) if d.code == "22023" && d.message.contains(message)),
            "{e}"
        );
    }
    // A boolean without a value means true.
    let ok = start_retrying(&config(&db), "bad", &[("skip-empty-xacts", None)]).await;
    assert!(ok.is_ok(), "{:?}", ok.err());
    assert_eq!(cluster.postmaster_pid().unwrap(), pid, "no crash, no restart");
    assert_eq!(db.psql("SELECT 1"), "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_transaction_is_one_bundle_and_older_wire_versions_are_refused() {
    let db = Cluster::shared().database("bundles");
    db.psql(
        "CREATE TABLE b (id int PRIMARY KEY);
         CREATE TABLE big (id int PRIMARY KEY, t text);
         SELECT pg_create_logical_replication_slot('bundles', 'wal2arrow');
         INSERT INTO b VALUES (1);
         BEGIN; INSERT INTO b VALUES (2); INSERT INTO b VALUES (3); COMMIT;
         BEGIN; INSERT INTO b VALUES (4);
         INSERT INTO big SELECT g, repeat('x', 1000) FROM generate_series(1, 100) g;
         INSERT INTO b VALUES (5); COMMIT;",
    );
    let client = sql(&db).await;
    let payloads = client
        .query("SELECT data FROM pg_logical_slot_peek_binary_changes('bundles', NULL, NULL)", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<_, Vec<u8>>(0))
        .collect::<Vec<_>>();
    // One payload per transaction, a Bundle of Begin, (Schema,) Batch, Commit; except that
    // a batch of 64 kB or more (here 100 kB) is sent on its own, between Bundles of the
    // transaction's messages before and after it, rather than copied into one.
    let kinds: Vec<u8> = payloads.iter().map(|p| p[0]).collect();
    assert_eq!(kinds, b"XXXRX", "one payload per small transaction");
    assert!(payloads.iter().filter(|p| p[0] == b'X').all(|p| p[1] == 2));
    assert_eq!(
        common_messages(&payloads).join(", "),
        "Begin, Schema, batch 1, Commit, Begin, batch 2, Commit, \
         Begin, Schema, batch 2, batch 100, Commit"
    );
    // A consumer built for wire versions 1 or 2 is told to upgrade, not sent what it cannot
    // read.
    for old in ["1", "2"] {
        let err = client
            .query(
                "SELECT data FROM pg_logical_slot_peek_binary_changes('bundles', NULL, NULL, \
                 'proto-version', $1)",
                &[&old],
            )
            .await
            .unwrap_err();
        let db_err = err.as_db_error().unwrap();
        assert_eq!(db_err.code().code(), "22023");
        assert!(db_err.hint().unwrap().contains("writes wire format versions 3 to 4"), "{db_err}");
    }
    client.execute("SELECT pg_drop_replication_slot('bundles')", &[]).await.unwrap();
}

/// The kinds and row counts of the messages in `payloads`.
fn common_messages(payloads: &[Vec<u8>]) -> Vec<String> {
    let mut decoder = wal2arrow_schema::Decoder::new();
    let mut out = Vec::new();
    for p in payloads {
        decoder.decode_into(&arrow_buffer::Buffer::from_slice_ref(p), &mut out).unwrap();
    }
    out.iter()
        .map(|(m, _)| match m {
            Message::Batch(b) => format!("batch {}", b.batch.num_rows()),
            other => format!("{other:?}").split([' ', '(']).next().unwrap_or("").to_owned(),
        })
        .collect()
}
