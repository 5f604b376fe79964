//! Faults met while both sides write: a steady workload runs on legacy and
//! on the platform at once through each fault, every change with an id of
//! its own, and afterwards each side's audit proves, both ways, that every
//! committed change was applied on the other side exactly once and never
//! written back, and the two databases correspond.

use std::collections::BTreeMap;
use std::time::Duration;

use schemas::event::CaptureMode;

use sync_bridge_tests::{
    check_both_ways, check_both_ways_collapsing, count, create_topic, eventually, high_watermark,
    install_audits, last_offset, mapping_dir, server_of, Bridge, EventReader, PrivateBroker, Proxy,
    ServiceProcess, Side, Stack, ThrowawayCluster, TwoWayLoad,
};

const WAIT: Duration = Duration::from_secs(180);

/// One transaction per side this often.
const PACE: Duration = Duration::from_millis(20);

/// A bridge with both sides' audits installed; nothing runs yet.
async fn audited_bridge(hint: &str) -> anyhow::Result<Bridge> {
    let bridge = Bridge::prepare(hint).await?;
    install_audits(bridge.legacy(), bridge.platform()).await?;
    Ok(bridge)
}

/// Changes made on the other side that `db`'s audit holds.
async fn arrived(db: &sync_bridge_tests::TestDb, from: Side) -> anyhow::Result<i64> {
    let prefix = match from {
        Side::Legacy => "l",
        Side::Platform => "p",
    };
    count(
        db.client(),
        &format!("SELECT count(*) FROM public.change_audit WHERE change LIKE '{prefix}%'"),
    )
    .await
}

/// Waits until at least `more` changes from each side arrived on the other
/// beyond what had arrived when called: the bridge is carrying both ways.
async fn crossing_both_ways(bridge: &Bridge, more: i64) -> anyhow::Result<()> {
    let legacy = arrived(bridge.platform(), Side::Legacy).await? + more;
    let platform = arrived(bridge.legacy(), Side::Platform).await? + more;
    crossed(bridge, legacy, platform).await
}

/// Waits until every change written on each side when called, and `more`
/// written after them, arrived on the other: the bridge carries changes made
/// after now, not only a backlog read before (a consumer's prefetched
/// messages, a producer's queue).
async fn crossing_past_what_was_written(bridge: &Bridge, more: i64) -> anyhow::Result<()> {
    let legacy = written_on(bridge.legacy(), Side::Legacy).await? + more;
    let platform = written_on(bridge.platform(), Side::Platform).await? + more;
    crossed(bridge, legacy, platform).await
}

/// Waits until `legacy` legacy changes arrived on the platform and
/// `platform` platform changes on legacy.
async fn crossed(bridge: &Bridge, legacy: i64, platform: i64) -> anyhow::Result<()> {
    let waited = eventually("changes to cross both ways", WAIT, || async {
        Ok((arrived(bridge.platform(), Side::Legacy).await? >= legacy
            && arrived(bridge.legacy(), Side::Platform).await? >= platform)
            .then_some(()))
    })
    .await;
    if let Err(error) = waited {
        anyhow::bail!(
            "{error:#}: wanted {legacy} legacy changes on the platform and {platform} platform changes on legacy; {} and {} arrived",
            arrived(bridge.platform(), Side::Legacy).await?,
            arrived(bridge.legacy(), Side::Platform).await?
        );
    }
    Ok(())
}

/// Stops the workload, waits for the bridge to apply everything and the
/// databases to correspond, and checks the ledger both ways.
async fn everything_crossed_once(bridge: &Bridge, load: TwoWayLoad) -> anyhow::Result<()> {
    let written = load.finish().await?;
    for ledger in &written {
        anyhow::ensure!(
            ledger.transactions > 100,
            "the {:?} writer committed only {} transactions",
            ledger.side,
            ledger.transactions
        );
    }
    bridge.caught_up(WAIT).await?;
    bridge.converged(WAIT).await?;
    check_both_ways(bridge.legacy(), bridge.platform(), &written).await
}

/// How many events `topic` holds more than once (the same commit and the
/// same place in it): what a capture sent again after a restart.
async fn events_sent_twice(topic: &str) -> anyhow::Result<usize> {
    let end = high_watermark(topic)?;
    let mut reader = EventReader::new(topic)?;
    let events = reader
        .read_until("the whole topic", WAIT, |events| events.len() as i64 >= end)
        .await?;
    let mut seen: BTreeMap<(u64, u64), usize> = BTreeMap::new();
    for event in events {
        *seen
            .entry((event.transaction.commit_lsn, event.transaction.position))
            .or_default() += 1;
    }
    Ok(seen.values().filter(|times| **times > 1).count())
}

