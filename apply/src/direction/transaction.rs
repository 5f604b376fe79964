//! Source transactions assembled from a topic's events: each applied whole
//! inside a savepoint of the open batch, in event order; echoes (apply's
//! own writes coming back, recognised by their marker) skipped; a
//! transaction cut short and replayed abandoned and applied from the
//! replay; snapshot events grouped (see [`Open::snapshot`]).

use rdkafka::message::BorrowedMessage;
use rdkafka::Message;
use schemas::event::{CaptureMode, ChangeEvent};
use tracing::warn;

use super::failure::rejection;
use super::{Reading, Session};
use crate::checkpoint::{Covered, Position};
use crate::error::Result;

/// The source transaction being applied.
pub(super) struct Open {
    pub(super) commit_lsn: u64,
    /// How the transaction was captured: only streamed ones move the position's LSN.
    pub(super) mode: CaptureMode,
    pub(super) commit_micros: i64,
    pub(super) next_position: u64,
    pub(super) echo: bool,
    /// Set when the transaction failed: its remaining events are dead-lettered.
    pub(super) failed: Option<String>,
    pub(super) first_offset: i64,
    /// Raw messages kept to dead-letter the transaction whole if it fails.
    pub(super) kept: Vec<(i64, Vec<u8>)>,
    pub(super) kept_all: bool,
    /// Whether the transaction was already re-applied once after a race.
    pub(super) retried: bool,
    /// A group of snapshot events rather than a source transaction: snapshot
    /// pages come from another producer than the streaming capture, so they
    /// can interleave with its transactions on the topic (see
    /// [`Session::handle`]); a group ends at a page's last event or where a
    /// streaming transaction begins, and moves no commit LSN.
    pub(super) snapshot: bool,
    /// The offset of the group's latest event.
    pub(super) last_offset: i64,
}

