//! Postgres values in text form, to typed [`Value`]s and back.
//!
//! pgoutput sends each column value as the text its type's output function
//! writes. [`parse_text`] turns that text into a [`Value`], given the column's
//! type oid; [`to_text`] is the inverse, for the apply side: text that
//! Postgres's input functions accept.
//!
//! Assumptions, pinned by the capture connection's startup options:
//! - `DateStyle=ISO`: dates are `YYYY-MM-DD`, timestamps
//!   `YYYY-MM-DD HH:MM:SS[.ffffff]`, with ` BC` after years before 1 AD.
//! - `TimeZone=UTC`: timestamptz arrives as `...+00`; any offset (`-03`,
//!   `+05:30`, `+00:53:28`) is parsed anyway.
//! - `bytea_output=hex` (the default); the legacy escape format is accepted too.
//! - `IntervalStyle`, `lc_monetary` and friends do not matter: interval,
//!   money and the other types without a [`Value`] variant travel as text.
//!
//! Timestamps are microseconds since the Unix epoch in an `i64`, which ends in
//! year 294247: later timestamps (Postgres goes to 294276) are out of range
//! here, and so is `i64::MAX` itself, which means `infinity`.
//!
//! Errors ([`ValueError`]) name the type and the problem, never the value:
//! row values must not reach the logs.
//!
//! This module depends only on the shared event types (the fuzz target
//! includes it on its own); keep it that way.

use std::collections::HashMap;
use std::fmt::Write as _;

use schemas::event::Value;
use thiserror::Error;

/// Oids of the built-in types that get a [`Value`] variant of their own.
pub mod oid {
    pub const BOOL: u32 = 16;
    pub const BYTEA: u32 = 17;
    pub const CHAR: u32 = 18;
    pub const NAME: u32 = 19;
    pub const INT8: u32 = 20;
    pub const INT2: u32 = 21;
    pub const INT4: u32 = 23;
    pub const TEXT: u32 = 25;
    pub const OID: u32 = 26;
    pub const JSON: u32 = 114;
    pub const XML: u32 = 142;
    pub const BOX: u32 = 603;
    pub const FLOAT4: u32 = 700;
    pub const FLOAT8: u32 = 701;
    pub const BPCHAR: u32 = 1042;
    pub const VARCHAR: u32 = 1043;
    pub const DATE: u32 = 1082;
    pub const TIME: u32 = 1083;
    pub const TIMESTAMP: u32 = 1114;
    pub const TIMESTAMPTZ: u32 = 1184;
    pub const NUMERIC: u32 = 1700;
    pub const UUID: u32 = 2950;
    pub const JSONB: u32 = 3802;
}

