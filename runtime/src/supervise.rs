//! The loop both services run their sessions in: a session that fails for a
//! reason that can pass is started again after a backoff; a failure is logged
//! once, not at every attempt; a session that ran well for a while starts the
//! backoff over.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use tokio_util::sync::CancellationToken;

/// A session that ran for this long before failing resets the backoff.
const HEALTHY_AFTER: Duration = Duration::from_secs(60);

/// The backoff between two attempts to reconnect: exponential from 200 ms
/// up to `max`, with jitter, never giving up.
fn reconnect_backoff(max: Duration) -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(max)
        .with_jitter()
        .without_max_times()
}

/// The failure a loop logged last, so that a failure repeating itself is
/// logged once, and logged again only once it changed or the loop recovered.
#[derive(Debug, Default)]
pub struct FailureLog {
    last: Option<String>,
}

impl FailureLog {
    /// Records a failure (`description` as
    /// [`error_chain`](crate::error::error_chain) tells it). True when it
    /// differs from the one recorded last: the caller logs it then, and only
    /// then.
    pub fn report(&mut self, description: String) -> bool {
        if self.last.as_deref() == Some(description.as_str()) {
            return false;
        }
        self.last = Some(description);
        true
    }

    /// Whether a failure is recorded and nothing has gone well since.
    pub fn failing(&self) -> bool {
        self.last.is_some()
    }

    /// Things go well again: the next failure is logged whatever it is.
    pub fn clear(&mut self) {
        self.last = None;
    }
}

/// The state of a supervised loop of sessions: the backoff, and the failure
/// logged last.
pub struct Retries {
    builder: ExponentialBuilder,
    backoff: ExponentialBackoff,
    max: Duration,
    log: FailureLog,
}

impl Retries {
    pub fn new(max_backoff: Duration) -> Self {
        let builder = reconnect_backoff(max_backoff);
        Retries {
            backoff: builder.build(),
            builder,
            max: max_backoff,
            log: FailureLog::default(),
        }
    }

    /// Whether the last session failed and none has run well since.
    pub fn failing(&self) -> bool {
        self.log.failing()
    }

    /// A session is running well again.
    pub fn recovered(&mut self) {
        self.log.clear();
    }

    /// Records a failure a retry can help of a session that ran for
    /// `ran_for` (a session that had been `healthy` that long resets the
    /// backoff). True when the caller should log it ([`FailureLog::report`]).
    pub fn failed(&mut self, description: String, ran_for: Duration, healthy: bool) -> bool {
        if healthy && ran_for >= HEALTHY_AFTER {
            self.backoff = self.builder.build();
        }
        self.log.report(description)
    }

    /// Waits for the next backoff delay. False when `shutdown` came first.
    pub async fn pause(&mut self, shutdown: &CancellationToken) -> bool {
        let delay = self.backoff.next().unwrap_or(self.max);
        tokio::select! {
            () = tokio::time::sleep(delay) => true,
            () = shutdown.cancelled() => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_failure_log_tells_a_repeated_failure_once() {
        let mut log = FailureLog::default();
        assert!(log.report("lock held".into()));
        assert!(!log.report("lock held".into()));
        log.clear();
        assert!(!log.failing());
        assert!(log.report("lock held".into()));
    }

    #[test]
    fn a_failure_is_reported_once_until_it_changes_or_recovers() {
        let mut retries = Retries::new(Duration::from_secs(1));
        assert!(retries.failed("broker down".into(), Duration::ZERO, false));
        assert!(!retries.failed("broker down".into(), Duration::ZERO, false));
        assert!(retries.failed("auth refused".into(), Duration::ZERO, false));
        assert!(retries.failing());
        retries.recovered();
        assert!(!retries.failing());
        assert!(retries.failed("auth refused".into(), Duration::ZERO, false));
    }

    #[tokio::test]
    async fn a_pause_ends_early_on_shutdown() {
        let mut retries = Retries::new(Duration::from_secs(3600));
        let shutdown = CancellationToken::new();
        shutdown.cancel();
        assert!(!retries.pause(&shutdown).await);
    }
}
