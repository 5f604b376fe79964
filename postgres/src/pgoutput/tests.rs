#![allow(clippy::unwrap_used)]

use super::*;
use crate::time::{unix_to_postgres_micros, POSTGRES_EPOCH_UNIX_MICROS};
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
