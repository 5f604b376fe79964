//! Reading one side of an entity a key range at a time, and the id pairs of
//! the rows read, so that a pass holds one chunk of rows in memory whatever
//! the table's size.

use std::collections::HashMap;

use schemas::event::Value;
use tokio_postgres::{Client, Statement};
use uuid::Uuid;

use crate::error::{ApplyError, Result};
use crate::mapping::{Entity, Side};
use crate::writer::pairing::derived_legacy_id;
use pg::ident::{quote, quote_table};

/// One row's values, in its table's column order, with its key's text form.
pub(super) struct ReadRow {
    pub key: String,
    pub values: Vec<Value>,
}

/// One side's table of an entity, described once, with its statements
/// prepared once on the connection that reads it (a chunk then costs one
/// round trip and no planning per statement).
#[derive(Clone)]
pub(super) struct Table {
    side: Side,
    qualified: String,
    key_name: String,
    /// The key column's type, as `format_type` names it (for casts).
    key_type: String,
    /// (name, type oid, type name) of every column, in order.
    columns: Vec<(String, u32, String)>,
    rows_first: Statement,
    rows_after: Statement,
    rows_with_keys: Statement,
    keys_first: Statement,
    keys_after: Statement,
    existing_keys: Statement,
}

impl Table {
    /// Describes `entity`'s table on `side` from the catalog and prepares
    /// its statements on `client`, the connection that reads it.
    pub async fn describe(client: &Client, entity: &Entity, side: Side) -> Result<Table> {
        let table = entity.table(side);
        let key_name = entity.key_column(side).to_owned();
        let rows = client
            .query(
                "SELECT a.attname::text, a.atttypid, t.typname::text, \
                        pg_catalog.format_type(a.atttypid, a.atttypmod) \
                 FROM pg_catalog.pg_attribute a \
                 JOIN pg_catalog.pg_class c ON c.oid = a.attrelid \
                 JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                 JOIN pg_catalog.pg_type t ON t.oid = a.atttypid \
                 WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped \
                 ORDER BY a.attnum",
                &[&table.schema, &table.table],
            )
            .await
            .map_err(|e| ApplyError::postgres(side.as_str(), "read columns", e))?;
        let mut key_type = None;
        let mut columns = Vec::with_capacity(rows.len());
        for row in rows {
            let name: String = row.get(0);
            if name == key_name {
                key_type = Some(row.get::<_, String>(3));
            }
            columns.push((name, row.get(1), row.get(2)));
        }
        let Some(key_type) = key_type else {
            return Err(ApplyError::Config(format!(
                "{} table {} has no key column {key_name}",
                side.as_str(),
                table.qualified()
            )));
        };
        let qualified = quote_table(&table.schema, &table.table);
        // Qualified: a bare name in ORDER BY would sort by the text output
        // column of the same name.
        let key = format!("t.{}", quote(&key_name));
        let all = std::iter::once(format!("{key}::text"))
            .chain(
                columns
                    .iter()
                    .map(|(name, _, _)| format!("t.{}::text", quote(name))),
            )
            .collect::<Vec<_>>()
            .join(", ");
        let prepare = |sql: String| async move {
            client.prepare(&sql).await.map_err(|e| {
                ApplyError::postgres(
                    side.as_str(),
                    format!("prepare a read of {}", table.qualified()),
                    e,
                )
            })
        };
        Ok(Table {
            side,
            rows_first: prepare(format!(
                "SELECT {all} FROM {qualified} AS t ORDER BY {key} LIMIT $1"
            ))
            .await?,
            rows_after: prepare(format!(
                "SELECT {all} FROM {qualified} AS t WHERE {key} > $1::text::{key_type} \
                 ORDER BY {key} LIMIT $2"
            ))
            .await?,
            rows_with_keys: prepare(format!(
                "SELECT {all} FROM {qualified} AS t WHERE {key} = ANY($1::text[]::{key_type}[]) \
                 ORDER BY {key}"
            ))
            .await?,
            keys_first: prepare(format!(
                "SELECT {key}::text FROM {qualified} AS t ORDER BY {key} LIMIT $1"
            ))
            .await?,
            keys_after: prepare(format!(
                "SELECT {key}::text FROM {qualified} AS t WHERE {key} > $1::text::{key_type} \
                 ORDER BY {key} LIMIT $2"
            ))
            .await?,
            existing_keys: prepare(format!(
                "SELECT {key}::text FROM {qualified} AS t WHERE {key} = ANY($1::text[]::{key_type}[])"
            ))
            .await?,
            qualified,
            key_name,
            key_type,
            columns,
        })
    }

