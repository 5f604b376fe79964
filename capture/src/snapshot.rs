//! `capture snapshot`: the current rows of tables, as `READ` events on the
//! streaming topic, while streaming goes on.
//!
//! ```text
//!  table ──keyset page (REPEATABLE READ, text protocol)──► Read events ──► topic
//!    │        one page = one pseudo-transaction: positions 0..n, last + count
//!    └─ next page starts after the page's last primary key
//! ```
//!
//! **Consistency with streaming (an online method, no slot juggling).** Each
//! page is read in its own short `REPEATABLE READ` transaction, ordered by
//! primary key and resumed after the previous page's last key, so no long
//! transaction holds back vacuum and no slot has to be created at a chosen
//! moment. The streaming capture keeps running meanwhile. Apply resolves
//! every row last-writer-wins by `updated_at` and applies snapshot events
//! without the LSN duplicate check, so a change that commits while the
//! snapshot runs is either
//!
//! - already in the page read (the page's snapshot saw it), and streaming
//!   delivers it too, with the same `updated_at`: applying both in either
//!   order leaves the newer row (a `READ` loses every tie); or
//! - not in the page read, and streaming delivers it with an `updated_at` at
//!   least as new as the page's copy: the `READ` cannot overwrite it.
//!
//! A row deleted after its page was read can reach apply as a `READ` after
//! its `DELETE`. Apply records a tombstone for every delete, also of a row it
//! never wrote, and a `READ` never writes over a tombstone, so the row does
//! not come back (see `apply::conflict`).
//!
//! Values are read with the text protocol (the simple query protocol), so
//! they are the output functions' text exactly as pgoutput sends them, under
//! the same session settings, and [`pg::value::parse_text`] turns them
//! into the same typed values as streaming does. Memory is one page plus at
//! most `capture.max_in_flight` undelivered events. Capture exits 0 only when
//! Kafka confirmed every event.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use schemas::codec::Codec;
use schemas::event::{CaptureMode, ChangeEvent, Column, Op, Transaction, Value};
use tokio_postgres::{Client, SimpleQueryMessage};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::error::{CaptureError, Result};
use pg::ident::{quote, TableName};
use pg::time::now_micros;
use pg::value::{self, TypeRegistry};
use pg::Lsn;
use runtime::kafka::{self, Delivered};
use runtime::progress::Progress;

/// What to snapshot.
#[derive(Debug, Clone, Default)]
pub struct SnapshotOptions {
    /// Tables to read, in this order; empty means `source.tables`.
    pub tables: Vec<String>,
    /// Overrides `snapshot.page_size`.
    pub page_size: Option<usize>,
}

/// What a snapshot did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SnapshotSummary {
    /// Rows read per table, in order.
    pub tables: Vec<(String, u64)>,
    /// Events handed to Kafka.
    pub produced: u64,
    /// Events Kafka confirmed.
    pub confirmed: u64,
    pub pages: u64,
    pub elapsed: Duration,
}

impl SnapshotSummary {
    /// Rows per second over the whole run.
    pub fn rows_per_second(&self) -> f64 {
        let seconds = self.elapsed.as_secs_f64();
        if seconds > 0.0 {
            self.confirmed as f64 / seconds
        } else {
            0.0
        }
    }
}

impl std::fmt::Display for SnapshotSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (table, rows) in &self.tables {
            writeln!(f, "snapshot table={table} rows={rows}")?;
        }
        writeln!(
            f,
            "snapshot produced={} confirmed={} pages={} seconds={:.3} rows_per_second={:.0}",
            self.produced,
            self.confirmed,
            self.pages,
            self.elapsed.as_secs_f64(),
            self.rows_per_second()
        )
    }
}

/// A column of the table being read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableColumn {
    pub name: String,
    pub type_oid: u32,
    /// The name events carry (`int8`, `public.mood`), as streaming names it.
    pub type_name: String,
    /// The SQL type to cast a key literal to (`bigint`, `uuid`).
    pub sql_type: String,
}

