//! Capture's own bookkeeping tables in the `syncbridge` schema: the polling
//! watermark per table, the ledger of keys sent and the local deletes sent
//! (by the clock of their tombstones).

use tokio_postgres::Client;

use crate::error::{CaptureError, Result};

/// Creates the watermark, key ledger and sent-deletes tables when missing. Checks first,
/// so a role that may not create them works once they exist.
pub(super) async fn install(client: &Client) -> Result<()> {
    let row = client
        .query_one(
            "SELECT to_regclass('syncbridge.capture_watermark') IS NOT NULL AND to_regclass('syncbridge.capture_keys') IS NOT NULL \
             AND to_regclass('syncbridge.capture_deletes') IS NOT NULL",
            &[],
        )
        .await
        .map_err(|e| CaptureError::postgres("look for the polling tables", e))?;
    if row.get::<_, bool>(0) {
        return Ok(());
    }
    let schema_exists: bool = client
        .query_one("SELECT to_regnamespace('syncbridge') IS NOT NULL", &[])
        .await
        .map_err(|e| CaptureError::postgres("look for the syncbridge schema", e))?
        .get(0);
    let create_schema = if schema_exists {
        ""
    } else {
        "CREATE SCHEMA IF NOT EXISTS syncbridge;"
    };
    let sql = format!(
        "BEGIN;
         SELECT pg_advisory_xact_lock({lock});
         {create_schema}
         CREATE TABLE IF NOT EXISTS syncbridge.capture_watermark (
           tbl        text PRIMARY KEY,
           updated_at text,
           key        text[],
           polled_at  timestamptz NOT NULL DEFAULT now()
         );
         CREATE TABLE IF NOT EXISTS syncbridge.capture_keys (
           tbl      text NOT NULL,
           key      text[] COLLATE \"C\" NOT NULL,
           row_xmin bigint,
           PRIMARY KEY (tbl, key)
         );
         CREATE TABLE IF NOT EXISTS syncbridge.capture_deletes (
           tbl     text NOT NULL,
           key     text NOT NULL,
           seconds bigint NOT NULL,
           tick    bigint NOT NULL,
           PRIMARY KEY (tbl, key)
         );
         COMMIT;",
        lock = pg::bookkeeping::INSTALL_LOCK
    );
    if let Err(error) = client.batch_execute(&sql).await {
        let _ = client.batch_execute("ROLLBACK").await;
        return Err(match error.code().map(|c| c.code()) {
            Some("42501") => CaptureError::Config(
                "the capture role may not create syncbridge.capture_watermark, syncbridge.capture_keys and syncbridge.capture_deletes: GRANT USAGE, CREATE ON SCHEMA syncbridge (or create them for it)".to_owned(),
            ),
            _ => CaptureError::postgres("create the polling tables", error),
        });
    }
    Ok(())
}
