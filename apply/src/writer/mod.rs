//! Turns change events into target statements: mapping, id correspondence,
//! lookups, and multi-row statements that decide conflicts as they write.
//!
//! Events are staged into *runs*: consecutive changes of one entity with the
//! same operation and shape. A run becomes one statement of up to
//! `statement_max_rows` rows; a run ends when the next event differs or would
//! touch a row already in it, so source order is kept wherever it matters
//! (parents before children, two changes of one row in order).

pub mod pairing;

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll};

use schemas::event::{ChangeEvent, Op, Value};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Statement};
use tracing::{debug, warn};
use uuid::Uuid;

use crate::conflict::{self, quote, quote_table, ColumnSpec, Merge, ParentCheck, Shape, PROBE};
use crate::correspondence::{derived_legacy_id_sql, derived_platform_id, PairCeiling};
use crate::error::{ApplyError, Result};
use crate::footprint::{self, Footprint, Touch};
use crate::mapping::{
    to_target, Catalog, Catalogs, Entity, Field, Mapping, Row, Side, TargetRow, TargetValue,
};
use crate::stats::Stats;

/// The statements prepared on one connection, by their text.
///
/// A statement run by its text is prepared in a round trip of its own every
/// time (parse, then bind and execute); one prepared once runs in one round
/// trip, and the server keeps its plan. A connection's statements live as
/// long as it does, as does the writer (one per session). Shared through
/// `&self`, so that reads made from `&self` methods use it too.
#[derive(Default)]
struct Prepared(std::sync::Mutex<HashMap<String, Statement>>);

impl Prepared {
    async fn get(
        &self,
        client: &Client,
        sql: &str,
    ) -> std::result::Result<Statement, tokio_postgres::Error> {
        if let Some(statement) = self.cached(sql) {
            return Ok(statement);
        }
        let statement = client.prepare(sql).await?;
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(sql.to_owned(), statement.clone());
        Ok(statement)
    }

    fn cached(&self, sql: &str) -> Option<Statement> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(sql)
            .cloned()
    }
}

/// What became of a staged event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Staged {
    Staged,
    /// The event's table is not mapped: nothing to do.
    Unmapped,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum RunKind {
    Upsert,
    /// Upsert of rows a snapshot read (`READ`): loses ties and to tombstones.
    Read,
    /// Update only, these target columns unchanged at the source.
    Update(Vec<String>),
    Delete,
}

/// How `Writer::write_rows` writes a run.
struct Writing<'k> {
    kind: &'k RunKind,
    /// Rows without a counterpart get one (upserts and reads).
    allocate: bool,
    /// Every row is an insert or a read (see `Run::inserts`).
    inserts: bool,
    /// The run's columns and plain values, if rendered already.
    rendered: Option<Rendered>,
}

/// A run's target columns (what its rows carry: the first row tells, a run
/// shares a shape) and, per row and column, the text of each plain value;
/// references and lookups are left `None` for `Writer::resolve_row_values`,
/// which needs the databases for them.
struct Rendered {
    columns: Vec<String>,
    plain: Vec<Vec<Option<String>>>,
}

impl Rendered {
    fn of(rows: &[PendingRow], kind: &RunKind) -> Rendered {
        let unchanged: &[String] = match kind {
            RunKind::Update(columns) => columns,
            _ => &[],
        };
        let columns: Vec<String> = rows
            .first()
            .map(|row| {
                row.row
                    .iter()
                    .map(|(c, _)| c.to_owned())
                    .filter(|c| !unchanged.contains(c))
                    .collect()
            })
            .unwrap_or_default();
        let plain = rows
            .iter()
            .map(|row| {
                columns
                    .iter()
                    .map(|column| match row.row.get(column) {
                        Some(TargetValue::Value(v)) | Some(TargetValue::KeepExistingOr(v)) => {
                            capture::pgtype::to_text(v)
                        }
                        _ => None,
                    })
                    .collect()
            })
            .collect();
        Rendered { columns, plain }
    }
}

/// A statement's first parameter, with room reserved for all of them in
/// the message it is written into. The bind message of a multi-row statement
/// is hundreds of kilobytes; grown by doubling as the values were written,
/// it was copied at each step and each step faulted in fresh memory
/// (reserving it up front measured less apply CPU in alternating runs of
/// `scripts/bench apply`).
#[derive(Debug)]
struct Presized<T> {
    value: T,
    /// The bytes all of the statement's parameters take, about.
    bytes: usize,
}

impl<T: ToSql> ToSql for Presized<T> {
    fn to_sql(
        &self,
        ty: &tokio_postgres::types::Type,
        out: &mut bytes::BytesMut,
    ) -> std::result::Result<tokio_postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>>
    {
        out.reserve(self.bytes);
        self.value.to_sql(ty, out)
    }

    fn accepts(ty: &tokio_postgres::types::Type) -> bool {
        T::accepts(ty)
    }

    tokio_postgres::types::to_sql_checked!();
}

/// The size of a one-dimensional array of `texts` in the binary format,
/// header and element lengths included.
fn text_array_bytes<'a>(texts: impl IntoIterator<Item = Option<&'a str>>) -> usize {
    20 + texts
        .into_iter()
        .map(|text| 4 + text.map_or(0, str::len))
        .sum::<usize>()
}

struct PendingRow {
    source_key: Value,
    row: TargetRow,
    delete_at: i64,
    /// The source transaction: its id and commit LSN.
    source_xid: u32,
    commit_lsn: u64,
}

struct Run {
    entity: usize,
    kind: RunKind,
    rows: Vec<PendingRow>,
    keys: HashSet<String>,
    /// Every row is an insert or a snapshot's read: rows that have most
    /// likely not crossed yet (see `Writer::resolve_fresh_keys`).
    inserts: bool,
}

/// The id correspondence known to this process, looked up either way:
/// committed pairs, and those written by the open target transaction (the
/// source transactions already kept in the batch, and the one being
/// staged), which a rollback forgets.
///
/// One pair of maps holds them all: a pair is inserted once, when it is
/// learnt, and a commit only drops the logs of what is uncommitted. (Three
/// layers, each commit moving every pair of the batch into the committed
/// maps, cost a measurable share of apply's CPU in `scripts/bench apply`.)
#[derive(Default)]
struct IdMap {
    forward: FastMap<(usize, i64), Uuid>,
    reverse: FastMap<(usize, Uuid), i64>,
    /// Pairs learnt by the source transactions kept in the batch.
    batch: Vec<(usize, i64, Uuid)>,
    /// Pairs learnt by the source transaction being staged.
    transaction: Vec<(usize, i64, Uuid)>,
}

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

impl IdMap {
    /// Past this many pairs, a commit forgets the committed ones (bounded
    /// memory: the database is the source of truth).
    const MAX_PAIRS: usize = 1_000_000;

    fn platform_of(&self, entity: usize, legacy: i64) -> Option<Uuid> {
        self.forward.get(&(entity, legacy)).copied()
    }

    fn legacy_of(&self, entity: usize, platform: Uuid) -> Option<i64> {
        self.reverse.get(&(entity, platform)).copied()
    }

    /// Learns a pair in the transaction being staged (a legacy id already
    /// paired keeps its pair, as does a platform id).
    fn remember(&mut self, entity: usize, legacy: i64, platform: Uuid) {
        if self.forward.contains_key(&(entity, legacy)) {
            return;
        }
        self.forward.insert((entity, legacy), platform);
        self.reverse.entry((entity, platform)).or_insert(legacy);
        self.transaction.push((entity, legacy, platform));
    }

    /// Forgets whatever either id is paired with (a pair dropped is read
    /// again from the database).
    fn forget(&mut self, entity: usize, legacy: i64, platform: Uuid) {
        self.forward.remove(&(entity, legacy));
        self.reverse.remove(&(entity, platform));
        let other = |&(e, l, p): &(usize, i64, Uuid)| e != entity || (l != legacy && p != platform);
        self.batch.retain(other);
        self.transaction.retain(other);
    }

    /// Removes the logged pairs from the maps (where they are still the
    /// pairs those ids have).
    fn unlearn(&mut self, pairs: Vec<(usize, i64, Uuid)>) {
        for (entity, legacy, platform) in pairs {
            if self.forward.get(&(entity, legacy)) == Some(&platform) {
                self.forward.remove(&(entity, legacy));
            }
            if self.reverse.get(&(entity, platform)) == Some(&legacy) {
                self.reverse.remove(&(entity, platform));
            }
        }
    }

    /// The staged source transaction is part of the batch now.
    fn keep_transaction(&mut self) {
        self.batch.append(&mut self.transaction);
    }

    /// The staged source transaction rolled back.
    fn roll_back_transaction(&mut self) {
        let pairs = std::mem::take(&mut self.transaction);
        self.unlearn(pairs);
    }

    /// The target transaction rolled back.
    fn roll_back_batch(&mut self) {
        self.roll_back_transaction();
        let pairs = std::mem::take(&mut self.batch);
        self.unlearn(pairs);
    }

    /// The target transaction committed: its pairs are durable.
    fn commit_batch(&mut self) {
        self.keep_transaction();
        self.batch.clear();
        if self.forward.len() > Self::MAX_PAIRS {
            self.forward.clear();
            self.reverse.clear();
        }
    }

    /// Forgets the committed pairs, keeping those of the open target
    /// transaction.
    fn forget_committed(&mut self) {
        let IdMap {
            forward,
            reverse,
            batch,
            transaction,
        } = self;
        forward.clear();
        reverse.clear();
        for &(entity, legacy, platform) in batch.iter().chain(transaction.iter()) {
            forward.entry((entity, legacy)).or_insert(platform);
            reverse.entry((entity, platform)).or_insert(legacy);
        }
    }
}

/// How the open target transaction holds the pair lock (see
/// [`Writer::lock_pairs`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PairLock {
    None,
    /// Held by the target transaction; ends with it.
    Transaction,
    /// Held by the source session until released.
    Session,
}

/// What a statement sent ahead answers: its first row, if any.
type Answer = std::result::Result<Option<tokio_postgres::Row>, tokio_postgres::Error>;

/// The reply to a statement sent ahead (see [`Writer::settle`]).
enum Reply {
    /// Answered at once (it failed before it was sent).
    Done(Answer),
    /// Read by a task of its own as it arrives. tokio-postgres hands a
    /// request's reply over through a channel of one message: a reply nobody
    /// reads stops the connection from reading any other, so a statement
    /// awaited after an unread sent one would wait forever.
    Reading(tokio::task::JoinHandle<Answer>),
}

/// A statement sent to the target whose reply is not read yet.
struct Sent {
    reply: Reply,
    /// What the statement does, for its error.
    context: String,
    then: Then,
}

/// What a sent statement's reply is for.
enum Then {
    /// Only whether it failed.
    Nothing,
    /// A run's upsert: counted, and children of rows that came back are
    /// brought back too.
    Written(Written),
}

struct Written {
    entity: usize,
    attempted: u64,
    /// The rows that had a counterpart before: (target key text, source key).
    crossed: Vec<(String, Value)>,
    /// The source transaction that wrote them (see `Writer::transactions`).
    transaction: u64,
}

/// Writes one direction's events into the target database.
///
/// # Statements sent ahead
///
/// The statements that only write (row locks, id correspondence, the run's
/// upsert, savepoints) are *sent*: queued on the target connection, which
/// runs them in order, and their replies read later by [`Writer::settle`].
/// Pipelining lets the database write one run while apply decodes and maps
/// the next. When pipelining is off, each sent statement is settled at once,
/// so every error surfaces where the statement was made, as one statement at
/// a time would. When it is on, an error may surface at a later statement
/// than its cause (the server refuses everything after a failure in the
/// transaction): the caller must then roll back the whole target
/// transaction and apply it again with pipelining off (see
/// [`ApplyError::replans`]). At most one run's statements are outstanding:
/// [`Writer::flush`] settles before it reads anything.
pub struct Writer {
    from: Side,
    to: Side,
    mapping: Arc<Mapping>,
    /// The target database's tables and types.
    catalog: Catalog,
    /// The source database's (where legacy lookup tables are read).
    source_catalog: Catalog,
    origin: String,
    tie_wins: bool,
    max_rows: usize,
    run: Option<Run>,
    ids: IdMap,
    /// Which legacy ids may be paired at all, shared by every writer.
    ceiling: Arc<PairCeiling>,
    /// Lookup values read from the legacy side: (field, key text) -> value text.
    lookups: HashMap<(usize, usize, String), Option<String>>,
    /// Statements prepared on the target connection...
    statements: Prepared,
    /// ...and on the source connection.
    source_statements: Prepared,
    stats: Arc<Stats>,
    filled: Filled,
    delete_rule: conflict::DeleteRule,
    /// The pair lock this target transaction holds (see
    /// [`Writer::lock_pairs`]).
    pair_lock: PairLock,
    /// The target connection (the one the `target` arguments name), for
    /// statements sent ahead.
    connection: Arc<Client>,
    /// Whether sent statements stay outstanding until settled.
    pipelining: bool,
    sent: VecDeque<Sent>,
    /// Source transactions ended (kept or forgotten) so far: whether a reply
    /// belongs to the open source transaction.
    transactions: u64,
    /// What the open target transaction's events touched...
    footprint: Footprint,
    /// ...and the last event staged.
    touched: Touch,
    /// Whether the open target transaction wrote what its events do not
    /// name: a stale pair given up, children of a row that came back.
    hidden: bool,
    /// Whether the open target transaction recorded deletes to re-assert
    /// (see [`Writer::reassert_recorded_deletes`]).
    recorded_deletes: bool,
}

