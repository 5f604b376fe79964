//! Configuration: a TOML file, then `SYNC_BRIDGE_<SECTION>__<KEY>` overrides.

use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Format, Toml};
use figment::Figment;
use runtime::config::{reject_unknown, UnknownKeys};
use runtime::tls::PgTls;
use serde::Deserialize;

use crate::error::{ApplyError, Result};
use crate::mapping::{Mapping, Side};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub legacy: DatabaseConfig,
    pub platform: DatabaseConfig,
    pub kafka: KafkaConfig,
    #[serde(default)]
    pub apply: ApplyConfig,
    #[serde(default)]
    pub verify: VerifyConfig,
    #[serde(default)]
    pub telemetry: runtime::telemetry::TelemetryConfig,
}

/// One side: where apply writes that side's rows (the connection keys of
/// [`runtime::config::DatabaseConfig`]), and the topic that side's capture
/// produces.
#[derive(Debug, Clone, Deserialize)]
pub struct DatabaseConfig {
    #[serde(flatten)]
    pub database: runtime::config::DatabaseConfig,
    /// The topic this side's capture writes; default `<topic_prefix>.<source>.changes`.
    #[serde(default)]
    pub topic: Option<String>,
    /// Keys no field took, refused at load.
    #[serde(flatten)]
    unknown: UnknownKeys,
}

/// `[kafka]`: the keys both services share (brokers, `topic_prefix`,
/// `create_topic`, `replication_factor`, `properties`, the SASL password:
/// [`runtime::config::KafkaConfig`]) and apply's own. Each side's topic is
/// named in its own section (`legacy.topic`, `platform.topic`), not here.
#[derive(Debug, Clone, Deserialize)]
pub struct KafkaConfig {
    #[serde(flatten)]
    pub client: runtime::config::KafkaConfig,
    /// The consumer group offsets are committed under (for lag monitoring;
    /// apply's own position lives in the target database).
    #[serde(default = "default_group")]
    pub group_id: String,
    /// Where changes that cannot be applied go, with the reason.
    #[serde(default = "default_dead_letter")]
    pub dead_letter_topic: String,
    /// Keys no field took, refused at load.
    #[serde(flatten)]
    unknown: UnknownKeys,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApplyConfig {
    /// The directory of mapping files.
    #[serde(default = "default_mapping_dir")]
    pub mapping_dir: PathBuf,
    /// The prefix of the logical message apply writes first in each of its
    /// transactions (capture flags those transactions as echoes).
    #[serde(default = "default_marker_prefix")]
    pub marker_prefix: String,
    /// The most source events one target transaction carries.
    #[serde(default = "default_batch_events")]
    pub batch_max_events: usize,
    /// How long a target transaction stays open waiting for more source
    /// transactions once the topic is drained.
    #[serde(default = "default_linger", with = "humantime_serde")]
    pub batch_linger: Duration,
    /// The most rows one statement writes.
    #[serde(default = "default_statement_rows")]
    pub statement_max_rows: usize,
    /// Target connections per direction, 1 or 2: with 2, the next batch is
    /// written while the one before it commits (see `direction::Lane`).
    #[serde(default = "default_writers")]
    pub writers: usize,
    /// Events of a source transaction kept to dead-letter it whole if it fails.
    #[serde(default = "default_dead_letter_buffer")]
    pub dead_letter_buffer: usize,
    /// Snapshot events kept in memory while a streaming transaction they
    /// arrived inside is open (they are applied after it); beyond that many,
    /// they are read again from the topic once it has ended.
    #[serde(default = "default_deferred_snapshot_buffer")]
    pub deferred_snapshot_buffer: usize,
    /// How long a direction fetches offsets missing before a message again
    /// (a broker that showed a later batch first) before it goes on
    /// without them (see `runtime::continuity`).
    #[serde(default = "default_offset_gap_wait", with = "humantime_serde")]
    pub offset_gap_wait: Duration,
    #[serde(default = "default_max_backoff", with = "humantime_serde")]
    pub max_backoff: Duration,
    /// How often a running direction forgets tombstones older than the
    /// mapping's `conflicts.tombstone_retention` (also done at each start).
    #[serde(default = "default_prune_interval", with = "humantime_serde")]
    pub tombstone_prune_interval: Duration,
    /// How often rows left out until the target has what they need (a
    /// parent's counterpart, their natural key) are read again from the
    /// source (see `apply::writer`'s `waiting`); they are given up after
    /// the mapping's `conflicts.tombstone_retention`.
    #[serde(default = "default_waiting_retry_interval", with = "humantime_serde")]
    pub waiting_retry_interval: Duration,
}

impl Default for ApplyConfig {
    fn default() -> Self {
        ApplyConfig {
            mapping_dir: default_mapping_dir(),
            marker_prefix: default_marker_prefix(),
            batch_max_events: default_batch_events(),
            batch_linger: default_linger(),
            statement_max_rows: default_statement_rows(),
            writers: default_writers(),
            dead_letter_buffer: default_dead_letter_buffer(),
            deferred_snapshot_buffer: default_deferred_snapshot_buffer(),
            offset_gap_wait: default_offset_gap_wait(),
            max_backoff: default_max_backoff(),
            tombstone_prune_interval: default_prune_interval(),
            waiting_retry_interval: default_waiting_retry_interval(),
        }
    }
}

/// `[verify]`: the comparison of the two databases that apply runs on a
/// schedule, and `apply verify` runs once (see [`crate::verify`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyConfig {
    /// How often a complete pass is due; `0s` turns the schedule off
    /// (`apply verify` still runs).
    #[serde(default = "default_verify_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// How long after apply starts the schedule first looks at what is due.
    #[serde(default = "default_verify_first_delay", with = "humantime_serde")]
    pub first_delay: Duration,
    /// Rows read from each side per chunk.
    #[serde(default = "default_verify_chunk_rows")]
    pub chunk_rows: usize,
    /// A pause after each chunk, to keep the load on both databases low.
    #[serde(default = "default_verify_pause", with = "humantime_serde")]
    pub pause: Duration,
    /// How long a row that differs is left before it is read again: one
    /// that still differs, unchanged on both sides, is reported; one that
    /// changed meanwhile was in flight and is looked at again. Set it above
    /// apply's usual end-to-end lag.
    #[serde(default = "default_verify_settle", with = "humantime_serde")]
    pub settle: Duration,
    /// The most keys a report lists per entity and kind of difference
    /// (the rest are counted).
    #[serde(default = "default_verify_max_listed")]
    pub max_listed: usize,
}

