//! Per entity, the highest legacy id that may have a pair: read from both
//! databases when a session starts and raised by every pair this process
//! makes or finds, so that most new legacy rows are known to have no pair
//! without asking a database (see [`PairCeiling`]).

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use tokio_postgres::Client;

use crate::error::{ApplyError, Result};

/// Per entity, the highest legacy id that may have a pair: a lookup of a
/// legacy id above it is answered "no pair" without asking a database.
///
/// A legacy application gives new rows ids from a sequence, so nearly every
/// row a load inserts has an id above every paired one, and asking both
/// databases about each of them was a measurable share of the platform
/// server's work in `scripts/bench apply`.
///
/// Contract:
/// - Until [`Self::read`] has read both databases' tables, every id may be
///   paired (lookups ask, as before).
/// - Every pair this process records or finds is noted ([`Self::paired`])
///   before its transaction commits, and so before any event of that row
///   can arrive through the other side's capture: it is shared by both
///   directions and all their writers, and lives as long as the process
///   holds the lease (one writer per pair of databases).
/// - Pairs recorded by another process after the last read (a replay run
///   beside the live apply) are not known. Recording such a pair again
///   fails on the table's primary key, and the source transaction is
///   applied again: in the same run, the failed attempt has noted the id;
///   in a new one (a failure that came back pipelined), the ceiling is read
///   anew. Either way the id is looked up this time.
/// - It only rises: a pair given up (`Writer::unpair`) leaves it where it is.
/// - It also counts the pairs given up: a writer that sees the count move
///   forgets the pairs it knows from committed transactions before it looks
///   one up, whichever direction gave the pair up (see
///   [`Self::pairs_given_up`]).
#[derive(Debug)]
pub struct PairCeiling {
    /// The highest legacy id in either database's tables when last read
    /// ([`UNREAD`] until then).
    stored: Vec<AtomicI64>,
    /// The highest legacy id this process has paired or found paired.
    noted: Vec<AtomicI64>,
    /// How many pairs this process has given up.
    given_up: AtomicU64,
}

/// `stored` before the databases were read: any id may be paired.
const UNREAD: i64 = i64::MAX;

impl PairCeiling {
    /// For `entities` entities (the mapping's, by index).
    pub fn new(entities: usize) -> PairCeiling {
        PairCeiling {
            stored: (0..entities).map(|_| AtomicI64::new(UNREAD)).collect(),
            noted: (0..entities).map(|_| AtomicI64::new(i64::MIN)).collect(),
            given_up: AtomicU64::new(0),
        }
    }

    /// A pair was given up, in either database: a writer of either
    /// direction may know it from a committed transaction, and must not
    /// use it again (a late delete of the row it named would remove the
    /// row it no longer names).
    pub fn pair_given_up(&self) {
        self.given_up.fetch_add(1, Ordering::AcqRel);
    }

    /// How many pairs have been given up (see [`Self::pair_given_up`]).
    pub fn pairs_given_up(&self) -> u64 {
        self.given_up.load(Ordering::Acquire)
    }

    /// Whether legacy row `legacy` of entity `entity` may have a pair.
    pub fn may_be_paired(&self, entity: usize, legacy: i64) -> bool {
        match (self.stored.get(entity), self.noted.get(entity)) {
            (Some(stored), Some(noted)) => {
                let stored = stored.load(Ordering::Acquire);
                stored == UNREAD || legacy <= stored.max(noted.load(Ordering::Acquire))
            }
            _ => true,
        }
    }

    /// Notes a pair of legacy row `legacy` of entity `entity`, recorded or
    /// found.
    pub fn paired(&self, entity: usize, legacy: i64) {
        if let Some(noted) = self.noted.get(entity) {
            noted.fetch_max(legacy, Ordering::AcqRel);
        }
    }

    /// Raises the ceiling of each entity to the highest legacy id it has in
    /// the tables of `databases` (`(name, client)`; both sides' databases,
    /// for the first read to count). `entities` are the mapping's entity
    /// names, by index.
    pub async fn read(
        &self,
        databases: &[(&'static str, &Client)],
        entities: &[&str],
    ) -> Result<()> {
        let mut highest: Vec<Option<i64>> = vec![None; entities.len()];
        for (name, client) in databases {
            let rows = client
                .query(HIGHEST_PAIRED, &[&entities])
                .await
                .map_err(|e| ApplyError::postgres(name, "read the highest paired legacy ids", e))?;
            for row in rows {
                let index: i64 = row.get(0);
                let id: Option<i64> = row.get(1);
                if let Some(slot) = usize::try_from(index - 1)
                    .ok()
                    .and_then(|i| highest.get_mut(i))
                {
                    *slot = (*slot).max(id);
                }
            }
        }
        for (stored, id) in self.stored.iter().zip(highest) {
            self.raise(stored, id.unwrap_or(i64::MIN));
        }
        Ok(())
    }

    fn raise(&self, stored: &AtomicI64, id: i64) {
        let mut current = stored.load(Ordering::Acquire);
        loop {
            let raised = if current == UNREAD {
                id
            } else {
                current.max(id)
            };
            match stored.compare_exchange(current, raised, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return,
                Err(now) => current = now,
            }
        }
    }
}

/// Per entity name (`$1`, in order), the highest legacy id paired in a
/// database: one backward index probe in each table.
const HIGHEST_PAIRED: &str = "SELECT x.i, GREATEST(\
     (SELECT max(legacy_id) FROM syncbridge.id_map WHERE entity = x.e), \
     (SELECT max(legacy_id) FROM syncbridge.id_derived WHERE entity = x.e)) \
     FROM unnest($1::text[]) WITH ORDINALITY AS x(e, i)";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_id_may_be_paired_until_the_databases_were_read() {
        let ceiling = PairCeiling::new(2);
        ceiling.paired(0, 5);
        assert!(ceiling.may_be_paired(0, i64::MAX));
        assert!(ceiling.may_be_paired(1, 1));
        assert!(ceiling.may_be_paired(7, 1), "an entity it does not know");
    }

    #[test]
    fn above_the_highest_stored_or_noted_id_nothing_is_paired() {
        let ceiling = PairCeiling::new(2);
        let stored = [100, i64::MIN];
        for (slot, id) in ceiling.stored.iter().zip(stored) {
            ceiling.raise(slot, id);
        }
        assert!(ceiling.may_be_paired(0, 100));
        assert!(!ceiling.may_be_paired(0, 101));
        assert!(!ceiling.may_be_paired(1, 1), "no pair stored at all");
        ceiling.paired(0, 150);
        ceiling.paired(1, 3);
        assert!(ceiling.may_be_paired(0, 150));
        assert!(!ceiling.may_be_paired(0, 151));
        assert!(ceiling.may_be_paired(1, 3));
        assert!(!ceiling.may_be_paired(1, 4));
    }

    #[test]
    fn a_later_read_never_lowers_the_ceiling() {
        let ceiling = PairCeiling::new(1);
        ceiling.raise(&ceiling.stored[0], 100);
        ceiling.raise(&ceiling.stored[0], 40);
        assert!(ceiling.may_be_paired(0, 100));
        ceiling.paired(0, 10);
        assert!(ceiling.may_be_paired(0, 100));
        assert!(!ceiling.may_be_paired(0, 101));
    }
}
