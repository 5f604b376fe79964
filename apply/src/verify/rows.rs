//! One chunk of an entity compared: legacy rows against their platform
//! counterparts, and platform rows checked for a legacy counterpart.
//!
//! Comparison rules: timestamps at whole seconds (the coarser side); JSON as
//! parsed values; a `flag_timestamp` true only needs a non-NULL timestamp on
//! the platform side; a documented lossy field corresponds when the
//! platform row maps back onto the legacy row.

use std::collections::HashMap;

use schemas::event::Value;
use tokio_postgres::Client;
use uuid::Uuid;

use super::read::{PairReader, Pairs, ReadRow, Table};
use crate::error::{ApplyError, Result};
use crate::mapping::{to_target, Entity, Field, Row, Side, TargetValue};
use pg::ident::{quote, quote_table};

/// Lookup values remembered across chunks, up to this many.
const LOOKUPS_KEPT: usize = 100_000;

/// A legacy row and its counterpart that do not correspond.
#[derive(Debug, Clone)]
pub(super) struct Mismatch {
    pub legacy_key: String,
    /// The counterpart's key, `None` when there is none.
    pub platform_key: Option<String>,
    /// The platform columns that differ (empty when the counterpart is missing).
    pub columns: Vec<String>,
    /// Both rows' values as read, to tell a row that changed since.
    pub seen: (Vec<Value>, Option<Vec<Value>>),
}

/// Compares the rows of one entity's two tables.
pub(super) struct Comparer<'a> {
    pub entity: &'a Entity,
    pub legacy: &'a Client,
    pub platform: &'a Client,
    pub legacy_table: Table,
    pub platform_table: Table,
    pairs: PairReader<'a>,
    /// Lookup values read so far (a lock held only to read or insert).
    lookups: std::sync::Mutex<HashMap<(usize, String), Value>>,
}

