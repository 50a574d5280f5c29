//! Round trips through the encoder and decoder, and what the decoder does with damaged input.

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Decimal128Type, Int32Type, Int64Type, IntervalMonthDayNanoType, Time64MicrosecondType,
    UInt8Type, UInt64Type,
};
use arrow_array::{Array, RecordBatch};
use arrow_buffer::Buffer;
use arrow_schema::DataType;

use crate::encode::{MAX_BATCH_BYTES, write_schema_message};
use crate::samples::{Rng, append_row, builtin, col, every_kind, relation};
use crate::types::{TypeClass, oid};
use crate::*;

/// Copies `bytes` into a fresh 64-byte-aligned buffer, as the consumer's reader does.
fn aligned(bytes: &[u8]) -> Buffer {
    Buffer::from_slice_ref(bytes)
}

fn encode_session(desc: &RelationDesc, rows: usize, batch_rows: usize) -> Vec<Vec<u8>> {
    let mut msgs = Vec::new();
    let mut m = Vec::new();
    write_schema_message(&mut m, desc).unwrap();
    msgs.push(m);
    let mut enc = BatchEncoder::new(desc);
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
    msgs
}

fn concat(batches: &[RecordBatch]) -> RecordBatch {
    arrow_select::concat::concat_batches(&batches[0].schema(), batches).unwrap()
}

#[test]
fn batches_round_trip_with_nulls_in_every_column() {
    let desc = every_kind();
    let msgs = encode_session(&desc, 100, 30);
    assert_eq!(msgs.len(), 1 + 4, "schema + ceil(100/30) batches");
    let mut dec = Decoder::new();
    let Message::Schema(rel) = dec.decode(&aligned(&msgs[0])).unwrap() else { panic!() };
    assert_eq!(rel.qualified_name, "public.every");
    assert_eq!(rel.table_columns(), desc.columns.len());
    assert_eq!(rel.primary_key, ["i8"]);
    let mut batches: Vec<RecordBatch> = Vec::new();
    for m in &msgs[1..] {
        let Message::Batch(b) = dec.decode(&aligned(m)).unwrap() else { panic!() };
        batches.push(b.batch);
    }
    assert_eq!(dec.realigned_payloads(), 0);
    let all = concat(&batches);
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

    let n = desc.columns.len();
    for c in 0..n {
        let nulls = all.column(c).null_count();
        assert_eq!(nulls, (0..100).filter(|i| i % n == c).count(), "col {c}");
    }
    let ops = all.column(n).as_dictionary::<UInt8Type>();
    assert!(ops.keys().values().iter().all(|k| *k == ChangeOp::Insert as u8));
    assert_eq!(ops.values().as_string::<i32>().value(0), "insert");
    let lsns = all.column(n + 1).as_primitive::<UInt64Type>();
    for (i, l) in lsns.values().iter().enumerate() {
        assert_eq!(*l, 0x1_0000_0000 + 40 * i as u64);
    }
    assert_eq!(all.column(n + 2).null_count(), 100, "no value was missing");
    assert_eq!(all.column(n + 3).null_count(), 100, "every value was representable");

    // Typed spot checks of the richer kinds, row 5.
    assert_eq!(all.column(13).as_primitive::<Decimal128Type>().value(5), 5 * 101 - 5000);
    assert_eq!(all.schema().field(13).data_type(), &DataType::Decimal128(12, 2));
    assert_eq!(all.column(14).as_fixed_size_binary().value(5), [5u8; 16]);
    assert_eq!(all.column(15).as_primitive::<Time64MicrosecondType>().value(5), 5_000_015);
    let ttz = all.column(16).as_struct();
    assert_eq!(ttz.column(1).as_primitive::<Int32Type>().value(5), -3600 * 5);
    let iv = all.column(17).as_primitive::<IntervalMonthDayNanoType>().value(5);
    assert_eq!((iv.months, iv.days, iv.nanoseconds), (5, -5, 5000));
    let list = all.column(18).as_list::<i32>();
    let items = list.value(5);
    let items = items.as_primitive::<Int32Type>();
    assert_eq!(items.len(), 2, "5 % 3 items");
    assert_eq!((items.value(0), items.is_null(1)), (5, true));
    let nested = all.column(19).as_list::<i32>().value(8);
    assert_eq!(nested.len(), 2);
    assert!(nested.as_list::<i32>().is_null(1), "a NULL inner array");
}

