//! Streamed transactions: the blocks of transactions PostgreSQL sends before they commit
//! (`streaming`, wire version 4), kept until their Stream Commit or Abort.
//!
//! By default ([`InProgress::Buffer`]) a streamed transaction's batches, truncates and
//! messages are kept — in memory up to a budget shared by all streamed transactions, then in
//! a spill file of the transaction's own (a batch's wire message bytes, decoded again when
//! read back) — and handed on only at its commit, as an ordinary transaction: Begin, its
//! events in order (the Schema messages its blocks carried among them, as
//! [`Event::Relation`]), Commit. An abort drops the transaction; a subtransaction's abort drops
//! exactly that subtransaction's events. Users see committed data only, in commit order, and
//! memory stays bounded whatever the transaction's size.
//!
//! [`InProgress::Deliver`] hands each event on as it arrives instead, marked with its
//! (sub)transaction, followed by [`Event::StreamAbort`] or [`Event::StreamCommit`]: for
//! applications that stage data themselves.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow_buffer::{Buffer, MutableBuffer};
use wal2arrow_schema::decode::decode_batch_message;
use wal2arrow_schema::{DecodedBatch, Lsn, Relation, StreamAbort, StreamCommit};

use crate::error::{Error, Result};
use crate::event::{ChangeBatch, Event, LogicalMessage, TruncateEvent, TxnBegin, TxnCommit};

/// Default memory for streamed transactions' buffered batches (all of them together): 48 MiB,
/// so that a consumer holding one at the limit stays within 100 MB of resident memory.
pub const DEFAULT_STREAM_MEMORY: usize = 48 << 20;

/// What a stream does with transactions PostgreSQL sends before they commit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InProgress {
    /// Keep them until they commit (in memory up to `memory` bytes for all of them, then in
    /// spill files in `spill_dir`), then hand them on as ordinary transactions; drop them
    /// when they abort. The default.
    Buffer {
        /// Bytes of received batches kept in memory, for all streamed transactions together.
        memory: usize,
        /// Where spill files go; each is removed when its transaction ends.
        spill_dir: PathBuf,
    },
    /// Hand each event on as it arrives: change batches and truncates with
    /// [`in_progress`](ChangeBatch::in_progress) set and no commit LSN, then
    /// [`Event::StreamAbort`] (drop the subtransaction's events, or all) or
    /// [`Event::StreamCommit`]. After [`Event::Restarted`] drop whatever you staged of
    /// transactions that had not ended: the server sends them again from their start.
    Deliver,
}

impl Default for InProgress {
    fn default() -> Self {
        InProgress::Buffer { memory: DEFAULT_STREAM_MEMORY, spill_dir: std::env::temp_dir() }
    }
}

/// Figures on streamed transactions, for progress reports and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamedStats {
    /// Streamed transactions received (first blocks).
    pub transactions: u64,
    /// Blocks received.
    pub blocks: u64,
    /// Streamed transactions that committed.
    pub committed: u64,
    /// Streamed transactions that aborted.
    pub aborted: u64,
    /// Subtransactions rolled back inside streamed transactions.
    pub subtransactions_aborted: u64,
    /// Bytes of batches written to spill files.
    pub spilled_bytes: u64,
    /// Bytes of batches now kept in memory.
    pub memory: u64,
    /// The most bytes ever kept in memory.
    pub peak_memory: u64,
}

/// One event of a streamed transaction, kept until it ends.
#[derive(Debug)]
struct Item {
    subxid: u32,
    kind: ItemKind,
}

#[derive(Debug)]
enum ItemKind {
    /// A Schema message sent inside the block: handed on in its place, at the commit (a
    /// table renamed or created by a transaction that aborts is never shown).
    Relation(Arc<Relation>),
    Batch {
        relation: Arc<Relation>,
        data: Data,
        source_bytes: usize,
    },
    Truncate(TruncateEvent),
    Message(LogicalMessage),
}

#[derive(Debug)]
enum Data {
    Memory(DecodedBatch, Buffer),
    Spilled { offset: u64, len: usize },
}

/// A spill file, removed when dropped.
#[derive(Debug)]
struct SpillFile {
    path: PathBuf,
    file: File,
    end: u64,
}

