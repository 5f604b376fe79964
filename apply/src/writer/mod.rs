//! Turns change events into target statements: mapping, id correspondence,
//! lookups, and multi-row statements that decide conflicts as they write.
//!
//! Events are staged into *runs*: consecutive changes of one entity with the
//! same operation and shape. A run becomes one statement of up to
//! `statement_max_rows` rows; a run ends when the next event differs or would
//! touch a row already in it, so source order is kept wherever it matters
//! (parents before children, two changes of one row in order).
//!
//! This module keeps [`Writer`] and what its callers use around a target
//! transaction (its boundaries, its footprint). Each concern has a module
//! of its own, holding an `impl Writer` block and the small types it needs:
//!
//! - `runs`: events staged into runs ([`Writer::stage`]).
//! - `rows`: a run written as one multi-row statement ([`Writer::flush`]):
//!   values rendered, references and lookups resolved, rows paired and
//!   locked, changes made on top of a version that crossed found.
//! - `deletes`: runs of deletes, and deletes re-asserted on the side they
//!   came from once the target transaction committed
//!   ([`Writer::reassert_deletes`]).
//! - `resync`: the children of a row that came back, read again from the
//!   source.
//! - `waiting`: rows left out until the target has what they need (a
//!   parent's counterpart, their natural key), read again from the source
//!   in later rounds ([`Writer::retry_waiting`]).
//! - `lookups`: values and keys of the mapping's lookup tables.
//! - [`pairing`]: the id correspondence: derived ids, the pairs known,
//!   looked up, linked by natural key, allocated and recorded; the pair
//!   lock.
//! - `pipeline`: statements prepared once, sent ahead and settled later
//!   ([`Writer::settle`]).
//! - `statistics`: planner statistics refreshed as the tables fill
//!   ([`Analyze`]).

mod deletes;
mod lookups;
pub mod pairing;
mod pipeline;
mod resync;
mod rows;
mod runs;
mod statistics;
mod waiting;

use std::collections::HashMap;
use std::sync::Arc;

use tokio_postgres::Client;

use crate::conflict;
use crate::error::{ApplyError, Result};
use crate::footprint::{Footprint, Touch};
use crate::mapping::{Catalogs, Entity, Mapping, Side};
use crate::stats::Stats;
use pairing::{PairCeiling, Pairing};
use pipeline::{Pipeline, Prepared};
use runs::Run;
use statistics::Filled;

pub use statistics::Analyze;
pub(crate) use statistics::Statistics;

/// What became of a staged event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Staged {
    Staged,
    /// The event's table is not mapped: nothing to do.
    Unmapped,
}

/// Writes one direction's events into the target database.
///
/// # Statements sent ahead
///
/// The statements that only write (row locks, id correspondence, the run's
/// upsert, savepoints) are *sent*: queued on the target connection, which
/// runs them in order, and their replies read later by [`Writer::settle`].
/// Pipelining lets the database write one run while apply decodes and maps
/// the next. When pipelining is off, each sent statement is settled at once,
/// so every error surfaces where the statement was made, as one statement at
/// a time would. When it is on, an error may surface at a later statement
/// than its cause (the server refuses everything after a failure in the
/// transaction): the caller must then roll back the whole target
/// transaction and apply it again with pipelining off (see
/// [`ApplyError::replans`]). At most one run's statements are outstanding:
/// [`Writer::flush`] settles before it reads anything.
pub struct Writer {
    from: Side,
    to: Side,
    mapping: Arc<Mapping>,
    /// The target database's tables and types, and the source database's
    /// (where legacy lookup tables are read).
    catalogs: Catalogs,
    origin: String,
    tie_wins: bool,
    max_rows: usize,
    /// The run being staged (see `runs`).
    run: Option<Run>,
    /// The pairs this writer knows and the pair lock it holds (see
    /// [`pairing`]).
    pairing: Pairing,
    /// Lookup values read from the legacy side: (field, key text) -> value text.
    lookups: HashMap<(usize, usize, String), Option<String>>,
    /// Statements prepared on the target connection...
    statements: Prepared,
    /// ...and on the source connection.
    source_statements: Prepared,
    stats: Arc<Stats>,
    /// What this writer wrote, for the direction's planner statistics.
    filled: Filled,
    delete_rule: conflict::DeleteRule,
    /// The statements sent ahead on the target connection (see `pipeline`).
    pipeline: Pipeline,
    /// What the open target transaction's events touched...
    footprint: Footprint,
    /// ...and the last event staged.
    touched: Touch,
    /// Whether the open target transaction wrote what its events do not
    /// name: a stale pair given up, children of a row that came back.
    hidden: bool,
    /// Whether the source transaction being staged is applied again after
    /// it failed on a unique key: upserts then look for rows written onto a
    /// natural key another row holds (see [`Writer::relink_displaced_rows`]).
    relinking: bool,
    /// Whether the open target transaction recorded deletes to re-assert
    /// (see [`Writer::reassert_recorded_deletes`]).
    recorded_deletes: bool,
    /// Whether rows may be waiting in the target (see
    /// [`Writer::retry_waiting`]).
    waiting: bool,
}

