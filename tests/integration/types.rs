//! Every type of the mapping, through INSERT, UPDATE and DELETE, compared with what the server
//! returns for the same rows (issue 3).
//!
//! The expected Arrow values are computed from `SELECT`s whose expressions do the unit
//! conversions in SQL (days since 1970, microseconds, cents), so they do not share the
//! plugin's conversion code.

use std::sync::Arc;
use std::time::Duration;

use wal2arrow_schema::types::MICROS_PER_DAY;

use arrow_array::builder::{
    BinaryBuilder, Decimal128Builder, FixedSizeBinaryBuilder, Int32Builder,
    IntervalMonthDayNanoBuilder, ListBuilder, StringBuilder,
};
use arrow_array::cast::AsArray;
use arrow_array::types::{Int32Type, IntervalMonthDayNano, UInt8Type};
use arrow_array::{
    Array, ArrayRef, BooleanArray, Date32Array, Float32Array, Float64Array, Int16Array, Int32Array,
    Int64Array, RecordBatch, StructArray, Time64MicrosecondArray, TimestampMicrosecondArray,
    UInt32Array,
};
use arrow_buffer::NullBuffer;
use arrow_schema::{DataType, IntervalUnit, TimeUnit};
use tokio_postgres::Row;
use wal2arrow_consumer::{ChangeBatch, StreamOptions};
use wal2arrow_harness::Cluster;

use crate::common::{config, read_txns, sql};

/// How the expected values of a column are read back.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Expect {
    I16,
    I32,
    I64,
    U32,
    F32,
    F64,
    Bool,
    Text,
    Bytes,
    /// Decimal128(precision, scale), from the value's text.
    Decimal(u8, i8),
    Date,
    Time,
    TimeTz,
    Timestamp(bool),
    Interval,
    Uuid,
    ListI32,
    ListText,
    /// int4[][]: dimensions and row-major elements.
    List2dI32,
    /// numeric(6,2)[]: elements times 100.
    ListDecimal,
    ListUuid,
}

/// (column, SQL type, Arrow type the consumer must produce, how to read the expected value)
/// Every supported type's column, as far as the server under test has it: a negative
/// `numeric` scale needs PostgreSQL 15.
pub(crate) fn columns() -> Vec<(&'static str, &'static str, DataType, Expect)> {
    let mut all = every_column();
    if !negative_scale() {
        all.retain(|(name, ..)| *name != "c_num_neg");
    }
    all
}

/// Whether the server accepts `numeric(p, s)` with `s < 0` (PostgreSQL 15 and later).
pub(crate) fn negative_scale() -> bool {
    wal2arrow_harness::server_major() >= 15
}

