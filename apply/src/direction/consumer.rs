//! The topic's consumer: where a session starts fetching (a little before
//! its position, see [`RESUME_LOOKBACK`]), every offset after the position
//! received in order (see [`Continuity`](runtime::continuity::Continuity)), and the consumer group offset
//! committed for monitoring once a batch has committed.

use std::time::Instant;

use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::{Offset, TopicPartitionList};
use runtime::continuity::{self, Next};
use runtime::kafka::Detached;
use tracing::{debug, error, info, warn};

use super::Session;
use crate::checkpoint::Position;
use crate::config::Config;
use crate::error::{ApplyError, Result};
use crate::mapping::Side;
use rdkafka::message::{BorrowedMessage, Message};
use schemas::event::{CaptureMode, Transaction};

/// How far before its stored position a direction starts fetching. A broker
/// may answer a fetch at an offset inside a record batch with the next batch
/// (Tansu 0.6 does), which would silently skip the rest of that batch; starting
/// at least one producer batch earlier (capture's batches hold at most 10,000
/// messages) and skipping the messages already applied makes resuming exact on
/// any broker. The first message received is checked to be at or before the
/// position.
const RESUME_LOOKBACK: i64 = 20_000;

pub(super) fn consumer(
    config: &Config,
    topic: &str,
    position: Position,
    group_id: &str,
) -> Result<Detached<StreamConsumer>> {
    let consumer: StreamConsumer = runtime::kafka::client_config_over(
        config.kafka.as_client(),
        &[
            ("group.id", group_id),
            ("enable.auto.commit", "false"),
            ("auto.offset.reset", "earliest"),
            ("enable.partition.eof", "false"),
            ("fetch.wait.max.ms", "10"),
        ],
    )
    .create()
    .map_err(|e| ApplyError::kafka("create the consumer", e))?;
    let mut assignment = TopicPartitionList::new();
    // An offset, never `Offset::Beginning`: a logical offset is resolved by
    // a query that librdkafka, not knowing the partition's leader yet at
    // assignment, puts off by half a second (every start of apply on a
    // topic without a stored position began fetching late). Offset 0
    // is fetched at once; where the log no longer starts at 0, the broker
    // answers out of range and `auto.offset.reset = earliest` starts at its
    // beginning, as for a stored position that retention has passed.
    let offset = Offset::Offset(fetch_start(position));
    assignment
        .add_partition_offset(topic, 0, offset)
        .map_err(|e| ApplyError::kafka("assign", e))?;
    consumer
        .assign(&assignment)
        .map_err(|e| ApplyError::kafka("assign", e))?;
    // A run ends, among other reasons, when the broker cannot be reached;
    // the consumer then closes without holding the runtime.
    Ok(Detached::new(consumer))
}

/// Where a session starts fetching: a little before the position, skipping
/// what is already applied (see [`RESUME_LOOKBACK`]); without a position,
/// from the beginning.
pub(super) fn fetch_start(position: Position) -> i64 {
    position
        .next_offset()
        .map_or(0, |next| next.saturating_sub(RESUME_LOOKBACK).max(0))
}

/// A topic whose end is at or before apply's stored position was deleted
/// and created again, or truncated: its offsets started over, and reading it
/// from the position would skip, as already applied, events that never
/// were. Refused (see [`topic_replaced`]).
pub(super) async fn refuse_a_topic_that_ends_before(
    config: &Config,
    topic: &str,
    from: Side,
    position: Position,
) -> Result<()> {
    let Some(last) = position.offset else {
        return Ok(());
    };
    let (_, end) = crate::replay::watermarks(config, topic).await?;
    if end <= last {
        return Err(topic_replaced(
            topic,
            from,
            format!("it ends at offset {end}, and apply applied up to offset {last}"),
        ));
    }
    Ok(())
}

/// The refusal of a topic that is not the one apply's position was taken
/// on: an ERROR, the `topic_replaced` error metric, and a configuration
/// error (exit 2) that names the fix.
fn topic_replaced(topic: &str, from: Side, what: String) -> ApplyError {
    error!(topic, from = from.as_str(), "the topic is not the one apply's position was taken on: its offsets started over; refusing to skip its events");
    crate::metrics::error(crate::monitor::direction(from), "topic_replaced");
    ApplyError::Config(format!(
        "topic {topic} was deleted and created again, or truncated: {what}. Its events would be skipped as already applied. \
         Apply what it holds now with `apply reset-position --from {side}` (the next start reads it from its beginning), \
         and re-copy what the old topic held after that position with `capture snapshot` on the {side} side",
        side = from.as_str(),
    ))
}

