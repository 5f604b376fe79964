//! Query connections to Postgres whose answers have a deadline.
//!
//! TCP keepalives and `TCP_USER_TIMEOUT` find a peer that stopped
//! acknowledging. They cannot find a link that keeps acknowledging and
//! never answers (a stalled middlebox or proxy, a server whose network
//! stack lives on while the server does not): a statement sent into it
//! waits forever. [`connect`] reads the protocol as it passes
//! ([`conversation`]): while the server owes an answer (a query or sync
//! not yet followed by its `ReadyForQuery`, or a message cut in the
//! middle), it must send something at least every `response_timeout`;
//! when it does not, the connection fails with an I/O error (no SQLSTATE:
//! transient), and the caller connects again ([`deadline`]).
//!
//! A statement that runs longer than the deadline without sending anything
//! (a long lock wait included) is cut too, so it is set well above the
//! longest statement the caller runs. Only a single TCP host is wrapped; a
//! Unix socket or a list of hosts connects as `tokio_postgres` does,
//! without the deadline.

mod conversation;
mod deadline;

use std::future::Future;
use std::io;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::net::TcpStream;
use tokio_postgres::config::Host;
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::Client;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::error::RuntimeError;
use deadline::DeadlineTls;
pub use deadline::ResponseDeadline;

/// Why a connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The server refused or failed the handshake (or TLS did).
    #[error(transparent)]
    Postgres(#[from] tokio_postgres::Error),
    /// The TCP connection could not be opened in time
    /// ([`RuntimeError::Unreachable`]).
    #[error(transparent)]
    Unreachable(RuntimeError),
}

/// The connection's work, to be driven in the background; it ends when the
/// connection closes.
pub type Driver = BoxFuture<'static, Result<(), tokio_postgres::Error>>;

/// Connects as `pg` says, TLS by `tls`, the server's answers due within
/// `response_timeout` (zero: no deadline).
pub async fn connect(
    pg: &tokio_postgres::Config,
    tls: MakeRustlsConnect,
    response_timeout: Duration,
) -> Result<(Client, Driver), LinkError> {
    let single_tcp_host = match pg.get_hosts() {
        [Host::Tcp(host)] => Some(host.clone()),
        _ => None,
    };
    let Some(host) = single_tcp_host.filter(|_| !response_timeout.is_zero()) else {
        let (client, connection) = pg.connect(tls).await?;
        return Ok((client, Box::pin(connection)));
    };
    let port = pg.get_ports().first().copied().unwrap_or(5432);
    let dial = match pg.get_hostaddrs().first() {
        Some(ip) => ip.to_string(),
        None => host.clone(),
    };
    let address = format!("{dial}:{port}");
    let unreachable = |source: io::Error| {
        LinkError::Unreachable(RuntimeError::Unreachable {
            address: address.clone(),
            source,
        })
    };
    let timed_out = || unreachable(io::Error::new(io::ErrorKind::TimedOut, "connect timed out"));
    let limit = pg.get_connect_timeout().copied();
    let stream = within(limit, TcpStream::connect((dial.as_str(), port)))
        .await
        .ok_or_else(timed_out)?
        .map_err(unreachable)?;
    tune(&stream, pg).map_err(unreachable)?;
    let mut tls = tls;
    let tls = <MakeRustlsConnect as MakeTlsConnect<ResponseDeadline<TcpStream>>>::make_tls_connect(
        &mut tls, &host,
    )
    .map_err(|source| unreachable(io::Error::other(source)))?;
    // Watched below TLS until the encryption starts, above it after.
    let handover = Arc::new(AtomicBool::new(false));
    let tls = DeadlineTls {
        inner: tls,
        timeout: response_timeout,
        handover: Arc::clone(&handover),
    };
    let stream = ResponseDeadline::until_encrypted(stream, response_timeout, handover);
    let (client, connection) = within(limit, pg.connect_raw(stream, tls))
        .await
        .ok_or_else(timed_out)??;
    Ok((client, Box::pin(connection)))
}

/// `future`, given up after `limit` when there is one.
async fn within<T>(limit: Option<Duration>, future: impl Future<Output = T>) -> Option<T> {
    match limit {
        Some(limit) => tokio::time::timeout(limit, future).await.ok(),
        None => Some(future.await),
    }
}

/// The socket options `tokio_postgres` sets on its own sockets.
fn tune(stream: &TcpStream, pg: &tokio_postgres::Config) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let socket = socket2::SockRef::from(stream);
    if pg.get_keepalives() {
        let mut keepalive = socket2::TcpKeepalive::new().with_time(pg.get_keepalives_idle());
        if let Some(interval) = pg.get_keepalives_interval() {
            keepalive = keepalive.with_interval(interval);
        }
        if let Some(retries) = pg.get_keepalives_retries() {
            keepalive = keepalive.with_retries(retries);
        }
        socket.set_tcp_keepalive(&keepalive)?;
    }
    #[cfg(target_os = "linux")]
    if let Some(timeout) = pg.get_tcp_user_timeout() {
        socket.set_tcp_user_timeout(Some(*timeout))?;
    }
    Ok(())
}
