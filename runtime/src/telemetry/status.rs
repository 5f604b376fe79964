//! What the `status` subcommands (`capture status`, `apply status`) share:
//! what the running service says about itself, the replication slots, the
//! consumer lag of a partition and the end-to-end lag arithmetic. Each
//! service adds its own part as the report's `detail`. Printed for a person,
//! or as JSON with `--json`. URLs are shown redacted; nothing here carries a
//! secret.

use std::fmt;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;

use crate::config::KafkaConfig;

/// One replication slot as `pg_replication_slots` shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SlotReport {
    pub source: String,
    /// `user@host:port/dbname`, never a password.
    pub database: String,
    pub slot: String,
    pub exists: bool,
    pub active: Option<bool>,
    pub retained_wal_bytes: Option<i64>,
    pub confirmed_flush_lsn: Option<String>,
    /// Why the slot could not be read, if it could not.
    pub error: Option<String>,
}

/// The lag of one partition for one consumer group.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PartitionLag {
    pub topic: String,
    pub partition: i32,
    pub high_watermark: i64,
    /// The group's committed offset (the next message to read), if any.
    pub committed: Option<i64>,
    pub lag: i64,
}

/// What the running service says about itself through `/status`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RunningReport {
    /// Where it was asked (`host:port`), `None` when the endpoints are off.
    pub address: Option<String>,
    pub reachable: bool,
    pub state: Option<String>,
    pub last_error: Option<String>,
    /// The service's own `/status` document, when reachable.
    pub status: Option<serde_json::Value>,
}

/// The whole report: what every service shows (the running service, the
/// replication slots it depends on), then the service's own `detail`
/// (flattened into the same JSON object, printed after the slots).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StatusReport<D> {
    pub service: String,
    pub running: RunningReport,
    pub slots: Vec<SlotReport>,
    #[serde(flatten)]
    pub detail: D,
}

impl<D: Serialize + fmt::Display> StatusReport<D> {
    /// The report on stdout: for a person, or as pretty JSON.
    pub fn print(&self, json: bool) -> serde_json::Result<()> {
        if json {
            println!("{}", serde_json::to_string_pretty(self)?);
        } else {
            print!("{self}");
        }
        Ok(())
    }
}

/// What the `status` subcommand of either service takes.
#[derive(Debug, Clone, clap::Args)]
pub struct StatusArgs {
    /// Print JSON rather than text.
    #[arg(long)]
    pub json: bool,
    /// The running service's telemetry address (`host:port`); default
    /// from `telemetry.listen`.
    #[arg(long)]
    pub address: Option<String>,
}

/// A report with nothing of the service's own.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct NoDetail {}

impl fmt::Display for NoDetail {
    fn fmt(&self, _f: &mut fmt::Formatter<'_>) -> fmt::Result {
        Ok(())
    }
}

/// Messages between the group's committed offset and the high watermark.
/// Without a committed offset, everything from the low watermark is lag.
pub fn consumer_lag(low_watermark: i64, high_watermark: i64, committed: Option<i64>) -> i64 {
    let from = committed.unwrap_or(low_watermark).max(low_watermark);
    (high_watermark - from).max(0)
}

/// End-to-end lag in seconds: 0 when nothing is left to read; otherwise now
/// minus the source commit time of the last change applied, but never more
/// than the time since the backlog was first seen (`behind_since_micros`):
/// after a quiet hour, the first new change is not an hour late.
pub fn end_to_end_lag(
    consumer_lag: i64,
    last_applied_commit_micros: i64,
    behind_since_micros: i64,
    now_micros: i64,
) -> f64 {
    if consumer_lag <= 0 {
        return 0.0;
    }
    let since = last_applied_commit_micros.max(behind_since_micros);
    ((now_micros - since).max(0) as f64) / 1_000_000.0
}

