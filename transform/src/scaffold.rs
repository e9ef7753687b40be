//! `pgm-transform scaffold`: a draft rules file from DB1's and DB2's catalogs, after the user migrated DB2.
//! Identity where names and types match; a `TODO` comment (and, where a value is needed, an expression that fails
//! `check` until it is written) for every difference.

use std::fmt::Write;

use pgm_common::change::TableRef;

use crate::catalog::{Catalog, TableInfo};
use crate::rules::{ColumnSpec, Conversion, RulesFile, Unmatched};

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

/// `scaffold --reverse`: the fall-back rules (DB2 → DB1) drafted from the forward rules, for the DB1 tables the
/// migration carries. Where the inverse is mechanical (a copy or rename, `cents_to_numeric`, `text`, a column kept
/// under its own name) it is written; where it is not (a column DB2 computes, a column other conversions feed, a
/// filter, a table split into several) a `TODO` is left that `check` refuses until it is written. Never a guess.
pub fn draft_reverse(forward: &RulesFile, tables: &[TableRef], db1: &Catalog, db2: &Catalog) -> String {
    let mut out = String::from(
        "# Draft fall-back rules (DB2 → DB1) from pgm-transform scaffold --reverse. Resolve every TODO, then run\n\
         # pgm-transform --reverse check.\n",
    );
    let mut sources: Vec<String> = Vec::new();
    let mut body = String::new();
    for table in tables {
        let rule = forward
            .tables
            .iter()
            .find(|r| r.source.split_once('.').is_some_and(|(s, t)| s == table.schema && t == table.table));
        let Some(rule) = rule else {
            if forward.unmatched == Unmatched::Pass {
                sources.push(format!("{}.{}", table.schema, table.table));
            }
            continue;
        };
        let Some(db1_info) = db1.tables.get(table) else {
            let _ = writeln!(body, "\n# TODO: {table} is not in DB1");
            continue;
        };
        if rule.targets.len() != 1 {
            let names: Vec<&str> = rule.targets.iter().map(|t| t.table.as_str()).collect();
            let _ = writeln!(
                body,
                "\n# TODO: {table} is split into {} on DB2: write how a DB1 row is made back from the parts",
                names.join(", ")
            );
            continue;
        }
        let target = &rule.targets[0];
        let Some((schema, name)) = target.table.split_once('.') else { continue };
        let db2_table = TableRef::new(schema, name);
        let Some(db2_info) = db2.tables.get(&db2_table) else {
            let _ = writeln!(body, "\n# TODO: {db2_table} (the target of {table}) is not in DB2");
            continue;
        };
        sources.push(target.table.clone());
        let _ = writeln!(
            body,
            "\n[[table]]\nsource = {}\n\n[[table.target]]\ntable = {}\nkeep_unlisted = false",
            toml_string(&target.table),
            toml_string(&format!("{}.{}", table.schema, table.table))
        );
        if let Some(filter) = &target.filter {
            let _ = writeln!(
                body,
                "# TODO: the forward rule keeps only rows where {filter:?}: DB2 holds no others. Say which rows of \
                 {db2_table} go back (a filter over DB2's columns), or delete this line if all do\nfilter = \"TODO\""
            );
        }
        let _ = writeln!(body, "[table.target.columns]");
        let hidden = target.hidden();
        for column in &db1_info.columns {
            let c = column.name.as_str();
            let copied_to = target.columns.iter().find_map(|(to, spec)| match spec {
                ColumnSpec::Copy(from) if from == c => Some(to.clone()),
                _ => None,
            });
            let kept = target.keep_unlisted && !hidden.contains(c) && !target.columns.contains_key(c);
            let converted = target.columns.iter().find_map(|(to, spec)| match spec {
                ColumnSpec::Convert { from, convert, .. } if from == c => Some((to.clone(), *convert)),
                _ => None,
            });
            let computed: Vec<&str> = target
                .columns
                .iter()
                .filter_map(|(to, spec)| match spec {
                    ColumnSpec::Expr { expr, .. } if mentions(expr, c) => Some(to.as_str()),
                    _ => None,
                })
                .collect();
            match (copied_to, kept, converted) {
                (Some(to), _, _) => {
                    let _ = writeln!(body, "{} = {}", key_name(c), toml_string(&to));
                }
                (None, true, _) if db2_info.column(c).is_some() => {
                    let _ = writeln!(body, "{} = {}", key_name(c), toml_string(c));
                }
                (None, _, Some((to, Conversion::CentsToNumeric))) => {
                    let _ = writeln!(
                        body,
                        "{} = {{ from = {}, convert = \"numeric_to_cents\" }}",
                        key_name(c),
                        toml_string(&to)
                    );
                }
                (None, _, Some((to, Conversion::Text))) => {
                    let _ = writeln!(
                        body,
                        "# {c}: its text on DB2 (convert = \"text\"); copied back, DB1 reads it as {}\n{} = {}",
                        column.type_name,
                        key_name(c),
                        toml_string(&to)
                    );
                }
                (None, _, Some((to, conversion))) => {
                    let _ = writeln!(
                        body,
                        "# TODO: {c} ({}) becomes {to} on DB2 through {conversion:?}, which has no exact inverse here: \
                         write the expression that gives it back\n{} = {{ expr = \"TODO\" }}",
                        column.type_name,
                        key_name(c)
                    );
                }
                (None, _, None) if !computed.is_empty() => {
                    let _ = writeln!(
                        body,
                        "# TODO: {c} ({}{}) is computed into {} on DB2: write the expression that gives it back from \
                         {db2_table}'s columns\n{} = {{ expr = \"TODO\" }}",
                        column.type_name,
                        if column.not_null { ", NOT NULL" } else { "" },
                        computed.join(", "),
                        key_name(c)
                    );
                }
                (None, _, None) if column.not_null && !column.has_default => {
                    let _ = writeln!(
                        body,
                        "# TODO: {c} ({}, NOT NULL) is not on DB2: write the value rows inserted on DB2 get on DB1\n{} \
                         = {{ expr = \"TODO\" }}",
                        column.type_name,
                        key_name(c)
                    );
                }
                (None, _, None) => {
                    let _ = writeln!(
                        body,
                        "# {c} ({}) is not on DB2: rows inserted on DB2 get {} on DB1, updated rows keep theirs",
                        column.type_name,
                        if column.has_default { "its default" } else { "NULL" }
                    );
                }
            }
        }
    }
    let _ = writeln!(
        out,
        "# The [fallback] section of the pipeline's configuration carries these DB2 tables:\n# tables = [{}]",
        sources.iter().map(|s| toml_string(s)).collect::<Vec<_>>().join(", ")
    );
    out.push_str(if forward.unmatched == Unmatched::Pass {
        "unmatched = \"pass\"\n"
    } else {
        "unmatched = \"drop\"\n"
    });
    out.push_str(&body);
    out
}

