//! Snapshot rows: `COPY … TO STDOUT` text rows decoded into the batches a change stream carries.
//!
//! A snapshot reads a table's rows as they were at the slot's consistent point, with
//! `COPY (SELECT columns FROM ONLY table WHERE ctid range) TO STDOUT` in text format. Each
//! value arrives in its type's output-function text — the very text wal2json sends, under the
//! same session settings (`DateStyle=ISO`, `TimeZone=UTC`, …) — so the parsers of the wal2json
//! fallback ([`crate::text`]) turn it into the values the plugin reads from Datums, and a
//! [`BatchEncoder`] made from the table's catalog description builds the batches. A snapshot
//! row is therefore the same Arrow value as the INSERT of that row streamed by either plugin,
//! in a batch with the same schema and field metadata; its `_op` is
//! [`ChangeOp::Read`](wal2arrow_schema::ChangeOp::Read) and its `_lsn` the snapshot's.
//!
//! Snapshots read `COPY … (FORMAT binary)` ([`CopyEncoder::push_binary`]): the server's
//! binary send functions cost it less than the output functions, and for the types whose send
//! format is the value the plugin reads — integers, floats, `bool`, `money`, `oid`, text
//! types, `bytea`, `date`, `time`, `timestamp[tz]`, `uuid` — decoding is a byte copy. Every
//! other column is selected as `column::text` ([`CopyTable::select_list`]), whose binary form
//! is its output function's text, parsed as above: the binary send functions of `numeric`,
//! arrays, `interval` and the rest differ from the Datums the plugin reads, and the text
//! parsers already exist, are fuzzed and are tested value for value against the plugin.
//! Backfills read the text format ([`CopyEncoder::push_row`]).
//!
//! [`CopyTable`] describes one table (from a [`CatalogCache`], like the fallback's tables);
//! each worker copying part of it feeds rows to a [`CopyEncoder`] of its own.
//!
//! The text format ([PostgreSQL docs](https://www.postgresql.org/docs/current/sql-copy.html#id-1.9.3.55.9.2)):
//! one row per line, columns separated by a tab, `\N` for NULL, and backslash escapes
//! (`\b \f \n \r \t \v \\`, `\` with one to three octal digits, `\x` with one or two hex
//! digits; any other escaped character stands for itself).

use std::sync::Arc;

use arrow_array::RecordBatch;
use wal2arrow_schema::types::ColumnDesc;
use wal2arrow_schema::{
    BatchEncoder, ChangeOp, Lsn, PgKind, PluginOptions, Relation, RelationDesc, ReplicaIdentity,
    WireBatch,
};

use crate::{Appended, CatalogCache, Lookup, TableInfo, append_text_value};

/// A `COPY` row that cannot be decoded, or a table that cannot be described.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CopyError(pub String);

impl std::fmt::Display for CopyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CopyError {}

/// One table as a snapshot copies it: its description (exactly the one the fallback's
/// decoder makes from the catalog), and how each column's text is parsed.
#[derive(Debug)]
pub struct CopyTable {
    desc: RelationDesc,
    relation: Arc<Relation>,
    /// Per column: its kind and, for arrays, the element delimiter.
    plans: Vec<(PgKind, u8)>,
    /// Per column: how a binary `COPY` carries it.
    wire: Vec<Wire>,
    batch_rows: u32,
}

