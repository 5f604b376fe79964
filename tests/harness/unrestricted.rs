//! The unrestricted workload: what an application may write, with no regard
//! for what the bridge finds hard. Every operation on every table of the
//! reference domain, on any row wherever it was born: inserts, updates and
//! deletes of parents and children, natural keys reused after a delete and
//! taken on both sides at once, `updated_at` written the way an application
//! writes it (legacy raw `now()` into a `timestamp(0)` column, which rounds;
//! truncated to the second as Ecto does; a little in the past or the future,
//! as a writer with a skewed clock does), and transactions of several
//! statements.
//!
//! Seeded and reproducible in what it *chooses*; what the databases make of
//! the choices depends on timing. A run is named by its seed, and
//! [`Unrestricted::replay_hint`] says how to run that seed again.

use std::time::{Duration, Instant};

use anyhow::Result;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::databases::connect;
use crate::stack::Side;

/// The variable that names the seed to run (overriding a test's own).
pub const SEED_VARIABLE: &str = "SYNC_BRIDGE_SEED";
/// The variable that sets how long the writers write, in seconds.
pub const SECONDS_VARIABLE: &str = "SYNC_BRIDGE_WRITE_SECONDS";

/// One run of the unrestricted workload: its seed, how long it writes and
/// how many writers each side has.
#[derive(Debug, Clone, Copy)]
pub struct Unrestricted {
    pub seed: u64,
    pub duration: Duration,
    pub writers_per_side: u64,
}

impl Unrestricted {
    /// The statements that seed the domain before the writers start: a few
    /// rows of every table on legacy.
    pub const SEED_ROWS: &str = "
    INSERT INTO categories (name, inserted_at, updated_at)
      SELECT 'category ' || g, now(), now() FROM generate_series(1, 3) g;
    INSERT INTO users (email, full_name, role, inserted_at, updated_at)
      SELECT 'person' || g || '@example.com', 'Seed ' || g, 'member', now(), now() FROM generate_series(1, 12) g;
    INSERT INTO teams (name, archived, inserted_at, updated_at)
      SELECT 'seed team ' || g, false, now(), now() FROM generate_series(1, 6) g;";

    /// A run with `seed` and `duration`, unless [`SEED_VARIABLE`] or
    /// [`SECONDS_VARIABLE`] say otherwise.
    pub fn from_env(seed: u64, duration: Duration) -> Unrestricted {
        let seed = std::env::var(SEED_VARIABLE)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(seed);
        let duration = std::env::var(SECONDS_VARIABLE)
            .ok()
            .and_then(|s| s.parse().ok())
            .map(Duration::from_secs)
            .unwrap_or(duration);
        Unrestricted {
            seed,
            duration,
            writers_per_side: 2,
        }
    }

    /// How to run this seed again, for a failure message.
    pub fn replay_hint(&self, test: &str) -> String {
        format!(
            "seed {seed}; to run it again: {SEED_VARIABLE}={seed} {SECONDS_VARIABLE}={secs} \
             scripts/test --no-lint -- --run-ignored all {test}",
            seed = self.seed,
            secs = self.duration.as_secs(),
        )
    }

    /// Runs every writer of both sides at once until the duration is over.
    /// Returns the transactions each side committed.
    pub async fn run(&self, legacy_url: &str, platform_url: &str) -> Result<(u64, u64)> {
        let mut legacy = Vec::new();
        let mut platform = Vec::new();
        for writer in 0..self.writers_per_side {
            let seed = self.seed.wrapping_mul(1_000).wrapping_add(writer);
            legacy.push(write(legacy_url, Side::Legacy, self.duration, seed, writer));
            platform.push(write(
                platform_url,
                Side::Platform,
                self.duration,
                seed.wrapping_add(500),
                writer,
            ));
        }
        let (legacy, platform) = tokio::join!(
            futures::future::try_join_all(legacy),
            futures::future::try_join_all(platform)
        );
        Ok((legacy?.iter().sum(), platform?.iter().sum()))
    }
}

/// How many emails (natural keys of users) the writers share: small enough
/// that a deleted user's email comes back and that both sides take one at
/// once.
const EMAILS: u32 = 80;

