//! Last writer wins, decided inside the target database.
//!
//! Every write is one statement that decides and writes at once, so no other
//! writer can slip in between a read and a write:
//!
//! - **Upsert** (insert or update): `INSERT ... ON CONFLICT (key) DO UPDATE
//!   ... WHERE <incoming wins>`. Causality decides first, whatever the
//!   timestamps: a change wins when the target row is still exactly as apply
//!   last wrote it from the same source (its `xmin` is in
//!   `syncbridge.apply_ledger` for that source), since the source's commit
//!   order decides between its own changes; and a change made *on top of* a
//!   version that crossed from the target wins while the target row is still
//!   that version (the source's ledger says when that target transaction,
//!   `source_xid`, arrived, `written_lsn`, and a change that committed after
//!   it is causally newer; see `Writer::bases`). Only concurrent changes are
//!   ordered by `updated_at`, compared at the coarser precision of the two
//!   sides (whole seconds), the configured `tie_winner` winning a tie, on
//!   both sides.
//! - An insert never resurrects a row whose tombstone (`syncbridge.row_version`)
//!   is at least as new as the incoming `updated_at`; a row inserted again
//!   clears its tombstone.
//! - A row whose referenced parent does not exist in the target (deleted there
//!   meanwhile) is not written: the delete wins; it is counted as a conflict.
//!   Where the target's foreign key is `ON DELETE SET NULL`, the row is
//!   written with a NULL reference instead, as the delete did to the rows it
//!   found.
//! - **Delete**: removes the target row unless the target row is newer than the
//!   delete (the source's commit time), and leaves a tombstone. As for an
//!   upsert, causality decides first: a row that is still the deleting
//!   source's own earlier write, or a version the delete was made on top of,
//!   is always removed, whatever its `updated_at` says (legacy `timestamp(0)`
//!   columns round `now()` up to the next second; a clock can be ahead).
//! - **Partial update** (a TOAST value unchanged at the source): an `UPDATE`
//!   of the other columns under the same rule; unchanged columns keep their
//!   target value.
//!
//! All values travel as text arrays (`unnest`) cast to the target column
//! types, so one statement writes many rows in one round trip.

use std::fmt::Write;

use crate::mapping::{Entity, Side};

/// Ends a subquery that looks up one key of a batch (a `LATERAL` subquery,
/// or a correlated `EXISTS`), so that the lookup stays one index probe per
/// key, whatever the table's size.
///
/// Written as a plain join (or `= ANY`), a batch of a thousand keys against
/// a table of a hundred thousand rows was planned as a sequential scan: the
/// planner prices a thousand probes above one scan, and the scan's cost
/// grows with the table (seen in `scripts/bench apply` with auto_explain:
/// many times slower per batch than the probes, and slower as it grows).
/// `OFFSET 0` keeps the subquery from being pulled up into a join the
/// planner could turn into that scan. In an `EXISTS` it also keeps the
/// planner from hashing the whole table once per statement: the parent
/// checks of a memberships batch read the whole identities table that
/// way, twice per statement (seen in `scripts/bench apply` plans), a cost
/// that grows with the parent table.
pub const PROBE: &str = "OFFSET 0";

/// What an upsert writes: a change, or a copy read by a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Incoming {
    Change,
    Read,
    /// A change applied again by `apply replay`: the target may already hold
    /// what came after it, so it wins only when strictly newer.
    Replay,
}

/// How a target column is written on update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Merge {
    /// `col = incoming`.
    Replace,
    /// `col = CASE WHEN incoming IS NULL THEN NULL ELSE COALESCE(existing, incoming) END`.
    KeepExistingNonNull,
}

/// One column of a statement.
#[derive(Debug, Clone)]
pub struct ColumnSpec {
    pub name: String,
    pub type_name: String,
    pub merge: Merge,
}

/// A foreign key the statement must find in the target before writing.
#[derive(Debug, Clone)]
pub struct ParentCheck {
    /// The column of the row being written.
    pub column: String,
    /// The parent table, quoted.
    pub table: String,
    /// The parent's key column.
    pub key: String,
    /// The target's foreign key is `ON DELETE SET NULL`: a missing parent
    /// (deleted here) nulls the reference, as deleting it here would have,
    /// instead of leaving the row out.
    pub set_null: bool,
}

