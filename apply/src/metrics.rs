//! Apply's metric names (a contract with the dashboards and monitors under
//! `deploy/datadog`: change them only together) and their descriptions.
//! What is recorded when is `monitor`'s.

use runtime::telemetry::metrics::{label, Kind, Metric, Unit, SECONDS_BUCKETS, SIZE_BUCKETS};

/// Now minus the source commit time of the last change applied; 0 when the
/// direction has nothing left to read.
pub const APPLY_END_TO_END_LAG: &str = "syncbridge_apply_end_to_end_lag_seconds";
/// Source commit to target commit, per source transaction.
pub const APPLY_COMMIT_LATENCY: &str = "syncbridge_apply_commit_latency_seconds";
/// Kafka high watermark minus the committed group offset.
pub const APPLY_CONSUMER_LAG: &str = "syncbridge_apply_consumer_lag_messages";
pub const APPLY_EVENTS_APPLIED: &str = "syncbridge_apply_events_applied_total";
/// Changes not written because the target row was newer (conflicts lost).
pub const APPLY_EVENTS_SKIPPED_OLDER: &str = "syncbridge_apply_events_skipped_older_total";
pub const APPLY_ECHOES_SUPPRESSED: &str = "syncbridge_apply_echoes_suppressed_total";
pub const APPLY_DEAD_LETTERED: &str = "syncbridge_apply_dead_lettered_total";
/// Source events per target transaction.
pub const APPLY_BATCH_SIZE: &str = "syncbridge_apply_batch_size";
/// Time to store the position and commit one target transaction.
pub const APPLY_BATCH_COMMIT: &str = "syncbridge_apply_batch_commit_seconds";
/// Apply sessions interrupted, by error kind.
pub const APPLY_ERRORS: &str = "syncbridge_apply_errors_total";

/// Rows read by verification passes, per entity.
pub const VERIFY_ROWS_COMPARED: &str = "syncbridge_verify_rows_compared_total";
/// Rows the last complete verification pass found different, per entity.
pub const VERIFY_ROWS_DIFFERENT: &str = "syncbridge_verify_rows_different";
/// Time since the oldest entity's last complete verification pass.
pub const VERIFY_LAST_PASS_AGE: &str = "syncbridge_verify_last_pass_age_seconds";
/// Scheduled verification passes interrupted by an error.
pub const VERIFY_ERRORS: &str = "syncbridge_verify_errors_total";

/// Every metric apply exports but the common ones, described.
pub const CATALOG: &[Metric] = &[
    Metric {
        name: APPLY_END_TO_END_LAG,
        kind: Kind::Gauge,
        unit: Some(Unit::Seconds),
        help: "Now minus the source commit time of the last change applied; 0 when caught up.",
    },
    Metric {
        name: APPLY_COMMIT_LATENCY,
        kind: Kind::Histogram(SECONDS_BUCKETS),
        unit: Some(Unit::Seconds),
        help: "Source commit to target commit, per source transaction.",
    },
    Metric {
        name: APPLY_CONSUMER_LAG,
        kind: Kind::Gauge,
        unit: None,
        help: "Kafka high watermark minus the committed group offset.",
    },
    Metric {
        name: APPLY_EVENTS_APPLIED,
        kind: Kind::Counter,
        unit: None,
        help: "Rows inserted or updated.",
    },
    Metric {
        name: APPLY_EVENTS_SKIPPED_OLDER,
        kind: Kind::Counter,
        unit: None,
        help: "Changes not written because the target row was newer.",
    },
    Metric {
        name: APPLY_ECHOES_SUPPRESSED,
        kind: Kind::Counter,
        unit: None,
        help: "Changes read back from apply's own transactions and not applied again.",
    },
    Metric {
        name: APPLY_DEAD_LETTERED,
        kind: Kind::Counter,
        unit: None,
        help: "Changes sent to the dead-letter topic.",
    },
    Metric {
        name: APPLY_BATCH_SIZE,
        kind: Kind::Histogram(SIZE_BUCKETS),
        unit: None,
        help: "Source events per target transaction.",
    },
    Metric {
        name: APPLY_BATCH_COMMIT,
        kind: Kind::Histogram(SECONDS_BUCKETS),
        unit: Some(Unit::Seconds),
        help: "Time to store the position and commit one target transaction.",
    },
    Metric {
        name: APPLY_ERRORS,
        kind: Kind::Counter,
        unit: None,
        help: "Apply sessions interrupted, by error kind.",
    },
    Metric {
        name: VERIFY_ROWS_COMPARED,
        kind: Kind::Counter,
        unit: None,
        help: "Rows read by verification passes, per entity.",
    },
    Metric {
        name: VERIFY_ROWS_DIFFERENT,
        kind: Kind::Gauge,
        unit: None,
        help: "Rows the last complete verification pass found different, per entity.",
    },
    Metric {
        name: VERIFY_LAST_PASS_AGE,
        kind: Kind::Gauge,
        unit: Some(Unit::Seconds),
        help: "Time since the oldest entity's last complete verification pass.",
    },
    Metric {
        name: VERIFY_ERRORS,
        kind: Kind::Counter,
        unit: None,
        help: "Scheduled verification passes interrupted by an error.",
    },
];

/// An apply direction was interrupted by an error of `kind`.
pub fn error(direction: &'static str, kind: &'static str) {
    metrics::counter!(APPLY_ERRORS, label::DIRECTION => direction, label::KIND => kind)
        .increment(1);
}
