//! The per-session state: options, relation cache, pending batches, and its lifetime.
//!
//! The state is a Rust value owned by the decoding context's memory context: a reset callback
//! on `ctx->context` drops it when PostgreSQL frees the context. That happens after
//! `shutdown_cb` on a clean end and, unlike `shutdown_cb`, also when an ERROR aborts decoding,
//! so nothing leaks either way.

use pgrx::pg_sys;
use wal2arrow_schema::encode::write_schema_message;
use wal2arrow_schema::types::PG_EPOCH_MICROS;
use wal2arrow_schema::wire::{self, Begin, Commit};
use wal2arrow_schema::{ChangeOp, Lsn, PluginOptions};

use crate::output::write_message;
use crate::relation::{RelEntry, RelationCache};
use crate::report;

/// A batch is written out once its estimated size passes this, even below `batch-rows`, so a
/// table of wide rows cannot build one huge buffer (PostgreSQL caps a message at 1 GB).
const MAX_BATCH_BYTES: usize = 16 << 20;

pub(crate) struct State {
    options: PluginOptions,
    relations: RelationCache,
    /// Tables with rows pending in the current transaction, in the order first touched.
    pending: Vec<pg_sys::Oid>,
    /// Reset after every change: detoasted values and output-function text live here.
    change_cx: pg_sys::MemoryContext,
    /// Lives as long as the session: output functions' auxiliary data lives here.
    session_cx: pg_sys::MemoryContext,
    /// The database encoding is UTF8 (text needs no conversion).
    utf8_db: bool,
}

impl State {
    /// Creates the session state and hands its ownership to `ctx->context`.
    ///
    /// # Safety
    ///
    /// `ctx` must be the decoding context passed to `startup_cb`.
    pub(crate) unsafe fn attach(ctx: *mut pg_sys::LogicalDecodingContext, options: PluginOptions) {
        // SAFETY: startup_cb's context is valid and its memory context lives until the
        // decoding session ends.
        unsafe {
            let session_cx = (*ctx).context;
            let change_cx = pg_sys::AllocSetContextCreateInternal(
                session_cx,
                c"wal2arrow change".as_ptr(),
                pg_sys::ALLOCSET_DEFAULT_MINSIZE as usize,
                pg_sys::ALLOCSET_DEFAULT_INITSIZE as usize,
                pg_sys::ALLOCSET_DEFAULT_MAXSIZE as usize,
            );
            let state = Box::into_raw(Box::new(State {
                options,
                relations: RelationCache::default(),
                pending: Vec::new(),
                change_cx,
                session_cx,
                utf8_db: pg_sys::GetDatabaseEncoding() == pg_sys::pg_enc::PG_UTF8 as i32,
            }));
            let cb =
                pg_sys::MemoryContextAlloc(session_cx, size_of::<pg_sys::MemoryContextCallback>())
                    .cast::<pg_sys::MemoryContextCallback>();
            cb.write(pg_sys::MemoryContextCallback {
                func: Some(free_state),
                arg: state.cast(),
                next: std::ptr::null_mut(),
            });
            pg_sys::MemoryContextRegisterResetCallback(session_cx, cb);
            (*ctx).output_plugin_private = state.cast();
        }
        RelationCache::start_session();
    }

    /// The session state of `ctx`.
    ///
    /// # Safety
    ///
    /// `ctx` must be a decoding context whose `startup_cb` ran [`State::attach`], and no other
    /// reference to the state may be live.
    pub(crate) unsafe fn of<'a>(ctx: *mut pg_sys::LogicalDecodingContext) -> &'a mut State {
        // SAFETY: attach stored a valid, exclusively owned State pointer; it is freed only with
        // ctx->context, after the last callback.
        unsafe { &mut *(*ctx).output_plugin_private.cast::<State>() }
    }

