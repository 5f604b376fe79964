//! Query connections to Postgres whose answers have a deadline.
//!
//! TCP keepalives and `TCP_USER_TIMEOUT` find a peer that stopped
//! acknowledging. They cannot find a link that keeps acknowledging and
//! never answers (a stalled middlebox or proxy, a server whose network
//! stack lives on while the server does not): a statement sent into it
//! waits forever. [`connect`] wraps the socket so that once something was
//! sent, the server must start answering within `response_timeout`; when
//! it does not, the connection fails with an I/O error (no SQLSTATE:
//! transient), and the caller connects again.
//!
//! The deadline runs from the first byte sent after the server last
//! answered: a statement that takes longer than it (a long lock wait
//! included) is cut too, so it is set well above the longest statement the
//! caller runs. A server that stops in the middle of an answer is left to
//! the keepalives. Only a single TCP host is wrapped; a Unix socket or a
//! list of hosts connects as `tokio_postgres` does, without the deadline.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use tokio_postgres::config::Host;
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::Client;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::error::RuntimeError;

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
    let stream = ResponseDeadline::new(stream, response_timeout);
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

/// A stream whose reads fail once the peer has been silent for `timeout`
/// since something was written to it.
pub struct ResponseDeadline<S> {
    inner: S,
    timeout: Duration,
    /// When the first byte went out that has not been answered yet.
    waiting_since: Option<Instant>,
    timer: Option<Pin<Box<Sleep>>>,
}

impl<S> ResponseDeadline<S> {
    pub fn new(inner: S, timeout: Duration) -> Self {
        ResponseDeadline {
            inner,
            timeout,
            waiting_since: None,
            timer: None,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ResponseDeadline<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    self.waiting_since = None;
                    self.timer = None;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                let Some(since) = self.waiting_since else {
                    return Poll::Pending;
                };
                let deadline = since + self.timeout;
                let timer = self
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                // Reads that wait keep the timer's wake-up registered.
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "the server sent no answer within {}s",
                            self.timeout.as_secs_f64()
                        ),
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
            ready => ready,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ResponseDeadline<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(written, Poll::Ready(Ok(n)) if n > 0) && self.waiting_since.is_none() {
            let deadline = Instant::now() + self.timeout;
            self.waiting_since = Some(Instant::now());
            // Polled once here so that the task driving the connection is
            // woken when it fires: a read already waiting would otherwise
            // sleep until the socket turns readable, which it never does.
            let mut timer = Box::pin(tokio::time::sleep_until(deadline));
            let _ = timer.as_mut().poll(cx);
            self.timer = Some(timer);
        }
        written
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn a_peer_silent_after_a_request_fails_the_read_once_the_deadline_passes() {
        let (client, mut server) = tokio::io::duplex(64);
        let mut link = ResponseDeadline::new(client, Duration::from_secs(30));
        link.write_all(b"request").await.expect("written");
        let mut request = [0u8; 7];
        server.read_exact(&mut request).await.expect("received");
        let mut answer = [0u8; 8];
        let error = link.read(&mut answer).await.expect_err("no answer came");
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
    }

    /// As `tokio_postgres`'s connection task does: a read is already
    /// waiting when the request is written, and nothing but a wake-up polls
    /// the task again.
    #[tokio::test(start_paused = true)]
    async fn a_read_waiting_before_the_request_is_woken_when_the_deadline_passes() {
        let (client, _server) = tokio::io::duplex(64);
        let mut link = ResponseDeadline::new(client, Duration::from_secs(30));
        let mut written = false;
        let mut space = [0u8; 8];
        let driven = std::future::poll_fn(|cx| {
            let mut buf = ReadBuf::new(&mut space);
            if let Poll::Ready(outcome) = Pin::new(&mut link).poll_read(cx, &mut buf) {
                return Poll::Ready(outcome);
            }
            if !written {
                written = matches!(
                    Pin::new(&mut link).poll_write(cx, b"request"),
                    Poll::Ready(Ok(7))
                );
            }
            Poll::Pending
        });
        let outcome = tokio::time::timeout(Duration::from_secs(3600), driven)
            .await
            .expect("woken by the deadline, not left waiting");
        assert_eq!(
            outcome.expect_err("no answer came").kind(),
            io::ErrorKind::TimedOut
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_link_and_a_link_that_answers_never_time_out() {
        let (client, mut server) = tokio::io::duplex(64);
        let mut link = ResponseDeadline::new(client, Duration::from_secs(30));
        // Idle: nothing sent, nothing due, however long it stays quiet.
        let idle = tokio::time::timeout(Duration::from_secs(3600), link.read(&mut [0u8; 1])).await;
        assert!(idle.is_err(), "an idle read waits");
        link.write_all(b"ping").await.expect("written");
        tokio::time::sleep(Duration::from_secs(20)).await;
        server.write_all(b"pong").await.expect("answered");
        let mut answer = [0u8; 4];
        link.read_exact(&mut answer)
            .await
            .expect("the answer is read");
        assert_eq!(&answer, b"pong");
        // Answered: quiet again, and nothing due.
        let after = tokio::time::timeout(Duration::from_secs(3600), link.read(&mut [0u8; 1])).await;
        assert!(after.is_err(), "a read after the answer waits");
    }
}
