//! The event contract, checked from the outside: golden bytes, agreement of
//! the hand-written encoder with apache-avro, schema evolution, and decoding
//! of hostile input.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::schema_compatibility::{Compatibility, SchemaCompatibility};
use apache_avro::types::Value as Avro;
use apache_avro::writer::datum::GenericDatumWriter;
use apache_avro::Schema;
use proptest::collection::vec;
use proptest::prelude::*;
use schemas::codec::{HEADER_LEN, MAGIC, MAX_ARRAY_DEPTH};
use schemas::{
    CaptureMode, ChangeEvent, Clock, Codec, Column, Error, Op, Transaction, Value, CURRENT,
    VERSIONS,
};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

fn codec() -> Codec {
    Codec::new().expect("the embedded schemas are valid")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses hex, ignoring whitespace.
fn unhex(s: &str) -> Vec<u8> {
    let digits: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    digits
        .chunks(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap())
        .collect()
}

/// CRC-64-AVRO as the Avro specification defines it, written independently
/// of apache-avro: the 64-bit Rabin fingerprint with the spec's empty value
/// and table, returned as the 8 little-endian bytes single-object encoding
/// uses.
fn crc64_avro(data: &[u8]) -> [u8; 8] {
    const EMPTY: u64 = 0xc15d_213a_a4d7_a795;
    let table: Vec<u64> = (0..256u64)
        .map(|i| {
            (0..8).fold(i, |fp, _| {
                let mask = if fp & 1 == 1 { EMPTY } else { 0 };
                (fp >> 1) ^ mask
            })
        })
        .collect();
    let fp = data.iter().fold(EMPTY, |fp, &b| {
        (fp >> 8) ^ table[((fp ^ u64::from(b)) & 0xff) as usize]
    });
    fp.to_le_bytes()
}

/// Value equality with floats compared bit for bit (NaN included).
fn value_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Float(x), Value::Float(y)) => x.to_bits() == y.to_bits(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| value_eq(x, y))
        }
        _ => a == b,
    }
}

fn columns_eq(a: &[Column], b: &[Column]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x.name == y.name
                && x.type_name == y.type_name
                && x.type_oid == y.type_oid
                && value_eq(&x.value, &y.value)
        })
}

fn optional_columns_eq(a: &Option<Vec<Column>>, b: &Option<Vec<Column>>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => columns_eq(a, b),
        _ => false,
    }
}

fn event_eq(a: &ChangeEvent, b: &ChangeEvent) -> bool {
    a.source == b.source
        && a.database == b.database
        && a.schema == b.schema
        && a.table == b.table
        && a.op == b.op
        && columns_eq(&a.key, &b.key)
        && optional_columns_eq(&a.before, &b.before)
        && optional_columns_eq(&a.after, &b.after)
        && a.transaction == b.transaction
        && a.marker == b.marker
        && a.origin == b.origin
        && a.mode == b.mode
        && a.captured_at_micros == b.captured_at_micros
        && a.clock == b.clock
}

/// apache-avro values compared through their Debug form, which prints NaN
/// the same on both sides.
fn avro_eq(a: &Avro, b: &Avro) -> bool {
    format!("{a:?}") == format!("{b:?}")
}

// The current schema's shape, built independently of the crate's encoder and
// conversion, as apache-avro values.

fn union(index: u32, v: Avro) -> Avro {
    Avro::Union(index, Box::new(v))
}

fn optional(v: Option<Avro>) -> Avro {
    match v {
        None => union(0, Avro::Null),
        Some(v) => union(1, v),
    }
}

fn record(fields: Vec<(&str, Avro)>) -> Avro {
    Avro::Record(fields.into_iter().map(|(n, v)| (n.to_owned(), v)).collect())
}