impl CopyTable {
    /// Describes `schema.table` from what `catalog` knows of it (`info`, the catalog's answer
    /// for the table).
    ///
    /// # Errors
    ///
    /// `Err(Ok(lookup))`: the catalog must answer `lookup` first (the types of the columns);
    /// answer it into `catalog` and call again. `Err(Err(e))`: the table's description cannot
    /// be made into an Arrow schema.
    pub fn from_catalog(
        catalog: &CatalogCache,
        info: &TableInfo,
        schema: &str,
        table: &str,
        options: &PluginOptions,
    ) -> Result<CopyTable, Result<Lookup, CopyError>> {
        let mut unknown: Vec<u32> = Vec::new();
        for c in &info.columns {
            if let Err(oid) = catalog.kind(c.type_oid, c.typmod, c.ndims, false)
                && !unknown.contains(&oid)
            {
                unknown.push(oid);
            }
        }
        if !unknown.is_empty() {
            return Err(Ok(Lookup::Types(unknown)));
        }
        let mut columns = Vec::with_capacity(info.columns.len());
        let mut plans = Vec::with_capacity(info.columns.len());
        for c in &info.columns {
            let (kind, delim) = catalog
                .kind(c.type_oid, c.typmod, c.ndims, options.numeric_as_string)
                .map_err(|oid| Ok(Lookup::Types(vec![oid])))?;
            let ty = catalog.ty(c.type_oid).ok().flatten();
            plans.push((kind.clone(), delim));
            columns.push(ColumnDesc {
                name: c.name.clone(),
                type_oid: c.type_oid,
                typmod: c.typmod,
                type_name: ty.map_or_else(|| c.format.clone(), |t| t.name.clone()),
                not_null: c.not_null,
                generated: c.generated,
                kind,
            });
        }
        let names: Vec<&str> = columns.iter().map(|c| c.name.as_str()).collect();
        let in_table = |list: &[String]| list.iter().all(|n| names.contains(&n.as_str()));
        let primary_key =
            if in_table(&info.primary_key) { info.primary_key.clone() } else { Vec::new() };
        let identity_key = match info.replica_identity {
            ReplicaIdentity::Full => columns.iter().map(|c| c.name.clone()).collect(),
            ReplicaIdentity::Nothing => Vec::new(),
            _ if in_table(&info.identity_key) => info.identity_key.clone(),
            _ => Vec::new(),
        };
        let desc = RelationDesc {
            relid: info.relid,
            namespace: schema.to_owned(),
            name: table.to_owned(),
            columns,
            primary_key,
            replica_identity: info.replica_identity,
            identity_key,
            with_lsn: options.include_lsn,
        };
        let relation = Relation::from_desc(&desc).map_err(|e| Err(CopyError(e.to_string())))?;
        let wire = plans.iter().map(|(kind, _)| Wire::of(kind)).collect();
        Ok(CopyTable {
            desc,
            relation: Arc::new(relation),
            plans,
            wire,
            batch_rows: options.batch_rows,
        })
    }

    /// The table's relation (schema, name, OID and the schema of its batches).
    pub fn relation(&self) -> &Arc<Relation> {
        &self.relation
    }

    /// The table's description.
    pub fn desc(&self) -> &RelationDesc {
        &self.desc
    }

    /// The column names, in order: what the `COPY (SELECT …)` must select.
    pub fn column_names(&self) -> impl Iterator<Item = &str> {
        self.desc.columns.iter().map(|c| c.name.as_str())
    }

    /// The `SELECT` list of a binary `COPY` that [`CopyEncoder::push_binary`] decodes: each
    /// column quoted, as its output function's text unless its binary form is decoded
    /// natively — `column::text`, an I/O conversion for these types, except for the
    /// output-text kinds, where a cast may be a function of its own (`inet::text` always
    /// shows the netmask, `inet_out` does not): `format('%s', …)` calls the output function.
    pub fn select_list(&self, quote: impl Fn(&str) -> String) -> String {
        let columns: Vec<String> = self
            .desc
            .columns
            .iter()
            .zip(&self.wire)
            .map(|(c, w)| {
                let name = quote(&c.name);
                match (w, &c.kind) {
                    (Wire::Text, PgKind::OutputText) => {
                        format!("CASE WHEN {name} IS NULL THEN NULL ELSE format('%s', {name}) END")
                    }
                    (Wire::Text, _) => format!("{name}::text"),
                    _ => name,
                }
            })
            .collect();
        columns.join(", ")
    }
}

/// How a binary `COPY` carries a column.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wire {
    Bool,
    I16,
    I32,
    I64,
    U32,
    F32,
    F64,
    Utf8,
    Bytes,
    Date,
    Time,
    Timestamp,
    Uuid,
    /// Selected as `::text`: the output function's text.
    Text,
}

