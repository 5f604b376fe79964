//! Capture: PostgreSQL logical replication into Kafka as Avro change events.
//!
//! ```text
//!   Postgres slot ──► stream (pgoutput ► event ► codec) ──► Kafka topic
//!        ▲                                                      │
//!        └─────────── acknowledged only after delivery ◄────────┘
//! ```
//!
//! - [`slot`]: checks the source, creates the publication and slot, heartbeats.
//! - [`event`]: builds change events, one transaction at a time, in bounded memory.
//! - [`history`]: the last event the topic holds (a lost slot is told by it).
//! - [`checkpoint`]: positions that only move forward, released in order.
//! - [`stream`]: one streaming session, wiring the above together.
//! - [`polling`]: the fallback without logical replication (`capture.mode =
//!   "polling"`): reads the tables on `updated_at`; [`reconcile`] finds deletes.
//! - [`recovery`]: a lost slot told (the topic holds streamed events) and healed.
//! - [`snapshot`]: the current rows of tables as `READ` events (backfill).
//! - [`tail`]: prints the events on a topic for a person.
//! - [`monitor`]: the slot and the broker watched from outside; `capture status`.
//! - [`metrics`]: capture's metric names and the functions that record them.
//! - [`config`], [`error`]: capture's settings and its one error type.
//!
//! The pgoutput decoder, value parsing and LSNs are the `pg` crate's; Kafka
//! clients, TLS, telemetry and the retry loop's state are the `runtime`
//! crate's.
//!
//! [`run`] supervises sessions: transient failures are retried with backoff
//! and logged once per change of state; configuration errors end the run.

pub mod checkpoint;
pub mod clock;
pub mod config;
pub mod error;
pub mod event;
pub mod history;
pub mod metrics;
pub mod monitor;
pub mod polling;
pub mod reconcile;
pub mod recovery;
pub mod slot;
pub mod snapshot;
pub mod stream;
pub mod tail;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use runtime::error_chain;
use runtime::supervise::Retries;
use runtime::telemetry;
use schemas::codec::Codec;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use config::Config;
pub use error::{CaptureError, Result};

/// Runs capture until `shutdown` is cancelled (Ok) or a definite error.
///
/// Each session is ordered here: in streaming mode the slot is prepared
/// first (so nothing after this point is lost), then a lost slot is told and
/// healed, then a polling catch-up runs when polling ran on this source
/// before (or a lost slot is caught up with), then the slot is streamed.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<()> {
    let codec = Codec::new().map_err(CaptureError::Schema)?;
    let connection = config.connection()?;
    let mut retries = Retries::new(config.capture.max_backoff);
    let health = telemetry::start(&config.telemetry, "capture", metrics::CATALOG, &shutdown).await;
    let progress = health.component(monitor::STREAM);
    health.component(monitor::SOURCE);
    health.component(monitor::BROKER);
    let watcher = tokio::spawn(monitor::watch(
        config.clone(),
        std::sync::Arc::clone(&health),
        shutdown.child_token(),
    ));
    let _watcher = AbortOnDrop(watcher);
    // The session that streamed the slot for this process last: a stream
    // lost on capture's side can live on at the server, holding the slot.
    let own_stream = std::sync::Mutex::new(None);

    loop {
        let started = Instant::now();
        let streaming = AtomicBool::new(false);
        let was_failing = retries.failing();
        let on_streaming = || {
            streaming.store(true, Ordering::Release);
            health.ok(monitor::STREAM);
            if was_failing {
                info!("capture recovered");
            }
        };
        let outcome = match config.capture.mode {
            config::ReadMode::Streaming => {
                session(
                    &config,
                    &connection,
                    &codec,
                    &shutdown,
                    &on_streaming,
                    &progress,
                    &own_stream,
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
            retries.recovered();
        }
        match outcome {
            Ok(()) => return Ok(()),
            Err(error) if error.is_retryable() && !shutdown.is_cancelled() => {
                let description = error_chain(&error);
                metrics::error(&config.source.name, error.kind());
                health.failed(monitor::STREAM, &description);
                if retries.failed(description.clone(), started.elapsed(), streamed) {
                    warn!(kind = error.kind(), error = %description, "capture interrupted; retrying with backoff");
                }
                if !retries.pause(&shutdown).await {
                    return Ok(());
                }
            }
            Err(error) => return Err(error),
        }
    }
}

/// One streaming session: the slot, then a catch-up of what polling left,
/// then the stream.
async fn session(
    config: &Config,
    connection: &config::Connection,
    codec: &Codec,
    shutdown: &CancellationToken,
    on_streaming: &(dyn Fn() + Sync),
    progress: &runtime::telemetry::Progress,
    own_stream: &std::sync::Mutex<Option<slot::WalSender>>,
) -> Result<()> {
    let prepared = stream::prepare(config, connection).await?;
    // A slot created although the topic holds streamed events was lost.
    if !recovery::handle_lost_slot(config, connection, codec, &prepared, shutdown).await? {
        return Ok(());
    }
    // Polling ran here before, or a lost slot is being caught up with:
    // cover the gap (the slot exists now).
    if !polling::catch_up(
        config,
        connection,
        codec,
        prepared.producer.clone(),
        shutdown,
    )
    .await?
    {
        return Ok(());
    }
    stream::stream(
        config,
        connection,
        codec,
        prepared,
        shutdown,
        stream::Watch {
            on_streaming,
            progress,
            own_stream,
        },
    )
    .await
}

/// Aborts a background task when dropped (when `run` returns).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
