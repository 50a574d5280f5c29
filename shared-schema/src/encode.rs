//! The encoding core: typed values in, wire messages out. It knows nothing of PostgreSQL's
//! memory or Datums — the plugin reads those and appends plain Rust values here — so it builds
//! and is tested without a server.
//!
//! A table's batches on the wire have its columns, then `_op` (`UInt8` change code),
//! `_lsn_delta` (`UInt32` offset of the row's LSN from the batch's base LSN; left out with
//! `include-lsn=false`), `_missing` and `_unrepresentable`: per row a bitmap (bit *i* = column
//! *i*, least significant bit first; all zeros when none) of the columns whose value the change
//! does not carry, and of those whose value the column's Arrow type cannot hold. Every batch
//! carries every field of its schema (see [`crate::wire`]: standard Arrow).
//!
//! [`BatchEncoder`] also holds the batching policy both producers share — the plugin and the
//! consumer's wal2json fallback — so that they cut batches at the same rows:
//! [`BatchEncoder::room_for`] before a change, [`BatchEncoder::batch_full`] after it. A
//! change's row images (an UPDATE's old and new row) always stay in one batch.

use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;

use arrow_array::{ArrayRef, FixedSizeBinaryArray, RecordBatch, UInt8Array, UInt32Array};
use arrow_buffer::Buffer;
use arrow_ipc::MetadataVersion;
use arrow_ipc::writer::{DictionaryTracker, IpcDataGenerator, IpcWriteOptions, write_message};
use arrow_schema::{ArrowError, DataType, Field, Schema, SchemaRef};

pub use crate::column::{
    BinaryColumn, Bitmap, BoolColumn, ColumnBuilder, FixedBinaryColumn, FixedColumn, ListColumn,
    TimeTzColumn, Utf8Column, Validity,
};
use crate::lsn::Lsn;
use crate::meta;
use crate::types::{ColumnDesc, json_string};
use crate::wire::{self, BATCH_HAS_MISSING, BATCH_HAS_UNREPRESENTABLE, ChangeOp, IPC_ALIGNMENT};

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
    /// Width in bytes of a `_missing` (and `_unrepresentable`) bitmap.
    pub fn missing_width(&self) -> usize {
        self.columns.len().div_ceil(8).max(1)
    }

    /// The Arrow schema of this table's batches on the wire: every batch has all its fields.
    pub fn wire_schema(&self) -> Schema {
        let mut fields: Vec<Field> = self.columns.iter().map(ColumnDesc::arrow_field).collect();
        fields.push(system_field(meta::OP_COLUMN, DataType::UInt8, false));
        if self.with_lsn {
            fields.push(system_field(meta::LSN_DELTA_COLUMN, DataType::UInt32, false));
        }
        let bitmap = DataType::FixedSizeBinary(self.missing_width() as i32);
        fields.push(system_field(meta::MISSING_COLUMN, bitmap.clone(), false));
        fields.push(system_field(meta::UNREPRESENTABLE_COLUMN, bitmap, false));
        let list = |names: &[String]| {
            format!("[{}]", names.iter().map(|n| json_string(n)).collect::<Vec<_>>().join(","))
        };
        let md = HashMap::from([
            (meta::SCHEMA_NAME.to_owned(), self.namespace.clone()),
            (meta::TABLE_NAME.to_owned(), self.name.clone()),
            (meta::RELATION_OID.to_owned(), self.relid.to_string()),
            (meta::WIRE_VERSION.to_owned(), wire::MessageKind::Schema.since().to_string()),
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

impl std::error::Error for EncodeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            EncodeError::Arrow(e) => Some(e),
            EncodeError::Io(e) => Some(e),
            EncodeError::LsnOutOfRange { .. } => None,
        }
    }
}

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

/// Builds one table's batches: rows go in through [`start_row`](Self::start_row),
/// [`column`](Self::column), [`mark_missing`](Self::mark_missing) and
/// [`mark_unrepresentable`](Self::mark_unrepresentable); Batch messages come out of
/// [`write_batch`](Self::write_batch).
///
/// The Arrow IPC record batch message is written directly from the builders' buffers (see
/// [`crate::column`]): no arrays are built, and once the buffers have grown to a batch's size
/// nothing is allocated, so a transaction of one row costs little more than its bytes.
pub struct BatchEncoder {
    relid: u32,
    schema: SchemaRef,
    columns: Vec<ColumnBuilder>,
    ops: FixedColumn<u8>,
    lsn_deltas: Option<FixedColumn<u32>>,
    base_lsn: Lsn,
    missing_width: usize,
    /// Rows with missing values: (row, bitmap), in row order.
    missing: Vec<(usize, Vec<u8>)>,
    /// Rows with unrepresentable values: (row, bitmap), in row order.
    unrepresentable: Vec<(usize, Vec<u8>)>,
    /// The bitmap columns' bytes of the batch being written (reused).
    bitmap_bytes: [Vec<u8>; 2],
    /// Rows at the last size check ([`batch_full`](Self::batch_full)); 0 before the first.
    size_checked_at: usize,
    /// The table's rows are large: its size is checked after every change.
    large_rows: bool,
    /// Reused between batches: the flatbuffer builder and the IPC descriptors.
    fbb: flatbuffers::FlatBufferBuilder<'static>,
    nodes: Vec<arrow_ipc::FieldNode>,
    buffers: Vec<arrow_ipc::Buffer>,
}