impl Wire {
    fn of(kind: &PgKind) -> Wire {
        match kind {
            PgKind::Bool => Wire::Bool,
            PgKind::Int2 => Wire::I16,
            PgKind::Int4 => Wire::I32,
            PgKind::Int8 | PgKind::Money => Wire::I64,
            PgKind::Oid => Wire::U32,
            PgKind::Float4 => Wire::F32,
            PgKind::Float8 => Wire::F64,
            PgKind::Text | PgKind::Name => Wire::Utf8,
            PgKind::Bytea => Wire::Bytes,
            PgKind::Date => Wire::Date,
            PgKind::Time => Wire::Time,
            PgKind::Timestamp | PgKind::Timestamptz => Wire::Timestamp,
            PgKind::Uuid => Wire::Uuid,
            _ => Wire::Text,
        }
    }
}

/// Where a binary `COPY` stream stands, across the messages it arrives in.
#[derive(Debug, Default)]
pub struct BinaryCopy {
    header_done: bool,
    ended: bool,
    /// The start of a row (or of the header) cut by a message boundary.
    pending: Vec<u8>,
}

impl BinaryCopy {
    /// Whether bytes of an unfinished row are left over (the stream ended mid-row).
    pub fn has_partial_row(&self) -> bool {
        !self.pending.is_empty() && !self.ended
    }
}

/// The binary `COPY` signature.
const SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";

/// Builds one worker's batches of a [`CopyTable`] from `COPY` text rows.
#[derive(Debug)]
pub struct CopyEncoder {
    table: Arc<CopyTable>,
    encoder: BatchEncoder,
    lsn: Lsn,
    field: Vec<u8>,
    /// `COPY` bytes in the batch being built.
    bytes: usize,
    /// The fields of the row being appended (byte ranges of its line).
    spans: Vec<(usize, usize)>,
    /// Per column: whether an unparsable value was already logged.
    warned: Vec<bool>,
}

impl CopyEncoder {
    /// An encoder of `table`'s rows read at `lsn` (their `_lsn`).
    pub fn new(table: Arc<CopyTable>, lsn: Lsn) -> CopyEncoder {
        let encoder = BatchEncoder::new(&table.desc);
        let warned = vec![false; table.desc.columns.len()];
        CopyEncoder { table, encoder, lsn, field: Vec::new(), spans: Vec::new(), bytes: 0, warned }
    }

    /// Rows in the batch being built.
    pub fn rows(&self) -> usize {
        self.encoder.rows()
    }

    /// Appends one row: a `COPY` text line (with or without its newline).
    ///
    /// # Errors
    ///
    /// When the line does not have one field per column (the row is not appended then).
    pub fn push_row(&mut self, line: &[u8]) -> Result<(), CopyError> {
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        let width = self.table.plans.len();
        // Every byte is looked at twice: once by the UTF-8 check, once by the split.
        let text = std::str::from_utf8(line);
        self.spans.clear();
        if width > 0 || !line.is_empty() {
            let mut start = 0;
            for (i, b) in line.iter().enumerate() {
                if *b == b'\t' {
                    self.spans.push((start, i));
                    start = i + 1;
                }
            }
            self.spans.push((start, line.len()));
        }
        if self.spans.len() != width {
            return Err(CopyError(format!(
                "a COPY row of {}.{} has {} fields, the table {width} columns",
                self.table.desc.namespace,
                self.table.desc.name,
                self.spans.len()
            )));
        }
        self.bytes += line.len() + 1;
        self.encoder.start_row(ChangeOp::Read, self.lsn).map_err(|e| CopyError(e.to_string()))?;
        let spans = std::mem::take(&mut self.spans);
        match text {
            // The session's client_encoding is UTF8, so the whole line is valid UTF-8 and one
            // check covers every field without an escape (most of them).
            Ok(text) => {
                for (c, &(start, end)) in spans.iter().enumerate() {
                    let raw = &text[start..end];
                    if raw.contains('\\') {
                        self.append_escaped(c, raw.as_bytes());
                    } else {
                        self.append_field(c, Field::Text(raw));
                    }
                }
            }
            Err(_) => {
                for (c, &(start, end)) in spans.iter().enumerate() {
                    self.append_escaped(c, &line[start..end]);
                }
            }
        }
        self.spans = spans;
        Ok(())
    }

