//! `pgm-transform scaffold`: a draft rules file from DB1's and DB2's catalogs, after the user migrated DB2.
//! Identity where names and types match; a `TODO` comment (and, where a value is needed, an expression that fails
//! `check` until it is written) for every difference.

use std::fmt::Write;

use pgm_common::change::TableRef;

use crate::catalog::{Catalog, TableInfo};

fn toml_string(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

fn key_name(name: &str) -> String {
    if name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        name.to_owned()
    } else {
        toml_string(name)
    }
}

/// The draft for `tables` (empty = every DB1 table).
pub fn draft(tables: &[TableRef], source: &Catalog, target: &Catalog) -> String {
    let tables: Vec<TableRef> =
        if tables.is_empty() { source.tables.keys().cloned().collect() } else { tables.to_vec() };
    let unclaimed: Vec<&TableRef> = target.tables.keys().filter(|t| !source.tables.contains_key(t)).collect();
    let mut out = String::from("# Draft rules from pgm-transform scaffold. Resolve every TODO, then run pgm-transform check.\nunmatched = \"pass\"\n");
    for table in tables {
        let Some(source_info) = source.tables.get(&table) else {
            let _ = writeln!(out, "\n# TODO: {table} is not in DB1");
            continue;
        };
        let _ = writeln!(
            out,
            "\n[[table]]\nsource = {}\n\n[[table.target]]",
            toml_string(&format!("{}.{}", table.schema, table.table))
        );
        let (target_table, target_info) = match target.tables.get(&table) {
            Some(info) => (table.clone(), info),
            None => match best_match(source_info, &unclaimed, target) {
                Some(guess) => {
                    let _ =
                        writeln!(out, "# DB2 has no table {table}: {guess} shares the most columns with it (confirm)");
                    (guess.clone(), &target.tables[guess])
                }
                None => {
                    let _ =
                        writeln!(out, "# TODO: DB2 has no table {table} and no table resembles it: name the target");
                    let _ = writeln!(out, "table = \"TODO\"");
                    continue;
                }
            },
        };
        let _ = writeln!(out, "table = {}", toml_string(&format!("{}.{}", target_table.schema, target_table.table)));
        let dropped: Vec<String> = source_info
            .columns
            .iter()
            .filter(|c| target_info.column(&c.name).is_none())
            .map(|c| toml_string(&c.name))
            .collect();
        if !dropped.is_empty() {
            let _ = writeln!(
                out,
                "# TODO: these DB1 columns are not in DB2: confirm they are dropped, or map them below\ndrop = [{}]",
                dropped.join(", ")
            );
        }
        let _ = writeln!(out, "[table.target.columns]");
        for column in &target_info.columns {
            match source_info.column(&column.name) {
                Some(s) if s.type_name == column.type_name => {}
                Some(s) => {
                    let _ = writeln!(
                        out,
                        "# TODO: {} is {} in DB1 and {} in DB2: keep the copy if every value casts, else convert (int, cents_to_numeric, epoch_to_timestamptz, json_field) or expr\n{} = {}",
                        column.name, s.type_name, column.type_name, key_name(&column.name), toml_string(&column.name)
                    );
                }
                None if column.has_default && !column.not_null => {
                    let _ = writeln!(
                        out,
                        "# {} ({}) is new in DB2 and has a default: left to it",
                        column.name, column.type_name
                    );
                }
                None if column.has_default => {
                    let _ = writeln!(
                        out,
                        "# {} ({}, NOT NULL) is new in DB2 and has a default: left to it",
                        column.name, column.type_name
                    );
                }
                None => {
                    let _ = writeln!(
                        out,
                        "# TODO: {} ({}{}) is new in DB2: write the expression that computes it from DB1's columns\n{} = {{ expr = \"TODO\" }}",
                        column.name,
                        column.type_name,
                        if column.not_null { ", NOT NULL" } else { "" },
                        key_name(&column.name)
                    );
                }
            }
        }
    }
    out
}

/// The DB2 table without a DB1 twin that shares the most column names with `source` (at least half of them).
fn best_match<'a>(source: &TableInfo, unclaimed: &[&'a TableRef], target: &Catalog) -> Option<&'a TableRef> {
    let shared = |t: &TableRef| source.columns.iter().filter(|c| target.tables[t].column(&c.name).is_some()).count();
    let best = unclaimed.iter().max_by_key(|t| shared(t))?;
    (shared(best) * 2 >= source.columns.len().min(target.tables[*best].columns.len()) && shared(best) > 0)
        .then_some(*best)
}
