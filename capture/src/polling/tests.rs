#![allow(clippy::unwrap_used)]

use pg::ident::TableName;
use pg::value;
use schemas::event::{CaptureMode, ChangeEvent, Op, Transaction};

use super::poller::*;
use super::table::*;

fn column(name: &str, oid: u32, sql_type: &str) -> PolledColumn {
    PolledColumn {
        name: name.to_owned(),
        type_oid: oid,
        type_name: value::type_name(oid).unwrap_or("?").to_owned(),
        sql_type: sql_type.to_owned(),
    }
}

fn users() -> PolledTable {
    PolledTable {
        name: TableName::parse("public.users").unwrap(),
        columns: vec![
            column("id", 20, "bigint"),
            column("email", 25, "text"),
            column("updated_at", 1114, "timestamp(0) without time zone"),
        ],
        key: vec![0],
        updated_at: 2,
    }
}

#[test]
fn the_first_page_of_a_round_starts_the_overlap_before_the_watermark() {
    let start = PageStart::Since {
        updated_at: "2026-11-22 04:00:00".into(),
        overlap_secs: 5.0,
    };
    let sql = users().page_query(&start, 100, true, false, None);
    assert!(
        sql.contains("WHERE t.\"updated_at\" > $2::text::timestamp(0) without time zone - make_interval(secs => $3::float8)"),
        "{sql}"
    );
    assert!(
        sql.ends_with("ORDER BY t.\"updated_at\", t.\"id\" LIMIT 100"),
        "{sql}"
    );
    assert!(sql.contains("syncbridge.apply_ledger"), "{sql}");
    assert_eq!(
        start.params(),
        (vec!["2026-11-22 04:00:00".to_owned()], Some(5.0))
    );
}

#[test]
fn later_pages_start_strictly_after_the_last_row_by_time_then_key() {
    let start = PageStart::After {
        updated_at: "2026-11-22 04:00:00".into(),
        key: vec!["42".into()],
    };
    let sql = users().page_query(&start, 10, false, false, None);
    assert!(
        sql.contains("WHERE (t.\"updated_at\", t.\"id\") > ($2::text::timestamp(0) without time zone, $3::text::bigint)"),
        "{sql}"
    );
    assert!(!sql.contains("apply_ledger"), "{sql}");
    assert_eq!(
        start.params().0,
        vec!["2026-11-22 04:00:00".to_owned(), "42".to_owned()]
    );
}

#[test]
fn a_composite_key_orders_and_resumes_by_every_key_column() {
    let mut table = users();
    table.columns.push(column("tenant", 25, "text"));
    table.key = vec![3, 0];
    let start = PageStart::After {
        updated_at: "t".into(),
        key: vec!["a".into(), "1".into()],
    };
    let sql = table.page_query(&start, 10, false, false, None);
    assert!(sql.contains("(t.\"updated_at\", t.\"tenant\", t.\"id\") > ($2::text::timestamp(0) without time zone, $3::text::text, $4::text::bigint)"), "{sql}");
    assert!(
        sql.contains("k.key = (ARRAY[t.\"tenant\"::text, t.\"id\"::text]::text[] COLLATE \"C\")"),
        "{sql}"
    );
    let confirm = table.confirm_statement();
    assert!(
        confirm.contains("unnest($2::text[], $3::text[], $4::int8[]) AS u(c0, c1, x)"),
        "{confirm}"
    );
    assert!(confirm.contains("(LEAST($5::text::timestamp(0) without time zone, now()::timestamp(0) without time zone), ($6::text[])[1]::text, ($6::text[])[2]::bigint) > (w.updated_at::timestamp(0) without time zone, w.key[1]::text, w.key[2]::bigint)"), "{confirm}");
}

#[test]
fn the_whole_table_is_read_without_a_filter_on_the_first_poll() {
    let sql = users().page_query(&PageStart::Beginning, 10, false, false, None);
    assert!(!sql.contains("WHERE"), "{sql}");
}

#[test]
fn a_sweep_reads_only_unsent_rows_stamped_behind_the_watermark_minus_the_overlap() {
    let sql = users().page_query(&PageStart::Beginning, 10, false, false, Some(5.0));
    assert!(
        sql.contains("WHERE k.row_xmin IS DISTINCT FROM t.xmin::text::int8"),
        "{sql}"
    );
    assert!(
        sql.contains("(SELECT w.updated_at::timestamp(0) without time zone FROM syncbridge.capture_watermark w WHERE w.tbl = $1) - make_interval(secs => 5::float8)"),
        "{sql}"
    );
    let after = PageStart::After {
        updated_at: "2030-01-01 00:00:00".into(),
        key: vec!["7".into()],
    };
    let next = users().page_query(&after, 10, false, false, Some(5.0));
    assert!(
        next.contains(") > ($2::text::") && next.contains("AND k.row_xmin IS DISTINCT FROM"),
        "pages by key set as a round does: {next}"
    );
}

fn event(marker: Option<&str>) -> ChangeEvent {
    ChangeEvent {
        source: "legacy".into(),
        database: "db".into(),
        schema: "public".into(),
        table: "users".into(),
        op: Op::Update,
        key: Vec::new(),
        before: None,
        after: None,
        transaction: Transaction {
            xid: 0,
            commit_lsn: 1,
            commit_time_micros: 0,
            position: 9,
            last: false,
            event_count: None,
        },
        marker: marker.map(str::to_owned),
        origin: None,
        mode: CaptureMode::Polling,
        captured_at_micros: 0,
        clock: None,
    }
}

#[test]
fn a_page_is_cut_into_one_pseudo_transaction_per_run_of_echoes_or_not() {
    let mut events = vec![
        event(None),
        event(None),
        event(Some("polling:7")),
        event(None),
    ];
    number_runs(&mut events);
    let shape: Vec<(u64, bool, Option<u64>)> = events
        .iter()
        .map(|e| {
            (
                e.transaction.position,
                e.transaction.last,
                e.transaction.event_count,
            )
        })
        .collect();
    assert_eq!(
        shape,
        vec![
            (0, false, None),
            (1, true, Some(2)),
            (0, true, Some(1)),
            (0, true, Some(1))
        ]
    );
}
