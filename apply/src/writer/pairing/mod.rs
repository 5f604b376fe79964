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

use std::sync::atomic::{AtomicI64, Ordering};

use tokio_postgres::Client;
use uuid::Uuid;

use crate::error::{ApplyError, Result};

/// The namespace of the uuid v5 whose bits fill a derived id.
const ID_NAMESPACE: Uuid = Uuid::from_u128(0x5b1d_9e0a_3c47_4f2b_9a61_0c2e_8d4b_7f13);

/// The platform id derived for legacy row `legacy` of `entity`.
///
/// Hex digits, 1-based: 1-12 are legacy id digits 1-12 (of 16, two's
/// complement), 13 is the version (8), 14-16 are id digits 13-15, 17 is the
/// variant digit of the v5 uuid, 18 is id digit 16, and 19-32 are those of
/// the v5 uuid.
pub fn derived_platform_id(entity: &str, legacy: i64) -> Uuid {
    let check = Uuid::new_v5(&ID_NAMESPACE, format!("{entity}:{legacy}").as_bytes()).into_bytes();
    let id = (legacy as u64).to_be_bytes();
    let mut bytes = [0u8; 16];
    bytes[..6].copy_from_slice(&id[..6]);
    bytes[6] = 0x80 | (id[6] >> 4);
    bytes[7] = (id[6] << 4) | (id[7] >> 4);
    bytes[8] = (check[8] & 0xf0) | (id[7] & 0x0f);
    bytes[9..].copy_from_slice(&check[9..]);
    Uuid::from_bytes(bytes)
}

/// SQL reading the legacy id digits out of the uuid expression `uuid`, from
/// its text form `xxxxxxxx-xxxx-8xxx-vxxx-xxxxxxxxxxxx`. Any uuid gives some
/// number: callers compare the stored derived id with `uuid` too.
pub fn derived_legacy_id_sql(uuid: &str) -> String {
    format!(
        "('x' || substr({uuid}::text, 1, 8) || substr({uuid}::text, 10, 4) \
         || substr({uuid}::text, 16, 3) || substr({uuid}::text, 21, 1))::bit(64)::int8"
    )
}

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
#[derive(Debug)]
pub struct PairCeiling {
    /// The highest legacy id in either database's tables when last read
    /// ([`UNREAD`] until then).
    stored: Vec<AtomicI64>,
    /// The highest legacy id this process has paired or found paired.
    noted: Vec<AtomicI64>,
}

/// `stored` before the databases were read: any id may be paired.
const UNREAD: i64 = i64::MAX;

impl PairCeiling {
    /// For `entities` entities (the mapping's, by index).
    pub fn new(entities: usize) -> PairCeiling {
        PairCeiling {
            stored: (0..entities).map(|_| AtomicI64::new(UNREAD)).collect(),
            noted: (0..entities).map(|_| AtomicI64::new(i64::MIN)).collect(),
        }
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
    use proptest::prelude::*;

    /// The legacy id `platform` was derived from, if it is the derived id of
    /// a row of `entity` (the database does this by comparing the stored id).
    fn derived_from(entity: &str, platform: Uuid) -> Option<i64> {
        let legacy = legacy_digits(platform);
        (derived_platform_id(entity, legacy) == platform).then_some(legacy)
    }

    /// The legacy id digits of any uuid, read from its bytes where a derived
    /// id keeps them.
    fn legacy_digits(platform: Uuid) -> i64 {
        let b = platform.into_bytes();
        let mut id = [0u8; 8];
        id[..6].copy_from_slice(&b[..6]);
        id[6] = (b[6] << 4) | (b[7] >> 4);
        id[7] = (b[7] << 4) | (b[8] & 0x0f);
        u64::from_be_bytes(id) as i64
    }

    /// What the SQL of [`derived_legacy_id_sql`] does, on the text form.
    fn digits_as_the_database_reads_them(platform: Uuid) -> i64 {
        let text = platform.hyphenated().to_string();
        let hex = format!(
            "{}{}{}{}",
            &text[0..8],
            &text[9..13],
            &text[15..18],
            &text[20..21]
        );
        u64::from_str_radix(&hex, 16).expect("hex digits") as i64
    }

    #[test]
    fn a_derived_id_is_a_version_8_uuid_that_shows_the_legacy_id() {
        let id = derived_platform_id("user", 0x1234_5678_9abc_def1);
        let text = id.hyphenated().to_string();
        assert_eq!(id.get_version_num(), 8);
        assert_eq!(id.get_variant(), uuid::Variant::RFC4122);
        assert_eq!(&text[..14], "12345678-9abc-");
        assert_eq!(&text[15..18], "def");
        assert_eq!(&text[20..21], "1");
    }

    #[test]
    fn ids_of_one_entity_follow_the_legacy_ids_and_entities_differ() {
        let a = derived_platform_id("user", 16);
        let b = derived_platform_id("user", 32);
        assert!(a < b, "{a} sorts before {b}");
        assert_ne!(
            derived_platform_id("user", 7),
            derived_platform_id("team", 7)
        );
    }

    #[test]
    fn a_random_uuid_is_not_taken_for_a_derived_one() {
        for _ in 0..1000 {
            assert_eq!(derived_from("user", Uuid::new_v4()), None);
        }
        let derived = derived_platform_id("user", 42);
        assert_eq!(derived_from("team", derived), None);
    }

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

    proptest! {
        #[test]
        fn every_legacy_id_comes_back_out_of_its_derived_id(legacy in any::<i64>(), entity in "[a-z_]{1,12}") {
            let derived = derived_platform_id(&entity, legacy);
            prop_assert_eq!(derived_from(&entity, derived), Some(legacy));
            prop_assert_eq!(digits_as_the_database_reads_them(derived), legacy);
        }

        #[test]
        fn the_database_reads_the_digits_the_same_way_from_any_uuid(bytes in any::<[u8; 16]>()) {
            let uuid = Uuid::from_bytes(bytes);
            prop_assert_eq!(digits_as_the_database_reads_them(uuid), legacy_digits(uuid));
        }
    }
}
