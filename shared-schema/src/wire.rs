//! The wal2arrow wire format, version 4: framing of the messages the plugin writes.
//!
//! Every message (or Bundle of messages) is exactly one `OutputPluginWrite`, so it arrives as
//! one XLogData payload of the [streaming replication protocol][proto]. A message starts with a 4-byte prefix —
//! kind, version, flags, reserved — then a fixed header for its kind; Schema and Batch
//! messages continue with one [encapsulated Arrow IPC message][ipc] (continuation marker,
//! metadata length, flatbuffer `Message`, body). All integers are little-endian.
//!
//! | kind | byte | fixed header (bytes) | then |
//! |---|---|---|---|
//! | Begin | `B` | prefix, xid `u32`, final (commit) LSN `u64`, commit time `i64` (24) | — |
//! | Origin | `O` | prefix, name length `u32`, origin LSN `u64` (16) | the origin's name |
//! | Schema | `S` | prefix, relation OID `u32`, reserved `u64` (16) | IPC `Schema` message |
//! | Batch | `R` | prefix, relation OID `u32`, base LSN `u64` (16) | IPC `RecordBatch` message |
//! | Truncate | `T` | prefix, relation count `u32` (8) | that many relation OIDs (`u32`) |
//! | Message | `M` | prefix, prefix length `u32`, LSN `u64`, content length `u32`, reserved `u32` (24) | prefix, content |
//! | Commit | `C` | prefix, reserved `u32`, commit LSN `u64`, end LSN `u64`, commit time `i64` (32) | — |
//! | Bundle (v2) | `X` | prefix, message count `u32`, reserved `u64` (16) | per message: length `u32`, reserved (12 bytes), the message, zeros to a multiple of 16 |
//! | Stream Start (v4) | `s` | prefix, xid `u32` (8) | — |
//! | Subtransaction (v4) | `u` | prefix, subtransaction xid `u32` (8) | — |
//! | Stream Stop (v4) | `e` | prefix, reserved `u32` (8) | — |
//! | Stream Abort (v4) | `a` | prefix, xid `u32`, subtransaction xid `u32`, reserved `u32`, abort LSN `u64` (24) | — |
//! | Stream Commit (v4) | `c` | prefix, xid `u32`, commit LSN `u64`, end LSN `u64`, commit time `i64` (32) | — |
//!
//! The prefix's flags byte is defined per kind: Batch `0x01` = some row has a bit set in
//! `_missing`, `0x02` = some row has a bit set in `_unrepresentable` (hints: a reader may skip
//! the bitmaps when the flag is clear); Truncate `0x01` = `CASCADE`, `0x02` = `RESTART
//! IDENTITY`; Message `0x01` = transactional; Stream Start `0x01` = the transaction's first
//! block. Commit times are microseconds since 1970-01-01
//! UTC (0 when the consumer asked for no timestamps). The 16-byte headers of Schema and Batch
//! keep the IPC message at a 16-byte offset, and the plugin writes IPC bodies with 16-byte
//! buffer alignment: a payload received into a 16-byte-aligned allocation can be decoded
//! without copying any buffer (even `Decimal128`'s, which need 16).
//!
//! **Standard Arrow.** A Batch's record batch has exactly the fields of the Schema message sent
//! before it — the table's columns, `_op`, `_lsn_delta` (with `include-lsn`), `_missing` and
//! `_unrepresentable` — in every batch: any Arrow IPC reader (arrow-rs `StreamReader`, pyarrow)
//! decodes each Schema followed by its Batches as an ordinary IPC stream, with no knowledge of
//! wal2arrow. The system columns are plain Arrow types: `_op` `UInt8` (a [`ChangeOp`] code),
//! `_lsn_delta` `UInt32` (the row's LSN minus the header's base LSN), and `_missing` /
//! `_unrepresentable` `FixedSizeBinary(w)`, never NULL: per row a bitmap of the table's columns
//! (bit *i* = column *i*, least significant bit first, `w` = ⌈columns / 8⌉, at least 1), all
//! zeros when no column is marked.
//!
//! A message's version byte is the wire version that defined its kind's format: 4 for the
//! stream kinds, 3 for Schema and Batch (version 3 made every batch carry every field of its
//! schema and added `_unrepresentable`), 2 for Bundle, 1 for the other kinds. A plugin accepts
//! `proto-version` 3 and 4 and writes the stream kinds only to a consumer that asked for
//! version 4 and `streaming`; a reader rejects a message whose version is newer than it knows, older
//! than its kind's, or whose flags or reserved bits are set: they are how later versions will
//! announce changes.
//!
//! Every message is one XLogData payload, except inside a Bundle: the plugin gathers a
//! transaction's messages and sends them as one Bundle at commit (or each time a megabyte has
//! gathered), so a one-row transaction costs one server write rather than three. A Batch the
//! plugin estimates at 64 kB or more is sent as its own payload instead, after a Bundle of the
//! messages gathered before it (sparing a copy of its bytes): a transaction may arrive as
//! several Bundles and single messages, always in order.
//!
//! **Streamed transactions** (version 4, option `streaming`). PostgreSQL 14 and later decode a
//! transaction larger than `logical_decoding_work_mem` before it commits, in blocks, instead of
//! spilling it to disk until its commit. A block is a Stream Start (the top-level xid; flag
//! `0x01` on the transaction's first block), the transaction's Schema, Batch, Truncate and
//! transactional Message messages as in a committed transaction, and a Stream Stop. Inside a
//! block a Subtransaction message says which (sub)transaction the messages after it belong to
//! (until the next one; a block starts in the top-level transaction), and a batch never holds
//! rows of two. Blocks of different transactions interleave with each other and with ordinary
//! (Begin … Commit) transactions, but never nest. A streamed transaction ends with a Stream
//! Commit — its commit LSN, end LSN and time; commits, streamed or not, arrive in commit order —
//! or a Stream Abort: of the whole transaction (subtransaction xid = xid), or of one
//! subtransaction rolled back to its savepoint, whose messages the reader drops (a
//! subtransaction nested in it gets its own Stream Abort). Batches of a streamed transaction
//! carry no commit LSN: the reader learns it at the Stream Commit. Stream kinds are never
//! bundled with a committed transaction's messages; a block may be one Bundle.
//!
//! [proto]: https://www.postgresql.org/docs/15/protocol-replication.html
//! [ipc]: https://arrow.apache.org/docs/format/Columnar.html#encapsulated-message-format

