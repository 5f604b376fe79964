//! An unreachable source is retried with backoff, logged once, and capture
//! carries on when it comes back: no crash loop, nothing lost.

use std::collections::BTreeSet;
use std::time::Duration;

use capture::metrics::CAPTURE_ERRORS;
use runtime::telemetry::http::get_once;
use sync_bridge_tests::{
    connect, create_topic, eventually, free_port, unique, CaptureSetup, EventReader, PrivateBroker,
    ServiceProcess, Side, Stack, TestDb, ThrowawayCluster,
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
    shutdown.cancel();
    capture.await??;
    setup.db.drop_slot(&setup.slot).await
}
