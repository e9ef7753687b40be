//! `pgm-transform verify`: is DB2 the transformed DB1?
//!
//! Every configured source table is streamed from DB1 and passed through the same compiled rules the workers run
//! (as snapshot rows); every target table is streamed from DB2. Both sides are reduced to the same canonical form by
//! DB2 itself — the transformed values are cast to DB2's column types (with their modifiers) exactly as apply casts
//! them, and each row becomes `md5(ROW(columns…)::text)` — so `1.5` into `numeric(12,2)` compares equal to the stored
//! `1.50`. Per target table: the row count and an order-independent checksum (the wrapping sum of the row hashes),
//! also per 256 buckets of the key. Memory is bounded by one batch per target table.
//!
//! On a mismatch only the differing buckets are read again, keeping `key → row hash` for those rows, to name the
//! keys (and, for a one-column key, the key range) that are missing on either side or differ.
//!
//! Verify compares the databases as they are now: run it when DB1 and DB2 are at the same point (after cutover, or
//! with DB1's writes stopped and apply drained).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use futures::{pin_mut, StreamExt};
use pgm_common::change::{quote_ident, Cell, TableRef};
use pgm_common::config::{PgConfig, PipelineConfig};
use pgm_common::envelope::{Op, RawRecord, ENVELOPE_VERSION};
use pgm_common::lsn::Position;
use pgm_common::snapshot::SourceTable;
use tokio_postgres::Client;

use crate::catalog::Catalog;
use crate::rewrite::Program;

const BATCH: usize = 1000;
const BUCKETS: usize = 256;
/// Keys kept per side and table while narrowing a mismatch.
const NARROW_CAP: usize = 200_000;
/// Keys listed per kind of difference in the report.
const LISTED: usize = 10;

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("verify: {what}: {source}")]
    Db {
        what: String,
        #[source]
        source: pgm_common::config::ConnectError,
    },
    #[error("verify: {0}")]
    Refused(String),
}

fn db<E: Into<pgm_common::config::ConnectError>>(what: impl Into<String>) -> impl FnOnce(E) -> VerifyError {
    let what = what.into();
    move |source| VerifyError::Db { what, source: source.into() }
}

/// The columns compared for one target table, with DB2's types.
#[derive(Clone, Debug)]
struct Shape {
    columns: Vec<(String, String)>,
    /// Indexes into `columns` of the key columns.
    key: Vec<usize>,
    /// Learned from a transformed row (final), not DB2's whole column list (a placeholder until a row comes).
    from_rows: bool,
}

#[derive(Clone, Debug)]
struct Side {
    rows: u64,
    sum: u64,
    buckets: Vec<(u64, u64)>,
    /// Pass 2 only: key → row hash of the rows in the buckets being narrowed.
    narrowed: Option<HashMap<Vec<Option<String>>, u64>>,
    overflow: bool,
}

impl Default for Side {
    fn default() -> Self {
        Side { rows: 0, sum: 0, buckets: vec![(0, 0); BUCKETS], narrowed: None, overflow: false }
    }
}

impl Side {
    fn add(&mut self, key: Vec<Option<String>>, hash: u64, narrowing: Option<&BTreeSet<usize>>) {
        let bucket = bucket_of(&key);
        self.rows += 1;
        self.sum = self.sum.wrapping_add(hash);
        self.buckets[bucket].0 += 1;
        self.buckets[bucket].1 = self.buckets[bucket].1.wrapping_add(hash);
        if let (Some(wanted), Some(map)) = (narrowing, self.narrowed.as_mut()) {
            if wanted.contains(&bucket) {
                if map.len() >= NARROW_CAP {
                    self.overflow = true;
                } else {
                    // Two rows with one key on the same side (a keyless table): keep both in the checksum.
                    let entry = map.entry(key).or_insert(0);
                    *entry = entry.wrapping_add(hash);
                }
            }
        }
    }
}

