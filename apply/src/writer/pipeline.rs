//! Statements sent ahead on the target connection and settled later (see
//! [Statements sent ahead](Writer#statements-sent-ahead)), and the
//! statements prepared on each connection, which sending needs.
//!
//! Every concern of the writer sends through this one queue, so the target
//! runs its statements in the order they were made; [`Writer::settle`]
//! reads the replies in that order and does what each is for ([`Then`]): a
//! run's upsert is counted, and its rows that came back bring their children
//! along (see `resync`).

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll};

use schemas::event::Value;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Statement};

use super::Writer;
use crate::error::{ApplyError, Result};
use crate::mapping::Side;

/// The statements prepared on one connection, by their text.
///
/// A statement run by its text is prepared in a round trip of its own every
/// time (parse, then bind and execute); one prepared once runs in one round
/// trip, and the server keeps its plan. A connection's statements live as
/// long as it does, as does the writer (one per session). Shared through
/// `&self`, so that reads made from `&self` methods use it too.
#[derive(Default)]
pub(super) struct Prepared(std::sync::Mutex<HashMap<String, Statement>>);

impl Prepared {
    pub(super) async fn get(
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

/// The statements sent on the target connection whose replies are not read
/// yet, and what tells their replies apart.
pub(super) struct Pipeline {
    /// The target connection (the one the `target` arguments name), for
    /// statements sent ahead.
    connection: Arc<Client>,
    /// Whether sent statements stay outstanding until settled.
    on: bool,
    sent: VecDeque<Sent>,
    /// Source transactions ended (kept or forgotten) so far: whether a reply
    /// belongs to the open source transaction.
    pub(super) transactions: u64,
}

impl Pipeline {
    pub(super) fn new(connection: Arc<Client>) -> Pipeline {
        Pipeline {
            connection,
            on: false,
            sent: VecDeque::new(),
            transactions: 0,
        }
    }

    /// Forgets the statements sent, unread (the target transaction rolled
    /// back).
    pub(super) fn forget_sent(&mut self) {
        self.sent.clear();
    }
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
pub(super) enum Then {
    /// Only whether it failed.
    Nothing,
    /// A run's upsert: counted, and children of rows that came back are
    /// brought back too.
    Written(Written),
}

pub(super) struct Written {
    pub(super) entity: usize,
    pub(super) attempted: u64,
    /// The rows that had a counterpart before: (target key text, source key).
    pub(super) crossed: Vec<(String, Value)>,
    /// The source keys of the statement's rows, in its order: rows left out
    /// for a missing parent wait (see `waiting`).
    pub(super) source_keys: Vec<Value>,
    /// The source transaction that wrote them (see `Pipeline::transactions`).
    pub(super) transaction: u64,
}

impl Writer {
    /// Turns pipelining on or off (see [Statements sent ahead](Writer#statements-sent-ahead));
    /// off by default. Takes effect for statements sent from now on.
    pub fn pipeline(&mut self, on: bool) {
        self.pipeline.on = on;
    }

    /// Whether statements are pipelined.
    pub fn pipelining(&self) -> bool {
        self.pipeline.on
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
        self.pipeline.sent.push_back(Sent {
            reply,
            context: context.into(),
            then,
        });
        if self.pipeline.on {
            Ok(())
        } else {
            self.settle(target, source).await
        }
    }

    /// Sends `sql` with `params`, prepared (and cached) first: a statement
    /// sent must go out in one request for the order to hold (see
    /// [`Self::send`]), which an unprepared statement with parameters does
    /// not. The reply is its first row, if any.
    pub(super) async fn send_prepared(
        &mut self,
        target: &Client,
        source: &Client,
        sql: String,
        params: Vec<Box<dyn ToSql + Sync + Send>>,
        context: impl Into<String>,
        then: Then,
    ) -> Result<()> {
        let statement = self.statement(target, sql).await?;
        let client = Arc::clone(&self.pipeline.connection);
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
        let client = Arc::clone(&self.pipeline.connection);
        let reply = async move { client.batch_execute(sql).await.map(|()| None) };
        let context = sql.split_whitespace().next().unwrap_or("sql");
        self.send(target, source, context, reply, Then::Nothing)
            .await
    }

    /// Reads the replies of the statements sent, in order, and does what
    /// each is for. Returns the first error; the statements after it (which
    /// the server refused in the failed transaction) are drained.
    pub async fn settle(&mut self, target: &Client, source: &Client) -> Result<()> {
        while let Some(sent) = self.pipeline.sent.pop_front() {
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
        while let Some(sent) = self.pipeline.sent.pop_front() {
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
        let parentless: Vec<i64> = row.get(2);
        self.filled.written(run.entity, run.attempted);
        self.stats.applied(written);
        self.stats.conflict_orphans(parentless.len() as u64);
        self.stats.skipped_older(
            run.attempted
                .saturating_sub(written)
                .saturating_sub(parentless.len() as u64),
        );
        if !parentless.is_empty() {
            let waiting: Vec<Value> = parentless
                .iter()
                .filter_map(|position| {
                    let index = usize::try_from(*position).ok()?.checked_sub(1)?;
                    run.source_keys.get(index).cloned()
                })
                .collect();
            let mapping = Arc::clone(&self.mapping);
            let name = mapping.entities()[run.entity].name();
            self.record_waiting(target, source, name, &waiting).await?;
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
        if run.transaction != self.pipeline.transactions {
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
        self.pipeline.transactions += 1;
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

    pub(super) async fn statement(&mut self, target: &Client, sql: String) -> Result<Statement> {
        self.statements
            .get(target, &sql)
            .await
            .map_err(|e| ApplyError::postgres(self.to.as_str(), "prepare a statement", e))
    }

    /// The cache of statements prepared on the connection to `side`.
    pub(super) fn prepared(&self, side: Side) -> &Prepared {
        if side == self.to {
            &self.statements
        } else {
            &self.source_statements
        }
    }
}
