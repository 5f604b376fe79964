//! The whole bridge for one test ([`Bridge`]): both reference databases and
//! their topics, two captures and apply in this process (or apply as a
//! process), waits for it to catch up and converge, and the history of the
//! rows out of step for a failure message.

use std::time::Duration;

use anyhow::{bail, Result};

use crate::broker::{create_topic_on, high_watermark_on, last_offset_on, EventReader};
use crate::capture_setup::{CaptureSetup, RunningCapture, TELEMETRY_OFF};
use crate::databases::{count, TestDb};
use crate::processes::ServiceProcess;
use crate::stack::{mapping_dir, Side, Stack};
use crate::support::eventually;

/// Both sides of the reference migration, captured and applied: two fresh
/// databases, two captures and one apply, all in this process.
pub struct Bridge {
    pub legacy: CaptureSetup,
    pub platform: CaptureSetup,
    pub counters: apply::Counters,
    pub dead_letter_topic: String,
    /// The `[telemetry]` section's body of apply (endpoints off by default).
    pub apply_telemetry: String,
    /// The legacy and the platform capture, while they run.
    captures: [Option<RunningCapture>; 2],
    apply: Option<RunningApply>,
    /// Extra `key = value` lines of apply's `[apply]` section.
    pub apply_options: String,
    /// The legacy and the platform URL apply connects with, when not the
    /// databases' own (through a proxy).
    pub apply_urls: [Option<String>; 2],
    /// Extra `key = value` lines of apply's `[legacy]` and `[platform]`
    /// sections.
    pub apply_link_options: [String; 2],
}

/// Apply running as a task of the test's runtime.
pub struct RunningApply {
    shutdown: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<apply::Result<()>>,
}

impl RunningApply {
    pub async fn stop(self) -> Result<()> {
        self.shutdown.cancel();
        self.task.await??;
        Ok(())
    }
}

impl Bridge {
    /// Creates both databases with the reference schemas and starts everything.
    pub async fn start(hint: &str) -> Result<Bridge> {
        let bridge = Bridge::prepare(hint).await?;
        bridge.run().await
    }

    /// Creates databases and topics; nothing runs yet.
    pub async fn prepare(hint: &str) -> Result<Bridge> {
        Bridge::prepare_on(hint, &Stack::get().brokers).await
    }

    /// [`Bridge::prepare`], with the topics on the broker(s) `brokers` (a
    /// test's own broker).
    pub async fn prepare_on(hint: &str, brokers: &str) -> Result<Bridge> {
        let stack = Stack::get();
        Bridge::prepare_with(
            hint,
            [&stack.legacy_admin_url, &stack.platform_admin_url],
            brokers,
        )
        .await
    }

    /// [`Bridge::prepare`], with the databases on the clusters
    /// `admin_urls` (legacy, platform) reach and the topics on `brokers`:
    /// servers of the test's own, to stop and start.
    pub async fn prepare_with(hint: &str, admin_urls: [&str; 2], brokers: &str) -> Result<Bridge> {
        let legacy_db =
            TestDb::with_reference_schema_on(Side::Legacy, admin_urls[0], &format!("{hint}_l"))
                .await?;
        let platform_db =
            TestDb::with_reference_schema_on(Side::Platform, admin_urls[1], &format!("{hint}_p"))
                .await?;
        let mut legacy = CaptureSetup::new(
            legacy_db,
            &[
                "public.users",
                "public.categories",
                "public.teams",
                "public.team_members",
                "public.geofences",
            ],
        );
        let mut platform = CaptureSetup::new(
            platform_db,
            &[
                "identity.identities",
                "org.groups",
                "org.memberships",
                "geo.zones",
            ],
        );
        legacy.capture_options = "heartbeat_interval = \"0s\"\n".into();
        platform.capture_options = "heartbeat_interval = \"0s\"\n".into();
        legacy.brokers = brokers.to_owned();
        platform.brokers = brokers.to_owned();
        create_topic_on(brokers, &legacy.topic).await?;
        create_topic_on(brokers, &platform.topic).await?;
        let dead_letter_topic = format!("{}.dead", legacy.db.name);
        create_topic_on(brokers, &dead_letter_topic).await?;
        Ok(Bridge {
            legacy,
            platform,
            counters: apply::Counters::default(),
            dead_letter_topic,
            apply_telemetry: String::from(TELEMETRY_OFF),
            captures: [None, None],
            apply: None,
            apply_options: String::new(),
            apply_urls: [None, None],
            apply_link_options: [String::new(), String::new()],
        })
    }

