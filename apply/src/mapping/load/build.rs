//! One mapping file's sections built from their raw form: sides, conflicts,
//! entities and their fields, every problem collected with its line (the
//! field kinds that take more than columns are in `kinds`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde::de::{self, IntoDeserializer};
use toml::Spanned;

use super::raw::{
    kind_keys, Names, OneOrMany, RawConflicts, RawEntity, RawField, RawSide, RawTableRef, KINDS,
};
use crate::mapping::error::{at_line, MappingError, Source};
use crate::mapping::model::{
    Conflicts, Entity, FieldDef, NaturalKey, Side, SideConfig, TableName, TableRef,
    TimestampPrecision,
};

/// What one file defines, before files are merged.
pub(super) struct FilePart {
    pub(super) file: Arc<str>,
    pub(super) sides: [Option<(SideConfig, usize)>; 2],
    pub(super) conflicts: Option<(Conflicts, usize)>,
    pub(super) entities: Vec<Entity>,
}

pub(super) struct Builder<'a> {
    pub(super) src: Source<'a>,
    pub(super) file: Arc<str>,
    pub(super) errors: Vec<MappingError>,
}

impl Builder<'_> {
    pub(super) fn err(&mut self, offset: usize, context: &str, message: String) {
        let e = self.src.error(offset, context, message);
        self.errors.push(e);
    }

    pub(super) fn line(&self, offset: usize) -> usize {
        self.src.line(offset)
    }

    /// A non-empty string.
    /// One or more non-empty column names.
    pub(super) fn names(
        &mut self,
        context: &str,
        key: &str,
        value: &Spanned<OneOrMany>,
    ) -> Option<Vec<String>> {
        let names = match value.get_ref() {
            OneOrMany::One(name) => vec![name.clone()],
            OneOrMany::Many(names) => names.clone(),
        };
        if names.is_empty() || names.iter().any(|n| n.trim().is_empty()) {
            self.err(
                value.span().start,
                context,
                format!("{key}: must name at least one column, none empty"),
            );
            return None;
        }
        Some(names)
    }

    pub(super) fn name(
        &mut self,
        context: &str,
        key: &str,
        value: &Spanned<String>,
    ) -> Option<String> {
        if value.get_ref().trim().is_empty() {
            self.err(
                value.span().start,
                context,
                format!("{key}: must not be empty"),
            );
            return None;
        }
        Some(value.get_ref().clone())
    }

    pub(super) fn required<'v, T>(
        &mut self,
        context: &str,
        header: usize,
        key: &str,
        value: &'v Option<Spanned<T>>,
    ) -> Option<&'v Spanned<T>> {
        if value.is_none() {
            self.err(header, context, format!("missing key \"{key}\""));
        }
        value.as_ref()
    }

    pub(super) fn qualified(
        &mut self,
        context: &str,
        key: &str,
        value: &Spanned<String>,
    ) -> Option<TableName> {
        match value.get_ref().split_once('.') {
            Some((schema, table))
                if !schema.is_empty() && !table.is_empty() && !table.contains('.') =>
            {
                Some(TableName {
                    schema: schema.to_owned(),
                    table: table.to_owned(),
                })
            }
            _ => {
                self.err(
                    value.span().start,
                    context,
                    format!(
                        "{key}: \"{}\" is not a schema-qualified table name (schema.table)",
                        value.get_ref()
                    ),
                );
                None
            }
        }
    }

    /// A single column name.
    pub(super) fn one(
        &mut self,
        context: &str,
        header: usize,
        key: &str,
        value: &Option<Spanned<Names>>,
    ) -> Option<String> {
        let value = self.required(context, header, key, value)?;
        match value.get_ref() {
            Names::One(name) if !name.is_empty() => Some(name.clone()),
            Names::One(_) => {
                self.err(
                    value.span().start,
                    context,
                    format!("{key}: must not be empty"),
                );
                None
            }
            Names::Many(_) => {
                self.err(
                    value.span().start,
                    context,
                    format!("{key}: expected one column name, found a list"),
                );
                None
            }
        }
    }

    /// A non-empty list of column names.
    pub(super) fn many(
        &mut self,
        context: &str,
        header: usize,
        key: &str,
        value: &Option<Spanned<Names>>,
    ) -> Option<Vec<String>> {
        let value = self.required(context, header, key, value)?;
        match value.get_ref() {
            Names::Many(names) if !names.is_empty() && names.iter().all(|n| !n.is_empty()) => {
                Some(names.clone())
            }
            Names::Many(_) => {
                self.err(
                    value.span().start,
                    context,
                    format!("{key}: expected a non-empty list of non-empty column names"),
                );
                None
            }
            Names::One(_) => {
                self.err(
                    value.span().start,
                    context,
                    format!("{key}: expected a list of column names, found one name"),
                );
                None
            }
        }
    }

    pub(super) fn side(
        &mut self,
        name: &str,
        raw: &Spanned<RawSide>,
    ) -> Option<(SideConfig, usize)> {
        let context = format!("sides.{name}");
        let r = raw.get_ref();
        let source = self.name(&context, "source", &r.source);
        let timestamps = match r.timestamps.get_ref().as_str() {
            "seconds" => Some(TimestampPrecision::Seconds),
            "microseconds" => Some(TimestampPrecision::Microseconds),
            other => {
                self.err(
                    r.timestamps.span().start,
                    &context,
                    format!(
                        "timestamps: unknown precision \"{other}\" (expected \"seconds\" or \"microseconds\")"
                    ),
                );
                None
            }
        };
        Some((
            SideConfig {
                source: source?,
                timestamps: timestamps?,
            },
            self.line(raw.span().start),
        ))
    }

    pub(super) fn conflicts(&mut self, raw: &Spanned<RawConflicts>) -> Option<(Conflicts, usize)> {
        let context = "conflicts";
        let r = raw.get_ref();
        let tie_winner = Side::parse(r.tie_winner.get_ref());
        if tie_winner.is_none() {
            self.err(
                r.tie_winner.span().start,
                context,
                format!(
                    "tie_winner: \"{}\" is not a side (expected \"legacy\" or \"platform\")",
                    r.tie_winner.get_ref()
                ),
            );
        }
        let text = r.tombstone_retention.get_ref().as_str();
        let parsed: Result<Duration, de::value::Error> =
            humantime_serde::deserialize(text.into_deserializer());
        let retention = match parsed {
            Ok(d) => Some(d),
            Err(e) => {
                self.err(
                    r.tombstone_retention.span().start,
                    context,
                    format!("tombstone_retention: \"{text}\" is not a duration ({e}); e.g. \"7d\""),
                );
                None
            }
        };
        Some((
            Conflicts {
                tie_winner: tie_winner?,
                tombstone_retention: retention?,
            },
            self.line(raw.span().start),
        ))
    }

    fn table_ref(
        &mut self,
        context: &str,
        side: &str,
        raw: &Spanned<RawTableRef>,
    ) -> Option<TableRef> {
        let r = raw.get_ref();
        let name = self.qualified(context, &format!("{side}.table"), &r.table);
        let key = self.name(context, &format!("{side}.key"), &r.key);
        let updated_at = self.name(context, &format!("{side}.updated_at"), &r.updated_at);
        let (name, key, updated_at) = (name?, key?, updated_at?);
        if key == updated_at {
            self.err(
                r.updated_at.span().start,
                context,
                format!("{side}.updated_at: \"{updated_at}\" is also the key"),
            );
            return None;
        }
        Some(TableRef {
            schema: name.schema,
            table: name.table,
            key,
            updated_at,
        })
    }

    pub(super) fn entity(&mut self, number: usize, raw: &Spanned<RawEntity>) -> Option<Entity> {
        let errors_before = self.errors.len();
        let r = raw.get_ref();
        let name = r.name.get_ref().clone();
        let context = format!("entity \"{name}\"");
        if name.trim().is_empty() {
            self.err(
                r.name.span().start,
                &format!("entity {number}"),
                "name: must not be empty".to_owned(),
            );
        }
        let legacy = self.table_ref(&context, "legacy", &r.legacy);
        let platform = self.table_ref(&context, "platform", &r.platform);
        let natural_key = match &r.natural_key {
            None => None,
            Some(nk) => {
                let legacy = self.names(&context, "natural_key.legacy", &nk.get_ref().legacy);
                let platform = self.names(&context, "natural_key.platform", &nk.get_ref().platform);
                if let (Some(l), Some(p)) = (&legacy, &platform) {
                    if l.len() != p.len() {
                        self.err(
                            nk.span().start,
                            &context,
                            format!(
                                "natural_key: {} legacy column(s) but {} platform column(s)",
                                l.len(),
                                p.len()
                            ),
                        );
                    }
                }
                Some((legacy, platform, self.line(nk.span().start)))
            }
        };
        let fields: Vec<Option<FieldDef>> = r
            .field
            .iter()
            .enumerate()
            .map(|(i, f)| self.field(&name, i + 1, f))
            .collect();
        let (Some(legacy), Some(platform)) = (legacy, platform) else {
            return None;
        };
        let fields: Vec<FieldDef> = fields.into_iter().flatten().collect();
        let tables = [legacy, platform];
        self.check_columns_unique(&context, &tables, &fields);
        if self.errors.len() > errors_before {
            return None;
        }
        let (natural_key, natural_key_line) = match natural_key {
            Some((Some(legacy), Some(platform), line)) => {
                (Some(NaturalKey { legacy, platform }), line)
            }
            _ => (None, 0),
        };
        Some(Entity {
            name,
            tables,
            natural_key,
            fields,
            precision: [TimestampPrecision::Seconds; 2],
            file: self.file.clone(),
            line: self.line(raw.span().start),
            side_lines: [
                self.line(r.legacy.span().start),
                self.line(r.platform.span().start),
            ],
            natural_key_line,
        })
    }

    /// A column of an entity's table is written by one field at most, and
    /// never by a field when it is the key or `updated_at`.
    fn check_columns_unique(&mut self, context: &str, tables: &[TableRef; 2], fields: &[FieldDef]) {
        for side in Side::BOTH {
            let table = &tables[side.index()];
            let mut used: HashMap<&str, String> = HashMap::new();
            used.insert(&table.key, "the entity's key".to_owned());
            used.insert(&table.updated_at, "the entity's updated_at".to_owned());
            for f in fields {
                for column in f.field.columns(side) {
                    if let Some(owner) = used.get(column) {
                        let e = at_line(
                            &self.file,
                            f.line_of(side.as_str()),
                            format!("{context} {}", f.label()),
                            format!("{side} column \"{column}\" is already mapped by {owner}"),
                        );
                        self.errors.push(e);
                    } else {
                        used.insert(column, f.label());
                    }
                }
            }
        }
    }

    fn field(&mut self, entity: &str, number: usize, raw: &Spanned<RawField>) -> Option<FieldDef> {
        let r = raw.get_ref();
        let header = raw.span().start;
        let kind = r.kind.get_ref().as_str();
        if !KINDS.contains(&kind) {
            self.err(
                r.kind.span().start,
                &format!("entity \"{entity}\" field {number}"),
                format!(
                    "unknown kind \"{kind}\" (expected one of: {})",
                    KINDS.join(", ")
                ),
            );
            return None;
        }
        let context = format!("entity \"{entity}\" field {number} ({kind})");
        let present = r.present_keys();
        let allowed = kind_keys(kind);
        let mut keys_ok = true;
        for (key, offset) in &present {
            if !allowed.contains(key) {
                keys_ok = false;
                self.err(
                    *offset,
                    &context,
                    format!(
                        "key \"{key}\" does not apply to kind \"{kind}\" (it takes: kind, {})",
                        allowed.join(", ")
                    ),
                );
            }
        }
        let field = self.field_kind(&context, header, kind, r);
        if !keys_ok {
            return None;
        }
        let mut key_lines = vec![("kind", self.line(r.kind.span().start))];
        key_lines.extend(present.iter().map(|(k, o)| (*k, self.line(*o))));
        Some(FieldDef {
            number,
            field: field?,
            line: self.line(header),
            key_lines,
        })
    }
}