/// Built-in types (`pg_type.dat`, PostgreSQL 15): oid, name, and for an
/// array type the element type's oid (0 otherwise). Sorted by oid.
const BUILTIN_TYPES: &[(u32, &str, u32)] = &[
    (16, "bool", 0),
    (17, "bytea", 0),
    (18, "char", 0),
    (19, "name", 0),
    (20, "int8", 0),
    (21, "int2", 0),
    (22, "int2vector", 0),
    (23, "int4", 0),
    (24, "regproc", 0),
    (25, "text", 0),
    (26, "oid", 0),
    (27, "tid", 0),
    (28, "xid", 0),
    (29, "cid", 0),
    (30, "oidvector", 0),
    (114, "json", 0),
    (142, "xml", 0),
    (143, "_xml", 142),
    (199, "_json", 114),
    (271, "_xid8", 5069),
    (600, "point", 0),
    (601, "lseg", 0),
    (602, "path", 0),
    (603, "box", 0),
    (604, "polygon", 0),
    (628, "line", 0),
    (629, "_line", 628),
    (650, "cidr", 0),
    (651, "_cidr", 650),
    (700, "float4", 0),
    (701, "float8", 0),
    (718, "circle", 0),
    (719, "_circle", 718),
    (774, "macaddr8", 0),
    (775, "_macaddr8", 774),
    (790, "money", 0),
    (791, "_money", 790),
    (829, "macaddr", 0),
    (869, "inet", 0),
    (1000, "_bool", 16),
    (1001, "_bytea", 17),
    (1002, "_char", 18),
    (1003, "_name", 19),
    (1005, "_int2", 21),
    (1006, "_int2vector", 22),
    (1007, "_int4", 23),
    (1008, "_regproc", 24),
    (1009, "_text", 25),
    (1010, "_tid", 27),
    (1011, "_xid", 28),
    (1012, "_cid", 29),
    (1013, "_oidvector", 30),
    (1014, "_bpchar", 1042),
    (1015, "_varchar", 1043),
    (1016, "_int8", 20),
    (1017, "_point", 600),
    (1018, "_lseg", 601),
    (1019, "_path", 602),
    (1020, "_box", 603),
    (1021, "_float4", 700),
    (1022, "_float8", 701),
    (1027, "_polygon", 604),
    (1028, "_oid", 26),
    (1033, "aclitem", 0),
    (1034, "_aclitem", 1033),
    (1040, "_macaddr", 829),
    (1041, "_inet", 869),
    (1042, "bpchar", 0),
    (1043, "varchar", 0),
    (1082, "date", 0),
    (1083, "time", 0),
    (1114, "timestamp", 0),
    (1115, "_timestamp", 1114),
    (1182, "_date", 1082),
    (1183, "_time", 1083),
    (1184, "timestamptz", 0),
    (1185, "_timestamptz", 1184),
    (1186, "interval", 0),
    (1187, "_interval", 1186),
    (1231, "_numeric", 1700),
    (1266, "timetz", 0),
    (1270, "_timetz", 1266),
    (1560, "bit", 0),
    (1561, "_bit", 1560),
    (1562, "varbit", 0),
    (1563, "_varbit", 1562),
    (1700, "numeric", 0),
    (1790, "refcursor", 0),
    (2201, "_refcursor", 1790),
    (2202, "regprocedure", 0),
    (2203, "regoper", 0),
    (2204, "regoperator", 0),
    (2205, "regclass", 0),
    (2206, "regtype", 0),
    (2207, "_regprocedure", 2202),
    (2208, "_regoper", 2203),
    (2209, "_regoperator", 2204),
    (2210, "_regclass", 2205),
    (2211, "_regtype", 2206),
    (2949, "_txid_snapshot", 2970),
    (2950, "uuid", 0),
    (2951, "_uuid", 2950),
    (2970, "txid_snapshot", 0),
    (3220, "pg_lsn", 0),
    (3221, "_pg_lsn", 3220),
    (3614, "tsvector", 0),
    (3615, "tsquery", 0),
    (3643, "_tsvector", 3614),
    (3645, "_tsquery", 3615),
    (3734, "regconfig", 0),
    (3735, "_regconfig", 3734),
    (3769, "regdictionary", 0),
    (3770, "_regdictionary", 3769),
    (3802, "jsonb", 0),
    (3807, "_jsonb", 3802),
    (3904, "int4range", 0),
    (3905, "_int4range", 3904),
    (3906, "numrange", 0),
    (3907, "_numrange", 3906),
    (3908, "tsrange", 0),
    (3909, "_tsrange", 3908),
    (3910, "tstzrange", 0),
    (3911, "_tstzrange", 3910),
    (3912, "daterange", 0),
    (3913, "_daterange", 3912),
    (3926, "int8range", 0),
    (3927, "_int8range", 3926),
    (4072, "jsonpath", 0),
    (4073, "_jsonpath", 4072),
    (4089, "regnamespace", 0),
    (4090, "_regnamespace", 4089),
    (4096, "regrole", 0),
    (4097, "_regrole", 4096),
    (4191, "regcollation", 0),
    (4192, "_regcollation", 4191),
    (5038, "pg_snapshot", 0),
    (5039, "_pg_snapshot", 5038),
    (5069, "xid8", 0),
];

fn builtin(oid: u32) -> Option<(u32, &'static str, u32)> {
    BUILTIN_TYPES
        .binary_search_by_key(&oid, |&(oid, _, _)| oid)
        .ok()
        .and_then(|index| BUILTIN_TYPES.get(index).copied())
}

/// The name of a built-in type (`int4`, `_text`, ...).
pub fn type_name(oid: u32) -> Option<&'static str> {
    builtin(oid).map(|(_, name, _)| name)
}

/// The element type of a built-in array type.
pub fn element_type(array_oid: u32) -> Option<u32> {
    builtin(array_oid).and_then(|(_, _, element)| (element != 0).then_some(element))
}

/// Every built-in type this module knows: oid and name.
pub fn builtin_types() -> impl Iterator<Item = (u32, &'static str)> {
    BUILTIN_TYPES.iter().map(|&(oid, name, _)| (oid, name))
}

/// Type names: the built-in ones, and user types (enums, domains, composite
/// types) as pgoutput Type messages describe them.
#[derive(Debug, Clone, Default)]
pub struct TypeRegistry {
    user: HashMap<u32, String>,
}

