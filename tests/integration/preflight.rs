//! Preflight checks, table patterns against the catalog, slots and their lag, publications
//! (issue 4). Where a check fails, the test applies the fix the report gives and checks again.

use std::time::Duration;

use wal2arrow_consumer::{Consumer, Error, Outcome, PreflightReport, StreamOptions};
use wal2arrow_harness::{Cluster, ClusterOptions, TestDb};

use crate::common::{config, read_txns};

fn consumer(db: &TestDb<'_>, user: Option<&str>, tables: &[&str]) -> Consumer {
    let mut c = config(db);
    if let Some(u) = user {
        c.user = u.to_owned();
    }
    Consumer::builder()
        .config(c)
        .slot("preflight_slot")
        .tables(tables.iter().copied())
        .build()
        .unwrap()
}

/// The failed check's problem and fix.
fn failure(report: &PreflightReport, name: &str) -> (String, String) {
    match &report.check(name).unwrap_or_else(|| panic!("no check {name}:\n{report}")).outcome {
        Outcome::Fail { problem, fix } => (problem.clone(), fix.clone()),
        other => panic!("{name} did not fail: {other:?}\n{report}"),
    }
}

fn passed(report: &PreflightReport, name: &str) -> bool {
    matches!(report.check(name).map(|c| &c.outcome), Some(Outcome::Pass(_)))
}

