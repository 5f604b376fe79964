//! Snapshot events inside a streaming transaction. Snapshot pages come from
//! another producer than the streaming capture, so they can land inside one
//! of its transactions on the topic: there they wait until it ends (see
//! [`Deferred`]), or, beyond `deferred_snapshot_buffer` of them, are dropped
//! and read again from the topic after it.

use std::collections::VecDeque;

use tracing::info;

use super::Session;
use crate::error::Result;

/// Snapshot events held back by the open streaming transaction.
#[derive(Default)]
pub(super) struct Deferred {
    /// Snapshot events that arrived inside a streaming transaction, applied
    /// right after it (in the same target transaction).
    pub(super) events: VecDeque<(i64, Vec<u8>)>,
    /// The offset of the first snapshot event the open streaming transaction
    /// held beyond `deferred_snapshot_buffer`: from there on its snapshot
    /// events are dropped, to be read again once it has ended.
    pub(super) overflow: Option<i64>,
    /// The first snapshot event dropped, once the transaction it sat in has
    /// ended: the session must read its topic again from there (a live
    /// session's stored position stops right before it).
    pub(super) reread: Option<i64>,
}

impl Session<'_> {
    /// Keeps a snapshot event that arrived inside the open streaming
    /// transaction, to apply it once that has ended: at most
    /// `deferred_snapshot_buffer` of them. The first one beyond drops them
    /// all (memory stays bounded however long the transaction is), and
    /// those that follow are dropped too: once the transaction has ended,
    /// the session reads the topic again from the first one dropped (see
    /// [`Self::finish`]).
    pub(super) fn defer(&mut self, offset: i64, payload: &[u8]) {
        if self.deferred.overflow.is_some() {
            return;
        }
        if self.deferred.events.len() < self.shared.config.apply.deferred_snapshot_buffer {
            self.deferred.events.push_back((offset, payload.to_vec()));
            return;
        }
        let first = self
            .deferred
            .events
            .front()
            .map_or(offset, |(first, _)| *first);
        info!(
            topic = %self.topic,
            first_offset = first,
            kept = self.deferred.events.len(),
            "snapshot events inside a long streaming transaction; reading them again after it"
        );
        self.deferred.events.clear();
        self.deferred.overflow = Some(first);
    }

    /// Ends the open group of snapshot events early (a streaming transaction
    /// begins, or the topic went quiet); the rest of its page follows later.
    pub(super) async fn end_snapshot_group(&mut self) -> Result<()> {
        if let Some(open) = self.open.as_ref().filter(|open| open.snapshot) {
            let last_offset = open.last_offset;
            self.finish(last_offset).await?;
        }
        Ok(())
    }

    /// Applies the snapshot events deferred by a streaming transaction that
    /// has ended.
    pub(super) async fn apply_deferred(&mut self) -> Result<()> {
        while self.open.as_ref().is_none_or(|open| open.snapshot) {
            let Some((offset, payload)) = self.deferred.events.pop_front() else {
                break;
            };
            self.handle_payload(offset, &payload).await?;
        }
        Ok(())
    }
}
