#![allow(clippy::unwrap_used)]

use schemas::event::Value;

use super::calendar::*;
use super::parse::*;
use super::render::*;
use super::types::*;
use proptest::prelude::*;

fn parse(oid: u32, text: &str) -> Value {
    parse_text(oid, text).unwrap()
}

fn problem(oid: u32, text: &str) -> Problem {
    parse_text(oid, text).unwrap_err().problem
}

/// Micros since the epoch for a UTC wall time, computed independently.
fn micros(days: i64, hours: i64, minutes: i64, seconds: i64, fraction: i64) -> i64 {
    days * DAY_MICROS + ((hours * 60 + minutes) * 60 + seconds) * 1_000_000 + fraction
}

#[test]
fn table_is_sorted_and_consistent() {
    assert!(BUILTIN_TYPES.windows(2).all(|pair| pair[0].0 < pair[1].0));
    for &(oid, name, element) in BUILTIN_TYPES {
        if element != 0 {
            assert!(name.starts_with('_'), "{name}");
            assert_eq!(
                type_name(element).map(|e| format!("_{e}")).as_deref(),
                Some(name)
            );
        }
        assert_eq!(type_name(oid), Some(name));
    }
}

#[test]
fn known_oids() {
    let expected = [
        (16, "bool"),
        (17, "bytea"),
        (18, "char"),
        (19, "name"),
        (20, "int8"),
        (21, "int2"),
        (23, "int4"),
        (25, "text"),
        (26, "oid"),
        (114, "json"),
        (142, "xml"),
        (700, "float4"),
        (701, "float8"),
        (790, "money"),
        (1042, "bpchar"),
        (1043, "varchar"),
        (1082, "date"),
        (1083, "time"),
        (1114, "timestamp"),
        (1184, "timestamptz"),
        (1186, "interval"),
        (1266, "timetz"),
        (1700, "numeric"),
        (2950, "uuid"),
        (3802, "jsonb"),
        (869, "inet"),
        (650, "cidr"),
        (829, "macaddr"),
        (1007, "_int4"),
        (1009, "_text"),
        (1016, "_int8"),
        (1000, "_bool"),
        (1022, "_float8"),
        (1231, "_numeric"),
        (2951, "_uuid"),
        (1185, "_timestamptz"),
        (1115, "_timestamp"),
        (1182, "_date"),
        (1015, "_varchar"),
        (3807, "_jsonb"),
        (199, "_json"),
        (1001, "_bytea"),
        (1005, "_int2"),
        (1021, "_float4"),
        (1014, "_bpchar"),
        (1183, "_time"),
        (1003, "_name"),
        (1028, "_oid"),
    ];
    for (oid, name) in expected {
        assert_eq!(type_name(oid), Some(name), "oid {oid}");
    }
    assert_eq!(element_type(1007), Some(23));
    assert_eq!(element_type(1185), Some(1184));
    assert_eq!(element_type(23), None);
    assert_eq!(element_type(999_999), None);
    assert_eq!(type_name(999_999), None);
}

#[test]
fn registry_names_user_types() {
    let mut registry = TypeRegistry::new();
    assert_eq!(registry.name(23), "int4");
    assert_eq!(registry.name(16_500), "oid:16500");
    registry.record(16_500, "public", "mood");
    registry.record(16_501, "", "catalogish");
    assert_eq!(registry.name(16_500), "public.mood");
    assert_eq!(registry.name(16_501), "catalogish");
    // Built-in names win.
    registry.record(23, "public", "shadow");
    assert_eq!(registry.name(23), "int4");
}