fn avro_value(v: &Value) -> Avro {
    let one = |name: &str, v: Avro| record(vec![(name, v)]);
    match v {
        Value::Null => union(0, Avro::Null),
        Value::Unchanged => union(1, one("unchanged", Avro::Null)),
        Value::Bool(b) => union(2, Avro::Boolean(*b)),
        Value::Int(i) => union(3, Avro::Long(*i)),
        Value::Float(f) => union(4, Avro::Double(*f)),
        Value::Numeric(s) => union(5, one("numeric", Avro::String(s.clone()))),
        Value::Text(s) => union(6, Avro::String(s.clone())),
        Value::Bytes(b) => union(7, Avro::Bytes(b.clone())),
        Value::Timestamp(t) => union(8, one("timestamp_micros", Avro::Long(*t))),
        Value::TimestampTz(t) => union(9, one("timestamptz_micros", Avro::Long(*t))),
        Value::Date(d) => union(10, one("days", Avro::Int(*d))),
        Value::Time(t) => union(11, one("time_micros", Avro::Long(*t))),
        Value::Uuid(u) => union(12, one("bytes", Avro::Fixed(16, u.to_vec()))),
        Value::Json(s) => union(13, one("json", Avro::String(s.clone()))),
        Value::Array(items) => union(
            14,
            one(
                "elements",
                Avro::Array(items.iter().map(avro_value).collect()),
            ),
        ),
    }
}

fn avro_columns(cols: &[Column]) -> Avro {
    Avro::Array(
        cols.iter()
            .map(|c| {
                record(vec![
                    ("name", Avro::String(c.name.clone())),
                    ("type_name", Avro::String(c.type_name.clone())),
                    ("type_oid", Avro::Long(i64::from(c.type_oid))),
                    ("value", avro_value(&c.value)),
                ])
            })
            .collect(),
    )
}

fn avro_event(e: &ChangeEvent) -> Avro {
    let (op_index, op_symbol) = match e.op {
        Op::Insert => (0, "INSERT"),
        Op::Update => (1, "UPDATE"),
        Op::Delete => (2, "DELETE"),
        Op::Truncate => (3, "TRUNCATE"),
        Op::Read => (4, "READ"),
    };
    let (mode_index, mode_symbol) = match e.mode {
        CaptureMode::Streaming => (0, "STREAMING"),
        CaptureMode::Polling => (1, "POLLING"),
        CaptureMode::Snapshot => (2, "SNAPSHOT"),
    };
    let t = &e.transaction;
    record(vec![
        ("source", Avro::String(e.source.clone())),
        ("database", Avro::String(e.database.clone())),
        ("schema", Avro::String(e.schema.clone())),
        ("table", Avro::String(e.table.clone())),
        ("op", Avro::Enum(op_index, op_symbol.to_owned())),
        ("key", avro_columns(&e.key)),
        ("before", optional(e.before.as_deref().map(avro_columns))),
        ("after", optional(e.after.as_deref().map(avro_columns))),
        (
            "transaction",
            record(vec![
                ("xid", Avro::Long(i64::from(t.xid))),
                ("commit_lsn", Avro::Long(t.commit_lsn as i64)),
                ("commit_time", Avro::TimestampMicros(t.commit_time_micros)),
                ("position", Avro::Long(t.position as i64)),
                ("last", Avro::Boolean(t.last)),
                (
                    "event_count",
                    optional(t.event_count.map(|n| Avro::Long(n as i64))),
                ),
            ]),
        ),
        ("marker", optional(e.marker.clone().map(Avro::String))),
        ("origin", optional(e.origin.clone().map(Avro::String))),
        ("mode", Avro::Enum(mode_index, mode_symbol.to_owned())),
        ("captured_at", Avro::TimestampMicros(e.captured_at_micros)),
        (
            "clock",
            optional(e.clock.map(|c| {
                record(vec![
                    ("seconds", Avro::Long(c.seconds)),
                    ("tick", Avro::Long(c.tick)),
                ])
            })),
        ),
    ])
}

fn top_level_fields(schema: &Schema) -> Vec<String> {
    match schema {
        Schema::Record(r) => r.fields.iter().map(|f| f.name.clone()).collect(),
        other => panic!("not a record: {other:?}"),
    }
}

