//! Do the two databases correspond? Each entity is walked in key order a
//! chunk at a time: the legacy rows, each mapped to its platform form
//! through the mapping and the id correspondence and compared with its
//! counterpart, then the platform keys, each checked for a legacy
//! counterpart. Memory holds one chunk (and the rows waiting to be read
//! again), whatever the tables' size; nothing is locked.
//!
//! - [`compare`] (tests, `apply check`, `scripts/demo`) reports what differs
//!   at once: for quiet databases.
//! - [`verify`] (`apply verify`, and apply's schedule: [`schedule`]) is for
//!   databases in use. A row that differs is read again once
//!   `verify.settle` has passed: reported when it still differs with both
//!   sides unchanged, looked at again when either side changed meanwhile
//!   (a change in flight). It pauses after each chunk, stores its progress
//!   after each chunk in the platform database (an interrupted pass resumes
//!   there) and exports metrics.
//!
//! Reports name keys, never values.

mod progress;
mod read;
mod rows;
pub mod schedule;

use std::fmt;
use std::time::{Duration, Instant};

use tokio_postgres::Client;
use tracing::{debug, info};

use crate::checkpoint;
use crate::config::{Config, VerifyConfig};
use crate::error::Result;
use crate::mapping::{Entity, Mapping, Side};
use progress::Progress;
pub use progress::{last_passes, LastPass, Walk};
use rows::{Comparer, Mismatch};

/// Rows waiting to be read again, at most; more are read again at once.
const MOST_WAITING: usize = 10_000;
/// Times a row that keeps changing is read again before it is counted as
/// changing (not verified by this pass) instead.
const MOST_READS_AGAIN: u8 = 3;

/// Compares the two databases under the mapping (`apply check`).
pub async fn check(config: &Config) -> Result<Report> {
    let mapping = Mapping::load_dir(&config.apply.mapping_dir)?;
    let [legacy, platform] = connect(config).await?;
    compare(&mapping, &legacy, &platform).await
}

/// Compares the two databases under `mapping`, reporting every difference
/// at once (for databases nobody is writing).
pub async fn compare(mapping: &Mapping, legacy: &Client, platform: &Client) -> Result<Report> {
    let options = VerifyConfig {
        settle: Duration::ZERO,
        pause: Duration::ZERO,
        max_listed: usize::MAX,
        ..VerifyConfig::default()
    };
    let mut report = Report::default();
    for entity in mapping.entities() {
        let walk = EntityWalk::new(entity, legacy, platform, &options, None).await?;
        report.entities.push(walk.run(Progress::default()).await?);
    }
    Ok(report)
}

/// One verification pass over every entity (`apply verify`): rows in
/// flight are read again before they are reported, progress is stored
/// after each chunk, and an interrupted pass resumes unless `restart`.
pub async fn verify(config: &Config, mapping: &Mapping, restart: bool) -> Result<Report> {
    let [legacy, platform] = connect(config).await?;
    let mut report = Report::default();
    for entity in mapping.entities() {
        let start = if restart {
            Progress::default()
        } else {
            progress::load(&platform, entity.name())
                .await?
                .unwrap_or_default()
        };
        let walk =
            EntityWalk::new(entity, &legacy, &platform, &config.verify, Some(&platform)).await?;
        let found = walk.run(start).await?;
        metrics::gauge!(
            crate::metrics::VERIFY_ROWS_DIFFERENT,
            runtime::telemetry::metrics::label::ENTITY => entity.name().to_owned()
        )
        .set(found.different_rows() as f64);
        info!(
            entity = entity.name(),
            legacy_rows = found.legacy_rows,
            platform_rows = found.platform_rows,
            different = found.different_rows(),
            settled = found.settled,
            changing = found.changing,
            "verification pass complete"
        );
        report.entities.push(found);
    }
    Ok(report)
}

async fn connect(config: &Config) -> Result<[Client; 2]> {
    let legacy = config.connect(Side::Legacy).await?;
    checkpoint::install(&legacy, Side::Legacy.as_str()).await?;
    let platform = config.connect(Side::Platform).await?;
    checkpoint::install(&platform, Side::Platform.as_str()).await?;
    Ok([legacy, platform])
}

/// A legacy row that differed, waiting to be read again.
struct Waiting {
    mismatch: Mismatch,
    reads: u8,
}

