//! Which Postgres errors a retry can help: the one classification both
//! services use.
//!
//! Transient: the connection is gone or the server is going away (class 08,
//! `57P..`), resources ran short (class 53, e.g. too many connections), a
//! serialization failure or deadlock (`40001`, `40P01`), a lock or object held
//! by another session for a moment (`55P03`, `55006`: a replication slot is
//! still held by a session that just died). An error without a SQLSTATE never
//! reached a server's judgement and is transient too.
//!
//! Everything else is definite: the server rejected the statement for what it
//! says, and sending it again would be rejected again.

/// Whether an error with this SQLSTATE (None: no server answer) may succeed
/// when tried again.
pub fn is_transient_code(code: Option<&str>) -> bool {
    match code {
        None => true,
        Some(code) => {
            code.starts_with("08")
                || code.starts_with("57P")
                || code.starts_with("53")
                || matches!(code, "40001" | "40P01" | "55P03" | "55006")
        }
    }
}

/// Whether a `tokio_postgres` error may succeed when tried again.
pub fn is_transient(error: &tokio_postgres::Error) -> bool {
    is_transient_code(error.code().map(|state| state.code()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_loss_and_contention_are_transient() {
        for code in [
            None,
            Some("08006"),
            Some("57P01"),
            Some("53300"),
            Some("53100"),
            Some("40001"),
            Some("40P01"),
            Some("55P03"),
            Some("55006"),
        ] {
            assert!(is_transient_code(code), "{code:?}");
        }
    }

    #[test]
    fn a_statement_the_server_rejected_is_definite() {
        for code in ["23505", "42P01", "22P02", "42703"] {
            assert!(!is_transient_code(Some(code)), "{code}");
        }
    }
}
