//! `apply`: both sides' changes into the other side's database.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing::error;

/// Applies both sides' change events to the other side, through the mapping.
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
    /// Apply both directions until stopped (the default).
    Run,
    /// Compare the two databases under the mapping at once (for databases
    /// nobody writes); exit 0 when they correspond, 1 when not, 2 or more
    /// on an error.
    Check {
        /// Print the report as JSON (keys, never values).
        #[arg(long)]
        json: bool,
    },
    /// One verification pass for databases in use: a chunk at a time,
    /// rows in flight read again before they are reported, resuming an
    /// interrupted pass; exit 0 when they correspond, 1 when not, 2 or
    /// more on an error.
    Verify {
        /// Print the report as JSON (keys, never values).
        #[arg(long)]
        json: bool,
        /// Start a new pass instead of resuming an interrupted one.
        #[arg(long)]
        restart: bool,
    },
    /// One verification pass (a new one), then each row found different or
    /// missing re-asserted from the side whose version wins, through the
    /// running bridge; exit 0 when nothing differed, 1 when rows were (or,
    /// with --dry-run, would be) re-asserted, 2 or more on an error.
    Repair {
        /// Print the report as JSON (keys, never values).
        #[arg(long)]
        json: bool,
        /// Say what would be re-asserted, and write nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Forget where apply stands in one side's topic, so that the next start
    /// reads it from its beginning (after the topic was created again);
    /// refused while apply runs.
    ResetPosition {
        /// The side whose topic's position is forgotten.
        #[arg(long, value_enum)]
        from: FromSide,
        /// Forget only the commit LSN the position skips repeats by, and
        /// go on after the offset (after a failover made the source's LSNs
        /// start over).
        #[arg(long)]
        keep_offset: bool,
    },
    /// Print each direction's lags, the sources' slots, what the running
    /// apply reports, and whether the two sides are in step.
    Status {
        #[command(flatten)]
        status: runtime::telemetry::status::StatusArgs,
        /// Also compare the two databases (as `check`); exit 1 when they differ.
        #[arg(long)]
        verify: bool,
    },
    /// Apply the source topics again from a point up to their current end,
    /// last writer wins deciding; the running apply's position is left alone.
    Replay {
        /// `earliest`, or an RFC 3339 time in UTC (2026-11-22T04:00:00Z):
        /// events committed at or after it.
        #[arg(long)]
        from: String,
        /// The side(s) to write.
        #[arg(long, value_enum, default_value = "both")]
        to_side: ToSide,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum FromSide {
    Legacy,
    Platform,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum ToSide {
    Legacy,
    Platform,
    Both,
}

impl ToSide {
    fn sides(self) -> &'static [apply::mapping::Side] {
        use apply::mapping::Side;
        match self {
            ToSide::Legacy => &[Side::Legacy],
            ToSide::Platform => &[Side::Platform],
            ToSide::Both => &[Side::Platform, Side::Legacy],
        }
    }
}

fn print_report(report: &apply::verify::Report, json: bool) {
    if json {
        println!("{}", report.to_json());
    } else {
        print!("{report}");
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    // The run's configuration, read first when it can be, for the trace exporter.
    let service = match runtime::service::Service::start("apply", &args.common, |path| {
        apply::Config::load(path)
            .ok()
            .map(|config| config.telemetry)
    }) {
        Ok(service) => service,
        Err(code) => return code,
    };
    let command = args.command.unwrap_or(Command::Run);
    // For the commands that compare, 1 means "different": an error is 2
    // (configuration) or 3.
    let comparing = matches!(
        command,
        Command::Check { .. }
            | Command::Verify { .. }
            | Command::Repair { .. }
            | Command::Status { verify: true, .. }
    );
    let outcome = service.run(|shutdown| async move {
        let config = apply::Config::load(args.common.config.as_deref())?;
        match command {
            Command::Run => apply::run(config, apply::Counters::default(), shutdown)
                .await
                .map(|()| true),
            Command::Check { json } => {
                let report = apply::check(&config).await?;
                print_report(&report, json);
                Ok(report.corresponds())
            }
            Command::Verify { json, restart } => {
                let mapping = apply::mapping::Mapping::load_dir(&config.apply.mapping_dir)?;
                let report = apply::verify::verify(&config, &mapping, restart).await?;
                print_report(&report, json);
                Ok(report.corresponds())
            }
            Command::Repair { json, dry_run } => {
                let mapping = apply::mapping::Mapping::load_dir(&config.apply.mapping_dir)?;
                let report = apply::verify::repair::repair(&config, &mapping, dry_run).await?;
                if json {
                    println!("{}", report.to_json());
                } else {
                    print!("{report}");
                }
                Ok(report.corresponds())
            }
            Command::Status { status, verify } => {
                let report = apply::monitor::status(&config, status.address, verify).await;
                report
                    .print(status.json)
                    .map_err(|e| apply::ApplyError::Config(e.to_string()))?;
                Ok(report.detail.verified != Some(false))
            }
            Command::ResetPosition { from, keep_offset } => {
                let mapping = apply::mapping::Mapping::load_dir(&config.apply.mapping_dir)?;
                let from = match from {
                    FromSide::Legacy => apply::mapping::Side::Legacy,
                    FromSide::Platform => apply::mapping::Side::Platform,
                };
                let forgotten =
                    apply::checkpoint::reset(&config, &mapping, from, keep_offset).await?;
                match forgotten.offset {
                    Some(offset) if keep_offset => println!(
                        "forgot the {} position's commit LSN: the next start goes on after offset {offset}",
                        from.as_str()
                    ),
                    Some(offset) => println!(
                        "forgot the {} position (offset {offset}): the next start reads the topic from its beginning",
                        from.as_str()
                    ),
                    None => println!("no {} position was stored", from.as_str()),
                }
                Ok(true)
            }
            Command::Replay { from, to_side } => {
                let from = apply::replay::ReplayFrom::parse(&from)?;
                let done = apply::replay::replay(config, from, to_side.sides(), &shutdown).await?;
                for direction in &done {
                    print!("{direction}");
                }
                Ok(true)
            }
        }
    });
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            let text = runtime::error_chain(&error);
            error!(kind = error.kind(), error = %text, "apply stopped");
            eprintln!("apply: {text}");
            if error.is_config() {
                ExitCode::from(2)
            } else if comparing {
                ExitCode::from(3)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
