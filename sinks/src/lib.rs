//! Sinks: where a change stream goes — [Parquet](parquet) directories, an
//! [Arrow IPC](ipc) stream, [JSON lines](jsonl), Kafka topics (`kafka`, feature `kafka`), or
//! several of them at once ([`fanout`]) — and [`run`], the loop that feeds one and
//! acknowledges to the server only what the sink has made durable (recording metrics through
//! the [`metrics`](https://docs.rs/metrics) facade as it goes).
//!
//! ## Delivery
//!
//! The runner acknowledges a position only after [`Sink::flush`] returned, so the slot never
//! forgets a change the sink could still lose. What happens to changes written after the last
//! flush depends on the sink:
//!
//! - a sink that can take them back ([`Sink::rollback`]: the Parquet sink, whose files become
//!   visible only at a flush, and the Kafka sink with Kafka transactions, whose messages
//!   `read_committed` consumers see only once committed) gives **exactly-once** output: after
//!   a crash it reports what it
//!   made durable ([`Sink::durable`]) and the runner skips the transactions at or before it
//!   when the slot replays them;
//! - a sink that cannot (a stream to standard output) is **at-least-once**: a transaction cut
//!   by a crash or a reconnection is written again, whole; every row carries its
//!   `(commit LSN, ordinal)` so a reader can drop the first, partial copy.

#![warn(missing_docs)]

pub mod error;
pub mod fanout;
#[cfg(feature = "ipc")]
pub mod ipc;
#[cfg(feature = "jsonl")]
pub mod jsonl;
#[cfg(feature = "kafka")]
pub mod kafka;
#[cfg(feature = "parquet")]
pub mod parquet;
mod worker;

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use arrow_array::builder::{
    BinaryBuilder, BooleanBuilder, StringBuilder, UInt32Builder, UInt64Builder,
};
use arrow_array::{ArrayRef, RecordBatch, UInt32Array, UInt64Array};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use tokio::time::Instant;
use wal2arrow_schema::Lsn;

pub use crate::error::{Error, ErrorClass, Result};
use crate::worker::Worker;
use wal2arrow_consumer::{
    CdcStream, ChangeBatch, Event, LogicalMessage, SnapshotEvent, TruncateEvent,
};

/// What an earlier run made durable: the last transaction whose changes the sink holds, and
/// the position acknowledged with it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Durable {
    /// Commit LSN of the last transaction written durably (`Lsn::INVALID`: none).
    pub commit_lsn: Lsn,
    /// The position acknowledged to the server at that flush (non-transactional messages
    /// before it are held too).
    pub ack_lsn: Lsn,
}

/// A destination for change events.
///
/// [`run`] calls these methods on a thread of its own: they may block (write, encode, fsync)
/// without holding up the async runtime.
pub trait Sink: Send {
    /// What an earlier run made durable; the runner skips the transactions at or before it
    /// when the slot delivers them again. Default: nothing (the sink keeps no such record).
    fn durable(&self) -> Durable {
        Durable::default()
    }

    /// Writes one event: a [`ChangeBatch`], a TRUNCATE, a message, or a transaction's Begin or
    /// Commit, in stream order.
    ///
    /// # Errors
    ///
    /// I/O and encoding errors.
    fn write(&mut self, event: &Event) -> Result<()>;

    /// Whether the sink wants to flush now (its roll policy); asked after each commit and
    /// once a second between transactions.
    fn wants_flush(&self) -> bool;

    /// Makes everything written so far durable. Called between transactions only.
    ///
    /// # Errors
    ///
    /// I/O errors; nothing is acknowledged then.
    fn flush(&mut self) -> Result<()>;

    /// Forgets everything written since the last flush, if the sink can; `false` if it
    /// cannot (it is then at-least-once).
    ///
    /// # Errors
    ///
    /// I/O errors.
    fn rollback(&mut self) -> Result<bool>;
}

impl<S: Sink + ?Sized> Sink for Box<S> {
    fn durable(&self) -> Durable {
        (**self).durable()
    }

    fn write(&mut self, event: &Event) -> Result<()> {
        (**self).write(event)
    }

