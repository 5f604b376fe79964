//! Apply's part of the `apply status` report: each direction's topic,
//! consumer lag and end-to-end lag, whether the two sides are in step, and
//! the result of `--verify`. The part every service shows (the running
//! service, the slots) is [`runtime::telemetry::status`]'s.

use std::fmt;

use runtime::telemetry::status::{or_dash, PartitionLag};
use serde::Serialize;

/// The `apply status` report.
pub type StatusReport = runtime::telemetry::status::StatusReport<ApplyStatus>;

/// One apply direction.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DirectionReport {
    pub direction: String,
    pub topic: String,
    /// As the running service measures it; `None` when it is unreachable.
    pub end_to_end_lag_seconds: Option<f64>,
    pub partitions: Vec<PartitionLag>,
    /// Messages not yet applied, summed over the partitions; `None` when Kafka
    /// could not be asked.
    pub consumer_lag: Option<i64>,
    /// Rows left out in the target until it has what they need (a parent's
    /// counterpart, their natural key), read again every
    /// `apply.waiting_retry_interval`; `None` when it could not be read.
    pub waiting_rows: Option<i64>,
    pub error: Option<String>,
}

/// What `apply status` adds to the common report.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ApplyStatus {
    pub directions: Vec<DirectionReport>,
    /// Whether the sides are in step (no consumer lag, nothing pending);
    /// `None` when unknown.
    pub in_step: Option<bool>,
    /// The result of `--verify` (the `apply check` comparison), if run.
    pub verified: Option<bool>,
    pub verify_report: Option<String>,
}

impl fmt::Display for ApplyStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for direction in &self.directions {
            let lag = direction
                .end_to_end_lag_seconds
                .map(|s| format!("{s:.1}s"))
                .unwrap_or_else(|| "unknown".to_owned());
            writeln!(
                f,
                "  {}: end-to-end lag {lag}, consumer lag {}, rows waiting {}",
                direction.direction,
                or_dash(&direction.consumer_lag),
                or_dash(&direction.waiting_rows)
            )?;
            for partition in &direction.partitions {
                writeln!(
                    f,
                    "    {}[{}]: committed {} of {} (lag {})",
                    partition.topic,
                    partition.partition,
                    or_dash(&partition.committed),
                    partition.high_watermark,
                    partition.lag
                )?;
            }
            if let Some(error) = &direction.error {
                writeln!(f, "    {error}")?;
            }
        }
        if let Some(in_step) = self.in_step {
            writeln!(f, "  in step:     {}", if in_step { "yes" } else { "no" })?;
        }
        if let Some(verified) = self.verified {
            writeln!(
                f,
                "  verified:    {}",
                if verified {
                    "the databases correspond"
                } else {
                    "DIFFERENCES"
                }
            )?;
            if let Some(report) = &self.verify_report {
                for line in report.lines() {
                    writeln!(f, "    {line}")?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use runtime::telemetry::status::{RunningReport, SlotReport};

    #[test]
    fn a_report_for_a_person_names_lags_slots_and_an_unreachable_service() {
        let report = StatusReport {
            service: "apply".into(),
            running: RunningReport {
                address: Some("127.0.0.1:9090".into()),
                reachable: false,
                state: None,
                last_error: None,
                status: None,
            },
            slots: vec![SlotReport {
                source: "legacy".into(),
                database: "capture@db:5432/legacy".into(),
                slot: "syncbridge_legacy".into(),
                exists: true,
                active: Some(true),
                retained_wal_bytes: Some(2048),
                confirmed_flush_lsn: Some("0/16B3748".into()),
                error: None,
            }],
            detail: ApplyStatus {
                directions: vec![DirectionReport {
                    direction: "legacy_to_platform".into(),
                    topic: "syncbridge.legacy.changes".into(),
                    end_to_end_lag_seconds: None,
                    partitions: vec![PartitionLag {
                        topic: "syncbridge.legacy.changes".into(),
                        partition: 0,
                        high_watermark: 10,
                        committed: Some(7),
                        lag: 3,
                    }],
                    consumer_lag: Some(3),
                    waiting_rows: Some(2),
                    error: None,
                }],
                in_step: Some(false),
                verified: None,
                verify_report: None,
            },
        };
        let text = report.to_string();
        assert!(text.contains("unreachable at 127.0.0.1:9090"), "{text}");
        assert!(text.contains("last error:  unreachable"), "{text}");
        assert!(text.contains("slot syncbridge_legacy (legacy, capture@db:5432/legacy): active, retained WAL 2048 bytes, confirmed_flush_lsn 0/16B3748"), "{text}");
        assert!(
            text.contains(
                "legacy_to_platform: end-to-end lag unknown, consumer lag 3, rows waiting 2"
            ),
            "{text}"
        );
        assert!(
            text.contains("syncbridge.legacy.changes[0]: committed 7 of 10 (lag 3)"),
            "{text}"
        );
        assert!(text.contains("in step:     no"), "{text}");
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["directions"][0]["partitions"][0]["lag"], 3);
        assert_eq!(json["directions"][0]["waiting_rows"], 2);
    }
}
