//! Rules compiled against the catalogs, applied to one raw record at a time: deterministic, stateless, 1 in → 1 out.
//!
//! ```text
//!   RawRecord (op, new, old) ──▶ per target of its table:
//!       filter (old side, new side) ─▶ insert / update / delete / nothing   (as publication row filters do)
//!       columns: copy · convert · expr · const · unlisted pass-through      (absent stays absent)
//!       key: the target key computed from the old identity
//!   ──▶ OutRecord { same pos, ops: [TargetOp …] }
//! ```

use std::collections::{HashMap, HashSet};

use pgm_common::change::{Cell, Column, Datum, Row, TableRef};
use pgm_common::copytext;
use pgm_common::envelope::{CopyBatch, CopyColumn, Op, OutRecord, RawRecord, TargetOp, ENVELOPE_VERSION};
use pgm_common::Position;
use rhai::{Dynamic, Engine, Scope};

use crate::catalog::Catalog;
use crate::convert::{self, result_type};
use crate::expr::{self, Expr};
use crate::rules::{ColumnSpec, Conversion, RulesError, RulesFile, TargetRule, Unmatched};

/// A record the rules cannot transform. Names the rule, table, position and column — never the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("rule {} failed on the record at {} of {}{}: {}", .0.rule, .0.pos, .0.table, .0.column.as_ref().map(|c| format!(", column {c}")).unwrap_or_default(), .0.problem)]
pub struct RewriteError(Box<RewriteFailure>);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RewriteFailure {
    pub rule: String,
    pub table: TableRef,
    pub pos: Position,
    pub column: Option<String>,
    pub problem: String,
}

impl RewriteError {
    pub fn failure(&self) -> &RewriteFailure {
        &self.0
    }
}

#[derive(Clone, Debug)]
enum Spec {
    Copy { from: String },
    Convert { from: String, conversion: Conversion, path: Option<String> },
    Expr { expr: Expr, type_name: Option<String> },
    Const(Option<String>),
}

#[derive(Clone, Debug)]
struct Target {
    rule: String,
    table: TableRef,
    key: Vec<String>,
    columns: Vec<(String, Spec)>,
    keep_unlisted: bool,
    /// Source columns that do not pass through under their own name (dropped or renamed).
    hidden: HashSet<String>,
    filter: Option<Expr>,
}

/// The compiled rules: what every worker runs.
pub struct Program {
    engine: Engine,
    unmatched: Unmatched,
    tables: HashMap<TableRef, Vec<Target>>,
}

/// The out record of a table the rules pass unchanged: one operation on the same table, with the same key and rows.
/// Transform writes it for such tables; with `transform.passthrough` apply makes it from the raw record itself.
pub fn unchanged(raw: RawRecord) -> OutRecord {
    let op =
        TargetOp { op: raw.op, target: raw.source.clone(), key: raw.key, new: raw.new, old: raw.old, copy: raw.copy };
    OutRecord { v: ENVELOPE_VERSION, pos: raw.pos, source: raw.source, ops: vec![op], pass_through: None }
}

fn parse_table(name: &str) -> Option<TableRef> {
    let (schema, table) = name.split_once('.')?;
    (!schema.is_empty() && !table.is_empty()).then(|| TableRef::new(schema, table))
}

impl Program {
    /// Compiles `rules` against DB1's catalog (`source`): every column named must exist, every expression must
    /// compile with the table's columns as its only variables, every target key must be fed.
    pub fn compile(rules: &RulesFile, source: &Catalog) -> Result<Self, RulesError> {
        let engine = expr::engine();
        let mut tables: HashMap<TableRef, Vec<Target>> = HashMap::new();
        for table_rule in &rules.tables {
            let invalid = |target: &str, problem: String| RulesError::Invalid {
                table: table_rule.source.clone(),
                target: target.to_owned(),
                problem,
            };
            let table = parse_table(&table_rule.source)
                .ok_or_else(|| invalid("-", "source must be schema.table, like \"public.orders\"".into()))?;
            let info = source.tables.get(&table).ok_or_else(|| {
                invalid("-", format!("source table {table} does not exist in DB1; fix `source` or remove the rule"))
            })?;
            if table_rule.targets.is_empty() {
                return Err(invalid("-", "has no [[table.target]]".into()));
            }
            let columns: Vec<(String, u32)> = info.columns.iter().map(|c| (c.name.clone(), c.type_oid)).collect();
            let exists = |name: &str| info.column(name).is_some();
            let mut targets = Vec::new();
            for target_rule in &table_rule.targets {
                let target = compile_target(&engine, &table, target_rule, &columns, &info.key, &exists)
                    .map_err(|problem| invalid(&target_rule.table, problem))?;
                targets.push(target);
            }
            if tables.insert(table.clone(), targets).is_some() {
                return Err(invalid("-", "has two [[table]] entries; put all its targets under one".into()));
            }
        }
        Ok(Program { engine, unmatched: rules.unmatched, tables })
    }

