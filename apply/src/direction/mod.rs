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
//! [`capture::continuity`]).

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use capture::continuity::{self, Continuity, Next};
use capture::progress::Progress;

use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::BorrowedMessage;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use schemas::codec::Codec;
use schemas::event::{CaptureMode, ChangeEvent};
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::checkpoint::{self, Position};
use crate::config::Config;
use crate::deadletter::{DeadLetters, Origin};
use crate::error::{ApplyError, Result};
use crate::footprint::Footprint;
pub use crate::mapping::Catalogs;
use crate::mapping::{Catalog, Mapping, Side};
use crate::stats::Stats;
use crate::writer::pairing::PairCeiling;
use crate::writer::{Statistics, Writer};

/// How far before its stored position a direction starts fetching. A broker
/// may answer a fetch at an offset inside a record batch with the next batch
/// (Tansu 0.6 does), which would silently skip the rest of that batch; starting
/// at least one producer batch earlier (capture's batches hold at most 10,000
/// messages) and skipping the messages already applied makes resuming exact on
/// any broker. The first message received is checked to be at or before the
/// position.
const RESUME_LOOKBACK: i64 = 20_000;

/// Everything the two directions share.
pub struct Shared {
    pub config: Config,
    pub mapping: Arc<Mapping>,
    pub codec: Codec,
    pub dead_letters: DeadLetters,
    /// Which legacy ids may be paired (see [`PairCeiling`]).
    pub ceiling: Arc<PairCeiling>,
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

/// The source transaction being applied.
struct Open {
    commit_lsn: u64,
    /// How the transaction was captured: only streamed ones move the position's LSN.
    mode: CaptureMode,
    commit_micros: i64,
    next_position: u64,
    echo: bool,
    /// Set when the transaction failed: its remaining events are dead-lettered.
    failed: Option<String>,
    first_offset: i64,
    /// Raw messages kept to dead-letter the transaction whole if it fails.
    kept: Vec<(i64, Vec<u8>)>,
    kept_all: bool,
    /// Whether the transaction was already re-applied once after a race.
    retried: bool,
    /// A group of snapshot events rather than a source transaction: snapshot
    /// pages come from another producer than the streaming capture, so they
    /// can interleave with its transactions on the topic (see
    /// [`Session::handle`]); a group ends at a page's last event or where a
    /// streaming transaction begins, and moves no commit LSN.
    snapshot: bool,
    /// The offset of the group's latest event.
    last_offset: i64,
}

/// One direction's session state.
struct Session<'a> {
    shared: &'a Shared,
    from: Side,
    topic: String,
    source_name: String,
    /// The writer of the open target transaction: its connection, its
    /// `Writer`, and what it counts until it commits.
    target: Arc<Client>,
    writer: Writer,
    writer_stats: Arc<Stats>,
    /// The other writer, when there are two (see [`Lane`]): idle...
    spare: Option<Lane>,
    /// ...or committing the batch before the open one.
    parked: Option<Parked>,
    /// The order lock of the open batch (see [`ORDER_LOCK`]), and the next's.
    batch_seq: i32,
    next_seq: i32,
    /// When both writers last had no batch open: the pair lock is let go at
    /// least every [`PAIR_LOCK_TURN`].
    drained: Instant,
    /// The consumer group offset to commit next (monitoring only).
    group_offset: Option<i64>,
    source: Client,
    stats: Arc<Stats>,
    position: Position,
    /// The last offset at a transaction boundary: what the position may store.
    boundary: Option<i64>,
    batch_open: bool,
    batch_events: usize,
    batch_started: Instant,
    open: Option<Open>,
    /// Whether every offset after the position was received.
    continuity: Continuity,
    /// When expired tombstones are next pruned.
    next_prune: Instant,
    /// Source commit times (Unix micros) of the transactions in the open batch.
    source_commits: Vec<i64>,
    /// The trace span of the open batch (LSN range, offsets).
    batch_span: tracing::Span,
    reading: Reading,
    /// Snapshot events that arrived inside a streaming transaction, applied
    /// right after it (in the same target transaction).
    deferred: VecDeque<(i64, Vec<u8>)>,
    /// The offset of the first snapshot event the open streaming transaction
    /// held beyond `deferred_snapshot_buffer`: from there on its snapshot
    /// events are dropped, to be read again once it has ended.
    overflow: Option<i64>,
    /// The first snapshot event dropped, once the transaction it sat in has
    /// ended: the session must read its topic again from there (a live
    /// session's stored position stops right before it).
    reread: Option<i64>,
    /// Replay: messages read, messages skipped as committed before the start
    /// time, and the progress shown.
    read: u64,
    skipped_before: u64,
    progress: Option<Progress>,
    /// The highest offset handled.
    seen: i64,
    /// Statements are pipelined except up to this offset, which a pipelined
    /// pass failed at or before (see [`Writer::pipeline`]).
    careful_until: Option<i64>,
    /// Offsets an earlier run sent to the dead-letter topic (see [`Pass`])...
    dead_lettered_before: BTreeSet<i64>,
    /// ...and those this run sent, since the stored position.
    dead_lettered: BTreeSet<i64>,
    statistics: Statistics,
}

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
///   [`PAIR_LOCK_TURN`] a batch that holds it commits before the next
///   starts, so the other direction gets its turn.
struct Lane {
    target: Arc<Client>,
    writer: Writer,
    stats: Arc<Stats>,
}

