//! `latency_load LEGACY_URL PLATFORM_URL RATE SECONDS`: single-row
//! autocommit inserts on both sides at once, `RATE` transactions a second in
//! all (half per side), for `SECONDS`; each row's arrival on the other side
//! is watched from outside, as a client of that database sees it.
//!
//! A row's latency runs from the moment its insert returned to its writer
//! (the commit, `synchronous_commit = on`) to the first poll that finds it
//! on the other side; polls run every [`POLL_EVERY`], so figures carry up to
//! that much of the watcher's own delay. Prints `name=value` lines on
//! stdout, per direction: rows written, the rate achieved, p50, p99 and
//! max in milliseconds, and rows that never arrived within [`ARRIVAL_WAIT`]
//! of the load's end; progress on stderr. Used by `scripts/bench latency`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use sync_bridge_tests::loads::{self, connect_durable};
use sync_bridge_tests::Side;
use tokio::time::Instant;

const WRITERS_PER_SIDE: usize = 8;
const POLL_EVERY: Duration = Duration::from_millis(5);
const ARRIVAL_WAIT: Duration = Duration::from_secs(120);
/// The oldest pending rows one poll asks about: rows cross in commit
/// order, so asking for the oldest finds each as soon as it arrives while
/// the watcher's own load on the database stays small.
const POLL_BATCH: usize = 32;

/// Rows written and not yet seen on the other side, in the order they were
/// written: sequence number -> (email, commit time).
type Pending = Arc<Mutex<BTreeMap<u64, (String, Instant)>>>;

/// Writes `total` rows on `side`, one every `1 / rate` seconds from
/// `start`, over [`WRITERS_PER_SIDE`] connections; returns when all are
/// written, with each insert's own duration (milliseconds).
async fn write(
    side: Side,
    url: &str,
    run: &str,
    rate: f64,
    total: u64,
    start: Instant,
    pending: Pending,
) -> Result<Vec<f64>> {
    let next = Arc::new(AtomicU64::new(0));
    let mut writers = tokio::task::JoinSet::new();
    for _ in 0..WRITERS_PER_SIDE {
        let client = connect_durable(url).await?;
        let statement = client.prepare(loads::insert_user(side)).await?;
        let (next, pending, run) = (Arc::clone(&next), Arc::clone(&pending), run.to_owned());
        writers.spawn(async move {
            let mut took = Vec::new();
            loop {
                let seq = next.fetch_add(1, Ordering::Relaxed);
                if seq >= total {
                    return Ok::<_, anyhow::Error>(took);
                }
                tokio::time::sleep_until(start + Duration::from_secs_f64(seq as f64 / rate)).await;
                let email = format!("lat-{run}-{}-{seq}@example.com", loads::direction(side));
                let sent = Instant::now();
                client.execute(&statement, &[&email]).await?;
                let committed = Instant::now();
                took.push((committed - sent).as_secs_f64() * 1000.0);
                pending
                    .lock()
                    .map_err(|_| anyhow::anyhow!("pending rows poisoned"))?
                    .insert(seq, (email, committed));
            }
        });
    }
    let mut took = Vec::new();
    while let Some(writer) = writers.join_next().await {
        took.extend(writer??);
    }
    Ok(took)
}

