//! Watching capture from the outside: the slot as the source server sees it,
//! whether the broker answers, and the `capture status` report.
//!
//! The watcher runs beside the sessions on connections of its own, every
//! `telemetry.sample_interval`, so a stuck session cannot hide its own
//! state: it publishes the slot's retained WAL and the age of its
//! `confirmed_flush_lsn`, and reports the source and the broker to
//! [`Health`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::config::{Config, Connection};
use crate::metrics;
use crate::slot::Source;
use pg::Lsn;
use runtime::telemetry::status::{self, NoDetail, SlotReport};
use runtime::telemetry::{self, Health};

/// The `capture status` report: the common part only.
pub type StatusReport = status::StatusReport<NoDetail>;

/// Health component names of capture.
pub const STREAM: &str = "stream";
pub const SOURCE: &str = "source";
pub const BROKER: &str = "broker";

/// How long the slot's `confirmed_flush_lsn` has kept WAL waiting behind it.
///
/// Postgres records no time with the position, so the age is measured by
/// watching: it is 0 while the position is at the server's current WAL
/// position (nothing to confirm), and otherwise grows from the moment the
/// position was last seen to move (or to be caught up).
#[derive(Debug, Default)]
pub struct FlushAge {
    last: Option<(Lsn, Instant)>,
}

impl FlushAge {
    /// Records a sample and returns the age.
    pub fn observe(&mut self, confirmed: Lsn, current: Lsn, now: Instant) -> Duration {
        if confirmed >= current {
            self.last = Some((confirmed, now));
            return Duration::ZERO;
        }
        match self.last {
            Some((seen, since)) if seen == confirmed => now.saturating_duration_since(since),
            _ => {
                self.last = Some((confirmed, now));
                Duration::ZERO
            }
        }
    }
}

/// Samples the slot and the broker until `shutdown`.
pub async fn watch(config: Config, health: Arc<Health>, shutdown: CancellationToken) {
    let slot = config.slot_name();
    let topic = config.topic();
    let every = config
        .telemetry
        .sample_interval
        .max(Duration::from_millis(100));
    let probe: Option<Arc<BaseConsumer>> = runtime::kafka::client_config(&config.kafka)
        .set("log_level", "3")
        .create()
        .ok()
        .map(Arc::new);
    let mut source: Option<Source> = None;
    let mut age = FlushAge::default();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        // The source and its slot.
        if source.is_none() {
            match config.connection() {
                Ok(connection) => match Source::connect(&connection).await {
                    Ok(connected) => source = Some(connected),
                    Err(error) => health.failed(SOURCE, &runtime::error_chain(&error)),
                },
                Err(error) => health.failed(SOURCE, &runtime::error_chain(&error)),
            }
        }
        if let Some(connected) = &source {
            match sample_slot(connected, &slot).await {
                Ok(Some((state_bytes, confirmed, current))) => {
                    health.ok(SOURCE);
                    let flush_age = confirmed
                        .map(|c| age.observe(c, current, Instant::now()))
                        .unwrap_or_default();
                    metrics::slot(
                        &config.source.name,
                        &slot,
                        state_bytes as f64,
                        flush_age.as_secs_f64(),
                    );
                    health.detail(SOURCE, "retained_wal_bytes", state_bytes.into());
                    health.detail(
                        SOURCE,
                        "confirmed_flush_age_seconds",
                        flush_age.as_secs_f64().into(),
                    );
                }
                // The session creates the slot; until then the source answers.
                Ok(None) => health.ok(SOURCE),
                Err(error) => {
                    health.failed(SOURCE, &error);
                    source = None;
                }
            }
        }
        // The broker.
        if let Some(probe) = &probe {
            let probe = Arc::clone(probe);
            let name = topic.clone();
            let answered = tokio::task::spawn_blocking(move || {
                probe
                    .fetch_metadata(Some(&name), Duration::from_secs(5))
                    .map(|_| ())
                    .map_err(|e| format!("kafka: {e}"))
            })
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
            match answered {
                Ok(()) => health.ok(BROKER),
                Err(error) => {
                    debug!(%error, "broker probe failed");
                    health.failed(BROKER, &error);
                }
            }
        }
    }
}

