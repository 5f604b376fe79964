//! Configuration both services read: a TOML file, then environment overrides.
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

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::de::IgnoredAny;
use serde::Deserialize;

use crate::tls::{PgTls, SslMode};

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
    /// Extra librdkafka properties (`security.protocol`, `sasl.mechanism`,
    /// `sasl.username`, `ssl.ca.location`, ...). Values given here win over
    /// capture's defaults except the ones that guarantee delivery
    /// (`enable.idempotence`, `acks`).
    #[serde(default)]
    pub properties: BTreeMap<String, Secret>,
    /// The SASL password (`sasl.password`), best set through
    /// `SYNC_BRIDGE_KAFKA__SASL_PASSWORD` (an environment variable cannot
    /// name a dotted property).
    #[serde(default)]
    pub sasl_password: Option<Secret>,
    /// A file whose first line is the SASL password (a mounted secret).
    #[serde(default)]
    pub sasl_password_file: Option<PathBuf>,
}

impl KafkaConfig {
    /// The `[kafka]` section alone, from the same layers as a service's whole
    /// configuration (see [`layers`]), for a tool that only reads topics
    /// (`capture tail`): any service's configuration file serves, and
    /// `brokers`, when given, overrides the file's. Secrets are resolved.
    pub fn load_section(
        path: Option<&Path>,
        brokers: Option<&str>,
    ) -> std::result::Result<KafkaConfig, String> {
        let mut figment = layers(path)?;
        if let Some(brokers) = brokers {
            figment = figment.merge(Serialized::default("kafka.brokers", brokers));
        }
        let mut kafka: KafkaConfig = figment.extract_inner("kafka").map_err(|e| {
            format!("kafka settings (a configuration file's [kafka] section, or --brokers): {e}")
        })?;
        kafka.resolve_secrets()?;
        Ok(kafka)
    }

    /// Moves `sasl_password` / `sasl_password_file` into
    /// `properties["sasl.password"]`, where every client picks it up.
    pub fn resolve_secrets(&mut self) -> std::result::Result<(), String> {
        let password = match (&self.sasl_password, &self.sasl_password_file) {
            (Some(password), _) => Some(password.clone()),
            (None, Some(path)) => Some(read_secret_file(path).map_err(|e| {
                format!(
                    "cannot read kafka.sasl_password_file {}: {e}",
                    path.display()
                )
            })?),
            (None, None) => None,
        };
        if let Some(password) = password {
            self.properties.insert("sasl.password".to_owned(), password);
        }
        Ok(())
    }
}

/// One PostgreSQL database and how to reach it: the keys every service's
/// database section has (`[source]` of capture, `[legacy]` and `[platform]`
/// of apply), flattened into it.
#[derive(Debug, Clone, Deserialize)]
pub struct DatabaseConfig {
    /// A libpq-style URL: `postgres://user@host:port/dbname`, or key=value
    /// pairs. A password in the URL works but is better given through
    /// `password` or `password_file`.
    pub url: Secret,
    /// The password, best set through the environment
    /// (`SYNC_BRIDGE_<SECTION>__PASSWORD`).
    #[serde(default)]
    pub password: Option<Secret>,
    /// A file whose first line is the password (a mounted Kubernetes secret).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// libpq's `sslmode` for every connection to this database:
    /// `disable`, `prefer`, `require`, `verify-ca`, `verify-full` (see
    /// [`crate::tls`]). Default: the URL's `sslmode`, else `prefer`.
    #[serde(default)]
    pub sslmode: Option<SslMode>,
    /// The CA certificate (PEM) the server's certificate must chain to;
    /// needed by `verify-ca` and `verify-full`.
    #[serde(default)]
    pub sslrootcert: Option<PathBuf>,
    /// How long opening a connection (TCP, TLS and authentication) may take.
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// A connection quiet for this long is probed with TCP keepalives (three
    /// probes, 10 s apart): a server that went away without a word (a
    /// half-open connection) is found within about this plus 30 s.
    #[serde(default = "default_keepalives_idle", with = "humantime_serde")]
    pub keepalives_idle: Duration,
    /// Data sent and not acknowledged for this long closes the connection
    /// (Linux `TCP_USER_TIMEOUT`), so a write into a hung network fails
    /// instead of waiting for the kernel's retransmissions (many minutes).
    #[serde(default = "default_tcp_user_timeout", with = "humantime_serde")]
    pub tcp_user_timeout: Duration,
    /// Once a statement is sent, the server must start answering within
    /// this long, or the connection is closed and opened again: a link that
    /// keeps acknowledging and never answers is found (see
    /// [`crate::link`]). Longer than the longest statement, lock waits
    /// included; `0s` turns it off.
    #[serde(default = "default_response_timeout", with = "humantime_serde")]
    pub response_timeout: Duration,
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_keepalives_idle() -> Duration {
    Duration::from_secs(30)
}
fn default_response_timeout() -> Duration {
    Duration::from_secs(300)
}
fn default_tcp_user_timeout() -> Duration {
    Duration::from_secs(60)
}

impl DatabaseConfig {
    /// The URL parsed. The error names `section.url` and never quotes the
    /// URL (it may hold a password).
    /// The timeouts and keepalives of this section are set on it (they win
    /// over the URL's).
    pub fn parse_url(&self, section: &str) -> std::result::Result<tokio_postgres::Config, String> {
        let mut pg = tokio_postgres::Config::from_str(self.url.expose()).map_err(|_| {
            format!("{section}.url is not a valid postgres:// URL or key=value connection string")
        })?;
        pg.connect_timeout(self.connect_timeout)
            .keepalives(true)
            .keepalives_idle(self.keepalives_idle)
            .keepalives_interval(Duration::from_secs(10))
            .keepalives_retries(3)
            .tcp_user_timeout(self.tcp_user_timeout);
        Ok(pg)
    }

