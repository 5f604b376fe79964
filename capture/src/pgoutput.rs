//! A decoder of pgoutput logical replication messages, protocol version 1.
//!
//! Each `XLogData` payload of a pgoutput slot is one message; [`decode`]
//! turns it into a [`Message`]. The format is described in the PostgreSQL
//! documentation, "Logical Replication Message Formats":
//! <https://www.postgresql.org/docs/15/protocol-logicalrep-message-formats.html>.
//!
//! - The decoder never panics and never trusts a length or a count before the
//!   bytes it announces are there: a message claiming 65535 columns with three
//!   bytes left fails at once, without allocating for 65535 entries.
//! - Column values are zero-copy: [`TupleValue::Text`] and
//!   [`TupleValue::Binary`] are slices of the message's [`Bytes`].
//! - Names (schemas, tables, columns, types, origins, message prefixes) are
//!   sent in the server encoding; they are decoded as UTF-8 and a name that is
//!   not valid UTF-8 is an error. Run the source database with `UTF8`
//!   encoding (the bridge requires it).
//! - Only protocol version 1 is understood: the streaming and two-phase
//!   messages of later versions (`S`, `E`, `c`, `A`, `b`, `P`, `K`, `r`, ...)
//!   are [`DecodeError::UnknownTag`].
//! - A namespace sent as the empty string means `pg_catalog`: pgoutput writes
//!   it that way. It is passed on unchanged.
//!
//! This module depends on nothing else in the crate (the fuzz target includes
//! it on its own); keep it that way.

use bytes::Bytes;
use thiserror::Error;

/// 2000-01-01 00:00:00 UTC, the Postgres epoch, in microseconds since the Unix epoch.
pub const POSTGRES_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;

/// Converts a Postgres timestamp (microseconds since 2000-01-01) to
/// microseconds since the Unix epoch. `i64::MAX` and `i64::MIN` (Postgres's
/// `infinity` and `-infinity`) are kept; other values saturate.
pub fn postgres_to_unix_micros(postgres_micros: i64) -> i64 {
    match postgres_micros {
        i64::MAX | i64::MIN => postgres_micros,
        micros => micros.saturating_add(POSTGRES_EPOCH_UNIX_MICROS),
    }
}

/// Converts microseconds since the Unix epoch to a Postgres timestamp, the
/// inverse of [`postgres_to_unix_micros`].
pub fn unix_to_postgres_micros(unix_micros: i64) -> i64 {
    match unix_micros {
        i64::MAX | i64::MIN => unix_micros,
        micros => micros.saturating_sub(POSTGRES_EPOCH_UNIX_MICROS),
    }
}

/// One decoded pgoutput message.
// `Message::Message` is the protocol's own name for a logical message.
#[allow(clippy::enum_variant_names)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// `B`: a transaction begins.
    Begin {
        /// The LSN of the transaction's commit record.
        final_lsn: u64,
        /// The commit time, microseconds since the Unix epoch.
        commit_time_micros: i64,
        xid: u32,
    },
    /// `C`: the transaction commits.
    Commit {
        /// Unused by Postgres so far; passed on.
        flags: u8,
        /// The LSN of the commit record.
        commit_lsn: u64,
        /// The end LSN of the transaction: the position to acknowledge.
        end_lsn: u64,
        /// The commit time, microseconds since the Unix epoch.
        commit_time_micros: i64,
    },
    /// `O`: the transaction came from a replication origin.
    Origin { commit_lsn: u64, name: String },
    /// `R`: the shape of a table, sent before its first change in a session
    /// and again after a schema change.
    Relation(Relation),
    /// `Y`: a non-builtin type used by a relation's columns.
    Type {
        oid: u32,
        /// Empty for `pg_catalog`.
        namespace: String,
        name: String,
    },
    /// `I`: a row was inserted.
    Insert { relation_oid: u32, new: Tuple },
    /// `U`: a row was updated. `old` is sent when the key changed (`K`) or
    /// the table has `REPLICA IDENTITY FULL` (`O`).
    Update {
        relation_oid: u32,
        old: Option<OldTuple>,
        new: Tuple,
    },
    /// `D`: a row was deleted.
    Delete { relation_oid: u32, old: OldTuple },
    /// `T`: tables were truncated.
    Truncate {
        options: TruncateOptions,
        relation_oids: Vec<u32>,
    },
    /// `M`: a logical decoding message (`pg_logical_emit_message`).
    Message {
        transactional: bool,
        lsn: u64,
        prefix: String,
        content: Bytes,
    },
}

impl Message {
    /// The message's one-letter tag.
    pub fn tag(&self) -> u8 {
        match self {
            Message::Begin { .. } => b'B',
            Message::Commit { .. } => b'C',
            Message::Origin { .. } => b'O',
            Message::Relation(_) => b'R',
            Message::Type { .. } => b'Y',
            Message::Insert { .. } => b'I',
            Message::Update { .. } => b'U',
            Message::Delete { .. } => b'D',
            Message::Truncate { .. } => b'T',
            Message::Message { .. } => b'M',
        }
    }
}

/// A table as a Relation message describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    pub oid: u32,
    /// Empty for `pg_catalog`.
    pub namespace: String,
    pub name: String,
    pub replica_identity: ReplicaIdentity,
    pub columns: Vec<RelationColumn>,
}

