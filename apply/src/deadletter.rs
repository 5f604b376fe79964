//! The dead-letter topic: changes that cannot be applied, with the reason.
//!
//! A record keeps the original message bytes as its payload, so it can be
//! inspected with the same codec and replayed once the cause is fixed, and
//! says why in headers: `reason`, `source_topic`, `source_partition`,
//! `source_offset`. The reason names tables, columns and kinds of problem,
//! never row values. A record is produced with `acks=all` and awaited before
//! apply's position passes the message, so nothing is dropped silently.

use std::time::Duration;

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;

use crate::config::KafkaConfig;
use crate::error::{ApplyError, Result};

/// Produces dead letters.
pub struct DeadLetters {
    producer: FutureProducer,
    topic: String,
}

/// Where a dead letter came from.
#[derive(Debug, Clone)]
pub struct Origin<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
}

impl DeadLetters {
    pub fn new(config: &KafkaConfig) -> Result<DeadLetters> {
        let producer: FutureProducer = runtime::kafka::client_config(config.as_client())
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .create()
            .map_err(|e| ApplyError::kafka("create the dead-letter producer", e))?;
        Ok(DeadLetters {
            producer,
            topic: config.dead_letter_topic.clone(),
        })
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Sends one dead letter and waits until the broker has it.
    pub async fn send(&self, origin: &Origin<'_>, payload: &[u8], reason: &str) -> Result<()> {
        let partition = origin.partition.to_string();
        let offset = origin.offset.to_string();
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "reason",
                value: Some(reason),
            })
            .insert(Header {
                key: "source_topic",
                value: Some(origin.topic),
            })
            .insert(Header {
                key: "source_partition",
                value: Some(&partition),
            })
            .insert(Header {
                key: "source_offset",
                value: Some(&offset),
            });
        let record = FutureRecord::to(&self.topic)
            .key(origin.topic)
            .payload(payload)
            .headers(headers);
        self.producer
            .send(record, Timeout::After(Duration::from_secs(30)))
            .await
            .map(|_| ())
            .map_err(|(e, _)| ApplyError::kafka("send a dead letter", e))
    }
}
