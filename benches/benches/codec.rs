//! The plugin's encoding core (rows → Batch message) and the consumer's decoder (Batch
//! message → RecordBatch), per type family and batch size. `w1` is the row shape of the
//! end-to-end benchmark's W1: (id int8, a int4, b float8, c text of 20 characters,
//! d timestamptz, e bool).
//!
//! `cargo bench -p wal2arrow-benches --bench codec`

use std::hint::black_box;

use arrow_buffer::Buffer;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use wal2arrow_schema::encode::write_schema_message;
use wal2arrow_schema::types::oid;
use wal2arrow_schema::{
    BatchEncoder, ChangeOp, ColumnBuilder, ColumnDesc, Decoder, Lsn, PgKind, RelationDesc,
    ReplicaIdentity,
};

/// A table of the given columns (name, type OID, type name, kind).
fn table(columns: &[(&str, u32, &str, PgKind)]) -> RelationDesc {
    RelationDesc {
        relid: 16384,
        namespace: "public".into(),
        name: "bench".into(),
        columns: columns
            .iter()
            .map(|(name, type_oid, type_name, kind)| ColumnDesc {
                name: (*name).into(),
                type_oid: *type_oid,
                typmod: -1,
                type_name: (*type_name).into(),
                not_null: false,
                generated: false,
                kind: kind.clone(),
            })
            .collect(),
        primary_key: vec![columns[0].0.into()],
        replica_identity: ReplicaIdentity::Default,
        identity_key: vec![columns[0].0.into()],
        with_lsn: true,
    }
}

/// The type families benchmarked.
fn families() -> Vec<(&'static str, RelationDesc)> {
    let k = PgKind::from_type_oid;
    let decimal = PgKind::Decimal { precision: 12, scale: 2 };
    vec![
        (
            "w1",
            table(&[
                ("id", oid::INT8, "int8", k(oid::INT8)),
                ("a", oid::INT4, "int4", k(oid::INT4)),
                ("b", oid::FLOAT8, "float8", k(oid::FLOAT8)),
                ("c", oid::TEXT, "text", k(oid::TEXT)),
                ("d", oid::TIMESTAMPTZ, "timestamptz", k(oid::TIMESTAMPTZ)),
                ("e", oid::BOOL, "bool", k(oid::BOOL)),
            ]),
        ),
        (
            "integers",
            table(&[
                ("i8", oid::INT8, "int8", k(oid::INT8)),
                ("i2", oid::INT2, "int2", k(oid::INT2)),
                ("i4", oid::INT4, "int4", k(oid::INT4)),
                ("o", oid::OID, "oid", k(oid::OID)),
            ]),
        ),
        (
            "floats",
            table(&[
                ("id", oid::INT8, "int8", k(oid::INT8)),
                ("f4", oid::FLOAT4, "float4", k(oid::FLOAT4)),
                ("f8", oid::FLOAT8, "float8", k(oid::FLOAT8)),
            ]),
        ),
        (
            "numeric",
            table(&[
                ("id", oid::INT8, "int8", k(oid::INT8)),
                ("n1", oid::NUMERIC, "numeric", decimal.clone()),
                ("n2", oid::NUMERIC, "numeric", decimal),
            ]),
        ),
        (
            "text",
            table(&[
                ("id", oid::INT8, "int8", k(oid::INT8)),
                ("short", oid::TEXT, "text", k(oid::TEXT)),
                ("long", oid::VARCHAR, "varchar", k(oid::VARCHAR)),
            ]),
        ),
        (
            "temporal",
            table(&[
                ("id", oid::INT8, "int8", k(oid::INT8)),
                ("d", oid::DATE, "date", k(oid::DATE)),
                ("ts", oid::TIMESTAMP, "timestamp", k(oid::TIMESTAMP)),
                ("tstz", oid::TIMESTAMPTZ, "timestamptz", k(oid::TIMESTAMPTZ)),
                ("iv", oid::INTERVAL, "interval", k(oid::INTERVAL)),
            ]),
        ),
        (
            "binary",
            table(&[
                ("id", oid::INT8, "int8", k(oid::INT8)),
                ("u", oid::UUID, "uuid", k(oid::UUID)),
                ("b", oid::BYTEA, "bytea", k(oid::BYTEA)),
            ]),
        ),
        (
            "arrays",
            table(&[
                ("id", oid::INT8, "int8", k(oid::INT8)),
                ("a", 1007, "_int4", PgKind::array(k(oid::INT4), "int4", 1)),
            ]),
        ),
    ]
}

