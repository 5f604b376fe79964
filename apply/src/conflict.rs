//! Last writer wins, decided inside the target database.
//!
//! Every write is one statement that decides and writes at once, so no other
//! writer can slip in between a read and a write. It decides by the versions'
//! row clocks (see [`pg::clock`]): the incoming version's, carried by its
//! event (`$clocks`, a JSON object from target key to `[seconds, tick]`),
//! against the target row's, kept in the target's `syncbridge.row_clock`.
//! Both databases hold every version's clock and compare them the same
//! way, so both keep the same version whatever the arrival order:
//!
//! - **Upsert** (insert or update): `INSERT ... ON CONFLICT (key) DO UPDATE
//!   ... WHERE <incoming wins>`: the later clock wins; on an equal clock the
//!   configured `tie_winner`'s version does. A version made on top of
//!   another always has the later clock (whichever side wrote that one), and
//!   a source's later version is always made on top of its earlier one, so
//!   causality decides before any timestamp does. The written row's clock is
//!   recorded in the same statement (`origin` = the source).
//! - An insert never writes over a tombstone (a deleted row's clock) at least
//!   as late as the incoming version: a delete wins an equal clock.
//! - A row whose referenced parent does not exist in the target (deleted there
//!   meanwhile) is not written: the delete wins; it is counted as a conflict.
//!   Where the target's foreign key is `ON DELETE SET NULL`, the row is
//!   written with a NULL reference instead, as the delete did to the rows it
//!   found.
//! - **Delete**: removes the target row unless the row's clock is later than
//!   the delete's, and leaves a tombstone with the delete's clock.
//! - **Partial update** (a TOAST value unchanged at the source): an `UPDATE`
//!   of the other columns under the same rule; unchanged columns keep their
//!   target value.
//! - A version without a clock (written before its table had the clock
//!   trigger, or carried by an event without one) counts as
//!   `(updated_at at whole seconds, 0)`.
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
    /// The incoming versions' clocks (`jsonb`, see [`Clocks`]).
    pub clocks: usize,
}

/// What a statement writes: the target table of `entity`.
#[derive(Debug, Clone)]
pub struct Shape {
    pub entity: String,
    pub table: String,
    /// The table as `syncbridge.row_clock` names it.
    pub relation: String,
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
            relation: pg::clock::relation(&table.schema, &table.table),
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
            clocks: origin + 3,
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

    /// Whether an incoming change replaces the existing target row: its
    /// clock is later than the row's, or equal and the source wins ties
    /// (and the row is not that source's version already). A change that
    /// came without a clock (its table has no clock trigger) also wins while
    /// the row is still its source's earlier version: the source's order
    /// decides between its own changes.
    fn wins_condition(&self, incoming: &str, existing: &str, results: &[String]) -> String {
        let p = self.params();
        let (inc, cur) = self.clocks_of(incoming, existing);
        clock_wins(
            &inc,
            &cur,
            // An equal clock: the tie winner's version, unless the row
            // holds one of its own; and different values from the source the
            // row's version came from: a later version there (a row that took
            // over the row's natural key, stamped in the same second as the
            // version of the row it replaced). The same values are that
            // version again, not written twice.
            &format!(
                "(${tie}::bool AND cur.origin IS DISTINCT FROM ${origin}::text) \
                 OR (cur.origin = ${origin}::text{differs})",
                tie = p.tie,
                origin = p.origin,
                differs = self.differs(results),
            ),
            // Without a clock, the row still being this source's earlier
            // version is what says the change came after it.
            &format!("NOT inc.clocked AND cur.origin = ${}::text", p.origin),
        )
    }

