//! Decoding wire messages into Arrow, without copying.
//!
//! A Batch message's IPC body is decoded *in place*: the [`RecordBatch`]'s arrays are slices
//! of the [`Buffer`] holding the received payload. That needs the payload to start at a
//! 16-byte-aligned address ([`IPC_ALIGNMENT`]); the consumer's protocol reader allocates
//! payloads that way. A misaligned payload is copied once into an aligned buffer and counted
//! ([`Decoder::realigned_payloads`]); the IPC decoder itself is run with
//! `require_alignment`, so it never copies behind our back.
//!
//! The user-facing batch is the wire batch with its system columns made friendlier: `_op`
//! becomes a `Dictionary(UInt8, Utf8)` over the fixed [`OP_NAMES`] (its keys are still the
//! received bytes), `_lsn_delta` becomes `_lsn`, the absolute `UInt64` LSN of each row, and
//! the `_missing` and `_unrepresentable` bitmaps become `List<Utf8>` of column names (NULL for
//! a row with no bit set). Those are computed; every table column is borrowed.

use std::collections::HashMap;
use std::sync::Arc;

use arrow_array::builder::{ListBuilder, StringBuilder};
use arrow_array::cast::AsArray;
use arrow_array::types::{UInt8Type, UInt32Type};
use arrow_array::{
    Array, ArrayRef, DictionaryArray, ListArray, RecordBatch, StringArray, UInt64Array,
};
use arrow_buffer::Buffer;
use arrow_ipc::convert::try_schema_from_flatbuffer_bytes;
use arrow_ipc::reader::RecordBatchDecoder;
use arrow_schema::{DataType, Field, FieldRef, Schema, SchemaRef};

use crate::encode::{RelationDesc, ReplicaIdentity, system_field};
use crate::lsn::Lsn;
use crate::meta;
use crate::wire::{
    self, Begin, Commit, Header, IPC_ALIGNMENT, IPC_OFFSET, MessageKind, OP_NAMES, StreamAbort,
    StreamCommit, WireError,
};

/// A table, as its latest Schema message described it.
#[derive(Debug)]
pub struct Relation {
    /// Relation OID.
    pub relid: u32,
    /// Schema (namespace) name.
    pub namespace: String,
    /// Table name.
    pub name: String,
    /// `namespace.name`, the routing key.
    pub qualified_name: String,
    /// The schema of the batches handed to users: the table's columns, then `_op`, `_lsn`
    /// (unless `include-lsn` is off), `_missing` and `_unrepresentable`.
    pub schema: SchemaRef,
    /// The primary key's columns.
    pub primary_key: Vec<String>,
    /// The replica identity.
    pub replica_identity: ReplicaIdentity,
    /// The columns old images carry.
    pub identity_key: Vec<String>,
    table_columns: usize,
    has_lsn: bool,
    wire_schema: SchemaRef,
}

impl Relation {
    /// The number of the table's own columns (the batch's first columns).
    pub fn table_columns(&self) -> usize {
        self.table_columns
    }

    /// Whether batches carry the `_lsn` column.
    pub fn has_lsn(&self) -> bool {
        self.has_lsn
    }

    /// The schema of this table's batches on the wire.
    pub fn wire_schema(&self) -> &SchemaRef {
        &self.wire_schema
    }

    /// The index of the `_missing` column in user-facing batches (`_unrepresentable` follows
    /// it, last).
    pub fn missing_index(&self) -> usize {
        self.table_columns + 1 + usize::from(self.has_lsn)
    }

    /// The relation a Schema message for `desc` describes, without the message: for batches
    /// built on the consumer's side (the wal2json fallback), so that they get exactly the
    /// schema the plugin's batches get.
    ///
    /// # Errors
    ///
    /// Never for a description [`RelationDesc::wire_schema`] made; the error type is shared
    /// with decoding received schemas.
    pub fn from_desc(desc: &RelationDesc) -> Result<Relation, WireError> {
        relation_from_schema(desc.relid, desc.wire_schema())
    }