#[test]
fn missing_values_and_old_images() {
    let desc = relation(vec![
        builtin("id", oid::INT8, "int8"),
        builtin("body", oid::TEXT, "text"),
        col("price", PgKind::Decimal { precision: 10, scale: 2 }, "numeric"),
    ]);
    let mut m = Vec::new();
    write_schema_message(&mut m, &desc).unwrap();
    let mut dec = Decoder::new();
    dec.decode(&aligned(&m)).unwrap();
    let mut enc = BatchEncoder::new(&desc);
    // An UPDATE under REPLICA IDENTITY DEFAULT that changed the key: old key, new row whose
    // large body was unchanged (TOAST), and a NULL price.
    enc.start_row(ChangeOp::UpdateBefore, Lsn(10)).unwrap();
    let ColumnBuilder::Int64(id) = enc.column(0) else { panic!() };
    id.append_value(1);
    for c in [1, 2] {
        enc.column(c).append_null();
        enc.mark_missing(c);
    }
    enc.start_row(ChangeOp::Update, Lsn(10)).unwrap();
    let ColumnBuilder::Int64(id) = enc.column(0) else { panic!() };
    id.append_value(2);
    enc.column(1).append_null();
    enc.mark_missing(1);
    enc.column(2).append_null();
    // An INSERT whose price is NaN: sent, but Decimal128 cannot hold it.
    enc.start_row(ChangeOp::Insert, Lsn(11)).unwrap();
    let ColumnBuilder::Int64(id) = enc.column(0) else { panic!() };
    id.append_value(3);
    let ColumnBuilder::Utf8(body) = enc.column(1) else { panic!() };
    body.append_value("b");
    enc.column(2).append_null();
    enc.mark_unrepresentable(2);
    let mut m = Vec::new();
    enc.write_batch(&mut m).unwrap();
    assert_eq!(
        m[2],
        wire::BATCH_HAS_MISSING | wire::BATCH_HAS_UNREPRESENTABLE,
        "the header announces both bitmaps"
    );
    let Message::Batch(b) = dec.decode(&aligned(&m)).unwrap() else { panic!() };
    let ops = b.batch.column(3).as_dictionary::<UInt8Type>();
    let names = ops.values().as_string::<i32>();
    assert_eq!(names.value(ops.keys().value(0) as usize), "update_before");
    assert_eq!(names.value(ops.keys().value(1) as usize), "update");
    let names_at = |column: usize, r: usize| {
        let list = b.batch.column(column).as_list::<i32>();
        if list.is_null(r) {
            return Vec::new();
        }
        let v = list.value(r);
        let s = v.as_string::<i32>();
        (0..s.len()).map(|i| s.value(i).to_owned()).collect::<Vec<_>>()
    };
    let (missing, unrepresentable) = (b.relation.missing_index(), b.relation.missing_index() + 1);
    assert_eq!(b.batch.schema().field(missing).name(), "_missing");
    assert_eq!(b.batch.schema().field(unrepresentable).name(), "_unrepresentable");
    assert_eq!(names_at(missing, 0), ["body", "price"]);
    assert_eq!(names_at(missing, 1), ["body"], "the NULL price is a real NULL, not missing");
    assert!(b.batch.column(1).is_null(1) && b.batch.column(2).is_null(1));
    assert!(b.batch.column(missing).is_null(2), "the insert carries every value");
    assert_eq!(names_at(unrepresentable, 2), ["price"], "NaN is sent, not missing");
    assert!(
        b.batch.column(unrepresentable).is_null(0) && b.batch.column(unrepresentable).is_null(1)
    );
}

#[test]
fn include_lsn_off_drops_the_column() {
    let mut desc = every_kind();
    desc.with_lsn = false;
    let msgs = encode_session(&desc, 5, 100);
    let mut dec = Decoder::new();
    let Message::Schema(rel) = dec.decode(&aligned(&msgs[0])).unwrap() else { panic!() };
    assert!(!rel.has_lsn());
    let Message::Batch(b) = dec.decode(&aligned(&msgs[1])).unwrap() else { panic!() };
    let schema = b.batch.schema();
    let names: Vec<&str> =
        schema.fields()[desc.columns.len()..].iter().map(|f| f.name().as_str()).collect();
    assert_eq!(names, ["_op", "_missing", "_unrepresentable"]);
}