    /// Starts both captures and apply.
    pub async fn run(mut self) -> Result<Bridge> {
        self.start_captures().await?;
        self.start_apply()?;
        Ok(self)
    }

    /// Starts both captures (in this process) and waits for their slots.
    pub async fn start_captures(&mut self) -> Result<()> {
        self.captures[0] = Some(self.legacy.start()?);
        self.captures[1] = Some(self.platform.start()?);
        for setup in [&self.legacy, &self.platform] {
            setup.wait_for_slot().await?;
        }
        Ok(())
    }

    fn setup(&self, side: Side) -> (usize, &CaptureSetup) {
        match side {
            Side::Legacy => (0, &self.legacy),
            Side::Platform => (1, &self.platform),
        }
    }

    /// Stops one side's capture (cleanly: what it read is delivered).
    pub async fn stop_capture(&mut self, side: Side) -> Result<()> {
        let (index, _) = self.setup(side);
        match self.captures[index].take() {
            Some(capture) => capture.stop().await,
            None => bail!("the {} capture is not running", side.name()),
        }
    }

    /// Starts one side's capture with its current setup, without waiting.
    pub fn start_capture(&mut self, side: Side) -> Result<()> {
        let (index, setup) = self.setup(side);
        anyhow::ensure!(
            self.captures[index].is_none(),
            "the {} capture is running",
            side.name()
        );
        let capture = setup.start()?;
        self.captures[index] = Some(capture);
        Ok(())
    }

    /// The outcome of one side's capture once it has stopped by itself.
    pub async fn capture_outcome(
        &mut self,
        side: Side,
        timeout: Duration,
    ) -> Result<capture::Result<()>> {
        let (index, _) = self.setup(side);
        let Some(capture) = self.captures[index].take() else {
            bail!("the {} capture is not running", side.name());
        };
        capture.outcome(timeout).await
    }

    /// Stops one side's capture, then starts it again with its current setup
    /// (e.g. after `use_polling` or `use_streaming`).
    pub async fn restart_capture(&mut self, side: Side) -> Result<()> {
        // One writer at a time on the topic: the old one has delivered and
        // stopped before the new one starts.
        self.stop_capture(side).await?;
        self.start_capture(side)?;
        self.setup(side).1.wait_for_slot().await
    }

    /// The apply configuration as TOML.
    pub fn apply_toml(&self) -> String {
        format!(
            "[legacy]\nurl = {:?}\ntopic = {:?}\n{}\n[platform]\nurl = {:?}\ntopic = {:?}\n{}\n\
             [kafka]\nbrokers = {:?}\ngroup_id = {:?}\ndead_letter_topic = {:?}\n\n\
             [apply]\nmapping_dir = {:?}\nmax_backoff = \"2s\"\n{}\n[telemetry]\n{}",
            self.apply_urls[0].as_deref().unwrap_or(&self.legacy.db.url),
            self.legacy.topic,
            self.apply_link_options[0],
            self.apply_urls[1]
                .as_deref()
                .unwrap_or(&self.platform.db.url),
            self.platform.topic,
            self.apply_link_options[1],
            self.legacy.brokers,
            format!("apply_{}", self.legacy.db.name),
            self.dead_letter_topic,
            mapping_dir().display().to_string(),
            self.apply_options,
            self.apply_telemetry,
        )
    }