    /// The `FROM` items of the incoming version's clock (`inc`, from row
    /// source `incoming`) and of the target row's (`cur`, row `existing`).
    fn clocks_of(&self, incoming: &str, existing: &str) -> (String, String) {
        let key = quote(&self.key.name);
        let updated_at = quote(&self.updated_at);
        (
            incoming_clock(
                self.params().clocks,
                &format!("{existing}.{key}::text"),
                &format!("{incoming}.{updated_at}"),
            ),
            current_clock(&self.relation, existing, &key, &updated_at),
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
    /// the positions (from 1, in the order of the keys) of those left out
    /// because a parent they need is missing here.
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
    /// top of the copy read) but one over its own source's version with
    /// other values (see `read_wins`). A read without a clock never writes over a
    /// tombstone, whatever its time (a row deleted after its page was read
    /// stays deleted); one carrying its source clock (read back by apply
    /// from the source) writes over a tombstone only when strictly later,
    /// as a change does: a delete made on top of it is always later, and a
    /// delete it is later than loses in the source too.
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
        let p = self.params();
        format!(
            "WITH i AS ({input}), \
             w AS (INSERT INTO {table} AS t ({names}) \
                   SELECT {values} FROM i \
                   WHERE NOT EXISTS (SELECT 1 FROM syncbridge.row_clock rc WHERE rc.relation = {relation} \
                         AND rc.row_key = i.{key}::text AND rc.deleted{tombstone_newer} {PROBE}){parents}{referenced} \
                   ORDER BY i.ord \
                   {on_conflict} \
                   RETURNING t.{key}::text AS k, t.xmin::text AS x, \
                     t.xmax = 0 AS inserted, floor(extract(epoch FROM t.{ua}))::int8 AS s), \
             v AS ({versions}), \
             c AS ({clocks}) \
             SELECT (SELECT count(*) FROM w), ARRAY(SELECT w.k FROM w WHERE w.inserted), \
               ARRAY(SELECT i.ord FROM i WHERE NOT (true{parents}) ORDER BY i.ord)",
            input = self.input(),
            table = self.table,
            relation = literal(&self.relation),
            parents = self.parents_exist("i"),
            referenced = if new_rows {
                // The parameter only the update reads stays referenced, so
                // that every statement takes the same ones.
                format!(" AND ${}::bool IS NOT NULL", p.tie)
            } else {
                String::new()
            },
            on_conflict = if new_rows {
                String::new()
            } else {
                match incoming {
                    // A winning version is written even when its values are
                    // the row's already: its clock must be recorded with it.
                    Incoming::Change => format!(
                        "ON CONFLICT ({key}) DO UPDATE SET {sets} WHERE {wins}",
                        sets = sets.join(", "),
                        wins = self.wins_condition("EXCLUDED", "t", &results),
                    ),
                    Incoming::Read | Incoming::Replay => format!(
                        "ON CONFLICT ({key}) DO UPDATE SET {sets} WHERE {wins}{differs}",
                        sets = sets.join(", "),
                        wins = match incoming {
                            Incoming::Read => self.read_wins("EXCLUDED", "t"),
                            _ => self.strictly_newer("EXCLUDED", "t"),
                        },
                        differs = self.differs(&results),
                    ),
                }
            },
            tombstone_newer = match incoming {
                Incoming::Change | Incoming::Replay => format!(
                    " AND ROW(rc.seconds, rc.tick) >= (SELECT inc.s, inc.t FROM {inc})",
                    inc = incoming_clock(p.clocks, &format!("i.{key}::text"), &format!("i.{ua}")),
                ),
                // A read without a clock may be older than any delete; one
                // with its source clock is ordered against the tombstone
                // as a change is.
                Incoming::Read => format!(
                    " AND (SELECT NOT inc.clocked OR ROW(rc.seconds, rc.tick) >= ROW(inc.s, inc.t) FROM {inc})",
                    inc = incoming_clock(p.clocks, &format!("i.{key}::text"), &format!("i.{ua}")),
                ),
            },
            versions = self.record_writes("w"),
            clocks = self.record_clocks("w"),
        )
    }

    /// Records the clocks of the rows written (`written`, with the key `k`
    /// as text and `s`, the row's `updated_at` in whole seconds, for a
    /// version that came without a clock).
    fn record_clocks(&self, written: &str) -> String {
        let p = self.params();
        format!(
            "INSERT INTO syncbridge.row_clock AS rc (relation, row_key, seconds, tick, origin, deleted, version) \
             SELECT {relation}, {written}.k, \
               COALESCE((${clocks}::jsonb -> {written}.k ->> 0)::int8, {written}.s), \
               COALESCE((${clocks}::jsonb -> {written}.k ->> 1)::int8, 0), ${origin}::text, false, {written}.x \
             FROM {written} \
             ON CONFLICT (relation, row_key) DO UPDATE SET seconds = EXCLUDED.seconds, \
               tick = EXCLUDED.tick, origin = EXCLUDED.origin, deleted = false, version = EXCLUDED.version",
            relation = literal(&self.relation),
            clocks = p.clocks,
            origin = p.origin,
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
        let p = self.params();
        let (inc, cur) = self.clocks_of(incoming, existing);
        clock_wins(&inc, &cur, &format!("false AND ${}::bool", p.tie), "false")
    }

    /// Whether a read replaces the target row (with [`Self::differs`]
    /// added by the caller): a later clock; or, for a row read back by apply
    /// with its source clock, the same clock from the same source with other
    /// values. That is the same version, written here while a reference it
    /// holds could not be (its parent missing here then, the reference
    /// nulled by the foreign key's rule). A snapshot's read, without a clock,
    /// loses every tie.
    fn read_wins(&self, incoming: &str, existing: &str) -> String {
        let p = self.params();
        let (inc, cur) = self.clocks_of(incoming, existing);
        clock_wins(
            &inc,
            &cur,
            &format!(
                "inc.clocked AND cur.origin = ${origin}::text AND ${tie}::bool IS NOT NULL",
                origin = p.origin,
                tie = p.tie,
            ),
            "false",
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
                   WHERE t.{key} = i.{key}{parents} AND {wins}{differs} \
                   RETURNING t.{key}::text AS k, t.xmin::text AS x, \
                     floor(extract(epoch FROM t.{ua}))::int8 AS s), \
             v AS ({versions}), \
             c AS ({clocks}) \
             SELECT (SELECT count(*) FROM w), ARRAY[]::text[], \
               ARRAY(SELECT i.ord FROM i WHERE NOT (true{parents}) ORDER BY i.ord)",
            input = self.input(),
            table = self.table,
            sets = sets.join(", "),
            parents = self.parents_exist("i"),
            differs = match incoming {
                // A winning version is written even when its values are the
                // row's already: its clock must be recorded with it.
                Incoming::Change => String::new(),
                Incoming::Read | Incoming::Replay => self.differs(&results),
            },
            wins = match incoming {
                Incoming::Change => self.wins_condition("i", "t", &results),
                Incoming::Read => self.read_wins("i", "t"),
                Incoming::Replay => self.strictly_newer("i", "t"),
            },
            versions = self.record_writes("w"),
            clocks = self.record_clocks("w"),
            ua = quote(&self.updated_at),
        )
    }
}

/// How a delete decides against the target row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteRule {
    /// Live order: the delete wins an equal clock.
    Live,
    /// Replay: the target may already hold what the source did *after* the
    /// delete (a newer write of the same row), so only a row with an earlier
    /// clock goes.
    Replay,
}