impl TypeRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a type from a Type message. The name is `namespace.name`, or
    /// just `name` for `pg_catalog` (sent as an empty namespace).
    pub fn record(&mut self, oid: u32, namespace: &str, name: &str) {
        let full = if namespace.is_empty() || namespace == "pg_catalog" {
            name.to_owned()
        } else {
            format!("{namespace}.{name}")
        };
        self.user.insert(oid, full);
    }

    /// The type's name: built-in, recorded, or `oid:12345` when unknown.
    pub fn name(&self, oid: u32) -> String {
        match type_name(oid) {
            Some(name) => name.to_owned(),
            None => match self.user.get(&oid) {
                Some(name) => name.clone(),
                None => format!("oid:{oid}"),
            },
        }
    }
}

/// A text value that does not parse as its type. Says which type and what
/// was wrong; never contains the value.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("malformed {type_name} value{}: {problem}", in_array(.array))]
pub struct ValueError {
    /// The type whose text was malformed (the element type inside an array).
    pub type_name: &'static str,
    /// What was wrong.
    pub problem: &'static str,
    /// The array type, when the malformed value was an array element.
    pub array: Option<&'static str>,
}

fn in_array(array: &Option<&'static str>) -> String {
    match array {
        Some(array) => format!(" in a {array} array"),
        None => String::new(),
    }
}

/// Microseconds in a day.
const DAY_MICROS: i64 = 86_400_000_000;
/// The first date Postgres accepts, 4714-11-24 BC, in days since 1970-01-01.
pub const MIN_DATE_DAYS: i32 = days_from_civil(-4713, 11, 24) as i32;
/// The last date Postgres accepts, 5874897-12-31, in days since 1970-01-01.
pub const MAX_DATE_DAYS: i32 = days_from_civil(5_874_897, 12, 31) as i32;
/// The first timestamp Postgres accepts, 4714-11-24 00:00:00 BC, in
/// microseconds since the Unix epoch. The last one representable here is
/// `i64::MAX - 1` (`i64::MAX` is `infinity`).
pub const MIN_TIMESTAMP_MICROS: i64 = MIN_DATE_DAYS as i64 * DAY_MICROS;

