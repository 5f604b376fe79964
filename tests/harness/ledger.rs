//! The change ledger: proof that every change crossed exactly once.
//!
//! A count of rows on a UNIQUE column cannot show a change applied twice
//! (the second write lands on the same row), nor an update that never
//! landed. So the workload gives every change it writes an id of its own,
//! carried in a column, and records the ids of the transactions that
//! committed ([`ChangeLedger`]); on the target an audit trigger records
//! every row version written there, with the id it carries ([`install_audit`]).
//! Each id written must appear in the audit exactly once: missing is a lost
//! change, twice is a change applied twice.
//!
//! The workload here writes legacy `users`; the id travels in `full_name`
//! (`Change c<n>`), which the platform keeps as `family_name` (`c<n>`).

use std::collections::BTreeMap;

use anyhow::{bail, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::bridge::Bridge;
use crate::databases::{connect, TestDb};
use crate::stack::Side;

/// What a change did to its row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Inserted or updated: the row carries the change's id afterwards.
    Written,
    /// Deleted: the id is the one the row carried when it was deleted.
    Deleted,
}

/// The changes a workload committed, by id.
#[derive(Debug, Default)]
pub struct ChangeLedger {
    changes: Vec<(String, Change)>,
}

/// Creates, on the platform, the audit of `identity.identities`: one entry
/// per row version written or deleted, with the change id it carries.
pub async fn install_audit(platform: &TestDb) -> Result<()> {
    platform
        .execute(
            "CREATE TABLE public.change_audit (change text NOT NULL, op text NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp());
             CREATE FUNCTION public.audit_identity() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
               IF TG_OP = 'DELETE' THEN
                 INSERT INTO public.change_audit VALUES (OLD.family_name, 'D');
                 RETURN OLD;
               END IF;
               INSERT INTO public.change_audit VALUES (NEW.family_name, 'W');
               RETURN NEW;
             END $$;
             CREATE TRIGGER audit AFTER INSERT OR UPDATE OR DELETE ON identity.identities
               FOR EACH ROW EXECUTE FUNCTION public.audit_identity();",
        )
        .await
}

impl ChangeLedger {
    /// Writes `transactions` transactions of one to three statements on
    /// legacy `users` (inserts, updates and deletes of any row), recording
    /// the changes of those that committed.
    pub async fn write_legacy_users(
        url: &str,
        transactions: usize,
        seed: u64,
    ) -> Result<ChangeLedger> {
        let mut client = connect(url).await?;
        let mut rng = StdRng::seed_from_u64(seed);
        let mut ledger = ChangeLedger::default();
        let mut n = 0u64;
        for _ in 0..transactions {
            let statements = rng.gen_range(1..=3);
            let transaction = client.build_transaction().start().await?;
            let mut changes = Vec::new();
            for _ in 0..statements {
                n += 1;
                let id = format!("c{seed}x{n}");
                match rng.gen_range(0..100) {
                    0..=49 => {
                        transaction
                            .execute(
                                "INSERT INTO users (email, full_name, role, inserted_at, updated_at)
                                 VALUES ($1 || '@example.com', 'Change ' || $1, 'member', now() AT TIME ZONE 'UTC', now() AT TIME ZONE 'UTC')",
                                &[&id],
                            )
                            .await?;
                        changes.push((id, Change::Written));
                    }
                    50..=84 => {
                        let updated = transaction
                            .execute(
                                "UPDATE users SET full_name = 'Change ' || $1, updated_at = now() AT TIME ZONE 'UTC'
                                 WHERE id = (SELECT id FROM users ORDER BY random() LIMIT 1)",
                                &[&id],
                            )
                            .await?;
                        if updated == 1 {
                            changes.push((id, Change::Written));
                        }
                    }
                    _ => {
                        let deleted = transaction
                            .query_opt(
                                "DELETE FROM users WHERE id = (SELECT id FROM users ORDER BY random() LIMIT 1)
                                 RETURNING split_part(full_name, ' ', 2)",
                                &[],
                            )
                            .await?;
                        if let Some(row) = deleted {
                            changes.push((row.get(0), Change::Deleted));
                        }
                    }
                }
            }
            transaction.commit().await?;
            ledger.changes.extend(changes);
        }
        Ok(ledger)
    }

