//! One writer per pair of databases: a session-level advisory lock.
//!
//! Two apply instances writing the same pair of databases would interleave
//! their target transactions and race on the stored position. Deployments run
//! one replica (Kubernetes `replicas: 1`, `strategy: Recreate`), and apply
//! enforces it: before it writes, it takes
//! `pg_try_advisory_lock(`[`LOCK_KEY`]`)` on **each** target database (the
//! two-integer form, so it can never collide with the bigint-keyed
//! transaction locks apply takes per row) on a connection of its own, and
//! holds both for its lifetime. Advisory locks belong to one database, so
//! bridges for other database pairs on the same servers do not contend; when
//! both sides are schemas of one database, one lock covers both.
//!
//! An instance that finds a lock taken releases whatever it holds (so two
//! instances can never each hold one database), logs once, and tries again
//! every [`RETRY_EVERY`] without writing anything. When the holder dies its
//! connections close, Postgres releases the locks, and the waiting instance
//! takes over. If a lock connection is lost while running, the directions
//! are stopped and the lock is taken again before writing resumes.
//!
//! A lock connection can be lost on this side only: a link that stopped
//! forwarding leaves the server's end of it open, and the server keeps the
//! lock for a session nobody uses. Each lease records its lock sessions
//! (server process id and start time, which together name one session for
//! good); taking the lock again, an instance that finds one of its own lost
//! sessions holding it ends that session (`pg_terminate_backend`, allowed
//! for the role's own sessions) instead of waiting for the server to notice.

use std::sync::Arc;
use std::time::Duration;

use runtime::supervise::FailureLog;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::Config;
use crate::error::{ApplyError, Result};
use crate::mapping::Side;
use crate::sessions::{self, ServerSession};

/// The advisory lock key: `(0x53594E43 ("SYNC"), 1)`.
pub const LOCK_KEY: (i32, i32) = (0x5359_4E43, 1);

/// How often a waiting instance tries the lock again.
pub const RETRY_EVERY: Duration = Duration::from_secs(2);

/// How often a held lease checks that its connections are alive.
const CHECK_EVERY: Duration = Duration::from_secs(5);

/// The locks on both databases, held while this value lives.
pub struct Lease {
    clients: Vec<(Side, Arc<Client>)>,
    sessions: Vec<ServerSession>,
    lost: CancellationToken,
    watcher: tokio::task::JoinHandle<()>,
    fence: Fence,
}

/// The fencing tokens of one lease: the generation this instance took in
/// each database's `syncbridge.apply_lease`, checked by every commit that
/// stores a position (see [`crate::checkpoint::STORE`]). An instance that
/// lost its lock without noticing (its lock connection cut while its other
/// connections live on) cannot commit once another instance took over:
/// taking the lease raises the generation.
#[derive(Debug, Clone)]
pub struct Fence {
    /// The generation in the legacy and in the platform database.
    generations: [i64; 2],
    /// Cancelled when a commit was fenced off: the lease is gone.
    lost: CancellationToken,
}

impl Fence {
    /// The generation taken in `side`'s database.
    pub fn generation(&self, side: Side) -> i64 {
        self.generations[side_index(side)]
    }

    /// A commit was fenced off: stop writing, and take the lease again.
    pub fn fenced(&self) {
        self.lost.cancel();
    }
}

fn side_index(side: Side) -> usize {
    match side {
        Side::Legacy => 0,
        Side::Platform => 1,
    }
}

impl Lease {
    /// Cancelled when a lock connection is lost (the lock with it), or a
    /// commit was fenced off.
    pub fn lost(&self) -> CancellationToken {
        self.lost.clone()
    }

    /// The fencing tokens the directions commit with.
    pub fn fence(&self) -> Fence {
        self.fence.clone()
    }

    /// The databases whose lock this lease holds.
    pub fn sides(&self) -> Vec<Side> {
        self.clients.iter().map(|(side, _)| *side).collect()
    }

    /// The server sessions holding this lease's locks.
    pub fn sessions(&self) -> Vec<ServerSession> {
        self.sessions.clone()
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        // Dropping the clients closes the connections: Postgres releases the
        // session locks.
        self.watcher.abort();
    }
}

