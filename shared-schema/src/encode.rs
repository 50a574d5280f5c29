//! The encoding core: typed values in, wire messages out. It knows nothing of PostgreSQL's
//! memory or Datums — the plugin reads those and appends plain Rust values here — so it builds
//! and is tested without a server.
//!
//! A table's batches on the wire have its columns, then `_op` (`UInt8` change code),
//! `_lsn_delta` (`UInt32` offset of the row's LSN from the batch's base LSN; left out with
//! `include-lsn=false`) and — only in batches where some value is missing, flagged in the
//! header — `_missing`: per row a bitmap (bit *i* = column *i*, least significant bit first)
//! of the columns whose value the change does not carry, or NULL when it carries them all.

use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;

use arrow_array::builder::{
    ArrayBuilder, BinaryBuilder, BooleanBuilder, Date32Builder, Decimal128Builder,
    FixedSizeBinaryBuilder, Float32Builder, Float64Builder, Int16Builder, Int32Builder,
    Int64Builder, IntervalMonthDayNanoBuilder, StringBuilder, Time64MicrosecondBuilder,
    TimestampMicrosecondBuilder, UInt8Builder, UInt32Builder,
};
use arrow_array::types::IntervalMonthDayNano;
use arrow_array::{ArrayRef, ListArray, RecordBatch, StructArray};
use arrow_buffer::{NullBufferBuilder, OffsetBuffer, ScalarBuffer};
use arrow_ipc::MetadataVersion;
use arrow_ipc::writer::{
    DictionaryTracker, IpcDataGenerator, IpcWriteContext, IpcWriteOptions, write_message,
};
use arrow_schema::{ArrowError, DataType, Field, FieldRef, Schema, SchemaRef};

use crate::lsn::Lsn;
use crate::meta;
use crate::types::{ColumnDesc, PgKind, json_string, timetz_fields};
use crate::wire::{self, BATCH_HAS_MISSING, ChangeOp, IPC_ALIGNMENT, WIRE_VERSION};

/// `pg_class.relreplident`: what PostgreSQL logs of a row's old version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplicaIdentity {
    /// `DEFAULT`: the primary key's columns (nothing if there is no primary key).
    Default,
    /// `NOTHING`: nothing.
    Nothing,
    /// `FULL`: every column.
    Full,
    /// `USING INDEX`: the columns of that unique index.
    Index,
}

impl ReplicaIdentity {
    /// From `relreplident` (`d`, `n`, `f`, `i`).
    pub fn from_char(c: u8) -> ReplicaIdentity {
        match c {
            b'n' => ReplicaIdentity::Nothing,
            b'f' => ReplicaIdentity::Full,
            b'i' => ReplicaIdentity::Index,
            _ => ReplicaIdentity::Default,
        }
    }

    /// As written in `ALTER TABLE … REPLICA IDENTITY`, lower case.
    pub fn as_str(self) -> &'static str {
        match self {
            ReplicaIdentity::Default => "default",
            ReplicaIdentity::Nothing => "nothing",
            ReplicaIdentity::Full => "full",
            ReplicaIdentity::Index => "index",
        }
    }
}

/// A table as the plugin describes it: what a Schema message carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelationDesc {
    /// Relation OID.
    pub relid: u32,
    /// Schema (namespace) name.
    pub namespace: String,
    /// Table name.
    pub name: String,
    /// The table's live columns, in attribute order (dropped columns left out).
    pub columns: Vec<ColumnDesc>,
    /// The primary key's columns, in key order (empty without one).
    pub primary_key: Vec<String>,
    /// The table's replica identity.
    pub replica_identity: ReplicaIdentity,
    /// The columns old images carry: the replica identity's key, every column with `FULL`,
    /// none with `NOTHING`.
    pub identity_key: Vec<String>,
    /// Batches carry the per-row `_lsn_delta` column (`include-lsn`).
    pub with_lsn: bool,
}

impl RelationDesc {
    /// Width in bytes of a `_missing` bitmap.
    pub fn missing_width(&self) -> usize {
        self.columns.len().div_ceil(8).max(1)
    }

