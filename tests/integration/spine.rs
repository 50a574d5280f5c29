//! The spine: plugin → replication protocol → typed RecordBatches (issue 2).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arrow_array::builder::{
    BinaryBuilder, BooleanBuilder, Date32Builder, Float32Builder, Float64Builder, Int16Builder,
    Int32Builder, Int64Builder, StringBuilder, TimestampMicrosecondBuilder,
};
use arrow_array::cast::AsArray;
use arrow_array::types::{UInt8Type, UInt64Type};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use tokio_postgres::types::{Date, Timestamp};
use wal2arrow_client::Error;
use wal2arrow_consumer::{Event, Lsn, PluginOptions, ReplicationClient, StreamOptions};
use wal2arrow_harness::Cluster;

use crate::common::{concat, config, confirmed_flush, read_txns, sql, start_retrying};

/// Every type of the spine, every column nullable.
const EVERY_TYPE_TABLE: &str = "
    CREATE TABLE every_type (
        c_int2 int2, c_int4 int4, c_int8 int8, c_float4 float4, c_float8 float8,
        c_bool bool, c_text text, c_varchar varchar(20), c_bpchar char(8), c_bytea bytea,
        c_date date, c_timestamp timestamp, c_timestamptz timestamptz);
    -- Values over ~2 kB go out of line uncompressed: the plugin must detoast what the
    -- reorder buffer reassembled.
    ALTER TABLE every_type ALTER c_text SET STORAGE EXTERNAL, ALTER c_bytea SET STORAGE EXTERNAL;";

/// Rows `first..first+1000`: column k is NULL when `g % 13 = k`; `g % 97` picks edge values.
fn insert_every_type(first: i64) -> String {
    format!(
        "INSERT INTO every_type SELECT
            CASE WHEN g % 13 = 0 THEN NULL WHEN g % 97 = 1 THEN -32768 WHEN g % 97 = 2 THEN 32767
                 ELSE g % 30000 - 15000 END::int2,
            CASE WHEN g % 13 = 1 THEN NULL WHEN g % 97 = 1 THEN -2147483648 WHEN g % 97 = 2 THEN 2147483647
                 ELSE g * 7919 - 5000000 END::int4,
            CASE WHEN g % 13 = 2 THEN NULL WHEN g % 97 = 1 THEN -9223372036854775808
                 WHEN g % 97 = 2 THEN 9223372036854775807 ELSE g::int8 * 1000000007 END::int8,
            CASE WHEN g % 13 = 3 THEN NULL WHEN g % 97 = 1 THEN 'NaN' WHEN g % 97 = 2 THEN 'Infinity'
                 WHEN g % 97 = 3 THEN '-Infinity' WHEN g % 97 = 4 THEN '-0' WHEN g % 97 = 5 THEN '1.17549435e-38'
                 WHEN g % 97 = 6 THEN '3.4028235e38' ELSE (g / 7.0)::text END::float4,
            CASE WHEN g % 13 = 4 THEN NULL WHEN g % 97 = 1 THEN 'NaN' WHEN g % 97 = 2 THEN 'Infinity'
                 WHEN g % 97 = 3 THEN '-Infinity' WHEN g % 97 = 4 THEN '-0' WHEN g % 97 = 5 THEN '4.9e-324'
                 WHEN g % 97 = 6 THEN '1.7976931348623157e308' ELSE (g / 3.0)::text END::float8,
            CASE WHEN g % 13 = 5 THEN NULL ELSE g % 2 = 0 END,
            CASE WHEN g % 13 = 6 THEN NULL WHEN g % 97 = 1 THEN '' WHEN g % 97 = 2 THEN 'héllo wörld ✓ 🎉 ' || g
                 WHEN g % 97 = 3 THEN repeat('x', 5000)
                 WHEN g % 97 = 4 THEN (SELECT string_agg(md5(i::text || g), '') FROM generate_series(1, 100) i)
                 ELSE 'row ' || g END,
            CASE WHEN g % 13 = 7 THEN NULL ELSE 'v' || g END,
            CASE WHEN g % 13 = 8 THEN NULL WHEN g % 97 = 1 THEN '' ELSE g::text END,
            CASE WHEN g % 13 = 9 THEN NULL WHEN g % 97 = 1 THEN '\\x00ff00'::bytea WHEN g % 97 = 2 THEN ''::bytea
                 WHEN g % 97 = 3 THEN decode(repeat(md5(g::text), 200), 'hex') ELSE int4send(g::int4) END,
            CASE WHEN g % 13 = 10 THEN NULL WHEN g % 97 = 1 THEN 'infinity' WHEN g % 97 = 2 THEN '-infinity'
                 WHEN g % 97 = 3 THEN '4713-01-01 BC' WHEN g % 97 = 4 THEN '1970-01-01'
                 ELSE date '2000-01-01' + (g - 5000)::int END,
            CASE WHEN g % 13 = 11 THEN NULL WHEN g % 97 = 1 THEN 'infinity' WHEN g % 97 = 2 THEN '-infinity'
                 WHEN g % 97 = 3 THEN '4713-01-01 00:00:00 BC' WHEN g % 97 = 4 THEN '1969-12-31 23:59:59.999999'
                 ELSE timestamp '2000-01-01' + g * interval '1 day 1 second 1 microsecond' END,
            CASE WHEN g % 13 = 12 THEN NULL WHEN g % 97 = 1 THEN 'infinity' WHEN g % 97 = 2 THEN '-infinity'
                 ELSE timestamptz '2024-02-29 12:00:00+00' - g * interval '3 days 1 minute 7 microseconds' END
         FROM generate_series({first}, {first} + 999) g"
    )
}

