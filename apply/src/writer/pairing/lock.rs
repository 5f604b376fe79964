//! The pair lock: one advisory lock, in the legacy database, held while a
//! direction decides what rows pair with, so that the two directions never
//! decide at the same time (see [`Writer::lock_pairs`]).

use tokio_postgres::Client;

use crate::error::{ApplyError, Result};
use crate::mapping::Side;
use crate::writer::Writer;

/// How the open target transaction holds the pair lock (see
/// [`Writer::lock_pairs`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PairLock {
    None,
    /// Held by the target transaction; ends with it.
    Transaction,
    /// Held by the source session until released.
    Session,
}

/// How a direction writing to `to` takes the pair lock (see
/// `Writer::lock_pairs`): always in the legacy database, so as a transaction
/// lock on its target connection when that is legacy, else as a session lock
/// on its source connection.
pub(super) struct PairLockStatement {
    pub(super) sql: &'static str,
    pub(super) held: PairLock,
}

impl PairLockStatement {
    pub(super) fn of(to: Side) -> PairLockStatement {
        match to {
            Side::Legacy => PairLockStatement {
                sql: "SELECT pg_catalog.pg_advisory_xact_lock(hashtextextended('syncbridge pairs', 0))::text",
                held: PairLock::Transaction,
            },
            Side::Platform => PairLockStatement {
                sql: "SELECT pg_catalog.pg_advisory_lock(hashtextextended('syncbridge pairs', 0))::text",
                held: PairLock::Session,
            },
        }
    }

    /// The connection that takes it: the one to the legacy database.
    pub(super) fn client<'c>(to: Side, target: &'c Client, source: &'c Client) -> &'c Client {
        match to {
            Side::Legacy => target,
            Side::Platform => source,
        }
    }
}

impl Writer {
    /// Whether the open target transaction holds the pair lock.
    pub fn holds_pair_lock(&self) -> bool {
        self.pairing.lock != PairLock::None
    }

    /// Takes the pair lock for the rest of the target transaction: while it
    /// is held, the other direction cannot decide what rows pair with.
    ///
    /// Each direction records the pairs it makes in its own target, and
    /// decides from what both databases' `id_map`s say. Two rows created
    /// with one natural key on both sides at once are decided by both
    /// directions at once, each in its own database: without a common lock
    /// one can link the legacy row to the platform row while the other gives
    /// it a new counterpart (the platform row was deleted meanwhile), and a
    /// later delete then removes a row whose other counterpart lives on. So
    /// linking decisions take one lock, in one place, the legacy database:
    /// the direction writing there as a transaction lock, the other as a
    /// session lock on its source connection that
    /// [`Self::release_pair_lock`] frees after its target commit or
    /// rollback. A direction reads the other's `id_map` only with the lock
    /// held, so it sees every pair the other made. Only entities with a
    /// natural key take it (nothing else is ever linked), once per target
    /// transaction. One lock for all entities, not one each: two directions
    /// taking per-entity locks in their own source orders deadlocked all the
    /// time; with one lock, and no other lock waited for while holding it
    /// that the other direction could hold, there is no cycle.
    pub(super) async fn lock_pairs(&mut self, target: &Client, source: &Client) -> Result<()> {
        if self.pairing.lock != PairLock::None {
            return Ok(());
        }
        let lock = PairLockStatement::of(self.to);
        PairLockStatement::client(self.to, target, source)
            .execute(lock.sql, &[])
            .await
            .map_err(|e| ApplyError::postgres("legacy", "lock pair decisions", e))?;
        self.pairing.lock = lock.held;
        Ok(())
    }

    /// Whether the pair lock this writer holds should be let go at the next
    /// commit: held as a transaction lock, always (the commit ends it
    /// anyway); held as a session lock on `source`, which outlives commits
    /// sent ahead, only when another session waits for it. One round trip
    /// on `source`, where the lock lives.
    pub async fn pair_lock_wanted(&self, source: &Client) -> Result<bool> {
        match self.pairing.lock {
            PairLock::None => Ok(false),
            PairLock::Transaction => Ok(true),
            PairLock::Session => Ok(source
                .query_one(
                    "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_locks \
                     WHERE locktype = 'advisory' AND NOT granted AND objsubid = 1 \
                       AND database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database()) \
                       AND ((classid::int8 << 32) | objid::int8) = hashtextextended('syncbridge pairs', 0))",
                    &[],
                )
                .await
                .map_err(|e| ApplyError::postgres("legacy", "look for waiters on the pair lock", e))?
                .get(0)),
        }
    }

    /// Frees the session pair lock this writer holds on its source (see
    /// `lock_pairs`); call after the target transaction ended.
    pub async fn release_pair_lock(&mut self, source: &Client) -> Result<()> {
        let held = std::mem::replace(&mut self.pairing.lock, PairLock::None);
        if held != PairLock::Session {
            return Ok(());
        }
        source
            .execute(
                "SELECT pg_catalog.pg_advisory_unlock(hashtextextended('syncbridge pairs', 0))",
                &[],
            )
            .await
            .map_err(|e| ApplyError::postgres("legacy", "release the pair lock", e))?;
        Ok(())
    }
}