impl Session<'_> {
    /// A streamed transaction whose commit LSN the position covers, committed
    /// after every transaction applied: the source's LSNs started over below
    /// the position (a failover to a standby that was behind, a restore
    /// from a backup). Skipping it as applied would lose it; refused with
    /// an ERROR, the `lsns_started_over` error metric and a configuration
    /// error (exit 2) that names the fix.
    pub(super) fn lsns_started_over(&self, offset: i64, tx: &Transaction) -> ApplyError {
        error!(
            topic = %self.topic,
            offset,
            commit_lsn = %pg::Lsn(tx.commit_lsn),
            applied_lsn = %pg::Lsn(self.position.commit_lsn),
            "a transaction at or below apply's position committed after every one applied: the source's LSNs started over; refusing to skip it"
        );
        crate::metrics::error(crate::monitor::direction(self.from), "lsns_started_over");
        ApplyError::Config(format!(
            "source {source}: the transaction at offset {offset} of topic {topic} commits at LSN {lsn}, at or below apply's position (LSN {applied}), \
             but after every transaction applied: the source's LSNs started over (a failover to a standby that was behind, a restore), \
             and skipping it as applied would lose it. Once the source is the one to follow, run \
             `apply reset-position --from {side} --keep-offset` (apply then goes on after its offset whatever the LSNs), \
             and compare the two sides (`apply check`) for what the old primary had and the new one lacks",
            source = self.source_name,
            topic = self.topic,
            lsn = pg::Lsn(tx.commit_lsn),
            applied = pg::Lsn(self.position.commit_lsn),
            side = self.from.as_str(),
        ))
    }

    /// The message at apply's stored position must be the one the position
    /// was taken on. On a topic created again, the message at that offset
    /// is a later change of the source: a streamed event whose commit LSN is
    /// past every one applied. Refused (see [`topic_replaced`]).
    pub(super) fn check_topic_identity(&self, message: &BorrowedMessage<'_>) -> Result<()> {
        // A position whose LSN was forgotten (`reset-position --keep-offset`)
        // cannot tell.
        if !self.reading.is_live()
            || Some(message.offset()) != self.position.offset
            || self.position.commit_lsn == 0
        {
            return Ok(());
        }
        let Some(Ok(event)) = message.payload().map(|p| self.shared.codec.decode(p)) else {
            return Ok(());
        };
        let commit_lsn = event.transaction.commit_lsn;
        if event.mode == CaptureMode::Streaming && commit_lsn > self.position.commit_lsn {
            return Err(topic_replaced(
                &self.topic,
                self.from,
                format!(
                    "the event at apply's position (offset {}) committed at LSN {}, after every change apply applied (up to {})",
                    message.offset(),
                    pg::Lsn(commit_lsn),
                    pg::Lsn(self.position.commit_lsn),
                ),
            ));
        }
        Ok(())
    }

    /// Whether the message at `offset` is the one due (see [`Continuity`](runtime::continuity::Continuity)).
    /// When offsets before it are missing, fetches again from the first
    /// one after a pause and answers false; a gap that stays open is
    /// logged and passed, or refused when it follows the position.
    pub(super) async fn in_order(
        &mut self,
        consumer: &StreamConsumer,
        offset: i64,
    ) -> Result<bool> {
        match self.continuity.received(offset, Instant::now()) {
            Next::Handle => Ok(true),
            Next::Drop => Ok(false),
            Next::FetchAgain {
                from,
                pause,
                missing,
                attempt,
                slow,
            } => {
                if attempt == 0 {
                    self.stats.gap_fetched();
                    info!(topic = %self.topic, first_missing = missing.0, received = offset, fetch_from = from, "offsets missing before a message; fetching them again");
                } else if slow {
                    let wait = self.shared.config.apply.offset_gap_wait;
                    warn!(topic = %self.topic, first_missing = missing.0, received = offset, open_s = runtime::continuity::SLOW_GAP.as_secs(), wait_s = wait.as_secs(), "offsets still missing; waiting for them up to apply.offset_gap_wait");
                } else {
                    debug!(topic = %self.topic, first_missing = missing.0, received = offset, attempt, "offsets still missing; fetching them again");
                }
                continuity::fetch_again(consumer, &self.topic, from, pause)
                    .await
                    .map_err(|e| ApplyError::kafka("seek back to offsets missing", e))?;
                Ok(false)
            }
            Next::HandleAfterGap { missing } => {
                let waited = self.shared.config.apply.offset_gap_wait;
                error!(
                    topic = %self.topic,
                    first_missing = missing.0,
                    last_missing = missing.1 - 1,
                    waited_s = waited.as_secs(),
                    "offsets never became readable; continuing without them (check the producers and the topic's cleanup policy)"
                );
                crate::metrics::error(crate::monitor::direction(self.from), "offset_gap");
                Ok(true)
            }
            Next::Missing { missing } => {
                error!(
                    topic = %self.topic,
                    expected = missing.0,
                    received = missing.1,
                    "the broker skipped messages after apply's position; refusing to continue"
                );
                Err(ApplyError::Config(format!(
                    "topic {}: the first message fetched is at offset {}, after apply's position {}: messages are missing (retention, or a broker that skips within a batch)",
                    self.topic, missing.1, missing.0
                )))
            }
        }
    }

    /// Commits the consumer group offset of the last batch committed, if not
    /// yet (monitoring only: a failure is carried by the next commit).
    pub(super) fn commit_group_offset(&mut self, consumer: &StreamConsumer) {
        if let Some(next) = self.group_offset.take() {
            let mut offsets = TopicPartitionList::new();
            if offsets
                .add_partition_offset(&self.topic, 0, Offset::Offset(next))
                .is_ok()
            {
                if let Err(error) = consumer.commit(&offsets, CommitMode::Async) {
                    debug!(%error, "committing the consumer group offset failed; the next commit carries it");
                }
            }
        }
    }
}