/// The lag of `group` on every partition of `topic`, asked of the brokers
/// (blocking calls, run off the async threads).
pub async fn partition_lags(
    kafka: &KafkaConfig,
    group: &str,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<PartitionLag>, String> {
    let mut client = crate::kafka::client_config(kafka);
    client
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("log_level", "3");
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = client.create().map_err(|e| e.to_string())?;
        let metadata = consumer
            .fetch_metadata(Some(&topic), timeout)
            .map_err(|e| format!("kafka metadata: {e}"))?;
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .filter(|t| t.name() == topic)
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        if partitions.is_empty() {
            return Err(format!("topic {topic} does not exist"));
        }
        let mut list = TopicPartitionList::new();
        for partition in &partitions {
            list.add_partition(&topic, *partition);
        }
        let committed = consumer
            .committed_offsets(list, timeout)
            .map_err(|e| format!("kafka committed offsets: {e}"))?;
        let mut lags = Vec::new();
        for partition in partitions {
            let (low, high) = consumer
                .fetch_watermarks(&topic, partition, timeout)
                .map_err(|e| format!("kafka watermarks: {e}"))?;
            let committed =
                committed
                    .find_partition(&topic, partition)
                    .and_then(|e| match e.offset() {
                        Offset::Offset(offset) => Some(offset),
                        _ => None,
                    });
            lags.push(PartitionLag {
                topic: topic.clone(),
                partition,
                high_watermark: high,
                committed,
                lag: consumer_lag(low, high, committed),
            });
        }
        Ok(lags)
    })
    .await
    .map_err(|e| format!("kafka lag task: {e}"))?
}

/// Asks the running service at `address` (if any) for its `/status`.
pub async fn running(address: Option<String>) -> RunningReport {
    let Some(address) = address else {
        return RunningReport {
            address: None,
            reachable: false,
            state: None,
            last_error: None,
            status: None,
        };
    };
    match super::http::fetch_status(&address).await {
        Ok(status) => RunningReport {
            reachable: true,
            state: status
                .get("state")
                .and_then(|s| s.as_str())
                .map(str::to_owned),
            last_error: status
                .get("last_error")
                .and_then(|s| s.as_str())
                .map(str::to_owned),
            status: Some(status),
            address: Some(address),
        },
        Err(_) => RunningReport {
            address: Some(address),
            reachable: false,
            state: None,
            last_error: None,
            status: None,
        },
    }
}

pub fn or_dash<T: fmt::Display>(value: &Option<T>) -> String {
    value
        .as_ref()
        .map(|v| v.to_string())
        .unwrap_or_else(|| "-".to_owned())
}

impl<D: fmt::Display> fmt::Display for StatusReport<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} status", self.service)?;
        let running = &self.running;
        match (&running.address, running.reachable) {
            (None, _) => writeln!(f, "  service:     endpoints off (telemetry.listen)")?,
            (Some(address), false) => writeln!(f, "  service:     unreachable at {address}")?,
            (Some(address), true) => {
                writeln!(f, "  service:     {} at {address}", or_dash(&running.state))?
            }
        }
        let last_error = if running.reachable {
            running
                .last_error
                .clone()
                .unwrap_or_else(|| "none".to_owned())
        } else {
            "unreachable".to_owned()
        };
        writeln!(f, "  last error:  {last_error}")?;
        for slot in &self.slots {
            if let Some(error) = &slot.error {
                writeln!(
                    f,
                    "  slot {} ({}, {}): {error}",
                    slot.slot, slot.source, slot.database
                )?;
                continue;
            }
            if !slot.exists {
                writeln!(
                    f,
                    "  slot {} ({}, {}): does not exist",
                    slot.slot, slot.source, slot.database
                )?;
                continue;
            }
            writeln!(
                f,
                "  slot {} ({}, {}): {}, retained WAL {} bytes, confirmed_flush_lsn {}",
                slot.slot,
                slot.source,
                slot.database,
                match slot.active {
                    Some(true) => "active",
                    Some(false) => "inactive",
                    None => "state unknown",
                },
                or_dash(&slot.retained_wal_bytes),
                or_dash(&slot.confirmed_flush_lsn),
            )?;
        }
        write!(f, "{}", self.detail)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn consumer_lag_counts_from_the_committed_offset() {
        assert_eq!(consumer_lag(0, 100, Some(100)), 0);
        assert_eq!(consumer_lag(0, 100, Some(60)), 40);
        assert_eq!(consumer_lag(10, 100, None), 90, "nothing committed");
        assert_eq!(consumer_lag(50, 100, Some(20)), 50, "retention passed it");
        assert_eq!(consumer_lag(0, 100, Some(120)), 0);
    }

    #[test]
    fn end_to_end_lag_is_zero_when_caught_up_and_grows_otherwise() {
        let now = 100_000_000;
        assert_eq!(end_to_end_lag(0, 1_000_000, 0, now), 0.0);
        assert_eq!(end_to_end_lag(5, 98_000_000, 90_000_000, now), 2.0);
        assert_eq!(
            end_to_end_lag(5, 0, 90_000_000, now),
            10.0,
            "nothing applied yet: since the backlog appeared"
        );
        assert_eq!(
            end_to_end_lag(1, 10_000_000, 99_000_000, now),
            1.0,
            "a change after a quiet time is as late as the backlog is old"
        );
    }
}