/// The parameters of an upsert or update after its key and column arrays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params {
    /// The source's name (`text`), recorded as the rows' origin.
    pub origin: usize,
    /// Whether the source wins ties (`bool`): it is the `tie_winner`.
    pub tie: usize,
    /// Per row, the source transaction id (`text[]`), recorded.
    pub source_xids: usize,
    /// Target keys (`text[]`) of changes made on top of a target version...
    pub based_keys: usize,
    /// ...and that version's `xmin` (`text[]`): such a change wins while the
    /// target row is still that version (the change is causally newer; see
    /// `Writer::bases`).
    pub based_xmins: usize,
}

/// What a statement writes: the target table of `entity`.
#[derive(Debug, Clone)]
pub struct Shape {
    pub entity: String,
    pub table: String,
    pub key: ColumnSpec,
    pub updated_at: String,
    /// Columns other than the key, `updated_at` included, in order.
    pub columns: Vec<ColumnSpec>,
    pub parents: Vec<ParentCheck>,
}

use pg::ident::{quote, quote_table};

impl Shape {
    /// The shape of `entity`'s table on `side`, for the given columns.
    pub fn new(
        entity: &Entity,
        side: Side,
        key_type: &str,
        columns: Vec<ColumnSpec>,
        parents: Vec<ParentCheck>,
    ) -> Shape {
        let table = entity.table(side);
        Shape {
            entity: entity.name().to_owned(),
            table: quote_table(&table.schema, &table.table),
            key: ColumnSpec {
                name: table.key.clone(),
                type_name: key_type.to_owned(),
                merge: Merge::Replace,
            },
            updated_at: table.updated_at.clone(),
            columns,
            parents,
        }
    }

    /// The numbers of the parameters after the key and column arrays.
    pub fn params(&self) -> Params {
        let origin = self.columns.len() + 2;
        Params {
            origin,
            tie: origin + 1,
            source_xids: origin + 2,
            based_keys: origin + 3,
            based_xmins: origin + 4,
        }
    }

    /// `$n::text[]` inputs cast per column, as a typed row source `i`:
    /// parameter 1 is the keys, 2.. the columns in order, then the source
    /// transaction ids (`sx`); `ord` numbers the rows from 1.
    ///
    /// The arrays are unnested in the select list, where the set-returning
    /// functions run in lockstep, one row at a time. `unnest(a, b, ...)` in
    /// `FROM` first copies each array's elements into a tuple store of its
    /// own, which measured more of the server's time for a users statement
    /// (`EXPLAIN ANALYZE` of both forms, alternated) and over the users of
    /// `scripts/bench apply`'s load (`pg_stat_statements`, alternating
    /// runs).
    fn input(&self) -> String {
        let mut select = format!(
            "SELECT k::{} AS {}",
            self.key.type_name,
            quote(&self.key.name)
        );
        for (index, column) in self.columns.iter().enumerate() {
            let _ = write!(
                select,
                ", c{index}::{} AS {}",
                column.type_name,
                quote(&column.name)
            );
        }
        let mut arrays = String::from("unnest($1::text[]) AS k");
        for index in 0..self.columns.len() {
            let _ = write!(arrays, ", unnest(${}::text[]) AS c{index}", index + 2);
        }
        let _ = write!(
            arrays,
            ", unnest(${}::text[]) AS sx, generate_series(1::int8, cardinality($1::text[])) AS ord",
            self.params().source_xids
        );
        format!("{select}, sx, ord FROM (SELECT {arrays}) AS raw")
    }