#[test]
fn civil_arithmetic() {
    assert_eq!(days_from_civil(1970, 1, 1), 0);
    assert_eq!(days_from_civil(1969, 12, 31), -1);
    assert_eq!(days_from_civil(2000, 3, 1), 11_017);
    assert_eq!(days_from_civil(2000, 2, 29), 11_016);
    assert_eq!(
        days_from_civil(1900, 3, 1) - days_from_civil(1900, 2, 28),
        1
    );
    assert_eq!(MIN_DATE_DAYS, -2_440_588);
    assert_eq!(MAX_DATE_DAYS, 2_145_042_905);
    for days in [-2_440_588, -719_529, -1, 0, 1, 11_016, 2_145_042_905] {
        let (y, m, d) = civil_from_days(days);
        assert_eq!(days_from_civil(y, m, d), days);
    }
    assert_eq!(civil_from_days(0), (1970, 1, 1));
    assert_eq!(civil_from_days(-719_528), (0, 1, 1));
}

#[test]
fn booleans_and_integers() {
    assert_eq!(parse(oid::BOOL, "t"), Value::Bool(true));
    assert_eq!(parse(oid::BOOL, "f"), Value::Bool(false));
    assert_eq!(problem(oid::BOOL, "yes"), "expected t or f");
    assert_eq!(parse(oid::INT2, "-32768"), Value::Int(-32_768));
    assert_eq!(problem(oid::INT2, "32768"), "integer out of range");
    assert_eq!(parse(oid::INT4, "2147483647"), Value::Int(2_147_483_647));
    assert_eq!(
        parse(oid::INT8, "-9223372036854775808"),
        Value::Int(i64::MIN)
    );
    assert_eq!(parse(oid::OID, "4294967295"), Value::Int(4_294_967_295));
    assert_eq!(problem(oid::OID, "-1"), "integer out of range");
    assert_eq!(problem(oid::INT8, "1.5"), "expected an integer");
    assert_eq!(problem(oid::INT4, ""), "expected an integer");
}

#[test]
fn floats_and_numerics() {
    assert_eq!(parse(oid::FLOAT8, "1.5"), Value::Float(1.5));
    assert_eq!(parse(oid::FLOAT8, "1e+300"), Value::Float(1e300));
    assert_eq!(parse(oid::FLOAT4, "-0.1"), Value::Float(-0.1));
    assert_eq!(parse(oid::FLOAT8, "Infinity"), Value::Float(f64::INFINITY));
    assert_eq!(
        parse(oid::FLOAT8, "-Infinity"),
        Value::Float(f64::NEG_INFINITY)
    );
    assert!(matches!(parse(oid::FLOAT4, "NaN"), Value::Float(value) if value.is_nan()));
    assert!(parse_text(oid::FLOAT8, "one").is_err());
    for text in [
        "0",
        "-12.50",
        "NaN",
        "Infinity",
        "-Infinity",
        "1e10",
        ".5",
        "5.",
    ] {
        assert_eq!(parse(oid::NUMERIC, text), Value::Numeric(text.to_owned()));
    }
    for text in ["", "-", ".", "1e", "1.2.3", "nan", "1 "] {
        assert!(parse_text(oid::NUMERIC, text).is_err(), "{text:?}");
    }
}

#[test]
fn texts_and_unknown_types() {
    for oid in [
        oid::TEXT,
        oid::VARCHAR,
        oid::BPCHAR,
        oid::NAME,
        oid::CHAR,
        oid::XML,
    ] {
        assert_eq!(parse(oid, "héllo "), Value::Text("héllo ".to_owned()));
    }
    assert_eq!(
        parse(1186, "1 day 02:00:00"),
        Value::Text("1 day 02:00:00".to_owned())
    );
    assert_eq!(
        parse(869, "10.0.0.1/8"),
        Value::Text("10.0.0.1/8".to_owned())
    );
    assert_eq!(parse(16_500, "happy"), Value::Text("happy".to_owned()));
    assert_eq!(
        parse(oid::JSONB, "{\"a\": 1}"),
        Value::Json("{\"a\": 1}".to_owned())
    );
    assert_eq!(parse(oid::JSON, "[]"), Value::Json("[]".to_owned()));
}

