//! Routing a [`CdcStream`] to readers that run in parallel: one per table (`schema.table`),
//! or one per hash partition of the table names, optionally split further by primary-key hash.
//!
//! ## Memory
//!
//! Each queue keeps up to `memory_per_queue` bytes of deliveries in memory — a batch counts
//! the bytes the server sent for it (its payload, or for the wal2json fallback its arrays'
//! size), a message its content. When a reader falls behind further, its queue **spills** to a
//! file in `spill_dir`, in order, and refills from it as the reader catches up; the file is
//! removed once drained. So a slow reader holds memory bounded while the other readers keep
//! flowing — and the routing task never waits for one reader, which would stall them all.
//! (Queues hold batches of tables nobody reads yet the same way; the messages queue exists only
//! once someone asked for its reader.)
//!
//! ## Ending
//!
//! When the stream ends — it failed, or [`Router::stop`] was called, or the router was
//! dropped — every reader gets what is queued, then `None` (or the stream's error): a reader
//! never waits on a queue that nothing will fill.
//!
//! ## Acknowledgements
//!
//! Every delivery carries an [`AckToken`]. A transaction is done when it has committed and
//! every reader has acknowledged its part; the slot advances to the end of the latest
//! transaction such that it and all before it are done. After a reconnection the stream
//! replays transactions the slot had not passed; the router drops what it already routed
//! (by [`Position`], per queue), so readers see each batch once per router.
//!
//! Order is preserved per queue: per table, and per key within a key partition.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arrow_array::{RecordBatch, UInt32Array};
use arrow_row::{RowConverter, SortField};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use wal2arrow_schema::{Lsn, Relation};

use crate::consumer::CdcStream;
use crate::error::{Error, Result};
use crate::stream::{AckHandle, Event, LogicalMessage, Position};

/// How batches are spread over queues.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Partitioning {
    /// One queue per table: [`Router::table`].
    PerTable,
    /// `n` queues; a table goes to `hash(schema.table) % n`: [`Router::partition`].
    Hashed(usize),
}

/// How to route.
#[derive(Clone, Debug)]
pub struct RouterOptions {
    /// Queues per table or per hash partition (default per table).
    pub partitioning: Partitioning,
    /// Bytes of batches a queue keeps in memory before it spills to disk (default 64 MiB).
    pub memory_per_queue: usize,
    /// Where spill files go (default the system's temporary directory).
    pub spill_dir: PathBuf,
    /// Tables split further into this many queues by the hash of their primary key:
    /// [`Router::key_partition`]. A table without a primary key stays in its first queue.
    pub key_partitions: HashMap<String, usize>,
}

impl Default for RouterOptions {
    fn default() -> Self {
        RouterOptions {
            partitioning: Partitioning::PerTable,
            memory_per_queue: 64 << 20,
            spill_dir: std::env::temp_dir(),
            key_partitions: HashMap::new(),
        }
    }
}

/// Fixed seeds: the same table (or key) goes to the same partition every time in a process.
fn hasher() -> ahash::RandomState {
    ahash::RandomState::with_seeds(0x5741_4c32, 0x4152_524f, 0x5752_4f55, 0x5445_5221)
}

/// Which queue.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum QueueKey {
    Table(String),
    Partition(usize),
    KeyPartition(String, usize),
    Messages,
}

/// A batch delivered to a reader.
#[derive(Clone, Debug)]
pub struct RoutedBatch {
    /// The table.
    pub relation: Arc<Relation>,
    /// Its position: unique, and the same after a replay.
    pub position: Position,
    /// Transaction ID.
    pub xid: u32,
    /// Commit time, microseconds since the Unix epoch.
    pub commit_time_us: i64,
    /// The rows (the table's columns, `_op`, `_lsn`, `_missing`, `_unrepresentable`).
    pub batch: RecordBatch,
    /// The primary-key partition, for tables split by key.
    pub key_partition: Option<usize>,
}

impl RoutedBatch {
    /// `schema.table`.
    pub fn table(&self) -> &str {
        &self.relation.qualified_name
    }
}

/// What a reader receives.
#[derive(Clone, Debug)]
pub enum Routed {
    /// Rows of a table.
    Batch(RoutedBatch),
    /// The table was truncated (after the rows before it).
    Truncate {
        /// The table.
        relation: Arc<Relation>,
        /// Its position.
        position: Position,
        /// `CASCADE`; `None` when the plugin does not say (wal2json).
        cascade: Option<bool>,
        /// `RESTART IDENTITY`; `None` when the plugin does not say (wal2json).
        restart_identity: Option<bool>,
    },
    /// A logical message ([`Router::messages`]).
    Message(LogicalMessage),
}

/// A delivery and its acknowledgement token.
#[derive(Debug)]
pub struct Delivery {
    /// What was delivered.
    pub routed: Routed,
    /// Acknowledge once handled.
    pub ack: AckToken,
}

/// Acknowledges one delivery. Dropping it without [`ack`](Self::ack) leaves the delivery
/// unacknowledged: the slot will not pass its transaction, and a restart delivers it again.
#[derive(Debug)]
pub struct AckToken {
    tracker: Arc<Mutex<Tracker>>,
    /// The transaction, or for a non-transactional message the position past it.
    target: AckTarget,
}