/// The SQL of a fix ("… ALTER SYSTEM …; then restart" → the statements).
fn fix_sql(fix: &str) -> String {
    let start = fix.find(|c: char| c.is_ascii_uppercase()).unwrap();
    let sql = &fix[start..];
    let end = sql.rfind(';').unwrap();
    sql[..=end].trim_start_matches("as a superuser: ").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ready_server_passes_every_check() {
    let db = Cluster::shared().database("preflight_ok");
    db.psql("CREATE TABLE keyed (id int PRIMARY KEY); CREATE TABLE keyless (v int)");
    let report = consumer(&db, None, &["public.*"]).check().await.unwrap();
    assert!(report.is_ok(), "{report}");
    for name in [
        "server version",
        "wal_level",
        "replication privilege",
        "max_replication_slots",
        "max_wal_senders",
        "output_plugin_libraries",
        "slot",
        "plugin loadable",
        "tables",
        "select privilege",
    ] {
        assert!(passed(&report, name), "{name}:\n{report}");
    }
    assert!(
        matches!(report.check("replica identity").unwrap().outcome, Outcome::Warn { .. }),
        "{report}"
    );
    assert_eq!(
        report.tables,
        [("public".to_owned(), "keyed".to_owned()), ("public".to_owned(), "keyless".to_owned())]
    );
    // The temporary slot of the check is gone.
    assert_eq!(
        db.psql(&format!(
            "SELECT count(*) FROM pg_replication_slots WHERE database = '{}'",
            db.name()
        )),
        "0"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_logical_decoding_or_the_plugin_is_told_what_to_change() {
    let opts = ClusterOptions {
        plugin: None, // no plugin on the library path
        output_plugins: Some(vec!["pgoutput".into(), "test_decoding".into()]),
        settings: vec![("wal_level".into(), "replica".into())],
        ..ClusterOptions::default()
    };
    let cluster = Cluster::start(&opts).unwrap();
    let db = cluster.database("not_ready");
    db.psql("CREATE TABLE t (id int PRIMARY KEY)");
    let c = consumer(&db, None, &[]);
    let report = c.check().await.unwrap();
    let (problem, fix) = failure(&report, "wal_level");
    assert!(problem.contains("replica"), "{problem}");
    assert!(
        fix.contains("ALTER SYSTEM SET wal_level = logical") && fix.contains("restart"),
        "{fix}"
    );
    assert!(matches!(report.check("plugin loadable").unwrap().outcome, Outcome::Skipped(_)));
    // start() refuses with the same report.
    let Err(Error::Preflight(refused)) = c.start().await else { panic!("start must refuse") };
    assert!(refused.failures().any(|f| f.name == "wal_level"));

    // Apply the fixes the report gives.
    cluster.psql(db.name(), &fix_sql(&fix)).unwrap();
    if cluster.has_output_plugin_libraries() {
        let (problem, fix) = failure(&report, "output_plugin_libraries");
        assert!(problem.contains("does not list wal2arrow"), "{problem}");
        cluster.psql(db.name(), &fix_sql(&fix)).unwrap();
    } else {
        assert!(passed(&report, "output_plugin_libraries"), "{report}");
    }
    cluster.restart().unwrap();
    let report = c.check().await.unwrap();
    assert!(passed(&report, "wal_level") && passed(&report, "output_plugin_libraries"), "{report}");
    // Now the only thing missing is the plugin itself.
    let (problem, fix) = failure(&report, "plugin loadable");
    assert!(problem.contains("cannot load"), "{problem}");
    assert!(fix.contains("cargo pgrx install"), "{fix}");
    let Err(e) = c.start().await else { panic!("no plugin, no stream") };
    assert!(e.to_string().contains("cargo pgrx install"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_slots_and_wal_senders_are_reported() {
    let mut opts = ClusterOptions::with_plugin().unwrap();
    opts.settings.push(("max_replication_slots".into(), "1".into()));
    opts.settings.push(("max_wal_senders".into(), "1".into()));
    let cluster = Cluster::start(&opts).unwrap();
    let db = cluster.database("exhausted");
    db.psql("CREATE TABLE t (id int PRIMARY KEY)");
    // Another consumer holds the only slot and the only WAL sender.
    let _occupant =
        wal2arrow_consumer::open(&config(&db), &StreamOptions::new("occupant")).await.unwrap();
    let report = consumer(&db, None, &[]).check().await.unwrap();
    let (problem, fix) = failure(&report, "max_replication_slots");
    assert!(problem.contains("1 of 1"), "{problem}");
    assert!(fix.contains("ALTER SYSTEM SET max_replication_slots ="), "{fix}");
    let (problem, fix) = failure(&report, "max_wal_senders");
    assert!(problem.contains("1 of 1"), "{problem}");
    assert!(fix.contains("ALTER SYSTEM SET max_wal_senders ="), "{fix}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_privileges_slots_and_tables_each_get_their_own_message() {
    let db = Cluster::shared().database("preflight_fail");
    let role = format!("plain_{}", db.name());
    db.psql(&format!(
        "CREATE ROLE {role} LOGIN;
         CREATE TABLE granted (id int PRIMARY KEY); CREATE TABLE secret (id int PRIMARY KEY);
         GRANT SELECT ON granted TO {role};
         SELECT pg_create_logical_replication_slot('preflight_slot', 'test_decoding');"
    ));
    let report = consumer(&db, Some(&role), &["public.*"]).check().await.unwrap();
    let (problem, fix) = failure(&report, "replication privilege");
    assert!(problem.contains(&role), "{problem}");
    assert_eq!(fix, format!("as a superuser: ALTER ROLE \"{role}\" WITH REPLICATION;"));
    let (problem, fix) = failure(&report, "select privilege");
    assert!(problem.contains("\"public\".\"secret\"") && !problem.contains("granted"), "{problem}");
    assert_eq!(fix, format!("GRANT SELECT ON \"public\".\"secret\" TO \"{role}\";"));
    let (problem, fix) = failure(&report, "slot");
    assert!(problem.contains("test_decoding"), "{problem}");
    assert!(fix.contains("pg_drop_replication_slot('preflight_slot')"), "{fix}");

    // The fixes work.
    db.psql(&fix_sql(&failure(&report, "replication privilege").1));
    db.psql(&fix_sql(&failure(&report, "select privilege").1));
    db.psql("SELECT pg_drop_replication_slot('preflight_slot')");
    let report = consumer(&db, Some(&role), &["public.*"]).check().await.unwrap();
    assert!(report.is_ok(), "{report}");

    // Patterns that match nothing.
    let report = consumer(&db, None, &["public.nothing_*", "other.*"]).check().await.unwrap();
    let (problem, _) = failure(&report, "tables");
    assert!(problem.contains("no table matches public.nothing_*, other.*"), "{problem}");
    assert!(problem.contains("public.granted"), "the tables that exist are named: {problem}");
    let report = consumer(&db, None, &["public.granted", "public.later_*"]).check().await.unwrap();
    assert!(matches!(report.check("tables").unwrap().outcome, Outcome::Warn { .. }), "{report}");
    db.psql(&format!("DROP OWNED BY {role}; DROP ROLE {role}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_created_later_that_matches_is_captured() {
    let db = Cluster::shared().database("later_table");
    db.psql("CREATE TABLE orders_2026 (id int PRIMARY KEY); CREATE TABLE other (id int)");
    let consumer = Consumer::builder()
        .config(config(&db))
        .slot("later_slot")
        .tables(["public.orders_*"])
        .build()
        .unwrap();
    let mut stream = consumer.start().await.unwrap();
    db.psql("CREATE TABLE orders_2027 (id int PRIMARY KEY); INSERT INTO orders_2027 VALUES (1); INSERT INTO other VALUES (1)");
    let mut tables = Vec::new();
    while tables.is_empty() {
        if let wal2arrow_consumer::Event::Change(c) =
            tokio::time::timeout(Duration::from_secs(30), stream.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap()
        {
            tables.push(c.table().to_owned());
        }
    }
    assert_eq!(tables, ["public.orders_2027"]);
    stream.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slots_are_listed_with_lag_and_dropped_from_the_api() {
    let db = Cluster::shared().database("slots_api");
    db.psql("CREATE TABLE t (id int)");
    let c = config(&db);
    wal2arrow_consumer::create_slot(&c, "api_slot").await.unwrap();
    db.psql("INSERT INTO t SELECT generate_series(1, 1000)");
    let slots = wal2arrow_consumer::list_slots(&c).await.unwrap();
    let slot = slots.iter().find(|s| s.name == "api_slot").unwrap();
    assert_eq!((slot.plugin.as_deref(), slot.slot_type.as_str()), (Some("wal2arrow"), "logical"));
    assert_eq!(slot.database.as_deref(), Some(db.name()));
    assert!(slot.active_pid.is_none() && slot.lag_time.is_none());
    assert!(slot.lag_bytes.unwrap() > 0, "the inserts are behind the slot: {slot:?}");

    // While streaming and acknowledging, the lag shrinks and has a time.
    let mut stream = wal2arrow_consumer::open(&c, &{
        let mut o = StreamOptions::new("api_slot");
        o.create_slot = false;
        o
    })
    .await
    .unwrap();
    stream.set_status_interval(Duration::from_millis(100));
    let txns = read_txns(&mut stream, 1, Duration::from_secs(30)).await;
    stream.ack(txns[0].commit.end_lsn);
    // The stream sends the acknowledgement with its next status update; the server shows it
    // once it has read it (on a busy machine, not always within a fixed time: waited for).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let slot = loop {
        let _ = tokio::time::timeout(Duration::from_millis(200), stream.next_event()).await;
        let slot = wal2arrow_consumer::list_slots(&c)
            .await
            .unwrap()
            .into_iter()
            .find(|s| s.name == "api_slot")
            .unwrap();
        if slot.confirmed_flush_lsn >= Some(txns[0].commit.end_lsn)
            || std::time::Instant::now() > deadline
        {
            break slot;
        }
    };
    assert!(slot.active_pid.is_some());
    // At least what was acknowledged (caught up, the stream also confirms keepalive positions).
    assert!(slot.confirmed_flush_lsn >= Some(txns[0].commit.end_lsn), "{slot:?}");
    // Other tests write WAL too, so the slot may be behind by their changes; once it has
    // caught up its time lag is zero, not unknown.
    assert!(slot.lag_bytes.unwrap() >= 0);
    if slot.lag_bytes == Some(0) {
        assert_eq!(slot.lag_time, Some(Duration::ZERO), "{slot:?}");
    }

    let e = wal2arrow_consumer::drop_slot(&c, "api_slot", false).await.unwrap_err();
    assert!(e.to_string().contains("in use"), "{e}");
    wal2arrow_consumer::drop_slot(&c, "api_slot", true).await.unwrap();
    assert!(wal2arrow_consumer::list_slots(&c).await.unwrap().iter().all(|s| s.name != "api_slot"));
    let e = wal2arrow_consumer::drop_slot(&c, "api_slot", false).await.unwrap_err();
    assert!(e.to_string().contains("does not exist"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publication_is_created_only_on_request() {
    let db = Cluster::shared().database("publication");
    db.psql("CREATE TABLE pub_a (id int PRIMARY KEY); CREATE TABLE pub_b (id int PRIMARY KEY)");
    let plain = Consumer::builder().config(config(&db)).slot("pub_slot").build().unwrap();
    plain.start().await.unwrap().close().await;
    assert_eq!(db.psql("SELECT count(*) FROM pg_publication"), "0");
    let with = Consumer::builder()
        .config(config(&db))
        .slot("pub_slot")
        .tables(["public.pub_a"])
        .create_publication("wal2arrow_pub")
        .build()
        .unwrap();
    with.start().await.unwrap().close().await;
    assert_eq!(db.psql("SELECT string_agg(tablename, ',') FROM pg_publication_tables WHERE pubname = 'wal2arrow_pub'"), "pub_a");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_prints_its_sql_on_a_dry_run_then_makes_check_pass_and_is_idempotent() {
    use crate::cli::{cli, run};
    let opts = ClusterOptions {
        // The allow-list (on servers that have it) without wal2arrow, and no logical decoding.
        output_plugins: Some(vec!["pgoutput".into()]),
        settings: vec![("wal_level".into(), "replica".into())],
        ..ClusterOptions::with_plugin().unwrap()
    };
    let cluster = Cluster::start(&opts).unwrap();
    let db = cluster.database("setup");
    db.psql(
        "CREATE SCHEMA sales; CREATE TABLE sales.orders (id int PRIMARY KEY);
         CREATE TABLE sales.items (id int PRIMARY KEY); CREATE TABLE public.other (id int);
         CREATE TABLE sales.events (id int, day date, PRIMARY KEY (id, day)) PARTITION BY RANGE (day);
         CREATE TABLE sales.events_2026 PARTITION OF sales.events
             FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
         REVOKE ALL ON SCHEMA sales FROM PUBLIC; CREATE ROLE cdc LOGIN",
    );
    let setup = |extra: &[&str]| {
        let dsn = db.dsn();
        let mut args = vec!["setup", "--dsn", &dsn, "--role", "cdc", "--tables", "sales.*"];
        args.extend_from_slice(extra);
        run(cli(&args))
    };
    // What the server and the role are like.
    let state = || {
        db.psql(
            "SELECT (SELECT count(*) FROM pg_file_settings WHERE sourcefile LIKE '%auto.conf'),
                    (SELECT rolreplication FROM pg_roles WHERE rolname = 'cdc'),
                    has_schema_privilege('cdc', 'sales', 'USAGE'),
                    has_table_privilege('cdc', 'sales.orders', 'SELECT')",
        )
    };
    let before = state();
    assert_eq!(before, "0|f|f|f");

    let (code, dry, stderr) = setup(&["--dry-run"]).await;
    assert_eq!(code, 0, "{stderr}");
    let mut expected = vec![
        "ALTER SYSTEM SET wal_level = 'logical';",
        "ALTER ROLE \"cdc\" WITH REPLICATION;",
        "GRANT USAGE ON SCHEMA \"sales\" TO \"cdc\";",
        // The partition too: a GRANT on its partitioned table does not reach it.
        "GRANT SELECT ON \"sales\".\"events\", \"sales\".\"events_2026\", \"sales\".\"items\", \
         \"sales\".\"orders\" TO \"cdc\";",
        "SELECT pg_reload_conf();",
        "-- dry run: nothing was changed",
    ];
    if cluster.has_output_plugin_libraries() {
        expected.insert(1, "ALTER SYSTEM SET output_plugin_libraries = 'pgoutput', 'wal2arrow';");
    }
    let statements: Vec<&str> =
        dry.lines().filter(|l| !l.starts_with("-- ") || l.contains("dry run")).collect();
    assert_eq!(statements, expected, "{dry}");
    assert!(
        dry.contains(
            "-- wal_level is replica: logical decoding needs logical (takes effect after a restart)"
        ),
        "{dry}"
    );
    assert_eq!(state(), before, "a dry run changes nothing");

    // The script as printed is what setup runs.
    let (code, out, stderr) = setup(&[]).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(out.contains("-- restart PostgreSQL"), "{out}");
    assert_ne!(state(), before);
    // Run again before the restart: nothing to change, the restart still due.
    let (code, again, _) = setup(&[]).await;
    assert_eq!(code, 0);
    assert_eq!(
        again.lines().collect::<Vec<_>>(),
        [
            "-- already configured, in effect after PostgreSQL restarts: wal_level",
            "-- nothing to change for role \"cdc\"",
        ]
    );

    cluster.restart().unwrap();
    let cdc_dsn = db.dsn().replace(&format!("user={}", cluster.superuser()), "user=cdc");
    let (code, out, stderr) =
        run(cli(&["check", "--dsn", &cdc_dsn, "--tables", "sales.*", "--slot", "setup_slot"]))
            .await;
    assert_eq!(code, 0, "check passes as the role:\n{out}{stderr}");
    assert!(out.contains("ready to stream"), "{out}");
    let (code, last, _) = setup(&[]).await;
    assert_eq!(code, 0);
    assert_eq!(last.trim(), "-- nothing to change for role \"cdc\"");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_needs_a_superuser() {
    use crate::cli::{cli, run};
    let db = Cluster::shared().database("setup_plain");
    db.psql("CREATE ROLE setup_plain LOGIN");
    let dsn =
        db.dsn().replace(&format!("user={}", Cluster::shared().superuser()), "user=setup_plain");
    let (code, _, stderr) = run(cli(&["setup", "--dsn", &dsn, "--role", "x", "--dry-run"])).await;
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("setup needs a superuser connection"), "{stderr}");
    db.psql("DROP ROLE setup_plain");
}
