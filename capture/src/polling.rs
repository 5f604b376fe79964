//! The polling fallback: change events from reading the tables on
//! `updated_at`, for a source that cannot give logical replication (no
//! REPLICATION privilege, `wal_level = replica`, a lost slot).
//!
//! ```text
//!  every polling.interval, in one REPEATABLE READ snapshot, each table in
//!  source.tables order (parents first): pg_current_wal_lsn(), now(),
//!      SELECT ... WHERE (updated_at, pk) > last ORDER BY updated_at, pk LIMIT page_size
//!        ──► events (one pseudo-transaction per page) ──► Kafka ──► delivery reports
//!                                                                        │
//!    syncbridge.capture_keys (key, xmin) + capture_watermark (updated_at, pk) ◄──┘
//!  every polling.reconcile_interval: table keys vs capture_keys ──► Delete events
//! ```
//!
//! - **Rounds and pages.** A round reads a table from its watermark minus
//!   `polling.overlap` (a transaction that committed after a later
//!   `updated_at` was read, or a timestamp truncated to the second, is read
//!   again), then in keyset pages ordered by `(updated_at, primary key)`:
//!   each page starts strictly after the previous page's last row, so any
//!   number of rows sharing one `updated_at` are read once each and no page
//!   is read twice. A round ends with a short page. Memory: one page.
//! - **Events.** The same [`ChangeEvent`] as streaming, to the same topic with
//!   the same Kafka key, `mode = Polling`. `op` is `Insert` for a key capture
//!   has not sent before (not in the key ledger) and `Update` otherwise; apply
//!   upserts both alike. The rows of a page form pseudo-transactions
//!   (positions from 0, `last` and `event_count` on the final event): one per
//!   run of consecutive rows that are, or are not, apply's echoes, because
//!   apply decides echo per transaction. A round reads every table in one
//!   snapshot, parents first, so a child never arrives before its parent.
//!   `commit_lsn` is `pg_current_wal_lsn()` read in the round's snapshot (it
//!   needs no privilege and never goes backwards), `commit_time_micros` the
//!   read's time (`now()` of that snapshot), and `xid` the row's `xmin`
//!   (informational). Apply applies polled events always and never moves
//!   its stored commit LSN with them. The round's snapshot stays open while
//!   its pages are delivered: a round is short, but it holds back vacuum
//!   meanwhile.
//! - **The watermark** is the last `(updated_at, key)` confirmed, its time
//!   clamped to the present: a row stamped in the future does not hide the
//!   rows written after it (it is read again each round and skipped, see
//!   below).
//! - **Unchanged rows are not re-sent.** The key ledger stores the `xmin` of
//!   the row version last sent; a row read again (the overlap) with the same
//!   `xmin` is skipped.
//! - **Echoes.** Apply records the `xmin` its rows carry (the id of the
//!   savepoint it writes each source transaction in) in
//!   `syncbridge.apply_ledger.written_xmin` (its primary key), in the writing
//!   statement. A polled row whose `xmin` is there was written by apply (the
//!   id of a transaction, or of the savepoint apply writes in, that wrote
//!   nothing else); its event carries a `marker` (`polling:<xmin>`), which
//!   apply skips like a streamed echo. (A 32-bit id repeats only after four
//!   billion transactions; a match across that wrap would flag a local write
//!   as an echo.) The top-level transaction id (`pg_current_xact_id()`)
//!   would not do: rows written inside a savepoint carry the
//!   subtransaction's id.
//! - **Durability.** A page's rows enter the key ledger and the watermark
//!   moves past them only after Kafka confirmed every event of the page, in
//!   one transaction. A crash re-reads from the last confirmed page; what is
//!   sent twice is idempotent by last-writer-wins.
//! - **Deletes** come from reconciliation ([`crate::reconcile`]): children
//!   first (the reverse table order), each table's current keys against the
//!   ledger; Delete events (key columns, `before` = the key) for the keys
//!   gone, then removed from the ledger once Kafka confirmed them. Their
//!   `commit_time_micros` is the reconciliation's read time: the actual
//!   delete happened at most one `reconcile_interval` earlier.
//!
//! Privileges: SELECT on the tables; USAGE and CREATE on the schema
//! `syncbridge` (capture creates `capture_watermark` and `capture_keys` when
//! missing; or create them for it and grant SELECT, INSERT, UPDATE, DELETE);
//! SELECT on `syncbridge.apply_ledger` (created by apply). No REPLICATION.
//! An index on `(updated_at, primary key)` keeps each page a range scan.