#[derive(Debug, Clone, Copy)]
enum AckTarget {
    Txn(Lsn),
    Message(Lsn),
}

impl AckToken {
    /// Acknowledges the delivery.
    pub fn ack(self) {
        let mut t = self.tracker.lock().expect("tracker lock");
        match self.target {
            AckTarget::Txn(commit) => t.done(commit),
            AckTarget::Message(past) => t.message_done(past),
        }
    }
}

/// Per-transaction acknowledgement bookkeeping (see the module docs).
#[derive(Debug)]
struct Tracker {
    /// By commit LSN: end LSN once committed, deliveries not yet acknowledged.
    txns: BTreeMap<Lsn, (Option<Lsn>, usize)>,
    /// Unacknowledged non-transactional messages, by the position past them.
    messages: BTreeMap<Lsn, usize>,
    /// Everything before this is done.
    done_through: Lsn,
    acks: AckHandle,
}

impl Tracker {
    fn delivered(&mut self, commit: Lsn) {
        self.txns.entry(commit).or_insert((None, 0)).1 += 1;
    }

    fn committed(&mut self, commit: Lsn, end: Lsn) {
        self.txns.entry(commit).or_insert((None, 0)).0 = Some(end);
        self.advance();
    }

    fn done(&mut self, commit: Lsn) {
        if let Some(t) = self.txns.get_mut(&commit) {
            t.1 = t.1.saturating_sub(1);
        }
        self.advance();
    }

    fn message_done(&mut self, past: Lsn) {
        if let Some(n) = self.messages.get_mut(&past) {
            *n = n.saturating_sub(1);
        }
        self.advance();
    }

    /// Moves `done_through` over every finished transaction and message, in WAL order, up to
    /// the first one still open or unacknowledged; acknowledges up to there.
    fn advance(&mut self) {
        loop {
            let txn = self.txns.first_key_value().map(|(c, v)| (*c, *v));
            let message = self.messages.first_key_value().map(|(p, n)| (*p, *n));
            // The earlier of the two, by WAL position: a transaction by its commit, a message
            // by the position past it.
            match (txn, message) {
                (Some((commit, (end, outstanding))), m)
                    if m.is_none_or(|(past, _)| commit < past) =>
                {
                    match end {
                        Some(end) if outstanding == 0 => {
                            self.txns.remove(&commit);
                            self.done_through = self.done_through.max(end);
                        }
                        _ => break,
                    }
                }
                (_, Some((past, 0))) => {
                    self.messages.remove(&past);
                    self.done_through = self.done_through.max(past);
                }
                _ => break,
            }
        }
        // Never past an open transaction or an unacknowledged message.
        let mut target = self.done_through;
        if let Some((&commit, _)) = self.txns.first_key_value() {
            target = target.min(commit);
        }
        if let Some((&past, _)) = self.messages.first_key_value() {
            target = target.min(Lsn(past.0 - 1));
        }
        self.acks.ack(target);
    }
}

/// A spill file: records appended at the end, read from the front.
#[derive(Debug)]
struct Spill {
    path: PathBuf,
    file: File,
    read_at: u64,
    write_at: u64,
    records: u64,
    /// The schema versions of the spilled batches' tables.
    relations: Vec<Arc<Relation>>,
}

/// A spilled delivery: its metadata, and its batch as an Arrow IPC stream.
#[derive(Debug)]
struct SpillRecord {
    relation: u32,
    position: Position,
    xid: u32,
    commit_time_us: i64,
    key_partition: Option<u32>,
    kind: u8,
    flags: u8,
    batch: Option<RecordBatch>,
}

