//! The poller: a round over every table in one snapshot, pages delivered
//! before the watermark and key ledger move, reconciliation for deletes, and
//! the catch-up when streaming takes over.

use futures::future::try_join_all;
use rdkafka::producer::FutureProducer;
use schemas::codec::Codec;
use schemas::event::{CaptureMode, ChangeEvent, Clock, Column, Op, Transaction, Value};
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::{Config, Connection};
use crate::error::{CaptureError, Result};
use crate::reconcile::{KeyMerge, MergeStep};
use pg::time::now_micros;
use pg::value;
use runtime::kafka;

use super::bookkeeping::install;
use super::table::*;

/// One row read by a page.
#[derive(Debug, Clone)]
struct PolledRow {
    xmin: i64,
    echo: bool,
    known: bool,
    sent_xmin: Option<i64>,
    clock: Option<Clock>,
    values: Vec<Option<String>>,
}

/// A page as read.
struct Page {
    commit_lsn: u64,
    read_at_micros: i64,
    rows: Vec<PolledRow>,
}

/// Numbers events as pseudo-transactions: one per run of consecutive events
/// with the same echo flag (`marker` set or not), positions from 0, `last`
/// and `event_count` on each run's final event.
pub fn number_runs(events: &mut [ChangeEvent]) {
    let mut start = 0;
    while start < events.len() {
        let echo = events[start].marker.is_some();
        let end = events[start..]
            .iter()
            .position(|e| e.marker.is_some() != echo)
            .map_or(events.len(), |offset| start + offset);
        let count = (end - start) as u64;
        for (position, event) in events[start..end].iter_mut().enumerate() {
            event.transaction.position = position as u64;
            event.transaction.last = position as u64 + 1 == count;
            event.transaction.event_count = (position as u64 + 1 == count).then_some(count);
        }
        start = end;
    }
}

/// A polling reader of one source.
pub struct Poller<'a> {
    config: &'a Config,
    codec: &'a Codec,
    database: String,
    reader: Client,
    writer: Client,
    pub(super) tables: Vec<PolledTable>,
    /// Whether pages read each row's clock (see [`crate::clock`]).
    clocks: bool,
    producer: FutureProducer,
    topic: String,
    key: Vec<u8>,
    payload: Vec<u8>,
}

pub(super) async fn connect(connection: &Connection) -> Result<Client> {
    let mut pg = connection.pg_config().clone();
    pg.options(pg::session::OPTIONS);
    let connector = connection.tls.connector().map_err(CaptureError::Config)?;
    // Through the link with a response deadline, as every query connection:
    // a link that stops answering mid-round fails the round, which is
    // retried on a new connection.
    let (client, driver) = runtime::link::connect(&pg, connector, connection.response_timeout)
        .await
        .map_err(|e| crate::slot::link_failed(connection, e))?;
    tokio::spawn(async move {
        if let Err(error) = driver.await {
            debug!(%error, "polling connection ended");
        }
    });
    Ok(client)
}

/// What a pass over the tables reads (see [`Poller::round`] and
/// [`Poller::sweep`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reading {
    /// From each table's watermark minus `polling.overlap`.
    FromWatermark,
    /// Rows stamped further behind the watermark than the overlap whose
    /// version was never sent.
    BehindOverlap,
}

/// Whether a polling watermark exists for this source (polling ran before).
pub async fn has_watermarks(client: &Client) -> Result<bool> {
    // Asked of the catalog, which every role may read: a streaming capture
    // role without any right on the schema `syncbridge` never polled.
    let row = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_class c \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = 'syncbridge' AND c.relname = 'capture_watermark')",
            &[],
        )
        .await
        .map_err(|e| CaptureError::postgres("look for polling watermarks", e))?;
    if !row.get::<_, bool>(0) {
        return Ok(false);
    }
    match client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM syncbridge.capture_watermark)",
            &[],
        )
        .await
    {
        Ok(row) => Ok(row.get(0)),
        // Another role's watermarks (this role may not read them): this role
        // did not poll.
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) => {
            Ok(false)
        }
        Err(e) => Err(CaptureError::postgres("look for polling watermarks", e)),
    }
}

