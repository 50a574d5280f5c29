//! A replication connection: startup with `replication=database`, authentication (trust,
//! cleartext password, md5, SCRAM-SHA-256), and the simple-query protocol the replication
//! commands use. Message codecs and SCRAM come from `postgres-protocol`; framing is ours
//! ([`super::frame`]), since tokio-postgres has no CopyBoth mode. The same connection without
//! `replication` reads a snapshot worker's binary `COPY` ([`Connection::copy_out`]).

use std::collections::HashMap;
use std::time::Duration;

use bytes::BytesMut;
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, SCRAM_SHA_256, ScramSha256};
use postgres_protocol::message::backend::{ErrorFields, Message};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::frame::{Frame, FrameError, FrameReader};
use crate::config::{Config, SslMode};
use crate::error::{DbError, Error, Result};
use crate::tls::{Socket, client_config, server_name};

/// One row of a simple-query result, in text format.
pub(crate) type Row = Vec<Option<String>>;

/// An authenticated connection (in replication mode unless made by
/// [`connect_sql`](Connection::connect_sql)).
#[derive(Debug)]
pub(crate) struct Connection {
    pub(crate) stream: Socket,
    pub(crate) reader: FrameReader,
    /// `ParameterStatus` values reported by the server (`server_version`, …).
    pub(crate) parameters: HashMap<String, String>,
    out: BytesMut,
}

impl Connection {
    /// Connects and authenticates, all within `config.connect_timeout`.
    ///
    /// # Errors
    ///
    /// [`Error::Connect`], [`Error::Timeout`], [`Error::Auth`], or the server's error (for
    /// example, a database that does not exist).
    pub(crate) async fn connect(config: &Config) -> Result<Connection> {
        Self::connect_as(config, true).await
    }

    /// An ordinary (not replication) connection with the same settings, startup and
    /// authentication: for a snapshot worker's `COPY`, read here without tokio-postgres's
    /// per-message hand-over between tasks ([`copy_out`](Self::copy_out)).
    pub(crate) async fn connect_sql(config: &Config) -> Result<Connection> {
        Self::connect_as(config, false).await
    }

    async fn connect_as(config: &Config, replication: bool) -> Result<Connection> {
        config.validate()?;
        let timeout = config.connect_timeout;
        match tokio::time::timeout(timeout, Self::connect_inner(config, replication)).await {
            Ok(r) => r,
            Err(_) => Err(Error::Timeout { what: "connecting and authenticating", after: timeout }),
        }
    }

    async fn connect_inner(config: &Config, replication: bool) -> Result<Connection> {
        let addr = config.address();
        let stream = match config.socket_path() {
            // A Unix-domain socket: never TLS, as with libpq.
            Some(path) => Socket::Unix(
                tokio::net::UnixStream::connect(&path)
                    .await
                    .map_err(|source| Error::Connect { addr: addr.clone(), source })?,
            ),
            None => Self::connect_tcp(config, &addr).await?,
        };
        let mut conn = Connection {
            stream,
            reader: FrameReader::new(config.max_message_size),
            parameters: HashMap::new(),
            out: BytesMut::with_capacity(256),
        };
        let mut params = vec![
            ("user", config.user.as_str()),
            ("database", config.dbname()),
            ("application_name", config.application_name.as_str()),
            ("client_encoding", "UTF8"),
        ];
        if replication {
            params.push(("replication", "database"));
        }
        frontend::startup_message(params.iter().copied(), &mut conn.out)?;
        conn.flush().await?;
        conn.authenticate(config).await?;
        // After AuthenticationOk: parameters, BackendKeyData, then ReadyForQuery.
        loop {
            match conn.next_message().await? {
                Message::ReadyForQuery(_) => return Ok(conn),
                Message::ParameterStatus(p) => {
                    conn.parameters.insert(p.name()?.to_owned(), p.value()?.to_owned());
                }
                Message::BackendKeyData(_) | Message::NoticeResponse(_) => {}
                Message::ErrorResponse(e) => return Err(login_error(db_error(e.fields()))),
                m => return Err(unexpected("during startup", &m)),
            }
        }
    }

