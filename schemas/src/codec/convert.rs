//! From an apache-avro value of the current schema to a [`ChangeEvent`].
//!
//! Fields are found by name. Unions of `null` and one type are read by their
//! content; the column value union by its branch index in the current
//! schema (after resolution, indexes are the reader's), with its content
//! checked too.

use apache_avro::types::Value as Avro;

use super::branch;
use crate::{CaptureMode, ChangeEvent, Clock, Column, Error, Op, Transaction, Value};

/// Converts a decoded (and resolved) `ChangeEvent` record.
pub(super) fn event(v: Avro) -> Result<ChangeEvent, Error> {
    let mut f = Fields::of(v, "ChangeEvent")?;
    Ok(ChangeEvent {
        source: string(
            f.take("source", "ChangeEvent.source")?,
            "ChangeEvent.source",
        )?,
        database: string(
            f.take("database", "ChangeEvent.database")?,
            "ChangeEvent.database",
        )?,
        schema: string(
            f.take("schema", "ChangeEvent.schema")?,
            "ChangeEvent.schema",
        )?,
        table: string(f.take("table", "ChangeEvent.table")?, "ChangeEvent.table")?,
        op: op(f.take("op", "ChangeEvent.op")?)?,
        key: columns(f.take("key", "ChangeEvent.key")?, "ChangeEvent.key")?,
        before: optional(f.take("before", "ChangeEvent.before")?, |v| {
            columns(v, "ChangeEvent.before")
        })?,
        after: optional(f.take("after", "ChangeEvent.after")?, |v| {
            columns(v, "ChangeEvent.after")
        })?,
        transaction: transaction(f.take("transaction", "ChangeEvent.transaction")?)?,
        marker: optional(f.take("marker", "ChangeEvent.marker")?, |v| {
            string(v, "ChangeEvent.marker")
        })?,
        origin: optional(f.take("origin", "ChangeEvent.origin")?, |v| {
            string(v, "ChangeEvent.origin")
        })?,
        mode: mode(f.take("mode", "ChangeEvent.mode")?)?,
        captured_at_micros: timestamp(
            f.take("captured_at", "ChangeEvent.captured_at")?,
            "ChangeEvent.captured_at",
        )?,
        clock: optional(f.take("clock", "ChangeEvent.clock")?, clock)?,
    })
}

fn clock(v: Avro) -> Result<Clock, Error> {
    let mut f = Fields::of(v, "ChangeEvent.clock")?;
    Ok(Clock {
        seconds: long(f.take("seconds", "Clock.seconds")?, "Clock.seconds")?,
        tick: long(f.take("tick", "Clock.tick")?, "Clock.tick")?,
    })
}

fn transaction(v: Avro) -> Result<Transaction, Error> {
    let mut f = Fields::of(v, "ChangeEvent.transaction")?;
    Ok(Transaction {
        xid: u32_from(
            long(f.take("xid", "Transaction.xid")?, "Transaction.xid")?,
            "Transaction.xid",
        )?,
        commit_lsn: u64_from_bits(long(
            f.take("commit_lsn", "Transaction.commit_lsn")?,
            "Transaction.commit_lsn",
        )?),
        commit_time_micros: timestamp(
            f.take("commit_time", "Transaction.commit_time")?,
            "Transaction.commit_time",
        )?,
        position: u64_from_bits(long(
            f.take("position", "Transaction.position")?,
            "Transaction.position",
        )?),
        last: match f.take("last", "Transaction.last")? {
            Avro::Boolean(b) => b,
            other => return Err(shape("Transaction.last", "a boolean", &other)),
        },
        event_count: optional(f.take("event_count", "Transaction.event_count")?, |v| {
            long(v, "Transaction.event_count").map(u64_from_bits)
        })?,
    })
}

fn columns(v: Avro, field: &'static str) -> Result<Vec<Column>, Error> {
    match v {
        Avro::Array(items) => items.into_iter().map(column).collect(),
        other => Err(shape(field, "an array of Column", &other)),
    }
}