impl Session<'_> {
    pub(super) async fn handle(&mut self, message: &BorrowedMessage<'_>) -> Result<()> {
        self.handle_payload(message.offset(), message.payload().unwrap_or_default())
            .await
    }

    /// One message. Snapshot events (`capture snapshot`, another producer
    /// than the streaming capture) may sit anywhere on the topic, even inside
    /// a streaming transaction: there they are deferred until it ends; a
    /// group of them is ended where a streaming transaction begins. They
    /// are applied whatever their position in their page.
    pub(super) async fn handle_payload(&mut self, offset: i64, payload: &[u8]) -> Result<()> {
        self.seen = self.seen.max(offset);
        if self
            .position
            .next_offset()
            .is_some_and(|next| offset < next)
        {
            return Ok(()); // applied before the restart
        }
        let event = match self.shared.codec.decode(payload) {
            Ok(event) => event,
            Err(error) => {
                self.dead_letter(offset, payload, &format!("undecodable message: {error}"))
                    .await?;
                if self.open.is_none() {
                    self.boundary = Some(offset);
                }
                return Ok(());
            }
        };
        let tx = event.transaction;
        let snapshot = event.mode == CaptureMode::Snapshot;
        let skip = match self.reading {
            // Already applied: a replay of capture after its own restart.
            Reading::Live if Position::tracks(event.mode) => {
                match self.position.covered(tx.commit_lsn, tx.commit_time_micros) {
                    Covered::No => false,
                    Covered::Repeat => true,
                    Covered::LsnsStartedOver => {
                        return Err(self.lsns_started_over(offset, &tx));
                    }
                }
            }
            Reading::Live => false,
            Reading::Replay { from_micros, .. } => {
                let before = from_micros.is_some_and(|from| tx.commit_time_micros < from);
                self.replay.skipped_before += u64::from(before);
                // The tail of a transaction that began before the start.
                before || (self.open.is_none() && tx.position != 0 && !snapshot)
            }
        };
        if skip {
            if self.open.is_none() {
                self.boundary = self.boundary.max(Some(offset));
            }
            return Ok(());
        }
        match self.open.as_ref().map(|open| open.snapshot) {
            Some(false) if snapshot => {
                self.defer(offset, payload);
                return Ok(());
            }
            Some(true) if !snapshot => self.end_snapshot_group().await?,
            _ => {}
        }
        if let Some(open) = &self.open {
            if open.snapshot {
                // Pages of one or several snapshots: no order to check.
            } else if open.commit_lsn != tx.commit_lsn
                || (tx.position == 0 && open.next_position > 0)
            {
                warn!(
                    commit_lsn = open.commit_lsn,
                    events = open.next_position,
                    "source transaction cut short and replayed; applying it from the replay"
                );
                self.abandon().await?;
            }
        }
        if self.open.is_none() {
            if tx.position != 0 && !snapshot {
                warn!(topic = %self.topic, offset, commit_lsn = tx.commit_lsn, "event without the start of its transaction; dead-lettered");
                self.dead_letter(
                    offset,
                    payload,
                    "event without the start of its transaction",
                )
                .await?;
                self.boundary = Some(offset);
                return Ok(());
            }
            self.begin_batch().await?;
            let echo = event.marker.is_some();
            if !echo {
                self.sql_ahead("SAVEPOINT source_tx").await?;
            }
            self.open = Some(Open {
                commit_lsn: tx.commit_lsn,
                mode: event.mode,
                commit_micros: tx.commit_time_micros,
                next_position: 0,
                echo,
                failed: None,
                first_offset: offset,
                kept: Vec::new(),
                kept_all: true,
                retried: false,
                snapshot,
                last_offset: offset,
            });
        }
        let keep_limit = self.shared.config.apply.dead_letter_buffer;
        let Some(open) = self.open.as_mut() else {
            return Ok(());
        };
        open.last_offset = offset;
        if tx.position != open.next_position && !open.snapshot {
            let reason = format!(
                "event {} of transaction {} arrived where event {} was expected",
                tx.position, tx.commit_lsn, open.next_position
            );
            self.fail(&reason).await?;
        }
        if let Some(open) = self.open.as_mut() {
            open.next_position = tx.position + 1;
            if open.failed.is_none() && !open.echo {
                if open.kept.len() < keep_limit {
                    open.kept.push((offset, payload.to_vec()));
                } else {
                    open.kept_all = false;
                }
            }
        }
        self.apply_event(&event, offset, payload).await?;
        if self
            .parked
            .as_ref()
            .is_some_and(|parked| parked.done.footprint.overlaps(self.lane.writer.touched()))
        {
            self.wait_for_parked().await?;
        }
        self.batch.events += 1;
        if tx.last {
            self.finish(offset).await?;
        }
        Ok(())
    }

    async fn apply_event(
        &mut self,
        event: &ChangeEvent,
        offset: i64,
        payload: &[u8],
    ) -> Result<()> {
        let Some(open) = self.open.as_ref() else {
            return Ok(());
        };
        if open.echo {
            self.lane.stats.echoes(1);
            return Ok(());
        }
        if let Some(reason) = open.failed.clone() {
            return self.dead_letter(offset, payload, &reason).await;
        }
        match self
            .lane
            .writer
            .stage(&self.lane.target, &self.source, event)
            .await
        {
            Ok(_) => Ok(()),
            Err(error) if error.is_retryable() => Err(error),
            // Its cause may lie in an earlier source transaction.
            Err(error) if self.lane.writer.pipelining() && error.replans() => Err(error),
            Err(error) => {
                let reason = rejection(event, &error);
                self.recover(&error, &reason).await
            }
        }
    }

    /// The source transaction's last event arrived.
    pub(super) async fn finish(&mut self, offset: i64) -> Result<()> {
        let Some(open) = self.open.as_ref() else {
            return Ok(());
        };
        if !open.echo && open.failed.is_none() {
            match self
                .lane
                .writer
                .flush(&self.lane.target, &self.source)
                .await
            {
                Ok(()) => {}
                Err(error) if error.is_retryable() => return Err(error),
                Err(error) if self.lane.writer.pipelining() && error.replans() => {
                    return Err(error)
                }
                Err(error) => {
                    let reason = runtime::error_chain(&error);
                    self.recover(&error, &reason).await?;
                    // A successful re-application staged everything again.
                    let failed = self.open.as_ref().is_none_or(|o| o.failed.is_some());
                    if !failed {
                        if let Err(error) = self
                            .lane
                            .writer
                            .flush(&self.lane.target, &self.source)
                            .await
                        {
                            if error.is_retryable() {
                                return Err(error);
                            }
                            // Dead-lettered, or a polling round applied
                            // again row by row.
                            let reason = runtime::error_chain(&error);
                            self.recover(&error, &reason).await?;
                        }
                    }
                }
            }
        }
        let Some(open) = self.open.take() else {
            return Ok(());
        };
        if !open.echo {
            self.sql_ahead("RELEASE SAVEPOINT source_tx").await?;
            if open.failed.is_none() {
                self.lane.writer.keep_transaction();
                self.lane.stats.transaction(open.commit_micros);
                self.batch.source_commits.push(open.commit_micros);
            }
        }
        if Position::tracks(open.mode) {
            self.position.applied(open.commit_lsn, open.commit_micros);
        }
        // Only the streaming transaction the dropped events sat in (or its
        // replay, after it was cut short) ends their wait.
        let overflow = if open.snapshot {
            None
        } else {
            self.deferred.overflow.take()
        };
        match overflow {
            // Stored up to the first snapshot event dropped: after the commit
            // the session reads again from there, skipping this transaction's
            // events by their commit LSN (applied) and applying the snapshot
            // events. A crash before that reads them again as well.
            Some(first_dropped) => {
                self.boundary = self.boundary.max(Some(first_dropped - 1));
                self.deferred.reread = Some(first_dropped);
                self.stats.snapshot_reread();
            }
            // Deferred snapshot events end before the transaction they sat in.
            None => self.boundary = self.boundary.max(Some(offset)),
        }
        Ok(())
    }

    /// Drops the open transaction's work (it is being replayed).
    pub(super) async fn abandon(&mut self) -> Result<()> {
        if let Some(open) = self.open.take() {
            if !open.echo {
                self.sql("ROLLBACK TO SAVEPOINT source_tx; RELEASE SAVEPOINT source_tx")
                    .await?;
                self.lane.writer.forget_transaction();
            }
        }
        Ok(())
    }
}
