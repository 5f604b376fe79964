//! `capture tail`: prints the change events on a topic, one line each, for a
//! person watching the bridge (what `kafka-avro-console-consumer` is to a
//! registry-based pipeline). Row values are printed only when asked for.

use std::collections::HashMap;
use std::io::Write;
use std::time::{Duration, Instant};

use futures::StreamExt;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use schemas::codec::Codec;
use schemas::event::{ChangeEvent, Column, Op, Value};
use tokio_util::sync::CancellationToken;

use runtime::config::KafkaConfig;
use runtime::RuntimeError;

use crate::error::{CaptureError, Result};
use pg::Lsn;
use runtime::continuity::{self, Continuity, Next};

/// How long `tail` fetches offsets missing before a message again before it
/// says so on stderr and goes on (see [`crate::continuity`]).
const GAP_WAIT: Duration = Duration::from_secs(5);

/// What to tail.
#[derive(Debug, Clone)]
pub struct TailOptions {
    /// How to reach the brokers: the same settings every client of the
    /// project takes (`kafka.properties`: TLS, SASL, ...).
    pub kafka: KafkaConfig,
    pub topics: Vec<String>,
    /// Start at the beginning of each topic rather than its end.
    pub from_beginning: bool,
    /// Print the row images too.
    pub values: bool,
    /// Stop after this many events.
    pub limit: Option<u64>,
}

/// Prints events until `shutdown`, the limit, or an error.
pub async fn tail(options: TailOptions, shutdown: CancellationToken) -> Result<()> {
    let codec = Codec::new().map_err(CaptureError::Schema)?;
    let consumer: StreamConsumer = runtime::kafka::client_config_over(
        &options.kafka,
        &[
            ("group.id", "syncbridge-tail"),
            ("enable.auto.commit", "false"),
        ],
    )
    .create()
    .map_err(|e| RuntimeError::kafka("create the consumer", e))?;
    let mut assignment = TopicPartitionList::new();
    let start = if options.from_beginning {
        Offset::Beginning
    } else {
        Offset::End
    };
    for topic in &options.topics {
        assignment
            .add_partition_offset(topic, 0, start)
            .map_err(|e| RuntimeError::kafka("assign", e))?;
    }
    consumer
        .assign(&assignment)
        .map_err(|e| RuntimeError::kafka("assign", e))?;
    // Every offset, in order, even where the broker shows a later batch
    // before an earlier one (see `continuity`).
    let mut offsets: HashMap<String, Continuity> = options
        .topics
        .iter()
        .map(|topic| (topic.clone(), Continuity::new(0, None, GAP_WAIT)))
        .collect();
    let mut stream = consumer.stream();
    let mut printed = 0u64;
    let stdout = std::io::stdout();
    loop {
        let message = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            next = tokio::time::timeout(Duration::from_secs(3600), stream.next()) => match next {
                Err(_) | Ok(None) => continue,
                Ok(Some(message)) => message.map_err(|e| RuntimeError::kafka("consume", e))?,
            },
        };
        let topic = message.topic().to_owned();
        let next = offsets.get_mut(&topic).map_or(Next::Handle, |c| {
            c.received(message.offset(), Instant::now())
        });
        match next {
            Next::Handle => {}
            Next::Drop => continue,
            Next::FetchAgain { from, pause, .. } => {
                drop(message);
                continuity::fetch_again(&consumer, &topic, from, pause)
                    .await
                    .map_err(|e| RuntimeError::kafka("seek back to offsets missing", e))?;
                continue;
            }
            Next::HandleAfterGap { missing } | Next::Missing { missing } => {
                eprintln!(
                    "{topic}: offsets {} to {} never became readable; going on without them",
                    missing.0,
                    missing.1 - 1
                );
            }
        }
        let line = match codec.decode(message.payload().unwrap_or_default()) {
            Ok(event) => describe(&event, options.values),
            Err(error) => format!(
                "{} offset {}: undecodable message: {error}",
                message.topic(),
                message.offset()
            ),
        };
        let mut out = stdout.lock();
        if writeln!(out, "{line}").is_err() {
            return Ok(()); // stdout closed (a pipe): nothing more to do
        }
        printed += 1;
        if options.limit.is_some_and(|limit| printed >= limit) {
            return Ok(());
        }
    }
}

/// One line describing an event.
pub fn describe(event: &ChangeEvent, values: bool) -> String {
    let op = match event.op {
        Op::Insert => "insert",
        Op::Update => "update",
        Op::Delete => "delete",
        Op::Truncate => "truncate",
        Op::Read => "read",
    };
    let t = &event.transaction;
    let mut line = format!(
        "{source:<9} {op:<8} {schema}.{table} key({key}) tx {lsn} #{pos}{last}",
        source = event.source,
        schema = event.schema,
        table = event.table,
        key = columns(&event.key),
        lsn = Lsn(t.commit_lsn),
        pos = t.position,
        last = match t.event_count {
            Some(count) => format!(" of {count}"),
            None => String::new(),
        },
    );
    if let Some(marker) = &event.marker {
        line.push_str(&format!(" echo({marker})"));
    }
    if values {
        if let Some(after) = &event.after {
            line.push_str(&format!(" after({})", columns(after)));
        }
    }
    line
}

fn columns(row: &[Column]) -> String {
    row.iter()
        .map(|c| format!("{}={}", c.name, show(&c.value)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn show(value: &Value) -> String {
    match value {
        Value::Null => "NULL".to_owned(),
        Value::Unchanged => "<unchanged>".to_owned(),
        other => pg::value::to_text(other).unwrap_or_default(),
    }
}
