//! The JSON lines sink: one JSON object per line and event, in the event shape of the
//! original wal2json connector — for debugging, and for tools that want JSON:
//!
//! ```text
//! {"event_type":"begin","transaction_id":731,"lsn":"0/16B3F48","timestamp":"2024-05-06T07:08:09.123456Z"}
//! {"event_type":"insert","schema":"public","table":"users","data":{"id":1,"name":"Alice"},"lsn":"0/16B3E00","commit_lsn":"0/16B3F48","ordinal":0,"transaction_id":731,"timestamp":"…","origin":null}
//! {"event_type":"update","schema":"public","table":"users","data":{…},"old_data":{…},"key_data":{"id":1},…}
//! {"event_type":"delete","schema":"public","table":"users","key_data":{"id":1},"old_data":{…},…}
//! {"event_type":"truncate","schema":"public","table":"users",…}
//! {"event_type":"message","message_prefix":"app","message_content":"hello","transactional":false,"lsn":"0/16B4000"}
//! {"event_type":"commit","transaction_id":731,"lsn":"0/16B3F48","end_lsn":"0/16B3F78","timestamp":"…"}
//! ```
//!
//! `data` is the new row, `old_data` the old row or key PostgreSQL logged (updates that
//! changed the key, `REPLICA IDENTITY FULL`), `key_data` the primary key's values (the replica
//! identity's, without one). Columns whose value the change does not carry (`_missing`) are left
//! out of `data`/`old_data` and listed in `"missing"`. Numbers are JSON numbers (NaN and
//! infinities as strings), `numeric` exact as strings, `bytea` as `"\x…"` hex, timestamps
//! in ISO 8601, arrays as JSON arrays. Message content is UTF-8 text, or `\x` hex when it is
//! not. At-least-once (see [`super`]).

use std::fmt::Write as _;
use std::io::{BufWriter, Write};
use std::time::Duration;

use arrow_array::cast::AsArray;
use arrow_array::types::UInt8Type;
use arrow_array::{Array, ArrayRef};
use arrow_cast::display::{ArrayFormatter, FormatOptions};
use arrow_schema::DataType;
use tokio::time::Instant;

use super::{Output, Sink};
use crate::error::Result;
use crate::stream::{ChangeBatch, Event};

const FLUSH_INTERVAL: Duration = Duration::from_secs(1);

/// The JSON lines sink.
#[derive(Debug)]
pub struct JsonLinesSink {
    out: BufWriter<Output>,
    line: String,
    dirty_since: Option<Instant>,
}

impl JsonLinesSink {
    /// A sink writing to `out`.
    pub fn new(out: Output) -> JsonLinesSink {
        JsonLinesSink {
            out: BufWriter::with_capacity(1 << 16, out),
            line: String::new(),
            dirty_since: None,
        }
    }

    fn emit(&mut self) -> Result<()> {
        self.line.push('\n');
        self.out.write_all(self.line.as_bytes())?;
        self.line.clear();
        self.dirty_since.get_or_insert_with(Instant::now);
        Ok(())
    }

