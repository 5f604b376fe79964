//! Pure row transforms: one entity's row from one side into the other side's columns.

use std::fmt;

use schemas::event::{Column, Value};

use super::model::{Entity, Field, FieldDef, Side, TimestampPrecision, ValueMap};

/// A source row: column name -> value. Columns the mapping does not name are ignored.
///
/// A list, searched in order: a row has a handful of columns, and building a
/// hash map of them for every event cost more than the searches it saved.
#[derive(Debug, Clone, Default)]
pub struct Row<'a> {
    values: Vec<(&'a str, &'a Value)>,
}

impl<'a> Row<'a> {
    pub fn new() -> Self {
        Self::default()
    }

    /// The row of an event's `after` (or `before`) columns.
    pub fn from_columns(columns: &'a [Column]) -> Self {
        columns
            .iter()
            .map(|c| (c.name.as_str(), &c.value))
            .collect()
    }

    /// Sets `column` to `value`, replacing what it held.
    pub fn insert(&mut self, column: &'a str, value: &'a Value) {
        match self.values.iter_mut().find(|(c, _)| *c == column) {
            Some(slot) => slot.1 = value,
            None => self.values.push((column, value)),
        }
    }

    pub fn get(&self, column: &str) -> Option<&'a Value> {
        self.values
            .iter()
            .find(|(c, _)| *c == column)
            .map(|(_, v)| *v)
    }

    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

impl<'a> FromIterator<(&'a str, &'a Value)> for Row<'a> {
    fn from_iter<I: IntoIterator<Item = (&'a str, &'a Value)>>(iter: I) -> Self {
        let mut row = Row::new();
        for (column, value) in iter {
            row.insert(column, value);
        }
        row
    }
}

/// Rows are equal when they hold the same columns with the same values, in
/// whatever order.
impl PartialEq for Row<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len()
            && self
                .values
                .iter()
                .all(|(column, value)| other.get(column) == Some(*value))
    }
}

/// What to write into one target column.
#[derive(Debug, Clone, PartialEq)]
pub enum TargetValue {
    /// Write this value.
    Value(Value),
    /// The source value was an unchanged TOAST value: leave the target column
    /// as it is (on insert, the row cannot be written from this event alone).
    /// Never write a placeholder or NULL.
    Unchanged,
    /// `flag_timestamp` legacy -> platform with the flag set: keep the target
    /// row's existing non-NULL value; when it is NULL (or the row is new),
    /// write this value (the source row's `updated_at`, in the target's form).
    KeepExistingOr(Value),
    /// `lookup` legacy -> platform: write the lookup table's `value` column of
    /// the row whose `key` column is `key` (read on the legacy side).
    /// `field` is the index into [`Entity::fields`].
    LookupByKey { field: usize, key: Value },
    /// `lookup` platform -> legacy: write the `key` of the lookup row whose
    /// `value` column is `value`, creating that row when `create_missing`.
    LookupByValue { field: usize, value: Value },
    /// `reference`: write the target-side id corresponding to the source-side
    /// `id` of `entity` (through the id correspondence).
    Reference { entity: String, id: Value },
}

/// The target row: `(target column, what to write)`, fields in file order
/// (each field's columns in the order written), then `updated_at`. The key is
/// not included: the engine maps it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TargetRow {
    pub columns: Vec<(String, TargetValue)>,
}

impl TargetRow {
    pub fn get(&self, column: &str) -> Option<&TargetValue> {
        self.columns
            .iter()
            .find(|(c, _)| c == column)
            .map(|(_, v)| v)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &TargetValue)> {
        self.columns.iter().map(|(c, v)| (c.as_str(), v))
    }

    fn push(&mut self, column: &str, value: TargetValue) {
        self.columns.push((column.to_owned(), value));
    }
}

/// Why a row could not be converted. Names the entity, field and column;
/// never contains a row value (they must not reach logs).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("entity \"{entity}\" {field}, column \"{column}\": {problem}")]
pub struct ConvertError {
    pub entity: String,
    /// `field 3 (value_map)`, or `updated_at`.
    pub field: String,
    /// The source column (for `value_map`, all its source columns, comma-separated).
    pub column: String,
    pub problem: ConvertProblem,
}

/// The kind of conversion failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConvertProblem {
    /// The source row has no such column.
    MissingColumn,
    /// The value has a type the field cannot convert (`found` is the type, not the value).
    UnexpectedType {
        expected: &'static str,
        found: &'static str,
    },
    /// No `value_map` pair matches the values.
    Unmapped,
    /// The JSON text is not valid JSON or not an object.
    NotJsonObject,
    /// The JSON object lacks this field.
    MissingJsonField(String),
    /// This JSON field is not a number.
    JsonFieldNotNumber(String),
    /// A float is NaN or infinite, which JSON cannot hold.
    NotFinite,
}

