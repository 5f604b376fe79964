//! One direction: a source's topic into the other side's database.
//!
//! ```text
//!  topic ──► decode ──► source transaction? ──► echo? skip
//!                                  │                 │
//!                                  ▼                 ▼
//!          target: BEGIN; marker; SAVEPOINT ─► staged runs ─► RELEASE ─► ... ─► position; COMMIT
//!                                                                                   │
//!                                              Kafka group offset (monitoring) ◄────┘
//! ```
//!
//! Each source transaction is applied whole inside a savepoint of a target
//! transaction that can carry several source transactions (batching); the
//! position (offset, commit LSN) is written in the same target transaction.
//! Two writers take batches in turn, committing in source order (see
//! [`Lane`]).
//! Restarting reads the position and continues right after it: a crash at any
//! point neither loses nor repeats a change. Events of transactions already
//! applied (capture replays after its own crash) are recognised by their
//! commit LSN and skipped; a transaction cut short by a capture crash and
//! replayed from its start is abandoned (savepoint rolled back) and applied
//! from the replay.
//!
//! A source transaction that cannot be applied (a value that does not
//! convert, a constraint the mapping cannot satisfy) is rolled back to its
//! savepoint and its events go to the dead-letter topic with the reason; the
//! stream continues. Memory is bounded: a transaction streams through its
//! savepoint however large it is; at most `dead_letter_buffer` of its
//! messages are kept to dead-letter it whole, beyond which the dead letter
//! names the offset range instead. Snapshot events that arrive inside a
//! streaming transaction wait in memory until it ends, at most
//! `deferred_snapshot_buffer` of them; beyond that, they are dropped and
//! read again from the topic after it (see `Session::defer`). Every offset
//! after the position is read, in order: a gap (a broker that showed a
//! later batch before an earlier one) is fetched again (see
//! [`runtime::continuity`]).
//!
//! This module keeps the session's public face ([`session`],
//! [`session_reading`], [`Shared`], [`Reading`]) and its loop; each concern
//! of a session has a module of its own, holding an `impl Session` block and
//! the small types it needs:
//!
//! - `consumer`: the topic's consumer, where it starts fetching, offsets
//!   received in order (continuity), and the consumer group offset.
//! - `transaction`: source transactions assembled from their events, each
//!   applied inside a savepoint; echoes skipped.
//! - `snapshots`: snapshot events inside a streaming transaction, deferred
//!   until it ends or read again after it.
//! - `batch`: the target transaction: begun with the echo marker, the
//!   position stored, committed or rolled back.
//! - `lanes`: the two writers that take batches in turn, and the order locks
//!   that keep their commits in source order.
//! - `failure`: a source transaction applied again after a race or
//!   dead-lettered; a pipelined batch applied again one statement at a time.
//! - `replaying`: what a replay counts, and when it is done.
//! - `tombstones`: expired tombstones and ledger entries pruned.

mod batch;
mod consumer;
mod failure;
mod lanes;
mod replaying;
mod snapshots;
mod tombstones;
mod transaction;
mod waiting;

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::StreamConsumer;
use rdkafka::Message;
use runtime::continuity::Continuity;
use runtime::progress::Progress;
use schemas::codec::Codec;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::checkpoint::{self, Position};
use crate::config::Config;
use crate::deadletter::DeadLetters;
use crate::error::{ApplyError, Result};
use crate::mapping::{Catalog, Mapping, Side};
use crate::stats::Stats;
use crate::writer::pairing::PairCeiling;
use crate::writer::Statistics;
use batch::Batch;
use consumer::{consumer, fetch_start, refuse_a_topic_that_ends_before};
use failure::{Pass, Rerun};
use lanes::{Lane, Parked, MARKER_AND_ORDER_LOCK, ORDER_WAIT};
use replaying::{ReplayCount, REPLAY_IDLE, REPLAY_PROGRESS_EVERY};
use snapshots::Deferred;
use transaction::Open;

