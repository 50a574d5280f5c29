//! The per-session state: options, relation cache, pending batches, and its lifetime.
//!
//! The state is a Rust value owned by the decoding context's memory context: a reset callback
//! on `ctx->context` drops it when PostgreSQL frees the context. That happens after
//! `shutdown_cb` on a clean end and, unlike `shutdown_cb`, also when an ERROR aborts decoding,
//! so nothing leaks either way.
//!
//! Rows of a table accumulate in its encoder for the whole transaction and are written out as
//! a Batch when the batching policy of `wal2arrow_schema::encode` says so (`batch-rows`, or
//! ~16 MiB; an UPDATE's old and new image always in one batch), before anything that must
//! follow them in the stream (a Truncate, a transactional message, a schema change), and at
//! commit.
//!
//! A streamed (in-progress) transaction is written block by block: each block gathers into a
//! Bundle of its own, its rows are written out at the block's end and whenever the change
//! being decoded belongs to another subtransaction than the rows pending (a Subtransaction
//! message names the new one), so no batch mixes subtransactions and a consumer can drop
//! exactly a rolled-back savepoint's rows.

use std::collections::{HashMap, HashSet};

use pgrx::pg_sys;
use wal2arrow_schema::encode::write_schema_message;
use wal2arrow_schema::types::PG_EPOCH_MICROS;
use wal2arrow_schema::wire::{self, Begin, Commit, StreamAbort, StreamCommit, Truncate};
use wal2arrow_schema::{ChangeOp, Lsn, PluginOptions};

use crate::datum::{Appended, is_unchanged_toast};
use crate::output::Output;
use crate::relation::{RelEntry, RelationCache, cstr_or};
use crate::report;

/// Which version of a row a tuple is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Image {
    /// A new row: every column is there, except unchanged TOAST values.
    New,
    /// An old row: the identity key's columns (all of them with REPLICA IDENTITY FULL).
    Old,
}

/// The transaction being decoded.
struct Txn {
    begin: Begin,
    /// Replication origin name and LSN, when the transaction has one and it is asked for.
    origin: Option<(String, Lsn)>,
    /// Begin (and Origin) were written.
    written: bool,
}

/// The block of a streamed transaction being decoded.
struct Block {
    /// The top-level transaction.
    xid: u32,
    /// Stream Start was written.
    written: bool,
    /// The (sub)transaction the block's messages written last belong to.
    subxid: u32,
}

