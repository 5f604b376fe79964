//! Rows that could not be written yet, and the rounds that write them once
//! they can.
//!
//! A row change is left out, with nothing wrong in it, when the target has
//! nothing yet for it to stand on: a parent it references has no
//! counterpart here (the parent was held back, or is paired by the other
//! direction a moment later), or its natural key is held by the counterpart
//! of another source row. The source keeps the row, and no later event need
//! come for it. So the target records it in `syncbridge.waiting_rows`, in the
//! transaction that left it out, and a later round ([`Writer::retry_waiting`])
//! reads it again from the source, as it is then, and writes it as a
//! snapshot's reads are written. What still cannot be written waits on; a row
//! gone from the source is forgotten (its delete crossed, or will).

use std::collections::BTreeMap;
use std::time::Duration;

use schemas::event::{ChangeEvent, Value};
use tokio_postgres::types::ToSql;
use tokio_postgres::Client;
use tracing::{debug, warn};

use super::pipeline::Then;
use super::Writer;
use crate::error::{ApplyError, Result};

/// Records rows left out: `$1` entity, `$2` source keys (text), `$3` the key
/// type. A row already waiting keeps when it started.
const RECORD: &str = "INSERT INTO syncbridge.waiting_rows (entity, source_key, key_type) \
     SELECT $1::text, k, $3::text FROM unnest($2::text[]) AS k \
     ON CONFLICT (entity, source_key) DO UPDATE SET seen = now()";

/// How many waiting rows one round reads again.
const ROUND: i64 = 1000;

impl Writer {
    /// Records `keys` (source keys of `entity`) as waiting, in the open
    /// target transaction (sent ahead, like the writes).
    pub(super) fn record_waiting<'a>(
        &'a mut self,
        target: &'a Client,
        source: &'a Client,
        entity: &'a str,
        keys: &'a [Value],
    ) -> futures::future::BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let Some(first) = keys.first() else {
                return Ok(());
            };
            let texts: Vec<String> = keys.iter().filter_map(pg::value::to_text).collect();
            debug!(
                entity,
                rows = texts.len(),
                "rows wait for a parent or their natural key"
            );
            self.waiting = true;
            let params: Vec<Box<dyn ToSql + Sync + Send>> = vec![
                Box::new(entity.to_owned()),
                Box::new(texts),
                Box::new(key_type(first).to_owned()),
            ];
            self.send_prepared(
                target,
                source,
                RECORD.to_owned(),
                params,
                "record waiting rows",
                Then::Nothing,
            )
            .await
        })
    }

    /// Records the row `event` changes as waiting, in the open target
    /// transaction: it is read again from the source in a later round. An
    /// event of a table the mapping leaves out records nothing.
    pub async fn wait_for_row(
        &mut self,
        target: &Client,
        source: &Client,
        event: &ChangeEvent,
    ) -> Result<()> {
        let mapping = std::sync::Arc::clone(&self.mapping);
        let Some(entity) = mapping.entities().iter().find(|e| {
            let table = e.table(self.from);
            table.schema == event.schema && table.table == event.table
        }) else {
            return Ok(());
        };
        let key_column = entity.key_column(self.from);
        let Some(key) = event
            .key
            .iter()
            .find(|c| c.name == key_column)
            .map(|c| c.value.clone())
        else {
            return Ok(());
        };
        self.record_waiting(target, source, entity.name(), &[key])
            .await?;
        self.settle(target, source).await
    }

    /// Whether rows may be waiting in the target (true until a round found
    /// none).
    pub fn may_have_waiting_rows(&self) -> bool {
        self.waiting
    }

    /// One round, in the open target transaction: the waiting rows last
    /// tried more than `every` ago are read again from the source and
    /// written as reads are (a read loses every tie and respects
    /// tombstones); those still left out wait on, those written or gone from
    /// the source are forgotten. Rows that waited longer than `give_up` are
    /// forgotten with a warning. Returns how many rows were read again.
    pub async fn retry_waiting(
        &mut self,
        target: &Client,
        source: &Client,
        every: Duration,
        give_up: Duration,
    ) -> Result<usize> {
        let to = self.to.as_str();
        let given_up = target
            .query(
                "DELETE FROM syncbridge.waiting_rows WHERE since < now() - make_interval(secs => $1) \
                 RETURNING entity",
                &[&give_up.as_secs_f64()],
            )
            .await
            .map_err(|e| ApplyError::postgres(to, "give up waiting rows", e))?;
        if !given_up.is_empty() {
            let mut by_entity: BTreeMap<String, usize> = BTreeMap::new();
            for row in &given_up {
                *by_entity.entry(row.get(0)).or_default() += 1;
            }
            for (entity, rows) in by_entity {
                warn!(
                    entity,
                    rows,
                    waited_secs = give_up.as_secs(),
                    "rows waited too long for a parent or their natural key and are given up; `apply repair` brings them in step"
                );
            }
        }
        let rows = target
            .query(
                "SELECT entity, source_key, key_type FROM syncbridge.waiting_rows \
                 WHERE seen < now() - make_interval(secs => $1) ORDER BY since LIMIT $2",
                &[&every.as_secs_f64(), &ROUND],
            )
            .await
            .map_err(|e| ApplyError::postgres(to, "read waiting rows", e))?;
        if rows.is_empty() {
            let left = target
                .query_one("SELECT EXISTS (SELECT 1 FROM syncbridge.waiting_rows)", &[])
                .await
                .map_err(|e| ApplyError::postgres(to, "read waiting rows", e))?;
            self.waiting = left.get(0);
            return Ok(0);
        }
        let mut by_entity: BTreeMap<String, (String, Vec<String>)> = BTreeMap::new();
        for row in &rows {
            let entry = by_entity
                .entry(row.get(0))
                .or_insert_with(|| (row.get(2), Vec::new()));
            entry.1.push(row.get(1));
        }
        let mapping = std::sync::Arc::clone(&self.mapping);
        // Parents first: the mapping lists entities in that order.
        for (index, entity) in mapping.entities().iter().enumerate() {
            let Some((key_type, keys)) = by_entity.get(entity.name()) else {
                continue;
            };
            let key_column = entity.key_column(self.from).to_owned();
            let found = self
                .read_source_rows(source, entity, &key_column, key_type, keys)
                .await?;
            self.write_source_reads(target, source, index, entity, &found)
                .await?;
            // Replies read first: a row left out for a missing parent is
            // recorded again as its statement's reply is read.
            self.settle(target, source).await?;
            // Those not recorded again by this transaction are written or
            // gone from the source.
            let params: Vec<Box<dyn ToSql + Sync + Send>> =
                vec![Box::new(entity.name().to_owned()), Box::new(keys.clone())];
            self.send_prepared(
                target,
                source,
                "DELETE FROM syncbridge.waiting_rows \
                 WHERE entity = $1 AND source_key = ANY($2::text[]) AND seen < now()"
                    .to_owned(),
                params,
                "forget waiting rows",
                Then::Nothing,
            )
            .await?;
        }
        self.hidden = true;
        self.settle(target, source).await?;
        Ok(rows.len())
    }
}

/// The SQL type a source key is read back as.
fn key_type(key: &Value) -> &'static str {
    match key {
        Value::Uuid(_) => "uuid",
        _ => "int8",
    }
}