/// Every column [`SEED_ROWS`] has a value for, in order.
fn every_column() -> Vec<(&'static str, &'static str, DataType, Expect)> {
    use DataType as D;
    let micros = |tz: Option<&str>| D::Timestamp(TimeUnit::Microsecond, tz.map(Into::into));
    // The innermost item field carries the element type's name (and extension, if any).
    let item = |dt: D, typname: &str, ext: Option<&str>| {
        let mut md = std::collections::HashMap::from([(
            "ADBC:postgresql:typname".to_owned(),
            typname.to_owned(),
        )]);
        if let Some(ext) = ext {
            md.insert("ARROW:extension:name".to_owned(), ext.to_owned());
            // arrow.uuid has no parameters: empty metadata, as Arrow C++ writes it.
            md.insert("ARROW:extension:metadata".to_owned(), String::new());
        }
        D::List(Arc::new(arrow_schema::Field::new("item", dt, true).with_metadata(md)))
    };
    let list = |inner: D| D::new_list(inner, true);
    vec![
        ("c_int2", "int2", D::Int16, Expect::I16),
        ("c_int4", "int4", D::Int32, Expect::I32),
        ("c_int8", "int8", D::Int64, Expect::I64),
        ("c_oid", "oid", D::UInt32, Expect::U32),
        ("c_float4", "float4", D::Float32, Expect::F32),
        ("c_float8", "float8", D::Float64, Expect::F64),
        ("c_num", "numeric(12,2)", D::Decimal128(12, 2), Expect::Decimal(12, 2)),
        ("c_num_neg", "numeric(5,-2)", D::Decimal128(5, -2), Expect::Decimal(5, -2)),
        ("c_num_38", "numeric(38,6)", D::Decimal128(38, 6), Expect::Decimal(38, 6)),
        ("c_num_free", "numeric", D::Utf8, Expect::Text),
        ("c_num_big", "numeric(50,10)", D::Utf8, Expect::Text),
        ("c_money", "money", D::Int64, Expect::I64),
        ("c_bool", "bool", D::Boolean, Expect::Bool),
        ("c_text", "text", D::Utf8, Expect::Text),
        ("c_varchar", "varchar(10)", D::Utf8, Expect::Text),
        ("c_bpchar", "char(5)", D::Utf8, Expect::Text),
        ("c_name", "name", D::Utf8, Expect::Text),
        ("c_char", "\"char\"", D::Utf8, Expect::Text),
        ("c_bytea", "bytea", D::Binary, Expect::Bytes),
        ("c_date", "date", D::Date32, Expect::Date),
        ("c_time", "time", D::Time64(TimeUnit::Microsecond), Expect::Time),
        ("c_timetz", "timetz", D::Struct(wal2arrow_schema::types::timetz_fields()), Expect::TimeTz),
        ("c_ts", "timestamp", micros(None), Expect::Timestamp(false)),
        ("c_tstz", "timestamptz", micros(Some("UTC")), Expect::Timestamp(true)),
        ("c_interval", "interval", D::Interval(IntervalUnit::MonthDayNano), Expect::Interval),
        ("c_uuid", "uuid", D::FixedSizeBinary(16), Expect::Uuid),
        ("c_json", "json", D::Utf8, Expect::Text),
        ("c_jsonb", "jsonb", D::Utf8, Expect::Text),
        ("c_inet", "inet", D::Utf8, Expect::Text),
        ("c_cidr", "cidr", D::Utf8, Expect::Text),
        ("c_macaddr", "macaddr", D::Utf8, Expect::Text),
        ("c_macaddr8", "macaddr8", D::Utf8, Expect::Text),
        ("c_bit", "bit(4)", D::Utf8, Expect::Text),
        ("c_varbit", "varbit", D::Utf8, Expect::Text),
        ("c_enum", "mood", D::Utf8, Expect::Text),
        ("c_domain", "posint", D::Int32, Expect::I32),
        ("c_int4_arr", "int4[]", item(D::Int32, "int4", None), Expect::ListI32),
        ("c_text_arr", "text[]", item(D::Utf8, "text", None), Expect::ListText),
        ("c_int4_2d", "int4[][]", list(item(D::Int32, "int4", None)), Expect::List2dI32),
        (
            "c_num_arr",
            "numeric(6,2)[]",
            item(D::Decimal128(6, 2), "numeric", None),
            Expect::ListDecimal,
        ),
        (
            "c_uuid_arr",
            "uuid[]",
            item(D::FixedSizeBinary(16), "uuid", Some("arrow.uuid")),
            Expect::ListUuid,
        ),
        ("c_point", "point", D::Utf8, Expect::Text),
        ("c_range", "int4range", D::Utf8, Expect::Text),
        ("c_comp", "pair", D::Utf8, Expect::Text),
        ("c_tsv", "tsvector", D::Utf8, Expect::Text),
    ]
}

