//! The wal2json fallback's decoder: turns wal2json's format-version 2 output into the very
//! messages the wal2arrow plugin sends — the same Schema, Batch, Truncate, Message, Begin and
//! Commit, with the same Arrow schemas, batching and values — so that code reading a
//! `wal2arrow-client` change stream does not notice which plugin the server ran.
//!
//! wal2json sends one JSON object per change, with every value in PostgreSQL's text output
//! and the column's type name and OID beside it. The decoder keeps one
//! [`BatchEncoder`] per table, exactly as the plugin does, and appends each value straight
//! from the received bytes ([`json`] scans them in place; [`text`] parses PostgreSQL's text
//! forms), flushing batches where the plugin would: at `batch-rows`, before a TRUNCATE or a
//! transactional message, at commit, and when a table's description changes. What the JSON
//! does not carry — the type catalog (domains, enums, arrays), the table's OID, primary key
//! order and replica identity, replication origin names — comes from the catalog over an
//! ordinary SQL connection, asked only when a table or type is first seen or its description
//! changes.
//!
//! The decoder does no I/O (this crate has no async runtime): when it needs the catalog,
//! [`JsonDecoder::decode_at`] returns the [`Lookup`] without having changed anything, the
//! caller answers it into [`JsonDecoder::catalog`] — `wal2arrow-client` does so over SQL, as
//! a [`Catalog`] — and feeds the same message again.
//!
//! ```
//! use wal2arrow_schema::{Lsn, PluginOptions};
//! use wal2arrow_wal2json::{CatalogCache, JsonDecoder, Lookup};
//!
//! let mut decoder = JsonDecoder::new(PluginOptions::default(), false);
//! let mut out = Vec::new();
//! let begin = br#"{"action":"B","xid":731,"timestamp":"2024-05-06 07:08:09.123456+00","origin":0,"lsn":"0/16B3F48","nextlsn":"0/16B3F78"}"#;
//! assert_eq!(decoder.decode_at(begin, Lsn(0x16B3F48), &mut out).unwrap(), None);
//! // A change of a table the decoder has not seen asks the catalog first.
//! let insert = br#"{"action":"I","lsn":"0/16B3E00","schema":"public","table":"t","columns":[{"name":"id","type":"integer","typeoid":23,"value":1}]}"#;
//! let question = decoder.decode_at(insert, Lsn(0x16B3E00), &mut out).unwrap();
//! assert_eq!(question, Some(Lookup::Table { schema: "public".into(), table: "t".into() }));
//! ```
//!
//! What wal2json cannot express, and what the fallback therefore reports differently, is
//! listed in the README ("The wal2json fallback").

#![warn(missing_docs)]

pub mod copy;
pub mod json;
pub mod text;

use std::collections::HashMap;
use std::sync::Arc;

use arrow_buffer::Buffer;
use wal2arrow_schema::types::{ColumnDesc, TypeClass, oid};
use wal2arrow_schema::{
    BatchEncoder, Begin, ChangeOp, ColumnBuilder, Commit, DecodedBatch, Lsn, Message, PgKind,
    PluginOptions, Relation, RelationDesc, ReplicaIdentity, WireBatch,
};

use self::json::{JsonError, Next, Scalar, Scanner, Str, str_bytes, str_eq, str_owned};

/// A wal2json message that cannot be decoded: the LSN of the XLogData that carried it, and
/// what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodeError {
    /// WAL position of the XLogData that carried the message.
    pub lsn: Lsn,
    /// What is wrong with it.
    pub message: String,
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cannot decode the wal2json message at LSN {}: {}", self.lsn, self.message)
    }
}

impl std::error::Error for DecodeError {}

/// Answers the decoder's catalog questions: `wal2arrow-client` implements it over an ordinary
/// SQL connection; tests and fuzz targets answer from fixed data.
pub trait Catalog {
    /// Why a question could not be answered.
    type Error;

    /// Answers `lookup` into `cache` (an unknown table, type or origin is answered `None`).
    fn answer(
        &mut self,
        lookup: &Lookup,
        cache: &mut CatalogCache,
    ) -> impl std::future::Future<Output = std::result::Result<(), Self::Error>> + Send;
}

/// What one call to [`JsonDecoder::decode`] could not finish.
#[derive(Debug)]
pub enum Step {
    /// The catalog must answer this first; nothing was changed, feed the message again.
    Need(Lookup),
    /// The message is malformed or breaks wal2json's protocol.
    Bad(String),
}

impl From<JsonError> for Step {
    fn from(e: JsonError) -> Self {
        Step::Bad(format!("malformed JSON: {e}"))
    }
}

type Result<T> = std::result::Result<T, Step>;

fn bad<T>(what: impl Into<String>) -> Result<T> {
    Err(Step::Bad(what.into()))
}

/// A catalog question.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// A table's OID, keys, replica identity and columns.
    Table {
        /// The table's schema.
        schema: String,
        /// The table's name.
        table: String,
    },
    /// These types, and the types they refer to (domain bases, array elements).
    Types(Vec<u32>),
    /// A replication origin's name.
    Origin(u32),
}

/// A table's description in the catalog (as it is now, which may be after the change).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableInfo {
    /// `pg_class.oid`.
    pub relid: u32,
    /// `pg_class.relreplident`.
    pub replica_identity: ReplicaIdentity,
    /// In key order.
    pub primary_key: Vec<String>,
    /// The columns old images carry with DEFAULT or USING INDEX, in column order.
    pub identity_key: Vec<String>,
    /// The live columns, in attribute order.
    pub columns: Vec<CatalogColumn>,
}

/// A column in the catalog.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CatalogColumn {
    /// `attname`.
    pub name: String,
    /// `atttypid`.
    pub type_oid: u32,
    /// `atttypmod`.
    pub typmod: i32,
    /// `attndims`: an array column's declared dimensions.
    pub ndims: i32,
    /// `attnotnull`.
    pub not_null: bool,
    /// `attgenerated = 's'`: a stored generated column.
    pub generated: bool,
    /// `format_type(atttypid, atttypmod)`: what wal2json prints as the type.
    pub format: String,
}

/// A type in the catalog.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TypeInfo {
    /// `typname`.
    pub name: String,
    /// `typtype`: `b`ase, `d`omain, `e`num, `c`omposite, …
    pub typtype: u8,
    /// A domain's base type.
    pub base: u32,
    /// A domain's typmod.
    pub typtypmod: i32,
    /// A true array's element type, else 0.
    pub elem: u32,
    /// `typlen` (-1 for variable-length types, whose unchanged values wal2json leaves out).
    pub typlen: i16,
    /// The array element delimiter (`,`; `;` for `box`).
    pub delim: u8,
}

/// A table's catalog answer (`None`: no such table now) and the fetch it came from.
type CachedTable = (Option<Arc<TableInfo>>, u64);

/// What the decoder has learnt from the catalog.
#[derive(Debug, Default)]
pub struct CatalogCache {
    /// By (schema, table): the answer and the fetch it came from.
    tables: HashMap<(String, String), CachedTable>,
    types: HashMap<u32, Option<TypeInfo>>,
    origins: HashMap<u32, Option<String>>,
    fetches: u64,
}

impl CatalogCache {
    /// Answers a lookup with "not found" (the fuzz targets have no server to ask).
    pub fn answer_unknown(&mut self, lookup: &Lookup) {
        match lookup {
            Lookup::Table { schema, table } => self.put_table(schema.clone(), table.clone(), None),
            Lookup::Types(oids) => oids.iter().for_each(|o| self.put_type(*o, None)),
            Lookup::Origin(id) => self.put_origin(*id, None),
        }
    }

    /// Records the answer about a table (`None`: no such table now).
    pub fn put_table(&mut self, schema: String, table: String, info: Option<TableInfo>) {
        self.fetches += 1;
        self.tables.insert((schema, table), (info.map(Arc::new), self.fetches));
    }

    /// Records the answer about a type (`None`: no such type).
    pub fn put_type(&mut self, oid: u32, info: Option<TypeInfo>) {
        self.types.insert(oid, info);
    }

    /// Records a replication origin's name (`None`: no such origin).
    pub fn put_origin(&mut self, id: u32, name: Option<String>) {
        self.origins.insert(id, name);
    }

    fn ty(&self, oid: u32) -> std::result::Result<Option<&TypeInfo>, u32> {
        match self.types.get(&oid) {
            Some(t) => Ok(t.as_ref()),
            None => Err(oid),
        }
    }

    /// A type with its domains resolved, as `getBaseTypeAndTypmod` does.
    fn base(&self, mut oid: u32, mut typmod: i32) -> std::result::Result<(u32, i32), u32> {
        for _ in 0..32 {
            match self.ty(oid)? {
                Some(t) if t.typtype == b'd' && t.base != 0 => {
                    oid = t.base;
                    typmod = t.typtypmod;
                }
                _ => break,
            }
        }
        Ok((oid, typmod))
    }

    fn class(&self, oid: u32) -> std::result::Result<TypeClass, u32> {
        Ok(match self.ty(oid)?.map(|t| t.typtype) {
            Some(b'b') => TypeClass::Base,
            Some(b'e') => TypeClass::Enum,
            Some(_) => TypeClass::Other,
            // A type gone from the catalog since (a dropped enum, domain): built-in types are
            // never dropped, so it is a user type without a native mapping.
            None if oid < FIRST_NORMAL_OID => TypeClass::Base,
            None => TypeClass::Other,
        })
    }

