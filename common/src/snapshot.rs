//! Reading whole source tables as the change model's rows: the snapshot bootstrap copies them into the raw topics and
//! `pgm-transform verify` passes them through the rules. Values are fetched as PostgreSQL's text output (`col::text`),
//! exactly what wal2json sends for the same datum, so a copied row and a streamed row are indistinguishable.
//!
//! The bootstrap cuts each table into chunks: a range of its key when the key is one integer column, else the whole
//! table. Ranges of the key (not of ctid) stay the same rows from one snapshot to the next, which is what lets a
//! resumed bootstrap copy the chunks left at a newer snapshot (docs/lifecycle.md).

use tokio_postgres::{Client, Row as PgRow};

use crate::change::{quote_ident, Column, Datum, Row, TableRef};
use crate::envelope::CopyColumn;

/// A column of a source table as the snapshot reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceColumn {
    pub name: String,
    /// `format_type(atttypid, atttypmod)`, as wal2json prints it.
    pub type_name: String,
    pub type_oid: u32,
}

/// What the snapshot needs to know about one table of DB1.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceTable {
    pub table: TableRef,
    /// Non-dropped, non-generated columns in column order (generated columns cannot be written on DB2).
    pub columns: Vec<SourceColumn>,
    /// Primary-key columns in key order; empty without one.
    pub key: Vec<String>,
    /// Heap pages now (`pg_relation_size`), for chunking; `reltuples` (an estimate, 0 when unknown), for the ETA.
    pub pages: u32,
    pub rows_estimate: u64,
    /// A partitioned table: it holds no rows itself, and changes are decoded under its partitions' names.
    pub partitioned: bool,
}

/// A range `[from, to)` of a table's single integer key column; `None` is an open end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRange {
    pub column: String,
    pub from: Option<i64>,
    pub to: Option<i64>,
}

impl KeyRange {
    pub fn contains(&self, value: i64) -> bool {
        self.from.is_none_or(|f| value >= f) && self.to.is_none_or(|t| value < t)
    }
}

/// Positions of the snapshot bootstrap: every copied row has commit LSN `consistent point − 1`, and chunk `seq` of
/// attempt `attempt` numbers its rows `base + 1, base + 2, …` with `base = attempt << 56 | seq << 32`. Chunks are
/// published one after the other in `(attempt, seq)` order, so apply can tell a chunk's records from the others'
/// (and from those of an interrupted attempt) by the ordinal alone.
pub const CHUNK_ROWS: u64 = 1 << 32;
pub const MAX_ATTEMPTS: u32 = 254;
pub const MAX_CHUNKS: u32 = (1 << 24) - 1;

pub fn chunk_base(attempt: u32, seq: u32) -> u64 {
    (u64::from(attempt) << 56) | (u64::from(seq) << 32)
}

/// Integer types a key range can be cut on: int2, int4, int8.
const INTEGER_OIDS: [u32; 3] = [21, 23, 20];

const DESCRIBE: &str = "
SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), a.atttypid::oid,
       array_position(pk.indkey::int2[], a.attnum),
       pg_relation_size(c.oid) / current_setting('block_size')::int8, greatest(c.reltuples, 0)::int8,
       c.relkind = 'p'
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
LEFT JOIN pg_index pk ON pk.indrelid = c.oid AND pk.indisprimary
WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')
ORDER BY a.attnum";

impl SourceTable {
    /// Reads the table's columns; `None` when it does not exist.
    pub async fn describe(client: &Client, table: &TableRef) -> Result<Option<SourceTable>, tokio_postgres::Error> {
        let rows = client.query(DESCRIBE, &[&table.schema, &table.table]).await?;
        if rows.is_empty() {
            return Ok(None);
        }
        let mut key: Vec<(i32, String)> = Vec::new();
        let mut columns = Vec::with_capacity(rows.len());
        for row in &rows {
            let name: String = row.get(0);
            if let Some(position) = row.get::<_, Option<i32>>(3) {
                key.push((position, name.clone()));
            }
            columns.push(SourceColumn { name, type_name: row.get(1), type_oid: row.get(2) });
        }
        key.sort();
        let pages = u32::try_from(rows[0].get::<_, i64>(4)).unwrap_or(u32::MAX);
        let rows_estimate = u64::try_from(rows[0].get::<_, i64>(5)).unwrap_or(0);
        Ok(Some(SourceTable {
            table: table.clone(),
            columns,
            key: key.into_iter().map(|(_, name)| name).collect(),
            pages,
            rows_estimate,
            partitioned: rows[0].get(6),
        }))
    }

    /// `SELECT "a"::text, … FROM ONLY "s"."t"`.
    pub fn select_sql(&self) -> String {
        let list: Vec<String> = self.columns.iter().map(|c| format!("{}::text", quote_ident(&c.name))).collect();
        format!("SELECT {} FROM ONLY {}", list.join(", "), self.table.quoted())
    }

    /// The key column a table can be cut into ranges on: its primary key when that is one integer column.
    pub fn integer_key(&self) -> Option<&str> {
        let [key] = self.key.as_slice() else { return None };
        let column = self.columns.iter().find(|c| &c.name == key)?;
        INTEGER_OIDS.contains(&column.type_oid).then_some(key.as_str())
    }

