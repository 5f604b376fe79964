//! From pgoutput messages to change events.
//!
//! ```text
//!  Begin ─┬─ Relation/Type (schema, kept in a cache) ─┬─ Commit
//!         ├─ Message (the bridge's marker: flag)       │
//!         └─ Insert/Update/Delete/Truncate ──► event ──┘──► last event flagged
//! ```
//!
//! The [`Assembler`] holds no transaction in memory: each row change becomes
//! one [`ChangeEvent`] as soon as it is decoded. It keeps back exactly one
//! event, so that when the Commit arrives the transaction's final event can
//! be marked `last` and carry the event count. Memory is therefore one event
//! plus the relation cache, whatever the transaction's size.
//!
//! Relation messages are honoured whenever they arrive: Postgres sends a new
//! one before the first change after a schema change (a column added or
//! dropped), so events always carry the shape the row had when it was written.
//! See <https://www.postgresql.org/docs/15/protocol-logicalrep-message-formats.html>.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use schemas::event::{CaptureMode, ChangeEvent, Clock, Column, Op, Transaction, Value};
use tracing::warn;

use crate::error::{CaptureError, Result};
use pg::pgoutput::{Message, OldTuple, Relation, Tuple, TupleValue};
use pg::value::{self, TypeRegistry};
use pg::Lsn;

/// A column as the latest Relation message described it.
#[derive(Debug, Clone)]
struct RelationColumn {
    name: String,
    type_oid: u32,
    type_name: String,
    key: bool,
}

#[derive(Debug, Clone)]
struct RelationInfo {
    schema: String,
    table: String,
    columns: Arc<[RelationColumn]>,
}

/// The open transaction.
#[derive(Debug, Clone)]
struct OpenTransaction {
    xid: u32,
    commit_lsn: Lsn,
    commit_time_micros: i64,
    next_position: u64,
    marker: Option<String>,
    saw_message: bool,
    origin: Option<String>,
}

/// What the pipeline must do next, in order.
#[derive(Debug)]
pub enum Step {
    /// Produce this event. `then_safe` is set on a transaction's last event:
    /// once it (and everything before it) is in Kafka, the slot may be
    /// acknowledged up to that position.
    Produce {
        event: Box<ChangeEvent>,
        then_safe: Option<Lsn>,
    },
    /// A transaction without events ended: the position is safe once
    /// everything produced before is in Kafka.
    Safe(Lsn),
}

/// Turns one source's pgoutput stream into change events.
pub struct Assembler {
    source: String,
    database: String,
    marker_prefix: String,
    relations: HashMap<u32, RelationInfo>,
    types: TypeRegistry,
    open: Option<OpenTransaction>,
    held: Option<ChangeEvent>,
    /// The clock the row clock trigger stamped just now, for the row change
    /// that follows it (see [`pg::clock`]).
    stamped: Option<Stamped>,
    ready: VecDeque<Step>,
    warned: HashSet<(u32, usize)>,
}

/// A row clock read from the stream: the table (`schema.table`) and key
/// (text) it belongs to, and the clock.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamped {
    relation: String,
    key: String,
    clock: Clock,
}

impl Assembler {
    pub fn new(source: &str, database: &str, marker_prefix: &str) -> Self {
        Assembler {
            source: source.to_owned(),
            database: database.to_owned(),
            marker_prefix: marker_prefix.to_owned(),
            relations: HashMap::new(),
            types: TypeRegistry::default(),
            open: None,
            held: None,
            stamped: None,
            ready: VecDeque::new(),
            warned: HashSet::new(),
        }
    }

    /// The next thing to do, in order; call until it returns None after
    /// feeding each message.
    pub fn next_step(&mut self) -> Option<Step> {
        self.ready.pop_front()
    }

    /// Whether a transaction is open (between Begin and Commit).
    pub fn in_transaction(&self) -> bool {
        self.open.is_some()
    }

    /// A transaction begins.
    pub fn begin(&mut self, final_lsn: Lsn, xid: u32, commit_time_micros: i64) -> Result<()> {
        if self.open.is_some() {
            return Err(CaptureError::Protocol(format!(
                "begin of transaction {xid} inside an open transaction"
            )));
        }
        self.stamped = None;
        self.open = Some(OpenTransaction {
            xid,
            commit_lsn: final_lsn,
            commit_time_micros,
            next_position: 0,
            marker: None,
            saw_message: false,
            origin: None,
        });
        Ok(())
    }

