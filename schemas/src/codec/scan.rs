//! The structural check run on every datum before apache-avro decodes it.
//!
//! It walks the datum against the writer schema without allocating, reading
//! every varint, length, count, union branch and enum index exactly as
//! apache-avro 0.22's decoder does (same varint rules, same branch choices),
//! so a datum that passes takes the same path through apache-avro: with
//! bounded recursion, with every length and count backed by bytes that are
//! really there, and ending exactly at the end of the message.

use std::collections::HashMap;

use apache_avro::schema::{Name, NamespaceRef};
use apache_avro::Schema;

use super::MAX_ARRAY_DEPTH;

/// Why and where a datum was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ScanError {
    pub offset: usize,
    pub reason: &'static str,
}

/// How deep Avro arrays may nest in a datum: the column list of
/// `key`/`before`/`after` is one, each nested [`Value::Array`] one more.
///
/// [`Value::Array`]: crate::Value::Array
const MAX_AVRO_ARRAY_DEPTH: usize = MAX_ARRAY_DEPTH + 1;

/// How deep the walk may recurse through the schema at all. This contract
/// reaches about 40 at [`MAX_ARRAY_DEPTH`]; the limit only matters for a
/// future schema that recurses without arrays (a record holding itself
/// through a union).
const MAX_LEVEL: usize = 128;

/// Checks that `datum` is exactly one well-formed value of `schema`.
pub(super) fn check(
    datum: &[u8],
    schema: &Schema,
    names: &HashMap<Name, Schema>,
) -> Result<(), ScanError> {
    let mut scan = Scanner {
        buf: datum,
        pos: 0,
        level: 0,
        names,
    };
    scan.value(schema, None, 0)?;
    if scan.pos != datum.len() {
        return Err(scan.error("trailing bytes after the datum"));
    }
    Ok(())
}

/// Collects the named types of `schema` by full name. Fails, naming the
/// construct, on schema types the scanner does not handle, so a schema
/// version using them is refused when the codec is built, not when data
/// arrives.
pub(super) fn collect_names(
    schema: &Schema,
    namespace: NamespaceRef,
    names: &mut HashMap<Name, Schema>,
) -> Result<(), &'static str> {
    match schema {
        Schema::Null
        | Schema::Boolean
        | Schema::Int
        | Schema::Long
        | Schema::Float
        | Schema::Double
        | Schema::Bytes
        | Schema::String
        | Schema::Date
        | Schema::TimeMillis
        | Schema::TimeMicros
        | Schema::TimestampMillis
        | Schema::TimestampMicros
        | Schema::TimestampNanos
        | Schema::LocalTimestampMillis
        | Schema::LocalTimestampMicros
        | Schema::LocalTimestampNanos
        | Schema::Ref { .. } => Ok(()),
        Schema::Array(array) => collect_names(&array.items, namespace, names),
        Schema::Map(map) => collect_names(&map.types, namespace, names),
        Schema::Union(union) => union
            .variants()
            .iter()
            .try_for_each(|v| collect_names(v, namespace, names)),
        Schema::Record(record) => {
            let name = record.name.fully_qualified_name(namespace).into_owned();
            let inner = name.namespace().map(str::to_owned);
            names.insert(name, schema.clone());
            record
                .fields
                .iter()
                .try_for_each(|f| collect_names(&f.schema, inner.as_deref(), names))
        }
        Schema::Enum(e) => {
            names.insert(
                e.name.fully_qualified_name(namespace).into_owned(),
                schema.clone(),
            );
            Ok(())
        }
        Schema::Fixed(f) => {
            names.insert(
                f.name.fully_qualified_name(namespace).into_owned(),
                schema.clone(),
            );
            Ok(())
        }
        Schema::Decimal(_) => Err("the decimal logical type"),
        Schema::BigDecimal => Err("the big-decimal logical type"),
        Schema::Uuid(_) => Err("the uuid logical type"),
        Schema::Duration(_) => Err("the duration logical type"),
    }
}

struct Scanner<'a> {
    buf: &'a [u8],
    pos: usize,
    /// The current recursion depth.
    level: usize,
    names: &'a HashMap<Name, Schema>,
}

