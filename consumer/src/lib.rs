//! wal2arrow's consumer: streams PostgreSQL row changes, encoded inside the server by the
//! wal2arrow output plugin, as Arrow [`RecordBatch`](arrow_array::RecordBatch)es.
//!
//! The consumer speaks the streaming replication protocol itself (on `postgres-protocol`'s
//! codecs and tokio): it creates the slot if needed, starts replication, reads XLogData
//! payloads straight into aligned buffers and decodes the Arrow IPC inside them in place, so
//! the arrays you get point into the bytes that came off the socket. Ordinary SQL (slot
//! lookups) goes through tokio-postgres.
//!
//! Where the server cannot load wal2arrow, the consumer falls back to wal2json and parses its
//! JSON into the same events and batches ([`PluginChoice`], [`OutputPlugin`]; the README's
//! "The wal2json fallback" lists the few things JSON cannot carry).
//!
//! ```no_run
//! use wal2arrow_consumer::{Consumer, Event};
//!
//! # async fn run() -> Result<(), wal2arrow_consumer::Error> {
//! let consumer = Consumer::builder()
//!     .dsn("host=localhost user=cdc password=secret dbname=app")?
//!     .slot("app_cdc")
//!     .tables(["public.*"])
//!     .build()?;
//! let mut stream = consumer.start().await?;
//! while let Some(event) = stream.next().await {
//!     match event? {
//!         Event::Change(change) => {
//!             // change.batch: the table's columns, then `_op`, `_lsn`, `_missing` and
//!             // `_unrepresentable`.
//!             println!("{}: {} rows", change.table(), change.num_rows());
//!         }
//!         // Once the transaction is durably handled, let the server recycle its WAL.
//!         Event::Commit(commit) => stream.ack(commit.end_lsn),
//!         _ => {}
//!     }
//! }
//! # Ok(())
//! # }
//! ```

#[cfg(feature = "cli")]
pub mod cli;
pub mod config;
pub mod consumer;
pub mod error;
/// Entry points for the fuzz targets; not a stable API.
#[doc(hidden)]
pub mod fuzzing;
pub mod preflight;
mod protocol;
pub mod router;
#[cfg(feature = "sinks")]
pub mod sink;
pub mod slots;
pub mod stream;
mod tls;
/// The wal2json fallback's decoder, public for the benchmarks; not a stable API.
#[doc(hidden)]
pub mod wal2json;

pub use config::{Config, RootCerts, SslMode};
pub use consumer::{
    Backoff, CdcStream, Consumer, ConsumerBuilder, HEARTBEAT_PREFIX, PluginChoice, SlotMode,
    StatsSnapshot,
};
pub use error::{DbError, Error, Result};
pub use preflight::{Check, Outcome, Preflight, PreflightReport};
pub use router::{
    AckToken, Delivery, KeyPartitioner, Partitioning, QueueStats, Reader, Routed, RoutedBatch,
    Router, RouterOptions,
};
pub use slots::{SlotInfo, create_slot, create_slot_with, drop_slot, list_slots};
pub use stream::{
    AckHandle, ChangeBatch, ChangeStream, CreatedSlot, Event, LogicalMessage, OutputPlugin,
    Position, RawFrame, ReplicationClient, SlotState, StreamOptions, SystemInfo, TruncateEvent,
    TxnBegin, TxnCommit, find_slot, open, sql_client,
};
pub use wal2arrow_schema::{Lsn, PluginOptions, Relation};

/// The README's examples, compiled as doctests so they stay true to the API.
#[doc = include_str!("../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