    fn wants_flush(&self) -> bool {
        (**self).wants_flush()
    }

    fn flush(&mut self) -> Result<()> {
        (**self).flush()
    }

    fn rollback(&mut self) -> Result<bool> {
        (**self).rollback()
    }
}

/// When [`run`] stops on its own.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Stop once everything up to this position has been written and acknowledged.
    pub until_lsn: Option<Lsn>,
    /// Stop after this long without an event.
    pub idle_timeout: Option<Duration>,
    /// Stop after this many transactions.
    pub max_transactions: Option<u64>,
    /// After a stop is asked for in the middle of a transaction, how long to wait for its
    /// commit before giving it up (it is delivered again next time). Default 30 s.
    pub finish_timeout: Option<Duration>,
}

/// Why [`run`] returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stopped {
    /// The shutdown future completed (Ctrl-C, SIGTERM).
    Shutdown,
    /// [`RunOptions::until_lsn`] was reached.
    UntilLsn,
    /// [`RunOptions::idle_timeout`] passed without an event.
    Idle,
    /// [`RunOptions::max_transactions`] were written.
    MaxTransactions,
    /// The stream ended.
    StreamEnded,
}

/// Counters of a run, for progress lines and the final summary.
#[derive(Clone, Debug, Default)]
pub struct Progress {
    /// Time since the run started.
    pub elapsed: Duration,
    /// Events written.
    pub events: u64,
    /// Transactions written.
    pub transactions: u64,
    /// Transactions skipped because an earlier run had made them durable.
    pub skipped_transactions: u64,
    /// Rows written, by table.
    pub rows: BTreeMap<String, u64>,
    /// Bytes the server sent for the rows.
    pub bytes: u64,
    /// The position acknowledged to the server.
    pub acknowledged: Lsn,
    /// WAL the server holds for the slot beyond the acknowledged position, in bytes.
    pub lag_bytes: u64,
    /// Flushes done.
    pub flushes: u64,
    /// The initial snapshot's progress, when the stream takes one.
    pub snapshot: Option<wal2arrow_consumer::SnapshotStats>,
}

impl Progress {
    /// Rows written, all tables.
    pub fn total_rows(&self) -> u64 {
        self.rows.values().sum()
    }
}

/// The outcome of [`run`].
#[derive(Clone, Debug)]
pub struct RunReport {
    /// Why it stopped.
    pub stopped: Stopped,
    /// The counters at the end.
    pub progress: Progress,
}

/// Feeds `stream` into `sink` until `shutdown` completes or an [`RunOptions`] limit is
/// reached, flushing as the sink asks and acknowledging each flushed position. `progress` is
/// called once a second.
///
/// The sink runs on a thread of its own, so its writes, encoding and fsyncs never hold up the
/// async runtime (or the replication connection's keepalives); at most a few events wait for
/// it, so memory stays bounded when it is slower than the stream. `run` returns after that
/// thread has dropped the sink (its files are closed).
///
/// A stop asked for in the middle of a transaction waits for its commit (up to
/// [`RunOptions::finish_timeout`]), then flushes, acknowledges and tells the server before
/// returning. A reconnection in the middle of a transaction rolls the sink back to its last
/// flush (or, for sinks that cannot, writes the transaction again).
///
/// # Errors
///
/// [`Error::Stream`] when the stream fails: the sink is rolled back (or flushed, between
/// transactions) first, so nothing unflushed is acknowledged. [`Error::Sink`] (with the path)
/// when the sink fails: nothing more is flushed or acknowledged, the sink is rolled back if it
/// can be, and what it had not made durable comes again next time.
pub async fn run<S: Sink + 'static>(
    stream: &mut CdcStream,
    sink: S,
    options: &RunOptions,
    shutdown: impl Future<Output = ()>,
    progress: &mut (dyn FnMut(&Progress) + Send),
) -> Result<RunReport> {
    if *stream.in_progress() == wal2arrow_consumer::InProgress::Deliver {
        return Err(Error::Stream(wal2arrow_consumer::Error::Config(
            "sinks write committed transactions: build the stream with InProgress::Buffer (the \
             default), not InProgress::Deliver"
                .into(),
        )));
    }
    let durable = sink.durable();
    let mut worker = Worker::start(sink)?;
    let result = drive(stream, &mut worker, durable, options, shutdown, progress).await;
    // A write that failed without the loop hearing of it (it ended first) still fails the
    // run: its error names the file, and is what to fix.
    match (worker.finish().await, result) {
        (None, result) => result,
        (Some(failed), Ok(_)) => Err(failed),
        (Some(failed), Err(e)) => {
            tracing::warn!(error = %e, "the stream failed too");
            Err(failed)
        }
    }
}