const SHORT: &str = "abcdefghijklmnopqrst";

fn append(b: &mut ColumnBuilder, col: usize, i: usize, long: &str) {
    match b {
        ColumnBuilder::Int64(b) => b.append_value(i as i64),
        ColumnBuilder::Int32(b) => b.append_value(i as i32),
        ColumnBuilder::Int16(b) => b.append_value(i as i16),
        ColumnBuilder::UInt32(b) => b.append_value(i as u32),
        ColumnBuilder::Float32(b) => b.append_value(i as f32 * 0.25),
        ColumnBuilder::Float64(b) => b.append_value(i as f64 * 0.5),
        ColumnBuilder::Decimal128(b) => b.append_value(i as i128 * 101),
        ColumnBuilder::Utf8(b) => b.append_value(if col == 2 { long } else { SHORT }),
        ColumnBuilder::Timestamp(b) => b.append_value(1_700_000_000_000_000 + i as i64),
        ColumnBuilder::Date32(b) => b.append_value(19_000 + (i % 1000) as i32),
        ColumnBuilder::Interval(b) => ColumnBuilder::append_interval(b, 1, i as i32, 5_000_000),
        ColumnBuilder::Bool(b) => b.append_value(i.is_multiple_of(2)),
        ColumnBuilder::FixedSizeBinary(b) => {
            b.append_value((i as u128).to_le_bytes()).expect("16 bytes")
        }
        ColumnBuilder::Binary(b) => b.append_value([i as u8; 32]),
        ColumnBuilder::List(l) => {
            for k in 0..3 {
                match l.values() {
                    ColumnBuilder::Int32(v) => v.append_value((i + k) as i32),
                    _ => unreachable!("int4[]"),
                }
            }
            l.close();
        }
        other => unreachable!("no {other:?} column here"),
    }
}

fn fill(enc: &mut BatchEncoder, rows: usize, long: &str) {
    for i in 0..rows {
        enc.start_row(ChangeOp::Insert, Lsn(0x1000_0000 + 120 * i as u64)).unwrap();
        for (col, b) in enc.columns_mut().iter_mut().enumerate() {
            // Every 10th value NULL, in every column but the first.
            if col > 0 && i % 10 == col % 10 {
                b.append_null();
            } else {
                append(b, col, i, long);
            }
        }
    }
}

fn codec(c: &mut Criterion) {
    let long = "x".repeat(200);
    for (family, desc) in families() {
        let mut encode = c.benchmark_group(format!("encode/{family}"));
        for rows in [1usize, 100, 1000, 8192] {
            encode.throughput(Throughput::Elements(rows as u64));
            encode.bench_with_input(BenchmarkId::from_parameter(rows), &rows, |bench, &rows| {
                let mut enc = BatchEncoder::new(&desc);
                let mut out = Vec::with_capacity(1 << 20);
                bench.iter(|| {
                    out.clear();
                    fill(&mut enc, rows, &long);
                    enc.write_batch(&mut out).unwrap();
                    black_box(out.len())
                });
            });
        }
        encode.finish();

        let mut decode = c.benchmark_group(format!("decode/{family}"));
        for rows in [1usize, 100, 1000, 8192] {
            let mut schema = Vec::new();
            write_schema_message(&mut schema, &desc).unwrap();
            let mut enc = BatchEncoder::new(&desc);
            fill(&mut enc, rows, &long);
            let mut batch = Vec::new();
            enc.write_batch(&mut batch).unwrap();
            // Payloads as the consumer receives them: in aligned allocations.
            let (schema, batch) = (Buffer::from_vec(schema), Buffer::from_vec(batch));
            decode.throughput(Throughput::Elements(rows as u64));
            decode.bench_with_input(BenchmarkId::from_parameter(rows), &rows, |bench, _| {
                let mut decoder = Decoder::new();
                decoder.decode(&schema).unwrap();
                bench.iter(|| black_box(decoder.decode(&batch).unwrap()));
            });
        }
        decode.finish();
    }
}

mod common;

criterion_group! {
    name = benches;
    config = common::config();
    targets = codec
}
criterion_main!(benches);