impl Spill {
    fn create(dir: &Path, name: &str) -> Result<Spill> {
        static N: AtomicU64 = AtomicU64::new(0);
        let clean: String = name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .take(40)
            .collect();
        let path = dir.join(format!(
            "wal2arrow-spill-{}-{}-{clean}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let file = std::fs::OpenOptions::new()
            .create_new(true)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| Error::Spill {
                path: path.clone(),
                action: "cannot create".into(),
                source: e,
            })?;
        Ok(Spill { path, file, read_at: 0, write_at: 0, records: 0, relations: Vec::new() })
    }

    fn relation_index(&mut self, r: &Arc<Relation>) -> u32 {
        match self.relations.iter().position(|x| Arc::ptr_eq(x, r)) {
            Some(i) => i as u32,
            None => {
                self.relations.push(Arc::clone(r));
                (self.relations.len() - 1) as u32
            }
        }
    }

    fn append(&mut self, routed: &Routed) -> Result<u64> {
        let spill_err = |path: &Path, e: std::io::Error| Error::Spill {
            path: path.to_owned(),
            action: "cannot write to".into(),
            source: e,
        };
        /// A record's fields besides its body.
        struct Head<'r> {
            relation: Option<&'r Arc<Relation>>,
            position: Position,
            xid: u32,
            time: i64,
            key: Option<usize>,
            kind: u8,
            flags: u8,
        }
        let (head, batch, body) = match routed {
            Routed::Batch(b) => (
                Head {
                    relation: Some(&b.relation),
                    position: b.position,
                    xid: b.xid,
                    time: b.commit_time_us,
                    key: b.key_partition,
                    kind: 0,
                    flags: 0,
                },
                Some(&b.batch),
                Vec::new(),
            ),
            Routed::Truncate { relation, position, cascade, restart_identity } => (
                Head {
                    relation: Some(relation),
                    position: *position,
                    xid: 0,
                    time: 0,
                    key: None,
                    kind: 1,
                    flags: truncate_flags(*cascade, *restart_identity),
                },
                None,
                Vec::new(),
            ),
            Routed::Message(m) => {
                // The message's own fields: LSN, prefix length, prefix, content.
                let mut body = Vec::with_capacity(12 + m.prefix.len() + m.content.len());
                body.extend_from_slice(&m.lsn.0.to_le_bytes());
                body.extend_from_slice(&(m.prefix.len() as u32).to_le_bytes());
                body.extend_from_slice(m.prefix.as_bytes());
                body.extend_from_slice(m.content.as_slice());
                let (xid, commit, ordinal) = m.txn.unwrap_or((0, Lsn::INVALID, 0));
                (
                    Head {
                        relation: None,
                        position: Position { commit_lsn: commit, ordinal },
                        xid,
                        time: 0,
                        key: None,
                        kind: 2,
                        flags: u8::from(m.transactional) | if m.txn.is_some() { 2 } else { 0 },
                    },
                    None,
                    body,
                )
            }
        };
        let Head { relation, position, xid, time, key, kind, flags } = head;
        let relation = relation.map_or(u32::MAX, |r| self.relation_index(r));
        let mut ipc = body;
        if let Some(batch) = batch {
            let mut w = arrow_ipc::writer::StreamWriter::try_new(&mut ipc, &batch.schema())?;
            w.write(batch)?;
            w.finish()?;
        }
        let mut rec = Vec::with_capacity(48 + ipc.len());
        rec.extend_from_slice(&(ipc.len() as u64).to_le_bytes());
        rec.extend_from_slice(&relation.to_le_bytes());
        rec.extend_from_slice(&position.commit_lsn.0.to_le_bytes());
        rec.extend_from_slice(&position.ordinal.to_le_bytes());
        rec.extend_from_slice(&xid.to_le_bytes());
        rec.extend_from_slice(&time.to_le_bytes());
        rec.extend_from_slice(&key.map_or(u32::MAX, |k| k as u32).to_le_bytes());
        rec.push(kind);
        rec.push(flags);
        rec.extend_from_slice(&ipc);
        self.file.seek(SeekFrom::Start(self.write_at)).map_err(|e| spill_err(&self.path, e))?;
        self.file.write_all(&rec).map_err(|e| spill_err(&self.path, e))?;
        self.write_at += rec.len() as u64;
        self.records += 1;
        Ok(rec.len() as u64)
    }

    fn read(&mut self) -> Result<Routed> {
        const HEAD: usize = 8 + 4 + 8 + 4 + 4 + 8 + 4 + 2;
        let read_err = |path: &Path, e: std::io::Error| Error::Spill {
            path: path.to_owned(),
            action: "cannot read back".into(),
            source: e,
        };
        let damaged = |path: &Path| Error::Spill {
            path: path.to_owned(),
            action: "cannot read back".into(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, "damaged spill record"),
        };
        let mut head = [0u8; HEAD];
        self.file.seek(SeekFrom::Start(self.read_at)).map_err(|e| read_err(&self.path, e))?;
        self.file.read_exact(&mut head).map_err(|e| read_err(&self.path, e))?;
        let u32_at = |at: usize| u32::from_le_bytes(head[at..at + 4].try_into().expect("4 bytes"));
        let u64_at = |at: usize| u64::from_le_bytes(head[at..at + 8].try_into().expect("8 bytes"));
        let body_len = u64_at(0) as usize;
        let mut body = vec![0u8; body_len];
        self.file.read_exact(&mut body).map_err(|e| read_err(&self.path, e))?;
        self.read_at += (HEAD + body_len) as u64;
        self.records -= 1;
        let (kind, flags) = (head[40], head[41]);
        let position = Position { commit_lsn: Lsn(u64_at(12)), ordinal: u32_at(20) };
        if kind == 2 {
            if body.len() < 12 {
                return Err(damaged(&self.path));
            }
            let lsn = Lsn(u64::from_le_bytes(body[..8].try_into().expect("8 bytes")));
            let prefix_len = u32::from_le_bytes(body[8..12].try_into().expect("4 bytes")) as usize;
            let prefix = body.get(12..12 + prefix_len).ok_or_else(|| damaged(&self.path))?;
            let prefix = String::from_utf8_lossy(prefix).into_owned();
            let content = arrow_buffer::Buffer::from_slice_ref(&body[12 + prefix_len..]);
            return Ok(Routed::Message(LogicalMessage {
                transactional: flags & 1 != 0,
                lsn,
                prefix,
                content,
                txn: (flags & 2 != 0).then_some((
                    u32_at(24),
                    position.commit_lsn,
                    position.ordinal,
                )),
            }));
        }
        let rec = SpillRecord {
            relation: u32_at(8),
            position,
            xid: u32_at(24),
            commit_time_us: u64_at(28) as i64,
            key_partition: Some(u32_at(36)).filter(|k| *k != u32::MAX),
            kind,
            flags,
            batch: if body_len == 0 {
                None
            } else {
                arrow_ipc::reader::StreamReader::try_new(std::io::Cursor::new(body), None)?
                    .next()
                    .transpose()?
            },
        };
        let relation = Arc::clone(
            self.relations.get(rec.relation as usize).ok_or_else(|| damaged(&self.path))?,
        );
        Ok(match rec.kind {
            0 => Routed::Batch(RoutedBatch {
                relation,
                position: rec.position,
                xid: rec.xid,
                commit_time_us: rec.commit_time_us,
                batch: rec.batch.ok_or_else(|| damaged(&self.path))?,
                key_partition: rec.key_partition.map(|k| k as usize),
            }),
            _ => Routed::Truncate {
                relation,
                position: rec.position,
                cascade: (rec.flags & 4 != 0).then_some(rec.flags & 1 != 0),
                restart_identity: (rec.flags & 8 != 0).then_some(rec.flags & 2 != 0),
            },
        })
    }
}