impl<'a> Comparer<'a> {
    pub async fn new(
        entity: &'a Entity,
        legacy: &'a Client,
        platform: &'a Client,
    ) -> Result<Comparer<'a>> {
        Ok(Comparer {
            entity,
            legacy,
            platform,
            legacy_table: Table::describe(legacy, entity, Side::Legacy).await?,
            platform_table: Table::describe(platform, entity, Side::Platform).await?,
            pairs: PairReader::new([legacy, platform]).await?,
            lookups: std::sync::Mutex::new(HashMap::new()),
        })
    }

    /// Legacy rows whose counterpart is missing or differs.
    pub async fn legacy_rows(&self, rows: &[ReadRow]) -> Result<Vec<Mismatch>> {
        let ids: Vec<i64> = rows.iter().filter_map(|r| r.key.parse().ok()).collect();
        let pairs = self.pairs.of_legacy(self.entity.name(), &ids).await?;
        let counterpart_keys: Vec<String> =
            pairs.platform_of.values().map(Uuid::to_string).collect();
        let counterparts: HashMap<String, Vec<Value>> = self
            .platform_table
            .rows_with_keys(self.platform, &counterpart_keys)
            .await?
            .into_iter()
            .map(|r| (r.key, r.values))
            .collect();
        let parents = self.parent_pairs(rows).await?;
        let mut mismatches = Vec::new();
        for row in rows {
            let platform_key = row
                .key
                .parse::<i64>()
                .ok()
                .and_then(|id| pairs.platform_of.get(&id))
                .map(Uuid::to_string);
            let counterpart = platform_key.as_ref().and_then(|k| counterparts.get(k));
            let columns = match counterpart {
                None => Vec::new(),
                Some(counterpart) => {
                    let differing = self.differing(&row.values, counterpart, &parents).await?;
                    if differing.is_empty() {
                        continue;
                    }
                    differing
                }
            };
            mismatches.push(Mismatch {
                legacy_key: row.key.clone(),
                platform_key: counterpart.and(platform_key),
                columns,
                seen: (row.values.clone(), counterpart.cloned()),
            });
        }
        Ok(mismatches)
    }

    /// Of platform keys `keys`, those without a legacy counterpart.
    pub async fn platform_keys_without_legacy(&self, keys: &[String]) -> Result<Vec<String>> {
        let uuids: Vec<Uuid> = keys
            .iter()
            .filter_map(|k| Uuid::parse_str(k).ok())
            .collect();
        let pairs = self.pairs.of_platform(self.entity.name(), &uuids).await?;
        let legacy_keys: Vec<String> = pairs.legacy_of.values().map(i64::to_string).collect();
        let existing = self
            .legacy_table
            .existing_keys(self.legacy, &legacy_keys)
            .await?;
        let existing: std::collections::HashSet<String> = existing.into_iter().collect();
        Ok(keys
            .iter()
            .filter(|key| {
                let legacy = Uuid::parse_str(key)
                    .ok()
                    .and_then(|uuid| pairs.legacy_of.get(&uuid));
                !legacy.is_some_and(|id| existing.contains(&id.to_string()))
            })
            .cloned()
            .collect())
    }

    /// The pairs of the parents the rows refer to, per parent entity.
    async fn parent_pairs(&self, rows: &[ReadRow]) -> Result<HashMap<String, Pairs>> {
        let mut wanted: HashMap<&str, Vec<i64>> = HashMap::new();
        for def in self.entity.fields() {
            if let Field::Reference { entity: parent, .. } = def.field() {
                let Some(column) = def.field().columns(Side::Legacy).first().copied() else {
                    continue;
                };
                let ids = wanted.entry(parent.as_str()).or_default();
                let Some(at) = self.legacy_table.names().position(|n| n == column) else {
                    continue;
                };
                for row in rows {
                    if let Some(Value::Int(id)) = row.values.get(at) {
                        ids.push(*id);
                    }
                }
            }
        }
        let mut pairs = HashMap::new();
        for (parent, mut ids) in wanted {
            ids.sort_unstable();
            ids.dedup();
            pairs.insert(parent.to_owned(), self.pairs.of_legacy(parent, &ids).await?);
        }
        Ok(pairs)
    }

    /// The platform columns in which `platform_row` does not correspond to
    /// `legacy_row`.
    async fn differing(
        &self,
        legacy_row: &[Value],
        platform_row: &[Value],
        parents: &HashMap<String, Pairs>,
    ) -> Result<Vec<String>> {
        let entity = self.entity;
        let legacy_names = self.legacy_table.names();
        let platform_names = self.platform_table.names();
        let converted = to_target(
            entity,
            Side::Legacy,
            &legacy_names.clone().zip(legacy_row).collect::<Row>(),
        )
        .map_err(|e| ApplyError::Rejected(e.to_string()))?;
        let mut differing = Vec::new();
        for (column, expected) in converted.iter() {
            let actual = value_of(platform_names.clone(), platform_row, column);
            let agrees = match expected {
                TargetValue::Value(v) => same(v, actual),
                TargetValue::KeepExistingOr(_) => *actual != Value::Null,
                TargetValue::Unchanged => true,
                TargetValue::Reference { entity: parent, id } => match id {
                    Value::Null => *actual == Value::Null,
                    Value::Int(id) => platform_of(parents, parent, *id)
                        .is_some_and(|uuid| *actual == Value::Uuid(*uuid.as_bytes())),
                    _ => false,
                },
                TargetValue::LookupByKey { field, key } => match key {
                    Value::Null => *actual == Value::Null,
                    key => self.lookup(*field, key).await? == *actual,
                },
                TargetValue::LookupByValue { .. } => false,
            };
            if !agrees {
                differing.push(column.to_owned());
            }
        }
        // A documented lossy case maps one way only: the pair corresponds if
        // the platform row maps back onto the legacy row.
        if !differing.is_empty() && self.maps_back(platform_row, legacy_row, parents).await? {
            differing.clear();
        }
        Ok(differing)
    }

    /// Whether the platform row, mapped to the legacy form, equals the legacy row.
    async fn maps_back(
        &self,
        platform_row: &[Value],
        legacy_row: &[Value],
        parents: &HashMap<String, Pairs>,
    ) -> Result<bool> {
        let legacy_names = self.legacy_table.names();
        let platform_names = self.platform_table.names();
        let Ok(converted) = to_target(
            self.entity,
            Side::Platform,
            &platform_names.zip(platform_row).collect::<Row>(),
        ) else {
            return Ok(false);
        };
        for (column, expected) in converted.iter() {
            let actual = value_of(legacy_names.clone(), legacy_row, column);
            let agrees = match expected {
                TargetValue::Value(v) => same(v, actual),
                TargetValue::Unchanged => true,
                TargetValue::KeepExistingOr(_) => *actual != Value::Null,
                TargetValue::Reference { entity: parent, id } => match (id, actual) {
                    (Value::Null, actual) => *actual == Value::Null,
                    (Value::Uuid(uuid), Value::Int(legacy_id)) => {
                        platform_of(parents, parent, *legacy_id)
                            .is_some_and(|mapped| mapped.as_bytes() == uuid)
                    }
                    _ => false,
                },
                TargetValue::LookupByValue { field, value } => match (value, actual) {
                    (Value::Null, actual) => *actual == Value::Null,
                    (value, Value::Null) => *value == Value::Null,
                    (value, key) => self.lookup(*field, key).await? == *value,
                },
                TargetValue::LookupByKey { .. } => false,
            };
            if !agrees {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// The lookup table's value for `key` of field `field`, read on the
    /// legacy side (remembered: lookup tables are small).
    async fn lookup(&self, field: usize, key: &Value) -> Result<Value> {
        let Some(Field::Lookup(lookup)) = self.entity.fields().get(field).map(|d| d.field()) else {
            return Ok(Value::Null);
        };
        let key = pg::value::to_text(key).unwrap_or_default();
        let known = self
            .lookups
            .lock()
            .ok()
            .and_then(|lookups| lookups.get(&(field, key.clone())).cloned());
        if let Some(value) = known {
            return Ok(value);
        }
        let sql = format!(
            "SELECT {}::text FROM {} WHERE {}::text = $1",
            quote(&lookup.value),
            quote_table(&lookup.table.schema, &lookup.table.table),
            quote(&lookup.key)
        );
        let row = self
            .legacy
            .query_opt(&sql, &[&key])
            .await
            .map_err(|e| ApplyError::postgres("legacy", "read a lookup", e))?;
        let value = row
            .and_then(|r| r.get::<_, Option<String>>(0))
            .map(Value::Text)
            .unwrap_or(Value::Null);
        if let Ok(mut lookups) = self.lookups.lock() {
            if lookups.len() >= LOOKUPS_KEPT {
                lookups.clear();
            }
            lookups.insert((field, key), value.clone());
        }
        Ok(value)
    }
}

fn platform_of<'p>(parents: &'p HashMap<String, Pairs>, parent: &str, id: i64) -> Option<&'p Uuid> {
    parents.get(parent).and_then(|p| p.platform_of.get(&id))
}

fn value_of<'r, 'n>(
    mut names: impl Iterator<Item = &'n str>,
    values: &'r [Value],
    column: &str,
) -> &'r Value {
    names
        .position(|name| name == column)
        .and_then(|at| values.get(at))
        .unwrap_or(&Value::Null)
}

fn seconds(micros: i64) -> i64 {
    micros.div_euclid(1_000_000)
}

/// Whether `expected` (mapped from legacy) and `actual` (platform) agree.
fn same(expected: &Value, actual: &Value) -> bool {
    match (expected, actual) {
        (
            Value::Timestamp(a) | Value::TimestampTz(a),
            Value::Timestamp(b) | Value::TimestampTz(b),
        ) => seconds(*a) == seconds(*b),
        (Value::Json(a), Value::Json(b)) => {
            serde_json::from_str::<serde_json::Value>(a).ok()
                == serde_json::from_str::<serde_json::Value>(b).ok()
        }
        (Value::Float(a), Value::Float(b)) => a == b || (a.is_nan() && b.is_nan()),
        (a, b) => a == b,
    }
}