async fn drive(
    stream: &mut CdcStream,
    worker: &mut Worker,
    durable: Durable,
    options: &RunOptions,
    shutdown: impl Future<Output = ()>,
    progress: &mut (dyn FnMut(&Progress) + Send),
) -> Result<RunReport> {
    let mut r = Runner {
        durable,
        in_txn: false,
        skip_txn: false,
        written_commit: durable.commit_lsn,
        flushed_commit: durable.commit_lsn,
        written_message: Lsn::INVALID,
        flushed_message: Lsn::INVALID,
        pending_ack: None,
        resumable_snapshot: false,
        last_commit_time_us: 0,
        progress: Progress::default(),
        started: Instant::now(),
    };
    tokio::pin!(shutdown);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // --until-lsn is also reached when the server's position passes it with nothing left to
    // deliver (the last change before it was a message, or a transaction of other tables).
    let mut until_tick = tokio::time::interval(Duration::from_millis(100));
    until_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_event = Instant::now();
    let mut stopping: Option<Instant> = None;
    let finish = options.finish_timeout.unwrap_or(Duration::from_secs(30));
    let stopped = loop {
        let step: Result<Option<Stopped>> = tokio::select! {
            e = worker.failure() => Err(e),
            () = &mut shutdown, if stopping.is_none() => {
                if !r.in_txn {
                    break Stopped::Shutdown;
                }
                if r.resumable_snapshot {
                    // The next run resumes the snapshot from the ranges made durable now;
                    // the rest of this one is taken back below.
                    tracing::info!("stopping the snapshot; the next run resumes it");
                    worker.flush().await?;
                    break Stopped::Shutdown;
                }
                tracing::info!("stopping after the transaction in progress (at most {finish:?})");
                stopping = Some(Instant::now() + finish);
                Ok(None)
            }
            _ = tick.tick() => r.tick(stream, worker, options, last_event, stopping, progress).await,
            _ = until_tick.tick(), if options.until_lsn.is_some() => {
                r.until_reached(stream, worker, options).await
            }
            event = stream.next() => match event {
                None => Ok(Some(Stopped::StreamEnded)),
                Some(Err(e)) => {
                    metrics::counter!("wal2arrow_errors_total", "kind" => "stream").increment(1);
                    r.abandon(stream, worker).await;
                    return Err(e.into());
                }
                Some(Ok(event)) => {
                    last_event = Instant::now();
                    r.event(event, stream, worker, options, stopping.is_some()).await
                }
            },
        };
        match step {
            Ok(None) => {}
            Ok(Some(stopped)) => break stopped,
            Err(e) => {
                metrics::counter!("wal2arrow_errors_total", "kind" => "sink").increment(1);
                // The sink failed: flush nothing more, take back what it can.
                if let Err(e) = worker.rollback().await {
                    tracing::warn!(error = %e, "could not take back what was written since the last flush");
                }
                return Err(e);
            }
        }
    };
    let ended = if r.in_txn {
        // Ended in a transaction (the stream ended): keep nothing of it.
        worker.rollback().await.map(drop)
    } else if r.pending_ack.is_some() {
        r.flush(stream, worker).await
    } else {
        Ok(())
    };
    if let Err(e) = ended {
        let _ = worker.rollback().await;
        return Err(e);
    }
    if stopped != Stopped::StreamEnded {
        // Tell the server now rather than at the next status update.
        if let Err(e) = stream.sync_acks().await {
            tracing::warn!(error = %e, "could not send the final acknowledgement");
        }
    }
    r.update(stream);
    Ok(RunReport { stopped, progress: r.progress })
}

