//! Target operations → batched SQL inside the open DB2 transaction.
//!
//! Consecutive operations of one kind on one table with the same columns form a batch, written as one statement
//! over `unnest` of text arrays, one array per column (measured against multi-row VALUES and COPY in
//! docs/apply.md):
//!
//! ```text
//! insert    INSERT INTO t (a, b) SELECT v.c0::integer, v.c1::numeric FROM unnest($1::text[], $2::text[]) AS v(c0, c1)
//! snapshot  … ON CONFLICT (key) DO UPDATE SET b = EXCLUDED.b                              (an upsert)
//! update    UPDATE t AS pgm_t SET b = v.n0::numeric FROM unnest($1::text[], $2::text[]) AS v(k0, n0)
//!           WHERE pgm_t.id = v.k0::integer                                   (only the columns the change carries)
//! delete    DELETE FROM t AS pgm_t USING unnest($1::text[]) AS v(k0) WHERE pgm_t.id = v.k0::integer
//! truncate  TRUNCATE ONLY t
//! huge      COPY t (a, b) FROM STDIN         (inserts of 8 MiB or more: sent in 1 MiB chunks, not bound at once)
//! copy      COPY t (a, b) FROM STDIN         (the bootstrap's batches, already in COPY's text format)
//! ```
//!
//! Each table has its own pending batch within the DB2 transaction, so a source transaction that touches three
//! tables (pgbench's) still gives one statement per table per group, not one per change. Operations on one table
//! stay in source order; across tables, the order inside one DB2 transaction is invisible to readers (it commits
//! atomically) and to DB2 itself, whose foreign keys and ordinary triggers do not fire under
//! `session_replication_role = replica` (an `ENABLE ALWAYS` trigger on DB2 would see the per-table order).
//!
//! Values are always bound, as PostgreSQL text, and converted by the cast to the column's type from DB2's catalog;
//! identifiers are always quoted. A batch ends before an operation that touches a key already in it (a key update
//! chain, an update after a delete), so one statement never depends on its own effects; a repeated update of one
//! row with the same columns replaces the earlier one's values instead ([`Batch::same_row_update`]). Targets without a
//! key (REPLICA IDENTITY FULL sources) are changed one row at a time, by the ctid of the first row equal to the old
//! row, as PostgreSQL's own apply does.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;

use pgm_common::change::{quote_ident, Cell, Row, TableRef};
use pgm_common::config::OnMissingRow;
use pgm_common::envelope::{Op, TargetOp};
use pgm_common::Position;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Statement};

use crate::catalog::TargetCatalog;
use crate::metrics::ApplyMetrics;
use crate::ApplyError;

/// A statement's parameters are capped in bytes too, so one batch of wide rows stays small in memory.
const MAX_BATCH_BYTES: usize = 8 << 20;
/// Bytes of COPY data sent at once when huge rows are inserted ([`Writer::copy`]).
const COPY_CHUNK: usize = 1 << 20;
/// Tables with a batch pending at once; beyond, everything pending is written.
const MAX_PENDING_TABLES: usize = 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Insert,
    Upsert,
    Update,
    Delete,
    /// Keyless target: one row, found by its old values.
    RowUpdate,
    RowDelete,
}

struct Batch {
    kind: Kind,
    table: TableRef,
    /// Columns that find the row (update, delete) or name the conflict (upsert).
    key: Vec<String>,
    /// Columns written.
    columns: Vec<String>,
    /// Column-major values: the key columns first (update, delete), then `columns`.
    values: Vec<Vec<Option<String>>>,
    /// Key values touched by this batch (old and new), to end it before a second touch.
    touched: HashSet<Vec<Option<String>>, ahash::RandomState>,
    rows: usize,
    /// Updates folded into an earlier update of the same row of this batch ([`Batch::same_row_update`]).
    merged: usize,
    bytes: usize,
    first: Position,
    last: Position,
}

