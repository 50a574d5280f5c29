//! Errors by layer (issue 12): classified by SQLSTATE, so a server answering in German is
//! understood exactly as one answering in English; bytes the protocol does not allow end the
//! stream with a definite error naming the LSN, without reconnecting; a sink that cannot write
//! fails as a sink, with its path, never as a connection.

use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use wal2arrow_client::{Error as ClientError, ErrorClass, ReplicationClient, SslMode};
use wal2arrow_consumer::{Consumer, Event, Lsn, PluginChoice};
use wal2arrow_harness::Cluster;
use wal2arrow_sinks::RunOptions;
use wal2arrow_sinks::parquet::{ParquetOptions, ParquetSink};

use crate::cli::{cli, run};
use crate::common::{config, confirmed_flush};

/// A cluster with password logins for `e_md5`, whose messages are in `lc_messages`, and that
/// refuses wal2json (on servers with `output_plugin_libraries`).
fn cluster(lc_messages: &str) -> Cluster {
    let cluster = crate::errors::password_cluster(|opts| {
        opts.settings = vec![("lc_messages".into(), format!("'{lc_messages}'"))];
        opts.output_plugins =
            Some(vec!["pgoutput".into(), "test_decoding".into(), "wal2arrow".into()]);
    });
    cluster
        .psql(
            "postgres",
            "CREATE TABLE t (id int PRIMARY KEY);
             SELECT pg_create_logical_replication_slot('held', 'wal2arrow');",
        )
        .unwrap();
    cluster
}

/// What the library and the command make of an error: everything but the server's words.
#[derive(Debug, PartialEq, Eq)]
struct Understood {
    class: ErrorClass,
    code: Option<String>,
    login_failure: bool,
    advice: Option<&'static str>,
}

fn understood(e: &ClientError) -> Understood {
    Understood {
        class: e.class(),
        code: e.code().map(str::to_owned),
        login_failure: e.is_login_failure(),
        advice: e.advice(),
    }
}

/// The errors of one cluster, with their messages.
async fn errors(cluster: &Cluster) -> Vec<(&'static str, Understood, String)> {
    let dsn = |user: &str, password: Option<&str>, db: &str| {
        let mut c =
            wal2arrow_consumer::Config::from_dsn(&cluster.dsn(db)).expect("harness DSN parses");
        c.user = user.into();
        c.password = password.map(Into::into);
        c
    };
    let mut out = Vec::new();
    let mut push = |case, e: ClientError| out.push((case, understood(&e), e.to_string()));
    let e = ReplicationClient::connect(&dsn("e_md5", Some("wrong"), "postgres")).await.unwrap_err();
    push("wrong password", e);
    let e = ReplicationClient::connect(&dsn("nosuch", None, "postgres")).await.unwrap_err();
    push("unknown role", e);
    let e = ReplicationClient::connect(&dsn("postgres", None, "nosuchdb")).await.unwrap_err();
    push("unknown database", e);
    let e = wal2arrow_consumer::sql_client(&dsn("postgres", None, "nosuchdb")).await.unwrap_err();
    push("unknown database (SQL)", e);
    // An option the plugin does not know (22023, definite).
    let client = ReplicationClient::connect(&dsn("postgres", None, "postgres")).await.unwrap();
    let e = client
        .start_with_pairs("held", Lsn::INVALID, &[("include-everything", Some("1"))])
        .await
        .unwrap_err();
    push("unknown plugin option", e);
    // A slot another session streams from (55006, transient: it is let go soon).
    let holder = ReplicationClient::connect(&dsn("postgres", None, "postgres")).await.unwrap();
    let held = holder.start_with_pairs("held", Lsn::INVALID, &[]).await.unwrap();
    let client = ReplicationClient::connect(&dsn("postgres", None, "postgres")).await.unwrap();
    let e = client.start_with_pairs("held", Lsn::INVALID, &[]).await.unwrap_err();
    push("slot in use", e);
    held.close().await.unwrap();
    out
}

