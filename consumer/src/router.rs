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
//! replays transactions the slot had not passed; the router drops what it already routed,
//! per queue, by each transaction's commit LSN and the rows (and truncates and messages) it
//! put into the queue — not by batch, because a transaction streamed before its commit may be
//! cut into other batches when it comes again — so readers see each row once per router.
//!
//! Order is preserved per queue: per table, and per key within a key partition.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::File;
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
use wal2arrow_client::{AckHandle, ChangeBatch, Event, LogicalMessage, Position};

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

/// A spill file, removed when the last handle to it goes.
#[derive(Debug)]
struct SpillFile {
    path: PathBuf,
    file: File,
}

impl SpillFile {
    /// Creates a new spill file in `dir` (on a blocking thread).
    async fn create(dir: &Path, name: &str) -> Result<Arc<SpillFile>> {
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
        blocking(move || {
            match std::fs::OpenOptions::new().create_new(true).read(true).write(true).open(&path) {
                Ok(file) => Ok(Arc::new(SpillFile { path, file })),
                Err(e) => Err(spill_error(&path, "cannot create", e)),
            }
        })
        .await
    }
}

impl Drop for SpillFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A queue's spill file and where it stands. The routing task appends records at the end,
/// readers take them from the front; both do their file I/O at explicit offsets on blocking
/// threads, so the queue's lock only guards these offsets and is never held across I/O.
#[derive(Debug)]
struct Spill {
    file: Arc<SpillFile>,
    read_at: u64,
    write_at: u64,
    /// The records written and not yet read, front first: their sizes and tables.
    records: VecDeque<(u64, Option<Arc<Relation>>)>,
    /// The routing task is writing a record at `write_at`: the file must stay.
    writing: bool,
}

/// A spill error for `path`.
fn spill_error(path: &Path, action: &str, source: std::io::Error) -> Error {
    Error::Spill { path: path.to_owned(), action: action.into(), source }
}

/// Runs file work on a blocking thread: the runtime's threads never wait for the disk.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        // Cancelled: the runtime is shutting down.
        Err(_) => Err(Error::Ended),
    }
}

/// Removes a drained spill file, on a blocking thread.
async fn discard(spill: Spill) {
    let _ = tokio::task::spawn_blocking(move || drop(spill)).await;
}

/// Writes all of `buf` at `offset`.
fn write_all_at(file: &File, buf: &[u8], offset: u64) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        std::os::unix::fs::FileExt::write_all_at(file, buf, offset)
    }
    #[cfg(windows)]
    {
        let (mut buf, mut offset) = (buf, offset);
        while !buf.is_empty() {
            match std::os::windows::fs::FileExt::seek_write(file, buf, offset)? {
                0 => return Err(std::io::ErrorKind::WriteZero.into()),
                n => {
                    buf = &buf[n..];
                    offset += n as u64;
                }
            }
        }
        Ok(())
    }
}

/// Fills `buf` from `offset`.
fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
    }
    #[cfg(windows)]
    {
        let (mut buf, mut offset) = (buf, offset);
        while !buf.is_empty() {
            match std::os::windows::fs::FileExt::seek_read(file, buf, offset)? {
                0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                n => {
                    buf = &mut buf[n..];
                    offset += n as u64;
                }
            }
        }
        Ok(())
    }
}

/// The bytes of a record's head: body length, commit LSN, ordinal, xid, commit time, key
/// partition, kind, flags.
const HEAD: usize = 8 + 8 + 4 + 4 + 8 + 4 + 2;

