//! kill -9 in the middle of a load loses nothing.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use schemas::event::{ChangeEvent, Op, Value};
use sync_bridge_tests::{
    connect, create_topic, eventually, CaptureSetup, EventReader, Side, TestDb,
};

const ROWS: i64 = 100_000;
const PER_TRANSACTION: i64 = 500;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_100k_row_load_then_restart_loses_no_row() -> anyhow::Result<()> {
    let db = TestDb::create(Side::Legacy, "crash").await?;
    db.execute("CREATE TABLE items (id bigint PRIMARY KEY, payload text NOT NULL)")
        .await?;
    let setup = CaptureSetup::new(db, &["items"]);
    create_topic(&setup.topic).await?;
    let mut reader = EventReader::new(&setup.topic)?;
    let mut process = setup.spawn_process()?;
    let db = &setup.db;
    eventually("the slot", Duration::from_secs(60), || async {
        Ok(db.confirmed_flush_lsn(&setup.slot).await?.map(|_| ()))
    })
    .await?;

    // The load runs on its own connection while capture is killed and restarted.
    let loader_url = db.url.clone();
    let load = tokio::spawn(async move {
        let client = connect(&loader_url).await?;
        for start in (0..ROWS).step_by(PER_TRANSACTION as usize) {
            client
                .execute(
                    "INSERT INTO items SELECT g, 'row ' || g FROM generate_series($1::int8, $2::int8) AS g",
                    &[&(start + 1), &(start + PER_TRANSACTION)],
                )
                .await?;
        }
        anyhow::Ok(())
    });

    // Kill it once part of the load has reached Kafka.
    reader
        .read_at_least(20_000, Duration::from_secs(120))
        .await?;
    process.kill_hard().await?;
    let seen_before_kill = reader.events.len();
    assert!(
        (seen_before_kill as i64) < ROWS,
        "the kill came before capture had delivered the load"
    );
    let mut restarted = setup.spawn_process()?;
    load.await??;

    let mut ids = BTreeSet::new();
    let mut scanned = 0;
    let events = reader
        .read_until("every row's event", Duration::from_secs(300), |events| {
            ids.extend(
                events[scanned..]
                    .iter()
                    .filter(|e| e.op == Op::Insert)
                    .map(key_of),
            );
            scanned = events.len();
            ids.len() as i64 == ROWS
        })
        .await?
        .to_vec();
    let code = restarted.terminate().await?;
    assert_eq!(code, Some(0), "log:\n{}", restarted.output());

    let in_database: BTreeSet<i64> = db
        .client()
        .query("SELECT id FROM items", &[])
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(in_database.len() as i64, ROWS);
    assert_eq!(ids, in_database, "every committed row reached Kafka");
    assert!(seen_before_kill < events.len());

    // Duplicates (replayed after the kill) are identical and identifiable.
    let mut by_identity: HashMap<(u64, u64), &ChangeEvent> = HashMap::new();
    for event in &events {
        let identity = (event.transaction.commit_lsn, event.transaction.position);
        if let Some(first) = by_identity.insert(identity, event) {
            assert_eq!(
                first.key, event.key,
                "a replayed event repeats the same row"
            );
            assert_eq!(first.after, event.after);
        }
    }
    assert_eq!(
        by_identity.len() as i64,
        ROWS,
        "one identity per row change"
    );
    setup.db.drop_slot(&setup.slot).await?;
    Ok(())
}

fn key_of(event: &ChangeEvent) -> i64 {
    match &event.key[0].value {
        Value::Int(id) => *id,
        other => panic!("integer key expected, got {other:?}"),
    }
}
