//! Reading PostgreSQL Datums into Arrow builders.
//!
//! Fixed-width values are taken straight from the Datum word; variable-length ones from the
//! detoasted varlena bytes. Only types without a native mapping go through their output
//! function (see `wal2arrow_schema::types`).

use std::borrow::Cow;
use std::ffi::CStr;

use pgrx::pg_sys;
use pgrx::varlena::{vardata_any, varsize_any_exhdr};
use wal2arrow_schema::types::{date_to_arrow, timestamp_to_arrow};
use wal2arrow_schema::{ColumnBuilder, PgKind};

/// How to read one column's Datums.
#[derive(Debug)]
pub(crate) enum ColumnReader {
    /// A natively mapped type, read from its Datum (the builder's variant says how).
    Native,
    /// Any other type: its output function's text.
    Output(Box<pg_sys::FmgrInfo>),
}

impl ColumnReader {
    /// The reader for a column whose (base) type is `base_type` and has this kind.
    ///
    /// # Safety
    ///
    /// Must run inside a transaction (catalog access), from the backend's thread. `mcxt` must
    /// outlive the reader (the output function's auxiliary data is allocated there).
    pub(crate) unsafe fn new(
        kind: PgKind,
        type_oid: pg_sys::Oid,
        mcxt: pg_sys::MemoryContext,
    ) -> Self {
        if kind != PgKind::Opaque {
            return ColumnReader::Native;
        }
        let mut output_fn = pg_sys::Oid::INVALID;
        let mut is_varlena = false;
        // SAFETY: plain catalog lookups with valid out-pointers; an unknown type raises an
        // ERROR (a Rust panic through pgrx's guard), it cannot return garbage.
        unsafe { pg_sys::getTypeOutputInfo(type_oid, &mut output_fn, &mut is_varlena) };
        // SAFETY: FmgrInfo is plain old data; all-zero is a valid "not yet set up" value that
        // fmgr_info_cxt overwrites.
        let mut finfo: Box<pg_sys::FmgrInfo> = Box::new(unsafe { std::mem::zeroed() });
        // SAFETY: `finfo` is a valid, exclusively owned FmgrInfo that stays at a stable heap
        // address for the reader's life; `mcxt` outlives it (caller's contract).
        unsafe { pg_sys::fmgr_info_cxt(output_fn, &mut *finfo, mcxt) };
        ColumnReader::Output(finfo)
    }

    /// Appends `datum` (not NULL) to `builder`.
    ///
    /// # Safety
    ///
    /// `datum` must be a valid, non-NULL value of this column's type, and `builder` the
    /// builder made for this column's kind. Allocations (detoasting, output text) go to the
    /// current memory context, which the caller resets after the change.
    pub(crate) unsafe fn append(
        &mut self,
        datum: pg_sys::Datum,
        builder: &mut ColumnBuilder,
        utf8_db: bool,
    ) {
        let word = datum.value();
        match (self, builder) {
            (ColumnReader::Native, ColumnBuilder::Bool(b)) => b.append_value(word != 0),
            (ColumnReader::Native, ColumnBuilder::Int16(b)) => b.append_value(word as i16),
            (ColumnReader::Native, ColumnBuilder::Int32(b)) => b.append_value(word as i32),
            (ColumnReader::Native, ColumnBuilder::Int64(b)) => b.append_value(word as i64),
            (ColumnReader::Native, ColumnBuilder::Float32(b)) => {
                b.append_value(f32::from_bits(word as u32))
            }
            // float8 is passed by value on 64-bit platforms (FLOAT8PASSBYVAL), the only ones
            // pgrx supports.
            (ColumnReader::Native, ColumnBuilder::Float64(b)) => {
                b.append_value(f64::from_bits(word as u64))
            }
            (ColumnReader::Native, ColumnBuilder::Date32(b)) => {
                b.append_value(date_to_arrow(word as i32))
            }
            (ColumnReader::Native, ColumnBuilder::Timestamp(b)) => {
                b.append_value(timestamp_to_arrow(word as i64))
            }
            (ColumnReader::Native, ColumnBuilder::Binary(b)) => {
                // SAFETY: a non-NULL bytea Datum is a varlena pointer (caller's contract).
                b.append_value(unsafe { varlena_bytes(datum) })
            }
            (ColumnReader::Native, ColumnBuilder::Utf8(b)) => {
                // SAFETY: a non-NULL text/varchar/bpchar Datum is a varlena pointer.
                let bytes = unsafe { varlena_bytes(datum) };
                b.append_value(server_text(bytes, utf8_db))
            }
            (ColumnReader::Output(finfo), ColumnBuilder::Utf8(b)) => {
                // SAFETY: `finfo` was set up for this column's type's output function, and
                // `datum` is a valid value of that type; the result is a palloc'd C string.
                let text =
                    unsafe { CStr::from_ptr(pg_sys::OutputFunctionCall(&mut **finfo, datum)) };
                b.append_value(server_text(text.to_bytes(), utf8_db))
            }
            (reader, builder) => unreachable!(
                "column reader {reader:?} does not match builder {:?}: both come from the same PgKind",
                std::mem::discriminant(builder)
            ),
        }
    }
}

/// The bytes of a varlena Datum, detoasted.
///
/// # Safety
///
/// `datum` must point to a valid varlena. The bytes live until the current memory context is
/// reset (or as long as the tuple, when no detoasting was needed).
unsafe fn varlena_bytes<'a>(datum: pg_sys::Datum) -> &'a [u8] {
    // SAFETY: the caller guarantees a varlena; detoasting handles compressed, external
    // (reconstructed by the reorder buffer) and short-header forms, allocating in the current
    // memory context when it has to.
    unsafe {
        let v = pg_sys::pg_detoast_datum_packed(datum.cast_mut_ptr());
        std::slice::from_raw_parts(vardata_any(v).cast::<u8>(), varsize_any_exhdr(v))
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
