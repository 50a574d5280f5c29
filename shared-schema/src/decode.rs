//! Decoding wire messages into Arrow, without copying.
//!
//! A Batch message's IPC body is decoded *in place*: the [`RecordBatch`]'s arrays are slices
//! of the [`Buffer`] holding the received payload. That needs the payload to start at a
//! 16-byte-aligned address ([`IPC_ALIGNMENT`]); the consumer's protocol reader allocates
//! payloads that way. A misaligned payload is copied once into an aligned buffer and counted
//! ([`Decoder::realigned_payloads`]); the IPC decoder itself is run with
//! `require_alignment`, so it never copies behind our back.
//!
//! The user-facing batch is the wire batch with its two system columns made friendlier:
//! `_op` becomes a `Dictionary(UInt8, Utf8)` over the fixed [`OP_NAMES`] (its keys are still
//! the received bytes) and `_lsn_delta` becomes `_lsn`, the absolute `UInt64` LSN of each row
//! (the one column that is computed rather than borrowed).

use std::collections::HashMap;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{UInt8Type, UInt32Type};
use arrow_array::{ArrayRef, DictionaryArray, RecordBatch, StringArray, UInt64Array};
use arrow_buffer::Buffer;
use arrow_ipc::convert::try_schema_from_flatbuffer_bytes;
use arrow_ipc::reader::RecordBatchDecoder;
use arrow_schema::{DataType, Field, Schema, SchemaRef};

use crate::encode::system_field;
use crate::lsn::Lsn;
use crate::meta;
use crate::wire::{
    self, Begin, Commit, Header, IPC_ALIGNMENT, IPC_OFFSET, MessageKind, OP_NAMES, WireError,
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
    /// The schema of the batches handed to users: the table's columns, then `_op` and `_lsn`.
    pub schema: SchemaRef,
    wire_schema: SchemaRef,
}

impl Relation {
    /// The number of the table's own columns (the batch's first columns).
    pub fn table_columns(&self) -> usize {
        self.schema.fields().len() - 2
    }

    /// The schema of this table's batches on the wire.
    pub fn wire_schema(&self) -> &SchemaRef {
        &self.wire_schema
    }
}

/// The user-facing schema for a wire schema: same table columns and metadata, `_op` as a
/// dictionary of change names and `_lsn` as an absolute `UInt64`.
///
/// # Errors
///
/// [`WireError::BadSchema`] when the wire schema does not end in wal2arrow's system columns.
pub fn user_schema(wire_schema: &Schema) -> Result<Schema, WireError> {
    let fields = wire_schema.fields();
    let n = fields.len();
    let ok = n >= 2
        && fields[n - 2].name() == meta::OP_COLUMN
        && fields[n - 2].data_type() == &DataType::UInt8
        && fields[n - 1].name() == meta::LSN_DELTA_COLUMN
        && fields[n - 1].data_type() == &DataType::UInt32;
    if !ok {
        return Err(WireError::BadSchema(
            "the last two fields must be _op (UInt8) and _lsn_delta (UInt32)".into(),
        ));
    }
    let mut out: Vec<Field> = fields[..n - 2].iter().map(|f| f.as_ref().clone()).collect();
    out.push(op_field());
    out.push(system_field(meta::LSN_COLUMN, DataType::UInt64));
    Ok(Schema::new_with_metadata(out, wire_schema.metadata().clone()))
}

/// The `_op` field of user-facing batches.
pub fn op_field() -> Field {
    system_field(
        meta::OP_COLUMN,
        DataType::Dictionary(Box::new(DataType::UInt8), Box::new(DataType::Utf8)),
    )
}

/// A batch of one table's row changes, decoded.
#[derive(Debug, Clone)]
pub struct DecodedBatch {
    /// The table.
    pub relation: Arc<Relation>,
    /// The first row's LSN.
    pub base_lsn: Lsn,
    /// The rows: the table's columns, `_op` and `_lsn` ([`Relation::schema`]).
    pub batch: RecordBatch,
}

/// One decoded wire message.
#[derive(Debug, Clone)]
pub enum Message {
    /// A transaction begins.
    Begin(Begin),
    /// A table's (new) schema; later batches of that table use it.
    Schema(Arc<Relation>),
    /// Rows of one table.
    Batch(DecodedBatch),
    /// The transaction committed.
    Commit(Commit),
}

