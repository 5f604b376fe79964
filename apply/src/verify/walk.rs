//! The two walks of one entity's pass, run side by side: while one waits
//! for a database, the other compares. Each reads its next chunk while it
//! checks the current one, holds back the rows that differ until they have
//! waited `verify.settle`, and stores its progress after each chunk with
//! nothing held back (a resumed pass must not skip a row that was waiting).

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use tokio_postgres::Client;
use tracing::debug;

use super::progress::{self, Walk, WalkProgress};
use super::rows::{Comparer, Mismatch};
use crate::config::VerifyConfig;
use crate::error::Result;

/// Rows waiting to be read again, at most; more are read again at once.
const MOST_WAITING: usize = 10_000;
/// Times a row that keeps changing is read again before it is counted as
/// changing (not verified by this pass) instead.
const MOST_READS_AGAIN: u8 = 3;

/// What one walk found.
#[derive(Debug, Default)]
pub(super) struct Found {
    /// Legacy walk: legacy rows without a counterpart; platform walk:
    /// platform rows without one.
    pub missing: Vec<String>,
    /// Legacy walk only: (legacy key, platform column) of rows that differ.
    pub different: Vec<(String, String)>,
    pub unlisted: usize,
    pub settled: usize,
    pub changing: usize,
    /// Rows read by this run.
    pub rows: usize,
}

impl Found {
    fn listed(&self) -> usize {
        let mut keys: Vec<&String> = self.different.iter().map(|(k, _)| k).collect();
        keys.dedup();
        self.missing.len() + keys.len()
    }
}

/// What both walks share: the options, where progress goes, the pause.
pub(super) struct Pace<'a> {
    pub options: &'a VerifyConfig,
    pub store: Option<&'a Client>,
    pub entity: &'a str,
}

impl Pace<'_> {
    async fn store(&self, walk: Walk, progress: &WalkProgress) -> Result<()> {
        match self.store {
            Some(store) => progress::save(store, self.entity, walk, progress).await,
            None => Ok(()),
        }
    }

    async fn pause(&self) {
        if !self.options.pause.is_zero() {
            tokio::time::sleep(self.options.pause).await;
        }
    }

    /// Whether what has waited since `since` (`count` of them) is to be read
    /// again now.
    fn due(&self, since: Option<Instant>, count: usize) -> bool {
        count >= MOST_WAITING || since.is_some_and(|s| s.elapsed() >= self.options.settle)
    }

    /// Waits out the rest of `settle` since `since`.
    async fn settle(&self, since: Option<Instant>) {
        if let Some(since) = since {
            let left = self.options.settle.saturating_sub(since.elapsed());
            if !left.is_zero() {
                tokio::time::sleep(left).await;
            }
        }
    }

    fn count(&self, rows: usize) {
        if self.store.is_some() {
            metrics::counter!(
                crate::metrics::VERIFY_ROWS_COMPARED,
                runtime::telemetry::metrics::label::ENTITY => self.entity.to_owned()
            )
            .increment(rows as u64);
        }
    }
}

/// One walk's state: what it found, where it stands, and the rows that
/// wait to be read again (since when the oldest of them waits).
struct State<T> {
    walk: Walk,
    found: Found,
    progress: WalkProgress,
    waiting: Vec<T>,
    since: Option<Instant>,
}

impl<T> State<T> {
    fn new(walk: Walk, progress: WalkProgress) -> Self {
        State {
            walk,
            found: Found::default(),
            progress,
            waiting: Vec::new(),
            since: None,
        }
    }

    /// A chunk of `rows` rows was read.
    fn read(&mut self, pace: &Pace<'_>, rows: usize) {
        self.found.rows += rows;
        self.progress.rows += rows as i64;
        pace.count(rows);
    }

    /// The chunk ending at `last` was checked; `differing` wait to be read
    /// again.
    fn checked(&mut self, differing: impl IntoIterator<Item = T>, last: String) {
        self.waiting.extend(differing);
        self.progress.passed(last);
        if !self.waiting.is_empty() {
            self.since.get_or_insert_with(Instant::now);
        }
    }

    /// Whether the waiting rows are to be read again now.
    fn due(&self, pace: &Pace<'_>) -> bool {
        pace.due(self.since, self.waiting.len())
    }

    /// After a chunk: progress stored when nothing waits, then the pause.
    async fn chunk_done(&self, pace: &Pace<'_>) -> Result<()> {
        if self.waiting.is_empty() {
            pace.store(self.walk, &self.progress).await?;
        }
        pace.pause().await;
        Ok(())
    }

    /// The walk is done (whatever waited was read again first).
    async fn finish(mut self, pace: &Pace<'_>) -> Result<(Found, WalkProgress)> {
        self.progress.done = true;
        pace.store(self.walk, &self.progress).await?;
        Ok((self.found, self.progress))
    }

    /// Counts a row found different: listed while there is room.
    fn different(&mut self, pace: &Pace<'_>) -> bool {
        self.progress.different += 1;
        if self.found.listed() >= pace.options.max_listed {
            self.found.unlisted += 1;
            false
        } else {
            true
        }
    }
}

/// A legacy row that differed, waiting to be read again.
struct Waiting {
    mismatch: Mismatch,
    reads: u8,
}

