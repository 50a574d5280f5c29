//! Connection settings.
//!
//! A [`Config`] comes from code, or from a libpq-style connection string — keyword/value
//! (`host=db port=5432 user=cdc dbname=app`) or URI (`postgresql://cdc:secret@db:5432/app`) —
//! with the same keywords libpq uses, and libpq's environment variables ([`Config::from_env`]).
//! As with libpq, a `host` that starts with `/` is the directory of a Unix-domain socket
//! (`host=/var/run/postgresql` connects to `/var/run/postgresql/.s.PGSQL.5432`; TLS is never
//! used there, whatever `sslmode` says), and a password not given is looked up in the password
//! file (`PGPASSFILE`, else `~/.pgpass`). Passwords are never printed: [`Config`]'s `Debug`
//! hides them.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

/// Whether and how to use TLS, as libpq's `sslmode`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SslMode {
    /// Plain TCP only.
    Disable,
    /// TLS if the server offers it, else plain TCP; the certificate is not checked (libpq's
    /// default). `allow` is read as `prefer`: it never chooses plain TCP over TLS.
    #[default]
    Prefer,
    /// TLS or fail; the certificate is not checked.
    Require,
    /// TLS, with a certificate signed by a trusted CA (`sslrootcert`), for any host name.
    VerifyCa,
    /// TLS, with a certificate signed by a trusted CA and naming the host connected to.
    VerifyFull,
}

impl SslMode {
    /// As written in a connection string.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

impl FromStr for SslMode {
    type Err = Error;

    fn from_str(s: &str) -> Result<SslMode> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "allow" | "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(Error::Config(format!(
                    "sslmode must be disable, allow, prefer, require, verify-ca or verify-full, \
                     not {other:?}"
                )));
            }
        })
    }
}

/// The certificate authorities a TLS server certificate is checked against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RootCerts {
    /// The CA certificates in this PEM file (libpq's `sslrootcert=path`).
    File(PathBuf),
    /// The Mozilla root store, for servers with publicly trusted certificates
    /// (`sslrootcert=system`).
    System,
}

use crate::error::{Error, Result};

/// Where and how to connect.
#[derive(Clone, PartialEq, Eq)]
pub struct Config {
    /// Host name or IP address (default `localhost`).
    pub host: String,
    /// TCP port (default 5432).
    pub port: u16,
    /// User name (default `postgres`).
    pub user: String,
    /// Password, for password, md5 and SCRAM-SHA-256 authentication.
    pub password: Option<String>,
    /// Database (default: the user name, as libpq does).
    pub dbname: Option<String>,
    /// Longest wait to connect and authenticate (default 30 s).
    pub connect_timeout: Duration,
    /// `application_name` shown in `pg_stat_replication` (default `wal2arrow`).
    pub application_name: String,
    /// TLS use (default `prefer`).
    pub ssl_mode: SslMode,
    /// Trusted CAs for `verify-ca` and `verify-full`.
    pub ssl_root_cert: Option<RootCerts>,
    /// The largest message accepted from the server (default 256 MiB): a length word above it
    /// ends the stream with [`Error::MessageTooLarge`] before anything is allocated. Not a
    /// libpq keyword; set it in code or with `--max-message-size`.
    pub max_message_size: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            host: "localhost".into(),
            port: 5432,
            user: "postgres".into(),
            password: None,
            dbname: None,
            connect_timeout: Duration::from_secs(30),
            application_name: "wal2arrow".into(),
            ssl_mode: SslMode::Prefer,
            ssl_root_cert: None,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
        }
    }
}

/// The default [`Config::max_message_size`]: 256 MiB. PostgreSQL caps a single output-plugin
/// message at 1 GB; wal2arrow cuts batches at about 16 MiB, so only a single row (or a
/// wal2json change) of more than this needs a higher limit.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 256 << 20;