/// Delete of many rows. Parameters: `$1` keys (text[]), `$2` delete times
/// (text[] of timestamptz), `$3` origin, `$4` the deletes' clocks (`jsonb`,
/// see [`Clocks`]; a delete without one counts as its time in whole
/// seconds). Returns the number of rows deleted.
pub fn delete_sql(
    table: &str,
    relation: &str,
    key: &str,
    key_type: &str,
    updated_at: &str,
    rule: DeleteRule,
) -> String {
    let key = quote(key);
    let ua = quote(updated_at);
    let current = current_clock(relation, "t", &key, &ua);
    let decides = match rule {
        // A delete wins an equal clock.
        // Without a clock, a row still the deleting source's own earlier
        // version goes too.
        DeleteRule::Live => format!(
            "(SELECT ROW(i.s, i.t) >= ROW(cur.s, cur.t) OR (NOT i.clocked AND cur.origin = $3::text) FROM {current})"
        ),
        DeleteRule::Replay => format!(
            "(SELECT ROW(i.s, i.t) > ROW(cur.s, cur.t) FROM {current})"
        ),
    };
    format!(
        "WITH i AS (SELECT k::{key_type} AS k, at::timestamptz AS at, \
                      COALESCE(($4::jsonb -> k ->> 0)::int8, floor(extract(epoch FROM at::timestamptz))::int8) AS s, \
                      COALESCE(($4::jsonb -> k ->> 1)::int8, 0) AS t, ($4::jsonb -> k) IS NOT NULL AS clocked \
                    FROM unnest($1::text[], $2::text[]) AS raw(k, at)), \
         d AS (DELETE FROM {table} AS t USING i WHERE t.{key} = i.k AND {decides} \
               RETURNING t.{key}::text AS k), \
         gone AS (SELECT i.k::text AS k, i.s, i.t FROM i \
                  WHERE i.k::text IN (SELECT k FROM d) OR NOT EXISTS (SELECT 1 FROM {table} AS e WHERE e.{key} = i.k {PROBE})), \
         v AS (INSERT INTO syncbridge.row_clock AS rc (relation, row_key, seconds, tick, origin, deleted) \
               SELECT {relation}, gone.k, gone.s, gone.t, $3::text, true FROM gone \
               ON CONFLICT (relation, row_key) DO UPDATE SET seconds = EXCLUDED.seconds, \
                 tick = EXCLUDED.tick, origin = EXCLUDED.origin, deleted = true, version = NULL \
               WHERE NOT rc.deleted OR ROW(EXCLUDED.seconds, EXCLUDED.tick) > ROW(rc.seconds, rc.tick)) \
         SELECT count(*) FROM d",
        relation = literal(relation),
    )
}

