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
//! - [`types`]: the built-in type oids and names, and user types as pgoutput describes them.
//! - [`parse`]: text to [`Value`].
//! - [`render`]: [`Value`] to text.
//! - [`calendar`]: the proleptic Gregorian arithmetic both directions share.

mod calendar;
mod parse;
mod render;
pub mod types;

pub use calendar::{MAX_DATE_DAYS, MIN_DATE_DAYS, MIN_TIMESTAMP_MICROS};
pub use parse::{parse_text, ValueError};
pub use render::to_text;
pub use types::{builtin_types, element_type, oid, type_name, TypeRegistry};

#[cfg(test)]
mod tests;
