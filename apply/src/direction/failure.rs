//! What goes wrong in a session, and what it does about it: a source
//! transaction that lost a race with the target's own writers is applied
//! once more; one that cannot be applied is rolled back to its savepoint
//! and dead-lettered; a pipelined batch that failed is rolled back and
//! applied again one statement at a time (see [`Pass`] and [`Rerun`]).

use std::collections::BTreeSet;

use schemas::event::{CaptureMode, ChangeEvent, Op};
use tracing::{debug, info, warn};

use super::Session;
use crate::deadletter::Origin;
use crate::error::{ApplyError, Result};

/// What one run of a session hands to the next, which reads some of the same
/// messages again.
#[derive(Debug, Default)]
pub(super) struct Pass {
    /// Statements are pipelined except up to this offset, which a pipelined
    /// run failed at or before (see [`Writer::pipeline`](crate::writer::Writer::pipeline)).
    pub(super) careful_until: Option<i64>,
    /// Offsets after the stored position that an earlier run already sent to
    /// the dead-letter topic: not sent again (its rollback undid the rows,
    /// not the dead letters).
    pub(super) dead_lettered: BTreeSet<i64>,
}

/// What one run of a session carries over to the next, should it run again
/// from the stored position.
pub(super) struct Rerun {
    /// Statements are pipelined except up to this offset, which a pipelined
    /// pass failed at or before (see [`Writer::pipeline`](crate::writer::Writer::pipeline)).
    pub(super) careful_until: Option<i64>,
    /// Offsets an earlier run sent to the dead-letter topic (see [`Pass`])...
    pub(super) dead_lettered_before: BTreeSet<i64>,
    /// ...and those this run sent, since the stored position.
    pub(super) dead_lettered: BTreeSet<i64>,
}

impl Rerun {
    /// What the run before handed over.
    pub(super) fn new(pass: Pass) -> Rerun {
        Rerun {
            careful_until: pass.careful_until,
            dead_lettered_before: pass.dead_lettered,
            dead_lettered: BTreeSet::new(),
        }
    }
}

