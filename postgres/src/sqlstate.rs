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
//! Environmental: the server refused because of where the statement ran, not
//! because of the row it carries, and waiting or an operator can fix it: a
//! read-only transaction (`25006`: a standby during a failover,
//! `default_transaction_read_only`), a missing privilege (`42501`: one being
//! granted), a canceled statement (`57014`: `statement_timeout`, an operator's
//! cancel), a feature the server does not support (`0A000`: a server or
//! extension being upgraded), a system or internal error (class 58, class
//! `XX`: I/O, corruption, a bug), and apply's own fencing refusal
//! ([`FENCED`]: another apply instance took over). Sending the same statement again later
//! may succeed, so what the statement carries is retried from where it was,
//! never set aside as if the row were at fault: a stall is seen (in the
//! errors metric and the health check), a silent loss is not.
//!
//! Everything else is definite: the server rejected the statement for what it
//! says (a constraint, a value), and sending it again would be rejected again.
//! `25P02` (a statement in a transaction that already failed) is a
//! consequence of an earlier error, not a cause, and is definite too.

/// The SQLSTATE apply's fencing check (`syncbridge.hold_lease`) raises when
/// another apply instance took the single-writer lease since this one took
/// it: the write must not commit, and only taking the lease again helps.
/// Environmental: never set aside as the row's fault.
pub const FENCED: &str = "SBF01";

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

/// Whether an error with this SQLSTATE is caused by the environment the
/// statement ran in (read-only, privileges, a cancel, the server itself)
/// rather than by the row it carries: waiting or an operator can fix it.
/// Disjoint from [`is_transient_code`]; None (no server answer) is not
/// environmental.
pub fn is_environmental_code(code: Option<&str>) -> bool {
    match code {
        None => false,
        Some(code) => {
            code.starts_with("58")
                || code.starts_with("XX")
                || matches!(code, "25006" | "42501" | "57014" | "0A000" | FENCED)
        }
    }
}

/// Whether a `tokio_postgres` error is caused by the environment (see
/// [`is_environmental_code`]).
pub fn is_environmental(error: &tokio_postgres::Error) -> bool {
    is_environmental_code(error.code().map(|state| state.code()))
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
        for code in [
            "23505", "23503", "23514", "42P01", "22P02", "22003", "42703", "25P02",
        ] {
            assert!(!is_transient_code(Some(code)), "{code}");
            assert!(!is_environmental_code(Some(code)), "{code}");
        }
    }

    #[test]
    fn read_only_privileges_cancels_server_faults_and_fencing_are_environmental() {
        for code in [
            "25006", "42501", "57014", "0A000", "XX000", "XX001", "58030", FENCED,
        ] {
            assert!(is_environmental_code(Some(code)), "{code}");
        }
    }

    #[test]
    fn environmental_and_transient_do_not_overlap() {
        for code in [
            None,
            Some("08006"),
            Some("57P01"),
            Some("53300"),
            Some("40001"),
            Some("40P01"),
            Some("55P03"),
            Some("55006"),
        ] {
            assert!(!is_environmental_code(code), "{code:?}");
        }
        for code in ["25006", "42501", "57014", "0A000", "XX000", "58030"] {
            assert!(!is_transient_code(Some(code)), "{code}");
        }
    }
}
