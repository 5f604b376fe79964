//! The one error type of the apply crate.
//!
//! A transient error (a lost connection, a deadlock, a broker that is not
//! there) ends the session and is retried from the position stored in the
//! target database, so nothing is lost or applied twice. A definite error in
//! one source transaction (a value that does not convert, a constraint the
//! mapping cannot satisfy) never stops the stream: that transaction goes to
//! the dead-letter topic. An error of the environment (a read-only target,
//! a missing privilege, a canceled statement; see [`pg::sqlstate`]) is not
//! the row's fault: it is retried like a transient one and never
//! dead-lettered. What remains definite here (a bad mapping, bad
//! configuration) ends apply with a message saying what to fix.

/// Result alias for the apply crate.
pub type Result<T, E = ApplyError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// Configuration or mapping must be fixed by a person.
    #[error("configuration: {0}")]
    Config(String),

    #[error(transparent)]
    Mapping(#[from] crate::mapping::MappingError),

    #[error("postgres ({side}): {context}")]
    Postgres {
        side: &'static str,
        context: String,
        #[source]
        source: tokio_postgres::Error,
    },

    #[error("kafka: {context}")]
    Kafka {
        context: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },

    #[error("event schema")]
    Schema(#[source] schemas::Error),

    /// The shared Kafka plumbing (topics, producer) failed.
    #[error(transparent)]
    Runtime(#[from] runtime::RuntimeError),

    /// A source transaction could not be applied for a reason retrying cannot fix.
    #[error("{0}")]
    Rejected(String),

    /// Statements sent ahead cannot be followed up within their source
    /// transaction: the target transaction is applied again one statement
    /// at a time (see [`ApplyError::replans`]). Handled inside a direction;
    /// should one escape, a retry from the stored position is right.
    #[error("replan: {0}")]
    Replan(String),

    /// A bounded job (`apply replay`) ended before doing all of its work.
    /// Running it again is safe; apply does not retry it by itself.
    #[error("incomplete: {0}")]
    Incomplete(String),
}

impl ApplyError {
    pub fn is_retryable(&self) -> bool {
        match self {
            ApplyError::Config(_) | ApplyError::Mapping(_) | ApplyError::Schema(_) => false,
            ApplyError::Rejected(_) | ApplyError::Incomplete(_) => false,
            ApplyError::Postgres { source, .. } => {
                pg::sqlstate::is_transient(source) || pg::sqlstate::is_environmental(source)
            }
            ApplyError::Kafka { .. } | ApplyError::Replan(_) => true,
            ApplyError::Runtime(error) => error.is_retryable(),
        }
    }

    /// Whether a person must fix the configuration or the mapping (exit code 2).
    pub fn is_config(&self) -> bool {
        match self {
            ApplyError::Config(_) | ApplyError::Mapping(_) => true,
            ApplyError::Runtime(error) => error.is_config(),
            _ => false,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            ApplyError::Config(_) => "config",
            ApplyError::Mapping(_) => "mapping",
            ApplyError::Postgres { .. } => "postgres",
            ApplyError::Kafka { .. } => "kafka",
            ApplyError::Schema(_) => "schema",
            ApplyError::Rejected(_) => "rejected",
            ApplyError::Incomplete(_) => "incomplete",
            ApplyError::Replan(_) => "replan",
            ApplyError::Runtime(error) => error.kind(),
        }
    }

    pub(crate) fn postgres(
        side: &'static str,
        context: impl Into<String>,
        source: tokio_postgres::Error,
    ) -> Self {
        ApplyError::Postgres {
            side,
            context: context.into(),
            source,
        }
    }

    pub(crate) fn kafka(context: impl Into<String>, source: rdkafka::error::KafkaError) -> Self {
        ApplyError::Kafka {
            context: context.into(),
            source,
        }
    }

    /// Whether, with statements pipelined, this error calls for rolling the
    /// target transaction back and applying it again one statement at a
    /// time: a statement the server refused (its cause may be any statement
    /// sent before it, which only the one-at-a-time pass can tell and
    /// handle) or a [`ApplyError::Replan`]. Not an error a retry can help
    /// (see [`ApplyError::is_retryable`]): the row is not at fault.
    pub fn replans(&self) -> bool {
        match self {
            ApplyError::Replan(_) => true,
            ApplyError::Postgres { source, .. } => {
                !pg::sqlstate::is_transient(source) && !pg::sqlstate::is_environmental(source)
            }
            _ => false,
        }
    }

    /// Whether the commit was fenced off: another apply instance took the
    /// single-writer lease (see [`crate::lease::Fence`]).
    pub fn is_fenced(&self) -> bool {
        self.sqlstate() == Some(pg::sqlstate::FENCED)
    }

    /// The SQLSTATE, when Postgres sent one.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            ApplyError::Postgres { source, .. } => source.code().map(|c| c.code()),
            _ => None,
        }
    }
}