use futures::future::try_join_all;
use rdkafka::producer::FutureProducer;
use schemas::codec::Codec;
use schemas::event::{CaptureMode, ChangeEvent, Column, Op, Transaction, Value};
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::{Config, Connection};
use crate::error::{CaptureError, Result};
use crate::reconcile::{KeyMerge, MergeStep};
use pg::ident::{quote, TableName};
use pg::time::now_micros;
use pg::value;
use runtime::kafka;
use runtime::telemetry::Progress;

/// The types an `updated_at` column may have.
const TIMESTAMP_OIDS: [u32; 3] = [1114, 1184, 1082];

/// One column of a polled table.
#[derive(Debug, Clone)]
pub struct PolledColumn {
    pub name: String,
    pub type_oid: u32,
    /// The name events carry (`int8`, `timestamptz`, `schema.enum`).
    pub type_name: String,
    /// The type as SQL writes it, for casts (`timestamp(0) without time zone`).
    pub sql_type: String,
}

/// A table as polling reads it.
#[derive(Debug, Clone)]
pub struct PolledTable {
    pub name: TableName,
    pub columns: Vec<PolledColumn>,
    /// Indexes into `columns` of the primary key, in key order.
    pub key: Vec<usize>,
    /// Index into `columns` of the `updated_at` column.
    pub updated_at: usize,
}

/// Where a page starts.
#[derive(Debug, Clone, PartialEq)]
pub enum PageStart {
    /// The whole table (a table without watermark and no `start_from`).
    Beginning,
    /// Rows with `updated_at` after this value (text) minus `overlap_secs`.
    Since {
        updated_at: String,
        overlap_secs: f64,
    },
    /// Strictly after this `(updated_at, key)` (texts): the next page.
    After {
        updated_at: String,
        key: Vec<String>,
    },
}

impl PolledTable {
    /// The ledger's name for the table: `schema.table`.
    pub fn label(&self) -> String {
        self.name.to_string()
    }

    fn column_ident(&self, index: usize) -> String {
        quote(&self.columns[index].name)
    }

    /// `ARRAY[t.k1::text, ...]::text[] COLLATE "C"`: the key as the ledger stores it.
    fn key_array(&self, alias: &str) -> String {
        let parts: Vec<String> = self
            .key
            .iter()
            .map(|&i| format!("{alias}.{}::text", self.column_ident(i)))
            .collect();
        format!("(ARRAY[{}]::text[] COLLATE \"C\")", parts.join(", "))
    }

