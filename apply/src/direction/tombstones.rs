//! Expired tombstones and ledger entries pruned: at each session start and
//! then every `apply.tombstone_prune_interval`, between target
//! transactions.

use std::time::{Duration, Instant};

use tokio_postgres::Client;
use tracing::debug;

use super::Session;
use crate::error::{ApplyError, Result};

impl Session<'_> {
    /// Forgets expired tombstones when the prune interval has passed; runs
    /// between target transactions.
    pub(super) async fn prune_when_due(&mut self) -> Result<()> {
        if Instant::now() < self.next_prune {
            return Ok(());
        }
        let pruned = prune_tombstones(
            &self.lane.target,
            self.target_side(),
            self.shared.mapping.conflicts().tombstone_retention,
        )
        .await?;
        if pruned > 0 {
            debug!(pruned, "expired tombstones pruned");
        }
        self.next_prune = Instant::now() + self.shared.config.apply.tombstone_prune_interval;
        Ok(())
    }
}

/// Forgets tombstones older than the retention: an update older than that is
/// no longer expected to arrive. Ledger entries of the same age go too: a
/// change that late no longer gets the same-source tie rule, and capture's
/// polling no longer flags the rows as echoes (see `checkpoint`). Runs at
/// each session start and then every `apply.tombstone_prune_interval`.
/// Returns the number of tombstones pruned.
pub async fn prune_tombstones(
    client: &Client,
    side: &'static str,
    retention: Duration,
) -> Result<u64> {
    let seconds = retention.as_secs_f64();
    client
        .execute(
            "DELETE FROM syncbridge.apply_ledger WHERE written_at < now() - make_interval(secs => $1)",
            &[&seconds],
        )
        .await
        .map_err(|e| ApplyError::postgres(side, "prune the apply ledger", e))?;
    client
        .execute(
            "DELETE FROM syncbridge.row_clock WHERE deleted \
             AND seconds < extract(epoch FROM now() - make_interval(secs => $1))",
            &[&seconds],
        )
        .await
        .map_err(|e| ApplyError::postgres(side, "prune tombstones", e))
}
