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
//! not. Columns whose value was sent but could not be held (`_unrepresentable`: a `numeric`
//! NaN in a `Decimal128` column) are `null` in `data`/`old_data` and listed in
//! `"unrepresentable"`. An update's old and new image always make one line, even if a batch
//! ended between them.
//!
//! A file is appended to ([`JsonLinesSink::open`]): a restarted stream adds to what earlier
//! runs wrote. At-least-once (see [`super`]): a transaction written in part before a crash is
//! written again whole; `commit_lsn` and `ordinal` identify the copies.

use std::fmt::Write as _;
use std::io::{BufWriter, Write};
use std::time::Duration;

use arrow_array::cast::AsArray;
use arrow_array::types::UInt8Type;
use arrow_array::{Array, ArrayRef};
use arrow_cast::display::{ArrayFormatter, FormatOptions};
use arrow_schema::DataType;
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::{Output, Sink, json_string};
use wal2arrow_consumer::{ChangeBatch, Event};

const FLUSH_INTERVAL: Duration = Duration::from_secs(1);

/// The JSON lines sink.
#[derive(Debug)]
pub struct JsonLinesSink {
    out: BufWriter<Output>,
    line: String,
    dirty_since: Option<Instant>,
    /// An `update_before` row that ended a batch: the old half of an update whose new row
    /// starts the next batch of the table.
    before: Option<OldImage>,
}

/// The old image of an update, rendered, waiting for its new image.
#[derive(Debug)]
struct OldImage {
    table: String,
    namespace: String,
    name: String,
    /// The row's `lsn` and position fields, rendered.
    tail: String,
    old_data: String,
    key_data: Option<String>,
    missing: Vec<String>,
    unrepresentable: Vec<String>,
}

impl JsonLinesSink {
    /// A sink appending to the file at `path` (created if missing), or writing to standard
    /// output for `-`. A last line a crash left unfinished is cut off first, so the file stays
    /// one JSON object per line; the transaction it belonged to was not acknowledged and comes
    /// again.
    ///
    /// # Errors
    ///
    /// [`Error::Sink`] when the file cannot be opened or repaired, or exists and does not hold
    /// JSON lines of wal2arrow's (it is then left as it is: choose another path).
    pub fn open(path: &std::path::Path) -> Result<JsonLinesSink> {
        let mut out = Output::open(path)?;
        if let Some(file) = out.file() {
            repair(file).map_err(|e| Error::sink(path, "cannot append to", e))?;
        }
        Ok(JsonLinesSink::new(out))
    }

    /// A sink writing to `out` as it is.
    pub fn new(out: Output) -> JsonLinesSink {
        JsonLinesSink {
            out: BufWriter::with_capacity(1 << 16, out),
            line: String::new(),
            dirty_since: None,
            before: None,
        }
    }

