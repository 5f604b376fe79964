//! Equal under any interleaving: both sides write whatever an application
//! may write, at once, to any row, and once quiet the two databases are
//! equal under the mapping.

use std::time::Duration;

use sync_bridge_tests::{run_command, Bridge, Unrestricted};

/// How long a writer phase lasts in `scripts/test`; `scripts/soak` runs
/// longer ones.
const WRITING: Duration = Duration::from_secs(20);

/// Catching up after the writers stop: a debug build on a shared 2-core
/// machine, with other tests running.
const CATCH_UP: Duration = Duration::from_secs(400);

/// After catching up: what is re-asserted after a commit crosses once more.
const SETTLE: Duration = Duration::from_secs(60);

/// Polling as a deployment without logical replication runs it, at a test's
/// pace: the overlap covers apply's lag under load.
const POLLING: &str =
    "interval = \"1s\"\noverlap = \"120s\"\npage_size = 200\nreconcile_interval = \"3s\"\n";

/// How a side's capture reads its database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reading {
    Streaming,
    Polling,
}

async fn unrestricted_writers_converge(test: &str, seed: u64) -> anyhow::Result<()> {
    unrestricted_writers_converge_reading(test, seed, Reading::Streaming, Reading::Streaming).await
}

async fn unrestricted_writers_converge_reading(
    test: &str,
    seed: u64,
    legacy: Reading,
    platform: Reading,
) -> anyhow::Result<()> {
    let run = Unrestricted::from_env(seed, WRITING);
    let mut bridge = Bridge::prepare(&format!("unrestricted{}", run.seed)).await?;
    if legacy == Reading::Polling {
        bridge.legacy.use_polling(POLLING);
    }
    if platform == Reading::Polling {
        bridge.platform.use_polling(POLLING);
    }
    let bridge = bridge.run().await?;
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
async fn unrestricted_writers_on_both_sides_converge_seed_1() -> anyhow::Result<()> {
    unrestricted_writers_converge("unrestricted_writers_on_both_sides_converge_seed_1", 1).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unrestricted_writers_on_both_sides_converge_seed_2() -> anyhow::Result<()> {
    unrestricted_writers_converge("unrestricted_writers_on_both_sides_converge_seed_2", 2).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unrestricted_writers_on_both_sides_converge_seed_3() -> anyhow::Result<()> {
    unrestricted_writers_converge("unrestricted_writers_on_both_sides_converge_seed_3", 3).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "diverges now and then (issue 26): 8 of the latest 10 seeds converged; seeds 19 and 22 ended with a user legacy deleted still on the platform, holding an older legacy version under a clock later than the delete; run with --run-ignored and SYNC_BRIDGE_SEED"]
async fn unrestricted_writers_on_both_sides_converge_when_both_sides_poll() -> anyhow::Result<()> {
    unrestricted_writers_converge_reading(
        "unrestricted_writers_on_both_sides_converge_when_both_sides_poll",
        5,
        Reading::Polling,
        Reading::Polling,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "under confirmation (issue 26): converged in 4 of 4 runs after the polling fixes (a row or two different in most runs before); takes 150-340 s, mostly catching up, too long for scripts/test on CI; run with --run-ignored"]
async fn unrestricted_writers_on_both_sides_converge_when_legacy_polls_and_the_platform_streams(
) -> anyhow::Result<()> {
    unrestricted_writers_converge_reading(
        "unrestricted_writers_on_both_sides_converge_when_legacy_polls_and_the_platform_streams",
        6,
        Reading::Polling,
        Reading::Streaming,
    )
    .await
}

/// Whatever the bridge would leave different under unrestricted writers,
/// `apply repair` brings back in step through the running bridge: every row
/// in step once the repairs crossed (nothing to repair is the usual
/// outcome).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_unrestricted_writers_leave_different_is_brought_in_step_by_apply_repair(
) -> anyhow::Result<()> {
    let test = "what_unrestricted_writers_leave_different_is_brought_in_step_by_apply_repair";
    let run = Unrestricted::from_env(4, WRITING);
    let bridge = Bridge::start(&format!("repaired{}", run.seed)).await?;
    bridge.legacy().execute(Unrestricted::SEED_ROWS).await?;
    bridge.converged(SETTLE).await?;
    run.run(&bridge.legacy().url.clone(), &bridge.platform().url.clone())
        .await?;
    bridge.caught_up(CATCH_UP).await?;
    // Quiet: what still differs once re-asserted deletes crossed.
    let left = bridge.converged(Duration::from_secs(20)).await;
    let toml = format!(
        "{}\n[verify]\nsettle = \"2s\"\npause = \"0s\"\n",
        bridge.apply_toml()
    );
    let repaired = run_command("apply", &toml, &["repair"]).await?;
    assert!(
        repaired.code == Some(0) || repaired.code == Some(1),
        "{}\n{}",
        repaired.stdout,
        repaired.stderr
    );
    if left.is_ok() {
        assert_eq!(
            repaired.code,
            Some(0),
            "nothing to repair\n{}",
            repaired.stdout
        );
    }
    let outcome = async {
        bridge.caught_up(CATCH_UP).await?;
        bridge.converged(SETTLE).await
    }
    .await;
    if let Err(error) = outcome {
        anyhow::bail!(
            "{error:#}\nrepair re-asserted:\n{}\n{}",
            repaired.stdout,
            run.replay_hint(test)
        );
    }
    bridge.stop().await
}