    /// # Safety
    ///
    /// `ctx` and `txn` are begin_cb's arguments.
    pub(crate) unsafe fn begin(
        &mut self,
        ctx: *mut pg_sys::LogicalDecodingContext,
        txn: *mut pg_sys::ReorderBufferTXN,
    ) {
        self.pending.clear();
        // SAFETY: begin_cb's transaction is valid for the call.
        let txn = unsafe { &*txn };
        let msg = Begin {
            xid: txn.xid.into_inner(),
            final_lsn: Lsn(txn.final_lsn),
            // SAFETY: for a committed transaction (the only kind decoded without two-phase
            // support) xact_time holds the commit time.
            commit_time_us: unix_micros(unsafe { txn.xact_time.commit_time }),
        };
        // SAFETY: `ctx` is begin_cb's context.
        let written = unsafe { write_message(ctx, true, |out| wire::write_begin(out, &msg)) };
        written.unwrap_or_else(|e| report::encode_error("(begin)", &e.into()));
    }

    /// # Safety
    ///
    /// The arguments are change_cb's.
    pub(crate) unsafe fn change(
        &mut self,
        ctx: *mut pg_sys::LogicalDecodingContext,
        relation: pg_sys::Relation,
        change: *mut pg_sys::ReorderBufferChange,
    ) {
        // SAFETY: change_cb's change is valid for the call.
        let change = unsafe { &*change };
        let (op, tuple) = match change.action {
            pg_sys::ReorderBufferChangeType::REORDER_BUFFER_CHANGE_INSERT => {
                // SAFETY: for INSERT the tuple-change arm of the union is the live one.
                (ChangeOp::Insert, unsafe { change.data.tp.newtuple })
            }
            _ => return,
        };
        if tuple.is_null() {
            return;
        }
        let lsn = Lsn(change.lsn);
        // SAFETY: the callback's relation is open and valid.
        let relid = unsafe { (*relation).rd_id };

        // SAFETY: all writes below happen inside change_cb with its context.
        unsafe {
            self.apply_invalidations(ctx);
            let entry = entry(&mut self.relations, self.session_cx, ctx, relation, relid);
            if !entry.encoder.accepts(lsn) {
                flush(ctx, entry, false);
            }
            if entry.encoder.rows() == 0 && !self.pending.contains(&relid) {
                self.pending.push(relid);
            }
            let old_cx = pg_sys::MemoryContextSwitchTo(self.change_cx);
            append_row(entry, relation, &mut (*tuple).tuple, op, lsn, self.utf8_db);
            pg_sys::MemoryContextSwitchTo(old_cx);
            pg_sys::MemoryContextReset(self.change_cx);

            if entry.encoder.rows() >= self.options.batch_rows as usize
                || entry.encoder.approx_bytes() >= MAX_BATCH_BYTES
            {
                flush(ctx, entry, true);
            }
        }
    }

    /// # Safety
    ///
    /// The arguments are commit_cb's.
    pub(crate) unsafe fn commit(
        &mut self,
        ctx: *mut pg_sys::LogicalDecodingContext,
        txn: *mut pg_sys::ReorderBufferTXN,
        commit_lsn: pg_sys::XLogRecPtr,
    ) {
        for relid in std::mem::take(&mut self.pending) {
            if let Some(entry) = self.relations.get_mut(relid) {
                // SAFETY: inside commit_cb with its context.
                unsafe { flush(ctx, entry, false) };
            }
        }
        // SAFETY: commit_cb's transaction is valid for the call.
        let txn = unsafe { &*txn };
        let msg = Commit {
            commit_lsn: Lsn(commit_lsn),
            end_lsn: Lsn(txn.end_lsn),
            // SAFETY: a committed transaction's xact_time is its commit time.
            commit_time_us: unix_micros(unsafe { txn.xact_time.commit_time }),
        };
        // SAFETY: inside commit_cb with its context.
        let written = unsafe { write_message(ctx, true, |out| wire::write_commit(out, &msg)) };
        written.unwrap_or_else(|e| report::encode_error("(commit)", &e.into()));
    }

    /// Applies relcache invalidations recorded since the last change. A stale entry's pending
    /// rows were encoded for the schema the consumer holds, so they are written out before the
    /// entry is dropped; the next change of that table rebuilds it and sends the new schema.
    ///
    /// # Safety
    ///
    /// Inside a change callback, with its context.
    unsafe fn apply_invalidations(&mut self, ctx: *mut pg_sys::LogicalDecodingContext) {
        for relid in self.relations.stale_relids() {
            if let Some(mut entry) = self.relations.remove(relid) {
                // SAFETY: caller's contract.
                unsafe { flush(ctx, &mut entry, false) };
            }
        }
    }
}

