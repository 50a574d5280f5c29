//! Scratch PostgreSQL clusters for wal2arrow's integration tests and demo.
//!
//! A [`Cluster`] is a fresh `initdb` in a temporary directory, listening on a free loopback
//! port, with `wal_level = logical`, the freshly built wal2arrow plugin on its
//! `dynamic_library_path`, and — on servers that have the setting (Debian's 15.20 and later) —
//! `output_plugin_libraries` listing `wal2arrow` and `wal2json`. It never touches the system
//! cluster. When running as root the server runs as the `postgres` OS user (initdb refuses
//! root), on directories that user owns.
//!
//! Every cluster has a watchdog: a small shell process, in its own session, blocked reading a
//! pipe whose write end only the owning process holds. However that process ends — normally,
//! after a panic, or killed with SIGKILL — the pipe closes and the watchdog stops the server
//! and removes the directory. [`Cluster`]s that are dropped also stop synchronously.
//!
//! Tests share one cluster per test process ([`Cluster::shared`]) and each gets its own
//! database ([`Cluster::database`]), dropped with the [`TestDb`].

#![warn(missing_docs)]

use std::fmt;
use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// A harness step failed; the message says which and includes the tool's output.
#[derive(Debug)]
pub struct HarnessError(String);

impl fmt::Display for HarnessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for HarnessError {}

type Result<T> = std::result::Result<T, HarnessError>;

fn err(msg: impl Into<String>) -> HarnessError {
    HarnessError(msg.into())
}

/// How to set up a [`Cluster`].
#[derive(Clone, Debug, Default)]
pub struct ClusterOptions {
    /// The wal2arrow plugin library to load; `None` leaves it out entirely.
    pub plugin: Option<PathBuf>,
    /// Libraries for `output_plugin_libraries`, on servers that have the setting. `None`: the
    /// built-ins plus `wal2arrow` and `wal2json`.
    pub output_plugins: Option<Vec<String>>,
    /// `pg_hba.conf` lines placed before the final `trust` line for everyone.
    pub hba: Vec<String>,
    /// Extra `postgresql.conf` settings, as `(name, value)` with the value already quoted.
    /// `$BASE` in a value is replaced by the cluster's directory (where [`files`] go).
    ///
    /// [`files`]: ClusterOptions::files
    pub settings: Vec<(String, String)>,
    /// Files to place in the cluster's directory before it starts, readable only by the
    /// server (mode 0600): TLS certificates and keys, say.
    pub files: Vec<(String, Vec<u8>)>,
}

impl ClusterOptions {
    /// Defaults with the wal2arrow plugin built from this workspace (see [`plugin_library`]).
    ///
    /// # Errors
    ///
    /// When the plugin cannot be found or built.
    pub fn with_plugin() -> Result<ClusterOptions> {
        Ok(ClusterOptions { plugin: Some(plugin_library()?), ..ClusterOptions::default() })
    }
}

/// A scratch PostgreSQL cluster. See the crate docs.
#[derive(Debug)]
pub struct Cluster {
    base: PathBuf,
    data: PathBuf,
    bin: PathBuf,
    port: u16,
    as_postgres: bool,
    has_output_plugin_libraries: bool,
    /// The write end of the watchdog's pipe; dropping it releases the watchdog.
    watchdog: Mutex<Option<(Child, ChildStdin)>>,
    databases: AtomicU64,
}

static SHARED: OnceLock<Cluster> = OnceLock::new();
static BASE_COUNTER: AtomicU64 = AtomicU64::new(0);