    /// Transforms one raw record into its out record (same position).
    pub fn rewrite(&self, raw: &RawRecord) -> Result<OutRecord, RewriteError> {
        let ops = match self.tables.get(&raw.source) {
            None => match self.unmatched {
                Unmatched::Pass => return Ok(unchanged(raw.clone())),
                Unmatched::Drop => Vec::new(),
            },
            Some(targets) if raw.op == Op::Copy => self.rewrite_copy(raw, targets)?,
            Some(targets) => {
                let mut ops = Vec::with_capacity(targets.len());
                for target in targets {
                    let run = Run { engine: &self.engine, target, raw };
                    if let Some(op) = run.op()? {
                        ops.push(op);
                    }
                }
                ops
            }
        };
        Ok(OutRecord { v: ENVELOPE_VERSION, pos: raw.pos, source: raw.source.clone(), ops, pass_through: None })
    }

    /// A batch of copied rows: each row through the rules as a snapshot row, the results batched again per target
    /// table (in COPY's text format, with the target's columns).
    fn rewrite_copy(&self, raw: &RawRecord, targets: &[Target]) -> Result<Vec<TargetOp>, RewriteError> {
        let fail = |problem: String| {
            RewriteError(Box::new(RewriteFailure {
                rule: "-".into(),
                table: raw.source.clone(),
                pos: raw.pos,
                column: None,
                problem,
            }))
        };
        let batch = raw.copy.as_ref().ok_or_else(|| fail("a copy record without its rows".into()))?;
        let rows = copytext::rows(&batch.columns, &batch.text).map_err(|e| fail(e.to_string()))?;
        let mut out: Vec<TargetOp> = Vec::new();
        for row in rows {
            let single = RawRecord {
                v: ENVELOPE_VERSION,
                pos: raw.pos,
                op: Op::Snapshot,
                source: raw.source.clone(),
                xid: None,
                key: raw.key.clone(),
                new: row,
                old: None,
                copy: None,
            };
            for target in targets {
                let run = Run { engine: &self.engine, target, raw: &single };
                let Some(op) = run.op()? else { continue };
                let columns: Vec<CopyColumn> = op
                    .new
                    .0
                    .iter()
                    .map(|c| CopyColumn { name: c.name.clone(), type_name: c.type_name.clone(), type_oid: c.type_oid })
                    .collect();
                // A batch per target and column list: rows of one target keep their order.
                let open = out.iter_mut().rev().find(|o| o.target == op.target);
                let batch = match open {
                    Some(o) if o.copy.as_ref().is_some_and(|b| b.columns == columns) => o.copy.as_mut().expect("copy"),
                    _ => {
                        out.push(TargetOp {
                            op: Op::Copy,
                            target: op.target.clone(),
                            key: op.key.clone(),
                            new: Row::default(),
                            old: None,
                            copy: Some(CopyBatch { columns, rows: 0, text: String::new() }),
                        });
                        out.last_mut().expect("pushed").copy.as_mut().expect("copy")
                    }
                };
                copytext::push_row(&mut batch.text, &op.new);
                batch.rows += 1;
            }
        }
        Ok(out)
    }

    /// Whether `source` reaches DB2 exactly as captured (no rule, unmatched tables pass): the same answer as
    /// [`RulesFile::passes_unchanged`] for the file this program was compiled from.
    pub fn passes_unchanged(&self, source: &TableRef) -> bool {
        self.unmatched == Unmatched::Pass && !self.tables.contains_key(source)
    }

    /// The DB2 tables that rows of `source` are written to.
    pub fn targets_of(&self, source: &TableRef) -> Vec<TableRef> {
        match self.tables.get(source) {
            Some(targets) => targets.iter().map(|t| t.table.clone()).collect(),
            None => match self.unmatched {
                Unmatched::Pass => vec![source.clone()],
                Unmatched::Drop => Vec::new(),
            },
        }
    }