impl Default for VerifyConfig {
    fn default() -> Self {
        VerifyConfig {
            interval: default_verify_interval(),
            first_delay: default_verify_first_delay(),
            chunk_rows: default_verify_chunk_rows(),
            pause: default_verify_pause(),
            settle: default_verify_settle(),
            max_listed: default_verify_max_listed(),
        }
    }
}

fn default_verify_interval() -> Duration {
    Duration::from_secs(24 * 3600)
}
fn default_verify_first_delay() -> Duration {
    Duration::from_secs(600)
}
fn default_verify_chunk_rows() -> usize {
    1000
}
fn default_verify_pause() -> Duration {
    Duration::from_millis(10)
}
fn default_verify_settle() -> Duration {
    Duration::from_secs(30)
}
fn default_verify_max_listed() -> usize {
    1000
}

fn default_group() -> String {
    "syncbridge-apply".into()
}
fn default_dead_letter() -> String {
    "syncbridge.dead-letter".into()
}
fn default_mapping_dir() -> PathBuf {
    PathBuf::from("schemas/mapping")
}
fn default_marker_prefix() -> String {
    "syncbridge.apply".into()
}
/// Smaller batches hand over between the two writers more often, so a
/// transaction that waits for the batch before (children after their
/// parents) waits for less: 500 measured faster than 1,000 in alternating
/// runs of `scripts/bench apply`, and 250 or 350 no faster than 500.
fn default_batch_events() -> usize {
    500
}
fn default_writers() -> usize {
    2
}
fn default_linger() -> Duration {
    Duration::ZERO
}
fn default_statement_rows() -> usize {
    1000
}
fn default_dead_letter_buffer() -> usize {
    10_000
}
fn default_deferred_snapshot_buffer() -> usize {
    10_000
}
fn default_offset_gap_wait() -> Duration {
    // Longer than a broker on an object store may retry one put.
    Duration::from_secs(300)
}
fn default_waiting_retry_interval() -> Duration {
    Duration::from_secs(2)
}

fn default_prune_interval() -> Duration {
    Duration::from_secs(600)
}
fn default_max_backoff() -> Duration {
    Duration::from_secs(30)
}

impl Config {
    pub fn load(path: Option<&Path>) -> Result<Config> {
        Self::from_figment(runtime::config::layers(path).map_err(ApplyError::Config)?)
    }

    pub fn from_toml(text: &str) -> Result<Config> {
        Self::from_figment(Figment::new().merge(Toml::string(text)))
    }