/// When apply last refreshed the planner statistics of what one direction
/// fills. One per direction, shared by its writers (each would otherwise
/// count only its own rows and refresh as often again).
///
/// apply creates and fills its bookkeeping tables (and often the target
/// tables) far faster than autovacuum notices: a table planned as empty is
/// then scanned whole for every key lookup, and each batch gets slower as it
/// grows. Statistics are refreshed whenever the rows written since the last
/// refresh reach [`Analyze::GROWTH`] times the rows written before it (and at
/// least [`Analyze::FIRST_AFTER`]), so a load of n rows costs O(log n)
/// `ANALYZE`s. Lookups probe one key at a time (see [`PROBE`]), so a plan
/// only needs the right order of magnitude: the statistics may lag until
/// the tables have grown fourfold.
#[derive(Debug, Default)]
pub struct Analyze {
    /// Rows written in committed transactions since the last refresh.
    since: u64,
    /// Rows written in all before the last refresh.
    before: u64,
    /// Target entities written since the last refresh.
    entities: HashSet<usize>,
}

impl Analyze {
    const FIRST_AFTER: u64 = 5_000;
    const GROWTH: u64 = 3;

    fn due(&self) -> bool {
        self.since >= Self::FIRST_AFTER.max(Self::GROWTH * self.before)
    }

    /// A refresh started: the rows written so far are in its statistics.
    fn refreshed(&mut self) {
        self.before += self.since;
        self.since = 0;
    }
}

/// What one writer wrote, for [`Analyze`]: rows of its open target
/// transaction, and of committed ones not yet counted.
#[derive(Debug, Default)]
struct Filled {
    pending: u64,
    committed: u64,
    entities: HashSet<usize>,
}

impl Filled {
    /// The open target transaction committed: its rows count.
    fn committed(&mut self) {
        self.committed += std::mem::take(&mut self.pending);
    }

    /// The open target transaction rolled back: its rows were not written.
    fn rolled_back(&mut self) {
        self.pending = 0;
    }

    /// Hands the committed rows (and the entities written) to the
    /// direction's count.
    fn count_into(&mut self, analyze: &mut Analyze) {
        analyze.since += std::mem::take(&mut self.committed);
        analyze.entities.extend(self.entities.drain());
    }
}

impl Writer {
    pub fn new(
        from: Side,
        mapping: Arc<Mapping>,
        catalogs: Catalogs,
        max_rows: usize,
        stats: Arc<Stats>,
        connection: Arc<Client>,
        ceiling: Arc<PairCeiling>,
    ) -> Writer {
        let origin = mapping.side(from).source.clone();
        let tie_wins = mapping.conflicts().tie_winner == from;
        Writer {
            from,
            to: from.other(),
            mapping,
            catalog: catalogs.target,
            source_catalog: catalogs.source,
            origin,
            tie_wins,
            max_rows,
            run: None,
            ids: IdMap::default(),
            ceiling,
            lookups: HashMap::new(),
            statements: Prepared::default(),
            source_statements: Prepared::default(),
            stats,
            filled: Filled::default(),
            delete_rule: conflict::DeleteRule::Live,
            pair_lock: PairLock::None,
            connection,
            pipelining: false,
            sent: VecDeque::new(),
            transactions: 0,
            footprint: Footprint::default(),
            touched: Touch::default(),
            hidden: false,
            recorded_deletes: false,
        }
    }

    /// Turns pipelining on or off (see [Statements sent ahead](Writer#statements-sent-ahead));
    /// off by default. Takes effect for statements sent from now on.
    pub fn pipeline(&mut self, on: bool) {
        self.pipelining = on;
    }

    /// Whether statements are pipelined.
    pub fn pipelining(&self) -> bool {
        self.pipelining
    }

    /// Sends one statement, made by `reply` on the target connection.
    async fn send<F>(
        &mut self,
        target: &Client,
        source: &Client,
        context: impl Into<String>,
        reply: F,
        then: Then,
    ) -> Result<()>
    where
        F: Future<Output = Answer> + Send + 'static,
    {
        let mut reply = Box::pin(reply);
        // tokio-postgres queues a request on the connection when its future
        // is first polled: polling once now puts the statements on the wire
        // in the order they are sent, whenever their replies are read. That
        // holds for a statement that goes out in one request: a prepared
        // one, or a simple query; an unprepared statement with parameters
        // would be prepared in a round trip first and go out later.
        let waker = futures::task::noop_waker();
        let reply = match reply.as_mut().poll(&mut Context::from_waker(&waker)) {
            Poll::Ready(done) => Reply::Done(done),
            Poll::Pending => Reply::Reading(tokio::spawn(reply)),
        };
        self.sent.push_back(Sent {
            reply,
            context: context.into(),
            then,
        });
        if self.pipelining {
            Ok(())
        } else {
            self.settle(target, source).await
        }
    }

    /// Sends `sql` with `params`, prepared (and cached) first: a statement
    /// sent must go out in one request for the order to hold (see
    /// [`Self::send`]), which an unprepared statement with parameters does
    /// not. The reply is its first row, if any.
    async fn send_prepared(
        &mut self,
        target: &Client,
        source: &Client,
        sql: String,
        params: Vec<Box<dyn ToSql + Sync + Send>>,
        context: impl Into<String>,
        then: Then,
    ) -> Result<()> {
        let statement = self.statement(target, sql).await?;
        let client = Arc::clone(&self.connection);
        let reply = async move {
            let params: Vec<&(dyn ToSql + Sync)> =
                params.iter().map(|p| &**p as &(dyn ToSql + Sync)).collect();
            let rows = client.query(&statement, &params).await?;
            Ok(rows.into_iter().next())
        };
        self.send(target, source, context, reply, then).await
    }

    /// Sends a statement without parameters (a savepoint's, for instance).
    pub async fn send_simple(
        &mut self,
        target: &Client,
        source: &Client,
        sql: &'static str,
    ) -> Result<()> {
        let client = Arc::clone(&self.connection);
        let reply = async move { client.batch_execute(sql).await.map(|()| None) };
        let context = sql.split_whitespace().next().unwrap_or("sql");
        self.send(target, source, context, reply, Then::Nothing)
            .await
    }

    /// Reads the replies of the statements sent, in order, and does what
    /// each is for. Returns the first error; the statements after it (which
    /// the server refused in the failed transaction) are drained.
    pub async fn settle(&mut self, target: &Client, source: &Client) -> Result<()> {
        while let Some(sent) = self.sent.pop_front() {
            let answer = match sent.reply {
                Reply::Done(answer) => Ok(answer),
                Reply::Reading(task) => task.await,
            };
            let done = match answer {
                Ok(Ok(row)) => self.then(target, source, sent.then, row).await,
                Ok(Err(e)) => Err(ApplyError::postgres(self.to.as_str(), sent.context, e)),
                Err(ended) => Err(ApplyError::Replan(format!(
                    "the reply to {} was lost: {ended}",
                    sent.context
                ))),
            };
            if let Err(error) = done {
                self.discard().await;
                return Err(error);
            }
        }
        Ok(())
    }

    /// Drains the statements sent, ignoring their replies (the target
    /// transaction is being rolled back).
    pub async fn discard(&mut self) {
        while let Some(sent) = self.sent.pop_front() {
            if let Reply::Reading(task) = sent.reply {
                let _ = task.await;
            }
        }
    }

    /// What a sent statement's reply is for.
    async fn then(
        &mut self,
        target: &Client,
        source: &Client,
        then: Then,
        row: Option<tokio_postgres::Row>,
    ) -> Result<()> {
        let (Then::Written(run), Some(row)) = (then, row) else {
            return Ok(());
        };
        let written = row.get::<_, i64>(0) as u64;
        let inserted: Vec<String> = row.get(1);
        let parentless = row.get::<_, i64>(2) as u64;
        self.filled.pending += run.attempted;
        self.filled.entities.insert(run.entity);
        self.stats.applied(written);
        self.stats.conflict_orphans(parentless);
        self.stats.skipped_older(
            run.attempted
                .saturating_sub(written)
                .saturating_sub(parentless),
        );
        if inserted.is_empty() || run.crossed.is_empty() {
            return Ok(());
        }
        let inserted: HashSet<&str> = inserted.iter().map(String::as_str).collect();
        let returned: Vec<Value> = run
            .crossed
            .into_iter()
            .filter(|(key, _)| inserted.contains(key.as_str()))
            .map(|(_, source_key)| source_key)
            .collect();
        if returned.is_empty() {
            return Ok(());
        }
        if run.transaction != self.transactions {
            // Their children belong in the source transaction that brought
            // them back, whose savepoint is released already.
            return Err(ApplyError::Replan(
                "rows came back after their source transaction's savepoint was released".into(),
            ));
        }
        let mapping = Arc::clone(&self.mapping);
        let entity = &mapping.entities()[run.entity];
        self.hidden = true;
        self.resync_children(target, source, entity, returned).await
    }

    /// Decides deletes as a replay does (see [`conflict::DeleteRule`]).
    pub fn replaying(&mut self) {
        self.delete_rule = conflict::DeleteRule::Replay;
    }

    /// Stages one event; may flush the previous run first.
    pub async fn stage(
        &mut self,
        target: &Client,
        source: &Client,
        event: &ChangeEvent,
    ) -> Result<Staged> {
        self.touched = Touch::default();
        // A handle of its own, so that the entity can be borrowed across
        // `flush` (which needs `self` mutably) without copying it per event.
        let mapping = Arc::clone(&self.mapping);
        let Some((index, entity)) = mapping.entities().iter().enumerate().find(|(_, e)| {
            let t = e.table(self.from);
            t.schema == event.schema && t.table == event.table
        }) else {
            return Ok(Staged::Unmapped);
        };
        let key_column = entity.key_column(self.from);
        let source_key = event
            .key
            .iter()
            .find(|c| c.name == key_column)
            .map(|c| c.value.clone())
            .ok_or_else(|| {
                ApplyError::Rejected(format!(
                    "{}.{}: the event has no key column {key_column}",
                    event.schema, event.table
                ))
            })?;
        let (kind, row, delete_at) = match event.op {
            Op::Insert | Op::Update | Op::Read => {
                let after = event.after.as_deref().ok_or_else(|| {
                    ApplyError::Rejected(format!("{}.{}: an upsert without a row", event.schema, event.table))
                })?;
                let row = to_target(entity, self.from, &Row::from_columns(after))
                    .map_err(|e| ApplyError::Rejected(e.to_string()))?;
                let unchanged: Vec<String> = row
                    .iter()
                    .filter(|(_, v)| matches!(v, TargetValue::Unchanged))
                    .map(|(c, _)| c.to_owned())
                    .collect();
                let kind = if !unchanged.is_empty() {
                    RunKind::Update(unchanged)
                } else if event.op == Op::Read {
                    RunKind::Read
                } else {
                    RunKind::Upsert
                };
                (kind, row, 0)
            }
            Op::Delete => (
                RunKind::Delete,
                TargetRow::default(),
                event.transaction.commit_time_micros,
            ),
            Op::Truncate => {
                return Err(ApplyError::Rejected(format!(
                    "truncate of {}.{} is not mirrored: empty the other side's table deliberately if that is intended",
                    event.schema, event.table
                )))
            }
        };
        let key_text = capture::pgtype::to_text(&source_key).unwrap_or_default();
        let continues = self.run.as_ref().is_some_and(|run| {
            run.entity == index
                && run.kind == kind
                && run.rows.len() < self.max_rows
                && !run.keys.contains(&key_text)
        });
        if !continues {
            self.flush(target, source).await?;
            self.run = Some(Run {
                entity: index,
                kind,
                rows: Vec::new(),
                keys: HashSet::new(),
                inserts: true,
            });
        }
        self.touched = footprint::touch(entity, self.to, event.op, &key_text, &row);
        self.footprint.add(&self.touched);
        if let Some(run) = self.run.as_mut() {
            run.inserts &= matches!(event.op, Op::Insert | Op::Read);
            run.keys.insert(key_text);
            run.rows.push(PendingRow {
                source_key,
                row,
                delete_at,
                source_xid: event.transaction.xid,
                commit_lsn: event.transaction.commit_lsn,
            });
        }
        Ok(Staged::Staged)
    }

    /// What the last event staged touches (nothing if it was not staged).
    pub fn touched(&self) -> &Touch {
        &self.touched
    }