    /// Starts apply in this process.
    pub fn start_apply(&mut self) -> Result<()> {
        let toml = self.apply_toml();
        self.start_apply_with(&toml)
    }

    /// Starts apply in this process with a configuration of the test's own.
    pub fn start_apply_with(&mut self, toml: &str) -> Result<()> {
        let config = apply::Config::from_toml(toml)?;
        let shutdown = tokio_util::sync::CancellationToken::new();
        let task = tokio::spawn(apply::run(config, self.counters.clone(), shutdown.clone()));
        self.apply = Some(RunningApply { shutdown, task });
        Ok(())
    }

    /// Stops apply (cleanly).
    pub async fn stop_apply(&mut self) -> Result<()> {
        if let Some(apply) = self.apply.take() {
            apply.stop().await?;
        }
        Ok(())
    }

    /// What apply (in this process) returned, once it stops by itself
    /// within `timeout`.
    pub async fn apply_outcome(&mut self, timeout: Duration) -> Result<apply::Result<()>> {
        let Some(apply) = self.apply.take() else {
            bail!("apply is not running");
        };
        match tokio::time::timeout(timeout, apply.task).await {
            Ok(joined) => Ok(joined?),
            Err(_) => bail!("apply was still running after {timeout:?}"),
        }
    }

    /// Whether apply (in this process) has ended by itself: stopped, not
    /// retrying.
    pub fn apply_ended(&self) -> bool {
        self.apply
            .as_ref()
            .is_some_and(|apply| apply.task.is_finished())
    }

    pub fn legacy(&self) -> &TestDb {
        &self.legacy.db
    }

    pub fn platform(&self) -> &TestDb {
        &self.platform.db
    }

    /// Compares the two databases once.
    pub async fn compare(&self) -> Result<apply::verify::Report> {
        let mapping = apply::mapping::Mapping::load_dir(&mapping_dir())?;
        Ok(
            apply::verify::compare(&mapping, self.legacy().client(), self.platform().client())
                .await?,
        )
    }

    /// Waits until apply has committed, in each target, the position of
    /// the last message on the other side's topic, and re-asserted every
    /// delete it recorded: everything captured so far is applied (or
    /// skipped as an echo) and no batch is left open.
    pub async fn caught_up(&self, timeout: Duration) -> Result<()> {
        let directions = [
            (&self.legacy.topic, self.platform(), "legacy"),
            (&self.platform.topic, self.legacy(), "platform"),
        ];
        let waited = eventually("apply to store the position of each topic's end", timeout, || async {
            for (topic, target, source) in directions {
                let stored = count(
                    target.client(),
                    &format!("SELECT coalesce(max(kafka_offset), -1) FROM syncbridge.apply_position WHERE source = '{source}'"),
                )
                .await?;
                // The watermark first: it is cheap, and never past the end.
                let brokers = &self.legacy.brokers;
                let high = high_watermark_on(brokers, topic)?;
                if stored < high - 1 || stored < last_offset_on(brokers, topic, high).await? {
                    return Ok(None);
                }
                // A delete is re-asserted on its own side after its batch
                // committed, and its outbox entry removed after that.
                if count(target.client(), "SELECT count(*) FROM syncbridge.delete_outbox").await? > 0 {
                    return Ok(None);
                }
            }
            Ok(Some(()))
        })
        .await;
        match waited {
            Ok(()) => Ok(()),
            Err(error) => bail!("{error:#}\n{}", self.open_transactions().await),
        }
    }

    /// Each side's sessions that hold a transaction id, for a failure
    /// message.
    async fn open_transactions(&self) -> String {
        let mut open = String::new();
        for db in [self.legacy(), self.platform()] {
            let holders = db.transactions_holding_an_xid().await;
            open.push_str(&format!(
                "{} transactions holding an xid:\n{holders}\n",
                db.side.name()
            ));
        }
        open
    }

