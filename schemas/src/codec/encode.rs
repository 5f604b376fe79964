//! The hand-written Avro binary encoder for the current schema (v3).
//!
//! It writes straight into the output buffer, field by field in schema
//! order, following the Avro binary encoding: `int`/`long` as zig-zag
//! varints, strings and bytes as a length then the bytes, a union as its
//! branch index (a `long`) then the value, an enum as its symbol index (an
//! `int`), an array as one block (item count, items) then a 0 count, a
//! boolean as one byte, a double as 8 little-endian bytes, a fixed as its
//! bytes, a record as its fields in order. `tests/contract.rs` checks it
//! against apache-avro's own encoder.

use super::branch;
use crate::{CaptureMode, ChangeEvent, Clock, Column, Op, Transaction, Value};

/// Writes the datum of `e` (no header).
pub(super) fn event(out: &mut Vec<u8>, e: &ChangeEvent) {
    string(out, &e.source);
    string(out, &e.database);
    string(out, &e.schema);
    string(out, &e.table);
    long(out, op_index(e.op));
    columns(out, &e.key);
    optional_columns(out, e.before.as_deref());
    optional_columns(out, e.after.as_deref());
    transaction(out, &e.transaction);
    optional_string(out, e.marker.as_deref());
    optional_string(out, e.origin.as_deref());
    long(out, mode_index(e.mode));
    long(out, e.captured_at_micros);
    optional_clock(out, e.clock);
}

/// A rough upper bound of the datum's size, so `encode` allocates once in
/// the common case.
pub(super) fn size_hint(e: &ChangeEvent) -> usize {
    fn columns(cols: &[Column]) -> usize {
        cols.iter()
            .map(|c| {
                let value = match &c.value {
                    Value::Numeric(s) | Value::Text(s) | Value::Json(s) => s.len(),
                    Value::Bytes(b) => b.len(),
                    Value::Array(items) => 16 * items.len(),
                    _ => 0,
                };
                24 + c.name.len() + c.type_name.len() + value
            })
            .sum()
    }
    96 + e.source.len()
        + e.database.len()
        + e.schema.len()
        + e.table.len()
        + columns(&e.key)
        + e.before.as_deref().map_or(0, columns)
        + e.after.as_deref().map_or(0, columns)
        + e.marker.as_ref().map_or(0, String::len)
        + e.origin.as_ref().map_or(0, String::len)
        // The clock's two longs, of up to 10 bytes each.
        + e.clock.map_or(0, |_| 20)
}

fn op_index(op: Op) -> i64 {
    // The order of the symbols of enum `Op`.
    match op {
        Op::Insert => 0,
        Op::Update => 1,
        Op::Delete => 2,
        Op::Truncate => 3,
        Op::Read => 4,
    }
}

fn mode_index(mode: CaptureMode) -> i64 {
    // The order of the symbols of enum `CaptureMode`.
    match mode {
        CaptureMode::Streaming => 0,
        CaptureMode::Polling => 1,
        CaptureMode::Snapshot => 2,
    }
}

fn transaction(out: &mut Vec<u8>, t: &Transaction) {
    long(out, i64::from(t.xid));
    long(out, u64_bits(t.commit_lsn));
    long(out, t.commit_time_micros);
    long(out, u64_bits(t.position));
    out.push(u8::from(t.last));
    match t.event_count {
        None => long(out, 0),
        Some(n) => {
            long(out, 1);
            long(out, u64_bits(n));
        }
    }
}

fn optional_clock(out: &mut Vec<u8>, clock: Option<Clock>) {
    match clock {
        None => long(out, 0),
        Some(c) => {
            long(out, 1);
            long(out, c.seconds);
            long(out, c.tick);
        }
    }
}

fn optional_string(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        None => long(out, 0),
        Some(s) => {
            long(out, 1);
            string(out, s);
        }
    }
}

fn optional_columns(out: &mut Vec<u8>, cols: Option<&[Column]>) {
    match cols {
        None => long(out, 0),
        Some(cols) => {
            long(out, 1);
            columns(out, cols);
        }
    }
}

