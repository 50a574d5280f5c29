//! The encoding core: typed values in, wire messages out. It knows nothing of PostgreSQL's
//! memory or Datums — the plugin reads those and appends plain Rust values here — so it builds
//! and is tested without a server.

use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;

use arrow_array::builder::{
    ArrayBuilder, BinaryBuilder, BooleanBuilder, Date32Builder, Float32Builder, Float64Builder,
    Int16Builder, Int32Builder, Int64Builder, StringBuilder, TimestampMicrosecondBuilder,
    UInt8Builder, UInt32Builder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_ipc::MetadataVersion;
use arrow_ipc::writer::{
    DictionaryTracker, IpcDataGenerator, IpcWriteContext, IpcWriteOptions, write_message,
};
use arrow_schema::{ArrowError, DataType, Field, Schema, SchemaRef};

use crate::lsn::Lsn;
use crate::meta;
use crate::types::{ColumnDesc, PgKind};
use crate::wire::{self, ChangeOp, IPC_ALIGNMENT, WIRE_VERSION};

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
}

impl RelationDesc {
    /// The Arrow schema of this table's batches on the wire: the table's columns, then `_op`
    /// (`UInt8` change code) and `_lsn_delta` (`UInt32` offset from the batch's base LSN).
    pub fn wire_schema(&self) -> Schema {
        let mut fields: Vec<Field> = self.columns.iter().map(ColumnDesc::arrow_field).collect();
        fields.push(system_field(meta::OP_COLUMN, DataType::UInt8));
        fields.push(system_field(meta::LSN_DELTA_COLUMN, DataType::UInt32));
        let md = HashMap::from([
            (meta::SCHEMA_NAME.to_owned(), self.namespace.clone()),
            (meta::TABLE_NAME.to_owned(), self.name.clone()),
            (meta::RELATION_OID.to_owned(), self.relid.to_string()),
            (meta::WIRE_VERSION.to_owned(), WIRE_VERSION.to_string()),
        ]);
        Schema::new_with_metadata(fields, md)
    }
}

pub(crate) fn system_field(name: &str, dt: DataType) -> Field {
    Field::new(name, dt, false)
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
    /// [`PgKind::Int8`]
    Int64(Int64Builder),
    /// [`PgKind::Float4`]
    Float32(Float32Builder),
    /// [`PgKind::Float8`]
    Float64(Float64Builder),
    /// [`PgKind::Text`] and [`PgKind::Opaque`]
    Utf8(StringBuilder),
    /// [`PgKind::Bytea`]
    Binary(BinaryBuilder),
    /// [`PgKind::Date`]: days since 1970-01-01 (see [`crate::types::date_to_arrow`])
    Date32(Date32Builder),
    /// [`PgKind::Timestamp`] and [`PgKind::Timestamptz`]: µs since 1970-01-01 (see
    /// [`crate::types::timestamp_to_arrow`])
    Timestamp(TimestampMicrosecondBuilder),
}

