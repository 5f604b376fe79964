//! Round trips of generated rows for every reference entity, both ways.
//!
//! Rows satisfy the reference schemas (roles from the check constraints,
//! whole-second timestamps where the round trip must be exact, ...) and
//! leave out the documented lossy cases, which `tests.rs` covers one by one.
//! Lookup and reference placeholders are resolved by a fake engine: category
//! id `n` <-> name `category-n`, legacy id `n` <-> a uuid holding `n`.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::OnceLock;

use proptest::prelude::*;
use schemas::event::Value;

use super::tests::{FILE, REFERENCE};
use super::*;

type OwnedRow = BTreeMap<String, Value>;

fn mapping() -> &'static Mapping {
    static MAPPING: OnceLock<Mapping> = OnceLock::new();
    MAPPING.get_or_init(|| Mapping::from_str(REFERENCE, FILE).unwrap())
}

fn fake_uuid(n: i64) -> [u8; 16] {
    let mut u = [0u8; 16];
    u[0] = 0xab;
    u[8..].copy_from_slice(&n.to_be_bytes());
    u
}

fn fake_id(u: [u8; 16]) -> i64 {
    assert_eq!(u[0], 0xab);
    i64::from_be_bytes(u[8..].try_into().unwrap())
}

/// What the engine does with a target value, faked without a database.
/// `existing` is the target row as it already is (if any).
fn resolve(
    entity: &Entity,
    to: Side,
    column: &str,
    value: TargetValue,
    existing: Option<&OwnedRow>,
) -> Value {
    match value {
        TargetValue::Value(v) => v,
        TargetValue::Unchanged => Value::Unchanged,
        TargetValue::KeepExistingOr(v) => match existing.and_then(|row| row.get(column)) {
            Some(e) if !matches!(e, Value::Null | Value::Unchanged) => e.clone(),
            _ => v,
        },
        TargetValue::LookupByKey { field, key } => {
            assert!(matches!(entity.fields()[field].field(), Field::Lookup(_)));
            assert_eq!(to, Side::Platform);
            let Value::Int(n) = key else {
                panic!("lookup key {key:?}")
            };
            Value::Text(format!("category-{n}"))
        }
        TargetValue::LookupByValue { field, value } => {
            assert!(matches!(entity.fields()[field].field(), Field::Lookup(_)));
            assert_eq!(to, Side::Legacy);
            let Value::Text(name) = value else {
                panic!("lookup value {value:?}")
            };
            Value::Int(name.strip_prefix("category-").unwrap().parse().unwrap())
        }
        TargetValue::Reference { entity: target, id } => {
            let (_, def) = entity.field_for_column(to, column).unwrap();
            assert!(
                matches!(def.field(), Field::Reference { entity, .. } if *entity == target),
                "{column} -> {target}"
            );
            match (to, id) {
                (Side::Platform, Value::Int(n)) => Value::Uuid(fake_uuid(n)),
                (Side::Legacy, Value::Uuid(u)) => Value::Int(fake_id(u)),
                (to, id) => panic!("reference to {to}: {id:?}"),
            }
        }
    }
}

fn convert(name: &str, from: Side, row: &OwnedRow, existing: Option<&OwnedRow>) -> OwnedRow {
    let entity = mapping().entity(name).unwrap();
    let source: Row<'_> = row.iter().map(|(c, v)| (c.as_str(), v)).collect();
    let target = to_target(entity, from, &source).unwrap();
    target
        .columns
        .into_iter()
        .map(|(c, v)| {
            let value = resolve(entity, from.other(), &c, v, existing);
            (c, value)
        })
        .collect()
}

/// `from` -> other side -> `from`, the way back writing over the original row.
fn round_trip(name: &str, from: Side, original: &OwnedRow) -> OwnedRow {
    let there = convert(name, from, original, None);
    convert(name, from.other(), &there, Some(original))
}

fn row(pairs: Vec<(&str, Value)>) -> OwnedRow {
    pairs.into_iter().map(|(c, v)| (c.to_owned(), v)).collect()
}

// ---- generators ----

/// 1900-01-01 .. 2100-01-01, whole seconds.
fn seconds() -> impl Strategy<Value = i64> {
    (-2_208_988_800i64..4_102_444_800).prop_map(|s| s * 1_000_000)
}

fn legacy_ts() -> impl Strategy<Value = Value> {
    seconds().prop_map(Value::Timestamp)
}

fn platform_ts() -> impl Strategy<Value = Value> {
    seconds().prop_map(Value::TimestampTz)
}

