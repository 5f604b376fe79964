//! A connection's stream whose reads fail when the server owes an answer
//! and stays silent for too long ([`ResponseDeadline`]), and the TLS
//! connector that puts the same deadline above the encryption
//! ([`DeadlineTls`]).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};
use tokio_postgres::tls::{ChannelBinding, TlsConnect, TlsStream};

use super::conversation::Conversation;

/// A stream whose reads fail once the server, owing an answer (see
/// [`Conversation::owed`]), has sent nothing for `timeout`: since the
/// request went out, or since the last bytes of a slow answer.
///
/// The protocol is read from the bytes that pass, so a stream that carries
/// TLS is wrapped twice: below the encryption with a `handover` flag that
/// [`DeadlineTls`] raises when encryption starts (from then on that layer
/// only passes bytes), and above it by [`DeadlineTls`].
pub struct ResponseDeadline<S> {
    inner: S,
    timeout: Duration,
    conversation: Conversation,
    /// Raised once the bytes below are encrypted: no more watching here.
    handover: Option<Arc<AtomicBool>>,
    /// Armed while an answer is owed: fires `timeout` after the server last
    /// sent something (or the request went out).
    timer: Option<Pin<Box<Sleep>>>,
}

impl<S> ResponseDeadline<S> {
    /// Watches every byte of `inner`.
    pub fn new(inner: S, timeout: Duration) -> Self {
        ResponseDeadline {
            inner,
            timeout,
            conversation: Conversation::default(),
            handover: None,
            timer: None,
        }
    }

    /// Watches `inner` until `handover` is raised, then passes its bytes
    /// unwatched.
    pub fn until_encrypted(inner: S, timeout: Duration, handover: Arc<AtomicBool>) -> Self {
        ResponseDeadline {
            handover: Some(handover),
            ..ResponseDeadline::new(inner, timeout)
        }
    }

    fn handed_over(&self) -> bool {
        self.handover
            .as_ref()
            .is_some_and(|flag| flag.load(Ordering::Acquire))
    }

    /// Starts (or restarts) the silence the server is allowed, and polls the
    /// timer once so that the task is woken when it fires: a read already
    /// waiting would otherwise sleep until the socket turns readable, which
    /// it never does.
    fn restart_timer(&mut self, cx: &mut Context<'_>) {
        let deadline = Instant::now() + self.timeout;
        match &mut self.timer {
            Some(timer) => timer.as_mut().reset(deadline),
            None => self.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
        }
        if let Some(timer) = &mut self.timer {
            let _ = timer.as_mut().poll(cx);
        }
    }