impl<'a> Poller<'a> {
    /// Connects, installs the watermark and key ledger tables if missing,
    /// and reads the tables' shapes.
    pub async fn connect(
        config: &'a Config,
        connection: &Connection,
        codec: &'a Codec,
        producer: FutureProducer,
    ) -> Result<Poller<'a>> {
        let reader = connect(connection).await?;
        let writer = connect(connection).await?;
        install(&writer).await?;
        let installed = crate::clock::install(
            &writer,
            &config.tables()?,
            &config.polling.updated_at_column,
        )
        .await?;
        // Clocks are read with the rows when the role may read them.
        let clocks = installed.table
            && reader
                .query_one(
                    "SELECT coalesce(has_table_privilege(to_regclass('syncbridge.row_clock'), 'SELECT'), false)",
                    &[],
                )
                .await
                .map_err(|e| CaptureError::postgres("look for the row clock", e))?
                .get::<_, bool>(0);
        if installed.table && !clocks {
            warn!("the capture role may not read syncbridge.row_clock: polled versions travel without a clock and are ordered by updated_at alone; GRANT SELECT ON syncbridge.row_clock to it");
        }
        let mut tables = Vec::new();
        for name in config.tables()? {
            tables.push(describe(&reader, &name, &config.polling.updated_at_column).await?);
        }
        Ok(Poller {
            config,
            codec,
            database: connection.dbname.clone(),
            reader,
            writer,
            tables,
            clocks,
            producer,
            topic: config.topic(),
            key: config.source.name.clone().into_bytes(),
            payload: Vec::with_capacity(4096),
        })
    }

    /// Reads every table once, to the end, parents first. `Ok(false)` when
    /// shutdown interrupted it.
    pub async fn round(&mut self, shutdown: &CancellationToken) -> Result<bool> {
        self.read_tables(Reading::FromWatermark, shutdown).await
    }

    /// Reads, in every table, parents first, the rows no round reads: those
    /// stamped further behind the watermark than `polling.overlap` (a writer
    /// whose clock is behind, a transaction that committed long after it
    /// stamped its rows) whose version was never sent. A sweep reads whole
    /// tables (joined with the key ledger), so it runs with reconciliation,
    /// which reads their keys anyway. `Ok(false)` when shutdown interrupted
    /// it.
    pub async fn sweep(&mut self, shutdown: &CancellationToken) -> Result<bool> {
        self.read_tables(Reading::BehindOverlap, shutdown).await
    }

    async fn read_tables(
        &mut self,
        reading: Reading,
        shutdown: &CancellationToken,
    ) -> Result<bool> {
        let echo_ledger = self.echo_ledger_exists().await?;
        // One snapshot for the whole round: a child row visible in it has its
        // parent visible too, and parents are read first, so apply never
        // receives a child before its parent.
        self.reader
            .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await
            .map_err(|e| CaptureError::postgres("begin a polling round", e))?;
        let outcome = self.round_in_snapshot(reading, echo_ledger, shutdown).await;
        let end = self.reader.batch_execute("COMMIT").await;
        let completed = outcome?;
        end.map_err(|e| CaptureError::postgres("end a polling round", e))?;
        Ok(completed)
    }

    async fn round_in_snapshot(
        &mut self,
        reading: Reading,
        echo_ledger: bool,
        shutdown: &CancellationToken,
    ) -> Result<bool> {
        let head = self.read_head().await?;
        for index in 0..self.tables.len() {
            if !self
                .poll_table(index, head, reading, echo_ledger, shutdown)
                .await?
            {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// The WAL position and time of the reader's snapshot.
    async fn read_head(&self) -> Result<(u64, i64)> {
        let head = self
            .reader
            .query_one(
                "SELECT (pg_current_wal_lsn() - '0/0')::int8, (extract(epoch FROM now()) * 1000000)::int8",
                &[],
            )
            .await
            .map_err(|e| CaptureError::postgres("read the WAL position", e))?;
        Ok((head.get::<_, i64>(0) as u64, head.get(1)))
    }

    async fn echo_ledger_exists(&self) -> Result<bool> {
        let row = self
            .reader
            .query_one(
                "SELECT coalesce(has_table_privilege(to_regclass('syncbridge.apply_ledger'), 'SELECT'), false)",
                &[],
            )
            .await
            .map_err(|e| CaptureError::postgres("look for apply's ledger", e))?;
        let exists: bool = row.get(0);
        if !exists {
            debug!(
                "syncbridge.apply_ledger is not readable yet: no row is flagged as apply's echo"
            );
        }
        Ok(exists)
    }

    /// The watermark of a table, seeding the key ledger with the table's
    /// current keys on the table's first poll (so that later deletes of
    /// rows never re-read are found too).
    async fn start_of(&self, table: &PolledTable) -> Result<PageStart> {
        let label = table.label();
        let row = self
            .writer
            .query_opt(
                "SELECT updated_at FROM syncbridge.capture_watermark WHERE tbl = $1",
                &[&label],
            )
            .await
            .map_err(|e| CaptureError::postgres("read the polling watermark", e))?;
        let overlap_secs = self.config.polling.overlap.as_secs_f64();
        match row {
            Some(row) => Ok(match row.get::<_, Option<String>>(0) {
                Some(updated_at) => PageStart::Since {
                    updated_at,
                    overlap_secs,
                },
                None => self.first_start(),
            }),
            None => {
                self.seed(table, None).await?;
                info!(table = %label, "polling a table for the first time; key ledger seeded");
                Ok(self.first_start())
            }
        }
    }

    fn first_start(&self) -> PageStart {
        match &self.config.polling.start_from {
            Some(start) => PageStart::Since {
                updated_at: start.clone(),
                overlap_secs: self.config.polling.overlap.as_secs_f64(),
            },
            None => PageStart::Beginning,
        }
    }

    async fn poll_table(
        &mut self,
        index: usize,
        head: (u64, i64),
        reading: Reading,
        echo_ledger: bool,
        shutdown: &CancellationToken,
    ) -> Result<bool> {
        let table = self.tables[index].clone();
        let page_size = self.config.polling.page_size;
        let started = std::time::Instant::now();
        // A sweep pages by key set like a round: the ledger it filters on is
        // read in the pass's snapshot, so rows it confirms do not drop out.
        let overlap_secs = self.config.polling.overlap.as_secs_f64();
        let (mut start, behind_overlap) = match reading {
            Reading::FromWatermark => (self.start_of(&table).await?, None),
            Reading::BehindOverlap => (PageStart::Beginning, Some(overlap_secs)),
        };
        let mut sent = 0usize;
        loop {
            let sql = table.page_query(&start, page_size, echo_ledger, self.clocks, behind_overlap);
            let page = self.read_page(head, &table, &sql, &start).await?;
            let full = page.rows.len() == page_size;
            let Some(last) = page.rows.last() else {
                break;
            };
            let next = PageStart::After {
                updated_at: last.values[table.updated_at].clone().unwrap_or_default(),
                key: table
                    .key
                    .iter()
                    .map(|&i| last.values[i].clone().unwrap_or_default())
                    .collect(),
            };
            let emitted: Vec<&PolledRow> = page
                .rows
                .iter()
                .filter(|row| row.sent_xmin != Some(row.xmin))
                .collect();
            if !emitted.is_empty() {
                let mut events: Vec<ChangeEvent> = emitted
                    .iter()
                    .map(|row| self.row_event(&table, &page, row))
                    .collect();
                number_runs(&mut events);
                if !self.deliver(&events, shutdown).await? {
                    return Ok(false);
                }
                sent += events.len();
            }
            self.confirm(&table, &emitted, &next).await?;
            start = next;
            if !full {
                break;
            }
        }
        match reading {
            Reading::FromWatermark if sent > 0 => {
                debug!(table = %table.name, events = sent, "polled");
            }
            Reading::FromWatermark => {}
            Reading::BehindOverlap => {
                let elapsed_ms = started.elapsed().as_millis() as u64;
                info!(table = %table.name, events = sent, elapsed_ms, "swept");
                if sent > 0 {
                    warn!(
                        table = %table.name,
                        events = sent,
                        "sent rows stamped further behind the watermark than polling.overlap, which no round reads (a writer's clock behind, or a transaction that committed long after it stamped its rows); raise polling.overlap to send them sooner"
                    );
                }
            }
        }
        Ok(true)
    }

    async fn read_page(
        &mut self,
        head: (u64, i64),
        table: &PolledTable,
        sql: &str,
        start: &PageStart,
    ) -> Result<Page> {
        let label = table.label();
        let (texts, overlap) = start.params();
        let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vec![&label];
        for text in &texts {
            params.push(text);
        }
        if let Some(overlap) = &overlap {
            params.push(overlap);
        }
        let rows = self
            .reader
            .query(sql, &params)
            .await
            .map_err(|e| CaptureError::postgres(format!("poll {}", table.name), e))?;
        let width = table.columns.len();
        let rows = rows
            .iter()
            .map(|row| PolledRow {
                xmin: row.get(0),
                echo: row.get(1),
                known: row.get(2),
                sent_xmin: row.get(3),
                clock: match (row.get::<_, Option<i64>>(4), row.get::<_, Option<i64>>(5)) {
                    (Some(seconds), Some(tick)) => Some(Clock { seconds, tick }),
                    _ => None,
                },
                values: (0..width).map(|i| row.get(6 + i)).collect(),
            })
            .collect();
        Ok(Page {
            commit_lsn: head.0,
            read_at_micros: head.1,
            rows,
        })
    }

    fn row_event(&self, table: &PolledTable, page: &Page, row: &PolledRow) -> ChangeEvent {
        let after: Vec<Column> = table
            .columns
            .iter()
            .zip(&row.values)
            .map(|(column, text)| typed_column(table, column, text.as_deref()))
            .collect();
        let key = table.key.iter().map(|&i| after[i].clone()).collect();
        ChangeEvent {
            source: self.config.source.name.clone(),
            database: self.database.clone(),
            schema: table.name.schema.clone(),
            table: table.name.table.clone(),
            op: if row.known { Op::Update } else { Op::Insert },
            key,
            before: None,
            after: Some(after),
            transaction: Transaction {
                xid: row.xmin as u32,
                commit_lsn: page.commit_lsn,
                commit_time_micros: page.read_at_micros,
                position: 0,
                last: false,
                event_count: None,
            },
            marker: row.echo.then(|| format!("polling:{}", row.xmin)),
            origin: None,
            mode: CaptureMode::Polling,
            captured_at_micros: now_micros(),
            clock: row.clock,
        }
    }

    /// Produces the events and waits for Kafka to confirm all of them.
    /// `Ok(false)`: shutdown came first (nothing is recorded as sent).
    async fn deliver(
        &mut self,
        events: &[ChangeEvent],
        shutdown: &CancellationToken,
    ) -> Result<bool> {
        let mut pending = Vec::with_capacity(events.len());
        for event in events {
            self.payload.clear();
            self.codec.encode_into(event, &mut self.payload);
            pending.push(kafka::send(&self.producer, &self.topic, &self.key, &self.payload).await?);
        }
        tokio::select! {
            delivered = try_join_all(pending) => {
                delivered?;
                Ok(true)
            }
            () = shutdown.cancelled() => Ok(false),
        }
    }

    async fn confirm(
        &self,
        table: &PolledTable,
        rows: &[&PolledRow],
        next: &PageStart,
    ) -> Result<()> {
        let PageStart::After { updated_at, key } = next else {
            return Ok(());
        };
        let label = table.label();
        let key_columns: Vec<Vec<String>> = table
            .key
            .iter()
            .map(|&i| {
                rows.iter()
                    .map(|r| r.values[i].clone().unwrap_or_default())
                    .collect()
            })
            .collect();
        let xmins: Vec<i64> = rows.iter().map(|r| r.xmin).collect();
        let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vec![&label];
        for column in &key_columns {
            params.push(column);
        }
        params.push(&xmins);
        params.push(updated_at);
        params.push(key);
        self.writer
            .execute(&table.confirm_statement(), &params)
            .await
            .map_err(|e| CaptureError::postgres("record a polled page", e))?;
        Ok(())
    }

    /// Looks for deleted rows in every table, children first. `Ok(false)`
    /// when shutdown interrupted it.
    pub async fn reconcile(&mut self, shutdown: &CancellationToken) -> Result<bool> {
        for index in (0..self.tables.len()).rev() {
            let table = self.tables[index].clone();
            let started = std::time::Instant::now();
            let Some(gone) = self.reconcile_table(&table, shutdown).await? else {
                return Ok(false);
            };
            info!(
                table = %table.name,
                deleted = gone,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "reconciled"
            );
        }
        Ok(true)
    }

    /// Compares one table's keys with the ledger and sends the deletes.
    /// Returns how many keys were gone, or None on shutdown.
    pub async fn reconcile_table(
        &mut self,
        table: &PolledTable,
        shutdown: &CancellationToken,
    ) -> Result<Option<u64>> {
        let label = table.label();
        let page_size = self.config.polling.page_size.max(1000);
        let begin = format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY;
             DECLARE live NO SCROLL CURSOR FOR SELECT {key} FROM {table} t ORDER BY 1;
             DECLARE known NO SCROLL CURSOR FOR SELECT key FROM syncbridge.capture_keys WHERE tbl = {label} ORDER BY key;",
            key = table.key_array("t"),
            table = table.name.quoted(),
            label = quote_literal(&label),
        );
        self.reader
            .batch_execute(&begin)
            .await
            .map_err(|e| CaptureError::postgres(format!("reconcile {}", table.name), e))?;
        let outcome = self.merge_and_delete(table, page_size, shutdown).await;
        let end = self.reader.batch_execute("ROLLBACK").await;
        let gone = outcome?;
        end.map_err(|e| CaptureError::postgres("end a reconciliation", e))?;
        let Some(gone) = gone else {
            return Ok(None);
        };
        let Some(unseen) = self.send_unseen_deletes(table, shutdown).await? else {
            return Ok(None);
        };
        Ok(Some(gone + unseen))
    }

    /// Sends the local deletes of rows no pass ever saw: a row apply wrote,
    /// or an application inserted, and that was deleted before a round or a
    /// reconciliation took in its key. The key ledger never had it, so the
    /// walk above cannot find it gone; its tombstone in `syncbridge.row_clock`
    /// (stamped by the clock trigger, no origin: a local delete) says it was
    /// deleted, and when. Each tombstone is sent once: its clock is recorded
    /// in `syncbridge.capture_deletes` once Kafka confirmed it (so are those
    /// of the deletes the walk sent), and records whose tombstone is gone or
    /// newer are dropped. A row the other side never had makes a delete
    /// that changes nothing there. Needs the clock trigger; returns how many
    /// were sent, or None on shutdown.
    async fn send_unseen_deletes(
        &mut self,
        table: &PolledTable,
        shutdown: &CancellationToken,
    ) -> Result<Option<u64>> {
        if !self.clocks || table.key.len() != 1 {
            return Ok(Some(0));
        }
        let label = table.label();
        let relation = pg::clock::relation(&table.name.schema, &table.name.table);
        let page_size = self.config.polling.page_size.max(1) as i64;
        self.writer
            .execute(
                "DELETE FROM syncbridge.capture_deletes s WHERE s.tbl = $1 AND NOT EXISTS ( \
                   SELECT 1 FROM syncbridge.row_clock rc WHERE rc.relation = $2 AND rc.row_key = s.key \
                     AND rc.deleted AND rc.seconds = s.seconds AND rc.tick = s.tick)",
                &[&label, &relation],
            )
            .await
            .map_err(|e| CaptureError::postgres("forget deletes whose tombstones are gone", e))?;
        let mut total = 0u64;
        loop {
            let rows = self
                .writer
                .query(
                    "SELECT rc.row_key, rc.seconds, rc.tick FROM syncbridge.row_clock rc \
                     WHERE rc.relation = $2 AND rc.deleted AND rc.origin IS NULL \
                       AND NOT EXISTS (SELECT 1 FROM syncbridge.capture_deletes s \
                                        WHERE s.tbl = $1 AND s.key = rc.row_key \
                                          AND s.seconds = rc.seconds AND s.tick = rc.tick) \
                       AND NOT EXISTS (SELECT 1 FROM syncbridge.capture_keys k \
                                        WHERE k.tbl = $1 AND k.key = ARRAY[rc.row_key]::text[] COLLATE \"C\") \
                     ORDER BY rc.row_key LIMIT $3",
                    &[&label, &relation, &page_size],
                )
                .await
                .map_err(|e| CaptureError::postgres("look for deletes of rows never sent", e))?;
            if rows.is_empty() {
                break;
            }
            let head = self.read_head().await?;
            let page = Page {
                commit_lsn: head.0,
                read_at_micros: head.1,
                rows: Vec::new(),
            };
            let deleted: Vec<(String, Clock)> = rows.iter().map(tombstone).collect();
            let mut events: Vec<ChangeEvent> = deleted
                .iter()
                .map(|(key, clock)| {
                    let mut event = self.delete_event(table, &page, std::slice::from_ref(key));
                    event.clock = Some(*clock);
                    event
                })
                .collect();
            number_runs(&mut events);
            if !self.deliver(&events, shutdown).await? {
                return Ok(None);
            }
            self.record_sent_deletes(table, &deleted).await?;
            total += deleted.len() as u64;
        }
        if total > 0 {
            info!(table = %table.name, deleted = total, "deletes of rows no pass had seen sent");
        }
        Ok(Some(total))
    }

    /// Records the tombstone clocks of deletes Kafka confirmed (see
    /// [`Self::send_unseen_deletes`]).
    async fn record_sent_deletes(
        &self,
        table: &PolledTable,
        sent: &[(String, Clock)],
    ) -> Result<()> {
        if sent.is_empty() {
            return Ok(());
        }
        let keys: Vec<&str> = sent.iter().map(|(k, _)| k.as_str()).collect();
        let seconds: Vec<i64> = sent.iter().map(|(_, c)| c.seconds).collect();
        let ticks: Vec<i64> = sent.iter().map(|(_, c)| c.tick).collect();
        self.writer
            .execute(
                "INSERT INTO syncbridge.capture_deletes AS s (tbl, key, seconds, tick) \
                 SELECT $1, u.k, u.s, u.t FROM unnest($2::text[], $3::int8[], $4::int8[]) AS u(k, s, t) \
                 ON CONFLICT (tbl, key) DO UPDATE SET seconds = EXCLUDED.seconds, tick = EXCLUDED.tick",
                &[&table.label(), &keys, &seconds, &ticks],
            )
            .await
            .map_err(|e| CaptureError::postgres("record the deletes sent", e))?;
        Ok(())
    }

    async fn merge_and_delete(
        &mut self,
        table: &PolledTable,
        page_size: usize,
        shutdown: &CancellationToken,
    ) -> Result<Option<u64>> {
        let head = self.read_head().await?;
        let page = Page {
            commit_lsn: head.0,
            read_at_micros: head.1,
            rows: Vec::new(),
        };
        let fetch_live = format!("FETCH {page_size} FROM live");
        let fetch_known = format!("FETCH {page_size} FROM known");
        let mut merge: KeyMerge<Vec<String>> = KeyMerge::new();
        let mut gone: Vec<Vec<String>> = Vec::new();
        let mut unknown: Vec<Vec<String>> = Vec::new();
        let mut total = 0u64;
        loop {
            let step = merge.next_step();
            let finished = matches!(step, MergeStep::Done);
            match step {
                MergeStep::Gone(key) => gone.push(key),
                MergeStep::Unknown(key) => unknown.push(key),
                MergeStep::NeedLive => merge.feed_live(self.fetch_keys(&fetch_live).await?),
                MergeStep::NeedKnown => merge.feed_known(self.fetch_keys(&fetch_known).await?),
                MergeStep::Done => {}
            }
            if unknown.len() >= page_size || (finished && !unknown.is_empty()) {
                self.adopt(table, &unknown).await?;
                unknown.clear();
            }
            if gone.len() >= self.config.polling.page_size || (finished && !gone.is_empty()) {
                let clocks = self.tombstones(table, &gone).await?;
                let mut events: Vec<ChangeEvent> = gone
                    .iter()
                    .map(|key| {
                        let mut event = self.delete_event(table, &page, key);
                        event.clock = key.first().and_then(|k| clocks.get(k).copied());
                        event
                    })
                    .collect();
                number_runs(&mut events);
                if !self.deliver(&events, shutdown).await? {
                    return Ok(None);
                }
                let sent: Vec<(String, Clock)> = gone
                    .iter()
                    .filter_map(|key| {
                        let key = key.first()?;
                        Some((key.clone(), *clocks.get(key)?))
                    })
                    .collect();
                self.record_sent_deletes(table, &sent).await?;
                self.forget(table, &gone).await?;
                total += gone.len() as u64;
                gone.clear();
            }
            if finished {
                return Ok(Some(total));
            }
        }
    }

    /// The clocks the deletes of `keys` left (their tombstones), by key,
    /// for a table with a one-column key when pages read clocks.
    async fn tombstones(
        &self,
        table: &PolledTable,
        keys: &[Vec<String>],
    ) -> Result<std::collections::HashMap<String, Clock>> {
        if !self.clocks || table.key.len() != 1 {
            return Ok(Default::default());
        }
        let keys: Vec<&str> = keys
            .iter()
            .filter_map(|key| key.first().map(String::as_str))
            .collect();
        let rows = self
            .reader
            .query(
                "SELECT row_key, seconds, tick FROM syncbridge.row_clock \
                 WHERE relation = $1 AND row_key = ANY($2::text[]) AND deleted",
                &[
                    &pg::clock::relation(&table.name.schema, &table.name.table),
                    &keys,
                ],
            )
            .await
            .map_err(|e| CaptureError::postgres("read the clocks of deletes", e))?;
        Ok(rows.iter().map(tombstone).collect())
    }

    async fn fetch_keys(&self, fetch: &str) -> Result<Vec<Vec<String>>> {
        let rows = self
            .reader
            .query(fetch, &[])
            .await
            .map_err(|e| CaptureError::postgres("fetch keys to reconcile", e))?;
        Ok(rows.iter().map(|row| row.get(0)).collect())
    }

    fn delete_event(&self, table: &PolledTable, page: &Page, key: &[String]) -> ChangeEvent {
        let key: Vec<Column> = table
            .key
            .iter()
            .zip(key)
            .map(|(&i, text)| typed_column(table, &table.columns[i], Some(text)))
            .collect();
        ChangeEvent {
            source: self.config.source.name.clone(),
            database: self.database.clone(),
            schema: table.name.schema.clone(),
            table: table.name.table.clone(),
            op: Op::Delete,
            before: Some(key.clone()),
            key,
            after: None,
            transaction: Transaction {
                xid: 0,
                commit_lsn: page.commit_lsn,
                commit_time_micros: page.read_at_micros,
                position: 0,
                last: false,
                event_count: None,
            },
            marker: None,
            origin: None,
            mode: CaptureMode::Polling,
            captured_at_micros: now_micros(),
            clock: None,
        }
    }

    /// Adds keys the table has and the ledger does not (rows no pass has
    /// sent yet), without an `xmin`, so that their deletes are found too and
    /// a round or the next sweep still sends them.
    async fn adopt(&self, table: &PolledTable, keys: &[Vec<String>]) -> Result<()> {
        let n = table.key.len();
        let columns: Vec<Vec<String>> = (0..n)
            .map(|p| {
                keys.iter()
                    .map(|k| k.get(p).cloned().unwrap_or_default())
                    .collect()
            })
            .collect();
        let label = table.label();
        let sql = format!(
            "INSERT INTO syncbridge.capture_keys (tbl, key, row_xmin) \
             SELECT $1, ARRAY[{values}]::text[] COLLATE \"C\", NULL FROM unnest({params}) AS u({names}) \
             ON CONFLICT DO NOTHING",
            params = (0..n).map(|i| format!("${}::text[]", i + 2)).collect::<Vec<_>>().join(", "),
            names = (0..n).map(|i| format!("c{i}")).collect::<Vec<_>>().join(", "),
            values = (0..n).map(|i| format!("u.c{i}")).collect::<Vec<_>>().join(", "),
        );
        let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vec![&label];
        for column in &columns {
            params.push(column);
        }
        self.writer
            .execute(&sql, &params)
            .await
            .map_err(|e| CaptureError::postgres("adopt keys written behind the watermark", e))?;
        Ok(())
    }

    async fn forget(&self, table: &PolledTable, keys: &[Vec<String>]) -> Result<()> {
        let n = table.key.len();
        let columns: Vec<Vec<String>> = (0..n)
            .map(|p| {
                keys.iter()
                    .map(|k| k.get(p).cloned().unwrap_or_default())
                    .collect()
            })
            .collect();
        let label = table.label();
        let sql = format!(
            "DELETE FROM syncbridge.capture_keys k USING unnest({params}) AS u({names}) \
             WHERE k.tbl = $1 AND k.key = ARRAY[{values}]::text[] COLLATE \"C\"",
            params = (0..n)
                .map(|i| format!("${}::text[]", i + 2))
                .collect::<Vec<_>>()
                .join(", "),
            names = (0..n)
                .map(|i| format!("c{i}"))
                .collect::<Vec<_>>()
                .join(", "),
            values = (0..n)
                .map(|i| format!("u.c{i}"))
                .collect::<Vec<_>>()
                .join(", "),
        );
        let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vec![&label];
        for column in &columns {
            params.push(column);
        }
        self.writer
            .execute(&sql, &params)
            .await
            .map_err(|e| CaptureError::postgres("forget deleted keys", e))?;
        Ok(())
    }

    /// Publishes each table's watermark age (now minus the watermark's
    /// `updated_at`) as a metric; a failed read is left to the next round.
    pub(super) async fn publish_watermark_ages(&self) {
        let rows = match self
            .writer
            .query(
                "SELECT tbl, extract(epoch FROM now() - updated_at::timestamptz)::float8 \
                 FROM syncbridge.capture_watermark WHERE updated_at IS NOT NULL",
                &[],
            )
            .await
        {
            Ok(rows) => rows,
            Err(error) => {
                debug!(%error, "reading the watermark ages failed");
                return;
            }
        };
        for row in rows {
            let table: String = row.get(0);
            let age: f64 = row.get(1);
            crate::metrics::polling_watermark_age(&self.config.source.name, &table, age.max(0.0));
        }
    }

    /// Sets every table's watermark to `since` (text, read as the column's
    /// type) and seeds its key ledger with the keys it holds now (see
    /// [`Self::seed`]): the next round reads every row changed since `since`
    /// minus `polling.overlap`, and reconciliation finds what is deleted
    /// from now on. Written before anything is read, so that a catch-up
    /// interrupted later resumes at the next start.
    pub async fn resume_from(&self, since: &str) -> Result<()> {
        for table in &self.tables {
            self.seed(table, Some(since)).await?;
        }
        Ok(())
    }

    /// Seeds `table`'s key ledger with the keys it holds now and writes its
    /// watermark, in one transaction: `since`, or, without it, an empty
    /// watermark (a first poll, from `polling.start_from`) where there is
    /// none yet.
    async fn seed(&self, table: &PolledTable, since: Option<&str>) -> Result<()> {
        let label = quote_literal(&table.label());
        let watermark = match since {
            Some(since) => format!(
                "INSERT INTO syncbridge.capture_watermark (tbl, updated_at) VALUES ({label}, {}) \
                 ON CONFLICT (tbl) DO UPDATE SET updated_at = EXCLUDED.updated_at;",
                quote_literal(since)
            ),
            None => format!(
                "INSERT INTO syncbridge.capture_watermark (tbl) VALUES ({label}) ON CONFLICT DO NOTHING;"
            ),
        };
        // A first poll finds deletes from now on (see `send_unseen_deletes`):
        // the tombstones there already count as sent. A catch-up from
        // `since` sends those it has not sent.
        let deletes = if since.is_none() && self.clocks && table.key.len() == 1 {
            format!(
                "INSERT INTO syncbridge.capture_deletes AS s (tbl, key, seconds, tick)
                   SELECT {label}, rc.row_key, rc.seconds, rc.tick FROM syncbridge.row_clock rc
                   WHERE rc.relation = {relation} AND rc.deleted
                   ON CONFLICT (tbl, key) DO UPDATE SET seconds = EXCLUDED.seconds, tick = EXCLUDED.tick;",
                relation = quote_literal(&pg::clock::relation(&table.name.schema, &table.name.table)),
            )
        } else {
            String::new()
        };
        let sql = format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ;
             INSERT INTO syncbridge.capture_keys (tbl, key, row_xmin)
               SELECT {label}, {key}, NULL FROM {table} t ON CONFLICT DO NOTHING;
             {deletes}
             {watermark}
             COMMIT;",
            key = table.key_array("t"),
            table = table.name.quoted(),
        );
        if let Err(error) = self.writer.batch_execute(&sql).await {
            let _ = self.writer.batch_execute("ROLLBACK").await;
            return Err(CaptureError::postgres("seed the key ledger", error));
        }
        Ok(())
    }

    /// Forgets the watermarks and the key ledger: streaming has taken over
    /// (the next switch to polling seeds them afresh).
    pub async fn retire(&self) -> Result<()> {
        self.writer
            .batch_execute(
                "BEGIN; DELETE FROM syncbridge.capture_watermark; DELETE FROM syncbridge.capture_keys; \
                 DELETE FROM syncbridge.capture_deletes; COMMIT;",
            )
            .await
            .map_err(|e| CaptureError::postgres("retire the polling watermarks", e))
    }
}

/// A tombstone read as `row_key, seconds, tick`: the key and its clock.
fn tombstone(row: &tokio_postgres::Row) -> (String, Clock) {
    (
        row.get(0),
        Clock {
            seconds: row.get(1),
            tick: row.get(2),
        },
    )
}

fn typed_column(table: &PolledTable, column: &PolledColumn, text: Option<&str>) -> Column {
    let value = match text {
        None => Value::Null,
        Some(text) => match value::parse_text(column.type_oid, text) {
            Ok(value) => value,
            Err(error) => {
                warn!(table = %table.name, column = %column.name, pg_type = %column.type_name, %error, "value did not parse as its type; sending it as text");
                Value::Text(text.to_owned())
            }
        },
    };
    Column {
        name: column.name.clone(),
        type_name: column.type_name.clone(),
        type_oid: column.type_oid,
        value,
    }
}