impl Cluster {
    /// The test process's shared cluster, started on first use with the plugin built from
    /// this workspace. It is stopped by its watchdog when the process ends.
    ///
    /// # Panics
    ///
    /// When the cluster cannot be started: no test can run without it, and the message says
    /// why (missing PostgreSQL binaries, plugin build failure, server log).
    pub fn shared() -> &'static Cluster {
        SHARED.get_or_init(|| {
            let opts = ClusterOptions::with_plugin()
                .map(|o| ClusterOptions { hba: auth_test_hba(), ..o })
                .unwrap_or_else(|e| panic!("cannot set up the scratch cluster: {e}"));
            Cluster::start(&opts)
                .unwrap_or_else(|e| panic!("cannot start the scratch cluster: {e}"))
        })
    }

    /// Starts a new cluster, owned by the caller and stopped when dropped.
    ///
    /// # Errors
    ///
    /// When initdb or the server fails; the error includes their output or the server log.
    pub fn start(opts: &ClusterOptions) -> Result<Cluster> {
        let bin = pg_bin_dir()?;
        let as_postgres = running_as_root();
        let base = scratch_root().join(format!(
            "wal2arrow-scratch-{}-{}",
            std::process::id(),
            BASE_COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(base.join("lib"))
            .map_err(|e| err(format!("cannot create {}: {e}", base.display())))?;
        let data = base.join("data");
        let has_opl = server_has_output_plugin_libraries(&bin);
        let mut cluster = Cluster {
            base,
            data,
            bin,
            port: 0,
            as_postgres,
            has_output_plugin_libraries: has_opl,
            watchdog: Mutex::new(None),
            databases: AtomicU64::new(0),
        };
        cluster.spawn_watchdog()?;
        if let Some(plugin) = &opts.plugin {
            std::fs::copy(plugin, cluster.base.join("lib/wal2arrow.so")).map_err(|e| {
                err(format!("cannot copy the plugin {} into the cluster: {e}", plugin.display()))
            })?;
        }
        for (name, contents) in &opts.files {
            use std::os::unix::fs::PermissionsExt;
            let path = cluster.base.join(name);
            std::fs::write(&path, contents)
                .and_then(|()| {
                    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                })
                .map_err(|e| err(format!("cannot write {}: {e}", path.display())))?;
        }
        if as_postgres {
            run(Command::new("chown").args(["-R", "postgres:postgres"]).arg(&cluster.base))?;
        }
        cluster.initdb()?;
        cluster.configure(opts)?;
        let mut last = None;
        for _ in 0..5 {
            cluster.port = free_port()?;
            cluster.write_port()?;
            match cluster.pg_ctl(&["start", "-w", "-t", "60", "-l"], Some(&cluster.log_path())) {
                Ok(_) => return Ok(cluster),
                Err(e) => last = Some(e),
            }
        }
        Err(err(format!(
            "the server did not start: {}\n--- server log ---\n{}",
            last.map(|e| e.0).unwrap_or_default(),
            cluster.log_tail(40)
        )))
    }

    /// The port the server listens on (at 127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The host to connect to.
    pub fn host(&self) -> &'static str {
        "127.0.0.1"
    }

    /// The superuser's name.
    pub fn superuser(&self) -> &'static str {
        "postgres"
    }

    /// The directory of the server's Unix-domain socket (`host=` this to connect over it).
    pub fn socket_dir(&self) -> &Path {
        &self.base
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// Whether this server has `output_plugin_libraries` (and so refuses unlisted plugins).
    pub fn has_output_plugin_libraries(&self) -> bool {
        self.has_output_plugin_libraries
    }

    /// A key=value connection string for the superuser and `dbname`.
    pub fn dsn(&self, dbname: &str) -> String {
        format!("host={} port={} user={} dbname={dbname}", self.host(), self.port, self.superuser())
    }

    /// Runs the SQL script `sql` with psql as the superuser in `dbname`, returning unaligned,
    /// tuples-only output. Statements run one by one, each in its own transaction unless the
    /// script says `BEGIN`; the first error stops the script.
    ///
    /// # Errors
    ///
    /// When psql fails (the error carries its stderr).
    pub fn psql(&self, dbname: &str, sql: &str) -> Result<String> {
        use std::io::Write;
        let mut child = Command::new(self.bin.join("psql"))
            .args(["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-h", self.host()])
            .args(["-p", &self.port.to_string(), "-U", self.superuser(), "-d", dbname, "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| err(format!("cannot run psql: {e}")))?;
        let mut stdin = child.stdin.take().expect("piped");
        let script = format!("{sql}\n;\n");
        let writer = std::thread::spawn(move || stdin.write_all(script.as_bytes()));
        let out = child.wait_with_output().map_err(|e| err(format!("psql: {e}")))?;
        let _ = writer.join();
        if !out.status.success() {
            return Err(err(format!(
                "psql failed on {sql:?}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_owned())
    }

    /// Creates a database for one test, named after `label`, dropped with the [`TestDb`].
    ///
    /// # Panics
    ///
    /// When the database cannot be created.
    pub fn database(&self, label: &str) -> TestDb<'_> {
        let n = self.databases.fetch_add(1, Ordering::SeqCst);
        let clean: String = label
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' })
            .take(40)
            .collect();
        let name = format!("t{n}_{clean}");
        self.psql("postgres", &format!("CREATE DATABASE \"{name}\""))
            .unwrap_or_else(|e| panic!("cannot create test database: {e}"));
        TestDb { cluster: self, name }
    }

    /// Restarts the server (fast shutdown), as after a crash or maintenance.
    ///
    /// # Errors
    ///
    /// When pg_ctl fails.
    pub fn restart(&self) -> Result<()> {
        self.pg_ctl(&["restart", "-m", "fast", "-w", "-t", "60", "-l"], Some(&self.log_path()))
            .map(drop)
    }

    /// Stops the server (fast shutdown). It can be started again with [`Cluster::restart`].
    ///
    /// # Errors
    ///
    /// When pg_ctl fails.
    pub fn stop(&self) -> Result<()> {
        self.pg_ctl(&["stop", "-m", "fast", "-w", "-t", "60"], None).map(drop)
    }

    /// The process ID of the postmaster, from `postmaster.pid`.
    ///
    /// # Errors
    ///
    /// When the server is not running.
    pub fn postmaster_pid(&self) -> Result<u32> {
        let text = std::fs::read_to_string(self.data.join("postmaster.pid"))
            .map_err(|e| err(format!("no postmaster.pid: {e}")))?;
        text.lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .ok_or_else(|| err("malformed postmaster.pid"))
    }

    /// Where the server logs.
    pub fn log_path(&self) -> PathBuf {
        self.base.join("server.log")
    }

    /// The last `n` lines of the server log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// The whole server log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn initdb(&self) -> Result<()> {
        let mut cmd = self.command("initdb");
        cmd.arg("-D").arg(&self.data);
        cmd.args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--locale=C", "--no-sync"]);
        run(&mut cmd).map(drop)
    }

    fn configure(&self, opts: &ClusterOptions) -> Result<()> {
        let mut conf = String::from("\n# wal2arrow scratch cluster\n");
        let libdir = self.base.join("lib");
        let mut settings: Vec<(String, String)> = vec![
            ("listen_addresses".into(), "'127.0.0.1'".into()),
            ("unix_socket_directories".into(), format!("'{}'", self.base.display())),
            ("wal_level".into(), "logical".into()),
            ("max_replication_slots".into(), "32".into()),
            ("max_wal_senders".into(), "32".into()),
            ("max_connections".into(), "100".into()),
            ("fsync".into(), "off".into()),
            ("full_page_writes".into(), "off".into()),
            ("dynamic_library_path".into(), format!("'{}:$libdir'", libdir.display())),
            ("log_min_messages".into(), "warning".into()),
            // Lets tests compare commit times with pg_xact_commit_timestamp().
            ("track_commit_timestamp".into(), "on".into()),
            ("log_line_prefix".into(), "'%m [%p] %q%u@%d '".into()),
        ];
        if self.has_output_plugin_libraries {
            let libs = opts.output_plugins.clone().unwrap_or_else(|| {
                ["pgoutput", "test_decoding", "wal2arrow", "wal2json"].map(String::from).to_vec()
            });
            settings.push(("output_plugin_libraries".into(), format!("'{}'", libs.join(", "))));
        }
        let base = self.base.display().to_string();
        settings.extend(opts.settings.iter().map(|(k, v)| (k.clone(), v.replace("$BASE", &base))));
        for (k, v) in settings {
            conf.push_str(&format!("{k} = {v}\n"));
        }
        append(&self.data.join("postgresql.conf"), &conf)?;
        let mut hba = String::from("local all all trust\n");
        for line in &opts.hba {
            hba.push_str(line);
            hba.push('\n');
        }
        hba.push_str("host all all 127.0.0.1/32 trust\n");
        std::fs::write(self.data.join("pg_hba.conf"), hba)
            .map_err(|e| err(format!("cannot write pg_hba.conf: {e}")))
    }

    fn write_port(&self) -> Result<()> {
        append(&self.data.join("postgresql.conf"), &format!("port = {}\n", self.port))
    }

    fn pg_ctl(&self, args: &[&str], log: Option<&Path>) -> Result<String> {
        let mut cmd = self.command("pg_ctl");
        cmd.arg("-D").arg(&self.data).args(args);
        if let Some(log) = log {
            cmd.arg(log);
        }
        run(&mut cmd)
    }

    /// A PostgreSQL program, run as the `postgres` user when we are root.
    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    fn spawn_watchdog(&self) -> Result<()> {
        // Blocks until our end of stdin closes, then stops whatever postmaster runs on the data
        // directory (fast, then immediate after 10 s) and removes the cluster's files.
        let script = r#"
            cat >/dev/null
            pm=$(head -n 1 "$1/data/postmaster.pid" 2>/dev/null)
            if [ -n "$pm" ] && kill -0 "$pm" 2>/dev/null; then
                kill -INT "$pm" 2>/dev/null
                i=0
                while kill -0 "$pm" 2>/dev/null && [ "$i" -lt 100 ]; do sleep 0.1; i=$((i+1)); done
                kill -QUIT "$pm" 2>/dev/null
                sleep 0.2
            fi
            rm -rf "$1"
        "#;
        let mut child = Command::new("setsid")
            .args(["sh", "-c", script, "wal2arrow-watchdog"])
            .arg(&self.base)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| err(format!("cannot start the cluster watchdog (setsid sh): {e}")))?;
        let stdin = child.stdin.take().expect("stdin is piped");
        *self.watchdog.lock().expect("watchdog lock") = Some((child, stdin));
        Ok(())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.pg_ctl(&["stop", "-m", "fast", "-w", "-t", "30"], None);
        if let Some((mut child, stdin)) = self.watchdog.lock().ok().and_then(|mut w| w.take()) {
            drop(stdin);
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

/// A database for one test; dropped (with its replication slots) when this is dropped.
#[derive(Debug)]
pub struct TestDb<'a> {
    cluster: &'a Cluster,
    name: String,
}

impl TestDb<'_> {
    /// The database name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The cluster it lives in.
    pub fn cluster(&self) -> &Cluster {
        self.cluster
    }

    /// A key=value connection string for the superuser.
    pub fn dsn(&self) -> String {
        self.cluster.dsn(&self.name)
    }

    /// Runs `sql` in this database with psql (see [`Cluster::psql`]).
    ///
    /// # Panics
    ///
    /// When psql fails: test setup SQL is expected to succeed.
    pub fn psql(&self, sql: &str) -> String {
        self.cluster.psql(&self.name, sql).unwrap_or_else(|e| panic!("{e}"))
    }
}

impl Drop for TestDb<'_> {
    fn drop(&mut self) {
        let name = self.name.replace('\'', "''");
        // Slots keep a database alive: end the sessions using them, drop them, then the
        // database. Failures are ignored: the cluster is removed at the end anyway.
        let _ = self.cluster.psql(
            "postgres",
            &format!(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots \
                 WHERE database = '{name}' AND active_pid IS NOT NULL"
            ),
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let dropped = self.cluster.psql(
                "postgres",
                &format!(
                    "SELECT count(pg_drop_replication_slot(slot_name)) FROM pg_replication_slots \
                     WHERE database = '{name}' AND NOT active"
                ),
            );
            let left = self.cluster.psql(
                "postgres",
                &format!("SELECT count(*) FROM pg_replication_slots WHERE database = '{name}'"),
            );
            if dropped.is_err() || left.as_deref().ok() == Some("0") {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self
            .cluster
            .psql("postgres", &format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name));
    }
}

/// Users for authentication tests: `w2a_md5`, `w2a_password` and `w2a_scram` must log in with
/// the method of their name (the tests create the roles and set their passwords).
pub fn auth_test_hba() -> Vec<String> {
    vec![
        "host all w2a_md5 127.0.0.1/32 md5".into(),
        "host all w2a_password 127.0.0.1/32 password".into(),
        "host all w2a_scram 127.0.0.1/32 scram-sha-256".into(),
    ]
}

/// The directory PostgreSQL's programs are in: `$PG_BINDIR`, else the newest
/// `/usr/lib/postgresql/<major>/bin` (Debian's layout), else `pg_config --bindir`.
///
/// # Errors
///
/// When no PostgreSQL server installation is found.
pub fn pg_bin_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("PG_BINDIR") {
        return Ok(PathBuf::from(dir));
    }
    let mut majors: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let major = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").exists().then_some((major, bin))
        })
        .collect();
    majors.sort();
    if let Some((_, bin)) = majors.pop() {
        return Ok(bin);
    }
    let out = Command::new("pg_config").arg("--bindir").output();
    match out {
        Ok(o) if o.status.success() => Ok(PathBuf::from(String::from_utf8_lossy(&o.stdout).trim())),
        _ => Err(err(
            "no PostgreSQL server found: install postgresql-15 (apt-get install postgresql-15) \
             or set PG_BINDIR to the directory holding postgres, initdb and pg_ctl",
        )),
    }
}

/// The major version of the server under test ([`pg_bin_dir`]), from `postgres --version`
/// (`postgres (PostgreSQL) 17.11` → 17); 0 when it cannot be told.
pub fn server_major() -> u32 {
    static MAJOR: OnceLock<u32> = OnceLock::new();
    *MAJOR.get_or_init(|| {
        let Ok(bin) = pg_bin_dir() else { return 0 };
        let Ok(out) = Command::new(bin.join("postgres")).arg("--version").output() else {
            return 0;
        };
        let text = String::from_utf8_lossy(&out.stdout);
        let version = text.split_whitespace().last().unwrap_or("");
        version
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|m| m.parse().ok())
            .unwrap_or(0)
    })
}