#[test]
fn bytea() {
    assert_eq!(parse(oid::BYTEA, "\\x"), Value::Bytes(Vec::new()));
    assert_eq!(
        parse(oid::BYTEA, "\\x0a1BfF"),
        Value::Bytes(vec![0x0a, 0x1b, 0xff])
    );
    assert_eq!(problem(oid::BYTEA, "\\x0a1"), "odd number of hex digits");
    assert_eq!(problem(oid::BYTEA, "\\xzz"), "invalid hex digit");
    // Legacy escape format.
    assert_eq!(
        parse(oid::BYTEA, "a\\\\b\\000\\377"),
        Value::Bytes(b"a\\b\x00\xff".to_vec())
    );
    assert_eq!(problem(oid::BYTEA, "\\400"), "invalid escape sequence");
    assert_eq!(problem(oid::BYTEA, "ab\\"), "invalid escape sequence");
    assert_eq!(to_text(&Value::Bytes(vec![0, 0xab])).unwrap(), "\\x00ab");
}

#[test]
fn timestamps() {
    let ts = |text| parse(oid::TIMESTAMP, text);
    assert_eq!(ts("1970-01-01 00:00:00"), Value::Timestamp(0));
    assert_eq!(ts("1969-12-31 23:59:59.999999"), Value::Timestamp(-1));
    assert_eq!(
        ts("2000-02-29 12:00:00.5"),
        Value::Timestamp(micros(11_016, 12, 0, 0, 500_000))
    );
    assert_eq!(
        ts("2024-02-29 00:00:00.1"),
        Value::Timestamp(micros(19_782, 0, 0, 0, 100_000))
    );
    assert_eq!(
        ts("2024-02-29 00:00:00.12"),
        Value::Timestamp(micros(19_782, 0, 0, 0, 120_000))
    );
    assert_eq!(
        ts("2024-02-29 00:00:00.123"),
        Value::Timestamp(micros(19_782, 0, 0, 0, 123_000))
    );
    assert_eq!(
        ts("2024-02-29 00:00:00.1234"),
        Value::Timestamp(micros(19_782, 0, 0, 0, 123_400))
    );
    assert_eq!(
        ts("2024-02-29 00:00:00.12345"),
        Value::Timestamp(micros(19_782, 0, 0, 0, 123_450))
    );
    assert_eq!(
        ts("2024-02-29 00:00:00.123456"),
        Value::Timestamp(micros(19_782, 0, 0, 0, 123_456))
    );
    assert_eq!(
        ts("1900-01-01 00:00:00"),
        Value::Timestamp(-2_208_988_800_000_000)
    );
    assert_eq!(
        ts("0001-01-01 00:00:00"),
        Value::Timestamp(-62_135_596_800_000_000)
    );
    assert_eq!(
        ts("0001-12-31 00:00:00 BC"),
        Value::Timestamp(micros(-719_163, 0, 0, 0, 0))
    );
    assert_eq!(
        ts("4714-11-24 00:00:00 BC"),
        Value::Timestamp(MIN_TIMESTAMP_MICROS)
    );
    assert_eq!(
        ts("294247-01-01 00:00:00"),
        Value::Timestamp(micros(106_751_982, 0, 0, 0, 0))
    );
    assert_eq!(ts("infinity"), Value::Timestamp(i64::MAX));
    assert_eq!(ts("-infinity"), Value::Timestamp(i64::MIN));
    assert_eq!(
        problem(oid::TIMESTAMP, "294276-12-31 23:59:59"),
        "timestamp out of range"
    );
    assert_eq!(
        problem(oid::TIMESTAMP, "4714-11-23 23:59:59 BC"),
        "timestamp out of range"
    );
    assert_eq!(
        problem(oid::TIMESTAMP, "2023-02-29 00:00:00"),
        "day out of range for the month"
    );
    assert_eq!(
        problem(oid::TIMESTAMP, "1900-02-29 00:00:00"),
        "day out of range for the month"
    );
    assert_eq!(
        problem(oid::TIMESTAMP, "2023-13-01 00:00:00"),
        "month out of range"
    );
    assert_eq!(
        problem(oid::TIMESTAMP, "2023-01-01 24:00:00"),
        "hours out of range"
    );
    assert_eq!(
        problem(oid::TIMESTAMP, "2023-01-01 00:60:00"),
        "minutes or seconds out of range"
    );
    assert_eq!(
        problem(oid::TIMESTAMP, "2023-01-01 00:00:00.1234567"),
        "more than 6 fractional digits"
    );
    assert_eq!(
        problem(oid::TIMESTAMP, "2023-01-01 00:00:00+00"),
        "unexpected characters after the timestamp"
    );
    assert_eq!(
        problem(oid::TIMESTAMP, "0000-01-01 00:00:00"),
        "year 0 does not exist (1 BC precedes 1 AD)"
    );
}

