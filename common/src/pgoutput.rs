//! Decoder for PostgreSQL's built-in `pgoutput` plugin (logical replication protocol version 1, text values) → the
//! same [`Change`]s as [`crate::wal2json`], so the records, keys and envelopes do not depend on the decoder.
//!
//! ```text
//!   R relation (oid, schema, table, replica identity, columns: key flag, name, type oid, typmod)  → remembered
//!   B begin (final LSN, commit time, xid)                                  → Change::Begin  (final LSN = commit LSN)
//!   I/U/D relation oid + tuple(s) ('n' null | 'u' unchanged TOAST | 't' text)  → Change::Row
//!   T truncate (relation oids)                                             → one Change::Truncate per table
//!   M message (transactional flag, LSN, prefix, content)                   → Change::Message
//!   C commit (flags, commit LSN, end LSN, commit time)                     → Change::Commit
//!   O origin, Y type                                                       → nothing
//! ```
//!
//! Why it exists beside wal2json: every value is the type's own text output, so `NaN`, `Infinity` and `-Infinity`
//! arrive as themselves (wal2json 2.5 sends them as JSON null), and it needs no extension. What it does not carry that
//! the change model wants is looked up by the caller once per relation message: the type names
//! (`format_type(oid, typmod)`, as wal2json prints them) and the primary key ([`RelationInfo`]).
//!
//! Unchanged TOAST values (`u`) stay absent, exactly as wal2json leaves them out. Errors name the relation and the
//! column, never a value.

use std::collections::HashMap;

use crate::change::{Begin, Change, Column, Commit, Datum, Message, Row, RowChange, RowOp, TableRef, Truncate};
use crate::lsn::Lsn;

/// Seconds between the Unix epoch and PostgreSQL's epoch (2000-01-01).
const PG_EPOCH_UNIX_SECONDS: i64 = 946_684_800;

/// Options for `START_REPLICATION … LOGICAL … (…)`; `publication_names` is added by [`plugin_options`].
pub const PLUGIN_OPTIONS: &[(&str, &str)] = &[("proto_version", "1"), ("messages", "true")];

/// The plugin options for a publication name (quoted as an identifier list, as pgoutput parses it).
pub fn plugin_options(publication: &str) -> Vec<(String, String)> {
    let mut options: Vec<(String, String)> =
        PLUGIN_OPTIONS.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    options.push(("publication_names".into(), crate::change::quote_ident(publication)));
    options
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("truncated pgoutput message {tag:?} (needed {needed} more bytes); is the slot a pgoutput slot started with proto_version 1?")]
    Short { tag: char, needed: usize },
    #[error("unknown pgoutput message {tag:?}; this decoder knows protocol version 1 (B, C, R, I, U, D, T, M, O, Y)")]
    UnknownTag { tag: char },
    #[error("pgoutput sent a change for relation {oid} before describing it (no relation message in this session)")]
    UnknownRelation { oid: u32 },
    #[error("pgoutput sent tuple part {part:?} in a {message:?} message of {table}; expected {expected}")]
    BadTuple { table: TableRef, message: char, part: char, expected: &'static str },
    #[error("column {column:?} of {table} is not valid UTF-8; DB1's server_encoding must be UTF8")]
    NotUtf8 { table: TableRef, column: String },
    #[error("column {column:?} of {table} arrived in binary format; start the stream without the binary option")]
    Binary { table: TableRef, column: String },
    #[error("a {message:?} message of {table} has {got} columns, its relation message had {expected}")]
    ColumnCount { table: TableRef, message: char, got: usize, expected: usize },
    #[error("a pgoutput name or message prefix is not valid UTF-8")]
    BadString,
    #[error("a commit arrived outside a transaction")]
    CommitWithoutBegin,
}

/// One column of a relation message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationColumn {
    pub name: String,
    /// Part of the replica identity (the key pgoutput sends old values of).
    pub identity: bool,
    pub type_oid: u32,
    pub type_mod: i32,
}

