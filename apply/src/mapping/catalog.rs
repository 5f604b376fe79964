//! What a database has (tables, columns, types), and checking a mapping against it.

use std::collections::{BTreeMap, BTreeSet};

use super::error::{at_line, MappingError};
use super::model::{Field, Mapping, Side};

/// The ordinary tables of a database's non-system schemas, with their columns
/// and Postgres type names (`int8`, `timestamptz`, `_text`, ...).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Catalog {
    tables: BTreeMap<(String, String), BTreeMap<String, String>>,
    /// `(schema, table, column)` of single-column foreign keys declared
    /// `ON DELETE SET NULL`.
    set_null: BTreeSet<(String, String, String)>,
}

/// What the two databases of a direction have: read at each session's
/// start, checked against the mapping, and handed to its writers.
#[derive(Debug, Clone)]
pub struct Catalogs {
    pub source: Catalog,
    pub target: Catalog,
}

impl Catalog {
    /// An empty catalog; fill it with [`Catalog::add_column`] or [`Catalog::with_table`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a column (and its table, if new).
    pub fn add_column(&mut self, schema: &str, table: &str, column: &str, type_name: &str) {
        self.tables
            .entry((schema.to_owned(), table.to_owned()))
            .or_default()
            .insert(column.to_owned(), type_name.to_owned());
    }

    /// Adds a table with `(column, type name)` pairs.
    pub fn with_table(mut self, schema: &str, table: &str, columns: &[(&str, &str)]) -> Self {
        self.tables
            .entry((schema.to_owned(), table.to_owned()))
            .or_default();
        for (column, type_name) in columns {
            self.add_column(schema, table, column, type_name);
        }
        self
    }

    pub fn has_table(&self, schema: &str, table: &str) -> bool {
        self.tables
            .contains_key(&(schema.to_owned(), table.to_owned()))
    }

    /// The Postgres type name of a column, if the column exists.
    pub fn column_type(&self, schema: &str, table: &str, column: &str) -> Option<&str> {
        self.tables
            .get(&(schema.to_owned(), table.to_owned()))
            .and_then(|cols| cols.get(column))
            .map(String::as_str)
    }

    /// Records that a column's foreign key is `ON DELETE SET NULL`.
    pub fn add_set_null(&mut self, schema: &str, table: &str, column: &str) {
        self.set_null
            .insert((schema.to_owned(), table.to_owned(), column.to_owned()));
    }

    /// Whether the column's foreign key nulls it when the parent is deleted.
    pub fn is_set_null(&self, schema: &str, table: &str, column: &str) -> bool {
        self.set_null
            .contains(&(schema.to_owned(), table.to_owned(), column.to_owned()))
    }

    /// The `(schema, table)` names, sorted.
    pub fn tables(&self) -> impl Iterator<Item = (&str, &str)> {
        self.tables.keys().map(|(s, t)| (s.as_str(), t.as_str()))
    }

    /// Reads ordinary and partitioned tables of every schema except
    /// `pg_catalog`, `information_schema` and the toast/temp schemas.
    pub async fn read(client: &tokio_postgres::Client) -> Result<Catalog, tokio_postgres::Error> {
        let rows = client
            .query(
                "SELECT n.nspname::text, c.relname::text, a.attname::text, t.typname::text \
                 FROM pg_catalog.pg_class c \
                 JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                 JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid \
                 JOIN pg_catalog.pg_type t ON t.oid = a.atttypid \
                 WHERE c.relkind IN ('r', 'p') AND a.attnum > 0 AND NOT a.attisdropped \
                   AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
                   AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp\\_%' \
                 ORDER BY 1, 2, a.attnum",
                &[],
            )
            .await?;
        let mut catalog = Catalog::new();
        for row in rows {
            let schema: String = row.try_get(0)?;
            let table: String = row.try_get(1)?;
            let column: String = row.try_get(2)?;
            let type_name: String = row.try_get(3)?;
            catalog.add_column(&schema, &table, &column, &type_name);
        }
        let set_null = client
            .query(
                "SELECT n.nspname::text, c.relname::text, a.attname::text \
                 FROM pg_catalog.pg_constraint k \
                 JOIN pg_catalog.pg_class c ON c.oid = k.conrelid \
                 JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                 JOIN pg_catalog.pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = k.conkey[1] \
                 WHERE k.contype = 'f' AND k.confdeltype = 'n' AND cardinality(k.conkey) = 1",
                &[],
            )
            .await?;
        for row in set_null {
            let schema: String = row.try_get(0)?;
            let table: String = row.try_get(1)?;
            let column: String = row.try_get(2)?;
            catalog.add_set_null(&schema, &table, &column);
        }
        Ok(catalog)
    }
}

