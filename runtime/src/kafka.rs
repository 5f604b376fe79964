//! The Kafka side: the topic, the idempotent producer, and delivery futures.
//!
//! Partitioning rule: every event of a source is produced with the same key
//! (the source name), so all of a source's events land in one partition,
//! whatever the topic's partition count. Kafka keeps order within a
//! partition, and capture produces in commit order with an idempotent
//! producer (`enable.idempotence=true`, `acks=all`, at most 5 requests in
//! flight, so retries never reorder). A consumer therefore reads each
//! source's transactions whole and in commit order, and a foreign-key parent
//! written by an earlier transaction (or earlier in the same transaction) is
//! always read before its children. Per-row keys would spread a transaction
//! over partitions and lose exactly that.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::FutureExt;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use tracing::info;

use crate::config::KafkaConfig;
use crate::error::{Result, RuntimeError};

/// librdkafka settings for a client of `config`, extra properties applied.
pub fn client_config(config: &KafkaConfig) -> ClientConfig {
    client_config_over(config, &[])
}

/// librdkafka settings for a client of `config`: `defaults` first, then
/// `kafka.properties`, which win over them.
pub fn client_config_over(config: &KafkaConfig, defaults: &[(&str, &str)]) -> ClientConfig {
    let mut client = ClientConfig::new();
    client.set("bootstrap.servers", &config.brokers);
    for (key, value) in defaults {
        client.set(*key, *value);
    }
    for (key, value) in &config.properties {
        client.set(key, value.expose());
    }
    client
}

/// Creates the producer: idempotent, `acks=all`, bounded queue, and no
/// delivery timeout, so a broker outage stalls capture (which keeps its
/// replication session alive) instead of failing deliveries. Tuning defaults
/// come first and `kafka.properties` may override them; the settings that
/// guarantee delivery and order cannot be overridden.
pub fn producer(config: &KafkaConfig, max_in_flight: usize) -> Result<FutureProducer> {
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", &config.brokers)
        .set("linger.ms", "5")
        .set("batch.num.messages", "10000")
        .set("compression.type", "none")
        .set(
            "queue.buffering.max.messages",
            (max_in_flight.saturating_mul(2)).max(1000).to_string(),
        )
        .set("queue.buffering.max.kbytes", "262144");
    for (key, value) in &config.properties {
        client.set(key, value.expose());
    }
    client
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("max.in.flight.requests.per.connection", "5")
        .set("message.timeout.ms", "0");
    client
        .create()
        .map_err(|e| RuntimeError::kafka("create the producer", e))
}

/// Makes sure `topic` exists, creating it with one partition when allowed.
pub async fn ensure_topic(config: &KafkaConfig, topic: &str) -> Result<()> {
    ensure_topics(config, &[topic]).await
}

/// Makes sure every one of `topics` exists, creating those missing with one
/// partition when allowed.
///
/// One metadata client answers for all of them, and the admin client is
/// made only when one is missing: dropping an admin client joins its
/// polling thread, which wakes every 100 ms, a delay per topic at every
/// start otherwise.
pub async fn ensure_topics(config: &KafkaConfig, topics: &[&str]) -> Result<()> {
    let missing = missing_topics(config, topics).await?;
    if missing.is_empty() {
        return Ok(());
    }
    if !config.create_topic {
        return Err(RuntimeError::Config(format!(
            "topic {} does not exist and kafka.create_topic is false: create it (one partition keeps commit order)",
            missing.join(", ")
        )));
    }
    let admin: AdminClient<DefaultClientContext> = client_config(config)
        .create()
        .map_err(|e| RuntimeError::kafka("create the admin client", e))?;
    let new_topics: Vec<NewTopic> = missing
        .iter()
        .map(|topic| NewTopic::new(topic, 1, TopicReplication::Fixed(config.replication_factor)))
        .collect();
    let results = admin
        .create_topics(&new_topics, &AdminOptions::new())
        .await
        .map_err(|e| RuntimeError::kafka("create the topic", e))?;
    for result in results {
        match result {
            Ok(topic) => info!(topic, "created topic"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(RuntimeError::kafka(
                    format!("create topic {topic}"),
                    KafkaError::AdminOp(code),
                ))
            }
        }
    }
    Ok(())
}

/// Whether `topic` exists with at least one partition.
pub async fn topic_exists(config: &KafkaConfig, topic: &str) -> Result<bool> {
    Ok(missing_topics(config, &[topic]).await?.is_empty())
}

