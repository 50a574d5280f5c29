//! Sample tables and rows for tests, property tests, fuzz seeds and benchmarks: a table with a
//! column of every kind, and deterministic values for any row number. Not a stable API.

use crate::types::{ColumnDesc, PgKind, oid};
use crate::{BatchEncoder, ChangeOp, ColumnBuilder, Lsn, RelationDesc, ReplicaIdentity};

/// A column of `kind`, named `name`, shown as `type_name`.
pub fn col(name: &str, kind: PgKind, type_name: &str) -> ColumnDesc {
    ColumnDesc {
        name: name.into(),
        type_oid: 0,
        typmod: -1,
        type_name: type_name.into(),
        not_null: false,
        generated: false,
        kind,
    }
}

/// A column of a built-in type, by OID.
pub fn builtin(name: &str, type_oid: u32, type_name: &str) -> ColumnDesc {
    ColumnDesc { type_oid, ..col(name, PgKind::from_type_oid(type_oid), type_name) }
}

/// Table `public.every` (relid 16384, key `i8`) with these columns.
pub fn relation(columns: Vec<ColumnDesc>) -> RelationDesc {
    RelationDesc {
        relid: 16384,
        namespace: "public".into(),
        name: "every".into(),
        columns,
        primary_key: vec!["i8".into()],
        replica_identity: ReplicaIdentity::Default,
        identity_key: vec!["i8".into()],
        with_lsn: true,
    }
}

/// `public.every`: a column of every kind wal2arrow maps.
pub fn every_kind() -> RelationDesc {
    relation(vec![
        builtin("i2", oid::INT2, "int2"),
        builtin("i4", oid::INT4, "int4"),
        builtin("i8", oid::INT8, "int8"),
        builtin("f4", oid::FLOAT4, "float4"),
        builtin("f8", oid::FLOAT8, "float8"),
        builtin("b", oid::BOOL, "bool"),
        builtin("t", oid::TEXT, "text"),
        builtin("by", oid::BYTEA, "bytea"),
        builtin("d", oid::DATE, "date"),
        builtin("ts", oid::TIMESTAMP, "timestamp"),
        builtin("tz", oid::TIMESTAMPTZ, "timestamptz"),
        builtin("p", 600, "point"),
        builtin("o", oid::OID, "oid"),
        col("n", PgKind::Decimal { precision: 12, scale: 2 }, "numeric"),
        builtin("u", oid::UUID, "uuid"),
        builtin("tm", oid::TIME, "time"),
        builtin("ttz", oid::TIMETZ, "timetz"),
        builtin("iv", oid::INTERVAL, "interval"),
        col("a", PgKind::array(PgKind::Int4, "int4", 1), "_int4"),
        col("a2", PgKind::array(PgKind::Text, "text", 2), "_text"),
    ])
}

/// Appends row `i`: NULL in column `i % ncols`, values derived from `i` elsewhere.
pub fn append_row(enc: &mut BatchEncoder, i: usize, lsn: Lsn) {
    enc.start_row(ChangeOp::Insert, lsn).unwrap();
    let ncols = enc.columns_mut().len();
    for (c, b) in enc.columns_mut().iter_mut().enumerate() {
        if c == i % ncols {
            b.append_null();
            continue;
        }
        append_value(b, i);
    }
}

/// Appends value `i` of the builder's kind (lists: `i % 3` items, the middle one NULL).
pub fn append_value(b: &mut ColumnBuilder, i: usize) {
    match b {
        ColumnBuilder::Int16(b) => b.append_value(i as i16),
        ColumnBuilder::Int32(b) => b.append_value(i as i32),
        ColumnBuilder::Int64(b) => b.append_value(i as i64 * 1_000_000_007),
        ColumnBuilder::UInt32(b) => b.append_value(u32::MAX - i as u32),
        ColumnBuilder::Float32(b) => b.append_value(i as f32 / 3.0),
        ColumnBuilder::Float64(b) => b.append_value(i as f64 / 7.0),
        ColumnBuilder::Decimal128(b) => b.append_value(i as i128 * 101 - 5000),
        ColumnBuilder::Bool(b) => b.append_value(i.is_multiple_of(2)),
        ColumnBuilder::Utf8(b) => b.append_value(format!("row {i} é")),
        ColumnBuilder::Binary(b) => b.append_value([i as u8, 0, 255]),
        ColumnBuilder::FixedSizeBinary(b) => b.append_value([i as u8; 16]).unwrap(),
        ColumnBuilder::Date32(b) => b.append_value(i as i32),
        ColumnBuilder::Time64(b) => b.append_value(i as i64 * 1_000_003),
        ColumnBuilder::Timestamp(b) => b.append_value(i as i64 * 1_000_001),
        ColumnBuilder::Interval(b) => {
            ColumnBuilder::append_interval(b, i as i32, -(i as i32), i as i64)
        }
        ColumnBuilder::TimeTz(b) => b.append_value(i as i64, -3600 * (i as i32 % 13)),
        ColumnBuilder::List(l) => {
            // i % 3 items, the middle one NULL; for nested lists, lists of those.
            for k in 0..i % 3 {
                if k == 1 {
                    l.values().append_null();
                } else {
                    append_value(l.values(), i + k);
                }
            }
            l.close();
        }
    }
}

/// A small, fast, seedable generator (SplitMix64) for property tests: the same seed gives the
/// same sequence on every machine, so a failure is replayed from the seed it prints.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The seed to use: `WAL2ARROW_SEED` when set (to replay a failure), else the clock.
    pub fn seed_from_env() -> u64 {
        std::env::var("WAL2ARROW_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        })
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// True with probability `1 / n`.
    pub fn one_in(&mut self, n: u64) -> bool {
        self.below(n) == 0
    }

    /// One of `items`.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}