/// The same failures, from a server whose messages are in German: the same classes, codes and
/// advice; the command's exit codes, preflight verdicts and fixes the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_answering_in_german_is_understood_as_in_english() {
    if !wal2arrow_harness::server_has_translations("de") {
        eprintln!("this server build has no German messages (built without NLS): skipped");
        return;
    }
    let english = cluster("C");
    let german = cluster("de_DE.UTF-8");
    let (en, de) = (errors(&english).await, errors(&german).await);
    for ((case, en_understood, en_text), (_, de_understood, de_text)) in en.iter().zip(&de) {
        println!("{case}:\n  en: {en_text}\n  de: {de_text}");
        assert_eq!(en_understood, de_understood, "{case}: {en_text} / {de_text}");
    }
    // The translation took effect (or the comparison above proves nothing).
    let wrong_password = &de[0].2;
    assert!(wrong_password.contains("Passwort-Authentifizierung"), "{wrong_password}");
    let expected = [
        ("wrong password", ErrorClass::Definite, true),
        ("unknown role", ErrorClass::Definite, true),
        ("unknown database", ErrorClass::Definite, true),
        ("unknown database (SQL)", ErrorClass::Definite, true),
        ("unknown plugin option", ErrorClass::Definite, false),
        ("slot in use", ErrorClass::Transient, false),
    ];
    for ((case, class, login), (got_case, got, _)) in expected.iter().zip(&de) {
        assert_eq!((case, *class, *login), (got_case, got.class, got.login_failure));
    }

    // The command: same exit codes and advice; the same preflight verdicts and fixes.
    for (args, code, advice) in [
        (vec!["user=e_md5 password=wrong"], 4, "PGPASSWORD"),
        (vec!["user=postgres dbname=nosuchdb"], 4, "PGDATABASE"),
    ] {
        let mut outputs = Vec::new();
        for c in [&english, &german] {
            let dsn = format!("host=127.0.0.1 port={} dbname=postgres {}", c.port(), args[0]);
            let (got, out, err) = run(cli(&["check", "--dsn", &dsn])).await;
            assert_eq!(got, code, "{out}{err}");
            assert!(err.contains(advice), "{advice:?} in {err}");
            outputs.push(err);
        }
        println!("check {}:\n  en: {}  de: {}", args[0], outputs[0], outputs[1]);
    }
    let verdicts = |c: &Cluster| {
        let dsn = c.dsn("postgres");
        async move {
            let report = Consumer::builder()
                .dsn(&dsn)
                .unwrap()
                .slot("fresh")
                .output_plugin(PluginChoice::Wal2Json)
                .build()
                .unwrap()
                .check()
                .await
                .unwrap();
            report
                .checks
                .iter()
                .map(|c| match &c.outcome {
                    wal2arrow_consumer::Outcome::Fail { fix, .. } => {
                        format!("{}: fail: {fix}", c.name)
                    }
                    wal2arrow_consumer::Outcome::Warn { fix, .. } => {
                        format!("{}: warn: {fix}", c.name)
                    }
                    wal2arrow_consumer::Outcome::Pass(_) => format!("{}: pass", c.name),
                    wal2arrow_consumer::Outcome::Skipped(_) => format!("{}: skipped", c.name),
                })
                .collect::<Vec<_>>()
        }
    };
    let (en, de) = (verdicts(&english).await, verdicts(&german).await);
    assert_eq!(en, de);
    assert!(
        en.iter().any(|v| v.contains(": fail: ")) || !english.has_output_plugin_libraries(),
        "wal2json is refused where the allow-list exists: {en:#?}"
    );
}

/// Forwards one client's connection to the server; on a replication connection, after the
/// first XLogData it passes on, sends a CopyData that breaks the protocol (an XLogData
/// shorter than its header).
async fn proxy_one(mut client: TcpStream, server_port: u16) -> std::io::Result<()> {
    let mut server = TcpStream::connect(("127.0.0.1", server_port)).await?;
    // The startup packet: its length, then the parameters.
    let mut len = [0u8; 4];
    client.read_exact(&mut len).await?;
    let mut startup = vec![0u8; u32::from_be_bytes(len) as usize - 4];
    client.read_exact(&mut startup).await?;
    let replication = startup.windows(20).any(|w| w == b"replication\0database");
    server.write_all(&len).await?;
    server.write_all(&startup).await?;
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let upstream = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
    });
    let mut injected = !replication;
    loop {
        let mut head = [0u8; 5];
        if server_read.read_exact(&mut head).await.is_err() {
            break;
        }
        let mut body = vec![0u8; u32::from_be_bytes(head[1..].try_into().unwrap()) as usize - 4];
        server_read.read_exact(&mut body).await?;
        client_write.write_all(&head).await?;
        client_write.write_all(&body).await?;
        if !injected && head[0] == b'd' && body.first() == Some(&b'w') {
            injected = true;
            client_write.write_all(&[b'd', 0, 0, 0, 10, b'w', 0, 0, 0, 0, 0]).await?;
        }
    }
    upstream.abort();
    Ok(())
}

