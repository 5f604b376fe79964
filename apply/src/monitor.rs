//! Watching apply from the outside: the consumer lag of each direction, its
//! end-to-end lag, the counters of [`Stats`] as metrics, the databases and
//! the broker as [`Health`] components, and the `apply status` report.
//!
//! The watcher runs beside the directions on clients of its own. The
//! directions themselves only mark their commits ([`batch_committed`]), so
//! their hot path stays as it was.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use runtime::telemetry::health::Progress;
use runtime::telemetry::metrics::label;
use runtime::telemetry::status::{self, end_to_end_lag, PartitionLag, SlotReport};
use runtime::telemetry::Health;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::mapping::{Mapping, Side};
use crate::metrics as names;
use crate::stats::{Counters, Stats};
use crate::status::{ApplyStatus, DirectionReport, StatusReport};

/// Health component names of apply besides the directions.
pub const BROKER: &str = "broker";

/// The `direction` label and health component of the direction reading `from`.
pub fn direction(from: Side) -> &'static str {
    match from {
        Side::Legacy => "legacy_to_platform",
        Side::Platform => "platform_to_legacy",
    }
}

/// The health component of `side`'s database.
pub fn database(side: Side) -> &'static str {
    match side {
        Side::Legacy => "legacy_db",
        Side::Platform => "platform_db",
    }
}

/// Records one committed target transaction: its size, how long the commit
/// took, and for each source transaction in it, the time from its source
/// commit to now. Called at the batch-commit point of a direction.
pub fn batch_committed(
    from: Side,
    stats: &Stats,
    writer_stats: &Stats,
    events: usize,
    commit: Duration,
    source_commits_micros: &[i64],
) {
    let label = direction(from);
    stats.absorb(writer_stats);
    metrics::histogram!(names::APPLY_BATCH_SIZE, label::DIRECTION => label).record(events as f64);
    metrics::histogram!(names::APPLY_BATCH_COMMIT, label::DIRECTION => label)
        .record(commit.as_secs_f64());
    if source_commits_micros.is_empty() {
        return;
    }
    let latency = metrics::histogram!(names::APPLY_COMMIT_LATENCY, label::DIRECTION => label);
    let now = pg::time::now_micros();
    for commit_micros in source_commits_micros {
        latency.record(((now - commit_micros).max(0) as f64) / 1_000_000.0);
    }
}

/// One direction as the watcher follows it.
struct Watched {
    from: Side,
    topic: String,
    stats: Arc<Stats>,
    progress: Arc<Progress>,
    behind_since_micros: Option<i64>,
    last_committed_at: i64,
}

/// Registers what apply's readiness depends on (both directions, both
/// databases, the broker), so that none of it counts as ready before it
/// reported. Call before anything can report.
pub fn register(health: &Health) {
    for from in [Side::Legacy, Side::Platform] {
        health.component(direction(from));
        health.component(database(from));
    }
    health.component(BROKER);
}

/// Samples lags, counters, databases and the broker until `shutdown`.
pub async fn watch(
    config: Config,
    topics: [(Side, String); 2],
    counters: Counters,
    health: Arc<Health>,
    shutdown: CancellationToken,
) {
    let mut watched: Vec<Watched> = topics
        .into_iter()
        .map(|(from, topic)| Watched {
            from,
            topic,
            stats: Arc::clone(counters.of(from)),
            progress: health.component(direction(from)),
            behind_since_micros: None,
            last_committed_at: 0,
        })
        .collect();
    health.component(BROKER);
    health.component(database(Side::Legacy));
    health.component(database(Side::Platform));
    let kafka = config.kafka.as_client();
    let mut clients: HashMap<Side, Client> = HashMap::new();
    let mut counters_tick = tokio::time::interval(Duration::from_secs(1));
    let mut sample_tick = tokio::time::interval(
        config
            .telemetry
            .sample_interval
            .max(Duration::from_millis(100)),
    );
    counters_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    sample_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = counters_tick.tick() => {
                for w in &watched {
                    publish_counters(w.from, &w.stats);
                }
            }
            _ = sample_tick.tick() => {
                for side in [Side::Legacy, Side::Platform] {
                    check_database(&config, side, &mut clients, &health).await;
                }
                let mut broker_error = None;
                // A client per sample, on purpose: a kept client went on
                // answering (from what it had cached) while the broker was
                // down, and readiness never turned.
                for w in &mut watched {
                    let lags = status::partition_lags(
                        kafka,
                        &config.kafka.group_id,
                        &w.topic,
                        Duration::from_secs(5),
                    )
                    .await;
                    match lags {
                        Ok(lags) => observe(w, &lags, &health),
                        Err(error) => broker_error = Some(error),
                    }
                }
                match broker_error {
                    None => health.ok(BROKER),
                    Some(error) => health.failed(BROKER, &error),
                }
            }
        }
    }
}