/// Takes the lock on both databases, waiting while another instance holds
/// it. `forsaken` are sessions this instance opened whose use is over (the
/// lock sessions of a lease it lost, the directions' sessions of runs under
/// it): each attempt first ends those the server still runs, since a server
/// end that outlived apply's may hold the lock, or rows the generation raise
/// waits for. The sessions of an attempt that did not become the lease join
/// them. `None` when `shutdown` came first.
pub async fn acquire(
    config: &Config,
    shutdown: &CancellationToken,
    forsaken: &[ServerSession],
) -> Result<Option<Lease>> {
    let mut forsaken = forsaken.to_vec();
    let mut waiting_logged = false;
    let mut failures = FailureLog::default();
    loop {
        // Taking the lock, then raising the generations: a database that
        // refuses writes for a while (read-only during a failover) fails the
        // second step, which is retried like the first (the locks go with
        // the clients). An attempt cut off by its response deadline may
        // leave its server end holding the lock: ended by the next.
        let mut opened = Vec::new();
        let attempt = match try_acquire(config, &mut forsaken, &mut opened).await {
            Ok(Attempt::Held(clients)) => hold(clients).await.map(Some),
            Ok(Attempt::Taken(side)) => {
                if !waiting_logged {
                    info!(
                        database = side.as_str(),
                        key = ?LOCK_KEY,
                        "another apply instance holds the single-writer lock; waiting without writing"
                    );
                    waiting_logged = true;
                }
                Ok(None)
            }
            Err(error) => Err(error),
        };
        if !matches!(attempt, Ok(Some(_))) {
            forsaken.extend(opened);
        }
        match attempt {
            Ok(Some(lease)) => return Ok(Some(lease)),
            Ok(None) => {}
            Err(error) if error.is_retryable() => {
                let description = runtime::error_chain(&error);
                if failures.report(description.clone()) {
                    warn!(kind = error.kind(), error = %description, "cannot take the single-writer lock yet; retrying");
                }
            }
            Err(error) => return Err(error),
        }
        tokio::select! {
            () = tokio::time::sleep(RETRY_EVERY) => {}
            () = shutdown.cancelled() => return Ok(None),
        }
    }
}

/// Makes the locks of `clients` a lease: raises the generations and
/// starts watching the lock connections.
async fn hold(clients: Vec<(Side, Client)>) -> Result<Lease> {
    let generations = take_generations(&clients).await?;
    info!(
        key = ?LOCK_KEY,
        generation = ?generations,
        "took the single-writer lock on both databases"
    );
    watch(clients, generations).await
}

/// Takes the lock on both databases if no other instance holds it, for a
/// one-off command that must not run beside a running apply (see
/// [`crate::checkpoint::reset`]). `None` when another instance holds it.
pub async fn try_take(config: &Config) -> Result<Option<Lease>> {
    Ok(
        match try_acquire(config, &mut Vec::new(), &mut Vec::new()).await? {
            Attempt::Held(clients) => {
                let generations = take_generations(&clients).await?;
                Some(watch(clients, generations).await?)
            }
            Attempt::Taken(_) => None,
        },
    )
}

/// Raises the lease generation in each locked database and returns the new
/// ones (legacy, platform): the fencing tokens of this lease. A database
/// that holds both sides gives both its generation. Waits for a deposed
/// instance's open commit, which holds the generation row.
async fn take_generations(clients: &[(Side, Client)]) -> Result<[i64; 2]> {
    let mut generations = [0i64; 2];
    for (side, client) in clients {
        crate::checkpoint::install(client, side.as_str()).await?;
        let generation: i64 = client
            .query_one(
                "INSERT INTO syncbridge.apply_lease (id, generation) VALUES (1, 1) \
                 ON CONFLICT (id) DO UPDATE SET generation = syncbridge.apply_lease.generation + 1 \
                 RETURNING generation",
                &[],
            )
            .await
            .map_err(|e| ApplyError::postgres(side.as_str(), "raise the lease generation", e))?
            .get(0);
        generations[side_index(*side)] = generation;
    }
    if let [(only, _)] = clients {
        generations[side_index(only.other())] = generations[side_index(*only)];
    }
    Ok(generations)
}

