//! A running replication stream: frames in, [`Event`]s out, standby status updates back.
//!
//! ## Positions and acknowledgements
//!
//! The consumer tells the server three positions in its standby status updates
//! ([protocol docs][proto]): *write* (received), *flush* and *apply*. For a logical slot the
//! server only cares about *flush*: it becomes the slot's `confirmed_flush_lsn`, the point a
//! restarted stream resumes from, and the WAL before it may be recycled. wal2arrow sends as
//! *flush* (and *apply*) only what the application [acknowledged](ChangeStream::ack) — a
//! transaction's `end_lsn` once it is durably handled — so a crash can replay transactions but
//! never skip one (at-least-once).
//!
//! Status updates go out when the server asks for one in a keepalive (it does so before
//! `wal_sender_timeout` would end the connection) and every `status_interval` (10 s by
//! default, as `pg_recvlogical`).
//!
//! When everything delivered has been acknowledged and no transaction is open, the stream
//! also confirms the WAL end a keepalive reports: the walsender sends that position only once
//! it has sent every change before it, so nothing is skipped, and the slot keeps up with WAL
//! written by other databases or filtered tables. Heartbeat messages (see
//! [`ChangeStream::set_heartbeat_prefix`]) do the same for a database with no activity at all.
//!
//! [proto]: https://www.postgresql.org/docs/15/protocol-replication.html

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arrow_buffer::Buffer;
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use tokio::time::Instant;
use wal2arrow_schema::types::PG_EPOCH_MICROS;
use wal2arrow_schema::{Decoder, Lsn, Message as WireMessage, PluginOptions};
use wal2arrow_wal2json::{Catalog as _, JsonDecoder, Output};

use crate::catalog::Catalog;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::event::{
    ChangeBatch, Event, LogicalMessage, RawFrame, TruncateEvent, TxnBegin, TxnCommit,
};
use crate::plugin::{OutputPlugin, PLUGIN_NAME};
use crate::protocol::conn::{Connection, db_error, malformed};
use crate::protocol::frame::Frame;
use crate::replication::ReplicationClient;
use crate::slots::resolve_slot;
use crate::streamed::{InProgress, StreamedStats, Streams};

/// How a stream's payloads are decoded.
#[derive(Debug)]
pub(crate) enum Format {
    Wal2Arrow(Decoder),
    Wal2Json(Box<JsonSession>),
}

#[derive(Debug)]
pub(crate) struct JsonSession {
    decoder: JsonDecoder,
    catalog: Catalog,
    out: Vec<Output>,
}

/// Default interval between unsolicited standby status updates.
pub const DEFAULT_STATUS_INTERVAL: Duration = Duration::from_secs(10);

/// Acknowledges positions of a stream, from any task: the stream reports the highest one to
/// the server as flushed, and a restarted stream resumes after it.
#[derive(Clone, Debug, Default)]
pub struct AckHandle(Arc<AtomicU64>);

impl AckHandle {
    /// A handle whose acknowledged position is `start`, for a stream that is not open yet
    /// (see [`ChangeStream::set_ack_handle`]).
    pub fn new(start: Lsn) -> AckHandle {
        AckHandle(Arc::new(AtomicU64::new(start.0)))
    }

    /// Acknowledges everything up to `lsn`. Positions never move back.
    pub fn ack(&self, lsn: Lsn) {
        self.0.fetch_max(lsn.0, Ordering::SeqCst);
    }

    /// The highest position acknowledged.
    pub fn acknowledged(&self) -> Lsn {
        Lsn(self.0.load(Ordering::SeqCst))
    }
}

#[derive(Debug)]
struct OpenTxn {
    begin: TxnBegin,
    origin: Option<Arc<str>>,
    /// Batches, truncates and transactional messages so far.
    events: u32,
}

