//! A run written as one multi-row statement that decides conflicts as it
//! writes: its plain values rendered as text, references and lookups
//! resolved, its rows paired (see [`pairing`](super::pairing)) and locked,
//! changes made on top of a version that crossed found, and the upsert or
//! update sent ahead (see `pipeline`).

use std::collections::HashMap;
use std::sync::Arc;

use schemas::event::Value;
use tokio_postgres::types::ToSql;
use tokio_postgres::Client;

use super::pipeline::{Then, Written};
use super::runs::{PendingRow, RunKind};
use super::Writer;
use crate::conflict::{self, Clocks, ColumnSpec, Incoming, Merge, ParentCheck, Shape};
use crate::error::{ApplyError, Result};
use crate::mapping::{Entity, Field, Side, TableRef, TargetValue};
use pg::ident::quote_table;

/// How `Writer::write_rows` writes a run.
pub(super) struct Writing<'k> {
    pub(super) kind: &'k RunKind,
    /// Rows without a counterpart get one (upserts and reads).
    pub(super) allocate: bool,
    /// Every row is an insert or a read (see `Run::inserts`).
    pub(super) inserts: bool,
    /// The run's columns and plain values, if rendered already.
    pub(super) rendered: Option<Rendered>,
}

/// A run's target columns (what its rows carry: the first row tells, a run
/// shares a shape) and, per row and column, the text of each plain value;
/// references and lookups are left `None` for `Writer::resolve_row_values`,
/// which needs the databases for them.
pub(super) struct Rendered {
    columns: Vec<String>,
    plain: Vec<Vec<Option<String>>>,
}

impl Rendered {
    pub(super) fn of(rows: &[PendingRow], kind: &RunKind) -> Rendered {
        let unchanged: &[String] = match kind {
            RunKind::Update(columns) => columns,
            _ => &[],
        };
        let columns: Vec<String> = rows
            .first()
            .map(|row| {
                row.row
                    .iter()
                    .map(|(c, _)| c.to_owned())
                    .filter(|c| !unchanged.contains(c))
                    .collect()
            })
            .unwrap_or_default();
        let plain = rows
            .iter()
            .map(|row| {
                columns
                    .iter()
                    .map(|column| match row.row.get(column) {
                        Some(TargetValue::Value(v)) | Some(TargetValue::KeepExistingOr(v)) => {
                            pg::value::to_text(v)
                        }
                        _ => None,
                    })
                    .collect()
            })
            .collect();
        Rendered { columns, plain }
    }
}

/// The rows one statement of a run writes: their positions in the run, and
/// per row its target key, its source transaction and its column values
/// (text, column by column).
struct Statement {
    rows: Vec<usize>,
    keys: Vec<Option<String>>,
    source_xids: Vec<String>,
    columns: Vec<Vec<Option<String>>>,
}

/// The source keys of a statement's rows, in its order.
fn source_keys(statement: &Statement, rows: &[PendingRow]) -> Vec<Value> {
    statement
        .rows
        .iter()
        .map(|i| rows[*i].source_key.clone())
        .collect()
}

impl Statement {
    fn new(columns: usize, rows: usize) -> Statement {
        Statement {
            rows: Vec::with_capacity(rows),
            keys: Vec::with_capacity(rows),
            source_xids: Vec::with_capacity(rows),
            columns: vec![Vec::with_capacity(rows); columns],
        }
    }
}

/// A statement's first parameter, with room reserved for all of them in
/// the message it is written into. The bind message of a multi-row statement
/// is hundreds of kilobytes; grown by doubling as the values were written,
/// it was copied at each step and each step faulted in fresh memory
/// (reserving it up front measured less apply CPU in alternating runs of
/// `scripts/bench apply`).
#[derive(Debug)]
struct Presized<T> {
    value: T,
    /// The bytes all of the statement's parameters take, about.
    bytes: usize,
}

impl<T: ToSql> ToSql for Presized<T> {
    fn to_sql(
        &self,
        ty: &tokio_postgres::types::Type,
        out: &mut bytes::BytesMut,
    ) -> std::result::Result<tokio_postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>>
    {
        out.reserve(self.bytes);
        self.value.to_sql(ty, out)
    }

    fn accepts(ty: &tokio_postgres::types::Type) -> bool {
        T::accepts(ty)
    }

    tokio_postgres::types::to_sql_checked!();
}

/// The size of a one-dimensional array of `texts` in the binary format,
/// header and element lengths included.
fn text_array_bytes<'a>(texts: impl IntoIterator<Item = Option<&'a str>>) -> usize {
    20 + texts
        .into_iter()
        .map(|text| 4 + text.map_or(0, str::len))
        .sum::<usize>()
}

