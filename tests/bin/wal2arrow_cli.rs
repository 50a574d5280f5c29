//! The `wal2arrow` command, built in this package so the integration tests can run it (and
//! kill it): the same code as the real binary.

fn main() -> std::process::ExitCode {
    wal2arrow_cli::main()
}