impl fmt::Display for ConvertProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConvertProblem::MissingColumn => f.write_str("the row has no such column"),
            ConvertProblem::UnexpectedType { expected, found } => {
                write!(f, "expected {expected}, found {found}")
            }
            ConvertProblem::Unmapped => f.write_str("no pair maps the row's values"),
            ConvertProblem::NotJsonObject => f.write_str("not a JSON object"),
            ConvertProblem::MissingJsonField(name) => write!(f, "JSON field \"{name}\" is missing"),
            ConvertProblem::JsonFieldNotNumber(name) => {
                write!(f, "JSON field \"{name}\" is not a number")
            }
            ConvertProblem::NotFinite => f.write_str("NaN or infinite float cannot be JSON"),
        }
    }
}

/// The name of a value's type, for error messages.
fn type_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Unchanged => "unchanged TOAST",
        Value::Bool(_) => "bool",
        Value::Int(_) => "integer",
        Value::Float(_) => "float",
        Value::Numeric(_) => "numeric",
        Value::Text(_) => "text",
        Value::Bytes(_) => "bytes",
        Value::Timestamp(_) => "timestamp",
        Value::TimestampTz(_) => "timestamptz",
        Value::Date(_) => "date",
        Value::Time(_) => "time",
        Value::Uuid(_) => "uuid",
        Value::Json(_) => "json",
        Value::Array(_) => "array",
    }
}

/// Converts one field at a time, naming the field in errors.
struct Cx<'e, 'r, 'a> {
    entity: &'e Entity,
    field: FieldName<'e>,
    from: Side,
    row: &'r Row<'a>,
}

/// The field a conversion is for, named only when an error needs it: most
/// rows convert without one.
#[derive(Clone, Copy)]
enum FieldName<'e> {
    Field(&'e FieldDef),
    UpdatedAt,
}

impl FieldName<'_> {
    fn label(self) -> String {
        match self {
            FieldName::Field(def) => def.label(),
            FieldName::UpdatedAt => "updated_at".to_owned(),
        }
    }
}

impl<'a> Cx<'_, '_, 'a> {
    fn error(&self, column: &str, problem: ConvertProblem) -> ConvertError {
        ConvertError {
            entity: self.entity.name().to_owned(),
            field: self.field.label(),
            column: column.to_owned(),
            problem,
        }
    }

    fn get(&self, column: &str) -> Result<&'a Value, ConvertError> {
        self.row
            .get(column)
            .ok_or_else(|| self.error(column, ConvertProblem::MissingColumn))
    }

    fn unexpected(&self, column: &str, expected: &'static str, found: &Value) -> ConvertError {
        self.error(
            column,
            ConvertProblem::UnexpectedType {
                expected,
                found: type_of(found),
            },
        )
    }

    /// A timestamp into the `to` side's form and precision.
    fn timestamp(&self, column: &str, v: &Value) -> Result<TargetValue, ConvertError> {
        let to = self.from.other();
        let micros = match v {
            Value::Null => return Ok(TargetValue::Value(Value::Null)),
            Value::Unchanged => return Ok(TargetValue::Unchanged),
            Value::Timestamp(m) | Value::TimestampTz(m) => *m,
            other => return Err(self.unexpected(column, "a timestamp", other)),
        };
        Ok(TargetValue::Value(timestamp_value(
            to,
            self.entity.precision(to),
            micros,
        )))
    }
}

/// The `to` side's form of a UTC microsecond timestamp: legacy naive UTC
/// (`Value::Timestamp`), platform `Value::TimestampTz`, at that side's precision.
fn timestamp_value(to: Side, precision: TimestampPrecision, micros: i64) -> Value {
    let micros = precision.truncate(micros);
    match to {
        Side::Legacy => Value::Timestamp(micros),
        Side::Platform => Value::TimestampTz(micros),
    }
}

