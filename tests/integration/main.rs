//! Integration tests against a real PostgreSQL: one scratch cluster per test process (see
//! `wal2arrow-harness`), one database per test.

mod backfill;
mod changes;
mod cli;
mod common;
mod delivery;
mod errors;
mod failover;
mod fallback;
mod golden;
mod kafka;
mod layers;
mod partitions;
mod preflight;
mod random_dml;
mod resume;
mod routing;
mod snapshot;
mod spine;
mod standard_arrow;
mod streaming;
mod tls;
mod types;
