//! What the benchmark loads (`tests/examples/`) write and read on each side:
//! new users, one statement at a time or many in one, found again by email,
//! on connections that commit as an application's do.

use anyhow::{Context, Result};
use tokio_postgres::{Client, NoTls};

use crate::stack::Side;

/// The direction `side`'s rows cross in: `legacy_to_platform` or
/// `platform_to_legacy`, as the loads name their figures.
pub fn direction(side: Side) -> &'static str {
    match side {
        Side::Legacy => "legacy_to_platform",
        Side::Platform => "platform_to_legacy",
    }
}

/// Inserts one new user with email `$1` on `side`.
pub fn insert_user(side: Side) -> &'static str {
    match side {
        Side::Legacy => {
            "INSERT INTO users (email, full_name, role, inserted_at, updated_at) \
             VALUES ($1, 'Load Probe', 'member', now() AT TIME ZONE 'UTC', now() AT TIME ZONE 'UTC')"
        }
        Side::Platform => {
            "INSERT INTO identity.identities (id, email, given_name, family_name, kind, created_at, updated_at) \
             VALUES (gen_random_uuid(), $1, 'Load', 'Probe', 'member', now(), now())"
        }
    }
}

/// Inserts `$2` new users on `side` in one statement, emails `$1` followed by
/// 1, 2, ... and `@example.com`.
pub fn insert_users(side: Side) -> &'static str {
    match side {
        Side::Legacy => {
            "INSERT INTO users (email, full_name, role, inserted_at, updated_at) \
             SELECT $1 || g || '@example.com', 'Load Probe', 'member', now() AT TIME ZONE 'UTC', now() AT TIME ZONE 'UTC' \
             FROM generate_series(1, $2::int8) g"
        }
        Side::Platform => {
            "INSERT INTO identity.identities (id, email, given_name, family_name, kind, created_at, updated_at) \
             SELECT gen_random_uuid(), $1 || g || '@example.com', 'Load', 'Probe', 'member', now(), now() \
             FROM generate_series(1, $2::int8) g"
        }
    }
}

/// The emails among `$1` (text[]) of the users on `side`.
pub fn find_users(side: Side) -> &'static str {
    match side {
        Side::Legacy => "SELECT email::text FROM users WHERE email = ANY($1)",
        Side::Platform => "SELECT email::text FROM identity.identities WHERE email = ANY($1)",
    }
}

/// How many users on `side` have an email starting with `$1`.
pub fn count_users_like(side: Side) -> &'static str {
    match side {
        Side::Legacy => "SELECT count(*) FROM users WHERE email LIKE $1 || '%'",
        Side::Platform => "SELECT count(*) FROM identity.identities WHERE email LIKE $1 || '%'",
    }
}

/// A connection whose commits return once durable (`synchronous_commit =
/// on`), as an application's do.
pub async fn connect_durable(url: &str) -> Result<Client> {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .with_context(|| format!("connect to {url}"))?;
    tokio::spawn(connection);
    client
        .batch_execute("SET synchronous_commit = on")
        .await
        .context("synchronous_commit")?;
    Ok(client)
}
