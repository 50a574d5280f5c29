//! The consumer's choices that other modules share: which slot, which plugins, how to back
//! off. A leaf module.

use std::time::Duration;

use wal2arrow_client::OutputPlugin;

/// Which replication slot to stream from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SlotMode {
    /// A persistent slot: it survives restarts and keeps the WAL the consumer has not
    /// acknowledged.
    Persistent {
        /// Slot name.
        name: String,
        /// Create it if it does not exist (default); otherwise a missing slot is an error.
        create_if_missing: bool,
    },
    /// A temporary slot, created for this stream and dropped when its connection ends. Cheap
    /// for experiments, but a lost connection loses the slot: the stream then ends with an
    /// error rather than silently skipping what happened in between.
    Temporary {
        /// Slot name.
        name: String,
    },
}

impl SlotMode {
    /// The slot's name.
    pub fn name(&self) -> &str {
        match self {
            SlotMode::Persistent { name, .. } | SlotMode::Temporary { name } => name,
        }
    }
}

/// Which output plugin the consumer may stream with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum PluginChoice {
    /// wal2arrow when the server can load it, otherwise the wal2json fallback (logged once,
    /// with the reason). An existing slot is always read with the plugin it was created for.
    #[default]
    Auto,
    /// Only wal2arrow.
    Wal2Arrow,
    /// Only wal2json (format version 2), parsed into the same batches.
    Wal2Json,
}

impl PluginChoice {
    /// The plugins a stream may read under this choice, the preferred first.
    pub fn allowed(self) -> &'static [OutputPlugin] {
        match self {
            PluginChoice::Auto => &[OutputPlugin::Wal2Arrow, OutputPlugin::Wal2Json],
            PluginChoice::Wal2Arrow => &[OutputPlugin::Wal2Arrow],
            PluginChoice::Wal2Json => &[OutputPlugin::Wal2Json],
        }
    }

    /// The plugin a new slot is created with first.
    pub fn first(self) -> OutputPlugin {
        self.allowed()[0]
    }
}

/// Reconnection backoff: the first wait, doubled after each failure up to `max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// First wait (default 100 ms).
    pub initial: Duration,
    /// Longest wait (default 30 s).
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { initial: Duration::from_millis(100), max: Duration::from_secs(30) }
    }
}

/// Whether a stream starts with a snapshot of the tables' existing rows (see
/// [`wal2arrow_client::snapshot`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum SnapshotMode {
    /// An initial snapshot when this stream creates its slot (a new persistent slot, or a
    /// temporary one); none when the slot exists — the earlier run that created it took it.
    #[default]
    Auto,
    /// An initial snapshot, which needs a slot this stream creates: an existing slot is an
    /// error (`client::Error::Snapshot`, saying what to do instead).
    Initial,
    /// No snapshot: only changes committed after the slot's consistent point.
    Never,
    /// The snapshot alone, read through a temporary slot: the stream ends after
    /// [`wal2arrow_client::SnapshotEvent::Complete`] and leaves no slot behind.
    Only,
}

/// A snapshot an earlier run began and a sink recorded in part (the Parquet sink's
/// checkpoint): the ranges it made durable are not copied again
/// ([`ConsumerBuilder::resumable_snapshot`](crate::ConsumerBuilder::resumable_snapshot)).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnapshotResume {
    /// The slot's consistent point, which the snapshot was taken at
    /// ([`wal2arrow_client::SnapshotEvent::Started`]'s `lsn`); `Lsn::INVALID`: a snapshot was
    /// about to begin, and none was recorded since.
    pub lsn: wal2arrow_client::Lsn,
    /// Heap pages per range, as the snapshot cut them.
    pub chunk_pages: u32,
    /// The ranges made durable ([`wal2arrow_client::SnapshotEvent::ChunkDone`]).
    pub done: Vec<wal2arrow_client::ChunkId>,
    /// One more than the highest batch ordinal written: the resumed snapshot's batches
    /// continue from there, so `(commit LSN, ordinal)` still names one batch.
    pub next_ordinal: u32,
}