/// A delivery as a spill record: its head, then its body — a batch as an Arrow IPC stream, or
/// a message's LSN, prefix and content. (Its table stays in memory, with the record's size.)
fn encode_record(routed: &Routed) -> std::result::Result<Vec<u8>, arrow_schema::ArrowError> {
    let (position, xid, time, key, kind, flags) = match routed {
        Routed::Batch(b) => (b.position, b.xid, b.commit_time_us, b.key_partition, 0, 0),
        Routed::Truncate { position, cascade, restart_identity, .. } => {
            (*position, 0, 0, None, 1, truncate_flags(*cascade, *restart_identity))
        }
        Routed::Message(m) => {
            let (xid, commit_lsn, ordinal) = m.txn.unwrap_or((0, Lsn::INVALID, 0));
            let flags = u8::from(m.transactional) | if m.txn.is_some() { 2 } else { 0 };
            (Position { commit_lsn, ordinal }, xid, 0, None, 2, flags)
        }
    };
    let mut rec = vec![0u8; HEAD];
    match routed {
        Routed::Batch(b) => {
            let mut w = arrow_ipc::writer::StreamWriter::try_new(&mut rec, &b.batch.schema())?;
            w.write(&b.batch)?;
            w.finish()?;
        }
        Routed::Truncate { .. } => {}
        Routed::Message(m) => {
            rec.extend_from_slice(&m.lsn.0.to_le_bytes());
            rec.extend_from_slice(&(m.prefix.len() as u32).to_le_bytes());
            rec.extend_from_slice(m.prefix.as_bytes());
            rec.extend_from_slice(m.content.as_slice());
        }
    }
    let body_len = (rec.len() - HEAD) as u64;
    let mut head = Vec::with_capacity(HEAD);
    head.extend_from_slice(&body_len.to_le_bytes());
    head.extend_from_slice(&position.commit_lsn.0.to_le_bytes());
    head.extend_from_slice(&position.ordinal.to_le_bytes());
    head.extend_from_slice(&xid.to_le_bytes());
    head.extend_from_slice(&time.to_le_bytes());
    head.extend_from_slice(&key.map_or(u32::MAX, |k| k as u32).to_le_bytes());
    head.push(kind);
    head.push(flags);
    rec[..HEAD].copy_from_slice(&head);
    Ok(rec)
}