/// A table's columns (in table order, as pgoutput sends them) and which of
/// them form the primary key (in key order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableShape {
    pub table: TableName,
    pub columns: Vec<TableColumn>,
    pub key: Vec<usize>,
}

impl TableShape {
    /// The statement reading one page: every column in text, ordered by the
    /// primary key, after `after` (the previous page's last key, as text).
    pub fn page_query(&self, after: Option<&[String]>, limit: usize) -> String {
        let mut sql = String::from("SELECT ");
        for (index, column) in self.columns.iter().enumerate() {
            if index > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&quote(&column.name));
        }
        let _ = write!(sql, " FROM {}", self.table.quoted());
        let keys: Vec<String> = self
            .key
            .iter()
            .map(|&index| quote(&self.columns[index].name))
            .collect();
        if let Some(after) = after {
            let literals: Vec<String> = self
                .key
                .iter()
                .zip(after)
                .map(|(&index, text)| {
                    format!("{}::{}", sql_literal(text), self.columns[index].sql_type)
                })
                .collect();
            let _ = write!(
                sql,
                " WHERE ({}) > ({})",
                keys.join(", "),
                literals.join(", ")
            );
        }
        let _ = write!(sql, " ORDER BY {} LIMIT {limit}", keys.join(", "));
        sql
    }
}

/// An SQL string literal (`standard_conforming_strings` is on).
fn sql_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// Snapshots the tables into the topic. Ok only when every event was confirmed.
pub async fn snapshot(
    config: &Config,
    options: &SnapshotOptions,
    shutdown: &CancellationToken,
) -> Result<SnapshotSummary> {
    let started = Instant::now();
    let codec = Codec::new().map_err(CaptureError::Schema)?;
    let connection = config.connection()?;
    let tables = match options.tables.is_empty() {
        true => config.tables()?,
        false => options
            .tables
            .iter()
            .map(|t| TableName::parse(t).map_err(CaptureError::from))
            .collect::<Result<Vec<_>>>()?,
    };
    if tables.is_empty() {
        return Err(CaptureError::Config(
            "nothing to snapshot: name tables with --table or in source.tables".to_owned(),
        ));
    }
    let page_size = options.page_size.unwrap_or(config.snapshot.page_size);
    if page_size == 0 {
        return Err(CaptureError::Config(
            "snapshot.page_size must be at least 1".to_owned(),
        ));
    }
    let mut pg = connection.pg_config().clone();
    pg.options(pg::session::OPTIONS);
    pg.application_name(format!("syncbridge-snapshot-{}", config.source.name));
    let connector = connection.tls.connector().map_err(CaptureError::Config)?;
    // Through the link with a response deadline, as every query connection:
    // a link that stops answering fails the snapshot instead of hanging it.
    let (client, conn) = runtime::link::connect(&pg, connector, connection.response_timeout)
        .await
        .map_err(|e| crate::slot::link_failed(&connection, e))?;
    let connection_task = tokio::spawn(async move {
        if let Err(error) = conn.await {
            debug!(%error, "snapshot connection closed");
        }
    });

    let topic = config.topic();
    kafka::ensure_topic(&config.kafka, &topic).await?;
    let producer = kafka::producer(&config.kafka, config.capture.max_in_flight)?;
    let mut run = Run {
        config,
        codec: &codec,
        client: &client,
        producer: &producer,
        topic: &topic,
        key: config.source.name.clone().into_bytes(),
        database: connection.dbname.clone(),
        deliveries: FuturesUnordered::new(),
        summary: SnapshotSummary::default(),
        payload: Vec::with_capacity(4096),
        warned: Vec::new(),
    };
    let outcome = async {
        for table in &tables {
            if shutdown.is_cancelled() {
                break;
            }
            run.table(table, page_size, shutdown).await?;
        }
        Ok::<(), CaptureError>(())
    }
    .await;
    // Whatever happened, wait for what was handed to Kafka (bounded).
    let drained = run.drain(config.capture.shutdown_timeout).await;
    connection_task.abort();
    outcome?;
    drained?;
    run.summary.elapsed = started.elapsed();
    let summary = run.summary;
    if shutdown.is_cancelled() {
        return Err(CaptureError::Incomplete(format!(
            "snapshot interrupted after {} of the rows; run it again (it is idempotent)",
            summary.confirmed
        )));
    }
    if summary.confirmed != summary.produced {
        return Err(CaptureError::Incomplete(format!(
            "kafka confirmed {} of {} events",
            summary.confirmed, summary.produced
        )));
    }
    info!(
        produced = summary.produced,
        confirmed = summary.confirmed,
        pages = summary.pages,
        seconds = summary.elapsed.as_secs_f64(),
        "snapshot complete"
    );
    Ok(summary)
}

