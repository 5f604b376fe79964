//! `capacity_load LEGACY_URL PLATFORM_URL ROWS`: how many single-row
//! transactions the bridge carries each way while both sides write at once,
//! next to the same rows written as one transaction per side.
//!
//! Two phases, each on both sides at once, each side's rows new users
//! (legacy `users`, platform `identities`) with emails of their own:
//!
//! 1. **small**: `ROWS` single-row autocommit inserts per side, as fast as
//!    [`WRITERS_PER_SIDE`] connections go (`synchronous_commit = on`);
//! 2. **bulk**: one transaction of `ROWS` inserted rows per side.
//!
//! A phase's figure per direction is `ROWS` over the time from the phase's
//! start to the moment all of its rows are found on the other side (polled
//! every [`POLL_EVERY`]): transactions a second crossed for the small phase,
//! rows a second for the bulk one. Prints `name=value` lines on stdout, per
//! direction, then `small_vs_bulk` (the lower of the two directions' small
//! over bulk) last; progress on stderr. Used by `scripts/bench small`.

use std::time::Duration;

use anyhow::{Context, Result};
use sync_bridge_tests::loads::{self, connect_durable};
use sync_bridge_tests::Side;
use tokio::time::Instant;

const WRITERS_PER_SIDE: usize = 8;
const POLL_EVERY: Duration = Duration::from_millis(50);
/// How long a phase's rows may take to arrive before the load gives up.
const ARRIVAL_WAIT: Duration = Duration::from_secs(900);

/// Writes `rows` single-row transactions on `side` over
/// [`WRITERS_PER_SIDE`] connections; returns the rate written (per second).
async fn write_small(side: Side, url: &str, prefix: &str, rows: u64) -> Result<f64> {
    let next = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(1));
    let mut writers = tokio::task::JoinSet::new();
    let start = Instant::now();
    for _ in 0..WRITERS_PER_SIDE {
        let client = connect_durable(url).await?;
        let statement = client.prepare(loads::insert_user(side)).await?;
        let (next, prefix) = (std::sync::Arc::clone(&next), prefix.to_owned());
        writers.spawn(async move {
            loop {
                let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if n > rows {
                    return Ok::<_, anyhow::Error>(());
                }
                let email = format!("{prefix}{n}@example.com");
                client.execute(&statement, &[&email]).await?;
            }
        });
    }
    while let Some(writer) = writers.join_next().await {
        writer??;
    }
    Ok(rows as f64 / start.elapsed().as_secs_f64())
}

/// Writes `rows` rows on `side` in one transaction.
async fn write_bulk(side: Side, url: &str, prefix: &str, rows: u64) -> Result<f64> {
    let client = connect_durable(url).await?;
    let start = Instant::now();
    client
        .execute(loads::insert_users(side), &[&prefix, &(rows as i64)])
        .await?;
    Ok(rows as f64 / start.elapsed().as_secs_f64())
}

/// Waits until `rows` rows with `prefix` are on `side`; returns when.
async fn arrived(side: Side, url: &str, prefix: &str, rows: u64) -> Result<Instant> {
    let client = connect_durable(url).await?;
    let statement = client.prepare(loads::count_users_like(side)).await?;
    let deadline = Instant::now() + ARRIVAL_WAIT;
    loop {
        let found: i64 = client.query_one(&statement, &[&prefix]).await?.get(0);
        if found as u64 >= rows {
            return Ok(Instant::now());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{found} of {rows} rows with {prefix} on the {} side after {ARRIVAL_WAIT:?}",
            side.name()
        );
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// One phase on both sides at once: per direction, (rows a second crossed,
/// rows a second written).
async fn phase(name: &str, urls: [&str; 2], rows: u64) -> Result<Vec<(Side, f64, f64)>> {
    let run = std::process::id();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (side, url) in [(Side::Legacy, urls[0]), (Side::Platform, urls[1])] {
        let other_url = if side == Side::Legacy {
            urls[1]
        } else {
            urls[0]
        };
        let prefix = format!("cap-{name}-{run}-{}-", loads::direction(side));
        let (url, other_url, name) = (url.to_owned(), other_url.to_owned(), name.to_owned());
        tasks.push(tokio::spawn(async move {
            let watch = arrived(side.other(), &other_url, &prefix, rows);
            let write = async {
                if name == "small" {
                    write_small(side, &url, &prefix, rows).await
                } else {
                    write_bulk(side, &url, &prefix, rows).await
                }
            };
            let (written, arrived) = tokio::try_join!(write, watch)?;
            let crossed = rows as f64 / (arrived - start).as_secs_f64();
            Ok::<_, anyhow::Error>((side, crossed, written))
        }));
    }
    let mut out = Vec::new();
    for task in tasks {
        out.push(task.await??);
    }
    Ok(out)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, legacy_url, platform_url, rows] = args.as_slice() else {
        anyhow::bail!("usage: capacity_load LEGACY_URL PLATFORM_URL ROWS");
    };
    let rows: u64 = rows.parse().context("ROWS")?;
    let urls = [legacy_url.as_str(), platform_url.as_str()];
    eprintln!("==> small: {rows} single-row transactions on each side at once");
    let small = phase("small", urls, rows).await?;
    eprintln!("==> bulk: one transaction of {rows} rows on each side at once");
    let bulk = phase("bulk", urls, rows).await?;
    let mut ratios = Vec::new();
    for ((side, small_crossed, small_written), (_, bulk_crossed, _)) in small.iter().zip(&bulk) {
        let direction = loads::direction(*side);
        let ratio = small_crossed / bulk_crossed;
        println!("{direction}_small_written_per_sec={small_written:.0}");
        println!("{direction}_small_crossed_per_sec={small_crossed:.0}");
        println!("{direction}_bulk_crossed_rows_per_sec={bulk_crossed:.0}");
        println!("{direction}_small_vs_bulk={ratio:.3}");
        ratios.push(ratio);
    }
    let platform_vs_legacy = small[1].1 / small[0].1;
    println!("platform_to_legacy_vs_legacy_to_platform_small={platform_vs_legacy:.3}");
    let lower = ratios.iter().copied().fold(f64::INFINITY, f64::min);
    println!("small_vs_bulk={lower:.3}");
    Ok(())
}