/// The smallest accepted [`Config::max_message_size`]: 1 MiB.
pub const MIN_MAX_MESSAGE_SIZE: usize = 1 << 20;

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<hidden>"))
            .field("dbname", &self.dbname())
            .field("connect_timeout", &self.connect_timeout)
            .field("application_name", &self.application_name)
            .field("ssl_mode", &self.ssl_mode)
            .field("ssl_root_cert", &self.ssl_root_cert)
            .field("max_message_size", &self.max_message_size)
            .finish()
    }
}

impl Config {
    /// The database to connect to: `dbname`, or the user name.
    pub fn dbname(&self) -> &str {
        self.dbname.as_deref().unwrap_or(&self.user)
    }

    /// Whether `host` names a Unix-domain socket directory (it starts with `/`).
    pub fn is_unix_socket(&self) -> bool {
        self.host.starts_with('/')
    }

    /// The socket file of a Unix-domain socket host: `<host>/.s.PGSQL.<port>`.
    pub fn socket_path(&self) -> Option<PathBuf> {
        self.is_unix_socket()
            .then(|| PathBuf::from(&self.host).join(format!(".s.PGSQL.{}", self.port)))
    }

    /// Where the server is, for messages: `host:port`, or the socket file.
    pub fn address(&self) -> String {
        match self.socket_path() {
            Some(p) => p.display().to_string(),
            None => format!("{}:{}", self.host, self.port),
        }
    }

    /// The password: the one given, else the password file's entry for this host, port,
    /// database and user (libpq's rules: `PGPASSFILE`, else `~/.pgpass`; ignored unless only
    /// its owner can read it; `*` matches anything; a socket connection also matches
    /// `localhost`).
    pub fn resolved_password(&self) -> Option<String> {
        if self.password.is_some() {
            return self.password.clone();
        }
        let file = match std::env::var_os("PGPASSFILE") {
            Some(f) if !f.is_empty() => PathBuf::from(f),
            _ => PathBuf::from(std::env::var_os("HOME")?).join(".pgpass"),
        };
        {
            use std::os::unix::fs::PermissionsExt;
            let meta = std::fs::metadata(&file).ok()?;
            if !meta.is_file() || meta.permissions().mode() & 0o077 != 0 {
                if meta.is_file() {
                    tracing::warn!(
                        file = %file.display(),
                        "password file has group or world access; it is ignored (chmod 0600 it)"
                    );
                }
                return None;
            }
        }
        let text = std::fs::read_to_string(&file).ok()?;
        let port = self.port.to_string();
        let hosts: &[&str] = if self.is_unix_socket() {
            &[self.host.as_str(), "localhost"]
        } else {
            &[self.host.as_str()]
        };
        text.lines().filter(|l| !l.starts_with('#')).find_map(|line| {
            let fields = passfile_fields(line);
            let [host, p, db, user, password] = <[String; 5]>::try_from(fields).ok()?;
            let matches = |pattern: &str, value: &str| pattern == "*" || pattern == value;
            (hosts.iter().any(|h| matches(&host, h))
                && matches(&p, &port)
                && matches(&db, self.dbname())
                && matches(&user, &self.user))
            .then_some(password)
        })
    }

    /// Parses a libpq connection string (keyword/value or `postgres://` URI).
    ///
    /// Accepted keywords: `host`, `hostaddr`, `port`, `user`, `password`, `dbname`,
    /// `connect_timeout` (seconds), `application_name`, `sslmode` (`disable`, `allow`,
    /// `prefer`, `require`, `verify-ca`, `verify-full`) and `sslrootcert` (a PEM file, or
    /// `system` for the Mozilla root store).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the keyword that is unknown or malformed.
    pub fn from_dsn(dsn: &str) -> Result<Config> {
        let mut config = Config::default();
        config.apply_dsn(dsn)?;
        config.validate()?;
        Ok(config)
    }

    /// Sets what a connection string (keyword/value or URI) names, keeping the rest.
    ///
    /// # Errors
    ///
    /// As [`from_dsn`](Self::from_dsn).
    pub fn apply_dsn(&mut self, dsn: &str) -> Result<()> {
        let pairs = if dsn.starts_with("postgres://") || dsn.starts_with("postgresql://") {
            parse_uri(dsn)?
        } else {
            parse_keyword_value(dsn)?
        };
        for (k, v) in pairs {
            self.set(&k, v)?;
        }
        Ok(())
    }

