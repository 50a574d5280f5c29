//! Connection settings.
//!
//! A [`Config`] comes from code, or from a libpq-style connection string — keyword/value
//! (`host=db port=5432 user=cdc dbname=app`) or URI (`postgresql://cdc:secret@db:5432/app`) —
//! with the same keywords libpq uses. Passwords are never printed: [`Config`]'s `Debug` hides
//! them.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

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
        }
    }
}

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
            .finish()
    }
}

impl Config {
    /// The database to connect to: `dbname`, or the user name.
    pub fn dbname(&self) -> &str {
        self.dbname.as_deref().unwrap_or(&self.user)
    }

    /// Parses a libpq connection string (keyword/value or `postgres://` URI).
    ///
    /// Accepted keywords: `host`, `hostaddr`, `port`, `user`, `password`, `dbname`,
    /// `connect_timeout` (seconds), `application_name`, and `sslmode` = `disable`, `allow` or
    /// `prefer` (this build speaks plain TCP; see the README).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the keyword that is unknown or malformed.
    pub fn from_dsn(dsn: &str) -> Result<Config> {
        let pairs = if dsn.starts_with("postgres://") || dsn.starts_with("postgresql://") {
            parse_uri(dsn)?
        } else {
            parse_keyword_value(dsn)?
        };
        let mut config = Config::default();
        for (k, v) in pairs {
            config.set(&k, v)?;
        }
        config.validate()?;
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
            "sslmode" => match value.as_str() {
                "disable" | "allow" | "prefer" => {}
                other => {
                    return Err(Error::Config(format!(
                        "sslmode={other} needs TLS, which this build does not support yet; \
                         use sslmode=disable or prefer over a trusted network"
                    )));
                }
            },
            other => {
                return Err(Error::Config(format!(
                    "unknown connection option {other:?}; accepted: host, hostaddr, port, user, \
                     password, dbname, connect_timeout, application_name, sslmode"
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
        Ok(())
    }

    /// The same settings for tokio-postgres (ordinary SQL connections).
    pub(crate) fn to_tokio_postgres(&self) -> tokio_postgres::Config {
        let mut c = tokio_postgres::Config::new();
        c.host(&self.host)
            .port(self.port)
            .user(&self.user)
            .dbname(self.dbname())
            .application_name(&self.application_name)
            .connect_timeout(self.connect_timeout);
        if let Some(p) = &self.password {
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
            "sslmode=require",
            "postgres://h:99999/d",
        ] {
            let e = Config::from_dsn(bad).unwrap_err();
            assert!(matches!(e, Error::Config(_)), "{bad}: {e}");
        }
        assert!(Config::from_dsn("sslmode=require").unwrap_err().to_string().contains("TLS"));
    }

    #[test]
    fn debug_output_hides_the_password() {
        let c = Config::from_dsn("user=u password=hunter2").unwrap();
        let shown = format!("{c:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("<hidden>"));
    }
}
