//! What `/healthz`, `/readyz` and `/status` answer: the state of the parts a
//! service depends on, reported by the parts themselves.
//!
//! A service registers its components (the replication stream, the source
//! database, the broker, one per apply direction). Each component is
//! reported ok or failed (with the error text, never a secret), and its
//! progress is marked from the hot path through a cheap [`Progress`] handle.
//! The service is ready when every component has been reported ok and none
//! is stalled: work pending and no progress for longer than `stall_after`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::Serialize;

/// Progress of one component, updated from the hot path without locks.
#[derive(Debug)]
pub struct Progress {
    origin: Instant,
    /// Milliseconds since `origin` of the last progress, plus one (0: never).
    last_millis: AtomicU64,
    pending: AtomicBool,
}

impl Progress {
    fn new(origin: Instant) -> Progress {
        Progress {
            origin,
            last_millis: AtomicU64::new(0),
            pending: AtomicBool::new(false),
        }
    }

    /// Something moved forward now; `pending` says whether work remains.
    pub fn advanced(&self, pending: bool) {
        let millis = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_millis.store(millis + 1, Ordering::Relaxed);
        self.pending.store(pending, Ordering::Relaxed);
    }

    /// Work is waiting (or not), without progress.
    pub fn set_pending(&self, pending: bool) {
        self.pending.store(pending, Ordering::Relaxed);
    }

    /// How long ago the last progress was, if any.
    pub fn since_last(&self, now: Instant) -> Option<Duration> {
        match self.last_millis.load(Ordering::Relaxed) {
            0 => None,
            millis => {
                Some(now.saturating_duration_since(self.origin + Duration::from_millis(millis - 1)))
            }
        }
    }

    pub fn pending(&self) -> bool {
        self.pending.load(Ordering::Relaxed)
    }
}

/// One component's reported condition.
#[derive(Debug, Clone, Default)]
struct Condition {
    /// `None` until first reported.
    ok: Option<bool>,
    error: Option<String>,
    error_at: Option<Instant>,
    details: BTreeMap<String, serde_json::Value>,
}

/// The health of one service.
#[derive(Debug)]
pub struct Health {
    service: &'static str,
    started_at: Instant,
    stall_after: Duration,
    components: Mutex<BTreeMap<String, (Condition, Arc<Progress>)>>,
    last_error: Mutex<Option<String>>,
}

/// A component as `/status` shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ComponentStatus {
    pub ok: bool,
    pub stalled: bool,
    pub pending: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seconds_since_progress: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(flatten)]
    pub details: BTreeMap<String, serde_json::Value>,
}

/// What `/status` answers.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ServiceStatus {
    pub service: String,
    /// `ready`, `starting` (a component not yet reported) or `not_ready`.
    pub state: String,
    pub ready: bool,
    pub uptime_seconds: f64,
    pub components: BTreeMap<String, ComponentStatus>,
    /// The last error any component reported, as text.
    pub last_error: Option<String>,
}

impl Health {
    pub fn new(service: &'static str, stall_after: Duration) -> Arc<Health> {
        Arc::new(Health {
            service,
            started_at: Instant::now(),
            stall_after,
            components: Mutex::new(BTreeMap::new()),
            last_error: Mutex::new(None),
        })
    }

