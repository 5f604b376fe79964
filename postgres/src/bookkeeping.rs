//! The `syncbridge` schema both services keep in each database (apply's
//! positions and ledger, capture's polling watermarks and keys), and the one
//! advisory lock that serializes its installation.

/// The transaction-level advisory lock taken around `CREATE ... IF NOT
/// EXISTS` of the bookkeeping tables, by apply and capture alike, so two
/// processes installing at once never race on the catalog.
pub const INSTALL_LOCK: i64 = 7_391_254_482_319;
