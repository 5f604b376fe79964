//! Capture's configuration: the `[source]`, `[capture]`, `[polling]` and
//! `[snapshot]` sections, with `[kafka]` and `[telemetry]` as both services
//! read them. Layering (file, then `SYNC_BRIDGE_*` environment) and secrets
//! are [`runtime::config`]'s.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use figment::providers::{Format, Toml};
use figment::Figment;
use pg::ident::TableName;
use runtime::config::{layers, reject_unknown, DatabaseConfig, KafkaConfig, Secret, UnknownKeys};
use runtime::tls::PgTls;
use serde::Deserialize;

use crate::error::{CaptureError, Result};

/// The whole capture configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub source: SourceConfig,
    pub kafka: KafkaConfig,
    #[serde(default)]
    pub capture: CaptureConfig,
    #[serde(default)]
    pub telemetry: runtime::telemetry::TelemetryConfig,
    /// The polling fallback's settings, read when `capture.mode = "polling"`.
    #[serde(default)]
    pub polling: PollingConfig,
    #[serde(default)]
    pub snapshot: SnapshotConfig,
}

/// The source database and what to read from it. Its connection keys
/// (`url`, `password`, `password_file`, `sslmode`, `sslrootcert`) are
/// [`DatabaseConfig`]'s; `sslmode` covers both the query and the
/// replication connection.
#[derive(Debug, Clone, Deserialize)]
pub struct SourceConfig {
    /// The logical name of this source (`legacy`, `platform`): written into
    /// every event and used in default topic, slot and publication names.
    pub name: String,
    #[serde(flatten)]
    pub database: DatabaseConfig,
    /// Tables to publish, as `schema.table` (or `table` for `public`).
    /// Empty means: use the publication as it is, which must then exist.
    #[serde(default)]
    pub tables: Vec<String>,
    /// Publication name; default `syncbridge_<name>`.
    #[serde(default)]
    pub publication: Option<String>,
    /// Replication slot name; default `syncbridge_<name>`.
    #[serde(default)]
    pub slot: Option<String>,
    /// Keys no field took, refused at load.
    #[serde(flatten)]
    unknown: UnknownKeys,
}

/// How capture behaves.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptureConfig {
    /// How changes are read: `streaming` (logical replication, the default)
    /// or `polling` (the fallback for a source without logical replication:
    /// see [`crate::polling`]).
    #[serde(default)]
    pub mode: ReadMode,
    /// The prefix of the logical message that apply writes first in each of
    /// its transactions; transactions carrying it are flagged as echoes.
    #[serde(default = "default_marker_prefix")]
    pub marker_prefix: String,
    /// How often to write a heartbeat into the source so that a quiet
    /// database's slot keeps moving; `0s` turns it off.
    #[serde(default = "default_heartbeat", with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// How long the replication stream may stay silent before capture takes
    /// the link for dead and reconnects (a half-open connection, a peer gone
    /// without a word). The heartbeat makes a healthy stream speak at least
    /// every `heartbeat_interval`, so this applies only while the heartbeat
    /// is on, and must be longer than it; `0s` turns it off. The heartbeat
    /// itself and connecting for replication are bounded by it too.
    #[serde(default = "default_receive_timeout", with = "humantime_serde")]
    pub receive_timeout: Duration,
    /// How often the acknowledged position is reported to Postgres.
    #[serde(default = "default_status_interval", with = "humantime_serde")]
    pub status_interval: Duration,
    /// The most events handed to Kafka and not yet confirmed. Bounds memory.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// How long a shutdown may wait for in-flight deliveries.
    #[serde(default = "default_shutdown_timeout", with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// The longest wait between two attempts to reconnect.
    #[serde(default = "default_max_backoff", with = "humantime_serde")]
    pub max_backoff: Duration,
    /// What a streaming start does when the slot is missing although the
    /// topic holds streamed events (see [`crate::recovery`]).
    #[serde(default)]
    pub on_lost_slot: OnLostSlot,
}