/// The delivery a spill record holds; `None` when the record is damaged.
fn decode_record(rec: &[u8], relation: Option<Arc<Relation>>) -> Option<Routed> {
    let u32_at = |at: usize| Some(u32::from_le_bytes(rec.get(at..at + 4)?.try_into().ok()?));
    let u64_at = |at: usize| Some(u64::from_le_bytes(rec.get(at..at + 8)?.try_into().ok()?));
    let body = rec.get(HEAD..)?;
    if u64_at(0)? != body.len() as u64 {
        return None;
    }
    let position = Position { commit_lsn: Lsn(u64_at(8)?), ordinal: u32_at(16)? };
    let xid = u32_at(20)?;
    let (kind, flags) = (rec[HEAD - 2], rec[HEAD - 1]);
    Some(match kind {
        0 => {
            let mut reader =
                arrow_ipc::reader::StreamReader::try_new(std::io::Cursor::new(body), None).ok()?;
            Routed::Batch(RoutedBatch {
                relation: relation?,
                position,
                xid,
                commit_time_us: u64_at(24)? as i64,
                batch: reader.next()?.ok()?,
                key_partition: Some(u32_at(32)?).filter(|k| *k != u32::MAX).map(|k| k as usize),
            })
        }
        1 => Routed::Truncate {
            relation: relation?,
            position,
            cascade: (flags & 4 != 0).then_some(flags & 1 != 0),
            restart_identity: (flags & 8 != 0).then_some(flags & 2 != 0),
        },
        2 => {
            let lsn = Lsn(u64::from_le_bytes(body.get(..8)?.try_into().ok()?));
            let prefix_len = u32::from_le_bytes(body.get(8..12)?.try_into().ok()?) as usize;
            let prefix = body.get(12..12 + prefix_len)?;
            Routed::Message(LogicalMessage {
                transactional: flags & 1 != 0,
                lsn,
                prefix: String::from_utf8_lossy(prefix).into_owned(),
                content: arrow_buffer::Buffer::from_slice_ref(&body[12 + prefix_len..]),
                txn: (flags & 2 != 0).then_some((xid, position.commit_lsn, position.ordinal)),
            })
        }
        _ => return None,
    })
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

/// One queue: in memory up to the budget, then in a spill file.
#[derive(Debug)]
struct Queue {
    name: String,
    state: Mutex<QueueState>,
    ready: Notify,
    /// Held by the reader taking the next delivery, across its read of the spill file: two
    /// readers of one queue never take the same record.
    taking: tokio::sync::Mutex<()>,
}

#[derive(Debug, Default)]
struct QueueState {
    memory: VecDeque<(Routed, AckTarget, usize)>,
    memory_bytes: usize,
    peak_memory_bytes: usize,
    spill: Option<Spill>,
    spilled_total: u64,
    spilled_bytes_total: u64,
    /// Replays are dropped by what each transaction put into the queue, counted in units — a
    /// batch's rows, one per truncate or message — which do not depend on how the transaction
    /// was cut into batches (a transaction streamed before its commit may be cut differently
    /// when it comes again): the commit LSN of the last transaction routed here and its units
    /// routed so far, and the same for this pass of the stream (since the last reconnection).
    routed: Option<(Lsn, u64)>,
    seen: Option<(Lsn, u64)>,
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
                taking: tokio::sync::Mutex::new(()),
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
        if *stream.in_progress() == wal2arrow_client::InProgress::Deliver {
            return Err(Error::Config(
                "the router routes committed transactions: build the stream with \
                 InProgress::Buffer (the default), not InProgress::Deliver"
                    .into(),
            ));
        }
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
                        spilled: s.spill.as_ref().map_or(0, |sp| sp.records.len() as u64),
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
        let _taking = self.queue.taking.lock().await;
        loop {
            let notified = self.queue.ready.notified();
            let (front, drained) = {
                let mut s = self.queue.state.lock().expect("queue lock");
                if let Some((routed, target, bytes)) = s.memory.pop_front() {
                    s.memory_bytes -= bytes;
                    return Some(Ok(self.delivery(routed, target)));
                }
                match &s.spill {
                    Some(sp) if !sp.records.is_empty() => {
                        let (len, relation) = sp.records.front().cloned().expect("not empty");
                        (Some((Arc::clone(&sp.file), sp.read_at, len, relation)), None)
                    }
                    // Drained: the file goes, new deliveries use memory again.
                    Some(sp) if !sp.writing => (None, s.spill.take()),
                    _ => (None, None),
                }
            };
            if let Some(spill) = drained {
                discard(spill).await;
            }
            if let Some((file, at, len, relation)) = front {
                let read = blocking(move || {
                    let mut rec = vec![0u8; len as usize];
                    read_exact_at(&file.file, &mut rec, at)
                        .map_err(|e| spill_error(&file.path, "cannot read back", e))?;
                    decode_record(&rec, relation).ok_or_else(|| {
                        spill_error(
                            &file.path,
                            "cannot read back",
                            std::io::Error::new(
                                std::io::ErrorKind::InvalidData,
                                "damaged spill record",
                            ),
                        )
                    })
                })
                .await;
                // Taken only now that it was read: a cancelled read leaves it for the next
                // call. (A failed one stays too: the queue cannot go past it.)
                let routed = match read {
                    Ok(routed) => routed,
                    Err(e) => return Some(Err(e)),
                };
                let drained = {
                    let mut s = self.queue.state.lock().expect("queue lock");
                    let sp = s.spill.as_mut().expect("a spill with records stays");
                    sp.records.pop_front();
                    sp.read_at += len;
                    if sp.records.is_empty() && !sp.writing { s.spill.take() } else { None }
                };
                if let Some(spill) = drained {
                    // Not waited for: the delivery is taken, and a cancelled call must not
                    // lose it (the removal finishes on its own).
                    drop(tokio::task::spawn_blocking(move || drop(spill)));
                }
                let target = match &routed {
                    Routed::Batch(b) => AckTarget::Txn(b.position.commit_lsn),
                    Routed::Truncate { position, .. } => AckTarget::Txn(position.commit_lsn),
                    Routed::Message(m) => match m.txn {
                        Some((_, commit, _)) => AckTarget::Txn(commit),
                        None => AckTarget::Message(m.ack_lsn()),
                    },
                };
                return Some(Ok(self.delivery(routed, target)));
            }
            {
                let s = self.queue.state.lock().expect("queue lock");
                let waiting = s.spill.as_ref().is_some_and(|sp| !sp.records.is_empty());
                if !waiting
                    && s.memory.is_empty()
                    && let Some(ended) = &s.ended
                {
                    return ended.as_ref().map(|e| Err(Error::Upstream(Arc::clone(e))));
                }
            }
            notified.await;
        }
    }

    fn delivery(&self, routed: Routed, target: AckTarget) -> Delivery {
        Delivery { routed, ack: AckToken { tracker: Arc::clone(&self.tracker), target } }
    }
}