    /// The Arrow schema of this table's batches on the wire, `_missing` included (batches
    /// without missing values leave that last field out).
    pub fn wire_schema(&self) -> Schema {
        let mut fields: Vec<Field> = self.columns.iter().map(ColumnDesc::arrow_field).collect();
        fields.push(system_field(meta::OP_COLUMN, DataType::UInt8, false));
        if self.with_lsn {
            fields.push(system_field(meta::LSN_DELTA_COLUMN, DataType::UInt32, false));
        }
        fields.push(system_field(
            meta::MISSING_COLUMN,
            DataType::FixedSizeBinary(self.missing_width() as i32),
            true,
        ));
        let list = |names: &[String]| {
            format!("[{}]", names.iter().map(|n| json_string(n)).collect::<Vec<_>>().join(","))
        };
        let md = HashMap::from([
            (meta::SCHEMA_NAME.to_owned(), self.namespace.clone()),
            (meta::TABLE_NAME.to_owned(), self.name.clone()),
            (meta::RELATION_OID.to_owned(), self.relid.to_string()),
            (meta::WIRE_VERSION.to_owned(), WIRE_VERSION.to_string()),
            (meta::PRIMARY_KEY.to_owned(), list(&self.primary_key)),
            (meta::REPLICA_IDENTITY.to_owned(), self.replica_identity.as_str().to_owned()),
            (meta::IDENTITY_KEY.to_owned(), list(&self.identity_key)),
        ]);
        Schema::new_with_metadata(fields, md)
    }
}

pub(crate) fn system_field(name: &str, dt: DataType, nullable: bool) -> Field {
    Field::new(name, dt, nullable)
        .with_metadata(HashMap::from([(meta::SYSTEM_COLUMN.to_owned(), "true".to_owned())]))
}

/// Encoding failed: a bug on the caller's side or in Arrow, never a property of the data.
#[derive(Debug)]
pub enum EncodeError {
    /// Arrow refused the batch (for example, columns of unequal length).
    Arrow(ArrowError),
    /// The output sink failed.
    Io(std::io::Error),
    /// A row's LSN does not fit the current batch: write the batch out first.
    LsnOutOfRange {
        /// The batch's base LSN.
        base: Lsn,
        /// The row's LSN.
        lsn: Lsn,
    },
}

impl std::fmt::Display for EncodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EncodeError::Arrow(e) => write!(f, "encoding an Arrow batch failed: {e}"),
            EncodeError::Io(e) => write!(f, "writing a wal2arrow message failed: {e}"),
            EncodeError::LsnOutOfRange { base, lsn } => {
                write!(f, "row LSN {lsn} does not fit a batch based at {base}")
            }
        }
    }
}

impl std::error::Error for EncodeError {}

impl From<ArrowError> for EncodeError {
    fn from(e: ArrowError) -> Self {
        match e {
            ArrowError::IoError(_, io) => EncodeError::Io(io),
            e => EncodeError::Arrow(e),
        }
    }
}

impl From<std::io::Error> for EncodeError {
    fn from(e: std::io::Error) -> Self {
        EncodeError::Io(e)
    }
}

fn ipc_options() -> IpcWriteOptions {
    IpcWriteOptions::try_new(IPC_ALIGNMENT, false, MetadataVersion::V5)
        .expect("16-byte alignment with metadata V5 is a valid IPC configuration")
}

/// Writes a Schema message for `desc`.
///
/// # Errors
///
/// Whatever `out` returns.
pub fn write_schema_message(out: &mut impl Write, desc: &RelationDesc) -> Result<(), EncodeError> {
    let schema = desc.wire_schema();
    let opts = ipc_options();
    let encoded = IpcDataGenerator::default().schema_to_bytes_with_dictionary_tracker(
        &schema,
        &mut DictionaryTracker::new(false),
        &opts,
    );
    wire::write_schema_header(out, desc.relid)?;
    write_message(out, encoded, &opts)?;
    Ok(())
}

/// The builder of a list column: offsets, validity, and the builder of its items.
#[derive(Debug)]
pub struct ListColumn {
    item: FieldRef,
    offsets: Vec<i32>,
    nulls: NullBufferBuilder,
    values: ColumnBuilder,
}