/// The incoming version's clock, as a `FROM` item `inc` with columns `s`,
/// `t` and `clocked` (whether it came with one): from the `jsonb` parameter `$clocks` by the target key (text
/// expression `key`), or `(updated_at at whole seconds, 0)` for a version
/// that came without one.
fn incoming_clock(clocks: usize, key: &str, updated_at: &str) -> String {
    format!(
        "(SELECT COALESCE((${clocks}::jsonb -> {key} ->> 0)::int8, floor(extract(epoch FROM {updated_at}))::int8) AS s, \
                 COALESCE((${clocks}::jsonb -> {key} ->> 1)::int8, 0) AS t, \
                 (${clocks}::jsonb -> {key}) IS NOT NULL AS clocked) AS inc"
    )
}

/// The clock of the target row `row` (its key column `key` and version time
/// `updated_at`, quoted), as a
/// `FROM` item `cur` with columns `s`, `t` and `origin` (NULL for a version
/// the target's own writers made): its `syncbridge.row_clock` entry, or
/// `(updated_at at whole seconds, 0)` for a row last written before its
/// table had a clock. An entry apply recorded counts only while the row is
/// still the version apply wrote (`version`, its `xmin`): in a table
/// without the clock trigger an application's later write leaves the entry
/// behind.
fn current_clock(relation: &str, row: &str, key: &str, updated_at: &str) -> String {
    let key = format!("{row}.{key}");
    let updated_at = format!("{row}.{updated_at}");
    format!(
        "(SELECT COALESCE(rc.seconds, floor(extract(epoch FROM {updated_at}))::int8) AS s, \
                 COALESCE(rc.tick, 0) AS t, rc.origin \
          FROM (SELECT) AS one LEFT JOIN syncbridge.row_clock rc \
            ON rc.relation = {relation} AND rc.row_key = {key}::text AND NOT rc.deleted \
           AND (rc.version IS NULL OR rc.version = {row}.xmin::text)) AS cur",
        relation = literal(relation),
    )
}