/// One entity's pass.
struct EntityWalk<'a> {
    comparer: Comparer<'a>,
    options: &'a VerifyConfig,
    /// Where progress is stored (the platform database), when it is.
    store: Option<&'a Client>,
    report: EntityReport,
    progress: Progress,
    waiting_rows: Vec<Waiting>,
    waiting_keys: Vec<(String, u8)>,
    waiting_since: Option<Instant>,
}

impl<'a> EntityWalk<'a> {
    async fn new(
        entity: &'a Entity,
        legacy: &'a Client,
        platform: &'a Client,
        options: &'a VerifyConfig,
        store: Option<&'a Client>,
    ) -> Result<EntityWalk<'a>> {
        Ok(EntityWalk {
            comparer: Comparer::new(entity, legacy, platform).await?,
            options,
            store,
            report: EntityReport {
                entity: entity.name().to_owned(),
                ..EntityReport::default()
            },
            progress: Progress::default(),
            waiting_rows: Vec::new(),
            waiting_keys: Vec::new(),
            waiting_since: None,
        })
    }

    fn entity(&self) -> &str {
        self.comparer.entity.name()
    }

    async fn run(mut self, start: Progress) -> Result<EntityReport> {
        self.report.resumed_after = start.after_key.clone().map(|key| (start.walk, key));
        self.progress = start;
        let chunk = self.options.chunk_rows.max(1);
        if self.progress.walk == Walk::Legacy {
            loop {
                let rows = self
                    .comparer
                    .legacy_table
                    .rows_after(
                        self.comparer.legacy,
                        self.progress.after_key.as_deref(),
                        chunk,
                    )
                    .await?;
                let Some(last) = rows.last().map(|r| r.key.clone()) else {
                    break;
                };
                self.counted(rows.len(), Side::Legacy);
                let found = self.comparer.legacy_rows(&rows).await?;
                self.waiting_rows.extend(
                    found
                        .into_iter()
                        .map(|mismatch| Waiting { mismatch, reads: 0 }),
                );
                self.progress.passed(last);
                self.chunk_done().await?;
            }
            self.read_waiting_again().await?;
            self.progress.legacy_walk_done();
            self.store_progress().await?;
        }
        loop {
            let keys = self
                .comparer
                .platform_table
                .keys_after(
                    self.comparer.platform,
                    self.progress.after_key.as_deref(),
                    chunk,
                )
                .await?;
            let Some(last) = keys.last().cloned() else {
                break;
            };
            self.counted(keys.len(), Side::Platform);
            let missing = self.comparer.platform_keys_without_legacy(&keys).await?;
            self.waiting_keys
                .extend(missing.into_iter().map(|key| (key, 0)));
            self.progress.passed(last);
            self.chunk_done().await?;
        }
        self.read_waiting_again().await?;
        if let Some(store) = self.store {
            progress::complete(store, self.entity(), self.progress.different).await?;
        }
        Ok(self.report)
    }

    fn counted(&mut self, rows: usize, side: Side) {
        match side {
            Side::Legacy => self.report.legacy_rows += rows,
            Side::Platform => self.report.platform_rows += rows,
        }
        self.progress.compared += rows as i64;
        if self.store.is_some() {
            metrics::counter!(
                crate::metrics::VERIFY_ROWS_COMPARED,
                runtime::telemetry::metrics::label::ENTITY => self.entity().to_owned()
            )
            .increment(rows as u64);
        }
    }

    /// After each chunk: rows that differed are read again once they have
    /// waited `settle`; progress is stored when nothing waits (a resumed
    /// pass must not skip a row that was waiting); then the pause.
    async fn chunk_done(&mut self) -> Result<()> {
        if self.waiting_since.is_none()
            && (!self.waiting_rows.is_empty() || !self.waiting_keys.is_empty())
        {
            self.waiting_since = Some(Instant::now());
        }
        let full = self.waiting_rows.len() + self.waiting_keys.len() >= MOST_WAITING;
        let due = self
            .waiting_since
            .is_some_and(|since| since.elapsed() >= self.options.settle);
        if full || due {
            self.read_waiting_again().await?;
        }
        if self.waiting_rows.is_empty() && self.waiting_keys.is_empty() {
            self.store_progress().await?;
        }
        if !self.options.pause.is_zero() {
            tokio::time::sleep(self.options.pause).await;
        }
        Ok(())
    }

    async fn store_progress(&self) -> Result<()> {
        match self.store {
            Some(store) => progress::save(store, self.entity(), &self.progress).await,
            None => Ok(()),
        }
    }

    /// Reads the waiting rows again, each once it has waited `settle`: what
    /// still differs, unchanged on both sides, is reported; what changed
    /// meanwhile waits again.
    async fn read_waiting_again(&mut self) -> Result<()> {
        while !self.waiting_rows.is_empty() || !self.waiting_keys.is_empty() {
            if let Some(since) = self.waiting_since {
                let left = self.options.settle.saturating_sub(since.elapsed());
                if !left.is_zero() {
                    tokio::time::sleep(left).await;
                }
            }
            self.waiting_since = Some(Instant::now());
            self.settle_rows().await?;
            self.settle_keys().await?;
        }
        self.waiting_since = None;
        Ok(())
    }

    async fn settle_rows(&mut self) -> Result<()> {
        let waiting = std::mem::take(&mut self.waiting_rows);
        if waiting.is_empty() {
            return Ok(());
        }
        if self.options.settle.is_zero() {
            for w in waiting {
                self.report_mismatch(w.mismatch);
            }
            return Ok(());
        }
        let keys: Vec<String> = waiting
            .iter()
            .map(|w| w.mismatch.legacy_key.clone())
            .collect();
        let rows = self
            .comparer
            .legacy_table
            .rows_with_keys(self.comparer.legacy, &keys)
            .await?;
        let mut again: std::collections::HashMap<String, Mismatch> = self
            .comparer
            .legacy_rows(&rows)
            .await?
            .into_iter()
            .map(|m| (m.legacy_key.clone(), m))
            .collect();
        for w in waiting {
            let Some(now) = again.remove(&w.mismatch.legacy_key) else {
                // Corresponds now, or the legacy row is gone (a delete in
                // flight: a platform row left behind shows in the platform
                // walk).
                self.report.settled += 1;
                continue;
            };
            if now.seen == w.mismatch.seen {
                self.report_mismatch(now);
            } else if w.reads + 1 >= MOST_READS_AGAIN {
                // Written faster than it crosses: in flight at every read.
                self.report.changing += 1;
            } else {
                self.waiting_rows.push(Waiting {
                    mismatch: now,
                    reads: w.reads + 1,
                });
            }
        }
        Ok(())
    }

    async fn settle_keys(&mut self) -> Result<()> {
        let waiting = std::mem::take(&mut self.waiting_keys);
        if waiting.is_empty() {
            return Ok(());
        }
        if self.options.settle.is_zero() {
            for (key, _) in waiting {
                self.report_missing_on_legacy(key);
            }
            return Ok(());
        }
        let keys: Vec<String> = waiting.iter().map(|(k, _)| k.clone()).collect();
        let present = self
            .comparer
            .platform_table
            .existing_keys(self.comparer.platform, &keys)
            .await?;
        let still: std::collections::HashSet<String> = self
            .comparer
            .platform_keys_without_legacy(&present)
            .await?
            .into_iter()
            .collect();
        for (key, _) in waiting {
            if still.contains(&key) {
                self.report_missing_on_legacy(key);
            } else {
                self.report.settled += 1;
            }
        }
        Ok(())
    }

    fn report_mismatch(&mut self, mismatch: Mismatch) {
        self.progress.different += 1;
        let listed = self.report.listed() < self.options.max_listed;
        debug!(entity = self.entity(), legacy_key = %mismatch.legacy_key, "rows differ");
        if !listed {
            self.report.unlisted += 1;
        } else if mismatch.platform_key.is_none() {
            self.report.missing_on_platform.push(mismatch.legacy_key);
        } else {
            for column in mismatch.columns {
                self.report
                    .different
                    .push((mismatch.legacy_key.clone(), column));
            }
        }
    }

    fn report_missing_on_legacy(&mut self, key: String) {
        self.progress.different += 1;
        if self.report.listed() < self.options.max_listed {
            self.report.missing_on_legacy.push(key);
        } else {
            self.report.unlisted += 1;
        }
    }
}

