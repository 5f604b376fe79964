//! The server sessions apply opened ([`ServerSession`]): each direction's
//! ([`OpenSessions`]), so that the next run of a direction can end those the
//! server still runs ([`OpenSessions::end_forsaken`]), and the lease's lock
//! sessions ([`crate::lease`]), ended the same way when the lease was lost.
//!
//! A link that stops forwarding (a dead peer, a firewall dropping the flow)
//! ends apply's side of a connection at its response deadline, but the
//! server hears nothing: its session lives on, and with it what the session
//! holds. A session idle in its transaction is ended by the server
//! (`idle_in_transaction_session_timeout`), but one holding a session lock
//! while idle (the pair lock on the source connection), or one whose
//! statement waits for a lock or for the client to read its answer, is
//! never ended: every later run of either direction would wait behind it,
//! for as long as the server's keepalives take to notice (hours, or never
//! while something on the path still acknowledges). Each direction records
//! the sessions it opens, and at its next run, once connected again, ends
//! those of its earlier runs that the server still runs: they belong to runs
//! that are over, so nothing uses them.

use std::sync::Mutex;

use tokio_postgres::Client;
use tracing::warn;

use crate::error::{ApplyError, Result};
use crate::mapping::Side;

/// One server session: its pid and start time, which together name it for
/// good (a pid is reused).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSession {
    /// The database the session is on.
    pub side: Side,
    pub pid: i32,
    pub started: String,
}

impl ServerSession {
    /// The session `client` (on `side`) is connected to.
    pub async fn of(side: Side, client: &Client) -> Result<ServerSession> {
        let row = client
            .query_one(
                "SELECT pid, backend_start::text FROM pg_catalog.pg_stat_activity \
                 WHERE pid = pg_catalog.pg_backend_pid()",
                &[],
            )
            .await
            .map_err(|e| ApplyError::postgres(side.as_str(), "identify the session", e))?;
        Ok(ServerSession {
            side,
            pid: row.get(0),
            started: row.get::<_, Option<String>>(1).unwrap_or_default(),
        })
    }
}

/// Ends, through `client` (on `side`), those of `sessions` on that database
/// that the server still runs; the pid and state of each one ended. A
/// session is named by its pid and start time, so a pid the server gave to
/// a newer session is left alone.
pub async fn end_running(
    side: Side,
    client: &Client,
    sessions: &[ServerSession],
) -> Result<Vec<(i32, String)>> {
    let (pids, starts): (Vec<i32>, Vec<&str>) = sessions
        .iter()
        .filter(|s| s.side == side)
        .map(|s| (s.pid, s.started.as_str()))
        .unzip();
    if pids.is_empty() {
        return Ok(Vec::new());
    }
    let ended = client
        .query(
            "SELECT a.pid, a.state, pg_catalog.pg_terminate_backend(a.pid) \
             FROM pg_catalog.pg_stat_activity a \
             JOIN unnest($1::int4[], $2::text[]) AS f(pid, started) \
               ON a.pid = f.pid AND a.backend_start::text = f.started",
            &[&pids, &starts],
        )
        .await
        .map_err(|e| ApplyError::postgres(side.as_str(), "end sessions apply lost", e))?;
    Ok(ended
        .iter()
        .map(|row| {
            (
                row.get::<_, i32>(0),
                row.get::<_, Option<String>>(1).unwrap_or_default(),
            )
        })
        .collect())
}

/// The sessions each direction opened (by the side it reads from) and has
/// not yet seen ended.
#[derive(Debug, Default)]
pub struct OpenSessions {
    by_direction: Mutex<[Vec<ServerSession>; 2]>,
}

fn index(from: Side) -> usize {
    match from {
        Side::Legacy => 0,
        Side::Platform => 1,
    }
}

impl OpenSessions {
    /// What the direction `from` opened before now: at the start of a run,
    /// the sessions of its runs that are over.
    pub fn opened_before(&self, from: Side) -> Vec<ServerSession> {
        self.lock()[index(from)].clone()
    }

    /// Every session the directions opened and have not yet seen ended:
    /// while no direction runs (the lease lost), all of them belong to runs
    /// that are over.
    pub fn all(&self) -> Vec<ServerSession> {
        self.lock().concat()
    }

    /// Records the session `client` (on `side`) is connected to as the
    /// direction `from`'s.
    pub async fn record(&self, from: Side, side: Side, client: &Client) -> Result<()> {
        let session = ServerSession::of(side, client).await?;
        self.lock()[index(from)].push(session);
        Ok(())
    }

    /// Ends, through `client` (on `side`), the sessions of `forsaken` on
    /// that database the server still runs, and forgets those of `forsaken`
    /// on `side`: the direction `from`'s earlier runs are over, and nothing
    /// uses their sessions.
    pub async fn end_forsaken(
        &self,
        from: Side,
        side: Side,
        client: &Client,
        forsaken: &[ServerSession],
    ) -> Result<()> {
        for (pid, state) in end_running(side, client, forsaken).await? {
            warn!(
                from = from.as_str(),
                database = side.as_str(),
                pid,
                state,
                "ended a session of an earlier run that the server kept after apply lost its link"
            );
        }
        self.lock()[index(from)].retain(|s| !(s.side == side && forsaken.contains(s)));
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, [Vec<ServerSession>; 2]> {
        // A panic while holding it cannot leave the lists half-written.
        self.by_direction
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