/// What capture does about a lost replication slot: the changes that
/// committed between the topic's last streamed event and the new slot
/// never reached Kafka.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnLostSlot {
    /// Read every row changed since that last event (minus
    /// `polling.overlap`) the way the polling fallback does, then stream.
    /// Needs `polling.updated_at_column` in every table and the polling
    /// tables in `syncbridge`; without them capture refuses.
    #[default]
    CatchUp,
    /// Stop with exit code 2 and say what to do.
    Refuse,
    /// Stream on from the new slot: an operator has seen the loss and
    /// re-copies what is missing (`capture snapshot`, `apply check`).
    Continue,
}

impl Default for CaptureConfig {
    fn default() -> Self {
        CaptureConfig {
            mode: ReadMode::default(),
            marker_prefix: default_marker_prefix(),
            heartbeat_interval: default_heartbeat(),
            receive_timeout: default_receive_timeout(),
            status_interval: default_status_interval(),
            max_in_flight: default_max_in_flight(),
            shutdown_timeout: default_shutdown_timeout(),
            max_backoff: default_max_backoff(),
            on_lost_slot: OnLostSlot::default(),
        }
    }
}

/// How capture reads the source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReadMode {
    /// Logical replication through a slot.
    #[default]
    Streaming,
    /// Reading the tables on `updated_at` every `polling.interval`.
    Polling,
}

/// The polling fallback (see [`crate::polling`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PollingConfig {
    /// How often each table is read.
    #[serde(default = "default_poll_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// How far before the watermark each round starts reading again, to catch
    /// rows whose transaction committed after a later `updated_at` was read
    /// (`updated_at = now()` is the transaction's start, not its commit) and
    /// `updated_at` columns truncated to the second. Longer than the longest
    /// writing transaction.
    #[serde(default = "default_poll_overlap", with = "humantime_serde")]
    pub overlap: Duration,
    /// Rows per page (one pseudo-transaction, and the memory bound).
    #[serde(default = "default_page_size")]
    pub page_size: usize,
    /// How often deletes are looked for (a full key comparison per table).
    #[serde(default = "default_reconcile_interval", with = "humantime_serde")]
    pub reconcile_interval: Duration,
    /// The column holding each row's last modification time
    /// (timestamp, timestamptz or date), in every polled table.
    #[serde(default = "default_updated_at_column")]
    pub updated_at_column: String,
    /// Where a table without a stored watermark starts, as a timestamp in
    /// the column's text form (`2026-11-22 04:00:00+00`); unset: from the
    /// beginning (every row is sent once).
    #[serde(default)]
    pub start_from: Option<String>,
}

impl Default for PollingConfig {
    fn default() -> Self {
        PollingConfig {
            interval: default_poll_interval(),
            overlap: default_poll_overlap(),
            page_size: default_page_size(),
            reconcile_interval: default_reconcile_interval(),
            updated_at_column: default_updated_at_column(),
            start_from: None,
        }
    }
}

fn default_poll_interval() -> Duration {
    Duration::from_secs(60)
}
fn default_poll_overlap() -> Duration {
    Duration::from_secs(5)
}
fn default_page_size() -> usize {
    1000
}
fn default_reconcile_interval() -> Duration {
    Duration::from_secs(600)
}
fn default_updated_at_column() -> String {
    "updated_at".to_owned()
}

fn default_marker_prefix() -> String {
    "syncbridge.apply".to_owned()
}
fn default_heartbeat() -> Duration {
    Duration::from_secs(30)
}

fn default_receive_timeout() -> Duration {
    Duration::from_secs(120)
}
fn default_status_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_max_in_flight() -> usize {
    20_000
}
fn default_shutdown_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_max_backoff() -> Duration {
    Duration::from_secs(30)
}

/// Where and as whom to connect, parsed out of the URL.
#[derive(Clone)]
pub struct Connection {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Secret,
    pub dbname: String,
    /// How both connections are secured.
    pub tls: PgTls,
    /// How long the query connection waits for the server to start
    /// answering (`source.response_timeout`, see [`runtime::link`]).
    pub response_timeout: std::time::Duration,
    pg: tokio_postgres::Config,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self)
    }
}

impl fmt::Display for Connection {
    /// `user@host:port/dbname`, never the password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}@{}:{}/{}",
            self.user, self.host, self.port, self.dbname
        )
    }
}

impl Connection {
    /// The tokio-postgres config for ordinary queries.
    pub fn pg_config(&self) -> &tokio_postgres::Config {
        &self.pg
    }
}

