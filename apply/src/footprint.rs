//! What a target transaction touches, so that the two writers of a
//! direction never run dependent source transactions at once.
//!
//! A direction with two writers (`apply.writers = 2`) writes the next batch
//! on one connection while the batch before it commits on the other (see
//! `direction`). The later batch's statements cannot see the earlier one's
//! rows until it commits: a child checked against a parent that is not
//! committed yet would be dropped as an orphan, a natural key matched
//! against a row about to change would be linked wrongly. So before an
//! event's statements are sent, its [`Touch`] is compared with the
//! [`Footprint`] of the batch still committing; on any overlap the writer
//! waits for that commit first.
//!
//! Keys are compared at the source's level, as the events carry them:
//! - the row itself (entity and source key), and every row it refers to;
//! - the natural key's values, as they will be written;
//! - a natural key value an update or delete may free: the old value is not
//!   in the event, so such an event marks its whole entity, and every event
//!   of that entity checks the mark;
//! - a lookup table rows may be created in.
//!
//! Keys are hashes: a collision only makes a writer wait when it need not.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashSet;
use std::hash::{Hash, Hasher};

use schemas::event::{Op, Value};

use crate::mapping::{Entity, Side, TargetRow, TargetValue};

/// What one staged event touches.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Touch {
    /// Keys the event's batch holds until it commits.
    pub record: Vec<u64>,
    /// Keys that must not be held by a batch still committing.
    pub check: Vec<u64>,
}

/// Everything a batch's events touched.
#[derive(Debug, Default, Clone)]
pub struct Footprint {
    keys: HashSet<u64>,
}

impl Footprint {
    pub fn add(&mut self, touch: &Touch) {
        self.keys.extend(touch.record.iter().copied());
    }

    /// Whether `touch` depends on what this footprint's batch wrote.
    pub fn overlaps(&self, touch: &Touch) -> bool {
        touch.check.iter().any(|key| self.keys.contains(key))
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

enum Key<'a> {
    Row(&'a str, &'a str),
    Natural(&'a str, &'a [String]),
    Freed(&'a str),
    Lookup(&'a str, usize),
}

fn hash(key: Key<'_>) -> u64 {
    let mut hasher = DefaultHasher::new();
    match key {
        Key::Row(entity, id) => (0u8, entity, id).hash(&mut hasher),
        Key::Natural(entity, values) => (1u8, entity, values).hash(&mut hasher),
        Key::Freed(entity) => (2u8, entity).hash(&mut hasher),
        Key::Lookup(entity, field) => (3u8, entity, field).hash(&mut hasher),
    }
    hasher.finish()
}

fn text(value: &Value) -> String {
    pg::value::to_text(value).unwrap_or_default()
}

/// What an event of `entity` (`op`, source key `key`, mapped to `row` for
/// the side `to`) touches.
pub fn touch(entity: &Entity, to: Side, op: Op, key: &str, row: &TargetRow) -> Touch {
    let name = entity.name();
    let own = hash(Key::Row(name, key));
    let mut touch = Touch {
        record: vec![own],
        check: vec![own],
    };
    for (_, value) in row.iter() {
        match value {
            TargetValue::Reference { entity: parent, id } if *id != Value::Null => {
                let parent = hash(Key::Row(parent, &text(id)));
                touch.record.push(parent);
                touch.check.push(parent);
            }
            // Lookup rows created on demand: one key per lookup field.
            TargetValue::LookupByValue { field, value } if *value != Value::Null => {
                let lookup = hash(Key::Lookup(name, *field));
                touch.record.push(lookup);
                touch.check.push(lookup);
            }
            _ => {}
        }
    }
    let natural = entity.natural_key_columns(to);
    if natural.is_empty() {
        return touch;
    }
    let freed = hash(Key::Freed(name));
    touch.check.push(freed);
    if op != Op::Insert {
        // May have given up a natural key value the event does not name.
        touch.record.push(freed);
    }
    let values: Option<Vec<String>> = natural
        .iter()
        .map(|column| match row.get(column)? {
            TargetValue::Value(value) | TargetValue::KeepExistingOr(value) => Some(text(value)),
            TargetValue::Reference { entity, id } => Some(format!("{entity}:{}", text(id))),
            _ => None,
        })
        .collect();
    // Not all of it in the event (a delete, an unchanged value): the mark
    // above stands for it.
    if let Some(values) = values {
        let natural = hash(Key::Natural(name, &values));
        touch.record.push(natural);
        touch.check.push(natural);
    }
    touch
}