/// Capture is killed after Kafka acknowledged events and before the slot
/// was told (the server hears of the acknowledged position every 30 s):
/// the restarted capture streams those transactions again, and apply
/// applies each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_both_captures_between_kafkas_acknowledgement_and_the_slots_loses_nothing_and_doubles_nothing(
) -> anyhow::Result<()> {
    let mut bridge = audited_bridge("f_capkill").await?;
    bridge.legacy.status_interval = "30s".into();
    bridge.platform.status_interval = "30s".into();
    let mut captures = [
        bridge.legacy.spawn_process()?,
        bridge.platform.spawn_process()?,
    ];
    bridge.legacy.wait_for_slot().await?;
    bridge.platform.wait_for_slot().await?;
    bridge.start_apply()?;
    let load = TwoWayLoad::start(&bridge, 31, PACE);
    crossing_both_ways(&bridge, 300).await?;

    for capture in &mut captures {
        capture.kill_hard().await?;
    }
    crossing_both_ways(&bridge, 0).await?;
    let mut captures = [
        bridge.legacy.spawn_process()?,
        bridge.platform.spawn_process()?,
    ];
    crossing_both_ways(&bridge, 300).await?;
    let outcome = everything_crossed_once(&bridge, load).await;
    if let Err(error) = outcome {
        anyhow::bail!(
            "{error:#}\nlegacy capture:\n{}\nplatform capture:\n{}",
            captures[0].output(),
            captures[1].output()
        );
    }
    for topic in [&bridge.legacy.topic, &bridge.platform.topic] {
        assert!(
            events_sent_twice(topic).await? > 0,
            "{topic}: the kill fell after the slot's acknowledgement; the test proves nothing"
        );
    }
    for capture in &mut captures {
        assert_eq!(capture.terminate().await?, Some(0), "{}", capture.output());
    }
    bridge.stop().await
}

/// Apply is killed mid-batch while both sides insert, update and delete,
/// and started again: every change lands once, both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_apply_while_both_sides_write_loses_nothing_and_doubles_nothing(
) -> anyhow::Result<()> {
    let mut bridge = audited_bridge("f_applykill").await?;
    bridge.start_captures().await?;
    let mut apply = bridge.spawn_apply_process()?;
    let load = TwoWayLoad::start(&bridge, 32, PACE);
    for _ in 0..3 {
        if let Err(error) = crossing_both_ways(&bridge, 200).await {
            anyhow::bail!("{error:#}\napply:\n{}", apply.output());
        }
        apply.kill_hard().await?;
        apply = bridge.spawn_apply_process()?;
    }
    if let Err(error) = crossing_both_ways(&bridge, 200).await {
        anyhow::bail!("{error:#}\napply:\n{}", apply.output());
    }
    if let Err(error) = everything_crossed_once(&bridge, load).await {
        anyhow::bail!("{error:#}\napply:\n{}", apply.output());
    }
    assert_eq!(apply.terminate().await?, Some(0), "{}", apply.output());
    bridge.stop().await
}