/// The SQL that reads a column's expected value(s).
fn select_expr(col: &str, expect: Expect) -> String {
    let finite_micros = |c: &str| {
        format!(
            "CASE WHEN {c} = 'infinity' THEN 9223372036854775807 WHEN {c} = '-infinity' \
             THEN -9223372036854775808 ELSE (extract(epoch FROM {c}) * 1000000)::int8 END"
        )
    };
    match expect {
        Expect::U32 => format!("{col}::int8"),
        Expect::I64 if col == "c_money" => format!("({col}::numeric * 100)::int8"),
        // text, varchar, bpchar (padded) and name read as they are; everything else as its
        // output function's text, which is what SELECT shows (format's %s calls it; a ::text
        // cast can differ, as inet's, which always adds the mask). num_nonnulls tests the value
        // itself: IS NOT NULL on a composite tests its fields.
        Expect::Text | Expect::Decimal(..)
            if !matches!(col, "c_text" | "c_varchar" | "c_bpchar" | "c_name") =>
        {
            format!("CASE WHEN num_nonnulls({col}) = 1 THEN format('%s', {col}) END")
        }
        Expect::Date => format!(
            "CASE WHEN {col} = 'infinity' THEN 2147483647 WHEN {col} = '-infinity' THEN -2147483648 \
             ELSE {col} - date '1970-01-01' END"
        ),
        Expect::Time => format!("(extract(epoch FROM {col}) * 1000000)::int8"),
        Expect::TimeTz => format!(
            "(extract(epoch FROM {col}::time) * 1000000)::int8, extract(timezone FROM {col})::int4"
        ),
        Expect::Timestamp(_) => finite_micros(col),
        Expect::Interval => format!(
            "(extract(year FROM {col}) * 12 + extract(month FROM {col}))::int4, \
             extract(day FROM {col})::int4, \
             ((extract(hour FROM {col}) * 3600 + extract(minute FROM {col}) * 60) * 1000000 \
               + extract(microseconds FROM {col}))::int8"
        ),
        Expect::Uuid => format!("{col}::text"),
        Expect::List2dI32 => format!(
            "array_length({col}, 1), array_length({col}, 2), array_ndims({col}), \
             CASE WHEN {col} IS NOT NULL THEN ARRAY(SELECT unnest({col})) END"
        ),
        Expect::ListDecimal => {
            format!(
                "CASE WHEN {col} IS NOT NULL THEN ARRAY(SELECT (x * 100)::int8 FROM unnest({col}) x) END"
            )
        }
        Expect::ListUuid => format!("{col}::text[]"),
        _ => col.to_owned(),
    }
}

fn expr_width(expect: Expect) -> usize {
    match expect {
        Expect::TimeTz => 2,
        Expect::Interval => 3,
        Expect::List2dI32 => 4,
        _ => 1,
    }
}

/// `text` as a Decimal128 integer at `scale` (the value times 10^scale, exactly).
fn decimal(text: &str, scale: i8) -> Option<i128> {
    if text == "NaN" {
        return None;
    }
    let (neg, digits) = text.strip_prefix('-').map_or((false, text), |d| (true, d));
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    let mut v: i128 = format!("{int}{frac}").parse().unwrap();
    let exp = i32::from(scale) - frac.len() as i32;
    if exp >= 0 {
        v *= 10i128.pow(exp as u32);
    } else {
        let d = 10i128.pow((-exp) as u32);
        assert_eq!(v % d, 0, "{text} at scale {scale}");
        v /= d;
    }
    Some(if neg { -v } else { v })
}

fn uuid_bytes(text: &str) -> Vec<u8> {
    let hex: String = text.chars().filter(|c| *c != '-').collect();
    (0..16).map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap()).collect()
}

