//! Where a verification pass stands, per entity, in the platform database's
//! `syncbridge.verify_progress`: a pass interrupted (apply restarted, the
//! one-shot command killed) resumes after the last key it stored.

use std::time::Duration;

use tokio_postgres::Client;

use crate::error::{ApplyError, Result};

/// Which table a pass is walking: first the legacy rows (each compared with
/// its counterpart), then the platform keys (each checked for a legacy row).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Walk {
    #[default]
    Legacy,
    Platform,
}

impl Walk {
    fn as_str(self) -> &'static str {
        match self {
            Walk::Legacy => "legacy",
            Walk::Platform => "platform",
        }
    }
}

/// One entity's pass in progress. Only moves forward: keys in key order,
/// then the platform walk after the legacy one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Progress {
    pub walk: Walk,
    /// The last key compared in the current walk.
    pub after_key: Option<String>,
    pub compared: i64,
    pub different: i64,
}

impl Progress {
    /// The walk moves on past `key`.
    pub fn passed(&mut self, key: String) {
        self.after_key = Some(key);
    }

    /// The legacy walk is done: the platform walk starts at its first key.
    pub fn legacy_walk_done(&mut self) {
        if self.walk == Walk::Legacy {
            self.walk = Walk::Platform;
            self.after_key = None;
        }
    }

    fn started(&self) -> bool {
        self.walk != Walk::Legacy || self.after_key.is_some() || self.compared > 0
    }
}

fn failed(what: &'static str) -> impl FnOnce(tokio_postgres::Error) -> ApplyError {
    move |e| ApplyError::postgres("platform", what, e)
}

/// The pass of `entity` in progress, if one was interrupted.
pub(super) async fn load(client: &Client, entity: &str) -> Result<Option<Progress>> {
    let row = client
        .query_opt(
            "SELECT pass, after_key, compared, different FROM syncbridge.verify_progress \
             WHERE entity = $1",
            &[&entity],
        )
        .await
        .map_err(failed("read the verification progress"))?;
    Ok(row
        .map(|row| Progress {
            walk: if row.get::<_, String>(0) == "platform" {
                Walk::Platform
            } else {
                Walk::Legacy
            },
            after_key: row.get(1),
            compared: row.get(2),
            different: row.get(3),
        })
        .filter(Progress::started))
}

/// Stores where the pass of `entity` stands.
pub(super) async fn save(client: &Client, entity: &str, progress: &Progress) -> Result<()> {
    client
        .execute(
            "INSERT INTO syncbridge.verify_progress (entity, pass, after_key, compared, different) \
             VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (entity) DO UPDATE SET pass = EXCLUDED.pass, \
               after_key = EXCLUDED.after_key, compared = EXCLUDED.compared, \
               different = EXCLUDED.different, \
               started_at = CASE WHEN syncbridge.verify_progress.compared = 0 \
                                  AND syncbridge.verify_progress.after_key IS NULL \
                                 THEN now() ELSE syncbridge.verify_progress.started_at END",
            &[
                &entity,
                &progress.walk.as_str(),
                &progress.after_key,
                &progress.compared,
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
            "INSERT INTO syncbridge.verify_progress AS p \
               (entity, pass, after_key, compared, different, completed_at, last_different) \
             VALUES ($1, 'legacy', NULL, 0, 0, now(), $2) \
             ON CONFLICT (entity) DO UPDATE SET pass = 'legacy', after_key = NULL, \
               compared = 0, different = 0, completed_at = now(), \
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
                    (after_key IS NOT NULL OR compared > 0 OR pass <> 'legacy') \
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