/// A running logical replication stream of wal2arrow messages (or of wal2json's, decoded into
/// the same events).
#[derive(Debug)]
pub struct ChangeStream {
    conn: Connection,
    format: Format,
    /// Messages the wal2json decoder produced and not yet delivered.
    pending: VecDeque<Output>,
    /// Messages of a wal2arrow Bundle not yet delivered, with the payload slices they came in.
    bundled: VecDeque<(WireMessage, Buffer)>,
    /// Reused for decoding a payload into its messages.
    decoded: Vec<(WireMessage, Buffer)>,
    /// A wal2json payload whose decoding waits on the catalog (kept across cancellation).
    inflight: Option<(Buffer, Lsn)>,
    received: Lsn,
    acked: AckHandle,
    /// Where acknowledgements must reach before the stream may confirm on its own: past the
    /// last delivered commit or non-transactional message.
    delivered_through: Lsn,
    heartbeat_prefix: Option<String>,
    server_wal_end: Lsn,
    /// The highest position a keepalive reported.
    keepalive_position: Lsn,
    /// Where the server position is published as it advances (see
    /// [`set_position_out`](Self::set_position_out)).
    position_out: Option<Arc<AtomicU64>>,
    status_interval: Duration,
    next_status: Instant,
    txn: Option<OpenTxn>,
    /// Transactions streamed before their commit.
    streams: Box<Streams>,
    done: bool,
    received_bytes: u64,
}

/// What [`ChangeStream::next_step`] yields.
#[derive(Debug)]
pub enum Step {
    /// An event.
    Event(Event),
    /// A keepalive moved the server's position here: every event before it was yielded.
    Position(Lsn),
}

impl ChangeStream {
    /// A stream of wal2arrow messages on a connection that `START_REPLICATION` switched to
    /// CopyBoth, from `start`.
    pub(crate) fn new(conn: Connection, start: Lsn) -> ChangeStream {
        ChangeStream {
            conn,
            format: Format::Wal2Arrow(Decoder::new()),
            pending: VecDeque::new(),
            bundled: VecDeque::new(),
            decoded: Vec::new(),
            inflight: None,
            received: start,
            acked: AckHandle(Arc::new(AtomicU64::new(start.0))),
            delivered_through: start,
            heartbeat_prefix: None,
            server_wal_end: start,
            keepalive_position: start,
            position_out: None,
            status_interval: DEFAULT_STATUS_INTERVAL,
            next_status: Instant::now() + DEFAULT_STATUS_INTERVAL,
            txn: None,
            streams: Box::default(),
            done: false,
            received_bytes: 0,
        }
    }

    /// Reads the stream's payloads as wal2json's, decoded by `decoder`, with `catalog`
    /// answering its questions.
    pub(crate) fn read_wal2json(&mut self, decoder: JsonDecoder, catalog: Catalog) {
        self.format = Format::Wal2Json(Box::new(JsonSession { decoder, catalog, out: Vec::new() }));
    }

    /// The server's end of WAL as of its last message: the difference to
    /// [`acknowledged`](Self::acknowledged) is the slot's backlog in bytes.
    pub fn server_wal_end(&self) -> Lsn {
        self.server_wal_end
    }

    /// Publishes the server's position ([`server_wal_end`](Self::server_wal_end)) into `cell`
    /// whenever a frame moves it, keepalives included: for progress and lag figures (it moves
    /// as a frame is read, before its events are returned).
    #[doc(hidden)]
    pub fn set_position_out(&mut self, cell: Arc<AtomicU64>) {
        cell.fetch_max(self.server_wal_end.0, Ordering::SeqCst);
        self.position_out = Some(cell);
    }

    fn server_position(&mut self, wal_end: Lsn) {
        self.server_wal_end = self.server_wal_end.max(wal_end);
        if let Some(cell) = &self.position_out {
            cell.fetch_max(wal_end.0, Ordering::SeqCst);
        }
    }

    /// Sets how often an unsolicited status update is sent (default 10 s).
    pub fn set_status_interval(&mut self, interval: Duration) {
        self.status_interval = interval;
        self.next_status = Instant::now() + interval;
    }

    /// The position acknowledged so far (sent to the server as *flush*).
    pub fn acknowledged(&self) -> Lsn {
        self.acked.acknowledged()
    }

    /// A handle to acknowledge positions from another task.
    pub fn ack_handle(&self) -> AckHandle {
        self.acked.clone()
    }

    /// Makes the stream report (and auto-advance) `handle` instead of its own: several
    /// streams, one after another, can then share one acknowledged position.
    pub fn set_ack_handle(&mut self, handle: AckHandle) {
        handle.ack(self.acked.acknowledged());
        self.acked = handle;
    }

