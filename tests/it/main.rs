//! End-to-end tests against the real stack (two PostgreSQL 15 clusters and a
//! Kafka-protocol broker) that `scripts/test` starts. One module per theme.

#![allow(clippy::unwrap_used)]

mod apply_conflicts;
mod apply_faults;
mod apply_mapping;
mod apply_recovery;
mod apply_single_writer;
mod apply_startup;
mod apply_writers;
mod backfill;
mod capture_config;
mod capture_events;
mod capture_faults;
mod capture_recovery;
mod capture_slot;
mod capture_transactions;
mod convergence;
mod deploy;
mod faults_under_load;
mod links;
mod polling;
mod security;
mod slot_loss;
mod telemetry;
mod topic_reset;
mod verify;
