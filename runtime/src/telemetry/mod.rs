//! Process-level plumbing shared by the service binaries: structured logs,
//! metrics, the health endpoints, traces, and shutdown on SIGTERM/SIGINT.
//!
//! - [`metrics`]: the recorders, label names and the metric catalog type.
//! - [`health`]: what the services report about themselves.
//! - [`http`]: `/metrics`, `/healthz`, `/readyz`, `/status`.
//! - [`status`]: the `status` subcommands' report, for a person or as JSON.

pub mod health;
pub mod http;
pub mod metrics;
pub mod status;

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

pub use health::{Health, Progress};

/// The `[telemetry]` section of both services.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// Where `/metrics`, `/healthz`, `/readyz` and `/status` are served;
    /// `"off"` or empty turns them off.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// A DogStatsD agent (`host:port`, UDP) to send the same metrics to.
    #[serde(default)]
    pub dogstatsd: Option<String>,
    /// An OpenTelemetry collector (OTLP over HTTP, e.g.
    /// `http://otel-collector:4318`) to send traces to.
    #[serde(default)]
    pub otlp_endpoint: Option<String>,
    /// The service name in traces; default `syncbridge-<service>`.
    #[serde(default)]
    pub service_name: Option<String>,
    /// How often the slot, the consumer lag and the connections are sampled.
    #[serde(default = "default_sample_interval", with = "humantime_serde")]
    pub sample_interval: Duration,
    /// Pending work without progress for this long makes the service not ready.
    #[serde(default = "default_stall_after", with = "humantime_serde")]
    pub stall_after: Duration,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            listen: default_listen(),
            dogstatsd: None,
            otlp_endpoint: None,
            service_name: None,
            sample_interval: default_sample_interval(),
            stall_after: default_stall_after(),
        }
    }
}

fn default_listen() -> String {
    "0.0.0.0:9090".to_owned()
}
fn default_sample_interval() -> Duration {
    Duration::from_secs(10)
}
fn default_stall_after() -> Duration {
    Duration::from_secs(120)
}

/// Whether a `listen` value turns the endpoints off.
pub fn disabled(listen: &str) -> bool {
    let listen = listen.trim();
    listen.is_empty() || listen.eq_ignore_ascii_case("off")
}

/// Starts the service's telemetry: the metrics recorder (when anything
/// reads it), the endpoints, and the readiness gauge. A port that cannot be
/// bound is logged as an error and the service runs on without endpoints.
pub async fn start(
    config: &TelemetryConfig,
    service: &'static str,
    catalog: &'static [metrics::Metric],
    shutdown: &CancellationToken,
) -> Arc<Health> {
    let health = Health::new(service, config.stall_after);
    let serving = !disabled(&config.listen);
    if !serving && config.dogstatsd.is_none() {
        return health;
    }
    if let Err(error) = metrics::install(config.dogstatsd.as_deref(), catalog) {
        error!(%error, "metrics recorder not installed; no metrics");
    }
    if serving {
        if let Err(error) = http::serve(&config.listen, Arc::clone(&health), shutdown.clone()).await
        {
            error!(listen = %config.listen, %error, "cannot serve the telemetry endpoints; running without them");
        }
    }
    let ticking = Arc::clone(&health);
    let shutdown = shutdown.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(1));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut upkeep = 0u32;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = every.tick() => {}
            }
            metrics::ready(ticking.service(), ticking.status().ready);
            upkeep += 1;
            if upkeep.is_multiple_of(5) {
                metrics::upkeep();
            }
        }
    });
    health
}

/// Flushes and stops the trace exporter when dropped (at the end of `main`).
#[must_use = "traces are flushed when this is dropped"]
pub struct Traces(Option<opentelemetry_sdk::trace::SdkTracerProvider>);

impl Drop for Traces {
    fn drop(&mut self) {
        if let Some(provider) = self.0.take() {
            if let Err(error) = provider.shutdown() {
                eprintln!("trace exporter shutdown: {error}");
            }
        }
    }
}

