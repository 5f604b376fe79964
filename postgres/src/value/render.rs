//! Typed [`Value`]s to the text Postgres's input functions accept.

use std::fmt::Write as _;

use schemas::event::Value;

use super::calendar::*;
use super::parse::is_array_space;

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

/// Appends `byte` as two lowercase hex digits (a `write!` per byte showed
/// up in apply's profiles, in uuids).
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
