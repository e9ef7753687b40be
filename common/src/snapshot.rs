//! Reading whole source tables as the change model's rows: the snapshot bootstrap copies them into the raw topics and
//! `pgm-transform verify` passes them through the rules. Values are fetched as PostgreSQL's text output (`col::text`),
//! exactly what wal2json sends for the same datum, so a copied row and a streamed row are indistinguishable.

use tokio_postgres::{Client, Row as PgRow};

use crate::change::{quote_ident, Column, Datum, Row, TableRef};

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

    /// `SELECT "a"::text, … FROM ONLY "s"."t"`, restricted to heap pages `[from, to)` when given (a TID range scan).
    pub fn select_sql(&self, pages: Option<PageRange>) -> String {
        let list: Vec<String> = self.columns.iter().map(|c| format!("{}::text", quote_ident(&c.name))).collect();
        let mut sql = format!("SELECT {} FROM ONLY {}", list.join(", "), self.table.quoted());
        if let Some(range) = pages {
            sql.push_str(&format!(" WHERE ctid >= '({},0)'::tid", range.from));
            if let Some(to) = range.to {
                sql.push_str(&format!(" AND ctid < '({to},0)'::tid"));
            }
        }
        sql
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

    /// Splits the heap into page ranges of about `pages_per_chunk` pages; the last range is open-ended so rows on
    /// pages added after the estimate are still read.
    pub fn chunks(&self, pages_per_chunk: u32) -> Vec<PageRange> {
        let per = pages_per_chunk.max(1);
        let mut out = Vec::new();
        let mut from = 0u32;
        while from.saturating_add(per) < self.pages {
            out.push(PageRange { from, to: Some(from + per) });
            from += per;
        }
        out.push(PageRange { from, to: None });
        out
    }
}

/// Heap pages `[from, to)`; `to = None` means to the end of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageRange {
    pub from: u32,
    pub to: Option<u32>,
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
    fn chunks_cover_every_page_and_end_open() {
        assert_eq!(table(0).chunks(10), vec![PageRange { from: 0, to: None }]);
        assert_eq!(table(10).chunks(10), vec![PageRange { from: 0, to: None }]);
        assert_eq!(
            table(25).chunks(10),
            vec![
                PageRange { from: 0, to: Some(10) },
                PageRange { from: 10, to: Some(20) },
                PageRange { from: 20, to: None }
            ]
        );
    }

    #[test]
    fn select_quotes_identifiers_and_bounds_by_tid() {
        let t = table(25);
        assert_eq!(
            t.select_sql(None),
            "SELECT \"id\"::text, \"Note\"::text FROM ONLY \"public\".\"Order \"\"Items\"\"\""
        );
        assert!(t
            .select_sql(Some(PageRange { from: 10, to: Some(20) }))
            .ends_with("WHERE ctid >= '(10,0)'::tid AND ctid < '(20,0)'::tid"));
    }
}
