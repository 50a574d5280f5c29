//! The PostgreSQL → Arrow type mapping: one table, used by the plugin to build columns and by
//! the consumer to describe them. The README has the same table with its footnotes.
//!
//! | PostgreSQL | [`PgKind`] | Arrow |
//! |---|---|---|
//! | `bool` | `Bool` | `Boolean` |
//! | `int2`, `int4`, `int8` | `Int2`, `Int4`, `Int8` | `Int16`, `Int32`, `Int64` |
//! | `oid` | `Oid` | `UInt32` |
//! | `float4`, `float8` | `Float4`, `Float8` | `Float32`, `Float64` |
//! | `money` | `Money` | `Int64` (in the currency's smallest unit) |
//! | `numeric(p, s)`, 1 ≤ p ≤ 38, s ≤ p | `Decimal` | `Decimal128(p, s)` |
//! | `numeric`, other `numeric(p, s)` | `NumericText` | `Utf8`: the exact text, `NaN`, `Infinity` |
//! | `text`, `varchar`, `bpchar` | `Text` | `Utf8` |
//! | `name` | `Name` | `Utf8` |
//! | `bytea` | `Bytea` | `Binary` |
//! | `date` | `Date` | `Date32` |
//! | `time` | `Time` | `Time64(µs)` |
//! | `timetz` | `TimeTz` | `Struct{time: Time64(µs), offset_seconds: Int32}` |
//! | `timestamp`, `timestamptz` | `Timestamp`, `Timestamptz` | `Timestamp(µs)`, `Timestamp(µs, "UTC")` |
//! | `interval` | `Interval` | `Interval(MonthDayNano)` |
//! | `uuid` | `Uuid` | `FixedSizeBinary(16)`, extension `arrow.uuid` |
//! | `json`, `jsonb` | `Json`, `Jsonb` | `Utf8`, extension `arrow.json` |
//! | `"char"`, `inet`, `cidr`, `macaddr`, `macaddr8`, `bit`, `varbit`, enums | `OutputText` | `Utf8` (the type's text) |
//! | arrays of any of these | `Array` | `List` nested once per declared dimension |
//! | domains | their base type's kind | |
//! | anything else | `Opaque` | `Utf8`, extension `arrow.opaque` |
//!
//! PostgreSQL counts dates and timestamps from 2000-01-01, Arrow from 1970-01-01: the
//! conversions shift by the fixed offset and keep PostgreSQL's infinity sentinels as the
//! extreme values of the Arrow type.

use std::collections::HashMap;
use std::sync::Arc;

use arrow_schema::{DataType, Field, Fields, IntervalUnit, TimeUnit};

use crate::meta;

/// OIDs of the built-in types wal2arrow maps natively. Built-in OIDs are fixed in PostgreSQL's
/// catalog (`pg_type.dat`) and identical in every release.
#[allow(missing_docs)]
pub mod oid {
    pub const BOOL: u32 = 16;
    pub const BYTEA: u32 = 17;
    pub const CHAR: u32 = 18;
    pub const NAME: u32 = 19;
    pub const INT8: u32 = 20;
    pub const INT2: u32 = 21;
    pub const INT4: u32 = 23;
    pub const TEXT: u32 = 25;
    pub const OID: u32 = 26;
    pub const JSON: u32 = 114;
    pub const CIDR: u32 = 650;
    pub const FLOAT4: u32 = 700;
    pub const FLOAT8: u32 = 701;
    pub const MACADDR8: u32 = 774;
    pub const MONEY: u32 = 790;
    pub const MACADDR: u32 = 829;
    pub const INET: u32 = 869;
    pub const BPCHAR: u32 = 1042;
    pub const VARCHAR: u32 = 1043;
    pub const DATE: u32 = 1082;
    pub const TIME: u32 = 1083;
    pub const TIMESTAMP: u32 = 1114;
    pub const TIMESTAMPTZ: u32 = 1184;
    pub const INTERVAL: u32 = 1186;
    pub const TIMETZ: u32 = 1266;
    pub const BIT: u32 = 1560;
    pub const VARBIT: u32 = 1562;
    pub const NUMERIC: u32 = 1700;
    pub const UUID: u32 = 2950;
    pub const JSONB: u32 = 3802;
}

