//! The one error type of the capture crate.
//!
//! Every error answers one question for the supervisor loop in
//! [`crate::run`]: can retrying help? Connection losses, a broker that is not
//! there yet, or a slot held by a previous session that is still shutting down
//! get better by themselves and are retried with backoff; so are errors of
//! the environment (a read-only standby, a privilege revoked for a while, a
//! canceled statement; see [`pg::sqlstate`]). A configuration
//! mistake (wal_level, privileges, a table that does not exist) or bytes that
//! cannot be decoded do not: capture exits with a message saying what to fix.

use std::time::Duration;

/// Result alias for the capture crate.
pub type Result<T, E = CaptureError> = std::result::Result<T, E>;

/// Everything that can stop capture.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// The configuration (or the source database's setup) must be fixed by a person.
    #[error("configuration: {0}")]
    Config(String),

    /// A query on the ordinary (non-replication) connection failed.
    #[error("postgres: {context}")]
    Postgres {
        context: String,
        #[source]
        source: tokio_postgres::Error,
    },

    /// The replication stream failed.
    #[error("replication stream: {context}")]
    Replication {
        context: String,
        #[source]
        source: pgwire_replication::PgWireError,
    },

    /// A pgoutput message could not be decoded. Retrying would read the same
    /// bytes again, so this is definite.
    #[error("undecodable pgoutput message at wal position {lsn}")]
    Decode {
        lsn: pg::Lsn,
        #[source]
        source: pg::pgoutput::DecodeError,
    },

    /// The stream referred to a relation that no Relation message described.
    #[error("pgoutput protocol: {0}")]
    Protocol(String),

    /// The shared Kafka plumbing (producer, topics) failed.
    #[error(transparent)]
    Runtime(#[from] runtime::RuntimeError),

    /// The event contract could not be loaded.
    #[error("event schema")]
    Schema(#[source] schemas::Error),

    /// A bounded job (`capture snapshot`) ended without doing all of its
    /// work: interrupted, or not every event was confirmed. Running it again
    /// is safe and may help; capture does not retry it by itself.
    #[error("incomplete: {0}")]
    Incomplete(String),

    /// In-flight deliveries did not finish within the shutdown budget.
    #[error("shutdown: deliveries still in flight after {0:?}; the slot was acknowledged up to the last complete transaction")]
    ShutdownTimeout(Duration),
}

impl CaptureError {
    /// Whether the supervisor should retry the session after a backoff.
    pub fn is_retryable(&self) -> bool {
        match self {
            CaptureError::Config(_)
            | CaptureError::Decode { .. }
            | CaptureError::Protocol(_)
            | CaptureError::Schema(_)
            | CaptureError::Incomplete(_)
            | CaptureError::ShutdownTimeout(_) => false,
            CaptureError::Postgres { source, .. } => {
                pg::sqlstate::is_transient(source) || pg::sqlstate::is_environmental(source)
            }
            CaptureError::Runtime(error) => error.is_retryable(),
            CaptureError::Replication { source, .. } => {
                source.is_transient()
                    || source.is_io()
                    || replication_server_error_is_transient(source)
            }
        }
    }

    /// Whether a person must fix the configuration (exit code 2).
    pub fn is_config(&self) -> bool {
        match self {
            CaptureError::Config(_) => true,
            CaptureError::Runtime(error) => error.is_config(),
            _ => false,
        }
    }

    /// A short, stable name for the kind of error, for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            CaptureError::Config(_) => "config",
            CaptureError::Postgres { .. } => "postgres",
            CaptureError::Replication { .. } => "replication",
            CaptureError::Decode { .. } => "decode",
            CaptureError::Protocol(_) => "protocol",
            CaptureError::Runtime(error) => error.kind(),
            CaptureError::Schema(_) => "schema",
            CaptureError::Incomplete(_) => "incomplete",
            CaptureError::ShutdownTimeout(_) => "shutdown",
        }
    }

    pub(crate) fn postgres(context: impl Into<String>, source: tokio_postgres::Error) -> Self {
        CaptureError::Postgres {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn replication(
        context: impl Into<String>,
        source: pgwire_replication::PgWireError,
    ) -> Self {
        CaptureError::Replication {
            context: context.into(),
            source,
        }
    }
}

fn replication_server_error_is_transient(error: &pgwire_replication::PgWireError) -> bool {
    // The slot can still be active for a few moments after a previous session
    // died; the server answers "replication slot ... is active for PID ...".
    if !error.is_server() {
        return false;
    }
    let text = error.to_string();
    [
        "is active for PID",
        "shutting down",
        "starting up",
        "terminating connection",
    ]
    .iter()
    .any(|needle| text.contains(needle))
}

impl From<pg::ident::TableNameError> for CaptureError {
    fn from(error: pg::ident::TableNameError) -> Self {
        CaptureError::Config(error.to_string())
    }
}
