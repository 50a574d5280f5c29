//! The column builders of the encoding core: plain growable buffers in Arrow's memory layout,
//! kept (with their capacity) from one batch to the next, and written out as the body and
//! buffer descriptors of an Arrow IPC record batch without building arrays first.
//!
//! The plugin encodes every transaction this way, and a transaction of one row is common: so
//! a batch costs no allocation once the buffers have grown, and no `ArrayData`, `Arc` or
//! validation on the way out. [`ColumnBuilder::finish`] builds real (validated) Arrow arrays
//! for the consumer's wal2json fallback, which needs `RecordBatch`es.

use arrow_array::types::IntervalMonthDayNano;
use arrow_array::{ArrayRef, make_array};
use arrow_buffer::{ArrowNativeType, Buffer};
use arrow_data::ArrayDataBuilder;
use arrow_schema::{ArrowError, DataType, FieldRef};

use crate::encode::EncodeError;
use crate::types::PgKind;

/// A bitmap being built, least significant bit first (Arrow's order): boolean values.
#[derive(Clone, Debug, Default)]
pub struct Bitmap {
    bytes: Vec<u8>,
    len: usize,
}

impl Bitmap {
    /// Appends a bit.
    #[inline]
    pub fn push(&mut self, bit: bool) {
        if self.len.is_multiple_of(8) {
            self.bytes.push(0);
        }
        if bit {
            self.bytes[self.len / 8] |= 1 << (self.len % 8);
        }
        self.len += 1;
    }

    /// Bits pushed.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no bit was pushed.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn clear(&mut self) {
        self.bytes.clear();
        self.len = 0;
    }
}

/// A validity bitmap being built: nothing but a count while every value is valid (the common
/// case), the bits themselves from the first NULL on.
#[derive(Clone, Debug, Default)]
pub struct Validity {
    /// The bits, once a NULL arrived (empty before).
    bits: Bitmap,
    len: usize,
    nulls: usize,
}

impl Validity {
    /// Appends a value's validity.
    #[inline]
    pub fn push(&mut self, valid: bool) {
        if self.nulls == 0 && valid {
            self.len += 1;
            return;
        }
        if self.nulls == 0 {
            // The first NULL: spell out the valid bits before it.
            self.bits.clear();
            self.bits.bytes.resize(self.len.div_ceil(8), 0xFF);
            if let Some(last) = self.bits.bytes.last_mut()
                && !self.len.is_multiple_of(8)
            {
                *last = (1u8 << (self.len % 8)) - 1;
            }
            self.bits.len = self.len;
        }
        self.bits.push(valid);
        self.len += 1;
        if !valid {
            self.nulls += 1;
        }
    }

    /// Values pushed.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing was pushed.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// NULLs pushed.
    pub fn unset(&self) -> usize {
        self.nulls
    }

    fn clear(&mut self) {
        self.bits.clear();
        self.len = 0;
        self.nulls = 0;
    }

    /// The bytes of the validity buffer: none without NULLs (Arrow allows leaving it out).
    fn validity_bytes(&self) -> &[u8] {
        if self.nulls == 0 { &[] } else { &self.bits.bytes }
    }

    fn take_validity(&mut self) -> Option<Buffer> {
        let buffer =
            (self.nulls > 0).then(|| Buffer::from_vec(std::mem::take(&mut self.bits.bytes)));
        self.clear();
        buffer
    }
}

/// A column of fixed-width values.
#[derive(Clone, Debug, Default)]
pub struct FixedColumn<T> {
    values: Vec<T>,
    validity: Validity,
}

impl<T: ArrowNativeType> FixedColumn<T> {
    /// Appends a value.
    #[inline]
    pub fn append_value(&mut self, v: T) {
        self.values.push(v);
        self.validity.push(true);
    }

    /// Appends a NULL.
    #[inline]
    pub fn append_null(&mut self) {
        self.values.push(T::default());
        self.validity.push(false);
    }

    /// Appends a value or a NULL.
    pub fn append_option(&mut self, v: Option<T>) {
        match v {
            Some(v) => self.append_value(v),
            None => self.append_null(),
        }
    }

    /// The values appended (NULLs as zero).
    pub fn values_slice(&self) -> &[T] {
        &self.values
    }

    fn len(&self) -> usize {
        self.values.len()
    }

    /// Empties the column, keeping its capacity.
    pub(crate) fn clear(&mut self) {
        self.values.clear();
        self.validity.clear();
    }
}

/// A column of booleans.
#[derive(Clone, Debug, Default)]
pub struct BoolColumn {
    values: Bitmap,
    validity: Validity,
}