/// Whether the server in `bin` has the `output_plugin_libraries` setting (Debian's 15.20 and
/// later). Such servers refuse output plugins not listed in it, even for superusers; servers
/// without it refuse to start if it is set.
pub fn server_has_output_plugin_libraries(bin: &Path) -> bool {
    Command::new(bin.join("postgres"))
        .arg("--describe-config")
        .stderr(Stdio::null())
        .output()
        .map(|o| {
            o.stdout.split(|b| *b == b'\n').any(|l| l.starts_with(b"output_plugin_libraries\t"))
        })
        .unwrap_or(false)
}

/// `pg_config --<what>` of the installation in `bin`.
fn pg_config(bin: &Path, what: &str) -> Option<PathBuf> {
    let out = Command::new(bin.join("pg_config")).arg(format!("--{what}")).output().ok()?;
    out.status.success().then(|| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// Whether the server under test ([`pg_bin_dir`]) has wal2json installed, so that the
/// fallback's tests can run. Debian's 15 has it (`scripts/setup.sh` installs it); the servers
/// `scripts/postgres.sh` installs for the other majors do not (there is no wal2json build for
/// them here), and the tests of the fallback say so and skip it.
///
/// # Panics
///
/// When `WAL2ARROW_REQUIRE_WAL2JSON` is set and wal2json is missing: the suite run against
/// the default server must never skip the fallback.
pub fn wal2json_installed() -> bool {
    let installed = pg_bin_dir()
        .ok()
        .and_then(|bin| pg_config(&bin, "pkglibdir"))
        .is_some_and(|lib| lib.join("wal2json.so").is_file());
    if !installed && std::env::var_os("WAL2ARROW_REQUIRE_WAL2JSON").is_some() {
        panic!(
            "wal2json is not installed in the server under test (apt-get install postgresql-15-wal2json)"
        );
    }
    if !installed {
        eprintln!("wal2json is not installed in this server: its part of the test is skipped");
    }
    installed
}

/// Whether the server under test has message translations for `lang` (`de`, …): builds
/// without NLS answer in English whatever `lc_messages` says.
pub fn server_has_translations(lang: &str) -> bool {
    let Some(bin) = pg_bin_dir().ok() else { return false };
    let Some(dir) = pg_config(&bin, "localedir") else { return false };
    std::fs::read_dir(dir.join(lang).join("LC_MESSAGES")).into_iter().flatten().flatten().any(|e| {
        e.file_name().to_str().is_some_and(|n| n.starts_with("postgres") && n.ends_with(".mo"))
    })
}

/// The wal2arrow plugin library: `$WAL2ARROW_PLUGIN` if set, else built from this workspace
/// (`cargo build -p wal2arrow --release`) once per process.
///
/// # Errors
///
/// When the build fails (its output is in the error).
pub fn plugin_library() -> Result<PathBuf> {
    static BUILT: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    if let Some(p) = std::env::var_os("WAL2ARROW_PLUGIN") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(err(format!("WAL2ARROW_PLUGIN={} is not a file", p.display())))
        };
    }
    BUILT.get_or_init(|| build_plugin().map_err(|e| e.0)).clone().map_err(HarnessError)
}