/// Converts the mapped columns of `entity`'s `from`-side `row` into the other
/// side's columns: every field, then `updated_at`. See the module docs for
/// each kind's rules and the lossy cases.
pub fn to_target(entity: &Entity, from: Side, row: &Row<'_>) -> Result<TargetRow, ConvertError> {
    let mut out = TargetRow::default();
    for (index, def) in entity.fields().iter().enumerate() {
        let cx = Cx {
            entity,
            field: FieldName::Field(def),
            from,
            row,
        };
        convert_field(&cx, index, def, &mut out)?;
    }
    let cx = Cx {
        entity,
        field: FieldName::UpdatedAt,
        from,
        row,
    };
    let column = entity.updated_at_column(from);
    let value = cx.timestamp(column, cx.get(column)?)?;
    out.push(entity.updated_at_column(from.other()), value);
    Ok(out)
}

impl Entity {
    /// This entity's `updated_at` value from `from` in the other side's form
    /// (what [`to_target`] writes for it).
    pub fn updated_at_to_target(
        &self,
        from: Side,
        value: &Value,
    ) -> Result<TargetValue, ConvertError> {
        let row = Row::new();
        let cx = Cx {
            entity: self,
            field: FieldName::UpdatedAt,
            from,
            row: &row,
        };
        cx.timestamp(self.updated_at_column(from), value)
    }
}

fn convert_field(
    cx: &Cx<'_, '_, '_>,
    index: usize,
    def: &FieldDef,
    out: &mut TargetRow,
) -> Result<(), ConvertError> {
    let from = cx.from;
    let to = from.other();
    let field = def.field();
    let sources = field.columns(from);
    let targets = field.columns(to);
    let values = sources
        .iter()
        .map(|c| cx.get(c))
        .collect::<Result<Vec<&Value>, _>>()?;
    // An unchanged TOAST input leaves every target column of the field as it is.
    if values.iter().any(|v| matches!(v, Value::Unchanged)) {
        for t in &targets {
            out.push(t, TargetValue::Unchanged);
        }
        return Ok(());
    }
    let (Some(&first_source), Some(&first_value)) = (sources.first(), values.first()) else {
        return Ok(());
    };
    match field {
        Field::Copy { .. } => out.push(targets[0], TargetValue::Value(first_value.clone())),
        Field::Timestamp { .. } => {
            out.push(targets[0], cx.timestamp(first_source, first_value)?);
        }
        Field::Split { separator, .. } => split(cx, separator, &sources, &values, &targets, out)?,
        Field::ValueMap(map) => {
            for (t, v) in targets.iter().zip(value_map(cx, map, &sources, &values)?) {
                out.push(t, TargetValue::Value(v));
            }
        }
        Field::Lookup(_) => {
            let value = match first_value {
                Value::Null => TargetValue::Value(Value::Null),
                v if from == Side::Legacy => TargetValue::LookupByKey {
                    field: index,
                    key: v.clone(),
                },
                v => TargetValue::LookupByValue {
                    field: index,
                    value: v.clone(),
                },
            };
            out.push(targets[0], value);
        }
        Field::FlagTimestamp { .. } => {
            let value = flag_timestamp(cx, first_source, first_value)?;
            out.push(targets[0], value);
        }
        Field::JsonFields { fields, .. } => match from {
            Side::Legacy => {
                let value = json_from_columns(cx, fields, &sources, &values)?;
                out.push(targets[0], TargetValue::Value(value));
            }
            Side::Platform => {
                for (t, v) in
                    targets
                        .iter()
                        .zip(columns_from_json(cx, fields, first_source, first_value)?)
                {
                    out.push(t, TargetValue::Value(v));
                }
            }
        },
        Field::Reference { entity, .. } => {
            let value = match first_value {
                Value::Null => TargetValue::Value(Value::Null),
                v => TargetValue::Reference {
                    entity: entity.clone(),
                    id: v.clone(),
                },
            };
            out.push(targets[0], value);
        }
    }
    Ok(())
}

fn text<'v>(cx: &Cx<'_, '_, '_>, column: &str, v: &'v Value) -> Result<&'v str, ConvertError> {
    match v {
        Value::Text(s) => Ok(s),
        Value::Null => Ok(""),
        other => Err(cx.unexpected(column, "text", other)),
    }
}