    /// Appends the rows in `data`, the next bytes of a `COPY … (FORMAT binary)` stream of the
    /// columns [`CopyTable::select_list`] names; a row cut by the end of `data` is kept in
    /// `state` until the rest comes.
    ///
    /// # Errors
    ///
    /// A stream that is not a binary `COPY` of this table's columns.
    pub fn push_binary(&mut self, state: &mut BinaryCopy, data: &[u8]) -> Result<(), CopyError> {
        if state.pending.is_empty() {
            let used = self.consume_binary(state, data)?;
            state.pending.extend_from_slice(&data[used..]);
        } else {
            let mut pending = std::mem::take(&mut state.pending);
            pending.extend_from_slice(data);
            let used = self.consume_binary(state, &pending)?;
            pending.drain(..used);
            state.pending = pending;
        }
        if state.ended {
            state.pending.clear();
        }
        Ok(())
    }

    /// Appends the whole rows at the start of `buf`; how many bytes they (and the header) took.
    fn consume_binary(&mut self, state: &mut BinaryCopy, buf: &[u8]) -> Result<usize, CopyError> {
        let mut pos = 0;
        if !state.header_done {
            if buf.len() < 19 {
                return Ok(0);
            }
            if &buf[..11] != SIGNATURE {
                return Err(CopyError("not a binary COPY stream (no PGCOPY signature)".into()));
            }
            let ext = u32::from_be_bytes([buf[15], buf[16], buf[17], buf[18]]) as usize;
            if buf.len() < 19 + ext {
                return Ok(0);
            }
            pos = 19 + ext;
            state.header_done = true;
        }
        let width = self.table.plans.len();
        let mut spans = std::mem::take(&mut self.spans);
        let result = loop {
            if state.ended {
                break Ok(buf.len());
            }
            let Some(count) = buf.get(pos..pos + 2) else { break Ok(pos) };
            let count = i16::from_be_bytes([count[0], count[1]]);
            if count == -1 {
                state.ended = true;
                continue;
            }
            if usize::try_from(count).ok() != Some(width) {
                break Err(CopyError(format!(
                    "a binary COPY row of {}.{} has {count} fields, the table {width} columns",
                    self.table.desc.namespace, self.table.desc.name
                )));
            }
            // The row's fields, if all of it is here: (start, length; usize::MAX for NULL).
            spans.clear();
            let mut at = pos + 2;
            let mut whole = true;
            for _ in 0..width {
                let Some(len) = buf.get(at..at + 4) else {
                    whole = false;
                    break;
                };
                let len = i32::from_be_bytes([len[0], len[1], len[2], len[3]]);
                at += 4;
                if len < 0 {
                    spans.push((at, usize::MAX));
                    continue;
                }
                let len = len as usize;
                if buf.len() < at + len {
                    whole = false;
                    break;
                }
                spans.push((at, len));
                at += len;
            }
            if !whole {
                break Ok(pos);
            }
            self.bytes += at - pos;
            if let Err(e) = self.encoder.start_row(ChangeOp::Read, self.lsn) {
                break Err(CopyError(e.to_string()));
            }
            for (c, &(start, len)) in spans.iter().enumerate() {
                if len == usize::MAX {
                    self.encoder.column(c).append_null();
                } else {
                    self.append_binary(c, &buf[start..start + len]);
                }
            }
            pos = at;
        };
        self.spans = spans;
        result
    }