#[test]
fn decoded_columns_point_into_the_payload() {
    let desc = every_kind();
    let msgs = encode_session(&desc, 50, 1000);
    let mut dec = Decoder::new();
    dec.decode(&aligned(&msgs[0])).unwrap();
    let payload = aligned(&msgs[1]);
    let Message::Batch(b) = dec.decode(&payload).unwrap() else { panic!() };
    let range = payload.as_ptr() as usize..payload.as_ptr() as usize + payload.len();
    let n = b.relation.table_columns();
    // Table columns (children of lists and structs included) and the _op keys are borrowed
    // (a dictionary's buffers are its keys; its values are the fixed op names).
    fn check(data: &arrow_data::ArrayData, range: &std::ops::Range<usize>, what: &str) {
        for buf in data.buffers() {
            let p = buf.as_ptr() as usize;
            assert!(
                range.contains(&p) && p + buf.len() <= range.end,
                "{what}: a buffer was copied"
            );
        }
        if let Some(nulls) = data.nulls() {
            assert!(range.contains(&(nulls.buffer().as_ptr() as usize)), "{what}: validity copied");
        }
        if !matches!(data.data_type(), DataType::Dictionary(..)) {
            for child in data.child_data() {
                check(child, range, what);
            }
        }
    }
    for c in 0..=n {
        check(&b.batch.column(c).to_data(), &range, b.batch.schema().field(c).name());
    }
}

