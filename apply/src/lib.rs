//! Apply: both sides' change events into the other side's database, through
//! the mapping, exactly once, last writer wins, without echoes.
//!
//! ```text
//!  legacy topic ──► direction(legacy→platform) ──► platform db
//!  platform topic ─► direction(platform→legacy) ──► legacy db
//! ```
//!
//! - [`mapping`]: the correspondence between the schemas (configuration).
//! - [`writer`]: events into multi-row statements; [`writer::pairing`]: the
//!   legacy id and platform uuid of one row, derived ids.
//! - [`conflict`]: the statements that decide last-writer-wins as they write.
//! - [`checkpoint`]: the bookkeeping schema and the position, stored with the rows.
//! - [`direction`]: one source topic into one target database.
//! - [`deadletter`]: what cannot be applied, with the reason.
//! - [`lease`]: one writer per pair of databases (a session advisory lock).
//! - [`stats`]: counters of what apply did.
//! - [`monitor`]: lags, metrics and health watched from outside; `apply status`.
//! - [`metrics`], [`status`]: apply's metric names and its part of the status report.
//! - [`verify`]: compares the two databases under the mapping, at once or
//!   a chunk at a time on a schedule.
//! - [`replay`]: the topics again from a point (`apply replay`).

pub mod checkpoint;
pub mod config;
pub mod conflict;
pub mod deadletter;
pub mod direction;
pub mod error;
pub mod footprint;
pub mod lease;
pub mod mapping;
pub mod metrics;
pub mod monitor;
pub mod replay;
pub mod sessions;
pub mod stats;
pub mod status;
pub mod verify;
pub mod writer;

use std::sync::Arc;
use std::time::{Duration, Instant};

use runtime::supervise::Retries;
use schemas::codec::Codec;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

pub use config::Config;
pub use error::{ApplyError, Result};
use mapping::{Mapping, Side};
pub use stats::Counters;
use stats::Stats;
pub use verify::check;

/// Runs both directions until `shutdown` (Ok) or a definite error, once this
/// instance holds the single-writer lock on both databases ([`lease`]).
pub async fn run(config: Config, counters: Counters, shutdown: CancellationToken) -> Result<()> {
    // This instance's sessions whose use is over when it takes the lease
    // again (the lost lease's lock sessions, the directions' sessions under
    // it): their server ends may live on, holding the lock or rows.
    let mut forsaken = Vec::new();
    // The directions' server sessions, across leases: a session of a run
    // under the lease before can outlive it at the server.
    let sessions = Arc::new(sessions::OpenSessions::default());
    loop {
        let Some(lease) = lease::acquire(&config, &shutdown, &forsaken).await? else {
            return Ok(());
        };
        let directions = shutdown.child_token();
        let stop_on_loss = {
            let lost = lease.lost();
            let directions = directions.clone();
            tokio::spawn(async move {
                lost.cancelled().await;
                directions.cancel();
            })
        };
        let outcome = run_directions(
            config.clone(),
            counters.clone(),
            lease.fence(),
            Arc::clone(&sessions),
            directions,
        )
        .await;
        stop_on_loss.abort();
        if outcome.is_ok() && lease.lost().is_cancelled() && !shutdown.is_cancelled() {
            // Stopped because the lock went away, or another instance took
            // it over: take it again first.
            forsaken = lease.sessions();
            forsaken.extend(sessions.all());
            drop(lease);
            continue;
        }
        drop(lease);
        return outcome;
    }
}

/// Both directions, until `shutdown` (Ok) or a definite error.
async fn run_directions(
    config: Config,
    counters: Counters,
    fence: lease::Fence,
    sessions: Arc<sessions::OpenSessions>,
    shutdown: CancellationToken,
) -> Result<()> {
    let mapping = Arc::new(Mapping::load_dir(&config.apply.mapping_dir)?);
    let topics = config.topics(&mapping)?;
    let codec = Codec::new().map_err(ApplyError::Schema)?;
    let dead_letters = deadletter::DeadLetters::new(&config.kafka)?;
    let health =
        runtime::telemetry::start(&config.telemetry, "apply", metrics::CATALOG, &shutdown).await;
    monitor::register(&health);
    let watcher = tokio::spawn(monitor::watch(
        config.clone(),
        topics,
        counters.clone(),
        Arc::clone(&health),
        shutdown.child_token(),
    ));
    let verifier = tokio::spawn(verify::schedule::run(
        config.clone(),
        Arc::clone(&mapping),
        shutdown.child_token(),
    ));
    let mut shared = direction::Shared::new(config, mapping, codec, dead_letters);
    shared.fence = Some(fence);
    shared.sessions = sessions;
    let shared = Arc::new(shared);
    let mut tasks = Vec::new();
    for from in [Side::Legacy, Side::Platform] {
        let shared = Arc::clone(&shared);
        let stats = Arc::clone(counters.of(from));
        let shutdown = shutdown.clone();
        let health = Arc::clone(&health);
        tasks.push((
            from,
            tokio::spawn(async move {
                let outcome = supervise(&shared, from, stats, &health, &shutdown).await;
                if outcome.is_err() {
                    // One direction failing for good stops the other cleanly.
                    shutdown.cancel();
                }
                outcome
            }),
        ));
    }
    let progress = tokio::spawn(log_progress(counters.clone(), shutdown.clone()));
    let lingering = tokio::spawn(warn_while_running(
        tasks
            .iter()
            .map(|(from, task)| (*from, task.abort_handle()))
            .collect(),
        shutdown.clone(),
    ));
    let mut result = Ok(());
    for (_, task) in tasks {
        match task.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                if result.is_ok() {
                    result = Err(error);
                }
            }
            Err(join) => {
                if result.is_ok() {
                    result = Err(ApplyError::Config(format!("a direction panicked: {join}")));
                }
            }
        }
    }
    progress.abort();
    lingering.abort();
    watcher.abort();
    verifier.abort();
    result
}