impl Batch {
    /// For an update batch and an update that leaves its key as it is (`touched` holds its old key only, or the
    /// same key twice): the batch's row that an earlier update of the same row wrote, when that update did not
    /// move the key either. The later update then replaces that row's values instead of ending the batch: a hot
    /// row (a counter, pgbench's branches) no longer costs a statement (a DB2 round trip) per change.
    fn same_row_update(&self, touched: &[Vec<Option<String>>]) -> Option<usize> {
        let old_key = touched.first()?;
        if touched.iter().any(|t| t != old_key) || !self.touched.contains(old_key) {
            return None;
        }
        let key_len = self.key.len();
        let row = (0..self.rows).find(|&row| (0..key_len).all(|k| self.values[k][row] == old_key[k]))?;
        // The earlier update must not have moved the key: where it carried the key columns, they hold the old key.
        let unmoved =
            self.key.iter().zip(old_key).all(|(name, value)| match self.columns.iter().position(|c| c == name) {
                Some(at) => &self.values[key_len + at][row] == value,
                None => true,
            });
        unmoved.then_some(row)
    }
}

pub struct Writer {
    on_missing_row: OnMissingRow,
    catalog: TargetCatalog,
    statements: HashMap<String, Statement, ahash::RandomState>,
    /// Pending batches, at most one per table, in the order they were started.
    batches: Vec<Batch>,
    batch_rows: usize,
    metrics: ApplyMetrics,
    /// Rows and bytes written in the open DB2 transaction.
    pub rows: usize,
    pub bytes: usize,
    /// Updates and deletes the open DB2 transaction skipped for finding no row (`on_missing_row = "warn"`), per
    /// table, and the last one's description: recorded with the progress, counted once the transaction commits.
    pub skipped: HashMap<TableRef, u64, ahash::RandomState>,
    pub last_skipped: Option<String>,
}

fn key_values(row: &Row, key: &[String], table: &TableRef, pos: Position) -> Result<Vec<Option<String>>, ApplyError> {
    key.iter()
        .map(|k| match row.get(k) {
            Cell::Value(v) => Ok(Some(v.to_owned())),
            Cell::Null => Ok(None),
            Cell::Absent => Err(ApplyError::Stream(format!(
                "change at {pos} to {table} does not carry key column {k:?}: check the rule's key for this target"
            ))),
        })
        .collect()
}

impl Writer {
    pub fn new(batch_rows: usize, on_missing_row: OnMissingRow, metrics: ApplyMetrics) -> Self {
        Writer {
            on_missing_row,
            catalog: TargetCatalog::default(),
            statements: HashMap::default(),
            batches: Vec::new(),
            batch_rows,
            metrics,
            rows: 0,
            bytes: 0,
            skipped: HashMap::default(),
            last_skipped: None,
        }
    }

    pub fn set_batch_rows(&mut self, rows: usize) {
        self.batch_rows = rows.max(1);
    }

    /// DB2's schema may have changed: read the catalog again and prepare statements anew.
    pub fn forget_catalog(&mut self) {
        self.catalog.clear();
        self.statements.clear();
    }

    /// Starts counting a new DB2 transaction.
    pub fn reset_counts(&mut self) {
        self.rows = 0;
        self.bytes = 0;
        self.skipped.clear();
        self.last_skipped = None;
    }