impl Session<'_> {
    /// What the next run, which reads from the stored position again, needs
    /// to know of this one.
    pub(super) fn pass(&mut self, careful_until: Option<i64>) -> Pass {
        let mut dead_lettered = std::mem::take(&mut self.rerun.dead_lettered_before);
        dead_lettered.append(&mut self.rerun.dead_lettered);
        Pass {
            careful_until,
            dead_lettered,
        }
    }

    /// A pipelined pass failed: rolls the target transaction back, so that
    /// the session runs again from the stored position, one statement at a
    /// time up to where this one got. What the rolled-back part counted in
    /// the statistics is dropped with it (see [`Stats`](crate::stats::Stats)) and counted when
    /// applied again; what it dead-lettered is not sent again (see
    /// [`Pass`]).
    pub(super) async fn replan(&mut self, error: &ApplyError) {
        info!(
            topic = %self.topic,
            after_offset = ?self.position.offset,
            until_offset = self.seen,
            kind = error.kind(),
            sqlstate = error.sqlstate(),
            "a pipelined batch failed; applying it again one statement at a time"
        );
        self.stats.replanned();
        crate::metrics::error(crate::monitor::direction(self.from), "replan");
        if let Err(error) = self.rollback().await {
            debug!(error = %runtime::error_chain(&error), "rolling back the pipelined batch failed; it ends with the session");
        }
    }

    /// A statement of the open transaction failed for good. When the cause is
    /// a race with the target's own writers (a parent deleted or a unique
    /// value taken between the decision and the write), the transaction is
    /// applied once more from its kept messages: the second attempt sees the
    /// new state (an orphan is skipped, a natural key is linked). Otherwise,
    /// or when that fails too, it is dead-lettered.
    pub(super) async fn recover(&mut self, error: &ApplyError, reason: &str) -> Result<()> {
        let race = matches!(error.sqlstate(), Some("23503" | "23505"));
        let Some(open) = self.open.as_mut() else {
            return Ok(());
        };
        if race
            && open.retried
            && open.kept_all
            && open.failed.is_none()
            && open.mode == CaptureMode::Polling
        {
            return self.apply_row_by_row().await;
        }
        if !race || open.retried || !open.kept_all || open.failed.is_some() {
            return self.fail(reason).await;
        }
        open.retried = true;
        let kept = open.kept.clone();
        debug!(
            first_offset = open.first_offset,
            "re-applying a source transaction after a race with the target"
        );
        self.sql("ROLLBACK TO SAVEPOINT source_tx").await?;
        self.lane.writer.forget_transaction();
        if error.sqlstate() == Some("23505") {
            self.lane.writer.relink_displaced_rows();
        }
        for (_, payload) in &kept {
            let event = match self.shared.codec.decode(payload) {
                Ok(event) => event,
                Err(error) => return self.fail(&format!("undecodable message: {error}")).await,
            };
            match self
                .lane
                .writer
                .stage(&self.lane.target, &self.source, &event)
                .await
            {
                Ok(_) => {}
                Err(error) if error.is_retryable() => return Err(error),
                Err(error) => {
                    let reason = rejection(&event, &error);
                    return self.fail(&reason).await;
                }
            }
        }
        Ok(())
    }

    /// A polling round failed on a natural key or a reference a second
    /// time. A round is no source transaction: its rows are the state of
    /// each row when it was read, in no order the source committed them (a
    /// natural key handed from one row to another within a round can reach
    /// the target taker first). So the round is applied again one row at a
    /// time, each in a savepoint of its own; a row that fails on a unique
    /// key or a reference waits in `syncbridge.waiting_rows`, to be read
    /// again from the source once the target has what it needs (see
    /// `Writer::retry_waiting`), instead of the whole round being
    /// dead-lettered. A delete that fails so, or any other failure, still
    /// dead-letters the round.
    async fn apply_row_by_row(&mut self) -> Result<()> {
        let Some(open) = self.open.as_mut() else {
            return Ok(());
        };
        let kept = open.kept.clone();
        let first_offset = open.first_offset;
        self.sql("ROLLBACK TO SAVEPOINT source_tx").await?;
        self.lane.writer.forget_transaction();
        let mut waiting = 0usize;
        for (_, payload) in &kept {
            let event = match self.shared.codec.decode(payload) {
                Ok(event) => event,
                Err(error) => return self.fail(&format!("undecodable message: {error}")).await,
            };
            self.sql("SAVEPOINT polled_row").await?;
            let outcome = match self
                .lane
                .writer
                .stage(&self.lane.target, &self.source, &event)
                .await
            {
                Ok(_) => {
                    self.lane
                        .writer
                        .flush(&self.lane.target, &self.source)
                        .await
                }
                Err(error) => Err(error),
            };
            let outcome = match outcome {
                Ok(()) => {
                    self.lane
                        .writer
                        .settle(&self.lane.target, &self.source)
                        .await
                }
                Err(error) => Err(error),
            };
            match outcome {
                Ok(()) => {
                    self.sql("RELEASE SAVEPOINT polled_row").await?;
                    self.lane.writer.keep_transaction();
                }
                Err(error) if error.is_retryable() => return Err(error),
                Err(error)
                    if matches!(error.sqlstate(), Some("23503" | "23505"))
                        && event.op != Op::Delete =>
                {
                    self.sql("ROLLBACK TO SAVEPOINT polled_row").await?;
                    self.lane.writer.forget_transaction();
                    self.lane
                        .writer
                        .wait_for_row(&self.lane.target, &self.source, &event)
                        .await?;
                    self.sql("RELEASE SAVEPOINT polled_row").await?;
                    self.lane.writer.keep_transaction();
                    waiting += 1;
                }
                Err(error) => {
                    self.sql("ROLLBACK TO SAVEPOINT polled_row").await?;
                    self.lane.writer.forget_transaction();
                    let reason = rejection(&event, &error);
                    return self.fail(&reason).await;
                }
            }
        }
        info!(
            topic = %self.topic,
            first_offset,
            rows = kept.len(),
            waiting,
            "a polling round failed on a natural key or a reference; applied one row at a time, rows that failed wait"
        );
        Ok(())
    }

    /// The open source transaction cannot be applied: roll it back and
    /// dead-letter what was kept of it.
    pub(super) async fn fail(&mut self, reason: &str) -> Result<()> {
        let Some(open) = self.open.as_mut() else {
            return Ok(());
        };
        if open.failed.is_some() || open.echo {
            return Ok(());
        }
        open.failed = Some(reason.to_owned());
        let kept = std::mem::take(&mut open.kept);
        let kept_all = open.kept_all;
        let first_offset = open.first_offset;
        warn!(topic = %self.topic, first_offset, reason = %reason, "source transaction dead-lettered");
        self.sql("ROLLBACK TO SAVEPOINT source_tx").await?;
        self.lane.writer.forget_transaction();
        if !kept_all {
            let note = format!("{reason} (offsets from {first_offset} not kept in memory: replay them from the source topic)");
            if let Some((offset, payload)) = kept.first() {
                self.dead_letter(*offset, payload, &note).await?;
            }
        }
        for (offset, payload) in &kept {
            self.dead_letter(*offset, payload, reason).await?;
        }
        Ok(())
    }

    /// Sends the message at `offset` to the dead-letter topic, unless an
    /// earlier run over the same messages did (see [`Pass`]).
    pub(super) async fn dead_letter(
        &mut self,
        offset: i64,
        payload: &[u8],
        reason: &str,
    ) -> Result<()> {
        if self.rerun.dead_lettered_before.contains(&offset) {
            debug!(topic = %self.topic, offset, "dead-lettered by an earlier run; not sent again");
            return Ok(());
        }
        self.rerun.dead_lettered.insert(offset);
        let origin = Origin {
            topic: &self.topic,
            partition: 0,
            offset,
        };
        self.shared
            .dead_letters
            .send(&origin, payload, reason)
            .await?;
        self.stats.dead_lettered(1);
        Ok(())
    }
}

/// Why an event could not be applied: its table and the error chain (which
/// names columns and kinds of problem, never row values).
pub(super) fn rejection(event: &ChangeEvent, error: &ApplyError) -> String {
    format!(
        "{}.{}: {}",
        event.schema,
        event.table,
        runtime::error_chain(error)
    )
}
