//! Loading, error messages, `check`, and the conversions' explicit (lossy and edge) cases.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use schemas::event::{Column, Value};

use super::*;

pub(super) const FILE: &str = "schemas/mapping/reference.toml";
pub(super) const REFERENCE: &str = include_str!("../../../schemas/mapping/reference.toml");

pub(super) fn reference() -> Mapping {
    Mapping::from_str(REFERENCE, FILE).unwrap()
}

/// The 1-based line of the only occurrence of `needle` in `text`.
fn line_of(text: &str, needle: &str) -> usize {
    assert_eq!(text.matches(needle).count(), 1, "{needle:?} is not unique");
    let at = text.find(needle).unwrap();
    text[..at].matches('\n').count() + 1
}

/// The reference text with `from` (which must occur once) replaced by `to`.
fn edited(from: &str, to: &str) -> String {
    assert_eq!(REFERENCE.matches(from).count(), 1, "{from:?} is not unique");
    REFERENCE.replacen(from, to, 1)
}

fn load_error(text: &str) -> String {
    Mapping::from_str(text, FILE).unwrap_err().to_string()
}

/// Asserts `message` starts with `FILE:line:` and contains every part.
fn assert_message(message: &str, line: usize, parts: &[&str]) {
    let prefix = format!("{FILE}:{line}: ");
    assert!(
        message.starts_with(&prefix),
        "{message:?} does not start with {prefix:?}"
    );
    for part in parts {
        assert!(message.contains(part), "{message:?} lacks {part:?}");
    }
}

// ---- loading ----

#[test]
fn reference_loads_with_entities_in_order() {
    let m = reference();
    let names: Vec<&str> = m.entities().iter().map(Entity::name).collect();
    assert_eq!(names, ["user", "team", "team_member", "geofence"]);
    assert_eq!(m.side(Side::Legacy).source, "legacy");
    assert_eq!(m.side(Side::Legacy).timestamps, TimestampPrecision::Seconds);
    assert_eq!(
        m.side(Side::Platform).timestamps,
        TimestampPrecision::Microseconds
    );
    assert_eq!(m.side_for_source("platform"), Some(Side::Platform));
    assert_eq!(m.side_for_source("nope"), None);
    assert_eq!(m.conflicts().tie_winner, Side::Legacy);
    assert_eq!(
        m.conflicts().tombstone_retention,
        Duration::from_secs(7 * 24 * 3600)
    );
    assert_eq!(m.files().collect::<Vec<_>>(), [FILE]);
}

#[test]
fn reference_user_fields() {
    let m = reference();
    let user = m.entity("user").unwrap();
    let t = user.table(Side::Platform);
    assert_eq!(
        (t.schema.as_str(), t.table.as_str(), t.key.as_str()),
        ("identity", "identities", "id")
    );
    assert_eq!(user.key_column(Side::Legacy), "id");
    assert_eq!(user.updated_at_column(Side::Platform), "updated_at");
    assert_eq!(user.natural_key_column(Side::Legacy), Some("email"));
    let kinds: Vec<&str> = user.fields().iter().map(FieldDef::kind).collect();
    assert_eq!(kinds, ["copy", "split", "value_map", "copy", "timestamp"]);
    assert_eq!(
        user.fields()[1].field(),
        &Field::Split {
            legacy: "full_name".into(),
            platform: ["given_name".into(), "family_name".into()],
            separator: " ".into(),
        }
    );
    let Field::ValueMap(vm) = user.fields()[2].field() else {
        panic!("not a value_map");
    };
    assert_eq!(vm.platform, ["kind", "is_admin"]);
    assert_eq!(vm.pairs.len(), 3);
    assert_eq!(
        vm.pairs[2],
        ValuePair {
            legacy: vec![Value::Text("admin".into())],
            platform: vec![Value::Text("staff".into()), Value::Bool(true)],
        }
    );
    assert_eq!(vm.platform_only.len(), 1);
    let phone = &user.fields()[3];
    assert_eq!(phone.number(), 4);
    assert_eq!(
        phone.line_of("platform"),
        line_of(REFERENCE, "platform = \"phone_e164\"")
    );
    assert_eq!(phone.line(), phone.line_of("kind") - 1);
    assert_eq!(
        user.field_for_column(Side::Platform, "is_admin")
            .map(|(i, _)| i),
        Some(2)
    );
}

