//! Deletes: a run of them written with tombstones and recorded in the
//! target's `delete_outbox`, then re-asserted on the side they came from
//! once the target transaction has committed (see
//! [`Writer::reassert_deletes`]), so that an older update crossing the
//! delete cannot bring the row back there.

use std::collections::HashMap;

use schemas::event::Value;
use tokio_postgres::Client;

use super::rows::{lock_rows, lock_rows_sql};
use super::runs::PendingRow;
use super::Writer;
use crate::conflict::{self, Clocks};
use crate::error::{ApplyError, Result};
use crate::mapping::Entity;
use pg::ident::quote_table;

/// Keys (text) and delete times (text) of one entity's deletes.
type DeleteBatch = (Vec<Option<String>>, Vec<Option<String>>);

impl Writer {
    pub(super) async fn write_deletes(
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
        let mut outbox_seconds: Vec<Option<i64>> = Vec::with_capacity(rows.len());
        let mut outbox_ticks: Vec<Option<i64>> = Vec::with_capacity(rows.len());
        let source_key_type = match rows[0].source_key {
            Value::Uuid(_) => "uuid",
            _ => "int8",
        };
        for row in rows {
            outbox_keys.push(pg::value::to_text(&row.source_key));
            outbox_times.push(pg::value::to_text(&Value::TimestampTz(row.delete_at)));
            outbox_seconds.push(row.clock.map(|c| c.seconds));
            outbox_ticks.push(row.clock.map(|c| c.tick));
        }
        // The later of two deletes of one row keeps its clock.
        target
            .execute(
                "INSERT INTO syncbridge.delete_outbox AS o (entity, source_key, key_type, deleted_at, seconds, tick) \
                 SELECT $1, k, $2, at::timestamptz, s, t FROM unnest($3::text[], $4::text[], $5::int8[], $6::int8[]) AS x(k, at, s, t) \
                 ON CONFLICT (entity, source_key) DO UPDATE SET deleted_at = GREATEST(o.deleted_at, EXCLUDED.deleted_at), \
                   seconds = CASE WHEN o.seconds IS NULL OR ROW(EXCLUDED.seconds, EXCLUDED.tick) > ROW(o.seconds, o.tick) \
                                  THEN EXCLUDED.seconds ELSE o.seconds END, \
                   tick = CASE WHEN o.seconds IS NULL OR ROW(EXCLUDED.seconds, EXCLUDED.tick) > ROW(o.seconds, o.tick) \
                               THEN EXCLUDED.tick ELSE o.tick END",
                &[
                    &entity.name(),
                    &source_key_type,
                    &outbox_keys,
                    &outbox_times,
                    &outbox_seconds,
                    &outbox_ticks,
                ],
            )
            .await
            .map_err(|e| ApplyError::postgres(self.to.as_str(), "record deletes to re-assert", e))?;
        self.recorded_deletes = true;
        let mut clocks = Clocks::default();
        for (row, key) in rows.iter().zip(&target_keys) {
            // A row that never crossed has nothing to delete on this side,
            // but gets a tombstone under the id it would get.
            if let Some(key) = key {
                let text = pg::value::to_text(key);
                if let Some(text) = &text {
                    clocks.insert(text, row.clock);
                }
                key_texts.push(text);
                times.push(pg::value::to_text(&Value::TimestampTz(row.delete_at)));
            }
        }
        if key_texts.is_empty() {
            return Ok(());
        }
        let table = entity.table(self.to);
        let key_type = self.column_type(entity, self.to, &table.key)?;
        let sql = conflict::delete_sql(
            &quote_table(&table.schema, &table.table),
            &pg::clock::relation(&table.schema, &table.table),
            &table.key,
            &key_type,
            &table.updated_at,
            self.delete_rule,
        );
        let lock = lock_rows_sql(table, &key_type);
        lock_rows(target, self.to.as_str(), entity.name(), &lock, &key_texts).await?;
        let statement = self.statement(target, sql).await?;
        let row = target
            .query_one(&statement, &[&key_texts, &times, &self.origin, &clocks])
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
                    "SELECT entity, source_key, key_type, deleted_at::text, seconds, tick \
                     FROM syncbridge.delete_outbox ORDER BY deleted_at LIMIT 1000",
                    &[],
                )
                .await
                .map_err(|e| ApplyError::postgres(to, "read the delete outbox", e))?;
            if rows.is_empty() {
                return Ok(());
            }
            let mut by_entity: HashMap<(String, String), (DeleteBatch, Clocks)> = HashMap::new();
            // A re-asserted delete carries the clock it came with (it decides
            // and leaves its tombstone on its own side as on the target: a
            // version that won over it here stays there too); one that came
            // without counts as its time.
            for row in &rows {
                let ((keys, times), clocks) =
                    by_entity.entry((row.get(0), row.get(2))).or_default();
                let key: String = row.get(1);
                let clock = match (row.get::<_, Option<i64>>(4), row.get::<_, Option<i64>>(5)) {
                    (Some(seconds), Some(tick)) => Some(schemas::event::Clock { seconds, tick }),
                    _ => None,
                };
                clocks.insert(&key, clock);
                keys.push(Some(key));
                times.push(Some(row.get(3)));
            }
            source
                .batch_execute("BEGIN")
                .await
                .map_err(|e| ApplyError::postgres(from, "begin", e))?;
            let outcome = async {
                source
                    .execute(
                        "SELECT pg_catalog.pg_logical_emit_message(true, $1, 'delete-reassertion'), \
                         pg_catalog.set_config('syncbridge.applying', 'on', true)",
                        &[&marker_prefix],
                    )
                    .await
                    .map_err(|e| ApplyError::postgres(from, "write the echo marker", e))?;
                for ((entity_name, key_type), ((keys, times), clocks)) in &by_entity {
                    let Some(entity) = self.mapping.entity(entity_name) else {
                        continue;
                    };
                    let table = entity.table(self.from);
                    let sql = conflict::delete_sql(
                        &quote_table(&table.schema, &table.table),
                        &pg::clock::relation(&table.schema, &table.table),
                        &table.key,
                        key_type,
                        &table.updated_at,
                        conflict::DeleteRule::Live,
                    );
                    let lock = lock_rows_sql(table, key_type);
                    lock_rows(source, from, entity.name(), &lock, keys).await?;
                    source
                        .query_one(&sql, &[keys, times, &self.origin, clocks])
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
            for ((entity_name, _), ((keys, _), _)) in &by_entity {
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
}
