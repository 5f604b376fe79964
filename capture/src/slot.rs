//! The source side's setup: checks, the publication, the replication slot and
//! the heartbeat.
//!
//! Everything here runs on an ordinary (non-replication) connection before the
//! stream starts, and is idempotent: a restart finds the publication and slot
//! that an earlier start created and uses them as they are, so the slot's
//! `confirmed_flush_lsn` is where the next stream resumes.
//!
//! Checks fail with [`CaptureError::Config`] and a message that says what to
//! change, because no retry fixes a server without `wal_level = logical` or a
//! role without `REPLICATION`.

use tokio_postgres::Client;
use tracing::{debug, info, warn};

use crate::config::{Config, Connection};
use crate::error::{CaptureError, Result};
use pg::ident::{quote, TableName};
use pg::Lsn;

/// The slot as a start found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotStart {
    /// Where the stream resumes: the slot's `confirmed_flush_lsn`.
    pub confirmed: Option<Lsn>,
    /// The slot did not exist: this start created it at the current position.
    pub created: bool,
}

/// An open ordinary connection to the source.
pub struct Source {
    client: Client,
    connection_task: tokio::task::JoinHandle<()>,
}

impl Drop for Source {
    fn drop(&mut self) {
        self.connection_task.abort();
    }
}

/// The server session (walsender) streaming a slot: its pid and start
/// time, which together name it for good.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalSender {
    pub pid: i32,
    pub started: String,
}

/// What the slot looks like from `pg_replication_slots`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotState {
    pub confirmed_flush_lsn: Option<Lsn>,
    pub restart_lsn: Option<Lsn>,
    pub active: bool,
    /// WAL bytes the server keeps for this slot.
    pub retained_wal_bytes: Option<i64>,
}

/// A failed connect of a query connection to the source, as capture's
/// error: a TLS refusal with its advice, a Postgres error, or an
/// unreachable server.
pub(crate) fn link_failed(
    connection: &Connection,
    error: runtime::link::LinkError,
) -> CaptureError {
    match error {
        runtime::link::LinkError::Postgres(e) => {
            match runtime::tls::refusal_advice(
                &e,
                "source",
                &connection.to_string(),
                connection.tls.mode,
            ) {
                Some(advice) => CaptureError::Config(advice),
                None => CaptureError::postgres(format!("connect to {connection}"), e),
            }
        }
        runtime::link::LinkError::Unreachable(e) => CaptureError::Runtime(e),
    }
}

