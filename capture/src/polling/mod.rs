//! The polling fallback: change events from reading the tables on
//! `updated_at`, for a source that cannot give logical replication (no
//! REPLICATION privilege, `wal_level = replica`, a lost slot).
//!
//! ```text
//!  every polling.interval, in one REPEATABLE READ snapshot, each table in
//!  source.tables order (parents first): pg_current_wal_lsn(), now(),
//!      SELECT ... WHERE (updated_at, pk) > last ORDER BY updated_at, pk LIMIT page_size
//!        ──► events (one pseudo-transaction per page) ──► Kafka ──► delivery reports
//!                                                                        │
//!    syncbridge.capture_keys (key, xmin) + capture_watermark (updated_at, pk) ◄──┘
//!  every polling.reconcile_interval: a sweep (rows stamped behind watermark - overlap
//!    whose xmin was never sent ──► events), then table keys vs capture_keys ──► Delete events
//! ```
//!
//! - **Rounds and pages.** A round reads a table from its watermark minus
//!   `polling.overlap` (a transaction that committed after a later
//!   `updated_at` was read, or a timestamp truncated to the second, is read
//!   again), then in keyset pages ordered by `(updated_at, primary key)`:
//!   each page starts strictly after the previous page's last row, so any
//!   number of rows sharing one `updated_at` are read once each and no page
//!   is read twice. A round ends with a short page. Memory: one page.
//! - **Events.** The same [`ChangeEvent`] as streaming, to the same topic with
//!   the same Kafka key, `mode = Polling`. `op` is `Insert` for a key capture
//!   has not sent before (not in the key ledger) and `Update` otherwise; apply
//!   upserts both alike. The rows of a page form pseudo-transactions
//!   (positions from 0, `last` and `event_count` on the final event): one per
//!   run of consecutive rows that are, or are not, apply's echoes, because
//!   apply decides echo per transaction. A round reads every table in one
//!   snapshot, parents first, so a child never arrives before its parent.
//!   `commit_lsn` is `pg_current_wal_lsn()` read in the round's snapshot (it
//!   needs no privilege and never goes backwards), `commit_time_micros` the
//!   read's time (`now()` of that snapshot), and `xid` the row's `xmin`
//!   (informational). Apply applies polled events always and never moves
//!   its stored commit LSN with them. The round's snapshot stays open while
//!   its pages are delivered: a round is short, but it holds back vacuum
//!   meanwhile.
//! - **The watermark** is the last `(updated_at, key)` confirmed, its time
//!   clamped to the present: a row stamped in the future does not hide the
//!   rows written after it (it is read again each round and skipped, see
//!   below).
//! - **Unchanged rows are not re-sent.** The key ledger stores the `xmin` of
//!   the row version last sent; a row read again (the overlap) with the same
//!   `xmin` is skipped.
//! - **Echoes.** Apply records the `xmin` its rows carry (the id of the
//!   savepoint it writes each source transaction in) in
//!   `syncbridge.apply_ledger.written_xmin` (its primary key), in the writing
//!   statement. A polled row whose `xmin` is there was written by apply (the
//!   id of a transaction, or of the savepoint apply writes in, that wrote
//!   nothing else); its event carries a `marker` (`polling:<xmin>`), which
//!   apply skips like a streamed echo. (A 32-bit id repeats only after four
//!   billion transactions; a match across that wrap would flag a local write
//!   as an echo.) The top-level transaction id (`pg_current_xact_id()`)
//!   would not do: rows written inside a savepoint carry the
//!   subtransaction's id.
//! - **Durability.** A page's rows enter the key ledger and the watermark
//!   moves past them only after Kafka confirmed every event of the page, in
//!   one transaction. A crash re-reads from the last confirmed page; what is
//!   sent twice is idempotent by last-writer-wins.
//! - **Sweeps.** A row stamped at or before the watermark minus the overlap
//!   when it commits (a writer's clock behind, a long transaction) is never
//!   read by a round. Before each reconciliation a sweep reads each table
//!   whole, in one snapshot, parents first, and sends those rows whose
//!   `xmin` is not the one the ledger holds ([`Poller::sweep`]), with a WARN.
//! - **Deletes** come from reconciliation ([`crate::reconcile`]): children
//!   first (the reverse table order), each table's current keys against the
//!   ledger; Delete events (key columns, `before` = the key) for the keys
//!   gone, then removed from the ledger once Kafka confirmed them. Their
//!   `commit_time_micros` is the reconciliation's read time: the actual
//!   delete happened at most one `reconcile_interval` earlier.
//!
//! Privileges: SELECT on the tables; USAGE and CREATE on the schema
//! `syncbridge` (capture creates `capture_watermark` and `capture_keys` when
//! missing; or create them for it and grant SELECT, INSERT, UPDATE, DELETE);
//! SELECT on `syncbridge.apply_ledger` (created by apply). No REPLICATION.
//! An index on `(updated_at, primary key)` keeps each page a range scan.
//!
//! The module's parts: [`table`] (what a polled table is, how a page is
//! read), [`poller`] (rounds, pages, reconciliation, the key ledger),
//! [`bookkeeping`] (capture's watermark and key tables).

