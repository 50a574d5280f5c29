//! Round trips through the encoder and decoder, and what the decoder does with damaged input.

use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::UInt8Type;
use arrow_array::{Array, RecordBatch};
use arrow_buffer::Buffer;
use arrow_schema::DataType;

use crate::encode::write_schema_message;
use crate::types::oid;
use crate::*;

fn col(name: &str, type_oid: u32, type_name: &str) -> ColumnDesc {
    ColumnDesc {
        name: name.into(),
        type_oid,
        typmod: -1,
        type_name: type_name.into(),
        not_null: false,
        kind: PgKind::from_type_oid(type_oid),
    }
}

fn every_kind() -> RelationDesc {
    RelationDesc {
        relid: 16384,
        namespace: "public".into(),
        name: "every".into(),
        columns: vec![
            col("i2", oid::INT2, "int2"),
            col("i4", oid::INT4, "int4"),
            col("i8", oid::INT8, "int8"),
            col("f4", oid::FLOAT4, "float4"),
            col("f8", oid::FLOAT8, "float8"),
            col("b", oid::BOOL, "bool"),
            col("t", oid::TEXT, "text"),
            col("by", oid::BYTEA, "bytea"),
            col("d", oid::DATE, "date"),
            col("ts", oid::TIMESTAMP, "timestamp"),
            col("tz", oid::TIMESTAMPTZ, "timestamptz"),
            col("p", 600, "point"),
        ],
    }
}

/// Appends row `i`: NULL in column `i % ncols`, values derived from `i` elsewhere.
fn append_row(enc: &mut BatchEncoder, i: usize, lsn: Lsn) {
    enc.start_row(ChangeOp::Insert, lsn).unwrap();
    let ncols = enc.columns_mut().len();
    for (c, b) in enc.columns_mut().iter_mut().enumerate() {
        if c == i % ncols {
            b.append_null();
            continue;
        }
        match b {
            ColumnBuilder::Int16(b) => b.append_value(i as i16),
            ColumnBuilder::Int32(b) => b.append_value(i as i32),
            ColumnBuilder::Int64(b) => b.append_value(i as i64 * 1_000_000_007),
            ColumnBuilder::Float32(b) => b.append_value(i as f32 / 3.0),
            ColumnBuilder::Float64(b) => b.append_value(i as f64 / 7.0),
            ColumnBuilder::Bool(b) => b.append_value(i.is_multiple_of(2)),
            ColumnBuilder::Utf8(b) => b.append_value(format!("row {i} é")),
            ColumnBuilder::Binary(b) => b.append_value([i as u8, 0, 255]),
            ColumnBuilder::Date32(b) => b.append_value(i as i32),
            ColumnBuilder::Timestamp(b) => b.append_value(i as i64 * 1_000_001),
        }
    }
}

/// Copies `bytes` into a fresh 64-byte-aligned buffer, as the consumer's reader does.
fn aligned(bytes: &[u8]) -> Buffer {
    Buffer::from_slice_ref(bytes)
}

fn encode_session(rows: usize, batch_rows: usize) -> (Vec<Vec<u8>>, RelationDesc) {
    let desc = every_kind();
    let mut msgs = Vec::new();
    let mut m = Vec::new();
    write_schema_message(&mut m, &desc).unwrap();
    msgs.push(m);
    let mut enc = BatchEncoder::new(&desc);
    for i in 0..rows {
        append_row(&mut enc, i, Lsn(0x1_0000_0000 + 40 * i as u64));
        if enc.rows() == batch_rows {
            let mut m = Vec::new();
            enc.write_batch(&mut m).unwrap();
            msgs.push(m);
        }
    }
    let mut m = Vec::new();
    if enc.write_batch(&mut m).unwrap() > 0 {
        msgs.push(m);
    }
    (msgs, desc)
}

#[test]
fn batches_round_trip_with_nulls_in_every_column() {
    let (msgs, desc) = encode_session(100, 30);
    assert_eq!(msgs.len(), 1 + 4, "schema + ceil(100/30) batches");
    let mut dec = Decoder::new();
    let Message::Schema(rel) = dec.decode(&aligned(&msgs[0])).unwrap() else { panic!() };
    assert_eq!(rel.qualified_name, "public.every");
    assert_eq!(rel.table_columns(), desc.columns.len());
    let mut batches: Vec<RecordBatch> = Vec::new();
    for m in &msgs[1..] {
        let Message::Batch(b) = dec.decode(&aligned(m)).unwrap() else { panic!() };
        batches.push(b.batch);
    }
    assert_eq!(dec.realigned_payloads(), 0);
    let all = arrow_select_concat(&batches);
    assert_eq!(all.num_rows(), 100);
    assert_eq!(all.schema(), rel.schema);

    // Compare with a batch built directly with the same values.
    let mut enc = BatchEncoder::new(&desc);
    for i in 0..100 {
        append_row(&mut enc, i, Lsn(0x1_0000_0000 + 40 * i as u64));
    }
    let mut m = Vec::new();
    enc.write_batch(&mut m).unwrap();
    let Message::Batch(expected) = dec.decode(&aligned(&m)).unwrap() else { panic!() };
    assert_eq!(all, expected.batch);

    for c in 0..desc.columns.len() {
        let nulls = all.column(c).null_count();
        assert_eq!(nulls, (0..100).filter(|i| i % desc.columns.len() == c).count(), "col {c}");
    }
    let ops = all.column(desc.columns.len()).as_dictionary::<UInt8Type>();
    assert!(ops.keys().values().iter().all(|k| *k == ChangeOp::Insert as u8));
    assert_eq!(ops.values().as_string::<i32>().value(0), "insert");
    let lsns = all.column(desc.columns.len() + 1).as_primitive::<arrow_array::types::UInt64Type>();
    for (i, l) in lsns.values().iter().enumerate() {
        assert_eq!(*l, 0x1_0000_0000 + 40 * i as u64);
    }
    assert_eq!(
        all.schema().field(10).data_type(),
        &DataType::Timestamp(arrow_schema::TimeUnit::Microsecond, Some("UTC".into()))
    );
}