impl BoolColumn {
    /// Appends a value.
    #[inline]
    pub fn append_value(&mut self, v: bool) {
        self.values.push(v);
        self.validity.push(true);
    }

    /// Appends a NULL.
    pub fn append_null(&mut self) {
        self.values.push(false);
        self.validity.push(false);
    }
}

/// A column of variable-length values: offsets and bytes.
#[derive(Clone, Debug)]
pub struct BytesColumn {
    offsets: Vec<i32>,
    data: Vec<u8>,
    validity: Validity,
}

impl Default for BytesColumn {
    fn default() -> Self {
        BytesColumn { offsets: vec![0], data: Vec::new(), validity: Validity::default() }
    }
}

impl BytesColumn {
    #[inline]
    fn push(&mut self, bytes: &[u8]) {
        self.data.extend_from_slice(bytes);
        // The batch size limit keeps a batch's data far below 2 GiB; a single value is at
        // most 1 GB (PostgreSQL's limit).
        self.offsets.push(i32::try_from(self.data.len()).unwrap_or(i32::MAX));
        self.validity.push(true);
    }

    fn push_null(&mut self) {
        self.offsets.push(*self.offsets.last().expect("offsets start with 0"));
        self.validity.push(false);
    }

    fn len(&self) -> usize {
        self.offsets.len() - 1
    }

    fn clear(&mut self) {
        self.offsets.truncate(1);
        self.data.clear();
        self.validity.clear();
    }

    /// The bytes appended so far.
    pub fn values_slice(&self) -> &[u8] {
        &self.data
    }
}

/// A column of UTF-8 text.
#[derive(Clone, Debug, Default)]
pub struct Utf8Column(BytesColumn);

impl Utf8Column {
    /// Appends a value.
    #[inline]
    pub fn append_value(&mut self, v: impl AsRef<str>) {
        self.0.push(v.as_ref().as_bytes());
    }

    /// Appends bytes its source guarantees are UTF-8 (PostgreSQL's text in a UTF8 database),
    /// without checking them: nothing here treats them as text, and Arrow readers validate
    /// string columns, so bytes that break the promise make the reader reject the batch.
    #[inline]
    pub fn append_unvalidated(&mut self, bytes: &[u8]) {
        self.0.push(bytes);
    }

    /// Appends a NULL.
    pub fn append_null(&mut self) {
        self.0.push_null();
    }

    /// The bytes appended so far.
    pub fn values_slice(&self) -> &[u8] {
        self.0.values_slice()
    }
}

/// A column of byte strings.
#[derive(Clone, Debug, Default)]
pub struct BinaryColumn(BytesColumn);

impl BinaryColumn {
    /// Appends a value.
    #[inline]
    pub fn append_value(&mut self, v: impl AsRef<[u8]>) {
        self.0.push(v.as_ref());
    }

    /// Appends a NULL.
    pub fn append_null(&mut self) {
        self.0.push_null();
    }
}

/// A column of fixed-size byte strings (`uuid`: 16 bytes).
#[derive(Clone, Debug)]
pub struct FixedBinaryColumn {
    width: usize,
    data: Vec<u8>,
    validity: Validity,
}

impl FixedBinaryColumn {
    /// An empty column of `width`-byte values.
    pub fn new(width: usize) -> FixedBinaryColumn {
        FixedBinaryColumn { width, data: Vec::new(), validity: Validity::default() }
    }

    /// Appends a value of exactly the column's width.
    ///
    /// # Errors
    ///
    /// [`EncodeError::Arrow`] for a value of another size.
    pub fn append_value(&mut self, v: impl AsRef<[u8]>) -> Result<(), EncodeError> {
        let v = v.as_ref();
        if v.len() != self.width {
            return Err(EncodeError::Arrow(ArrowError::InvalidArgumentError(format!(
                "a value of {} bytes for a column of {}",
                v.len(),
                self.width
            ))));
        }
        self.data.extend_from_slice(v);
        self.validity.push(true);
        Ok(())
    }

    /// Appends a NULL.
    pub fn append_null(&mut self) {
        self.data.resize(self.data.len() + self.width, 0);
        self.validity.push(false);
    }
}

/// The builder of a `timetz` column: local time and UTC offset.
#[derive(Clone, Debug, Default)]
pub struct TimeTzColumn {
    time: FixedColumn<i64>,
    offset: FixedColumn<i32>,
    validity: Validity,
}

