//! The PostgreSQL → Arrow type mapping: one table, used by the plugin to build columns and by
//! the consumer to describe them.
//!
//! | PostgreSQL | Arrow | notes |
//! |---|---|---|
//! | `bool` | `Boolean` | |
//! | `int2` | `Int16` | |
//! | `int4` | `Int32` | |
//! | `int8` | `Int64` | |
//! | `float4` | `Float32` | |
//! | `float8` | `Float64` | |
//! | `text`, `varchar`, `bpchar` | `Utf8` | `bpchar` keeps its blank padding, as `SELECT` shows it |
//! | `bytea` | `Binary` | |
//! | `date` | `Date32` | `±infinity` → `i32::MAX` / `i32::MIN` |
//! | `timestamp` | `Timestamp(µs)` | `±infinity` → `i64::MAX` / `i64::MIN` |
//! | `timestamptz` | `Timestamp(µs, "UTC")` | `±infinity` → `i64::MAX` / `i64::MIN` |
//! | anything else | `Utf8` (`arrow.opaque`) | the type's output function text |
//!
//! PostgreSQL counts dates and timestamps from 2000-01-01; Arrow from 1970-01-01. The
//! conversions here shift by the fixed offset and keep PostgreSQL's infinity sentinels as the
//! extreme values of the Arrow type.

use std::collections::HashMap;

use arrow_schema::{DataType, Field, TimeUnit};

use crate::meta;

/// OIDs of the built-in types wal2arrow maps natively. Built-in OIDs are fixed in PostgreSQL's
/// catalog (`pg_type.dat`) and identical in every release.
pub mod oid {
    /// `bool`
    pub const BOOL: u32 = 16;
    /// `bytea`
    pub const BYTEA: u32 = 17;
    /// `int8`
    pub const INT8: u32 = 20;
    /// `int2`
    pub const INT2: u32 = 21;
    /// `int4`
    pub const INT4: u32 = 23;
    /// `text`
    pub const TEXT: u32 = 25;
    /// `float4`
    pub const FLOAT4: u32 = 700;
    /// `float8`
    pub const FLOAT8: u32 = 701;
    /// `bpchar` (`char(n)`)
    pub const BPCHAR: u32 = 1042;
    /// `varchar`
    pub const VARCHAR: u32 = 1043;
    /// `date`
    pub const DATE: u32 = 1082;
    /// `timestamp`
    pub const TIMESTAMP: u32 = 1114;
    /// `timestamptz`
    pub const TIMESTAMPTZ: u32 = 1184;
}

/// How a column's values are represented: the row of the mapping table a PostgreSQL type
/// falls in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PgKind {
    /// `bool` → `Boolean`
    Bool,
    /// `int2` → `Int16`
    Int2,
    /// `int4` → `Int32`
    Int4,
    /// `int8` → `Int64`
    Int8,
    /// `float4` → `Float32`
    Float4,
    /// `float8` → `Float64`
    Float8,
    /// `text`, `varchar`, `bpchar` → `Utf8`, from the varlena bytes
    Text,
    /// `bytea` → `Binary`
    Bytea,
    /// `date` → `Date32`
    Date,
    /// `timestamp` → `Timestamp(µs)`
    Timestamp,
    /// `timestamptz` → `Timestamp(µs, "UTC")`
    Timestamptz,
    /// Any other type → `Utf8` holding the type's output-function text, tagged `arrow.opaque`.
    Opaque,
}

impl PgKind {
    /// The kind for a column of type `type_oid` (after resolving domains to their base type).
    pub fn from_type_oid(type_oid: u32) -> PgKind {
        match type_oid {
            oid::BOOL => PgKind::Bool,
            oid::INT2 => PgKind::Int2,
            oid::INT4 => PgKind::Int4,
            oid::INT8 => PgKind::Int8,
            oid::FLOAT4 => PgKind::Float4,
            oid::FLOAT8 => PgKind::Float8,
            oid::TEXT | oid::VARCHAR | oid::BPCHAR => PgKind::Text,
            oid::BYTEA => PgKind::Bytea,
            oid::DATE => PgKind::Date,
            oid::TIMESTAMP => PgKind::Timestamp,
            oid::TIMESTAMPTZ => PgKind::Timestamptz,
            _ => PgKind::Opaque,
        }
    }