/// `event` in the shape of an older schema: its top-level fields only.
fn avro_event_for(event: &ChangeEvent, schema: &Schema) -> Avro {
    let keep = top_level_fields(schema);
    match avro_event(event) {
        Avro::Record(fields) => Avro::Record(
            fields
                .into_iter()
                .filter(|(n, _)| keep.contains(n))
                .collect(),
        ),
        _ => unreachable!(),
    }
}

/// What reading `event` written with an older schema must give: the fields
/// that schema lacks take their defaults.
fn with_defaults_for_missing(event: &ChangeEvent, old: &Schema, current: &Schema) -> ChangeEvent {
    let old_fields = top_level_fields(old);
    let mut expected = event.clone();
    for field in top_level_fields(current) {
        if old_fields.contains(&field) {
            continue;
        }
        match field.as_str() {
            "origin" => expected.origin = None,
            "mode" => expected.mode = CaptureMode::Streaming,
            "clock" => expected.clock = None,
            other => panic!("tell this test the default of new field {other:?}"),
        }
    }
    expected
}

fn write_with_apache(schema: &Schema, value: Avro) -> Vec<u8> {
    GenericDatumWriter::builder(schema)
        .build()
        .unwrap()
        .write_value_to_vec(value)
        .unwrap()
}

fn read_with_apache(writer: &Schema, reader: Option<&Schema>, datum: &[u8]) -> Avro {
    let mut input = datum;
    let value = GenericDatumReader::builder(writer)
        .maybe_reader_schema(reader)
        .build()
        .unwrap()
        .read_value(&mut input)
        .unwrap();
    assert!(input.is_empty(), "apache-avro left {} bytes", input.len());
    value
}

fn message(fingerprint: [u8; 8], datum: &[u8]) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&fingerprint);
    out.extend_from_slice(datum);
    out
}

// ---------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "[a-z_][a-z0-9_]{0,12}",
        "\\PC{0,16}",
        any::<String>(),
    ]
}

fn float() -> impl Strategy<Value = f64> {
    prop_oneof![
        any::<f64>(),
        any::<u64>().prop_map(f64::from_bits),
        Just(f64::NAN),
        Just(-f64::NAN),
        Just(f64::INFINITY),
        Just(f64::NEG_INFINITY),
        Just(-0.0),
    ]
}

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        Just(Value::Unchanged),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::Int),
        float().prop_map(Value::Float),
        text().prop_map(Value::Numeric),
        text().prop_map(Value::Text),
        vec(any::<u8>(), 0..24).prop_map(Value::Bytes),
        any::<i64>().prop_map(Value::Timestamp),
        any::<i64>().prop_map(Value::TimestampTz),
        any::<i32>().prop_map(Value::Date),
        any::<i64>().prop_map(Value::Time),
        any::<[u8; 16]>().prop_map(Value::Uuid),
        text().prop_map(Value::Json),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(4, 32, 5, |inner| vec(inner, 0..5).prop_map(Value::Array))
}

fn column() -> impl Strategy<Value = Column> {
    (text(), text(), any::<u32>(), value()).prop_map(|(name, type_name, type_oid, value)| Column {
        name,
        type_name,
        type_oid,
        value,
    })
}

fn columns() -> impl Strategy<Value = Vec<Column>> {
    vec(column(), 0..5)
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        Just(Op::Insert),
        Just(Op::Update),
        Just(Op::Delete),
        Just(Op::Truncate),
        Just(Op::Read),
    ]
}

fn mode() -> impl Strategy<Value = CaptureMode> {
    prop_oneof![
        Just(CaptureMode::Streaming),
        Just(CaptureMode::Polling),
        Just(CaptureMode::Snapshot),
    ]
}

fn transaction() -> impl Strategy<Value = Transaction> {
    (
        any::<u32>(),
        any::<u64>(),
        any::<i64>(),
        any::<u64>(),
        any::<bool>(),
        proptest::option::of(any::<u64>()),
    )
        .prop_map(
            |(xid, commit_lsn, commit_time_micros, position, last, event_count)| Transaction {
                xid,
                commit_lsn,
                commit_time_micros,
                position,
                last,
                event_count,
            },
        )
}