    /// The table, quoted and schema-qualified.
    pub fn qualified(&self) -> &str {
        &self.qualified
    }

    /// The key column's name.
    pub fn key_name(&self) -> &str {
        &self.key_name
    }

    /// The key column's type, for casts (`bigint`, `uuid`).
    pub fn key_type(&self) -> &str {
        &self.key_type
    }

    /// Where `column` is among a [`ReadRow`]'s values, and its type's name
    /// (`pg_type.typname`: `timestamp`, `timestamptz`, ...).
    pub fn column(&self, column: &str) -> Option<(usize, &str)> {
        self.columns
            .iter()
            .position(|(name, _, _)| name == column)
            .map(|index| (index, self.columns[index].2.as_str()))
    }

    fn failed(&self, what: &'static str) -> impl FnOnce(tokio_postgres::Error) -> ApplyError + '_ {
        move |e| ApplyError::postgres(self.side.as_str(), format!("{what} {}", self.qualified), e)
    }

    /// The next `limit` rows in key order after `after` (from the first
    /// when `None`).
    pub async fn rows_after(
        &self,
        client: &Client,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ReadRow>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = match after {
            None => client.query(&self.rows_first, &[&limit]).await,
            Some(after) => client.query(&self.rows_after, &[&after, &limit]).await,
        }
        .map_err(self.failed("read"))?;
        Ok(rows.iter().map(|row| self.typed(row)).collect())
    }

    /// The rows whose key is one of `keys` (text forms), in key order.
    pub async fn rows_with_keys(&self, client: &Client, keys: &[String]) -> Result<Vec<ReadRow>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let rows = client
            .query(&self.rows_with_keys, &[&keys])
            .await
            .map_err(self.failed("read"))?;
        Ok(rows.iter().map(|row| self.typed(row)).collect())
    }

    /// The next `limit` keys in key order after `after`.
    pub async fn keys_after(
        &self,
        client: &Client,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = match after {
            None => client.query(&self.keys_first, &[&limit]).await,
            Some(after) => client.query(&self.keys_after, &[&after, &limit]).await,
        }
        .map_err(self.failed("read keys of"))?;
        Ok(rows.iter().map(|row| row.get(0)).collect())
    }

    /// Which of `keys` have a row.
    pub async fn existing_keys(&self, client: &Client, keys: &[String]) -> Result<Vec<String>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let rows = client
            .query(&self.existing_keys, &[&keys])
            .await
            .map_err(self.failed("read keys of"))?;
        Ok(rows.iter().map(|row| row.get(0)).collect())
    }

    fn typed(&self, row: &tokio_postgres::Row) -> ReadRow {
        let key: String = row.get(0);
        let values = self
            .columns
            .iter()
            .enumerate()
            .map(
                |(index, (_, oid, _))| match row.get::<_, Option<String>>(index + 1) {
                    None => Value::Null,
                    Some(text) => pg::value::parse_text(*oid, &text).unwrap_or(Value::Text(text)),
                },
            )
            .collect();
        ReadRow { key, values }
    }

    /// The column names, in the order of a [`ReadRow`]'s values.
    pub fn names(&self) -> impl Iterator<Item = &str> + Clone {
        self.columns.iter().map(|(name, _, _)| name.as_str())
    }
}

/// Id pairs of some rows, read from both databases (each keeps the pairs of
/// the rows it received).
#[derive(Debug, Default)]
pub(super) struct Pairs {
    pub platform_of: HashMap<i64, Uuid>,
    pub legacy_of: HashMap<Uuid, i64>,
}

impl Pairs {
    fn add(&mut self, legacy: i64, platform: &str) {
        if let Ok(platform) = Uuid::parse_str(platform) {
            self.platform_of.insert(legacy, platform);
            self.legacy_of.insert(platform, legacy);
        }
    }
}