    fn emit(&mut self) -> Result<()> {
        self.line.push('\n');
        if let Err(e) = self.out.write_all(self.line.as_bytes()) {
            return Err(self.out.get_ref().error("cannot write to", e));
        }
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
        let missing = batch.column(c.relation.missing_index()).as_list::<i32>();
        let unrepresentable = batch.column(c.relation.missing_index() + 1).as_list::<i32>();
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
        let names = |list: &arrow_array::ListArray, row: usize| -> Vec<String> {
            if list.is_null(row) || list.value_length(row) == 0 {
                return Vec::new();
            }
            let v = list.value(row);
            v.as_string::<i32>().iter().flatten().map(str::to_owned).collect()
        };
        // Each column's `"name":`, escaped once per batch.
        let keys: Vec<String> = schema.fields()[..n]
            .iter()
            .map(|f| {
                let mut k = String::with_capacity(f.name().len() + 3);
                json_string(f.name(), &mut k);
                k.push(':');
                k
            })
            .collect();
        let object = |row: usize, only: Option<&[usize]>, out: &mut String| {
            let skip = names(missing, row);
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
                out.push_str(&keys[i]);
                renderers[i].write(row, out);
            }
            out.push('}');
        };
        let rendered = |row: usize, only: Option<&[usize]>| {
            let mut out = String::new();
            object(row, only, &mut out);
            out
        };
        // The transaction, origin and position fields, the same for every row of the batch.
        let mut position_fields = String::new();
        position(&mut position_fields, c);
        let table = c.table();
        // An old image left by the previous batch pairs with this batch's first row if that
        // is its update; anything else means it had no new image (never sent so).
        let pairs = |before: &OldImage| {
            before.table == table
                && batch.num_rows() > 0
                && op_names.value(ops.keys().value(0) as usize) == "update"
        };
        if self.before.as_ref().is_some_and(|b| !pairs(b)) {
            self.orphan_before()?;
        }
        let mut row = 0;
        while row < batch.num_rows() {
            let op = op_names.value(ops.keys().value(row) as usize);
            // An update_before row belongs to the update that follows it, in this batch or
            // (when a batch ended between them) the next one.
            if op == "update_before" && row + 1 == batch.num_rows() {
                let mut tail = String::new();
                if let Some(lsns) = lsn_col {
                    let lsn = lsns.as_primitive::<arrow_array::types::UInt64Type>().value(row);
                    let _ = write!(tail, ",\"lsn\":\"{}\"", wal2arrow_schema::Lsn(lsn));
                }
                tail.push_str(&position_fields);
                self.before = Some(OldImage {
                    table: table.to_owned(),
                    namespace: c.relation.namespace.clone(),
                    name: c.relation.name.clone(),
                    tail,
                    old_data: rendered(row, None),
                    key_data: (!key.is_empty()).then(|| rendered(row, Some(&key))),
                    missing: names(missing, row),
                    unrepresentable: names(unrepresentable, row),
                });
                break;
            }
            let carried = if row == 0 && op == "update" { self.before.take() } else { None };
            let (event, old, new) = match op {
                "update_before" => ("update", Some(row), Some(row + 1)),
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
            } else if let Some(b) = &carried {
                self.line.push_str(",\"old_data\":");
                self.line.push_str(&b.old_data);
            }
            if let Some(b) = carried.as_ref().filter(|_| old.is_none())
                && let Some(k) = &b.key_data
            {
                self.line.push_str(",\"key_data\":");
                self.line.push_str(k);
            } else if !key.is_empty() {
                self.line.push_str(",\"key_data\":");
                object(old.unwrap_or(at), Some(&key), &mut self.line);
            }
            let mut gone: Vec<String> =
                carried.as_ref().map(|b| b.missing.clone()).unwrap_or_default();
            let mut lost: Vec<String> =
                carried.as_ref().map(|b| b.unrepresentable.clone()).unwrap_or_default();
            for r in old.into_iter().chain(new) {
                gone.extend(names(missing, r));
                lost.extend(names(unrepresentable, r));
            }
            name_list(&mut self.line, "missing", &gone);
            name_list(&mut self.line, "unrepresentable", &lost);
            if let Some(lsns) = lsn_col {
                let lsn = lsns.as_primitive::<arrow_array::types::UInt64Type>().value(at);
                let _ = write!(self.line, ",\"lsn\":\"{}\"", wal2arrow_schema::Lsn(lsn));
            }
            self.line.push_str(&position_fields);
            self.line.push('}');
            self.emit()?;
            row = new.unwrap_or(at) + 1;
        }
        Ok(())
    }

    /// Writes a waiting old image whose new image never came, as an update without `data`
    /// (the wire format never sends one so; this keeps the line rather than lose it).
    fn orphan_before(&mut self) -> Result<()> {
        let Some(b) = self.before.take() else { return Ok(()) };
        self.line.push_str("{\"event_type\":\"update\",\"schema\":");
        json_string(&b.namespace, &mut self.line);
        self.line.push_str(",\"table\":");
        json_string(&b.name, &mut self.line);
        self.line.push_str(",\"old_data\":");
        self.line.push_str(&b.old_data);
        if let Some(k) = &b.key_data {
            self.line.push_str(",\"key_data\":");
            self.line.push_str(k);
        }
        name_list(&mut self.line, "missing", &b.missing);
        name_list(&mut self.line, "unrepresentable", &b.unrepresentable);
        self.line.push_str(&b.tail);
        self.line.push('}');
        self.emit()
    }
}

