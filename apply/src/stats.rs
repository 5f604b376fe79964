//! Counters of what apply did, per direction. Cheap to update from the hot
//! path; read by the periodic progress log and by tests.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use crate::mapping::Side;

/// The counters of both directions.
#[derive(Debug, Default, Clone)]
pub struct Counters {
    pub legacy_to_platform: Arc<Stats>,
    pub platform_to_legacy: Arc<Stats>,
}

impl Counters {
    pub fn of(&self, from: Side) -> &Arc<Stats> {
        match from {
            Side::Legacy => &self.legacy_to_platform,
            Side::Platform => &self.platform_to_legacy,
        }
    }
}

/// Counters of what apply did to a target database. Those of the open
/// target transaction are pending: they count once it commits, and not at
/// all if it rolls back (a replan, a re-read or a retry then does the same
/// work again and counts it then). What was sent to the dead-letter topic,
/// and the events of the reading itself (replans, re-reads, gaps), count at
/// once: they happened whatever the target transaction becomes.
#[derive(Debug, Default)]
pub struct Stats {
    committed: Counts,
    pending: Counts,
    dead_lettered: AtomicU64,
    replans: AtomicU64,
    snapshot_rereads: AtomicU64,
    gaps_fetched: AtomicU64,
    /// Commits refused because another instance took the lease.
    fenced: AtomicU64,
    /// When (Unix micros) the last target transaction committed.
    committed_at_micros: AtomicI64,
}

/// What a target transaction did.
#[derive(Debug, Default)]
struct Counts {
    applied: AtomicU64,
    deleted: AtomicU64,
    skipped_older: AtomicU64,
    echoes: AtomicU64,
    conflict_orphans: AtomicU64,
    linked: AtomicU64,
    key_held: AtomicU64,
    transactions: AtomicU64,
    /// Commit time (Unix micros) of the last source transaction applied.
    last_commit_micros: AtomicI64,
}

impl Counts {
    /// Adds `other`'s counts to these and zeroes `other`.
    fn take_from(&self, other: &Counts) {
        for (to, from) in [
            (&self.applied, &other.applied),
            (&self.deleted, &other.deleted),
            (&self.skipped_older, &other.skipped_older),
            (&self.echoes, &other.echoes),
            (&self.conflict_orphans, &other.conflict_orphans),
            (&self.linked, &other.linked),
            (&self.key_held, &other.key_held),
            (&self.transactions, &other.transactions),
        ] {
            to.fetch_add(from.swap(0, Ordering::Relaxed), Ordering::Relaxed);
        }
        self.last_commit_micros.fetch_max(
            other.last_commit_micros.swap(0, Ordering::Relaxed),
            Ordering::Relaxed,
        );
    }