    pub async fn push(&mut self, client: &Client, pos: Position, op: TargetOp) -> Result<(), ApplyError> {
        let TargetOp { op, target, key, new, old, copy } = op;
        let (kind, key, columns, mut values, touched) = match op {
            Op::Copy => {
                self.flush(client).await?;
                let batch = copy.ok_or_else(|| {
                    ApplyError::Stream(format!("copy at {pos} into {target} carries no rows: was it transformed?"))
                })?;
                return self.copy_batch(client, pos, &target, batch).await;
            }
            Op::Truncate => {
                self.flush(client).await?;
                // TRUNCATE refuses a table that another DB2 table references by foreign key, even when both are
                // truncated one after the other (wal2json sends one truncate per table) — or when the referencing
                // table is a target the source never truncates. DELETE does the same under the replica role (foreign
                // keys are not checked), so it is the fallback.
                let truncate = format!(
                    "SAVEPOINT pgm_truncate; TRUNCATE ONLY {}; RELEASE SAVEPOINT pgm_truncate",
                    target.quoted()
                );
                if let Err(e) = client.batch_execute(&truncate).await {
                    if e.code() != Some(&tokio_postgres::error::SqlState::FEATURE_NOT_SUPPORTED) {
                        return Err(statement_error(e, "truncate", &target, &[], pos, pos));
                    }
                    let delete = format!(
                        "ROLLBACK TO SAVEPOINT pgm_truncate; DELETE FROM ONLY {}; RELEASE SAVEPOINT pgm_truncate",
                        target.quoted()
                    );
                    client
                        .batch_execute(&delete)
                        .await
                        .map_err(|e| statement_error(e, "truncate (as DELETE)", &target, &[], pos, pos))?;
                }
                return Ok(());
            }
            Op::Insert | Op::Snapshot => {
                // A keyless table's snapshot rows are plain inserts (the snapshot truncated it first): no key to track.
                let touched = if op == Op::Snapshot && !key.is_empty() {
                    vec![key_values(&new, &key, &target, pos)?]
                } else {
                    Vec::new()
                };
                let (columns, values) = split(new);
                (if op == Op::Snapshot { Kind::Upsert } else { Kind::Insert }, key, columns, values, touched)
            }
            Op::Update => {
                let identity = old.as_ref().unwrap_or(&new);
                let (kind, key) = if key.is_empty() {
                    (Kind::RowUpdate, identity.columns().iter().map(|c| c.name.clone()).collect())
                } else {
                    (Kind::Update, key)
                };
                let old_key = key_values(identity, &key, &target, pos)?;
                let mut touched = vec![old_key.clone()];
                if key.iter().all(|k| new.get(k) != Cell::Absent) {
                    touched.push(key_values(&new, &key, &target, pos)?);
                }
                let (columns, new_values) = split(new);
                if columns.is_empty() {
                    return Ok(());
                }
                let values = old_key.into_iter().map(|v| vec![v]).chain(new_values).collect();
                (kind, key, columns, values, touched)
            }
            Op::Delete => {
                let identity = old.ok_or_else(|| {
                    ApplyError::Stream(format!("delete at {pos} from {target} carries no old row: was it transformed?"))
                })?;
                let (kind, key) = if key.is_empty() {
                    (Kind::RowDelete, identity.columns().iter().map(|c| c.name.clone()).collect())
                } else {
                    (Kind::Delete, key)
                };
                let old_key = key_values(&identity, &key, &target, pos)?;
                let values = old_key.iter().map(|v| vec![v.clone()]).collect();
                (kind, key, Vec::new(), values, vec![old_key])
            }
        };
        let bytes: usize = values.iter().flatten().map(|v| v.as_ref().map_or(0, String::len)).sum();
        let pending = self.batches.iter().position(|b| b.table == target);
        if let Some(index) = pending {
            let b = &self.batches[index];
            let same_shape = b.kind == kind
                && !matches!(kind, Kind::RowUpdate | Kind::RowDelete)
                && b.key == key
                && b.columns == columns
                && b.bytes + bytes <= MAX_BATCH_BYTES;
            if same_shape && kind == Kind::Update && self.batch_rows > 1 {
                if let Some(row) = b.same_row_update(&touched) {
                    let batch = &mut self.batches[index];
                    // The later update of the row replaces the earlier one's values: both carry the same columns
                    // and neither moves the key, so the row ends as this one leaves it.
                    for (column, value) in
                        batch.values.iter_mut().skip(key.len()).zip(values.iter_mut().skip(key.len()))
                    {
                        column[row] = value.pop().expect("one value per column");
                    }
                    batch.merged += 1;
                    batch.bytes += bytes;
                    batch.last = pos;
                    self.rows += 1;
                    self.bytes += bytes;
                    return Ok(());
                }
            }
            let fits = same_shape && b.rows < self.batch_rows && !touched.iter().any(|t| b.touched.contains(t));
            if !fits {
                let batch = self.batches.remove(index);
                self.write(client, batch).await?;
            }
        } else if self.batches.len() >= MAX_PENDING_TABLES {
            self.flush(client).await?;
        }
        self.rows += 1;
        self.bytes += bytes;
        match self.batches.iter_mut().find(|b| b.table == target) {
            Some(batch) => {
                for (column, value) in batch.values.iter_mut().zip(values.iter_mut()) {
                    column.push(value.pop().expect("one value per column"));
                }
                batch.touched.extend(touched);
                batch.rows += 1;
                batch.bytes += bytes;
                batch.last = pos;
            }
            None => self.batches.push(Batch {
                kind,
                table: target,
                key,
                columns,
                values,
                touched: touched.into_iter().collect(),
                rows: 1,
                merged: 0,
                bytes,
                first: pos,
                last: pos,
            }),
        }
        if self.batch_rows == 1 {
            // Locating a failed statement: every change is written at once, in source order.
            self.flush(client).await?;
        } else if bytes >= MAX_BATCH_BYTES {
            // A row this large is written now, not held while the next change is read and decoded: a huge row is
            // in memory once (plus its statement), not twice.
            if let Some(index) = self.batches.iter().position(|b| b.last == pos) {
                let batch = self.batches.remove(index);
                self.write(client, batch).await?;
            }
        }
        Ok(())
    }