const PAIRS_OF_LEGACY: &str = "SELECT legacy_id, platform_id::text FROM syncbridge.id_map \
     WHERE entity = $1 AND legacy_id = ANY($2) \
     UNION ALL \
     SELECT legacy_id, platform_id::text FROM syncbridge.id_derived \
     WHERE entity = $1 AND legacy_id = ANY($2)";

/// Derived pairs are looked up by the legacy id their uuid carries (the
/// index `id_derived` has).
const PAIRS_OF_PLATFORM: &str = "SELECT legacy_id, platform_id::text FROM syncbridge.id_map \
     WHERE entity = $1 AND platform_id = ANY($2::text[]::uuid[]) \
     UNION ALL \
     SELECT legacy_id, platform_id::text FROM syncbridge.id_derived \
     WHERE entity = $1 AND legacy_id = ANY($3)";

/// Reads id pairs from both databases, with statements prepared once.
pub(super) struct PairReader<'a> {
    clients: [&'a Client; 2],
    of_legacy: [Statement; 2],
    of_platform: [Statement; 2],
}

impl<'a> PairReader<'a> {
    /// `clients`: the legacy and the platform database.
    pub async fn new(clients: [&'a Client; 2]) -> Result<PairReader<'a>> {
        let mut of_legacy = Vec::with_capacity(2);
        let mut of_platform = Vec::with_capacity(2);
        for (client, side) in clients.into_iter().zip([Side::Legacy, Side::Platform]) {
            let failed = |e| ApplyError::postgres(side.as_str(), "prepare a read of id pairs", e);
            of_legacy.push(client.prepare(PAIRS_OF_LEGACY).await.map_err(failed)?);
            of_platform.push(client.prepare(PAIRS_OF_PLATFORM).await.map_err(failed)?);
        }
        let two = |v: Vec<Statement>| -> Result<[Statement; 2]> {
            v.try_into()
                .map_err(|_| ApplyError::Config("two statements expected".to_owned()))
        };
        Ok(PairReader {
            clients,
            of_legacy: two(of_legacy)?,
            of_platform: two(of_platform)?,
        })
    }

    /// The pairs of legacy rows `legacy` of `entity`.
    pub async fn of_legacy(&self, entity: &str, legacy: &[i64]) -> Result<Pairs> {
        if legacy.is_empty() {
            return Ok(Pairs::default());
        }
        self.read_both(&self.of_legacy, &[&entity, &legacy]).await
    }

    /// The pairs of platform rows `platform` of `entity`.
    pub async fn of_platform(&self, entity: &str, platform: &[Uuid]) -> Result<Pairs> {
        if platform.is_empty() {
            return Ok(Pairs::default());
        }
        let carried: Vec<i64> = platform
            .iter()
            .filter_map(|id| derived_legacy_id(entity, *id))
            .collect();
        let texts: Vec<String> = platform.iter().map(Uuid::to_string).collect();
        let mut pairs = self
            .read_both(&self.of_platform, &[&entity, &texts, &carried])
            .await?;
        // A derived pair found by the legacy id a uuid carries must name
        // that uuid: checked here, not by a second `= ANY` in the query
        // (which would compare every row with every element).
        let asked: std::collections::HashSet<&Uuid> = platform.iter().collect();
        pairs.legacy_of.retain(|uuid, _| asked.contains(uuid));
        pairs.platform_of.retain(|_, uuid| asked.contains(&*uuid));
        Ok(pairs)
    }

    /// The pairs a statement reads, from both databases at once.
    async fn read_both(
        &self,
        statements: &[Statement; 2],
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Pairs> {
        let [legacy, platform] = self.clients;
        let (legacy_rows, platform_rows) = tokio::join!(
            legacy.query(&statements[0], params),
            platform.query(&statements[1], params)
        );
        let mut pairs = Pairs::default();
        for (rows, side) in [(legacy_rows, Side::Legacy), (platform_rows, Side::Platform)] {
            let rows = rows.map_err(|e| ApplyError::postgres(side.as_str(), "read id pairs", e))?;
            for row in rows {
                pairs.add(row.get(0), &row.get::<_, String>(1));
            }
        }
        Ok(pairs)
    }
}