/// A spilled truncate's flags: bits 0 and 1 the values, bits 2 and 3 whether they are known.
fn truncate_flags(cascade: Option<bool>, restart_identity: Option<bool>) -> u8 {
    let bits = |o: Option<bool>, value: u8, known: u8| match o {
        Some(true) => value | known,
        Some(false) => known,
        None => 0,
    };
    bits(cascade, 1, 4) | bits(restart_identity, 2, 8)
}

impl Drop for Spill {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// One queue: in memory up to the budget, then in a spill file.
#[derive(Debug)]
struct Queue {
    name: String,
    state: Mutex<QueueState>,
    ready: Notify,
}

#[derive(Debug, Default)]
struct QueueState {
    memory: VecDeque<(Routed, AckTarget, usize)>,
    memory_bytes: usize,
    peak_memory_bytes: usize,
    spill: Option<Spill>,
    spilled_total: u64,
    spilled_bytes_total: u64,
    /// The last position (and sub-index, for events split over several deliveries) routed
    /// here, to drop replays.
    last: Option<(Position, u32)>,
    /// The stream ended: after the queue drains, readers get this (None: ended cleanly).
    ended: Option<Option<Arc<Error>>>,
}

/// Counters of one queue.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Deliveries waiting in memory.
    pub in_memory: usize,
    /// Their bytes.
    pub memory_bytes: usize,
    /// The most bytes ever waiting in memory.
    pub peak_memory_bytes: usize,
    /// Deliveries waiting on disk.
    pub spilled: u64,
    /// Deliveries ever spilled.
    pub spilled_total: u64,
    /// Bytes ever spilled.
    pub spilled_bytes_total: u64,
}

/// Routes a [`CdcStream`] to per-table (or per-partition) readers; see the module docs.
#[derive(Debug)]
pub struct Router {
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

#[derive(Debug)]
struct Shared {
    options: RouterOptions,
    queues: Mutex<HashMap<QueueKey, Arc<Queue>, ahash::RandomState>>,
    tracker: Arc<Mutex<Tracker>>,
    /// How the stream ended, once it has (`Some(None)`: cleanly). Queues made later get it too.
    ended: Mutex<Option<Option<Arc<Error>>>>,
    /// Asks the routing task to stop.
    stop: Notify,
}

impl Shared {
    fn queue(&self, key: &QueueKey) -> Arc<Queue> {
        let mut queues = self.queues.lock().expect("queues lock");
        Arc::clone(queues.entry(key.clone()).or_insert_with(|| {
            let ended = self.ended.lock().expect("ended lock").clone();
            Arc::new(Queue {
                name: match key {
                    QueueKey::Table(t) => t.clone(),
                    QueueKey::Partition(p) => format!("partition {p}"),
                    QueueKey::KeyPartition(t, p) => format!("{t} key partition {p}"),
                    QueueKey::Messages => "messages".into(),
                },
                state: Mutex::new(QueueState { ended, ..QueueState::default() }),
                ready: Notify::new(),
            })
        }))
    }

    /// Records how the stream ended and wakes every reader (the first ending counts).
    fn end(&self, how: Option<Arc<Error>>) {
        {
            let mut ended = self.ended.lock().expect("ended lock");
            if ended.is_some() {
                return;
            }
            *ended = Some(how.clone());
        }
        let queues: Vec<Arc<Queue>> =
            self.queues.lock().expect("queues lock").values().cloned().collect();
        for q in queues {
            q.state.lock().expect("queue lock").ended = Some(how.clone());
            q.ready.notify_waiters();
            q.ready.notify_one();
        }
    }

