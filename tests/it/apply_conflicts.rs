//! Newer wins, inside the target database; echoes never bounce; deletes race
//! updates with a documented outcome; concurrent writers converge.

use std::time::Duration;

use sync_bridge_tests::{connect, count, eventually, random_writes, Bridge, Side};

const WAIT: Duration = Duration::from_secs(120);

/// A bridge with one user (id 1) on both sides, last updated at `updated_at`.
async fn seeded_at(updated_at: &str) -> anyhow::Result<Bridge> {
    let bridge = Bridge::start("conflict").await?;
    bridge
        .legacy()
        .execute(&format!(
            "INSERT INTO users (id, email, full_name, role, inserted_at, updated_at)
             VALUES (1, 'row@example.com', 'First Version', 'member', '{updated_at}', '{updated_at}')"
        ))
        .await?;
    bridge.converged(WAIT).await?;
    Ok(bridge)
}

async fn seeded() -> anyhow::Result<Bridge> {
    seeded_at("2030-01-01 00:00:00").await
}

/// [`seeded`], and one team on both sides.
async fn seeded_with_a_team() -> anyhow::Result<Bridge> {
    let bridge = seeded().await?;
    bridge
        .legacy()
        .execute("INSERT INTO teams (id, name, inserted_at, updated_at) VALUES (1, 'Team', '2030-01-01 00:00:00', '2030-01-01 00:00:00')")
        .await?;
    bridge.converged(WAIT).await?;
    Ok(bridge)
}