impl ListColumn {
    /// The builder of the items: append a list's items here, then [`close`](Self::close) it.
    pub fn values(&mut self) -> &mut ColumnBuilder {
        &mut self.values
    }

    /// Ends the list whose items were appended since the last call (or since the start).
    pub fn close(&mut self) {
        self.offsets.push(i32::try_from(self.values.len()).unwrap_or(i32::MAX));
        self.nulls.append_non_null();
    }

    fn append_null(&mut self) {
        self.offsets.push(*self.offsets.last().expect("offsets start with 0"));
        self.nulls.append_null();
    }

    fn finish(&mut self) -> ArrayRef {
        let offsets = std::mem::replace(&mut self.offsets, vec![0]);
        Arc::new(ListArray::new(
            Arc::clone(&self.item),
            OffsetBuffer::new(ScalarBuffer::from(offsets)),
            self.values.finish(),
            self.nulls.finish(),
        ))
    }
}

/// The builder of a `timetz` column: local time and UTC offset.
#[derive(Debug)]
pub struct TimeTzColumn {
    time: Time64MicrosecondBuilder,
    offset: Int32Builder,
    nulls: NullBufferBuilder,
}

impl TimeTzColumn {
    /// Appends a value: microseconds since midnight and the offset in seconds east of UTC.
    pub fn append_value(&mut self, time_us: i64, offset_seconds: i32) {
        self.time.append_value(time_us);
        self.offset.append_value(offset_seconds);
        self.nulls.append_non_null();
    }

    fn append_null(&mut self) {
        self.time.append_value(0);
        self.offset.append_value(0);
        self.nulls.append_null();
    }

    fn finish(&mut self) -> ArrayRef {
        Arc::new(StructArray::new(
            timetz_fields(),
            vec![Arc::new(self.time.finish()), Arc::new(self.offset.finish())],
            self.nulls.finish(),
        ))
    }
}

/// One column being built: an Arrow builder of the column's type.
///
/// The plugin matches on the variant to know which Rust value to read from a Datum.
#[derive(Debug)]
pub enum ColumnBuilder {
    /// [`PgKind::Bool`]
    Bool(BooleanBuilder),
    /// [`PgKind::Int2`]
    Int16(Int16Builder),
    /// [`PgKind::Int4`]
    Int32(Int32Builder),
    /// [`PgKind::Int8`], [`PgKind::Money`]
    Int64(Int64Builder),
    /// [`PgKind::Oid`]
    UInt32(UInt32Builder),
    /// [`PgKind::Float4`]
    Float32(Float32Builder),
    /// [`PgKind::Float8`]
    Float64(Float64Builder),
    /// [`PgKind::Decimal`]: the value times 10^scale
    Decimal128(Decimal128Builder),
    /// Every kind shown as text
    Utf8(StringBuilder),
    /// [`PgKind::Bytea`]
    Binary(BinaryBuilder),
    /// [`PgKind::Uuid`]: 16 bytes
    FixedSizeBinary(FixedSizeBinaryBuilder),
    /// [`PgKind::Date`]: days since 1970-01-01 (see [`crate::types::date_to_arrow`])
    Date32(Date32Builder),
    /// [`PgKind::Time`]: microseconds since midnight
    Time64(Time64MicrosecondBuilder),
    /// [`PgKind::Timestamp`] and [`PgKind::Timestamptz`]: µs since 1970-01-01 (see
    /// [`crate::types::timestamp_to_arrow`])
    Timestamp(TimestampMicrosecondBuilder),
    /// [`PgKind::Interval`] (see [`crate::types::interval_to_arrow`])
    Interval(IntervalMonthDayNanoBuilder),
    /// [`PgKind::TimeTz`]
    TimeTz(Box<TimeTzColumn>),
    /// [`PgKind::Array`]
    List(Box<ListColumn>),
}