impl Mapping {
    /// Checks that every table and column the mapping names on `side` exists
    /// in `catalog`: each entity's table, key, `updated_at` and natural key,
    /// every field's columns, and (legacy side) each lookup table with its
    /// key, value and stamp columns. Reports every problem, one per line, as
    /// `FILE:LINE: entity "user" field 4 (copy): column "phone_e164x" does not exist in identity.identities (platform)`.
    pub fn check(&self, side: Side, catalog: &Catalog) -> Result<(), MappingError> {
        let mut errors = Vec::new();
        for entity in &self.entities {
            let table = entity.table(side);
            let context = format!("entity \"{}\"", entity.name());
            let missing_column = |column: &str| {
                format!(
                    "column \"{column}\" does not exist in {} ({side})",
                    table.qualified()
                )
            };
            if !catalog.has_table(&table.schema, &table.table) {
                errors.push(at_line(
                    entity.file(),
                    entity.table_line(side),
                    context,
                    format!("table {} does not exist ({side})", table.qualified()),
                ));
                continue;
            }
            let exists = |column: &str| {
                catalog
                    .column_type(&table.schema, &table.table, column)
                    .is_some()
            };
            for (what, column) in [("key", &table.key), ("updated_at", &table.updated_at)] {
                if !exists(column) {
                    errors.push(at_line(
                        entity.file(),
                        entity.table_line(side),
                        context.clone(),
                        format!("{what}: {}", missing_column(column)),
                    ));
                }
            }
            for column in entity.natural_key_columns(side) {
                if !exists(column) {
                    errors.push(at_line(
                        entity.file(),
                        entity.natural_key_line,
                        context.clone(),
                        format!("natural_key: {}", missing_column(column)),
                    ));
                }
            }
            for f in entity.fields() {
                let field_context = format!("{context} {}", f.label());
                for column in f.field().columns(side) {
                    if !exists(column) {
                        errors.push(at_line(
                            entity.file(),
                            f.line_of(side.as_str()),
                            field_context.clone(),
                            missing_column(column),
                        ));
                    }
                }
                let Field::Lookup(lookup) = f.field() else {
                    continue;
                };
                if side != Side::Legacy {
                    continue;
                }
                let lt = &lookup.table;
                if !catalog.has_table(&lt.schema, &lt.table) {
                    errors.push(at_line(
                        entity.file(),
                        f.line_of("table"),
                        field_context.clone(),
                        format!("lookup table {lt} does not exist (legacy)"),
                    ));
                    continue;
                }
                let mut lookup_columns = vec![("key", &lookup.key), ("value", &lookup.value)];
                lookup_columns.extend(lookup.stamp.iter().map(|s| ("stamp", s)));
                for (key, column) in lookup_columns {
                    if catalog.column_type(&lt.schema, &lt.table, column).is_none() {
                        errors.push(at_line(
                            entity.file(),
                            f.line_of(key),
                            field_context.clone(),
                            format!("column \"{column}\" does not exist in {lt} (legacy)"),
                        ));
                    }
                }
            }
        }
        MappingError::from_list(errors)
    }
}