    fn has_ended(&self) -> bool {
        self.ended.lock().expect("ended lock").is_some()
    }
}

impl Router {
    /// Starts routing `stream` (in a task; the stream's acknowledgements are the router's).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for an unusable option: zero partitions, zero memory, a spill
    /// directory that does not exist.
    pub fn start(stream: CdcStream, options: RouterOptions) -> Result<Router> {
        if options.partitioning == Partitioning::Hashed(0) {
            return Err(Error::Config("Hashed partitioning needs at least one partition".into()));
        }
        if options.memory_per_queue == 0 {
            return Err(Error::Config("memory_per_queue must be positive".into()));
        }
        if options.key_partitions.values().any(|k| *k == 0) {
            return Err(Error::Config(
                "key_partitions need at least one partition per table".into(),
            ));
        }
        if !options.spill_dir.is_dir() {
            return Err(Error::Config(format!(
                "spill_dir {} is not a directory",
                options.spill_dir.display()
            )));
        }
        let tracker = Arc::new(Mutex::new(Tracker {
            txns: BTreeMap::new(),
            messages: BTreeMap::new(),
            done_through: stream.ack_handle().acknowledged(),
            acks: stream.ack_handle(),
        }));
        let shared = Arc::new(Shared {
            options,
            queues: Mutex::new(HashMap::with_hasher(hasher())),
            tracker,
            ended: Mutex::new(None),
            stop: Notify::new(),
        });
        let task = tokio::spawn(route(stream, Arc::clone(&shared)));
        Ok(Router { shared, task })
    }

    /// The reader of `table` (`schema.table`), with per-table partitioning.
    pub fn table(&self, table: &str) -> Reader {
        self.reader(QueueKey::Table(table.to_owned()))
    }

    /// The reader of hash partition `i`, with [`Partitioning::Hashed`].
    pub fn partition(&self, i: usize) -> Reader {
        self.reader(QueueKey::Partition(i))
    }

    /// The reader of primary-key partition `i` of `table` (see
    /// [`RouterOptions::key_partitions`]).
    pub fn key_partition(&self, table: &str, i: usize) -> Reader {
        self.reader(QueueKey::KeyPartition(table.to_owned(), i))
    }

    /// The reader of logical messages.
    pub fn messages(&self) -> Reader {
        self.reader(QueueKey::Messages)
    }

    /// The hash partition of `table` with [`Partitioning::Hashed`] over `n` partitions.
    pub fn partition_of(table: &str, n: usize) -> usize {
        (hasher().hash_one(table) % n as u64) as usize
    }

    fn reader(&self, key: QueueKey) -> Reader {
        Reader { queue: self.shared.queue(&key), tracker: Arc::clone(&self.shared.tracker) }
    }

