//! An unreachable source is retried with backoff, logged once, and capture
//! carries on when it comes back: no crash loop, nothing lost.

use std::collections::BTreeSet;
use std::time::Duration;

use capture::telemetry::http::get_once;
use capture::telemetry::metrics::CAPTURE_ERRORS;
use sync_bridge_tests::{
    connect, create_topic, eventually, free_port, unique, EventReader, ServiceProcess, Stack,
    ThrowawayCluster,
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