impl std::fmt::Debug for BatchEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchEncoder")
            .field("relid", &self.relid)
            .field("rows", &self.rows())
            .field("base_lsn", &self.base_lsn)
            .finish_non_exhaustive()
    }
}

/// `n` rounded up to the IPC alignment.
fn padded(n: usize) -> usize {
    n.div_ceil(IPC_ALIGNMENT) * IPC_ALIGNMENT
}

const ZEROS: [u8; IPC_ALIGNMENT] = [0; IPC_ALIGNMENT];

/// How often (in rows) the batch's size is estimated while its rows are small: the estimate
/// walks every column.
const SIZE_CHECK_ROWS: usize = 64;

/// Sets bit `i` of the bitmap of the current row (`row`) in `marks`.
fn mark(marks: &mut Vec<(usize, Vec<u8>)>, row: usize, width: usize, i: usize) {
    if marks.last().is_none_or(|(r, _)| *r != row) {
        marks.push((row, vec![0; width]));
    }
    let bitmap = &mut marks.last_mut().expect("pushed above").1;
    bitmap[i / 8] |= 1 << (i % 8);
}

/// The bytes of a bitmap column of `rows` rows: each marked row's bitmap, zeros elsewhere.
fn bitmap_column(out: &mut Vec<u8>, marks: &[(usize, Vec<u8>)], rows: usize, width: usize) {
    out.clear();
    out.resize(rows * width, 0);
    for (row, bitmap) in marks {
        out[row * width..(row + 1) * width].copy_from_slice(bitmap);
    }
}

impl BatchEncoder {
    /// An encoder for `desc`'s batches.
    pub fn new(desc: &RelationDesc) -> BatchEncoder {
        BatchEncoder {
            relid: desc.relid,
            schema: Arc::new(desc.wire_schema()),
            columns: desc.columns.iter().map(|c| ColumnBuilder::for_kind(&c.kind)).collect(),
            ops: FixedColumn::default(),
            lsn_deltas: desc.with_lsn.then(FixedColumn::default),
            base_lsn: Lsn::INVALID,
            missing_width: desc.missing_width(),
            missing: Vec::new(),
            unrepresentable: Vec::new(),
            bitmap_bytes: [Vec::new(), Vec::new()],
            size_checked_at: 0,
            large_rows: false,
            fbb: flatbuffers::FlatBufferBuilder::new(),
            nodes: Vec::new(),
            buffers: Vec::new(),
        }
    }

    /// The wire schema of this encoder's batches.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Rows in the batch being built.
    pub fn rows(&self) -> usize {
        self.ops.values_slice().len()
    }

    /// An estimate of the batch's encoded size.
    pub fn approx_bytes(&self) -> usize {
        self.rows() * (5 + 2 * self.missing_width)
            + self.columns.iter().map(ColumnBuilder::approx_bytes).sum::<usize>()
    }

    /// The batching policy, before a change of `images` rows (an UPDATE with its old image is
    /// two): whether it fits the batch being built. When it does not, write the batch out
    /// first, so that a change's rows never straddle two batches.
    pub fn room_for(&self, images: usize, batch_rows: u32) -> bool {
        let rows = self.rows();
        rows == 0 || rows + images <= batch_rows as usize
    }

