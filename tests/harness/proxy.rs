//! A TCP proxy between a service and a server, for fault injection
//! ([`Proxy`]): it forwards until told to fail the link, the way networks
//! fail.
//!
//! - [`Proxy::blackhole`]: every open connection stops forwarding for good,
//!   both ways, its sockets kept open: a half-open link (a peer gone without
//!   a word, a firewall dropping a flow). Neither end hears anything; the
//!   kernel still acknowledges what is sent, so only a deadline of the
//!   service's own ends the wait. New connections are forwarded again.
//! - [`Proxy::cut`]: every open connection is reset at once (both ends see
//!   the connection reset); new connections are forwarded.
//! - [`Proxy::slow`]: every chunk forwarded either way, on open connections
//!   and new ones, arrives the given delay after it was sent (a distant or
//!   congested link; messages still pipeline), until slowed by zero again.
//! - [`Proxy::partition`]: the service is cut off from the server, as by a
//!   network partition the server noticed first: every open connection
//!   loses its server end (the server ends the session and releases its
//!   locks) while the service's end stays open and silent, and new
//!   connections are held unanswered, until [`Proxy::heal`].

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// `host:port` of a `postgres://` URL: what a proxy in front of its server
/// forwards to.
pub fn server_of(url: &str) -> String {
    url.split_once('@')
        .and_then(|(_, rest)| rest.split_once('/'))
        .map(|(host, _)| host.to_owned())
        .unwrap_or_default()
}

/// What happens to the connections open now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    Blackhole,
    Cut,
    Partition,
}