/// The expected column, read from `rows` starting at result column `at`. Returns also which
/// rows hold an unrepresentable value (NaN in Decimal128, 24:00:00 in Time64), listed in
/// `_unrepresentable`.
fn expected_column(
    rows: &[Row],
    at: usize,
    expect: Expect,
    dt: &DataType,
) -> (ArrayRef, Vec<bool>) {
    let mut missing = vec![false; rows.len()];
    let item = || match dt {
        DataType::List(f) => Arc::clone(f),
        _ => unreachable!(),
    };
    let array: ArrayRef = match expect {
        Expect::I16 => {
            Arc::new(rows.iter().map(|r| r.get::<_, Option<i16>>(at)).collect::<Int16Array>())
        }
        Expect::I32 => {
            Arc::new(rows.iter().map(|r| r.get::<_, Option<i32>>(at)).collect::<Int32Array>())
        }
        Expect::I64 => {
            Arc::new(rows.iter().map(|r| r.get::<_, Option<i64>>(at)).collect::<Int64Array>())
        }
        Expect::U32 => Arc::new(
            rows.iter()
                .map(|r| r.get::<_, Option<i64>>(at).map(|v| v as u32))
                .collect::<UInt32Array>(),
        ),
        Expect::F32 => {
            Arc::new(rows.iter().map(|r| r.get::<_, Option<f32>>(at)).collect::<Float32Array>())
        }
        Expect::F64 => {
            Arc::new(rows.iter().map(|r| r.get::<_, Option<f64>>(at)).collect::<Float64Array>())
        }
        Expect::Bool => {
            Arc::new(rows.iter().map(|r| r.get::<_, Option<bool>>(at)).collect::<BooleanArray>())
        }
        Expect::Text => {
            let mut b = StringBuilder::new();
            rows.iter().for_each(|r| b.append_option(r.get::<_, Option<String>>(at)));
            Arc::new(b.finish())
        }
        Expect::Bytes => {
            let mut b = BinaryBuilder::new();
            rows.iter().for_each(|r| b.append_option(r.get::<_, Option<Vec<u8>>>(at)));
            Arc::new(b.finish())
        }
        Expect::Decimal(p, s) => {
            let mut b = Decimal128Builder::new().with_precision_and_scale(p, s).unwrap();
            for (i, r) in rows.iter().enumerate() {
                match r.get::<_, Option<String>>(at) {
                    None => b.append_null(),
                    Some(t) => match decimal(&t, s) {
                        Some(v) => b.append_value(v),
                        None => {
                            b.append_null();
                            missing[i] = true;
                        }
                    },
                }
            }
            Arc::new(b.finish())
        }
        Expect::Date => {
            Arc::new(rows.iter().map(|r| r.get::<_, Option<i32>>(at)).collect::<Date32Array>())
        }
        // 24:00:00 is PostgreSQL's, not Arrow's (Time64 lies in [0, 24h)): NULL, listed in
        // `_unrepresentable`.
        Expect::Time => Arc::new(
            rows.iter()
                .enumerate()
                .map(|(i, r)| {
                    let t = r.get::<_, Option<i64>>(at);
                    missing[i] = t == Some(MICROS_PER_DAY);
                    t.filter(|t| *t != MICROS_PER_DAY)
                })
                .collect::<Time64MicrosecondArray>(),
        ),
        Expect::TimeTz => {
            let times: Vec<Option<i64>> = rows
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    let t = r.get::<_, Option<i64>>(at);
                    missing[i] = t == Some(MICROS_PER_DAY);
                    t.filter(|t| *t != MICROS_PER_DAY)
                })
                .collect();
            let offsets: Vec<Option<i32>> = rows.iter().map(|r| r.get(at + 1)).collect();
            let nulls = NullBuffer::from(times.iter().map(Option::is_some).collect::<Vec<_>>());
            Arc::new(StructArray::new(
                wal2arrow_schema::types::timetz_fields(),
                vec![
                    Arc::new(
                        times
                            .iter()
                            .map(|t| Some(t.unwrap_or(0)))
                            .collect::<Time64MicrosecondArray>(),
                    ),
                    Arc::new(offsets.iter().map(|o| Some(o.unwrap_or(0))).collect::<Int32Array>()),
                ],
                Some(nulls),
            ))
        }
        Expect::Timestamp(tz) => {
            let a: TimestampMicrosecondArray =
                rows.iter().map(|r| r.get::<_, Option<i64>>(at)).collect();
            Arc::new(if tz { a.with_timezone("UTC") } else { a })
        }
        Expect::Interval => {
            let mut b = IntervalMonthDayNanoBuilder::new();
            for r in rows {
                match (
                    r.get::<_, Option<i32>>(at),
                    r.get::<_, Option<i32>>(at + 1),
                    r.get::<_, Option<i64>>(at + 2),
                ) {
                    (Some(m), Some(d), Some(us)) => {
                        b.append_value(IntervalMonthDayNano::new(m, d, us.saturating_mul(1000)))
                    }
                    _ => b.append_null(),
                }
            }
            Arc::new(b.finish())
        }
        Expect::Uuid => {
            let mut b = FixedSizeBinaryBuilder::new(16);
            for r in rows {
                match r.get::<_, Option<String>>(at) {
                    Some(t) => b.append_value(uuid_bytes(&t)).unwrap(),
                    None => b.append_null(),
                }
            }
            Arc::new(b.finish())
        }
        Expect::ListI32 => {
            let mut b = ListBuilder::new(Int32Builder::new()).with_field(item());
            rows.iter().for_each(|r| b.append_option(r.get::<_, Option<Vec<Option<i32>>>>(at)));
            Arc::new(b.finish())
        }
        Expect::ListText => {
            let mut b = ListBuilder::new(StringBuilder::new()).with_field(item());
            rows.iter().for_each(|r| b.append_option(r.get::<_, Option<Vec<Option<String>>>>(at)));
            Arc::new(b.finish())
        }
        Expect::ListDecimal => {
            let DataType::Decimal128(p, s) = item().data_type().clone() else { unreachable!() };
            let inner = Decimal128Builder::new().with_precision_and_scale(p, s).unwrap();
            let mut b = ListBuilder::new(inner).with_field(item());
            for r in rows {
                match r.get::<_, Option<Vec<Option<i64>>>>(at) {
                    Some(v) => {
                        v.iter().for_each(|x| b.values().append_option(x.map(i128::from)));
                        b.append(true);
                    }
                    None => b.append_null(),
                }
            }
            Arc::new(b.finish())
        }
        Expect::ListUuid => {
            let mut b = ListBuilder::new(FixedSizeBinaryBuilder::new(16)).with_field(item());
            for r in rows {
                match r.get::<_, Option<Vec<Option<String>>>>(at) {
                    Some(v) => {
                        for u in v {
                            match u {
                                Some(u) => b.values().append_value(uuid_bytes(&u)).unwrap(),
                                None => b.values().append_null(),
                            }
                        }
                        b.append(true);
                    }
                    None => b.append_null(),
                }
            }
            Arc::new(b.finish())
        }
        Expect::List2dI32 => {
            // Nested to the declared two levels: a 1-D value is wrapped in one outer list, a 3-D
            // value's inner dimensions are flattened (the documented reshaping).
            let inner_item = match item().data_type() {
                DataType::List(f) => Arc::clone(f),
                _ => unreachable!(),
            };
            let mut b =
                ListBuilder::new(ListBuilder::new(Int32Builder::new()).with_field(inner_item))
                    .with_field(item());
            for r in rows {
                let (d1, d2, ndims, flat) = (
                    r.get::<_, Option<i32>>(at),
                    r.get::<_, Option<i32>>(at + 1),
                    r.get::<_, Option<i32>>(at + 2),
                    r.get::<_, Option<Vec<Option<i32>>>>(at + 3),
                );
                let Some(flat) = flat else {
                    b.append_null();
                    continue;
                };
                let outer = match (ndims, d1, d2) {
                    (None, ..) => 0,      // empty array: one empty list
                    (Some(1), _, _) => 1, // wrapped
                    (Some(_), Some(d1), Some(_)) => d1 as usize,
                    _ => unreachable!(),
                };
                if let Some(size) = flat.len().checked_div(outer) {
                    for chunk in flat.chunks(size) {
                        chunk.iter().for_each(|x| b.values().values().append_option(*x));
                        b.values().append(true);
                    }
                }
                b.append(true);
            }
            Arc::new(b.finish())
        }
    };
    (array, missing)
}