impl ColumnBuilder {
    /// An empty builder for values of `kind`.
    pub fn for_kind(kind: &PgKind) -> ColumnBuilder {
        match kind {
            PgKind::Bool => ColumnBuilder::Bool(BooleanBuilder::new()),
            PgKind::Int2 => ColumnBuilder::Int16(Int16Builder::new()),
            PgKind::Int4 => ColumnBuilder::Int32(Int32Builder::new()),
            PgKind::Int8 | PgKind::Money => ColumnBuilder::Int64(Int64Builder::new()),
            PgKind::Oid => ColumnBuilder::UInt32(UInt32Builder::new()),
            PgKind::Float4 => ColumnBuilder::Float32(Float32Builder::new()),
            PgKind::Float8 => ColumnBuilder::Float64(Float64Builder::new()),
            PgKind::Decimal { precision, scale } => ColumnBuilder::Decimal128(
                Decimal128Builder::new()
                    .with_precision_and_scale(*precision, *scale)
                    .expect("PgKind::resolve only makes valid decimal types"),
            ),
            PgKind::NumericText
            | PgKind::Text
            | PgKind::Name
            | PgKind::Json
            | PgKind::Jsonb
            | PgKind::OutputText
            | PgKind::Opaque => ColumnBuilder::Utf8(StringBuilder::new()),
            PgKind::Bytea => ColumnBuilder::Binary(BinaryBuilder::new()),
            PgKind::Uuid => ColumnBuilder::FixedSizeBinary(FixedSizeBinaryBuilder::new(16)),
            PgKind::Date => ColumnBuilder::Date32(Date32Builder::new()),
            PgKind::Time => ColumnBuilder::Time64(Time64MicrosecondBuilder::new()),
            PgKind::Timestamp => ColumnBuilder::Timestamp(TimestampMicrosecondBuilder::new()),
            PgKind::Timestamptz => {
                ColumnBuilder::Timestamp(TimestampMicrosecondBuilder::new().with_timezone("UTC"))
            }
            PgKind::Interval => ColumnBuilder::Interval(IntervalMonthDayNanoBuilder::new()),
            PgKind::TimeTz => ColumnBuilder::TimeTz(Box::new(TimeTzColumn {
                time: Time64MicrosecondBuilder::new(),
                offset: Int32Builder::new(),
                nulls: NullBufferBuilder::new(0),
            })),
            PgKind::Array { .. } => {
                let DataType::List(item) = kind.arrow_type() else {
                    unreachable!("arrays are lists")
                };
                let inner = match kind {
                    PgKind::Array { element, element_type, dims } if *dims > 1 => PgKind::Array {
                        element: element.clone(),
                        element_type: element_type.clone(),
                        dims: dims - 1,
                    },
                    PgKind::Array { element, .. } => (**element).clone(),
                    _ => unreachable!(),
                };
                ColumnBuilder::List(Box::new(ListColumn {
                    item,
                    offsets: vec![0],
                    nulls: NullBufferBuilder::new(0),
                    values: ColumnBuilder::for_kind(&inner),
                }))
            }
        }
    }

    /// Appends a NULL.
    pub fn append_null(&mut self) {
        match self {
            ColumnBuilder::Bool(b) => b.append_null(),
            ColumnBuilder::Int16(b) => b.append_null(),
            ColumnBuilder::Int32(b) => b.append_null(),
            ColumnBuilder::Int64(b) => b.append_null(),
            ColumnBuilder::UInt32(b) => b.append_null(),
            ColumnBuilder::Float32(b) => b.append_null(),
            ColumnBuilder::Float64(b) => b.append_null(),
            ColumnBuilder::Decimal128(b) => b.append_null(),
            ColumnBuilder::Utf8(b) => b.append_null(),
            ColumnBuilder::Binary(b) => b.append_null(),
            ColumnBuilder::FixedSizeBinary(b) => b.append_null(),
            ColumnBuilder::Date32(b) => b.append_null(),
            ColumnBuilder::Time64(b) => b.append_null(),
            ColumnBuilder::Timestamp(b) => b.append_null(),
            ColumnBuilder::Interval(b) => b.append_null(),
            ColumnBuilder::TimeTz(b) => b.append_null(),
            ColumnBuilder::List(b) => b.append_null(),
        }
    }

