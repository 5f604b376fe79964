//! Fuzzes the pgoutput decoder and the text value parser.
//!
//! Run from `postgres/fuzz` with a nightly toolchain:
//! `cargo +nightly fuzz run pgoutput`.
//!
//! Every input is decoded as a pgoutput message. It is also split into a
//! type oid and a text value: a value that parses must print (`to_text`) as
//! text that parses back to the same value.

#![no_main]

use libfuzzer_sys::fuzz_target;
use schemas::event::Value;

use pg::pgoutput;
use pg::value;

fuzz_target!(|data: &[u8]| {
    let _ = pgoutput::decode(&bytes::Bytes::copy_from_slice(data));

    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let builtin: Vec<u32> = value::builtin_types().map(|(oid, _)| oid).collect();
    // Mostly a built-in type; otherwise a raw oid from the next four bytes.
    let (type_oid, text) = match builtin.get(usize::from(selector)) {
        Some(&oid) => (oid, rest),
        None if rest.len() >= 4 => {
            let (oid, text) = rest.split_at(4);
            (u32::from_be_bytes([oid[0], oid[1], oid[2], oid[3]]), text)
        }
        None => return,
    };
    let text = String::from_utf8_lossy(text);
    if let Ok(value) = value::parse_text(type_oid, &text) {
        if let Some(printed) = value::to_text(&value) {
            match value::parse_text(type_oid, &printed) {
                Ok(again) => assert!(same(&value, &again), "to_text did not round-trip"),
                Err(error) => panic!("to_text wrote unparsable text: {error}"),
            }
        }
    }
});

/// Equality, with NaN equal to NaN.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Float(a), Value::Float(b)) => a == b || (a.is_nan() && b.is_nan()),
        (Value::Array(a), Value::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(a, b)| same(a, b))
        }
        _ => a == b,
    }
}
