//! Time as both services carry it: microseconds since the Unix epoch in an
//! `i64`. Postgres counts from 2000-01-01 on the wire; [`postgres_to_unix_micros`]
//! and [`unix_to_postgres_micros`] convert.

use std::time::{SystemTime, UNIX_EPOCH};

/// 2000-01-01 00:00:00 UTC, the Postgres epoch, in microseconds since the Unix epoch.
pub const POSTGRES_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;

/// Converts a Postgres timestamp (microseconds since 2000-01-01) to
/// microseconds since the Unix epoch. `i64::MAX` and `i64::MIN` (Postgres's
/// `infinity` and `-infinity`) are kept; other values saturate.
pub fn postgres_to_unix_micros(postgres_micros: i64) -> i64 {
    match postgres_micros {
        i64::MAX | i64::MIN => postgres_micros,
        micros => micros.saturating_add(POSTGRES_EPOCH_UNIX_MICROS),
    }
}

/// Converts microseconds since the Unix epoch to a Postgres timestamp, the
/// inverse of [`postgres_to_unix_micros`].
pub fn unix_to_postgres_micros(unix_micros: i64) -> i64 {
    match unix_micros {
        i64::MAX | i64::MIN => unix_micros,
        micros => micros.saturating_sub(POSTGRES_EPOCH_UNIX_MICROS),
    }
}

/// Now, in microseconds since the Unix epoch (0 for a clock before 1970,
/// saturating far in the future).
pub fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_postgres_epoch_converts_both_ways_and_infinities_are_kept() {
        assert_eq!(postgres_to_unix_micros(0), POSTGRES_EPOCH_UNIX_MICROS);
        assert_eq!(unix_to_postgres_micros(POSTGRES_EPOCH_UNIX_MICROS), 0);
        assert_eq!(postgres_to_unix_micros(i64::MAX), i64::MAX);
        assert_eq!(postgres_to_unix_micros(i64::MIN), i64::MIN);
        assert_eq!(postgres_to_unix_micros(i64::MAX - 1), i64::MAX, "saturates");
        assert_eq!(unix_to_postgres_micros(i64::MIN), i64::MIN);
    }

    #[test]
    fn now_is_after_the_postgres_epoch() {
        assert!(now_micros() > POSTGRES_EPOCH_UNIX_MICROS);
    }
}