struct Runner {
    durable: Durable,
    in_txn: bool,
    /// The transaction being received was made durable by an earlier run, or written
    /// already before a reconnection: drop it.
    skip_txn: bool,
    /// Commit LSN of the last transaction written to the sink.
    written_commit: Lsn,
    /// Commit LSN of the last transaction the last flush made durable.
    flushed_commit: Lsn,
    /// LSN of the last non-transactional message written, and as of the last flush.
    written_message: Lsn,
    flushed_message: Lsn,
    /// The position to acknowledge after the next flush.
    pending_ack: Option<Lsn>,
    /// A resumable initial snapshot is being written: the sink may flush between its ranges.
    resumable_snapshot: bool,
    /// Commit time of the last transaction written (µs since the epoch; 0: none yet).
    last_commit_time_us: i64,
    progress: Progress,
    started: Instant,
}

impl Runner {
    fn update(&mut self, stream: &CdcStream) {
        let stats = stream.stats();
        let acked = stream.ack_handle().acknowledged();
        self.progress.elapsed = self.started.elapsed();
        self.progress.acknowledged = acked;
        self.progress.lag_bytes = stats.server_wal_end.0.saturating_sub(acked.0);
        self.progress.snapshot = stats.snapshot;
        // The lag in time: how old the last transaction written is, while the server holds
        // WAL beyond what was acknowledged (0 once caught up).
        let lag_seconds = if self.progress.lag_bytes == 0 || self.last_commit_time_us == 0 {
            0.0
        } else {
            let now_us = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_micros() as i64);
            (now_us - self.last_commit_time_us).max(0) as f64 / 1e6
        };
        metrics::gauge!("wal2arrow_lag_bytes").set(self.progress.lag_bytes as f64);
        metrics::gauge!("wal2arrow_lag_seconds").set(lag_seconds);
        metrics::gauge!("wal2arrow_acknowledged_lsn").set(acked.0 as f64);
        metrics::counter!("wal2arrow_reconnects_total").absolute(stats.reconnects);
        metrics::counter!("wal2arrow_streamed_transactions_total")
            .absolute(stats.streamed.transactions);
        metrics::counter!("wal2arrow_streamed_spilled_bytes_total")
            .absolute(stats.streamed.spilled_bytes);
        if let Some(s) = &stats.snapshot {
            metrics::gauge!("wal2arrow_snapshot_rows").set(s.rows as f64);
        }
    }

    /// Once a second: progress, a flush when the sink wants one, the time limits.
    async fn tick(
        &mut self,
        stream: &CdcStream,
        worker: &mut Worker,
        options: &RunOptions,
        last_event: Instant,
        stopping: Option<Instant>,
        progress: &mut (dyn FnMut(&Progress) + Send),
    ) -> Result<Option<Stopped>> {
        self.update(stream);
        progress(&self.progress);
        if !self.in_txn && self.pending_ack.is_some() && worker.wants_flush().await? {
            self.flush(stream, worker).await?;
        }
        if let Some(until) = options.until_lsn
            && !self.in_txn
            && self.pending_ack.is_none()
            && stream.ack_handle().acknowledged() >= until
        {
            return Ok(Some(Stopped::UntilLsn));
        }
        if options.idle_timeout.is_some_and(|t| last_event.elapsed() >= t) && !self.in_txn {
            return Ok(Some(Stopped::Idle));
        }
        if stopping.is_some_and(|d| Instant::now() >= d) {
            tracing::warn!(
                "the transaction in progress did not commit in time: it is delivered again next time"
            );
            if worker.rollback().await? {
                // Taken back with it: everything since the last flush, complete transactions
                // included. None of it may be acknowledged now (it comes again next time).
                self.written_commit = self.flushed_commit;
                self.written_message = self.flushed_message;
                self.pending_ack = None;
            }
            self.in_txn = false;
            return Ok(Some(Stopped::Shutdown));
        }
        Ok(None)
    }

    /// Whether `--until-lsn` is reached with nothing left to deliver before it.
    async fn until_reached(
        &mut self,
        stream: &CdcStream,
        worker: &mut Worker,
        options: &RunOptions,
    ) -> Result<Option<Stopped>> {
        if let Some(until) = options.until_lsn
            && !self.in_txn
            && stream.has_delivered_through(until)
        {
            if self.pending_ack.is_some() {
                self.flush(stream, worker).await?;
            }
            // Everything before `until` is written and durable.
            stream.ack(until);
            return Ok(Some(Stopped::UntilLsn));
        }
        Ok(None)
    }

    /// Hands one event to the sink; whether a limit is reached with it.
    async fn event(
        &mut self,
        event: Event,
        stream: &CdcStream,
        worker: &mut Worker,
        options: &RunOptions,
        stopping: bool,
    ) -> Result<Option<Stopped>> {
        let commit_end = match &event {
            Event::Commit(c) => Some(c.end_lsn),
            _ => None,
        };
        let snapshot_done = matches!(event, Event::Snapshot(SnapshotEvent::Complete { .. }));
        let chunk_done = matches!(event, Event::Snapshot(SnapshotEvent::ChunkDone { .. }));
        let resumable_started =
            matches!(event, Event::Snapshot(SnapshotEvent::Started { resumable: true, .. }));
        let was_resumable = self.resumable_snapshot;
        match &event {
            Event::Snapshot(SnapshotEvent::Started { resumable, .. }) => {
                self.resumable_snapshot = *resumable;
            }
            Event::Snapshot(SnapshotEvent::Complete { .. }) => self.resumable_snapshot = false,
            _ => {}
        }
        if self.handle(&event, worker).await? {
            worker.write(event).await?;
        }
        if resumable_started {
            // The record of the snapshot (its LSN, no range yet) is durable before any row:
            // a run that dies from here on is resumed, not forgotten.
            worker.flush().await?;
            self.progress.flushes += 1;
        }
        if chunk_done && self.resumable_snapshot && worker.wants_flush().await? {
            // Whole ranges become durable (and recorded) during the snapshot; nothing is
            // acknowledged until it is complete.
            worker.flush().await?;
            self.progress.flushes += 1;
        }
        if snapshot_done && !self.in_txn && (self.pending_ack.is_some() || was_resumable) {
            // A new slot waits for this acknowledgement before it streams: make the snapshot
            // durable now rather than at the next roll.
            self.flush(stream, worker).await?;
        }
        if let Some(end) = commit_end {
            if stopping {
                return Ok(Some(Stopped::Shutdown));
            }
            if options.max_transactions.is_some_and(|m| self.progress.transactions >= m) {
                return Ok(Some(Stopped::MaxTransactions));
            }
            if options.until_lsn.is_some_and(|u| end >= u) {
                return Ok(Some(Stopped::UntilLsn));
            }
        }
        Ok(None)
    }

    async fn flush(&mut self, stream: &CdcStream, worker: &mut Worker) -> Result<()> {
        let started = Instant::now();
        worker.flush().await?;
        metrics::histogram!("wal2arrow_sink_flush_seconds").record(started.elapsed().as_secs_f64());
        self.progress.flushes += 1;
        self.flushed_commit = self.written_commit;
        self.flushed_message = self.written_message;
        if let Some(lsn) = self.pending_ack.take() {
            stream.ack(lsn);
        }
        Ok(())
    }

    /// After a stream error: flush what is complete, or take back a partial transaction.
    async fn abandon(&mut self, stream: &CdcStream, worker: &mut Worker) {
        let result = if self.in_txn && self.resumable_snapshot {
            // Publish the ranges finished so far (the next run resumes after them), then take
            // back the rest.
            match worker.flush().await {
                Ok(()) => worker.rollback().await.map(drop),
                Err(e) => Err(e),
            }
        } else if self.in_txn {
            worker.rollback().await.map(drop)
        } else if self.pending_ack.is_some() {
            self.flush(stream, worker).await
        } else {
            Ok(())
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "could not save what was written before the error");
        }
    }

    /// Updates the bookkeeping for `event`; whether the sink gets it.
    async fn handle(&mut self, event: &Event, worker: &mut Worker) -> Result<bool> {
        match event {
            Event::Begin(b) => {
                self.in_txn = true;
                self.skip_txn =
                    !self.written_commit.is_invalid() && b.commit_lsn <= self.written_commit;
                if self.skip_txn {
                    self.progress.skipped_transactions += 1;
                    return Ok(false);
                }
            }
            Event::Commit(c) => {
                self.in_txn = false;
                if std::mem::take(&mut self.skip_txn) {
                    // Nothing to write; its position may still be acknowledged.
                    self.pending_ack = Some(self.pending_ack.unwrap_or(c.end_lsn).max(c.end_lsn));
                    return Ok(false);
                }
                self.written_commit = c.commit_lsn;
                self.progress.transactions += 1;
                self.pending_ack = Some(c.end_lsn);
                self.last_commit_time_us = c.commit_time_us;
                metrics::counter!("wal2arrow_transactions_total").increment(1);
            }
            Event::Restarted { from, .. } => {
                // The stream resumes from the last flush. Complete transactions written since
                // are skipped when they come again; a partial one is taken back — with all
                // since the flush, which then is written again — or, by sinks that cannot,
                // written again whole.
                if self.in_txn {
                    if worker.rollback().await? {
                        self.written_commit = self.flushed_commit;
                        self.written_message = self.flushed_message;
                        self.pending_ack = None;
                    } else {
                        tracing::warn!(
                            from = %from,
                            "the connection was lost in a transaction: it is written again \
                             whole (rows carry their (commit LSN, ordinal) to drop the partial \
                             copy)"
                        );
                    }
                }
                self.in_txn = false;
                self.skip_txn = false;
                return Ok(false);
            }
            Event::Relation(_) => return Ok(false),
            Event::Message(m) if !m.transactional => {
                if m.lsn < self.durable.ack_lsn
                    || (!self.written_message.is_invalid() && m.lsn <= self.written_message)
                {
                    return Ok(false);
                }
                self.written_message = m.lsn;
                self.pending_ack = Some(self.pending_ack.unwrap_or(m.ack_lsn()).max(m.ack_lsn()));
            }
            _ if self.skip_txn => return Ok(false),
            Event::Change(c) => {
                let (rows, bytes) = (c.num_rows() as u64, c.source_bytes() as u64);
                *self.progress.rows.entry(c.table().to_owned()).or_default() += rows;
                self.progress.bytes += bytes;
                let table = c.table().to_owned();
                metrics::counter!("wal2arrow_rows_total", "table" => table.clone()).increment(rows);
                metrics::counter!("wal2arrow_bytes_total", "table" => table).increment(bytes);
            }
            _ => {}
        }
        self.progress.events += 1;
        Ok(true)
    }
}

