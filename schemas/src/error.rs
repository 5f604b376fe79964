//! The crate's error type.

use std::fmt::Write as _;

/// Everything that can go wrong loading the contract or decoding a message.
///
/// None of these gets better by retrying: a schema file is wrong until the
/// crate is rebuilt, and a message's bytes never change. See
/// [`Error::is_retryable`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An embedded schema file does not parse, or breaks a rule of the
    /// contract (compatibility with the current version, distinct
    /// fingerprints, the encoder matching the current version). A build
    /// problem, never a data problem.
    #[error("schema file {file} (v{version}) is invalid: {reason}")]
    InvalidSchema {
        /// The version number of the offending file.
        version: u32,
        /// The offending file's name.
        file: &'static str,
        /// What is wrong with it.
        reason: String,
        /// The apache-avro error behind it, when there is one.
        #[source]
        source: Option<apache_avro::Error>,
    },

    /// The message does not start with the single-object marker `C3 01`
    /// followed by an 8-byte fingerprint (it is too short, or not one of our
    /// messages at all).
    #[error(
        "bad single-object header: expected C3 01 and an 8-byte schema fingerprint, got [{}]",
        hex(.found)
    )]
    BadHeader {
        /// The first bytes of the message (at most 10).
        found: Vec<u8>,
    },

    /// The message names a writer schema this build does not know: written
    /// by a newer producer (deploy consumers first), or not ours.
    #[error("unknown writer schema fingerprint {}", hex(.fingerprint))]
    UnknownFingerprint {
        /// The fingerprint, as the 8 bytes found on the wire (little-endian
        /// CRC-64-AVRO).
        fingerprint: [u8; 8],
    },

    /// The datum is not a valid encoding under its writer schema, found by
    /// this crate's structural check before apache-avro decodes it
    /// (truncated, trailing bytes, impossible lengths, arrays nested deeper
    /// than [`MAX_ARRAY_DEPTH`](crate::codec::MAX_ARRAY_DEPTH), ...).
    #[error("invalid datum (writer schema v{version}) at byte {offset} of the datum: {reason}")]
    InvalidDatum {
        /// The writer schema version named by the header.
        version: u32,
        /// The offset into the datum (after the 10-byte header).
        offset: usize,
        /// What is wrong there.
        reason: &'static str,
    },

    /// apache-avro could not decode or resolve the datum.
    #[error("malformed datum (writer schema v{version})")]
    MalformedDatum {
        /// The writer schema version named by the header.
        version: u32,
        /// apache-avro's error.
        #[source]
        source: apache_avro::Error,
    },

    /// The datum decoded, but a value does not fit [`ChangeEvent`](crate::ChangeEvent)
    /// (a missing field, a wrong type, an integer out of range).
    #[error("decoded datum does not fit ChangeEvent at {field}: {detail}")]
    UnexpectedShape {
        /// Where: `Record.field`.
        field: &'static str,
        /// What was found instead.
        detail: String,
    },
}

impl Error {
    /// Whether retrying the same operation could succeed: never, for any of
    /// these. A consumer should dead-letter or stop on a bad message, not
    /// retry it.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::InvalidSchema { .. }
            | Error::BadHeader { .. }
            | Error::UnknownFingerprint { .. }
            | Error::InvalidDatum { .. }
            | Error::MalformedDatum { .. }
            | Error::UnexpectedShape { .. } => false,
        }
    }

    /// A short, stable name for the kind of error, for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::InvalidSchema { .. } => "invalid_schema",
            Error::BadHeader { .. } => "bad_header",
            Error::UnknownFingerprint { .. } => "unknown_fingerprint",
            Error::InvalidDatum { .. } => "invalid_datum",
            Error::MalformedDatum { .. } => "malformed_datum",
            Error::UnexpectedShape { .. } => "unexpected_shape",
        }
    }
}

/// Lower-case hex, two digits per byte, no separators.
pub(crate) fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        // Writing to a String cannot fail.
        let _ = write!(out, "{b:02x}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_send_sync_and_static() {
        fn assert_bounds<T: Send + Sync + 'static + std::error::Error>() {}
        assert_bounds::<Error>();
    }

    #[test]
    fn fingerprint_is_shown_as_hex() {
        let e = Error::UnknownFingerprint {
            fingerprint: [0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef],
        };
        assert_eq!(
            e.to_string(),
            "unknown writer schema fingerprint 0123456789abcdef"
        );
        assert!(!e.is_retryable());
        assert_eq!(e.kind(), "unknown_fingerprint");
    }
}