/// Every link of the bridge to a database goes through a proxy. First all
/// of them slow down at once while both sides write: the bridge carries on
/// over the same connections, none taken for dead. Then each in turn stops
/// answering for good (the kernel still acknowledges what is sent, so only
/// the services' own deadlines find it): each service takes the link for
/// dead, connects again and goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_link_slowed_then_each_stopped_while_both_sides_write_loses_nothing(
) -> anyhow::Result<()> {
    let mut bridge = audited_bridge("f_hung").await?;
    let legacy_url = bridge.legacy().url.clone();
    let platform_url = bridge.platform().url.clone();
    let links = [
        (
            "legacy capture",
            Proxy::start(&server_of(&legacy_url)).await?,
        ),
        (
            "platform capture",
            Proxy::start(&server_of(&platform_url)).await?,
        ),
        (
            "apply to legacy",
            Proxy::start(&server_of(&legacy_url)).await?,
        ),
        (
            "apply to the platform",
            Proxy::start(&server_of(&platform_url)).await?,
        ),
    ];
    for (setup, proxy) in [
        (&mut bridge.legacy, &links[0].1),
        (&mut bridge.platform, &links[1].1),
    ] {
        setup.source_url = Some(proxy.url_through(&setup.db.url));
        setup.source_options = "response_timeout = \"3s\"\n".into();
        setup.capture_options = "heartbeat_interval = \"1s\"\nreceive_timeout = \"4s\"\n".into();
    }
    bridge.apply_urls = [
        Some(links[2].1.url_through(&legacy_url)),
        Some(links[3].1.url_through(&platform_url)),
    ];
    bridge.apply_link_options = [
        "response_timeout = \"3s\"\n".into(),
        "response_timeout = \"3s\"\n".into(),
    ];
    let mut captures = [
        bridge.legacy.spawn_process()?,
        bridge.platform.spawn_process()?,
    ];
    bridge.legacy.wait_for_slot().await?;
    bridge.platform.wait_for_slot().await?;
    let mut apply = ServiceProcess::spawn("apply", &bridge.apply_toml(), "f_hung_apply")?;
    let load = TwoWayLoad::start(&bridge, 33, PACE);
    crossing_both_ways(&bridge, 200).await?;

    // What each service says when it ends its own sessions the server kept
    // on the far side of a dead link (they hold the slot, or locks).
    let ended_own = |index: usize| match index {
        0 | 1 => captures[index]
            .output()
            .matches("ended this capture's earlier stream")
            .count(),
        _ => apply
            .output()
            .matches("that the server kept after apply lost its link")
            .count(),
    };
    let connections_before: Vec<u64> = links.iter().map(|(_, p)| p.accepted()).collect();
    // Slow enough that apply, whose every run waits for its replies, falls
    // behind the writers; not so slow that catching up outlasts the test.
    for (_, proxy) in &links {
        proxy.slow(Duration::from_millis(5));
    }
    crossing_both_ways(&bridge, 50).await?;
    for (_, proxy) in &links {
        proxy.slow(Duration::ZERO);
    }
    let connections_after: Vec<u64> = links.iter().map(|(_, p)| p.accepted()).collect();
    assert_eq!(
        connections_after, connections_before,
        "no slowed link was taken for dead"
    );

    for (index, (name, proxy)) in links.iter().enumerate() {
        let connections_before = proxy.accepted();
        let ended_before = ended_own(index);
        proxy.blackhole();
        let recovered = async {
            crossing_both_ways(&bridge, 200).await?;
            eventually(
                &format!("the {name} link to be opened again"),
                WAIT,
                || async { Ok((proxy.accepted() > connections_before).then_some(())) },
            )
            .await?;
            eventually(
                &format!("the {name} sessions the server kept to be ended"),
                WAIT,
                || async { Ok((ended_own(index) > ended_before).then_some(())) },
            )
            .await
        }
        .await;
        if let Err(error) = recovered {
            anyhow::bail!(
                "{error:#}\nafter the {name} link stopped answering\napply:\n{}\nlegacy capture:\n{}\nplatform capture:\n{}",
                apply.output(),
                captures[0].output(),
                captures[1].output()
            );
        }
    }
    if let Err(error) = everything_crossed_once(&bridge, load).await {
        anyhow::bail!(
            "{error:#}\napply:\n{}\nlegacy capture:\n{}\nplatform capture:\n{}",
            apply.output(),
            captures[0].output(),
            captures[1].output()
        );
    }
    assert_eq!(apply.terminate().await?, Some(0), "{}", apply.output());
    for capture in &mut captures {
        assert_eq!(capture.terminate().await?, Some(0), "{}", capture.output());
    }
    drop(links);
    bridge.stop().await
}

/// Changes a side's own writers made that its audit holds.
async fn written_on(db: &sync_bridge_tests::TestDb, side: Side) -> anyhow::Result<i64> {
    arrived(db, side).await
}

/// Waits until each side's writers committed `more` changes beyond what
/// they had when called: writes went on through the fault.
async fn both_sides_wrote(bridge: &Bridge, more: i64) -> anyhow::Result<()> {
    let legacy = written_on(bridge.legacy(), Side::Legacy).await?;
    let platform = written_on(bridge.platform(), Side::Platform).await?;
    eventually("both sides to write on", WAIT, || async {
        Ok(
            (written_on(bridge.legacy(), Side::Legacy).await? >= legacy + more
                && written_on(bridge.platform(), Side::Platform).await? >= platform + more)
                .then_some(()),
        )
    })
    .await
}