    /// Waits until both databases correspond, twice in a row with no apply
    /// activity in between.
    pub async fn converged(&self, timeout: Duration) -> Result<apply::verify::Report> {
        let previous = std::cell::Cell::new(None);
        let outcome = eventually("the two databases to correspond", timeout, || async {
            let activity = self.activity();
            let report = self.compare().await?;
            let settled = report.corresponds() && previous.get() == Some(activity);
            previous.set(report.corresponds().then_some(activity));
            Ok(settled.then_some(report))
        })
        .await;
        match outcome {
            Ok(report) => Ok(report),
            Err(error) => {
                let last = self
                    .compare()
                    .await
                    .map(|r| r.to_string())
                    .unwrap_or_default();
                let history = self
                    .history_of_differences()
                    .await
                    .unwrap_or_else(|e| format!("(history unavailable: {e:#})"));
                let open = self.open_transactions().await;
                bail!("{error:#}\nlast comparison:\n{last}\n{history}\n{open}")
            }
        }
    }

    /// For each row the comparison finds out of step (a few per entity):
    /// what both databases' bookkeeping says about it (id correspondence,
    /// tombstones, deletes to re-assert, the row's version and its ledger
    /// entry when apply wrote it) and every event of
    /// it on both topics, in order. Printed when convergence times out, so a
    /// rare divergence can be explained from one failed run.
    pub async fn history_of_differences(&self) -> Result<String> {
        let report = self.compare().await?;
        let mut keys: Vec<String> = Vec::new();
        let mut entities: Vec<String> = Vec::new();
        for entity in report.entities.iter().filter(|e| !e.corresponds()) {
            keys.extend(entity.missing_on_platform.iter().take(3).cloned());
            keys.extend(entity.missing_on_legacy.iter().take(3).cloned());
            keys.extend(entity.different.iter().take(3).map(|(k, _)| k.clone()));
            entities.push(entity.entity.clone());
        }
        self.history_of(&entities, keys).await
    }