impl Config {
    /// Reads `path` (if given) and applies `SYNC_BRIDGE_*` environment overrides.
    pub fn load(path: Option<&Path>) -> Result<Config> {
        Self::from_figment(layers(path).map_err(CaptureError::Config)?)
    }

    /// Parses a TOML document (no environment), for tests and tools.
    pub fn from_toml(text: &str) -> Result<Config> {
        Self::from_figment(Figment::new().merge(Toml::string(text)))
    }

    fn from_figment(figment: Figment) -> Result<Config> {
        let mut config: Config = figment
            .extract()
            .map_err(|e| CaptureError::Config(e.to_string()))?;
        config
            .kafka
            .resolve_secrets()
            .map_err(CaptureError::Config)?;
        config.validate()?;
        Ok(config)
    }

    /// How long the replication stream may stay silent (see
    /// `capture.receive_timeout`): `None` when the heartbeat or the deadline
    /// is off.
    pub fn receive_deadline(&self) -> Option<Duration> {
        let capture = &self.capture;
        (!capture.heartbeat_interval.is_zero() && !capture.receive_timeout.is_zero())
            .then_some(capture.receive_timeout)
    }

    fn validate(&self) -> Result<()> {
        reject_unknown("source", &self.source.unknown).map_err(CaptureError::Config)?;
        let name = &self.source.name;
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(CaptureError::Config(format!(
                "source.name must be non-empty letters, digits, '_' or '-' (got {name:?})"
            )));
        }
        for identifier in [self.slot_name(), self.publication_name()] {
            if !pg::ident::is_plain(&identifier) || identifier.len() > 63 {
                return Err(CaptureError::Config(format!(
                    "slot and publication names must be lower-case letters, digits and '_', at most 63 characters (got {identifier:?})"
                )));
            }
        }
        if self.capture.max_in_flight == 0 {
            return Err(CaptureError::Config(
                "capture.max_in_flight must be at least 1".to_owned(),
            ));
        }
        if self.receive_deadline().is_some()
            && self.capture.receive_timeout <= self.capture.heartbeat_interval
        {
            return Err(CaptureError::Config(format!(
                "capture.receive_timeout ({:?}) must be longer than capture.heartbeat_interval ({:?}): a healthy stream speaks once per heartbeat",
                self.capture.receive_timeout, self.capture.heartbeat_interval
            )));
        }
        if self.polling.page_size == 0 || self.polling.interval.is_zero() {
            return Err(CaptureError::Config(
                "polling.page_size and polling.interval must be above zero".to_owned(),
            ));
        }
        if self.capture.mode == ReadMode::Polling && self.source.tables.is_empty() {
            return Err(CaptureError::Config(
                "polling reads source.tables: list them, parents first".to_owned(),
            ));
        }
        self.connection()?;
        for table in &self.source.tables {
            TableName::parse(table)?;
        }
        Ok(())
    }

    pub fn slot_name(&self) -> String {
        self.source
            .slot
            .clone()
            .unwrap_or_else(|| format!("syncbridge_{}", self.source.name.replace('-', "_")))
    }

    pub fn publication_name(&self) -> String {
        self.source
            .publication
            .clone()
            .unwrap_or_else(|| format!("syncbridge_{}", self.source.name.replace('-', "_")))
    }

    pub fn topic(&self) -> String {
        self.kafka
            .topic
            .clone()
            .unwrap_or_else(|| format!("{}.{}.changes", self.kafka.topic_prefix, self.source.name))
    }

    /// The tables to publish.
    pub fn tables(&self) -> Result<Vec<TableName>> {
        self.source
            .tables
            .iter()
            .map(|t| TableName::parse(t).map_err(CaptureError::from))
            .collect()
    }

    /// Connection settings from the URL and the password sources.
    pub fn connection(&self) -> Result<Connection> {
        let database = &self.source.database;
        let pg = database.parse_url("source").map_err(CaptureError::Config)?;
        let host = match pg.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
            #[cfg(unix)]
            Some(tokio_postgres::config::Host::Unix(path)) => path.display().to_string(),
            None => "localhost".to_owned(),
        };
        let port = pg.get_ports().first().copied().unwrap_or(5432);
        let user = pg
            .get_user()
            .ok_or_else(|| CaptureError::Config("source.url names no user".to_owned()))?
            .to_owned();
        let dbname = pg.get_dbname().unwrap_or(&user).to_owned();
        let password = self.password(&pg)?;
        let tls = database.tls(&pg);
        tls.validate("source").map_err(CaptureError::Config)?;
        let mut pg = pg;
        tls.configure(&mut pg);
        pg.password(password.expose());
        pg.application_name(format!("syncbridge-capture-{}", self.source.name));
        Ok(Connection {
            host,
            port,
            user,
            password,
            dbname,
            tls,
            response_timeout: database.response_timeout,
            pg,
        })
    }

    fn password(&self, pg: &tokio_postgres::Config) -> Result<Secret> {
        let given = self
            .source
            .database
            .password("source")
            .map_err(CaptureError::Config)?;
        // The replication connection needs the password itself: the URL's
        // when none is given apart.
        Ok(given.unwrap_or_else(|| {
            Secret::new(
                pg.get_password()
                    .map(|p| String::from_utf8_lossy(p).into_owned())
                    .unwrap_or_default(),
            )
        }))
    }
}

