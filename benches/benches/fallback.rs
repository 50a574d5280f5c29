//! The wal2json fallback's parser: wal2json format-version 2 messages, as the server sends
//! them, into Arrow batches — for the W1 row shape, in one-row and 1,000-row transactions.
//!
//! `cargo bench -p wal2arrow-benches --bench fallback`

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use wal2arrow_consumer::PluginOptions;
use wal2arrow_schema::ReplicaIdentity;
use wal2arrow_wal2json::{CatalogColumn, JsonDecoder, TableInfo, TypeInfo};

/// A decoder whose catalog knows the W1 table and its types (no SQL during the benchmark).
fn decoder() -> JsonDecoder {
    let mut d = JsonDecoder::new(PluginOptions::default(), false);
    let ty = |name: &str, typlen: i16| {
        Some(TypeInfo {
            name: name.into(),
            typtype: b'b',
            base: 0,
            typtypmod: -1,
            elem: 0,
            typlen,
            delim: b',',
        })
    };
    for (oid, info) in [
        (20, ty("int8", 8)),
        (23, ty("int4", 4)),
        (701, ty("float8", 8)),
        (25, ty("text", -1)),
        (1184, ty("timestamptz", 8)),
        (16, ty("bool", 1)),
    ] {
        d.catalog.put_type(oid, info);
    }
    let col = |name: &str, type_oid: u32, format: &str| CatalogColumn {
        name: name.into(),
        type_oid,
        typmod: -1,
        ndims: 0,
        not_null: name == "id",
        generated: false,
        format: format.into(),
    };
    d.catalog.put_table(
        "public".into(),
        "w1".into(),
        Some(TableInfo {
            relid: 16384,
            replica_identity: ReplicaIdentity::Default,
            primary_key: vec!["id".into()],
            identity_key: vec!["id".into()],
            columns: vec![
                col("id", 20, "bigint"),
                col("a", 23, "integer"),
                col("b", 701, "double precision"),
                col("c", 25, "text"),
                col("d", 1184, "timestamp with time zone"),
                col("e", 16, "boolean"),
            ],
        }),
    );
    d
}

/// The messages of `txns` transactions of `rows` W1 inserts each, as wal2json writes them.
fn messages(txns: usize, rows: usize) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut lsn = 0x1000_0000u64;
    let mut id = 0;
    let ts = "\"timestamp\":\"2024-05-06 07:08:09.123456+00\",\"origin\":0";
    for t in 0..txns {
        let xid = 1000 + t;
        let commit = lsn + rows as u64 * 120 + 64;
        out.push(format!(
            "{{\"action\":\"B\",\"xid\":{xid},{ts},\"lsn\":\"0/{commit:X}\",\"nextlsn\":\"0/{:X}\"}}",
            commit + 48
        ));
        for _ in 0..rows {
            id += 1;
            out.push(format!(
                "{{\"action\":\"I\",\"xid\":{xid},{ts},\"lsn\":\"0/{lsn:X}\",\"schema\":\"public\",\
                 \"table\":\"w1\",\"columns\":[\
                 {{\"name\":\"id\",\"type\":\"bigint\",\"typeoid\":20,\"value\":{id},\"optional\":false}},\
                 {{\"name\":\"a\",\"type\":\"integer\",\"typeoid\":23,\"value\":{},\"optional\":true}},\
                 {{\"name\":\"b\",\"type\":\"double precision\",\"typeoid\":701,\"value\":{},\"optional\":true}},\
                 {{\"name\":\"c\",\"type\":\"text\",\"typeoid\":25,\"value\":\"c4ca4238a0b923820dcc\",\"optional\":true}},\
                 {{\"name\":\"d\",\"type\":\"timestamp with time zone\",\"typeoid\":1184,\"value\":\"2024-01-01 00:00:{:02}.{:03}+00\",\"optional\":true}},\
                 {{\"name\":\"e\",\"type\":\"boolean\",\"typeoid\":16,\"value\":{},\"optional\":true}}],\
                 \"pk\":[{{\"name\":\"id\",\"type\":\"bigint\",\"typeoid\":20}}]}}",
                id % 100_000,
                id as f64 * 0.5,
                id / 1000 % 60,
                id % 1000,
                id % 2 == 0
            ));
            lsn += 120;
        }
        out.push(format!(
            "{{\"action\":\"C\",\"xid\":{xid},{ts},\"lsn\":\"0/{commit:X}\",\"nextlsn\":\"0/{:X}\"}}",
            commit + 48
        ));
        lsn = commit + 48;
    }
    out.into_iter().map(String::into_bytes).collect()
}

fn fallback(c: &mut Criterion) {
    let mut group = c.benchmark_group("wal2json/w1");
    for (txns, rows) in [(1000usize, 1usize), (10, 1000)] {
        let msgs = messages(txns, rows);
        group.throughput(Throughput::Elements((txns * rows) as u64));
        group.bench_with_input(BenchmarkId::new("rows_per_txn", rows), &msgs, |bench, msgs| {
            let mut out = Vec::new();
            bench.iter(|| {
                // A fresh session each time: the first row announces the table.
                let mut d = decoder();
                for m in msgs {
                    d.decode(m, &mut out).expect("catalog prepared, input valid");
                }
                black_box(out.len());
                out.clear();
            });
        });
    }
    group.finish();
}

mod common;

criterion_group! {
    name = benches;
    config = common::config();
    targets = fallback
}
criterion_main!(benches);