    /// The user-facing batch for a batch in this relation's wire schema: the table's columns
    /// as they are, `_op` as a dictionary, `_lsn` from `base_lsn` and the deltas, `_missing`
    /// and `_unrepresentable` as lists of column names. `has_missing` and
    /// `has_unrepresentable` are the Batch message's flags: a bitmap column whose flag is clear
    /// is not read (every row NULL).
    ///
    /// # Errors
    ///
    /// [`WireError::Ipc`] when `wire_batch` does not have the wire schema's columns or holds
    /// an unknown `_op` code or a bitmap bit beyond the table's columns.
    pub fn user_batch(
        &self,
        base_lsn: Lsn,
        wire_batch: &RecordBatch,
        has_missing: bool,
        has_unrepresentable: bool,
    ) -> Result<RecordBatch, WireError> {
        let n = self.table_columns;
        let expected = n + 3 + usize::from(self.has_lsn);
        if wire_batch.num_columns() != expected {
            return Err(WireError::Ipc(format!(
                "a batch of {} columns for a schema of {expected}",
                wire_batch.num_columns()
            )));
        }
        let mut columns: Vec<ArrayRef> = wire_batch.columns()[..n].to_vec();
        let codes = wire_batch
            .column(n)
            .as_primitive_opt::<UInt8Type>()
            .ok_or_else(|| WireError::Ipc("_op is not UInt8".into()))?
            .clone();
        let ops = DictionaryArray::<UInt8Type>::try_new(codes, Arc::clone(op_values()))
            .map_err(|e| WireError::Ipc(format!("bad _op code: {e}")))?;
        columns.push(Arc::new(ops));
        let mut next = n + 1;
        if self.has_lsn {
            let deltas = wire_batch
                .column(next)
                .as_primitive_opt::<UInt32Type>()
                .ok_or_else(|| WireError::Ipc("_lsn_delta is not UInt32".into()))?;
            columns.push(Arc::new(UInt64Array::from_iter_values(
                deltas.values().iter().map(|d| base_lsn.0.saturating_add(u64::from(*d))),
            )));
            next += 1;
        }
        for (i, set) in [has_missing, has_unrepresentable].into_iter().enumerate() {
            columns.push(self.name_lists(wire_batch.column(next + i), set)?);
        }
        Ok(RecordBatch::try_new(Arc::clone(&self.schema), columns)?)
    }

    /// A wire bitmap column as per-row lists of column names (NULL where no bit is set; every
    /// row NULL when `set` is false).
    fn name_lists(&self, column: &ArrayRef, set: bool) -> Result<ArrayRef, WireError> {
        let rows = column.len();
        if !set {
            return Ok(Arc::new(ListArray::new_null(missing_item(), rows)));
        }
        let bitmaps = column
            .as_fixed_size_binary_opt()
            .ok_or_else(|| WireError::Ipc("a bitmap column is not FixedSizeBinary".into()))?;
        let names: Vec<&str> =
            self.schema.fields()[..self.table_columns].iter().map(|f| f.name().as_str()).collect();
        let mut b =
            ListBuilder::with_capacity(StringBuilder::new(), rows).with_field(missing_item());
        for row in 0..rows {
            let bitmap = bitmaps.value(row);
            if bitmaps.is_null(row) || bitmap.iter().all(|byte| *byte == 0) {
                b.append_null();
                continue;
            }
            for (i, byte) in bitmap.iter().enumerate() {
                for bit in 0..8 {
                    if byte & (1 << bit) != 0 {
                        let name = names.get(i * 8 + bit).ok_or_else(|| {
                            WireError::Ipc("a bitmap names a column the table does not have".into())
                        })?;
                        b.values().append_value(name);
                    }
                }
            }
            b.append(true);
        }
        Ok(Arc::new(b.finish()))
    }
}

