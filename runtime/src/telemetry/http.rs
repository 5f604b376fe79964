//! The telemetry endpoints, served on `telemetry.listen`:
//!
//! - `/metrics`: the Prometheus/OpenMetrics text of [`super::metrics`].
//! - `/healthz`: 200 while the process and its runtime answer.
//! - `/readyz`: 200 when [`Health`] says ready, 503 otherwise.
//! - `/status`: the [`Health`] status as JSON (error text, never secrets).
//!
//! [`fetch_status`] is the other end, for the `status` subcommands.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::health::Health;

/// Binds `address` and serves the endpoints until `shutdown`. Returns the
/// bound address (useful with port 0).
pub async fn serve(
    address: &str,
    health: Arc<Health>,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(address).await?;
    let bound = listener.local_addr()?;
    let router = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .with_state(health);
    info!(address = %bound, "telemetry endpoints listening");
    tokio::spawn(async move {
        let served = axum::serve(listener, router)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(error) = served {
            warn!(%error, "telemetry endpoints stopped");
        }
    });
    Ok(bound)
}

/// The registry as it stands, with readiness as of this request (the
/// background tick only refreshes it every second, for DogStatsD).
async fn metrics(State(health): State<Arc<Health>>) -> impl IntoResponse {
    super::metrics::ready(health.service(), health.status().ready);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        super::metrics::render(),
    )
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(health): State<Arc<Health>>) -> impl IntoResponse {
    let status = health.status();
    let code = if status.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, format!("{}\n", status.state))
}

async fn status(State(health): State<Arc<Health>>) -> impl IntoResponse {
    Json(health.status())
}

/// The address to reach a service listening on `listen` from this host:
/// a wildcard address becomes the loopback one. `None` when disabled.
pub fn local_address(listen: &str) -> Option<String> {
    let listen = listen.trim();
    if super::disabled(listen) {
        return None;
    }
    Some(
        listen
            .strip_prefix("0.0.0.0:")
            .map(|port| format!("127.0.0.1:{port}"))
            .or_else(|| {
                listen
                    .strip_prefix("[::]:")
                    .map(|port| format!("[::1]:{port}"))
            })
            .unwrap_or_else(|| listen.to_owned()),
    )
}

/// GETs `path` from the service at `address` (`host:port`) and returns the
/// status code and body. Plain HTTP/1.1, one request, bounded in time.
pub async fn get_once(address: &str, path: &str) -> Result<(u16, String), String> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(address)
            .await
            .map_err(|e| e.to_string())?;
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut response = Vec::new();
        stream
            .read_to_end(&mut response)
            .await
            .map_err(|e| e.to_string())?;
        parse_response(&response)
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .map_err(|_| "no answer within 5s".to_owned())?
}

/// Splits an HTTP/1.1 response into its status code and body (identity or
/// chunked transfer encoding).
fn parse_response(bytes: &[u8]) -> Result<(u16, String), String> {
    let text = String::from_utf8_lossy(bytes);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| "malformed HTTP response".to_owned())?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| "malformed HTTP status line".to_owned())?;
    let chunked = head.lines().any(|line| {
        let line = line.to_ascii_lowercase();
        line.starts_with("transfer-encoding:") && line.contains("chunked")
    });
    if !chunked {
        return Ok((code, body.to_owned()));
    }
    let mut rest = body;
    let mut out = String::new();
    loop {
        let (size, after) = rest
            .split_once("\r\n")
            .ok_or_else(|| "malformed chunk".to_owned())?;
        let size = usize::from_str_radix(size.trim(), 16).map_err(|e| e.to_string())?;
        if size == 0 || after.len() < size {
            break;
        }
        out.push_str(&after[..size]);
        rest = after[size..].trim_start_matches("\r\n");
    }
    Ok((code, out))
}

/// The `/status` JSON of the service at `address`, or why it could not be had.
pub async fn fetch_status(address: &str) -> Result<serde_json::Value, String> {
    let (code, body) = get_once(address, "/status").await?;
    if code != 200 {
        return Err(format!("/status answered {code}"));
    }
    serde_json::from_str(&body).map_err(|e| format!("/status is not JSON: {e}"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_wildcard_listen_address_is_reached_on_the_loopback() {
        assert_eq!(
            local_address("0.0.0.0:9090").as_deref(),
            Some("127.0.0.1:9090")
        );
        assert_eq!(local_address("[::]:9090").as_deref(), Some("[::1]:9090"));
        assert_eq!(
            local_address("10.0.0.5:9100").as_deref(),
            Some("10.0.0.5:9100")
        );
        assert_eq!(local_address("off"), None);
        assert_eq!(local_address(""), None);
    }

    #[test]
    fn responses_are_parsed_plain_and_chunked() {
        let plain = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 9\r\n\r\nstarting\n";
        assert_eq!(
            parse_response(plain).unwrap(),
            (503, "starting\n".to_owned())
        );
        let chunked =
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n3\r\n:1}\r\n0\r\n\r\n";
        assert_eq!(
            parse_response(chunked).unwrap(),
            (200, "{\"a\":1}".to_owned())
        );
    }
}
