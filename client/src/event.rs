//! The event model of a change stream: transactions ([`TxnBegin`], [`TxnCommit`]), their
//! row changes as Arrow batches ([`ChangeBatch`]), truncates, logical messages, and
//! [`Event::Restarted`] after a reconnection.

use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_buffer::Buffer;
use wal2arrow_schema::{Lsn, Relation};

/// Where an event sits in the stream: its transaction's commit LSN and its ordinal within the
/// transaction. Unique and ordered; after a restart, replayed events have the positions they
/// had the first time, so a sink that stores the last position it applied can drop them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    /// The transaction's commit LSN.
    pub commit_lsn: Lsn,
    /// The event's ordinal in the transaction.
    pub ordinal: u32,
}

/// A transaction started (its changes follow, up to [`Event::Commit`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnBegin {
    /// Transaction ID (0 with `include-xids` off).
    pub xid: u32,
    /// LSN of its commit record.
    pub commit_lsn: Lsn,
    /// Commit time, microseconds since the Unix epoch (0 with `include-timestamps` off).
    pub commit_time_us: i64,
    /// The replication origin the transaction was replayed from, if any (with
    /// `include-origin`, the default). Set on the [`ChangeBatch`]es, not on this event, which
    /// precedes the plugin's Origin message.
    pub origin: Option<String>,
}

/// A transaction committed: all its batches were delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TxnCommit {
    /// Transaction ID.
    pub xid: u32,
    /// LSN of its commit record.
    pub commit_lsn: Lsn,
    /// LSN just past the commit: [`ChangeStream::ack`] this once the transaction is durably
    /// handled.
    pub end_lsn: Lsn,
    /// Commit time, microseconds since the Unix epoch.
    pub commit_time_us: i64,
    /// How many events (batches, truncates, transactional messages) the transaction had.
    pub batches: u32,
}

/// Rows of one table changed by one transaction, as an Arrow [`RecordBatch`].
#[derive(Clone, Debug)]
pub struct ChangeBatch {
    /// The table (its schema, name and OID).
    pub relation: Arc<Relation>,
    /// Transaction ID.
    pub xid: u32,
    /// LSN of the transaction's commit record.
    pub commit_lsn: Lsn,
    /// Commit time, microseconds since the Unix epoch.
    pub commit_time_us: i64,
    /// The replication origin the transaction was replayed from, if any.
    pub origin: Option<Arc<str>>,
    /// Position of this event within its transaction (0, 1, …; batches, truncates and
    /// transactional messages count): with `commit_lsn` it identifies the batch exactly,
    /// across restarts.
    pub ordinal: u32,
    /// The rows: the table's columns, then `_op` (`insert`, `update`, `delete`,
    /// `update_before`), `_lsn` (each row's change LSN; absent with `include-lsn` off),
    /// `_missing` (the columns whose value the change does not carry) and `_unrepresentable`
    /// (those whose value the Arrow type cannot hold); see [`missing`](Self::missing) and
    /// [`unrepresentable`](Self::unrepresentable).
    pub batch: RecordBatch,
    /// For an initial snapshot's `read` rows: the range of heap pages they were copied from
    /// (a sink that records finished ranges lets an interrupted snapshot resume, see
    /// [`SnapshotEvent::ChunkDone`](crate::SnapshotEvent::ChunkDone)).
    pub snapshot_chunk: Option<Arc<ChunkId>>,
    /// Only with [`InProgress::Deliver`](crate::InProgress::Deliver): the batch belongs to a
    /// transaction still in progress, to this (sub)transaction; `commit_lsn` is
    /// [`Lsn::INVALID`] and `commit_time_us` 0 until [`Event::StreamCommit`] says them (or
    /// [`Event::StreamAbort`] drops the batch). `None` for committed transactions.
    pub in_progress: Option<u32>,
    pub(crate) payload: Buffer,
    pub(crate) source_bytes: usize,
}

/// One range of heap pages an initial snapshot copies: the table that holds the rows (a
/// partition's own name when its rows are reported as its root's), its storage file
/// (`pg_relation_filenode`: a rewrite — `VACUUM FULL`, `CLUSTER`, a rewriting `ALTER TABLE` —
/// moves every row to a new one, and the ranges of the old mean nothing) and the range's first
/// page. With the snapshot's `chunk_pages`, it names the same rows' place in every run.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId {
    /// `schema.table`, each part quoted as SQL needs it.
    pub heap: String,
    /// The heap's `relfilenode`.
    pub file: u32,
    /// The range's first heap page.
    pub first_page: u64,
}