fn bucket_of(key: &[Option<String>]) -> usize {
    // FNV-1a: stable across runs and processes.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in key {
        let bytes: &[u8] = part.as_deref().map_or(b"\x01null", str::as_bytes);
        for b in bytes.iter().chain(std::iter::once(&0u8)) {
            hash ^= u64::from(*b);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    (hash % BUCKETS as u64) as usize
}

fn hash_of(md5_hex: &str) -> u64 {
    u64::from_str_radix(md5_hex.get(..16).unwrap_or("0"), 16).unwrap_or(0)
}

/// The outcome for one target table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableReport {
    pub table: TableRef,
    pub key_columns: Vec<String>,
    pub db1_rows: u64,
    pub db2_rows: u64,
    pub equal: bool,
    /// Keys (each column's text) present only in the transformed DB1, only in DB2, or in both with other values.
    pub only_db1: Vec<Vec<Option<String>>>,
    pub only_db2: Vec<Vec<Option<String>>>,
    pub changed: Vec<Vec<Option<String>>>,
    /// For a one-column key: the smallest and largest differing key, in DB2's order.
    pub key_range: Option<(String, String)>,
    /// More rows differ than narrowing keeps in memory: the lists are incomplete.
    pub incomplete: bool,
    /// What the operator calls the source and the target: DB1 and DB2, or DB2 and DB1 with `--reverse`.
    pub names: (&'static str, &'static str),
}

fn show_key(columns: &[String], key: &[Option<String>]) -> String {
    let values: Vec<&str> = key.iter().map(|v| v.as_deref().unwrap_or("NULL")).collect();
    format!("({})=({})", columns.join(", "), values.join(", "))
}

impl fmt::Display for TableReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.equal {
            return write!(f, "{}: equal ({} rows)", self.table, self.db2_rows);
        }
        let (db1, db2) = self.names;
        write!(
            f,
            "{}: DIFFERENT — transformed {db1} has {} rows, {db2} has {}",
            self.table, self.db1_rows, self.db2_rows
        )?;
        if let Some((low, high)) = &self.key_range {
            write!(f, "; differing keys lie in ({}) {low} .. {high}", self.key_columns.join(", "))?;
        }
        let (only_db1, only_db2) = (format!("only in {db1}"), format!("only in {db2}"));
        for (label, keys) in
            [("differ", &self.changed), (only_db1.as_str(), &self.only_db1), (only_db2.as_str(), &self.only_db2)]
        {
            if keys.is_empty() {
                continue;
            }
            let shown: Vec<String> = keys.iter().take(LISTED).map(|k| show_key(&self.key_columns, k)).collect();
            let more = if keys.len() > LISTED { format!(" and {} more", keys.len() - LISTED) } else { String::new() };
            write!(f, "\n    {} rows {label}: {}{more}", keys.len(), shown.join(", "))?;
        }
        if self.incomplete {
            write!(f, "\n    (more rows differ than verify keeps in memory: the lists above are incomplete)")?;
        }
        Ok(())
    }
}

async fn connect(pg: &PgConfig) -> Result<Client, VerifyError> {
    pg.connect("pgm-verify").await.map_err(db(format!("cannot connect to {}", pg.describe())))
}

struct Verifier<'a> {
    program: &'a Program,
    db1: Client,
    db2: Client,
    target_catalog: Catalog,
    shapes: BTreeMap<TableRef, Shape>,
    db1_side: BTreeMap<TableRef, Side>,
    db2_side: BTreeMap<TableRef, Side>,
    /// Pass 2: which buckets of which target tables are being narrowed.
    narrowing: BTreeMap<TableRef, BTreeSet<usize>>,
    /// Rows of the transformed DB1 waiting to be hashed by DB2, per target table.
    pending: BTreeMap<TableRef, Vec<Vec<Option<String>>>>,
    names: (&'static str, &'static str),
}