/// Those of `topics` that do not exist with at least one partition, in
/// order. librdkafka's metadata call blocks, so it runs on the blocking
/// pool, one client for all of them.
async fn missing_topics(config: &KafkaConfig, topics: &[&str]) -> Result<Vec<String>> {
    let client = client_config(config);
    let names: Vec<String> = topics.iter().map(|t| (*t).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = client
            .create()
            .map_err(|e| RuntimeError::kafka("create a metadata client", e))?;
        let mut missing = Vec::new();
        for name in names {
            let metadata = consumer
                .fetch_metadata(Some(&name), Timeout::After(Duration::from_secs(10)))
                .map_err(|e| RuntimeError::kafka("fetch topic metadata", e))?;
            let exists = metadata
                .topics()
                .iter()
                .any(|t| t.name() == name && t.error().is_none() && !t.partitions().is_empty());
            if !exists {
                missing.push(name);
            }
        }
        Ok(missing)
    })
    .await
    .map_err(|e| RuntimeError::Task(format!("metadata: {e}")))?
}

/// Hands one encoded event to the producer, waiting while its queue is full.
pub async fn send(
    producer: &FutureProducer,
    topic: &str,
    key: &[u8],
    payload: &[u8],
) -> Result<Delivered> {
    loop {
        let record = FutureRecord::to(topic).key(key).payload(payload);
        match producer.send_result(record) {
            Ok(future) => return Ok(Delivered(future)),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                // The queue drains as the broker acknowledges; give it a moment.
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            Err((error, _)) => return Err(RuntimeError::kafka("produce", error)),
        }
    }
}

/// A pending delivery: resolves when the broker has the event (acks=all).
pub struct Delivered(DeliveryFuture);

impl Future for Delivered {
    type Output = Result<()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.0.poll_unpin(cx).map(|outcome| match outcome {
            Ok(Ok(_delivery)) => Ok(()),
            Ok(Err((error, _message))) => Err(RuntimeError::kafka("deliver", error)),
            Err(_canceled) => Err(RuntimeError::kafka("deliver", KafkaError::Canceled)),
        })
    }
}

/// Waits until every queued message is delivered or `timeout` passes.
pub fn flush(producer: &FutureProducer, timeout: Duration) -> Result<()> {
    producer
        .flush(Timeout::After(timeout))
        .map_err(|e| RuntimeError::kafka("flush", e))
}

/// A Kafka client whose closing never holds the caller's thread.
///
/// Dropping a consumer that has a `group.id` closes it, and librdkafka's
/// close waits until the group coordinator has answered what is queued for
/// it (offset commits): while the broker is unreachable, until it is
/// reachable again. Done on an async worker, that wait stalls every task the
/// worker runs (the lease watcher, the metrics endpoint, the other
/// direction); with every worker closing a consumer, the whole process
/// waits. A `Detached` client is dropped on a thread of its own instead; the
/// process may exit while it still closes (nothing durable depends on the
/// close: positions live in the target database).
pub struct Detached<C: Send + 'static>(Option<C>);

impl<C: Send + 'static> Detached<C> {
    pub fn new(client: C) -> Detached<C> {
        Detached(Some(client))
    }
}

impl<C: Send + 'static> std::ops::Deref for Detached<C> {
    type Target = C;

    fn deref(&self) -> &C {
        self.0
            .as_ref()
            .expect("a detached client is taken only on drop")
    }
}

impl<C: Send + 'static> Drop for Detached<C> {
    fn drop(&mut self) {
        if let Some(client) = self.0.take() {
            // Should the thread not start, the client is dropped here, as
            // any client would be.
            let _ = std::thread::Builder::new()
                .name("kafka-close".into())
                .spawn(move || drop(client));
        }
    }
}

/// A consumer context that does not report reaching the end of a partition
/// as a client error: for readers that set `enable.partition.eof` to find
/// a topic's end, where it is what they wait for. Other client errors are
/// logged as WARN.
pub struct QuietEof;

impl rdkafka::client::ClientContext for QuietEof {
    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() != Some(RDKafkaErrorCode::PartitionEOF) {
            tracing::warn!(%error, reason, "kafka client error");
        }
    }
}

impl rdkafka::consumer::ConsumerContext for QuietEof {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    #[test]
    fn kafka_properties_win_over_a_clients_defaults() {
        let mut config = KafkaConfig {
            brokers: "broker:9092".into(),
            topic_prefix: "syncbridge".into(),
            topic: None,
            create_topic: true,
            replication_factor: 1,
            properties: Default::default(),
            sasl_password: None,
            sasl_password_file: None,
        };
        config
            .properties
            .insert("fetch.wait.max.ms".into(), Secret::new("50"));
        let client = client_config_over(
            &config,
            &[("fetch.wait.max.ms", "10"), ("group.id", "apply")],
        );
        assert_eq!(client.get("bootstrap.servers"), Some("broker:9092"));
        assert_eq!(client.get("fetch.wait.max.ms"), Some("50"));
        assert_eq!(client.get("group.id"), Some("apply"));
    }
}
