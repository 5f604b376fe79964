//! Configuration: a TOML file, then environment overrides.
//!
//! Every key of the file can be overridden by an environment variable named
//! `SYNC_BRIDGE_` followed by the key path in capitals with `__` between
//! levels, e.g. `SYNC_BRIDGE_SOURCE__URL` or `SYNC_BRIDGE_KAFKA__BROKERS`.
//! Secrets belong in the environment (`SYNC_BRIDGE_SOURCE__PASSWORD`) or in a
//! file (`source.password_file`), never in the TOML file; they are never
//! logged: [`Secret`] prints as `***`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use figment::providers::{Env, Format, Toml};
use figment::Figment;
use serde::Deserialize;

use crate::error::{CaptureError, Result};

/// The environment prefix for overrides.
pub const ENV_PREFIX: &str = "SYNC_BRIDGE_";

/// A value that must never appear in logs.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// The configuration sources every service reads, in order: the TOML file at
/// `path` (if given), then `SYNC_BRIDGE_<SECTION>__<KEY>` environment
/// variables. Other `SYNC_BRIDGE_*` variables (`SYNC_BRIDGE_CONFIG`, the test
/// stack's settings) are not configuration and are ignored. The error is a
/// message for the operator.
pub fn layers(path: Option<&Path>) -> std::result::Result<Figment, String> {
    let mut figment = Figment::new();
    if let Some(path) = path {
        if !path.exists() {
            return Err(format!("config file {} does not exist", path.display()));
        }
        figment = figment.merge(Toml::file(path));
    }
    Ok(figment.merge(
        Env::prefixed(ENV_PREFIX)
            .filter(|key| key.as_str().contains("__"))
            .split("__"),
    ))
}

/// The whole capture configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub source: SourceConfig,
    pub kafka: KafkaConfig,
    #[serde(default)]
    pub capture: CaptureConfig,
    #[serde(default)]
    pub snapshot: crate::snapshot::SnapshotConfig,
}

/// The source database and what to read from it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// The logical name of this source (`legacy`, `platform`): written into
    /// every event and used in default topic, slot and publication names.
    pub name: String,
    /// A libpq-style URL: `postgres://user@host:port/dbname`. A password in
    /// the URL works but is better given through `password` or `password_file`.
    pub url: Secret,
    /// The password, best set through `SYNC_BRIDGE_SOURCE__PASSWORD`.
    #[serde(default)]
    pub password: Option<Secret>,
    /// A file whose first line is the password (a mounted Kubernetes secret).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
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
}

/// Where events go.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap servers, `host:port[,host:port]`.
    pub brokers: String,
    /// The topic prefix; the topic is `<topic_prefix>.<source.name>.changes`.
    #[serde(default = "default_topic_prefix")]
    pub topic_prefix: String,
    /// The full topic name, overriding the prefix rule.
    #[serde(default)]
    pub topic: Option<String>,
    /// Create the topic (one partition) when it does not exist.
    #[serde(default = "default_true")]
    pub create_topic: bool,
    /// Replication factor for a topic capture creates.
    #[serde(default = "default_replication_factor")]
    pub replication_factor: i32,
    /// Extra librdkafka properties (`security.protocol`, `sasl.*`, ...).
    /// Values given here win over capture's defaults except the ones that
    /// guarantee delivery (`enable.idempotence`, `acks`).
    #[serde(default)]
    pub properties: BTreeMap<String, Secret>,
}

/// How capture behaves.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptureConfig {
    /// The prefix of the logical message that apply writes first in each of
    /// its transactions; transactions carrying it are flagged as echoes.
    #[serde(default = "default_marker_prefix")]
    pub marker_prefix: String,
    /// How often to write a heartbeat into the source so that a quiet
    /// database's slot keeps moving; `0s` turns it off.
    #[serde(default = "default_heartbeat", with = "humantime_serde")]
    pub heartbeat_interval: Duration,
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
}

impl Default for CaptureConfig {
    fn default() -> Self {
        CaptureConfig {
            marker_prefix: default_marker_prefix(),
            heartbeat_interval: default_heartbeat(),
            status_interval: default_status_interval(),
            max_in_flight: default_max_in_flight(),
            shutdown_timeout: default_shutdown_timeout(),
            max_backoff: default_max_backoff(),
        }
    }
}

fn default_topic_prefix() -> String {
    "syncbridge".to_owned()
}
fn default_true() -> bool {
    true
}
fn default_replication_factor() -> i32 {
    1
}
fn default_marker_prefix() -> String {
    "syncbridge.apply".to_owned()
}
fn default_heartbeat() -> Duration {
    Duration::from_secs(30)
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
        let config: Config = figment
            .extract()
            .map_err(|e| CaptureError::Config(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<()> {
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
            if !is_plain_identifier(&identifier) || identifier.len() > 63 {
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
            .map(|t| TableName::parse(t))
            .collect()
    }

    /// Connection settings from the URL and the password sources.
    pub fn connection(&self) -> Result<Connection> {
        let pg = tokio_postgres::Config::from_str(self.source.url.expose()).map_err(|_| {
            // The parse error can quote the URL, password included: say less.
            CaptureError::Config(
                "source.url is not a valid postgres:// URL or key=value connection string"
                    .to_owned(),
            )
        })?;
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
        let mut pg = pg;
        pg.password(password.expose());
        pg.application_name(format!("syncbridge-capture-{}", self.source.name));
        Ok(Connection {
            host,
            port,
            user,
            password,
            dbname,
            pg,
        })
    }

    fn password(&self, pg: &tokio_postgres::Config) -> Result<Secret> {
        if let Some(password) = &self.source.password {
            return Ok(password.clone());
        }
        if let Some(path) = &self.source.password_file {
            let text = std::fs::read_to_string(path).map_err(|e| {
                CaptureError::Config(format!(
                    "cannot read source.password_file {}: {e}",
                    path.display()
                ))
            })?;
            return Ok(Secret::new(text.lines().next().unwrap_or_default()));
        }
        Ok(Secret::new(
            pg.get_password()
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .unwrap_or_default(),
        ))
    }
}

/// A `schema.table` name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TableName {
    pub schema: String,
    pub table: String,
}

impl TableName {
    pub fn parse(text: &str) -> Result<TableName> {
        let (schema, table) = match text.split_once('.') {
            Some((schema, table)) => (schema, table),
            None => ("public", text),
        };
        if schema.is_empty() || table.is_empty() || table.contains('.') {
            return Err(CaptureError::Config(format!(
                "table {text:?} is not of the form schema.table"
            )));
        }
        Ok(TableName {
            schema: schema.to_owned(),
            table: table.to_owned(),
        })
    }

    /// The name quoted for SQL.
    pub fn quoted(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.table))
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.table)
    }
}

/// Quotes an SQL identifier.
pub fn quote_ident(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

fn is_plain_identifier(ident: &str) -> bool {
    !ident.is_empty()
        && ident
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !ident.starts_with(|c: char| c.is_ascii_digit())
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
    fn durations_read_as_human_text() {
        let text = format!("{MINIMAL}\n[capture]\nheartbeat_interval = \"2s\"\n");
        let config = Config::from_toml(&text).unwrap();
        assert_eq!(config.capture.heartbeat_interval, Duration::from_secs(2));
    }
}
