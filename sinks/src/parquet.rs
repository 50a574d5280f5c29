//! The Parquet sink: a directory per table, rolling files, exactly-once across crashes.
//!
//! ```text
//! out/
//!   _wal2arrow_checkpoint.json            what the last flush made durable
//!   public.users/part-0000000003-00001.parquet
//!   public.orders/part-0000000003-00001.parquet
//!   _truncates/part-…                     TRUNCATEs: table, cascade, restart_identity
//!   _messages/part-…                      logical messages: prefix, content, transactional, lsn
//! ```
//!
//! Each file holds the stream's batches of one table and one schema — the table's columns,
//! `_op`, `_lsn`, `_missing`, `_unrepresentable` — plus `_commit_lsn`, `_ordinal` and `_commit_time`. Directory
//! names are `schema.table`, with bytes other than letters, digits, `_`, `-` and `.`
//! written as `%XX`.
//!
//! ## Durability
//!
//! Files are written under hidden temporary names (`.part-….parquet.tmp`, which `*.parquet`
//! globs skip). A **flush** finishes every open file, fsyncs it, renames it to its final name,
//! fsyncs the directories, then writes the checkpoint (temporary file, fsync, rename, fsync):
//! the epoch of the files it covers, the commit LSN of the last transaction in them, and the
//! position acknowledged with it. Only then does the runner acknowledge that position to the
//! server. Files are named by epoch, so a crash between the renames and the checkpoint leaves
//! files of an epoch the checkpoint does not cover: reopening the directory deletes them (and
//! every temporary file), and the slot, which never heard of them, delivers their transactions
//! again. Reopened, the sink reports the checkpoint ([`Sink::durable`]) and the runner skips
//! the transactions it already holds. The union of the files is then exactly the stream: no
//! change missing, none twice.
//!
//! A flush happens when a file reaches `roll_rows` rows or `roll_bytes` bytes, when the
//! oldest unflushed data is `roll_interval` old, and when the run stops. It finishes every
//! open file (a checkpoint covers whole transactions of every table), so a quiet table gets a
//! new file at most once per `roll_interval`.
//!
//! ## Types
//!
//! Parquet has no month–day–nanosecond interval and no negative decimal scale, so two types
//! are stored differently and marked in the field's metadata (`wal2arrow:parquet`):
//! `Interval(MonthDayNano)` as `Struct{months: Int32, days: Int32, nanoseconds: Int64}`
//! (`interval`), and `Decimal128(p, s)` with `s < 0` as `Decimal128(p - s, 0)` holding the
//! same numbers (`decimal(p,s)`; as their exact text when `p - s > 38`). [`restore`] turns a
//! batch read back into exactly the stream's types. Every other type is stored as Arrow's
//! Parquet writer stores it, with the Arrow schema (and so all field metadata) embedded.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arrow_array::cast::AsArray;
use arrow_array::types::{Decimal128Type, IntervalMonthDayNanoType};
use arrow_array::{
    Array, ArrayRef, Decimal128Array, Int32Array, Int64Array, IntervalMonthDayNanoArray, ListArray,
    RecordBatch, StringArray, StructArray,
};
use arrow_schema::{ArrowError, DataType, Field, FieldRef, Fields, Schema, SchemaRef};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use tokio::time::Instant;
use wal2arrow_schema::Lsn;
use wal2arrow_schema::types::json_string;

use crate::error::{Error, Result};
use crate::{Durable, MESSAGES, Sink, TRUNCATES, message_batch, truncate_batch, with_position};
use wal2arrow_consumer::client::ChunkId;
use wal2arrow_consumer::{Event, SnapshotEvent, SnapshotResume};

/// The checkpoint's file name in the output directory.
pub const CHECKPOINT_FILE: &str = "_wal2arrow_checkpoint.json";

/// Field metadata key marking a type stored differently in Parquet (see the module docs).
pub const PARQUET_ENCODING: &str = "wal2arrow:parquet";

/// When files roll, and how they are written.
#[derive(Clone, Debug)]
pub struct ParquetOptions {
    /// Flush once a file holds this many rows (default 1,000,000).
    pub roll_rows: usize,
    /// Flush once a file holds about this many bytes (default 128 MiB).
    pub roll_bytes: usize,
    /// Flush once the oldest unflushed data is this old (default 60 s).
    pub roll_interval: Duration,
    /// Rows per row group: the memory a file being written holds (default 65,536).
    pub row_group_rows: usize,
}

impl Default for ParquetOptions {
    fn default() -> Self {
        ParquetOptions {
            roll_rows: 1_000_000,
            roll_bytes: 128 << 20,
            roll_interval: Duration::from_secs(60),
            row_group_rows: 65_536,
        }
    }
}

/// One open file.
struct OpenFile {
    /// The table directory it goes to.
    dir_name: String,
    schema: SchemaRef,
    writer: ArrowWriter<File>,
    tmp: PathBuf,
    rows: usize,
}

