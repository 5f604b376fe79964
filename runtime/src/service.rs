//! What a service binary does before and around its work: logs (and traces
//! when configured), a multi-threaded runtime, and a shutdown token that
//! SIGTERM or SIGINT cancels.

use std::future::Future;
use std::path::PathBuf;

use tokio_util::sync::CancellationToken;

use crate::telemetry::{self, TelemetryConfig, Traces};

/// The options every service command line has (flattened into each
/// binary's own arguments).
#[derive(Debug, Clone, clap::Args)]
pub struct CommonArgs {
    /// The TOML configuration file; every key can be overridden by a
    /// SYNC_BRIDGE_<SECTION>__<KEY> environment variable.
    #[arg(long, short, env = "SYNC_BRIDGE_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Log format: `json` (default when stderr is not a terminal) or `text`.
    #[arg(long, env = "SYNC_BRIDGE_LOG_FORMAT", global = true)]
    pub log_format: Option<String>,
}

/// A started service process: keep it until `main` returns, so that traces
/// are flushed last.
pub struct Service {
    _traces: Traces,
    runtime: tokio::runtime::Runtime,
}

impl Service {
    /// Starts logs (`log_format`: `json` or `text`, default by terminal),
    /// traces when `telemetry` names a collector, and the runtime. The error
    /// is a message for stderr: the runtime could not start.
    pub fn start(
        service: &'static str,
        log_format: Option<&str>,
        telemetry: Option<&TelemetryConfig>,
    ) -> Result<Service, String> {
        let traces = telemetry::init_with_traces(log_format, telemetry, service);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(|error| format!("cannot start the runtime: {error}"))?;
        Ok(Service {
            _traces: traces,
            runtime,
        })
    }

    /// Runs `work` to its end, with a token that SIGTERM or SIGINT cancels.
    pub fn run<F, T>(&self, work: impl FnOnce(CancellationToken) -> F) -> T
    where
        F: Future<Output = T>,
    {
        let shutdown = CancellationToken::new();
        self.runtime.block_on(async {
            tokio::spawn(telemetry::cancel_on_signal(shutdown.clone()));
            work(shutdown).await
        })
    }
}
