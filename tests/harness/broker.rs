//! The shared broker: a test's own topic, its watermark and last offset,
//! reading its messages (raw, dead letters, or decoded as change events by
//! [`EventReader`]) and producing to it.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use schemas::codec::Codec;
use schemas::event::ChangeEvent;

use crate::stack::Stack;
use crate::support::unique;

/// Creates a topic with one partition.
pub async fn create_topic(name: &str) -> Result<()> {
    create_topic_on(&Stack::get().brokers, name).await
}

/// [`create_topic`] on the broker(s) `brokers` (a test's own broker).
pub async fn create_topic_on(brokers: &str, name: &str) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let results = admin
        .create_topics(
            &[NewTopic::new(name, 1, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await?;
    for result in results {
        if let Err((topic, code)) = result {
            bail!("create topic {topic}: {code:?}");
        }
    }
    Ok(())
}

/// Whether `topic` exists on the broker with at least one partition.
pub fn topic_exists(topic: &str) -> Result<bool> {
    let consumer: rdkafka::consumer::BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &Stack::get().brokers)
        .create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    Ok(metadata
        .topics()
        .iter()
        .any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty()))
}

/// The high watermark (the offset after the last message) of a
/// one-partition topic.
pub fn high_watermark(topic: &str) -> Result<i64> {
    high_watermark_on(&Stack::get().brokers, topic)
}

/// [`high_watermark`] on the broker(s) `brokers`.
pub fn high_watermark_on(brokers: &str, topic: &str) -> Result<i64> {
    let consumer: rdkafka::consumer::BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let (_, high) = consumer.fetch_watermarks(topic, 0, Duration::from_secs(10))?;
    Ok(high)
}

/// The offset of the last message of `topic`, -1 when it has none. The
/// high watermark can trail the last message (Tansu 0.6 answers the last
/// record batch's base offset + 1, so a batch of several records counts
/// once): the batch it points into is read to its end.
pub async fn last_offset(topic: &str) -> Result<i64> {
    last_offset_on(&Stack::get().brokers, topic, high_watermark(topic)?).await
}

/// [`last_offset`] on the broker(s) `brokers`, given the high watermark
/// `high` just read there.
pub(crate) async fn last_offset_on(brokers: &str, topic: &str, high: i64) -> Result<i64> {
    if high <= 0 {
        return Ok(-1);
    }
    let consumer = consumer_on(brokers, topic, Offset::Offset(high - 1))?;
    let first = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
        .await
        .with_context(|| format!("reading offset {} of {topic}", high - 1))??;
    let mut last = first.offset();
    // The rest of that batch arrives with it, from the same fetch.
    while let Ok(message) = tokio::time::timeout(Duration::from_millis(300), consumer.recv()).await
    {
        last = last.max(message?.offset());
    }
    Ok(last)
}

/// A consumer of a test's own one-partition `topic`, from its first
/// offset, in a group of its own that commits nothing.
fn consumer_from_start(topic: &str) -> Result<StreamConsumer> {
    consumer_from(topic, Offset::Offset(0))
}

/// [`consumer_from_start`], from `offset`.
fn consumer_from(topic: &str, offset: Offset) -> Result<StreamConsumer> {
    consumer_on(&Stack::get().brokers, topic, offset)
}

/// [`consumer_from`], on the broker(s) `brokers`.
fn consumer_on(brokers: &str, topic: &str, offset: Offset) -> Result<StreamConsumer> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique("reader"))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()?;
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(topic, 0, offset)?;
    consumer.assign(&assignment)?;
    Ok(consumer)
}

/// The `reason` headers of the first `count` records of the dead-letter
/// topic `topic`, in order, each awaited up to 90 s.
pub async fn dead_letter_reasons(topic: &str, count: usize) -> Result<Vec<String>> {
    let consumer = consumer_from_start(topic)?;
    let mut reasons = Vec::new();
    while reasons.len() < count {
        let message = tokio::time::timeout(Duration::from_secs(90), consumer.recv())
            .await
            .with_context(|| {
                format!(
                    "waiting for dead letter {} of {count} on {topic}; got: {reasons:?}",
                    reasons.len() + 1
                )
            })??;
        let reason = message.headers().map(|h| {
            use rdkafka::message::Headers;
            h.iter()
                .filter(|h| h.key == "reason")
                .filter_map(|h| h.value.map(|v| String::from_utf8_lossy(v).into_owned()))
                .collect::<String>()
        });
        reasons.push(reason.unwrap_or_default());
    }
    Ok(reasons)
}

