//! What apply needs from the broker at start: the topics it reads and its
//! dead-letter topic, created when missing, read from their first offset.

use std::time::Duration;

use sync_bridge_tests::{eventually, topic_exists, unique, Bridge};

const WAIT: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_started_before_its_topics_exist_creates_them_and_applies_what_arrives_from_the_first(
) -> anyhow::Result<()> {
    let mut bridge = Bridge::prepare("notopics").await?;
    // Topics of this test's own that nobody has created yet.
    bridge.legacy.topic = unique("notopics_legacy");
    bridge.platform.topic = unique("notopics_platform");
    bridge.dead_letter_topic = unique("notopics_dead");
    bridge.start_apply()?;
    let topics = [
        bridge.legacy.topic.clone(),
        bridge.platform.topic.clone(),
        bridge.dead_letter_topic.clone(),
    ];
    eventually("apply's three topics on the broker", WAIT, || async {
        for topic in &topics {
            if !topic_exists(topic)? {
                return Ok(None);
            }
        }
        Ok(Some(()))
    })
    .await?;

    bridge.start_captures().await?;
    bridge
        .legacy()
        .execute(
            "INSERT INTO users (email, full_name, role, inserted_at, updated_at)
             VALUES ('first@example.com', 'First Offset', 'member', '2026-01-01 10:00:00', '2026-01-01 10:00:00')",
        )
        .await?;
    let platform = bridge.platform().client();
    eventually("the user on the platform side", WAIT, || async {
        let rows = platform
            .query(
                "SELECT 1 FROM identity.identities WHERE email = 'first@example.com'",
                &[],
            )
            .await?;
        Ok((!rows.is_empty()).then_some(()))
    })
    .await?;
    bridge.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_starts_while_someone_reads_its_bookkeeping_in_a_long_transaction(
) -> anyhow::Result<()> {
    let mut bridge = Bridge::start("busybook").await?;
    bridge.stop_apply().await?;
    // A monitor reading apply's position in a transaction that stays open:
    // apply's start must not need a lock it holds back.
    let monitor = sync_bridge_tests::connect(&bridge.platform().url).await?;
    monitor
        .batch_execute(
            "BEGIN; SELECT * FROM syncbridge.apply_position; SELECT * FROM syncbridge.row_clock LIMIT 1",
        )
        .await?;
    bridge.start_apply()?;
    bridge
        .legacy()
        .execute(
            "INSERT INTO users (email, full_name, role, inserted_at, updated_at)
             VALUES ('watched@example.com', 'Watched Start', 'member', now() AT TIME ZONE 'UTC', now() AT TIME ZONE 'UTC')",
        )
        .await?;
    let platform = bridge.platform().client();
    eventually(
        "the row applied while the monitor's transaction is open",
        WAIT,
        || async {
            let rows = platform
                .query(
                    "SELECT 1 FROM identity.identities WHERE email = 'watched@example.com'",
                    &[],
                )
                .await?;
            Ok((!rows.is_empty()).then_some(()))
        },
    )
    .await?;
    monitor.batch_execute("COMMIT").await?;
    bridge.stop().await
}
