//! The metric names and labels of both services, in one place, and the
//! recorders behind the `metrics` facade.
//!
//! The names are a contract with the dashboards and monitors (Datadog, Prometheus): change
//! them only together. Prometheus scrapes them as written; DogStatsD
//! receives the same names with the labels as tags.
//!
//! One process has one recorder: a Prometheus registry rendered by
//! `/metrics`, fanned out to a DogStatsD exporter when `telemetry.dogstatsd`
//! is set. Without a recorder (telemetry off, or in-process tests) every
//! call here is a no-op.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
use metrics_exporter_dogstatsd::DogStatsDBuilder;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use metrics_util::layers::FanoutBuilder;

/// Change events produced, by source and capture mode.
pub const CAPTURE_EVENTS: &str = "syncbridge_capture_events_total";
/// WAL bytes the server keeps for the slot (`pg_current_wal_lsn() - restart_lsn`).
pub const CAPTURE_SLOT_RETAINED_WAL: &str = "syncbridge_capture_slot_retained_wal_bytes";
/// Seconds since the slot's `confirmed_flush_lsn` last advanced while WAL
/// was waiting behind it; 0 when it is caught up.
pub const CAPTURE_CONFIRMED_FLUSH_AGE: &str = "syncbridge_capture_confirmed_flush_age_seconds";
/// Seconds behind of the polling fallback's watermark, per table.
pub const CAPTURE_POLLING_WATERMARK_AGE: &str = "syncbridge_capture_polling_watermark_age_seconds";
/// Capture sessions interrupted, by error kind.
pub const CAPTURE_ERRORS: &str = "syncbridge_capture_errors_total";

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
/// 1 when the service answers `/readyz` with 200.
pub const READY: &str = "syncbridge_ready";

/// Label names.
pub mod label {
    pub const SOURCE: &str = "source";
    pub const MODE: &str = "mode";
    pub const SLOT: &str = "slot";
    pub const TABLE: &str = "table";
    pub const KIND: &str = "kind";
    pub const DIRECTION: &str = "direction";
    pub const TOPIC: &str = "topic";
    pub const PARTITION: &str = "partition";
    pub const SERVICE: &str = "service";
}

/// Every metric name, for documentation and tests.
pub const ALL: &[&str] = &[
    CAPTURE_EVENTS,
    CAPTURE_SLOT_RETAINED_WAL,
    CAPTURE_CONFIRMED_FLUSH_AGE,
    CAPTURE_POLLING_WATERMARK_AGE,
    CAPTURE_ERRORS,
    APPLY_END_TO_END_LAG,
    APPLY_COMMIT_LATENCY,
    APPLY_CONSUMER_LAG,
    APPLY_EVENTS_APPLIED,
    APPLY_EVENTS_SKIPPED_OLDER,
    APPLY_ECHOES_SUPPRESSED,
    APPLY_DEAD_LETTERED,
    APPLY_BATCH_SIZE,
    APPLY_BATCH_COMMIT,
    APPLY_ERRORS,
    READY,
];

/// Upper bounds of the latency histograms' buckets, in seconds.
const SECONDS_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];
/// Upper bounds of the batch size histogram's buckets.
const SIZE_BUCKETS: &[f64] = &[1.0, 10.0, 100.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0];

/// The process's Prometheus registry, once installed.
static PROMETHEUS: OnceLock<PrometheusHandle> = OnceLock::new();

/// Why the recorder could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum RecorderError {
    #[error("telemetry.dogstatsd {address:?}: {reason}")]
    DogStatsD { address: String, reason: String },
    #[error("prometheus buckets: {0}")]
    Buckets(String),
}

/// Installs the process-wide recorder (Prometheus, plus DogStatsD to
/// `dogstatsd` when given) and describes every metric. The first call wins;
/// later calls return the handle installed first.
pub fn install(dogstatsd: Option<&str>) -> Result<PrometheusHandle, RecorderError> {
    if let Some(handle) = PROMETHEUS.get() {
        return Ok(handle.clone());
    }
    let mut builder = PrometheusBuilder::new();
    for name in [APPLY_COMMIT_LATENCY, APPLY_BATCH_COMMIT] {
        builder = builder
            .set_buckets_for_metric(Matcher::Full(name.to_owned()), SECONDS_BUCKETS)
            .map_err(|e| RecorderError::Buckets(e.to_string()))?;
    }
    builder = builder
        .set_buckets_for_metric(Matcher::Full(APPLY_BATCH_SIZE.to_owned()), SIZE_BUCKETS)
        .map_err(|e| RecorderError::Buckets(e.to_string()))?;
    let prometheus = builder.build_recorder();
    let handle = prometheus.handle();
    let installed = match dogstatsd {
        Some(address) => {
            let dogstatsd = DogStatsDBuilder::default()
                .with_remote_address(address)
                .map_err(|e| RecorderError::DogStatsD {
                    address: address.to_owned(),
                    reason: e.to_string(),
                })?
                .with_telemetry(false)
                .with_flush_interval(Duration::from_secs(1))
                .build()
                .map_err(|e| RecorderError::DogStatsD {
                    address: address.to_owned(),
                    reason: e.to_string(),
                })?;
            let fanout = FanoutBuilder::default()
                .add_recorder(prometheus)
                .add_recorder(dogstatsd)
                .build();
            metrics::set_global_recorder(fanout).is_ok()
        }
        None => metrics::set_global_recorder(prometheus).is_ok(),
    };
    if !installed {
        // Another recorder (a test's) was installed first: render nothing of ours.
        tracing::debug!("a metrics recorder was already installed");
    }
    describe();
    let handle = PROMETHEUS.get_or_init(|| handle).clone();
    Ok(handle)
}