/// The table's `REPLICA IDENTITY` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReplicaIdentity {
    /// `d`: the primary key.
    Default,
    /// `n`: nothing.
    Nothing,
    /// `f`: all columns.
    Full,
    /// `i`: a chosen unique index.
    Index,
}

impl ReplicaIdentity {
    fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            b'd' => Some(ReplicaIdentity::Default),
            b'n' => Some(ReplicaIdentity::Nothing),
            b'f' => Some(ReplicaIdentity::Full),
            b'i' => Some(ReplicaIdentity::Index),
            _ => None,
        }
    }

    /// The byte pgoutput sends for this setting.
    pub fn as_byte(self) -> u8 {
        match self {
            ReplicaIdentity::Default => b'd',
            ReplicaIdentity::Nothing => b'n',
            ReplicaIdentity::Full => b'f',
            ReplicaIdentity::Index => b'i',
        }
    }
}

/// One column of a [`Relation`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationColumn {
    /// Part of the replica identity (flag bit 1).
    pub key: bool,
    pub name: String,
    pub type_oid: u32,
    /// The type modifier (`atttypmod`), -1 when there is none.
    pub type_modifier: i32,
}

/// The column values of one row, in the relation's column order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Tuple(pub Vec<TupleValue>);

/// One column value of a [`Tuple`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TupleValue {
    /// `n`: NULL.
    Null,
    /// `u`: an unchanged TOAST value that Postgres did not send.
    UnchangedToast,
    /// `t`: the type's text output.
    Text(Bytes),
    /// `b`: the type's binary output (only with the `binary` option).
    Binary(Bytes),
}

/// Which old row an Update or Delete carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OldTupleKind {
    /// `K`: the replica identity columns only; the others are NULL.
    Key,
    /// `O`: the whole old row (`REPLICA IDENTITY FULL`).
    Full,
}

/// The old row of an Update or Delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OldTuple {
    pub kind: OldTupleKind,
    pub tuple: Tuple,
}

/// The option bits of a Truncate message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TruncateOptions {
    /// `TRUNCATE ... CASCADE` (bit 1).
    pub cascade: bool,
    /// `TRUNCATE ... RESTART IDENTITY` (bit 2).
    pub restart_identity: bool,
}

impl TruncateOptions {
    fn from_bits(bits: u8) -> Self {
        TruncateOptions {
            cascade: bits & 1 != 0,
            restart_identity: bits & 2 != 0,
        }
    }

    /// The option bits pgoutput sends.
    pub fn bits(self) -> u8 {
        u8::from(self.cascade) | (u8::from(self.restart_identity) << 1)
    }
}

/// Why a message could not be decoded, and where. Offsets are bytes from the
/// start of the message (the tag is at offset 0). Never contains row data.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    #[error("empty pgoutput message")]
    Empty,
    #[error("unknown pgoutput message tag {} (not protocol version 1)", show_byte(*tag))]
    UnknownTag { tag: u8 },
    #[error(
        "{message} message truncated at byte {offset}: expected {expected}, {remaining} bytes left"
    )]
    Truncated {
        message: &'static str,
        offset: usize,
        expected: &'static str,
        remaining: usize,
    },
    #[error("{message} message: unterminated {field} at byte {offset} (no NUL)")]
    UnterminatedString {
        message: &'static str,
        offset: usize,
        field: &'static str,
    },
    #[error("{message} message: {field} at byte {offset} is not valid UTF-8")]
    InvalidUtf8 {
        message: &'static str,
        offset: usize,
        field: &'static str,
    },
    #[error("{message} message: negative {field} {value} at byte {offset}")]
    NegativeLength {
        message: &'static str,
        offset: usize,
        field: &'static str,
        value: i32,
    },
    #[error("{message} message: unknown tuple value kind {} at byte {offset}, expected n, u, t or b", show_byte(*kind))]
    BadTupleKind {
        message: &'static str,
        offset: usize,
        kind: u8,
    },
    #[error("{message} message: found {} at byte {offset}, expected {expected}", show_byte(*found))]
    Unexpected {
        message: &'static str,
        offset: usize,
        found: u8,
        expected: &'static str,
    },
    #[error("{message} message: {count} trailing bytes at byte {offset}")]
    TrailingBytes {
        message: &'static str,
        offset: usize,
        count: usize,
    },
}

/// A byte for an error message: `'B' (0x42)`, or `0x07` when not printable.
fn show_byte(byte: u8) -> String {
    if byte.is_ascii_graphic() {
        format!("'{}' ({byte:#04x})", char::from(byte))
    } else {
        format!("{byte:#04x}")
    }
}