/// Retained WAL bytes, `confirmed_flush_lsn` and the server's current WAL
/// position, or `None` when the slot does not exist.
async fn sample_slot(
    source: &Source,
    slot: &str,
) -> Result<Option<(i64, Option<Lsn>, Lsn)>, String> {
    let state = source
        .slot_state(slot)
        .await
        .map_err(|e| runtime::error_chain(&e))?;
    let Some(state) = state else {
        return Ok(None);
    };
    let current: String = source
        .client()
        .query_one("SELECT pg_catalog.pg_current_wal_lsn()::text", &[])
        .await
        .map_err(|e| format!("read the current WAL position: {e}"))?
        .get(0);
    let current = Lsn::parse(&current).unwrap_or_default();
    Ok(Some((
        state.retained_wal_bytes.unwrap_or(0),
        state.confirmed_flush_lsn,
        current,
    )))
}

/// The `capture status` report: the slot, the topic, and what the running
/// capture (at `telemetry.listen`, or `address`) says.
pub async fn status(config: &Config, address: Option<String>) -> StatusReport {
    let address = address.or_else(|| telemetry::http::local_address(&config.telemetry.listen));
    let running = status::running(address).await;
    let slot_name = config.slot_name();
    let slot = match config.connection() {
        Err(error) => SlotReport {
            source: config.source.name.clone(),
            database: "-".to_owned(),
            slot: slot_name,
            exists: false,
            active: None,
            retained_wal_bytes: None,
            confirmed_flush_lsn: None,
            error: Some(runtime::error_chain(&error)),
        },
        Ok(connection) => slot_report(&config.source.name, &connection, &slot_name).await,
    };
    StatusReport {
        service: "capture".to_owned(),
        running,
        slots: vec![slot],
        detail: NoDetail {},
    }
}

/// One slot as `pg_replication_slots` on `connection`'s database shows it
/// (TLS as configured); the report names the database without its password.
pub async fn slot_report(source: &str, connection: &Connection, slot: &str) -> SlotReport {
    let mut report = SlotReport {
        source: source.to_owned(),
        database: connection.to_string(),
        slot: slot.to_owned(),
        exists: false,
        active: None,
        retained_wal_bytes: None,
        confirmed_flush_lsn: None,
        error: None,
    };
    let connector = match connection.tls.connector() {
        Ok(connector) => connector,
        Err(error) => {
            report.error = Some(error);
            return report;
        }
    };
    let connected = tokio::time::timeout(
        Duration::from_secs(10),
        connection.pg_config().connect(connector),
    )
    .await;
    let client = match connected {
        Ok(Ok((client, connection))) => {
            tokio::spawn(connection);
            client
        }
        Ok(Err(error)) => {
            report.error = Some(format!("cannot connect: {error}"));
            return report;
        }
        Err(_) => {
            report.error = Some("cannot connect: no answer within 10s".to_owned());
            return report;
        }
    };
    let row = client
        .query_opt(
            "SELECT active, pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::int8, confirmed_flush_lsn::text \
             FROM pg_catalog.pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await;
    match row {
        Ok(Some(row)) => {
            report.exists = true;
            report.active = row.get(0);
            report.retained_wal_bytes = row.get(1);
            report.confirmed_flush_lsn = row.get(2);
        }
        Ok(None) => {}
        Err(error) => report.error = Some(format!("read the slot: {error}")),
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flush_age_is_zero_when_caught_up_and_grows_while_the_position_stands_still() {
        let start = Instant::now();
        let mut age = FlushAge::default();
        assert_eq!(age.observe(Lsn(100), Lsn(100), start), Duration::ZERO);
        // WAL moved on, the slot did not: the age counts from the last catch-up.
        let later = start + Duration::from_secs(10);
        assert_eq!(
            age.observe(Lsn(100), Lsn(200), later),
            Duration::from_secs(10)
        );
        // The slot moved but is still behind: counted from that move.
        let moved = start + Duration::from_secs(12);
        assert_eq!(age.observe(Lsn(150), Lsn(300), moved), Duration::ZERO);
        assert_eq!(
            age.observe(Lsn(150), Lsn(300), moved + Duration::from_secs(3)),
            Duration::from_secs(3)
        );
    }
}