/// The broker is killed (SIGKILL) with events in flight while both sides
/// write, stays down while they write on, and is started again: the
/// captures deliver what they held, apply goes on, every change lands once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_killed_while_both_sides_write_loses_nothing_and_doubles_nothing(
) -> anyhow::Result<()> {
    let mut broker = PrivateBroker::start("f_broker").await?;
    let mut bridge = Bridge::prepare_on("f_broker", &broker.address()).await?;
    install_audits(bridge.legacy(), bridge.platform()).await?;
    bridge.start_captures().await?;
    bridge.start_apply()?;
    let load = TwoWayLoad::start(&bridge, 34, PACE);
    crossing_both_ways(&bridge, 300).await?;

    broker.kill()?;
    both_sides_wrote(&bridge, 300).await?;
    broker.restart().await?;
    crossing_both_ways(&bridge, 300).await?;
    everything_crossed_once(&bridge, load).await?;
    bridge.stop().await
}

/// Each database crashes (`pg_ctl stop -m immediate`) and starts again
/// while both sides write: the source under its capture and apply's reads,
/// the target under apply's open transactions. The writers and every
/// service connect again; every change committed lands once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_database_crashing_while_both_sides_write_loses_nothing_and_doubles_nothing(
) -> anyhow::Result<()> {
    let clusters = [
        ThrowawayCluster::create("f_crash_l", "logical")?,
        ThrowawayCluster::create("f_crash_p", "logical")?,
    ];
    for cluster in &clusters {
        cluster.start()?;
    }
    let admin_urls = [clusters[0].url("postgres"), clusters[1].url("postgres")];
    let mut bridge = Bridge::prepare_with(
        "f_crash",
        [&admin_urls[0], &admin_urls[1]],
        &Stack::get().brokers,
    )
    .await?;
    install_audits(bridge.legacy(), bridge.platform()).await?;
    bridge.start_captures().await?;
    bridge.start_apply()?;
    let load = TwoWayLoad::start(&bridge, 35, PACE);
    crossing_both_ways(&bridge, 300).await?;

    for (index, cluster) in clusters.iter().enumerate() {
        cluster.crash()?;
        cluster.start()?;
        if index == 0 {
            bridge.legacy.db.reconnect().await?;
        } else {
            bridge.platform.db.reconnect().await?;
        }
        crossing_both_ways(&bridge, 300).await?;
    }
    everything_crossed_once(&bridge, load).await?;
    bridge.stop().await
}

/// Two apply instances: the first, holding the single-writer lease, is cut
/// off from both databases while both sides write (the servers end its
/// sessions, it hears nothing); the second, waiting, takes the lease over
/// and applies on. When the first can reach the databases again it finds
/// the lease taken and waits. Every change lands once: nothing the first
/// had open committed after the second took over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_apply_takes_over_from_one_cut_off_and_every_change_lands_once(
) -> anyhow::Result<()> {
    let mut bridge = audited_bridge("f_takeover").await?;
    let legacy_url = bridge.legacy().url.clone();
    let platform_url = bridge.platform().url.clone();
    let proxies = [
        Proxy::start(&server_of(&legacy_url)).await?,
        Proxy::start(&server_of(&platform_url)).await?,
    ];
    bridge.start_captures().await?;
    bridge.apply_link_options = [
        "response_timeout = \"3s\"\nconnect_timeout = \"3s\"\n".into(),
        "response_timeout = \"3s\"\nconnect_timeout = \"3s\"\n".into(),
    ];
    bridge.apply_urls = [
        Some(proxies[0].url_through(&legacy_url)),
        Some(proxies[1].url_through(&platform_url)),
    ];
    let first_toml = bridge.apply_toml();
    bridge.apply_urls = [None, None];
    let mut first = ServiceProcess::spawn("apply", &first_toml, "f_takeover_first")?;
    first
        .wait_for_output("took the single-writer lock", WAIT)
        .await?;
    let mut second = ServiceProcess::spawn("apply", &bridge.apply_toml(), "f_takeover_second")?;
    second
        .wait_for_output("another apply instance holds the single-writer lock", WAIT)
        .await?;
    let load = TwoWayLoad::start(&bridge, 36, PACE);
    crossing_both_ways(&bridge, 300).await?;

    for proxy in &proxies {
        proxy.partition();
    }
    let taken_over = async {
        second
            .wait_for_output("took the single-writer lock", WAIT)
            .await?;
        crossing_both_ways(&bridge, 300).await
    }
    .await;
    if let Err(error) = taken_over {
        anyhow::bail!(
            "{error:#}\nfirst apply:\n{}\nsecond apply:\n{}",
            first.output(),
            second.output()
        );
    }
    for proxy in &proxies {
        proxy.heal();
    }
    first
        .wait_for_output("another apply instance holds the single-writer lock", WAIT)
        .await?;
    crossing_both_ways(&bridge, 300).await?;
    if let Err(error) = everything_crossed_once(&bridge, load).await {
        anyhow::bail!(
            "{error:#}\nfirst apply:\n{}\nsecond apply:\n{}",
            first.output(),
            second.output()
        );
    }
    assert_eq!(second.terminate().await?, Some(0), "{}", second.output());
    assert_eq!(first.terminate().await?, Some(0), "{}", first.output());
    bridge.stop().await
}