    /// A logical message (`pg_logical_emit_message`). The transaction is an
    /// echo when its first logical message has the bridge's prefix.
    pub fn message(&mut self, transactional: bool, prefix: &str, content: &[u8]) {
        if !transactional {
            return;
        }
        if let Some(open) = self.open.as_mut() {
            if !open.saw_message {
                open.saw_message = true;
                if prefix == self.marker_prefix {
                    open.marker = Some(String::from_utf8_lossy(content).into_owned());
                }
            }
        }
    }

    /// The transaction commits: its last event is released, flagged, or, for
    /// a transaction without events, the position that is now safe.
    pub fn commit(&mut self, end_lsn: Lsn) -> Result<()> {
        let open = self.open.take().ok_or_else(|| {
            CaptureError::Protocol("commit without an open transaction".to_owned())
        })?;
        self.stamped = None;
        let step = match self.held.take() {
            Some(mut event) => {
                event.transaction.last = true;
                event.transaction.event_count = Some(open.next_position);
                Step::Produce {
                    event: Box::new(event),
                    then_safe: Some(end_lsn),
                }
            }
            None => Step::Safe(end_lsn),
        };
        self.ready.push_back(step);
        Ok(())
    }

    /// Any pgoutput message, decoded.
    pub fn apply(&mut self, message: Message, captured_at_micros: i64) -> Result<()> {
        let (relation_oid, op, key_from_old, before, after) = match message {
            Message::Relation(relation) => {
                self.remember(relation, None);
                return Ok(());
            }
            Message::Type {
                oid,
                namespace,
                name,
            } => {
                self.types.record(oid, &namespace, &name);
                return Ok(());
            }
            Message::Origin { name, .. } => {
                if let Some(open) = self.open.as_mut() {
                    open.origin = Some(name);
                }
                return Ok(());
            }
            Message::Begin {
                final_lsn,
                xid,
                commit_time_micros,
            } => {
                self.begin(Lsn(final_lsn), xid, commit_time_micros)?;
                return Ok(());
            }
            Message::Commit { end_lsn, .. } => return self.commit(Lsn(end_lsn)),
            Message::Message {
                transactional,
                prefix,
                content,
                ..
            } => {
                self.message(transactional, &prefix, &content);
                return Ok(());
            }
            Message::Insert { relation_oid, new } => {
                (relation_oid, Op::Insert, false, None, Some(new))
            }
            Message::Update {
                relation_oid,
                old,
                new,
            } => (relation_oid, Op::Update, false, old, Some(new)),
            Message::Delete { relation_oid, old } => {
                (relation_oid, Op::Delete, true, Some(old), None)
            }
            Message::Truncate { relation_oids, .. } => {
                self.stamped = None;
                for oid in relation_oids {
                    let relation = self.relation(oid)?.clone();
                    let event = self.event(
                        &relation,
                        Op::Truncate,
                        Vec::new(),
                        None,
                        None,
                        captured_at_micros,
                    )?;
                    self.hold(event);
                }
                return Ok(());
            }
        };

        let relation = self.relation(relation_oid)?.clone();
        if relation.schema == "syncbridge" && relation.table == "row_clock" {
            // A clock, not a change: kept for the change that follows it.
            self.stamped = match after {
                Some(new) => {
                    let row = self.row(relation_oid, &relation, new)?;
                    stamped(&row)
                }
                None => None,
            };
            return Ok(());
        }
        let stamped = self.stamped.take();
        let before = match before {
            Some(old) => Some(self.old_row(relation_oid, &relation, old)?),
            None => None,
        };
        let after = match after {
            Some(new) => Some(self.row(relation_oid, &relation, new)?),
            None => None,
        };
        let key_source = if key_from_old {
            before.as_ref()
        } else {
            after.as_ref()
        };
        let key = key_source
            .map(|row| {
                row.iter()
                    .zip(relation.columns.iter())
                    .filter(|(_, meta)| meta.key)
                    .map(|(column, _)| column.clone())
                    .collect()
            })
            .unwrap_or_default();
        let mut event = self.event(&relation, op, key, before, after, captured_at_micros)?;
        if let Some(stamped) = stamped {
            let key = match event.key.as_slice() {
                [column] => pg::value::to_text(&column.value),
                _ => None,
            };
            if stamped.relation == format!("{}.{}", relation.schema, relation.table)
                && key.as_deref() == Some(stamped.key.as_str())
            {
                event.clock = Some(stamped.clock);
            }
        }
        self.hold(event);
        Ok(())
    }

    /// Keeps `event` back and releases the one held before it, if any.
    fn hold(&mut self, event: ChangeEvent) {
        if let Some(previous) = self.held.replace(event) {
            self.ready.push_back(Step::Produce {
                event: Box::new(previous),
                then_safe: None,
            });
        }
    }

