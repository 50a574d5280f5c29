//! wal2arrow's integration tests live in `integration/`; run them with `cargo test`. They
//! start a scratch PostgreSQL (see `wal2arrow-harness`) and need PostgreSQL 15 installed.
