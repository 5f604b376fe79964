//! The target transaction a session writes a batch of source transactions
//! in: begun with the echo marker (and, with two writers, its order lock),
//! the position stored in it, committed, and recorded once committed; or
//! rolled back.

use std::sync::Arc;
use std::time::Instant;

use rdkafka::consumer::StreamConsumer;

use super::lanes::{
    lane_committed, Committed, Parked, MARKER_AND_ORDER_LOCK, ORDER_LOCK, PAIR_LOCK_TURN,
};
use super::Session;
use crate::checkpoint;
use crate::error::{ApplyError, Result};
use crate::stats::Stats;

/// A batch's first statement: the echo marker, by which its writes are
/// recognised when they come back on the target's topic, and the mark that
/// keeps the row clock trigger off its writes (see [`pg::clock`]).
const MARKER: &str = "SELECT pg_catalog.pg_logical_emit_message(true, $1, $2), \
     pg_catalog.set_config('syncbridge.applying', 'on', true)";

/// The open target transaction (a batch of source transactions), and the
/// order lock numbers of batches.
pub(super) struct Batch {
    /// Whether a target transaction is open.
    pub(super) open: bool,
    pub(super) events: usize,
    pub(super) started: Instant,
    /// Source commit times (Unix micros) of the transactions in the open batch.
    pub(super) source_commits: Vec<i64>,
    /// The trace span of the open batch (LSN range, offsets).
    pub(super) span: tracing::Span,
    /// The order lock of the open batch (see [`ORDER_LOCK`]), and the next's.
    pub(super) seq: i32,
    pub(super) next_seq: i32,
}

impl Batch {
    pub(super) fn new() -> Batch {
        Batch {
            open: false,
            events: 0,
            started: Instant::now(),
            source_commits: Vec::new(),
            span: tracing::Span::none(),
            seq: 0,
            next_seq: 0,
        }
    }
}

