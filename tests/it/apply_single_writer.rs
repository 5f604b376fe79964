//! One writer per pair of databases: a second apply waits on the
//! single-writer advisory lock, writes nothing, and takes over when the
//! first one dies.

use std::time::Duration;

use sync_bridge_tests::{
    count, eventually, install_audit, until_count, Bridge, ChangeLedger, TestDb,
};

const WAIT: Duration = Duration::from_secs(120);
const WAITING: &str = "another apply instance holds the single-writer lock";

async fn insert_user(db: &TestDb, email: &str) -> anyhow::Result<()> {
    db.client()
        .execute(
            "INSERT INTO users (email, full_name, role, inserted_at, updated_at)
             VALUES ($1, 'Single Writer', 'member', date_trunc('second', now() AT TIME ZONE 'UTC'), date_trunc('second', now() AT TIME ZONE 'UTC'))",
            &[&email],
        )
        .await?;
    Ok(())
}

async fn arrives_on_platform(bridge: &Bridge, email: &str) -> anyhow::Result<()> {
    let platform = bridge.platform().client();
    eventually(&format!("{email} on the platform side"), WAIT, || async {
        let rows = platform
            .query(
                "SELECT 1 FROM identity.identities WHERE email = $1",
                &[&email],
            )
            .await?;
        Ok((!rows.is_empty()).then_some(()))
    })
    .await
}

/// The lease generation apply took last in `db` (its fencing token).
async fn lease_generation(db: &TestDb) -> anyhow::Result<i64> {
    count(
        db.client(),
        "SELECT generation FROM syncbridge.apply_lease WHERE id = 1",
    )
    .await
}

/// Backends holding the single-writer lock in `db`.
async fn lock_holders(db: &TestDb) -> anyhow::Result<i64> {
    let (class, object) = apply::lease::LOCK_KEY;
    count(
        db.client(),
        &format!(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted \
             AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
             AND classid = {class}::oid AND objid = {object}::oid AND objsubid = 2"
        ),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_apply_waits_without_writing_and_takes_over_when_the_first_dies(
) -> anyhow::Result<()> {
    let mut bridge = Bridge::prepare("onewriter").await?;
    bridge.start_captures().await?;
    install_audit(bridge.platform()).await?;
    let mut first = bridge.spawn_apply_process()?;
    first
        .wait_for_output("took the single-writer lock", WAIT)
        .await?;
    insert_user(bridge.legacy(), "before@example.com").await?;
    arrives_on_platform(&bridge, "before@example.com").await?;

    let mut second = bridge.spawn_apply_process()?;
    second.wait_for_output(WAITING, WAIT).await?;
    assert_eq!(lock_holders(bridge.legacy()).await?, 1);
    assert_eq!(lock_holders(bridge.platform()).await?, 1);

    // While the first runs, changes keep crossing, and the second neither
    // starts a direction nor logs its wait more than once.
    let during = ChangeLedger::write_legacy_users(&bridge.legacy().url, 40, 21).await?;
    bridge.caught_up(WAIT).await?;
    let waiting_output = second.output();
    assert!(
        !waiting_output.contains("applying"),
        "the waiting instance started a direction:\n{waiting_output}"
    );
    assert_eq!(
        waiting_output.matches(WAITING).count(),
        1,
        "the wait is logged once:\n{waiting_output}"
    );
    first.kill_hard().await?;
    second
        .wait_for_output("took the single-writer lock", WAIT)
        .await
        .map_err(|e| anyhow::anyhow!("{e:#}\nfirst instance:\n{}", first.output()))?;
    let after = ChangeLedger::write_legacy_users(&bridge.legacy().url, 40, 22).await?;
    bridge.caught_up(WAIT).await?;
    bridge
        .platform()
        .execute(
            "INSERT INTO identity.identities (id, email, given_name, family_name, kind, is_admin, created_at, updated_at)
             VALUES (gen_random_uuid(), 'back@example.com', 'Back', 'Again', 'member', false, now(), now())",
        )
        .await?;
    let legacy = bridge.legacy().client();
    until_count(
        "the platform row on the legacy side",
        WAIT,
        legacy,
        "SELECT count(*) FROM users WHERE email = 'back@example.com'",
        1,
    )
    .await?;
    // Every change, made while the first ran and after the second took
    // over, applied exactly once.
    during.check_applied_once(bridge.platform()).await?;
    after.check_applied_once(bridge.platform()).await?;
    second.terminate().await?;
    bridge.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_sides_in_one_database_take_one_lock_and_a_second_instance_still_waits(
) -> anyhow::Result<()> {
    let db = TestDb::create(sync_bridge_tests::Side::Legacy, "onedb").await?;
    let toml = format!(
        "[legacy]\nurl = {url:?}\n[platform]\nurl = {url:?}\n[kafka]\nbrokers = \"127.0.0.1:9\"\n",
        url = db.url
    );
    let config = apply::Config::from_toml(&toml)?;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let first = tokio::time::timeout(WAIT, apply::lease::acquire(&config, &shutdown, &[]))
        .await??
        .expect("the lease");
    assert_eq!(first.sides(), vec![apply::mapping::Side::Legacy]);
    assert_eq!(lock_holders(&db).await?, 1);

    let second = tokio::spawn({
        let config = config.clone();
        let shutdown = shutdown.clone();
        async move { apply::lease::acquire(&config, &shutdown, &[]).await }
    });
    // The second instance keeps trying while the first holds the lock...
    tokio::time::sleep(apply::lease::RETRY_EVERY * 2).await;
    assert!(!second.is_finished(), "the second instance must wait");
    // ...and gets it once the first is gone.
    drop(first);
    let second = tokio::time::timeout(WAIT, second)
        .await???
        .expect("the lease");
    assert_eq!(lock_holders(&db).await?, 1);
    drop(second);
    shutdown.cancel();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_whose_lease_was_taken_over_cannot_commit_and_takes_the_lease_again(
) -> anyhow::Result<()> {
    let bridge = Bridge::start("fenced").await?;
    insert_user(bridge.legacy(), "before@example.com").await?;
    arrives_on_platform(&bridge, "before@example.com").await?;
    let taken = lease_generation(bridge.platform()).await?;

    // Another instance takes the lease over as a cut lock connection lets
    // it: it raises the generation while this one still believes it holds
    // the lease (its lock connection here is untouched, so only the fence
    // can stop it).
    bridge
        .platform()
        .execute("UPDATE syncbridge.apply_lease SET generation = generation + 1")
        .await?;
    insert_user(bridge.legacy(), "during@example.com").await?;

    let counters = bridge.counters.clone();
    eventually(
        "the commit under the old generation to be refused",
        WAIT,
        || async {
            let fenced = counters.of(apply::mapping::Side::Legacy).snapshot().fenced;
            Ok((fenced >= 1).then_some(()))
        },
    )
    .await?;
    // It took the lease again (a generation of its own, past the other
    // instance's) and applied the change then, once.
    arrives_on_platform(&bridge, "during@example.com").await?;
    assert!(
        lease_generation(bridge.platform()).await? >= taken + 2,
        "the lease was taken again"
    );
    assert_eq!(
        count(
            bridge.platform().client(),
            "SELECT count(*) FROM identity.identities WHERE email = 'during@example.com'"
        )
        .await?,
        1
    );
    bridge.stop().await
}
