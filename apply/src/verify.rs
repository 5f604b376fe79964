//! Do the two databases correspond? Reads both sides whole, maps every legacy
//! row to its platform form through the mapping and the id correspondence,
//! and compares. Used by tests, `scripts/demo --smoke` and `apply check`.
//!
//! Comparison rules: timestamps at whole seconds (the coarser side);
//! JSON as parsed values; a `flag_timestamp` true only needs a non-NULL
//! timestamp on the platform side. Rows are read in full, so this is for
//! test and demo sized data, not a production reconciliation.

use std::collections::HashMap;
use std::fmt;

use schemas::event::{Column, Value};
use tokio_postgres::Client;

use crate::checkpoint;
use crate::config::Config;
use crate::error::{ApplyError, Result};
use crate::mapping::{to_target, Entity, Field, Mapping, Row, Side, TargetValue};
use pg::ident::{quote, quote_table};

/// Compares the two databases under the mapping (`apply check`).
pub async fn check(config: &Config) -> Result<Report> {
    let mapping = Mapping::load_dir(&config.apply.mapping_dir)?;
    let mut clients = Vec::new();
    for side in [Side::Legacy, Side::Platform] {
        let client = config.connect(side).await?;
        checkpoint::install(&client, side.as_str()).await?;
        clients.push(client);
    }
    compare(&mapping, &clients[0], &clients[1]).await
}

/// Differences found for one entity.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct EntityReport {
    pub entity: String,
    pub legacy_rows: usize,
    pub platform_rows: usize,
    /// Legacy rows without a platform counterpart (legacy keys).
    pub missing_on_platform: Vec<String>,
    /// Platform rows without a legacy counterpart (platform keys).
    pub missing_on_legacy: Vec<String>,
    /// Rows whose columns differ: (legacy key, platform column).
    pub different: Vec<(String, String)>,
}

impl EntityReport {
    pub fn corresponds(&self) -> bool {
        self.missing_on_platform.is_empty()
            && self.missing_on_legacy.is_empty()
            && self.different.is_empty()
    }
}

/// The whole comparison.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    pub entities: Vec<EntityReport>,
}

impl Report {
    pub fn corresponds(&self) -> bool {
        self.entities.iter().all(EntityReport::corresponds)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for e in &self.entities {
            write!(
                f,
                "{:<12} legacy {:>6} platform {:>6}",
                e.entity, e.legacy_rows, e.platform_rows
            )?;
            if e.corresponds() {
                writeln!(f, "  in step")?;
            } else {
                writeln!(
                    f,
                    "  missing on platform {}, missing on legacy {}, different {}",
                    e.missing_on_platform.len(),
                    e.missing_on_legacy.len(),
                    e.different.len()
                )?;
                for key in e.missing_on_platform.iter().take(5) {
                    writeln!(f, "    legacy {key} has no platform row")?;
                }
                for key in e.missing_on_legacy.iter().take(5) {
                    writeln!(f, "    platform {key} has no legacy row")?;
                }
                for (key, column) in e.different.iter().take(5) {
                    writeln!(f, "    legacy {key}: {column} differs")?;
                }
            }
        }
        Ok(())
    }
}

/// Reads every row of a table as typed columns (text values parsed by type).
async fn read_table(
    client: &Client,
    side: Side,
    schema: &str,
    table: &str,
) -> Result<Vec<Vec<Column>>> {
    let columns = client
        .query(
            "SELECT a.attname::text, a.atttypid, t.typname::text FROM pg_catalog.pg_attribute a \
             JOIN pg_catalog.pg_class c ON c.oid = a.attrelid JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             JOIN pg_catalog.pg_type t ON t.oid = a.atttypid \
             WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
            &[&schema, &table],
        )
        .await
        .map_err(|e| ApplyError::postgres(side.as_str(), "read columns", e))?;
    let names: Vec<(String, u32, String)> = columns
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let select: Vec<String> = names
        .iter()
        .map(|(n, _, _)| format!("{}::text", quote(n)))
        .collect();
    let sql = format!(
        "SELECT {} FROM {}",
        select.join(", "),
        quote_table(schema, table)
    );
    let rows = client
        .query(&sql, &[])
        .await
        .map_err(|e| ApplyError::postgres(side.as_str(), format!("read {schema}.{table}"), e))?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let mut columns = Vec::with_capacity(names.len());
        for (index, (name, oid, type_name)) in names.iter().enumerate() {
            let text: Option<String> = row.get(index);
            let value = match text {
                None => Value::Null,
                Some(text) => pg::value::parse_text(*oid, &text).unwrap_or(Value::Text(text)),
            };
            columns.push(Column {
                name: name.clone(),
                type_name: type_name.clone(),
                type_oid: *oid,
                value,
            });
        }
        out.push(columns);
    }
    Ok(out)
}

