//! What both services know of PostgreSQL, with no Kafka and no C dependency.
//!
//! ```text
//!   source WAL ──► pgoutput::decode ──► value::parse_text ──► schemas::event::Value
//!                                                                   │
//!   target SQL ◄── ident::quote, value::to_text ◄───────────────────┘
//! ```
//!
//! - [`pgoutput`]: decodes the logical replication protocol; never panics on bad bytes.
//! - [`value`]: Postgres text to typed values and back.
//! - [`lsn`]: a position in the write-ahead log.
//! - [`time`]: the Postgres epoch and the clock, in microseconds.
//! - [`ident`]: identifiers, quoting and `schema.table` names.
//! - [`session`]: the settings that pin how a session renders values.
//! - [`sqlstate`]: which Postgres errors a retry can help.
//! - [`bookkeeping`]: the `syncbridge` schema both services share, and its lock.
//! - [`clock`]: the row clock that orders versions alike in both databases.

pub mod bookkeeping;
pub mod clock;
pub mod ident;
pub mod lsn;
pub mod pgoutput;
pub mod session;
pub mod sqlstate;
pub mod time;
pub mod value;

pub use lsn::Lsn;
