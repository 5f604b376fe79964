//! Capture: PostgreSQL logical replication into Kafka as Avro change events.
//!
//! ```text
//!   Postgres slot ──► stream (pgoutput ► event ► codec) ──► Kafka topic
//!        ▲                                                      │
//!        └─────────── acknowledged only after delivery ◄────────┘
//! ```
//!
//! - [`slot`]: checks the source, creates the publication and slot, heartbeats.
//! - [`pgoutput`]: decodes the replication protocol; never panics on bad bytes.
//! - [`pgtype`]: turns Postgres text values into typed values.
//! - [`event`]: builds change events, one transaction at a time, in bounded memory.
//! - [`kafka`]: the topic and the idempotent producer.
//! - [`checkpoint`]: positions that only move forward, released in order.
//! - [`stream`]: one session, wiring the above together.
//! - [`tail`]: prints the events on a topic for a person.
//! - [`tls`]: `sslmode` for both kinds of Postgres connection.
//! - [`monitor`]: the slot and the broker watched from outside; `capture status`.
//! - [`telemetry`]: logs, metrics, health endpoints, traces.
//! - [`polling`]: the fallback without logical replication (`capture.mode =
//!   "polling"`): reads the tables on `updated_at`; [`reconcile`] finds deletes.
//! - [`snapshot`]: the current rows of tables as `READ` events (backfill).
//! - [`progress`]: a progress bar or progress log lines for long jobs.
//!
//! [`run`] supervises sessions: transient failures are retried with backoff
//! and logged once per change of state; configuration errors end the run.

pub mod checkpoint;
pub mod config;
pub mod continuity;
pub mod error;
pub mod event;
pub mod kafka;
pub mod monitor;
pub mod pgoutput;
pub mod pgtype;
pub mod polling;
pub mod progress;
pub mod reconcile;
pub mod slot;
pub mod snapshot;
pub mod stream;
pub mod tail;
pub mod telemetry;
pub mod tls;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use schemas::codec::Codec;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use config::Config;
pub use error::{CaptureError, Result};

/// A session that streamed for this long resets the backoff.
const HEALTHY_AFTER: Duration = Duration::from_secs(60);

/// Runs capture until `shutdown` is cancelled (Ok) or a definite error.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<()> {
    let codec = Codec::new().map_err(CaptureError::Schema)?;
    let connection = config.connection()?;
    let backoff_builder = reconnect_backoff(config.capture.max_backoff);
    let mut backoff = backoff_builder.build();
    // The last failure logged, so that a failure repeating itself is logged once.
    let mut failing: Option<String> = None;
    let health = telemetry::start(&config.telemetry, "capture", &shutdown).await;
    let progress = health.component(monitor::STREAM);
    health.component(monitor::SOURCE);
    health.component(monitor::BROKER);
    let watcher = tokio::spawn(monitor::watch(
        config.clone(),
        std::sync::Arc::clone(&health),
        shutdown.child_token(),
    ));
    let _watcher = AbortOnDrop(watcher);

    loop {
        let started = Instant::now();
        let streaming = AtomicBool::new(false);
        let was_failing = failing.is_some();
        let on_streaming = || {
            streaming.store(true, Ordering::Release);
            health.ok(monitor::STREAM);
            if was_failing {
                info!("capture recovered");
            }
        };
        let outcome = match config.capture.mode {
            config::ReadMode::Streaming => {
                stream::session(
                    &config,
                    &connection,
                    &codec,
                    &shutdown,
                    &on_streaming,
                    &progress,
                )
                .await
            }
            config::ReadMode::Polling => {
                polling::session(
                    &config,
                    &connection,
                    &codec,
                    &shutdown,
                    &on_streaming,
                    &progress,
                )
                .await
            }
        };
        let streamed = streaming.load(Ordering::Acquire);
        if streamed {
            failing = None;
        }
        match outcome {
            Ok(stream::SessionEnd::Shutdown) => return Ok(()),
            Err(error) if error.is_retryable() && !shutdown.is_cancelled() => {
                let description = error_chain(&error);
                telemetry::metrics::capture_error(&config.source.name, error.kind());
                health.failed(monitor::STREAM, &description);
                if failing.as_deref() != Some(description.as_str()) {
                    warn!(kind = error.kind(), error = %description, "capture interrupted; retrying with backoff");
                    failing = Some(description);
                }
                if streamed && started.elapsed() >= HEALTHY_AFTER {
                    backoff = backoff_builder.build();
                }
                let delay = backoff.next().unwrap_or(config.capture.max_backoff);
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = shutdown.cancelled() => return Ok(()),
                }
            }
            Err(error) => return Err(error),
        }
    }
}

/// Aborts a background task when dropped (when `run` returns).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The backoff between two attempts to reconnect, shared by the services:
/// exponential from 200 ms up to `max`, with jitter, never giving up.
pub fn reconnect_backoff(max: Duration) -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(max)
        .with_jitter()
        .without_max_times()
}

/// An error and its sources, joined: `a: b: c`.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = describe(error);
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = describe(cause);
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// One error's own text. A database error is told by its severity, message
/// and SQLSTATE only: its DETAIL and HINT may quote the row's values
/// ("Failing row contains ..."), which must not reach logs or dead letters.
fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    let db = error
        .downcast_ref::<tokio_postgres::Error>()
        .and_then(tokio_postgres::Error::as_db_error)
        .or_else(|| error.downcast_ref::<tokio_postgres::error::DbError>());
    match db {
        Some(db) => format!(
            "db error: {}: {} (SQLSTATE {})",
            db.severity(),
            db.message(),
            db.code().code()
        ),
        None => error.to_string(),
    }
}
