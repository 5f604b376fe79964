//! The built-in types that get a [`Value`](schemas::event::Value) variant of their own, and the
//! names of user types (enums, domains, composites) as pgoutput Type messages describe them.

use std::collections::HashMap;

/// Oids of the built-in types that get a [`Value`] variant of their own.
pub mod oid {
    pub const BOOL: u32 = 16;
    pub const BYTEA: u32 = 17;
    pub const CHAR: u32 = 18;
    pub const NAME: u32 = 19;
    pub const INT8: u32 = 20;
    pub const INT2: u32 = 21;
    pub const INT4: u32 = 23;
    pub const TEXT: u32 = 25;
    pub const OID: u32 = 26;
    pub const JSON: u32 = 114;
    pub const XML: u32 = 142;
    pub const BOX: u32 = 603;
    pub const FLOAT4: u32 = 700;
    pub const FLOAT8: u32 = 701;
    pub const BPCHAR: u32 = 1042;
    pub const VARCHAR: u32 = 1043;
    pub const DATE: u32 = 1082;
    pub const TIME: u32 = 1083;
    pub const TIMESTAMP: u32 = 1114;
    pub const TIMESTAMPTZ: u32 = 1184;
    pub const NUMERIC: u32 = 1700;
    pub const UUID: u32 = 2950;
    pub const JSONB: u32 = 3802;
}

/// Built-in types (`pg_type.dat`, PostgreSQL 15): oid, name, and for an
/// array type the element type's oid (0 otherwise). Sorted by oid.
pub(super) const BUILTIN_TYPES: &[(u32, &str, u32)] = &[
    (16, "bool", 0),
    (17, "bytea", 0),
    (18, "char", 0),
    (19, "name", 0),
    (20, "int8", 0),
    (21, "int2", 0),
    (22, "int2vector", 0),
    (23, "int4", 0),
    (24, "regproc", 0),
    (25, "text", 0),
    (26, "oid", 0),
    (27, "tid", 0),
    (28, "xid", 0),
    (29, "cid", 0),
    (30, "oidvector", 0),
    (114, "json", 0),
    (142, "xml", 0),
    (143, "_xml", 142),
    (199, "_json", 114),
    (271, "_xid8", 5069),
    (600, "point", 0),
    (601, "lseg", 0),
    (602, "path", 0),
    (603, "box", 0),
    (604, "polygon", 0),
    (628, "line", 0),
    (629, "_line", 628),
    (650, "cidr", 0),
    (651, "_cidr", 650),
    (700, "float4", 0),
    (701, "float8", 0),
    (718, "circle", 0),
    (719, "_circle", 718),
    (774, "macaddr8", 0),
    (775, "_macaddr8", 774),
    (790, "money", 0),
    (791, "_money", 790),
    (829, "macaddr", 0),
    (869, "inet", 0),
    (1000, "_bool", 16),
    (1001, "_bytea", 17),
    (1002, "_char", 18),
    (1003, "_name", 19),
    (1005, "_int2", 21),
    (1006, "_int2vector", 22),
    (1007, "_int4", 23),
    (1008, "_regproc", 24),
    (1009, "_text", 25),
    (1010, "_tid", 27),
    (1011, "_xid", 28),
    (1012, "_cid", 29),
    (1013, "_oidvector", 30),
    (1014, "_bpchar", 1042),
    (1015, "_varchar", 1043),
    (1016, "_int8", 20),
    (1017, "_point", 600),
    (1018, "_lseg", 601),
    (1019, "_path", 602),
    (1020, "_box", 603),
    (1021, "_float4", 700),
    (1022, "_float8", 701),
    (1027, "_polygon", 604),
    (1028, "_oid", 26),
    (1033, "aclitem", 0),
    (1034, "_aclitem", 1033),
    (1040, "_macaddr", 829),
    (1041, "_inet", 869),
    (1042, "bpchar", 0),
    (1043, "varchar", 0),
    (1082, "date", 0),
    (1083, "time", 0),
    (1114, "timestamp", 0),
    (1115, "_timestamp", 1114),
    (1182, "_date", 1082),
    (1183, "_time", 1083),
    (1184, "timestamptz", 0),
    (1185, "_timestamptz", 1184),
    (1186, "interval", 0),
    (1187, "_interval", 1186),
    (1231, "_numeric", 1700),
    (1266, "timetz", 0),
    (1270, "_timetz", 1266),
    (1560, "bit", 0),
    (1561, "_bit", 1560),
    (1562, "varbit", 0),
    (1563, "_varbit", 1562),
    (1700, "numeric", 0),
    (1790, "refcursor", 0),
    (2201, "_refcursor", 1790),
    (2202, "regprocedure", 0),
    (2203, "regoper", 0),
    (2204, "regoperator", 0),
    (2205, "regclass", 0),
    (2206, "regtype", 0),
    (2207, "_regprocedure", 2202),
    (2208, "_regoper", 2203),
    (2209, "_regoperator", 2204),
    (2210, "_regclass", 2205),
    (2211, "_regtype", 2206),
    (2949, "_txid_snapshot", 2970),
    (2950, "uuid", 0),
    (2951, "_uuid", 2950),
    (2970, "txid_snapshot", 0),
    (3220, "pg_lsn", 0),
    (3221, "_pg_lsn", 3220),
    (3614, "tsvector", 0),
    (3615, "tsquery", 0),
    (3643, "_tsvector", 3614),
    (3645, "_tsquery", 3615),
    (3734, "regconfig", 0),
    (3735, "_regconfig", 3734),
    (3769, "regdictionary", 0),
    (3770, "_regdictionary", 3769),
    (3802, "jsonb", 0),
    (3807, "_jsonb", 3802),
    (3904, "int4range", 0),
    (3905, "_int4range", 3904),
    (3906, "numrange", 0),
    (3907, "_numrange", 3906),
    (3908, "tsrange", 0),
    (3909, "_tsrange", 3908),
    (3910, "tstzrange", 0),
    (3911, "_tstzrange", 3910),
    (3912, "daterange", 0),
    (3913, "_daterange", 3912),
    (3926, "int8range", 0),
    (3927, "_int8range", 3926),
    (4072, "jsonpath", 0),
    (4073, "_jsonpath", 4072),
    (4089, "regnamespace", 0),
    (4090, "_regnamespace", 4089),
    (4096, "regrole", 0),
    (4097, "_regrole", 4096),
    (4191, "regcollation", 0),
    (4192, "_regcollation", 4191),
    (5038, "pg_snapshot", 0),
    (5039, "_pg_snapshot", 5038),
    (5069, "xid8", 0),
];

