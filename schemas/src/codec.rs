//! Avro single-object encoding of [`ChangeEvent`]s.
//!
//! [`Codec::encode`] writes `C3 01`, the current schema's fingerprint and the
//! event's Avro binary datum, with a hand-written encoder (no intermediate
//! `apache_avro::types::Value`): capture encodes every row change, so this
//! path is kept allocation-free apart from the output buffer.
//!
//! [`Codec::decode`] reads the header and finds the writer schema by
//! fingerprint among all [`VERSIONS`]. Data of the current version is read
//! by a hand-written decoder straight into a [`ChangeEvent`] (`decode.rs`,
//! the inverse of the hand-written encoder; it accepts exactly what the path
//! below accepts). Data of an older version has its structure checked (see
//! below), is decoded by apache-avro, resolved to the current schema and
//! converted to a [`ChangeEvent`].
//!
//! # Hostile input
//!
//! Decoding never panics. The hand-written decoder checks every length,
//! count and nesting level as it reads. apache-avro 0.22 alone is not
//! enough: it recurses once per nesting level (a few bytes of input can nest
//! arrays deep enough to overflow the stack), trusts lengths and counts up
//! to its 512 MiB allocation limit, and reads some truncated inputs as
//! nulls. So before apache-avro sees a datum, a small non-allocating scanner
//! walks it against the writer schema, exactly as apache-avro will read it,
//! and rejects it ([`Error::InvalidDatum`]) unless every length and count
//! fits in the remaining bytes, arrays nest at most [`MAX_ARRAY_DEPTH`] deep
//! in values, and the datum ends exactly where the message ends.

mod convert;
mod decode;
mod encode;
mod scan;
mod wire;

use std::collections::HashMap;
use std::fmt;
use std::sync::OnceLock;

use apache_avro::rabin::Rabin;
use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::schema::Name;
use apache_avro::schema_compatibility::{Compatibility, SchemaCompatibility};
use apache_avro::Schema;

use crate::error::hex;
use crate::{ChangeEvent, Error, SchemaVersion, VERSIONS};

/// The two bytes every single-object encoded message starts with.
pub const MAGIC: [u8; 2] = [0xC3, 0x01];

/// The header length: [`MAGIC`] and the 8-byte fingerprint.
pub const HEADER_LEN: usize = 10;

/// The deepest [`Value::Array`](crate::Value::Array) nesting decode accepts:
/// 6, Postgres's own limit on array dimensions (`MAXDIM`). Deeper values
/// still encode, but no reader accepts them, so producers must not send them
/// (check with [`Value::array_depth`](crate::Value::array_depth)).
///
/// The limit bounds decode's recursion, and also its cost on old-version
/// data: apache-avro 0.22's schema resolution tries union branches by
/// resolving whole sub-values, which doubles the work per nesting level.
pub const MAX_ARRAY_DEPTH: usize = 6;

/// The fingerprint of the schema the hand-written encoder (`encode.rs`)
/// writes: v3. [`Codec::new`] fails if the current schema has any other, so a
/// new schema version cannot ship with a stale encoder.
const ENCODER_FINGERPRINT: [u8; 8] = [0xfe, 0xac, 0xb0, 0xba, 0xaa, 0x80, 0xaf, 0x59];

/// The branches of the `Column.value` union in the current schema, in
/// order, as the encoder writes them and the conversion reads them.
///
/// The record branches deviate from the obvious design in two ways, both
/// forced by apache-avro 0.22's schema resolution, which picks the reader's
/// union branch for a value by trying the branches' *structure* in order
/// and ignores record names:
///
/// - `Unchanged` has one field, `unchanged` of type `null` (zero bytes on
///   the wire), not zero fields: a record without fields resolves from any
///   record, so it would swallow every record branch after it.
/// - every record has a field name no other branch has (`numeric`,
///   `timestamp_micros`, `timestamptz_micros`, `days`, `time_micros`,
///   `bytes`, `json`, `elements`), not a shared `text` or `micros`: with
///   shared names a `Time` written by an older version would resolve as a
///   `Timestamp`, a `Json` as a `Numeric`.
///
/// The recursive `Array` branch (its `elements` are this same union,
/// referring to `Array` by name) works as is.
mod branch {
    pub const NULL: i64 = 0;
    pub const UNCHANGED: i64 = 1;
    pub const BOOLEAN: i64 = 2;
    pub const LONG: i64 = 3;
    pub const DOUBLE: i64 = 4;
    pub const NUMERIC: i64 = 5;
    pub const STRING: i64 = 6;
    pub const BYTES: i64 = 7;
    pub const TIMESTAMP: i64 = 8;
    pub const TIMESTAMP_TZ: i64 = 9;
    pub const DATE: i64 = 10;
    pub const TIME: i64 = 11;
    pub const UUID: i64 = 12;
    pub const JSON: i64 = 13;
    pub const ARRAY: i64 = 14;
}