fn text() -> impl Strategy<Value = String> {
    "\\PC{0,16}"
}

fn opt_text() -> impl Strategy<Value = Value> {
    prop::option::of(text()).prop_map(|t| t.map_or(Value::Null, Value::Text))
}

/// A large text column: NULL, a value, or an unchanged TOAST value.
fn toastable() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        Just(Value::Unchanged),
        text().prop_map(Value::Text),
        "\\PC{200,400}".prop_map(Value::Text),
    ]
}

/// Not lossy: the first space is not the last character.
fn full_name() -> impl Strategy<Value = String> {
    text().prop_filter("only separator at the end", |s| {
        s.find(' ') != Some(s.len().saturating_sub(1))
    })
}

fn id() -> impl Strategy<Value = i64> {
    1i64..=i64::MAX
}

/// Any finite float, with plenty of plausible coordinates.
fn coordinate() -> impl Strategy<Value = f64> {
    use prop::num::f64::{NEGATIVE, NORMAL, POSITIVE, SUBNORMAL, ZERO};
    prop_oneof![
        -180.0f64..180.0,
        POSITIVE | NEGATIVE | NORMAL | SUBNORMAL | ZERO,
    ]
}

fn legacy_user() -> impl Strategy<Value = OwnedRow> {
    (
        text(),
        full_name(),
        prop::sample::select(vec!["member", "staff", "admin"]),
        opt_text(),
        legacy_ts(),
        legacy_ts(),
    )
        .prop_map(|(email, full_name, role, phone, inserted, updated)| {
            row(vec![
                ("email", Value::Text(email)),
                ("full_name", Value::Text(full_name)),
                ("role", Value::Text(role.to_owned())),
                ("phone", phone),
                ("inserted_at", inserted),
                ("updated_at", updated),
            ])
        })
}

fn platform_user() -> impl Strategy<Value = OwnedRow> {
    (
        text(),
        text().prop_filter("separator in given_name", |g| !g.contains(' ')),
        text(),
        prop::sample::select(vec![("member", false), ("staff", false), ("staff", true)]),
        opt_text(),
        platform_ts(),
        platform_ts(),
    )
        .prop_map(
            |(email, given, family, (kind, admin), phone, created, updated)| {
                row(vec![
                    ("email", Value::Text(email)),
                    ("given_name", Value::Text(given)),
                    ("family_name", Value::Text(family)),
                    ("kind", Value::Text(kind.to_owned())),
                    ("is_admin", Value::Bool(admin)),
                    ("phone_e164", phone),
                    ("created_at", created),
                    ("updated_at", updated),
                ])
            },
        )
}

fn legacy_team() -> impl Strategy<Value = OwnedRow> {
    (
        text(),
        prop::option::of(id()),
        any::<bool>(),
        toastable(),
        legacy_ts(),
        legacy_ts(),
    )
        .prop_map(|(name, category, archived, notes, inserted, updated)| {
            row(vec![
                ("name", Value::Text(name)),
                ("category_id", category.map_or(Value::Null, Value::Int)),
                ("archived", Value::Bool(archived)),
                ("notes", notes),
                ("inserted_at", inserted),
                ("updated_at", updated),
            ])
        })
}

fn platform_team() -> impl Strategy<Value = OwnedRow> {
    (
        text(),
        prop::option::of(id()),
        prop::option::of(platform_ts()),
        toastable(),
        platform_ts(),
        platform_ts(),
    )
        .prop_map(|(name, category, archived_at, notes, created, updated)| {
            row(vec![
                ("name", Value::Text(name)),
                (
                    "category",
                    category.map_or(Value::Null, |n| Value::Text(format!("category-{n}"))),
                ),
                ("archived_at", archived_at.unwrap_or(Value::Null)),
                ("notes", notes),
                ("created_at", created),
                ("updated_at", updated),
            ])
        })
}

fn legacy_team_member() -> impl Strategy<Value = OwnedRow> {
    (
        id(),
        id(),
        prop::sample::select(vec!["lead", "member"]),
        legacy_ts(),
        legacy_ts(),
    )
        .prop_map(|(team, user, role, inserted, updated)| {
            row(vec![
                ("team_id", Value::Int(team)),
                ("user_id", Value::Int(user)),
                ("role", Value::Text(role.to_owned())),
                ("inserted_at", inserted),
                ("updated_at", updated),
            ])
        })
}