/// How a column's values are represented: the row of the mapping table a type falls in.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum PgKind {
    /// `bool`
    Bool,
    /// `int2`
    Int2,
    /// `int4`
    Int4,
    /// `int8`
    Int8,
    /// `oid`
    Oid,
    /// `float4`
    Float4,
    /// `float8`
    Float8,
    /// `money`, as its raw 64-bit count of the currency's smallest unit
    Money,
    /// `numeric(p, s)` that fits `Decimal128(p, s)`
    Decimal {
        /// Declared precision, 1 to 38.
        precision: u8,
        /// Declared scale, at most `precision` (PostgreSQL 15 allows negative scales).
        scale: i8,
    },
    /// Any other `numeric`, or every `numeric` with `numeric-as-string`: its exact text.
    NumericText,
    /// `text`, `varchar`, `bpchar`: the varlena's bytes
    Text,
    /// `name`
    Name,
    /// `bytea`
    Bytea,
    /// `date`
    Date,
    /// `time`
    Time,
    /// `timetz`
    TimeTz,
    /// `timestamp`
    Timestamp,
    /// `timestamptz`
    Timestamptz,
    /// `interval`
    Interval,
    /// `uuid`
    Uuid,
    /// `json`: the stored text
    Json,
    /// `jsonb`: its text form
    Jsonb,
    /// Types whose text *is* their natural value (`"char"`, network addresses, bit strings,
    /// enum labels): their output function's text, as plain `Utf8`.
    OutputText,
    /// An array: `dims` nested `List`s of the element's kind.
    Array {
        /// The element type's kind.
        element: Box<PgKind>,
        /// The element type's name, for the item field's metadata.
        element_type: String,
        /// Nesting depth: the column's declared dimensions (at least 1).
        dims: u8,
    },
    /// Anything else: its output function's text, tagged `arrow.opaque`.
    Opaque,
}

/// Whether a type is an enum, a base type, … (`pg_type.typtype`), for [`PgKind::resolve`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TypeClass {
    /// A base type (`b`), domains already resolved to theirs.
    Base,
    /// An enum (`e`).
    Enum,
    /// Anything else: composite, range, multirange, pseudo-type.
    Other,
}

/// The precision and scale of a `numeric` type modifier, if it has one.
pub fn numeric_typmod(typmod: i32) -> Option<(i32, i32)> {
    // typmod = ((precision << 16) | (scale & 0x7ff)) + VARHDRSZ; the scale is an 11-bit
    // two's complement number since PostgreSQL 15 allows negative scales.
    if typmod < 4 {
        return None;
    }
    let t = typmod - 4;
    Some(((t >> 16) & 0xffff, ((t & 0x7ff) ^ 1024) - 1024))
}

impl PgKind {
    /// The kind of a scalar type: `type_oid` is the base type (domains resolved), `typmod`
    /// its modifier (the domain's when the column has none).
    pub fn resolve(
        type_oid: u32,
        typmod: i32,
        class: TypeClass,
        numeric_as_string: bool,
    ) -> PgKind {
        if class == TypeClass::Enum {
            return PgKind::OutputText;
        }
        if class == TypeClass::Other {
            return PgKind::Opaque;
        }
        match type_oid {
            oid::BOOL => PgKind::Bool,
            oid::INT2 => PgKind::Int2,
            oid::INT4 => PgKind::Int4,
            oid::INT8 => PgKind::Int8,
            oid::OID => PgKind::Oid,
            oid::FLOAT4 => PgKind::Float4,
            oid::FLOAT8 => PgKind::Float8,
            oid::MONEY => PgKind::Money,
            oid::NUMERIC if numeric_as_string => PgKind::NumericText,
            oid::NUMERIC => match numeric_typmod(typmod) {
                Some((p, s)) if (1..=38).contains(&p) && (-38..=p).contains(&s) => {
                    PgKind::Decimal { precision: p as u8, scale: s as i8 }
                }
                _ => PgKind::NumericText,
            },
            oid::TEXT | oid::VARCHAR | oid::BPCHAR => PgKind::Text,
            oid::NAME => PgKind::Name,
            oid::BYTEA => PgKind::Bytea,
            oid::DATE => PgKind::Date,
            oid::TIME => PgKind::Time,
            oid::TIMETZ => PgKind::TimeTz,
            oid::TIMESTAMP => PgKind::Timestamp,
            oid::TIMESTAMPTZ => PgKind::Timestamptz,
            oid::INTERVAL => PgKind::Interval,
            oid::UUID => PgKind::Uuid,
            oid::JSON => PgKind::Json,
            oid::JSONB => PgKind::Jsonb,
            oid::CHAR
            | oid::INET
            | oid::CIDR
            | oid::MACADDR
            | oid::MACADDR8
            | oid::BIT
            | oid::VARBIT => PgKind::OutputText,
            _ => PgKind::Opaque,
        }
    }

