//! The replication protocol's frame reader (CopyData, XLogData, keepalives, other backend
//! messages) and the wal2arrow decoding of every XLogData payload it yields.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wal2arrow_client::fuzzing::frames(data));