/// A relation message as it arrived: what the caller must complete with catalog facts ([`RelationInfo`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    pub oid: u32,
    pub table: TableRef,
    /// `d` default (primary key), `n` nothing, `f` full, `i` index.
    pub replica_identity: u8,
    pub columns: Vec<RelationColumn>,
}

/// What the decoder learns from DB1's catalog for a relation message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationInfo {
    /// `format_type(oid, typmod)` per column, in the relation's column order.
    pub type_names: Vec<String>,
    /// Primary-key columns in key order (empty without one): the change model's `key_columns`, as wal2json's `pk`.
    pub key_columns: Vec<String>,
}

struct Known {
    relation: Relation,
    info: RelationInfo,
}

/// What one pgoutput message decodes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// Changes for the pipeline (a truncate of several tables gives several).
    Changes(Vec<Change>),
    /// A relation to describe: look up its [`RelationInfo`] and call [`Decoder::add_relation`] before the next message.
    Relation(Relation),
    /// Origin and type messages: nothing to carry.
    Nothing,
}

/// A stateful decoder: relation messages are sent once per session and relation, and the xid only with begin.
#[derive(Default)]
pub struct Decoder {
    relations: HashMap<u32, Known>,
    xid: Option<u32>,
    /// Replication origins whose transactions carry nothing (the other direction's apply, with fall-back).
    skip_origins: Vec<String>,
    /// The current transaction came from one of them: its changes are left out, its begin and commit are not.
    skipping: bool,
}