/// The routing task.
async fn route(mut stream: CdcStream, shared: Arc<Shared>) {
    /// Ends the readers' queues even if routing panics (otherwise they would wait forever);
    /// a normal ending comes first and wins.
    struct EndGuard(Arc<Shared>);
    impl Drop for EndGuard {
        fn drop(&mut self) {
            if std::thread::panicking() {
                self.0.end(Some(Arc::new(Error::Panicked("the router's routing task".into()))));
            }
        }
    }
    let _guard = EndGuard(Arc::clone(&shared));
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
                if let Err(e) = dispatch(&shared, &keys, event).await {
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

async fn dispatch(shared: &Shared, keys: &KeyHashers, event: Event) -> Result<()> {
    if shared.has_ended() {
        // Stopped: nothing more is routed — not even a Commit, so that no transaction whose
        // deliveries were dropped can count as done (it comes again next time).
        return Ok(());
    }
    match event {
        Event::Begin(_) | Event::Relation(_) => {}
        Event::Restarted { .. } => {
            // What comes next is a new pass: replays are counted from its start.
            for queue in shared.queues.lock().expect("queues lock").values() {
                queue.state.lock().expect("queue lock").seen = None;
            }
        }
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
            let commit = m.txn.map(|(_, commit_lsn, _)| commit_lsn);
            enqueue(shared, &QueueKey::Messages, commit, Routed::Message(m), target, bytes).await?;
        }
        Event::Truncate(t) => {
            let position = Position { commit_lsn: t.commit_lsn, ordinal: t.ordinal };
            for relation in &t.relations {
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
                        Some(t.commit_lsn),
                        routed.clone(),
                        AckTarget::Txn(t.commit_lsn),
                        64,
                    )
                    .await?;
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
                    Some(position.commit_lsn),
                    Routed::Batch(base),
                    AckTarget::Txn(position.commit_lsn),
                    batch_bytes(&c),
                )
                .await?;
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
                        Some(position.commit_lsn),
                        routed,
                        AckTarget::Txn(position.commit_lsn),
                        bytes,
                    )
                    .await?;
                }
            }
        }
        // Kinds of events added later are not routed until the router knows them.
        _ => {}
    }
    Ok(())
}

/// What a batch costs a queue's memory: the payload its arrays point into, or (the wal2json
/// fallback, whose batches are built here) the arrays' own size.
fn batch_bytes(c: &ChangeBatch) -> usize {
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
    pub fn split(
        &self,
        batch: &RecordBatch,
        parts: usize,
    ) -> std::result::Result<Vec<Option<RecordBatch>>, arrow_schema::ArrowError> {
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
        Some(p) => p.split(batch, parts).map_err(Error::Arrow),
        None => Ok(std::iter::once(Some(batch.clone()))
            .chain(std::iter::repeat_n(None, parts - 1))
            .collect()),
    }
}