    fn event(
        &mut self,
        relation: &RelationInfo,
        op: Op,
        key: Vec<Column>,
        before: Option<Vec<Column>>,
        after: Option<Vec<Column>>,
        captured_at_micros: i64,
    ) -> Result<ChangeEvent> {
        let open = self.open.as_mut().ok_or_else(|| {
            CaptureError::Protocol(format!(
                "row change on {}.{} outside a transaction",
                relation.schema, relation.table
            ))
        })?;
        let position = open.next_position;
        open.next_position += 1;
        Ok(ChangeEvent {
            source: self.source.clone(),
            database: self.database.clone(),
            schema: relation.schema.clone(),
            table: relation.table.clone(),
            op,
            key,
            before,
            after,
            transaction: Transaction {
                xid: open.xid,
                commit_lsn: open.commit_lsn.0,
                commit_time_micros: open.commit_time_micros,
                position,
                last: false,
                event_count: None,
            },
            marker: open.marker.clone(),
            origin: open.origin.clone(),
            mode: CaptureMode::Streaming,
            captured_at_micros,
            clock: None,
        })
    }

    /// Remembers a relation. With `REPLICA IDENTITY FULL` Postgres flags
    /// every column as part of the key, so the caller passes the primary key
    /// columns it looked up (`primary_key`), which then define the event key.
    pub fn remember(&mut self, relation: Relation, primary_key: Option<&[String]>) {
        let columns: Vec<RelationColumn> = relation
            .columns
            .into_iter()
            .map(|column| RelationColumn {
                type_name: self.types.name(column.type_oid),
                key: match primary_key {
                    Some(names) => names.contains(&column.name),
                    None => column.key,
                },
                name: column.name,
                type_oid: column.type_oid,
            })
            .collect();
        self.relations.insert(
            relation.oid,
            RelationInfo {
                schema: relation.namespace,
                table: relation.name,
                columns: columns.into(),
            },
        );
    }

    fn relation(&self, oid: u32) -> Result<&RelationInfo> {
        self.relations.get(&oid).ok_or_else(|| {
            CaptureError::Protocol(format!(
                "change for relation {oid} before its Relation message"
            ))
        })
    }

    fn old_row(&mut self, oid: u32, relation: &RelationInfo, old: OldTuple) -> Result<Vec<Column>> {
        let key_only = matches!(old.kind, pg::pgoutput::OldTupleKind::Key);
        let row = self.row(oid, relation, old.tuple)?;
        if !key_only {
            return Ok(row);
        }
        // A key-only old tuple sends NULL for every other column: keep the key.
        Ok(row
            .into_iter()
            .zip(relation.columns.iter())
            .filter(|(_, meta)| meta.key)
            .map(|(column, _)| column)
            .collect())
    }

    fn row(&mut self, oid: u32, relation: &RelationInfo, tuple: Tuple) -> Result<Vec<Column>> {
        let values = tuple.0;
        if values.len() != relation.columns.len() {
            return Err(CaptureError::Protocol(format!(
                "tuple of {}.{} has {} columns, its Relation message described {}",
                relation.schema,
                relation.table,
                values.len(),
                relation.columns.len()
            )));
        }
        let mut row = Vec::with_capacity(values.len());
        for (index, (value, meta)) in values.into_iter().zip(relation.columns.iter()).enumerate() {
            let value = match value {
                TupleValue::Null => Value::Null,
                TupleValue::UnchangedToast => Value::Unchanged,
                TupleValue::Binary(bytes) => Value::Bytes(bytes.to_vec()),
                TupleValue::Text(bytes) => self.typed(oid, index, relation, meta, &bytes),
            };
            row.push(Column {
                name: meta.name.clone(),
                type_name: meta.type_name.clone(),
                type_oid: meta.type_oid,
                value,
            });
        }
        Ok(row)
    }

    /// Parses a text value; a value that does not parse as its type travels
    /// as text (with a warning naming the column, never the value).
    fn typed(
        &mut self,
        oid: u32,
        index: usize,
        relation: &RelationInfo,
        meta: &RelationColumn,
        bytes: &[u8],
    ) -> Value {
        let text = String::from_utf8_lossy(bytes);
        match value::parse_text(meta.type_oid, &text) {
            Ok(value) => value,
            Err(error) => {
                if self.warned.insert((oid, index)) {
                    warn!(
                        table = %format!("{}.{}", relation.schema, relation.table),
                        column = %meta.name,
                        pg_type = %meta.type_name,
                        %error,
                        "value did not parse as its type; sending it as text"
                    );
                }
                Value::Text(text.into_owned())
            }
        }
    }
}