    /// The column's kind, exactly as the plugin resolves it (`column_kind` there): domains to
    /// their base, true arrays to lists of their element's kind.
    fn kind(
        &self,
        type_oid: u32,
        typmod: i32,
        ndims: i32,
        numeric_as_string: bool,
    ) -> std::result::Result<(PgKind, u8), u32> {
        let (base, typmod) = self.base(type_oid, typmod)?;
        let elem = self.ty(base)?.map_or(0, |t| t.elem);
        if elem != 0 {
            let (elem_base, elem_typmod) = self.base(elem, typmod)?;
            let delim = self.ty(elem_base)?.map_or(b',', |t| t.delim);
            let element =
                PgKind::resolve(elem_base, elem_typmod, self.class(elem_base)?, numeric_as_string);
            let elem_name = self.ty(elem)?.map_or_else(|| elem.to_string(), |t| t.name.clone());
            Ok((PgKind::array(element, elem_name, ndims), delim))
        } else {
            Ok((PgKind::resolve(base, typmod, self.class(base)?, numeric_as_string), b','))
        }
    }
}

/// OIDs below this are PostgreSQL's own (`FirstNormalObjectId`).
const FIRST_NORMAL_OID: u32 = 16384;

/// One decoded message and the JSON bytes it was made from.
#[derive(Debug)]
pub struct Output {
    /// The message, as the plugin would have sent it.
    pub message: Message,
    /// The JSON bytes it was decoded from.
    pub source_bytes: usize,
}

/// A column of a change as wal2json wrote it: spans into the message.
#[derive(Clone, Debug)]
struct Col {
    name: Str,
    ty: Option<Str>,
    typeoid: Option<u32>,
    value: Option<Scalar>,
    optional: Option<bool>,
}

/// The top-level fields of a message.
#[derive(Debug, Default)]
struct Head {
    action: u8,
    xid: Option<u32>,
    timestamp: Option<Str>,
    origin: Option<u32>,
    lsn: Option<Str>,
    nextlsn: Option<Str>,
    schema: Option<Str>,
    table: Option<Str>,
    transactional: Option<bool>,
    prefix: Option<Str>,
    content: Option<Str>,
    has_columns: bool,
    has_identity: bool,
    has_pk: bool,
}

/// A column as the table's description was built from (wal2json's view of it).
#[derive(Clone, Debug, PartialEq, Eq)]
struct SigCol {
    name: String,
    type_oid: u32,
    type_text: String,
    /// `NOT NULL`, when wal2json said (`optional`).
    not_null: Option<bool>,
    /// Variable length: wal2json leaves its unchanged TOAST values out.
    varlena: bool,
    /// Not in the change's JSON: taken from the catalog (a possible unchanged TOAST value).
    from_catalog: bool,
}