    /// Takes in the changes of `other` (a later run of writes).
    pub fn extend(&mut self, other: ChangeLedger) {
        self.changes.extend(other.changes);
    }

    /// How many changes were recorded.
    pub fn len(&self) -> usize {
        self.changes.len()
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// Checks the platform's audit: each change recorded here applied there
    /// exactly once. Fails with the lost and the doubled changes.
    pub async fn check_applied_once(&self, platform: &TestDb) -> Result<()> {
        let rows = platform
            .client()
            .query(
                "SELECT change, op, count(*) FROM public.change_audit GROUP BY change, op",
                &[],
            )
            .await?;
        let mut audit: BTreeMap<(String, String), i64> = BTreeMap::new();
        for row in rows {
            audit.insert((row.get(0), row.get(1)), row.get(2));
        }
        let mut lost = Vec::new();
        let mut doubled = Vec::new();
        for (id, change) in &self.changes {
            let op = match change {
                Change::Written => "W",
                Change::Deleted => "D",
            };
            match audit
                .get(&(id.clone(), op.to_owned()))
                .copied()
                .unwrap_or(0)
            {
                1 => {}
                0 => lost.push(format!("{id} {op}")),
                times => doubled.push(format!("{id} {op} x{times}")),
            }
        }
        if !lost.is_empty() || !doubled.is_empty() {
            bail!(
                "of {} changes, {} lost (first: {:?}) and {} applied more than once (first: {:?})",
                self.changes.len(),
                lost.len(),
                lost.iter().take(5).collect::<Vec<_>>(),
                doubled.len(),
                doubled.iter().take(5).collect::<Vec<_>>()
            );
        }
        Ok(())
    }
}

/// Legacy users a test writes, each with a name no other change has: a
/// small ledger for tests that follow a few changes across (the name
/// crosses as `given_name family_name`).
#[derive(Debug, Default)]
pub struct NamedUsers(pub Vec<String>);

impl NamedUsers {
    /// Inserts a legacy user named `name` and records it.
    pub async fn insert(&mut self, bridge: &Bridge, name: &str) -> Result<()> {
        bridge
            .legacy()
            .execute(&format!(
                "INSERT INTO users (email, full_name, role, inserted_at, updated_at)
                 VALUES ('{email}@example.com', '{name}', 'member', now() AT TIME ZONE 'UTC', now() AT TIME ZONE 'UTC')",
                email = name.replace(' ', ".").to_lowercase(),
            ))
            .await?;
        self.0.push(name.to_owned());
        Ok(())
    }

    /// Renames the legacy user named `from` to `to` and records it.
    pub async fn rename(&mut self, bridge: &Bridge, from: &str, to: &str) -> Result<()> {
        bridge
            .legacy()
            .execute(&format!(
                "UPDATE users SET full_name = '{to}', updated_at = now() AT TIME ZONE 'UTC' WHERE full_name = '{from}'"
            ))
            .await?;
        self.0.retain(|n| n != from);
        self.0.push(to.to_owned());
        Ok(())
    }

    /// The recorded changes the platform does not show.
    pub async fn missing_on_the_platform(&self, bridge: &Bridge) -> Result<Vec<String>> {
        let rows = bridge
            .platform()
            .client()
            .query(
                "SELECT given_name || ' ' || family_name FROM identity.identities",
                &[],
            )
            .await?;
        let present: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        Ok(self
            .0
            .iter()
            .filter(|name| !present.contains(name))
            .cloned()
            .collect())
    }
}

/// Which side's writer made a change: the first letter of its id (`l` for
/// legacy, `p` for the platform), so each side's audit tells its own
/// changes from those apply wrote there.
fn prefix(side: Side) -> &'static str {
    match side {
        Side::Legacy => "l",
        Side::Platform => "p",
    }
}