impl Lane {
    /// A writer of `from`'s direction on the target connection `target`,
    /// with counts of its own.
    fn open(
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
struct Parked {
    lane: Lane,
    done: Committed,
}

/// What the session records once a batch has committed.
struct Committed {
    /// The offset its position stored.
    offset: i64,
    /// Its order lock.
    seq: i32,
    events: usize,
    started: Instant,
    source_commits: Vec<i64>,
    span: tracing::Span,
    footprint: Footprint,
}

/// The advisory lock class of batch order locks (`pg_advisory_xact_lock(class,
/// batch number)`): "SYNO".
const ORDER_LOCK: i32 = 0x5359_4E4F;

/// Waits for the order lock of the batch before.
const ORDER_WAIT: &str = "SELECT pg_catalog.pg_advisory_xact_lock($1, $2)";

/// A batch's first statement: the echo marker, by which its writes are
/// recognised when they come back on the target's topic.
const MARKER: &str = "SELECT pg_catalog.pg_logical_emit_message(true, $1, $2)";

/// The echo marker and, with two writers, the batch's own order lock, in
/// one round trip: the lock is held before the batch can be parked. Sent
/// ahead instead, the lock could reach the server after the next batch,
/// on the other connection, had asked for it: that batch would hold it,
/// the batch it belongs to would wait for it, and the next batch would
/// wait in apply for that one's commit, a cycle no server sees.
const MARKER_AND_ORDER_LOCK: &str = "SELECT pg_catalog.pg_logical_emit_message(true, $1, $2), \
     pg_catalog.pg_advisory_xact_lock($3, $4)";

/// How long a direction's writers may keep the pair lock without both
/// being idle once.
const PAIR_LOCK_TURN: Duration = Duration::from_secs(1);

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

/// What one run of a session hands to the next, which reads some of the same
/// messages again.
#[derive(Debug, Default)]
struct Pass {
    /// Statements are pipelined except up to this offset, which a pipelined
    /// run failed at or before (see [`Writer::pipeline`]).
    careful_until: Option<i64>,
    /// Offsets after the stored position that an earlier run already sent to
    /// the dead-letter topic: not sent again (its rollback undid the rows,
    /// not the dead letters).
    dead_lettered: BTreeSet<i64>,
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
    let kafka = config.kafka.as_capture();
    capture::kafka::ensure_topics(&kafka, &[&topic, &config.kafka.dead_letter_topic]).await?;
    let target = Arc::new(connect(config, to).await?);
    let source = connect(config, from).await?;
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
            };
            let group = format!("{}.replay", config.kafka.group_id);
            (position, consumer(config, &topic, position, &group)?)
        }
    };
    info!(from = from.as_str(), topic = %topic, resume_after = ?position.offset, replay = !reading.is_live(), "applying");

    // A replay restarts from its beginning, not from a stored position: it
    // never pipelines, so it never has to run again.
    let pipelining = reading.is_live() && pass.careful_until.is_none();
    let Lane {
        target,
        mut writer,
        stats: writer_stats,
    } = Lane::open(shared, from, catalogs.clone(), target, pipelining);
    if !reading.is_live() {
        writer.replaying();
    }
    // A replay keeps one writer: it commits nothing before its end.
    let mut spare = if config.apply.writers > 1 && reading.is_live() {
        let target = Arc::new(connect(config, to).await?);
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
        writer.prepare(&target, &ahead).await?;
        spare.writer.prepare(&spare.target, &ahead).await?;
    }
    let mut session = Session {
        shared,
        from,
        topic,
        source_name,
        target,
        writer,
        writer_stats,
        spare,
        parked: None,
        batch_seq: 0,
        next_seq: 0,
        drained: Instant::now(),
        group_offset: None,
        source,
        stats,
        position,
        boundary: position.offset,
        batch_open: false,
        batch_events: 0,
        batch_started: Instant::now(),
        open: None,
        continuity: Continuity::new(
            fetch_start(position),
            position.next_offset(),
            config.apply.offset_gap_wait,
        ),
        next_prune: Instant::now(),
        source_commits: Vec::new(),
        batch_span: tracing::Span::none(),
        reading,
        deferred: VecDeque::new(),
        overflow: None,
        reread: None,
        read: 0,
        skipped_before: 0,
        seen: -1,
        careful_until: pass.careful_until,
        dead_lettered_before: pass.dead_lettered,
        dead_lettered: BTreeSet::new(),
        statistics: Statistics::default(),
        progress: match reading {
            Reading::Live => None,
            Reading::Replay { start, end, .. } => Some(Progress::new(
                &format!("replay {} into {}", from.as_str(), to.as_str()),
                Some(end.saturating_sub(start).max(0) as u64),
                REPLAY_PROGRESS_EVERY,
            )),
        },
    };
    session.prune_when_due().await?;
    // Deletes a crash left un-reasserted.
    session
        .writer
        .reassert_deletes(
            &session.target,
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
            if session.writer.pipelining()
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
        let wait = if (session.batch_open || session.parked.is_some()) && between {
            linger
        } else if !session.reading.is_live() {
            REPLAY_IDLE
        } else {
            session
                .next_prune
                .saturating_duration_since(Instant::now())
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
                if !session.in_order(consumer, message.offset()).await? {
                    continue;
                }
                session.handle(&message).await?;
                session.apply_deferred().await?;
                session.count_replayed(message.offset());
                if let Some(from) = session.reread {
                    session.commit(consumer, false).await?;
                    let careful_until = session.careful_until;
                    return Ok(Ended::Again {
                        pass: session.pass(careful_until),
                        reread_from: Some(from),
                    });
                }
                let full = session.batch_events >= config.apply.batch_max_events
                    || session.batch_started.elapsed() >= max_age;
                if session.open.is_none() && full {
                    // The next batch may start while this one commits.
                    session.commit(consumer, true).await?;
                }
            }
        }
        if !session.batch_open && session.open.is_none() {
            session.prune_when_due().await?;
        }
    }
}