/// Where a table's description comes from.
#[derive(Clone, Copy)]
enum Source<'a> {
    /// The catalog alone (a DELETE's key says too little).
    Catalog,
    /// An INSERT's columns: exactly the table's.
    Insert(&'a [Col]),
    /// An UPDATE's new image: the table's, less unchanged TOAST values.
    Update(&'a [Col]),
}

/// `json` (an UPDATE's columns, in table order) with the catalog's columns it lacks put back
/// in the catalog's order, marked `from_catalog`. Columns of the JSON the catalog no longer
/// has (dropped since) keep their place.
fn with_toast_gaps(json: Vec<SigCol>, table: &TableInfo) -> Vec<SigCol> {
    let mut out = Vec::with_capacity(table.columns.len().max(json.len()));
    let mut rest = json.into_iter().peekable();
    for c in &table.columns {
        if rest.clone().any(|s| s.name == c.name) {
            // Everything up to and including the JSON's column of that name.
            for s in rest.by_ref() {
                let found = s.name == c.name;
                out.push(s);
                if found {
                    break;
                }
            }
        } else {
            out.push(SigCol {
                name: c.name.clone(),
                type_oid: c.type_oid,
                type_text: c.format.clone(),
                not_null: Some(c.not_null),
                varlena: false,
                from_catalog: true,
            });
        }
    }
    out.extend(rest);
    out
}

/// Per-column state for appending values.
#[derive(Clone, Debug)]
struct ColPlan {
    kind: PgKind,
    /// Array element delimiter.
    delim: u8,
    /// wal2json writes NaN and ±Infinity of this column as `null` (its type is exactly
    /// float4, float8 or numeric, and numbers are not sent as strings).
    nan_as_null: bool,
    /// A value whose text could not be parsed was already reported.
    warned: bool,
}

#[derive(Debug)]
struct TableState {
    schema: String,
    table: String,
    included: bool,
    sig: Vec<SigCol>,
    /// wal2json's `pk` (column order), when it was given.
    json_pk: Option<Vec<String>>,
    /// The catalog fetch the description was built from (0: none).
    info_fetch: u64,
    /// Old images that do not fit the identity key were seen even with a fresh description
    /// (the table is gone from the catalog): stop asking the catalog about them.
    loose_identity: bool,
    desc: RelationDesc,
    relation: Arc<Relation>,
    plans: Vec<ColPlan>,
    encoder: BatchEncoder,
    schema_sent: bool,
    /// JSON bytes of the rows in the batch being built.
    pending_bytes: usize,
}

#[derive(Debug)]
struct Txn {
    begin: Begin,
    origin: Option<String>,
    /// Changes from a filtered origin are dropped, with their Begin and Commit.
    filtered: bool,
    /// Begin (and Origin) were emitted.
    written: bool,
    /// Tables with rows not yet emitted, in the order first touched.
    pending: Vec<usize>,
    /// A TRUNCATE being gathered: wal2json writes one object per table, all at its LSN.
    truncate: Option<(Lsn, Vec<Arc<Relation>>, usize)>,
}

/// Decodes one replication session's wal2json messages.
#[derive(Debug)]
pub struct JsonDecoder {
    options: PluginOptions,
    /// wal2json sends numbers as strings (`numeric-data-types-as-string`, wal2json 2.6+), so
    /// NaN and ±Infinity arrive as text rather than as `null`.
    numbers_as_strings: bool,
    /// What the catalog told so far; answers to [`Lookup`]s go here.
    pub catalog: CatalogCache,
    tables: Vec<TableState>,
    by_name: HashMap<(String, String), usize>,
    last_table: Option<usize>,
    txn: Option<Txn>,
    cols: Vec<Col>,
    identity: Vec<Col>,
    pk: Vec<Str>,
    /// Table column → index in `cols` / `identity` for the row being appended.
    slots: Vec<Option<usize>>,
    scratch: Vec<u8>,
}

/// The options to give wal2json (format version 2, everything the Arrow output
/// needs), plus `add-tables` when every table pattern has a form wal2json understands. The
/// decoder filters tables, message prefixes and origins again, so wal2json's filters are only
/// an optimisation.
pub fn wal2json_options(
    options: &PluginOptions,
    numbers_as_strings: bool,
) -> Vec<(&'static str, String)> {
    let mut out: Vec<(&'static str, String)> = [
        ("format-version", "2"),
        ("include-transaction", "true"),
        ("include-xids", "true"),
        ("include-timestamp", "true"),
        ("include-origin", "true"),
        ("include-lsn", "true"),
        ("include-schemas", "true"),
        ("include-types", "true"),
        ("include-type-oids", "true"),
        ("include-typmod", "true"),
        ("include-not-null", "true"),
        ("include-pk", "true"),
        ("include-domain-data-type", "false"),
    ]
    .into_iter()
    .map(|(k, v)| (k, v.to_owned()))
    .collect();
    if numbers_as_strings {
        out.push(("numeric-data-types-as-string", "true".into()));
    }
    if let Some(tables) = add_tables(options) {
        out.push(("add-tables", tables));
    }
    // wal2json splits these lists at commas: pass them when no prefix holds one (or an
    // escape); the decoder applies them either way.
    let plain = |list: &[String]| list.iter().all(|p| !p.contains([',', '\\']) && p.trim() == p);
    if !options.add_msg_prefixes.is_empty() && plain(&options.add_msg_prefixes) {
        out.push(("add-msg-prefixes", options.add_msg_prefixes.join(",")));
    }
    if !options.filter_msg_prefixes.is_empty() && plain(&options.filter_msg_prefixes) {
        out.push(("filter-msg-prefixes", options.filter_msg_prefixes.join(",")));
    }
    out
}

/// wal2json's `add-tables` for the table patterns, if they all fit its syntax: `schema.table`
/// with `*` for a whole side and `\` escaping `,`, `.`, `*` and itself.
fn add_tables(options: &PluginOptions) -> Option<String> {
    if options.tables.is_all() {
        return None;
    }
    let escape = |s: &str| {
        let mut out = String::with_capacity(s.len());
        for c in s.chars() {
            if matches!(c, ',' | '.' | '*' | '\\' | ' ') {
                out.push('\\');
            }
            out.push(c);
        }
        out
    };
    let mut items = Vec::new();
    for p in options.tables.patterns() {
        let (schema, table) = p.names_or_any()?;
        if schema.is_some_and(str::is_empty) || table.is_some_and(str::is_empty) {
            return None;
        }
        items.push(format!(
            "{}.{}",
            schema.map_or_else(|| "*".to_owned(), escape),
            table.map_or_else(|| "*".to_owned(), escape)
        ));
    }
    Some(items.join(","))
}

impl JsonDecoder {
    /// A decoder for a session with these plugin options (applied as the plugin would:
    /// batching, tables, message prefixes, origins, the include flags); `numbers_as_strings`
    /// when wal2json was asked for `numeric-data-types-as-string`.
    pub fn new(options: PluginOptions, numbers_as_strings: bool) -> JsonDecoder {
        JsonDecoder {
            options,
            numbers_as_strings,
            catalog: CatalogCache::default(),
            tables: Vec::new(),
            by_name: HashMap::new(),
            last_table: None,
            txn: None,
            cols: Vec::new(),
            identity: Vec::new(),
            pk: Vec::new(),
            slots: Vec::new(),
            scratch: Vec::new(),
        }
    }

    /// [`decode`](Self::decode) for the message carried by the XLogData at `lsn`: `Ok(None)`
    /// when done, `Ok(Some(question))` when the catalog must answer before the message is fed
    /// again.
    ///
    /// # Errors
    ///
    /// A [`DecodeError`] naming the LSN, for malformed input.
    pub fn decode_at(
        &mut self,
        msg: &[u8],
        lsn: Lsn,
        out: &mut Vec<Output>,
    ) -> std::result::Result<Option<Lookup>, DecodeError> {
        match self.decode(msg, out) {
            Ok(()) => Ok(None),
            Err(Step::Need(lookup)) => Ok(Some(lookup)),
            Err(Step::Bad(message)) => Err(DecodeError { lsn, message }),
        }
    }

    /// Decodes one wal2json message, appending what it yields to `out` (often nothing: rows
    /// gather into batches).
    ///
    /// # Errors
    ///
    /// [`Step::Need`] when the catalog must answer first: the same message must then be fed
    /// again. What is in `out` by then is final (steps taken before the question, such as
    /// emitting a gathered TRUNCATE, are not repeated). [`Step::Bad`] for malformed input.
    pub fn decode(&mut self, msg: &[u8], out: &mut Vec<Output>) -> Result<()> {
        let mut cols = std::mem::take(&mut self.cols);
        let mut identity = std::mem::take(&mut self.identity);
        let mut pk = std::mem::take(&mut self.pk);
        let result = self.decode_with(msg, &mut cols, &mut identity, &mut pk, out);
        self.cols = cols;
        self.identity = identity;
        self.pk = pk;
        result
    }

    fn decode_with(
        &mut self,
        msg: &[u8],
        cols: &mut Vec<Col>,
        identity: &mut Vec<Col>,
        pk: &mut Vec<Str>,
        out: &mut Vec<Output>,
    ) -> Result<()> {
        cols.clear();
        identity.clear();
        pk.clear();
        let head = parse(msg, cols, identity, pk)?;
        match head.action {
            b'B' => self.begin(msg, &head, out),
            b'C' => self.commit(msg, &head, out),
            b'I' | b'U' | b'D' => self.change(msg, &head, cols, identity, pk, out),
            b'T' => self.truncate(msg, &head, out),
            b'M' => self.message(msg, &head, out),
            other => bad(format!("unknown action {:?}", other as char)),
        }
    }

    fn lsn(&mut self, msg: &[u8], s: &Option<Str>, what: &str) -> Result<Lsn> {
        let Some(s) = s else { return bad(format!("{what} without \"lsn\"")) };
        let text = str_bytes(msg, s, &mut self.scratch)?;
        std::str::from_utf8(text)
            .ok()
            .and_then(|t| t.parse().ok())
            .map_or_else(|| bad(format!("{what}: malformed LSN")), Ok)
    }

    fn begin(&mut self, msg: &[u8], head: &Head, out: &mut Vec<Output>) -> Result<()> {
        if self.txn.is_some() {
            return bad("BEGIN inside a transaction");
        }
        let origin_id = head.origin.unwrap_or(0);
        let wants_origin = self.options.include_origin || !self.options.filter_origins.is_empty();
        let origin = if origin_id != 0 && wants_origin {
            match self.catalog.origins.get(&origin_id) {
                Some(name) => Some(name.clone().unwrap_or_else(|| origin_id.to_string())),
                None => return Err(Step::Need(Lookup::Origin(origin_id))),
            }
        } else {
            None
        };
        let final_lsn = self.lsn(msg, &head.lsn, "BEGIN")?;
        let commit_time_us = if self.options.include_timestamps {
            self.commit_time(msg, &head.timestamp)?
        } else {
            0
        };
        let filtered = origin_id != 0
            && !self.options.filter_origins.is_empty()
            && match &origin {
                Some(name) => self.options.origin_filtered(name),
                None => self.options.filter_origins.iter().any(|o| o == "*"),
            };
        self.txn = Some(Txn {
            begin: Begin {
                xid: if self.options.include_xids { head.xid.unwrap_or(0) } else { 0 },
                final_lsn,
                commit_time_us,
            },
            origin: origin.filter(|_| self.options.include_origin),
            filtered,
            written: false,
            pending: Vec::new(),
            truncate: None,
        });
        if !self.options.skip_empty_xacts && !filtered {
            self.ensure_begin(out, msg.len());
        }
        Ok(())
    }

    fn commit_time(&mut self, msg: &[u8], ts: &Option<Str>) -> Result<i64> {
        let Some(ts) = ts else { return Ok(0) };
        let text = str_bytes(msg, ts, &mut self.scratch)?;
        std::str::from_utf8(text)
            .ok()
            .and_then(text::parse_timestamp)
            .map_or_else(|| bad("malformed commit timestamp"), Ok)
    }

    /// Emits the transaction's Begin (and Origin) if not yet done.
    fn ensure_begin(&mut self, out: &mut Vec<Output>, bytes: usize) {
        let Some(txn) = self.txn.as_mut().filter(|t| !t.written) else { return };
        txn.written = true;
        out.push(Output { message: Message::Begin(txn.begin), source_bytes: bytes });
        if let Some(name) = &txn.origin {
            out.push(Output {
                message: Message::Origin { name: name.clone(), lsn: Lsn::INVALID },
                source_bytes: 0,
            });
        }
    }

    fn commit(&mut self, msg: &[u8], head: &Head, out: &mut Vec<Output>) -> Result<()> {
        let Some(filtered) = self.txn.as_ref().map(|t| t.filtered) else {
            return bad("COMMIT outside a transaction");
        };
        let commit_lsn = self.lsn(msg, &head.lsn, "COMMIT")?;
        let end_lsn = self.lsn(msg, &head.nextlsn.clone(), "COMMIT (nextlsn)")?;
        let commit_time_us = if self.options.include_timestamps {
            self.commit_time(msg, &head.timestamp)?
        } else {
            0
        };
        if filtered {
            self.txn = None;
            return Ok(());
        }
        self.close_truncate(out)?;
        self.flush_pending(out)?;
        let txn = self.txn.take().expect("checked above");
        if txn.written {
            out.push(Output {
                message: Message::Commit(Commit { commit_lsn, end_lsn, commit_time_us }),
                source_bytes: msg.len(),
            });
        }
        Ok(())
    }

    fn message(&mut self, msg: &[u8], head: &Head, out: &mut Vec<Output>) -> Result<()> {
        let transactional = head.transactional.unwrap_or(false);
        let lsn = self.lsn(msg, &head.lsn, "MESSAGE")?;
        let prefix = match &head.prefix {
            Some(p) => str_owned(msg, p, &mut self.scratch)?,
            None => return bad("MESSAGE without \"prefix\""),
        };
        if transactional {
            let Some(txn) = &self.txn else {
                return bad("transactional MESSAGE outside a transaction");
            };
            if txn.filtered {
                return Ok(());
            }
        }
        if !self.options.message_wanted(&prefix) {
            return Ok(());
        }
        let content = match &head.content {
            Some(c) => Buffer::from_vec(str_bytes(msg, c, &mut self.scratch)?.to_vec()),
            None => Buffer::from_vec(Vec::<u8>::new()),
        };
        if transactional {
            self.ensure_begin(out, 0);
            self.close_truncate(out)?;
            self.flush_pending(out)?;
        }
        out.push(Output {
            message: Message::Message { transactional, lsn, prefix, content },
            source_bytes: msg.len(),
        });
        Ok(())
    }

    /// The table a change names, by (schema, table) as wal2json wrote them.
    fn find_table(&mut self, msg: &[u8], head: &Head) -> Result<(Option<usize>, String, String)> {
        let (Some(schema), Some(table)) = (&head.schema, &head.table) else {
            return bad("a change without \"schema\" and \"table\"");
        };
        if let Some(i) = self.last_table {
            let t = &self.tables[i];
            if str_eq(msg, schema, &t.schema, &mut self.scratch)
                && str_eq(msg, table, &t.table, &mut self.scratch)
            {
                return Ok((Some(i), String::new(), String::new()));
            }
        }
        let schema = str_owned(msg, schema, &mut self.scratch)?;
        let table = str_owned(msg, table, &mut self.scratch)?;
        let found = self.by_name.get(&(schema.clone(), table.clone())).copied();
        if found.is_some() {
            self.last_table = found;
        }
        Ok((found, schema, table))
    }

    fn change(
        &mut self,
        msg: &[u8],
        head: &Head,
        cols: &[Col],
        identity: &[Col],
        pk: &[Str],
        out: &mut Vec<Output>,
    ) -> Result<()> {
        let Some(txn) = &self.txn else { return bad("a change outside a transaction") };
        if txn.filtered {
            return Ok(());
        }
        let lsn = self.lsn(msg, &head.lsn, "a change")?;
        let (found, schema, table) = self.find_table(msg, head)?;
        if let Some(i) = found
            && !self.tables[i].included
        {
            return Ok(());
        }
        if found.is_none() && !self.options.tables.includes(&schema, &table) {
            // Remember the exclusion so the next change of the table is dropped at once.
            return self.remember_excluded(schema, table);
        }
        let image = match head.action {
            b'D' => {
                if !head.has_identity {
                    return bad("DELETE without \"identity\"");
                }
                identity
            }
            _ => {
                if !head.has_columns {
                    return bad("INSERT or UPDATE without \"columns\"");
                }
                cols
            }
        };
        let pk_names = if head.has_pk {
            Some(
                pk.iter()
                    .map(|s| str_owned(msg, s, &mut self.scratch))
                    .collect::<std::result::Result<Vec<_>, _>>()?,
            )
        } else {
            None
        };
        // The table's description: keep it if the change fits, else (re)build it.
        // Rows before a gathered TRUNCATE go out first (the plugin writes it at once).
        self.close_truncate(out)?;
        let current = match found {
            Some(i) => {
                let fits = match head.action {
                    b'I' => self.fits_exactly(msg, i, cols),
                    b'U' => {
                        self.fits_new_image(msg, i, cols) && self.fits_old_image(msg, i, identity)
                    }
                    _ => self.fits_old_image(msg, i, identity),
                } && pk_names
                    .as_ref()
                    .is_none_or(|p| self.tables[i].json_pk.as_ref().is_none_or(|known| known == p));
                fits.then_some(i)
            }
            None => None,
        };
        let i = match current {
            Some(i) => i,
            None => {
                let (schema, table) = match found {
                    Some(i) => (self.tables[i].schema.clone(), self.tables[i].table.clone()),
                    None => (schema, table),
                };
                let source = match head.action {
                    b'D' => Source::Catalog,
                    b'U' => Source::Update(image),
                    _ => Source::Insert(image),
                };
                self.describe(msg, found, schema, table, source, pk_names, out)?
            }
        };
        // From here on nothing asks the catalog.
        self.ensure_begin(out, 0);
        self.ensure_schema(i, out);
        let old_image = head.action == b'U'
            && head.has_identity
            && self.wants_old_image(msg, i, cols, identity);
        // The batching policy the plugin follows (wal2arrow_schema::encode): a change's images
        // stay in one batch.
        let images = 1 + usize::from(old_image);
        let encoder = &self.tables[i].encoder;
        if !encoder.room_for(images, self.options.batch_rows) || !encoder.accepts(lsn) {
            self.flush(i, out)?;
        }
        match head.action {
            b'I' => self.append(msg, i, ChangeOp::Insert, lsn, cols, false)?,
            b'U' => {
                if old_image {
                    self.append(msg, i, ChangeOp::UpdateBefore, lsn, identity, true)?;
                }
                self.append(msg, i, ChangeOp::Update, lsn, cols, false)?;
            }
            _ => self.append(msg, i, ChangeOp::Delete, lsn, identity, true)?,
        }
        self.tables[i].pending_bytes += msg.len();
        if self.tables[i].encoder.batch_full(self.options.batch_rows) {
            self.flush(i, out)?;
        }
        Ok(())
    }

    fn remember_excluded(&mut self, schema: String, table: String) -> Result<()> {
        let desc = RelationDesc {
            relid: 0,
            namespace: schema.clone(),
            name: table.clone(),
            columns: Vec::new(),
            primary_key: Vec::new(),
            replica_identity: ReplicaIdentity::Default,
            identity_key: Vec::new(),
            with_lsn: self.options.include_lsn,
        };
        let relation = Arc::new(Relation::from_desc(&desc).map_err(|e| Step::Bad(e.to_string()))?);
        let i = self.tables.len();
        self.tables.push(TableState {
            schema: schema.clone(),
            table: table.clone(),
            included: false,
            sig: Vec::new(),
            json_pk: None,
            info_fetch: 0,
            loose_identity: false,
            encoder: BatchEncoder::new(&desc),
            desc,
            relation,
            plans: Vec::new(),
            schema_sent: false,
            pending_bytes: 0,
        });
        self.by_name.insert((schema, table), i);
        self.last_table = Some(i);
        Ok(())
    }

    /// An INSERT's columns are exactly the table's.
    fn fits_exactly(&mut self, msg: &[u8], i: usize, cols: &[Col]) -> bool {
        let sig = &self.tables[i].sig;
        cols.len() == sig.len()
            && cols.iter().zip(sig).all(|(c, s)| col_matches(msg, c, s, &mut self.scratch))
    }

    /// An UPDATE's new image: the table's columns, less unchanged TOAST values.
    fn fits_new_image(&mut self, msg: &[u8], i: usize, cols: &[Col]) -> bool {
        let sig = &self.tables[i].sig;
        let mut next = 0;
        for c in cols {
            loop {
                let Some(s) = sig.get(next) else { return false };
                next += 1;
                if col_matches(msg, c, s, &mut self.scratch) {
                    break;
                }
                if !s.varlena {
                    return false;
                }
            }
        }
        sig[next..].iter().all(|s| s.varlena)
    }

    /// An old image: some of the table's columns, in order, all in the identity key (with
    /// `NOTHING` wal2json copies the whole new row, which is ignored).
    fn fits_old_image(&mut self, msg: &[u8], i: usize, ident: &[Col]) -> bool {
        let t = &self.tables[i];
        if t.desc.replica_identity == ReplicaIdentity::Nothing || t.loose_identity {
            return true;
        }
        let mut next = 0;
        for c in ident {
            loop {
                let Some(s) = t.sig.get(next) else { return false };
                next += 1;
                if col_matches(msg, c, s, &mut self.scratch) {
                    if !t.desc.identity_key.contains(&s.name) {
                        return false;
                    }
                    break;
                }
            }
        }
        true
    }

    /// Whether an UPDATE's `identity` is an old image PostgreSQL logged (the plugin then sends
    /// an `update_before` row), rather than the key wal2json copies from the new row when the
    /// key did not change.
    fn wants_old_image(&mut self, msg: &[u8], i: usize, cols: &[Col], ident: &[Col]) -> bool {
        match self.tables[i].desc.replica_identity {
            ReplicaIdentity::Full => true,
            ReplicaIdentity::Nothing => false,
            ReplicaIdentity::Default | ReplicaIdentity::Index => ident.iter().any(|k| {
                let new = cols
                    .iter()
                    .find(|c| msg.get(c.name.raw.clone()) == msg.get(k.name.raw.clone()));
                match (new.and_then(|c| c.value.as_ref()), k.value.as_ref()) {
                    (Some(a), Some(b)) => !scalar_eq(msg, a, b),
                    _ => true,
                }
            }),
        }
    }

    /// Builds (or rebuilds) table `found`'s description from `source`, asking the catalog for
    /// what the JSON lacks. Emits the old description's pending rows when the new one differs.
    #[allow(clippy::too_many_arguments)]
    fn describe(
        &mut self,
        msg: &[u8],
        found: Option<usize>,
        schema: String,
        table: String,
        source: Source<'_>,
        json_pk: Option<Vec<String>>,
        out: &mut Vec<Output>,
    ) -> Result<usize> {
        let key = (schema.clone(), table.clone());
        // The catalog's view: fetched again when it may predate the change that made the
        // description differ.
        let info = match self.catalog.tables.get(&key) {
            Some((info, fetch)) if found.is_none_or(|i| *fetch > self.tables[i].info_fetch) => {
                (info.clone(), *fetch)
            }
            _ => return Err(Step::Need(Lookup::Table { schema, table })),
        };
        let (info, info_fetch) = info;
        let sig: Vec<SigCol> = match source {
            Source::Insert(cols) | Source::Update(cols) => {
                let mut sig = Vec::with_capacity(cols.len());
                for c in cols {
                    let (Some(ty), Some(type_oid)) = (&c.ty, c.typeoid) else {
                        return bad("a column without \"type\" and \"typeoid\"");
                    };
                    sig.push(SigCol {
                        name: str_owned(msg, &c.name, &mut self.scratch)?,
                        type_oid,
                        type_text: str_owned(msg, ty, &mut self.scratch)?,
                        not_null: c.optional.map(|o| !o),
                        varlena: false,
                        from_catalog: false,
                    });
                }
                sig
            }
            Source::Catalog => info
                .as_ref()
                .map(|t| {
                    t.columns
                        .iter()
                        .map(|c| SigCol {
                            name: c.name.clone(),
                            type_oid: c.type_oid,
                            type_text: c.format.clone(),
                            not_null: Some(c.not_null),
                            varlena: false,
                            from_catalog: false,
                        })
                        .collect()
                })
                .unwrap_or_default(),
        };
        // An UPDATE's image leaves unchanged TOAST values out: the catalog's variable-length
        // columns it lacks are put back in their place (as missing values), so that the table
        // does not seem to have lost them.
        let sig = match (&source, info.as_ref()) {
            (Source::Update(_), Some(t)) => with_toast_gaps(sig, t),
            _ => sig,
        };
        // Every type, with what it refers to.
        let missing: Vec<u32> = {
            let mut missing: Vec<u32> = Vec::new();
            for s in &sig {
                let (ndims, typmod) = (1, -1);
                if let Err(oid) = self.catalog.kind(s.type_oid, typmod, ndims, false)
                    && !missing.contains(&oid)
                {
                    missing.push(oid);
                }
            }
            missing
        };
        if !missing.is_empty() {
            return Err(Step::Need(Lookup::Types(missing)));
        }
        // Put-back columns that are not variable-length cannot be unchanged TOAST values.
        let mut sig: Vec<SigCol> = sig
            .into_iter()
            .filter(|s| {
                !s.from_catalog
                    || self.catalog.ty(s.type_oid).ok().flatten().is_some_and(|t| t.typlen == -1)
            })
            .collect();
        let mut columns = Vec::with_capacity(sig.len());
        let mut plans = Vec::with_capacity(sig.len());
        for s in &mut sig {
            let known = info.as_ref().and_then(|t| {
                t.columns.iter().find(|c| c.name == s.name && c.type_oid == s.type_oid)
            });
            let typmod = known
                .filter(|c| c.format == s.type_text)
                .map(|c| c.typmod)
                .or_else(|| text::parse_typmod(&s.type_text))
                .unwrap_or(-1);
            let ndims = known.map_or(1, |c| c.ndims);
            let (kind, delim) = self
                .catalog
                .kind(s.type_oid, typmod, ndims, self.options.numeric_as_string)
                .map_err(|oid| Step::Need(Lookup::Types(vec![oid])))?;
            let ty = self.catalog.ty(s.type_oid).ok().flatten();
            s.varlena = ty.is_some_and(|t| t.typlen == -1);
            plans.push(ColPlan {
                delim,
                nan_as_null: !self.numbers_as_strings
                    && matches!(s.type_oid, oid::FLOAT4 | oid::FLOAT8 | oid::NUMERIC),
                warned: false,
                kind: kind.clone(),
            });
            columns.push(ColumnDesc {
                name: s.name.clone(),
                type_oid: s.type_oid,
                typmod,
                type_name: ty.map_or_else(|| s.type_text.clone(), |t| t.name.clone()),
                not_null: s.not_null.or(known.map(|c| c.not_null)).unwrap_or(false),
                generated: known.is_some_and(|c| c.generated),
                kind,
            });
        }
        let names: Vec<&str> = columns.iter().map(|c| c.name.as_str()).collect();
        let in_table = |list: &[String]| list.iter().all(|n| names.contains(&n.as_str()));
        let set_eq =
            |a: &[String], b: &[String]| a.len() == b.len() && a.iter().all(|n| b.contains(n));
        let catalog_pk = info.as_ref().map(|t| t.primary_key.clone());
        let primary_key = match (&catalog_pk, &json_pk) {
            (Some(c), Some(j)) if set_eq(c, j) => c.clone(),
            (_, Some(j)) => j.clone(),
            (Some(c), None) if in_table(c) => c.clone(),
            _ => Vec::new(),
        };
        let replica_identity =
            info.as_ref().map_or(ReplicaIdentity::Default, |t| t.replica_identity);
        let identity_key = match replica_identity {
            ReplicaIdentity::Full => columns.iter().map(|c| c.name.clone()).collect(),
            ReplicaIdentity::Nothing => Vec::new(),
            _ => match info.as_ref() {
                Some(t) if in_table(&t.identity_key) => t.identity_key.clone(),
                // Without the catalog: the primary key, in column order (the bitmap order).
                _ => names
                    .iter()
                    .filter(|n| primary_key.iter().any(|p| p == *n))
                    .map(|n| (*n).to_owned())
                    .collect(),
            },
        };
        let desc = RelationDesc {
            relid: info.as_ref().map_or(0, |t| t.relid),
            namespace: schema.clone(),
            name: table.clone(),
            columns,
            primary_key,
            replica_identity,
            identity_key,
            with_lsn: self.options.include_lsn,
        };
        if let Some(i) = found {
            let t = &mut self.tables[i];
            let unchanged = t.sig == sig && t.json_pk == json_pk;
            t.sig = sig;
            t.json_pk = json_pk;
            t.info_fetch = info_fetch;
            if t.desc == desc {
                t.loose_identity = unchanged;
                return Ok(i);
            }
            t.loose_identity = false;
            // The table changed: its rows so far go out under the description the consumer
            // holds, then the new one is announced before the next row.
            self.flush(i, out)?;
            let t = &mut self.tables[i];
            t.relation =
                Arc::new(Relation::from_desc(&desc).map_err(|e| Step::Bad(e.to_string()))?);
            t.encoder = BatchEncoder::new(&desc);
            t.desc = desc;
            t.plans = plans;
            t.schema_sent = false;
            t.included = true;
            return Ok(i);
        }
        let relation = Arc::new(Relation::from_desc(&desc).map_err(|e| Step::Bad(e.to_string()))?);
        let i = self.tables.len();
        self.tables.push(TableState {
            schema: schema.clone(),
            table: table.clone(),
            included: true,
            sig,
            json_pk,
            info_fetch,
            loose_identity: false,
            encoder: BatchEncoder::new(&desc),
            desc,
            relation,
            plans,
            schema_sent: false,
            pending_bytes: 0,
        });
        self.by_name.insert((schema, table), i);
        self.last_table = Some(i);
        Ok(i)
    }

    fn ensure_schema(&mut self, i: usize, out: &mut Vec<Output>) {
        let t = &mut self.tables[i];
        if !t.schema_sent {
            t.schema_sent = true;
            out.push(Output { message: Message::Schema(Arc::clone(&t.relation)), source_bytes: 0 });
        }
    }

    /// Appends one row from a change's columns (`old`: an old image, whose columns outside
    /// the identity key are missing).
    fn append(
        &mut self,
        msg: &[u8],
        i: usize,
        op: ChangeOp,
        lsn: Lsn,
        image: &[Col],
        old: bool,
    ) -> Result<()> {
        let txn = self.txn.as_mut().expect("changes are inside a transaction");
        if self.tables[i].encoder.rows() == 0 && !txn.pending.contains(&i) {
            txn.pending.push(i);
        }
        // Which JSON column holds each table column (by name, in order).
        let t = &mut self.tables[i];
        self.slots.clear();
        let mut next = 0;
        for s in &t.sig {
            let at = image[next..]
                .iter()
                .position(|c| str_eq(msg, &c.name, &s.name, &mut self.scratch))
                .map(|p| next + p);
            if let Some(at) = at {
                next = at + 1;
            }
            self.slots.push(at);
        }
        t.encoder.start_row(op, lsn).map_err(|e| Step::Bad(e.to_string()))?;
        for (c, slot) in self.slots.iter().enumerate() {
            let value = slot.and_then(|s| image[s].value.as_ref());
            let in_key = !old || t.desc.identity_key.contains(&t.desc.columns[c].name);
            let plan = &mut t.plans[c];
            let builder = t.encoder.column(c);
            let appended = match value {
                None => Appended::Missing,
                Some(_) if !in_key => Appended::Missing,
                Some(Scalar::Null) if plan.nan_as_null && t.desc.columns[c].not_null => {
                    // A NOT NULL float or numeric column: wal2json's `null` is NaN or
                    // ±Infinity, which one is unknown.
                    builder.append_null();
                    Appended::Unrepresentable
                }
                Some(Scalar::Null) => {
                    builder.append_null();
                    Appended::Value
                }
                Some(v) => append_value(&plan.kind, plan.delim, builder, msg, v, &mut self.scratch),
            };
            match appended {
                Appended::Value => {}
                Appended::Missing => {
                    t.encoder.column(c).append_null();
                    t.encoder.mark_missing(c);
                }
                Appended::Unrepresentable => t.encoder.mark_unrepresentable(c),
                Appended::Unparsed => {
                    if !plan.warned {
                        plan.warned = true;
                        tracing::warn!(
                            table = %format!("{}.{}", t.schema, t.table),
                            column = %t.desc.columns[c].name,
                            "wal2json fallback: a value of type {} could not be parsed; \
                             it is reported in _unrepresentable",
                            t.desc.columns[c].type_name
                        );
                    }
                    t.encoder.column(c).append_null();
                    t.encoder.mark_unrepresentable(c);
                }
            }
        }
        Ok(())
    }

    /// Emits table `i`'s rows so far as one Batch.
    fn flush(&mut self, i: usize, out: &mut Vec<Output>) -> Result<()> {
        let t = &mut self.tables[i];
        let Some(WireBatch { batch, base_lsn, has_missing, has_unrepresentable }) =
            t.encoder.finish_batch().map_err(|e| Step::Bad(e.to_string()))?
        else {
            return Ok(());
        };
        let batch = t
            .relation
            .user_batch(base_lsn, &batch, has_missing, has_unrepresentable)
            .map_err(|e| Step::Bad(e.to_string()))?;
        out.push(Output {
            message: Message::Batch(DecodedBatch {
                relation: Arc::clone(&t.relation),
                base_lsn,
                batch,
            }),
            source_bytes: std::mem::take(&mut t.pending_bytes),
        });
        Ok(())
    }

    fn flush_pending(&mut self, out: &mut Vec<Output>) -> Result<()> {
        let pending = self.txn.as_mut().map(|t| std::mem::take(&mut t.pending)).unwrap_or_default();
        for i in pending {
            self.flush(i, out)?;
        }
        Ok(())
    }

    fn truncate(&mut self, msg: &[u8], head: &Head, out: &mut Vec<Output>) -> Result<()> {
        let Some(txn) = &self.txn else { return bad("TRUNCATE outside a transaction") };
        if txn.filtered {
            return Ok(());
        }
        let lsn = self.lsn(msg, &head.lsn, "TRUNCATE")?;
        let (found, schema, table) = self.find_table(msg, head)?;
        let i = match found {
            Some(i) if !self.tables[i].included => return Ok(()),
            Some(i) => i,
            None if !self.options.tables.includes(&schema, &table) => {
                return self.remember_excluded(schema, table);
            }
            None => self.describe(msg, None, schema, table, Source::Catalog, None, out)?,
        };
        self.ensure_begin(out, 0);
        let same = self.txn.as_ref().and_then(|t| t.truncate.as_ref()).is_some_and(|t| t.0 == lsn);
        if !same {
            self.close_truncate(out)?;
        }
        self.ensure_schema(i, out);
        let relation = Arc::clone(&self.tables[i].relation);
        let txn = self.txn.as_mut().expect("checked above");
        let group = txn.truncate.get_or_insert_with(|| (lsn, Vec::new(), 0));
        group.1.push(relation);
        group.2 += msg.len();
        Ok(())
    }

    /// Emits a gathered TRUNCATE, after the rows before it.
    fn close_truncate(&mut self, out: &mut Vec<Output>) -> Result<()> {
        let Some((_, relations, bytes)) = self.txn.as_mut().and_then(|t| t.truncate.take()) else {
            return Ok(());
        };
        self.flush_pending(out)?;
        out.push(Output {
            message: Message::Truncate { relations, cascade: None, restart_identity: None },
            source_bytes: bytes,
        });
        Ok(())
    }
}

fn col_matches(msg: &[u8], c: &Col, s: &SigCol, scratch: &mut Vec<u8>) -> bool {
    c.typeoid == Some(s.type_oid)
        && (c.optional.is_none() || c.optional.map(|o| !o) == s.not_null)
        && str_eq(msg, &c.name, &s.name, scratch)
        && c.ty.as_ref().is_some_and(|t| str_eq(msg, t, &s.type_text, scratch))
}

fn scalar_eq(msg: &[u8], a: &Scalar, b: &Scalar) -> bool {
    match (a, b) {
        (Scalar::Null, Scalar::Null) => true,
        (Scalar::Bool(x), Scalar::Bool(y)) => x == y,
        (Scalar::Number(x), Scalar::Number(y)) => msg.get(x.clone()) == msg.get(y.clone()),
        (Scalar::Str(x), Scalar::Str(y)) => {
            x.escaped == y.escaped && msg.get(x.raw.clone()) == msg.get(y.raw.clone())
        }
        _ => false,
    }
}

/// Parses one message's top level, collecting the column arrays.
fn parse(
    msg: &[u8],
    cols: &mut Vec<Col>,
    identity: &mut Vec<Col>,
    pk: &mut Vec<Str>,
) -> Result<Head> {
    let mut s = Scanner::new(msg);
    let mut head = Head::default();
    s.begin_object()?;
    let mut first = true;
    let mut scratch = Vec::new();
    while let Some(key) = s.next_key(first)? {
        first = false;
        let key = str_bytes(msg, &key, &mut scratch)?;
        match key {
            b"action" => {
                let a = s.string()?;
                head.action = match msg.get(a.raw.clone()) {
                    Some([a]) => *a,
                    _ => return bad("unknown action"),
                };
            }
            b"xid" => head.xid = nullable(&mut s, Scanner::u32)?,
            b"origin" => head.origin = nullable(&mut s, Scanner::u32)?,
            b"timestamp" => head.timestamp = nullable(&mut s, Scanner::string)?,
            b"lsn" => head.lsn = nullable(&mut s, Scanner::string)?,
            b"nextlsn" => head.nextlsn = nullable(&mut s, Scanner::string)?,
            b"schema" => head.schema = Some(s.string()?),
            b"table" => head.table = Some(s.string()?),
            b"transactional" => head.transactional = Some(s.bool()?),
            b"prefix" => head.prefix = Some(s.string()?),
            b"content" => head.content = Some(s.string()?),
            b"columns" => {
                head.has_columns = true;
                columns(&mut s, cols, &mut scratch)?;
            }
            b"identity" => {
                head.has_identity = true;
                columns(&mut s, identity, &mut scratch)?;
            }
            b"pk" => {
                head.has_pk = true;
                s.begin_array()?;
                let mut first = true;
                while s.next_item(first)? {
                    first = false;
                    s.begin_object()?;
                    let mut first_key = true;
                    while let Some(k) = s.next_key(first_key)? {
                        first_key = false;
                        if str_bytes(msg, &k, &mut scratch)? == b"name" {
                            pk.push(s.string()?);
                        } else {
                            s.skip()?;
                        }
                    }
                }
            }
            _ => s.skip()?,
        }
    }
    s.end()?;
    if head.action == 0 {
        return bad("a message without \"action\"");
    }
    Ok(head)
}

/// A value that may be `null` (wal2json writes `"xid":null` for non-transactional messages).
fn nullable<'a, T>(
    s: &mut Scanner<'a>,
    read: impl FnOnce(&mut Scanner<'a>) -> json::Result<T>,
) -> Result<Option<T>> {
    // `null` is the only value starting with 'n'.
    if s.peek_byte() == Some(b'n') {
        s.scalar()?;
        return Ok(None);
    }
    Ok(Some(read(s)?))
}

fn columns(s: &mut Scanner<'_>, out: &mut Vec<Col>, scratch: &mut Vec<u8>) -> Result<()> {
    let msg = s.buf();
    s.begin_array()?;
    let mut first = true;
    while s.next_item(first)? {
        first = false;
        s.begin_object()?;
        let mut col = Col {
            name: Str { raw: 0..0, escaped: false },
            ty: None,
            typeoid: None,
            value: None,
            optional: None,
        };
        let mut named = false;
        let mut first_key = true;
        while let Some(k) = s.next_key(first_key)? {
            first_key = false;
            match str_bytes(msg, &k, scratch)? {
                b"name" => {
                    col.name = s.string()?;
                    named = true;
                }
                b"type" => col.ty = Some(s.string()?),
                b"typeoid" => col.typeoid = Some(s.u32()?),
                b"value" => {
                    if s.next_is()? != Next::Scalar {
                        return bad("a column value that is not a scalar");
                    }
                    col.value = Some(s.scalar()?);
                }
                b"optional" => col.optional = Some(s.bool()?),
                _ => s.skip()?,
            }
        }
        if !named {
            return bad("a column without \"name\"");
        }
        out.push(col);
    }
    Ok(())
}

/// How appending a value went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Appended {
    /// Appended (a value or NULL).
    Value,
    /// Not in the change: nothing appended yet.
    Missing,
    /// Appended, but not all of it: a NULL for a value Arrow cannot hold (NaN in a
    /// Decimal128 column), or an array with NULL for the elements that could not be read.
    /// The column goes in `_unrepresentable`.
    Unrepresentable,
    /// The text could not be parsed: nothing appended.
    Unparsed,
}