mod bookkeeping;
mod poller;
mod table;

use poller::connect;
pub use poller::{has_watermarks, number_runs, Poller};
pub use table::{describe, PageStart, PolledColumn, PolledTable};

use rdkafka::producer::FutureProducer;
use schemas::codec::Codec;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::config::{Config, Connection};
use crate::error::Result;
use runtime::kafka;
use runtime::telemetry::Progress;

/// Runs polling until shutdown or an error: a round every
/// `polling.interval` (from the start of one to the start of the next), a
/// reconciliation after the first round and then every
/// `polling.reconcile_interval`.
pub async fn session(
    config: &Config,
    connection: &Connection,
    codec: &Codec,
    shutdown: &CancellationToken,
    on_streaming: &(dyn Fn() + Sync),
    progress: &Progress,
) -> Result<()> {
    let topic = config.topic();
    kafka::ensure_topic(&config.kafka, &topic).await?;
    let producer = kafka::producer(&config.kafka, config.capture.max_in_flight)?;
    let mut poller = Poller::connect(config, connection, codec, producer).await?;
    info!(topic = %topic, interval = ?config.polling.interval, tables = poller.tables.len(), "polling");
    on_streaming();
    let mut ticks = tokio::time::interval(config.polling.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reconciled_at: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            _ = ticks.tick() => {}
        }
        if !poller.round(shutdown).await? {
            return Ok(());
        }
        progress.advanced(false);
        poller.publish_watermark_ages().await;
        let due = reconciled_at.is_none_or(|at| at.elapsed() >= config.polling.reconcile_interval);
        if due {
            if !poller.sweep(shutdown).await? || !poller.reconcile(shutdown).await? {
                return Ok(());
            }
            reconciled_at = Some(tokio::time::Instant::now());
        }
    }
}

/// Polling -> streaming: when polling ran on this source before, one last
/// round and reconciliation from its watermarks covers the gap between the
/// last poll and the slot's creation, then the watermarks are retired.
/// Runs after the slot exists and before streaming starts, through the
/// streaming session's producer (so the topic keeps one writer at a time).
/// Interrupted, it runs again at the next start (the watermarks are only
/// retired at its end).
/// Whether polling ran on this source before (its watermarks are there):
/// the next streaming start catches up from them (see [`catch_up`]).
pub async fn switching_from_polling(connection: &Connection) -> Result<bool> {
    let probe = connect(connection).await?;
    has_watermarks(&probe).await
}

pub async fn catch_up(
    config: &Config,
    connection: &Connection,
    codec: &Codec,
    producer: FutureProducer,
    shutdown: &CancellationToken,
) -> Result<bool> {
    let probe = connect(connection).await?;
    if !has_watermarks(&probe).await? {
        return Ok(true);
    }
    info!("polling watermarks found: one last poll covers the switch to streaming");
    let mut poller = Poller::connect(config, connection, codec, producer).await?;
    if !poller.round(shutdown).await? || !poller.reconcile(shutdown).await? {
        return Ok(false);
    }
    poller.retire().await?;
    info!("switched from polling to streaming");
    Ok(true)
}

#[cfg(test)]
mod tests;