    /// Every queue's counters, by queue name.
    pub fn stats(&self) -> Vec<(String, QueueStats)> {
        let queues: Vec<Arc<Queue>> =
            self.shared.queues.lock().expect("queues lock").values().cloned().collect();
        let mut out: Vec<(String, QueueStats)> = queues
            .iter()
            .map(|q| {
                let s = q.state.lock().expect("queue lock");
                (
                    q.name.clone(),
                    QueueStats {
                        in_memory: s.memory.len(),
                        memory_bytes: s.memory_bytes,
                        peak_memory_bytes: s.peak_memory_bytes,
                        spilled: s.spill.as_ref().map_or(0, |sp| sp.records),
                        spilled_total: s.spilled_total,
                        spilled_bytes_total: s.spilled_bytes_total,
                    },
                )
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Stops routing: the stream closes (its acknowledged position is sent), and readers get
    /// what is queued, then `None`.
    pub fn stop(&self) {
        self.shared.end(None);
        self.shared.stop.notify_one();
    }
}

impl Drop for Router {
    /// Ends the stream at once; readers still held get what is queued, then `None`.
    fn drop(&mut self) {
        self.shared.end(None);
        self.task.abort();
    }
}

/// Reads one queue's deliveries, in order.
#[derive(Debug)]
pub struct Reader {
    queue: Arc<Queue>,
    tracker: Arc<Mutex<Tracker>>,
}

impl Reader {
    /// The next delivery; `None` once the stream ended and the queue is drained; an error if
    /// the stream failed (every reader sees it, after draining).
    ///
    /// Cancel safety: cancel safe; a delivery is never lost by dropping the future.
    pub async fn next(&mut self) -> Option<Result<Delivery>> {
        loop {
            let notified = self.queue.ready.notified();
            {
                let mut s = self.queue.state.lock().expect("queue lock");
                if let Some((routed, target, bytes)) = s.memory.pop_front() {
                    s.memory_bytes -= bytes;
                    return Some(Ok(Delivery {
                        routed,
                        ack: AckToken { tracker: Arc::clone(&self.tracker), target },
                    }));
                }
                if let Some(spill) = s.spill.as_mut() {
                    if spill.records > 0 {
                        let read = spill.read();
                        if spill.records == 0 {
                            s.spill = None; // drained: the file goes, new deliveries use memory again
                        }
                        return Some(read.map(|routed| {
                            let target = match &routed {
                                Routed::Batch(b) => AckTarget::Txn(b.position.commit_lsn),
                                Routed::Truncate { position, .. } => {
                                    AckTarget::Txn(position.commit_lsn)
                                }
                                Routed::Message(m) => match m.txn {
                                    Some((_, commit, _)) => AckTarget::Txn(commit),
                                    None => AckTarget::Message(m.ack_lsn()),
                                },
                            };
                            Delivery {
                                routed,
                                ack: AckToken { tracker: Arc::clone(&self.tracker), target },
                            }
                        }));
                    }
                    s.spill = None;
                }
                if let Some(ended) = &s.ended {
                    return ended.as_ref().map(|e| Err(Error::Upstream(Arc::clone(e))));
                }
            }
            notified.await;
        }
    }
}

/// The routing task.
async fn route(mut stream: CdcStream, shared: Arc<Shared>) {
    let keys = KeyHashers::default();
    let ended = loop {
        let next = tokio::select! {
            next = stream.next() => next,
            () = shared.stop.notified() => break None,
        };
        match next {
            None => break None,
            Some(Err(e)) => break Some(Arc::new(e)),
            Some(Ok(event)) => {
                if let Err(e) = dispatch(&shared, &keys, event) {
                    break Some(Arc::new(e));
                }
            }
        }
    };
    shared.end(ended);
    stream.close().await;
}

/// A table's primary-key columns and the converter that turns them into hashable rows; `None`
/// for a table without a primary key.
type KeyHasher = Option<KeyPartitioner>;

/// Cached key hashers, by table.
#[derive(Default)]
struct KeyHashers(Mutex<HashMap<String, KeyHasher>>);

fn dispatch(shared: &Shared, keys: &KeyHashers, event: Event) -> Result<()> {
    if shared.has_ended() {
        // Stopped: nothing more is routed — not even a Commit, so that no transaction whose
        // deliveries were dropped can count as done (it comes again next time).
        return Ok(());
    }
    match event {
        Event::Begin(_) | Event::Relation(_) | Event::Restarted { .. } => {}
        Event::Commit(c) => {
            shared.tracker.lock().expect("tracker lock").committed(c.commit_lsn, c.end_lsn)
        }
        Event::Message(m) => {
            // Queued only for a reader that asked; otherwise nobody holds the slot for them.
            if !shared.queues.lock().expect("queues lock").contains_key(&QueueKey::Messages) {
                return Ok(());
            }
            let target = match m.txn {
                // Counted as delivered by `enqueue`, once, unless it is a replay.
                Some((_, commit, _)) => AckTarget::Txn(commit),
                None => {
                    *shared
                        .tracker
                        .lock()
                        .expect("tracker lock")
                        .messages
                        .entry(m.ack_lsn())
                        .or_insert(0) += 1;
                    AckTarget::Message(m.ack_lsn())
                }
            };
            let bytes = m.content.len() + m.prefix.len() + 64;
            let position =
                m.txn.map(|(_, commit_lsn, ordinal)| (Position { commit_lsn, ordinal }, 0));
            enqueue(shared, &QueueKey::Messages, position, Routed::Message(m), target, bytes)?;
        }
        Event::Truncate(t) => {
            let position = Position { commit_lsn: t.commit_lsn, ordinal: t.ordinal };
            for (i, relation) in t.relations.iter().enumerate() {
                let routed = Routed::Truncate {
                    relation: Arc::clone(relation),
                    position,
                    cascade: t.cascade,
                    restart_identity: t.restart_identity,
                };
                for key in table_keys(shared, &relation.qualified_name) {
                    enqueue(
                        shared,
                        &key,
                        Some((position, i as u32)),
                        routed.clone(),
                        AckTarget::Txn(t.commit_lsn),
                        64,
                    )?;
                }
            }
        }
        Event::Change(c) => {
            let position = c.position();
            let table = c.relation.qualified_name.clone();
            let parts = shared.options.key_partitions.get(&table).copied().unwrap_or(1);
            let base = RoutedBatch {
                relation: Arc::clone(&c.relation),
                position,
                xid: c.xid,
                commit_time_us: c.commit_time_us,
                batch: c.batch.clone(),
                key_partition: None,
            };
            if parts <= 1 {
                let key = table_keys(shared, &table).remove(0);
                enqueue(
                    shared,
                    &key,
                    Some((position, 0)),
                    Routed::Batch(base),
                    AckTarget::Txn(position.commit_lsn),
                    batch_bytes(&c),
                )?;
            } else {
                for (i, part) in
                    split_by_key(keys, &c.relation, &c.batch, parts)?.into_iter().enumerate()
                {
                    let Some(batch) = part else { continue };
                    let bytes = batch.get_array_memory_size();
                    let routed = Routed::Batch(RoutedBatch {
                        batch,
                        key_partition: Some(i),
                        ..base.clone()
                    });
                    enqueue(
                        shared,
                        &QueueKey::KeyPartition(table.clone(), i),
                        Some((position, 0)),
                        routed,
                        AckTarget::Txn(position.commit_lsn),
                        bytes,
                    )?;
                }
            }
        }
    }
    Ok(())
}

/// What a batch costs a queue's memory: the payload its arrays point into, or (the wal2json
/// fallback, whose batches are built here) the arrays' own size.
fn batch_bytes(c: &crate::stream::ChangeBatch) -> usize {
    match c.payload().len() {
        0 => c.batch.get_array_memory_size(),
        n => n,
    }
}

/// The queues a table's batches and truncates go to.
fn table_keys(shared: &Shared, table: &str) -> Vec<QueueKey> {
    if let Some(parts) = shared.options.key_partitions.get(table).filter(|p| **p > 1) {
        return (0..*parts).map(|i| QueueKey::KeyPartition(table.to_owned(), i)).collect();
    }
    vec![match shared.options.partitioning {
        Partitioning::PerTable => QueueKey::Table(table.to_owned()),
        Partitioning::Hashed(n) => QueueKey::Partition(Router::partition_of(table, n)),
    }]
}

/// Splits batches by the hash of key columns, keeping row order within each part: what key
/// partitions do (see [`Partitioning`]), usable on its own.
pub struct KeyPartitioner {
    cols: Vec<usize>,
    converter: RowConverter,
}

impl std::fmt::Debug for KeyPartitioner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyPartitioner").field("cols", &self.cols).finish_non_exhaustive()
    }
}

impl KeyPartitioner {
    /// A partitioner for batches of `schema` by the columns named `key`; `None` when a key
    /// column is not in the schema (or `key` is empty).
    pub fn new(schema: &arrow_schema::Schema, key: &[String]) -> Option<KeyPartitioner> {
        let cols: Vec<usize> = key.iter().filter_map(|k| schema.index_of(k).ok()).collect();
        if cols.is_empty() || cols.len() != key.len() {
            return None;
        }
        let fields =
            cols.iter().map(|c| SortField::new(schema.field(*c).data_type().clone())).collect();
        RowConverter::new(fields).ok().map(|converter| KeyPartitioner { cols, converter })
    }

