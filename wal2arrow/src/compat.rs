//! What differs between the PostgreSQL majors the plugin builds for (14 to 18), in one place.
//! Each item has one definition per group of majors; the rest of the plugin uses only these.
//!
//! - 15 moved a transaction's commit time into the `xact_time` union (next to the prepare
//!   time of two-phase transactions), and gave `OutputPluginUpdateProgress` a `skipped_xact`
//!   argument.
//! - 16 made `pg_attribute.attndims` an `int2`.
//! - 17 replaced `ReorderBufferTupleBuf` by a plain `HeapTuple` in a change's tuple slots.
//! - 18 moved a tuple descriptor's attributes behind its `compact_attrs` (read them with
//!   `TupleDescAttr`), and gave
//!   `RelationGetPrimaryKeyIndex` a `deferrable_ok` argument.

use pgrx::pg_sys;

mod raw {
    use pgrx::pg_sys;
    // Declared by `catalog/partition.h` in every major; pgrx's bindings leave it out.
    unsafe extern "C-unwind" {
        pub(super) fn get_partition_ancestors(relid: pg_sys::Oid) -> *mut pg_sys::List;
    }
}

/// The OIDs of a partition's ancestors, nearest first, the partition root last (a palloc'd
/// `List`; NIL for a table that is not a partition).
///
/// # Safety
///
/// Inside a transaction, on the backend's thread.
pub(crate) unsafe fn get_partition_ancestors(relid: pg_sys::Oid) -> *mut pg_sys::List {
    // SAFETY: a catalog lookup (caller's contract); the boundary turns an ERROR raised inside
    // into a Rust panic that the callback's guard reports, instead of a longjmp over Rust
    // frames.
    unsafe { pg_sys::ffi::pg_guard_ffi_boundary(|| raw::get_partition_ancestors(relid)) }
}

/// A change's tuple slot (`ReorderBufferChange.data.tp.newtuple` / `oldtuple`).
#[cfg(any(feature = "pg14", feature = "pg15", feature = "pg16"))]
pub(crate) type ChangeTuple = *mut pg_sys::ReorderBufferTupleBuf;
/// A change's tuple slot (`ReorderBufferChange.data.tp.newtuple` / `oldtuple`).
#[cfg(any(feature = "pg17", feature = "pg18"))]
pub(crate) type ChangeTuple = pg_sys::HeapTuple;

/// The heap tuple in a change's tuple slot; `None` when the slot is empty.
///
/// # Safety
///
/// `t` is NULL or a tuple slot of a change valid for the callback.
pub(crate) unsafe fn change_tuple(t: ChangeTuple) -> Option<*mut pg_sys::HeapTupleData> {
    if t.is_null() {
        return None;
    }
    #[cfg(any(feature = "pg14", feature = "pg15", feature = "pg16"))]
    // SAFETY: a non-NULL tuple buffer of the change (the caller's contract).
    return Some(unsafe { &raw mut (*t).tuple });
    #[cfg(any(feature = "pg17", feature = "pg18"))]
    return Some(t);
}

/// The `natts` attributes of a tuple descriptor.
///
/// # Safety
///
/// `tupdesc` is a valid tuple descriptor that outlives the returned slice.
pub(crate) unsafe fn attributes(
    tupdesc: &pg_sys::TupleDescData,
) -> &[pg_sys::FormData_pg_attribute] {
    let natts = usize::try_from(tupdesc.natts).unwrap_or(0);
    #[cfg(not(feature = "pg18"))]
    // SAFETY: before 18 a TupleDesc holds `natts` attributes inline, in `attrs`.
    return unsafe { tupdesc.attrs.as_slice(natts) };
    #[cfg(feature = "pg18")]
    // SAFETY: from 18 the attributes follow the `natts` compact attributes, as the C
    // `TupleDescAttr` reads them: `(FormData_pg_attribute *) (compact_attrs + natts)`.
    return unsafe {
        let first =
            tupdesc.compact_attrs.as_ptr().add(natts).cast::<pg_sys::FormData_pg_attribute>();
        std::slice::from_raw_parts(first, natts)
    };
}

/// An attribute's declared array dimensions (`attndims`: `int4` before 16, `int2` from 16).
pub(crate) fn attndims(att: &pg_sys::FormData_pg_attribute) -> i32 {
    #[cfg(any(feature = "pg14", feature = "pg15"))]
    return att.attndims;
    #[cfg(not(any(feature = "pg14", feature = "pg15")))]
    return i32::from(att.attndims);
}

/// A committed transaction's commit time.
pub(crate) fn commit_time(txn: &pg_sys::ReorderBufferTXN) -> pg_sys::TimestampTz {
    #[cfg(feature = "pg14")]
    return txn.commit_time;
    #[cfg(not(feature = "pg14"))]
    // SAFETY: for a committed transaction (the only kind decoded without two-phase support)
    // the `xact_time` union holds the commit time.
    return unsafe { txn.xact_time.commit_time };
}

/// Lets the walsender report progress past a transaction that sent nothing
/// (`skipped_xact`; 14 has no such argument).
///
/// # Safety
///
/// Inside an output plugin callback, with its context.
pub(crate) unsafe fn update_progress(ctx: *mut pg_sys::LogicalDecodingContext, skipped_xact: bool) {
    #[cfg(feature = "pg14")]
    {
        let _ = skipped_xact;
        // SAFETY: the caller's contract.
        unsafe { pg_sys::OutputPluginUpdateProgress(ctx) };
    }
    #[cfg(not(feature = "pg14"))]
    // SAFETY: the caller's contract.
    unsafe {
        pg_sys::OutputPluginUpdateProgress(ctx, skipped_xact)
    };
}

/// The relation's primary key index (deferrable ones included), or `InvalidOid`.
///
/// # Safety
///
/// `relation` is open.
pub(crate) unsafe fn primary_key_index(relation: pg_sys::Relation) -> pg_sys::Oid {
    #[cfg(not(feature = "pg18"))]
    // SAFETY: a relcache lookup on an open relation (the caller's contract).
    return unsafe { pg_sys::RelationGetPrimaryKeyIndex(relation) };
    #[cfg(feature = "pg18")]
    // SAFETY: as above; a deferrable primary key still names the row's key columns.
    return unsafe { pg_sys::RelationGetPrimaryKeyIndex(relation, true) };
}