fn columns(out: &mut Vec<u8>, cols: &[Column]) {
    if !cols.is_empty() {
        long(out, len(cols.len()));
        for c in cols {
            string(out, &c.name);
            string(out, &c.type_name);
            long(out, i64::from(c.type_oid));
            value(out, &c.value);
        }
    }
    long(out, 0);
}

fn value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Null => long(out, branch::NULL),
        // Record `Unchanged` has a single field of type null: no bytes.
        Value::Unchanged => long(out, branch::UNCHANGED),
        Value::Bool(b) => {
            long(out, branch::BOOLEAN);
            out.push(u8::from(*b));
        }
        Value::Int(i) => {
            long(out, branch::LONG);
            long(out, *i);
        }
        Value::Float(f) => {
            long(out, branch::DOUBLE);
            out.extend_from_slice(&f.to_le_bytes());
        }
        Value::Numeric(s) => {
            long(out, branch::NUMERIC);
            string(out, s);
        }
        Value::Text(s) => {
            long(out, branch::STRING);
            string(out, s);
        }
        Value::Bytes(b) => {
            long(out, branch::BYTES);
            bytes(out, b);
        }
        Value::Timestamp(t) => {
            long(out, branch::TIMESTAMP);
            long(out, *t);
        }
        Value::TimestampTz(t) => {
            long(out, branch::TIMESTAMP_TZ);
            long(out, *t);
        }
        Value::Date(d) => {
            long(out, branch::DATE);
            // An Avro int is the same zig-zag varint as a long of equal value.
            long(out, i64::from(*d));
        }
        Value::Time(t) => {
            long(out, branch::TIME);
            long(out, *t);
        }
        Value::Uuid(u) => {
            long(out, branch::UUID);
            out.extend_from_slice(u);
        }
        Value::Json(s) => {
            long(out, branch::JSON);
            string(out, s);
        }
        Value::Array(items) => {
            long(out, branch::ARRAY);
            if !items.is_empty() {
                long(out, len(items.len()));
                for item in items {
                    value(out, item);
                }
            }
            long(out, 0);
        }
    }
}

fn string(out: &mut Vec<u8>, s: &str) {
    bytes(out, s.as_bytes());
}

fn bytes(out: &mut Vec<u8>, b: &[u8]) {
    long(out, len(b.len()));
    out.extend_from_slice(b);
}

/// A zig-zag varint.
#[inline]
fn long(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    if z < 0x80 {
        out.push(z as u8);
        return;
    }
    let mut buf = [0u8; 10];
    let mut n = 0;
    while z >= 0x80 {
        buf[n] = (z as u8) | 0x80;
        z >>= 7;
        n += 1;
    }
    buf[n] = z as u8;
    out.extend_from_slice(&buf[..=n]);
}

/// A length as an Avro long. Lossless: a Rust allocation never exceeds
/// `isize::MAX` bytes.
#[inline]
fn len(n: usize) -> i64 {
    n as i64
}

/// A `u64` carried bit for bit in an Avro (signed) long; values of 2^63 and
/// above look negative to other Avro readers.
#[inline]
fn u64_bits(v: u64) -> i64 {
    v as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(v: i64) -> Vec<u8> {
        let mut out = Vec::new();
        long(&mut out, v);
        out
    }

    #[test]
    fn longs_are_zig_zag_varints() {
        assert_eq!(varint(0), [0x00]);
        assert_eq!(varint(-1), [0x01]);
        assert_eq!(varint(1), [0x02]);
        assert_eq!(varint(-64), [0x7f]);
        assert_eq!(varint(64), [0x80, 0x01]);
        assert_eq!(varint(150), [0xac, 0x02]);
        assert_eq!(
            varint(i64::MAX),
            [0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]
        );
        assert_eq!(
            varint(i64::MIN),
            [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]
        );
    }

    #[test]
    fn u64_values_survive_the_round_trip_through_long() {
        for v in [0, 1, u64::from(u32::MAX), 1 << 63, u64::MAX] {
            assert_eq!(u64_bits(v) as u64, v);
        }
    }
}