/// Polls `other` for the rows in `pending` until `done` and none is left,
/// or [`ARRIVAL_WAIT`] after `done`; returns each arrival's latency
/// (milliseconds) and the rows never seen.
async fn watch(
    other: Side,
    url: &str,
    pending: Pending,
    finished: Arc<std::sync::atomic::AtomicBool>,
) -> Result<(Vec<f64>, usize)> {
    let client = connect_durable(url).await?;
    let statement = client.prepare(loads::find_users(other)).await?;
    let mut latencies = Vec::new();
    let mut ended_at: Option<Instant> = None;
    loop {
        let asked: Vec<(u64, String)> = {
            let pending = pending
                .lock()
                .map_err(|_| anyhow::anyhow!("pending rows poisoned"))?;
            pending
                .iter()
                .take(POLL_BATCH)
                .map(|(seq, (email, _))| (*seq, email.clone()))
                .collect()
        };
        let mut all_found = false;
        if !asked.is_empty() {
            let emails: Vec<&str> = asked.iter().map(|(_, email)| email.as_str()).collect();
            let found = client.query(&statement, &[&emails]).await?;
            let seen = Instant::now();
            let found: std::collections::HashSet<String> =
                found.iter().map(|row| row.get(0)).collect();
            all_found = found.len() == asked.len();
            let mut pending = pending
                .lock()
                .map_err(|_| anyhow::anyhow!("pending rows poisoned"))?;
            for (seq, email) in &asked {
                if found.contains(email) {
                    if let Some((_, committed)) = pending.remove(seq) {
                        latencies.push((seen - committed).as_secs_f64() * 1000.0);
                    }
                }
            }
        }
        if finished.load(Ordering::Acquire) {
            let ended = *ended_at.get_or_insert_with(Instant::now);
            let left = pending
                .lock()
                .map_err(|_| anyhow::anyhow!("pending rows poisoned"))?
                .len();
            if left == 0 || ended.elapsed() >= ARRIVAL_WAIT {
                return Ok((latencies, left));
            }
        }
        if !all_found {
            tokio::time::sleep(POLL_EVERY).await;
        }
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, legacy_url, platform_url, rate, seconds] = args.as_slice() else {
        anyhow::bail!("usage: latency_load LEGACY_URL PLATFORM_URL RATE SECONDS");
    };
    let rate: f64 = rate.parse().context("RATE")?;
    let seconds: f64 = seconds.parse().context("SECONDS")?;
    let per_side = rate / 2.0;
    let total = (per_side * seconds).round() as u64;
    let run = format!("{}", std::process::id());
    let start = Instant::now() + Duration::from_millis(500);
    let finished = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut figures = Vec::new();
    let mut watchers = Vec::new();
    let mut writers = Vec::new();
    for (side, url, other, other_url) in [
        (Side::Legacy, legacy_url, Side::Platform, platform_url),
        (Side::Platform, platform_url, Side::Legacy, legacy_url),
    ] {
        let pending: Pending = Arc::default();
        watchers.push((
            side,
            tokio::spawn({
                let (url, pending, finished) = (
                    other_url.clone(),
                    Arc::clone(&pending),
                    Arc::clone(&finished),
                );
                async move { watch(other, &url, pending, finished).await }
            }),
        ));
        writers.push((
            side,
            tokio::spawn({
                let (url, run) = (url.clone(), run.clone());
                async move { write(side, &url, &run, per_side, total, start, pending).await }
            }),
        ));
    }
    eprintln!("latency_load: {rate} transactions/s in all for {seconds}s ({total} per side)");
    let mut commit_times = Vec::new();
    for (side, writer) in writers {
        let took = writer.await??;
        let wrote_for = start.elapsed().as_secs_f64();
        figures.push(format!(
            "{}_achieved_per_sec={:.0}",
            loads::direction(side),
            took.len() as f64 / wrote_for
        ));
        commit_times.extend(took);
    }
    finished.store(true, Ordering::Release);
    for (side, watcher) in watchers {
        let (mut latencies, missing) = watcher.await??;
        latencies.sort_by(f64::total_cmp);
        let d = loads::direction(side);
        figures.push(format!("{d}_rows={}", latencies.len() + missing));
        figures.push(format!("{d}_p50_ms={:.1}", percentile(&latencies, 0.5)));
        figures.push(format!("{d}_p99_ms={:.1}", percentile(&latencies, 0.99)));
        figures.push(format!(
            "{d}_max_ms={:.1}",
            latencies.last().copied().unwrap_or(f64::NAN)
        ));
        figures.push(format!("{d}_missing={missing}"));
    }
    commit_times.sort_by(f64::total_cmp);
    figures.push(format!(
        "insert_commit_p50_ms={:.1}",
        percentile(&commit_times, 0.5)
    ));
    for figure in figures {
        println!("{figure}");
    }
    Ok(())
}