    /// What the target transaction's events touched, and whether it also
    /// wrote what they do not name (see [`crate::footprint`]); starts over
    /// for the next one.
    pub fn take_footprint(&mut self) -> (Footprint, bool) {
        (
            std::mem::take(&mut self.footprint),
            std::mem::take(&mut self.hidden),
        )
    }

    /// Forgets the pairs known from committed transactions: another writer
    /// of this direction gave up a pair this one may have known.
    pub fn forget_committed_pairs(&mut self) {
        self.ids.forget_committed();
    }

    /// Sends `sql` with `params`, a statement whose only answer is whether
    /// it failed (see [`Self::settle`]).
    pub async fn send_statement(
        &mut self,
        target: &Client,
        source: &Client,
        sql: &'static str,
        params: Vec<Box<dyn ToSql + Sync + Send>>,
        context: &'static str,
    ) -> Result<()> {
        self.send_prepared(
            target,
            source,
            sql.to_owned(),
            params,
            context,
            Then::Nothing,
        )
        .await
    }

    /// The target transaction's `COMMIT` was sent: replies still to come
    /// belong to no open source transaction, so rows that came back can no
    /// longer bring their children along in it (the batch is applied again).
    pub fn commit_sent(&mut self) {
        self.transactions += 1;
    }

    /// Whether the open target transaction holds the pair lock.
    pub fn holds_pair_lock(&self) -> bool {
        self.pair_lock != PairLock::None
    }

    /// Writes the staged run, if any.
    pub async fn flush(&mut self, target: &Client, source: &Client) -> Result<()> {
        let Some(run) = self.run.take() else {
            return Ok(());
        };
        // The run's plain values as text, while the target may still be
        // busy with what was sent before: they need no reply.
        let rendered = (run.kind != RunKind::Delete).then(|| Rendered::of(&run.rows, &run.kind));
        // What this run reads must follow what the last one wrote, and its
        // follow-ups.
        self.settle(target, source).await?;
        if run.rows.is_empty() {
            return Ok(());
        }
        let mapping = Arc::clone(&self.mapping);
        let entity = &mapping.entities()[run.entity];
        match &run.kind {
            RunKind::Delete => {
                self.write_deletes(target, source, run.entity, entity, &run.rows)
                    .await
            }
            kind => {
                let allocate = matches!(kind, RunKind::Upsert | RunKind::Read);
                let writing = Writing {
                    kind,
                    allocate,
                    inserts: run.inserts,
                    rendered,
                };
                self.write_rows(target, source, run.entity, entity, &run.rows, writing)
                    .await
            }
        }
    }

    /// The source transaction's staged work is gone (savepoint rolled back).
    pub fn forget_transaction(&mut self) {
        self.transactions += 1;
        self.run = None;
        // A transaction lock taken since the savepoint went with it.
        if self.pair_lock == PairLock::Transaction {
            self.pair_lock = PairLock::None;
        }
        self.ids.roll_back_transaction();
        // Lookup rows created by the rolled-back work are gone too.
        self.lookups.clear();
    }

    /// The source transaction is part of the batch now.
    pub fn keep_transaction(&mut self) {
        self.transactions += 1;
        self.ids.keep_transaction();
    }

    /// The target transaction committed.
    pub fn committed(&mut self) {
        self.filled.committed();
        self.ids.commit_batch();
    }

    /// The target transaction rolled back.
    pub fn rolled_back(&mut self) {
        self.sent.clear();
        self.transactions += 1;
        self.filled.rolled_back();
        self.run = None;
        self.ids.roll_back_batch();
        self.lookups.clear();
        self.footprint = Footprint::default();
        self.hidden = false;
        self.recorded_deletes = false;
    }

    /// The `ANALYZE` that refreshes the planner statistics of what the
    /// direction fills, when one is due: this writer's committed rows are
    /// counted into the direction's `analyze` first (see [`Analyze`]); from
    /// then on the rows count towards the next one. The caller runs it on a
    /// connection of its own (it needs no transaction of apply's, and apply
    /// need not wait for it); asked between target transactions. Tables
    /// apply may not analyze (owned by another role) are skipped by the
    /// server with a warning.
    pub fn statistics_due(&mut self, analyze: &mut Analyze) -> Option<String> {
        self.filled.count_into(analyze);
        if !analyze.due() {
            return None;
        }
        let mut tables = vec![
            "syncbridge.id_map".to_owned(),
            "syncbridge.id_derived".to_owned(),
            "syncbridge.row_version".to_owned(),
            "syncbridge.apply_ledger".to_owned(),
        ];
        let mut entities: Vec<usize> = analyze.entities.drain().collect();
        entities.sort_unstable();
        for index in entities {
            let table = self.mapping.entities()[index].table(self.to);
            tables.push(quote_table(&table.schema, &table.table));
        }
        analyze.refreshed();
        Some(format!("ANALYZE {}", tables.join(", ")))
    }

    /// Whether the open target transaction recorded deletes to re-assert on
    /// the source once it has committed. Such a transaction commits alone:
    /// with two writers, the re-assertion would otherwise run while the
    /// other writer's target transaction is open (see
    /// [`Self::reassert_deletes`]).
    pub fn recorded_deletes(&self) -> bool {
        self.recorded_deletes
    }

    /// [`Self::reassert_deletes`], when the target transaction that just
    /// committed recorded deletes (see [`Self::recorded_deletes`]); without
    /// them there is nothing to read (what a crash left behind is
    /// re-asserted at session start).
    pub async fn reassert_recorded_deletes(
        &mut self,
        target: &Client,
        source: &Client,
        marker_prefix: &str,
    ) -> Result<()> {
        if !self.recorded_deletes {
            return Ok(());
        }
        self.reassert_deletes(target, source, marker_prefix).await?;
        self.recorded_deletes = false;
        Ok(())
    }

    /// Re-asserts, on the side they came from, the deletes recorded in the
    /// target's `delete_outbox`; runs after the target transaction commits
    /// (and at session start, for what a crash left behind).
    ///
    /// A delete on one side and an older update of the same row on the other
    /// can cross: the update reaches the deleting side after its delete and
    /// would bring the row back there. Applying the delete again on its own
    /// side, under the same rule (only a row not newer than the delete goes)
    /// and leaving a tombstone there, closes that window: an older update
    /// arriving later is refused by the tombstone, one that arrived earlier is
    /// removed now, and a newer one stays (on both sides, since the delete
    /// lost on the target too). It runs in its own source transaction with the
    /// echo marker, never while a target transaction is open (two directions
    /// each holding one side and waiting for the other would deadlock), and is
    /// idempotent: an outbox entry is removed only after the source committed.
    pub async fn reassert_deletes(
        &mut self,
        target: &Client,
        source: &Client,
        marker_prefix: &str,
    ) -> Result<()> {
        let to = self.to.as_str();
        let from = self.from.as_str();
        loop {
            let rows = target
                .query(
                    "SELECT entity, source_key, key_type, deleted_at::text FROM syncbridge.delete_outbox ORDER BY deleted_at LIMIT 1000",
                    &[],
                )
                .await
                .map_err(|e| ApplyError::postgres(to, "read the delete outbox", e))?;
            if rows.is_empty() {
                return Ok(());
            }
            let mut by_entity: HashMap<(String, String), DeleteBatch> = HashMap::new();
            for row in &rows {
                let entry = by_entity.entry((row.get(0), row.get(2))).or_default();
                entry.0.push(Some(row.get(1)));
                entry.1.push(Some(row.get(3)));
            }
            source
                .batch_execute("BEGIN")
                .await
                .map_err(|e| ApplyError::postgres(from, "begin", e))?;
            let outcome = async {
                source
                    .execute(
                        "SELECT pg_catalog.pg_logical_emit_message(true, $1, 'delete-reassertion')",
                        &[&marker_prefix],
                    )
                    .await
                    .map_err(|e| ApplyError::postgres(from, "write the echo marker", e))?;
                for ((entity_name, key_type), (keys, times)) in &by_entity {
                    let Some(entity) = self.mapping.entity(entity_name) else {
                        continue;
                    };
                    let table = entity.table(self.from);
                    let sql = conflict::delete_sql(
                        entity.name(),
                        &quote_table(&table.schema, &table.table),
                        &table.key,
                        key_type,
                        &table.updated_at,
                        conflict::DeleteRule::Live,
                    );
                    lock_rows(source, from, entity.name(), keys).await?;
                    source
                        .query_one(&sql, &[keys, times, &self.origin])
                        .await
                        .map_err(|e| ApplyError::postgres(from, "re-assert deletes", e))?;
                }
                source
                    .batch_execute("COMMIT")
                    .await
                    .map_err(|e| ApplyError::postgres(from, "commit", e))
            }
            .await;
            if let Err(error) = outcome {
                let _ = source.batch_execute("ROLLBACK").await;
                return Err(error);
            }
            for ((entity_name, _), (keys, _)) in &by_entity {
                target
                    .execute(
                        "DELETE FROM syncbridge.delete_outbox WHERE entity = $1 AND source_key = ANY($2::text[])",
                        &[entity_name, keys],
                    )
                    .await
                    .map_err(|e| ApplyError::postgres(to, "clear the delete outbox", e))?;
            }
        }
    }

    /// Prepares `sqls` on the target connection now, while it is idle. A
    /// statement prepared on first use takes a round trip, which on a
    /// connection with statements in flight waits behind them all: a batch
    /// parked for the first time would wait for its own last run before it
    /// could send its commit.
    pub async fn prepare(&mut self, target: &Client, sqls: &[&str]) -> Result<()> {
        for sql in sqls {
            self.statement(target, (*sql).to_owned()).await?;
        }
        Ok(())
    }

    /// Runs `sql` (prepared once on this connection) with `params` and
    /// waits for it; statements sent before it are not settled first.
    pub async fn execute_prepared(
        &mut self,
        target: &Client,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        context: &'static str,
    ) -> Result<()> {
        let statement = self.statement(target, sql.to_owned()).await?;
        target
            .execute(&statement, params)
            .await
            .map_err(|e| ApplyError::postgres(self.to.as_str(), context, e))?;
        Ok(())
    }

    async fn statement(&mut self, target: &Client, sql: String) -> Result<Statement> {
        self.statements
            .get(target, &sql)
            .await
            .map_err(|e| ApplyError::postgres(self.to.as_str(), "prepare a statement", e))
    }

    /// The cache of statements prepared on the connection to `side`.
    fn prepared(&self, side: Side) -> &Prepared {
        if side == self.to {
            &self.statements
        } else {
            &self.source_statements
        }
    }

    fn column_type(&self, entity: &Entity, side: Side, column: &str) -> Result<String> {
        let table = entity.table(side);
        self.catalog
            .column_type(&table.schema, &table.table, column)
            .map(str::to_owned)
            .ok_or_else(|| {
                ApplyError::Config(format!(
                    "column {column} of {} is not in the {} database",
                    table.qualified(),
                    side.as_str()
                ))
            })
    }