/// Encodes and decodes [`ChangeEvent`]s. Build it once with [`Codec::new`]
/// and share it: cloning is cheap (a reference), and it is `Send + Sync`.
#[derive(Clone)]
pub struct Codec {
    inner: &'static Inner,
}

struct Inner {
    /// One per entry of [`VERSIONS`], in the same order; the last is current.
    versions: Vec<Known>,
}

/// The shipped versions, parsed and checked once per process: they are
/// constants of the build, and a decoder built for one (apache-avro resolves
/// a schema's names when it builds one, which cost more than decoding a
/// change event itself) borrows it for as long as the process runs.
static SHIPPED: OnceLock<Inner> = OnceLock::new();

struct Known {
    meta: SchemaVersion,
    schema: Schema,
    fingerprint: [u8; 8],
    /// Named types of `schema` by full name, for the scanner's references.
    names: HashMap<Name, Schema>,
    /// apache-avro's decoder for data written with `schema`, read as the
    /// current version; built on first use.
    reader: OnceLock<GenericDatumReader<'static>>,
}

impl Known {
    /// The decoder for data written with this version, resolving to
    /// `current` when this is an older one.
    fn reader(
        &'static self,
        current: &'static Known,
    ) -> Result<&'static GenericDatumReader<'static>, apache_avro::Error> {
        if let Some(reader) = self.reader.get() {
            return Ok(reader);
        }
        // Resolving a schema to itself changes nothing, so current-version
        // data (nearly all of it) skips apache-avro's resolution, which is the
        // most expensive part of decoding (see MAX_ARRAY_DEPTH).
        let reader_schema = if std::ptr::eq(self, current) {
            None
        } else {
            Some(&current.schema)
        };
        let reader = GenericDatumReader::builder(&self.schema)
            .maybe_reader_schema(reader_schema)
            .build()?;
        // Two threads may build it at once; either result will do.
        Ok(self.reader.get_or_init(|| reader))
    }
}

impl Codec {
    /// Parses every schema in [`VERSIONS`], computes their fingerprints and
    /// checks the contract's rules: fingerprints are distinct, every earlier
    /// version can be fully read as the current one, and the encoder was
    /// written for the current one. Fails only on a broken build.
    pub fn new() -> Result<Codec, Error> {
        if let Some(inner) = SHIPPED.get() {
            return Ok(Codec { inner });
        }
        let mut versions: Vec<Known> = Vec::with_capacity(VERSIONS.len());
        for meta in VERSIONS {
            let invalid =
                |reason: String, source: Option<apache_avro::Error>| Error::InvalidSchema {
                    version: meta.version,
                    file: meta.file,
                    reason,
                    source,
                };
            let schema = Schema::parse_str(meta.json)
                .map_err(|e| invalid("does not parse".to_owned(), Some(e)))?;
            let mut names = HashMap::new();
            scan::collect_names(&schema, None, &mut names).map_err(|what| {
                invalid(
                    format!("uses {what}, which the datum scanner does not support"),
                    None,
                )
            })?;
            let fingerprint =
                canonical_fingerprint(&schema).map_err(|e| invalid(e.reason, e.source))?;
            if let Some(other) = versions.iter().find(|k| k.fingerprint == fingerprint) {
                return Err(invalid(
                    format!(
                        "has the same fingerprint {} as v{}",
                        hex(&fingerprint),
                        other.meta.version
                    ),
                    None,
                ));
            }
            versions.push(Known {
                meta: *meta,
                schema,
                fingerprint,
                names,
                reader: OnceLock::new(),
            });
        }
        let Some(current) = versions.last() else {
            return Err(Error::InvalidSchema {
                version: 0,
                file: "",
                reason: "VERSIONS is empty".to_owned(),
                source: None,
            });
        };
        for old in &versions[..versions.len() - 1] {
            let verdict = SchemaCompatibility::can_read(&old.schema, &current.schema);
            if !matches!(verdict, Ok(Compatibility::Full)) {
                return Err(Error::InvalidSchema {
                    version: old.meta.version,
                    file: old.meta.file,
                    reason: format!(
                        "cannot be fully read as the current schema v{}: {verdict:?}",
                        current.meta.version
                    ),
                    source: None,
                });
            }
        }
        if current.fingerprint != ENCODER_FINGERPRINT {
            return Err(Error::InvalidSchema {
                version: current.meta.version,
                file: current.meta.file,
                reason: format!(
                    "is the current schema (fingerprint {}), but the hand-written encoder is for \
                     fingerprint {}: update codec/encode.rs, codec/convert.rs and ENCODER_FINGERPRINT",
                    hex(&current.fingerprint),
                    hex(&ENCODER_FINGERPRINT)
                ),
                source: None,
            });
        }
        // Two threads may check the versions at once; either result will do.
        Ok(Codec {
            inner: SHIPPED.get_or_init(|| Inner { versions }),
        })
    }

