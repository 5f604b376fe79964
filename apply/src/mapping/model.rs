//! The loaded, validated mapping: sides, conflict settings, entities and fields.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use schemas::event::Value;

/// One of the two databases the bridge keeps equal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Side {
    Legacy,
    Platform,
}

impl Side {
    /// Both sides, legacy first.
    pub const BOTH: [Side; 2] = [Side::Legacy, Side::Platform];

    /// The opposite side.
    pub fn other(self) -> Side {
        match self {
            Side::Legacy => Side::Platform,
            Side::Platform => Side::Legacy,
        }
    }

    /// The side's name as written in mapping files: `legacy` or `platform`.
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Legacy => "legacy",
            Side::Platform => "platform",
        }
    }

    /// Parses `legacy` or `platform`.
    pub fn parse(name: &str) -> Option<Side> {
        match name {
            "legacy" => Some(Side::Legacy),
            "platform" => Some(Side::Platform),
            _ => None,
        }
    }

    pub(crate) fn index(self) -> usize {
        match self {
            Side::Legacy => 0,
            Side::Platform => 1,
        }
    }
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The precision a side stores timestamps at (`timestamps = "seconds"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TimestampPrecision {
    Seconds,
    Microseconds,
}

impl TimestampPrecision {
    /// Brings a microsecond timestamp to this precision. Seconds TRUNCATE
    /// (floor, towards the past), never round: rounding up (what a
    /// `timestamp(0)` column does on its own) would move a row's `updated_at`
    /// into the future and make it win conflicts it should lose.
    /// `infinity` / `-infinity` (`i64::MAX` / `i64::MIN`) are kept.
    pub fn truncate(self, micros: i64) -> i64 {
        match self {
            TimestampPrecision::Microseconds => micros,
            TimestampPrecision::Seconds if micros == i64::MAX || micros == i64::MIN => micros,
            TimestampPrecision::Seconds => micros.div_euclid(1_000_000) * 1_000_000,
        }
    }
}

/// `[sides.legacy]` / `[sides.platform]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SideConfig {
    /// The source name capture writes into events (`ChangeEvent::source`).
    pub source: String,
    pub timestamps: TimestampPrecision,
}

/// `[conflicts]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflicts {
    /// The side that wins when both sides' `updated_at` are equal (in seconds).
    pub tie_winner: Side,
    /// How long a delete is remembered.
    pub tombstone_retention: Duration,
}

/// One side's table of an entity: `{ table = "public.users", key = "id", updated_at = "updated_at" }`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TableRef {
    pub schema: String,
    pub table: String,
    /// The primary key column (mapped by the engine through the id correspondence).
    pub key: String,
    /// The last-change timestamp column, converted like a `timestamp` field.
    pub updated_at: String,
}

impl TableRef {
    /// `schema.table`.
    pub fn qualified(&self) -> String {
        format!("{}.{}", self.schema, self.table)
    }
}

/// A schema-qualified table name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TableName {
    pub schema: String,
    pub table: String,
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.table)
    }
}

/// `natural_key = { legacy = "email", platform = "email" }`, or composite:
/// `{ legacy = ["team_id", "user_id"], platform = ["group_id", "identity_id"] }`
/// (columns in corresponding order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NaturalKey {
    pub legacy: Vec<String>,
    pub platform: Vec<String>,
}

impl NaturalKey {
    /// The natural key's columns on `side`.
    pub fn columns(&self, side: Side) -> &[String] {
        match side {
            Side::Legacy => &self.legacy,
            Side::Platform => &self.platform,
        }
    }

    /// The first (for a single-column key, the only) column on `side`.
    pub fn column(&self, side: Side) -> &str {
        self.columns(side)
            .first()
            .map(String::as_str)
            .unwrap_or_default()
    }
}

/// One `value_map` correspondence: a tuple of legacy values and a tuple of platform values.
#[derive(Debug, Clone, PartialEq)]
pub struct ValuePair {
    pub legacy: Vec<Value>,
    pub platform: Vec<Value>,
}

/// `kind = "value_map"`.
#[derive(Debug, Clone, PartialEq)]
pub struct ValueMap {
    pub legacy: Vec<String>,
    pub platform: Vec<String>,
    /// Used both ways.
    pub pairs: Vec<ValuePair>,
    /// Used platform -> legacy only, after `pairs`.
    pub platform_only: Vec<ValuePair>,
}