    /// Appends an interval as PostgreSQL stores it (months, days, microseconds).
    pub fn append_interval(
        b: &mut IntervalMonthDayNanoBuilder,
        months: i32,
        days: i32,
        micros: i64,
    ) {
        let (m, d, ns) = crate::types::interval_to_arrow(months, days, micros);
        b.append_value(IntervalMonthDayNano::new(m, d, ns));
    }

    /// Values appended so far.
    pub fn len(&self) -> usize {
        match self {
            ColumnBuilder::Bool(b) => b.len(),
            ColumnBuilder::Int16(b) => b.len(),
            ColumnBuilder::Int32(b) => b.len(),
            ColumnBuilder::Int64(b) => b.len(),
            ColumnBuilder::UInt32(b) => b.len(),
            ColumnBuilder::Float32(b) => b.len(),
            ColumnBuilder::Float64(b) => b.len(),
            ColumnBuilder::Decimal128(b) => b.len(),
            ColumnBuilder::Utf8(b) => b.len(),
            ColumnBuilder::Binary(b) => b.len(),
            ColumnBuilder::FixedSizeBinary(b) => b.len(),
            ColumnBuilder::Date32(b) => b.len(),
            ColumnBuilder::Time64(b) => b.len(),
            ColumnBuilder::Timestamp(b) => b.len(),
            ColumnBuilder::Interval(b) => b.len(),
            ColumnBuilder::TimeTz(b) => b.time.len(),
            ColumnBuilder::List(b) => b.offsets.len() - 1,
        }
    }

    /// Whether nothing was appended.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// An estimate of the bytes the values take (for the batch size limit).
    fn approx_bytes(&self) -> usize {
        let n = self.len();
        match self {
            ColumnBuilder::Bool(_) => n / 8 + 1,
            ColumnBuilder::Int16(_) => 2 * n,
            ColumnBuilder::Int32(_) | ColumnBuilder::UInt32(_) | ColumnBuilder::Float32(_) => 4 * n,
            ColumnBuilder::Date32(_) => 4 * n,
            ColumnBuilder::Int64(_) | ColumnBuilder::Float64(_) | ColumnBuilder::Time64(_) => 8 * n,
            ColumnBuilder::Timestamp(_) => 8 * n,
            ColumnBuilder::Decimal128(_) | ColumnBuilder::FixedSizeBinary(_) => 16 * n,
            ColumnBuilder::Interval(_) | ColumnBuilder::TimeTz(_) => 16 * n,
            ColumnBuilder::Utf8(b) => 4 * n + b.values_slice().len(),
            ColumnBuilder::Binary(b) => 4 * n + b.values_slice().len(),
            ColumnBuilder::List(b) => 4 * n + b.values.approx_bytes(),
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            ColumnBuilder::Bool(b) => Arc::new(b.finish()),
            ColumnBuilder::Int16(b) => Arc::new(b.finish()),
            ColumnBuilder::Int32(b) => Arc::new(b.finish()),
            ColumnBuilder::Int64(b) => Arc::new(b.finish()),
            ColumnBuilder::UInt32(b) => Arc::new(b.finish()),
            ColumnBuilder::Float32(b) => Arc::new(b.finish()),
            ColumnBuilder::Float64(b) => Arc::new(b.finish()),
            ColumnBuilder::Decimal128(b) => Arc::new(b.finish()),
            ColumnBuilder::Utf8(b) => Arc::new(b.finish()),
            ColumnBuilder::Binary(b) => Arc::new(b.finish()),
            ColumnBuilder::FixedSizeBinary(b) => Arc::new(b.finish()),
            ColumnBuilder::Date32(b) => Arc::new(b.finish()),
            ColumnBuilder::Time64(b) => Arc::new(b.finish()),
            ColumnBuilder::Timestamp(b) => Arc::new(b.finish()),
            ColumnBuilder::Interval(b) => Arc::new(b.finish()),
            ColumnBuilder::TimeTz(b) => b.finish(),
            ColumnBuilder::List(b) => b.finish(),
        }
    }
}