    /// Logical messages with this prefix (non-transactional ones, as from the heartbeat) are
    /// not delivered: they only let the stream confirm its position while caught up.
    pub fn set_heartbeat_prefix(&mut self, prefix: Option<String>) {
        self.heartbeat_prefix = prefix;
    }

    /// Whether every delivered transaction and message has been acknowledged and no
    /// transaction is open: the stream may then confirm positions on its own. (A streamed
    /// transaction still in progress does not count: its commit lies ahead of any position
    /// the server reports now, so it is sent again, whole, after a restart from there.)
    pub fn caught_up(&self) -> bool {
        self.txn.is_none()
            && self.streams.idle()
            && self.acked.acknowledged() >= self.delivered_through
    }

    /// What the stream does with transactions the server streams before they commit (with the
    /// `streaming` plugin option): by default they are kept (memory, then spill files) and
    /// handed on at commit. Set before the first event.
    pub fn set_in_progress(&mut self, mode: InProgress) {
        self.streams.set_mode(mode);
    }

    /// Figures on the transactions streamed before their commit.
    pub fn streamed_stats(&self) -> StreamedStats {
        self.streams.stats()
    }

    /// How many payloads the decoder had to copy for alignment (zero when zero-copy holds;
    /// always zero for wal2json).
    pub fn realigned_payloads(&self) -> u64 {
        match &self.format {
            Format::Wal2Arrow(d) => d.realigned_payloads(),
            Format::Wal2Json(_) => 0,
        }
    }

    /// The plugin whose output this stream decodes.
    pub fn output_plugin(&self) -> OutputPlugin {
        match &self.format {
            Format::Wal2Arrow(_) => OutputPlugin::Wal2Arrow,
            Format::Wal2Json(_) => OutputPlugin::Wal2Json,
        }
    }

    /// Acknowledges everything up to `lsn` (normally a [`TxnCommit::end_lsn`]) as durably
    /// handled. The server hears of it with the next status update; positions never move
    /// back.
    pub fn ack(&mut self, lsn: Lsn) {
        self.acked.ack(lsn);
    }

    /// The next event, or `None` once the server ended the stream.
    ///
    /// Cancel safety: this method is cancel safe. A call dropped in `select!` loses no data;
    /// the next call continues where it stopped.
    ///
    /// # Errors
    ///
    /// The server's errors (a plugin ERROR ends the stream), connection failures, and
    /// [`Error::Wire`] for a message that cannot be decoded.
    pub async fn next_event(&mut self) -> Result<Option<Event>> {
        loop {
            match self.next_step().await? {
                Some(Step::Event(event)) => return Ok(Some(event)),
                Some(Step::Position(_)) => {}
                None => return Ok(None),
            }
        }
    }

    /// The next event, or the server's position when a keepalive moved it: every event of
    /// the data before that position has been returned by then (the walsender sends a
    /// keepalive's position only after everything before it). Cancel safe, as
    /// [`next_event`](Self::next_event).
    pub async fn next_step(&mut self) -> Result<Option<Step>> {
        let step = self.next_step_inner().await;
        self.locate(step)
    }

    /// A protocol error, with the last WAL position received before it: bytes the protocol
    /// does not allow end the stream with a definite [`Error::Protocol`] naming that position
    /// (reconnecting would only receive them again).
    fn locate<T>(&mut self, result: Result<T>) -> Result<T> {
        match result {
            Err(Error::Protocol { message, after: None }) => {
                self.done = true;
                self.pending.clear();
                self.bundled.clear();
                Err(Error::Protocol { message, after: Some(self.server_wal_end) })
            }
            other => other,
        }
    }

