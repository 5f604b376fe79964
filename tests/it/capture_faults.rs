//! An unreachable source is retried with backoff, logged once, and capture
//! carries on when it comes back; a link that goes silent is taken for dead
//! after `capture.receive_timeout`: no crash loop, no endless wait, nothing
//! lost.

use std::collections::BTreeSet;
use std::time::Duration;

use capture::metrics::CAPTURE_ERRORS;
use runtime::telemetry::http::get_once;
use sync_bridge_tests::{
    connect, create_topic, eventually, free_port, unique, CaptureSetup, EventReader, PrivateBroker,
    Proxy, ServiceProcess, Side, Stack, TestDb, ThrowawayCluster,
};

const WAIT: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_that_is_down_is_retried_logged_once_and_streamed_when_it_returns(
) -> anyhow::Result<()> {
    let cluster = ThrowawayCluster::create("flaky", "logical")?;
    cluster.start()?;
    let client = connect(&cluster.url("postgres")).await?;
    client
        .batch_execute("CREATE TABLE things (id int PRIMARY KEY)")
        .await?;
    drop(client);
    cluster.stop()?;

    let topic = format!("{}.changes", unique("flaky"));
    create_topic(&topic).await?;
    let telemetry = format!("127.0.0.1:{}", free_port()?);
    let toml = format!(
        "[source]\nname = \"legacy\"\nurl = {:?}\ntables = [\"things\"]\n[kafka]\nbrokers = {:?}\ntopic = {topic:?}\n[capture]\nheartbeat_interval = \"0s\"\nmax_backoff = \"1s\"\n[telemetry]\nlisten = {telemetry:?}\n",
        cluster.url("postgres"),
        Stack::get().brokers
    );
    let mut capture = ServiceProcess::spawn("capture", &toml, "flaky")?;
    let retrying = "capture interrupted; retrying with backoff";
    eventually("capture to fail at least three attempts", WAIT, || async {
        Ok((failed_attempts(&telemetry).await >= 3.0).then_some(()))
    })
    .await?;

    // The server comes back: capture connects by itself and streams.
    cluster.start()?;
    eventually("capture to recover", WAIT, || async {
        Ok(capture.output().contains("capture recovered").then_some(()))
    })
    .await?;
    let client = connect(&cluster.url("postgres")).await?;
    client
        .batch_execute("INSERT INTO things VALUES (1), (2)")
        .await?;
    let mut reader = EventReader::new(&topic)?;
    reader.read_at_least(2, WAIT).await?;

    // Each distinct failure is logged when it starts, not on every attempt:
    // "connection refused" while the server is down, perhaps "starting up"
    // while it comes back.
    let output = capture.output();
    let failures: Vec<&str> = output
        .lines()
        .filter(|line| line.contains(retrying))
        .filter_map(|line| line.split_once(retrying).map(|(_, fields)| fields))
        .collect();
    let distinct: BTreeSet<&str> = failures.iter().copied().collect();
    assert!(
        !failures.is_empty() && distinct.len() == failures.len(),
        "each failure is logged once, however many attempts:\n{output}"
    );
    assert_eq!(capture.terminate().await?, Some(0), "{output}");
    Ok(())
}