/// Whether clock `inc` is later than `cur` (both `FROM` items of columns `s`
/// and `t`), or equal and `tie` holds, or `also` holds (SQL conditions that
/// may name `inc` and `cur`). One parenthesized subquery.
fn clock_wins(inc: &str, cur: &str, tie: &str, also: &str) -> String {
    format!(
        "(SELECT ROW(inc.s, inc.t) > ROW(cur.s, cur.t) OR (ROW(inc.s, inc.t) = ROW(cur.s, cur.t) AND ({tie})) \
            OR ({also}) \
          FROM {inc} CROSS JOIN {cur})"
    )
}

/// The `jsonb` parameter of the incoming versions' clocks: an object from
/// target key (as text) to `[seconds, tick]`. Keys of versions without a
/// clock are left out.
#[derive(Debug, Default)]
pub struct Clocks {
    json: serde_json::Map<String, serde_json::Value>,
}

impl Clocks {
    /// Adds the clock of the version written under `key`.
    pub fn insert(&mut self, key: &str, clock: Option<schemas::event::Clock>) {
        if let Some(clock) = clock {
            self.json.insert(
                key.to_owned(),
                serde_json::json!([clock.seconds, clock.tick]),
            );
        }
    }
}

impl tokio_postgres::types::ToSql for Clocks {
    fn to_sql(
        &self,
        _ty: &tokio_postgres::types::Type,
        out: &mut bytes::BytesMut,
    ) -> std::result::Result<tokio_postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>>
    {
        use bytes::BufMut;
        // jsonb's binary form: a version byte, then the text.
        out.put_u8(1);
        serde_json::to_writer(out.writer(), &self.json)?;
        Ok(tokio_postgres::types::IsNull::No)
    }

    fn accepts(ty: &tokio_postgres::types::Type) -> bool {
        *ty == tokio_postgres::types::Type::JSONB
    }

