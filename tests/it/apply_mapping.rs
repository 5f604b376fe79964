//! Each entity crosses both ways through the mapping.

use std::time::Duration;

use sync_bridge_tests::{count, until_count, Bridge, Side};

const WAIT: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_reference_entity_crosses_from_legacy_to_platform_through_the_mapping(
) -> anyhow::Result<()> {
    let bridge = Bridge::start("map_l2p").await?;
    bridge
        .legacy()
        .execute(
            "INSERT INTO users (id, email, full_name, role, phone, inserted_at, updated_at) VALUES
               (1, 'ada@example.com', 'Ada King Lovelace', 'admin', '+441234', '2024-01-01 10:00:00', '2024-01-02 10:00:00'),
               (2, 'bob@example.com', 'Bob', 'member', NULL, '2024-01-01 10:00:00', '2024-01-02 10:00:00');
             INSERT INTO categories (id, name, inserted_at, updated_at) VALUES (7, 'field ops', now(), now());
             INSERT INTO teams (id, name, category_id, archived, notes, inserted_at, updated_at) VALUES
               (10, 'North', 7, true, 'notes', '2024-01-01 10:00:00', '2024-01-03 11:00:00'),
               (11, 'South', NULL, false, NULL, '2024-01-01 10:00:00', '2024-01-03 11:00:00');
             INSERT INTO team_members (id, team_id, user_id, role, inserted_at, updated_at) VALUES
               (100, 10, 1, 'lead', '2024-01-01 10:00:00', '2024-01-04 12:00:00');
             INSERT INTO geofences (id, team_id, name, latitude, longitude, radius_m, inserted_at, updated_at) VALUES
               (1000, 10, 'depot', 51.5072, -0.1276, 250, '2024-01-01 10:00:00', '2024-01-05 13:00:00');",
        )
        .await?;
    bridge.converged(WAIT).await?;

    let platform = bridge.platform().client();
    let ada = platform
        .query_one(
            "SELECT given_name, family_name, kind, is_admin, phone_e164, created_at::text, updated_at::text FROM identity.identities WHERE email = 'ada@example.com'",
            &[],
        )
        .await?;
    assert_eq!(ada.get::<_, String>(0), "Ada");
    assert_eq!(ada.get::<_, String>(1), "King Lovelace");
    assert_eq!(ada.get::<_, String>(2), "staff");
    assert!(ada.get::<_, bool>(3), "admin maps to staff + is_admin");
    assert_eq!(ada.get::<_, Option<String>>(4).as_deref(), Some("+441234"));
    assert_eq!(ada.get::<_, String>(5), "2024-01-01 10:00:00+00");
    assert_eq!(ada.get::<_, String>(6), "2024-01-02 10:00:00+00");
    let bob: (String, String) = platform
        .query_one("SELECT given_name, family_name FROM identity.identities WHERE email = 'bob@example.com'", &[])
        .await
        .map(|r| (r.get(0), r.get(1)))?;
    assert_eq!(bob, ("Bob".into(), "".into()));

    let north = platform
        .query_one(
            "SELECT category, archived_at::text, notes FROM org.groups WHERE name = 'North'",
            &[],
        )
        .await?;
    assert_eq!(
        north.get::<_, Option<String>>(0).as_deref(),
        Some("field ops")
    );
    assert_eq!(
        north.get::<_, Option<String>>(1).as_deref(),
        Some("2024-01-03 11:00:00+00"),
        "archived at the row's updated_at"
    );
    let south = platform
        .query_one(
            "SELECT category, archived_at FROM org.groups WHERE name = 'South'",
            &[],
        )
        .await?;
    assert_eq!(south.get::<_, Option<String>>(0), None);

    let membership = platform
        .query_one(
            "SELECT g.name, i.email, m.role FROM org.memberships m JOIN org.groups g ON g.id = m.group_id JOIN identity.identities i ON i.id = m.identity_id",
            &[],
        )
        .await?;
    assert_eq!(membership.get::<_, String>(0), "North");
    assert_eq!(membership.get::<_, String>(1), "ada@example.com");
    assert_eq!(membership.get::<_, String>(2), "lead");

    let zone = platform
        .query_one("SELECT (center->>'lat')::float8, (center->>'lng')::float8, g.name FROM geo.zones z JOIN org.groups g ON g.id = z.group_id", &[])
        .await?;
    assert_eq!(zone.get::<_, f64>(0), 51.5072);
    assert_eq!(zone.get::<_, f64>(1), -0.1276);
    assert_eq!(zone.get::<_, String>(2), "North");
    bridge.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_reference_entity_crosses_from_platform_to_legacy_through_the_mapping(
) -> anyhow::Result<()> {
    let bridge = Bridge::start("map_p2l").await?;
    bridge
        .platform()
        .execute(
            "INSERT INTO identity.identities (id, email, given_name, family_name, kind, is_admin, phone_e164, created_at, updated_at) VALUES
               ('00000000-0000-4000-8000-000000000001', 'cy@example.com', 'Cy', 'Young', 'member', true, NULL, '2024-02-01 10:00:00.123456+00', '2024-02-02 10:00:00.987654+00'),
               ('00000000-0000-4000-8000-000000000002', 'di@example.com', 'Di', '', 'staff', false, '+1555', '2024-02-01 10:00:00+00', '2024-02-02 10:00:00+00');
             INSERT INTO org.groups (id, name, category, archived_at, notes, created_at, updated_at) VALUES
               ('00000000-0000-4000-8000-00000000000a', 'East', 'logistics', '2024-02-03 00:00:00+00', 'n', '2024-02-01 10:00:00+00', '2024-02-03 10:00:00+00');
             INSERT INTO org.memberships (id, group_id, identity_id, role, created_at, updated_at) VALUES
               ('00000000-0000-4000-8000-0000000000aa', '00000000-0000-4000-8000-00000000000a', '00000000-0000-4000-8000-000000000001', 'member', now(), now());
             INSERT INTO geo.zones (id, group_id, name, center, radius_m, created_at, updated_at) VALUES
               ('00000000-0000-4000-8000-000000000aaa', '00000000-0000-4000-8000-00000000000a', 'yard', '{\"lat\": 40.7128, \"lng\": -74.006}', 90, now(), now());",
        )
        .await?;
    bridge.converged(WAIT).await?;

    let legacy = bridge.legacy().client();
    let cy = legacy
        .query_one(
            "SELECT full_name, role, updated_at::text FROM users WHERE email = 'cy@example.com'",
            &[],
        )
        .await?;
    assert_eq!(cy.get::<_, String>(0), "Cy Young");
    assert_eq!(
        cy.get::<_, String>(1),
        "admin",
        "(member, true) has no legacy form: it becomes admin"
    );
    assert_eq!(
        cy.get::<_, String>(2),
        "2024-02-02 10:00:00",
        "truncated to the second, never rounded up"
    );
    let di: (String, String) = legacy
        .query_one(
            "SELECT full_name, role FROM users WHERE email = 'di@example.com'",
            &[],
        )
        .await
        .map(|r| (r.get(0), r.get(1)))?;
    assert_eq!(di, ("Di".into(), "staff".into()));

    let east = legacy
        .query_one("SELECT c.name, t.archived FROM teams t JOIN categories c ON c.id = t.category_id WHERE t.name = 'East'", &[])
        .await?;
    assert_eq!(
        east.get::<_, String>(0),
        "logistics",
        "the category was created by name"
    );
    assert!(east.get::<_, bool>(1));
    let member = legacy
        .query_one(
            "SELECT u.email, t.name FROM team_members m JOIN users u ON u.id = m.user_id JOIN teams t ON t.id = m.team_id",
            &[],
        )
        .await?;
    assert_eq!(member.get::<_, String>(0), "cy@example.com");
    assert_eq!(member.get::<_, String>(1), "East");
    let yard = legacy
        .query_one(
            "SELECT latitude, longitude, radius_m FROM geofences WHERE name = 'yard'",
            &[],
        )
        .await?;
    assert_eq!(yard.get::<_, f64>(0), 40.7128);
    assert_eq!(yard.get::<_, f64>(1), -74.006);
    assert_eq!(yard.get::<_, i32>(2), 90);
    bridge.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_born_on_the_platform_never_takes_the_id_of_a_legacy_row_inserted_past_the_sequence(
) -> anyhow::Result<()> {
    let bridge = Bridge::start("map_ids_past_sequence").await?;
    // Legacy rows inserted with explicit ids: the sequence still stands at
    // its start, and hands out ids these rows have.
    bridge
        .legacy()
        .execute(
            "INSERT INTO users (id, email, full_name, role, inserted_at, updated_at)
             SELECT g, 'explicit' || g || '@example.com', 'Explicit ' || g, 'member',
                    '2030-01-01 00:00:00', '2030-01-01 00:00:00'
             FROM generate_series(1, 5) g",
        )
        .await?;
    until_count(
        "the explicit rows to cross",
        WAIT,
        bridge.platform().client(),
        "SELECT count(*) FROM identity.identities",
        5,
    )
    .await?;
    bridge
        .platform()
        .create_platform_user("platform-born@example.com")
        .await?;
    bridge.converged(WAIT).await?;
    let legacy = bridge.legacy().client();
    assert_eq!(
        count(
            legacy,
            "SELECT count(*) FROM users WHERE email = 'explicit' || id || '@example.com'"
        )
        .await?,
        5,
        "every explicit row keeps its own values"
    );
    assert!(
        count(
            legacy,
            "SELECT id FROM users WHERE email = 'platform-born@example.com'"
        )
        .await?
            > 5,
        "the platform's row got an id no legacy row had"
    );
    bridge.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_column_added_on_either_side_while_the_bridge_runs_does_not_stop_the_other_direction(
) -> anyhow::Result<()> {
    // The mapping does not know the new columns: their values stay where
    // they were written, and every mapped change keeps crossing.
    let bridge = Bridge::start("add_column").await?;
    bridge
        .legacy()
        .execute(
            "INSERT INTO users (id, email, full_name, role, inserted_at, updated_at)
             VALUES (1, 'before@example.com', 'Before Change', 'member', '2030-01-01 00:00:00', '2030-01-01 00:00:00')",
        )
        .await?;
    bridge.converged(WAIT).await?;

    bridge
        .legacy()
        .execute("ALTER TABLE users ADD COLUMN nickname text")
        .await?;
    bridge
        .legacy()
        .execute(
            "INSERT INTO users (id, email, full_name, role, nickname, inserted_at, updated_at)
             VALUES (2, 'after@example.com', 'After Change', 'staff', 'aft', '2030-01-01 00:00:00', '2030-01-01 00:00:00');
             UPDATE users SET full_name = 'Before Renamed', nickname = 'bef', updated_at = '2030-01-01 00:00:05' WHERE id = 1",
        )
        .await?;
    bridge.converged(WAIT).await?;
    let platform = bridge.platform().client();
    let names: Vec<String> = platform
        .query(
            "SELECT given_name || ' ' || family_name FROM identity.identities ORDER BY email",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(names, ["After Change", "Before Renamed"]);

    bridge
        .platform()
        .execute("ALTER TABLE identity.identities ADD COLUMN locale text DEFAULT 'en'")
        .await?;
    bridge
        .platform()
        .execute(
            "UPDATE identity.identities SET family_name = 'Edited', locale = 'fr', updated_at = '2030-01-01 00:00:09+00' WHERE email = 'after@example.com'",
        )
        .await?;
    bridge.converged(WAIT).await?;
    let name: String = bridge
        .legacy()
        .client()
        .query_one("SELECT full_name FROM users WHERE id = 2", &[])
        .await?
        .get(0);
    assert_eq!(name, "After Edited");
    for from in [apply::mapping::Side::Legacy, apply::mapping::Side::Platform] {
        assert_eq!(
            bridge.counters.of(from).snapshot().dead_lettered,
            0,
            "{from:?}: nothing refused"
        );
    }
    bridge.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mapped_column_dropped_while_the_bridge_runs_dead_letters_what_needs_it_and_the_rest_goes_on(
) -> anyhow::Result<()> {
    // The platform drops the column legacy phones map to. Neither direction
    // may guess: a user written to the platform has nowhere to put its
    // phone, and a platform user's change no longer says what the legacy
    // phone should be (writing NULL there would erase it). Both are
    // dead-lettered with a reason naming the column, to replay once the
    // mapping is fixed; other entities keep crossing.
    let mut bridge = Bridge::start("drop_column").await?;
    bridge
        .legacy()
        .execute(
            "INSERT INTO users (id, email, full_name, role, phone, inserted_at, updated_at)
             VALUES (1, 'kept@example.com', 'Kept Phone', 'member', '+33600000001', '2030-01-01 00:00:00', '2030-01-01 00:00:00')",
        )
        .await?;
    bridge.converged(WAIT).await?;

    bridge
        .platform()
        .execute("ALTER TABLE identity.identities DROP COLUMN phone_e164")
        .await?;
    bridge
        .legacy()
        .execute(
            "INSERT INTO users (id, email, full_name, role, phone, inserted_at, updated_at)
             VALUES (2, 'after@example.com', 'After Drop', 'member', '+33600000002', '2030-01-01 00:00:00', '2030-01-01 00:00:00')",
        )
        .await?;
    bridge
        .platform()
        .execute("UPDATE identity.identities SET given_name = 'Renamed', updated_at = '2030-01-01 00:00:05+00' WHERE email = 'kept@example.com'")
        .await?;
    bridge
        .legacy()
        .execute(
            "INSERT INTO teams (id, name, archived, inserted_at, updated_at)
             VALUES (1, 'Still Crossing', false, '2030-01-01 00:00:00', '2030-01-01 00:00:00')",
        )
        .await?;
    until_count(
        "the team on the platform",
        WAIT,
        bridge.platform().client(),
        "SELECT count(*) FROM org.groups WHERE name = 'Still Crossing'",
        1,
    )
    .await?;
    let mut reasons = sync_bridge_tests::dead_letter_reasons(&bridge.dead_letter_topic, 2).await?;
    reasons.sort();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(
        reasons.iter().all(|r| r.contains("phone_e164")),
        "each reason names the column: {reasons:?}"
    );
    assert!(
        !reasons.iter().any(|r| r.contains("+336")),
        "no reason quotes a phone: {reasons:?}"
    );
    let legacy = bridge.legacy().client();
    let kept: (String, Option<String>) = {
        let row = legacy
            .query_one("SELECT full_name, phone FROM users WHERE id = 1", &[])
            .await?;
        (row.get(0), row.get(1))
    };
    assert_eq!(
        kept,
        ("Kept Phone".to_owned(), Some("+33600000001".to_owned())),
        "the legacy user keeps its phone: the change that could not say it was not applied"
    );
    assert_eq!(
        count(
            bridge.platform().client(),
            "SELECT count(*) FROM identity.identities WHERE email = 'after@example.com'"
        )
        .await?,
        0,
        "the user whose phone has nowhere to go is not written without it"
    );
    for from in [apply::mapping::Side::Legacy, apply::mapping::Side::Platform] {
        assert_eq!(
            bridge.counters.of(from).snapshot().dead_lettered,
            1,
            "{from:?}: one transaction refused"
        );
    }
    // Started again, apply refuses the mapping and says why.
    bridge.stop_apply().await?;
    let restarted = tokio::time::timeout(
        WAIT,
        apply::run(
            apply::Config::from_toml(&bridge.apply_toml())?,
            apply::Counters::default(),
            tokio_util::sync::CancellationToken::new(),
        ),
    )
    .await?;
    let error = runtime::error_chain(&restarted.expect_err("the mapping is refused at start"));
    assert!(error.contains("phone_e164"), "{error}");
    bridge.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unchanged_toast_value_keeps_its_target_value() -> anyhow::Result<()> {
    let bridge = Bridge::start("toast_apply").await?;
    // 200 kB of incompressible notes are stored out of line (TOAST). A
    // second team crossed too: the update of the first must leave it alone.
    bridge
        .legacy()
        .execute(
            "INSERT INTO teams (id, name, archived, notes, inserted_at, updated_at)
             SELECT 1, 'Big', false, string_agg(md5(i::text), ''), '2030-01-01 00:00:00', '2030-01-01 00:00:00'
             FROM generate_series(1, 6000) AS i;
             INSERT INTO teams (id, name, archived, notes, inserted_at, updated_at)
             VALUES (2, 'Other', false, 'short', '2030-01-01 00:00:00', '2030-01-01 00:00:00')",
        )
        .await?;
    bridge.converged(WAIT).await?;
    // Only the name changes: Postgres sends the notes as "unchanged".
    bridge
        .legacy()
        .execute(
            "UPDATE teams SET name = 'Bigger', updated_at = '2030-01-01 00:00:05' WHERE id = 1",
        )
        .await?;
    bridge.converged(WAIT).await?;
    let row = bridge
        .platform()
        .client()
        .query_one(
            "SELECT name, length(notes), md5(notes) FROM org.groups WHERE name <> 'Other'",
            &[],
        )
        .await?;
    let names: Vec<String> = bridge
        .platform()
        .client()
        .query("SELECT name FROM org.groups ORDER BY name", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(names, ["Bigger", "Other"], "only the updated team changed");
    let expected: String = bridge
        .legacy()
        .client()
        .query_one("SELECT md5(notes) FROM teams WHERE id = 1", &[])
        .await?
        .get(0);
    assert_eq!(row.get::<_, String>(0), "Bigger");
    assert_eq!(
        row.get::<_, i32>(1),
        6000 * 32,
        "the notes were not overwritten"
    );
    assert_eq!(row.get::<_, String>(2), expected);
    bridge.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tombstones_and_ledger_entries_older_than_the_retention_are_pruned_at_start(
) -> anyhow::Result<()> {
    let mut bridge = Bridge::start("prune").await?;
    bridge.stop_apply().await?;
    // One tombstone and one ledger entry far past the 7-day retention, one
    // of each recent.
    bridge
        .platform()
        .execute(
            "INSERT INTO syncbridge.row_clock (relation, row_key, seconds, tick, origin, deleted)
             VALUES ('identity.identities', 'old', extract(epoch FROM now() - interval '30 days')::int8, 0, 'legacy', true),
                    ('identity.identities', 'recent', extract(epoch FROM now() - interval '1 day')::int8, 0, 'legacy', true);
             INSERT INTO syncbridge.apply_ledger (written_xmin, origin, written_lsn, written_at)
             VALUES ('old', 'legacy', '0/1', now() - interval '30 days'),
                    ('recent', 'legacy', '0/1', now() - interval '1 day')",
        )
        .await?;
    bridge.start_apply()?;
    sync_bridge_tests::eventually(
        "the old tombstone and ledger entry to be pruned",
        WAIT,
        || async {
            let tombstones = tombstones(&bridge).await?;
            let ledger: Vec<String> = bridge
                .platform()
                .client()
                .query(
                    "SELECT written_xmin FROM syncbridge.apply_ledger \
                     WHERE written_xmin IN ('old', 'recent') ORDER BY 1",
                    &[],
                )
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect();
            Ok((tombstones == ["recent"] && ledger == ["recent"]).then_some(()))
        },
    )
    .await?;
    bridge.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tombstones_older_than_the_retention_are_pruned_while_apply_runs() -> anyhow::Result<()> {
    let mut bridge = Bridge::start("prune_live").await?;
    bridge.stop_apply().await?;
    bridge.apply_options = "tombstone_prune_interval = \"1s\"\n".into();
    bridge.start_apply()?;
    let only_the_recent_one_left = || async {
        let left = tombstones(&bridge).await?;
        Ok((left == ["kept"]).then_some(()))
    };
    // Twice, so that the second expired tombstone appears long after the
    // direction started (and pruned once at its start).
    for expired in ["expired-1", "expired-2"] {
        bridge
            .platform()
            .execute(&format!(
                "INSERT INTO syncbridge.row_clock (relation, row_key, seconds, tick, origin, deleted)
                 VALUES ('identity.identities', '{expired}', extract(epoch FROM now() - interval '30 days')::int8, 0, 'legacy', true),
                        ('identity.identities', 'kept', extract(epoch FROM now() - interval '1 day')::int8, 0, 'legacy', true)
                 ON CONFLICT DO NOTHING"
            ))
            .await?;
        sync_bridge_tests::eventually(
            "the expired tombstone to be pruned",
            WAIT,
            only_the_recent_one_left,
        )
        .await?;
    }
    bridge.stop().await
}

/// The keys of the platform side's tombstones, sorted.
async fn tombstones(bridge: &Bridge) -> anyhow::Result<Vec<String>> {
    Ok(bridge
        .platform()
        .client()
        .query(
            "SELECT row_key FROM syncbridge.row_clock WHERE deleted AND origin = 'legacy' ORDER BY row_key",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_legacy_row_crosses_under_its_derived_id_recorded_once_and_found_again_by_it(
) -> anyhow::Result<()> {
    // Teams have no natural key: only the pair leads back to the row.
    let bridge = Bridge::start("map_derived_ids").await?;
    bridge
        .legacy()
        .execute(
            "INSERT INTO teams (id, name, archived, inserted_at, updated_at)
             VALUES (42, 'Derived Team', false, '2030-01-01 00:00:00', '2030-01-01 00:00:00')",
        )
        .await?;
    bridge.converged(WAIT).await?;
    let derived = apply::writer::pairing::derived_platform_id("team", 42);
    let platform = bridge.platform().client();
    let id: uuid::Uuid = platform
        .query_one("SELECT id FROM org.groups", &[])
        .await?
        .get(0);
    assert_eq!(id, derived, "the platform row has the derived id");
    assert_eq!(
        count(
            platform,
            &format!("SELECT count(*) FROM syncbridge.id_derived WHERE entity = 'team' AND legacy_id = 42 AND platform_id = '{derived}'"),
        )
        .await?,
        1
    );
    assert_eq!(
        count(platform, "SELECT count(*) FROM syncbridge.id_map").await?,
        0,
        "a derived pair is recorded in id_derived only"
    );
    // The platform's change is found by its platform id and lands on row 42.
    bridge
        .platform()
        .execute("UPDATE org.groups SET name = 'Edited', updated_at = '2030-01-01 00:00:05+00'")
        .await?;
    until_count(
        "the platform's edit to reach legacy team 42",
        WAIT,
        bridge.legacy().client(),
        "SELECT count(*) FROM teams WHERE id = 42 AND name = 'Edited'",
        1,
    )
    .await?;
    assert_eq!(
        count(bridge.legacy().client(), "SELECT count(*) FROM teams").await?,
        1
    );
    bridge.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_reads_the_legacy_id_out_of_a_derived_id_as_apply_does() -> anyhow::Result<()>
{
    let db =
        sync_bridge_tests::TestDb::create(sync_bridge_tests::Side::Platform, "derived_sql").await?;
    let sql = format!(
        "SELECT {}",
        apply::writer::pairing::derived_legacy_id_sql("$1::uuid")
    );
    for legacy in [0, 1, 42, 0xffff, 1 << 40, i64::MAX, -1, i64::MIN] {
        let derived = apply::writer::pairing::derived_platform_id("team_member", legacy);
        let read: i64 = db.client().query_one(&sql, &[&derived]).await?.get(0);
        assert_eq!(read, legacy, "{derived}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pair_an_earlier_version_recorded_in_id_map_keeps_its_platform_id_both_ways(
) -> anyhow::Result<()> {
    // Before derived ids carried the legacy id, a legacy row got a uuid v5
    // and its pair went to id_map. Such a pair must keep working: no second
    // platform row under the new derived id, and the old id still found.
    // Teams have no natural key, so only the pair can lead to the row.
    let (bridge, earlier) =
        team_paired_before_apply_started("map_earlier_pairs", 7, Side::Platform).await?;
    a_legacy_edit_reaches(&bridge, 7, earlier).await?;
    bridge
        .platform()
        .client()
        .execute(
            "UPDATE org.groups SET name = 'Platform Edit', updated_at = '2030-01-01 00:00:09+00' WHERE id = $1",
            &[&earlier],
        )
        .await?;
    until_count(
        "the platform edit to reach legacy row 7",
        WAIT,
        bridge.legacy().client(),
        "SELECT count(*) FROM teams WHERE id = 7 AND name = 'Platform Edit'",
        1,
    )
    .await?;
    bridge.converged(WAIT).await?;
    let platform = bridge.platform().client();
    assert_eq!(count(platform, "SELECT count(*) FROM org.groups").await?, 1);
    assert_eq!(
        count(platform, "SELECT count(*) FROM syncbridge.id_derived").await?,
        0,
        "no derived pair beside the earlier one"
    );
    bridge.stop().await
}

/// A bridge whose legacy team `id` and a platform group (returned) were
/// paired, in the id_map of `database`, before apply started.
async fn team_paired_before_apply_started(
    hint: &str,
    id: i64,
    database: Side,
) -> anyhow::Result<(Bridge, uuid::Uuid)> {
    let bridge = Bridge::prepare(hint).await?;
    for side in [Side::Legacy, Side::Platform] {
        apply::checkpoint::install(bridge_db(&bridge, side).client(), side.name()).await?;
    }
    bridge
        .legacy()
        .client()
        .execute(
            "INSERT INTO teams (id, name, archived, inserted_at, updated_at)
             VALUES ($1, 'Earlier Team', false, '2030-01-01 00:00:00', '2030-01-01 00:00:00')",
            &[&id],
        )
        .await?;
    let group = new_platform_group(&bridge, "Earlier Team").await?;
    bridge_db(&bridge, database)
        .client()
        .execute(
            "INSERT INTO syncbridge.id_map (entity, legacy_id, platform_id) VALUES ('team', $1, $2)",
            &[&id, &group],
        )
        .await?;
    Ok((bridge.run().await?, group))
}

fn bridge_db(bridge: &Bridge, side: Side) -> &sync_bridge_tests::TestDb {
    match side {
        Side::Legacy => bridge.legacy(),
        Side::Platform => bridge.platform(),
    }
}

/// Inserts a group born on the platform (updated 2030-01-01 00:00:00 UTC);
/// returns its id.
async fn new_platform_group(bridge: &Bridge, name: &str) -> anyhow::Result<uuid::Uuid> {
    let row = bridge
        .platform()
        .client()
        .query_one(
            "INSERT INTO org.groups (id, name, created_at, updated_at)
             VALUES (gen_random_uuid(), $1, '2030-01-01 00:00:00+00', '2030-01-01 00:00:00+00')
             RETURNING id",
            &[&name],
        )
        .await?;
    Ok(row.get(0))
}

/// Renames legacy team `id` and waits for the rename to reach `group`.
async fn a_legacy_edit_reaches(bridge: &Bridge, id: i64, group: uuid::Uuid) -> anyhow::Result<()> {
    bridge
        .legacy()
        .client()
        .execute(
            "UPDATE teams SET name = 'Legacy Edit', updated_at = '2030-01-01 00:00:05' WHERE id = $1",
            &[&id],
        )
        .await?;
    until_count(
        "the legacy edit to reach the platform group it is paired with",
        WAIT,
        bridge.platform().client(),
        &format!("SELECT count(*) FROM org.groups WHERE id = '{group}' AND name = 'Legacy Edit'"),
        1,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_born_on_the_platform_and_renamed_on_legacy_while_apply_runs_stays_one_group(
) -> anyhow::Result<()> {
    // The platform->legacy direction gives the group a legacy id from the
    // legacy sequence while apply runs: above every id paired when apply
    // started. The other direction must still look that id up (teams have
    // no natural key: only the pair leads back to the group).
    let bridge = Bridge::start("map_platform_born_renamed").await?;
    let group = new_platform_group(&bridge, "Platform Born").await?;
    until_count(
        "the group to cross to legacy",
        WAIT,
        bridge.legacy().client(),
        "SELECT count(*) FROM teams WHERE name = 'Platform Born'",
        1,
    )
    .await?;
    bridge
        .legacy()
        .execute(
            "UPDATE teams SET name = 'Renamed On Legacy', updated_at = '2030-01-01 00:00:05'
             WHERE name = 'Platform Born'",
        )
        .await?;
    until_count(
        "the rename to reach the platform's group",
        WAIT,
        bridge.platform().client(),
        &format!(
            "SELECT count(*) FROM org.groups WHERE id = '{group}' AND name = 'Renamed On Legacy'"
        ),
        1,
    )
    .await?;
    bridge.converged(WAIT).await?;
    let platform = bridge.platform().client();
    assert_eq!(count(platform, "SELECT count(*) FROM org.groups").await?, 1);
    assert_eq!(
        count(platform, "SELECT count(*) FROM syncbridge.id_derived").await?,
        0,
        "the legacy team was not taken for a new one"
    );
    bridge.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pair_the_legacy_database_recorded_before_apply_started_is_looked_up_however_high_its_id(
) -> anyhow::Result<()> {
    // A group that crossed from the platform in an earlier run: its pair is
    // in the *legacy* database's id_map, and its legacy id is above any pair
    // the platform database holds.
    let (bridge, group) =
        team_paired_before_apply_started("map_legacy_side_pair", 9000, Side::Legacy).await?;
    a_legacy_edit_reaches(&bridge, 9000, group).await?;
    bridge.converged(WAIT).await?;
    assert_eq!(
        count(
            bridge.platform().client(),
            "SELECT count(*) FROM org.groups"
        )
        .await?,
        1
    );
    bridge.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pair_another_process_records_while_apply_runs_is_found_when_the_transaction_is_applied_again(
) -> anyhow::Result<()> {
    // A replay run beside the live apply writes team 500's group and pair
    // (with apply's echo marker, as apply writes) above the ceiling the
    // live apply read at its start. The live apply then takes team 500 for
    // a row without a pair, and recording the pair again fails on the
    // primary key: the transaction must be applied again with the pair
    // looked up, not dead-lettered.
    let bridge = Bridge::start("map_pair_from_elsewhere").await?;
    bridge
        .legacy()
        .execute(
            "INSERT INTO teams (id, name, archived, inserted_at, updated_at)
             VALUES (1, 'Applied Before', false, '2030-01-01 00:00:00', '2030-01-01 00:00:00')",
        )
        .await?;
    until_count(
        "apply to run (team 1 crossed)",
        WAIT,
        bridge.platform().client(),
        "SELECT count(*) FROM org.groups",
        1,
    )
    .await?;
    let group = apply::writer::pairing::derived_platform_id("team", 500);
    bridge
        .platform()
        .client()
        .batch_execute(&format!(
            "BEGIN;
             SELECT pg_logical_emit_message(true, 'syncbridge.apply', 'a replay');
             INSERT INTO org.groups (id, name, created_at, updated_at)
               VALUES ('{group}', 'Written By A Replay', '2030-01-01 00:00:00+00', '2030-01-01 00:00:00+00');
             INSERT INTO syncbridge.id_derived (entity, legacy_id, platform_id) VALUES ('team', 500, '{group}');
             COMMIT;"
        ))
        .await?;
    bridge
        .legacy()
        .execute(
            "INSERT INTO teams (id, name, archived, inserted_at, updated_at)
             VALUES (500, 'Legacy Team', false, '2030-01-01 00:00:00', '2030-01-01 00:00:05')",
        )
        .await?;
    until_count(
        "the legacy team to reach the group the replay wrote",
        WAIT,
        bridge.platform().client(),
        &format!("SELECT count(*) FROM org.groups WHERE id = '{group}' AND name = 'Legacy Team'"),
        1,
    )
    .await?;
    bridge.converged(WAIT).await?;
    assert_eq!(
        count(
            bridge.platform().client(),
            "SELECT count(*) FROM org.groups"
        )
        .await?,
        2
    );
    assert_eq!(
        count(bridge.legacy().client(), "SELECT count(*) FROM teams").await?,
        2,
        "the replay's write did not come back as another team"
    );
    bridge.stop().await
}