/// The cache entry for `relation`, built (and its Schema message written) if missing.
///
/// # Safety
///
/// Inside a change callback; `relation` is its open relation.
unsafe fn entry(
    relations: &mut RelationCache,
    session_cx: pg_sys::MemoryContext,
    ctx: *mut pg_sys::LogicalDecodingContext,
    relation: pg_sys::Relation,
    relid: pg_sys::Oid,
) -> &mut RelEntry {
    if relations.get_mut(relid).is_none() {
        // SAFETY: caller's contract; session_cx outlives every entry.
        let entry = unsafe { RelEntry::build(relation, session_cx) };
        relations.insert(relid, entry);
    }
    let entry = relations.get_mut(relid).expect("inserted above");
    if !entry.schema_sent {
        // SAFETY: caller's contract.
        let written =
            unsafe { write_message(ctx, false, |out| write_schema_message(out, &entry.desc)) };
        written.unwrap_or_else(|e| report::encode_error(&entry.qualified_name, &e));
        entry.schema_sent = true;
    }
    entry
}

/// Deforms `tuple` and appends it as one row.
///
/// # Safety
///
/// `tuple` is a valid heap tuple of `relation`, whose description `entry` holds; the current
/// memory context is reset by the caller afterwards.
unsafe fn append_row(
    entry: &mut RelEntry,
    relation: pg_sys::Relation,
    tuple: *mut pg_sys::HeapTupleData,
    op: ChangeOp,
    lsn: Lsn,
    utf8_db: bool,
) {
    // SAFETY: the values/nulls buffers have one slot per attribute of the relation's tuple
    // descriptor, which `entry` was built from; heap_deform_tuple fills exactly that many
    // (attributes missing from an old tuple come from their defaults or as NULL).
    unsafe {
        debug_assert_eq!((*(*relation).rd_att).natts as usize, entry.values.len());
        pg_sys::heap_deform_tuple(
            tuple,
            (*relation).rd_att,
            entry.values.as_mut_ptr(),
            entry.nulls.as_mut_ptr(),
        );
    }
    if let Err(e) = entry.encoder.start_row(op, lsn) {
        report::encode_error(&entry.qualified_name, &e);
    }
    let builders = entry.encoder.columns_mut();
    for (builder, (att, reader)) in builders.iter_mut().zip(entry.columns.iter_mut()) {
        if entry.nulls[*att] {
            builder.append_null();
        } else {
            // SAFETY: a non-NULL Datum of this column, read by the reader made for its type.
            unsafe { reader.append(entry.values[*att], builder, utf8_db) };
        }
    }
}

/// Writes `entry`'s pending rows as one Batch message.
///
/// # Safety
///
/// Inside an output plugin callback, with its context.
unsafe fn flush(ctx: *mut pg_sys::LogicalDecodingContext, entry: &mut RelEntry, last: bool) {
    if entry.encoder.rows() == 0 {
        return;
    }
    // SAFETY: caller's contract.
    let written = unsafe { write_message(ctx, last, |out| entry.encoder.write_batch(out)) };
    if let Err(e) = written {
        report::encode_error(&entry.qualified_name, &e);
    }
}

fn unix_micros(pg_timestamp: pg_sys::TimestampTz) -> i64 {
    pg_timestamp.saturating_add(PG_EPOCH_MICROS)
}

/// Drops the session state; the reset callback of the decoding context's memory context.
#[pgrx::pg_guard]
unsafe extern "C-unwind" fn free_state(arg: *mut std::ffi::c_void) {
    // SAFETY: `arg` is the pointer State::attach leaked with Box::into_raw; this callback runs
    // exactly once, when the owning memory context is reset or deleted.
    drop(unsafe { Box::from_raw(arg.cast::<State>()) });
    RelationCache::end_session();
}