    /// `COPY (SELECT "a"::text, … FROM ONLY "s"."t" [WHERE "k" >= from AND "k" < to]) TO STDOUT`: a chunk's rows in
    /// COPY's text format, each field the value's text. COPY takes no parameters; the bounds are integers of the
    /// bootstrap's own plan, printed as such.
    pub fn copy_sql(&self, range: Option<&KeyRange>) -> String {
        let mut select = self.select_sql();
        if let Some(range) = range {
            let k = quote_ident(&range.column);
            let mut conditions = Vec::new();
            if let Some(from) = range.from {
                conditions.push(format!("{k} >= {from}"));
            }
            if let Some(to) = range.to {
                conditions.push(format!("{k} < {to}"));
            }
            if !conditions.is_empty() {
                select.push_str(&format!(" WHERE {}", conditions.join(" AND ")));
            }
        }
        format!("COPY ({select}) TO STDOUT")
    }

    /// The columns a COPY batch of this table names.
    pub fn copy_columns(&self) -> Vec<CopyColumn> {
        self.columns
            .iter()
            .map(|c| CopyColumn { name: c.name.clone(), type_name: c.type_name.clone(), type_oid: c.type_oid })
            .collect()
    }

    /// Cuts `[min, max]` of the integer key into about `pages / pages_per_chunk` ranges of equal width; the first
    /// and last are open so rows outside today's bounds are still copied.
    pub fn key_ranges(&self, column: &str, min: i64, max: i64, pages_per_chunk: u32) -> Vec<KeyRange> {
        let n = (u64::from(self.pages) / u64::from(pages_per_chunk.max(1))).max(1);
        let span = i128::from(max) - i128::from(min) + 1;
        let n = i128::from(n).min(span.max(1));
        let mut out = Vec::new();
        let mut from = None;
        for i in 1..n {
            let bound = (i128::from(min) + span * i / n) as i64;
            if from.is_some_and(|f| bound <= f) {
                continue;
            }
            out.push(KeyRange { column: column.to_owned(), from, to: Some(bound) });
            from = Some(bound);
        }
        out.push(KeyRange { column: column.to_owned(), from, to: None });
        out
    }

    /// One fetched row (every column `text`, in [`Self::columns`] order) as a change-model row.
    pub fn to_row(&self, row: &PgRow) -> Row {
        Row(self
            .columns
            .iter()
            .enumerate()
            .map(|(i, c)| Column {
                name: c.name.clone(),
                type_name: c.type_name.clone(),
                type_oid: c.type_oid,
                value: Datum::from(row.get::<_, Option<String>>(i)),
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(pages: u32) -> SourceTable {
        SourceTable {
            table: TableRef::new("public", "Order \"Items\""),
            columns: vec![
                SourceColumn { name: "id".into(), type_name: "integer".into(), type_oid: 23 },
                SourceColumn { name: "Note".into(), type_name: "text".into(), type_oid: 25 },
            ],
            key: vec!["id".into()],
            pages,
            rows_estimate: 0,
            partitioned: false,
        }
    }

    #[test]
    fn key_ranges_cover_every_key_once_and_end_open() {
        let t = table(100);
        let ranges = t.key_ranges("id", 1, 1000, 25);
        assert_eq!(ranges.len(), 4);
        assert_eq!(ranges[0].from, None);
        assert_eq!(ranges[3].to, None);
        for key in [i64::MIN, 0, 1, 250, 251, 500, 999, 1000, 5000, i64::MAX] {
            assert_eq!(ranges.iter().filter(|r| r.contains(key)).count(), 1, "key {key}");
        }
        for pair in ranges.windows(2) {
            assert_eq!(pair[0].to, pair[1].from);
        }
        // Fewer keys than chunks, and a table of one page: one open range.
        assert_eq!(t.key_ranges("id", 5, 6, 1).len(), 2);
        assert_eq!(
            table(1).key_ranges("id", i64::MIN, i64::MAX, 10),
            vec![KeyRange { column: "id".into(), from: None, to: None }]
        );
        assert_eq!(t.integer_key(), Some("id"));
    }

    #[test]
    fn copy_of_a_key_range_prints_integer_bounds_and_quotes_names() {
        let t = table(100);
        let range = |from, to| KeyRange { column: "id".into(), from, to };
        assert_eq!(
            t.copy_sql(Some(&range(Some(-5), Some(10)))),
            "COPY (SELECT \"id\"::text, \"Note\"::text FROM ONLY \"public\".\"Order \"\"Items\"\"\" WHERE \"id\" >= -5 AND \"id\" < 10) TO STDOUT"
        );
        assert!(t.copy_sql(Some(&range(None, Some(10)))).ends_with("WHERE \"id\" < 10) TO STDOUT"));
        assert!(t.copy_sql(Some(&range(None, None))).ends_with("\"\"Items\"\"\") TO STDOUT"));
    }

    #[test]
    fn chunk_bases_order_by_attempt_then_sequence() {
        assert!(chunk_base(1, MAX_CHUNKS) + CHUNK_ROWS - 1 < chunk_base(2, 0));
        assert!(chunk_base(1, 3) + CHUNK_ROWS == chunk_base(1, 4));
        assert!(chunk_base(MAX_ATTEMPTS, MAX_CHUNKS) + CHUNK_ROWS - 1 < u64::MAX);
    }

    #[test]
    fn select_quotes_identifiers() {
        assert_eq!(
            table(25).select_sql(),
            "SELECT \"id\"::text, \"Note\"::text FROM ONLY \"public\".\"Order \"\"Items\"\"\""
        );
    }
}
