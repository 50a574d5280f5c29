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
//!
//! A file is appended to ([`IpcSink::open`]): a restarted stream starts a new segment after
//! what earlier runs wrote. A segment a crash cut short is repaired first: its last complete
//! message is kept and the segment ended there, so every segment stays readable.

use std::io::{BufWriter, Read, Write};
use std::time::Duration;

use arrow_array::RecordBatch;
use arrow_ipc::writer::StreamWriter;
use arrow_schema::SchemaRef;
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::{Output, Sink, message_batch, truncate_batch, with_position};
use wal2arrow_consumer::Event;

/// Flush at least this often while there is data.
const FLUSH_INTERVAL: Duration = Duration::from_secs(1);

/// The Arrow IPC sink.
pub struct IpcSink {
    path: std::path::PathBuf,
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

fn ipc_err(path: &std::path::Path, e: arrow_schema::ArrowError) -> Error {
    match e {
        arrow_schema::ArrowError::IoError(m, io) => Error::sink(
            path,
            "cannot write to",
            std::io::Error::new(io.kind(), format!("{m}: {io}")),
        ),
        e => Error::sink(path, "cannot encode Arrow IPC for", std::io::Error::other(e)),
    }
}

impl IpcSink {
    /// A sink appending to the file at `path` (created if missing), or writing to standard
    /// output for `-`. What an earlier run left is repaired first: a message a crash cut
    /// short is cut off, and a segment left open is ended, so that the new segment starts on
    /// a clean boundary and every earlier one reads back.
    ///
    /// # Errors
    ///
    /// [`Error::Sink`] when the file cannot be opened or repaired, or exists and is not an
    /// Arrow IPC stream (it is then left as it is: choose another path).
    pub fn open(path: &std::path::Path) -> Result<IpcSink> {
        let mut out = Output::open(path)?;
        if let Some(file) = out.file() {
            repair(file).map_err(|e| Error::sink(path, "cannot append to", e))?;
        }
        Ok(IpcSink::new(out))
    }

    /// An IPC sink writing to `out` as it is.
    pub fn new(out: Output) -> IpcSink {
        IpcSink {
            path: out.path().to_owned(),
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
            let out = self.idle.take().ok_or_else(|| {
                Error::sink(
                    &self.path,
                    "cannot write to",
                    std::io::Error::other("the sink is closed"),
                )
            })?;
            let writer = StreamWriter::try_new(out, &schema).map_err(|e| ipc_err(&self.path, e))?;
            self.segment = Some((schema, writer));
        }
        let (_, writer) = self.segment.as_mut().expect("started above");
        writer.write(batch).map_err(|e| ipc_err(&self.path, e))?;
        self.dirty_since.get_or_insert_with(Instant::now);
        Ok(())
    }