    /// Encodes `event` with the current schema: header and datum, in a new
    /// buffer.
    pub fn encode(&self, event: &ChangeEvent) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + encode::size_hint(event));
        self.encode_into(event, &mut out);
        out
    }

    /// Appends the encoding of `event` (header and datum) to `out`, so a
    /// producer can reuse one buffer.
    pub fn encode_into(&self, event: &ChangeEvent, out: &mut Vec<u8>) {
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&self.current().fingerprint);
        encode::event(out, event);
    }

    /// Decodes one message written with any known schema version. Never
    /// panics, whatever `bytes` holds.
    pub fn decode(&self, bytes: &[u8]) -> Result<ChangeEvent, Error> {
        let (known, datum) = self.split(bytes)?;
        self.decode_datum(known, datum)
    }

    /// The schema version a message was written with, read from its header
    /// alone (the datum is not looked at).
    pub fn writer_version(&self, bytes: &[u8]) -> Result<u32, Error> {
        self.split(bytes).map(|(known, _)| known.meta.version)
    }

    /// The current schema's fingerprint: bytes 2..10 of every message
    /// [`encode`](Codec::encode) writes.
    pub fn current_fingerprint(&self) -> [u8; 8] {
        self.current().fingerprint
    }

    /// The fingerprint of schema `version`, if it is a known version.
    pub fn fingerprint(&self, version: u32) -> Option<[u8; 8]> {
        self.known(version).map(|k| k.fingerprint)
    }

    /// The parsed schema of `version`, if it is a known version.
    pub fn schema(&self, version: u32) -> Option<&Schema> {
        self.known(version).map(|k| &k.schema)
    }

    /// The parsed current schema.
    pub fn current_schema(&self) -> &Schema {
        &self.current().schema
    }

    fn known(&self, version: u32) -> Option<&Known> {
        self.inner
            .versions
            .iter()
            .find(|k| k.meta.version == version)
    }

    fn current(&self) -> &'static Known {
        // Cannot be out of bounds: `new` refuses an empty version list, so
        // `len - 1` is the last entry.
        let versions = &self.inner.versions;
        &versions[versions.len().saturating_sub(1)]
    }

    /// Checks the header and finds the writer schema.
    fn split<'b>(&self, bytes: &'b [u8]) -> Result<(&'static Known, &'b [u8]), Error> {
        let bad_header = || Error::BadHeader {
            found: bytes[..bytes.len().min(HEADER_LEN)].to_vec(),
        };
        let Some((magic, rest)) = bytes.split_first_chunk::<2>() else {
            return Err(bad_header());
        };
        if *magic != MAGIC {
            return Err(bad_header());
        }
        let Some((fingerprint, datum)) = rest.split_first_chunk::<8>() else {
            return Err(bad_header());
        };
        let known = self
            .inner
            .versions
            .iter()
            .find(|k| k.fingerprint == *fingerprint)
            .ok_or(Error::UnknownFingerprint {
                fingerprint: *fingerprint,
            })?;
        Ok((known, datum))
    }

    fn decode_datum(&self, writer: &'static Known, datum: &[u8]) -> Result<ChangeEvent, Error> {
        if std::ptr::eq(writer, self.current()) {
            return decode::event(datum, writer.meta.version);
        }
        self.decode_generic(writer, datum)
    }

    /// Decodes with the scanner, apache-avro and the conversion: data of an
    /// older version (resolved to the current one), or of the current one
    /// in tests, to check the hand-written decoder against.
    fn decode_generic(&self, writer: &'static Known, datum: &[u8]) -> Result<ChangeEvent, Error> {
        scan::check(datum, &writer.schema, &writer.names).map_err(|e| Error::InvalidDatum {
            version: writer.meta.version,
            offset: e.offset,
            reason: e.reason,
        })?;
        let malformed = |source| Error::MalformedDatum {
            version: writer.meta.version,
            source,
        };
        let reader = writer.reader(self.current()).map_err(malformed)?;
        let mut input = datum;
        let value = reader.read_value(&mut input).map_err(malformed)?;
        if !input.is_empty() {
            // The scanner already saw the datum end exactly; this would mean
            // apache-avro read it differently.
            return Err(Error::InvalidDatum {
                version: writer.meta.version,
                offset: datum.len() - input.len(),
                reason: "apache-avro stopped before the end of the datum",
            });
        }
        convert::event(value)
    }
}

