//! Every operation and column type, from an SQL write to a decoded event.

use std::time::Duration;

use schemas::event::{ChangeEvent, Column, Op, Value};
use sync_bridge_tests::{
    binary, create_topic, produce, produce_with_offsets_skipped, run_command, unique, CaptureSetup,
    EventReader, Side, Stack, TestDb,
};

const WAIT: Duration = Duration::from_secs(60);

fn column<'a>(row: &'a [Column], name: &str) -> &'a Column {
    row.iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no column {name} in {row:?}"))
}

fn after<'a>(event: &'a ChangeEvent, name: &str) -> &'a Value {
    &column(event.after.as_ref().expect("an after image"), name).value
}

async fn capture_of(db: TestDb, tables: &[&str]) -> anyhow::Result<(CaptureSetup, EventReader)> {
    let setup = CaptureSetup::new(db, tables);
    create_topic(&setup.topic).await?;
    let reader = EventReader::new(&setup.topic)?;
    Ok((setup, reader))
}

/// Starts `setup`'s capture and waits until its slot exists, so that what
/// is written next is streamed.
async fn streaming(setup: &CaptureSetup) -> anyhow::Result<sync_bridge_tests::RunningCapture> {
    let capture = setup.start()?;
    sync_bridge_tests::eventually("the slot", WAIT, || async {
        Ok(setup.db.confirmed_flush_lsn(&setup.slot).await?.map(|_| ()))
    })
    .await?;
    Ok(capture)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_and_column_type_round_trips_into_a_typed_event() -> anyhow::Result<()> {
    let db = TestDb::create(Side::Legacy, "types").await?;
    db.execute(
        "CREATE TYPE mood AS ENUM ('calm', 'busy');
         CREATE TABLE kitchen_sink (
           id bigint PRIMARY KEY, small smallint, whole integer, big bigint,
           single real, double double precision, amount numeric(30,10), flag boolean,
           label text, code varchar(10), fixed char(3), ts timestamp, tstz timestamptz,
           day date, tod time, uid uuid, doc json, docb jsonb, blob bytea,
           ints integer[], words text[], nothing text, feeling mood, span interval);
         ALTER TABLE kitchen_sink REPLICA IDENTITY FULL;",
    )
    .await?;
    let (setup, mut reader) = capture_of(db, &["public.kitchen_sink"]).await?;
    let capture = setup.start()?;
    let db = &setup.db;
    // Wait until the slot exists, so the writes below are after its start.
    sync_bridge_tests::eventually("the slot", WAIT, || async {
        Ok(db.confirmed_flush_lsn(&setup.slot).await?.map(|_| ()))
    })
    .await?;

    db.execute(
        "INSERT INTO kitchen_sink VALUES (
           1, -32768, 2147483647, -9223372036854775808,
           1.5, 'NaN', 12345678901234567890.0123456789, true,
           'héllo, wörld', 'abc', 'xy', '2024-02-29 13:14:15.123456', '1999-12-31 23:59:59.5-05:30',
           '1969-07-20', '23:59:59.999999', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
           '{\"a\": [1, 2]}', '{\"b\": null}', '\\x00ff10',
           '{1,NULL,3}', '{\"a b\",\"c\\\"d\",NULL}', NULL, 'busy', '1 day 02:00:00');
         UPDATE kitchen_sink SET label = 'changed', whole = 7 WHERE id = 1;
         DELETE FROM kitchen_sink WHERE id = 1;
         TRUNCATE kitchen_sink;",
    )
    .await?;

    let events = reader.read_at_least(4, WAIT).await?.to_vec();
    capture.stop().await?;
    setup.db.drop_slot(&setup.slot).await?;

    let ops: Vec<Op> = events.iter().map(|e| e.op).collect();
    assert_eq!(ops, [Op::Insert, Op::Update, Op::Delete, Op::Truncate]);
    let insert = &events[0];
    assert_eq!(insert.source, "legacy");
    assert_eq!(insert.database, setup.db.name);
    assert_eq!(
        (insert.schema.as_str(), insert.table.as_str()),
        ("public", "kitchen_sink")
    );
    assert_eq!(
        insert.key,
        vec![Column {
            name: "id".into(),
            type_name: "int8".into(),
            type_oid: 20,
            value: Value::Int(1)
        }]
    );
    assert_eq!(after(insert, "small"), &Value::Int(-32768));
    assert_eq!(after(insert, "whole"), &Value::Int(2_147_483_647));
    assert_eq!(after(insert, "big"), &Value::Int(i64::MIN));
    assert_eq!(after(insert, "single"), &Value::Float(1.5));
    assert!(matches!(after(insert, "double"), Value::Float(f) if f.is_nan()));
    assert_eq!(
        after(insert, "amount"),
        &Value::Numeric("12345678901234567890.0123456789".into())
    );
    assert_eq!(after(insert, "flag"), &Value::Bool(true));
    assert_eq!(after(insert, "label"), &Value::Text("héllo, wörld".into()));
    assert_eq!(after(insert, "code"), &Value::Text("abc".into()));
    assert_eq!(after(insert, "fixed"), &Value::Text("xy ".into()));
    // 2024-02-29 13:14:15.123456 UTC-naive
    assert_eq!(
        after(insert, "ts"),
        &Value::Timestamp(1_709_212_455_123_456)
    );
    // 1999-12-31 23:59:59.5 at -05:30 is 2000-01-01 05:29:59.5 UTC
    assert_eq!(
        after(insert, "tstz"),
        &Value::TimestampTz(946_704_599_500_000)
    );
    assert_eq!(after(insert, "day"), &Value::Date(-165));
    assert_eq!(after(insert, "tod"), &Value::Time(86_399_999_999));
    assert_eq!(
        after(insert, "uid"),
        &Value::Uuid([
            0xa0, 0xee, 0xbc, 0x99, 0x9c, 0x0b, 0x4e, 0xf8, 0xbb, 0x6d, 0x6b, 0xb9, 0xbd, 0x38,
            0x0a, 0x11
        ])
    );
    assert_eq!(after(insert, "doc"), &Value::Json("{\"a\": [1, 2]}".into()));
    assert_eq!(after(insert, "docb"), &Value::Json("{\"b\": null}".into()));
    assert_eq!(after(insert, "blob"), &Value::Bytes(vec![0x00, 0xff, 0x10]));
    assert_eq!(
        after(insert, "ints"),
        &Value::Array(vec![Value::Int(1), Value::Null, Value::Int(3)])
    );
    assert_eq!(
        after(insert, "words"),
        &Value::Array(vec![
            Value::Text("a b".into()),
            Value::Text("c\"d".into()),
            Value::Null
        ])
    );
    assert_eq!(after(insert, "nothing"), &Value::Null);
    assert_eq!(after(insert, "feeling"), &Value::Text("busy".into()));
    assert_eq!(after(insert, "span"), &Value::Text("1 day 02:00:00".into()));

    let type_names: Vec<&str> = insert
        .after
        .as_ref()
        .unwrap()
        .iter()
        .map(|c| c.type_name.as_str())
        .collect();
    assert_eq!(
        type_names,
        [
            "int8",
            "int2",
            "int4",
            "int8",
            "float4",
            "float8",
            "numeric",
            "bool",
            "text",
            "varchar",
            "bpchar",
            "timestamp",
            "timestamptz",
            "date",
            "time",
            "uuid",
            "json",
            "jsonb",
            "bytea",
            "_int4",
            "_text",
            "text",
            "public.mood",
            "interval"
        ]
    );

    let update = &events[1];
    assert_eq!(after(update, "label"), &Value::Text("changed".into()));
    assert_eq!(after(update, "whole"), &Value::Int(7));
    let before = update
        .before
        .as_ref()
        .expect("REPLICA IDENTITY FULL sends the old row");
    // (Compared as text: NaN is not equal to itself.)
    assert_eq!(
        format!("{before:?}"),
        format!("{:?}", insert.after.as_ref().unwrap()),
        "the old row is the inserted row"
    );

    let delete = &events[2];
    assert_eq!(delete.key, insert.key);
    assert!(delete.after.is_none());
    assert_eq!(
        &column(delete.before.as_ref().unwrap(), "label").value,
        &Value::Text("changed".into())
    );

    let truncate = &events[3];
    assert_eq!(truncate.table, "kitchen_sink");
    assert!(truncate.key.is_empty() && truncate.before.is_none() && truncate.after.is_none());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unchanged_toast_value_is_marked_unchanged_never_null() -> anyhow::Result<()> {
    let db = TestDb::create(Side::Legacy, "toast").await?;
    db.execute("CREATE TABLE notes (id int PRIMARY KEY, title text, body text)")
        .await?;
    let (setup, mut reader) = capture_of(db, &["notes"]).await?;
    let capture = streaming(&setup).await?;
    let db = &setup.db;
    // 200 kB of incompressible text is stored out of line (TOAST).
    db.execute(
        "INSERT INTO notes SELECT 1, 'first', string_agg(md5(i::text), '') FROM generate_series(1, 6000) AS i;
         UPDATE notes SET title = 'second' WHERE id = 1;
         UPDATE notes SET body = 'short now' WHERE id = 1;",
    )
    .await?;
    let events = reader.read_at_least(3, WAIT).await?.to_vec();
    capture.stop().await?;
    setup.db.drop_slot(&setup.slot).await?;

    match after(&events[0], "body") {
        Value::Text(body) => assert_eq!(body.len(), 6000 * 32),
        other => panic!("the inserted body should be text, got {other:?}"),
    }
    assert_eq!(after(&events[1], "title"), &Value::Text("second".into()));
    assert_eq!(
        after(&events[1], "body"),
        &Value::Unchanged,
        "an update that leaves the TOAST value alone"
    );
    assert_eq!(after(&events[2], "body"), &Value::Text("short now".into()));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_version_carries_a_clock_later_than_the_version_it_replaced_whatever_its_timestamp(
) -> anyhow::Result<()> {
    let db = TestDb::create(Side::Legacy, "clocks").await?;
    db.execute("CREATE TABLE things (id int PRIMARY KEY, name text, updated_at timestamp(0))")
        .await?;
    let (setup, mut reader) = capture_of(db, &["things"]).await?;
    let capture = streaming(&setup).await?;
    let db = &setup.db;
    // The update is stamped a second behind the insert (a clock stepped
    // back) and the delete, stamped with the time it runs, years before
    // both: each still comes after the version it replaced.
    db.execute(
        "INSERT INTO things VALUES (1, 'first', '2030-01-01 00:00:05');
         UPDATE things SET name = 'second', updated_at = '2030-01-01 00:00:04' WHERE id = 1;
         UPDATE things SET name = 'third', updated_at = '2030-01-01 00:00:09' WHERE id = 1;
         DELETE FROM things WHERE id = 1;",
    )
    .await?;
    let events = reader.read_at_least(4, WAIT).await?.to_vec();
    capture.stop().await?;
    setup.db.drop_slot(&setup.slot).await?;

    let five = 1_893_456_005;
    let clocks: Vec<Option<(i64, i64)>> = events
        .iter()
        .map(|e| e.clock.map(|c| (c.seconds, c.tick)))
        .collect();
    assert_eq!(
        clocks,
        [
            Some((five, 0)),
            Some((five, 1)),
            Some((five + 4, 0)),
            Some((five + 4, 1)),
        ],
        "{:?}",
        events.iter().map(|e| e.op).collect::<Vec<_>>()
    );
    assert_eq!(events[3].op, Op::Delete);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_column_added_or_dropped_on_the_source_changes_the_event_shape_without_stopping(
) -> anyhow::Result<()> {
    let db = TestDb::create(Side::Legacy, "ddl").await?;
    db.execute("CREATE TABLE things (id int PRIMARY KEY, name text)")
        .await?;
    let (setup, mut reader) = capture_of(db, &["things"]).await?;
    let capture = streaming(&setup).await?;
    let db = &setup.db;
    db.execute(
        "INSERT INTO things VALUES (1, 'one');
         ALTER TABLE things ADD COLUMN colour text DEFAULT 'red';
         INSERT INTO things VALUES (2, 'two', 'blue');
         ALTER TABLE things DROP COLUMN name;
         INSERT INTO things VALUES (3, 'green');",
    )
    .await?;
    let events = reader.read_at_least(3, WAIT).await?.to_vec();
    assert!(
        !capture.is_finished(),
        "capture keeps running across schema changes"
    );
    capture.stop().await?;
    setup.db.drop_slot(&setup.slot).await?;

    let names = |e: &ChangeEvent| -> Vec<String> {
        e.after
            .as_ref()
            .unwrap()
            .iter()
            .map(|c| c.name.clone())
            .collect()
    };
    assert_eq!(names(&events[0]), ["id", "name"]);
    assert_eq!(names(&events[1]), ["id", "name", "colour"]);
    assert_eq!(after(&events[1], "colour"), &Value::Text("blue".into()));
    assert_eq!(names(&events[2]), ["id", "colour"]);
    assert_eq!(after(&events[2], "colour"), &Value::Text("green".into()));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_whose_first_logical_message_is_the_bridge_marker_is_flagged(
) -> anyhow::Result<()> {
    let db = TestDb::create(Side::Platform, "marker").await?;
    db.execute("CREATE TABLE rows (id int PRIMARY KEY)").await?;
    let (setup, mut reader) = capture_of(db, &["rows"]).await?;
    let capture = streaming(&setup).await?;
    let db = &setup.db;
    db.execute(
        "BEGIN; SELECT pg_logical_emit_message(true, 'syncbridge.apply', 'apply-42'); INSERT INTO rows VALUES (1); COMMIT;
         INSERT INTO rows VALUES (2);
         BEGIN; SELECT pg_logical_emit_message(true, 'someone.else', 'x');
                SELECT pg_logical_emit_message(true, 'syncbridge.apply', 'late'); INSERT INTO rows VALUES (3); COMMIT;",
    )
    .await?;
    let events = reader.read_at_least(3, WAIT).await?.to_vec();
    capture.stop().await?;
    setup.db.drop_slot(&setup.slot).await?;

    assert_eq!(
        events[0].marker.as_deref(),
        Some("apply-42"),
        "apply's own write is flagged"
    );
    assert_eq!(events[1].marker, None, "an application's write is not");
    assert_eq!(
        events[2].marker, None,
        "only the first logical message counts"
    );
    assert_eq!(events[0].source, "platform");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_with_only_the_bridge_marker_leaves_the_next_transaction_unflagged(
) -> anyhow::Result<()> {
    // Apply commits transactions that carry its marker and write no
    // captured row (a round of waiting rows that found nothing to write).
    let db = TestDb::create(Side::Legacy, "marker_only").await?;
    db.execute("CREATE TABLE rows (id int PRIMARY KEY)").await?;
    let (setup, mut reader) = capture_of(db, &["rows"]).await?;
    let capture = streaming(&setup).await?;
    setup
        .db
        .execute(
            "BEGIN; SELECT pg_logical_emit_message(true, 'syncbridge.apply', 'empty'); COMMIT;
             INSERT INTO rows VALUES (1);
             BEGIN; SELECT pg_logical_emit_message(true, 'syncbridge.apply', 'empty again');
                    SELECT pg_logical_emit_message(false, 'syncbridge.apply.heartbeat', 'x'); COMMIT;
             INSERT INTO rows VALUES (2);",
        )
        .await?;
    let events = reader.read_at_least(2, WAIT).await?.to_vec();
    capture.stop().await?;
    setup.db.drop_slot(&setup.slot).await?;
    assert_eq!(events.len(), 2, "one event per row: {events:?}");
    assert_eq!(
        events[0].marker, None,
        "the application's first write is not flagged"
    );
    assert_eq!(events[1].marker, None, "nor its second");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_prints_every_message_in_order_and_says_where_offsets_never_became_readable(
) -> anyhow::Result<()> {
    let topic = unique("tail");
    create_topic(&topic).await?;
    // Offsets 0, 1 and 7: the batch at 1 claims 1 to 6 but holds one message.
    produce(&topic, &[(b"k".to_vec(), b"first".to_vec())]).await?;
    produce_with_offsets_skipped(&topic, b"k", b"second", 5).await?;
    produce(&topic, &[(b"k".to_vec(), b"third".to_vec())]).await?;

    let output = tokio::time::timeout(
        WAIT,
        tokio::process::Command::new(binary("capture"))
            .args([
                "tail",
                "--brokers",
                &Stack::get().brokers,
                "--topic",
                &topic,
            ])
            .args(["--from-beginning", "--limit", "3"])
            .output(),
    )
    .await??;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    let offsets: Vec<&str> = stdout
        .lines()
        .filter_map(|line| line.split(" offset ").nth(1)?.split(':').next())
        .collect();
    assert_eq!(offsets, ["0", "1", "7"], "{stdout}");
    assert!(
        stderr.contains(&format!("{topic}: offsets 2 to 6 never became readable")),
        "the gap is named once the wait is over: {stderr}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_reaches_the_brokers_as_the_configuration_file_says() -> anyhow::Result<()> {
    let topic = unique("tail_config");
    create_topic(&topic).await?;
    produce(&topic, &[(b"k".to_vec(), b"only".to_vec())]).await?;
    let brokers = &Stack::get().brokers;
    let tail = [
        "tail",
        "--topic",
        &topic,
        "--from-beginning",
        "--limit",
        "1",
    ];
    let file = format!(
        "[kafka]\nbrokers = \"{brokers}\"\n[kafka.properties]\n\"client.id\" = \"tail-test\"\n"
    );
    let read = tokio::time::timeout(WAIT, run_command("capture", &file, &tail)).await??;
    assert_eq!(read.code, Some(0), "{}\n{}", read.stdout, read.stderr);
    assert!(
        read.stdout.contains(&format!("{topic} offset 0")),
        "no --brokers: the file's [kafka] section is used: {}",
        read.stdout
    );
    // The file's librdkafka properties reach tail's client: one it cannot
    // take is refused, by name.
    let file = format!(
        "[kafka]\nbrokers = \"{brokers}\"\n[kafka.properties]\n\"fetch.wait.max.ms\" = \"soon\"\n"
    );
    let refused = tokio::time::timeout(WAIT, run_command("capture", &file, &tail)).await??;
    assert_ne!(refused.code, Some(0), "{}", refused.stdout);
    assert!(
        refused.stderr.contains("fetch.wait.max.ms"),
        "{}",
        refused.stderr
    );
    Ok(())
}
