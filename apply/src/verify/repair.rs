//! Repair: each row a verification pass finds different or missing is
//! re-asserted from the side whose version wins, through the bridge itself.
//!
//! Re-asserting a row is a write on the side that keeps it: its
//! `updated_at` is raised to the repair time, and at least one second (the
//! coarser precision) past the other side's version and its clock, values
//! unchanged. That
//! write is an ordinary source change: capture sends it, apply writes it on
//! the other side with its echo marker and ledger, and it wins there under
//! every rule (newer timestamp, later commit), so the two sides end equal
//! however the difference came about. Nothing is written on the side that
//! loses except by apply.
//!
//! Which version wins:
//! - a row on both sides that differs: the later row clock (see
//!   [`pg::clock`]; `updated_at` at the coarser precision for a row without
//!   one), `conflicts.tie_winner` on a tie: the rule apply follows;
//! - a row on one side only: that row, which comes back on the other side.
//!   When the other side holds another row with the same natural key (the
//!   row was deleted there and its key reused), apply links the two, as it
//!   links rows created with one natural key on both sides.
//!
//! Rows still in flight are left alone: the pass reads a row that differs
//! again after `verify.settle` and reports it only when it is unchanged on
//! both sides. A repair is idempotent: a second run finds nothing once the
//! bridge carried the first.

use std::collections::{BTreeSet, HashMap};
use std::fmt;

use tokio_postgres::Client;
use tracing::info;
use uuid::Uuid;

use super::progress::WalkProgress;
use super::read::{PairReader, Table};
use super::{connect, entity_pass, EntityReport, Report};
use crate::config::Config;
use crate::error::{ApplyError, Result};
use crate::mapping::{Entity, Mapping, Side, TimestampPrecision};
use pg::ident::quote;
use schemas::event::Value;

/// Rows re-asserted per statement (one source transaction each).
const CHUNK: usize = 500;

/// One row to re-assert on `side`: its key (text) and the other side's
/// version it must beat (microseconds, at the coarser precision), when the
/// other side has one.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Reassert {
    key: String,
    beat: Option<i64>,
}

/// What one entity's repair re-asserted (or would, on a dry run).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct EntityRepair {
    pub entity: String,
    /// Legacy keys of the rows re-asserted from legacy.
    pub from_legacy: Vec<String>,
    /// Platform keys of the rows re-asserted from the platform.
    pub from_platform: Vec<String>,
}

/// A repair: what the verification pass found and what was re-asserted.
#[derive(Debug, Default, Clone)]
pub struct RepairReport {
    pub found: Report,
    pub repaired: Vec<EntityRepair>,
    pub dry_run: bool,
}

impl RepairReport {
    /// Whether the pass found the databases corresponding: nothing to repair.
    pub fn corresponds(&self) -> bool {
        self.found.corresponds()
    }

    /// The report as one JSON document (keys, never values).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "dry_run": self.dry_run,
            "corresponds": self.corresponds(),
            "repaired": self.repaired.iter().map(|r| serde_json::json!({
                "entity": r.entity,
                "from_legacy": r.from_legacy,
                "from_platform": r.from_platform,
            })).collect::<Vec<_>>(),
            "found": self.found.to_json(),
        })
    }
}

impl fmt::Display for RepairReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.found)?;
        let verb = if self.dry_run {
            "would re-assert"
        } else {
            "re-asserted"
        };
        for r in &self.repaired {
            if r.from_legacy.is_empty() && r.from_platform.is_empty() {
                continue;
            }
            writeln!(
                f,
                "{:<12} {verb} {} row(s) from legacy, {} from the platform",
                r.entity,
                r.from_legacy.len(),
                r.from_platform.len()
            )?;
            for key in r.from_legacy.iter().take(5) {
                writeln!(f, "    legacy {key}")?;
            }
            for key in r.from_platform.iter().take(5) {
                writeln!(f, "    platform {key}")?;
            }
        }
        let unlisted: usize = self.found.entities.iter().map(|e| e.unlisted).sum();
        if unlisted > 0 {
            writeln!(
                f,
                "{unlisted} more row(s) differ beyond verify.max_listed: run repair again once these crossed"
            )?;
        }
        Ok(())
    }
}

