//! The two writers of a direction (see [`Lane`]): while one batch commits,
//! the other writer takes the next, and order locks keep the commits in
//! source order and every wait visible to Postgres.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_postgres::Client;
use tracing::debug;

use super::{Session, Shared};
use crate::error::Result;
use crate::footprint::Footprint;
use crate::mapping::{Catalogs, Side};
use crate::stats::Stats;
use crate::writer::{Statistics, Writer};

/// One of a direction's two writers: a target connection with its own
/// [`Writer`] and the counts of its open target transaction.
///
/// With `apply.writers = 2` a batch that is full is committed without
/// waiting for the reply: its writer is parked while the other writer
/// takes the next batch, so the target works on two batches at once
/// (measured faster than one writer in alternating runs of `scripts/bench
/// apply` on one stack). What keeps that exact:
/// - **Commits stay in source order.** A batch stores its position and
///   commits only after the parked batch's commit succeeded, so the stored
///   position stays one offset and a restart stays exact.
/// - **Dependent work waits.** Before an event's statements are sent, what
///   it touches is compared with what the parked batch touched (see
///   [`crate::footprint`]); on overlap the open batch waits for that commit.
/// - **Waits are visible to Postgres.** Each batch holds an order lock
///   ([`ORDER_LOCK`]) from its start; the open batch asks for the parked
///   one's before it waits for that commit. A conflict the footprint missed
///   (the parked batch blocked on a row the open one locked) is then a
///   deadlock the server detects and breaks, and the run is applied again
///   with one writer, as any pipelined failure is.
/// - A batch whose writer wrote rows its events do not name (a stale pair
///   given up, children of a row that came back) commits before the next
///   starts, and the other writer forgets the pairs it knew.
/// - So does a batch that recorded deletes to re-assert: the re-assertion
///   (a source transaction that locks rows) runs after its commit and must
///   not overlap another target transaction of the direction, or two
///   directions could each wait for the other's open batch, across two
///   servers that cannot see the cycle.
/// - The pair lock (see `Writer::lock_pairs`) is shared: both writers take
///   it on the one source connection, where it counts. At least every
///   [`PAIR_LOCK_TURN`] while the other direction waits for it, a batch
///   that holds it commits before the next starts, so the other direction
///   gets its turn.
pub(super) struct Lane {
    pub(super) target: Arc<Client>,
    pub(super) writer: Writer,
    pub(super) stats: Arc<Stats>,
}

impl Lane {
    /// A writer of `from`'s direction on the target connection `target`,
    /// with counts of its own.
    pub(super) fn open(
        shared: &Shared,
        from: Side,
        catalogs: Catalogs,
        target: Arc<Client>,
        pipelining: bool,
    ) -> Lane {
        let stats = Arc::new(Stats::default());
        let mut writer = Writer::new(
            from,
            Arc::clone(&shared.mapping),
            catalogs,
            shared.config.apply.statement_max_rows,
            Arc::clone(&stats),
            Arc::clone(&target),
            Arc::clone(&shared.ceiling),
        );
        writer.pipeline(pipelining);
        Lane {
            target,
            writer,
            stats,
        }
    }
}

/// A batch whose `COMMIT` was sent, and what its commit completes.
pub(super) struct Parked {
    pub(super) lane: Lane,
    pub(super) done: Committed,
}

/// What the session records once a batch has committed.
pub(super) struct Committed {
    /// The offset its position stored.
    pub(super) offset: i64,
    /// Its order lock.
    pub(super) seq: i32,
    pub(super) events: usize,
    pub(super) started: Instant,
    pub(super) source_commits: Vec<i64>,
    pub(super) span: tracing::Span,
    pub(super) footprint: Footprint,
}

/// The advisory lock class of batch order locks (`pg_advisory_xact_lock(class,
/// batch number)`): "SYNO".
pub(super) const ORDER_LOCK: i32 = 0x5359_4E4F;

/// Waits for the order lock of the batch before.
pub(super) const ORDER_WAIT: &str = "SELECT pg_catalog.pg_advisory_xact_lock($1, $2)";

