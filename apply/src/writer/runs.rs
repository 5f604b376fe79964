//! Events staged into runs: consecutive changes of one entity with the same
//! operation and shape, which become one statement (see `rows`). A run ends
//! when the next event differs, would touch a row already in it, or the run
//! is full (`statement_max_rows`); so source order is kept wherever it
//! matters.

use std::collections::HashSet;
use std::sync::Arc;

use schemas::event::{ChangeEvent, Op, Value};
use tokio_postgres::Client;

use super::{Staged, Writer};
use crate::error::{ApplyError, Result};
use crate::footprint::{self, Touch};
use crate::mapping::{to_target, Row, TargetRow, TargetValue};

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum RunKind {
    Upsert,
    /// Upsert of rows a snapshot read (`READ`): loses ties and to tombstones.
    Read,
    /// Update only, these target columns unchanged at the source.
    Update(Vec<String>),
    Delete,
}

pub(super) struct PendingRow {
    pub(super) source_key: Value,
    pub(super) row: TargetRow,
    pub(super) delete_at: i64,
    /// The source transaction's id.
    pub(super) source_xid: u32,
    /// The version's row clock, when its source stamped one.
    pub(super) clock: Option<schemas::event::Clock>,
}

pub(super) struct Run {
    pub(super) entity: usize,
    pub(super) kind: RunKind,
    pub(super) rows: Vec<PendingRow>,
    pub(super) keys: HashSet<String>,
    /// Every row is an insert or a snapshot's read: rows that have most
    /// likely not crossed yet (see `Writer::resolve_fresh_keys`).
    pub(super) inserts: bool,
}

impl Writer {
    /// Stages one event; may flush the previous run first.
    pub async fn stage(
        &mut self,
        target: &Client,
        source: &Client,
        event: &ChangeEvent,
    ) -> Result<Staged> {
        self.touched = Touch::default();
        // A handle of its own, so that the entity can be borrowed across
        // `flush` (which needs `self` mutably) without copying it per event.
        let mapping = Arc::clone(&self.mapping);
        let Some((index, entity)) = mapping.entities().iter().enumerate().find(|(_, e)| {
            let t = e.table(self.from);
            t.schema == event.schema && t.table == event.table
        }) else {
            return Ok(Staged::Unmapped);
        };
        let key_column = entity.key_column(self.from);
        let source_key = event
            .key
            .iter()
            .find(|c| c.name == key_column)
            .map(|c| c.value.clone())
            .ok_or_else(|| {
                ApplyError::Rejected(format!(
                    "{}.{}: the event has no key column {key_column}",
                    event.schema, event.table
                ))
            })?;
        let (kind, row, delete_at) = match event.op {
            Op::Insert | Op::Update | Op::Read => {
                let after = event.after.as_deref().ok_or_else(|| {
                    ApplyError::Rejected(format!("{}.{}: an upsert without a row", event.schema, event.table))
                })?;
                let row = to_target(entity, self.from, &Row::from_columns(after))
                    .map_err(|e| ApplyError::Rejected(e.to_string()))?;
                let unchanged: Vec<String> = row
                    .iter()
                    .filter(|(_, v)| matches!(v, TargetValue::Unchanged))
                    .map(|(c, _)| c.to_owned())
                    .collect();
                let kind = if !unchanged.is_empty() {
                    RunKind::Update(unchanged)
                } else if event.op == Op::Read {
                    RunKind::Read
                } else {
                    RunKind::Upsert
                };
                (kind, row, 0)
            }
            Op::Delete => (
                RunKind::Delete,
                TargetRow::default(),
                event.transaction.commit_time_micros,
            ),
            Op::Truncate => {
                return Err(ApplyError::Rejected(format!(
                    "truncate of {}.{} is not mirrored: empty the other side's table deliberately if that is intended",
                    event.schema, event.table
                )))
            }
        };
        let key_text = pg::value::to_text(&source_key).unwrap_or_default();
        let continues = self.run.as_ref().is_some_and(|run| {
            run.entity == index
                && run.kind == kind
                && run.rows.len() < self.max_rows
                && !run.keys.contains(&key_text)
        });
        if !continues {
            self.flush(target, source).await?;
            self.run = Some(Run {
                entity: index,
                kind,
                rows: Vec::new(),
                keys: HashSet::new(),
                inserts: true,
            });
        }
        self.touched = footprint::touch(entity, self.to, event.op, &key_text, &row);
        self.footprint.add(&self.touched);
        if let Some(run) = self.run.as_mut() {
            run.inserts &= matches!(event.op, Op::Insert | Op::Read);
            run.keys.insert(key_text);
            run.rows.push(PendingRow {
                source_key,
                row,
                delete_at,
                source_xid: event.transaction.xid,
                clock: event.clock,
            });
        }
        Ok(Staged::Staged)
    }
}
