//! Snapshot and backfill rows: binary `COPY` streams cut in two, and text `COPY` lines.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wal2arrow_client::fuzzing::copy(data));