fn clock() -> impl Strategy<Value = Clock> {
    (any::<i64>(), any::<i64>()).prop_map(|(seconds, tick)| Clock { seconds, tick })
}

fn event() -> impl Strategy<Value = ChangeEvent> {
    (
        (text(), text(), text(), text(), op()),
        (
            columns(),
            proptest::option::of(columns()),
            proptest::option::of(columns()),
        ),
        transaction(),
        (
            proptest::option::of(text()),
            proptest::option::of(text()),
            mode(),
            any::<i64>(),
            proptest::option::of(clock()),
        ),
    )
        .prop_map(
            |(
                (source, database, schema, table, op),
                (key, before, after),
                transaction,
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
                transaction,
                marker,
                origin,
                mode,
                captured_at_micros,
                clock,
            },
        )
}

// ---------------------------------------------------------------------------
// Golden bytes and fingerprints
// ---------------------------------------------------------------------------

fn col(name: &str, type_name: &str, type_oid: u32, value: Value) -> Column {
    Column {
        name: name.to_owned(),
        type_name: type_name.to_owned(),
        type_oid,
        value,
    }
}

/// A small update covering most value kinds.
fn golden_event() -> ChangeEvent {
    ChangeEvent {
        source: "legacy".to_owned(),
        database: "shop".to_owned(),
        schema: "public".to_owned(),
        table: "orders".to_owned(),
        op: Op::Update,
        key: vec![col("id", "int8", 20, Value::Int(42))],
        before: None,
        after: Some(vec![
            col("id", "int8", 20, Value::Int(42)),
            col("note", "text", 25, Value::Text("héllo".to_owned())),
            col(
                "total",
                "numeric",
                1700,
                Value::Numeric("-12.50".to_owned()),
            ),
            col("paid", "bool", 16, Value::Bool(true)),
            col("ratio", "float8", 701, Value::Float(0.5)),
            col("blob", "bytea", 17, Value::Bytes(vec![0x00, 0xff])),
            col(
                "at",
                "timestamptz",
                1184,
                Value::TimestampTz(1_700_000_000_000_000),
            ),
            col("day", "date", 1082, Value::Date(-1)),
            col("doc", "jsonb", 3802, Value::Json("{}".to_owned())),
            col("big", "text", 25, Value::Unchanged),
            col("gone", "text", 25, Value::Null),
            col(
                "tags",
                "_text",
                1009,
                Value::Array(vec![Value::Text("a".to_owned()), Value::Null]),
            ),
            col("ref", "uuid", 2950, Value::Uuid([0x11; 16])),
        ]),
        transaction: Transaction {
            xid: 7,
            commit_lsn: 0x0100_0028,
            commit_time_micros: 1_700_000_000_000_000,
            position: 0,
            last: true,
            event_count: Some(1),
        },
        marker: None,
        origin: Some("bridge".to_owned()),
        mode: CaptureMode::Polling,
        captured_at_micros: 1_700_000_000_000_001,
        clock: Some(Clock {
            seconds: 1_700_000_000,
            tick: 3,
        }),
    }
}

/// The datum of [`golden_event`] under v3, frozen. Checked independently by
/// decoding it with plain apache-avro (`golden_bytes_decode_with_plain_apache_avro`).
const GOLDEN_DATUM: &str = "
    0c6c65676163790873686f700c7075626c69630c6f7264657273020204696408
    696e74382806540000021a04696408696e7438280654086e6f74650874657874
    320c0c68c3a96c6c6f0a746f74616c0e6e756d65726963c81a0a0c2d31322e35
    30087061696408626f6f6c2004010a726174696f0c666c6f617438fa0a080000
    00000000e03f08626c6f620a6279746561220e0400ff0461741674696d657374
    616d70747ac012128080f28183898506066461790864617465f410140106646f
    630a6a736f6e62b43b1a047b7d066269670874657874320208676f6e65087465
    7874320008746167730a5f74657874e20f1c040c026100000672656608757569
    648c2e1811111111111111111111111111111111000ed08080108080f2818389
    85060001020200020c627269646765028280f28183898506
    0280c49fd50c06
