//! What the rules are checked and compiled against: the tables of DB1 (sources) and DB2 (targets), read from the
//! PostgreSQL catalogs.

use std::collections::BTreeMap;

use pgm_common::change::TableRef;
use pgm_common::config::PgConfig;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ColumnInfo {
    pub name: String,
    /// As `format_type` prints it: `numeric(12,2)`, `character varying(20)`.
    pub type_name: String,
    pub type_oid: u32,
    pub not_null: bool,
    /// A default, identity or generated value: the column need not be fed.
    pub has_default: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TableInfo {
    pub columns: Vec<ColumnInfo>,
    /// Primary-key columns in key order.
    pub key: Vec<String>,
    /// REPLICA IDENTITY FULL: updates and deletes carry the whole old row.
    pub replica_full: bool,
}

impl TableInfo {
    pub fn column(&self, name: &str) -> Option<&ColumnInfo> {
        self.columns.iter().find(|c| c.name == name)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Catalog {
    pub tables: BTreeMap<TableRef, TableInfo>,
}

const QUERY: &str = "
SELECT n.nspname::text, c.relname::text, a.attname::text, format_type(a.atttypid, a.atttypmod),
       a.atttypid::oid, a.attnotnull,
       a.atthasdef OR a.attidentity <> '' OR a.attgenerated <> '',
       c.relreplident = 'f',
       array_position(pk.indkey::int2[], a.attnum)
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
LEFT JOIN pg_index pk ON pk.indrelid = c.oid AND pk.indisprimary
WHERE c.relkind IN ('r', 'p')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pgm') AND n.nspname NOT LIKE 'pg\\_%'
ORDER BY 1, 2, a.attnum";

impl Catalog {
    /// Reads every user table of the database.
    pub async fn load(pg: &PgConfig) -> Result<Self, pgm_common::config::ConnectError> {
        let client = pg.connect("pgm-transform").await?;
        let rows = client.query(QUERY, &[]).await?;
        drop(client);
        let mut catalog = Catalog::default();
        let mut keys: BTreeMap<TableRef, Vec<(i32, String)>> = BTreeMap::new();
        for row in rows {
            let table = TableRef::new(row.get::<_, String>(0), row.get::<_, String>(1));
            let name: String = row.get(2);
            if let Some(position) = row.get::<_, Option<i32>>(8) {
                keys.entry(table.clone()).or_default().push((position, name.clone()));
            }
            let info = catalog.tables.entry(table).or_default();
            info.replica_full = row.get(7);
            info.columns.push(ColumnInfo {
                name,
                type_name: row.get(3),
                type_oid: row.get(4),
                not_null: row.get(5),
                has_default: row.get(6),
            });
        }
        for (table, mut key) in keys {
            key.sort();
            if let Some(info) = catalog.tables.get_mut(&table) {
                info.key = key.into_iter().map(|(_, name)| name).collect();
            }
        }
        Ok(catalog)
    }
}
