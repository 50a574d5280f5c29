//! A scratch PostgreSQL for the Python tests (python/tests/conftest.py): starts a cluster as
//! the Rust tests' shared one (the plugin built from this workspace, or `WAL2ARROW_PLUGIN`;
//! the server of `PG_BINDIR`, else Debian's), prints one JSON line —
//! `{"host", "port", "user", "socket_dir", "wal2json"}` — and runs until its standard input
//! closes, then stops and removes the cluster (its watchdog also does if this process dies).

use std::io::Read;

use wal2arrow_harness::{Cluster, ClusterOptions, auth_test_hba, wal2json_installed};

fn main() {
    let cluster = ClusterOptions::with_plugin()
        .map(|o| ClusterOptions { hba: auth_test_hba(), ..o })
        .and_then(|o| Cluster::start(&o))
        .unwrap_or_else(|e| {
            eprintln!("scratch_postgres: cannot start the scratch cluster: {e}");
            std::process::exit(1);
        });
    let quote = |s: &str| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""));
    println!(
        "{{\"host\": {}, \"port\": {}, \"user\": {}, \"socket_dir\": {}, \"wal2json\": {}}}",
        quote(cluster.host()),
        cluster.port(),
        quote(cluster.superuser()),
        quote(&cluster.socket_dir().display().to_string()),
        wal2json_installed()
    );
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    if let Err(e) = cluster.stop() {
        eprintln!("scratch_postgres: {e}");
    }
}