fn arrow_select_concat(batches: &[RecordBatch]) -> RecordBatch {
    arrow_select::concat::concat_batches(&batches[0].schema(), batches).unwrap()
}

#[test]
fn decoded_columns_point_into_the_payload() {
    let (msgs, _) = encode_session(50, 1000);
    let mut dec = Decoder::new();
    dec.decode(&aligned(&msgs[0])).unwrap();
    let payload = aligned(&msgs[1]);
    let Message::Batch(b) = dec.decode(&payload).unwrap() else { panic!() };
    let range = payload.as_ptr() as usize..payload.as_ptr() as usize + payload.len();
    let n = b.relation.table_columns();
    // Table columns and the _op keys are borrowed (a dictionary's buffers are its keys; its
    // values are the fixed op names); _lsn is computed.
    for c in 0..=n {
        let data = b.batch.column(c).to_data();
        for buf in data.buffers() {
            let p = buf.as_ptr() as usize;
            assert!(range.contains(&p) && p + buf.len() <= range.end, "column {c} copied");
        }
        if let Some(nulls) = data.nulls() {
            let p = nulls.buffer().as_ptr() as usize;
            assert!(range.contains(&p), "column {c} validity copied");
        }
    }
}

#[test]
fn misaligned_payloads_are_copied_once_and_counted() {
    let (msgs, _) = encode_session(10, 1000);
    let mut dec = Decoder::new();
    dec.decode(&aligned(&msgs[0])).unwrap();
    let mut shifted = vec![0u8];
    shifted.extend_from_slice(&msgs[1]);
    let shifted = aligned(&shifted).slice(1);
    let Message::Batch(b) = dec.decode(&shifted).unwrap() else { panic!() };
    assert_eq!(b.batch.num_rows(), 10);
    assert_eq!(dec.realigned_payloads(), 1);
}

#[test]
fn rows_more_than_4_gib_of_wal_apart_need_a_new_batch() {
    let desc = every_kind();
    let mut enc = BatchEncoder::new(&desc);
    append_row(&mut enc, 0, Lsn(100));
    assert!(enc.accepts(Lsn(100 + u64::from(u32::MAX))));
    assert!(!enc.accepts(Lsn(101 + u64::from(u32::MAX))));
    assert!(!enc.accepts(Lsn(99)));
    assert!(matches!(
        enc.start_row(ChangeOp::Insert, Lsn(u64::MAX)),
        Err(EncodeError::LsnOutOfRange { .. })
    ));
}

#[test]
fn batch_before_schema_is_an_error() {
    let (msgs, _) = encode_session(3, 1000);
    let mut dec = Decoder::new();
    assert_eq!(dec.decode(&aligned(&msgs[1])).unwrap_err(), WireError::UnknownRelation(16384));
}

#[test]
fn damaged_messages_are_errors_never_panics() {
    let (msgs, _) = encode_session(20, 1000);
    let schema = &msgs[0];
    let batch = &msgs[1];
    // Every truncation.
    for cut in 0..batch.len() {
        let mut dec = Decoder::new();
        dec.decode(&aligned(schema)).unwrap();
        assert!(dec.decode(&aligned(&batch[..cut])).is_err(), "cut at {cut} decoded");
    }
    for cut in 0..schema.len() {
        let _ = Decoder::new().decode(&aligned(&schema[..cut]));
    }
    // Every single-byte corruption: must not panic (it may still decode: a flipped value
    // byte is a different, valid value).
    for at in 0..batch.len() {
        for flip in [0x01u8, 0x80, 0xFF] {
            let mut dec = Decoder::new();
            dec.decode(&aligned(schema)).unwrap();
            let mut m = batch.clone();
            m[at] ^= flip;
            let _ = dec.decode(&aligned(&m));
        }
    }
    for at in 0..schema.len() {
        let mut m = schema.clone();
        m[at] ^= 0xFF;
        let _ = Decoder::new().decode(&aligned(&m));
    }
}

#[test]
fn schema_message_describes_the_table() {
    let (msgs, desc) = encode_session(0, 1);
    let mut dec = Decoder::new();
    let Message::Schema(rel) = dec.decode(&aligned(&msgs[0])).unwrap() else { panic!() };
    assert_eq!(rel.relid, 16384);
    assert_eq!(rel.namespace, "public");
    assert_eq!(rel.name, "every");
    let f = rel.schema.field(0);
    assert_eq!(f.name(), "i2");
    assert_eq!(f.metadata()[meta::PG_TYPNAME], "int2");
    assert_eq!(f.metadata()[meta::PG_TYPOID], "21");
    assert_eq!(f.metadata()[meta::PG_TYPMOD], "-1");
    assert_eq!(rel.schema.metadata()[meta::TABLE_NAME], "every");
    let op = rel.schema.field(desc.columns.len());
    assert_eq!(op.name(), "_op");
    assert!(!op.is_nullable());
    assert_eq!(rel.schema.field(desc.columns.len() + 1).data_type(), &DataType::UInt64);
    let _ = Arc::clone(&rel);
}
