//! What the topic already holds from this source: the last change event it
//! carries. A replication slot created while the topic holds events is a
//! slot that was lost (dropped, invalidated, or left behind on a failed-over
//! primary): whatever committed between that last event and the new slot
//! never reached Kafka (see `crate::run`'s lost-slot handling).

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use runtime::config::KafkaConfig;
use runtime::error::RuntimeError;
use runtime::kafka;
use schemas::codec::Codec;
use schemas::event::CaptureMode;

use crate::error::{CaptureError, Result};

/// How many messages from the end of the topic are read to find the last
/// change event (the very last message may not decode: a foreign writer).
const LOOK_BACK: i64 = 64;

/// How long the end of the topic may take to arrive.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// The last change event on a topic: where and when its transaction
/// committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LastEvent {
    pub commit_lsn: u64,
    pub commit_time_micros: i64,
}

/// The streamed change event with the highest commit LSN among the last
/// messages of `topic` (partition 0), or `None` when the topic holds none
/// (events a polling capture or a snapshot wrote do not count: they were
/// not read from a slot).
pub async fn last_event(
    config: &KafkaConfig,
    topic: &str,
    codec: &Codec,
) -> Result<Option<LastEvent>> {
    let config = config.clone();
    let topic = topic.to_owned();
    let codec = codec.clone();
    tokio::task::spawn_blocking(move || read_last_event(&config, &topic, &codec))
        .await
        .map_err(|e| CaptureError::Protocol(format!("the topic reader stopped: {e}")))?
}

fn read_last_event(config: &KafkaConfig, topic: &str, codec: &Codec) -> Result<Option<LastEvent>> {
    let failed = |what: &'static str| move |e| CaptureError::Runtime(RuntimeError::kafka(what, e));
    let consumer: BaseConsumer<kafka::QuietEof> = kafka::client_config_over(
        config,
        &[
            ("group.id", "syncbridge-capture-history"),
            ("enable.auto.commit", "false"),
            ("enable.partition.eof", "true"),
        ],
    )
    .create_with_context(kafka::QuietEof)
    .map_err(failed("create the topic reader"))?;
    let (low, high) = consumer
        .fetch_watermarks(topic, 0, READ_TIMEOUT)
        .map_err(failed("read the topic's offsets"))?;
    if high <= low {
        return Ok(None);
    }
    // Read to the end of the partition, not to `high`: a broker may answer
    // the last record batch's base offset + 1 (Tansu 0.6 does).
    let from = (high - LOOK_BACK).max(low);
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, 0, Offset::Offset(from))
        .map_err(failed("assign the topic"))?;
    consumer
        .assign(&assignment)
        .map_err(failed("assign the topic"))?;
    let deadline = std::time::Instant::now() + READ_TIMEOUT;
    let mut last: Option<LastEvent> = None;
    loop {
        let remaining = deadline.saturating_duration_since(std::time::Instant::now());
        if remaining.is_zero() {
            // Transient: the next session reads it again.
            return Err(failed("read the end of the topic")(
                rdkafka::error::KafkaError::MessageConsumption(
                    rdkafka::types::RDKafkaErrorCode::OperationTimedOut,
                ),
            ));
        }
        match consumer.poll(remaining) {
            None => continue,
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => return Ok(last),
            Some(Err(e)) => return Err(failed("read the end of the topic")(e)),
            Some(Ok(message)) => {
                if let Some(payload) = message.payload() {
                    if let Ok(event) = codec.decode(payload) {
                        let transaction = event.transaction;
                        let streamed = event.mode == CaptureMode::Streaming;
                        if streamed && last.is_none_or(|l| transaction.commit_lsn >= l.commit_lsn) {
                            last = Some(LastEvent {
                                commit_lsn: transaction.commit_lsn,
                                commit_time_micros: transaction.commit_time_micros,
                            });
                        }
                    }
                }
            }
        }
    }
}