    fn from_figment(figment: Figment) -> Result<Config> {
        let mut config: Config = figment
            .extract()
            .map_err(|e| ApplyError::Config(e.to_string()))?;
        config
            .kafka
            .client
            .resolve_secrets()
            .map_err(ApplyError::Config)?;
        reject_unknown("kafka", &config.kafka.unknown).map_err(ApplyError::Config)?;
        if config.kafka.client.topic.is_some() {
            return Err(ApplyError::Config(
                "kafka.topic names capture's topic: apply reads legacy.topic and platform.topic"
                    .to_owned(),
            ));
        }
        for side in [Side::Legacy, Side::Platform] {
            reject_unknown(side.as_str(), &config.database(side).unknown)
                .map_err(ApplyError::Config)?;
            config.pg_config(side)?;
            config
                .tls(side)?
                .validate(side.as_str())
                .map_err(ApplyError::Config)?;
        }
        if !(1..=2).contains(&config.apply.writers) {
            return Err(ApplyError::Config("apply.writers must be 1 or 2".into()));
        }
        if config.apply.batch_max_events == 0 || config.apply.statement_max_rows == 0 {
            return Err(ApplyError::Config(
                "apply.batch_max_events and apply.statement_max_rows must be at least 1".into(),
            ));
        }
        Ok(config)
    }

    pub fn database(&self, side: Side) -> &DatabaseConfig {
        match side {
            Side::Legacy => &self.legacy,
            Side::Platform => &self.platform,
        }
    }

    /// The topic of `side`'s changes, given its source name.
    pub fn topic(&self, side: Side, source: &str) -> String {
        self.database(side)
            .topic
            .clone()
            .unwrap_or_else(|| format!("{}.{source}.changes", self.kafka.client.topic_prefix))
    }

    /// Each side's topic, its source name taken from `mapping`, refused
    /// unless the two are distinct from each other and from the dead-letter
    /// topic: apply would read its own dead letters, or one side's changes,
    /// as the other side's, and dead-letter them again and again.
    pub fn topics(&self, mapping: &Mapping) -> Result<[(Side, String); 2]> {
        let [legacy, platform] =
            [Side::Legacy, Side::Platform].map(|side| self.topic(side, &mapping.side(side).source));
        let dead_letter = &self.kafka.dead_letter_topic;
        if legacy == platform {
            return Err(ApplyError::Config(format!(
                "legacy and platform read the same topic {legacy}: give each side its own (legacy.topic, platform.topic)"
            )));
        }
        if let Some(side) = [(&legacy, "legacy"), (&platform, "platform")]
            .into_iter()
            .find_map(|(topic, side)| (topic == dead_letter).then_some(side))
        {
            return Err(ApplyError::Config(format!(
                "{side}'s topic {dead_letter} is also kafka.dead_letter_topic: dead letters need a topic of their own"
            )));
        }
        Ok([(Side::Legacy, legacy), (Side::Platform, platform)])
    }

    /// How connections to `side` are secured.
    pub fn tls(&self, side: Side) -> Result<PgTls> {
        let database = &self.database(side).database;
        let url = database
            .parse_url(side.as_str())
            .map_err(ApplyError::Config)?;
        Ok(database.tls(&url))
    }

    /// Connects to `side` (TLS as configured, answers due within the
    /// section's `response_timeout`) and drives the connection in the
    /// background.
    pub async fn connect(&self, side: Side) -> Result<tokio_postgres::Client> {
        let tls = self.tls(side)?;
        let connector = tls.connector().map_err(ApplyError::Config)?;
        let response_timeout = self.database(side).database.response_timeout;
        let (client, connection) =
            runtime::link::connect(&self.pg_config(side)?, connector, response_timeout)
                .await
                .map_err(|e| match e {
                    runtime::link::LinkError::Postgres(e) => {
                        let database = format!("the {} database", side.as_str());
                        match runtime::tls::refusal_advice(&e, side.as_str(), &database, tls.mode) {
                            Some(advice) => ApplyError::Config(advice),
                            None => ApplyError::postgres(side.as_str(), "connect", e),
                        }
                    }
                    runtime::link::LinkError::Unreachable(e) => ApplyError::Runtime(e),
                })?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "database connection closed");
            }
        });
        Ok(client)
    }

    /// Connection settings for `side`, password applied, sessions in UTC.
    pub fn pg_config(&self, side: Side) -> Result<tokio_postgres::Config> {
        let database = &self.database(side).database;
        let mut pg = database
            .parse_url(side.as_str())
            .map_err(ApplyError::Config)?;
        if let Some(password) = database
            .password(side.as_str())
            .map_err(ApplyError::Config)?
        {
            pg.password(password.expose());
        }
        self.tls(side)?.configure(&mut pg);
        pg.application_name("syncbridge-apply");
        // A session of apply's that the server keeps while apply lost it
        // (a link that stopped forwarding, cut by `response_timeout` on
        // apply's side) would hold its open transaction's locks for good,
        // and every later attempt would wait behind them: the server ends
        // it once it has been idle in its transaction that long. apply
        // never leaves a transaction idle for long (`apply.batch_linger`).
        // And the server probes apply's end as apply probes its own: when
        // apply is gone behind a partition, the server ends its sessions,
        // and their locks (the lease's among them) go, within about a
        // minute instead of the server's default (the OS's, two hours).
        let mut options = format!(
            "{} {}",
            pg::session::OPTIONS,
            database.server_keepalive_options()
        );
        if let Some(limit) = database.database_idle_limit() {
            options.push_str(&format!(
                " -c idle_in_transaction_session_timeout={}",
                limit.as_millis()
            ));
        }
        pg.options(options);
        Ok(pg)
    }
}