use std::fmt;
use std::io::{self, Write};

use crate::lsn::Lsn;

/// The wire format version this crate writes and reads. Version 2 added Bundle messages;
/// version 3 changed Schema and Batch (every batch carries every field of its schema, and
/// `_unrepresentable`); version 4 added the stream kinds (in-progress transactions); the other
/// kinds are unchanged since version 1 and carry version byte 1.
pub const WIRE_VERSION: u8 = 4;

/// Bytes before the IPC message in Schema and Batch messages.
pub const IPC_OFFSET: usize = 16;

/// Alignment of the IPC message bodies the plugin writes, and the alignment a payload needs
/// for zero-copy decoding.
pub const IPC_ALIGNMENT: usize = 16;

/// The kind of a wire message: its first byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum MessageKind {
    /// A transaction starts.
    Begin = b'B',
    /// A table's Arrow schema, sent before its first batch in a session and again after the
    /// table changed.
    Schema = b'S',
    /// A batch of one table's row changes, as an Arrow record batch.
    Batch = b'R',
    /// Tables were truncated.
    Truncate = b'T',
    /// A logical decoding message (`pg_logical_emit_message`).
    Message = b'M',
    /// The transaction was replayed from a replication origin.
    Origin = b'O',
    /// A transaction committed.
    Commit = b'C',
    /// Several messages in one payload (wire version 2): a small transaction's Begin, batches
    /// and Commit arrive as one XLogData, in one server write.
    Bundle = b'X',
    /// A block of an in-progress (streamed) transaction starts (wire version 4).
    StreamStart = b's',
    /// The messages after it in the block belong to this (sub)transaction (wire version 4).
    Subtransaction = b'u',
    /// The block ends (wire version 4).
    StreamStop = b'e',
    /// A streamed transaction, or one of its subtransactions, aborted (wire version 4).
    StreamAbort = b'a',
    /// A streamed transaction committed (wire version 4).
    StreamCommit = b'c',
}

/// Batch flag: some row of the batch has a bit set in `_missing`.
pub const BATCH_HAS_MISSING: u8 = 0x01;
/// Batch flag: some row of the batch has a bit set in `_unrepresentable`.
pub const BATCH_HAS_UNREPRESENTABLE: u8 = 0x02;
/// Truncate flag: `TRUNCATE … CASCADE`.
pub const TRUNCATE_CASCADE: u8 = 0x01;
/// Truncate flag: `TRUNCATE … RESTART IDENTITY`.
pub const TRUNCATE_RESTART_IDENTITY: u8 = 0x02;
/// Message flag: a transactional message.
pub const MESSAGE_TRANSACTIONAL: u8 = 0x01;
/// Stream Start flag: the transaction's first block.
pub const STREAM_FIRST_BLOCK: u8 = 0x01;

impl MessageKind {
    /// The kind for a message's first byte.
    pub fn from_byte(b: u8) -> Option<MessageKind> {
        Some(match b {
            b'B' => MessageKind::Begin,
            b'S' => MessageKind::Schema,
            b'R' => MessageKind::Batch,
            b'T' => MessageKind::Truncate,
            b'M' => MessageKind::Message,
            b'O' => MessageKind::Origin,
            b'C' => MessageKind::Commit,
            b'X' => MessageKind::Bundle,
            b's' => MessageKind::StreamStart,
            b'u' => MessageKind::Subtransaction,
            b'e' => MessageKind::StreamStop,
            b'a' => MessageKind::StreamAbort,
            b'c' => MessageKind::StreamCommit,
            _ => return None,
        })
    }

    fn header_len(self) -> usize {
        match self {
            MessageKind::Begin | MessageKind::Message | MessageKind::StreamAbort => 24,
            MessageKind::StreamStart | MessageKind::Subtransaction | MessageKind::StreamStop => 8,
            MessageKind::Schema
            | MessageKind::Batch
            | MessageKind::Origin
            | MessageKind::Bundle => IPC_OFFSET,
            MessageKind::Truncate => 8,
            MessageKind::Commit | MessageKind::StreamCommit => 32,
        }
    }

    /// Whether the kind belongs to streamed (in-progress) transactions.
    pub fn is_stream(self) -> bool {
        matches!(
            self,
            MessageKind::StreamStart
                | MessageKind::Subtransaction
                | MessageKind::StreamStop
                | MessageKind::StreamAbort
                | MessageKind::StreamCommit
        )
    }

    /// The wire version that defined this kind's format: the version byte it is written with.
    pub fn since(self) -> u8 {
        match self {
            k if k.is_stream() => 4,
            MessageKind::Schema | MessageKind::Batch => 3,
            MessageKind::Bundle => 2,
            _ => 1,
        }
    }

    /// The flag bits this kind defines.
    fn flags(self) -> u8 {
        match self {
            MessageKind::Batch => BATCH_HAS_MISSING | BATCH_HAS_UNREPRESENTABLE,
            MessageKind::Truncate => TRUNCATE_CASCADE | TRUNCATE_RESTART_IDENTITY,
            MessageKind::Message => MESSAGE_TRANSACTIONAL,
            MessageKind::StreamStart => STREAM_FIRST_BLOCK,
            _ => 0,
        }
    }
}

