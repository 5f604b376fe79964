//! The test harness: the local stack started by `scripts/test`, a fresh
//! database and topic per test, capture run in-process or as a process, and a
//! reader of the events on a topic.
//!
//! Every test gets its own database (on the legacy or platform cluster), its
//! own slot, publication and topic, so tests run in parallel without seeing
//! each other. Waits are on conditions, polled, with a deadline.

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use schemas::codec::Codec;
use schemas::event::ChangeEvent;
use tokio_postgres::{Client, NoTls};

mod sparse_batch;
pub use sparse_batch::produce_with_offsets_skipped;

/// The services `scripts/test` (or `scripts/stack up`) started.
#[derive(Debug, Clone)]
pub struct Stack {
    pub legacy_admin_url: String,
    pub platform_admin_url: String,
    pub brokers: String,
    pub pg_bindir: PathBuf,
    pub pg_run_as: Option<String>,
    pub stack_dir: PathBuf,
    pub reference_dir: PathBuf,
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the tests through scripts/test, which starts the stack they need")
    })
}

impl Stack {
    /// The stack described by the `SYNC_BRIDGE_*` environment. Also routes
    /// the services' logs to the test output (level from `RUST_LOG`,
    /// default `warn`).
    pub fn get() -> &'static Stack {
        static LOGS: OnceLock<()> = OnceLock::new();
        LOGS.get_or_init(|| {
            let filter = tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
            let _ = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_test_writer()
                .try_init();
        });
        static STACK: OnceLock<Stack> = OnceLock::new();
        STACK.get_or_init(|| Stack {
            legacy_admin_url: env("SYNC_BRIDGE_LEGACY_ADMIN_URL"),
            platform_admin_url: env("SYNC_BRIDGE_PLATFORM_ADMIN_URL"),
            brokers: env("SYNC_BRIDGE_KAFKA_BROKERS"),
            pg_bindir: PathBuf::from(env("SYNC_BRIDGE_PG_BINDIR")),
            pg_run_as: std::env::var("SYNC_BRIDGE_PG_RUN_AS")
                .ok()
                .filter(|s| !s.is_empty()),
            stack_dir: PathBuf::from(env("SYNC_BRIDGE_STACK_DIR")),
            reference_dir: PathBuf::from(env("SYNC_BRIDGE_REFERENCE_DIR")),
        })
    }
}

/// Which of the two clusters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Legacy,
    Platform,
}

impl Side {
    pub fn admin_url(self) -> &'static str {
        match self {
            Side::Legacy => &Stack::get().legacy_admin_url,
            Side::Platform => &Stack::get().platform_admin_url,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Side::Legacy => "legacy",
            Side::Platform => "platform",
        }
    }
}

/// A name no other test (or earlier run) uses: `<hint>_<pid>_<n>_<time>`.
pub fn unique(hint: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let hint: String = hint
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .take(24)
        .collect();
    format!("{hint}_{}_{n}_{nanos:x}", std::process::id())
}

/// Replaces the database name in a `postgres://` URL.
pub fn with_database(url: &str, dbname: &str) -> String {
    match url.rfind('/') {
        Some(slash) if slash > "postgres://".len() => format!("{}/{dbname}", &url[..slash]),
        _ => format!("{url}/{dbname}"),
    }
}