/// The log filter without `RUST_LOG`: INFO and above, but for the
/// replication client's worker, which logs a lost stream at ERROR although
/// nothing is at risk (capture reconnects from its slot and says so at
/// WARN, with the same error).
pub const DEFAULT_LOG_FILTER: &str = "info,pgwire_replication::client::tokio_client=off";

/// Installs the log subscriber as [`init`] does and, when `config` names an
/// `otlp_endpoint`, a layer exporting spans (at `RUST_LOG`'s level) over
/// OTLP/HTTP (protobuf) in batches from a thread of its own. The service
/// name is `telemetry.service_name`, default `syncbridge-<service>`.
pub fn init_with_traces(
    format: Option<&str>,
    config: Option<&TelemetryConfig>,
    service: &str,
) -> Traces {
    use std::io::IsTerminal;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;

    let filter = || {
        tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER))
    };
    let json = match format {
        Some("json") => true,
        Some(_) => false,
        None => !std::io::stderr().is_terminal(),
    };
    type Boxed = Box<dyn Layer<tracing_subscriber::Registry> + Send + Sync>;
    let mut layers: Vec<Boxed> = Vec::new();
    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    if json {
        layers.push(
            logs.json()
                .flatten_event(true)
                .with_filter(filter())
                .boxed(),
        );
    } else {
        layers.push(logs.with_filter(filter()).boxed());
    }
    let mut provider = None;
    let mut failure = None;
    if let Some(endpoint) = config.and_then(|c| c.otlp_endpoint.as_deref()) {
        let name = config
            .and_then(|c| c.service_name.clone())
            .unwrap_or_else(|| format!("syncbridge-{service}"));
        match traces::provider(endpoint, &name) {
            Ok(built) => {
                use opentelemetry::trace::TracerProvider as _;
                let tracer = built.tracer("syncbridge");
                layers.push(
                    tracing_opentelemetry::layer()
                        .with_tracer(tracer)
                        .with_filter(filter())
                        .boxed(),
                );
                provider = Some(built);
            }
            Err(error) => failure = Some(error),
        }
    }
    let _ = tracing_subscriber::registry().with(layers).try_init();
    if let Some(error) = failure {
        error!(%error, "traces not exported: the OTLP exporter could not be built");
    }
    Traces(provider)
}

mod traces {
    use opentelemetry_otlp::{SpanExporter, WithExportConfig};
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use opentelemetry_sdk::Resource;

    /// The OTLP/HTTP endpoint for traces: `endpoint` as given when it names
    /// the path, else with `/v1/traces` appended.
    pub fn traces_url(endpoint: &str) -> String {
        let endpoint = endpoint.trim_end_matches('/');
        if endpoint.ends_with("/v1/traces") {
            endpoint.to_owned()
        } else {
            format!("{endpoint}/v1/traces")
        }
    }

    pub fn provider(endpoint: &str, service_name: &str) -> Result<SdkTracerProvider, String> {
        let exporter = SpanExporter::builder()
            .with_http()
            .with_endpoint(traces_url(endpoint))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(
                Resource::builder()
                    .with_service_name(service_name.to_owned())
                    .build(),
            )
            .build())
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn the_traces_path_is_appended_once() {
            assert_eq!(
                super::traces_url("http://collector:4318"),
                "http://collector:4318/v1/traces"
            );
            assert_eq!(
                super::traces_url("http://collector:4318/v1/traces"),
                "http://collector:4318/v1/traces"
            );
        }
    }
}

/// Cancels `shutdown` on the first SIGTERM or SIGINT.
pub async fn cancel_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return;
    };
    tokio::select! {
        _ = term.recv() => info!(signal = "SIGTERM", "shutting down"),
        _ = int.recv() => info!(signal = "SIGINT", "shutting down"),
    }
    shutdown.cancel();
}
