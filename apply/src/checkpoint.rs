//! Apply's bookkeeping in each target database, and its position.
//!
//! Everything apply needs to remember lives in the schema `syncbridge` of the
//! database it writes, and is written in the same transaction as the rows:
//!
//! - `apply_position`: per source, the Kafka offset and commit LSN of the last
//!   source transaction applied. A restart resumes right after it, so a crash
//!   at any point neither loses nor repeats a change.
//! - `id_derived` and `id_map`: the id correspondence (legacy bigint <->
//!   platform uuid) of the rows this database received: legacy rows with
//!   their derived platform ids, and every other pair (see
//!   [`crate::writer::pairing`]). The view `id_pairs` shows both.
//! - `apply_ledger`: one entry per source transaction apply wrote here,
//!   keyed by the xid its rows carry as `xmin` (`written_xmin`: apply writes
//!   each source transaction inside a savepoint, so that is the
//!   subtransaction's id, which only this record knows), with the source it
//!   came from (`origin`), that source transaction's id (`source_xid`) and
//!   the WAL position after its last write (`written_lsn`). A row whose
//!   `xmin` is in the ledger is a version apply wrote: capture's polling
//!   fallback, which sees no logical-message marker, flags such rows as
//!   apply's echo. One entry per transaction, not per row. Pruned with the
//!   tombstones' retention.
//! - `row_clock` ([`pg::clock`]): each row's clock, which orders its
//!   versions alike in both databases; apply records the clock of every row
//!   it writes, and a `deleted` entry is a tombstone that keeps an older
//!   change from bringing a row back.
//! - `delete_outbox`: deletes applied here that must be re-asserted on the
//!   side they came from (see `Writer::reassert_deletes`), with their time
//!   and clock, recorded with the delete and worked off after the commit.
//! - `verify_progress` (used in the platform database): per entity, where
//!   the running verification pass stands and what the last complete one
//!   found (see [`crate::verify`]).

use schemas::event::CaptureMode;
use tokio_postgres::Client;

use crate::config::Config;
use crate::error::{ApplyError, Result};
use crate::mapping::{Mapping, Side};