/// Decodes a session's messages, remembering the tables' schemas between them.
#[derive(Debug)]
pub struct Decoder {
    relations: HashMap<u32, Arc<Relation>>,
    op_values: ArrayRef,
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
        Decoder {
            relations: HashMap::new(),
            op_values: Arc::new(StringArray::from(OP_NAMES.to_vec())),
            realigned: 0,
        }
    }

    /// The table with this OID, if its schema was received.
    pub fn relation(&self, relid: u32) -> Option<&Arc<Relation>> {
        self.relations.get(&relid)
    }

    /// How many payloads had to be copied because they were not 16-byte aligned.
    pub fn realigned_payloads(&self) -> u64 {
        self.realigned
    }

    /// Decodes one message. Batch arrays borrow from `payload` (see the module docs).
    ///
    /// # Errors
    ///
    /// A [`WireError`] when the message breaks the wire format, a batch arrives for a table
    /// whose schema was not received, or its IPC part does not match that schema.
    pub fn decode(&mut self, payload: &Buffer) -> Result<Message, WireError> {
        match wire::read_header(payload.as_slice())? {
            Header::Begin(b) => Ok(Message::Begin(b)),
            Header::Commit(c) => Ok(Message::Commit(c)),
            Header::Schema { relid } => {
                let meta = ipc_metadata(payload.as_slice(), MessageKind::Schema)?;
                let wire_schema = try_schema_from_flatbuffer_bytes(meta)
                    .map_err(|e| WireError::Ipc(e.to_string()))?;
                let relation = Arc::new(relation_from_schema(relid, wire_schema)?);
                self.relations.insert(relid, Arc::clone(&relation));
                Ok(Message::Schema(relation))
            }
            Header::Batch { relid, base_lsn } => {
                let relation = Arc::clone(
                    self.relations.get(&relid).ok_or(WireError::UnknownRelation(relid))?,
                );
                let aligned;
                let payload = if (payload.as_ptr() as usize).is_multiple_of(IPC_ALIGNMENT) {
                    payload
                } else {
                    self.realigned += 1;
                    aligned = Buffer::from_slice_ref(payload.as_slice());
                    &aligned
                };
                let wire_batch = decode_batch(payload, &relation.wire_schema)?;
                let batch = self.to_user_batch(&relation, base_lsn, &wire_batch)?;
                Ok(Message::Batch(DecodedBatch { relation, base_lsn, batch }))
            }
        }
    }

    fn to_user_batch(
        &self,
        relation: &Relation,
        base_lsn: Lsn,
        wire_batch: &RecordBatch,
    ) -> Result<RecordBatch, WireError> {
        let n = wire_batch.num_columns();
        let codes = wire_batch.column(n - 2).as_primitive::<UInt8Type>().clone();
        let ops = DictionaryArray::<UInt8Type>::try_new(codes, Arc::clone(&self.op_values))
            .map_err(|e| WireError::Ipc(format!("bad _op code: {e}")))?;
        let deltas = wire_batch.column(n - 1).as_primitive::<UInt32Type>();
        let lsns = UInt64Array::from_iter_values(
            deltas.values().iter().map(|d| base_lsn.0.saturating_add(u64::from(*d))),
        );
        let mut columns: Vec<ArrayRef> = wire_batch.columns()[..n - 2].to_vec();
        columns.push(Arc::new(ops));
        columns.push(Arc::new(lsns));
        RecordBatch::try_new(Arc::clone(&relation.schema), columns)
            .map_err(|e| WireError::Ipc(e.to_string()))
    }
}

fn relation_from_schema(relid: u32, wire_schema: Schema) -> Result<Relation, WireError> {
    let md = wire_schema.metadata();
    let get = |key: &str| {
        md.get(key).cloned().ok_or_else(|| WireError::BadSchema(format!("no {key} metadata")))
    };
    let namespace = get(meta::SCHEMA_NAME)?;
    let name = get(meta::TABLE_NAME)?;
    let schema = Arc::new(user_schema(&wire_schema)?);
    Ok(Relation {
        relid,
        qualified_name: format!("{namespace}.{name}"),
        namespace,
        name,
        schema,
        wire_schema: Arc::new(wire_schema),
    })
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
            && len % byte_width != 0
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
    let ipc_err = |e: arrow_schema::ArrowError| WireError::Ipc(e.to_string());
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
    RecordBatchDecoder::try_new(&body, fb_batch, Arc::clone(wire_schema), &dictionaries, &version)
        .map_err(ipc_err)?
        .with_require_alignment(true)
        .read_record_batch()
        .map_err(ipc_err)
}