/// The Parquet sink (see the module docs).
pub struct ParquetSink {
    dir: PathBuf,
    options: ParquetOptions,
    source: String,
    checkpoint: Checkpoint,
    /// Epoch of the files being written: one more than the checkpoint's.
    epoch: u64,
    open: HashMap<String, OpenFile>,
    /// Finished files of this epoch, not yet renamed: (temporary, final).
    finished: Vec<(PathBuf, PathBuf)>,
    /// Files per table directory in this epoch, for their sequence numbers.
    sequence: HashMap<String, u32>,
    /// Temporary files created, for their unique names.
    created: u64,
    /// The resumable initial snapshot in progress: what the checkpoint will say of it.
    snapshot: Option<SnapshotResume>,
    /// The tables held, as the checkpoint will say.
    tables_held: Option<Vec<String>>,
    /// No checkpoint existed when the directory was opened.
    fresh: bool,
    /// What has been written since the last flush.
    dirty_since: Option<Instant>,
    last_commit: Lsn,
    last_ack: Lsn,
}

impl std::fmt::Debug for ParquetSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParquetSink")
            .field("dir", &self.dir)
            .field("checkpoint", &self.checkpoint)
            .field("epoch", &self.epoch)
            .field("open_files", &self.open.len())
            .finish()
    }
}

/// What a flush made durable, as stored in [`CHECKPOINT_FILE`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Checkpoint {
    /// The epoch of the newest files it covers.
    pub epoch: u64,
    /// Commit LSN of the last transaction in the files.
    pub commit_lsn: Lsn,
    /// The position acknowledged to the server.
    pub ack_lsn: Lsn,
    /// What the directory was written from (`database/slot`): another source is refused.
    pub source: String,
    /// A resumable initial snapshot not yet complete: the ranges whose rows the files hold.
    pub snapshot: Option<SnapshotResume>,
    /// The tables whose existing rows the files hold whole (`schema.table`;
    /// [`SnapshotEvent::TablesHeld`]); `None` before the stream first said.
    pub tables_held: Option<Vec<String>>,
}

impl Checkpoint {
    fn to_json(&self) -> String {
        let mut json = format!(
            "{{\"version\":1,\"epoch\":{},\"commit_lsn\":\"{}\",\"ack_lsn\":\"{}\",\"source\":{}",
            self.epoch,
            self.commit_lsn,
            self.ack_lsn,
            json_string(&self.source)
        );
        if let Some(held) = &self.tables_held {
            let names: Vec<String> = held.iter().map(|t| json_string(t)).collect();
            json.push_str(&format!(",\"tables_held\":[{}]", names.join(",")));
        }
        if let Some(snap) = &self.snapshot {
            let done: Vec<String> = snap.done.iter().map(|c| json_string(&c.to_string())).collect();
            json.push_str(&format!(
                ",\"snapshot\":{{\"lsn\":\"{}\",\"chunk_pages\":{},\"next_ordinal\":{},\"done\":[{}]}}",
                snap.lsn,
                snap.chunk_pages,
                snap.next_ordinal,
                done.join(",")
            ));
        }
        json.push_str("}\n");
        json
    }

    fn parse(text: &str) -> Option<Checkpoint> {
        use wal2arrow_wal2json::json::{Next, Scalar, Scanner, str_owned};
        let bytes = text.as_bytes();
        let mut s = Scanner::new(bytes);
        let mut c = Checkpoint::default();
        let mut scratch = Vec::new();
        let value = |s: &mut Scanner<'_>, scratch: &mut Vec<u8>| -> Option<String> {
            match s.scalar().ok()? {
                Scalar::Str(v) => str_owned(bytes, &v, scratch).ok(),
                Scalar::Number(r) => text.get(r).map(str::to_owned),
                _ => None,
            }
        };
        s.begin_object().ok()?;
        let mut first = true;
        while let Some(key) = s.next_key(first).ok()? {
            first = false;
            let key = str_owned(bytes, &key, &mut scratch).ok()?;
            if key == "tables_held" {
                let mut held = Vec::new();
                s.begin_array().ok()?;
                let mut first = true;
                while s.next_item(first).ok()? {
                    first = false;
                    let v = s.string().ok()?;
                    held.push(str_owned(bytes, &v, &mut scratch).ok()?);
                }
                c.tables_held = Some(held);
                continue;
            }
            if key == "snapshot" {
                if s.next_is().ok()? != Next::Object {
                    return None;
                }
                let mut snap = SnapshotResume::default();
                s.begin_object().ok()?;
                let mut first = true;
                while let Some(key) = s.next_key(first).ok()? {
                    first = false;
                    let key = str_owned(bytes, &key, &mut scratch).ok()?;
                    if key == "done" {
                        s.begin_array().ok()?;
                        let mut first = true;
                        while s.next_item(first).ok()? {
                            first = false;
                            let v = s.string().ok()?;
                            snap.done.push(str_owned(bytes, &v, &mut scratch).ok()?.parse().ok()?);
                        }
                        continue;
                    }
                    let v = value(&mut s, &mut scratch)?;
                    match key.as_str() {
                        "lsn" => snap.lsn = v.parse().ok()?,
                        "chunk_pages" => snap.chunk_pages = v.parse().ok()?,
                        "next_ordinal" => snap.next_ordinal = v.parse().ok()?,
                        _ => {}
                    }
                }
                c.snapshot = Some(snap);
                continue;
            }
            let v = value(&mut s, &mut scratch)?;
            match key.as_str() {
                "version" if v != "1" => return None,
                "epoch" => c.epoch = v.parse().ok()?,
                "commit_lsn" => c.commit_lsn = v.parse().ok()?,
                "ack_lsn" => c.ack_lsn = v.parse().ok()?,
                "source" => c.source = v,
                _ => {}
            }
        }
        s.end().ok()?;
        Some(c)
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| Error::sink(dir, "cannot fsync", e))
}