/// The dictionary values of every `_op` column: [`OP_NAMES`].
fn op_values() -> &'static ArrayRef {
    static VALUES: std::sync::OnceLock<ArrayRef> = std::sync::OnceLock::new();
    VALUES.get_or_init(|| Arc::new(StringArray::from(OP_NAMES.to_vec())))
}

/// The `_op` field of user-facing batches.
pub fn op_field() -> Field {
    system_field(
        meta::OP_COLUMN,
        DataType::Dictionary(Box::new(DataType::UInt8), Box::new(DataType::Utf8)),
        false,
    )
}

/// The `_lsn` field of user-facing batches.
pub fn lsn_field() -> Field {
    system_field(meta::LSN_COLUMN, DataType::UInt64, false)
}

/// The `_missing` field of user-facing batches.
pub fn missing_field() -> Field {
    system_field(meta::MISSING_COLUMN, DataType::List(missing_item()), true)
}

/// The `_unrepresentable` field of user-facing batches.
pub fn unrepresentable_field() -> Field {
    system_field(meta::UNREPRESENTABLE_COLUMN, DataType::List(missing_item()), true)
}

fn missing_item() -> FieldRef {
    Arc::new(Field::new("item", DataType::Utf8, false))
}

/// A batch of one table's row changes, decoded.
#[derive(Debug, Clone)]
pub struct DecodedBatch {
    /// The table.
    pub relation: Arc<Relation>,
    /// The first row's LSN.
    pub base_lsn: Lsn,
    /// The rows ([`Relation::schema`]).
    pub batch: RecordBatch,
}

/// One decoded wire message.
#[derive(Debug, Clone)]
pub enum Message {
    /// A transaction begins.
    Begin(Begin),
    /// The transaction was replayed from this replication origin.
    Origin {
        /// The origin's name.
        name: String,
        /// The origin's LSN for this transaction.
        lsn: Lsn,
    },
    /// A table's (new) schema; later batches of that table use it.
    Schema(Arc<Relation>),
    /// Rows of one table.
    Batch(DecodedBatch),
    /// Tables truncated by one `TRUNCATE`.
    Truncate {
        /// The tables, in the order the command listed them (cascaded ones included).
        relations: Vec<Arc<Relation>>,
        /// `CASCADE`; `None` when the source does not say (the wal2json fallback).
        cascade: Option<bool>,
        /// `RESTART IDENTITY`; `None` when the source does not say.
        restart_identity: Option<bool>,
    },
    /// A logical decoding message (`pg_logical_emit_message`).
    Message {
        /// Sent in its transaction (at commit) rather than at once.
        transactional: bool,
        /// Its LSN.
        lsn: Lsn,
        /// Its prefix.
        prefix: String,
        /// Its content: a slice of the received payload.
        content: Buffer,
    },
    /// The transaction committed.
    Commit(Commit),
    /// A block of a streamed (in-progress) transaction starts.
    StreamStart {
        /// The top-level transaction.
        xid: u32,
        /// Its first block.
        first: bool,
    },
    /// The block's next messages belong to this (sub)transaction.
    Subtransaction {
        /// The (sub)transaction.
        subxid: u32,
    },
    /// The block ends.
    StreamStop,
    /// A streamed transaction or one of its subtransactions aborted.
    StreamAbort(StreamAbort),
    /// A streamed transaction committed.
    StreamCommit(StreamCommit),
}

/// Decodes a session's messages, remembering the tables' schemas between them.
#[derive(Debug)]
pub struct Decoder {
    relations: HashMap<u32, Arc<Relation>>,
    realigned: u64,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::new()
    }
}

impl Decoder {
    /// A decoder that knows no table yet (a new replication session).
    pub fn new() -> Decoder {
        Decoder { relations: HashMap::new(), realigned: 0 }
    }

    /// The table with this OID, if its schema was received.
    pub fn relation(&self, relid: u32) -> Option<&Arc<Relation>> {
        self.relations.get(&relid)
    }

    /// How many payloads had to be copied because they were not 16-byte aligned.
    pub fn realigned_payloads(&self) -> u64 {
        self.realigned
    }