fn platform_team_member() -> impl Strategy<Value = OwnedRow> {
    (
        id(),
        id(),
        prop::sample::select(vec!["lead", "member"]),
        platform_ts(),
        platform_ts(),
    )
        .prop_map(|(group, identity, role, created, updated)| {
            row(vec![
                ("group_id", Value::Uuid(fake_uuid(group))),
                ("identity_id", Value::Uuid(fake_uuid(identity))),
                ("role", Value::Text(role.to_owned())),
                ("created_at", created),
                ("updated_at", updated),
            ])
        })
}

fn legacy_geofence() -> impl Strategy<Value = OwnedRow> {
    (
        prop::option::of(id()),
        text(),
        coordinate(),
        coordinate(),
        1i64..=i64::from(i32::MAX),
        legacy_ts(),
        legacy_ts(),
    )
        .prop_map(|(team, name, lat, lng, radius, inserted, updated)| {
            row(vec![
                ("team_id", team.map_or(Value::Null, Value::Int)),
                ("name", Value::Text(name)),
                ("latitude", Value::Float(lat)),
                ("longitude", Value::Float(lng)),
                ("radius_m", Value::Int(radius)),
                ("inserted_at", inserted),
                ("updated_at", updated),
            ])
        })
}

fn platform_geofence() -> impl Strategy<Value = OwnedRow> {
    (
        prop::option::of(id()),
        text(),
        coordinate(),
        coordinate(),
        1i64..=i64::from(i32::MAX),
        platform_ts(),
        platform_ts(),
    )
        .prop_map(|(group, name, lat, lng, radius, created, updated)| {
            let center = format!(
                "{{\"lat\":{},\"lng\":{}}}",
                serde_json::to_string(&lat).unwrap(),
                serde_json::to_string(&lng).unwrap()
            );
            row(vec![
                (
                    "group_id",
                    group.map_or(Value::Null, |n| Value::Uuid(fake_uuid(n))),
                ),
                ("name", Value::Text(name)),
                ("center", Value::Json(center)),
                ("radius_m", Value::Int(radius)),
                ("created_at", created),
                ("updated_at", updated),
            ])
        })
}

proptest! {
    #[test]
    fn user_legacy_round_trip(original in legacy_user()) {
        prop_assert_eq!(round_trip("user", Side::Legacy, &original), original);
    }

    #[test]
    fn user_platform_round_trip(original in platform_user()) {
        prop_assert_eq!(round_trip("user", Side::Platform, &original), original);
    }

    #[test]
    fn team_legacy_round_trip(original in legacy_team()) {
        prop_assert_eq!(round_trip("team", Side::Legacy, &original), original);
    }

    #[test]
    fn team_platform_round_trip(original in platform_team()) {
        prop_assert_eq!(round_trip("team", Side::Platform, &original), original);
    }

    #[test]
    fn team_member_legacy_round_trip(original in legacy_team_member()) {
        prop_assert_eq!(round_trip("team_member", Side::Legacy, &original), original);
    }

    #[test]
    fn team_member_platform_round_trip(original in platform_team_member()) {
        prop_assert_eq!(round_trip("team_member", Side::Platform, &original), original);
    }

    #[test]
    fn geofence_legacy_round_trip(original in legacy_geofence()) {
        prop_assert_eq!(round_trip("geofence", Side::Legacy, &original), original);
    }

    #[test]
    fn geofence_platform_round_trip(original in platform_geofence()) {
        prop_assert_eq!(round_trip("geofence", Side::Platform, &original), original);
    }

    /// Lossy case 2 in general: legacy gets the platform time floored to the second.
    #[test]
    fn platform_micros_floor_to_seconds(
        mut original in platform_user(),
        micros in -2_208_988_800_000_000i64..4_102_444_800_000_000,
    ) {
        original.insert("updated_at".into(), Value::TimestampTz(micros));
        let legacy = convert("user", Side::Platform, &original, None);
        let Some(Value::Timestamp(t)) = legacy.get("updated_at") else {
            panic!("no timestamp");
        };
        prop_assert!(*t <= micros && micros - *t < 1_000_000 && t % 1_000_000 == 0);
    }

    /// An unmapped value never shows up in the error.
    #[test]
    fn unmapped_errors_hold_no_value(
        mut original in legacy_user(),
        role in "Q[A-Z]{8}",
    ) {
        original.insert("role".into(), Value::Text(role.clone()));
        let source: Row<'_> = original.iter().map(|(c, v)| (c.as_str(), v)).collect();
        let entity = mapping().entity("user").unwrap();
        let e = to_target(entity, Side::Legacy, &source).unwrap_err();
        prop_assert!(!e.to_string().contains(&role));
        let debug = format!("{:?}", e);
        prop_assert!(!debug.contains(&role));
    }
}
