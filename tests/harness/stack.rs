//! The shared stack `scripts/test` (or `scripts/stack up`) started, as the
//! `SYNC_BRIDGE_*` environment describes it: its two clusters ([`Side`]), its
//! broker and the repository's directories.

use std::path::PathBuf;
use std::sync::OnceLock;

/// The services `scripts/test` (or `scripts/stack up`) started.
#[derive(Debug, Clone)]
pub struct Stack {
    pub legacy_admin_url: String,
    pub platform_admin_url: String,
    pub brokers: String,
    pub pg_bindir: PathBuf,
    pub pg_run_as: Option<String>,
    pub stack_dir: PathBuf,
    pub reference_dir: PathBuf,
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the tests through scripts/test, which starts the stack they need")
    })
}

impl Stack {
    /// The stack described by the `SYNC_BRIDGE_*` environment. Also routes
    /// the services' logs to the test output (level from `RUST_LOG`,
    /// default `warn`).
    pub fn get() -> &'static Stack {
        static LOGS: OnceLock<()> = OnceLock::new();
        LOGS.get_or_init(|| {
            let filter = tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
            let _ = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_test_writer()
                .try_init();
        });
        static STACK: OnceLock<Stack> = OnceLock::new();
        STACK.get_or_init(|| Stack {
            legacy_admin_url: env("SYNC_BRIDGE_LEGACY_ADMIN_URL"),
            platform_admin_url: env("SYNC_BRIDGE_PLATFORM_ADMIN_URL"),
            brokers: env("SYNC_BRIDGE_KAFKA_BROKERS"),
            pg_bindir: PathBuf::from(env("SYNC_BRIDGE_PG_BINDIR")),
            pg_run_as: std::env::var("SYNC_BRIDGE_PG_RUN_AS")
                .ok()
                .filter(|s| !s.is_empty()),
            stack_dir: PathBuf::from(env("SYNC_BRIDGE_STACK_DIR")),
            reference_dir: PathBuf::from(env("SYNC_BRIDGE_REFERENCE_DIR")),
        })
    }
}

/// Which of the two clusters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Legacy,
    Platform,
}

impl Side {
    pub fn admin_url(self) -> &'static str {
        match self {
            Side::Legacy => &Stack::get().legacy_admin_url,
            Side::Platform => &Stack::get().platform_admin_url,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Side::Legacy => "legacy",
            Side::Platform => "platform",
        }
    }

    pub fn other(self) -> Side {
        match self {
            Side::Legacy => Side::Platform,
            Side::Platform => Side::Legacy,
        }
    }
}

/// The repository's mapping directory.
pub fn mapping_dir() -> PathBuf {
    Stack::get().reference_dir.join("../mapping")
}
