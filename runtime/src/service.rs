//! What a service binary does before and around its work: logs (and traces
//! when configured), a multi-threaded runtime, and a shutdown token that
//! SIGTERM or SIGINT cancels.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

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
    // Fields drop in order: the runtime first, then the trace exporter, so
    // spans that close while the runtime stops are still flushed.
    runtime: tokio::runtime::Runtime,
    _traces: Traces,
}

impl Service {
    /// Starts logs (`--log-format`: `json` or `text`, default by terminal),
    /// traces when the configuration `telemetry` reads from `--config` names
    /// a collector, and the runtime. When the runtime cannot start, says so
    /// on stderr and gives the exit code.
    pub fn start(
        service: &'static str,
        args: &CommonArgs,
        telemetry: impl FnOnce(Option<&Path>) -> Option<TelemetryConfig>,
    ) -> Result<Service, ExitCode> {
        let telemetry = telemetry(args.config.as_deref());
        let traces =
            telemetry::init_with_traces(args.log_format.as_deref(), telemetry.as_ref(), service);
        match tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => Ok(Service {
                runtime,
                _traces: traces,
            }),
            Err(error) => {
                eprintln!("{service}: cannot start the runtime: {error}");
                Err(ExitCode::FAILURE)
            }
        }
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