    /// Decodes a payload — one message, or a Bundle of them — appending each message with the
    /// slice of `payload` it was decoded from (its batch's arrays point into that slice).
    ///
    /// # Errors
    ///
    /// As [`decode`](Self::decode); for a Bundle, the first message's error (those before it
    /// are in `out`).
    pub fn decode_into(
        &mut self,
        payload: &Buffer,
        out: &mut Vec<(Message, Buffer)>,
    ) -> Result<(), WireError> {
        if payload.as_slice().first() != Some(&(MessageKind::Bundle as u8)) {
            out.push((self.decode(payload)?, payload.clone()));
            return Ok(());
        }
        for range in wire::bundle_entries(payload.as_slice())? {
            let message = payload.slice_with_length(range.start, range.len());
            out.push((self.decode(&message)?, message));
        }
        Ok(())
    }

    /// Decodes one message. Batch arrays borrow from `payload` (see the module docs). A Bundle
    /// is an error here: see [`decode_into`](Self::decode_into).
    ///
    /// # Errors
    ///
    /// A [`WireError`] when the message breaks the wire format, a batch or truncate arrives
    /// for a table whose schema was not received, or an IPC part does not match its schema.
    pub fn decode(&mut self, payload: &Buffer) -> Result<Message, WireError> {
        match wire::read_header(payload.as_slice())? {
            Header::Bundle { .. } => Err(WireError::NestedBundle),
            Header::Begin(b) => Ok(Message::Begin(b)),
            Header::Commit(c) => Ok(Message::Commit(c)),
            Header::StreamStart { xid, first } => Ok(Message::StreamStart { xid, first }),
            Header::Subtransaction { subxid } => Ok(Message::Subtransaction { subxid }),
            Header::StreamStop => Ok(Message::StreamStop),
            Header::StreamAbort(a) => Ok(Message::StreamAbort(a)),
            Header::StreamCommit(c) => Ok(Message::StreamCommit(c)),
            Header::Origin { origin_lsn, name } => Ok(Message::Origin {
                name: String::from_utf8_lossy(&payload.as_slice()[name]).into_owned(),
                lsn: origin_lsn,
            }),
            Header::Message { transactional, lsn, prefix, content } => Ok(Message::Message {
                transactional,
                lsn,
                prefix: String::from_utf8_lossy(&payload.as_slice()[prefix]).into_owned(),
                content: payload.slice_with_length(content.start, content.len()),
            }),
            Header::Truncate(t) => {
                let relations = t
                    .relids
                    .iter()
                    .map(|r| self.relations.get(r).cloned().ok_or(WireError::UnknownRelation(*r)))
                    .collect::<Result<_, _>>()?;
                Ok(Message::Truncate {
                    relations,
                    cascade: Some(t.cascade),
                    restart_identity: Some(t.restart_identity),
                })
            }
            Header::Schema { relid } => {
                let meta = ipc_metadata(payload.as_slice(), MessageKind::Schema)?;
                let wire_schema = try_schema_from_flatbuffer_bytes(meta)?;
                let relation = Arc::new(relation_from_schema(relid, wire_schema)?);
                self.relations.insert(relid, Arc::clone(&relation));
                Ok(Message::Schema(relation))
            }
            Header::Batch { relid, .. } => {
                let relation = Arc::clone(
                    self.relations.get(&relid).ok_or(WireError::UnknownRelation(relid))?,
                );
                let batch = decode_batch_message(&relation, payload)?;
                if !(payload.as_ptr() as usize).is_multiple_of(IPC_ALIGNMENT) {
                    self.realigned += 1;
                }
                Ok(Message::Batch(batch))
            }
        }
    }
}

