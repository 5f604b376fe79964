//! Rows without a counterpart linked to an existing target row with the same
//! natural key, when that row is nobody's counterpart yet (see
//! [`Writer::link_or_allocate`]), and the reads a run of inserts needs for
//! that, made in one round (see [`Writer::resolve_fresh_keys`]).

use std::collections::{HashMap, HashSet};

use schemas::event::{Clock, Value};
use tokio_postgres::types::ToSql;
use tokio_postgres::Client;
use tracing::debug;
use uuid::Uuid;

use super::lock::{PairLock, PairLockStatement};
use super::resolve::{pair_of, pairs_of, parse_key, read_pairs};
use crate::conflict::PROBE;
use crate::error::{ApplyError, Result};
use crate::mapping::{Entity, Side};
use crate::writer::Writer;
use pg::ident::{quote, quote_table};

/// Target rows by natural key (text): their key and the source row their
/// pair in the target's correspondence names, if any (see
/// `Writer::natural_matches`).
pub(in crate::writer) type NaturalMatches = HashMap<Vec<String>, (String, Option<String>)>;

impl Writer {
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
    pub(in crate::writer) async fn resolve_fresh_keys(
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
            if this.pairing.lock == PairLock::None {
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
        if locked && self.pairing.lock == PairLock::None {
            self.pairing.lock = lock.held;
        }
        let (in_target, matches, in_source) = (in_target?, matches?, in_source?);
        for i in unknown {
            let text = pg::value::to_text(keys[i]).unwrap_or_default();
            if let Some(id) = in_target.get(&text).or_else(|| in_source.get(&text)) {
                out[i] = Some(id.clone());
                self.learn(index, keys[i], id);
            }
        }
        Ok((out, matches))
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
    pub(in crate::writer) async fn link_or_allocate(
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
                // (row, match, that source row).
                let mut contested: Vec<(usize, String, String)> = Vec::new();
                let mut matches: Vec<(usize, String)> = Vec::new();
                for i in &fresh {
                    let Some((found, in_target)) =
                        tuple_of(*i).and_then(|t| existing.get(&t).cloned())
                    else {
                        continue;
                    };
                    let incoming = pg::value::to_text(keys[*i]).unwrap_or_default();
                    let other = in_target.clone().or_else(|| paired.get(&found).cloned());
                    match other {
                        Some(other) if other != incoming => {
                            contested.push((*i, found, other));
                        }
                        _ => matches.push((*i, found)),
                    }
                }
                if !contested.is_empty() {
                    let others: Vec<&String> = contested.iter().map(|(_, _, o)| o).collect();
                    let alive = self.rows_alive(source, self.from, entity, &others).await?;
                    for (i, found, other) in contested {
                        if alive.contains(&other) {
                            held.insert(i);
                            continue;
                        }
                        // The other source row is gone there (deleted, or
                        // its delete not seen yet: polling finds deletes
                        // later): the pair is stale, wherever it is kept,
                        // and the match goes to this row.
                        self.unpair(target, source, index, entity, &found, &other)
                            .await?;
                        self.supersede(target, source, entity, &found, keys[i])
                            .await?;
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

    /// Rows of an upsert whose counterpart is gone from the target while
    /// another target row holds their natural key are written onto that row
    /// instead, and the two are paired: bringing the counterpart back would
    /// fail on the unique natural key. That happens when the target deleted
    /// the counterpart and gave its key to a new row while the source changed
    /// the row (or re-asserted it): in both databases the key names one row,
    /// so the two are the same row, and `updated_at` decides between the
    /// incoming version and the one there. The other direction does the same
    /// for the new row when it crosses (see [`Self::link_or_allocate`]), so
    /// both end paired with the same winner.
    ///
    /// A row whose key is held by the counterpart of another source row that
    /// still exists is not written (counted as `key_held`): the source's
    /// unique key says that row holds it there now, and the incoming row's
    /// later events follow. Neither is a row whose counterpart the target
    /// deleted with a clock at least as late as the incoming version's
    /// (`clocks`, by row): the delete wins over it, as it would had no
    /// other row taken the key, and reaches the source in turn; moved onto
    /// the key's holder, the version would live on there while the delete
    /// found no pair to remove. Costs a natural-key probe per row, so it runs
    /// only when a source transaction failed on a unique key and is applied
    /// again (see [`Writer::relink_displaced_rows`]).
    #[allow(clippy::too_many_arguments)]
    pub(in crate::writer) async fn relink_displaced(
        &mut self,
        target: &Client,
        source: &Client,
        index: usize,
        entity: &Entity,
        keys: &[&Value],
        clocks: &[Option<Clock>],
        target_keys: &mut [Option<Value>],
        columns: &[String],
        resolved: &[Option<Vec<Option<String>>>],
    ) -> Result<()> {
        let natural = entity.natural_key_columns(self.to).to_vec();
        let Some(positions) = natural_positions(&natural, columns) else {
            return Ok(());
        };
        let tuple_of = |i: usize| natural_tuple(&positions, resolved, i);
        let paired: Vec<usize> = (0..keys.len())
            .filter(|i| target_keys[*i].is_some() && tuple_of(*i).is_some())
            .collect();
        if paired.is_empty() {
            return Ok(());
        }
        let existing = self
            .natural_matches(target, entity, &positions, resolved, &paired)
            .await?;
        // (row, its counterpart, the row holding its natural key, that row's
        // pair in the target's correspondence)
        let mut displaced: Vec<(usize, String, String, Option<String>)> = Vec::new();
        for i in paired {
            let Some((found, in_target)) = tuple_of(i).and_then(|t| existing.get(&t).cloned())
            else {
                continue;
            };
            let counterpart = target_keys[i]
                .as_ref()
                .and_then(pg::value::to_text)
                .unwrap_or_default();
            if found != counterpart {
                displaced.push((i, counterpart, found, in_target));
            }
        }
        if displaced.is_empty() {
            return Ok(());
        }
        let counterparts: Vec<&String> = displaced.iter().map(|(_, c, _, _)| c).collect();
        let alive = self
            .rows_alive(target, self.to, entity, &counterparts)
            .await?;
        displaced.retain(|(_, counterpart, _, _)| !alive.contains(counterpart));
        if !displaced.is_empty() {
            let gone: Vec<&String> = displaced.iter().map(|(_, c, _, _)| c).collect();
            let tombstones = self.tombstones(target, entity, &gone).await?;
            displaced.retain(|(i, counterpart, _, _)| {
                match (
                    tombstones.get(counterpart),
                    clocks.get(*i).copied().flatten(),
                ) {
                    (Some(deleted), Some(clock)) => (clock.seconds, clock.tick) > *deleted,
                    _ => true,
                }
            });
        }
        if displaced.is_empty() {
            // The counterpart is there: an update that takes a key another
            // row holds fails on it as the source's own statement would.
            return Ok(());
        }
        self.lock_pairs(target, source).await?;
        let holders: Vec<&String> = displaced.iter().map(|(_, _, f, _)| f).collect();
        let paired_in_source = self
            .paired_in_source(source, entity, holders.into_iter())
            .await?;
        let others: Vec<String> = displaced
            .iter()
            .filter_map(|(_, _, found, in_target)| {
                in_target
                    .clone()
                    .or_else(|| paired_in_source.get(found).cloned())
            })
            .collect();
        let others: Vec<&String> = others.iter().collect();
        let others_alive = self.rows_alive(source, self.from, entity, &others).await?;
        let mut new_pairs: Vec<(i64, Uuid)> = Vec::new();
        let mut held = 0u64;
        let mut taken = HashSet::new();
        for (i, counterpart, found, in_target) in displaced {
            let incoming = pg::value::to_text(keys[i]).unwrap_or_default();
            if !taken.insert(found.clone()) {
                // Two rows of the run want one row: the first takes it.
                target_keys[i] = None;
                held += 1;
                continue;
            }
            let other = in_target.or_else(|| paired_in_source.get(&found).cloned());
            // Whether the two still need pairing (they may be already).
            let record = match other {
                Some(other) if other == incoming => false,
                Some(other) if others_alive.contains(&other) => {
                    target_keys[i] = None;
                    held += 1;
                    continue;
                }
                Some(other) => {
                    self.unpair(target, source, index, entity, &found, &other)
                        .await?;
                    self.supersede(target, source, entity, &found, keys[i])
                        .await?;
                    true
                }
                None => true,
            };
            self.unpair(target, source, index, entity, &counterpart, &incoming)
                .await?;
            let id = parse_key(self.to, &found)?;
            if record {
                if let Some(pair) = pair_of(self.from, keys[i], &id) {
                    new_pairs.push(pair);
                }
            }
            self.learn(index, keys[i], &id);
            target_keys[i] = Some(id);
            self.stats.linked(1);
        }
        if held > 0 {
            self.stats.key_held(held);
        }
        debug!(
            entity = entity.name(),
            rows = new_pairs.len(),
            "rows whose counterpart is gone written onto the row holding their natural key"
        );
        self.allocate_and_record(
            target,
            source,
            index,
            entity,
            keys,
            &[],
            target_keys,
            new_pairs,
        )
        .await
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
                    .catalogs
                    .target
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

    /// Of the keys `keys` (text) of `entity`'s table on `side`, those whose
    /// row exists there.
    async fn rows_alive(
        &self,
        client: &Client,
        side: Side,
        entity: &Entity,
        keys: &[&String],
    ) -> Result<HashSet<String>> {
        if keys.is_empty() {
            return Ok(HashSet::new());
        }
        let table = entity.table(side);
        let key_type = match side {
            Side::Legacy => "int8",
            Side::Platform => "uuid",
        };
        let sql = format!(
            "SELECT s.{key}::text FROM unnest($1::text[]::{key_type}[]) AS x(id) \
             CROSS JOIN LATERAL (SELECT {key} FROM {table} WHERE {key} = x.id {PROBE}) AS s",
            key = quote(&table.key),
            table = quote_table(&table.schema, &table.table),
        );
        let rows = client
            .query(&sql, &[&keys])
            .await
            .map_err(|e| ApplyError::postgres(side.as_str(), "look for rows", e))?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Removes the stale pair of target row `target_key` with source row
    /// `source_key` (one of the two is gone) and forgets it here. The pair
    /// is kept by the database that received the row, either one: the
    /// target's copy goes in the open transaction, the source's at once,
    /// under the pair lock (a pair that is stale stays stale, so a rollback
    /// of the target transaction loses nothing: the rows are paired again
    /// by natural key when they next cross).
    async fn unpair(
        &mut self,
        target: &Client,
        source: &Client,
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
        let sql = "WITH m AS (DELETE FROM syncbridge.id_map \
                              WHERE entity = $1 AND legacy_id = $2 AND platform_id = $3) \
                   DELETE FROM syncbridge.id_derived \
                   WHERE entity = $1 AND legacy_id = $2 AND platform_id = $3";
        let params: [&(dyn ToSql + Sync); 3] = [&entity.name(), &legacy, &platform];
        let (in_target, in_source) =
            tokio::join!(target.execute(sql, &params), source.execute(sql, &params));
        in_target.map_err(|e| ApplyError::postgres(self.to.as_str(), "remove a stale pair", e))?;
        in_source
            .map_err(|e| ApplyError::postgres(self.from.as_str(), "remove a stale pair", e))?;
        self.pairing.ids.forget(index, legacy, platform);
        self.pairing.ceiling.pair_given_up();
        self.hidden = true;
        debug!(
            entity = entity.name(),
            "a stale pair gave way to a natural-key link"
        );
        Ok(())
    }

    /// The clocks of the target's tombstones of `keys` (target keys, text),
    /// by key.
    async fn tombstones(
        &self,
        target: &Client,
        entity: &Entity,
        keys: &[&String],
    ) -> Result<HashMap<String, (i64, i64)>> {
        let table = entity.table(self.to);
        let relation = pg::clock::relation(&table.schema, &table.table);
        let rows = target
            .query(
                "SELECT row_key, seconds, tick FROM syncbridge.row_clock \
                 WHERE relation = $1 AND row_key = ANY($2::text[]) AND deleted",
                &[&relation, &keys],
            )
            .await
            .map_err(|e| ApplyError::postgres(self.to.as_str(), "read tombstones", e))?;
        Ok(rows
            .iter()
            .map(|row| (row.get(0), (row.get(1), row.get(2))))
            .collect())
    }

    /// Target row `target_key`, taken over by source row `taker` from the
    /// one it was paired with (gone from the source), holds a version of
    /// that row, when its clock came from the source. The source's unique
    /// natural key ordered every version of the gone row that carried the
    /// key before every version of the taker, whatever the two rows' clocks
    /// say (the ticks of two rows do not order them). So:
    /// - the target row's clock becomes the lowest there is, in the open
    ///   transaction, and the incoming version replaces it;
    /// - the taker's clock in the source moves past the gone row's, when it
    ///   is not already: a change of the target row made before the
    ///   takeover (the gone row's time), still on its way to the source,
    ///   must lose there to the taker, as it lost here to the gone row;
    /// - the taker waits (see `waiting`), so that its version with that
    ///   clock is read again and written here too.
    ///
    /// A version the target's own writers made since (its clock has no
    /// origin) is left to the clocks.
    async fn supersede(
        &mut self,
        target: &Client,
        source: &Client,
        entity: &Entity,
        target_key: &str,
        taker: &Value,
    ) -> Result<()> {
        let table = entity.table(self.to);
        let relation = pg::clock::relation(&table.schema, &table.table);
        let superseded = target
            .query(
                "UPDATE syncbridge.row_clock rc SET seconds = $4, tick = $4 \
                 FROM (SELECT c.seconds, c.tick FROM syncbridge.row_clock c \
                       WHERE c.relation = $1 AND c.row_key = $2 AND c.origin = $3 AND NOT c.deleted) AS gone \
                 WHERE rc.relation = $1 AND rc.row_key = $2 \
                 RETURNING gone.seconds, gone.tick",
                &[&relation, &target_key, &self.from.as_str(), &i64::MIN],
            )
            .await
            .map_err(|e| {
                ApplyError::postgres(self.to.as_str(), "supersede a taken-over row's clock", e)
            })?;
        let Some(gone) = superseded.first() else {
            return Ok(());
        };
        let (seconds, tick): (i64, i64) = (gone.get(0), gone.get(1));
        let own = entity.table(self.from);
        let taker_key = pg::value::to_text(taker).unwrap_or_default();
        source
            .execute(
                "UPDATE syncbridge.row_clock SET seconds = $3, tick = $4 + 1 \
                 WHERE relation = $1 AND row_key = $2 AND NOT deleted \
                   AND ROW(seconds, tick) <= ROW($3::int8, $4::int8)",
                &[
                    &pg::clock::relation(&own.schema, &own.table),
                    &taker_key,
                    &seconds,
                    &tick,
                ],
            )
            .await
            .map_err(|e| {
                ApplyError::postgres(
                    self.from.as_str(),
                    "move a taker's clock past its predecessor",
                    e,
                )
            })?;
        self.record_waiting(target, source, entity.name(), std::slice::from_ref(taker))
            .await
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
