//! The output plugin callbacks PostgreSQL calls. Each is `#[pg_guard]`: a Rust panic or an
//! `ERROR` raised inside becomes a PostgreSQL `ERROR` that ends the decoding session, never a
//! crash of the backend. They only translate arguments and delegate to [`State`].

use std::ffi::CStr;

use pgrx::pg_sys;
use pgrx::prelude::*;
use wal2arrow_schema::PluginOptions;

use crate::report;
use crate::state::State;

#[pg_guard]
pub(crate) unsafe extern "C-unwind" fn startup(
    ctx: *mut pg_sys::LogicalDecodingContext,
    opt: *mut pg_sys::OutputPluginOptions,
    _is_init: bool,
) {
    // SAFETY: PostgreSQL passes valid pointers to its decoding context and options struct.
    unsafe {
        (*opt).output_type = pg_sys::OutputPluginOutputType::OUTPUT_PLUGIN_BINARY_OUTPUT;
        let pairs = option_pairs((*ctx).output_plugin_options);
        let options = PluginOptions::parse(pairs.iter().map(|(k, v)| (k.as_str(), v.as_deref())))
            .unwrap_or_else(|e| report::option_error(&e));
        // PostgreSQL streams in-progress transactions only to a consumer that asked.
        (*ctx).streaming &= options.streaming;
        State::attach(ctx, options);
    }
}

#[pg_guard]
pub(crate) unsafe extern "C-unwind" fn begin(
    ctx: *mut pg_sys::LogicalDecodingContext,
    txn: *mut pg_sys::ReorderBufferTXN,
) {
    // SAFETY: startup attached the state; PostgreSQL passes valid arguments.
    unsafe { State::of(ctx).begin(ctx, txn) }
}

#[pg_guard]
pub(crate) unsafe extern "C-unwind" fn change(
    ctx: *mut pg_sys::LogicalDecodingContext,
    _txn: *mut pg_sys::ReorderBufferTXN,
    relation: pg_sys::Relation,
    change: *mut pg_sys::ReorderBufferChange,
) {
    // SAFETY: startup attached the state; PostgreSQL passes valid arguments.
    unsafe { State::of(ctx).change(ctx, relation, change) }
}

#[pg_guard]
pub(crate) unsafe extern "C-unwind" fn commit(
    ctx: *mut pg_sys::LogicalDecodingContext,
    txn: *mut pg_sys::ReorderBufferTXN,
    commit_lsn: pg_sys::XLogRecPtr,
) {
    // SAFETY: startup attached the state; PostgreSQL passes valid arguments.
    unsafe { State::of(ctx).commit(ctx, txn, commit_lsn) }
}

#[pg_guard]
pub(crate) unsafe extern "C-unwind" fn truncate(
    ctx: *mut pg_sys::LogicalDecodingContext,
    _txn: *mut pg_sys::ReorderBufferTXN,
    nrelations: std::ffi::c_int,
    relations: *mut pg_sys::Relation,
    change: *mut pg_sys::ReorderBufferChange,
) {
    // SAFETY: PostgreSQL passes `nrelations` open relations.
    let relations =
        unsafe { std::slice::from_raw_parts(relations, usize::try_from(nrelations).unwrap_or(0)) };
    // SAFETY: startup attached the state; PostgreSQL passes valid arguments.
    unsafe { State::of(ctx).truncate(ctx, relations, change) }
}

#[pg_guard]
pub(crate) unsafe extern "C-unwind" fn message(
    ctx: *mut pg_sys::LogicalDecodingContext,
    _txn: *mut pg_sys::ReorderBufferTXN,
    lsn: pg_sys::XLogRecPtr,
    transactional: bool,
    prefix: *const std::ffi::c_char,
    size: pg_sys::Size,
    content: *const std::ffi::c_char,
) {
    // SAFETY: PostgreSQL passes a NUL-terminated prefix and `size` bytes of content.
    let (prefix, content) = unsafe { message_parts(prefix, size, content) };
    // SAFETY: startup attached the state; PostgreSQL passes valid arguments.
    unsafe { State::of(ctx).message(ctx, lsn, transactional, prefix, content) }
}

#[pg_guard]
pub(crate) unsafe extern "C-unwind" fn filter_by_origin(
    ctx: *mut pg_sys::LogicalDecodingContext,
    origin_id: pg_sys::RepOriginId,
) -> bool {
    // SAFETY: startup attached the state.
    unsafe { State::of(ctx).origin_filtered(origin_id) }
}

/// Nothing to do: the state is freed with the decoding context's memory (see [`State`]),
/// which also covers sessions that end in an ERROR, where this callback is skipped.
#[pg_guard]
pub(crate) unsafe extern "C-unwind" fn shutdown(_ctx: *mut pg_sys::LogicalDecodingContext) {}

