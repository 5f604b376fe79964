//! The children of a row that came back. A row deleted here can come back
//! (the source kept it: its change was newer than the delete), and its
//! children, deleted with it here or skipped while it was missing, would
//! not: they are read again from the source and written as a snapshot's
//! reads are (see [`Writer::resync_children`]).

use schemas::event::Value;
use tokio_postgres::Client;
use tracing::{debug, warn};

use super::rows::Writing;
use super::runs::{PendingRow, RunKind};
use super::Writer;
use crate::error::{ApplyError, Result};
use crate::mapping::{to_target, Entity, Field, Row};
use pg::ident::{quote, quote_table};

impl Writer {
    /// A row deleted here came back: the source kept it (its change was newer
    /// than the delete). Its children on the source were never deleted there,
    /// but here they were cascade-deleted with it or skipped as orphans while
    /// it was missing, and no event will bring them again. So they are read
    /// from the source, as they are now, and written as a snapshot's reads
    /// are (missing rows inserted, existing ones replaced only by a strictly
    /// newer row, a tombstone only by a row strictly newer than the delete);
    /// their own children follow the same
    /// way when they come back too. Later events of those rows repeat what
    /// was read or are newer, and apply as usual.
    pub(super) fn resync_children<'a>(
        &'a mut self,
        target: &'a Client,
        source: &'a Client,
        parent: &'a Entity,
        parent_keys: Vec<Value>,
    ) -> futures::future::BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let key_type = match parent_keys.first() {
                Some(Value::Uuid(_)) => "uuid",
                _ => "int8",
            };
            let texts: Vec<String> = parent_keys.iter().filter_map(pg::value::to_text).collect();
            let from = self.from;
            let children: Vec<(usize, Entity, String)> = self
                .mapping
                .entities()
                .iter()
                .enumerate()
                .flat_map(|(index, child)| {
                    child
                        .fields()
                        .iter()
                        .filter_map(move |def| match def.field() {
                            Field::Reference { entity, .. } if entity == parent.name() => def
                                .field()
                                .columns(from)
                                .first()
                                .map(|column| (index, child.clone(), (*column).to_owned())),
                            _ => None,
                        })
                })
                .collect();
            for (index, child, column) in children {
                let rows = self
                    .read_source_rows(source, &child, &column, key_type, &texts)
                    .await?;
                debug!(
                    parent = parent.name(),
                    child = child.name(),
                    rows = rows.len(),
                    "children of rows that came back read from the source"
                );
                // Written as reads, not changes: what was read is the
                // source's current row, which the other direction may be
                // changing on this side at this very moment (a cascade of the
                // delete that took the parent). A read loses every tie; only
                // a strictly newer row replaces what is here or a tombstone
                // (a child changed at the source after the delete here:
                // that delete loses in the source too).
                self.write_source_reads(target, source, index, &child, &rows)
                    .await?;
            }
            Ok(())
        })
    }

    /// Writes rows read back from the source as reads, in chunks of a
    /// run's size. Most crossed before: their pairs are read first, as for
    /// updates, and those without one get one.
    pub(super) async fn write_source_reads(
        &mut self,
        target: &Client,
        source: &Client,
        index: usize,
        entity: &Entity,
        rows: &[PendingRow],
    ) -> Result<()> {
        for chunk in rows.chunks(self.max_rows.max(1)) {
            let writing = Writing {
                kind: &RunKind::Read,
                allocate: true,
                inserts: false,
                rendered: None,
            };
            self.write_rows(target, source, index, entity, chunk, writing)
                .await?;
        }
        Ok(())
    }

    /// The rows of `child`'s source table whose `column` is one of `keys`,
    /// as pending upserts (values parsed from their text form by the
    /// source's type oids, as capture does).
    pub(super) async fn read_source_rows(
        &self,
        source: &Client,
        child: &Entity,
        column: &str,
        key_type: &str,
        keys: &[String],
    ) -> Result<Vec<PendingRow>> {
        let table = child.table(self.from);
        let qualified = quote_table(&table.schema, &table.table);
        let key_column = child.key_column(self.from);
        let side = self.from.as_str();
        let probe = source
            .prepare(&format!("SELECT * FROM {qualified} LIMIT 0"))
            .await
            .map_err(|e| ApplyError::postgres(side, "describe a child table", e))?;
        let described: Vec<(String, String, u32)> = probe
            .columns()
            .iter()
            .map(|c| {
                (
                    c.name().to_owned(),
                    c.type_().name().to_owned(),
                    c.type_().oid(),
                )
            })
            .collect();
        let select: Vec<String> = described
            .iter()
            .map(|(name, _, _)| format!("{}::text", quote(name)))
            .collect();
        // Each row's clock comes with it: the version read is written with
        // the clock it has at its source, like any change.
        let sql = format!(
            "SELECT t.xmin::text, rc.seconds, rc.tick, {} \
             FROM {qualified} AS t LEFT JOIN syncbridge.row_clock rc \
               ON rc.relation = $2 AND rc.row_key = t.{}::text AND NOT rc.deleted \
             WHERE t.{} = ANY($1::text[]::{key_type}[])",
            select
                .iter()
                .map(|c| format!("t.{c}"))
                .collect::<Vec<_>>()
                .join(", "),
            quote(key_column),
            quote(column),
        );
        let found = source
            .query(
                &sql,
                &[&keys, &pg::clock::relation(&table.schema, &table.table)],
            )
            .await
            .map_err(|e| ApplyError::postgres(side, "read children from the source", e))?;
        let mut pending = Vec::with_capacity(found.len());
        for row in found {
            let xmin: String = row.get(0);
            let clock = match (row.get::<_, Option<i64>>(1), row.get::<_, Option<i64>>(2)) {
                (Some(seconds), Some(tick)) => Some(schemas::event::Clock { seconds, tick }),
                _ => None,
            };
            let mut columns = Vec::with_capacity(described.len());
            for (position, (name, type_name, oid)) in described.iter().enumerate() {
                let text: Option<String> = row.get(position + 3);
                let value = match text {
                    None => Value::Null,
                    Some(text) => pg::value::parse_text(*oid, &text)
                        .map_err(|e| ApplyError::Rejected(format!("{qualified}.{name}: {e}")))?,
                };
                columns.push(schemas::event::Column {
                    name: name.clone(),
                    type_name: type_name.clone(),
                    type_oid: *oid,
                    value,
                });
            }
            let Some(source_key) = columns
                .iter()
                .find(|c| c.name == key_column)
                .map(|c| c.value.clone())
            else {
                continue;
            };
            let converted = match to_target(child, self.from, &Row::from_columns(&columns)) {
                Ok(converted) => converted,
                Err(error) => {
                    warn!(entity = child.name(), %error, "a child row read back does not convert; left out");
                    continue;
                }
            };
            pending.push(PendingRow {
                source_key,
                row: converted,
                delete_at: 0,
                source_xid: xmin.parse().unwrap_or_default(),
                clock,
            });
        }
        Ok(pending)
    }
}