/// The first `n` messages of `topic` (key, payload), in order, each awaited
/// up to `timeout`; fails if an offset is skipped or repeated. Also a way to
/// wait for messages: the broker's high watermark can trail a batch it took
/// whole.
pub async fn read_messages(
    topic: &str,
    n: usize,
    timeout: Duration,
) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    read_from_start(topic, n, timeout, true).await
}

/// [`read_messages`] of a topic whose offsets have gaps on purpose (see
/// [`produce_with_offsets_skipped`](crate::produce_with_offsets_skipped)).
pub async fn read_messages_across_gaps(
    topic: &str,
    n: usize,
    timeout: Duration,
) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    read_from_start(topic, n, timeout, false).await
}

async fn read_from_start(
    topic: &str,
    n: usize,
    timeout: Duration,
    contiguous: bool,
) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let consumer = consumer_from_start(topic)?;
    let mut messages = Vec::with_capacity(n);
    let mut next_offset = 0;
    for _ in 0..n {
        let message = tokio::time::timeout(timeout, consumer.recv()).await??;
        if contiguous {
            next_in_order(&mut next_offset, message.offset())?;
        }
        messages.push((
            message.key().unwrap_or_default().to_vec(),
            message.payload().unwrap_or_default().to_vec(),
        ));
    }
    Ok(messages)
}

/// Checks that a message read from the start of a test's own topic has the
/// offset that follows the last one (`next`), and moves `next` on.
fn next_in_order(next: &mut i64, offset: i64) -> Result<()> {
    if offset != *next {
        bail!(
            "read offset {offset} where offset {} was due: {}",
            *next,
            if offset > *next {
                "offsets were skipped"
            } else {
                "an offset came twice"
            }
        );
    }
    *next = offset + 1;
    Ok(())
}

/// Writes `messages` (key, payload) to `topic`, in order, as one more
/// producer would.
pub async fn produce(topic: &str, messages: &[(Vec<u8>, Vec<u8>)]) -> Result<()> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &Stack::get().brokers)
        .set("enable.idempotence", "true")
        .create()?;
    for (key, payload) in messages {
        producer
            .send(
                FutureRecord::to(topic).key(key).payload(payload),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| e)?;
    }
    Ok(())
}

/// Reads and decodes the events of one topic from the beginning.
pub struct EventReader {
    consumer: StreamConsumer,
    codec: Codec,
    pub events: Vec<ChangeEvent>,
    /// The offset the next message must have: a reader that skipped one
    /// would hide a lost event from a test that counts "at least".
    next_offset: i64,
}

impl EventReader {
    pub fn new(topic: &str) -> Result<EventReader> {
        Self::on(&Stack::get().brokers, topic)
    }

    /// A reader of `topic` on the broker(s) `brokers` (a test's own broker).
    pub fn on(brokers: &str, topic: &str) -> Result<EventReader> {
        Ok(EventReader {
            consumer: consumer_on(brokers, topic, Offset::Offset(0))?,
            codec: Codec::new()?,
            events: Vec::new(),
            next_offset: 0,
        })
    }

    /// Reads until `done(events so far)` holds, or fails after `timeout`.
    pub async fn read_until(
        &mut self,
        what: &str,
        timeout: Duration,
        mut done: impl FnMut(&[ChangeEvent]) -> bool,
    ) -> Result<&[ChangeEvent]> {
        let deadline = Instant::now() + timeout;
        while !done(&self.events) {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                bail!(
                    "timed out after {timeout:?} waiting for {what}; read {} events",
                    self.events.len()
                );
            }
            match tokio::time::timeout(
                remaining.min(Duration::from_millis(500)),
                self.consumer.recv(),
            )
            .await
            {
                Err(_) => continue,
                Ok(message) => {
                    let message = message?;
                    next_in_order(&mut self.next_offset, message.offset())?;
                    let payload = message.payload().unwrap_or_default();
                    self.events.push(self.codec.decode(payload)?);
                }
            }
        }
        Ok(&self.events)
    }

    /// Reads until at least `count` events arrived.
    pub async fn read_at_least(
        &mut self,
        count: usize,
        timeout: Duration,
    ) -> Result<&[ChangeEvent]> {
        self.read_until(&format!("{count} events"), timeout, |events| {
            events.len() >= count
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::next_in_order;

    #[test]
    fn a_reader_accepts_consecutive_offsets_and_refuses_a_gap_or_a_repeat() {
        let mut next = 0;
        for offset in 0..3 {
            next_in_order(&mut next, offset).expect("consecutive");
        }
        let gap = next_in_order(&mut next, 5).expect_err("a gap");
        assert!(gap.to_string().contains("skipped"), "{gap}");
        let repeat = next_in_order(&mut 3, 2).expect_err("a repeat");
        assert!(repeat.to_string().contains("twice"), "{repeat}");
    }
}