/// Compares every target table; the reports come in table order.
pub async fn run(config: &PipelineConfig, program: &Program) -> Result<Vec<TableReport>, VerifyError> {
    let target_catalog = Catalog::load(&config.target).await.map_err(db("cannot read DB2's catalog"))?;
    let mut verifier = Verifier {
        program,
        db1: connect(&config.source).await?,
        db2: connect(&config.target).await?,
        target_catalog,
        shapes: BTreeMap::new(),
        db1_side: BTreeMap::new(),
        db2_side: BTreeMap::new(),
        narrowing: BTreeMap::new(),
        pending: BTreeMap::new(),
        names: config.names(),
    };
    let sources = config.tables();
    let mut feeds: BTreeMap<TableRef, Vec<TableRef>> = BTreeMap::new();
    for source in &sources {
        for target in program.targets_of(source) {
            verifier.shape(&target, None)?;
            feeds.entry(target).or_default().push(source.clone());
        }
    }
    for source in &sources {
        verifier.read_db1(source).await?;
    }
    for target in feeds.keys() {
        verifier.read_db2(target).await?;
    }

    // Pass 2: narrow the differing buckets down to keys.
    let mut differing = BTreeMap::new();
    for target in feeds.keys() {
        let (one, two) = (&verifier.db1_side[target], &verifier.db2_side[target]);
        let buckets: BTreeSet<usize> = (0..BUCKETS).filter(|&b| one.buckets[b] != two.buckets[b]).collect();
        if !buckets.is_empty() {
            differing.insert(target.clone(), buckets);
        }
    }
    if !differing.is_empty() {
        tracing::info!(tables = differing.len(), "checksums differ; reading the differing key buckets again");
        verifier.narrowing = differing.clone();
        let again: BTreeSet<&TableRef> = differing.keys().flat_map(|t| feeds[t].iter()).collect();
        for target in differing.keys() {
            let side = Side { narrowed: Some(HashMap::new()), ..Side::default() };
            verifier.db1_side.insert(target.clone(), side.clone());
            verifier.db2_side.insert(target.clone(), side);
        }
        // Every source feeding a narrowed target is read again; only the narrowed targets' rows are hashed.
        for source in again {
            verifier.read_db1(source).await?;
        }
        for target in differing.keys() {
            verifier.read_db2(target).await?;
        }
    }

    let mut reports = Vec::new();
    for target in feeds.keys() {
        reports.push(verifier.report(target).await?);
    }
    Ok(reports)
}