impl Writer {
    /// Writes the staged run, if any.
    pub async fn flush(&mut self, target: &Client, source: &Client) -> Result<()> {
        let Some(run) = self.run.take() else {
            return Ok(());
        };
        // The run's plain values as text, while the target may still be
        // busy with what was sent before: they need no reply.
        let rendered = (run.kind != RunKind::Delete).then(|| Rendered::of(&run.rows, &run.kind));
        // What this run reads must follow what the last one wrote, and its
        // follow-ups.
        self.settle(target, source).await?;
        if run.rows.is_empty() {
            return Ok(());
        }
        let mapping = Arc::clone(&self.mapping);
        let entity = &mapping.entities()[run.entity];
        match &run.kind {
            RunKind::Delete => {
                self.write_deletes(target, source, run.entity, entity, &run.rows)
                    .await
            }
            kind => {
                let allocate = matches!(kind, RunKind::Upsert | RunKind::Read);
                let writing = Writing {
                    kind,
                    allocate,
                    inserts: run.inserts,
                    rendered,
                };
                self.write_rows(target, source, run.entity, entity, &run.rows, writing)
                    .await
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) async fn write_rows(
        &mut self,
        target: &Client,
        source: &Client,
        index: usize,
        entity: &Entity,
        rows: &[PendingRow],
        writing: Writing<'_>,
    ) -> Result<()> {
        let Writing {
            kind,
            allocate,
            inserts,
            rendered,
        } = writing;
        let keys: Vec<&Value> = rows.iter().map(|r| &r.source_key).collect();
        let linking = allocate && !entity.natural_key_columns(self.to).is_empty();

        let Rendered { columns, plain } = match rendered {
            Some(rendered) => rendered,
            None => Rendered::of(rows, kind),
        };
        let mut specs = Vec::with_capacity(columns.len());
        let mut parents = Vec::new();
        for column in &columns {
            let merge = match entity.field_for_column(self.to, column) {
                Some((_, def))
                    if matches!(def.field(), Field::FlagTimestamp { .. })
                        && self.from == Side::Legacy =>
                {
                    Merge::KeepExistingNonNull
                }
                Some((_, def)) => {
                    if let Field::Reference { entity: parent, .. } = def.field() {
                        if let Some(parent) = self.mapping.entity(parent) {
                            let table = parent.table(self.to);
                            let own = entity.table(self.to);
                            parents.push(ParentCheck {
                                column: column.clone(),
                                table: quote_table(&table.schema, &table.table),
                                key: table.key.clone(),
                                set_null: self.catalogs.target.is_set_null(
                                    &own.schema,
                                    &own.table,
                                    column,
                                ),
                            });
                        }
                    }
                    Merge::Replace
                }
                None => Merge::Replace,
            };
            specs.push(ColumnSpec {
                name: column.clone(),
                type_name: self.column_type(entity, self.to, column)?,
                merge,
            });
        }

        let (mut target_keys, resolved, natural) = if linking && inserts {
            // The values first (they do not depend on this run's own keys),
            // then every read the pairing needs in one round (see
            // `resolve_fresh_keys`).
            let resolved = self
                .resolve_row_values(target, source, entity, rows, &columns, plain)
                .await?;
            let (target_keys, natural) = self
                .resolve_fresh_keys(target, source, index, entity, &keys, &columns, &resolved)
                .await?;
            (target_keys, resolved, Some(natural))
        } else {
            let target_keys = self
                .resolve_keys(target, source, index, entity, &keys, linking)
                .await?;
            let resolved = self
                .resolve_row_values(target, source, entity, rows, &columns, plain)
                .await?;
            (target_keys, resolved, None)
        };
        // Rows with a counterpart already: inserting one of them brings back a
        // row deleted here (see `resync_children`).
        let crossed_before: Vec<bool> = target_keys.iter().map(Option::is_some).collect();
        let mut new_ids = vec![false; rows.len()];
        if allocate {
            let allocated = self
                .link_or_allocate(
                    target,
                    source,
                    index,
                    entity,
                    &keys,
                    &mut target_keys,
                    &columns,
                    &resolved,
                    natural,
                )
                .await?;
            for i in allocated {
                new_ids[i] = true;
            }
            if self.relinking && linking {
                let clocks: Vec<Option<schemas::event::Clock>> =
                    rows.iter().map(|row| row.clock).collect();
                self.relink_displaced(
                    target,
                    source,
                    index,
                    entity,
                    &keys,
                    &clocks,
                    &mut target_keys,
                    &columns,
                    &resolved,
                )
                .await?;
            }
        }
        // Values, column by column, as text; rows without a target key or with
        // an unresolvable reference are left out (counted as conflicts). Rows
        // given a new id just now are written apart, after the others: see
        // `Shape::insert_new_sql`. (An insert frees no natural key, so no row
        // of the first statement needs one the second writes.)
        let given_new = new_ids.iter().filter(|new| **new).count();
        let mut existing = Statement::new(columns.len(), rows.len() - given_new);
        let mut new_rows = Statement::new(columns.len(), given_new);
        let mut orphans = 0u64;
        // Rows left out until the target has what they need (see `waiting`).
        let mut waiting: Vec<Value> = Vec::new();
        for (row_index, (target_key, values)) in target_keys.iter().zip(resolved).enumerate() {
            let unresolved = values.is_none();
            let (Some(target_key), Some(values)) = (target_key, values) else {
                // Rows whose natural key is held were counted as such.
                if unresolved || !allocate {
                    orphans += 1;
                }
                if rows[row_index].source_key != Value::Null {
                    waiting.push(rows[row_index].source_key.clone());
                }
                continue;
            };
            let statement = if new_ids[row_index] {
                &mut new_rows
            } else {
                &mut existing
            };
            statement.rows.push(row_index);
            statement.keys.push(pg::value::to_text(target_key));
            statement
                .source_xids
                .push(rows[row_index].source_xid.to_string());
            for (texts, value) in statement.columns.iter_mut().zip(values) {
                texts.push(value);
            }
        }
        self.stats.conflict_orphans(orphans);
        self.record_waiting(target, source, entity.name(), &waiting)
            .await?;
        if existing.rows.is_empty() && new_rows.rows.is_empty() {
            return Ok(());
        }

        let shape = Shape::new(
            entity,
            self.to,
            &self.column_type(entity, self.to, entity.key_column(self.to))?,
            specs,
            parents,
        );
        let incoming = match (kind, self.delete_rule == conflict::DeleteRule::Replay) {
            (_, true) => Incoming::Replay,
            (RunKind::Read, false) => Incoming::Read,
            _ => Incoming::Change,
        };
        if !existing.rows.is_empty() {
            let sql = match (kind, incoming) {
                (RunKind::Upsert | RunKind::Read, Incoming::Replay) => shape.replay_upsert_sql(),
                (RunKind::Upsert, _) => shape.upsert_sql(),
                (RunKind::Read, _) => shape.read_upsert_sql(),
                (_, Incoming::Replay) => shape.replay_update_sql(),
                _ => shape.update_sql(),
            };
            let crossed: Vec<(String, Value)> = existing
                .rows
                .iter()
                .zip(&existing.keys)
                .filter(|(i, _)| crossed_before[**i])
                .filter_map(|(i, key)| Some((key.clone()?, rows[*i].source_key.clone())))
                .collect();
            // Rows given a new id just now need no lock: see `lock_rows`.
            let lock: Vec<Box<dyn ToSql + Sync + Send>> = vec![
                Box::new(entity.name().to_owned()),
                Box::new(existing.keys.clone()),
            ];
            let table = entity.table(self.to);
            self.send_prepared(
                target,
                source,
                lock_rows_sql(table, &self.column_type(entity, self.to, &table.key)?),
                lock,
                "lock rows",
                Then::Nothing,
            )
            .await?;
            self.send_rows(target, source, index, entity, sql, existing, crossed, rows)
                .await?;
        }
        if !new_rows.rows.is_empty() {
            // Rows given a new id just now had no version here, and none
            // came back.
            let sql = shape.insert_new_sql(incoming);
            self.send_rows(
                target,
                source,
                index,
                entity,
                sql,
                new_rows,
                Vec::new(),
                rows,
            )
            .await?;
        }
        Ok(())
    }

    /// Sends one statement of `write_rows` (`sql`, one of `Shape`'s upserts
    /// or updates) for `statement`'s rows.
    #[allow(clippy::too_many_arguments)]
    async fn send_rows(
        &mut self,
        target: &Client,
        source: &Client,
        index: usize,
        entity: &Entity,
        sql: String,
        statement: Statement,
        crossed: Vec<(String, Value)>,
        pending: &[PendingRow],
    ) -> Result<()> {
        let in_order = source_keys(&statement, pending);
        let Statement {
            rows,
            keys,
            source_xids,
            columns,
        } = statement;
        let mut clocks = Clocks::default();
        for (row, key) in rows.iter().zip(&keys) {
            if let Some(key) = key {
                clocks.insert(key, pending[*row].clock);
            }
        }
        let mut params: Vec<Box<dyn ToSql + Sync + Send>> = Vec::with_capacity(columns.len() + 5);
        let texts =
            |column: &[Option<String>]| text_array_bytes(column.iter().map(Option::as_deref));
        let bytes = texts(&keys)
            + columns.iter().map(|column| texts(column)).sum::<usize>()
            + text_array_bytes(source_xids.iter().map(|xid| Some(xid.as_str())));
        params.push(Box::new(Presized { value: keys, bytes }));
        for texts in columns {
            params.push(Box::new(texts));
        }
        params.push(Box::new(self.origin.clone()));
        params.push(Box::new(self.tie_wins));
        params.push(Box::new(source_xids));
        params.push(Box::new(clocks));
        let then = Then::Written(Written {
            entity: index,
            attempted: rows.len() as u64,
            crossed,
            source_keys: in_order,
            transaction: self.pipeline.transactions,
        });
        self.send_prepared(
            target,
            source,
            sql,
            params,
            format!("write {}", entity.name()),
            then,
        )
        .await
    }

    /// Each row's column values as text, references and lookups resolved;
    /// `None` for a row that cannot be written (a reference to a row that
    /// does not exist on this side).
    async fn resolve_row_values(
        &mut self,
        target: &Client,
        source: &Client,
        entity: &Entity,
        rows: &[PendingRow],
        columns: &[String],
        mut plain: Vec<Vec<Option<String>>>,
    ) -> Result<Vec<Option<Vec<Option<String>>>>> {
        // Resolve references entity by entity, and lookups, in bulk.
        let mut references: HashMap<String, Vec<Value>> = HashMap::new();
        let mut lookups_by_key: HashMap<usize, Vec<Value>> = HashMap::new();
        let mut lookups_by_value: HashMap<usize, Vec<Value>> = HashMap::new();
        for row in rows {
            for (_, value) in row.row.iter() {
                match value {
                    TargetValue::Reference { entity, id } if *id != Value::Null => {
                        references
                            .entry(entity.clone())
                            .or_default()
                            .push(id.clone());
                    }
                    TargetValue::LookupByKey { field, key } if *key != Value::Null => {
                        lookups_by_key.entry(*field).or_default().push(key.clone());
                    }
                    TargetValue::LookupByValue { field, value } if *value != Value::Null => {
                        lookups_by_value
                            .entry(*field)
                            .or_default()
                            .push(value.clone());
                    }
                    _ => {}
                }
            }
        }
        let mut reference_ids: HashMap<(String, String), Option<Value>> = HashMap::new();
        for (parent, ids) in references {
            let Some(parent_index) = self
                .mapping
                .entities()
                .iter()
                .position(|e| e.name() == parent)
            else {
                continue;
            };
            let parent_entity = self.mapping.entities()[parent_index].clone();
            let refs: Vec<&Value> = ids.iter().collect();
            let resolved = self
                .resolve_keys(target, source, parent_index, &parent_entity, &refs, false)
                .await?;
            for (id, target_id) in ids.iter().zip(resolved) {
                reference_ids.insert(
                    (parent.clone(), pg::value::to_text(id).unwrap_or_default()),
                    target_id,
                );
            }
        }
        for (field, keys) in lookups_by_key {
            self.lookup_values(source, entity, field, &keys).await?;
        }
        for (field, values) in lookups_by_value {
            self.lookup_keys(target, entity, field, &values).await?;
        }

        let mut out = Vec::with_capacity(rows.len());
        'rows: for (row, plain) in rows.iter().zip(plain.iter_mut()) {
            let mut values = Vec::with_capacity(columns.len());
            for (column, plain) in columns.iter().zip(plain.iter_mut()) {
                let text = match row.row.get(column) {
                    None | Some(TargetValue::Unchanged) => None,
                    Some(TargetValue::Value(_)) | Some(TargetValue::KeepExistingOr(_)) => {
                        plain.take()
                    }
                    Some(TargetValue::Reference { entity: parent, id }) => {
                        if *id == Value::Null {
                            None
                        } else {
                            let key = (parent.clone(), pg::value::to_text(id).unwrap_or_default());
                            match reference_ids.get(&key).cloned().flatten() {
                                Some(target_id) => pg::value::to_text(&target_id),
                                None => {
                                    out.push(None);
                                    continue 'rows;
                                }
                            }
                        }
                    }
                    Some(TargetValue::LookupByKey { field, key }) => {
                        if *key == Value::Null {
                            None
                        } else {
                            let k = (
                                self.entity_index(entity),
                                *field,
                                pg::value::to_text(key).unwrap_or_default(),
                            );
                            self.lookups.get(&k).cloned().flatten()
                        }
                    }
                    Some(TargetValue::LookupByValue { field, value }) => {
                        if *value == Value::Null {
                            None
                        } else {
                            let k = (
                                self.entity_index(entity),
                                usize::MAX - *field,
                                pg::value::to_text(value).unwrap_or_default(),
                            );
                            self.lookups.get(&k).cloned().flatten()
                        }
                    }
                };
                values.push(text);
            }
            out.push(Some(values));
        }
        Ok(out)
    }
}

/// The row locks of [`lock_rows`] on `table`, whose key has type
/// `key_type`: `$1` the entity, `$2` the keys (text). The advisory locks
/// first, then the rows that exist, each in key order.
pub(super) fn lock_rows_sql(table: &TableRef, key_type: &str) -> String {
    let key = pg::ident::quote(&table.key);
    let table = quote_table(&table.schema, &table.table);
    format!(
        "WITH keys AS (SELECT DISTINCT k FROM unnest($2::text[]) AS k WHERE k IS NOT NULL), \
         advisory AS (SELECT pg_catalog.pg_advisory_xact_lock(hashtextextended($1 || ':' || k, 0)) \
                      FROM (SELECT k FROM keys ORDER BY k) AS ordered), \
         locked AS (SELECT r.one FROM (SELECT k::{key_type} AS id FROM keys ORDER BY 1) AS x \
                    CROSS JOIN LATERAL (SELECT 1 AS one FROM {table} t WHERE t.{key} = x.id FOR UPDATE) AS r) \
         SELECT (SELECT count(*) FROM advisory), (SELECT count(*) FROM locked)"
    )
}

/// Takes a transaction-level advisory lock per row (by entity and key), in
/// key order, and the lock of each row that exists, in a statement of its
/// own before the statement that decides.
///
/// Two writers of one row decide from their own statement snapshot: an
/// upsert checking for a tombstone and a re-asserted delete checking for the
/// row could each miss the other's uncommitted write and both commit (write
/// skew). With the lock taken first, the later writer waits for the earlier
/// one's commit and its deciding statement, which starts after the lock is
/// granted, sees it.
///
/// The row lock does the same against the target's applications: a
/// deciding statement that had to wait for an application's update of the
/// row would otherwise compare against the row clock its own snapshot holds,
/// from before that update, and could delete or overwrite a newer version.
/// Waiting here instead, the deciding statement starts after the
/// application committed and sees its clock.
///
/// Rows that [`Writer::link_or_allocate`] gave a new id in the same run are
/// not locked (a measurable share of the target's time in `scripts/bench
/// apply`): no other writer can know that id before this transaction
/// commits. A legacy id comes from the sequence; a derived platform id is
/// only ever the one row's, and should another row hold it already (the
/// pair gave way to a row with the same natural key, see `Writer::unpair`),
/// the `id_map` insert sent before the write fails on its unique index and
/// the write never runs.
pub(super) async fn lock_rows(
    client: &Client,
    side: &'static str,
    entity: &str,
    sql: &str,
    keys: &[Option<String>],
) -> Result<()> {
    client
        .execute(sql, &[&entity, &keys])
        .await
        .map_err(|e| ApplyError::postgres(side, "lock rows", e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_presized_parameter_is_encoded_as_its_value_and_text_arrays_are_sized_exactly() {
        use tokio_postgres::types::Type;
        let texts = vec![
            Some("a".to_owned()),
            None,
            Some("ünïcode".to_owned()),
            Some(String::new()),
        ];
        let mut plain = bytes::BytesMut::new();
        texts
            .to_sql_checked(&Type::TEXT_ARRAY, &mut plain)
            .expect("encodes");
        let mut presized = bytes::BytesMut::new();
        let wrapped = Presized {
            value: texts.clone(),
            bytes: 4096,
        };
        wrapped
            .to_sql_checked(&Type::TEXT_ARRAY, &mut presized)
            .expect("encodes");
        assert_eq!(presized, plain);
        assert!(presized.capacity() >= 4096, "room reserved for the rest");
        assert_eq!(
            text_array_bytes(texts.iter().map(Option::as_deref)),
            plain.len()
        );
        assert!(!<Presized<Vec<Option<String>>> as ToSql>::accepts(
            &Type::INT8_ARRAY
        ));
    }
}
