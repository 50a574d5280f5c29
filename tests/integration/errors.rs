//! Errors a person can act on (issue 11): bad logins show the server's words, SQLSTATE and
//! what to check (exit 4); a silent server and a server without TLS end within
//! `connect_timeout` (exit 4); a missing schema privilege, a plugin the allow-list refuses
//! and a slot in use are preflight failures with the fix (exit 3); an unwritable `--out` or a
//! log filter that does not parse is bad usage found before anything streams (exit 2); sink failures are labelled as such; logs
//! on a pipe carry no colour codes.

use std::time::Duration;

use wal2arrow_harness::{Cluster, ClusterOptions};

use crate::cli::{cli, current_lsn, run, scratch_dir};
use crate::common::{config, confirmed_flush};

/// A cluster whose `pg_hba.conf` makes `e_md5` and `e_scram` log in with passwords (the
/// password is `right one`), with other options as `configure` sets them.
pub(crate) fn password_cluster(configure: impl FnOnce(&mut ClusterOptions)) -> Cluster {
    let mut opts = ClusterOptions::with_plugin().unwrap();
    configure(&mut opts);
    opts.hba = vec![
        "host all e_md5 127.0.0.1/32 md5".into(),
        "host all e_scram 127.0.0.1/32 scram-sha-256".into(),
    ];
    let cluster = Cluster::start(&opts).unwrap();
    cluster
        .psql(
            "postgres",
            "SET password_encryption = 'md5';
             CREATE ROLE e_md5 LOGIN REPLICATION PASSWORD 'right one';
             SET password_encryption = 'scram-sha-256';
             CREATE ROLE e_scram LOGIN REPLICATION PASSWORD 'right one';",
        )
        .unwrap();
    cluster
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_failures_show_the_servers_words_and_exit_4() {
    let cluster = password_cluster(|_| {});
    let port = cluster.port().to_string();
    let check = |dsn: String| cli(&["check", "--dsn", &dsn]);
    let expect_4 = |(code, out, err): (i32, String, String), words: &[&str]| {
        assert_eq!(code, 4, "{out}{err}");
        for w in words {
            assert!(err.contains(w), "{w:?} in:\n{err}");
        }
        assert!(!err.contains("db error") && !err.contains("invalid configuration"), "{err}");
    };
    // A wrong password, md5 and SCRAM, from a key/value DSN, a URL and PGPASSWORD.
    let wrong = ["password authentication failed for user", "28P01", "PGPASSWORD"];
    expect_4(
        run(check(format!("host=127.0.0.1 port={port} user=e_md5 password=wrong dbname=postgres")))
            .await,
        &wrong,
    );
    expect_4(
        run(check(format!("postgresql://e_scram:wrong@127.0.0.1:{port}/postgres"))).await,
        &wrong,
    );
    let mut env = check(format!("host=127.0.0.1 port={port} user=e_scram dbname=postgres"));
    env.env("PGPASSWORD", "wrong");
    expect_4(run(env).await, &wrong);
    // The right password works (from PGPASSWORD).
    let mut env = check(format!("host=127.0.0.1 port={port} user=e_md5 dbname=postgres"));
    env.env("PGPASSWORD", "right one");
    let (code, out, err) = run(env).await;
    assert_eq!(code, 0, "{out}{err}");
    // No password for a role that needs one: where it can come from.
    expect_4(
        run(check(format!("host=127.0.0.1 port={port} user=e_md5 dbname=postgres"))).await,
        &["requires a password", "PGPASSWORD", "pgpass"],
    );
    // A role and a database that do not exist.
    expect_4(
        run(check(format!("host=127.0.0.1 port={port} user=nosuch dbname=postgres"))).await,
        &["role \"nosuch\" does not exist", "28000"],
    );
    expect_4(
        run(check(format!("host=127.0.0.1 port={port} user=postgres dbname=nosuchdb"))).await,
        &["database \"nosuchdb\" does not exist", "3D000", "dbname"],
    );
    // sslmode=require against a server without TLS.
    expect_4(
        run(check(format!(
            "host=127.0.0.1 port={port} user=postgres dbname=postgres sslmode=require"
        )))
        .await,
        &["does not accept TLS", "sslmode=require"],
    );
    // A server that accepts the connection and never answers: connect_timeout bounds it.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let started = std::time::Instant::now();
    expect_4(
        run(check(format!("host=127.0.0.1 port={silent_port} user=postgres connect_timeout=2")))
            .await,
        &["timed out"],
    );
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    drop(silent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_the_role_may_not_use_is_a_preflight_failure_with_the_grant() {
    let db = Cluster::shared().database("schema_usage");
    let role = format!("nousage_{}", db.name());
    db.psql(&format!(
        "CREATE ROLE {role} LOGIN REPLICATION;
         CREATE SCHEMA hidden; CREATE TABLE hidden.t (id int PRIMARY KEY);
         GRANT SELECT ON hidden.t TO {role};"
    ));
    let dsn = format!("{} user={role}", db.dsn().replace("user=postgres", ""));
    let (code, out, err) = run(cli(&["check", "--dsn", &dsn, "--tables", "hidden.*"])).await;
    assert_eq!(code, 3, "{out}{err}");
    let fix = format!("GRANT USAGE ON SCHEMA \"hidden\" TO \"{role}\";");
    assert!(out.contains("FAIL  schema usage") && out.contains(&fix), "{out}");
    db.psql(&fix);
    let (code, out, err) = run(cli(&["check", "--dsn", &dsn, "--tables", "hidden.*"])).await;
    assert_eq!(code, 0, "{out}{err}");
    db.psql(&format!("DROP OWNED BY {role}; DROP ROLE {role}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_in_use_is_a_preflight_failure_naming_who_holds_it() {
    let db = Cluster::shared().database("slot_in_use");
    let mut options = wal2arrow_consumer::StreamOptions::new("busy");
    options.create_slot = true;
    let mut holder = config(&db);
    holder.application_name = "the_other_consumer".into();
    let occupant = wal2arrow_consumer::open(&holder, &options).await.unwrap();
    let pid = db.psql("SELECT active_pid FROM pg_replication_slots WHERE slot_name = 'busy'");
    let (code, out, err) =
        run(cli(&["stream", "--dsn", &db.dsn(), "--slot", "busy", "--progress", "never"])).await;
    assert_eq!(code, 3, "{out}{err}");
    assert!(err.contains(&format!("process {pid}")), "the holder's PID:\n{err}");
    assert!(err.contains("the_other_consumer"), "its application_name:\n{err}");
    assert!(err.contains("pg_terminate_backend"), "how to end it:\n{err}");
    occupant.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unwritable_out_is_bad_usage_found_before_connecting() {
    let dir = scratch_dir("unwritable");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("a-file");
    std::fs::write(&file, b"x").unwrap();
    // The server is unreachable: had the command connected first it would exit 4.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dsn = format!("host=127.0.0.1 port={closed} user=postgres");
    for (sink, out) in [
        ("jsonl", file.join("out.jsonl")),
        ("ipc", file.join("x.arrow")),
        ("parquet", file.join("dir")),
    ] {
        let (code, stdout, err) =
            run(cli(&["stream", "--dsn", &dsn, "--sink", sink, "--out", out.to_str().unwrap()]))
                .await;
        assert_eq!(code, 2, "{sink}: {stdout}{err}");
        assert!(err.contains("--out") && err.contains(out.to_str().unwrap()), "{sink}: {err}");
    }
    // So is a log filter that does not parse (it used to fall back to `warn` silently).
    let (code, stdout, err) =
        run(cli(&["--log-level", "warn,wal2arrow_sinks=[bogus", "check", "--dsn", &dsn])).await;
    assert_eq!(code, 2, "{stdout}{err}");
    assert!(err.contains("--log-level") && err.contains("[bogus"), "{err}");
    // A file that is not this sink's output is never appended to (nor truncated).
    std::fs::write(&file, b"someone else's notes\n").unwrap();
    let db = Cluster::shared().database("foreign_out");
    for sink in ["jsonl", "ipc"] {
        let (code, _, err) = run(cli(&[
            "stream",
            "--dsn",
            &db.dsn(),
            "--slot",
            "foreign",
            "--sink",
            sink,
            "--out",
            file.to_str().unwrap(),
            "--idle-timeout",
            "1",
        ]))
        .await;
        assert_ne!(code, 0, "{sink}: {err}");
        assert!(err.contains("not") && err.contains("choose another --out"), "{sink}: {err}");
        assert_eq!(std::fs::read(&file).unwrap(), b"someone else's notes\n");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_that_cannot_write_fails_as_a_sink_naming_the_path() {
    let db = Cluster::shared().database("sink_error");
    db.psql(
        "CREATE TABLE t (id int PRIMARY KEY, v text);
         SELECT pg_create_logical_replication_slot('sink_error', 'wal2arrow');
         INSERT INTO t SELECT g, repeat('x', 100) FROM generate_series(1, 2000) g;",
    );
    let until = current_lsn(&db);
    // A device that is always full: every write fails with ENOSPC.
    let (code, out, err) = run(cli(&[
        "stream",
        "--dsn",
        &db.dsn(),
        "--slot",
        "sink_error",
        "--sink",
        "jsonl",
        "--out",
        "/dev/full",
        "--until-lsn",
        &until,
        "--progress",
        "never",
    ]))
    .await;
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("sink error") && err.contains("/dev/full"), "{err}");
    assert!(!err.contains("connection failed") && !err.contains("reconnecting"), "{err}");
    // Nothing was acknowledged: the changes are still there for the next run.
    let until: wal2arrow_consumer::Lsn = until.parse().unwrap();
    assert!(confirmed_flush(&db, "sink_error") < until);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_written_to_a_pipe_carry_no_colour_codes() {
    let db = Cluster::shared().database("no_colour");
    db.psql("CREATE TABLE t (id int PRIMARY KEY)");
    // The slot does not exist yet: creating it is logged at info.
    let until = current_lsn(&db);
    let (code, out, err) = run(cli(&[
        "stream",
        "--dsn",
        &db.dsn(),
        "--slot",
        "no_colour",
        "--until-lsn",
        &until,
        "--log-level",
        "info",
        "--progress",
        "never",
    ]))
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(err.contains("INFO"), "info logs are written: {err}");
    assert!(!err.contains('\u{1b}'), "no escape sequences on a pipe: {err:?}");
}

/// A server whose `output_plugin_libraries` lists wal2json but not wal2arrow, and a role that
/// may not read the setting: `check --plugin wal2arrow` names the allow-list (not a missing
/// installation) and `stream --plugin wal2arrow` is a preflight failure with the same fix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_the_allow_list_refuses_is_a_preflight_failure_even_for_a_plain_role() {
    let mut opts = ClusterOptions::with_plugin().unwrap();
    opts.output_plugins =
        Some(["pgoutput", "test_decoding", "wal2json"].map(String::from).to_vec());
    let cluster = Cluster::start(&opts).unwrap();
    if !cluster.has_output_plugin_libraries() {
        eprintln!("this server has no output_plugin_libraries: nothing to refuse");
        return;
    }
    let db = cluster.database("allow_list");
    db.psql("CREATE ROLE plain LOGIN REPLICATION; CREATE TABLE t (id int PRIMARY KEY); GRANT SELECT ON t TO plain;");
    let dsn = format!("host=127.0.0.1 port={} user=plain dbname={}", cluster.port(), db.name());
    let (code, out, err) = run(cli(&["check", "--dsn", &dsn, "--plugin", "wal2arrow"])).await;
    assert_eq!(code, 3, "{out}{err}");
    assert!(out.contains("may not read it"), "the setting is there, unreadable:\n{out}");
    assert!(out.contains("ALTER SYSTEM SET output_plugin_libraries"), "{out}");
    assert!(!out.contains("cargo pgrx install"), "the plugin is installed:\n{out}");
    let (code, out, err) = run(cli(&[
        "stream",
        "--dsn",
        &dsn,
        "--slot",
        "refused",
        "--plugin",
        "wal2arrow",
        "--progress",
        "never",
    ]))
    .await;
    assert_eq!(code, 3, "{out}{err}");
    assert!(err.contains("output_plugin_libraries") && err.contains("'wal2arrow'"), "{err}");
    // As a superuser the list is known: the fix is the exact statement.
    let (code, out, _) = run(cli(&["check", "--dsn", &db.dsn(), "--plugin", "wal2arrow"])).await;
    assert_eq!(code, 3, "{out}");
    assert!(
        out.contains("ALTER SYSTEM SET output_plugin_libraries = 'pgoutput', 'test_decoding', 'wal2json', 'wal2arrow';"),
        "{out}"
    );
    // The default (auto) falls back to wal2json, and says so.
    if !wal2arrow_harness::wal2json_installed() {
        return;
    }
    let (code, out, err) = run(cli(&["check", "--dsn", &dsn])).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("fall back to wal2json"), "{out}");
}
