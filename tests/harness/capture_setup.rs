//! One capture under test ([`CaptureSetup`]): its database, slot,
//! publication, topic and configuration, run in this process
//! ([`RunningCapture`]) or as the `capture` binary.

use std::time::Duration;

use anyhow::{bail, Result};

use crate::databases::TestDb;
use crate::processes::ServiceProcess;
use crate::stack::Stack;
use crate::support::eventually;

/// The `[telemetry]` body of the services under test unless a test asks for
/// endpoints: off, so that parallel tests do not compete for a port.
pub const TELEMETRY_OFF: &str = "listen = \"off\"\n";

/// Everything a capture under test needs: its database, names and config.
pub struct CaptureSetup {
    pub db: TestDb,
    pub source: String,
    pub slot: String,
    pub publication: String,
    pub topic: String,
    pub tables: Vec<String>,
    /// Extra TOML appended to the `[capture]` section.
    pub capture_options: String,
    /// The `[telemetry]` section's body (endpoints off unless a test sets them).
    pub telemetry_options: String,
    /// The `[polling]` section when capture runs in polling mode.
    pub polling: Option<String>,
    /// The source URL capture connects with, when not the database's own
    /// (another role, or through a proxy).
    pub source_url: Option<String>,
    /// The broker(s) capture produces to.
    pub brokers: String,
    /// Extra TOML appended to the `[source]` section.
    pub source_options: String,
    /// How often capture reports its acknowledged position to the server
    /// (`capture.status_interval`).
    pub status_interval: String,
}

impl CaptureSetup {
    /// Names derived from the database's unique name.
    pub fn new(db: TestDb, tables: &[&str]) -> CaptureSetup {
        let source = db.side.name().to_owned();
        let slot = format!("s_{}", db.name);
        let publication = format!("p_{}", db.name);
        let topic = format!("{}.changes", db.name);
        CaptureSetup {
            db,
            source,
            slot,
            publication,
            topic,
            tables: tables.iter().map(|t| (*t).to_owned()).collect(),
            capture_options: String::from("heartbeat_interval = \"0s\"\n"),
            telemetry_options: String::from(TELEMETRY_OFF),
            polling: None,
            source_url: None,
            brokers: Stack::get().brokers.clone(),
            source_options: String::new(),
            status_interval: String::from("200ms"),
        }
    }

    /// Runs capture in polling mode with `section` as its `[polling]` settings.
    pub fn use_polling(&mut self, section: &str) {
        self.polling = Some(section.to_owned());
    }

    /// Runs capture in streaming mode (the default).
    pub fn use_streaming(&mut self) {
        self.polling = None;
    }

    /// The capture configuration as TOML.
    pub fn toml(&self) -> String {
        let tables: Vec<String> = self.tables.iter().map(|t| format!("{t:?}")).collect();
        let polling = match &self.polling {
            Some(section) => format!("mode = \"polling\"\n\n[polling]\n{section}\n"),
            None => String::new(),
        };
        format!(
            "[source]\nname = {:?}\nurl = {:?}\ntables = [{}]\nslot = {:?}\npublication = {:?}\n{}\n\
             [kafka]\nbrokers = {:?}\ntopic = {:?}\n\n[capture]\nstatus_interval = {:?}\nmax_backoff = \"2s\"\n{}{polling}\n[telemetry]\n{}",
            self.source,
            self.source_url.as_deref().unwrap_or(&self.db.url),
            tables.join(", "),
            self.slot,
            self.publication,
            self.source_options,
            self.brokers,
            self.topic,
            self.status_interval,
            self.capture_options,
            self.telemetry_options,
        )
    }

    pub fn config(&self) -> Result<capture::Config> {
        Ok(capture::Config::from_toml(&self.toml())?)
    }

    /// In streaming mode, waits until capture has its slot.
    pub async fn wait_for_slot(&self) -> Result<()> {
        if self.polling.is_some() {
            return Ok(());
        }
        let waited = eventually("the slot", Duration::from_secs(60), || async {
            Ok(self.db.confirmed_flush_lsn(&self.slot).await?.map(|_| ()))
        })
        .await;
        match waited {
            Ok(()) => Ok(()),
            Err(error) => {
                let holders = self.db.transactions_holding_an_xid().await;
                bail!("{error:#}\na new slot waits for every transaction that holds an xid in the cluster; those running now:\n{holders}")
            }
        }
    }

    /// Starts capture in this process.
    pub fn start(&self) -> Result<RunningCapture> {
        let config = self.config()?;
        let shutdown = tokio_util::sync::CancellationToken::new();
        let task = tokio::spawn(capture::run(config, shutdown.clone()));
        Ok(RunningCapture { shutdown, task })
    }

    /// Writes the config to a file and starts the `capture` binary with it.
    pub fn spawn_process(&self) -> Result<ServiceProcess> {
        ServiceProcess::spawn("capture", &self.toml(), &self.db.name)
    }
}

/// Capture running as a task of the test's runtime.
pub struct RunningCapture {
    shutdown: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<capture::Result<()>>,
}

impl RunningCapture {
    /// Requests a clean shutdown and waits for it.
    pub async fn stop(self) -> Result<()> {
        self.shutdown.cancel();
        self.task.await??;
        Ok(())
    }

    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// What capture returned, once it stops by itself within `timeout`.
    pub async fn outcome(self, timeout: Duration) -> Result<capture::Result<()>> {
        match tokio::time::timeout(timeout, self.task).await {
            Ok(joined) => Ok(joined?),
            Err(_) => {
                bail!("capture was still running after {timeout:?}")
            }
        }
    }
}

/// Waits until a capture streams from slot `slot` of the database `admin`
/// is connected to, inserts three rows into its table `things (id int, label
/// text)` and reads their events from `topic`; returns how many it read.
pub async fn three_rows_stream(
    admin: &tokio_postgres::Client,
    slot: &str,
    topic: &str,
) -> Result<usize> {
    let wait = Duration::from_secs(120);
    eventually("capture to stream", wait, || async {
        let active = crate::databases::count(
            admin,
            &format!(
                "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{slot}' AND active"
            ),
        )
        .await?;
        Ok((active == 1).then_some(()))
    })
    .await?;
    admin
        .batch_execute("INSERT INTO things SELECT g, 'row ' || g FROM generate_series(1, 3) g")
        .await?;
    let mut reader = crate::broker::EventReader::new(topic)?;
    Ok(reader.read_at_least(3, wait).await?.len())
}