    fn clear(&self) {
        Counts::default().take_from(self);
    }
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Snapshot {
    /// Rows inserted or updated.
    pub applied: u64,
    pub deleted: u64,
    /// Changes not written because the target row was newer (conflicts lost).
    pub skipped_older: u64,
    /// Changes read back from apply's own transactions and not applied again.
    pub echoes: u64,
    pub dead_lettered: u64,
    /// Rows not written because their parent no longer exists on this side.
    pub conflict_orphans: u64,
    /// Rows linked to an existing row with the same natural key.
    pub linked: u64,
    /// Rows not written because their natural key is held here by a row
    /// that already corresponds to another source row (see
    /// `Writer::link_or_allocate`).
    pub key_held: u64,
    /// Source transactions applied.
    pub transactions: u64,
    /// Pipelined batches rolled back and applied again one statement at a
    /// time (see `Writer`'s statements sent ahead).
    pub replans: u64,
    /// Streaming transactions that held more snapshot events than
    /// `deferred_snapshot_buffer`: the snapshot events among them were
    /// read again from the topic after the transaction.
    pub snapshot_rereads: u64,
    /// Gaps in the offsets received (a broker showed a later batch before
    /// an earlier one), fetched again (see `runtime::continuity`).
    pub gaps_fetched: u64,
    /// Commits refused because another instance took the lease.
    pub fenced: u64,
    pub last_commit_micros: i64,
    /// When (Unix micros) the last target transaction committed.
    pub committed_at_micros: i64,
}

impl Stats {
    pub fn applied(&self, n: u64) {
        self.pending.applied.fetch_add(n, Ordering::Relaxed);
    }
    pub fn deleted(&self, n: u64) {
        self.pending.deleted.fetch_add(n, Ordering::Relaxed);
    }
    pub fn skipped_older(&self, n: u64) {
        self.pending.skipped_older.fetch_add(n, Ordering::Relaxed);
    }
    pub fn echoes(&self, n: u64) {
        self.pending.echoes.fetch_add(n, Ordering::Relaxed);
    }
    pub fn conflict_orphans(&self, n: u64) {
        self.pending
            .conflict_orphans
            .fetch_add(n, Ordering::Relaxed);
    }
    pub fn linked(&self, n: u64) {
        self.pending.linked.fetch_add(n, Ordering::Relaxed);
    }
    pub fn key_held(&self, n: u64) {
        self.pending.key_held.fetch_add(n, Ordering::Relaxed);
    }
    pub fn transaction(&self, commit_micros: i64) {
        self.pending.transactions.fetch_add(1, Ordering::Relaxed);
        self.pending
            .last_commit_micros
            .fetch_max(commit_micros, Ordering::Relaxed);
    }
    pub fn dead_lettered(&self, n: u64) {
        self.dead_lettered.fetch_add(n, Ordering::Relaxed);
    }
    pub fn replanned(&self) {
        self.replans.fetch_add(1, Ordering::Relaxed);
    }
    pub fn snapshot_reread(&self) {
        self.snapshot_rereads.fetch_add(1, Ordering::Relaxed);
    }
    pub fn gap_fetched(&self) {
        self.gaps_fetched.fetch_add(1, Ordering::Relaxed);
    }

    /// A commit was refused: another instance took the lease.
    pub fn fenced(&self) {
        self.fenced.fetch_add(1, Ordering::Relaxed);
    }

    /// The open target transaction committed now: its counts count.
    pub fn batch_committed(&self) {
        self.absorb(self);
    }

    /// A writer's target transaction committed now: what it counted (in
    /// `writer`'s pending counts) counts here.
    pub fn absorb(&self, writer: &Stats) {
        self.committed.take_from(&writer.pending);
        self.committed_at_micros
            .fetch_max(pg::time::now_micros(), Ordering::Relaxed);
    }

    /// The open target transaction rolled back, or was lost with its
    /// connection: what it counted did not happen.
    pub fn batch_discarded(&self) {
        self.pending.clear();
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            applied: self.committed.applied.load(Ordering::Relaxed),
            deleted: self.committed.deleted.load(Ordering::Relaxed),
            skipped_older: self.committed.skipped_older.load(Ordering::Relaxed),
            echoes: self.committed.echoes.load(Ordering::Relaxed),
            dead_lettered: self.dead_lettered.load(Ordering::Relaxed),
            conflict_orphans: self.committed.conflict_orphans.load(Ordering::Relaxed),
            linked: self.committed.linked.load(Ordering::Relaxed),
            key_held: self.committed.key_held.load(Ordering::Relaxed),
            transactions: self.committed.transactions.load(Ordering::Relaxed),
            replans: self.replans.load(Ordering::Relaxed),
            snapshot_rereads: self.snapshot_rereads.load(Ordering::Relaxed),
            gaps_fetched: self.gaps_fetched.load(Ordering::Relaxed),
            fenced: self.fenced.load(Ordering::Relaxed),
            last_commit_micros: self.committed.last_commit_micros.load(Ordering::Relaxed),
            committed_at_micros: self.committed_at_micros.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_counts_when_its_target_transaction_commits_and_not_when_it_rolls_back() {
        let stats = Stats::default();
        stats.applied(3);
        stats.transaction(100);
        stats.dead_lettered(1);
        assert_eq!(stats.snapshot().applied, 0, "pending until the commit");
        assert_eq!(stats.snapshot().dead_lettered, 1, "sent is sent");

        stats.batch_discarded();
        stats.applied(3);
        stats.transaction(100);
        stats.batch_committed();
        let done = stats.snapshot();
        assert_eq!((done.applied, done.transactions), (3, 1));
        assert_eq!(done.last_commit_micros, 100);

        stats.applied(5);
        stats.batch_discarded();
        stats.batch_committed();
        assert_eq!(stats.snapshot().applied, 3);
    }
}