/// Creates on each side the audit of its users' table: one entry per row
/// version written or deleted there, by anyone, with the change id it
/// carries (legacy `users.full_name` is `Change <id>`; the platform keeps it
/// as `family_name`). Written in the writing transaction, each side's audit
/// is also the record of what its own writers committed.
pub async fn install_audits(legacy: &TestDb, platform: &TestDb) -> Result<()> {
    install_audit(platform).await?;
    legacy
        .execute(
            "CREATE TABLE public.change_audit (change text NOT NULL, op text NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp());
             CREATE FUNCTION public.audit_user() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
               IF TG_OP = 'DELETE' THEN
                 INSERT INTO public.change_audit VALUES (split_part(OLD.full_name, ' ', 2), 'D');
                 RETURN OLD;
               END IF;
               INSERT INTO public.change_audit VALUES (split_part(NEW.full_name, ' ', 2), 'W');
               RETURN NEW;
             END $$;
             CREATE TRIGGER audit AFTER INSERT OR UPDATE OR DELETE ON public.users
               FOR EACH ROW EXECUTE FUNCTION public.audit_user();",
        )
        .await
}

/// What one side's writer committed, and the transactions whose commit it
/// sent but never heard back about (the link or the server died): those
/// may or may not have committed, and the side's own audit tells.
#[derive(Debug, Default)]
pub struct SideLedger {
    pub side: Option<Side>,
    pub committed: ChangeLedger,
    pub uncertain: usize,
    pub transactions: usize,
}

/// Writes one side's users (inserts, and updates and deletes of rows this
/// side's writers made) in transactions of one to three statements, one
/// transaction every `pace`, until `stop`; a failed transaction is given
/// up and the writer connects again. Each change carries an id of its own.
/// Rows the other side made are left alone: a change that loses a conflict
/// is rightly never applied, and the ledger proves delivery, not the
/// conflict rule (the randomized convergence tests do that).
pub async fn write_side_until(
    side: Side,
    url: String,
    seed: u64,
    pace: std::time::Duration,
    stop: tokio_util::sync::CancellationToken,
) -> Result<SideLedger> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut ledger = SideLedger {
        side: Some(side),
        ..SideLedger::default()
    };
    let mut client = None;
    let mut n = 0u64;
    let mut ticks = tokio::time::interval(pace);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !stop.is_cancelled() {
        ticks.tick().await;
        let mut connected = match client.take() {
            Some(connected) => connected,
            None => match connect(&url).await {
                Ok(connected) => connected,
                Err(_) => continue,
            },
        };
        let statements: Vec<(String, u32)> = (0..rng.gen_range(1..=3))
            .map(|_| {
                n += 1;
                (format!("{}{seed}x{n}", prefix(side)), rng.gen_range(0..100))
            })
            .collect();
        match write_one(&mut connected, side, &statements).await {
            Ok(changes) => {
                ledger.committed.changes.extend(changes);
                ledger.transactions += 1;
                client = Some(connected);
            }
            Err(WriteFailure::BeforeCommit) => {}
            Err(WriteFailure::AtCommit) => ledger.uncertain += 1,
        }
    }
    Ok(ledger)
}

/// Where a transaction of the writer failed.
enum WriteFailure {
    /// Nothing was committed.
    BeforeCommit,
    /// The commit was sent; its outcome is unknown.
    AtCommit,
}