#[test]
fn reference_team_member_and_geofence_fields() {
    let m = reference();
    let team = m.entity("team").unwrap();
    assert!(team.natural_key().is_none());
    let Field::Lookup(l) = team.fields()[1].field() else {
        panic!("not a lookup");
    };
    assert_eq!(l.table.to_string(), "public.categories");
    assert_eq!((l.key.as_str(), l.value.as_str()), ("id", "name"));
    assert!(l.create_missing);
    assert_eq!(l.stamp, ["inserted_at", "updated_at"]);
    assert_eq!(team.fields()[2].kind(), "flag_timestamp");

    let tm = m.entity("team_member").unwrap();
    assert_eq!(tm.references().collect::<Vec<_>>(), ["team", "user"]);
    let geo = m.entity("geofence").unwrap();
    assert_eq!(
        geo.fields()[2].field(),
        &Field::JsonFields {
            legacy: vec!["latitude".into(), "longitude".into()],
            platform: "center".into(),
            fields: vec!["lat".into(), "lng".into()],
        }
    );
    assert_eq!(
        m.entity_for_table(Side::Platform, "org", "groups")
            .map(Entity::name),
        Some("team")
    );
    assert_eq!(
        m.entity_for_table(Side::Legacy, "public", "team_members")
            .map(Entity::name),
        Some("team_member")
    );
    assert!(m
        .entity_for_table(Side::Legacy, "public", "categories")
        .is_none());
    assert!(m.entity_for_table(Side::Legacy, "org", "groups").is_none());
}

#[test]
fn side_other() {
    assert_eq!(Side::Legacy.other(), Side::Platform);
    assert_eq!(Side::Platform.other(), Side::Legacy);
    assert_eq!(Side::Platform.to_string(), "platform");
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "apply-mapping-{name}-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn load_dir_reads_the_project_mapping() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas/mapping");
    let m = Mapping::load_dir(&dir).unwrap();
    assert!(m.entity("user").is_some());
}