/// The legacy rows in key order, each compared with its counterpart.
pub(super) async fn legacy(
    comparer: &Comparer<'_>,
    pace: &Pace<'_>,
    progress: WalkProgress,
) -> Result<(Found, WalkProgress)> {
    if progress.done {
        return Ok((Found::default(), progress));
    }
    let mut state = State::new(Walk::Legacy, progress);
    let table = &comparer.legacy_table;
    let chunk = pace.options.chunk_rows.max(1);
    // Each chunk is checked while the next one is read.
    let mut rows = table
        .rows_after(comparer.legacy, state.progress.after_key.as_deref(), chunk)
        .await?;
    while let Some(last) = rows.last().map(|r| r.key.clone()) {
        state.read(pace, rows.len());
        let (mismatches, next) = tokio::join!(
            comparer.legacy_rows(&rows),
            table.rows_after(comparer.legacy, Some(&last), chunk)
        );
        rows = next?;
        let waiting = mismatches?
            .into_iter()
            .map(|mismatch| Waiting { mismatch, reads: 0 });
        state.checked(waiting, last);
        if state.due(pace) {
            settle_rows(comparer, pace, &mut state).await?;
        }
        state.chunk_done(pace).await?;
    }
    settle_rows(comparer, pace, &mut state).await?;
    state.finish(pace).await
}

/// Reads the waiting rows again, each once it has waited `settle`, until
/// none waits: what still differs, unchanged on both sides, is reported;
/// what changed meanwhile waits again.
async fn settle_rows(
    comparer: &Comparer<'_>,
    pace: &Pace<'_>,
    state: &mut State<Waiting>,
) -> Result<()> {
    while !state.waiting.is_empty() {
        let rows = std::mem::take(&mut state.waiting);
        if pace.options.settle.is_zero() {
            for w in rows {
                report_mismatch(pace, state, w.mismatch);
            }
            break;
        }
        pace.settle(state.since).await;
        state.since = Some(Instant::now());
        let keys: Vec<String> = rows.iter().map(|w| w.mismatch.legacy_key.clone()).collect();
        let read = comparer
            .legacy_table
            .rows_with_keys(comparer.legacy, &keys)
            .await?;
        let mut again: HashMap<String, Mismatch> = comparer
            .legacy_rows(&read)
            .await?
            .into_iter()
            .map(|m| (m.legacy_key.clone(), m))
            .collect();
        for w in rows {
            let Some(now) = again.remove(&w.mismatch.legacy_key) else {
                // Corresponds now, or the legacy row is gone (a delete in
                // flight: a platform row left behind shows in the other walk).
                state.found.settled += 1;
                continue;
            };
            if now.seen == w.mismatch.seen {
                report_mismatch(pace, state, now);
            } else if w.reads + 1 >= MOST_READS_AGAIN {
                // Written faster than it crosses: in flight at every read.
                state.found.changing += 1;
            } else {
                state.waiting.push(Waiting {
                    mismatch: now,
                    reads: w.reads + 1,
                });
            }
        }
    }
    state.since = None;
    Ok(())
}

fn report_mismatch(pace: &Pace<'_>, state: &mut State<Waiting>, m: Mismatch) {
    debug!(entity = pace.entity, legacy_key = %m.legacy_key, "rows differ");
    if !state.different(pace) {
        return;
    }
    if m.platform_key.is_none() {
        state.found.missing.push(m.legacy_key);
    } else {
        for column in m.columns {
            state.found.different.push((m.legacy_key.clone(), column));
        }
    }
}

/// The platform keys in key order, each checked for a legacy counterpart.
pub(super) async fn platform(
    comparer: &Comparer<'_>,
    pace: &Pace<'_>,
    progress: WalkProgress,
) -> Result<(Found, WalkProgress)> {
    if progress.done {
        return Ok((Found::default(), progress));
    }
    let mut state = State::new(Walk::Platform, progress);
    let table = &comparer.platform_table;
    let chunk = pace.options.chunk_rows.max(1);
    let mut keys = table
        .keys_after(
            comparer.platform,
            state.progress.after_key.as_deref(),
            chunk,
        )
        .await?;
    while let Some(last) = keys.last().cloned() {
        state.read(pace, keys.len());
        let (missing, next) = tokio::join!(
            comparer.platform_keys_without_legacy(&keys),
            table.keys_after(comparer.platform, Some(&last), chunk)
        );
        keys = next?;
        state.checked(missing?, last);
        if state.due(pace) {
            settle_keys(comparer, pace, &mut state).await?;
        }
        state.chunk_done(pace).await?;
    }
    settle_keys(comparer, pace, &mut state).await?;
    state.finish(pace).await
}

/// Checks the waiting platform keys again once they have waited `settle`:
/// those still without a legacy counterpart are reported.
async fn settle_keys(
    comparer: &Comparer<'_>,
    pace: &Pace<'_>,
    state: &mut State<String>,
) -> Result<()> {
    let keys = std::mem::take(&mut state.waiting);
    if keys.is_empty() {
        return Ok(());
    }
    let still: HashSet<String> = if pace.options.settle.is_zero() {
        keys.iter().cloned().collect()
    } else {
        pace.settle(state.since).await;
        let present = comparer
            .platform_table
            .existing_keys(comparer.platform, &keys)
            .await?;
        comparer
            .platform_keys_without_legacy(&present)
            .await?
            .into_iter()
            .collect()
    };
    for key in keys {
        if !still.contains(&key) {
            state.found.settled += 1;
        } else if state.different(pace) {
            state.found.missing.push(key);
        }
    }
    state.since = None;
    Ok(())
}
