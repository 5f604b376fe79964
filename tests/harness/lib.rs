//! The test harness: the local stack started by `scripts/test`, a fresh
//! database and topic per test, capture run in-process or as a process, and a
//! reader of the events on a topic.
//!
//! Every test gets its own database (on the legacy or platform cluster), its
//! own slot, publication and topic, so tests run in parallel without seeing
//! each other. Waits are on conditions, polled, with a deadline.
//!
//! The modules, each re-exported here so tests import from the crate root:
//! - `stack`: the shared stack and the two sides ([`Stack`], [`Side`]);
//! - `support`: unique names, [`eventually`], [`TempDir`], free ports,
//!   running a program;
//! - `databases`: per-test databases ([`TestDb`]) and SQL helpers;
//! - `ledger`: changes with ids of their own and the target's audit of
//!   them, the proof of exactly once ([`ChangeLedger`]);
//! - `broker`: topics, watermarks, reading and producing messages
//!   ([`EventReader`]); `sparse_batch`: a batch whose offsets skip;
//! - `capture_setup`: one capture under test ([`CaptureSetup`]);
//! - `processes`: service binaries as child processes ([`ServiceProcess`]);
//! - `bridge`: both sides captured and applied ([`Bridge`]);
//! - `workloads`: random writes on one side ([`random_writes`]);
//! - `unrestricted`: every operation on any row from both sides, seeded
//!   ([`Unrestricted`]);
//! - [`loads`]: what the benchmark loads write and read on each side;
//! - [`metrics`]: every metric name the services export;
//! - `proxy`: a TCP proxy that can blackhole or cut a link ([`Proxy`]);
//! - `private_servers`: a test's own cluster and broker
//!   ([`ThrowawayCluster`], [`PrivateBroker`]).

mod bridge;
mod broker;
mod capture_setup;
mod databases;
mod ledger;
pub mod loads;
pub mod metrics;
mod private_servers;
mod processes;
mod proxy;
mod sparse_batch;
mod stack;
mod support;
mod unrestricted;
mod workloads;

pub use bridge::{Bridge, RunningApply};
pub use broker::{
    create_topic, create_topic_on, dead_letter_reasons, high_watermark, high_watermark_on,
    last_offset, produce, read_messages, read_messages_across_gaps, topic_exists, EventReader,
};
pub use capture_setup::{three_rows_stream, CaptureSetup, RunningCapture, TELEMETRY_OFF};
pub use databases::{connect, count, until_count, with_database, TestDb};
pub use ledger::{
    check_both_ways, check_both_ways_collapsing, install_audit, install_audits, write_side_until,
    ChangeLedger, NamedUsers, SideLedger, TwoWayLoad,
};
pub use private_servers::{PrivateBroker, ThrowawayCluster};
pub use processes::{binary, run_command, Finished, ServiceProcess};
pub use proxy::{server_of, Proxy};
pub use sparse_batch::produce_with_offsets_skipped;
pub use stack::{mapping_dir, Side, Stack};
pub use support::{eventually, free_port, run_program, unique, TempDir};
pub use unrestricted::Unrestricted;
pub use workloads::{random_writes, random_writes_on_own_rows};
