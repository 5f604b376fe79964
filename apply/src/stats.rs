//! Counters of what apply did, per direction. Cheap to update from the hot
//! path; read by the periodic progress log and by tests.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct Stats {
    applied: AtomicU64,
    deleted: AtomicU64,
    skipped_older: AtomicU64,
    echoes: AtomicU64,
    dead_lettered: AtomicU64,
    conflict_orphans: AtomicU64,
    linked: AtomicU64,
    key_held: AtomicU64,
    transactions: AtomicU64,
    replans: AtomicU64,
    snapshot_rereads: AtomicU64,
    gaps_fetched: AtomicU64,
    /// Commit time (Unix micros) of the last source transaction applied.
    last_commit_micros: AtomicI64,
    /// When (Unix micros) the last target transaction committed.
    committed_at_micros: AtomicI64,
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
    /// an earlier one), fetched again (see `continuity`).
    pub gaps_fetched: u64,
    pub last_commit_micros: i64,
    /// When (Unix micros) the last target transaction committed.
    pub committed_at_micros: i64,
}

impl Stats {
    pub fn applied(&self, n: u64) {
        self.applied.fetch_add(n, Ordering::Relaxed);
    }
    pub fn deleted(&self, n: u64) {
        self.deleted.fetch_add(n, Ordering::Relaxed);
    }
    pub fn skipped_older(&self, n: u64) {
        self.skipped_older.fetch_add(n, Ordering::Relaxed);
    }
    pub fn echoes(&self, n: u64) {
        self.echoes.fetch_add(n, Ordering::Relaxed);
    }
    pub fn dead_lettered(&self, n: u64) {
        self.dead_lettered.fetch_add(n, Ordering::Relaxed);
    }
    pub fn conflict_orphans(&self, n: u64) {
        self.conflict_orphans.fetch_add(n, Ordering::Relaxed);
    }
    pub fn linked(&self, n: u64) {
        self.linked.fetch_add(n, Ordering::Relaxed);
    }
    pub fn key_held(&self, n: u64) {
        self.key_held.fetch_add(n, Ordering::Relaxed);
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
    pub fn transaction(&self, commit_micros: i64) {
        self.transactions.fetch_add(1, Ordering::Relaxed);
        self.last_commit_micros
            .fetch_max(commit_micros, Ordering::Relaxed);
    }

    /// A target transaction committed now.
    pub fn batch_committed(&self) {
        self.committed_at_micros
            .fetch_max(crate::now_micros(), Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            applied: self.applied.load(Ordering::Relaxed),
            deleted: self.deleted.load(Ordering::Relaxed),
            skipped_older: self.skipped_older.load(Ordering::Relaxed),
            echoes: self.echoes.load(Ordering::Relaxed),
            dead_lettered: self.dead_lettered.load(Ordering::Relaxed),
            conflict_orphans: self.conflict_orphans.load(Ordering::Relaxed),
            linked: self.linked.load(Ordering::Relaxed),
            key_held: self.key_held.load(Ordering::Relaxed),
            transactions: self.transactions.load(Ordering::Relaxed),
            replans: self.replans.load(Ordering::Relaxed),
            snapshot_rereads: self.snapshot_rereads.load(Ordering::Relaxed),
            gaps_fetched: self.gaps_fetched.load(Ordering::Relaxed),
            last_commit_micros: self.last_commit_micros.load(Ordering::Relaxed),
            committed_at_micros: self.committed_at_micros.load(Ordering::Relaxed),
        }
    }
}