/// A proxy to `server_port` on a free port; every connection through it is a
/// [`proxy_one`]. Returns the port.
async fn malformed_proxy(server_port: u16) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            tokio::spawn(proxy_one(client, server_port));
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_frame_ends_the_stream_with_a_definite_error_naming_the_lsn() {
    let db = Cluster::shared().database("malformed");
    db.psql("CREATE TABLE t (id int PRIMARY KEY)");
    let port = malformed_proxy(Cluster::shared().port()).await;
    let mut c = config(&db);
    c.port = port;
    c.ssl_mode = SslMode::Disable;
    let consumer =
        Consumer::builder().config(c).slot("malformed").heartbeat_interval(None).build().unwrap();
    let mut stream = consumer.start().await.unwrap();
    db.psql("INSERT INTO t SELECT generate_series(1, 10)");
    let error = loop {
        match tokio::time::timeout(Duration::from_secs(30), stream.next()).await.unwrap() {
            Some(Ok(Event::Restarted { reason, .. })) => panic!("reconnected after: {reason}"),
            Some(Ok(_)) => {}
            Some(Err(e)) => break e,
            None => panic!("the stream ended without an error"),
        }
    };
    println!("{error}");
    assert_eq!(error.class(), ErrorClass::Definite, "{error}");
    let Some(ClientError::Protocol { after: Some(after), .. }) = error.client_error() else {
        panic!("not a protocol error with an LSN: {error:?}")
    };
    assert!(!after.is_invalid(), "{error}");
    assert!(error.to_string().contains(&format!("after LSN {after}")), "{error}");
    // Ended for good: no reconnection loop.
    let next = tokio::time::timeout(Duration::from_secs(10), stream.next()).await.unwrap();
    assert!(next.is_none(), "{next:?}");
    assert_eq!(stream.stats().reconnects, 0);
}

fn parquet_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten().filter(|e| e.path().extension().is_some_and(|x| x == "parquet")).count()
        })
        .unwrap_or(0)
}

/// The Parquet output directory stops being writable mid-run (it is replaced by a file: the
/// tests run as root, whom permissions do not stop): the run ends with a sink error naming
/// a path in it — not a connection error, not retried — and nothing after it is acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parquet_directory_that_becomes_unwritable_is_a_sink_error_with_its_path() {
    let db = Cluster::shared().database("parquet_gone");
    db.psql("CREATE TABLE t (id int PRIMARY KEY, v text)");
    let dir = crate::cli::scratch_dir("parquet_gone");
    let consumer = Consumer::builder()
        .config(config(&db))
        .slot("parquet_gone")
        .heartbeat_interval(None)
        .build()
        .unwrap();
    let mut stream = consumer.start().await.unwrap();
    let sink = ParquetSink::open(
        &dir,
        "parquet_gone",
        ParquetOptions {
            roll_rows: 10,
            roll_interval: Duration::from_millis(200),
            ..ParquetOptions::default()
        },
    )
    .unwrap();
    let running = tokio::spawn(async move {
        let result = wal2arrow_sinks::run(
            &mut stream,
            sink,
            &RunOptions::default(),
            std::future::pending(),
            &mut |_| {},
        )
        .await;
        (result, stream)
    });
    let table = dir.join("public.t");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    for i in 0.. {
        db.psql(&format!(
            "INSERT INTO t SELECT g, 'x' FROM generate_series({0}, {0} + 9) g",
            i * 10
        ));
        if parquet_files(&table) > 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no Parquet file was written");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    std::fs::rename(&dir, dir.with_extension("moved")).unwrap();
    std::fs::write(&dir, b"not a directory any more").unwrap();
    db.psql("INSERT INTO t SELECT g, 'y' FROM generate_series(100000, 100100) g");
    let last: Lsn = db.psql("SELECT pg_current_wal_lsn()").parse().unwrap();
    let (result, stream) =
        tokio::time::timeout(Duration::from_secs(60), running).await.unwrap().unwrap();
    let e = match result {
        Ok(report) => panic!("the run did not fail: {:?}", report.stopped),
        Err(e) => e,
    };
    println!("{e}");
    let wal2arrow_sinks::Error::Sink { path, .. } = &e else { panic!("not a sink error: {e:?}") };
    assert!(path.starts_with(&dir), "{}", path.display());
    assert_eq!(e.class(), ErrorClass::Definite);
    assert!(e.to_string().contains(&*dir.to_string_lossy()), "{e}");
    assert!(!e.to_string().contains("connection"), "{e}");
    assert_eq!(stream.stats().reconnects, 0);
    assert!(
        confirmed_flush(&db, "parquet_gone") < last,
        "what the sink did not write is not acknowledged"
    );
    let _ = std::fs::remove_file(&dir);
    let _ = std::fs::remove_dir_all(dir.with_extension("moved"));
}

/// A Parquet sink that is slow on table `slow` (1 ms a batch), and says when it first is.
struct SlowOnOneTable {
    inner: ParquetSink,
    started: Option<tokio::sync::oneshot::Sender<()>>,
}

impl wal2arrow_sinks::Sink for SlowOnOneTable {
    fn durable(&self) -> wal2arrow_sinks::Durable {
        self.inner.durable()
    }