/// The prefix of streamed transactions' spill files: `wal2arrow-xact-<pid>-<n>-<xid>`.
const SPILL_PREFIX: &str = "wal2arrow-xact-";

/// Removes the spill files that processes no longer running left in `dir` (a consumer killed
/// with its transactions in progress), once per directory and process. Linux only (it asks
/// `/proc` whether a process runs); elsewhere such files stay.
fn remove_stale_spill_files(dir: &Path) {
    static DONE: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());
    let Ok(mut done) = DONE.lock() else { return };
    if done.iter().any(|d| d == dir) || !Path::new("/proc/self").exists() {
        return;
    }
    done.push(dir.to_owned());
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(SPILL_PREFIX))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => tracing::info!(
                    path = %entry.path().display(),
                    "removed the spill file of a consumer that is gone"
                ),
                Err(e) => tracing::warn!(
                    path = %entry.path().display(),
                    error = %e,
                    "could not remove the spill file of a consumer that is gone"
                ),
            }
        }
    }
}

impl SpillFile {
    fn create(dir: &Path, xid: u32) -> Result<SpillFile> {
        static N: AtomicU64 = AtomicU64::new(0);
        remove_stale_spill_files(dir);
        let path = dir.join(format!(
            "{SPILL_PREFIX}{}-{}-{xid}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let file = std::fs::OpenOptions::new()
            .create_new(true)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| spill_error(&path, "cannot create", e))?;
        Ok(SpillFile { path, file, end: 0 })
    }

    fn append(&mut self, bytes: &[u8]) -> Result<u64> {
        let offset = self.end;
        std::os::unix::fs::FileExt::write_all_at(&self.file, bytes, offset)
            .map_err(|e| spill_error(&self.path, "cannot write", e))?;
        self.end += bytes.len() as u64;
        Ok(offset)
    }

    fn read(&self, offset: u64, len: usize) -> Result<Buffer> {
        // 64-byte aligned, as the decoder needs for zero-copy arrays.
        let mut buf = MutableBuffer::from_len_zeroed(len);
        std::os::unix::fs::FileExt::read_exact_at(&self.file, buf.as_slice_mut(), offset)
            .map_err(|e| spill_error(&self.path, "cannot read back", e))?;
        Ok(buf.into())
    }
}

impl Drop for SpillFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn unknown(xid: u32) -> Error {
    Error::protocol(format!("a block of unknown streamed transaction {xid}"))
}

fn spill_error(path: &Path, action: &str, source: std::io::Error) -> Error {
    Error::Spill { path: path.to_owned(), action: action.to_owned(), source }
}

/// A streamed transaction not yet ended.
#[derive(Debug, Default)]
struct Txn {
    items: VecDeque<Item>,
    spill: Option<SpillFile>,
    /// Bytes of its batches kept in memory.
    memory: usize,
    /// Events handed on so far (Deliver mode: their ordinals).
    events: u32,
}

/// A committed streamed transaction being handed on.
#[derive(Debug)]
struct Release {
    txn: Txn,
    begin: Option<TxnBegin>,
    commit: TxnCommit,
    ordinal: u32,
}

/// The streamed transactions of one replication session.
#[derive(Debug, Default)]
pub(crate) struct Streams {
    mode: InProgress,
    /// The block being received: its transaction and current subtransaction.
    block: Option<(u32, u32)>,
    txns: HashMap<u32, Txn>,
    memory: usize,
    releasing: Option<Release>,
    stats: StreamedStats,
}

impl Streams {
    pub(crate) fn set_mode(&mut self, mode: InProgress) {
        self.mode = mode;
    }

    pub(crate) fn stats(&self) -> StreamedStats {
        StreamedStats { memory: self.memory as u64, ..self.stats }
    }

    /// No block open and no committed transaction being handed on.
    pub(crate) fn idle(&self) -> bool {
        self.block.is_none() && self.releasing.is_none()
    }

    /// Inside a block: the message belongs to the streamed transaction.
    pub(crate) fn in_block(&self) -> bool {
        self.block.is_some()
    }