/// Publishes a direction's counters (cumulative since the process started).
fn publish_counters(from: Side, stats: &Stats) {
    let label = direction(from);
    let s = stats.snapshot();
    for (name, value) in [
        (names::APPLY_EVENTS_APPLIED, s.applied + s.deleted),
        (names::APPLY_EVENTS_SKIPPED_OLDER, s.skipped_older),
        (names::APPLY_ECHOES_SUPPRESSED, s.echoes),
        (names::APPLY_DEAD_LETTERED, s.dead_lettered),
    ] {
        metrics::counter!(name, label::DIRECTION => label).absolute(value);
    }
}

/// Takes one lag sample of a direction: gauges, `/status` figures, progress.
fn observe(w: &mut Watched, lags: &[PartitionLag], health: &Health) {
    let label = direction(w.from);
    let now = pg::time::now_micros();
    let total: i64 = lags.iter().map(|l| l.lag).sum();
    for lag in lags {
        metrics::gauge!(
            names::APPLY_CONSUMER_LAG,
            label::DIRECTION => label,
            label::TOPIC => lag.topic.clone(),
            label::PARTITION => lag.partition.to_string()
        )
        .set(lag.lag as f64);
    }
    let behind_since = if total > 0 {
        *w.behind_since_micros.get_or_insert(now)
    } else {
        w.behind_since_micros = None;
        now
    };
    let snapshot = w.stats.snapshot();
    let lag_seconds = end_to_end_lag(total, snapshot.last_commit_micros, behind_since, now);
    metrics::gauge!(names::APPLY_END_TO_END_LAG, label::DIRECTION => label).set(lag_seconds);
    health.detail(label, "end_to_end_lag_seconds", lag_seconds.into());
    health.detail(label, "consumer_lag", total.into());
    // Progress: a commit since the last sample, or nothing left to do.
    if snapshot.committed_at_micros != w.last_committed_at || total == 0 {
        w.last_committed_at = snapshot.committed_at_micros;
        w.progress.advanced(total > 0);
    } else {
        w.progress.set_pending(true);
    }
}

async fn check_database(
    config: &Config,
    side: Side,
    clients: &mut HashMap<Side, Client>,
    health: &Health,
) {
    let name = database(side);
    let client = match clients.entry(side) {
        Entry::Occupied(entry) => entry.into_mut(),
        Entry::Vacant(entry) => match connect(config, side).await {
            Ok(client) => entry.insert(client),
            Err(error) => {
                health.failed(name, &error);
                return;
            }
        },
    };
    let answered = tokio::time::timeout(Duration::from_secs(5), client.simple_query("SELECT 1"))
        .await
        .map_err(|_| "no answer within 5s".to_owned())
        .and_then(|r| r.map(|_| ()).map_err(|e| e.to_string()));
    match answered {
        Ok(()) => health.ok(name),
        Err(error) => {
            health.failed(name, &error);
            clients.remove(&side);
        }
    }
}

async fn connect(config: &Config, side: Side) -> Result<Client, String> {
    tokio::time::timeout(Duration::from_secs(10), config.connect(side))
        .await
        .map_err(|_| "cannot connect: no answer within 10s".to_owned())?
        .map_err(|e| format!("cannot connect: {}", runtime::error_chain(&e)))
}

/// `user@host:port/dbname` of `side`'s database, never a password.
fn display_database(config: &Config, side: Side) -> String {
    let Ok(pg) = config.pg_config(side) else {
        return "-".to_owned();
    };
    let host = match pg.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
        Some(tokio_postgres::config::Host::Unix(path)) => path.display().to_string(),
        None => "localhost".to_owned(),
    };
    format!(
        "{}@{}:{}/{}",
        pg.get_user().unwrap_or("-"),
        host,
        pg.get_ports().first().copied().unwrap_or(5432),
        pg.get_dbname().unwrap_or("-")
    )
}

