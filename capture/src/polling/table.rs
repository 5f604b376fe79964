//! A table as polling reads it: its columns, key and `updated_at` column,
//! read from the catalog ([`describe`]), and the keyset page query that
//! reads it from a watermark.

use pg::ident::{quote, TableName};
use pg::value;
use tokio_postgres::Client;

use crate::error::{CaptureError, Result};

/// The types an `updated_at` column may have.
const TIMESTAMP_OIDS: [u32; 3] = [1114, 1184, 1082];

/// One column of a polled table.
#[derive(Debug, Clone)]
pub struct PolledColumn {
    pub name: String,
    pub type_oid: u32,
    /// The name events carry (`int8`, `timestamptz`, `schema.enum`).
    pub type_name: String,
    /// The type as SQL writes it, for casts (`timestamp(0) without time zone`).
    pub sql_type: String,
}

/// A table as polling reads it.
#[derive(Debug, Clone)]
pub struct PolledTable {
    pub name: TableName,
    pub columns: Vec<PolledColumn>,
    /// Indexes into `columns` of the primary key, in key order.
    pub key: Vec<usize>,
    /// Index into `columns` of the `updated_at` column.
    pub updated_at: usize,
}

/// Where a page starts.
#[derive(Debug, Clone, PartialEq)]
pub enum PageStart {
    /// The whole table (a table without watermark and no `start_from`).
    Beginning,
    /// Rows with `updated_at` after this value (text) minus `overlap_secs`.
    Since {
        updated_at: String,
        overlap_secs: f64,
    },
    /// Strictly after this `(updated_at, key)` (texts): the next page.
    After {
        updated_at: String,
        key: Vec<String>,
    },
}

impl PolledTable {
    /// The ledger's name for the table: `schema.table`.
    pub fn label(&self) -> String {
        self.name.to_string()
    }

    fn column_ident(&self, index: usize) -> String {
        quote(&self.columns[index].name)
    }

    /// `ARRAY[t.k1::text, ...]::text[] COLLATE "C"`: the key as the ledger stores it.
    pub(super) fn key_array(&self, alias: &str) -> String {
        let parts: Vec<String> = self
            .key
            .iter()
            .map(|&i| format!("{alias}.{}::text", self.column_ident(i)))
            .collect();
        format!("(ARRAY[{}]::text[] COLLATE \"C\")", parts.join(", "))
    }