impl Source {
    pub async fn connect(connection: &Connection) -> Result<Source> {
        let connector = connection.tls.connector().map_err(CaptureError::Config)?;
        let (client, conn) = runtime::link::connect(
            connection.pg_config(),
            connector,
            connection.response_timeout,
        )
        .await
        .map_err(|e| link_failed(connection, e))?;
        let connection_task = tokio::spawn(async move {
            if let Err(error) = conn.await {
                debug!(%error, "source connection closed");
            }
        });
        Ok(Source {
            client,
            connection_task,
        })
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Checks the server and the role, then makes sure the publication and
    /// the slot exist.
    pub async fn prepare(&self, config: &Config) -> Result<SlotStart> {
        self.check_wal_level().await?;
        self.check_role().await?;
        let tables = config.tables()?;
        self.check_tables(&tables).await?;
        self.ensure_publication(&config.publication_name(), &tables)
            .await?;
        self.ensure_clock(
            &config.publication_name(),
            &config.polling.updated_at_column,
        )
        .await?;
        self.ensure_slot(&config.slot_name()).await
    }

    /// The `(schema, table)` names of `publication`'s tables.
    async fn published_tables(&self, publication: &str) -> Result<Vec<(String, String)>> {
        Ok(self
            .client
            .query(
                "SELECT schemaname::text, tablename::text FROM pg_catalog.pg_publication_tables WHERE pubname = $1",
                &[&publication],
            )
            .await
            .map_err(|e| CaptureError::postgres("list the publication's tables", e))?
            .into_iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect())
    }

    /// Installs the row clock on the published tables (see [`crate::clock`])
    /// and adds its table to the publication, so that each change arrives
    /// with its clock.
    async fn ensure_clock(&self, publication: &str, updated_at: &str) -> Result<()> {
        let published = self.published_tables(publication).await?;
        let captured: Vec<TableName> = published
            .iter()
            .filter(|(schema, _)| schema != "syncbridge")
            .map(|(schema, table)| TableName {
                schema: schema.clone(),
                table: table.clone(),
            })
            .collect();
        let installed = crate::clock::install(&self.client, &captured, updated_at).await?;
        let clock_published = published
            .iter()
            .any(|(schema, table)| schema == "syncbridge" && table == "row_clock");
        if !installed.table || clock_published {
            return Ok(());
        }
        let sql = format!(
            "ALTER PUBLICATION {} ADD TABLE {}",
            quote(publication),
            crate::clock::published_table()
        );
        match self.client.batch_execute(&sql).await {
            Ok(()) => {
                info!(publication, "added the row clock to the publication");
                Ok(())
            }
            Err(error) if error.code().map(|c| c.code()) == Some("42501") => {
                warn!(
                    publication,
                    sql = %sql,
                    "the capture role may not add the row clock to the publication: changes travel without a clock and are ordered by updated_at alone; run the statement as the publication's owner"
                );
                Ok(())
            }
            Err(error) => Err(publication_error(publication, error)),
        }
    }

    async fn check_wal_level(&self) -> Result<()> {
        let row = self
            .client
            .query_one("SHOW wal_level", &[])
            .await
            .map_err(|e| CaptureError::postgres("read wal_level", e))?;
        let level: String = row.get(0);
        if level != "logical" {
            return Err(CaptureError::Config(format!(
                "the source server has wal_level = {level}; logical replication needs wal_level = logical: set it in postgresql.conf (or ALTER SYSTEM SET wal_level = logical) and restart the server, or use polling mode"
            )));
        }
        Ok(())
    }

    async fn check_role(&self) -> Result<()> {
        let row = self
            .client
            .query_one(
                "SELECT current_user::text, rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user",
                &[],
            )
            .await
            .map_err(|e| CaptureError::postgres("read the role's privileges", e))?;
        let user: String = row.get(0);
        let may_replicate: bool = row.get(1);
        if !may_replicate {
            return Err(CaptureError::Config(format!(
                "role {user} may not use replication slots: grant it with ALTER ROLE {} REPLICATION (or use polling mode)",
                quote(&user)
            )));
        }
        Ok(())
    }

    async fn check_tables(&self, tables: &[TableName]) -> Result<()> {
        let mut missing = Vec::new();
        for table in tables {
            let row = self
                .client
                .query_one(
                    "SELECT c.oid IS NOT NULL, c.oid IS NOT NULL AND has_table_privilege(c.oid, 'SELECT') \
                     FROM (SELECT 1) AS one \
                     LEFT JOIN pg_catalog.pg_namespace n ON n.nspname = $1 \
                     LEFT JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = $2 AND c.relkind IN ('r', 'p')",
                    &[&table.schema, &table.table],
                )
                .await
                .map_err(|e| CaptureError::postgres("look up the published tables", e))?;
            let exists: bool = row.get(0);
            let readable: bool = row.get(1);
            if !exists {
                missing.push(table.to_string());
            } else if !readable {
                return Err(CaptureError::Config(format!(
                    "the capture role cannot read table {table}: GRANT SELECT ON {} TO the capture role",
                    table.quoted()
                )));
            }
        }
        if !missing.is_empty() {
            return Err(CaptureError::Config(format!(
                "source.tables names tables that do not exist in the source database: {}; fix the list or create them",
                missing.join(", ")
            )));
        }
        Ok(())
    }

    async fn ensure_publication(&self, publication: &str, tables: &[TableName]) -> Result<()> {
        let exists = self
            .client
            .query_opt(
                "SELECT 1 FROM pg_catalog.pg_publication WHERE pubname = $1",
                &[&publication],
            )
            .await
            .map_err(|e| CaptureError::postgres("look up the publication", e))?
            .is_some();
        if !exists {
            if tables.is_empty() {
                return Err(CaptureError::Config(format!(
                    "publication {publication} does not exist and source.tables is empty: list the tables to capture, or create the publication"
                )));
            }
            let list: Vec<String> = tables.iter().map(TableName::quoted).collect();
            let sql = format!(
                "CREATE PUBLICATION {} FOR TABLE {}",
                quote(publication),
                list.join(", ")
            );
            self.client
                .batch_execute(&sql)
                .await
                .map_err(|e| publication_error(publication, e))?;
            info!(publication, tables = tables.len(), "created publication");
            return Ok(());
        }
        // An existing publication gains the configured tables it lacks; it
        // never loses tables here (someone may have added them on purpose).
        let published = self.published_tables(publication).await?;
        let missing: Vec<&TableName> = tables
            .iter()
            .filter(|t| !published.contains(&(t.schema.clone(), t.table.clone())))
            .collect();
        if !missing.is_empty() {
            let list: Vec<String> = missing.iter().map(|t| t.quoted()).collect();
            let sql = format!(
                "ALTER PUBLICATION {} ADD TABLE {}",
                quote(publication),
                list.join(", ")
            );
            self.client
                .batch_execute(&sql)
                .await
                .map_err(|e| publication_error(publication, e))?;
            info!(
                publication,
                added = missing.len(),
                "added tables to publication"
            );
        }
        Ok(())
    }

    async fn ensure_slot(&self, slot: &str) -> Result<SlotStart> {
        let row = self
            .client
            .query_opt(
                "SELECT plugin::text, database::text, confirmed_flush_lsn::text FROM pg_catalog.pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .map_err(|e| CaptureError::postgres("look up the replication slot", e))?;
        if let Some(row) = row {
            let plugin: Option<String> = row.get(0);
            let database: Option<String> = row.get(1);
            let confirmed: Option<String> = row.get(2);
            let current_db: String = self
                .client
                .query_one("SELECT current_database()::text", &[])
                .await
                .map_err(|e| CaptureError::postgres("read the current database", e))?
                .get(0);
            if plugin.as_deref() != Some("pgoutput") || database.as_deref() != Some(&current_db) {
                return Err(CaptureError::Config(format!(
                    "replication slot {slot} exists but is not a pgoutput slot of database {current_db} (plugin {plugin:?}, database {database:?}): choose another source.slot or drop that slot"
                )));
            }
            return Ok(SlotStart {
                confirmed: confirmed.as_deref().and_then(Lsn::parse),
                created: false,
            });
        }
        let row = self
            .client
            .query_one(
                "SELECT lsn::text FROM pg_catalog.pg_create_logical_replication_slot($1, 'pgoutput')",
                &[&slot],
            )
            .await
            .map_err(|e| match e.code().map(|c| c.code()) {
                Some("42501") => CaptureError::Config(format!(
                    "not allowed to create replication slot {slot}: the capture role needs REPLICATION"
                )),
                Some("53400") => CaptureError::Config(format!(
                    "cannot create replication slot {slot}: all replication slots are in use; raise max_replication_slots or drop unused slots"
                )),
                Some("42710") => CaptureError::postgres("create the replication slot (created concurrently)", e),
                _ => CaptureError::postgres("create the replication slot", e),
            })?;
        let lsn: String = row.get(0);
        info!(slot, lsn = %lsn, "created replication slot");
        Ok(SlotStart {
            confirmed: Lsn::parse(&lsn),
            created: true,
        })
    }

    /// Drops replication slot `slot` (one this start created and cannot
    /// use), so that the next start finds it missing again.
    pub async fn drop_slot(&self, slot: &str) -> Result<()> {
        self.client
            .execute(
                "SELECT pg_catalog.pg_drop_replication_slot(slot_name) FROM pg_catalog.pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .map_err(|e| CaptureError::postgres("drop the replication slot", e))?;
        Ok(())
    }

    /// The primary key columns of a table, by oid, in key order.
    pub async fn primary_key(&self, relation_oid: u32) -> Result<Vec<String>> {
        let rows = self
            .client
            .query(
                "SELECT a.attname::text FROM pg_catalog.pg_index i \
                 CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord) \
                 JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
                 WHERE i.indrelid = $1 AND i.indisprimary ORDER BY k.ord",
                &[&relation_oid],
            )
            .await
            .map_err(|e| CaptureError::postgres("read a primary key", e))?;
        Ok(rows.iter().map(|row| row.get(0)).collect())
    }

    /// Writes a non-transactional logical message into the source's WAL, so
    /// that the slot has something of this database to confirm even when no
    /// application writes. Returns the message's position.
    pub async fn heartbeat(&self, prefix: &str) -> Result<Lsn> {
        let row = self
            .client
            .query_one(
                "SELECT pg_catalog.pg_logical_emit_message(false, $1, now()::text)::text",
                &[&prefix],
            )
            .await
            .map_err(|e| CaptureError::postgres("write a heartbeat", e))?;
        let lsn: String = row.get(0);
        Lsn::parse(&lsn).ok_or_else(|| CaptureError::Protocol(format!("bad heartbeat lsn {lsn}")))
    }

    /// The server session streaming `slot` now, if one does.
    pub async fn walsender_of(&self, slot: &str) -> Result<Option<WalSender>> {
        let row = self
            .client
            .query_opt(
                "SELECT a.pid, a.backend_start::text FROM pg_catalog.pg_replication_slots s \
                 JOIN pg_catalog.pg_stat_activity a ON a.pid = s.active_pid \
                 WHERE s.slot_name = $1",
                &[&slot],
            )
            .await
            .map_err(|e| CaptureError::postgres("read the slot's session", e))?;
        Ok(row.map(|row| WalSender {
            pid: row.get(0),
            started: row.get::<_, Option<String>>(1).unwrap_or_default(),
        }))
    }

    /// Ends `own`, this process's earlier stream of `slot`, if the server
    /// still runs it: its link died on capture's side (a peer gone without a
    /// word, found by `capture.receive_timeout`) while the server kept the
    /// session, and the slot with it, until its `wal_sender_timeout`. The
    /// pid and start time both match, so another instance's stream is never
    /// ended. Waits up to 5 s for the session to go.
    pub async fn end_lost_walsender(&self, slot: &str, own: &WalSender) -> Result<()> {
        if self.walsender_of(slot).await?.as_ref() != Some(own) {
            return Ok(());
        }
        self.client
            .execute(
                "SELECT pg_catalog.pg_terminate_backend($1, 5000)",
                &[&own.pid],
            )
            .await
            .map_err(|e| CaptureError::postgres("end the lost stream's session", e))?;
        warn!(slot, pid = own.pid, "ended this capture's earlier stream, lost on its side while the server kept it and the slot");
        Ok(())
    }

    /// The slot as the server sees it, or None if it does not exist.
    pub async fn slot_state(&self, slot: &str) -> Result<Option<SlotState>> {
        let row = self
            .client
            .query_opt(
                "SELECT confirmed_flush_lsn::text, restart_lsn::text, active, \
                        pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::int8 \
                 FROM pg_catalog.pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .map_err(|e| CaptureError::postgres("read the slot state", e))?;
        Ok(row.map(|row| {
            let confirmed: Option<String> = row.get(0);
            let restart: Option<String> = row.get(1);
            SlotState {
                confirmed_flush_lsn: confirmed.as_deref().and_then(Lsn::parse),
                restart_lsn: restart.as_deref().and_then(Lsn::parse),
                active: row.get(2),
                retained_wal_bytes: row.get(3),
            }
        }))
    }

    /// Warns about published tables whose updates and deletes will not carry
    /// a key (no primary key and REPLICA IDENTITY DEFAULT, or NOTHING).
    pub async fn warn_about_replica_identity(&self, publication: &str) -> Result<()> {
        let rows = self
            .client
            .query(
                "SELECT n.nspname::text, c.relname::text, c.relreplident::text, \
                        EXISTS (SELECT 1 FROM pg_catalog.pg_index i WHERE i.indrelid = c.oid AND i.indisprimary) \
                 FROM pg_catalog.pg_publication_tables p \
                 JOIN pg_catalog.pg_namespace n ON n.nspname = p.schemaname \
                 JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = p.tablename \
                 WHERE p.pubname = $1",
                &[&publication],
            )
            .await
            .map_err(|e| CaptureError::postgres("read replica identities", e))?;
        for row in rows {
            let schema: String = row.get(0);
            let table: String = row.get(1);
            let identity: String = row.get(2);
            let has_primary_key: bool = row.get(3);
            if identity == "n" || (identity == "d" && !has_primary_key) {
                warn!(
                    table = %format!("{schema}.{table}"),
                    "table has no replica identity key: its updates and deletes carry no key; add a primary key or set REPLICA IDENTITY"
                );
            }
        }
        Ok(())
    }
}

fn publication_error(publication: &str, error: tokio_postgres::Error) -> CaptureError {
    match error.code().map(|c| c.code()) {
        Some("42501") => CaptureError::Config(format!(
            "not allowed to create or alter publication {publication}: the capture role must own the published tables (or create the publication as their owner beforehand)"
        )),
        _ => CaptureError::postgres(format!("create or alter publication {publication}"), error),
    }
}