struct Reader<'a> {
    buf: &'a [u8],
    tag: char,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Short { tag: self.tag, needed: n - self.buf.len() });
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn i16(&mut self) -> Result<i16, DecodeError> {
        Ok(i16::from_be_bytes(self.take(2)?.try_into().expect("2 bytes")))
    }
    fn i32(&mut self) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
    fn i64(&mut self) -> Result<i64, DecodeError> {
        Ok(i64::from_be_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
    /// A NUL-terminated string.
    fn string(&mut self) -> Result<String, DecodeError> {
        let end = self.buf.iter().position(|&b| b == 0).ok_or(DecodeError::Short { tag: self.tag, needed: 1 })?;
        let text = std::str::from_utf8(&self.buf[..end]).map_err(|_| DecodeError::BadString)?.to_owned();
        self.buf = &self.buf[end + 1..];
        Ok(text)
    }
}

/// A tuple's cells as sent: `None` = unchanged TOAST (absent), `Some(Datum)` otherwise.
type Tuple = Vec<Option<Datum>>;

impl Decoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// A decoder that leaves out the changes of transactions replayed under these replication origins.
    pub fn skipping_origins(origins: Vec<String>) -> Self {
        Decoder { skip_origins: origins, ..Self::default() }
    }

    /// Completes a relation message with its catalog facts; later changes of that relation decode with them.
    pub fn add_relation(&mut self, relation: Relation, info: RelationInfo) {
        self.relations.insert(relation.oid, Known { relation, info });
    }

    /// Decodes one pgoutput message. `wal_start` (the XLogData header's position: the change's own LSN) becomes the
    /// row's `lsn`, as wal2json's per-change `lsn`.
    pub fn decode(&mut self, data: &[u8], wal_start: Lsn) -> Result<Decoded, DecodeError> {
        let Some((&tag, body)) = data.split_first() else {
            return Err(DecodeError::Short { tag: '?', needed: 1 });
        };
        let mut r = Reader { buf: body, tag: char::from(tag) };
        if self.skipping && matches!(tag, b'I' | b'U' | b'D' | b'T') {
            return Ok(Decoded::Nothing);
        }
        match tag {
            b'B' => {
                self.skipping = false;
                let commit_lsn = Lsn(r.u64()?);
                let time = r.i64()?;
                let xid = r.u32()?;
                self.xid = Some(xid);
                Ok(Decoded::Changes(vec![Change::Begin(Begin {
                    xid,
                    commit_lsn,
                    commit_time: Some(format_timestamp(time)),
                })]))
            }
            b'C' => {
                let _flags = r.u8()?;
                let commit_lsn = Lsn(r.u64()?);
                let end_lsn = Lsn(r.u64()?);
                let time = r.i64()?;
                let xid = self.xid.take().ok_or(DecodeError::CommitWithoutBegin)?;
                Ok(Decoded::Changes(vec![Change::Commit(Commit {
                    xid,
                    commit_lsn,
                    end_lsn,
                    commit_time: Some(format_timestamp(time)),
                })]))
            }
            b'R' => {
                let oid = r.u32()?;
                let schema = r.string()?;
                let table = r.string()?;
                let replica_identity = r.u8()?;
                let count = usize::try_from(r.i16()?).unwrap_or(0);
                let mut columns = Vec::with_capacity(count);
                for _ in 0..count {
                    let flags = r.u8()?;
                    let name = r.string()?;
                    let type_oid = r.u32()?;
                    let type_mod = r.i32()?;
                    columns.push(RelationColumn { name, identity: flags & 1 == 1, type_oid, type_mod });
                }
                // pgoutput sends an empty namespace for pg_catalog.
                let schema = if schema.is_empty() { "pg_catalog".to_owned() } else { schema };
                Ok(Decoded::Relation(Relation { oid, table: TableRef::new(schema, table), replica_identity, columns }))
            }
            b'I' | b'U' | b'D' => {
                let oid = r.u32()?;
                let known = self.relations.get(&oid).ok_or(DecodeError::UnknownRelation { oid })?;
                let table = &known.relation.table;
                let bad = |part: u8, expected| DecodeError::BadTuple {
                    table: table.clone(),
                    message: char::from(tag),
                    part: char::from(part),
                    expected,
                };
                let (op, old, new) = match tag {
                    b'I' => {
                        let part = r.u8()?;
                        if part != b'N' {
                            return Err(bad(part, "'N' (new tuple)"));
                        }
                        (RowOp::Insert, None, Some(tuple(&mut r, known, tag)?))
                    }
                    b'U' => {
                        let mut part = r.u8()?;
                        let mut old = None;
                        if matches!(part, b'K' | b'O') {
                            old = Some((part, tuple(&mut r, known, tag)?));
                            part = r.u8()?;
                        }
                        if part != b'N' {
                            return Err(bad(part, "'K', 'O' or 'N'"));
                        }
                        (RowOp::Update, old, Some(tuple(&mut r, known, tag)?))
                    }
                    _ => {
                        let part = r.u8()?;
                        if !matches!(part, b'K' | b'O') {
                            return Err(bad(part, "'K' (key) or 'O' (old row)"));
                        }
                        (RowOp::Delete, Some((part, tuple(&mut r, known, tag)?)), None)
                    }
                };
                Ok(Decoded::Changes(vec![Change::Row(row_change(known, op, old, new, wal_start))]))
            }
            b'T' => {
                let count = usize::try_from(r.i32()?).unwrap_or(0);
                let _options = r.u8()?;
                let mut changes = Vec::with_capacity(count);
                for _ in 0..count {
                    let oid = r.u32()?;
                    let known = self.relations.get(&oid).ok_or(DecodeError::UnknownRelation { oid })?;
                    changes
                        .push(Change::Truncate(Truncate { table: known.relation.table.clone(), lsn: Some(wal_start) }));
                }
                Ok(Decoded::Changes(changes))
            }
            b'M' => {
                let flags = r.u8()?;
                if self.skipping && flags & 1 == 1 {
                    return Ok(Decoded::Nothing);
                }
                let lsn = Lsn(r.u64()?);
                let prefix = r.string()?;
                let len = usize::try_from(r.i32()?).unwrap_or(0);
                let content = String::from_utf8(r.take(len)?.to_vec()).map_err(|_| DecodeError::BadString)?;
                Ok(Decoded::Changes(vec![Change::Message(Message {
                    transactional: flags & 1 == 1,
                    prefix,
                    content,
                    lsn,
                })]))
            }
            b'O' => {
                let _origin_lsn = r.u64()?;
                let name = r.string()?;
                self.skipping = self.skip_origins.contains(&name);
                Ok(Decoded::Nothing)
            }
            b'Y' => Ok(Decoded::Nothing),
            other => Err(DecodeError::UnknownTag { tag: char::from(other) }),
        }
    }
}