/// Connects and drives the connection in the background.
pub async fn connect(url: &str) -> Result<Client> {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .with_context(|| format!("connect to {url}"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// A database created for one test.
pub struct TestDb {
    pub side: Side,
    pub name: String,
    pub url: String,
    client: Client,
}

impl TestDb {
    /// Counts every write to `table` from now on (insert, update, delete,
    /// whoever makes it, apply included) in a test-only `audit` table; read
    /// the count with [`TestDb::audited_writes`].
    pub async fn audit_writes(&self, table: &str) -> Result<()> {
        self.execute(&format!(
            "CREATE TABLE audit (op text NOT NULL);
             CREATE FUNCTION audit() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN INSERT INTO audit VALUES (TG_OP); RETURN NULL; END $$;
             CREATE TRIGGER audit AFTER INSERT OR UPDATE OR DELETE ON {table} FOR EACH ROW EXECUTE FUNCTION audit();
             ALTER TABLE {table} ENABLE ALWAYS TRIGGER audit;"
        ))
        .await
    }

    /// The writes counted since [`TestDb::audit_writes`].
    pub async fn audited_writes(&self) -> Result<i64> {
        count(self.client(), "SELECT count(*) FROM audit").await
    }

    /// Creates an empty database on `side`'s cluster.
    pub async fn create(side: Side, hint: &str) -> Result<TestDb> {
        let name = unique(hint);
        let admin = connect(side.admin_url()).await?;
        admin
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await
            .with_context(|| format!("create database {name}"))?;
        let url = with_database(side.admin_url(), &name);
        let client = connect(&url).await?;
        Ok(TestDb {
            side,
            name,
            url,
            client,
        })
    }

    /// Creates a database holding the reference schema of `side`.
    pub async fn with_reference_schema(side: Side, hint: &str) -> Result<TestDb> {
        let db = TestDb::create(side, hint).await?;
        let path = Stack::get()
            .reference_dir
            .join(format!("{}.sql", side.name()));
        let sql =
            std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
        db.client
            .batch_execute(&sql)
            .await
            .with_context(|| format!("load {}", path.display()))?;
        Ok(db)
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Runs statements (no results).
    pub async fn execute(&self, sql: &str) -> Result<()> {
        self.client
            .batch_execute(sql)
            .await
            .with_context(|| format!("execute: {sql}"))
    }

    /// Creates a user on the platform side (reference schema): a member
    /// identity with `email`, a new uuid and a fixed `updated_at`.
    pub async fn create_platform_user(&self, email: &str) -> Result<()> {
        self.client
            .execute(
                "INSERT INTO identity.identities (id, email, given_name, family_name, kind, created_at, updated_at)
                 VALUES (gen_random_uuid(), $1, 'Platform', 'Born', 'member',
                         '2030-01-01 00:00:00+00', '2030-01-01 00:00:00+00')",
                &[&email],
            )
            .await
            .context("create a platform user")?;
        Ok(())
    }

    /// The slot's confirmed position as a number, if the slot exists.
    pub async fn confirmed_flush_lsn(&self, slot: &str) -> Result<Option<u64>> {
        let row = self
            .client
            .query_opt(
                "SELECT (confirmed_flush_lsn - '0/0')::int8 FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await?;
        Ok(row
            .and_then(|r| r.get::<_, Option<i64>>(0))
            .map(|v| v as u64))
    }

    /// Every session of this cluster whose transaction holds an xid, oldest
    /// first, one line each: what a new logical slot waits for. For a
    /// failure message: a failed query is reported in the text.
    pub async fn transactions_holding_an_xid(&self) -> String {
        let rows = match self
            .client
            .query(
                "SELECT format('pid %s db %s app %s state %s xact %s s wait %s/%s query %s',
                        pid, datname, application_name, state,
                        round(extract(epoch FROM now() - xact_start)::numeric, 1),
                        wait_event_type, wait_event, left(query, 120))
                   FROM pg_stat_activity
                  WHERE backend_xid IS NOT NULL AND pid <> pg_backend_pid()
                  ORDER BY xact_start",
                &[],
            )
            .await
        {
            Ok(rows) => rows,
            Err(error) => return format!("(unavailable: {error:#})"),
        };
        let lines: Vec<String> = rows.iter().map(|r| r.get::<_, String>(0)).collect();
        if lines.is_empty() {
            "(none)".to_string()
        } else {
            lines.join("\n")
        }
    }

    /// Where the server inserts its next WAL record, as a number: past
    /// every record written so far, committed asynchronously or not (the
    /// stack runs with `synchronous_commit = off`, so
    /// [`Self::current_wal_lsn`], the write position, can trail a commit).
    pub async fn current_wal_insert_lsn(&self) -> Result<u64> {
        let row = self
            .client
            .query_one("SELECT (pg_current_wal_insert_lsn() - '0/0')::int8", &[])
            .await?;
        Ok(row.get::<_, i64>(0) as u64)
    }

    /// The server's current WAL position as a number.
    pub async fn current_wal_lsn(&self) -> Result<u64> {
        let row = self
            .client
            .query_one("SELECT (pg_current_wal_lsn() - '0/0')::int8", &[])
            .await?;
        Ok(row.get::<_, i64>(0) as u64)
    }

    /// Drops a slot once it is no longer in use (best effort, bounded).
    pub async fn drop_slot(&self, slot: &str) -> Result<()> {
        eventually(
            "the slot to become inactive",
            Duration::from_secs(30),
            || async {
                let row = self
                    .client
                    .query_opt(
                        "SELECT active FROM pg_replication_slots WHERE slot_name = $1",
                        &[&slot],
                    )
                    .await?;
                Ok(match row {
                    None => Some(()),
                    Some(row) if !row.get::<_, bool>(0) => {
                        self.client
                            .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
                            .await?;
                        Some(())
                    }
                    Some(_) => None,
                })
            },
        )
        .await
    }
}

/// Waits until `check` returns `Some`, polling, or fails after `timeout`
/// naming what it waited for.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let started = Instant::now();
    let mut last_error = None;
    loop {
        match check().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(error) => last_error = Some(error),
        }
        if started.elapsed() > timeout {
            match last_error {
                Some(error) => bail!("timed out after {timeout:?} waiting for {what}: {error:#}"),
                None => bail!("timed out after {timeout:?} waiting for {what}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `sql` (one `count(*)`) on `client` returns `expected`.
pub async fn until_count(
    what: &str,
    timeout: Duration,
    client: &Client,
    sql: &str,
    expected: i64,
) -> Result<()> {
    eventually(what, timeout, || async {
        Ok((count(client, sql).await? == expected).then_some(()))
    })
    .await
}

/// Creates a topic with one partition.
pub async fn create_topic(name: &str) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &Stack::get().brokers)
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

/// The `[telemetry]` body of the services under test unless a test asks for
/// endpoints: off, so that parallel tests do not compete for a port.
pub const TELEMETRY_OFF: &str = "listen = \"off\"\n";

/// Everything a capture under test needs: its database, names and config.
pub struct CaptureSetup {
    pub db: TestDb,
    pub source: String,
    pub slot: String,
    pub publication: String,
    pub topic: String,
    pub tables: Vec<String>,
    /// Extra TOML appended to the `[capture]` section.
    pub capture_options: String,
    /// The `[telemetry]` section's body (endpoints off unless a test sets them).
    pub telemetry_options: String,
    /// The `[polling]` section when capture runs in polling mode.
    pub polling: Option<String>,
    /// The source URL capture connects with, when not the database's own
    /// (another role).
    pub source_url: Option<String>,
}

impl CaptureSetup {
    /// Names derived from the database's unique name.
    pub fn new(db: TestDb, tables: &[&str]) -> CaptureSetup {
        let source = db.side.name().to_owned();
        let slot = format!("s_{}", db.name);
        let publication = format!("p_{}", db.name);
        let topic = format!("{}.changes", db.name);
        CaptureSetup {
            db,
            source,
            slot,
            publication,
            topic,
            tables: tables.iter().map(|t| (*t).to_owned()).collect(),
            capture_options: String::from("heartbeat_interval = \"0s\"\n"),
            telemetry_options: String::from(TELEMETRY_OFF),
            polling: None,
            source_url: None,
        }
    }

    /// Runs capture in polling mode with `section` as its `[polling]` settings.
    pub fn use_polling(&mut self, section: &str) {
        self.polling = Some(section.to_owned());
    }

    /// Runs capture in streaming mode (the default).
    pub fn use_streaming(&mut self) {
        self.polling = None;
    }

    /// The capture configuration as TOML.
    pub fn toml(&self) -> String {
        let tables: Vec<String> = self.tables.iter().map(|t| format!("{t:?}")).collect();
        let polling = match &self.polling {
            Some(section) => format!("mode = \"polling\"\n\n[polling]\n{section}\n"),
            None => String::new(),
        };
        format!(
            "[source]\nname = {:?}\nurl = {:?}\ntables = [{}]\nslot = {:?}\npublication = {:?}\n\n\
             [kafka]\nbrokers = {:?}\ntopic = {:?}\n\n[capture]\nstatus_interval = \"200ms\"\nmax_backoff = \"2s\"\n{}{polling}\n[telemetry]\n{}",
            self.source,
            self.source_url.as_deref().unwrap_or(&self.db.url),
            tables.join(", "),
            self.slot,
            self.publication,
            Stack::get().brokers,
            self.topic,
            self.capture_options,
            self.telemetry_options,
        )
    }

    pub fn config(&self) -> Result<capture::Config> {
        Ok(capture::Config::from_toml(&self.toml())?)
    }

    /// In streaming mode, waits until capture has its slot.
    pub async fn wait_for_slot(&self) -> Result<()> {
        if self.polling.is_some() {
            return Ok(());
        }
        let waited = eventually("the slot", Duration::from_secs(60), || async {
            Ok(self.db.confirmed_flush_lsn(&self.slot).await?.map(|_| ()))
        })
        .await;
        match waited {
            Ok(()) => Ok(()),
            Err(error) => {
                let holders = self.db.transactions_holding_an_xid().await;
                bail!("{error:#}\na new slot waits for every transaction that holds an xid in the cluster; those running now:\n{holders}")
            }
        }
    }

    /// Starts capture in this process.
    pub fn start(&self) -> Result<RunningCapture> {
        let config = self.config()?;
        let shutdown = tokio_util::sync::CancellationToken::new();
        let task = tokio::spawn(capture::run(config, shutdown.clone()));
        Ok(RunningCapture { shutdown, task })
    }

    /// Writes the config to a file and starts the `capture` binary with it.
    pub fn spawn_process(&self) -> Result<ServiceProcess> {
        ServiceProcess::spawn("capture", &self.toml(), &self.db.name)
    }
}

/// Capture running as a task of the test's runtime.
pub struct RunningCapture {
    shutdown: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<capture::Result<()>>,
}

impl RunningCapture {
    /// Requests a clean shutdown and waits for it.
    pub async fn stop(self) -> Result<()> {
        self.shutdown.cancel();
        self.task.await??;
        Ok(())
    }

    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

/// Where the workspace's built binaries are.
pub fn binary(name: &str) -> PathBuf {
    if let Ok(path) = std::env::var(format!("SYNC_BRIDGE_{}_BIN", name.to_uppercase())) {
        return PathBuf::from(path);
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("debug").join(name)
}

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(hint: &str) -> Result<TempDir> {
        let path = std::env::temp_dir().join(unique(hint));
        std::fs::create_dir_all(&path)?;
        Ok(TempDir(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
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
    let consumer: rdkafka::consumer::BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &Stack::get().brokers)
        .create()?;
    let (_, high) = consumer.fetch_watermarks(topic, 0, Duration::from_secs(10))?;
    Ok(high)
}

/// The offset of the last message of `topic`, -1 when it has none. The
/// high watermark can trail the last message (Tansu 0.6 answers the last
/// record batch's base offset + 1, so a batch of several records counts
/// once): the batch it points into is read to its end.
pub async fn last_offset(topic: &str) -> Result<i64> {
    last_offset_from(topic, high_watermark(topic)?).await
}

/// [`last_offset`], given the high watermark `high` just read.
async fn last_offset_from(topic: &str, high: i64) -> Result<i64> {
    if high <= 0 {
        return Ok(-1);
    }
    let consumer = consumer_from(topic, Offset::Offset(high - 1))?;
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
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &Stack::get().brokers)
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
/// [`produce_with_offsets_skipped`]).
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
        Ok(EventReader {
            consumer: consumer_from_start(topic)?,
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

/// The repository's mapping directory.
pub fn mapping_dir() -> PathBuf {
    Stack::get().reference_dir.join("../mapping")
}

/// Both sides of the reference migration, captured and applied: two fresh
/// databases, two captures and one apply, all in this process.
pub struct Bridge {
    pub legacy: CaptureSetup,
    pub platform: CaptureSetup,
    pub counters: apply::Counters,
    pub dead_letter_topic: String,
    /// The `[telemetry]` section's body of apply (endpoints off by default).
    pub apply_telemetry: String,
    captures: Vec<RunningCapture>,
    apply: Option<RunningApply>,
    /// Extra `key = value` lines of apply's `[apply]` section.
    pub apply_options: String,
}

/// Apply running as a task of the test's runtime.
pub struct RunningApply {
    shutdown: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<apply::Result<()>>,
}

impl RunningApply {
    pub async fn stop(self) -> Result<()> {
        self.shutdown.cancel();
        self.task.await??;
        Ok(())
    }
}

impl Bridge {
    /// Creates both databases with the reference schemas and starts everything.
    pub async fn start(hint: &str) -> Result<Bridge> {
        let bridge = Bridge::prepare(hint).await?;
        bridge.run().await
    }

    /// Creates databases and topics; nothing runs yet.
    pub async fn prepare(hint: &str) -> Result<Bridge> {
        let legacy_db = TestDb::with_reference_schema(Side::Legacy, &format!("{hint}_l")).await?;
        let platform_db =
            TestDb::with_reference_schema(Side::Platform, &format!("{hint}_p")).await?;
        let mut legacy = CaptureSetup::new(
            legacy_db,
            &[
                "public.users",
                "public.categories",
                "public.teams",
                "public.team_members",
                "public.geofences",
            ],
        );
        let mut platform = CaptureSetup::new(
            platform_db,
            &[
                "identity.identities",
                "org.groups",
                "org.memberships",
                "geo.zones",
            ],
        );
        legacy.capture_options = "heartbeat_interval = \"0s\"\n".into();
        platform.capture_options = "heartbeat_interval = \"0s\"\n".into();
        create_topic(&legacy.topic).await?;
        create_topic(&platform.topic).await?;
        let dead_letter_topic = format!("{}.dead", legacy.db.name);
        create_topic(&dead_letter_topic).await?;
        Ok(Bridge {
            legacy,
            platform,
            counters: apply::Counters::default(),
            dead_letter_topic,
            apply_telemetry: String::from(TELEMETRY_OFF),
            captures: Vec::new(),
            apply: None,
            apply_options: String::new(),
        })
    }

    /// Starts both captures and apply.
    pub async fn run(mut self) -> Result<Bridge> {
        self.start_captures().await?;
        self.start_apply()?;
        Ok(self)
    }

    /// Starts both captures (in this process) and waits for their slots.
    pub async fn start_captures(&mut self) -> Result<()> {
        self.captures.push(self.legacy.start()?);
        self.captures.push(self.platform.start()?);
        for setup in [&self.legacy, &self.platform] {
            setup.wait_for_slot().await?;
        }
        Ok(())
    }

    /// Stops one side's capture, then starts it again with its current setup
    /// (e.g. after `use_polling` or `use_streaming`).
    pub async fn restart_capture(&mut self, side: Side) -> Result<()> {
        let index = match side {
            Side::Legacy => 0,
            Side::Platform => 1,
        };
        anyhow::ensure!(self.captures.len() == 2, "the bridge is not running");
        // One writer at a time on the topic: the old one has delivered and
        // stopped before the new one starts.
        self.captures.remove(index).stop().await?;
        let setup = match side {
            Side::Legacy => &self.legacy,
            Side::Platform => &self.platform,
        };
        self.captures.insert(index, setup.start()?);
        setup.wait_for_slot().await
    }

    /// The apply configuration as TOML.
    pub fn apply_toml(&self) -> String {
        format!(
            "[legacy]\nurl = {:?}\ntopic = {:?}\n\n[platform]\nurl = {:?}\ntopic = {:?}\n\n\
             [kafka]\nbrokers = {:?}\ngroup_id = {:?}\ndead_letter_topic = {:?}\n\n\
             [apply]\nmapping_dir = {:?}\nmax_backoff = \"2s\"\n{}\n[telemetry]\n{}",
            self.legacy.db.url,
            self.legacy.topic,
            self.platform.db.url,
            self.platform.topic,
            Stack::get().brokers,
            format!("apply_{}", self.legacy.db.name),
            self.dead_letter_topic,
            mapping_dir().display().to_string(),
            self.apply_options,
            self.apply_telemetry,
        )
    }

    /// Starts apply in this process.
    pub fn start_apply(&mut self) -> Result<()> {
        let toml = self.apply_toml();
        self.start_apply_with(&toml)
    }

    /// Starts apply in this process with a configuration of the test's own.
    pub fn start_apply_with(&mut self, toml: &str) -> Result<()> {
        let config = apply::Config::from_toml(toml)?;
        let shutdown = tokio_util::sync::CancellationToken::new();
        let task = tokio::spawn(apply::run(config, self.counters.clone(), shutdown.clone()));
        self.apply = Some(RunningApply { shutdown, task });
        Ok(())
    }

    /// Stops apply (cleanly).
    pub async fn stop_apply(&mut self) -> Result<()> {
        if let Some(apply) = self.apply.take() {
            apply.stop().await?;
        }
        Ok(())
    }

    pub fn legacy(&self) -> &TestDb {
        &self.legacy.db
    }

    pub fn platform(&self) -> &TestDb {
        &self.platform.db
    }

    /// Compares the two databases once.
    pub async fn compare(&self) -> Result<apply::verify::Report> {
        let mapping = apply::mapping::Mapping::load_dir(&mapping_dir())?;
        Ok(
            apply::verify::compare(&mapping, self.legacy().client(), self.platform().client())
                .await?,
        )
    }

    /// Waits until apply has committed, in each target, the position of
    /// the last message on the other side's topic, and re-asserted every
    /// delete it recorded: everything captured so far is applied (or
    /// skipped as an echo) and no batch is left open.
    pub async fn caught_up(&self, timeout: Duration) -> Result<()> {
        let directions = [
            (&self.legacy.topic, self.platform(), "legacy"),
            (&self.platform.topic, self.legacy(), "platform"),
        ];
        let waited = eventually("apply to store the position of each topic's end", timeout, || async {
            for (topic, target, source) in directions {
                let stored = count(
                    target.client(),
                    &format!("SELECT coalesce(max(kafka_offset), -1) FROM syncbridge.apply_position WHERE source = '{source}'"),
                )
                .await?;
                // The watermark first: it is cheap, and never past the end.
                let high = high_watermark(topic)?;
                if stored < high - 1 || stored < last_offset_from(topic, high).await? {
                    return Ok(None);
                }
                // A delete is re-asserted on its own side after its batch
                // committed, and its outbox entry removed after that.
                if count(target.client(), "SELECT count(*) FROM syncbridge.delete_outbox").await? > 0 {
                    return Ok(None);
                }
            }
            Ok(Some(()))
        })
        .await;
        match waited {
            Ok(()) => Ok(()),
            Err(error) => bail!("{error:#}\n{}", self.open_transactions().await),
        }
    }

    /// Each side's sessions that hold a transaction id, for a failure
    /// message.
    async fn open_transactions(&self) -> String {
        let mut open = String::new();
        for db in [self.legacy(), self.platform()] {
            let holders = db.transactions_holding_an_xid().await;
            open.push_str(&format!(
                "{} transactions holding an xid:\n{holders}\n",
                db.side.name()
            ));
        }
        open
    }

    /// Waits until both databases correspond, twice in a row with no apply
    /// activity in between.
    pub async fn converged(&self, timeout: Duration) -> Result<apply::verify::Report> {
        let previous = std::cell::Cell::new(None);
        let outcome = eventually("the two databases to correspond", timeout, || async {
            let activity = self.activity();
            let report = self.compare().await?;
            let settled = report.corresponds() && previous.get() == Some(activity);
            previous.set(report.corresponds().then_some(activity));
            Ok(settled.then_some(report))
        })
        .await;
        match outcome {
            Ok(report) => Ok(report),
            Err(error) => {
                let last = self
                    .compare()
                    .await
                    .map(|r| r.to_string())
                    .unwrap_or_default();
                let history = self
                    .history_of_differences()
                    .await
                    .unwrap_or_else(|e| format!("(history unavailable: {e:#})"));
                let open = self.open_transactions().await;
                bail!("{error:#}\nlast comparison:\n{last}\n{history}\n{open}")
            }
        }
    }

    /// For each row the comparison finds out of step (a few per entity):
    /// what both databases' bookkeeping says about it (id correspondence,
    /// tombstones, deletes to re-assert, the row's version and its ledger
    /// entry when apply wrote it) and every event of
    /// it on both topics, in order. Printed when convergence times out, so a
    /// rare divergence can be explained from one failed run.
    pub async fn history_of_differences(&self) -> Result<String> {
        let report = self.compare().await?;
        let mut keys: Vec<String> = Vec::new();
        let mut entities: Vec<String> = Vec::new();
        for entity in report.entities.iter().filter(|e| !e.corresponds()) {
            keys.extend(entity.missing_on_platform.iter().take(3).cloned());
            keys.extend(entity.missing_on_legacy.iter().take(3).cloned());
            keys.extend(entity.different.iter().take(3).map(|(k, _)| k.clone()));
            entities.push(entity.entity.clone());
        }
        self.history_of(&entities, keys).await
    }

    /// What both databases' bookkeeping says about the rows of `entities`
    /// with one of `keys` (either side's ids, as text; their counterparts
    /// are added), and every event of them on both topics, in order. For a
    /// test's failure message when an outcome is wrong although both sides
    /// agree.
    pub async fn history_of(&self, entities: &[String], mut keys: Vec<String>) -> Result<String> {
        use std::fmt::Write as _;
        let mapping = apply::mapping::Mapping::load_dir(&mapping_dir())?;
        // The entities' tables, on either side.
        let mut tables: Vec<(String, String)> = Vec::new();
        // The same, with the side and key column, to read row versions.
        let mut keyed: Vec<(apply::mapping::Side, String)> = Vec::new();
        for mapped in entities.iter().filter_map(|e| mapping.entity(e)) {
            for side in [apply::mapping::Side::Legacy, apply::mapping::Side::Platform] {
                let table = mapped.table(side);
                tables.push((table.schema.clone(), table.table.clone()));
                keyed.push((
                    side,
                    format!(
                        "SELECT {key}::text AS key, xmin::text AS xmin FROM {} WHERE {key}::text = ANY($1)",
                        table.qualified(),
                        key = table.key
                    ),
                ));
            }
        }
        if keys.is_empty() {
            return Ok(String::new());
        }
        let mut out = String::from("history of the rows:\n");
        // Counterparts, from either side's correspondence.
        for db in [self.legacy(), self.platform()] {
            let rows = db
                .client()
                .query(
                    "SELECT entity, legacy_id::text, platform_id::text FROM syncbridge.id_pairs \
                     WHERE legacy_id::text = ANY($1) OR platform_id::text = ANY($1)",
                    &[&keys],
                )
                .await?;
            for row in rows {
                let (legacy, platform): (String, String) = (row.get(1), row.get(2));
                for key in [legacy, platform] {
                    if !keys.contains(&key) {
                        keys.push(key);
                    }
                }
            }
        }
        for (side, db) in [("legacy", self.legacy()), ("platform", self.platform())] {
            for (what, sql) in [
                ("id pair", "SELECT row_to_json(m)::text FROM syncbridge.id_pairs m WHERE legacy_id::text = ANY($1) OR platform_id::text = ANY($1)"),
                ("tombstone", "SELECT row_to_json(v)::text FROM syncbridge.row_version v WHERE row_key = ANY($1)"),
                ("delete_outbox", "SELECT row_to_json(o)::text FROM syncbridge.delete_outbox o WHERE source_key = ANY($1)"),
            ] {
                for row in db.client().query(sql, &[&keys]).await? {
                    let _ = writeln!(out, "  {side} {what}: {}", row.get::<_, String>(0));
                }
            }
            // Each row's current version, and whether apply wrote it.
            for (_, select) in keyed.iter().filter(|(s, _)| s.as_str() == side) {
                let sql = format!(
                    "SELECT v.key, v.xmin, (SELECT row_to_json(l)::text FROM syncbridge.apply_ledger l \
                     WHERE l.written_xmin = v.xmin) FROM ({select}) v"
                );
                for row in db.client().query(&sql, &[&keys]).await? {
                    let (key, xmin, ledger): (String, String, Option<String>) =
                        (row.get(0), row.get(1), row.get(2));
                    let ledger = ledger.unwrap_or_else(|| "not apply's write".to_owned());
                    let _ = writeln!(
                        out,
                        "  {side} version of {key}: xmin {xmin}, ledger {ledger}"
                    );
                }
            }
        }
        for topic in [&self.legacy.topic, &self.platform.topic] {
            let mut reader = EventReader::new(topic)?;
            let end = high_watermark(topic)?;
            reader
                .read_until("the whole topic", Duration::from_secs(30), |events| {
                    events.len() as i64 >= end
                })
                .await?;
            for event in &reader.events {
                let ours = tables
                    .iter()
                    .any(|(schema, table)| *schema == event.schema && *table == event.table);
                let mentions = ours
                    && event
                        .key
                        .iter()
                        .chain(event.after.iter().flatten())
                        .filter_map(|c| capture::pgtype::to_text(&c.value))
                        .any(|text| keys.contains(&text));
                if mentions {
                    let updated_at = event
                        .after
                        .iter()
                        .flatten()
                        .find(|c| c.name == "updated_at")
                        .and_then(|c| capture::pgtype::to_text(&c.value));
                    let _ = writeln!(
                        out,
                        "  {topic}: {:?} {}.{} key {:?} updated_at {:?} xid {} commit_lsn {:X} commit_time {} mode {:?} echo {}",
                        event.op,
                        event.schema,
                        event.table,
                        event.key.iter().filter_map(|c| capture::pgtype::to_text(&c.value)).collect::<Vec<_>>(),
                        updated_at,
                        event.transaction.xid,
                        event.transaction.commit_lsn,
                        event.transaction.commit_time_micros,
                        event.mode,
                        event.marker.is_some(),
                    );
                }
            }
        }
        Ok(out)
    }

    fn activity(&self) -> (u64, u64) {
        let a = self.counters.legacy_to_platform.snapshot();
        let b = self.counters.platform_to_legacy.snapshot();
        (
            a.transactions + a.echoes + a.dead_lettered,
            b.transactions + b.echoes + b.dead_lettered,
        )
    }

    /// Stops everything and drops the slots.
    pub async fn stop(mut self) -> Result<()> {
        self.stop_apply().await?;
        for capture in self.captures.drain(..) {
            capture.stop().await?;
        }
        self.legacy.db.drop_slot(&self.legacy.slot).await?;
        self.platform.db.drop_slot(&self.platform.slot).await?;
        Ok(())
    }
}

impl Bridge {
    /// Writes the apply config to a file and starts the `apply` binary.
    pub fn spawn_apply_process(&self) -> Result<ServiceProcess> {
        ServiceProcess::spawn(
            "apply",
            &self.apply_toml(),
            &format!("{}_apply", self.legacy.db.name),
        )
    }
}

/// A service binary (`capture`, `apply`) running as a child process.
pub struct ServiceProcess {
    child: tokio::process::Child,
    pub log: PathBuf,
    _dir: TempDir,
}

impl ServiceProcess {
    pub fn spawn(binary_name: &str, toml: &str, hint: &str) -> Result<ServiceProcess> {
        Self::spawn_with_env(binary_name, toml, hint, &[])
    }

    /// Like [`ServiceProcess::spawn`], with extra environment variables.
    pub fn spawn_with_env(
        binary_name: &str,
        toml: &str,
        hint: &str,
        env: &[(&str, &str)],
    ) -> Result<ServiceProcess> {
        let dir = TempDir::new(hint)?;
        let config = dir.0.join("config.toml");
        std::fs::write(&config, toml)?;
        let log = dir.0.join("service.log");
        let stderr = std::fs::File::create(&log)?;
        let bin = binary(binary_name);
        if !bin.exists() {
            bail!(
                "{} is missing: build it first (scripts/test does)",
                bin.display()
            );
        }
        let stdout = std::fs::File::create(dir.0.join("stdout.log"))?;
        let child = tokio::process::Command::new(bin)
            .arg("--config")
            .arg(&config)
            .env("SYNC_BRIDGE_LOG_FORMAT", "text")
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(stdout)
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()?;
        Ok(ServiceProcess {
            child,
            log,
            _dir: dir,
        })
    }

    /// What the process wrote: stderr (the logs), then stdout.
    pub fn output(&self) -> String {
        let mut text = std::fs::read_to_string(&self.log).unwrap_or_default();
        if let Some(dir) = self.log.parent() {
            text.push_str(&std::fs::read_to_string(dir.join("stdout.log")).unwrap_or_default());
        }
        text
    }

    /// Waits until the output contains `text`, or fails after `timeout`
    /// showing the output.
    pub async fn wait_for_output(&self, text: &str, timeout: Duration) -> Result<()> {
        let found = eventually(&format!("{text:?} in the output"), timeout, || async {
            Ok(self.output().contains(text).then_some(()))
        })
        .await;
        found.with_context(|| format!("output so far:\n{}", self.output()))
    }

    pub async fn kill_hard(&mut self) -> Result<()> {
        self.child.kill().await?;
        Ok(())
    }

    /// SIGTERM, then waits for the exit code.
    pub async fn terminate(&mut self) -> Result<Option<i32>> {
        if let Some(pid) = self.child.id() {
            let status = std::process::Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status()?;
            if !status.success() {
                bail!("kill -TERM {pid} failed");
            }
        }
        self.wait(Duration::from_secs(60)).await
    }

    /// Waits for the process to exit and returns its exit code.
    pub async fn wait(&mut self, timeout: Duration) -> Result<Option<i32>> {
        let status = tokio::time::timeout(timeout, self.child.wait())
            .await
            .context("the service did not exit in time")??;
        Ok(status.code())
    }
}

/// Counts rows of a query.
pub async fn count(client: &Client, sql: &str) -> Result<i64> {
    Ok(client.query_one(sql, &[]).await?.get(0))
}

/// Random writes on one side of the reference domain, for `duration`:
/// inserts and updates on every table, deletes of the child tables
/// (memberships, geofences/zones), foreign keys valid at the time of writing
/// (and crossing sides: a membership may reference a user born on the other
/// side), each in its own transaction. Updates of users and teams pick any
/// row, wherever it was born (so both sides update the same rows, often
/// within one second); the child rows (memberships, geofences) are updated
/// and deleted only where they were born; legacy timestamps
/// are truncated to the second, as Ecto's `:utc_datetime` does. Returns the
/// number of statements that succeeded.
///
/// Known limitations, so not generated here: *parent* deletes racing updates
/// of the same parent and of its children on the other side, and a child row
/// deleted on one side while the other side updates it: when the update is
/// newer the row comes back on the deleting side, and where that side has
/// meanwhile given the row's natural key (team, user) to a new row, the two
/// collide (unique violation, dead-lettered) and the sides keep different
/// rows for that key (seen in runs where children were changed from both
/// sides; the dedicated delete-versus-update tests in `apply_conflicts`
/// pass). The dedicated
/// tests in `apply_conflicts` cover a parent that comes back with a child
/// created meanwhile, and a child whose nullable parent was deleted; what is
/// left is described in the README's known limitations (cascades that apply's
/// own deletes cause count as part of the echo, so a parent deleted, brought
/// back and deleted again while its children change can leave a child
/// different on the two sides).
pub async fn random_writes(url: &str, side: Side, duration: Duration, seed: u64) -> Result<u64> {
    writes(url, side, duration, seed, Updates::AnyParent).await
}

/// [`random_writes`], but every update picks a row born on the writer's own
/// side: for paths whose ordering is coarser than a second (the polling
/// fallback reads each side once per interval, so a same-second change made
/// on top of a crossed one cannot be told from a concurrent one there).
pub async fn random_writes_on_own_rows(
    url: &str,
    side: Side,
    duration: Duration,
    seed: u64,
) -> Result<u64> {
    writes(url, side, duration, seed, Updates::OwnRows).await
}

/// Which rows updates pick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Updates {
    /// Users and teams wherever they were born; child rows where born.
    AnyParent,
    /// Only rows born on the writer's side.
    OwnRows,
}

async fn writes(
    url: &str,
    side: Side,
    duration: Duration,
    seed: u64,
    updates: Updates,
) -> Result<u64> {
    use rand::{Rng, SeedableRng};
    let client = connect(url).await?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let deadline = Instant::now() + duration;
    let mut done = 0u64;
    let tag = format!("{}{seed}", side.name());
    let mut n = 0u64;
    while Instant::now() < deadline {
        n += 1;
        let roll: u32 = rng.gen_range(0..100);
        let own = |entity: &str| {
            match (updates, side) {
            (Updates::AnyParent, _) => String::new(),
            (Updates::OwnRows, Side::Legacy) => format!(
                " WHERE id NOT IN (SELECT legacy_id FROM syncbridge.id_pairs WHERE entity = '{entity}')"
            ),
            (Updates::OwnRows, Side::Platform) => format!(
                " WHERE id NOT IN (SELECT platform_id FROM syncbridge.id_pairs WHERE entity = '{entity}')"
            ),
        }
        };
        let own_user = own("user");
        let own_team = own("team");
        let sql = match side {
            Side::Legacy => match roll {
                0..=14 => format!(
                    "INSERT INTO users (email, full_name, role, phone, inserted_at, updated_at) VALUES ('{tag}-{n}@example.com', 'Given {n} Family', '{}', NULL, date_trunc('second', now() AT TIME ZONE 'UTC'), date_trunc('second', now() AT TIME ZONE 'UTC'))",
                    ["member", "staff", "admin"][rng.gen_range(0..3)]
                ),
                15..=24 => format!(
                    "INSERT INTO teams (name, category_id, archived, notes, inserted_at, updated_at) VALUES ('team {tag} {n}', (SELECT id FROM categories ORDER BY random() LIMIT 1), false, 'notes {n}', date_trunc('second', now() AT TIME ZONE 'UTC'), date_trunc('second', now() AT TIME ZONE 'UTC'))"
                ),
                25..=27 => format!(
                    "INSERT INTO categories (name, inserted_at, updated_at) VALUES ('category {tag} {n}', date_trunc('second', now() AT TIME ZONE 'UTC'), date_trunc('second', now() AT TIME ZONE 'UTC')) ON CONFLICT DO NOTHING"
                ),
                28..=39 => (
                    "INSERT INTO team_members (team_id, user_id, role, inserted_at, updated_at) SELECT t.id, u.id, 'member', date_trunc('second', now() AT TIME ZONE 'UTC'), date_trunc('second', now() AT TIME ZONE 'UTC') FROM (SELECT id FROM teams ORDER BY random() LIMIT 1) t, (SELECT id FROM users ORDER BY random() LIMIT 1) u ON CONFLICT DO NOTHING"
                ).to_owned(),
                40..=49 => format!(
                    "INSERT INTO geofences (team_id, name, latitude, longitude, radius_m, inserted_at, updated_at) SELECT (SELECT id FROM teams ORDER BY random() LIMIT 1), 'zone {n}', {}, {}, {}, date_trunc('second', now() AT TIME ZONE 'UTC'), date_trunc('second', now() AT TIME ZONE 'UTC')",
                    rng.gen_range(-90.0..90.0f64), rng.gen_range(-180.0..180.0f64), rng.gen_range(1..1000)
                ),
                50..=64 => format!(
                    "UPDATE users SET full_name = 'Renamed {n} Person', role = '{}', updated_at = date_trunc('second', now() AT TIME ZONE 'UTC') WHERE id = (SELECT id FROM users{own_user} ORDER BY random() LIMIT 1)",
                    ["member", "staff", "admin"][rng.gen_range(0..3)]
                ),
                65..=74 => format!(
                    "UPDATE teams SET name = 'team renamed {n}', archived = {}, updated_at = date_trunc('second', now() AT TIME ZONE 'UTC') WHERE id = (SELECT id FROM teams{own_team} ORDER BY random() LIMIT 1)",
                    rng.gen_bool(0.3)
                ),
                75..=82 => format!(
                    "UPDATE geofences SET latitude = {}, radius_m = {}, updated_at = date_trunc('second', now() AT TIME ZONE 'UTC') WHERE id = (SELECT id FROM geofences WHERE id NOT IN (SELECT legacy_id FROM syncbridge.id_pairs WHERE entity = 'geofence') ORDER BY random() LIMIT 1)",
                    rng.gen_range(-90.0..90.0f64), rng.gen_range(1..1000)
                ),
                83..=88 => "UPDATE team_members SET role = CASE role WHEN 'lead' THEN 'member' ELSE 'lead' END, updated_at = date_trunc('second', now() AT TIME ZONE 'UTC') WHERE id = (SELECT id FROM team_members WHERE id NOT IN (SELECT legacy_id FROM syncbridge.id_pairs WHERE entity = 'team_member') ORDER BY random() LIMIT 1)".to_owned(),
                89..=92 => "DELETE FROM team_members WHERE id = (SELECT id FROM team_members WHERE id NOT IN (SELECT legacy_id FROM syncbridge.id_pairs WHERE entity = 'team_member') ORDER BY random() LIMIT 1)".to_owned(),
                93..=95 => "DELETE FROM geofences WHERE id = (SELECT id FROM geofences WHERE id NOT IN (SELECT legacy_id FROM syncbridge.id_pairs WHERE entity = 'geofence') ORDER BY random() LIMIT 1)".to_owned(),
                // Parents are not deleted here: see the known limitation in
                // `random_writes`'s doc; `apply_conflicts` has dedicated
                // parent-delete tests.
                _ => format!("UPDATE users SET phone = '+1' || (random() * 1e9)::int8, updated_at = date_trunc('second', now() AT TIME ZONE 'UTC') WHERE id = (SELECT id FROM users{own_user} ORDER BY random() LIMIT 1)"),
            },
            Side::Platform => match roll {
                0..=14 => format!(
                    "INSERT INTO identity.identities (id, email, given_name, family_name, kind, is_admin, created_at, updated_at) VALUES (gen_random_uuid(), '{tag}-{n}@example.com', 'Given{n}', 'Family', '{}', {}, now(), now())",
                    ["member", "staff"][rng.gen_range(0..2)], rng.gen_bool(0.2)
                ),
                15..=27 => format!(
                    "INSERT INTO org.groups (id, name, category, archived_at, notes, created_at, updated_at) VALUES (gen_random_uuid(), 'group {tag} {n}', {}, NULL, 'notes', now(), now())",
                    if rng.gen_bool(0.5) { format!("'category p{}'", rng.gen_range(0..5)) } else { "NULL".to_owned() }
                ),
                28..=39 => "INSERT INTO org.memberships (id, group_id, identity_id, role, created_at, updated_at) SELECT gen_random_uuid(), g.id, i.id, 'member', now(), now() FROM (SELECT id FROM org.groups ORDER BY random() LIMIT 1) g, (SELECT id FROM identity.identities ORDER BY random() LIMIT 1) i ON CONFLICT DO NOTHING".to_owned(),
                40..=49 => format!(
                    "INSERT INTO geo.zones (id, group_id, name, center, radius_m, created_at, updated_at) SELECT gen_random_uuid(), (SELECT id FROM org.groups ORDER BY random() LIMIT 1), 'zone {n}', jsonb_build_object('lat', {}::float8, 'lng', {}::float8), {}, now(), now()",
                    rng.gen_range(-90.0..90.0f64), rng.gen_range(-180.0..180.0f64), rng.gen_range(1..1000)
                ),
                50..=64 => format!(
                    "UPDATE identity.identities SET given_name = 'G{n}', family_name = 'F {n}', is_admin = {}, updated_at = now() WHERE id = (SELECT id FROM identity.identities{own_user} ORDER BY random() LIMIT 1)",
                    rng.gen_bool(0.3)
                ),
                65..=74 => format!(
                    "UPDATE org.groups SET name = 'group renamed {n}', archived_at = {}, updated_at = now() WHERE id = (SELECT id FROM org.groups{own_team} ORDER BY random() LIMIT 1)",
                    if rng.gen_bool(0.3) { "now()" } else { "NULL" }
                ),
                75..=82 => format!(
                    "UPDATE geo.zones SET center = jsonb_build_object('lat', {}::float8, 'lng', {}::float8), updated_at = now() WHERE id = (SELECT id FROM geo.zones WHERE id NOT IN (SELECT platform_id FROM syncbridge.id_pairs WHERE entity = 'geofence') ORDER BY random() LIMIT 1)",
                    rng.gen_range(-90.0..90.0f64), rng.gen_range(-180.0..180.0f64)
                ),
                83..=88 => "UPDATE org.memberships SET role = CASE role WHEN 'lead' THEN 'member' ELSE 'lead' END, updated_at = now() WHERE id = (SELECT id FROM org.memberships WHERE id NOT IN (SELECT platform_id FROM syncbridge.id_pairs WHERE entity = 'team_member') ORDER BY random() LIMIT 1)".to_owned(),
                89..=92 => "DELETE FROM org.memberships WHERE id = (SELECT id FROM org.memberships WHERE id NOT IN (SELECT platform_id FROM syncbridge.id_pairs WHERE entity = 'team_member') ORDER BY random() LIMIT 1)".to_owned(),
                93..=95 => "DELETE FROM geo.zones WHERE id = (SELECT id FROM geo.zones WHERE id NOT IN (SELECT platform_id FROM syncbridge.id_pairs WHERE entity = 'geofence') ORDER BY random() LIMIT 1)".to_owned(),
                _ => format!("UPDATE identity.identities SET phone_e164 = '+44' || (random() * 1e9)::int8, updated_at = now() WHERE id = (SELECT id FROM identity.identities{own_user} ORDER BY random() LIMIT 1)"),
            },
        };
        if client.batch_execute(&sql).await.is_ok() {
            done += 1;
        }
        if n.is_multiple_of(4) {
            tokio::time::sleep(Duration::from_millis(rng.gen_range(0..20))).await;
        }
    }
    Ok(done)
}

/// A PostgreSQL cluster of a test's own (not the stack's), on a free port, to
/// be started and stopped at will: a server with another `wal_level`, or one
/// that is down when capture starts.
pub struct ThrowawayCluster {
    pub port: u16,
    data: PathBuf,
    log: PathBuf,
    wal_level: String,
    _dir: TempDir,
}

impl ThrowawayCluster {
    /// Runs initdb; the cluster is not started.
    pub fn create(hint: &str, wal_level: &str) -> Result<ThrowawayCluster> {
        let stack = Stack::get();
        let dir = TempDir::new(hint)?;
        let data = dir.0.join("data");
        if let Some(user) = &stack.pg_run_as {
            run_program("chown", &["-R", user, &dir.0.display().to_string()], None)?;
            run_program("chmod", &["755", &dir.0.display().to_string()], None)?;
        }
        let initdb = stack.pg_bindir.join("initdb").display().to_string();
        let data_text = data.display().to_string();
        run_program(
            &initdb,
            &["-D", &data_text, "-A", "trust", "-U", "postgres"],
            stack.pg_run_as.as_deref(),
        )?;
        Ok(ThrowawayCluster {
            port: free_port()?,
            log: dir.0.join("log"),
            data,
            wal_level: wal_level.to_owned(),
            _dir: dir,
        })
    }

    /// `postgres://postgres@127.0.0.1:<port>/<dbname>`.
    pub fn url(&self, dbname: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{dbname}", self.port)
    }

    /// The cluster's own directory (the data directory is `data` in it).
    pub fn dir(&self) -> &std::path::Path {
        &self._dir.0
    }

    /// The data directory (`pg_hba.conf`, ...).
    pub fn data_dir(&self) -> &std::path::Path {
        &self.data
    }

    pub fn start(&self) -> Result<()> {
        self.start_with("")
    }

    /// Starts the server with extra `-c name=value` options.
    pub fn start_with(&self, extra_options: &str) -> Result<()> {
        let stack = Stack::get();
        let socket_dir = self
            .data
            .parent()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c wal_level={} -c max_wal_senders=10 -c max_replication_slots=10 -k {socket_dir} {extra_options}",
            self.port, self.wal_level
        );
        run_program(
            &stack.pg_bindir.join("pg_ctl").display().to_string(),
            &[
                "-D",
                &self.data.display().to_string(),
                "-o",
                &options,
                "-l",
                &self.log.display().to_string(),
                "-w",
                "start",
            ],
            stack.pg_run_as.as_deref(),
        )
    }

    pub fn stop(&self) -> Result<()> {
        let stack = Stack::get();
        run_program(
            &stack.pg_bindir.join("pg_ctl").display().to_string(),
            &[
                "-D",
                &self.data.display().to_string(),
                "-m",
                "fast",
                "-w",
                "stop",
            ],
            stack.pg_run_as.as_deref(),
        )
    }
}

impl Drop for ThrowawayCluster {
    fn drop(&mut self) {
        let stack = Stack::get();
        let _ = run_program(
            &stack.pg_bindir.join("pg_ctl").display().to_string(),
            &[
                "-D",
                &self.data.display().to_string(),
                "-m",
                "immediate",
                "stop",
            ],
            stack.pg_run_as.as_deref(),
        );
    }
}

/// Runs a program (as `as_user` when given) and fails with its stderr.
pub fn run_program(program: &str, args: &[&str], as_user: Option<&str>) -> Result<()> {
    let mut command = match as_user {
        Some(user) => {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", user, "--", program]);
            c
        }
        None => std::process::Command::new(program),
    };
    let output = command.args(args).output()?;
    anyhow::ensure!(
        output.status.success(),
        "{program} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

/// A loopback port nothing listens on right now.
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A Kafka-protocol broker of a test's own (tansu, durable sqlite storage),
/// on a free port, to be killed and restarted without touching the shared one.
pub struct PrivateBroker {
    pub port: u16,
    child: Option<std::process::Child>,
    dir: TempDir,
}

impl PrivateBroker {
    /// The tansu binary: `SYNC_BRIDGE_TANSU_BIN`, else where `scripts/stack` builds it.
    pub fn binary() -> PathBuf {
        if let Ok(path) = std::env::var("SYNC_BRIDGE_TANSU_BIN") {
            return PathBuf::from(path);
        }
        let cache = std::env::var("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|_| {
                PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache")
            });
        cache.join("sync-bridge/tansu-0.6.0/bin/tansu")
    }

    /// Starts a broker and waits until it accepts connections.
    pub async fn start(hint: &str) -> Result<PrivateBroker> {
        let dir = TempDir::new(hint)?;
        std::fs::create_dir_all(dir.0.join("data"))?;
        let mut broker = PrivateBroker {
            port: free_port()?,
            child: None,
            dir,
        };
        broker.restart().await?;
        Ok(broker)
    }

    /// `127.0.0.1:<port>`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts the broker again (on the same port and storage).
    pub async fn restart(&mut self) -> Result<()> {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.0.join("broker.log"))?;
        let child = std::process::Command::new(Self::binary())
            .current_dir(&self.dir.0)
            .env_remove("SCHEMA_REGISTRY")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "sqlite://data/tansu.db"])
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("start {}", Self::binary().display()))?;
        self.child = Some(child);
        let address = self.address();
        eventually(
            "the private broker to listen",
            Duration::from_secs(60),
            || {
                let address = address.clone();
                async move {
                    Ok(tokio::net::TcpStream::connect(&address)
                        .await
                        .ok()
                        .map(|_| ()))
                }
            },
        )
        .await
    }

    /// Kills the broker (SIGKILL) and waits for it to exit.
    pub fn kill(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        let _ = self.kill();
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
