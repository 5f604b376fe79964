//! Two writers per direction: the next batch is written while the one
//! before it commits, and nothing that depends on the batch before it runs
//! until that batch has committed.

use std::time::Duration;

use schemas::event::Op;
use sync_bridge_tests::{count, eventually, until_count, Bridge, EventReader};

const WAIT: Duration = Duration::from_secs(120);

/// A bridge whose apply commits after every source transaction, with two
/// writers, so that consecutive transactions land on alternate connections.
async fn one_transaction_per_batch(hint: &str) -> anyhow::Result<Bridge> {
    let mut bridge = Bridge::prepare(hint).await?;
    bridge.apply_options = "writers = 2\nbatch_max_events = 1\n".into();
    Ok(bridge)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn children_in_the_transaction_after_their_parents_wait_for_the_parents_commit(
) -> anyhow::Result<()> {
    const ROUNDS: i64 = 6;
    const USERS: i64 = 3000;
    let mut bridge = one_transaction_per_batch("writers_fk").await?;
    bridge.start_captures().await?;
    // A backlog of rounds of two transactions: a team and many users (the
    // last of them still being written when the first transaction's commit
    // is sent), then memberships of both. Applied, each membership
    // transaction is written while its parents' transaction still commits
    // on the other connection.
    let legacy = bridge.legacy();
    for round in 0..ROUNDS {
        let first = round * USERS + 1;
        let last = (round + 1) * USERS;
        legacy
            .execute(&format!(
                "BEGIN;
                 INSERT INTO teams (id, name, archived, inserted_at, updated_at)
                 VALUES ({round} + 1, 'Team {round}', false, '2030-01-01 00:00:00', '2030-01-01 00:00:00');
                 INSERT INTO users (id, email, full_name, role, inserted_at, updated_at)
                 SELECT g, 'u' || g || '@example.com', 'User ' || g, 'member', '2030-01-01 00:00:00', '2030-01-01 00:00:00'
                 FROM generate_series({first}, {last}) g;
                 COMMIT;"
            ))
            .await?;
        legacy
            .execute(&format!(
                "INSERT INTO team_members (team_id, user_id, role, inserted_at, updated_at)
                 SELECT {round} + 1, g, 'member', '2030-01-01 00:00:00', '2030-01-01 00:00:00'
                 FROM generate_series({last} - 9, {last}) g"
            ))
            .await?;
    }
    bridge.start_apply()?;
    bridge.converged(WAIT).await?;
    assert_eq!(
        count(
            bridge.platform().client(),
            "SELECT count(*) FROM org.memberships"
        )
        .await?,
        ROUNDS * 10,
        "every membership crossed"
    );
    let counts = eventually("every transaction counted", WAIT, || async {
        let counts = bridge.counters.of(apply::mapping::Side::Legacy).snapshot();
        Ok((counts.transactions == (ROUNDS * 2) as u64).then_some(counts))
    })
    .await?;
    assert_eq!(
        (
            counts.conflict_orphans,
            counts.dead_lettered,
            counts.replans
        ),
        (0, 0, 0),
        "no child was checked against a parent not committed yet"
    );
    bridge.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unique_value_the_mapping_does_not_know_taken_by_the_next_batch_first_ends_in_source_order(
) -> anyhow::Result<()> {
    let mut bridge = one_transaction_per_batch("writers_unknown_unique").await?;
    // A unique key the mapping does not declare as a natural key: the
    // footprints cannot see two events compete for it. Two rows are written
    // late (a trigger sleeps): the first holder's, so that the next batch
    // reaches the name first, and the row after the second holder's, so
    // that both batches wait at about the same time. Postgres breaks the
    // deadlock by failing either batch (which one depends on timing: both
    // were seen); either way the first must land before the second.
    bridge
        .platform()
        .execute(
            "CREATE UNIQUE INDEX groups_name_unique ON org.groups (name);
             CREATE FUNCTION public.write_late() RETURNS trigger LANGUAGE plpgsql AS
               $$ BEGIN PERFORM pg_sleep(CASE NEW.notes WHEN 'first holder' THEN 0.3 ELSE 0.6 END);
                  RETURN NEW; END $$;
             CREATE TRIGGER write_late BEFORE INSERT ON org.groups FOR EACH ROW
               WHEN (NEW.notes IN ('first holder', 'late follower'))
               EXECUTE FUNCTION public.write_late();",
        )
        .await?;
    bridge.start_captures().await?;
    // First a transaction of 3,000 teams whose last one takes the name,
    // then one of two teams, the first with the same name (the legacy side
    // has no such key). Applied, the second transaction is written on the
    // other connection while the first one's last row is still being
    // written (the session's first batch already overlaps: what a parked
    // batch sends was prepared when the writers were set up). The second
    // takes the name first and the first waits for it; the second, which
    // commits after the first, waits for the first. Only the order lock
    // lets Postgres see that deadlock and break it; the transactions must
    // still land in source order.
    let legacy = bridge.legacy();
    legacy
        .execute(
            "BEGIN;
             INSERT INTO teams (id, name, archived, notes, inserted_at, updated_at)
             SELECT g, CASE WHEN g = 3000 THEN 'Contested' ELSE 'Team ' || g END, false,
                    CASE WHEN g = 3000 THEN 'first holder' END,
                    '2030-01-01 00:00:00', '2030-01-01 00:00:00'
             FROM generate_series(1, 3000) g;
             COMMIT;",
        )
        .await?;
    legacy
        .execute(
            "INSERT INTO teams (id, name, archived, notes, inserted_at, updated_at)
             VALUES (3001, 'Contested', false, 'second holder', '2030-01-01 00:00:01', '2030-01-01 00:00:01'),
                    (3002, 'Follower', false, 'late follower', '2030-01-01 00:00:01', '2030-01-01 00:00:01')",
        )
        .await?;
    bridge.start_apply()?;
    let counts = eventually("the second transaction dead-lettered", WAIT, || async {
        let counts = bridge.counters.of(apply::mapping::Side::Legacy).snapshot();
        Ok((counts.dead_lettered >= 2).then_some(counts))
    })
    .await?;
    let platform = bridge.platform().client();
    // Each backend reports its deadlocks when it next goes idle or ends.
    let deadlocks = "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()";
    eventually("the deadlock reported", WAIT, || async {
        Ok((count(platform, deadlocks).await? >= 1).then_some(()))
    })
    .await?;
    assert_eq!(
        count(platform, deadlocks).await?,
        1,
        "the deadlock was broken once: the batches were applied again with one writer, not retried as they were"
    );
    assert_eq!(
        count(
            platform,
            "SELECT count(*) FROM org.groups WHERE name = 'Contested' AND notes = 'first holder'"
        )
        .await?,
        1,
        "the name belongs to the first transaction's team"
    );
    assert_eq!(
        count(platform, "SELECT count(*) FROM org.groups").await?,
        3000,
        "the first transaction landed whole, the second not at all"
    );
    assert_eq!(
        counts.dead_lettered, 2,
        "only the second transaction's two events are dead-lettered"
    );
    assert!(
        counts.replans >= 1,
        "the conflict sent the batches through again with one writer"
    );
    bridge.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_created_on_the_platform_crosses_while_a_legacy_backlog_of_users_is_still_being_applied(
) -> anyhow::Result<()> {
    const BACKLOG: i64 = 30_000;
    let mut bridge = Bridge::prepare("writers_pair_turn").await?;
    bridge.start_captures().await?;
    // A backlog of new users on the legacy side: every batch links users
    // by email, so it takes the natural-key pair lock, which the other
    // direction needs for its own new users. With two writers the batches
    // follow each other without a gap; they must still give the lock up
    // now and then.
    for first in (1..=BACKLOG).step_by(3000) {
        bridge
            .legacy()
            .execute(&format!(
                "INSERT INTO users (id, email, full_name, role, inserted_at, updated_at)
                 SELECT g, 'backlog' || g || '@example.com', 'Backlog ' || g, 'member',
                        '2030-01-01 00:00:00', '2030-01-01 00:00:00'
                 FROM generate_series({first}, {first} + 2999) g"
            ))
            .await?;
    }
    bridge.start_apply()?;
    let platform = bridge.platform().client();
    until_count(
        "the backlog to start crossing",
        WAIT,
        platform,
        "SELECT least(count(*), 1) FROM identity.identities",
        1,
    )
    .await?;
    bridge
        .platform()
        .create_platform_user("platform-born@example.com")
        .await?;
    until_count(
        "the platform's user to cross",
        WAIT,
        bridge.legacy().client(),
        "SELECT count(*) FROM users WHERE email = 'platform-born@example.com'",
        1,
    )
    .await?;
    let crossed = count(platform, "SELECT count(*) FROM identity.identities").await?;
    assert!(
        crossed < BACKLOG,
        "the platform's user crossed before the legacy backlog was through ({crossed} of {BACKLOG} users had)"
    );
    bridge.converged(WAIT).await?;
    bridge.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_re_asserted_by_both_directions_at_once_do_not_wait_for_each_others_open_batches(
) -> anyhow::Result<()> {
    // A delete is re-asserted on its own side after it committed on the
    // other, in a source transaction that locks the rows it deletes. Each
    // direction here deletes one team and then updates the team the other
    // direction deletes; the deletes commit slowly (a deferred trigger), so
    // that each update's batch has locked its row on the other side before
    // either delete is re-asserted. Re-asserted while the update's batch is
    // still open, each re-assertion waits for the other direction's open
    // batch, whose direction waits in its own re-assertion: a wait across
    // two clusters that neither server can see.
    let mut bridge = one_transaction_per_batch("writers_reassert").await?;
    bridge.start_captures().await?;
    bridge.start_apply()?;
    bridge
        .legacy()
        .execute(
            "INSERT INTO teams (id, name, archived, inserted_at, updated_at) VALUES
               (1, 'One', false, '2020-01-01 00:00:00', '2020-01-01 00:00:00'),
               (2, 'Two', false, '2020-01-01 00:00:00', '2020-01-01 00:00:00')",
        )
        .await?;
    bridge.converged(WAIT).await?;
    bridge.stop_apply().await?;

    let slow_commit = |table: &str, name: &str| {
        format!(
            "CREATE FUNCTION public.commit_slowly() RETURNS trigger LANGUAGE plpgsql AS
               $$ BEGIN PERFORM pg_sleep(1); RETURN NULL; END $$;
             CREATE CONSTRAINT TRIGGER commit_slowly AFTER DELETE ON {table}
               DEFERRABLE INITIALLY DEFERRED FOR EACH ROW WHEN (OLD.name = '{name}')
               EXECUTE FUNCTION public.commit_slowly();"
        )
    };
    // Where apply deletes: team One on the platform, team Two on legacy.
    bridge
        .platform()
        .execute(&slow_commit("org.groups", "One"))
        .await?;
    bridge
        .legacy()
        .execute(&slow_commit("teams", "Two"))
        .await?;
    bridge
        .legacy()
        .execute("DELETE FROM teams WHERE id = 1")
        .await?;
    bridge
        .legacy()
        .execute("UPDATE teams SET notes = 'legacy edit', updated_at = '2020-01-01 00:00:05' WHERE id = 2")
        .await?;
    bridge
        .platform()
        .execute("DELETE FROM org.groups WHERE name = 'Two'")
        .await?;
    bridge
        .platform()
        .execute("UPDATE org.groups SET notes = 'platform edit', updated_at = '2020-01-01 00:00:05+00' WHERE name = 'One'")
        .await?;
    // Each side's update follows its delete on its topic: once the update
    // is there, both are. (The broker's high watermark can trail records
    // written in one batch, so it cannot count them.)
    for (topic, table) in [
        (&bridge.legacy.topic, "teams"),
        (&bridge.platform.topic, "groups"),
    ] {
        EventReader::new(topic)?
            .read_until("the topic to hold its side's update", WAIT, |events| {
                events
                    .iter()
                    .any(|e| e.op == Op::Update && e.table == table)
            })
            .await?;
    }

    bridge.start_apply()?;
    bridge.caught_up(WAIT).await?;
    bridge.converged(WAIT).await?;
    // The deletes are newer than the updates: both teams are gone.
    assert_eq!(
        count(bridge.legacy().client(), "SELECT count(*) FROM teams").await?,
        0
    );
    assert_eq!(
        count(
            bridge.platform().client(),
            "SELECT count(*) FROM org.groups"
        )
        .await?,
        0
    );
    bridge.stop().await
}