/// Decodes a Batch message of `relation` (received with that schema in effect): what
/// [`Decoder::decode`] does for a batch, for a consumer that kept the message's bytes (a
/// streamed transaction's batch read back from a spill file) and the relation it belonged to.
/// Arrays borrow from `payload` when it is 16-byte aligned; otherwise it is copied first.
///
/// # Errors
///
/// A [`WireError`] when the message is no Batch or does not match the schema.
pub fn decode_batch_message(
    relation: &Arc<Relation>,
    payload: &Buffer,
) -> Result<DecodedBatch, WireError> {
    let Header::Batch { relid, base_lsn, has_missing, has_unrepresentable } =
        wire::read_header(payload.as_slice())?
    else {
        return Err(WireError::Ipc("expected a Batch message".into()));
    };
    if relid != relation.relid {
        return Err(WireError::Ipc(format!(
            "batch of relation {relid} decoded as relation {}",
            relation.relid
        )));
    }
    let aligned;
    let payload = if (payload.as_ptr() as usize).is_multiple_of(IPC_ALIGNMENT) {
        payload
    } else {
        aligned = Buffer::from_slice_ref(payload.as_slice());
        &aligned
    };
    let wire_batch = decode_batch(payload, &relation.wire_schema)?;
    let batch = relation.user_batch(base_lsn, &wire_batch, has_missing, has_unrepresentable)?;
    Ok(DecodedBatch { relation: Arc::clone(relation), base_lsn, batch })
}

fn relation_from_schema(relid: u32, wire_schema: Schema) -> Result<Relation, WireError> {
    let bad = |m: &str| WireError::BadSchema(m.to_owned());
    let md = wire_schema.metadata();
    let get = |key: &str| md.get(key).cloned().ok_or_else(|| bad(&format!("no {key} metadata")));
    let namespace = get(meta::SCHEMA_NAME)?;
    let name = get(meta::TABLE_NAME)?;
    let fields = wire_schema.fields();
    let is_system =
        |f: &FieldRef| f.metadata().get(meta::SYSTEM_COLUMN).is_some_and(|v| v == "true");
    let n = fields.iter().position(is_system).ok_or_else(|| bad("no system columns"))?;
    let names: Vec<&str> = fields[n..].iter().map(|f| f.name().as_str()).collect();
    let has_lsn = match names.as_slice() {
        [
            meta::OP_COLUMN,
            meta::LSN_DELTA_COLUMN,
            meta::MISSING_COLUMN,
            meta::UNREPRESENTABLE_COLUMN,
        ] => true,
        [meta::OP_COLUMN, meta::MISSING_COLUMN, meta::UNREPRESENTABLE_COLUMN] => false,
        _ => {
            return Err(bad(
                "system columns must be _op, [_lsn_delta,] _missing, _unrepresentable",
            ));
        }
    };
    let bitmap_ok = |f: &FieldRef| {
        matches!(f.data_type(), DataType::FixedSizeBinary(w)
            if usize::try_from(*w).is_ok_and(|w| w >= 1 && w.saturating_mul(8) >= n))
    };
    let last = fields.len() - 1;
    let types_ok = fields[n].data_type() == &DataType::UInt8
        && (!has_lsn || fields[n + 1].data_type() == &DataType::UInt32)
        && bitmap_ok(&fields[last - 1])
        && fields[last].data_type() == fields[last - 1].data_type();
    if !types_ok {
        return Err(bad("system columns of the wrong type"));
    }
    if let Some(f) = fields[..n].iter().find(|f| !wire_type(f.data_type())) {
        return Err(bad(&format!(
            "column {:?} has type {}, which wal2arrow never writes",
            f.name(),
            f.data_type()
        )));
    }
    let mut user: Vec<Field> = fields[..n].iter().map(|f| f.as_ref().clone()).collect();
    user.push(op_field());
    if has_lsn {
        user.push(lsn_field());
    }
    user.push(missing_field());
    user.push(unrepresentable_field());
    let names_list = |key: &str| md.get(key).map(|v| parse_name_list(v)).unwrap_or_default();
    Ok(Relation {
        relid,
        qualified_name: format!("{namespace}.{name}"),
        namespace,
        name,
        primary_key: names_list(meta::PRIMARY_KEY),
        replica_identity: md
            .get(meta::REPLICA_IDENTITY)
            .map(|r| ReplicaIdentity::from_char(r.as_bytes().first().copied().unwrap_or(b'd')))
            .unwrap_or(ReplicaIdentity::Default),
        identity_key: names_list(meta::IDENTITY_KEY),
        schema: Arc::new(Schema::new_with_metadata(user, md.clone())),
        table_columns: n,
        has_lsn,
        wire_schema: Arc::new(wire_schema),
    })
}