pub use crate::mapping::Catalogs;

/// Everything the two directions share.
pub struct Shared {
    pub config: Config,
    pub mapping: Arc<Mapping>,
    pub codec: Codec,
    pub dead_letters: DeadLetters,
    /// Which legacy ids may be paired (see [`PairCeiling`]).
    pub ceiling: Arc<PairCeiling>,
    /// The lease's fencing tokens, for the live directions' commits (a
    /// replay stores no position).
    pub fence: Option<crate::lease::Fence>,
    /// The server sessions each direction opened: a run ends those of the
    /// runs before it that the server kept (see [`sessions`]).
    pub sessions: Arc<crate::sessions::OpenSessions>,
}

impl Shared {
    pub fn new(
        config: Config,
        mapping: Arc<Mapping>,
        codec: Codec,
        dead_letters: DeadLetters,
    ) -> Shared {
        let ceiling = Arc::new(PairCeiling::new(mapping.entities().len()));
        Shared {
            config,
            mapping,
            codec,
            dead_letters,
            ceiling,
            fence: None,
            sessions: Arc::default(),
        }
    }
}

/// How a session ended without error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEnd {
    Shutdown,
    /// A replay read up to its end: `read` messages, of which
    /// `skipped_before` were committed before the replay's start time.
    Replayed {
        read: u64,
        skipped_before: u64,
    },
}

/// How a session reads its topic.
///
/// Only streaming events are recognised as duplicates by their commit LSN
/// and move the stored commit LSN: snapshot and polling events carry no
/// position of the source's commit order (a snapshot page's LSN is where the
/// WAL stood when it was read), and last-writer-wins by `updated_at` makes
/// applying them again harmless, so they are always applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reading {
    /// The running direction: resumes after the stored position, reads
    /// forever, stores its position and commits the consumer group offset.
    Live,
    /// `apply replay`: reads from offset `start` up to `end` (exclusive: the
    /// high watermark when the replay began) and ends. Every event is applied
    /// (no LSN duplicate check; last writer wins decides), events committed
    /// before `from_micros` are skipped, and neither the stored position nor
    /// any consumer group offset is touched.
    Replay {
        start: i64,
        end: i64,
        from_micros: Option<i64>,
    },
}

impl Reading {
    fn is_live(&self) -> bool {
        matches!(self, Reading::Live)
    }
}

/// One direction's session state.
struct Session<'a> {
    shared: &'a Shared,
    from: Side,
    topic: String,
    source_name: String,
    /// The writer of the open target transaction: its connection, its
    /// `Writer`, and what it counts until it commits.
    lane: Lane,
    /// The other writer, when there are two (see [`Lane`]): idle...
    spare: Option<Lane>,
    /// ...or committing the batch before the open one.
    parked: Option<Parked>,
    /// When both writers last had no batch open: the pair lock is let go at
    /// least every [`PAIR_LOCK_TURN`](lanes::PAIR_LOCK_TURN).
    drained: Instant,
    /// The consumer group offset to commit next (monitoring only).
    group_offset: Option<i64>,
    source: Client,
    stats: Arc<Stats>,
    position: Position,
    /// The last offset at a transaction boundary: what the position may store.
    boundary: Option<i64>,
    /// The open target transaction, if any (see [`Batch`]).
    batch: Batch,
    /// The source transaction being applied, if any.
    open: Option<Open>,
    /// Whether every offset after the position was received.
    continuity: Continuity,
    /// When expired tombstones are next pruned.
    next_prune: Instant,
    /// When rows waiting in the target are next read again.
    next_waiting: Instant,
    reading: Reading,
    /// Snapshot events held back by a streaming transaction (see
    /// [`Deferred`]).
    deferred: Deferred,
    /// Replay: what was read, and the progress shown.
    replay: ReplayCount,
    /// The highest offset handled.
    seen: i64,
    /// What this run carries over to the next, should the session run
    /// again from the stored position (see [`Rerun`]).
    rerun: Rerun,
    statistics: Statistics,
}