pub(super) fn builtin(oid: u32) -> Option<(u32, &'static str, u32)> {
    BUILTIN_TYPES
        .binary_search_by_key(&oid, |&(oid, _, _)| oid)
        .ok()
        .and_then(|index| BUILTIN_TYPES.get(index).copied())
}

/// The name of a built-in type (`int4`, `_text`, ...).
pub fn type_name(oid: u32) -> Option<&'static str> {
    builtin(oid).map(|(_, name, _)| name)
}

/// The element type of a built-in array type.
pub fn element_type(array_oid: u32) -> Option<u32> {
    builtin(array_oid).and_then(|(_, _, element)| (element != 0).then_some(element))
}

/// Every built-in type this module knows: oid and name.
pub fn builtin_types() -> impl Iterator<Item = (u32, &'static str)> {
    BUILTIN_TYPES.iter().map(|&(oid, name, _)| (oid, name))
}

/// Type names: the built-in ones, and user types (enums, domains, composite
/// types) as pgoutput Type messages describe them.
#[derive(Debug, Clone, Default)]
pub struct TypeRegistry {
    user: HashMap<u32, String>,
}

impl TypeRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a type from a Type message. The name is `namespace.name`, or
    /// just `name` for `pg_catalog` (sent as an empty namespace).
    pub fn record(&mut self, oid: u32, namespace: &str, name: &str) {
        let full = if namespace.is_empty() || namespace == "pg_catalog" {
            name.to_owned()
        } else {
            format!("{namespace}.{name}")
        };
        self.user.insert(oid, full);
    }

    /// The type's name: built-in, recorded, or `oid:12345` when unknown.
    pub fn name(&self, oid: u32) -> String {
        match type_name(oid) {
            Some(name) => name.to_owned(),
            None => match self.user.get(&oid) {
                Some(name) => name.clone(),
                None => format!("oid:{oid}"),
            },
        }
    }
}