/// `kind = "lookup"`: a legacy foreign key whose referenced row's `value`
/// column is denormalised into one platform column. The table is on the legacy side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lookup {
    pub legacy: String,
    pub platform: String,
    pub table: TableName,
    pub key: String,
    pub value: String,
    /// Platform -> legacy: create the row when no row has that value.
    pub create_missing: bool,
    /// Columns set to the current time when a row is created.
    pub stamp: Vec<String>,
}

/// One `[[entity.field]]`, by `kind`.
#[derive(Debug, Clone, PartialEq)]
pub enum Field {
    /// The value as is.
    Copy {
        legacy: String,
        platform: String,
    },
    /// Naive UTC (legacy) <-> timestamptz (platform), truncated to the target's precision.
    Timestamp {
        legacy: String,
        platform: String,
    },
    /// One legacy text column <-> two platform columns (given, family).
    Split {
        legacy: String,
        platform: [String; 2],
        separator: String,
    },
    ValueMap(ValueMap),
    Lookup(Lookup),
    /// Legacy boolean <-> platform nullable timestamp (NULL = false).
    FlagTimestamp {
        legacy: String,
        platform: String,
    },
    /// Several legacy float columns <-> one platform JSON object.
    JsonFields {
        legacy: Vec<String>,
        platform: String,
        fields: Vec<String>,
    },
    /// A foreign key to another entity; the id goes through the id correspondence.
    Reference {
        legacy: String,
        platform: String,
        entity: String,
    },
}

impl Field {
    /// The `kind` as written in the file.
    pub fn kind(&self) -> &'static str {
        match self {
            Field::Copy { .. } => "copy",
            Field::Timestamp { .. } => "timestamp",
            Field::Split { .. } => "split",
            Field::ValueMap(_) => "value_map",
            Field::Lookup(_) => "lookup",
            Field::FlagTimestamp { .. } => "flag_timestamp",
            Field::JsonFields { .. } => "json_fields",
            Field::Reference { .. } => "reference",
        }
    }

    /// The columns of the entity's own table this field reads or writes on `side`.
    pub fn columns(&self, side: Side) -> Vec<&str> {
        fn pick<'a>(side: Side, legacy: &'a str, platform: &'a str) -> Vec<&'a str> {
            match side {
                Side::Legacy => vec![legacy],
                Side::Platform => vec![platform],
            }
        }
        match self {
            Field::Copy { legacy, platform }
            | Field::Timestamp { legacy, platform }
            | Field::FlagTimestamp { legacy, platform }
            | Field::Reference {
                legacy, platform, ..
            } => pick(side, legacy, platform),
            Field::Lookup(l) => pick(side, &l.legacy, &l.platform),
            Field::Split {
                legacy, platform, ..
            } => match side {
                Side::Legacy => vec![legacy.as_str()],
                Side::Platform => platform.iter().map(String::as_str).collect(),
            },
            Field::ValueMap(m) => match side {
                Side::Legacy => m.legacy.iter().map(String::as_str).collect(),
                Side::Platform => m.platform.iter().map(String::as_str).collect(),
            },
            Field::JsonFields {
                legacy, platform, ..
            } => match side {
                Side::Legacy => legacy.iter().map(String::as_str).collect(),
                Side::Platform => vec![platform.as_str()],
            },
        }
    }
}

/// A field with its place in the file.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldDef {
    pub(crate) number: usize,
    pub(crate) field: Field,
    pub(crate) line: usize,
    pub(crate) key_lines: Vec<(&'static str, usize)>,
}

impl FieldDef {
    /// The field's 1-based position in its entity, as error messages count.
    pub fn number(&self) -> usize {
        self.number
    }

    pub fn field(&self) -> &Field {
        &self.field
    }

    pub fn kind(&self) -> &'static str {
        self.field.kind()
    }

    /// The line of the field's `[[entity.field]]` header.
    pub fn line(&self) -> usize {
        self.line
    }

    /// The line of one of the field's keys (`legacy`, `platform`, `table`, ...),
    /// or of the header when the key is absent.
    pub fn line_of(&self, key: &str) -> usize {
        self.key_lines
            .iter()
            .find(|(k, _)| *k == key)
            .map_or(self.line, |(_, l)| *l)
    }

    /// `field 2 (lookup)`.
    pub fn label(&self) -> String {
        format!("field {} ({})", self.number, self.kind())
    }
}

