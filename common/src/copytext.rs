//! PostgreSQL's COPY text format, for the snapshot bootstrap's batches: one row per line, fields separated by a tab,
//! `\N` for NULL, and backslash escapes for backslash, newline, carriage return, tab (and, on input, `\b \f \v`,
//! octal `\NNN` and hex `\xNN`). Every field carries the value's text as `col::text` prints it, so a value in a batch
//! is byte for byte the value a streamed row would carry.

use crate::change::{Column, Datum, Row};
use crate::envelope::CopyColumn;

/// Appends one field (escaped) to a line being built; `None` is NULL.
pub fn push_field(line: &mut String, value: Option<&str>) {
    let Some(value) = value else {
        line.push_str("\\N");
        return;
    };
    for c in value.chars() {
        match c {
            '\\' => line.push_str("\\\\"),
            '\n' => line.push_str("\\n"),
            '\r' => line.push_str("\\r"),
            '\t' => line.push_str("\\t"),
            other => line.push(other),
        }
    }
}

/// Appends a row as one line (with its newline).
pub fn push_row(text: &mut String, row: &Row) {
    for (i, column) in row.0.iter().enumerate() {
        if i > 0 {
            text.push('\t');
        }
        push_field(text, column.value.as_text());
    }
    text.push('\n');
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum CopyTextError {
    #[error("line {line} has {found} fields, the batch names {expected} columns")]
    Fields { line: usize, found: usize, expected: usize },
    #[error("line {line}: an escape sequence does not decode to UTF-8")]
    Encoding { line: usize },
}

/// Splits one line (without its newline) into its fields, unescaped; `None` is NULL.
pub fn parse_line(line: &str, number: usize) -> Result<Vec<Option<String>>, CopyTextError> {
    let mut fields = Vec::new();
    for raw in line.split('\t') {
        if raw == "\\N" {
            fields.push(None);
            continue;
        }
        if !raw.contains('\\') {
            fields.push(Some(raw.to_owned()));
            continue;
        }
        let bytes = raw.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            if b != b'\\' || i + 1 == bytes.len() {
                out.push(b);
                i += 1;
                continue;
            }
            let next = bytes[i + 1];
            i += 2;
            match next {
                b'n' => out.push(b'\n'),
                b'r' => out.push(b'\r'),
                b't' => out.push(b'\t'),
                b'b' => out.push(8),
                b'f' => out.push(12),
                b'v' => out.push(11),
                b'0'..=b'7' => {
                    let mut value = u32::from(next - b'0');
                    for _ in 0..2 {
                        match bytes.get(i) {
                            Some(d @ b'0'..=b'7') => {
                                value = value * 8 + u32::from(d - b'0');
                                i += 1;
                            }
                            _ => break,
                        }
                    }
                    out.push(value as u8);
                }
                b'x' if bytes.get(i).is_some_and(u8::is_ascii_hexdigit) => {
                    let mut value = 0u32;
                    for _ in 0..2 {
                        match bytes.get(i) {
                            Some(d) if d.is_ascii_hexdigit() => {
                                value = value * 16 + (*d as char).to_digit(16).expect("hex digit");
                                i += 1;
                            }
                            _ => break,
                        }
                    }
                    out.push(value as u8);
                }
                other => out.push(other),
            }
        }
        fields.push(Some(String::from_utf8(out).map_err(|_| CopyTextError::Encoding { line: number })?));
    }
    Ok(fields)
}

/// The rows of a batch, each with the batch's columns.
pub fn rows(columns: &[CopyColumn], text: &str) -> Result<Vec<Row>, CopyTextError> {
    let mut rows = Vec::new();
    for (number, line) in text.split_terminator('\n').enumerate() {
        let fields = parse_line(line, number + 1)?;
        if fields.len() != columns.len() {
            return Err(CopyTextError::Fields { line: number + 1, found: fields.len(), expected: columns.len() });
        }
        rows.push(Row(columns
            .iter()
            .zip(fields)
            .map(|(c, value)| Column {
                name: c.name.clone(),
                type_name: c.type_name.clone(),
                type_oid: c.type_oid,
                value: Datum::from(value),
            })
            .collect()));
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_character_round_trips() {
        let values = [
            Some("plain"),
            None,
            Some(""),
            Some("\\N"),
            Some("tab\there"),
            Some("new\nline\r\n"),
            Some("back\\slash\\"),
            Some("ünïcödé ✓ \u{1}\u{7f}"),
            Some("{\"a\": [1, \"x\\ty\"]}"),
        ];
        let mut line = String::new();
        for (i, v) in values.iter().enumerate() {
            if i > 0 {
                line.push('\t');
            }
            push_field(&mut line, *v);
        }
        assert!(!line.contains('\n'));
        let parsed = parse_line(&line, 1).unwrap();
        assert_eq!(parsed, values.iter().map(|v| v.map(str::to_owned)).collect::<Vec<_>>());
    }

    #[test]
    fn reads_what_postgresql_may_write() {
        assert_eq!(
            parse_line("\\b\\f\\v\\101\\x42\\q\t\\N\t\\\\N", 1).unwrap(),
            vec![Some("\u{8}\u{c}\u{b}ABq".to_owned()), None, Some("\\N".to_owned())]
        );
        let columns = vec![CopyColumn { name: "a".into(), type_name: "text".into(), type_oid: 25 }];
        assert_eq!(rows(&columns, "x\ty\n"), Err(CopyTextError::Fields { line: 1, found: 2, expected: 1 }));
        assert_eq!(rows(&columns, "x\n\\N\n").unwrap().len(), 2);
    }
}