/// The kind of change a row of a batch records (the `_op` column).
///
/// An UPDATE is one `update` row (the new image), preceded by an `update_before` row (the old
/// key, or the old row with `REPLICA IDENTITY FULL`) when PostgreSQL logged one. A DELETE is
/// one `delete` row holding the old key or row.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ChangeOp {
    /// A new row.
    Insert = 0,
    /// The new image of an updated row.
    Update = 1,
    /// A deleted row: its key, or the whole old row with `REPLICA IDENTITY FULL`.
    Delete = 2,
    /// The old image of an updated row: its key, or the whole old row with
    /// `REPLICA IDENTITY FULL`.
    UpdateBefore = 3,
    /// A row read by a snapshot (an initial snapshot or a backfill), not a change: the table
    /// held it at the snapshot's LSN. Never on the wire: the consumer makes these batches from
    /// `COPY` (Debezium calls the same thing `r`, read).
    Read = 4,
}

/// The values of the `_op` dictionary, indexed by [`ChangeOp`] code.
pub const OP_NAMES: [&str; 5] = ["insert", "update", "delete", "update_before", "read"];

impl ChangeOp {
    /// The op for a wire code.
    pub fn from_code(code: u8) -> Option<ChangeOp> {
        Some(match code {
            0 => ChangeOp::Insert,
            1 => ChangeOp::Update,
            2 => ChangeOp::Delete,
            3 => ChangeOp::UpdateBefore,
            4 => ChangeOp::Read,
            _ => return None,
        })
    }

    /// Its name in the `_op` column.
    pub fn name(self) -> &'static str {
        OP_NAMES[self as usize]
    }
}

/// Begin message: a transaction's changes follow, up to its [`Commit`].
///
/// PostgreSQL decodes a transaction only once it committed, so the commit LSN and time are
/// already known here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Begin {
    /// Transaction ID.
    pub xid: u32,
    /// LSN of the commit record.
    pub final_lsn: Lsn,
    /// Commit time, microseconds since the Unix epoch.
    pub commit_time_us: i64,
}

/// Commit message: the transaction's last message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Commit {
    /// LSN of the commit record.
    pub commit_lsn: Lsn,
    /// LSN just past the commit record: what a consumer confirms as flushed once it has
    /// durably handled the transaction.
    pub end_lsn: Lsn,
    /// Commit time, microseconds since the Unix epoch.
    pub commit_time_us: i64,
}

/// Stream Abort message: a streamed transaction aborted, or one of its subtransactions was
/// rolled back to its savepoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamAbort {
    /// The top-level transaction.
    pub xid: u32,
    /// The aborted (sub)transaction: `xid` itself when the whole transaction aborted.
    pub subxid: u32,
    /// LSN of the abort record.
    pub abort_lsn: Lsn,
}

/// Stream Commit message: a streamed transaction committed; every block of it came before.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamCommit {
    /// The top-level transaction.
    pub xid: u32,
    /// LSN of the commit record.
    pub commit_lsn: Lsn,
    /// LSN just past the commit record (what a consumer confirms).
    pub end_lsn: Lsn,
    /// Commit time, microseconds since the Unix epoch.
    pub commit_time_us: i64,
}

/// A message that does not follow the wire format.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WireError {
    /// Empty payload.
    Empty,
    /// First byte is no known message kind.
    UnknownKind(u8),
    /// Written by a newer wire version.
    UnsupportedVersion {
        /// Version in the message.
        found: u8,
        /// Newest this reader knows.
        max: u8,
    },
    /// Written in an older layout of its kind than this reader knows (a plugin older than
    /// the consumer).
    OlderVersion {
        /// The message's kind.
        kind: MessageKind,
        /// Version in the message.
        found: u8,
        /// The version this reader reads the kind from.
        min: u8,
    },
    /// Flag or reserved bits set that this version does not define.
    ReservedBits(MessageKind),
    /// Shorter than its kind's header.
    Truncated {
        /// The message's kind.
        kind: MessageKind,
        /// Bytes needed.
        need: usize,
        /// Bytes present.
        got: usize,
    },
    /// Begin or Commit with bytes after the header.
    TrailingBytes(MessageKind),
    /// The embedded Arrow IPC message is malformed or does not match the table's schema.
    Ipc(String),
    /// Arrow rejected the embedded IPC message (its error is the [`source`]).
    ///
    /// [`source`]: std::error::Error::source
    Arrow(ArrowSource),
    /// A batch for a relation whose schema message was never received.
    UnknownRelation(u32),
    /// A schema message without the metadata wal2arrow requires.
    BadSchema(String),
    /// A Bundle inside a Bundle, or one given where a single message was expected.
    NestedBundle,
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::Empty => write!(f, "empty wal2arrow message"),
            WireError::UnknownKind(b) => write!(f, "unknown wal2arrow message kind 0x{b:02x}"),
            WireError::UnsupportedVersion { found, max } => write!(
                f,
                "wal2arrow message of wire version {found}, but this consumer reads up to \
                 version {max}: upgrade the consumer or request proto-version {max}"
            ),
            WireError::OlderVersion { kind, found, min } => write!(
                f,
                "wal2arrow {kind:?} message of wire version {found}, but this consumer reads that \
                 kind from version {min}: upgrade the wal2arrow plugin on the server to the \
                 consumer's version"
            ),
            WireError::ReservedBits(k) => {
                write!(f, "wal2arrow {k:?} message has flags or reserved bits set")
            }
            WireError::Truncated { kind, need, got } => {
                write!(f, "wal2arrow {kind:?} message truncated: {got} bytes, header needs {need}")
            }
            WireError::TrailingBytes(k) => write!(f, "wal2arrow {k:?} message has trailing bytes"),
            WireError::Ipc(e) => write!(f, "malformed Arrow IPC in wal2arrow message: {e}"),
            WireError::Arrow(e) => write!(f, "malformed Arrow IPC in wal2arrow message: {}", e.0),
            WireError::UnknownRelation(relid) => write!(
                f,
                "wal2arrow batch for relation {relid} arrived before that relation's schema"
            ),
            WireError::BadSchema(e) => write!(f, "malformed wal2arrow schema message: {e}"),
            WireError::NestedBundle => write!(f, "wal2arrow bundle where a single message belongs"),
        }
    }
}

