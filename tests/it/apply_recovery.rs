//! Exactly once across a crash; poison goes to the dead-letter topic.

use std::time::Duration;

use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use sync_bridge_tests::{
    count, dead_letter_reasons, eventually, high_watermark, install_audit, produce,
    produce_with_offsets_skipped, read_messages, read_messages_across_gaps, until_count, Bridge,
    ChangeLedger, Stack,
};

const WAIT: Duration = Duration::from_secs(180);
/// Legacy transactions (one to three changes each) written while apply is
/// killed and restarted.
const TRANSACTIONS: usize = 4_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_apply_mid_batch_then_restart_applies_every_insert_update_and_delete_exactly_once(
) -> anyhow::Result<()> {
    let mut bridge = Bridge::prepare("applycrash").await?.run().await?;
    install_audit(bridge.platform()).await?;
    // Apply runs as a process from here on, so it can be killed.
    bridge.stop_apply().await?;
    let mut apply = bridge.spawn_apply_process()?;

    let url = bridge.legacy().url.clone();
    let load =
        tokio::spawn(async move { ChangeLedger::write_legacy_users(&url, TRANSACTIONS, 7).await });
    let platform = bridge.platform().client();
    eventually("apply to be part way", WAIT, || async {
        Ok(
            (count(platform, "SELECT count(*) FROM public.change_audit").await? >= 1_000)
                .then_some(()),
        )
    })
    .await?;
    apply.kill_hard().await?;
    let at_kill = count(platform, "SELECT count(*) FROM public.change_audit").await?;
    let ledger = load.await??;
    assert!(
        (at_kill as usize) < ledger.len(),
        "killed part way ({at_kill} of {} changes applied)",
        ledger.len()
    );
    let mut restarted = bridge.spawn_apply_process()?;
    let caught_up = bridge.caught_up(WAIT).await;
    if let Err(error) = caught_up {
        anyhow::bail!(
            "{error:#}\nkilled apply's log:\n{}\nrestarted apply's log:\n{}",
            apply.output(),
            restarted.output()
        );
    }
    assert_eq!(
        restarted.terminate().await?,
        Some(0),
        "{}",
        restarted.output()
    );
    bridge.start_apply()?;
    bridge.converged(WAIT).await?;
    ledger.check_applied_once(bridge.platform()).await?;
    bridge.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_message_reaches_the_dead_letter_topic_while_the_stream_continues(
) -> anyhow::Result<()> {
    let bridge = Bridge::start("poison").await?;
    // A message that is not a change event at all, straight into legacy's topic.
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &Stack::get().brokers)
        .create()?;
    producer
        .send(
            FutureRecord::to(&bridge.legacy.topic)
                .key("legacy")
                .payload(b"\xC3\x01not avro at all"),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)?;
    // A change the mapping cannot convert: a zone centre without "lat".
    bridge.platform().execute(
        "INSERT INTO org.groups (id, name, created_at, updated_at) VALUES ('00000000-0000-4000-8000-0000000000b1', 'G', now(), now());
         INSERT INTO geo.zones (id, group_id, name, center, radius_m, created_at, updated_at)
           VALUES ('00000000-0000-4000-8000-0000000000c1', NULL, 'bad', '{\"x\": 1}', 5, now(), now());",
    ).await?;
    // The streams go on.
    bridge.legacy().execute(
        "INSERT INTO users (email, full_name, role, inserted_at, updated_at) VALUES ('after@example.com', 'After Poison', 'member', now(), now())",
    ).await?;
    bridge.platform().execute(
        "INSERT INTO geo.zones (id, name, center, radius_m, created_at, updated_at)
           VALUES ('00000000-0000-4000-8000-0000000000c2', 'good', '{\"lat\": 1, \"lng\": 2}', 5, now(), now())",
    ).await?;
    eventually("the good changes to cross", WAIT, || async {
        let users = count(
            bridge.platform().client(),
            "SELECT count(*) FROM identity.identities",
        )
        .await?;
        let zones = count(
            bridge.legacy().client(),
            "SELECT count(*) FROM geofences WHERE name = 'good'",
        )
        .await?;
        Ok((users == 1 && zones == 1).then_some(()))
    })
    .await?;
    assert_eq!(
        count(bridge.legacy().client(), "SELECT count(*) FROM teams").await?,
        0,
        "the group travelled in the same source transaction as the bad zone: all or nothing"
    );

    let reasons = dead_letter_reasons(&bridge.dead_letter_topic, 3).await?;
    // The two directions dead-letter independently: any order.
    assert_eq!(
        reasons.iter().filter(|r| r.contains("undecodable")).count(),
        1,
        "{reasons:?}"
    );
    assert_eq!(
        reasons.iter().filter(|r| r.contains("geo.zones")).count(),
        2,
        "{reasons:?}"
    );
    let dead = bridge
        .counters
        .of(apply::mapping::Side::Legacy)
        .snapshot()
        .dead_lettered
        + bridge
            .counters
            .of(apply::mapping::Side::Platform)
            .snapshot()
            .dead_lettered;
    assert_eq!(
        dead, 3,
        "the bad message and both events of the failed transaction are counted"
    );
    bridge.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_the_target_refuses_is_dead_lettered_alone_and_its_neighbours_land_once(
) -> anyhow::Result<()> {
    let bridge = Bridge::start("refused").await?;
    refuse_rejected_names(&bridge).await?;
    // Three source transactions back to back, so that apply takes them in
    // one target transaction: pipelined, the refusal surfaces after the
    // statements of the next one were sent.
    bridge
        .legacy()
        .execute(
            // One simple query runs as one transaction unless it says otherwise.
            "BEGIN; INSERT INTO users (email, full_name, role, inserted_at, updated_at) VALUES ('before@example.com', 'Before Refusal', 'member', now(), now()); COMMIT;
             BEGIN; INSERT INTO users (email, full_name, role, phone, inserted_at, updated_at) VALUES ('refused@example.com', 'Rejected Person', 'member', '+33600000042', now(), now()); COMMIT;
             BEGIN; INSERT INTO users (email, full_name, role, inserted_at, updated_at) VALUES ('after@example.com', 'After Refusal', 'member', now(), now()); COMMIT;",
        )
        .await?;
    until_count(
        "the two good users to cross",
        WAIT,
        bridge.platform().client(),
        "SELECT count(*) FROM identity.identities WHERE email IN ('before@example.com', 'after@example.com')",
        2,
    )
    .await?;

    let reason = dead_letter_reasons(&bridge.dead_letter_topic, 1)
        .await?
        .concat();
    assert!(
        reason.contains("no_rejects") && reason.contains("23514"),
        "the reason names the constraint and the SQLSTATE: {reason}"
    );
    assert!(
        !reason.contains("+33600000042") && !reason.contains("Rejected"),
        "the reason quotes no value of the row: {reason}"
    );

    let platform = bridge.platform().client();
    assert_eq!(
        count(
            platform,
            "SELECT count(*) FROM identity.identities WHERE email = 'refused@example.com'"
        )
        .await?,
        0,
        "the refused transaction is not applied"
    );
    assert_eq!(
        count(platform, "SELECT count(*) FROM syncbridge.id_pairs").await?,
        2,
        "one id pair per good user: nothing recorded twice, nothing of the refused one"
    );
    let legacy = bridge.counters.of(apply::mapping::Side::Legacy).snapshot();
    assert_eq!(
        legacy.dead_lettered, 1,
        "only the refused event is dead-lettered"
    );
    assert!(
        legacy.replans >= 1,
        "the refusal, surfacing late in a pipelined batch, sent the batch through again one statement at a time"
    );
    bridge.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_message_in_a_batch_applied_again_one_statement_at_a_time_is_dead_lettered_once(
) -> anyhow::Result<()> {
    let mut bridge = Bridge::prepare("poisonreplan").await?;
    refuse_rejected_names(&bridge).await?;
    bridge.start_captures().await?;
    // All on the topic before apply reads it, so that apply takes it in one
    // pipelined target transaction: a good transaction, a poison message, a
    // transaction the target refuses, a good one.
    let topic = bridge.legacy.topic.clone();
    bridge
        .legacy()
        .execute(
            "INSERT INTO users (email, full_name, role, inserted_at, updated_at) VALUES ('before@example.com', 'Before Poison', 'member', now(), now())",
        )
        .await?;
    read_messages(&topic, 1, WAIT).await?;
    produce(
        &topic,
        &[(b"legacy".to_vec(), b"\xC3\x01not avro at all".to_vec())],
    )
    .await?;
    bridge
        .legacy()
        .execute(
            "BEGIN; INSERT INTO users (email, full_name, role, inserted_at, updated_at) VALUES ('refused@example.com', 'Rejected Person', 'member', now(), now()); COMMIT;
             BEGIN; INSERT INTO users (email, full_name, role, inserted_at, updated_at) VALUES ('after@example.com', 'After Refusal', 'member', now(), now()); COMMIT;",
        )
        .await?;
    // Read, not counted by watermark (see `read_messages`).
    read_messages(&topic, 4, WAIT).await?;

    bridge.start_apply()?;
    until_count(
        "apply's position to reach the last message",
        WAIT,
        bridge.platform().client(),
        "SELECT coalesce(max(kafka_offset), -1) FROM syncbridge.apply_position WHERE source = 'legacy'",
        3,
    )
    .await?;
    assert_eq!(
        count(
            bridge.platform().client(),
            "SELECT count(*) FROM identity.identities WHERE email IN ('before@example.com', 'after@example.com')",
        )
        .await?,
        2
    );
    // Counted when the target transaction commits, right after the position.
    let stats = bridge.counters.of(apply::mapping::Side::Legacy);
    eventually("the committed transactions to be counted", WAIT, || async {
        Ok((stats.snapshot().transactions >= 2).then_some(()))
    })
    .await?;
    let legacy = stats.snapshot();
    assert!(
        legacy.replans >= 1,
        "the refusal sent the batch, poison message included, through again"
    );
    assert_eq!(
        (legacy.transactions, legacy.applied),
        (2, 2),
        "what the rolled-back pass counted does not count: each good transaction and row once"
    );
    assert_eq!(
        high_watermark(&bridge.dead_letter_topic)?,
        2,
        "the poison message and the refused event, each dead-lettered once"
    );
    assert_eq!(legacy.dead_lettered, 2);
    bridge.stop().await
}

/// A rule only the platform has, which the mapping cannot satisfy: no
/// identity named "Rejected".
async fn refuse_rejected_names(bridge: &Bridge) -> anyhow::Result<()> {
    bridge
        .platform()
        .execute(
            "ALTER TABLE identity.identities ADD CONSTRAINT no_rejects CHECK (given_name <> 'Rejected')",
        )
        .await
}

/// The `reason` headers of the first `count` messages on the dead-letter topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_missing_from_the_topic_are_fetched_again_and_passed_only_after_the_wait(
) -> anyhow::Result<()> {
    let mut bridge = Bridge::prepare("offsetgap").await?;
    bridge.apply_options = "offset_gap_wait = \"10s\"\n".into();
    let bridge = bridge.run().await?;
    let topic = bridge.legacy.topic.clone();
    let platform = bridge.platform().client();
    bridge
        .legacy()
        .execute(
            "INSERT INTO users (email, full_name, role, inserted_at, updated_at) VALUES ('before@example.com', 'Before Gap', 'member', now(), now())",
        )
        .await?;
    until_count(
        "the first user to cross",
        WAIT,
        platform,
        "SELECT count(*) FROM identity.identities",
        1,
    )
    .await?;

    // A copy of that change in a batch claiming six offsets: the five after
    // it are never readable, as when a broker shows a later batch before an
    // earlier one has been stored, except that these never come.
    let (key, payload) = read_messages(&topic, 1, WAIT).await?.remove(0);
    let copy = produce_with_offsets_skipped(&topic, &key, &payload, 5).await?;
    bridge
        .legacy()
        .execute(
            "INSERT INTO users (email, full_name, role, inserted_at, updated_at) VALUES ('after@example.com', 'After Gap', 'member', now(), now())",
        )
        .await?;
    assert_eq!(
        read_messages_across_gaps(&topic, 3, WAIT).await?.len(),
        3,
        "the change after the gap is on the topic"
    );

    let stats = &bridge.counters.legacy_to_platform;
    eventually("apply to find the gap", WAIT, || async {
        Ok((stats.snapshot().gaps_fetched == 1).then_some(()))
    })
    .await?;
    assert_eq!(
        count(platform, "SELECT count(*) FROM identity.identities").await?,
        1,
        "the change after the gap waits while the gap is fetched again"
    );
    until_count(
        "the change after the gap to cross",
        WAIT,
        platform,
        "SELECT count(*) FROM identity.identities WHERE given_name = 'After'",
        1,
    )
    .await?;
    assert_eq!(stats.snapshot().gaps_fetched, 1);
    assert_eq!(stats.snapshot().dead_lettered, 0);
    let stored: i64 = bridge
        .platform()
        .client()
        .query_one(
            "SELECT kafka_offset FROM syncbridge.apply_position WHERE topic = $1",
            &[&topic],
        )
        .await?
        .get(0);
    assert_eq!(
        stored,
        copy + 6,
        "the position passed the gap, at the change after it"
    );
    bridge.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_turned_read_only_for_a_while_dead_letters_nothing_and_skips_nothing(
) -> anyhow::Result<()> {
    let mut bridge = Bridge::start("readonly").await?;
    let topic = bridge.legacy.topic.clone();
    let legacy = bridge.legacy().client();
    let platform = bridge.platform().client();
    // Two users already on both sides: one to update, one to delete.
    bridge
        .legacy()
        .execute(
            "INSERT INTO users (email, full_name, role, inserted_at, updated_at) VALUES
               ('changed@example.com', 'Changed Before', 'member', '2030-01-01 00:00:00', '2030-01-01 00:00:00'),
               ('deleted@example.com', 'Deleted Later', 'member', '2030-01-01 00:00:00', '2030-01-01 00:00:00')",
        )
        .await?;
    until_count(
        "both users to cross",
        WAIT,
        platform,
        "SELECT count(*) FROM identity.identities WHERE email IN ('changed@example.com', 'deleted@example.com')",
        2,
    )
    .await?;
    bridge.caught_up(WAIT).await?;
    let stored_before = stored_position(platform, &topic).await?;

    // The target refuses every write, as a standby does during a failover;
    // apply's new sessions see it.
    set_read_only(&bridge, true).await?;
    let rollbacks_before = rollbacks(platform).await?;
    bridge
        .legacy()
        .execute(
            "BEGIN; INSERT INTO users (email, full_name, role, phone, inserted_at, updated_at) VALUES ('first@example.com', 'First Written', 'member', '+33600000001', '2030-01-01 00:00:00', '2030-01-01 00:00:00'); COMMIT;
             BEGIN; UPDATE users SET full_name = 'Changed After', role = 'staff', phone = '+33600000002', updated_at = '2030-01-01 00:01:00' WHERE email = 'changed@example.com'; COMMIT;
             BEGIN; DELETE FROM users WHERE email = 'deleted@example.com'; COMMIT;
             BEGIN; INSERT INTO users (email, full_name, role, inserted_at, updated_at) VALUES ('second@example.com', 'Second Written', 'admin', '2030-01-01 00:00:00', '2030-01-01 00:00:00');
                    UPDATE users SET full_name = 'Second Renamed', updated_at = '2030-01-01 00:02:00' WHERE email = 'second@example.com'; COMMIT;",
        )
        .await?;
    // Two users before, then five changes.
    read_messages(&topic, 7, WAIT).await?;
    let tried = eventually("apply to try again and again, or stop", WAIT, || async {
        if bridge.apply_ended() {
            return Ok(Some(false));
        }
        Ok((rollbacks(platform).await? >= rollbacks_before + 2).then_some(true))
    })
    .await?;
    if !tried {
        let outcome = bridge.stop_apply().await;
        anyhow::bail!(
            "apply stopped instead of retrying while the target was read-only: {outcome:?}"
        );
    }
    assert_eq!(
        stored_position(platform, &topic).await?,
        stored_before,
        "nothing is passed while the target refuses"
    );

    set_read_only(&bridge, false).await?;
    bridge.caught_up(WAIT).await?;

    // Each user by its key: the platform row paired with the legacy id.
    let user = |email: &'static str| async move {
        let id: i64 = legacy
            .query_one("SELECT id FROM users WHERE email = $1", &[&email])
            .await?
            .get(0);
        let row = platform
            .query_opt(
                "SELECT i.email, i.given_name, i.family_name, i.kind, i.is_admin, i.phone_e164
                   FROM identity.identities i
                   JOIN syncbridge.id_pairs p ON p.entity = 'user' AND p.platform_id::text = i.id::text
                  WHERE p.legacy_id::text = $1::text",
                &[&id.to_string()],
            )
            .await?;
        anyhow::Ok(row.map(|r| {
            (
                r.get::<_, String>(0),
                r.get::<_, String>(1),
                r.get::<_, String>(2),
                r.get::<_, String>(3),
                r.get::<_, bool>(4),
                r.get::<_, Option<String>>(5),
            )
        }))
    };
    let expected =
        |email: &str, given: &str, family: &str, kind: &str, admin, phone: Option<&str>| {
            Some((
                email.to_owned(),
                given.to_owned(),
                family.to_owned(),
                kind.to_owned(),
                admin,
                phone.map(str::to_owned),
            ))
        };
    assert_eq!(
        user("first@example.com").await?,
        expected(
            "first@example.com",
            "First",
            "Written",
            "member",
            false,
            Some("+33600000001")
        )
    );
    assert_eq!(
        user("changed@example.com").await?,
        expected(
            "changed@example.com",
            "Changed",
            "After",
            "staff",
            false,
            Some("+33600000002")
        )
    );
    assert_eq!(
        user("second@example.com").await?,
        expected(
            "second@example.com",
            "Second",
            "Renamed",
            "staff",
            true,
            None
        )
    );
    assert_eq!(
        count(
            platform,
            "SELECT count(*) FROM identity.identities WHERE email = 'deleted@example.com'"
        )
        .await?,
        0,
        "the delete crossed"
    );
    assert_eq!(
        high_watermark(&bridge.dead_letter_topic)?,
        0,
        "nothing was dead-lettered"
    );
    assert_eq!(
        bridge.counters.legacy_to_platform.snapshot().dead_lettered,
        0
    );
    assert!(
        stored_position(platform, &topic).await? >= stored_before + 5,
        "the stored position passed the last change"
    );
    bridge.stop().await
}

/// The offset apply stored for `topic` in its target.
async fn stored_position(target: &tokio_postgres::Client, topic: &str) -> anyhow::Result<i64> {
    Ok(target
        .query_one(
            "SELECT coalesce(max(kafka_offset), -1) FROM syncbridge.apply_position WHERE topic = $1",
            &[&topic],
        )
        .await?
        .get(0))
}

/// Transactions rolled back in the database of `client`, as the server
/// counts them.
async fn rollbacks(client: &tokio_postgres::Client) -> anyhow::Result<i64> {
    Ok(client
        .query_one(
            "SELECT xact_rollback FROM pg_stat_database WHERE datname = current_database()",
            &[],
        )
        .await?
        .get(0))
}

/// Makes the platform database refuse writes (or accept them again) for
/// new sessions, and ends apply's sessions there so that it reconnects.
async fn set_read_only(bridge: &Bridge, read_only: bool) -> anyhow::Result<()> {
    let name = &bridge.platform().name;
    let setting = if read_only {
        "SET default_transaction_read_only = on"
    } else {
        "RESET default_transaction_read_only"
    };
    bridge
        .platform()
        .execute(&format!(
            "ALTER DATABASE \"{name}\" {setting};
             SELECT pg_terminate_backend(pid) FROM pg_stat_activity
              WHERE datname = current_database() AND application_name = 'syncbridge-apply';"
        ))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_refused_as_read_only_in_an_open_session_is_retried_not_dead_lettered(
) -> anyhow::Result<()> {
    let mut bridge = Bridge::start("readonlyopen").await?;
    let topic = bridge.legacy.topic.clone();
    // The server's refusal of a read-only transaction, raised in apply's
    // open session (a new session would see `default_transaction_read_only`)
    // while the test says so.
    bridge
        .platform()
        .execute(
            "CREATE TABLE refuse_writes (since timestamptz NOT NULL);
             INSERT INTO refuse_writes VALUES (now());
             CREATE FUNCTION refuse_writes() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
               IF EXISTS (SELECT FROM refuse_writes) THEN
                 RAISE EXCEPTION 'cannot execute INSERT in a read-only transaction' USING ERRCODE = '25006';
               END IF;
               RETURN NEW;
             END $$;
             CREATE TRIGGER refuse_writes BEFORE INSERT OR UPDATE ON identity.identities
               FOR EACH ROW EXECUTE FUNCTION refuse_writes();
             ALTER TABLE identity.identities ENABLE ALWAYS TRIGGER refuse_writes;",
        )
        .await?;
    let platform = bridge.platform().client();
    let rollbacks_before = rollbacks(platform).await?;
    bridge
        .legacy()
        .execute(
            "BEGIN; INSERT INTO users (email, full_name, role, inserted_at, updated_at) VALUES ('first@example.com', 'First Written', 'member', now(), now()); COMMIT;
             BEGIN; INSERT INTO users (email, full_name, role, inserted_at, updated_at) VALUES ('second@example.com', 'Second Written', 'admin', now(), now()); COMMIT;",
        )
        .await?;
    read_messages(&topic, 2, WAIT).await?;
    let tried = eventually("apply to try again and again, or stop", WAIT, || async {
        if bridge.apply_ended() {
            return Ok(Some(false));
        }
        // A dead letter is what this guards against: asserted below.
        if high_watermark(&bridge.dead_letter_topic)? > 0 {
            return Ok(Some(true));
        }
        Ok((rollbacks(platform).await? >= rollbacks_before + 2).then_some(true))
    })
    .await?;
    if !tried {
        let outcome = bridge.stop_apply().await;
        anyhow::bail!("apply stopped instead of retrying: {outcome:?}");
    }
    assert_eq!(
        high_watermark(&bridge.dead_letter_topic)?,
        0,
        "nothing is dead-lettered while the target refuses"
    );

    bridge
        .platform()
        .execute("DELETE FROM refuse_writes")
        .await?;
    bridge.caught_up(WAIT).await?;
    assert_eq!(
        count(
            platform,
            "SELECT count(*) FROM identity.identities
              WHERE (email, given_name, family_name, kind, is_admin) IN
                    (('first@example.com', 'First', 'Written', 'member', false),
                     ('second@example.com', 'Second', 'Written', 'staff', true))"
        )
        .await?,
        2,
        "both users arrived, with their values"
    );
    assert_eq!(high_watermark(&bridge.dead_letter_topic)?, 0);
    assert_eq!(
        bridge.counters.legacy_to_platform.snapshot().dead_lettered,
        0
    );
    bridge.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_change_ledger_tells_a_change_applied_twice_and_a_change_lost() -> anyhow::Result<()> {
    let mut bridge = Bridge::start("ledger").await?;
    install_audit(bridge.platform()).await?;
    let ledger = ChangeLedger::write_legacy_users(&bridge.legacy().url, 30, 3).await?;
    bridge.converged(WAIT).await?;
    ledger.check_applied_once(bridge.platform()).await?;
    bridge.stop_apply().await?;

    // A change written again on the platform, as a second application would.
    bridge
        .platform()
        .execute(
            "UPDATE identity.identities SET family_name = family_name
             WHERE id = (SELECT id FROM identity.identities LIMIT 1)",
        )
        .await?;
    let doubled = ledger.check_applied_once(bridge.platform()).await;
    assert!(
        doubled
            .as_ref()
            .is_err_and(|e| e.to_string().contains("1 applied more than once")),
        "{doubled:?}"
    );
    // And another one whose application is forgotten, as if it never landed.
    bridge
        .platform()
        .execute(
            "DELETE FROM public.change_audit WHERE change =
               (SELECT change FROM public.change_audit GROUP BY change HAVING count(*) = 1 LIMIT 1)",
        )
        .await?;
    let both = ledger.check_applied_once(bridge.platform()).await;
    assert!(
        both.as_ref().is_err_and(|e| {
            let text = e.to_string();
            text.contains("1 lost") && text.contains("1 applied more than once")
        }),
        "{both:?}"
    );
    bridge.stop().await
}