    /// A TCP connection, with TLS as `sslmode` asks.
    async fn connect_tcp(config: &Config, addr: &str) -> Result<Socket> {
        let mut tcp = TcpStream::connect((config.host.as_str(), config.port))
            .await
            .map_err(|source| Error::Connect { addr: addr.to_owned(), source })?;
        tcp.set_nodelay(true)?;
        Ok(match client_config(config)? {
            None => Socket::Plain(tcp),
            Some(tls) => {
                // SSLRequest, answered by one byte: 'S' to start TLS, 'N' to refuse. Nothing
                // may follow the 'S' before the handshake (CVE-2021-23222), so read just it.
                let mut request = BytesMut::new();
                frontend::ssl_request(&mut request);
                tcp.write_all(&request).await?;
                let mut answer = [0u8; 1];
                tcp.read_exact(&mut answer).await?;
                match answer[0] {
                    b'S' => {
                        let tls = tokio_rustls::TlsConnector::from(tls)
                            .connect(server_name(&config.host)?, tcp)
                            .await
                            .map_err(|e| {
                                Error::Tls(format!("TLS handshake with {addr} failed: {e}"))
                            })?;
                        Socket::Tls(Box::new(tls))
                    }
                    b'N' if config.ssl_mode == SslMode::Prefer => Socket::Plain(tcp),
                    b'N' => {
                        return Err(Error::Tls(format!(
                            "the server at {addr} does not accept TLS, and sslmode={} requires it: \
                             turn ssl on in postgresql.conf, or use sslmode=prefer",
                            config.ssl_mode.as_str()
                        )));
                    }
                    other => {
                        return Err(Error::protocol(format!(
                            "unexpected answer {other:#04x} to SSLRequest"
                        )));
                    }
                }
            }
        })
    }

    async fn authenticate(&mut self, config: &Config) -> Result<()> {
        let resolved = config.resolved_password();
        let password = || resolved.as_deref().ok_or_else(|| no_password(config));
        loop {
            match self.next_message().await? {
                Message::AuthenticationOk => return Ok(()),
                Message::AuthenticationCleartextPassword => {
                    frontend::password_message(password()?.as_bytes(), &mut self.out)?;
                    self.flush().await?;
                }
                Message::AuthenticationMd5Password(body) => {
                    let hash =
                        md5_hash(config.user.as_bytes(), password()?.as_bytes(), body.salt());
                    frontend::password_message(hash.as_bytes(), &mut self.out)?;
                    self.flush().await?;
                }
                Message::AuthenticationSasl(body) => {
                    let mut mechanisms = body.mechanisms();
                    let mut scram = false;
                    while let Some(m) = mechanisms.next()? {
                        scram |= m == SCRAM_SHA_256;
                    }
                    if !scram {
                        return Err(Error::Auth {
                            message: "the server offers no SASL mechanism this client supports \
                                      (SCRAM-SHA-256 without channel binding)"
                                .into(),
                            source: None,
                        });
                    }
                    let mut client =
                        ScramSha256::new(password()?.as_bytes(), ChannelBinding::unsupported());
                    frontend::sasl_initial_response(
                        SCRAM_SHA_256,
                        client.message(),
                        &mut self.out,
                    )?;
                    self.flush().await?;
                    match self.next_message().await? {
                        Message::AuthenticationSaslContinue(b) => {
                            client.update(b.data()).map_err(|e| Error::Auth {
                                message: format!("the server's SCRAM message is invalid: {e}"),
                                source: None,
                            })?
                        }
                        Message::ErrorResponse(e) => {
                            return Err(login_error(db_error(e.fields())));
                        }
                        m => return Err(unexpected("during SCRAM authentication", &m)),
                    }
                    frontend::sasl_response(client.message(), &mut self.out)?;
                    self.flush().await?;
                    match self.next_message().await? {
                        Message::AuthenticationSaslFinal(b) => {
                            client.finish(b.data()).map_err(|e| Error::Auth {
                                message: format!(
                                    "the server's SCRAM signature does not verify: {e}"
                                ),
                                source: None,
                            })?
                        }
                        Message::ErrorResponse(e) => {
                            return Err(login_error(db_error(e.fields())));
                        }
                        m => return Err(unexpected("during SCRAM authentication", &m)),
                    }
                }
                Message::ErrorResponse(e) => return Err(login_error(db_error(e.fields()))),
                Message::AuthenticationGss
                | Message::AuthenticationKerberosV5
                | Message::AuthenticationSspi
                | Message::AuthenticationScmCredential => {
                    return Err(Error::Auth {
                        message: "the server asks for GSSAPI/Kerberos/SSPI authentication, \
                                  which this client does not support; use password, md5 or \
                                  scram-sha-256 in pg_hba.conf"
                            .into(),
                        source: None,
                    });
                }
                m => return Err(unexpected("during authentication", &m)),
            }
        }
    }