";

/// The datum of [`golden_event`] (without its clock) under v2, as the v2
/// encoder wrote it, frozen: messages like it are in Kafka.
const GOLDEN_DATUM_V2: &str = "
    0c6c65676163790873686f700c7075626c69630c6f7264657273020204696408
    696e74382806540000021a04696408696e7438280654086e6f74650874657874
    320c0c68c3a96c6c6f0a746f74616c0e6e756d65726963c81a0a0c2d31322e35
    30087061696408626f6f6c2004010a726174696f0c666c6f617438fa0a080000
    00000000e03f08626c6f620a6279746561220e0400ff0461741674696d657374
    616d70747ac012128080f28183898506066461790864617465f410140106646f
    630a6a736f6e62b43b1a047b7d066269670874657874320208676f6e65087465
    7874320008746167730a5f74657874e20f1c040c026100000672656608757569
    648c2e1811111111111111111111111111111111000ed08080108080f2818389
    85060001020200020c627269646765028280f28183898506
";

#[test]
fn golden_event_encodes_to_frozen_bytes() {
    let codec = codec();
    let bytes = codec.encode(&golden_event());
    let expected = message(codec.current_fingerprint(), &unhex(GOLDEN_DATUM));
    assert_eq!(hex(&bytes), hex(&expected));
    assert!(event_eq(&codec.decode(&bytes).unwrap(), &golden_event()));
}

#[test]
fn golden_bytes_decode_with_plain_apache_avro() {
    let codec = codec();
    let datum = unhex(GOLDEN_DATUM);
    let decoded = read_with_apache(codec.current_schema(), None, &datum);
    assert!(
        avro_eq(&decoded, &avro_event(&golden_event())),
        "{decoded:?}"
    );
    // And apache-avro writes exactly the same bytes.
    assert_eq!(
        hex(&write_with_apache(
            codec.current_schema(),
            avro_event(&golden_event())
        )),
        hex(&datum)
    );
}

#[test]
fn frozen_v2_bytes_decode_with_no_clock() {
    let codec = codec();
    let bytes = message(codec.fingerprint(2).unwrap(), &unhex(GOLDEN_DATUM_V2));
    assert_eq!(codec.writer_version(&bytes).unwrap(), 2);
    let decoded = codec.decode(&bytes).unwrap();
    assert_eq!(decoded.clock, None);
    let expected = ChangeEvent {
        clock: None,
        ..golden_event()
    };
    assert!(event_eq(&decoded, &expected), "{decoded:?}");
}

#[test]
fn clocks_round_trip_bit_for_bit() {
    let codec = codec();
    for clock in [
        None,
        Some(Clock {
            seconds: 0,
            tick: 0,
        }),
        Some(Clock {
            seconds: 1_700_000_000,
            tick: 1,
        }),
        Some(Clock {
            seconds: i64::MIN,
            tick: i64::MAX,
        }),
        Some(Clock {
            seconds: i64::MAX,
            tick: i64::MIN,
        }),
    ] {
        let event = ChangeEvent {
            clock,
            ..golden_event()
        };
        let bytes = codec.encode(&event);
        assert_eq!(codec.decode(&bytes).unwrap().clock, clock);
        let read = read_with_apache(codec.current_schema(), None, &bytes[HEADER_LEN..]);
        assert!(avro_eq(&read, &avro_event(&event)), "{read:?}");
    }
}

#[test]
fn header_is_magic_then_little_endian_fingerprint() {
    let codec = codec();
    let bytes = codec.encode(&golden_event());
    assert_eq!(bytes[..2], [0xC3, 0x01]);
    assert_eq!(bytes[2..HEADER_LEN], codec.current_fingerprint());
    assert_eq!(codec.writer_version(&bytes).unwrap(), CURRENT.version);
}