/// Renders the registry in the Prometheus text format (empty without a recorder).
pub fn render() -> String {
    PROMETHEUS.get().map(|h| h.render()).unwrap_or_default()
}

/// Runs the registry's periodic housekeeping (histogram windows).
pub fn upkeep() {
    if let Some(handle) = PROMETHEUS.get() {
        handle.run_upkeep();
    }
}

fn describe() {
    describe_counter!(
        CAPTURE_EVENTS,
        "Change events produced, by source and capture mode."
    );
    describe_gauge!(
        CAPTURE_SLOT_RETAINED_WAL,
        Unit::Bytes,
        "WAL bytes the server keeps for the replication slot."
    );
    describe_gauge!(
        CAPTURE_CONFIRMED_FLUSH_AGE,
        Unit::Seconds,
        "Seconds since the slot's confirmed_flush_lsn last advanced while WAL waited behind it."
    );
    describe_gauge!(
        CAPTURE_POLLING_WATERMARK_AGE,
        Unit::Seconds,
        "Seconds behind of the polling fallback's watermark, per table."
    );
    describe_counter!(
        CAPTURE_ERRORS,
        "Capture sessions interrupted, by error kind."
    );
    describe_gauge!(
        APPLY_END_TO_END_LAG,
        Unit::Seconds,
        "Now minus the source commit time of the last change applied; 0 when caught up."
    );
    describe_histogram!(
        APPLY_COMMIT_LATENCY,
        Unit::Seconds,
        "Source commit to target commit, per source transaction."
    );
    describe_gauge!(
        APPLY_CONSUMER_LAG,
        "Kafka high watermark minus the committed group offset."
    );
    describe_counter!(APPLY_EVENTS_APPLIED, "Rows inserted or updated.");
    describe_counter!(
        APPLY_EVENTS_SKIPPED_OLDER,
        "Changes not written because the target row was newer."
    );
    describe_counter!(
        APPLY_ECHOES_SUPPRESSED,
        "Changes read back from apply's own transactions and not applied again."
    );
    describe_counter!(
        APPLY_DEAD_LETTERED,
        "Changes sent to the dead-letter topic."
    );
    describe_histogram!(APPLY_BATCH_SIZE, "Source events per target transaction.");
    describe_histogram!(
        APPLY_BATCH_COMMIT,
        Unit::Seconds,
        "Time to store the position and commit one target transaction."
    );
    describe_counter!(APPLY_ERRORS, "Apply sessions interrupted, by error kind.");
    describe_gauge!(READY, "1 when the service is ready (/readyz answers 200).");
}

/// A capture session was interrupted by an error of `kind`.
pub fn capture_error(source: &str, kind: &'static str) {
    metrics::counter!(CAPTURE_ERRORS, label::SOURCE => source.to_owned(), label::KIND => kind)
        .increment(1);
}

/// An apply direction was interrupted by an error of `kind`.
pub fn apply_error(direction: &'static str, kind: &'static str) {
    metrics::counter!(APPLY_ERRORS, label::DIRECTION => direction, label::KIND => kind)
        .increment(1);
}

/// The counter of events produced by `source` in `mode` (register once, increment often).
pub fn capture_events(source: &str, mode: &'static str) -> metrics::Counter {
    metrics::counter!(CAPTURE_EVENTS, label::SOURCE => source.to_owned(), label::MODE => mode)
}

/// The slot's state as sampled.
pub fn capture_slot(source: &str, slot: &str, retained_wal_bytes: f64, confirmed_flush_age: f64) {
    let labels = [
        (label::SOURCE, source.to_owned()),
        (label::SLOT, slot.to_owned()),
    ];
    metrics::gauge!(CAPTURE_SLOT_RETAINED_WAL, &labels).set(retained_wal_bytes);
    metrics::gauge!(CAPTURE_CONFIRMED_FLUSH_AGE, &labels).set(confirmed_flush_age);
}

/// The polling fallback's watermark of `table` is `age_seconds` behind.
pub fn capture_polling_watermark_age(source: &str, table: &str, age_seconds: f64) {
    metrics::gauge!(
        CAPTURE_POLLING_WATERMARK_AGE,
        label::SOURCE => source.to_owned(),
        label::TABLE => table.to_owned()
    )
    .set(age_seconds);
}

/// Whether the service is ready.
pub fn ready(service: &'static str, ready: bool) {
    metrics::gauge!(READY, label::SERVICE => service).set(if ready { 1.0 } else { 0.0 });
}