/// One snapshot run's state.
struct Run<'a> {
    config: &'a Config,
    codec: &'a Codec,
    client: &'a Client,
    producer: &'a rdkafka::producer::FutureProducer,
    topic: &'a str,
    key: Vec<u8>,
    database: String,
    deliveries: FuturesUnordered<Delivered>,
    summary: SnapshotSummary,
    payload: Vec<u8>,
    /// Columns already warned about (a value that did not parse).
    warned: Vec<(String, String)>,
}

/// One page as read: the position and time of its snapshot, and its rows.
struct Page {
    commit_lsn: Lsn,
    read_at_micros: i64,
    rows: Vec<Vec<Option<String>>>,
}

impl Run<'_> {
    async fn table(
        &mut self,
        table: &TableName,
        page_size: usize,
        shutdown: &CancellationToken,
    ) -> Result<()> {
        let (shape, estimate) = read_shape(self.client, table).await?;
        let label = format!("snapshot {table}");
        let mut progress = Progress::new(&label, estimate, self.config.snapshot.progress_interval);
        info!(table = %table, page_size, estimated_rows = estimate.unwrap_or(0), "snapshot of table started");
        let mut after: Option<Vec<String>> = None;
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            let page = read_page(self.client, &shape, after.as_deref(), page_size).await?;
            let count = page.rows.len();
            if count == 0 {
                break;
            }
            after = page.rows.last().map(|row| {
                shape
                    .key
                    .iter()
                    .map(|&index| row[index].clone().unwrap_or_default())
                    .collect()
            });
            self.produce_page(&shape, page).await?;
            progress.advance(count as u64);
            if count < page_size {
                break;
            }
        }
        let rows = progress.done();
        progress.finish();
        info!(table = %table, rows, "snapshot of table read");
        self.summary.tables.push((table.to_string(), rows));
        Ok(())
    }

    async fn produce_page(&mut self, shape: &TableShape, page: Page) -> Result<()> {
        let count = page.rows.len() as u64;
        let captured_at = now_micros();
        for (position, texts) in page.rows.into_iter().enumerate() {
            let position = position as u64;
            let last = position + 1 == count;
            let row: Vec<Column> = shape
                .columns
                .iter()
                .zip(texts)
                .map(|(column, text)| Column {
                    name: column.name.clone(),
                    type_name: column.type_name.clone(),
                    type_oid: column.type_oid,
                    value: match text {
                        None => Value::Null,
                        Some(text) => self.typed(shape, column, text),
                    },
                })
                .collect();
            // In table order, as streaming sends the key.
            let key = row
                .iter()
                .enumerate()
                .filter(|(index, _)| shape.key.contains(index))
                .map(|(_, column)| column.clone())
                .collect();
            let event = ChangeEvent {
                source: self.config.source.name.clone(),
                database: self.database.clone(),
                schema: shape.table.schema.clone(),
                table: shape.table.table.clone(),
                op: Op::Read,
                key,
                before: None,
                after: Some(row),
                transaction: Transaction {
                    xid: 0,
                    commit_lsn: page.commit_lsn.0,
                    commit_time_micros: page.read_at_micros,
                    position,
                    last,
                    event_count: last.then_some(count),
                },
                marker: None,
                origin: None,
                mode: CaptureMode::Snapshot,
                captured_at_micros: captured_at,
                clock: None,
            };
            self.payload.clear();
            self.codec.encode_into(&event, &mut self.payload);
            while self.deliveries.len() >= self.config.capture.max_in_flight {
                self.confirm_within(self.config.capture.shutdown_timeout)
                    .await?;
            }
            let delivered =
                kafka::send(self.producer, self.topic, &self.key, &self.payload).await?;
            self.deliveries.push(delivered);
            self.summary.produced += 1;
            // Count delivery reports as they come, without waiting.
            while let Some(Some(outcome)) = self.deliveries.next().now_or_never() {
                outcome?;
                self.summary.confirmed += 1;
            }
        }
        self.summary.pages += 1;
        Ok(())
    }

    fn typed(&mut self, shape: &TableShape, column: &TableColumn, text: String) -> Value {
        match value::parse_text(column.type_oid, &text) {
            Ok(value) => value,
            Err(error) => {
                let id = (shape.table.to_string(), column.name.clone());
                if !self.warned.contains(&id) {
                    warn!(table = %shape.table, column = %column.name, pg_type = %column.type_name, %error, "value did not parse as its type; sending it as text");
                    self.warned.push(id);
                }
                Value::Text(text)
            }
        }
    }

    /// Waits for the next delivery report. A broker that confirms nothing
    /// for `timeout` ends the snapshot (a one-shot job: run it again), where
    /// the streaming capture would wait for it.
    async fn confirm_within(&mut self, timeout: Duration) -> Result<()> {
        match tokio::time::timeout(timeout, self.deliveries.next()).await {
            Ok(Some(outcome)) => {
                outcome?;
                self.summary.confirmed += 1;
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(_) => Err(CaptureError::Incomplete(format!(
                "kafka confirmed no event for {timeout:?} ({} of {} confirmed); run the snapshot again",
                self.summary.confirmed, self.summary.produced
            ))),
        }
    }

    /// Waits for every pending delivery, at most `timeout` without progress.
    async fn drain(&mut self, timeout: Duration) -> Result<()> {
        while !self.deliveries.is_empty() {
            self.confirm_within(timeout).await?;
        }
        Ok(())
    }
}