    /// `t."updated_at", t."id"`: the keyset order.
    fn order_columns(&self) -> String {
        std::iter::once(self.updated_at)
            .chain(self.key.iter().copied())
            .map(|i| format!("t.{}", self.column_ident(i)))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The query reading one page. Parameters: `$1` the table's label, then
    /// those of `start` (see `PageStart::params`). Columns: `xmin` (int8),
    /// echo (bool), known (bool: the key is in the ledger), the `xmin`
    /// last sent (int8, NULL), then every column as text.
    pub fn page_query(&self, start: &PageStart, page_size: usize, echo_ledger: bool) -> String {
        let echo = if echo_ledger {
            "EXISTS (SELECT 1 FROM syncbridge.apply_ledger l WHERE l.written_xmin = t.xmin::text)"
        } else {
            "false"
        };
        let columns: Vec<String> = (0..self.columns.len())
            .map(|i| format!("t.{}::text", self.column_ident(i)))
            .collect();
        let updated_at = format!("t.{}", self.column_ident(self.updated_at));
        let updated_at_type = &self.columns[self.updated_at].sql_type;
        let filter = match start {
            PageStart::Beginning => String::new(),
            PageStart::Since { .. } => format!(
                "WHERE {updated_at} > $2::text::{updated_at_type} - make_interval(secs => $3::float8)"
            ),
            PageStart::After { .. } => {
                let bounds: Vec<String> = std::iter::once(self.updated_at)
                    .chain(self.key.iter().copied())
                    .enumerate()
                    .map(|(n, i)| format!("${}::text::{}", n + 2, self.columns[i].sql_type))
                    .collect();
                format!("WHERE ({}) > ({})", self.order_columns(), bounds.join(", "))
            }
        };
        format!(
            "SELECT t.xmin::text::int8, {echo}, k.tbl IS NOT NULL, k.row_xmin, {columns} \
             FROM {table} t \
             LEFT JOIN syncbridge.capture_keys k ON k.tbl = $1 AND k.key = {key} \
             {filter} ORDER BY {order} LIMIT {page_size}",
            columns = columns.join(", "),
            table = self.name.quoted(),
            key = self.key_array("t"),
            order = self.order_columns(),
        )
    }

    /// The statement recording a confirmed page: its rows' keys and `xmin`
    /// into the ledger, and the watermark moved forward (never backwards)
    /// to the page's last row. Parameters: `$1` label, `$2..` one text[] per
    /// key column, then the `xmin`s (int8[]), then the last row's
    /// `updated_at` (text) and key (text[]).
    pub fn confirm_statement(&self) -> String {
        let n = self.key.len();
        let key_params: Vec<String> = (0..n).map(|i| format!("${}::text[]", i + 2)).collect();
        let key_columns: Vec<String> = (0..n).map(|i| format!("u.c{i}")).collect();
        let xmins = n + 2;
        let updated_at = n + 3;
        let key = n + 4;
        let updated_at_type = &self.columns[self.updated_at].sql_type;
        // A row stamped in the future must not carry the watermark past the
        // present (later rows would then fall behind it): clamp to now().
        let clamped =
            format!("LEAST(${updated_at}::text::{updated_at_type}, now()::{updated_at_type})");
        let newer_key: Vec<String> = std::iter::once(clamped.clone())
            .chain(self.key.iter().enumerate().map(|(p, &i)| {
                format!("(${key}::text[])[{}]::{}", p + 1, self.columns[i].sql_type)
            }))
            .collect();
        let stored_key: Vec<String> = std::iter::once(format!("w.updated_at::{updated_at_type}"))
            .chain(
                self.key
                    .iter()
                    .enumerate()
                    .map(|(p, &i)| format!("w.key[{}]::{}", p + 1, self.columns[i].sql_type)),
            )
            .collect();
        format!(
            "WITH keys AS (\
               INSERT INTO syncbridge.capture_keys (tbl, key, row_xmin) \
               SELECT $1, ARRAY[{key_columns}]::text[] COLLATE \"C\", u.x \
               FROM unnest({key_params}, ${xmins}::int8[]) AS u({unnest_names}, x) \
               ON CONFLICT (tbl, key) DO UPDATE SET row_xmin = EXCLUDED.row_xmin) \
             INSERT INTO syncbridge.capture_watermark AS w (tbl, updated_at, key) \
             VALUES ($1, {clamped}::text, ${key}::text[]) \
             ON CONFLICT (tbl) DO UPDATE SET updated_at = EXCLUDED.updated_at, key = EXCLUDED.key, polled_at = now() \
             WHERE w.updated_at IS NULL OR ({newer}) > ({stored})",
            key_columns = key_columns.join(", "),
            key_params = key_params.join(", "),
            unnest_names = (0..n).map(|i| format!("c{i}")).collect::<Vec<_>>().join(", "),
            newer = newer_key.join(", "),
            stored = stored_key.join(", "),
        )
    }
}

impl PageStart {
    /// The parameters after the label, as text (and the overlap as float).
    fn params(&self) -> (Vec<String>, Option<f64>) {
        match self {
            PageStart::Beginning => (Vec::new(), None),
            PageStart::Since {
                updated_at,
                overlap_secs,
            } => (vec![updated_at.clone()], Some(*overlap_secs)),
            PageStart::After { updated_at, key } => {
                let mut params = vec![updated_at.clone()];
                params.extend(key.iter().cloned());
                (params, None)
            }
        }
    }
}

/// One row read by a page.
#[derive(Debug, Clone)]
struct PolledRow {
    xmin: i64,
    echo: bool,
    known: bool,
    sent_xmin: Option<i64>,
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
    tables: Vec<PolledTable>,
    producer: FutureProducer,
    topic: String,
    key: Vec<u8>,
    payload: Vec<u8>,
}

async fn connect(connection: &Connection) -> Result<Client> {
    let mut pg = connection.pg_config().clone();
    pg.options(pg::session::OPTIONS);
    let connector = connection.tls.connector().map_err(CaptureError::Config)?;
    let (client, driver) = pg
        .connect(connector)
        .await
        .map_err(|e| CaptureError::postgres(format!("connect to {connection}"), e))?;
    tokio::spawn(async move {
        if let Err(error) = driver.await {
            debug!(%error, "polling connection ended");
        }
    });
    Ok(client)
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
            producer,
            topic: config.topic(),
            key: config.source.name.clone().into_bytes(),
            payload: Vec::with_capacity(4096),
        })
    }

    /// Reads every table once, to the end, parents first. `Ok(false)` when
    /// shutdown interrupted it.
    pub async fn round(&mut self, shutdown: &CancellationToken) -> Result<bool> {
        let echo_ledger = self.echo_ledger_exists().await?;
        // One snapshot for the whole round: a child row visible in it has its
        // parent visible too, and parents are read first, so apply never
        // receives a child before its parent.
        self.reader
            .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await
            .map_err(|e| CaptureError::postgres("begin a polling round", e))?;
        let outcome = self.round_in_snapshot(echo_ledger, shutdown).await;
        let end = self.reader.batch_execute("COMMIT").await;
        let completed = outcome?;
        end.map_err(|e| CaptureError::postgres("end a polling round", e))?;
        Ok(completed)
    }

    async fn round_in_snapshot(
        &mut self,
        echo_ledger: bool,
        shutdown: &CancellationToken,
    ) -> Result<bool> {
        let head = self.read_head().await?;
        for index in 0..self.tables.len() {
            if !self.poll_table(index, head, echo_ledger, shutdown).await? {
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
                let seed = format!(
                    "BEGIN ISOLATION LEVEL REPEATABLE READ;
                     INSERT INTO syncbridge.capture_keys (tbl, key, row_xmin)
                       SELECT {label}, {key}, NULL FROM {table} t ON CONFLICT DO NOTHING;
                     INSERT INTO syncbridge.capture_watermark (tbl) VALUES ({label}) ON CONFLICT DO NOTHING;
                     COMMIT;",
                    label = quote_literal(&label),
                    key = table.key_array("t"),
                    table = table.name.quoted(),
                );
                if let Err(error) = self.writer.batch_execute(&seed).await {
                    let _ = self.writer.batch_execute("ROLLBACK").await;
                    return Err(CaptureError::postgres("seed the key ledger", error));
                }
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
        echo_ledger: bool,
        shutdown: &CancellationToken,
    ) -> Result<bool> {
        let table = self.tables[index].clone();
        let page_size = self.config.polling.page_size;
        let mut start = self.start_of(&table).await?;
        let mut sent = 0usize;
        loop {
            let sql = table.page_query(&start, page_size, echo_ledger);
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
        if sent > 0 {
            debug!(table = %table.name, events = sent, "polled");
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
                values: (0..width).map(|i| row.get(4 + i)).collect(),
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
        Ok(gone)
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
                let mut events: Vec<ChangeEvent> = gone
                    .iter()
                    .map(|key| self.delete_event(table, &page, key))
                    .collect();
                number_runs(&mut events);
                if !self.deliver(&events, shutdown).await? {
                    return Ok(None);
                }
                self.forget(table, &gone).await?;
                total += gone.len() as u64;
                gone.clear();
            }
            if finished {
                return Ok(Some(total));
            }
        }
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
        }
    }

    /// Adds keys the table has and the ledger does not (rows written behind
    /// the watermark, e.g. by apply with the other side's `updated_at`), so
    /// that their deletes are found too.
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
    async fn publish_watermark_ages(&self) {
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

    /// Forgets the watermarks and the key ledger: streaming has taken over
    /// (the next switch to polling seeds them afresh).
    pub async fn retire(&self) -> Result<()> {
        self.writer
            .batch_execute(
                "BEGIN; DELETE FROM syncbridge.capture_watermark; DELETE FROM syncbridge.capture_keys; COMMIT;",
            )
            .await
            .map_err(|e| CaptureError::postgres("retire the polling watermarks", e))
    }
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

/// Creates the watermark and key ledger tables when missing. Checks first,
/// so a role that may not create them works once they exist.
async fn install(client: &Client) -> Result<()> {
    let row = client
        .query_one(
            "SELECT to_regclass('syncbridge.capture_watermark') IS NOT NULL AND to_regclass('syncbridge.capture_keys') IS NOT NULL",
            &[],
        )
        .await
        .map_err(|e| CaptureError::postgres("look for the polling tables", e))?;
    if row.get::<_, bool>(0) {
        return Ok(());
    }
    let schema_exists: bool = client
        .query_one("SELECT to_regnamespace('syncbridge') IS NOT NULL", &[])
        .await
        .map_err(|e| CaptureError::postgres("look for the syncbridge schema", e))?
        .get(0);
    let create_schema = if schema_exists {
        ""
    } else {
        "CREATE SCHEMA IF NOT EXISTS syncbridge;"
    };
    let sql = format!(
        "BEGIN;
         SELECT pg_advisory_xact_lock({lock});
         {create_schema}
         CREATE TABLE IF NOT EXISTS syncbridge.capture_watermark (
           tbl        text PRIMARY KEY,
           updated_at text,
           key        text[],
           polled_at  timestamptz NOT NULL DEFAULT now()
         );
         CREATE TABLE IF NOT EXISTS syncbridge.capture_keys (
           tbl      text NOT NULL,
           key      text[] COLLATE \"C\" NOT NULL,
           row_xmin bigint,
           PRIMARY KEY (tbl, key)
         );
         COMMIT;",
        lock = pg::bookkeeping::INSTALL_LOCK
    );
    if let Err(error) = client.batch_execute(&sql).await {
        let _ = client.batch_execute("ROLLBACK").await;
        return Err(match error.code().map(|c| c.code()) {
            Some("42501") => CaptureError::Config(
                "the capture role may not create syncbridge.capture_watermark and syncbridge.capture_keys: GRANT USAGE, CREATE ON SCHEMA syncbridge (or create them for it)".to_owned(),
            ),
            _ => CaptureError::postgres("create the polling tables", error),
        });
    }
    Ok(())
}

/// Reads a table's columns, primary key and `updated_at` column.
pub async fn describe(client: &Client, name: &TableName, updated_at: &str) -> Result<PolledTable> {
    let rows = client
        .query(
            "SELECT a.attname::text, a.atttypid, format_type(a.atttypid, a.atttypmod),
                    CASE WHEN tn.nspname = 'pg_catalog' THEN ty.typname::text ELSE tn.nspname || '.' || ty.typname END,
                    (SELECT array_position(i.indkey::int2[], a.attnum) FROM pg_index i
                      WHERE i.indrelid = c.oid AND i.indisprimary)
             FROM pg_class c
             JOIN pg_namespace n ON n.oid = c.relnamespace
             JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
             JOIN pg_type ty ON ty.oid = a.atttypid
             JOIN pg_namespace tn ON tn.oid = ty.typnamespace
             WHERE n.nspname = $1 AND c.relname = $2
             ORDER BY a.attnum",
            &[&name.schema, &name.table],
        )
        .await
        .map_err(|e| CaptureError::postgres(format!("describe {name}"), e))?;
    if rows.is_empty() {
        return Err(CaptureError::Config(format!("table {name} does not exist")));
    }
    let mut columns = Vec::new();
    let mut key: Vec<(i32, usize)> = Vec::new();
    for (index, row) in rows.iter().enumerate() {
        let type_oid: u32 = row.get(1);
        columns.push(PolledColumn {
            name: row.get(0),
            type_oid,
            type_name: value::type_name(type_oid)
                .map(str::to_owned)
                .unwrap_or_else(|| row.get(3)),
            sql_type: row.get(2),
        });
        if let Some(position) = row.get::<_, Option<i32>>(4) {
            key.push((position, index));
        }
    }
    key.sort_unstable();
    if key.is_empty() {
        return Err(CaptureError::Config(format!(
            "table {name} has no primary key: polling needs one"
        )));
    }
    let updated_at_index = columns
        .iter()
        .position(|c| c.name == updated_at)
        .ok_or_else(|| {
            CaptureError::Config(format!(
                "table {name} has no column {updated_at} (polling.updated_at_column)"
            ))
        })?;
    if !TIMESTAMP_OIDS.contains(&columns[updated_at_index].type_oid) {
        return Err(CaptureError::Config(format!(
            "{name}.{updated_at} must be a timestamp, timestamptz or date for polling"
        )));
    }
    Ok(PolledTable {
        name: name.clone(),
        columns,
        key: key.into_iter().map(|(_, index)| index).collect(),
        updated_at: updated_at_index,
    })
}

fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// Runs polling until shutdown or an error: a round every
/// `polling.interval` (from the start of one to the start of the next), a
/// reconciliation after the first round and then every
/// `polling.reconcile_interval`.
pub async fn session(
    config: &Config,
    connection: &Connection,
    codec: &Codec,
    shutdown: &CancellationToken,
    on_streaming: &(dyn Fn() + Sync),
    progress: &Progress,
) -> Result<()> {
    let topic = config.topic();
    kafka::ensure_topic(&config.kafka, &topic).await?;
    let producer = kafka::producer(&config.kafka, config.capture.max_in_flight)?;
    let mut poller = Poller::connect(config, connection, codec, producer).await?;
    info!(topic = %topic, interval = ?config.polling.interval, tables = poller.tables.len(), "polling");
    on_streaming();
    let mut ticks = tokio::time::interval(config.polling.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reconciled_at: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            _ = ticks.tick() => {}
        }
        if !poller.round(shutdown).await? {
            return Ok(());
        }
        progress.advanced(false);
        poller.publish_watermark_ages().await;
        let due = reconciled_at.is_none_or(|at| at.elapsed() >= config.polling.reconcile_interval);
        if due {
            if !poller.reconcile(shutdown).await? {
                return Ok(());
            }
            reconciled_at = Some(tokio::time::Instant::now());
        }
    }
}

/// Polling -> streaming: when polling ran on this source before, one last
/// round and reconciliation from its watermarks covers the gap between the
/// last poll and the slot's creation, then the watermarks are retired.
/// Runs after the slot exists and before streaming starts, through the
/// streaming session's producer (so the topic keeps one writer at a time).
/// Interrupted, it runs again at the next start (the watermarks are only
/// retired at its end).
pub async fn catch_up(
    config: &Config,
    connection: &Connection,
    codec: &Codec,
    producer: FutureProducer,
    shutdown: &CancellationToken,
) -> Result<bool> {
    let probe = connect(connection).await?;
    if !has_watermarks(&probe).await? {
        return Ok(true);
    }
    info!("polling watermarks found: one last poll covers the switch to streaming");
    let mut poller = Poller::connect(config, connection, codec, producer).await?;
    if !poller.round(shutdown).await? || !poller.reconcile(shutdown).await? {
        return Ok(false);
    }
    poller.retire().await?;
    info!("switched from polling to streaming");
    Ok(true)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn column(name: &str, oid: u32, sql_type: &str) -> PolledColumn {
        PolledColumn {
            name: name.to_owned(),
            type_oid: oid,
            type_name: value::type_name(oid).unwrap_or("?").to_owned(),
            sql_type: sql_type.to_owned(),
        }
    }

    fn users() -> PolledTable {
        PolledTable {
            name: TableName::parse("public.users").unwrap(),
            columns: vec![
                column("id", 20, "bigint"),
                column("email", 25, "text"),
                column("updated_at", 1114, "timestamp(0) without time zone"),
            ],
            key: vec![0],
            updated_at: 2,
        }
    }

    #[test]
    fn the_first_page_of_a_round_starts_the_overlap_before_the_watermark() {
        let start = PageStart::Since {
            updated_at: "2026-11-22 04:00:00".into(),
            overlap_secs: 5.0,
        };
        let sql = users().page_query(&start, 100, true);
        assert!(
            sql.contains("WHERE t.\"updated_at\" > $2::text::timestamp(0) without time zone - make_interval(secs => $3::float8)"),
            "{sql}"
        );
        assert!(
            sql.ends_with("ORDER BY t.\"updated_at\", t.\"id\" LIMIT 100"),
            "{sql}"
        );
        assert!(sql.contains("syncbridge.apply_ledger"), "{sql}");
        assert_eq!(
            start.params(),
            (vec!["2026-11-22 04:00:00".to_owned()], Some(5.0))
        );
    }

    #[test]
    fn later_pages_start_strictly_after_the_last_row_by_time_then_key() {
        let start = PageStart::After {
            updated_at: "2026-11-22 04:00:00".into(),
            key: vec!["42".into()],
        };
        let sql = users().page_query(&start, 10, false);
        assert!(
            sql.contains("WHERE (t.\"updated_at\", t.\"id\") > ($2::text::timestamp(0) without time zone, $3::text::bigint)"),
            "{sql}"
        );
        assert!(!sql.contains("apply_ledger"), "{sql}");
        assert_eq!(
            start.params().0,
            vec!["2026-11-22 04:00:00".to_owned(), "42".to_owned()]
        );
    }

    #[test]
    fn a_composite_key_orders_and_resumes_by_every_key_column() {
        let mut table = users();
        table.columns.push(column("tenant", 25, "text"));
        table.key = vec![3, 0];
        let start = PageStart::After {
            updated_at: "t".into(),
            key: vec!["a".into(), "1".into()],
        };
        let sql = table.page_query(&start, 10, false);
        assert!(sql.contains("(t.\"updated_at\", t.\"tenant\", t.\"id\") > ($2::text::timestamp(0) without time zone, $3::text::text, $4::text::bigint)"), "{sql}");
        assert!(
            sql.contains(
                "k.key = (ARRAY[t.\"tenant\"::text, t.\"id\"::text]::text[] COLLATE \"C\")"
            ),
            "{sql}"
        );
        let confirm = table.confirm_statement();
        assert!(
            confirm.contains("unnest($2::text[], $3::text[], $4::int8[]) AS u(c0, c1, x)"),
            "{confirm}"
        );
        assert!(confirm.contains("(LEAST($5::text::timestamp(0) without time zone, now()::timestamp(0) without time zone), ($6::text[])[1]::text, ($6::text[])[2]::bigint) > (w.updated_at::timestamp(0) without time zone, w.key[1]::text, w.key[2]::bigint)"), "{confirm}");
    }

    #[test]
    fn the_whole_table_is_read_without_a_filter_on_the_first_poll() {
        let sql = users().page_query(&PageStart::Beginning, 10, false);
        assert!(!sql.contains("WHERE"), "{sql}");
    }

    fn event(marker: Option<&str>) -> ChangeEvent {
        ChangeEvent {
            source: "legacy".into(),
            database: "db".into(),
            schema: "public".into(),
            table: "users".into(),
            op: Op::Update,
            key: Vec::new(),
            before: None,
            after: None,
            transaction: Transaction {
                xid: 0,
                commit_lsn: 1,
                commit_time_micros: 0,
                position: 9,
                last: false,
                event_count: None,
            },
            marker: marker.map(str::to_owned),
            origin: None,
            mode: CaptureMode::Polling,
            captured_at_micros: 0,
        }
    }

    #[test]
    fn a_page_is_cut_into_one_pseudo_transaction_per_run_of_echoes_or_not() {
        let mut events = vec![
            event(None),
            event(None),
            event(Some("polling:7")),
            event(None),
        ];
        number_runs(&mut events);
        let shape: Vec<(u64, bool, Option<u64>)> = events
            .iter()
            .map(|e| {
                (
                    e.transaction.position,
                    e.transaction.last,
                    e.transaction.event_count,
                )
            })
            .collect();
        assert_eq!(
            shape,
            vec![
                (0, false, None),
                (1, true, Some(2)),
                (0, true, Some(1)),
                (0, true, Some(1))
            ]
        );
    }
}