/// How long a replay waits for a message before it ends short of its end.
const REPLAY_IDLE: Duration = Duration::from_secs(30);

/// How often a replay logs its progress when stderr is not a terminal.
const REPLAY_PROGRESS_EVERY: Duration = Duration::from_secs(10);

fn consumer(
    config: &Config,
    topic: &str,
    position: Position,
    group_id: &str,
) -> Result<StreamConsumer> {
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", &config.kafka.brokers)
        .set("group.id", group_id)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .set("fetch.wait.max.ms", "10");
    for (key, value) in &config.kafka.properties {
        client.set(key, value.expose());
    }
    let consumer: StreamConsumer = client
        .create()
        .map_err(|e| ApplyError::kafka("create the consumer", e))?;
    let mut assignment = TopicPartitionList::new();
    // An offset, never `Offset::Beginning`: a logical offset is resolved by
    // a query that librdkafka, not knowing the partition's leader yet at
    // assignment, puts off by half a second (every start of apply on a
    // topic without a stored position began fetching late). Offset 0
    // is fetched at once; where the log no longer starts at 0, the broker
    // answers out of range and `auto.offset.reset = earliest` starts at its
    // beginning, as for a stored position that retention has passed.
    let offset = Offset::Offset(fetch_start(position));
    assignment
        .add_partition_offset(topic, 0, offset)
        .map_err(|e| ApplyError::kafka("assign", e))?;
    consumer
        .assign(&assignment)
        .map_err(|e| ApplyError::kafka("assign", e))?;
    Ok(consumer)
}

/// Where a session starts fetching: a little before the position, skipping
/// what is already applied (see [`RESUME_LOOKBACK`]); without a position,
/// from the beginning.
fn fetch_start(position: Position) -> i64 {
    position
        .next_offset()
        .map_or(0, |next| next.saturating_sub(RESUME_LOOKBACK).max(0))
}