    /// Whether an incoming change replaces the existing target row:
    /// causality first, then time. The change wins when the target row is
    /// still the same source's earlier write (the source's commit order
    /// decides between its own changes), or when it was made on top of the
    /// target row's version (that version crossed to the source before the
    /// change committed there; see `Writer::bases`), whatever the
    /// timestamps say. Otherwise the two are concurrent, and `updated_at`
    /// at whole seconds decides, the `tie_winner` on a tie.
    fn wins_condition(&self, incoming: &str, existing: &str) -> String {
        let ua = quote(&self.updated_at);
        let p = self.params();
        format!(
            "{own_write} \
             OR {based} \
             OR date_trunc('second', {incoming}.{ua}) > date_trunc('second', {existing}.{ua}) \
             OR (date_trunc('second', {incoming}.{ua}) = date_trunc('second', {existing}.{ua}) AND ${tie}::bool)",
            tie = p.tie,
            own_write = own_write(existing, &format!("${}::text", p.origin)),
            based = based(
                existing,
                &quote(&self.key.name),
                p.based_keys,
                p.based_xmins
            ),
        )
    }

    /// The value written into `column` from row source `row`: a reference
    /// whose parent is missing becomes NULL when its foreign key says
    /// `ON DELETE SET NULL`.
    fn value(&self, row: &str, column: &ColumnSpec) -> String {
        let name = quote(&column.name);
        match self
            .parents
            .iter()
            .find(|p| p.set_null && p.column == column.name)
        {
            Some(parent) => format!(
                "(SELECT p.{key} FROM {table} p WHERE p.{key} = {row}.{name})",
                key = quote(&parent.key),
                table = parent.table,
            ),
            None => format!("{row}.{name}"),
        }
    }

    fn parents_exist(&self, row: &str) -> String {
        let mut condition = String::new();
        for parent in self.parents.iter().filter(|p| !p.set_null) {
            let column = quote(&parent.column);
            let _ = write!(
                condition,
                " AND ({row}.{column} IS NULL OR EXISTS (SELECT 1 FROM {} p WHERE p.{} = {row}.{column} {PROBE}))",
                parent.table,
                quote(&parent.key)
            );
        }
        condition
    }

    /// Records the write in the ledger (`syncbridge.apply_ledger`): the rows
    /// written, all of one source transaction's savepoint, carry its xid as
    /// `xmin`; one entry for it, with the WAL position after the statement's
    /// writes (evaluated after the aggregate has consumed every written row,
    /// their locks held: a source transaction that changed one of them
    /// afterwards commits at a later LSN, one that committed before does not;
    /// see `Writer::bases`). A later statement of the same savepoint moves
    /// the position on.
    fn record_writes(&self, written: &str) -> String {
        format!(
            "INSERT INTO syncbridge.apply_ledger (written_xmin, origin, source_xid, written_lsn) \
             SELECT {written}.x, ${origin}::text, (SELECT max(i.sx) FROM i), pg_catalog.pg_current_wal_insert_lsn() \
             FROM {written} GROUP BY {written}.x \
             ON CONFLICT (written_xmin) DO UPDATE SET \
               written_lsn = GREATEST(syncbridge.apply_ledger.written_lsn, EXCLUDED.written_lsn), \
               source_xid = EXCLUDED.source_xid",
            origin = self.params().origin,
        )
    }

    /// Insert-or-update of many rows. Parameters: `$1` keys, `$2..` columns
    /// (text arrays), then those of [`Params`]. Returns one row: the number
    /// of rows written, the keys (text) of those inserted rather than
    /// updated (an updated row version carries the updater in `xmax`), and
    /// the number left out because a parent they need is missing (orphans).
    pub fn upsert_sql(&self) -> String {
        self.upsert_sql_for(Incoming::Change, false)
    }

    /// [`Self::upsert_sql`] (or its read or replay form) for rows given a
    /// target key just now: a plain insert, same parameters and result.
    /// Such a key was free when it was chosen; should the target's own
    /// writers have taken it since, the insert fails on the key (a race:
    /// the source transaction is applied again and chooses anew) instead of
    /// writing over their row as an update.
    pub fn insert_new_sql(&self, incoming: Incoming) -> String {
        self.upsert_sql_for(incoming, true)
    }

    /// Insert-or-update of rows read by a snapshot (`READ` events), same
    /// parameters as [`Self::upsert_sql`]. A read is not a change: it loses
    /// every tie (a change with the same `updated_at` may have been made on
    /// top of the copy read) and never writes over a tombstone, whatever its
    /// time (a row deleted after its page was read stays deleted).
    pub fn read_upsert_sql(&self) -> String {
        self.upsert_sql_for(Incoming::Read, false)
    }

