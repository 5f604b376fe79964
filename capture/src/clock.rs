//! The row clock in the source database (see [`pg::clock`]): its table, its
//! trigger on every captured table, and its table in the publication, so
//! that each row change arrives right after the clock its trigger stamped.
//!
//! Capture installs what is missing when its role may. A role that may not
//! (it does not own the tables, as with `deploy/sql/`) works with what an
//! administrator installed; a table left without the trigger is named in a
//! warning: its versions travel without a clock and are ordered by
//! `updated_at` alone, which cannot order every interleaving of writes on
//! both sides.

use tokio_postgres::Client;
use tracing::{info, warn};

use crate::error::{CaptureError, Result};
use pg::ident::{quote, TableName};

/// What of the clock the source has after [`install`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    /// `syncbridge.row_clock` exists (and belongs in the publication).
    pub table: bool,
    /// Captured tables without the clock trigger.
    pub without_trigger: Vec<TableName>,
}

/// Installs the clock table and function when missing, then the trigger on
/// each of `tables` that lacks it. `updated_at` names the version time
/// column (`polling.updated_at_column`); a table without it is stamped with
/// the statement time.
pub async fn install(client: &Client, tables: &[TableName], updated_at: &str) -> Result<Installed> {
    if !exists(client).await? {
        // A schema an administrator created for another role is used as it
        // is: it is created only when the catalog, read in the locked
        // transaction, has none (`CREATE SCHEMA IF NOT EXISTS` would need
        // `CREATE` on the database even then, and can miss a schema another
        // session created a moment ago).
        let sql = format!(
            "BEGIN;
             SET LOCAL client_min_messages = warning;
             SELECT pg_advisory_xact_lock({lock});
             DO $schema$ BEGIN
               IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = 'syncbridge') THEN
                 CREATE SCHEMA syncbridge;
               END IF;
             END $schema$;
             {install}
             COMMIT;",
            lock = pg::bookkeeping::INSTALL_LOCK,
            install = pg::clock::INSTALL,
        );
        if let Err(error) = client.batch_execute(&sql).await {
            let _ = client.batch_execute("ROLLBACK").await;
            if error.code().map(|c| c.code()) != Some("42501") {
                return Err(CaptureError::postgres("install the row clock", error));
            }
            warn!(
                "the capture role may not create syncbridge.row_clock: versions travel without a clock and are ordered by updated_at alone; install it as the schema's owner (apply creates it at start)"
            );
            return Ok(Installed {
                table: false,
                without_trigger: tables.to_vec(),
            });
        }
    }
    let mut without_trigger = Vec::new();
    for table in tables {
        if !install_trigger(client, table, updated_at).await? {
            without_trigger.push(table.clone());
        }
    }
    Ok(Installed {
        table: true,
        without_trigger,
    })
}

async fn exists(client: &Client) -> Result<bool> {
    Ok(client
        .query_one(
            "SELECT to_regclass('syncbridge.row_clock') IS NOT NULL \
               AND to_regprocedure('syncbridge.install_clock(regclass,text,text)') IS NOT NULL",
            &[],
        )
        .await
        .map_err(|e| CaptureError::postgres("look for the row clock", e))?
        .get(0))
}

/// Creates the clock trigger on `table` unless it has one; false when it
/// has none and the role may not create it.
async fn install_trigger(client: &Client, table: &TableName, updated_at: &str) -> Result<bool> {
    let row = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_trigger WHERE tgrelid = c.oid AND tgname = $3), \
               (SELECT array_agg(a.attname::text ORDER BY a.attnum) FROM pg_catalog.pg_index i \
                  JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey) \
                 WHERE i.indrelid = c.oid AND i.indisprimary) \
             FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2",
            &[&table.schema, &table.table, &pg::clock::TRIGGER],
        )
        .await
        .map_err(|e| CaptureError::postgres("look up a table's clock trigger", e))?;
    if row.get::<_, bool>(0) {
        return Ok(true);
    }
    let key: Option<Vec<String>> = row.get(1);
    let Some([key]) = key.as_deref() else {
        warn!(
            table = %table,
            "a captured table without a one-column primary key gets no clock: its versions are ordered by updated_at alone"
        );
        return Ok(false);
    };
    match client
        .execute(
            pg::clock::INSTALL_TRIGGER,
            &[&table.quoted(), key, &updated_at],
        )
        .await
    {
        Ok(_) => {
            info!(table = %table, "installed the row clock trigger");
            Ok(true)
        }
        // Another capture installed it at the same time.
        Err(error) if error.code().map(|c| c.code()) == Some("42710") => Ok(true),
        Err(error) if error.code().map(|c| c.code()) == Some("42501") => {
            warn!(
                table = %table,
                "the capture role may not create the row clock trigger: versions of this table travel without a clock and are ordered by updated_at alone; run `SELECT syncbridge.install_clock(table, key column, updated_at column)` as the table's owner"
            );
            Ok(false)
        }
        Err(error) => Err(CaptureError::postgres(
            "create the row clock trigger",
            error,
        )),
    }
}

/// `syncbridge.row_clock` as a publication member, quoted.
pub fn published_table() -> String {
    format!("{}.{}", quote("syncbridge"), quote("row_clock"))
}
