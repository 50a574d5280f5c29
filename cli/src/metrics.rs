//! `--metrics-addr`: Prometheus metrics and a health check for `wal2arrow stream` run as a
//! service.
//!
//! The stream is instrumented with the [`metrics`] facade (`wal2arrow_sinks::run` records
//! rows and bytes per table, transactions, lag in bytes and seconds, the acknowledged LSN,
//! reconnections, errors, flush latency and streamed transactions); this module installs
//! `metrics-exporter-prometheus`'s recorder, which renders them in Prometheus' text format,
//! and serves two paths over plain HTTP/1.1: `GET /metrics` and `GET /health`. Labels name
//! tables only: no host, user, database or password ever appears.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// What `/health` reports, updated by the progress callback.
#[derive(Clone, Debug, Default)]
pub(crate) struct Health {
    /// The acknowledged position.
    pub(crate) acknowledged: String,
    /// WAL the server holds beyond it.
    pub(crate) lag_bytes: u64,
    /// Transactions written.
    pub(crate) transactions: u64,
}

/// The address `--metrics-addr` names: `PORT` (on 127.0.0.1) or `HOST:PORT`.
pub(crate) fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    if let Ok(port) = s.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    s.parse().map_err(|_| {
        format!(
            "--metrics-addr {s:?}: expected PORT (on 127.0.0.1) or HOST:PORT, e.g. 127.0.0.1:9187"
        )
    })
}

/// Installs the recorder and serves `/metrics` and `/health` on `addr`.
///
/// # Errors
///
/// When the address cannot be bound or a recorder is installed already.
pub(crate) async fn serve(addr: SocketAddr, health: Arc<Mutex<Health>>) -> Result<(), String> {
    let recorder = PrometheusBuilder::new()
        .set_buckets(&[0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0])
        .map_err(|e| format!("metrics: {e}"))?
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).map_err(|e| format!("metrics: {e}"))?;
    describe();
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| format!("--metrics-addr {addr}: cannot listen: {e}"))?;
    tracing::info!(%addr, "metrics on http://{addr}/metrics, health on http://{addr}/health");
    let upkeep = handle.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            upkeep.run_upkeep();
        }
    });
    tokio::spawn(async move {
        loop {
            let Ok((socket, _)) = listener.accept().await else { continue };
            let (handle, health) = (handle.clone(), Arc::clone(&health));
            tokio::spawn(async move {
                let _ =
                    tokio::time::timeout(Duration::from_secs(10), answer(socket, &handle, &health))
                        .await;
            });
        }
    });
    Ok(())
}

/// Answers one request and closes the connection.
async fn answer(
    mut socket: tokio::net::TcpStream,
    handle: &PrometheusHandle,
    health: &Mutex<Health>,
) -> std::io::Result<()> {
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 8192 {
        let n = socket.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        request.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&request);
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    let (status, kind, body) = match (method, path) {
        ("GET", "/metrics") => {
            ("200 OK", "text/plain; version=0.0.4; charset=utf-8", handle.render())
        }
        ("GET", "/health") => {
            let h = health.lock().map(|h| h.clone()).unwrap_or_default();
            let body = format!(
                "{{\"status\":\"streaming\",\"acknowledged_lsn\":\"{}\",\"lag_bytes\":{},\
                 \"transactions\":{}}}\n",
                h.acknowledged, h.lag_bytes, h.transactions
            );
            ("200 OK", "application/json", body)
        }
        ("GET", _) => ("404 Not Found", "text/plain", "try /metrics or /health\n".to_owned()),
        _ => ("405 Method Not Allowed", "text/plain", "GET only\n".to_owned()),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    socket.write_all(head.as_bytes()).await?;
    socket.write_all(body.as_bytes()).await?;
    socket.shutdown().await
}

/// The metrics' help texts.
fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!("wal2arrow_rows_total", "Rows written, by table.");
    describe_counter!(
        "wal2arrow_bytes_total",
        Unit::Bytes,
        "Bytes the server sent for the rows written, by table."
    );
    describe_counter!("wal2arrow_transactions_total", "Transactions written.");
    describe_gauge!(
        "wal2arrow_lag_bytes",
        Unit::Bytes,
        "WAL the server holds for the slot beyond the acknowledged position."
    );
    describe_gauge!(
        "wal2arrow_lag_seconds",
        Unit::Seconds,
        "Age of the last transaction written while the slot lags (0 when caught up)."
    );
    describe_gauge!("wal2arrow_acknowledged_lsn", "The position acknowledged to the server.");
    describe_counter!("wal2arrow_reconnects_total", "Reconnections after failures.");
    describe_counter!("wal2arrow_errors_total", "Errors that ended a run, by kind.");
    describe_histogram!(
        "wal2arrow_sink_flush_seconds",
        Unit::Seconds,
        "Time to make the sink's output durable (delivery latency before acknowledgement)."
    );
    describe_counter!(
        "wal2arrow_streamed_transactions_total",
        "Transactions the server streamed before their commit."
    );
    describe_counter!(
        "wal2arrow_streamed_spilled_bytes_total",
        Unit::Bytes,
        "Bytes of streamed transactions the consumer kept in spill files."
    );
    describe_gauge!("wal2arrow_snapshot_rows", "Rows of the initial snapshot delivered.");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_port_listens_on_loopback() {
        assert_eq!(parse_addr("9187").unwrap(), "127.0.0.1:9187".parse().unwrap());
        assert_eq!(parse_addr("0.0.0.0:9187").unwrap(), "0.0.0.0:9187".parse().unwrap());
        assert!(parse_addr("localhost").unwrap_err().contains("HOST:PORT"));
    }
}
