//! Rows waiting in the target read again from the source: every
//! `apply.waiting_retry_interval`, between target transactions, in a target
//! transaction of their own (see `Writer::retry_waiting`).

use std::time::Instant;

use tracing::{debug, warn};

use super::Session;
use crate::error::Result;

/// After a round that failed for a reason a retry cannot help, the next one
/// comes this many intervals later.
const AFTER_FAILURE: u32 = 30;

impl Session<'_> {
    /// One round of waiting rows when due: none while a batch is open or its
    /// commit is in flight, none in a replay.
    pub(super) async fn retry_waiting_when_due(&mut self) -> Result<()> {
        let every = self.shared.config.apply.waiting_retry_interval;
        if Instant::now() < self.next_waiting
            || !self.lane.writer.may_have_waiting_rows()
            || self.parked.is_some()
            || !self.reading.is_live()
        {
            return Ok(());
        }
        self.next_waiting = Instant::now() + every;
        let give_up = self.shared.mapping.conflicts().tombstone_retention;
        self.begin_batch().await?;
        let round = self
            .lane
            .writer
            .retry_waiting(&self.lane.target, &self.source, every, give_up)
            .await;
        match round {
            Ok(rows) => {
                self.sql("COMMIT").await?;
                self.batch.open = false;
                if rows > 0 {
                    debug!(topic = %self.topic, rows, "waiting rows read again from the source");
                }
                self.current_lane_committed().await
            }
            Err(error) => {
                self.rollback().await?;
                if error.is_retryable() {
                    return Err(error);
                }
                warn!(topic = %self.topic, error = %runtime::error_chain(&error), "waiting rows could not be written; tried again later");
                self.next_waiting = Instant::now() + every * AFTER_FAILURE;
                Ok(())
            }
        }
    }
}