impl Scanner<'_> {
    fn error(&self, reason: &'static str) -> ScanError {
        ScanError {
            offset: self.pos,
            reason,
        }
    }

    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn byte(&mut self) -> Result<u8, ScanError> {
        let b = *self
            .buf
            .get(self.pos)
            .ok_or_else(|| self.error("truncated"))?;
        self.pos += 1;
        Ok(b)
    }

    fn skip(&mut self, n: usize) -> Result<(), ScanError> {
        if n > self.remaining() {
            return Err(self.error("truncated"));
        }
        self.pos += n;
        Ok(())
    }

    /// A zig-zag varint, read like apache-avro reads it: at most 10 bytes,
    /// bits beyond 64 dropped.
    fn long(&mut self) -> Result<i64, ScanError> {
        let mut z = 0u64;
        for i in 0..10 {
            let b = self.byte()?;
            z |= u64::from(b & 0x7f) << (i * 7);
            if b & 0x80 == 0 {
                let magnitude = (z >> 1) as i64;
                return Ok(if z & 1 == 0 { magnitude } else { !magnitude });
            }
        }
        Err(self.error("varint longer than 10 bytes"))
    }

    fn int(&mut self) -> Result<i32, ScanError> {
        let at = self.pos;
        let v = self.long()?;
        i32::try_from(v).map_err(|_| ScanError {
            offset: at,
            reason: "int out of range",
        })
    }

    /// A length or count: not negative, and at most the bytes left (every
    /// byte string needs its bytes; every array item of this contract needs
    /// at least one byte).
    fn len(
        &mut self,
        what_negative: &'static str,
        what_too_long: &'static str,
    ) -> Result<usize, ScanError> {
        let at = self.pos;
        let v = self.long()?;
        let err = |reason| ScanError { offset: at, reason };
        let n = usize::try_from(v).map_err(|_| err(what_negative))?;
        if n > self.remaining() {
            return Err(err(what_too_long));
        }
        Ok(n)
    }

    fn value(&mut self, schema: &Schema, ns: NamespaceRef, arrays: usize) -> Result<(), ScanError> {
        if self.level == MAX_LEVEL {
            return Err(self.error("schema recursion too deep"));
        }
        self.level += 1;
        let result = self.value_inner(schema, ns, arrays);
        self.level -= 1;
        result
    }

    fn value_inner(
        &mut self,
        schema: &Schema,
        ns: NamespaceRef,
        arrays: usize,
    ) -> Result<(), ScanError> {
        match schema {
            Schema::Null => Ok(()),
            Schema::Boolean => match self.byte()? {
                0 | 1 => Ok(()),
                _ => Err(ScanError {
                    offset: self.pos - 1,
                    reason: "boolean byte is neither 0 nor 1",
                }),
            },
            Schema::Int | Schema::Date | Schema::TimeMillis => self.int().map(drop),
            Schema::Long
            | Schema::TimeMicros
            | Schema::TimestampMillis
            | Schema::TimestampMicros
            | Schema::TimestampNanos
            | Schema::LocalTimestampMillis
            | Schema::LocalTimestampMicros
            | Schema::LocalTimestampNanos => self.long().map(drop),
            Schema::Float => self.skip(4),
            Schema::Double => self.skip(8),
            Schema::Bytes | Schema::String => {
                let n = self.len("negative length", "length exceeds the remaining bytes")?;
                self.skip(n)
            }
            Schema::Fixed(fixed) => self.skip(fixed.size),
            Schema::Enum(e) => {
                let at = self.pos;
                let index = self.int()?;
                if usize::try_from(index).is_ok_and(|i| i < e.symbols.len()) {
                    Ok(())
                } else {
                    Err(ScanError {
                        offset: at,
                        reason: "enum index out of range",
                    })
                }
            }
            Schema::Union(union) => {
                let at = self.pos;
                let index = self.long()?;
                let variant = usize::try_from(index)
                    .ok()
                    .and_then(|i| union.variants().get(i))
                    .ok_or(ScanError {
                        offset: at,
                        reason: "union branch out of range",
                    })?;
                self.value(variant, ns, arrays)
            }
            Schema::Record(record) => {
                let name = record.name.fully_qualified_name(ns);
                let inner = name.namespace();
                record
                    .fields
                    .iter()
                    .try_for_each(|f| self.value(&f.schema, inner, arrays))
            }
            Schema::Array(array) => {
                let depth = arrays + 1;
                if depth > MAX_AVRO_ARRAY_DEPTH {
                    return Err(self.error("arrays nested deeper than MAX_ARRAY_DEPTH"));
                }
                while let Some(count) = self.block()? {
                    for _ in 0..count {
                        self.value(&array.items, ns, depth)?;
                    }
                }
                Ok(())
            }
            Schema::Map(map) => {
                while let Some(count) = self.block()? {
                    for _ in 0..count {
                        self.value(&Schema::String, ns, arrays)?;
                        self.value(&map.types, ns, arrays)?;
                    }
                }
                Ok(())
            }
            Schema::Ref { name } => {
                let name = name.fully_qualified_name(ns);
                let target = self
                    .names
                    .get(name.as_ref())
                    .ok_or_else(|| self.error("reference to an unknown schema name"))?;
                self.value(target, name.namespace(), arrays)
            }
            // `collect_names` refuses schemas using these when the codec is
            // built, so a schema the codec holds never reaches here.
            Schema::Decimal(_) | Schema::BigDecimal | Schema::Uuid(_) | Schema::Duration(_) => {
                Err(self.error("schema type not supported by the scanner"))
            }
        }
    }

    /// The item count of the next array or map block, `None` at the end.
    /// A negative count is followed by the block's byte size, as apache-avro
    /// reads it.
    fn block(&mut self) -> Result<Option<usize>, ScanError> {
        let at = self.pos;
        let count = self.long()?;
        if count == 0 {
            return Ok(None);
        }
        let count = if count < 0 {
            let size = self.long()?;
            if size < 0 {
                return Err(self.error("negative block size"));
            }
            count.checked_neg().ok_or(ScanError {
                offset: at,
                reason: "block count overflows",
            })?
        } else {
            count
        };
        match usize::try_from(count) {
            Ok(n) if n <= self.remaining() => Ok(Some(n)),
            _ => Err(ScanError {
                offset: at,
                reason: "block count exceeds the remaining bytes",
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn scan(schema: &str, datum: &[u8]) -> Result<(), ScanError> {
        let schema = Schema::parse_str(schema).unwrap();
        let mut names = HashMap::new();
        collect_names(&schema, None, &mut names).unwrap();
        check(datum, &schema, &names)
    }

    #[test]
    fn varints_are_read_like_apache_avro() {
        assert!(scan(r#""long""#, &[0x00]).is_ok());
        assert!(scan(
            r#""long""#,
            &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]
        )
        .is_ok());
        // Bits beyond 64 in the tenth byte are dropped, as apache-avro does.
        assert!(scan(
            r#""long""#,
            &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]
        )
        .is_ok());
        assert_eq!(
            scan(r#""long""#, &[0x80; 11]).unwrap_err().reason,
            "varint longer than 10 bytes"
        );
        assert_eq!(scan(r#""long""#, &[0x80]).unwrap_err().reason, "truncated");
        assert_eq!(
            scan(r#""int""#, &[0x80, 0x80, 0x80, 0x80, 0x10])
                .unwrap_err()
                .reason,
            "int out of range"
        );
        assert_eq!(
            scan(r#""long""#, &[0x00, 0x00]).unwrap_err().reason,
            "trailing bytes after the datum"
        );
    }

    #[test]
    fn lengths_and_counts_must_fit_the_remaining_bytes() {
        assert!(scan(r#""string""#, &[0x04, b'h', b'i']).is_ok());
        assert_eq!(
            scan(r#""string""#, &[0x06, b'h', b'i']).unwrap_err().reason,
            "length exceeds the remaining bytes"
        );
        assert_eq!(
            scan(r#""bytes""#, &[0x01]).unwrap_err().reason,
            "negative length"
        );
        let array = r#"{"type":"array","items":"boolean"}"#;
        assert!(scan(array, &[0x04, 0x01, 0x00, 0x00]).is_ok());
        // Negative count: two items in a block of two bytes.
        assert!(scan(array, &[0x03, 0x04, 0x01, 0x00, 0x00]).is_ok());
        assert_eq!(
            scan(array, &[0xfe, 0xff, 0xff, 0xff, 0x0f, 0x01])
                .unwrap_err()
                .reason,
            "block count exceeds the remaining bytes"
        );
        assert_eq!(
            scan(array, &[0x04, 0x01, 0x02, 0x00]).unwrap_err().reason,
            "boolean byte is neither 0 nor 1"
        );
    }

    #[test]
    fn union_and_enum_indexes_must_be_in_range() {
        assert!(scan(r#"["null","long"]"#, &[0x02, 0x02]).is_ok());
        assert_eq!(
            scan(r#"["null","long"]"#, &[0x04]).unwrap_err().reason,
            "union branch out of range"
        );
        assert_eq!(
            scan(r#"["null","long"]"#, &[0x01]).unwrap_err().reason,
            "union branch out of range"
        );
        let e = r#"{"type":"enum","name":"E","symbols":["A","B"]}"#;
        assert!(scan(e, &[0x02]).is_ok());
        assert_eq!(
            scan(e, &[0x04]).unwrap_err().reason,
            "enum index out of range"
        );
    }

    #[test]
    fn array_nesting_is_bounded() {
        let nested = r#"{"type":"record","name":"A","fields":[
            {"name":"e","type":{"type":"array","items":["null","A"]}}]}"#;
        let datum = |depth: usize| {
            // `depth` arrays, each holding one nested record, the innermost
            // holding one null.
            let mut d = Vec::new();
            for _ in 0..depth - 1 {
                d.extend([0x02, 0x02]);
            }
            d.extend([0x02, 0x00]);
            d.extend(std::iter::repeat_n(0x00, depth));
            d
        };
        assert!(scan(nested, &datum(MAX_AVRO_ARRAY_DEPTH)).is_ok());
        assert_eq!(
            scan(nested, &datum(MAX_AVRO_ARRAY_DEPTH + 1))
                .unwrap_err()
                .reason,
            "arrays nested deeper than MAX_ARRAY_DEPTH"
        );
        assert!(scan(nested, &datum(1_000_000)).is_err());
    }

    #[test]
    fn recursion_without_arrays_is_bounded() {
        let list = r#"{"type":"record","name":"L","fields":[{"name":"next","type":["null","L"]}]}"#;
        assert!(scan(list, &[0x02, 0x02, 0x00]).is_ok());
        assert_eq!(
            scan(list, &[0x02; 100_000]).unwrap_err().reason,
            "schema recursion too deep"
        );
    }

    #[test]
    fn unsupported_logical_types_are_refused_up_front() {
        let schema = Schema::parse_str(r#"{"type":"string","logicalType":"uuid"}"#).unwrap();
        assert!(collect_names(&schema, None, &mut HashMap::new()).is_err());
    }
}