    async fn next_step_inner(&mut self) -> Result<Option<Step>> {
        if self.done && self.pending.is_empty() && self.bundled.is_empty() {
            return Ok(None);
        }
        loop {
            if let Some(event) = self.streams.next_released()? {
                self.delivered(&event);
                return Ok(Some(Step::Event(event)));
            }
            if let Some((message, payload)) = self.bundled.pop_front() {
                let bytes = payload.len();
                if let Some(event) = self.deliver(message, payload, bytes)? {
                    return Ok(Some(Step::Event(event)));
                }
                continue;
            }
            if let Some(output) = self.pending.pop_front() {
                let payload = Buffer::from_vec(Vec::<u8>::new());
                if let Some(event) = self.deliver(output.message, payload, output.source_bytes)? {
                    return Ok(Some(Step::Event(event)));
                }
                continue;
            }
            if let Some((payload, lsn)) = self.inflight.clone() {
                self.decode_json(&payload, lsn).await?;
                self.inflight = None;
                continue;
            }
            let Some(frame) = self.read_frame().await? else { return Ok(None) };
            match frame {
                Frame::XLogData { wal_start, payload, .. } => {
                    let Format::Wal2Arrow(decoder) = &mut self.format else {
                        self.inflight = Some((payload, wal_start));
                        continue;
                    };
                    // One message, or a Bundle of a transaction's messages.
                    let decoded = decoder.decode_into(&payload, &mut self.decoded);
                    self.bundled.extend(self.decoded.drain(..));
                    decoded.map_err(|source| Error::Wire { lsn: wal_start, source })?;
                }
                Frame::Keepalive { wal_end, reply } => {
                    if self.caught_up() {
                        self.acked.ack(wal_end);
                    }
                    let moved = wal_end > self.keepalive_position;
                    self.keepalive_position = self.keepalive_position.max(wal_end);
                    if reply {
                        self.send_status(false).await?;
                    }
                    if moved {
                        return Ok(Some(Step::Position(wal_end)));
                    }
                }
                _ => unreachable!("read_frame returns data and keepalives only"),
            }
        }
    }

    /// The next frame, undecoded: for plugins other than wal2arrow and wal2json (the
    /// benchmarks read pgoutput and test_decoding with it). Keepalives that ask for a reply
    /// are answered, and status updates go out on the timer, reporting
    /// [`acknowledged`](Self::acknowledged) as flushed. `None` once the server ended the
    /// stream.
    ///
    /// Cancel safety: cancel safe, as [`next_event`](Self::next_event).
    ///
    /// # Errors
    ///
    /// The server's errors and connection failures.
    pub async fn next_raw(&mut self) -> Result<Option<RawFrame>> {
        let frame = self.read_frame().await;
        Ok(match self.locate(frame)? {
            Some(Frame::XLogData { wal_start, wal_end, payload }) => {
                Some(RawFrame::Data { wal_start, wal_end, payload })
            }
            Some(Frame::Keepalive { wal_end, reply }) => {
                if reply {
                    self.send_status(false).await?;
                }
                Some(RawFrame::Keepalive { wal_end })
            }
            Some(_) => unreachable!("read_frame returns data and keepalives only"),
            None => None,
        })
    }

    /// Bytes of XLogData payload received so far.
    pub fn received_bytes(&self) -> u64 {
        self.received_bytes
    }

    /// Reads the next XLogData or keepalive frame (the caller answers a keepalive's reply
    /// request), handling everything else: status updates on the timer, notices, the end of
    /// the stream (`None`), errors.
    async fn read_frame(&mut self) -> Result<Option<Frame>> {
        loop {
            if self.done {
                return Ok(None);
            }
            if Instant::now() >= self.next_status {
                self.send_status(false).await?;
            }
            // Frames already read need no timer; wait (with the status timer) only for more.
            let frame = match self.conn.reader.try_frame()? {
                Some(frame) => frame,
                None => {
                    let due = self.next_status;
                    tokio::select! {
                        filled = self.conn.reader.fill(&mut self.conn.stream) => filled?,
                        () = tokio::time::sleep_until(due) => self.send_status(false).await?,
                    }
                    continue;
                }
            };
            match frame {
                Frame::XLogData { wal_end, ref payload, .. } => {
                    self.server_position(wal_end);
                    self.received_bytes += payload.len() as u64;
                    return Ok(Some(frame));
                }
                Frame::Keepalive { wal_end, .. } => {
                    self.server_position(wal_end);
                    return Ok(Some(frame));
                }
                Frame::CopyBoth => return Err(Error::protocol("second CopyBothResponse")),
                Frame::Other(mut bytes) => match Message::parse(&mut bytes).map_err(malformed)? {
                    Some(Message::ErrorResponse(e)) => {
                        self.done = true;
                        return Err(Error::Server(Box::new(db_error(e.fields()))));
                    }
                    Some(Message::NoticeResponse(n)) => {
                        let n = db_error(n.fields());
                        tracing::info!(code = %n.code, "server notice: {}", n.message);
                    }
                    Some(Message::CopyDone) => {
                        self.done = true;
                        self.conn.queue(|b| {
                            frontend::copy_done(b);
                            Ok(())
                        })?;
                        self.conn.flush().await?;
                        return Ok(None);
                    }
                    // A walsender that shuts down ends the stream with CommandComplete.
                    Some(Message::CommandComplete(_) | Message::ReadyForQuery(_)) => {
                        self.done = true;
                        return Ok(None);
                    }
                    Some(Message::ParameterStatus(_)) => {}
                    Some(_) => {
                        return Err(Error::protocol("unexpected message while streaming"));
                    }
                    None => return Err(Error::protocol("incomplete message")),
                },
            }
        }
    }