/// The columns sinks add after a batch's own: the transaction's commit LSN and time, and the
/// batch's ordinal in it — with `_lsn`, everything a reader needs to order rows and drop
/// copies.
pub fn position_fields() -> Vec<Field> {
    let system = |f: Field| {
        f.with_metadata(std::collections::HashMap::from([(
            wal2arrow_schema::meta::SYSTEM_COLUMN.to_owned(),
            "true".to_owned(),
        )]))
    };
    vec![
        system(Field::new("_commit_lsn", DataType::UInt64, false)),
        system(Field::new("_ordinal", DataType::UInt32, false)),
        system(Field::new(
            "_commit_time",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        )),
    ]
}

/// A change batch with [`position_fields`] appended.
///
/// # Errors
///
/// Never for a batch the stream produced.
pub fn with_position(change: &ChangeBatch) -> Result<RecordBatch> {
    let batch = &change.batch;
    let n = batch.num_rows();
    let schema = batch.schema();
    let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.extend(position_fields());
    let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
    columns.push(std::sync::Arc::new(UInt64Array::from_value(change.commit_lsn.0, n)));
    columns.push(std::sync::Arc::new(UInt32Array::from_value(change.ordinal, n)));
    columns.push(std::sync::Arc::new(
        arrow_array::TimestampMicrosecondArray::from_value(change.commit_time_us, n)
            .with_timezone("UTC"),
    ));
    let schema: SchemaRef =
        std::sync::Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()));
    RecordBatch::try_new(schema, columns).map_err(Error::from)
}