/// Whether `dt` is a type the type mapping produces (see [`crate::types`]): anything else in a
/// Schema message is damage, and is refused before any layout is computed from it.
fn wire_type(dt: &DataType) -> bool {
    use arrow_schema::{IntervalUnit, TimeUnit};
    match dt {
        DataType::Boolean
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::UInt32
        | DataType::Float32
        | DataType::Float64
        | DataType::Utf8
        | DataType::Binary
        | DataType::Date32
        | DataType::Time64(TimeUnit::Microsecond)
        | DataType::Timestamp(TimeUnit::Microsecond, _)
        | DataType::Interval(IntervalUnit::MonthDayNano) => true,
        DataType::FixedSizeBinary(w) => *w > 0,
        DataType::Decimal128(p, s) => (1..=38).contains(p) && i16::from(*s) <= i16::from(*p),
        DataType::List(item) => wire_type(item.data_type()),
        DataType::Struct(fields) => fields.iter().all(|f| wire_type(f.data_type())),
        _ => false,
    }
}

/// Parses a JSON array of strings as written by the encoder (`["a","b\"c"]`).
fn parse_name_list(s: &str) -> Vec<String> {
    let inner = s.trim().trim_start_matches('[').trim_end_matches(']');
    let mut out = Vec::new();
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c != '"' {
            continue;
        }
        let mut name = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some('u') => {
                        let hex: String = chars.by_ref().take(4).collect();
                        name.extend(u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32));
                    }
                    Some(e) => name.push(e),
                    None => break,
                },
                '"' => break,
                c => name.push(c),
            }
        }
        out.push(name);
    }
    out
}

/// The flatbuffer metadata of the encapsulated IPC message that follows a message's header.
fn ipc_metadata(msg: &[u8], kind: MessageKind) -> Result<&[u8], WireError> {
    let ipc = &msg[IPC_OFFSET..];
    let truncated = || WireError::Truncated { kind, need: IPC_OFFSET + 8, got: msg.len() };
    if ipc.len() < 8 {
        return Err(truncated());
    }
    if ipc[..4] != [0xFF; 4] {
        return Err(WireError::Ipc("missing IPC continuation marker".into()));
    }
    let len = i32::from_le_bytes(ipc[4..8].try_into().expect("4 bytes"));
    let len =
        usize::try_from(len).map_err(|_| WireError::Ipc("negative metadata length".into()))?;
    ipc.get(8..8 + len).ok_or_else(|| WireError::Truncated {
        kind,
        need: IPC_OFFSET + 8 + len,
        got: msg.len(),
    })
}

/// Checks the record batch's buffer and node descriptors against the body and the schema
/// before decoding. arrow-ipc (60.1) slices buffers without bounds checks and asserts buffer
/// alignment and element-size multiples, so a damaged message would panic inside it instead of
/// returning an error.
fn check_descriptors(
    fb: &arrow_ipc::RecordBatch<'_>,
    schema: &Schema,
    body_len: usize,
) -> Result<(), WireError> {
    let bad = |what: String| Err(WireError::Ipc(what));
    if fb.length() < 0 {
        return bad("negative row count".into());
    }
    for n in fb.nodes().into_iter().flatten() {
        if n.length() < 0 || n.null_count() < 0 || n.null_count() > n.length() {
            return bad("malformed field node".into());
        }
    }
    let buffers: Vec<(usize, usize)> = fb
        .buffers()
        .into_iter()
        .flatten()
        .map(|b| {
            let (o, l) = (usize::try_from(b.offset()).ok()?, usize::try_from(b.length()).ok()?);
            // wal2arrow writes every buffer 16-byte aligned.
            (o.checked_add(l)? <= body_len && o % IPC_ALIGNMENT == 0).then_some((o, l))
        })
        .collect::<Option<_>>()
        .ok_or_else(|| {
            WireError::Ipc("a buffer is misaligned or outside the message body".into())
        })?;
    let mut lengths = buffers.iter().map(|&(_, l)| l);
    for f in schema.fields() {
        check_layout(f.data_type(), &mut lengths)?;
    }
    if lengths.next().is_some() {
        return bad("more buffers than the schema has".into());
    }
    Ok(())
}