/// The text of a scalar: a string's bytes (unescaped), a number's digits, `t`/`f`.
fn scalar_text<'s>(msg: &'s [u8], v: &Scalar, scratch: &'s mut Vec<u8>) -> Option<&'s str> {
    let bytes: &[u8] = match v {
        Scalar::Str(s) => str_bytes(msg, s, scratch).ok()?,
        Scalar::Number(r) => msg.get(r.clone())?,
        Scalar::Bool(true) => b"t",
        Scalar::Bool(false) => b"f",
        Scalar::Null => return None,
    };
    std::str::from_utf8(bytes).ok()
}

/// Appends one non-NULL value of `kind` from its JSON form.
fn append_value(
    kind: &PgKind,
    delim: u8,
    builder: &mut ColumnBuilder,
    msg: &[u8],
    v: &Scalar,
    scratch: &mut Vec<u8>,
) -> Appended {
    if let (ColumnBuilder::Utf8(b), Scalar::Str(s)) = (&mut *builder, v) {
        // Text of every kind shown as text: the bytes as they came (lossy only for invalid
        // UTF-8, which a UTF-8 database never sends).
        return match str_bytes(msg, s, scratch) {
            Ok(bytes) => {
                match std::str::from_utf8(bytes) {
                    Ok(t) => b.append_value(t),
                    Err(_) => b.append_value(String::from_utf8_lossy(bytes)),
                }
                Appended::Value
            }
            Err(_) => Appended::Unparsed,
        };
    }
    if let ColumnBuilder::List(_) = builder {
        let Some(literal) = scalar_text(msg, v, scratch).map(str::to_owned) else {
            return Appended::Unparsed;
        };
        return append_text_value(kind, delim, builder, &literal);
    }
    let Some(t) = scalar_text(msg, v, scratch) else { return Appended::Unparsed };
    append_text(kind, builder, t)
}