/// Where sinks put TRUNCATEs: the name of their directory or IPC segment.
pub const TRUNCATES: &str = "_truncates";
/// Where sinks put logical messages.
pub const MESSAGES: &str = "_messages";

/// A TRUNCATE as rows: one per table (`table`, `cascade`, `restart_identity` — NULL when the
/// plugin does not say — `_commit_lsn`, `_ordinal`).
///
/// # Errors
///
/// Never.
pub fn truncate_batch(t: &TruncateEvent) -> Result<RecordBatch> {
    let mut table = StringBuilder::new();
    let (mut cascade, mut restart) = (BooleanBuilder::new(), BooleanBuilder::new());
    let (mut commit, mut ordinal) = (UInt64Builder::new(), UInt32Builder::new());
    for r in &t.relations {
        table.append_value(&r.qualified_name);
        cascade.append_option(t.cascade);
        restart.append_option(t.restart_identity);
        commit.append_value(t.commit_lsn.0);
        ordinal.append_value(t.ordinal);
    }
    named_batch(
        TRUNCATES,
        vec![
            Field::new("table", DataType::Utf8, false),
            Field::new("cascade", DataType::Boolean, true),
            Field::new("restart_identity", DataType::Boolean, true),
            Field::new("_commit_lsn", DataType::UInt64, false),
            Field::new("_ordinal", DataType::UInt32, false),
        ],
        vec![
            std::sync::Arc::new(table.finish()),
            std::sync::Arc::new(cascade.finish()),
            std::sync::Arc::new(restart.finish()),
            std::sync::Arc::new(commit.finish()),
            std::sync::Arc::new(ordinal.finish()),
        ],
    )
}