    #[allow(clippy::too_many_arguments)]
    async fn write_rows(
        &mut self,
        target: &Client,
        source: &Client,
        index: usize,
        entity: &Entity,
        rows: &[PendingRow],
        writing: Writing<'_>,
    ) -> Result<()> {
        let Writing {
            kind,
            allocate,
            inserts,
            rendered,
        } = writing;
        let keys: Vec<&Value> = rows.iter().map(|r| &r.source_key).collect();
        let linking = allocate && !entity.natural_key_columns(self.to).is_empty();

        let Rendered { columns, plain } = match rendered {
            Some(rendered) => rendered,
            None => Rendered::of(rows, kind),
        };
        let mut specs = Vec::with_capacity(columns.len());
        let mut parents = Vec::new();
        for column in &columns {
            let merge = match entity.field_for_column(self.to, column) {
                Some((_, def))
                    if matches!(def.field(), Field::FlagTimestamp { .. })
                        && self.from == Side::Legacy =>
                {
                    Merge::KeepExistingNonNull
                }
                Some((_, def)) => {
                    if let Field::Reference { entity: parent, .. } = def.field() {
                        if let Some(parent) = self.mapping.entity(parent) {
                            let table = parent.table(self.to);
                            let own = entity.table(self.to);
                            parents.push(ParentCheck {
                                column: column.clone(),
                                table: quote_table(&table.schema, &table.table),
                                key: table.key.clone(),
                                set_null: self.catalog.is_set_null(&own.schema, &own.table, column),
                            });
                        }
                    }
                    Merge::Replace
                }
                None => Merge::Replace,
            };
            specs.push(ColumnSpec {
                name: column.clone(),
                type_name: self.column_type(entity, self.to, column)?,
                merge,
            });
        }

        // Values, column by column, as text; rows without a target key or with
        // an unresolvable reference are left out (counted as conflicts).
        let mut written_rows: Vec<usize> = Vec::with_capacity(rows.len());
        let mut key_texts: Vec<Option<String>> = Vec::with_capacity(rows.len());
        let mut source_xids: Vec<String> = Vec::with_capacity(rows.len());
        let mut column_texts: Vec<Vec<Option<String>>> =
            vec![Vec::with_capacity(rows.len()); columns.len()];
        let (mut target_keys, resolved, natural) = if linking && inserts {
            // The values first (they do not depend on this run's own keys),
            // then every read the pairing needs in one round (see
            // `resolve_fresh_keys`).
            let resolved = self
                .resolve_row_values(target, source, entity, rows, &columns, plain)
                .await?;
            let (target_keys, natural) = self
                .resolve_fresh_keys(target, source, index, entity, &keys, &columns, &resolved)
                .await?;
            (target_keys, resolved, Some(natural))
        } else {
            let target_keys = self
                .resolve_keys(target, source, index, entity, &keys, linking)
                .await?;
            let resolved = self
                .resolve_row_values(target, source, entity, rows, &columns, plain)
                .await?;
            (target_keys, resolved, None)
        };
        // Rows with a counterpart already: inserting one of them brings back a
        // row deleted here (see `resync_children`).
        let crossed_before: Vec<bool> = target_keys.iter().map(Option::is_some).collect();
        let mut new_ids = vec![false; rows.len()];
        if allocate {
            let allocated = self
                .link_or_allocate(
                    target,
                    source,
                    index,
                    entity,
                    &keys,
                    &mut target_keys,
                    &columns,
                    &resolved,
                    natural,
                )
                .await?;
            for i in allocated {
                new_ids[i] = true;
            }
        }
        let mut orphans = 0u64;
        for (row_index, (target_key, values)) in target_keys.iter().zip(resolved).enumerate() {
            let unresolved = values.is_none();
            let (Some(target_key), Some(values)) = (target_key, values) else {
                // Rows whose natural key is held were counted as such.
                if unresolved || !allocate {
                    orphans += 1;
                }
                continue;
            };
            written_rows.push(row_index);
            key_texts.push(capture::pgtype::to_text(target_key));
            source_xids.push(rows[row_index].source_xid.to_string());
            for (texts, value) in column_texts.iter_mut().zip(values) {
                texts.push(value);
            }
        }
        self.stats.conflict_orphans(orphans);
        if written_rows.is_empty() {
            return Ok(());
        }

        let shape = Shape::new(
            entity,
            self.to,
            &self.column_type(entity, self.to, entity.key_column(self.to))?,
            specs,
            parents,
        );
        let replay = self.delete_rule == conflict::DeleteRule::Replay;
        let sql = match kind {
            RunKind::Upsert if replay => shape.replay_upsert_sql(),
            RunKind::Upsert => shape.upsert_sql(),
            RunKind::Read => shape.read_upsert_sql(),
            _ if replay => shape.replay_update_sql(),
            _ => shape.update_sql(),
        };
        let (based_keys, based_xmins) = if self.tie_wins {
            (Vec::new(), Vec::new())
        } else {
            let written: Vec<&PendingRow> = written_rows.iter().map(|i| &rows[*i]).collect();
            self.bases(target, source, entity, &written, &key_texts)
                .await?
        };
        let crossed: Vec<(String, Value)> = written_rows
            .iter()
            .zip(&key_texts)
            .filter(|(i, _)| crossed_before[**i])
            .filter_map(|(i, key)| Some((key.clone()?, rows[*i].source_key.clone())))
            .collect();
        // Rows given a new id just now need no lock: see `lock_rows`.
        let lock_keys: Vec<Option<String>> = written_rows
            .iter()
            .zip(&key_texts)
            .filter(|(i, _)| !new_ids[**i])
            .map(|(_, key)| key.clone())
            .collect();
        if !lock_keys.is_empty() {
            let lock: Vec<Box<dyn ToSql + Sync + Send>> =
                vec![Box::new(entity.name().to_owned()), Box::new(lock_keys)];
            self.send_prepared(
                target,
                source,
                LOCK_ROWS.to_owned(),
                lock,
                "lock rows",
                Then::Nothing,
            )
            .await?;
        }
        let mut params: Vec<Box<dyn ToSql + Sync + Send>> = Vec::with_capacity(columns.len() + 6);
        let texts =
            |column: &[Option<String>]| text_array_bytes(column.iter().map(Option::as_deref));
        let bytes = texts(&key_texts)
            + column_texts
                .iter()
                .map(|column| texts(column))
                .sum::<usize>()
            + text_array_bytes(source_xids.iter().map(|xid| Some(xid.as_str())));
        params.push(Box::new(Presized {
            value: key_texts,
            bytes,
        }));
        for texts in column_texts {
            params.push(Box::new(texts));
        }
        params.push(Box::new(self.origin.clone()));
        params.push(Box::new(self.tie_wins));
        params.push(Box::new(source_xids));
        params.push(Box::new(based_keys));
        params.push(Box::new(based_xmins));
        let then = Then::Written(Written {
            entity: index,
            attempted: written_rows.len() as u64,
            crossed,
            transaction: self.transactions,
        });
        self.send_prepared(
            target,
            source,
            sql,
            params,
            format!("write {}", entity.name()),
            then,
        )
        .await
    }

