//! One replication session: from the slot to Kafka and back to the slot.
//!
//! ```text
//!   slot ──pgoutput──► Assembler ──event──► Codec ──► producer ──► topic
//!    ▲                                                   │ delivery reports
//!    └──── update_applied_lsn ◄──── Ledger (in order) ◄──┘
//! ```
//!
//! The slot is acknowledged only up to the end of the last transaction whose
//! every event Kafka confirmed (and, between transactions, up to keepalive
//! and heartbeat positions once everything before them is confirmed). A
//! session that dies anywhere resumes from the slot's `confirmed_flush_lsn`;
//! Postgres then resends every transaction that committed after it, whole,
//! with the same commit LSN and event positions, so duplicates can be
//! recognised by `(commit_lsn, position)` and nothing is lost.
//!
//! Memory is bounded: at most `max_in_flight` events wait for delivery, the
//! replication client buffers a bounded number of messages, and the
//! assembler holds one event.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pgwire_replication::{
    FeedbackObserver, ReplicationClient, ReplicationConfig, ReplicationEvent,
};
use schemas::codec::Codec;
use schemas::event::CaptureMode;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use pg::pgoutput::{self, Message, Relation, ReplicaIdentity};
use pg::time::{now_micros, postgres_to_unix_micros};
use pg::Lsn;
use rdkafka::producer::FutureProducer;
use runtime::kafka::{self, Delivered};
use runtime::telemetry::Progress;

use crate::checkpoint::{from_wire, to_wire, Acknowledged, Ledger};
use crate::config::{Config, Connection};
use crate::error::{CaptureError, Result};
use crate::event::{Assembler, Step};
use crate::metrics;
use crate::slot::{Source, WalSender};

/// Signals the feedback the replication client sends to the server.
#[derive(Default)]
struct FeedbackSignal {
    sent: AtomicU64,
    notify: Notify,
}

/// A source ready to stream from: the publication and slot exist (created
/// at the current position when missing), the topic exists, the producer is
/// connected. What the slot retains from here on is not lost; a polling
/// catch-up can run now, before [`stream`] starts reading the slot.
pub struct Prepared {
    source: Source,
    confirmed: Option<Lsn>,
    /// This start created the slot (it did not exist).
    pub created_slot: bool,
    /// The producer streaming will use, shared with a catch-up.
    pub producer: FutureProducer,
}

/// Checks the source and prepares its slot, topic and producer.
pub async fn prepare(config: &Config, connection: &Connection) -> Result<Prepared> {
    let source = Source::connect(connection).await?;
    let slot = source.prepare(config).await?;
    source
        .warn_about_replica_identity(&config.publication_name())
        .await?;
    kafka::ensure_topic(&config.kafka, &config.topic()).await?;
    let producer = kafka::producer(&config.kafka, config.capture.max_in_flight)?;
    Ok(Prepared {
        source,
        confirmed: slot.confirmed,
        created_slot: slot.created,
        producer,
    })
}

impl Prepared {
    /// Drops the slot this start created, so that the next start finds it
    /// missing again (see `crate::run`'s lost-slot handling).
    pub async fn drop_created_slot(&self, config: &Config) -> Result<()> {
        if self.created_slot {
            self.source.drop_slot(&config.slot_name()).await?;
        }
        Ok(())
    }
}

/// What a stream tells the process running it, and what it leaves for the
/// next one.
pub struct Watch<'a> {
    /// Called once the stream has started.
    pub on_streaming: &'a (dyn Fn() + Sync),
    /// The stream's progress, for the health endpoint.
    pub progress: &'a Progress,
    /// The server session streaming the slot for this process: a stream
    /// ends it before starting when it is left from a stream lost on
    /// capture's side, and records its own once started.
    pub own_stream: &'a std::sync::Mutex<Option<WalSender>>,
}

