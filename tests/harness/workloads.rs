//! Random write workloads on one side of the reference domain, for tests
//! that check the two sides converge while both change.

use std::time::{Duration, Instant};

use anyhow::Result;

use crate::databases::connect;
use crate::stack::Side;

/// Random writes on one side of the reference domain, for `duration`:
/// inserts and updates on every table, deletes of the child tables
/// (memberships, geofences/zones), foreign keys valid at the time of writing
/// (and crossing sides: a membership may reference a user born on the other
/// side), each in its own transaction. Updates and deletes pick any row,
/// wherever it was born (so both sides change the same rows, often within
/// one second); legacy timestamps are truncated to the second, as Ecto's
/// `:utc_datetime` does. Returns the number of statements that succeeded.
///
/// Not generated here: *parent* deletes (dedicated tests in
/// `apply_conflicts`), two changes of one row on each side with clocks apart
/// and multi-statement transactions: the unrestricted randomized tests
/// (`tests/it/convergence.rs`) write those, and still find rows that end
/// different (see the README's known limitations).
pub async fn random_writes(url: &str, side: Side, duration: Duration, seed: u64) -> Result<u64> {
    writes(url, side, duration, seed, Updates::AnyRow).await
}

/// [`random_writes`], but every update picks a row born on the writer's own
/// side: for paths whose ordering is coarser than a second (the polling
/// fallback reads each side once per interval, so a same-second change made
/// on top of a crossed one cannot be told from a concurrent one there).
pub async fn random_writes_on_own_rows(
    url: &str,
    side: Side,
    duration: Duration,
    seed: u64,
) -> Result<u64> {
    writes(url, side, duration, seed, Updates::OwnRows).await
}

/// Which rows updates pick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Updates {
    /// Any row, wherever it was born.
    AnyRow,
    /// Only rows born on the writer's side.
    OwnRows,
}

