//! Verification of databases in use: `apply verify` names by key each row
//! that differs, never a value; leaves alone rows still in flight; resumes
//! an interrupted pass; and runs inside apply on a schedule, with metrics.

use std::time::Duration;

use sync_bridge_tests::{eventually, run_command, Bridge, Side};

const WAIT: Duration = Duration::from_secs(120);

/// Users, teams in two categories (a lookup) and memberships (references),
/// written on legacy.
const LEGACY_ROWS: &str = "
    INSERT INTO categories (name, inserted_at, updated_at)
      VALUES ('Sales', now() AT TIME ZONE 'UTC', now() AT TIME ZONE 'UTC'),
             ('Ops', now() AT TIME ZONE 'UTC', now() AT TIME ZONE 'UTC');
    INSERT INTO users (email, full_name, role, inserted_at, updated_at)
      SELECT 'verify' || g || '@example.com', 'Verify User' || g, 'member',
             now() AT TIME ZONE 'UTC', now() AT TIME ZONE 'UTC'
      FROM generate_series(1, 30) g;
    INSERT INTO teams (name, category_id, inserted_at, updated_at)
      SELECT 'Team ' || g,
             (SELECT id FROM categories WHERE name = CASE WHEN g % 2 = 0 THEN 'Sales' ELSE 'Ops' END),
             now() AT TIME ZONE 'UTC', now() AT TIME ZONE 'UTC'
      FROM generate_series(1, 6) g;
    INSERT INTO team_members (team_id, user_id, role, inserted_at, updated_at)
      SELECT t.id, u.id, 'member', now() AT TIME ZONE 'UTC', now() AT TIME ZONE 'UTC'
      FROM teams t JOIN users u ON u.id % 6 = t.id % 6;";

/// A bridge whose two databases hold [`LEGACY_ROWS`] on both sides.
async fn a_bridge_in_step(hint: &str) -> anyhow::Result<Bridge> {
    let bridge = Bridge::start(hint).await?;
    bridge.legacy().execute(LEGACY_ROWS).await?;
    bridge.converged(WAIT).await?;
    Ok(bridge)
}

/// apply's configuration with a `[verify]` section of `lines`.
fn with_verify(bridge: &Bridge, lines: &str) -> String {
    format!("{}\n[verify]\n{lines}\n", bridge.apply_toml())
}

fn entity<'r>(report: &'r serde_json::Value, name: &str) -> &'r serde_json::Value {
    report["entities"]
        .as_array()
        .and_then(|entities| entities.iter().find(|e| e["entity"] == name))
        .unwrap_or(&serde_json::Value::Null)
}

