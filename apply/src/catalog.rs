//! DB2's catalog as apply needs it: every target column's type, so each bound text value is converted by
//! PostgreSQL's own input function for exactly that type (numeric keeps all digits, timestamptz its zone, arrays and
//! bytea their text forms). Loaded per table on first use and dropped whenever DB2 may have changed (resume, error).
//!
//! The cast names the type without a length, as `format_type(atttypid, -1)` spells it: `bpchar`, `"bit"`,
//! `character varying`, `numeric`, `bpchar[]`. The column's own modifier is then applied by the assignment, exactly
//! as for a literal in an INSERT: `char(5)` pads, and a value too long for DB2's column is an error. Two other spellings
//! would change values: the bare SQL name (`character`, `bit` — which SQL reads as `char(1)` and `bit(1)`, so
//! `'abcde'::character` is `'a'`), and the full type (`character varying(3)`, whose explicit cast truncates silently).

use std::collections::HashMap;

use pgm_common::change::TableRef;
use tokio_postgres::Client;

use crate::ApplyError;

#[derive(Debug)]
pub struct TargetTable {
    /// Column name → type as `format_type(atttypid, -1)` names it (`numeric`, `bpchar`, `"bit"`,
    /// `timestamp with time zone`, `integer[]`, `"My Schema"."My Type"`): no modifier, and no spelling that SQL
    /// reads with an implied one. The column's own modifier applies on assignment.
    types: HashMap<String, String>,
    /// Column name → the full type with its modifier (`character(5)`, `numeric(12,4)`): what a keyless table's old
    /// row is compared in (see [`TargetTable::full_type_of`]).
    full_types: HashMap<String, String>,
    /// Generated columns cannot be written.
    generated: Vec<String>,
}

impl TargetTable {
    /// The full type of a column, modifier included. A keyless table's rows are matched by comparing
    /// `column::text` with `(old value::full type)::text`: the text output is defined for every type (json, xml,
    /// point and polygon have no `=`), tells apart what `=` does not (`box` compares areas, `-0 = 0`), and the
    /// modifier canonicalises the old value as the stored one was (`1.50` in `numeric(12,4)` prints `1.5000`).
    pub fn full_type_of(&self, table: &TableRef, column: &str) -> Result<&str, ApplyError> {
        self.type_of(table, column)?;
        Ok(self.full_types.get(column).map(String::as_str).expect("loaded with the types"))
    }

    pub fn type_of(&self, table: &TableRef, column: &str) -> Result<&str, ApplyError> {
        if self.generated.iter().any(|g| g == column) {
            return Err(ApplyError::Target(format!(
                "column {column:?} of {table} in DB2 is a generated column and cannot be written: drop it from the rules"
            )));
        }
        self.types.get(column).map(String::as_str).ok_or_else(|| {
            ApplyError::Target(format!(
                "column {column:?} of {table} does not exist in DB2, but the rules write it: add the column to DB2 \
                 (then restart pgm-apply) or change the rules"
            ))
        })
    }
}

#[derive(Debug, Default)]
pub struct TargetCatalog {
    tables: HashMap<TableRef, TargetTable>,
}

impl TargetCatalog {
    pub fn clear(&mut self) {
        self.tables.clear();
    }

    pub async fn table(&mut self, client: &Client, table: &TableRef) -> Result<&TargetTable, ApplyError> {
        if !self.tables.contains_key(table) {
            let loaded = load(client, table).await?;
            self.tables.insert(table.clone(), loaded);
        }
        Ok(&self.tables[table])
    }
}

async fn load(client: &Client, table: &TableRef) -> Result<TargetTable, ApplyError> {
    let rows = client
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, -1), a.attgenerated <> '', \
             format_type(a.atttypid, a.atttypmod) \
             FROM pg_catalog.pg_attribute a \
             JOIN pg_catalog.pg_class c ON c.oid = a.attrelid \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p') AND a.attnum > 0 AND NOT a.attisdropped",
            &[&table.schema, &table.table],
        )
        .await
        .map_err(ApplyError::db)?;
    if rows.is_empty() {
        return Err(ApplyError::Target(format!(
            "table {table} does not exist in DB2, but the rules write to it: create it in DB2 (then restart \
             pgm-apply) or change the rules"
        )));
    }
    let mut types = HashMap::new();
    let mut generated = Vec::new();
    let mut full_types = HashMap::new();
    for row in rows {
        let name: String = row.get(0);
        if row.get::<_, bool>(2) {
            generated.push(name.clone());
        }
        full_types.insert(name.clone(), row.get(3));
        types.insert(name, row.get(1));
    }
    Ok(TargetTable { types, full_types, generated })
}
