//! Decoder for wal2json `format-version 2`: one JSON object per message → one [`Change`].
//!
//! ```text
//! {"action":"I","xid":735,"lsn":"0/154BFF8","schema":"public","table":"kinds",
//!  "columns":[{"name":"id","type":"bigint","typeoid":20,"value":1}, ...],"pk":[...]}   →  Change::Row(RowChange)
//! ```
//!
//! What wal2json 2.5 does that the model must undo or keep (all seen in `tests/fixtures/wal2json-v2.jsonl`):
//! - numbers are bare JSON numbers: their text is kept byte for byte (30-digit numerics stay exact);
//! - booleans are `true`/`false`: mapped to PostgreSQL's text output `t`/`f`;
//! - bytea is hex *without* the `\x` prefix: the prefix is restored so the value is PostgreSQL text again;
//! - numeric and float `NaN`/`Infinity` arrive as JSON `null`, indistinguishable from SQL NULL — a wal2json limit
//!   that `pgm-capture check` must report for such columns; this decoder cannot recover them;
//! - unchanged TOAST columns are missing from an update's `columns`: they stay absent;
//! - a type name that `format_type` prints with quotes is written **without JSON escaping** (`"type":"Sales
//!   Dept".kind,…`, invalid JSON, for any type in a schema or with a name that needs quoting): [`decode`] re-encodes
//!   such `type` tokens and parses again, never touching a value.
//!
//! Errors never quote the message: it holds row values.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::change::{Begin, Change, Column, Commit, Datum, Message, Row, RowChange, RowOp, TableRef, Truncate};
use crate::lsn::Lsn;

/// `bytea`'s type OID: its text form needs the `\x` prefix wal2json drops.
const BYTEA_OID: u32 = 17;

/// Options for `START_REPLICATION` / `pg_logical_slot_get_changes` that produce what this decoder expects.
pub const PLUGIN_OPTIONS: &[(&str, &str)] = &[
    ("format-version", "2"),
    ("include-xids", "1"),
    ("include-lsn", "1"),
    ("include-timestamp", "1"),
    ("include-pk", "1"),
    ("include-type-oids", "1"),
];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("malformed wal2json message ({category} at byte {column} of line {line}); was the slot created with wal2json and started with format-version 2?")]
    Json { category: &'static str, line: usize, column: usize },
    #[error("wal2json action {action:?} lacks field `{field}`; start the stream with the options in wal2json::PLUGIN_OPTIONS (include-xids, include-lsn, include-pk, include-type-oids)")]
    MissingField { action: String, field: &'static str },
    #[error("wal2json action {action:?} has an invalid LSN in `{field}`")]
    BadLsn { action: String, field: &'static str },
    #[error("column {column:?} of {table} has a value that is neither a string, a number, a boolean nor null")]
    BadValue { table: TableRef, column: String },
    #[error("unknown wal2json action {action:?}; this decoder knows B, C, I, U, D, T and M of format-version 2")]
    UnknownAction { action: String },
}

impl From<serde_json::Error> for DecodeError {
    fn from(err: serde_json::Error) -> Self {
        // serde's message can quote input (row values): keep only where and what kind.
        let category = match err.classify() {
            serde_json::error::Category::Io => "i/o error",
            serde_json::error::Category::Syntax => "syntax error",
            serde_json::error::Category::Data => "unexpected field type",
            serde_json::error::Category::Eof => "truncated input",
        };
        DecodeError::Json { category, line: err.line(), column: err.column() }
    }
}

#[derive(Deserialize)]
struct WireMessage<'a> {
    #[serde(borrow)]
    action: Cow<'a, str>,
    xid: Option<u32>,
    #[serde(borrow)]
    timestamp: Option<Cow<'a, str>>,
    #[serde(borrow)]
    lsn: Option<Cow<'a, str>>,
    #[serde(borrow)]
    nextlsn: Option<Cow<'a, str>>,
    #[serde(borrow)]
    schema: Option<Cow<'a, str>>,
    #[serde(borrow)]
    table: Option<Cow<'a, str>>,
    #[serde(borrow)]
    columns: Option<Vec<WireColumn<'a>>>,
    #[serde(borrow)]
    identity: Option<Vec<WireColumn<'a>>>,
    #[serde(borrow)]
    pk: Option<Vec<WireKey<'a>>>,
    transactional: Option<bool>,
    #[serde(borrow)]
    prefix: Option<Cow<'a, str>>,
    #[serde(borrow)]
    content: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct WireColumn<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
    #[serde(borrow, rename = "type")]
    type_name: Cow<'a, str>,
    typeoid: Option<u32>,
    #[serde(borrow)]
    value: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct WireKey<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
}

/// Decodes one wal2json format-version 2 message.
pub fn decode(json: &[u8]) -> Result<Change, DecodeError> {
    // UTF-8 is checked once for the whole message rather than string by string (serde_json's byte reader), which
    // was 8 % of capture's main thread on the pgbench backlog.
    let parsed = match std::str::from_utf8(json) {
        Ok(text) => serde_json::from_str::<WireMessage<'_>>(text),
        Err(err) => {
            return Err(DecodeError::Json { category: "invalid UTF-8", line: 1, column: err.valid_up_to() + 1 })
        }
    };
    match parsed {
        Ok(msg) => decode_message(msg),
        Err(err) if err.classify() == serde_json::error::Category::Syntax => match escape_type_names(json) {
            Some(repaired) => decode_message(serde_json::from_slice(&repaired)?),
            None => Err(err.into()),
        },
        Err(err) => Err(err.into()),
    }
}

/// wal2json 2.5 writes a type name that `format_type` printed with quotes (`"Mood"`, `"Sales Dept".kind`) as is,
/// without JSON escaping: `"type":"Sales Dept".kind,"typeoid":…` is not JSON. Every `type` field is followed by
/// `,"typeoid":` (capture always sets include-type-oids), so the raw token in between is re-encoded as a JSON
/// string when it is not one already. Values are never touched: a `"type":` with unescaped quotes cannot occur
/// inside a JSON string, and a type name that itself held `,"typeoid":` would leave the message invalid (an error,
/// never a shifted value). Returns `None` when nothing needed repair.
fn escape_type_names(json: &[u8]) -> Option<Vec<u8>> {
    const FIELD: &[u8] = b"\"type\":";
    const NEXT: &[u8] = b",\"typeoid\":";
    let find = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).position(|w| w == needle);
    let mut out = Vec::with_capacity(json.len() + 16);
    let mut rest = json;
    let mut changed = false;
    while let Some(at) = find(rest, FIELD) {
        let start = at + FIELD.len();
        out.extend_from_slice(&rest[..start]);
        let tail = &rest[start..];
        let end = find(tail, NEXT)?;
        let token = &tail[..end];
        if serde_json::from_slice::<&RawValue>(token).is_ok_and(|v| v.get().starts_with('"')) {
            out.extend_from_slice(token);
        } else {
            let text = std::str::from_utf8(token).ok()?;
            out.extend_from_slice(serde_json::to_string(text).ok()?.as_bytes());
            changed = true;
        }
        rest = &tail[end..];
    }
    out.extend_from_slice(rest);
    changed.then_some(out)
}