#[test]
fn timestamps_with_time_zone() {
    let tstz = |text| parse(oid::TIMESTAMPTZ, text);
    assert_eq!(tstz("1970-01-01 00:00:00+00"), Value::TimestampTz(0));
    assert_eq!(tstz("1970-01-01 01:00:00+01"), Value::TimestampTz(0));
    assert_eq!(tstz("1969-12-31 21:00:00-03"), Value::TimestampTz(0));
    assert_eq!(
        tstz("1970-01-01 05:30:00.25+05:30"),
        Value::TimestampTz(250_000)
    );
    assert_eq!(tstz("1969-12-31 23:05:00-00:55"), Value::TimestampTz(0));
    assert_eq!(tstz("1970-01-01 00:53:28+00:53:28"), Value::TimestampTz(0));
    assert_eq!(
        tstz("2024-02-29 23:30:00-01"),
        Value::TimestampTz(micros(19_783, 0, 30, 0, 0))
    );
    assert_eq!(
        tstz("0044-03-15 12:00:00+00 BC"),
        Value::TimestampTz(micros(days_from_civil(-43, 3, 15), 12, 0, 0, 0))
    );
    assert_eq!(tstz("infinity"), Value::TimestampTz(i64::MAX));
    assert_eq!(tstz("-infinity"), Value::TimestampTz(i64::MIN));
    assert_eq!(
        problem(oid::TIMESTAMPTZ, "1970-01-01 00:00:00"),
        "expected a UTC offset"
    );
    assert_eq!(
        problem(oid::TIMESTAMPTZ, "1970-01-01 00:00:00+16"),
        "UTC offset out of range"
    );
    assert_eq!(
        problem(oid::TIMESTAMPTZ, "1970-01-01 00:00:00+1"),
        "expected two-digit offset hours"
    );
    assert_eq!(
        problem(oid::TIMESTAMPTZ, "1970-01-01 00:00:00+01:"),
        "expected two-digit offset minutes"
    );
}

#[test]
fn dates_and_times() {
    let date = |text| parse(oid::DATE, text);
    assert_eq!(date("1970-01-01"), Value::Date(0));
    assert_eq!(date("1969-12-31"), Value::Date(-1));
    assert_eq!(date("2000-02-29"), Value::Date(11_016));
    assert_eq!(date("1600-02-29"), Value::Date(-135_081));
    assert_eq!(date("0001-01-01"), Value::Date(-719_162));
    assert_eq!(date("0001-12-31 BC"), Value::Date(-719_163));
    assert_eq!(date("4714-11-24 BC"), Value::Date(MIN_DATE_DAYS));
    assert_eq!(date("294276-12-31"), Value::Date(106_762_939));
    assert_eq!(date("5874897-12-31"), Value::Date(MAX_DATE_DAYS));
    assert_eq!(date("infinity"), Value::Date(i32::MAX));
    assert_eq!(date("-infinity"), Value::Date(i32::MIN));
    assert_eq!(problem(oid::DATE, "5874898-01-01"), "date out of range");
    assert_eq!(
        problem(oid::DATE, "2001-02-29"),
        "day out of range for the month"
    );
    assert_eq!(
        problem(oid::DATE, "2001-04-31"),
        "day out of range for the month"
    );
    assert_eq!(
        problem(oid::DATE, "2001-1-01"),
        "expected a two-digit month"
    );
    assert_eq!(
        problem(oid::DATE, "2001-01-01 AD"),
        "unexpected characters after the date"
    );

    let time = |text| parse(oid::TIME, text);
    assert_eq!(time("00:00:00"), Value::Time(0));
    assert_eq!(
        time("13:45:07.5"),
        Value::Time(micros(0, 13, 45, 7, 500_000))
    );
    assert_eq!(time("23:59:59.999999"), Value::Time(DAY_MICROS - 1));
    assert_eq!(time("24:00:00"), Value::Time(DAY_MICROS));
    assert_eq!(problem(oid::TIME, "24:00:00.000001"), "hours out of range");
    assert_eq!(
        problem(oid::TIME, "12:00"),
        "expected ':' after the minutes"
    );
}

