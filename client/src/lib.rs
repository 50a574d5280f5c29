//! The wal2arrow replication client: connections to PostgreSQL (libpq's connection strings
//! and `PG*` variables, Unix-domain sockets, the password file, TLS with every `sslmode`), the
//! streaming replication protocol (framing, `CREATE_REPLICATION_SLOT`, `START_REPLICATION`,
//! standby status updates), replication slots, and [`ChangeStream`]: one session's change
//! events, with Arrow batches decoded in place from the bytes off the socket.
//!
//! This is the layer to build on when you manage connections and reconnection yourself; the
//! `wal2arrow-consumer` crate adds a reconnecting, acknowledging consumer with preflight
//! checks and parallel readers on top of it.
//!
//! ```no_run
//! use wal2arrow_client::{Config, Event, StreamOptions};
//!
//! # async fn run() -> Result<(), wal2arrow_client::Error> {
//! let config = Config::from_dsn("host=/var/run/postgresql user=cdc dbname=app")?;
//! let mut stream = wal2arrow_client::open(&config, &StreamOptions::new("app_cdc")).await?;
//! while let Some(event) = stream.next_event().await? {
//!     if let Event::Commit(commit) = event {
//!         // Everything of this transaction was handled: the slot may move past it.
//!         stream.ack(commit.end_lsn);
//!     }
//! }
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

mod catalog;
pub mod config;
pub mod error;
pub mod event;
/// Entry points for the fuzz targets; not a stable API.
#[doc(hidden)]
pub mod fuzzing;
pub mod plugin;
mod protocol;
pub mod replication;
pub mod slots;
pub mod snapshot;
pub mod sql;
pub mod stream;
pub mod streamed;
mod tls;

pub use config::{Config, RootCerts, SslMode};
pub use error::{DbError, Error, ErrorClass, Result};
pub use event::{
    ChangeBatch, ChunkId, Event, LogicalMessage, Position, RawFrame, TruncateEvent, TxnBegin,
    TxnCommit,
};
pub use plugin::{OutputPlugin, PLUGIN_NAME};
pub use replication::{CreatedSlot, ReplicationClient, SystemInfo};
pub use slots::{
    SlotInfo, SlotProblem, SlotResolution, SlotState, create_failover_slot, create_slot,
    create_slot_with, describe_plugins, drop_slot, find_slot, list_slots, resolve_slot,
};
pub use snapshot::{Snapshot, SnapshotEvent, SnapshotProgress};
pub use sql::sql_client;
pub use stream::{AckHandle, ChangeStream, Step, StreamOptions, open};
pub use streamed::{InProgress, StreamedStats};
pub use wal2arrow_schema::{Lsn, PluginOptions, Relation};