/// Makes both databases refuse writes from new sessions (as a standby does
/// during a failover), or accept them again, and ends apply's sessions so
/// that it connects again and meets the setting. The writers keep their
/// sessions, so both sides write on.
async fn both_read_only(bridge: &Bridge, read_only: bool) -> anyhow::Result<()> {
    for db in [bridge.legacy(), bridge.platform()] {
        let setting = if read_only {
            "SET default_transaction_read_only = on"
        } else {
            "RESET default_transaction_read_only"
        };
        db.execute(&format!(
            "ALTER DATABASE \"{}\" {setting};
             SELECT pg_terminate_backend(pid) FROM pg_stat_activity
              WHERE datname = current_database() AND application_name = 'syncbridge-apply';",
            db.name
        ))
        .await?;
    }
    Ok(())
}

/// Both targets refuse writes for a while as both sides write: apply
/// retries, dead-letters nothing and skips nothing; once they accept writes
/// again every change lands once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_databases_read_only_for_a_while_as_both_sides_write_dead_letter_nothing_and_lose_nothing(
) -> anyhow::Result<()> {
    let bridge = audited_bridge("f_readonly").await?.run().await?;
    let load = TwoWayLoad::start(&bridge, 37, PACE);
    crossing_both_ways(&bridge, 200).await?;

    both_read_only(&bridge, true).await?;
    both_sides_wrote(&bridge, 300).await?;
    both_read_only(&bridge, false).await?;
    crossing_both_ways(&bridge, 300).await?;
    everything_crossed_once(&bridge, load).await?;
    assert_eq!(
        high_watermark(&bridge.dead_letter_topic)?,
        0,
        "nothing was dead-lettered"
    );
    bridge.stop().await
}

/// The server's clock now, as text: a bound of a ledger window.
async fn server_time(db: &sync_bridge_tests::TestDb) -> anyhow::Result<String> {
    Ok(db
        .client()
        .query_one("SELECT clock_timestamp()::text", &[])
        .await?
        .get(0))
}

/// The legacy capture is stopped, its slot dropped, and both sides write
/// on; at its next start capture finds the slot lost and catches up by
/// polling from its last streamed event before streaming again. Every
/// change crosses once, except that a row changed several times while the
/// slot was gone crosses as its latest version (polling sees no other);
/// the databases end equal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_lost_while_both_sides_write_is_caught_up_and_nothing_is_lost() -> anyhow::Result<()>
{
    let mut bridge = audited_bridge("f_lostslot").await?.run().await?;
    let load = TwoWayLoad::start(&bridge, 38, PACE);
    crossing_both_ways(&bridge, 200).await?;

    bridge.stop_capture(Side::Legacy).await?;
    let slot = bridge.legacy.slot.clone();
    bridge.legacy().drop_slot(&slot).await?;
    both_sides_wrote(&bridge, 300).await?;
    bridge.start_capture(Side::Legacy)?;
    let window = catch_up_window(bridge.legacy(), &bridge.legacy.topic).await?;
    crossing_both_ways(&bridge, 300).await?;

    let written = load.finish().await?;
    bridge.caught_up(WAIT).await?;
    bridge.converged(WAIT).await?;
    check_both_ways_collapsing(
        bridge.legacy(),
        bridge.platform(),
        &written,
        [Some(window), None],
    )
    .await?;
    bridge.stop().await
}