    fn change(&mut self, c: &ChangeBatch) -> Result<()> {
        let batch = &c.batch;
        let n = c.relation.table_columns();
        let schema = batch.schema();
        let ops = batch.column(n).as_dictionary::<UInt8Type>();
        let op_names = ops.values().as_string::<i32>();
        let lsn_col = batch.column_by_name(wal2arrow_schema::meta::LSN_COLUMN);
        let missing = batch.column(batch.num_columns() - 1).as_list::<i32>();
        let options = FormatOptions::default().with_null("null");
        let renderers: Vec<Renderer<'_>> = (0..n)
            .map(|i| Renderer::new(batch.column(i), &options))
            .collect::<std::result::Result<_, _>>()?;
        // The primary key, or without one the replica identity's columns.
        let key_names = if c.relation.primary_key.is_empty() {
            &c.relation.identity_key
        } else {
            &c.relation.primary_key
        };
        let key: Vec<usize> = key_names
            .iter()
            .filter_map(|k| schema.fields()[..n].iter().position(|f| f.name() == k))
            .collect();
        let missing_names = |row: usize| -> Vec<String> {
            if missing.is_null(row) {
                return Vec::new();
            }
            let v = missing.value(row);
            v.as_string::<i32>().iter().flatten().map(str::to_owned).collect()
        };
        let object = |row: usize, only: Option<&[usize]>, out: &mut String| {
            let skip = missing_names(row);
            out.push('{');
            let mut first = true;
            for (i, field) in schema.fields()[..n].iter().enumerate() {
                if only.is_some_and(|o| !o.contains(&i)) || skip.iter().any(|m| m == field.name()) {
                    continue;
                }
                if !first {
                    out.push(',');
                }
                first = false;
                json_string(field.name(), out);
                out.push(':');
                renderers[i].write(row, out);
            }
            out.push('}');
        };
        let mut row = 0;
        while row < batch.num_rows() {
            let op = op_names.value(ops.keys().value(row) as usize);
            // An update_before row belongs to the update that follows it.
            let (event, old, new) = match op {
                "update_before" if row + 1 < batch.num_rows() => {
                    ("update", Some(row), Some(row + 1))
                }
                "update" => ("update", None, Some(row)),
                "delete" => ("delete", Some(row), None),
                _ => ("insert", None, Some(row)),
            };
            let at = new.or(old).expect("one image");
            self.line.push_str("{\"event_type\":\"");
            self.line.push_str(event);
            self.line.push_str("\",\"schema\":");
            json_string(&c.relation.namespace, &mut self.line);
            self.line.push_str(",\"table\":");
            json_string(&c.relation.name, &mut self.line);
            if let Some(r) = new {
                self.line.push_str(",\"data\":");
                object(r, None, &mut self.line);
            }
            if let Some(r) = old {
                self.line.push_str(",\"old_data\":");
                object(r, None, &mut self.line);
            }
            if !key.is_empty() {
                self.line.push_str(",\"key_data\":");
                object(old.unwrap_or(at), Some(&key), &mut self.line);
            }
            let gone: Vec<String> =
                old.into_iter().chain(new).flat_map(missing_names).collect::<Vec<_>>();
            if !gone.is_empty() {
                self.line.push_str(",\"missing\":[");
                for (i, m) in gone.iter().enumerate() {
                    if i > 0 {
                        self.line.push(',');
                    }
                    json_string(m, &mut self.line);
                }
                self.line.push(']');
            }
            if let Some(lsns) = lsn_col {
                let lsn = lsns.as_primitive::<arrow_array::types::UInt64Type>().value(at);
                let _ = write!(self.line, ",\"lsn\":\"{}\"", wal2arrow_schema::Lsn(lsn));
            }
            let _ = write!(
                self.line,
                ",\"commit_lsn\":\"{}\",\"ordinal\":{},\"transaction_id\":{},\"timestamp\":\"{}\",\"origin\":",
                c.commit_lsn,
                c.ordinal,
                c.xid,
                iso_time(c.commit_time_us)
            );
            match &c.origin {
                Some(o) => json_string(o, &mut self.line),
                None => self.line.push_str("null"),
            }
            self.line.push('}');
            self.emit()?;
            row = new.unwrap_or(at) + 1;
        }
        Ok(())
    }
}

impl Sink for JsonLinesSink {
    fn write(&mut self, event: &Event) -> Result<()> {
        match event {
            Event::Begin(b) => {
                let _ = write!(
                    self.line,
                    "{{\"event_type\":\"begin\",\"transaction_id\":{},\"lsn\":\"{}\",\"timestamp\":\"{}\"}}",
                    b.xid,
                    b.commit_lsn,
                    iso_time(b.commit_time_us)
                );
                self.emit()
            }
            Event::Change(c) => self.change(c),
            Event::Truncate(t) => {
                for r in &t.relations {
                    self.line.push_str("{\"event_type\":\"truncate\",\"schema\":");
                    json_string(&r.namespace, &mut self.line);
                    self.line.push_str(",\"table\":");
                    json_string(&r.name, &mut self.line);
                    let flag = |f: Option<bool>| f.map_or("null".to_owned(), |b| b.to_string());
                    let _ = write!(
                        self.line,
                        ",\"cascade\":{},\"restart_identity\":{},\"commit_lsn\":\"{}\",\"ordinal\":{},\"transaction_id\":{}}}",
                        flag(t.cascade),
                        flag(t.restart_identity),
                        t.commit_lsn,
                        t.ordinal,
                        t.xid
                    );
                    self.emit()?;
                }
                Ok(())
            }
            Event::Message(m) => {
                self.line.push_str("{\"event_type\":\"message\",\"message_prefix\":");
                json_string(&m.prefix, &mut self.line);
                self.line.push_str(",\"message_content\":");
                match std::str::from_utf8(m.content.as_slice()) {
                    Ok(text) => json_string(text, &mut self.line),
                    Err(_) => json_string(&hex(m.content.as_slice()), &mut self.line),
                }
                let _ = write!(
                    self.line,
                    ",\"transactional\":{},\"lsn\":\"{}\"",
                    m.transactional, m.lsn
                );
                if let Some((xid, commit_lsn, ordinal)) = m.txn {
                    let _ = write!(
                        self.line,
                        ",\"commit_lsn\":\"{commit_lsn}\",\"ordinal\":{ordinal},\"transaction_id\":{xid}"
                    );
                }
                self.line.push('}');
                self.emit()
            }
            Event::Commit(c) => {
                let _ = write!(
                    self.line,
                    "{{\"event_type\":\"commit\",\"transaction_id\":{},\"lsn\":\"{}\",\"end_lsn\":\"{}\",\"timestamp\":\"{}\"}}",
                    c.xid,
                    c.commit_lsn,
                    c.end_lsn,
                    iso_time(c.commit_time_us)
                );
                self.emit()
            }
            _ => Ok(()),
        }
    }