impl TimeTzColumn {
    /// Appends a value: microseconds since midnight and the offset in seconds east of UTC.
    pub fn append_value(&mut self, time_us: i64, offset_seconds: i32) {
        self.time.append_value(time_us);
        self.offset.append_value(offset_seconds);
        self.validity.push(true);
    }

    /// Appends a NULL.
    pub fn append_null(&mut self) {
        // The struct's children are declared non-nullable: zeros under a NULL parent.
        self.time.append_value(0);
        self.offset.append_value(0);
        self.validity.push(false);
    }
}

/// The builder of a list column: offsets, validity, and the builder of its items.
#[derive(Debug)]
pub struct ListColumn {
    item: FieldRef,
    offsets: Vec<i32>,
    validity: Validity,
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
        self.validity.push(true);
    }

    fn append_null(&mut self) {
        self.offsets.push(*self.offsets.last().expect("offsets start with 0"));
        self.validity.push(false);
    }
}

/// One column being built, in Arrow's layout.
///
/// The plugin matches on the variant to know which Rust value to read from a Datum.
#[derive(Debug)]
pub enum ColumnBuilder {
    /// [`PgKind::Bool`]
    Bool(BoolColumn),
    /// [`PgKind::Int2`]
    Int16(FixedColumn<i16>),
    /// [`PgKind::Int4`]
    Int32(FixedColumn<i32>),
    /// [`PgKind::Int8`], [`PgKind::Money`]
    Int64(FixedColumn<i64>),
    /// [`PgKind::Oid`]
    UInt32(FixedColumn<u32>),
    /// [`PgKind::Float4`]
    Float32(FixedColumn<f32>),
    /// [`PgKind::Float8`]
    Float64(FixedColumn<f64>),
    /// [`PgKind::Decimal`]: the value times 10^scale
    Decimal128(FixedColumn<i128>),
    /// Every kind shown as text
    Utf8(Utf8Column),
    /// [`PgKind::Bytea`]
    Binary(BinaryColumn),
    /// [`PgKind::Uuid`]: 16 bytes
    FixedSizeBinary(FixedBinaryColumn),
    /// [`PgKind::Date`]: days since 1970-01-01 (see [`crate::types::date_to_arrow`])
    Date32(FixedColumn<i32>),
    /// [`PgKind::Time`]: microseconds since midnight
    Time64(FixedColumn<i64>),
    /// [`PgKind::Timestamp`] and [`PgKind::Timestamptz`]: µs since 1970-01-01 (see
    /// [`crate::types::timestamp_to_arrow`])
    Timestamp(FixedColumn<i64>),
    /// [`PgKind::Interval`] (see [`crate::types::interval_to_arrow`])
    Interval(FixedColumn<IntervalMonthDayNano>),
    /// [`PgKind::TimeTz`]
    TimeTz(Box<TimeTzColumn>),
    /// [`PgKind::Array`]
    List(Box<ListColumn>),
}

/// Calls `$body` with the builder of any fixed-width variant bound to `$b`.
macro_rules! fixed {
    ($self:expr, $b:ident => $body:expr, $other:ident => $rest:expr) => {
        match $self {
            ColumnBuilder::Int16($b) => $body,
            ColumnBuilder::Int32($b) => $body,
            ColumnBuilder::Int64($b) => $body,
            ColumnBuilder::UInt32($b) => $body,
            ColumnBuilder::Float32($b) => $body,
            ColumnBuilder::Float64($b) => $body,
            ColumnBuilder::Decimal128($b) => $body,
            ColumnBuilder::Date32($b) => $body,
            ColumnBuilder::Time64($b) => $body,
            ColumnBuilder::Timestamp($b) => $body,
            ColumnBuilder::Interval($b) => $body,
            $other => $rest,
        }
    };
}

/// Bytes of a slice of fixed-width values.
fn as_bytes<T: ArrowNativeType>(values: &[T]) -> &[u8] {
    // ArrowNativeType values are plain old data; arrow-buffer's `ToByteSlice` gives their
    // bytes without unsafe code here.
    arrow_buffer::ToByteSlice::to_byte_slice(values)
}