    /// What both databases' bookkeeping says about the rows of `entities`
    /// with one of `keys` (either side's ids, as text; their counterparts
    /// are added), and every event of them on both topics, in order. For a
    /// test's failure message when an outcome is wrong although both sides
    /// agree.
    pub async fn history_of(&self, entities: &[String], mut keys: Vec<String>) -> Result<String> {
        use std::fmt::Write as _;
        let mapping = apply::mapping::Mapping::load_dir(&mapping_dir())?;
        // The entities' tables, on either side.
        let mut tables: Vec<(String, String)> = Vec::new();
        // The same, with the side and key column, to read row versions.
        let mut keyed: Vec<(apply::mapping::Side, String)> = Vec::new();
        for mapped in entities.iter().filter_map(|e| mapping.entity(e)) {
            for side in [apply::mapping::Side::Legacy, apply::mapping::Side::Platform] {
                let table = mapped.table(side);
                tables.push((table.schema.clone(), table.table.clone()));
                keyed.push((
                    side,
                    format!(
                        "SELECT {key}::text AS key, xmin::text AS xmin FROM {} WHERE {key}::text = ANY($1)",
                        table.qualified(),
                        key = table.key
                    ),
                ));
            }
        }
        if keys.is_empty() {
            return Ok(String::new());
        }
        let mut out = String::from("history of the rows:\n");
        // Counterparts, from either side's correspondence.
        for db in [self.legacy(), self.platform()] {
            let rows = db
                .client()
                .query(
                    "SELECT entity, legacy_id::text, platform_id::text FROM syncbridge.id_pairs \
                     WHERE legacy_id::text = ANY($1) OR platform_id::text = ANY($1)",
                    &[&keys],
                )
                .await?;
            for row in rows {
                let (legacy, platform): (String, String) = (row.get(1), row.get(2));
                for key in [legacy, platform] {
                    if !keys.contains(&key) {
                        keys.push(key);
                    }
                }
            }
        }
        for (side, db) in [("legacy", self.legacy()), ("platform", self.platform())] {
            for (what, sql) in [
                ("id pair", "SELECT row_to_json(m)::text FROM syncbridge.id_pairs m WHERE legacy_id::text = ANY($1) OR platform_id::text = ANY($1)"),
                ("clock", "SELECT row_to_json(c)::text FROM syncbridge.row_clock c WHERE row_key = ANY($1)"),
                ("delete_outbox", "SELECT row_to_json(o)::text FROM syncbridge.delete_outbox o WHERE source_key = ANY($1)"),
            ] {
                for row in db.client().query(sql, &[&keys]).await? {
                    let _ = writeln!(out, "  {side} {what}: {}", row.get::<_, String>(0));
                }
            }
            // Each row's current version, and whether apply wrote it.
            for (_, select) in keyed.iter().filter(|(s, _)| s.as_str() == side) {
                let sql = format!(
                    "SELECT v.key, v.xmin, (SELECT row_to_json(l)::text FROM syncbridge.apply_ledger l \
                     WHERE l.written_xmin = v.xmin) FROM ({select}) v"
                );
                for row in db.client().query(&sql, &[&keys]).await? {
                    let (key, xmin, ledger): (String, String, Option<String>) =
                        (row.get(0), row.get(1), row.get(2));
                    let ledger = ledger.unwrap_or_else(|| "not apply's write".to_owned());
                    let _ = writeln!(
                        out,
                        "  {side} version of {key}: xmin {xmin}, ledger {ledger}"
                    );
                }
            }
        }
        for topic in [&self.legacy.topic, &self.platform.topic] {
            let mut reader = EventReader::on(&self.legacy.brokers, topic)?;
            let end = high_watermark_on(&self.legacy.brokers, topic)?;
            reader
                .read_until("the whole topic", Duration::from_secs(30), |events| {
                    events.len() as i64 >= end
                })
                .await?;
            for event in &reader.events {
                let ours = tables
                    .iter()
                    .any(|(schema, table)| *schema == event.schema && *table == event.table);
                let mentions = ours
                    && event
                        .key
                        .iter()
                        .chain(event.after.iter().flatten())
                        .filter_map(|c| pg::value::to_text(&c.value))
                        .any(|text| keys.contains(&text));
                if mentions {
                    let updated_at = event
                        .after
                        .iter()
                        .flatten()
                        .find(|c| c.name == "updated_at")
                        .and_then(|c| pg::value::to_text(&c.value));
                    let _ = writeln!(
                        out,
                        "  {topic}: {:?} {}.{} key {:?} updated_at {:?} xid {} commit_lsn {:X} commit_time {} mode {:?} echo {}",
                        event.op,
                        event.schema,
                        event.table,
                        event.key.iter().filter_map(|c| pg::value::to_text(&c.value)).collect::<Vec<_>>(),
                        updated_at,
                        event.transaction.xid,
                        event.transaction.commit_lsn,
                        event.transaction.commit_time_micros,
                        event.mode,
                        event.marker.is_some(),
                    );
                }
            }
        }
        Ok(out)
    }

    fn activity(&self) -> (u64, u64) {
        let a = self.counters.legacy_to_platform.snapshot();
        let b = self.counters.platform_to_legacy.snapshot();
        (
            a.transactions + a.echoes + a.dead_lettered,
            b.transactions + b.echoes + b.dead_lettered,
        )
    }

    /// Stops everything and drops the slots.
    pub async fn stop(mut self) -> Result<()> {
        self.stop_apply().await?;
        for capture in self.captures.iter_mut().filter_map(Option::take) {
            capture.stop().await?;
        }
        self.legacy.db.drop_slot(&self.legacy.slot).await?;
        self.platform.db.drop_slot(&self.platform.slot).await?;
        Ok(())
    }
}

impl Bridge {
    /// Writes the apply config to a file and starts the `apply` binary.
    pub fn spawn_apply_process(&self) -> Result<ServiceProcess> {
        ServiceProcess::spawn(
            "apply",
            &self.apply_toml(),
            &format!("{}_apply", self.legacy.db.name),
        )
    }
}
