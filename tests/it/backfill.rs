//! Backfill: `capture snapshot` while streaming goes on, and `apply replay`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use apply::mapping::Side as MappedSide;
use apply::replay::{DirectionReplay, ReplayFrom};
use capture::snapshot::{SnapshotOptions, SnapshotSummary};
use schemas::event::{CaptureMode, Op};
use sync_bridge_tests::{
    connect, count, create_topic, eventually, free_port, produce, random_writes, read_messages,
    until_count, Bridge, CaptureSetup, EventReader, Side, TestDb,
};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(240);

const PLATFORM_TABLES: [&str; 4] = [
    "identity.identities",
    "org.groups",
    "org.memberships",
    "geo.zones",
];

const LEGACY_TABLES: [&str; 5] = ["users", "categories", "teams", "team_members", "geofences"];

/// Snapshots `setup`'s tables (or the ones named) into its topic.
async fn snapshot(setup: &CaptureSetup, tables: &[&str]) -> anyhow::Result<SnapshotSummary> {
    snapshot_with(setup.config()?, tables).await
}

async fn snapshot_with(
    config: capture::Config,
    tables: &[&str],
) -> anyhow::Result<SnapshotSummary> {
    let options = SnapshotOptions {
        tables: tables.iter().map(|t| (*t).to_owned()).collect(),
        page_size: Some(2_000),
    };
    Ok(capture::snapshot::snapshot(&config, &options, &CancellationToken::new()).await?)
}

/// Runs `apply replay` against the bridge's databases and topics.
async fn replay(
    bridge: &Bridge,
    from: ReplayFrom,
    to: &[MappedSide],
) -> anyhow::Result<Vec<DirectionReplay>> {
    let config = apply::Config::from_toml(&bridge.apply_toml())?;
    Ok(apply::replay::replay(config, from, to, &CancellationToken::new()).await?)
}

/// Every row of `tables` as text, in a stable order: equal texts, equal contents.
async fn contents(db: &TestDb, tables: &[&str]) -> anyhow::Result<Vec<(String, i64, String)>> {
    let mut out = Vec::new();
    for table in tables {
        let row = db
            .client()
            .query_one(
                &format!(
                    "SELECT count(*), coalesce(md5(string_agg(t::text, '|' ORDER BY t::text)), '') FROM {table} t"
                ),
                &[],
            )
            .await?;
        out.push(((*table).to_owned(), row.get(0), row.get(1)));
    }
    Ok(out)
}

async fn legacy_users(db: &TestDb, from: i64, to: i64, updated_at: &str) -> anyhow::Result<()> {
    db.client()
        .execute(
            &format!(
                "INSERT INTO users (email, full_name, role, phone, inserted_at, updated_at)
                 SELECT 'pre' || g || '@example.com', 'Given ' || g || ' Family', 'member', NULL, {updated_at}, {updated_at}
                 FROM generate_series($1::int8, $2::int8) g"
            ),
            &[&from, &to],
        )
        .await?;
    Ok(())
}

/// Legacy rows of every table written before the bridge runs: users, a
/// category, teams and memberships.
async fn legacy_domain(db: &TestDb, users: i64) -> anyhow::Result<()> {
    legacy_users(db, 1, users, "'2024-01-01 00:00:00'").await?;
    db.execute(
        "INSERT INTO categories (name, inserted_at, updated_at) VALUES ('sports', '2024-01-01', '2024-01-01');
         INSERT INTO teams (name, category_id, archived, notes, inserted_at, updated_at)
           SELECT 'team ' || g, (SELECT id FROM categories), g % 2 = 0, 'notes', '2024-01-01', '2024-01-01' FROM generate_series(1, 50) g;
         INSERT INTO team_members (team_id, user_id, role, inserted_at, updated_at)
           SELECT 1 + g % 50, g, 'member', '2024-01-01', '2024-01-01' FROM generate_series(1, 2000) g;
         INSERT INTO geofences (team_id, name, latitude, longitude, radius_m, inserted_at, updated_at)
           SELECT 1 + g % 50, 'zone ' || g, 1.5, 2.25, 100, '2024-01-01', '2024-01-01' FROM generate_series(1, 100) g;",
    )
    .await?;
    Ok(())
}

