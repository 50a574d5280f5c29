//! Partitioned tables and generated columns (issue 14): a partition's rows arrive as its
//! partition root's (`publish-via-root`, on by default), in order across partitions, through
//! ATTACH and DETACH PARTITION and TRUNCATE of one partition; with the option off they arrive
//! under the partition's own name. A stored generated column's value arrives, marked in the
//! field metadata.

use std::time::Duration;

use wal2arrow_consumer::{
    Consumer, Event, Lsn, OutputPlugin, PluginOptions, ReplicationClient, SnapshotEvent,
    SnapshotMode, StreamOptions,
};
use wal2arrow_harness::Cluster;
use wal2arrow_schema::TableFilter;

use crate::common::{config, read_txns, rows};

/// Each event of a transaction as a line: `schema T`, `T op values…`, `truncate T,…`.
fn listing(txn: &crate::common::Txn) -> Vec<String> {
    let mut out = Vec::new();
    for e in &txn.events {
        match e {
            Event::Relation(r) => out.push(format!("schema {}", r.qualified_name)),
            Event::Change(c) => {
                for (op, values, missing) in rows(&c.batch) {
                    let values: Vec<String> =
                        values.iter().map(|v| v.clone().unwrap_or_else(|| "NULL".into())).collect();
                    let missing = if missing.is_empty() {
                        String::new()
                    } else {
                        format!(" missing {missing:?}")
                    };
                    out.push(format!("{} {op} {}{missing}", c.table(), values.join(",")));
                }
            }
            Event::Truncate(t) => {
                let mut names: Vec<&str> =
                    t.relations.iter().map(|r| r.qualified_name.as_str()).collect();
                names.sort();
                out.push(format!("truncate {}", names.join(",")));
            }
            _ => {}
        }
    }
    out
}