    /// The defaults, overridden by libpq's environment variables where set: `PGHOST` (a host
    /// name, an address, or a Unix-domain socket directory), `PGHOSTADDR`, `PGPORT`, `PGUSER`,
    /// `PGPASSWORD`, `PGDATABASE`, `PGCONNECT_TIMEOUT`, `PGAPPNAME`, `PGSSLMODE`,
    /// `PGSSLROOTCERT` (and `PGPASSFILE`, read when connecting).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the variable whose value is invalid.
    pub fn from_env() -> Result<Config> {
        let mut config = Config::default();
        for (var, key) in [
            ("PGHOST", "host"),
            ("PGHOSTADDR", "hostaddr"),
            ("PGPORT", "port"),
            ("PGUSER", "user"),
            ("PGPASSWORD", "password"),
            ("PGDATABASE", "dbname"),
            ("PGCONNECT_TIMEOUT", "connect_timeout"),
            ("PGAPPNAME", "application_name"),
            ("PGSSLMODE", "sslmode"),
            ("PGSSLROOTCERT", "sslrootcert"),
        ] {
            let Ok(value) = std::env::var(var) else { continue };
            if value.is_empty() {
                continue;
            }
            config.set(key, value).map_err(|e| Error::Config(format!("{var}: {e}")))?;
        }
        Ok(config)
    }

    fn set(&mut self, key: &str, value: String) -> Result<()> {
        match key {
            "host" | "hostaddr" => self.host = value,
            "port" => {
                self.port = value.parse().map_err(|_| {
                    Error::Config(format!("port must be a number from 1 to 65535, not {value:?}"))
                })?
            }
            "user" => self.user = value,
            "password" => self.password = Some(value),
            "dbname" => self.dbname = Some(value),
            "connect_timeout" => {
                let secs: u64 = value.parse().map_err(|_| {
                    Error::Config(format!("connect_timeout must be whole seconds, not {value:?}"))
                })?;
                self.connect_timeout = Duration::from_secs(secs.max(1));
            }
            "application_name" => self.application_name = value,
            "sslmode" => self.ssl_mode = value.parse()?,
            "sslrootcert" => {
                self.ssl_root_cert = Some(if value == "system" {
                    RootCerts::System
                } else {
                    RootCerts::File(PathBuf::from(value))
                })
            }
            other => {
                return Err(Error::Config(format!(
                    "unknown connection option {other:?}; accepted: host, hostaddr, port, user, \
                     password, dbname, connect_timeout, application_name, sslmode, sslrootcert"
                )));
            }
        }
        Ok(())
    }

    /// Checks the settings.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the field and what it must be.
    pub fn validate(&self) -> Result<()> {
        if self.host.is_empty() {
            return Err(Error::Config("host must not be empty".into()));
        }
        if self.port == 0 {
            return Err(Error::Config("port must be from 1 to 65535".into()));
        }
        if self.user.is_empty() {
            return Err(Error::Config("user must not be empty".into()));
        }
        if self.connect_timeout.is_zero() {
            return Err(Error::Config("connect_timeout must be positive".into()));
        }
        if self.max_message_size < MIN_MAX_MESSAGE_SIZE {
            return Err(Error::Config(format!(
                "max_message_size must be at least {MIN_MAX_MESSAGE_SIZE} bytes (1 MiB), not {}",
                self.max_message_size
            )));
        }
        if matches!(self.ssl_mode, SslMode::VerifyCa | SslMode::VerifyFull)
            && self.ssl_root_cert.is_none()
        {
            return Err(Error::Config(format!(
                "sslmode={} checks the server's certificate against trusted CAs: set sslrootcert \
                 to a PEM file of them, or sslrootcert=system for publicly trusted ones",
                self.ssl_mode.as_str()
            )));
        }
        Ok(())
    }

