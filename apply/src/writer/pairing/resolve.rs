//! The target-side ids of source rows: from the pairs this process knows,
//! then from both databases' tables (each holds the pairs of the rows it
//! received), and the SQL that reads those tables.

use std::collections::HashMap;

use schemas::event::Value;
use tokio_postgres::Client;
use uuid::Uuid;

use super::derived::derived_legacy_id_sql;
use crate::conflict::PROBE;
use crate::error::{ApplyError, Result};
use crate::mapping::{Entity, Side};
use crate::writer::pipeline::Prepared;
use crate::writer::Writer;

impl Writer {
    /// The target-side ids of `keys` this process knows, and the positions
    /// of those it does not (a NULL key has none). Pairs any writer gave up
    /// since this one last looked are read again.
    pub(super) fn known_keys(
        &mut self,
        index: usize,
        keys: &[&Value],
    ) -> (Vec<Option<Value>>, Vec<usize>) {
        self.pairing.forget_given_up();
        let out: Vec<Option<Value>> = keys.iter().map(|k| self.known(index, k)).collect();
        let unknown = (0..keys.len())
            .filter(|i| out[*i].is_none() && *keys[*i] != Value::Null)
            .collect();
        (out, unknown)
    }

    /// Of the rows `unknown`, those whose pair, if any, only a database
    /// knows: a legacy id above the [`PairCeiling`](super::PairCeiling) has none.
    pub(super) fn to_read(&self, index: usize, keys: &[&Value], unknown: &[usize]) -> Vec<usize> {
        unknown
            .iter()
            .copied()
            .filter(|i| match (self.from, keys[*i]) {
                (Side::Legacy, Value::Int(legacy)) => {
                    self.pairing.ceiling.may_be_paired(index, *legacy)
                }
                _ => true,
            })
            .collect()
    }

    /// The target-side ids of source-side ids of `entity`, from the id
    /// correspondence (this process's, then both databases'); None where the
    /// row has no counterpart yet.
    pub(in crate::writer) async fn resolve_keys(
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
                if let Some(id) = found.get(&pg::value::to_text(keys[i]).unwrap_or_default()) {
                    out[i] = Some(id.clone());
                    self.learn(index, keys[i], id);
                }
            }
        }
        Ok(out)
    }

    fn known(&self, index: usize, key: &Value) -> Option<Value> {
        match (self.from, key) {
            (Side::Legacy, Value::Int(id)) => self
                .pairing
                .ids
                .platform_of(index, *id)
                .map(|u| Value::Uuid(*u.as_bytes())),
            (Side::Platform, Value::Uuid(bytes)) => self
                .pairing
                .ids
                .legacy_of(index, Uuid::from_bytes(*bytes))
                .map(Value::Int),
            _ => None,
        }
    }

    pub(super) fn learn(&mut self, index: usize, source_key: &Value, target_key: &Value) {
        if let Some((legacy, platform)) = pair_of(self.from, source_key, target_key) {
            self.pairing.ceiling.paired(index, legacy);
            self.pairing.ids.remember(index, legacy, platform);
        }
    }

    /// The target keys of source keys `keys`, from `client`'s `id_map`.
    pub(super) async fn read_map(
        &self,
        client: &Client,
        side: Side,
        entity: &Entity,
        keys: impl Iterator<Item = &Value>,
    ) -> Result<HashMap<String, Value>> {
        let texts: Vec<String> = keys.filter_map(pg::value::to_text).collect();
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
}

/// The pairs of `entity` in `client`'s id correspondence (`id_map` and
/// `id_derived`, see [`pairs_of`]) whose `by` side id is one of `keys`
/// (text): that id -> the other side's id (text). One index probe per key
/// and table, typed (see [`PROBE`]).
pub(super) async fn read_pairs(
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
/// `id`, from both tables of the correspondence (see [`pairing`](super)):
/// columns `legacy_id` and `platform_id`, one index probe each.
pub(super) fn pairs_of(id: &str, by: Side) -> String {
    pairs_of_entity("$1", id, by)
}

/// [`pairs_of`] with the entity given by the SQL expression `entity`.
pub(super) fn pairs_of_entity(entity: &str, id: &str, by: Side) -> String {
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

pub(super) fn parse_key(side: Side, text: &str) -> Result<Value> {
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
pub(super) fn pair_of(from: Side, source_key: &Value, target_key: &Value) -> Option<(i64, Uuid)> {
    match (from, source_key, target_key) {
        (Side::Legacy, Value::Int(l), Value::Uuid(p)) => Some((*l, Uuid::from_bytes(*p))),
        (Side::Platform, Value::Uuid(p), Value::Int(l)) => Some((*l, Uuid::from_bytes(*p))),
        _ => None,
    }
}
