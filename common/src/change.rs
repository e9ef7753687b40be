//! The change model: what the pipeline carries, independent of the logical decoding plugin that produced it.
//!
//! wal2json (format-version 2) is the decoder today ([`crate::wal2json`]); pgoutput must be able to produce the same
//! values later, so everything here is in PostgreSQL's own terms:
//! - values are PostgreSQL's **text output** of the datum (`t`/`f` for booleans, `\x…` for bytea, the exact digits of
//!   a numeric), never a float or a re-rendered JSON value;
//! - a column that the server did not send (an unchanged TOAST value in an UPDATE) is **absent** from the row, which
//!   is not the same as a column that is NULL — see [`Cell`].

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::lsn::Lsn;

/// A source or target table. Displays quoted (`"Sales Dept"."Order ""Items"""`) so log lines are unambiguous.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TableRef {
    pub schema: String,
    pub table: String,
}

impl TableRef {
    pub fn new(schema: impl Into<String>, table: impl Into<String>) -> Self {
        TableRef { schema: schema.into(), table: table.into() }
    }

    /// `"schema"."table"`, safe to splice into SQL.
    pub fn quoted(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.table))
    }
}

impl fmt::Display for TableRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.quoted())
    }
}

/// Quotes an SQL identifier the way PostgreSQL's `quote_ident` does when quoting is needed, but always.
pub fn quote_ident(ident: &str) -> String {
    let mut out = String::with_capacity(ident.len() + 2);
    out.push('"');
    for ch in ident.chars() {
        if ch == '"' {
            out.push('"');
        }
        out.push(ch);
    }
    out.push('"');
    out
}

/// A column value in PostgreSQL's text representation.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(from = "Option<String>")]
pub enum Datum {
    Null,
    Text(String),
}

impl From<Option<String>> for Datum {
    fn from(value: Option<String>) -> Self {
        value.map_or(Datum::Null, Datum::Text)
    }
}

impl From<Datum> for Option<String> {
    fn from(value: Datum) -> Self {
        match value {
            Datum::Null => None,
            Datum::Text(text) => Some(text),
        }
    }
}

/// As `Option<String>` (`null` or a string), without the copy that `#[serde(into)]` makes of every value.
impl Serialize for Datum {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Datum::Null => serializer.serialize_none(),
            Datum::Text(text) => serializer.serialize_some(text),
        }
    }
}

impl Datum {
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Datum::Null => None,
            Datum::Text(text) => Some(text),
        }
    }
}

/// One column of a row as the source sent it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Column {
    pub name: String,
    /// The type as the source prints it, with its modifier (`numeric(40,10)`, `character varying(20)`, `text[]`).
    #[serde(rename = "type")]
    pub type_name: String,
    /// The type's OID in the source database; 0 when the decoder did not say.
    #[serde(rename = "oid", default)]
    pub type_oid: u32,
    pub value: Datum,
}

/// What a row holds for a column: [`Cell::Absent`] (not sent: an unchanged TOAST value) is not [`Cell::Null`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cell<'a> {
    Absent,
    Null,
    Value(&'a str),
}

/// The columns a change carries, in source column order. Columns the source did not send are simply not here.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Row(pub Vec<Column>);

impl Row {
    pub fn get(&self, name: &str) -> Cell<'_> {
        match self.0.iter().find(|c| c.name == name) {
            None => Cell::Absent,
            Some(Column { value: Datum::Null, .. }) => Cell::Null,
            Some(Column { value: Datum::Text(text), .. }) => Cell::Value(text),
        }
    }

    pub fn columns(&self) -> &[Column] {
        &self.0
    }

    /// Bytes of the names and values' text: what a record of this row carries, less its JSON syntax.
    pub fn text_bytes(&self) -> usize {
        self.0.iter().map(|c| c.name.len() + c.value.as_text().map_or(4, str::len)).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RowOp {
    Insert,
    Update,
    Delete,
}

impl fmt::Display for RowOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RowOp::Insert => "insert",
            RowOp::Update => "update",
            RowOp::Delete => "delete",
        })
    }
}

/// An insert, update or delete of one row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RowChange {
    pub op: RowOp,
    pub table: TableRef,
    /// Primary-key column names (empty for a table without one).
    pub key_columns: Vec<String>,
    /// The new row: every column for an insert, the sent columns for an update, empty for a delete.
    pub new: Row,
    /// The old row's replica identity: the key (or, with REPLICA IDENTITY FULL, the whole old row) for updates and
    /// deletes; `None` for inserts.
    pub identity: Option<Row>,
    /// WAL location of the change itself. Not ordered across transactions: order by [`crate::Position`].
    pub lsn: Option<Lsn>,
}

impl RowChange {
    /// The row that identifies the changed row in the target: the old identity when there is one, else the new row.
    pub fn key_row(&self) -> &Row {
        self.identity.as_ref().unwrap_or(&self.new)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Begin {
    pub xid: u32,
    /// LSN of the transaction's commit record: the first half of every position in it.
    pub commit_lsn: Lsn,
    /// Commit time as the source prints it (`2026-11-25 21:24:32.251444+00`).
    pub commit_time: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Commit {
    pub xid: u32,
    pub commit_lsn: Lsn,
    /// The end of the transaction's WAL: what capture may confirm as flushed once the transaction is durable.
    pub end_lsn: Lsn,
    pub commit_time: Option<String>,
}

/// A TRUNCATE of one table (a statement truncating several tables, or cascading, yields one per table).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Truncate {
    pub table: TableRef,
    pub lsn: Option<Lsn>,
}

/// A logical decoding message (`pg_logical_emit_message`). Cutover markers are transactional messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub transactional: bool,
    pub prefix: String,
    pub content: String,
    pub lsn: Lsn,
}

/// One decoded unit of the change stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Begin(Begin),
    Commit(Commit),
    Row(RowChange),
    Truncate(Truncate),
    Message(Message),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_doubles_quotes_and_keeps_everything_else() {
        assert_eq!(quote_ident("Order \"Items\" Ü"), "\"Order \"\"Items\"\" Ü\"");
        assert_eq!(TableRef::new("Sales Dept", "x").to_string(), "\"Sales Dept\".\"x\"");
    }

    #[test]
    fn absent_is_not_null() {
        let row = Row(vec![
            Column { name: "a".into(), type_name: "text".into(), type_oid: 25, value: Datum::Null },
            Column { name: "b".into(), type_name: "text".into(), type_oid: 25, value: Datum::Text("x".into()) },
        ]);
        assert_eq!(row.get("a"), Cell::Null);
        assert_eq!(row.get("b"), Cell::Value("x"));
        assert_eq!(row.get("c"), Cell::Absent);
    }

    #[test]
    fn datum_serializes_as_nullable_string() {
        assert_eq!(serde_json::to_string(&Datum::Null).unwrap(), "null");
        assert_eq!(serde_json::to_string(&Datum::Text("1.50".into())).unwrap(), "\"1.50\"");
        assert_eq!(serde_json::from_str::<Datum>("null").unwrap(), Datum::Null);
    }
}