/// legacy id <-> platform id per entity, from both databases.
async fn read_id_map(
    legacy: &Client,
    platform: &Client,
) -> Result<HashMap<String, HashMap<i64, [u8; 16]>>> {
    let mut map: HashMap<String, HashMap<i64, [u8; 16]>> = HashMap::new();
    for (client, side) in [(legacy, "legacy"), (platform, "platform")] {
        let rows = client
            .query(
                "SELECT entity, legacy_id, platform_id::text FROM syncbridge.id_pairs",
                &[],
            )
            .await
            .map_err(|e| ApplyError::postgres(side, "read the id correspondence", e))?;
        for row in rows {
            let text: String = row.get(2);
            if let Ok(uuid) = uuid::Uuid::parse_str(&text) {
                map.entry(row.get(0))
                    .or_default()
                    .insert(row.get(1), *uuid.as_bytes());
            }
        }
    }
    Ok(map)
}

fn key_text(row: &[Column], column: &str) -> String {
    row.iter()
        .find(|c| c.name == column)
        .and_then(|c| pg::value::to_text(&c.value))
        .unwrap_or_default()
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

/// Compares the two databases under `mapping`.
pub async fn compare(mapping: &Mapping, legacy: &Client, platform: &Client) -> Result<Report> {
    let ids = read_id_map(legacy, platform).await?;
    let mut report = Report::default();
    for entity in mapping.entities() {
        report
            .entities
            .push(compare_entity(mapping, entity, legacy, platform, &ids).await?);
    }
    Ok(report)
}

async fn compare_entity(
    mapping: &Mapping,
    entity: &Entity,
    legacy: &Client,
    platform: &Client,
    ids: &HashMap<String, HashMap<i64, [u8; 16]>>,
) -> Result<EntityReport> {
    let lt = entity.table(Side::Legacy);
    let pt = entity.table(Side::Platform);
    let legacy_rows = read_table(legacy, Side::Legacy, &lt.schema, &lt.table).await?;
    let platform_rows = read_table(platform, Side::Platform, &pt.schema, &pt.table).await?;
    let empty = HashMap::new();
    let own_ids = ids.get(entity.name()).unwrap_or(&empty);
    let mut by_platform_key: HashMap<String, &Vec<Column>> = platform_rows
        .iter()
        .map(|row| (key_text(row, &pt.key), row))
        .collect();
    let mut report = EntityReport {
        entity: entity.name().to_owned(),
        legacy_rows: legacy_rows.len(),
        platform_rows: platform_rows.len(),
        ..EntityReport::default()
    };
    for row in &legacy_rows {
        let legacy_key = key_text(row, &lt.key);
        let platform_key = legacy_key
            .parse::<i64>()
            .ok()
            .and_then(|id| own_ids.get(&id))
            .map(|bytes| uuid::Uuid::from_bytes(*bytes).to_string());
        let Some(counterpart) = platform_key.and_then(|k| by_platform_key.remove(&k)) else {
            report.missing_on_platform.push(legacy_key);
            continue;
        };
        let converted = to_target(entity, Side::Legacy, &Row::from_columns(row))
            .map_err(|e| ApplyError::Rejected(e.to_string()))?;
        let mut differing = Vec::new();
        for (column, expected) in converted.iter() {
            let actual = counterpart
                .iter()
                .find(|c| c.name == column)
                .map(|c| &c.value)
                .unwrap_or(&Value::Null);
            let agrees = match expected {
                TargetValue::Value(v) => same(v, actual),
                TargetValue::KeepExistingOr(_) => *actual != Value::Null,
                TargetValue::Unchanged => true,
                TargetValue::Reference { entity: parent, id } => match id {
                    Value::Null => *actual == Value::Null,
                    Value::Int(id) => ids
                        .get(parent)
                        .and_then(|m| m.get(id))
                        .is_some_and(|uuid| *actual == Value::Uuid(*uuid)),
                    _ => false,
                },
                TargetValue::LookupByKey { field, key } => match key {
                    Value::Null => *actual == Value::Null,
                    key => lookup_name(mapping, entity, *field, legacy, key).await? == *actual,
                },
                TargetValue::LookupByValue { .. } => false,
            };
            if !agrees {
                differing.push(column.to_owned());
            }
        }
        // A documented lossy case maps one way only: the pair corresponds if
        // the platform row maps back onto the legacy row.
        if !differing.is_empty()
            && !maps_back(mapping, entity, legacy, ids, counterpart, row).await?
        {
            report
                .different
                .extend(differing.into_iter().map(|c| (legacy_key.clone(), c)));
        }
    }
    report.missing_on_legacy = by_platform_key.into_keys().collect();
    report.missing_on_legacy.sort();
    Ok(report)
}

async fn lookup_name(
    _mapping: &Mapping,
    entity: &Entity,
    field: usize,
    legacy: &Client,
    key: &Value,
) -> Result<Value> {
    let Some(Field::Lookup(lookup)) = entity.fields().get(field).map(|d| d.field()) else {
        return Ok(Value::Null);
    };
    let sql = format!(
        "SELECT {}::text FROM {} WHERE {}::text = $1",
        quote(&lookup.value),
        quote_table(&lookup.table.schema, &lookup.table.table),
        quote(&lookup.key)
    );
    let key = pg::value::to_text(key).unwrap_or_default();
    let row = legacy
        .query_opt(&sql, &[&key])
        .await
        .map_err(|e| ApplyError::postgres("legacy", "read a lookup", e))?;
    Ok(row
        .and_then(|r| r.get::<_, Option<String>>(0))
        .map(Value::Text)
        .unwrap_or(Value::Null))
}

/// Whether the platform row, mapped to the legacy form, equals the legacy row.
async fn maps_back(
    mapping: &Mapping,
    entity: &Entity,
    legacy: &Client,
    ids: &HashMap<String, HashMap<i64, [u8; 16]>>,
    platform_row: &[Column],
    legacy_row: &[Column],
) -> Result<bool> {
    let Ok(converted) = to_target(entity, Side::Platform, &Row::from_columns(platform_row)) else {
        return Ok(false);
    };
    for (column, expected) in converted.iter() {
        let actual = legacy_row
            .iter()
            .find(|c| c.name == column)
            .map(|c| &c.value)
            .unwrap_or(&Value::Null);
        let agrees = match expected {
            TargetValue::Value(v) => same(v, actual),
            TargetValue::Unchanged => true,
            TargetValue::KeepExistingOr(_) => *actual != Value::Null,
            TargetValue::Reference { entity: parent, id } => match (id, actual) {
                (Value::Null, actual) => *actual == Value::Null,
                (Value::Uuid(uuid), Value::Int(legacy_id)) => ids
                    .get(parent)
                    .and_then(|m| m.get(legacy_id))
                    .is_some_and(|mapped| mapped == uuid),
                _ => false,
            },
            TargetValue::LookupByValue { field, value } => match (value, actual) {
                (Value::Null, actual) => *actual == Value::Null,
                (value, Value::Null) => *value == Value::Null,
                (value, key) => lookup_name(mapping, entity, *field, legacy, key).await? == *value,
            },
            TargetValue::LookupByKey { .. } => false,
        };
        if !agrees {
            return Ok(false);
        }
    }
    Ok(true)
}
