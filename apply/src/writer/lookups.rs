//! The mapping's lookup tables: the value of a legacy key, read on the
//! legacy side (legacy -> platform), and the key of a value, found or
//! created in the legacy database (platform -> legacy). What was read is
//! kept in `Writer::lookups` until the source transaction is forgotten or
//! the target transaction rolls back.

use std::collections::HashMap;

use schemas::event::Value;
use tokio_postgres::Client;

use super::Writer;
use crate::error::{ApplyError, Result};
use crate::mapping::{Entity, Field};
use pg::ident::{quote, quote_table};

impl Writer {
    pub(super) fn entity_index(&self, entity: &Entity) -> usize {
        self.mapping
            .entities()
            .iter()
            .position(|e| e.name() == entity.name())
            .unwrap_or(usize::MAX)
    }

    fn lookup_of(entity: &Entity, field: usize) -> Result<crate::mapping::Lookup> {
        match entity.fields().get(field).map(|d| d.field()) {
            Some(Field::Lookup(lookup)) => Ok(lookup.clone()),
            _ => Err(ApplyError::Config(format!(
                "entity {} field {} is not a lookup",
                entity.name(),
                field + 1
            ))),
        }
    }

    /// Legacy -> platform: the lookup table's value for each key, read on the
    /// legacy side (the source).
    pub(super) async fn lookup_values(
        &mut self,
        source: &Client,
        entity: &Entity,
        field: usize,
        keys: &[Value],
    ) -> Result<()> {
        let lookup = Self::lookup_of(entity, field)?;
        let e = self.entity_index(entity);
        let missing: Vec<String> = keys
            .iter()
            .filter_map(pg::value::to_text)
            .filter(|k| !self.lookups.contains_key(&(e, field, k.clone())))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let key_type = self
            .catalogs
            .source
            .column_type(&lookup.table.schema, &lookup.table.table, &lookup.key)
            .ok_or_else(|| {
                ApplyError::Config(format!(
                    "lookup table {}.{} has no column {}",
                    lookup.table.schema, lookup.table.table, lookup.key
                ))
            })?;
        // Compared as the key's own type, so the lookup table's key index
        // serves it (`key::text = ...` would scan the whole table per batch).
        let sql = format!(
            "SELECT {key}::text, {value}::text FROM {table} WHERE {key} = ANY($1::text[]::{key_type}[])",
            key = quote(&lookup.key),
            value = quote(&lookup.value),
            table = quote_table(&lookup.table.schema, &lookup.table.table),
        );
        let rows = source
            .query(&sql, &[&missing])
            .await
            .map_err(|e| ApplyError::postgres(self.from.as_str(), "read a lookup table", e))?;
        let found: HashMap<String, String> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        for key in missing {
            let value = found.get(&key).cloned();
            self.lookups.insert((e, field, key), value);
        }
        Ok(())
    }

    /// Platform -> legacy: the lookup table's key for each value, creating
    /// missing rows in the target (legacy) when the mapping says so. Within
    /// the target transaction; not cached across transactions, since a
    /// rollback would forget created rows.
    pub(super) async fn lookup_keys(
        &mut self,
        target: &Client,
        entity: &Entity,
        field: usize,
        values: &[Value],
    ) -> Result<()> {
        let lookup = Self::lookup_of(entity, field)?;
        let e = self.entity_index(entity);
        let texts: Vec<String> = values.iter().filter_map(pg::value::to_text).collect();
        let table = quote_table(&lookup.table.schema, &lookup.table.table);
        if lookup.create_missing {
            let mut columns = vec![quote(&lookup.value)];
            let mut select = vec!["v".to_owned()];
            for stamp in &lookup.stamp {
                columns.push(quote(stamp));
                select.push("(now() AT TIME ZONE 'UTC')".to_owned());
            }
            let sql = format!(
                "INSERT INTO {table} ({}) SELECT {} FROM unnest($1::text[]) AS v ON CONFLICT ({}) DO NOTHING",
                columns.join(", "),
                select.join(", "),
                quote(&lookup.value)
            );
            target
                .execute(&sql, &[&texts])
                .await
                .map_err(|e| ApplyError::postgres(self.to.as_str(), "create lookup rows", e))?;
        }
        let sql = format!(
            "SELECT {value}::text, {key}::text FROM {table} WHERE {value}::text = ANY($1::text[])",
            key = quote(&lookup.key),
            value = quote(&lookup.value),
        );
        let rows = target
            .query(&sql, &[&texts])
            .await
            .map_err(|e| ApplyError::postgres(self.to.as_str(), "read a lookup table", e))?;
        let found: HashMap<String, String> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        for text in texts {
            let key = found.get(&text).cloned();
            self.lookups.insert((e, usize::MAX - field, text), key);
        }
        Ok(())
    }
}
