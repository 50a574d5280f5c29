//! TLS on the replication and SQL connections, for every sslmode (issue 4).

use std::path::PathBuf;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use wal2arrow_client::Error;
use wal2arrow_consumer::{Config, ReplicationClient, RootCerts, SslMode, StreamOptions};
use wal2arrow_harness::{Cluster, ClusterOptions};

use crate::common::read_txns;

struct Pki {
    ca_pem: String,
    server_cert_pem: String,
    server_key_pem: String,
}

/// A CA named `ca_name` and a server certificate it signed, for `names`.
fn pki(ca_name: &str, names: &[&str]) -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, ca_name);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let server =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    let cert = server.signed_by(&key, &issuer).unwrap();
    Pki { ca_pem: ca_cert.pem(), server_cert_pem: cert.pem(), server_key_pem: key.serialize_pem() }
}

fn write_temp(name: &str, contents: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wal2arrow-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

fn config(cluster: &Cluster, db: &str, host: &str, mode: SslMode, ca: Option<&PathBuf>) -> Config {
    let mut c = Config::from_dsn(&cluster.dsn(db)).unwrap();
    c.host = host.to_owned();
    c.ssl_mode = mode;
    c.ssl_root_cert = ca.map(|p| RootCerts::File(p.clone()));
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sslmode_does_what_libpq_does() {
    // The server's certificate names "localhost" only: verify-full must refuse 127.0.0.1.
    let pki = pki("wal2arrow test CA", &["localhost"]);
    let mut opts = ClusterOptions::with_plugin().unwrap();
    opts.files = vec![
        ("server.crt".into(), pki.server_cert_pem.into_bytes()),
        ("server.key".into(), pki.server_key_pem.into_bytes()),
    ];
    opts.settings = vec![
        ("ssl".into(), "on".into()),
        ("ssl_cert_file".into(), "'$BASE/server.crt'".into()),
        ("ssl_key_file".into(), "'$BASE/server.key'".into()),
    ];
    let cluster = Cluster::start(&opts).unwrap();
    let db = cluster.database("tls");
    let ca = write_temp("ca.pem", &pki.ca_pem);
    let stranger =
        write_temp("other-ca.pem", &self::pki("someone else's CA", &["localhost"]).ca_pem);

    // Encrypted without checks; with the CA for any name; with the CA and the right name.
    for (host, mode, roots) in [
        ("127.0.0.1", SslMode::Prefer, None),
        ("127.0.0.1", SslMode::Require, None),
        ("127.0.0.1", SslMode::VerifyCa, Some(&ca)),
        ("localhost", SslMode::VerifyFull, Some(&ca)),
    ] {
        let c = config(&cluster, db.name(), host, mode, roots);
        let client =
            ReplicationClient::connect(&c).await.unwrap_or_else(|e| panic!("{mode:?}: {e}"));
        assert!(client.is_tls(), "{mode:?} encrypts");
        let sql = wal2arrow_consumer::sql_client(&c).await.unwrap();
        let ssl: bool = sql
            .query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[])
            .await
            .unwrap()
            .get(0);
        assert!(ssl, "{mode:?}: the SQL connection is encrypted too");
    }
    // Refused: the wrong name for verify-full, an untrusted CA for both verifying modes.
    for (host, mode, roots, why) in [
        ("127.0.0.1", SslMode::VerifyFull, &ca, "not valid for name"),
        ("127.0.0.1", SslMode::VerifyCa, &stranger, "UnknownIssuer"),
        ("localhost", SslMode::VerifyFull, &stranger, "UnknownIssuer"),
    ] {
        let c = config(&cluster, db.name(), host, mode, Some(roots));
        let e = ReplicationClient::connect(&c).await.unwrap_err();
        assert!(matches!(e, Error::Tls(_)) && e.to_string().contains(why), "{mode:?} {host}: {e}");
        // The SQL connection is refused the same way: a TLS error, not "cannot connect" —
        // which would also be retried as transient.
        let e = wal2arrow_consumer::sql_client(&c).await.unwrap_err();
        assert!(matches!(e, Error::Tls(_)) && !e.is_transient(), "{mode:?} {host}: SQL: {e}");
        assert!(e.to_string().contains(why), "{mode:?} {host}: SQL: {e}");
    }
    // A whole stream over verify-full.
    db.psql("CREATE TABLE secret (v text)");
    let c = config(&cluster, db.name(), "localhost", SslMode::VerifyFull, Some(&ca));
    let mut stream = wal2arrow_consumer::open(&c, &StreamOptions::new("tls_slot")).await.unwrap();
    db.psql("INSERT INTO secret VALUES ('over TLS')");
    let txns = read_txns(&mut stream, 1, Duration::from_secs(30)).await;
    assert_eq!(txns[0].batches[0].num_rows(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_refuses_a_server_without_tls_and_prefer_falls_back() {
    let cluster = Cluster::shared();
    let db = cluster.database("no_tls");
    let e = ReplicationClient::connect(&config(
        cluster,
        db.name(),
        "127.0.0.1",
        SslMode::Require,
        None,
    ))
    .await
    .unwrap_err();
    assert!(matches!(e, Error::Tls(_)) && e.to_string().contains("does not accept TLS"), "{e}");
    let client =
        ReplicationClient::connect(&config(cluster, db.name(), "127.0.0.1", SslMode::Prefer, None))
            .await
            .unwrap();
    assert!(!client.is_tls());
}
