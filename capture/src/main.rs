//! `capture`: streams one PostgreSQL database's changes into Kafka.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing::error;

/// Streams one PostgreSQL database's changes into Kafka as Avro change events.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    #[command(flatten)]
    common: runtime::service::CommonArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Stream changes into Kafka (the default).
    Run,
    /// Print the change events on one or more topics, one line each. Reaches
    /// the brokers as the configuration file's `[kafka]` section says (any
    /// service's file, `kafka.properties` included), or `--brokers`.
    Tail {
        /// Bootstrap servers (override the configuration file's).
        #[arg(long)]
        brokers: Option<String>,
        /// Topics to read.
        #[arg(long = "topic", required = true)]
        topics: Vec<String>,
        /// Start at the beginning rather than the end.
        #[arg(long)]
        from_beginning: bool,
        /// Print the row after the change too.
        #[arg(long)]
        values: bool,
        /// Stop after this many events.
        #[arg(long)]
        limit: Option<u64>,
    },
    /// Print the slot's state and what the running capture reports.
    Status(runtime::telemetry::status::StatusArgs),
    /// Send the current rows of tables (default: all of source.tables,
    /// parents first) as READ events to the topic, while streaming goes on;
    /// exit 0 only when Kafka confirmed every row.
    Snapshot {
        /// A table to read (`schema.table`); repeat for several, in order.
        #[arg(long = "table")]
        tables: Vec<String>,
        /// Rows per page (overrides snapshot.page_size).
        #[arg(long)]
        page_size: Option<usize>,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    // The run's configuration, read first when it can be, for the trace exporter.
    let service = match runtime::service::Service::start("capture", &args.common, |path| {
        capture::Config::load(path)
            .ok()
            .map(|config| config.telemetry)
    }) {
        Ok(service) => service,
        Err(code) => return code,
    };
    let outcome = service.run(|shutdown| async move {
        match args.command.unwrap_or(Command::Run) {
            Command::Run => {
                let config = capture::Config::load(args.common.config.as_deref())?;
                capture::run(config, shutdown).await
            }
            Command::Tail {
                brokers,
                topics,
                from_beginning,
                values,
                limit,
            } => {
                let kafka = runtime::config::KafkaConfig::load_section(
                    args.common.config.as_deref(),
                    brokers.as_deref(),
                )
                .map_err(|e| capture::CaptureError::Runtime(runtime::RuntimeError::Config(e)))?;
                let options = capture::tail::TailOptions {
                    kafka,
                    topics,
                    from_beginning,
                    values,
                    limit,
                };
                capture::tail::tail(options, shutdown).await
            }
            Command::Status(status) => {
                let config = capture::Config::load(args.common.config.as_deref())?;
                let report = capture::monitor::status(&config, status.address).await;
                report
                    .print(status.json)
                    .map_err(|e| capture::CaptureError::Protocol(e.to_string()))
            }
            Command::Snapshot { tables, page_size } => {
                let config = capture::Config::load(args.common.config.as_deref())?;
                let options = capture::snapshot::SnapshotOptions { tables, page_size };
                let summary = capture::snapshot::snapshot(&config, &options, &shutdown).await?;
                print!("{summary}");
                Ok(())
            }
        }
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let text = runtime::error_chain(&error);
            error!(kind = error.kind(), error = %text, "capture stopped");
            eprintln!("capture: {text}");
            if error.is_config() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