    /// A row deleted here came back: the source kept it (its change was newer
    /// than the delete). Its children on the source were never deleted there,
    /// but here they were cascade-deleted with it or skipped as orphans while
    /// it was missing, and no event will bring them again. So they are read
    /// from the source, as they are now, and written as a snapshot's reads
    /// are (missing rows inserted, existing ones replaced only by a strictly
    /// newer row, tombstones respected); their own children follow the same
    /// way when they come back too. Later events of those rows repeat what
    /// was read or are newer, and apply as usual.
    fn resync_children<'a>(
        &'a mut self,
        target: &'a Client,
        source: &'a Client,
        parent: &'a Entity,
        parent_keys: Vec<Value>,
    ) -> futures::future::BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let key_type = match parent_keys.first() {
                Some(Value::Uuid(_)) => "uuid",
                _ => "int8",
            };
            let texts: Vec<String> = parent_keys
                .iter()
                .filter_map(capture::pgtype::to_text)
                .collect();
            let from = self.from;
            let children: Vec<(usize, Entity, String)> = self
                .mapping
                .entities()
                .iter()
                .enumerate()
                .flat_map(|(index, child)| {
                    child
                        .fields()
                        .iter()
                        .filter_map(move |def| match def.field() {
                            Field::Reference { entity, .. } if entity == parent.name() => def
                                .field()
                                .columns(from)
                                .first()
                                .map(|column| (index, child.clone(), (*column).to_owned())),
                            _ => None,
                        })
                })
                .collect();
            for (index, child, column) in children {
                let rows = self
                    .read_source_rows(source, &child, &column, key_type, &texts)
                    .await?;
                debug!(
                    parent = parent.name(),
                    child = child.name(),
                    rows = rows.len(),
                    "children of rows that came back read from the source"
                );
                // Written as reads, not changes: what was read is the
                // source's current row, which the other direction may be
                // changing on this side at this very moment (a cascade of the
                // delete that took the parent). A read loses every tie and
                // never writes over a tombstone; only a strictly newer row
                // replaces what is here.
                for chunk in rows.chunks(self.max_rows.max(1)) {
                    // Rows that crossed before, most of them: their pairs
                    // are read first, as for updates.
                    let writing = Writing {
                        kind: &RunKind::Read,
                        allocate: true,
                        inserts: false,
                        rendered: None,
                    };
                    self.write_rows(target, source, index, &child, chunk, writing)
                        .await?;
                }
            }
            Ok(())
        })
    }

    /// The rows of `child`'s source table whose `column` is one of `keys`,
    /// as pending upserts (values parsed from their text form by the
    /// source's type oids, as capture does).
    async fn read_source_rows(
        &self,
        source: &Client,
        child: &Entity,
        column: &str,
        key_type: &str,
        keys: &[String],
    ) -> Result<Vec<PendingRow>> {
        let table = child.table(self.from);
        let qualified = quote_table(&table.schema, &table.table);
        let side = self.from.as_str();
        let probe = source
            .prepare(&format!("SELECT * FROM {qualified} LIMIT 0"))
            .await
            .map_err(|e| ApplyError::postgres(side, "describe a child table", e))?;
        let described: Vec<(String, String, u32)> = probe
            .columns()
            .iter()
            .map(|c| {
                (
                    c.name().to_owned(),
                    c.type_().name().to_owned(),
                    c.type_().oid(),
                )
            })
            .collect();
        let select: Vec<String> = described
            .iter()
            .map(|(name, _, _)| format!("{}::text", quote(name)))
            .collect();
        let sql = format!(
            "SELECT xmin::text, (pg_catalog.pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::int8, {} \
             FROM {qualified} WHERE {} = ANY($1::text[]::{key_type}[])",
            select.join(", "),
            quote(column),
        );
        let found = source
            .query(&sql, &[&keys])
            .await
            .map_err(|e| ApplyError::postgres(side, "read children from the source", e))?;
        let key_column = child.key_column(self.from);
        let mut pending = Vec::with_capacity(found.len());
        for row in found {
            let xmin: String = row.get(0);
            let lsn: i64 = row.get(1);
            let mut columns = Vec::with_capacity(described.len());
            for (position, (name, type_name, oid)) in described.iter().enumerate() {
                let text: Option<String> = row.get(position + 2);
                let value = match text {
                    None => Value::Null,
                    Some(text) => capture::pgtype::parse_text(*oid, &text)
                        .map_err(|e| ApplyError::Rejected(format!("{qualified}.{name}: {e}")))?,
                };
                columns.push(schemas::event::Column {
                    name: name.clone(),
                    type_name: type_name.clone(),
                    type_oid: *oid,
                    value,
                });
            }
            let Some(source_key) = columns
                .iter()
                .find(|c| c.name == key_column)
                .map(|c| c.value.clone())
            else {
                continue;
            };
            let converted = match to_target(child, self.from, &Row::from_columns(&columns)) {
                Ok(converted) => converted,
                Err(error) => {
                    warn!(entity = child.name(), %error, "a child row read back does not convert; left out");
                    continue;
                }
            };
            pending.push(PendingRow {
                source_key,
                row: converted,
                delete_at: 0,
                source_xid: xmin.parse().unwrap_or_default(),
                commit_lsn: lsn as u64,
            });
        }
        Ok(pending)
    }

    async fn write_deletes(
        &mut self,
        target: &Client,
        source: &Client,
        index: usize,
        entity: &Entity,
        rows: &[PendingRow],
    ) -> Result<()> {
        let keys: Vec<&Value> = rows.iter().map(|r| &r.source_key).collect();
        let mut target_keys = self
            .resolve_keys(target, source, index, entity, &keys, false)
            .await?;
        let never_crossed = self
            .allocate_for_tombstones(target, source, index, entity, &keys, &mut target_keys)
            .await?;
        let mut key_texts = Vec::new();
        let mut times = Vec::new();
        let mut outbox_keys = Vec::with_capacity(rows.len());
        let mut outbox_times = Vec::with_capacity(rows.len());
        let source_key_type = match rows[0].source_key {
            Value::Uuid(_) => "uuid",
            _ => "int8",
        };
        for row in rows {
            outbox_keys.push(capture::pgtype::to_text(&row.source_key));
            outbox_times.push(capture::pgtype::to_text(&Value::TimestampTz(row.delete_at)));
        }
        target
            .execute(
                "INSERT INTO syncbridge.delete_outbox (entity, source_key, key_type, deleted_at) \
                 SELECT $1, k, $2, at::timestamptz FROM unnest($3::text[], $4::text[]) AS o(k, at) \
                 ON CONFLICT (entity, source_key) DO UPDATE SET deleted_at = GREATEST(syncbridge.delete_outbox.deleted_at, EXCLUDED.deleted_at)",
                &[&entity.name(), &source_key_type, &outbox_keys, &outbox_times],
            )
            .await
            .map_err(|e| ApplyError::postgres(self.to.as_str(), "record deletes to re-assert", e))?;
        self.recorded_deletes = true;
        for (row, key) in rows.iter().zip(&target_keys) {
            // A row that never crossed has nothing to delete on this side,
            // but gets a tombstone under the id it would get.
            if let Some(key) = key {
                key_texts.push(capture::pgtype::to_text(key));
                times.push(capture::pgtype::to_text(&Value::TimestampTz(row.delete_at)));
            }
        }
        if key_texts.is_empty() {
            return Ok(());
        }
        let table = entity.table(self.to);
        let sql = conflict::delete_sql(
            entity.name(),
            &quote_table(&table.schema, &table.table),
            &table.key,
            &self.column_type(entity, self.to, &table.key)?,
            &table.updated_at,
            self.delete_rule,
        );
        lock_rows(target, self.to.as_str(), entity.name(), &key_texts).await?;
        let statement = self.statement(target, sql).await?;
        let row = target
            .query_one(&statement, &[&key_texts, &times, &self.origin])
            .await
            .map_err(|e| {
                ApplyError::postgres(self.to.as_str(), format!("delete {}", entity.name()), e)
            })?;
        let deleted = row.get::<_, i64>(0) as u64;
        self.stats.deleted(deleted);
        self.stats.skipped_older(
            (key_texts.len() as u64)
                .saturating_sub(deleted)
                .saturating_sub(never_crossed),
        );
        Ok(())
    }

    /// Each row's column values as text, references and lookups resolved;
    /// `None` for a row that cannot be written (a reference to a row that
    /// does not exist on this side).
    async fn resolve_row_values(
        &mut self,
        target: &Client,
        source: &Client,
        entity: &Entity,
        rows: &[PendingRow],
        columns: &[String],
        mut plain: Vec<Vec<Option<String>>>,
    ) -> Result<Vec<Option<Vec<Option<String>>>>> {
        // Resolve references entity by entity, and lookups, in bulk.
        let mut references: HashMap<String, Vec<Value>> = HashMap::new();
        let mut lookups_by_key: HashMap<usize, Vec<Value>> = HashMap::new();
        let mut lookups_by_value: HashMap<usize, Vec<Value>> = HashMap::new();
        for row in rows {
            for (_, value) in row.row.iter() {
                match value {
                    TargetValue::Reference { entity, id } if *id != Value::Null => {
                        references
                            .entry(entity.clone())
                            .or_default()
                            .push(id.clone());
                    }
                    TargetValue::LookupByKey { field, key } if *key != Value::Null => {
                        lookups_by_key.entry(*field).or_default().push(key.clone());
                    }
                    TargetValue::LookupByValue { field, value } if *value != Value::Null => {
                        lookups_by_value
                            .entry(*field)
                            .or_default()
                            .push(value.clone());
                    }
                    _ => {}
                }
            }
        }
        let mut reference_ids: HashMap<(String, String), Option<Value>> = HashMap::new();
        for (parent, ids) in references {
            let Some(parent_index) = self
                .mapping
                .entities()
                .iter()
                .position(|e| e.name() == parent)
            else {
                continue;
            };
            let parent_entity = self.mapping.entities()[parent_index].clone();
            let refs: Vec<&Value> = ids.iter().collect();
            let resolved = self
                .resolve_keys(target, source, parent_index, &parent_entity, &refs, false)
                .await?;
            for (id, target_id) in ids.iter().zip(resolved) {
                reference_ids.insert(
                    (
                        parent.clone(),
                        capture::pgtype::to_text(id).unwrap_or_default(),
                    ),
                    target_id,
                );
            }
        }
        for (field, keys) in lookups_by_key {
            self.lookup_values(source, entity, field, &keys).await?;
        }
        for (field, values) in lookups_by_value {
            self.lookup_keys(target, entity, field, &values).await?;
        }

        let mut out = Vec::with_capacity(rows.len());
        'rows: for (row, plain) in rows.iter().zip(plain.iter_mut()) {
            let mut values = Vec::with_capacity(columns.len());
            for (column, plain) in columns.iter().zip(plain.iter_mut()) {
                let text = match row.row.get(column) {
                    None | Some(TargetValue::Unchanged) => None,
                    Some(TargetValue::Value(_)) | Some(TargetValue::KeepExistingOr(_)) => {
                        plain.take()
                    }
                    Some(TargetValue::Reference { entity: parent, id }) => {
                        if *id == Value::Null {
                            None
                        } else {
                            let key = (
                                parent.clone(),
                                capture::pgtype::to_text(id).unwrap_or_default(),
                            );
                            match reference_ids.get(&key).cloned().flatten() {
                                Some(target_id) => capture::pgtype::to_text(&target_id),
                                None => {
                                    out.push(None);
                                    continue 'rows;
                                }
                            }
                        }
                    }
                    Some(TargetValue::LookupByKey { field, key }) => {
                        if *key == Value::Null {
                            None
                        } else {
                            let k = (
                                self.entity_index(entity),
                                *field,
                                capture::pgtype::to_text(key).unwrap_or_default(),
                            );
                            self.lookups.get(&k).cloned().flatten()
                        }
                    }
                    Some(TargetValue::LookupByValue { field, value }) => {
                        if *value == Value::Null {
                            None
                        } else {
                            let k = (
                                self.entity_index(entity),
                                usize::MAX - *field,
                                capture::pgtype::to_text(value).unwrap_or_default(),
                            );
                            self.lookups.get(&k).cloned().flatten()
                        }
                    }
                };
                values.push(text);
            }
            out.push(Some(values));
        }
        Ok(out)
    }

    fn entity_index(&self, entity: &Entity) -> usize {
        self.mapping
            .entities()
            .iter()
            .position(|e| e.name() == entity.name())
            .unwrap_or(usize::MAX)
    }

    fn lookup_of(entity: &Entity, field: usize) -> Result<crate::mapping::Lookup> {
        match entity.fields().get(field).map(|d| d.field()) {
            Some(Field::Lookup(lookup)) => Ok(lookup.clone()),
            _ => Err(ApplyError::Config(format!(
                "entity {} field {} is not a lookup",
                entity.name(),
                field + 1
            ))),
        }
    }

    /// Legacy -> platform: the lookup table's value for each key, read on the
    /// legacy side (the source).
    async fn lookup_values(
        &mut self,
        source: &Client,
        entity: &Entity,
        field: usize,
        keys: &[Value],
    ) -> Result<()> {
        let lookup = Self::lookup_of(entity, field)?;
        let e = self.entity_index(entity);
        let missing: Vec<String> = keys
            .iter()
            .filter_map(capture::pgtype::to_text)
            .filter(|k| !self.lookups.contains_key(&(e, field, k.clone())))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let key_type = self
            .source_catalog
            .column_type(&lookup.table.schema, &lookup.table.table, &lookup.key)
            .ok_or_else(|| {
                ApplyError::Config(format!(
                    "lookup table {}.{} has no column {}",
                    lookup.table.schema, lookup.table.table, lookup.key
                ))
            })?;
        // Compared as the key's own type, so the lookup table's key index
        // serves it (`key::text = ...` would scan the whole table per batch).
        let sql = format!(
            "SELECT {key}::text, {value}::text FROM {table} WHERE {key} = ANY($1::text[]::{key_type}[])",
            key = quote(&lookup.key),
            value = quote(&lookup.value),
            table = quote_table(&lookup.table.schema, &lookup.table.table),
        );
        let rows = source
            .query(&sql, &[&missing])
            .await
            .map_err(|e| ApplyError::postgres(self.from.as_str(), "read a lookup table", e))?;
        let found: HashMap<String, String> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        for key in missing {
            let value = found.get(&key).cloned();
            self.lookups.insert((e, field, key), value);
        }
        Ok(())
    }

    /// Platform -> legacy: the lookup table's key for each value, creating
    /// missing rows in the target (legacy) when the mapping says so. Within
    /// the target transaction; not cached across transactions, since a
    /// rollback would forget created rows.
    async fn lookup_keys(
        &mut self,
        target: &Client,
        entity: &Entity,
        field: usize,
        values: &[Value],
    ) -> Result<()> {
        let lookup = Self::lookup_of(entity, field)?;
        let e = self.entity_index(entity);
        let texts: Vec<String> = values.iter().filter_map(capture::pgtype::to_text).collect();
        let table = quote_table(&lookup.table.schema, &lookup.table.table);
        if lookup.create_missing {
            let mut columns = vec![quote(&lookup.value)];
            let mut select = vec!["v".to_owned()];
            for stamp in &lookup.stamp {
                columns.push(quote(stamp));
                select.push("(now() AT TIME ZONE 'UTC')".to_owned());
            }
            let sql = format!(
                "INSERT INTO {table} ({}) SELECT {} FROM unnest($1::text[]) AS v ON CONFLICT ({}) DO NOTHING",
                columns.join(", "),
                select.join(", "),
                quote(&lookup.value)
            );
            target
                .execute(&sql, &[&texts])
                .await
                .map_err(|e| ApplyError::postgres(self.to.as_str(), "create lookup rows", e))?;
        }
        let sql = format!(
            "SELECT {value}::text, {key}::text FROM {table} WHERE {value}::text = ANY($1::text[])",
            key = quote(&lookup.key),
            value = quote(&lookup.value),
        );
        let rows = target
            .query(&sql, &[&texts])
            .await
            .map_err(|e| ApplyError::postgres(self.to.as_str(), "read a lookup table", e))?;
        let found: HashMap<String, String> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        for text in texts {
            let key = found.get(&text).cloned();
            self.lookups.insert((e, usize::MAX - field, text), key);
        }
        Ok(())
    }

    /// The target-side ids of `keys` this process knows, and the positions
    /// of those it does not (a NULL key has none).
    fn known_keys(&self, index: usize, keys: &[&Value]) -> (Vec<Option<Value>>, Vec<usize>) {
        let out: Vec<Option<Value>> = keys.iter().map(|k| self.known(index, k)).collect();
        let unknown = (0..keys.len())
            .filter(|i| out[*i].is_none() && *keys[*i] != Value::Null)
            .collect();
        (out, unknown)
    }

    /// Of the rows `unknown`, those whose pair, if any, only a database
    /// knows: a legacy id above the [`PairCeiling`] has none.
    fn to_read(&self, index: usize, keys: &[&Value], unknown: &[usize]) -> Vec<usize> {
        unknown
            .iter()
            .copied()
            .filter(|i| match (self.from, keys[*i]) {
                (Side::Legacy, Value::Int(legacy)) => self.ceiling.may_be_paired(index, *legacy),
                _ => true,
            })
            .collect()
    }

    /// The target-side ids of source-side ids of `entity`, from the id
    /// correspondence (this process's, then both databases'); None where the
    /// row has no counterpart yet.
    async fn resolve_keys(
        &mut self,
        target: &Client,
        source: &Client,
        index: usize,
        entity: &Entity,
        keys: &[&Value],
        linking: bool,
    ) -> Result<Vec<Option<Value>>> {
        let (mut out, unknown) = self.known_keys(index, keys);
        if unknown.is_empty() {
            return Ok(out);
        }
        // Both databases hold part of the correspondence: each the rows it received.
        for (client, side) in [(target, self.to), (source, self.from)] {
            let still: Vec<usize> = unknown
                .iter()
                .copied()
                .filter(|i| out[*i].is_none())
                .collect();
            if still.is_empty() {
                break;
            }
            if side == self.from && linking {
                // Only the other direction records pairs in the source's
                // id_map: what it says is settled once the pair lock is held
                // (see `link_or_allocate`).
                self.lock_pairs(target, source).await?;
            }
            // Asked after the pair lock: a pair the other direction made
            // before letting it go was noted before its commit.
            let still = self.to_read(index, keys, &still);
            let found = self
                .read_map(client, side, entity, still.iter().map(|i| keys[*i]))
                .await?;
            for i in still {
                if let Some(id) = found.get(&capture::pgtype::to_text(keys[i]).unwrap_or_default())
                {
                    out[i] = Some(id.clone());
                    self.learn(index, keys[i], id);
                }
            }
        }
        Ok(out)
    }

    /// Gives rows without a counterpart one: an existing target row with the
    /// same natural key (values as they will be written, references already
    /// translated) that is nobody's counterpart yet, or a new id. Records the
    /// new pairs in the target's id correspondence, in the open transaction.
    /// Returns the rows given a new id.
    ///
    /// "Nobody's counterpart" is asked of both databases: each holds the
    /// pairs of the rows it received, so a target row born here that already
    /// crossed to the source has its pair in the *source's* `id_map`. When
    /// the matching target row corresponds to another source row, the
    /// incoming row is not written here (it stays without a counterpart and
    /// is counted as `key_held`): the source's unique natural key says that
    /// other row holds the key there now, so the incoming row was deleted or
    /// re-keyed since, and its later events follow. Linking it anyway would
    /// give one target row two counterparts, and a delete of the incoming
    /// row would then remove a row whose other counterpart lives on.
    #[allow(clippy::too_many_arguments)]
    async fn link_or_allocate(
        &mut self,
        target: &Client,
        source: &Client,
        index: usize,
        entity: &Entity,
        keys: &[&Value],
        target_keys: &mut [Option<Value>],
        columns: &[String],
        resolved: &[Option<Vec<Option<String>>>],
        prefetched: Option<NaturalMatches>,
    ) -> Result<Vec<usize>> {
        let fresh: Vec<usize> = (0..keys.len())
            .filter(|i| {
                target_keys[*i].is_none() && *keys[*i] != Value::Null && resolved[*i].is_some()
            })
            .collect();
        if fresh.is_empty() {
            return Ok(Vec::new());
        }
        let natural = entity.natural_key_columns(self.to).to_vec();
        // Without a natural key there are no links: each direction only
        // pairs the rows it creates, and the two never pair the same id.
        // With one, the decision is made with the other direction's
        // decisions settled: `resolve_keys` took the pair lock before it
        // asked the source's id_map about `fresh`, so the other direction
        // has paired none of them since (this call keeps the lock held).
        if !natural.is_empty() {
            self.lock_pairs(target, source).await?;
        }
        let mut new_pairs: Vec<(i64, Uuid)> = Vec::new();
        let mut held: HashSet<usize> = HashSet::new();
        if let Some(positions) = natural_positions(&natural, columns) {
            let tuple_of = |i: usize| natural_tuple(&positions, resolved, i);
            let existing = match prefetched {
                Some(existing) => existing,
                None => {
                    self.natural_matches(target, entity, &positions, resolved, &fresh)
                        .await?
                }
            };
            if !existing.is_empty() {
                let paired = self
                    .paired_in_source(source, entity, existing.values().map(|(k, _)| k))
                    .await?;
                // Rows whose match already corresponds to another source row:
                // (row, match, that source row, whether the pair is ours).
                let mut contested: Vec<(usize, String, String, bool)> = Vec::new();
                let mut matches: Vec<(usize, String)> = Vec::new();
                for i in &fresh {
                    let Some((found, in_target)) =
                        tuple_of(*i).and_then(|t| existing.get(&t).cloned())
                    else {
                        continue;
                    };
                    let incoming = capture::pgtype::to_text(keys[*i]).unwrap_or_default();
                    let other = in_target.clone().or_else(|| paired.get(&found).cloned());
                    match other {
                        Some(other) if other != incoming => {
                            contested.push((*i, found, other, in_target.is_some()));
                        }
                        _ => matches.push((*i, found)),
                    }
                }
                if !contested.is_empty() {
                    let others: Vec<&String> = contested.iter().map(|(_, _, o, _)| o).collect();
                    let alive = self.source_rows_alive(source, entity, &others).await?;
                    for (i, found, other, ours) in contested {
                        if alive.contains(&other) || !ours {
                            held.insert(i);
                            continue;
                        }
                        // The other source row is gone there (its delete
                        // not seen yet: polling finds deletes later): the
                        // pair is stale, and the match goes to this row.
                        self.unpair(target, index, entity, &found, &other).await?;
                        matches.push((i, found));
                    }
                }
                let mut taken = HashSet::new();
                for (i, found) in matches {
                    if !taken.insert(found.clone()) {
                        continue;
                    }
                    let id = parse_key(self.to, &found)?;
                    if let Some(pair) = pair_of(self.from, keys[i], &id) {
                        new_pairs.push(pair);
                    }
                    self.learn(index, keys[i], &id);
                    target_keys[i] = Some(id);
                    self.stats.linked(1);
                }
            }
        }
        if !held.is_empty() {
            debug!(
                entity = entity.name(),
                rows = held.len(),
                "natural keys held by rows that correspond to other source rows; not written"
            );
            self.stats.key_held(held.len() as u64);
        }
        let allocate: Vec<usize> = fresh
            .iter()
            .copied()
            .filter(|i| target_keys[*i].is_none() && !held.contains(i))
            .collect();
        self.allocate_and_record(
            target,
            source,
            index,
            entity,
            keys,
            &allocate,
            target_keys,
            new_pairs,
        )
        .await?;
        Ok(allocate)
    }

    /// The target rows whose natural key is that of one of `rows` (values as
    /// they will be written), by natural key (text): each row's key and the
    /// source row it is paired with in the target's `id_map`, if any. One
    /// index probe per key. Reads only the target, whose rows and pairs only
    /// this direction and the target's applications change: no pair lock is
    /// needed to read it.
    async fn natural_matches(
        &self,
        target: &Client,
        entity: &Entity,
        positions: &[usize],
        resolved: &[Option<Vec<Option<String>>>],
        rows: &[usize],
    ) -> Result<NaturalMatches> {
        let natural = entity.natural_key_columns(self.to);
        let mut arrays: Vec<Vec<String>> = vec![Vec::new(); natural.len()];
        for tuple in rows
            .iter()
            .filter_map(|i| natural_tuple(positions, resolved, *i))
        {
            for (array, value) in arrays.iter_mut().zip(tuple) {
                array.push(value);
            }
        }
        if arrays.first().is_none_or(Vec::is_empty) {
            return Ok(NaturalMatches::new());
        }
        let table = entity.table(self.to);
        let key = quote(&table.key);
        let other_column = match self.to {
            Side::Legacy => "platform_id",
            Side::Platform => "legacy_id",
        };
        let names: Vec<String> = (0..natural.len()).map(|n| format!("n{n}")).collect();
        let params: Vec<String> = (0..natural.len())
            .map(|n| format!("${}::text[]", n + 2))
            .collect();
        let select: Vec<String> = natural
            .iter()
            .map(|c| format!("t.{}::text", quote(c)))
            .collect();
        let join: Vec<String> = natural
            .iter()
            .zip(&names)
            .map(|(c, n)| {
                // Typed, so an index on the natural key is used.
                let type_name = self
                    .catalog
                    .column_type(&table.schema, &table.table, c)
                    .unwrap_or("text");
                format!("t.{} = x.{n}::{type_name}", quote(c))
            })
            .collect();
        let sql = format!(
            "SELECT t.{key}::text, m.{other_column}::text, {select} FROM unnest({params}) AS x({names}) \
             CROSS JOIN LATERAL (SELECT * FROM {table} t WHERE {join} {PROBE}) AS t \
             LEFT JOIN LATERAL ({pairs} LIMIT 1) AS m ON true",
            pairs = pairs_of(&format!("t.{key}"), self.to),
            select = select.join(", "),
            table = quote_table(&table.schema, &table.table),
            params = params.join(", "),
            names = names.join(", "),
            join = join.join(" AND "),
        );
        let name = entity.name().to_owned();
        let mut query_params: Vec<&(dyn ToSql + Sync)> = vec![&name];
        for array in &arrays {
            query_params.push(array);
        }
        let failed = |e| ApplyError::postgres(self.to.as_str(), "match natural keys", e);
        let statement = self.statements.get(target, &sql).await.map_err(failed)?;
        let found = target
            .query(&statement, &query_params)
            .await
            .map_err(failed)?;
        Ok(found
            .iter()
            .map(|r| {
                (
                    (2..natural.len() + 2)
                        .map(|c| r.get::<_, String>(c))
                        .collect(),
                    (r.get(0), r.get(1)),
                )
            })
            .collect())
    }

    /// [`Self::resolve_keys`] for a linking run of inserts (or reads), whose
    /// rows have most likely not crossed yet and so go on to
    /// [`Self::link_or_allocate`]: every read that takes in one round. The
    /// target's `id_map` and its natural-key matches go out together on the
    /// target connection while the source connection takes the pair lock
    /// and then reads the source's `id_map`. Done one after the other, each
    /// reply kept the target waiting for apply (the first read alone, a
    /// measurable share of the run in `scripts/bench apply`). What is
    /// decided is the same: a pair in the target's `id_map` first, then one
    /// in the source's, read with the lock held; the natural-key matches
    /// (returned) are used only for rows found in neither. Costs a
    /// natural-key probe for each row that turns out to have crossed
    /// already, which is why updates keep the sequential path.
    #[allow(clippy::too_many_arguments)]
    async fn resolve_fresh_keys(
        &mut self,
        target: &Client,
        source: &Client,
        index: usize,
        entity: &Entity,
        keys: &[&Value],
        columns: &[String],
        resolved: &[Option<Vec<Option<String>>>],
    ) -> Result<(Vec<Option<Value>>, NaturalMatches)> {
        let (mut out, unknown) = self.known_keys(index, keys);
        if unknown.is_empty() {
            return Ok((out, NaturalMatches::new()));
        }
        let natural = entity.natural_key_columns(self.to);
        let positions = natural_positions(natural, columns);
        let lock = PairLockStatement::of(self.to);
        let lock_client = PairLockStatement::client(self.to, target, source);
        // Natural keys are matched for every unknown row, pairs read only
        // for those that may have one (an empty read asks nothing). Only
        // this direction records pairs in the target.
        let to_read = self.to_read(index, keys, &unknown);
        let this = &*self;
        let in_target = this.read_map(target, this.to, entity, to_read.iter().map(|i| keys[*i]));
        let matches = async {
            match &positions {
                Some(positions) => {
                    // Rows whose values did not resolve have no natural key.
                    this.natural_matches(target, entity, positions, resolved, &unknown)
                        .await
                }
                None => Ok(NaturalMatches::new()),
            }
        };
        let in_source = async {
            if this.pair_lock == PairLock::None {
                if let Err(e) = lock_client.execute(lock.sql, &[]).await {
                    let error = ApplyError::postgres("legacy", "lock pair decisions", e);
                    return (false, Err(error));
                }
            }
            // Asked once the pair lock is held: the other direction notes
            // the pairs it records before it commits and lets the lock go.
            let to_read = this.to_read(index, keys, &unknown);
            let read = this
                .read_map(source, this.from, entity, to_read.iter().map(|i| keys[*i]))
                .await;
            (true, read)
        };
        // Joined, not `try_join`ed: a read that fails must not abandon a
        // lock request the server may grant, or the session lock would be
        // held without this writer knowing to release it.
        let (in_target, matches, (locked, in_source)) = tokio::join!(in_target, matches, in_source);
        if locked && self.pair_lock == PairLock::None {
            self.pair_lock = lock.held;
        }
        let (in_target, matches, in_source) = (in_target?, matches?, in_source?);
        for i in unknown {
            let text = capture::pgtype::to_text(keys[i]).unwrap_or_default();
            if let Some(id) = in_target.get(&text).or_else(|| in_source.get(&text)) {
                out[i] = Some(id.clone());
                self.learn(index, keys[i], id);
            }
        }
        Ok((out, matches))
    }

    /// Takes the pair lock for the rest of the target transaction: while it
    /// is held, the other direction cannot decide what rows pair with.
    ///
    /// Each direction records the pairs it makes in its own target, and
    /// decides from what both databases' `id_map`s say. Two rows created
    /// with one natural key on both sides at once are decided by both
    /// directions at once, each in its own database: without a common lock
    /// one can link the legacy row to the platform row while the other gives
    /// it a new counterpart (the platform row was deleted meanwhile), and a
    /// later delete then removes a row whose other counterpart lives on. So
    /// linking decisions take one lock, in one place, the legacy database:
    /// the direction writing there as a transaction lock, the other as a
    /// session lock on its source connection that
    /// [`Self::release_pair_lock`] frees after its target commit or
    /// rollback. A direction reads the other's `id_map` only with the lock
    /// held, so it sees every pair the other made. Only entities with a
    /// natural key take it (nothing else is ever linked), once per target
    /// transaction. One lock for all entities, not one each: two directions
    /// taking per-entity locks in their own source orders deadlocked all the
    /// time; with one lock, and no other lock waited for while holding it
    /// that the other direction could hold, there is no cycle.
    async fn lock_pairs(&mut self, target: &Client, source: &Client) -> Result<()> {
        if self.pair_lock != PairLock::None {
            return Ok(());
        }
        let lock = PairLockStatement::of(self.to);
        PairLockStatement::client(self.to, target, source)
            .execute(lock.sql, &[])
            .await
            .map_err(|e| ApplyError::postgres("legacy", "lock pair decisions", e))?;
        self.pair_lock = lock.held;
        Ok(())
    }

    /// Frees the session pair lock this writer holds on its source (see
    /// `lock_pairs`); call after the target transaction ended.
    pub async fn release_pair_lock(&mut self, source: &Client) -> Result<()> {
        let held = std::mem::replace(&mut self.pair_lock, PairLock::None);
        if held != PairLock::Session {
            return Ok(());
        }
        source
            .execute(
                "SELECT pg_catalog.pg_advisory_unlock(hashtextextended('syncbridge pairs', 0))",
                &[],
            )
            .await
            .map_err(|e| ApplyError::postgres("legacy", "release the pair lock", e))?;
        Ok(())
    }

    /// Of the source keys `keys` (text), those whose row still exists in the
    /// source table.
    async fn source_rows_alive(
        &self,
        source: &Client,
        entity: &Entity,
        keys: &[&String],
    ) -> Result<HashSet<String>> {
        let table = entity.table(self.from);
        let key_type = match self.from {
            Side::Legacy => "int8",
            Side::Platform => "uuid",
        };
        let sql = format!(
            "SELECT s.{key}::text FROM unnest($1::text[]::{key_type}[]) AS x(id) \
             CROSS JOIN LATERAL (SELECT {key} FROM {table} WHERE {key} = x.id {PROBE}) AS s",
            key = quote(&table.key),
            table = quote_table(&table.schema, &table.table),
        );
        let rows = source
            .query(&sql, &[&keys])
            .await
            .map_err(|e| ApplyError::postgres(self.from.as_str(), "look for source rows", e))?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Removes the target's stale pair of target row `target_key` with the
    /// source row `source_key` (gone from the source), in the open
    /// transaction, and forgets it here.
    async fn unpair(
        &mut self,
        target: &Client,
        index: usize,
        entity: &Entity,
        target_key: &str,
        source_key: &str,
    ) -> Result<()> {
        let source_value = parse_key(self.from, source_key)?;
        let target_value = parse_key(self.to, target_key)?;
        let Some((legacy, platform)) = pair_of(self.from, &source_value, &target_value) else {
            return Ok(());
        };
        target
            .execute(
                "WITH m AS (DELETE FROM syncbridge.id_map \
                            WHERE entity = $1 AND legacy_id = $2 AND platform_id = $3) \
                 DELETE FROM syncbridge.id_derived \
                 WHERE entity = $1 AND legacy_id = $2 AND platform_id = $3",
                &[&entity.name(), &legacy, &platform],
            )
            .await
            .map_err(|e| ApplyError::postgres(self.to.as_str(), "remove a stale pair", e))?;
        self.ids.forget(index, legacy, platform);
        self.hidden = true;
        debug!(
            entity = entity.name(),
            "a stale pair gave way to a natural-key link"
        );
        Ok(())
    }

    /// Of the target keys `keys` (text), those the source's `id_map` pairs
    /// with a source row, and that source row's key (text).
    async fn paired_in_source<'k>(
        &self,
        source: &Client,
        entity: &Entity,
        keys: impl Iterator<Item = &'k String>,
    ) -> Result<HashMap<String, String>> {
        let keys: Vec<&String> = keys.collect();
        read_pairs(
            source,
            self.prepared(self.from),
            self.from.as_str(),
            entity,
            self.to,
            &keys,
        )
        .await
    }

    /// The changes among `rows` that were made on top of a version this
    /// writer's target sent over: per such row, its target key (`keys`,
    /// aligned with `rows`) and the `xmin` that target version carried.
    ///
    /// A tie at whole seconds between a target row and an incoming change is
    /// normally won by the `tie_winner`. But when the target row's version
    /// crossed to the source (the source's `apply_ledger` has its transaction
    /// as `source_xid`) before the change committed there (`written_lsn`
    /// below the change's commit LSN), the change was made after that version
    /// arrived: it is causally newer and must win while the target row is
    /// still that version (same `xmin`; the writing statement checks). A
    /// concurrent change (committed before the version arrived) still loses
    /// the tie, on both sides. Returns the target keys and `xmin`s that such
    /// changes may overwrite.
    async fn bases(
        &self,
        target: &Client,
        source: &Client,
        entity: &Entity,
        rows: &[&PendingRow],
        keys: &[Option<String>],
    ) -> Result<(Vec<String>, Vec<String>)> {
        // The target rows' versions now (rows not there yet have none).
        let table = entity.table(self.to);
        let key_type = self.column_type(entity, self.to, &table.key)?;
        let versions = target
            .query(
                &format!(
                    "SELECT x.ord, t.xmin::text FROM unnest($1::text[]::{key_type}[]) WITH ORDINALITY AS x(k, ord) \
                     CROSS JOIN LATERAL (SELECT xmin FROM {table} WHERE {key} = x.k {PROBE}) AS t",
                    table = quote_table(&table.schema, &table.table),
                    key = quote(&table.key),
                ),
                &[&keys],
            )
            .await
            .map_err(|e| ApplyError::postgres(self.to.as_str(), "read row versions", e))?;
        if versions.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        let mut candidates: Vec<(String, String)> = Vec::with_capacity(versions.len());
        let mut xmins = Vec::with_capacity(versions.len());
        let mut lsns = Vec::with_capacity(versions.len());
        for version in versions {
            let ordinal = version.get::<_, i64>(0) as usize;
            let (Some(Some(key)), Some(row)) = (
                ordinal.checked_sub(1).and_then(|i| keys.get(i)),
                ordinal.checked_sub(1).and_then(|i| rows.get(i)),
            ) else {
                continue;
            };
            let xmin: String = version.get(1);
            xmins.push(xmin.clone());
            lsns.push(format!(
                "{:X}/{:X}",
                row.commit_lsn >> 32,
                row.commit_lsn & 0xffff_ffff
            ));
            candidates.push((key.clone(), xmin));
        }
        // Which of them crossed to the source before the change committed.
        let target_origin = &self.mapping.side(self.to).source;
        let crossed = source
            .query(
                "SELECT x.ord FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS x(xid, lsn, ord) \
                 WHERE EXISTS (SELECT 1 FROM syncbridge.apply_ledger l \
                   WHERE l.source_xid = x.xid AND l.origin = $3 AND l.written_lsn < x.lsn::pg_lsn)",
                &[&xmins, &lsns, target_origin],
            )
            .await
            .map_err(|e| ApplyError::postgres(self.from.as_str(), "read crossed versions", e))?;
        let mut based_keys = Vec::with_capacity(crossed.len());
        let mut based_xmins = Vec::with_capacity(crossed.len());
        for row in crossed {
            let ordinal = row.get::<_, i64>(0) as usize;
            if let Some((key, xmin)) = ordinal.checked_sub(1).and_then(|i| candidates.get(i)) {
                based_keys.push(key.clone());
                based_xmins.push(xmin.clone());
            }
        }
        Ok((based_keys, based_xmins))
    }

    /// Gives deleted rows that never crossed (no id correspondence yet) the
    /// id they would get, and records the pair, so that the delete leaves a
    /// tombstone under it. A snapshot's `READ` of the row that arrives after
    /// the `DELETE` (the row was deleted after its page was read) then finds
    /// the tombstone and does not bring the row back.
    ///
    /// A derived id can be taken already: the row was paired with it, then
    /// the pair gave way to another source row with the same natural key
    /// (see [`Self::unpair`]: the row was gone at the source before its
    /// delete arrived, as with polling). That id is the other row's now, so
    /// the delete leaves neither a pair nor a tombstone under it.
    async fn allocate_for_tombstones(
        &mut self,
        target: &Client,
        source: &Client,
        index: usize,
        entity: &Entity,
        keys: &[&Value],
        target_keys: &mut [Option<Value>],
    ) -> Result<u64> {
        let mut unknown: Vec<usize> = (0..keys.len())
            .filter(|i| target_keys[*i].is_none() && *keys[*i] != Value::Null)
            .collect();
        if unknown.is_empty() {
            return Ok(0);
        }
        let count = unknown.len() as u64;
        if self.to == Side::Platform {
            // Derived ids, as `allocate` would give them.
            let derived = self.allocate(target, entity, keys, &unknown).await?;
            let texts: Vec<String> = derived
                .iter()
                .map(|id| capture::pgtype::to_text(id).unwrap_or_default())
                .collect();
            let asked: Vec<&String> = texts.iter().collect();
            let taken = read_pairs(
                target,
                self.prepared(self.to),
                "platform",
                entity,
                Side::Platform,
                &asked,
            )
            .await?;
            unknown = unknown
                .into_iter()
                .zip(&texts)
                .filter(|(_, id)| !taken.contains_key(*id))
                .map(|(i, _)| i)
                .collect();
        }
        self.allocate_and_record(
            target,
            source,
            index,
            entity,
            keys,
            &unknown,
            target_keys,
            Vec::new(),
        )
        .await?;
        Ok(count)
    }

    /// Gives the rows `which` new target ids, and records them with `pairs`
    /// (links found meanwhile) in the target's id correspondence, in the
    /// open transaction.
    #[allow(clippy::too_many_arguments)]
    async fn allocate_and_record(
        &mut self,
        target: &Client,
        source: &Client,
        index: usize,
        entity: &Entity,
        keys: &[&Value],
        which: &[usize],
        target_keys: &mut [Option<Value>],
        mut pairs: Vec<(i64, Uuid)>,
    ) -> Result<()> {
        let links = pairs.len();
        if !which.is_empty() {
            let ids = self.allocate(target, entity, keys, which).await?;
            for (&i, id) in which.iter().zip(ids) {
                if let Some(pair) = pair_of(self.from, keys[i], &id) {
                    pairs.push(pair);
                }
                self.learn(index, keys[i], &id);
                target_keys[i] = Some(id);
            }
        }
        // A legacy row given its derived id goes to `id_derived`, every
        // other pair to `id_map` (see `correspondence`). New platform ids
        // are derived ones; a link is one when it pairs a legacy row with
        // the id derived from it.
        let (derived, other) = match self.to {
            Side::Platform => {
                let mut derived = pairs.split_off(links);
                let (more, linked): (Vec<_>, Vec<_>) =
                    pairs.into_iter().partition(|&(legacy, platform)| {
                        derived_platform_id(entity.name(), legacy) == platform
                    });
                derived.extend(more);
                (derived, linked)
            }
            Side::Legacy => (Vec::new(), pairs),
        };
        // Plain inserts, not `ON CONFLICT DO NOTHING` (which checks every
        // unique index before each row: measured costlier): these
        // pairs were looked for in both databases just before, with the pair
        // lock held for entities that link. Should one exist after all, the
        // unique violation fails the source transaction, which is applied
        // again once and then finds the pair; nothing is dropped silently.
        for (table, pairs) in [("id_derived", derived), ("id_map", other)] {
            if pairs.is_empty() {
                continue;
            }
            let (legacy, platform): (Vec<i64>, Vec<Uuid>) = pairs.into_iter().unzip();
            let params: Vec<Box<dyn ToSql + Sync + Send>> = vec![
                Box::new(entity.name().to_owned()),
                Box::new(legacy),
                Box::new(platform),
            ];
            self.send_prepared(
                target,
                source,
                format!(
                    "INSERT INTO syncbridge.{table} (entity, legacy_id, platform_id) \
                     SELECT $1, l, p FROM unnest($2::int8[], $3::uuid[]) AS m(l, p)"
                ),
                params,
                "record the id correspondence",
                Then::Nothing,
            )
            .await?;
        }
        Ok(())
    }

    fn known(&self, index: usize, key: &Value) -> Option<Value> {
        match (self.from, key) {
            (Side::Legacy, Value::Int(id)) => self
                .ids
                .platform_of(index, *id)
                .map(|u| Value::Uuid(*u.as_bytes())),
            (Side::Platform, Value::Uuid(bytes)) => self
                .ids
                .legacy_of(index, Uuid::from_bytes(*bytes))
                .map(Value::Int),
            _ => None,
        }
    }

    fn learn(&mut self, index: usize, source_key: &Value, target_key: &Value) {
        if let Some((legacy, platform)) = pair_of(self.from, source_key, target_key) {
            self.ceiling.paired(index, legacy);
            self.ids.remember(index, legacy, platform);
        }
    }

    /// The target keys of source keys `keys`, from `client`'s `id_map`.
    async fn read_map(
        &self,
        client: &Client,
        side: Side,
        entity: &Entity,
        keys: impl Iterator<Item = &Value>,
    ) -> Result<HashMap<String, Value>> {
        let texts: Vec<String> = keys.filter_map(capture::pgtype::to_text).collect();
        let texts: Vec<&String> = texts.iter().collect();
        read_pairs(
            client,
            self.prepared(side),
            side.as_str(),
            entity,
            self.from,
            &texts,
        )
        .await?
        .into_iter()
        .map(|(from, to)| Ok((from, parse_key(self.to, &to)?)))
        .collect()
    }

    /// New target ids: a uuid derived from the legacy id (stable, so a replay
    /// derives the same one), or the next value of the legacy key's sequence.
    async fn allocate(
        &self,
        target: &Client,
        entity: &Entity,
        keys: &[&Value],
        which: &[usize],
    ) -> Result<Vec<Value>> {
        match self.to {
            Side::Platform => which
                .iter()
                .map(|i| match keys[*i] {
                    Value::Int(id) => Ok(Value::Uuid(
                        derived_platform_id(entity.name(), *id).into_bytes(),
                    )),
                    _ => Err(ApplyError::Rejected(format!(
                        "entity {}: a legacy key that is not an integer",
                        entity.name()
                    ))),
                })
                .collect(),
            // A value the sequence hands out may be taken already: by a row
            // inserted with an explicit id (a load that bypassed the
            // sequence), or by a pair. Such values are skipped, drawing
            // twice as many each round, so that a new row never lands on
            // another row's id and overwrites it.
            Side::Legacy => {
                let table = entity.table(Side::Legacy);
                let qualified = quote_table(&table.schema, &table.table);
                let free = format!(
                    "SELECT s.v FROM (SELECT nextval(pg_get_serial_sequence($1, $2)) AS v \
                                      FROM generate_series(1, $3::int)) AS s \
                     WHERE NOT EXISTS (SELECT 1 FROM {qualified} t WHERE t.{key} = s.v {PROBE}) \
                       AND NOT EXISTS ({pairs})",
                    key = quote(&table.key),
                    pairs = pairs_of_entity("$4", "s.v", Side::Legacy),
                );
                let allocate = self
                    .prepared(self.to)
                    .get(target, &free)
                    .await
                    .map_err(|e| {
                        ApplyError::postgres("legacy", format!("allocate {} ids", entity.name()), e)
                    })?;
                let mut ids = Vec::with_capacity(which.len());
                let mut draw = which.len();
                while ids.len() < which.len() {
                    if draw > ALLOCATE_DRAW_LIMIT {
                        return Err(ApplyError::Rejected(format!(
                            "entity {}: the sequence of {} hands out only ids rows already have (reset it past the table's largest id)",
                            entity.name(),
                            qualified
                        )));
                    }
                    let rows = target
                        .query(
                            &allocate,
                            &[&qualified, &table.key, &(draw as i32), &entity.name()],
                        )
                        .await
                        .map_err(|e| {
                            ApplyError::postgres(
                                "legacy",
                                format!("allocate {} ids", entity.name()),
                                e,
                            )
                        })?;
                    ids.extend(rows.iter().map(|r| Value::Int(r.get(0))));
                    draw *= 2;
                }
                ids.truncate(which.len());
                Ok(ids)
            }
        }
    }
}

