//! The change event: what capture produces and apply consumes.
//!
//! One [`ChangeEvent`] is one row change (or one truncated table) inside one
//! source transaction. Events of a transaction are produced in order, numbered
//! by [`Transaction::position`] from 0; the last one has
//! [`Transaction::last`] set and carries the transaction's event count, so a
//! consumer can rebuild whole transactions without buffering on the producer
//! side. `(commit_lsn, position)` identifies an event: a replay after a crash
//! repeats both exactly.

/// What happened to the row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// A row was inserted.
    Insert,
    /// A row was updated.
    Update,
    /// A row was deleted.
    Delete,
    /// The whole table was emptied; `key`, `before` and `after` are empty.
    Truncate,
    /// The row was read by a snapshot or backfill, not changed.
    Read,
}

/// How the event was captured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum CaptureMode {
    /// Logical replication (pgoutput).
    #[default]
    Streaming,
    /// The polling fallback on `updated_at`.
    Polling,
    /// A snapshot (backfill) read.
    Snapshot,
}

/// One row change, self-describing: names, Postgres types and typed values.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangeEvent {
    /// The logical name of the source system, e.g. `legacy` or `platform`.
    pub source: String,
    /// The source database name.
    pub database: String,
    /// The source schema (namespace) of the table.
    pub schema: String,
    /// The source table name.
    pub table: String,
    /// What happened to the row.
    pub op: Op,
    /// The primary key (replica identity) columns of the row, in table order.
    /// For a delete they come from the old row. Empty for a truncate.
    pub key: Vec<Column>,
    /// The row before the change, when Postgres sends it (updates and deletes
    /// with REPLICA IDENTITY FULL, or key columns only otherwise).
    pub before: Option<Vec<Column>>,
    /// The row after the change (inserts, updates, snapshot reads).
    pub after: Option<Vec<Column>>,
    /// Where the event sits in its source transaction.
    pub transaction: Transaction,
    /// The content of the bridge's own marker message when the source
    /// transaction carried one (it was written by apply: an echo).
    pub marker: Option<String>,
    /// The replication origin of the source transaction, when it had one.
    pub origin: Option<String>,
    /// How the event was captured.
    pub mode: CaptureMode,
    /// When capture produced the event, microseconds since the Unix epoch.
    pub captured_at_micros: i64,
    /// The row version's [`Clock`], when the source table stamps one (its
    /// clock trigger is installed); `None` otherwise. Added in schema v3:
    /// events written with earlier versions read as `None`.
    pub clock: Option<Clock>,
}

/// A row version's place in the order both sides agree on: a hybrid logical
/// clock stamped in the source database.
///
/// `seconds` is whole seconds since the Unix epoch; `tick` is a counter from
/// 0 that orders versions stamped in the same second, or stamped behind the
/// row's previous version, so a version's clock is later than that of the
/// version it replaced, whatever the wall clocks say. Clocks compare as
/// `(seconds, tick)`, which is the derived [`Ord`] (field order matters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Clock {
    /// Whole seconds since the Unix epoch.
    pub seconds: i64,
    /// The counter within `seconds`, from 0.
    pub tick: i64,
}

/// Where an event sits in its source transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Transaction {
    /// The source transaction id.
    pub xid: u32,
    /// The LSN of the transaction's commit record.
    pub commit_lsn: u64,
    /// The commit time, microseconds since the Unix epoch.
    pub commit_time_micros: i64,
    /// The event's 0-based position inside its transaction.
    pub position: u64,
    /// True on the transaction's final event.
    pub last: bool,
    /// The number of events in the transaction; known, and set, on the last event.
    pub event_count: Option<u64>,
}

/// A named, typed column value.
#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    /// The column name.
    pub name: String,
    /// The Postgres type name, e.g. `int8`, `timestamptz`, `_text` (arrays keep
    /// Postgres's leading underscore), or a user type's name.
    pub type_name: String,
    /// The Postgres type oid.
    pub type_oid: u32,
    /// The column's value.
    pub value: Value,
}

/// A typed column value. Values of types without a variant of their own
/// (interval, inet, enums, ...) travel as [`Value::Text`] in Postgres's text
/// form; `Column::type_name` says what they are.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// SQL NULL.
    Null,
    /// An unchanged TOAST value that Postgres did not send: the column keeps
    /// whatever value it had. Never the same as NULL.
    Unchanged,
    /// bool.
    Bool(bool),
    /// int2, int4, int8, oid.
    Int(i64),
    /// float4, float8 (NaN and infinities included).
    Float(f64),
    /// numeric, in Postgres's text form, so no precision is lost (`NaN` too).
    Numeric(String),
    /// text, varchar, bpchar, name, and every type without a variant of its own.
    Text(String),
    /// bytea.
    Bytes(Vec<u8>),
    /// timestamp without time zone: microseconds since 1970-01-01 00:00:00.
    /// `infinity` / `-infinity` are `i64::MAX` / `i64::MIN`.
    Timestamp(i64),
    /// timestamp with time zone: microseconds since the Unix epoch (UTC).
    /// `infinity` / `-infinity` are `i64::MAX` / `i64::MIN`.
    TimestampTz(i64),
    /// date: days since 1970-01-01. `infinity` / `-infinity` are `i32::MAX` / `i32::MIN`.
    Date(i32),
    /// time without time zone: microseconds since midnight.
    Time(i64),
    /// uuid, its 16 bytes in network (RFC 9562) order.
    Uuid([u8; 16]),
    /// json or jsonb, as text.
    Json(String),
    /// A one-dimensional or nested array; elements are values of the element type.
    Array(Vec<Value>),
}

impl Value {
    /// How many [`Value::Array`]s are nested here: 0 for a scalar, 1 for a
    /// one-dimensional array, 2 for an array of arrays, and so on.
    ///
    /// The codec refuses to decode values nested deeper than
    /// [`MAX_ARRAY_DEPTH`](crate::codec::MAX_ARRAY_DEPTH) (Postgres's own limit
    /// on array dimensions); producers can check with this before encoding.
    pub fn array_depth(&self) -> usize {
        match self {
            Value::Array(elements) => {
                1 + elements.iter().map(Value::array_depth).max().unwrap_or(0)
            }
            _ => 0,
        }
    }
}