    /// Writes every pending batch, in the order they were started.
    pub async fn flush(&mut self, client: &Client) -> Result<(), ApplyError> {
        for batch in std::mem::take(&mut self.batches) {
            self.write(client, batch).await?;
        }
        Ok(())
    }

    /// One batch as one statement.
    async fn write(&mut self, client: &Client, batch: Batch) -> Result<(), ApplyError> {
        if batch.kind == Kind::Insert && batch.bytes >= MAX_BATCH_BYTES {
            return self.copy(client, batch).await;
        }
        let sql = self.sql(client, &batch).await.map_err(|e| match e {
            ApplyError::Target(problem) => ApplyError::Target(format!(
                "{problem}; stopped at source position {} ({} of {}), nothing after it was applied",
                batch.first,
                kind_name(batch.kind),
                batch.table
            )),
            other => other,
        })?;
        let statement = match self.statements.get(&sql) {
            Some(statement) => statement.clone(),
            None => {
                let statement = client.prepare(&sql).await.map_err(|e| batch_error(e, &batch))?;
                self.statements.insert(sql, statement.clone());
                statement
            }
        };
        let params: Vec<&(dyn ToSql + Sync)> = batch.values.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
        let started = std::time::Instant::now();
        let changed = client.execute(&statement, &params).await.map_err(|e| batch_error(e, &batch))?;
        let touches_existing = !matches!(batch.kind, Kind::Insert | Kind::Upsert);
        if touches_existing && (changed as usize) < batch.rows {
            let missing = batch.rows - changed as usize;
            let at = if batch.first == batch.last {
                batch.first.to_string()
            } else {
                format!("{} .. {}", batch.first, batch.last)
            };
            if self.on_missing_row == OnMissingRow::Error {
                // A batch is replayed one change per statement first (as for a refused statement), so that the
                // error names the one change exactly.
                return Err(ApplyError::Statement(Box::new(crate::StatementFailure {
                    op: kind_name(batch.kind).to_owned(),
                    table: batch.table.clone(),
                    key: batch.key.join(", "),
                    at,
                    sql_error: format!("{missing} of {} found no row in DB2", batch.rows),
                    single: batch.first == batch.last,
                    missing_row: true,
                })));
            }
            *self.skipped.entry(batch.table.clone()).or_default() += missing as u64;
            self.last_skipped = Some(format!(
                "{missing} {}(s) of {} (key {}) at {at}",
                kind_name(batch.kind),
                batch.table,
                batch.key.join(", ")
            ));
            tracing::warn!(
                table = %batch.table, at = %at, missing, op = kind_name(batch.kind),
                "changes found no row in DB2 and were skipped (apply.on_missing_row = \"warn\"); DB2 has diverged \
                 from DB1 there"
            );
        }
        self.metrics.statement_seconds.observe(started.elapsed().as_secs_f64());
        self.metrics.batch_rows.observe(batch.rows as f64);
        self.metrics
            .rows
            .get_or_create(&crate::metrics::TableLabel::new(&batch.table))
            .inc_by((batch.rows + batch.merged) as u64);
        Ok(())
    }