impl Writer {
    pub fn new(
        from: Side,
        mapping: Arc<Mapping>,
        catalogs: Catalogs,
        max_rows: usize,
        stats: Arc<Stats>,
        connection: Arc<Client>,
        ceiling: Arc<PairCeiling>,
    ) -> Writer {
        let origin = mapping.side(from).source.clone();
        let tie_wins = mapping.conflicts().tie_winner == from;
        Writer {
            from,
            to: from.other(),
            mapping,
            catalogs,
            origin,
            tie_wins,
            max_rows,
            run: None,
            pairing: Pairing::new(ceiling),
            lookups: HashMap::new(),
            statements: Prepared::default(),
            source_statements: Prepared::default(),
            stats,
            filled: Filled::default(),
            delete_rule: conflict::DeleteRule::Live,
            pipeline: Pipeline::new(connection),
            footprint: Footprint::default(),
            touched: Touch::default(),
            hidden: false,
            relinking: false,
            recorded_deletes: false,
            waiting: true,
        }
    }

    /// Decides deletes as a replay does (see [`conflict::DeleteRule`]).
    pub fn replaying(&mut self) {
        self.delete_rule = conflict::DeleteRule::Replay;
    }

    /// What the last event staged touches (nothing if it was not staged).
    pub fn touched(&self) -> &Touch {
        &self.touched
    }

    /// What the target transaction's events touched, and whether it also
    /// wrote what they do not name (see [`crate::footprint`]); starts over
    /// for the next one.
    pub fn take_footprint(&mut self) -> (Footprint, bool) {
        (
            std::mem::take(&mut self.footprint),
            std::mem::take(&mut self.hidden),
        )
    }

    /// The source transaction about to be staged again failed on a unique
    /// key: its upserts of rows whose counterpart is gone while another row
    /// holds their natural key write onto that row and pair the two (see
    /// `Writer::relink_displaced`), and the pairs known from committed
    /// transactions are read again, as another direction may have given one
    /// up. Until the source transaction ends.
    pub fn relink_displaced_rows(&mut self) {
        self.relinking = true;
        self.forget_committed_pairs();
    }

    /// The source transaction's staged work is gone (savepoint rolled back).
    pub fn forget_transaction(&mut self) {
        self.relinking = false;
        self.pipeline.transactions += 1;
        self.run = None;
        // A transaction lock taken since the savepoint went with it, and
        // the pairs it learnt.
        self.pairing.forget_transaction();
        // Lookup rows created by the rolled-back work are gone too.
        self.lookups.clear();
    }

    /// The source transaction is part of the batch now.
    pub fn keep_transaction(&mut self) {
        self.relinking = false;
        self.pipeline.transactions += 1;
        self.pairing.keep_transaction();
    }

    /// The target transaction committed.
    pub fn committed(&mut self) {
        self.filled.committed();
        self.pairing.committed();
    }

    /// The target transaction rolled back.
    pub fn rolled_back(&mut self) {
        self.pipeline.forget_sent();
        self.pipeline.transactions += 1;
        self.filled.rolled_back();
        self.run = None;
        self.pairing.rolled_back();
        self.lookups.clear();
        self.footprint = Footprint::default();
        self.hidden = false;
        self.relinking = false;
        self.recorded_deletes = false;
    }

    fn column_type(&self, entity: &Entity, side: Side, column: &str) -> Result<String> {
        let table = entity.table(side);
        self.catalogs
            .target
            .column_type(&table.schema, &table.table, column)
            .map(str::to_owned)
            .ok_or_else(|| {
                ApplyError::Config(format!(
                    "column {column} of {} is not in the {} database",
                    table.qualified(),
                    side.as_str()
                ))
            })
    }
}
