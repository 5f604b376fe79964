//! The pairs this process knows, looked up either way, so that a pair is
//! read from a database once (see [`IdMap`]).

use std::collections::HashMap;

use uuid::Uuid;

/// The id correspondence known to this process, looked up either way:
/// committed pairs, and those written by the open target transaction (the
/// source transactions already kept in the batch, and the one being
/// staged), which a rollback forgets.
///
/// One pair of maps holds them all: a pair is inserted once, when it is
/// learnt, and a commit only drops the logs of what is uncommitted. (Three
/// layers, each commit moving every pair of the batch into the committed
/// maps, cost a measurable share of apply's CPU in `scripts/bench apply`.)
#[derive(Default)]
pub(super) struct IdMap {
    forward: FastMap<(usize, i64), Uuid>,
    reverse: FastMap<(usize, Uuid), i64>,
    /// Pairs learnt by the source transactions kept in the batch.
    batch: Vec<(usize, i64, Uuid)>,
    /// Pairs learnt by the source transaction being staged.
    transaction: Vec<(usize, i64, Uuid)>,
}

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

impl IdMap {
    /// Past this many pairs, a commit forgets the committed ones (bounded
    /// memory: the database is the source of truth).
    const MAX_PAIRS: usize = 1_000_000;

    pub(super) fn platform_of(&self, entity: usize, legacy: i64) -> Option<Uuid> {
        self.forward.get(&(entity, legacy)).copied()
    }

    pub(super) fn legacy_of(&self, entity: usize, platform: Uuid) -> Option<i64> {
        self.reverse.get(&(entity, platform)).copied()
    }

    /// Learns a pair in the transaction being staged (a legacy id already
    /// paired keeps its pair, as does a platform id).
    pub(super) fn remember(&mut self, entity: usize, legacy: i64, platform: Uuid) {
        if self.forward.contains_key(&(entity, legacy)) {
            return;
        }
        self.forward.insert((entity, legacy), platform);
        self.reverse.entry((entity, platform)).or_insert(legacy);
        self.transaction.push((entity, legacy, platform));
    }

    /// Forgets whatever either id is paired with (a pair dropped is read
    /// again from the database).
    pub(super) fn forget(&mut self, entity: usize, legacy: i64, platform: Uuid) {
        self.forward.remove(&(entity, legacy));
        self.reverse.remove(&(entity, platform));
        let other = |&(e, l, p): &(usize, i64, Uuid)| e != entity || (l != legacy && p != platform);
        self.batch.retain(other);
        self.transaction.retain(other);
    }

    /// Removes the logged pairs from the maps (where they are still the
    /// pairs those ids have).
    fn unlearn(&mut self, pairs: Vec<(usize, i64, Uuid)>) {
        for (entity, legacy, platform) in pairs {
            if self.forward.get(&(entity, legacy)) == Some(&platform) {
                self.forward.remove(&(entity, legacy));
            }
            if self.reverse.get(&(entity, platform)) == Some(&legacy) {
                self.reverse.remove(&(entity, platform));
            }
        }
    }

    /// The staged source transaction is part of the batch now.
    pub(super) fn keep_transaction(&mut self) {
        self.batch.append(&mut self.transaction);
    }

    /// The staged source transaction rolled back.
    pub(super) fn roll_back_transaction(&mut self) {
        let pairs = std::mem::take(&mut self.transaction);
        self.unlearn(pairs);
    }

    /// The target transaction rolled back.
    pub(super) fn roll_back_batch(&mut self) {
        self.roll_back_transaction();
        let pairs = std::mem::take(&mut self.batch);
        self.unlearn(pairs);
    }

    /// The target transaction committed: its pairs are durable.
    pub(super) fn commit_batch(&mut self) {
        self.keep_transaction();
        self.batch.clear();
        if self.forward.len() > Self::MAX_PAIRS {
            self.forward.clear();
            self.reverse.clear();
        }
    }

    /// Forgets the committed pairs, keeping those of the open target
    /// transaction.
    pub(super) fn forget_committed(&mut self) {
        let IdMap {
            forward,
            reverse,
            batch,
            transaction,
        } = self;
        forward.clear();
        reverse.clear();
        for &(entity, legacy, platform) in batch.iter().chain(transaction.iter()) {
            forward.entry((entity, legacy)).or_insert(platform);
            reverse.entry((entity, platform)).or_insert(legacy);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uuid(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    #[test]
    fn pairs_of_a_rolled_back_transaction_are_forgotten_and_those_kept_in_the_batch_stay() {
        let mut ids = IdMap::default();
        ids.remember(0, 1, uuid(1));
        ids.keep_transaction();
        ids.remember(0, 2, uuid(2));
        ids.roll_back_transaction();
        assert_eq!(ids.platform_of(0, 1), Some(uuid(1)));
        assert_eq!(ids.platform_of(0, 2), None);
        assert_eq!(ids.legacy_of(0, uuid(2)), None);
        ids.commit_batch();
        ids.remember(0, 3, uuid(3));
        ids.roll_back_batch();
        assert_eq!(ids.legacy_of(0, uuid(1)), Some(1), "committed pairs stay");
        assert_eq!(ids.platform_of(0, 3), None);
    }

    #[test]
    fn a_rolled_back_batch_forgets_its_pairs_but_not_a_committed_pair_of_the_same_id() {
        let mut ids = IdMap::default();
        ids.remember(0, 1, uuid(1));
        ids.commit_batch();
        // Another legacy id claims the same platform id: the committed
        // pair keeps the reverse direction, and a rollback leaves it.
        ids.remember(0, 9, uuid(1));
        ids.keep_transaction();
        ids.roll_back_batch();
        assert_eq!(ids.legacy_of(0, uuid(1)), Some(1));
        assert_eq!(ids.platform_of(0, 9), None);
        assert_eq!(ids.platform_of(0, 1), Some(uuid(1)));
    }

    #[test]
    fn forgetting_committed_pairs_keeps_those_of_the_open_transaction() {
        let mut ids = IdMap::default();
        ids.remember(0, 1, uuid(1));
        ids.commit_batch();
        ids.remember(0, 2, uuid(2));
        ids.keep_transaction();
        ids.remember(1, 3, uuid(3));
        ids.forget_committed();
        assert_eq!(ids.platform_of(0, 1), None);
        assert_eq!(ids.platform_of(0, 2), Some(uuid(2)));
        assert_eq!(ids.legacy_of(1, uuid(3)), Some(3));
        // And they are still rolled back with their transaction.
        ids.roll_back_batch();
        assert_eq!(ids.platform_of(0, 2), None);
        assert_eq!(ids.platform_of(1, 3), None);
    }

    #[test]
    fn a_forgotten_pair_is_not_brought_back_by_forgetting_the_committed_ones() {
        let mut ids = IdMap::default();
        ids.remember(0, 1, uuid(1));
        ids.forget(0, 1, uuid(1));
        ids.forget_committed();
        assert_eq!(ids.platform_of(0, 1), None);
        assert_eq!(ids.legacy_of(0, uuid(1)), None);
    }
}
