//! Integration tests against a real PostgreSQL: one scratch cluster per test process (see
//! `wal2arrow-harness`), one database per test.

mod changes;
mod cli;
mod common;
mod fallback;
mod golden;
mod preflight;
mod resume;
mod routing;
mod spine;
mod tls;
mod types;
