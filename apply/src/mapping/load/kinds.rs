//! The field kinds that take more than columns: `split` (a separator),
//! `value_map` (pairs of values), `lookup` (a lookup table) and
//! `json_fields` (keys of a JSON column); and the dispatch to each kind.

use schemas::event::Value;
use toml::Spanned;

use super::build::Builder;
use super::raw::{RawField, RawPair};
use crate::mapping::model::{Field, Lookup, ValueMap, ValuePair};

impl Builder<'_> {
    pub(super) fn field_kind(
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