/// How many attempts capture has counted as failed, from its `/metrics`
/// (0 while the endpoint is not up yet).
async fn failed_attempts(telemetry: &str) -> f64 {
    let Ok((200, body)) = get_once(telemetry, "/metrics").await else {
        return 0.0;
    };
    body.lines()
        .filter(|line| line.starts_with(CAPTURE_ERRORS))
        .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_down_for_longer_than_wal_sender_timeout_keeps_the_replication_session_and_loses_nothing(
) -> anyhow::Result<()> {
    // A consumer that stops answering while its sink is stalled gets its
    // walsender terminated after wal_sender_timeout, reconnects, is
    // stalled again, in a loop. Capture holds at most `max_in_flight`
    // undelivered events and waits; the replication session must stay up
    // (feedback keeps flowing) however long the broker is away.
    const ROWS: i64 = 100;
    let mut broker = PrivateBroker::start("stalled_broker").await?;
    let db = TestDb::create(Side::Legacy, "stalled").await?;
    db.execute(&format!(
        "CREATE TABLE rows (id int PRIMARY KEY, note text);
         ALTER DATABASE \"{}\" SET wal_sender_timeout = '4s';",
        db.name
    ))
    .await?;
    let mut setup = CaptureSetup::new(db, &["public.rows"]);
    setup.capture_options = "max_in_flight = 10\n".into();
    let toml = setup
        .toml()
        .replace(&Stack::get().brokers, &broker.address());
    let shutdown = tokio_util::sync::CancellationToken::new();
    let capture = tokio::spawn(capture::run(
        capture::Config::from_toml(&toml)?,
        shutdown.clone(),
    ));
    setup.wait_for_slot().await?;
    let walsender = || async {
        let row = setup
            .db
            .client()
            .query_one(
                "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1",
                &[&setup.slot],
            )
            .await?;
        anyhow::Ok(row.get::<_, Option<i32>>(0))
    };
    let session = Some(
        eventually("capture to stream from its slot", WAIT, || async {
            walsender().await
        })
        .await?,
    );

    broker.kill()?;
    // Where the last transaction's WAL begins: its commit, and so the
    // position that acknowledges it, lies past this.
    let mut last_begins = 0;
    for id in 1..=ROWS {
        last_begins = setup.db.current_wal_insert_lsn().await?;
        setup
            .db
            .execute(&format!(
                "INSERT INTO rows VALUES ({id}, 'while the broker is down')"
            ))
            .await?;
    }
    // Three times wal_sender_timeout without the broker: long enough for the
    // server to give up on a silent receiver twice over. The timeout is 20
    // status intervals, so a capture slowed down by a busy machine (tests
    // run in parallel) still answers in time; one that stopped answering
    // does not.
    let watch_until = std::time::Instant::now() + Duration::from_secs(12);
    while std::time::Instant::now() < watch_until {
        assert_eq!(
            walsender().await?,
            session,
            "the replication session outlived the broker's absence"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let confirmed = setup.db.confirmed_flush_lsn(&setup.slot).await?;
    assert!(
        confirmed.is_some_and(|lsn| lsn <= last_begins),
        "nothing is acknowledged while the broker cannot hold it"
    );

    broker.restart().await?;
    eventually("every row delivered and acknowledged", WAIT, || async {
        let confirmed = setup.db.confirmed_flush_lsn(&setup.slot).await?;
        Ok(confirmed.filter(|lsn| *lsn > last_begins).map(|_| ()))
    })
    .await?;
    assert_eq!(
        walsender().await?,
        session,
        "one replication session throughout"
    );
    // The ledger: each row written while the broker was down is on the topic.
    let mut reader = EventReader::on(&broker.address(), &setup.topic)?;
    let expected: BTreeSet<i64> = (1..=ROWS).collect();
    reader
        .read_until(
            "every row written while the broker was down",
            WAIT,
            |events| ids_of(events).is_superset(&expected),
        )
        .await?;
    shutdown.cancel();
    capture.await??;
    setup.db.drop_slot(&setup.slot).await
}

/// The ids (first key column) of the events read so far.
fn ids_of(events: &[schemas::event::ChangeEvent]) -> BTreeSet<i64> {
    events
        .iter()
        .filter_map(|event| match event.key.first().map(|c| &c.value) {
            Some(schemas::event::Value::Int(id)) => Some(*id),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_to_the_source_that_goes_silent_is_taken_for_dead_and_nothing_written_meanwhile_is_lost(
) -> anyhow::Result<()> {
    let db = TestDb::create(Side::Legacy, "silent").await?;
    db.execute("CREATE TABLE items (id bigint PRIMARY KEY, payload text NOT NULL)")
        .await?;
    let upstream = db
        .url
        .split_once('@')
        .and_then(|(_, rest)| rest.split_once('/'))
        .map(|(host, _)| host.to_owned())
        .unwrap_or_default();
    let proxy = Proxy::start(&upstream).await?;
    let mut setup = CaptureSetup::new(db, &["items"]);
    setup.source_url = Some(proxy.url_through(&setup.db.url));
    setup.capture_options = "heartbeat_interval = \"1s\"\nreceive_timeout = \"4s\"\n".into();
    create_topic(&setup.topic).await?;
    let mut reader = EventReader::new(&setup.topic)?;
    let capture = setup.start()?;
    setup.wait_for_slot().await?;
    // The ledger: every row written has its own id, and each must arrive.
    setup
        .db
        .execute("INSERT INTO items VALUES (1, 'before the link went silent')")
        .await?;
    reader
        .read_until("row 1", WAIT, |events| ids_of(events).contains(&1))
        .await?;

    // Every connection capture holds goes silent for good, as behind a
    // dead peer; the kernel still acknowledges what capture sends.
    let connections_before = proxy.accepted();
    proxy.blackhole();
    for id in 2..=4 {
        setup
            .db
            .execute(&format!(
                "INSERT INTO items VALUES ({id}, 'while the link was silent')"
            ))
            .await?;
    }
    let expected: BTreeSet<i64> = (1..=4).collect();
    reader
        .read_until("rows 2 to 4 over a new connection", WAIT, |events| {
            ids_of(events) == expected
        })
        .await?;
    assert!(
        proxy.accepted() > connections_before,
        "capture connected again"
    );
    capture.stop().await?;
    setup.db.drop_slot(&setup.slot).await
}