/// Whether a delivery of the transaction committed at `commit` is new to the queue: `None` for
/// a replay of what was routed here before a reconnection, the delivery (a batch cut to the
/// rows not yet routed, when only some were) otherwise. Rows of one transaction reach a queue
/// in the same order on every pass, however the transaction is cut into batches, so counting
/// them is exact.
fn admit(s: &mut QueueState, commit: Lsn, routed: Routed) -> Option<Routed> {
    let units = match &routed {
        Routed::Batch(b) => b.batch.num_rows() as u64,
        Routed::Truncate { .. } | Routed::Message(_) => 1,
    };
    let start = match s.seen {
        Some((c, n)) if c == commit => n,
        _ => 0,
    };
    s.seen = Some((commit, start + units));
    match s.routed {
        Some((c, _)) if c > commit => None,
        Some((c, n)) if c == commit && start + units <= n => None,
        Some((c, n)) if c == commit && start < n => {
            s.routed = Some((commit, start + units));
            let Routed::Batch(mut b) = routed else {
                unreachable!("only a batch holds more than one unit")
            };
            let skip = (n - start) as usize;
            b.batch = b.batch.slice(skip, b.batch.num_rows() - skip);
            Some(Routed::Batch(b))
        }
        _ => {
            s.routed = Some((commit, start + units));
            Some(routed)
        }
    }
}

/// Queues a delivery, spilling when the queue's memory is full; drops replays.
async fn enqueue(
    shared: &Shared,
    key: &QueueKey,
    commit: Option<Lsn>,
    routed: Routed,
    target: AckTarget,
    bytes: usize,
) -> Result<()> {
    if shared.has_ended() {
        // Stopped: nothing more is delivered (it was not acknowledged, so it comes again).
        return Ok(());
    }
    let queue = shared.queue(key);
    let mut routed = Some(routed);
    // To memory, or where in the spill file (no file yet: `None`).
    let to_file = {
        let mut s = queue.state.lock().expect("queue lock");
        if let Some(commit) = commit {
            match admit(&mut s, commit, routed.take().expect("given")) {
                Some(admitted) => routed = Some(admitted),
                None => return Ok(()), // replayed after a reconnection: already routed here
            }
        }
        if let AckTarget::Txn(commit) = target {
            shared.tracker.lock().expect("tracker lock").delivered(commit);
        }
        let fits = s.memory_bytes + bytes <= shared.options.memory_per_queue || s.memory.is_empty();
        match s.spill.as_mut() {
            None if fits => {
                s.memory_bytes += bytes;
                s.peak_memory_bytes = s.peak_memory_bytes.max(s.memory_bytes);
                s.memory.push_back((routed.take().expect("not queued yet"), target, bytes));
                None
            }
            None => Some(None),
            Some(sp) => {
                sp.writing = true;
                Some(Some((Arc::clone(&sp.file), sp.write_at)))
            }
        }
    };
    if let Some(at) = to_file {
        let routed = routed.expect("not queued in memory");
        // Only this task writes, so the file and its end stay as read above.
        let (file, at, new) = match at {
            Some((file, at)) => (file, at, false),
            None => (SpillFile::create(&shared.options.spill_dir, &queue.name).await?, 0, true),
        };
        let relation = match &routed {
            Routed::Batch(b) => Some(Arc::clone(&b.relation)),
            Routed::Truncate { relation, .. } => Some(Arc::clone(relation)),
            Routed::Message(_) => None,
        };
        let writer = Arc::clone(&file);
        let written = blocking(move || {
            let rec = encode_record(&routed).map_err(|e| {
                spill_error(&writer.path, "cannot encode a batch for", std::io::Error::other(e))
            })?;
            write_all_at(&writer.file, &rec, at)
                .map_err(|e| spill_error(&writer.path, "cannot write to", e))?;
            Ok(rec.len() as u64)
        })
        .await;
        let mut s = queue.state.lock().expect("queue lock");
        let sp = s.spill.get_or_insert_with(|| Spill {
            file,
            read_at: 0,
            write_at: 0,
            records: VecDeque::new(),
            writing: false,
        });
        debug_assert!(new || sp.writing, "a spill being written stays");
        sp.writing = false;
        let written = written?;
        sp.write_at += written;
        sp.records.push_back((written, relation));
        s.spilled_total += 1;
        s.spilled_bytes_total += written;
    }
    queue.ready.notify_waiters();
    queue.ready.notify_one();
    Ok(())
}

