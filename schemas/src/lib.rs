//! The Sync Bridge event contract: the [`ChangeEvent`] that `capture` produces
//! and `apply` consumes, its Avro schemas, and the [`Codec`] that puts it on
//! and takes it off the wire.
//!
//! # Wire format
//!
//! Every Kafka message value is one event in Avro
//! [single-object encoding](https://avro.apache.org/docs/1.12.0/specification/#single-object-encoding):
//!
//! ```text
//! C3 01 | fingerprint (8 bytes) | Avro binary datum
//! ```
//!
//! The fingerprint is the CRC-64-AVRO (Rabin) fingerprint of the writer
//! schema's Parsing Canonical Form, in little-endian byte order. The datum is
//! the event in Avro's binary encoding under that writer schema.
//!
//! # Finding the writer schema without a registry
//!
//! Every schema version ever released is compiled into this crate
//! ([`VERSIONS`]). A reader computes the fingerprint of each of them once
//! ([`Codec::new`]); on decode it looks the message's fingerprint up among
//! them, decodes the datum with that writer schema and resolves it to the
//! current schema (Avro schema resolution: fields the writer did not have
//! take their defaults). So a consumer built from this crate reads every
//! message any earlier producer wrote, and a message from a producer newer
//! than the consumer fails with [`Error::UnknownFingerprint`] instead of
//! being misread: deploy `apply` before `capture` when the contract changes.
//!
//! Writers always write the current (last) version.
//!
//! # Adding a version
//!
//! 1. Copy the current `schemas/avro/change_event.vN.avsc` to
//!    `change_event.vN+1.avsc` and change the copy. Never edit a released
//!    file: its fingerprint is what old messages carry.
//! 2. Every new field needs a `default` (and a union with `null` first if it
//!    is optional), so data written with older versions still resolves. Keep
//!    record, enum and field names stable; never reuse or reorder enum
//!    symbols or union branches.
//! 3. Append the file to [`VERSIONS`] (it becomes [`CURRENT`]) and change the
//!    Rust types in [`event`] to match.
//! 4. Update the hand-written encoder (`codec/encode.rs`) and the conversion
//!    (`codec/convert.rs`), then its fingerprint guard
//!    (`ENCODER_FINGERPRINT`, which [`Codec::new`] checks), and the tests'
//!    frozen fingerprints and golden bytes. The tests check that every earlier
//!    version still decodes and that adjacent versions are compatible.
//!
//! # Avro names
//!
//! Schema names live in the `syncbridge` namespace. Rust and Avro field names
//! are the same except `Transaction::commit_time_micros` (Avro
//! `commit_time`) and `ChangeEvent::captured_at_micros` (Avro `captured_at`),
//! both `long` with logical type `timestamp-micros`. Unsigned Rust integers
//! travel in Avro `long`s; `u64` values are carried bit for bit. See the
//! `doc` attributes in the `.avsc` files for the rest, including why the
//! records in the column value union have distinct field names.
#![warn(missing_docs)]

pub mod codec;
mod error;
pub mod event;

pub use codec::Codec;
pub use error::Error;
pub use event::{CaptureMode, ChangeEvent, Clock, Column, Op, Transaction, Value};

/// One released version of the change-event schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchemaVersion {
    /// The version number: 1 for the first, consecutive after that.
    pub version: u32,
    /// The file name under `schemas/avro/`.
    pub file: &'static str,
    /// The schema's JSON, embedded at build time.
    pub json: &'static str,
}

/// Every released schema version, oldest first. The last one is [`CURRENT`],
/// the one writers use. Only ever append to this list.
pub const VERSIONS: &[SchemaVersion] = &[
    SchemaVersion {
        version: 1,
        file: "change_event.v1.avsc",
        json: include_str!("../avro/change_event.v1.avsc"),
    },
    SchemaVersion {
        version: 2,
        file: "change_event.v2.avsc",
        json: include_str!("../avro/change_event.v2.avsc"),
    },
    SchemaVersion {
        version: 3,
        file: "change_event.v3.avsc",
        json: include_str!("../avro/change_event.v3.avsc"),
    },
];

/// The current schema version: the one [`Codec::encode`] writes and
/// [`ChangeEvent`] corresponds to.
pub const CURRENT: SchemaVersion = VERSIONS[VERSIONS.len() - 1];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_numbered_consecutively_and_named_after_their_number() {
        for (i, v) in VERSIONS.iter().enumerate() {
            assert_eq!(v.version as usize, i + 1);
            assert_eq!(v.file, format!("change_event.v{}.avsc", v.version));
        }
        assert_eq!(CURRENT, VERSIONS[VERSIONS.len() - 1]);
    }
}