    /// The kind of an array of `element` (named `element_type`) declared with `ndims`
    /// dimensions (`attndims`; 0, as for columns made by `CREATE TABLE AS`, counts as 1).
    pub fn array(element: PgKind, element_type: impl Into<String>, ndims: i32) -> PgKind {
        PgKind::Array {
            element: Box::new(element),
            element_type: element_type.into(),
            dims: ndims.clamp(1, 6) as u8,
        }
    }

    /// The kind of a built-in type from its OID alone: how the type mapping reads without
    /// catalog access (arrays, enums and typmods need [`resolve`](Self::resolve)).
    pub fn from_type_oid(type_oid: u32) -> PgKind {
        PgKind::resolve(type_oid, -1, TypeClass::Base, false)
    }

    /// The Arrow type of columns of this kind.
    pub fn arrow_type(&self) -> DataType {
        match self {
            PgKind::Bool => DataType::Boolean,
            PgKind::Int2 => DataType::Int16,
            PgKind::Int4 => DataType::Int32,
            PgKind::Int8 | PgKind::Money => DataType::Int64,
            PgKind::Oid => DataType::UInt32,
            PgKind::Float4 => DataType::Float32,
            PgKind::Float8 => DataType::Float64,
            PgKind::Decimal { precision, scale } => DataType::Decimal128(*precision, *scale),
            PgKind::NumericText
            | PgKind::Text
            | PgKind::Name
            | PgKind::Json
            | PgKind::Jsonb
            | PgKind::OutputText
            | PgKind::Opaque => DataType::Utf8,
            PgKind::Bytea => DataType::Binary,
            PgKind::Date => DataType::Date32,
            PgKind::Time => DataType::Time64(TimeUnit::Microsecond),
            PgKind::TimeTz => DataType::Struct(timetz_fields()),
            PgKind::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, None),
            PgKind::Timestamptz => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            PgKind::Interval => DataType::Interval(IntervalUnit::MonthDayNano),
            PgKind::Uuid => DataType::FixedSizeBinary(16),
            PgKind::Array { .. } => DataType::List(Arc::new(self.item_field().expect("an array"))),
        }
    }

    /// Arrow extension metadata for values of this kind, if any.
    fn extension(&self, type_name: &str) -> Vec<(String, String)> {
        let ext = |name: &str| vec![(meta::EXTENSION_NAME.to_owned(), name.to_owned())];
        match self {
            // The canonical UUID extension has no parameters: its metadata is the empty string
            // (as Arrow C++ writes it).
            PgKind::Uuid => {
                let mut e = ext("arrow.uuid");
                e.push((meta::EXTENSION_METADATA.to_owned(), String::new()));
                e
            }
            PgKind::Json | PgKind::Jsonb => {
                let mut e = ext("arrow.json");
                e.push((meta::EXTENSION_METADATA.to_owned(), "{}".to_owned()));
                e
            }
            PgKind::Opaque => {
                let mut e = ext(meta::OPAQUE_EXTENSION);
                e.push((
                    meta::EXTENSION_METADATA.to_owned(),
                    format!(
                        r#"{{"type_name":{},"vendor_name":"PostgreSQL"}}"#,
                        json_string(type_name)
                    ),
                ));
                e
            }
            _ => Vec::new(),
        }
    }

    /// For an array, the kind of its items: one dimension fewer, or the element at the last.
    pub fn item_kind(&self) -> Option<PgKind> {
        let PgKind::Array { element, element_type, dims } = self else { return None };
        Some(if *dims > 1 {
            PgKind::Array {
                element: element.clone(),
                element_type: element_type.clone(),
                dims: dims - 1,
            }
        } else {
            (**element).clone()
        })
    }

    /// For an array, the field of its items (one level down).
    fn item_field(&self) -> Option<Field> {
        let inner = self.item_kind()?;
        let PgKind::Array { element, element_type, dims } = self else { return None };
        let mut md: HashMap<String, String> = HashMap::new();
        if *dims == 1 {
            md.insert(meta::PG_TYPNAME.to_owned(), element_type.clone());
            md.extend(element.extension(element_type));
        }
        Some(Field::new("item", inner.arrow_type(), true).with_metadata(md))
    }
}