/// A batch of the sink's own tables (`TRUNCATES`, `MESSAGES`): the table's name in the
/// schema metadata, as stream batches carry theirs.
fn named_batch(
    table: &str,
    fields: Vec<Field>,
    columns: Vec<arrow_array::ArrayRef>,
) -> Result<RecordBatch> {
    let metadata = std::collections::HashMap::from([(
        wal2arrow_schema::meta::TABLE_NAME.to_owned(),
        table.to_owned(),
    )]);
    let schema = std::sync::Arc::new(Schema::new_with_metadata(fields, metadata));
    Ok(RecordBatch::try_new(schema, columns)?)
}

/// A logical message as a row (`prefix`, `content`, `transactional`, `lsn`, and for
/// transactional ones `_commit_lsn`, `_ordinal`).
///
/// # Errors
///
/// Never.
pub fn message_batch(m: &LogicalMessage) -> Result<RecordBatch> {
    let mut prefix = StringBuilder::new();
    prefix.append_value(&m.prefix);
    let mut content = BinaryBuilder::new();
    content.append_value(m.content.as_slice());
    let mut transactional = BooleanBuilder::new();
    transactional.append_value(m.transactional);
    let mut lsn = UInt64Builder::new();
    lsn.append_value(m.lsn.0);
    let (mut commit, mut ordinal) = (UInt64Builder::new(), UInt32Builder::new());
    commit.append_option(m.txn.map(|(_, commit_lsn, _)| commit_lsn.0));
    ordinal.append_option(m.txn.map(|(_, _, ordinal)| ordinal));
    named_batch(
        MESSAGES,
        vec![
            Field::new("prefix", DataType::Utf8, false),
            Field::new("content", DataType::Binary, false),
            Field::new("transactional", DataType::Boolean, false),
            Field::new("lsn", DataType::UInt64, false),
            Field::new("_commit_lsn", DataType::UInt64, true),
            Field::new("_ordinal", DataType::UInt32, true),
        ],
        vec![
            std::sync::Arc::new(prefix.finish()),
            std::sync::Arc::new(content.finish()),
            std::sync::Arc::new(transactional.finish()),
            std::sync::Arc::new(lsn.finish()),
            std::sync::Arc::new(commit.finish()),
            std::sync::Arc::new(ordinal.finish()),
        ],
    )
}