    pub(crate) fn start(&mut self, xid: u32, first: bool) -> Result<()> {
        if let Some((open, _)) = self.block {
            return Err(Error::protocol(format!(
                "a block of transaction {xid} started inside one of transaction {open}"
            )));
        }
        if first {
            self.stats.transactions += 1;
            self.txns.insert(xid, Txn::default());
        } else if !self.txns.contains_key(&xid) {
            return Err(Error::protocol(format!(
                "a later block of streamed transaction {xid} arrived without its first"
            )));
        }
        self.stats.blocks += 1;
        self.block = Some((xid, xid));
        Ok(())
    }

    pub(crate) fn subtransaction(&mut self, subxid: u32) -> Result<()> {
        let block = self
            .block
            .as_mut()
            .ok_or_else(|| Error::protocol("a subtransaction message outside a block"))?;
        block.1 = subxid;
        Ok(())
    }

    pub(crate) fn stop(&mut self) -> Result<()> {
        self.block.take().map(drop).ok_or_else(|| Error::protocol("a stream stop outside a block"))
    }

    /// Takes a batch of the open block: kept, or (Deliver) handed back as an event.
    pub(crate) fn batch(
        &mut self,
        batch: DecodedBatch,
        payload: Buffer,
        source_bytes: usize,
    ) -> Result<Option<Event>> {
        let (xid, subxid) = self.block.expect("called inside a block");
        let mode = self.mode.clone();
        let txn = self.txns.get_mut(&xid).ok_or_else(|| unknown(xid))?;
        match mode {
            InProgress::Deliver => {
                txn.events += 1;
                Ok(Some(Event::Change(ChangeBatch {
                    relation: batch.relation,
                    xid,
                    commit_lsn: Lsn::INVALID,
                    commit_time_us: 0,
                    origin: None,
                    ordinal: txn.events - 1,
                    batch: batch.batch,
                    snapshot_chunk: None,
                    in_progress: Some(subxid),
                    payload,
                    source_bytes,
                })))
            }
            InProgress::Buffer { memory, spill_dir } => {
                let relation = Arc::clone(&batch.relation);
                let len = payload.len();
                let data = if self.memory + len <= memory {
                    txn.memory += len;
                    self.memory += len;
                    self.stats.peak_memory = self.stats.peak_memory.max(self.memory as u64);
                    Data::Memory(batch, payload)
                } else {
                    if txn.spill.is_none() {
                        txn.spill = Some(SpillFile::create(&spill_dir, xid)?);
                    }
                    let offset = txn.spill.as_mut().expect("created above").append(&payload)?;
                    self.stats.spilled_bytes += len as u64;
                    Data::Spilled { offset, len }
                };
                txn.items.push_back(Item {
                    subxid,
                    kind: ItemKind::Batch { relation, data, source_bytes },
                });
                Ok(None)
            }
        }
    }

    /// Takes a Schema message of the open block (the decoder already knows it: the block's
    /// batches are decoded with it).
    pub(crate) fn relation(&mut self, relation: Arc<Relation>) -> Result<Option<Event>> {
        let (xid, subxid) = self.block.expect("called inside a block");
        if self.mode == InProgress::Deliver {
            return Ok(Some(Event::Relation(relation)));
        }
        let txn = self.txn(xid)?;
        txn.items.push_back(Item { subxid, kind: ItemKind::Relation(relation) });
        Ok(None)
    }

    /// Takes a truncate of the open block.
    pub(crate) fn truncate(&mut self, mut t: TruncateEvent) -> Result<Option<Event>> {
        let (xid, subxid) = self.block.expect("called inside a block");
        let deliver = self.mode == InProgress::Deliver;
        let txn = self.txn(xid)?;
        t.xid = xid;
        t.in_progress = Some(subxid);
        if deliver {
            txn.events += 1;
            t.ordinal = txn.events - 1;
            return Ok(Some(Event::Truncate(t)));
        }
        txn.items.push_back(Item { subxid, kind: ItemKind::Truncate(t) });
        Ok(None)
    }

    /// Takes a transactional message of the open block.
    pub(crate) fn message(&mut self, mut m: LogicalMessage) -> Result<Option<Event>> {
        let (xid, subxid) = self.block.expect("called inside a block");
        let deliver = self.mode == InProgress::Deliver;
        let txn = self.txn(xid)?;
        if deliver {
            txn.events += 1;
            m.txn = Some((xid, Lsn::INVALID, txn.events - 1));
            return Ok(Some(Event::Message(m)));
        }
        txn.items.push_back(Item { subxid, kind: ItemKind::Message(m) });
        Ok(None)
    }