impl std::error::Error for WireError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            WireError::Arrow(e) => Some(e.0.as_ref()),
            _ => None,
        }
    }
}

/// An Arrow error inside a [`WireError`]: shared, so the error stays `Clone`, and compared by
/// its message.
#[derive(Clone, Debug)]
pub struct ArrowSource(pub std::sync::Arc<arrow_schema::ArrowError>);

impl PartialEq for ArrowSource {
    fn eq(&self, other: &Self) -> bool {
        self.0.to_string() == other.0.to_string()
    }
}

impl Eq for ArrowSource {}

impl From<arrow_schema::ArrowError> for WireError {
    fn from(e: arrow_schema::ArrowError) -> Self {
        WireError::Arrow(ArrowSource(std::sync::Arc::new(e)))
    }
}

fn prefix(kind: MessageKind) -> [u8; 4] {
    prefix_with(kind, 0)
}

fn prefix_with(kind: MessageKind, flags: u8) -> [u8; 4] {
    debug_assert_eq!(flags & !kind.flags(), 0, "undefined flags for {kind:?}");
    [kind as u8, kind.since(), flags, 0]
}

/// Writes a Bundle's header: `count` entries follow, each an entry header
/// ([`write_bundle_entry_header`]), the message, and zeros up to a multiple of 16 bytes (so
/// every message, and the Arrow IPC inside it, stays 16-byte aligned).
///
/// # Errors
///
/// Whatever `out` returns.
pub fn write_bundle_header(out: &mut impl Write, count: u32) -> io::Result<()> {
    let mut b = [0u8; IPC_OFFSET];
    b[..4].copy_from_slice(&prefix(MessageKind::Bundle));
    b[4..8].copy_from_slice(&count.to_le_bytes());
    out.write_all(&b)
}

/// Bytes of a bundle entry's header.
pub const BUNDLE_ENTRY_HEADER: usize = 16;

/// Writes a bundle entry's header: the length of the message that follows.
///
/// # Errors
///
/// Whatever `out` returns.
pub fn write_bundle_entry_header(out: &mut impl Write, len: u32) -> io::Result<()> {
    let mut b = [0u8; BUNDLE_ENTRY_HEADER];
    b[..4].copy_from_slice(&len.to_le_bytes());
    out.write_all(&b)
}

/// The byte ranges of a Bundle's messages, checked: as many as the header says, each within
/// the bundle, padded with zeros to 16 bytes, none a bundle itself, nothing after the last.
///
/// # Errors
///
/// [`WireError`] for a malformed bundle.
pub fn bundle_entries(msg: &[u8]) -> Result<Vec<std::ops::Range<usize>>, WireError> {
    let Header::Bundle { count } = read_header(msg)? else {
        return Err(WireError::UnknownKind(msg.first().copied().unwrap_or(0)));
    };
    let kind = MessageKind::Bundle;
    let mut at = IPC_OFFSET;
    let mut out = Vec::with_capacity(count.min(1024) as usize);
    for _ in 0..count {
        let head = msg.get(at..at + BUNDLE_ENTRY_HEADER).ok_or(WireError::Truncated {
            kind,
            need: at + BUNDLE_ENTRY_HEADER,
            got: msg.len(),
        })?;
        if head[4..].iter().any(|b| *b != 0) {
            return Err(WireError::ReservedBits(kind));
        }
        let len = u32_at(head, 0) as usize;
        let start = at + BUNDLE_ENTRY_HEADER;
        let end =
            start.checked_add(len).filter(|e| *e <= msg.len()).ok_or(WireError::Truncated {
                kind,
                need: start.saturating_add(len),
                got: msg.len(),
            })?;
        if msg.get(start) == Some(&(MessageKind::Bundle as u8)) {
            return Err(WireError::NestedBundle);
        }
        let padded_end = end.div_ceil(IPC_ALIGNMENT) * IPC_ALIGNMENT;
        match msg.get(end..padded_end) {
            Some(pad) if pad.iter().all(|b| *b == 0) => {}
            _ => return Err(WireError::TrailingBytes(kind)),
        }
        out.push(start..end);
        at = padded_end;
    }
    if at != msg.len() {
        return Err(WireError::TrailingBytes(kind));
    }
    Ok(out)
}

/// Writes a Begin message.
///
/// # Errors
///
/// Whatever `out` returns.
pub fn write_begin(out: &mut impl Write, m: &Begin) -> io::Result<()> {
    let mut b = [0u8; 24];
    b[..4].copy_from_slice(&prefix(MessageKind::Begin));
    b[4..8].copy_from_slice(&m.xid.to_le_bytes());
    b[8..16].copy_from_slice(&m.final_lsn.0.to_le_bytes());
    b[16..24].copy_from_slice(&m.commit_time_us.to_le_bytes());
    out.write_all(&b)
}

/// Writes a Commit message.
///
/// # Errors
///
/// Whatever `out` returns.
pub fn write_commit(out: &mut impl Write, m: &Commit) -> io::Result<()> {
    let mut b = [0u8; 32];
    b[..4].copy_from_slice(&prefix(MessageKind::Commit));
    b[8..16].copy_from_slice(&m.commit_lsn.0.to_le_bytes());
    b[16..24].copy_from_slice(&m.end_lsn.0.to_le_bytes());
    b[24..32].copy_from_slice(&m.commit_time_us.to_le_bytes());
    out.write_all(&b)
}

