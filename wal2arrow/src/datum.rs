//! Reading PostgreSQL Datums into Arrow builders.
//!
//! Fixed-width values are taken straight from the Datum (by value) or the fixed-size struct it
//! points to (`timetz`, `interval`, `uuid`); variable-length ones from the detoasted varlena
//! bytes; `numeric` from its stored digits. Only kinds whose Arrow value *is* text go through
//! the type's output function (see `wal2arrow_schema::types`).

use std::borrow::Cow;
use std::ffi::CStr;

use pgrx::pg_sys;
use pgrx::varlena::{varatt_is_1b_e, varatt_is_4b_c, vardata_any, varsize_any_exhdr};
use wal2arrow_schema::encode::Utf8Column;
use wal2arrow_schema::numeric::PgNumeric;
use wal2arrow_schema::types::{
    array_shape, date_to_arrow, time_to_arrow, timestamp_to_arrow, timetz_offset,
};
use wal2arrow_schema::{ColumnBuilder, PgKind};

/// What happened to a value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Appended {
    /// The value was appended.
    Value,
    /// The value cannot be represented (`NaN` in a `Decimal128` column: a NULL was appended;
    /// in an array, the elements that cannot be are NULL): the caller lists the column in
    /// `_unrepresentable`.
    Unrepresentable,
}

/// How to read one column's (or array element's) Datums.
#[derive(Debug)]
pub(crate) enum ColumnReader {
    /// By the builder's variant: fixed-width values and `bytea`.
    Native,
    /// `numeric` into `Decimal128` at this scale.
    Decimal(i8),
    /// The varlena's bytes as text (`text`, `varchar`, `bpchar`, `json`).
    VarlenaText,
    /// `name`: a fixed-size NUL-terminated string.
    Name,
    /// The type's output function.
    Output(Box<pg_sys::FmgrInfo>),
    /// An array of elements read by the inner reader.
    Array(Box<ArrayReader>),
}

/// Reads array values: element storage facts for `deconstruct_array`, and the element reader.
#[derive(Debug)]
pub(crate) struct ArrayReader {
    elem_type: pg_sys::Oid,
    elem_len: i16,
    elem_byval: bool,
    elem_align: std::ffi::c_char,
    /// The nesting depth of the column's lists.
    dims: usize,
    element: ColumnReader,
}

impl ColumnReader {
    /// The reader for values of `kind`, whose (base) type is `type_oid`; for arrays,
    /// `elem_type` is the element's (base) type.
    ///
    /// # Safety
    ///
    /// Must run inside a transaction (catalog access), on the backend's thread. `mcxt` must
    /// outlive the reader (output functions' auxiliary data is allocated there).
    pub(crate) unsafe fn new(
        kind: &PgKind,
        type_oid: pg_sys::Oid,
        elem_type: pg_sys::Oid,
        mcxt: pg_sys::MemoryContext,
    ) -> ColumnReader {
        match kind {
            PgKind::Decimal { scale, .. } => ColumnReader::Decimal(*scale),
            PgKind::Text | PgKind::Json => ColumnReader::VarlenaText,
            PgKind::Name => ColumnReader::Name,
            // SAFETY: caller's contract.
            PgKind::NumericText | PgKind::Jsonb | PgKind::OutputText | PgKind::Opaque => unsafe {
                ColumnReader::Output(output_function(type_oid, mcxt))
            },
            PgKind::Array { element, dims, .. } => {
                let (mut len, mut byval, mut align) = (0i16, false, 0 as std::ffi::c_char);
                // SAFETY: a catalog lookup of a valid type OID with valid out-pointers.
                unsafe {
                    pg_sys::get_typlenbyvalalign(elem_type, &mut len, &mut byval, &mut align)
                };
                ColumnReader::Array(Box::new(ArrayReader {
                    elem_type,
                    elem_len: len,
                    elem_byval: byval,
                    elem_align: align,
                    dims: usize::from(*dims),
                    // SAFETY: caller's contract; elements are never arrays themselves.
                    element: unsafe {
                        ColumnReader::new(element, elem_type, pg_sys::Oid::INVALID, mcxt)
                    },
                }))
            }
            _ => ColumnReader::Native,
        }
    }

