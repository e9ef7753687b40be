//! `pgm-transform check`: the rules against DB1's and DB2's catalogs, as findings with fixes.

use pgm_common::change::TableRef;
pub use pgm_common::findings::{Finding, Level};

use crate::catalog::Catalog;
use crate::rewrite::Program;
use crate::rules::{RulesFile, Unmatched};

fn parse(name: &str) -> Option<TableRef> {
    let (schema, table) = name.split_once('.')?;
    Some(TableRef::new(schema, table))
}

/// Checks `rules` for the tables `carried` (the pipeline's tables.include; empty = every DB1 table).
pub fn run(rules: &RulesFile, carried: &[TableRef], source: &Catalog, target: &Catalog) -> Vec<Finding> {
    let mut findings = Vec::new();
    let mut push = |level, rule: &str, detail: String, fix: Option<String>| {
        findings.push(Finding::new(level, rule, detail, fix));
    };
    match Program::compile(rules, source) {
        Ok(_) => push(Level::Ok, "rules", "compile against DB1".into(), None),
        Err(e) => push(Level::Fail, "rules", e.to_string(), Some("correct the rule named above".into())),
    }

    for table_rule in &rules.tables {
        let Some(source_table) = parse(&table_rule.source) else { continue };
        let Some(source_info) = source.tables.get(&source_table) else { continue }; // reported by compile
        for target_rule in &table_rule.targets {
            let name = format!("{} → {}", table_rule.source, target_rule.table);
            let Some(target_table) = parse(&target_rule.table) else { continue };
            let Some(target_info) = target.tables.get(&target_table) else {
                push(
                    Level::Fail,
                    &name,
                    format!("target table {target_table} does not exist in DB2"),
                    Some("create it on DB2 (migrate step) or fix `table`".into()),
                );
                continue;
            };
            let produced = target_rule.produced(source_info.columns.iter().map(|c| c.name.as_str()));
            let mut problems = 0;
            for (column, from) in &produced {
                let Some(target_column) = target_info.column(column) else {
                    problems += 1;
                    push(
                        Level::Fail,
                        &name,
                        format!("writes column {column:?}, which {target_table} does not have"),
                        Some("add it on DB2, rename it in [table.target.columns], or add it to drop".into()),
                    );
                    continue;
                };
                if let Some(source_column) = from.as_deref().and_then(|f| source_info.column(f)) {
                    if base_type(&source_column.type_name) != base_type(&target_column.type_name) {
                        push(
                            Level::Warn,
                            &name,
                            format!(
                                "copies {} ({}) into {column} ({}): PostgreSQL must cast the text",
                                source_column.name, source_column.type_name, target_column.type_name
                            ),
                            Some("check that every value converts, or use a convert/expr spec".into()),
                        );
                    }
                }
            }
            for column in &target_info.columns {
                if column.not_null && !column.has_default && !produced.iter().any(|(p, _)| p == &column.name) {
                    problems += 1;
                    push(
                        Level::Fail,
                        &name,
                        format!("NOT NULL column {} of {target_table} has no default and is not fed", column.name),
                        Some(format!("map it in [table.target.columns] (e.g. {} = {{ const = \"…\" }}) or give it a default on DB2", column.name)),
                    );
                }
            }
            let key: Vec<String> = target_rule.key.clone().unwrap_or_else(|| {
                source_info
                    .key
                    .iter()
                    .map(|k| {
                        produced
                            .iter()
                            .find(|(_, from)| from.as_deref() == Some(k.as_str()))
                            .map_or(k.clone(), |(t, _)| t.clone())
                    })
                    .collect()
            });
            for k in &key {
                if target_info.column(k).is_none() {
                    problems += 1;
                    push(
                        Level::Fail,
                        &name,
                        format!("key column {k:?} does not exist in {target_table}"),
                        Some("set key = [...] to the target's key columns".into()),
                    );
                }
            }
            if !target_info.key.is_empty() && {
                let mut a = key.clone();
                let mut b = target_info.key.clone();
                a.sort();
                b.sort();
                a != b
            } {
                push(
                    Level::Warn,
                    &name,
                    format!("rule key {key:?} differs from {target_table}'s primary key {:?}", target_info.key),
                    Some(
                        "updates and deletes find rows by the rule key; make it the primary key or a unique key".into(),
                    ),
                );
            }
            if let Some(filter) = &target_rule.filter {
                // The same reading of the expression as compile and run use (a filter that does not compile is
                // reported by the compile finding above).
                let columns: Vec<(String, u32)> =
                    source_info.columns.iter().map(|c| (c.name.clone(), c.type_oid)).collect();
                let inputs = crate::expr::compile(&crate::expr::engine(), filter, &columns)
                    .map(|e| e.inputs)
                    .unwrap_or_default();
                let reads_non_key = inputs.iter().any(|c| !source_info.key.contains(c));
                if reads_non_key && !source_info.replica_full {
                    problems += 1;
                    push(
                        Level::Fail,
                        &name,
                        "the filter reads non-key columns, but updates and deletes carry only the key".into(),
                        Some(format!("ALTER TABLE {source_table} REPLICA IDENTITY FULL; on DB1")),
                    );
                }
            }
            if problems == 0 {
                push(Level::Ok, &name, format!("{} columns, key {key:?}", produced.len()), None);
            }
        }
    }

    if rules.unmatched == Unmatched::Pass {
        let ruled: Vec<TableRef> = rules.tables.iter().filter_map(|t| parse(&t.source)).collect();
        let carried: Vec<TableRef> =
            if carried.is_empty() { source.tables.keys().cloned().collect() } else { carried.to_vec() };
        for table in carried.iter().filter(|t| !ruled.contains(t)) {
            let name = format!("{table} (unchanged)");
            match (source.tables.get(table), target.tables.get(table)) {
                (_, None) => push(
                    Level::Fail,
                    &name,
                    format!("has no rule and {table} does not exist in DB2"),
                    Some("add a [[table]] rule, or create the table on DB2".into()),
                ),
                (Some(s), Some(t)) => {
                    let missing: Vec<&str> =
                        s.columns.iter().filter(|c| t.column(&c.name).is_none()).map(|c| c.name.as_str()).collect();
                    if missing.is_empty() {
                        push(Level::Ok, &name, "passes unchanged".into(), None);
                    } else {
                        push(
                            Level::Fail,
                            &name,
                            format!("DB2 lacks columns {missing:?}"),
                            Some("add a rule that drops or renames them".into()),
                        );
                    }
                }
                (None, Some(_)) => {
                    push(Level::Fail, &name, "does not exist in DB1".into(), Some("fix tables.include".into()))
                }
            }
        }
    }
    findings
}

/// `numeric(12,2)` → `numeric`: modifiers do not change how text converts.
fn base_type(type_name: &str) -> &str {
    type_name.split('(').next().unwrap_or(type_name).trim()
}