impl fmt::Debug for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut list = f.debug_map();
        for k in &self.inner.versions {
            list.entry(
                &format_args!("v{}", k.meta.version),
                &format_args!("{}", hex(&k.fingerprint)),
            );
        }
        list.finish()
    }
}

struct FingerprintError {
    reason: String,
    source: Option<apache_avro::Error>,
}

/// The CRC-64-AVRO fingerprint of `schema`'s Parsing Canonical Form, as the
/// 8 little-endian bytes single-object encoding puts on the wire.
///
/// apache-avro 0.22's `canonical_form` strips `logicalType` but leaves the
/// primitive it annotated as `{"type":"long"}`, where the specification (and
/// the Java implementation) reduce it to `"long"`. Parsing that canonical
/// form again and canonicalizing the result yields the specification's form,
/// so the fingerprint matches other Avro implementations, and stays the same
/// if a later apache-avro fixes its canonical form.
fn canonical_fingerprint(schema: &Schema) -> Result<[u8; 8], FingerprintError> {
    let canonical = Schema::parse_str(&schema.canonical_form()).map_err(|e| FingerprintError {
        reason: "its canonical form does not parse".to_owned(),
        source: Some(e),
    })?;
    let digest = canonical.fingerprint::<Rabin>();
    <[u8; 8]>::try_from(digest.bytes.as_slice()).map_err(|_| FingerprintError {
        reason: format!("Rabin fingerprint has {} bytes, not 8", digest.bytes.len()),
        source: None,
    })
}