    /// Appends `datum` (not NULL) to `builder`.
    ///
    /// # Safety
    ///
    /// `datum` must be a valid, non-NULL value of this reader's type, and `builder` the
    /// builder made for its kind. Allocations (detoasting, output text) go to the current
    /// memory context, which the caller resets after the change.
    pub(crate) unsafe fn append(
        &mut self,
        datum: pg_sys::Datum,
        builder: &mut ColumnBuilder,
        utf8_db: bool,
    ) -> Appended {
        let word = datum.value();
        match (self, builder) {
            (ColumnReader::Native, ColumnBuilder::Bool(b)) => b.append_value(word != 0),
            (ColumnReader::Native, ColumnBuilder::Int16(b)) => b.append_value(word as i16),
            (ColumnReader::Native, ColumnBuilder::Int32(b)) => b.append_value(word as i32),
            // int8, money: 64-bit by value (pgrx supports only 64-bit platforms).
            (ColumnReader::Native, ColumnBuilder::Int64(b)) => b.append_value(word as i64),
            (ColumnReader::Native, ColumnBuilder::UInt32(b)) => b.append_value(word as u32),
            (ColumnReader::Native, ColumnBuilder::Float32(b)) => {
                b.append_value(f32::from_bits(word as u32))
            }
            (ColumnReader::Native, ColumnBuilder::Float64(b)) => {
                b.append_value(f64::from_bits(word as u64))
            }
            (ColumnReader::Native, ColumnBuilder::Date32(b)) => {
                b.append_value(date_to_arrow(word as i32))
            }
            (ColumnReader::Native, ColumnBuilder::Time64(b)) => match time_to_arrow(word as i64) {
                Some(t) => b.append_value(t),
                None => {
                    b.append_null();
                    return Appended::Unrepresentable;
                }
            },
            (ColumnReader::Native, ColumnBuilder::Timestamp(b)) => {
                b.append_value(timestamp_to_arrow(word as i64))
            }
            (ColumnReader::Native, ColumnBuilder::TimeTz(b)) => {
                // SAFETY: a non-NULL timetz Datum points to a TimeTzADT.
                let t = unsafe { &*datum.cast_mut_ptr::<pg_sys::TimeTzADT>() };
                match time_to_arrow(t.time) {
                    Some(time) => b.append_value(time, timetz_offset(t.zone)),
                    None => {
                        b.append_null();
                        return Appended::Unrepresentable;
                    }
                }
            }
            (ColumnReader::Native, ColumnBuilder::Interval(b)) => {
                // SAFETY: a non-NULL interval Datum points to an Interval.
                let i = unsafe { &*datum.cast_mut_ptr::<pg_sys::Interval>() };
                ColumnBuilder::append_interval(b, i.month, i.day, i.time);
            }
            (ColumnReader::Native, ColumnBuilder::FixedSizeBinary(b)) => {
                // SAFETY: a non-NULL uuid Datum points to 16 bytes.
                let bytes = unsafe { std::slice::from_raw_parts(datum.cast_mut_ptr::<u8>(), 16) };
                b.append_value(bytes).expect("a uuid is 16 bytes, as the builder");
            }
            (ColumnReader::Native, ColumnBuilder::Binary(b)) => {
                // SAFETY: a non-NULL bytea Datum is a varlena pointer (caller's contract).
                b.append_value(unsafe { varlena_bytes(datum) })
            }
            (ColumnReader::Decimal(scale), ColumnBuilder::Decimal128(b)) => {
                // SAFETY: a non-NULL numeric Datum is a varlena pointer.
                let bytes = unsafe { varlena_bytes(datum) };
                match PgNumeric::parse(bytes).and_then(|n| n.to_i128(*scale)) {
                    Some(v) => b.append_value(v),
                    None => {
                        b.append_null();
                        return Appended::Unrepresentable;
                    }
                }
            }
            (ColumnReader::VarlenaText, ColumnBuilder::Utf8(b)) => {
                // SAFETY: a non-NULL text-like Datum is a varlena pointer.
                let bytes = unsafe { varlena_bytes(datum) };
                append_text(b, bytes, utf8_db)
            }
            (ColumnReader::Name, ColumnBuilder::Utf8(b)) => {
                // SAFETY: a non-NULL name Datum points to a NUL-terminated NameData.
                let name = unsafe { CStr::from_ptr(datum.cast_mut_ptr::<std::ffi::c_char>()) };
                append_text(b, name.to_bytes(), utf8_db)
            }
            (ColumnReader::Output(finfo), ColumnBuilder::Utf8(b)) => {
                // SAFETY: `finfo` was set up for this type's output function and `datum` is a
                // valid value of that type; the result is a palloc'd C string.
                let text =
                    unsafe { CStr::from_ptr(pg_sys::OutputFunctionCall(&mut **finfo, datum)) };
                append_text(b, text.to_bytes(), utf8_db)
            }
            (ColumnReader::Array(reader), builder @ ColumnBuilder::List(_)) => {
                // SAFETY: a non-NULL array Datum of this reader's element type.
                return unsafe { reader.append(datum, builder, utf8_db) };
            }
            (reader, builder) => unreachable!(
                "column reader {reader:?} does not match builder {:?}: both come from the same PgKind",
                std::mem::discriminant(builder)
            ),
        }
        Appended::Value
    }
}

