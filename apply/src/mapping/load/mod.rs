//! Reading mapping files: TOML with spans, then structural validation.

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use schemas::event::Value;
use serde::de::{self, Deserializer, IntoDeserializer, SeqAccess, Visitor};
use serde::Deserialize;
use toml::Spanned;

use super::error::{at_line, MappingError, Source};
use super::model::{
    Conflicts, Entity, Field, FieldDef, Lookup, Mapping, NaturalKey, Side, SideConfig, TableName,
    TableRef, TimestampPrecision, ValueMap, ValuePair,
};

/// The field kinds, as written in files.
pub(crate) const KINDS: [&str; 8] = [
    "copy",
    "timestamp",
    "split",
    "value_map",
    "lookup",
    "flag_timestamp",
    "json_fields",
    "reference",
];

/// The keys each kind accepts (besides `kind`).
fn kind_keys(kind: &str) -> &'static [&'static str] {
    match kind {
        "split" => &["legacy", "platform", "separator"],
        "value_map" => &["legacy", "platform", "pairs", "platform_only"],
        "lookup" => &[
            "legacy",
            "platform",
            "table",
            "key",
            "value",
            "create_missing",
            "stamp",
        ],
        "json_fields" => &["legacy", "platform", "fields"],
        "reference" => &["legacy", "platform", "entity"],
        _ => &["legacy", "platform"],
    }
}