    /// How connections are secured: `sslmode`, else the URL's.
    pub fn tls(&self, url: &tokio_postgres::Config) -> PgTls {
        PgTls {
            mode: self.sslmode.unwrap_or_else(|| SslMode::from_url(url)),
            root_cert: self.sslrootcert.clone(),
        }
    }

    /// Session options (`-c name=value`) that make the server probe its
    /// end of a TCP connection as this service probes its own
    /// (`keepalives_idle`, three probes 10 s apart, `tcp_user_timeout`):
    /// the server then ends the session of a client gone without a word,
    /// and the locks the session held go with it. Ignored by the server on
    /// a Unix socket.
    pub fn server_keepalive_options(&self) -> String {
        format!(
            "-c tcp_keepalives_idle={} -c tcp_keepalives_interval=10 -c tcp_keepalives_count=3 -c tcp_user_timeout={}",
            self.keepalives_idle.as_secs().max(1),
            self.tcp_user_timeout.as_millis()
        )
    }

    /// How long a session of this service may stay idle inside a
    /// transaction before the server ends it: `response_timeout`, when set.
    pub fn database_idle_limit(&self) -> Option<Duration> {
        (!self.response_timeout.is_zero()).then_some(self.response_timeout)
    }

    /// The password given apart from the URL ([`database_password`]).
    pub fn password(&self, section: &str) -> std::result::Result<Option<Secret>, String> {
        database_password(
            self.password.as_ref(),
            self.password_file.as_deref(),
            section,
        )
    }
}

/// The keys of a section that flattens another's (as [`DatabaseConfig`])
/// that no field took: serde cannot deny unknown fields across a flatten,
/// so a section collects them here and [`reject_unknown`] refuses them.
pub type UnknownKeys = BTreeMap<String, IgnoredAny>;

/// Refuses the keys of `section` no field took.
pub fn reject_unknown(section: &str, unknown: &UnknownKeys) -> std::result::Result<(), String> {
    match unknown.keys().next() {
        None => Ok(()),
        Some(_) => Err(format!(
            "unknown key{} {} in [{section}]",
            if unknown.len() == 1 { "" } else { "s" },
            unknown
                .keys()
                .map(|key| format!("`{key}`"))
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// A database password given apart from the URL, first found wins:
/// `password`, then the first line of `password_file`; None when neither
/// is set (the URL's own password, if any, stands). `section` names the
/// configuration section in the error.
pub fn database_password(
    password: Option<&Secret>,
    password_file: Option<&Path>,
    section: &str,
) -> std::result::Result<Option<Secret>, String> {
    if let Some(password) = password {
        return Ok(Some(password.clone()));
    }
    match password_file {
        Some(path) => read_secret_file(path).map(Some).map_err(|e| {
            format!(
                "cannot read {section}.password_file {}: {e}",
                path.display()
            )
        }),
        None => Ok(None),
    }
}

/// The first line of a secret file (a mounted Kubernetes secret).
pub fn read_secret_file(path: &Path) -> std::io::Result<Secret> {
    let text = std::fs::read_to_string(path)?;
    Ok(Secret::new(text.lines().next().unwrap_or_default()))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_given_apart_wins_over_its_file_and_none_leaves_the_url_alone() {
        let dir = std::env::temp_dir().join(format!("syncbridge-password-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temp dir");
        let file = dir.join("password");
        std::fs::write(&file, "from-file\nsecond line\n").expect("a password file");
        let given = Secret::new("given");
        let password = |password: Option<&Secret>, file: Option<&Path>| {
            database_password(password, file, "legacy").map(|p| p.map(|p| p.expose().to_owned()))
        };
        assert_eq!(
            password(Some(&given), Some(&file)),
            Ok(Some("given".into()))
        );
        assert_eq!(password(None, Some(&file)), Ok(Some("from-file".into())));
        assert_eq!(password(None, None), Ok(None));
        let missing = password(None, Some(&dir.join("absent"))).expect_err("a missing file");
        assert!(missing.contains("legacy.password_file"), "{missing}");
        std::fs::remove_dir_all(&dir).expect("the temp dir removed");
    }

    #[test]
    fn every_database_connection_has_a_connect_timeout_keepalives_and_a_user_timeout() {
        let database = DatabaseConfig {
            url: Secret::new("postgres://apply@db/legacy?connect_timeout=300"),
            password: None,
            password_file: None,
            sslmode: None,
            sslrootcert: None,
            connect_timeout: default_connect_timeout(),
            keepalives_idle: default_keepalives_idle(),
            tcp_user_timeout: default_tcp_user_timeout(),
            response_timeout: default_response_timeout(),
        };
        let pg = database.parse_url("legacy").expect("a valid url");
        assert_eq!(pg.get_connect_timeout(), Some(&Duration::from_secs(10)));
        assert!(pg.get_keepalives());
        assert_eq!(pg.get_keepalives_idle(), Duration::from_secs(30));
        assert_eq!(pg.get_keepalives_retries(), Some(3));
        assert_eq!(pg.get_tcp_user_timeout(), Some(&Duration::from_secs(60)));
        assert_eq!(
            database.server_keepalive_options(),
            "-c tcp_keepalives_idle=30 -c tcp_keepalives_interval=10 -c tcp_keepalives_count=3 -c tcp_user_timeout=60000"
        );
    }
}