/// Differences found for one entity.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct EntityReport {
    pub entity: String,
    /// Rows read on each side (by this run, when it resumed a pass).
    pub legacy_rows: usize,
    pub platform_rows: usize,
    /// Legacy rows without a platform counterpart (legacy keys).
    pub missing_on_platform: Vec<String>,
    /// Platform rows without a legacy counterpart (platform keys).
    pub missing_on_legacy: Vec<String>,
    /// Rows whose columns differ: (legacy key, platform column).
    pub different: Vec<(String, String)>,
    /// Rows found different beyond the `max_listed` listed.
    pub unlisted: usize,
    /// Rows that differed when first read and corresponded when read again.
    pub settled: usize,
    /// Rows that differed and changed again every time they were read
    /// again: in flight at every read, so not verified by this pass.
    pub changing: usize,
    /// The walk and key a resumed pass started after.
    pub resumed_after: Option<(Walk, String)>,
}

impl EntityReport {
    pub fn corresponds(&self) -> bool {
        self.missing_on_platform.is_empty()
            && self.missing_on_legacy.is_empty()
            && self.different.is_empty()
            && self.unlisted == 0
    }

    /// Rows listed as different or missing.
    fn listed(&self) -> usize {
        let mut keys: Vec<&String> = self.different.iter().map(|(k, _)| k).collect();
        keys.dedup();
        self.missing_on_platform.len() + self.missing_on_legacy.len() + keys.len()
    }