/// Where a stream-shaped sink writes: a file (fsynced at each flush) or standard output.
///
/// A file is opened for appending and created if missing: what an earlier run wrote — and
/// acknowledged to the server — stays. The sinks repair a tail a crash left half written
/// before they append (see [`JsonLinesSink::open`](jsonl::JsonLinesSink::open) and
/// [`IpcSink::open`](ipc::IpcSink::open)).
#[derive(Debug)]
pub enum Output {
    /// A file.
    File {
        /// The open file (append mode).
        file: std::fs::File,
        /// Its path, for messages.
        path: std::path::PathBuf,
    },
    /// Standard output.
    Stdout(std::io::Stdout),
}

impl Output {
    /// `-` for standard output, otherwise the file at `path`, opened for appending (created
    /// if missing; never truncated).
    ///
    /// # Errors
    ///
    /// [`Error::Sink`] when the file cannot be opened or created.
    pub fn open(path: &std::path::Path) -> Result<Output> {
        if path.as_os_str() == "-" {
            return Ok(Output::Stdout(std::io::stdout()));
        }
        std::fs::OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .map(|file| Output::File { file, path: path.to_owned() })
            .map_err(|e| Error::sink(path, "cannot open", e))
    }

    /// The path written to (`-` for standard output).
    pub fn path(&self) -> &std::path::Path {
        match self {
            Output::File { path, .. } => path,
            Output::Stdout(_) => std::path::Path::new("-"),
        }
    }

    /// A sink error about this output.
    pub fn error(&self, action: &str, e: std::io::Error) -> Error {
        Error::sink(self.path(), action, e)
    }

    /// The file, for repairing what an earlier run left (`None` for standard output).
    #[cfg(any(feature = "ipc", feature = "jsonl"))]
    fn file(&mut self) -> Option<&mut std::fs::File> {
        match self {
            Output::File { file, .. } => Some(file),
            Output::Stdout(_) => None,
        }
    }

    /// Makes what was written durable (fsync for a file).
    #[cfg(any(feature = "ipc", feature = "jsonl"))]
    fn sync(&mut self) -> std::io::Result<()> {
        match self {
            Output::File { file, .. } => file.sync_data(),
            Output::Stdout(s) => std::io::Write::flush(s),
        }
    }
}

impl std::io::Write for Output {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Output::File { file, .. } => file.write(buf),
            Output::Stdout(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Output::File { file, .. } => file.flush(),
            Output::Stdout(s) => s.flush(),
        }
    }
}

/// Checks up front that `--out` can be written: a file (or `-`) for stream-shaped sinks, a
/// directory for Parquet. Nothing is left behind that was not there (a file or directory this
/// creates is removed again).
///
/// # Errors
///
/// [`Error::Sink`] naming the path and what the operating system said.
pub fn check_writable(path: &std::path::Path, directory: bool) -> Result<()> {
    if path.as_os_str() == "-" {
        return Ok(());
    }
    if directory {
        let existed = path.exists();
        std::fs::create_dir_all(path).map_err(|e| Error::sink(path, "cannot create", e))?;
        let probe = path.join(format!(".wal2arrow-probe-{}", std::process::id()));
        let written =
            std::fs::write(&probe, b"").map_err(|e| Error::sink(path, "cannot write in", e));
        let _ = std::fs::remove_file(&probe);
        if !existed {
            let _ = std::fs::remove_dir(path);
        }
        return written;
    }
    let existed = path.exists();
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .map_err(|e| Error::sink(path, "cannot open", e))?;
    if !existed {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}

/// Appends `s` as a JSON string (the JSON lines and Kafka sinks' escaping).
#[cfg(any(feature = "jsonl", feature = "kafka"))]
pub(crate) fn json_string(s: &str, out: &mut String) {
    out.push('"');
    // Runs of bytes that need no escape are copied whole; every escaped character is ASCII,
    // so a run never ends inside a multi-byte character.
    let mut run = 0;
    for (i, b) in s.bytes().enumerate() {
        let escaped = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0..0x20 => "",
            _ => continue,
        };
        out.push_str(&s[run..i]);
        if escaped.is_empty() {
            let _ = std::fmt::Write::write_fmt(out, format_args!("\\u{b:04x}"));
        } else {
            out.push_str(escaped);
        }
        run = i + 1;
    }
    out.push_str(&s[run..]);
    out.push('"');
}
