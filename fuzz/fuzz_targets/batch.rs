//! The Arrow IPC record batch decoder, behind a Schema message of a table with a column of
//! every kind wal2arrow maps (so that the fuzzer reaches nested and fixed-width buffers).
#![no_main]

use std::sync::OnceLock;

fn schema() -> &'static [u8] {
    static SCHEMA: OnceLock<Vec<u8>> = OnceLock::new();
    SCHEMA.get_or_init(wal2arrow_client::fuzzing::every_kind_schema)
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| wal2arrow_client::fuzzing::batch(schema(), data));
