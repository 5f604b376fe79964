//! Query connections (`runtime::link`) whose link to the server stops
//! forwarding while an answer is due: each fails within its deadline
//! instead of waiting for good.

use std::time::Duration;

use runtime::tls::{PgTls, SslMode};
use sync_bridge_tests::{server_of, Proxy, Side, TestDb};

/// Two simple queries sent one after the other before either is answered:
/// the first is answered, then the link stops forwarding while the second
/// (a one-second sleep) is still running. Its answer is due, bytes came
/// after it was sent: the link must still time out.
pub async fn the_second_of_two_pipelined_queries_fails_within_the_deadline(
    mut pg: tokio_postgres::Config,
    tls: PgTls,
    proxy: &Proxy,
) -> anyhow::Result<()> {
    tls.configure(&mut pg);
    let deadline = Duration::from_secs(2);
    let (client, driver) =
        runtime::link::connect(&pg, tls.connector().map_err(anyhow::Error::msg)?, deadline).await?;
    let driver = tokio::spawn(driver);
    let first = async {
        let answered = client.simple_query("SELECT 1").await;
        proxy.blackhole();
        answered
    };
    let second = client.simple_query("SELECT pg_sleep(1)");
    let (first, second) = tokio::time::timeout(Duration::from_secs(60), async {
        tokio::join!(first, second)
    })
    .await
    .map_err(|_| anyhow::anyhow!("the second query was still waiting after a minute"))?;
    first?;
    anyhow::ensure!(
        second.is_err(),
        "the second answer never came, yet: {second:?}"
    );
    let ended = tokio::time::timeout(Duration::from_secs(10), driver).await;
    anyhow::ensure!(
        matches!(ended, Ok(Ok(Err(_)))),
        "the connection ends with an error"
    );
    Ok(())
}

#[tokio::test]
async fn a_link_that_stops_between_two_pipelined_answers_fails_within_its_deadline(
) -> anyhow::Result<()> {
    let db = TestDb::create(Side::Legacy, "link_pipelined").await?;
    let proxy = Proxy::start(&server_of(&db.url)).await?;
    let pg: tokio_postgres::Config = proxy.url_through(&db.url).parse()?;
    let tls = PgTls {
        mode: SslMode::Prefer,
        root_cert: None,
    };
    the_second_of_two_pipelined_queries_fails_within_the_deadline(pg, tls, &proxy).await
}

/// The server probes its end of apply's connections as apply probes its
/// own: when apply is gone behind a partition, the server ends its
/// sessions, and the locks they hold (the lease's) go within about a
/// minute, not the server's default two hours.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_probes_apply_connections_as_apply_probes_its_own() -> anyhow::Result<()> {
    let bridge = sync_bridge_tests::Bridge::prepare("keepalive").await?;
    let config = apply::Config::from_toml(&bridge.apply_toml())?;
    for side in [apply::mapping::Side::Legacy, apply::mapping::Side::Platform] {
        let client = config.connect(side).await?;
        let mut settings = Vec::new();
        for name in [
            "tcp_keepalives_idle",
            "tcp_keepalives_interval",
            "tcp_keepalives_count",
            "tcp_user_timeout",
        ] {
            let row = client.query_one(&format!("SHOW {name}"), &[]).await?;
            settings.push(row.get::<_, String>(0));
        }
        assert_eq!(settings, ["30", "10", "3", "60000"], "{side:?}");
    }
    Ok(())
}
