//! An unreachable source is retried with backoff, logged once, and capture
//! carries on when it comes back: no crash loop, nothing lost.

use std::time::Duration;

use sync_bridge_tests::{
    connect, create_topic, eventually, unique, EventReader, ServiceProcess, Stack, ThrowawayCluster,
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
    let toml = format!(
        "[source]\nname = \"legacy\"\nurl = {:?}\ntables = [\"things\"]\n[kafka]\nbrokers = {:?}\ntopic = {topic:?}\n[capture]\nheartbeat_interval = \"0s\"\nmax_backoff = \"1s\"\n",
        cluster.url("postgres"),
        Stack::get().brokers
    );
    let mut capture = ServiceProcess::spawn("capture", &toml, "flaky")?;
    let retrying = "capture interrupted; retrying with backoff";
    eventually("capture to report the source unreachable", WAIT, || async {
        Ok(capture.output().contains(retrying).then_some(()))
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

    let output = capture.output();
    assert_eq!(
        output.matches(retrying).count(),
        1,
        "the same failure is logged once, however many attempts:\n{output}"
    );
    assert_eq!(capture.terminate().await?, Some(0), "{output}");
    Ok(())
}
