//! What both services run on, with nothing of either service's domain.
//!
//! ```text
//!   main ──► config::layers ──► service config ──► supervise::Retries ──► sessions
//!                                                        │
//!             telemetry (logs, metrics, /healthz, /status) ◄── health of each session
//! ```
//!
//! - [`config`]: the TOML file and `SYNC_BRIDGE_*` layering, secrets, the `[kafka]` section.
//! - [`tls`]: libpq's `sslmode` for both kinds of Postgres connection.
//! - [`kafka`]: client settings, the idempotent producer, topics, deliveries.
//! - [`continuity`]: a consumer's offsets checked for gaps, in order.
//! - [`telemetry`]: logs, the metrics registry, health, HTTP endpoints, status reports.
//! - [`supervise`]: the retry loop's backoff and once-per-change failure logging.
//! - [`service`]: a service binary's logs, runtime and shutdown on signals.
//! - [`progress`]: a progress bar or progress log lines for long jobs.
//! - [`error`]: the crate's error, and errors told without row values.

pub mod config;
pub mod continuity;
pub mod error;
pub mod kafka;
pub mod link;
pub mod progress;
pub mod service;
pub mod supervise;
pub mod telemetry;
pub mod tls;

pub use error::{error_chain, Result, RuntimeError};

/// The allocator of every process built on this crate (both services, and
/// their tests): mimalloc, because the services allocate many small,
/// short-lived buffers per event (compared with `scripts/bench`). Built
/// without transparent huge pages (`no_thp`, workspace Cargo.toml): zeroing
/// a huge page whenever the allocator touched a fresh region showed up high
/// in profiles. A host whose THP setting is `always` (not `madvise`) still
/// gives huge pages.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