async fn write(url: &str, side: Side, duration: Duration, seed: u64, writer: u64) -> Result<u64> {
    let client = connect(url).await?;
    let mut rng = StdRng::seed_from_u64(seed);
    let deadline = Instant::now() + duration;
    let mut committed = 0u64;
    let mut n = 0u64;
    while Instant::now() < deadline {
        let statements = match rng.gen_range(0..10) {
            0..=6 => 1,
            7..=8 => 2,
            _ => 3,
        };
        let mut transaction = String::from("BEGIN;");
        for _ in 0..statements {
            n += 1;
            let tag = format!("{}{writer}-{n}", side.name());
            transaction.push_str(&match side {
                Side::Legacy => legacy_statement(&mut rng, &tag),
                Side::Platform => platform_statement(&mut rng, &tag),
            });
            transaction.push(';');
        }
        transaction.push_str("COMMIT");
        match client.batch_execute(&transaction).await {
            Ok(()) => committed += 1,
            // A statement can fail on what a concurrent writer did (a unique
            // key taken, a parent deleted): the transaction is rolled back,
            // as an application's would be.
            Err(_) => {
                let _ = client.batch_execute("ROLLBACK").await;
            }
        }
        if n.is_multiple_of(5) {
            tokio::time::sleep(Duration::from_millis(rng.gen_range(0..15))).await;
        }
    }
    Ok(committed)
}

/// A legacy `updated_at`, written as an application writes it: raw `now()`
/// (the `timestamp(0)` column rounds it, up half the time), truncated to
/// the second (Ecto's `:utc_datetime`), or from a clock a little off.
fn legacy_time(rng: &mut StdRng) -> String {
    match rng.gen_range(0..10) {
        0..=3 => "(now() AT TIME ZONE 'UTC')".to_owned(),
        4..=7 => "date_trunc('second', now() AT TIME ZONE 'UTC')".to_owned(),
        _ => format!(
            "(now() AT TIME ZONE 'UTC' + interval '{} ms')",
            rng.gen_range(-2500..2500)
        ),
    }
}

/// A platform `updated_at`: `now()` at microseconds, or a clock a little off.
fn platform_time(rng: &mut StdRng) -> String {
    match rng.gen_range(0..10) {
        0..=7 => "now()".to_owned(),
        _ => format!("(now() + interval '{} ms')", rng.gen_range(-2500..2500)),
    }
}

fn email(rng: &mut StdRng) -> String {
    format!("person{}@example.com", rng.gen_range(1..=EMAILS))
}

/// Any row of `table` (`ORDER BY random()` over a small table).
fn any(table: &str) -> String {
    format!("(SELECT id FROM {table} ORDER BY random() LIMIT 1)")
}

fn legacy_statement(rng: &mut StdRng, tag: &str) -> String {
    let at = legacy_time(rng);
    let role = ["member", "staff", "admin"][rng.gen_range(0..3)];
    let member_role = ["lead", "member"][rng.gen_range(0..2)];
    match rng.gen_range(0..100) {
        0..=9 => format!(
            "INSERT INTO users (email, full_name, role, phone, inserted_at, updated_at) \
             VALUES ('{}', 'Given {tag} Family', '{role}', NULL, {at}, {at}) ON CONFLICT DO NOTHING",
            email(rng)
        ),
        10..=15 => format!(
            "INSERT INTO teams (name, category_id, archived, notes, inserted_at, updated_at) \
             VALUES ('team {tag}', {}, false, 'notes {tag}', {at}, {at})",
            any("categories")
        ),
        16..=17 => format!(
            "INSERT INTO categories (name, inserted_at, updated_at) \
             VALUES ('category {}', {at}, {at}) ON CONFLICT DO NOTHING",
            rng.gen_range(1..8)
        ),
        18..=29 => format!(
            "INSERT INTO team_members (team_id, user_id, role, inserted_at, updated_at) \
             SELECT t.id, u.id, '{member_role}', {at}, {at} FROM {} t(id), {} u(id) \
             WHERE t.id IS NOT NULL AND u.id IS NOT NULL ON CONFLICT DO NOTHING",
            format_args!("(VALUES ({}))", any("teams")),
            format_args!("(VALUES ({}))", any("users")),
        ),
        30..=37 => format!(
            "INSERT INTO geofences (team_id, name, latitude, longitude, radius_m, inserted_at, updated_at) \
             VALUES ({}, 'zone {tag}', {}, {}, {}, {at}, {at})",
            any("teams"),
            rng.gen_range(-90.0..90.0f64),
            rng.gen_range(-180.0..180.0f64),
            rng.gen_range(1..1000)
        ),
        38..=49 => format!(
            "UPDATE users SET full_name = 'Renamed {tag}', role = '{role}', updated_at = {at} WHERE id = {}",
            any("users")
        ),
        50..=55 => format!(
            "UPDATE users SET phone = '+1{}', updated_at = {at} WHERE id = {}",
            rng.gen_range(100_000_000..999_999_999u64),
            any("users")
        ),
        56..=63 => format!(
            "UPDATE teams SET name = 'team renamed {tag}', archived = {}, category_id = {}, updated_at = {at} WHERE id = {}",
            rng.gen_bool(0.3),
            if rng.gen_bool(0.3) { "NULL".to_owned() } else { any("categories") },
            any("teams")
        ),
        64..=71 => format!(
            "UPDATE team_members SET role = '{member_role}', updated_at = {at} WHERE id = {}",
            any("team_members")
        ),
        72..=79 => format!(
            "UPDATE geofences SET latitude = {}, radius_m = {}, team_id = {}, updated_at = {at} WHERE id = {}",
            rng.gen_range(-90.0..90.0f64),
            rng.gen_range(1..1000),
            if rng.gen_bool(0.2) { "NULL".to_owned() } else { any("teams") },
            any("geofences")
        ),
        80..=86 => format!("DELETE FROM team_members WHERE id = {}", any("team_members")),
        87..=91 => format!("DELETE FROM geofences WHERE id = {}", any("geofences")),
        92..=95 => format!("DELETE FROM users WHERE id = {}", any("users")),
        _ => format!("DELETE FROM teams WHERE id = {}", any("teams")),
    }
}