#[test]
fn load_dir_joins_files_in_name_order() {
    let dir = temp_dir("join");
    let split = REFERENCE
        .find("[[entity]]\nname = \"team_member\"")
        .unwrap();
    // The second file defines the entities the first one's come before.
    std::fs::write(dir.join("20-rest.toml"), &REFERENCE[split..]).unwrap();
    std::fs::write(dir.join("10-base.toml"), &REFERENCE[..split]).unwrap();
    std::fs::write(dir.join("notes.txt"), "not a mapping").unwrap();
    let m = Mapping::load_dir(&dir).unwrap();
    let names: Vec<&str> = m.entities().iter().map(Entity::name).collect();
    assert_eq!(names, ["user", "team", "team_member", "geofence"]);
    let geo = m.entity("geofence").unwrap();
    assert!(geo.file().ends_with("20-rest.toml"));
    assert_eq!(geo.precision(Side::Legacy), TimestampPrecision::Seconds);

    // [sides] twice: named at the second file.
    std::fs::write(
        dir.join("30-again.toml"),
        "[sides.legacy]\nsource = \"x\"\ntimestamps = \"seconds\"\n",
    )
    .unwrap();
    let e = Mapping::load_dir(&dir).unwrap_err().to_string();
    assert!(
        e.contains("30-again.toml:1: sides.legacy: already defined at "),
        "{e}"
    );
    assert!(e.contains("10-base.toml:11"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn load_dir_without_files_fails() {
    let dir = temp_dir("empty");
    let e = Mapping::load_dir(&dir).unwrap_err().to_string();
    assert!(e.contains("no *.toml mapping file"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(matches!(
        Mapping::load_dir(&dir),
        Err(MappingError::Io { .. })
    ));
}

// ---- load errors: file, line, field ----

#[test]
fn error_unknown_kind() {
    let text = edited("kind = \"lookup\"", "kind = \"lookpu\"");
    let e = load_error(&text);
    assert_message(
        &e,
        line_of(&text, "lookpu"),
        &["entity \"team\" field 2", "unknown kind \"lookpu\""],
    );
}

#[test]
fn error_unknown_key_in_field() {
    let text = edited(
        "separator = \" \"\n",
        "separator = \" \"\n  colour = \"red\"\n",
    );
    let e = load_error(&text);
    assert_message(
        &e,
        line_of(&text, "colour"),
        &[
            "entity \"user\" field 2 (split): unknown key `colour` (kind \"split\" takes: kind, legacy, platform, separator)",
        ],
    );
    // A pair's unknown key is not the field's.
    let text = edited(
        "{ legacy = [\"staff\"], platform = [\"staff\", false] }",
        "{ legacy = [\"staff\"], platform = [\"staff\", false], note = 1 }",
    );
    let e = load_error(&text);
    assert_message(
        &e,
        line_of(&text, "note = 1"),
        &[
            "entity \"user\" field 3 (value_map)",
            "unknown field `note`, expected `legacy` or `platform`",
        ],
    );
}

#[test]
fn error_unknown_key_in_entity() {
    let text = edited(
        "natural_key = { legacy = \"email\"",
        "natural_keys = { legacy = \"email\"",
    );
    let e = load_error(&text);
    assert_message(
        &e,
        line_of(&text, "natural_keys"),
        &["entity \"user\": ", "unknown field `natural_keys`"],
    );
    assert!(!e.contains("field 1"), "{e}");
}

#[test]
fn error_unknown_key_at_top_and_in_sides() {
    let text = edited("[conflicts]", "[conflict]");
    let e = load_error(&text);
    assert_message(
        &e,
        line_of(&text, "[conflict]"),
        &["unknown field `conflict`"],
    );
    let text = edited(
        "timestamps = \"seconds\" ",
        "timestamps = \"seconds\"\nzone = \"utc\" ",
    );
    let e = load_error(&text);
    assert_message(&e, line_of(&text, "zone = "), &["unknown field `zone`"]);
}

#[test]
fn error_key_of_another_kind() {
    let text = edited(
        "kind = \"copy\"\n  legacy = \"email\"",
        "kind = \"copy\"\n  separator = \"-\"\n  legacy = \"email\"",
    );
    let e = load_error(&text);
    assert_message(
        &e,
        line_of(&text, "separator = \"-\""),
        &[
            "entity \"user\" field 1 (copy)",
            "key \"separator\" does not apply to kind \"copy\"",
        ],
    );
}

#[test]
fn error_missing_key() {
    let text = edited("  entity = \"user\"\n", "");
    let e = load_error(&text);
    // Named at the field's header.
    let header = line_of(&text, "legacy = \"user_id\"") - 2;
    assert_message(
        &e,
        header,
        &[
            "entity \"team_member\" field 2 (reference)",
            "missing key \"entity\"",
        ],
    );
}

#[test]
fn error_reference_to_unknown_entity() {
    let text = edited("entity = \"user\"", "entity = \"usr\"");
    let e = load_error(&text);
    assert_message(
        &e,
        line_of(&text, "entity = \"usr\""),
        &[
            "entity \"team_member\" field 2 (reference)",
            "entity \"usr\" is not defined",
        ],
    );
}

#[test]
fn error_duplicate_entity() {
    let text = edited("name = \"geofence\"", "name = \"team\"");
    let e = load_error(&text);
    let first = line_of(REFERENCE, "name = \"team\"") - 1;
    let second = line_of(REFERENCE, "name = \"geofence\"") - 1;
    assert_message(
        &e,
        second,
        &[
            "entity \"team\": ",
            &format!("already defined at {FILE}:{first}"),
        ],
    );
}

#[test]
fn error_value_map_arity() {
    let text = edited(
        "{ legacy = [\"staff\"], platform = [\"staff\", false] }",
        "{ legacy = [\"staff\"], platform = [\"staff\"] }",
    );
    let e = load_error(&text);
    assert_message(
        &e,
        line_of(&text, "platform = [\"staff\"] }"),
        &[
            "entity \"user\" field 3 (value_map)",
            "pairs entry 2: 1 platform values for 2 platform columns",
        ],
    );
    let text = edited(
        "{ platform = [\"member\", true], legacy = [\"admin\"] }",
        "{ platform = [\"member\", true], legacy = [\"admin\", 1] }",
    );
    let e = load_error(&text);
    assert_message(
        &e,
        line_of(&text, "[\"admin\", 1]"),
        &["platform_only entry 1: 2 legacy values for 1 legacy columns"],
    );
}

#[test]
fn error_value_map_ambiguous() {
    let text = edited(
        "{ legacy = [\"staff\"], platform = [\"staff\", false] }",
        "{ legacy = [\"member\"], platform = [\"staff\", false] }",
    );
    let e = load_error(&text);
    assert!(
        e.contains("pairs entry 2: same legacy values as entry 1"),
        "{e}"
    );
    let text = edited(
        "{ platform = [\"member\", true], legacy = [\"admin\"] }",
        "{ platform = [\"staff\", true], legacy = [\"admin\"] }",
    );
    let e = load_error(&text);
    assert!(
        e.contains("platform_only entry 1: these platform values are already mapped"),
        "{e}"
    );
}

#[test]
fn error_legacy_column_used_twice() {
    let text = edited(
        "kind = \"copy\"\n  legacy = \"notes\"",
        "kind = \"copy\"\n  legacy = \"name\" # dup",
    );
    let e = load_error(&text);
    assert_message(
        &e,
        line_of(&text, "# dup"),
        &[
            "entity \"team\" field 4 (copy)",
            "legacy column \"name\" is already mapped by field 1 (copy)",
        ],
    );
    // A field may not write the key or updated_at either.
    let text = edited(
        "kind = \"copy\"\n  legacy = \"notes\"",
        "kind = \"copy\"\n  legacy = \"updated_at\"",
    );
    assert!(load_error(&text).contains("is already mapped by the entity's updated_at"));
}

#[test]
fn error_split_arity() {
    let text = edited(
        "platform = [\"given_name\", \"family_name\"]",
        "platform = [\"given_name\"]",
    );
    let e = load_error(&text);
    assert_message(
        &e,
        line_of(&text, "[\"given_name\"]"),
        &[
            "entity \"user\" field 2 (split)",
            "split needs exactly 2 columns",
        ],
    );
}

#[test]
fn error_json_fields_arity() {
    let text = edited("fields = [\"lat\", \"lng\"]", "fields = [\"lat\"]");
    let e = load_error(&text);
    assert_message(
        &e,
        line_of(&text, "fields = [\"lat\"]"),
        &[
            "entity \"geofence\" field 3 (json_fields)",
            "1 JSON fields for 2 legacy columns",
        ],
    );
}

#[test]
fn error_tie_winner_not_a_side() {
    let text = edited("tie_winner = \"legacy\"", "tie_winner = \"both\"");
    let e = load_error(&text);
    assert_message(
        &e,
        line_of(&text, "tie_winner"),
        &["conflicts: tie_winner: \"both\" is not a side"],
    );
}

#[test]
fn error_bad_values_in_sections() {
    let text = edited("timestamps = \"seconds\"", "timestamps = \"secs\"");
    let e = load_error(&text);
    assert_message(
        &e,
        line_of(&text, "secs"),
        &["sides.legacy: timestamps: unknown precision \"secs\""],
    );
    let text = edited(
        "tombstone_retention = \"7d\"",
        "tombstone_retention = \"7 parsecs\"",
    );
    let e = load_error(&text);
    assert_message(
        &e,
        line_of(&text, "parsecs"),
        &["conflicts: tombstone_retention"],
    );
    let text = edited("table = \"public.users\"", "table = \"users\"");
    let e = load_error(&text);
    assert_message(
        &e,
        line_of(&text, "table = \"users\""),
        &["entity \"user\": legacy.table: \"users\" is not a schema-qualified"],
    );
}

#[test]
fn error_wrong_type_names_the_field() {
    let text = edited("create_missing = true", "create_missing = \"yes\"");
    let e = load_error(&text);
    assert_message(
        &e,
        line_of(&text, "create_missing"),
        &["entity \"team\" field 2 (lookup)", "expected a boolean"],
    );
    let text = edited("legacy = \"phone\"", "legacy = 7");
    let e = load_error(&text);
    assert_message(
        &e,
        line_of(&text, "legacy = 7"),
        &["entity \"user\" field 4 (copy)", "column name"],
    );
}

#[test]
fn error_syntax() {
    let text = edited(
        "platform = { table = \"org.groups\", key = \"id\", updated_at = \"updated_at\" }",
        "platform = { table = \"org.groups\", key = \"id\", updated_at = \"updated_at\"",
    );
    let e = load_error(&text);
    assert_message(&e, line_of(&text, "\"org.groups\""), &[]);
}

#[test]
fn error_missing_sections() {
    let start = REFERENCE.find("[sides.platform]").unwrap();
    let end = REFERENCE.find("[conflicts]").unwrap();
    let text = format!("{}{}", &REFERENCE[..start], &REFERENCE[end..]);
    let e = load_error(&text);
    assert_eq!(e, format!("{FILE}: no [sides.platform] section"));
}

#[test]
fn several_errors_are_all_reported() {
    let text = edited("kind = \"lookup\"", "kind = \"lookpu\"").replacen(
        "tie_winner = \"legacy\"",
        "tie_winner = \"both\"",
        1,
    );
    let err = Mapping::from_str(&text, FILE).unwrap_err();
    assert_eq!(err.problems().len(), 2);
    assert_eq!(err.to_string().lines().count(), 2);
}

// ---- check against a catalog ----

type Table = (
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
);

/// The reference schemas' tables, written out by hand from legacy.sql / platform.sql.
fn reference_tables(side: Side) -> Vec<Table> {
    const TS: &str = "timestamp";
    const TZ: &str = "timestamptz";
    match side {
        Side::Legacy => vec![
            (
                "public",
                "users",
                &[
                    ("id", "int8"),
                    ("email", "varchar"),
                    ("full_name", "varchar"),
                    ("role", "varchar"),
                    ("phone", "varchar"),
                    ("inserted_at", TS),
                    ("updated_at", TS),
                ],
            ),
            (
                "public",
                "categories",
                &[
                    ("id", "int8"),
                    ("name", "varchar"),
                    ("inserted_at", TS),
                    ("updated_at", TS),
                ],
            ),
            (
                "public",
                "teams",
                &[
                    ("id", "int8"),
                    ("name", "varchar"),
                    ("category_id", "int8"),
                    ("archived", "bool"),
                    ("notes", "text"),
                    ("inserted_at", TS),
                    ("updated_at", TS),
                ],
            ),
            (
                "public",
                "team_members",
                &[
                    ("id", "int8"),
                    ("team_id", "int8"),
                    ("user_id", "int8"),
                    ("role", "varchar"),
                    ("inserted_at", TS),
                    ("updated_at", TS),
                ],
            ),
            (
                "public",
                "geofences",
                &[
                    ("id", "int8"),
                    ("team_id", "int8"),
                    ("name", "varchar"),
                    ("latitude", "float8"),
                    ("longitude", "float8"),
                    ("radius_m", "int4"),
                    ("inserted_at", TS),
                    ("updated_at", TS),
                ],
            ),
        ],
        Side::Platform => vec![
            (
                "identity",
                "identities",
                &[
                    ("id", "uuid"),
                    ("email", "text"),
                    ("given_name", "text"),
                    ("family_name", "text"),
                    ("kind", "text"),
                    ("is_admin", "bool"),
                    ("phone_e164", "text"),
                    ("created_at", TZ),
                    ("updated_at", TZ),
                ],
            ),
            (
                "org",
                "groups",
                &[
                    ("id", "uuid"),
                    ("name", "text"),
                    ("category", "text"),
                    ("archived_at", TZ),
                    ("notes", "text"),
                    ("created_at", TZ),
                    ("updated_at", TZ),
                ],
            ),
            (
                "org",
                "memberships",
                &[
                    ("id", "uuid"),
                    ("group_id", "uuid"),
                    ("identity_id", "uuid"),
                    ("role", "text"),
                    ("created_at", TZ),
                    ("updated_at", TZ),
                ],
            ),
            (
                "geo",
                "zones",
                &[
                    ("id", "uuid"),
                    ("group_id", "uuid"),
                    ("name", "text"),
                    ("center", "jsonb"),
                    ("radius_m", "int4"),
                    ("created_at", TZ),
                    ("updated_at", TZ),
                ],
            ),
        ],
    }
}

/// A side's reference catalog without the `(table, column)`s of `skip`
/// (column `*`: the whole table).
fn catalog(side: Side, skip: &[(&str, &str)]) -> Catalog {
    let mut catalog = Catalog::new();
    for (schema, table, columns) in reference_tables(side) {
        if skip.contains(&(table, "*")) {
            continue;
        }
        let kept: Vec<(&str, &str)> = columns
            .iter()
            .copied()
            .filter(|(c, _)| !skip.contains(&(table, c)))
            .collect();
        catalog = catalog.with_table(schema, table, &kept);
    }
    catalog
}

#[test]
fn check_reference_against_its_schemas() {
    let m = reference();
    m.check(Side::Legacy, &catalog(Side::Legacy, &[])).unwrap();
    m.check(Side::Platform, &catalog(Side::Platform, &[]))
        .unwrap();
    let c = catalog(Side::Platform, &[]);
    assert_eq!(c.column_type("geo", "zones", "center"), Some("jsonb"));
    assert!(c.has_table("org", "groups"));
    assert_eq!(c.tables().count(), 4);
}

#[test]
fn check_names_a_missing_field_column() {
    let text = edited("platform = \"phone_e164\"", "platform = \"phone_e164x\"");
    let m = Mapping::from_str(&text, FILE).unwrap();
    let e = m
        .check(Side::Platform, &catalog(Side::Platform, &[]))
        .unwrap_err()
        .to_string();
    let line = line_of(&text, "phone_e164x");
    assert_eq!(
        e,
        format!(
            "{FILE}:{line}: entity \"user\" field 4 (copy): column \"phone_e164x\" does not exist in identity.identities (platform)"
        )
    );
    // The legacy side is not affected.
    m.check(Side::Legacy, &catalog(Side::Legacy, &[])).unwrap();
}

#[test]
fn check_names_a_missing_column_of_the_catalog() {
    let e = reference()
        .check(
            Side::Platform,
            &catalog(Side::Platform, &[("identities", "phone_e164")]),
        )
        .unwrap_err()
        .to_string();
    assert_message(
        &e,
        line_of(REFERENCE, "platform = \"phone_e164\""),
        &["entity \"user\" field 4 (copy): column \"phone_e164\" does not exist in identity.identities (platform)"],
    );
}

#[test]
fn check_names_key_table_and_lookup_columns() {
    let m = reference();
    let e = m
        .check(
            Side::Platform,
            &catalog(Side::Platform, &[("groups", "updated_at")]),
        )
        .unwrap_err()
        .to_string();
    assert_message(
        &e,
        line_of(REFERENCE, "platform = { table = \"org.groups\""),
        &["entity \"team\": updated_at: column \"updated_at\" does not exist in org.groups (platform)"],
    );
    let e = m
        .check(Side::Legacy, &catalog(Side::Legacy, &[("users", "email")]))
        .unwrap_err()
        .to_string();
    // The natural key (and the copy field) name it.
    assert_message(
        &e,
        line_of(REFERENCE, "natural_key = { legacy = \"email\""),
        &["entity \"user\": natural_key: column \"email\" does not exist in public.users (legacy)"],
    );

    let broken = catalog(
        Side::Legacy,
        &[
            ("categories", "name"),
            ("categories", "updated_at"),
            ("geofences", "*"),
        ],
    );
    let err = m.check(Side::Legacy, &broken).unwrap_err();
    let lines: Vec<String> = err.problems().iter().map(ToString::to_string).collect();
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert_message(
        &lines[0],
        line_of(REFERENCE, "value = \"name\""),
        &["entity \"team\" field 2 (lookup): column \"name\" does not exist in public.categories (legacy)"],
    );
    assert_message(
        &lines[1],
        line_of(REFERENCE, "stamp = "),
        &["column \"updated_at\" does not exist in public.categories (legacy)"],
    );
    assert_message(
        &lines[2],
        line_of(REFERENCE, "legacy = { table = \"public.geofences\""),
        &["entity \"geofence\": table public.geofences does not exist (legacy)"],
    );
    let e = m
        .check(Side::Legacy, &catalog(Side::Legacy, &[("categories", "*")]))
        .unwrap_err()
        .to_string();
    assert_message(
        &e,
        line_of(REFERENCE, "table = \"public.categories\""),
        &["lookup table public.categories does not exist (legacy)"],
    );
}

// ---- conversions: explicit cases ----

fn row(pairs: &[(&str, Value)]) -> Vec<Column> {
    pairs
        .iter()
        .map(|(n, v)| Column {
            name: (*n).to_owned(),
            type_name: String::new(),
            type_oid: 0,
            value: v.clone(),
        })
        .collect()
}

fn convert(entity: &str, from: Side, columns: &[Column]) -> Result<TargetRow, ConvertError> {
    let m = reference();
    to_target(m.entity(entity).unwrap(), from, &Row::from_columns(columns))
}

fn text(s: &str) -> Value {
    Value::Text(s.to_owned())
}

const T0: i64 = 1_700_000_000_000_000;

fn platform_user(given: &str, family: &str, kind: &str, admin: bool) -> Vec<Column> {
    row(&[
        ("email", text("a@example.com")),
        ("given_name", text(given)),
        ("family_name", text(family)),
        ("kind", text(kind)),
        ("is_admin", Value::Bool(admin)),
        ("phone_e164", Value::Null),
        ("created_at", Value::TimestampTz(T0)),
        ("updated_at", Value::TimestampTz(T0)),
    ])
}

fn legacy_user(full_name: &str, role: &str) -> Vec<Column> {
    row(&[
        ("id", Value::Int(1)),
        ("email", text("a@example.com")),
        ("full_name", text(full_name)),
        ("role", text(role)),
        ("phone", Value::Null),
        ("inserted_at", Value::Timestamp(T0)),
        ("updated_at", Value::Timestamp(T0)),
    ])
}

fn value(row: &TargetRow, column: &str) -> Value {
    match row.get(column) {
        Some(TargetValue::Value(v)) => v.clone(),
        other => panic!("{column}: {other:?}"),
    }
}

#[test]
fn user_to_platform_layout() {
    let out = convert(
        "user",
        Side::Legacy,
        &legacy_user("Ada King Lovelace", "admin"),
    )
    .unwrap();
    let columns: Vec<&str> = out.iter().map(|(c, _)| c).collect();
    assert_eq!(
        columns,
        [
            "email",
            "given_name",
            "family_name",
            "kind",
            "is_admin",
            "phone_e164",
            "created_at",
            "updated_at"
        ]
    );
    assert_eq!(value(&out, "given_name"), text("Ada"));
    assert_eq!(value(&out, "family_name"), text("King Lovelace"));
    assert_eq!(value(&out, "kind"), text("staff"));
    assert_eq!(value(&out, "is_admin"), Value::Bool(true));
    assert_eq!(value(&out, "updated_at"), Value::TimestampTz(T0));
    let out = convert("user", Side::Legacy, &legacy_user("Plato", "member")).unwrap();
    assert_eq!(value(&out, "family_name"), text(""));
}

#[test]
fn lossy_member_admin_becomes_staff_admin() {
    let out = convert(
        "user",
        Side::Platform,
        &platform_user("A", "B", "member", true),
    )
    .unwrap();
    assert_eq!(value(&out, "role"), text("admin"));
    let back = convert("user", Side::Legacy, &legacy_user("A B", "admin")).unwrap();
    assert_eq!(value(&back, "kind"), text("staff"));
    assert_eq!(value(&back, "is_admin"), Value::Bool(true));
}

#[test]
fn lossy_platform_timestamps_truncate_to_seconds() {
    let mut cols = platform_user("A", "", "staff", false);
    cols[6].value = Value::TimestampTz(T0 + 999_999);
    cols[7].value = Value::TimestampTz(T0 + 500_000);
    let out = convert("user", Side::Platform, &cols).unwrap();
    assert_eq!(value(&out, "inserted_at"), Value::Timestamp(T0));
    assert_eq!(value(&out, "updated_at"), Value::Timestamp(T0));
    // Before 1970 too: towards the past, never up.
    cols[7].value = Value::TimestampTz(-1);
    let out = convert("user", Side::Platform, &cols).unwrap();
    assert_eq!(value(&out, "updated_at"), Value::Timestamp(-1_000_000));
    // infinity stays infinity.
    cols[7].value = Value::TimestampTz(i64::MAX);
    let out = convert("user", Side::Platform, &cols).unwrap();
    assert_eq!(value(&out, "updated_at"), Value::Timestamp(i64::MAX));
    let user = reference();
    let user = user.entity("user").unwrap();
    assert_eq!(
        user.updated_at_to_target(Side::Platform, &Value::TimestampTz(T0 + 1))
            .unwrap(),
        TargetValue::Value(Value::Timestamp(T0))
    );
}

#[test]
fn lossy_given_name_with_separator() {
    let out = convert(
        "user",
        Side::Platform,
        &platform_user("Mary Ann", "", "member", false),
    )
    .unwrap();
    assert_eq!(value(&out, "full_name"), text("Mary Ann"));
    let back = convert("user", Side::Legacy, &legacy_user("Mary Ann", "member")).unwrap();
    assert_eq!(value(&back, "given_name"), text("Mary"));
    assert_eq!(value(&back, "family_name"), text("Ann"));
}

#[test]
fn lossy_full_name_ending_in_its_only_separator() {
    let out = convert("user", Side::Legacy, &legacy_user("Mary ", "member")).unwrap();
    assert_eq!(value(&out, "given_name"), text("Mary"));
    assert_eq!(value(&out, "family_name"), text(""));
    let back = convert(
        "user",
        Side::Platform,
        &platform_user("Mary", "", "member", false),
    )
    .unwrap();
    assert_eq!(value(&back, "full_name"), text("Mary"));
}

#[test]
fn split_joins_and_splits() {
    let out = convert(
        "user",
        Side::Platform,
        &platform_user("", "Solo", "member", false),
    )
    .unwrap();
    assert_eq!(value(&out, "full_name"), text(" Solo"));
    let out = convert(
        "user",
        Side::Platform,
        &platform_user("Jo", "van der Berg", "member", false),
    )
    .unwrap();
    assert_eq!(value(&out, "full_name"), text("Jo van der Berg"));
}

#[test]
fn unmapped_value_is_an_error_without_the_value() {
    let e = convert("user", Side::Legacy, &legacy_user("A", "superuser")).unwrap_err();
    assert_eq!(e.problem, ConvertProblem::Unmapped);
    let message = e.to_string();
    assert_eq!(
        message,
        "entity \"user\" field 3 (value_map), column \"role\": no pair maps the row's values"
    );
    assert!(!message.contains("superuser"));
    let e = convert(
        "user",
        Side::Platform,
        &platform_user("A", "", "guest", false),
    )
    .unwrap_err();
    assert_eq!(e.column, "kind, is_admin");
    assert!(!e.to_string().contains("guest"));
}

#[test]
fn missing_column_and_wrong_type_are_errors() {
    let mut cols = legacy_user("A", "member");
    cols.retain(|c| c.name != "phone");
    let e = convert("user", Side::Legacy, &cols).unwrap_err();
    assert_eq!(
        (e.column.as_str(), &e.problem),
        ("phone", &ConvertProblem::MissingColumn)
    );
    let mut cols = legacy_user("A", "member");
    cols[5].value = text("2024-01-01 00:00:00");
    let e = convert("user", Side::Legacy, &cols).unwrap_err();
    assert_eq!(
        e.to_string(),
        "entity \"user\" field 5 (timestamp), column \"inserted_at\": expected a timestamp, found text"
    );
}

fn legacy_team(category: Value, archived: bool, notes: Value) -> Vec<Column> {
    row(&[
        ("id", Value::Int(9)),
        ("name", text("Ops")),
        ("category_id", category),
        ("archived", Value::Bool(archived)),
        ("notes", notes),
        ("inserted_at", Value::Timestamp(T0)),
        ("updated_at", Value::Timestamp(T0 + 5_000_000)),
    ])
}

fn platform_team(category: Value, archived_at: Value, notes: Value) -> Vec<Column> {
    row(&[
        ("name", text("Ops")),
        ("category", category),
        ("archived_at", archived_at),
        ("notes", notes),
        ("created_at", Value::TimestampTz(T0)),
        ("updated_at", Value::TimestampTz(T0 + 5_000_000)),
    ])
}

#[test]
fn lookup_placeholders() {
    let out = convert(
        "team",
        Side::Legacy,
        &legacy_team(Value::Int(3), false, Value::Null),
    )
    .unwrap();
    assert_eq!(
        out.get("category"),
        Some(&TargetValue::LookupByKey {
            field: 1,
            key: Value::Int(3)
        })
    );
    let out = convert(
        "team",
        Side::Platform,
        &platform_team(text("Sales"), Value::Null, Value::Null),
    )
    .unwrap();
    assert_eq!(
        out.get("category_id"),
        Some(&TargetValue::LookupByValue {
            field: 1,
            value: text("Sales")
        })
    );
    let out = convert(
        "team",
        Side::Legacy,
        &legacy_team(Value::Null, false, Value::Null),
    )
    .unwrap();
    assert_eq!(value(&out, "category"), Value::Null);
    let out = convert(
        "team",
        Side::Platform,
        &platform_team(Value::Null, Value::Null, Value::Null),
    )
    .unwrap();
    assert_eq!(value(&out, "category_id"), Value::Null);
}

#[test]
fn flag_timestamp_both_ways() {
    let out = convert(
        "team",
        Side::Legacy,
        &legacy_team(Value::Null, true, Value::Null),
    )
    .unwrap();
    assert_eq!(
        out.get("archived_at"),
        Some(&TargetValue::KeepExistingOr(Value::TimestampTz(
            T0 + 5_000_000
        )))
    );
    let out = convert(
        "team",
        Side::Legacy,
        &legacy_team(Value::Null, false, Value::Null),
    )
    .unwrap();
    assert_eq!(value(&out, "archived_at"), Value::Null);
    let out = convert(
        "team",
        Side::Platform,
        &platform_team(Value::Null, Value::TimestampTz(T0 + 123), Value::Null),
    )
    .unwrap();
    assert_eq!(value(&out, "archived"), Value::Bool(true));
    let out = convert(
        "team",
        Side::Platform,
        &platform_team(Value::Null, Value::Null, Value::Null),
    )
    .unwrap();
    assert_eq!(value(&out, "archived"), Value::Bool(false));
}

#[test]
fn unchanged_toast_stays_unchanged() {
    for (from, cols) in [
        (
            Side::Legacy,
            legacy_team(Value::Null, false, Value::Unchanged),
        ),
        (
            Side::Platform,
            platform_team(Value::Null, Value::Null, Value::Unchanged),
        ),
    ] {
        let out = convert("team", from, &cols).unwrap();
        assert_eq!(out.get("notes"), Some(&TargetValue::Unchanged));
    }
    // One unchanged input of a two-column field: every target column unchanged.
    let mut cols = platform_user("A", "B", "member", false);
    cols[2].value = Value::Unchanged;
    let out = convert("user", Side::Platform, &cols).unwrap();
    assert_eq!(out.get("full_name"), Some(&TargetValue::Unchanged));
    let out = convert("user", Side::Legacy, &{
        let mut c = legacy_user("A B", "member");
        c[2].value = Value::Unchanged;
        c
    })
    .unwrap();
    assert_eq!(out.get("given_name"), Some(&TargetValue::Unchanged));
    assert_eq!(out.get("family_name"), Some(&TargetValue::Unchanged));
    let mut geo = legacy_geofence(1.5, -2.25);
    geo[3].value = Value::Unchanged;
    let out = convert("geofence", Side::Legacy, &geo).unwrap();
    assert_eq!(out.get("center"), Some(&TargetValue::Unchanged));
}

fn legacy_geofence(lat: f64, lng: f64) -> Vec<Column> {
    row(&[
        ("team_id", Value::Int(4)),
        ("name", text("Yard")),
        ("latitude", Value::Float(lat)),
        ("longitude", Value::Float(lng)),
        ("radius_m", Value::Int(50)),
        ("inserted_at", Value::Timestamp(T0)),
        ("updated_at", Value::Timestamp(T0)),
    ])
}

fn platform_geofence(center: &str) -> Vec<Column> {
    row(&[
        ("group_id", Value::Null),
        ("name", text("Yard")),
        ("center", Value::Json(center.to_owned())),
        ("radius_m", Value::Int(50)),
        ("created_at", Value::TimestampTz(T0)),
        ("updated_at", Value::TimestampTz(T0)),
    ])
}

#[test]
fn json_fields_and_reference_shapes() {
    let out = convert("geofence", Side::Legacy, &legacy_geofence(1.5, -2.25)).unwrap();
    assert_eq!(
        value(&out, "center"),
        Value::Json("{\"lat\":1.5,\"lng\":-2.25}".into())
    );
    assert_eq!(
        out.get("group_id"),
        Some(&TargetValue::Reference {
            entity: "team".into(),
            id: Value::Int(4)
        })
    );
    let out = convert(
        "geofence",
        Side::Platform,
        &platform_geofence("{\"lat\":1.5,\"lng\":-2.25}"),
    )
    .unwrap();
    assert_eq!(value(&out, "latitude"), Value::Float(1.5));
    assert_eq!(value(&out, "longitude"), Value::Float(-2.25));
    assert_eq!(value(&out, "team_id"), Value::Null);
}

#[test]
fn lossy_json_is_rewritten_canonically() {
    // jsonb's own output form, other members, another order, exponents.
    let center = "{\"lng\": -0.25e1, \"name\": {\"x\": [1, \"}\"]}, \"lat\": 15E-1}";
    let out = convert("geofence", Side::Platform, &platform_geofence(center)).unwrap();
    assert_eq!(value(&out, "latitude"), Value::Float(1.5));
    assert_eq!(value(&out, "longitude"), Value::Float(-2.5));
    let back = convert("geofence", Side::Legacy, &legacy_geofence(1.5, -2.5)).unwrap();
    assert_eq!(
        value(&back, "center"),
        Value::Json("{\"lat\":1.5,\"lng\":-2.5}".into())
    );
}

#[test]
fn json_errors_name_the_field() {
    for (center, problem) in [
        (
            "{\"lat\": 1}",
            ConvertProblem::MissingJsonField("lng".into()),
        ),
        (
            "{\"lat\": 1, \"lng\": \"2\"}",
            ConvertProblem::JsonFieldNotNumber("lng".into()),
        ),
        ("[1, 2]", ConvertProblem::NotJsonObject),
        ("{\"lat\": 1,", ConvertProblem::NotJsonObject),
    ] {
        let e = convert("geofence", Side::Platform, &platform_geofence(center)).unwrap_err();
        assert_eq!(e.problem, problem, "{center}");
        assert_eq!(e.column, "center");
    }
    let e = convert("geofence", Side::Legacy, &legacy_geofence(f64::NAN, 0.0)).unwrap_err();
    assert_eq!(
        (e.column.as_str(), &e.problem),
        ("latitude", &ConvertProblem::NotFinite)
    );
}
