//! A configuration the source cannot serve ends capture with a message that
//! says what to fix, and exit code 2: no retry loop.

use std::time::Duration;

use sync_bridge_tests::{
    create_topic, unique, CaptureSetup, ServiceProcess, Side, Stack, TestDb, ThrowawayCluster,
};

const EXIT: Duration = Duration::from_secs(60);

async fn exits_with_message(toml: &str, hint: &str, expected: &[&str]) -> anyhow::Result<()> {
    let mut process = ServiceProcess::spawn("capture", toml, hint)?;
    let code = process.wait(EXIT).await?;
    let output = process.output();
    assert_eq!(
        code,
        Some(2),
        "a configuration error exits 2; output:\n{output}"
    );
    for text in expected {
        assert!(
            output.contains(text),
            "the message should mention {text:?}; output:\n{output}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_that_does_not_exist_is_named_in_the_error() -> anyhow::Result<()> {
    let db = TestDb::create(Side::Legacy, "notable").await?;
    db.execute("CREATE TABLE present (id int PRIMARY KEY)")
        .await?;
    let setup = CaptureSetup::new(db, &["present", "public.absent"]);
    create_topic(&setup.topic).await?;
    exits_with_message(&setup.toml(), "notable", &["public.absent", "do not exist"]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_topic_it_may_not_create_is_named_in_the_error() -> anyhow::Result<()> {
    let db = TestDb::create(Side::Legacy, "notopic").await?;
    db.execute("CREATE TABLE present (id int PRIMARY KEY)")
        .await?;
    let setup = CaptureSetup::new(db, &["present"]);
    let toml = setup
        .toml()
        .replace("\n\n[capture]", "\ncreate_topic = false\n\n[capture]");
    exits_with_message(
        &toml,
        "notopic",
        &[&setup.topic, "does not exist", "create_topic is false"],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_without_replication_is_told_to_grant_it() -> anyhow::Result<()> {
    let db = TestDb::create(Side::Legacy, "norepl").await?;
    let role = unique("plain");
    db.execute(&format!(
        "CREATE TABLE things (id int PRIMARY KEY);
         CREATE ROLE {role} LOGIN;
         GRANT SELECT ON things TO {role};"
    ))
    .await?;
    let setup = CaptureSetup::new(db, &["things"]);
    let toml = setup
        .toml()
        .replace("postgres://postgres@", &format!("postgres://{role}@"));
    exits_with_message(&toml, "norepl", &["REPLICATION", &role]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_configuration_key_is_rejected_before_connecting() -> anyhow::Result<()> {
    let db = TestDb::create(Side::Legacy, "badkey").await?;
    let setup = CaptureSetup::new(db, &["things"]);
    let toml = setup
        .toml()
        .replace("[kafka]", "[kafka]\nbrokerz = \"oops\"");
    exits_with_message(&toml, "badkey", &["brokerz"]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_logical_wal_level_is_told_what_to_set() -> anyhow::Result<()> {
    let cluster = ThrowawayCluster::create("walreplica", "replica")?;
    cluster.start()?;
    let url = format!("postgres://postgres@127.0.0.1:{}/postgres", cluster.port);
    let client = sync_bridge_tests::connect(&url).await?;
    client
        .batch_execute("CREATE TABLE things (id int PRIMARY KEY)")
        .await?;
    let toml = format!(
        "[source]\nname = \"legacy\"\nurl = {url:?}\ntables = [\"things\"]\n[kafka]\nbrokers = {:?}\n",
        Stack::get().brokers
    );
    exits_with_message(&toml, "walreplica", &["wal_level", "logical"]).await
}