/// Days since 1970-01-01 of a proleptic Gregorian date (astronomical years:
/// 1 BC is year 0). Counts from March so the leap day ends the counted year.
const fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_from_march = (month + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The proleptic Gregorian date (astronomical year, month, day) of a day
/// count since 1970-01-01: the inverse of [`days_from_civil`].
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let days = days + 719_468;
    let era = days.div_euclid(146_097);
    let day_of_era = days - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn is_leap_year(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap_year(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Parses a column's text value, given its type oid. Types without a
/// [`Value`] variant of their own (and unknown oids) become [`Value::Text`].
pub fn parse_text(type_oid: u32, text: &str) -> Result<Value, ValueError> {
    match builtin(type_oid) {
        // box[] separates its elements with ';': it travels as text.
        Some((_, _, oid::BOX)) => Ok(Value::Text(text.to_owned())),
        Some((_, name, element)) if element != 0 => parse_array(name, element, text),
        _ => parse_scalar(type_oid, text).map_err(|problem| ValueError {
            type_name: type_name(type_oid).unwrap_or("unknown"),
            problem,
            array: None,
        }),
    }
}

type Problem = &'static str;

fn parse_scalar(type_oid: u32, text: &str) -> Result<Value, Problem> {
    Ok(match type_oid {
        oid::BOOL => match text {
            "t" | "true" => Value::Bool(true),
            "f" | "false" => Value::Bool(false),
            _ => return Err("expected t or f"),
        },
        oid::INT2 => Value::Int(parse_int(text, i16::MIN.into(), i16::MAX.into())?),
        oid::INT4 => Value::Int(parse_int(text, i32::MIN.into(), i32::MAX.into())?),
        oid::INT8 => Value::Int(parse_int(text, i64::MIN, i64::MAX)?),
        oid::OID => Value::Int(parse_int(text, 0, u32::MAX.into())?),
        oid::FLOAT4 | oid::FLOAT8 => Value::Float(parse_float(text)?),
        oid::NUMERIC => {
            check_numeric(text)?;
            Value::Numeric(text.to_owned())
        }
        oid::BYTEA => Value::Bytes(parse_bytea(text)?),
        oid::TIMESTAMP => Value::Timestamp(parse_timestamp(text, false)?),
        oid::TIMESTAMPTZ => Value::TimestampTz(parse_timestamp(text, true)?),
        oid::DATE => Value::Date(parse_date(text)?),
        oid::TIME => Value::Time(parse_time(text)?),
        oid::UUID => Value::Uuid(parse_uuid(text)?),
        oid::JSON | oid::JSONB => Value::Json(text.to_owned()),
        _ => Value::Text(text.to_owned()),
    })
}

fn parse_int(text: &str, min: i64, max: i64) -> Result<i64, Problem> {
    let value: i64 = text.parse().map_err(|_| "expected an integer")?;
    if (min..=max).contains(&value) {
        Ok(value)
    } else {
        Err("integer out of range")
    }
}

fn parse_float(text: &str) -> Result<f64, Problem> {
    match text {
        "NaN" => Ok(f64::NAN),
        "Infinity" => Ok(f64::INFINITY),
        "-Infinity" => Ok(f64::NEG_INFINITY),
        // Rust also reads "inf" and "nan" in any case; Postgres accepts those too.
        _ => text.parse().map_err(|_| "expected a floating point number"),
    }
}

/// `[+-]digits[.digits][e[+-]digits]`, or NaN / Infinity / -Infinity.
fn check_numeric(text: &str) -> Result<(), Problem> {
    const PROBLEM: Problem = "expected a decimal number";
    if matches!(text, "NaN" | "Infinity" | "-Infinity") {
        return Ok(());
    }
    let mut scan = Scan::new(text);
    let _ = scan.eat(b'+') || scan.eat(b'-');
    let whole = scan.skip_digits();
    let fraction = if scan.eat(b'.') {
        scan.skip_digits()
    } else {
        0
    };
    if whole + fraction == 0 {
        return Err(PROBLEM);
    }
    if scan.eat(b'e') || scan.eat(b'E') {
        let _ = scan.eat(b'+') || scan.eat(b'-');
        if scan.skip_digits() == 0 {
            return Err(PROBLEM);
        }
    }
    if scan.done() {
        Ok(())
    } else {
        Err(PROBLEM)
    }
}

fn hex_value(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

/// bytea: hex format `\x0a1b` (whitespace between pairs allowed, as Postgres
/// does), or the legacy escape format (`\\` and `\ooo`, other bytes as is).
fn parse_bytea(text: &str) -> Result<Vec<u8>, Problem> {
    let bytes = text.as_bytes();
    if let Some(hex) = bytes.strip_prefix(b"\\x") {
        let mut out = Vec::with_capacity(hex.len() / 2);
        let mut digits = hex.iter().filter(|byte| !byte.is_ascii_whitespace());
        while let Some(&high) = digits.next() {
            let low = digits.next().ok_or("odd number of hex digits")?;
            let high = hex_value(high).ok_or("invalid hex digit")?;
            let low = hex_value(*low).ok_or("invalid hex digit")?;
            out.push(high << 4 | low);
        }
        return Ok(out);
    }
    let mut out = Vec::with_capacity(bytes.len());
    let mut rest = bytes;
    while let Some((&byte, tail)) = rest.split_first() {
        if byte != b'\\' {
            out.push(byte);
            rest = tail;
            continue;
        }
        match tail {
            [b'\\', tail @ ..] => {
                out.push(b'\\');
                rest = tail;
            }
            [a @ b'0'..=b'3', b @ b'0'..=b'7', c @ b'0'..=b'7', tail @ ..] => {
                out.push((a - b'0') << 6 | (b - b'0') << 3 | (c - b'0'));
                rest = tail;
            }
            _ => return Err("invalid escape sequence"),
        }
    }
    Ok(out)
}

/// A cursor over ASCII syntax; every method checks bounds.
struct Scan<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Scan<'a> {
    fn new(text: &'a str) -> Self {
        Scan {
            bytes: text.as_bytes(),
            pos: 0,
        }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn eat(&mut self, wanted: u8) -> bool {
        if self.peek() == Some(wanted) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn done(&self) -> bool {
        self.pos >= self.bytes.len()
    }

    fn skip_digits(&mut self) -> usize {
        let start = self.pos;
        while self.peek().is_some_and(|byte| byte.is_ascii_digit()) {
            self.pos += 1;
        }
        self.pos - start
    }

    /// Between `min` and `max` digits, as a number and their count.
    fn digits(
        &mut self,
        min: usize,
        max: usize,
        problem: Problem,
    ) -> Result<(i64, usize), Problem> {
        let mut value: i64 = 0;
        let mut count = 0;
        while count < max {
            match self.peek() {
                Some(byte @ b'0'..=b'9') => {
                    value = value * 10 + i64::from(byte - b'0');
                    count += 1;
                    self.pos += 1;
                }
                _ => break,
            }
        }
        if count < min {
            Err(problem)
        } else {
            Ok((value, count))
        }
    }

    fn expect(&mut self, wanted: u8, problem: Problem) -> Result<(), Problem> {
        if self.eat(wanted) {
            Ok(())
        } else {
            Err(problem)
        }
    }
}

/// `text` without a trailing ` BC`, and whether it had one.
fn strip_bc(text: &str) -> (&str, bool) {
    match text.strip_suffix(" BC") {
        Some(rest) => (rest, true),
        None => (text, false),
    }
}

/// `YYYY-MM-DD` (year of 1 to 9 digits) as days since 1970-01-01.
fn scan_date(scan: &mut Scan<'_>, bc: bool) -> Result<i64, Problem> {
    let (year, _) = scan.digits(1, 9, "expected a year")?;
    scan.expect(b'-', "expected '-' after the year")?;
    let (month, _) = scan.digits(2, 2, "expected a two-digit month")?;
    scan.expect(b'-', "expected '-' after the month")?;
    let (day, _) = scan.digits(2, 2, "expected a two-digit day")?;
    if year == 0 {
        return Err("year 0 does not exist (1 BC precedes 1 AD)");
    }
    let year = if bc { 1 - year } else { year };
    if !(1..=12).contains(&month) {
        return Err("month out of range");
    }
    if !(1..=days_in_month(year, month)).contains(&day) {
        return Err("day out of range for the month");
    }
    Ok(days_from_civil(year, month, day))
}

/// `HH:MM:SS[.f{1,6}]` as microseconds; `24:00:00` only when `allow_24`.
fn scan_time(scan: &mut Scan<'_>, allow_24: bool) -> Result<i64, Problem> {
    let (hours, _) = scan.digits(2, 2, "expected two-digit hours")?;
    scan.expect(b':', "expected ':' after the hours")?;
    let (minutes, _) = scan.digits(2, 2, "expected two-digit minutes")?;
    scan.expect(b':', "expected ':' after the minutes")?;
    let (seconds, _) = scan.digits(2, 2, "expected two-digit seconds")?;
    let mut micros = 0;
    if scan.eat(b'.') {
        let (fraction, count) = scan.digits(1, 6, "expected 1 to 6 fractional digits")?;
        micros = fraction * 10_i64.pow(6 - count as u32);
        if scan.peek().is_some_and(|byte| byte.is_ascii_digit()) {
            return Err("more than 6 fractional digits");
        }
    }
    if minutes > 59 || seconds > 59 {
        return Err("minutes or seconds out of range");
    }
    let total = ((hours * 60 + minutes) * 60 + seconds) * 1_000_000 + micros;
    if hours < 24 || (allow_24 && total == DAY_MICROS) {
        Ok(total)
    } else {
        Err("hours out of range")
    }
}

/// `+HH[:MM[:SS]]` or `-...`, as seconds east of UTC.
fn scan_offset(scan: &mut Scan<'_>) -> Result<i64, Problem> {
    let sign = if scan.eat(b'+') {
        1
    } else if scan.eat(b'-') {
        -1
    } else {
        return Err("expected a UTC offset");
    };
    let (hours, _) = scan.digits(2, 2, "expected two-digit offset hours")?;
    let mut minutes = 0;
    let mut seconds = 0;
    if scan.eat(b':') {
        minutes = scan.digits(2, 2, "expected two-digit offset minutes")?.0;
        if scan.eat(b':') {
            seconds = scan.digits(2, 2, "expected two-digit offset seconds")?.0;
        }
    }
    if hours > 15 || minutes > 59 || seconds > 59 {
        return Err("UTC offset out of range");
    }
    Ok(sign * ((hours * 60 + minutes) * 60 + seconds))
}

fn parse_timestamp(text: &str, with_zone: bool) -> Result<i64, Problem> {
    match text {
        "infinity" => return Ok(i64::MAX),
        "-infinity" => return Ok(i64::MIN),
        _ => {}
    }
    let (body, bc) = strip_bc(text);
    let mut scan = Scan::new(body);
    let days = scan_date(&mut scan, bc)?;
    if !(scan.eat(b' ') || scan.eat(b'T')) {
        return Err("expected a space between date and time");
    }
    let time = scan_time(&mut scan, false)?;
    let offset_seconds = if with_zone {
        scan_offset(&mut scan)?
    } else {
        0
    };
    if !scan.done() {
        return Err("unexpected characters after the timestamp");
    }
    let micros = i128::from(days) * i128::from(DAY_MICROS) + i128::from(time)
        - i128::from(offset_seconds) * 1_000_000;
    match i64::try_from(micros) {
        Ok(micros) if (MIN_TIMESTAMP_MICROS..i64::MAX).contains(&micros) => Ok(micros),
        _ => Err("timestamp out of range"),
    }
}

fn parse_date(text: &str) -> Result<i32, Problem> {
    match text {
        "infinity" => return Ok(i32::MAX),
        "-infinity" => return Ok(i32::MIN),
        _ => {}
    }
    let (body, bc) = strip_bc(text);
    let mut scan = Scan::new(body);
    let days = scan_date(&mut scan, bc)?;
    if !scan.done() {
        return Err("unexpected characters after the date");
    }
    match i32::try_from(days) {
        Ok(days) if (MIN_DATE_DAYS..=MAX_DATE_DAYS).contains(&days) => Ok(days),
        _ => Err("date out of range"),
    }
}

fn parse_time(text: &str) -> Result<i64, Problem> {
    let mut scan = Scan::new(text);
    let micros = scan_time(&mut scan, true)?;
    if scan.done() {
        Ok(micros)
    } else {
        Err("unexpected characters after the time")
    }
}

/// 32 hex digits, hyphenated 8-4-4-4-12 (as Postgres writes them) or not.
fn parse_uuid(text: &str) -> Result<[u8; 16], Problem> {
    let bytes = text.as_bytes();
    let hyphenated = bytes.len() == 36;
    if hyphenated {
        for at in [8, 13, 18, 23] {
            if bytes.get(at) != Some(&b'-') {
                return Err("expected hyphens at positions 8, 13, 18 and 23");
            }
        }
    } else if bytes.len() != 32 {
        return Err("expected 32 hex digits");
    }
    let mut digits = bytes.iter().filter(|&&byte| !(hyphenated && byte == b'-'));
    let mut out = [0_u8; 16];
    for slot in &mut out {
        let (Some(&high), Some(&low)) = (digits.next(), digits.next()) else {
            return Err("expected 32 hex digits");
        };
        let high = hex_value(high).ok_or("invalid hex digit")?;
        let low = hex_value(low).ok_or("invalid hex digit")?;
        *slot = high << 4 | low;
    }
    if digits.next().is_some() {
        return Err("expected 32 hex digits");
    }
    Ok(out)
}

/// Postgres allows at most 6 array dimensions.
const MAX_ARRAY_DIMENSIONS: usize = 6;

/// Whitespace as Postgres's array parser sees it.
fn is_array_space(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\n' | b'\r' | b'\x0b' | b'\x0c')
}

fn parse_array(array_name: &'static str, element: u32, text: &str) -> Result<Value, ValueError> {
    let mut parser = ArrayParser {
        scan: Scan::new(text),
        array_name,
        element,
    };
    parser.skip_space();
    if parser.scan.peek() == Some(b'[') {
        // Explicit lower bounds: keep the value exact by sending it as text.
        return Err(parser.error("explicit array bounds are not supported"));
    }
    let value = parser.array(1)?;
    parser.skip_space();
    if parser.scan.done() {
        Ok(value)
    } else {
        Err(parser.error("unexpected characters after the array"))
    }
}

struct ArrayParser<'a> {
    scan: Scan<'a>,
    array_name: &'static str,
    element: u32,
}

impl ArrayParser<'_> {
    fn error(&self, problem: Problem) -> ValueError {
        ValueError {
            type_name: self.array_name,
            problem,
            array: None,
        }
    }

    fn skip_space(&mut self) {
        while self.scan.peek().is_some_and(is_array_space) {
            self.scan.pos += 1;
        }
    }

    /// `{...}` at nesting level `depth` (1 for the outermost).
    fn array(&mut self, depth: usize) -> Result<Value, ValueError> {
        if !self.scan.eat(b'{') {
            return Err(self.error("expected '{'"));
        }
        let mut items = Vec::new();
        self.skip_space();
        if self.scan.eat(b'}') {
            return Ok(Value::Array(items));
        }
        loop {
            self.skip_space();
            let item = match self.scan.peek() {
                Some(b'{') => {
                    if depth >= MAX_ARRAY_DIMENSIONS {
                        return Err(self.error("more than 6 dimensions"));
                    }
                    self.array(depth + 1)?
                }
                Some(b'"') => {
                    let text = self.quoted()?;
                    self.element(&text)?
                }
                Some(b',' | b'}') => return Err(self.error("empty element")),
                None => return Err(self.error("unterminated array")),
                Some(_) => {
                    let (text, escaped) = self.unquoted()?;
                    if !escaped && text.eq_ignore_ascii_case("NULL") {
                        Value::Null
                    } else {
                        self.element(&text)?
                    }
                }
            };
            items.push(item);
            self.skip_space();
            match self.scan.peek() {
                Some(b',') => self.scan.pos += 1,
                Some(b'}') => {
                    self.scan.pos += 1;
                    break;
                }
                _ => return Err(self.error("expected ',' or '}' after an element")),
            }
        }
        self.check_shape(&items)?;
        Ok(Value::Array(items))
    }

    /// Sub-arrays and scalars do not mix, and sub-arrays have one length.
    fn check_shape(&self, items: &[Value]) -> Result<(), ValueError> {
        let length = |item: &Value| match item {
            Value::Array(inner) => Some(inner.len()),
            _ => None,
        };
        let first = items.first().map(length);
        if items.iter().all(|item| Some(length(item)) == first) {
            Ok(())
        } else {
            Err(self.error("sub-arrays of different dimensions"))
        }
    }

    /// A `"..."` element, backslash escapes resolved.
    fn quoted(&mut self) -> Result<String, ValueError> {
        self.scan.pos += 1;
        let mut out = Vec::new();
        loop {
            match self.scan.peek() {
                None => return Err(self.error("unterminated quoted element")),
                Some(b'"') => {
                    self.scan.pos += 1;
                    break;
                }
                Some(b'\\') => {
                    self.scan.pos += 1;
                    let escaped = self
                        .scan
                        .peek()
                        .ok_or_else(|| self.error("unterminated quoted element"))?;
                    out.push(escaped);
                    self.scan.pos += 1;
                }
                Some(byte) => {
                    out.push(byte);
                    self.scan.pos += 1;
                }
            }
        }
        self.utf8(out)
    }

    /// An unquoted element up to ',' or '}', trailing whitespace removed;
    /// also says whether it used a backslash escape.
    fn unquoted(&mut self) -> Result<(String, bool), ValueError> {
        let mut out = Vec::new();
        let mut kept = 0;
        let mut escaped = false;
        loop {
            match self.scan.peek() {
                None => return Err(self.error("unterminated array")),
                Some(b',' | b'}') => break,
                Some(b'{' | b'"') => return Err(self.error("unexpected '{' or '\"' in an element")),
                Some(b'\\') => {
                    self.scan.pos += 1;
                    let byte = self
                        .scan
                        .peek()
                        .ok_or_else(|| self.error("unterminated array"))?;
                    out.push(byte);
                    self.scan.pos += 1;
                    kept = out.len();
                    escaped = true;
                }
                Some(byte) => {
                    out.push(byte);
                    self.scan.pos += 1;
                    if !is_array_space(byte) {
                        kept = out.len();
                    }
                }
            }
        }
        out.truncate(kept);
        Ok((self.utf8(out)?, escaped))
    }

    fn utf8(&self, bytes: Vec<u8>) -> Result<String, ValueError> {
        // Only ASCII bytes were removed from valid UTF-8, so this holds.
        String::from_utf8(bytes).map_err(|_| self.error("invalid UTF-8 in an element"))
    }

    fn element(&self, text: &str) -> Result<Value, ValueError> {
        parse_scalar(self.element, text).map_err(|problem| ValueError {
            type_name: type_name(self.element).unwrap_or("unknown"),
            problem,
            array: Some(self.array_name),
        })
    }
}

/// Postgres input text for a value: what `INSERT ... VALUES ($1::type)` or
/// a `COPY` accepts. None for [`Value::Null`] and [`Value::Unchanged`].
///
/// Timestamps are ISO (`2024-02-29 13:45:00.000123`, six fractional digits
/// when there is a fraction, ` BC` before 1 AD), timestamptz in UTC with
/// `+00`, bytea as `\x...`, floats so that they read back exactly, arrays as
/// `{...}` literals with elements quoted where needed (an array element that
/// is [`Value::Unchanged`] is written as NULL).
pub fn to_text(value: &Value) -> Option<String> {
    Some(match value {
        Value::Null | Value::Unchanged => return None,
        Value::Bool(value) => if *value { "t" } else { "f" }.to_owned(),
        Value::Int(value) => value.to_string(),
        Value::Float(value) => float_text(*value),
        Value::Numeric(text) | Value::Text(text) | Value::Json(text) => text.clone(),
        Value::Bytes(bytes) => {
            let mut text = String::with_capacity(2 + bytes.len() * 2);
            text.push_str("\\x");
            for byte in bytes {
                push_hex(&mut text, *byte);
            }
            text
        }
        Value::Timestamp(micros) => timestamp_text(*micros, false),
        Value::TimestampTz(micros) => timestamp_text(*micros, true),
        Value::Date(days) => match *days {
            i32::MAX => "infinity".to_owned(),
            i32::MIN => "-infinity".to_owned(),
            days => {
                let mut text = String::new();
                let bc = push_date(&mut text, days.into());
                if bc {
                    text.push_str(" BC");
                }
                text
            }
        },
        Value::Time(micros) => {
            let mut text = String::new();
            if *micros < 0 {
                // Not a valid time; written so that Postgres refuses it.
                text.push('-');
            }
            push_time(&mut text, micros.unsigned_abs());
            text
        }
        Value::Uuid(bytes) => {
            let mut text = String::with_capacity(36);
            for (index, byte) in bytes.iter().enumerate() {
                if matches!(index, 4 | 6 | 8 | 10) {
                    text.push('-');
                }
                push_hex(&mut text, *byte);
            }
            text
        }
        Value::Array(items) => array_text(items),
    })
}

/// Appends `byte` as two lowercase hex digits (a `write!` per byte cost
/// about 3% of apply's CPU, in uuids).
fn push_hex(text: &mut String, byte: u8) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    text.push(char::from(DIGITS[usize::from(byte >> 4)]));
    text.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
}

fn float_text(value: f64) -> String {
    if value.is_nan() {
        "NaN".to_owned()
    } else if value == f64::INFINITY {
        "Infinity".to_owned()
    } else if value == f64::NEG_INFINITY {
        "-Infinity".to_owned()
    } else {
        // Both forms print the shortest digits that read back exactly.
        let magnitude = value.abs();
        if magnitude != 0.0 && !(1e-5..1e16).contains(&magnitude) {
            format!("{value:e}")
        } else {
            format!("{value}")
        }
    }
}

/// Appends `YYYY-MM-DD` for a day count; returns whether the year is BC.
fn push_date(text: &mut String, days: i64) -> bool {
    let (year, month, day) = civil_from_days(days);
    let (year, bc) = if year <= 0 {
        (1 - year, true)
    } else {
        (year, false)
    };
    let _ = write!(text, "{year:04}-{month:02}-{day:02}");
    bc
}

/// Appends `HH:MM:SS[.ffffff]`.
fn push_time(text: &mut String, micros: u64) {
    let fraction = micros % 1_000_000;
    let seconds = micros / 1_000_000;
    let _ = write!(
        text,
        "{:02}:{:02}:{:02}",
        seconds / 3600,
        seconds / 60 % 60,
        seconds % 60
    );
    if fraction != 0 {
        let _ = write!(text, ".{fraction:06}");
    }
}

fn timestamp_text(micros: i64, with_zone: bool) -> String {
    match micros {
        i64::MAX => return "infinity".to_owned(),
        i64::MIN => return "-infinity".to_owned(),
        _ => {}
    }
    let mut text = String::with_capacity(32);
    let bc = push_date(&mut text, micros.div_euclid(DAY_MICROS));
    text.push(' ');
    push_time(&mut text, micros.rem_euclid(DAY_MICROS).unsigned_abs());
    if with_zone {
        text.push_str("+00");
    }
    if bc {
        text.push_str(" BC");
    }
    text
}

/// An array literal, built without recursion so that no nesting depth can
/// exhaust the stack.
fn array_text(items: &[Value]) -> String {
    let mut text = String::from("{");
    let mut open = vec![items.iter()];
    let mut first = true;
    while let Some(level) = open.last_mut() {
        let Some(item) = level.next() else {
            text.push('}');
            open.pop();
            first = false;
            continue;
        };
        if !first {
            text.push(',');
        }
        first = false;
        match item {
            Value::Array(inner) => {
                text.push('{');
                open.push(inner.iter());
                first = true;
            }
            Value::Null | Value::Unchanged => text.push_str("NULL"),
            scalar => push_element(&mut text, &to_text(scalar).unwrap_or_default()),
        }
    }
    text
}

/// Appends an array element, quoted and escaped when Postgres needs it.
fn push_element(text: &mut String, element: &str) {
    let needs_quotes = element.is_empty()
        || element.eq_ignore_ascii_case("NULL")
        || element
            .bytes()
            .any(|byte| matches!(byte, b'"' | b'\\' | b'{' | b'}' | b',') || is_array_space(byte));
    if !needs_quotes {
        text.push_str(element);
        return;
    }
    text.push('"');
    for character in element.chars() {
        if matches!(character, '"' | '\\') {
            text.push('\\');
        }
        text.push(character);
    }
    text.push('"');
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
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
            0xa0, 0xee, 0xbc, 0x99, 0x9c, 0x0b, 0x4e, 0xf8, 0xbb, 0x6d, 0x6b, 0xb9, 0xbd, 0x38,
            0x0a, 0x11,
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
                proptest::sample::select(vec!["NULL", "null", "Null", "", " "])
                    .prop_map(String::from),
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
}