/// Decodes one pgoutput message (the payload of one `XLogData`).
pub fn decode(data: &Bytes) -> Result<Message, DecodeError> {
    let tag = *data.first().ok_or(DecodeError::Empty)?;
    let message = match tag {
        b'B' => "Begin",
        b'C' => "Commit",
        b'O' => "Origin",
        b'R' => "Relation",
        b'Y' => "Type",
        b'I' => "Insert",
        b'U' => "Update",
        b'D' => "Delete",
        b'T' => "Truncate",
        b'M' => "Message",
        _ => return Err(DecodeError::UnknownTag { tag }),
    };
    let mut reader = Reader {
        data,
        pos: 1,
        message,
    };
    let decoded = match tag {
        b'B' => Message::Begin {
            final_lsn: reader.u64("final LSN")?,
            commit_time_micros: postgres_to_unix_micros(reader.i64("commit timestamp")?),
            xid: reader.u32("xid")?,
        },
        b'C' => Message::Commit {
            flags: reader.u8("flags")?,
            commit_lsn: reader.u64("commit LSN")?,
            end_lsn: reader.u64("end LSN")?,
            commit_time_micros: postgres_to_unix_micros(reader.i64("commit timestamp")?),
        },
        b'O' => Message::Origin {
            commit_lsn: reader.u64("commit LSN")?,
            name: reader.string("origin name")?,
        },
        b'R' => Message::Relation(reader.relation()?),
        b'Y' => Message::Type {
            oid: reader.u32("type oid")?,
            namespace: reader.string("namespace")?,
            name: reader.string("type name")?,
        },
        b'I' => {
            let relation_oid = reader.u32("relation oid")?;
            reader.expect(b'N', "'N' (new tuple)")?;
            Message::Insert {
                relation_oid,
                new: reader.tuple()?,
            }
        }
        b'U' => {
            let relation_oid = reader.u32("relation oid")?;
            let offset = reader.pos;
            let old = match reader.u8("'K', 'O' or 'N'")? {
                b'N' => None,
                byte => {
                    let kind = old_kind(byte).ok_or(DecodeError::Unexpected {
                        message,
                        offset,
                        found: byte,
                        expected: "'K', 'O' or 'N'",
                    })?;
                    let tuple = reader.tuple()?;
                    reader.expect(b'N', "'N' (new tuple)")?;
                    Some(OldTuple { kind, tuple })
                }
            };
            Message::Update {
                relation_oid,
                old,
                new: reader.tuple()?,
            }
        }
        b'D' => {
            let relation_oid = reader.u32("relation oid")?;
            let offset = reader.pos;
            let byte = reader.u8("'K' or 'O'")?;
            let kind = old_kind(byte).ok_or(DecodeError::Unexpected {
                message,
                offset,
                found: byte,
                expected: "'K' or 'O'",
            })?;
            Message::Delete {
                relation_oid,
                old: OldTuple {
                    kind,
                    tuple: reader.tuple()?,
                },
            }
        }
        b'T' => {
            let count = reader.count_i32("relation count")?;
            let options = TruncateOptions::from_bits(reader.u8("options")?);
            // Four bytes per oid: check they are all there before allocating.
            reader.need(count.saturating_mul(4), "relation oids")?;
            let mut relation_oids = Vec::with_capacity(count);
            for _ in 0..count {
                relation_oids.push(reader.u32("relation oid")?);
            }
            Message::Truncate {
                options,
                relation_oids,
            }
        }
        _ => {
            // b'M', the only tag left.
            let flags = reader.u8("flags")?;
            let lsn = reader.u64("LSN")?;
            let prefix = reader.string("prefix")?;
            let length = reader.count_i32("content length")?;
            Message::Message {
                transactional: flags & 1 != 0,
                lsn,
                prefix,
                content: reader.bytes(length, "content")?,
            }
        }
    };
    reader.finish()?;
    Ok(decoded)
}

fn old_kind(byte: u8) -> Option<OldTupleKind> {
    match byte {
        b'K' => Some(OldTupleKind::Key),
        b'O' => Some(OldTupleKind::Full),
        _ => None,
    }
}

/// A cursor over one message; every read checks the bytes are there.
struct Reader<'a> {
    data: &'a Bytes,
    pos: usize,
    message: &'static str,
}