async fn one_value(bridge: &Bridge, side: Side, sql: &str) -> anyhow::Result<String> {
    let db = match side {
        Side::Legacy => bridge.legacy(),
        Side::Platform => bridge.platform(),
    };
    Ok(db.client().query_one(sql, &[]).await?.get(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_names_by_key_each_row_that_differs_or_is_missing_and_exits_1() -> anyhow::Result<()>
{
    let mut bridge = a_bridge_in_step("verify_keys").await?;
    // Nothing crosses from here on: the platform is changed behind the
    // bridge's back.
    bridge.stop_apply().await?;
    bridge.stop_capture(Side::Platform).await?;
    let changed = one_value(
        &bridge,
        Side::Legacy,
        "SELECT id::text FROM users WHERE email = 'verify7@example.com'",
    )
    .await?;
    let gone = one_value(
        &bridge,
        Side::Legacy,
        "SELECT id::text FROM users WHERE email = 'verify9@example.com'",
    )
    .await?;
    let team = one_value(
        &bridge,
        Side::Legacy,
        "SELECT id::text FROM teams WHERE name = 'Team 2'",
    )
    .await?;
    let stray = uuid::Uuid::new_v4().to_string();
    bridge
        .platform()
        .execute(&format!(
            "UPDATE identity.identities SET given_name = 'Secret Value' WHERE email = 'verify7@example.com';
             DELETE FROM identity.identities WHERE email = 'verify9@example.com';
             UPDATE org.groups SET category = 'Ops' WHERE name = 'Team 2';
             INSERT INTO identity.identities (id, email, given_name, kind, created_at, updated_at)
               VALUES ('{stray}', 'stray@example.com', 'Stray', 'member', now(), now());"
        ))
        .await?;

    let toml = with_verify(&bridge, "settle = \"1s\"\nchunk_rows = 4\npause = \"0s\"");
    let finished = run_command("apply", &toml, &["verify", "--json"]).await?;
    assert_eq!(
        finished.code,
        Some(1),
        "exit 1: different\n{}",
        finished.stderr
    );
    let report: serde_json::Value = serde_json::from_str(&finished.stdout)?;
    assert_eq!(report["corresponds"], false);
    let users = entity(&report, "user");
    assert_eq!(users["legacy_rows"], 30, "{report}\n{}", finished.stderr);
    assert_eq!(
        users["different"],
        serde_json::json!([{ "legacy_key": changed, "columns": ["given_name"] }]),
        "{report}"
    );
    assert_eq!(users["missing_on_platform"], serde_json::json!([gone]));
    assert_eq!(users["missing_on_legacy"], serde_json::json!([stray]));
    assert_eq!(
        entity(&report, "team")["different"],
        serde_json::json!([{ "legacy_key": team, "columns": ["category"] }]),
        "a lookup compared: {report}"
    );
    // The memberships of the deleted identity went with it (a cascade).
    let memberships = entity(&report, "team_member");
    assert!(
        !memberships["missing_on_platform"]
            .as_array()
            .is_none_or(Vec::is_empty),
        "{report}"
    );
    assert!(memberships["different"]
        .as_array()
        .is_some_and(Vec::is_empty));
    assert_eq!(entity(&report, "geofence")["corresponds"], true);
    assert!(
        !finished.stdout.contains("Secret Value") && !finished.stderr.contains("Secret Value"),
        "keys, never values"
    );

    // The pass is recorded where apply's schedule reads it.
    let passes = apply::verify::last_passes(bridge.platform().client()).await?;
    let user = passes
        .iter()
        .find(|p| p.entity == "user")
        .ok_or_else(|| anyhow::anyhow!("no pass recorded for user: {passes:?}"))?;
    assert_eq!(user.different, Some(3));
    assert!(user.age.is_some() && !user.in_progress);

    let check = run_command("apply", &toml, &["check"]).await?;
    assert_eq!(check.code, Some(1), "{}", check.stderr);
    bridge.start_capture(Side::Platform)?;
    bridge.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_during_steady_writes_on_both_sides_reports_no_row_in_flight() -> anyhow::Result<()>
{
    let bridge = a_bridge_in_step("verify_flight").await?;
    let writing = tokio_util::sync::CancellationToken::new();
    let legacy_url = bridge.legacy().url.clone();
    let platform_url = bridge.platform().url.clone();
    let writer = {
        let writing = writing.clone();
        tokio::spawn(async move {
            let legacy = sync_bridge_tests::connect(&legacy_url).await?;
            let platform = sync_bridge_tests::connect(&platform_url).await?;
            let mut n = 0u64;
            while !writing.is_cancelled() {
                n += 1;
                legacy
                    .execute(
                        "UPDATE users SET phone = $1, updated_at = now() AT TIME ZONE 'UTC'
                         WHERE id = (SELECT id FROM users ORDER BY random() LIMIT 1)",
                        &[&format!("+1555{n:07}")],
                    )
                    .await?;
                platform
                    .execute(
                        "INSERT INTO identity.identities (id, email, given_name, kind, created_at, updated_at)
                         VALUES (gen_random_uuid(), $1, 'Platform Born', 'member', now(), now())",
                        &[&format!("born{n}@example.com")],
                    )
                    .await?;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            anyhow::Ok(n)
        })
    };
    let config = apply::Config::from_toml(&with_verify(
        &bridge,
        "settle = \"3s\"\nchunk_rows = 5\npause = \"0s\"",
    ))?;
    let mapping = apply::mapping::Mapping::load_dir(&sync_bridge_tests::mapping_dir())?;
    let mut settled = 0;
    let mut passes = 0;
    // Rows read while their change was on its way were read again, and not
    // reported: at least one such row, or the test proved nothing.
    while settled == 0 && passes < 5 {
        let report = apply::verify::verify(&config, &mapping, true).await?;
        assert!(report.corresponds(), "rows in flight reported:\n{report}");
        settled += report.entities.iter().map(|e| e.settled).sum::<usize>();
        passes += 1;
    }
    writing.cancel();
    let written = writer.await??;
    assert!(
        settled > 0,
        "no row was in flight in {passes} passes ({written} writes)"
    );
    bridge.converged(WAIT).await?;
    bridge.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_pass_resumes_after_the_last_key_it_stored() -> anyhow::Result<()> {
    let bridge = a_bridge_in_step("verify_resume").await?;
    let config = apply::Config::from_toml(&with_verify(
        &bridge,
        "chunk_rows = 3\npause = \"300ms\"\nsettle = \"1s\"",
    ))?;
    let mapping = apply::mapping::Mapping::load_dir(&sync_bridge_tests::mapping_dir())?;
    let interrupted = {
        let (config, mapping) = (config.clone(), mapping.clone());
        tokio::spawn(async move { apply::verify::verify(&config, &mapping, true).await })
    };
    let platform = bridge.platform().client();
    eventually("the pass to store its progress", WAIT, || async {
        let stored = platform
            .query_opt(
                "SELECT legacy_rows FROM syncbridge.verify_progress
                 WHERE entity = 'user' AND legacy_after IS NOT NULL AND legacy_rows >= 9",
                &[],
            )
            .await?;
        Ok(stored.map(|_| ()))
    })
    .await?;
    interrupted.abort();
    let _ = interrupted.await;

    let resumed = apply::verify::verify(&config, &mapping, false).await?;
    assert!(resumed.corresponds(), "{resumed}");
    let users = resumed
        .entities
        .iter()
        .find(|e| e.entity == "user")
        .ok_or_else(|| anyhow::anyhow!("no user report"))?;
    let after = users
        .legacy_resumed_after
        .clone()
        .ok_or_else(|| anyhow::anyhow!("the pass started over: {users:?}"))?;
    assert!(
        users.legacy_rows < 30 && users.legacy_rows + after.parse::<usize>()? >= 30,
        "read only the rows after {after}: {users:?}"
    );
    let passes = apply::verify::last_passes(platform).await?;
    assert!(
        passes.iter().all(|p| p.age.is_some() && !p.in_progress),
        "{passes:?}"
    );
    bridge.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_verifies_on_its_schedule_and_exports_what_it_found() -> anyhow::Result<()> {
    let mut bridge = a_bridge_in_step("verify_schedule").await?;
    bridge.stop_apply().await?;
    bridge.stop_capture(Side::Platform).await?;
    bridge
        .platform()
        .execute(
            "UPDATE identity.identities SET given_name = 'Drifted' WHERE email = 'verify3@example.com'",
        )
        .await?;
    let address = format!("127.0.0.1:{}", sync_bridge_tests::free_port()?);
    bridge.apply_telemetry = format!("listen = {address:?}\nsample_interval = \"500ms\"\n");
    let toml = bridge.apply_toml();
    let toml = format!(
        "{toml}\n[verify]\ninterval = \"1h\"\nfirst_delay = \"0s\"\nsettle = \"1s\"\npause = \"0s\"\n"
    );
    let apply = sync_bridge_tests::ServiceProcess::spawn("apply", &toml, "verify_schedule_apply")?;
    let metrics = eventually("the pass's metrics", Duration::from_secs(60), || async {
        let Ok((200, text)) = runtime::telemetry::http::get_once(&address, "/metrics").await else {
            return Ok(None);
        };
        // Every entity's pass done: the last one's gauge is there.
        let found = text.lines().any(|line| {
            line.starts_with("syncbridge_verify_rows_different{")
                && line.contains("entity=\"geofence\"")
        });
        Ok(found.then_some(text))
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", apply.output()))?;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("syncbridge_verify_rows_different{")
                && l.contains("entity=\"user\"")
                && l.ends_with(" 1")),
        "{metrics}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("syncbridge_verify_rows_compared_total{")
                && l.contains("entity=\"user\"")),
        "{metrics}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("syncbridge_verify_rows_different{")
                && l.contains("entity=\"team\"")
                && l.ends_with(" 0")),
        "{metrics}"
    );
    eventually("the age of the last pass", WAIT, || async {
        let Ok((200, text)) = runtime::telemetry::http::get_once(&address, "/metrics").await else {
            return Ok(None);
        };
        Ok(text
            .lines()
            .any(|l| l.starts_with("syncbridge_verify_last_pass_age_seconds "))
            .then_some(()))
    })
    .await?;
    let log = apply.output();
    assert!(log.contains("the two databases differ"), "{log}");
    assert!(!log.contains("Drifted"), "keys, never values");
    drop(apply);
    bridge.start_capture(Side::Platform)?;
    bridge.stop().await
}

/// Changes made with apply's echo marker: capture flags them as apply's own
/// writes and apply skips them, so they never cross and the sides stay
/// different, as after a divergence. Their row clocks are stamped as for
/// any change: the platform's edit of verify5, stamped a day back, is still
/// later than the version it replaced, and loses only to legacy's edit of
/// the same row, stamped ahead.
const PLATFORM_BEHIND_THE_BRIDGE: &str = "
    BEGIN;
    SELECT pg_logical_emit_message(true, 'syncbridge.apply', 'behind the bridge');
    UPDATE identity.identities SET given_name = 'Platformwins', updated_at = now() + interval '5 seconds'
      WHERE email = 'verify7@example.com';
    UPDATE identity.identities SET given_name = 'Platformloses', updated_at = now() - interval '1 day'
      WHERE email = 'verify5@example.com';
    DELETE FROM identity.identities WHERE email = 'verify9@example.com';
    INSERT INTO identity.identities (id, email, given_name, kind, created_at, updated_at)
      VALUES (gen_random_uuid(), 'stray@example.com', 'Stray', 'member', now(), now());
    COMMIT;";

const LEGACY_BEHIND_THE_BRIDGE: &str = "
    BEGIN;
    SELECT pg_logical_emit_message(true, 'syncbridge.apply', 'behind the bridge');
    UPDATE users SET full_name = 'Legacywins', updated_at = (now() AT TIME ZONE 'UTC') + interval '10 seconds'
      WHERE email = 'verify3@example.com';
    UPDATE users SET full_name = 'Legacylater', updated_at = (now() AT TIME ZONE 'UTC') + interval '10 seconds'
      WHERE email = 'verify5@example.com';
    COMMIT;";

/// `column` (as text) of the user `<name>@example.com` on `side`.
async fn of_user(bridge: &Bridge, side: Side, column: &str, name: &str) -> anyhow::Result<String> {
    let table = match side {
        Side::Legacy => "users",
        Side::Platform => "identity.identities",
    };
    let sql = format!("SELECT {column}::text FROM {table} WHERE email = '{name}@example.com'");
    one_value(bridge, side, &sql).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repair_reasserts_the_winning_side_of_each_row_that_differs_through_the_bridge_and_the_sides_end_equal(
) -> anyhow::Result<()> {
    let bridge = a_bridge_in_step("repair").await?;
    bridge
        .platform()
        .execute(PLATFORM_BEHIND_THE_BRIDGE)
        .await?;
    bridge.legacy().execute(LEGACY_BEHIND_THE_BRIDGE).await?;
    let toml = with_verify(&bridge, "settle = \"1s\"\npause = \"0s\"");

    // A dry run says what it would re-assert, and writes nothing.
    let dry = run_command("apply", &toml, &["repair", "--dry-run", "--json"]).await?;
    assert_eq!(dry.code, Some(1), "exit 1: rows differ\n{}", dry.stderr);
    let plan: serde_json::Value = serde_json::from_str(&dry.stdout)?;
    let users = plan["repaired"]
        .as_array()
        .and_then(|r| r.iter().find(|e| e["entity"] == "user"))
        .cloned()
        .unwrap_or_default();
    let listed = |side: &str| -> Vec<String> {
        let mut keys: Vec<String> = users[side]
            .as_array()
            .map(|keys| {
                keys.iter()
                    .filter_map(|k| k.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        keys.sort();
        keys
    };
    let mut expected_from_legacy = vec![
        of_user(&bridge, Side::Legacy, "id", "verify3").await?,
        of_user(&bridge, Side::Legacy, "id", "verify5").await?,
        of_user(&bridge, Side::Legacy, "id", "verify9").await?,
    ];
    expected_from_legacy.sort();
    let mut expected_from_platform = vec![
        of_user(&bridge, Side::Platform, "id", "verify7").await?,
        of_user(&bridge, Side::Platform, "id", "stray").await?,
    ];
    expected_from_platform.sort();
    assert_eq!(listed("from_legacy"), expected_from_legacy, "{plan}");
    assert_eq!(listed("from_platform"), expected_from_platform, "{plan}");
    assert!(!dry.stdout.contains("Platformwins") && !dry.stdout.contains("Legacywins"));
    let check = run_command("apply", &toml, &["check"]).await?;
    assert_eq!(check.code, Some(1), "still different after a dry run");

    let repaired = run_command("apply", &toml, &["repair"]).await?;
    assert_eq!(repaired.code, Some(1), "{}", repaired.stderr);
    bridge.converged(WAIT).await?;
    let full_name = |user| of_user(&bridge, Side::Legacy, "full_name", user);
    assert!(full_name("verify7").await?.starts_with("Platformwins"));
    assert_eq!(full_name("verify5").await?, "Legacylater");
    assert_eq!(full_name("verify3").await?, "Legacywins");
    assert_eq!(full_name("stray").await?, "Stray");
    of_user(&bridge, Side::Platform, "id", "verify9").await?;

    // Nothing left: a second repair finds the sides equal and writes nothing.
    let again = run_command("apply", &toml, &["repair"]).await?;
    assert_eq!(again.code, Some(0), "{}\n{}", again.stdout, again.stderr);
    bridge.stop().await
}
