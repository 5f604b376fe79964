//! New target ids for rows without a counterpart (the uuid derived from the
//! legacy id, or the next free value of the legacy key's sequence), and the
//! new pairs recorded in the target's tables, in the open target
//! transaction.

use schemas::event::Value;
use tokio_postgres::types::ToSql;
use tokio_postgres::Client;
use uuid::Uuid;

use super::derived::derived_platform_id;
use super::resolve::{pair_of, pairs_of_entity, read_pairs};
use crate::conflict::PROBE;
use crate::error::{ApplyError, Result};
use crate::mapping::{Entity, Side};
use crate::writer::pipeline::Then;
use crate::writer::Writer;
use pg::ident::{quote, quote_table};

/// The most sequence values one round of a legacy id allocation draws: the
/// rounds double while values are taken, so about a million taken ids in a
/// row stop the allocation with an error rather than looping on.
const ALLOCATE_DRAW_LIMIT: usize = 1 << 20;

impl Writer {
    /// Gives deleted rows that never crossed (no id correspondence yet) the
    /// id they would get, and records the pair, so that the delete leaves a
    /// tombstone under it. A snapshot's `READ` of the row that arrives after
    /// the `DELETE` (the row was deleted after its page was read) then finds
    /// the tombstone and does not bring the row back.
    ///
    /// A derived id can be taken already: the row was paired with it, then
    /// the pair gave way to another source row with the same natural key
    /// (see [`Self::unpair`]: the row was gone at the source before its
    /// delete arrived, as with polling, or the other direction wrote a newer
    /// version of it onto the row that took its natural key, and keeps that
    /// pair in the legacy database). That id is the other row's now, so the
    /// delete leaves neither a pair nor a tombstone under it.
    pub(in crate::writer) async fn allocate_for_tombstones(
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
                .map(|id| pg::value::to_text(id).unwrap_or_default())
                .collect();
            let asked: Vec<&String> = texts.iter().collect();
            let mut taken = read_pairs(
                target,
                self.prepared(self.to),
                "platform",
                entity,
                Side::Platform,
                &asked,
            )
            .await?;
            // A derived id the other direction linked to another legacy row
            // (a platform row that row's natural key matched) is paired in
            // the legacy database: the row this delete is for lost its
            // counterpart to that one, and nothing here is its to delete.
            if !entity.natural_key_columns(self.to).is_empty() {
                self.lock_pairs(target, source).await?;
                taken.extend(
                    read_pairs(
                        source,
                        self.prepared(self.from),
                        "legacy",
                        entity,
                        Side::Platform,
                        &asked,
                    )
                    .await?,
                );
            }
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
    pub(super) async fn allocate_and_record(
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
        // other pair to `id_map` (see [`pairing`](super)). New platform ids
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
            // sequence), by a pair, or by a row deleted here whose tombstone
            // is kept (its pair lives in the platform's correspondence, and
            // its delete may not have crossed yet). Such values are skipped,
            // drawing twice as many each round, so that a new row never
            // lands on another row's id and overwrites it.
            Side::Legacy => {
                let table = entity.table(Side::Legacy);
                let qualified = quote_table(&table.schema, &table.table);
                let free = format!(
                    "SELECT s.v FROM (SELECT nextval(pg_get_serial_sequence($1, $2)) AS v \
                                      FROM generate_series(1, $3::int)) AS s \
                     WHERE NOT EXISTS (SELECT 1 FROM {qualified} t WHERE t.{key} = s.v {PROBE}) \
                       AND NOT EXISTS ({pairs}) \
                       AND NOT EXISTS (SELECT 1 FROM syncbridge.row_clock rc \
                                       WHERE rc.relation = {relation} AND rc.row_key = s.v::text {PROBE})",
                    key = quote(&table.key),
                    pairs = pairs_of_entity("$4", "s.v", Side::Legacy),
                    relation = crate::conflict::literal(&pg::clock::relation(&table.schema, &table.table)),
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
