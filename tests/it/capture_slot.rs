//! The slot: idle databases do not hold WAL; a clean shutdown acknowledges.

use std::time::Duration;

use sync_bridge_tests::{create_topic, eventually, CaptureSetup, EventReader, Side, TestDb};

const WAIT: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_database_slot_advances_while_other_databases_write() -> anyhow::Result<()> {
    let db = TestDb::create(Side::Legacy, "idle").await?;
    db.execute("CREATE TABLE quiet (id int PRIMARY KEY)")
        .await?;
    let mut setup = CaptureSetup::new(db, &["quiet"]);
    setup.capture_options = "heartbeat_interval = \"1s\"\n".into();
    create_topic(&setup.topic).await?;
    let capture = setup.start()?;
    let db = &setup.db;
    let created_at = eventually("the slot", WAIT, || async {
        db.confirmed_flush_lsn(&setup.slot).await
    })
    .await?;

    // Another database on the same server is busy; ours stays quiet.
    let busy = TestDb::create(Side::Legacy, "busy").await?;
    busy.execute(
        "CREATE TABLE noise AS SELECT g, md5(g::text) FROM generate_series(1, 20000) AS g",
    )
    .await?;
    let written_up_to = busy.current_wal_lsn().await?;
    assert!(written_up_to > created_at);

    let confirmed = eventually(
        "the idle slot to pass the other database's writes",
        WAIT,
        || async {
            let confirmed = db.confirmed_flush_lsn(&setup.slot).await?.unwrap_or(0);
            Ok((confirmed >= written_up_to).then_some(confirmed))
        },
    )
    .await?;
    assert!(confirmed >= written_up_to);
    capture.stop().await?;
    setup.db.drop_slot(&setup.slot).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_delivers_in_flight_events_acknowledges_them_and_exits_zero() -> anyhow::Result<()>
{
    let db = TestDb::create(Side::Legacy, "sigterm").await?;
    db.execute("CREATE TABLE items (id int PRIMARY KEY)")
        .await?;
    let setup = CaptureSetup::new(db, &["items"]);
    create_topic(&setup.topic).await?;
    let mut reader = EventReader::new(&setup.topic)?;
    let mut process = setup.spawn_process()?;
    let db = &setup.db;
    eventually("the slot", WAIT, || async {
        Ok(db.confirmed_flush_lsn(&setup.slot).await?.map(|_| ()))
    })
    .await?;

    db.execute("INSERT INTO items SELECT g FROM generate_series(1, 5000) AS g")
        .await?;
    let events = reader.read_at_least(5000, WAIT).await?.to_vec();
    let last_commit = events.last().unwrap().transaction.commit_lsn;

    let code = process.terminate().await?;
    assert_eq!(code, Some(0), "clean exit; log:\n{}", process.output());
    let confirmed = db.confirmed_flush_lsn(&setup.slot).await?.unwrap();
    assert!(
        confirmed > last_commit,
        "the slot was acknowledged past the last delivered transaction before exit"
    );
    setup.db.drop_slot(&setup.slot).await?;
    Ok(())
}