/// The echo marker and, with two writers, the batch's own order lock, in
/// one round trip: the lock is held before the batch can be parked. Sent
/// ahead instead, the lock could reach the server after the next batch,
/// on the other connection, had asked for it: that batch would hold it,
/// the batch it belongs to would wait for it, and the next batch would
/// wait in apply for that one's commit, a cycle no server sees.
pub(super) const MARKER_AND_ORDER_LOCK: &str =
    "SELECT pg_catalog.pg_logical_emit_message(true, $1, $2), \
     pg_catalog.set_config('syncbridge.applying', 'on', true), \
     pg_catalog.pg_advisory_xact_lock($3, $4)";

/// How long a direction's writers may keep the pair lock, committing
/// batches sent ahead, while the other direction waits for it. Short: the
/// other direction's pairings wait for the whole turn.
pub(super) const PAIR_LOCK_TURN: Duration = Duration::from_millis(50);

impl Session<'_> {
    /// Makes the spare writer the open one; returns the one that was open.
    pub(super) fn switch_lane(&mut self) -> Lane {
        let spare = self.spare.take().expect("a spare writer to switch to");
        std::mem::replace(&mut self.lane, spare)
    }

    /// Waits until the parked batch has committed. An open batch first asks
    /// for the parked one's order lock, so that should the parked batch
    /// wait for a lock the open one holds, the server sees the cycle.
    pub(super) async fn wait_for_parked(&mut self) -> Result<()> {
        let Some(seq) = self.parked.as_ref().map(|parked| parked.done.seq) else {
            return Ok(());
        };
        if self.batch.open {
            // Sent behind the open batch's statements, not waited for: they
            // go on while the parked batch commits. Its reply is read with
            // theirs.
            let params: Vec<Box<dyn tokio_postgres::types::ToSql + Sync + Send>> =
                vec![Box::new(ORDER_LOCK), Box::new(seq)];
            self.lane
                .writer
                .send_statement(
                    &self.lane.target,
                    &self.source,
                    ORDER_WAIT,
                    params,
                    "wait for the batch before",
                )
                .await?;
        }
        self.finish_parked().await
    }

    /// Reads the parked batch's commit reply and records the commit; its
    /// writer becomes the spare one.
    pub(super) async fn finish_parked(&mut self) -> Result<()> {
        let Some(Parked { mut lane, done }) = self.parked.take() else {
            return Ok(());
        };
        if let Err(error) = lane.writer.settle(&lane.target, &self.source).await {
            lane.writer.rolled_back();
            lane.stats.batch_discarded();
            // A pair lock of its transaction went with it; a session one
            // (counted on the shared source connection) is let go here, so
            // the writer never believes it holds a lock it does not.
            if let Err(release) = lane.writer.release_pair_lock(&self.source).await {
                debug!(error = %runtime::error_chain(&release), "letting the pair lock go after a failed commit failed; it ends with the session");
            }
            self.spare = Some(lane);
            return Err(error);
        }
        if self.spare.is_none() && !self.batch.open {
            self.drained = Instant::now();
        }
        self.committed(done, &lane.stats);
        let finished = lane_committed(
            &mut lane.writer,
            &lane.target,
            &self.source,
            &mut self.statistics,
            self.shared,
            self.from,
        )
        .await;
        self.spare = Some(lane);
        finished
    }
}

/// A writer's part of a commit: its pairs are durable, the pair lock and
/// deletes to re-assert are worked off, planner statistics refreshed when due.
pub(super) async fn lane_committed(
    writer: &mut Writer,
    target: &Client,
    source: &Client,
    statistics: &mut Statistics,
    shared: &Shared,
    from: Side,
) -> Result<()> {
    writer.committed();
    writer.release_pair_lock(source).await?;
    writer
        .reassert_recorded_deletes(target, source, &shared.config.apply.marker_prefix)
        .await?;
    statistics
        .refresh(&shared.config, from.other(), writer)
        .await;
    Ok(())
}