    /// The DB2 columns that take `column` of `source` unchanged (copied or passed through under any name): how
    /// cutover finds the DB2 sequence behind a DB1 serial or identity column.
    pub fn column_targets(&self, source: &TableRef, column: &str) -> Vec<(TableRef, String)> {
        let Some(targets) = self.tables.get(source) else {
            return match self.unmatched {
                Unmatched::Pass => vec![(source.clone(), column.to_owned())],
                Unmatched::Drop => Vec::new(),
            };
        };
        let mut out = Vec::new();
        for target in targets {
            let copied = target.columns.iter().filter_map(|(name, spec)| match spec {
                Spec::Copy { from } if from == column => Some(name.clone()),
                _ => None,
            });
            out.extend(copied.map(|name| (target.table.clone(), name)));
            let explicit = target.columns.iter().any(|(name, _)| name == column);
            if target.keep_unlisted && !explicit && !target.hidden.contains(column) {
                out.push((target.table.clone(), column.to_owned()));
            }
        }
        out
    }

    /// Source tables that have rules, with whether a filter reads columns outside the source key.
    pub fn filters_needing_full_identity(&self, source: &Catalog) -> Vec<(TableRef, String)> {
        let mut out = Vec::new();
        for (table, targets) in &self.tables {
            let key = source.tables.get(table).map(|t| t.key.clone()).unwrap_or_default();
            for target in targets {
                if let Some(filter) = &target.filter {
                    if filter.inputs.iter().any(|c| !key.contains(c)) {
                        out.push((table.clone(), target.rule.clone()));
                    }
                }
            }
        }
        out
    }
}

fn compile_target(
    engine: &Engine,
    source: &TableRef,
    rule: &TargetRule,
    columns: &[(String, u32)],
    source_key: &[String],
    exists: &dyn Fn(&str) -> bool,
) -> Result<Target, String> {
    let table = parse_table(&rule.table).ok_or("target must be schema.table, like \"public.orders\"")?;
    let name = format!("{source} → {table}");
    for dropped in &rule.drop {
        if !exists(dropped) {
            return Err(format!("drop names {dropped:?}, which is not a column of {source}"));
        }
    }
    let hidden = rule.hidden();
    let mut compiled = Vec::new();
    for (target_column, spec) in &rule.columns {
        let spec = match spec {
            ColumnSpec::Copy(from) | ColumnSpec::Convert { from, .. } if !exists(from) => {
                return Err(format!("column {target_column:?} reads {from:?}, which is not a column of {source}"))
            }
            ColumnSpec::Copy(from) => Spec::Copy { from: from.clone() },
            ColumnSpec::Convert { from, convert, path } => {
                if *convert == Conversion::JsonField && path.is_none() {
                    return Err(format!("column {target_column:?}: json_field needs a path"));
                }
                Spec::Convert { from: from.clone(), conversion: *convert, path: path.clone() }
            }
            ColumnSpec::Expr { expr, type_name } => Spec::Expr {
                expr: expr::compile(engine, expr, columns).map_err(|e| format!("column {target_column:?}: {e}"))?,
                type_name: type_name.clone(),
            },
            ColumnSpec::Const { value, null } => {
                if *null && value.is_some() {
                    return Err(format!("column {target_column:?}: const and null = true exclude each other"));
                }
                Spec::Const(value.clone())
            }
        };
        compiled.push((target_column.clone(), spec));
    }
    let filter = match &rule.filter {
        Some(text) => Some(expr::compile(engine, text, columns).map_err(|e| format!("filter: {e}"))?),
        None => None,
    };
    let feeds = |target_column: &str| -> bool {
        compiled.iter().any(|(t, _)| t == target_column)
            || (rule.keep_unlisted && exists(target_column) && !hidden.contains(target_column))
    };
    let key = match &rule.key {
        Some(key) => key.clone(),
        None => source_key
            .iter()
            .map(|k| {
                compiled
                    .iter()
                    .find(|(_, spec)| matches!(spec, Spec::Copy { from } if from == k))
                    .map(|(t, _)| t.clone())
                    .or_else(|| (rule.keep_unlisted && !hidden.contains(k)).then(|| k.clone()))
                    .ok_or_else(|| {
                        format!("source key column {k:?} is not mapped to the target; map it or set key = [...]")
                    })
            })
            .collect::<Result<_, _>>()?,
    };
    if key.is_empty() {
        return Err(format!(
            "no target key: {source} has no primary key, so this target must say which of its columns identify a row: \
             set key = [\"column\", …] in this [[table.target]] (columns unique on DB2). If the table needs no \
             change, delete its rule instead: a table without a rule passes unchanged, keyless ones included (apply \
             finds their rows by the whole old row)"
        ));
    }
    for k in &key {
        if !feeds(k) {
            return Err(format!("key column {k:?} is not fed by any column spec"));
        }
    }
    Ok(Target { rule: name, table, key, columns: compiled, keep_unlisted: rule.keep_unlisted, hidden, filter })
}

