//! wal2arrow: a PostgreSQL logical decoding output plugin that writes row changes as Apache
//! Arrow IPC record batches.
//!
//! PostgreSQL loads the plugin by name (`CREATE_REPLICATION_SLOT s LOGICAL wal2arrow`) and
//! calls [`_PG_output_plugin_init`] to learn its callbacks. What the plugin writes is the wire
//! format of the `wal2arrow-schema` crate (`wire` module docs): per transaction a Begin (and an
//! Origin for replayed transactions), a Schema for each table the first time the session sees
//! it (and again after the table changes), Batch messages holding up to `batch-rows` rows of
//! one table each — inserts, updates with their old images, deletes — Truncate and logical
//! Messages in their place, and a Commit.
//!
//! Layout, after PostgreSQL's pgoutput: [`callbacks`] are the `#[pg_guard]`ed entry points and
//! stay thin; [`state`] owns the per-session state and its lifetime; [`relation`] is the
//! relation cache with its invalidation; [`datum`] reads Datums into Arrow builders;
//! [`output`] writes into the walsender's buffer; [`report`] turns errors into `ERROR`s with
//! hints. The encoding itself is `wal2arrow_schema::encode`, which has no PostgreSQL in it.
//! All `unsafe` code of the project lives in these modules.

use pgrx::prelude::*;

mod callbacks;
mod compat;
mod datum;
mod output;
mod relation;
mod report;
mod state;

pgrx::pg_module_magic!();

/// The entry point PostgreSQL looks up when it loads an output plugin: fills in the callbacks.
///
/// # Safety
///
/// Called by PostgreSQL with a valid, writable `OutputPluginCallbacks`.
#[pg_guard]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn _PG_output_plugin_init(cb: *mut pg_sys::OutputPluginCallbacks) {
    // SAFETY: PostgreSQL passes a valid callbacks struct it owns for the duration of the call.
    let cb = unsafe { &mut *cb };
    cb.startup_cb = Some(callbacks::startup);
    cb.begin_cb = Some(callbacks::begin);
    cb.change_cb = Some(callbacks::change);
    cb.truncate_cb = Some(callbacks::truncate);
    cb.message_cb = Some(callbacks::message);
    cb.filter_by_origin_cb = Some(callbacks::filter_by_origin);
    cb.commit_cb = Some(callbacks::commit);
    cb.shutdown_cb = Some(callbacks::shutdown);
    // In-progress transactions (PostgreSQL 14+), used only when the consumer asks (`streaming`).
    cb.stream_start_cb = Some(callbacks::stream_start);
    cb.stream_stop_cb = Some(callbacks::stream_stop);
    cb.stream_change_cb = Some(callbacks::stream_change);
    cb.stream_truncate_cb = Some(callbacks::stream_truncate);
    cb.stream_message_cb = Some(callbacks::stream_message);
    cb.stream_abort_cb = Some(callbacks::stream_abort);
    cb.stream_commit_cb = Some(callbacks::stream_commit);
}
