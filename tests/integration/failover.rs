//! Failover slots (issue 14): created with `FAILOVER` on PostgreSQL 17 and later — by
//! `slots create --failover`, by the library, and by a stream that makes its slot after a
//! snapshot (a copied slot is altered into one) — and refused with a message saying why on
//! older servers. The suite runs against each major (`scripts/test.sh --pg N`), so each
//! branch is exercised where it applies.

use std::time::Duration;

use wal2arrow_consumer::{Consumer, Event, OutputPlugin, SnapshotEvent, SnapshotMode};
use wal2arrow_harness::{Cluster, TestDb};

use crate::cli::{cli, run};
use crate::common::config;

fn server_major(db: &TestDb<'_>) -> u32 {
    db.psql("SHOW server_version_num").trim().parse::<u32>().expect("server_version_num") / 10000
}

/// `pg_replication_slots.failover` of a slot (`true`/`false`; `-` before 17, which has no
/// such column); empty when there is no such slot.
fn failover_of(db: &TestDb<'_>, slot: &str) -> String {
    db.psql(&format!(
        "SELECT coalesce(to_jsonb(s) ->> 'failover', '-') FROM pg_replication_slots s \
         WHERE slot_name = '{slot}'"
    ))
    .trim()
    .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_slots_are_made_on_17_and_later_and_refused_clearly_before() {
    let db = Cluster::shared().database("failover");
    db.psql("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1), (2)");
    let major = server_major(&db);
    let cfg = config(&db);

    // The library.
    let created =
        wal2arrow_consumer::create_failover_slot(&cfg, "fo_lib", OutputPlugin::Wal2Arrow).await;
    // The command line.
    let mut command = cli(&["slots", "create", "fo_cli", "--failover", "--dsn", &db.dsn()]);
    command.env("WAL2ARROW_LOG", "error");
    let (code, stdout, stderr) = run(command).await;
    // A stream that snapshots, then makes its persistent slot from the snapshot's.
    let consumer = Consumer::builder()
        .config(cfg.clone())
        .slot("fo_stream")
        .snapshot(SnapshotMode::Initial)
        .failover_slot(true)
        .heartbeat_interval(None)
        .build()
        .unwrap();
    let streamed = async {
        let mut stream = consumer.start().await?;
        while let Some(event) = stream.next().await {
            match event? {
                Event::Commit(c) => stream.ack(c.end_lsn),
                Event::Snapshot(SnapshotEvent::Complete { .. }) => break,
                _ => {}
            }
        }
        // The slot is made once the snapshot is acknowledged; wait for it.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while failover_of(&db, "fo_stream").is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        stream.close().await;
        Ok::<_, wal2arrow_consumer::Error>(())
    };
    let streamed = tokio::time::timeout(Duration::from_secs(60), streamed).await.expect("ends");

    if major >= 17 {
        created.unwrap();
        assert_eq!((code, stdout.contains("failover")), (0, true), "{stdout}{stderr}");
        streamed.unwrap();
        for slot in ["fo_lib", "fo_cli", "fo_stream"] {
            assert_eq!(failover_of(&db, slot), "true", "{slot} is a failover slot");
        }
    } else {
        let expected =
            format!("failover slots need PostgreSQL 17 or later, and this server is {major}.");
        let e = created.unwrap_err().to_string();
        assert!(e.contains(&expected), "{e}");
        assert_eq!(code, 1, "{stderr}");
        assert!(stderr.contains(&expected), "{stderr}");
        let e = streamed.unwrap_err().to_string();
        assert!(e.contains(&expected), "{e}");
        // Refused before anything was copied or created.
        for slot in ["fo_lib", "fo_cli", "fo_stream"] {
            assert_eq!(failover_of(&db, slot), "", "no slot {slot}");
        }
    }
    for slot in ["fo_lib", "fo_cli", "fo_stream"] {
        db.psql(&format!(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = '{slot}'"
        ));
    }
}

#[test]
fn a_temporary_slot_cannot_be_a_failover_slot() {
    let e = Consumer::builder().temporary_slot("t").failover_slot(true).build().unwrap_err();
    assert!(e.to_string().contains("a temporary slot cannot be a failover slot"), "{e}");
}
