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
            "CREATE TABLE public.change_audit (change text NOT NULL, op text NOT NULL);
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
