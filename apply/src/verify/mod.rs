//! Do the two databases correspond? Each entity is walked twice at once, in
//! key order, a chunk at a time: the legacy rows, each mapped to its
//! platform form through the mapping and the id correspondence and compared
//! with its counterpart, and the platform keys, each checked for a legacy
//! counterpart ([`walk`]). Memory holds a chunk per walk (and the rows
//! waiting to be read again), whatever the tables' size; nothing is locked.
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
//! - [`repair::repair`] (`apply repair`) re-asserts what a pass finds from
//!   the side whose version wins.
//!
//! Reports name keys, never values.

mod progress;
mod read;
pub mod repair;
mod rows;
pub mod schedule;
mod walk;

use std::fmt;
use std::time::{Duration, Instant};

use tokio_postgres::Client;
use tracing::{debug, info};

use crate::checkpoint;
use crate::config::{Config, VerifyConfig};
use crate::error::Result;
use crate::mapping::{Entity, Mapping, Side};
use progress::WalkProgress;
pub use progress::{last_passes, LastPass};
use rows::Comparer;
use walk::Pace;

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
        let start = (WalkProgress::default(), WalkProgress::default());
        report
            .entities
            .push(entity_pass(entity, legacy, platform, &options, None, start).await?);
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
            None
        } else {
            progress::load(&platform, entity.name()).await?
        };
        let found = entity_pass(
            entity,
            &legacy,
            &platform,
            &config.verify,
            Some(&platform),
            start.unwrap_or_default(),
        )
        .await?;
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

/// One entity's pass: both walks at once, then the pass recorded when
/// `store` is given.
async fn entity_pass(
    entity: &Entity,
    legacy: &Client,
    platform: &Client,
    options: &VerifyConfig,
    store: Option<&Client>,
    (legacy_start, platform_start): (WalkProgress, WalkProgress),
) -> Result<EntityReport> {
    let comparer = Comparer::new(entity, legacy, platform).await?;
    let pace = Pace {
        options,
        store,
        entity: entity.name(),
    };
    let mut report = EntityReport {
        entity: entity.name().to_owned(),
        legacy_resumed_after: legacy_start.after_key.clone(),
        platform_resumed_after: platform_start.after_key.clone(),
        ..EntityReport::default()
    };
    let started = Instant::now();
    let (legacy_walk, platform_walk) = tokio::join!(
        async {
            let outcome = walk::legacy(&comparer, &pace, legacy_start).await;
            (outcome, started.elapsed())
        },
        async {
            let outcome = walk::platform(&comparer, &pace, platform_start).await;
            (outcome, started.elapsed())
        }
    );
    let ((legacy_found, legacy_progress), legacy_took) = (legacy_walk.0?, legacy_walk.1);
    let ((platform_found, platform_progress), platform_took) = (platform_walk.0?, platform_walk.1);
    debug!(
        entity = entity.name(),
        legacy_walk_ms = legacy_took.as_millis() as u64,
        platform_walk_ms = platform_took.as_millis() as u64,
        "verification walks done"
    );
    report.legacy_rows = legacy_found.rows;
    report.platform_rows = platform_found.rows;
    report.missing_on_platform = legacy_found.missing;
    report.different = legacy_found.different;
    report.missing_on_legacy = platform_found.missing;
    report.unlisted = legacy_found.unlisted + platform_found.unlisted;
    report.settled = legacy_found.settled + platform_found.settled;
    report.changing = legacy_found.changing;
    if let Some(store) = store {
        let different = legacy_progress.different + platform_progress.different;
        progress::complete(store, entity.name(), different).await?;
    }
    Ok(report)
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
    /// The keys a resumed pass's walks started after.
    pub legacy_resumed_after: Option<String>,
    pub platform_resumed_after: Option<String>,
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
            "legacy_resumed_after": self.legacy_resumed_after,
            "platform_resumed_after": self.platform_resumed_after,
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