fn decode_message(msg: WireMessage<'_>) -> Result<Change, DecodeError> {
    let action = msg.action.as_ref();
    let missing = |field: &'static str| DecodeError::MissingField { action: action.to_owned(), field };
    let lsn_of = |field: &'static str, value: &Option<Cow<'_, str>>| -> Result<Lsn, DecodeError> {
        value
            .as_deref()
            .ok_or_else(|| missing(field))?
            .parse()
            .map_err(|_| DecodeError::BadLsn { action: action.to_owned(), field })
    };
    let table = || -> Result<TableRef, DecodeError> {
        Ok(TableRef {
            schema: msg.schema.as_deref().ok_or_else(|| missing("schema"))?.to_owned(),
            table: msg.table.as_deref().ok_or_else(|| missing("table"))?.to_owned(),
        })
    };

    match action {
        "B" => Ok(Change::Begin(Begin {
            xid: msg.xid.ok_or_else(|| missing("xid"))?,
            commit_lsn: lsn_of("lsn", &msg.lsn)?,
            commit_time: msg.timestamp.map(Cow::into_owned),
        })),
        "C" => Ok(Change::Commit(Commit {
            xid: msg.xid.ok_or_else(|| missing("xid"))?,
            commit_lsn: lsn_of("lsn", &msg.lsn)?,
            end_lsn: lsn_of("nextlsn", &msg.nextlsn)?,
            commit_time: msg.timestamp.map(Cow::into_owned),
        })),
        "I" | "U" | "D" => {
            let op = match action {
                "I" => RowOp::Insert,
                "U" => RowOp::Update,
                _ => RowOp::Delete,
            };
            let table = table()?;
            let new = match (op, &msg.columns) {
                (RowOp::Delete, _) => Row::default(),
                (_, Some(columns)) => row(&table, columns)?,
                (_, None) => return Err(missing("columns")),
            };
            let identity = match (op, &msg.identity) {
                (RowOp::Insert, _) => None,
                (_, Some(identity)) => Some(row(&table, identity)?),
                (_, None) => return Err(missing("identity")),
            };
            let key_columns = msg.pk.ok_or_else(|| missing("pk"))?.into_iter().map(|k| k.name.into_owned()).collect();
            Ok(Change::Row(RowChange {
                op,
                table,
                key_columns,
                new,
                identity,
                lsn: msg.lsn.as_ref().map(|_| lsn_of("lsn", &msg.lsn)).transpose()?,
            }))
        }
        "T" => Ok(Change::Truncate(Truncate {
            table: table()?,
            lsn: msg.lsn.as_ref().map(|_| lsn_of("lsn", &msg.lsn)).transpose()?,
        })),
        "M" => Ok(Change::Message(Message {
            transactional: msg.transactional.ok_or_else(|| missing("transactional"))?,
            prefix: msg.prefix.ok_or_else(|| missing("prefix"))?.into_owned(),
            content: msg.content.ok_or_else(|| missing("content"))?.into_owned(),
            lsn: lsn_of("lsn", &msg.lsn)?,
        })),
        other => Err(DecodeError::UnknownAction { action: other.to_owned() }),
    }
}

