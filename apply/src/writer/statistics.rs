//! Planner statistics of what a direction fills, refreshed as its tables
//! grow.
//!
//! Three parts, one per place the work happens: each writer counts the rows
//! it wrote (`Filled`); the direction adds up its writers' committed rows
//! and decides when a refresh is due ([`Analyze`]); and the `ANALYZE` runs
//! on a connection of its own, beside the applying one ([`Statistics`]).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use tokio_postgres::Client;
use tracing::{debug, warn};

use super::Writer;
use crate::config::Config;
use crate::mapping::Side;
use pg::ident::quote_table;

/// When apply last refreshed the planner statistics of what one direction
/// fills. One per direction, shared by its writers (each would otherwise
/// count only its own rows and refresh as often again).
///
/// apply creates and fills its bookkeeping tables (and often the target
/// tables) far faster than autovacuum notices: a table planned as empty is
/// then scanned whole for every key lookup, and each batch gets slower as it
/// grows. Statistics are refreshed whenever the rows written since the last
/// refresh reach [`Analyze::GROWTH`] times the rows written before it (and at
/// least [`Analyze::FIRST_AFTER`]), so a load of n rows costs O(log n)
/// `ANALYZE`s. Lookups probe one key at a time (see [`PROBE`](crate::conflict::PROBE)), so a plan
/// only needs the right order of magnitude: the statistics may lag until
/// the tables have grown fourfold.
#[derive(Debug, Default)]
pub struct Analyze {
    /// Rows written in committed transactions since the last refresh.
    since: u64,
    /// Rows written in all before the last refresh.
    before: u64,
    /// Target entities written since the last refresh.
    entities: HashSet<usize>,
}

impl Analyze {
    const FIRST_AFTER: u64 = 5_000;
    const GROWTH: u64 = 3;

    fn due(&self) -> bool {
        self.since >= Self::FIRST_AFTER.max(Self::GROWTH * self.before)
    }

    /// A refresh started: the rows written so far are in its statistics.
    fn refreshed(&mut self) {
        self.before += self.since;
        self.since = 0;
    }
}

/// What one writer wrote, for [`Analyze`]: rows of its open target
/// transaction, and of committed ones not yet counted.
#[derive(Debug, Default)]
pub(super) struct Filled {
    pending: u64,
    committed: u64,
    entities: HashSet<usize>,
}

impl Filled {
    /// A statement of the open target transaction wrote `rows` rows of
    /// entity `entity`.
    pub(super) fn written(&mut self, entity: usize, rows: u64) {
        self.pending += rows;
        self.entities.insert(entity);
    }

    /// The open target transaction committed: its rows count.
    pub(super) fn committed(&mut self) {
        self.committed += std::mem::take(&mut self.pending);
    }

    /// The open target transaction rolled back: its rows were not written.
    pub(super) fn rolled_back(&mut self) {
        self.pending = 0;
    }

    /// Hands the committed rows (and the entities written) to the
    /// direction's count.
    fn count_into(&mut self, analyze: &mut Analyze) {
        analyze.since += std::mem::take(&mut self.committed);
        analyze.entities.extend(self.entities.drain());
    }
}

impl Writer {
    /// The `ANALYZE` that refreshes the planner statistics of what the
    /// direction fills, when one is due: this writer's committed rows are
    /// counted into the direction's `analyze` first (see [`Analyze`]); from
    /// then on the rows count towards the next one. The caller runs it on a
    /// connection of its own (it needs no transaction of apply's, and apply
    /// need not wait for it); asked between target transactions. Tables
    /// apply may not analyze (owned by another role) are skipped by the
    /// server with a warning.
    pub fn statistics_due(&mut self, analyze: &mut Analyze) -> Option<String> {
        self.filled.count_into(analyze);
        if !analyze.due() {
            return None;
        }
        let mut tables = vec![
            "syncbridge.id_map".to_owned(),
            "syncbridge.id_derived".to_owned(),
            "syncbridge.row_clock".to_owned(),
            "syncbridge.apply_ledger".to_owned(),
        ];
        let mut entities: Vec<usize> = analyze.entities.drain().collect();
        entities.sort_unstable();
        for index in entities {
            let table = self.mapping.entities()[index].table(self.to);
            tables.push(quote_table(&table.schema, &table.table));
        }
        analyze.refreshed();
        Some(format!("ANALYZE {}", tables.join(", ")))
    }
}