/// How one run of a session ended.
enum Ended {
    Done(SessionEnd),
    /// Run again from the stored position (a replay: from `reread_from`
    /// when set), as `pass` says: a pipelined batch failed and is applied
    /// again one statement at a time, or snapshot events were dropped (see
    /// `Session::defer`) and are read again from `reread_from`.
    Again {
        pass: Pass,
        reread_from: Option<i64>,
    },
}

async fn connect(config: &Config, side: Side) -> Result<Client> {
    config.connect(side).await
}

/// Reads `side`'s catalog and checks the mapping against it.
pub async fn check_mapping(config: &Config, mapping: &Mapping, side: Side) -> Result<Catalog> {
    let client = connect(config, side).await?;
    let catalog = Catalog::read(&client)
        .await
        .map_err(|e| ApplyError::postgres(side.as_str(), "read the catalog", e))?;
    mapping.check(side, &catalog)?;
    checkpoint::install(&client, side.as_str()).await?;
    Ok(catalog)
}

/// Reads both databases' catalogs for the direction `from` ->
/// `from.other()` and checks the mapping against each (target first).
pub async fn check_direction(config: &Config, mapping: &Mapping, from: Side) -> Result<Catalogs> {
    let target = check_mapping(config, mapping, from.other()).await?;
    let source = check_mapping(config, mapping, from).await?;
    Ok(Catalogs { source, target })
}

/// Runs one session of the direction `from` -> `from.other()`.
pub async fn session(
    shared: &Shared,
    from: Side,
    catalogs: Catalogs,
    stats: Arc<Stats>,
    shutdown: &CancellationToken,
) -> Result<SessionEnd> {
    session_reading(shared, from, catalogs, stats, shutdown, Reading::Live).await
}

/// Runs one session of the direction `from` -> `from.other()`, reading as
/// `reading` says.
pub async fn session_reading(
    shared: &Shared,
    from: Side,
    catalogs: Catalogs,
    stats: Arc<Stats>,
    shutdown: &CancellationToken,
    mut reading: Reading,
) -> Result<SessionEnd> {
    let mut pass = Pass::default();
    loop {
        // Boxed: a run's state (two writers) is large for the callers'
        // futures.
        let ended = Box::pin(run(
            shared,
            from,
            catalogs.clone(),
            Arc::clone(&stats),
            shutdown,
            reading,
            pass,
        ))
        .await?;
        match ended {
            Ended::Done(end) => return Ok(end),
            Ended::Again {
                pass: next,
                reread_from,
            } => {
                if let (Reading::Replay { start, .. }, Some(from)) = (&mut reading, reread_from) {
                    // The rest of the transaction the dropped events sat in
                    // is skipped as the tail of one that began before.
                    *start = from;
                }
                pass = next;
            }
        }
    }
}