/// Inserts, updates and deletes of legacy users (updates and deletes of the
/// rows written before the bridge ran), each in its own transaction, until
/// `stop`. Returns how many of each succeeded.
async fn legacy_churn(
    url: String,
    existing: i64,
    stop: CancellationToken,
) -> anyhow::Result<(u64, u64, u64)> {
    let client = connect(&url).await?;
    let (mut inserts, mut updates, mut deletes) = (0u64, 0u64, 0u64);
    let mut n: i64 = 0;
    while !stop.is_cancelled() {
        n += 1;
        // A spread over the whole key range, so pages before and after the
        // snapshot's cursor are hit.
        let id = 1 + (n * 7_919) % existing;
        let now = "date_trunc('second', now() AT TIME ZONE 'UTC')";
        match n % 4 {
            0 => {
                client
                    .execute(
                        &format!("INSERT INTO users (email, full_name, role, inserted_at, updated_at) VALUES ($1, 'New Person', 'staff', {now}, {now})"),
                        &[&format!("churn{n}@example.com")],
                    )
                    .await?;
                inserts += 1;
            }
            1 => {
                updates += client
                    .execute(
                        &format!("UPDATE users SET full_name = 'Renamed ' || $2::text || ' Person', role = 'admin', updated_at = {now} WHERE id = $1"),
                        &[&id, &n.to_string()],
                    )
                    .await?;
            }
            2 => {
                deletes += client
                    .execute("DELETE FROM users WHERE id = $1", &[&(id + 1)])
                    .await?;
            }
            _ => {
                updates += client
                    .execute(
                        &format!("UPDATE users SET phone = $2, updated_at = {now} WHERE id = $1"),
                        &[&(existing - id + 1), &format!("+1-{n}")],
                    )
                    .await?;
            }
        }
    }
    Ok((inserts, updates, deletes))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_row_carries_the_same_typed_values_as_its_streamed_insert() -> anyhow::Result<()>
{
    let db = TestDb::create(Side::Legacy, "snaptypes").await?;
    db.execute(
        "CREATE TYPE mood AS ENUM ('calm', 'busy');
         CREATE TABLE kitchen_sink (
           id bigint, part text, small smallint, amount numeric(30,10), flag boolean,
           single real, double double precision, ts timestamp, tstz timestamptz, day date,
           tod time, uid uuid, doc json, docb jsonb, blob bytea, ints integer[], words text[],
           nothing text, feeling mood, span interval, PRIMARY KEY (part, id));",
    )
    .await?;
    let setup = CaptureSetup::new(db, &["public.kitchen_sink"]);
    create_topic(&setup.topic).await?;
    let mut reader = EventReader::new(&setup.topic)?;
    let capture = setup.start()?;
    eventually("the slot", WAIT, || async {
        Ok(setup.db.confirmed_flush_lsn(&setup.slot).await?.map(|_| ()))
    })
    .await?;
    setup.db.execute(
        "INSERT INTO kitchen_sink VALUES
          (1, 'b', -32768, 12345678901234567890.0123456789, true, 1.5, 'NaN', '2024-02-29 13:14:15.123456',
           '1999-12-31 23:59:59.5-05:30', '1969-07-20', '23:59:59.999999', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
           '{\"a\": [1, 2]}', '{\"b\": null}', '\\x00ff10', '{1,NULL,3}', '{\"a b\",\"c\\\"d\",NULL}', NULL, 'busy', '1 day 02:00:00'),
          (2, 'a', 1, 0.5, false, -0.0, 1e300, '0001-01-01 00:00:00', 'infinity', '2000-01-01', '00:00:00',
           '00000000-0000-0000-0000-000000000000', '[]', '[]', '', '{}', '{}', 'x', 'calm', '-3 hours');",
    )
    .await?;
    reader.read_at_least(2, WAIT).await?;
    let summary = snapshot(&setup, &[]).await?;
    assert_eq!(summary.tables, vec![("public.kitchen_sink".to_owned(), 2)]);
    assert_eq!(summary.confirmed, 2);
    let events = reader.read_at_least(4, WAIT).await?.to_vec();
    capture.stop().await?;

    let reads: Vec<_> = events.iter().filter(|e| e.op == Op::Read).collect();
    assert_eq!(reads.len(), 2);
    for read in &reads {
        assert_eq!(read.mode, CaptureMode::Snapshot);
        let key = &read.key;
        let insert = events
            .iter()
            .find(|e| e.op == Op::Insert && &e.key == key)
            .expect("the streamed insert of the same row");
        // Compared as text: NaN is not equal to itself.
        assert_eq!(
            format!("{:?}", read.after),
            format!("{:?}", insert.after),
            "same columns, types and values"
        );
        assert_eq!(read.source, insert.source);
        assert_eq!(read.schema, insert.schema);
    }
    // One page: a pseudo-transaction in primary key order (part, id).
    assert_eq!(reads[0].transaction.position, 0);
    assert_eq!(reads[1].transaction.position, 1);
    assert!(reads[1].transaction.last && !reads[0].transaction.last);
    assert_eq!(reads[1].transaction.event_count, Some(2));
    assert_eq!(reads[0].key[0].name, "id");
    assert_eq!(
        reads[0].after.as_ref().unwrap()[1].value,
        schemas::event::Value::Text("a".into())
    );
    assert!(reads[0].transaction.commit_lsn > 0);
    setup.db.drop_slot(&setup.slot).await
}

/// A snapshot whose read the server keeps waiting without a word (here, for
/// a lock an application holds) fails at its response deadline rather than
/// hanging the command for as long as the lock is held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_the_server_keeps_waiting_fails_at_its_response_deadline() -> anyhow::Result<()>
{
    let db = TestDb::create(Side::Legacy, "snaphung").await?;
    db.execute("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 10);")
        .await?;
    let holder = connect(&db.url).await?;
    holder
        .batch_execute("BEGIN; LOCK TABLE t IN ACCESS EXCLUSIVE MODE")
        .await?;
    let mut setup = CaptureSetup::new(db, &["public.t"]);
    setup.source_options = "response_timeout = \"2s\"\n".into();
    let outcome = tokio::time::timeout(Duration::from_secs(60), snapshot(&setup, &[])).await;
    holder.batch_execute("ROLLBACK").await?;
    let Ok(outcome) = outcome else {
        anyhow::bail!("the snapshot still waited after 60 s");
    };
    assert!(outcome.is_err(), "{outcome:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_kafka_cannot_take_fails_rather_than_reporting_success() -> anyhow::Result<()> {
    let db = TestDb::create(Side::Legacy, "snapnokafka").await?;
    db.execute("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 10);")
        .await?;
    let setup = CaptureSetup::new(db, &["public.t"]);
    let mut config = setup.config()?;
    config.kafka.brokers = format!("127.0.0.1:{}", free_port()?);
    let outcome = snapshot_with(config, &[]).await;
    assert!(outcome.is_err(), "{outcome:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_platform_is_brought_up_by_a_snapshot_of_200_000_users_taken_during_writes(
) -> anyhow::Result<()> {
    const USERS: i64 = 200_000;
    let bridge = Bridge::prepare("backfill").await?;
    // Rows written before the bridge existed: streaming will never carry them.
    legacy_domain(bridge.legacy(), USERS).await?;
    let bridge = bridge.run().await?;

    let stop = CancellationToken::new();
    let churn = tokio::spawn(legacy_churn(
        bridge.legacy().url.clone(),
        USERS,
        stop.clone(),
    ));
    let summary = snapshot(&bridge.legacy, &[]).await?;
    stop.cancel();
    let (inserts, updates, deletes) = churn.await??;
    assert!(
        inserts > 0 && updates > 0 && deletes > 0,
        "writes ran during the snapshot: {inserts} inserts, {updates} updates, {deletes} deletes"
    );
    assert_eq!(summary.confirmed, summary.produced);
    let users_read = summary.tables[0].1 as i64;
    assert!(
        users_read >= USERS - deletes as i64 && users_read <= USERS + inserts as i64,
        "{summary}"
    );

    // 200,000 rows through a debug build of apply on a shared machine: minutes
    // (100-175 s for the whole test so far). Well inside nextest's 600 s, so
    // that a divergence fails with the differences rather than a timeout.
    let report = bridge.converged(Duration::from_secs(420)).await?;
    eprintln!(
        "legacy to platform: {:?}",
        bridge.counters.legacy_to_platform.snapshot()
    );
    assert!(report.corresponds(), "{report}");
    let legacy_users = count(bridge.legacy().client(), "SELECT count(*) FROM users").await?;
    assert_eq!(legacy_users, USERS + inserts as i64 - deletes as i64);
    assert_eq!(
        count(
            bridge.platform().client(),
            "SELECT count(*) FROM identity.identities"
        )
        .await?,
        legacy_users
    );
    assert_eq!(
        count(
            bridge.platform().client(),
            "SELECT count(*) FROM org.memberships"
        )
        .await?,
        count(
            bridge.legacy().client(),
            "SELECT count(*) FROM team_members"
        )
        .await?,
    );
    bridge.stop().await
}

/// Copies every message of `from` into `to`, in order, as the capture would
/// have produced it late.
async fn copy_topic(from: &str, to: &str, expected: usize) -> anyhow::Result<()> {
    produce(to, &read_messages(from, expected, WAIT).await?).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_that_arrives_after_a_delete_or_a_newer_update_neither_resurrects_nor_regresses(
) -> anyhow::Result<()> {
    let bridge = Bridge::prepare("lateread").await?;
    legacy_users(bridge.legacy(), 1, 10, "'2024-01-01 00:00:00'").await?;
    let bridge = bridge.run().await?;
    // The snapshot goes to a side topic first: its events are delivered late.
    let late = format!("{}.late", bridge.legacy.topic);
    create_topic(&late).await?;
    let mut detour = bridge.legacy.config()?;
    detour.kafka.topic = Some(late.clone());
    let summary = snapshot_with(detour, &["public.users"]).await?;
    assert_eq!(summary.confirmed, 10);

    // After the pages were read: user 3 deleted, user 4 renamed, both
    // streamed and applied (user 3 never crossed: a tombstone is all there is).
    bridge
        .legacy()
        .execute(
            "DELETE FROM users WHERE id = 3;
             UPDATE users SET full_name = 'Newer Name', updated_at = date_trunc('second', now() AT TIME ZONE 'UTC') WHERE id = 4;",
        )
        .await?;
    let platform = bridge.platform().client();
    until_count(
        "the streamed update to cross",
        WAIT,
        platform,
        "SELECT count(*) FROM identity.identities WHERE given_name = 'Newer'",
        1,
    )
    .await?;
    assert_eq!(
        count(
            platform,
            "SELECT count(*) FROM syncbridge.row_clock WHERE relation = 'identity.identities' AND origin = 'legacy' AND deleted"
        )
        .await?,
        1,
        "the delete of a row that never crossed leaves a tombstone"
    );

    copy_topic(&late, &bridge.legacy.topic, 10).await?;
    let report = bridge.converged(WAIT).await?;
    assert!(report.corresponds(), "{report}");
    assert_eq!(
        count(platform, "SELECT count(*) FROM identity.identities").await?,
        9,
        "user 3 stayed deleted"
    );
    assert_eq!(
        count(
            platform,
            "SELECT count(*) FROM identity.identities WHERE given_name = 'Newer'"
        )
        .await?,
        1,
        "user 4 kept its newer name"
    );
    let skipped = bridge
        .counters
        .of(MappedSide::Legacy)
        .snapshot()
        .skipped_older;
    assert!(skipped >= 1, "the older copy of user 4 lost: {skipped}");
    bridge.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_from_earliest_on_a_synced_pair_changes_nothing() -> anyhow::Result<()> {
    let bridge = Bridge::start("replaysame").await?;
    let legacy_url = bridge.legacy().url.clone();
    let platform_url = bridge.platform().url.clone();
    let writes = Duration::from_secs(4);
    let (a, b) = tokio::join!(
        random_writes(&legacy_url, Side::Legacy, writes, 11),
        random_writes(&platform_url, Side::Platform, writes, 12)
    );
    assert!(a? > 0 && b? > 0);
    bridge.converged(WAIT).await?;
    let legacy_before = contents(bridge.legacy(), &LEGACY_TABLES).await?;
    let platform_before = contents(bridge.platform(), &PLATFORM_TABLES).await?;
    let position = "SELECT kafka_offset FROM syncbridge.apply_position ORDER BY source";
    let positions_before = (
        count(bridge.legacy().client(), position).await?,
        count(bridge.platform().client(), position).await?,
    );

    let done = replay(
        &bridge,
        ReplayFrom::Earliest,
        &[MappedSide::Platform, MappedSide::Legacy],
    )
    .await?;
    assert_eq!(done.len(), 2);
    for direction in &done {
        assert!(direction.read > 0, "{direction}");
        assert_eq!(direction.stats.dead_lettered, 0, "{direction}");
        assert_eq!(direction.skipped_before, 0, "{direction}");
    }

    assert_eq!(
        contents(bridge.legacy(), &LEGACY_TABLES).await?,
        legacy_before
    );
    assert_eq!(
        contents(bridge.platform(), &PLATFORM_TABLES).await?,
        platform_before
    );
    let report = bridge.compare().await?;
    assert!(report.corresponds(), "{report}");
    let positions_after = (
        count(bridge.legacy().client(), position).await?,
        count(bridge.platform().client(), position).await?,
    );
    assert!(
        positions_after.0 >= positions_before.0 && positions_after.1 >= positions_before.1,
        "the live positions never move back: {positions_before:?} -> {positions_after:?}"
    );
    bridge.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_restores_a_truncated_platform_side() -> anyhow::Result<()> {
    let mut bridge = Bridge::start("replaytrunc").await?;
    legacy_domain(bridge.legacy(), 3_000).await?;
    bridge
        .legacy()
        .execute(
            "UPDATE users SET full_name = 'Changed Later', updated_at = '2024-06-01' WHERE id % 10 = 0;
             DELETE FROM users WHERE id % 100 = 1;",
        )
        .await?;
    bridge.converged(WAIT).await?;
    let before = contents(bridge.platform(), &PLATFORM_TABLES).await?;

    // The platform side loses its rows; apply's bookkeeping stays.
    bridge.stop_apply().await?;
    bridge
        .platform()
        .execute(&format!("TRUNCATE {}", PLATFORM_TABLES.join(", ")))
        .await?;
    assert!(!bridge.compare().await?.corresponds());

    let done = replay(&bridge, ReplayFrom::Earliest, &[MappedSide::Platform]).await?;
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].from, MappedSide::Legacy);
    assert!(done[0].stats.applied > 0, "{}", done[0]);
    assert_eq!(contents(bridge.platform(), &PLATFORM_TABLES).await?, before);
    let report = bridge.compare().await?;
    assert!(report.corresponds(), "{report}");
    bridge.start_apply()?;
    bridge.converged(WAIT).await?;
    bridge.stop().await
}

fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_from_a_time_applies_only_what_was_committed_at_or_after_it() -> anyhow::Result<()>
{
    let mut bridge = Bridge::start("replaytime").await?;
    let platform = bridge.platform().client();
    legacy_users(bridge.legacy(), 1, 300, "'2024-01-01 00:00:00'").await?;
    eventually("the early users to cross", WAIT, || async {
        Ok(
            (count(platform, "SELECT count(*) FROM identity.identities").await? == 300)
                .then_some(()),
        )
    })
    .await?;
    let between = now_micros();
    // The database's clock is the machine's: wait until it is past `between`.
    eventually("the clock to move on", WAIT, || async {
        let db_now: i64 = bridge
            .legacy()
            .client()
            .query_one(
                "SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::int8",
                &[],
            )
            .await?
            .get(0);
        Ok((db_now > between).then_some(()))
    })
    .await?;
    legacy_users(bridge.legacy(), 301, 500, "'2024-01-01 00:00:00'").await?;
    bridge.converged(WAIT).await?;

    bridge.stop_apply().await?;
    bridge
        .platform()
        .execute(&format!("TRUNCATE {}", PLATFORM_TABLES.join(", ")))
        .await?;
    let from_text = humantime_rfc3339(between);
    let from = ReplayFrom::parse(&from_text)?;
    let done = replay(&bridge, from, &[MappedSide::Platform]).await?;
    assert_eq!(done[0].skipped_before, 300, "{}", done[0]);
    let platform = bridge.platform().client();
    assert_eq!(
        count(platform, "SELECT count(*) FROM identity.identities").await?,
        200,
        "only the users written after the time"
    );
    assert_eq!(
        count(
            platform,
            "SELECT count(*) FROM identity.identities WHERE substring(email FROM 'pre([0-9]+)@')::int > 300"
        )
        .await?,
        200
    );
    bridge.stop().await
}

/// `micros` as an RFC 3339 UTC time with microseconds.
fn humantime_rfc3339(micros: i64) -> String {
    let time = UNIX_EPOCH + Duration::from_micros(micros as u64);
    humantime::format_rfc3339_micros(time).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_events_inside_a_streaming_transaction_beyond_the_buffer_are_read_again_after_it(
) -> anyhow::Result<()> {
    let mut bridge = Bridge::prepare("deferral").await?;
    bridge.apply_options = "deferred_snapshot_buffer = 5\n".into();
    // Users 1-30 reach the platform only through a snapshot.
    legacy_users(bridge.legacy(), 1, 30, "'2024-01-01 00:00:00'").await?;
    let late = format!("{}.late", bridge.legacy.topic);
    create_topic(&late).await?;
    let mut detour = bridge.legacy.config()?;
    detour.kafka.topic = Some(late.clone());
    assert_eq!(
        snapshot_with(detour, &["public.users"]).await?.confirmed,
        30
    );

    // The capture streams to a topic of its own; apply reads one assembled
    // from both: the snapshot's 30 events inside the streamed transaction
    // of users 31-70, after its first 10 events.
    let assembled = bridge.legacy.topic.clone();
    let streamed = format!("{assembled}.streamed");
    create_topic(&streamed).await?;
    bridge.legacy.topic = streamed.clone();
    bridge.start_captures().await?;
    bridge.legacy.topic = assembled.clone();
    legacy_users(bridge.legacy(), 31, 70, "'2024-06-01 00:00:00'").await?;
    let transaction = read_messages(&streamed, 40, WAIT).await?;
    let snapshot = read_messages(&late, 30, WAIT).await?;
    let mut messages = transaction[..10].to_vec();
    messages.extend(snapshot);
    messages.extend_from_slice(&transaction[10..]);
    produce(&assembled, &messages).await?;

    bridge.start_apply()?;
    let report = bridge.converged(WAIT).await?;
    assert!(report.corresponds(), "{report}");
    let platform = bridge.platform().client();
    assert_eq!(
        count(platform, "SELECT count(*) FROM identity.identities").await?,
        70
    );
    let stats = bridge.counters.of(MappedSide::Legacy).snapshot();
    assert_eq!(
        stats.snapshot_rereads, 1,
        "more snapshot events than the buffer holds were read again, once"
    );
    assert_eq!(stats.dead_lettered, 0);
    assert_eq!(
        count(
            platform,
            "SELECT kafka_offset FROM syncbridge.apply_position WHERE source = 'legacy'"
        )
        .await?,
        69,
        "the position ends at the last message"
    );

    // A replay of the topic drops and reads them again the same way, and ends.
    bridge.stop_apply().await?;
    let done = tokio::time::timeout(
        WAIT,
        replay(&bridge, ReplayFrom::Earliest, &[MappedSide::Platform]),
    )
    .await??;
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].stats.snapshot_rereads, 1, "{:?}", done[0]);
    let report = bridge.compare().await?;
    assert!(report.corresponds(), "{report}");
    bridge.stop().await
}
