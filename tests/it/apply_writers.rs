//! Two writers per direction: the next batch is written while the one
//! before it commits, and nothing that depends on the batch before it runs
//! until that batch has committed.

use std::time::Duration;

use sync_bridge_tests::{count, eventually, Bridge};

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
