//! Ordinary SQL connections (tokio-postgres), with the replication connection's settings and
//! the same error classification.

use crate::config::Config;
use crate::error::{Error, Result};

/// Opens an ordinary SQL connection (tokio-postgres) with the same settings; the connection's
/// I/O runs on a spawned task. The whole start-up — connecting, TLS, authentication — is
/// bounded by `connect_timeout`.
///
/// # Errors
///
/// Connection, TLS, timeout and authentication errors, classified as on the replication
/// connection ([`Error::Connect`], [`Error::Tls`], [`Error::Timeout`], [`Error::Auth`], the
/// server's error).
pub async fn sql_client(config: &Config) -> Result<tokio_postgres::Client> {
    config.validate()?;
    let tls = match crate::tls::client_config(config)? {
        Some(tls) => tls,
        // sslmode=disable: tokio-postgres never calls the connector.
        None => crate::tls::client_config(&Config {
            ssl_mode: crate::config::SslMode::Require,
            ..config.clone()
        })?
        .expect("require has a TLS configuration"),
    };
    let pg_config = config.to_tokio_postgres();
    let connect = pg_config.connect(crate::tls::MakeRustls(tls));
    let (client, connection) = match tokio::time::timeout(config.connect_timeout, connect).await {
        Ok(Ok(connected)) => connected,
        Ok(Err(e)) => return Err(connect_error(config, e)),
        Err(_) => {
            return Err(Error::Timeout {
                what: "connecting and authenticating",
                after: config.connect_timeout,
            });
        }
    };
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!("SQL connection ended: {e}");
        }
    });
    Ok(client)
}

/// Classifies a failed tokio-postgres connection attempt as the replication connection's are.
/// The server's errors are read by SQLSTATE; tokio-postgres's own failures carry no kind
/// that can be asked, so its (fixed, English) descriptions of TLS and configuration errors are
/// recognised here, in this one place.
fn connect_error(config: &Config, e: tokio_postgres::Error) -> Error {
    if let Some(db) = e.as_db_error() {
        return crate::protocol::conn::login_error(crate::error::DbError::from(db));
    }
    let text = e.to_string();
    let detail = std::error::Error::source(&e).map(ToString::to_string).unwrap_or_default();
    // Before the I/O causes: our TLS connector reports certificate failures as io::Error.
    if text.starts_with("error performing TLS handshake") {
        return Error::Tls(if detail.contains("does not support TLS") {
            format!(
                "the server at {} does not accept TLS, and sslmode={} requires it: turn ssl on \
                 in postgresql.conf, or use sslmode=prefer",
                config.address(),
                config.ssl_mode.as_str()
            )
        } else {
            format!("TLS handshake with {} failed: {detail}", config.address())
        });
    }
    if text.starts_with("invalid configuration") && config.resolved_password().is_none() {
        return crate::protocol::conn::no_password(config);
    }
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            if !crate::error::io_is_transient(io) {
                return Error::protocol(format!(
                    "malformed message from the server at {}: {io}",
                    config.address()
                ));
            }
            return Error::Connect {
                addr: config.address(),
                source: std::io::Error::new(io.kind(), io.to_string()),
            };
        }
        source = s.source();
    }
    Error::Sql(e)
}

/// Quotes an identifier for SQL and replication commands (`"my ""slot"""`).
pub fn quote_ident(s: &str) -> String {
    crate::protocol::conn::quote_ident(s)
}

/// Quotes a string literal (`'it''s'`).
pub fn quote_literal(s: &str) -> String {
    crate::protocol::conn::quote_literal(s)
}