const SETUP: &str = "
    CREATE TABLE m (id int NOT NULL, region text NOT NULL, v int, PRIMARY KEY (id, region))
        PARTITION BY LIST (region);
    CREATE TABLE m_eu PARTITION OF m FOR VALUES IN ('eu');
    CREATE TABLE m_us PARTITION OF m FOR VALUES IN ('us');
    -- A partition with its own column order and a dropped column: its tuples need converting.
    CREATE TABLE m_ap (junk int, v int, region text NOT NULL, id int NOT NULL);
    ALTER TABLE m_ap DROP COLUMN junk;
    ALTER TABLE m ATTACH PARTITION m_ap FOR VALUES IN ('ap');
    -- Its old images are whole rows: a partition's replica identity is its own.
    ALTER TABLE m_ap REPLICA IDENTITY FULL;
    CREATE TABLE m_sa (region text NOT NULL, id int NOT NULL, v int);";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_arrive_as_their_root_in_order_through_attach_detach_and_truncate() {
    let db = Cluster::shared().database("partitions");
    db.psql(SETUP);
    let mut stream = wal2arrow_consumer::open(&config(&db), &StreamOptions::new("partitions_slot"))
        .await
        .unwrap();
    // Rows into all three partitions in one transaction, interleaved.
    db.psql(
        "INSERT INTO m VALUES (1, 'eu', 10), (2, 'us', 20), (3, 'ap', 30), (4, 'eu', 40), (5, 'ap', 50)",
    );
    // Rows moving between partitions (an UPDATE of the partition key): a delete in one, an
    // insert in the other, in that order; and an update inside the converted partition.
    db.psql(
        "BEGIN; UPDATE m SET region = 'us' WHERE id = 1; UPDATE m SET region = 'eu', v = 31 WHERE id = 3;
         UPDATE m SET v = 51 WHERE id = 5; COMMIT",
    );
    // DETACH: afterwards the table is on its own.
    db.psql("ALTER TABLE m DETACH PARTITION m_ap");
    db.psql("INSERT INTO m_ap (id, region, v) VALUES (6, 'ap', 60)");
    // ATTACH: its existing rows are not changes; new ones arrive as the root's.
    db.psql("INSERT INTO m_sa VALUES ('sa', 7, 70)");
    db.psql("ALTER TABLE m ATTACH PARTITION m_sa FOR VALUES IN ('sa')");
    db.psql("INSERT INTO m VALUES (8, 'sa', 80)");
    // A TRUNCATE of one partition is reported under the partition's name; of the root, as
    // the root alone.
    db.psql("TRUNCATE m_us");
    db.psql("TRUNCATE m");

    let txns = read_txns(&mut stream, 9, Duration::from_secs(60)).await;
    let all: Vec<Vec<String>> = txns.iter().map(listing).collect();
    let expected: Vec<Vec<&str>> = vec![
        vec![
            "schema public.m",
            "public.m insert 1,eu,10",
            "public.m insert 2,us,20",
            "public.m insert 3,ap,30",
            "public.m insert 4,eu,40",
            "public.m insert 5,ap,50",
        ],
        vec![
            "public.m delete 1,eu,NULL missing [\"v\"]",
            "public.m insert 1,us,10",
            "public.m delete 3,ap,30",
            "public.m insert 3,eu,31",
            "public.m update_before 5,ap,50",
            "public.m update 5,ap,51",
        ],
        vec![],
        // The detached table's own schema: its column order, its name.
        vec!["schema public.m_ap", "public.m_ap insert 60,ap,6"],
        vec!["schema public.m_sa", "public.m_sa insert sa,7,70"],
        vec![],
        vec!["public.m insert 8,sa,80"],
        vec!["schema public.m_us", "truncate public.m_us"],
        vec!["truncate public.m"],
    ];
    assert_eq!(all, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_publish_via_root_off_partitions_arrive_under_their_own_names() {
    let db = Cluster::shared().database("partitions_own");
    db.psql(SETUP);
    let mut options = StreamOptions::new("partitions_own_slot");
    options.plugin = PluginOptions { publish_via_root: false, ..PluginOptions::default() };
    let mut stream = wal2arrow_consumer::open(&config(&db), &options).await.unwrap();
    db.psql("INSERT INTO m VALUES (1, 'eu', 10), (3, 'ap', 30)");
    db.psql("UPDATE m SET region = 'us' WHERE id = 1");
    let txns = read_txns(&mut stream, 2, Duration::from_secs(30)).await;
    let all: Vec<Vec<String>> = txns.iter().map(listing).collect();
    assert_eq!(
        all,
        vec![
            // Schemas go out when a table is first touched, its rows at commit.
            vec![
                "schema public.m_eu",
                "schema public.m_ap",
                "public.m_eu insert 1,eu,10",
                "public.m_ap insert 30,ap,3",
            ],
            vec![
                "schema public.m_us",
                "public.m_eu delete 1,eu,NULL missing [\"v\"]",
                "public.m_us insert 1,us,10",
            ],
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_patterns_match_the_partition_root() {
    let db = Cluster::shared().database("partitions_patterns");
    db.psql(&format!("{SETUP} CREATE TABLE other (id int PRIMARY KEY);"));
    let mut options = StreamOptions::new("partitions_patterns_slot");
    options.plugin.tables = TableFilter::parse_list("public.m").unwrap();
    let mut stream = wal2arrow_consumer::open(&config(&db), &options).await.unwrap();
    db.psql("BEGIN; INSERT INTO other VALUES (1); INSERT INTO m_eu VALUES (1, 'eu', 1); COMMIT");
    let txns = read_txns(&mut stream, 1, Duration::from_secs(30)).await;
    assert_eq!(listing(&txns[0]), ["schema public.m", "public.m insert 1,eu,1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_generated_column_arrives_marked() {
    let db = Cluster::shared().database("generated");
    db.psql(
        "CREATE TABLE g (id int PRIMARY KEY, price numeric(10,2), qty int,
                         total numeric(12,2) GENERATED ALWAYS AS (price * qty) STORED)",
    );
    let mut stream = wal2arrow_consumer::open(&config(&db), &StreamOptions::new("generated_slot"))
        .await
        .unwrap();
    db.psql("INSERT INTO g VALUES (1, 2.50, 4)");
    db.psql("UPDATE g SET qty = 10 WHERE id = 1");
    let txns = read_txns(&mut stream, 2, Duration::from_secs(30)).await;
    let all: Vec<Vec<String>> = txns.iter().map(listing).collect();
    assert_eq!(
        all,
        vec![
            vec!["schema public.g", "public.g insert 1,2.50,4,10.00"],
            vec!["public.g update 1,2.50,10,25.00"],
        ]
    );
    let schema = txns[0].batches[0].batch.schema();
    let generated: Vec<(&str, Option<&String>)> = schema
        .fields()
        .iter()
        .take(4)
        .map(|f| (f.name().as_str(), f.metadata().get("wal2arrow:generated")))
        .collect();
    let stored = "stored".to_owned();
    assert_eq!(generated, [("id", None), ("price", None), ("qty", None), ("total", Some(&stored))]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_copies_every_partition_as_the_root_with_the_streams_schema() {
    let db = Cluster::shared().database("partitions_snapshot");
    db.psql(SETUP);
    db.psql(
        "INSERT INTO m SELECT g, (ARRAY['eu','us','ap'])[g % 3 + 1], g * 10 FROM generate_series(1, 3000) g",
    );
    let consumer = Consumer::builder()
        .config(config(&db))
        .temporary_slot("partitions_snapshot")
        .tables(["public.m"])
        .snapshot(SnapshotMode::Initial)
        .heartbeat_interval(None)
        .build()
        .unwrap();
    let mut stream = consumer.start().await.unwrap();
    let mut events = Vec::new();
    let mut streamed = None;
    let read = async {
        while let Some(e) = stream.next().await {
            let e = e.expect("no error");
            if matches!(e, Event::Snapshot(SnapshotEvent::Complete { .. })) {
                db.psql("INSERT INTO m_ap (id, region, v) VALUES (9999, 'ap', 1)");
            }
            if let Event::Change(c) = &e
                && c.commit_lsn > Lsn(0)
                && c.batch.num_rows() == 1
                && rows(&c.batch)[0].0 == "insert"
            {
                streamed = Some(c.clone());
                break;
            }
            events.push(e);
        }
    };
    tokio::time::timeout(Duration::from_secs(60), read).await.expect("snapshot, then the insert");
    let started: Vec<String> = events
        .iter()
        .filter_map(|e| match e {
            Event::Snapshot(SnapshotEvent::TableStarted { relation, .. }) => {
                Some(relation.qualified_name.clone())
            }
            _ => None,
        })
        .collect();
    assert_eq!(started, ["public.m"], "one table: the root");
    let mut read: Vec<(String, Vec<Option<String>>)> = Vec::new();
    let mut schemas = Vec::new();
    for e in &events {
        if let Event::Change(c) = e {
            assert_eq!(c.table(), "public.m");
            schemas.push(c.batch.schema());
            read.extend(rows(&c.batch).into_iter().map(|(op, values, _)| (op, values)));
        }
    }
    read.sort_by_key(|(_, v)| v[0].as_ref().unwrap().parse::<i64>().unwrap());
    let expected: Vec<(String, Vec<Option<String>>)> = (1..=3000)
        .map(|g: i64| {
            let region = ["eu", "us", "ap"][(g % 3) as usize];
            (
                "read".to_owned(),
                vec![Some(g.to_string()), Some(region.into()), Some((g * 10).to_string())],
            )
        })
        .collect();
    assert_eq!(read, expected);
    let streamed = streamed.expect("the insert after the snapshot");
    assert_eq!(streamed.table(), "public.m");
    assert_eq!(
        rows(&streamed.batch)[0].1,
        [Some("9999".into()), Some("ap".into()), Some("1".into())]
    );
    // The snapshot's rows and the stream's have one schema (field metadata included), except
    // for the per-row LSN column, which snapshot rows hold as the snapshot's.
    let strip = |s: &arrow_schema::SchemaRef| {
        s.fields().iter().filter(|f| f.name() != "_op").cloned().collect::<Vec<_>>()
    };
    for s in &schemas {
        assert_eq!(strip(s), strip(&streamed.batch.schema()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal2json_reports_a_stored_generated_column_the_same_way() {
    if !wal2arrow_harness::wal2json_installed() {
        eprintln!("skipped: this server has no wal2json");
        return;
    }
    let db = Cluster::shared().database("generated_json");
    db.psql(
        "CREATE TABLE g (id int PRIMARY KEY, price numeric(10,2), qty int,
                         total numeric(12,2) GENERATED ALWAYS AS (price * qty) STORED)",
    );
    let cfg = config(&db);
    let options = PluginOptions::default();
    let mut streams = Vec::new();
    for (slot, plugin) in
        [("gen_arrow", OutputPlugin::Wal2Arrow), ("gen_json", OutputPlugin::Wal2Json)]
    {
        wal2arrow_consumer::create_slot_with(&cfg, slot, plugin).await.unwrap();
        let client = ReplicationClient::connect(&cfg).await.unwrap();
        streams.push(match plugin {
            OutputPlugin::Wal2Arrow => client.start(slot, Lsn::INVALID, &options).await.unwrap(),
            OutputPlugin::Wal2Json => {
                client.start_wal2json(slot, Lsn::INVALID, &options, false).await.unwrap()
            }
        });
    }
    db.psql("INSERT INTO g VALUES (1, 2.50, 4); UPDATE g SET qty = 10 WHERE id = 1");
    let mut got = Vec::new();
    for stream in &mut streams {
        let txns = read_txns(stream, 2, Duration::from_secs(30)).await;
        let batches: Vec<_> = txns.iter().flat_map(|t| t.batches.iter()).collect();
        let mut schema_and_rows = Vec::new();
        for b in batches {
            let generated =
                b.batch.schema().field(3).metadata().get("wal2arrow:generated").cloned();
            schema_and_rows.push((generated, rows(&b.batch)));
        }
        got.push(schema_and_rows);
    }
    assert_eq!(got[0], got[1], "wal2arrow and wal2json");
    assert_eq!(got[0][0].0.as_deref(), Some("stored"));
}