    /// Insert-or-update of changes applied again by `apply replay`, same
    /// parameters as [`Self::upsert_sql`]: only a strictly newer change
    /// wins (the live tie rules assume the target holds nothing newer from
    /// the same source, which a replay cannot), tombstones as for a change.
    pub fn replay_upsert_sql(&self) -> String {
        self.upsert_sql_for(Incoming::Replay, false)
    }

    fn upsert_sql_for(&self, incoming: Incoming, new_rows: bool) -> String {
        let key = quote(&self.key.name);
        let ua = quote(&self.updated_at);
        let mut names = key.clone();
        let mut values = format!("i.{key}");
        let mut sets = Vec::new();
        let mut results = Vec::new();
        for column in &self.columns {
            let name = quote(&column.name);
            let _ = write!(names, ", {name}");
            let _ = write!(values, ", {}", self.value("i", column));
            let result = match column.merge {
                Merge::Replace => format!("EXCLUDED.{name}"),
                Merge::KeepExistingNonNull => format!(
                    "CASE WHEN EXCLUDED.{name} IS NULL THEN NULL ELSE COALESCE(t.{name}, EXCLUDED.{name}) END"
                ),
            };
            sets.push(format!("{name} = {result}"));
            results.push(result);
        }
        format!(
            "WITH i AS ({input}), \
             w AS (INSERT INTO {table} AS t ({names}) \
                   SELECT {values} FROM i \
                   WHERE NOT EXISTS (SELECT 1 FROM syncbridge.row_version rv WHERE rv.entity = {entity} \
                         AND rv.row_key = i.{key}::text AND rv.deleted{tombstone_newer} {PROBE}){parents}{referenced} \
                   ORDER BY i.ord \
                   {on_conflict} \
                   RETURNING t.{key}::text AS k, t.xmin::text AS x, \
                     t.xmax = 0 AS inserted), \
             v AS ({versions}), \
             c AS (DELETE FROM syncbridge.row_version rv WHERE rv.entity = {entity} \
                   AND rv.row_key = ANY (ARRAY(SELECT w.k FROM w WHERE w.inserted))) \
             SELECT (SELECT count(*) FROM w), ARRAY(SELECT w.k FROM w WHERE w.inserted), \
               (SELECT count(*) FROM i WHERE NOT (true{parents}))",
            input = self.input(),
            table = self.table,
            entity = literal(&self.entity),
            parents = self.parents_exist("i"),
            referenced = if new_rows {
                // The parameters only the update reads stay referenced, so
                // that every statement takes the same ones.
                let p = self.params();
                format!(
                    " AND ${}::bool IS NOT NULL AND ${}::text[] IS NOT NULL AND ${}::text[] IS NOT NULL",
                    p.tie, p.based_keys, p.based_xmins
                )
            } else {
                String::new()
            },
            on_conflict = if new_rows {
                String::new()
            } else {
                let wins = match incoming {
                    Incoming::Change => self.wins_condition("EXCLUDED", "t"),
                    // The tie and causal parameters stay referenced so that
                    // both statements take the same parameters.
                    Incoming::Read | Incoming::Replay => self.strictly_newer("EXCLUDED", "t"),
                };
                format!(
                    "ON CONFLICT ({key}) DO UPDATE SET {sets} WHERE ({wins}){differs}",
                    sets = sets.join(", "),
                    differs = self.differs(&results),
                )
            },
            tombstone_newer = match incoming {
                Incoming::Change | Incoming::Replay => format!(
                    " AND date_trunc('second', rv.updated_at) >= date_trunc('second', i.{ua}::timestamptz)"
                ),
                Incoming::Read => String::new(),
            },
            versions = self.record_writes("w"),
        )
    }