fn row(table: &TableRef, columns: &[WireColumn<'_>]) -> Result<Row, DecodeError> {
    columns
        .iter()
        .map(|c| {
            let type_oid = c.typeoid.unwrap_or(0);
            let is_bytea = type_oid == BYTEA_OID || (type_oid == 0 && c.type_name == "bytea");
            let value = match c.value {
                None => Datum::Null,
                Some(raw) => Datum::Text(text_value(raw, is_bytea).ok_or_else(|| DecodeError::BadValue {
                    table: table.clone(),
                    column: c.name.clone().into_owned(),
                })?),
            };
            Ok(Column {
                name: c.name.clone().into_owned(),
                type_name: c.type_name.clone().into_owned(),
                type_oid,
                value,
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Row)
}

/// PostgreSQL's text form of a wal2json value; `None` when the JSON is not a scalar.
fn text_value(raw: &RawValue, is_bytea: bool) -> Option<String> {
    let json = raw.get();
    match json.as_bytes().first()? {
        b'"' => {
            let text: String = serde_json::from_str(json).ok()?;
            Some(if is_bytea { format!("\\x{text}") } else { text })
        }
        b't' if json == "true" => Some("t".to_owned()),
        b'f' if json == "false" => Some("f".to_owned()),
        b'-' | b'0'..=b'9' => Some(json.to_owned()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_do_not_quote_values() {
        let err = decode(br#"{"action":"I","xid":"secret-value"}"#).unwrap_err();
        assert!(!err.to_string().contains("secret"), "{err}");
        let err = decode(br#"{"action":"I","xid":1,"schema":"s","table":"t","columns":[{"name":"c","type":"text","value":{"x":"secret"}}],"pk":[]}"#)
            .unwrap_err();
        assert_eq!(err, DecodeError::BadValue { table: TableRef::new("s", "t"), column: "c".into() });
        assert!(!err.to_string().contains("secret"), "{err}");
        // Bytes that are not UTF-8 (a value in another encoding): where, never what.
        let mut latin1 = br#"{"action":"I","xid":1,"lsn":"0/1","schema":"s","table":"t","columns":[{"name":"c","type":"text","typeoid":25,"value":"secr"#.to_vec();
        latin1.extend_from_slice(b"\xe9t\"}],\"pk\":[]}");
        let err = decode(&latin1).unwrap_err();
        assert_eq!(err, DecodeError::Json { category: "invalid UTF-8", line: 1, column: 123 });
        assert!(!err.to_string().contains("secr"), "{err}");
    }

    #[test]
    fn type_names_wal2json_leaves_unescaped_are_repaired() {
        // As wal2json 2.5 prints a column and the key of an enum in schema `Sales "Dept"` (seen on PostgreSQL 15).
        let raw = br#"{"action":"I","xid":1,"lsn":"0/1","schema":"s","table":"t","columns":[{"name":"m","type":"Sales ""Dept""".mood,"typeoid":16400,"value":"ok"},{"name":"n","type":"text","typeoid":25,"value":"x\",\"type\":1"},{"name":"o","type":"Mood","typeoid":16401,"value":"a"}],"pk":[{"name":"m","type":"Sales ""Dept""".mood,"typeoid":16400}]}"#;
        let Change::Row(row) = decode(raw).unwrap() else { panic!("row") };
        assert_eq!(row.new.0[0].type_name, r#""Sales ""Dept""".mood"#);
        let values: Vec<&Datum> = row.new.0.iter().map(|c| &c.value).collect();
        let expected = [Datum::Text("ok".into()), Datum::Text(r#"x","type":1"#.into()), Datum::Text("a".into())];
        assert_eq!(values, expected.iter().collect::<Vec<_>>());
        assert_eq!(row.key_columns, vec!["m".to_owned()]);
        // A type name that would hide the next field is an error, not a shifted value.
        let hiding = br#"{"action":"I","xid":1,"lsn":"0/1","schema":"s","table":"t","columns":[{"name":"m","type":"a ,"typeoid":1 b".t,"typeoid":16400,"value":"ok"}],"pk":[]}"#;
        assert!(decode(hiding).is_err());
        // Valid JSON is never touched.
        assert!(escape_type_names(br#"{"columns":[{"name":"a","type":"text","typeoid":25}]}"#).is_none());
    }

    #[test]
    fn unknown_action_and_missing_fields_are_named() {
        assert_eq!(decode(br#"{"action":"X"}"#).unwrap_err(), DecodeError::UnknownAction { action: "X".into() });
        assert_eq!(
            decode(br#"{"action":"C","xid":1,"lsn":"0/1"}"#).unwrap_err(),
            DecodeError::MissingField { action: "C".into(), field: "nextlsn" }
        );
        assert!(matches!(decode(b"{\"action\":"), Err(DecodeError::Json { category: "truncated input", .. })));
    }
}