fn platform_statement(rng: &mut StdRng, tag: &str) -> String {
    let at = platform_time(rng);
    let kind = ["member", "staff"][rng.gen_range(0..2)];
    let member_role = ["lead", "member"][rng.gen_range(0..2)];
    match rng.gen_range(0..100) {
        0..=9 => format!(
            "INSERT INTO identity.identities (id, email, given_name, family_name, kind, is_admin, created_at, updated_at) \
             VALUES (gen_random_uuid(), '{}', 'Given{tag}', 'Family', '{kind}', {}, {at}, {at}) ON CONFLICT DO NOTHING",
            email(rng),
            rng.gen_bool(0.2)
        ),
        10..=17 => format!(
            "INSERT INTO org.groups (id, name, category, archived_at, notes, created_at, updated_at) \
             VALUES (gen_random_uuid(), 'group {tag}', {}, NULL, 'notes {tag}', {at}, {at})",
            if rng.gen_bool(0.5) {
                format!("'category {}'", rng.gen_range(1..8))
            } else {
                "NULL".to_owned()
            }
        ),
        18..=29 => format!(
            "INSERT INTO org.memberships (id, group_id, identity_id, role, created_at, updated_at) \
             SELECT gen_random_uuid(), g.id, i.id, '{member_role}', {at}, {at} FROM {} g(id), {} i(id) \
             WHERE g.id IS NOT NULL AND i.id IS NOT NULL ON CONFLICT DO NOTHING",
            format_args!("(VALUES ({}))", any("org.groups")),
            format_args!("(VALUES ({}))", any("identity.identities")),
        ),
        30..=37 => format!(
            "INSERT INTO geo.zones (id, group_id, name, center, radius_m, created_at, updated_at) \
             VALUES (gen_random_uuid(), {}, 'zone {tag}', jsonb_build_object('lat', {}::float8, 'lng', {}::float8), {}, {at}, {at})",
            any("org.groups"),
            rng.gen_range(-90.0..90.0f64),
            rng.gen_range(-180.0..180.0f64),
            rng.gen_range(1..1000)
        ),
        38..=49 => format!(
            "UPDATE identity.identities SET given_name = 'G{tag}', family_name = 'F {tag}', is_admin = {}, kind = '{kind}', updated_at = {at} WHERE id = {}",
            rng.gen_bool(0.3),
            any("identity.identities")
        ),
        50..=55 => format!(
            "UPDATE identity.identities SET phone_e164 = '+44{}', updated_at = {at} WHERE id = {}",
            rng.gen_range(100_000_000..999_999_999u64),
            any("identity.identities")
        ),
        56..=63 => format!(
            "UPDATE org.groups SET name = 'group renamed {tag}', archived_at = {}, category = {}, updated_at = {at} WHERE id = {}",
            if rng.gen_bool(0.3) { "now()" } else { "NULL" },
            if rng.gen_bool(0.3) {
                "NULL".to_owned()
            } else {
                format!("'category {}'", rng.gen_range(1..8))
            },
            any("org.groups")
        ),
        64..=71 => format!(
            "UPDATE org.memberships SET role = '{member_role}', updated_at = {at} WHERE id = {}",
            any("org.memberships")
        ),
        72..=79 => format!(
            "UPDATE geo.zones SET center = jsonb_build_object('lat', {}::float8, 'lng', {}::float8), radius_m = {}, group_id = {}, updated_at = {at} WHERE id = {}",
            rng.gen_range(-90.0..90.0f64),
            rng.gen_range(-180.0..180.0f64),
            rng.gen_range(1..1000),
            if rng.gen_bool(0.2) { "NULL".to_owned() } else { any("org.groups") },
            any("geo.zones")
        ),
        80..=86 => format!("DELETE FROM org.memberships WHERE id = {}", any("org.memberships")),
        87..=91 => format!("DELETE FROM geo.zones WHERE id = {}", any("geo.zones")),
        92..=95 => format!(
            "DELETE FROM identity.identities WHERE id = {}",
            any("identity.identities")
        ),
        _ => format!("DELETE FROM org.groups WHERE id = {}", any("org.groups")),
    }
}