/// Parsing Canonical Form the way [`canonical_fingerprint`] computes it.
#[cfg(test)]
fn canonical_form(schema: &Schema) -> String {
    #![allow(clippy::unwrap_used)]
    Schema::parse_str(&schema.canonical_form())
        .unwrap()
        .canonical_form()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn codec_is_send_sync_and_cheap_to_clone() {
        fn assert_bounds<T: Send + Sync + Clone + 'static>() {}
        assert_bounds::<Codec>();
    }

    #[test]
    fn canonical_form_reduces_logical_types_to_their_primitive() {
        let schema = Schema::parse_str(
            r#"{"type":"record","name":"r","namespace":"n","doc":"d","fields":[
                {"name":"t","type":{"type":"long","logicalType":"timestamp-micros"},"default":0}]}"#,
        )
        .unwrap();
        assert_eq!(
            canonical_form(&schema),
            r#"{"name":"n.r","type":"record","fields":[{"name":"t","type":"long"}]}"#
        );
        let plain = Schema::parse_str(
            r#"{"type":"record","name":"n.r","fields":[{"name":"t","type":"long"}]}"#,
        )
        .unwrap();
        assert_eq!(
            canonical_fingerprint(&schema).ok(),
            canonical_fingerprint(&plain).ok()
        );
    }

    #[test]
    fn canonical_form_of_every_version_is_a_fixed_point_without_extras() {
        for v in VERSIONS {
            let schema = Schema::parse_str(v.json).unwrap();
            let pcf = canonical_form(&schema);
            assert_eq!(
                canonical_form(&Schema::parse_str(&pcf).unwrap()),
                pcf,
                "v{}",
                v.version
            );
            for extra in [
                "doc",
                "default",
                "logicalType",
                "namespace",
                "aliases",
                " ",
                "\n",
            ] {
                assert!(
                    !pcf.contains(extra),
                    "v{} canonical form contains {extra:?}",
                    v.version
                );
            }
            assert!(!pcf.contains(r#"{"type":"long"}"#), "v{}", v.version);
        }
    }

    #[test]
    fn encoder_fingerprint_is_the_current_schemas() {
        let codec = Codec::new().unwrap();
        assert_eq!(codec.current_fingerprint(), ENCODER_FINGERPRINT);
    }

    mod hand_written_decoder {
        //! The hand-written decoder against the generic path (scanner,
        //! apache-avro, conversion) on the same current-version data: valid
        //! messages, and the same messages damaged.

        use proptest::prelude::*;

        use super::super::*;
        use crate::{CaptureMode, Clock, Column, Op, Transaction, Value};

        fn scalar() -> impl Strategy<Value = Value> {
            prop_oneof![
                Just(Value::Null),
                Just(Value::Unchanged),
                any::<bool>().prop_map(Value::Bool),
                any::<i64>().prop_map(Value::Int),
                // Not NaN, so that events compare equal.
                (-1e12f64..1e12).prop_map(Value::Float),
                "[0-9.]{0,12}".prop_map(Value::Numeric),
                ".{0,12}".prop_map(Value::Text),
                proptest::collection::vec(any::<u8>(), 0..12).prop_map(Value::Bytes),
                any::<i64>().prop_map(Value::Timestamp),
                any::<i64>().prop_map(Value::TimestampTz),
                any::<i32>().prop_map(Value::Date),
                any::<i64>().prop_map(Value::Time),
                any::<[u8; 16]>().prop_map(Value::Uuid),
                ".{0,12}".prop_map(Value::Json),
            ]
        }

        fn value() -> impl Strategy<Value = Value> {
            scalar().prop_recursive(3, 16, 4, |inner| {
                proptest::collection::vec(inner, 0..4).prop_map(Value::Array)
            })
        }

        fn columns() -> impl Strategy<Value = Vec<Column>> {
            proptest::collection::vec(
                ("[a-z_]{0,8}", "[a-z0-9_]{0,8}", any::<u32>(), value()).prop_map(
                    |(name, type_name, type_oid, value)| Column {
                        name,
                        type_name,
                        type_oid,
                        value,
                    },
                ),
                0..4,
            )
        }

        fn clock() -> impl Strategy<Value = Clock> {
            (any::<i64>(), any::<i64>()).prop_map(|(seconds, tick)| Clock { seconds, tick })
        }

        fn event() -> impl Strategy<Value = ChangeEvent> {
            (
                ("[a-z]{0,6}", "[a-z]{0,6}", "[a-z]{0,6}", "[a-z]{0,6}"),
                prop_oneof![
                    Just(Op::Insert),
                    Just(Op::Update),
                    Just(Op::Delete),
                    Just(Op::Truncate),
                    Just(Op::Read)
                ],
                (
                    columns(),
                    proptest::option::of(columns()),
                    proptest::option::of(columns()),
                ),
                (
                    any::<u32>(),
                    any::<u64>(),
                    any::<i64>(),
                    any::<u64>(),
                    any::<bool>(),
                    proptest::option::of(any::<u64>()),
                ),
                (
                    proptest::option::of("[a-z:]{0,8}"),
                    proptest::option::of("[a-z]{0,8}"),
                    prop_oneof![
                        Just(CaptureMode::Streaming),
                        Just(CaptureMode::Polling),
                        Just(CaptureMode::Snapshot)
                    ],
                    any::<i64>(),
                    proptest::option::of(clock()),
                ),
            )
                .prop_map(
                    |(
                        (source, database, schema, table),
                        op,
                        (key, before, after),
                        (xid, commit_lsn, commit_time_micros, position, last, event_count),
                        (marker, origin, mode, captured_at_micros, clock),
                    )| ChangeEvent {
                        source,
                        database,
                        schema,
                        table,
                        op,
                        key,
                        before,
                        after,
                        transaction: Transaction {
                            xid,
                            commit_lsn,
                            commit_time_micros,
                            position,
                            last,
                            event_count,
                        },
                        marker,
                        origin,
                        mode,
                        captured_at_micros,
                        clock,
                    },
                )
        }

        /// How a message is damaged: bytes overwritten, cut short, or one
        /// inserted.
        #[derive(Debug, Clone)]
        enum Damage {
            None,
            Overwrite(Vec<(usize, u8)>),
            Truncate(usize),
            Insert(usize, u8),
        }

        /// A byte to write: mostly ones that sit at the edges of what a
        /// varint, boolean, union branch or enum index may hold.
        fn byte() -> impl Strategy<Value = u8> {
            prop_oneof![0u8..32, Just(0x7f), Just(0x80), Just(0xff), any::<u8>()]
        }

        /// A position (taken modulo the datum's length): often among the
        /// first bytes, where the header fields and the op are.
        fn at() -> impl Strategy<Value = usize> {
            prop_oneof![0usize..32, any::<usize>()]
        }

        fn damage() -> impl Strategy<Value = Damage> {
            prop_oneof![
                Just(Damage::None),
                proptest::collection::vec((at(), byte()), 1..4).prop_map(Damage::Overwrite),
                at().prop_map(Damage::Truncate),
                (at(), byte()).prop_map(|(at, b)| Damage::Insert(at, b)),
            ]
        }

        fn damaged(mut datum: Vec<u8>, damage: &Damage) -> Vec<u8> {
            let n = datum.len().max(1);
            match damage {
                Damage::None => {}
                Damage::Overwrite(bytes) => {
                    for (at, b) in bytes {
                        if let Some(slot) = datum.get_mut(at % n) {
                            *slot = *b;
                        }
                    }
                }
                Damage::Truncate(at) => datum.truncate(at % n),
                Damage::Insert(at, b) => datum.insert(at % (datum.len() + 1), *b),
            }
            datum
        }

        /// Both paths on `datum`: the same events (compared as their
        /// encodings, bit for bit) or both an error.
        fn agree(codec: &Codec, datum: &[u8]) -> Result<(), String> {
            let current = codec.current();
            let direct = decode::event(datum, current.meta.version);
            let generic = codec.decode_generic(current, datum);
            match (&direct, &generic) {
                (Ok(a), Ok(b)) if codec.encode(a) == codec.encode(b) => Ok(()),
                (Err(_), Err(_)) => Ok(()),
                _ => Err(format!("direct {direct:?}, generic {generic:?}")),
            }
        }

        #[test]
        fn every_single_byte_overwrite_of_an_event_with_every_kind_of_value_is_read_alike() {
            let codec = Codec::new().unwrap();
            let column = |name: &str, value| Column {
                name: name.into(),
                type_name: "t".into(),
                type_oid: 25,
                value,
            };
            let event = ChangeEvent {
                source: "s".into(),
                database: "d".into(),
                schema: "n".into(),
                table: "t".into(),
                op: Op::Update,
                key: vec![column("k", Value::Int(-3))],
                before: None,
                after: Some(vec![
                    column("a", Value::Null),
                    column("b", Value::Unchanged),
                    column("c", Value::Bool(true)),
                    column("e", Value::Float(1.5)),
                    column("f", Value::Numeric("1.25".into())),
                    column("g", Value::Text("é".into())),
                    column("h", Value::Bytes(vec![0, 255])),
                    column("i", Value::Timestamp(-1)),
                    column("j", Value::TimestampTz(1)),
                    column("l", Value::Date(-2)),
                    column("m", Value::Time(3)),
                    column("o", Value::Uuid([7; 16])),
                    column("p", Value::Json("{}".into())),
                    column(
                        "q",
                        Value::Array(vec![Value::Array(vec![Value::Int(1)]), Value::Null]),
                    ),
                ]),
                transaction: Transaction {
                    xid: 9,
                    commit_lsn: 10,
                    commit_time_micros: 11,
                    position: 12,
                    last: true,
                    event_count: Some(13),
                },
                marker: Some("x".into()),
                origin: None,
                mode: CaptureMode::Polling,
                captured_at_micros: 14,
                clock: Some(Clock {
                    seconds: 15,
                    tick: -16,
                }),
            };
            let datum = codec.encode(&event)[HEADER_LEN..].to_vec();
            let bytes: Vec<u8> = (0u8..40).chain([0x7f, 0x80, 0x81, 0xfe, 0xff]).collect();
            for at in 0..datum.len() {
                for b in &bytes {
                    let mut damaged = datum.clone();
                    damaged[at] = *b;
                    if let Err(e) = agree(&codec, &damaged) {
                        panic!("byte {at} set to {b:#x}: {e}");
                    }
                }
                if let Err(e) = agree(&codec, &datum[..at]) {
                    panic!("cut at {at}: {e}");
                }
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(4096))]

            #[test]
            fn it_accepts_and_reads_what_the_generic_path_does(
                event in event(),
                damage in damage(),
            ) {
                let codec = Codec::new().unwrap();
                let message = codec.encode(&event);
                let datum = damaged(message[HEADER_LEN..].to_vec(), &damage);
                prop_assert_eq!(agree(&codec, &datum), Ok(()));
                if matches!(damage, Damage::None) {
                    prop_assert_eq!(decode::event(&datum, 0).unwrap(), event);
                }
            }
        }
    }
}
