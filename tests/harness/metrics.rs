//! The metric names the services export, as one list: the common ones, then
//! capture's and apply's catalogs. The tests compare what a process serves,
//! and what the Datadog assets use, against it.

pub use apply::metrics::{
    APPLY_BATCH_COMMIT, APPLY_BATCH_SIZE, APPLY_COMMIT_LATENCY, APPLY_CONSUMER_LAG,
    APPLY_DEAD_LETTERED, APPLY_ECHOES_SUPPRESSED, APPLY_END_TO_END_LAG, APPLY_ERRORS,
    APPLY_EVENTS_APPLIED, APPLY_EVENTS_SKIPPED_OLDER, VERIFY_ERRORS, VERIFY_LAST_PASS_AGE,
    VERIFY_ROWS_COMPARED, VERIFY_ROWS_DIFFERENT,
};
pub use capture::metrics::{
    CAPTURE_CONFIRMED_FLUSH_AGE, CAPTURE_ERRORS, CAPTURE_EVENTS, CAPTURE_POLLING_WATERMARK_AGE,
    CAPTURE_SLOT_LOST, CAPTURE_SLOT_RETAINED_WAL,
};
pub use runtime::telemetry::metrics::READY;

/// Every metric name either service exports.
pub fn all() -> Vec<&'static str> {
    runtime::telemetry::metrics::COMMON
        .iter()
        .chain(capture::metrics::CATALOG)
        .chain(apply::metrics::CATALOG)
        .map(|metric| metric.name)
        .collect()
}