#[cfg(test)]
mod tests {

    use super::*;

    fn tracker() -> (Tracker, AckHandle) {
        let acks = AckHandle::default();
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
        Event::Commit(wal2arrow_client::TxnCommit {
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

    #[tokio::test]
    async fn after_a_stop_no_commit_counts_so_dropped_deliveries_are_never_acknowledged() {
        let (shared, acks) = shared();
        let keys = KeyHashers::default();
        dispatch(&shared, &keys, commit(100, 110)).await.unwrap();
        assert_eq!(acks.acknowledged(), Lsn(110), "an empty transaction is done at once");
        shared.end(None);
        // A transaction whose batches arrived after the stop (dropped): its commit must not
        // make it done.
        dispatch(&shared, &keys, commit(200, 210)).await.unwrap();
        assert_eq!(acks.acknowledged(), Lsn(110));
    }

    #[tokio::test]
    async fn a_transactional_message_counts_once_and_its_ack_completes_the_transaction() {
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
        dispatch(&shared, &keys, message).await.unwrap();
        dispatch(&shared, &keys, commit(200, 210)).await.unwrap();
        assert_eq!(acks.acknowledged(), Lsn(0), "the message is not handled yet");
        let delivery = reader.next().await.unwrap().unwrap();
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

    fn message(lsn: u64, content: &str) -> Event {
        Event::Message(LogicalMessage {
            transactional: false,
            lsn: Lsn(lsn),
            prefix: "p".into(),
            content: arrow_buffer::Buffer::from_slice_ref(content.as_bytes()),
            txn: None,
        })
    }

    #[tokio::test]
    async fn spilled_deliveries_come_back_in_order_and_a_cancelled_read_loses_nothing() {
        let dir = std::env::temp_dir().join(format!("wal2arrow-spill-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (t, acks) = tracker();
        let shared = Arc::new(Shared {
            options: RouterOptions {
                memory_per_queue: 1,
                spill_dir: dir.clone(),
                ..RouterOptions::default()
            },
            queues: Mutex::new(HashMap::with_hasher(hasher())),
            tracker: Arc::new(Mutex::new(t)),
            ended: Mutex::new(None),
            stop: Notify::new(),
        });
        let keys = KeyHashers::default();
        let mut reader = Reader {
            queue: shared.queue(&QueueKey::Messages),
            tracker: Arc::clone(&shared.tracker),
        };
        // The first fits in memory (an empty queue takes anything); the rest spill.
        for i in 1..=5u64 {
            dispatch(&shared, &keys, message(100 * i, &format!("m{i}"))).await.unwrap();
        }
        let q = shared.queue(&QueueKey::Messages);
        assert_eq!(q.state.lock().unwrap().spill.as_ref().unwrap().records.len(), 4);
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1, "one spill file");

        let content = |d: &Delivery| match &d.routed {
            Routed::Message(m) => String::from_utf8(m.content.as_slice().to_vec()).unwrap(),
            other => panic!("not a message: {other:?}"),
        };
        let first = reader.next().await.unwrap().unwrap();
        assert_eq!(content(&first), "m1");
        // A read of the file abandoned half-way (the first poll starts it, then the future is
        // dropped): the record is still there for the next call.
        // The read runs on a blocking thread, which may finish before the poll looks at it:
        // then the poll hands over m2 and nothing was abandoned (the order check still holds).
        let mut got = vec![content(&first)];
        let mut deliveries = vec![first];
        {
            let mut abandoned = std::pin::pin!(reader.next());
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            if let std::task::Poll::Ready(d) = abandoned.as_mut().poll(&mut cx) {
                let d = d.unwrap().unwrap();
                got.push(content(&d));
                deliveries.push(d);
            }
        }
        while deliveries.len() < 5 {
            let d = reader.next().await.unwrap().unwrap();
            got.push(content(&d));
            deliveries.push(d);
        }
        assert_eq!(got, ["m1", "m2", "m3", "m4", "m5"]);
        assert!(q.state.lock().unwrap().spill.is_none(), "drained");
        // The drained file is removed (on a blocking thread, not waited for).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::fs::read_dir(&dir).unwrap().count() > 0 {
            assert!(std::time::Instant::now() < deadline, "the drained file is removed");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        for d in deliveries {
            d.ack.ack();
        }
        assert_eq!(acks.acknowledged(), Lsn(501), "past the last message once all are handled");
        // New deliveries use memory again.
        dispatch(&shared, &keys, message(600, "m6")).await.unwrap();
        assert_eq!(q.state.lock().unwrap().memory.len(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[cfg(test)]
mod replay_tests {
    use super::*;
    use arrow_array::cast::AsArray;
    use arrow_array::types::UInt64Type;
    use wal2arrow_schema::samples::{append_row, every_kind};

    /// A batch of rows `from..to` of `public.every` (their `_lsn` is the row number).
    fn rows(from: usize, to: usize) -> Routed {
        let desc = every_kind();
        let relation = Arc::new(Relation::from_desc(&desc).unwrap());
        let mut enc = wal2arrow_schema::encode::BatchEncoder::new(&desc);
        for i in from..to {
            append_row(&mut enc, i, Lsn(i as u64));
        }
        let mut bytes = Vec::new();
        enc.write_batch(&mut bytes).unwrap();
        let mut decoder = wal2arrow_schema::Decoder::new();
        let mut schema = Vec::new();
        wal2arrow_schema::encode::write_schema_message(&mut schema, &desc).unwrap();
        decoder.decode(&arrow_buffer::Buffer::from_vec(schema)).unwrap();
        let wal2arrow_schema::Message::Batch(b) =
            decoder.decode(&arrow_buffer::Buffer::from_vec(bytes)).unwrap()
        else {
            panic!("a batch")
        };
        Routed::Batch(RoutedBatch {
            relation,
            position: Position { commit_lsn: Lsn(100), ordinal: 0 },
            xid: 1,
            commit_time_us: 0,
            batch: b.batch,
            key_partition: None,
        })
    }

    fn lsns(r: &Routed) -> Vec<u64> {
        let Routed::Batch(b) = r else { panic!() };
        b.batch.column_by_name("_lsn").unwrap().as_primitive::<UInt64Type>().values().to_vec()
    }

    #[test]
    fn a_transaction_cut_differently_when_it_comes_again_is_routed_once_row_for_row() {
        let mut s = QueueState::default();
        let mut out: Vec<u64> = Vec::new();
        // First pass: rows 0..6 of the transaction committed at 100, cut 4 + 2, then the
        // connection is lost.
        for (a, b) in [(0, 4), (4, 6)] {
            out.extend(lsns(&admit(&mut s, Lsn(100), rows(a, b)).unwrap()));
        }
        // Second pass (after Restarted): an older transaction, then the whole one cut 5 + 5.
        s.seen = None;
        assert!(admit(&mut s, Lsn(50), rows(0, 3)).is_none(), "routed before the first pass");
        for (a, b) in [(0, 5), (5, 10)] {
            if let Some(r) = admit(&mut s, Lsn(100), rows(a, b)) {
                out.extend(lsns(&r));
            }
        }
        // A third pass, cut 3 + 7: all of it was routed.
        s.seen = None;
        assert!(admit(&mut s, Lsn(100), rows(0, 3)).is_none());
        assert!(admit(&mut s, Lsn(100), rows(3, 10)).is_none());
        assert_eq!(out, (0..10).collect::<Vec<u64>>(), "every row once, in order");
        // The next transaction is new.
        assert_eq!(lsns(&admit(&mut s, Lsn(200), rows(0, 2)).unwrap()), [0, 1]);
    }
}