/// The bookkeeping schema and tables, created if missing (run after `BEGIN`
/// and the install lock, before the row clock's and `COMMIT`). A column added since a table
/// was first created is added only when it is missing: `ALTER TABLE` takes
/// the table's exclusive lock even when there is nothing to add, and would
/// wait at every start behind anyone reading the table (a monitor polling
/// `apply_position` in a long statement).
const TABLES: &str = "DO $$ BEGIN
               IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = 'syncbridge') THEN
                 CREATE SCHEMA syncbridge;
               END IF;
             END $$;
             CREATE TABLE IF NOT EXISTS syncbridge.apply_position (
               source          text PRIMARY KEY,
               topic           text NOT NULL,
               kafka_partition integer NOT NULL,
               kafka_offset    bigint NOT NULL,
               commit_lsn      bigint NOT NULL,
               applied_at      timestamptz NOT NULL DEFAULT now()
             );
             DO $add$ BEGIN
               IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute
                              WHERE attrelid = 'syncbridge.apply_position'::regclass
                                AND attname = 'commit_time_micros' AND NOT attisdropped) THEN
                 ALTER TABLE syncbridge.apply_position
                   ADD COLUMN commit_time_micros bigint NOT NULL DEFAULT 0;
               END IF;
             END $add$;
             CREATE TABLE IF NOT EXISTS syncbridge.id_map (
               entity      text NOT NULL,
               legacy_id   bigint NOT NULL,
               platform_id uuid NOT NULL,
               created_at  timestamptz NOT NULL DEFAULT now(),
               PRIMARY KEY (entity, legacy_id),
               UNIQUE (entity, platform_id)
             );
             CREATE TABLE IF NOT EXISTS syncbridge.id_derived (
               entity      text NOT NULL,
               legacy_id   bigint NOT NULL,
               platform_id uuid NOT NULL,
               PRIMARY KEY (entity, legacy_id)
             );
             CREATE OR REPLACE VIEW syncbridge.id_pairs AS
               SELECT entity, legacy_id, platform_id FROM syncbridge.id_map
               UNION ALL
               SELECT entity, legacy_id, platform_id FROM syncbridge.id_derived;
             CREATE TABLE IF NOT EXISTS syncbridge.apply_ledger (
               written_xmin text PRIMARY KEY,
               origin       text NOT NULL,
               source_xid   text,
               written_lsn  pg_lsn NOT NULL,
               written_at   timestamptz NOT NULL DEFAULT now()
             );
             CREATE INDEX IF NOT EXISTS apply_ledger_source_xid
               ON syncbridge.apply_ledger (source_xid);
             CREATE TABLE IF NOT EXISTS syncbridge.apply_lease (
               id         int PRIMARY KEY CHECK (id = 1),
               generation bigint NOT NULL
             );
             DO $do$ BEGIN
               IF to_regprocedure('syncbridge.hold_lease(bigint)') IS NULL THEN
                 CREATE FUNCTION syncbridge.hold_lease(held bigint) RETURNS void
                 LANGUAGE plpgsql AS $fn$
                 BEGIN
                   PERFORM 1 FROM syncbridge.apply_lease WHERE id = 1 AND generation = held FOR SHARE;
                   IF NOT FOUND THEN
                     RAISE EXCEPTION 'apply lease generation % is no longer current: another apply instance took over', held
                       USING ERRCODE = 'SBF01';
                   END IF;
                 END $fn$;
               END IF;
             END $do$;
             CREATE TABLE IF NOT EXISTS syncbridge.delete_outbox (
               entity     text NOT NULL,
               source_key text NOT NULL,
               key_type   text NOT NULL,
               deleted_at timestamptz NOT NULL,
               PRIMARY KEY (entity, source_key)
             );
             ALTER TABLE syncbridge.delete_outbox
               ADD COLUMN IF NOT EXISTS seconds bigint,
               ADD COLUMN IF NOT EXISTS tick bigint;
             CREATE TABLE IF NOT EXISTS syncbridge.waiting_rows (
               entity     text NOT NULL,
               source_key text NOT NULL,
               key_type   text NOT NULL,
               since      timestamptz NOT NULL DEFAULT now(),
               seen       timestamptz NOT NULL DEFAULT now(),
               PRIMARY KEY (entity, source_key)
             );
             CREATE TABLE IF NOT EXISTS syncbridge.verify_progress (
               entity             text PRIMARY KEY,
               legacy_after       text,
               legacy_done        boolean NOT NULL DEFAULT false,
               legacy_rows        bigint NOT NULL DEFAULT 0,
               legacy_different   bigint NOT NULL DEFAULT 0,
               platform_after     text,
               platform_done      boolean NOT NULL DEFAULT false,
               platform_rows      bigint NOT NULL DEFAULT 0,
               platform_different bigint NOT NULL DEFAULT 0,
               completed_at       timestamptz,
               last_different     bigint
             );";

/// Creates the bookkeeping schema if it is missing (idempotent). Both
/// directions install on both databases at start; an advisory lock makes
/// them take turns (`CREATE ... IF NOT EXISTS` alone races). A schema an
/// administrator created for the apply role beforehand (`deploy/sql/`) is
/// used as it is, so the role needs no `CREATE` on the database.
pub async fn install(client: &Client, side: &'static str) -> Result<()> {
    client
        .batch_execute(
            &format!(
                "BEGIN;
             SET LOCAL client_min_messages = warning;
             SELECT pg_advisory_xact_lock({});
             {TABLES}
             {}
             COMMIT;",
                pg::bookkeeping::INSTALL_LOCK,
                pg::clock::INSTALL,
            ),
        )
        .await
        .map_err(|e| match e.code().map(|c| c.code()) {
            Some("42501") => ApplyError::Config(format!(
                "the apply role may not create the bookkeeping schema syncbridge in the {side} database: GRANT CREATE ON DATABASE to it, or create the schema for it"
            )),
            _ => ApplyError::postgres(side, "install the bookkeeping schema", e),
        })
}

