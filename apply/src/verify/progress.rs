//! Where a verification pass stands, per entity and walk, in the platform
//! database's `syncbridge.verify_progress`: a pass interrupted (apply
//! restarted, the one-shot command killed) resumes after the last key each
//! walk stored.

use std::time::Duration;

use tokio_postgres::Client;

use crate::error::{ApplyError, Result};

/// The two walks of a pass, run side by side: the legacy rows (each
/// compared with its counterpart) and the platform keys (each checked for a
/// legacy row).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Walk {
    Legacy,
    Platform,
}

impl Walk {
    /// The prefix of the walk's columns in `verify_progress`.
    fn columns(self) -> &'static str {
        match self {
            Walk::Legacy => "legacy",
            Walk::Platform => "platform",
        }
    }
}

/// Where one walk stands. Only moves forward: keys in key order, then done.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct WalkProgress {
    /// The last key the walk is past.
    pub after_key: Option<String>,
    pub done: bool,
    /// Rows read and rows found different by the pass so far.
    pub rows: i64,
    pub different: i64,
}

impl WalkProgress {
    /// The walk moves on past `key`.
    pub fn passed(&mut self, key: String) {
        self.after_key = Some(key);
    }

    fn started(&self) -> bool {
        self.after_key.is_some() || self.done || self.rows > 0
    }
}

fn failed(what: &'static str) -> impl FnOnce(tokio_postgres::Error) -> ApplyError {
    move |e| ApplyError::postgres("platform", what, e)
}

/// The pass of `entity` in progress (both walks), if one was interrupted.
pub(super) async fn load(
    client: &Client,
    entity: &str,
) -> Result<Option<(WalkProgress, WalkProgress)>> {
    let row = client
        .query_opt(
            "SELECT legacy_after, legacy_done, legacy_rows, legacy_different, \
                    platform_after, platform_done, platform_rows, platform_different \
             FROM syncbridge.verify_progress WHERE entity = $1",
            &[&entity],
        )
        .await
        .map_err(failed("read the verification progress"))?;
    Ok(row
        .map(|row| {
            let walk = |at: usize| WalkProgress {
                after_key: row.get(at),
                done: row.get(at + 1),
                rows: row.get(at + 2),
                different: row.get(at + 3),
            };
            (walk(0), walk(4))
        })
        .filter(|(legacy, platform)| legacy.started() || platform.started()))
}

/// Stores where `walk` of the pass of `entity` stands.
pub(super) async fn save(
    client: &Client,
    entity: &str,
    walk: Walk,
    progress: &WalkProgress,
) -> Result<()> {
    let w = walk.columns();
    client
        .execute(
            &format!(
                "INSERT INTO syncbridge.verify_progress AS p \
                   (entity, {w}_after, {w}_done, {w}_rows, {w}_different) \
                 VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (entity) DO UPDATE SET {w}_after = EXCLUDED.{w}_after, \
                   {w}_done = EXCLUDED.{w}_done, {w}_rows = EXCLUDED.{w}_rows, \
                   {w}_different = EXCLUDED.{w}_different"
            ),
            &[
                &entity,
                &progress.after_key,
                &progress.done,
                &progress.rows,
                &progress.different,
            ],
        )
        .await
        .map_err(failed("store the verification progress"))?;
    Ok(())
}

/// Records a complete pass of `entity` that found `different` rows, and
/// clears the progress for the next one.
pub(super) async fn complete(client: &Client, entity: &str, different: i64) -> Result<()> {
    client
        .execute(
            "INSERT INTO syncbridge.verify_progress AS p (entity, completed_at, last_different) \
             VALUES ($1, now(), $2) \
             ON CONFLICT (entity) DO UPDATE SET \
               legacy_after = NULL, legacy_done = false, legacy_rows = 0, legacy_different = 0, \
               platform_after = NULL, platform_done = false, platform_rows = 0, \
               platform_different = 0, completed_at = now(), \
               last_different = EXCLUDED.last_different",
            &[&entity, &different],
        )
        .await
        .map_err(failed("store the verification progress"))?;
    Ok(())
}

/// What the last complete pass of one entity found, and how long ago.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastPass {
    pub entity: String,
    /// `None` when no pass of the entity ever completed.
    pub age: Option<Duration>,
    pub different: Option<i64>,
    /// A pass was interrupted and resumes where it stopped.
    pub in_progress: bool,
}

/// The last complete pass of every entity verified so far.
pub async fn last_passes(client: &Client) -> Result<Vec<LastPass>> {
    let rows = client
        .query(
            "SELECT entity, extract(epoch FROM now() - completed_at)::float8, last_different, \
                    (legacy_after IS NOT NULL OR legacy_done OR legacy_rows > 0 \
                     OR platform_after IS NOT NULL OR platform_done OR platform_rows > 0) \
             FROM syncbridge.verify_progress ORDER BY entity",
            &[],
        )
        .await
        .map_err(failed("read the verification progress"))?;
    Ok(rows
        .iter()
        .map(|row| LastPass {
            entity: row.get(0),
            age: row
                .get::<_, Option<f64>>(1)
                .map(|s| Duration::from_secs_f64(s.max(0.0))),
            different: row.get(2),
            in_progress: row.get(3),
        })
        .collect())
}