/// Planner statistics refreshed beside the applying connection.
///
/// An `ANALYZE` of the tables apply fills takes a while on a large load;
/// on the applying connection every batch behind it waited. It runs on a
/// connection of its own (opened on first use), one at a time: while one
/// runs, the rows written keep counting and the next starts once it has
/// finished. One still running when the session ends is cancelled with it.
/// A failure costs only stale statistics: logged, and the next one is tried
/// when due.
#[derive(Default)]
pub(crate) struct Statistics {
    /// What the direction's writers wrote since the last refresh.
    analyze: Analyze,
    connection: Option<Arc<Client>>,
    running: Option<tokio::task::JoinHandle<()>>,
}

impl Statistics {
    /// Starts the `ANALYZE` the writer says is due, unless one still runs.
    pub(crate) async fn refresh(&mut self, config: &Config, side: Side, writer: &mut Writer) {
        if self.running.as_ref().is_some_and(|r| !r.is_finished()) {
            return;
        }
        let Some(sql) = writer.statistics_due(&mut self.analyze) else {
            return;
        };
        let client = match &self.connection {
            Some(client) if !client.is_closed() => Arc::clone(client),
            _ => match config.connect(side).await {
                Ok(client) => Arc::clone(self.connection.insert(Arc::new(client))),
                Err(error) => {
                    warn!(database = side.as_str(), error = %error, "could not connect to refresh planner statistics");
                    return;
                }
            },
        };
        self.running = Some(tokio::spawn(async move {
            let started = Instant::now();
            match client.batch_execute(&sql).await {
                Ok(()) => debug!(
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "planner statistics refreshed"
                ),
                Err(error) => warn!(
                    database = side.as_str(),
                    error = %runtime::error_chain(&error),
                    "refreshing planner statistics failed"
                ),
            }
        }));
    }
}

impl Drop for Statistics {
    fn drop(&mut self) {
        if let Some(running) = &self.running {
            running.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statistics_are_refreshed_after_the_first_rows_and_then_each_time_the_tables_grew_fourfold() {
        let mut analyze = Analyze::default();
        let mut refreshed_at = Vec::new();
        let mut written = 0;
        for _ in 0..1_000 {
            // Batches of 500 rows, committed.
            analyze.since += 500;
            written += 500;
            if analyze.due() {
                refreshed_at.push(written);
                analyze.refreshed();
            }
        }
        assert_eq!(refreshed_at, [5_000, 20_000, 80_000, 320_000]);
    }

    #[test]
    fn the_rows_of_both_writers_of_a_direction_count_towards_one_refresh() {
        let mut analyze = Analyze::default();
        let mut writers = [Filled::default(), Filled::default()];
        let mut refreshed_at = Vec::new();
        let mut written = 0;
        for round in 0..400 {
            // Batches of 500 rows, committed by the writers in turn.
            let writer = &mut writers[round % 2];
            writer.pending += 500;
            writer.entities.insert(0);
            writer.committed();
            written += 500;
            writer.count_into(&mut analyze);
            if analyze.due() {
                refreshed_at.push(written);
                analyze.refreshed();
            }
        }
        assert_eq!(refreshed_at, [5_000, 20_000, 80_000]);
    }

    #[test]
    fn rows_of_a_transaction_rolled_back_do_not_count() {
        let mut analyze = Analyze::default();
        let mut writer = Filled::default();
        writer.pending += 6_000;
        writer.rolled_back();
        writer.pending += 100;
        writer.committed();
        writer.count_into(&mut analyze);
        assert!(!analyze.due());
        assert_eq!(analyze.since, 100);
    }
}