    /// Rows found different or missing, listed or not.
    pub fn different_rows(&self) -> usize {
        self.listed() + self.unlisted
    }

    fn to_json(&self) -> serde_json::Value {
        let mut different: Vec<serde_json::Value> = Vec::new();
        let mut last: Option<&str> = None;
        for (key, column) in &self.different {
            if last == Some(key.as_str()) {
                if let Some(columns) = different
                    .last_mut()
                    .and_then(|d| d.get_mut("columns"))
                    .and_then(|c| c.as_array_mut())
                {
                    columns.push(column.as_str().into());
                }
            } else {
                different.push(serde_json::json!({ "legacy_key": key, "columns": [column] }));
            }
            last = Some(key);
        }
        serde_json::json!({
            "entity": self.entity,
            "corresponds": self.corresponds(),
            "legacy_rows": self.legacy_rows,
            "platform_rows": self.platform_rows,
            "missing_on_platform": self.missing_on_platform,
            "missing_on_legacy": self.missing_on_legacy,
            "different": different,
            "unlisted": self.unlisted,
            "settled": self.settled,
            "changing": self.changing,
            "resumed_after": self.resumed_after.as_ref().map(|(walk, key)| serde_json::json!({
                "walk": match walk { Walk::Legacy => "legacy", Walk::Platform => "platform" },
                "key": key,
            })),
        })
    }
}

/// The whole comparison.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    pub entities: Vec<EntityReport>,
}

impl Report {
    pub fn corresponds(&self) -> bool {
        self.entities.iter().all(EntityReport::corresponds)
    }

    /// The report as one JSON document (keys, never values).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "corresponds": self.corresponds(),
            "entities": self.entities.iter().map(EntityReport::to_json).collect::<Vec<_>>(),
        })
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for e in &self.entities {
            write!(
                f,
                "{:<12} legacy {:>6} platform {:>6}",
                e.entity, e.legacy_rows, e.platform_rows
            )?;
            if e.corresponds() {
                writeln!(f, "  in step")?;
            } else {
                writeln!(
                    f,
                    "  missing on platform {}, missing on legacy {}, different {}{}",
                    e.missing_on_platform.len(),
                    e.missing_on_legacy.len(),
                    e.different.len(),
                    if e.unlisted > 0 {
                        format!(", {} more not listed", e.unlisted)
                    } else {
                        String::new()
                    }
                )?;
                for key in e.missing_on_platform.iter().take(5) {
                    writeln!(f, "    legacy {key} has no platform row")?;
                }
                for key in e.missing_on_legacy.iter().take(5) {
                    writeln!(f, "    platform {key} has no legacy row")?;
                }
                for (key, column) in e.different.iter().take(5) {
                    writeln!(f, "    legacy {key}: {column} differs")?;
                }
            }
        }
        Ok(())
    }
}
