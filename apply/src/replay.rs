//! `apply replay`: the source topics again, from a point, into the target(s).
//!
//! ```text
//!  topic [start ........................ high watermark at start)
//!          │ every event applied; last writer wins decides  │
//!          └──► direction (Reading::Replay) ──► target ─────┘ then stop
//! ```
//!
//! A replay runs the ordinary direction loop in [`Reading::Replay`] mode: it
//! bypasses the LSN duplicate check (an event already applied loses to the
//! row it left, or rewrites the same values), never stores the position (a
//! running apply's position neither moves back nor forward) and reads under
//! its own consumer group without committing offsets, so a running apply is
//! not disturbed. It reads up to the high watermark present when it began.
//!
//! **Where a time starts.** A broker's `offsets_for_times` cannot be trusted
//! (Tansu answers 0 for a time after the last message), so the start offset
//! is found from the events themselves: a binary search over offsets reading
//! single messages' commit times ([`first_offset_at_or_after`]), started a
//! margin earlier (snapshot events carry read times that interleave with
//! commit times), and every event committed before the time is skipped as it
//! is read. Correct first, fast second: the search reads about 20 messages.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use runtime::kafka::QuietEof;
use schemas::codec::Codec;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::config::Config;
use crate::deadletter::DeadLetters;
use crate::direction::{self, Reading, SessionEnd, Shared};
use crate::error::{ApplyError, Result};
use crate::mapping::{Mapping, Side};
use crate::stats::Stats;

/// How many messages before the searched offset a replay from a time starts.
const TIME_MARGIN: i64 = 10_000;

/// How long one probe waits for its message.
const PROBE_TIMEOUT: Duration = Duration::from_secs(20);

/// How often [`watermarks`] asks for the watermarks again while it reads
/// towards the end of a topic that does not come to its end.
const WATERMARK_AGAIN: Duration = Duration::from_millis(500);

/// Where a replay starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayFrom {
    /// The first message still on the topic.
    Earliest,
    /// The first event committed at or after this time (Unix microseconds).
    Time(i64),
}

impl ReplayFrom {
    /// `earliest` or an RFC 3339 time in UTC (`2026-11-22T04:00:00Z`).
    pub fn parse(text: &str) -> Result<ReplayFrom> {
        if text == "earliest" {
            return Ok(ReplayFrom::Earliest);
        }
        let time = humantime::parse_rfc3339_weak(text)
            .ok()
            .and_then(|time| time.duration_since(UNIX_EPOCH).ok())
            .ok_or_else(|| {
                ApplyError::Config(format!(
                    "--from {text:?}: expected `earliest` or an RFC 3339 time in UTC such as 2026-11-22T04:00:00Z"
                ))
            })?;
        Ok(ReplayFrom::Time(time.as_micros() as i64))
    }
}

/// What one direction's replay did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectionReplay {
    pub from: Side,
    /// The offsets read: `start..end`.
    pub start: i64,
    pub end: i64,
    /// Messages read from `start`.
    pub read: u64,
    /// Events committed before the replay's start time, skipped.
    pub skipped_before: u64,
    pub stats: crate::stats::Snapshot,
}

impl fmt::Display for DirectionReplay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "replay {}->{} offsets={}..{} read={} skipped_before_time={} applied={} deleted={} skipped_as_older={} dead_lettered={}",
            self.from.as_str(),
            self.from.other().as_str(),
            self.start,
            self.end,
            self.read,
            self.skipped_before,
            self.stats.applied,
            self.stats.deleted,
            self.stats.skipped_older,
            self.stats.dead_lettered,
        )
    }
}

/// Replays the topic of each target's other side into it, one after the other.
pub async fn replay(
    config: Config,
    from: ReplayFrom,
    targets: &[Side],
    shutdown: &CancellationToken,
) -> Result<Vec<DirectionReplay>> {
    let mapping = Arc::new(Mapping::load_dir(&config.apply.mapping_dir)?);
    config.topics(&mapping)?;
    let codec = Codec::new().map_err(ApplyError::Schema)?;
    let dead_letters = DeadLetters::new(&config.kafka)?;
    let shared = Shared::new(config, mapping, codec, dead_letters);
    let mut done = Vec::new();
    for &to in targets {
        if shutdown.is_cancelled() {
            break;
        }
        done.push(replay_into(&shared, to.other(), from, shutdown).await?);
    }
    Ok(done)
}