/// Appends one non-NULL value of `kind` from PostgreSQL's text form: an array from its
/// literal (elements separated by `delim`), anything else as [`append_text`] does.
fn append_text_value(kind: &PgKind, delim: u8, builder: &mut ColumnBuilder, t: &str) -> Appended {
    let ColumnBuilder::List(list) = builder else { return append_text(kind, builder, t) };
    let PgKind::Array { element, dims, .. } = kind else { return Appended::Unparsed };
    let mut elements: Vec<Option<String>> = Vec::new();
    let Some(shape_dims) = text::parse_array(t, delim, &mut |e: Option<&str>| {
        elements.push(e.map(str::to_owned));
        true
    }) else {
        return Appended::Unparsed;
    };
    let shape = wal2arrow_schema::types::array_shape(&shape_dims, usize::from(*dims));
    let mut whole = true;
    append_level(list, element, &shape, &elements, &mut whole);
    if whole { Appended::Value } else { Appended::Unrepresentable }
}

/// Appends array elements as nested lists of `shape`, as the plugin does. An element that
/// cannot be read (or held: NaN in `numeric(p, s)[]`) is NULL, and `whole` turns false.
fn append_level(
    list: &mut wal2arrow_schema::encode::ListColumn,
    element: &PgKind,
    shape: &[usize],
    elements: &[Option<String>],
    whole: &mut bool,
) {
    if shape.len() <= 1 {
        for e in elements {
            match e {
                None => list.values().append_null(),
                Some(text) => match append_text(element, list.values(), text) {
                    Appended::Value => {}
                    Appended::Unrepresentable => *whole = false,
                    Appended::Missing | Appended::Unparsed => {
                        list.values().append_null();
                        *whole = false;
                    }
                },
            }
        }
    } else {
        let chunk = elements.len().checked_div(shape[0]).unwrap_or(0);
        if chunk > 0 {
            for part in elements.chunks(chunk) {
                match list.values() {
                    ColumnBuilder::List(inner) => {
                        append_level(inner, element, &shape[1..], part, whole)
                    }
                    // The shape promised more levels than the builder has (cannot happen for
                    // a shape made for this column): keep the value well-formed.
                    other => {
                        other.append_null();
                        *whole = false;
                    }
                }
            }
        }
    }
    list.close();
}