/// The fingerprints on the wire, frozen: a change here means messages
/// already in Kafka can no longer be matched to their schema.
#[test]
fn fingerprints_are_frozen_and_distinct() {
    let codec = codec();
    let frozen = [
        (1, "fa5f97e5c5594665"),
        (2, "4e89d2edfcb7e00d"),
        (3, "feacb0baaa80af59"),
    ];
    assert_eq!(
        frozen.len(),
        VERSIONS.len(),
        "freeze the new version's fingerprint"
    );
    for (version, fingerprint) in frozen {
        assert_eq!(
            hex(&codec.fingerprint(version).unwrap()),
            fingerprint,
            "v{version}"
        );
    }
    assert_eq!(
        codec.current_fingerprint(),
        codec.fingerprint(CURRENT.version).unwrap()
    );
    let mut all: Vec<_> = VERSIONS
        .iter()
        .map(|v| codec.fingerprint(v.version).unwrap())
        .collect();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), VERSIONS.len());
}

#[test]
fn fingerprint_is_crc64_avro_of_the_parsing_canonical_form() {
    // The specification's test vector for the schema "null".
    assert_eq!(
        crc64_avro(br#""null""#),
        7195948357588979594i64.to_le_bytes()
    );
    let codec = codec();
    for v in VERSIONS {
        let schema = codec.schema(v.version).unwrap();
        // apache-avro's canonical form, canonicalized once more to reduce
        // logical types to their primitive as the specification does.
        let pcf = Schema::parse_str(&schema.canonical_form())
            .unwrap()
            .canonical_form();
        assert!(
            pcf.contains(r#"{"name":"commit_time","type":"long"}"#),
            "{pcf}"
        );
        assert_eq!(
            crc64_avro(pcf.as_bytes()),
            codec.fingerprint(v.version).unwrap()
        );
    }
}

// ---------------------------------------------------------------------------
// Schema evolution
// ---------------------------------------------------------------------------

#[test]
fn adjacent_versions_are_fully_compatible() {
    let codec = codec();
    for pair in VERSIONS.windows(2) {
        let older = codec.schema(pair[0].version).unwrap();
        let newer = codec.schema(pair[1].version).unwrap();
        assert_eq!(
            SchemaCompatibility::can_read(older, newer),
            Ok(Compatibility::Full),
            "v{} data read as v{}",
            pair[0].version,
            pair[1].version
        );
    }
}

#[test]
fn every_earlier_version_decodes_with_defaults_for_new_fields() {
    let codec = codec();
    let current = codec.current_schema();
    let event = golden_event();
    for v in &VERSIONS[..VERSIONS.len() - 1] {
        let old = codec.schema(v.version).unwrap();
        let datum = write_with_apache(old, avro_event_for(&event, old));
        let bytes = message(codec.fingerprint(v.version).unwrap(), &datum);
        assert_eq!(codec.writer_version(&bytes).unwrap(), v.version);
        let decoded = codec.decode(&bytes).unwrap();
        let expected = with_defaults_for_missing(&event, old, current);
        assert!(event_eq(&decoded, &expected), "v{}: {decoded:?}", v.version);
    }
    // v1 specifically: v2 added origin and mode.
    let v1 = codec.schema(1).unwrap();
    let datum = write_with_apache(v1, avro_event_for(&event, v1));
    let decoded = codec
        .decode(&message(codec.fingerprint(1).unwrap(), &datum))
        .unwrap();
    assert_eq!(decoded.origin, None);
    assert_eq!(decoded.mode, CaptureMode::Streaming);
    assert_eq!(decoded.clock, None);
    // v2 specifically: v3 added clock.
    let v2 = codec.schema(2).unwrap();
    let datum = write_with_apache(v2, avro_event_for(&event, v2));
    assert_eq!(hex(&datum), hex(&unhex(GOLDEN_DATUM_V2)));
    let decoded = codec
        .decode(&message(codec.fingerprint(2).unwrap(), &datum))
        .unwrap();
    assert_eq!(decoded.origin.as_deref(), Some("bridge"));
    assert_eq!(decoded.clock, None);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn generated_events_from_every_earlier_version_decode(event in event()) {
        let codec = codec();
        let current = codec.current_schema();
        for v in &VERSIONS[..VERSIONS.len() - 1] {
            let old = codec.schema(v.version).unwrap();
            let datum = write_with_apache(old, avro_event_for(&event, old));
            let decoded = codec.decode(&message(codec.fingerprint(v.version).unwrap(), &datum)).unwrap();
            let expected = with_defaults_for_missing(&event, old, current);
            prop_assert!(event_eq(&decoded, &expected), "v{}: {:?} != {:?}", v.version, decoded, expected);
        }
    }
}

// ---------------------------------------------------------------------------
// The hand-written encoder agrees with apache-avro
// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn encoder_agrees_with_apache_avro_and_round_trips(event in event()) {
        let codec = codec();
        let schema = codec.current_schema();
        let bytes = codec.encode(&event);
        prop_assert_eq!(&bytes[..2], &MAGIC[..]);
        prop_assert_eq!(&bytes[2..HEADER_LEN], &codec.current_fingerprint()[..]);
        let datum = &bytes[HEADER_LEN..];

        // apache-avro reads the hand-written datum as the expected value...
        let expected = avro_event(&event);
        let read = read_with_apache(schema, None, datum);
        prop_assert!(avro_eq(&read, &expected), "{:?} != {:?}", read, expected);
        // ... and writes the very same bytes for it.
        prop_assert_eq!(hex(&write_with_apache(schema, expected)), hex(datum));

        // Resolution to the same schema is the identity, union branches
        // included (the branch records' distinct field names make
        // apache-avro's structural branch matching unambiguous).
        let resolved = read_with_apache(schema, Some(schema), datum);
        prop_assert!(avro_eq(&resolved, &read), "{:?} != {:?}", resolved, read);

        // And the codec round-trips.
        let decoded = codec.decode(&bytes).unwrap();
        prop_assert!(event_eq(&decoded, &event), "{:?} != {:?}", decoded, event);

        // encode_into appends.
        let mut buf = b"xyz".to_vec();
        codec.encode_into(&event, &mut buf);
        prop_assert_eq!(&buf[3..], &bytes[..]);
    }
}