impl Session<'_> {
    fn target_side(&self) -> &'static str {
        self.from.other().as_str()
    }

    /// Runs `sql` once the statements sent before it are settled.
    async fn sql(&mut self, sql: &str) -> Result<()> {
        self.writer.settle(&self.target, &self.source).await?;
        self.target.batch_execute(sql).await.map_err(|e| {
            ApplyError::postgres(
                self.target_side(),
                sql.split_whitespace().next().unwrap_or("sql").to_owned(),
                e,
            )
        })
    }

    /// Sends `sql`, a statement whose only answer is whether it failed
    /// (see [`Writer::settle`]).
    async fn sql_ahead(&mut self, sql: &'static str) -> Result<()> {
        self.writer
            .send_simple(&self.target, &self.source, sql)
            .await
    }

    /// What the next run, which reads from the stored position again, needs
    /// to know of this one.
    fn pass(&mut self, careful_until: Option<i64>) -> Pass {
        let mut dead_lettered = std::mem::take(&mut self.dead_lettered_before);
        dead_lettered.append(&mut self.dead_lettered);
        Pass {
            careful_until,
            dead_lettered,
        }
    }

    /// A pipelined pass failed: rolls the target transaction back, so that
    /// the session runs again from the stored position, one statement at a
    /// time up to where this one got. What the rolled-back part counted in
    /// the statistics is dropped with it (see [`Stats`]) and counted when
    /// applied again; what it dead-lettered is not sent again (see
    /// [`Pass`]).
    async fn replan(&mut self, error: &ApplyError) {
        info!(
            topic = %self.topic,
            after_offset = ?self.position.offset,
            until_offset = self.seen,
            kind = error.kind(),
            sqlstate = error.sqlstate(),
            "a pipelined batch failed; applying it again one statement at a time"
        );
        self.stats.replanned();
        capture::telemetry::metrics::apply_error(crate::monitor::direction(self.from), "replan");
        if let Err(error) = self.rollback().await {
            debug!(error = %capture::error_chain(&error), "rolling back the pipelined batch failed; it ends with the session");
        }
    }

    async fn begin_batch(&mut self) -> Result<()> {
        if self.batch_open {
            return Ok(());
        }
        self.sql("BEGIN").await?;
        let content = format!("{}:{}", self.source_name, self.position.commit_lsn);
        let prefix = &self.shared.config.apply.marker_prefix;
        if self.spare.is_some() || self.parked.is_some() {
            self.batch_seq = self.next_seq;
            self.next_seq = self.next_seq.wrapping_add(1);
            self.writer
                .execute_prepared(
                    &self.target,
                    MARKER_AND_ORDER_LOCK,
                    &[prefix, &content, &ORDER_LOCK, &self.batch_seq],
                    "write the echo marker and take the order lock",
                )
                .await?;
        } else {
            self.writer
                .execute_prepared(
                    &self.target,
                    MARKER,
                    &[prefix, &content],
                    "write the echo marker",
                )
                .await?;
        }
        self.batch_open = true;
        self.batch_events = 0;
        self.batch_started = Instant::now();
        self.source_commits.clear();
        self.batch_span = tracing::info_span!(
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
    /// [`Lane`]). Otherwise every batch has committed when this returns.
    async fn commit(&mut self, consumer: &StreamConsumer, park: bool) -> Result<()> {
        debug_assert!(
            self.open.is_none(),
            "commit only between source transactions"
        );
        let committed = self.commit_batch(park).await;
        if let Some(next) = self.group_offset.take() {
            let mut offsets = TopicPartitionList::new();
            if offsets
                .add_partition_offset(&self.topic, 0, Offset::Offset(next))
                .is_ok()
            {
                if let Err(error) = consumer.commit(&offsets, CommitMode::Async) {
                    debug!(%error, "committing the consumer group offset failed; the next commit carries it");
                }
            }
        }
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
            .filter(|offset| stored != Some(*offset) || self.batch_open)
        else {
            return if park {
                Ok(())
            } else {
                self.finish_parked().await
            };
        };
        self.begin_batch().await?;
        let started = self.batch_started;
        // Commits stay in source order: the parked batch's first.
        self.wait_for_parked().await?;
        self.batch_span
            .record("last_commit_lsn", self.position.commit_lsn);
        let turn = self.writer.holds_pair_lock() && self.drained.elapsed() >= PAIR_LOCK_TURN;
        let park = park && self.spare.is_some() && self.writer.pipelining() && !turn;
        if !park {
            self.writer.settle(&self.target, &self.source).await?;
        }
        if self.reading.is_live() {
            let params: Vec<Box<dyn tokio_postgres::types::ToSql + Sync + Send>> = vec![
                Box::new(self.source_name.clone()),
                Box::new(self.topic.clone()),
                Box::new(0i32),
                Box::new(offset),
                Box::new(self.position.commit_lsn as i64),
            ];
            self.writer
                .send_statement(
                    &self.target,
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
        let alone = self.writer.recorded_deletes();
        let (footprint, hidden) = self.writer.take_footprint();
        let done = Committed {
            offset,
            seq: self.batch_seq,
            events: self.batch_events,
            started,
            source_commits: std::mem::take(&mut self.source_commits),
            span: std::mem::replace(&mut self.batch_span, tracing::Span::none()),
            footprint,
        };
        if park && !hidden && !alone {
            // Sent, not waited for: the database writes this batch while the
            // other writer takes the next.
            self.writer
                .send_simple(&self.target, &self.source, "COMMIT")
                .await?;
            self.writer.commit_sent();
            self.batch_open = false;
            let lane = self.switch_lane();
            self.parked = Some(Parked { lane, done });
            return Ok(());
        }
        self.sql("COMMIT").await?;
        self.batch_open = false;
        self.drained = Instant::now();
        self.committed(done, &Arc::clone(&self.writer_stats));
        lane_committed(
            &mut self.writer,
            &self.target,
            &self.source,
            &mut self.statistics,
            self.shared,
            self.from,
        )
        .await?;
        if hidden {
            if let Some(spare) = self.spare.as_mut() {
                spare.writer.forget_committed_pairs();
            }
        }
        Ok(())
    }

    /// Makes the spare writer the open one; returns the one that was open.
    fn switch_lane(&mut self) -> Lane {
        let spare = self.spare.take().expect("a spare writer to switch to");
        Lane {
            target: std::mem::replace(&mut self.target, spare.target),
            writer: std::mem::replace(&mut self.writer, spare.writer),
            stats: std::mem::replace(&mut self.writer_stats, spare.stats),
        }
    }

    /// Waits until the parked batch has committed. An open batch first asks
    /// for the parked one's order lock, so that should the parked batch
    /// wait for a lock the open one holds, the server sees the cycle.
    async fn wait_for_parked(&mut self) -> Result<()> {
        let Some(seq) = self.parked.as_ref().map(|parked| parked.done.seq) else {
            return Ok(());
        };
        if self.batch_open {
            // Sent behind the open batch's statements, not waited for: they
            // go on while the parked batch commits. Its reply is read with
            // theirs.
            let params: Vec<Box<dyn tokio_postgres::types::ToSql + Sync + Send>> =
                vec![Box::new(ORDER_LOCK), Box::new(seq)];
            self.writer
                .send_statement(
                    &self.target,
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
    async fn finish_parked(&mut self) -> Result<()> {
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
                debug!(error = %capture::error_chain(&release), "letting the pair lock go after a failed commit failed; it ends with the session");
            }
            self.spare = Some(lane);
            return Err(error);
        }
        if self.spare.is_none() && !self.batch_open {
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

    /// The session's record of a batch that committed: the position, what
    /// was counted, the trace span, the dead letters no run sends again.
    fn committed(&mut self, done: Committed, writer_stats: &Stats) {
        let Committed {
            offset,
            events,
            started,
            source_commits,
            span,
            ..
        } = done;
        // No run reads these again: the stored position passed them.
        for offsets in [&mut self.dead_lettered_before, &mut self.dead_lettered] {
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
        if self.careful_until.is_some_and(|until| offset >= until) {
            self.careful_until = None;
            self.writer.pipeline(true);
            if let Some(spare) = self.spare.as_mut() {
                spare.writer.pipeline(true);
            }
        }
        if self.reading.is_live() {
            self.group_offset = Some(offset + 1);
        }
    }

    /// Forgets expired tombstones when the prune interval has passed; runs
    /// between target transactions.
    async fn prune_when_due(&mut self) -> Result<()> {
        if Instant::now() < self.next_prune {
            return Ok(());
        }
        let pruned = prune_tombstones(
            &self.target,
            self.target_side(),
            self.shared.mapping.conflicts().tombstone_retention,
        )
        .await?;
        if pruned > 0 {
            debug!(pruned, "expired tombstones pruned");
        }
        self.next_prune = Instant::now() + self.shared.config.apply.tombstone_prune_interval;
        Ok(())
    }

    async fn rollback(&mut self) -> Result<()> {
        self.writer_stats.batch_discarded();
        self.writer.discard().await;
        if self.batch_open {
            self.sql("ROLLBACK").await?;
            self.batch_open = false;
        }
        self.writer.rolled_back();
        self.open = None;
        self.writer.release_pair_lock(&self.source).await?;
        // The parked batch's commit was sent: it stands or fails on its own,
        // once the open batch has let go of its locks (it may wait for one).
        self.finish_parked().await
    }

    /// Whether the message at `offset` is the one due (see [`Continuity`]).
    /// When offsets before it are missing, fetches again from the first
    /// one after a pause and answers false; a gap that stays open is
    /// logged and passed, or refused when it follows the position.
    async fn in_order(&mut self, consumer: &StreamConsumer, offset: i64) -> Result<bool> {
        match self.continuity.received(offset, Instant::now()) {
            Next::Handle => Ok(true),
            Next::Drop => Ok(false),
            Next::FetchAgain {
                from,
                pause,
                missing,
                attempt,
                slow,
            } => {
                if attempt == 0 {
                    self.stats.gap_fetched();
                    info!(topic = %self.topic, first_missing = missing.0, received = offset, fetch_from = from, "offsets missing before a message; fetching them again");
                } else if slow {
                    let wait = self.shared.config.apply.offset_gap_wait;
                    warn!(topic = %self.topic, first_missing = missing.0, received = offset, open_s = capture::continuity::SLOW_GAP.as_secs(), wait_s = wait.as_secs(), "offsets still missing; waiting for them up to apply.offset_gap_wait");
                } else {
                    debug!(topic = %self.topic, first_missing = missing.0, received = offset, attempt, "offsets still missing; fetching them again");
                }
                continuity::fetch_again(consumer, &self.topic, from, pause)
                    .await
                    .map_err(|e| ApplyError::kafka("seek back to offsets missing", e))?;
                Ok(false)
            }
            Next::HandleAfterGap { missing } => {
                let waited = self.shared.config.apply.offset_gap_wait;
                error!(
                    topic = %self.topic,
                    first_missing = missing.0,
                    last_missing = missing.1 - 1,
                    waited_s = waited.as_secs(),
                    "offsets never became readable; continuing without them (check the producers and the topic's cleanup policy)"
                );
                capture::telemetry::metrics::apply_error(
                    crate::monitor::direction(self.from),
                    "offset_gap",
                );
                Ok(true)
            }
            Next::Missing { missing } => {
                error!(
                    topic = %self.topic,
                    expected = missing.0,
                    received = missing.1,
                    "the broker skipped messages after apply's position; refusing to continue"
                );
                Err(ApplyError::Config(format!(
                    "topic {}: the first message fetched is at offset {}, after apply's position {}: messages are missing (retention, or a broker that skips within a batch)",
                    self.topic, missing.1, missing.0
                )))
            }
        }
    }

    async fn handle(&mut self, message: &BorrowedMessage<'_>) -> Result<()> {
        self.handle_payload(message.offset(), message.payload().unwrap_or_default())
            .await
    }

    /// One message. Snapshot events (`capture snapshot`, another producer
    /// than the streaming capture) may sit anywhere on the topic, even inside
    /// a streaming transaction: there they are deferred until it ends; a
    /// group of them is ended where a streaming transaction begins. They
    /// are applied whatever their position in their page.
    async fn handle_payload(&mut self, offset: i64, payload: &[u8]) -> Result<()> {
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
            Reading::Live => Position::tracks(event.mode) && self.position.covers(tx.commit_lsn),
            Reading::Replay { from_micros, .. } => {
                let before = from_micros.is_some_and(|from| tx.commit_time_micros < from);
                self.skipped_before += u64::from(before);
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
            .is_some_and(|parked| parked.done.footprint.overlaps(self.writer.touched()))
        {
            self.wait_for_parked().await?;
        }
        self.batch_events += 1;
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
            self.writer_stats.echoes(1);
            return Ok(());
        }
        if let Some(reason) = open.failed.clone() {
            return self.dead_letter(offset, payload, &reason).await;
        }
        match self.writer.stage(&self.target, &self.source, event).await {
            Ok(_) => Ok(()),
            Err(error) if error.is_retryable() => Err(error),
            // Its cause may lie in an earlier source transaction.
            Err(error) if self.writer.pipelining() && error.replans() => Err(error),
            Err(error) => {
                let reason = rejection(event, &error);
                self.recover(&error, &reason).await
            }
        }
    }

    /// A statement of the open transaction failed for good. When the cause is
    /// a race with the target's own writers (a parent deleted or a unique
    /// value taken between the decision and the write), the transaction is
    /// applied once more from its kept messages: the second attempt sees the
    /// new state (an orphan is skipped, a natural key is linked). Otherwise,
    /// or when that fails too, it is dead-lettered.
    async fn recover(&mut self, error: &ApplyError, reason: &str) -> Result<()> {
        let race = matches!(error.sqlstate(), Some("23503" | "23505"));
        let Some(open) = self.open.as_mut() else {
            return Ok(());
        };
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
        self.writer.forget_transaction();
        for (_, payload) in &kept {
            let event = match self.shared.codec.decode(payload) {
                Ok(event) => event,
                Err(error) => return self.fail(&format!("undecodable message: {error}")).await,
            };
            match self.writer.stage(&self.target, &self.source, &event).await {
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

    /// The open source transaction cannot be applied: roll it back and
    /// dead-letter what was kept of it.
    async fn fail(&mut self, reason: &str) -> Result<()> {
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
        self.writer.forget_transaction();
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

    /// The source transaction's last event arrived.
    async fn finish(&mut self, offset: i64) -> Result<()> {
        let Some(open) = self.open.as_ref() else {
            return Ok(());
        };
        if !open.echo && open.failed.is_none() {
            match self.writer.flush(&self.target, &self.source).await {
                Ok(()) => {}
                Err(error) if error.is_retryable() => return Err(error),
                Err(error) if self.writer.pipelining() && error.replans() => return Err(error),
                Err(error) => {
                    let reason = capture::error_chain(&error);
                    self.recover(&error, &reason).await?;
                    // A successful re-application staged everything again.
                    let failed = self.open.as_ref().is_none_or(|o| o.failed.is_some());
                    if !failed {
                        if let Err(error) = self.writer.flush(&self.target, &self.source).await {
                            if error.is_retryable() {
                                return Err(error);
                            }
                            self.fail(&capture::error_chain(&error)).await?;
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
                self.writer.keep_transaction();
                self.writer_stats.transaction(open.commit_micros);
                self.source_commits.push(open.commit_micros);
            }
        }
        if Position::tracks(open.mode) {
            self.position.applied(open.commit_lsn);
        }
        // Only the streaming transaction the dropped events sat in (or its
        // replay, after it was cut short) ends their wait.
        let overflow = if open.snapshot {
            None
        } else {
            self.overflow.take()
        };
        match overflow {
            // Stored up to the first snapshot event dropped: after the commit
            // the session reads again from there, skipping this transaction's
            // events by their commit LSN (applied) and applying the snapshot
            // events. A crash before that reads them again as well.
            Some(first_dropped) => {
                self.boundary = self.boundary.max(Some(first_dropped - 1));
                self.reread = Some(first_dropped);
                self.stats.snapshot_reread();
            }
            // Deferred snapshot events end before the transaction they sat in.
            None => self.boundary = self.boundary.max(Some(offset)),
        }
        Ok(())
    }

    /// Keeps a snapshot event that arrived inside the open streaming
    /// transaction, to apply it once that has ended: at most
    /// `deferred_snapshot_buffer` of them. The first one beyond drops them
    /// all (memory stays bounded however long the transaction is), and
    /// those that follow are dropped too: once the transaction has ended,
    /// the session reads the topic again from the first one dropped (see
    /// [`Self::finish`]).
    fn defer(&mut self, offset: i64, payload: &[u8]) {
        if self.overflow.is_some() {
            return;
        }
        if self.deferred.len() < self.shared.config.apply.deferred_snapshot_buffer {
            self.deferred.push_back((offset, payload.to_vec()));
            return;
        }
        let first = self.deferred.front().map_or(offset, |(first, _)| *first);
        info!(
            topic = %self.topic,
            first_offset = first,
            kept = self.deferred.len(),
            "snapshot events inside a long streaming transaction; reading them again after it"
        );
        self.deferred.clear();
        self.overflow = Some(first);
    }

    /// Ends the open group of snapshot events early (a streaming transaction
    /// begins, or the topic went quiet); the rest of its page follows later.
    async fn end_snapshot_group(&mut self) -> Result<()> {
        if let Some(open) = self.open.as_ref().filter(|open| open.snapshot) {
            let last_offset = open.last_offset;
            self.finish(last_offset).await?;
        }
        Ok(())
    }

    /// Applies the snapshot events deferred by a streaming transaction that
    /// has ended.
    async fn apply_deferred(&mut self) -> Result<()> {
        while self.open.as_ref().is_none_or(|open| open.snapshot) {
            let Some((offset, payload)) = self.deferred.pop_front() else {
                break;
            };
            self.handle_payload(offset, &payload).await?;
        }
        Ok(())
    }

    /// Replay: counts a message read and shows progress.
    fn count_replayed(&mut self, offset: i64) {
        if let Reading::Replay { start, .. } = self.reading {
            if offset >= start {
                self.read += 1;
                if let Some(progress) = self.progress.as_mut() {
                    progress.advance(1);
                }
            }
        }
    }

    /// Replay: whether everything up to the end offset was applied.
    fn replay_done(&self) -> bool {
        match self.reading {
            Reading::Live => false,
            Reading::Replay { start, end, .. } => {
                self.open.is_none()
                    && self.deferred.is_empty()
                    && (end <= start || self.boundary.is_some_and(|b| b >= end - 1))
            }
        }
    }

    /// Replay: the end, progress finished.
    fn replayed(&mut self) -> SessionEnd {
        if let Some(progress) = self.progress.take() {
            progress.finish();
        }
        SessionEnd::Replayed {
            read: self.read,
            skipped_before: self.skipped_before,
        }
    }

    /// Replay ending short: drops an unfinished source transaction.
    async fn rollback_open(&mut self) -> Result<()> {
        if self.open.as_ref().is_some_and(|open| open.snapshot) {
            return self.end_snapshot_group().await;
        }
        self.abandon().await
    }

    /// Drops the open transaction's work (it is being replayed).
    async fn abandon(&mut self) -> Result<()> {
        if let Some(open) = self.open.take() {
            if !open.echo {
                self.sql("ROLLBACK TO SAVEPOINT source_tx; RELEASE SAVEPOINT source_tx")
                    .await?;
                self.writer.forget_transaction();
            }
        }
        Ok(())
    }

    /// Sends the message at `offset` to the dead-letter topic, unless an
    /// earlier run over the same messages did (see [`Pass`]).
    async fn dead_letter(&mut self, offset: i64, payload: &[u8], reason: &str) -> Result<()> {
        if self.dead_lettered_before.contains(&offset) {
            debug!(topic = %self.topic, offset, "dead-lettered by an earlier run; not sent again");
            return Ok(());
        }
        self.dead_lettered.insert(offset);
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

/// A writer's part of a commit: its pairs are durable, the pair lock and
/// deletes to re-assert are worked off, planner statistics refreshed when due.
async fn lane_committed(
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

/// Why an event could not be applied: its table and the error chain (which
/// names columns and kinds of problem, never row values).
fn rejection(event: &ChangeEvent, error: &ApplyError) -> String {
    format!(
        "{}.{}: {}",
        event.schema,
        event.table,
        capture::error_chain(error)
    )
}

/// Forgets tombstones older than the retention: an update older than that is
/// no longer expected to arrive. Ledger entries of the same age go too: a
/// change that late no longer gets the same-source tie rule, and capture's
/// polling no longer flags the rows as echoes (see `checkpoint`). Runs at
/// each session start and then every `apply.tombstone_prune_interval`.
/// Returns the number of tombstones pruned.
pub async fn prune_tombstones(
    client: &Client,
    side: &'static str,
    retention: Duration,
) -> Result<u64> {
    let seconds = retention.as_secs_f64();
    client
        .execute(
            "DELETE FROM syncbridge.apply_ledger WHERE written_at < now() - make_interval(secs => $1)",
            &[&seconds],
        )
        .await
        .map_err(|e| ApplyError::postgres(side, "prune the apply ledger", e))?;
    client
        .execute(
            "DELETE FROM syncbridge.row_version WHERE deleted AND updated_at < now() - make_interval(secs => $1)",
            &[&seconds],
        )
        .await
        .map_err(|e| ApplyError::postgres(side, "prune tombstones", e))
}