    /// Decodes a wal2json payload into [`pending`](Self::pending), asking the catalog what the
    /// decoder needs. Cancel safe: the payload stays in `inflight` until decoded, and what the
    /// decoder produced before a catalog question is already in `pending`.
    async fn decode_json(&mut self, payload: &Buffer, lsn: Lsn) -> Result<()> {
        let Format::Wal2Json(session) = &mut self.format else {
            return Err(Error::protocol("a wal2json payload on a wal2arrow stream"));
        };
        loop {
            let step = session.decoder.decode_at(payload.as_slice(), lsn, &mut session.out);
            self.pending.extend(session.out.drain(..));
            match step? {
                None => return Ok(()),
                Some(lookup) => {
                    session.catalog.answer(&lookup, &mut session.decoder.catalog).await?;
                }
            }
        }
    }

    /// Turns a decoded message into the event to return, if any: heartbeats are swallowed
    /// (and confirmed when caught up), and delivered positions recorded.
    fn deliver(
        &mut self,
        message: WireMessage,
        payload: Buffer,
        source_bytes: usize,
    ) -> Result<Option<Event>> {
        let Some(event) = self.event(message, payload, source_bytes)? else { return Ok(None) };
        if let Event::Message(m) = &event
            && !m.transactional
            && self.heartbeat_prefix.as_deref() == Some(m.prefix.as_str())
        {
            if self.caught_up() {
                self.acked.ack(m.ack_lsn());
            }
            return Ok(None);
        }
        self.delivered(&event);
        Ok(Some(event))
    }

    /// Records the positions an event hands on.
    fn delivered(&mut self, event: &Event) {
        match event {
            Event::Commit(c) | Event::StreamCommit(c) => {
                self.received = self.received.max(c.end_lsn);
                self.delivered_through = self.delivered_through.max(c.end_lsn)
            }
            Event::Message(m) if !m.transactional => {
                self.delivered_through = self.delivered_through.max(m.ack_lsn())
            }
            _ => {}
        }
    }