#[test]
fn values_nested_to_the_limit_round_trip() {
    let codec = codec();
    let mut v = Value::Int(1);
    for _ in 0..MAX_ARRAY_DEPTH {
        v = Value::Array(vec![v, Value::Null]);
    }
    assert_eq!(v.array_depth(), MAX_ARRAY_DEPTH);
    let mut event = golden_event();
    event.key = vec![col("deep", "_int8", 1016, v)];
    assert!(event_eq(
        &codec.decode(&codec.encode(&event)).unwrap(),
        &event
    ));

    // One level more encodes, but no reader takes it.
    let mut too_deep = event.clone();
    too_deep.key[0].value = Value::Array(vec![too_deep.key[0].value.clone()]);
    let err = codec.decode(&codec.encode(&too_deep)).unwrap_err();
    assert!(matches!(err, Error::InvalidDatum { .. }), "{err}");
}

// ---------------------------------------------------------------------------
// Bad input
// ---------------------------------------------------------------------------

#[test]
fn bad_magic_is_a_bad_header() {
    let codec = codec();
    let mut bytes = codec.encode(&golden_event());
    bytes[0] = 0x4f;
    let err = codec.decode(&bytes).unwrap_err();
    assert!(
        matches!(&err, Error::BadHeader { found } if found[..] == bytes[..HEADER_LEN]),
        "{err}"
    );
    assert!(!err.is_retryable());
    for short in [&[][..], &[0xC3], &[0xC3, 0x01, 1, 2, 3, 4, 5, 6, 7]] {
        let err = codec.decode(short).unwrap_err();
        assert!(
            matches!(&err, Error::BadHeader { found } if found[..] == short[..]),
            "{err}"
        );
    }
}