/// Walks `dt`'s buffers in IPC order (validity, the type's own buffers, then children),
/// checking that fixed-width buffers hold whole elements.
fn check_layout(dt: &DataType, lengths: &mut impl Iterator<Item = usize>) -> Result<(), WireError> {
    let missing = || WireError::Ipc("fewer buffers than the schema needs".into());
    match dt {
        DataType::Null
        | DataType::Union(..)
        | DataType::RunEndEncoded(..)
        | DataType::Utf8View
        | DataType::BinaryView
        | DataType::ListView(_)
        | DataType::LargeListView(_) => {
            return Err(WireError::Ipc(format!("{dt} is not a wal2arrow wire type")));
        }
        _ => {}
    }
    lengths.next().ok_or_else(missing)?; // validity bitmap
    for spec in arrow_data::layout(dt).buffers {
        let len = lengths.next().ok_or_else(missing)?;
        if let arrow_data::BufferSpec::FixedWidth { byte_width, .. } = spec
            && (byte_width == 0 || len % byte_width != 0)
        {
            return Err(WireError::Ipc(format!("{dt} buffer of {len} bytes")));
        }
    }
    match dt {
        DataType::List(f)
        | DataType::LargeList(f)
        | DataType::FixedSizeList(f, _)
        | DataType::Map(f, _) => check_layout(f.data_type(), lengths),
        DataType::Struct(fields) => {
            fields.iter().try_for_each(|f| check_layout(f.data_type(), lengths))
        }
        _ => Ok(()),
    }
}

fn decode_batch(payload: &Buffer, wire_schema: &SchemaRef) -> Result<RecordBatch, WireError> {
    let meta = ipc_metadata(payload.as_slice(), MessageKind::Batch)?;
    let message = arrow_ipc::root_as_message(meta).map_err(|e| WireError::Ipc(e.to_string()))?;
    let fb_batch = message
        .header_as_record_batch()
        .ok_or_else(|| WireError::Ipc("a Batch message must hold an IPC RecordBatch".into()))?;
    let body_start = IPC_OFFSET + 8 + meta.len();
    let body_len = usize::try_from(message.bodyLength())
        .map_err(|_| WireError::Ipc("negative body length".into()))?;
    if payload.len() < body_start + body_len {
        return Err(WireError::Truncated {
            kind: MessageKind::Batch,
            need: body_start + body_len,
            got: payload.len(),
        });
    }
    check_descriptors(&fb_batch, wire_schema, body_len)?;
    let body = payload.slice_with_length(body_start, body_len);
    let dictionaries = HashMap::new();
    let version = message.version();
    RecordBatchDecoder::try_new(&body, fb_batch, Arc::clone(wire_schema), &dictionaries, &version)?
        .with_require_alignment(true)
        .read_record_batch()
        .map_err(WireError::from)
}

#[cfg(test)]
mod tests {
    use super::parse_name_list;

    #[test]
    fn name_lists_parse_back() {
        assert_eq!(parse_name_list("[]"), Vec::<String>::new());
        assert_eq!(
            parse_name_list(r#"["id","we\"ird","x\\y","\u00e9"]"#),
            ["id", "we\"ird", "x\\y", "é"]
        );
    }
}
