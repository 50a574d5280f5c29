//! The router's partitioners: tables to hash partitions by `schema.table`, and a table's rows
//! to key partitions by the hash of their primary key.
//!
//! `cargo bench -p wal2arrow-benches --bench partition`

use std::hint::black_box;
use std::sync::Arc;

use arrow_array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use wal2arrow_consumer::{KeyPartitioner, Router};

fn batch(rows: usize) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, true),
        Field::new("b", DataType::Float64, true),
        Field::new("c", DataType::Utf8, true),
    ]));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from_iter_values((0..rows as i64).map(|i| i * 7919))),
        Arc::new(Float64Array::from_iter_values((0..rows).map(|i| i as f64))),
        Arc::new(StringArray::from_iter_values((0..rows).map(|i| format!("row {i}")))),
    ];
    RecordBatch::try_new(schema, columns).unwrap()
}

fn partition(c: &mut Criterion) {
    let names: Vec<String> = (0..1000).map(|i| format!("public.table_{i}")).collect();
    let mut group = c.benchmark_group("partition/table_name");
    group.throughput(Throughput::Elements(names.len() as u64));
    group.bench_function("1000_names_8_partitions", |b| {
        b.iter(|| names.iter().map(|n| Router::partition_of(n, 8)).sum::<usize>())
    });
    group.finish();

    let mut group = c.benchmark_group("partition/primary_key");
    for rows in [1000usize, 8192] {
        let batch = batch(rows);
        let splitter = KeyPartitioner::new(&batch.schema(), &["id".to_owned()]).unwrap();
        for parts in [4usize, 16] {
            group.throughput(Throughput::Elements(rows as u64));
            group.bench_with_input(
                BenchmarkId::new(format!("{parts}_parts"), rows),
                &batch,
                |b, batch| b.iter(|| black_box(splitter.split(batch, parts).unwrap())),
            );
        }
    }
    group.finish();
}

mod common;

criterion_group! {
    name = benches;
    config = common::config();
    targets = partition
}
criterion_main!(benches);
