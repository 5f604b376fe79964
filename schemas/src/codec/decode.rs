//! The hand-written Avro binary decoder for the current schema (v2): the
//! inverse of `encode.rs`.
//!
//! Data written with the current schema (nearly all of it) is read here
//! straight into a [`ChangeEvent`]; apache-avro would build a generic value
//! tree first (a name and an allocation per record field) and look named
//! types up by name on the way, which made decoding some 30 times slower
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

use super::{branch, MAX_ARRAY_DEPTH};
use crate::{CaptureMode, ChangeEvent, Column, Error, Op, Transaction, Value};

/// Reads the datum of one event written with the current schema (no
/// header). `version` only labels errors.
pub(super) fn event(datum: &[u8], version: u32) -> Result<ChangeEvent, Error> {
    let mut d = Decoder {
        buf: datum,
        pos: 0,
        version,
    };
    let event = d.event()?;
    if d.pos != datum.len() {
        return Err(d.invalid(d.pos, "trailing bytes after the datum"));
    }
    Ok(event)
}

struct Decoder<'a> {
    buf: &'a [u8],
    pos: usize,
    version: u32,
}

impl Decoder<'_> {
    fn invalid(&self, offset: usize, reason: &'static str) -> Error {
        Error::InvalidDatum {
            version: self.version,
            offset,
            reason,
        }
    }

    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn event(&mut self) -> Result<ChangeEvent, Error> {
        Ok(ChangeEvent {
            source: self.string()?,
            database: self.string()?,
            schema: self.string()?,
            table: self.string()?,
            op: match self.enum_index(5)? {
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
            mode: match self.enum_index(3)? {
                0 => CaptureMode::Streaming,
                1 => CaptureMode::Polling,
                _ => CaptureMode::Snapshot,
            },
            captured_at_micros: self.long()?,
        })
    }

    fn transaction(&mut self) -> Result<Transaction, Error> {
        Ok(Transaction {
            xid: u32_field(self.long()?, "Transaction.xid")?,
            commit_lsn: self.long()? as u64,
            commit_time_micros: self.long()?,
            position: self.long()? as u64,
            last: self.boolean()?,
            event_count: self.optional(|d| d.long().map(|n| n as u64))?,
        })
    }

    /// An array of `Column` records.
    fn columns(&mut self) -> Result<Vec<Column>, Error> {
        let mut columns = Vec::new();
        while let Some(count) = self.block()? {
            columns.reserve(count);
            for _ in 0..count {
                columns.push(Column {
                    name: self.string()?,
                    type_name: self.string()?,
                    type_oid: u32_field(self.long()?, "Column.type_oid")?,
                    // The column list is the first array level.
                    value: self.value(1)?,
                });
            }
        }
        Ok(columns)
    }

    /// A `Column.value` union inside `arrays` levels of Avro arrays.
    fn value(&mut self, arrays: usize) -> Result<Value, Error> {
        let at = self.pos;
        Ok(match self.long()? {
            branch::NULL => Value::Null,
            // Record `Unchanged`: one field of type null, no bytes.
            branch::UNCHANGED => Value::Unchanged,
            branch::BOOLEAN => Value::Bool(self.boolean()?),
            branch::LONG => Value::Int(self.long()?),
            branch::DOUBLE => Value::Float(f64::from_le_bytes(self.fixed::<8>()?)),
            branch::NUMERIC => Value::Numeric(self.string()?),
            branch::STRING => Value::Text(self.string()?),
            branch::BYTES => {
                let n = self.len()?;
                Value::Bytes(self.take(n)?.to_vec())
            }
            branch::TIMESTAMP => Value::Timestamp(self.long()?),
            branch::TIMESTAMP_TZ => Value::TimestampTz(self.long()?),
            branch::DATE => Value::Date(self.int()?),
            branch::TIME => Value::Time(self.long()?),
            branch::UUID => Value::Uuid(self.fixed::<16>()?),
            branch::JSON => Value::Json(self.string()?),
            branch::ARRAY => {
                let depth = arrays + 1;
                if depth > MAX_ARRAY_DEPTH + 1 {
                    return Err(self.invalid(self.pos, "arrays nested deeper than MAX_ARRAY_DEPTH"));
                }
                let mut items = Vec::new();
                while let Some(count) = self.block()? {
                    items.reserve(count);
                    for _ in 0..count {
                        items.push(self.value(depth)?);
                    }
                }
                Value::Array(items)
            }
            _ => return Err(self.invalid(at, "union branch out of range")),
        })
    }

    /// A `["null", T]` union.
    fn optional<T>(
        &mut self,
        read: impl FnOnce(&mut Self) -> Result<T, Error>,
    ) -> Result<Option<T>, Error> {
        let at = self.pos;
        match self.long()? {
            0 => Ok(None),
            1 => read(self).map(Some),
            _ => Err(self.invalid(at, "union branch out of range")),
        }
    }

    fn enum_index(&mut self, symbols: usize) -> Result<usize, Error> {
        let at = self.pos;
        let index = self.int()?;
        usize::try_from(index)
            .ok()
            .filter(|i| *i < symbols)
            .ok_or_else(|| self.invalid(at, "enum index out of range"))
    }

    fn byte(&mut self) -> Result<u8, Error> {
        let b = *self
            .buf
            .get(self.pos)
            .ok_or_else(|| self.invalid(self.pos, "truncated"))?;
        self.pos += 1;
        Ok(b)
    }

    fn take(&mut self, n: usize) -> Result<&[u8], Error> {
        if n > self.remaining() {
            return Err(self.invalid(self.pos, "truncated"));
        }
        let bytes = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(bytes)
    }

    fn fixed<const N: usize>(&mut self) -> Result<[u8; N], Error> {
        let at = self.pos;
        let bytes = self.take(N)?;
        <[u8; N]>::try_from(bytes).map_err(|_| self.invalid(at, "truncated"))
    }

    fn boolean(&mut self) -> Result<bool, Error> {
        match self.byte()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(self.invalid(self.pos - 1, "boolean byte is neither 0 nor 1")),
        }
    }

    /// A zig-zag varint, read like apache-avro reads it: at most 10 bytes,
    /// bits beyond 64 dropped.
    fn long(&mut self) -> Result<i64, Error> {
        let mut z = 0u64;
        for i in 0..10 {
            let b = self.byte()?;
            z |= u64::from(b & 0x7f) << (i * 7);
            if b & 0x80 == 0 {
                let magnitude = (z >> 1) as i64;
                return Ok(if z & 1 == 0 { magnitude } else { !magnitude });
            }
        }
        Err(self.invalid(self.pos, "varint longer than 10 bytes"))
    }

    fn int(&mut self) -> Result<i32, Error> {
        let at = self.pos;
        let v = self.long()?;
        i32::try_from(v).map_err(|_| self.invalid(at, "int out of range"))
    }

    /// A byte length: not negative, and at most the bytes left.
    fn len(&mut self) -> Result<usize, Error> {
        let at = self.pos;
        let v = self.long()?;
        let n = usize::try_from(v).map_err(|_| self.invalid(at, "negative length"))?;
        if n > self.remaining() {
            return Err(self.invalid(at, "length exceeds the remaining bytes"));
        }
        Ok(n)
    }

    fn string(&mut self) -> Result<String, Error> {
        let at = self.pos;
        let n = self.len()?;
        let bytes = self.take(n)?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| self.invalid(at, "string is not UTF-8"))
    }

    /// The item count of the next array block, `None` at the end. A
    /// negative count is followed by the block's byte size.
    fn block(&mut self) -> Result<Option<usize>, Error> {
        let at = self.pos;
        let count = self.long()?;
        if count == 0 {
            return Ok(None);
        }
        let count = if count < 0 {
            let size = self.long()?;
            if size < 0 {
                return Err(self.invalid(self.pos, "negative block size"));
            }
            count
                .checked_neg()
                .ok_or_else(|| self.invalid(at, "block count overflows"))?
        } else {
            count
        };
        match usize::try_from(count) {
            Ok(n) if n <= self.remaining() => Ok(Some(n)),
            _ => Err(self.invalid(at, "block count exceeds the remaining bytes")),
        }
    }
}

fn u32_field(v: i64, field: &'static str) -> Result<u32, Error> {
    u32::try_from(v).map_err(|_| Error::UnexpectedShape {
        field,
        detail: format!("{v} is out of range for an unsigned 32-bit integer"),
    })
}