/// A table's directory name: `schema.table`, bytes outside `[A-Za-z0-9_.-]` as `%XX` (and a
/// leading `.`, so no directory is hidden).
pub fn table_dir_name(qualified: &str) -> String {
    let mut out = String::with_capacity(qualified.len());
    for (i, b) in qualified.bytes().enumerate() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || (b == b'.' && i > 0) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The key of a snapshot range's open file: a table directory name never holds a NUL.
fn chunk_key(dir_name: &str, chunk: &ChunkId) -> String {
    format!("{dir_name}\0{chunk}")
}

/// The epoch in a file name `part-EEEEEEEEEE-SSSSS.parquet` (or its temporary form).
fn file_epoch(name: &str) -> Option<u64> {
    let rest = name.trim_start_matches('.').strip_prefix("part-")?;
    rest.get(..10)?.parse().ok()
}

impl ParquetSink {
    /// Opens (or creates) the output directory for `source` (`database/slot`): reads the
    /// checkpoint and removes what an interrupted run left unfinished.
    ///
    /// # Errors
    ///
    /// I/O errors; [`Error::Config`] when the directory holds another source's output or
    /// something else entirely.
    pub fn open(dir: impl Into<PathBuf>, source: &str, options: ParquetOptions) -> Result<Self> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(|e| Error::sink(&dir, "cannot create", e))?;
        let path = dir.join(CHECKPOINT_FILE);
        let fresh = !path.exists();
        let checkpoint = match fs::read_to_string(&path) {
            Ok(text) => Checkpoint::parse(&text).ok_or_else(|| {
                Error::Config(format!("{} is damaged; move the directory aside", path.display()))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if !only_our_files(&dir)? {
                    return Err(Error::Config(format!(
                        "{} holds files that are not wal2arrow output: use an empty or new directory",
                        dir.display()
                    )));
                }
                Checkpoint { source: source.to_owned(), ..Checkpoint::default() }
            }
            Err(e) => return Err(Error::sink(&path, "cannot read", e)),
        };
        if checkpoint.source != source {
            return Err(Error::Config(format!(
                "{} holds the output of {:?}, not of {source:?}: use another directory",
                dir.display(),
                checkpoint.source
            )));
        }
        let removed = recover(&dir, checkpoint.epoch)?;
        if removed > 0 {
            tracing::info!(
                dir = %dir.display(),
                files = removed,
                "removed files an interrupted run left unfinished; their changes come again"
            );
        }
        let held = checkpoint.tables_held.clone();
        Ok(ParquetSink {
            epoch: checkpoint.epoch + 1,
            last_commit: checkpoint.commit_lsn,
            last_ack: checkpoint.ack_lsn,
            source: source.to_owned(),
            checkpoint,
            dir,
            options,
            open: HashMap::new(),
            finished: Vec::new(),
            sequence: HashMap::new(),
            created: 0,
            snapshot: None,
            tables_held: held,
            fresh,
            dirty_since: None,
        })
    }

    /// The initial snapshot the directory holds in part, to resume
    /// ([`ConsumerBuilder::resumable_snapshot`](wal2arrow_consumer::ConsumerBuilder::resumable_snapshot)).
    pub fn snapshot_resume(&self) -> Option<SnapshotResume> {
        self.checkpoint.snapshot.clone()
    }

    /// Whether the directory held no checkpoint when opened: nothing was ever written.
    pub fn is_fresh(&self) -> bool {
        self.fresh
    }

    /// Records durably, before the stream creates its slot, that a resumable snapshot is about
    /// to begin (a resume record without an LSN, [`snapshot_resume`](Self::snapshot_resume)):
    /// a run that dies after creating the slot but before recording the snapshot's LSN leaves
    /// this, and the next run takes the snapshot at the slot's position instead of skipping
    /// it.
    ///
    /// # Errors
    ///
    /// I/O errors writing the checkpoint.
    pub fn mark_snapshot_pending(&mut self) -> Result<()> {
        self.snapshot = Some(SnapshotResume::default());
        // The flush writes the checkpoint (it changed) and keeps it as the current one.
        Sink::flush(self)
    }

    /// The tables whose existing rows the directory holds, as the stream last said
    /// ([`ConsumerBuilder::tables_held`](wal2arrow_consumer::ConsumerBuilder::tables_held)).
    pub fn tables_held(&self) -> Option<Vec<String>> {
        self.checkpoint.tables_held.clone()
    }

    /// The checkpoint as of the last flush.
    pub fn checkpoint(&self) -> &Checkpoint {
        &self.checkpoint
    }

    /// Appends to the open file of `key`: the table directory, or for snapshot rows the
    /// directory and the range ([`chunk_key`]), whose file is finished when the range is.
    fn append(&mut self, dir_name: &str, key: &str, batch: &RecordBatch) -> Result<()> {
        let batch = encode(batch)?;
        let same_schema = self.open.get(key).is_some_and(|f| f.schema == batch.schema());
        if !same_schema && let Some(old) = self.open.remove(key) {
            self.finish(old)?;
        }
        if !self.open.contains_key(key) {
            let file = self.create(dir_name, batch.schema())?;
            self.open.insert(key.to_owned(), file);
        }
        let file = self.open.get_mut(key).expect("opened above");
        file.writer.write(&batch).map_err(|e| {
            Error::sink(&file.tmp, "cannot write Parquet to", std::io::Error::other(e))
        })?;
        file.rows += batch.num_rows();
        self.dirty_since.get_or_insert_with(Instant::now);
        Ok(())
    }

    fn create(&mut self, dir_name: &str, schema: SchemaRef) -> Result<OpenFile> {
        let dir = self.dir.join(dir_name);
        fs::create_dir_all(&dir).map_err(|e| Error::sink(&dir, "cannot create", e))?;
        // The final name is given when the file is finished (its epoch is the checkpoint's
        // that publishes it, which for a snapshot range may come after a checkpoint or two).
        self.created += 1;
        let tmp = dir.join(format!(".part-{:010}-{}.parquet.tmp", self.epoch, self.created));
        let file = File::create(&tmp).map_err(|e| Error::sink(&tmp, "cannot create", e))?;
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_max_row_group_row_count(Some(self.options.row_group_rows))
            .set_created_by("wal2arrow".into())
            .build();
        let writer = ArrowWriter::try_new(file, Arc::clone(&schema), Some(props))
            .map_err(|e| Error::sink(&tmp, "cannot write Parquet to", std::io::Error::other(e)))?;
        Ok(OpenFile { dir_name: dir_name.to_owned(), schema, writer, tmp, rows: 0 })
    }

    /// Finishes a file (footer, fsync); it is renamed at the next checkpoint.
    fn finish(&mut self, file: OpenFile) -> Result<()> {
        let OpenFile { dir_name, writer, tmp, .. } = file;
        let f = writer
            .into_inner()
            .map_err(|e| Error::sink(&tmp, "cannot finish", std::io::Error::other(e)))?;
        f.sync_all().map_err(|e| Error::sink(&tmp, "cannot fsync", e))?;
        let seq = self.sequence.entry(dir_name.clone()).or_insert(0);
        *seq += 1;
        let name = format!("part-{:010}-{:05}.parquet", self.epoch, seq);
        self.finished.push((tmp, self.dir.join(dir_name).join(name)));
        Ok(())
    }

    fn remove_unfinished(&mut self) -> Result<()> {
        for (_, file) in self.open.drain() {
            drop(file.writer);
            let _ = fs::remove_file(&file.tmp);
        }
        for (tmp, _) in self.finished.drain(..) {
            let _ = fs::remove_file(&tmp);
        }
        self.sequence.clear();
        self.dirty_since = None;
        self.last_commit = self.checkpoint.commit_lsn;
        self.last_ack = self.checkpoint.ack_lsn;
        self.snapshot = self.checkpoint.snapshot.clone();
        self.tables_held = self.checkpoint.tables_held.clone();
        Ok(())
    }
}

/// Whether `dir` holds nothing but what a run that never flushed leaves: table directories
/// of part files, a temporary checkpoint.
fn only_our_files(dir: &Path) -> Result<bool> {
    let read = |d: &Path| fs::read_dir(d).map_err(|e| Error::sink(d, "cannot read", e));
    for entry in read(dir)?.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let ours = if path.is_dir() {
            read(&path)?.flatten().all(|f| file_epoch(&f.file_name().to_string_lossy()).is_some())
        } else {
            name == ".checkpoint.tmp"
        };
        if !ours {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Removes temporary files, and final files of epochs after `epoch`, below `dir`. Returns how
/// many it removed.
fn recover(dir: &Path, epoch: u64) -> Result<usize> {
    let mut removed = 0;
    let entries = fs::read_dir(dir).map_err(|e| Error::sink(dir, "cannot read", e))?;
    for entry in entries.flatten() {
        let path = entry.path();
        if !path.is_dir() {
            if entry.file_name().to_string_lossy().starts_with(".checkpoint") {
                let _ = fs::remove_file(&path);
            }
            continue;
        }
        let files = fs::read_dir(&path).map_err(|e| Error::sink(&path, "cannot read", e))?;
        let mut touched = false;
        for f in files.flatten() {
            let name = f.file_name().to_string_lossy().into_owned();
            let stale = name.ends_with(".tmp") || file_epoch(&name).is_some_and(|e| e > epoch);
            if stale {
                fs::remove_file(f.path()).map_err(|e| Error::sink(f.path(), "cannot remove", e))?;
                removed += 1;
                touched = true;
            }
        }
        if touched {
            sync_dir(&path)?;
        }
    }
    Ok(removed)
}

impl Sink for ParquetSink {
    fn durable(&self) -> Durable {
        Durable { commit_lsn: self.checkpoint.commit_lsn, ack_lsn: self.checkpoint.ack_lsn }
    }

    fn write(&mut self, event: &Event) -> Result<()> {
        match event {
            Event::Change(c) => {
                let batch = with_position(c)?;
                let dir = table_dir_name(c.table());
                match &c.snapshot_chunk {
                    Some(chunk) => {
                        if let Some(snap) = &mut self.snapshot {
                            snap.next_ordinal = snap.next_ordinal.max(c.ordinal + 1);
                        }
                        self.append(&dir, &chunk_key(&dir, chunk), &batch)
                    }
                    None => self.append(&dir, &dir, &batch),
                }
            }
            Event::Snapshot(SnapshotEvent::Started {
                lsn, chunk_pages, resumable: true, ..
            }) => {
                let earlier = self.checkpoint.snapshot.clone().filter(|s| s.lsn == *lsn);
                self.snapshot = Some(earlier.unwrap_or(SnapshotResume {
                    lsn: *lsn,
                    chunk_pages: *chunk_pages,
                    done: Vec::new(),
                    next_ordinal: 0,
                }));
                Ok(())
            }
            Event::Snapshot(SnapshotEvent::Complete { .. }) if self.snapshot.is_some() => {
                // Complete (a snapshot without rows has no commit): nothing left to resume.
                self.snapshot = None;
                self.dirty_since.get_or_insert_with(Instant::now);
                Ok(())
            }
            Event::Snapshot(SnapshotEvent::TablesHeld { tables }) => {
                self.tables_held = Some(tables.to_vec());
                self.dirty_since.get_or_insert_with(Instant::now);
                Ok(())
            }
            Event::Snapshot(SnapshotEvent::ChunkDone { relation, chunk }) => {
                let key = chunk_key(&table_dir_name(&relation.qualified_name), chunk);
                if let Some(file) = self.open.remove(&key) {
                    self.finish(file)?;
                }
                if let Some(snap) = &mut self.snapshot {
                    snap.done.push(chunk.as_ref().clone());
                }
                Ok(())
            }
            Event::Truncate(t) => self.append(TRUNCATES, TRUNCATES, &truncate_batch(t)?),
            Event::Message(m) => {
                if !m.transactional {
                    self.last_ack = self.last_ack.max(m.ack_lsn());
                }
                self.append(MESSAGES, MESSAGES, &message_batch(m)?)
            }
            Event::Commit(c) => {
                if c.xid == 0 {
                    // The snapshot's pseudo-transaction: complete, nothing left to resume.
                    self.snapshot = None;
                }
                self.last_commit = c.commit_lsn;
                self.last_ack = self.last_ack.max(c.end_lsn);
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn wants_flush(&self) -> bool {
        self.dirty_since.is_some_and(|t| t.elapsed() >= self.options.roll_interval)
            || self.open.values().any(|f| {
                f.rows >= self.options.roll_rows
                    || f.writer.bytes_written() + f.writer.in_progress_size()
                        >= self.options.roll_bytes
            })
    }

    fn flush(&mut self) -> Result<()> {
        // Files of snapshot ranges still being copied stay open: a checkpoint holds whole
        // ranges (during a resumable snapshot, the runner flushes between ranges).
        let keys: Vec<String> = self.open.keys().filter(|k| !k.contains('\0')).cloned().collect();
        for key in keys {
            let file = self.open.remove(&key).expect("listed above");
            self.finish(file)?;
        }
        let mut dirs = Vec::new();
        for (tmp, fin) in self.finished.drain(..) {
            fs::rename(&tmp, &fin)
                .map_err(|e| Error::sink(&fin, "cannot rename a finished file to", e))?;
            if let Some(d) = fin.parent()
                && !dirs.iter().any(|x: &PathBuf| x == d)
            {
                dirs.push(d.to_owned());
            }
        }
        for d in &dirs {
            sync_dir(d)?;
        }
        let checkpoint = Checkpoint {
            epoch: if dirs.is_empty() { self.checkpoint.epoch } else { self.epoch },
            commit_lsn: self.last_commit,
            ack_lsn: self.last_ack,
            source: self.source.clone(),
            snapshot: self.snapshot.clone(),
            tables_held: self.tables_held.clone(),
        };
        if checkpoint != self.checkpoint {
            let tmp = self.dir.join(".checkpoint.tmp");
            let mut f = File::create(&tmp).map_err(|e| Error::sink(&tmp, "cannot create", e))?;
            f.write_all(checkpoint.to_json().as_bytes())
                .and_then(|()| f.sync_all())
                .map_err(|e| Error::sink(&tmp, "cannot write", e))?;
            let path = self.dir.join(CHECKPOINT_FILE);
            fs::rename(&tmp, &path).map_err(|e| Error::sink(&tmp, "cannot rename", e))?;
            sync_dir(&self.dir)?;
            self.checkpoint = checkpoint;
        }
        if !dirs.is_empty() {
            self.epoch = self.checkpoint.epoch + 1;
        }
        self.sequence.clear();
        self.dirty_since = if self.open.is_empty() { None } else { Some(Instant::now()) };
        Ok(())
    }

    fn rollback(&mut self) -> Result<bool> {
        self.remove_unfinished()?;
        Ok(true)
    }
}

/// A batch as stored in Parquet: the two types Parquet lacks re-encoded (module docs).
///
/// # Errors
///
/// Never for batches the stream produced.
pub fn encode(batch: &RecordBatch) -> Result<RecordBatch> {
    convert(batch, encode_column)
}

/// A batch read back from the sink's Parquet files, with the stream's types restored (module
/// docs). Batches without re-encoded columns come back unchanged.
///
/// # Errors
///
/// [`Error::Arrow`] for a marked column that does not hold what its mark says.
pub fn restore(batch: &RecordBatch) -> Result<RecordBatch> {
    convert(batch, restore_column)
}

type Converted = std::result::Result<(FieldRef, ArrayRef), ArrowError>;
type Convert = fn(&FieldRef, &ArrayRef) -> Converted;

fn convert(batch: &RecordBatch, f: Convert) -> Result<RecordBatch> {
    let schema = batch.schema();
    let mut fields = Vec::with_capacity(schema.fields().len());
    let mut columns = Vec::with_capacity(schema.fields().len());
    let mut changed = false;
    for (field, column) in schema.fields().iter().zip(batch.columns()) {
        let (nf, nc) = f(field, column)?;
        changed |= !Arc::ptr_eq(&nf, field);
        fields.push(nf);
        columns.push(nc);
    }
    if !changed {
        return Ok(batch.clone());
    }
    let schema = Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()));
    Ok(RecordBatch::try_new(schema, columns)?)
}

fn interval_fields() -> Fields {
    Fields::from(vec![
        Field::new("months", DataType::Int32, false),
        Field::new("days", DataType::Int32, false),
        Field::new("nanoseconds", DataType::Int64, false),
    ])
}

fn marked(field: &Field, dt: DataType, mark: String) -> FieldRef {
    let mut md = field.metadata().clone();
    md.insert(PARQUET_ENCODING.to_owned(), mark);
    Arc::new(Field::new(field.name(), dt, field.is_nullable()).with_metadata(md))
}

fn encode_column(field: &FieldRef, column: &ArrayRef) -> Converted {
    match field.data_type() {
        DataType::Interval(arrow_schema::IntervalUnit::MonthDayNano) => {
            let a = column.as_primitive::<IntervalMonthDayNanoType>();
            let months = Int32Array::from_iter_values(a.values().iter().map(|v| v.months));
            let days = Int32Array::from_iter_values(a.values().iter().map(|v| v.days));
            let nanos = Int64Array::from_iter_values(a.values().iter().map(|v| v.nanoseconds));
            let s = StructArray::try_new(
                interval_fields(),
                vec![Arc::new(months), Arc::new(days), Arc::new(nanos)],
                a.nulls().cloned(),
            )?;
            Ok((marked(field, s.data_type().clone(), "interval".into()), Arc::new(s)))
        }
        DataType::Decimal128(p, s) if *s < 0 => {
            let a = column.as_primitive::<Decimal128Type>();
            let shift = u32::from(s.unsigned_abs());
            let mark = format!("decimal({p},{s})");
            let digits = u32::from(*p) + shift;
            if digits <= 38 {
                let factor = 10i128.pow(shift);
                let scaled: Decimal128Array = a.unary(|v| v * factor);
                let scaled = scaled.with_precision_and_scale(digits as u8, 0)?;
                Ok((marked(field, scaled.data_type().clone(), mark), Arc::new(scaled)))
            } else {
                let text: StringArray = a
                    .iter()
                    .map(|v| v.map(|v| format!("{v}{}", "0".repeat(shift as usize))))
                    .collect();
                Ok((marked(field, DataType::Utf8, mark), Arc::new(text)))
            }
        }
        DataType::List(item) => map_list_items(field, item, column, encode_column),
        _ => Ok((Arc::clone(field), Arc::clone(column))),
    }
}

/// A list column with `f` applied to its items' field and values; the column itself when `f`
/// leaves them as they are.
fn map_list_items(field: &FieldRef, item: &FieldRef, column: &ArrayRef, f: Convert) -> Converted {
    let list = column.as_list::<i32>();
    let (item_field, values) = f(item, list.values())?;
    if Arc::ptr_eq(&item_field, item) {
        return Ok((Arc::clone(field), Arc::clone(column)));
    }
    let new = ListArray::try_new(
        Arc::clone(&item_field),
        list.offsets().clone(),
        values,
        list.nulls().cloned(),
    )?;
    Ok((Arc::new(field.as_ref().clone().with_data_type(DataType::List(item_field))), Arc::new(new)))
}

fn restore_column(field: &FieldRef, column: &ArrayRef) -> Converted {
    let bad = |what: &str| ArrowError::InvalidArgumentError(format!("{}: {what}", field.name()));
    let unmark = |dt: DataType| {
        let mut md = field.metadata().clone();
        md.remove(PARQUET_ENCODING);
        Arc::new(Field::new(field.name(), dt, field.is_nullable()).with_metadata(md))
    };
    match field.metadata().get(PARQUET_ENCODING).map(String::as_str) {
        Some("interval") => {
            let s = column.as_struct_opt().ok_or_else(|| bad("not a struct"))?;
            let (months, days, nanos) = (
                s.column(0).as_primitive_opt::<arrow_array::types::Int32Type>(),
                s.column(1).as_primitive_opt::<arrow_array::types::Int32Type>(),
                s.column(2).as_primitive_opt::<arrow_array::types::Int64Type>(),
            );
            let (Some(m), Some(d), Some(n)) = (months, days, nanos) else {
                return Err(bad("not months, days, nanoseconds"));
            };
            let values = (0..s.len()).map(|i| {
                arrow_array::types::IntervalMonthDayNano::new(m.value(i), d.value(i), n.value(i))
            });
            let a = IntervalMonthDayNanoArray::new(values.collect(), s.nulls().cloned());
            let dt = a.data_type().clone();
            Ok((unmark(dt), Arc::new(a)))
        }
        Some(mark) if mark.starts_with("decimal(") => {
            let inner = mark.trim_start_matches("decimal(").trim_end_matches(')');
            let (p, s) = inner.split_once(',').ok_or_else(|| bad("bad mark"))?;
            let (p, s): (u8, i8) =
                (p.parse().map_err(|_| bad("bad mark"))?, s.parse().map_err(|_| bad("bad mark"))?);
            let shift = u32::from(s.unsigned_abs());
            let a: Decimal128Array = match column.data_type() {
                DataType::Decimal128(..) => {
                    let factor = 10i128.pow(shift);
                    column.as_primitive::<Decimal128Type>().unary(|v| v / factor)
                }
                DataType::Utf8 => column
                    .as_string::<i32>()
                    .iter()
                    .map(|v| {
                        v.map(|t| {
                            t.get(..t.len().saturating_sub(shift as usize))
                                .and_then(|d| d.parse::<i128>().ok())
                                .ok_or_else(|| bad("not a decimal"))
                        })
                        .transpose()
                    })
                    .collect::<std::result::Result<_, _>>()?,
                _ => return Err(bad("not a decimal")),
            };
            let a = a.with_precision_and_scale(p, s)?;
            Ok((unmark(a.data_type().clone()), Arc::new(a)))
        }
        _ => match field.data_type() {
            DataType::List(item) => map_list_items(field, item, column, restore_column),
            _ => Ok((Arc::clone(field), Arc::clone(column))),
        },
    }
}

/// Reads every finished file of one table directory (`*.parquet`, in name order — epoch, then
/// sequence: the order they were written), with the stream's types restored.
///
/// # Errors
///
/// I/O and Parquet errors.
pub fn read_dir(dir: &Path) -> Result<Vec<RecordBatch>> {
    let mut names: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(|e| Error::sink(dir, "cannot read", e))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "parquet"))
        .collect();
    names.sort();
    let mut out = Vec::new();
    for path in names {
        let file = File::open(&path).map_err(|e| Error::sink(&path, "cannot open", e))?;
        let parquet_err = |e: parquet::errors::ParquetError| {
            Error::sink(&path, "cannot read Parquet from", std::io::Error::other(e))
        };
        let builder = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
            .map_err(parquet_err)?;
        // The reader's batches leave out the schema's metadata (table name, keys): put it back.
        let schema = Arc::clone(builder.schema());
        for batch in builder.build().map_err(parquet_err)? {
            out.push(restore(&batch?.with_schema(Arc::clone(&schema))?)?);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directory_names_keep_tables_apart_and_visible() {
        assert_eq!(table_dir_name("public.users"), "public.users");
        assert_eq!(table_dir_name("my schema.a/b"), "my%20schema.a%2Fb");
        assert_eq!(table_dir_name(".hidden.t"), "%2Ehidden.t");
        assert_eq!(table_dir_name("public.café"), "public.caf%C3%A9");
    }

    #[test]
    fn checkpoints_round_trip_and_damage_is_detected() {
        let c = Checkpoint {
            epoch: 7,
            commit_lsn: Lsn(0x16B3F48),
            ack_lsn: Lsn(0x16B3F78),
            source: "db/\"slot\"".into(),
            snapshot: None,
            tables_held: None,
        };
        assert_eq!(Checkpoint::parse(&c.to_json()), Some(c.clone()));
        let with_snapshot = Checkpoint {
            snapshot: Some(SnapshotResume {
                lsn: Lsn(0x16B3F00),
                chunk_pages: 64,
                done: vec![
                    ChunkId { heap: "public.t".into(), file: 16384, first_page: 0 },
                    ChunkId { heap: "\"a@b\".\"t#\\\"x\"".into(), file: 7, first_page: 128 },
                ],
                next_ordinal: 17,
            }),
            tables_held: Some(vec!["public.a".into(), "my schema.\"b\"".into()]),
            ..c.clone()
        };
        assert_eq!(Checkpoint::parse(&with_snapshot.to_json()), Some(with_snapshot));
        let json = c.to_json();
        for cut in 0..json.len() - 1 {
            assert!(
                Checkpoint::parse(&json[..cut]).is_none()
                    || json[..cut].trim_end() == json.trim_end(),
                "{cut}"
            );
        }
        assert_eq!(Checkpoint::parse(&json.replace("\"version\":1", "\"version\":2")), None);
    }

    #[test]
    fn types_parquet_lacks_are_stored_differently_and_restored_exactly() {
        use arrow_array::types::IntervalMonthDayNano;
        let iv = IntervalMonthDayNanoArray::from(vec![
            Some(IntervalMonthDayNano::new(-1, 2, i64::MIN)),
            None,
            Some(IntervalMonthDayNano::new(i32::MAX, i32::MIN, i64::MAX)),
        ]);
        let neg = Decimal128Array::from(vec![Some(123i128), None, Some(-99_999)])
            .with_precision_and_scale(5, -2)
            .unwrap();
        let wide = Decimal128Array::from(vec![Some(10i128.pow(37)), None, Some(-1)])
            .with_precision_and_scale(38, -5)
            .unwrap();
        let item = Arc::new(Field::new("item", iv.data_type().clone(), true));
        let list = ListArray::new(
            Arc::clone(&item),
            arrow_buffer::OffsetBuffer::from_lengths([2, 0, 1]),
            Arc::new(iv.clone()),
            None,
        );
        let schema = Arc::new(Schema::new(vec![
            Field::new("iv", iv.data_type().clone(), true),
            Field::new("neg", neg.data_type().clone(), true),
            Field::new("wide", wide.data_type().clone(), true),
            Field::new("list", list.data_type().clone(), true),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![Arc::new(iv), Arc::new(neg), Arc::new(wide), Arc::new(list)],
        )
        .unwrap();
        let stored = encode(&batch).unwrap();
        assert!(matches!(stored.schema().field(0).data_type(), DataType::Struct(_)));
        assert_eq!(stored.schema().field(1).data_type(), &DataType::Decimal128(7, 0));
        assert_eq!(stored.schema().field(2).data_type(), &DataType::Utf8);
        let stored_neg = stored.column(1).as_primitive::<Decimal128Type>();
        assert_eq!(stored_neg.value(0), 12_300, "the same number, at scale 0");
        // Through a real Parquet file and back.
        let mut buf = Vec::new();
        let mut w = ArrowWriter::try_new(&mut buf, stored.schema(), None).unwrap();
        w.write(&stored).unwrap();
        w.close().unwrap();
        let read = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
            bytes::Bytes::from(buf),
        )
        .unwrap()
        .build()
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
        assert_eq!(restore(&read).unwrap(), batch);
    }

    #[test]
    fn reopening_removes_what_a_crash_left_and_keeps_what_the_checkpoint_covers() {
        let dir = std::env::temp_dir().join(format!("w2a-parquet-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let table = dir.join("public.t");
        fs::create_dir_all(&table).unwrap();
        let ckpt = Checkpoint { epoch: 3, source: "db/slot".into(), ..Checkpoint::default() };
        fs::write(dir.join(CHECKPOINT_FILE), ckpt.to_json()).unwrap();
        for name in [
            "part-0000000002-00001.parquet",
            "part-0000000003-00001.parquet",
            "part-0000000004-00001.parquet",
            ".part-0000000004-00002.parquet.tmp",
        ] {
            fs::write(table.join(name), b"x").unwrap();
        }
        let sink = ParquetSink::open(&dir, "db/slot", ParquetOptions::default()).unwrap();
        assert_eq!(sink.durable(), Durable::default());
        let mut left: Vec<String> = fs::read_dir(&table)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["part-0000000002-00001.parquet", "part-0000000003-00001.parquet"]);
        let e = ParquetSink::open(&dir, "db/other", ParquetOptions::default()).unwrap_err();
        assert!(e.to_string().contains("not of \"db/other\""), "{e}");
        fs::remove_dir_all(&dir).unwrap();
        // A directory of something else is refused.
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("notes.txt"), b"mine").unwrap();
        assert!(ParquetSink::open(&dir, "db/slot", ParquetOptions::default()).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }
}