pub(crate) struct State {
    options: PluginOptions,
    /// The streamed transaction's block being decoded, between stream_start and stream_stop.
    block: Option<Block>,
    /// Streamed transactions of which a block was written and which have not ended: they
    /// get a Stream Commit or Abort; the others sent nothing and get none.
    streamed: HashSet<u32>,
    /// The (sub)transaction of the change a stream callback is handing on.
    change_xid: u32,
    /// The table whose row is being appended: still set when an ERROR cut the row off half
    /// way (see [`State::drop_cut_row`]).
    row_open: Option<pg_sys::Oid>,
    relations: RelationCache,
    /// Tables with rows pending in the current transaction, in the order first touched.
    pending: Vec<pg_sys::Oid>,
    txn: Option<Txn>,
    /// Replication origin names by ID (`None`: no such origin).
    origin_names: HashMap<pg_sys::RepOriginId, Option<String>>,
    /// Reset after every change: detoasted values and output-function text live here.
    change_cx: pg_sys::MemoryContext,
    /// Lives as long as the session: output functions' auxiliary data lives here.
    session_cx: pg_sys::MemoryContext,
    /// The database encoding is UTF8 (text needs no conversion).
    utf8_db: bool,
    /// Writes messages, gathering each transaction's into a Bundle.
    out: Output,
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
            let out = Output::new();
            let state = Box::into_raw(Box::new(State {
                out,
                options,
                block: None,
                streamed: HashSet::new(),
                change_xid: 0,
                row_open: None,
                relations: RelationCache::default(),
                pending: Vec::new(),
                txn: None,
                origin_names: HashMap::new(),
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

    fn time(&self, pg_timestamp: pg_sys::TimestampTz) -> i64 {
        if self.options.include_timestamps {
            pg_timestamp.saturating_add(PG_EPOCH_MICROS)
        } else {
            0
        }
    }

    /// # Safety
    ///
    /// `ctx` and `txn` are begin_cb's.
    pub(crate) unsafe fn begin(
        &mut self,
        ctx: *mut pg_sys::LogicalDecodingContext,
        txn: *mut pg_sys::ReorderBufferTXN,
    ) {
        self.pending.clear();
        self.out.begin_transaction();
        // SAFETY: begin_cb's transaction is valid for the call.
        let txn = unsafe { &*txn };
        let begin = Begin {
            xid: if self.options.include_xids { txn.xid.into_inner() } else { 0 },
            final_lsn: Lsn(txn.final_lsn),
            commit_time_us: self.time(crate::compat::commit_time(txn)),
        };
        let origin = if self.options.include_origin && txn.origin_id != 0 {
            // SAFETY: catalog lookup inside the decoding transaction.
            unsafe { self.origin_name(txn.origin_id) }.map(|n| (n, Lsn(txn.origin_lsn)))
        } else {
            None
        };
        self.txn = Some(Txn { begin, origin, written: false });
        if !self.options.skip_empty_xacts {
            // SAFETY: inside begin_cb.
            unsafe { self.ensure_begin(ctx, true) };
        }
    }

    /// Writes the transaction's Begin (and Origin) if not yet written.
    ///
    /// # Safety
    ///
    /// Inside a callback of the transaction, with its context.
    unsafe fn ensure_begin(&mut self, ctx: *mut pg_sys::LogicalDecodingContext, last: bool) {
        if self.block.is_some() {
            // SAFETY: caller's contract.
            unsafe { self.ensure_block(ctx) };
            return;
        }
        let Some(txn) = self.txn.as_mut().filter(|t| !t.written) else { return };
        txn.written = true;
        let (begin, origin) = (txn.begin, txn.origin.clone());
        // SAFETY: caller's contract.
        let written = unsafe {
            self.out.message(ctx, last && origin.is_none(), |mut out| {
                wire::write_begin(&mut out, &begin)
            })
        };
        written.unwrap_or_else(|e| report::encode_error("(begin)", &e.into()));
        if let Some((name, lsn)) = origin {
            // SAFETY: caller's contract.
            let written = unsafe {
                self.out.message(ctx, last, |mut out| {
                    wire::write_origin(&mut out, lsn, name.as_bytes())
                })
            };
            written.unwrap_or_else(|e| report::encode_error("(origin)", &e.into()));
        }
    }

    /// Writes the block's Stream Start if not yet written, and a Subtransaction message (after
    /// the pending rows of the one before) when the change being handed on belongs to another
    /// (sub)transaction than the messages written last.
    ///
    /// # Safety
    ///
    /// Inside a stream callback of the block, with its context.
    unsafe fn ensure_block(&mut self, ctx: *mut pg_sys::LogicalDecodingContext) {
        let Some(block) = self.block.as_mut() else { return };
        let (xid, change_xid) = (block.xid, self.change_xid);
        if !block.written {
            block.written = true;
            let first = self.streamed.insert(xid);
            // SAFETY: caller's contract.
            let written = unsafe {
                self.out
                    .message(ctx, false, |mut out| wire::write_stream_start(&mut out, xid, first))
            };
            written.unwrap_or_else(|e| report::encode_error("(stream start)", &e.into()));
        }
        let block = self.block.as_mut().expect("checked above");
        if block.subxid == change_xid {
            return;
        }
        block.subxid = change_xid;
        // SAFETY: caller's contract.
        unsafe {
            self.flush_pending(ctx);
            let written = self
                .out
                .message(ctx, false, |mut out| wire::write_subtransaction(&mut out, change_xid));
            written.unwrap_or_else(|e| report::encode_error("(subtransaction)", &e.into()));
        }
    }

    /// A block of the streamed transaction `txn` starts: its messages gather into a Bundle,
    /// and its Stream Start is written with its first message.
    ///
    /// # Safety
    ///
    /// `txn` is stream_start_cb's.
    pub(crate) unsafe fn stream_start(&mut self, txn: *mut pg_sys::ReorderBufferTXN) {
        // SAFETY: the callback's transaction is valid for the call.
        let xid = unsafe { (*txn).xid.into_inner() };
        self.drop_cut_row();
        self.pending.clear();
        self.txn = None;
        self.out.begin_transaction();
        self.block = Some(Block { xid, written: false, subxid: xid });
        self.change_xid = xid;
    }

    /// The block ends: its rows and a Stream Stop are written, with the Bundle.
    ///
    /// # Safety
    ///
    /// Inside stream_stop_cb, with its context.
    pub(crate) unsafe fn stream_stop(&mut self, ctx: *mut pg_sys::LogicalDecodingContext) {
        self.drop_cut_row();
        let written = self.block.take().is_some_and(|b| b.written);
        // SAFETY: caller's contract.
        unsafe {
            if written {
                self.flush_pending(ctx);
                let stopped =
                    self.out.message(ctx, true, |mut out| wire::write_stream_stop(&mut out));
                stopped.unwrap_or_else(|e| report::encode_error("(stream stop)", &e.into()));
            }
            let ended = self.out.end_transaction(ctx);
            ended.unwrap_or_else(|e| report::encode_error("(stream stop)", &e.into()));
        }
    }

    /// Drops the pending rows of a table whose row an ERROR cut off half way. PostgreSQL
    /// streams a transaction while it may still abort; when it finds that it did (a catalog
    /// read in the middle of a row fails with `ERRCODE_TRANSACTION_ROLLBACK`) it catches the
    /// error and ends the block (`stream_stop`) and decoding goes on. The table's pending rows
    /// all belong to that (sub)transaction — rows of another are written out before its first
    /// — and a Stream Abort for it follows: nothing of them is lost, and no batch is written
    /// with a column short of a value.
    fn drop_cut_row(&mut self) {
        let Some(relid) = self.row_open.take() else { return };
        if let Some(entry) = self.relations.get_mut(relid) {
            entry.encoder.discard();
        }
        self.pending.retain(|r| *r != relid);
    }

    /// Hands on a change of a streamed transaction, with the (sub)transaction it belongs to.
    ///
    /// # Safety
    ///
    /// The arguments are stream_change_cb's.
    pub(crate) unsafe fn stream_change(
        &mut self,
        ctx: *mut pg_sys::LogicalDecodingContext,
        relation: pg_sys::Relation,
        change: *mut pg_sys::ReorderBufferChange,
    ) {
        // SAFETY: the change and its transaction are valid for the callback.
        unsafe {
            self.change_xid = change_xid(change, self.change_xid);
            self.change(ctx, relation, change);
        }
    }

    /// Hands on a TRUNCATE of a streamed transaction.
    ///
    /// # Safety
    ///
    /// The arguments are stream_truncate_cb's.
    pub(crate) unsafe fn stream_truncate(
        &mut self,
        ctx: *mut pg_sys::LogicalDecodingContext,
        relations: &[pg_sys::Relation],
        change: *mut pg_sys::ReorderBufferChange,
    ) {
        // SAFETY: the change and its transaction are valid for the callback.
        unsafe {
            self.change_xid = change_xid(change, self.change_xid);
            self.truncate(ctx, relations, change);
        }
    }

    /// Hands on a transactional message of a streamed transaction. PostgreSQL does not say
    /// which subtransaction emitted it: it is counted in the top-level one.
    ///
    /// # Safety
    ///
    /// The arguments are stream_message_cb's.
    pub(crate) unsafe fn stream_message(
        &mut self,
        ctx: *mut pg_sys::LogicalDecodingContext,
        lsn: pg_sys::XLogRecPtr,
        transactional: bool,
        prefix: &[u8],
        content: &[u8],
    ) {
        if let Some(block) = &self.block {
            self.change_xid = block.xid;
        }
        // SAFETY: caller's contract.
        unsafe { self.message(ctx, lsn, transactional, prefix, content) }
    }

    /// A streamed transaction (`txn` top-level) or one of its subtransactions aborted.
    ///
    /// # Safety
    ///
    /// The arguments are stream_abort_cb's.
    pub(crate) unsafe fn stream_abort(
        &mut self,
        ctx: *mut pg_sys::LogicalDecodingContext,
        txn: *mut pg_sys::ReorderBufferTXN,
        abort_lsn: pg_sys::XLogRecPtr,
    ) {
        // SAFETY: the callback's transaction, and its top-level one, are valid for the call.
        let (xid, subxid) = unsafe { (top_xid(txn), (*txn).xid.into_inner()) };
        let known =
            if xid == subxid { self.streamed.remove(&xid) } else { self.streamed.contains(&xid) };
        // SAFETY: inside stream_abort_cb with its context.
        unsafe {
            if !known {
                crate::compat::update_progress(ctx, true);
                return;
            }
            let msg = StreamAbort { xid, subxid, abort_lsn: Lsn(abort_lsn) };
            let written =
                self.out.message(ctx, true, |mut out| wire::write_stream_abort(&mut out, &msg));
            written.unwrap_or_else(|e| report::encode_error("(stream abort)", &e.into()));
        }
    }

    /// A streamed transaction committed (every block of it was written before).
    ///
    /// # Safety
    ///
    /// The arguments are stream_commit_cb's.
    pub(crate) unsafe fn stream_commit(
        &mut self,
        ctx: *mut pg_sys::LogicalDecodingContext,
        txn: *mut pg_sys::ReorderBufferTXN,
        commit_lsn: pg_sys::XLogRecPtr,
    ) {
        // SAFETY: the callback's transaction is valid for the call.
        let txn = unsafe { &*txn };
        let xid = txn.xid.into_inner();
        // SAFETY: inside stream_commit_cb with its context.
        unsafe {
            if !self.streamed.remove(&xid) {
                // Nothing of it was sent: let the walsender report progress past it.
                crate::compat::update_progress(ctx, true);
                return;
            }
            let msg = StreamCommit {
                xid,
                commit_lsn: Lsn(commit_lsn),
                end_lsn: Lsn(txn.end_lsn),
                commit_time_us: self.time(crate::compat::commit_time(txn)),
            };
            let written =
                self.out.message(ctx, true, |mut out| wire::write_stream_commit(&mut out, &msg));
            written.unwrap_or_else(|e| report::encode_error("(stream commit)", &e.into()));
        }
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
        use pg_sys::ReorderBufferChangeType as Action;
        // SAFETY: change_cb's change is valid for the call; for INSERT, UPDATE and DELETE the
        // tuple arm of its union is the live one.
        let (action, tp, lsn) =
            unsafe { ((*change).action, (*change).data.tp, Lsn((*change).lsn)) };
        // SAFETY: the change's own tuple slots, valid for the callback.
        let tuple = |t: crate::compat::ChangeTuple| unsafe { crate::compat::change_tuple(t) };
        type Row = (ChangeOp, Option<*mut pg_sys::HeapTupleData>, Image);
        let (new, old) = (tuple(tp.newtuple), tuple(tp.oldtuple));
        let (first, second): (Option<Row>, Option<Row>) = match action {
            Action::REORDER_BUFFER_CHANGE_INSERT => {
                (new.map(|t| (ChangeOp::Insert, Some(t), Image::New)), None)
            }
            // PostgreSQL logs the old key only when it changed (or the whole row with FULL).
            Action::REORDER_BUFFER_CHANGE_UPDATE => (
                old.map(|t| (ChangeOp::UpdateBefore, Some(t), Image::Old)),
                new.map(|t| (ChangeOp::Update, Some(t), Image::New)),
            ),
            // Without an old tuple (REPLICA IDENTITY NOTHING, or no key) the row is all missing.
            Action::REORDER_BUFFER_CHANGE_DELETE => {
                (Some((ChangeOp::Delete, old, Image::Old)), None)
            }
            _ => return,
        };
        // SAFETY: everything below runs inside change_cb with its context and relation; a
        // partition root is opened for the call and closed at its end.
        unsafe {
            self.cache_entry(ctx, relation);
            let entry = self.relations.get_mut((*relation).rd_id).expect("cached above");
            if !entry.included {
                return;
            }
            // A partition's rows are the root's (publish-via-root): they go into the root's
            // batch, in the root's layout, so rows moving between partitions stay in order.
            // Old images carry the partition's identity columns.
            let route = entry.route.as_ref().map(|r| (r.root, r.map, r.identity.clone()));
            let (relation, map, root, identity) = match route {
                None => (relation, std::ptr::null_mut(), None, None),
                Some((root_oid, map, identity)) => {
                    let root = pg_sys::RelationIdGetRelation(root_oid);
                    if root.is_null() {
                        report::partition_root_missing(&entry.qualified_name, root_oid);
                    }
                    self.cache_entry(ctx, root);
                    // The root decides (a rename of the root leaves its partitions' entries
                    // as they were).
                    if !self.relations.get_mut(root_oid).expect("cached above").included {
                        pg_sys::RelationClose(root);
                        return;
                    }
                    (root, map, Some(root), Some(identity))
                }
            };
            let relid = (*relation).rd_id;
            self.ensure_begin(ctx, false);
            self.ensure_schema(ctx, relid);
            let images = usize::from(first.is_some()) + usize::from(second.is_some());
            let batch_rows = self.options.batch_rows;
            let entry = self.relations.get_mut(relid).expect("cached above");
            // The batching policy (shared with the wal2json fallback): a change's images stay
            // in one batch.
            if !entry.encoder.room_for(images, batch_rows) || !entry.encoder.accepts(lsn) {
                flush(ctx, &mut self.out, entry, false);
            }
            if entry.encoder.rows() == 0 && !self.pending.contains(&relid) {
                self.pending.push(relid);
            }
            self.row_open = Some(relid);
            for (op, tuple, image) in first.into_iter().chain(second) {
                let old_cx = pg_sys::MemoryContextSwitchTo(self.change_cx);
                // In the change context, reset below.
                let tuple = match tuple {
                    Some(t) if !map.is_null() => Some(pg_sys::execute_attr_map_tuple(t, map)),
                    t => t,
                };
                let identity = identity.as_deref().filter(|i| i.len() == entry.columns.len());
                append_row(entry, relation, tuple, op, lsn, (image, identity), self.utf8_db);
                pg_sys::MemoryContextSwitchTo(old_cx);
                // Most rows allocate nothing (values read in place): skip the reset then.
                if !(*self.change_cx).isReset {
                    pg_sys::MemoryContextReset(self.change_cx);
                }
            }
            self.row_open = None;
            if entry.encoder.batch_full(batch_rows) {
                flush(ctx, &mut self.out, entry, true);
            }
            if let Some(root) = root {
                pg_sys::RelationClose(root);
            }
        }
    }

    /// # Safety
    ///
    /// The arguments are truncate_cb's.
    pub(crate) unsafe fn truncate(
        &mut self,
        ctx: *mut pg_sys::LogicalDecodingContext,
        relations: &[pg_sys::Relation],
        change: *mut pg_sys::ReorderBufferChange,
    ) {
        // SAFETY: for a TRUNCATE change the truncate arm of the union is the live one.
        let t = unsafe { (*change).data.truncate };
        let mut relids = Vec::new();
        // SAFETY: inside truncate_cb with its context and open relations.
        unsafe {
            let truncated: Vec<pg_sys::Oid> = relations.iter().map(|r| (**r).rd_id).collect();
            for &relation in relations {
                let relid = (*relation).rd_id;
                self.cache_entry(ctx, relation);
                let entry = self.relations.get_mut(relid).expect("cached above");
                // With publish-via-root, a partition truncated with an ancestor (a TRUNCATE of
                // the partitioned table) is covered by the ancestor's entry; one truncated on
                // its own is reported under its own name: its root lost only its rows.
                let covered = entry
                    .route
                    .as_ref()
                    .is_some_and(|r| r.ancestors.iter().any(|a| truncated.contains(a)));
                if entry.included && !covered {
                    self.ensure_begin(ctx, false);
                    self.ensure_schema(ctx, relid);
                    relids.push(relid.to_u32());
                }
            }
            if relids.is_empty() {
                return;
            }
            self.flush_pending(ctx);
            let msg = Truncate { cascade: t.cascade, restart_identity: t.restart_seqs, relids };
            let written =
                self.out.message(ctx, true, |mut out| wire::write_truncate(&mut out, &msg));
            written.unwrap_or_else(|e| report::encode_error("(truncate)", &e.into()));
        }
    }

    /// # Safety
    ///
    /// The arguments are message_cb's; `prefix` is NUL-terminated and `content` valid for
    /// its length.
    pub(crate) unsafe fn message(
        &mut self,
        ctx: *mut pg_sys::LogicalDecodingContext,
        lsn: pg_sys::XLogRecPtr,
        transactional: bool,
        prefix: &[u8],
        content: &[u8],
    ) {
        if !self.options.message_wanted(&String::from_utf8_lossy(prefix)) {
            return;
        }
        // SAFETY: inside message_cb with its context.
        unsafe {
            if transactional {
                // In its transaction, after the rows decoded before it.
                self.ensure_begin(ctx, false);
                self.flush_pending(ctx);
            }
            let written = self.out.message(ctx, true, |mut out| {
                wire::write_logical_message(&mut out, transactional, Lsn(lsn), prefix, content)
            });
            written.unwrap_or_else(|e| report::encode_error("(message)", &e.into()));
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
        let written = self.txn.take().is_some_and(|t| t.written);
        if !written {
            // Nothing was sent (skip-empty-xacts): let the walsender report progress past it
            // in keepalives, so a consumer can confirm it and the slot does not lag.
            // SAFETY: inside commit_cb with its context.
            unsafe {
                let ended = self.out.end_transaction(ctx);
                ended.unwrap_or_else(|e| report::encode_error("(commit)", &e.into()));
                crate::compat::update_progress(ctx, true);
            }
            return;
        }
        // SAFETY: inside commit_cb with its context.
        unsafe { self.flush_pending(ctx) };
        // SAFETY: commit_cb's transaction is valid for the call.
        let txn = unsafe { &*txn };
        let msg = Commit {
            commit_lsn: Lsn(commit_lsn),
            end_lsn: Lsn(txn.end_lsn),
            commit_time_us: self.time(crate::compat::commit_time(txn)),
        };
        // SAFETY: inside commit_cb with its context.
        let written = unsafe {
            self.out
                .message(ctx, true, |mut out| wire::write_commit(&mut out, &msg))
                .and_then(|()| self.out.end_transaction(ctx))
        };
        written.unwrap_or_else(|e| report::encode_error("(commit)", &e.into()));
    }

    /// Whether changes from replication origin `origin_id` are dropped (`filter-origins`).
    ///
    /// # Safety
    ///
    /// Inside filter_by_origin_cb.
    pub(crate) unsafe fn origin_filtered(&mut self, origin_id: pg_sys::RepOriginId) -> bool {
        if self.options.filter_origins.is_empty() || origin_id == 0 {
            return false;
        }
        // SAFETY: caller's contract.
        match unsafe { self.origin_name(origin_id) } {
            Some(name) => self.options.origin_filtered(&name),
            None => self.options.filter_origins.iter().any(|o| o == "*"),
        }
    }

    /// The name of a replication origin, cached.
    ///
    /// # Safety
    ///
    /// Inside a callback (catalog access).
    unsafe fn origin_name(&mut self, origin_id: pg_sys::RepOriginId) -> Option<String> {
        if let Some(name) = self.origin_names.get(&origin_id) {
            return name.clone();
        }
        let mut name: *mut std::ffi::c_char = std::ptr::null_mut();
        // SAFETY: a catalog lookup with missing_ok; the name is a palloc'd C string.
        let found = unsafe { pg_sys::replorigin_by_oid(origin_id, true, &mut name) };
        // SAFETY: NULL or a valid C string.
        let name = found.then(|| unsafe { cstr_or(name, "") });
        self.origin_names.insert(origin_id, name.clone());
        name
    }

    /// The cache entry for `relation`, built if missing. An entry made stale by a relcache
    /// invalidation is rebuilt: if the table's description changed, the old entry's pending
    /// rows (encoded for the schema the consumer holds) are written out first and the new
    /// entry sends its Schema before its first row; if nothing changed, the old entry stays,
    /// pending rows and all.
    ///
    /// # Safety
    ///
    /// Inside a callback with its context; `relation` is open.
    unsafe fn cache_entry(
        &mut self,
        ctx: *mut pg_sys::LogicalDecodingContext,
        relation: pg_sys::Relation,
    ) {
        self.relations.mark_stale();
        // SAFETY: caller's contract.
        let relid = unsafe { (*relation).rd_id };
        let stale = match self.relations.get_mut(relid) {
            Some(e) if !e.stale => return,
            Some(_) => true,
            None => false,
        };
        // SAFETY: caller's contract; session_cx outlives every entry.
        let mut fresh = unsafe { RelEntry::build(relation, self.session_cx, &self.options) };
        if stale {
            let old = self.relations.get_mut(relid).expect("checked above");
            if old.same_shape(&fresh) {
                old.stale = false;
                // The root may have changed in ways the partition's description does not
                // show: take the fresh conversion map.
                if let Some(r) = std::mem::replace(&mut old.route, fresh.route.take()) {
                    // SAFETY: the old route is no longer referred to.
                    unsafe { r.free() };
                }
                return;
            }
            // SAFETY: caller's contract.
            unsafe { flush(ctx, &mut self.out, old, false) };
        }
        if let Some(old) = self.relations.insert(relid, fresh)
            && let Some(r) = old.route
        {
            // SAFETY: the replaced entry's route is no longer referred to.
            unsafe { r.free() };
        }
    }

    /// Writes the Schema message of a cached relation if this session has not yet.
    ///
    /// # Safety
    ///
    /// Inside a callback, with its context.
    unsafe fn ensure_schema(
        &mut self,
        ctx: *mut pg_sys::LogicalDecodingContext,
        relid: pg_sys::Oid,
    ) {
        let entry = self.relations.get_mut(relid).expect("cached before");
        if entry.schema_sent {
            return;
        }
        // SAFETY: caller's contract.
        let written = unsafe {
            self.out.message(ctx, false, |mut out| write_schema_message(&mut out, &entry.desc))
        };
        written.unwrap_or_else(|e| report::encode_error(&entry.qualified_name, &e));
        entry.schema_sent = true;
    }

    /// Writes every pending batch, in the order the tables were first touched.
    ///
    /// # Safety
    ///
    /// Inside a callback, with its context.
    unsafe fn flush_pending(&mut self, ctx: *mut pg_sys::LogicalDecodingContext) {
        for relid in std::mem::take(&mut self.pending) {
            if let Some(entry) = self.relations.get_mut(relid) {
                // SAFETY: caller's contract.
                unsafe { flush(ctx, &mut self.out, entry, false) };
            }
        }
    }
}

/// Deforms `tuple` (if any) and appends it as one row. `image` says which version of the
/// row it is and, for a partition's rows reported as its root's, which of the root's columns
/// the partition's old images carry.
///
/// # Safety
///
/// `tuple` is a valid heap tuple of `relation`, whose description `entry` holds; the current
/// memory context is reset by the caller afterwards.
unsafe fn append_row(
    entry: &mut RelEntry,
    relation: pg_sys::Relation,
    tuple: Option<*mut pg_sys::HeapTupleData>,
    op: ChangeOp,
    lsn: Lsn,
    (image, identity): (Image, Option<&[bool]>),
    utf8_db: bool,
) {
    if let Some(tuple) = tuple {
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
    }
    if let Err(e) = entry.encoder.start_row(op, lsn) {
        report::encode_error(&entry.qualified_name, &e);
    }
    for (i, plan) in entry.columns.iter_mut().enumerate() {
        let (value, null) = (entry.values[plan.att], entry.nulls[plan.att]);
        let in_identity = identity.map_or(plan.in_identity, |id| id[i]);
        let missing = tuple.is_none()
            || (image == Image::Old && !in_identity)
            // SAFETY: a non-NULL varlena Datum of the tuple.
            || (!null && plan.varlena && unsafe { is_unchanged_toast(value) });
        if missing {
            entry.encoder.column(i).append_null();
            entry.encoder.mark_missing(i);
        } else if null {
            entry.encoder.column(i).append_null();
        } else {
            // SAFETY: a non-NULL Datum of this column, read by the reader made for its type.
            let appended = unsafe { plan.reader.append(value, entry.encoder.column(i), utf8_db) };
            if appended == Appended::Unrepresentable {
                entry.encoder.mark_unrepresentable(i);
            }
        }
    }
}

/// Writes `entry`'s pending rows as one Batch message.
///
/// # Safety
///
/// Inside an output plugin callback, with its context.
unsafe fn flush(
    ctx: *mut pg_sys::LogicalDecodingContext,
    out: &mut Output,
    entry: &mut RelEntry,
    last: bool,
) {
    if entry.encoder.rows() == 0 {
        return;
    }
    let large = entry.encoder.approx_bytes() >= crate::output::DIRECT_BYTES;
    let encoder = &mut entry.encoder;
    // SAFETY: caller's contract.
    let written = unsafe {
        if large {
            out.large_message(ctx, last, |mut w| encoder.write_batch(&mut w))
        } else {
            out.message(ctx, last, |mut w| encoder.write_batch(&mut w))
        }
    };
    if let Err(e) = written {
        report::encode_error(&entry.qualified_name, &e);
    }
}

/// The xid of the (sub)transaction a change belongs to (`fallback` if PostgreSQL does not say).
///
/// # Safety
///
/// `change` is valid for the callback.
unsafe fn change_xid(change: *mut pg_sys::ReorderBufferChange, fallback: u32) -> u32 {
    // SAFETY: the change, and its transaction when set, are valid for the callback.
    unsafe {
        let txn = (*change).txn;
        if txn.is_null() { fallback } else { (*txn).xid.into_inner() }
    }
}

/// The xid of `txn`'s top-level transaction (its own for a top-level one).
///
/// # Safety
///
/// `txn` is valid for the callback.
unsafe fn top_xid(txn: *mut pg_sys::ReorderBufferTXN) -> u32 {
    // SAFETY: a subtransaction's `toptxn` points to its live top-level transaction.
    unsafe {
        let top = (*txn).toptxn;
        if top.is_null() { (*txn).xid.into_inner() } else { (*top).xid.into_inner() }
    }
}

/// Drops the session state; the reset callback of the decoding context's memory context.
#[pgrx::pg_guard]
unsafe extern "C-unwind" fn free_state(arg: *mut std::ffi::c_void) {
    // SAFETY: `arg` is the pointer State::attach leaked with Box::into_raw; this callback runs
    // exactly once, when the owning memory context is reset or deleted.
    drop(unsafe { Box::from_raw(arg.cast::<State>()) });
    RelationCache::end_session();
}