#[test]
fn unknown_fingerprint_is_reported_in_hex() {
    let codec = codec();
    let mut bytes = codec.encode(&golden_event());
    bytes[2..HEADER_LEN].copy_from_slice(&[0xde, 0xad, 0xbe, 0xef, 0, 1, 2, 3]);
    let err = codec.decode(&bytes).unwrap_err();
    assert!(
        matches!(err, Error::UnknownFingerprint { fingerprint } if fingerprint == [0xde, 0xad, 0xbe, 0xef, 0, 1, 2, 3])
    );
    assert!(err.to_string().contains("deadbeef00010203"), "{err}");
    assert!(!err.is_retryable());
    assert!(codec.writer_version(&bytes).is_err());
}

#[test]
fn out_of_range_integers_are_an_unexpected_shape() {
    let codec = codec();
    let mut value = avro_event(&golden_event());
    let Avro::Record(fields) = &mut value else {
        unreachable!()
    };
    let Avro::Array(key) = &mut fields[5].1 else {
        unreachable!()
    };
    let Avro::Record(column) = &mut key[0] else {
        unreachable!()
    };
    column[2].1 = Avro::Long(1 << 32);
    let datum = write_with_apache(codec.current_schema(), value);
    let err = codec
        .decode(&message(codec.current_fingerprint(), &datum))
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::UnexpectedShape {
                field: "Column.type_oid",
                ..
            }
        ),
        "{err}"
    );
    assert!(!err.is_retryable());
}

#[test]
fn trailing_bytes_are_rejected() {
    let codec = codec();
    let mut bytes = codec.encode(&golden_event());
    bytes.push(0);
    let err = codec.decode(&bytes).unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidDatum {
                reason: "trailing bytes after the datum",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn nesting_bombs_and_huge_lengths_are_rejected_cheaply() {
    let codec = codec();
    let fp = codec.current_fingerprint();
    // source "" database "" schema "" table "" op INSERT, then a key of one
    // column whose value is an array of an array of ... a million deep.
    let mut datum = vec![0, 0, 0, 0, 0, 0x02, 0, 0, 0];
    for _ in 0..1_000_000 {
        datum.extend([0x1c, 0x02]);
    }
    let err = codec.decode(&message(fp, &datum)).unwrap_err();
    assert!(matches!(err, Error::InvalidDatum { .. }), "{err}");

    // A source string claiming 2^62 bytes.
    let huge = [0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01];
    let err = codec.decode(&message(fp, &huge)).unwrap_err();
    assert!(matches!(err, Error::InvalidDatum { .. }), "{err}");

    // A key claiming 2^61 columns.
    let mut many = vec![0, 0, 0, 0, 0];
    many.extend(huge);
    let err = codec.decode(&message(fp, &many)).unwrap_err();
    assert!(matches!(err, Error::InvalidDatum { .. }), "{err}");
}

fn valid_message() -> impl Strategy<Value = Vec<u8>> {
    event().prop_map(|e| codec().encode(&e))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_bytes_never_decode(bytes in vec(any::<u8>(), 0..512)) {
        prop_assert!(codec().decode(&bytes).is_err());
    }

    #[test]
    fn a_valid_header_with_a_random_tail_never_decodes(
        version in 0..VERSIONS.len(),
        tail in vec(any::<u8>(), 0..512),
    ) {
        let codec = codec();
        let fp = codec.fingerprint(VERSIONS[version].version).unwrap();
        prop_assert!(codec.decode(&message(fp, &tail)).is_err());
    }

    #[test]
    fn truncated_messages_never_decode(bytes in valid_message(), cut in any::<prop::sample::Index>()) {
        let cut = cut.index(bytes.len());
        prop_assert!(codec().decode(&bytes[..cut]).is_err());
    }

    #[test]
    fn corrupted_messages_never_panic(
        bytes in valid_message(),
        at in any::<prop::sample::Index>(),
        byte in any::<u8>(),
        extra in vec(any::<u8>(), 0..4),
    ) {
        let mut bytes = bytes;
        let at = HEADER_LEN + at.index(bytes.len() - HEADER_LEN);
        bytes[at] = byte;
        bytes.extend(extra);
        // Ok or Err, whatever the corruption did: just never a panic.
        let _ = codec().decode(&bytes);
    }
}