    /// Turns a decoded message into an event; `None` for messages that only update state (an
    /// Origin message).
    fn event(
        &mut self,
        message: WireMessage,
        payload: Buffer,
        source_bytes: usize,
    ) -> Result<Option<Event>> {
        fn open<'t>(txn: &'t mut Option<OpenTxn>, what: &str) -> Result<&'t mut OpenTxn> {
            txn.as_mut()
                .ok_or_else(|| Error::protocol(format!("{what} arrived outside a transaction")))
        }
        if self.streams.in_block() {
            return self.stream_event(message, payload, source_bytes);
        }
        Ok(Some(match message {
            WireMessage::StreamStart { xid, first } => {
                self.streams.start(xid, first)?;
                return Ok(None);
            }
            WireMessage::StreamAbort(a) => return self.streams.abort(a),
            WireMessage::StreamCommit(c) => return self.streams.commit(c),
            WireMessage::Subtransaction { .. } | WireMessage::StreamStop => {
                return Err(Error::protocol("a stream message outside a block"));
            }
            WireMessage::Begin(b) => {
                let begin = TxnBegin {
                    xid: b.xid,
                    commit_lsn: b.final_lsn,
                    commit_time_us: b.commit_time_us,
                    origin: None,
                };
                self.txn = Some(OpenTxn { begin: begin.clone(), origin: None, events: 0 });
                Event::Begin(begin)
            }
            WireMessage::Origin { name, .. } => {
                let txn = open(&mut self.txn, "an origin")?;
                txn.begin.origin = Some(name.clone());
                txn.origin = Some(name.into());
                return Ok(None);
            }
            WireMessage::Schema(relation) => Event::Relation(relation),
            WireMessage::Batch(b) => {
                let txn = open(&mut self.txn, "a batch")?;
                txn.events += 1;
                Event::Change(ChangeBatch {
                    relation: b.relation,
                    xid: txn.begin.xid,
                    commit_lsn: txn.begin.commit_lsn,
                    commit_time_us: txn.begin.commit_time_us,
                    origin: txn.origin.clone(),
                    ordinal: txn.events - 1,
                    batch: b.batch,
                    snapshot_chunk: None,
                    in_progress: None,
                    payload,
                    source_bytes,
                })
            }
            WireMessage::Truncate { relations, cascade, restart_identity } => {
                let txn = open(&mut self.txn, "a truncate")?;
                txn.events += 1;
                Event::Truncate(TruncateEvent {
                    relations,
                    cascade,
                    restart_identity,
                    xid: txn.begin.xid,
                    commit_lsn: txn.begin.commit_lsn,
                    ordinal: txn.events - 1,
                    in_progress: None,
                })
            }
            WireMessage::Message { transactional, lsn, prefix, content } => {
                let txn = if transactional {
                    let txn = open(&mut self.txn, "a transactional message")?;
                    txn.events += 1;
                    Some((txn.begin.xid, txn.begin.commit_lsn, txn.events - 1))
                } else {
                    None
                };
                Event::Message(LogicalMessage { transactional, lsn, prefix, content, txn })
            }
            WireMessage::Commit(c) => {
                let txn = self
                    .txn
                    .take()
                    .ok_or_else(|| Error::protocol("a commit arrived outside a transaction"))?;
                self.received = self.received.max(c.end_lsn);
                Event::Commit(TxnCommit {
                    xid: txn.begin.xid,
                    commit_lsn: c.commit_lsn,
                    end_lsn: c.end_lsn,
                    commit_time_us: c.commit_time_us,
                    batches: txn.events,
                })
            }
        }))
    }

    /// Turns a message inside a streamed transaction's block into the event to return, if any
    /// (with [`InProgress::Buffer`] the block's events are kept until the commit).
    fn stream_event(
        &mut self,
        message: WireMessage,
        payload: Buffer,
        source_bytes: usize,
    ) -> Result<Option<Event>> {
        match message {
            WireMessage::Schema(relation) => self.streams.relation(relation),
            WireMessage::Subtransaction { subxid } => {
                self.streams.subtransaction(subxid)?;
                Ok(None)
            }
            WireMessage::StreamStop => {
                self.streams.stop()?;
                Ok(None)
            }
            WireMessage::Batch(b) => self.streams.batch(b, payload, source_bytes),
            WireMessage::Truncate { relations, cascade, restart_identity } => {
                self.streams.truncate(TruncateEvent {
                    relations,
                    cascade,
                    restart_identity,
                    xid: 0,
                    commit_lsn: Lsn::INVALID,
                    ordinal: 0,
                    in_progress: None,
                })
            }
            WireMessage::Message { transactional: true, lsn, prefix, content } => self
                .streams
                .message(LogicalMessage { transactional: true, lsn, prefix, content, txn: None }),
            other => Err(Error::protocol(format!(
                "{} inside a streamed transaction's block",
                kind(&other)
            ))),
        }
    }

    /// Sends a standby status update now: received (*write*) and acknowledged (*flush*,
    /// *apply*) positions.
    ///
    /// # Errors
    ///
    /// When the connection fails.
    pub async fn send_status(&mut self, reply_requested: bool) -> Result<()> {
        let now_us =
            SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0)
                - PG_EPOCH_MICROS;
        let flushed = self.acked.acknowledged();
        let written = self.received.max(flushed);
        let mut body = Vec::with_capacity(34);
        body.push(b'r');
        body.extend_from_slice(&written.0.to_be_bytes());
        body.extend_from_slice(&flushed.0.to_be_bytes());
        body.extend_from_slice(&flushed.0.to_be_bytes());
        body.extend_from_slice(&now_us.to_be_bytes());
        body.push(u8::from(reply_requested));
        self.conn.queue(|b| {
            frontend::CopyData::new(&body[..])?.write(b);
            Ok(())
        })?;
        self.conn.flush().await?;
        self.next_status = Instant::now() + self.status_interval;
        Ok(())
    }

    /// Sends a final status update and ends the stream cleanly (CopyDone, Terminate).
    ///
    /// # Errors
    ///
    /// When the connection fails; the server may already be gone.
    pub async fn close(mut self) -> Result<()> {
        self.send_status(false).await?;
        if !self.done {
            self.conn.queue(|b| {
                frontend::copy_done(b);
                Ok(())
            })?;
        }
        self.conn.queue(|b| {
            frontend::terminate(b);
            Ok(())
        })?;
        self.conn.flush().await
    }
}