impl Verifier<'_> {
    /// The compared columns of `target`: those the rules write (from the first transformed row), else all of DB2's.
    fn shape(&mut self, target: &TableRef, written: Option<(&[String], &[String])>) -> Result<(), VerifyError> {
        if let Some(shape) = self.shapes.get(target) {
            if written.is_none() || shape.from_rows {
                return Ok(());
            }
        }
        let info = self.target_catalog.tables.get(target).ok_or_else(|| {
            VerifyError::Refused(format!(
                "the rules write to {target}, which does not exist in DB2: create it (run the schema migration) first"
            ))
        })?;
        let (names, op_key): (Vec<String>, Vec<String>) = match written {
            Some((names, key)) => (names.to_vec(), key.to_vec()),
            None => (info.columns.iter().map(|c| c.name.clone()).collect(), info.key.clone()),
        };
        let mut columns = Vec::with_capacity(names.len());
        for name in &names {
            let column = info.column(name).ok_or_else(|| {
                VerifyError::Refused(format!(
                    "the rules write column {} of {target}, which DB2 lacks: fix the rules or DB2's schema",
                    quote_ident(name)
                ))
            })?;
            columns.push((name.clone(), column.type_name.clone()));
        }
        let key_names = if info.key.is_empty() { op_key } else { info.key.clone() };
        let mut key = Vec::new();
        for name in &key_names {
            match columns.iter().position(|(c, _)| c == name) {
                Some(i) => key.push(i),
                None => {
                    let type_name = info.column(name).map(|c| c.type_name.clone()).unwrap_or_else(|| "text".into());
                    columns.push((name.clone(), type_name));
                    key.push(columns.len() - 1);
                }
            }
        }
        if key.is_empty() {
            // A keyless table: the whole row is its key.
            key = (0..columns.len()).collect();
        }
        self.shapes.insert(target.clone(), Shape { columns, key, from_rows: written.is_some() });
        self.db1_side.entry(target.clone()).or_default();
        self.db2_side.entry(target.clone()).or_default();
        Ok(())
    }

    async fn read_db1(&mut self, source: &TableRef) -> Result<(), VerifyError> {
        let table = SourceTable::describe(&self.db1, source)
            .await
            .map_err(db(format!("cannot describe {source} on DB1")))?
            .ok_or_else(|| VerifyError::Refused(format!("{source} is configured but does not exist in DB1")))?;
        if table.partitioned {
            return Err(VerifyError::Refused(format!(
                "{source} is a partitioned table: list its partitions in tables.include (changes are decoded per partition)"
            )));
        }
        let stream = self
            .db1
            .query_raw(table.select_sql().as_str(), std::iter::empty::<&str>())
            .await
            .map_err(db(format!("cannot read {source} on DB1")))?;
        pin_mut!(stream);
        let mut ordinal = 0u64;
        while let Some(row) = stream.next().await {
            let row = row.map_err(db(format!("reading {source} on DB1")))?;
            ordinal += 1;
            let raw = RawRecord {
                v: ENVELOPE_VERSION,
                pos: Position::new(pgm_common::lsn::Lsn(0), ordinal),
                op: Op::Snapshot,
                source: source.clone(),
                xid: None,
                key: table.key.clone(),
                new: table.to_row(&row),
                old: None,
                copy: None,
            };
            let out = self.program.rewrite(&raw).map_err(|e| {
                VerifyError::Refused(format!(
                    "the rules fail on row {ordinal} of {source} (row {ordinal} of the scan): {e}"
                ))
            })?;
            for op in out.ops {
                if self.narrowing.is_empty() || self.narrowing.contains_key(&op.target) {
                    // The shape is learned from the target's first row; later rows only read it.
                    if !self.shapes.get(&op.target).is_some_and(|shape| shape.from_rows) {
                        let names: Vec<String> = op.new.columns().iter().map(|c| c.name.clone()).collect();
                        self.shape(&op.target, Some((&names, &op.key)))?;
                    }
                    let values = self.shapes[&op.target]
                        .columns
                        .iter()
                        .map(|(name, _)| match op.new.get(name) {
                            Cell::Value(text) => Some(text.to_owned()),
                            Cell::Null | Cell::Absent => None,
                        })
                        .collect();
                    let batch = match self.pending.get_mut(&op.target) {
                        Some(batch) => batch,
                        None => self.pending.entry(op.target.clone()).or_default(),
                    };
                    batch.push(values);
                    if batch.len() >= BATCH {
                        self.flush(&op.target).await?;
                    }
                }
            }
        }
        let targets: Vec<TableRef> = self.pending.keys().cloned().collect();
        for target in targets {
            self.flush(&target).await?;
        }
        Ok(())
    }

    /// Hashes the pending transformed rows of `target` in DB2, after casting them to DB2's column types.
    async fn flush(&mut self, target: &TableRef) -> Result<(), VerifyError> {
        let rows = match self.pending.get_mut(target) {
            Some(rows) if !rows.is_empty() => std::mem::take(rows),
            _ => return Ok(()),
        };
        let shape = self.shapes[target].clone();
        let cast = |i: usize| format!("u.c{i}::{}", shape.columns[i].1);
        let keys: Vec<String> = shape.key.iter().map(|&i| format!("({})::text", cast(i))).collect();
        let all: Vec<String> = (0..shape.columns.len()).map(cast).collect();
        let arrays: Vec<String> = (0..shape.columns.len()).map(|i| format!("${}::text[]", i + 1)).collect();
        let aliases: Vec<String> = (0..shape.columns.len()).map(|i| format!("c{i}")).collect();
        let sql = format!(
            "SELECT {}, md5(ROW({})::text) FROM unnest({}) AS u({})",
            keys.join(", "),
            all.join(", "),
            arrays.join(", "),
            aliases.join(", ")
        );
        let mut columns: Vec<Vec<Option<String>>> = vec![Vec::with_capacity(rows.len()); shape.columns.len()];
        for row in rows {
            for (i, value) in row.into_iter().enumerate() {
                columns[i].push(value);
            }
        }
        let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
            columns.iter().map(|c| c as &(dyn tokio_postgres::types::ToSql + Sync)).collect();
        let hashed = self.db2.query(sql.as_str(), &params).await.map_err(db(format!(
            "cannot cast the transformed rows of {target} to DB2's column types (a value the rules produce does not fit)"
        )))?;
        let narrowing = self.narrowing.get(target);
        let side = self.db1_side.get_mut(target).expect("side created with the shape");
        for row in hashed {
            let key: Vec<Option<String>> = (0..shape.key.len()).map(|i| row.get(i)).collect();
            let md5: String = row.get(shape.key.len());
            side.add(key, hash_of(&md5), narrowing);
        }
        Ok(())
    }

    async fn read_db2(&mut self, target: &TableRef) -> Result<(), VerifyError> {
        let shape = self.shapes[target].clone();
        let keys: Vec<String> =
            shape.key.iter().map(|&i| format!("{}::text", quote_ident(&shape.columns[i].0))).collect();
        let all: Vec<String> = shape.columns.iter().map(|(name, _)| quote_ident(name)).collect();
        let sql =
            format!("SELECT {}, md5(ROW({})::text) FROM ONLY {}", keys.join(", "), all.join(", "), target.quoted());
        let stream = self
            .db2
            .query_raw(sql.as_str(), std::iter::empty::<&str>())
            .await
            .map_err(db(format!("cannot read {target} on DB2")))?;
        pin_mut!(stream);
        let narrowing = self.narrowing.get(target);
        let side = self.db2_side.get_mut(target).expect("side created with the shape");
        while let Some(row) = stream.next().await {
            let row = row.map_err(db(format!("reading {target} on DB2")))?;
            let key: Vec<Option<String>> = (0..shape.key.len()).map(|i| row.get(i)).collect();
            let md5: String = row.get(shape.key.len());
            side.add(key, hash_of(&md5), narrowing);
        }
        Ok(())
    }

    async fn report(&self, target: &TableRef) -> Result<TableReport, VerifyError> {
        let shape = &self.shapes[target];
        let (one, two) = (&self.db1_side[target], &self.db2_side[target]);
        let key_columns: Vec<String> = shape.key.iter().map(|&i| shape.columns[i].0.clone()).collect();
        let mut report = TableReport {
            table: target.clone(),
            key_columns,
            db1_rows: one.rows,
            db2_rows: two.rows,
            names: self.names,
            equal: one.rows == two.rows && one.sum == two.sum && one.buckets == two.buckets,
            only_db1: Vec::new(),
            only_db2: Vec::new(),
            changed: Vec::new(),
            key_range: None,
            incomplete: one.overflow || two.overflow,
        };
        if let (Some(a), Some(b)) = (&one.narrowed, &two.narrowed) {
            for (key, hash) in a {
                match b.get(key) {
                    None => report.only_db1.push(key.clone()),
                    Some(other) if other != hash => report.changed.push(key.clone()),
                    Some(_) => {}
                }
            }
            report.only_db2 = b.keys().filter(|k| !a.contains_key(*k)).cloned().collect();
            for list in [&mut report.only_db1, &mut report.only_db2, &mut report.changed] {
                list.sort();
            }
            if shape.key.len() == 1 {
                let type_name = &shape.columns[shape.key[0]].1;
                let keys: Vec<Option<String>> = report
                    .only_db1
                    .iter()
                    .chain(&report.only_db2)
                    .chain(&report.changed)
                    .map(|k| k[0].clone())
                    .collect();
                if !keys.is_empty() {
                    let sql = format!(
                        "SELECT min(k::{type_name})::text, max(k::{type_name})::text FROM unnest($1::text[]) k"
                    );
                    let row =
                        self.db2.query_one(sql.as_str(), &[&keys]).await.map_err(db("ordering the differing keys"))?;
                    if let (Some(low), Some(high)) = (row.get::<_, Option<String>>(0), row.get::<_, Option<String>>(1))
                    {
                        report.key_range = Some((low, high));
                    }
                }
            }
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(v: &str) -> Vec<Option<String>> {
        vec![Some(v.to_owned())]
    }

    #[test]
    fn checksums_ignore_order_but_not_content_or_multiplicity() {
        let rows = [("1", "a1b2c3d4e5f60718aa"), ("2", "0000000000000001ff"), ("3", "ffffffffffffffff00")];
        let (mut forward, mut backward) = (Side::default(), Side::default());
        for (k, h) in rows {
            forward.add(key(k), hash_of(h), None);
        }
        for (k, h) in rows.iter().rev() {
            backward.add(key(k), hash_of(h), None);
        }
        assert_eq!((forward.rows, forward.sum, &forward.buckets), (backward.rows, backward.sum, &backward.buckets));
        let mut doubled = forward.clone();
        doubled.add(key("3"), hash_of("ffffffffffffffff00"), None);
        assert_ne!(doubled.sum, forward.sum);
        assert_eq!(hash_of("0000000000000001ff"), 1);
        assert_eq!(hash_of("zz"), 0);
    }

    #[test]
    fn buckets_are_stable_and_spread_and_null_is_not_the_text_null() {
        assert_eq!(bucket_of(&key("42")), bucket_of(&key("42")));
        let used: BTreeSet<usize> = (0..5000).map(|i| bucket_of(&key(&i.to_string()))).collect();
        assert!(used.len() > 240, "{} buckets used", used.len());
        assert_ne!(bucket_of(&[None, Some("x".into())]), bucket_of(&[Some("x".into()), None]));
        assert_ne!(
            bucket_of(&[Some("ab".into()), Some("c".into())]),
            bucket_of(&[Some("a".into()), Some("bc".into())])
        );
    }

    #[test]
    fn narrowing_keeps_only_the_wanted_buckets_and_stops_at_its_cap() {
        let wanted: BTreeSet<usize> = [bucket_of(&key("7"))].into();
        let mut side = Side { narrowed: Some(HashMap::new()), ..Side::default() };
        for i in 0..2000 {
            side.add(key(&i.to_string()), 1, Some(&wanted));
        }
        let kept = side.narrowed.as_ref().unwrap();
        assert!(kept.contains_key(&key("7")));
        assert!(kept.keys().all(|k| bucket_of(k) == bucket_of(&key("7"))));
        assert_eq!(side.rows, 2000, "every row still counts");
        assert!(!side.overflow);
    }

    #[test]
    fn the_report_names_keys_and_ranges_and_cuts_long_lists() {
        let report = TableReport {
            table: TableRef::new("public", "orders"),
            key_columns: vec!["id".into()],
            db1_rows: 20,
            db2_rows: 19,
            names: ("DB1", "DB2"),
            equal: false,
            only_db1: (1..=12).map(|i| key(&i.to_string())).collect(),
            only_db2: Vec::new(),
            changed: vec![vec![None]],
            key_range: Some(("1".into(), "12".into())),
            incomplete: false,
        };
        let text = report.to_string();
        assert!(text.contains("\"public\".\"orders\": DIFFERENT — transformed DB1 has 20 rows, DB2 has 19"), "{text}");
        assert!(text.contains("differing keys lie in (id) 1 .. 12"), "{text}");
        assert!(text.contains("12 rows only in DB1: (id)=(1), (id)=(2)"), "{text}");
        assert!(text.contains("and 2 more"), "{text}");
        assert!(text.contains("1 rows differ: (id)=(NULL)"), "{text}");
        assert!(!text.contains("only in DB2"), "{text}");
        let equal = TableReport { equal: true, ..report };
        assert_eq!(equal.to_string(), "\"public\".\"orders\": equal (19 rows)");
    }
}