impl KafkaConfig {
    /// The settings the shared Kafka helpers take.
    pub fn as_client(&self) -> &runtime::config::KafkaConfig {
        &self.client
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use runtime::tls::SslMode;

    const SECURED: &str = r#"
        [legacy]
        url = "postgres://apply@legacy-db/legacy"
        sslmode = "verify-full"
        sslrootcert = "/etc/ca.crt"
        [platform]
        url = "postgres://apply@platform-db/platform?sslmode=require"
        [kafka]
        brokers = "broker:9093"
        sasl_password = "kafka-Secret-42"
        [kafka.properties]
        "security.protocol" = "SASL_SSL"
        "sasl.username" = "syncbridge"
    "#;

    #[test]
    fn tls_settings_per_database_and_the_kafka_password_reach_the_clients() {
        let config = Config::from_toml(SECURED).unwrap();
        assert_eq!(config.tls(Side::Legacy).unwrap().mode, SslMode::VerifyFull);
        // Without the key, the URL's sslmode counts.
        assert_eq!(config.tls(Side::Platform).unwrap().mode, SslMode::Require);
        let client = runtime::kafka::client_config(config.kafka.as_client());
        assert_eq!(client.get("sasl.password"), Some("kafka-Secret-42"));
        assert_eq!(client.get("security.protocol"), Some("SASL_SSL"));
        assert!(!format!("{config:?}").contains("kafka-Secret-42"));
    }

    fn reference_mapping() -> Mapping {
        Mapping::load_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas/mapping"))
            .unwrap()
    }

    #[test]
    fn unknown_keys_beside_the_shared_keys_are_rejected() {
        for (section, text) in [
            (
                "legacy",
                SECURED.replace("[legacy]", "[legacy]\nurll = \"x\""),
            ),
            (
                "kafka",
                SECURED.replace("[kafka]\n", "[kafka]\nbrokerz = \"x\"\n"),
            ),
        ] {
            let error = Config::from_toml(&text).unwrap_err().to_string();
            assert!(error.contains(&format!("[{section}]")), "{error}");
        }
        let text = SECURED.replace("[kafka]\n", "[kafka]\ntopic = \"t\"\n");
        let error = Config::from_toml(&text).unwrap_err().to_string();
        assert!(error.contains("legacy.topic"), "{error}");
    }

    #[test]
    fn a_dead_letter_topic_that_is_also_a_source_topic_is_refused() {
        let text = SECURED
            .replace("[platform]", "[platform]\ntopic = \"shared.changes\"")
            .replace("[kafka]", "[kafka]\ndead_letter_topic = \"shared.changes\"");
        let config = Config::from_toml(&text).unwrap();
        let error = config.topics(&reference_mapping()).unwrap_err().to_string();
        assert!(error.contains("platform's topic shared.changes"), "{error}");
        assert!(error.contains("kafka.dead_letter_topic"), "{error}");
    }

    #[test]
    fn two_sides_reading_one_topic_are_refused_and_distinct_topics_pass() {
        let mapping = reference_mapping();
        let text = SECURED
            .replace("[legacy]", "[legacy]\ntopic = \"shared.changes\"")
            .replace("[platform]", "[platform]\ntopic = \"shared.changes\"");
        let error = Config::from_toml(&text)
            .unwrap()
            .topics(&mapping)
            .unwrap_err()
            .to_string();
        assert!(error.contains("the same topic shared.changes"), "{error}");
        let config = Config::from_toml(SECURED).unwrap();
        let [(_, legacy), (_, platform)] = config.topics(&mapping).unwrap();
        assert_eq!(
            legacy,
            config.topic(Side::Legacy, &mapping.side(Side::Legacy).source)
        );
        assert_ne!(legacy, platform);
    }

    #[test]
    fn a_verifying_mode_without_a_root_certificate_is_refused() {
        let text = SECURED.replace("sslrootcert = \"/etc/ca.crt\"\n", "");
        let error = Config::from_toml(&text).unwrap_err().to_string();
        assert!(error.contains("legacy.sslrootcert"), "{error}");
    }
}