/// Where apply stands in one source's topic. Only moves forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Position {
    /// The offset of the last message applied, if any.
    pub offset: Option<i64>,
    /// The commit LSN of the last source transaction applied.
    pub commit_lsn: u64,
    /// The latest commit time (Unix micros) of the streamed transactions
    /// applied; 0 when unknown (a position stored before it was kept).
    pub commit_time_micros: i64,
}

/// What a streamed transaction whose commit LSN the position covers is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Covered {
    /// Not covered: a transaction to apply.
    No,
    /// A transaction applied before, sent again (capture resumed from its
    /// slot after a restart): skipped.
    Repeat,
    /// Covered by LSN, but committed after every transaction applied: the
    /// source's LSNs started over below the position (a failover to a
    /// standby that was behind, a restore). Skipping it would lose it.
    LsnsStartedOver,
}

impl Position {
    /// The offset to resume reading from.
    pub fn next_offset(&self) -> Option<i64> {
        self.offset.map(|o| o + 1)
    }

    /// Moves past `offset`; never backwards.
    pub fn consumed(&mut self, offset: i64) {
        if self.offset.is_none_or(|current| offset > current) {
            self.offset = Some(offset);
        }
    }

    /// Records that the source transaction `commit_lsn`, committed at
    /// `commit_time_micros`, is applied.
    pub fn applied(&mut self, commit_lsn: u64, commit_time_micros: i64) {
        debug_assert!(
            commit_lsn >= self.commit_lsn,
            "commit LSNs only move forward"
        );
        self.commit_lsn = self.commit_lsn.max(commit_lsn);
        self.commit_time_micros = self.commit_time_micros.max(commit_time_micros);
    }

    /// Whether a streamed transaction at `commit_lsn`, committed at
    /// `commit_time_micros`, was applied already (see [`Covered`]).
    ///
    /// A repeat is a transaction applied before, so its commit time is at
    /// most the latest one applied, exactly: the comparison needs no
    /// tolerance, and a new primary's first transaction is told apart
    /// however soon after the last applied one it commits.
    pub fn covered(&self, commit_lsn: u64, commit_time_micros: i64) -> Covered {
        if !self.covers(commit_lsn) {
            Covered::No
        } else if self.commit_time_micros > 0 && commit_time_micros > self.commit_time_micros {
            Covered::LsnsStartedOver
        } else {
            Covered::Repeat
        }
    }

    /// Whether a source transaction was applied already (a replay).
    pub fn covers(&self, commit_lsn: u64) -> bool {
        commit_lsn <= self.commit_lsn && self.offset.is_some()
    }

    /// Whether events captured in `mode` are deduplicated by commit LSN and
    /// move the stored commit LSN. Only streamed transactions are: a polled
    /// page or a snapshot read carries the LSN current when it was read,
    /// which says nothing about which commits it contains, so such events
    /// are always applied (last-writer-wins by `updated_at` makes that
    /// idempotent) and never move the position's commit LSN.
    pub fn tracks(mode: CaptureMode) -> bool {
        mode == CaptureMode::Streaming
    }
}

/// Reads the stored position of `source`.
pub async fn read(client: &Client, side: &'static str, source: &str) -> Result<Position> {
    let row = client
        .query_opt(
            "SELECT kafka_offset, commit_lsn, commit_time_micros FROM syncbridge.apply_position WHERE source = $1",
            &[&source],
        )
        .await
        .map_err(|e| ApplyError::postgres(side, "read the apply position", e))?;
    Ok(match row {
        Some(row) => Position {
            offset: Some(row.get(0)),
            commit_lsn: row.get::<_, i64>(1) as u64,
            commit_time_micros: row.get(2),
        },
        None => Position::default(),
    })
}