/// The most sequence values one round of a legacy id allocation draws: the
/// rounds double while values are taken, so about a million taken ids in a
/// row stop the allocation with an error rather than looping on.
const ALLOCATE_DRAW_LIMIT: usize = 1 << 20;

/// The pairs of `entity` in `client`'s id correspondence (`id_map` and
/// `id_derived`, see [`pairs_of`]) whose `by` side id is one of `keys`
/// (text): that id -> the other side's id (text). One index probe per key
/// and table, typed (see [`PROBE`]).
async fn read_pairs(
    client: &Client,
    prepared: &Prepared,
    database: &'static str,
    entity: &Entity,
    by: Side,
    keys: &[&String],
) -> Result<HashMap<String, String>> {
    if keys.is_empty() {
        return Ok(HashMap::new());
    }
    let (column, give, by_type) = match by {
        Side::Legacy => ("legacy_id", "platform_id", "int8"),
        Side::Platform => ("platform_id", "legacy_id", "uuid"),
    };
    let sql = format!(
        "SELECT m.{column}::text, m.{give}::text FROM unnest($2::text[]::{by_type}[]) AS x(id) \
         CROSS JOIN LATERAL ({pairs}) AS m",
        pairs = pairs_of("x.id", by)
    );
    let failed = |e| ApplyError::postgres(database, "read the id correspondence", e);
    let statement = prepared.get(client, &sql).await.map_err(failed)?;
    let rows = client
        .query(&statement, &[&entity.name(), &keys])
        .await
        .map_err(failed)?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// A subquery of the pairs of `$1` (the entity) whose `by` side id is
/// `id`, from both tables of the correspondence (see `correspondence`):
/// columns `legacy_id` and `platform_id`, one index probe each.
fn pairs_of(id: &str, by: Side) -> String {
    pairs_of_entity("$1", id, by)
}

/// [`pairs_of`] with the entity given by the SQL expression `entity`.
fn pairs_of_entity(entity: &str, id: &str, by: Side) -> String {
    let derived = match by {
        Side::Legacy => format!("legacy_id = {id}"),
        Side::Platform => format!(
            "legacy_id = {} AND platform_id = {id}",
            derived_legacy_id_sql(id)
        ),
    };
    let by = match by {
        Side::Legacy => "legacy_id",
        Side::Platform => "platform_id",
    };
    format!(
        "(SELECT legacy_id, platform_id FROM syncbridge.id_map \
           WHERE entity = {entity} AND {by} = {id} {PROBE}) \
         UNION ALL \
         (SELECT legacy_id, platform_id FROM syncbridge.id_derived \
           WHERE entity = {entity} AND {derived} {PROBE})"
    )
}

/// Target rows by natural key (text): their key and the source row their
/// pair in the target's correspondence names, if any (see
/// `Writer::natural_matches`).
type NaturalMatches = HashMap<Vec<String>, (String, Option<String>)>;

/// How a direction writing to `to` takes the pair lock (see
/// `Writer::lock_pairs`): always in the legacy database, so as a transaction
/// lock on its target connection when that is legacy, else as a session lock
/// on its source connection.
struct PairLockStatement {
    sql: &'static str,
    held: PairLock,
}

impl PairLockStatement {
    fn of(to: Side) -> PairLockStatement {
        match to {
            Side::Legacy => PairLockStatement {
                sql: "SELECT pg_catalog.pg_advisory_xact_lock(hashtextextended('syncbridge pairs', 0))::text",
                held: PairLock::Transaction,
            },
            Side::Platform => PairLockStatement {
                sql: "SELECT pg_catalog.pg_advisory_lock(hashtextextended('syncbridge pairs', 0))::text",
                held: PairLock::Session,
            },
        }
    }

    /// The connection that takes it: the one to the legacy database.
    fn client<'c>(to: Side, target: &'c Client, source: &'c Client) -> &'c Client {
        match to {
            Side::Legacy => target,
            Side::Platform => source,
        }
    }
}

/// Where the natural key's columns are among `columns`; `None` without a
/// natural key, or when the run does not carry all of its columns.
fn natural_positions(natural: &[String], columns: &[String]) -> Option<Vec<usize>> {
    if natural.is_empty() {
        return None;
    }
    natural
        .iter()
        .map(|n| columns.iter().position(|c| c == n))
        .collect()
}

/// The natural key of row `row` as it will be written, when complete (no
/// NULL part, values resolved).
fn natural_tuple(
    positions: &[usize],
    resolved: &[Option<Vec<Option<String>>>],
    row: usize,
) -> Option<Vec<String>> {
    let values = resolved.get(row)?.as_ref()?;
    positions
        .iter()
        .map(|p| values.get(*p).cloned().flatten())
        .collect()
}

/// The row locks of [`lock_rows`]: `$1` the entity, `$2` the keys (text).
const LOCK_ROWS: &str =
    "SELECT pg_catalog.pg_advisory_xact_lock(hashtextextended($1 || ':' || k, 0)) \
     FROM (SELECT DISTINCT k FROM unnest($2::text[]) AS k WHERE k IS NOT NULL ORDER BY k) AS keys";

/// Keys (text) and delete times (text) of one entity's deletes.
type DeleteBatch = (Vec<Option<String>>, Vec<Option<String>>);

/// Takes a transaction-level advisory lock per row (by entity and key), in
/// key order, in a statement of its own before the statement that decides.
///
/// Two writers of one row decide from their own statement snapshot: an
/// upsert checking for a tombstone and a re-asserted delete checking for the
/// row could each miss the other's uncommitted write and both commit (write
/// skew). With the lock taken first, the later writer waits for the earlier
/// one's commit and its deciding statement, which starts after the lock is
/// granted, sees it.
///
/// Rows that [`Writer::link_or_allocate`] gave a new id in the same run are
/// not locked (a measurable share of the target's time in `scripts/bench
/// apply`): no other writer can know that id before this transaction
/// commits. A legacy id comes from the sequence; a derived platform id is
/// only ever the one row's, and should another row hold it already (the
/// pair gave way to a row with the same natural key, see `Writer::unpair`),
/// the `id_map` insert sent before the write fails on its unique index and
/// the write never runs.
async fn lock_rows(
    client: &Client,
    side: &'static str,
    entity: &str,
    keys: &[Option<String>],
) -> Result<()> {
    client
        .execute(LOCK_ROWS, &[&entity, &keys])
        .await
        .map_err(|e| ApplyError::postgres(side, "lock rows", e))?;
    Ok(())
}

fn parse_key(side: Side, text: &str) -> Result<Value> {
    match side {
        Side::Legacy => text
            .parse::<i64>()
            .map(Value::Int)
            .map_err(|_| ApplyError::Rejected("a legacy id that is not an integer".into())),
        Side::Platform => Uuid::parse_str(text)
            .map(|u| Value::Uuid(*u.as_bytes()))
            .map_err(|_| ApplyError::Rejected("a platform id that is not a uuid".into())),
    }
}

/// `(legacy id, platform id)` from a source key and a target key.
fn pair_of(from: Side, source_key: &Value, target_key: &Value) -> Option<(i64, Uuid)> {
    match (from, source_key, target_key) {
        (Side::Legacy, Value::Int(l), Value::Uuid(p)) => Some((*l, Uuid::from_bytes(*p))),
        (Side::Platform, Value::Uuid(p), Value::Int(l)) => Some((*l, Uuid::from_bytes(*p))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uuid(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    #[test]
    fn pairs_of_a_rolled_back_transaction_are_forgotten_and_those_kept_in_the_batch_stay() {
        let mut ids = IdMap::default();
        ids.remember(0, 1, uuid(1));
        ids.keep_transaction();
        ids.remember(0, 2, uuid(2));
        ids.roll_back_transaction();
        assert_eq!(ids.platform_of(0, 1), Some(uuid(1)));
        assert_eq!(ids.platform_of(0, 2), None);
        assert_eq!(ids.legacy_of(0, uuid(2)), None);
        ids.commit_batch();
        ids.remember(0, 3, uuid(3));
        ids.roll_back_batch();
        assert_eq!(ids.legacy_of(0, uuid(1)), Some(1), "committed pairs stay");
        assert_eq!(ids.platform_of(0, 3), None);
    }

    #[test]
    fn a_rolled_back_batch_forgets_its_pairs_but_not_a_committed_pair_of_the_same_id() {
        let mut ids = IdMap::default();
        ids.remember(0, 1, uuid(1));
        ids.commit_batch();
        // Another legacy id claims the same platform id: the committed
        // pair keeps the reverse direction, and a rollback leaves it.
        ids.remember(0, 9, uuid(1));
        ids.keep_transaction();
        ids.roll_back_batch();
        assert_eq!(ids.legacy_of(0, uuid(1)), Some(1));
        assert_eq!(ids.platform_of(0, 9), None);
        assert_eq!(ids.platform_of(0, 1), Some(uuid(1)));
    }

    #[test]
    fn forgetting_committed_pairs_keeps_those_of_the_open_transaction() {
        let mut ids = IdMap::default();
        ids.remember(0, 1, uuid(1));
        ids.commit_batch();
        ids.remember(0, 2, uuid(2));
        ids.keep_transaction();
        ids.remember(1, 3, uuid(3));
        ids.forget_committed();
        assert_eq!(ids.platform_of(0, 1), None);
        assert_eq!(ids.platform_of(0, 2), Some(uuid(2)));
        assert_eq!(ids.legacy_of(1, uuid(3)), Some(3));
        // And they are still rolled back with their transaction.
        ids.roll_back_batch();
        assert_eq!(ids.platform_of(0, 2), None);
        assert_eq!(ids.platform_of(1, 3), None);
    }

    #[test]
    fn a_forgotten_pair_is_not_brought_back_by_forgetting_the_committed_ones() {
        let mut ids = IdMap::default();
        ids.remember(0, 1, uuid(1));
        ids.forget(0, 1, uuid(1));
        ids.forget_committed();
        assert_eq!(ids.platform_of(0, 1), None);
        assert_eq!(ids.legacy_of(0, uuid(1)), None);
    }

    #[test]
    fn a_presized_parameter_is_encoded_as_its_value_and_text_arrays_are_sized_exactly() {
        use tokio_postgres::types::Type;
        let texts = vec![
            Some("a".to_owned()),
            None,
            Some("ünïcode".to_owned()),
            Some(String::new()),
        ];
        let mut plain = bytes::BytesMut::new();
        texts
            .to_sql_checked(&Type::TEXT_ARRAY, &mut plain)
            .expect("encodes");
        let mut presized = bytes::BytesMut::new();
        let wrapped = Presized {
            value: texts.clone(),
            bytes: 4096,
        };
        wrapped
            .to_sql_checked(&Type::TEXT_ARRAY, &mut presized)
            .expect("encodes");
        assert_eq!(presized, plain);
        assert!(presized.capacity() >= 4096, "room reserved for the rest");
        assert_eq!(
            text_array_bytes(texts.iter().map(Option::as_deref)),
            plain.len()
        );
        assert!(!<Presized<Vec<Option<String>>> as ToSql>::accepts(
            &Type::INT8_ARRAY
        ));
    }

    #[test]
    fn statistics_are_refreshed_after_the_first_rows_and_then_each_time_the_tables_grew_fourfold() {
        let mut analyze = Analyze::default();
        let mut refreshed_at = Vec::new();
        let mut written = 0;
        for _ in 0..1_000 {
            // Batches of 500 rows, committed.
            analyze.since += 500;
            written += 500;
            if analyze.due() {
                refreshed_at.push(written);
                analyze.refreshed();
            }
        }
        assert_eq!(refreshed_at, [5_000, 20_000, 80_000, 320_000]);
    }

    #[test]
    fn the_rows_of_both_writers_of_a_direction_count_towards_one_refresh() {
        let mut analyze = Analyze::default();
        let mut writers = [Filled::default(), Filled::default()];
        let mut refreshed_at = Vec::new();
        let mut written = 0;
        for round in 0..400 {
            // Batches of 500 rows, committed by the writers in turn.
            let writer = &mut writers[round % 2];
            writer.pending += 500;
            writer.entities.insert(0);
            writer.committed();
            written += 500;
            writer.count_into(&mut analyze);
            if analyze.due() {
                refreshed_at.push(written);
                analyze.refreshed();
            }
        }
        assert_eq!(refreshed_at, [5_000, 20_000, 80_000]);
    }

    #[test]
    fn rows_of_a_transaction_rolled_back_do_not_count() {
        let mut analyze = Analyze::default();
        let mut writer = Filled::default();
        writer.pending += 6_000;
        writer.rolled_back();
        writer.pending += 100;
        writer.committed();
        writer.count_into(&mut analyze);
        assert!(!analyze.due());
        assert_eq!(analyze.since, 100);
    }
}