/// The fields of a `timetz` struct.
pub fn timetz_fields() -> Fields {
    Fields::from(vec![
        Field::new("time", DataType::Time64(TimeUnit::Microsecond), false),
        Field::new("offset_seconds", DataType::Int32, false),
    ])
}

/// One column of a table, as the plugin describes it in a schema message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ColumnDesc {
    /// Column name (`attname`).
    pub name: String,
    /// Type OID (`atttypid`).
    pub type_oid: u32,
    /// Type modifier (`atttypmod`), `-1` when none.
    pub typmod: i32,
    /// Type name (`pg_type.typname`).
    pub type_name: String,
    /// Declared `NOT NULL`.
    pub not_null: bool,
    /// A stored generated column (`GENERATED ALWAYS AS (…) STORED`): its value is computed by
    /// the server, and a replica that applies changes must not write it.
    pub generated: bool,
    /// How values are represented.
    pub kind: PgKind,
}

impl ColumnDesc {
    /// The Arrow field for this column, with its PostgreSQL type in the metadata.
    ///
    /// Every table column is nullable in Arrow, even when declared `NOT NULL`: old-key images
    /// leave non-key columns empty. The declaration is kept in [`meta::PG_NOT_NULL`].
    pub fn arrow_field(&self) -> Field {
        let mut md = HashMap::from([
            (meta::PG_TYPNAME.to_owned(), self.type_name.clone()),
            (meta::PG_TYPOID.to_owned(), self.type_oid.to_string()),
            (meta::PG_TYPMOD.to_owned(), self.typmod.to_string()),
        ]);
        if self.not_null {
            md.insert(meta::PG_NOT_NULL.to_owned(), "true".to_owned());
        }
        if self.generated {
            md.insert(meta::PG_GENERATED.to_owned(), "stored".to_owned());
        }
        md.extend(self.kind.extension(&self.type_name));
        Field::new(&self.name, self.kind.arrow_type(), true).with_metadata(md)
    }
}

/// `s` as a JSON string literal (quoted, with `"`, `\\` and control characters escaped).
pub fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Days from 1970-01-01 (Arrow) to 2000-01-01 (PostgreSQL).
pub const PG_EPOCH_DAYS: i32 = 10_957;
/// Microseconds from 1970-01-01 (Arrow) to 2000-01-01 (PostgreSQL).
pub const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// Days since 1970-01-01 of a proleptic Gregorian date with astronomical `year` (1 BC is 0;
/// Howard Hinnant's `days_from_civil`). |year| up to 10⁷ cannot overflow.
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (i64::from(month) + 9) % 12; // March is 0
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The proleptic Gregorian date (astronomical year, month, day) `days` after 1970-01-01: the
/// inverse of [`days_from_civil`] (Howard Hinnant's `civil_from_days`).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

/// Microseconds in a day: PostgreSQL's `time` goes up to `24:00:00` inclusive, Arrow's
/// `Time64` stops just before it.
pub const MICROS_PER_DAY: i64 = 86_400_000_000;

/// A PostgreSQL `time` (µs since midnight) as Arrow `Time64(µs)`: `None` for `24:00:00`,
/// which PostgreSQL accepts and Arrow does not (a `Time64` lies in `[0, 24h)`): the value is
/// then NULL and listed in `_unrepresentable`.
pub fn time_to_arrow(pg_micros: i64) -> Option<i64> {
    (0..MICROS_PER_DAY).contains(&pg_micros).then_some(pg_micros)
}

/// A PostgreSQL `date` (days since 2000-01-01) as Arrow `Date32` (days since 1970-01-01).
///
/// `infinity` and `-infinity` (PostgreSQL's `i32::MAX` and `i32::MIN`) stay the extremes.
pub fn date_to_arrow(pg_days: i32) -> i32 {
    match pg_days {
        i32::MIN | i32::MAX => pg_days,
        // PostgreSQL's last date, 5874897-12-31, is 2_145_031_948 days after 2000-01-01:
        // adding the epoch offset cannot reach i32::MAX.
        d => d.saturating_add(PG_EPOCH_DAYS),
    }
}

/// A PostgreSQL `timestamp`/`timestamptz` (µs since 2000-01-01) as Arrow microseconds since
/// 1970-01-01.
///
/// `infinity` and `-infinity` (`i64::MAX` and `i64::MIN`) stay the extremes. Timestamps after
/// 294247-01-10 (the last Arrow can hold) saturate to `i64::MAX`.
pub fn timestamp_to_arrow(pg_micros: i64) -> i64 {
    match pg_micros {
        i64::MIN | i64::MAX => pg_micros,
        t => t.saturating_add(PG_EPOCH_MICROS),
    }
}