/// Settings of `capture snapshot` (`[snapshot]` in the capture config).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotConfig {
    /// Rows per page: one page is one read transaction and one
    /// pseudo-transaction on the topic; bounds memory.
    #[serde(default = "default_snapshot_page_size")]
    pub page_size: usize,
    /// How often a progress line is logged when stderr is not a terminal.
    #[serde(default = "default_progress_interval", with = "humantime_serde")]
    pub progress_interval: Duration,
}

impl Default for SnapshotConfig {
    fn default() -> Self {
        SnapshotConfig {
            page_size: default_snapshot_page_size(),
            progress_interval: default_progress_interval(),
        }
    }
}

fn default_snapshot_page_size() -> usize {
    5_000
}

fn default_progress_interval() -> Duration {
    Duration::from_secs(10)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        [source]
        name = "legacy"
        url = "postgres://capture:hunter2@127.0.0.1:5433/legacy"
        tables = ["users", "public.teams"]
        [kafka]
        brokers = "127.0.0.1:9092"
    "#;

    #[test]
    fn names_default_from_the_source_name() {
        let config = Config::from_toml(MINIMAL).unwrap();
        assert_eq!(config.slot_name(), "syncbridge_legacy");
        assert_eq!(config.publication_name(), "syncbridge_legacy");
        assert_eq!(config.topic(), "syncbridge.legacy.changes");
        assert_eq!(
            config.tables().unwrap()[0],
            TableName {
                schema: "public".into(),
                table: "users".into()
            }
        );
    }

    #[test]
    fn the_password_never_appears_in_debug_output() {
        let config = Config::from_toml(MINIMAL).unwrap();
        let connection = config.connection().unwrap();
        assert_eq!(connection.password.expose(), "hunter2");
        assert!(!format!("{config:?}").contains("hunter2"));
        assert!(!format!("{connection:?}").contains("hunter2"));
        assert_eq!(connection.to_string(), "capture@127.0.0.1:5433/legacy");
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let text = MINIMAL.replace("[kafka]", "[kafka]\nbrokerz = \"x\"");
        let error = Config::from_toml(&text).unwrap_err().to_string();
        assert!(error.contains("brokerz"), "{error}");
    }

    #[test]
    fn an_unknown_key_beside_the_shared_connection_keys_is_rejected() {
        let text = MINIMAL.replace("[source]", "[source]\nsslmod = \"require\"");
        let error = Config::from_toml(&text).unwrap_err().to_string();
        assert!(
            error.contains("`sslmod`") && error.contains("[source]"),
            "{error}"
        );
    }

    #[test]
    fn a_bad_url_is_reported_without_echoing_it() {
        let text = MINIMAL.replace(
            "postgres://capture:hunter2@",
            "postgres://capture:hunter2@[",
        );
        let error = Config::from_toml(&text).unwrap_err().to_string();
        assert!(error.contains("source.url"), "{error}");
        assert!(!error.contains("hunter2"), "{error}");
    }

    #[test]
    fn telemetry_defaults_and_overrides() {
        let config = Config::from_toml(MINIMAL).unwrap();
        assert_eq!(config.telemetry.listen, "0.0.0.0:9090");
        assert_eq!(config.telemetry.dogstatsd, None);
        let text = format!("{MINIMAL}\n[telemetry]\nlisten = \"off\"\ndogstatsd = \"127.0.0.1:8125\"\nsample_interval = \"1s\"\n");
        let config = Config::from_toml(&text).unwrap();
        assert!(runtime::telemetry::disabled(&config.telemetry.listen));
        assert_eq!(
            config.telemetry.dogstatsd.as_deref(),
            Some("127.0.0.1:8125")
        );
        assert_eq!(config.telemetry.sample_interval, Duration::from_secs(1));
    }

    #[test]
    fn polling_is_chosen_and_tuned_in_its_own_section() {
        let text = format!(
            "{MINIMAL}\n[capture]\nmode = \"polling\"\n[polling]\ninterval = \"1s\"\npage_size = 100\n"
        );
        let config = Config::from_toml(&text).unwrap();
        assert_eq!(config.capture.mode, ReadMode::Polling);
        assert_eq!(config.polling.interval, Duration::from_secs(1));
        assert_eq!(config.polling.page_size, 100);
        assert_eq!(config.polling.updated_at_column, "updated_at");
        assert_eq!(
            Config::from_toml(MINIMAL).unwrap().capture.mode,
            ReadMode::Streaming
        );
    }

    #[test]
    fn durations_read_as_human_text() {
        let text = format!("{MINIMAL}\n[capture]\nheartbeat_interval = \"2s\"\n");
        let config = Config::from_toml(&text).unwrap();
        assert_eq!(config.capture.heartbeat_interval, Duration::from_secs(2));
    }

    const SECURED: &str = r#"
        [source]
        name = "legacy"
        url = "postgres://capture@db:5432/legacy"
        [kafka]
        brokers = "broker-1:9093,broker-2:9093"
        sasl_password = "kafka-Secret-42"
        [kafka.properties]
        "security.protocol" = "SASL_SSL"
        "sasl.mechanism" = "SCRAM-SHA-512"
        "sasl.username" = "syncbridge"
        "ssl.ca.location" = "/etc/sync-bridge/ca/kafka-ca.crt"
    "#;

    fn assert_secured(client: &rdkafka::ClientConfig) {
        assert_eq!(
            client.get("bootstrap.servers"),
            Some("broker-1:9093,broker-2:9093")
        );
        assert_eq!(client.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(client.get("sasl.mechanism"), Some("SCRAM-SHA-512"));
        assert_eq!(client.get("sasl.username"), Some("syncbridge"));
        assert_eq!(client.get("sasl.password"), Some("kafka-Secret-42"));
        assert_eq!(
            client.get("ssl.ca.location"),
            Some("/etc/sync-bridge/ca/kafka-ca.crt")
        );
    }

    #[test]
    fn tls_and_sasl_settings_reach_every_client_and_the_password_stays_redacted() {
        let config = Config::from_toml(SECURED).unwrap();
        assert_secured(&runtime::kafka::client_config(&config.kafka));
        assert!(!format!("{config:?}").contains("kafka-Secret-42"));
        assert!(!format!("{:?}", config.kafka).contains("kafka-Secret-42"));
        // rdkafka's own Debug leaves sensitive keys out, too.
        assert!(
            !format!("{:?}", runtime::kafka::client_config(&config.kafka))
                .contains("kafka-Secret-42")
        );
    }

    #[test]
    fn the_sasl_password_can_come_from_a_file() {
        let dir = std::env::temp_dir().join(format!("syncbridge-sasl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("sasl-password");
        std::fs::write(&file, "kafka-Secret-42\n").unwrap();
        let text = SECURED.replace(
            "sasl_password = \"kafka-Secret-42\"",
            &format!("sasl_password_file = {:?}", file.display().to_string()),
        );
        let config = Config::from_toml(&text).unwrap();
        assert_secured(&runtime::kafka::client_config(&config.kafka));
        let missing = SECURED.replace(
            "sasl_password = \"kafka-Secret-42\"",
            "sasl_password_file = \"/nonexistent/sasl-password\"",
        );
        let error = Config::from_toml(&missing).unwrap_err().to_string();
        assert!(error.contains("kafka.sasl_password_file"), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
