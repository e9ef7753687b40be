//! Kafka topic names for the pipeline: `<prefix>.raw.<schema>.<table>`, `<prefix>.txn`, `<prefix>.out.<schema>.<table>`.
//!
//! PostgreSQL identifiers may hold anything (quotes, spaces, `.`, non-ASCII); Kafka topic names only
//! `[a-zA-Z0-9._-]`, at most 249 bytes. Identifiers are escaped injectively: `[A-Za-z0-9_]` stay, `-` becomes `--`,
//! every other byte of the UTF-8 form becomes `-XX` (upper-case hex). So `Sales Dept` → `Sales-20Dept`, and no two
//! tables share a topic.

use crate::change::TableRef;

/// Kafka's limit on topic name length.
pub const MAX_TOPIC_LEN: usize = 249;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("topic prefix {prefix:?} may only hold ASCII letters, digits, '.', '_' and '-' (Kafka's rule), and must not be empty")]
    BadPrefix { prefix: String },
    #[error("topic name for {table} would be {len} bytes, over Kafka's limit of {MAX_TOPIC_LEN}: use a shorter topics.prefix")]
    TooLong { table: TableRef, len: usize },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topics {
    prefix: String,
}

impl Topics {
    pub fn new(prefix: &str) -> Result<Self, TopicError> {
        let valid =
            !prefix.is_empty() && prefix.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !valid {
            return Err(TopicError::BadPrefix { prefix: prefix.to_owned() });
        }
        Ok(Topics { prefix: prefix.to_owned() })
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn txn(&self) -> String {
        format!("{}.txn", self.prefix)
    }

    pub fn raw(&self, table: &TableRef) -> Result<String, TopicError> {
        self.table_topic("raw", table)
    }

    pub fn out(&self, table: &TableRef) -> Result<String, TopicError> {
        self.table_topic("out", table)
    }

    /// The out topic that carries a raw topic's transformed records (`<prefix>.raw.X` → `<prefix>.out.X`).
    pub fn out_of_raw(&self, raw_topic: &str) -> Option<String> {
        let rest = raw_topic.strip_prefix(&self.prefix)?.strip_prefix(".raw.")?;
        Some(format!("{}.out.{rest}", self.prefix))
    }

    /// The raw topic an out topic is made from (the inverse of [`Topics::out_of_raw`]).
    pub fn raw_of_out(&self, out_topic: &str) -> Option<String> {
        let rest = out_topic.strip_prefix(&self.prefix)?.strip_prefix(".out.")?;
        Some(format!("{}.raw.{rest}", self.prefix))
    }

    /// The table whose raw topic this is (the inverse of [`Topics::raw`]).
    pub fn table_of_raw(&self, raw_topic: &str) -> Option<TableRef> {
        let rest = raw_topic.strip_prefix(&self.prefix)?.strip_prefix(".raw.")?;
        let (schema, table) = rest.split_once('.')?;
        Some(TableRef::new(unescape(schema)?, unescape(table)?))
    }

    /// The table whose out topic this is (the inverse of [`Topics::out`]).
    pub fn table_of_out(&self, out_topic: &str) -> Option<TableRef> {
        self.table_of_raw(&format!(
            "{}.raw.{}",
            self.prefix,
            out_topic.strip_prefix(&self.prefix)?.strip_prefix(".out.")?
        ))
    }

    /// Who writes a topic of this prefix and for which table: for messages that tell a person what to start.
    pub fn describe(&self, topic: &str) -> String {
        if topic == self.txn() {
            return format!("the txn topic {topic}, which pgm-capture creates and writes");
        }
        if let Some(table) = self.table_of_raw(topic) {
            return format!("the raw topic {topic} of table {table}, which pgm-capture writes");
        }
        if let Some(table) = self.table_of_out(topic) {
            return format!(
                "the out topic {topic} of table {table}, which pgm-transform creates and writes (is it running? \
                 `pgm-transform check` shows whether it refuses the rules)"
            );
        }
        format!("topic {topic}")
    }

    fn table_topic(&self, stage: &str, table: &TableRef) -> Result<String, TopicError> {
        let name = format!("{}.{stage}.{}.{}", self.prefix, escape(&table.schema), escape(&table.table));
        if name.len() > MAX_TOPIC_LEN {
            return Err(TopicError::TooLong { table: table.clone(), len: name.len() });
        }
        Ok(name)
    }
}

fn escape(ident: &str) -> String {
    let mut out = String::with_capacity(ident.len());
    for b in ident.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' => out.push(char::from(b)),
            b'-' => out.push_str("--"),
            other => out.push_str(&format!("-{other:02X}")),
        }
    }
    out
}

fn unescape(text: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(text.len());
    let mut rest = text.as_bytes();
    while let Some((&b, tail)) = rest.split_first() {
        rest = tail;
        if b != b'-' {
            bytes.push(b);
        } else if let Some(tail) = rest.strip_prefix(b"-") {
            bytes.push(b'-');
            rest = tail;
        } else {
            let hex = std::str::from_utf8(rest.get(..2)?).ok()?;
            bytes.push(u8::from_str_radix(hex, 16).ok()?);
            rest = &rest[2..];
        }
    }
    String::from_utf8(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn out_topic_of_a_raw_topic() {
        let topics = Topics::new("pgm").unwrap();
        let table = TableRef::new("Sales Dept", "orders");
        let raw = topics.raw(&table).unwrap();
        assert_eq!(topics.out_of_raw(&raw), Some(topics.out(&table).unwrap()));
        assert_eq!(topics.out_of_raw("other.raw.public.t"), None);
        assert_eq!(topics.out_of_raw("pgm.txn"), None);
        assert_eq!(topics.table_of_raw(&raw), Some(table));
        assert_eq!(topics.table_of_raw("pgm.out.public.t"), None);
        assert_eq!(topics.table_of_raw("pgm.raw.public.t-Z1"), None);
    }

    #[test]
    fn names() {
        let topics = Topics::new("pgm").unwrap();
        assert_eq!(topics.txn(), "pgm.txn");
        assert_eq!(topics.raw(&TableRef::new("public", "orders")).unwrap(), "pgm.raw.public.orders");
        assert_eq!(
            topics.out(&TableRef::new("Sales Dept", "Order \"Items\" Ü")).unwrap(),
            "pgm.out.Sales-20Dept.Order-20-22Items-22-20-C3-9C"
        );
        assert_eq!(topics.raw(&TableRef::new("a.b", "c-d")).unwrap(), "pgm.raw.a-2Eb.c--d");
        assert!(Topics::new("").is_err());
        assert!(Topics::new("pg m").is_err());
        let long = TableRef::new("public", "x".repeat(240));
        assert!(matches!(topics.raw(&long), Err(TopicError::TooLong { .. })));
    }

    proptest! {
        #[test]
        fn escaping_is_injective_and_kafka_safe(a in "\\PC{0,12}", b in "\\PC{0,12}") {
            let (ea, eb) = (escape(&a), escape(&b));
            prop_assert!(ea.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-'));
            prop_assert_eq!(a == b, ea == eb);
        }

        #[test]
        fn a_raw_topic_names_its_table(schema in "\\PC{1,12}", table in "\\PC{1,12}") {
            let topics = Topics::new("pgm.x").unwrap();
            let t = TableRef::new(schema, table);
            prop_assert_eq!(topics.table_of_raw(&topics.raw(&t).unwrap()), Some(t));
        }
    }
}