    /// Sends what was queued. Cancel safe: bytes leave the buffer as the socket takes them,
    /// so a flush dropped half way resumes, after the bytes already sent, at the next one.
    pub(crate) async fn flush(&mut self) -> Result<()> {
        write_queued(&mut self.stream, &mut self.out).await?;
        Ok(())
    }

    /// Whether the connection is encrypted.
    pub(crate) fn is_tls(&self) -> bool {
        self.stream.is_tls()
    }

    /// Queues a frontend message built by `f` (sent by the next [`flush`](Self::flush)).
    pub(crate) fn queue(
        &mut self,
        f: impl FnOnce(&mut BytesMut) -> std::io::Result<()>,
    ) -> Result<()> {
        f(&mut self.out)?;
        Ok(())
    }

    /// The next message, parsed by postgres-protocol. Only for the non-streaming phases.
    pub(crate) async fn next_message(&mut self) -> Result<Message> {
        match self.reader.read(&mut self.stream).await.map_err(Error::from)? {
            Frame::Other(mut bytes) => Message::parse(&mut bytes)
                .map_err(malformed)?
                .ok_or_else(|| Error::protocol("incomplete message")),
            Frame::CopyBoth => Err(Error::protocol("unexpected CopyBothResponse")),
            Frame::XLogData { .. } | Frame::Keepalive { .. } => {
                Err(Error::protocol("replication data outside of START_REPLICATION"))
            }
        }
    }