impl std::fmt::Display for ChunkId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}#{}@{}", self.heap, self.file, self.first_page)
    }
}

impl std::str::FromStr for ChunkId {
    type Err = String;

    /// Parses what [`Display`](std::fmt::Display) wrote: `heap#file@first_page`.
    fn from_str(s: &str) -> std::result::Result<ChunkId, String> {
        let bad = || format!("not a chunk: {s:?}");
        let (rest, page) = s.rsplit_once('@').ok_or_else(bad)?;
        let (heap, file) = rest.rsplit_once('#').ok_or_else(bad)?;
        Ok(ChunkId {
            heap: heap.to_owned(),
            file: file.parse().map_err(|_| bad())?,
            first_page: page.parse().map_err(|_| bad())?,
        })
    }
}

impl ChangeBatch {
    /// A change batch built outside a stream (tests of sinks and routers); not a stable API.
    #[doc(hidden)]
    pub fn for_tests(
        relation: Arc<Relation>,
        batch: RecordBatch,
        commit_lsn: Lsn,
        ordinal: u32,
    ) -> ChangeBatch {
        ChangeBatch {
            relation,
            xid: 7,
            commit_lsn,
            commit_time_us: 0,
            origin: None,
            ordinal,
            batch,
            snapshot_chunk: None,
            in_progress: None,
            payload: Buffer::from_vec(Vec::<u8>::new()),
            source_bytes: 0,
        }
    }

    /// A batch of rows built by the consumer rather than decoded from the stream (a
    /// backfill's `read` rows, delivered inside a transaction of the stream).
    pub fn new(
        relation: Arc<Relation>,
        batch: RecordBatch,
        xid: u32,
        commit_lsn: Lsn,
        commit_time_us: i64,
        ordinal: u32,
    ) -> ChangeBatch {
        ChangeBatch {
            relation,
            xid,
            commit_lsn,
            commit_time_us,
            origin: None,
            ordinal,
            batch,
            snapshot_chunk: None,
            in_progress: None,
            payload: Buffer::from_vec(Vec::<u8>::new()),
            source_bytes: 0,
        }
    }

    /// `schema.table`.
    pub fn table(&self) -> &str {
        &self.relation.qualified_name
    }

    /// Number of rows.
    pub fn num_rows(&self) -> usize {
        self.batch.num_rows()
    }

    /// The rows without the system columns: exactly the table's columns.
    pub fn table_rows(&self) -> RecordBatch {
        let n = self.relation.table_columns();
        self.batch.project(&(0..n).collect::<Vec<_>>()).expect("table columns are in range")
    }

    /// The received XLogData payload the batch's arrays point into (empty for the wal2json
    /// fallback, whose batches are built here rather than borrowed).
    pub fn payload(&self) -> &Buffer {
        &self.payload
    }

    /// How many bytes the server sent for these rows: the payload's size, or with the
    /// wal2json fallback the size of the JSON the rows were parsed from.
    pub fn source_bytes(&self) -> usize {
        self.source_bytes
    }

    /// The batch's position, for dropping replayed batches after a restart.
    pub fn position(&self) -> Position {
        Position { commit_lsn: self.commit_lsn, ordinal: self.ordinal }
    }

    /// The names of the columns whose value row `row` does not carry (`_missing`): unchanged
    /// TOAST values in new images, columns outside the key in old images, every column of a
    /// DELETE without any identity. Their slots in the value columns are NULL, but the values
    /// are not NULL — they were not sent: a reader rebuilding rows keeps what it has.
    pub fn missing(&self, row: usize) -> Vec<String> {
        names_at(&self.batch, self.relation.missing_index(), row)
    }

    /// The names of the columns whose value row `row` carried but the column's Arrow type
    /// cannot hold (`_unrepresentable`): `NaN` in a `Decimal128` column (for an array, its
    /// elements that cannot be held are NULL), and with the wal2json fallback what JSON cannot
    /// carry. Their slots are NULL, but the values are neither NULL nor unchanged; ask for
    /// `numeric-as-string` to receive such values exactly.
    pub fn unrepresentable(&self, row: usize) -> Vec<String> {
        names_at(&self.batch, self.relation.missing_index() + 1, row)
    }
}

/// The names listed in row `row` of a `List<Utf8>` column.
fn names_at(batch: &RecordBatch, column: usize, row: usize) -> Vec<String> {
    use arrow_array::Array;
    use arrow_array::cast::AsArray;
    let list = batch.column(column).as_list::<i32>();
    if list.is_null(row) {
        return Vec::new();
    }
    let names = list.value(row);
    let names = names.as_string::<i32>();
    (0..names.len()).map(|i| names.value(i).to_owned()).collect()
}