    fn end_segment(&mut self) -> Result<()> {
        if let Some((_, mut writer)) = self.segment.take() {
            writer.finish().map_err(|e| ipc_err(&self.path, e))?;
            self.idle = Some(writer.into_inner().map_err(|e| ipc_err(&self.path, e))?);
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
        let path = &self.path;
        let out = match (&mut self.segment, &mut self.idle) {
            (Some((_, w)), _) => {
                w.flush().map_err(|e| ipc_err(path, e))?;
                w.get_mut()
            }
            (None, Some(out)) => out,
            (None, None) => return Ok(()),
        };
        out.flush().map_err(|e| Error::sink(path, "cannot write to", e))?;
        out.get_mut().sync().map_err(|e| Error::sink(path, "cannot fsync", e))?;
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
        let path = self.path.clone();
        if let Err(e) = self.end_segment().and_then(|()| match &mut self.idle {
            Some(out) => out.flush().map_err(|e| Error::sink(&path, "cannot write to", e)),
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
    let input_path = std::path::Path::new("(input)");
    let mut bytes = Vec::new();
    input.read_to_end(&mut bytes).map_err(|e| Error::sink(input_path, "cannot read", e))?;
    let mut cursor = std::io::Cursor::new(bytes);
    let mut out = Vec::new();
    while (cursor.position() as usize) < cursor.get_ref().len() {
        let reader = arrow_ipc::reader::StreamReader::try_new(&mut cursor, None)
            .map_err(|e| ipc_err(input_path, e))?;
        for batch in reader {
            out.push(batch.map_err(|e| ipc_err(input_path, e))?);
        }
    }
    Ok(out)
}

/// The end-of-stream marker of an IPC stream.
const END_OF_STREAM: [u8; 8] = [0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0];

/// Makes an earlier run's file safe to append to: walks its IPC messages, cuts off a message a
/// crash left incomplete, and ends a segment left open. A file whose first bytes are not an
/// IPC message is refused, untouched.
fn repair(file: &mut std::fs::File) -> std::io::Result<()> {
    use std::io::{Seek, SeekFrom, Write as _};
    let len = file.metadata()?.len();
    let (mut at, mut open) = (0u64, false);
    let mut head = [0u8; 8];
    let mut meta = Vec::new();
    // The end of the last complete message.
    let good = loop {
        if at == len {
            break at;
        }
        file.seek(SeekFrom::Start(at))?;
        let n = (len - at).min(8) as usize;
        file.read_exact(&mut head[..n])?;
        if head[..n.min(4)].iter().any(|b| *b != 0xFF) {
            if at == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "the file exists and is not an Arrow IPC stream; choose another --out",
                ));
            }
            break at;
        }
        if n < 8 {
            break at;
        }
        let meta_len = u64::from(u32::from_le_bytes(head[4..].try_into().expect("4 bytes")));
        if meta_len == 0 {
            // End of stream: the segment is complete.
            at += 8;
            open = false;
            continue;
        }
        if at + 8 + meta_len > len {
            break at;
        }
        meta.resize(meta_len as usize, 0);
        file.read_exact(&mut meta)?;
        let Ok(message) = arrow_ipc::root_as_message(&meta) else { break at };
        let Ok(body) = u64::try_from(message.bodyLength()) else { break at };
        let end = at + 8 + meta_len + body;
        if end > len {
            break at;
        }
        if message.header_type() == arrow_ipc::MessageHeader::Schema {
            open = true;
        }
        at = end;
    };
    if good < len {
        tracing::warn!(
            bytes = len - good,
            "the output ends in an IPC message a crash left incomplete: cut off (its transaction \
             comes again)"
        );
        file.set_len(good)?;
    }
    if open {
        file.write_all(&END_OF_STREAM)?;
    }
    if good < len || open {
        file.sync_data()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::{Int64Array, RecordBatch};
    use arrow_schema::{DataType, Field, Schema};

    use super::*;

    fn batch(n: i64) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)]));
        RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![n; 3]))]).unwrap()
    }

    #[test]
    fn reopening_repairs_a_torn_segment_and_appends_a_new_one() {
        let dir = std::env::temp_dir().join(format!("w2a-ipc-repair-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("out.arrow");
        // A first run writes two batches, then "crashes" in the middle of a third: its
        // segment is never ended and its last message is cut short.
        let mut sink = IpcSink::open(&path).unwrap();
        sink.append(&batch(1)).unwrap();
        sink.append(&batch(2)).unwrap();
        sink.flush().unwrap();
        std::mem::forget(sink);
        let complete = std::fs::read(&path).unwrap();
        let mut third = Vec::new();
        {
            let mut w = StreamWriter::try_new(&mut third, &batch(3).schema()).unwrap();
            w.write(&batch(3)).unwrap();
        }
        let schema_len = {
            let mut only_schema = Vec::new();
            StreamWriter::try_new(&mut only_schema, &batch(3).schema()).unwrap();
            only_schema.len()
        };
        let mut torn = complete.clone();
        torn.extend_from_slice(&third[schema_len..third.len() - 10]);
        std::fs::write(&path, &torn).unwrap();
        assert!(read_segments(&torn[..]).is_err(), "as the crash left it, the file is unreadable");

        let mut sink = IpcSink::open(&path).unwrap();
        sink.append(&batch(4)).unwrap();
        sink.flush().unwrap();
        drop(sink);
        let back = read_segments(&std::fs::read(&path).unwrap()[..]).unwrap();
        let firsts: Vec<i64> = back
            .iter()
            .map(|b| b.column(0).as_any().downcast_ref::<Int64Array>().unwrap().value(0))
            .collect();
        assert_eq!(firsts, [1, 2, 4], "the complete batches kept, the torn one cut, one appended");
        assert!(std::fs::read(&path).unwrap().starts_with(&complete), "nothing before rewritten");

        // Someone else's file is left alone.
        let foreign = dir.join("notes.txt");
        std::fs::write(&foreign, b"abc").unwrap();
        let e = IpcSink::open(&foreign).unwrap_err();
        assert!(e.to_string().contains("not an Arrow IPC stream"), "{e}");
        assert_eq!(std::fs::read(&foreign).unwrap(), b"abc");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
