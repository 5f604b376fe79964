//! A mapping file as serde sees it: the raw sections and fields, with their
//! spans, before any validation; and a lenient skeleton of the file that only
//! tells which entity and field a serde error is in.

use std::fmt;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;
use toml::Spanned;

/// The field kinds, as written in files.
pub(super) const KINDS: [&str; 8] = [
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
pub(super) fn kind_keys(kind: &str) -> &'static [&'static str] {
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
pub(super) struct RawFile {
    pub(super) sides: Option<RawSides>,
    pub(super) conflicts: Option<Spanned<RawConflicts>>,
    #[serde(default)]
    pub(super) entity: Vec<Spanned<RawEntity>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSides {
    pub(super) legacy: Option<Spanned<RawSide>>,
    pub(super) platform: Option<Spanned<RawSide>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSide {
    pub(super) source: Spanned<String>,
    pub(super) timestamps: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConflicts {
    pub(super) tie_winner: Spanned<String>,
    pub(super) tombstone_retention: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEntity {
    pub(super) name: Spanned<String>,
    pub(super) legacy: Spanned<RawTableRef>,
    pub(super) platform: Spanned<RawTableRef>,
    pub(super) natural_key: Option<Spanned<RawNaturalKey>>,
    #[serde(default)]
    pub(super) field: Vec<Spanned<RawField>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTableRef {
    pub(super) table: Spanned<String>,
    pub(super) key: Spanned<String>,
    pub(super) updated_at: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNaturalKey {
    pub(super) legacy: Spanned<OneOrMany>,
    pub(super) platform: Spanned<OneOrMany>,
}

/// A column name, or a list of them (a composite natural key).
#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// Every key any kind accepts; which apply is checked per kind afterwards.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawField {
    pub(super) kind: Spanned<String>,
    pub(super) legacy: Option<Spanned<Names>>,
    pub(super) platform: Option<Spanned<Names>>,
    pub(super) separator: Option<Spanned<String>>,
    pub(super) pairs: Option<Spanned<Vec<Spanned<RawPair>>>>,
    pub(super) platform_only: Option<Spanned<Vec<Spanned<RawPair>>>>,
    pub(super) table: Option<Spanned<String>>,
    pub(super) key: Option<Spanned<String>>,
    pub(super) value: Option<Spanned<String>>,
    pub(super) create_missing: Option<Spanned<bool>>,
    pub(super) stamp: Option<Spanned<Vec<String>>>,
    pub(super) fields: Option<Spanned<Vec<String>>>,
    pub(super) entity: Option<Spanned<String>>,
}

impl RawField {
    /// The keys present (besides `kind`), with their byte offsets.
    pub(super) fn present_keys(&self) -> Vec<(&'static str, usize)> {
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
pub(super) struct RawPair {
    pub(super) legacy: Vec<toml::Value>,
    pub(super) platform: Vec<toml::Value>,
}

/// A column name or a list of them.
pub(super) enum Names {
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
pub(super) fn context_at(text: &str, offset: usize) -> (String, Option<&'static str>) {
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
