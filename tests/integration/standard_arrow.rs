//! The plugin's output is standard Arrow IPC (issue 11): its raw bytes, read through the SQL
//! interface, split into each Schema followed by the Batches sent after it, decode with
//! arrow-rs's own `StreamReader` and with pyarrow (Arrow C++) — no wal2arrow knowledge — to
//! exactly what wal2arrow's decoder hands the consumer.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{UInt8Type, UInt32Type, UInt64Type};
use arrow_array::{Array, RecordBatch};
use arrow_buffer::Buffer;
use wal2arrow_harness::Cluster;
use wal2arrow_schema::wire::{self, Header, IPC_OFFSET};
use wal2arrow_schema::{Decoder, Message};

use crate::cli::scratch_dir;
use crate::common::sql;
use crate::types::all_types_sql;

/// The end-of-stream marker of an Arrow IPC stream.
const EOS: [u8; 8] = [0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0];

/// One IPC stream: a Schema message and the Batches that follow it, with what wal2arrow's own
/// decoder made of each batch.
struct Segment {
    bytes: Vec<u8>,
    decoded: Vec<RecordBatch>,
    base_lsns: Vec<u64>,
    table_columns: usize,
}

/// Reads an IPC stream with arrow-rs's `StreamReader`.
fn read_stream(bytes: &[u8]) -> Vec<RecordBatch> {
    arrow_ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None)
        .unwrap()
        .map(|b| b.unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_plugin_output_decodes_with_pyarrow_and_arrow_rs_as_the_consumer_decodes_it() {
    let db = Cluster::shared().database("standard_arrow");
    db.psql(&all_types_sql());
    db.psql(
        "CREATE TABLE toasted (id int PRIMARY KEY, n int, big text);
         SELECT pg_create_logical_replication_slot('standard', 'wal2arrow');
         INSERT INTO all_types SELECT * FROM seed;
         UPDATE all_types SET c_text = c_text || '!' WHERE id <= 3;
         DELETE FROM all_types WHERE id = 4;
         INSERT INTO toasted SELECT g, g, (SELECT string_agg(md5(g::text || i), '')
                                           FROM generate_series(1, 200) i)
           FROM generate_series(1, 20) g;
         UPDATE toasted SET n = n + 1;
         UPDATE toasted SET id = id + 100 WHERE id <= 5;
         DELETE FROM toasted WHERE id > 10 AND id <= 15;
         ALTER TABLE toasted ADD COLUMN extra int4;
         INSERT INTO toasted VALUES (999, 1, 'x', 7);",
    );
    let rows = sql(&db)
        .await
        .query("SELECT data FROM pg_logical_slot_peek_binary_changes('standard', NULL, NULL)", &[])
        .await
        .unwrap();
    // Split into segments: a Schema starts one (per table), its Batches follow.
    let mut decoder = Decoder::new();
    let mut open: HashMap<u32, usize> = HashMap::new();
    let mut segments: Vec<Segment> = Vec::new();
    let mut variants = (0, 0, 0);
    for row in &rows {
        let payload: Vec<u8> = row.get(0);
        let messages: Vec<Vec<u8>> = match wire::read_header(&payload).unwrap() {
            Header::Bundle { .. } => wire::bundle_entries(&payload)
                .unwrap()
                .into_iter()
                .map(|r| payload[r].to_vec())
                .collect(),
            _ => vec![payload],
        };
        for m in messages {
            let header = wire::read_header(&m).unwrap();
            let decoded = decoder.decode(&Buffer::from_slice_ref(&m)).unwrap();
            match (header, decoded) {
                (Header::Schema { relid }, Message::Schema(relation)) => {
                    open.insert(relid, segments.len());
                    segments.push(Segment {
                        bytes: m[IPC_OFFSET..].to_vec(),
                        decoded: Vec::new(),
                        base_lsns: Vec::new(),
                        table_columns: relation.table_columns(),
                    });
                }
                (
                    Header::Batch { relid, base_lsn, has_missing, has_unrepresentable },
                    Message::Batch(b),
                ) => {
                    variants.0 += usize::from(!has_missing && !has_unrepresentable);
                    variants.1 += usize::from(has_missing);
                    variants.2 += usize::from(has_unrepresentable);
                    let s = &mut segments[open[&relid]];
                    s.bytes.extend_from_slice(&m[IPC_OFFSET..]);
                    s.decoded.push(b.batch);
                    s.base_lsns.push(base_lsn.0);
                }
                _ => {}
            }
        }
    }
    assert!(
        variants.0 > 0 && variants.1 > 0 && variants.2 > 0,
        "every kind of batch: {variants:?}"
    );
    assert!(segments.len() >= 3, "all_types, toasted, toasted after ALTER");
    let dir = scratch_dir("standard_arrow");
    std::fs::create_dir_all(&dir).unwrap();
    for (i, s) in segments.iter_mut().enumerate() {
        s.bytes.extend_from_slice(&EOS);
        std::fs::write(dir.join(format!("{i}.arrows")), &s.bytes).unwrap();
    }

    // arrow-rs: every batch decodes with the schema sent before it, to the consumer's values.
    for (i, s) in segments.iter().enumerate() {
        let read = read_stream(&s.bytes);
        assert_eq!(read.len(), s.decoded.len(), "segment {i}");
        for ((raw, user), base) in read.iter().zip(&s.decoded).zip(&s.base_lsns) {
            let n = s.table_columns;
            for c in 0..n {
                assert_eq!(
                    raw.column(c).as_ref(),
                    user.column(c).as_ref(),
                    "segment {i} column {c}"
                );
            }
            let codes = raw.column(n).as_primitive::<UInt8Type>();
            let keys = user.column(n).as_dictionary::<UInt8Type>().keys().clone();
            assert_eq!(codes, &keys, "_op");
            let deltas = raw.column(n + 1).as_primitive::<UInt32Type>();
            let lsns = user.column(n + 1).as_primitive::<UInt64Type>();
            for r in 0..raw.num_rows() {
                assert_eq!(base + u64::from(deltas.value(r)), lsns.value(r), "_lsn");
            }
            // The bitmaps name the same columns as the consumer's lists.
            for (bitmap, list) in [(n + 2, n + 2), (n + 3, n + 3)] {
                let bits = raw.column(bitmap).as_fixed_size_binary();
                let names = user.column(list).as_list::<i32>();
                for r in 0..raw.num_rows() {
                    let set = bits.value(r).iter().map(|b| b.count_ones()).sum::<u32>();
                    let listed = if names.is_null(r) { 0 } else { names.value(r).len() as u32 };
                    assert_eq!(set, listed, "segment {i} row {r} column {bitmap}");
                }
            }
        }
    }

    // pyarrow: reads every segment and writes its batches back as an IPC stream, which must
    // equal arrow-rs's reading.
    let script = r#"
import sys, pathlib, pyarrow as pa, pyarrow.ipc as ipc
for path in sorted(pathlib.Path(sys.argv[1]).glob("*.arrows")):
    reader = ipc.open_stream(path.read_bytes())
    batches = list(reader)
    sink = pa.BufferOutputStream()
    with ipc.new_stream(sink, reader.schema) as w:
        for b in batches:
            b.validate(full=True)
            w.write_batch(b)
    (path.parent / (path.stem + ".pyarrow")).write_bytes(sink.getvalue().to_pybytes())
    print(path.name, len(batches), sum(b.num_rows for b in batches))
"#;
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&dir)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "pyarrow could not read the plugin's output:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for (i, s) in segments.iter().enumerate() {
        let ours = read_stream(&s.bytes);
        let theirs =
            read_stream(&std::fs::read(Path::new(&dir).join(format!("{i}.pyarrow"))).unwrap());
        assert_eq!(theirs.len(), ours.len(), "segment {i}");
        for (a, b) in ours.iter().zip(&theirs) {
            assert_eq!(a.schema().fields().len(), b.schema().fields().len());
            for c in 0..a.num_columns() {
                assert_eq!(
                    a.column(c).as_ref(),
                    b.column(c).as_ref(),
                    "segment {i} column {c}: {:?} / {:?}",
                    a.column(c).data_type(),
                    b.column(c).data_type()
                );
            }
            assert_eq!(Arc::clone(a.schema_ref()).metadata(), b.schema().metadata());
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