    fn timed_out(&self) -> io::Error {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "the server sent nothing for {}s while an answer was due",
                self.timeout.as_secs_f64()
            ),
        )
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ResponseDeadline<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.handed_over() {
            self.timer = None;
            return Pin::new(&mut self.inner).poll_read(cx, buf);
        }
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let this = &mut *self;
                let received = &buf.filled()[before..];
                if !received.is_empty() {
                    this.conversation.received(received);
                    if this.conversation.owed() {
                        this.restart_timer(cx);
                    } else {
                        this.timer = None;
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                if !self.conversation.owed() {
                    return Poll::Pending;
                }
                let Some(timer) = &mut self.timer else {
                    return Poll::Pending;
                };
                // Reads that wait keep the timer's wake-up registered.
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(self.timed_out())),
                    Poll::Pending => Poll::Pending,
                }
            }
            failed => failed,
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
        if let Poll::Ready(Ok(n)) = written {
            if n > 0 && !self.handed_over() {
                let owed_before = self.conversation.owed();
                self.conversation.sent(&buf[..n]);
                // A request added to one still owed leaves the silence
                // running: the server is late either way.
                if !owed_before && self.conversation.owed() {
                    self.restart_timer(cx);
                }
            }
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

impl<S: TlsStream + Unpin> TlsStream for ResponseDeadline<S> {
    fn channel_binding(&self) -> ChannelBinding {
        self.inner.channel_binding()
    }
}

/// A TLS connector whose encrypted streams carry a [`ResponseDeadline`]
/// over the plain text; it raises `handover` for the one below.
pub struct DeadlineTls<T> {
    pub inner: T,
    pub timeout: Duration,
    pub handover: Arc<AtomicBool>,
}

impl<S, T> TlsConnect<S> for DeadlineTls<T>
where
    T: TlsConnect<S> + Send + 'static,
    T::Future: Send + 'static,
    S: Send + 'static,
{
    type Stream = ResponseDeadline<T::Stream>;
    type Error = T::Error;
    type Future = BoxFuture<'static, Result<Self::Stream, T::Error>>;

    fn connect(self, stream: S) -> Self::Future {
        // Before the first encrypted byte passes the layer below.
        self.handover.store(true, Ordering::Release);
        let timeout = self.timeout;
        let handshake = self.inner.connect(stream);
        Box::pin(async move { Ok(ResponseDeadline::new(handshake.await?, timeout)) })
    }
}

#[cfg(test)]
mod tests {
    use super::super::conversation::messages::*;
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    const TIMEOUT: Duration = Duration::from_secs(30);

    /// A link past its startup, and the server's end.
    async fn started() -> (ResponseDeadline<DuplexStream>, DuplexStream) {
        let (client, mut server) = tokio::io::duplex(4096);
        let mut link = ResponseDeadline::new(client, TIMEOUT);
        link.write_all(&startup()).await.expect("startup sent");
        let mut startup = vec![0u8; startup().len()];
        server.read_exact(&mut startup).await.expect("startup read");
        server.write_all(&authentication_ok()).await.expect("sent");
        server.write_all(&ready()).await.expect("sent");
        let mut answer = vec![0u8; authentication_ok().len() + ready().len()];
        link.read_exact(&mut answer).await.expect("ready read");
        (link, server)
    }

    /// A read given an hour at most: one left waiting fails the test
    /// instead of hanging it.
    async fn times_out(link: &mut ResponseDeadline<DuplexStream>) -> io::Result<usize> {
        tokio::time::timeout(Duration::from_secs(3600), link.read(&mut [0u8; 8]))
            .await
            .expect("the read ended within an hour")
    }

    /// `request` sent through the link and read whole by the server.
    async fn ask(
        link: &mut ResponseDeadline<DuplexStream>,
        server: &mut DuplexStream,
        request: &[u8],
    ) {
        link.write_all(request).await.expect("sent");
        let mut seen = vec![0u8; request.len()];
        server.read_exact(&mut seen).await.expect("request read");
        assert_eq!(seen, request);
    }

    #[tokio::test(start_paused = true)]
    async fn a_server_silent_after_a_query_fails_the_read_once_the_deadline_passes() {
        let (mut link, mut server) = started().await;
        ask(&mut link, &mut server, &query("SELECT 1")).await;
        let error = times_out(&mut link).await.expect_err("no answer came");
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
    }

    /// As `tokio_postgres`'s connection task does: a read is already
    /// waiting when the request is written, and nothing but a wake-up polls
    /// the task again.
    #[tokio::test(start_paused = true)]
    async fn a_read_waiting_before_the_request_is_woken_when_the_deadline_passes() {
        let (mut link, _server) = started().await;
        let request = query("SELECT 1");
        let mut written = false;
        let mut space = [0u8; 8];
        let driven = std::future::poll_fn(|cx| {
            let mut buf = ReadBuf::new(&mut space);
            if let Poll::Ready(outcome) = Pin::new(&mut link).poll_read(cx, &mut buf) {
                return Poll::Ready(outcome);
            }
            if !written {
                written = matches!(
                    Pin::new(&mut link).poll_write(cx, &request),
                    Poll::Ready(Ok(n)) if n == request.len()
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
    async fn a_server_that_stops_in_the_middle_of_an_answer_fails_the_read() {
        let (mut link, mut server) = started().await;
        ask(&mut link, &mut server, &query("SELECT 1")).await;
        let answer = answer(b"a value");
        server.write_all(&answer[..9]).await.expect("half sent");
        let mut half = [0u8; 9];
        link.read_exact(&mut half).await.expect("half read");
        let error = times_out(&mut link).await.expect_err("the rest never came");
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test(start_paused = true)]
    async fn a_second_pipelined_request_left_unanswered_fails_the_read() {
        let (mut link, mut server) = started().await;
        let requests = [extended("SELECT 1"), extended("SELECT 2")].concat();
        ask(&mut link, &mut server, &requests).await;
        let first = answer(b"1");
        server.write_all(&first).await.expect("first answered");
        let mut seen = vec![0u8; first.len()];
        link.read_exact(&mut seen).await.expect("first read");
        let error = times_out(&mut link)
            .await
            .expect_err("the second never came");
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_answer_that_keeps_coming_is_not_cut() {
        let (mut link, mut server) = started().await;
        ask(&mut link, &mut server, &query("SELECT 1")).await;
        let answer = answer(b"a value");
        let reader = async {
            let mut all = vec![0u8; answer.len()];
            link.read_exact(&mut all).await.map(|_| all)
        };
        let writer = async {
            // Each piece within the deadline of the one before, the whole
            // answer well past it.
            for piece in answer.chunks(4) {
                tokio::time::sleep(TIMEOUT / 2).await;
                server.write_all(piece).await.expect("piece sent");
            }
        };
        let (read, ()) = tokio::join!(reader, writer);
        assert_eq!(read.expect("the whole answer is read"), answer);
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_link_and_a_link_that_answers_never_time_out() {
        let (mut link, mut server) = started().await;
        // Idle: nothing due, however long it stays quiet.
        let idle = tokio::time::timeout(Duration::from_secs(3600), link.read(&mut [0u8; 1])).await;
        assert!(idle.is_err(), "an idle read waits");
        ask(&mut link, &mut server, &query("SELECT 1")).await;
        tokio::time::sleep(TIMEOUT * 2 / 3).await;
        let answer = answer(b"1");
        server.write_all(&answer).await.expect("answered");
        let mut seen = vec![0u8; answer.len()];
        link.read_exact(&mut seen)
            .await
            .expect("the answer is read");
        // Answered: quiet again, and nothing due; a notification while
        // idle owes nothing either.
        server.write_all(&notification()).await.expect("sent");
        let mut seen = vec![0u8; notification().len()];
        link.read_exact(&mut seen).await.expect("notification read");
        let after = tokio::time::timeout(Duration::from_secs(3600), link.read(&mut [0u8; 1])).await;
        assert!(after.is_err(), "a read after the answer waits");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_handed_over_to_encryption_only_passes_bytes() {
        let (client, mut server) = tokio::io::duplex(4096);
        let handover = Arc::new(AtomicBool::new(false));
        let mut link = ResponseDeadline::until_encrypted(client, TIMEOUT, Arc::clone(&handover));
        ask(&mut link, &mut server, &ssl_request()).await;
        server.write_all(b"S").await.expect("accepted");
        link.read_exact(&mut [0u8; 1]).await.expect("read");
        handover.store(true, Ordering::Release);
        // What follows is ciphertext: never read as messages, never due.
        link.write_all(&query("SELECT 1")).await.expect("sent");
        let quiet = tokio::time::timeout(Duration::from_secs(3600), link.read(&mut [0u8; 1])).await;
        assert!(quiet.is_err(), "no deadline below the encryption");
    }
}