/// The window of a polling catch-up on `topic`, read from its events: from
/// a second before the commit of the last event streamed before the first
/// polled one, to now, once an event streamed after the polled ones is on
/// the topic (streaming starts once the catch-up has read every row).
async fn catch_up_window(
    db: &sync_bridge_tests::TestDb,
    topic: &str,
) -> anyhow::Result<(String, String)> {
    let mut reader = EventReader::new(topic)?;
    let events = reader
        .read_until("a streamed event after a catch-up", WAIT, |events| {
            events
                .iter()
                .skip_while(|event| event.mode == CaptureMode::Streaming)
                .any(|event| event.mode == CaptureMode::Streaming)
        })
        .await?;
    let end = server_time(db).await?;
    let last_streamed = events
        .iter()
        .take_while(|event| event.mode == CaptureMode::Streaming)
        .map(|event| event.transaction.commit_time_micros)
        .max()
        .unwrap_or(0);
    let start: String = db
        .client()
        .query_one(
            "SELECT (to_timestamp($1::int8 / 1e6) - interval '1 second')::text",
            &[&last_streamed],
        )
        .await?
        .get(0);
    Ok((start, end))
}

/// The legacy database fails over while both sides write: its primary shuts
/// down (a switchover: the standby received everything committed), the
/// standby is promoted and the database's address moves to it. The new
/// primary has no slot (PostgreSQL 15 keeps logical slots on the primary):
/// capture finds it lost and catches up by polling before streaming again;
/// apply and the writers connect again. Every change crosses once, but for
/// changes polling collapsed into their row's later version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_of_the_legacy_database_while_both_sides_write_loses_nothing(
) -> anyhow::Result<()> {
    let primary = ThrowawayCluster::create("f_failover_primary", "logical")?;
    primary.start()?;
    let address = Proxy::start(&format!("127.0.0.1:{}", primary.port)).await?;
    let legacy_admin = address.url_through(&primary.url("postgres"));
    let stack = Stack::get();
    let mut bridge = Bridge::prepare_with(
        "f_failover",
        [&legacy_admin, &stack.platform_admin_url],
        &stack.brokers,
    )
    .await?;
    install_audits(bridge.legacy(), bridge.platform()).await?;
    let standby = ThrowawayCluster::standby_of(&primary, "f_failover_standby")?;
    standby.start()?;
    bridge.start_captures().await?;
    bridge.start_apply()?;
    let load = TwoWayLoad::start(&bridge, 39, PACE);
    crossing_both_ways(&bridge, 300).await?;

    primary.stop()?;
    standby.promote()?;
    address
        .redirect(&format!("127.0.0.1:{}", standby.port))
        .await?;
    bridge.legacy.db.reconnect().await?;
    let window = catch_up_window(bridge.legacy(), &bridge.legacy.topic).await?;
    crossing_both_ways(&bridge, 300).await?;

    let written = load.finish().await?;
    bridge.caught_up(WAIT).await?;
    bridge.converged(WAIT).await?;
    check_both_ways_collapsing(
        bridge.legacy(),
        bridge.platform(),
        &written,
        [Some(window), None],
    )
    .await?;
    bridge.stop().await
}

/// Every link to the broker goes through a proxy (the broker tells its
/// clients the proxy's address). First the services are cut off from the
/// broker while both sides write (their connections go silent, new ones are
/// not answered) until they have tried it again, then they can reach it
/// again; later every open link to it goes silent for good (a blackhole)
/// while new ones are answered. Each time the captures and apply take the
/// silent links for dead, connect again and go on, and every change lands
/// once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_services_cut_off_from_the_broker_while_both_sides_write_lose_nothing(
) -> anyhow::Result<()> {
    let port = sync_bridge_tests::free_port()?;
    let proxy = Proxy::start(&format!("127.0.0.1:{port}")).await?;
    let _broker = PrivateBroker::start_behind("f_broker_hung", port, proxy.port()).await?;
    let address = format!("127.0.0.1:{}", proxy.port());
    let mut bridge = Bridge::prepare_on("f_broker_hung", &address).await?;
    install_audits(bridge.legacy(), bridge.platform()).await?;
    bridge.start_captures().await?;
    bridge.start_apply()?;
    let load = TwoWayLoad::start(&bridge, 40, PACE);
    crossing_both_ways(&bridge, 200).await?;

    proxy.partition();
    let cut_off_at = proxy.accepted();
    both_sides_wrote(&bridge, 300).await?;
    eventually("the services to try the broker again", WAIT, || async {
        Ok((proxy.accepted() >= cut_off_at + 3).then_some(()))
    })
    .await?;
    let connections_before = proxy.accepted();
    proxy.heal();
    crossing_past_what_was_written(&bridge, 100).await?;
    assert!(
        proxy.accepted() > connections_before,
        "the services connected to the broker again"
    );

    let connections_before = proxy.accepted();
    proxy.blackhole();
    crossing_past_what_was_written(&bridge, 100).await?;
    assert!(
        proxy.accepted() > connections_before,
        "the services left the silent links for new ones"
    );
    everything_crossed_once(&bridge, load).await?;
    bridge.stop().await
}