fn column(v: Avro) -> Result<Column, Error> {
    let mut f = Fields::of(v, "Column")?;
    Ok(Column {
        name: string(f.take("name", "Column.name")?, "Column.name")?,
        type_name: string(f.take("type_name", "Column.type_name")?, "Column.type_name")?,
        type_oid: u32_from(
            long(f.take("type_oid", "Column.type_oid")?, "Column.type_oid")?,
            "Column.type_oid",
        )?,
        value: value(f.take("value", "Column.value")?)?,
    })
}

fn value(v: Avro) -> Result<Value, Error> {
    const FIELD: &str = "Column.value";
    let (index, inner) = match v {
        Avro::Union(index, inner) => (i64::from(index), *inner),
        other => return Err(shape(FIELD, "a union", &other)),
    };
    let converted = match (index, inner) {
        (branch::NULL, Avro::Null) => Value::Null,
        (branch::UNCHANGED, Avro::Record(fields)) => {
            match Fields(fields).take("unchanged", "Unchanged.unchanged")? {
                Avro::Null => Value::Unchanged,
                other => return Err(shape("Unchanged.unchanged", "null", &other)),
            }
        }
        (branch::BOOLEAN, Avro::Boolean(b)) => Value::Bool(b),
        (branch::LONG, Avro::Long(i)) => Value::Int(i),
        (branch::DOUBLE, Avro::Double(d)) => Value::Float(d),
        (branch::NUMERIC, Avro::Record(fields)) => {
            Value::Numeric(single_string(fields, "numeric", "Numeric.numeric")?)
        }
        (branch::STRING, Avro::String(s)) => Value::Text(s),
        (branch::BYTES, Avro::Bytes(b)) => Value::Bytes(b),
        (branch::TIMESTAMP, Avro::Record(fields)) => Value::Timestamp(single_long(
            fields,
            "timestamp_micros",
            "Timestamp.timestamp_micros",
        )?),
        (branch::TIMESTAMP_TZ, Avro::Record(fields)) => Value::TimestampTz(single_long(
            fields,
            "timestamptz_micros",
            "TimestampTz.timestamptz_micros",
        )?),
        (branch::DATE, Avro::Record(fields)) => match Fields(fields).take("days", "Date.days")? {
            Avro::Int(d) => Value::Date(d),
            other => return Err(shape("Date.days", "an int", &other)),
        },
        (branch::TIME, Avro::Record(fields)) => {
            Value::Time(single_long(fields, "time_micros", "Time.time_micros")?)
        }
        (branch::UUID, Avro::Record(fields)) => match Fields(fields).take("bytes", "Uuid.bytes")? {
            Avro::Fixed(16, bytes) => match <[u8; 16]>::try_from(bytes.as_slice()) {
                Ok(uuid) => Value::Uuid(uuid),
                Err(_) => return Err(shape("Uuid.bytes", "16 bytes", &Avro::Bytes(bytes))),
            },
            other => return Err(shape("Uuid.bytes", "a fixed of 16 bytes", &other)),
        },
        (branch::JSON, Avro::Record(fields)) => {
            Value::Json(single_string(fields, "json", "Json.json")?)
        }
        (branch::ARRAY, Avro::Record(fields)) => {
            match Fields(fields).take("elements", "Array.elements")? {
                Avro::Array(items) => Value::Array(items.into_iter().map(value).collect::<Result<
                    Vec<_>,
                    _,
                >>(
                )?),
                other => return Err(shape("Array.elements", "an array", &other)),
            }
        }
        (index, other) => {
            return Err(Error::UnexpectedShape {
                field: FIELD,
                detail: format!("branch {index} holding {}", kind(&other)),
            })
        }
    };
    Ok(converted)
}

fn op(v: Avro) -> Result<Op, Error> {
    let symbol = match v {
        Avro::Enum(_, symbol) => symbol,
        other => return Err(shape("ChangeEvent.op", "an Op symbol", &other)),
    };
    Ok(match symbol.as_str() {
        "INSERT" => Op::Insert,
        "UPDATE" => Op::Update,
        "DELETE" => Op::Delete,
        "TRUNCATE" => Op::Truncate,
        "READ" => Op::Read,
        _ => return Err(unknown_symbol("ChangeEvent.op", &symbol)),
    })
}

