//! Transaction boundaries and commit order.

use std::collections::BTreeMap;
use std::time::Duration;

use schemas::event::{ChangeEvent, Value};
use sync_bridge_tests::{
    connect, create_topic, eventually, CaptureSetup, EventReader, Side, TestDb,
};

const WAIT: Duration = Duration::from_secs(60);

fn id_of(event: &ChangeEvent) -> i64 {
    match &event.key[0].value {
        Value::Int(id) => *id,
        other => panic!("integer key expected, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_arrive_whole_in_commit_order_with_positions_and_a_last_event(
) -> anyhow::Result<()> {
    let db = TestDb::create(Side::Legacy, "txorder").await?;
    db.execute(
        "CREATE TABLE parents (id int PRIMARY KEY);
         CREATE TABLE children (id int PRIMARY KEY, parent_id int REFERENCES parents (id));",
    )
    .await?;
    let setup = CaptureSetup::new(db, &["parents", "children"]);
    create_topic(&setup.topic).await?;
    let mut reader = EventReader::new(&setup.topic)?;
    let capture = setup.start()?;
    let db = &setup.db;
    eventually("the slot", WAIT, || async {
        Ok(db.confirmed_flush_lsn(&setup.slot).await?.map(|_| ()))
    })
    .await?;

    // Two interleaved transactions: A starts first but commits last.
    let a = connect(&db.url).await?;
    let b = connect(&db.url).await?;
    a.batch_execute("BEGIN; INSERT INTO parents VALUES (1); INSERT INTO children VALUES (10, 1);")
        .await?;
    b.batch_execute("BEGIN; INSERT INTO parents VALUES (2); INSERT INTO children VALUES (20, 2), (21, 2), (22, 2); COMMIT;").await?;
    a.batch_execute("INSERT INTO children VALUES (11, 1); COMMIT;")
        .await?;
    // A multi-row insert in one statement and a single-row transaction.
    db.execute("INSERT INTO parents SELECT g FROM generate_series(100, 149) AS g")
        .await?;
    db.execute("INSERT INTO parents VALUES (3)").await?;

    let events = reader.read_at_least(4 + 3 + 51, WAIT).await?.to_vec();
    capture.stop().await?;
    setup.db.drop_slot(&setup.slot).await?;

    // Group by transaction, in arrival order.
    let mut transactions: Vec<Vec<&ChangeEvent>> = Vec::new();
    for event in &events {
        match transactions.last_mut() {
            Some(current) if current[0].transaction.commit_lsn == event.transaction.commit_lsn => {
                current.push(event)
            }
            _ => transactions.push(vec![event]),
        }
    }
    assert_eq!(
        transactions.len(),
        4,
        "B, A, the multi-row insert, the single row"
    );
    let ids: Vec<Vec<(String, i64)>> = transactions
        .iter()
        .map(|tx| tx.iter().map(|e| (e.table.clone(), id_of(e))).collect())
        .collect();
    assert_eq!(
        ids[0],
        [
            ("parents".into(), 2),
            ("children".into(), 20),
            ("children".into(), 21),
            ("children".into(), 22)
        ]
    );
    assert_eq!(
        ids[1],
        [
            ("parents".into(), 1),
            ("children".into(), 10),
            ("children".into(), 11)
        ]
    );
    assert_eq!(ids[2].len(), 50);
    assert_eq!(ids[3], [("parents".into(), 3)]);

    let mut previous_commit = 0;
    for tx in &transactions {
        let commit = tx[0].transaction.commit_lsn;
        assert!(
            commit > previous_commit,
            "commit LSNs increase in topic order"
        );
        previous_commit = commit;
        let xid = tx[0].transaction.xid;
        for (position, event) in tx.iter().enumerate() {
            let t = &event.transaction;
            assert_eq!(t.position, position as u64);
            assert_eq!(t.xid, xid);
            assert_eq!(t.last, position + 1 == tx.len());
            assert_eq!(t.event_count, t.last.then_some(tx.len() as u64));
            assert!(
                t.commit_time_micros > 1_600_000_000_000_000,
                "commit time is a Unix-epoch timestamp"
            );
        }
    }
    // (commit LSN, position) identifies every event, even within one statement.
    let mut identities = BTreeMap::new();
    for event in &events {
        assert!(identities
            .insert(
                (event.transaction.commit_lsn, event.transaction.position),
                ()
            )
            .is_none());
    }
    Ok(())
}