impl ColumnBuilder {
    fn for_kind(kind: PgKind) -> ColumnBuilder {
        match kind {
            PgKind::Bool => ColumnBuilder::Bool(BooleanBuilder::new()),
            PgKind::Int2 => ColumnBuilder::Int16(Int16Builder::new()),
            PgKind::Int4 => ColumnBuilder::Int32(Int32Builder::new()),
            PgKind::Int8 => ColumnBuilder::Int64(Int64Builder::new()),
            PgKind::Float4 => ColumnBuilder::Float32(Float32Builder::new()),
            PgKind::Float8 => ColumnBuilder::Float64(Float64Builder::new()),
            PgKind::Text | PgKind::Opaque => ColumnBuilder::Utf8(StringBuilder::new()),
            PgKind::Bytea => ColumnBuilder::Binary(BinaryBuilder::new()),
            PgKind::Date => ColumnBuilder::Date32(Date32Builder::new()),
            PgKind::Timestamp => ColumnBuilder::Timestamp(TimestampMicrosecondBuilder::new()),
            PgKind::Timestamptz => {
                ColumnBuilder::Timestamp(TimestampMicrosecondBuilder::new().with_timezone("UTC"))
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
            ColumnBuilder::Float32(b) => b.append_null(),
            ColumnBuilder::Float64(b) => b.append_null(),
            ColumnBuilder::Utf8(b) => b.append_null(),
            ColumnBuilder::Binary(b) => b.append_null(),
            ColumnBuilder::Date32(b) => b.append_null(),
            ColumnBuilder::Timestamp(b) => b.append_null(),
        }
    }

    /// Values appended so far.
    pub fn len(&self) -> usize {
        match self {
            ColumnBuilder::Bool(b) => b.len(),
            ColumnBuilder::Int16(b) => b.len(),
            ColumnBuilder::Int32(b) => b.len(),
            ColumnBuilder::Int64(b) => b.len(),
            ColumnBuilder::Float32(b) => b.len(),
            ColumnBuilder::Float64(b) => b.len(),
            ColumnBuilder::Utf8(b) => b.len(),
            ColumnBuilder::Binary(b) => b.len(),
            ColumnBuilder::Date32(b) => b.len(),
            ColumnBuilder::Timestamp(b) => b.len(),
        }
    }

    /// Whether nothing was appended.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of variable-length data held (string and binary values).
    fn var_bytes(&self) -> usize {
        match self {
            ColumnBuilder::Utf8(b) => b.values_slice().len(),
            ColumnBuilder::Binary(b) => b.values_slice().len(),
            _ => 0,
        }
    }

    /// Fixed bytes per row (values plus offsets), for the batch size estimate.
    fn fixed_width(&self) -> usize {
        match self {
            ColumnBuilder::Bool(_) => 1,
            ColumnBuilder::Int16(_) => 2,
            ColumnBuilder::Int32(_) | ColumnBuilder::Float32(_) | ColumnBuilder::Date32(_) => 4,
            ColumnBuilder::Utf8(_) | ColumnBuilder::Binary(_) => 4,
            ColumnBuilder::Int64(_) | ColumnBuilder::Float64(_) | ColumnBuilder::Timestamp(_) => 8,
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            ColumnBuilder::Bool(b) => Arc::new(b.finish()),
            ColumnBuilder::Int16(b) => Arc::new(b.finish()),
            ColumnBuilder::Int32(b) => Arc::new(b.finish()),
            ColumnBuilder::Int64(b) => Arc::new(b.finish()),
            ColumnBuilder::Float32(b) => Arc::new(b.finish()),
            ColumnBuilder::Float64(b) => Arc::new(b.finish()),
            ColumnBuilder::Utf8(b) => Arc::new(b.finish()),
            ColumnBuilder::Binary(b) => Arc::new(b.finish()),
            ColumnBuilder::Date32(b) => Arc::new(b.finish()),
            ColumnBuilder::Timestamp(b) => Arc::new(b.finish()),
        }
    }
}

/// Builds one table's batches: rows go in through [`start_row`](Self::start_row) and
/// [`column`](Self::column), Batch messages come out of [`write_batch`](Self::write_batch).
#[derive(Debug)]
pub struct BatchEncoder {
    relid: u32,
    schema: SchemaRef,
    columns: Vec<ColumnBuilder>,
    ops: UInt8Builder,
    lsn_deltas: UInt32Builder,
    base_lsn: Lsn,
    fixed_row_bytes: usize,
    ipc_options: IpcWriteOptions,
    ipc_context: IpcWriteContext,
}

impl BatchEncoder {
    /// An encoder for `desc`'s batches.
    pub fn new(desc: &RelationDesc) -> BatchEncoder {
        let columns: Vec<ColumnBuilder> =
            desc.columns.iter().map(|c| ColumnBuilder::for_kind(c.kind)).collect();
        // 1 byte of _op, 4 of _lsn_delta, and one validity bit per column (rounded up).
        let fixed_row_bytes = columns.iter().map(ColumnBuilder::fixed_width).sum::<usize>()
            + 5
            + columns.len().div_ceil(8);
        BatchEncoder {
            relid: desc.relid,
            schema: Arc::new(desc.wire_schema()),
            columns,
            ops: UInt8Builder::new(),
            lsn_deltas: UInt32Builder::new(),
            base_lsn: Lsn::INVALID,
            fixed_row_bytes,
            ipc_options: ipc_options(),
            ipc_context: IpcWriteContext::default(),
        }
    }

    /// The wire schema of this encoder's batches.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Rows in the batch being built.
    pub fn rows(&self) -> usize {
        self.ops.len()
    }

    /// An estimate of the batch's encoded size.
    pub fn approx_bytes(&self) -> usize {
        self.rows() * self.fixed_row_bytes
            + self.columns.iter().map(ColumnBuilder::var_bytes).sum::<usize>()
    }

    /// Whether a row at `lsn` can join the current batch: row LSNs are stored as 32-bit offsets
    /// from the batch's first row, so a row more than 4 GiB of WAL later needs a new batch.
    pub fn accepts(&self, lsn: Lsn) -> bool {
        self.rows() == 0 || (lsn >= self.base_lsn && lsn.0 - self.base_lsn.0 <= u64::from(u32::MAX))
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
        self.lsn_deltas.append_value((lsn.0 - self.base_lsn.0) as u32);
        Ok(())
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

    /// Writes the rows built so far as one Batch message and starts an empty batch. Writes
    /// nothing when there are no rows.
    ///
    /// # Errors
    ///
    /// [`EncodeError::Arrow`] if the columns are not all as long as the row count (a caller
    /// bug), or whatever `out` returns. The batch is discarded either way.
    pub fn write_batch(&mut self, out: &mut impl Write) -> Result<usize, EncodeError> {
        let rows = self.rows();
        if rows == 0 {
            return Ok(0);
        }
        let mut arrays: Vec<ArrayRef> = Vec::with_capacity(self.columns.len() + 2);
        arrays.extend(self.columns.iter_mut().map(ColumnBuilder::finish));
        arrays.push(Arc::new(self.ops.finish()));
        arrays.push(Arc::new(self.lsn_deltas.finish()));
        let batch = RecordBatch::try_new(Arc::clone(&self.schema), arrays)?;
        let (dictionaries, encoded) = IpcDataGenerator::default().encode(
            &batch,
            &mut DictionaryTracker::new(false),
            &self.ipc_options,
            &mut self.ipc_context,
        )?;
        debug_assert!(dictionaries.is_empty(), "wire schemas have no dictionary columns");
        wire::write_batch_header(out, self.relid, self.base_lsn)?;
        write_message(out, encoded, &self.ipc_options)?;
        Ok(rows)
    }
}