/// One run of a session: from the stored position, until it ends, fails, or
/// a pipelined batch must be applied again one statement at a time.
async fn run(
    shared: &Shared,
    from: Side,
    catalogs: Catalogs,
    stats: Arc<Stats>,
    shutdown: &CancellationToken,
    reading: Reading,
    pass: Pass,
) -> Result<Ended> {
    let config = &shared.config;
    let to = from.other();
    let source_name = shared.mapping.side(from).source.clone();
    let topic = config.topic(from, &source_name);
    // The topic this direction reads and the dead-letter topic must exist
    // before the first fetch or dead letter (a broker may not create topics
    // on use). Retried like any other transient failure.
    let kafka = config.kafka.as_client();
    runtime::kafka::ensure_topics(kafka, &[&topic, &config.kafka.dead_letter_topic]).await?;
    // Sessions of this direction's runs before this one that the server
    // may still run, holding locks: ended first, on each database.
    let forsaken = shared.sessions.opened_before(from);
    let target = Arc::new(connect(config, to).await?);
    shared.sessions.record(from, to, &target).await?;
    shared
        .sessions
        .end_forsaken(from, to, &target, &forsaken)
        .await?;
    let source = connect(config, from).await?;
    shared.sessions.record(from, from, &source).await?;
    shared
        .sessions
        .end_forsaken(from, from, &source, &forsaken)
        .await?;
    if from == Side::Legacy {
        // Read at every start: pairs another process recorded meanwhile
        // count from here on (see `PairCeiling`).
        let entities: Vec<&str> = shared.mapping.entities().iter().map(|e| e.name()).collect();
        shared
            .ceiling
            .read(
                &[(to.as_str(), &target), (from.as_str(), &source)],
                &entities,
            )
            .await?;
    }
    // What a run that failed had counted of its open target transaction
    // went with it.
    stats.batch_discarded();
    let (position, consumer) = match reading {
        Reading::Live => {
            let position = checkpoint::read(&target, to.as_str(), &source_name).await?;
            refuse_a_topic_that_ends_before(config, &topic, from, position).await?;
            (
                position,
                consumer(config, &topic, position, &config.kafka.group_id)?,
            )
        }
        Reading::Replay { start, .. } => {
            // Where the replay starts; its own group, never committed.
            let position = Position {
                offset: (start > 0).then_some(start - 1),
                commit_lsn: 0,
                commit_time_micros: 0,
            };
            let group = format!("{}.replay", config.kafka.group_id);
            (position, consumer(config, &topic, position, &group)?)
        }
    };
    info!(from = from.as_str(), topic = %topic, resume_after = ?position.offset, replay = !reading.is_live(), "applying");

    // A replay restarts from its beginning, not from a stored position: it
    // never pipelines, so it never has to run again.
    let pipelining = reading.is_live() && pass.careful_until.is_none();
    let mut lane = Lane::open(shared, from, catalogs.clone(), target, pipelining);
    if !reading.is_live() {
        lane.writer.replaying();
    }
    // A replay keeps one writer: it commits nothing before its end.
    let mut spare = if config.apply.writers > 1 && reading.is_live() {
        let target = Arc::new(connect(config, to).await?);
        shared.sessions.record(from, to, &target).await?;
        Some(Lane::open(shared, from, catalogs, target, pipelining))
    } else {
        None
    };
    if let Some(spare) = spare.as_mut() {
        // What a batch runs with two writers (its marker and order lock,
        // and, behind its own statements, the wait for the batch before and
        // the position store), prepared on both writers up front (see
        // `Writer::prepare`).
        let ahead = [checkpoint::STORE, ORDER_WAIT, MARKER_AND_ORDER_LOCK];
        lane.writer.prepare(&lane.target, &ahead).await?;
        spare.writer.prepare(&spare.target, &ahead).await?;
    }
    let mut session = Session {
        shared,
        from,
        topic,
        source_name,
        lane,
        spare,
        parked: None,
        drained: Instant::now(),
        group_offset: None,
        source,
        stats,
        position,
        boundary: position.offset,
        batch: Batch::new(),
        open: None,
        continuity: Continuity::new(
            fetch_start(position),
            position.next_offset(),
            config.apply.offset_gap_wait,
        ),
        next_prune: Instant::now(),
        next_waiting: Instant::now(),
        reading,
        deferred: Deferred::default(),
        replay: ReplayCount {
            read: 0,
            skipped_before: 0,
            progress: match reading {
                Reading::Live => None,
                Reading::Replay { start, end, .. } => Some(Progress::new(
                    &format!("replay {} into {}", from.as_str(), to.as_str()),
                    Some(end.saturating_sub(start).max(0) as u64),
                    REPLAY_PROGRESS_EVERY,
                )),
            },
        },
        seen: -1,
        rerun: Rerun::new(pass),
        statistics: Statistics::default(),
    };
    session.prune_when_due().await?;
    // Deletes a crash left un-reasserted.
    session
        .lane
        .writer
        .reassert_deletes(
            &session.lane.target,
            &session.source,
            &config.apply.marker_prefix,
        )
        .await?;
    match drive(&mut session, &consumer, shutdown).await {
        Ok(ended) => Ok(ended),
        // A deadlock between this session's two writers is a conflict the
        // footprints missed: applied again with one writer, not retried as
        // it was (it could deadlock again).
        Err(error)
            if session.lane.writer.pipelining()
                && (error.replans()
                    || (session.spare.is_some() || session.parked.is_some())
                        && error.sqlstate() == Some("40P01")) =>
        {
            session.replan(&error).await;
            let until = session.seen;
            Ok(Ended::Again {
                pass: session.pass(Some(until)),
                reread_from: None,
            })
        }
        Err(error) => Err(error),
    }
}