fn pg_field(name: &str, dt: DataType, typname: &str, oid: u32, typmod: i32) -> Field {
    Field::new(name, dt, true).with_metadata(HashMap::from([
        ("ADBC:postgresql:typname".to_owned(), typname.to_owned()),
        ("wal2arrow:typoid".to_owned(), oid.to_string()),
        ("wal2arrow:typmod".to_owned(), typmod.to_string()),
    ]))
}

fn system_field(name: &str, dt: DataType) -> Field {
    Field::new(name, dt, false)
        .with_metadata(HashMap::from([("wal2arrow:system".to_owned(), "true".to_owned())]))
}

/// The schema the consumer must produce for `every_type`, written out by hand.
fn expected_schema(relid: u32) -> Schema {
    let micros = |tz: Option<&str>| DataType::Timestamp(TimeUnit::Microsecond, tz.map(Into::into));
    Schema::new_with_metadata(
        vec![
            pg_field("c_int2", DataType::Int16, "int2", 21, -1),
            pg_field("c_int4", DataType::Int32, "int4", 23, -1),
            pg_field("c_int8", DataType::Int64, "int8", 20, -1),
            pg_field("c_float4", DataType::Float32, "float4", 700, -1),
            pg_field("c_float8", DataType::Float64, "float8", 701, -1),
            pg_field("c_bool", DataType::Boolean, "bool", 16, -1),
            pg_field("c_text", DataType::Utf8, "text", 25, -1),
            pg_field("c_varchar", DataType::Utf8, "varchar", 1043, 20 + 4),
            pg_field("c_bpchar", DataType::Utf8, "bpchar", 1042, 8 + 4),
            pg_field("c_bytea", DataType::Binary, "bytea", 17, -1),
            pg_field("c_date", DataType::Date32, "date", 1082, -1),
            pg_field("c_timestamp", micros(None), "timestamp", 1114, -1),
            pg_field("c_timestamptz", micros(Some("UTC")), "timestamptz", 1184, -1),
            system_field(
                "_op",
                DataType::Dictionary(Box::new(DataType::UInt8), Box::new(DataType::Utf8)),
            ),
            system_field("_lsn", DataType::UInt64),
            system_field(
                "_missing",
                DataType::List(Arc::new(Field::new("item", DataType::Utf8, false))),
            )
            .with_nullable(true),
            system_field(
                "_unrepresentable",
                DataType::List(Arc::new(Field::new("item", DataType::Utf8, false))),
            )
            .with_nullable(true),
        ],
        HashMap::from([
            ("wal2arrow:schema".to_owned(), "public".to_owned()),
            ("wal2arrow:table".to_owned(), "every_type".to_owned()),
            ("wal2arrow:relid".to_owned(), relid.to_string()),
            ("wal2arrow:version".to_owned(), "3".to_owned()),
            ("wal2arrow:primary_key".to_owned(), "[]".to_owned()),
            ("wal2arrow:replica_identity".to_owned(), "default".to_owned()),
            ("wal2arrow:identity_key".to_owned(), "[]".to_owned()),
        ]),
    )
}