    /// ` AND` the target row `t` would change: a version identical to the
    /// one there is not written again (a polling overlap or a snapshot reads
    /// rows that already crossed; writing them again would fire the
    /// target's triggers and count as a second application). `results` are
    /// the values the columns would take, in order.
    fn differs(&self, results: &[String]) -> String {
        if results.is_empty() {
            return String::new();
        }
        let existing: Vec<String> = self
            .columns
            .iter()
            .map(|column| format!("t.{}", quote(&column.name)))
            .collect();
        format!(
            " AND ROW({}) IS DISTINCT FROM ROW({})",
            existing.join(", "),
            results.join(", ")
        )
    }

    /// Incoming strictly newer than existing; the tie and causal parameters
    /// stay referenced so that every statement takes the same parameters.
    fn strictly_newer(&self, incoming: &str, existing: &str) -> String {
        let ua = quote(&self.updated_at);
        let p = self.params();
        format!(
            "date_trunc('second', {incoming}.{ua}) > date_trunc('second', {existing}.{ua}) \
             AND ${}::bool IS NOT NULL AND ${}::text[] IS NOT NULL AND ${}::text[] IS NOT NULL",
            p.tie, p.based_keys, p.based_xmins,
        )
    }

    /// [`Self::update_sql`] for `apply replay`: only strictly newer wins.
    pub fn replay_update_sql(&self) -> String {
        self.update_sql_for(Incoming::Replay)
    }

    /// Update-only of many rows (some source columns were unchanged TOAST
    /// values and are not in `columns`). Same parameters and result as
    /// [`Self::upsert_sql`] (no row is ever inserted).
    pub fn update_sql(&self) -> String {
        self.update_sql_for(Incoming::Change)
    }

    fn update_sql_for(&self, incoming: Incoming) -> String {
        let key = quote(&self.key.name);
        let results: Vec<String> = self
            .columns
            .iter()
            .map(|column| {
                let name = quote(&column.name);
                match column.merge {
                    Merge::Replace => self.value("i", column),
                    Merge::KeepExistingNonNull => format!(
                        "CASE WHEN i.{name} IS NULL THEN NULL ELSE COALESCE(t.{name}, i.{name}) END"
                    ),
                }
            })
            .collect();
        let sets: Vec<String> = self
            .columns
            .iter()
            .zip(&results)
            .map(|(column, result)| format!("{} = {result}", quote(&column.name)))
            .collect();
        format!(
            "WITH i AS ({input}), \
             w AS (UPDATE {table} AS t SET {sets} FROM i \
                   WHERE t.{key} = i.{key}{parents} AND ({wins}){differs} \
                   RETURNING t.{key}::text AS k, t.xmin::text AS x), \
             v AS ({versions}) \
             SELECT (SELECT count(*) FROM w), ARRAY[]::text[], \
               (SELECT count(*) FROM i WHERE NOT (true{parents}))",
            input = self.input(),
            table = self.table,
            sets = sets.join(", "),
            parents = self.parents_exist("i"),
            differs = self.differs(&results),
            wins = match incoming {
                Incoming::Change => self.wins_condition("i", "t"),
                Incoming::Read | Incoming::Replay => self.strictly_newer("i", "t"),
            },
            versions = self.record_writes("w"),
        )
    }
}

/// How a delete decides against the target row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteRule {
    /// Live order: the delete wins ties, and always removes a row that is
    /// still the deleting source's own earlier write (its delete comes after
    /// that write in the source's commit order).
    Live,
    /// Replay: the target may already hold what the source did *after* the
    /// delete (a newer write of the same row), so only a row strictly older
    /// than the delete goes; the source's own write is no exception.
    Replay,
}