    /// Runs one command with the simple-query protocol and returns its rows (text format).
    ///
    /// # Errors
    ///
    /// The server's error, after the connection is back to idle.
    pub(crate) async fn simple_query(&mut self, sql: &str) -> Result<Vec<Row>> {
        frontend::query(sql, &mut self.out)?;
        self.flush().await?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            match self.next_message().await? {
                Message::DataRow(row) => {
                    let buf = row.buffer();
                    let mut ranges = row.ranges();
                    let mut values = Vec::new();
                    while let Some(r) = ranges.next().map_err(malformed)? {
                        values.push(r.map(|r| String::from_utf8_lossy(&buf[r]).into_owned()));
                    }
                    rows.push(values);
                }
                Message::ErrorResponse(e) => error = Some(db_error(e.fields())),
                Message::ReadyForQuery(_) => {
                    return match error {
                        Some(e) => Err(Error::Server(Box::new(e))),
                        None => Ok(rows),
                    };
                }
                Message::RowDescription(_)
                | Message::CommandComplete(_)
                | Message::EmptyQueryResponse
                | Message::NoticeResponse(_)
                | Message::ParameterStatus(_) => {}
                m => return Err(unexpected("in a query result", &m)),
            }
        }
    }

    /// Starts `COPY … TO STDOUT (FORMAT binary)` (`sql`); its data follows from
    /// [`next_copy_data`](Self::next_copy_data). Binary only: a binary row's first byte (its
    /// field count's high byte, the header's `P`, the trailer's 0xff) is never the `w` or `k`
    /// of replication messages, which the frame reader tells apart by that byte.
    ///
    /// # Errors
    ///
    /// The server's error, after the connection is back to idle.
    pub(crate) async fn copy_out(&mut self, sql: &str) -> Result<()> {
        frontend::query(sql, &mut self.out)?;
        self.flush().await?;
        loop {
            match self.next_message().await? {
                Message::CopyOutResponse(_) => return Ok(()),
                Message::ErrorResponse(e) => {
                    let e = db_error(e.fields());
                    while !matches!(self.next_message().await?, Message::ReadyForQuery(_)) {}
                    return Err(Error::Server(Box::new(e)));
                }
                Message::NoticeResponse(_) | Message::ParameterStatus(_) => {}
                m => return Err(unexpected("starting COPY", &m)),
            }
        }
    }

    /// The next `CopyData` payload of the `COPY` [`copy_out`](Self::copy_out) started (no
    /// copy: a slice of the read buffer); `None` once it ended and the connection is idle.
    ///
    /// # Errors
    ///
    /// The server's error, after the connection is back to idle; I/O and framing errors.
    pub(crate) async fn next_copy_data(&mut self) -> Result<Option<bytes::Bytes>> {
        let mut error = None;
        loop {
            let frame = self.reader.read(&mut self.stream).await.map_err(Error::from)?;
            let Frame::Other(mut msg) = frame else {
                return Err(Error::protocol("replication data in a COPY"));
            };
            if msg[0] == b'd' {
                bytes::Buf::advance(&mut msg, 5);
                return Ok(Some(msg.freeze()));
            }
            match Message::parse(&mut msg).map_err(malformed)? {
                Some(Message::ReadyForQuery(_)) => {
                    return match error {
                        Some(e) => Err(Error::Server(Box::new(e))),
                        None => Ok(None),
                    };
                }
                Some(Message::ErrorResponse(e)) => error = Some(db_error(e.fields())),
                Some(
                    Message::CopyDone
                    | Message::CommandComplete(_)
                    | Message::NoticeResponse(_)
                    | Message::ParameterStatus(_),
                ) => {}
                Some(m) => return Err(unexpected("in a COPY", &m)),
                None => return Err(Error::protocol("incomplete message")),
            }
        }
    }

    /// Sends a command that switches the connection to CopyBoth mode (`START_REPLICATION`) and
    /// waits for the switch.
    ///
    /// # Errors
    ///
    /// The server's error (a bad slot or plugin option shows up here), read to the end.
    pub(crate) async fn start_copy_both(&mut self, sql: &str, timeout: Duration) -> Result<()> {
        frontend::query(sql, &mut self.out)?;
        self.flush().await?;
        let wait = async {
            loop {
                match self.reader.read(&mut self.stream).await.map_err(Error::from)? {
                    Frame::CopyBoth => return Ok(()),
                    Frame::Other(mut bytes) => match Message::parse(&mut bytes)
                        .map_err(malformed)?
                    {
                        Some(Message::ErrorResponse(e)) => {
                            let e = db_error(e.fields());
                            // Drain to ReadyForQuery so the connection could be reused.
                            while !matches!(self.next_message().await?, Message::ReadyForQuery(_)) {
                            }
                            return Err(Error::Server(Box::new(e)));
                        }
                        Some(Message::NoticeResponse(_) | Message::ParameterStatus(_)) => {}
                        Some(m) => return Err(unexpected("starting replication", &m)),
                        None => return Err(Error::protocol("incomplete message")),
                    },
                    _ => {
                        return Err(Error::protocol("replication data before CopyBothResponse"));
                    }
                }
            }
        };
        match tokio::time::timeout(timeout, wait).await {
            Ok(r) => r,
            Err(_) => Err(Error::Timeout { what: "waiting for START_REPLICATION", after: timeout }),
        }
    }
}

/// The fields of an ErrorResponse or NoticeResponse.
pub(crate) fn db_error(mut fields: ErrorFields<'_>) -> DbError {
    let mut e = DbError {
        severity: String::new(),
        code: String::new(),
        message: String::new(),
        detail: None,
        hint: None,
    };
    while let Ok(Some(f)) = fields.next() {
        let v = String::from_utf8_lossy(f.value_bytes()).into_owned();
        match f.type_() {
            b'V' => e.severity = v,
            b'S' if e.severity.is_empty() => e.severity = v,
            b'C' => e.code = v,
            b'M' => e.message = v,
            b'D' => e.detail = Some(v),
            b'H' => e.hint = Some(v),
            _ => {}
        }
    }
    e
}

