//! Equal under any interleaving: both sides write whatever an application
//! may write, at once, to any row, and once quiet the two databases are
//! equal under the mapping.

use std::time::Duration;

use sync_bridge_tests::{Bridge, Unrestricted};

/// How long a writer phase lasts in `scripts/test`; `scripts/soak` runs
/// longer ones.
const WRITING: Duration = Duration::from_secs(20);

/// Catching up after the writers stop: a debug build on a shared 2-core
/// machine, with other tests running.
const CATCH_UP: Duration = Duration::from_secs(400);

/// After catching up: what is re-asserted after a commit crosses once more.
const SETTLE: Duration = Duration::from_secs(60);

async fn unrestricted_writers_converge(test: &str, seed: u64) -> anyhow::Result<()> {
    let run = Unrestricted::from_env(seed, WRITING);
    let bridge = Bridge::start(&format!("unrestricted{}", run.seed)).await?;
    bridge.legacy().execute(Unrestricted::SEED_ROWS).await?;
    bridge.converged(SETTLE).await?;
    let (legacy, platform) = run
        .run(&bridge.legacy().url.clone(), &bridge.platform().url.clone())
        .await?;
    assert!(
        legacy > 100 && platform > 100,
        "the writers committed work ({legacy} legacy and {platform} platform transactions)"
    );
    let outcome = async {
        bridge.caught_up(CATCH_UP).await?;
        bridge.converged(SETTLE).await
    }
    .await;
    if let Err(error) = outcome {
        anyhow::bail!("{error:#}\n{}", run.replay_hint(test));
    }
    bridge.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "diverges today (issue 26): natural keys taken by a returning row, parent deletes racing child changes and non-transitive orders leave rows different; run with --run-ignored"]
async fn unrestricted_writers_on_both_sides_converge_seed_1() -> anyhow::Result<()> {
    unrestricted_writers_converge("unrestricted_writers_on_both_sides_converge_seed_1", 1).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "diverges today (issue 26): natural keys taken by a returning row, parent deletes racing child changes and non-transitive orders leave rows different; run with --run-ignored"]
async fn unrestricted_writers_on_both_sides_converge_seed_2() -> anyhow::Result<()> {
    unrestricted_writers_converge("unrestricted_writers_on_both_sides_converge_seed_2", 2).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "diverges today (issue 26): natural keys taken by a returning row, parent deletes racing child changes and non-transitive orders leave rows different; run with --run-ignored"]
async fn unrestricted_writers_on_both_sides_converge_seed_3() -> anyhow::Result<()> {
    unrestricted_writers_converge("unrestricted_writers_on_both_sides_converge_seed_3", 3).await
}
