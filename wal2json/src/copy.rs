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
//! Text rather than `COPY … (FORMAT binary)`: the binary send functions of a few types
//! (`numeric`, arrays, `interval`) differ from their in-memory Datums, and the text parsers
//! already exist, are fuzzed, and are tested value for value against the plugin.
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
        Ok(CopyTable { desc, relation: Arc::new(relation), plans, batch_rows: options.batch_rows })
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
}

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
            Appended::Missing | Appended::Unparsed => {
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
}