    pub fn service(&self) -> &'static str {
        self.service
    }

    /// Registers `name` (not ready until reported ok) and returns its progress handle.
    pub fn component(&self, name: &str) -> Arc<Progress> {
        let mut components = self.lock();
        let entry = components.entry(name.to_owned()).or_insert_with(|| {
            (
                Condition::default(),
                Arc::new(Progress::new(self.started_at)),
            )
        });
        Arc::clone(&entry.1)
    }

    /// `name` works.
    pub fn ok(&self, name: &str) {
        self.update(name, |condition| {
            condition.ok = Some(true);
            condition.error = None;
        });
    }

    /// `name` failed with `error` (text for a person, no secrets).
    pub fn failed(&self, name: &str, error: &str) {
        self.update(name, |condition| {
            condition.ok = Some(false);
            condition.error = Some(error.to_owned());
            condition.error_at = Some(Instant::now());
        });
        *self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(format!("{name}: {error}"));
    }

    /// Sets a figure `/status` shows for `name` (a lag, a position).
    pub fn detail(&self, name: &str, key: &str, value: serde_json::Value) {
        self.update(name, |condition| {
            condition.details.insert(key.to_owned(), value);
        });
    }

    fn update(&self, name: &str, change: impl FnOnce(&mut Condition)) {
        let mut components = self.lock();
        let entry = components.entry(name.to_owned()).or_insert_with(|| {
            (
                Condition::default(),
                Arc::new(Progress::new(self.started_at)),
            )
        });
        change(&mut entry.0);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, (Condition, Arc<Progress>)>> {
        self.components
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The state of every component now.
    pub fn status(&self) -> ServiceStatus {
        let now = Instant::now();
        let components = self.lock();
        // Nothing registered yet: the service has not said what it needs.
        let mut starting = components.is_empty();
        let mut ready = true;
        let mut shown = BTreeMap::new();
        for (name, (condition, progress)) in components.iter() {
            let since = progress.since_last(now);
            let pending = progress.pending();
            let stalled = is_stalled(pending, since, now - self.started_at, self.stall_after);
            match condition.ok {
                None => starting = true,
                Some(false) => ready = false,
                Some(true) => {}
            }
            if stalled {
                ready = false;
            }
            shown.insert(
                name.clone(),
                ComponentStatus {
                    ok: condition.ok == Some(true),
                    stalled,
                    pending,
                    seconds_since_progress: since.map(|d| round_millis(d.as_secs_f64())),
                    error: condition.error.clone(),
                    details: condition.details.clone(),
                },
            );
        }
        drop(components);
        let ready = ready && !starting;
        let state = if ready {
            "ready"
        } else if starting {
            "starting"
        } else {
            "not_ready"
        };
        ServiceStatus {
            service: self.service.to_owned(),
            state: state.to_owned(),
            ready,
            uptime_seconds: round_millis((now - self.started_at).as_secs_f64()),
            components: shown,
            last_error: self
                .last_error
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        }
    }
}

/// Stalled: work is pending and nothing moved for longer than `stall_after`
/// (counted from the start when nothing ever moved).
pub fn is_stalled(
    pending: bool,
    since_progress: Option<Duration>,
    uptime: Duration,
    stall_after: Duration,
) -> bool {
    pending && since_progress.unwrap_or(uptime) > stall_after
}

fn round_millis(seconds: f64) -> f64 {
    (seconds * 1000.0).round() / 1000.0
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_service_is_starting_until_every_component_reported() {
        let health = Health::new("capture", Duration::from_secs(60));
        health.component("stream");
        health.component("broker");
        health.ok("stream");
        let status = health.status();
        assert_eq!(status.state, "starting");
        assert!(!status.ready);
        health.ok("broker");
        assert!(health.status().ready);
    }

    #[test]
    fn a_service_with_no_component_registered_yet_is_starting() {
        let health = Health::new("apply", Duration::from_secs(60));
        let status = health.status();
        assert_eq!(status.state, "starting");
        assert!(!status.ready);
    }

    #[test]
    fn a_failure_makes_it_not_ready_and_is_shown_until_it_recovers() {
        let health = Health::new("apply", Duration::from_secs(60));
        health.ok("broker");
        health.failed("broker", "kafka: broker transport failure");
        let status = health.status();
        assert_eq!(status.state, "not_ready");
        assert_eq!(
            status.components["broker"].error.as_deref(),
            Some("kafka: broker transport failure")
        );
        health.ok("broker");
        let status = health.status();
        assert!(status.ready);
        assert_eq!(
            status.last_error.as_deref(),
            Some("broker: kafka: broker transport failure"),
            "the last error stays visible after recovery"
        );
    }

    #[test]
    fn pending_work_without_progress_for_too_long_is_a_stall() {
        let long = Duration::from_secs(61);
        let limit = Duration::from_secs(60);
        assert!(is_stalled(true, Some(long), long, limit));
        assert!(is_stalled(true, None, long, limit));
        assert!(
            !is_stalled(false, Some(long), long, limit),
            "idle is not stalled"
        );
        assert!(!is_stalled(true, Some(Duration::from_secs(1)), long, limit));
    }

    #[test]
    fn progress_is_measured_from_the_last_advance() {
        let health = Health::new("capture", Duration::from_secs(60));
        let progress = health.component("stream");
        assert_eq!(progress.since_last(Instant::now()), None);
        progress.advanced(true);
        let since = progress.since_last(Instant::now()).unwrap();
        assert!(since < Duration::from_secs(5));
        assert!(progress.pending());
    }
}