    /// The same settings for tokio-postgres (ordinary SQL connections). Certificate checks
    /// are done by our TLS connector, so every verifying mode is `require` there; a Unix
    /// socket never uses TLS.
    pub(crate) fn to_tokio_postgres(&self) -> tokio_postgres::Config {
        let mut c = tokio_postgres::Config::new();
        let ssl_mode = match self.ssl_mode {
            _ if self.is_unix_socket() => tokio_postgres::config::SslMode::Disable,
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            _ => tokio_postgres::config::SslMode::Require,
        };
        c.host(&self.host)
            .port(self.port)
            .user(&self.user)
            .dbname(self.dbname())
            .application_name(&self.application_name)
            .connect_timeout(self.connect_timeout)
            .ssl_mode(ssl_mode);
        if let Some(p) = self.resolved_password() {
            c.password(p);
        }
        c
    }
}

impl FromStr for Config {
    type Err = Error;

    fn from_str(s: &str) -> Result<Config> {
        Config::from_dsn(s)
    }
}

/// The `:`-separated fields of a password file line (`\\` escapes `:` and `\\`).
fn passfile_fields(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => fields.last_mut().expect("one").extend(chars.next()),
            ':' => fields.push(String::new()),
            c => fields.last_mut().expect("one").push(c),
        }
    }
    fields
}

fn parse_keyword_value(s: &str) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            return Ok(out);
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.next() != Some('=') {
            return Err(Error::Config(format!("missing \"=\" after {key:?} in connection string")));
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'\'') {
            chars.next();
            loop {
                match chars.next() {
                    Some('\\') => value.extend(chars.next()),
                    Some('\'') => break,
                    Some(c) => value.push(c),
                    None => {
                        return Err(Error::Config(format!(
                            "unterminated quoted value for {key:?}"
                        )));
                    }
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                chars.next();
                if c == '\\' {
                    value.extend(chars.next());
                } else {
                    value.push(c);
                }
            }
        }
        out.push((key, value));
    }
}

fn parse_uri(s: &str) -> Result<Vec<(String, String)>> {
    let rest = s.split_once("://").map(|(_, r)| r).unwrap_or(s);
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, Some(q)),
        None => (rest, None),
    };
    let (authority, path) = match rest.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (rest, None),
    };
    let mut out = Vec::new();
    let hostport = match authority.rsplit_once('@') {
        Some((userinfo, hp)) => {
            match userinfo.split_once(':') {
                Some((u, p)) => {
                    out.push(("user".into(), percent_decode(u)?));
                    out.push(("password".into(), percent_decode(p)?));
                }
                None if !userinfo.is_empty() => {
                    out.push(("user".into(), percent_decode(userinfo)?))
                }
                None => {}
            }
            hp
        }
        None => authority,
    };
    let (host, port) = if let Some(h) = hostport.strip_prefix('[') {
        let (h, after) = h
            .split_once(']')
            .ok_or_else(|| Error::Config("unterminated IPv6 address in URI".into()))?;
        (h, after.strip_prefix(':'))
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    if !host.is_empty() {
        out.push(("host".into(), percent_decode(host)?));
    }
    if let Some(p) = port.filter(|p| !p.is_empty()) {
        out.push(("port".into(), p.to_owned()));
    }
    if let Some(db) = path.filter(|p| !p.is_empty()) {
        out.push(("dbname".into(), percent_decode(db)?));
    }
    for kv in query.into_iter().flat_map(|q| q.split('&')).filter(|kv| !kv.is_empty()) {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| Error::Config(format!("URI parameter {kv:?} has no value")))?;
        out.push((percent_decode(k)?, percent_decode(v)?));
    }
    Ok(out)
}

