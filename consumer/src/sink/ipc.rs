//! The Arrow IPC sink: one output (a file, or standard output for piping into other Arrow
//! tools) holding a sequence of Arrow IPC **stream segments**. A segment is an ordinary IPC
//! stream — schema, record batches, end-of-stream marker — and a new one starts whenever the
//! next batch has another schema: another table, or the same table after it changed. Each
//! segment's schema names its table in the metadata (`wal2arrow:schema`, `wal2arrow:table`;
//! `_truncates` and `_messages` for TRUNCATEs and logical messages).
//!
//! Read it with arrow-ipc's `StreamReader` in a loop — one reader per segment, until the
//! input is exhausted ([`read_segments`] does that). Batches carry the stream's columns plus
//! `_commit_lsn`, `_ordinal` and `_commit_time`; the output is at-least-once (see
//! [`super`]).

use std::io::{BufWriter, Read, Write};
use std::time::Duration;

use arrow_array::RecordBatch;
use arrow_ipc::writer::StreamWriter;
use arrow_schema::SchemaRef;
use tokio::time::Instant;

use super::{Output, Sink, message_batch, truncate_batch, with_position};
use crate::error::{Error, Result};
use crate::stream::Event;

/// Flush at least this often while there is data.
const FLUSH_INTERVAL: Duration = Duration::from_secs(1);

/// The Arrow IPC sink.
pub struct IpcSink {
    /// The segment being written, or the output between segments.
    segment: Option<(SchemaRef, StreamWriter<BufWriter<Output>>)>,
    idle: Option<BufWriter<Output>>,
    dirty_since: Option<Instant>,
}

impl std::fmt::Debug for IpcSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IpcSink")
            .field("segment", &self.segment.as_ref().map(|(s, _)| s.metadata().clone()))
            .finish()
    }
}

fn ipc_err(e: arrow_schema::ArrowError) -> Error {
    match e {
        arrow_schema::ArrowError::IoError(m, io) => {
            Error::Io(std::io::Error::new(io.kind(), format!("{m}: {io}")))
        }
        e => Error::Io(std::io::Error::other(e)),
    }
}

impl IpcSink {
    /// An IPC sink writing to `out`.
    pub fn new(out: Output) -> IpcSink {
        IpcSink {
            segment: None,
            idle: Some(BufWriter::with_capacity(1 << 20, out)),
            dirty_since: None,
        }
    }

    fn append(&mut self, batch: &RecordBatch) -> Result<()> {
        let schema = batch.schema();
        if self.segment.as_ref().is_some_and(|(s, _)| *s != schema) {
            self.end_segment()?;
        }
        if self.segment.is_none() {
            let out = self.idle.take().ok_or_else(|| Error::Protocol("IPC sink closed".into()))?;
            let writer = StreamWriter::try_new(out, &schema).map_err(ipc_err)?;
            self.segment = Some((schema, writer));
        }
        let (_, writer) = self.segment.as_mut().expect("started above");
        writer.write(batch).map_err(ipc_err)?;
        self.dirty_since.get_or_insert_with(Instant::now);
        Ok(())
    }

    fn end_segment(&mut self) -> Result<()> {
        if let Some((_, mut writer)) = self.segment.take() {
            writer.finish().map_err(ipc_err)?;
            self.idle = Some(writer.into_inner().map_err(ipc_err)?);
        }
        Ok(())
    }
}

impl Sink for IpcSink {
    fn write(&mut self, event: &Event) -> Result<()> {
        match event {
            Event::Change(c) => self.append(&with_position(c)?),
            Event::Truncate(t) => self.append(&truncate_batch(t)?),
            Event::Message(m) => self.append(&message_batch(m)?),
            _ => Ok(()),
        }
    }

    fn wants_flush(&self) -> bool {
        self.dirty_since.is_some_and(|t| t.elapsed() >= FLUSH_INTERVAL)
    }

    fn flush(&mut self) -> Result<()> {
        let out = match (&mut self.segment, &mut self.idle) {
            (Some((_, w)), _) => {
                w.flush().map_err(ipc_err)?;
                w.get_mut()
            }
            (None, Some(out)) => out,
            (None, None) => return Ok(()),
        };
        out.flush()?;
        out.get_mut().sync()?;
        self.dirty_since = None;
        Ok(())
    }

    fn rollback(&mut self) -> Result<bool> {
        Ok(false)
    }
}

impl Drop for IpcSink {
    fn drop(&mut self) {
        // Close the last segment so readers see a complete stream.
        if let Err(e) = self.end_segment().and_then(|()| match &mut self.idle {
            Some(out) => out.flush().map_err(Error::from),
            None => Ok(()),
        }) {
            tracing::warn!(error = %e, "could not end the last IPC segment");
        }
    }
}

/// Reads every segment of an IPC sink's output.
///
/// # Errors
///
/// I/O and IPC errors.
pub fn read_segments(mut input: impl Read) -> Result<Vec<RecordBatch>> {
    let mut bytes = Vec::new();
    input.read_to_end(&mut bytes)?;
    let mut cursor = std::io::Cursor::new(bytes);
    let mut out = Vec::new();
    while (cursor.position() as usize) < cursor.get_ref().len() {
        let reader =
            arrow_ipc::reader::StreamReader::try_new(&mut cursor, None).map_err(ipc_err)?;
        for batch in reader {
            out.push(batch.map_err(ipc_err)?);
        }
    }
    Ok(out)
}
