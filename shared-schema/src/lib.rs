//! The wal2arrow wire contract, shared by the PostgreSQL output plugin (which encodes) and the
//! consumer (which decodes):
//!
//! - [`wire`]: message framing — kinds, the version byte, fixed headers;
//! - [`types`]: the PostgreSQL → Arrow type mapping, and [`numeric`]: stored `numeric`s;
//! - [`patterns`]: `schema.table` patterns (exact, globs, regular expressions);
//! - [`meta`]: the metadata keys in schemas and fields;
//! - [`options`]: the plugin's options and their strict parser;
//! - [`encode`]: rows → Schema and Batch messages (the plugin's encoding core);
//! - [`decode`]: messages → zero-copy Arrow [`RecordBatch`](arrow_array::RecordBatch)es.
//!
//! Nothing here depends on PostgreSQL: it builds and is tested without a server.
//!
//! A table's Schema message and a Batch of two rows, as the plugin writes them, decoded as
//! the consumer does:
//!
//! ```
//! use arrow_buffer::Buffer;
//! use wal2arrow_schema::encode::write_schema_message;
//! use wal2arrow_schema::types::oid;
//! use wal2arrow_schema::{
//!     BatchEncoder, ChangeOp, ColumnBuilder, ColumnDesc, Decoder, Lsn, Message, PgKind,
//!     RelationDesc, ReplicaIdentity,
//! };
//!
//! let column = |name: &str, type_oid, type_name: &str| ColumnDesc {
//!     name: name.into(),
//!     type_oid,
//!     typmod: -1,
//!     type_name: type_name.into(),
//!     not_null: false,
//!     generated: false,
//!     kind: PgKind::from_type_oid(type_oid),
//! };
//! let table = RelationDesc {
//!     relid: 16384,
//!     namespace: "public".into(),
//!     name: "users".into(),
//!     columns: vec![column("id", oid::INT8, "int8"), column("name", oid::TEXT, "text")],
//!     primary_key: vec!["id".into()],
//!     replica_identity: ReplicaIdentity::Default,
//!     identity_key: vec!["id".into()],
//!     with_lsn: true,
//! };
//! let mut schema = Vec::new();
//! write_schema_message(&mut schema, &table).unwrap();
//! let mut encoder = BatchEncoder::new(&table);
//! for (id, name) in [(1, "Alice"), (2, "Bob")] {
//!     encoder.start_row(ChangeOp::Insert, Lsn(0x1600_0000 + id as u64)).unwrap();
//!     let ColumnBuilder::Int64(ids) = encoder.column(0) else { unreachable!() };
//!     ids.append_value(id);
//!     let ColumnBuilder::Utf8(names) = encoder.column(1) else { unreachable!() };
//!     names.append_value(name);
//! }
//! let mut batch = Vec::new();
//! encoder.write_batch(&mut batch).unwrap();
//!
//! let mut decoder = Decoder::new();
//! let Message::Schema(users) = decoder.decode(&Buffer::from_vec(schema)).unwrap() else {
//!     unreachable!()
//! };
//! let Message::Batch(rows) = decoder.decode(&Buffer::from_vec(batch)).unwrap() else {
//!     unreachable!()
//! };
//! assert_eq!(users.qualified_name, "public.users");
//! assert_eq!(rows.batch.num_rows(), 2);
//! // The table's columns, then `_op`, `_lsn`, `_missing` and `_unrepresentable`.
//! assert_eq!(rows.batch.schema().field(0).name(), "id");
//! ```

#![warn(missing_docs)]

pub mod column;
pub mod decode;
pub mod encode;
pub mod lsn;
pub mod meta;
pub mod numeric;
pub mod options;
pub mod patterns;
#[doc(hidden)]
pub mod samples;
pub mod types;
pub mod wire;

pub use decode::{DecodedBatch, Decoder, Message, Relation};
pub use encode::{
    BatchEncoder, ColumnBuilder, EncodeError, RelationDesc, ReplicaIdentity, WireBatch,
};
pub use lsn::Lsn;
pub use options::{OptionError, PluginOptions};
pub use patterns::{TableFilter, TablePattern};
pub use types::{ColumnDesc, PgKind, TypeClass};
pub use wire::{Begin, ChangeOp, Commit, StreamAbort, StreamCommit, WireError};

#[cfg(test)]
mod tests;