#[test]
fn uuids() {
    let bytes = [
        0xa0, 0xee, 0xbc, 0x99, 0x9c, 0x0b, 0x4e, 0xf8, 0xbb, 0x6d, 0x6b, 0xb9, 0xbd, 0x38, 0x0a,
        0x11,
    ];
    assert_eq!(
        parse(oid::UUID, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
        Value::Uuid(bytes)
    );
    assert_eq!(
        parse(oid::UUID, "A0EEBC999C0B4EF8BB6D6BB9BD380A11"),
        Value::Uuid(bytes)
    );
    assert_eq!(
        to_text(&Value::Uuid(bytes)).unwrap(),
        "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
    );
    assert!(parse_text(oid::UUID, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1").is_err());
    assert!(parse_text(oid::UUID, "a0eebc99x9c0b-4ef8-bb6d-6bb9bd380a11").is_err());
    assert!(parse_text(oid::UUID, "g0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11").is_err());
    assert!(parse_text(oid::UUID, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd3-0a11").is_err());
}

#[test]
fn arrays() {
    let int = Value::Int;
    let text = |s: &str| Value::Text(s.to_owned());
    assert_eq!(
        parse(1007, "{1,2,NULL}"),
        Value::Array(vec![int(1), int(2), Value::Null])
    );
    assert_eq!(parse(1007, "{}"), Value::Array(Vec::new()));
    assert_eq!(
        parse(1007, "{{1,2},{3,4}}"),
        Value::Array(vec![
            Value::Array(vec![int(1), int(2)]),
            Value::Array(vec![int(3), int(4)]),
        ])
    );
    assert_eq!(
        parse(1009, r#"{"a b","c\"d",NULL,"NULL",null,plain,"",\{x}"#),
        Value::Array(vec![
            text("a b"),
            text("c\"d"),
            Value::Null,
            text("NULL"),
            Value::Null,
            text("plain"),
            text(""),
            text("{x"),
        ])
    );
    assert_eq!(
        parse(1009, r#"{ spaced out , "ü\\" }"#),
        Value::Array(vec![text("spaced out"), text("ü\\")])
    );
    assert_eq!(
        parse(1185, r#"{"2024-01-01 00:00:00+00",NULL}"#),
        Value::Array(vec![
            Value::TimestampTz(micros(19_723, 0, 0, 0, 0)),
            Value::Null
        ])
    );
    let Value::Array(floats) = parse(1022, "{NaN,-Infinity,1.5}") else {
        panic!("not an array");
    };
    assert!(matches!(floats[0], Value::Float(value) if value.is_nan()));
    assert_eq!(
        floats[1..],
        [Value::Float(f64::NEG_INFINITY), Value::Float(1.5)]
    );
    assert_eq!(
        parse(1001, r#"{"\\x00ff"}"#),
        Value::Array(vec![Value::Bytes(vec![0, 255])])
    );
    assert_eq!(
        parse(3807, r#"{"{\"a\": 1}"}"#),
        Value::Array(vec![Value::Json("{\"a\": 1}".to_owned())])
    );
    // box[] is text.
    assert_eq!(
        parse(1020, "{(1,1),(0,0);(2,2),(1,1)}"),
        text("{(1,1),(0,0);(2,2),(1,1)}")
    );

    let error = parse_text(1007, "{1,x}").unwrap_err();
    assert_eq!(
        error,
        ValueError {
            type_name: "int4",
            problem: "expected an integer",
            array: Some("_int4"),
        }
    );
    assert_eq!(
        error.to_string(),
        "malformed int4 value in a _int4 array: expected an integer"
    );
    for bad in [
        "",
        "{",
        "{1",
        "{1,}",
        "{,1}",
        "{1}}",
        "{1} x",
        "[0:1]={1,2}",
        "{{1},2}",
        "{{1},{2,3}}",
        "{\"abc}",
        "{a\"b}",
        "{{{{{{{1}}}}}}}",
        "{NULL,\\",
    ] {
        assert!(parse_text(1007, bad).is_err(), "{bad:?}");
    }
    assert_eq!(problem(1007, "{{{{{{{1}}}}}}}"), "more than 6 dimensions");
    assert!(parse_text(1007, "{{{{{{1}}}}}}").is_ok());
}

#[test]
fn errors_never_contain_the_value() {
    let secret = "s3cr3t-value";
    for (oid, _) in builtin_types() {
        if let Err(error) = parse_text(oid, secret) {
            assert!(!error.to_string().contains(secret));
        }
        if let Err(error) = parse_text(oid, &format!("{{{secret}}}")) {
            assert!(!error.to_string().contains(secret));
        }
    }
}

#[test]
fn to_text_examples() {
    let t = |value: Value| to_text(&value).unwrap();
    assert_eq!(to_text(&Value::Null), None);
    assert_eq!(to_text(&Value::Unchanged), None);
    assert_eq!(t(Value::Bool(true)), "t");
    assert_eq!(t(Value::Int(-5)), "-5");
    assert_eq!(t(Value::Float(f64::NAN)), "NaN");
    assert_eq!(t(Value::Float(f64::NEG_INFINITY)), "-Infinity");
    assert_eq!(t(Value::Float(0.1)), "0.1");
    assert_eq!(t(Value::Float(1e300)), "1e300");
    assert_eq!(t(Value::Float(-0.0)), "-0");
    assert_eq!(t(Value::Timestamp(0)), "1970-01-01 00:00:00");
    assert_eq!(t(Value::Timestamp(-1)), "1969-12-31 23:59:59.999999");
    assert_eq!(t(Value::Timestamp(1_500_000)), "1970-01-01 00:00:01.500000");
    assert_eq!(t(Value::TimestampTz(0)), "1970-01-01 00:00:00+00");
    assert_eq!(t(Value::TimestampTz(i64::MAX)), "infinity");
    assert_eq!(
        t(Value::Timestamp(MIN_TIMESTAMP_MICROS)),
        "4714-11-24 00:00:00 BC"
    );
    assert_eq!(
        t(Value::TimestampTz(MIN_TIMESTAMP_MICROS)),
        "4714-11-24 00:00:00+00 BC"
    );
    assert_eq!(t(Value::Date(MAX_DATE_DAYS)), "5874897-12-31");
    assert_eq!(t(Value::Date(-719_163)), "0001-12-31 BC");
    assert_eq!(t(Value::Date(i32::MIN)), "-infinity");
    assert_eq!(t(Value::Time(DAY_MICROS)), "24:00:00");
    assert_eq!(t(Value::Time(-1)), "-00:00:00.000001");
    assert_eq!(
        t(Value::Array(vec![
            Value::Text("a b".to_owned()),
            Value::Text("NULL".to_owned()),
            Value::Null,
            Value::Text("q\"\\".to_owned()),
            Value::Text(String::new()),
            Value::Bytes(vec![1]),
        ])),
        r#"{"a b","NULL",NULL,"q\"\\","","\\x01"}"#
    );
    assert_eq!(
        t(Value::Array(vec![
            Value::Array(vec![Value::Int(1), Value::Int(2)]),
            Value::Array(vec![Value::Int(3), Value::Unchanged]),
        ])),
        "{{1,2},{3,NULL}}"
    );
    assert_eq!(t(Value::Array(Vec::new())), "{}");
}

#[test]
fn deep_arrays_do_not_overflow_the_stack() {
    let mut value = Value::Int(1);
    for _ in 0..100_000 {
        value = Value::Array(vec![value]);
    }
    let text = to_text(&value).unwrap();
    assert_eq!(text.len(), 200_001);
    assert!(parse_text(1007, &text).is_err());
    // Drop iteratively too: the default drop of so deep a value recurses.
    while let Value::Array(mut items) = value {
        value = items.pop().unwrap_or(Value::Null);
    }
}

fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Float(a), Value::Float(b)) => {
            a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
        }
        (Value::Array(a), Value::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(a, b)| same(a, b))
        }
        _ => a == b,
    }
}

fn timestamp_micros() -> impl Strategy<Value = i64> {
    prop_oneof![
        Just(i64::MAX),
        Just(i64::MIN),
        Just(MIN_TIMESTAMP_MICROS),
        Just(i64::MAX - 1),
        MIN_TIMESTAMP_MICROS..i64::MAX,
        // Around today, where the data is.
        0_i64..4_102_444_800_000_000,
    ]
}

fn date_days() -> impl Strategy<Value = i32> {
    prop_oneof![
        Just(i32::MAX),
        Just(i32::MIN),
        Just(MIN_DATE_DAYS),
        Just(MAX_DATE_DAYS),
        MIN_DATE_DAYS..=MAX_DATE_DAYS,
    ]
}

fn numeric_text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("NaN".to_owned()),
        Just("Infinity".to_owned()),
        Just("-Infinity".to_owned()),
        "-?[0-9]{1,30}(\\.[0-9]{1,20})?",
    ]
}

/// The scalar types whose values round-trip.
const ROUND_TRIP_TYPES: [u32; 17] = [
    oid::BOOL,
    oid::INT2,
    oid::INT4,
    oid::INT8,
    oid::OID,
    oid::FLOAT8,
    oid::FLOAT4,
    oid::NUMERIC,
    oid::TEXT,
    oid::VARCHAR,
    oid::JSONB,
    oid::BYTEA,
    oid::TIMESTAMP,
    oid::TIMESTAMPTZ,
    oid::DATE,
    oid::TIME,
    oid::UUID,
];

/// Values of one scalar type.
fn value_of(type_oid: u32) -> BoxedStrategy<Value> {
    match type_oid {
        oid::BOOL => any::<bool>().prop_map(Value::Bool).boxed(),
        oid::INT2 => any::<i16>().prop_map(|v| Value::Int(v.into())).boxed(),
        oid::INT4 => any::<i32>().prop_map(|v| Value::Int(v.into())).boxed(),
        oid::INT8 => any::<i64>().prop_map(Value::Int).boxed(),
        oid::OID => any::<u32>().prop_map(|v| Value::Int(v.into())).boxed(),
        oid::FLOAT8 => any::<f64>().prop_map(Value::Float).boxed(),
        oid::FLOAT4 => any::<f32>().prop_map(|v| Value::Float(v.into())).boxed(),
        oid::NUMERIC => numeric_text().prop_map(Value::Numeric).boxed(),
        oid::JSONB => any::<String>().prop_map(Value::Json).boxed(),
        oid::BYTEA => proptest::collection::vec(any::<u8>(), 0..40)
            .prop_map(Value::Bytes)
            .boxed(),
        oid::TIMESTAMP => timestamp_micros().prop_map(Value::Timestamp).boxed(),
        oid::TIMESTAMPTZ => timestamp_micros().prop_map(Value::TimestampTz).boxed(),
        oid::DATE => date_days().prop_map(Value::Date).boxed(),
        oid::TIME => (0..=DAY_MICROS).prop_map(Value::Time).boxed(),
        oid::UUID => any::<[u8; 16]>().prop_map(Value::Uuid).boxed(),
        // Text, often made of the characters that array syntax cares about.
        _ => prop_oneof![
            any::<String>(),
            "[ a\"\\\\{},;NULnul\t\n\r\x0b\x0c]{0,8}",
            proptest::sample::select(vec!["NULL", "null", "Null", "", " "]).prop_map(String::from),
        ]
        .prop_map(Value::Text)
        .boxed(),
    }
}

/// A value of a scalar type, with that type's oid.
fn scalar() -> impl Strategy<Value = (u32, Value)> {
    proptest::sample::select(ROUND_TRIP_TYPES.to_vec())
        .prop_flat_map(|type_oid| value_of(type_oid).prop_map(move |value| (type_oid, value)))
}

/// The array type of a scalar type.
fn array_of(element: u32) -> u32 {
    BUILTIN_TYPES
        .iter()
        .find(|&&(_, _, e)| e == element)
        .map(|&(oid, _, _)| oid)
        .unwrap()
}

/// An array value of one element type (1 or 2 dimensions), with the array oid.
fn array() -> impl Strategy<Value = (u32, Value)> {
    (
        proptest::sample::select(ROUND_TRIP_TYPES.to_vec()),
        0_usize..5,
        1_usize..4,
        any::<bool>(),
    )
        .prop_flat_map(|(element, length, rows, nested)| {
            let item = prop_oneof![1 => Just(Value::Null), 4 => value_of(element)];
            let flat = proptest::collection::vec(item, length);
            let value = if nested && length > 0 {
                proptest::collection::vec(flat.prop_map(Value::Array), rows)
                    .prop_map(Value::Array)
                    .boxed()
            } else {
                flat.prop_map(Value::Array).boxed()
            };
            value.prop_map(move |value| (array_of(element), value))
        })
}

/// Strings that look like Postgres values, to reach deep into the parsers.
fn valueish() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[-+0-9:. TBCinfyNaILU\\\\x{},\"a-f]{0,40}",
        "[0-9]{1,7}-[0-9]{2}-[0-9]{2}( [0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{0,8})?([-+][0-9]{2}(:[0-9]{2}){0,2})?)?( BC)?",
        "\\{[{}\",\\\\ 0-9a-zNUL]{0,30}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn parse_never_panics_for_any_type(text in valueish()) {
        for (oid, _) in builtin_types() {
            let _ = parse_text(oid, &text);
        }
        let _ = parse_text(123_456, &text);
    }

    #[test]
    fn scalars_round_trip((oid, value) in scalar()) {
        let text = to_text(&value).unwrap();
        let parsed = parse_text(oid, &text);
        prop_assert!(parsed.is_ok(), "{:?} -> {:?}: {:?}", value, text, parsed);
        let parsed = parsed.unwrap();
        prop_assert!(same(&parsed, &value), "{:?} -> {:?} -> {:?}", value, text, parsed);
    }

    #[test]
    fn arrays_round_trip((oid, value) in array()) {
        let text = to_text(&value).unwrap();
        let parsed = parse_text(oid, &text);
        prop_assert!(parsed.is_ok(), "{:?} -> {:?}: {:?}", value, text, parsed);
        let parsed = parsed.unwrap();
        prop_assert!(same(&parsed, &value), "{:?} -> {:?} -> {:?}", value, text, parsed);
    }

    #[test]
    fn timestamps_match_dates(days in MIN_DATE_DAYS..=106_751_990, time in 0..DAY_MICROS) {
        let date = to_text(&Value::Date(days)).unwrap();
        let timestamp = to_text(&Value::Timestamp(i64::from(days) * DAY_MICROS + time)).unwrap();
        let (date, bc) = strip_bc(&date);
        prop_assert!(timestamp.starts_with(date));
        prop_assert_eq!(bc, timestamp.ends_with(" BC"));
    }
}