/// The legacy topic is replaced by a new one while both sides write
/// (capture moved to it with its slot; apply had applied the old one to its
/// end): apply, started again, refuses the new topic rather than skip its
/// events as applied; after `apply reset-position` it applies the new
/// topic from its beginning, and every change lands once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_replaced_while_both_sides_write_is_refused_then_applied_once_reset(
) -> anyhow::Result<()> {
    let mut bridge = audited_bridge("f_topic").await?.run().await?;
    let load = TwoWayLoad::start(&bridge, 41, PACE);
    crossing_both_ways(&bridge, 200).await?;

    bridge.stop_capture(Side::Legacy).await?;
    let old = bridge.legacy.topic.clone();
    let end = last_offset(&old).await?;
    eventually("apply to apply the old topic to its end", WAIT, || async {
        let stored = count(
            bridge.platform().client(),
            "SELECT coalesce(max(kafka_offset), -1) FROM syncbridge.apply_position WHERE source = 'legacy'",
        )
        .await?;
        Ok((stored >= end).then_some(()))
    })
    .await?;
    bridge.stop_apply().await?;
    let new = format!("{old}.again");
    create_topic(&new).await?;
    bridge.legacy.topic = new;
    bridge.start_capture(Side::Legacy)?;
    bridge.legacy.wait_for_slot().await?;
    both_sides_wrote(&bridge, 300).await?;

    bridge.start_apply()?;
    let Err(error) = bridge.apply_outcome(WAIT).await? else {
        anyhow::bail!("apply went on over a topic whose offsets started over");
    };
    assert!(error.is_config(), "{}", runtime::error_chain(&error));
    let config = apply::Config::from_toml(&bridge.apply_toml())?;
    let mapping = apply::mapping::Mapping::load_dir(&mapping_dir())?;
    apply::checkpoint::reset(&config, &mapping, apply::mapping::Side::Legacy, false).await?;
    bridge.start_apply()?;
    crossing_both_ways(&bridge, 300).await?;
    everything_crossed_once(&bridge, load).await?;
    bridge.stop().await
}

/// A polling capture's link to its database stops answering mid-round
/// while both sides write: the round fails at the response deadline and
/// runs again on a new connection. Polling reads each row's latest
/// version, so a legacy change may be folded into a later one; none is
/// applied twice, none comes back, and the databases end equal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_polling_capture_whose_link_stops_answering_goes_on_and_nothing_is_lost(
) -> anyhow::Result<()> {
    let mut bridge = audited_bridge("f_pollhung").await?;
    let url = bridge.legacy().url.clone();
    let proxy = Proxy::start(&server_of(&url)).await?;
    bridge.legacy.source_url = Some(proxy.url_through(&url));
    bridge.legacy.source_options = "response_timeout = \"3s\"\n".into();
    bridge.legacy.use_polling(
        "interval = \"1s\"\noverlap = \"120s\"\npage_size = 200\nreconcile_interval = \"3s\"\n",
    );
    let bridge = bridge.run().await?;
    let load = TwoWayLoad::start(&bridge, 42, PACE);
    crossing_both_ways(&bridge, 200).await?;

    let connections_before = proxy.accepted();
    proxy.blackhole();
    crossing_both_ways(&bridge, 300).await?;
    assert!(
        proxy.accepted() > connections_before,
        "capture connected again"
    );
    let written = load.finish().await?;
    bridge.caught_up(WAIT).await?;
    bridge.converged(WAIT).await?;
    let always = ("-infinity".to_owned(), "infinity".to_owned());
    check_both_ways_collapsing(
        bridge.legacy(),
        bridge.platform(),
        &written,
        [Some(always), None],
    )
    .await?;
    bridge.stop().await
}
