//! What a replay session (`apply replay`, [`Reading::Replay`]) counts, and
//! when it is done: messages read and skipped, the progress shown, and the
//! end offset reached.

use std::time::Duration;

use runtime::progress::Progress;

use super::{Reading, Session, SessionEnd};
use crate::error::Result;

/// How long a replay waits for a message before it ends short of its end.
pub(super) const REPLAY_IDLE: Duration = Duration::from_secs(30);

/// How often a replay logs its progress when stderr is not a terminal.
pub(super) const REPLAY_PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// Replay: messages read, messages skipped as committed before the start
/// time, and the progress shown.
pub(super) struct ReplayCount {
    pub(super) read: u64,
    pub(super) skipped_before: u64,
    pub(super) progress: Option<Progress>,
}

impl Session<'_> {
    /// Replay: counts a message read and shows progress.
    pub(super) fn count_replayed(&mut self, offset: i64) {
        if let Reading::Replay { start, .. } = self.reading {
            if offset >= start {
                self.replay.read += 1;
                if let Some(progress) = self.replay.progress.as_mut() {
                    progress.advance(1);
                }
            }
        }
    }

    /// Replay: whether everything up to the end offset was applied.
    pub(super) fn replay_done(&self) -> bool {
        match self.reading {
            Reading::Live => false,
            Reading::Replay { start, end, .. } => {
                self.open.is_none()
                    && self.deferred.events.is_empty()
                    && (end <= start || self.boundary.is_some_and(|b| b >= end - 1))
            }
        }
    }

    /// Replay: the end, progress finished.
    pub(super) fn replayed(&mut self) -> SessionEnd {
        if let Some(progress) = self.replay.progress.take() {
            progress.finish();
        }
        SessionEnd::Replayed {
            read: self.replay.read,
            skipped_before: self.replay.skipped_before,
        }
    }

    /// Replay ending short: drops an unfinished source transaction.
    pub(super) async fn rollback_open(&mut self) -> Result<()> {
        if self.open.as_ref().is_some_and(|open| open.snapshot) {
            return self.end_snapshot_group().await;
        }
        self.abandon().await
    }
}