/// Builds one table's batches: rows go in through [`start_row`](Self::start_row),
/// [`column`](Self::column) and [`mark_missing`](Self::mark_missing); Batch messages come out
/// of [`write_batch`](Self::write_batch).
#[derive(Debug)]
pub struct BatchEncoder {
    relid: u32,
    schema: SchemaRef,
    schema_without_missing: SchemaRef,
    columns: Vec<ColumnBuilder>,
    ops: UInt8Builder,
    lsn_deltas: Option<UInt32Builder>,
    base_lsn: Lsn,
    missing_width: usize,
    /// Rows with missing values: (row, bitmap), in row order.
    missing: Vec<(usize, Vec<u8>)>,
    ipc_options: IpcWriteOptions,
    ipc_context: IpcWriteContext,
}

impl BatchEncoder {
    /// An encoder for `desc`'s batches.
    pub fn new(desc: &RelationDesc) -> BatchEncoder {
        let schema = Arc::new(desc.wire_schema());
        let n = schema.fields().len();
        let schema_without_missing =
            Arc::new(schema.project(&(0..n - 1).collect::<Vec<_>>()).expect("in range"));
        BatchEncoder {
            relid: desc.relid,
            schema,
            schema_without_missing,
            columns: desc.columns.iter().map(|c| ColumnBuilder::for_kind(&c.kind)).collect(),
            ops: UInt8Builder::new(),
            lsn_deltas: desc.with_lsn.then(UInt32Builder::new),
            base_lsn: Lsn::INVALID,
            missing_width: desc.missing_width(),
            missing: Vec::new(),
            ipc_options: ipc_options(),
            ipc_context: IpcWriteContext::default(),
        }
    }

    /// The wire schema of this encoder's batches (with `_missing`).
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Rows in the batch being built.
    pub fn rows(&self) -> usize {
        self.ops.len()
    }

    /// An estimate of the batch's encoded size.
    pub fn approx_bytes(&self) -> usize {
        self.rows() * 5
            + self.missing.len() * self.missing_width
            + self.columns.iter().map(ColumnBuilder::approx_bytes).sum::<usize>()
    }

    /// Whether a row at `lsn` can join the current batch: row LSNs are stored as 32-bit offsets
    /// from the batch's first row, so a row more than 4 GiB of WAL later needs a new batch.
    pub fn accepts(&self, lsn: Lsn) -> bool {
        self.rows() == 0
            || self.lsn_deltas.is_none()
            || (lsn >= self.base_lsn && lsn.0 - self.base_lsn.0 <= u64::from(u32::MAX))
    }

    /// Starts a row: records its change kind and LSN. Append exactly one value (or NULL) to
    /// every [`column`](Self::column) next.
    ///
    /// # Errors
    ///
    /// [`EncodeError::LsnOutOfRange`] when [`accepts`](Self::accepts) is false.
    pub fn start_row(&mut self, op: ChangeOp, lsn: Lsn) -> Result<(), EncodeError> {
        if self.rows() == 0 {
            self.base_lsn = lsn;
        } else if !self.accepts(lsn) {
            return Err(EncodeError::LsnOutOfRange { base: self.base_lsn, lsn });
        }
        self.ops.append_value(op as u8);
        if let Some(d) = &mut self.lsn_deltas {
            d.append_value((lsn.0 - self.base_lsn.0) as u32);
        }
        Ok(())
    }

    /// Records that the current row does not carry column `i`'s value (append a NULL to the
    /// column as well).
    ///
    /// # Panics
    ///
    /// Before the first [`start_row`](Self::start_row), or when `i` is not a column index.
    pub fn mark_missing(&mut self, i: usize) {
        assert!(i < self.columns.len(), "column {i} of {}", self.columns.len());
        let row = self.rows().checked_sub(1).expect("mark_missing after start_row");
        if self.missing.last().is_none_or(|(r, _)| *r != row) {
            self.missing.push((row, vec![0; self.missing_width]));
        }
        let bitmap = &mut self.missing.last_mut().expect("pushed above").1;
        bitmap[i / 8] |= 1 << (i % 8);
    }

