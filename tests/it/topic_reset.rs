//! A topic deleted and created again (or truncated) starts its offsets over:
//! apply, whose position is an offset in the old topic, must not skip the
//! new topic's events as already applied. It refuses, names the fix, and
//! after `apply reset-position` applies everything the new topic holds.

use std::time::Duration;

use sync_bridge_tests::{create_topic, mapping_dir, Bridge, NamedUsers, Side};

const WAIT: Duration = Duration::from_secs(120);

/// Five legacy users applied one transaction each, then the legacy topic
/// replaced by a new one (capture moved to it, its slot kept) that receives
/// `after` more users while apply is stopped; apply is then started.
async fn topic_replaced_under_apply(
    hint: &str,
    after: usize,
) -> anyhow::Result<(Bridge, NamedUsers)> {
    let mut bridge = Bridge::start(hint).await?;
    let mut before = NamedUsers::default();
    for n in 1..=5 {
        before.insert(&bridge, &format!("Before Number{n}")).await?;
    }
    bridge.converged(WAIT).await?;
    bridge.stop_apply().await?;
    bridge.stop_capture(Side::Legacy).await?;
    let topic = format!("{}.again", bridge.legacy.topic);
    create_topic(&topic).await?;
    bridge.legacy.topic = topic;
    bridge.start_capture(Side::Legacy)?;
    bridge.legacy.wait_for_slot().await?;
    let mut written = NamedUsers::default();
    for n in 1..=after {
        written.insert(&bridge, &format!("After Number{n}")).await?;
    }
    sync_bridge_tests::eventually("the new topic to hold them", WAIT, || async {
        let last = sync_bridge_tests::last_offset(&bridge.legacy.topic).await?;
        Ok((last + 1 >= after as i64).then_some(()))
    })
    .await?;
    bridge.start_apply()?;
    Ok((bridge, written))
}

async fn refused_then_reset_and_applied(
    mut bridge: Bridge,
    written: NamedUsers,
) -> anyhow::Result<()> {
    let outcome = bridge.apply_outcome(WAIT).await?;
    let Err(error) = outcome else {
        anyhow::bail!("apply went on over a topic whose offsets started over");
    };
    let text = runtime::error_chain(&error);
    assert!(error.is_config(), "exit code 2: {text}");
    assert!(
        text.contains(&bridge.legacy.topic) && text.contains("apply reset-position --from legacy"),
        "names the topic and the fix: {text}"
    );
    assert_eq!(
        written.missing_on_the_platform(&bridge).await?,
        written.0,
        "nothing of the new topic was skipped as applied, nothing written"
    );

    let config = apply::Config::from_toml(&bridge.apply_toml())?;
    let mapping = apply::mapping::Mapping::load_dir(&mapping_dir())?;
    apply::checkpoint::reset(&config, &mapping, apply::mapping::Side::Legacy, false).await?;
    bridge.start_apply()?;
    bridge.converged(WAIT).await?;
    assert_eq!(
        written.missing_on_the_platform(&bridge).await?,
        Vec::<String>::new(),
        "every change on the new topic reached the platform"
    );
    bridge.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_topic_that_ends_before_apply_position_is_refused_until_the_position_is_reset(
) -> anyhow::Result<()> {
    let (bridge, written) = topic_replaced_under_apply("topicshort", 2).await?;
    refused_then_reset_and_applied(bridge, written).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_topic_past_apply_position_is_told_by_the_event_at_that_position(
) -> anyhow::Result<()> {
    let (bridge, written) = topic_replaced_under_apply("topiclong", 9).await?;
    refused_then_reset_and_applied(bridge, written).await
}
