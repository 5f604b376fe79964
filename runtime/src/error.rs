//! The one error type of the runtime crate, and how errors are told in logs.
//!
//! A [`RuntimeError`] answers the same question the services' own errors
//! answer: can retrying help? A broker that is not there yet can come back; a
//! configuration the broker refuses (authentication, a missing topic that may
//! not be created, a message larger than allowed) cannot.

/// Result alias for the runtime crate.
pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;

/// What the shared plumbing (Kafka clients, topics) can fail with.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The configuration must be fixed by a person.
    #[error("configuration: {0}")]
    Config(String),

    /// Kafka refused or failed to deliver.
    #[error("kafka: {context}")]
    Kafka {
        context: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },

    /// A blocking task (a metadata request run off the async threads) did
    /// not finish.
    #[error("background task: {0}")]
    Task(String),
}

impl RuntimeError {
    /// Whether trying again after a backoff can help.
    pub fn is_retryable(&self) -> bool {
        match self {
            // A blocking task that panicked would panic again.
            RuntimeError::Config(_) | RuntimeError::Task(_) => false,
            RuntimeError::Kafka { source, .. } => kafka_error_is_transient(source),
        }
    }

    /// Whether a person must fix the configuration (exit code 2).
    pub fn is_config(&self) -> bool {
        matches!(self, RuntimeError::Config(_))
    }

    /// A short, stable name for the kind of error, for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            RuntimeError::Config(_) => "config",
            RuntimeError::Kafka { .. } => "kafka",
            RuntimeError::Task(_) => "protocol",
        }
    }

    pub fn kafka(context: impl Into<String>, source: rdkafka::error::KafkaError) -> Self {
        RuntimeError::Kafka {
            context: context.into(),
            source,
        }
    }
}

/// Whether a Kafka error can go away by itself: everything but refused
/// credentials or authorization, a message over the broker's limit, a
/// configuration librdkafka rejects, and a topic that does not exist.
pub fn kafka_error_is_transient(error: &rdkafka::error::KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as Code;
    match error.rdkafka_error_code() {
        Some(
            Code::TopicAuthorizationFailed
            | Code::ClusterAuthorizationFailed
            | Code::SaslAuthenticationFailed
            | Code::Authentication
            | Code::MessageSizeTooLarge
            | Code::InvalidConfig
            | Code::UnknownTopicOrPartition
            | Code::UnknownTopic,
        ) => false,
        _ => !matches!(error, rdkafka::error::KafkaError::ClientCreation(_)),
    }
}

/// An error and its sources, joined: `a: b: c`.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = describe(error);
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = describe(cause);
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// One error's own text. A database error is told by its severity, message
/// and SQLSTATE only: its DETAIL and HINT may quote the row's values
/// ("Failing row contains ..."), which must not reach logs or dead letters.
fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    let db = error
        .downcast_ref::<tokio_postgres::Error>()
        .and_then(tokio_postgres::Error::as_db_error)
        .or_else(|| error.downcast_ref::<tokio_postgres::error::DbError>());
    match db {
        Some(db) => format!(
            "db error: {}: {} (SQLSTATE {})",
            db.severity(),
            db.message(),
            db.code().code()
        ),
        None => error.to_string(),
    }
}