    /// The Arrow type of columns of this kind.
    pub fn arrow_type(self) -> DataType {
        match self {
            PgKind::Bool => DataType::Boolean,
            PgKind::Int2 => DataType::Int16,
            PgKind::Int4 => DataType::Int32,
            PgKind::Int8 => DataType::Int64,
            PgKind::Float4 => DataType::Float32,
            PgKind::Float8 => DataType::Float64,
            PgKind::Text | PgKind::Opaque => DataType::Utf8,
            PgKind::Bytea => DataType::Binary,
            PgKind::Date => DataType::Date32,
            PgKind::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, None),
            PgKind::Timestamptz => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        }
    }
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
    /// How values are represented.
    pub kind: PgKind,
}

impl ColumnDesc {
    /// The Arrow field for this column, with its PostgreSQL type in the metadata.
    ///
    /// Every table column is nullable in Arrow, even when declared `NOT NULL`: the declaration
    /// is kept in the [`meta::PG_NOT_NULL`] metadata key.
    pub fn arrow_field(&self) -> Field {
        let mut md = HashMap::from([
            (meta::PG_TYPNAME.to_owned(), self.type_name.clone()),
            (meta::PG_TYPOID.to_owned(), self.type_oid.to_string()),
            (meta::PG_TYPMOD.to_owned(), self.typmod.to_string()),
        ]);
        if self.not_null {
            md.insert(meta::PG_NOT_NULL.to_owned(), "true".to_owned());
        }
        if self.kind == PgKind::Opaque {
            md.insert(meta::EXTENSION_NAME.to_owned(), meta::OPAQUE_EXTENSION.to_owned());
            md.insert(
                meta::EXTENSION_METADATA.to_owned(),
                format!(
                    r#"{{"type_name":{},"vendor_name":"PostgreSQL"}}"#,
                    json_string(&self.type_name)
                ),
            );
        }
        Field::new(&self.name, self.kind.arrow_type(), true).with_metadata(md)
    }
}

/// `s` as a JSON string literal.
fn json_string(s: &str) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_in_the_table_maps_to_its_arrow_type() {
        let table = [
            (oid::BOOL, DataType::Boolean),
            (oid::INT2, DataType::Int16),
            (oid::INT4, DataType::Int32),
            (oid::INT8, DataType::Int64),
            (oid::FLOAT4, DataType::Float32),
            (oid::FLOAT8, DataType::Float64),
            (oid::TEXT, DataType::Utf8),
            (oid::VARCHAR, DataType::Utf8),
            (oid::BPCHAR, DataType::Utf8),
            (oid::BYTEA, DataType::Binary),
            (oid::DATE, DataType::Date32),
            (oid::TIMESTAMP, DataType::Timestamp(TimeUnit::Microsecond, None)),
            (oid::TIMESTAMPTZ, DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))),
        ];
        for (oid, dt) in table {
            assert_eq!(PgKind::from_type_oid(oid).arrow_type(), dt, "oid {oid}");
        }
        // point (600): no native mapping
        assert_eq!(PgKind::from_type_oid(600), PgKind::Opaque);
    }

    #[test]
    fn opaque_columns_carry_the_arrow_opaque_extension() {
        let col = ColumnDesc {
            name: "p".into(),
            type_oid: 600,
            typmod: -1,
            type_name: "po\"int".into(),
            not_null: true,
            kind: PgKind::Opaque,
        };
        let f = col.arrow_field();
        assert_eq!(f.data_type(), &DataType::Utf8);
        assert!(f.is_nullable());
        let md = f.metadata();
        assert_eq!(md[meta::EXTENSION_NAME], "arrow.opaque");
        assert_eq!(
            md[meta::EXTENSION_METADATA],
            r#"{"type_name":"po\"int","vendor_name":"PostgreSQL"}"#
        );
        assert_eq!(md[meta::PG_TYPNAME], "po\"int");
        assert_eq!(md[meta::PG_TYPOID], "600");
        assert_eq!(md[meta::PG_NOT_NULL], "true");
    }

    #[test]
    fn dates_and_timestamps_shift_epoch_and_keep_infinities() {
        assert_eq!(date_to_arrow(0), 10_957); // 2000-01-01
        assert_eq!(date_to_arrow(-10_957), 0); // 1970-01-01
        assert_eq!(date_to_arrow(i32::MAX), i32::MAX);
        assert_eq!(date_to_arrow(i32::MIN), i32::MIN);
        assert_eq!(timestamp_to_arrow(0), PG_EPOCH_MICROS);
        assert_eq!(timestamp_to_arrow(i64::MAX), i64::MAX);
        assert_eq!(timestamp_to_arrow(i64::MIN), i64::MIN);
        assert_eq!(timestamp_to_arrow(i64::MAX - 1), i64::MAX);
    }
}