/// Reads a TupleData: a column count, then per column `n`, `u` or `t` + length + text.
fn tuple(r: &mut Reader<'_>, known: &Known, tag: u8) -> Result<Tuple, DecodeError> {
    let table = &known.relation.table;
    let count = usize::try_from(r.i16()?).unwrap_or(0);
    if count != known.relation.columns.len() {
        return Err(DecodeError::ColumnCount {
            table: table.clone(),
            message: char::from(tag),
            got: count,
            expected: known.relation.columns.len(),
        });
    }
    let mut cells = Vec::with_capacity(count);
    for column in &known.relation.columns {
        cells.push(match r.u8()? {
            b'n' => Some(Datum::Null),
            b'u' => None,
            b't' => {
                let len = usize::try_from(r.i32()?).unwrap_or(0);
                let bytes = r.take(len)?;
                let text = std::str::from_utf8(bytes)
                    .map_err(|_| DecodeError::NotUtf8 { table: table.clone(), column: column.name.clone() })?;
                Some(Datum::Text(text.to_owned()))
            }
            b'b' => return Err(DecodeError::Binary { table: table.clone(), column: column.name.clone() }),
            other => {
                return Err(DecodeError::BadTuple {
                    table: table.clone(),
                    message: char::from(tag),
                    part: char::from(other),
                    expected: "'n', 'u' or 't' for a column",
                })
            }
        });
    }
    Ok(cells)
}

/// The row of the columns selected by `keep`, leaving out unchanged-TOAST cells.
fn row_of(known: &Known, cells: Tuple, keep: impl Fn(usize, &RelationColumn) -> bool) -> Row {
    Row(known
        .relation
        .columns
        .iter()
        .zip(cells)
        .enumerate()
        .filter(|(i, (column, _))| keep(*i, column))
        .filter_map(|(i, (column, cell))| {
            cell.map(|value| Column {
                name: column.name.clone(),
                type_name: known.info.type_names.get(i).cloned().unwrap_or_default(),
                type_oid: column.type_oid,
                value,
            })
        })
        .collect())
}

/// Builds the change as wal2json would: an update's or delete's identity is the old key ('K': only the replica
/// identity columns), the whole old row ('O': REPLICA IDENTITY FULL), or — when the key did not change and pgoutput
/// sent no old tuple — the replica identity columns of the new row.
fn row_change(known: &Known, op: RowOp, old: Option<(u8, Tuple)>, new: Option<Tuple>, lsn: Lsn) -> RowChange {
    let identity_column = |_: usize, c: &RelationColumn| c.identity;
    let new_row = new.map(|cells| row_of(known, cells, |_, _| true));
    let identity = match (op, old) {
        (RowOp::Insert, _) => None,
        (_, Some((b'K', cells))) => Some(row_of(known, cells, identity_column)),
        (_, Some((_, cells))) => Some(row_of(known, cells, |_, _| true)),
        (_, None) => {
            let identity_names: Vec<&str> =
                known.relation.columns.iter().filter(|c| c.identity).map(|c| c.name.as_str()).collect();
            let from_new = new_row
                .as_ref()
                .map(|row| Row(row.0.iter().filter(|c| identity_names.contains(&c.name.as_str())).cloned().collect()));
            Some(from_new.unwrap_or_default())
        }
    };
    RowChange {
        op,
        table: known.relation.table.clone(),
        key_columns: known.info.key_columns.clone(),
        new: new_row.unwrap_or_default(),
        identity,
        lsn: Some(lsn),
    }
}