/// `apply reset-position --from SIDE [--keep-offset]`: forgets where apply
/// stands in `from`'s topic, so that the next start reads that topic from
/// its beginning; for a topic deleted and created again (or truncated),
/// whose offsets started over (apply refuses to skip its events until
/// then). With `keep_offset`, forgets only the commit LSN and time the
/// position deduplicates by: for a source whose LSNs started over below the
/// position (a failover to a standby that was behind), whose new
/// transactions apply refuses to skip until then. Refused while another
/// apply instance runs (it holds the single-writer lock).
pub async fn reset(
    config: &Config,
    mapping: &Mapping,
    from: Side,
    keep_offset: bool,
) -> Result<Position> {
    let Some(_lease) = crate::lease::try_take(config).await? else {
        return Err(ApplyError::Config(
            "an apply instance is running (it holds the single-writer lock): stop it before resetting a position".to_owned(),
        ));
    };
    let to = from.other();
    let client = config.connect(to).await?;
    install(&client, to.as_str()).await?;
    let source = &mapping.side(from).source;
    let forgotten = read(&client, to.as_str(), source).await?;
    // Keeping the offset forgets only the commit LSN and time: the next
    // start goes on after the offset and applies whatever LSN comes.
    let sql = if keep_offset {
        "UPDATE syncbridge.apply_position SET commit_lsn = 0, commit_time_micros = 0 WHERE source = $1"
    } else {
        "DELETE FROM syncbridge.apply_position WHERE source = $1"
    };
    client
        .execute(sql, &[source])
        .await
        .map_err(|e| ApplyError::postgres(to.as_str(), "reset the apply position", e))?;
    tracing::warn!(
        from = from.as_str(),
        forgotten_offset = ?forgotten.offset,
        keep_offset,
        "apply position reset"
    );
    Ok(forgotten)
}

/// The statement that stores a position; run inside the applying
/// transaction. `$6` is the lease generation this instance took (see
/// [`crate::lease`]): `syncbridge.hold_lease` fails the statement, and so
/// the transaction, when another instance has taken the lease since, and
/// holds the generation row (`FOR SHARE`) until the commit, so a newer
/// instance's take-over waits for it: what a deposed instance had open never
/// commits beside the new one's writes.
pub const STORE: &str = "INSERT INTO syncbridge.apply_position (source, topic, kafka_partition, kafka_offset, commit_lsn, commit_time_micros, applied_at)
     SELECT $1::text, $2::text, $3::int4, $4::int8, $5::int8, $7::int8, now() FROM syncbridge.hold_lease($6::int8)
     ON CONFLICT (source) DO UPDATE SET topic = EXCLUDED.topic, kafka_partition = EXCLUDED.kafka_partition,
       kafka_offset = EXCLUDED.kafka_offset, commit_lsn = EXCLUDED.commit_lsn,
       commit_time_micros = EXCLUDED.commit_time_micros, applied_at = now()";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_position_moves_only_forward_and_covers_applied_transactions() {
        let mut position = Position::default();
        assert_eq!(position.next_offset(), None);
        assert!(!position.covers(0));
        position.consumed(10);
        position.consumed(7);
        position.applied(500, 1_000_000_000);
        assert_eq!(position.next_offset(), Some(11));
        assert!(position.covers(500));
        assert!(position.covers(499));
        assert!(!position.covers(501));
    }

    #[test]
    fn a_covered_transaction_committed_after_everything_applied_means_the_lsns_started_over() {
        let mut position = Position::default();
        position.consumed(10);
        position.applied(500, 1_000_000_000);
        assert_eq!(position.covered(501, 2_000_000_000), Covered::No);
        // Sent again after capture's restart: committed no later.
        assert_eq!(position.covered(400, 999_000_000), Covered::Repeat);
        assert_eq!(position.covered(500, 1_000_000_000), Covered::Repeat);
        // A new transaction of a source whose LSNs went back, however soon
        // after the last one applied.
        assert_eq!(
            position.covered(400, 1_000_000_001),
            Covered::LsnsStartedOver
        );
        // A position stored before commit times were kept cannot tell.
        let old = Position {
            offset: Some(10),
            commit_lsn: 500,
            commit_time_micros: 0,
        };
        assert_eq!(old.covered(400, i64::MAX), Covered::Repeat);
    }

    #[test]
    fn only_streamed_events_are_deduplicated_by_commit_lsn() {
        assert!(Position::tracks(CaptureMode::Streaming));
        assert!(!Position::tracks(CaptureMode::Polling));
        assert!(!Position::tracks(CaptureMode::Snapshot));
    }
}
