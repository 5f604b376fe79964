//! The polling fallback: a source without logical replication synced by
//! reading its tables on `updated_at`, deletes found by reconciliation,
//! apply's own writes recognised, and hand-over to and from streaming.

use std::time::Duration;

use schemas::event::{CaptureMode, Op};
use sync_bridge_tests::{
    count, eventually, random_writes_on_own_rows, unique, Bridge, EventReader, Side,
};

const WAIT: Duration = Duration::from_secs(120);

/// A short interval for tests; the overlap covers apply's lag, so rows apply
/// writes with the other side's `updated_at` are read back (and flagged).
const POLLING: &str =
    "interval = \"1s\"\noverlap = \"60s\"\npage_size = 100\nreconcile_interval = \"2s\"\n";

/// Waits until the count `sql` reads on `client` is `expected`.
async fn until_count(
    what: &str,
    client: &tokio_postgres::Client,
    sql: &str,
    expected: i64,
) -> anyhow::Result<()> {
    eventually(what, WAIT, || async {
        let found = count(client, sql).await?;
        Ok((found == expected).then_some(()))
    })
    .await
}

/// [`POLLING`] with reconciliation an hour away: deletes are not found
/// while a test runs.
fn far_reconciliation() -> String {
    POLLING.replace("reconcile_interval = \"2s\"", "reconcile_interval = \"1h\"")
}

/// [`far_reconciliation`] with rounds an hour apart too: after its first
/// round, capture reads nothing until it is restarted.
fn rare_polling() -> String {
    far_reconciliation().replace("interval = \"1s\"", "interval = \"1h\"")
}

/// A bridge whose two captures poll.
async fn polling_bridge(hint: &str) -> anyhow::Result<Bridge> {
    let mut bridge = Bridge::prepare(hint).await?;
    bridge.legacy.use_polling(POLLING);
    bridge.platform.use_polling(POLLING);
    bridge.run().await
}