#[test]
fn misaligned_payloads_are_copied_once_and_counted() {
    let msgs = encode_session(&every_kind(), 10, 1000);
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
    let mut enc = BatchEncoder::new(&every_kind());
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
fn batch_or_truncate_before_schema_is_an_error() {
    let msgs = encode_session(&every_kind(), 3, 1000);
    let mut dec = Decoder::new();
    assert_eq!(dec.decode(&aligned(&msgs[1])).unwrap_err(), WireError::UnknownRelation(16384));
    let mut t = Vec::new();
    wire::write_truncate(
        &mut t,
        &wire::Truncate { cascade: false, restart_identity: false, relids: vec![7] },
    )
    .unwrap();
    assert_eq!(dec.decode(&aligned(&t)).unwrap_err(), WireError::UnknownRelation(7));
}

#[test]
fn damaged_messages_are_errors_never_panics() {
    let msgs = encode_session(&every_kind(), 20, 1000);
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
    let mut desc = every_kind();
    desc.columns[2].not_null = true;
    desc.replica_identity = ReplicaIdentity::Full;
    desc.identity_key = desc.columns.iter().map(|c| c.name.clone()).collect();
    let msgs = encode_session(&desc, 0, 1);
    let mut dec = Decoder::new();
    let Message::Schema(rel) = dec.decode(&aligned(&msgs[0])).unwrap() else { panic!() };
    assert_eq!(rel.relid, 16384);
    assert_eq!((rel.namespace.as_str(), rel.name.as_str()), ("public", "every"));
    assert_eq!(rel.replica_identity, ReplicaIdentity::Full);
    assert_eq!(rel.identity_key.len(), desc.columns.len());
    let f = rel.schema.field(0);
    assert_eq!(f.name(), "i2");
    assert_eq!(f.metadata()[meta::PG_TYPNAME], "int2");
    assert_eq!(f.metadata()[meta::PG_TYPOID], "21");
    assert_eq!(f.metadata()[meta::PG_TYPMOD], "-1");
    assert_eq!(rel.schema.field(2).metadata()[meta::PG_NOT_NULL], "true");
    assert_eq!(rel.schema.metadata()[meta::TABLE_NAME], "every");
    assert_eq!(rel.schema.metadata()[meta::PRIMARY_KEY], r#"["i8"]"#);
    let n = desc.columns.len();
    let op = rel.schema.field(n);
    assert_eq!(op.name(), "_op");
    assert!(!op.is_nullable());
    assert_eq!(rel.schema.field(n + 1).data_type(), &DataType::UInt64);
    assert_eq!(rel.schema.field(n + 2).name(), "_missing");
    assert_eq!(rel.schema.field(n + 3).name(), "_unrepresentable");
}

/// The Arrow IPC message inside a Schema or Batch message (after its 16-byte header).
fn ipc_part(msg: &[u8]) -> &[u8] {
    &msg[wire::IPC_OFFSET..]
}

#[test]
fn every_batch_decodes_with_a_standard_arrow_reader_and_the_schema_sent_before_it() {
    // Batches with and without missing and unrepresentable values, each read by arrow-rs's
    // own StreamReader from the Schema message's IPC bytes followed by the Batch's.
    let desc = relation(vec![
        builtin("id", oid::INT8, "int8"),
        builtin("body", oid::TEXT, "text"),
        col("price", PgKind::Decimal { precision: 10, scale: 2 }, "numeric"),
    ]);
    let mut schema_msg = Vec::new();
    write_schema_message(&mut schema_msg, &desc).unwrap();
    let mut enc = BatchEncoder::new(&desc);
    let mut batches = Vec::new();
    for variant in 0..4 {
        enc.start_row(ChangeOp::Insert, Lsn(100 + variant)).unwrap();
        let ColumnBuilder::Int64(id) = enc.column(0) else { panic!() };
        id.append_value(variant as i64);
        enc.column(1).append_null();
        if variant & 1 != 0 {
            enc.mark_missing(1);
        }
        enc.column(2).append_null();
        if variant & 2 != 0 {
            enc.mark_unrepresentable(2);
        }
        let mut m = Vec::new();
        enc.write_batch(&mut m).unwrap();
        batches.push(m);
    }
    for (variant, batch_msg) in batches.iter().enumerate() {
        let mut stream = ipc_part(&schema_msg).to_vec();
        stream.extend_from_slice(ipc_part(batch_msg));
        stream.extend_from_slice(&[0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0]);
        let reader =
            arrow_ipc::reader::StreamReader::try_new(std::io::Cursor::new(stream), None).unwrap();
        let read: Vec<RecordBatch> = reader.map(|b| b.unwrap()).collect();
        assert_eq!(read.len(), 1, "variant {variant}");
        let b = &read[0];
        assert_eq!(b.schema().fields().len(), 3 + 4);
        assert_eq!(b.column(0).as_primitive::<Int64Type>().value(0), variant as i64);
        let bit = |c: usize| b.column(c).as_fixed_size_binary().value(0)[0];
        assert_eq!(bit(5), if variant & 1 != 0 { 0b010 } else { 0 }, "_missing");
        assert_eq!(bit(6), if variant & 2 != 0 { 0b100 } else { 0 }, "_unrepresentable");
        assert_eq!(b.column(5).null_count() + b.column(6).null_count(), 0);
    }
}

#[test]
fn an_updates_images_never_straddle_two_batches() {
    // The policy both producers follow: room_for before a change, batch_full after it.
    let desc = relation(vec![builtin("id", oid::INT8, "int8")]);
    let mut enc = BatchEncoder::new(&desc);
    let mut cuts = Vec::new();
    let row = |enc: &mut BatchEncoder, op: ChangeOp| {
        enc.start_row(op, Lsn(1)).unwrap();
        let ColumnBuilder::Int64(id) = enc.column(0) else { panic!() };
        id.append_value(1);
    };
    // batch-rows 3: insert, insert, update (2 images) → the update goes to the next batch.
    for change in [1, 1, 2, 2, 1] {
        if !enc.room_for(change, 3) {
            cuts.push(enc.rows());
            enc.finish_batch().unwrap();
        }
        if change == 2 {
            row(&mut enc, ChangeOp::UpdateBefore);
            row(&mut enc, ChangeOp::Update);
        } else {
            row(&mut enc, ChangeOp::Insert);
        }
        if enc.batch_full(3) {
            cuts.push(enc.rows());
            enc.finish_batch().unwrap();
        }
    }
    assert_eq!(enc.rows(), 0);
    assert_eq!(cuts, [2, 2, 3], "rows per batch: no update split");
    // batch-rows 1: an update with its old image is one batch of two rows.
    let mut enc = BatchEncoder::new(&desc);
    assert!(enc.room_for(2, 1));
    row(&mut enc, ChangeOp::UpdateBefore);
    row(&mut enc, ChangeOp::Update);
    assert!(enc.batch_full(1));
    assert!(!enc.room_for(1, 1));
}

#[test]
fn large_rows_are_measured_after_every_change() {
    let desc = relation(vec![builtin("body", oid::TEXT, "text")]);
    let mut enc = BatchEncoder::new(&desc);
    let big = "x".repeat(MAX_BATCH_BYTES / 10);
    let mut rows = 0;
    loop {
        enc.start_row(ChangeOp::Insert, Lsn(1)).unwrap();
        let ColumnBuilder::Utf8(b) = enc.column(0) else { panic!() };
        b.append_value(&big);
        rows += 1;
        if enc.batch_full(1_000_000) {
            break;
        }
        assert!(rows < 20, "a 16 MiB batch of 1.6 MiB rows was never cut");
    }
    assert_eq!(rows, 10, "cut at the first row that reaches 16 MiB");
}

#[test]
fn enum_and_domain_resolution_is_by_base_type() {
    assert_eq!(PgKind::resolve(oid::INT4, -1, TypeClass::Base, false), PgKind::Int4);
    assert_eq!(PgKind::resolve(99999, -1, TypeClass::Enum, false), PgKind::OutputText);
}

/// A random value of the builder's kind, edge values included.
fn random_value(b: &mut ColumnBuilder, rng: &mut Rng) {
    let r = rng.next_u64();
    match b {
        ColumnBuilder::Int16(b) => {
            b.append_value(*rng.pick(&[i16::MIN, -1, 0, 1, i16::MAX, r as i16]))
        }
        ColumnBuilder::Int32(b) => {
            b.append_value(*rng.pick(&[i32::MIN, -1, 0, i32::MAX, r as i32]))
        }
        ColumnBuilder::Int64(b) => b.append_value(*rng.pick(&[i64::MIN, 0, i64::MAX, r as i64])),
        ColumnBuilder::UInt32(b) => b.append_value(rng.next_u64() as u32),
        ColumnBuilder::Float32(b) => b.append_value(*rng.pick(&[
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            -0.0,
            f32::MIN_POSITIVE,
            f32::from_bits(r as u32),
        ])),
        ColumnBuilder::Float64(b) => b.append_value(*rng.pick(&[
            f64::NAN,
            f64::NEG_INFINITY,
            -0.0,
            f64::MAX,
            f64::from_bits(r),
        ])),
        // Within Decimal128(12, 2): |v| < 10^12.
        ColumnBuilder::Decimal128(b) => b.append_value(
            (rng.next_u64() % 1_000_000_000_000) as i128 * if rng.one_in(2) { -1 } else { 1 },
        ),
        ColumnBuilder::Bool(b) => b.append_value(rng.one_in(2)),
        ColumnBuilder::Utf8(b) => {
            let long = rng.one_in(20);
            let n = rng.below(if long { 5000 } else { 12 }) as usize;
            let text: String =
                (0..n).map(|_| *rng.pick(&['a', 'é', '✓', '🎉', '\0', '"', '\n'])).collect();
            b.append_value(text)
        }
        ColumnBuilder::Binary(b) => {
            let n = rng.below(40) as usize;
            b.append_value((0..n).map(|_| rng.next_u64() as u8).collect::<Vec<_>>())
        }
        ColumnBuilder::FixedSizeBinary(b) => {
            b.append_value(rng.next_u64().to_le_bytes().repeat(2)).unwrap()
        }
        ColumnBuilder::Date32(b) => {
            b.append_value(*rng.pick(&[i32::MIN, i32::MAX, r as i32 % 3_000_000]))
        }
        ColumnBuilder::Time64(b) => b.append_value((rng.next_u64() % 86_400_000_000) as i64),
        ColumnBuilder::Timestamp(b) => b.append_value(*rng.pick(&[i64::MIN, i64::MAX, r as i64])),
        ColumnBuilder::Interval(b) => ColumnBuilder::append_interval(
            b,
            rng.next_u64() as i32,
            rng.next_u64() as i32,
            rng.next_u64() as i64 / 1000,
        ),
        ColumnBuilder::TimeTz(b) => b.append_value(
            (rng.next_u64() % 86_400_000_000) as i64,
            (rng.next_u64() % 100_000) as i32 - 50_000,
        ),
        ColumnBuilder::List(l) => {
            for _ in 0..rng.below(4) {
                if rng.one_in(4) {
                    l.values().append_null();
                } else {
                    random_value(l.values(), rng);
                }
            }
            l.close();
        }
    }
}

#[test]
fn random_rows_of_every_type_round_trip_through_both_encodings() {
    // Time-bounded and replayable: the seed is printed; WAL2ARROW_SEED=<seed> replays it.
    let seed = Rng::seed_from_env();
    eprintln!("random_rows_of_every_type_round_trip_through_both_encodings: WAL2ARROW_SEED={seed}");
    let mut rng = Rng::new(seed);
    let desc = every_kind();
    let mut schema_msg = Vec::new();
    write_schema_message(&mut schema_msg, &desc).unwrap();
    let mut dec = Decoder::new();
    let Message::Schema(rel) = dec.decode(&aligned(&schema_msg)).unwrap() else { panic!() };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    let mut batches = 0;
    while std::time::Instant::now() < deadline || batches < 20 {
        batches += 1;
        // Two encoders fed the same rows: one writes IPC bytes by hand (the plugin's path),
        // the other builds Arrow arrays (the fallback's path).
        let mut by_hand = BatchEncoder::new(&desc);
        let mut arrays = BatchEncoder::new(&desc);
        let many = rng.one_in(10);
        let rows = 1 + rng.below(if many { 600 } else { 20 }) as usize;
        for r in 0..rows {
            let op = *rng.pick(&[
                ChangeOp::Insert,
                ChangeOp::Update,
                ChangeOp::Delete,
                ChangeOp::UpdateBefore,
            ]);
            let lsn = Lsn(0x1_0000_0000 + r as u64 * 8);
            by_hand.start_row(op, lsn).unwrap();
            arrays.start_row(op, lsn).unwrap();
            for c in 0..desc.columns.len() {
                let row_seed = rng.next_u64();
                let mark = rng.below(12);
                for enc in [&mut by_hand, &mut arrays] {
                    let mut r2 = Rng::new(row_seed);
                    match mark {
                        0 => {
                            enc.column(c).append_null();
                            enc.mark_missing(c);
                        }
                        1 => {
                            enc.column(c).append_null();
                            enc.mark_unrepresentable(c);
                        }
                        2 | 3 => enc.column(c).append_null(),
                        _ => random_value(enc.column(c), &mut r2),
                    }
                }
            }
        }
        let mut m = Vec::new();
        by_hand.write_batch(&mut m).unwrap();
        let Message::Batch(decoded) = dec.decode(&aligned(&m)).unwrap() else { panic!() };
        let w = arrays.finish_batch().unwrap().unwrap();
        let built =
            rel.user_batch(w.base_lsn, &w.batch, w.has_missing, w.has_unrepresentable).unwrap();
        assert_eq!(decoded.batch, built, "seed {seed}, batch {batches}");
        // And arrow-rs's own reader reads the hand-written bytes as the arrays.
        let mut stream = schema_msg[wire::IPC_OFFSET..].to_vec();
        stream.extend_from_slice(&m[wire::IPC_OFFSET..]);
        stream.extend_from_slice(&[0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0]);
        let read: Vec<RecordBatch> =
            arrow_ipc::reader::StreamReader::try_new(std::io::Cursor::new(stream), None)
                .unwrap()
                .map(|b| b.unwrap())
                .collect();
        assert_eq!(read.len(), 1);
        for c in 0..w.batch.num_columns() {
            assert_eq!(
                read[0].column(c).as_ref(),
                w.batch.column(c).as_ref(),
                "seed {seed} column {c}"
            );
        }
    }
}

#[test]
fn encode_and_wire_errors_keep_their_source() {
    use std::error::Error as _;
    let arrow =
        || arrow_schema::ArrowError::InvalidArgumentError("columns of unequal length".into());
    let wire = WireError::from(arrow());
    let source = wire.source().expect("a WireError from Arrow keeps it");
    assert!(source.to_string().contains("columns of unequal length"), "{source}");
    assert_eq!(wire.clone(), wire, "still Clone and Eq");
    let encode = crate::EncodeError::Arrow(arrow());
    assert!(encode.source().is_some_and(|s| s.to_string().contains("unequal")));
    let io = crate::EncodeError::Io(std::io::Error::other("disk full"));
    assert!(io.source().is_some_and(|s| s.to_string() == "disk full"));
}

#[test]
fn civil_dates_and_day_numbers_are_inverses() {
    use crate::types::{civil_from_days, days_from_civil};
    assert_eq!(days_from_civil(1970, 1, 1), 0);
    assert_eq!(civil_from_days(0), (1970, 1, 1));
    assert_eq!(civil_from_days(-1), (1969, 12, 31));
    assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    assert_eq!(civil_from_days(-719_528), (0, 1, 1), "1 BC, a leap year");
    assert_eq!(civil_from_days(-2_440_588), (-4713, 11, 24), "PostgreSQL's first day");
    // Every day of 4 centuries either side of year 0 and of the epoch, and far out.
    for start in [-800 * 366, -200 * 366, 105_000_000] {
        for days in start..start + 400 * 366 {
            let (y, m, d) = civil_from_days(days);
            assert!((1..=12).contains(&m) && (1..=31).contains(&d), "{days}: {y}-{m}-{d}");
            assert_eq!(days_from_civil(y, m, d), days, "{y}-{m}-{d}");
        }
    }
}