/// How many rows wait in `target`'s database until it has what they need
/// (see `apply::writer`'s `waiting`); `None` when it cannot be read (not
/// reachable, or apply never ran there).
async fn waiting_rows(config: &Config, target: Side) -> Option<i64> {
    let client = connect(config, target).await.ok()?;
    let row = client
        .query_one("SELECT count(*) FROM syncbridge.waiting_rows", &[])
        .await
        .ok()?;
    Some(row.get(0))
}

/// The `apply status` report. `address` overrides `telemetry.listen`;
/// `verify` also compares the two databases (as `apply check`).
pub async fn status(config: &Config, address: Option<String>, verify: bool) -> StatusReport {
    let address =
        address.or_else(|| runtime::telemetry::http::local_address(&config.telemetry.listen));
    let running = status::running(address).await;
    let mapping = Mapping::load_dir(&config.apply.mapping_dir).ok();
    let kafka = config.kafka.as_client();
    let mut slots = Vec::new();
    let mut directions = Vec::new();
    let mut in_step = true;
    for from in [Side::Legacy, Side::Platform] {
        slots.extend(source_slots(config, from).await);
        let label = direction(from);
        let source = mapping
            .as_ref()
            .map(|m| m.side(from).source.clone())
            .unwrap_or_else(|| from.as_str().to_owned());
        let topic = config.topic(from, &source);
        let mut report = DirectionReport {
            direction: label.to_owned(),
            topic: topic.clone(),
            end_to_end_lag_seconds: running
                .status
                .as_ref()
                .and_then(|s| s["components"][label]["end_to_end_lag_seconds"].as_f64()),
            partitions: Vec::new(),
            consumer_lag: None,
            waiting_rows: waiting_rows(config, from.other()).await,
            error: None,
        };
        in_step &= report.waiting_rows.unwrap_or(0) == 0;
        match status::partition_lags(
            kafka,
            &config.kafka.group_id,
            &topic,
            Duration::from_secs(10),
        )
        .await
        {
            Ok(lags) => {
                let total = lags.iter().map(|l| l.lag).sum::<i64>();
                in_step &= total == 0;
                report.consumer_lag = Some(total);
                report.partitions = lags;
            }
            Err(error) => {
                in_step = false;
                report.error = Some(error);
            }
        }
        if let Some(pending) = running
            .status
            .as_ref()
            .and_then(|s| s["components"][label]["pending"].as_bool())
        {
            in_step &= !pending;
        }
        directions.push(report);
    }
    let (verified, verify_report) = if verify {
        match crate::verify::check(config).await {
            Ok(report) => (Some(report.corresponds()), Some(report.to_string())),
            Err(error) => (Some(false), Some(runtime::error_chain(&error))),
        }
    } else {
        (None, None)
    };
    StatusReport {
        service: "apply".to_owned(),
        running,
        slots,
        detail: ApplyStatus {
            directions,
            in_step: Some(in_step && verified != Some(false)),
            verified,
            verify_report,
        },
    }
}

/// The logical replication slots of `side`'s database (capture's slots).
async fn source_slots(config: &Config, side: Side) -> Vec<SlotReport> {
    let database = display_database(config, side);
    let failed = |error: String| SlotReport {
        source: side.as_str().to_owned(),
        database: database.clone(),
        slot: "-".to_owned(),
        exists: false,
        active: None,
        retained_wal_bytes: None,
        confirmed_flush_lsn: None,
        error: Some(error),
    };
    let client = match connect(config, side).await {
        Ok(client) => client,
        Err(error) => return vec![failed(error)],
    };
    let rows = client
        .query(
            "SELECT slot_name::text, active, pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::int8, confirmed_flush_lsn::text \
             FROM pg_catalog.pg_replication_slots \
             WHERE slot_type = 'logical' AND database = current_database() ORDER BY slot_name",
            &[],
        )
        .await;
    match rows {
        Err(error) => vec![failed(format!("read the slots: {error}"))],
        Ok(rows) => rows
            .iter()
            .map(|row| SlotReport {
                source: side.as_str().to_owned(),
                database: database.clone(),
                slot: row.get(0),
                exists: true,
                active: row.get(1),
                retained_wal_bytes: row.get(2),
                confirmed_flush_lsn: row.get(3),
                error: None,
            })
            .collect(),
    }
}