/// The clock in a `syncbridge.row_clock` row; None when a column is
/// missing or of another type (a table of that name that is not the clock).
fn stamped(row: &[Column]) -> Option<Stamped> {
    let find = |name: &str| row.iter().find(|c| c.name == name).map(|c| &c.value);
    match (
        find("relation")?,
        find("row_key")?,
        find("seconds")?,
        find("tick")?,
    ) {
        (Value::Text(relation), Value::Text(key), Value::Int(seconds), Value::Int(tick)) => {
            Some(Stamped {
                relation: relation.clone(),
                key: key.clone(),
                clock: Clock {
                    seconds: *seconds,
                    tick: *tick,
                },
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pg::pgoutput::{RelationColumn, ReplicaIdentity};

    const CLOCK: u32 = 1;
    const USERS: u32 = 2;

    fn column(name: &str, type_oid: u32, key: bool) -> RelationColumn {
        RelationColumn {
            key,
            name: name.to_owned(),
            type_oid,
            type_modifier: -1,
        }
    }

    fn text(value: &str) -> TupleValue {
        TupleValue::Text(value.as_bytes().to_vec().into())
    }

    fn assembler() -> Assembler {
        let mut assembler = Assembler::new("legacy", "db", "syncbridge");
        for (oid, namespace, name, columns) in [
            (
                CLOCK,
                "syncbridge",
                "row_clock",
                vec![
                    column("relation", 25, true),
                    column("row_key", 25, true),
                    column("seconds", 20, false),
                    column("tick", 20, false),
                    column("origin", 25, false),
                    column("deleted", 16, false),
                ],
            ),
            (
                USERS,
                "public",
                "users",
                vec![column("id", 20, true), column("email", 25, false)],
            ),
        ] {
            assembler
                .apply(
                    Message::Relation(Relation {
                        oid,
                        namespace: namespace.to_owned(),
                        name: name.to_owned(),
                        replica_identity: ReplicaIdentity::Default,
                        columns,
                    }),
                    0,
                )
                .expect("a relation is remembered");
        }
        assembler
    }

    fn stamp(relation: &str, key: &str, seconds: &str, tick: &str) -> Message {
        Message::Insert {
            relation_oid: CLOCK,
            new: Tuple(vec![
                text(relation),
                text(key),
                text(seconds),
                text(tick),
                TupleValue::Null,
                text("f"),
            ]),
        }
    }

    fn user(id: &str) -> Message {
        Message::Insert {
            relation_oid: USERS,
            new: Tuple(vec![text(id), text("a@example.com")]),
        }
    }

    fn transaction(assembler: &mut Assembler, messages: Vec<Message>) -> Vec<ChangeEvent> {
        assembler.begin(Lsn(100), 7, 0).expect("begins");
        for message in messages {
            assembler.apply(message, 0).expect("decodes");
        }
        assembler.commit(Lsn(101)).expect("commits");
        let mut events = Vec::new();
        while let Some(step) = assembler.next_step() {
            if let Step::Produce { event, .. } = step {
                events.push(*event);
            }
        }
        events
    }

    #[test]
    fn a_row_change_carries_the_clock_stamped_right_before_it_and_the_clock_is_no_event() {
        let mut assembler = assembler();
        let events = transaction(
            &mut assembler,
            vec![
                stamp("public.users", "1", "1767225605", "2"),
                user("1"),
                user("2"),
            ],
        );
        assert_eq!(events.len(), 2, "the clock row is not an event");
        assert_eq!(
            events[0].clock,
            Some(Clock {
                seconds: 1_767_225_605,
                tick: 2
            })
        );
        assert_eq!(events[1].clock, None, "a clock is used once");
    }

    #[test]
    fn a_clock_of_another_row_or_an_earlier_transaction_is_not_taken() {
        let mut assembler = assembler();
        let events = transaction(
            &mut assembler,
            vec![stamp("public.users", "9", "1", "0"), user("1")],
        );
        assert_eq!(events[0].clock, None, "another key");
        let events = transaction(
            &mut assembler,
            vec![stamp("public.teams", "1", "1", "0"), user("1")],
        );
        assert_eq!(events[0].clock, None, "another table");
        let _ = transaction(&mut assembler, vec![stamp("public.users", "1", "1", "0")]);
        let events = transaction(&mut assembler, vec![user("1")]);
        assert_eq!(
            events[0].clock, None,
            "a clock left by an earlier transaction"
        );
    }
}