    /// The builder of column `i` (in the order of [`RelationDesc::columns`]).
    ///
    /// # Panics
    ///
    /// When `i` is not a column index of the table.
    pub fn column(&mut self, i: usize) -> &mut ColumnBuilder {
        &mut self.columns[i]
    }

    /// All column builders, in table order.
    pub fn columns_mut(&mut self) -> &mut [ColumnBuilder] {
        &mut self.columns
    }

    /// Finishes the rows built so far as one record batch in the wire schema (`_missing`
    /// included only when some value is missing) and starts an empty batch; `None` when there
    /// are no rows.
    ///
    /// The plugin writes the result with [`write_batch`](Self::write_batch); the consumer's
    /// wal2json fallback, which builds rows on the consumer's side, turns it into the user's
    /// batch with [`Relation::user_batch`](crate::Relation::user_batch).
    ///
    /// # Errors
    ///
    /// [`EncodeError::Arrow`] if the columns are not all as long as the row count (a caller
    /// bug). The batch is discarded either way.
    pub fn finish_batch(&mut self) -> Result<Option<WireBatch>, EncodeError> {
        let rows = self.rows();
        if rows == 0 {
            return Ok(None);
        }
        let mut arrays: Vec<ArrayRef> = Vec::with_capacity(self.columns.len() + 3);
        arrays.extend(self.columns.iter_mut().map(ColumnBuilder::finish));
        arrays.push(Arc::new(self.ops.finish()));
        if let Some(d) = &mut self.lsn_deltas {
            arrays.push(Arc::new(d.finish()));
        }
        let has_missing = !self.missing.is_empty();
        let schema = if has_missing {
            let mut b = FixedSizeBinaryBuilder::with_capacity(rows, self.missing_width as i32);
            let mut next = self.missing.drain(..).peekable();
            for row in 0..rows {
                match next.next_if(|(r, _)| *r == row) {
                    Some((_, bitmap)) => b.append_value(&bitmap)?,
                    None => b.append_null(),
                }
            }
            arrays.push(Arc::new(b.finish()));
            &self.schema
        } else {
            &self.schema_without_missing
        };
        let batch = RecordBatch::try_new(Arc::clone(schema), arrays)?;
        Ok(Some(WireBatch { batch, base_lsn: self.base_lsn, has_missing }))
    }

    /// Writes the rows built so far as one Batch message and starts an empty batch. Writes
    /// nothing when there are no rows.
    ///
    /// # Errors
    ///
    /// [`EncodeError::Arrow`] if the columns are not all as long as the row count (a caller
    /// bug), or whatever `out` returns. The batch is discarded either way.
    pub fn write_batch(&mut self, out: &mut impl Write) -> Result<usize, EncodeError> {
        let Some(WireBatch { batch, base_lsn, has_missing }) = self.finish_batch()? else {
            return Ok(0);
        };
        let (dictionaries, encoded) = IpcDataGenerator::default().encode(
            &batch,
            &mut DictionaryTracker::new(false),
            &self.ipc_options,
            &mut self.ipc_context,
        )?;
        debug_assert!(dictionaries.is_empty(), "wire schemas have no dictionary columns");
        let flags = if has_missing { BATCH_HAS_MISSING } else { 0 };
        wire::write_batch_header(out, self.relid, base_lsn, flags)?;
        write_message(out, encoded, &self.ipc_options)?;
        Ok(batch.num_rows())
    }
}

/// A finished batch in the wire schema, before IPC encoding (see
/// [`BatchEncoder::finish_batch`]).
#[derive(Clone, Debug)]
pub struct WireBatch {
    /// The rows: the table's columns, `_op`, `_lsn_delta` (with `include-lsn`) and, when
    /// `has_missing`, `_missing`.
    pub batch: RecordBatch,
    /// The first row's LSN, which `_lsn_delta` counts from.
    pub base_lsn: Lsn,
    /// Whether the batch has the `_missing` column.
    pub has_missing: bool,
}

/// The size at which a batch is written out even below `batch-rows`: one wal2arrow message
/// stays far below PostgreSQL's 1 GB limit on a single output write.
pub const MAX_BATCH_BYTES: usize = 16 << 20;