// ---- the file as serde sees it ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    sides: Option<RawSides>,
    conflicts: Option<Spanned<RawConflicts>>,
    #[serde(default)]
    entity: Vec<Spanned<RawEntity>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSides {
    legacy: Option<Spanned<RawSide>>,
    platform: Option<Spanned<RawSide>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSide {
    source: Spanned<String>,
    timestamps: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConflicts {
    tie_winner: Spanned<String>,
    tombstone_retention: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntity {
    name: Spanned<String>,
    legacy: Spanned<RawTableRef>,
    platform: Spanned<RawTableRef>,
    natural_key: Option<Spanned<RawNaturalKey>>,
    #[serde(default)]
    field: Vec<Spanned<RawField>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTableRef {
    table: Spanned<String>,
    key: Spanned<String>,
    updated_at: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNaturalKey {
    legacy: Spanned<OneOrMany>,
    platform: Spanned<OneOrMany>,
}

/// A column name, or a list of them (a composite natural key).
#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// Every key any kind accepts; which apply is checked per kind afterwards.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawField {
    kind: Spanned<String>,
    legacy: Option<Spanned<Names>>,
    platform: Option<Spanned<Names>>,
    separator: Option<Spanned<String>>,
    pairs: Option<Spanned<Vec<Spanned<RawPair>>>>,
    platform_only: Option<Spanned<Vec<Spanned<RawPair>>>>,
    table: Option<Spanned<String>>,
    key: Option<Spanned<String>>,
    value: Option<Spanned<String>>,
    create_missing: Option<Spanned<bool>>,
    stamp: Option<Spanned<Vec<String>>>,
    fields: Option<Spanned<Vec<String>>>,
    entity: Option<Spanned<String>>,
}

impl RawField {
    /// The keys present (besides `kind`), with their byte offsets.
    fn present_keys(&self) -> Vec<(&'static str, usize)> {
        fn at<T>(v: &Option<Spanned<T>>) -> Option<usize> {
            v.as_ref().map(|s| s.span().start)
        }
        [
            ("legacy", at(&self.legacy)),
            ("platform", at(&self.platform)),
            ("separator", at(&self.separator)),
            ("pairs", at(&self.pairs)),
            ("platform_only", at(&self.platform_only)),
            ("table", at(&self.table)),
            ("key", at(&self.key)),
            ("value", at(&self.value)),
            ("create_missing", at(&self.create_missing)),
            ("stamp", at(&self.stamp)),
            ("fields", at(&self.fields)),
            ("entity", at(&self.entity)),
        ]
        .into_iter()
        .filter_map(|(k, o)| o.map(|o| (k, o)))
        .collect()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPair {
    legacy: Vec<toml::Value>,
    platform: Vec<toml::Value>,
}

/// A column name or a list of them.
enum Names {
    One(String),
    Many(Vec<String>),
}

impl<'de> Deserialize<'de> for Names {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct NamesVisitor;
        impl<'de> Visitor<'de> for NamesVisitor {
            type Value = Names;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a column name or a list of column names")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Names, E> {
                Ok(Names::One(v.to_owned()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Names, A::Error> {
                let mut names = Vec::new();
                while let Some(n) = seq.next_element::<String>()? {
                    names.push(n);
                }
                Ok(Names::Many(names))
            }
        }
        d.deserialize_any(NamesVisitor)
    }
}

// ---- a lenient skeleton, only to name the entity and field of a serde error ----

#[derive(Deserialize)]
struct SkelFile {
    #[serde(default)]
    entity: Vec<Spanned<SkelEntity>>,
}

#[derive(Deserialize)]
struct SkelEntity {
    name: Option<toml::Value>,
    #[serde(default)]
    field: Vec<Spanned<SkelField>>,
}

#[derive(Deserialize)]
struct SkelField {
    kind: Option<toml::Value>,
}

/// `entity "team" field 2 (lookup)` for the place at `offset`, as far as it
/// can be told, and the field's kind when it is a known one.
fn context_at(text: &str, offset: usize) -> (String, Option<&'static str>) {
    let Ok(skel) = toml::from_str::<SkelFile>(text) else {
        return (String::new(), None);
    };
    let Some((i, entity)) = skel
        .entity
        .iter()
        .enumerate()
        .rev()
        .find(|(_, e)| e.span().start <= offset)
    else {
        return (String::new(), None);
    };
    let mut known_kind = None;
    let mut context = match &entity.get_ref().name {
        Some(toml::Value::String(name)) => format!("entity \"{name}\""),
        _ => format!("entity {}", i + 1),
    };
    if let Some((j, field)) = entity
        .get_ref()
        .field
        .iter()
        .enumerate()
        .rev()
        .find(|(_, f)| f.span().start <= offset)
    {
        context.push_str(&format!(" field {}", j + 1));
        if let Some(toml::Value::String(kind)) = &field.get_ref().kind {
            known_kind = KINDS.iter().copied().find(|k| k == kind);
            if let Some(kind) = known_kind {
                context.push_str(&format!(" ({kind})"));
            }
        }
    }
    (context, known_kind)
}

// ---- one file ----

/// What one file defines, before files are merged.
struct FilePart {
    file: Arc<str>,
    sides: [Option<(SideConfig, usize)>; 2],
    conflicts: Option<(Conflicts, usize)>,
    entities: Vec<Entity>,
}

struct Builder<'a> {
    src: Source<'a>,
    file: Arc<str>,
    errors: Vec<MappingError>,
}

impl Builder<'_> {
    fn err(&mut self, offset: usize, context: &str, message: String) {
        let e = self.src.error(offset, context, message);
        self.errors.push(e);
    }

    fn line(&self, offset: usize) -> usize {
        self.src.line(offset)
    }

    /// A non-empty string.
    /// One or more non-empty column names.
    fn names(
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

    fn name(&mut self, context: &str, key: &str, value: &Spanned<String>) -> Option<String> {
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

    fn required<'v, T>(
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

    fn qualified(
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
    fn one(
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
    fn many(
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

    fn side(&mut self, name: &str, raw: &Spanned<RawSide>) -> Option<(SideConfig, usize)> {
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

    fn conflicts(&mut self, raw: &Spanned<RawConflicts>) -> Option<(Conflicts, usize)> {
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

    fn entity(&mut self, number: usize, raw: &Spanned<RawEntity>) -> Option<Entity> {
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

    fn field_kind(
        &mut self,
        context: &str,
        header: usize,
        kind: &str,
        r: &RawField,
    ) -> Option<Field> {
        match kind {
            "copy" | "timestamp" | "flag_timestamp" | "reference" => {
                let legacy = self.one(context, header, "legacy", &r.legacy);
                let platform = self.one(context, header, "platform", &r.platform);
                let entity = if kind == "reference" {
                    match self.required(context, header, "entity", &r.entity) {
                        Some(e) => self.name(context, "entity", e).map(Some),
                        None => None,
                    }
                } else {
                    Some(None)
                };
                let (legacy, platform, entity) = (legacy?, platform?, entity?);
                Some(match (kind, entity) {
                    (_, Some(entity)) => Field::Reference {
                        legacy,
                        platform,
                        entity,
                    },
                    ("copy", None) => Field::Copy { legacy, platform },
                    ("timestamp", None) => Field::Timestamp { legacy, platform },
                    _ => Field::FlagTimestamp { legacy, platform },
                })
            }
            "split" => self.split(context, header, r),
            "value_map" => self.value_map(context, header, r),
            "lookup" => self.lookup(context, header, r),
            _ => self.json_fields(context, header, r),
        }
    }

    fn split(&mut self, context: &str, header: usize, r: &RawField) -> Option<Field> {
        let legacy = self.one(context, header, "legacy", &r.legacy);
        let platform = self.many(context, header, "platform", &r.platform);
        let separator = self.required(context, header, "separator", &r.separator);
        let separator = match separator {
            Some(s) if s.get_ref().is_empty() => {
                self.err(
                    s.span().start,
                    context,
                    "separator: must not be empty".to_owned(),
                );
                None
            }
            Some(s) => Some(s.get_ref().clone()),
            None => None,
        };
        let platform = match platform {
            Some(cols) => match <[String; 2]>::try_from(cols) {
                Ok(pair) => Some(pair),
                Err(cols) => {
                    let offset = r.platform.as_ref().map_or(header, |p| p.span().start);
                    self.err(
                        offset,
                        context,
                        format!(
                            "platform: split needs exactly 2 columns (first part, rest), found {}",
                            cols.len()
                        ),
                    );
                    None
                }
            },
            None => None,
        };
        Some(Field::Split {
            legacy: legacy?,
            platform: platform?,
            separator: separator?,
        })
    }

    fn pairs(
        &mut self,
        context: &str,
        key: &str,
        raw: &Spanned<Vec<Spanned<RawPair>>>,
        legacy_arity: usize,
        platform_arity: usize,
    ) -> Option<Vec<ValuePair>> {
        let mut out = Vec::new();
        let mut ok = true;
        for (i, pair) in raw.get_ref().iter().enumerate() {
            let offset = pair.span().start;
            let p = pair.get_ref();
            for (side, values, arity) in [
                ("legacy", &p.legacy, legacy_arity),
                ("platform", &p.platform, platform_arity),
            ] {
                if values.len() != arity {
                    ok = false;
                    self.err(
                        offset,
                        context,
                        format!(
                            "{key} entry {}: {} {side} values for {arity} {side} columns",
                            i + 1,
                            values.len()
                        ),
                    );
                }
            }
            let legacy: Option<Vec<Value>> = p.legacy.iter().map(pair_value).collect();
            let platform: Option<Vec<Value>> = p.platform.iter().map(pair_value).collect();
            match (legacy, platform) {
                (Some(legacy), Some(platform)) => out.push(ValuePair { legacy, platform }),
                _ => {
                    ok = false;
                    self.err(
                        offset,
                        context,
                        format!(
                            "{key} entry {}: values must be strings, integers, floats or booleans",
                            i + 1
                        ),
                    );
                }
            }
        }
        ok.then_some(out)
    }

    fn value_map(&mut self, context: &str, header: usize, r: &RawField) -> Option<Field> {
        let legacy = self.many(context, header, "legacy", &r.legacy);
        let platform = self.many(context, header, "platform", &r.platform);
        let pairs_raw = self.required(context, header, "pairs", &r.pairs);
        let (legacy, platform, pairs_raw) = (legacy?, platform?, pairs_raw?);
        let pairs = self.pairs(context, "pairs", pairs_raw, legacy.len(), platform.len());
        let platform_only = match &r.platform_only {
            None => Some(Vec::new()),
            Some(p) => self.pairs(context, "platform_only", p, legacy.len(), platform.len()),
        };
        let (pairs, platform_only) = (pairs?, platform_only?);
        if pairs.is_empty() {
            self.err(
                pairs_raw.span().start,
                context,
                "pairs: must not be empty".to_owned(),
            );
            return None;
        }
        // Each direction must be a function: no tuple may appear twice on its source side.
        let mut ok = true;
        for (i, p) in pairs.iter().enumerate() {
            if let Some(j) = pairs[..i].iter().position(|q| q.legacy == p.legacy) {
                ok = false;
                self.err(
                    offset_of(pairs_raw, i),
                    context,
                    format!(
                        "pairs entry {}: same legacy values as entry {}",
                        i + 1,
                        j + 1
                    ),
                );
            }
            if let Some(j) = pairs[..i].iter().position(|q| q.platform == p.platform) {
                ok = false;
                self.err(
                    offset_of(pairs_raw, i),
                    context,
                    format!(
                        "pairs entry {}: same platform values as entry {}",
                        i + 1,
                        j + 1
                    ),
                );
            }
        }
        if let Some(only_raw) = &r.platform_only {
            for (i, p) in platform_only.iter().enumerate() {
                let clash = pairs.iter().any(|q| q.platform == p.platform)
                    || platform_only[..i].iter().any(|q| q.platform == p.platform);
                if clash {
                    ok = false;
                    self.err(
                        offset_of(only_raw, i),
                        context,
                        format!(
                            "platform_only entry {}: these platform values are already mapped",
                            i + 1
                        ),
                    );
                }
            }
        }
        ok.then_some(Field::ValueMap(ValueMap {
            legacy,
            platform,
            pairs,
            platform_only,
        }))
    }

    fn lookup(&mut self, context: &str, header: usize, r: &RawField) -> Option<Field> {
        let legacy = self.one(context, header, "legacy", &r.legacy);
        let platform = self.one(context, header, "platform", &r.platform);
        let table = match self.required(context, header, "table", &r.table) {
            Some(t) => self.qualified(context, "table", t),
            None => None,
        };
        let key = match self.required(context, header, "key", &r.key) {
            Some(k) => self.name(context, "key", k),
            None => None,
        };
        let value = match self.required(context, header, "value", &r.value) {
            Some(v) => self.name(context, "value", v),
            None => None,
        };
        let stamp = match &r.stamp {
            Some(s) if s.get_ref().iter().any(String::is_empty) => {
                self.err(
                    s.span().start,
                    context,
                    "stamp: column names must not be empty".to_owned(),
                );
                None
            }
            Some(s) => Some(s.get_ref().clone()),
            None => Some(Vec::new()),
        };
        Some(Field::Lookup(Lookup {
            legacy: legacy?,
            platform: platform?,
            table: table?,
            key: key?,
            value: value?,
            create_missing: r.create_missing.as_ref().is_some_and(|c| *c.get_ref()),
            stamp: stamp?,
        }))
    }

    fn json_fields(&mut self, context: &str, header: usize, r: &RawField) -> Option<Field> {
        let legacy = self.many(context, header, "legacy", &r.legacy);
        let platform = self.one(context, header, "platform", &r.platform);
        let fields_raw = self.required(context, header, "fields", &r.fields);
        let (legacy, platform, fields_raw) = (legacy?, platform?, fields_raw?);
        let fields = fields_raw.get_ref().clone();
        let offset = fields_raw.span().start;
        if fields.len() != legacy.len() {
            self.err(
                offset,
                context,
                format!(
                    "fields: {} JSON fields for {} legacy columns",
                    fields.len(),
                    legacy.len()
                ),
            );
            return None;
        }
        if let Some(dup) = fields
            .iter()
            .enumerate()
            .find(|(i, f)| fields[..*i].contains(f))
        {
            self.err(
                offset,
                context,
                format!("fields: \"{}\" appears twice", dup.1),
            );
            return None;
        }
        Some(Field::JsonFields {
            legacy,
            platform,
            fields,
        })
    }
}

fn offset_of(raw: &Spanned<Vec<Spanned<RawPair>>>, i: usize) -> usize {
    raw.get_ref()
        .get(i)
        .map_or(raw.span().start, |p| p.span().start)
}

/// A `value_map` pair element as an event value.
fn pair_value(v: &toml::Value) -> Option<Value> {
    match v {
        toml::Value::String(s) => Some(Value::Text(s.clone())),
        toml::Value::Integer(i) => Some(Value::Int(*i)),
        toml::Value::Float(f) => Some(Value::Float(*f)),
        toml::Value::Boolean(b) => Some(Value::Bool(*b)),
        _ => None,
    }
}

fn parse_file(text: &str, file: &str) -> Result<FilePart, MappingError> {
    let src = Source::new(file, text);
    let raw: RawFile = match toml::from_str(text) {
        Ok(raw) => raw,
        Err(e) => {
            let offset = e.span().map_or(0, |s| s.start);
            let mut message = e.message().trim().replace('\n', "; ");
            let (context, kind) = context_at(text, offset);
            // serde lists every key of every kind: name only this kind's.
            let field_key = message.contains("`, expected one of `kind`, ");
            if let (Some(kind), Some(rest), true) =
                (kind, message.strip_prefix("unknown field `"), field_key)
            {
                if let Some((key, _)) = rest.split_once('`') {
                    message = format!(
                        "unknown key `{key}` (kind \"{kind}\" takes: kind, {})",
                        kind_keys(kind).join(", ")
                    );
                }
            }
            return Err(src.error(offset, context, message));
        }
    };
    let mut b = Builder {
        src,
        file: Arc::from(file),
        errors: Vec::new(),
    };
    let mut sides = [None, None];
    if let Some(raw_sides) = &raw.sides {
        if let Some(s) = &raw_sides.legacy {
            sides[0] = b.side("legacy", s);
        }
        if let Some(s) = &raw_sides.platform {
            sides[1] = b.side("platform", s);
        }
    }
    let conflicts = raw.conflicts.as_ref().and_then(|c| b.conflicts(c));
    let entities: Vec<Entity> = raw
        .entity
        .iter()
        .enumerate()
        .filter_map(|(i, e)| b.entity(i + 1, e))
        .collect();
    MappingError::from_list(b.errors)?;
    Ok(FilePart {
        file: b.file,
        sides,
        conflicts,
        entities,
    })
}

/// Joins the files' parts; checks what spans files (duplicates, references, sections).
fn merge(place: &str, parts: Vec<FilePart>) -> Result<Mapping, MappingError> {
    let mut errors = Vec::new();
    let mut sides: [Option<(SideConfig, Arc<str>, usize)>; 2] = [None, None];
    let mut conflicts: Option<(Conflicts, Arc<str>, usize)> = None;
    let mut entities: Vec<Entity> = Vec::new();
    let mut files = Vec::new();
    for part in parts {
        files.push(part.file.clone());
        for (slot, (side, defined)) in sides.iter_mut().zip(Side::BOTH.into_iter().zip(part.sides))
        {
            let Some((config, line)) = defined else {
                continue;
            };
            if let Some((_, file, first)) = slot {
                errors.push(at_line(
                    &part.file,
                    line,
                    format!("sides.{side}"),
                    format!("already defined at {file}:{first}"),
                ));
            } else {
                *slot = Some((config, part.file.clone(), line));
            }
        }
        if let Some((c, line)) = part.conflicts {
            if let Some((_, file, first)) = &conflicts {
                errors.push(at_line(
                    &part.file,
                    line,
                    "conflicts",
                    format!("already defined at {file}:{first}"),
                ));
            } else {
                conflicts = Some((c, part.file.clone(), line));
            }
        }
        for entity in part.entities {
            if let Some(first) = entities.iter().find(|e| e.name == entity.name) {
                errors.push(at_line(
                    &entity.file,
                    entity.line,
                    format!("entity \"{}\"", entity.name),
                    format!("already defined at {}:{}", first.file, first.line),
                ));
                continue;
            }
            for side in Side::BOTH {
                let t = entity.table(side);
                if let Some(first) = entities
                    .iter()
                    .find(|e| e.table(side).schema == t.schema && e.table(side).table == t.table)
                {
                    errors.push(at_line(
                        &entity.file,
                        entity.table_line(side),
                        format!("entity \"{}\"", entity.name),
                        format!(
                            "{side} table {} is already mapped by entity \"{}\"",
                            t.qualified(),
                            first.name
                        ),
                    ));
                }
            }
            entities.push(entity);
        }
    }
    for entity in &entities {
        for f in entity.fields() {
            if let Field::Reference { entity: target, .. } = f.field() {
                if !entities.iter().any(|e| &e.name == target) {
                    errors.push(at_line(
                        &entity.file,
                        f.line_of("entity"),
                        format!("entity \"{}\" {}", entity.name, f.label()),
                        format!("entity \"{target}\" is not defined"),
                    ));
                }
            }
        }
    }
    let [legacy, platform] = sides;
    for (side, defined) in [("legacy", &legacy), ("platform", &platform)] {
        if defined.is_none() {
            errors.push(MappingError::General {
                place: place.to_owned(),
                message: format!("no [sides.{side}] section"),
            });
        }
    }
    if conflicts.is_none() {
        errors.push(MappingError::General {
            place: place.to_owned(),
            message: "no [conflicts] section".to_owned(),
        });
    }
    if entities.is_empty() {
        errors.push(MappingError::General {
            place: place.to_owned(),
            message: "no [[entity]] defined".to_owned(),
        });
    }
    if let (Some((l, _, _)), Some((p, file, line))) = (&legacy, &platform) {
        if l.source == p.source {
            errors.push(at_line(
                file,
                *line,
                "sides.platform",
                format!("source \"{}\" is also the legacy side's source", p.source),
            ));
        }
    }
    MappingError::from_list(errors)?;
    let (Some((legacy, _, _)), Some((platform, _, _)), Some((conflicts, _, _))) =
        (legacy, platform, conflicts)
    else {
        // Unreachable: each missing section pushed an error above.
        return Err(MappingError::General {
            place: place.to_owned(),
            message: "incomplete mapping".to_owned(),
        });
    };
    let precision = [legacy.timestamps, platform.timestamps];
    for entity in &mut entities {
        entity.precision = precision;
    }
    Ok(Mapping {
        sides: [legacy, platform],
        conflicts,
        entities,
        files,
    })
}

impl Mapping {
    /// Loads one mapping file's text; `file_name` is what error messages call it.
    #[allow(clippy::should_implement_trait)]
    pub fn from_str(text: &str, file_name: &str) -> Result<Mapping, MappingError> {
        let part = parse_file(text, file_name)?;
        merge(file_name, vec![part])
    }

    /// Loads every `*.toml` file of `dir`, in file name order, as one mapping:
    /// entities in file order, `[sides]` and `[conflicts]` defined once in all.
    pub fn load_dir(dir: &Path) -> Result<Mapping, MappingError> {
        let io = |source: std::io::Error| MappingError::Io {
            path: dir.display().to_string(),
            source,
        };
        let mut paths = Vec::new();
        for entry in fs::read_dir(dir).map_err(io)? {
            let path = entry.map_err(io)?.path();
            if path.extension().is_some_and(|e| e == "toml") && path.is_file() {
                paths.push(path);
            }
        }
        paths.sort();
        if paths.is_empty() {
            return Err(MappingError::General {
                place: dir.display().to_string(),
                message: "no *.toml mapping file".to_owned(),
            });
        }
        let mut parts = Vec::new();
        let mut errors = Vec::new();
        for path in paths {
            let name = path.display().to_string();
            match fs::read_to_string(&path) {
                Ok(text) => match parse_file(&text, &name) {
                    Ok(part) => parts.push(part),
                    Err(e) => errors.push(e),
                },
                Err(source) => errors.push(MappingError::Io { path: name, source }),
            }
        }
        MappingError::from_list(errors)?;
        merge(&dir.display().to_string(), parts)
    }
}