fn days(d: Date<NaiveDate>) -> i32 {
    match d {
        Date::PosInfinity => i32::MAX,
        Date::NegInfinity => i32::MIN,
        Date::Value(d) => (d - NaiveDate::from_ymd_opt(1970, 1, 1).unwrap()).num_days() as i32,
    }
}

fn micros_local(t: Timestamp<NaiveDateTime>) -> i64 {
    match t {
        Timestamp::PosInfinity => i64::MAX,
        Timestamp::NegInfinity => i64::MIN,
        Timestamp::Value(t) => t.and_utc().timestamp_micros(),
    }
}

fn micros_utc(t: Timestamp<DateTime<Utc>>) -> i64 {
    match t {
        Timestamp::PosInfinity => i64::MAX,
        Timestamp::NegInfinity => i64::MIN,
        Timestamp::Value(t) => t.timestamp_micros(),
    }
}

/// `SELECT * FROM every_type` as Arrow, built independently of the plugin from
/// tokio-postgres' binary-protocol values. The table only ever received inserts, so heap
/// (ctid) order is insertion order, which is the stream's order.
async fn select_every_type(client: &tokio_postgres::Client, schema: &Schema) -> RecordBatch {
    let rows = client.query("SELECT * FROM every_type ORDER BY ctid", &[]).await.unwrap();
    let mut i2 = Int16Builder::new();
    let mut i4 = Int32Builder::new();
    let mut i8 = Int64Builder::new();
    let mut f4 = Float32Builder::new();
    let mut f8 = Float64Builder::new();
    let mut b = BooleanBuilder::new();
    let (mut text, mut varchar, mut bpchar) =
        (StringBuilder::new(), StringBuilder::new(), StringBuilder::new());
    let mut bytea = BinaryBuilder::new();
    let mut date = Date32Builder::new();
    let mut ts = TimestampMicrosecondBuilder::new();
    let mut tstz = TimestampMicrosecondBuilder::new().with_timezone("UTC");
    for r in &rows {
        i2.append_option(r.get::<_, Option<i16>>(0));
        i4.append_option(r.get::<_, Option<i32>>(1));
        i8.append_option(r.get::<_, Option<i64>>(2));
        f4.append_option(r.get::<_, Option<f32>>(3));
        f8.append_option(r.get::<_, Option<f64>>(4));
        b.append_option(r.get::<_, Option<bool>>(5));
        text.append_option(r.get::<_, Option<String>>(6));
        varchar.append_option(r.get::<_, Option<String>>(7));
        bpchar.append_option(r.get::<_, Option<String>>(8));
        bytea.append_option(r.get::<_, Option<Vec<u8>>>(9));
        date.append_option(r.get::<_, Option<Date<NaiveDate>>>(10).map(days));
        ts.append_option(r.get::<_, Option<Timestamp<NaiveDateTime>>>(11).map(micros_local));
        tstz.append_option(r.get::<_, Option<Timestamp<DateTime<Utc>>>>(12).map(micros_utc));
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(i2.finish()),
        Arc::new(i4.finish()),
        Arc::new(i8.finish()),
        Arc::new(f4.finish()),
        Arc::new(f8.finish()),
        Arc::new(b.finish()),
        Arc::new(text.finish()),
        Arc::new(varchar.finish()),
        Arc::new(bpchar.finish()),
        Arc::new(bytea.finish()),
        Arc::new(date.finish()),
        Arc::new(ts.finish()),
        Arc::new(tstz.finish()),
    ];
    let table_schema = schema.project(&(0..13).collect::<Vec<_>>()).unwrap();
    RecordBatch::try_new(Arc::new(table_schema), columns).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_rows_of_every_type_arrive_typed_and_equal_to_select() {
    let db = Cluster::shared().database("every_type");
    db.psql(EVERY_TYPE_TABLE);
    let client = sql(&db).await;
    let mut options = StreamOptions::new("every_type_slot");
    options.plugin = PluginOptions { batch_rows: 300, ..PluginOptions::default() };
    let mut stream = wal2arrow_consumer::open(&config(&db), &options).await.unwrap();

    for t in 0..10 {
        client.batch_execute(&insert_every_type(t * 1000 + 1)).await.unwrap();
    }
    let txns = read_txns(&mut stream, 10, Duration::from_secs(120)).await;

    let relid: u32 = db.psql("SELECT 'every_type'::regclass::oid").parse().unwrap();
    let schema = Arc::new(expected_schema(relid));
    let mut table_rows = Vec::new();
    // A transaction's rows come after the previous commit record (whose end may be where the
    // first row's record starts) and before its own commit record, in ascending order.
    let mut previous_end = Lsn::INVALID;
    for txn in &txns {
        let mut previous_row: Option<Lsn> = None;
        // 1000 rows in batches of at most 300, numbered in order, all of this transaction.
        let sizes: Vec<usize> = txn.batches.iter().map(|b| b.num_rows()).collect();
        assert_eq!(sizes, [300, 300, 300, 100]);
        assert_eq!(txn.commit.batches, 4);
        for (i, b) in txn.batches.iter().enumerate() {
            assert_eq!(b.ordinal as usize, i);
            assert_eq!(b.table(), "public.every_type");
            assert_eq!(b.batch.schema(), schema, "the batch schema, field metadata included");
            assert_eq!(
                (b.xid, b.commit_lsn, b.commit_time_us),
                (txn.begin.xid, txn.begin.commit_lsn, txn.begin.commit_time_us)
            );
            let ops = b.batch.column(13).as_dictionary::<UInt8Type>();
            let names = ops.values().as_string::<i32>();
            assert!(ops.keys().values().iter().all(|k| names.value(*k as usize) == "insert"));
            // Row LSNs ascend within the transaction, after the previous commit and before this one.
            for &lsn in b.batch.column(14).as_primitive::<UInt64Type>().values() {
                let lsn = Lsn(lsn);
                assert!(lsn >= previous_end && lsn < txn.commit.commit_lsn, "row LSN {lsn}");
                assert!(previous_row.is_none_or(|p| lsn > p), "row LSNs ascend");
                previous_row = Some(lsn);
            }
            table_rows.push(b.table_rows());
        }
        assert_eq!(txn.commit.commit_lsn, txn.begin.commit_lsn);
        assert!(txn.commit.end_lsn > txn.commit.commit_lsn);
        previous_end = txn.commit.end_lsn;

        // The transaction ID and commit time are the server's.
        let xmin = client
            .query_one(
                "SELECT xmin::text::bigint, count(*),
                        (extract(epoch FROM pg_xact_commit_timestamp(xmin)) * 1000000)::bigint
                 FROM every_type WHERE xmin::text::bigint = $1 GROUP BY 1, 3",
                &[&i64::from(txn.begin.xid)],
            )
            .await
            .unwrap();
        assert_eq!(
            xmin.get::<_, i64>(1),
            1000,
            "xid {} owns the transaction's rows",
            txn.begin.xid
        );
        assert_eq!(xmin.get::<_, i64>(2), txn.commit.commit_time_us);
    }

    let table_schema = table_rows[0].schema();
    let streamed = concat(&table_schema, &table_rows);
    let expected = select_every_type(&client, &schema).await;
    assert_eq!(streamed.num_rows(), 10_000);
    for (c, field) in expected.schema().fields().iter().enumerate() {
        assert!(streamed.column(c).null_count() > 0, "{} has NULLs", field.name());
        assert_eq!(
            streamed.column(c).as_ref(),
            expected.column(c).as_ref(),
            "column {} equals SELECT",
            field.name()
        );
    }
    assert_eq!(streamed, expected);
    stream.ack(txns.last().unwrap().commit.end_lsn);
    stream.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn received_batches_point_into_the_xlogdata_payload() {
    let db = Cluster::shared().database("zero_copy");
    db.psql("CREATE TABLE z (a int8, b float8, c text, d bytea, e bool, f timestamptz, g int2)");
    let mut stream = wal2arrow_consumer::open(&config(&db), &StreamOptions::new("zero_copy_slot"))
        .await
        .unwrap();
    db.psql(
        "INSERT INTO z SELECT g, g / 3.0, 'text ' || g, int8send(g), g % 2 = 0, now(), g::int2
         FROM generate_series(1, 5000) g WHERE g % 11 <> 0
         UNION ALL SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL",
    );
    let txns = read_txns(&mut stream, 1, Duration::from_secs(60)).await;
    let batch = &txns[0].batches[0];
    assert_eq!(batch.num_rows(), 5000 - 5000 / 11 + 1);
    let payload = batch.payload();
    let range = payload.as_ptr() as usize..payload.as_ptr() as usize + payload.len();
    let inside =
        |p: *const u8, len: usize| range.contains(&(p as usize)) && p as usize + len <= range.end;
    let mut checked = 0;
    // Every buffer of every table column — values, offsets, validity — and the `_op` keys
    // are slices of the payload. (`_lsn` is computed from the payload's per-row offsets.)
    for c in 0..=batch.relation.table_columns() {
        let data = batch.batch.column(c).to_data();
        for buf in data.buffers() {
            assert!(inside(buf.as_ptr(), buf.len()), "column {c}: a buffer was copied");
            checked += 1;
        }
        if c < batch.relation.table_columns() {
            let nulls = data.nulls().unwrap_or_else(|| panic!("column {c} has a validity bitmap"));
            assert!(
                inside(nulls.buffer().as_ptr(), nulls.buffer().len()),
                "column {c}: validity copied"
            );
        }
    }
    assert!(checked >= 10, "value, offset and key buffers were checked ({checked})");
    assert_eq!(stream.realigned_payloads(), 0, "no payload needed a copy for alignment");
    // The payload really is the message off the wire: a Batch message (kind 'R', version 3).
    assert_eq!(&payload.as_slice()[..2], b"R\x03");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_plugin_option_is_an_error_naming_it_and_the_valid_ones() {
    let cluster = Cluster::shared();
    let db = cluster.database("bad_option");
    let pid_before = cluster.postmaster_pid().unwrap();
    let started_before = db.psql("SELECT pg_postmaster_start_time()");
    let mut client = ReplicationClient::connect(&config(&db)).await.unwrap();
    client.create_slot("bad_option_slot", "wal2arrow", false).await.unwrap();
    let err = client
        .start_with_pairs(
            "bad_option_slot",
            Lsn::INVALID,
            &[("batch-rows", Some("100")), ("include-everything", Some("on"))],
        )
        .await
        .unwrap_err();
    let Error::Server(e) = &err else { panic!("expected the server's error, got {err}") };
    assert_eq!(e.severity, "ERROR");
    assert_eq!(e.code, "22023", "invalid_parameter_value");
    assert_eq!(e.message, "unrecognized wal2arrow option \"include-everything\"");
    assert_eq!(
        e.hint.as_deref(),
        Some(
            "Valid wal2arrow options are: add-msg-prefixes, batch-rows, filter-msg-prefixes, \
             filter-origins, include-lsn, include-origin, include-timestamps, include-xids, \
             numeric-as-string, proto-version, publish-via-root, skip-empty-xacts, streaming, \
             tables."
        )
    );
    assert!(!err.is_transient(), "a bad option is a definite error");

    // Out-of-range values are refused the same way.
    let err = start_retrying(&config(&db), "bad_option_slot", &[("batch-rows", Some("0"))])
        .await
        .unwrap_err();
    assert_eq!(
        err.db_error().unwrap().hint.as_deref(),
        Some("\"batch-rows\" accepts 1 to 1000000.")
    );

    // The server is still the same server: no crash, no restart, still answering.
    assert_eq!(cluster.postmaster_pid().unwrap(), pid_before);
    assert_eq!(db.psql("SELECT pg_postmaster_start_time()"), started_before);
    assert_eq!(db.psql("SELECT 1"), "1");
    let log = cluster.log();
    assert!(!log.contains("terminated by signal") && !log.contains("server process"), "{log}");
    // And the slot still streams.
    let pairs = PluginOptions::default().to_pairs();
    let pairs: Vec<(&str, Option<&str>)> =
        pairs.iter().map(|(k, v)| (*k, Some(v.as_str()))).collect();
    let mut stream = start_retrying(&config(&db), "bad_option_slot", &pairs).await.unwrap();
    db.psql("CREATE TABLE after_error (a int); INSERT INTO after_error VALUES (1)");
    let txns = read_txns(&mut stream, 2, Duration::from_secs(30)).await;
    assert_eq!(txns[0].batches.len(), 0, "CREATE TABLE");
    assert_eq!(txns[1].batches.len(), 1, "INSERT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_md5_and_scram_logins_work_and_bad_ones_say_why() {
    let cluster = Cluster::shared();
    let db = cluster.database("auth");
    db.psql(
        "SET password_encryption = 'md5';
         CREATE ROLE w2a_md5 LOGIN REPLICATION PASSWORD 'md5 secret';
         CREATE ROLE w2a_password LOGIN REPLICATION PASSWORD 'plain secret';
         SET password_encryption = 'scram-sha-256';
         CREATE ROLE w2a_scram LOGIN REPLICATION PASSWORD 'scram secret';",
    );
    let with = |user: &str, password: Option<&str>| {
        let mut c = config(&db);
        c.user = user.to_owned();
        c.password = password.map(str::to_owned);
        c
    };
    for (user, password) in
        [("w2a_md5", "md5 secret"), ("w2a_password", "plain secret"), ("w2a_scram", "scram secret")]
    {
        let mut client = ReplicationClient::connect(&with(user, Some(password)))
            .await
            .unwrap_or_else(|e| panic!("{user}: {e}"));
        let info = client.identify_system().await.unwrap();
        assert_eq!(info.dbname.as_deref(), Some(db.name()));
        let wrong = ReplicationClient::connect(&with(user, Some("wrong"))).await.unwrap_err();
        assert!(matches!(wrong, Error::Auth { .. }), "{user}: {wrong}");
        assert!(wrong.to_string().contains("password authentication failed"), "{wrong}");
        let missing = ReplicationClient::connect(&with(user, None)).await.unwrap_err();
        assert!(missing.to_string().contains("requires a password"), "{missing}");
    }
    db.psql("DROP ROLE w2a_md5; DROP ROLE w2a_password; DROP ROLE w2a_scram;");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_servers_and_missing_databases_fail_fast_and_clearly() {
    let cluster = Cluster::shared();
    // A port nothing listens on: refused at once.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut c = wal2arrow_consumer::Config::from_dsn(&cluster.dsn("postgres")).unwrap();
    c.port = closed;
    let e = ReplicationClient::connect(&c).await.unwrap_err();
    assert!(matches!(e, Error::Connect { .. }) && e.is_transient(), "{e}");
    // A listener that never answers: the connect timeout ends the wait.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    c.port = silent.local_addr().unwrap().port();
    c.connect_timeout = Duration::from_secs(1);
    let started = std::time::Instant::now();
    let e = ReplicationClient::connect(&c).await.unwrap_err();
    assert!(matches!(e, Error::Timeout { .. }), "{e}");
    assert!(started.elapsed() < Duration::from_secs(10));
    // A database that does not exist: the server's error, SQLSTATE 3D000.
    let c = wal2arrow_consumer::Config::from_dsn(&cluster.dsn("no_such_database")).unwrap();
    let e = ReplicationClient::connect(&c).await.unwrap_err();
    assert_eq!(e.code(), Some("3D000"), "{e}");
    assert!(e.to_string().contains("no_such_database"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_of_another_plugin_is_never_reused() {
    let db = Cluster::shared().database("other_plugin");
    db.psql("SELECT pg_create_logical_replication_slot('taken', 'test_decoding')");
    let e = wal2arrow_consumer::open(&config(&db), &StreamOptions::new("taken")).await.unwrap_err();
    assert!(matches!(e, Error::Slot(_)), "{e}");
    assert!(e.to_string().contains("test_decoding"), "{e}");
    let mut missing = StreamOptions::new("absent");
    missing.create_slot = false;
    let e = wal2arrow_consumer::open(&config(&db), &missing).await.unwrap_err();
    assert!(e.to_string().contains("does not exist"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_sends_status_updates_that_advance_the_slot_only_to_the_ack() {
    let db = Cluster::shared().database("acks");
    db.psql("CREATE TABLE a (x int)");
    let mut stream =
        wal2arrow_consumer::open(&config(&db), &StreamOptions::new("acks_slot")).await.unwrap();
    stream.set_status_interval(Duration::from_millis(200));
    db.psql("INSERT INTO a VALUES (1)");
    db.psql("INSERT INTO a VALUES (2)");
    let txns = read_txns(&mut stream, 2, Duration::from_secs(30)).await;
    let confirmed = || confirmed_flush(&db, "acks_slot");
    let before = confirmed();
    assert!(before < txns[0].commit.end_lsn, "nothing acknowledged yet");
    stream.ack(txns[0].commit.end_lsn);
    // The timer sends the update while we wait for more events.
    let _ = tokio::time::timeout(Duration::from_millis(800), stream.next_event()).await;
    let after = confirmed();
    assert_eq!(after, txns[0].commit.end_lsn, "the slot advanced exactly to the acknowledged LSN");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_arrive_in_order_for_several_tables() {
    let db = Cluster::shared().database("event_order");
    db.psql("CREATE TABLE t1 (a int); CREATE TABLE t2 (b text)");
    let mut stream =
        wal2arrow_consumer::open(&config(&db), &StreamOptions::new("order_slot")).await.unwrap();
    db.psql("BEGIN; INSERT INTO t1 VALUES (1); INSERT INTO t2 VALUES ('x'); INSERT INTO t1 VALUES (2); COMMIT");
    let mut kinds = Vec::new();
    let mut rows = HashMap::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(30), stream.next_event())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            Event::Begin(_) => kinds.push("begin".to_owned()),
            Event::Relation(r) => kinds.push(format!("schema {}", r.qualified_name)),
            Event::Change(c) => {
                *rows.entry(c.table().to_owned()).or_insert(0) += c.num_rows();
                kinds.push(format!("batch {}", c.table()));
            }
            Event::Commit(_) => {
                kinds.push("commit".to_owned());
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    // Each table's schema precedes its rows; rows of one table in a transaction share a
    // batch (t1's two rows arrive together), flushed at commit in first-touched order.
    assert_eq!(
        kinds,
        [
            "begin",
            "schema public.t1",
            "schema public.t2",
            "batch public.t1",
            "batch public.t2",
            "commit"
        ]
    );
    assert_eq!(rows["public.t1"], 2);
    assert_eq!(rows["public.t2"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_requests_are_answered_so_an_idle_stream_survives_wal_sender_timeout() {
    // A server that drops a replication connection after 2 s without a status update, and a
    // stream whose timer would only send one after an hour: only the replies to the server's
    // keepalive requests keep it alive.
    let mut opts = wal2arrow_harness::ClusterOptions::with_plugin().unwrap();
    opts.settings.push(("wal_sender_timeout".into(), "'2s'".into()));
    let cluster = Cluster::start(&opts).unwrap();
    let db = cluster.database("keepalive");
    db.psql("CREATE TABLE k (a int)");
    let mut stream = wal2arrow_consumer::open(&config(&db), &StreamOptions::new("keepalive_slot"))
        .await
        .unwrap();
    stream.set_status_interval(Duration::from_secs(3600));
    let idle = tokio::time::timeout(Duration::from_secs(6), stream.next_event()).await;
    assert!(idle.is_err(), "nothing happened while idle: {idle:?}");
    db.psql("INSERT INTO k VALUES (42)");
    let txns = read_txns(&mut stream, 1, Duration::from_secs(30)).await;
    assert_eq!(txns[0].batches[0].num_rows(), 1);
    assert!(!cluster.log().contains("terminating walsender process due to replication timeout"));
}