    /// Inserts a batch of huge rows with COPY, its data sent in chunks of [`COPY_CHUNK`] bytes. A bound statement
    /// would hold each value three times at once (the values, the Bind message, and tokio-postgres's copy of it into
    /// the connection's write buffer); COPY parses the same text with the same type input functions as the cast of
    /// the INSERT path, into the same columns.
    async fn copy(&mut self, client: &Client, batch: Batch) -> Result<(), ApplyError> {
        use futures::SinkExt;
        let columns: Vec<String> = batch.columns.iter().map(|c| quote_ident(c)).collect();
        let sql = format!("COPY {} ({}) FROM STDIN", batch.table.quoted(), columns.join(", "));
        let started = std::time::Instant::now();
        let sink = client.copy_in::<_, bytes::Bytes>(&sql).await.map_err(|e| batch_error(e, &batch))?;
        futures::pin_mut!(sink);
        let mut chunk = bytes::BytesMut::with_capacity(COPY_CHUNK + 64);
        for row in 0..batch.rows {
            for (i, column) in batch.values.iter().enumerate() {
                if i > 0 {
                    chunk.extend_from_slice(b"\t");
                }
                match &column[row] {
                    None => chunk.extend_from_slice(b"\\N"),
                    Some(text) => {
                        for piece in text.as_bytes().chunks(COPY_CHUNK) {
                            copy_escape(piece, &mut chunk);
                            if chunk.len() >= COPY_CHUNK {
                                sink.send(chunk.split().freeze()).await.map_err(|e| batch_error(e, &batch))?;
                            }
                        }
                    }
                }
            }
            chunk.extend_from_slice(b"\n");
        }
        sink.send(chunk.freeze()).await.map_err(|e| batch_error(e, &batch))?;
        sink.as_mut().finish().await.map_err(|e| batch_error(e, &batch))?;
        self.metrics.statement_seconds.observe(started.elapsed().as_secs_f64());
        self.metrics.batch_rows.observe(batch.rows as f64);
        self.metrics.rows.get_or_create(&crate::metrics::TableLabel::new(&batch.table)).inc_by(batch.rows as u64);
        Ok(())
    }