impl ArrayReader {
    /// Appends one array value as `self.dims` nested lists.
    ///
    /// PostgreSQL does not enforce an array column's declared dimensions. A value with more
    /// dimensions than declared has its innermost ones flattened into the deepest list; one
    /// with fewer is wrapped in single-item outer lists. Lower bounds other than 1 are not kept.
    ///
    /// # Safety
    ///
    /// `datum` is a valid, non-NULL array of `elem_type`; `builder` is the column's list
    /// builder.
    unsafe fn append(
        &mut self,
        datum: pg_sys::Datum,
        builder: &mut ColumnBuilder,
        utf8_db: bool,
    ) -> Appended {
        // SAFETY: detoasting a valid array varlena gives a plain ArrayType, allocated in the
        // current memory context when it had to be decompressed or fetched.
        let arr =
            unsafe { pg_sys::pg_detoast_datum(datum.cast_mut_ptr()) }.cast::<pg_sys::ArrayType>();
        // SAFETY: an ArrayType's header is followed by `ndim` dimension lengths.
        let dims: Vec<usize> = unsafe {
            let ndim = usize::try_from((*arr).ndim).unwrap_or(0);
            let p = arr.cast::<u8>().add(size_of::<pg_sys::ArrayType>()).cast::<i32>();
            (0..ndim).map(|i| usize::try_from(p.add(i).read_unaligned()).unwrap_or(0)).collect()
        };
        let (mut values, mut nulls, mut n) = (std::ptr::null_mut(), std::ptr::null_mut(), 0);
        // SAFETY: deconstruct_array reads the elements of a valid array with the element
        // type's storage facts and returns palloc'd arrays of `n` Datums and flags.
        let (values, nulls) = unsafe {
            pg_sys::deconstruct_array(
                arr,
                self.elem_type,
                i32::from(self.elem_len),
                self.elem_byval,
                self.elem_align,
                &mut values,
                &mut nulls,
                &mut n,
            );
            let n = usize::try_from(n).unwrap_or(0);
            if n == 0 {
                (&[][..], &[][..])
            } else {
                (std::slice::from_raw_parts(values, n), std::slice::from_raw_parts(nulls, n))
            }
        };
        let shape = array_shape(&dims, self.dims);
        // SAFETY: the element Datums are valid values of the element type.
        let whole = unsafe { self.append_level(builder, &shape, values, nulls, utf8_db) };
        if whole { Appended::Value } else { Appended::Unrepresentable }
    }

    /// Appends `values` as nested lists of `shape` (one entry per level); `false` when an
    /// element could not be represented (it is NULL).
    unsafe fn append_level(
        &mut self,
        builder: &mut ColumnBuilder,
        shape: &[usize],
        values: &[pg_sys::Datum],
        nulls: &[bool],
        utf8_db: bool,
    ) -> bool {
        let mut whole = true;
        let ColumnBuilder::List(list) = builder else {
            unreachable!("an array column builds lists")
        };
        if shape.len() <= 1 {
            for (v, null) in values.iter().zip(nulls) {
                if *null {
                    list.values().append_null();
                } else {
                    // SAFETY: a non-NULL element of the element type. A NaN in a numeric(p, s)
                    // element is NULL, and the column listed in `_unrepresentable`.
                    let appended = unsafe { self.element.append(*v, list.values(), utf8_db) };
                    whole &= appended == Appended::Value;
                }
            }
        } else {
            let chunk = values.len().checked_div(shape[0]).unwrap_or(0);
            if chunk > 0 {
                for (vs, ns) in values.chunks(chunk).zip(nulls.chunks(chunk)) {
                    // SAFETY: as above, one level down.
                    whole &=
                        unsafe { self.append_level(list.values(), &shape[1..], vs, ns, utf8_db) };
                }
            }
        }
        list.close();
        whole
    }
}

