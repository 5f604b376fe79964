//! The recorders behind the `metrics` facade, the label names, and the one
//! metric both services export ([`READY`]). Each service lists its own
//! metrics as a catalog of [`Metric`]s (`capture::metrics`, `apply::metrics`)
//! and hands it to [`install`], which describes them and gives histograms
//! their buckets.
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

pub use metrics::Unit;
use metrics::{describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_dogstatsd::DogStatsDBuilder;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use metrics_util::layers::FanoutBuilder;

/// 1 when the service answers `/readyz` with 200.
pub const READY: &str = "syncbridge_ready";

/// Label names.
pub mod label {
    pub const SOURCE: &str = "source";
    pub const MODE: &str = "mode";
    pub const SLOT: &str = "slot";
    pub const TABLE: &str = "table";
    pub const ENTITY: &str = "entity";
    pub const KIND: &str = "kind";
    pub const DIRECTION: &str = "direction";
    pub const TOPIC: &str = "topic";
    pub const PARTITION: &str = "partition";
    pub const SERVICE: &str = "service";
}

/// Upper bounds of the latency histograms' buckets, in seconds.
pub const SECONDS_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];
/// Upper bounds of a size histogram's buckets.
pub const SIZE_BUCKETS: &[f64] = &[1.0, 10.0, 100.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0];

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

/// What kind of metric a name is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Kind {
    Counter,
    Gauge,
    /// A histogram with these bucket bounds.
    Histogram(&'static [f64]),
}

/// One metric a service exports: its name (the contract), kind, unit and
/// the description `/metrics` shows.
#[derive(Debug, Clone, Copy)]
pub struct Metric {
    pub name: &'static str,
    pub kind: Kind,
    pub unit: Option<Unit>,
    pub help: &'static str,
}

/// The metrics every service exports, whatever its catalog.
pub const COMMON: &[Metric] = &[Metric {
    name: READY,
    kind: Kind::Gauge,
    unit: None,
    help: "1 when the service is ready (/readyz answers 200).",
}];

/// Installs the process-wide recorder (Prometheus, plus DogStatsD to
/// `dogstatsd` when given) and describes every metric of `catalog` and
/// [`COMMON`]. The first call wins; later calls return the handle installed
/// first.
pub fn install(
    dogstatsd: Option<&str>,
    catalog: &'static [Metric],
) -> Result<PrometheusHandle, RecorderError> {
    if let Some(handle) = PROMETHEUS.get() {
        return Ok(handle.clone());
    }
    let mut builder = PrometheusBuilder::new();
    for metric in catalog {
        if let Kind::Histogram(buckets) = metric.kind {
            builder = builder
                .set_buckets_for_metric(Matcher::Full(metric.name.to_owned()), buckets)
                .map_err(|e| RecorderError::Buckets(e.to_string()))?;
        }
    }
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
    for metric in COMMON.iter().chain(catalog) {
        describe(metric);
    }
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

fn describe(metric: &Metric) {
    let (name, help) = (metric.name, metric.help);
    match (metric.kind, metric.unit) {
        (Kind::Counter, Some(unit)) => describe_counter!(name, unit, help),
        (Kind::Counter, None) => describe_counter!(name, help),
        (Kind::Gauge, Some(unit)) => describe_gauge!(name, unit, help),
        (Kind::Gauge, None) => describe_gauge!(name, help),
        (Kind::Histogram(_), Some(unit)) => describe_histogram!(name, unit, help),
        (Kind::Histogram(_), None) => describe_histogram!(name, help),
    }
}

/// Whether the service is ready.
pub fn ready(service: &'static str, ready: bool) {
    metrics::gauge!(READY, label::SERVICE => service).set(if ready { 1.0 } else { 0.0 });
}
