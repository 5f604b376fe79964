//! The platform id derived for a legacy row: a version-8 uuid that shows
//! its legacy id, and the SQL that reads the legacy id back out of one (see
//! the [`pairing`](super) module for where each kind of pair is kept).

use uuid::Uuid;

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

/// The legacy id `platform` was derived from, when it is the derived id of
/// a row of `entity` (a platform-born id gives `None`).
pub fn derived_legacy_id(entity: &str, platform: Uuid) -> Option<i64> {
    let legacy = legacy_digits(platform);
    (derived_platform_id(entity, legacy) == platform).then_some(legacy)
}

/// The legacy id digits of any uuid, read from its bytes where a derived id
/// keeps them.
fn legacy_digits(platform: Uuid) -> i64 {
    let b = platform.into_bytes();
    let mut id = [0u8; 8];
    id[..6].copy_from_slice(&b[..6]);
    id[6] = (b[6] << 4) | (b[7] >> 4);
    id[7] = (b[7] << 4) | (b[8] & 0x0f);
    u64::from_be_bytes(id) as i64
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

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
            assert_eq!(derived_legacy_id("user", Uuid::new_v4()), None);
        }
        let derived = derived_platform_id("user", 42);
        assert_eq!(derived_legacy_id("team", derived), None);
    }

    proptest! {
        #[test]
        fn every_legacy_id_comes_back_out_of_its_derived_id(legacy in any::<i64>(), entity in "[a-z_]{1,12}") {
            let derived = derived_platform_id(&entity, legacy);
            prop_assert_eq!(derived_legacy_id(&entity, derived), Some(legacy));
            prop_assert_eq!(digits_as_the_database_reads_them(derived), legacy);
        }

        #[test]
        fn the_database_reads_the_digits_the_same_way_from_any_uuid(bytes in any::<[u8; 16]>()) {
            let uuid = Uuid::from_bytes(bytes);
            prop_assert_eq!(digits_as_the_database_reads_them(uuid), legacy_digits(uuid));
        }
    }
}