/// Looks up and prepares `type_oid`'s output function.
///
/// # Safety
///
/// Inside a transaction; `mcxt` outlives the returned FmgrInfo.
unsafe fn output_function(
    type_oid: pg_sys::Oid,
    mcxt: pg_sys::MemoryContext,
) -> Box<pg_sys::FmgrInfo> {
    let mut output_fn = pg_sys::Oid::INVALID;
    let mut is_varlena = false;
    // SAFETY: catalog lookup with valid out-pointers; an unknown type raises an ERROR (a Rust
    // panic through pgrx's guard), it cannot return garbage.
    unsafe { pg_sys::getTypeOutputInfo(type_oid, &mut output_fn, &mut is_varlena) };
    // SAFETY: FmgrInfo is plain old data; all-zero is a valid "not yet set up" value that
    // fmgr_info_cxt overwrites.
    let mut finfo: Box<pg_sys::FmgrInfo> = Box::new(unsafe { std::mem::zeroed() });
    // SAFETY: `finfo` is exclusively owned and stays at a stable heap address for the reader's
    // life; `mcxt` outlives it (caller's contract).
    unsafe { pg_sys::fmgr_info_cxt(output_fn, &mut *finfo, mcxt) };
    finfo
}

/// Whether a varlena Datum is a pointer to a value stored out of line on disk: in a new
/// tuple, a TOASTed value the UPDATE did not change, which the WAL does not carry.
///
/// # Safety
///
/// `datum` is a non-NULL varlena Datum.
pub(crate) unsafe fn is_unchanged_toast(datum: pg_sys::Datum) -> bool {
    let p = datum.cast_mut_ptr::<u8>();
    // SAFETY: a varlena has at least a 1-byte header; an external one (header byte 0x01 on
    // little-endian machines, the only ones pgrx supports) has a tag byte after it.
    unsafe { *p == 0x01 && *p.add(1) == pg_sys::vartag_external::VARTAG_ONDISK as u8 }
}

/// The bytes of a varlena Datum, detoasted.
///
/// # Safety
///
/// `datum` must point to a valid varlena. The bytes live until the current memory context is
/// reset (or as long as the tuple, when no detoasting was needed).
unsafe fn varlena_bytes<'a>(datum: pg_sys::Datum) -> &'a [u8] {
    // One stored inline and uncompressed (short or 4-byte header) is read in place — the
    // common case, without a call into PostgreSQL; detoasting handles compressed and external
    // (reconstructed by the reorder buffer) forms, allocating in the current memory context.
    // SAFETY: the caller guarantees a valid varlena, which is all these functions read.
    unsafe {
        let mut v = datum.cast_mut_ptr::<pg_sys::varlena>();
        if varatt_is_1b_e(v) || varatt_is_4b_c(v) {
            v = pg_sys::pg_detoast_datum_packed(v);
        }
        std::slice::from_raw_parts(vardata_any(v).cast::<u8>(), varsize_any_exhdr(v))
    }
}

/// Appends text in the server's encoding: as it is in a UTF8 database, whose text PostgreSQL
/// keeps valid UTF-8 (its input functions check every value) — not checked again here; the
/// consumer's Arrow decoder validates every string column — or converted to UTF-8.
fn append_text(b: &mut Utf8Column, bytes: &[u8], utf8_db: bool) {
    if utf8_db {
        b.append_unvalidated(bytes);
    } else {
        b.append_value(server_text(bytes, utf8_db));
    }
}

/// Text in the server encoding as UTF-8.
///
/// In a UTF8 database PostgreSQL has already validated every text value, so this only borrows.
/// In other encodings the bytes are converted; bytes that are not valid UTF-8 after that (a
/// `SQL_ASCII` database stores whatever it was given) become U+FFFD.
fn server_text(bytes: &[u8], utf8_db: bool) -> Cow<'_, str> {
    if utf8_db && let Ok(s) = std::str::from_utf8(bytes) {
        return Cow::Borrowed(s);
    }
    if !utf8_db {
        let len = i32::try_from(bytes.len()).unwrap_or(i32::MAX);
        // SAFETY: `bytes` is valid for `len` bytes; pg_server_to_any returns either its input
        // pointer (no conversion needed) or a palloc'd NUL-terminated converted string, and
        // raises an ERROR (not garbage) on an invalid byte sequence.
        let converted = unsafe {
            pg_sys::pg_server_to_any(bytes.as_ptr().cast(), len, pg_sys::pg_enc::PG_UTF8 as i32)
        };
        if converted.cast_const() != bytes.as_ptr().cast() {
            // SAFETY: a converted result is a NUL-terminated palloc'd string.
            let c = unsafe { CStr::from_ptr(converted) };
            return Cow::Owned(String::from_utf8_lossy(c.to_bytes()).into_owned());
        }
    }
    String::from_utf8_lossy(bytes)
}