/// Reads a table's columns, primary key and estimated row count.
async fn read_shape(client: &Client, table: &TableName) -> Result<(TableShape, Option<u64>)> {
    let row = client
        .query_opt(
            "SELECT c.oid, c.reltuples::float8 FROM pg_catalog.pg_class c \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
            &[&table.schema, &table.table],
        )
        .await
        .map_err(|e| CaptureError::postgres(format!("look up {table}"), e))?
        .ok_or_else(|| CaptureError::Config(format!("table {table} does not exist")))?;
    let oid: u32 = row.get(0);
    let reltuples: f64 = row.get(1);
    let estimate = (reltuples >= 0.0).then_some(reltuples as u64);
    let rows = client
        .query(
            "SELECT a.attname::text, a.atttypid, format_type(a.atttypid, NULL), t.typname::text, tn.nspname::text, \
                    k.ord \
             FROM pg_catalog.pg_attribute a \
             JOIN pg_catalog.pg_type t ON t.oid = a.atttypid \
             JOIN pg_catalog.pg_namespace tn ON tn.oid = t.typnamespace \
             LEFT JOIN (SELECT key.attnum, key.ord FROM pg_catalog.pg_index i \
                        CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS key(attnum, ord) \
                        WHERE i.indrelid = $1 AND i.indisprimary) k ON k.attnum = a.attnum \
             WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '' \
             ORDER BY a.attnum",
            &[&oid],
        )
        .await
        .map_err(|e| CaptureError::postgres(format!("read the columns of {table}"), e))?;
    let mut types = TypeRegistry::new();
    let mut columns = Vec::with_capacity(rows.len());
    let mut key: Vec<(i64, usize)> = Vec::new();
    for (index, row) in rows.iter().enumerate() {
        let type_oid: u32 = row.get(1);
        let namespace: String = row.get(4);
        let type_name: String = row.get(3);
        if value::type_name(type_oid).is_none() {
            types.record(type_oid, &namespace, &type_name);
        }
        if let Some(ord) = row.get::<_, Option<i64>>(5) {
            key.push((ord, index));
        }
        columns.push(TableColumn {
            name: row.get(0),
            type_oid,
            type_name: types.name(type_oid),
            sql_type: row.get(2),
        });
    }
    if key.is_empty() {
        return Err(CaptureError::Config(format!(
            "table {table} has no primary key: a snapshot reads in primary key order; add one"
        )));
    }
    key.sort();
    Ok((
        TableShape {
            table: table.clone(),
            columns,
            key: key.into_iter().map(|(_, index)| index).collect(),
        },
        estimate,
    ))
}