/// Reads the topic and applies it until the session ends or fails.
async fn drive(
    session: &mut Session<'_>,
    consumer: &StreamConsumer,
    shutdown: &CancellationToken,
) -> Result<Ended> {
    let shared = session.shared;
    let config = &shared.config;
    let linger = config.apply.batch_linger;
    let max_age = (linger * 10).max(Duration::from_millis(200));
    let mut last_received = Instant::now();
    loop {
        if session.replay_done() {
            session.commit(consumer, false).await?;
            return Ok(Ended::Done(session.replayed()));
        }
        let between = session.open.as_ref().is_none_or(|open| open.snapshot);
        // A parked batch's commit is recorded (and the pair lock let go)
        // as soon as the topic goes quiet.
        let wait = if (session.batch.open || session.parked.is_some()) && between {
            linger
        } else if !session.reading.is_live() {
            REPLAY_IDLE
        } else {
            // Quiet: woken for the next prune, or the next round of waiting
            // rows while there may be some.
            let next = if session.lane.writer.may_have_waiting_rows() {
                session.next_prune.min(session.next_waiting)
            } else {
                session.next_prune
            };
            next.saturating_duration_since(Instant::now())
                .max(Duration::from_millis(10))
        };
        let received = tokio::select! {
            biased;
            () = shutdown.cancelled() => None,
            received = tokio::time::timeout(wait, consumer.recv()) => Some(received),
        };
        match received {
            None => {
                if session.open.is_none() {
                    session.commit(consumer, false).await?;
                } else {
                    session.rollback().await?;
                }
                return Ok(Ended::Done(SessionEnd::Shutdown));
            }
            Some(Err(_elapsed)) => {
                if session.open.as_ref().is_some_and(|open| open.snapshot) {
                    session.end_snapshot_group().await?;
                }
                if session.open.is_none() {
                    session.commit(consumer, false).await?;
                }
                if !session.reading.is_live() && last_received.elapsed() >= REPLAY_IDLE {
                    warn!(topic = %session.topic, "no message for a while before the replay's end offset; ending the replay");
                    session.rollback_open().await?;
                    session.commit(consumer, false).await?;
                    return Ok(Ended::Done(session.replayed()));
                }
            }
            Some(Ok(message)) => {
                let message = message.map_err(|e| ApplyError::kafka("consume", e))?;
                last_received = Instant::now();
                session.check_topic_identity(&message)?;
                if !session.in_order(consumer, message.offset()).await? {
                    continue;
                }
                session.handle(&message).await?;
                session.apply_deferred().await?;
                session.count_replayed(message.offset());
                if let Some(from) = session.deferred.reread {
                    session.commit(consumer, false).await?;
                    let careful_until = session.rerun.careful_until;
                    return Ok(Ended::Again {
                        pass: session.pass(careful_until),
                        reread_from: Some(from),
                    });
                }
                let full = session.batch.events >= config.apply.batch_max_events
                    || session.batch.started.elapsed() >= max_age;
                if session.open.is_none() && full {
                    // The next batch may start while this one commits.
                    session.commit(consumer, true).await?;
                }
            }
        }
        if !session.batch.open && session.open.is_none() {
            session.prune_when_due().await?;
            session.retry_waiting_when_due().await?;
        }
    }
}