/// Runs one direction, retrying transient failures with backoff, logging
/// each new failure once.
async fn supervise(
    shared: &direction::Shared,
    from: Side,
    stats: Arc<Stats>,
    health: &runtime::telemetry::Health,
    shutdown: &CancellationToken,
) -> Result<()> {
    let component = monitor::direction(from);
    let mut retries = Retries::new(shared.config.apply.max_backoff);
    loop {
        let started = Instant::now();
        let outcome = async {
            let catalogs =
                direction::check_direction(&shared.config, &shared.mapping, from).await?;
            health.ok(component);
            direction::session(shared, from, catalogs, Arc::clone(&stats), shutdown).await
        }
        .await;
        match outcome {
            Ok(_) => return Ok(()),
            Err(error) if error.is_fenced() => {
                // Another instance took the lease: nothing of this one's
                // open transaction committed. Stop and take it again.
                warn!(from = from.as_str(), "another apply instance took over the single-writer lease; this one's commit was refused and it stops writing");
                metrics::error(component, "fenced");
                stats.fenced();
                if let Some(fence) = &shared.fence {
                    fence.fenced();
                }
                return Ok(());
            }
            // Stopping anyway (shut down, or the lease was lost): an error
            // a retry could fix is the stop's consequence, not a reason
            // to end apply.
            Err(error) if error.is_retryable() && shutdown.is_cancelled() => {
                debug!(from = from.as_str(), kind = error.kind(), error = %runtime::error_chain(&error), "direction stopped");
                return Ok(());
            }
            Err(error) if error.is_retryable() => {
                let description = runtime::error_chain(&error);
                metrics::error(component, error.kind());
                health.failed(component, &description);
                if retries.failed(description.clone(), started.elapsed(), true) {
                    warn!(from = from.as_str(), kind = error.kind(), error = %description, "apply interrupted; retrying with backoff");
                }
                if !retries.pause(shutdown).await {
                    return Ok(());
                }
            }
            Err(error) => {
                metrics::error(component, error.kind());
                health.failed(component, &runtime::error_chain(&error));
                return Err(error);
            }
        }
    }
}

/// How long a direction may take to stop once asked before it is reported.
const STOP_EXPECTED_WITHIN: Duration = Duration::from_secs(30);

/// Once `shutdown` is cancelled, warns every [`STOP_EXPECTED_WITHIN`] about
/// each direction still running: it waits on something without a deadline
/// (a link that stopped answering, a lock), and apply cannot take the lease
/// again or exit until it ends.
async fn warn_while_running(
    directions: Vec<(Side, tokio::task::AbortHandle)>,
    shutdown: CancellationToken,
) {
    shutdown.cancelled().await;
    let asked = Instant::now();
    loop {
        tokio::time::sleep(STOP_EXPECTED_WITHIN).await;
        for (from, task) in &directions {
            if !task.is_finished() {
                warn!(
                    from = from.as_str(),
                    waited_secs = asked.elapsed().as_secs(),
                    "a direction has not stopped since it was asked to; it waits on a call without a deadline"
                );
            }
        }
    }
}

async fn log_progress(counters: Counters, shutdown: CancellationToken) {
    let mut every = tokio::time::interval(Duration::from_secs(10));
    every.tick().await;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = every.tick() => {}
        }
        for from in [Side::Legacy, Side::Platform] {
            let s = counters.of(from).snapshot();
            let lag_ms = if s.last_commit_micros > 0 {
                (pg::time::now_micros() - s.last_commit_micros) / 1000
            } else {
                0
            };
            info!(
                direction = %format!("{}->{}", from.as_str(), from.other().as_str()),
                transactions = s.transactions,
                applied = s.applied,
                deleted = s.deleted,
                conflicts_lost = s.skipped_older,
                orphans = s.conflict_orphans,
                natural_keys_held = s.key_held,
                echoes = s.echoes,
                dead_lettered = s.dead_lettered,
                replans = s.replans,
                snapshot_rereads = s.snapshot_rereads,
                gaps_fetched = s.gaps_fetched,
                last_commit_age_ms = lag_ms,
                "progress"
            );
        }
    }
}
