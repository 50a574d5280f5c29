//! The wal2json (format 2) decoder of the fallback path, one message per line.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wal2arrow_client::fuzzing::wal2json(data));