/// One `[[entity]]`: a pair of tables kept equal.
#[derive(Debug, Clone, PartialEq)]
pub struct Entity {
    pub(crate) name: String,
    pub(crate) tables: [TableRef; 2],
    pub(crate) natural_key: Option<NaturalKey>,
    pub(crate) fields: Vec<FieldDef>,
    pub(crate) precision: [TimestampPrecision; 2],
    pub(crate) file: Arc<str>,
    pub(crate) line: usize,
    pub(crate) side_lines: [usize; 2],
    pub(crate) natural_key_line: usize,
}

impl Entity {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn table(&self, side: Side) -> &TableRef {
        &self.tables[side.index()]
    }

    /// The primary key column on `side`. Not a field: the engine maps it
    /// through the id correspondence.
    pub fn key_column(&self, side: Side) -> &str {
        &self.table(side).key
    }

    /// The `updated_at` column on `side`; [`crate::mapping::to_target`]
    /// converts it like a `timestamp` field, after the fields.
    pub fn updated_at_column(&self, side: Side) -> &str {
        &self.table(side).updated_at
    }

    pub fn natural_key(&self) -> Option<&NaturalKey> {
        self.natural_key.as_ref()
    }

    /// The natural key column on `side`, if the entity has one.
    pub fn natural_key_column(&self, side: Side) -> Option<&str> {
        self.natural_key.as_ref().map(|k| k.column(side))
    }

    /// All natural key columns on `side` (empty without a natural key).
    pub fn natural_key_columns(&self, side: Side) -> &[String] {
        self.natural_key
            .as_ref()
            .map(|k| k.columns(side))
            .unwrap_or(&[])
    }

    /// The fields, in file order.
    pub fn fields(&self) -> &[FieldDef] {
        &self.fields
    }

    /// The field (and its 0-based index) that maps `column` of `side`'s table.
    pub fn field_for_column(&self, side: Side, column: &str) -> Option<(usize, &FieldDef)> {
        self.fields
            .iter()
            .enumerate()
            .find(|(_, f)| f.field.columns(side).contains(&column))
    }

    /// The names of the entities this entity references.
    pub fn references(&self) -> impl Iterator<Item = &str> {
        self.fields.iter().filter_map(|f| match &f.field {
            Field::Reference { entity, .. } => Some(entity.as_str()),
            _ => None,
        })
    }

    /// The timestamp precision of `side` (from `[sides]`).
    pub fn precision(&self, side: Side) -> TimestampPrecision {
        self.precision[side.index()]
    }

    /// The file the entity was defined in.
    pub fn file(&self) -> &str {
        &self.file
    }

    /// The line of the entity's `[[entity]]` header.
    pub fn line(&self) -> usize {
        self.line
    }

    /// The line of the entity's `legacy = {...}` / `platform = {...}` key.
    pub fn table_line(&self, side: Side) -> usize {
        self.side_lines[side.index()]
    }
}

/// The whole correspondence, from one or more files.
#[derive(Debug, Clone, PartialEq)]
pub struct Mapping {
    pub(crate) sides: [SideConfig; 2],
    pub(crate) conflicts: Conflicts,
    pub(crate) entities: Vec<Entity>,
    pub(crate) files: Vec<Arc<str>>,
}

impl Mapping {
    pub fn side(&self, side: Side) -> &SideConfig {
        &self.sides[side.index()]
    }

    /// The side whose `source` name is `source` (as in `ChangeEvent::source`).
    pub fn side_for_source(&self, source: &str) -> Option<Side> {
        Side::BOTH
            .into_iter()
            .find(|s| self.side(*s).source == source)
    }

    pub fn conflicts(&self) -> &Conflicts {
        &self.conflicts
    }

    /// Entities in file order (files sorted by name): parents first.
    pub fn entities(&self) -> &[Entity] {
        &self.entities
    }

    pub fn entity(&self, name: &str) -> Option<&Entity> {
        self.entities.iter().find(|e| e.name == name)
    }

    /// The entity whose `side` table is `schema.table`.
    pub fn entity_for_table(&self, side: Side, schema: &str, table: &str) -> Option<&Entity> {
        self.entities.iter().find(|e| {
            let t = e.table(side);
            t.schema == schema && t.table == table
        })
    }

    /// The files the mapping was read from, in order.
    pub fn files(&self) -> impl Iterator<Item = &str> {
        self.files.iter().map(|f| &**f)
    }
}
