//! `wal2arrow`: stream PostgreSQL changes as Arrow from the command line. See
//! `wal2arrow --help` and [`wal2arrow_cli`].

fn main() -> std::process::ExitCode {
    wal2arrow_cli::main()
}