impl Reader<'_> {
    fn remaining(&self) -> usize {
        self.data.len().saturating_sub(self.pos)
    }

    fn truncated(&self, expected: &'static str) -> DecodeError {
        DecodeError::Truncated {
            message: self.message,
            offset: self.pos,
            expected,
            remaining: self.remaining(),
        }
    }

    /// Fails unless `len` more bytes are there.
    fn need(&self, len: usize, expected: &'static str) -> Result<(), DecodeError> {
        if self.remaining() < len {
            Err(self.truncated(expected))
        } else {
            Ok(())
        }
    }

    fn array<const N: usize>(&mut self, expected: &'static str) -> Result<[u8; N], DecodeError> {
        let end = self
            .pos
            .checked_add(N)
            .ok_or_else(|| self.truncated(expected))?;
        let bytes = self
            .data
            .get(self.pos..end)
            .and_then(|slice| <[u8; N]>::try_from(slice).ok())
            .ok_or_else(|| self.truncated(expected))?;
        self.pos = end;
        Ok(bytes)
    }

    fn u8(&mut self, expected: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(expected)?[0])
    }

    fn u16(&mut self, expected: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array(expected)?))
    }

    fn u32(&mut self, expected: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array(expected)?))
    }

    fn i32(&mut self, expected: &'static str) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.array(expected)?))
    }

    fn u64(&mut self, expected: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array(expected)?))
    }

    fn i64(&mut self, expected: &'static str) -> Result<i64, DecodeError> {
        Ok(i64::from_be_bytes(self.array(expected)?))
    }

    /// An Int32 length or count, which must not be negative.
    fn count_i32(&mut self, field: &'static str) -> Result<usize, DecodeError> {
        let offset = self.pos;
        let value = self.i32(field)?;
        usize::try_from(value).map_err(|_| DecodeError::NegativeLength {
            message: self.message,
            offset,
            field,
            value,
        })
    }

    fn expect(&mut self, wanted: u8, expected: &'static str) -> Result<(), DecodeError> {
        let offset = self.pos;
        let found = self.u8(expected)?;
        if found == wanted {
            Ok(())
        } else {
            Err(DecodeError::Unexpected {
                message: self.message,
                offset,
                found,
                expected,
            })
        }
    }

    /// `len` bytes, as a zero-copy slice of the message.
    fn bytes(&mut self, len: usize, expected: &'static str) -> Result<Bytes, DecodeError> {
        self.need(len, expected)?;
        let end = self.pos + len;
        let bytes = self.data.slice(self.pos..end);
        self.pos = end;
        Ok(bytes)
    }

    /// A NUL-terminated UTF-8 string.
    fn string(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let offset = self.pos;
        let rest = self.data.get(offset..).unwrap_or_default();
        let len =
            rest.iter()
                .position(|&byte| byte == 0)
                .ok_or(DecodeError::UnterminatedString {
                    message: self.message,
                    offset,
                    field,
                })?;
        let text = std::str::from_utf8(&rest[..len]).map_err(|_| DecodeError::InvalidUtf8 {
            message: self.message,
            offset,
            field,
        })?;
        self.pos = offset + len + 1;
        Ok(text.to_owned())
    }

    fn relation(&mut self) -> Result<Relation, DecodeError> {
        let oid = self.u32("relation oid")?;
        let namespace = self.string("namespace")?;
        let name = self.string("relation name")?;
        let offset = self.pos;
        let byte = self.u8("replica identity")?;
        let replica_identity = ReplicaIdentity::from_byte(byte).ok_or(DecodeError::Unexpected {
            message: self.message,
            offset,
            found: byte,
            expected: "replica identity 'd', 'n', 'f' or 'i'",
        })?;
        let count = usize::from(self.u16("column count")?);
        // A column takes at least 10 bytes: flags, an empty name's NUL, oid, typmod.
        let mut columns = Vec::with_capacity(count.min(self.remaining() / 10));
        for _ in 0..count {
            let flags = self.u8("column flags")?;
            columns.push(RelationColumn {
                key: flags & 1 != 0,
                name: self.string("column name")?,
                type_oid: self.u32("column type oid")?,
                type_modifier: self.i32("column type modifier")?,
            });
        }
        Ok(Relation {
            oid,
            namespace,
            name,
            replica_identity,
            columns,
        })
    }

    /// TupleData: an Int16 column count, then one value per column.
    fn tuple(&mut self) -> Result<Tuple, DecodeError> {
        // Postgres reads the count as unsigned; so do we.
        let count = usize::from(self.u16("tuple column count")?);
        // A value takes at least one byte (its kind).
        let mut values = Vec::with_capacity(count.min(self.remaining()));
        for _ in 0..count {
            let offset = self.pos;
            let value = match self.u8("tuple value kind")? {
                b'n' => TupleValue::Null,
                b'u' => TupleValue::UnchangedToast,
                b't' => {
                    let len = self.count_i32("value length")?;
                    TupleValue::Text(self.bytes(len, "text value")?)
                }
                b'b' => {
                    let len = self.count_i32("value length")?;
                    TupleValue::Binary(self.bytes(len, "binary value")?)
                }
                kind => {
                    return Err(DecodeError::BadTupleKind {
                        message: self.message,
                        offset,
                        kind,
                    })
                }
            };
            values.push(value);
        }
        Ok(Tuple(values))
    }

    fn finish(self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            count => Err(DecodeError::TrailingBytes {
                message: self.message,
                offset: self.pos,
                count,
            }),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A test-only encoder: the inverse of [`decode`].
    fn encode(message: &Message) -> Vec<u8> {
        let mut out = vec![message.tag()];
        match message {
            Message::Begin {
                final_lsn,
                commit_time_micros,
                xid,
            } => {
                out.extend(final_lsn.to_be_bytes());
                out.extend(unix_to_postgres_micros(*commit_time_micros).to_be_bytes());
                out.extend(xid.to_be_bytes());
            }
            Message::Commit {
                flags,
                commit_lsn,
                end_lsn,
                commit_time_micros,
            } => {
                out.push(*flags);
                out.extend(commit_lsn.to_be_bytes());
                out.extend(end_lsn.to_be_bytes());
                out.extend(unix_to_postgres_micros(*commit_time_micros).to_be_bytes());
            }
            Message::Origin { commit_lsn, name } => {
                out.extend(commit_lsn.to_be_bytes());
                put_string(&mut out, name);
            }
            Message::Relation(relation) => {
                out.extend(relation.oid.to_be_bytes());
                put_string(&mut out, &relation.namespace);
                put_string(&mut out, &relation.name);
                out.push(relation.replica_identity.as_byte());
                out.extend(u16::try_from(relation.columns.len()).unwrap().to_be_bytes());
                for column in &relation.columns {
                    out.push(u8::from(column.key));
                    put_string(&mut out, &column.name);
                    out.extend(column.type_oid.to_be_bytes());
                    out.extend(column.type_modifier.to_be_bytes());
                }
            }
            Message::Type {
                oid,
                namespace,
                name,
            } => {
                out.extend(oid.to_be_bytes());
                put_string(&mut out, namespace);
                put_string(&mut out, name);
            }
            Message::Insert { relation_oid, new } => {
                out.extend(relation_oid.to_be_bytes());
                out.push(b'N');
                put_tuple(&mut out, new);
            }
            Message::Update {
                relation_oid,
                old,
                new,
            } => {
                out.extend(relation_oid.to_be_bytes());
                if let Some(old) = old {
                    put_old(&mut out, old);
                }
                out.push(b'N');
                put_tuple(&mut out, new);
            }
            Message::Delete { relation_oid, old } => {
                out.extend(relation_oid.to_be_bytes());
                put_old(&mut out, old);
            }
            Message::Truncate {
                options,
                relation_oids,
            } => {
                out.extend(i32::try_from(relation_oids.len()).unwrap().to_be_bytes());
                out.push(options.bits());
                for oid in relation_oids {
                    out.extend(oid.to_be_bytes());
                }
            }
            Message::Message {
                transactional,
                lsn,
                prefix,
                content,
            } => {
                out.push(u8::from(*transactional));
                out.extend(lsn.to_be_bytes());
                put_string(&mut out, prefix);
                out.extend(i32::try_from(content.len()).unwrap().to_be_bytes());
                out.extend_from_slice(content);
            }
        }
        out
    }

    fn put_string(out: &mut Vec<u8>, text: &str) {
        out.extend_from_slice(text.as_bytes());
        out.push(0);
    }

    fn put_old(out: &mut Vec<u8>, old: &OldTuple) {
        out.push(match old.kind {
            OldTupleKind::Key => b'K',
            OldTupleKind::Full => b'O',
        });
        put_tuple(out, &old.tuple);
    }

    fn put_tuple(out: &mut Vec<u8>, tuple: &Tuple) {
        out.extend(u16::try_from(tuple.0.len()).unwrap().to_be_bytes());
        for value in &tuple.0 {
            match value {
                TupleValue::Null => out.push(b'n'),
                TupleValue::UnchangedToast => out.push(b'u'),
                TupleValue::Text(bytes) | TupleValue::Binary(bytes) => {
                    out.push(if matches!(value, TupleValue::Text(_)) {
                        b't'
                    } else {
                        b'b'
                    });
                    out.extend(i32::try_from(bytes.len()).unwrap().to_be_bytes());
                    out.extend_from_slice(bytes);
                }
            }
        }
    }

    fn text(value: &str) -> TupleValue {
        TupleValue::Text(Bytes::copy_from_slice(value.as_bytes()))
    }

    fn round_trip(message: Message) {
        let encoded = Bytes::from(encode(&message));
        assert_eq!(decode(&encoded).unwrap(), message);
    }

    fn decode_slice(bytes: &[u8]) -> Result<Message, DecodeError> {
        decode(&Bytes::copy_from_slice(bytes))
    }

    #[test]
    fn begin_by_hand() {
        let mut bytes = vec![b'B'];
        bytes.extend(0x0000_0001_0000_0028_u64.to_be_bytes());
        // 2000-01-01 00:00:01 in Postgres micros.
        bytes.extend(1_000_000_i64.to_be_bytes());
        bytes.extend(742_u32.to_be_bytes());
        assert_eq!(
            decode_slice(&bytes).unwrap(),
            Message::Begin {
                final_lsn: 0x1_0000_0028,
                commit_time_micros: 946_684_801_000_000,
                xid: 742,
            }
        );
    }

    #[test]
    fn commit_by_hand() {
        let mut bytes = vec![b'C', 0];
        bytes.extend(100_u64.to_be_bytes());
        bytes.extend(140_u64.to_be_bytes());
        // Before 2000: negative Postgres micros.
        bytes.extend((-POSTGRES_EPOCH_UNIX_MICROS).to_be_bytes());
        assert_eq!(
            decode_slice(&bytes).unwrap(),
            Message::Commit {
                flags: 0,
                commit_lsn: 100,
                end_lsn: 140,
                commit_time_micros: 0,
            }
        );
    }

    #[test]
    fn every_message_kind_round_trips() {
        round_trip(Message::Begin {
            final_lsn: u64::MAX,
            commit_time_micros: 1_700_000_000_123_456,
            xid: u32::MAX,
        });
        round_trip(Message::Commit {
            flags: 0,
            commit_lsn: 1,
            end_lsn: 2,
            commit_time_micros: -5,
        });
        round_trip(Message::Origin {
            commit_lsn: 77,
            name: "pg_16384".to_owned(),
        });
        round_trip(Message::Type {
            oid: 16_500,
            namespace: "public".to_owned(),
            name: "mood".to_owned(),
        });
        round_trip(Message::Message {
            transactional: true,
            lsn: 99,
            prefix: "sync-bridge".to_owned(),
            content: Bytes::from_static(b"{\"origin\":\"platform\"}"),
        });
        round_trip(Message::Message {
            transactional: false,
            lsn: 0,
            prefix: String::new(),
            content: Bytes::new(),
        });
    }

    #[test]
    fn relation_with_unicode_names() {
        let relation = Relation {
            oid: 16_385,
            namespace: "schéma".to_owned(),
            name: "表_📦".to_owned(),
            replica_identity: ReplicaIdentity::Index,
            columns: vec![
                RelationColumn {
                    key: true,
                    name: "id".to_owned(),
                    type_oid: 20,
                    type_modifier: -1,
                },
                RelationColumn {
                    key: false,
                    name: "naïve ключ".to_owned(),
                    type_oid: 1043,
                    type_modifier: 68,
                },
            ],
        };
        round_trip(Message::Relation(relation.clone()));
        // And checked against hand-written bytes.
        let mut bytes = vec![b'R'];
        bytes.extend(16_385_u32.to_be_bytes());
        bytes.extend("schéma\0表_📦\0".as_bytes());
        bytes.push(b'i');
        bytes.extend(2_u16.to_be_bytes());
        bytes.push(1);
        bytes.extend(b"id\0");
        bytes.extend(20_u32.to_be_bytes());
        bytes.extend((-1_i32).to_be_bytes());
        bytes.push(0);
        bytes.extend("naïve ключ\0".as_bytes());
        bytes.extend(1043_u32.to_be_bytes());
        bytes.extend(68_i32.to_be_bytes());
        assert_eq!(decode_slice(&bytes).unwrap(), Message::Relation(relation));
    }

    #[test]
    fn every_replica_identity() {
        for identity in [
            ReplicaIdentity::Default,
            ReplicaIdentity::Nothing,
            ReplicaIdentity::Full,
            ReplicaIdentity::Index,
        ] {
            round_trip(Message::Relation(Relation {
                oid: 1,
                namespace: String::new(),
                name: "t".to_owned(),
                replica_identity: identity,
                columns: Vec::new(),
            }));
        }
    }

    #[test]
    fn insert_by_hand_with_every_value_kind() {
        let mut bytes = vec![b'I'];
        bytes.extend(16_385_u32.to_be_bytes());
        bytes.push(b'N');
        bytes.extend(4_u16.to_be_bytes());
        bytes.push(b't');
        bytes.extend(2_i32.to_be_bytes());
        bytes.extend(b"42");
        bytes.push(b'n');
        bytes.push(b'u');
        bytes.push(b'b');
        bytes.extend(3_i32.to_be_bytes());
        bytes.extend([0, 1, 255]);
        let message = decode_slice(&bytes).unwrap();
        assert_eq!(
            message,
            Message::Insert {
                relation_oid: 16_385,
                new: Tuple(vec![
                    text("42"),
                    TupleValue::Null,
                    TupleValue::UnchangedToast,
                    TupleValue::Binary(Bytes::from_static(&[0, 1, 255])),
                ]),
            }
        );
    }

    #[test]
    fn values_are_slices_of_the_message() {
        let message = Message::Insert {
            relation_oid: 1,
            new: Tuple(vec![text("hello"), text("")]),
        };
        let encoded = Bytes::from(encode(&message));
        let range = encoded.as_ptr_range();
        let Message::Insert { new, .. } = decode(&encoded).unwrap() else {
            panic!("not an insert");
        };
        let TupleValue::Text(value) = &new.0[0] else {
            panic!("not text");
        };
        assert!(range.contains(&value.as_ptr()));
    }

    #[test]
    fn update_without_old_with_key_and_with_full_old_tuple() {
        let new = Tuple(vec![text("1"), text("new"), TupleValue::UnchangedToast]);
        round_trip(Message::Update {
            relation_oid: 9,
            old: None,
            new: new.clone(),
        });
        round_trip(Message::Update {
            relation_oid: 9,
            old: Some(OldTuple {
                kind: OldTupleKind::Key,
                tuple: Tuple(vec![text("2"), TupleValue::Null, TupleValue::Null]),
            }),
            new: new.clone(),
        });
        round_trip(Message::Update {
            relation_oid: 9,
            old: Some(OldTuple {
                kind: OldTupleKind::Full,
                tuple: Tuple(vec![text("1"), text("old"), text("big")]),
            }),
            new,
        });
        // By hand: 'K' old tuple, then 'N'.
        let mut bytes = vec![b'U'];
        bytes.extend(9_u32.to_be_bytes());
        bytes.push(b'K');
        bytes.extend(1_u16.to_be_bytes());
        bytes.push(b't');
        bytes.extend(1_i32.to_be_bytes());
        bytes.push(b'7');
        bytes.push(b'N');
        bytes.extend(1_u16.to_be_bytes());
        bytes.push(b'n');
        assert_eq!(
            decode_slice(&bytes).unwrap(),
            Message::Update {
                relation_oid: 9,
                old: Some(OldTuple {
                    kind: OldTupleKind::Key,
                    tuple: Tuple(vec![text("7")]),
                }),
                new: Tuple(vec![TupleValue::Null]),
            }
        );
    }

    #[test]
    fn delete_with_key_and_full_old_tuple() {
        for kind in [OldTupleKind::Key, OldTupleKind::Full] {
            round_trip(Message::Delete {
                relation_oid: 12,
                old: OldTuple {
                    kind,
                    tuple: Tuple(vec![text("5"), TupleValue::Null]),
                },
            });
        }
        let mut bytes = vec![b'D'];
        bytes.extend(12_u32.to_be_bytes());
        bytes.push(b'N');
        bytes.extend(0_u16.to_be_bytes());
        assert!(matches!(
            decode_slice(&bytes),
            Err(DecodeError::Unexpected {
                message: "Delete",
                offset: 5,
                found: b'N',
                ..
            })
        ));
    }

    #[test]
    fn truncate_with_several_relations_and_options() {
        let mut bytes = vec![b'T'];
        bytes.extend(3_i32.to_be_bytes());
        bytes.push(3);
        for oid in [16_385_u32, 16_390, 16_400] {
            bytes.extend(oid.to_be_bytes());
        }
        assert_eq!(
            decode_slice(&bytes).unwrap(),
            Message::Truncate {
                options: TruncateOptions {
                    cascade: true,
                    restart_identity: true,
                },
                relation_oids: vec![16_385, 16_390, 16_400],
            }
        );
        for bits in 0..4 {
            round_trip(Message::Truncate {
                options: TruncateOptions::from_bits(bits),
                relation_oids: vec![1, 2],
            });
        }
    }

    #[test]
    fn errors_say_what_and_where() {
        assert_eq!(decode_slice(&[]), Err(DecodeError::Empty));
        assert_eq!(
            decode_slice(b"S"),
            Err(DecodeError::UnknownTag { tag: b'S' })
        );
        assert_eq!(
            decode_slice(&[b'B', 0, 0]),
            Err(DecodeError::Truncated {
                message: "Begin",
                offset: 1,
                expected: "final LSN",
                remaining: 2,
            })
        );
        // A bad tuple kind.
        let mut bytes = vec![b'I'];
        bytes.extend(1_u32.to_be_bytes());
        bytes.push(b'N');
        bytes.extend(1_u16.to_be_bytes());
        bytes.push(b'x');
        assert_eq!(
            decode_slice(&bytes),
            Err(DecodeError::BadTupleKind {
                message: "Insert",
                offset: 8,
                kind: b'x',
            })
        );
        // A negative value length.
        bytes.pop();
        bytes.push(b't');
        bytes.extend((-2_i32).to_be_bytes());
        assert_eq!(
            decode_slice(&bytes),
            Err(DecodeError::NegativeLength {
                message: "Insert",
                offset: 9,
                field: "value length",
                value: -2,
            })
        );
        // Invalid UTF-8 in a name.
        let mut bytes = vec![b'Y'];
        bytes.extend(1_u32.to_be_bytes());
        bytes.extend(b"ok\0\xff\xfe\0");
        assert_eq!(
            decode_slice(&bytes),
            Err(DecodeError::InvalidUtf8 {
                message: "Type",
                offset: 8,
                field: "type name",
            })
        );
        // A name without its NUL.
        bytes.pop();
        assert!(matches!(
            decode_slice(&bytes),
            Err(DecodeError::UnterminatedString { offset: 8, .. })
        ));
        // Trailing bytes.
        let mut bytes = encode(&Message::Origin {
            commit_lsn: 1,
            name: "o".to_owned(),
        });
        bytes.extend([1, 2]);
        assert_eq!(
            decode_slice(&bytes),
            Err(DecodeError::TrailingBytes {
                message: "Origin",
                offset: 11,
                count: 2,
            })
        );
        let shown = decode_slice(&[b'T', 255, 255, 255, 255, 0])
            .unwrap_err()
            .to_string();
        assert_eq!(
            shown,
            "Truncate message: negative relation count -1 at byte 1"
        );
        let shown = decode_slice(&[0x01]).unwrap_err().to_string();
        assert_eq!(
            shown,
            "unknown pgoutput message tag 0x01 (not protocol version 1)"
        );
    }

    #[test]
    fn huge_counts_fail_fast() {
        // 65535 columns announced, three bytes left.
        let mut bytes = vec![b'I'];
        bytes.extend(1_u32.to_be_bytes());
        bytes.push(b'N');
        bytes.extend(u16::MAX.to_be_bytes());
        bytes.extend(b"nnn");
        assert!(matches!(
            decode_slice(&bytes),
            Err(DecodeError::Truncated { offset: 11, .. })
        ));
        // A value of 2 GiB announced.
        let mut bytes = vec![b'I'];
        bytes.extend(1_u32.to_be_bytes());
        bytes.push(b'N');
        bytes.extend(1_u16.to_be_bytes());
        bytes.push(b't');
        bytes.extend(i32::MAX.to_be_bytes());
        assert!(matches!(
            decode_slice(&bytes),
            Err(DecodeError::Truncated {
                expected: "text value",
                ..
            })
        ));
        // A truncate of 2^31 - 1 relations.
        let mut bytes = vec![b'T'];
        bytes.extend(i32::MAX.to_be_bytes());
        bytes.push(0);
        bytes.extend(1_u32.to_be_bytes());
        assert!(matches!(
            decode_slice(&bytes),
            Err(DecodeError::Truncated {
                expected: "relation oids",
                ..
            })
        ));
        // A relation of 65535 columns.
        let mut bytes = vec![b'R'];
        bytes.extend(1_u32.to_be_bytes());
        bytes.extend(b"\0t\0d");
        bytes.extend(u16::MAX.to_be_bytes());
        assert!(matches!(
            decode_slice(&bytes),
            Err(DecodeError::Truncated { .. })
        ));
    }

    #[test]
    fn epoch_conversion_keeps_infinities() {
        assert_eq!(postgres_to_unix_micros(0), POSTGRES_EPOCH_UNIX_MICROS);
        assert_eq!(postgres_to_unix_micros(i64::MAX), i64::MAX);
        assert_eq!(postgres_to_unix_micros(i64::MIN), i64::MIN);
        assert_eq!(postgres_to_unix_micros(i64::MAX - 1), i64::MAX);
        assert_eq!(unix_to_postgres_micros(POSTGRES_EPOCH_UNIX_MICROS), 0);
    }

    fn any_bytes(max: usize) -> impl Strategy<Value = Bytes> {
        proptest::collection::vec(any::<u8>(), 0..max).prop_map(Bytes::from)
    }

    fn any_tuple() -> impl Strategy<Value = Tuple> {
        let value = prop_oneof![
            Just(TupleValue::Null),
            Just(TupleValue::UnchangedToast),
            any_bytes(24).prop_map(TupleValue::Text),
            any_bytes(24).prop_map(TupleValue::Binary),
        ];
        proptest::collection::vec(value, 0..8).prop_map(Tuple)
    }

    fn any_old_tuple() -> impl Strategy<Value = OldTuple> {
        (any::<bool>(), any_tuple()).prop_map(|(key, tuple)| OldTuple {
            kind: if key {
                OldTupleKind::Key
            } else {
                OldTupleKind::Full
            },
            tuple,
        })
    }

    /// Names: any text without NUL, unicode included.
    fn any_name() -> impl Strategy<Value = String> {
        "[^\u{0}]{0,12}"
    }

    /// Commit times that survive the epoch shift both ways.
    fn any_time() -> impl Strategy<Value = i64> {
        prop_oneof![
            Just(i64::MAX),
            Just(i64::MIN),
            (i64::MIN / 2)..(i64::MAX / 2),
        ]
    }

    fn any_relation() -> impl Strategy<Value = Relation> {
        let identity = prop_oneof![
            Just(ReplicaIdentity::Default),
            Just(ReplicaIdentity::Nothing),
            Just(ReplicaIdentity::Full),
            Just(ReplicaIdentity::Index),
        ];
        let column = (any::<bool>(), any_name(), any::<u32>(), any::<i32>()).prop_map(
            |(key, name, type_oid, type_modifier)| RelationColumn {
                key,
                name,
                type_oid,
                type_modifier,
            },
        );
        (
            any::<u32>(),
            any_name(),
            any_name(),
            identity,
            proptest::collection::vec(column, 0..6),
        )
            .prop_map(
                |(oid, namespace, name, replica_identity, columns)| Relation {
                    oid,
                    namespace,
                    name,
                    replica_identity,
                    columns,
                },
            )
    }

    fn any_message() -> impl Strategy<Value = Message> {
        prop_oneof![
            (any::<u64>(), any_time(), any::<u32>()).prop_map(
                |(final_lsn, commit_time_micros, xid)| Message::Begin {
                    final_lsn,
                    commit_time_micros,
                    xid,
                }
            ),
            (any::<u8>(), any::<u64>(), any::<u64>(), any_time()).prop_map(
                |(flags, commit_lsn, end_lsn, commit_time_micros)| Message::Commit {
                    flags,
                    commit_lsn,
                    end_lsn,
                    commit_time_micros,
                }
            ),
            (any::<u64>(), any_name())
                .prop_map(|(commit_lsn, name)| Message::Origin { commit_lsn, name }),
            any_relation().prop_map(Message::Relation),
            (any::<u32>(), any_name(), any_name()).prop_map(|(oid, namespace, name)| {
                Message::Type {
                    oid,
                    namespace,
                    name,
                }
            }),
            (any::<u32>(), any_tuple())
                .prop_map(|(relation_oid, new)| Message::Insert { relation_oid, new }),
            (
                any::<u32>(),
                proptest::option::of(any_old_tuple()),
                any_tuple()
            )
                .prop_map(|(relation_oid, old, new)| Message::Update {
                    relation_oid,
                    old,
                    new,
                }),
            (any::<u32>(), any_old_tuple())
                .prop_map(|(relation_oid, old)| Message::Delete { relation_oid, old }),
            (0_u8..4, proptest::collection::vec(any::<u32>(), 0..6)).prop_map(
                |(bits, relation_oids)| Message::Truncate {
                    options: TruncateOptions::from_bits(bits),
                    relation_oids,
                }
            ),
            (any::<bool>(), any::<u64>(), any_name(), any_bytes(32)).prop_map(
                |(transactional, lsn, prefix, content)| Message::Message {
                    transactional,
                    lsn,
                    prefix,
                    content,
                }
            ),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn arbitrary_bytes_never_panic(bytes in any_bytes(256)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn arbitrary_bytes_behind_a_valid_tag_never_panic(
            tag in proptest::sample::select(b"BCORYIUDTM".to_vec()),
            rest in any_bytes(128),
        ) {
            let mut bytes = vec![tag];
            bytes.extend_from_slice(&rest);
            let _ = decode(&Bytes::from(bytes));
        }

        #[test]
        fn valid_messages_round_trip(message in any_message()) {
            let encoded = Bytes::from(encode(&message));
            prop_assert_eq!(decode(&encoded), Ok(message));
        }

        #[test]
        fn every_strict_prefix_is_an_error(message in any_message()) {
            let encoded = encode(&message);
            for len in 0..encoded.len() {
                let prefix = Bytes::copy_from_slice(&encoded[..len]);
                prop_assert!(decode(&prefix).is_err(), "prefix of {} bytes decoded", len);
            }
        }

        #[test]
        fn mutated_messages_never_panic(
            message in any_message(),
            mutations in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        ) {
            let mut encoded = encode(&message);
            for (index, byte) in mutations {
                let at = index.index(encoded.len());
                encoded[at] = byte;
            }
            let _ = decode(&Bytes::from(encoded));
        }
    }
}