/// The wal2arrow source tree this harness was built from, if it is still there (it is not
/// for a harness built from crates.io).
pub fn source_tree() -> Option<PathBuf> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    workspace.join("wal2arrow/Cargo.toml").is_file().then_some(workspace)
}

/// The wal2arrow plugin installed into the server in `bin` (`cargo pgrx install` puts it in
/// `pg_config --pkglibdir`), if it is there.
pub fn installed_plugin(bin: &Path) -> Option<PathBuf> {
    let pg_config = bin.join("pg_config");
    let pg_config = if pg_config.exists() { pg_config } else { PathBuf::from("pg_config") };
    let out = Command::new(pg_config).arg("--pkglibdir").output().ok()?;
    let lib = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("wal2arrow.so");
    (out.status.success() && lib.is_file()).then_some(lib)
}

fn build_plugin() -> Result<PathBuf> {
    let workspace = source_tree().ok_or_else(|| {
        err("the wal2arrow source tree is not here to build the plugin from: set \
             WAL2ARROW_PLUGIN to a built wal2arrow.so")
    })?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut child = Command::new(cargo)
        .current_dir(&workspace)
        .args(["build", "-p", "wal2arrow", "--release", "--message-format=json-render-diagnostics"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| err(format!("cannot run cargo to build the plugin: {e}")))?;
    let mut stderr = String::new();
    let mut stderr_pipe = child.stderr.take().expect("piped");
    let stderr_thread = std::thread::spawn(move || {
        let _ = stderr_pipe.read_to_string(&mut stderr);
        stderr
    });
    let mut library = None;
    for line in BufReader::new(child.stdout.take().expect("piped")).lines().map_while(|l| l.ok()) {
        if line.contains("\"reason\":\"compiler-artifact\"")
            && line.contains("\"name\":\"wal2arrow\"")
        {
            library = artifact_so(&line).or(library);
        }
    }
    let status = child.wait().map_err(|e| err(format!("cargo: {e}")))?;
    let stderr = stderr_thread.join().unwrap_or_default();
    if !status.success() {
        return Err(err(format!("building the wal2arrow plugin failed:\n{stderr}")));
    }
    library.ok_or_else(|| err("cargo built wal2arrow but reported no .so"))
}

/// The `.so` among an artifact message's `"filenames"`.
fn artifact_so(line: &str) -> Option<PathBuf> {
    let files = &line[line.find("\"filenames\":[")? + 13..];
    let files = &files[..files.find(']')?];
    files
        .split(',')
        .map(|f| f.trim().trim_matches('"'))
        .find(|f| f.ends_with(".so"))
        .map(PathBuf::from)
}

fn scratch_root() -> PathBuf {
    std::env::var_os("WAL2ARROW_SCRATCH_ROOT").map(PathBuf::from).unwrap_or_else(std::env::temp_dir)
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn free_port() -> Result<u16> {
    let l = TcpListener::bind(("127.0.0.1", 0)).map_err(|e| err(format!("no free port: {e}")))?;
    Ok(l.local_addr().map_err(|e| err(e.to_string()))?.port())
}

fn append(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|e| err(format!("cannot write {}: {e}", path.display())))
}

fn run(cmd: &mut Command) -> Result<String> {
    let out =
        cmd.stdin(Stdio::null()).output().map_err(|e| err(format!("cannot run {cmd:?}: {e}")))?;
    if !out.status.success() {
        return Err(err(format!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_library_in_cargo_artifact_messages() {
        let line = r#"{"reason":"compiler-artifact","target":{"name":"wal2arrow"},"filenames":["/t/release/libwal2arrow.so"],"executable":null}"#;
        assert_eq!(artifact_so(line), Some(PathBuf::from("/t/release/libwal2arrow.so")));
        assert_eq!(artifact_so(r#"{"filenames":["/a.rlib"]}"#), None);
    }
}

/// A Kafka-protocol broker for tests: tansu (see `scripts/kafka.sh`), on a free loopback port,
/// storing in memory. Like a [`Cluster`], it has a watchdog that stops it when this process
/// ends however it ends; dropping it stops it too.
#[derive(Debug)]
pub struct KafkaBroker {
    port: u16,
    bin: PathBuf,
    /// The watchdog, which runs the broker and stops it when its stdin closes.
    watchdog: Mutex<Option<(Child, ChildStdin)>>,
}

impl KafkaBroker {
    /// Starts a broker (installing tansu with `scripts/kafka.sh` when `$WAL2ARROW_TANSU` does
    /// not name one) and waits until it accepts connections.
    ///
    /// # Errors
    ///
    /// When tansu cannot be found or installed, or does not start within 30 s.
    pub fn start() -> Result<KafkaBroker> {
        let bin = match std::env::var_os("WAL2ARROW_TANSU") {
            Some(p) => PathBuf::from(p),
            None => {
                let tree = source_tree().ok_or_else(|| {
                    err("set WAL2ARROW_TANSU to a tansu broker binary (scripts/kafka.sh installs one)")
                })?;
                PathBuf::from(run(Command::new("bash").arg(tree.join("scripts/kafka.sh")))?.trim())
            }
        };
        let broker = KafkaBroker { port: free_port()?, bin, watchdog: Mutex::new(None) };
        broker.run()?;
        Ok(broker)
    }

    /// `127.0.0.1:PORT`, for `bootstrap.servers`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Stops the broker (its topics are gone: the storage is memory).
    pub fn stop(&self) {
        if let Some((mut child, stdin)) = self.watchdog.lock().ok().and_then(|mut w| w.take()) {
            drop(stdin);
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port (after [`stop`](Self::stop)).
    ///
    /// # Errors
    ///
    /// As [`start`](Self::start).
    pub fn restart(&self) -> Result<()> {
        self.stop();
        self.run()
    }

    fn run(&self) -> Result<()> {
        // The broker runs under the watchdog, which stops it when our end of stdin closes.
        let script = r#"
            RUST_LOG=warn "$1" broker --listener-url "tcp://127.0.0.1:$2" \
                --advertised-listener-url "tcp://127.0.0.1:$2" --storage-engine memory://tansu/ \
                >/dev/null 2>&1 &
            pid=$!
            cat >/dev/null
            kill "$pid" 2>/dev/null
            wait "$pid" 2>/dev/null
        "#;
        let mut child = Command::new("setsid")
            .args(["sh", "-c", script, "wal2arrow-kafka-watchdog"])
            .arg(&self.bin)
            .arg(self.port.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| err(format!("cannot start tansu ({}): {e}", self.bin.display())))?;
        let stdin = child.stdin.take().expect("stdin is piped");
        *self.watchdog.lock().expect("watchdog lock") = Some((child, stdin));
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if Instant::now() >= deadline {
                return Err(err(format!("tansu did not listen on port {} within 30 s", self.port)));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }
}

impl Drop for KafkaBroker {
    fn drop(&mut self) {
        self.stop();
    }
}