    /// `batch` split into `parts` batches (`None` for an empty part) by key hash.
    ///
    /// # Errors
    ///
    /// Arrow errors (a batch of another schema).
    pub fn split(&self, batch: &RecordBatch, parts: usize) -> Result<Vec<Option<RecordBatch>>> {
        let columns: Vec<_> = self.cols.iter().map(|c| Arc::clone(batch.column(*c))).collect();
        let rows = self.converter.convert_columns(&columns)?;
        let mut indices: Vec<Vec<u32>> = vec![Vec::new(); parts];
        let h = hasher();
        for (i, row) in rows.iter().enumerate() {
            indices[(h.hash_one(row.as_ref()) % parts as u64) as usize].push(i as u32);
        }
        indices
            .into_iter()
            .map(|idx| {
                if idx.is_empty() {
                    return Ok(None);
                }
                let idx = UInt32Array::from(idx);
                Ok(Some(arrow_select::take::take_record_batch(batch, &idx)?))
            })
            .collect()
    }
}

/// Splits a batch into `parts` by the hash of its primary key (order kept within each part).
fn split_by_key(
    keys: &KeyHashers,
    relation: &Arc<Relation>,
    batch: &RecordBatch,
    parts: usize,
) -> Result<Vec<Option<RecordBatch>>> {
    let mut cache = keys.0.lock().expect("keys lock");
    let entry = cache.entry(relation.qualified_name.clone()).or_insert_with(|| {
        let partitioner = KeyPartitioner::new(&batch.schema(), &relation.primary_key);
        if partitioner.is_none() {
            tracing::warn!(table = %relation.qualified_name, "no primary key: the table is not split by key");
        }
        partitioner
    });
    match entry {
        Some(p) => p.split(batch, parts),
        None => Ok(std::iter::once(Some(batch.clone()))
            .chain(std::iter::repeat_n(None, parts - 1))
            .collect()),
    }
}

/// Queues a delivery, spilling when the queue's memory is full; drops replays.
fn enqueue(
    shared: &Shared,
    key: &QueueKey,
    position: Option<(Position, u32)>,
    routed: Routed,
    target: AckTarget,
    bytes: usize,
) -> Result<()> {
    if shared.has_ended() {
        // Stopped: nothing more is delivered (it was not acknowledged, so it comes again).
        return Ok(());
    }
    let queue = shared.queue(key);
    {
        let mut s = queue.state.lock().expect("queue lock");
        if let Some(p) = position {
            if s.last.is_some_and(|last| p <= last) {
                return Ok(()); // replayed after a reconnection: already routed here
            }
            s.last = Some(p);
        }
        if let AckTarget::Txn(commit) = target {
            shared.tracker.lock().expect("tracker lock").delivered(commit);
        }
        let fits = s.memory_bytes + bytes <= shared.options.memory_per_queue || s.memory.is_empty();
        if s.spill.is_none() && fits {
            s.memory_bytes += bytes;
            s.peak_memory_bytes = s.peak_memory_bytes.max(s.memory_bytes);
            s.memory.push_back((routed, target, bytes));
        } else {
            if s.spill.is_none() {
                s.spill = Some(Spill::create(&shared.options.spill_dir, &queue.name)?);
            }
            let written = s.spill.as_mut().expect("created above").append(&routed)?;
            s.spilled_total += 1;
            s.spilled_bytes_total += written;
        }
    }
    queue.ready.notify_waiters();
    queue.ready.notify_one();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracker() -> (Tracker, AckHandle) {
        let acks = crate::stream::AckHandle::default();
        (
            Tracker {
                txns: BTreeMap::new(),
                messages: BTreeMap::new(),
                done_through: Lsn(0),
                acks: acks.clone(),
            },
            acks,
        )
    }

    #[test]
    fn the_slot_advances_only_past_transactions_every_reader_finished() {
        let (mut t, acks) = tracker();
        // T1 (commit 100, end 110): two deliveries. T2 (200, 210): one. T3 (300, 310): none.
        t.delivered(Lsn(100));
        t.delivered(Lsn(100));
        t.delivered(Lsn(200));
        t.committed(Lsn(100), Lsn(110));
        t.committed(Lsn(200), Lsn(210));
        t.committed(Lsn(300), Lsn(310));
        assert_eq!(acks.acknowledged(), Lsn(0));
        t.done(Lsn(200)); // T2 done out of order: T1 still holds the slot
        assert_eq!(acks.acknowledged(), Lsn(0));
        t.done(Lsn(100));
        assert_eq!(acks.acknowledged(), Lsn(0), "T1 half done");
        t.done(Lsn(100));
        assert_eq!(acks.acknowledged(), Lsn(310), "T1, T2 and the empty T3 done");
    }

    fn shared() -> (Arc<Shared>, AckHandle) {
        let (t, acks) = tracker();
        let shared = Arc::new(Shared {
            options: RouterOptions::default(),
            queues: Mutex::new(HashMap::with_hasher(hasher())),
            tracker: Arc::new(Mutex::new(t)),
            ended: Mutex::new(None),
            stop: Notify::new(),
        });
        (shared, acks)
    }

    fn commit(commit: u64, end: u64) -> Event {
        Event::Commit(crate::stream::TxnCommit {
            xid: 1,
            commit_lsn: Lsn(commit),
            end_lsn: Lsn(end),
            commit_time_us: 0,
            batches: 1,
        })
    }

    #[test]
    fn acknowledged_messages_after_the_last_transaction_move_the_slot() {
        let (mut t, acks) = tracker();
        t.committed(Lsn(100), Lsn(110));
        for past in [Lsn(121), Lsn(131)] {
            *t.messages.entry(past).or_insert(0) += 1;
        }
        t.advance();
        assert_eq!(acks.acknowledged(), Lsn(110));
        t.message_done(Lsn(131));
        assert_eq!(acks.acknowledged(), Lsn(110), "the first message still holds the slot");
        t.message_done(Lsn(121));
        assert_eq!(acks.acknowledged(), Lsn(131), "both done: past the last one");
    }

    #[test]
    fn after_a_stop_no_commit_counts_so_dropped_deliveries_are_never_acknowledged() {
        let (shared, acks) = shared();
        let keys = KeyHashers::default();
        dispatch(&shared, &keys, commit(100, 110)).unwrap();
        assert_eq!(acks.acknowledged(), Lsn(110), "an empty transaction is done at once");
        shared.end(None);
        // A transaction whose batches arrived after the stop (dropped): its commit must not
        // make it done.
        dispatch(&shared, &keys, commit(200, 210)).unwrap();
        assert_eq!(acks.acknowledged(), Lsn(110));
    }

    #[test]
    fn a_transactional_message_counts_once_and_its_ack_completes_the_transaction() {
        let (shared, acks) = shared();
        let keys = KeyHashers::default();
        let mut reader = Reader {
            queue: shared.queue(&QueueKey::Messages),
            tracker: Arc::clone(&shared.tracker),
        };
        let message = Event::Message(LogicalMessage {
            transactional: true,
            lsn: Lsn(150),
            prefix: "p".into(),
            content: arrow_buffer::Buffer::from_vec(Vec::<u8>::new()),
            txn: Some((1, Lsn(200), 0)),
        });
        dispatch(&shared, &keys, message).unwrap();
        dispatch(&shared, &keys, commit(200, 210)).unwrap();
        assert_eq!(acks.acknowledged(), Lsn(0), "the message is not handled yet");
        let delivery = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(reader.next())
            .unwrap()
            .unwrap();
        delivery.ack.ack();
        assert_eq!(acks.acknowledged(), Lsn(210), "one ack completes the transaction");
    }

    #[test]
    fn an_unacknowledged_message_or_open_transaction_holds_the_slot_before_it() {
        let (mut t, acks) = tracker();
        t.committed(Lsn(100), Lsn(110));
        assert_eq!(acks.acknowledged(), Lsn(110));
        *t.messages.entry(Lsn(151)).or_insert(0) += 1;
        t.delivered(Lsn(200)); // open: not committed yet
        t.committed(Lsn(120), Lsn(130));
        assert_eq!(acks.acknowledged(), Lsn(130));
        t.message_done(Lsn(151));
        // Past the message, which comes before the open transaction's commit (that
        // transaction is sent again after a restart, since it commits later).
        assert_eq!(acks.acknowledged(), Lsn(151), "still before the open transaction's commit");
    }
}