/// Which row a column is built from, and how strictly.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Every column must be computable (insert, snapshot, an update that enters the filter).
    Full,
    /// Only what the update carried (absent inputs leave the target column absent).
    Update,
}

struct Run<'a> {
    engine: &'a Engine,
    target: &'a Target,
    raw: &'a RawRecord,
}

impl<'a> Run<'a> {
    fn error(&self, column: Option<&str>, problem: impl Into<String>) -> RewriteError {
        RewriteError(Box::new(RewriteFailure {
            rule: self.target.rule.clone(),
            table: self.raw.source.clone(),
            pos: self.raw.pos,
            column: column.map(str::to_owned),
            problem: problem.into(),
        }))
    }

    /// New values first, the old row (REPLICA IDENTITY FULL carries all of it) for what the update did not send.
    fn merged(&self, name: &str) -> Cell<'a> {
        let raw: &'a RawRecord = self.raw;
        match raw.new.get(name) {
            Cell::Absent => raw.old.as_ref().map_or(Cell::Absent, |old| old.get(name)),
            cell => cell,
        }
    }

    fn eval(
        &self,
        expr: &Expr,
        column: Option<&str>,
        lookup: &dyn Fn(&str) -> Cell<'a>,
    ) -> Result<Dynamic, RewriteError> {
        let mut scope = Scope::new();
        for input in &expr.inputs {
            let value = match lookup(input) {
                Cell::Absent => {
                    return Err(self.error(
                        column,
                        format!(
                            "input column {input} was not sent (unchanged TOAST value or key-only identity); \
                             run ALTER TABLE {} REPLICA IDENTITY FULL so updates carry it",
                            self.raw.source
                        ),
                    ))
                }
                Cell::Null => None,
                Cell::Value(text) => Some(text),
            };
            let oid = self.type_oid(input);
            let dynamic = expr::to_dynamic(input, oid, value).map_err(|e| self.error(column, e.to_string()))?;
            scope.push_dynamic(input.as_str(), dynamic);
        }
        self.engine
            .eval_ast_with_scope::<Dynamic>(&mut scope, &expr.ast)
            .map_err(|e| self.error(column, format!("expression failed: {e}")))
    }

    fn type_oid(&self, name: &str) -> u32 {
        self.source_column(name).map_or(0, |c| c.type_oid)
    }

    fn source_column(&self, name: &str) -> Option<&Column> {
        self.raw
            .new
            .columns()
            .iter()
            .find(|c| c.name == name)
            .or_else(|| self.raw.old.as_ref().and_then(|old| old.columns().iter().find(|c| c.name == name)))
    }

    fn matches(&self, lookup: &dyn Fn(&str) -> Cell<'a>) -> Result<bool, RewriteError> {
        let Some(filter) = &self.target.filter else { return Ok(true) };
        let result = self.eval(filter, None, lookup)?;
        result
            .as_bool()
            .map_err(|_| self.error(None, format!("filter returned a {}, not a boolean", result.type_name())))
    }

    fn op(&self) -> Result<Option<TargetOp>, RewriteError> {
        let raw: &'a RawRecord = self.raw;
        let new_side = |name: &str| self.merged(name);
        let old_side = |name: &str| raw.old.as_ref().map_or(Cell::Absent, |old| old.get(name));
        let op = |op: Op, new: Row, old: Option<Row>| TargetOp {
            op,
            target: self.target.table.clone(),
            key: self.target.key.clone(),
            new,
            old,
            copy: None,
        };
        Ok(match raw.op {
            Op::Copy => return Err(self.error(None, "a copy record reached the row rules")),
            Op::Truncate => Some(op(Op::Truncate, Row::default(), None)),
            Op::Insert | Op::Snapshot => {
                if !self.matches(&new_side)? {
                    return Ok(None);
                }
                Some(op(raw.op, self.row(Mode::Full)?, None))
            }
            Op::Delete => {
                if !self.matches(&old_side)? {
                    return Ok(None);
                }
                Some(op(Op::Delete, Row::default(), Some(self.key()?)))
            }
            Op::Update => {
                let (was, is) = if self.target.filter.is_some() {
                    (self.matches(&old_side)?, self.matches(&new_side)?)
                } else {
                    (true, true)
                };
                match (was, is) {
                    (true, true) => Some(op(Op::Update, self.row(Mode::Update)?, Some(self.key()?))),
                    (true, false) => Some(op(Op::Delete, Row::default(), Some(self.key()?))),
                    (false, true) => Some(op(Op::Insert, self.row(Mode::Full)?, None)),
                    (false, false) => None,
                }
            }
        })
    }

    /// One target column's value; `None` = absent.
    fn value(&self, name: &str, spec: &Spec, mode: Mode) -> Result<Option<Column>, RewriteError> {
        let column = |value: Option<String>, type_name: &str, type_oid: u32| Column {
            name: name.to_owned(),
            type_name: type_name.to_owned(),
            type_oid,
            value: value.map_or(Datum::Null, Datum::Text),
        };
        let lookup = |from: &str| match mode {
            Mode::Full => self.merged(from),
            Mode::Update => self.raw.new.get(from),
        };
        Ok(match spec {
            Spec::Copy { from } => match lookup(from) {
                Cell::Absent if mode == Mode::Full => {
                    return Err(self.error(
                        Some(name),
                        format!("source column {from} is absent; set REPLICA IDENTITY FULL on {}", self.raw.source),
                    ))
                }
                Cell::Absent => None,
                cell => {
                    let source = self.source_column(from).expect("present");
                    Some(column(cell_text(cell), &source.type_name, source.type_oid))
                }
            },
            Spec::Convert { from, conversion, path } => match lookup(from) {
                Cell::Absent if mode == Mode::Full => {
                    return Err(self.error(
                        Some(name),
                        format!("source column {from} is absent; set REPLICA IDENTITY FULL on {}", self.raw.source),
                    ))
                }
                Cell::Absent => None,
                Cell::Null => Some(column(None, result_type(*conversion), 0)),
                Cell::Value(text) => {
                    let converted = convert::convert(*conversion, text, path.as_deref())
                        .map_err(|e| self.error(Some(name), format!("{conversion:?} of {from}: {e}")))?;
                    Some(column(converted, result_type(*conversion), 0))
                }
            },
            Spec::Expr { expr, type_name } => {
                if mode == Mode::Update && expr.inputs.iter().all(|i| self.raw.new.get(i) == Cell::Absent) {
                    None // nothing it reads changed: leave the target column as it is
                } else {
                    let result = self.eval(expr, Some(name), &|c| self.merged(c))?;
                    let (value, guessed) = expr::from_dynamic(&result).map_err(|e| self.error(Some(name), e))?;
                    Some(column(value, type_name.as_deref().unwrap_or(guessed), 0))
                }
            }
            Spec::Const(value) => (mode == Mode::Full).then(|| column(value.clone(), "text", 0)),
        })
    }

    fn row(&self, mode: Mode) -> Result<Row, RewriteError> {
        let mut out = Vec::with_capacity(self.target.columns.len() + self.raw.new.columns().len());
        for (name, spec) in &self.target.columns {
            if let Some(column) = self.value(name, spec, mode)? {
                out.push(column);
            }
        }
        if self.target.keep_unlisted {
            let explicit = |name: &str| self.target.columns.iter().any(|(t, _)| t == name);
            let mut pass = |column: &Column| {
                if !self.target.hidden.contains(&column.name)
                    && !explicit(&column.name)
                    && !out.iter().any(|c: &Column| c.name == column.name)
                {
                    out.push(column.clone());
                }
            };
            for column in self.raw.new.columns() {
                pass(column);
            }
            if mode == Mode::Full {
                // An update entering the filter becomes an insert: the old row supplies what the update did not send.
                for column in self.raw.old.iter().flat_map(|old| old.columns()) {
                    pass(column);
                }
            }
        }
        Ok(Row(out))
    }

    /// The target key of the row as it was (old identity), or of the new row for inserts.
    fn key(&self) -> Result<Row, RewriteError> {
        let raw: &'a RawRecord = self.raw;
        let old: &'a Row = raw.old.as_ref().unwrap_or(&raw.new);
        let mut out = Vec::with_capacity(self.target.key.len());
        for key in &self.target.key {
            let spec = self.target.columns.iter().find(|(t, _)| t == key).map(|(_, s)| s);
            let lookup = |name: &str| old.get(name);
            let column = match spec {
                Some(Spec::Copy { .. }) | None => {
                    let from = match spec {
                        Some(Spec::Copy { from }) => from.as_str(),
                        _ => key.as_str(),
                    };
                    let cell = lookup(from);
                    if cell == Cell::Absent {
                        return Err(self.error(Some(key), format!("key source column {from} is not in the old identity; set REPLICA IDENTITY FULL on {} or key on its primary key", self.raw.source)));
                    }
                    let source = self.source_column(from).expect("present");
                    Column {
                        name: key.clone(),
                        type_name: source.type_name.clone(),
                        type_oid: source.type_oid,
                        value: cell_datum(cell),
                    }
                }
                Some(Spec::Convert { from, conversion, path }) => {
                    let converted = match lookup(from) {
                        Cell::Absent => {
                            return Err(
                                self.error(Some(key), format!("key source column {from} is not in the old identity"))
                            )
                        }
                        Cell::Null => None,
                        Cell::Value(text) => convert::convert(*conversion, text, path.as_deref())
                            .map_err(|e| self.error(Some(key), format!("{conversion:?} of {from}: {e}")))?,
                    };
                    Column {
                        name: key.clone(),
                        type_name: result_type(*conversion).into(),
                        type_oid: 0,
                        value: converted.map_or(Datum::Null, Datum::Text),
                    }
                }
                Some(Spec::Expr { expr, type_name }) => {
                    let result = self.eval(expr, Some(key), &lookup)?;
                    let (value, guessed) = expr::from_dynamic(&result).map_err(|e| self.error(Some(key), e))?;
                    Column {
                        name: key.clone(),
                        type_name: type_name.as_deref().unwrap_or(guessed).into(),
                        type_oid: 0,
                        value: value.map_or(Datum::Null, Datum::Text),
                    }
                }
                Some(Spec::Const(value)) => Column {
                    name: key.clone(),
                    type_name: "text".into(),
                    type_oid: 0,
                    value: value.clone().map_or(Datum::Null, Datum::Text),
                },
            };
            out.push(column);
        }
        Ok(Row(out))
    }
}