async fn replay_into(
    shared: &Shared,
    from: Side,
    start_at: ReplayFrom,
    shutdown: &CancellationToken,
) -> Result<DirectionReplay> {
    let config = &shared.config;
    let source_name = shared.mapping.side(from).source.clone();
    let topic = config.topic(from, &source_name);
    let kafka = config.kafka.as_client();
    runtime::kafka::ensure_topics(kafka, &[&topic, &config.kafka.dead_letter_topic]).await?;
    let (low, high) = watermarks(config, &topic).await?;
    let (start, from_micros) = match start_at {
        ReplayFrom::Earliest => (low, None),
        ReplayFrom::Time(micros) => {
            let mut probe = TopicProbe {
                config,
                topic: &topic,
                codec: &shared.codec,
            };
            let found = first_offset_at_or_after(&mut probe, low, high, micros).await?;
            ((found - TIME_MARGIN).max(low), Some(micros))
        }
    };
    info!(from = from.as_str(), topic = %topic, start, end = high, "replay started");
    let catalogs = direction::check_direction(config, &shared.mapping, from).await?;
    let stats = Arc::new(Stats::default());
    let reading = Reading::Replay {
        start,
        end: high,
        from_micros,
    };
    let end = direction::session_reading(
        shared,
        from,
        catalogs,
        Arc::clone(&stats),
        shutdown,
        reading,
    )
    .await?;
    let (read, skipped_before) = match end {
        SessionEnd::Replayed {
            read,
            skipped_before,
        } => (read, skipped_before),
        SessionEnd::Shutdown => {
            return Err(ApplyError::Incomplete(
                "the replay was interrupted before its end; run it again (it is idempotent)"
                    .to_owned(),
            ))
        }
    };
    let done = DirectionReplay {
        from,
        start,
        end: high,
        read,
        skipped_before,
        stats: stats.snapshot(),
    };
    info!(
        from = from.as_str(),
        read,
        skipped_before,
        applied = done.stats.applied,
        skipped_as_older = done.stats.skipped_older,
        dead_lettered = done.stats.dead_lettered,
        "replay finished"
    );
    Ok(done)
}

/// The commit times of a topic's events, for the start-offset search.
pub trait CommitTimes {
    /// The first event at or after `offset` (a broker may answer a fetch
    /// inside a batch with a later message): its offset and commit time
    /// (Unix microseconds). `None` when there is none before the end.
    fn at(&mut self, offset: i64) -> impl Future<Output = Result<Option<(i64, i64)>>> + Send;
}

/// The first offset in `low..high` whose event was committed at or after
/// `from`, assuming commit times grow with offsets; `high` when none is.
/// Where the broker skips messages the answer errs early, never late.
pub async fn first_offset_at_or_after(
    times: &mut impl CommitTimes,
    low: i64,
    high: i64,
    from: i64,
) -> Result<i64> {
    let (mut lo, mut hi) = (low, high);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        match times.at(mid).await? {
            Some((found, time)) if time < from => lo = found.max(mid) + 1,
            _ => hi = mid,
        }
    }
    Ok(lo)
}

/// Reads single messages of a topic (partition 0).
struct TopicProbe<'a> {
    config: &'a Config,
    topic: &'a str,
    codec: &'a Codec,
}

impl CommitTimes for TopicProbe<'_> {
    async fn at(&mut self, offset: i64) -> Result<Option<(i64, i64)>> {
        let client = client(self.config);
        let topic = self.topic.to_owned();
        let found = tokio::task::spawn_blocking(move || -> Result<Option<(i64, Vec<u8>)>> {
            let consumer: BaseConsumer = client
                .create()
                .map_err(|e| ApplyError::kafka("create a probe consumer", e))?;
            let mut assignment = TopicPartitionList::new();
            assignment
                .add_partition_offset(&topic, 0, Offset::Offset(offset))
                .map_err(|e| ApplyError::kafka("assign", e))?;
            consumer
                .assign(&assignment)
                .map_err(|e| ApplyError::kafka("assign", e))?;
            let deadline = std::time::Instant::now() + PROBE_TIMEOUT;
            while std::time::Instant::now() < deadline {
                match consumer.poll(Duration::from_millis(500)) {
                    Some(Ok(message)) if message.offset() >= offset => {
                        return Ok(Some((
                            message.offset(),
                            message.payload().unwrap_or_default().to_vec(),
                        )))
                    }
                    Some(Ok(_)) => {}
                    Some(Err(error)) => return Err(ApplyError::kafka("probe", error)),
                    None => {}
                }
            }
            Ok(None)
        })
        .await
        .map_err(|e| ApplyError::Config(format!("probe task failed: {e}")))??;
        Ok(found.map(|(found, payload)| {
            // An undecodable message counts as old: the search moves past it.
            let time = self
                .codec
                .decode(&payload)
                .map(|event| event.transaction.commit_time_micros)
                .unwrap_or(i64::MIN);
            (found, time)
        }))
    }
}

fn client(config: &Config) -> ClientConfig {
    let group = format!("{}.replay", config.kafka.group_id);
    runtime::kafka::client_config_over(
        config.kafka.as_client(),
        &[
            ("group.id", &group),
            ("enable.auto.commit", "false"),
            ("enable.partition.eof", "false"),
        ],
    )
}