/// Legacy -> platform: split at the first separator (none: rest is "").
/// Platform -> legacy: join with one separator (rest "": the first part alone).
/// NULL <-> all NULL.
fn split(
    cx: &Cx<'_, '_, '_>,
    separator: &str,
    sources: &[&str],
    values: &[&Value],
    targets: &[&str],
    out: &mut TargetRow,
) -> Result<(), ConvertError> {
    if values.iter().all(|v| matches!(v, Value::Null)) {
        for t in targets {
            out.push(t, TargetValue::Value(Value::Null));
        }
        return Ok(());
    }
    match cx.from {
        Side::Legacy => {
            let whole = text(cx, sources[0], values[0])?;
            let (first, rest) = whole.split_once(separator).unwrap_or((whole, ""));
            for (t, part) in targets.iter().zip([first, rest]) {
                out.push(t, TargetValue::Value(Value::Text(part.to_owned())));
            }
        }
        Side::Platform => {
            let first = text(cx, sources[0], values[0])?;
            let rest = match (sources.get(1), values.get(1)) {
                (Some(c), Some(v)) => text(cx, c, v)?,
                _ => "",
            };
            let joined = if rest.is_empty() {
                first.to_owned()
            } else {
                format!("{first}{separator}{rest}")
            };
            out.push(targets[0], TargetValue::Value(Value::Text(joined)));
        }
    }
    Ok(())
}

/// Exact pairs both ways; `platform_only` platform -> legacy after the pairs.
/// All-NULL <-> all-NULL (TOML has no NULL to write a pair with).
fn value_map(
    cx: &Cx<'_, '_, '_>,
    map: &ValueMap,
    sources: &[&str],
    values: &[&Value],
) -> Result<Vec<Value>, ConvertError> {
    if values.iter().all(|v| matches!(v, Value::Null)) {
        let n = match cx.from {
            Side::Legacy => map.platform.len(),
            Side::Platform => map.legacy.len(),
        };
        return Ok(vec![Value::Null; n]);
    }
    let matches = |tuple: &[Value]| tuple.iter().zip(values).all(|(a, b)| a == *b);
    let found = match cx.from {
        Side::Legacy => map
            .pairs
            .iter()
            .find(|p| matches(&p.legacy))
            .map(|p| &p.platform),
        Side::Platform => map
            .pairs
            .iter()
            .chain(&map.platform_only)
            .find(|p| matches(&p.platform))
            .map(|p| &p.legacy),
    };
    found
        .cloned()
        .ok_or_else(|| cx.error(&sources.join(", "), ConvertProblem::Unmapped))
}

/// Legacy -> platform: false (or NULL) -> NULL; true -> keep the existing
/// timestamp or use the row's `updated_at`. Platform -> legacy: NULL -> false,
/// a timestamp -> true.
fn flag_timestamp(
    cx: &Cx<'_, '_, '_>,
    column: &str,
    v: &Value,
) -> Result<TargetValue, ConvertError> {
    match (cx.from, v) {
        (Side::Legacy, Value::Null | Value::Bool(false)) => Ok(TargetValue::Value(Value::Null)),
        (Side::Legacy, Value::Bool(true)) => {
            let updated_at = cx.entity.updated_at_column(Side::Legacy);
            match cx.timestamp(updated_at, cx.get(updated_at)?)? {
                TargetValue::Value(ts @ (Value::Timestamp(_) | Value::TimestampTz(_))) => {
                    Ok(TargetValue::KeepExistingOr(ts))
                }
                _ => Err(cx.error(
                    updated_at,
                    ConvertProblem::UnexpectedType {
                        expected: "a timestamp",
                        found: "null or unchanged",
                    },
                )),
            }
        }
        (Side::Legacy, other) => Err(cx.unexpected(column, "bool", other)),
        (Side::Platform, Value::Null) => Ok(TargetValue::Value(Value::Bool(false))),
        (Side::Platform, Value::Timestamp(_) | Value::TimestampTz(_)) => {
            Ok(TargetValue::Value(Value::Bool(true)))
        }
        (Side::Platform, other) => Err(cx.unexpected(column, "a timestamp", other)),
    }
}

/// Legacy floats -> `{"f1":x,"f2":y}` in `fields` order, numbers in their
/// shortest form that reads back to the same f64. All NULL -> NULL.
fn json_from_columns(
    cx: &Cx<'_, '_, '_>,
    fields: &[String],
    sources: &[&str],
    values: &[&Value],
) -> Result<Value, ConvertError> {
    if values.iter().all(|v| matches!(v, Value::Null)) {
        return Ok(Value::Null);
    }
    let mut json = String::from("{");
    for (i, ((name, column), value)) in fields.iter().zip(sources).zip(values).enumerate() {
        let number = match value {
            Value::Float(f) if f.is_finite() => serde_json::to_string(f),
            Value::Float(_) => return Err(cx.error(column, ConvertProblem::NotFinite)),
            other => return Err(cx.unexpected(column, "float", other)),
        };
        let key = serde_json::to_string(name);
        let (Ok(key), Ok(number)) = (key, number) else {
            return Err(cx.error(column, ConvertProblem::NotFinite));
        };
        if i > 0 {
            json.push(',');
        }
        json.push_str(&key);
        json.push(':');
        json.push_str(&number);
    }
    json.push('}');
    Ok(Value::Json(json))
}