impl ColumnBuilder {
    /// An empty builder for values of `kind`.
    pub fn for_kind(kind: &PgKind) -> ColumnBuilder {
        match kind {
            PgKind::Bool => ColumnBuilder::Bool(BoolColumn::default()),
            PgKind::Int2 => ColumnBuilder::Int16(FixedColumn::default()),
            PgKind::Int4 => ColumnBuilder::Int32(FixedColumn::default()),
            PgKind::Int8 | PgKind::Money => ColumnBuilder::Int64(FixedColumn::default()),
            PgKind::Oid => ColumnBuilder::UInt32(FixedColumn::default()),
            PgKind::Float4 => ColumnBuilder::Float32(FixedColumn::default()),
            PgKind::Float8 => ColumnBuilder::Float64(FixedColumn::default()),
            PgKind::Decimal { .. } => ColumnBuilder::Decimal128(FixedColumn::default()),
            PgKind::NumericText
            | PgKind::Text
            | PgKind::Name
            | PgKind::Json
            | PgKind::Jsonb
            | PgKind::OutputText
            | PgKind::Opaque => ColumnBuilder::Utf8(Utf8Column::default()),
            PgKind::Bytea => ColumnBuilder::Binary(BinaryColumn::default()),
            PgKind::Uuid => ColumnBuilder::FixedSizeBinary(FixedBinaryColumn::new(16)),
            PgKind::Date => ColumnBuilder::Date32(FixedColumn::default()),
            PgKind::Time => ColumnBuilder::Time64(FixedColumn::default()),
            PgKind::Timestamp | PgKind::Timestamptz => {
                ColumnBuilder::Timestamp(FixedColumn::default())
            }
            PgKind::Interval => ColumnBuilder::Interval(FixedColumn::default()),
            PgKind::TimeTz => ColumnBuilder::TimeTz(Box::default()),
            PgKind::Array { .. } => {
                let (DataType::List(item), Some(inner)) = (kind.arrow_type(), kind.item_kind())
                else {
                    unreachable!("arrays are lists")
                };
                ColumnBuilder::List(Box::new(ListColumn {
                    item,
                    offsets: vec![0],
                    validity: Validity::default(),
                    values: ColumnBuilder::for_kind(&inner),
                }))
            }
        }
    }

    /// Appends a NULL.
    pub fn append_null(&mut self) {
        fixed!(self, b => b.append_null(), other => match other {
            ColumnBuilder::Bool(b) => b.append_null(),
            ColumnBuilder::Utf8(b) => b.append_null(),
            ColumnBuilder::Binary(b) => b.append_null(),
            ColumnBuilder::FixedSizeBinary(b) => b.append_null(),
            ColumnBuilder::TimeTz(b) => b.append_null(),
            ColumnBuilder::List(b) => b.append_null(),
            _ => unreachable!("fixed-width variants handled above"),
        })
    }

    /// Appends an interval as PostgreSQL stores it (months, days, microseconds).
    pub fn append_interval(
        b: &mut FixedColumn<IntervalMonthDayNano>,
        months: i32,
        days: i32,
        micros: i64,
    ) {
        let (m, d, ns) = crate::types::interval_to_arrow(months, days, micros);
        b.append_value(IntervalMonthDayNano::new(m, d, ns));
    }

    /// Values appended so far.
    pub fn len(&self) -> usize {
        fixed!(self, b => b.len(), other => match other {
            ColumnBuilder::Bool(b) => b.validity.len(),
            ColumnBuilder::Utf8(b) => b.0.len(),
            ColumnBuilder::Binary(b) => b.0.len(),
            ColumnBuilder::FixedSizeBinary(b) => b.validity.len(),
            ColumnBuilder::TimeTz(b) => b.validity.len(),
            ColumnBuilder::List(b) => b.offsets.len() - 1,
            _ => unreachable!("fixed-width variants handled above"),
        })
    }

    /// Whether nothing was appended.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// An estimate of the bytes the values take (for the batch size limit).
    pub(crate) fn approx_bytes(&self) -> usize {
        let mut total = 0;
        self.for_each_buffer(&mut |b| total += b.len());
        total
    }

    /// The column's IPC field nodes (itself, then its children), as (length, null count).
    pub(crate) fn for_each_node(&self, f: &mut impl FnMut(usize, usize)) {
        let validity = self.validity();
        f(self.len(), validity.unset());
        match self {
            ColumnBuilder::TimeTz(b) => {
                f(b.time.len(), 0);
                f(b.offset.len(), 0);
            }
            ColumnBuilder::List(b) => b.values.for_each_node(f),
            _ => {}
        }
    }

    fn validity(&self) -> &Validity {
        fixed!(self, b => &b.validity, other => match other {
            ColumnBuilder::Bool(b) => &b.validity,
            ColumnBuilder::Utf8(b) => &b.0.validity,
            ColumnBuilder::Binary(b) => &b.0.validity,
            ColumnBuilder::FixedSizeBinary(b) => &b.validity,
            ColumnBuilder::TimeTz(b) => &b.validity,
            ColumnBuilder::List(b) => &b.validity,
            _ => unreachable!("fixed-width variants handled above"),
        })
    }