/// Streams the prepared slot to Kafka until shutdown (Ok) or an error.
pub async fn stream(
    config: &Config,
    connection: &Connection,
    codec: &Codec,
    prepared: Prepared,
    shutdown: &CancellationToken,
    watch: Watch<'_>,
) -> Result<()> {
    let Watch {
        on_streaming,
        progress,
        own_stream,
    } = watch;
    let Prepared {
        source,
        confirmed,
        producer,
        ..
    } = prepared;
    let slot = config.slot_name();
    let publication = config.publication_name();
    let topic = config.topic();

    let feedback = Arc::new(FeedbackSignal::default());
    let observer = {
        let feedback = Arc::clone(&feedback);
        FeedbackObserver::new(move |_| {
            feedback.sent.fetch_add(1, Ordering::Release);
            feedback.notify.notify_waiters();
        })
    };
    let replication = ReplicationConfig::new(
        connection.host.clone(),
        connection.user.clone(),
        connection.password.expose().to_owned(),
        connection.dbname.clone(),
        slot.clone(),
        publication.clone(),
    )
    .with_port(connection.port)
    .with_tls(connection.tls.replication(&connection.host))
    .with_start_lsn(pgwire_replication::Lsn::ZERO)
    .with_status_interval(config.capture.status_interval)
    .with_options(pg::session::OPTIONS)
    .with_application_name(format!("syncbridge-capture-{}", config.source.name))
    .with_feedback_observer(observer);

    // This process's stream before, lost on its side, may still hold the
    // slot at the server: ended first, or starting would be refused until
    // the server's `wal_sender_timeout`.
    let lost = own_stream
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take();
    if let Some(lost) = lost {
        source.end_lost_walsender(&slot, &lost).await?;
    }
    // Connecting is bounded: through a dead link it would wait for the OS.
    let connect_within = connection
        .pg_config()
        .get_connect_timeout()
        .copied()
        .unwrap_or(CONNECT_TIMEOUT)
        .max(config.receive_deadline().unwrap_or_default());
    let mut client = within(
        connect_within,
        ReplicationClient::connect(replication),
        || format!("connect to {connection}"),
    )
    .await?;
    within(connect_within, client.wait_started(), || {
        format!("start streaming from slot {slot}")
    })
    .await?;
    let streaming_session = source.walsender_of(&slot).await?;
    *own_stream
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = streaming_session;
    let resume_from = confirmed.unwrap_or_default();
    info!(slot = %slot, topic = %topic, resume_from = %resume_from, "streaming");
    on_streaming();

    let mut acknowledged = Acknowledged::new(resume_from);
    let mut ledger: Ledger<Delivered> = Ledger::default();
    let mut assembler = Assembler::new(
        &config.source.name,
        &connection.dbname,
        &config.capture.marker_prefix,
    );
    let heartbeat_prefix = format!("{}.heartbeat", config.capture.marker_prefix);
    let heartbeat_every = config.capture.heartbeat_interval;
    let mut heartbeat = tokio::time::interval(if heartbeat_every.is_zero() {
        Duration::from_secs(3600)
    } else {
        heartbeat_every
    });
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let max_in_flight = config.capture.max_in_flight;
    let key = config.source.name.clone().into_bytes();
    let mut payload = Vec::with_capacity(4096);
    let events_by_mode = [
        CaptureMode::Streaming,
        CaptureMode::Polling,
        CaptureMode::Snapshot,
    ]
    .map(|mode| (mode, metrics::events(&config.source.name, mode_label(mode))));

    // Anything from the server (a change, a keepalive, the heartbeat's
    // message) shows the link is alive; so does a wait that is ours (Kafka
    // confirming what is in flight).
    let deadline = config.receive_deadline();
    let mut heard = tokio::time::Instant::now();
    loop {
        let silent_until = heard + deadline.unwrap_or(Duration::from_secs(3600));
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            released = ledger.released(), if !ledger.is_empty() => {
                heard = tokio::time::Instant::now();
                if let Some(lsn) = released? {
                    if acknowledged.advance(lsn) {
                        client.update_applied_lsn(to_wire(lsn));
                    }
                }
                progress.advanced(!ledger.is_empty());
            }
            () = tokio::time::sleep_until(silent_until), if deadline.is_some() && ledger.in_flight() < max_in_flight => {
                warn!(slot = %slot, silent_s = deadline.unwrap_or_default().as_secs(), "nothing received from the server for longer than capture.receive_timeout; the link is presumed dead, reconnecting");
                return Err(CaptureError::replication(
                    "read the stream",
                    timed_out("nothing received for longer than capture.receive_timeout"),
                ));
            }
            event = client.recv(), if ledger.in_flight() < max_in_flight => {
                heard = tokio::time::Instant::now();
                let event = event.map_err(|e| CaptureError::replication("read the stream", e))?;
                let Some(event) = event else {
                    return Err(CaptureError::replication(
                        "read the stream",
                        pgwire_replication::PgWireError::Io(Arc::new(std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            "the server ended the replication stream",
                        ))),
                    ));
                };
                if let Some(relation) = handle(&mut assembler, &mut ledger, event)? {
                    // REPLICA IDENTITY FULL flags every column as key: ask the
                    // catalog which columns the primary key really has.
                    let primary_key = source.primary_key(relation.oid).await?;
                    assembler.remember(relation, Some(&primary_key));
                }
                while let Some(step) = assembler.next_step() {
                    match step {
                        Step::Produce { event, then_safe } => {
                            payload.clear();
                            codec.encode_into(&event, &mut payload);
                            if let Some((_, events)) =
                                events_by_mode.iter().find(|(mode, _)| *mode == event.mode)
                            {
                                events.increment(1);
                            }
                            let delivered = kafka::send(&producer, &topic, &key, &payload).await?;
                            ledger.push_delivery(delivered, then_safe);
                        }
                        Step::Safe(lsn) => ledger.push_position(lsn),
                    }
                }
                if ledger.is_empty() {
                    // Idle and caught up.
                    progress.advanced(false);
                } else {
                    progress.set_pending(true);
                }
            }
            _ = heartbeat.tick(), if !heartbeat_every.is_zero() => {
                // Bounded: a heartbeat stuck on a dead link would hold the loop.
                let lsn = match deadline {
                    Some(limit) => tokio::time::timeout(limit, source.heartbeat(&heartbeat_prefix))
                        .await
                        .map_err(|_| CaptureError::replication(
                            "write the heartbeat",
                            timed_out("the heartbeat did not complete within capture.receive_timeout"),
                        ))??,
                    None => source.heartbeat(&heartbeat_prefix).await?,
                };
                debug!(lsn = %lsn, "heartbeat written");
            }
        }
    }

    // Shutdown: let in-flight deliveries land, acknowledge them, make sure the
    // server heard it, then end the stream.
    let deadline = tokio::time::Instant::now() + config.capture.shutdown_timeout;
    while !ledger.is_empty() {
        match tokio::time::timeout_at(deadline, ledger.released()).await {
            Ok(released) => {
                if let Some(lsn) = released? {
                    if acknowledged.advance(lsn) {
                        client.update_applied_lsn(to_wire(lsn));
                    }
                }
            }
            Err(_) => {
                client.stop();
                return Err(CaptureError::ShutdownTimeout(
                    config.capture.shutdown_timeout,
                ));
            }
        }
    }
    if client.feedback_pending_since().is_some() {
        let before = feedback.sent.load(Ordering::Acquire);
        let wait = config.capture.status_interval * 2 + Duration::from_secs(1);
        let notified = feedback.notify.notified();
        if feedback.sent.load(Ordering::Acquire) == before
            && tokio::time::timeout(wait, notified).await.is_err()
        {
            warn!(lsn = %acknowledged.get(), "acknowledged position may not have reached the server before shutdown; the next start replays from the previous one");
        }
    }
    client.stop();
    if let Err(error) = client.shutdown().await {
        debug!(%error, "replication stream ended with an error during shutdown");
    }
    info!(acknowledged = %acknowledged.get(), "capture stopped");
    Ok(())
}