/// A message's kind, for errors.
fn kind(message: &WireMessage) -> &'static str {
    match message {
        WireMessage::Begin(_) => "a begin",
        WireMessage::Origin { .. } => "an origin",
        WireMessage::Schema(_) => "a schema",
        WireMessage::Batch(_) => "a batch",
        WireMessage::Truncate { .. } => "a truncate",
        WireMessage::Message { transactional: false, .. } => "a non-transactional message",
        WireMessage::Message { .. } => "a message",
        WireMessage::Commit(_) => "a commit",
        WireMessage::StreamStart { .. } => "a stream start",
        WireMessage::Subtransaction { .. } => "a subtransaction message",
        WireMessage::StreamStop => "a stream stop",
        WireMessage::StreamAbort(_) => "a stream abort",
        WireMessage::StreamCommit(_) => "a stream commit",
    }
}

/// How to open a [`ChangeStream`] with [`open`].
#[derive(Clone, Debug)]
pub struct StreamOptions {
    /// Slot name.
    pub slot: String,
    /// Create the slot if it does not exist (default true).
    pub create_slot: bool,
    /// Where to start; `Lsn::INVALID` (default) resumes from the slot's `confirmed_flush_lsn`.
    pub start_lsn: Lsn,
    /// Options for the plugin.
    pub plugin: PluginOptions,
}

impl StreamOptions {
    /// Options for `slot` with defaults otherwise.
    pub fn new(slot: impl Into<String>) -> StreamOptions {
        StreamOptions {
            slot: slot.into(),
            create_slot: true,
            start_lsn: Lsn::INVALID,
            plugin: PluginOptions::default(),
        }
    }
}

/// Opens a wal2arrow change stream: looks the slot up, creates it if it is missing (and
/// allowed to), refuses a slot of another plugin or database, and starts replication.
///
/// # Errors
///
/// [`Error::Slot`] for a slot that cannot be used as asked; connection, authentication and
/// server errors otherwise.
pub async fn open(config: &Config, options: &StreamOptions) -> Result<ChangeStream> {
    let sql = crate::sql::sql_client(config).await?;
    let allowed = [OutputPlugin::Wal2Arrow];
    let resolution = resolve_slot(&sql, &options.slot, config.dbname(), &allowed).await?;
    let mut repl = ReplicationClient::connect(config).await?;
    match resolution {
        crate::slots::SlotResolution::Missing if options.create_slot => {
            let created = repl.create_slot(&options.slot, PLUGIN_NAME, false).await?;
            tracing::info!(slot = %created.name, lsn = %created.consistent_point, "created replication slot");
        }
        crate::slots::SlotResolution::Missing => {
            return Err(crate::slots::SlotProblem::Missing {
                name: options.slot.clone(),
                plugin: OutputPlugin::Wal2Arrow,
            }
            .into());
        }
        crate::slots::SlotResolution::Unusable(problem) => return Err(problem.into()),
        crate::slots::SlotResolution::Usable(..) => {}
    }
    repl.start(&options.slot, options.start_lsn, &options.plugin).await
}