    /// Rows of the snapshot bootstrap, already in COPY's text format: one COPY, sent in pieces of [`COPY_CHUNK`].
    async fn copy_batch(
        &mut self,
        client: &Client,
        pos: Position,
        target: &TableRef,
        batch: pgm_common::envelope::CopyBatch,
    ) -> Result<(), ApplyError> {
        use futures::SinkExt;
        let columns: Vec<String> = batch.columns.iter().map(|c| quote_ident(&c.name)).collect();
        let sql = format!("COPY {} ({}) FROM STDIN", target.quoted(), columns.join(", "));
        let started = std::time::Instant::now();
        let failed = |e: tokio_postgres::Error| statement_error(e, "copy", target, &[], pos, pos);
        let sink = client.copy_in::<_, bytes::Bytes>(&sql).await.map_err(failed)?;
        futures::pin_mut!(sink);
        let text = bytes::Bytes::from(batch.text.into_bytes());
        let mut at = 0;
        while at < text.len() {
            let end = (at + COPY_CHUNK).min(text.len());
            sink.send(text.slice(at..end)).await.map_err(failed)?;
            at = end;
        }
        sink.as_mut().finish().await.map_err(failed)?;
        self.rows += batch.rows as usize;
        self.bytes += text.len();
        self.metrics.statement_seconds.observe(started.elapsed().as_secs_f64());
        self.metrics.batch_rows.observe(batch.rows as f64);
        self.metrics.rows.get_or_create(&crate::metrics::TableLabel::new(target)).inc_by(batch.rows);
        Ok(())
    }

    async fn sql(&mut self, client: &Client, batch: &Batch) -> Result<String, ApplyError> {
        let table = &batch.table;
        let target = self.catalog.table(client, table).await?;
        let t = table.quoted();
        let typed = |name: &str| target.type_of(table, name);
        let key_count = match batch.kind {
            Kind::Insert | Kind::Upsert => 0,
            _ => batch.key.len(),
        };
        let aliases: Vec<String> =
            (0..key_count).map(|i| format!("k{i}")).chain((0..batch.columns.len()).map(|i| format!("n{i}"))).collect();
        let unnest = format!(
            "unnest({}) AS v({})",
            (1..=aliases.len()).map(|i| format!("${i}::text[]")).collect::<Vec<_>>().join(", "),
            aliases.join(", ")
        );
        let cast =
            |alias: &str, column: &str| -> Result<String, ApplyError> { Ok(format!("v.{alias}::{}", typed(column)?)) };
        let mut sql = String::new();
        match batch.kind {
            Kind::Insert | Kind::Upsert => {
                let columns: Vec<String> = batch.columns.iter().map(|c| quote_ident(c)).collect();
                let values = batch
                    .columns
                    .iter()
                    .enumerate()
                    .map(|(i, c)| cast(&format!("n{i}"), c))
                    .collect::<Result<Vec<_>, _>>()?;
                write!(sql, "INSERT INTO {t} ({}) SELECT {} FROM {unnest}", columns.join(", "), values.join(", "))
                    .expect("write to String");
                if batch.kind == Kind::Upsert && !batch.key.is_empty() {
                    let key: Vec<String> = batch.key.iter().map(|c| quote_ident(c)).collect();
                    let set: Vec<String> = batch
                        .columns
                        .iter()
                        .filter(|c| !batch.key.contains(c))
                        .map(|c| format!("{0} = EXCLUDED.{0}", quote_ident(c)))
                        .collect();
                    if set.is_empty() {
                        write!(sql, " ON CONFLICT ({}) DO NOTHING", key.join(", ")).expect("write to String");
                    } else {
                        write!(sql, " ON CONFLICT ({}) DO UPDATE SET {}", key.join(", "), set.join(", "))
                            .expect("write to String");
                    }
                }
            }
            Kind::Update | Kind::Delete | Kind::RowUpdate | Kind::RowDelete => {
                let by_key = matches!(batch.kind, Kind::Update | Kind::Delete);
                let matches = batch
                    .key
                    .iter()
                    .enumerate()
                    .map(|(i, k)| {
                        Ok(if by_key {
                            format!("pgm_t.{} = {}", quote_ident(k), cast(&format!("k{i}"), k)?)
                        } else {
                            // A keyless table: compared as text, in the column's full type (catalog.rs says why).
                            let full = target.full_type_of(table, k)?;
                            format!("s.{}::text IS NOT DISTINCT FROM (v.k{i}::{full})::text", quote_ident(k))
                        })
                    })
                    .collect::<Result<Vec<_>, ApplyError>>()?
                    .join(" AND ");
                let condition = if by_key {
                    matches
                } else {
                    format!("pgm_t.ctid = (SELECT s.ctid FROM {t} AS s WHERE {matches} LIMIT 1)")
                };
                if matches!(batch.kind, Kind::Update | Kind::RowUpdate) {
                    let set = batch
                        .columns
                        .iter()
                        .enumerate()
                        .map(|(i, c)| Ok(format!("{} = {}", quote_ident(c), cast(&format!("n{i}"), c)?)))
                        .collect::<Result<Vec<_>, ApplyError>>()?;
                    write!(sql, "UPDATE {t} AS pgm_t SET {} FROM {unnest} WHERE {condition}", set.join(", "))
                        .expect("write to String");
                } else {
                    write!(sql, "DELETE FROM {t} AS pgm_t USING {unnest} WHERE {condition}").expect("write to String");
                }
            }
        }
        Ok(sql)
    }
}

