//! Tables whose updates and deletes cannot be decoded: no primary key and no usable replica identity. wal2json skips
//! such a change with only a server WARNING, and pgoutput makes DB1 refuse the application's UPDATE once the table
//! is published, so capture refuses to start on them (run, bootstrap, slot create) and the publication is never
//! created for them.

use crate::change::TableRef;
/// `(table, what is missing)` for every replicated table that has no usable replica identity. With no
/// `tables.include`, every user table is replicated.
const WITHOUT_IDENTITY: &str = "
SELECT n.nspname::text, c.relname::text, c.relreplident::text
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p')
  AND CASE WHEN cardinality($1::text[]) = 0
           THEN n.nspname NOT IN ('pg_catalog', 'information_schema', 'pgm') AND n.nspname NOT LIKE 'pg\\_%'
           ELSE (n.nspname, c.relname) IN (SELECT * FROM unnest($1::text[], $2::text[]))
      END
  AND NOT CASE c.relreplident
          WHEN 'f' THEN true
          WHEN 'd' THEN EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary)
          WHEN 'i' THEN EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisreplident)
          ELSE false
      END
ORDER BY 1, 2";

/// The tables of `tables` (every user table when empty) without a usable replica identity, each with why.
pub async fn tables_without_identity(
    client: &tokio_postgres::Client,
    tables: &[TableRef],
) -> Result<Vec<(TableRef, &'static str)>, tokio_postgres::Error> {
    let schemas: Vec<&str> = tables.iter().map(|t| t.schema.as_str()).collect();
    let names: Vec<&str> = tables.iter().map(|t| t.table.as_str()).collect();
    let rows = client.query(WITHOUT_IDENTITY, &[&schemas, &names]).await?;
    Ok(rows
        .into_iter()
        .map(|row| {
            let why = match row.get::<_, String>(2).as_str() {
                "n" => "REPLICA IDENTITY NOTHING",
                "i" => "its REPLICA IDENTITY index is gone",
                _ => "no primary key and REPLICA IDENTITY DEFAULT",
            };
            (TableRef::new(row.get::<_, String>(0), row.get::<_, String>(1)), why)
        })
        .collect())
}

/// The fix for a table without identity, as SQL the operator can run on DB1.
pub fn fix(table: &TableRef) -> String {
    format!(
        "ALTER TABLE {table} REPLICA IDENTITY FULL; (or add a primary key: ALTER TABLE {table} ADD PRIMARY KEY (…);)"
    )
}

/// The refusal for tables without identity (`None` when there are none): names each table, why, and the fix.
pub fn refusal(missing: &[(TableRef, &str)]) -> Option<String> {
    if missing.is_empty() {
        return None;
    }
    let list: Vec<String> = missing.iter().map(|(t, why)| format!("{t} ({why}): {}", fix(t))).collect();
    Some(format!(
        "the updates and deletes of {} table(s) cannot be captured and would be lost: {}; or drop the table from \
         tables.include",
        missing.len(),
        list.join("; ")
    ))
}