enum Attempt {
    Held(Vec<(Side, Client)>),
    Taken(Side),
}

/// One attempt at the lock on both databases. On each, first ends those of
/// `forsaken` the server still runs and forgets those on that database (they
/// are ended or going); records in `opened` every session it opens.
async fn try_acquire(
    config: &Config,
    forsaken: &mut Vec<ServerSession>,
    opened: &mut Vec<ServerSession>,
) -> Result<Attempt> {
    let mut clients = Vec::new();
    // (database, server start time) of each database locked so far: when
    // both sides are schemas of one database, its one lock covers both.
    let mut locked: Vec<(String, String)> = Vec::new();
    for side in [Side::Legacy, Side::Platform] {
        let client = config.connect(side).await?;
        opened.push(ServerSession::of(side, &client).await?);
        end_forsaken(&client, side, forsaken).await?;
        let failed = |e| ApplyError::postgres(side.as_str(), "take the single-writer lock", e);
        let row = client
            .query_one(
                "SELECT current_database()::text, pg_catalog.pg_postmaster_start_time()::text",
                &[],
            )
            .await
            .map_err(failed)?;
        let database: (String, String) = (row.get(0), row.get(1));
        if locked.contains(&database) {
            continue;
        }
        let taken: bool = client
            .query_one(
                "SELECT pg_catalog.pg_try_advisory_lock($1, $2)",
                &[&LOCK_KEY.0, &LOCK_KEY.1],
            )
            .await
            .map_err(failed)?
            .get(0);
        if !taken {
            // Dropping `clients` releases the locks already taken.
            return Ok(Attempt::Taken(side));
        }
        locked.push(database);
        clients.push((side, client));
    }
    Ok(Attempt::Held(clients))
}

/// Ends those of `forsaken` on `side` that the server still runs (one may
/// hold the lock, or rows the generation raise waits for: its link was lost
/// on apply's side only), and forgets every one on `side`. The lock is free
/// once such a session has ended (a next attempt).
async fn end_forsaken(
    client: &Client,
    side: Side,
    forsaken: &mut Vec<ServerSession>,
) -> Result<()> {
    for (pid, state) in sessions::end_running(side, client, forsaken).await? {
        warn!(
            database = side.as_str(),
            pid,
            state,
            "ended a session of this instance's that the server kept after apply lost its link"
        );
    }
    forsaken.retain(|session| session.side != side);
    Ok(())
}

/// Checks the lock connections every few seconds; cancels `lost` when one
/// fails.
async fn watch(clients: Vec<(Side, Client)>, generations: [i64; 2]) -> Result<Lease> {
    let mut sessions = Vec::with_capacity(clients.len());
    for (side, client) in &clients {
        sessions.push(ServerSession::of(*side, client).await?);
    }
    let clients: Vec<(Side, Arc<Client>)> = clients
        .into_iter()
        .map(|(side, client)| (side, Arc::new(client)))
        .collect();
    let lost = CancellationToken::new();
    let token = lost.clone();
    let probes = clients.clone();
    let watcher = tokio::spawn(async move {
        let mut every = tokio::time::interval(CHECK_EVERY);
        every.tick().await;
        loop {
            every.tick().await;
            for (side, client) in &probes {
                let alive = !client.is_closed()
                    && matches!(
                        tokio::time::timeout(CHECK_EVERY * 2, client.simple_query("SELECT 1"))
                            .await,
                        Ok(Ok(_))
                    );
                if !alive {
                    warn!(
                        database = side.as_str(),
                        "lost the single-writer lock connection; stopping writes until the lock is taken again"
                    );
                    token.cancel();
                    return;
                }
            }
        }
    });
    let fence = Fence {
        generations,
        lost: lost.clone(),
    };
    Ok(Lease {
        clients,
        sessions,
        lost,
        watcher,
        fence,
    })
}