/// Writes a Stream Start message: a block of transaction `xid` follows (`first`: its first).
///
/// # Errors
///
/// Whatever `out` returns.
pub fn write_stream_start(out: &mut impl Write, xid: u32, first: bool) -> io::Result<()> {
    let mut b = [0u8; 8];
    b[..4].copy_from_slice(&prefix_with(
        MessageKind::StreamStart,
        if first { STREAM_FIRST_BLOCK } else { 0 },
    ));
    b[4..8].copy_from_slice(&xid.to_le_bytes());
    out.write_all(&b)
}

/// Writes a Subtransaction message: the block's next messages belong to `subxid`.
///
/// # Errors
///
/// Whatever `out` returns.
pub fn write_subtransaction(out: &mut impl Write, subxid: u32) -> io::Result<()> {
    let mut b = [0u8; 8];
    b[..4].copy_from_slice(&prefix(MessageKind::Subtransaction));
    b[4..8].copy_from_slice(&subxid.to_le_bytes());
    out.write_all(&b)
}

/// Writes a Stream Stop message.
///
/// # Errors
///
/// Whatever `out` returns.
pub fn write_stream_stop(out: &mut impl Write) -> io::Result<()> {
    let mut b = [0u8; 8];
    b[..4].copy_from_slice(&prefix(MessageKind::StreamStop));
    out.write_all(&b)
}

/// Writes a Stream Abort message.
///
/// # Errors
///
/// Whatever `out` returns.
pub fn write_stream_abort(out: &mut impl Write, m: &StreamAbort) -> io::Result<()> {
    let mut b = [0u8; 24];
    b[..4].copy_from_slice(&prefix(MessageKind::StreamAbort));
    b[4..8].copy_from_slice(&m.xid.to_le_bytes());
    b[8..12].copy_from_slice(&m.subxid.to_le_bytes());
    b[16..24].copy_from_slice(&m.abort_lsn.0.to_le_bytes());
    out.write_all(&b)
}

/// Writes a Stream Commit message.
///
/// # Errors
///
/// Whatever `out` returns.
pub fn write_stream_commit(out: &mut impl Write, m: &StreamCommit) -> io::Result<()> {
    let mut b = [0u8; 32];
    b[..4].copy_from_slice(&prefix(MessageKind::StreamCommit));
    b[4..8].copy_from_slice(&m.xid.to_le_bytes());
    b[8..16].copy_from_slice(&m.commit_lsn.0.to_le_bytes());
    b[16..24].copy_from_slice(&m.end_lsn.0.to_le_bytes());
    b[24..32].copy_from_slice(&m.commit_time_us.to_le_bytes());
    out.write_all(&b)
}

/// Writes the fixed header of a Schema message; the IPC schema message follows.
pub(crate) fn write_schema_header(out: &mut impl Write, relid: u32) -> io::Result<()> {
    let mut b = [0u8; IPC_OFFSET];
    b[..4].copy_from_slice(&prefix(MessageKind::Schema));
    b[4..8].copy_from_slice(&relid.to_le_bytes());
    out.write_all(&b)
}

/// Writes the fixed header of a Batch message; the IPC record batch message follows.
pub(crate) fn write_batch_header(
    out: &mut impl Write,
    relid: u32,
    base_lsn: Lsn,
    flags: u8,
) -> io::Result<()> {
    let mut b = [0u8; IPC_OFFSET];
    b[..4].copy_from_slice(&prefix_with(MessageKind::Batch, flags));
    b[4..8].copy_from_slice(&relid.to_le_bytes());
    b[8..16].copy_from_slice(&base_lsn.0.to_le_bytes());
    out.write_all(&b)
}

/// Truncate message: the tables (by OID) truncated together in one command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Truncate {
    /// `CASCADE`
    pub cascade: bool,
    /// `RESTART IDENTITY`
    pub restart_identity: bool,
    /// The truncated tables.
    pub relids: Vec<u32>,
}

/// Writes a Truncate message.
///
/// # Errors
///
/// Whatever `out` returns.
pub fn write_truncate(out: &mut impl Write, m: &Truncate) -> io::Result<()> {
    let flags = if m.cascade { TRUNCATE_CASCADE } else { 0 }
        | if m.restart_identity { TRUNCATE_RESTART_IDENTITY } else { 0 };
    out.write_all(&prefix_with(MessageKind::Truncate, flags))?;
    out.write_all(&u32::try_from(m.relids.len()).unwrap_or(u32::MAX).to_le_bytes())?;
    for r in &m.relids {
        out.write_all(&r.to_le_bytes())?;
    }
    Ok(())
}

/// Writes a logical decoding message.
///
/// # Errors
///
/// Whatever `out` returns, or `InvalidInput` for a prefix or content over 4 GiB.
pub fn write_logical_message(
    out: &mut impl Write,
    transactional: bool,
    lsn: Lsn,
    prefix_text: &[u8],
    content: &[u8],
) -> io::Result<()> {
    let len = |n: usize| {
        u32::try_from(n)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "message over 4 GiB"))
    };
    let mut b = [0u8; 24];
    b[..4].copy_from_slice(&prefix_with(
        MessageKind::Message,
        if transactional { MESSAGE_TRANSACTIONAL } else { 0 },
    ));
    b[4..8].copy_from_slice(&len(prefix_text.len())?.to_le_bytes());
    b[8..16].copy_from_slice(&lsn.0.to_le_bytes());
    b[16..20].copy_from_slice(&len(content.len())?.to_le_bytes());
    out.write_all(&b)?;
    out.write_all(prefix_text)?;
    out.write_all(content)
}

