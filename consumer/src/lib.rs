//! wal2arrow's consumer: streams PostgreSQL row changes, encoded inside the server by the
//! wal2arrow output plugin, as Arrow [`RecordBatch`](arrow_array::RecordBatch)es.
//!
//! A [`Consumer`] checks the server before it streams ([`Consumer::check`]: every requirement
//! and the exact fix for each), creates the slot if needed, and hands out a [`CdcStream`]: a
//! background task keeps the replication connection alive, reconnects with backoff after a
//! transient failure and resumes after the acknowledged position; the slot only advances to
//! what your code acknowledged. Where the server cannot load wal2arrow, the consumer falls
//! back to wal2json and parses its JSON into the same events and batches ([`PluginChoice`],
//! [`OutputPlugin`]). With the `router` feature (on by default), a [`Router`] spreads a stream
//! over parallel readers with bounded memory.
//!
//! The layer below — connections, the replication protocol, [`ChangeStream`], slots — is
//! `wal2arrow-client`, re-exported here.
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

#![warn(missing_docs)]

pub mod backfill;
pub mod consumer;
pub mod coverage;
pub mod error;
pub mod preflight;
pub mod report;
#[cfg(feature = "router")]
pub mod router;
pub mod settings;
pub mod setup;

pub use consumer::{
    CdcStream, Consumer, ConsumerBuilder, HEARTBEAT_PREFIX, SnapshotStats, StatsSnapshot,
    StreamStats,
};
pub use error::{Error, Result};
pub use preflight::Preflight;
pub use report::{Check, Outcome, PreflightReport};
#[cfg(feature = "router")]
pub use router::{
    AckToken, Delivery, KeyPartitioner, Partitioning, QueueStats, Reader, Routed, RoutedBatch,
    Router, RouterOptions,
};
pub use settings::{Backoff, PluginChoice, SlotMode, SnapshotMode, SnapshotResume};
pub use wal2arrow_client as client;
pub use wal2arrow_client::{
    AckHandle, ChangeBatch, ChangeStream, Config, CreatedSlot, DbError, ErrorClass, Event,
    InProgress, LogicalMessage, Lsn, OutputPlugin, PLUGIN_NAME, PluginOptions, Position, RawFrame,
    Relation, ReplicationClient, RootCerts, SlotInfo, SlotState, SnapshotEvent, SslMode,
    StreamOptions, StreamedStats, SystemInfo, TruncateEvent, TxnBegin, TxnCommit,
    create_failover_slot, create_slot, create_slot_with, drop_slot, find_slot, list_slots, open,
    sql_client,
};

/// The README's examples, compiled as doctests so they stay true to the API.
#[doc = include_str!("../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