/// The transaction, origin and position fields of a change line.
fn position(line: &mut String, c: &ChangeBatch) {
    let _ = write!(
        line,
        ",\"commit_lsn\":\"{}\",\"ordinal\":{},\"transaction_id\":{},\"timestamp\":\"{}\",\"origin\":",
        c.commit_lsn,
        c.ordinal,
        c.xid,
        iso_time(c.commit_time_us)
    );
    match &c.origin {
        Some(o) => json_string(o, line),
        None => line.push_str("null"),
    }
}

/// `,"key":[…]` for a non-empty list of names.
fn name_list(line: &mut String, key: &str, names: &[String]) {
    if names.is_empty() {
        return;
    }
    let _ = write!(line, ",\"{key}\":[");
    for (i, m) in names.iter().enumerate() {
        if i > 0 {
            line.push(',');
        }
        json_string(m, line);
    }
    line.push(']');
}

impl Sink for JsonLinesSink {
    fn write(&mut self, event: &Event) -> Result<()> {
        if !matches!(event, Event::Change(_) | Event::Relation(_)) {
            self.orphan_before()?;
        }
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
        if let Err(e) = self.out.flush() {
            return Err(self.out.get_ref().error("cannot write to", e));
        }
        if let Err(e) = self.out.get_mut().sync() {
            return Err(self.out.get_ref().error("cannot fsync", e));
        }
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

/// Makes an earlier run's file safe to append to: cuts an unfinished last line. A file that
/// does not start like this sink's output is refused, untouched.
fn repair(file: &mut std::fs::File) -> std::io::Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(());
    }
    let not_ours = || {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "the file exists and is not wal2arrow JSON lines output; choose another --out",
        )
    };
    const START: &[u8] = b"{\"event_type\":";
    let mut head = vec![0u8; START.len().min(len as usize)];
    file.seek(SeekFrom::Start(0))?;
    file.read_exact(&mut head)?;
    if !START.starts_with(&head) {
        return Err(not_ours());
    }
    // The end of the last complete line.
    let mut end = len;
    let mut chunk = vec![0u8; 64 * 1024];
    let keep = loop {
        let start = end.saturating_sub(chunk.len() as u64);
        let n = (end - start) as usize;
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut chunk[..n])?;
        if let Some(i) = chunk[..n].iter().rposition(|b| *b == b'\n') {
            break start + i as u64 + 1;
        }
        if start == 0 {
            break 0;
        }
        end = start;
    };
    if keep < len {
        tracing::warn!(
            bytes = len - keep,
            "the output ends in a line a crash left unfinished: cut off (its transaction comes again)"
        );
        file.set_len(keep)?;
        file.sync_data()?;
    }
    Ok(())
}

