//! The hand-written Avro binary decoder for the current schema (v3): the
//! inverse of `encode.rs`.
//!
//! Data written with the current schema (nearly all of it) is read here
//! straight into a [`ChangeEvent`]; apache-avro would build a generic value
//! tree first (a name and an allocation per record field) and look named
//! types up by name on the way, which made decoding many times slower
//! than encoding. Older versions still go through the scanner and
//! apache-avro (see `codec.rs`).
//!
//! It accepts exactly what the scanner and apache-avro accept for the
//! current schema, and reads it the same way (a unit test in `codec.rs`
//! compares the two on valid and damaged messages):
//!
//! - varints of at most 10 bytes, bits beyond 64 dropped; an `int` must fit
//!   32 bits; a boolean byte is 0 or 1; an enum index or union branch must
//!   name a symbol or branch of the schema;
//! - every length and array block count must fit in the bytes left (every
//!   item of this contract takes at least one byte), so no input makes it
//!   allocate more than a small multiple of its own size; a negative block
//!   count is followed by the block's byte size;
//! - strings must be UTF-8;
//! - arrays nest at most [`MAX_ARRAY_DEPTH`](super::MAX_ARRAY_DEPTH) deep in
//!   values, which also bounds the recursion;
//! - the datum ends exactly where the message ends.
//!
//! Integers that do not fit the event (`xid`, `type_oid`) are an
//! [`Error::UnexpectedShape`] naming the field, as after apache-avro.

use super::wire::{Wire, WireError};
use super::{branch, MAX_ARRAY_DEPTH};
use crate::{CaptureMode, ChangeEvent, Clock, Column, Error, Op, Transaction, Value};

/// Reads the datum of one event written with the current schema (no
/// header). `version` only labels errors.
pub(super) fn event(datum: &[u8], version: u32) -> Result<ChangeEvent, Error> {
    let mut d = Decoder {
        wire: Wire::new(datum),
    };
    let read = d.event().and_then(|event| {
        d.wire.end().map_err(Refused::Wire)?;
        Ok(event)
    });
    read.map_err(|e| match e {
        Refused::Wire(e) => Error::InvalidDatum {
            version,
            offset: e.offset,
            reason: e.reason,
        },
        Refused::Field(field, value) => Error::UnexpectedShape {
            field,
            detail: format!("{value} is out of range for an unsigned 32-bit integer"),
        },
    })
}

/// Why a datum does not decode.
enum Refused {
    /// Not well-formed (see [`Wire`]).
    Wire(WireError),
    /// Well-formed, but this field's integer does not fit the event.
    Field(&'static str, i64),
}

impl From<WireError> for Refused {
    fn from(e: WireError) -> Self {
        Refused::Wire(e)
    }
}

struct Decoder<'a> {
    wire: Wire<'a>,
}

impl Decoder<'_> {
    fn event(&mut self) -> Result<ChangeEvent, Refused> {
        Ok(ChangeEvent {
            source: self.string()?,
            database: self.string()?,
            schema: self.string()?,
            table: self.string()?,
            op: match self.wire.symbol(5)? {
                0 => Op::Insert,
                1 => Op::Update,
                2 => Op::Delete,
                3 => Op::Truncate,
                _ => Op::Read,
            },
            key: self.columns()?,
            before: self.optional(Self::columns)?,
            after: self.optional(Self::columns)?,
            transaction: self.transaction()?,
            marker: self.optional(Self::string)?,
            origin: self.optional(Self::string)?,
            mode: match self.wire.symbol(3)? {
                0 => CaptureMode::Streaming,
                1 => CaptureMode::Polling,
                _ => CaptureMode::Snapshot,
            },
            captured_at_micros: self.wire.long()?,
            clock: self.optional(|d| {
                Ok(Clock {
                    seconds: d.wire.long()?,
                    tick: d.wire.long()?,
                })
            })?,
        })
    }

    fn transaction(&mut self) -> Result<Transaction, Refused> {
        Ok(Transaction {
            xid: self.u32("Transaction.xid")?,
            commit_lsn: self.wire.long()? as u64,
            commit_time_micros: self.wire.long()?,
            position: self.wire.long()? as u64,
            last: self.wire.boolean()?,
            event_count: self.optional(|d| Ok(d.wire.long()? as u64))?,
        })
    }

    /// An array of `Column` records.
    fn columns(&mut self) -> Result<Vec<Column>, Refused> {
        let mut columns = Vec::new();
        while let Some(count) = self.wire.block()? {
            columns.reserve(count);
            for _ in 0..count {
                columns.push(Column {
                    name: self.string()?,
                    type_name: self.string()?,
                    type_oid: self.u32("Column.type_oid")?,
                    // The column list is the first array level.
                    value: self.value(1)?,
                });
            }
        }
        Ok(columns)
    }

    /// A `Column.value` union inside `arrays` levels of Avro arrays.
    fn value(&mut self, arrays: usize) -> Result<Value, Refused> {
        Ok(match self.wire.branch(branch::ARRAY as usize + 1)? as i64 {
            branch::NULL => Value::Null,
            // Record `Unchanged`: one field of type null, no bytes.
            branch::UNCHANGED => Value::Unchanged,
            branch::BOOLEAN => Value::Bool(self.wire.boolean()?),
            branch::LONG => Value::Int(self.wire.long()?),
            branch::DOUBLE => Value::Float(f64::from_le_bytes(self.fixed::<8>()?)),
            branch::NUMERIC => Value::Numeric(self.string()?),
            branch::STRING => Value::Text(self.string()?),
            branch::BYTES => {
                let n = self.wire.len()?;
                Value::Bytes(self.wire.take(n)?.to_vec())
            }
            branch::TIMESTAMP => Value::Timestamp(self.wire.long()?),
            branch::TIMESTAMP_TZ => Value::TimestampTz(self.wire.long()?),
            branch::DATE => Value::Date(self.wire.int()?),
            branch::TIME => Value::Time(self.wire.long()?),
            branch::UUID => Value::Uuid(self.fixed::<16>()?),
            branch::JSON => Value::Json(self.string()?),
            _ => {
                let depth = arrays + 1;
                if depth > MAX_ARRAY_DEPTH + 1 {
                    return Err(self
                        .wire
                        .error("arrays nested deeper than MAX_ARRAY_DEPTH")
                        .into());
                }
                let mut items = Vec::new();
                while let Some(count) = self.wire.block()? {
                    items.reserve(count);
                    for _ in 0..count {
                        items.push(self.value(depth)?);
                    }
                }
                Value::Array(items)
            }
        })
    }

    /// A `["null", T]` union.
    fn optional<T>(
        &mut self,
        read: impl FnOnce(&mut Self) -> Result<T, Refused>,
    ) -> Result<Option<T>, Refused> {
        match self.wire.branch(2)? {
            0 => Ok(None),
            _ => read(self).map(Some),
        }
    }

    fn fixed<const N: usize>(&mut self) -> Result<[u8; N], Refused> {
        let at = self.wire.pos();
        let bytes = self.wire.take(N)?;
        <[u8; N]>::try_from(bytes).map_err(|_| self.wire.error_at(at, "truncated").into())
    }

    fn string(&mut self) -> Result<String, Refused> {
        let at = self.wire.pos();
        let n = self.wire.len()?;
        let bytes = self.wire.take(n)?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| self.wire.error_at(at, "string is not UTF-8").into())
    }

    /// A long that must fit a `u32` (`field` names it in the error).
    fn u32(&mut self, field: &'static str) -> Result<u32, Refused> {
        let v = self.wire.long()?;
        u32::try_from(v).map_err(|_| Refused::Field(field, v))
    }
}