    fn wants_flush(&self) -> bool {
        self.dirty_since.is_some_and(|t| t.elapsed() >= FLUSH_INTERVAL)
    }

    fn flush(&mut self) -> Result<()> {
        self.out.flush()?;
        self.out.get_mut().sync()?;
        self.dirty_since = None;
        Ok(())
    }

    fn rollback(&mut self) -> Result<bool> {
        Ok(false)
    }
}

impl Drop for JsonLinesSink {
    fn drop(&mut self) {
        let _ = self.out.flush();
    }
}

/// Writes one column's values as JSON.
enum Renderer<'a> {
    /// Integers, floats (finite), booleans: their text is JSON.
    Plain(&'a dyn Array, ArrayFormatter<'a>),
    /// Everything shown as a JSON string.
    Text(&'a dyn Array, ArrayFormatter<'a>),
    /// Lists, as JSON arrays of their items.
    List(&'a arrow_array::ListArray, FormatOptions<'a>),
    /// Binary, as `\x` hex strings.
    Binary(&'a dyn Array),
}

impl<'a> Renderer<'a> {
    fn new(
        array: &'a ArrayRef,
        options: &FormatOptions<'a>,
    ) -> std::result::Result<Self, arrow_schema::ArrowError> {
        Ok(match array.data_type() {
            DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt32
            | DataType::UInt64
            | DataType::Boolean
            | DataType::Float32
            | DataType::Float64 => {
                Renderer::Plain(array.as_ref(), ArrayFormatter::try_new(array.as_ref(), options)?)
            }
            DataType::List(_) => Renderer::List(array.as_list::<i32>(), options.clone()),
            DataType::Binary => Renderer::Binary(array.as_ref()),
            _ => Renderer::Text(array.as_ref(), ArrayFormatter::try_new(array.as_ref(), options)?),
        })
    }

    fn write(&self, row: usize, out: &mut String) {
        match self {
            Renderer::Plain(a, f) => {
                if a.is_null(row) {
                    out.push_str("null");
                    return;
                }
                let text = f.value(row).to_string();
                if matches!(text.as_str(), "NaN" | "inf" | "-inf") {
                    json_string(&text, out);
                } else {
                    out.push_str(&text);
                }
            }
            Renderer::Text(a, f) => {
                if a.is_null(row) {
                    out.push_str("null");
                } else {
                    json_string(&f.value(row).to_string(), out);
                }
            }
            Renderer::Binary(a) => {
                if a.is_null(row) {
                    out.push_str("null");
                } else {
                    json_string(&hex(a.as_binary::<i32>().value(row)), out);
                }
            }
            Renderer::List(a, options) => {
                if a.is_null(row) {
                    out.push_str("null");
                    return;
                }
                let items = a.value(row);
                match Renderer::new(&items, options) {
                    Ok(r) => {
                        out.push('[');
                        for i in 0..items.len() {
                            if i > 0 {
                                out.push(',');
                            }
                            r.write(i, out);
                        }
                        out.push(']');
                    }
                    Err(_) => out.push_str("null"),
                }
            }
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(2 + 2 * bytes.len());
    s.push_str("\\x");
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Microseconds since 1970 as ISO 8601 UTC (`1970-01-01T00:00:00Z` for 0).
fn iso_time(us: i64) -> String {
    let array = arrow_array::TimestampMicrosecondArray::from(vec![us]).with_timezone("UTC");
    ArrayFormatter::try_new(&array, &FormatOptions::default())
        .map(|f| f.value(0).to_string())
        .unwrap_or_default()
}

fn json_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_times_and_bytes_are_valid_json() {
        let mut s = String::new();
        json_string("a\"b\\c\n\u{1}é", &mut s);
        assert_eq!(s, r#""a\"b\\c\n\u0001é""#);
        assert_eq!(hex(&[0, 255]), "\\x00ff");
        assert_eq!(iso_time(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso_time(1_714_979_289_123_456), "2024-05-06T07:08:09.123456Z");
    }
}
