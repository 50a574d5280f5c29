//! wal2arrow wire messages — prefixes, fixed headers, Bundles, Schemas, Batches — through one
//! session's decoder.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wal2arrow_client::fuzzing::wire(data));