/// How long connecting for replication may take when the source's
/// `connect_timeout` is unset.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// `future`, or a timed-out replication error after `limit`.
async fn within<T>(
    limit: Duration,
    future: impl std::future::Future<Output = std::result::Result<T, pgwire_replication::PgWireError>>,
    context: impl FnOnce() -> String,
) -> Result<T> {
    match tokio::time::timeout(limit, future).await {
        Ok(outcome) => outcome.map_err(|e| CaptureError::replication(context(), e)),
        Err(_) => Err(CaptureError::replication(
            context(),
            timed_out("no answer in time"),
        )),
    }
}

/// An I/O time-out, as the replication client reports a broken link.
fn timed_out(what: &str) -> pgwire_replication::PgWireError {
    pgwire_replication::PgWireError::Io(Arc::new(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        what.to_owned(),
    )))
}

/// The `mode` label of a capture mode.
fn mode_label(mode: CaptureMode) -> &'static str {
    match mode {
        CaptureMode::Streaming => "streaming",
        CaptureMode::Polling => "polling",
        CaptureMode::Snapshot => "snapshot",
    }
}

/// Feeds one replication event to the assembler and the ledger. Returns a
/// Relation message with `REPLICA IDENTITY FULL`, which needs a catalog
/// lookup before the assembler can take it.
fn handle(
    assembler: &mut Assembler,
    ledger: &mut Ledger<Delivered>,
    event: ReplicationEvent,
) -> Result<Option<Relation>> {
    match event {
        ReplicationEvent::Begin {
            final_lsn,
            xid,
            commit_time_micros,
        } => assembler.begin(
            from_wire(final_lsn),
            xid,
            postgres_to_unix_micros(commit_time_micros),
        )?,
        ReplicationEvent::Commit { end_lsn, .. } => assembler.commit(from_wire(end_lsn))?,
        ReplicationEvent::Message {
            transactional,
            lsn,
            prefix,
            content,
        } => {
            if transactional {
                assembler.message(true, &prefix, &content);
            } else if !assembler.in_transaction() {
                // A heartbeat (or anyone's non-transactional message): every
                // transaction before it has been received.
                ledger.push_position(from_wire(lsn));
            }
        }
        ReplicationEvent::XLogData {
            data, wal_start, ..
        } => {
            let message = pgoutput::decode(&data).map_err(|source| CaptureError::Decode {
                lsn: from_wire(wal_start),
                source,
            })?;
            match message {
                Message::Relation(relation)
                    if relation.replica_identity == ReplicaIdentity::Full =>
                {
                    return Ok(Some(relation));
                }
                message => assembler.apply(message, now_micros())?,
            }
        }
        // Between transactions, everything before a keepalive's position has
        // been received: it is safe once what came before is delivered.
        ReplicationEvent::KeepAlive { wal_end, .. }
            if !assembler.in_transaction() && !wal_end.is_zero() =>
        {
            ledger.push_position(from_wire(wal_end));
        }
        ReplicationEvent::KeepAlive { .. } => {}
        ReplicationEvent::StoppedAt { .. } => {}
        #[allow(unreachable_patterns)]
        _ => {}
    }
    Ok(None)
}
