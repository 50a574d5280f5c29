//! The golden stream: a fixed workload's messages, rendered as text and compared with
//! `tests/golden/stream.txt`, so an accidental change to the wire format fails a test.
//!
//! The rendering keeps each message's header bytes (kind, version, flags) and the exact length
//! of every message whose size cannot legitimately vary, the Arrow schemas with their
//! metadata, and every batch's rows. Values that differ from run to run — transaction IDs,
//! LSNs, commit times, table OIDs — are masked.
//!
//! After an intended change: `WAL2ARROW_BLESS=1 cargo test -p wal2arrow-tests golden`, then
//! review the diff of the golden file.

use std::fmt::Write as _;
use std::path::PathBuf;

use arrow_buffer::Buffer;
use wal2arrow_harness::Cluster;
use wal2arrow_schema::{Decoder, Message, meta};

use crate::common::sql;

const WORKLOAD: &[&str] = &[
    "INSERT INTO g_orders VALUES (1, 'alice', 19.99, '2024-01-02', '{a,b}', '{\"x\": 1}'), \
     (2, 'bob', NULL, NULL, NULL, NULL)",
    "UPDATE g_orders SET amount = 5 WHERE id = 2",
    "UPDATE g_orders SET id = 3 WHERE id = 1",
    "DELETE FROM g_orders WHERE id = 2",
    "BEGIN; INSERT INTO g_log VALUES ('2024-05-06 07:08:09+00', 'note'); \
     SELECT pg_logical_emit_message(true, 'golden', 'hello'); COMMIT",
    "SELECT pg_logical_emit_message(false, 'golden', 'at once')",
    "TRUNCATE g_log",
    "ALTER TABLE g_orders ADD COLUMN extra int",
    "INSERT INTO g_orders VALUES (4, 'carol', 1, '2024-03-04', '{}', 'null', 42)",
];

fn render(raw: &[Vec<u8>]) -> String {
    let mut out = String::new();
    let mut decoder = Decoder::new();
    let mut decoded = Vec::new();
    for payload in raw {
        let head = |b: &[u8]| format!("{:02x} {:02x} {:02x} {:02x}", b[0], b[1], b[2], b[3]);
        decoder
            .decode_into(&Buffer::from_slice_ref(payload), &mut decoded)
            .expect("golden messages decode");
        if payload[0] == b'X' {
            writeln!(out, "[{}] len={} BUNDLE of {}", head(payload), payload.len(), decoded.len())
                .unwrap();
        }
        for (message, bytes) in decoded.drain(..) {
            let bytes = bytes.as_slice();
            let header = head(bytes);
            render_message(&mut out, &header, bytes, message);
        }
    }
    out
}

fn render_message(out: &mut String, header: &str, bytes: &[u8], message: Message) {
    match message {
        Message::Begin(_) => writeln!(out, "[{header}] len={} BEGIN", bytes.len()),
        Message::Commit(_) => writeln!(out, "[{header}] len={} COMMIT", bytes.len()),
        Message::Origin { name, .. } => writeln!(out, "[{header}] ORIGIN {name}"),
        Message::Schema(r) => {
            // The schema's length varies with the digits of the table's OID.
            writeln!(out, "[{header}] SCHEMA {}", r.qualified_name).unwrap();
            let mut md: Vec<_> =
                r.wire_schema().metadata().iter().filter(|(k, _)| *k != meta::RELATION_OID).collect();
            md.sort();
            writeln!(out, "  metadata {md:?}").unwrap();
            for f in r.wire_schema().fields() {
                let mut md: Vec<_> = f.metadata().iter().collect();
                md.sort();
                writeln!(out, "  {}: {} nullable={} {md:?}", f.name(), f.data_type(), f.is_nullable()).unwrap();
            }
            Ok(())
        }
        Message::Batch(b) => {
            writeln!(out, "[{header}] len={} BATCH {} rows={}", bytes.len(), b.relation.qualified_name, b.batch.num_rows())
                .unwrap();
            let keep: Vec<usize> = (0..b.batch.num_columns())
                .filter(|&i| b.batch.schema().field(i).name() != meta::LSN_COLUMN)
                .collect();
            let shown = b.batch.project(&keep).unwrap();
            let table = arrow_cast::pretty::pretty_format_batches(&[shown]).unwrap().to_string();
            for line in table.lines() {
                writeln!(out, "  {line}").unwrap();
            }
            Ok(())
        }
        Message::Truncate { relations, cascade, restart_identity } => writeln!(
            out,
            "[{header}] len={} TRUNCATE {} cascade={} restart_identity={}",
            bytes.len(),
            relations.iter().map(|r| r.qualified_name.as_str()).collect::<Vec<_>>().join(","),
            cascade.expect("wal2arrow says"),
            restart_identity.expect("wal2arrow says")
        ),
        Message::Message { transactional, prefix, content, .. } => writeln!(
            out,
            "[{header}] len={} MESSAGE transactional={transactional} prefix={prefix:?} content={:?}",
            bytes.len(),
            String::from_utf8_lossy(content.as_slice())
        ),
        Message::StreamStart { first, .. } => writeln!(out, "[{header}] STREAM START first={first}"),
        Message::Subtransaction { .. } => writeln!(out, "[{header}] SUBTRANSACTION"),
        Message::StreamStop => writeln!(out, "[{header}] STREAM STOP"),
        Message::StreamAbort(a) => {
            writeln!(out, "[{header}] STREAM ABORT whole={}", a.xid == a.subxid)
        }
        Message::StreamCommit(_) => writeln!(out, "[{header}] STREAM COMMIT"),
    }
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_decoded_stream_of_a_fixed_workload_matches_the_golden_file() {
    let db = Cluster::shared().database("golden");
    db.psql(
        "CREATE TABLE g_orders (id int PRIMARY KEY, customer text NOT NULL, amount numeric(10,2),
                                placed date, tags text[], meta jsonb);
         CREATE TABLE g_log (at timestamptz, note text);
         SELECT pg_create_logical_replication_slot('golden', 'wal2arrow');",
    );
    for sql in WORKLOAD {
        db.psql(sql);
    }
    let client = sql(&db).await;
    let rows = client
        .query("SELECT data FROM pg_logical_slot_peek_binary_changes('golden', NULL, NULL)", &[])
        .await
        .unwrap();
    let raw: Vec<Vec<u8>> = rows.iter().map(|r| r.get(0)).collect();
    let rendered = render(&raw);

    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("golden/stream.txt");
    if std::env::var_os("WAL2ARROW_BLESS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &rendered).unwrap();
        return;
    }
    let golden = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (WAL2ARROW_BLESS=1 writes it)", path.display()));
    if golden != rendered {
        let first = golden.lines().zip(rendered.lines()).position(|(a, b)| a != b);
        panic!(
            "the decoded stream differs from {} (first difference at line {}):\n{rendered}\n\
             If the change is intended, run with WAL2ARROW_BLESS=1 and review the diff.",
            path.display(),
            first.map_or_else(
                || golden.lines().count().min(rendered.lines().count()) + 1,
                |l| l + 1
            )
        );
    }
}
