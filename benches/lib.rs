//! wal2arrow's benchmarks live in `benches/`: `cargo bench -p wal2arrow-benches`.