/// Delete of many rows. Parameters: `$1` keys (text[]), `$2` delete times
/// (text[] of timestamptz), `$3` origin, `$4` and `$5` the target keys and
/// `xmin`s of versions the deletes were made on top of (text[], see
/// `Writer::bases`). Returns the number of rows deleted.
pub fn delete_sql(
    entity: &str,
    table: &str,
    key: &str,
    key_type: &str,
    updated_at: &str,
    rule: DeleteRule,
) -> String {
    let key = quote(key);
    let ua = quote(updated_at);
    let decides = match rule {
        DeleteRule::Live => format!(
            "(date_trunc('second', t.{ua}::timestamptz) <= date_trunc('second', i.at) \
                    OR {own_write} OR {based})",
            own_write = own_write("t", "$3::text"),
            based = based("t", &key, 4, 5),
        ),
        DeleteRule::Replay => format!(
            "date_trunc('second', t.{ua}::timestamptz) < date_trunc('second', i.at) \
             AND $3::text IS NOT NULL AND $4::text[] IS NOT NULL AND $5::text[] IS NOT NULL"
        ),
    };
    format!(
        "WITH i AS (SELECT k::{key_type} AS k, at::timestamptz AS at FROM unnest($1::text[], $2::text[]) AS raw(k, at)), \
         d AS (DELETE FROM {table} AS t USING i WHERE t.{key} = i.k AND {decides} \
               RETURNING t.{key}::text AS k), \
         gone AS (SELECT i.k::text AS k, i.at FROM i \
                  WHERE i.k::text IN (SELECT k FROM d) OR NOT EXISTS (SELECT 1 FROM {table} AS e WHERE e.{key} = i.k {PROBE})), \
         v AS (INSERT INTO syncbridge.row_version (entity, row_key, origin, updated_at, deleted, written_xmin) \
               SELECT {entity}, gone.k, $3::text, gone.at, true, '' FROM gone \
               ON CONFLICT (entity, row_key) DO UPDATE SET origin = EXCLUDED.origin, \
                 updated_at = GREATEST(syncbridge.row_version.updated_at, EXCLUDED.updated_at), \
                 deleted = true, written_xmin = '') \
         SELECT count(*) FROM d",
        entity = literal(entity),
    )
}

/// Whether target row `row` (key column `key`) is still a version a change
/// was made on top of: its key and `xmin` are a pair of the text arrays
/// `$keys` and `$xmins`.
fn based(row: &str, key: &str, keys: usize, xmins: usize) -> String {
    format!(
        "EXISTS (SELECT 1 FROM unnest(${keys}::text[], ${xmins}::text[]) AS b(k, x) \
                 WHERE b.k = {row}.{key}::text AND b.x = {row}.xmin::text)"
    )
}

/// Whether the version of target row `row` is one apply wrote from source
/// `origin` (an SQL expression): its `xmin` is in the ledger for that source.
fn own_write(row: &str, origin: &str) -> String {
    format!(
        "EXISTS (SELECT 1 FROM syncbridge.apply_ledger l \
                 WHERE l.written_xmin = {row}.xmin::text AND l.origin = {origin})"
    )
}

