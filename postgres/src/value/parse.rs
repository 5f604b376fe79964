//! Postgres output text to typed [`Value`]s. Never panics on bad text; the
//! error names the type and the problem, never the value.

use schemas::event::Value;
use thiserror::Error;

use super::calendar::*;
use super::types::*;

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

pub(super) type Problem = &'static str;

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
pub(super) fn strip_bc(text: &str) -> (&str, bool) {
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
pub(super) fn is_array_space(byte: u8) -> bool {
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