    fn txn(&mut self, xid: u32) -> Result<&mut Txn> {
        self.txns.get_mut(&xid).ok_or_else(|| unknown(xid))
    }

    /// A Stream Abort: drops the transaction, or the subtransaction's events.
    pub(crate) fn abort(&mut self, a: StreamAbort) -> Result<Option<Event>> {
        if self.block.is_some() {
            return Err(Error::protocol("a stream abort inside a block"));
        }
        let whole = a.xid == a.subxid;
        if whole {
            self.stats.aborted += 1;
            if let Some(txn) = self.txns.remove(&a.xid) {
                self.memory -= txn.memory;
            }
        } else {
            self.stats.subtransactions_aborted += 1;
            if let Some(txn) = self.txns.get_mut(&a.xid) {
                let mut freed = 0;
                txn.items.retain(|item| {
                    if item.subxid != a.subxid {
                        return true;
                    }
                    if let ItemKind::Batch { data: Data::Memory(_, payload), .. } = &item.kind {
                        freed += payload.len();
                    }
                    false
                });
                txn.memory -= freed;
                self.memory -= freed;
            }
        }
        Ok((self.mode == InProgress::Deliver)
            .then_some(Event::StreamAbort { xid: a.xid, subxid: a.subxid }))
    }

    /// A Stream Commit: the transaction is handed on (Buffer) or its commit reported
    /// (Deliver).
    pub(crate) fn commit(&mut self, c: StreamCommit) -> Result<Option<Event>> {
        if self.block.is_some() {
            return Err(Error::protocol("a stream commit inside a block"));
        }
        let txn = self.txns.remove(&c.xid).ok_or_else(|| {
            Error::protocol(format!("a stream commit of unknown transaction {}", c.xid))
        })?;
        self.stats.committed += 1;
        let commit = TxnCommit {
            xid: c.xid,
            commit_lsn: c.commit_lsn,
            end_lsn: c.end_lsn,
            commit_time_us: c.commit_time_us,
            batches: 0,
        };
        if self.mode == InProgress::Deliver {
            return Ok(Some(Event::StreamCommit(TxnCommit { batches: txn.events, ..commit })));
        }
        let begin = TxnBegin {
            xid: c.xid,
            commit_lsn: c.commit_lsn,
            commit_time_us: c.commit_time_us,
            origin: None,
        };
        let events = txn.items.iter().filter(|i| !matches!(i.kind, ItemKind::Relation(_))).count();
        let batches = u32::try_from(events).unwrap_or(u32::MAX);
        self.releasing = Some(Release {
            txn,
            begin: Some(begin),
            commit: TxnCommit { batches, ..commit },
            ordinal: 0,
        });
        Ok(None)
    }