/// Appends one value of `kind` from PostgreSQL's text form.
fn append_text(kind: &PgKind, builder: &mut ColumnBuilder, t: &str) -> Appended {
    macro_rules! put {
        ($b:expr, $v:expr) => {
            match $v {
                Some(v) => {
                    $b.append_value(v);
                    Appended::Value
                }
                None => Appended::Unparsed,
            }
        };
    }
    match builder {
        ColumnBuilder::Bool(b) => put!(b, text::parse_bool(t)),
        ColumnBuilder::Int16(b) => put!(b, t.parse::<i16>().ok()),
        ColumnBuilder::Int32(b) => put!(b, t.parse::<i32>().ok()),
        ColumnBuilder::Int64(b) => match kind {
            PgKind::Money => put!(b, text::parse_money(t)),
            _ => put!(b, t.parse::<i64>().ok()),
        },
        ColumnBuilder::UInt32(b) => put!(b, t.parse::<u32>().ok()),
        ColumnBuilder::Float32(b) => put!(b, parse_float::<f32>(t)),
        ColumnBuilder::Float64(b) => put!(b, parse_float::<f64>(t)),
        ColumnBuilder::Decimal128(b) => {
            let PgKind::Decimal { scale, .. } = kind else { return Appended::Unparsed };
            if matches!(t, "NaN" | "Infinity" | "-Infinity") {
                b.append_null();
                return Appended::Unrepresentable;
            }
            put!(b, text::parse_decimal(t, *scale))
        }
        ColumnBuilder::Utf8(b) => {
            b.append_value(t);
            Appended::Value
        }
        ColumnBuilder::Binary(b) => {
            let mut bytes = Vec::with_capacity(t.len() / 2);
            if text::parse_bytea_hex(t, &mut bytes) {
                b.append_value(&bytes);
                Appended::Value
            } else {
                Appended::Unparsed
            }
        }
        ColumnBuilder::FixedSizeBinary(b) => match text::parse_uuid(t) {
            Some(u) => match b.append_value(u) {
                Ok(()) => Appended::Value,
                Err(_) => Appended::Unparsed,
            },
            None => Appended::Unparsed,
        },
        ColumnBuilder::Date32(b) => put!(b, text::parse_date(t)),
        ColumnBuilder::Time64(b) => match text::parse_time(t) {
            // 24:00:00: PostgreSQL's, not Arrow's.
            Some(us) if wal2arrow_schema::types::time_to_arrow(us).is_none() => {
                b.append_null();
                Appended::Unrepresentable
            }
            parsed => put!(b, parsed),
        },
        ColumnBuilder::Timestamp(b) => put!(b, text::parse_timestamp(t)),
        ColumnBuilder::Interval(b) => match text::parse_interval(t) {
            Some((m, d, us)) => {
                ColumnBuilder::append_interval(b, m, d, us);
                Appended::Value
            }
            None => Appended::Unparsed,
        },
        ColumnBuilder::TimeTz(b) => match text::parse_timetz(t) {
            Some((us, _)) if wal2arrow_schema::types::time_to_arrow(us).is_none() => {
                b.append_null();
                Appended::Unrepresentable
            }
            Some((us, offset)) => {
                b.append_value(us, offset);
                Appended::Value
            }
            None => Appended::Unparsed,
        },
        ColumnBuilder::List(_) => Appended::Unparsed,
    }
}