/// The first offset and the end (the offset after the last message) of
/// partition 0, as of the call: every offset before the end exists, and the
/// end is at or past the last message written before the call.
///
/// The end comes from a fetch, not from the watermark query alone: Tansu
/// answers that query with the last record batch's base offset + 1, so the
/// rest of that batch would be missed. Reading from there until the fetch
/// reports the end of the partition gives the true end on a quiet topic. On
/// a topic written to all the time, the fetch never reports the end (each
/// answer brings new messages); there a watermark that moved on marks where
/// a later batch begins, and so where the batches written before the call
/// end: that offset is the answer.
pub(crate) async fn watermarks(config: &Config, topic: &str) -> Result<(i64, i64)> {
    let mut client = client(config);
    client.set("enable.partition.eof", "true");
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer<QuietEof> = client
            .create_with_context(QuietEof)
            .map_err(|e| ApplyError::kafka("create a metadata consumer", e))?;
        let (low, high) = consumer
            .fetch_watermarks(&topic, 0, Duration::from_secs(20))
            .map_err(|e| ApplyError::kafka("read the topic's watermarks", e))?;
        if high <= low {
            return Ok((low, high));
        }
        let mut assignment = TopicPartitionList::new();
        assignment
            .add_partition_offset(&topic, 0, Offset::Offset(high - 1))
            .map_err(|e| ApplyError::kafka("assign", e))?;
        consumer
            .assign(&assignment)
            .map_err(|e| ApplyError::kafka("assign", e))?;
        let mut end = high;
        let deadline = std::time::Instant::now() + PROBE_TIMEOUT;
        let mut next_watermark = std::time::Instant::now() + WATERMARK_AGAIN;
        while std::time::Instant::now() < deadline {
            match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(message)) => end = end.max(message.offset() + 1),
                Some(Err(KafkaError::PartitionEOF(_))) => return Ok((low, end)),
                Some(Err(error)) => return Err(ApplyError::kafka("find the topic's end", error)),
                None => {}
            }
            if std::time::Instant::now() >= next_watermark {
                next_watermark = std::time::Instant::now() + WATERMARK_AGAIN;
                let (_, now) = consumer
                    .fetch_watermarks(&topic, 0, Duration::from_secs(20))
                    .map_err(|e| ApplyError::kafka("read the topic's watermarks", e))?;
                if now > high {
                    // A batch that began at `now - 1` was written after the
                    // first query: the ones before it end there.
                    return Ok((low, end.max(now - 1)));
                }
            }
        }
        Err(ApplyError::kafka(
            "find the topic's end",
            KafkaError::MessageConsumption(RDKafkaErrorCode::RequestTimedOut),
        ))
    })
    .await
    .map_err(|e| ApplyError::Config(format!("watermark task failed: {e}")))?
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A topic of commit times, one per offset, that may skip ahead like a
    /// broker answering with the next batch.
    struct FakeTopic {
        times: Vec<i64>,
        batch: i64,
        probes: usize,
    }

    impl CommitTimes for FakeTopic {
        async fn at(&mut self, offset: i64) -> Result<Option<(i64, i64)>> {
            self.probes += 1;
            // Inside a batch: answered from the next batch's start.
            let found = if offset % self.batch == 0 {
                offset
            } else {
                (offset / self.batch + 1) * self.batch
            };
            Ok(self.times.get(found as usize).map(|time| (found, *time)))
        }
    }

    fn topic(times: Vec<i64>, batch: i64) -> FakeTopic {
        FakeTopic {
            times,
            batch,
            probes: 0,
        }
    }

    async fn search(fake: &mut FakeTopic, from: i64) -> i64 {
        let high = fake.times.len() as i64;
        first_offset_at_or_after(fake, 0, high, from).await.unwrap()
    }

    #[tokio::test]
    async fn the_search_finds_the_first_event_at_or_after_the_time() {
        // Ten events per second, several events sharing a commit time.
        let times: Vec<i64> = (0..100_000).map(|i| (i / 3) * 100_000).collect();
        let mut fake = topic(times.clone(), 1);
        let found = search(&mut fake, 2_000_000_000).await;
        let expected = times.iter().position(|t| *t >= 2_000_000_000).unwrap() as i64;
        assert_eq!(found, expected);
        assert!(fake.probes <= 20, "{} probes", fake.probes);
    }

    #[tokio::test]
    async fn the_search_ends_at_the_high_watermark_for_a_time_after_the_last_event() {
        let mut fake = topic((0..1000).collect(), 1);
        assert_eq!(search(&mut fake, 5_000).await, 1000);
        assert_eq!(search(&mut fake, -1).await, 0);
    }

    #[tokio::test]
    async fn a_broker_that_skips_within_batches_makes_the_answer_early_never_late() {
        let times: Vec<i64> = (0..10_000).collect();
        for from in [1, 17, 4_321, 9_999] {
            let mut fake = topic(times.clone(), 64);
            let found = search(&mut fake, from).await;
            assert!(found <= from, "from {from}: {found} is late");
            assert!(
                from - found < 64,
                "from {from}: {found} is more than a batch early"
            );
        }
    }

    #[test]
    fn the_start_is_earliest_or_a_utc_time() {
        assert_eq!(ReplayFrom::parse("earliest").unwrap(), ReplayFrom::Earliest);
        assert_eq!(
            ReplayFrom::parse("2026-11-22T04:00:00Z").unwrap(),
            ReplayFrom::Time(1_795_320_000_000_000)
        );
        assert!(ReplayFrom::parse("yesterday").is_err());
    }
}
