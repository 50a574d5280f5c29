//! The plugin's encoding core (rows → Batch message) and the consumer's decoder (Batch
//! message → RecordBatch), on the W1 row shape of the benchmark plan: (id int8, a int4,
//! b float8, c text of 20 characters, d timestamptz, e bool).

use std::hint::black_box;

use arrow_buffer::Buffer;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use wal2arrow_schema::encode::write_schema_message;
use wal2arrow_schema::types::oid;
use wal2arrow_schema::{
    BatchEncoder, ChangeOp, ColumnBuilder, ColumnDesc, Decoder, Lsn, PgKind, RelationDesc,
    ReplicaIdentity,
};

fn w1() -> RelationDesc {
    let col = |name: &str, type_oid: u32, type_name: &str| ColumnDesc {
        name: name.into(),
        type_oid,
        typmod: -1,
        type_name: type_name.into(),
        not_null: false,
        kind: PgKind::from_type_oid(type_oid),
    };
    RelationDesc {
        relid: 16384,
        namespace: "public".into(),
        name: "w1".into(),
        columns: vec![
            col("id", oid::INT8, "int8"),
            col("a", oid::INT4, "int4"),
            col("b", oid::FLOAT8, "float8"),
            col("c", oid::TEXT, "text"),
            col("d", oid::TIMESTAMPTZ, "timestamptz"),
            col("e", oid::BOOL, "bool"),
        ],
        primary_key: vec!["id".into()],
        replica_identity: ReplicaIdentity::Default,
        identity_key: vec!["id".into()],
        with_lsn: true,
    }
}

fn fill(enc: &mut BatchEncoder, rows: usize) {
    let text = "abcdefghijklmnopqrst";
    for i in 0..rows {
        enc.start_row(ChangeOp::Insert, Lsn(0x1000_0000 + 120 * i as u64)).unwrap();
        for b in enc.columns_mut() {
            match b {
                ColumnBuilder::Int64(b) => b.append_value(i as i64),
                ColumnBuilder::Int32(b) => b.append_value(i as i32),
                ColumnBuilder::Float64(b) => b.append_value(i as f64 * 0.5),
                ColumnBuilder::Utf8(b) => b.append_value(text),
                ColumnBuilder::Timestamp(b) => b.append_value(1_700_000_000_000_000 + i as i64),
                ColumnBuilder::Bool(b) => b.append_value(i % 2 == 0),
                _ => unreachable!("W1 has no other column types"),
            }
        }
    }
}

fn codec(c: &mut Criterion) {
    let desc = w1();
    let mut encode = c.benchmark_group("encode/w1");
    for rows in [1usize, 100, 1000, 8192] {
        encode.throughput(Throughput::Elements(rows as u64));
        encode.bench_with_input(BenchmarkId::from_parameter(rows), &rows, |bench, &rows| {
            let mut enc = BatchEncoder::new(&desc);
            let mut out = Vec::with_capacity(1 << 20);
            bench.iter(|| {
                out.clear();
                fill(&mut enc, rows);
                enc.write_batch(&mut out).unwrap();
                black_box(out.len())
            });
        });
    }
    encode.finish();

    let mut decode = c.benchmark_group("decode/w1");
    let mut schema = Vec::new();
    write_schema_message(&mut schema, &desc).unwrap();
    let schema = Buffer::from_slice_ref(&schema);
    for rows in [1usize, 100, 1000, 8192] {
        let mut enc = BatchEncoder::new(&desc);
        fill(&mut enc, rows);
        let mut msg = Vec::new();
        enc.write_batch(&mut msg).unwrap();
        let msg = Buffer::from_slice_ref(&msg);
        let mut dec = Decoder::new();
        dec.decode(&schema).unwrap();
        decode.throughput(Throughput::Elements(rows as u64));
        decode.bench_with_input(BenchmarkId::from_parameter(rows), &msg, |bench, msg| {
            bench.iter(|| black_box(dec.decode(msg).unwrap()));
        });
    }
    decode.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