    /// `t."updated_at", t."id"`: the keyset order.
    fn order_columns(&self) -> String {
        std::iter::once(self.updated_at)
            .chain(self.key.iter().copied())
            .map(|i| format!("t.{}", self.column_ident(i)))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The query reading one page. Parameters: `$1` the table's label, then
    /// those of `start` (see `PageStart::params`). Columns: `xmin` (int8),
    /// echo (bool), known (bool: the key is in the ledger), the `xmin`
    /// last sent (int8, NULL), the row's clock (`seconds` and `tick`, int8,
    /// NULL without one; read only with `clocks`), then every column as
    /// text. With
    /// `behind_overlap` (a sweep, given `polling.overlap` in seconds), only
    /// the rows no round reads: stamped at or before the table's watermark
    /// minus the overlap, and whose version was never sent (their `xmin` is
    /// not the one the ledger holds).
    pub fn page_query(
        &self,
        start: &PageStart,
        page_size: usize,
        echo_ledger: bool,
        clocks: bool,
        behind_overlap: Option<f64>,
    ) -> String {
        let clocked = clocks && self.key.len() == 1;
        // A version apply wrote carries its `xmin` in apply's ledger. Where
        // the row has a clock, the clock must say so too: a version the
        // local writers stamped (no origin) that one of apply's statements
        // touched in passing (an `ON DELETE SET NULL` its delete of a parent
        // cascaded to) carries apply's `xmin`, but no pass sent it yet.
        let echo = match (echo_ledger, clocked) {
            (true, true) => {
                "(EXISTS (SELECT 1 FROM syncbridge.apply_ledger l WHERE l.written_xmin = t.xmin::text) \
                  AND (rc.seconds IS NULL OR rc.origin IS NOT NULL))"
            }
            (true, false) => {
                "EXISTS (SELECT 1 FROM syncbridge.apply_ledger l WHERE l.written_xmin = t.xmin::text)"
            }
            (false, _) => "false",
        };
        let columns: Vec<String> = (0..self.columns.len())
            .map(|i| format!("t.{}::text", self.column_ident(i)))
            .collect();
        let updated_at = format!("t.{}", self.column_ident(self.updated_at));
        let updated_at_type = &self.columns[self.updated_at].sql_type;
        let filter = match start {
            PageStart::Beginning => String::new(),
            PageStart::Since { .. } => format!(
                "WHERE {updated_at} > $2::text::{updated_at_type} - make_interval(secs => $3::float8)"
            ),
            PageStart::After { .. } => {
                let bounds: Vec<String> = std::iter::once(self.updated_at)
                    .chain(self.key.iter().copied())
                    .enumerate()
                    .map(|(n, i)| format!("${}::text::{}", n + 2, self.columns[i].sql_type))
                    .collect();
                format!("WHERE ({}) > ({})", self.order_columns(), bounds.join(", "))
            }
        };
        let filter = match behind_overlap {
            None => filter,
            Some(overlap_secs) => {
                let behind = format!(
                    "k.row_xmin IS DISTINCT FROM t.xmin::text::int8 AND {updated_at} <= \
                     (SELECT w.updated_at::{updated_at_type} FROM syncbridge.capture_watermark w WHERE w.tbl = $1) \
                     - make_interval(secs => {overlap_secs}::float8)"
                );
                if filter.is_empty() {
                    format!("WHERE {behind}")
                } else {
                    format!("{filter} AND {behind}")
                }
            }
        };
        let (clock, clock_join) = match self.key.as_slice() {
            [key] if clocks => (
                "rc.seconds, rc.tick",
                format!(
                    "LEFT JOIN syncbridge.row_clock rc ON rc.relation = '{}' \
                     AND rc.row_key = t.{}::text AND NOT rc.deleted",
                    pg::clock::relation(&self.name.schema, &self.name.table).replace('\'', "''"),
                    self.column_ident(*key),
                ),
            ),
            _ => ("NULL::int8, NULL::int8", String::new()),
        };
        format!(
            "SELECT t.xmin::text::int8, {echo}, k.tbl IS NOT NULL, k.row_xmin, {clock}, {columns} \
             FROM {table} t \
             LEFT JOIN syncbridge.capture_keys k ON k.tbl = $1 AND k.key = {key} \
             {clock_join} \
             {filter} ORDER BY {order} LIMIT {page_size}",
            columns = columns.join(", "),
            table = self.name.quoted(),
            key = self.key_array("t"),
            order = self.order_columns(),
        )
    }

    /// The statement recording a confirmed page: its rows' keys and `xmin`
    /// into the ledger, and the watermark moved forward (never backwards)
    /// to the page's last row. Parameters: `$1` label, `$2..` one text[] per
    /// key column, then the `xmin`s (int8[]), then the last row's
    /// `updated_at` (text) and key (text[]).
    pub fn confirm_statement(&self) -> String {
        let n = self.key.len();
        let key_params: Vec<String> = (0..n).map(|i| format!("${}::text[]", i + 2)).collect();
        let key_columns: Vec<String> = (0..n).map(|i| format!("u.c{i}")).collect();
        let xmins = n + 2;
        let updated_at = n + 3;
        let key = n + 4;
        let updated_at_type = &self.columns[self.updated_at].sql_type;
        // A row stamped in the future must not carry the watermark past the
        // present (later rows would then fall behind it): clamp to now().
        let clamped =
            format!("LEAST(${updated_at}::text::{updated_at_type}, now()::{updated_at_type})");
        let newer_key: Vec<String> = std::iter::once(clamped.clone())
            .chain(self.key.iter().enumerate().map(|(p, &i)| {
                format!("(${key}::text[])[{}]::{}", p + 1, self.columns[i].sql_type)
            }))
            .collect();
        let stored_key: Vec<String> = std::iter::once(format!("w.updated_at::{updated_at_type}"))
            .chain(
                self.key
                    .iter()
                    .enumerate()
                    .map(|(p, &i)| format!("w.key[{}]::{}", p + 1, self.columns[i].sql_type)),
            )
            .collect();
        format!(
            "WITH keys AS (\
               INSERT INTO syncbridge.capture_keys (tbl, key, row_xmin) \
               SELECT $1, ARRAY[{key_columns}]::text[] COLLATE \"C\", u.x \
               FROM unnest({key_params}, ${xmins}::int8[]) AS u({unnest_names}, x) \
               ON CONFLICT (tbl, key) DO UPDATE SET row_xmin = EXCLUDED.row_xmin) \
             INSERT INTO syncbridge.capture_watermark AS w (tbl, updated_at, key) \
             VALUES ($1, {clamped}::text, ${key}::text[]) \
             ON CONFLICT (tbl) DO UPDATE SET updated_at = EXCLUDED.updated_at, key = EXCLUDED.key, polled_at = now() \
             WHERE w.updated_at IS NULL OR ({newer}) > ({stored})",
            key_columns = key_columns.join(", "),
            key_params = key_params.join(", "),
            unnest_names = (0..n).map(|i| format!("c{i}")).collect::<Vec<_>>().join(", "),
            newer = newer_key.join(", "),
            stored = stored_key.join(", "),
        )
    }
}

impl PageStart {
    /// The parameters after the label, as text (and the overlap as float).
    pub(super) fn params(&self) -> (Vec<String>, Option<f64>) {
        match self {
            PageStart::Beginning => (Vec::new(), None),
            PageStart::Since {
                updated_at,
                overlap_secs,
            } => (vec![updated_at.clone()], Some(*overlap_secs)),
            PageStart::After { updated_at, key } => {
                let mut params = vec![updated_at.clone()];
                params.extend(key.iter().cloned());
                (params, None)
            }
        }
    }
}

/// Reads a table's columns, primary key and `updated_at` column.
pub async fn describe(client: &Client, name: &TableName, updated_at: &str) -> Result<PolledTable> {
    let rows = client
        .query(
            "SELECT a.attname::text, a.atttypid, format_type(a.atttypid, a.atttypmod),
                    CASE WHEN tn.nspname = 'pg_catalog' THEN ty.typname::text ELSE tn.nspname || '.' || ty.typname END,
                    (SELECT array_position(i.indkey::int2[], a.attnum) FROM pg_index i
                      WHERE i.indrelid = c.oid AND i.indisprimary)
             FROM pg_class c
             JOIN pg_namespace n ON n.oid = c.relnamespace
             JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
             JOIN pg_type ty ON ty.oid = a.atttypid
             JOIN pg_namespace tn ON tn.oid = ty.typnamespace
             WHERE n.nspname = $1 AND c.relname = $2
             ORDER BY a.attnum",
            &[&name.schema, &name.table],
        )
        .await
        .map_err(|e| CaptureError::postgres(format!("describe {name}"), e))?;
    if rows.is_empty() {
        return Err(CaptureError::Config(format!("table {name} does not exist")));
    }
    let mut columns = Vec::new();
    let mut key: Vec<(i32, usize)> = Vec::new();
    for (index, row) in rows.iter().enumerate() {
        let type_oid: u32 = row.get(1);
        columns.push(PolledColumn {
            name: row.get(0),
            type_oid,
            type_name: value::type_name(type_oid)
                .map(str::to_owned)
                .unwrap_or_else(|| row.get(3)),
            sql_type: row.get(2),
        });
        if let Some(position) = row.get::<_, Option<i32>>(4) {
            key.push((position, index));
        }
    }
    key.sort_unstable();
    if key.is_empty() {
        return Err(CaptureError::Config(format!(
            "table {name} has no primary key: polling needs one"
        )));
    }
    let updated_at_index = columns
        .iter()
        .position(|c| c.name == updated_at)
        .ok_or_else(|| {
            CaptureError::Config(format!(
                "table {name} has no column {updated_at} (polling.updated_at_column)"
            ))
        })?;
    if !TIMESTAMP_OIDS.contains(&columns[updated_at_index].type_oid) {
        return Err(CaptureError::Config(format!(
            "{name}.{updated_at} must be a timestamp, timestamptz or date for polling"
        )));
    }
    Ok(PolledTable {
        name: name.clone(),
        columns,
        key: key.into_iter().map(|(_, index)| index).collect(),
        updated_at: updated_at_index,
    })
}

pub(super) fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}
