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

use super::wire::{Wire, WireError};
use super::MAX_ARRAY_DEPTH;

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
) -> Result<(), WireError> {
    let mut scan = Scanner {
        wire: Wire::new(datum),
        level: 0,
        names,
    };
    scan.value(schema, None, 0)?;
    scan.wire.end()
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
    wire: Wire<'a>,
    /// The current recursion depth.
    level: usize,
    names: &'a HashMap<Name, Schema>,
}

impl Scanner<'_> {
    fn value(&mut self, schema: &Schema, ns: NamespaceRef, arrays: usize) -> Result<(), WireError> {
        if self.level == MAX_LEVEL {
            return Err(self.wire.error("schema recursion too deep"));
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
    ) -> Result<(), WireError> {
        match schema {
            Schema::Null => Ok(()),
            Schema::Boolean => self.wire.boolean().map(drop),
            Schema::Int | Schema::Date | Schema::TimeMillis => self.wire.int().map(drop),
            Schema::Long
            | Schema::TimeMicros
            | Schema::TimestampMillis
            | Schema::TimestampMicros
            | Schema::TimestampNanos
            | Schema::LocalTimestampMillis
            | Schema::LocalTimestampMicros
            | Schema::LocalTimestampNanos => self.wire.long().map(drop),
            Schema::Float => self.wire.take(4).map(drop),
            Schema::Double => self.wire.take(8).map(drop),
            Schema::Bytes | Schema::String => {
                let n = self.wire.len()?;
                self.wire.take(n).map(drop)
            }
            Schema::Fixed(fixed) => self.wire.take(fixed.size).map(drop),
            Schema::Enum(e) => self.wire.symbol(e.symbols.len()).map(drop),
            Schema::Union(union) => {
                let variants = union.variants();
                let index = self.wire.branch(variants.len())?;
                self.value(&variants[index], ns, arrays)
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
                    return Err(self.wire.error("arrays nested deeper than MAX_ARRAY_DEPTH"));
                }
                while let Some(count) = self.wire.block()? {
                    for _ in 0..count {
                        self.value(&array.items, ns, depth)?;
                    }
                }
                Ok(())
            }
            Schema::Map(map) => {
                while let Some(count) = self.wire.block()? {
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
                    .ok_or_else(|| self.wire.error("reference to an unknown schema name"))?;
                self.value(target, name.namespace(), arrays)
            }
            // `collect_names` refuses schemas using these when the codec is
            // built, so a schema the codec holds never reaches here.
            Schema::Decimal(_) | Schema::BigDecimal | Schema::Uuid(_) | Schema::Duration(_) => {
                Err(self.wire.error("schema type not supported by the scanner"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn scan(schema: &str, datum: &[u8]) -> Result<(), WireError> {
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
