//! A replication slot lost while capture was stopped (dropped by an
//! operator, invalidated, or gone with a failed-over primary) is told and
//! healed: what was written meanwhile still reaches the other side, or
//! capture stops and says what to do. Never a silent gap.

use std::time::Duration;

use sync_bridge_tests::{
    connect, count, create_topic, eventually, three_rows_stream, unique, Bridge, NamedUsers, Side,
    Stack, ThrowawayCluster,
};

const WAIT: Duration = Duration::from_secs(120);

/// A bridge whose legacy capture acts on a lost slot as `on_lost_slot`
/// says (the default when `None`), with two users streamed, then stopped,
/// its slot dropped, and three changes written while it is away.
async fn slot_lost_while_capture_was_stopped(
    hint: &str,
    on_lost_slot: Option<&str>,
) -> anyhow::Result<(Bridge, NamedUsers)> {
    let mut bridge = Bridge::prepare(hint).await?;
    if let Some(action) = on_lost_slot {
        bridge
            .legacy
            .capture_options
            .push_str(&format!("on_lost_slot = \"{action}\"\n"));
    }
    let mut bridge = bridge.run().await?;
    let mut ledger = NamedUsers::default();
    ledger.insert(&bridge, "Streamed One").await?;
    ledger.insert(&bridge, "Streamed Two").await?;
    bridge.converged(WAIT).await?;

    bridge.stop_capture(Side::Legacy).await?;
    let slot = bridge.legacy.slot.clone();
    bridge.legacy().drop_slot(&slot).await?;
    ledger.insert(&bridge, "Written Away").await?;
    ledger.insert(&bridge, "Also Away").await?;
    ledger
        .rename(&bridge, "Streamed One", "Renamed Away")
        .await?;
    Ok((bridge, ledger))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_written_while_the_slot_was_lost_are_caught_up_by_polling_and_reach_the_other_side(
) -> anyhow::Result<()> {
    let (mut bridge, mut ledger) = slot_lost_while_capture_was_stopped("lostslot", None).await?;
    bridge.start_capture(Side::Legacy)?;
    bridge.legacy.wait_for_slot().await?;
    ledger.insert(&bridge, "Streamed After").await?;
    bridge.converged(WAIT).await?;
    assert_eq!(
        ledger.missing_on_the_platform(&bridge).await?,
        Vec::<String>::new(),
        "every change written, before, during and after the loss, reached the platform"
    );
    bridge.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_slot_stops_capture_with_a_configuration_error_until_it_is_handled(
) -> anyhow::Result<()> {
    let (mut bridge, ledger) =
        slot_lost_while_capture_was_stopped("lostrefuse", Some("refuse")).await?;
    for start in ["first", "second"] {
        bridge.start_capture(Side::Legacy)?;
        let outcome = bridge
            .capture_outcome(Side::Legacy, Duration::from_secs(60))
            .await?;
        let Err(error) = outcome else {
            anyhow::bail!("the {start} start after the loss streamed on");
        };
        let text = runtime::error_chain(&error);
        assert!(error.is_config(), "exit code 2: {text}");
        assert!(
            text.contains(&bridge.legacy.slot) && text.contains("capture snapshot"),
            "names the slot and the way out: {text}"
        );
        assert_eq!(
            bridge
                .legacy()
                .confirmed_flush_lsn(&bridge.legacy.slot)
                .await?,
            None,
            "the slot it created is dropped again, so the {start} start is not the last to know"
        );
    }
    assert_eq!(
        ledger.missing_on_the_platform(&bridge).await?.len(),
        3,
        "what was written meanwhile is still missing, and said to be"
    );
    // Told what to do, the operator lets capture stream on and re-copies
    // the tables.
    bridge.legacy.capture_options =
        "heartbeat_interval = \"0s\"\non_lost_slot = \"continue\"\n".into();
    bridge.start_capture(Side::Legacy)?;
    bridge.legacy.wait_for_slot().await?;
    let mut after = NamedUsers::default();
    after.insert(&bridge, "Streamed After").await?;
    sync_bridge_tests::eventually("the new slot's changes to cross", WAIT, || async {
        Ok(after
            .missing_on_the_platform(&bridge)
            .await?
            .is_empty()
            .then_some(()))
    })
    .await?;
    bridge.stop().await
}

/// `event` (a streamed insert into legacy `users`) made into another user's
/// insert, in a transaction committed now at `commit_lsn`.
fn another_insert(
    mut event: schemas::event::ChangeEvent,
    id: i64,
    name: &str,
    commit_lsn: u64,
) -> schemas::event::ChangeEvent {
    use schemas::event::Value;
    let set = |columns: &mut Vec<schemas::event::Column>, column: &str, value: Value| {
        if let Some(c) = columns.iter_mut().find(|c| c.name == column) {
            c.value = value;
        }
    };
    set(&mut event.key, "id", Value::Int(id));
    if let Some(after) = event.after.as_mut() {
        set(after, "id", Value::Int(id));
        set(after, "full_name", Value::Text(name.to_owned()));
        set(
            after,
            "email",
            Value::Text(format!(
                "{}@example.com",
                name.replace(' ', ".").to_lowercase()
            )),
        );
    }
    event.transaction.xid += 1;
    event.transaction.commit_lsn = commit_lsn;
    event.transaction.commit_time_micros = pg::time::now_micros();
    event.transaction.position = 0;
    event.transaction.last = true;
    event.transaction.event_count = Some(1);
    event
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_whose_lsns_started_over_below_apply_position_is_refused_until_told_to_go_on(
) -> anyhow::Result<()> {
    let mut bridge = Bridge::start("lsnrestart").await?;
    let mut ledger = NamedUsers::default();
    ledger.insert(&bridge, "Before Failover").await?;
    bridge.converged(WAIT).await?;
    let mut reader = sync_bridge_tests::EventReader::new(&bridge.legacy.topic)?;
    let template = reader.read_at_least(1, WAIT).await?[0].clone();
    bridge.stop_capture(Side::Legacy).await?;

    // After a failover to a standby that was behind, the new primary's
    // commits take LSNs apply has passed already: one such transaction,
    // committed now, reaches the topic.
    let after = another_insert(template, 900_001, "After Failover", 16);
    let codec = schemas::codec::Codec::new()?;
    sync_bridge_tests::produce(
        &bridge.legacy.topic,
        &[(b"legacy".to_vec(), codec.encode(&after))],
    )
    .await?;
    let outcome = bridge.apply_outcome(WAIT).await?;
    let Err(error) = outcome else {
        anyhow::bail!("apply went on, skipping the new primary's transaction as applied");
    };
    let text = runtime::error_chain(&error);
    assert!(error.is_config(), "exit code 2: {text}");
    assert!(
        text.contains("apply reset-position --from legacy --keep-offset"),
        "names the fix: {text}"
    );
    let after_failover = vec!["After Failover".to_owned()];
    let missing = NamedUsers(after_failover);
    assert_eq!(missing.missing_on_the_platform(&bridge).await?.len(), 1);

    let config = apply::Config::from_toml(&bridge.apply_toml())?;
    let mapping = apply::mapping::Mapping::load_dir(&sync_bridge_tests::mapping_dir())?;
    apply::checkpoint::reset(&config, &mapping, apply::mapping::Side::Legacy, true).await?;
    bridge.start_apply()?;
    sync_bridge_tests::eventually("the new primary's transaction to cross", WAIT, || async {
        Ok(missing
            .missing_on_the_platform(&bridge)
            .await?
            .is_empty()
            .then_some(()))
    })
    .await?;
    bridge.start_capture(Side::Legacy)?;
    bridge.stop().await
}

/// A capture of table `things` of `cluster`'s `postgres` database into
/// `topic`, refusing to go on when its slot is lost.
fn failover_capture(cluster: &ThrowawayCluster, topic: &str) -> anyhow::Result<capture::Config> {
    Ok(capture::Config::from_toml(&format!(
        "[source]\nname = \"legacy\"\nurl = {:?}\ntables = [\"things\"]\n\
         slot = \"s_failover\"\npublication = \"p_failover\"\n\
         [kafka]\nbrokers = {:?}\ntopic = {topic:?}\n\
         [capture]\nstatus_interval = \"200ms\"\nmax_backoff = \"2s\"\n\
         heartbeat_interval = \"0s\"\non_lost_slot = \"refuse\"\n",
        cluster.url("postgres"),
        Stack::get().brokers,
    ))?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_failover_to_a_standby_capture_says_its_slot_was_lost() -> anyhow::Result<()> {
    // A primary streamed by capture, and a standby made by pg_basebackup.
    let primary = ThrowawayCluster::create("failover_primary", "logical")?;
    primary.start()?;
    let admin = connect(&primary.url("postgres")).await?;
    admin
        .batch_execute("CREATE TABLE things (id int PRIMARY KEY, label text)")
        .await?;
    let standby = ThrowawayCluster::standby_of(&primary, "failover_standby")?;
    standby.start()?;
    let topic = unique("failover");
    create_topic(&topic).await?;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let streaming = tokio::spawn(capture::run(
        failover_capture(&primary, &topic)?,
        shutdown.clone(),
    ));
    three_rows_stream(&admin, "s_failover", &topic).await?;
    let replica = connect(&standby.url("postgres")).await?;
    eventually("the standby to replay the rows", WAIT, || async {
        Ok((count(&replica, "SELECT count(*) FROM things").await? == 3).then_some(()))
    })
    .await?;
    shutdown.cancel();
    streaming.await??;

    // The primary fails; the standby is promoted. Logical slots do not
    // move to a standby in PostgreSQL 15: the new primary has none.
    drop(admin);
    primary.stop()?;
    standby.promote()?;
    let outcome = tokio::time::timeout(
        WAIT,
        capture::run(
            failover_capture(&standby, &topic)?,
            tokio_util::sync::CancellationToken::new(),
        ),
    )
    .await?;
    let Err(error) = outcome else {
        anyhow::bail!("capture streamed on from a new slot on the promoted standby");
    };
    let text = runtime::error_chain(&error);
    assert!(error.is_config(), "exit code 2: {text}");
    assert!(
        text.contains("s_failover") && text.contains("capture snapshot"),
        "names the slot and the way out: {text}"
    );
    Ok(())
}