    tokio_postgres::types::to_sql_checked!();
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
            relation: "identity.identities".into(),
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
            for param in ["$5::bool", "$7::jsonb"] {
                assert!(
                    sql.contains(param),
                    "takes the upsert's parameters ({param}): {sql}"
                );
            }
            assert!(sql.contains("rc.deleted"), "tombstones still apply");
        }
    }

    #[test]
    fn the_upsert_decides_by_the_clocks_in_the_same_statement_that_writes() {
        let sql = shape().upsert_sql();
        assert!(sql.contains(
            "ON CONFLICT (\"id\") DO UPDATE SET \"email\" = EXCLUDED.\"email\", \"updated_at\" = EXCLUDED.\"updated_at\" WHERE (SELECT ROW(inc.s, inc.t) > ROW(cur.s, cur.t)"
        ), "{sql}");
        assert!(
            sql.contains("($7::jsonb -> t.\"id\"::text ->> 0)::int8"),
            "the incoming clock by the target key: {sql}"
        );
        assert!(
            sql.contains("rc.relation = 'identity.identities' AND rc.row_key = t.\"id\"::text AND NOT rc.deleted"),
            "the row's clock: {sql}"
        );
        assert!(
            sql.contains("= ROW(cur.s, cur.t) AND (($5::bool AND cur.origin IS DISTINCT FROM $4::text) OR (cur.origin = $4::text AND ROW(t.\"email\", t.\"updated_at\") IS DISTINCT FROM ROW(EXCLUDED.\"email\", EXCLUDED.\"updated_at\"))))"),
            "equal clocks only: the tie flag decides, never against the source's own version, \
             and the source's own version wins with different values: {sql}"
        );
        assert_eq!(
            sql.matches("IS DISTINCT FROM ROW(").count(),
            1,
            "a winning later version is written even with the row's values, for its clock: {sql}"
        );
        assert!(
            sql.contains("INSERT INTO syncbridge.row_clock AS rc"),
            "the written rows' clocks are recorded: {sql}"
        );
    }

    #[test]
    fn a_partial_update_decides_per_joined_row_in_one_parenthesized_condition() {
        let sql = shape().update_sql();
        assert!(
            sql.contains(
                "WHERE t.\"id\" = i.\"id\" AND (SELECT ROW(inc.s, inc.t) > ROW(cur.s, cur.t)"
            ),
            "{sql}"
        );
        let condition = &sql[sql.find("AND (SELECT ROW(inc.s").expect("the condition")..];
        assert!(
            condition.contains("OR (NOT inc.clocked AND cur.origin = $4::text)"),
            "the own-source rule inside the same subquery: {sql}"
        );
    }

    #[test]
    fn a_read_wins_a_tie_only_over_its_own_sources_version_and_a_tombstone_only_when_later() {
        let sql = shape().read_upsert_sql();
        assert!(
            sql.contains("AND (inc.clocked AND cur.origin = $4::text AND $5::bool IS NOT NULL)"),
            "a tie only over the same source's version, never by the tie winner: {sql}"
        );
        assert!(
            sql.contains(
                "rc.deleted AND (SELECT NOT inc.clocked OR ROW(rc.seconds, rc.tick) >= ROW(inc.s, inc.t) FROM"
            ),
            "a tombstone blocks a read without a clock, and one with a clock unless strictly later: {sql}"
        );
        assert!(shape()
            .upsert_sql()
            .contains("rc.deleted AND ROW(rc.seconds, rc.tick) >= (SELECT inc.s, inc.t FROM"));
    }

    #[test]
    fn a_replayed_change_wins_only_with_a_later_clock_and_deletes_only_earlier_rows() {
        let sql = shape().replay_upsert_sql();
        assert!(
            sql.contains("AND (false AND $5::bool)"),
            "no tie rule: {sql}"
        );
        let live = delete_sql("t", "s.t", "id", "uuid", "updated_at", DeleteRule::Live);
        let replay = delete_sql("t", "s.t", "id", "uuid", "updated_at", DeleteRule::Replay);
        assert!(
            live.contains("ROW(i.s, i.t) >= ROW(cur.s, cur.t)"),
            "{live}"
        );
        assert!(
            replay.contains("ROW(i.s, i.t) > ROW(cur.s, cur.t)"),
            "{replay}"
        );
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
        assert!(shape
            .upsert_sql()
            .contains("FROM (SELECT COALESCE(($7::jsonb -> i.\"id\"::text ->> 0)::int8"));
        let delete = delete_sql("t", "s.t", "id", "uuid", "updated_at", DeleteRule::Live);
        assert!(
            delete.contains("WHERE e.\"id\" = i.k OFFSET 0)"),
            "{delete}"
        );
    }

    #[test]
    fn clocks_travel_as_a_json_object_by_target_key() {
        let mut clocks = Clocks::default();
        clocks.insert(
            "7",
            Some(schemas::event::Clock {
                seconds: 100,
                tick: 2,
            }),
        );
        clocks.insert("8", None);
        let mut out = bytes::BytesMut::new();
        tokio_postgres::types::ToSql::to_sql(
            &clocks,
            &tokio_postgres::types::Type::JSONB,
            &mut out,
        )
        .expect("jsonb");
        assert_eq!(&out[..], b"\x01{\"7\":[100,2]}");
    }

    #[test]
    fn identifiers_and_literals_are_quoted() {
        assert_eq!(quote("we\"ird"), "\"we\"\"ird\"");
        assert_eq!(literal("o'clock"), "'o''clock'");
    }
}