/// Runs two writes at once, as two applications would.
async fn race(
    a: impl std::future::Future<Output = anyhow::Result<()>>,
    b: impl std::future::Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<()> {
    let (a, b) = tokio::join!(a, b);
    a.and(b)
}

async fn names(bridge: &Bridge) -> anyhow::Result<(String, String)> {
    let legacy: String = bridge
        .legacy()
        .client()
        .query_one("SELECT full_name FROM users WHERE id = 1", &[])
        .await?
        .get(0);
    let platform: String = bridge
        .platform()
        .client()
        .query_one("SELECT given_name || ' ' || family_name FROM identity.identities WHERE email = 'row@example.com'", &[])
        .await?
        .get(0);
    Ok((legacy, platform))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_row_updated_on_both_sides_ends_with_the_newer_value_on_both() -> anyhow::Result<()>
{
    let bridge = seeded().await?;
    // Both sides write before either change crosses: the platform one is newer.
    let legacy = bridge.legacy().execute(
        "UPDATE users SET full_name = 'Legacy Older', updated_at = '2030-01-01 00:00:05' WHERE id = 1",
    );
    let platform = bridge.platform().execute(
        "UPDATE identity.identities SET given_name = 'Platform', family_name = 'Newer', updated_at = '2030-01-01 00:00:09.5+00' WHERE email = 'row@example.com'",
    );
    race(legacy, platform).await?;
    bridge.converged(WAIT).await?;
    assert_eq!(
        names(&bridge).await?,
        ("Platform Newer".into(), "Platform Newer".into())
    );

    // And the other way round: now legacy is newer.
    let legacy = bridge.legacy().execute(
        "UPDATE users SET full_name = 'Legacy Newest', updated_at = '2030-01-01 00:01:00' WHERE id = 1",
    );
    let platform = bridge.platform().execute(
        "UPDATE identity.identities SET given_name = 'Platform', family_name = 'Stale', updated_at = '2030-01-01 00:00:30+00' WHERE email = 'row@example.com'",
    );
    race(legacy, platform).await?;
    bridge.converged(WAIT).await?;
    assert_eq!(
        names(&bridge).await?,
        ("Legacy Newest".into(), "Legacy Newest".into())
    );
    assert!(
        bridge
            .counters
            .of(apply::mapping::Side::Platform)
            .snapshot()
            .skipped_older
            + bridge
                .counters
                .of(apply::mapping::Side::Legacy)
                .snapshot()
                .skipped_older
            >= 1,
        "a conflict was lost and counted"
    );
    bridge.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_platform_edit_on_top_of_a_crossed_legacy_change_in_the_same_second_wins_on_both_sides(
) -> anyhow::Result<()> {
    let bridge = seeded().await?;
    bridge.legacy().execute("UPDATE users SET full_name = 'Legacy Base', updated_at = '2030-01-01 00:00:20' WHERE id = 1").await?;
    bridge.converged(WAIT).await?;
    // A platform user edits the row the legacy change just reached, within
    // the same second: a tie at whole seconds that legacy would win, but the
    // edit was made on top of the legacy version, so it is the newer one.
    bridge.platform().execute("UPDATE identity.identities SET given_name = 'Platform', family_name = 'On Top', updated_at = '2030-01-01 00:00:20.4+00' WHERE email = 'row@example.com'").await?;
    bridge.converged(WAIT).await?;
    assert_eq!(
        names(&bridge).await?,
        ("Platform On Top".into(), "Platform On Top".into())
    );
    bridge.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_platform_edit_on_top_of_a_legacy_version_stamped_in_the_next_second_wins_on_both_sides(
) -> anyhow::Result<()> {
    let bridge = seeded().await?;
    // Raw SQL into a legacy `timestamp(0)` column rounds `now()`: a change
    // made at 00:00:40.6 is stamped 00:00:41.
    bridge.legacy().execute("UPDATE users SET full_name = 'Legacy Rounded Up', updated_at = '2030-01-01 00:00:41' WHERE id = 1").await?;
    bridge.converged(WAIT).await?;
    // The platform edits the version that reached it, at 00:00:40.9: its
    // `updated_at` is older, but it was made on top of the legacy version.
    bridge.platform().execute("UPDATE identity.identities SET given_name = 'Platform', family_name = 'After It', updated_at = '2030-01-01 00:00:40.9+00' WHERE email = 'row@example.com'").await?;
    bridge.converged(WAIT).await?;
    assert_eq!(
        names(&bridge).await?,
        ("Platform After It".into(), "Platform After It".into())
    );
    bridge.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_change_from_one_source_wins_over_its_earlier_one_whatever_their_timestamps(
) -> anyhow::Result<()> {
    let bridge = seeded().await?;
    // Legacy's own order decides between two legacy changes: the second is
    // stamped a second before the first (the first rounded up, the second
    // truncated), and still lands.
    bridge.legacy().execute("UPDATE users SET full_name = 'First Rounded', updated_at = '2030-01-01 00:00:51' WHERE id = 1").await?;
    bridge.converged(WAIT).await?;
    bridge.legacy().execute("UPDATE users SET full_name = 'Second Truncated', updated_at = '2030-01-01 00:00:50' WHERE id = 1").await?;
    bridge.converged(WAIT).await?;
    assert_eq!(
        names(&bridge).await?,
        ("Second Truncated".into(), "Second Truncated".into())
    );
    // The same for the platform, whose rows apply wrote on legacy.
    bridge.platform().execute("UPDATE identity.identities SET given_name = 'Platform', family_name = 'Ahead', updated_at = '2030-01-01 00:01:05+00' WHERE email = 'row@example.com'").await?;
    bridge.converged(WAIT).await?;
    bridge.platform().execute("UPDATE identity.identities SET given_name = 'Platform', family_name = 'Behind', updated_at = '2030-01-01 00:01:03+00' WHERE email = 'row@example.com'").await?;
    bridge.converged(WAIT).await?;
    assert_eq!(
        names(&bridge).await?,
        ("Platform Behind".into(), "Platform Behind".into())
    );
    bridge.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sides_each_changing_a_row_twice_with_clocks_apart_end_with_the_same_version(
) -> anyhow::Result<()> {
    // While apply is stopped, each side changes the row twice, its second
    // change stamped behind its first (a clock stepped back, or a
    // `timestamp(0)` that rounded the first up). Legacy's changes are
    // stamped :05 and :04, the platform's :06 and :05.5. Both directions
    // then carry all four. Each side's second change comes after its first
    // (clocks :05+1 on legacy, :06+1 on the platform), so the platform's
    // second change is the latest of the four, and both sides keep it. An
    // order that compares timestamps against whatever the target holds
    // does not get there: legacy compares the platform's first change (:06)
    // with its own second (:04) and takes the platform's, the platform
    // compares legacy's first (:05) with its own second (:05.5, the same
    // second: a tie legacy wins) and takes legacy's, and each side's later
    // change follows by source order.
    let mut bridge = seeded().await?;
    bridge.stop_apply().await?;
    let legacy = bridge.legacy();
    legacy.execute("UPDATE users SET full_name = 'Legacy First', updated_at = '2030-01-01 00:00:05' WHERE id = 1").await?;
    legacy.execute("UPDATE users SET full_name = 'Legacy Second', updated_at = '2030-01-01 00:00:04' WHERE id = 1").await?;
    let platform = bridge.platform();
    platform.execute("UPDATE identity.identities SET given_name = 'Platform', family_name = 'First', updated_at = '2030-01-01 00:00:06+00' WHERE email = 'row@example.com'").await?;
    platform.execute("UPDATE identity.identities SET given_name = 'Platform', family_name = 'Second', updated_at = '2030-01-01 00:00:05.5+00' WHERE email = 'row@example.com'").await?;
    bridge.start_apply()?;
    bridge.caught_up(WAIT).await?;
    assert_eq!(
        names(&bridge).await?,
        ("Platform Second".into(), "Platform Second".into())
    );
    bridge.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_made_on_top_of_a_version_stamped_ahead_removes_it_on_both_sides(
) -> anyhow::Result<()> {
    let bridge = seeded().await?;
    // A legacy version stamped in the future (a clock ahead, or rounding)
    // reaches the platform, which then deletes the row: the delete was made
    // after that version arrived, so it wins although its time is older.
    let ahead = "2999-01-01 00:00:00";
    bridge
        .legacy()
        .execute(&format!(
            "UPDATE users SET full_name = 'Stamped Ahead', updated_at = '{ahead}' WHERE id = 1"
        ))
        .await?;
    bridge.converged(WAIT).await?;
    bridge
        .platform()
        .execute("DELETE FROM identity.identities WHERE email = 'row@example.com'")
        .await?;
    bridge.converged(WAIT).await?;
    assert_eq!(
        count(bridge.legacy().client(), "SELECT count(*) FROM users").await?,
        0,
        "the delete reached legacy"
    );
    bridge.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_edits_in_the_same_second_end_with_the_tie_winner_on_both_sides(
) -> anyhow::Result<()> {
    let bridge = seeded().await?;
    // Neither change has crossed when the other is made: a true tie, and
    // legacy (the configured tie_winner) wins on both sides.
    let legacy = bridge.legacy().execute(
        "UPDATE users SET full_name = 'Legacy Tie', updated_at = '2030-01-01 00:00:30' WHERE id = 1",
    );
    let platform = bridge.platform().execute(
        "UPDATE identity.identities SET given_name = 'Platform', family_name = 'Tie', updated_at = '2030-01-01 00:00:30.7+00' WHERE email = 'row@example.com'",
    );
    race(legacy, platform).await?;
    bridge.converged(WAIT).await?;
    assert_eq!(
        names(&bridge).await?,
        ("Legacy Tie".into(), "Legacy Tie".into())
    );
    bridge.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_updates_of_one_row_within_one_second_both_land_in_order() -> anyhow::Result<()> {
    let bridge = seeded().await?;
    // Legacy has second precision: both updates carry the same updated_at.
    bridge.legacy().execute("UPDATE users SET full_name = 'Second A', updated_at = '2030-01-01 00:00:07' WHERE id = 1").await?;
    bridge.legacy().execute("UPDATE users SET full_name = 'Second B', updated_at = '2030-01-01 00:00:07' WHERE id = 1").await?;
    bridge.converged(WAIT).await?;
    assert_eq!(
        names(&bridge).await?,
        ("Second B".into(), "Second B".into())
    );

    // Platform is not the tie winner; its own consecutive changes still land.
    bridge.platform().execute("UPDATE identity.identities SET given_name = 'Third', family_name = 'A', updated_at = '2030-01-01 00:00:08.1+00' WHERE email = 'row@example.com'").await?;
    bridge.converged(WAIT).await?;
    bridge.platform().execute("UPDATE identity.identities SET given_name = 'Third', family_name = 'B', updated_at = '2030-01-01 00:00:08.6+00' WHERE email = 'row@example.com'").await?;
    bridge.converged(WAIT).await?;
    assert_eq!(names(&bridge).await?, ("Third B".into(), "Third B".into()));
    bridge.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_racing_an_older_update_leaves_the_row_deleted_on_both_sides() -> anyhow::Result<()>
{
    // The row was last written in the past, so an update can be older than the delete.
    let bridge = seeded_at("2020-01-01 00:00:00").await?;
    let delete = bridge.legacy().execute("DELETE FROM users WHERE id = 1");
    let update = bridge.platform().execute(
        "UPDATE identity.identities SET given_name = 'Too', family_name = 'Late', updated_at = '2020-01-01 00:00:03+00' WHERE email = 'row@example.com'",
    );
    race(delete, update).await?;
    bridge.converged(WAIT).await?;
    let left = (
        count(bridge.legacy().client(), "SELECT count(*) FROM users").await?,
        count(
            bridge.platform().client(),
            "SELECT count(*) FROM identity.identities",
        )
        .await?,
    );
    if left != (0, 0) {
        // Seen once in a full run under load, never alone: say why.
        let history = bridge
            .history_of(&["user".to_owned()], vec!["1".to_owned()])
            .await?;
        panic!("the row survived (legacy, platform) = {left:?}\n{history}");
    }
    bridge.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_racing_a_newer_update_loses_and_the_row_survives_on_both_sides(
) -> anyhow::Result<()> {
    let bridge = seeded().await?;
    // The delete happens "now" (2026); the update is stamped in 2031.
    let delete = bridge.legacy().execute("DELETE FROM users WHERE id = 1");
    let update = bridge.platform().execute(
        "UPDATE identity.identities SET given_name = 'Still', family_name = 'Here', updated_at = '2031-01-01 00:00:00+00' WHERE email = 'row@example.com'",
    );
    race(delete, update).await?;
    bridge.converged(WAIT).await?;
    assert_eq!(
        count(
            bridge.platform().client(),
            "SELECT count(*) FROM identity.identities"
        )
        .await?,
        1
    );
    assert_eq!(
        count(
            bridge.legacy().client(),
            "SELECT count(*) FROM users WHERE full_name = 'Still Here'"
        )
        .await?,
        1
    );
    bridge.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_crosses_once_and_never_echoes_back() -> anyhow::Result<()> {
    let bridge = Bridge::start("echo").await?;
    // Count every write to the two tables with test-only audit triggers.
    for (db, table) in [
        (bridge.legacy(), "public.users"),
        (bridge.platform(), "identity.identities"),
    ] {
        db.audit_writes(table).await?;
    }
    bridge.legacy().execute(
        "INSERT INTO users (email, full_name, role, inserted_at, updated_at) VALUES ('once@example.com', 'Once Only', 'staff', '2030-01-01 00:00:00', '2030-01-01 00:00:00')",
    ).await?;
    bridge.converged(WAIT).await?;
    // Wait until apply has seen its own write come back (and skipped it).
    sync_bridge_tests::eventually("the echo to come back", WAIT, || async {
        Ok((bridge
            .counters
            .of(apply::mapping::Side::Platform)
            .snapshot()
            .echoes
            >= 1)
            .then_some(()))
    })
    .await?;
    bridge.platform().execute("UPDATE identity.identities SET family_name = 'Twice', updated_at = '2030-01-01 00:00:05+00' WHERE email = 'once@example.com'").await?;
    bridge.converged(WAIT).await?;
    sync_bridge_tests::eventually("the second echo to come back", WAIT, || async {
        Ok((bridge
            .counters
            .of(apply::mapping::Side::Legacy)
            .snapshot()
            .echoes
            >= 1)
            .then_some(()))
    })
    .await?;

    let legacy_writes = bridge.legacy().audited_writes().await?;
    let platform_writes = bridge.platform().audited_writes().await?;
    assert_eq!(
        legacy_writes, 2,
        "legacy: the application's insert and the update that crossed"
    );
    assert_eq!(
        platform_writes, 2,
        "platform: the insert that crossed and the application's update"
    );
    bridge.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_email_created_on_both_sides_at_once_becomes_one_linked_row() -> anyhow::Result<()>
{
    let bridge = Bridge::start("natural").await?;
    let legacy = bridge.legacy().execute(
        "INSERT INTO users (email, full_name, role, inserted_at, updated_at) VALUES ('same@example.com', 'From Legacy', 'member', '2030-01-01 00:00:00', '2030-01-01 00:00:00')",
    );
    let platform = bridge.platform().execute(
        "INSERT INTO identity.identities (id, email, given_name, family_name, kind, created_at, updated_at) VALUES (gen_random_uuid(), 'same@example.com', 'From', 'Platform', 'staff', '2030-01-01 00:00:00+00', '2030-01-01 00:00:02+00')",
    );
    race(legacy, platform).await?;
    bridge.converged(WAIT).await?;
    assert_eq!(
        count(bridge.legacy().client(), "SELECT count(*) FROM users").await?,
        1
    );
    assert_eq!(
        count(
            bridge.platform().client(),
            "SELECT count(*) FROM identity.identities"
        )
        .await?,
        1
    );
    let name: String = bridge
        .legacy()
        .client()
        .query_one("SELECT full_name FROM users", &[])
        .await?
        .get(0);
    assert_eq!(
        name, "From Platform",
        "the newer of the two wins each field"
    );
    bridge.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_membership_created_on_both_sides_before_either_crossed_ends_as_one_row_on_both(
) -> anyhow::Result<()> {
    // One team and one user on both sides; then, while apply is stopped,
    // each side makes the user a member of the team: two rows for one
    // (team, user), each side's born there. Legacy ids of legacy-born
    // memberships give their platform ids, so the platform's row cannot
    // take the legacy one's id: the two must still end as one row.
    let mut bridge = seeded_with_a_team().await?;
    bridge.stop_apply().await?;
    bridge
        .legacy()
        .execute("INSERT INTO team_members (team_id, user_id, role, inserted_at, updated_at) VALUES (1, 1, 'lead', '2030-01-01 00:00:10', '2030-01-01 00:00:10')")
        .await?;
    bridge
        .platform()
        .execute(
            "INSERT INTO org.memberships (id, group_id, identity_id, role, created_at, updated_at)
             SELECT gen_random_uuid(), g.id, i.id, 'member', '2030-01-01 00:00:11+00', '2030-01-01 00:00:11+00'
             FROM org.groups g, identity.identities i",
        )
        .await?;
    bridge.start_apply()?;
    bridge.converged(WAIT).await?;
    assert_eq!(
        roles(bridge.legacy(), "SELECT role::text FROM team_members").await?,
        ["member"],
        "one row on legacy, the platform's newer version"
    );
    assert_eq!(
        roles(bridge.platform(), "SELECT role FROM org.memberships").await?,
        ["member"],
        "one row on the platform"
    );
    bridge.stop().await
}

/// The first column (text) of every row `sql` reads from `db`.
async fn roles(db: &sync_bridge_tests::TestDb, sql: &str) -> anyhow::Result<Vec<String>> {
    let rows = db.client().query(sql, &[]).await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// The email of each user on `side`, by name (`full_name` on legacy, given
/// and family name on the platform).
async fn emails_by_name(bridge: &Bridge, side: Side) -> anyhow::Result<Vec<(String, String)>> {
    let (db, sql) = match side {
        Side::Legacy => (
            bridge.legacy(),
            "SELECT full_name, email FROM users ORDER BY full_name",
        ),
        Side::Platform => (
            bridge.platform(),
            "SELECT given_name || ' ' || family_name, email FROM identity.identities ORDER BY 1",
        ),
    };
    let rows = db.client().query(sql, &[]).await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Users born on each side, crossed; then, while apply is stopped, `reuser`
/// deletes each of them and gives its email to a new row stamped
/// 2030-01-01 00:00:20, and the other side edits its copy: `old-*` emails
/// at 00:00:10 (older than the new row), `new-*` at 00:00:30 (newer). In
/// both databases the email names one row, so each email ends as one row
/// on both sides with the newer version: the new row's for `old-*`, the
/// edit for `new-*`. Before, the edit crossing to `reuser` brought its
/// deleted counterpart back and failed on the email (dead-lettered), and
/// the new row crossing the other way was held while the stale pair of a
/// row born on the other side lived on in `reuser`'s correspondence.
async fn an_email_reused_on_one_side_while_the_other_edits_its_row_ends_as_one_row(
    reuser: Side,
) -> anyhow::Result<()> {
    let mut bridge = Bridge::start("reused_email").await?;
    let emails = ["old-l", "new-l", "old-p", "new-p"].map(|e| format!("{e}@example.com"));
    let legacy = bridge.legacy();
    let platform = bridge.platform();
    for email in &emails[..2] {
        legacy
            .execute(&format!(
                "INSERT INTO users (email, full_name, role, inserted_at, updated_at)
                 VALUES ('{email}', 'First Version', 'member', '2030-01-01 00:00:00', '2030-01-01 00:00:00')"
            ))
            .await?;
    }
    for email in &emails[2..] {
        platform
            .execute(&format!(
                "INSERT INTO identity.identities (id, email, given_name, family_name, kind, created_at, updated_at)
                 VALUES (gen_random_uuid(), '{email}', 'First', 'Version', 'member', '2030-01-01 00:00:00+00', '2030-01-01 00:00:00+00')"
            ))
            .await?;
    }
    bridge.converged(WAIT).await?;
    bridge.stop_apply().await?;
    let legacy = bridge.legacy();
    let platform = bridge.platform();
    for email in &emails {
        let edited_at = if email.starts_with("old") { 10 } else { 30 };
        let reuse_legacy = format!(
            "BEGIN;
             DELETE FROM users WHERE email = '{email}';
             INSERT INTO users (email, full_name, role, inserted_at, updated_at)
             VALUES ('{email}', 'Reused Email', 'member', '2030-01-01 00:00:20', '2030-01-01 00:00:20');
             COMMIT;"
        );
        let reuse_platform = format!(
            "BEGIN;
             DELETE FROM identity.identities WHERE email = '{email}';
             INSERT INTO identity.identities (id, email, given_name, family_name, kind, created_at, updated_at)
             VALUES (gen_random_uuid(), '{email}', 'Reused', 'Email', 'member', '2030-01-01 00:00:20+00', '2030-01-01 00:00:20+00');
             COMMIT;"
        );
        let edit_legacy = format!(
            "UPDATE users SET full_name = 'Edited Copy', updated_at = '2030-01-01 00:00:{edited_at}' WHERE email = '{email}'"
        );
        let edit_platform = format!(
            "UPDATE identity.identities SET given_name = 'Edited', family_name = 'Copy', updated_at = '2030-01-01 00:00:{edited_at}+00' WHERE email = '{email}'"
        );
        match reuser {
            Side::Legacy => {
                legacy.execute(&reuse_legacy).await?;
                platform.execute(&edit_platform).await?;
            }
            Side::Platform => {
                platform.execute(&reuse_platform).await?;
                legacy.execute(&edit_legacy).await?;
            }
        }
    }
    bridge.start_apply()?;
    bridge.converged(WAIT).await?;
    let expected: Vec<(String, String)> = [
        ("Edited Copy", "new-l"),
        ("Edited Copy", "new-p"),
        ("Reused Email", "old-l"),
        ("Reused Email", "old-p"),
    ]
    .into_iter()
    .map(|(name, email)| (name.to_owned(), format!("{email}@example.com")))
    .collect();
    for side in [Side::Legacy, Side::Platform] {
        let mut users = emails_by_name(&bridge, side).await?;
        users.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        assert_eq!(
            users, expected,
            "{side:?}: one row per email, the newer version"
        );
    }
    for from in [apply::mapping::Side::Legacy, apply::mapping::Side::Platform] {
        let counts = bridge.counters.of(from).snapshot();
        assert_eq!(counts.dead_lettered, 0, "{from:?}: nothing dead-lettered");
    }
    bridge.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_email_reused_on_legacy_while_the_platform_edits_its_row_ends_as_one_row_on_both_sides(
) -> anyhow::Result<()> {
    an_email_reused_on_one_side_while_the_other_edits_its_row_ends_as_one_row(Side::Legacy).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_email_reused_on_the_platform_while_legacy_edits_its_row_ends_as_one_row_on_both_sides(
) -> anyhow::Result<()> {
    an_email_reused_on_one_side_while_the_other_edits_its_row_ends_as_one_row(Side::Platform).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_legacy_id_the_application_takes_after_apply_chose_it_is_not_written_over(
) -> anyhow::Result<()> {
    // A platform-born user gets the next free legacy id; apply records the
    // pair, then inserts the row. Between the two, the legacy application
    // inserts a user of its own with that id (an explicit id, committed in
    // its own transaction: a trigger on the pair table does it through
    // dblink, once). Written as an upsert, apply's row took the
    // application's over (its updated_at is older): the application's user
    // was gone and the platform user sat in its place. Now the insert fails
    // on the id, the source transaction is applied again with a new id, and
    // both users live on both sides.
    let bridge = Bridge::start("taken_id").await?;
    bridge.converged(WAIT).await?;
    let legacy = bridge.legacy();
    legacy
        .execute(&format!(
            "CREATE EXTENSION dblink;
             CREATE TABLE race_once (armed boolean);
             INSERT INTO race_once VALUES (true);
             CREATE FUNCTION take_the_id() RETURNS trigger LANGUAGE plpgsql AS $f$
             BEGIN
               IF EXISTS (SELECT 1 FROM race_once) THEN
                 PERFORM dblink_exec('{url}', format(
                   'BEGIN; DELETE FROM race_once;
                    INSERT INTO users (id, email, full_name, role, inserted_at, updated_at)
                    VALUES (%s, ''app@example.com'', ''Written ByTheApp'', ''member'', ''2020-01-01'', ''2020-01-01'');
                    COMMIT;', NEW.legacy_id));
               END IF;
               RETURN NULL;
             END $f$;
             CREATE TRIGGER take_the_id AFTER INSERT ON syncbridge.id_map
               FOR EACH ROW WHEN (NEW.entity = 'user') EXECUTE FUNCTION take_the_id();",
            url = legacy.url
        ))
        .await?;
    bridge
        .platform()
        .execute(
            "INSERT INTO identity.identities (id, email, given_name, family_name, kind, created_at, updated_at)
             VALUES (gen_random_uuid(), 'platform@example.com', 'Born', 'OnThePlatform', 'member', '2030-01-01 00:00:00+00', '2030-01-01 00:00:00+00')",
        )
        .await?;
    bridge.converged(WAIT).await?;
    assert_eq!(
        count(legacy.client(), "SELECT count(*) FROM race_once").await?,
        0,
        "the application took the id apply chose"
    );
    let expected = vec![
        (
            "Born OnThePlatform".to_owned(),
            "platform@example.com".to_owned(),
        ),
        ("Written ByTheApp".to_owned(), "app@example.com".to_owned()),
    ];
    assert_eq!(emails_by_name(&bridge, Side::Legacy).await?, expected);
    assert_eq!(emails_by_name(&bridge, Side::Platform).await?, expected);
    for from in [apply::mapping::Side::Legacy, apply::mapping::Side::Platform] {
        let counts = bridge.counters.of(from).snapshot();
        assert_eq!(counts.dead_lettered, 0, "{from:?}: nothing dead-lettered");
    }
    bridge.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unique_email_handed_from_one_row_to_another_lands_in_source_order_on_both_sides(
) -> anyhow::Result<()> {
    // A secondary unique constraint (the email) must not break apply: a
    // later transaction may give a row the value an earlier one freed, and
    // one transaction may swap values through a placeholder. Applied out of
    // order, or a statement at a time without the source's order, either
    // hits the unique index. One source transaction per batch, with two
    // writers: consecutive transactions land on alternate connections.
    let mut bridge = Bridge::prepare("email_moves").await?;
    bridge.apply_options = "writers = 2\nbatch_max_events = 1\n".into();
    let bridge = bridge.run().await?;
    bridge
        .legacy()
        .execute(
            "INSERT INTO users (id, email, full_name, role, inserted_at, updated_at) VALUES
               (1, 'a@example.com', 'Ann One', 'member', '2030-01-01 00:00:00', '2030-01-01 00:00:00'),
               (2, 'b@example.com', 'Ben Two', 'member', '2030-01-01 00:00:00', '2030-01-01 00:00:00')",
        )
        .await?;
    bridge.converged(WAIT).await?;

    // Legacy: Ann frees her email, then Ben takes it (two transactions), then
    // the two swap theirs in one transaction.
    let legacy = bridge.legacy();
    legacy
        .execute("UPDATE users SET email = 'a-old@example.com', updated_at = '2030-01-01 00:00:10' WHERE id = 1")
        .await?;
    legacy
        .execute("UPDATE users SET email = 'a@example.com', updated_at = '2030-01-01 00:00:11' WHERE id = 2")
        .await?;
    legacy
        .execute(
            "BEGIN;
             UPDATE users SET email = 'swap@example.com', updated_at = '2030-01-01 00:00:12' WHERE id = 1;
             UPDATE users SET email = 'a-old@example.com', updated_at = '2030-01-01 00:00:12' WHERE id = 2;
             UPDATE users SET email = 'a@example.com', updated_at = '2030-01-01 00:00:12' WHERE id = 1;
             COMMIT;",
        )
        .await?;
    bridge.converged(WAIT).await?;
    let expected = vec![
        ("Ann One".to_owned(), "a@example.com".to_owned()),
        ("Ben Two".to_owned(), "a-old@example.com".to_owned()),
    ];
    assert_eq!(emails_by_name(&bridge, Side::Platform).await?, expected);

    // The platform does the same the other way round.
    let platform = bridge.platform();
    platform
        .execute("UPDATE identity.identities SET email = 'moved@example.com', updated_at = '2030-01-01 00:00:20+00' WHERE email = 'a@example.com'")
        .await?;
    platform
        .execute("UPDATE identity.identities SET email = 'a@example.com', updated_at = '2030-01-01 00:00:21+00' WHERE email = 'a-old@example.com'")
        .await?;
    platform
        .execute(
            "BEGIN;
             UPDATE identity.identities SET email = 'swap@example.com', updated_at = '2030-01-01 00:00:22+00' WHERE given_name = 'Ann';
             UPDATE identity.identities SET email = 'moved@example.com', updated_at = '2030-01-01 00:00:22+00' WHERE given_name = 'Ben';
             UPDATE identity.identities SET email = 'a@example.com', updated_at = '2030-01-01 00:00:22+00' WHERE given_name = 'Ann';
             COMMIT;",
        )
        .await?;
    bridge.converged(WAIT).await?;
    let expected = vec![
        ("Ann One".to_owned(), "a@example.com".to_owned()),
        ("Ben Two".to_owned(), "moved@example.com".to_owned()),
    ];
    assert_eq!(emails_by_name(&bridge, Side::Legacy).await?, expected);
    assert_eq!(emails_by_name(&bridge, Side::Platform).await?, expected);

    for from in [apply::mapping::Side::Legacy, apply::mapping::Side::Platform] {
        let counts = bridge.counters.of(from).snapshot();
        assert_eq!(
            (
                counts.dead_lettered,
                counts.replans,
                counts.key_held,
                counts.linked
            ),
            (0, 0, 0, 0),
            "{from:?}: every move applied as it came, none refused, retried or re-linked"
        );
    }
    bridge.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emails_created_on_both_sides_and_deleted_on_one_before_crossing_end_the_same_on_both(
) -> anyhow::Result<()> {
    // While apply is held, 200 emails are created on both sides, and the
    // platform deletes its copies. The platform rows crossing to legacy
    // find the legacy users by email and link to them; the legacy users
    // crossing to the platform find no email there any more. The two
    // decisions are forced to overlap: legacy's users table is locked, so
    // the platform->legacy direction decides and then waits to write.
    // Before the two directions shared a lock on these decisions, the other
    // one gave each legacy user a new platform counterpart meanwhile, and
    // the platform's deletes then removed the legacy users while those
    // counterparts lived on.
    let mut bridge = Bridge::start("held_keys").await?;
    bridge.stop_apply().await?;
    bridge
        .legacy()
        .execute(
            "INSERT INTO users (email, full_name, role, inserted_at, updated_at)
               SELECT 'both' || g || '@example.com', 'Legacy ' || g, 'member',
                      date_trunc('second', now() AT TIME ZONE 'UTC'), date_trunc('second', now() AT TIME ZONE 'UTC')
               FROM generate_series(1, 200) g",
        )
        .await?;
    bridge
        .platform()
        .execute(
            "INSERT INTO identity.identities (id, email, given_name, family_name, kind, is_admin, created_at, updated_at)
               SELECT gen_random_uuid(), 'both' || g || '@example.com', 'Platform', g::text, 'member', false, now(), now()
               FROM generate_series(1, 200) g",
        )
        .await?;
    bridge
        .platform()
        .execute("DELETE FROM identity.identities")
        .await?;
    let blocker = connect(&bridge.legacy().url).await?;
    blocker
        .batch_execute("BEGIN; LOCK TABLE users IN EXCLUSIVE MODE")
        .await?;
    bridge.start_apply()?;
    let legacy = bridge.legacy().client();
    let platform = bridge.platform().client();
    eventually(
        "platform->legacy to wait on the users table, legacy->platform to have decided",
        WAIT,
        || async {
            let waiting_to_write = count(
                legacy,
                "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = 'users'::regclass",
            )
            .await?;
            let waiting_to_decide = count(
                legacy,
                "SELECT count(*) FROM pg_locks WHERE NOT granted AND locktype = 'advisory'",
            )
            .await?;
            let written = count(platform, "SELECT count(*) FROM identity.identities").await?;
            Ok((waiting_to_write > 0 && (waiting_to_decide > 0 || written > 0)).then_some(()))
        },
    )
    .await?;
    blocker.batch_execute("COMMIT").await?;
    bridge.converged(WAIT).await?;
    let legacy_users = count(legacy, "SELECT count(*) FROM users").await?;
    let platform_users = count(platform, "SELECT count(*) FROM identity.identities").await?;
    assert_eq!(legacy_users, platform_users, "the same users on both sides");
    bridge.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_random_writers_on_both_sides_for_30_seconds_converge() -> anyhow::Result<()> {
    let bridge = Bridge::start("random").await?;
    // A few parents to start from.
    bridge.legacy().execute(
        "INSERT INTO categories (name, inserted_at, updated_at) SELECT 'seed ' || g, now(), now() FROM generate_series(1, 3) g;
         INSERT INTO users (email, full_name, role, inserted_at, updated_at) SELECT 'seed' || g || '@example.com', 'Seed ' || g, 'member', now(), now() FROM generate_series(1, 10) g;
         INSERT INTO teams (name, archived, inserted_at, updated_at) SELECT 'seed team ' || g, false, now(), now() FROM generate_series(1, 5) g;",
    ).await?;
    bridge.converged(WAIT).await?;
    let run = Duration::from_secs(30);
    let legacy = random_writes(&bridge.legacy().url, Side::Legacy, run, 1);
    let legacy2 = random_writes(&bridge.legacy().url, Side::Legacy, run, 2);
    let platform = random_writes(&bridge.platform().url, Side::Platform, run, 3);
    let platform2 = random_writes(&bridge.platform().url, Side::Platform, run, 4);
    let (a, b, c, d) = tokio::join!(legacy, legacy2, platform, platform2);
    let writes = a? + b? + c? + d?;
    assert!(writes > 500, "the writers did work ({writes} statements)");
    // A debug build catching up with four writers on a shared 2-core machine,
    // next to the 200,000-row backfill test: 60-150 s measured, once over 180 s.
    // Well inside nextest's 600 s, so that a divergence fails with the
    // differences rather than a timeout.
    let report = bridge.converged(Duration::from_secs(400)).await?;
    let rows: usize = report.entities.iter().map(|e| e.legacy_rows).sum();
    assert!(rows > 100, "rows exist at the end: {report}");
    bridge.stop().await
}

/// A legacy team with one geofence, on both sides.
async fn team_with_a_geofence() -> anyhow::Result<Bridge> {
    let bridge = Bridge::start("parent").await?;
    bridge
        .legacy()
        .execute(
            "INSERT INTO teams (id, name, category_id, archived, notes, inserted_at, updated_at)
               VALUES (1, 'Team One', NULL, false, NULL, '2030-01-01 00:00:00', '2030-01-01 00:00:00');
             INSERT INTO users (id, email, full_name, role, inserted_at, updated_at)
               VALUES (1, 'member@example.com', 'Mem Ber', 'member', '2030-01-01 00:00:00', '2030-01-01 00:00:00');
             INSERT INTO geofences (id, team_id, name, latitude, longitude, radius_m, inserted_at, updated_at)
               VALUES (1, 1, 'zone', 1.5, 2.5, 100, '2030-01-01 00:00:00', '2030-01-01 00:00:00')",
        )
        .await?;
    bridge.converged(WAIT).await?;
    Ok(bridge)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parent_deleted_on_one_side_while_the_other_updates_it_newer_comes_back_with_its_children(
) -> anyhow::Result<()> {
    let bridge = team_with_a_geofence().await?;
    // The platform renames the team (newer than the delete below) and creates
    // a membership in it, while legacy deletes the team (its geofence is
    // nulled there, its memberships cascade).
    let platform = bridge.platform().execute(
        "UPDATE org.groups SET name = 'Team Renamed', updated_at = '2030-01-01 00:05:00+00';
         INSERT INTO org.memberships (id, group_id, identity_id, role, created_at, updated_at)
           SELECT gen_random_uuid(), g.id, i.id, 'member', '2030-01-01 00:05:00+00', '2030-01-01 00:05:00+00'
           FROM org.groups g, identity.identities i",
    );
    let legacy = bridge.legacy().execute("DELETE FROM teams WHERE id = 1");
    race(platform, legacy).await?;
    bridge.converged(WAIT).await?;
    let team: String = bridge
        .legacy()
        .client()
        .query_one("SELECT name FROM teams", &[])
        .await?
        .get(0);
    assert_eq!(
        team, "Team Renamed",
        "the newer update wins over the delete"
    );
    assert_eq!(
        count(
            bridge.legacy().client(),
            "SELECT count(*) FROM team_members"
        )
        .await?,
        1,
        "the membership created on the platform side meanwhile is not lost"
    );
    bridge.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_written_after_its_nullable_parent_was_deleted_gets_a_null_reference_on_both_sides(
) -> anyhow::Result<()> {
    let bridge = team_with_a_geofence().await?;
    // Legacy deletes the team (its geofence's team_id becomes NULL there)
    // while the platform moves the zone (newer): on the legacy side the
    // zone's change arrives after the team is gone.
    let legacy = bridge.legacy().execute("DELETE FROM teams WHERE id = 1");
    let platform = bridge
        .platform()
        .execute("UPDATE geo.zones SET radius_m = 250, updated_at = '2030-01-01 00:09:00+00'");
    race(legacy, platform).await?;
    bridge.converged(WAIT).await?;
    let (team, radius): (Option<i64>, i32) = {
        let row = bridge
            .legacy()
            .client()
            .query_one("SELECT team_id, radius_m FROM geofences WHERE id = 1", &[])
            .await?;
        (row.get(0), row.get(1))
    };
    assert_eq!((team, radius), (None, 250));
    bridge.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_written_with_a_null_reference_while_its_parent_was_deleted_gets_it_back_with_the_parent(
) -> anyhow::Result<()> {
    let mut bridge = team_with_a_geofence().await?;
    bridge.stop_apply().await?;
    // Legacy deletes the team (its geofence's team_id becomes NULL there)
    // while the platform moves the zone and then renames the group, both
    // newer than the delete: the zone reaches legacy while the team is gone
    // there and is written with a NULL team; the group's change then brings
    // the team back, and with it the zone's reference.
    bridge
        .legacy()
        .execute("DELETE FROM teams WHERE id = 1")
        .await?;
    bridge
        .platform()
        .execute("UPDATE geo.zones SET radius_m = 250, updated_at = '2030-01-01 00:00:40+00'")
        .await?;
    bridge
        .platform()
        .execute("UPDATE org.groups SET name = 'Team Back', updated_at = '2030-01-01 00:00:50+00'")
        .await?;
    bridge.start_apply()?;
    bridge.converged(WAIT).await?;
    let row = bridge
        .legacy()
        .client()
        .query_one(
            "SELECT t.name, g.radius_m FROM geofences g JOIN teams t ON t.id = g.team_id",
            &[],
        )
        .await?;
    let (team, radius): (String, i32) = (row.get(0), row.get(1));
    assert_eq!(
        (team.as_str(), radius),
        ("Team Back", 250),
        "the zone is in its team again on legacy"
    );
    bridge.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_created_while_its_parent_is_deleted_on_the_other_side_is_not_created_and_is_counted(
) -> anyhow::Result<()> {
    let mut bridge = team_with_a_geofence().await?;
    // Apply is held while a membership is created on the platform and its
    // team is deleted on legacy, so neither change has crossed when the
    // other is made: the delete wins (nobody changed the team after it).
    bridge.stop_apply().await?;
    bridge
        .platform()
        .execute(
            "INSERT INTO org.memberships (id, group_id, identity_id, role, created_at, updated_at)
               SELECT gen_random_uuid(), g.id, i.id, 'member', now(), now()
               FROM org.groups g, identity.identities i",
        )
        .await?;
    bridge
        .legacy()
        .execute("DELETE FROM teams WHERE id = 1")
        .await?;
    bridge.start_apply()?;
    let counters = bridge.counters.clone();
    sync_bridge_tests::eventually("the orphan to be counted", WAIT, || async {
        let orphans = counters
            .of(apply::mapping::Side::Platform)
            .snapshot()
            .conflict_orphans;
        Ok((orphans >= 1).then_some(()))
    })
    .await?;
    bridge.converged(WAIT).await?;
    assert_eq!(
        count(
            bridge.legacy().client(),
            "SELECT count(*) FROM team_members"
        )
        .await?,
        0
    );
    assert_eq!(
        count(
            bridge.platform().client(),
            "SELECT count(*) FROM org.memberships"
        )
        .await?,
        0
    );
    bridge.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_membership_made_while_its_user_was_held_back_by_a_taken_email_crosses_with_the_user(
) -> anyhow::Result<()> {
    held_back_user_with_a_membership(true).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_held_back_by_a_taken_email_crosses_with_its_membership_once_the_email_is_free(
) -> anyhow::Result<()> {
    held_back_user_with_a_membership(false).await
}

/// While apply is stopped, the platform creates a user with an email and
/// makes it a member of a team, and legacy gives the same email to its
/// existing user (whose counterpart on the platform still exists). Apply
/// holds the platform's user back on legacy (the email is another row's
/// there), so the membership has no user there and is left out. Legacy then
/// deletes its user, freeing the email; with `later_edit`, the platform
/// changes its user too (a later version that pairs it), without, nothing
/// more is written anywhere. Either way the user and the membership made
/// while it was held reach legacy.
async fn held_back_user_with_a_membership(later_edit: bool) -> anyhow::Result<()> {
    let mut bridge = seeded_with_a_team().await?;
    bridge.stop_apply().await?;
    bridge
        .platform()
        .execute(
            "INSERT INTO identity.identities (id, email, given_name, family_name, kind, is_admin, created_at, updated_at)
             VALUES ('6a1b2c3d-0000-4000-8000-000000000001', 'taken@example.com', 'Platform', 'Person', 'member', false,
                     '2030-01-01 00:00:20+00', '2030-01-01 00:00:20+00');
             INSERT INTO org.memberships (id, group_id, identity_id, role, created_at, updated_at)
             SELECT '6a1b2c3d-0000-4000-8000-000000000002', g.id, '6a1b2c3d-0000-4000-8000-000000000001', 'lead',
                    '2030-01-01 00:00:21+00', '2030-01-01 00:00:21+00'
             FROM org.groups g",
        )
        .await?;
    bridge
        .legacy()
        .execute("UPDATE users SET email = 'taken@example.com', updated_at = '2030-01-01 00:00:30' WHERE id = 1")
        .await?;
    bridge.start_apply()?;
    bridge.caught_up(WAIT).await?;
    bridge
        .legacy()
        .execute("DELETE FROM users WHERE id = 1")
        .await?;
    if later_edit {
        bridge.caught_up(WAIT).await?;
        bridge
            .platform()
            .execute(
                "UPDATE identity.identities SET given_name = 'Later', updated_at = '2030-01-01 00:00:40+00'
                 WHERE id = '6a1b2c3d-0000-4000-8000-000000000001'",
            )
            .await?;
    }
    bridge.converged(WAIT).await?;
    assert_eq!(
        roles(
            bridge.legacy(),
            "SELECT m.role::text FROM team_members m JOIN users u ON u.id = m.user_id WHERE u.email = 'taken@example.com'"
        )
        .await?,
        ["lead"],
        "the membership made while its user was held back is on legacy"
    );
    bridge.stop().await
}

/// A team with a member on both sides: legacy changes the membership and
/// then the team, newer than anything the platform saw, while the platform
/// deletes the group (the membership cascades there). The membership's change
/// reaches the platform while its group is still deleted there and waits; the
/// team's change then brings the group back, newer than the delete. Both
/// changes are newer than the deletes, so both rows live on both sides.
async fn a_child_changed_while_the_other_side_deleted_its_parent(
    parent_on_platform: &str,
    parent_on_legacy: &str,
) -> anyhow::Result<()> {
    let mut bridge = team_with_a_geofence().await?;
    bridge
        .legacy()
        .execute(
            "INSERT INTO team_members (id, team_id, user_id, role, inserted_at, updated_at)
             VALUES (1, 1, 1, 'member', '2030-01-01 00:00:00', '2030-01-01 00:00:00')",
        )
        .await?;
    bridge.converged(WAIT).await?;
    bridge.stop_apply().await?;
    bridge
        .platform()
        .execute(&format!("DELETE FROM {parent_on_platform}"))
        .await?;
    bridge
        .legacy()
        .execute("UPDATE team_members SET role = 'lead', updated_at = '2030-01-01 00:00:40' WHERE id = 1")
        .await?;
    bridge
        .legacy()
        .execute(&format!(
            "UPDATE {parent_on_legacy} SET updated_at = '2030-01-01 00:00:50' WHERE id = 1"
        ))
        .await?;
    bridge.start_apply()?;
    bridge.converged(WAIT).await?;
    assert_eq!(
        roles(bridge.platform(), "SELECT role::text FROM org.memberships").await?,
        ["lead"],
        "the membership changed after the delete is on the platform"
    );
    bridge.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_membership_changed_while_the_other_side_deleted_its_group_lives_on_with_the_group(
) -> anyhow::Result<()> {
    a_child_changed_while_the_other_side_deleted_its_parent("org.groups", "teams").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_membership_changed_while_the_other_side_deleted_its_identity_lives_on_with_the_identity(
) -> anyhow::Result<()> {
    a_child_changed_while_the_other_side_deleted_its_parent("identity.identities", "users").await
}

/// Legacy deletes its user and gives the email to a new user, while the
/// platform changes the user newer than the delete. The platform's change
/// reaches legacy first (legacy's capture is held): the user is gone there
/// and its email is the new user's, so the change is written onto the new
/// user and the two are paired. Legacy's delete then crosses: the platform
/// row is the new user's counterpart now (in the legacy database's pairs),
/// and the delete, applied by a new apply process, leaves it alone.
/// One user, with the platform's newer version, on both sides.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_users_counterpart_taken_over_by_the_user_given_its_email_stays_paired_with_it(
) -> anyhow::Result<()> {
    let mut bridge = seeded().await?;
    bridge.stop_apply().await?;
    bridge.stop_capture(Side::Legacy).await?;
    bridge
        .legacy()
        .execute(
            "DELETE FROM users WHERE id = 1;
             INSERT INTO users (id, email, full_name, role, inserted_at, updated_at)
             VALUES (2, 'row@example.com', 'New Owner', 'member', '2030-01-01 00:00:20', '2030-01-01 00:00:20')",
        )
        .await?;
    bridge
        .platform()
        .execute(
            "UPDATE identity.identities SET given_name = 'Platform', family_name = 'Later', updated_at = '2030-01-01 00:00:30+00'",
        )
        .await?;
    bridge.start_apply()?;
    let legacy = bridge.legacy().client();
    eventually(
        "the platform's change to be written onto the new legacy user",
        WAIT,
        || async {
            let name: Option<String> = legacy
                .query_opt("SELECT full_name FROM users WHERE id = 2", &[])
                .await?
                .map(|row| row.get(0));
            Ok((name.as_deref() == Some("Platform Later")).then_some(()))
        },
    )
    .await?;
    // A new apply process: what the old one knew of the pairs goes with it.
    bridge.stop_apply().await?;
    bridge.start_capture(Side::Legacy)?;
    bridge.start_apply()?;
    // A later legacy row: once it is on the platform, so is all before it.
    bridge
        .legacy()
        .execute("INSERT INTO teams (id, name, inserted_at, updated_at) VALUES (1, 'Later', '2030-01-01 00:00:40', '2030-01-01 00:00:40')")
        .await?;
    let platform = bridge.platform().client();
    eventually("legacy's changes to cross", WAIT, || async {
        Ok((count(platform, "SELECT count(*) FROM org.groups").await? == 1).then_some(()))
    })
    .await?;
    bridge.converged(WAIT).await?;
    let (legacy_name, platform_name) = names_of_the_only_user(&bridge).await?;
    assert_eq!(
        (legacy_name.as_str(), platform_name.as_str()),
        ("Platform Later", "Platform Later"),
        "one user, the platform's newer version, on both sides"
    );
    bridge.stop().await
}

async fn names_of_the_only_user(bridge: &Bridge) -> anyhow::Result<(String, String)> {
    let legacy: String = bridge
        .legacy()
        .client()
        .query_one("SELECT full_name FROM users", &[])
        .await?
        .get(0);
    let platform: String = bridge
        .platform()
        .client()
        .query_one(
            "SELECT given_name || ' ' || family_name FROM identity.identities",
            &[],
        )
        .await?
        .get(0);
    Ok((legacy, platform))
}

/// Legacy deletes a geofence (as late as the platform's own last version of
/// it) while a platform application's transaction, still open, moves the
/// zone with a later time. The delete reaches the
/// platform and has to wait for the zone's row; when the application commits,
/// the delete decides against the version committed meanwhile, which is newer
/// than the delete: the zone lives on, on both sides.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_waiting_for_an_applications_newer_update_of_the_row_loses_to_it_on_both_sides(
) -> anyhow::Result<()> {
    let mut bridge = team_with_a_geofence().await?;
    bridge.stop_apply().await?;
    // The zone's clock is now the platform's own: (00:00:00, 1).
    bridge
        .platform()
        .execute("UPDATE geo.zones SET name = 'zone renamed'")
        .await?;
    // (00:00:00, 1) on legacy too: as late as the platform's rename.
    bridge
        .legacy()
        .execute("DELETE FROM geofences WHERE id = 1")
        .await?;
    let application = connect(&bridge.platform().url).await?;
    application
        .batch_execute(
            "BEGIN; UPDATE geo.zones SET radius_m = 7, updated_at = '2030-01-01 00:00:05+00'",
        )
        .await?;
    bridge.start_apply()?;
    let platform = bridge.platform().client();
    eventually("apply to wait for the application's row", WAIT, || async {
        let waiting = count(
            platform,
            "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
             WHERE NOT l.granted AND a.application_name LIKE '%apply%'",
        )
        .await?;
        Ok((waiting > 0).then_some(()))
    })
    .await?;
    application.batch_execute("COMMIT").await?;
    bridge.converged(WAIT).await?;
    let radius: i32 = bridge
        .legacy()
        .client()
        .query_one("SELECT radius_m FROM geofences WHERE id = 1", &[])
        .await?
        .get(0);
    assert_eq!(radius, 7, "the newer update lives on, on legacy too");
    bridge.stop().await
}