async fn write_one(
    client: &mut tokio_postgres::Client,
    side: Side,
    statements: &[(String, u32)],
) -> std::result::Result<Vec<(String, Change)>, WriteFailure> {
    let (insert, update, delete) = match side {
        Side::Legacy => (
            "INSERT INTO users (email, full_name, role, inserted_at, updated_at)
             VALUES ($1 || '@example.com', 'Change ' || $1, 'member', now() AT TIME ZONE 'UTC', now() AT TIME ZONE 'UTC')",
            "UPDATE users SET full_name = 'Change ' || $1, updated_at = now() AT TIME ZONE 'UTC'
             WHERE id = (SELECT id FROM users WHERE full_name LIKE 'Change l%' ORDER BY random() LIMIT 1)",
            "DELETE FROM users WHERE id = (SELECT id FROM users WHERE full_name LIKE 'Change l%' ORDER BY random() LIMIT 1)
             RETURNING split_part(full_name, ' ', 2)",
        ),
        Side::Platform => (
            "INSERT INTO identity.identities (id, email, given_name, family_name, kind, created_at, updated_at)
             VALUES (gen_random_uuid(), $1 || '@example.com', 'Change', $1, 'member', now(), now())",
            "UPDATE identity.identities SET family_name = $1, updated_at = now()
             WHERE id = (SELECT id FROM identity.identities WHERE family_name LIKE 'p%' ORDER BY random() LIMIT 1)",
            "DELETE FROM identity.identities
             WHERE id = (SELECT id FROM identity.identities WHERE family_name LIKE 'p%' ORDER BY random() LIMIT 1)
             RETURNING family_name",
        ),
    };
    let transaction = client
        .build_transaction()
        .start()
        .await
        .map_err(|_| WriteFailure::BeforeCommit)?;
    let mut changes = Vec::new();
    for (id, dice) in statements {
        match dice {
            0..=49 => {
                transaction
                    .execute(insert, &[id])
                    .await
                    .map_err(|_| WriteFailure::BeforeCommit)?;
                changes.push((id.clone(), Change::Written));
            }
            50..=84 => {
                let updated = transaction
                    .execute(update, &[id])
                    .await
                    .map_err(|_| WriteFailure::BeforeCommit)?;
                if updated == 1 {
                    changes.push((id.clone(), Change::Written));
                }
            }
            _ => {
                let deleted = transaction
                    .query_opt(delete, &[])
                    .await
                    .map_err(|_| WriteFailure::BeforeCommit)?;
                if let Some(row) = deleted {
                    changes.push((row.get(0), Change::Deleted));
                }
            }
        }
    }
    transaction
        .commit()
        .await
        .map_err(|_| WriteFailure::AtCommit)?;
    Ok(changes)
}

/// A steady write workload on both sides at once, one writer per side,
/// running until [`TwoWayLoad::finish`].
pub struct TwoWayLoad {
    stop: tokio_util::sync::CancellationToken,
    writers: Vec<tokio::task::JoinHandle<Result<SideLedger>>>,
}

impl TwoWayLoad {
    /// Starts a writer on each side of `bridge` (seeded with `seed`), one
    /// transaction every `pace` each.
    pub fn start(bridge: &Bridge, seed: u64, pace: std::time::Duration) -> TwoWayLoad {
        let stop = tokio_util::sync::CancellationToken::new();
        let writers = [
            (Side::Legacy, bridge.legacy()),
            (Side::Platform, bridge.platform()),
        ]
        .into_iter()
        .map(|(side, db)| {
            tokio::spawn(write_side_until(
                side,
                db.url.clone(),
                seed,
                pace,
                stop.clone(),
            ))
        })
        .collect();
        TwoWayLoad { stop, writers }
    }

    /// Stops both writers and returns what each committed.
    pub async fn finish(self) -> Result<Vec<SideLedger>> {
        self.stop.cancel();
        let mut ledgers = Vec::new();
        for writer in self.writers {
            ledgers.push(writer.await??);
        }
        Ok(ledgers)
    }
}

/// One side's audit: how many times each (change id, `W` or `D`) was
/// recorded there, and whether its first record falls within `window`
/// (server times, as text).
async fn audit_of(
    db: &TestDb,
    window: Option<&(String, String)>,
) -> Result<BTreeMap<(String, String), (i64, bool)>> {
    let (from, to) = window
        .map(|(from, to)| (from.as_str(), to.as_str()))
        .unwrap_or(("infinity", "-infinity"));
    let rows = db
        .client()
        .query(
            "SELECT change, op, count(*), min(at) BETWEEN $1::text::timestamptz AND $2::text::timestamptz
               FROM public.change_audit GROUP BY change, op",
            &[&from, &to],
        )
        .await?;
    Ok(rows
        .into_iter()
        .map(|row| ((row.get(0), row.get(1)), (row.get(2), row.get(3))))
        .collect())
}