    /// Appends one non-NULL binary value of column `c`.
    fn append_binary(&mut self, c: usize, v: &[u8]) {
        use wal2arrow_schema::ColumnBuilder as B;
        use wal2arrow_schema::types::{date_to_arrow, time_to_arrow, timestamp_to_arrow};
        fn be<const N: usize>(v: &[u8]) -> Option<[u8; N]> {
            v.try_into().ok()
        }
        let wire = self.table.wire[c];
        if wire == Wire::Text {
            let appended = match std::str::from_utf8(v) {
                Ok(t) => Field::Text(t),
                Err(_) => Field::Bytes(v),
            };
            self.append_field(c, appended);
            return;
        }
        let builder = self.encoder.column(c);
        let appended = match (wire, builder) {
            (Wire::Bool, B::Bool(b)) => be::<1>(v).map(|x| b.append_value(x[0] != 0)),
            (Wire::I16, B::Int16(b)) => be(v).map(|x| b.append_value(i16::from_be_bytes(x))),
            (Wire::I32, B::Int32(b)) => be(v).map(|x| b.append_value(i32::from_be_bytes(x))),
            (Wire::I64, B::Int64(b)) => be(v).map(|x| b.append_value(i64::from_be_bytes(x))),
            (Wire::U32, B::UInt32(b)) => be(v).map(|x| b.append_value(u32::from_be_bytes(x))),
            (Wire::F32, B::Float32(b)) => be(v).map(|x| b.append_value(f32::from_be_bytes(x))),
            (Wire::F64, B::Float64(b)) => be(v).map(|x| b.append_value(f64::from_be_bytes(x))),
            (Wire::Utf8, B::Utf8(b)) => {
                // client_encoding is UTF8: the server sends valid UTF-8.
                b.append_value(String::from_utf8_lossy(v));
                Some(())
            }
            (Wire::Bytes, B::Binary(b)) => {
                b.append_value(v);
                Some(())
            }
            (Wire::Date, B::Date32(b)) => {
                be(v).map(|x| b.append_value(date_to_arrow(i32::from_be_bytes(x))))
            }
            (Wire::Timestamp, B::Timestamp(b)) => {
                be(v).map(|x| b.append_value(timestamp_to_arrow(i64::from_be_bytes(x))))
            }
            (Wire::Time, B::Time64(b)) => match be(v).map(i64::from_be_bytes) {
                Some(us) => match time_to_arrow(us) {
                    Some(t) => {
                        b.append_value(t);
                        Some(())
                    }
                    // 24:00:00: PostgreSQL's, not Arrow's.
                    None => {
                        b.append_null();
                        self.encoder.mark_unrepresentable(c);
                        return;
                    }
                },
                None => None,
            },
            (Wire::Uuid, B::FixedSizeBinary(b)) => be::<16>(v).and_then(|x| b.append_value(x).ok()),
            _ => None,
        };
        if appended.is_none() {
            self.unparsed(c);
        }
    }

    /// A value that could not be read: NULL, marked unrepresentable, logged once per column.
    fn unparsed(&mut self, c: usize) {
        if !self.warned[c] {
            self.warned[c] = true;
            let d = &self.table.desc;
            tracing::warn!(
                table = %format!("{}.{}", d.namespace, d.name),
                column = %d.columns[c].name,
                "snapshot: a value of type {} could not be parsed; it is reported \
                 in _unrepresentable",
                d.columns[c].type_name
            );
        }
        self.encoder.column(c).append_null();
        self.encoder.mark_unrepresentable(c);
    }

    /// Appends a field that may hold escapes (or be `\N`).
    fn append_escaped(&mut self, c: usize, raw: &[u8]) {
        if raw == b"\\N" {
            self.append_field(c, Field::Null);
            return;
        }
        let mut buffer = std::mem::take(&mut self.field);
        let text = unescape(raw, &mut buffer);
        // Octal and hex escapes may spell bytes that are not UTF-8.
        match std::str::from_utf8(text) {
            Ok(t) => self.append_field(c, Field::Text(t)),
            Err(_) => self.append_field(c, Field::Bytes(text)),
        }
        self.field = buffer;
    }

    fn append_field(&mut self, c: usize, field: Field<'_>) {
        let appended = match field {
            Field::Null => {
                self.encoder.column(c).append_null();
                return;
            }
            Field::Text(t) => {
                let (kind, delim) = &self.table.plans[c];
                append_text_value(kind, *delim, self.encoder.column(c), t)
            }
            Field::Bytes(b) => match self.encoder.column(c) {
                wal2arrow_schema::ColumnBuilder::Utf8(builder) => {
                    builder.append_value(String::from_utf8_lossy(b));
                    Appended::Value
                }
                _ => Appended::Unparsed,
            },
        };
        match appended {
            Appended::Value => {}
            Appended::Unrepresentable => self.encoder.mark_unrepresentable(c),
            Appended::Missing | Appended::Unparsed => self.unparsed(c),
        }
    }

    /// Whether the batch being built is full (the same policy as the plugin's:
    /// `batch-rows` rows or about `MAX_BATCH_BYTES`).
    pub fn is_full(&mut self) -> bool {
        self.encoder.batch_full(self.table.batch_rows)
    }