/// A PostgreSQL `interval` as Arrow's (months, days, nanoseconds).
///
/// The time part is converted from microseconds to nanoseconds; beyond ±106,751 days of
/// hours (2⁶³ ns) it saturates.
pub fn interval_to_arrow(months: i32, days: i32, micros: i64) -> (i32, i32, i64) {
    (months, days, micros.saturating_mul(1000))
}

/// The list shape (items per level, outermost first) for a PostgreSQL array of dimensions
/// `dims` in a column of `depth` nested lists.
///
/// PostgreSQL does not enforce an array column's declared dimensions: extra inner dimensions
/// fold into the deepest level, missing outer ones become single-item lists. An empty array
/// (no dimensions) is one empty list.
pub fn array_shape(dims: &[usize], depth: usize) -> Vec<usize> {
    let depth = depth.max(1);
    if dims.is_empty() {
        return vec![0];
    }
    if dims.len() >= depth {
        let mut shape = dims[..depth - 1].to_vec();
        shape.push(dims[depth - 1..].iter().product());
        shape
    } else {
        let mut shape = vec![1; depth - dims.len()];
        shape.extend_from_slice(dims);
        shape
    }
}

/// A PostgreSQL `timetz` zone (seconds *west* of UTC) as an ISO offset (seconds east).
pub fn timetz_offset(pg_zone: i32) -> i32 {
    -pg_zone
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_in_the_table_maps_to_its_arrow_type() {
        let micros = DataType::Timestamp(TimeUnit::Microsecond, None);
        let table = [
            (oid::BOOL, DataType::Boolean),
            (oid::INT2, DataType::Int16),
            (oid::INT4, DataType::Int32),
            (oid::INT8, DataType::Int64),
            (oid::OID, DataType::UInt32),
            (oid::FLOAT4, DataType::Float32),
            (oid::FLOAT8, DataType::Float64),
            (oid::MONEY, DataType::Int64),
            (oid::NUMERIC, DataType::Utf8),
            (oid::TEXT, DataType::Utf8),
            (oid::VARCHAR, DataType::Utf8),
            (oid::BPCHAR, DataType::Utf8),
            (oid::NAME, DataType::Utf8),
            (oid::CHAR, DataType::Utf8),
            (oid::BYTEA, DataType::Binary),
            (oid::DATE, DataType::Date32),
            (oid::TIME, DataType::Time64(TimeUnit::Microsecond)),
            (oid::TIMETZ, DataType::Struct(timetz_fields())),
            (oid::TIMESTAMP, micros),
            (oid::TIMESTAMPTZ, DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))),
            (oid::INTERVAL, DataType::Interval(IntervalUnit::MonthDayNano)),
            (oid::UUID, DataType::FixedSizeBinary(16)),
            (oid::JSON, DataType::Utf8),
            (oid::JSONB, DataType::Utf8),
            (oid::INET, DataType::Utf8),
            (oid::CIDR, DataType::Utf8),
            (oid::MACADDR, DataType::Utf8),
            (oid::MACADDR8, DataType::Utf8),
            (oid::BIT, DataType::Utf8),
            (oid::VARBIT, DataType::Utf8),
        ];
        for (oid, dt) in table {
            assert_eq!(PgKind::from_type_oid(oid).arrow_type(), dt, "oid {oid}");
        }
        // point (600): no native mapping
        assert_eq!(PgKind::from_type_oid(600), PgKind::Opaque);
        assert_eq!(PgKind::resolve(600, -1, TypeClass::Enum, false), PgKind::OutputText);
        assert_eq!(PgKind::resolve(oid::INT4, -1, TypeClass::Other, false), PgKind::Opaque);
    }

    #[test]
    fn numeric_maps_to_decimal_only_when_declared_to_fit() {
        let typmod = |p: i32, s: i32| ((p << 16) | (s & 0x7ff)) + 4;
        assert_eq!(numeric_typmod(typmod(12, 2)), Some((12, 2)));
        assert_eq!(numeric_typmod(typmod(5, -3)), Some((5, -3)));
        assert_eq!(numeric_typmod(-1), None);
        let k = |m: i32| PgKind::resolve(oid::NUMERIC, m, TypeClass::Base, false);
        assert_eq!(k(typmod(12, 2)).arrow_type(), DataType::Decimal128(12, 2));
        assert_eq!(k(typmod(38, 0)).arrow_type(), DataType::Decimal128(38, 0));
        assert_eq!(k(typmod(5, -3)).arrow_type(), DataType::Decimal128(5, -3));
        assert_eq!(k(typmod(39, 2)), PgKind::NumericText);
        assert_eq!(k(typmod(3, 5)), PgKind::NumericText, "scale above precision");
        assert_eq!(k(-1), PgKind::NumericText);
        assert_eq!(
            PgKind::resolve(oid::NUMERIC, typmod(12, 2), TypeClass::Base, true),
            PgKind::NumericText
        );
    }

    #[test]
    fn arrays_nest_one_list_per_dimension_with_the_element_described_on_the_item() {
        let k = PgKind::array(PgKind::Uuid, "uuid", 2);
        let DataType::List(outer) = k.arrow_type() else { panic!() };
        let DataType::List(inner) = outer.data_type() else { panic!() };
        assert_eq!(inner.data_type(), &DataType::FixedSizeBinary(16));
        assert_eq!(inner.metadata()[meta::EXTENSION_NAME], "arrow.uuid");
        assert_eq!(inner.metadata()[meta::PG_TYPNAME], "uuid");
        assert!(outer.metadata().is_empty());
        assert_eq!(PgKind::array(PgKind::Int4, "int4", 0), PgKind::array(PgKind::Int4, "int4", 1));
    }

    #[test]
    fn extension_types_follow_the_arrow_canonical_names() {
        let col = |kind: PgKind, name: &str| ColumnDesc {
            name: "c".into(),
            type_oid: 1,
            typmod: -1,
            type_name: name.into(),
            not_null: true,
            generated: false,
            kind,
        };
        let f = col(PgKind::Opaque, "po\"int").arrow_field();
        assert_eq!(f.data_type(), &DataType::Utf8);
        assert!(f.is_nullable());
        let md = f.metadata();
        assert_eq!(md[meta::EXTENSION_NAME], "arrow.opaque");
        assert_eq!(
            md[meta::EXTENSION_METADATA],
            r#"{"type_name":"po\"int","vendor_name":"PostgreSQL"}"#
        );
        assert_eq!(md[meta::PG_TYPNAME], "po\"int");
        assert_eq!(md[meta::PG_NOT_NULL], "true");
        assert_eq!(
            col(PgKind::Uuid, "uuid").arrow_field().metadata()[meta::EXTENSION_NAME],
            "arrow.uuid"
        );
        assert_eq!(
            col(PgKind::Jsonb, "jsonb").arrow_field().metadata()[meta::EXTENSION_NAME],
            "arrow.json"
        );
        assert!(
            !col(PgKind::OutputText, "inet")
                .arrow_field()
                .metadata()
                .contains_key(meta::EXTENSION_NAME)
        );
    }

    #[test]
    fn arrays_are_reshaped_to_the_declared_depth() {
        assert_eq!(array_shape(&[], 1), [0]);
        assert_eq!(array_shape(&[], 2), [0]);
        assert_eq!(array_shape(&[3], 1), [3]);
        assert_eq!(array_shape(&[2, 3], 2), [2, 3]);
        assert_eq!(array_shape(&[2, 3], 1), [6]);
        assert_eq!(array_shape(&[2, 3, 4], 2), [2, 12]);
        assert_eq!(array_shape(&[3], 2), [1, 3]);
    }

    #[test]
    fn temporal_values_shift_epoch_and_keep_infinities() {
        assert_eq!(date_to_arrow(0), 10_957); // 2000-01-01
        assert_eq!(date_to_arrow(-10_957), 0); // 1970-01-01
        assert_eq!(date_to_arrow(i32::MAX), i32::MAX);
        assert_eq!(date_to_arrow(i32::MIN), i32::MIN);
        assert_eq!(timestamp_to_arrow(0), PG_EPOCH_MICROS);
        assert_eq!(timestamp_to_arrow(i64::MAX), i64::MAX);
        assert_eq!(timestamp_to_arrow(i64::MIN), i64::MIN);
        assert_eq!(timestamp_to_arrow(i64::MAX - 1), i64::MAX);
        assert_eq!(interval_to_arrow(1, 2, 3), (1, 2, 3000));
        assert_eq!(interval_to_arrow(0, 0, i64::MAX / 10).2, i64::MAX);
        assert_eq!(timetz_offset(-7200), 7200, "+02 is stored as 7200 s west negated");
    }
}