/// Reads one page in its own `REPEATABLE READ` transaction, together with
/// the WAL position and the time of its snapshot, in one round trip.
async fn read_page(
    client: &Client,
    shape: &TableShape,
    after: Option<&[String]>,
    limit: usize,
) -> Result<Page> {
    let sql = format!(
        "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; \
         SELECT pg_catalog.pg_current_wal_lsn()::text, (extract(epoch FROM now()) * 1000000)::int8::text; \
         {}; COMMIT",
        shape.page_query(after, limit)
    );
    let messages = client
        .simple_query(&sql)
        .await
        .map_err(|e| CaptureError::postgres(format!("read a page of {}", shape.table), e))?;
    let mut statement = 0usize;
    let mut commit_lsn = None;
    let mut read_at_micros = 0i64;
    let mut rows = Vec::with_capacity(limit);
    for message in messages {
        match message {
            SimpleQueryMessage::CommandComplete(_) => statement += 1,
            SimpleQueryMessage::Row(row) if statement == 1 => {
                commit_lsn = row.get(0).and_then(Lsn::parse);
                read_at_micros = row.get(1).and_then(|t| t.parse().ok()).unwrap_or(0);
            }
            SimpleQueryMessage::Row(row) if statement == 2 => {
                rows.push(
                    (0..shape.columns.len())
                        .map(|index| row.get(index).map(str::to_owned))
                        .collect(),
                );
            }
            _ => {}
        }
    }
    let commit_lsn = commit_lsn.ok_or_else(|| {
        CaptureError::Protocol("the page's read returned no WAL position".to_owned())
    })?;
    Ok(Page {
        commit_lsn,
        read_at_micros,
        rows,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn shape() -> TableShape {
        let column = |name: &str, oid: u32, sql: &str| TableColumn {
            name: name.into(),
            type_oid: oid,
            type_name: value::type_name(oid).unwrap().into(),
            sql_type: sql.into(),
        };
        TableShape {
            table: TableName::parse("org.memberships").unwrap(),
            columns: vec![
                column("note", 25, "text"),
                column("group_id", 2950, "uuid"),
                column("identity_id", 2950, "uuid"),
            ],
            key: vec![1, 2],
        }
    }

    #[test]
    fn the_first_page_reads_from_the_start_in_key_order() {
        assert_eq!(
            shape().page_query(None, 500),
            "SELECT \"note\", \"group_id\", \"identity_id\" FROM \"org\".\"memberships\" \
             ORDER BY \"group_id\", \"identity_id\" LIMIT 500"
        );
    }

    #[test]
    fn a_later_page_starts_after_the_last_key_compared_as_a_row() {
        let after = vec!["0b5e".to_owned(), "it's".to_owned()];
        assert_eq!(
            shape().page_query(Some(&after), 10),
            "SELECT \"note\", \"group_id\", \"identity_id\" FROM \"org\".\"memberships\" \
             WHERE (\"group_id\", \"identity_id\") > ('0b5e'::uuid, 'it''s'::uuid) \
             ORDER BY \"group_id\", \"identity_id\" LIMIT 10"
        );
    }

    #[test]
    fn the_summary_ends_with_the_rate() {
        let summary = SnapshotSummary {
            tables: vec![("public.users".into(), 10)],
            produced: 10,
            confirmed: 10,
            pages: 1,
            elapsed: Duration::from_secs(2),
        };
        let text = summary.to_string();
        assert!(
            text.contains("snapshot table=public.users rows=10"),
            "{text}"
        );
        assert!(text.ends_with("rows_per_second=5\n"), "{text}");
    }
}