/// Tables truncated by one `TRUNCATE` command.
#[derive(Clone, Debug)]
pub struct TruncateEvent {
    /// The tables (those the `tables` option captures), cascaded ones included.
    pub relations: Vec<Arc<Relation>>,
    /// `TRUNCATE … CASCADE`; `None` when the plugin does not say (wal2json).
    pub cascade: Option<bool>,
    /// `TRUNCATE … RESTART IDENTITY`; `None` when the plugin does not say (wal2json).
    pub restart_identity: Option<bool>,
    /// Transaction ID.
    pub xid: u32,
    /// LSN of the transaction's commit record.
    pub commit_lsn: Lsn,
    /// Position within the transaction (see [`ChangeBatch::ordinal`]).
    pub ordinal: u32,
    /// As [`ChangeBatch::in_progress`].
    pub in_progress: Option<u32>,
}

/// A logical decoding message, from `pg_logical_emit_message(transactional, prefix, content)`.
#[derive(Clone, Debug)]
pub struct LogicalMessage {
    /// Transactional messages arrive inside their transaction, when it commits; others arrive
    /// at once, outside any transaction, whether or not the transaction that sent them commits.
    pub transactional: bool,
    /// The message's LSN.
    pub lsn: Lsn,
    /// The prefix (filtered by the `add-msg-prefixes` / `filter-msg-prefixes` options).
    pub prefix: String,
    /// The content: a slice of the received payload.
    pub content: Buffer,
    /// For transactional messages: the transaction's ID, commit LSN and position in it.
    pub txn: Option<(u32, Lsn, u32)>,
}

impl LogicalMessage {
    /// The position to acknowledge once a non-transactional message is handled: just past it.
    /// (Transactional messages are acknowledged with their transaction's commit.)
    pub fn ack_lsn(&self) -> Lsn {
        Lsn(self.lsn.0 + 1)
    }
}

/// One event of the change stream. New kinds may be added: match with a wildcard arm.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Event {
    /// A transaction begins.
    Begin(TxnBegin),
    /// A table's schema, sent before its first batch in the session and after it changes.
    Relation(Arc<Relation>),
    /// Changed rows of one table.
    Change(ChangeBatch),
    /// Tables were truncated.
    Truncate(TruncateEvent),
    /// A logical decoding message.
    Message(LogicalMessage),
    /// The transaction committed.
    Commit(TxnCommit),
    /// Progress of an initial snapshot (see [`crate::snapshot`]): a table begins or ends, or
    /// the whole snapshot does.
    Snapshot(crate::snapshot::SnapshotEvent),
    /// Only with [`InProgress::Deliver`](crate::InProgress::Deliver): a transaction whose
    /// events were delivered in progress aborted (`subxid == xid`: drop all its events), or one
    /// of its subtransactions was rolled back to its savepoint (drop that subtransaction's
    /// events, those whose `in_progress` is `subxid`).
    StreamAbort {
        /// The top-level transaction.
        xid: u32,
        /// The aborted (sub)transaction.
        subxid: u32,
    },
    /// Only with [`InProgress::Deliver`](crate::InProgress::Deliver): a transaction whose
    /// events were delivered in progress committed; `batches` counts the events delivered for
    /// it (those of rolled-back subtransactions included). Acknowledge `end_lsn` once they
    /// are durably handled.
    StreamCommit(TxnCommit),
    /// The connection was lost and re-established (by [`crate::CdcStream`]): everything after
    /// the acknowledged position `from` is delivered again, starting with a Begin. Drop any
    /// transaction received only in part. During an initial snapshot (`from` is
    /// [`Lsn::INVALID`]): the snapshot was lost before its commit, and a new one follows,
    /// whole — drop the rows of the lost one.
    Restarted {
        /// The position the stream resumed from.
        from: Lsn,
        /// Why the connection was lost.
        reason: String,
    },
}

/// An undecoded frame of a replication stream ([`ChangeStream::next_raw`]).
#[derive(Clone, Debug)]
pub enum RawFrame {
    /// XLogData: the plugin's bytes, and the WAL positions the server sent with them.
    Data {
        /// The position of the data.
        wal_start: Lsn,
        /// The server's end of WAL as it sent them.
        wal_end: Lsn,
        /// The plugin's output.
        payload: Buffer,
    },
    /// A keepalive: the server has sent everything up to `wal_end`.
    Keepalive {
        /// The server's position.
        wal_end: Lsn,
    },
}