    /// The batch built so far, as handed to users (system columns included), and the `COPY`
    /// bytes its rows came from; `None` when it has no rows.
    ///
    /// # Errors
    ///
    /// Only on a bug (columns of different lengths).
    pub fn finish_batch(&mut self) -> Result<Option<(RecordBatch, usize)>, CopyError> {
        let Some(WireBatch { batch, base_lsn, has_missing, has_unrepresentable }) =
            self.encoder.finish_batch().map_err(|e| CopyError(e.to_string()))?
        else {
            return Ok(None);
        };
        let batch = self
            .table
            .relation
            .user_batch(base_lsn, &batch, has_missing, has_unrepresentable)
            .map_err(|e| CopyError(e.to_string()))?;
        Ok(Some((batch, std::mem::take(&mut self.bytes))))
    }
}

/// A `COPY` text field with its backslash escapes resolved (into `out`, unless it has none).
/// One field of a `COPY` row.
enum Field<'a> {
    Null,
    Text(&'a str),
    /// Text whose escapes spell bytes that are not UTF-8 (kept, lossily, only by text columns).
    Bytes(&'a [u8]),
}

/// The fields of a `COPY` text line, unescaped; `None` for `\N` (NULL).
pub fn fields(line: &[u8]) -> Vec<Option<Vec<u8>>> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let mut buffer = Vec::new();
    line.split(|b| *b == b'\t')
        .map(|raw| (raw != b"\\N").then(|| unescape(raw, &mut buffer).to_vec()))
        .collect()
}

fn unescape<'a>(raw: &'a [u8], out: &'a mut Vec<u8>) -> &'a [u8] {
    if !raw.contains(&b'\\') {
        return raw;
    }
    out.clear();
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        i += 1;
        if b != b'\\' || i == raw.len() {
            out.push(b);
            continue;
        }
        let e = raw[i];
        i += 1;
        match e {
            b'b' => out.push(0x08),
            b'f' => out.push(0x0c),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'v' => out.push(0x0b),
            b'0'..=b'7' => {
                let mut v = u32::from(e - b'0');
                for _ in 0..2 {
                    match raw.get(i) {
                        Some(d @ b'0'..=b'7') => {
                            v = v * 8 + u32::from(d - b'0');
                            i += 1;
                        }
                        _ => break,
                    }
                }
                out.push(v as u8);
            }
            b'x' if raw.get(i).is_some_and(u8::is_ascii_hexdigit) => {
                let mut v = 0u32;
                for _ in 0..2 {
                    match raw.get(i).and_then(|d| (*d as char).to_digit(16)) {
                        Some(d) => {
                            v = v * 16 + d;
                            i += 1;
                        }
                        None => break,
                    }
                }
                out.push(v as u8);
            }
            other => out.push(other),
        }
    }
    out
}

#[doc(hidden)]
/// For tests, benchmarks and fuzz targets: `public.t` of [`crate::sample_decoder`]'s
/// catalog — id int4, note text, amount numeric(12,2) (carried as text), at timestamptz,
/// tags int4[] (as text).
pub fn sample_copy_table() -> Arc<CopyTable> {
    let catalog = crate::sample_decoder().catalog;
    let col = |name: &str, type_oid: u32, typmod: i32, ndims: i32| crate::CatalogColumn {
        name: name.into(),
        type_oid,
        typmod,
        ndims,
        not_null: name == "id",
        generated: false,
        format: String::new(),
    };
    let info = TableInfo {
        relid: 4242,
        replica_identity: ReplicaIdentity::Default,
        primary_key: vec!["id".into()],
        identity_key: vec!["id".into()],
        columns: vec![
            col("id", 23, -1, 0),
            col("note", 25, -1, 0),
            col("amount", 1700, (12 << 16) + 2 + 4, 0),
            col("at", 1184, -1, 0),
            col("tags", 1007, -1, 1),
        ],
    };
    let options = PluginOptions { batch_rows: 100, ..PluginOptions::default() };
    Arc::new(CopyTable::from_catalog(&catalog, &info, "public", "t", &options).unwrap())
}