/// An SQL string literal.
pub fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape() -> Shape {
        Shape {
            entity: "user".into(),
            table: quote_table("identity", "identities"),
            key: ColumnSpec {
                name: "id".into(),
                type_name: "uuid".into(),
                merge: Merge::Replace,
            },
            updated_at: "updated_at".into(),
            columns: vec![
                ColumnSpec {
                    name: "email".into(),
                    type_name: "text".into(),
                    merge: Merge::Replace,
                },
                ColumnSpec {
                    name: "updated_at".into(),
                    type_name: "timestamptz".into(),
                    merge: Merge::Replace,
                },
            ],
            parents: vec![],
        }
    }

    #[test]
    fn rows_given_a_new_key_are_inserted_and_never_written_over_a_row_there() {
        for incoming in [Incoming::Change, Incoming::Read, Incoming::Replay] {
            let sql = shape().insert_new_sql(incoming);
            assert!(
                !sql.contains("ON CONFLICT (\"id\")"),
                "a taken key fails the insert: {sql}"
            );
            for param in ["$5::bool", "$7::text[]", "$8::text[]"] {
                assert!(
                    sql.contains(param),
                    "takes the upsert's parameters ({param}): {sql}"
                );
            }
            assert!(sql.contains("rv.deleted"), "tombstones still apply");
        }
    }

    #[test]
    fn the_upsert_decides_in_the_same_statement_that_writes() {
        let sql = shape().upsert_sql();
        assert!(sql.contains("ON CONFLICT (\"id\") DO UPDATE SET \"email\" = EXCLUDED.\"email\""));
        assert!(
            sql.contains("WHERE (EXISTS (SELECT 1 FROM syncbridge.apply_ledger l"),
            "the same source's later change wins first, whatever the times: {sql}"
        );
        assert!(
            sql.contains("OR EXISTS (SELECT 1 FROM unnest($7::text[], $8::text[])"),
            "a change made on top of the target version wins, whatever the times: {sql}"
        );
        assert!(
            sql.contains("OR date_trunc('second', EXCLUDED.\"updated_at\") > date_trunc('second', t.\"updated_at\")"),
            "then the newer: {sql}"
        );
        assert!(
            sql.contains("= date_trunc('second', t.\"updated_at\") AND $5::bool)"),
            "the tie flag decides ties only: {sql}"
        );
        assert!(
            sql.contains("$5::bool"),
            "tie flag after keys, two columns and origin: {sql}"
        );
        assert!(
            sql.contains("unnest($7::text[], $8::text[])"),
            "causal bases last: {sql}"
        );
        assert!(sql.contains("rv.deleted"), "tombstones block resurrection");
        assert!(
            sql.contains(
                "AND ROW(t.\"email\", t.\"updated_at\") IS DISTINCT FROM ROW(EXCLUDED.\"email\", EXCLUDED.\"updated_at\")"
            ),
            "a version identical to the target's is not written again: {sql}"
        );
    }

    #[test]
    fn a_snapshot_read_loses_ties_and_never_writes_over_a_tombstone() {
        let sql = shape().read_upsert_sql();
        assert!(sql.contains("WHERE (date_trunc('second', EXCLUDED.\"updated_at\") > date_trunc('second', t.\"updated_at\") AND $5::bool IS NOT NULL"), "{sql}");
        assert!(!sql.contains("written_xmin = t.xmin"), "no tie rule: {sql}");
        assert!(
            sql.contains("rv.deleted OFFSET 0) ORDER BY"),
            "any tombstone blocks: {sql}"
        );
        assert!(shape().upsert_sql().contains("rv.deleted AND date_trunc"));
    }

    #[test]
    fn a_replayed_change_wins_only_when_strictly_newer_and_deletes_only_older_rows() {
        let sql = shape().replay_upsert_sql();
        assert!(!sql.contains("written_xmin = t.xmin"), "no tie rule: {sql}");
        assert!(
            sql.contains("rv.deleted AND date_trunc"),
            "tombstones as for a change"
        );
        let live = delete_sql("user", "t", "id", "uuid", "updated_at", DeleteRule::Live);
        let replay = delete_sql("user", "t", "id", "uuid", "updated_at", DeleteRule::Replay);
        assert!(live.contains("<= date_trunc") && live.contains("written_xmin = t.xmin"));
        assert!(replay.contains(") < date_trunc") && !replay.contains("written_xmin = t.xmin"));
    }

    #[test]
    fn parent_and_tombstone_checks_probe_one_key_at_a_time() {
        let mut shape = shape();
        shape.parents.push(ParentCheck {
            column: "group_id".into(),
            table: quote_table("org", "groups"),
            key: "id".into(),
            set_null: false,
        });
        for sql in [shape.upsert_sql(), shape.update_sql()] {
            assert!(
                sql.contains("EXISTS (SELECT 1 FROM \"org\".\"groups\" p WHERE p.\"id\" = i.\"group_id\" OFFSET 0)"),
                "{sql}"
            );
        }
        assert!(shape.upsert_sql().contains("rv.deleted AND date_trunc('second', rv.updated_at) >= date_trunc('second', i.\"updated_at\"::timestamptz) OFFSET 0)"));
        let delete = delete_sql("user", "t", "id", "uuid", "updated_at", DeleteRule::Live);
        assert!(
            delete.contains("WHERE e.\"id\" = i.k OFFSET 0)"),
            "{delete}"
        );
    }

    #[test]
    fn identifiers_and_literals_are_quoted() {
        assert_eq!(quote("we\"ird"), "\"we\"\"ird\"");
        assert_eq!(literal("o'clock"), "'o''clock'");
    }
}