fn percent_decode(s: &str) -> Result<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| Error::Config(format!("bad percent-escape in URI part {s:?}")))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| Error::Config(format!("URI part {s:?} is not UTF-8")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_keyword_value_strings() {
        let c = Config::from_dsn(
            "host=db.example port=6543 user=cdc password='s p\\'q' dbname=app connect_timeout=5",
        )
        .unwrap();
        assert_eq!(c.host, "db.example");
        assert_eq!(c.port, 6543);
        assert_eq!(c.user, "cdc");
        assert_eq!(c.password.as_deref(), Some("s p'q"));
        assert_eq!(c.dbname(), "app");
        assert_eq!(c.connect_timeout, Duration::from_secs(5));
    }

    #[test]
    fn parses_uris() {
        let c =
            Config::from_dsn("postgresql://cdc:p%40ss@db:5433/my%20db?application_name=x").unwrap();
        assert_eq!((c.user.as_str(), c.password.as_deref()), ("cdc", Some("p@ss")));
        assert_eq!((c.host.as_str(), c.port), ("db", 5433));
        assert_eq!(c.dbname(), "my db");
        assert_eq!(c.application_name, "x");
        let c = Config::from_dsn("postgres://[::1]:5434/d").unwrap();
        assert_eq!((c.host.as_str(), c.port, c.dbname()), ("::1", 5434, "d"));
        let c = Config::from_dsn("postgres://u@h").unwrap();
        assert_eq!((c.user.as_str(), c.dbname()), ("u", "u"));
    }

    #[test]
    fn rejects_what_it_cannot_honour() {
        for bad in [
            "port=x",
            "bogus=1",
            "host",
            "password='open",
            "sslmode=sometimes",
            "postgres://h:99999/d",
        ] {
            let e = Config::from_dsn(bad).unwrap_err();
            assert!(matches!(e, Error::Config(_)), "{bad}: {e}");
        }
        let e = Config::from_dsn("sslmode=verify-full").unwrap_err();
        assert!(e.to_string().contains("sslrootcert"), "{e}");
    }

    #[test]
    fn parses_tls_settings() {
        let c = Config::from_dsn("host=db sslmode=verify-full sslrootcert=/etc/ca.pem").unwrap();
        assert_eq!(c.ssl_mode, SslMode::VerifyFull);
        assert_eq!(c.ssl_root_cert, Some(RootCerts::File("/etc/ca.pem".into())));
        let c = Config::from_dsn("postgres://h/d?sslmode=verify-ca&sslrootcert=system").unwrap();
        assert_eq!((c.ssl_mode, c.ssl_root_cert), (SslMode::VerifyCa, Some(RootCerts::System)));
        assert_eq!(Config::from_dsn("sslmode=allow").unwrap().ssl_mode, SslMode::Prefer);
        assert_eq!(Config::default().ssl_mode, SslMode::Prefer);
    }

    #[test]
    fn unix_socket_hosts_are_socket_directories() {
        let c = Config::from_dsn("host=/var/run/postgresql port=5433 user=u").unwrap();
        assert!(c.is_unix_socket());
        assert_eq!(c.socket_path().unwrap(), PathBuf::from("/var/run/postgresql/.s.PGSQL.5433"));
        assert_eq!(c.address(), "/var/run/postgresql/.s.PGSQL.5433");
        let c = Config::from_dsn("postgresql://u@%2Ftmp/db").unwrap();
        assert_eq!((c.host.as_str(), c.dbname()), ("/tmp", "db"));
        let c = Config::from_dsn("postgresql:///db?host=/tmp&port=6000").unwrap();
        assert_eq!(c.socket_path().unwrap(), PathBuf::from("/tmp/.s.PGSQL.6000"));
        assert!(!Config::from_dsn("host=db").unwrap().is_unix_socket());
        // TLS is never used over a socket, as with libpq.
        let c = Config::from_dsn("host=/tmp sslmode=require").unwrap();
        assert_eq!(c.to_tokio_postgres().get_ssl_mode(), tokio_postgres::config::SslMode::Disable);
    }

    #[test]
    fn password_file_lines_split_on_unescaped_colons() {
        assert_eq!(passfile_fields("h:5432:*:u:p\\:w"), ["h", "5432", "*", "u", "p:w"]);
        assert_eq!(passfile_fields("a\\\\b:1:2:3:4"), ["a\\b", "1", "2", "3", "4"]);
    }

    #[test]
    fn debug_output_hides_the_password() {
        let c = Config::from_dsn("user=u password=hunter2").unwrap();
        let shown = format!("{c:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("<hidden>"));
    }
}