/// Writes one column's values as JSON, straight into the line.
enum Renderer<'a> {
    /// Integers, floats (finite), booleans: their text is JSON.
    Plain(&'a dyn Array, ArrayFormatter<'a>),
    /// Text, as JSON strings of its own bytes.
    Str(&'a arrow_array::StringArray),
    /// Everything else shown as a JSON string.
    Text(&'a dyn Array, ArrayFormatter<'a>),
    /// Lists, as JSON arrays of their items.
    List(&'a arrow_array::ListArray, FormatOptions<'a>),
    /// Binary, as `\x` hex strings.
    Binary(&'a arrow_array::BinaryArray),
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
            DataType::Utf8 => Renderer::Str(array.as_string::<i32>()),
            DataType::List(_) => Renderer::List(array.as_list::<i32>(), options.clone()),
            DataType::Binary => Renderer::Binary(array.as_binary::<i32>()),
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
                let start = out.len();
                let _ = write!(out, "{}", f.value(row));
                if matches!(&out[start..], "NaN" | "inf" | "-inf") {
                    let text = out.split_off(start);
                    json_string(&text, out);
                }
            }
            Renderer::Str(a) => {
                if a.is_null(row) {
                    out.push_str("null");
                } else {
                    json_string(a.value(row), out);
                }
            }
            Renderer::Text(a, f) => {
                if a.is_null(row) {
                    out.push_str("null");
                    return;
                }
                // Formatted in place; taken out and escaped only if it needs it (rare).
                out.push('"');
                let start = out.len();
                let _ = write!(out, "{}", f.value(row));
                if out[start..].bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
                    let text = out.split_off(start);
                    out.truncate(start - 1);
                    json_string(&text, out);
                } else {
                    out.push('"');
                }
            }
            Renderer::Binary(a) => {
                if a.is_null(row) {
                    out.push_str("null");
                } else {
                    // `"\x…"`: the backslash escaped, the hex digits need nothing.
                    out.push_str("\"\\\\x");
                    push_hex(a.value(row), out);
                    out.push('"');
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

/// Appends `bytes` as lowercase hex digits.
fn push_hex(bytes: &[u8], out: &mut String) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    out.reserve(2 * bytes.len());
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(2 + 2 * bytes.len());
    s.push_str("\\x");
    push_hex(bytes, &mut s);
    s
}

/// Microseconds since 1970 as ISO 8601 UTC (`1970-01-01T00:00:00Z` for 0).
fn iso_time(us: i64) -> String {
    let array = arrow_array::TimestampMicrosecondArray::from(vec![us]).with_timezone("UTC");
    ArrayFormatter::try_new(&array, &FormatOptions::default())
        .map(|f| f.value(0).to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use wal2arrow_schema::types::{ColumnDesc, oid};
    use wal2arrow_schema::{
        BatchEncoder, ChangeOp, ColumnBuilder, Lsn, PgKind, Relation, RelationDesc, ReplicaIdentity,
    };

    use super::*;

    fn desc() -> RelationDesc {
        let col = |name: &str| ColumnDesc {
            name: name.into(),
            kind: PgKind::from_type_oid(oid::INT8),
            type_name: "int8".into(),
            type_oid: oid::INT8,
            typmod: -1,
            not_null: false,
            generated: false,
        };
        RelationDesc {
            relid: 1,
            namespace: "public".into(),
            name: "t".into(),
            columns: vec![col("id"), col("v")],
            primary_key: vec!["id".into()],
            replica_identity: ReplicaIdentity::Default,
            identity_key: vec!["id".into()],
            with_lsn: true,
        }
    }

    fn relation() -> Arc<Relation> {
        Arc::new(Relation::from_desc(&desc()).unwrap())
    }

    /// A user batch of rows `(op, id, v)`; `v` None is missing (an old image's non-key).
    fn batch(rel: &Relation, rows: &[(ChangeOp, i64, Option<i64>)]) -> arrow_array::RecordBatch {
        let mut enc = BatchEncoder::new(&desc());
        for (i, (op, id, v)) in rows.iter().enumerate() {
            enc.start_row(*op, Lsn(100 + i as u64)).unwrap();
            let ColumnBuilder::Int64(b) = enc.column(0) else { panic!() };
            b.append_value(*id);
            match v {
                Some(v) => {
                    let ColumnBuilder::Int64(b) = enc.column(1) else { panic!() };
                    b.append_value(*v);
                }
                None => {
                    enc.column(1).append_null();
                    enc.mark_missing(1);
                }
            }
        }
        let w = enc.finish_batch().unwrap().unwrap();
        rel.user_batch(w.base_lsn, &w.batch, w.has_missing, w.has_unrepresentable).unwrap()
    }

    fn lines(path: &std::path::Path) -> Vec<String> {
        std::fs::read_to_string(path).unwrap().lines().map(str::to_owned).collect()
    }

    #[test]
    fn an_update_split_across_two_batches_is_still_one_update_line() {
        let dir = std::env::temp_dir().join(format!("w2a-jsonl-pair-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("out.jsonl");
        let rel = relation();
        let mut sink = JsonLinesSink::open(&path).unwrap();
        let first =
            batch(&rel, &[(ChangeOp::Insert, 1, Some(10)), (ChangeOp::UpdateBefore, 1, None)]);
        let second = batch(&rel, &[(ChangeOp::Update, 2, Some(11)), (ChangeOp::Delete, 3, None)]);
        for (i, b) in [first, second].into_iter().enumerate() {
            let c =
                wal2arrow_consumer::ChangeBatch::for_tests(Arc::clone(&rel), b, Lsn(500), i as u32);
            sink.write(&Event::Change(c)).unwrap();
        }
        sink.flush().unwrap();
        drop(sink);
        let l = lines(&path);
        assert_eq!(l.len(), 3, "{l:#?}");
        assert!(l[0].starts_with("{\"event_type\":\"insert\""), "{}", l[0]);
        assert!(l[1].starts_with("{\"event_type\":\"update\""), "{}", l[1]);
        assert!(l[1].contains("\"data\":{\"id\":2,\"v\":11}"), "{}", l[1]);
        assert!(l[1].contains("\"old_data\":{\"id\":1}"), "the old key is the update's: {}", l[1]);
        assert!(l[1].contains("\"key_data\":{\"id\":1}"), "{}", l[1]);
        assert!(l[1].contains("\"missing\":[\"v\"]"), "{}", l[1]);
        assert!(l[2].starts_with("{\"event_type\":\"delete\""), "{}", l[2]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn reopening_appends_after_cutting_an_unfinished_line_and_refuses_foreign_files() {
        let dir = std::env::temp_dir().join(format!("w2a-jsonl-repair-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("out.jsonl");
        let rel = relation();
        let mut sink = JsonLinesSink::open(&path).unwrap();
        let c = wal2arrow_consumer::ChangeBatch::for_tests(
            Arc::clone(&rel),
            batch(&rel, &[(ChangeOp::Insert, 1, Some(10))]),
            Lsn(500),
            0,
        );
        sink.write(&Event::Change(c.clone())).unwrap();
        sink.flush().unwrap();
        drop(sink);
        // A crash in the middle of the next line.
        let mut torn = std::fs::read(&path).unwrap();
        torn.extend_from_slice(b"{\"event_type\":\"ins");
        std::fs::write(&path, &torn).unwrap();
        let mut sink = JsonLinesSink::open(&path).unwrap();
        sink.write(&Event::Change(c)).unwrap();
        sink.flush().unwrap();
        drop(sink);
        let l = lines(&path);
        assert_eq!(l.len(), 2, "the first run's line kept, the torn one cut: {l:#?}");
        assert_eq!(l[0], l[1]);
        // Someone else's file is left alone.
        let foreign = dir.join("notes.txt");
        std::fs::write(&foreign, b"dear diary\n").unwrap();
        let e = JsonLinesSink::open(&foreign).unwrap_err();
        assert!(matches!(e, Error::Sink { .. }) && e.to_string().contains("choose another"), "{e}");
        assert_eq!(std::fs::read(&foreign).unwrap(), b"dear diary\n");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn values_render_in_place_and_escape_when_they_need_it() {
        let options = FormatOptions::default().with_null("null");
        let render = |array: ArrayRef| {
            let r = Renderer::new(&array, &options).unwrap();
            let mut out = String::from("x");
            for row in 0..array.len() {
                out.push(' ');
                r.write(row, &mut out);
            }
            out
        };
        let floats = arrow_array::Float64Array::from(vec![
            Some(1.5),
            Some(f64::NAN),
            Some(f64::INFINITY),
            Some(f64::NEG_INFINITY),
            None,
        ]);
        assert_eq!(render(Arc::new(floats)), r#"x 1.5 "NaN" "inf" "-inf" null"#);
        let text = arrow_array::StringArray::from(vec![Some("a\"b\n"), None, Some("é")]);
        assert_eq!(render(Arc::new(text)), r#"x "a\"b\n" null "é""#);
        // Formatted text (here a large string) is escaped only when it needs it.
        let large = arrow_array::LargeStringArray::from(vec!["plain", "q\"\\\u{1}"]);
        assert_eq!(render(Arc::new(large)), r#"x "plain" "q\"\\\u0001""#);
        let bytes = arrow_array::BinaryArray::from(vec![Some(&[0u8, 0xab][..]), None]);
        assert_eq!(render(Arc::new(bytes)), r#"x "\\x00ab" null"#);
    }

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
