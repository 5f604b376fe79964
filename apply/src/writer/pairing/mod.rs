//! The id correspondence: which legacy bigint id and which platform uuid
//! name the same row, and where a target database keeps each pair.
//!
//! A row born on the legacy side gets a *derived* platform id: a version-8
//! uuid that carries its legacy id in the open, in its leading digits, and
//! fills the rest with a SHA-1 of the entity and the id (the bits of the
//! uuid v5 of `"<entity>:<legacy id>"` in apply's namespace). The same row
//! always gets the same id, so a replay derives it again; ids of one entity
//! sort roughly in legacy id order, so a load of legacy rows appends to the
//! right edge of the platform's primary key instead of scattering over it.
//!
//! Each target database keeps the pairs of the rows it received, in two
//! tables of its `syncbridge` schema (the view `syncbridge.id_pairs` shows
//! both):
//!
//! - `id_derived`: a legacy row paired with its derived platform id. Indexed
//!   by legacy id only: a lookup by platform id reads the legacy id out of
//!   the uuid ([`derived_legacy_id_sql`]) and checks the stored uuid equals
//!   it, so a platform id that merely looks derived matches nothing. One
//!   index per pair instead of two measured less of the platform server's
//!   CPU in alternating runs of `scripts/bench apply`.
//! - `id_map`: every other pair (a platform-born row given a legacy id from
//!   the legacy sequence, two rows linked by a natural key, and derived
//!   pairs recorded before `id_derived` existed), indexed both ways.
//!
//! A legacy id is in at most one of the two tables of a database: a pair is
//! recorded only for a row that had none (looked for in both), and removed
//! from both when it gives way to another (see `Writer::unpair`).
//!
//! How a writer pairs the rows it writes, one module each:
//!
//! - `derived`: the platform id derived for a legacy row, and the SQL that
//!   reads the legacy id back out of one.
//! - `ceiling`: the highest legacy id that may have a pair, shared by every
//!   writer.
//! - `known`: the pairs this process knows, committed or in the open target
//!   transaction.
//! - `resolve`: the target-side ids of source rows, from the pairs known,
//!   then from both databases.
//! - `link`: rows without a counterpart linked to a target row with the
//!   same natural key that is nobody's counterpart yet.
//! - `allocate`: new target ids, and the new pairs recorded.
//! - `lock`: the pair lock, which keeps the two directions from deciding
//!   what rows pair with at the same time.
//!
//! The public part ([`derived_platform_id`], [`derived_legacy_id_sql`],
//! [`PairCeiling`]) is also `apply::correspondence`, its path before it
//! moved here.

mod allocate;
mod ceiling;
mod derived;
mod known;
mod link;
mod lock;
mod resolve;

use std::sync::Arc;

use super::Writer;
use known::IdMap;
use lock::PairLock;

pub use ceiling::PairCeiling;
pub use derived::{derived_legacy_id, derived_legacy_id_sql, derived_platform_id};

/// What a writer knows of the id correspondence, and the pair lock its
/// target transaction holds.
pub(super) struct Pairing {
    /// The pairs this process knows (see [`IdMap`]).
    ids: IdMap,
    /// Which legacy ids may be paired at all, shared by every writer.
    ceiling: Arc<PairCeiling>,
    /// The pair lock this target transaction holds (see
    /// [`Writer::lock_pairs`]).
    lock: PairLock,
    /// How many pairs had been given up when this writer last looked (see
    /// [`PairCeiling::pairs_given_up`]).
    given_up_seen: u64,
}

impl Pairing {
    pub(super) fn new(ceiling: Arc<PairCeiling>) -> Pairing {
        Pairing {
            ids: IdMap::default(),
            ceiling,
            lock: PairLock::None,
            given_up_seen: 0,
        }
    }

    /// Forgets the pairs known from committed transactions if any writer
    /// gave a pair up since this one last looked.
    fn forget_given_up(&mut self) {
        let given_up = self.ceiling.pairs_given_up();
        if given_up != self.given_up_seen {
            self.given_up_seen = given_up;
            self.ids.forget_committed();
        }
    }

    /// The source transaction's staged work is gone (savepoint rolled
    /// back): a transaction lock taken since the savepoint went with it, and
    /// so did the pairs it learnt.
    pub(super) fn forget_transaction(&mut self) {
        if self.lock == PairLock::Transaction {
            self.lock = PairLock::None;
        }
        self.ids.roll_back_transaction();
    }

    /// The source transaction is part of the batch now.
    pub(super) fn keep_transaction(&mut self) {
        self.ids.keep_transaction();
    }

    /// The target transaction committed: its pairs are durable.
    pub(super) fn committed(&mut self) {
        self.ids.commit_batch();
    }

    /// The target transaction rolled back: its pairs are gone.
    pub(super) fn rolled_back(&mut self) {
        self.ids.roll_back_batch();
    }
}

impl Writer {
    /// Forgets the pairs known from committed transactions: another writer
    /// of this direction gave up a pair this one may have known.
    pub fn forget_committed_pairs(&mut self) {
        self.pairing.ids.forget_committed();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    #[test]
    fn a_pair_given_up_by_any_writer_is_forgotten_by_every_writer_before_its_next_lookup() {
        let ceiling = Arc::new(PairCeiling::new(1));
        let mut this = Pairing::new(Arc::clone(&ceiling));
        let other = Pairing::new(Arc::clone(&ceiling));
        this.ids.remember(0, 7, Uuid::from_u128(7));
        this.keep_transaction();
        this.committed();
        this.ids.remember(0, 8, Uuid::from_u128(8));
        this.forget_given_up();
        assert_eq!(this.ids.platform_of(0, 7), Some(Uuid::from_u128(7)));
        // The other direction's writer gives a pair up.
        other.ceiling.pair_given_up();
        this.forget_given_up();
        assert_eq!(
            this.ids.platform_of(0, 7),
            None,
            "committed pairs are read again"
        );
        assert_eq!(
            this.ids.platform_of(0, 8),
            Some(Uuid::from_u128(8)),
            "the open transaction's pairs stay"
        );
        this.ids.remember(0, 7, Uuid::from_u128(7));
        this.forget_given_up();
        assert_eq!(
            this.ids.platform_of(0, 7),
            Some(Uuid::from_u128(7)),
            "a count already seen forgets nothing"
        );
    }
}