/// One verification pass (a new one, not stored), then every row it lists
/// re-asserted from its winning side, parents first; nothing written when
/// `dry_run`.
pub async fn repair(config: &Config, mapping: &Mapping, dry_run: bool) -> Result<RepairReport> {
    let [legacy, platform] = connect(config).await?;
    let tie_winner = mapping.conflicts().tie_winner;
    let mut report = RepairReport {
        dry_run,
        ..RepairReport::default()
    };
    for entity in mapping.entities() {
        let start = (WalkProgress::default(), WalkProgress::default());
        let found = entity_pass(entity, &legacy, &platform, &config.verify, None, start).await?;
        let [from_legacy, from_platform] = if found.listed() == 0 {
            [Vec::new(), Vec::new()]
        } else {
            let (legacy_table, platform_table) = tokio::try_join!(
                Table::describe(&legacy, entity, Side::Legacy),
                Table::describe(&platform, entity, Side::Platform),
            )?;
            let sides = [
                Stamped::of(entity, Side::Legacy, &legacy, legacy_table)?,
                Stamped::of(entity, Side::Platform, &platform, platform_table)?,
            ];
            let winners = winners(entity, &sides, tie_winner, &found).await?;
            if !dry_run {
                for (side, rows) in sides.iter().zip(&winners) {
                    side.reassert(rows).await?;
                }
            }
            winners
        };
        info!(
            entity = entity.name(),
            from_legacy = from_legacy.len(),
            from_platform = from_platform.len(),
            dry_run,
            "repair re-asserted the winning rows"
        );
        let keys = |rows: Vec<Reassert>| rows.into_iter().map(|r| r.key).collect();
        report.repaired.push(EntityRepair {
            entity: entity.name().to_owned(),
            from_legacy: keys(from_legacy),
            from_platform: keys(from_platform),
        });
        report.found.entities.push(found);
    }
    Ok(report)
}

/// The rows of `found` to re-assert from legacy and from the platform.
async fn winners(
    entity: &Entity,
    [legacy, platform]: &[Stamped<'_>; 2],
    tie_winner: Side,
    found: &EntityReport,
) -> Result<[Vec<Reassert>; 2]> {
    // A row on one side only has nothing on the other side to beat.
    let alone = |keys: &[String]| -> Vec<Reassert> {
        keys.iter()
            .map(|key| Reassert {
                key: key.clone(),
                beat: None,
            })
            .collect()
    };
    let mut from_legacy = alone(&found.missing_on_platform);
    let mut from_platform = alone(&found.missing_on_legacy);
    let different: BTreeSet<i64> = found
        .different
        .iter()
        .filter_map(|(key, _)| key.parse().ok())
        .collect();
    if different.is_empty() {
        return Ok([from_legacy, from_platform]);
    }
    let different: Vec<i64> = different.into_iter().collect();
    let pairs = PairReader::new([legacy.client, platform.client])
        .await?
        .of_legacy(entity.name(), &different)
        .await?;
    let legacy_keys: Vec<String> = different.iter().map(i64::to_string).collect();
    let platform_keys: Vec<String> = different
        .iter()
        .filter_map(|id| pairs.platform_of.get(id))
        .map(Uuid::to_string)
        .collect();
    let (legacy_versions, platform_versions, legacy_clocks, platform_clocks) = tokio::try_join!(
        legacy.versions(&legacy_keys),
        platform.versions(&platform_keys),
        legacy.clocks(entity, &legacy_keys),
        platform.clocks(entity, &platform_keys),
    )?;
    let precision = coarser(
        entity.precision(Side::Legacy),
        entity.precision(Side::Platform),
    );
    for id in &different {
        let Some(uuid) = pairs.platform_of.get(id) else {
            continue;
        };
        let (legacy_key, platform_key) = (id.to_string(), uuid.to_string());
        let (Some(l), Some(p)) = (
            legacy_versions.get(&legacy_key),
            platform_versions.get(&platform_key),
        ) else {
            // Gone from one side since the pass read it: in flight.
            continue;
        };
        // Each side's version in the order apply keeps: its row clock, or
        // its `updated_at` at the coarser precision for a row without one.
        let clock_of = |micros: i64, clock: Option<&(i64, i64)>| match clock {
            Some(&(seconds, tick)) => (seconds.saturating_mul(1_000_000), tick),
            None => (precision.truncate(micros), 0),
        };
        let l_clock = clock_of(*l, legacy_clocks.get(&legacy_key));
        let p_clock = clock_of(*p, platform_clocks.get(&platform_key));
        let legacy_wins = l_clock > p_clock || (l_clock == p_clock && tie_winner == Side::Legacy);
        // No version (NULL) or an infinite one: nothing a time can beat.
        let finite = |v: i64| (v != i64::MIN && v != i64::MAX).then_some(v);
        // The re-asserted version must be later than the losing one's clock
        // too, which can run ahead of its `updated_at`.
        let beat = |micros: i64, clock: (i64, i64)| finite(micros).map(|v| v.max(clock.0));
        if legacy_wins {
            from_legacy.push(Reassert {
                key: legacy_key,
                beat: beat(*p, p_clock),
            });
        } else {
            from_platform.push(Reassert {
                key: platform_key,
                beat: beat(*l, l_clock),
            });
        }
    }
    Ok([from_legacy, from_platform])
}

fn coarser(a: TimestampPrecision, b: TimestampPrecision) -> TimestampPrecision {
    if a == TimestampPrecision::Seconds || b == TimestampPrecision::Seconds {
        TimestampPrecision::Seconds
    } else {
        TimestampPrecision::Microseconds
    }
}

/// One side's table of an entity, as repair reads and writes its
/// `updated_at`.
struct Stamped<'a> {
    side: Side,
    client: &'a Client,
    table: Table,
    /// Where `updated_at` is among the values of a read row.
    updated_at: usize,
    /// `updated_at` is a `timestamp` without time zone (holding UTC, as
    /// apply writes it) rather than a `timestamptz`.
    utc_without_zone: bool,
    updated_at_name: String,
}

