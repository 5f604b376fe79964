//! Reading one side of an entity a key range at a time, and the id pairs of
//! the rows read, so that a pass holds one chunk of rows in memory whatever
//! the table's size.

use std::collections::HashMap;

use schemas::event::{Column, Value};
use tokio_postgres::Client;
use uuid::Uuid;

use crate::error::{ApplyError, Result};
use crate::mapping::{Entity, Side};
use crate::writer::pairing::derived_legacy_id;
use pg::ident::{quote, quote_table};

/// One row as typed columns, with its key's text form.
pub(super) struct ReadRow {
    pub key: String,
    pub columns: Vec<Column>,
}

/// One side's table of an entity, described once.
pub(super) struct Table {
    side: Side,
    qualified: String,
    key: String,
    /// The key column's type, for casting keys given as text.
    key_type: String,
    /// (name, type oid, type name) of every column, in order.
    columns: Vec<(String, u32, String)>,
}

impl Table {
    /// Describes `entity`'s table on `side` from the catalog.
    pub async fn describe(client: &Client, entity: &Entity, side: Side) -> Result<Table> {
        let table = entity.table(side);
        let key = entity.key_column(side).to_owned();
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
            if name == key {
                key_type = Some(row.get::<_, String>(3));
            }
            columns.push((name, row.get(1), row.get(2)));
        }
        let Some(key_type) = key_type else {
            return Err(ApplyError::Config(format!(
                "{} table {} has no key column {key}",
                side.as_str(),
                table.qualified()
            )));
        };
        Ok(Table {
            side,
            qualified: quote_table(&table.schema, &table.table),
            key,
            key_type,
            columns,
        })
    }

    fn select_list(&self) -> String {
        let key = format!("t.{}::text", quote(&self.key));
        std::iter::once(key)
            .chain(
                self.columns
                    .iter()
                    .map(|(name, _, _)| format!("t.{}::text", quote(name))),
            )
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn context(&self, what: &str) -> String {
        format!("{what} {}", self.qualified)
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
        // Qualified: a bare name in ORDER BY would sort by the text output
        // column of the same name.
        let key = format!("t.{}", quote(&self.key));
        let rows = match after {
            None => {
                let sql = format!(
                    "SELECT {} FROM {} AS t ORDER BY {key} LIMIT $1",
                    self.select_list(),
                    self.qualified
                );
                client.query(&sql, &[&limit]).await
            }
            Some(after) => {
                let sql = format!(
                    "SELECT {} FROM {} AS t WHERE {key} > $1::text::{} ORDER BY {key} LIMIT $2",
                    self.select_list(),
                    self.qualified,
                    self.key_type
                );
                client.query(&sql, &[&after, &limit]).await
            }
        }
        .map_err(|e| ApplyError::postgres(self.side.as_str(), self.context("read"), e))?;
        Ok(rows.iter().map(|row| self.typed(row)).collect())
    }

    /// The rows whose key is one of `keys` (text forms), in key order.
    pub async fn rows_with_keys(&self, client: &Client, keys: &[String]) -> Result<Vec<ReadRow>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        // Qualified: a bare name in ORDER BY would sort by the text output
        // column of the same name.
        let key = format!("t.{}", quote(&self.key));
        let sql = format!(
            "SELECT {} FROM {} AS t WHERE {key} = ANY($1::text[]::{}[]) ORDER BY {key}",
            self.select_list(),
            self.qualified,
            self.key_type
        );
        let rows = client
            .query(&sql, &[&keys])
            .await
            .map_err(|e| ApplyError::postgres(self.side.as_str(), self.context("read"), e))?;
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
        // Qualified: a bare name in ORDER BY would sort by the text output
        // column of the same name.
        let key = format!("t.{}", quote(&self.key));
        let rows = match after {
            None => {
                let sql = format!(
                    "SELECT {key}::text FROM {} AS t ORDER BY {key} LIMIT $1",
                    self.qualified
                );
                client.query(&sql, &[&limit]).await
            }
            Some(after) => {
                let sql = format!(
                    "SELECT {key}::text FROM {} AS t WHERE {key} > $1::text::{} ORDER BY {key} LIMIT $2",
                    self.qualified, self.key_type
                );
                client.query(&sql, &[&after, &limit]).await
            }
        }
        .map_err(|e| ApplyError::postgres(self.side.as_str(), self.context("read keys of"), e))?;
        Ok(rows.iter().map(|row| row.get(0)).collect())
    }

    /// Which of `keys` have a row.
    pub async fn existing_keys(&self, client: &Client, keys: &[String]) -> Result<Vec<String>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        // Qualified: a bare name in ORDER BY would sort by the text output
        // column of the same name.
        let key = format!("t.{}", quote(&self.key));
        let sql = format!(
            "SELECT {key}::text FROM {} AS t WHERE {key} = ANY($1::text[]::{}[])",
            self.qualified, self.key_type
        );
        let rows = client.query(&sql, &[&keys]).await.map_err(|e| {
            ApplyError::postgres(self.side.as_str(), self.context("read keys of"), e)
        })?;
        Ok(rows.iter().map(|row| row.get(0)).collect())
    }

    fn typed(&self, row: &tokio_postgres::Row) -> ReadRow {
        let key: String = row.get(0);
        let columns = self
            .columns
            .iter()
            .enumerate()
            .map(|(index, (name, oid, type_name))| {
                let text: Option<String> = row.get(index + 1);
                let value = match text {
                    None => Value::Null,
                    Some(text) => pg::value::parse_text(*oid, &text).unwrap_or(Value::Text(text)),
                };
                Column {
                    name: name.clone(),
                    type_name: type_name.clone(),
                    type_oid: *oid,
                    value,
                }
            })
            .collect();
        ReadRow { key, columns }
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

    /// The pairs of legacy rows `legacy` of `entity`.
    pub async fn of_legacy(clients: [&Client; 2], entity: &str, legacy: &[i64]) -> Result<Pairs> {
        let mut pairs = Pairs::default();
        if legacy.is_empty() {
            return Ok(pairs);
        }
        for (client, side) in clients.into_iter().zip([Side::Legacy, Side::Platform]) {
            let rows = client
                .query(
                    "SELECT legacy_id, platform_id::text FROM syncbridge.id_map \
                     WHERE entity = $1 AND legacy_id = ANY($2) \
                     UNION ALL \
                     SELECT legacy_id, platform_id::text FROM syncbridge.id_derived \
                     WHERE entity = $1 AND legacy_id = ANY($2)",
                    &[&entity, &legacy],
                )
                .await
                .map_err(|e| ApplyError::postgres(side.as_str(), "read id pairs", e))?;
            for row in rows {
                pairs.add(row.get(0), &row.get::<_, String>(1));
            }
        }
        Ok(pairs)
    }

    /// The pairs of platform rows `platform` of `entity`: derived ids are
    /// looked up by the legacy id they carry (the index `id_derived` has).
    pub async fn of_platform(
        clients: [&Client; 2],
        entity: &str,
        platform: &[Uuid],
    ) -> Result<Pairs> {
        let mut pairs = Pairs::default();
        if platform.is_empty() {
            return Ok(pairs);
        }
        let carried: Vec<i64> = platform
            .iter()
            .filter_map(|id| derived_legacy_id(entity, *id))
            .collect();
        let texts: Vec<String> = platform.iter().map(Uuid::to_string).collect();
        for (client, side) in clients.into_iter().zip([Side::Legacy, Side::Platform]) {
            let rows = client
                .query(
                    "SELECT legacy_id, platform_id::text FROM syncbridge.id_map \
                     WHERE entity = $1 AND platform_id = ANY($2::text[]::uuid[]) \
                     UNION ALL \
                     SELECT legacy_id, platform_id::text FROM syncbridge.id_derived \
                     WHERE entity = $1 AND legacy_id = ANY($3) \
                       AND platform_id = ANY($2::text[]::uuid[])",
                    &[&entity, &texts, &carried],
                )
                .await
                .map_err(|e| ApplyError::postgres(side.as_str(), "read id pairs", e))?;
            for row in rows {
                pairs.add(row.get(0), &row.get::<_, String>(1));
            }
        }
        Ok(pairs)
    }
}