fn cell_text(cell: Cell<'_>) -> Option<String> {
    match cell {
        Cell::Value(text) => Some(text.to_owned()),
        Cell::Null | Cell::Absent => None,
    }
}

fn cell_datum(cell: Cell<'_>) -> Datum {
    cell_text(cell).map_or(Datum::Null, Datum::Text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{ColumnInfo, TableInfo};

    #[test]
    fn a_rule_for_a_keyless_table_says_how_to_write_it_or_that_none_is_needed() {
        let column = |name: &str| ColumnInfo {
            name: name.into(),
            type_name: "text".into(),
            type_oid: 25,
            not_null: false,
            has_default: false,
        };
        let mut source = Catalog::default();
        source.tables.insert(
            TableRef::new("public", "log"),
            TableInfo { columns: vec![column("at"), column("line")], key: Vec::new(), replica_full: true },
        );
        let rules =
            RulesFile::from_toml_str("[[table]]\nsource = \"public.log\"\n[[table.target]]\ntable = \"public.log\"\n")
                .unwrap();
        let error = Program::compile(&rules, &source).err().expect("no key: refused").to_string();
        for expected in ["\"public\".\"log\" has no primary key", "set key = [", "delete its rule"] {
            assert!(error.contains(expected), "{expected:?} missing from: {error}");
        }
        let keyed = RulesFile::from_toml_str(
            "[[table]]\nsource = \"public.log\"\n[[table.target]]\ntable = \"public.log\"\nkey = [\"at\", \"line\"]\n",
        )
        .unwrap();
        assert!(Program::compile(&keyed, &source).is_ok());
    }
}