impl Session<'_> {
    pub(super) fn target_side(&self) -> &'static str {
        self.from.other().as_str()
    }

    /// Runs `sql` once the statements sent before it are settled.
    pub(super) async fn sql(&mut self, sql: &str) -> Result<()> {
        self.lane
            .writer
            .settle(&self.lane.target, &self.source)
            .await?;
        self.lane.target.batch_execute(sql).await.map_err(|e| {
            ApplyError::postgres(
                self.target_side(),
                sql.split_whitespace().next().unwrap_or("sql").to_owned(),
                e,
            )
        })
    }

    /// Sends `sql`, a statement whose only answer is whether it failed
    /// (see [`Writer::settle`](crate::writer::Writer::settle)).
    pub(super) async fn sql_ahead(&mut self, sql: &'static str) -> Result<()> {
        self.lane
            .writer
            .send_simple(&self.lane.target, &self.source, sql)
            .await
    }

    pub(super) async fn begin_batch(&mut self) -> Result<()> {
        if self.batch.open {
            return Ok(());
        }
        self.sql("BEGIN").await?;
        let content = format!("{}:{}", self.source_name, self.position.commit_lsn);
        let prefix = &self.shared.config.apply.marker_prefix;
        if self.spare.is_some() || self.parked.is_some() {
            self.batch.seq = self.batch.next_seq;
            self.batch.next_seq = self.batch.next_seq.wrapping_add(1);
            self.lane
                .writer
                .execute_prepared(
                    &self.lane.target,
                    MARKER_AND_ORDER_LOCK,
                    &[prefix, &content, &ORDER_LOCK, &self.batch.seq],
                    "write the echo marker and take the order lock",
                )
                .await?;
        } else {
            self.lane
                .writer
                .execute_prepared(
                    &self.lane.target,
                    MARKER,
                    &[prefix, &content],
                    "write the echo marker",
                )
                .await?;
        }
        self.batch.open = true;
        self.batch.events = 0;
        self.batch.started = Instant::now();
        self.batch.source_commits.clear();
        self.batch.span = tracing::info_span!(
            "apply_batch",
            direction = crate::monitor::direction(self.from),
            topic = %self.topic,
            after_offset = self.position.offset,
            after_commit_lsn = self.position.commit_lsn,
            last_offset = tracing::field::Empty,
            last_commit_lsn = tracing::field::Empty,
            events = tracing::field::Empty,
        );
        Ok(())
    }

    /// Stores the position and commits the target transaction, then the
    /// consumer group offset. With `park` and two writers, the commit is
    /// sent and not waited for: the other writer takes the next batch (see
    /// [`Lane`](super::lanes::Lane)). Otherwise every batch has committed
    /// when this returns.
    pub(super) async fn commit(&mut self, consumer: &StreamConsumer, park: bool) -> Result<()> {
        debug_assert!(
            self.open.is_none(),
            "commit only between source transactions"
        );
        let committed = self.commit_batch(park).await;
        self.commit_group_offset(consumer);
        committed
    }

    async fn commit_batch(&mut self, park: bool) -> Result<()> {
        let stored = self
            .parked
            .as_ref()
            .map(|parked| parked.done.offset)
            .or(self.position.offset);
        let Some(offset) = self
            .boundary
            .filter(|offset| stored != Some(*offset) || self.batch.open)
        else {
            return if park {
                Ok(())
            } else {
                self.finish_parked().await
            };
        };
        self.begin_batch().await?;
        let started = self.batch.started;
        // Commits stay in source order: the parked batch's first.
        self.wait_for_parked().await?;
        self.batch
            .span
            .record("last_commit_lsn", self.position.commit_lsn);
        let turn = self.lane.writer.holds_pair_lock()
            && self.drained.elapsed() >= PAIR_LOCK_TURN
            && self.lane.writer.pair_lock_wanted(&self.source).await?;
        let park = park && self.spare.is_some() && self.lane.writer.pipelining() && !turn;
        if !park {
            self.lane
                .writer
                .settle(&self.lane.target, &self.source)
                .await?;
        }
        if self.reading.is_live() {
            let params: Vec<Box<dyn tokio_postgres::types::ToSql + Sync + Send>> = vec![
                Box::new(self.source_name.clone()),
                Box::new(self.topic.clone()),
                Box::new(0i32),
                Box::new(offset),
                Box::new(self.position.commit_lsn as i64),
                Box::new(
                    self.shared
                        .fence
                        .as_ref()
                        .map_or(0, |fence| fence.generation(self.from.other())),
                ),
                Box::new(self.position.commit_time_micros),
            ];
            self.lane
                .writer
                .send_statement(
                    &self.lane.target,
                    &self.source,
                    checkpoint::STORE,
                    params,
                    "store the position",
                )
                .await?;
        }
        // Deletes to re-assert are re-asserted after the commit, in a source
        // transaction, which must not overlap a target transaction of this
        // direction: the batch commits alone.
        let alone = self.lane.writer.recorded_deletes();
        let (footprint, hidden) = self.lane.writer.take_footprint();
        let done = Committed {
            offset,
            seq: self.batch.seq,
            events: self.batch.events,
            started,
            source_commits: std::mem::take(&mut self.batch.source_commits),
            span: std::mem::replace(&mut self.batch.span, tracing::Span::none()),
            footprint,
        };
        if park && !hidden && !alone {
            // Sent, not waited for: the database writes this batch while the
            // other writer takes the next.
            self.lane
                .writer
                .send_simple(&self.lane.target, &self.source, "COMMIT")
                .await?;
            self.lane.writer.commit_sent();
            self.batch.open = false;
            let lane = self.switch_lane();
            self.parked = Some(Parked { lane, done });
            return Ok(());
        }
        self.sql("COMMIT").await?;
        self.batch.open = false;
        self.drained = Instant::now();
        self.committed(done, &Arc::clone(&self.lane.stats));
        self.current_lane_committed().await
    }

    /// What follows a commit of the current lane's target transaction (see
    /// [`lane_committed`]).
    pub(super) async fn current_lane_committed(&mut self) -> Result<()> {
        lane_committed(
            &mut self.lane.writer,
            &self.lane.target,
            &self.source,
            &mut self.statistics,
            self.shared,
            self.from,
        )
        .await
    }

    /// The session's record of a batch that committed: the position, what
    /// was counted, the trace span, the dead letters no run sends again.
    pub(super) fn committed(&mut self, done: Committed, writer_stats: &Stats) {
        let Committed {
            offset,
            events,
            started,
            source_commits,
            span,
            ..
        } = done;
        // No run reads these again: the stored position passed them.
        for offsets in [
            &mut self.rerun.dead_lettered_before,
            &mut self.rerun.dead_lettered,
        ] {
            *offsets = offsets.split_off(&(offset + 1));
        }
        crate::monitor::batch_committed(
            self.from,
            &self.stats,
            writer_stats,
            events,
            started.elapsed(),
            &source_commits,
        );
        span.record("last_offset", offset);
        span.record("events", events);
        self.position.consumed(offset);
        if self
            .rerun
            .careful_until
            .is_some_and(|until| offset >= until)
        {
            self.rerun.careful_until = None;
            self.lane.writer.pipeline(true);
            if let Some(spare) = self.spare.as_mut() {
                spare.writer.pipeline(true);
            }
        }
        if self.reading.is_live() {
            self.group_offset = Some(offset + 1);
        }
    }

    pub(super) async fn rollback(&mut self) -> Result<()> {
        self.lane.stats.batch_discarded();
        self.lane.writer.discard().await;
        if self.batch.open {
            self.sql("ROLLBACK").await?;
            self.batch.open = false;
        }
        self.lane.writer.rolled_back();
        self.open = None;
        self.lane.writer.release_pair_lock(&self.source).await?;
        // The parked batch's commit was sent: it stands or fails on its own,
        // once the open batch has let go of its locks (it may wait for one).
        self.finish_parked().await
    }
}