    fn write(&mut self, event: &Event) -> wal2arrow_sinks::Result<()> {
        if let Event::Change(c) = event
            && c.table() == "public.slow"
        {
            if let Some(started) = self.started.take() {
                let _ = started.send(());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        self.inner.write(event)
    }

    fn wants_flush(&self) -> bool {
        self.inner.wants_flush()
    }

    fn flush(&mut self) -> wal2arrow_sinks::Result<()> {
        self.inner.flush()
    }

    fn rollback(&mut self) -> wal2arrow_sinks::Result<bool> {
        self.inner.rollback()
    }
}

/// Asked to stop while a long transaction is being written, the run waits `finish_timeout`
/// for its commit, then gives it up — and with it, for a sink that takes back everything
/// since its last flush, the complete transactions written since: none of them may be
/// acknowledged, and the next run writes them all, exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_that_gives_up_a_transaction_acknowledges_nothing_it_took_back() {
    let db = Cluster::shared().database("stop_timeout");
    db.psql("CREATE TABLE fast (id int PRIMARY KEY); CREATE TABLE slow (id int PRIMARY KEY)");
    let dir = crate::cli::scratch_dir("stop_timeout");
    let builder = || {
        Consumer::builder()
            .config(config(&db))
            .slot("stop_timeout")
            .snapshot(wal2arrow_consumer::SnapshotMode::Never)
            .batch_rows(50)
            .heartbeat_interval(None)
            .build()
            .unwrap()
    };
    let options = || ParquetOptions {
        roll_rows: 10_000_000,
        roll_interval: Duration::from_secs(3600),
        ..ParquetOptions::default()
    };
    let mut stream = builder().start().await.unwrap();
    let created = confirmed_flush(&db, "stop_timeout");
    // A complete transaction, then one of 4,000 batches the sink takes 4 s or more to write.
    db.psql("INSERT INTO fast SELECT generate_series(1, 100)");
    db.psql("INSERT INTO slow SELECT generate_series(1, 200000)");
    let end: Lsn = db.psql("SELECT pg_current_wal_lsn()").parse().unwrap();
    let (started, stop) = tokio::sync::oneshot::channel();
    let sink = SlowOnOneTable {
        inner: ParquetSink::open(&dir, "stop_timeout", options()).unwrap(),
        started: Some(started),
    };
    let run_options =
        RunOptions { finish_timeout: Some(Duration::from_secs(1)), ..RunOptions::default() };
    let report = tokio::time::timeout(
        Duration::from_secs(120),
        wal2arrow_sinks::run(
            &mut stream,
            sink,
            &run_options,
            async { stop.await.unwrap() },
            &mut |_| {},
        ),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(report.stopped, wal2arrow_sinks::Stopped::Shutdown);
    stream.close().await;
    // Before `fast` arrived the slot may have moved past WAL of other databases (keepalives
    // confirm it while nothing is outstanding; other tests share the cluster), but never to
    // `fast`'s commit: read back below, once the next run has written it.
    let after_stop = confirmed_flush(&db, "stop_timeout");
    assert!(after_stop >= created, "{after_stop} < {created}");
    // The next run writes both, each row once.
    let mut stream = builder().start().await.unwrap();
    let sink = ParquetSink::open(&dir, "stop_timeout", options()).unwrap();
    let run_options = RunOptions { until_lsn: Some(end), ..RunOptions::default() };
    tokio::time::timeout(
        Duration::from_secs(120),
        wal2arrow_sinks::run(&mut stream, sink, &run_options, std::future::pending(), &mut |_| {}),
    )
    .await
    .unwrap()
    .unwrap();
    stream.close().await;
    for (table, rows) in [("public.fast", 100), ("public.slow", 200_000)] {
        let mut ids: Vec<i32> = crate::cli::read_parquet_dir(&dir.join(table))
            .iter()
            .flat_map(|b| {
                let ids = b.column_by_name("id").unwrap();
                let ids = ids.as_any().downcast_ref::<arrow_array::Int32Array>().unwrap();
                ids.values().to_vec()
            })
            .collect();
        ids.sort_unstable();
        assert_eq!(ids, (1..=rows).collect::<Vec<i32>>(), "{table}: every row once");
    }
    // A transaction is acknowledged with its end LSN, past its commit record: the slot stayed
    // at or before `fast`'s commit, so the first transaction was not acknowledged although
    // the sink had taken it back with the second.
    let fast_commit = crate::cli::read_parquet_dir(&dir.join("public.fast"))
        .iter()
        .flat_map(|b| {
            let commits = b.column_by_name("_commit_lsn").unwrap();
            let commits = commits.as_any().downcast_ref::<arrow_array::UInt64Array>().unwrap();
            commits.values().to_vec()
        })
        .min()
        .map(Lsn)
        .unwrap();
    assert!(
        after_stop <= fast_commit,
        "the slot moved to {after_stop}, past {fast_commit} (the first transaction's commit), \
         which the stopped run took back: acknowledged what it did not keep"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
