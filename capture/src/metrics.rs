//! Capture's metrics: the names (a contract with the dashboards and monitors
//! under `deploy/datadog`: change them only together) and one function per
//! thing capture reports, so that names and labels never drift.

use runtime::telemetry::metrics::{label, Kind, Metric, Unit};

/// Change events produced, by source and capture mode.
pub const CAPTURE_EVENTS: &str = "syncbridge_capture_events_total";
/// WAL bytes the server keeps for the slot (`pg_current_wal_lsn() - restart_lsn`).
pub const CAPTURE_SLOT_RETAINED_WAL: &str = "syncbridge_capture_slot_retained_wal_bytes";
/// Seconds since the slot's `confirmed_flush_lsn` last advanced while WAL
/// was waiting behind it; 0 when it is caught up.
pub const CAPTURE_CONFIRMED_FLUSH_AGE: &str = "syncbridge_capture_confirmed_flush_age_seconds";
/// Seconds behind of the polling fallback's watermark, per table.
pub const CAPTURE_POLLING_WATERMARK_AGE: &str = "syncbridge_capture_polling_watermark_age_seconds";
/// Capture sessions interrupted, by error kind.
pub const CAPTURE_ERRORS: &str = "syncbridge_capture_errors_total";
/// Replication slots found lost (see `crate::recovery`).
pub const CAPTURE_SLOT_LOST: &str = "syncbridge_capture_slot_lost_total";

/// Every metric capture exports but the common ones, described.
pub const CATALOG: &[Metric] = &[
    Metric {
        name: CAPTURE_EVENTS,
        kind: Kind::Counter,
        unit: None,
        help: "Change events produced, by source and capture mode.",
    },
    Metric {
        name: CAPTURE_SLOT_RETAINED_WAL,
        kind: Kind::Gauge,
        unit: Some(Unit::Bytes),
        help: "WAL bytes the server keeps for the replication slot.",
    },
    Metric {
        name: CAPTURE_CONFIRMED_FLUSH_AGE,
        kind: Kind::Gauge,
        unit: Some(Unit::Seconds),
        help:
            "Seconds since the slot's confirmed_flush_lsn last advanced while WAL waited behind it.",
    },
    Metric {
        name: CAPTURE_POLLING_WATERMARK_AGE,
        kind: Kind::Gauge,
        unit: Some(Unit::Seconds),
        help: "Seconds behind of the polling fallback's watermark, per table.",
    },
    Metric {
        name: CAPTURE_ERRORS,
        kind: Kind::Counter,
        unit: None,
        help: "Capture sessions interrupted, by error kind.",
    },
    Metric {
        name: CAPTURE_SLOT_LOST,
        kind: Kind::Counter,
        unit: None,
        help: "Starts that found the replication slot lost while the topic held streamed events.",
    },
];

/// A start found the slot of `source` lost.
pub fn slot_lost(source: &str) {
    metrics::counter!(CAPTURE_SLOT_LOST, label::SOURCE => source.to_owned()).increment(1);
}

/// A capture session was interrupted by an error of `kind`.
pub fn error(source: &str, kind: &'static str) {
    metrics::counter!(CAPTURE_ERRORS, label::SOURCE => source.to_owned(), label::KIND => kind)
        .increment(1);
}

/// The counter of events produced by `source` in `mode` (register once, increment often).
pub fn events(source: &str, mode: &'static str) -> metrics::Counter {
    metrics::counter!(CAPTURE_EVENTS, label::SOURCE => source.to_owned(), label::MODE => mode)
}

/// The slot's state as sampled.
pub fn slot(source: &str, slot: &str, retained_wal_bytes: f64, confirmed_flush_age: f64) {
    let labels = [
        (label::SOURCE, source.to_owned()),
        (label::SLOT, slot.to_owned()),
    ];
    metrics::gauge!(CAPTURE_SLOT_RETAINED_WAL, &labels).set(retained_wal_bytes);
    metrics::gauge!(CAPTURE_CONFIRMED_FLUSH_AGE, &labels).set(confirmed_flush_age);
}

/// The polling fallback's watermark of `table` is `age_seconds` behind.
pub fn polling_watermark_age(source: &str, table: &str, age_seconds: f64) {
    metrics::gauge!(
        CAPTURE_POLLING_WATERMARK_AGE,
        label::SOURCE => source.to_owned(),
        label::TABLE => table.to_owned()
    )
    .set(age_seconds);
}
