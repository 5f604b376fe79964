//! A fresh database per test on either cluster ([`TestDb`]), connections,
//! and SQL helpers: counting rows, waiting for a count, slots and WAL
//! positions.

use std::time::Duration;

use anyhow::{Context, Result};
use tokio_postgres::{Client, NoTls};

use crate::stack::{Side, Stack};
use crate::support::{eventually, unique};

/// Replaces the database name in a `postgres://` URL.
pub fn with_database(url: &str, dbname: &str) -> String {
    match url.rfind('/') {
        Some(slash) if slash > "postgres://".len() => format!("{}/{dbname}", &url[..slash]),
        _ => format!("{url}/{dbname}"),
    }
}

/// Connects and drives the connection in the background.
pub async fn connect(url: &str) -> Result<Client> {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .with_context(|| format!("connect to {url}"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// A database created for one test.
pub struct TestDb {
    pub side: Side,
    pub name: String,
    pub url: String,
    client: Client,
}

impl TestDb {
    /// Counts every write to `table` from now on (insert, update, delete,
    /// whoever makes it, apply included) in a test-only `audit` table; read
    /// the count with [`TestDb::audited_writes`].
    pub async fn audit_writes(&self, table: &str) -> Result<()> {
        self.execute(&format!(
            "CREATE TABLE audit (op text NOT NULL);
             CREATE FUNCTION audit() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN INSERT INTO audit VALUES (TG_OP); RETURN NULL; END $$;
             CREATE TRIGGER audit AFTER INSERT OR UPDATE OR DELETE ON {table} FOR EACH ROW EXECUTE FUNCTION audit();
             ALTER TABLE {table} ENABLE ALWAYS TRIGGER audit;"
        ))
        .await
    }

    /// The writes counted since [`TestDb::audit_writes`].
    pub async fn audited_writes(&self) -> Result<i64> {
        count(self.client(), "SELECT count(*) FROM audit").await
    }

    /// Creates an empty database on `side`'s cluster.
    pub async fn create(side: Side, hint: &str) -> Result<TestDb> {
        TestDb::create_on(side, side.admin_url(), hint).await
    }

    /// Creates an empty database for `side` on the cluster `admin_url`
    /// reaches (a test's own cluster).
    pub async fn create_on(side: Side, admin_url: &str, hint: &str) -> Result<TestDb> {
        let name = unique(hint);
        let admin = connect(admin_url).await?;
        admin
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await
            .with_context(|| format!("create database {name}"))?;
        let url = with_database(admin_url, &name);
        let client = connect(&url).await?;
        Ok(TestDb {
            side,
            name,
            url,
            client,
        })
    }

    /// Creates a database holding the reference schema of `side`.
    pub async fn with_reference_schema(side: Side, hint: &str) -> Result<TestDb> {
        TestDb::with_reference_schema_on(side, side.admin_url(), hint).await
    }

    /// [`TestDb::with_reference_schema`] on the cluster `admin_url` reaches.
    pub async fn with_reference_schema_on(
        side: Side,
        admin_url: &str,
        hint: &str,
    ) -> Result<TestDb> {
        let db = TestDb::create_on(side, admin_url, hint).await?;
        let path = Stack::get()
            .reference_dir
            .join(format!("{}.sql", side.name()));
        let sql =
            std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
        db.client
            .batch_execute(&sql)
            .await
            .with_context(|| format!("load {}", path.display()))?;
        Ok(db)
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Connects the test's own client again (after its server restarted),
    /// waiting until the server accepts connections.
    pub async fn reconnect(&mut self) -> Result<()> {
        let url = self.url.clone();
        self.client = eventually(
            "the database to accept connections",
            Duration::from_secs(60),
            || {
                let url = url.clone();
                async move { Ok(connect(&url).await.ok()) }
            },
        )
        .await?;
        Ok(())
    }

    /// Runs statements (no results).
    pub async fn execute(&self, sql: &str) -> Result<()> {
        self.client
            .batch_execute(sql)
            .await
            .with_context(|| format!("execute: {sql}"))
    }

    /// Creates a user on the platform side (reference schema): a member
    /// identity with `email`, a new uuid and a fixed `updated_at`.
    pub async fn create_platform_user(&self, email: &str) -> Result<()> {
        self.client
            .execute(
                "INSERT INTO identity.identities (id, email, given_name, family_name, kind, created_at, updated_at)
                 VALUES (gen_random_uuid(), $1, 'Platform', 'Born', 'member',
                         '2030-01-01 00:00:00+00', '2030-01-01 00:00:00+00')",
                &[&email],
            )
            .await
            .context("create a platform user")?;
        Ok(())
    }

    /// The slot's confirmed position as a number, if the slot exists.
    pub async fn confirmed_flush_lsn(&self, slot: &str) -> Result<Option<u64>> {
        let row = self
            .client
            .query_opt(
                "SELECT (confirmed_flush_lsn - '0/0')::int8 FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await?;
        Ok(row
            .and_then(|r| r.get::<_, Option<i64>>(0))
            .map(|v| v as u64))
    }

    /// Every session of this cluster whose transaction holds an xid, oldest
    /// first, one line each: what a new logical slot waits for. For a
    /// failure message: a failed query is reported in the text.
    pub async fn transactions_holding_an_xid(&self) -> String {
        let rows = match self
            .client
            .query(
                "SELECT format('pid %s db %s app %s state %s xact %s s wait %s/%s query %s',
                        pid, datname, application_name, state,
                        round(extract(epoch FROM now() - xact_start)::numeric, 1),
                        wait_event_type, wait_event, left(query, 120))
                   FROM pg_stat_activity
                  WHERE backend_xid IS NOT NULL AND pid <> pg_backend_pid()
                  ORDER BY xact_start",
                &[],
            )
            .await
        {
            Ok(rows) => rows,
            Err(error) => return format!("(unavailable: {error:#})"),
        };
        let lines: Vec<String> = rows.iter().map(|r| r.get::<_, String>(0)).collect();
        if lines.is_empty() {
            "(none)".to_string()
        } else {
            lines.join("\n")
        }
    }

    /// Where the server inserts its next WAL record, as a number: past
    /// every record written so far, committed asynchronously or not (the
    /// stack runs with `synchronous_commit = off`, so
    /// [`Self::current_wal_lsn`], the write position, can trail a commit).
    pub async fn current_wal_insert_lsn(&self) -> Result<u64> {
        let row = self
            .client
            .query_one("SELECT (pg_current_wal_insert_lsn() - '0/0')::int8", &[])
            .await?;
        Ok(row.get::<_, i64>(0) as u64)
    }

    /// The server's current WAL position as a number.
    pub async fn current_wal_lsn(&self) -> Result<u64> {
        let row = self
            .client
            .query_one("SELECT (pg_current_wal_lsn() - '0/0')::int8", &[])
            .await?;
        Ok(row.get::<_, i64>(0) as u64)
    }

    /// Drops a slot once it is no longer in use (best effort, bounded).
    pub async fn drop_slot(&self, slot: &str) -> Result<()> {
        eventually(
            "the slot to become inactive",
            Duration::from_secs(30),
            || async {
                let row = self
                    .client
                    .query_opt(
                        "SELECT active FROM pg_replication_slots WHERE slot_name = $1",
                        &[&slot],
                    )
                    .await?;
                Ok(match row {
                    None => Some(()),
                    Some(row) if !row.get::<_, bool>(0) => {
                        self.client
                            .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
                            .await?;
                        Some(())
                    }
                    Some(_) => None,
                })
            },
        )
        .await
    }
}

/// Counts rows of a query.
pub async fn count(client: &Client, sql: &str) -> Result<i64> {
    Ok(client.query_one(sql, &[]).await?.get(0))
}

/// Waits until `sql` (one `count(*)`) on `client` returns `expected`.
pub async fn until_count(
    what: &str,
    timeout: Duration,
    client: &Client,
    sql: &str,
    expected: i64,
) -> Result<()> {
    eventually(what, timeout, || async {
        Ok((count(client, sql).await? == expected).then_some(()))
    })
    .await
}