/// The `(name, value)` pairs of the plugin options, a PostgreSQL `List` of `DefElem`.
///
/// # Safety
///
/// `list` is NIL or a valid `List` of `DefElem` nodes.
unsafe fn option_pairs(list: *mut pg_sys::List) -> Vec<(String, Option<String>)> {
    let mut out = Vec::new();
    if list.is_null() {
        return out;
    }
    // SAFETY: a non-NIL List has `length` cells, each pointing to a DefElem (the replication
    // grammar builds nothing else here). defGetString handles every value node kind and raises
    // an ERROR for the others.
    unsafe {
        let len = usize::try_from((*list).length).unwrap_or(0);
        for i in 0..len {
            let elem = (*(*list).elements.add(i)).ptr_value.cast::<pg_sys::DefElem>();
            let name = CStr::from_ptr((*elem).defname).to_string_lossy().into_owned();
            let value = if (*elem).arg.is_null() {
                None
            } else {
                Some(CStr::from_ptr(pg_sys::defGetString(elem)).to_string_lossy().into_owned())
            };
            out.push((name, value));
        }
    }
    out
}

#[pg_guard]
pub(crate) unsafe extern "C-unwind" fn stream_start(
    ctx: *mut pg_sys::LogicalDecodingContext,
    txn: *mut pg_sys::ReorderBufferTXN,
) {
    // SAFETY: startup attached the state; PostgreSQL passes valid arguments.
    unsafe { State::of(ctx).stream_start(txn) }
}

#[pg_guard]
pub(crate) unsafe extern "C-unwind" fn stream_stop(
    ctx: *mut pg_sys::LogicalDecodingContext,
    _txn: *mut pg_sys::ReorderBufferTXN,
) {
    // SAFETY: startup attached the state; PostgreSQL passes valid arguments.
    unsafe { State::of(ctx).stream_stop(ctx) }
}

#[pg_guard]
pub(crate) unsafe extern "C-unwind" fn stream_change(
    ctx: *mut pg_sys::LogicalDecodingContext,
    _txn: *mut pg_sys::ReorderBufferTXN,
    relation: pg_sys::Relation,
    change: *mut pg_sys::ReorderBufferChange,
) {
    // SAFETY: startup attached the state; PostgreSQL passes valid arguments.
    unsafe { State::of(ctx).stream_change(ctx, relation, change) }
}

#[pg_guard]
pub(crate) unsafe extern "C-unwind" fn stream_truncate(
    ctx: *mut pg_sys::LogicalDecodingContext,
    _txn: *mut pg_sys::ReorderBufferTXN,
    nrelations: std::ffi::c_int,
    relations: *mut pg_sys::Relation,
    change: *mut pg_sys::ReorderBufferChange,
) {
    // SAFETY: PostgreSQL passes `nrelations` open relations.
    let relations =
        unsafe { std::slice::from_raw_parts(relations, usize::try_from(nrelations).unwrap_or(0)) };
    // SAFETY: startup attached the state; PostgreSQL passes valid arguments.
    unsafe { State::of(ctx).stream_truncate(ctx, relations, change) }
}

#[pg_guard]
pub(crate) unsafe extern "C-unwind" fn stream_message(
    ctx: *mut pg_sys::LogicalDecodingContext,
    _txn: *mut pg_sys::ReorderBufferTXN,
    lsn: pg_sys::XLogRecPtr,
    transactional: bool,
    prefix: *const std::ffi::c_char,
    size: pg_sys::Size,
    content: *const std::ffi::c_char,
) {
    // SAFETY: PostgreSQL passes a NUL-terminated prefix and `size` bytes of content.
    let (prefix, content) = unsafe { message_parts(prefix, size, content) };
    // SAFETY: startup attached the state; PostgreSQL passes valid arguments.
    unsafe { State::of(ctx).stream_message(ctx, lsn, transactional, prefix, content) }
}

#[pg_guard]
pub(crate) unsafe extern "C-unwind" fn stream_abort(
    ctx: *mut pg_sys::LogicalDecodingContext,
    txn: *mut pg_sys::ReorderBufferTXN,
    abort_lsn: pg_sys::XLogRecPtr,
) {
    // SAFETY: startup attached the state; PostgreSQL passes valid arguments.
    unsafe { State::of(ctx).stream_abort(ctx, txn, abort_lsn) }
}

#[pg_guard]
pub(crate) unsafe extern "C-unwind" fn stream_commit(
    ctx: *mut pg_sys::LogicalDecodingContext,
    txn: *mut pg_sys::ReorderBufferTXN,
    commit_lsn: pg_sys::XLogRecPtr,
) {
    // SAFETY: startup attached the state; PostgreSQL passes valid arguments.
    unsafe { State::of(ctx).stream_commit(ctx, txn, commit_lsn) }
}

/// A logical message's prefix and content as byte slices.
///
/// # Safety
///
/// `prefix` is NUL-terminated and `content` valid for `size` bytes, for `'a`.
unsafe fn message_parts<'a>(
    prefix: *const std::ffi::c_char,
    size: pg_sys::Size,
    content: *const std::ffi::c_char,
) -> (&'a [u8], &'a [u8]) {
    // SAFETY: the caller's contract.
    unsafe {
        (
            CStr::from_ptr(prefix).to_bytes(),
            if size == 0 {
                &[][..]
            } else {
                std::slice::from_raw_parts(content.cast::<u8>(), size)
            },
        )
    }
}
