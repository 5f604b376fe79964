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

use bytes::Bytes;
use thiserror::Error;

use crate::time::postgres_to_unix_micros;

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
mod tests;
