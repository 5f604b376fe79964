//! A lost replication slot, told and healed.
//!
//! A slot can disappear while capture is stopped: an operator drops it,
//! Postgres invalidates it (`max_slot_wal_keep_size`) and it is dropped, or
//! the primary fails over to a standby (a Postgres 15 logical slot does not
//! move to a standby). Creating it again at the current position would skip
//! everything that committed in between, without a word. So a start that
//! has to create the slot first asks the topic: when the topic holds
//! streamed events, the slot was lost, and the changes after the last of
//! them never reached Kafka.
//!
//! Capture then says so at ERROR (with `syncbridge_capture_slot_lost_total`)
//! and does what `capture.on_lost_slot` says, before streaming starts from
//! the new slot (which already holds everything from its creation on):
//!
//! - `catch-up` (the default): the polling fallback's watermarks are set to
//!   the last event's commit time and the usual catch-up reads every row
//!   changed since then minus `polling.overlap`. The watermarks are written
//!   first, so a catch-up interrupted here resumes at the next start.
//! - `refuse`: capture stops with exit code 2.
//! - `continue`: streaming starts from the new slot; an operator who has
//!   seen the loss re-copies what is missing (`capture snapshot`).
//!
//! When capture refuses, or the catch-up cannot run (a table without the
//! `updated_at` column, no right to create the polling tables), the slot
//! this start created is dropped again, so that the next start finds it
//! missing and the loss stays visible until it is handled. Rows deleted
//! while the slot was missing are not found by the catch-up: capture says
//! so, and `apply check` shows them.

use rdkafka::producer::FutureProducer;
use schemas::codec::Codec;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::{Config, Connection, OnLostSlot};
use crate::error::{CaptureError, Result};
use crate::history::{self, LastEvent};
use crate::stream::Prepared;
use crate::{metrics, polling};
use pg::Lsn;

/// After [`crate::stream::prepare`]: when it created the slot although the
/// topic holds streamed events, the slot was lost: heal or refuse as
/// configured. Ok(false) when shutdown interrupted it.
pub async fn handle_lost_slot(
    config: &Config,
    connection: &Connection,
    codec: &Codec,
    prepared: &Prepared,
    shutdown: &CancellationToken,
) -> Result<bool> {
    if !prepared.created_slot {
        return Ok(true);
    }
    // A switch from polling: its own catch-up covers the gap.
    if polling::switching_from_polling(connection).await? {
        return Ok(true);
    }
    let Some(last) = history::last_event(&config.kafka, &config.topic(), codec).await? else {
        return Ok(true);
    };
    let slot = config.slot_name();
    let since = pg::value::to_text(&schemas::event::Value::TimestampTz(last.commit_time_micros))
        .unwrap_or_default();
    metrics::slot_lost(&config.source.name);
    error!(
        slot,
        last_commit_lsn = %Lsn(last.commit_lsn),
        last_commit_time = %since,
        action = ?config.capture.on_lost_slot,
        "replication slot was missing although the topic holds streamed events: changes committed after the topic's last event were not streamed"
    );
    let outcome = match config.capture.on_lost_slot {
        OnLostSlot::Refuse => Err(refused(
            config,
            &last,
            &since,
            "capture.on_lost_slot is refuse",
        )),
        OnLostSlot::CatchUp => {
            catch_up(
                config,
                connection,
                codec,
                prepared.producer.clone(),
                &last,
                &since,
            )
            .await
        }
        OnLostSlot::Continue => Ok(()),
    };
    match outcome {
        Ok(()) if config.capture.on_lost_slot == OnLostSlot::Continue => {
            warn!(
                slot,
                "streaming on from the new slot: what committed while the slot was missing stays missing until it is re-copied (capture snapshot)"
            );
            Ok(!shutdown.is_cancelled())
        }
        Ok(()) => {
            warn!(
                slot,
                "rows deleted while the slot was missing are recovered from the row clock's tombstones only (tables with the clock trigger and a one-column key); compare the other tables with `apply check`"
            );
            Ok(!shutdown.is_cancelled())
        }
        Err(error) => {
            // Keep the loss visible to the next start.
            prepared.drop_created_slot(config).await?;
            Err(error)
        }
    }
}

/// Sets the polling watermarks to the last event's time; the catch-up in
/// `crate::run`'s session (which finds them) does the reading.
async fn catch_up(
    config: &Config,
    connection: &Connection,
    codec: &Codec,
    producer: FutureProducer,
    last: &LastEvent,
    since: &str,
) -> Result<()> {
    let poller = match polling::Poller::connect(config, connection, codec, producer).await {
        Ok(poller) => poller,
        Err(CaptureError::Config(reason)) => {
            return Err(refused(
                config,
                last,
                since,
                &format!("the tables cannot be polled: {reason}"),
            ))
        }
        Err(error) => return Err(error),
    };
    poller.resume_from(since).await?;
    info!(since, "catching up on the lost slot's changes by polling");
    Ok(())
}

fn refused(config: &Config, last: &LastEvent, since: &str, why: &str) -> CaptureError {
    CaptureError::Config(format!(
        "replication slot {slot} was lost: the topic's last streamed event committed at {since} (LSN {lsn}) and what committed after it never reached Kafka; {why}. \
         make the tables pollable (polling.updated_at_column, the polling tables in syncbridge) for capture.on_lost_slot = \"catch-up\", or set it to \"continue\" and re-copy the tables with `capture snapshot`",
        slot = config.slot_name(),
        lsn = Lsn(last.commit_lsn),
    ))
}
