//! The settings every bridge session to a source or target database runs
//! with, so that values are rendered in the one text form [`crate::value`]
//! parses and writes, whatever the server's defaults are.

/// Startup options (`options` connection parameter) that pin how values are
/// rendered in text: ISO dates, UTC, floats that read back exactly, hex
/// bytea, standard strings.
pub const OPTIONS: &str = "-c DateStyle=ISO -c TimeZone=UTC -c extra_float_digits=3 -c IntervalStyle=postgres -c bytea_output=hex -c standard_conforming_strings=on";