fn mode(v: Avro) -> Result<CaptureMode, Error> {
    let symbol = match v {
        Avro::Enum(_, symbol) => symbol,
        other => return Err(shape("ChangeEvent.mode", "a CaptureMode symbol", &other)),
    };
    Ok(match symbol.as_str() {
        "STREAMING" => CaptureMode::Streaming,
        "POLLING" => CaptureMode::Polling,
        "SNAPSHOT" => CaptureMode::Snapshot,
        _ => return Err(unknown_symbol("ChangeEvent.mode", &symbol)),
    })
}

/// The fields of a record, taken out by name.
struct Fields(Vec<(String, Avro)>);

impl Fields {
    fn of(v: Avro, record: &'static str) -> Result<Fields, Error> {
        match v {
            Avro::Record(fields) => Ok(Fields(fields)),
            other => Err(shape(record, "a record", &other)),
        }
    }

    fn take(&mut self, name: &str, field: &'static str) -> Result<Avro, Error> {
        self.0
            .iter_mut()
            .find(|(n, _)| n == name)
            .map(|(_, v)| std::mem::replace(v, Avro::Null))
            .ok_or_else(|| Error::UnexpectedShape {
                field,
                detail: "missing".to_owned(),
            })
    }
}

/// A `[null, T]` union (or, defensively, a bare value).
fn optional<T>(
    v: Avro,
    convert: impl FnOnce(Avro) -> Result<T, Error>,
) -> Result<Option<T>, Error> {
    let inner = match v {
        Avro::Union(_, inner) => *inner,
        other => other,
    };
    match inner {
        Avro::Null => Ok(None),
        other => convert(other).map(Some),
    }
}

fn string(v: Avro, field: &'static str) -> Result<String, Error> {
    match v {
        Avro::String(s) => Ok(s),
        other => Err(shape(field, "a string", &other)),
    }
}

fn long(v: Avro, field: &'static str) -> Result<i64, Error> {
    match v {
        Avro::Long(i) => Ok(i),
        other => Err(shape(field, "a long", &other)),
    }
}

/// A `long` with logical type `timestamp-micros`.
fn timestamp(v: Avro, field: &'static str) -> Result<i64, Error> {
    match v {
        Avro::TimestampMicros(i) | Avro::Long(i) => Ok(i),
        other => Err(shape(field, "a timestamp-micros long", &other)),
    }
}

fn single_string(
    fields: Vec<(String, Avro)>,
    name: &str,
    field: &'static str,
) -> Result<String, Error> {
    string(Fields(fields).take(name, field)?, field)
}

fn single_long(fields: Vec<(String, Avro)>, name: &str, field: &'static str) -> Result<i64, Error> {
    long(Fields(fields).take(name, field)?, field)
}

fn u32_from(v: i64, field: &'static str) -> Result<u32, Error> {
    u32::try_from(v).map_err(|_| Error::UnexpectedShape {
        field,
        detail: format!("{v} is out of range for an unsigned 32-bit integer"),
    })
}

/// The inverse of the encoder's `u64_bits`.
fn u64_from_bits(v: i64) -> u64 {
    v as u64
}

fn unknown_symbol(field: &'static str, symbol: &str) -> Error {
    Error::UnexpectedShape {
        field,
        detail: format!("unknown symbol {symbol:?}"),
    }
}

fn shape(field: &'static str, expected: &str, found: &Avro) -> Error {
    Error::UnexpectedShape {
        field,
        detail: format!("expected {expected}, found {}", kind(found)),
    }
}

/// The kind of an apache-avro value, for error messages (never the value
/// itself, which may be large).
fn kind(v: &Avro) -> &'static str {
    match v {
        Avro::Null => "null",
        Avro::Boolean(_) => "a boolean",
        Avro::Int(_) => "an int",
        Avro::Long(_) => "a long",
        Avro::Float(_) => "a float",
        Avro::Double(_) => "a double",
        Avro::Bytes(_) => "bytes",
        Avro::String(_) => "a string",
        Avro::Fixed(..) => "a fixed",
        Avro::Enum(..) => "an enum symbol",
        Avro::Union(..) => "a union",
        Avro::Array(_) => "an array",
        Avro::Map(_) => "a map",
        Avro::Record(_) => "a record",
        _ => "a logical-type value",
    }
}