    /// The next event of the committed transaction being handed on, if any.
    pub(crate) fn next_released(&mut self) -> Result<Option<Event>> {
        let Some(r) = self.releasing.as_mut() else { return Ok(None) };
        if let Some(begin) = r.begin.take() {
            return Ok(Some(Event::Begin(begin)));
        }
        // A spilled batch is read back before it leaves the queue: an error loses nothing.
        let read_back = match r.txn.items.front() {
            Some(Item {
                kind: ItemKind::Batch { relation, data: Data::Spilled { offset, len }, .. },
                ..
            }) => {
                let spill = r.txn.spill.as_ref().expect("spilled items have a file");
                let payload = spill.read(*offset, *len)?;
                let batch = decode_batch_message(relation, &payload)
                    .map_err(|source| Error::Wire { lsn: r.commit.commit_lsn, source })?;
                Some((batch, payload))
            }
            _ => None,
        };
        let Some(item) = r.txn.items.pop_front() else {
            let commit = r.commit;
            self.releasing = None;
            return Ok(Some(Event::Commit(commit)));
        };
        if let ItemKind::Relation(relation) = item.kind {
            return Ok(Some(Event::Relation(relation)));
        }
        let ordinal = r.ordinal;
        r.ordinal += 1;
        let (xid, commit_lsn, time) = (r.commit.xid, r.commit.commit_lsn, r.commit.commit_time_us);
        Ok(Some(match item.kind {
            ItemKind::Batch { relation, data, source_bytes } => {
                let (batch, payload) = match data {
                    Data::Memory(batch, payload) => {
                        r.txn.memory -= payload.len();
                        self.memory -= payload.len();
                        (batch, payload)
                    }
                    Data::Spilled { .. } => read_back.expect("read back above"),
                };
                Event::Change(ChangeBatch {
                    relation,
                    xid,
                    commit_lsn,
                    commit_time_us: time,
                    origin: None,
                    ordinal,
                    batch: batch.batch,
                    snapshot_chunk: None,
                    in_progress: None,
                    payload,
                    source_bytes,
                })
            }
            ItemKind::Truncate(mut t) => {
                t.commit_lsn = commit_lsn;
                t.ordinal = ordinal;
                t.in_progress = None;
                Event::Truncate(t)
            }
            ItemKind::Message(mut m) => {
                m.txn = Some((xid, commit_lsn, ordinal));
                Event::Message(m)
            }
            ItemKind::Relation(_) => unreachable!("handed on above"),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wal2arrow_schema::Decoder;
    use wal2arrow_schema::encode::{BatchEncoder, write_schema_message};
    use wal2arrow_schema::samples::{append_row, every_kind};

    /// A decoder that knows `public.every`, and batch messages of it: batch `k` holds rows
    /// `10 k` to `10 k + 9`.
    fn session() -> (Decoder, impl FnMut(usize) -> (DecodedBatch, Buffer)) {
        let desc = every_kind();
        let mut decoder = Decoder::new();
        let mut schema = Vec::new();
        write_schema_message(&mut schema, &desc).unwrap();
        decoder.decode(&Buffer::from_vec(schema)).unwrap();
        let relation = Arc::clone(decoder.relation(desc.relid).unwrap());
        let make = move |k: usize| {
            let mut enc = BatchEncoder::new(&desc);
            for i in 0..10 {
                append_row(&mut enc, k * 10 + i, Lsn(100 + (k * 10 + i) as u64));
            }
            let mut bytes = Vec::new();
            enc.write_batch(&mut bytes).unwrap();
            let payload = Buffer::from_vec(bytes);
            let batch = decode_batch_message(&relation, &payload).unwrap();
            (batch, payload)
        };
        (decoder, make)
    }

    fn first_lsns(events: &[Event]) -> Vec<u64> {
        use arrow_array::cast::AsArray;
        events
            .iter()
            .filter_map(|e| match e {
                Event::Change(c) => Some(
                    c.batch
                        .column_by_name("_lsn")
                        .unwrap()
                        .as_primitive::<arrow_array::types::UInt64Type>()
                        .value(0),
                ),
                _ => None,
            })
            .collect()
    }

    fn drain(s: &mut Streams) -> Vec<Event> {
        let mut out = Vec::new();
        while let Some(e) = s.next_released().unwrap() {
            out.push(e);
        }
        out
    }

    #[test]
    fn kept_batches_come_back_at_commit_in_order_from_memory_and_spill_and_aborts_drop_theirs() {
        let (_decoder, mut make) = session();
        let dir = std::env::temp_dir().join(format!("w2a-streamed-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let one = make(0).1.len();
        let mut s = Streams::default();
        // Room for two batches in memory: the rest spills.
        s.set_mode(InProgress::Buffer { memory: 2 * one, spill_dir: dir.clone() });
        // Transaction 7: batches 0, 1 (top level), 2, 3 (subtransaction 8, rolled back), 4.
        s.start(7, true).unwrap();
        for k in 0..2 {
            let (b, p) = make(k);
            assert!(s.batch(b, p, 1).unwrap().is_none(), "kept");
        }
        s.subtransaction(8).unwrap();
        for k in 2..4 {
            let (b, p) = make(k);
            s.batch(b, p, 1).unwrap();
        }
        s.stop().unwrap();
        // Transaction 9 interleaves, then aborts whole.
        s.start(9, true).unwrap();
        let (b, p) = make(9);
        s.batch(b, p, 1).unwrap();
        s.stop().unwrap();
        s.start(7, false).unwrap();
        s.subtransaction(7).unwrap();
        let (b, p) = make(4);
        s.batch(b, p, 1).unwrap();
        s.stop().unwrap();
        assert!(s.stats().spilled_bytes > 0 && s.stats().memory <= 2 * one as u64);
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 2, "a spill file per transaction");
        s.abort(StreamAbort { xid: 7, subxid: 8, abort_lsn: Lsn(500) }).unwrap();
        s.abort(StreamAbort { xid: 9, subxid: 9, abort_lsn: Lsn(501) }).unwrap();
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1, "the aborted one's is gone");
        assert!(s.idle());
        let commit =
            StreamCommit { xid: 7, commit_lsn: Lsn(600), end_lsn: Lsn(610), commit_time_us: 5 };
        assert!(s.commit(commit).unwrap().is_none());
        assert!(!s.idle(), "handing on");
        let events = drain(&mut s);
        assert!(matches!(&events[0], Event::Begin(b) if b.commit_lsn == Lsn(600) && b.xid == 7));
        assert_eq!(first_lsns(&events), [100, 110, 140], "batches 0, 1 and 4, in order");
        for (i, e) in events[1..4].iter().enumerate() {
            let Event::Change(c) = e else { panic!() };
            assert_eq!((c.commit_lsn, c.ordinal, c.in_progress), (Lsn(600), i as u32, None));
        }
        assert!(
            matches!(events.last(), Some(Event::Commit(c)) if c.end_lsn == Lsn(610) && c.batches == 3)
        );
        assert!(s.idle());
        assert_eq!(s.stats().memory, 0);
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "spill files removed");
        let st = s.stats();
        assert_eq!(
            (st.transactions, st.committed, st.aborted, st.subtransactions_aborted),
            (2, 1, 1, 1)
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn delivered_mode_hands_batches_on_at_once_and_reports_the_end() {
        let (_decoder, mut make) = session();
        let mut s = Streams::default();
        s.set_mode(InProgress::Deliver);
        s.start(7, true).unwrap();
        s.subtransaction(8).unwrap();
        let (b, p) = make(0);
        let Some(Event::Change(c)) = s.batch(b, p, 1).unwrap() else { panic!("delivered") };
        assert_eq!((c.xid, c.in_progress, c.commit_lsn, c.ordinal), (7, Some(8), Lsn::INVALID, 0));
        s.stop().unwrap();
        let abort = s.abort(StreamAbort { xid: 7, subxid: 8, abort_lsn: Lsn(1) }).unwrap();
        assert!(matches!(abort, Some(Event::StreamAbort { xid: 7, subxid: 8 })));
        let commit =
            StreamCommit { xid: 7, commit_lsn: Lsn(600), end_lsn: Lsn(610), commit_time_us: 5 };
        let Some(Event::StreamCommit(c)) = s.commit(commit).unwrap() else { panic!() };
        assert_eq!((c.xid, c.commit_lsn, c.end_lsn, c.batches), (7, Lsn(600), Lsn(610), 1));
        assert!(s.next_released().unwrap().is_none());
    }

    #[test]
    fn out_of_order_stream_messages_are_protocol_errors() {
        let (_decoder, _) = session();
        let mut s = Streams::default();
        assert!(s.stop().is_err(), "stop outside a block");
        assert!(s.subtransaction(3).is_err());
        assert!(s.start(5, false).is_err(), "a later block without a first");
        s.start(5, true).unwrap();
        assert!(s.start(6, true).is_err(), "nested blocks");
        let commit =
            StreamCommit { xid: 5, commit_lsn: Lsn(1), end_lsn: Lsn(2), commit_time_us: 0 };
        assert!(s.commit(commit).is_err(), "a commit inside a block");
        s.stop().unwrap();
        assert!(s.commit(StreamCommit { xid: 99, ..commit }).is_err(), "unknown transaction");
        // An abort of a transaction never seen is nothing to drop.
        assert!(s.abort(StreamAbort { xid: 99, subxid: 99, abort_lsn: Lsn(3) }).unwrap().is_none());
    }
}