/// The error for a server that refused the login: [`Error::Auth`] for a bad password or an
/// unknown role (with the server's words, its SQLSTATE and what to check); the server's
/// error otherwise (a database that does not exist, too many connections, …).
pub(crate) fn login_error(e: DbError) -> Error {
    match e.code.as_str() {
        // invalid_password, invalid_authorization_specification
        "28P01" | "28000" => {
            let advice = crate::error::advice(&e.code).unwrap_or_default();
            Error::Auth {
                message: format!("{} (SQLSTATE {}): {advice}", e.message, e.code),
                source: Some(Box::new(e)),
            }
        }
        _ => Error::Server(Box::new(e)),
    }
}

/// The error for a server that asks for a password none of the sources gave.
pub(crate) fn no_password(config: &Config) -> Error {
    Error::Auth {
        message: format!(
            "the server requires a password for user {:?} and none was given: put it in the \
             connection string (password=…), in PGPASSWORD, or in the password file (~/.pgpass, \
             or the file PGPASSFILE names, mode 0600)",
            config.user
        ),
        source: None,
    }
}

/// Sends `out`, removing bytes from it as the socket accepts them (cancel safe: see
/// [`Connection::flush`]).
pub(crate) async fn write_queued<W: tokio::io::AsyncWrite + Unpin>(
    io: &mut W,
    out: &mut BytesMut,
) -> std::io::Result<()> {
    use bytes::Buf;
    while !out.is_empty() {
        let n = io.write(out).await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::WriteZero,
                "the connection accepts no more bytes",
            ));
        }
        out.advance(n);
    }
    io.flush().await
}

impl From<FrameError> for Error {
    fn from(e: FrameError) -> Error {
        match e {
            FrameError::Io(e) => Error::Io(e),
            FrameError::Malformed(m) => Error::protocol(m),
            FrameError::TooLarge { size, max } => Error::MessageTooLarge { size, max },
        }
    }
}

/// A backend message that does not parse: the server (or something between us) sent bytes
/// the protocol does not allow — a definite error, not a lost connection.
pub(crate) fn malformed(e: std::io::Error) -> Error {
    Error::protocol(format!("malformed message from the server: {e}"))
}

fn unexpected(when: &str, m: &Message) -> Error {
    let name = match m {
        Message::CopyData(_) => "CopyData",
        Message::CopyDone => "CopyDone",
        Message::CopyInResponse(_) => "CopyInResponse",
        Message::CopyOutResponse(_) => "CopyOutResponse",
        Message::DataRow(_) => "DataRow",
        Message::CommandComplete(_) => "CommandComplete",
        Message::ReadyForQuery(_) => "ReadyForQuery",
        Message::RowDescription(_) => "RowDescription",
        _ => "a message",
    };
    Error::protocol(format!("unexpected {name} {when}"))
}

/// Quotes an identifier for SQL and replication commands (`"my ""slot"""`).
pub(crate) fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Quotes a string literal (`'it''s'`).
pub(crate) fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that takes `chunk` bytes per call and then, every other call, is not ready:
    /// a socket whose buffer fills.
    struct Slow {
        got: Vec<u8>,
        chunk: usize,
        ready: bool,
    }

    impl tokio::io::AsyncWrite for Slow {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            self.ready = !self.ready;
            if !self.ready {
                cx.waker().wake_by_ref();
                return std::task::Poll::Pending;
            }
            let n = buf.len().min(self.chunk);
            self.got.extend_from_slice(&buf[..n]);
            std::task::Poll::Ready(Ok(n))
        }

        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }

        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn a_flush_cancelled_half_way_never_sends_a_byte_twice() {
        let message: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        let mut out = BytesMut::from(&message[..]);
        let mut io = Slow { got: Vec::new(), chunk: 7, ready: false };
        // Cancel the flush over and over, after one poll each time.
        for _ in 0..10_000 {
            if out.is_empty() {
                break;
            }
            let flush = write_queued(&mut io, &mut out);
            let _ = tokio::time::timeout(std::time::Duration::ZERO, flush).await;
        }
        write_queued(&mut io, &mut out).await.unwrap();
        assert_eq!(io.got, message, "every byte exactly once, in order");
    }

    #[test]
    fn quotes_identifiers_and_literals() {
        assert_eq!(quote_ident("slot"), "\"slot\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
    }
}
