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
pub use wire::{Begin, ChangeOp, Commit, WireError};

#[cfg(test)]
mod tests;