/// Platform JSON object -> one float per named field. Numbers are read from
/// their text with Rust's correctly rounded parser, so they round-trip exactly.
fn columns_from_json(
    cx: &Cx<'_, '_, '_>,
    fields: &[String],
    column: &str,
    value: &Value,
) -> Result<Vec<Value>, ConvertError> {
    let text = match value {
        Value::Null => return Ok(vec![Value::Null; fields.len()]),
        Value::Json(t) | Value::Text(t) => t,
        other => return Err(cx.unexpected(column, "json", other)),
    };
    let not_object = || cx.error(column, ConvertProblem::NotJsonObject);
    let parsed: serde_json::Value = serde_json::from_str(text).map_err(|_| not_object())?;
    let Some(object) = parsed.as_object() else {
        return Err(not_object());
    };
    let members = json::object_members(text).ok_or_else(not_object)?;
    let mut out = Vec::with_capacity(fields.len());
    for name in fields {
        match object.get(name) {
            None => return Err(cx.error(column, ConvertProblem::MissingJsonField(name.clone()))),
            Some(v) if !v.is_number() => {
                return Err(cx.error(column, ConvertProblem::JsonFieldNotNumber(name.clone())))
            }
            Some(_) => {}
        }
        // The last occurrence wins, as in serde_json's map.
        let raw = members
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, raw)| *raw)
            .ok_or_else(not_object)?;
        let number: f64 = raw
            .parse()
            .map_err(|_| cx.error(column, ConvertProblem::JsonFieldNotNumber(name.clone())))?;
        if !number.is_finite() {
            return Err(cx.error(column, ConvertProblem::NotFinite));
        }
        out.push(Value::Float(number));
    }
    Ok(out)
}

/// A scanner for the top-level members of a JSON object, keeping each value's
/// text (serde_json without its `float_roundtrip` feature may read a float
/// one unit in the last place off).
mod json {
    fn skip_ws(b: &[u8], mut i: usize) -> usize {
        while matches!(b.get(i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            i += 1;
        }
        i
    }

    /// The index after the string starting at `i` (at its opening quote).
    fn string_end(b: &[u8], i: usize) -> Option<usize> {
        if b.get(i) != Some(&b'"') {
            return None;
        }
        let mut j = i + 1;
        while j < b.len() {
            match b[j] {
                b'\\' => j += 2,
                b'"' => return Some(j + 1),
                _ => j += 1,
            }
        }
        None
    }

    /// The index after the value starting at `i`.
    fn value_end(b: &[u8], i: usize) -> Option<usize> {
        match b.get(i)? {
            b'"' => string_end(b, i),
            b'{' | b'[' => {
                let mut depth = 0usize;
                let mut j = i;
                while j < b.len() {
                    match b[j] {
                        b'"' => {
                            j = string_end(b, j)?;
                            continue;
                        }
                        b'{' | b'[' => depth += 1,
                        b'}' | b']' => {
                            depth = depth.checked_sub(1)?;
                            if depth == 0 {
                                return Some(j + 1);
                            }
                        }
                        _ => {}
                    }
                    j += 1;
                }
                None
            }
            _ => {
                let mut j = i;
                while j < b.len()
                    && !matches!(b[j], b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r')
                {
                    j += 1;
                }
                Some(j)
            }
        }
    }

    /// `(decoded key, raw value text)` of each member of the object `text`
    /// (valid JSON, already checked by serde_json), in order.
    pub(super) fn object_members(text: &str) -> Option<Vec<(String, &str)>> {
        let b = text.as_bytes();
        let mut i = skip_ws(b, 0);
        if b.get(i) != Some(&b'{') {
            return None;
        }
        i = skip_ws(b, i + 1);
        let mut members = Vec::new();
        if b.get(i) == Some(&b'}') {
            return Some(members);
        }
        loop {
            let key_end = string_end(b, i)?;
            let key: String = serde_json::from_str(text.get(i..key_end)?).ok()?;
            i = skip_ws(b, key_end);
            if b.get(i) != Some(&b':') {
                return None;
            }
            let start = skip_ws(b, i + 1);
            let end = value_end(b, start)?;
            members.push((key, text.get(start..end)?));
            i = skip_ws(b, end);
            match b.get(i) {
                Some(b',') => i = skip_ws(b, i + 1),
                Some(b'}') => return Some(members),
                _ => return None,
            }
        }
    }
}