    /// The column's IPC buffers, in order: for each node its validity (empty without nulls)
    /// and its data buffers, depth first.
    pub(crate) fn for_each_buffer(&self, f: &mut impl FnMut(&[u8])) {
        f(self.validity().validity_bytes());
        fixed!(self, b => f(as_bytes(&b.values)), other => match other {
            ColumnBuilder::Bool(b) => f(&b.values.bytes),
            ColumnBuilder::Utf8(Utf8Column(b)) | ColumnBuilder::Binary(BinaryColumn(b)) => {
                f(as_bytes(&b.offsets));
                f(&b.data);
            }
            ColumnBuilder::FixedSizeBinary(b) => f(&b.data),
            ColumnBuilder::TimeTz(b) => {
                f(&[]);
                f(as_bytes(&b.time.values));
                f(&[]);
                f(as_bytes(&b.offset.values));
            }
            ColumnBuilder::List(b) => {
                f(as_bytes(&b.offsets));
                b.values.for_each_buffer(f);
            }
            _ => unreachable!("fixed-width variants handled above"),
        })
    }

    /// Empties the builder, keeping its buffers' capacity.
    pub(crate) fn clear(&mut self) {
        fixed!(self, b => b.clear(), other => match other {
            ColumnBuilder::Bool(b) => {
                b.values.clear();
                b.validity.clear();
            }
            ColumnBuilder::Utf8(b) => b.0.clear(),
            ColumnBuilder::Binary(b) => b.0.clear(),
            ColumnBuilder::FixedSizeBinary(b) => {
                b.data.clear();
                b.validity.clear();
            }
            ColumnBuilder::TimeTz(b) => {
                b.time.clear();
                b.offset.clear();
                b.validity.clear();
            }
            ColumnBuilder::List(b) => {
                b.offsets.truncate(1);
                b.validity.clear();
                b.values.clear();
            }
            _ => unreachable!("fixed-width variants handled above"),
        })
    }

    /// Moves the values appended so far into an Arrow array of type `dt` (validated), leaving
    /// the builder empty.
    ///
    /// # Errors
    ///
    /// When `dt` is not this builder's type.
    pub(crate) fn finish(&mut self, dt: &DataType) -> Result<ArrayRef, ArrowError> {
        fn take<T: ArrowNativeType>(v: &mut Vec<T>) -> Buffer {
            Buffer::from_vec(std::mem::take(v))
        }
        let data = ArrayDataBuilder::new(dt.clone()).len(self.len());
        let data = fixed!(self,
            b => data.null_bit_buffer(b.validity.take_validity()).add_buffer(take(&mut b.values)),
            other => match other {
                ColumnBuilder::Bool(b) => {
                    let values = take(&mut b.values.bytes);
                    b.values.clear();
                    data.null_bit_buffer(b.validity.take_validity()).add_buffer(values)
                }
                ColumnBuilder::Utf8(Utf8Column(b)) | ColumnBuilder::Binary(BinaryColumn(b)) => {
                    let offsets = std::mem::replace(&mut b.offsets, vec![0]);
                    data.null_bit_buffer(b.validity.take_validity())
                        .add_buffer(Buffer::from_vec(offsets))
                        .add_buffer(take(&mut b.data))
                }
                ColumnBuilder::FixedSizeBinary(b) => {
                    data.null_bit_buffer(b.validity.take_validity()).add_buffer(take(&mut b.data))
                }
                ColumnBuilder::TimeTz(b) => {
                    let DataType::Struct(fields) = dt else {
                        return Err(ArrowError::InvalidArgumentError(format!("timetz as {dt}")));
                    };
                    let mut time = ColumnBuilder::Time64(std::mem::take(&mut b.time));
                    let mut offset = ColumnBuilder::Int32(std::mem::take(&mut b.offset));
                    let t = time.finish(fields[0].data_type())?;
                    let o = offset.finish(fields[1].data_type())?;
                    data.null_bit_buffer(b.validity.take_validity())
                        .add_child_data(t.to_data())
                        .add_child_data(o.to_data())
                }
                ColumnBuilder::List(b) => {
                    let child = b.values.finish(b.item.data_type())?;
                    let offsets = std::mem::replace(&mut b.offsets, vec![0]);
                    data.null_bit_buffer(b.validity.take_validity())
                        .add_buffer(Buffer::from_vec(offsets))
                        .add_child_data(child.to_data())
                }
                _ => unreachable!("fixed-width variants handled above"),
            }
        );
        Ok(make_array(data.build()?))
    }
}