const SEED_ROWS: &str = "
    (1, 1, 100000, 10000000000, 4000000000, 1.5, 2.25, 1234567890.12, 12300, 12345678901234567890123456789012.345678,
     3.14159265358979323846264338327950288, 12345678901234567890123456789012345678.1234567890,
     12.34, true, 'hello', 'varchar', 'ab', 'name1', 'x', '\\xdeadbeef', '2024-02-29', '13:45:59.123456',
     '13:45:59.5+05:30', '2024-02-29 13:45:59.123456', '2024-02-29 13:45:59.123456+00',
     '1 year 2 mons 3 days 04:05:06.789', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
     '{\"a\": [1, 2, {\"b\": null}]}', '{\"b\": 1, \"a\": [true]}', '192.168.0.1/24', '10.0.0.0/8',
     '08:00:2b:01:02:03', '08:00:2b:01:02:03:04:05', B'1010', B'110011', 'happy', 5, '{1,2,3}',
     '{\"a\",\"b c\",\"\",NULL}', '{{1,2},{3,4}}', '{1.50,NULL,-2.25}', '{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}',
     '(1.5,2)', '[1,10)', '(1,\"x y\")', 'a fat cat'),
    (2, -32768, -2147483648, -9223372036854775808, 0, '-Infinity', '-Infinity', -9999999999.99, -9999900,
     -99999999999999999999999999999999.999999, -0.000000000000000000001, -1e-10,
     -92233720368547758.08, false, '', '', '', '', '', '\\x', '4713-01-01 BC', '00:00:00',
     '00:00:00-15:59', '-infinity', '-infinity', '-178000000 years -1000000 hours',
     '00000000-0000-0000-0000-000000000000', 'null', '[]', '::1', '::/0', '00:00:00:00:00:00',
     '00:00:00:00:00:00:00:00', B'0000', B'', 'sad', 1, '{}', '{}', '{}', '{}', '{}', '(-1,-1)', 'empty',
     '(,)', ''),
    (3, 32767, 2147483647, 9223372036854775807, 4294967295, 'NaN', 'NaN', 'NaN', 9999900,
     99999999999999999999999999999999.999999, 'Infinity', 'NaN', 92233720368547758.07, true,
     repeat('long text ', 600), 'ten chars!', 'abcde', repeat('n', 63), '\\377',
     decode(repeat('ff00', 1500), 'hex'), '5874897-12-31', '24:00:00', '24:00:00-15:59', 'infinity',
     'infinity', '178000000 years 1000000 hours', 'ffffffff-ffff-ffff-ffff-ffffffffffff',
     '\"\\u00e9 🎉\"', '{\"nested\": {\"deep\": [1, 2.5, \"x\", false, null]}}', '2001:db8::1/128',
     '2001:db8::/32', 'ff:ff:ff:ff:ff:ff', 'ff:ff:ff:ff:ff:ff:ff:ff', B'1111', B'1011001110001111',
     'ok', 2147483647, '{NULL}', '{NULL,\"x\"}', '{{NULL,1},{2,NULL}}', '{999.99,-999.99}', '{NULL}',
     '(1e300,-1e-300)', '(,)', '(2147483647,\"\")', repeat('word ', 300)::tsvector),
    (4, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
     NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
     NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
    (5, 7, 7, 7, 7, -0.0, -0.0, 0.01, 0, 0.000001, 0, 0, 0, false, 'héllo wörld ✓ 🎉', 'ñandú', 'é', 'ünï',
     'a', '\\x00', '1970-01-01', '00:00:00.000001', '23:59:59.999999+15:59', '1969-12-31 23:59:59.999999',
     '1969-12-31 23:59:59.999999+00', '-1 mons +1 day -00:00:00.000001',
     '12345678-1234-5678-1234-567812345678', '{}', '{}', '0.0.0.0/0', '0.0.0.0/0', '01:02:03:04:05:06',
     '01:02:03:04:05:06:07:08', B'0001', B'0', 'happy', 42, '{-2147483648,2147483647}', '{\"NULL\",\"\\\\\"}',
     '{{{1,2},{3,4}},{{5,6},{7,8}}}', '{0.00}', '{00000000-0000-0000-0000-000000000001,NULL}', '(0,0)',
     '[-2147483648,2147483647)', '(0,\"\")', 'é ü')";

/// The types and the `all_types` table (REPLICA IDENTITY FULL) with a column of every type,
/// and `seed`, holding [`SEED_ROWS`].
pub(crate) fn all_types_sql() -> String {
    let ddl: Vec<String> = columns().iter().map(|(c, t, _, _)| format!("{c} {t}")).collect();
    let seed_ddl: Vec<String> = every_column()
        .iter()
        .map(|(c, t, _, _)| match *c {
            "c_num_neg" if !negative_scale() => format!("{c} numeric"),
            _ => format!("{c} {t}"),
        })
        .collect();
    format!(
        "CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
         CREATE DOMAIN posint AS int4 CHECK (VALUE > 0);
         CREATE TYPE pair AS (a int4, b text);
         CREATE TABLE all_types (id int4 PRIMARY KEY, {});
         ALTER TABLE all_types REPLICA IDENTITY FULL;
         CREATE TABLE seed (id int4, {});
         INSERT INTO seed VALUES {SEED_ROWS};
         {}",
        ddl.join(", "),
        seed_ddl.join(", "),
        // Without negative scales, the seed's column for them is plain numeric, and goes.
        if negative_scale() { "" } else { "ALTER TABLE seed DROP COLUMN c_num_neg;" }
    )
}

/// The values the UPDATE gives each row: rotated, so every column changes.
const UPDATE_FROM: &str = "SELECT s.* FROM seed s";

pub(crate) async fn select_all(
    client: &tokio_postgres::Client,
    cols: &[(&str, &str, DataType, Expect)],
) -> Vec<Row> {
    let exprs: Vec<String> = cols.iter().map(|(c, _, _, e)| select_expr(c, *e)).collect();
    client
        .query(&format!("SELECT id, {} FROM all_types ORDER BY id", exprs.join(", ")), &[])
        .await
        .unwrap()
}

/// Rows of `batches` with `_op` = `op`, ordered by `id`.
pub(crate) fn rows_with_op(batches: &[ChangeBatch], op: &str) -> RecordBatch {
    let schema = batches[0].batch.schema();
    let all =
        arrow_select::concat::concat_batches(&schema, batches.iter().map(|b| &b.batch)).unwrap();
    let ops = all.column_by_name("_op").unwrap().as_dictionary::<UInt8Type>();
    let names = ops.values().as_string::<i32>();
    let mut picked: Vec<(i32, u32)> = (0..all.num_rows())
        .filter(|&i| names.value(ops.keys().value(i) as usize) == op)
        .map(|i| (all.column(0).as_primitive::<Int32Type>().value(i), i as u32))
        .collect();
    picked.sort();
    let idx = UInt32Array::from(picked.iter().map(|p| p.1).collect::<Vec<_>>());
    arrow_select::take::take_record_batch(&all, &idx).unwrap()
}

pub(crate) fn assert_matches(
    streamed: &RecordBatch,
    rows: &[Row],
    cols: &[(&str, &str, DataType, Expect)],
    what: &str,
) {
    assert_eq!(streamed.num_rows(), rows.len(), "{what}: row count");
    let missing = streamed.column_by_name("_missing").unwrap().as_list::<i32>();
    let lost = streamed.column_by_name("_unrepresentable").unwrap().as_list::<i32>();
    let mut at = 1;
    for (i, (name, _, dt, expect)) in cols.iter().enumerate() {
        let field = streamed.schema().field(i + 1).clone();
        assert_eq!(field.name(), name);
        assert_eq!(field.data_type(), dt, "{what}: Arrow type of {name}");
        let (expected, unrepresentable) = expected_column(rows, at, *expect, dt);
        assert_eq!(streamed.column(i + 1).as_ref(), expected.as_ref(), "{what}: values of {name}");
        let listed = |list: &arrow_array::ListArray, row: usize| {
            !list.is_null(row)
                && list.value(row).as_string::<i32>().iter().any(|n| n == Some(*name))
        };
        for (row, nan) in unrepresentable.iter().enumerate() {
            // Sent but not representable: `_unrepresentable`, never `_missing` (a reader must
            // not keep an old value for it).
            assert_eq!(listed(lost, row), *nan, "{what}: {name} row {row} in _unrepresentable");
            if *nan {
                assert!(!listed(missing, row), "{what}: {name} row {row} is not missing");
            }
        }
        at += expr_width(*expect);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_type_round_trips_through_insert_update_and_delete() {
    let db = Cluster::shared().database("all_types");
    let cols = columns();
    db.psql(&all_types_sql());
    let client = sql(&db).await;
    let mut stream = wal2arrow_consumer::open(&config(&db), &StreamOptions::new("all_types_slot"))
        .await
        .unwrap();

    // INSERT the seed rows in id order; UPDATE every row to the seed row of the next id (so
    // every value changes, NULLs included); DELETE them all.
    client
        .batch_execute(&format!("INSERT INTO all_types {UPDATE_FROM} ORDER BY id"))
        .await
        .unwrap();
    let inserted = select_all(&client, &cols).await;
    let assignments: Vec<String> = cols.iter().map(|(c, ..)| format!("{c} = s.{c}")).collect();
    client
        .batch_execute(&format!(
            "UPDATE all_types t SET {} FROM seed s WHERE s.id = t.id % 5 + 1",
            assignments.join(", ")
        ))
        .await
        .unwrap();
    let updated = select_all(&client, &cols).await;
    client.batch_execute("DELETE FROM all_types").await.unwrap();

    let txns = read_txns(&mut stream, 3, Duration::from_secs(60)).await;
    assert_matches(&rows_with_op(&txns[0].batches, "insert"), &inserted, &cols, "insert");
    assert_matches(
        &rows_with_op(&txns[1].batches, "update_before"),
        &inserted,
        &cols,
        "update_before",
    );
    assert_matches(&rows_with_op(&txns[1].batches, "update"), &updated, &cols, "update");
    assert_matches(&rows_with_op(&txns[2].batches, "delete"), &updated, &cols, "delete");

    // Metadata: each column's PostgreSQL type, the extension types, the table's identity.
    let schema = txns[0].batches[0].batch.schema();
    let md = |c: &str, k: &str| schema.field_with_name(c).unwrap().metadata().get(k).cloned();
    assert_eq!(md("c_enum", "ADBC:postgresql:typname").as_deref(), Some("mood"));
    assert_eq!(md("c_domain", "ADBC:postgresql:typname").as_deref(), Some("posint"));
    assert_eq!(md("c_uuid", "ARROW:extension:name").as_deref(), Some("arrow.uuid"));
    assert_eq!(md("c_jsonb", "ARROW:extension:name").as_deref(), Some("arrow.json"));
    assert_eq!(md("c_point", "ARROW:extension:name").as_deref(), Some("arrow.opaque"));
    assert_eq!(
        md("c_range", "ARROW:extension:metadata").as_deref(),
        Some(r#"{"type_name":"int4range","vendor_name":"PostgreSQL"}"#)
    );
    assert_eq!(md("c_inet", "ARROW:extension:name"), None);
    assert_eq!(
        md("c_num", "wal2arrow:typmod").as_deref(),
        Some(&*((12 << 16) + 2 + 4).to_string())
    );
    let DataType::List(item) = schema.field_with_name("c_uuid_arr").unwrap().data_type().clone()
    else {
        panic!()
    };
    assert_eq!(item.metadata().get("ARROW:extension:name").map(String::as_str), Some("arrow.uuid"));
    assert_eq!(schema.metadata()["wal2arrow:primary_key"], r#"["id"]"#);
    assert_eq!(schema.metadata()["wal2arrow:replica_identity"], "full");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numeric_as_string_keeps_every_numeric_exact_including_nan() {
    let db = Cluster::shared().database("numeric_text");
    // A negative scale where the server has it (15 and later).
    let b = if negative_scale() { "numeric(5,-2)" } else { "numeric(7,0)" };
    db.psql(&format!("CREATE TABLE n (a numeric(12,2), b {b}, c numeric)"));
    let mut options = StreamOptions::new("numeric_text_slot");
    options.plugin.numeric_as_string = true;
    let mut stream = wal2arrow_consumer::open(&config(&db), &options).await.unwrap();
    db.psql("INSERT INTO n VALUES ('NaN', 12300, 'Infinity'), (-1.5, NULL, '-0.000001000')");
    let txns = read_txns(&mut stream, 1, Duration::from_secs(30)).await;
    let b = &txns[0].batches[0].batch;
    for c in 0..3 {
        assert_eq!(b.schema().field(c).data_type(), &DataType::Utf8);
    }
    let text = |c: usize, r: usize| b.column(c).as_string::<i32>().value(r).to_owned();
    assert_eq!(
        (text(0, 0), text(1, 0), text(2, 0)),
        ("NaN".into(), "12300".into(), "Infinity".into())
    );
    assert_eq!((text(0, 1), text(2, 1)), ("-1.50".into(), "-0.000001000".into()));
    assert!(b.column(1).is_null(1));
    assert!(b.column_by_name("_missing").unwrap().is_null(0), "nothing missing as text");
}