    /// The batching policy, after a change: whether the batch is full — `batch_rows` rows, or
    /// about [`MAX_BATCH_BYTES`] — and must be written out now. The size is estimated after the
    /// first change and then every [`SIZE_CHECK_ROWS`] rows, or after every change once the
    /// table's rows proved large.
    pub fn batch_full(&mut self, batch_rows: u32) -> bool {
        let rows = self.rows();
        if rows == 0 {
            return false;
        }
        if rows >= batch_rows as usize {
            return true;
        }
        if self.size_checked_at == 0
            || self.large_rows
            || rows - self.size_checked_at >= SIZE_CHECK_ROWS
        {
            self.size_checked_at = rows;
            let bytes = self.approx_bytes();
            self.large_rows = bytes / rows > MAX_BATCH_BYTES / SIZE_CHECK_ROWS;
            return bytes >= MAX_BATCH_BYTES;
        }
        false
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
    /// column as well): `_missing`.
    ///
    /// # Panics
    ///
    /// Before the first [`start_row`](Self::start_row), or when `i` is not a column index.
    pub fn mark_missing(&mut self, i: usize) {
        assert!(i < self.columns.len(), "column {i} of {}", self.columns.len());
        let row = self.rows().checked_sub(1).expect("mark_missing after start_row");
        mark(&mut self.missing, row, self.missing_width, i);
    }

    /// Records that the current row's value of column `i` was sent but cannot be held by the
    /// column's Arrow type (append a NULL to the column as well): `_unrepresentable`.
    ///
    /// # Panics
    ///
    /// Before the first [`start_row`](Self::start_row), or when `i` is not a column index.
    pub fn mark_unrepresentable(&mut self, i: usize) {
        assert!(i < self.columns.len(), "column {i} of {}", self.columns.len());
        let row = self.rows().checked_sub(1).expect("mark_unrepresentable after start_row");
        mark(&mut self.unrepresentable, row, self.missing_width, i);
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

    /// The batch's flags: which bitmap columns have a bit set.
    fn flags(&self) -> u8 {
        let mut flags = 0;
        if !self.missing.is_empty() {
            flags |= BATCH_HAS_MISSING;
        }
        if !self.unrepresentable.is_empty() {
            flags |= BATCH_HAS_UNREPRESENTABLE;
        }
        flags
    }

    /// Drops the batch being built, whole: for a producer whose row was cut off half way (an
    /// error while reading its values), so that no later batch carries a partial row.
    pub fn discard(&mut self) {
        self.clear();
    }

    fn clear(&mut self) {
        self.columns.iter_mut().for_each(ColumnBuilder::clear);
        self.ops.clear();
        if let Some(d) = &mut self.lsn_deltas {
            d.clear();
        }
        self.missing.clear();
        self.unrepresentable.clear();
        self.size_checked_at = 0;
    }

    /// Finishes the rows built so far as one record batch in the wire schema and starts an
    /// empty batch; `None` when there are no rows.
    ///
    /// The plugin writes batches with [`write_batch`](Self::write_batch); the consumer's
    /// wal2json fallback, which builds rows on the consumer's side, turns this one into the
    /// user's batch with [`Relation::user_batch`](crate::Relation::user_batch).
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
        let result = self.finish_arrays(rows);
        self.clear();
        result.map(Some)
    }

    fn finish_arrays(&mut self, rows: usize) -> Result<WireBatch, EncodeError> {
        let schema = Arc::clone(&self.schema);
        let flags = self.flags();
        let mut arrays: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
        for (c, field) in self.columns.iter_mut().zip(schema.fields()) {
            arrays.push(c.finish(field.data_type())?);
        }
        arrays.push(Arc::new(UInt8Array::from(self.ops.values_slice().to_vec())));
        if let Some(d) = &self.lsn_deltas {
            arrays.push(Arc::new(UInt32Array::from(d.values_slice().to_vec())));
        }
        let width = self.missing_width;
        for marks in [&self.missing, &self.unrepresentable] {
            let mut bytes = Vec::new();
            bitmap_column(&mut bytes, marks, rows, width);
            let values = Buffer::from_vec(bytes);
            arrays.push(Arc::new(FixedSizeBinaryArray::try_new(width as i32, values, None)?));
        }
        let batch = RecordBatch::try_new(schema, arrays)?;
        debug_assert_eq!(batch.num_rows(), rows);
        Ok(WireBatch {
            batch,
            base_lsn: self.base_lsn,
            has_missing: flags & BATCH_HAS_MISSING != 0,
            has_unrepresentable: flags & BATCH_HAS_UNREPRESENTABLE != 0,
        })
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
        let result = self.write_ipc(rows, out);
        self.clear();
        result.map(|()| rows)
    }

    fn write_ipc(&mut self, rows: usize, out: &mut impl Write) -> Result<(), EncodeError> {
        let flags = self.flags();
        let width = self.missing_width;
        let mut bytes = std::mem::take(&mut self.bitmap_bytes);
        bitmap_column(&mut bytes[0], &self.missing, rows, width);
        bitmap_column(&mut bytes[1], &self.unrepresentable, rows, width);
        let result = self.write_ipc_with(rows, flags, [&bytes[0], &bytes[1]], out);
        self.bitmap_bytes = bytes;
        result
    }

    fn write_ipc_with(
        &mut self,
        rows: usize,
        flags: u8,
        bitmaps: [&[u8]; 2],
        out: &mut impl Write,
    ) -> Result<(), EncodeError> {
        // Pass 1: the field nodes and buffer descriptors, in IPC order.
        self.nodes.clear();
        self.buffers.clear();
        let mut body = 0usize;
        {
            let (nodes, buffers) = (&mut self.nodes, &mut self.buffers);
            let mut node = |len: usize, nulls: usize| {
                nodes.push(arrow_ipc::FieldNode::new(len as i64, nulls as i64));
            };
            let mut buffer = |b: &[u8]| {
                buffers.push(arrow_ipc::Buffer::new(body as i64, b.len() as i64));
                body += padded(b.len());
            };
            for c in &self.columns {
                if c.len() != rows {
                    return Err(EncodeError::Arrow(ArrowError::InvalidArgumentError(format!(
                        "a column of {} values in a batch of {rows} rows",
                        c.len()
                    ))));
                }
                c.for_each_node(&mut node);
                c.for_each_buffer(&mut buffer);
            }
            // The system columns are never NULL: no validity buffer.
            node(rows, 0);
            buffer(&[]);
            buffer(as_bytes(self.ops.values_slice()));
            if let Some(d) = &self.lsn_deltas {
                node(rows, 0);
                buffer(&[]);
                buffer(as_bytes(d.values_slice()));
            }
            for values in bitmaps {
                node(rows, 0);
                buffer(&[]);
                buffer(values);
            }
        }
        // The flatbuffer Message holding the RecordBatch header.
        self.fbb.reset();
        let fbb = &mut self.fbb;
        let nodes = fbb.create_vector(&self.nodes);
        let buffers = fbb.create_vector(&self.buffers);
        let mut rb = arrow_ipc::RecordBatchBuilder::new(fbb);
        rb.add_length(rows as i64);
        rb.add_nodes(nodes);
        rb.add_buffers(buffers);
        let rb = rb.finish();
        let mut message = arrow_ipc::MessageBuilder::new(fbb);
        message.add_version(MetadataVersion::V5);
        message.add_header_type(arrow_ipc::MessageHeader::RecordBatch);
        message.add_header(rb.as_union_value());
        message.add_bodyLength(body as i64);
        let message = message.finish();
        fbb.finish(message, None);
        let meta = fbb.finished_data();
        // Continuation marker, metadata length, metadata padded so the body starts aligned.
        let meta_len = padded(8 + meta.len()) - 8;
        wire::write_batch_header(out, self.relid, self.base_lsn, flags)?;
        out.write_all(&[0xFF; 4])?;
        out.write_all(&(meta_len as i32).to_le_bytes())?;
        out.write_all(meta)?;
        out.write_all(&ZEROS[..meta_len - meta.len()])?;
        // Pass 2: the body.
        let mut failed = None;
        let mut write = |b: &[u8]| {
            if failed.is_none()
                && let Err(e) = out
                    .write_all(b)
                    .and_then(|()| out.write_all(&ZEROS[..padded(b.len()) - b.len()]))
            {
                failed = Some(e);
            }
        };
        for c in &self.columns {
            c.for_each_buffer(&mut write);
        }
        write(&[]);
        write(as_bytes(self.ops.values_slice()));
        if let Some(d) = &self.lsn_deltas {
            write(&[]);
            write(as_bytes(d.values_slice()));
        }
        for values in bitmaps {
            write(&[]);
            write(values);
        }
        match failed {
            Some(e) => Err(EncodeError::Io(e)),
            None => Ok(()),
        }
    }
}

fn as_bytes<T: arrow_buffer::ArrowNativeType>(values: &[T]) -> &[u8] {
    arrow_buffer::ToByteSlice::to_byte_slice(values)
}

/// A finished batch in the wire schema, before IPC encoding (see
/// [`BatchEncoder::finish_batch`]).
#[derive(Clone, Debug)]
pub struct WireBatch {
    /// The rows: the table's columns, `_op`, `_lsn_delta` (with `include-lsn`), `_missing` and
    /// `_unrepresentable`.
    pub batch: RecordBatch,
    /// The first row's LSN, which `_lsn_delta` counts from.
    pub base_lsn: Lsn,
    /// Some row has a bit set in `_missing`.
    pub has_missing: bool,
    /// Some row has a bit set in `_unrepresentable`.
    pub has_unrepresentable: bool,
}

/// The size at which a batch is written out even below `batch-rows`: one wal2arrow message
/// stays far below PostgreSQL's 1 GB limit on a single output write.
pub const MAX_BATCH_BYTES: usize = 16 << 20;