/// A proxy listening on a port of the loopback, forwarding to `upstream`.
pub struct Proxy {
    port: u16,
    /// Raised by each fault: connections accepted before it suffer it.
    faults: watch::Sender<(u64, Option<Fault>)>,
    accepted: Arc<AtomicU64>,
    /// While set, new connections are held unanswered.
    partitioned: Arc<std::sync::atomic::AtomicBool>,
    /// Where new connections are forwarded.
    upstream: Arc<std::sync::Mutex<SocketAddr>>,
    /// Milliseconds each forwarded chunk waits.
    delay_ms: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Starts a proxy to `upstream` (`host:port`).
    pub async fn start(upstream: &str) -> Result<Proxy> {
        let upstream = Arc::new(std::sync::Mutex::new(resolve(upstream).await?));
        let target = Arc::clone(&upstream);
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let (faults, watcher) = watch::channel((0u64, None));
        let accepted = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&accepted);
        let partitioned = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let cut_off = Arc::clone(&partitioned);
        let delay_ms = Arc::new(AtomicU64::new(0));
        let delay = Arc::clone(&delay_ms);
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::Relaxed);
                if cut_off.load(Ordering::Relaxed) {
                    // Held, never answered: until the proxy is dropped.
                    connections.spawn(async move {
                        let _held = client;
                        std::future::pending::<()>().await;
                    });
                    continue;
                }
                let epoch = watcher.borrow().0;
                let watcher = watcher.clone();
                let delay = Arc::clone(&delay);
                let upstream = *target
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                connections.spawn(async move {
                    if let Ok(server) = TcpStream::connect(upstream).await {
                        // Both ends as the service and the server set theirs:
                        // Nagle's delay would add 40 ms to each round trip.
                        let _ = client.set_nodelay(true);
                        let _ = server.set_nodelay(true);
                        Box::pin(forward(client, server, epoch, watcher, delay)).await;
                    }
                });
            }
        });
        Ok(Proxy {
            port,
            faults,
            accepted,
            partitioned,
            upstream,
            delay_ms,
            task,
        })
    }

    /// The port services connect to instead of the server's.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `url` (a `postgres://` URL) with its port replaced by the proxy's.
    pub fn url_through(&self, url: &str) -> String {
        let (before, after) = url.split_once("@").unwrap_or(("", url));
        let (host, rest) = after.split_once('/').unwrap_or((after, ""));
        let host = host.rsplit_once(':').map_or(host, |(host, _)| host);
        format!("{before}@{host}:{}/{rest}", self.port)
    }

    /// How many connections the proxy has accepted so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Every open connection stops forwarding for good, its sockets kept
    /// open; new ones are forwarded.
    pub fn blackhole(&self) {
        self.fault(Fault::Blackhole);
    }

    /// Every open connection is reset; new ones are forwarded.
    pub fn cut(&self) {
        self.fault(Fault::Cut);
    }

    /// Every chunk read from now on, either way, is forwarded `delay` after
    /// it was read; [`Duration::ZERO`] restores the link's own speed.
    pub fn slow(&self, delay: Duration) {
        self.delay_ms.store(
            u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// The service is cut off from the server until [`Proxy::heal`]: open
    /// connections lose their server end and stay silent on the service's,
    /// new ones are held unanswered.
    pub fn partition(&self) {
        self.partitioned.store(true, Ordering::Relaxed);
        self.fault(Fault::Partition);
    }

    /// Forwards new connections to `upstream` (`host:port`) from now on
    /// and closes those open: a virtual address moved to another server,
    /// as a failover does.
    pub async fn redirect(&self, upstream: &str) -> Result<()> {
        let to = resolve(upstream).await?;
        *self
            .upstream
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = to;
        self.cut();
        Ok(())
    }

    /// Ends a [`Proxy::partition`]: new connections are forwarded again
    /// (those open through it stay silent).
    pub fn heal(&self) {
        self.partitioned.store(false, Ordering::Relaxed);
    }

    fn fault(&self, fault: Fault) {
        self.faults.send_modify(|(epoch, current)| {
            *epoch += 1;
            *current = Some(fault);
        });
    }
}

async fn resolve(upstream: &str) -> Result<SocketAddr> {
    tokio::net::lookup_host(upstream)
        .await?
        .next()
        .with_context(|| format!("resolve {upstream}"))
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies both ways until either end closes or a fault raised after
/// `epoch` says otherwise. Each chunk is written `delay_ms` after it was
/// read, reads going on meanwhile: a long link's latency, which delays
/// every message alike and does not stop pipelining.
async fn forward(
    mut client: TcpStream,
    mut server: TcpStream,
    epoch: u64,
    mut faults: watch::Receiver<(u64, Option<Fault>)>,
    delay_ms: Arc<AtomicU64>,
) {
    let mut up = [0u8; 16 * 1024];
    let mut down = [0u8; 16 * 1024];
    // Chunks read and not yet due, each way, with the time they are due.
    let mut to_server: VecDeque<(Instant, Vec<u8>)> = VecDeque::new();
    let mut to_client: VecDeque<(Instant, Vec<u8>)> = VecDeque::new();
    let due = |queue: &VecDeque<(Instant, Vec<u8>)>| queue.front().map(|(at, _)| *at);
    loop {
        let server_due = due(&to_server);
        let client_due = due(&to_client);
        tokio::select! {
            changed = faults.changed() => {
                if changed.is_err() {
                    return;
                }
                let (now, fault) = *faults.borrow();
                if now > epoch {
                    match fault {
                        Some(Fault::Cut) | None => {
                            // Closed with no lingering: both ends are reset.
                            let _ = client.set_zero_linger();
                            let _ = server.set_zero_linger();
                            return;
                        }
                        Some(Fault::Partition) => {
                            // The server hears its connection close; the
                            // service hears nothing, for good.
                            drop(server);
                            let _held = client;
                            std::future::pending::<()>().await;
                            return;
                        }
                        Some(Fault::Blackhole) => {
                            // Keep both sockets open, never read or write
                            // again: until the proxy is dropped.
                            let _held = (client, server);
                            std::future::pending::<()>().await;
                            return;
                        }
                    }
                }
            }
            read = client.read(&mut up) => match read {
                Ok(0) | Err(_) => {
                    drain(&mut server, &mut to_server).await;
                    return;
                }
                Ok(n) => to_server.push_back((due_after(&delay_ms), up[..n].to_vec())),
            },
            read = server.read(&mut down) => match read {
                Ok(0) | Err(_) => {
                    drain(&mut client, &mut to_client).await;
                    return;
                }
                Ok(n) => to_client.push_back((due_after(&delay_ms), down[..n].to_vec())),
            },
            () = tokio::time::sleep_until(server_due.unwrap_or_else(Instant::now)), if server_due.is_some() => {
                if let Some((_, chunk)) = to_server.pop_front() {
                    if server.write_all(&chunk).await.is_err() { return }
                }
            },
            () = tokio::time::sleep_until(client_due.unwrap_or_else(Instant::now)), if client_due.is_some() => {
                if let Some((_, chunk)) = to_client.pop_front() {
                    if client.write_all(&chunk).await.is_err() { return }
                }
            },
        }
    }
}

/// When a chunk read now is due: after the proxy's delay.
fn due_after(delay_ms: &AtomicU64) -> Instant {
    Instant::now() + Duration::from_millis(delay_ms.load(Ordering::Relaxed))
}

/// Writes what is queued for `to` once due: one end closed, what it sent
/// before still reaches the other.
async fn drain(to: &mut TcpStream, queue: &mut VecDeque<(Instant, Vec<u8>)>) {
    while let Some((at, chunk)) = queue.pop_front() {
        tokio::time::sleep_until(at).await;
        if to.write_all(&chunk).await.is_err() {
            return;
        }
    }
}