/// PostgreSQL's text output of a timestamptz in UTC (`2026-11-25 21:24:32.251444+00`), from microseconds since
/// 2000-01-01 — what wal2json prints for the same commit.
pub fn format_timestamp(pg_micros: i64) -> String {
    crate::pgtime::utc_timestamptz(pg_micros.saturating_add(PG_EPOCH_UNIX_SECONDS * 1_000_000)).1
}

/// The catalog query that completes a relation message: type names for the (oid, typmod) pairs and the primary key
/// of the relation, read on an ordinary connection to DB1.
pub const RELATION_INFO_SQL: &str = "
SELECT ARRAY(SELECT format_type(u.t, u.m) FROM unnest($1::oid[], $2::int4[]) WITH ORDINALITY AS u(t, m, i) ORDER BY u.i),
       ARRAY(SELECT a.attname::text FROM pg_index x
             JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = ANY (x.indkey)
             WHERE x.indrelid = $3::oid AND x.indisprimary
             ORDER BY array_position(x.indkey::int2[], a.attnum))";

/// Runs [`RELATION_INFO_SQL`] for a relation message.
pub async fn relation_info(
    client: &tokio_postgres::Client,
    relation: &Relation,
) -> Result<RelationInfo, tokio_postgres::Error> {
    let oids: Vec<u32> = relation.columns.iter().map(|c| c.type_oid).collect();
    let mods: Vec<i32> = relation.columns.iter().map(|c| c.type_mod).collect();
    let row = client.query_one(RELATION_INFO_SQL, &[&oids, &mods, &relation.oid]).await?;
    let type_names: Vec<String> = row.get(0);
    let mut key_columns: Vec<String> = row.get(1);
    if key_columns.is_empty() && relation.replica_identity == b'd' {
        // The table is gone from today's catalog: the replica identity flags of a default identity are its key.
        key_columns = relation.columns.iter().filter(|c| c.identity).map(|c| c.name.clone()).collect();
    }
    Ok(RelationInfo { type_names, key_columns })
}

/// Why the publication is not usable.
#[derive(Debug, thiserror::Error)]
pub enum PublicationError {
    #[error("{what}: {source}")]
    Db {
        what: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("{0}")]
    Mismatch(String),
}

