//! The row clock: one order of a row's versions that both databases agree
//! on, whatever the writers' clocks say.
//!
//! Every version of a captured row carries a clock, `(seconds, tick)`,
//! stamped in the database that wrote it and kept per row in
//! `syncbridge.row_clock`:
//!
//! - an application's write is stamped by a row trigger
//!   ([`INSTALL_TRIGGER`]): `seconds` is the row's `updated_at` at whole
//!   seconds (the statement time for a delete), unless the version it
//!   replaces has a clock at least as late, in which case it takes that
//!   version's `seconds` and the next `tick`. A version is therefore always
//!   later than the one it was made on top of, whichever side wrote that
//!   one and whatever the timestamps say (a hybrid logical clock per row);
//! - a version apply writes carries the clock it had at its source
//!   (`origin` names that source), written by apply in the same statement;
//!   the trigger leaves apply's writes alone (`syncbridge.applying`).
//!
//! Versions compare by `(seconds, tick)`; a delete wins an equal clock, and
//! between two other versions with equal clocks the configured tie winner's
//! does. Both databases compare the same clocks the same way, so both keep
//! the same version in the end.
//!
//! A delete leaves its clock behind (`deleted`): a tombstone that an older
//! version arriving later cannot write over.

/// The table of row clocks and the functions that stamp them, created if
/// missing (`deploy/sql/row-clock.sql`). Run inside a transaction holding
/// [`crate::bookkeeping::INSTALL_LOCK`], after the `syncbridge` schema
/// exists.
///
/// The trigger functions are `SECURITY DEFINER`: the applications' roles
/// write their rows' clocks through them without any privilege on the
/// `syncbridge` schema. An existing function is never replaced: a change of
/// a body gets a new name, so an installation never has to replace a
/// function that another role owns.
pub const INSTALL: &str = include_str!("../../deploy/sql/row-clock.sql");

/// The name of the clock trigger on every captured table.
pub const TRIGGER: &str = "zz_syncbridge_clock";

/// Gives a table its clock trigger unless it has one. Parameters: `$1` the
/// table (`schema.table`, quoted as needed), `$2` its key column, `$3` its
/// version time column (`timestamptz`, or `timestamp` holding UTC; a table
/// without it is stamped with the statement time). Needs the table's
/// ownership.
pub const INSTALL_TRIGGER: &str = "SELECT syncbridge.install_clock($1::text::regclass, $2, $3)";

/// How `syncbridge.row_clock` names a table: `schema.table`, unquoted, as
/// the trigger writes it.
pub fn relation(schema: &str, table: &str) -> String {
    format!("{schema}.{table}")
}