impl<'a> Stamped<'a> {
    fn of(entity: &Entity, side: Side, client: &'a Client, table: Table) -> Result<Stamped<'a>> {
        let name = entity.table(side).updated_at.clone();
        let (updated_at, utc_without_zone) = match table.column(&name) {
            Some((index, "timestamp")) => (index, true),
            Some((index, "timestamptz")) => (index, false),
            other => {
                return Err(ApplyError::Config(format!(
                    "repair needs {}.{name} ({} side of entity {}) to be a timestamp, not {}",
                    entity.table(side).qualified(),
                    side.as_str(),
                    entity.name(),
                    other.map_or("missing", |(_, type_name)| type_name)
                )))
            }
        };
        Ok(Stamped {
            side,
            client,
            table,
            updated_at,
            utc_without_zone,
            updated_at_name: name,
        })
    }

    /// `updated_at` of the rows `keys` (text), in microseconds since the
    /// epoch, by key; a row without one counts as the oldest.
    async fn versions(&self, keys: &[String]) -> Result<HashMap<String, i64>> {
        let rows = self.table.rows_with_keys(self.client, keys).await?;
        Ok(rows
            .into_iter()
            .map(|row| {
                let version = match row.values.get(self.updated_at) {
                    Some(Value::Timestamp(micros) | Value::TimestampTz(micros)) => *micros,
                    _ => i64::MIN,
                };
                (row.key, version)
            })
            .collect())
    }

    /// The row clocks (`seconds`, `tick`) of the rows `keys` (text) that
    /// have one, by key (see [`pg::clock`]).
    async fn clocks(
        &self,
        entity: &Entity,
        keys: &[String],
    ) -> Result<HashMap<String, (i64, i64)>> {
        if keys.is_empty() {
            return Ok(HashMap::new());
        }
        let table = entity.table(self.side);
        let sql = format!(
            "SELECT rc.row_key, rc.seconds, rc.tick FROM {qualified} t \
             JOIN syncbridge.row_clock rc ON rc.relation = $1 AND rc.row_key = t.{key}::text \
               AND NOT rc.deleted AND (rc.version IS NULL OR rc.version = t.xmin::text) \
             WHERE t.{key} = ANY($2::text[]::{key_type}[])",
            qualified = self.table.qualified(),
            key = quote(self.table.key_name()),
            key_type = self.table.key_type(),
        );
        let side = self.side.as_str();
        let rows = self
            .client
            .query(
                &sql,
                &[&pg::clock::relation(&table.schema, &table.table), &keys],
            )
            .await
            .map_err(|e| ApplyError::postgres(side, "read row clocks", e))?;
        Ok(rows
            .iter()
            .map(|row| (row.get(0), (row.get(1), row.get(2))))
            .collect())
    }

    /// Re-asserts `rows`: `updated_at` raised to now, and past the version
    /// each must beat, one statement (and source transaction) per chunk.
    async fn reassert(&self, rows: &[Reassert]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        // A `timestamptz` expression into the column.
        let into_column = if self.utc_without_zone {
            " AT TIME ZONE 'UTC'"
        } else {
            ""
        };
        let updated = quote(&self.updated_at_name);
        // One second past the version to beat: newer at the coarser precision.
        let sql = format!(
            "UPDATE {qualified} t SET {updated} = GREATEST(t.{updated}, (now(){into_column}), \
                 (to_timestamp((x.beat + 1000000)::float8 / 1000000){into_column})) \
             FROM unnest($1::text[], $2::int8[]) AS x(k, beat) \
             WHERE t.{key} = x.k::{key_type}",
            qualified = self.table.qualified(),
            key = quote(self.table.key_name()),
            key_type = self.table.key_type(),
        );
        let side = self.side.as_str();
        let statement = self
            .client
            .prepare(&sql)
            .await
            .map_err(|e| ApplyError::postgres(side, "prepare a repair", e))?;
        for chunk in rows.chunks(CHUNK) {
            let keys: Vec<&str> = chunk.iter().map(|r| r.key.as_str()).collect();
            let beats: Vec<Option<i64>> = chunk.iter().map(|r| r.beat).collect();
            self.client
                .execute(&statement, &[&keys, &beats])
                .await
                .map_err(|e| ApplyError::postgres(side, "re-assert rows", e))?;
        }
        Ok(())
    }
}