/// Appends `text` to COPY's text format: backslash, newline, carriage return and tab escaped; everything else as
/// it is (the value is UTF-8 text, and a multi-byte character never contains these bytes).
fn copy_escape(text: &[u8], out: &mut bytes::BytesMut) {
    let mut start = 0;
    for (i, byte) in text.iter().enumerate() {
        let escaped: &[u8] = match byte {
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            _ => continue,
        };
        out.extend_from_slice(&text[start..i]);
        out.extend_from_slice(escaped);
        start = i + 1;
    }
    out.extend_from_slice(&text[start..]);
}

/// A row's column names and, column-major, its values.
fn split(row: Row) -> (Vec<String>, Vec<Vec<Option<String>>>) {
    row.0.into_iter().map(|c| (c.name, vec![Option::<String>::from(c.value)])).unzip()
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Insert => "insert",
        Kind::Upsert => "snapshot upsert",
        Kind::Update | Kind::RowUpdate => "update",
        Kind::Delete | Kind::RowDelete => "delete",
    }
}

fn batch_error(error: tokio_postgres::Error, batch: &Batch) -> ApplyError {
    statement_error(error, kind_name(batch.kind), &batch.table, &batch.key, batch.first, batch.last)
}

/// A failed statement, described by position, table, operation and key column names — never by row values (the
/// server's DETAIL line quotes them, so it is left out).
fn statement_error(
    error: tokio_postgres::Error,
    op: &str,
    table: &TableRef,
    key: &[String],
    first: Position,
    last: Position,
) -> ApplyError {
    let Some(db) = error.as_db_error() else { return ApplyError::db(error) };
    if crate::is_transient_sql_state(db.code().code()) {
        return ApplyError::db(error);
    }
    let mut sql_error = format!("{} {}", db.code().code(), db.message());
    if let Some(constraint) = db.constraint() {
        write!(sql_error, " (constraint {constraint})").expect("write to String");
    }
    if let Some(hint) = db.hint() {
        write!(sql_error, "; hint: {hint}").expect("write to String");
    }
    let at = if first == last { format!("{first}") } else { format!("{first} .. {last}") };
    ApplyError::Statement(Box::new(crate::StatementFailure {
        op: op.to_owned(),
        table: table.clone(),
        key: key.join(", "),
        at,
        sql_error,
        single: first == last,
        missing_row: false,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_text_escapes_exactly_its_four_bytes() {
        let mut out = bytes::BytesMut::new();
        copy_escape("a\\b\nc\rd\te \\x00ff é\\N".as_bytes(), &mut out);
        assert_eq!(&out[..], "a\\\\b\\nc\\rd\\te \\\\x00ff é\\\\N".as_bytes());
        let mut plain = bytes::BytesMut::new();
        copy_escape(b"", &mut plain);
        copy_escape("no escapes: ü €".as_bytes(), &mut plain);
        assert_eq!(&plain[..], "no escapes: ü €".as_bytes());
    }
}