/// With pgoutput: creates the publication for the configured tables (all tables without `tables.include`) when it
/// is missing, and checks that an existing one publishes every operation of every configured table. It must exist
/// before the slot: pgoutput reads it in the catalog as of each change's transaction.
pub async fn ensure_publication(
    client: &tokio_postgres::Client,
    config: &crate::config::PipelineConfig,
) -> Result<(), PublicationError> {
    if config.capture.decoder != crate::config::Decoder::Pgoutput {
        return Ok(());
    }
    let name = config.publication();
    let quoted = crate::change::quote_ident(&name);
    let tables = config.tables();
    let sql_err = |what: String| move |source| PublicationError::Db { what, source };
    // Publishing a table without replica identity makes DB1 refuse the application's updates and deletes of it.
    let missing = crate::identity::tables_without_identity(client, &tables)
        .await
        .map_err(sql_err("read the replica identity of the replicated tables".into()))?;
    if let Some(problem) = crate::identity::refusal(&missing) {
        return Err(PublicationError::Mismatch(problem));
    }
    let row = client
        .query_opt(
            "SELECT puballtables, pubinsert AND pubupdate AND pubdelete AND pubtruncate FROM pg_publication WHERE pubname = $1",
            &[&name],
        )
        .await
        .map_err(sql_err("read pg_publication".into()))?;
    let Some(row) = row else {
        let target = if tables.is_empty() {
            "ALL TABLES".to_owned()
        } else {
            format!("TABLE {}", tables.iter().map(|t| t.quoted()).collect::<Vec<_>>().join(", "))
        };
        client
            .batch_execute(&format!("CREATE PUBLICATION {quoted} FOR {target}"))
            .await
            .map_err(sql_err(format!("create publication {quoted} (capture.publication) on DB1")))?;
        tracing::info!(publication = %name, tables = tables.len(), "publication created");
        return Ok(());
    };
    let (all_tables, every_op): (bool, bool) = (row.get(0), row.get(1));
    if !every_op {
        return Err(PublicationError::Mismatch(format!(
            "publication {quoted} (capture.publication) does not publish every operation: \
             ALTER PUBLICATION {quoted} SET (publish = 'insert, update, delete, truncate');"
        )));
    }
    if all_tables {
        return Ok(());
    }
    if tables.is_empty() {
        return Err(PublicationError::Mismatch(format!(
            "publication {quoted} (capture.publication) lists tables, but tables.include is empty (every table): \
             list the tables in tables.include, or use a publication FOR ALL TABLES"
        )));
    }
    let published: Vec<(String, String)> = client
        .query("SELECT schemaname::text, tablename::text FROM pg_publication_tables WHERE pubname = $1", &[&name])
        .await
        .map_err(sql_err("read pg_publication_tables".into()))?
        .into_iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let missing: Vec<String> = tables
        .iter()
        .filter(|t| !published.iter().any(|(s, n)| *s == t.schema && *n == t.table))
        .map(|t| t.quoted())
        .collect();
    if !missing.is_empty() {
        return Err(PublicationError::Mismatch(format!(
            "publication {quoted} (capture.publication) lacks {}: ALTER PUBLICATION {quoted} ADD TABLE {}; then \
             bootstrap those tables (their changes before this point were not published)",
            missing.join(", "),
            missing.join(", ")
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relation_message() -> Vec<u8> {
        let mut m = vec![b'R'];
        m.extend(16_384u32.to_be_bytes());
        m.extend(b"Sales\0Order Items\0");
        m.push(b'd');
        m.extend(2i16.to_be_bytes());
        m.push(1);
        m.extend(b"id\0");
        m.extend(23u32.to_be_bytes());
        m.extend((-1i32).to_be_bytes());
        m.push(0);
        m.extend(b"body\0");
        m.extend(25u32.to_be_bytes());
        m.extend((-1i32).to_be_bytes());
        m
    }

    fn decoder() -> Decoder {
        let mut d = Decoder::new();
        let Decoded::Relation(rel) = d.decode(&relation_message(), Lsn(1)).unwrap() else { panic!("relation") };
        assert_eq!(rel.table, TableRef::new("Sales", "Order Items"));
        assert!(rel.columns[0].identity && !rel.columns[1].identity);
        d.add_relation(
            rel,
            RelationInfo { type_names: vec!["integer".into(), "text".into()], key_columns: vec!["id".into()] },
        );
        d
    }

    fn text(s: &str) -> Vec<u8> {
        let mut v = vec![b't'];
        v.extend((s.len() as i32).to_be_bytes());
        v.extend(s.as_bytes());
        v
    }

    #[test]
    fn update_with_unchanged_toast_keeps_it_absent_and_takes_identity_from_the_new_row() {
        let mut d = decoder();
        let mut m = vec![b'U'];
        m.extend(16_384u32.to_be_bytes());
        m.push(b'N');
        m.extend(2i16.to_be_bytes());
        m.extend(text("7"));
        m.push(b'u');
        let Decoded::Changes(changes) = d.decode(&m, Lsn(9)).unwrap() else { panic!() };
        let Change::Row(row) = &changes[0] else { panic!() };
        assert_eq!(row.op, RowOp::Update);
        assert_eq!(row.new.0.len(), 1, "the unchanged TOAST column is absent");
        assert_eq!(row.identity.as_ref().unwrap().get("id"), crate::change::Cell::Value("7"));
        assert_eq!(row.key_columns, vec!["id".to_owned()]);
        assert_eq!(row.lsn, Some(Lsn(9)));
    }

    #[test]
    fn a_transaction_from_a_skipped_origin_keeps_its_begin_and_commit_and_loses_its_changes() {
        let mut d = decoder();
        d.skip_origins = vec!["pgm_back".into()];
        let begin = |xid: u32| {
            let mut m = vec![b'B'];
            m.extend(100u64.to_be_bytes());
            m.extend(0i64.to_be_bytes());
            m.extend(xid.to_be_bytes());
            m
        };
        let origin = |name: &str| {
            let mut m = vec![b'O'];
            m.extend(5u64.to_be_bytes());
            m.extend(name.as_bytes());
            m.push(0);
            m
        };
        let insert = || {
            let mut m = vec![b'I'];
            m.extend(16_384u32.to_be_bytes());
            m.push(b'N');
            m.extend(2i16.to_be_bytes());
            m.extend(text("7"));
            m.extend(text("x"));
            m
        };
        let commit = || {
            let mut m = vec![b'C', 0];
            m.extend(100u64.to_be_bytes());
            m.extend(120u64.to_be_bytes());
            m.extend(0i64.to_be_bytes());
            m
        };
        let mut rows = Vec::new();
        for (xid, from) in [(1, Some("pgm_back")), (2, Some("elsewhere")), (3, None), (4, Some("pgm_back"))] {
            assert!(matches!(d.decode(&begin(xid), Lsn(1)).unwrap(), Decoded::Changes(_)));
            if let Some(name) = from {
                assert_eq!(d.decode(&origin(name), Lsn(1)).unwrap(), Decoded::Nothing);
            }
            if let Decoded::Changes(changes) = d.decode(&insert(), Lsn(2)).unwrap() {
                rows.extend(changes.into_iter().map(|_| xid));
            }
            let Decoded::Changes(end) = d.decode(&commit(), Lsn(3)).unwrap() else { panic!("commit") };
            assert!(matches!(end[..], [Change::Commit(_)]), "every commit is carried");
        }
        assert_eq!(rows, vec![2, 3], "only the skipped origin's changes are left out");
    }

    #[test]
    fn delete_by_key_keeps_only_the_identity_columns() {
        let mut d = decoder();
        let mut m = vec![b'D'];
        m.extend(16_384u32.to_be_bytes());
        m.push(b'K');
        m.extend(2i16.to_be_bytes());
        m.extend(text("7"));
        m.push(b'n');
        let Decoded::Changes(changes) = d.decode(&m, Lsn(9)).unwrap() else { panic!() };
        let Change::Row(row) = &changes[0] else { panic!() };
        assert_eq!(row.identity.as_ref().unwrap().0.len(), 1);
        assert!(row.new.is_empty());
    }

    #[test]
    fn errors_name_the_table_and_never_the_value() {
        let mut d = decoder();
        let mut m = vec![b'I'];
        m.extend(16_384u32.to_be_bytes());
        m.push(b'N');
        m.extend(2i16.to_be_bytes());
        m.extend(text("7"));
        m.extend([b't', 0, 0, 0, 2, 0xff, 0xfe]);
        let err = d.decode(&m, Lsn(1)).unwrap_err();
        assert_eq!(err, DecodeError::NotUtf8 { table: TableRef::new("Sales", "Order Items"), column: "body".into() });
        let mut unknown = vec![b'I'];
        unknown.extend(5u32.to_be_bytes());
        assert_eq!(d.decode(&unknown, Lsn(1)).unwrap_err(), DecodeError::UnknownRelation { oid: 5 });
        assert!(matches!(d.decode(b"B\0\0", Lsn(1)), Err(DecodeError::Short { tag: 'B', .. })));
    }

    #[test]
    fn timestamps_print_as_postgres_does_in_utc() {
        assert_eq!(format_timestamp(0), "2000-01-01 00:00:00+00");
        assert_eq!(format_timestamp(-1), "1999-12-31 23:59:59.999999+00");
        assert_eq!(format_timestamp(848_006_672_251_400), "2026-11-14 21:24:32.2514+00");
        assert_eq!(format_timestamp(60 * 86_400_000_000), "2000-03-01 00:00:00+00");
    }
}
