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

    /// A database server could not be reached (see [`crate::link`]).
    #[error("cannot reach {address}")]
    Unreachable {
        address: String,
        #[source]
        source: std::io::Error,
    },
}

impl RuntimeError {
    /// Whether trying again after a backoff can help.
    pub fn is_retryable(&self) -> bool {
        match self {
            // A blocking task that panicked would panic again.
            RuntimeError::Config(_) | RuntimeError::Task(_) => false,
            RuntimeError::Kafka { source, .. } => kafka_error_is_transient(source),
            RuntimeError::Unreachable { .. } => true,
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
            RuntimeError::Unreachable { .. } => "postgres",
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
fn kafka_error_is_transient(error: &rdkafka::error::KafkaError) -> bool {
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
/// Nor may its message, when it quotes one (see [`redact_message`]).
fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    let db = error
        .downcast_ref::<tokio_postgres::Error>()
        .and_then(tokio_postgres::Error::as_db_error)
        .or_else(|| error.downcast_ref::<tokio_postgres::error::DbError>());
    match db {
        Some(db) => format!(
            "db error: {}: {} (SQLSTATE {})",
            db.severity(),
            redact_message(db.code().code(), db.message()),
            db.code().code()
        ),
        None => error.to_string(),
    }
}

/// What a database error's message may tell of itself. A data exception
/// (class 22) quotes the value it refused (`invalid input syntax for type
/// integer: "abc"`, `value "99999999999" is out of range for type integer`),
/// and a value may itself hold quotes: everything from the first `"` to the
/// last becomes `"…"` (to the end, when there is one `"` only). Other
/// classes quote identifiers (`relation "x" does not exist`, `constraint
/// "y"`), which say what to fix and are kept; their values are in DETAIL,
/// never told.
fn redact_message(sqlstate: &str, message: &str) -> String {
    if !sqlstate.starts_with("22") {
        return message.to_owned();
    }
    let Some(first) = message.find('"') else {
        return message.to_owned();
    };
    let last = message.rfind('"').unwrap_or(first);
    if last == first {
        return format!("{}\"…", &message[..first]);
    }
    format!("{}\"…\"{}", &message[..first], &message[last + 1..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_data_exception_tells_no_quoted_value() {
        for (sqlstate, message, expected) in [
            (
                "22P02",
                "invalid input syntax for type integer: \"abc\"",
                "invalid input syntax for type integer: \"…\"",
            ),
            (
                "22003",
                "value \"99999999999\" is out of range for type integer",
                "value \"…\" is out of range for type integer",
            ),
            (
                "22007",
                "invalid input syntax for type timestamp: \"2024-13-45 \"noon\"\"",
                "invalid input syntax for type timestamp: \"…\"",
            ),
            (
                "22008",
                "date/time field value out of range: \"2024-02-31\"",
                "date/time field value out of range: \"…\"",
            ),
            (
                "22P02",
                "invalid input value for enum role: \"boss\" is \"really\" here",
                "invalid input value for enum role: \"…\" here",
            ),
            (
                "22P02",
                "invalid input syntax for type uuid: \"unterminated",
                "invalid input syntax for type uuid: \"…",
            ),
            (
                "22001",
                "value too long for type character varying(20)",
                "value too long for type character varying(20)",
            ),
        ] {
            assert_eq!(redact_message(sqlstate, message), expected, "{message}");
        }
    }

    #[test]
    fn other_classes_keep_the_names_they_quote() {
        for (sqlstate, message) in [
            ("42P01", "relation \"identity.identities\" does not exist"),
            (
                "23505",
                "duplicate key value violates unique constraint \"identities_email_key\"",
            ),
            (
                "23514",
                "new row for relation \"identities\" violates check constraint \"no_rejects\"",
            ),
        ] {
            assert_eq!(redact_message(sqlstate, message), message);
        }
    }
}