/// Whether an expression names `column` as an identifier (not as part of a longer name).
fn mentions(expr: &str, column: &str) -> bool {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    expr.match_indices(column).any(|(at, _)| {
        let before = expr[..at].chars().next_back();
        let after = expr[at + column.len()..].chars().next();
        !before.is_some_and(is_ident) && !after.is_some_and(is_ident)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{ColumnInfo, TableInfo};

    fn col(name: &str, type_name: &str, not_null: bool, has_default: bool) -> ColumnInfo {
        ColumnInfo { name: name.into(), type_name: type_name.into(), type_oid: 0, not_null, has_default }
    }

    fn table(columns: Vec<ColumnInfo>) -> TableInfo {
        TableInfo { columns, key: vec!["id".into()], replica_full: false }
    }

    #[test]
    fn the_reverse_of_the_demo_rules_inverts_what_is_mechanical_and_leaves_todos_for_the_rest() {
        let forward = RulesFile::from_toml_str(include_str!("../../compose/shop.rules.toml")).unwrap();
        let mut db1 = Catalog::default();
        db1.tables.insert(
            TableRef::new("public", "customers"),
            table(vec![
                col("id", "bigint", true, true),
                col("full_name", "text", true, false),
                col("email", "text", true, false),
                col("legacy_flags", "text", false, false),
            ]),
        );
        db1.tables.insert(
            TableRef::new("public", "orders"),
            table(vec![
                col("id", "bigint", true, true),
                col("customer_id", "bigint", true, false),
                col("amount_cents", "bigint", true, false),
                col("created_at", "timestamp with time zone", true, true),
            ]),
        );
        let mut db2 = Catalog::default();
        db2.tables.insert(
            TableRef::new("public", "clients"),
            table(vec![
                col("id", "bigint", true, true),
                col("first_name", "text", true, false),
                col("last_name", "text", true, false),
                col("email", "text", true, false),
            ]),
        );
        db2.tables.insert(
            TableRef::new("public", "orders"),
            table(vec![
                col("id", "bigint", true, true),
                col("customer_id", "bigint", true, false),
                col("amount", "numeric(14,2)", true, false),
                col("created_at", "timestamp with time zone", true, true),
            ]),
        );
        let tables = [
            TableRef::new("public", "customers"),
            TableRef::new("public", "orders"),
            TableRef::new("public", "order_items"),
        ];
        let draft = draft_reverse(&forward, &tables, &db1, &db2);
        let parsed = RulesFile::from_toml_str(&draft).unwrap();
        assert_eq!(parsed.tables.len(), 2, "{draft}");
        let clients = &parsed.tables[0];
        assert_eq!(
            (clients.source.as_str(), clients.targets[0].table.as_str()),
            ("public.clients", "public.customers")
        );
        let columns = &clients.targets[0].columns;
        assert_eq!(columns["id"], ColumnSpec::Copy("id".into()));
        assert_eq!(columns["email"], ColumnSpec::Copy("email".into()));
        assert!(matches!(&columns["full_name"], ColumnSpec::Expr { expr, .. } if expr == "TODO"), "{draft}");
        assert!(!columns.contains_key("legacy_flags"), "{draft}");
        assert!(draft.contains("# TODO: full_name (text, NOT NULL) is computed into first_name, last_name"), "{draft}");
        let orders = &parsed.tables[1].targets[0];
        assert_eq!(
            orders.columns["amount_cents"],
            ColumnSpec::Convert { from: "amount".into(), convert: Conversion::NumericToCents, path: None }
        );
        assert_eq!(orders.columns["created_at"], ColumnSpec::Copy("created_at".into()));
        assert!(draft.contains("tables = [\"public.clients\", \"public.orders\", \"public.order_items\"]"), "{draft}");
        assert!(!mentions("full_names + x", "full_name") && mentions("a.sub(full_name)", "full_name"));
    }
}