async fn writes(
    url: &str,
    side: Side,
    duration: Duration,
    seed: u64,
    updates: Updates,
) -> Result<u64> {
    use rand::{Rng, SeedableRng};
    let client = connect(url).await?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let deadline = Instant::now() + duration;
    let mut done = 0u64;
    let tag = format!("{}{seed}", side.name());
    let mut n = 0u64;
    while Instant::now() < deadline {
        n += 1;
        let roll: u32 = rng.gen_range(0..100);
        let own = |entity: &str| {
            match (updates, side) {
            (Updates::AnyRow, _) => String::new(),
            (Updates::OwnRows, Side::Legacy) => format!(
                " WHERE id NOT IN (SELECT legacy_id FROM syncbridge.id_pairs WHERE entity = '{entity}')"
            ),
            (Updates::OwnRows, Side::Platform) => format!(
                " WHERE id NOT IN (SELECT platform_id FROM syncbridge.id_pairs WHERE entity = '{entity}')"
            ),
        }
        };
        let own_user = own("user");
        let own_team = own("team");
        let own_member = own("team_member");
        let own_geofence = own("geofence");
        let sql = match side {
            Side::Legacy => match roll {
                0..=14 => format!(
                    "INSERT INTO users (email, full_name, role, phone, inserted_at, updated_at) VALUES ('{tag}-{n}@example.com', 'Given {n} Family', '{}', NULL, date_trunc('second', now() AT TIME ZONE 'UTC'), date_trunc('second', now() AT TIME ZONE 'UTC'))",
                    ["member", "staff", "admin"][rng.gen_range(0..3)]
                ),
                15..=24 => format!(
                    "INSERT INTO teams (name, category_id, archived, notes, inserted_at, updated_at) VALUES ('team {tag} {n}', (SELECT id FROM categories ORDER BY random() LIMIT 1), false, 'notes {n}', date_trunc('second', now() AT TIME ZONE 'UTC'), date_trunc('second', now() AT TIME ZONE 'UTC'))"
                ),
                25..=27 => format!(
                    "INSERT INTO categories (name, inserted_at, updated_at) VALUES ('category {tag} {n}', date_trunc('second', now() AT TIME ZONE 'UTC'), date_trunc('second', now() AT TIME ZONE 'UTC')) ON CONFLICT DO NOTHING"
                ),
                28..=39 => (
                    "INSERT INTO team_members (team_id, user_id, role, inserted_at, updated_at) SELECT t.id, u.id, 'member', date_trunc('second', now() AT TIME ZONE 'UTC'), date_trunc('second', now() AT TIME ZONE 'UTC') FROM (SELECT id FROM teams ORDER BY random() LIMIT 1) t, (SELECT id FROM users ORDER BY random() LIMIT 1) u ON CONFLICT DO NOTHING"
                ).to_owned(),
                40..=49 => format!(
                    "INSERT INTO geofences (team_id, name, latitude, longitude, radius_m, inserted_at, updated_at) SELECT (SELECT id FROM teams ORDER BY random() LIMIT 1), 'zone {n}', {}, {}, {}, date_trunc('second', now() AT TIME ZONE 'UTC'), date_trunc('second', now() AT TIME ZONE 'UTC')",
                    rng.gen_range(-90.0..90.0f64), rng.gen_range(-180.0..180.0f64), rng.gen_range(1..1000)
                ),
                50..=64 => format!(
                    "UPDATE users SET full_name = 'Renamed {n} Person', role = '{}', updated_at = date_trunc('second', now() AT TIME ZONE 'UTC') WHERE id = (SELECT id FROM users{own_user} ORDER BY random() LIMIT 1)",
                    ["member", "staff", "admin"][rng.gen_range(0..3)]
                ),
                65..=74 => format!(
                    "UPDATE teams SET name = 'team renamed {n}', archived = {}, updated_at = date_trunc('second', now() AT TIME ZONE 'UTC') WHERE id = (SELECT id FROM teams{own_team} ORDER BY random() LIMIT 1)",
                    rng.gen_bool(0.3)
                ),
                75..=82 => format!(
                    "UPDATE geofences SET latitude = {}, radius_m = {}, updated_at = date_trunc('second', now() AT TIME ZONE 'UTC') WHERE id = (SELECT id FROM geofences{own_geofence} ORDER BY random() LIMIT 1)",
                    rng.gen_range(-90.0..90.0f64), rng.gen_range(1..1000)
                ),
                83..=88 => format!("UPDATE team_members SET role = CASE role WHEN 'lead' THEN 'member' ELSE 'lead' END, updated_at = date_trunc('second', now() AT TIME ZONE 'UTC') WHERE id = (SELECT id FROM team_members{own_member} ORDER BY random() LIMIT 1)"),
                89..=92 => format!("DELETE FROM team_members WHERE id = (SELECT id FROM team_members{own_member} ORDER BY random() LIMIT 1)"),
                93..=95 => format!("DELETE FROM geofences WHERE id = (SELECT id FROM geofences{own_geofence} ORDER BY random() LIMIT 1)"),
                // Parents are not deleted here: see the known limitation in
                // `random_writes`'s doc; `apply_conflicts` has dedicated
                // parent-delete tests.
                _ => format!("UPDATE users SET phone = '+1' || (random() * 1e9)::int8, updated_at = date_trunc('second', now() AT TIME ZONE 'UTC') WHERE id = (SELECT id FROM users{own_user} ORDER BY random() LIMIT 1)"),
            },
            Side::Platform => match roll {
                0..=14 => format!(
                    "INSERT INTO identity.identities (id, email, given_name, family_name, kind, is_admin, created_at, updated_at) VALUES (gen_random_uuid(), '{tag}-{n}@example.com', 'Given{n}', 'Family', '{}', {}, now(), now())",
                    ["member", "staff"][rng.gen_range(0..2)], rng.gen_bool(0.2)
                ),
                15..=27 => format!(
                    "INSERT INTO org.groups (id, name, category, archived_at, notes, created_at, updated_at) VALUES (gen_random_uuid(), 'group {tag} {n}', {}, NULL, 'notes', now(), now())",
                    if rng.gen_bool(0.5) { format!("'category p{}'", rng.gen_range(0..5)) } else { "NULL".to_owned() }
                ),
                28..=39 => "INSERT INTO org.memberships (id, group_id, identity_id, role, created_at, updated_at) SELECT gen_random_uuid(), g.id, i.id, 'member', now(), now() FROM (SELECT id FROM org.groups ORDER BY random() LIMIT 1) g, (SELECT id FROM identity.identities ORDER BY random() LIMIT 1) i ON CONFLICT DO NOTHING".to_owned(),
                40..=49 => format!(
                    "INSERT INTO geo.zones (id, group_id, name, center, radius_m, created_at, updated_at) SELECT gen_random_uuid(), (SELECT id FROM org.groups ORDER BY random() LIMIT 1), 'zone {n}', jsonb_build_object('lat', {}::float8, 'lng', {}::float8), {}, now(), now()",
                    rng.gen_range(-90.0..90.0f64), rng.gen_range(-180.0..180.0f64), rng.gen_range(1..1000)
                ),
                50..=64 => format!(
                    "UPDATE identity.identities SET given_name = 'G{n}', family_name = 'F {n}', is_admin = {}, updated_at = now() WHERE id = (SELECT id FROM identity.identities{own_user} ORDER BY random() LIMIT 1)",
                    rng.gen_bool(0.3)
                ),
                65..=74 => format!(
                    "UPDATE org.groups SET name = 'group renamed {n}', archived_at = {}, updated_at = now() WHERE id = (SELECT id FROM org.groups{own_team} ORDER BY random() LIMIT 1)",
                    if rng.gen_bool(0.3) { "now()" } else { "NULL" }
                ),
                75..=82 => format!(
                    "UPDATE geo.zones SET center = jsonb_build_object('lat', {}::float8, 'lng', {}::float8), updated_at = now() WHERE id = (SELECT id FROM geo.zones{own_geofence} ORDER BY random() LIMIT 1)",
                    rng.gen_range(-90.0..90.0f64), rng.gen_range(-180.0..180.0f64)
                ),
                83..=88 => format!("UPDATE org.memberships SET role = CASE role WHEN 'lead' THEN 'member' ELSE 'lead' END, updated_at = now() WHERE id = (SELECT id FROM org.memberships{own_member} ORDER BY random() LIMIT 1)"),
                89..=92 => format!("DELETE FROM org.memberships WHERE id = (SELECT id FROM org.memberships{own_member} ORDER BY random() LIMIT 1)"),
                93..=95 => format!("DELETE FROM geo.zones WHERE id = (SELECT id FROM geo.zones{own_geofence} ORDER BY random() LIMIT 1)"),
                _ => format!("UPDATE identity.identities SET phone_e164 = '+44' || (random() * 1e9)::int8, updated_at = now() WHERE id = (SELECT id FROM identity.identities{own_user} ORDER BY random() LIMIT 1)"),
            },
        };
        if client.batch_execute(&sql).await.is_ok() {
            done += 1;
        }
        if n.is_multiple_of(4) {
            tokio::time::sleep(Duration::from_millis(rng.gen_range(0..20))).await;
        }
    }
    Ok(done)
}