async fn events_of_mode(topic: &str, mode: CaptureMode) -> anyhow::Result<usize> {
    let mut reader = EventReader::new(topic)?;
    reader
        .read_until("a polled event", WAIT, |events| {
            events.iter().any(|e| e.mode == mode)
        })
        .await?;
    Ok(reader.events.iter().filter(|e| e.mode == mode).count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_without_the_replication_privilege_is_synced_both_ways_by_polling(
) -> anyhow::Result<()> {
    let mut bridge = Bridge::prepare("poll_both").await?;
    // The legacy capture logs in as a plain role: no REPLICATION, SELECT on
    // the tables, its own tables in the syncbridge schema.
    let role = unique("poller");
    bridge
        .legacy()
        .execute(&format!(
            "CREATE ROLE {role} LOGIN NOREPLICATION;
             GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role};
             CREATE SCHEMA syncbridge;
             GRANT USAGE, CREATE ON SCHEMA syncbridge TO {role};
             ALTER DEFAULT PRIVILEGES IN SCHEMA syncbridge GRANT SELECT ON TABLES TO {role};"
        ))
        .await?;
    let replication: bool = bridge
        .legacy()
        .client()
        .query_one(
            "SELECT rolreplication FROM pg_roles WHERE rolname = $1",
            &[&role],
        )
        .await?
        .get(0);
    assert!(!replication);
    bridge.legacy.source_url = Some(bridge.legacy.db.url.replacen(
        "postgres://postgres@",
        &format!("postgres://{role}@"),
        1,
    ));
    bridge.legacy.use_polling(POLLING);
    bridge.platform.use_polling(POLLING);
    let bridge = bridge.run().await?;

    let legacy_url = bridge.legacy().url.clone();
    let platform_url = bridge.platform().url.clone();
    let (legacy, platform) = tokio::join!(
        random_writes_on_own_rows(&legacy_url, Side::Legacy, Duration::from_secs(15), 11),
        random_writes_on_own_rows(&platform_url, Side::Platform, Duration::from_secs(15), 12),
    );
    assert!(legacy? > 50 && platform? > 50);
    let report = bridge.converged(WAIT).await?;
    assert!(report.corresponds(), "{report}");
    let rows = count(bridge.legacy().client(), "SELECT count(*) FROM users").await?;
    assert!(rows > 10, "the writers created users: {rows}");
    assert_eq!(
        bridge
            .legacy()
            .confirmed_flush_lsn(&bridge.legacy.slot)
            .await?,
        None,
        "no slot on the polled source"
    );
    assert!(events_of_mode(&bridge.legacy.topic, CaptureMode::Polling).await? > 0);
    bridge.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_sharing_one_updated_at_are_all_carried_once_across_pages() -> anyhow::Result<()> {
    let bridge = polling_bridge("poll_ties").await?;
    bridge
        .legacy()
        .execute(
            "INSERT INTO users (email, full_name, role, inserted_at, updated_at)
             SELECT 'tie' || g || '@example.com', 'Tied Row', 'member', date_trunc('second', now() AT TIME ZONE 'UTC'), date_trunc('second', now() AT TIME ZONE 'UTC')
             FROM generate_series(1, 2500) g",
        )
        .await?;
    bridge.converged(WAIT).await?;
    assert_eq!(
        count(
            bridge.platform().client(),
            "SELECT count(*) FROM identity.identities WHERE email LIKE 'tie%'"
        )
        .await?,
        2500
    );
    // Every row was sent exactly once, however many rounds re-read the overlap.
    let mut reader = EventReader::new(&bridge.legacy.topic)?;
    reader
        .read_until("2,500 polled users", WAIT, |events| {
            events.iter().filter(|e| e.table == "users").count() >= 2500
        })
        .await?;
    // A few more rounds re-read the overlap; nothing is sent again.
    let _ = reader
        .read_until("nothing more", Duration::from_secs(4), |_| false)
        .await;
    let users: Vec<_> = reader
        .events
        .iter()
        .filter(|e| e.table == "users")
        .collect();
    assert_eq!(users.len(), 2500, "each tied row sent once");
    assert!(users.iter().all(|e| e.mode == CaptureMode::Polling));
    let pages: std::collections::BTreeSet<_> = users
        .iter()
        .filter(|e| e.transaction.last)
        .map(|e| e.transaction.event_count)
        .collect();
    assert!(
        pages.iter().all(|count| count.is_some_and(|n| n <= 100)),
        "pages of at most page_size: {pages:?}"
    );
    bridge.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_stamped_further_behind_than_the_overlap_cross_at_the_next_reconciliation(
) -> anyhow::Result<()> {
    // A writer whose clock is an hour behind stamps an insert and an update
    // before the watermark minus the overlap, where no round reads. Before,
    // the insert's key was taken into the ledger by reconciliation as if
    // apply had written it, and the update was never read.
    let bridge = polling_bridge("poll_skew").await?;
    let legacy = bridge.legacy();
    legacy
        .execute(
            "INSERT INTO users (email, full_name, role, inserted_at, updated_at)
             VALUES ('on-time@example.com', 'On Time', 'member', now() AT TIME ZONE 'UTC', now() AT TIME ZONE 'UTC')",
        )
        .await?;
    bridge.converged(WAIT).await?;
    legacy
        .execute(
            "INSERT INTO users (email, full_name, role, inserted_at, updated_at)
             VALUES ('behind@example.com', 'Clock Behind', 'member',
                     now() AT TIME ZONE 'UTC' - interval '1 hour', now() AT TIME ZONE 'UTC' - interval '1 hour')",
        )
        .await?;
    legacy
        .execute(
            "UPDATE users SET full_name = 'Renamed Behind', updated_at = now() AT TIME ZONE 'UTC' - interval '1 hour'
             WHERE email = 'on-time@example.com'",
        )
        .await?;
    bridge.converged(WAIT).await?;
    let names: Vec<String> = bridge
        .platform()
        .client()
        .query(
            "SELECT given_name || ' ' || family_name FROM identity.identities ORDER BY 1",
            &[],
        )
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(names, ["Clock Behind", "Renamed Behind"]);
    bridge.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_reach_the_other_side_through_reconciliation() -> anyhow::Result<()> {
    let bridge = polling_bridge("poll_deletes").await?;
    bridge
        .legacy()
        .execute(
            "INSERT INTO users (email, full_name, role, inserted_at, updated_at)
             SELECT 'gone' || g || '@example.com', 'Soon Gone', 'member', date_trunc('second', now() AT TIME ZONE 'UTC'), date_trunc('second', now() AT TIME ZONE 'UTC')
             FROM generate_series(1, 30) g",
        )
        .await?;
    bridge
        .platform()
        .execute(
            "INSERT INTO identity.identities (id, email, given_name, family_name, kind, is_admin, created_at, updated_at)
             SELECT gen_random_uuid(), 'there' || g || '@example.com', 'There', 'Family', 'member', false, now(), now()
             FROM generate_series(1, 20) g",
        )
        .await?;
    bridge.converged(WAIT).await?;
    bridge
        .legacy()
        .execute("DELETE FROM users WHERE email LIKE 'gone1%'")
        .await?;
    bridge
        .platform()
        .execute("DELETE FROM identity.identities WHERE email LIKE 'there1%'")
        .await?;
    bridge.converged(WAIT).await?;
    assert_eq!(
        count(
            bridge.platform().client(),
            "SELECT count(*) FROM identity.identities WHERE email LIKE 'gone%'"
        )
        .await?,
        30 - 11
    );
    assert_eq!(
        count(
            bridge.legacy().client(),
            "SELECT count(*) FROM users WHERE email LIKE 'there%'"
        )
        .await?,
        20 - 11
    );
    let mut reader = EventReader::new(&bridge.legacy.topic)?;
    reader
        .read_until("the polled deletes", WAIT, |events| {
            events
                .iter()
                .filter(|e| e.op == schemas::event::Op::Delete && e.table == "users")
                .count()
                >= 11
        })
        .await?;
    bridge.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_deleted_and_recreated_with_its_email_between_polls_takes_over_its_counterpart(
) -> anyhow::Result<()> {
    // Reconciliation is far off, so the platform's new rows reach legacy
    // while the rows they replace still look alive there: each legacy user
    // is paired with a platform row that is gone, and the new row with the
    // same email links to it (the stale pair gives way) instead of colliding
    // with it on the email (a unique violation dead-lettered the page).
    let mut bridge = Bridge::prepare("poll_recreated").await?;
    let polling = far_reconciliation();
    bridge.legacy.use_polling(&polling);
    bridge.platform.use_polling(&polling);
    let bridge = bridge.run().await?;
    let insert = "INSERT INTO identity.identities (id, email, given_name, family_name, kind, is_admin, created_at, updated_at)
         SELECT gen_random_uuid(), 'again' || g || '@example.com', 'First', 'Family', 'member', false, now(), now()
         FROM generate_series(1, 20) g";
    bridge.platform().execute(insert).await?;
    bridge.converged(WAIT).await?;
    let linked_before = bridge
        .counters
        .of(apply::mapping::Side::Platform)
        .snapshot()
        .linked;
    bridge
        .platform()
        .execute(&format!(
            "DELETE FROM identity.identities; {}",
            insert.replace("'First'", "'Second'")
        ))
        .await?;
    bridge.converged(WAIT).await?;
    assert_eq!(
        count(
            bridge.legacy().client(),
            "SELECT count(*) FROM users WHERE full_name LIKE 'Second %'"
        )
        .await?,
        20,
        "the legacy users carry the new rows"
    );
    let snapshot = bridge
        .counters
        .of(apply::mapping::Side::Platform)
        .snapshot();
    assert_eq!(
        snapshot.linked - linked_before,
        20,
        "each new row took over a stale pair"
    );
    assert_eq!(snapshot.dead_lettered, 0);
    bridge.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_given_the_email_of_a_row_edited_in_the_same_second_takes_over_its_counterpart_with_its_own_values(
) -> anyhow::Result<()> {
    // Legacy user 1 is edited three times within one second, so its clock is
    // that second's third tick when it crosses. Then it is deleted and user 2
    // is given its email, stamped in the same second: a new row, whose clock
    // is that second's first tick. With reconciliation far off, user 2
    // crosses before user 1's delete and takes over the platform row. The
    // ticks of two rows do not order them; legacy's unique email does (user
    // 1 let go of the email before user 2 took it), so user 2's values land.
    let mut bridge = Bridge::prepare("poll_takeover_tick").await?;
    let far = far_reconciliation();
    bridge.legacy.use_polling(&far);
    let bridge = bridge.run().await?;
    let second = "'2030-01-01 00:00:00'";
    bridge
        .legacy()
        .execute(&format!(
            "INSERT INTO users (id, email, full_name, role, inserted_at, updated_at)
             VALUES (1, 'handed@example.com', 'First Family', 'member', {second}, {second});
             UPDATE users SET full_name = 'Once Family' WHERE id = 1;
             UPDATE users SET full_name = 'Twice Family' WHERE id = 1;
             UPDATE users SET full_name = 'Thrice Family' WHERE id = 1;"
        ))
        .await?;
    bridge.converged(WAIT).await?;
    bridge
        .legacy()
        .execute(&format!(
            "DELETE FROM users WHERE id = 1;
             INSERT INTO users (id, email, full_name, role, inserted_at, updated_at)
             VALUES (2, 'handed@example.com', 'Second Family', 'member', {second}, {second});"
        ))
        .await?;
    until_count(
        "the platform row to carry the new user's values",
        bridge.platform().client(),
        "SELECT count(*) FROM identity.identities
                 WHERE email = 'handed@example.com' AND given_name = 'Second'",
        1,
    )
    .await?;
    bridge.converged(WAIT).await?;
    bridge.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_apply_wrote_and_the_application_deleted_before_any_pass_saw_it_is_deleted_on_the_other_side(
) -> anyhow::Result<()> {
    // Legacy polls rarely: the team apply writes for a new platform group is
    // deleted by a legacy application before any round or reconciliation
    // took in its key. Only its tombstone says it was there.
    let mut bridge = Bridge::prepare("poll_unseen_delete").await?;
    let rare = rare_polling();
    bridge.legacy.use_polling(&rare);
    let mut bridge = bridge.run().await?;
    bridge
        .platform()
        .execute(
            "INSERT INTO org.groups (id, name, created_at, updated_at)
             VALUES (gen_random_uuid(), 'Fleeting', now(), now())",
        )
        .await?;
    until_count(
        "the group to reach legacy",
        bridge.legacy().client(),
        "SELECT count(*) FROM teams WHERE name = 'Fleeting'",
        1,
    )
    .await?;
    bridge
        .legacy()
        .execute("DELETE FROM teams WHERE name = 'Fleeting'")
        .await?;

    bridge.legacy.use_polling(POLLING);
    bridge.restart_capture(Side::Legacy).await?;
    until_count(
        "the group to be deleted on the platform",
        bridge.platform().client(),
        "SELECT count(*) FROM org.groups WHERE name = 'Fleeting'",
        0,
    )
    .await?;
    bridge.converged(WAIT).await?;
    bridge.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_older_than_the_delete_of_its_counterpart_is_not_moved_onto_the_row_that_took_its_email(
) -> anyhow::Result<()> {
    // The platform deletes the counterparts of legacy users A and C and
    // gives their emails to two new rows. Legacy edits A (stamped before the
    // platform's delete) and C (stamped after it) in one round. C's edit,
    // newer than the delete, fails on the email the new row holds, and the
    // round is applied again linking it onto that row (the row is C's
    // again). A's edit is older than the delete: the delete wins over it, so
    // it must not be moved onto the new row either; once the platform's
    // changes cross, legacy deletes A and takes the new row as it is.
    let mut bridge = Bridge::prepare("poll_relink_tombstone").await?;
    let far = far_reconciliation();
    bridge.legacy.use_polling(&far);
    let mut bridge = bridge.run().await?;
    bridge
        .legacy()
        .execute(
            "INSERT INTO users (id, email, full_name, role, inserted_at, updated_at) VALUES
             (1, 'a@example.com', 'First Family', 'member', '2025-01-01', '2025-01-01'),
             (2, 'c@example.com', 'First Family', 'member', '2025-01-01', '2025-01-01')",
        )
        .await?;
    bridge.converged(WAIT).await?;

    bridge.stop_capture(Side::Platform).await?;
    bridge
        .platform()
        .execute(
            "DELETE FROM identity.identities;
             INSERT INTO identity.identities (id, email, given_name, family_name, kind, is_admin, created_at, updated_at) VALUES
             (gen_random_uuid(), 'a@example.com', 'New', 'Row', 'member', false, '2025-01-01', '2025-01-01'),
             (gen_random_uuid(), 'c@example.com', 'New', 'Row', 'member', false, '2025-01-01', '2025-01-01')",
        )
        .await?;
    bridge
        .legacy()
        .execute(
            "BEGIN;
             UPDATE users SET full_name = 'Older Edit', updated_at = '2025-06-01' WHERE id = 1;
             UPDATE users SET full_name = 'Newer Edit', updated_at = '2030-01-01' WHERE id = 2;
             COMMIT;",
        )
        .await?;
    until_count(
        "legacy's newer edit to land on the new row",
        bridge.platform().client(),
        "SELECT count(*) FROM identity.identities
             WHERE email = 'c@example.com' AND given_name = 'Newer'",
        1,
    )
    .await?;

    bridge.start_capture(Side::Platform)?;
    eventually(
        "legacy to hold the platform's new row for the email",
        WAIT,
        || async {
            let held = count(
            bridge.legacy().client(),
            "SELECT count(*) FROM users WHERE email = 'a@example.com' AND full_name = 'New Row'",
        )
        .await?;
            Ok((held == 1).then_some(()))
        },
    )
    .await?;
    bridge.converged(WAIT).await?;
    bridge.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_email_handed_from_one_user_to_another_within_a_polling_round_lands_on_both_sides(
) -> anyhow::Result<()> {
    // User 1 gives its email up and user 2 takes it, in one legacy
    // transaction. A round reads both rows as they are, in the order of
    // their updated_at, which puts the taker first: it fails on the email
    // user 1's counterpart still holds, and again when the round is applied
    // once more. The round is no source transaction: applied row by row,
    // user 1 lands and user 2 waits until the email is free, rather than
    // the whole round being dead-lettered.
    let mut bridge = Bridge::prepare("poll_handed_email").await?;
    bridge.legacy.use_polling(POLLING);
    let bridge = bridge.run().await?;
    bridge
        .legacy()
        .execute(
            "INSERT INTO users (id, email, full_name, role, inserted_at, updated_at) VALUES
             (1, 'held@example.com', 'Giver Family', 'member', '2029-01-01', '2029-01-01'),
             (2, 'other@example.com', 'Taker Family', 'member', '2029-01-01', '2029-01-01')",
        )
        .await?;
    bridge.converged(WAIT).await?;
    bridge
        .legacy()
        .execute(
            "BEGIN;
             UPDATE users SET email = 'new@example.com', updated_at = '2030-01-01 00:00:01' WHERE id = 1;
             UPDATE users SET email = 'held@example.com', updated_at = '2030-01-01 00:00:00' WHERE id = 2;
             COMMIT;",
        )
        .await?;
    until_count(
        "the email to reach its new user on the platform",
        bridge.platform().client(),
        "SELECT count(*) FROM identity.identities
             WHERE (email = 'held@example.com' AND given_name = 'Taker')
                OR (email = 'new@example.com' AND given_name = 'Giver')",
        2,
    )
    .await?;
    bridge.converged(WAIT).await?;
    let legacy = bridge.counters.of(apply::mapping::Side::Legacy).snapshot();
    assert_eq!(legacy.dead_lettered, 0, "nothing was dead-lettered");
    bridge.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_an_applied_delete_cascaded_to_before_any_pass_saw_it_still_crosses(
) -> anyhow::Result<()> {
    // Legacy polls rarely. A legacy application adds a geofence to a team
    // that came from the platform; the platform deletes the group and adds
    // another in one transaction. Apply's delete of the team sets the
    // geofence's team to NULL in legacy (ON DELETE SET NULL), giving the row
    // the xmin apply's ledger records for the new team. The application's
    // insert was never polled: the row is not apply's version, and must
    // cross.
    let mut bridge = Bridge::prepare("poll_cascaded_insert").await?;
    let rare = rare_polling();
    bridge.legacy.use_polling(&rare);
    let mut bridge = bridge.run().await?;
    bridge
        .platform()
        .execute(
            "INSERT INTO org.groups (id, name, created_at, updated_at)
             VALUES (gen_random_uuid(), 'Doomed', now(), now())",
        )
        .await?;
    until_count(
        "the group to reach legacy",
        bridge.legacy().client(),
        "SELECT count(*) FROM teams WHERE name = 'Doomed'",
        1,
    )
    .await?;
    bridge
        .legacy()
        .execute(
            "INSERT INTO geofences (team_id, name, latitude, longitude, radius_m, inserted_at, updated_at)
             SELECT id, 'Passing', 1.5, 2.5, 100, now(), now() FROM teams WHERE name = 'Doomed'",
        )
        .await?;
    bridge
        .platform()
        .execute(
            "BEGIN;
             DELETE FROM org.groups WHERE name = 'Doomed';
             INSERT INTO org.groups (id, name, created_at, updated_at)
             VALUES (gen_random_uuid(), 'Witness', now(), now());
             COMMIT;",
        )
        .await?;
    until_count(
        "the platform's transaction to land in legacy",
        bridge.legacy().client(),
        "SELECT count(*) FROM teams WHERE name = 'Witness'
             AND NOT EXISTS (SELECT 1 FROM teams WHERE name = 'Doomed')",
        1,
    )
    .await?;

    bridge.legacy.use_polling(POLLING);
    bridge.restart_capture(Side::Legacy).await?;
    until_count(
        "the geofence to reach the platform",
        bridge.platform().client(),
        "SELECT count(*) FROM geo.zones WHERE name = 'Passing' AND group_id IS NULL",
        1,
    )
    .await?;
    bridge.converged(WAIT).await?;
    bridge.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_delete_of_a_row_whose_counterpart_passed_to_its_successor_leaves_the_successor_alone(
) -> anyhow::Result<()> {
    // Legacy users are deleted and recreated with the same emails. With
    // reconciliation far off, the new rows cross first and take over the
    // platform rows of the old ones (the stale pairs give way); the old
    // rows' deletes come later, from reconciliation. They find no pair, and
    // the id a tombstone would use is the new row's now: they must leave it
    // alone, not collide with its pair (a unique violation dead-lettered the
    // whole page of deletes, and the platform kept rows legacy no longer had).
    let mut bridge = Bridge::prepare("poll_late_delete").await?;
    let far = far_reconciliation();
    bridge.legacy.use_polling(&far);
    bridge.platform.use_polling(POLLING);
    let mut bridge = bridge.run().await?;
    let insert = "INSERT INTO users (email, full_name, role, inserted_at, updated_at)
         SELECT 'late' || g || '@example.com', 'First Family', 'member', now(), now()
         FROM generate_series(1, 20) g";
    bridge.legacy().execute(insert).await?;
    bridge.converged(WAIT).await?;
    let linked_before = bridge
        .counters
        .of(apply::mapping::Side::Legacy)
        .snapshot()
        .linked;
    bridge
        .legacy()
        .execute(&format!(
            "DELETE FROM users WHERE email LIKE 'late%'; {}",
            insert.replace("'First Family'", "'Second Family'")
        ))
        .await?;
    sync_bridge_tests::eventually(
        "the new users to take over the platform rows",
        WAIT,
        || async {
            let linked = bridge
                .counters
                .of(apply::mapping::Side::Legacy)
                .snapshot()
                .linked;
            Ok((linked - linked_before == 20).then_some(()))
        },
    )
    .await?;

    // Now reconciliation finds the old rows gone, and apply takes their deletes.
    bridge.legacy.use_polling(POLLING);
    bridge.restart_capture(Side::Legacy).await?;
    let topic = bridge.legacy.topic.clone();
    EventReader::new(&topic)?
        .read_until("the old users' deletes", WAIT, |events| {
            events.iter().filter(|e| e.op == Op::Delete).count() >= 20
        })
        .await?;
    let end = sync_bridge_tests::last_offset(&topic).await?;
    sync_bridge_tests::eventually("apply to pass the deletes", WAIT, || async {
        let applied = count(
            bridge.platform().client(),
            &format!("SELECT coalesce(max(kafka_offset), -1) FROM syncbridge.apply_position WHERE topic = '{topic}'"),
        )
        .await?;
        Ok((applied >= end).then_some(()))
    })
    .await?;
    bridge.converged(WAIT).await?;
    assert_eq!(
        count(
            bridge.platform().client(),
            "SELECT count(*) FROM identity.identities WHERE given_name = 'Second'"
        )
        .await?,
        20,
        "the platform rows carry the new users"
    );
    let legacy = bridge.counters.of(apply::mapping::Side::Legacy).snapshot();
    assert_eq!(legacy.dead_lettered, 0, "no delete was dead-lettered");
    assert_eq!(legacy.deleted, 0, "the late deletes removed nothing");
    bridge.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_writes_polled_back_are_flagged_and_not_applied_again() -> anyhow::Result<()> {
    let bridge = polling_bridge("poll_echo").await?;
    for (db, table) in [
        (bridge.legacy(), "public.users"),
        (bridge.platform(), "identity.identities"),
    ] {
        db.audit_writes(table).await?;
    }
    bridge
        .legacy()
        .execute(
            "INSERT INTO users (email, full_name, role, inserted_at, updated_at) VALUES ('once@example.com', 'Once Only', 'staff', date_trunc('second', now() AT TIME ZONE 'UTC'), date_trunc('second', now() AT TIME ZONE 'UTC'))",
        )
        .await?;
    bridge.converged(WAIT).await?;
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
    bridge
        .platform()
        .execute("UPDATE identity.identities SET family_name = 'Twice', updated_at = now() + interval '2 seconds' WHERE email = 'once@example.com'")
        .await?;
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
    // Several more rounds re-read the overlap: nothing bounces.
    tokio::time::sleep(Duration::from_secs(4)).await;
    bridge.converged(WAIT).await?;
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
    let mut reader = EventReader::new(&bridge.platform.topic)?;
    reader
        .read_until("the flagged echo", WAIT, |events| {
            events.iter().any(|e| {
                e.marker
                    .as_deref()
                    .is_some_and(|m| m.starts_with("polling:"))
            })
        })
        .await?;
    bridge.stop().await
}

/// Inserts users numbered from `from` until `stop` is set, one a statement.
async fn numbered_writer(
    url: String,
    from: i64,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> anyhow::Result<i64> {
    let client = sync_bridge_tests::connect(&url).await?;
    let mut n = from;
    while !stop.load(std::sync::atomic::Ordering::Acquire) {
        client
            .batch_execute(&format!(
                "INSERT INTO users (email, full_name, role, inserted_at, updated_at) VALUES ('w{n}@example.com', 'Writer i{n}', 'member', date_trunc('second', now() AT TIME ZONE 'UTC'), date_trunc('second', now() AT TIME ZONE 'UTC'));
                 UPDATE users SET full_name = 'Writer u{n}', updated_at = date_trunc('second', now() AT TIME ZONE 'UTC') WHERE email = 'w{}@example.com'",
                n / 2
            ))
            .await?;
        n += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(n - from)
}

/// Legacy writes numbered rows (and updates of earlier ones) while its
/// capture goes from streaming to polling (its slot dropped meanwhile) and
/// back; every row but one deleted crosses, created once, each row's final
/// version lands, and no version is applied twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_to_polling_and_back_loses_nothing_and_applies_no_version_twice(
) -> anyhow::Result<()> {
    let mut bridge = Bridge::start("poll_switch").await?;
    sync_bridge_tests::install_audit(bridge.platform()).await?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = tokio::spawn(numbered_writer(
        bridge.legacy().url.clone(),
        0,
        std::sync::Arc::clone(&stop),
    ));
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Streaming -> polling: start from a little before the last streamed
    // commit (here: a minute before now).
    let start_from: String = bridge
        .legacy()
        .client()
        .query_one(
            "SELECT to_char(now() AT TIME ZONE 'UTC' - interval '1 minute', 'YYYY-MM-DD HH24:MI:SS')",
            &[],
        )
        .await?
        .get(0);
    bridge
        .legacy
        .use_polling(&format!("{POLLING}start_from = {start_from:?}\n"));
    bridge.restart_capture(Side::Legacy).await?;
    // The slot is lost while polling (the case polling exists for).
    bridge.legacy().drop_slot(&bridge.legacy.slot).await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    bridge
        .legacy()
        .execute("DELETE FROM users WHERE email = 'w3@example.com'")
        .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Polling -> streaming: a new slot, then one last poll covers the gap.
    bridge.legacy.use_streaming();
    bridge.restart_capture(Side::Legacy).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, std::sync::atomic::Ordering::Release);
    let written = writer.await??;
    assert!(written > 50, "the writer kept writing: {written}");

    let report = bridge.converged(WAIT).await?;
    assert!(report.corresponds(), "{report}");
    let platform_rows = count(
        bridge.platform().client(),
        "SELECT count(*) FROM identity.identities WHERE email LIKE 'w%@example.com'",
    )
    .await?;
    let distinct = count(
        bridge.platform().client(),
        "SELECT count(DISTINCT email) FROM identity.identities WHERE email LIKE 'w%@example.com'",
    )
    .await?;
    assert_eq!(platform_rows, written - 1, "every row but the deleted one");
    assert_eq!(distinct, platform_rows, "no row created twice");
    // The ledger: every write carries an id of its own (`Writer i<n>` for
    // an insert, `Writer u<n>` for an update). Polling sends a row's latest
    // version, so an intermediate one may never cross; but no version may
    // be applied twice, and each row's final version must have landed.
    let twice = count(
        bridge.platform().client(),
        "SELECT count(*) FROM (SELECT change FROM public.change_audit WHERE op = 'W' GROUP BY change HAVING count(*) > 1) AS d",
    )
    .await?;
    let doubled: Vec<String> = bridge
        .platform()
        .client()
        .query(
            "SELECT change FROM public.change_audit WHERE op = 'W' GROUP BY change HAVING count(*) > 1 LIMIT 10",
            &[],
        )
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(twice, 0, "no version applied twice: {doubled:?}");
    let finals: Vec<String> = bridge
        .legacy()
        .client()
        .query(
            "SELECT split_part(full_name, ' ', 2) FROM users WHERE email LIKE 'w%@example.com'",
            &[],
        )
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    let landed = count(
        bridge.platform().client(),
        &format!(
            "SELECT count(DISTINCT change) FROM public.change_audit WHERE op = 'W' AND change IN ({})",
            finals
                .iter()
                .map(|f| format!("'{f}'"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    )
    .await?;
    assert_eq!(
        landed as usize,
        finals.len(),
        "every row's final version landed"
    );
    let watermarks = count(
        bridge.legacy().client(),
        "SELECT count(*) FROM syncbridge.capture_watermark",
    )
    .await?;
    assert_eq!(watermarks, 0, "streaming retired the polling watermarks");
    bridge.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watermark_does_not_move_while_kafka_cannot_confirm_a_page() -> anyhow::Result<()> {
    let db = sync_bridge_tests::TestDb::with_reference_schema(Side::Legacy, "poll_nokafka").await?;
    db.execute(
        "INSERT INTO users (email, full_name, role, inserted_at, updated_at)
         SELECT 'u' || g || '@example.com', 'Some One', 'member', now() AT TIME ZONE 'UTC', now() AT TIME ZONE 'UTC'
         FROM generate_series(1, 5) g",
    )
    .await?;
    let mut setup = sync_bridge_tests::CaptureSetup::new(db, &["public.users"]);
    setup.use_polling(POLLING);
    // A broker nobody listens on: deliveries wait (capture never times them out).
    let port = sync_bridge_tests::free_port()?;
    let toml = setup.toml().replace(
        &sync_bridge_tests::Stack::get().brokers,
        &format!("127.0.0.1:{port}"),
    );
    let config = capture::Config::from_toml(&toml)?;
    let connection = config.connection()?;
    let codec = schemas::codec::Codec::new()?;
    let producer = runtime::kafka::producer(&config.kafka, 1000)?;
    let mut poller =
        capture::polling::Poller::connect(&config, &connection, &codec, producer).await?;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(5)).await;
        stop.cancel();
    });
    let completed = poller.round(&shutdown).await?;
    assert!(!completed, "the round cannot complete without the broker");
    let client = setup.db.client();
    let moved = count(
        client,
        "SELECT count(*) FROM syncbridge.capture_watermark WHERE updated_at IS NOT NULL",
    )
    .await?;
    assert_eq!(moved, 0, "no watermark past unconfirmed rows");
    let sent = count(
        client,
        "SELECT count(*) FROM syncbridge.capture_keys WHERE row_xmin IS NOT NULL",
    )
    .await?;
    assert_eq!(sent, 0, "no row recorded as sent");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_polled_again_as_they_already_are_on_the_other_side_are_not_written_again(
) -> anyhow::Result<()> {
    let mut bridge = Bridge::start("poll_again").await?;
    sync_bridge_tests::install_audit(bridge.platform()).await?;
    let ledger =
        sync_bridge_tests::ChangeLedger::write_legacy_users(&bridge.legacy().url, 40, 9).await?;
    bridge.converged(WAIT).await?;
    ledger.check_applied_once(bridge.platform()).await?;

    // Polling from before those changes reads every row again, each as it
    // already is on the platform.
    bridge
        .legacy
        .use_polling(&format!("{POLLING}start_from = \"2000-01-01 00:00:00\"\n"));
    bridge.restart_capture(Side::Legacy).await?;
    let users = count(bridge.legacy().client(), "SELECT count(*) FROM users").await?;
    sync_bridge_tests::eventually("every user polled again and confirmed", WAIT, || async {
        let sent = count(
            bridge.legacy().client(),
            "SELECT count(*) FROM syncbridge.capture_keys WHERE tbl = 'public.users' AND row_xmin IS NOT NULL",
        )
        .await?;
        Ok((sent >= users).then_some(()))
    })
    .await?;
    assert!(
        events_of_mode(&bridge.legacy.topic, CaptureMode::Polling).await? > 0,
        "rows were polled"
    );
    bridge.caught_up(WAIT).await?;
    bridge.converged(WAIT).await?;
    ledger.check_applied_once(bridge.platform()).await?;
    bridge.stop().await
}

/// Legacy polls and deletes a team; the platform, not having seen the
/// delete, renames the group a second later, before reconciliation finds the
/// delete. The rename is newer than the delete, so the group lives on and
/// comes back on legacy. The delete is re-asserted on legacy with the clock
/// it was stamped with there, not the later time reconciliation read it at,
/// which would have refused the rename there for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_newer_than_a_polled_delete_but_older_than_its_discovery_wins_on_both_sides(
) -> anyhow::Result<()> {
    let mut bridge = Bridge::prepare("poll_reassert").await?;
    bridge.legacy.use_polling(POLLING);
    let mut bridge = bridge.run().await?;
    bridge
        .legacy()
        .execute(
            "INSERT INTO teams (id, name, archived, inserted_at, updated_at)
             VALUES (1, 'Team', false, now() AT TIME ZONE 'UTC' - interval '1 minute', now() AT TIME ZONE 'UTC' - interval '1 minute')",
        )
        .await?;
    bridge.converged(WAIT).await?;
    bridge.stop_apply().await?;
    bridge.stop_capture(Side::Platform).await?;
    let legacy = bridge.legacy().client();
    legacy
        .batch_execute("DELETE FROM teams WHERE id = 1")
        .await?;
    let deleted_in: i64 = legacy
        .query_one("SELECT floor(extract(epoch FROM now()))::int8", &[])
        .await?
        .get(0);
    eventually("the next second", WAIT, || async {
        let now: i64 = legacy
            .query_one(
                "SELECT floor(extract(epoch FROM clock_timestamp()))::int8",
                &[],
            )
            .await?
            .get(0);
        Ok((now > deleted_in).then_some(()))
    })
    .await?;
    bridge
        .platform()
        .execute("UPDATE org.groups SET name = 'Renamed', updated_at = now()")
        .await?;
    // Reconciliation finds the delete after the rename.
    let mut reader = EventReader::new(&bridge.legacy.topic)?;
    reader
        .read_until("the polled delete", WAIT, |events| {
            events
                .iter()
                .any(|e| e.op == Op::Delete && e.table == "teams")
        })
        .await?;
    // The delete crosses and is re-asserted on legacy before the rename
    // reaches legacy.
    bridge.start_apply()?;
    bridge.caught_up(WAIT).await?;
    let platform = bridge.platform().client();
    eventually("the delete to be re-asserted on legacy", WAIT, || async {
        let outbox = count(platform, "SELECT count(*) FROM syncbridge.delete_outbox").await?;
        Ok((outbox == 0).then_some(()))
    })
    .await?;
    bridge.start_capture(Side::Platform)?;
    bridge.converged(WAIT).await?;
    let name: String = bridge
        .legacy()
        .client()
        .query_one("SELECT name FROM teams WHERE id = 1", &[])
        .await?
        .get(0);
    assert_eq!(
        name, "Renamed",
        "the newer rename brought the team back on legacy"
    );
    bridge.stop().await
}