/// Checks both ways, from the two audits ([`install_audits`]), that every
/// change a side's writers committed was applied on the other side exactly
/// once and never written back on its own side (an echo); and that each
/// change a writer saw committed is in its side's audit (the audit is the
/// ledger: it also holds the commits the writer never heard back about).
/// Fails naming the lost, doubled and echoed changes.
pub async fn check_both_ways(
    legacy: &TestDb,
    platform: &TestDb,
    written: &[SideLedger],
) -> Result<()> {
    check_both_ways_collapsing(legacy, platform, written, [None, None]).await
}

/// [`check_both_ways`], where the changes a side made within its
/// `collapsible` window (server times, as text: legacy's, the platform's)
/// may have been collapsed into a later version of their row before they
/// crossed (read by polling, which sees only each row's latest version):
/// each of those crossed at most once, and those outside it exactly once.
/// That the rows ended equal is the convergence check's to say.
pub async fn check_both_ways_collapsing(
    legacy: &TestDb,
    platform: &TestDb,
    written: &[SideLedger],
    collapsible: [Option<(String, String)>; 2],
) -> Result<()> {
    let audits = [
        audit_of(legacy, collapsible[0].as_ref()).await?,
        audit_of(platform, collapsible[1].as_ref()).await?,
    ];
    let mut problems = Vec::new();
    for (own, other, side) in [(0, 1, Side::Legacy), (1, 0, Side::Platform)] {
        let made_here: Vec<(&(String, String), i64, bool)> = audits[own]
            .iter()
            .filter(|((change, _), _)| change.starts_with(prefix(side)))
            .map(|(key, (times, in_window))| (key, *times, *in_window))
            .collect();
        for ledger in written.iter().filter(|l| l.side == Some(side)) {
            let unrecorded: Vec<&String> = ledger
                .committed
                .changes
                .iter()
                .filter(|(id, change)| {
                    let op = if *change == Change::Written { "W" } else { "D" };
                    !audits[own].contains_key(&(id.clone(), op.to_owned()))
                })
                .map(|(id, _)| id)
                .take(5)
                .collect();
            anyhow::ensure!(
                unrecorded.is_empty(),
                "the {} audit misses changes its writer committed: {unrecorded:?}",
                side.name()
            );
        }
        let mut lost = Vec::new();
        let mut doubled = Vec::new();
        let mut echoed = Vec::new();
        let mut collapsed = 0;
        for ((change, op), times_here, in_window) in &made_here {
            if *times_here > 1 {
                echoed.push(format!("{change} {op} x{times_here}"));
            }
            match audits[other]
                .get(&(change.clone(), op.clone()))
                .map_or(0, |(times, _)| *times)
            {
                1 => {}
                0 if *in_window => collapsed += 1,
                // The delete of a row whose version was collapsed: the row
                // it removed on the other side carried an earlier id.
                0 if op == "D"
                    && audits[own]
                        .get(&(change.clone(), "W".to_owned()))
                        .is_some_and(|(_, in_window)| *in_window)
                    && !audits[other].contains_key(&(change.clone(), "W".to_owned())) =>
                {
                    collapsed += 1
                }
                0 => lost.push(format!("{change} {op}")),
                times => doubled.push(format!("{change} {op} x{times}")),
            }
        }
        if collapsed > 0 {
            eprintln!(
                "{collapsed} changes made on {} within its window were collapsed into later versions",
                side.name()
            );
        }
        if !lost.is_empty() || !doubled.is_empty() || !echoed.is_empty() {
            problems.push(format!(
                "of {} changes made on {}: {} lost (first: {:?}), {} applied more than once (first: {:?}), {} written back on {} (first: {:?})",
                made_here.len(),
                side.name(),
                lost.len(),
                lost.iter().take(5).collect::<Vec<_>>(),
                doubled.len(),
                doubled.iter().take(5).collect::<Vec<_>>(),
                echoed.len(),
                side.name(),
                echoed.iter().take(5).collect::<Vec<_>>(),
            ));
        }
        anyhow::ensure!(
            !made_here.is_empty(),
            "no change made on {} is in its audit",
            side.name()
        );
    }
    if !problems.is_empty() {
        bail!("{}", problems.join("\n"));
    }
    Ok(())
}