/// A float as PostgreSQL prints it: the shortest text that reads back exactly (parsed at the
/// column's own width, never through a wider type), `NaN`, `Infinity`, `-Infinity`.
fn parse_float<F: std::str::FromStr>(t: &str) -> Option<F> {
    match t {
        "NaN" => "NaN".parse().ok(),
        "Infinity" => "inf".parse().ok(),
        "-Infinity" => "-inf".parse().ok(),
        _ if t.bytes().any(|b| b.is_ascii_alphabetic() && !matches!(b, b'e' | b'E')) => None,
        _ => t.parse().ok(),
    }
}

/// A decoder whose catalog already knows `public.t (id int4 NOT NULL, note text, amount
/// numeric(12,2), at timestamptz, tags int4[])`: for tests, benchmarks and fuzz targets.
#[doc(hidden)]
pub fn sample_decoder() -> JsonDecoder {
    let mut d =
        JsonDecoder::new(PluginOptions { batch_rows: 100, ..PluginOptions::default() }, false);
    let ty = |name: &str, typlen: i16, elem: u32| {
        Some(TypeInfo {
            name: name.into(),
            typtype: b'b',
            base: 0,
            typtypmod: -1,
            elem,
            typlen,
            delim: b',',
        })
    };
    for (oid, info) in [
        (oid::INT4, ty("int4", 4, 0)),
        (oid::TEXT, ty("text", -1, 0)),
        (oid::NUMERIC, ty("numeric", -1, 0)),
        (oid::TIMESTAMPTZ, ty("timestamptz", 8, 0)),
        (1007, ty("_int4", -1, oid::INT4)),
    ] {
        d.catalog.put_type(oid, info);
    }
    let col = |name: &str, type_oid: u32, typmod: i32, format: &str| CatalogColumn {
        name: name.into(),
        type_oid,
        typmod,
        ndims: i32::from(type_oid == 1007),
        not_null: name == "id",
        generated: false,
        format: format.into(),
    };
    d.catalog.put_table(
        "public".into(),
        "t".into(),
        Some(TableInfo {
            relid: 4242,
            replica_identity: ReplicaIdentity::Default,
            primary_key: vec!["id".into()],
            identity_key: vec!["id".into()],
            columns: vec![
                col("id", oid::INT4, -1, "integer"),
                col("note", oid::TEXT, -1, "text"),
                col("amount", oid::NUMERIC, (12 << 16) + 2 + 4, "numeric(12,2)"),
                col("at", oid::TIMESTAMPTZ, -1, "timestamp with time zone"),
                col("tags", 1007, -1, "integer[]"),
            ],
        }),
    );
    d
}