/// Writes an Origin message.
///
/// # Errors
///
/// Whatever `out` returns.
pub fn write_origin(out: &mut impl Write, origin_lsn: Lsn, name: &[u8]) -> io::Result<()> {
    let mut b = [0u8; 16];
    b[..4].copy_from_slice(&prefix(MessageKind::Origin));
    b[4..8].copy_from_slice(&u32::try_from(name.len()).unwrap_or(u32::MAX).to_le_bytes());
    b[8..16].copy_from_slice(&origin_lsn.0.to_le_bytes());
    out.write_all(&b)?;
    out.write_all(name)
}

/// A message's fixed header, read without touching its IPC part.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Header {
    /// See [`Begin`].
    Begin(Begin),
    /// See [`Commit`].
    Commit(Commit),
    /// A Schema message for this relation OID; the IPC schema starts at [`IPC_OFFSET`].
    Schema {
        /// Relation OID.
        relid: u32,
    },
    /// A Batch message; the IPC record batch starts at [`IPC_OFFSET`].
    Batch {
        /// Relation OID.
        relid: u32,
        /// LSN the rows' `_lsn_delta` values are added to.
        base_lsn: Lsn,
        /// Some row has a bit set in `_missing`.
        has_missing: bool,
        /// Some row has a bit set in `_unrepresentable`.
        has_unrepresentable: bool,
    },
    /// See [`Truncate`].
    Truncate(Truncate),
    /// A logical message: prefix at `prefix`, content at `content` (byte ranges of the message).
    Message {
        /// Transactional (delivered in its transaction) or not (delivered at once).
        transactional: bool,
        /// The message's LSN.
        lsn: Lsn,
        /// Where the prefix lies in the message.
        prefix: std::ops::Range<usize>,
        /// Where the content lies in the message.
        content: std::ops::Range<usize>,
    },
    /// An Origin message: the origin's name at `name` (a byte range of the message).
    Origin {
        /// The origin's LSN for this transaction.
        origin_lsn: Lsn,
        /// Where the name lies in the message.
        name: std::ops::Range<usize>,
    },
    /// A Bundle of `count` messages (see [`bundle_entries`]).
    Bundle {
        /// How many messages it holds.
        count: u32,
    },
    /// A block of streamed transaction `xid` starts.
    StreamStart {
        /// The top-level transaction.
        xid: u32,
        /// Its first block.
        first: bool,
    },
    /// The block's next messages belong to this (sub)transaction.
    Subtransaction {
        /// The (sub)transaction's xid.
        subxid: u32,
    },
    /// The block ends.
    StreamStop,
    /// See [`StreamAbort`].
    StreamAbort(StreamAbort),
    /// See [`StreamCommit`].
    StreamCommit(StreamCommit),
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Reads and checks a message's prefix and fixed header.
///
/// # Errors
///
/// A [`WireError`] when the message is empty, of an unknown kind or newer version, has
/// reserved bits set, is shorter than its header, or (Begin, Commit) longer.
pub fn read_header(msg: &[u8]) -> Result<Header, WireError> {
    let &kind_byte = msg.first().ok_or(WireError::Empty)?;
    let kind = MessageKind::from_byte(kind_byte).ok_or(WireError::UnknownKind(kind_byte))?;
    let need = kind.header_len();
    if msg.len() < need {
        return Err(WireError::Truncated { kind, need, got: msg.len() });
    }
    if msg[1] > WIRE_VERSION {
        return Err(WireError::UnsupportedVersion { found: msg[1], max: WIRE_VERSION });
    }
    if msg[1] < kind.since() {
        return Err(WireError::OlderVersion { kind, found: msg[1], min: kind.since() });
    }
    let flags = msg[2];
    if flags & !kind.flags() != 0 || msg[3] != 0 {
        return Err(WireError::ReservedBits(kind));
    }
    let trailing = |start: usize, len: u64| -> Result<std::ops::Range<usize>, WireError> {
        let end = usize::try_from(len).ok().and_then(|l| start.checked_add(l));
        match end {
            Some(end) if end <= msg.len() => Ok(start..end),
            _ => {
                Err(WireError::Truncated { kind, need: end.unwrap_or(usize::MAX), got: msg.len() })
            }
        }
    };
    Ok(match kind {
        MessageKind::Begin => {
            if msg.len() != need {
                return Err(WireError::TrailingBytes(kind));
            }
            Header::Begin(Begin {
                xid: u32_at(msg, 4),
                final_lsn: Lsn(u64_at(msg, 8)),
                commit_time_us: u64_at(msg, 16) as i64,
            })
        }
        MessageKind::Commit => {
            if msg.len() != need {
                return Err(WireError::TrailingBytes(kind));
            }
            if u32_at(msg, 4) != 0 {
                return Err(WireError::ReservedBits(kind));
            }
            Header::Commit(Commit {
                commit_lsn: Lsn(u64_at(msg, 8)),
                end_lsn: Lsn(u64_at(msg, 16)),
                commit_time_us: u64_at(msg, 24) as i64,
            })
        }
        MessageKind::Schema => {
            if u64_at(msg, 8) != 0 {
                return Err(WireError::ReservedBits(kind));
            }
            Header::Schema { relid: u32_at(msg, 4) }
        }
        MessageKind::Batch => Header::Batch {
            relid: u32_at(msg, 4),
            base_lsn: Lsn(u64_at(msg, 8)),
            has_missing: flags & BATCH_HAS_MISSING != 0,
            has_unrepresentable: flags & BATCH_HAS_UNREPRESENTABLE != 0,
        },
        MessageKind::Truncate => {
            let n = u64::from(u32_at(msg, 4));
            let ids = trailing(8, n * 4)?;
            if ids.end != msg.len() {
                return Err(WireError::TrailingBytes(kind));
            }
            Header::Truncate(Truncate {
                cascade: flags & TRUNCATE_CASCADE != 0,
                restart_identity: flags & TRUNCATE_RESTART_IDENTITY != 0,
                relids: msg[ids].chunks_exact(4).map(|c| u32_at(c, 0)).collect(),
            })
        }
        MessageKind::Message => {
            if u32_at(msg, 20) != 0 {
                return Err(WireError::ReservedBits(kind));
            }
            let prefix = trailing(24, u64::from(u32_at(msg, 4)))?;
            let content = trailing(prefix.end, u64::from(u32_at(msg, 16)))?;
            if content.end != msg.len() {
                return Err(WireError::TrailingBytes(kind));
            }
            Header::Message {
                transactional: flags & MESSAGE_TRANSACTIONAL != 0,
                lsn: Lsn(u64_at(msg, 8)),
                prefix,
                content,
            }
        }
        MessageKind::Origin => {
            let name = trailing(16, u64::from(u32_at(msg, 4)))?;
            if name.end != msg.len() {
                return Err(WireError::TrailingBytes(kind));
            }
            Header::Origin { origin_lsn: Lsn(u64_at(msg, 8)), name }
        }
        MessageKind::Bundle => {
            if u64_at(msg, 8) != 0 {
                return Err(WireError::ReservedBits(kind));
            }
            Header::Bundle { count: u32_at(msg, 4) }
        }
        k if k.is_stream() => {
            if msg.len() != need {
                return Err(WireError::TrailingBytes(kind));
            }
            match k {
                MessageKind::StreamStart => Header::StreamStart {
                    xid: u32_at(msg, 4),
                    first: flags & STREAM_FIRST_BLOCK != 0,
                },
                MessageKind::Subtransaction => Header::Subtransaction { subxid: u32_at(msg, 4) },
                MessageKind::StreamStop => {
                    if u32_at(msg, 4) != 0 {
                        return Err(WireError::ReservedBits(kind));
                    }
                    Header::StreamStop
                }
                MessageKind::StreamAbort => {
                    if u32_at(msg, 12) != 0 {
                        return Err(WireError::ReservedBits(kind));
                    }
                    Header::StreamAbort(StreamAbort {
                        xid: u32_at(msg, 4),
                        subxid: u32_at(msg, 8),
                        abort_lsn: Lsn(u64_at(msg, 16)),
                    })
                }
                _ => Header::StreamCommit(StreamCommit {
                    xid: u32_at(msg, 4),
                    commit_lsn: Lsn(u64_at(msg, 8)),
                    end_lsn: Lsn(u64_at(msg, 16)),
                    commit_time_us: u64_at(msg, 24) as i64,
                }),
            }
        }
        _ => unreachable!("every kind has an arm"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn begin_and_commit_round_trip() {
        let b = Begin { xid: 7, final_lsn: Lsn(0x1_0000_0010), commit_time_us: -5 };
        let mut out = Vec::new();
        write_begin(&mut out, &b).unwrap();
        assert_eq!(out.len(), 24);
        assert_eq!(read_header(&out).unwrap(), Header::Begin(b));

        let c = Commit { commit_lsn: Lsn(10), end_lsn: Lsn(20), commit_time_us: 1_700_000_000 };
        let mut out = Vec::new();
        write_commit(&mut out, &c).unwrap();
        assert_eq!(out.len(), 32);
        assert_eq!(read_header(&out).unwrap(), Header::Commit(c));
    }

    #[test]
    fn truncate_message_and_origin_round_trip() {
        let t = Truncate { cascade: true, restart_identity: false, relids: vec![16384, 16390] };
        let mut out = Vec::new();
        write_truncate(&mut out, &t).unwrap();
        assert_eq!(read_header(&out).unwrap(), Header::Truncate(t));

        let mut out = Vec::new();
        write_logical_message(&mut out, true, Lsn(99), b"audit", b"\x00binary\xff").unwrap();
        let Header::Message { transactional, lsn, prefix, content } = read_header(&out).unwrap()
        else {
            panic!()
        };
        assert!(transactional);
        assert_eq!(lsn, Lsn(99));
        assert_eq!(&out[prefix], b"audit");
        assert_eq!(&out[content], b"\x00binary\xff");

        let mut out = Vec::new();
        write_origin(&mut out, Lsn(7), b"replica_a").unwrap();
        let Header::Origin { origin_lsn, name } = read_header(&out).unwrap() else { panic!() };
        assert_eq!((origin_lsn, &out[name]), (Lsn(7), &b"replica_a"[..]));
        for cut in 0..out.len() {
            assert!(read_header(&out[..cut]).is_err());
        }
        let mut longer = out.clone();
        longer.push(0);
        assert_eq!(read_header(&longer), Err(WireError::TrailingBytes(MessageKind::Origin)));
    }

    #[test]
    fn bundles_hold_aligned_messages_and_reject_damage() {
        let mut begin = Vec::new();
        write_begin(&mut begin, &Begin { xid: 1, final_lsn: Lsn(5), commit_time_us: 2 }).unwrap();
        let mut origin = Vec::new();
        write_origin(&mut origin, Lsn(3), b"abc").unwrap(); // 19 bytes: padded
        let mut out = Vec::new();
        write_bundle_header(&mut out, 2).unwrap();
        for m in [&begin, &origin] {
            write_bundle_entry_header(&mut out, m.len() as u32).unwrap();
            out.extend_from_slice(m);
            out.resize(out.len().div_ceil(16) * 16, 0);
        }
        let entries = bundle_entries(&out).unwrap();
        assert_eq!(entries.len(), 2);
        assert!(entries.iter().all(|r| r.start % 16 == 0));
        assert_eq!(&out[entries[0].clone()], &begin[..]);
        assert_eq!(&out[entries[1].clone()], &origin[..]);
        for cut in 0..out.len() {
            assert!(bundle_entries(&out[..cut]).is_err(), "{cut}");
        }
        let mut wrong_count = out.clone();
        wrong_count[4] = 3;
        assert!(bundle_entries(&wrong_count).is_err());
        let mut dirty_pad = out.clone();
        let last = dirty_pad.len() - 1;
        dirty_pad[last] = 1;
        assert_eq!(bundle_entries(&dirty_pad), Err(WireError::TrailingBytes(MessageKind::Bundle)));
        let mut nested = Vec::new();
        write_bundle_header(&mut nested, 1).unwrap();
        write_bundle_entry_header(&mut nested, out.len() as u32).unwrap();
        nested.extend_from_slice(&out);
        assert_eq!(bundle_entries(&nested), Err(WireError::NestedBundle));
        let mut v1 = out.clone();
        v1[1] = 1;
        let e = read_header(&v1).unwrap_err();
        assert_eq!(e, WireError::OlderVersion { kind: MessageKind::Bundle, found: 1, min: 2 });
        assert!(e.to_string().contains("upgrade the wal2arrow plugin"), "{e}");
    }

    #[test]
    fn stream_messages_round_trip_and_reject_damage() {
        let abort = StreamAbort { xid: 700, subxid: 701, abort_lsn: Lsn(0x2_0000_0040) };
        let commit = StreamCommit {
            xid: 700,
            commit_lsn: Lsn(0x2_0000_0100),
            end_lsn: Lsn(0x2_0000_0130),
            commit_time_us: 1_700_000_000_000_000,
        };
        let cases: Vec<(Vec<u8>, Header)> = vec![
            (
                {
                    let mut o = Vec::new();
                    write_stream_start(&mut o, 700, true).unwrap();
                    o
                },
                Header::StreamStart { xid: 700, first: true },
            ),
            (
                {
                    let mut o = Vec::new();
                    write_stream_start(&mut o, 700, false).unwrap();
                    o
                },
                Header::StreamStart { xid: 700, first: false },
            ),
            (
                {
                    let mut o = Vec::new();
                    write_subtransaction(&mut o, 701).unwrap();
                    o
                },
                Header::Subtransaction { subxid: 701 },
            ),
            (
                {
                    let mut o = Vec::new();
                    write_stream_stop(&mut o).unwrap();
                    o
                },
                Header::StreamStop,
            ),
            (
                {
                    let mut o = Vec::new();
                    write_stream_abort(&mut o, &abort).unwrap();
                    o
                },
                Header::StreamAbort(abort),
            ),
            (
                {
                    let mut o = Vec::new();
                    write_stream_commit(&mut o, &commit).unwrap();
                    o
                },
                Header::StreamCommit(commit),
            ),
        ];
        for (msg, header) in cases {
            assert_eq!(read_header(&msg).unwrap(), header);
            assert_eq!(msg[1], 4, "stream kinds carry version 4");
            for cut in 0..msg.len() {
                assert!(read_header(&msg[..cut]).is_err());
            }
            let mut longer = msg.clone();
            longer.push(0);
            assert!(matches!(read_header(&longer), Err(WireError::TrailingBytes(_))));
            let mut v3 = msg.clone();
            v3[1] = 3;
            assert!(matches!(read_header(&v3), Err(WireError::OlderVersion { min: 4, .. })));
            let mut flagged = msg.clone();
            flagged[2] = 0x02;
            assert!(matches!(read_header(&flagged), Err(WireError::ReservedBits(_))));
        }
        let mut stop = Vec::new();
        write_stream_stop(&mut stop).unwrap();
        stop[5] = 1;
        assert_eq!(read_header(&stop), Err(WireError::ReservedBits(MessageKind::StreamStop)));
    }

    #[test]
    fn flags_are_checked_per_kind() {
        let mut out = Vec::new();
        write_truncate(
            &mut out,
            &Truncate { cascade: false, restart_identity: true, relids: vec![] },
        )
        .unwrap();
        assert!(read_header(&out).is_ok());
        out[2] |= 0x04;
        assert_eq!(read_header(&out), Err(WireError::ReservedBits(MessageKind::Truncate)));
        let mut out = Vec::new();
        write_begin(&mut out, &Begin { xid: 1, final_lsn: Lsn(1), commit_time_us: 1 }).unwrap();
        out[2] = BATCH_HAS_MISSING;
        assert_eq!(read_header(&out), Err(WireError::ReservedBits(MessageKind::Begin)));
    }

    #[test]
    fn rejects_what_this_version_does_not_define() {
        let mut msg = Vec::new();
        write_begin(&mut msg, &Begin { xid: 1, final_lsn: Lsn(1), commit_time_us: 1 }).unwrap();

        assert_eq!(read_header(&[]), Err(WireError::Empty));
        let mut m = msg.clone();
        m[0] = b'Z';
        assert_eq!(read_header(&m), Err(WireError::UnknownKind(b'Z')));
        let mut m = msg.clone();
        m[1] = 5;
        assert_eq!(read_header(&m), Err(WireError::UnsupportedVersion { found: 5, max: 4 }));
        let mut m = msg.clone();
        m[1] = 0;
        assert_eq!(
            read_header(&m),
            Err(WireError::OlderVersion { kind: MessageKind::Begin, found: 0, min: 1 })
        );
        let mut m = msg.clone();
        m[2] = 1;
        assert_eq!(read_header(&m), Err(WireError::ReservedBits(MessageKind::Begin)));
        assert!(matches!(read_header(&msg[..10]), Err(WireError::Truncated { need: 24, .. })));
        let mut m = msg.clone();
        m.push(0);
        assert_eq!(read_header(&m), Err(WireError::TrailingBytes(MessageKind::Begin)));
    }
}