#[doc(hidden)]
/// For tests, benchmarks and fuzz targets: a binary `COPY` stream (header with a 4-byte
/// extension, the rows, the trailer) of rows of optional field bytes.
pub fn binary_stream(rows: &[Vec<Option<Vec<u8>>>]) -> Vec<u8> {
    let mut out = SIGNATURE.to_vec();
    out.extend(0i32.to_be_bytes());
    out.extend(4u32.to_be_bytes());
    out.extend(b"ext!");
    for row in rows {
        out.extend((row.len() as i16).to_be_bytes());
        for field in row {
            match field {
                None => out.extend((-1i32).to_be_bytes()),
                Some(v) => {
                    out.extend((v.len() as i32).to_be_bytes());
                    out.extend(v);
                }
            }
        }
    }
    out.extend((-1i16).to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_are_resolved_as_copy_writes_them() {
        let mut out = Vec::new();
        assert_eq!(unescape(b"plain", &mut out), b"plain");
        assert_eq!(unescape(br"a\tb\nc\\d", &mut out), b"a\tb\nc\\d");
        assert_eq!(unescape(br"\x41\101\7\x4g", &mut out), b"AA\x07\x04g");
        assert_eq!(unescape(br"\\x0102", &mut out), br"\x0102");
        assert_eq!(unescape(br"\q", &mut out), b"q");
    }

    fn decode(table: &Arc<CopyTable>, pieces: &[&[u8]]) -> RecordBatch {
        let mut encoder = CopyEncoder::new(Arc::clone(table), Lsn(0x100));
        let mut state = BinaryCopy::default();
        for piece in pieces {
            encoder.push_binary(&mut state, piece).unwrap();
        }
        assert!(!state.has_partial_row());
        encoder.finish_batch().unwrap().unwrap().0
    }

    #[test]
    fn binary_rows_decode_alike_however_the_stream_is_cut() {
        let table = sample_copy_table();
        assert_eq!(
            table.select_list(|n| format!("\"{n}\"")),
            "\"id\", \"note\", \"amount\"::text, \"at\", \"tags\"::text"
        );
        let stream = binary_stream(&[
            vec![
                Some(7i32.to_be_bytes().to_vec()),
                Some("héllo\ttab".as_bytes().to_vec()),
                Some(b"-12.50".to_vec()),
                Some(86_400_000_000i64.to_be_bytes().to_vec()),
                Some(b"{1,NULL,3}".to_vec()),
            ],
            vec![Some(8i32.to_be_bytes().to_vec()), None, None, None, None],
            vec![
                Some(9i32.to_be_bytes().to_vec()),
                Some(Vec::new()),
                Some(b"NaN".to_vec()),
                Some(i64::MAX.to_be_bytes().to_vec()),
                Some(b"{}".to_vec()),
            ],
        ]);
        let whole = decode(&table, &[&stream]);
        assert_eq!(whole.num_rows(), 3);
        let rendered = format!("{whole:?}");
        assert!(rendered.contains("héllo\\ttab"), "{rendered}");
        assert!(rendered.contains("2000-01-02T00:00:00"), "{rendered}");
        for cut in 1..stream.len() {
            assert_eq!(decode(&table, &[&stream[..cut], &stream[cut..]]), whole, "cut at {cut}");
        }
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(decode(&table, &bytes), whole);
        // NaN in numeric(12,2) cannot be held: NULL, marked.
        let unrepresentable = whole.column_by_name("_unrepresentable").unwrap();
        assert!(unrepresentable.is_valid(2) && !unrepresentable.is_valid(0));
    }

    #[test]
    fn a_stream_that_is_not_binary_copy_or_has_the_wrong_width_is_an_error() {
        let table = sample_copy_table();
        let mut encoder = CopyEncoder::new(Arc::clone(&table), Lsn(1));
        let mut state = BinaryCopy::default();
        let err = encoder.push_binary(&mut state, b"1\tnote\t\\N\t\\N\t\\N\n-------").unwrap_err();
        assert!(err.0.contains("PGCOPY"), "{err}");
        let stream = binary_stream(&[vec![Some(1i32.to_be_bytes().to_vec())]]);
        let err = encoder.push_binary(&mut BinaryCopy::default(), &stream).unwrap_err();
        assert!(err.0.contains("has 1 fields, the table 5 columns"), "{err}");
    }
}