#[cfg(test)]
mod tests {
    use arrow_array::Array;
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Decimal128Type, Int32Type, TimestampMicrosecondType};

    use super::*;

    fn decoder() -> JsonDecoder {
        sample_decoder()
    }

    const BEGIN: &str = r#"{"action":"B","xid":731,"timestamp":"2024-05-06 07:08:09.123456+00","origin":0,"lsn":"0/16B3F48","nextlsn":"0/16B3F78"}"#;
    const INSERT: &str = r#"{"action":"I","xid":731,"timestamp":"2024-05-06 07:08:09.123456+00","origin":0,"lsn":"0/16B3E00","schema":"public","table":"t","columns":[{"name":"id","type":"integer","typeoid":23,"value":1,"optional":false},{"name":"note","type":"text","typeoid":25,"value":"a \"quoted\"\\ \u00e9 ✓\n","optional":true},{"name":"amount","type":"numeric(12,2)","typeoid":1700,"value":-12.50,"optional":true},{"name":"at","type":"timestamp with time zone","typeoid":1184,"value":"1999-12-31 23:59:59.5+00","optional":true},{"name":"tags","type":"integer[]","typeoid":1007,"value":"{1,NULL,3}","optional":true}],"pk":[{"name":"id","type":"integer","typeoid":23}]}"#;
    const UPDATE: &str = r#"{"action":"U","xid":731,"timestamp":"2024-05-06 07:08:09.123456+00","origin":0,"lsn":"0/16B3E80","schema":"public","table":"t","columns":[{"name":"id","type":"integer","typeoid":23,"value":2,"optional":false},{"name":"amount","type":"numeric(12,2)","typeoid":1700,"value":null,"optional":true},{"name":"at","type":"timestamp with time zone","typeoid":1184,"value":null,"optional":true},{"name":"tags","type":"integer[]","typeoid":1007,"value":"{}","optional":true}],"identity":[{"name":"id","type":"integer","typeoid":23,"value":1}],"pk":[{"name":"id","type":"integer","typeoid":23}]}"#;
    const DELETE: &str = r#"{"action":"D","xid":731,"timestamp":"2024-05-06 07:08:09.123456+00","origin":0,"lsn":"0/16B3F00","schema":"public","table":"t","identity":[{"name":"id","type":"integer","typeoid":23,"value":2}],"pk":[{"name":"id","type":"integer","typeoid":23}]}"#;
    const TRUNCATE: &str = r#"{"action":"T","xid":731,"timestamp":"2024-05-06 07:08:09.123456+00","origin":0,"lsn":"0/16B3F10","schema":"public","table":"t"}"#;
    const MESSAGE: &str = r#"{"action":"M","xid":731,"timestamp":"2024-05-06 07:08:09.123456+00","origin":0,"lsn":"0/16B3F20","transactional":true,"prefix":"app","content":"hello \"x\""}"#;
    const COMMIT: &str = r#"{"action":"C","xid":731,"timestamp":"2024-05-06 07:08:09.123456+00","origin":0,"lsn":"0/16B3F48","nextlsn":"0/16B3F78"}"#;
    const ALL: [&str; 7] = [BEGIN, INSERT, UPDATE, DELETE, TRUNCATE, MESSAGE, COMMIT];

    fn feed(d: &mut JsonDecoder, msgs: &[&str]) -> std::result::Result<Vec<Output>, DecodeError> {
        let mut out = Vec::new();
        for m in msgs {
            if let Some(q) = d.decode_at(m.as_bytes(), Lsn(0x16B3E00), &mut out)? {
                panic!("the catalog was prepared, yet the decoder asks {q:?}");
            }
        }
        Ok(out)
    }

    #[test]
    fn a_transaction_decodes_into_the_plugins_messages() {
        let out = feed(&mut decoder(), &ALL).unwrap();
        let kinds: Vec<String> = out
            .iter()
            .map(|o| match &o.message {
                Message::Begin(b) => format!("B {} {}", b.xid, b.final_lsn),
                Message::Schema(r) => format!("S {} {}", r.qualified_name, r.relid),
                Message::Batch(b) => format!("R {}", b.batch.num_rows()),
                Message::Truncate { relations, cascade, .. } => {
                    format!("T {} {cascade:?}", relations.len())
                }
                Message::Message { prefix, content, .. } => {
                    format!("M {prefix} {}", String::from_utf8_lossy(content.as_slice()))
                }
                Message::Commit(c) => format!("C {} {}", c.commit_lsn, c.end_lsn),
                Message::Origin { .. } => "O".into(),
                other => panic!("wal2json never streams: {other:?}"),
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "B 731 0/16B3F48",
                "S public.t 4242",
                "R 4",
                "T 1 None",
                "M app hello \"x\"",
                "C 0/16B3F48 0/16B3F78"
            ]
        );
        let Message::Begin(b) = &out[0].message else { unreachable!() };
        // 2024-05-06 07:08:09.123456 UTC, in microseconds since 1970.
        assert_eq!(b.commit_time_us, 1_714_979_289_123_456);
        let Message::Batch(batch) = &out[2].message else { unreachable!() };
        let rows = &batch.batch;
        let ids = rows.column(0).as_primitive::<Int32Type>();
        assert_eq!(ids.values().as_ref(), [1, 1, 2, 2], "insert, update_before, update, delete");
        let note = rows.column(1).as_string::<i32>();
        assert_eq!(note.value(0), "a \"quoted\"\\ é ✓\n");
        let amount = rows.column(2).as_primitive::<Decimal128Type>();
        assert_eq!((amount.value(0), amount.is_null(2)), (-1250, true));
        let at = rows.column(3).as_primitive::<TimestampMicrosecondType>();
        assert_eq!(at.value(0), 946_684_799_500_000);
        let tags = rows.column(4).as_list::<i32>();
        assert_eq!(
            tags.value(0).as_primitive::<Int32Type>().iter().collect::<Vec<_>>(),
            [Some(1), None, Some(3)]
        );
        assert_eq!(tags.value(2).len(), 0);
        // The UPDATE left `note` out (an unchanged TOAST value); the old key has only `id`.
        let missing = rows.column_by_name("_missing").unwrap().as_list::<i32>();
        let names = |r: usize| -> Vec<String> {
            if missing.is_null(r) {
                return Vec::new();
            }
            let v = missing.value(r);
            v.as_string::<i32>().iter().flatten().map(str::to_owned).collect()
        };
        assert_eq!(names(0), Vec::<String>::new());
        assert_eq!(names(1), ["note", "amount", "at", "tags"]);
        assert_eq!(names(2), ["note"]);
        assert_eq!(names(3), ["note", "amount", "at", "tags"]);
        assert_eq!(out[2].source_bytes, INSERT.len() + UPDATE.len() + DELETE.len());
    }

    #[test]
    fn an_update_first_seen_without_its_toast_value_keeps_the_column_as_missing() {
        // The table's first change in the session is an UPDATE whose `note` (text) was an
        // unchanged TOAST value, left out of the JSON: the schema must still have `note`.
        let mut d = decoder();
        let out = feed(&mut d, &[BEGIN, UPDATE, COMMIT]).unwrap();
        let schema = out
            .iter()
            .find_map(|o| if let Message::Schema(r) = &o.message { Some(r.clone()) } else { None })
            .expect("a schema");
        let names: Vec<&str> = schema.schema.fields()[..schema.table_columns()]
            .iter()
            .map(|f| f.name().as_str())
            .collect();
        assert_eq!(names, ["id", "note", "amount", "at", "tags"]);
        let batch = out
            .iter()
            .find_map(
                |o| if let Message::Batch(b) = &o.message { Some(b.batch.clone()) } else { None },
            )
            .expect("a batch");
        let missing = batch.column_by_name("_missing").unwrap().as_list::<i32>();
        let last = batch.num_rows() - 1;
        let listed = missing.value(last);
        assert_eq!(listed.as_string::<i32>().value(0), "note", "the new image lacks note");
    }

    #[test]
    fn malformed_and_truncated_messages_are_errors_naming_the_lsn() {
        for (i, msg) in ALL.iter().enumerate() {
            for cut in 0..msg.len() {
                let mut d = decoder();
                feed(&mut d, &ALL[..i]).unwrap();
                let mut out = Vec::new();
                let e = d.decode_at(&msg.as_bytes()[..cut], Lsn(0x16B3E00), &mut out).unwrap_err();
                assert!(e.to_string().contains("LSN 0/16B3E00"), "{e}");
            }
        }
        for bad in [
            r#"{"action":"I","lsn":"0/1","schema":"public","table":"t","columns":[]}"#,
            r#"{"action":"X"}"#,
            r#"{"xid":1}"#,
            r#"[]"#,
            r#"{"action":"C","lsn":"0/1","nextlsn":"0/2"}"#,
            r#"{"action":"B","lsn":"zz","nextlsn":"0/2"}"#,
        ] {
            let e = feed(&mut decoder(), &[bad]).unwrap_err();
            assert!(e.lsn.0 > 0 && !e.message.is_empty(), "{bad}: {e}");
        }
    }

    #[test]
    fn corrupted_bytes_never_panic() {
        for (i, msg) in ALL.iter().enumerate() {
            for at in 0..msg.len() {
                for b in [b'"', b'\\', b'{', b'}', b'[', b']', b',', b':', b'0', b'n', 0xff] {
                    let mut bytes = msg.as_bytes().to_vec();
                    bytes[at] = b;
                    let mut d = decoder();
                    feed(&mut d, &ALL[..i]).unwrap();
                    let mut out = Vec::new();
                    let _ = d.decode_at(&bytes, Lsn(1), &mut out);
                    // Whatever state the damage left behind (an error ends a real stream),
                    // the next message must not panic either.
                    let _ = d.decode_at(COMMIT.as_bytes(), Lsn(2), &mut out);
                }
            }
        }
    }

    #[test]
    fn table_patterns_map_onto_add_tables_only_when_wal2json_can_express_them() {
        let with = |list: &str| {
            let opts = PluginOptions {
                tables: wal2arrow_schema::TableFilter::parse_list(list).unwrap(),
                ..PluginOptions::default()
            };
            add_tables(&opts)
        };
        assert_eq!(
            with("public.users, *.orders, app.*").as_deref(),
            Some("public.users,*.orders,app.*")
        );
        assert_eq!(with(r#""my.schema"."a,b""#).as_deref(), Some(r"my\.schema.a\,b"));
        assert_eq!(with("public.user_*"), None, "a glob wal2json lacks");
        assert_eq!(with("public.user_[0-9]+"), None);
        assert_eq!(add_tables(&PluginOptions::default()), None);
    }
}
