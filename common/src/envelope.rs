//! The JSON values of Kafka records, versioned. Documented for users in `docs/records.md`.
//!
//! ```text
//! <prefix>.raw.<schema>.<table>  key = position   value = RawRecord   (capture → transform)
//! <prefix>.txn                   key = position   value = TxnRecord   (capture → apply; begin/commit/message/heartbeat)
//! <prefix>.out.<schema>.<table>  key = position   value = OutRecord   (transform → apply; same key and partition)
//! ```
//!
//! Every value carries `"v": 1`. Readers refuse a version they do not know (naming it) rather than guess; fields may
//! be added within a version, so readers ignore fields they do not know.

use serde::{Deserialize, Serialize};

use crate::change::{Row, TableRef};
use crate::lsn::{Lsn, Position};

pub const ENVELOPE_VERSION: u32 = 1;

/// A transaction gets a `begin` record on the txn topic once this many of its change records are sent: a long
/// transaction announces itself while its rows are still arriving, a short one is described by its commit record
/// alone. One txn record per short transaction instead of two (a third of the broker records of single-row
/// transactions). Apply does not need begin records; they are for readers who watch long transactions.
pub const BEGIN_AFTER_RECORDS: u64 = 1000;

/// What a raw or target operation does to its row.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    Insert,
    Update,
    Delete,
    Truncate,
    /// A row copied by the snapshot bootstrap: applied as an upsert.
    Snapshot,
    /// Many rows copied by the snapshot bootstrap, in COPY's text format ([`CopyBatch`]): applied with COPY.
    Copy,
}

/// Rows of one table in PostgreSQL's COPY text format (`crate::copytext`), each field the value's text.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyBatch {
    pub columns: Vec<CopyColumn>,
    pub rows: u64,
    pub text: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyColumn {
    pub name: String,
    #[serde(rename = "type")]
    pub type_name: String,
    #[serde(rename = "oid")]
    pub type_oid: u32,
}

/// One source row change, as capture publishes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RawRecord {
    pub v: u32,
    pub pos: Position,
    pub op: Op,
    pub source: TableRef,
    /// Source transaction id; absent for snapshot rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xid: Option<u32>,
    /// Primary-key column names of the source table.
    #[serde(default)]
    pub key: Vec<String>,
    /// New row (insert, update, snapshot). Columns the source did not send are absent, not null.
    #[serde(default, skip_serializing_if = "Row::is_empty")]
    pub new: Row,
    /// Old replica identity (update, delete).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old: Option<Row>,
    /// The rows of a `copy` record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copy: Option<CopyBatch>,
}

/// How many change records a transaction has in one topic-partition: apply waits for exactly these.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PartitionCount {
    pub topic: String,
    pub partition: i32,
    pub count: u64,
}

/// A record of the single-partition `<prefix>.txn` topic, in source commit order. On the wire an object whose
/// `kind` names the variant (`{"kind":"commit","v":1,…}`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum TxnRecord {
    /// A transaction starts; its changes have positions `(commit_lsn, 1..)`.
    Begin { v: u32, xid: u32, commit_lsn: Lsn, commit_time: Option<String> },
    /// A transaction is complete once `counts` records have been seen in each listed topic-partition.
    Commit {
        v: u32,
        xid: u32,
        commit_lsn: Lsn,
        /// wal2json's `nextlsn`: the LSN capture confirms to the slot once this transaction is durable in Kafka.
        end_lsn: Lsn,
        commit_time: Option<String>,
        counts: Vec<PartitionCount>,
    },
    /// A logical decoding message (cutover markers use these). Transactional ones sit between their transaction's
    /// begin and commit and have that transaction's positions.
    Message { v: u32, pos: Position, transactional: bool, prefix: String, content: String },
    /// Emitted while the source is idle, so progress and lag move downstream.
    Heartbeat { v: u32, wal_end: Lsn, sent_at_ms: u64 },
    /// An attempt of the snapshot bootstrap starts: the plan of chunks (the same in every attempt of one bootstrap)
    /// and the snapshot this attempt copies in. Informational for apply; capture reads it back to resume.
    Snapshot { v: u32, consistent_point: Lsn, attempt: u32, snapshot_lsn: Lsn, chunks: Vec<ChunkSpec> },
    /// One chunk of the snapshot bootstrap is in Kafka: `counts` records in each listed topic-partition, at
    /// positions `(consistent_point − 1, base + 1 …)` (see [`crate::snapshot::chunk_base`]). Chunk 0 holds the
    /// truncates that start a bootstrap. Apply writes each chunk as its own DB2 transaction.
    Chunk {
        v: u32,
        consistent_point: Lsn,
        attempt: u32,
        seq: u32,
        chunk: u32,
        /// The table copied (absent for chunk 0, the truncates).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        table: Option<TableRef>,
        snapshot_lsn: Lsn,
        rows: u64,
        counts: Vec<PartitionCount>,
    },
}

/// One chunk of a snapshot bootstrap's plan: a table, or a range `[from, to)` of its single integer key (an open
/// end where absent).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkSpec {
    pub id: u32,
    pub table: TableRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<i64>,
    /// Rows PostgreSQL estimates the chunk holds (for progress; 0 when unknown).
    #[serde(default)]
    pub rows_estimate: u64,
}

/// Every field any kind of txn record has: decoded in one pass. serde's derive for an internally tagged enum buffers
/// each record in its generic `Content` first, which was 6 % of apply's CPU on the pgbench backlog.
#[derive(Deserialize)]
struct TxnWire {
    kind: TxnKind,
    v: u32,
    xid: Option<u32>,
    commit_lsn: Option<Lsn>,
    end_lsn: Option<Lsn>,
    commit_time: Option<String>,
    counts: Option<Vec<PartitionCount>>,
    pos: Option<Position>,
    transactional: Option<bool>,
    prefix: Option<String>,
    content: Option<String>,
    wal_end: Option<Lsn>,
    sent_at_ms: Option<u64>,
    consistent_point: Option<Lsn>,
    attempt: Option<u32>,
    snapshot_lsn: Option<Lsn>,
    chunks: Option<Vec<ChunkSpec>>,
    seq: Option<u32>,
    chunk: Option<u32>,
    table: Option<TableRef>,
    rows: Option<u64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum TxnKind {
    Begin,
    Commit,
    Message,
    Heartbeat,
    Snapshot,
    Chunk,
}

impl<'de> Deserialize<'de> for TxnRecord {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let w = TxnWire::deserialize(deserializer)?;
        let need = |field: &'static str| D::Error::missing_field(field);
        Ok(match w.kind {
            TxnKind::Begin => TxnRecord::Begin {
                v: w.v,
                xid: w.xid.ok_or_else(|| need("xid"))?,
                commit_lsn: w.commit_lsn.ok_or_else(|| need("commit_lsn"))?,
                commit_time: w.commit_time,
            },
            TxnKind::Commit => TxnRecord::Commit {
                v: w.v,
                xid: w.xid.ok_or_else(|| need("xid"))?,
                commit_lsn: w.commit_lsn.ok_or_else(|| need("commit_lsn"))?,
                end_lsn: w.end_lsn.ok_or_else(|| need("end_lsn"))?,
                commit_time: w.commit_time,
                counts: w.counts.ok_or_else(|| need("counts"))?,
            },
            TxnKind::Message => TxnRecord::Message {
                v: w.v,
                pos: w.pos.ok_or_else(|| need("pos"))?,
                transactional: w.transactional.ok_or_else(|| need("transactional"))?,
                prefix: w.prefix.ok_or_else(|| need("prefix"))?,
                content: w.content.ok_or_else(|| need("content"))?,
            },
            TxnKind::Heartbeat => TxnRecord::Heartbeat {
                v: w.v,
                wal_end: w.wal_end.ok_or_else(|| need("wal_end"))?,
                sent_at_ms: w.sent_at_ms.ok_or_else(|| need("sent_at_ms"))?,
            },
            TxnKind::Snapshot => TxnRecord::Snapshot {
                v: w.v,
                consistent_point: w.consistent_point.ok_or_else(|| need("consistent_point"))?,
                attempt: w.attempt.ok_or_else(|| need("attempt"))?,
                snapshot_lsn: w.snapshot_lsn.ok_or_else(|| need("snapshot_lsn"))?,
                chunks: w.chunks.ok_or_else(|| need("chunks"))?,
            },
            TxnKind::Chunk => TxnRecord::Chunk {
                v: w.v,
                consistent_point: w.consistent_point.ok_or_else(|| need("consistent_point"))?,
                attempt: w.attempt.ok_or_else(|| need("attempt"))?,
                seq: w.seq.ok_or_else(|| need("seq"))?,
                chunk: w.chunk.ok_or_else(|| need("chunk"))?,
                table: w.table,
                snapshot_lsn: w.snapshot_lsn.ok_or_else(|| need("snapshot_lsn"))?,
                rows: w.rows.ok_or_else(|| need("rows"))?,
                counts: w.counts.ok_or_else(|| need("counts"))?,
            },
        })
    }
}

/// Transform's output for one raw record: same key, same partition, zero or more target operations. Or a
/// passthrough declaration (`pass_through` set, no ops): the raw records of the same partition with positions from
/// `pos` through `pass_through` are applied as captured (the rules pass their table unchanged).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutRecord {
    pub v: u32,
    pub pos: Position,
    pub source: TableRef,
    pub ops: Vec<TargetOp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pass_through: Option<Position>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetOp {
    pub op: Op,
    pub target: TableRef,
    /// Key column names in the target table.
    #[serde(default)]
    pub key: Vec<String>,
    #[serde(default, skip_serializing_if = "Row::is_empty")]
    pub new: Row,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old: Option<Row>,
    /// The rows of a `copy` operation, with the target's column names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copy: Option<CopyBatch>,
}

#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    #[error("record at {pos} in {topic}[{partition}] has envelope version {found}; this build reads version {ENVELOPE_VERSION}: upgrade pg-migrator")]
    Version { topic: String, partition: i32, pos: String, found: u32 },
    #[error("record at offset {offset} in {topic}[{partition}] is not a valid {expected} envelope ({reason}): was it written by pg-migrator?")]
    Malformed { topic: String, partition: i32, offset: i64, expected: &'static str, reason: String },
}

/// Where a record came from, for error messages.
#[derive(Clone, Copy, Debug)]
pub struct RecordOrigin<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
}

trait Versioned {
    const NAME: &'static str;
    fn version(&self) -> u32;
    fn describe_pos(&self) -> String;
}

impl Versioned for RawRecord {
    const NAME: &'static str = "raw";
    fn version(&self) -> u32 {
        self.v
    }
    fn describe_pos(&self) -> String {
        self.pos.to_string()
    }
}

impl Versioned for OutRecord {
    const NAME: &'static str = "out";
    fn version(&self) -> u32 {
        self.v
    }
    fn describe_pos(&self) -> String {
        self.pos.to_string()
    }
}

impl Versioned for TxnRecord {
    const NAME: &'static str = "txn";
    fn version(&self) -> u32 {
        match self {
            TxnRecord::Begin { v, .. }
            | TxnRecord::Commit { v, .. }
            | TxnRecord::Message { v, .. }
            | TxnRecord::Heartbeat { v, .. }
            | TxnRecord::Snapshot { v, .. }
            | TxnRecord::Chunk { v, .. } => *v,
        }
    }
    fn describe_pos(&self) -> String {
        match self {
            TxnRecord::Begin { commit_lsn, .. } | TxnRecord::Commit { commit_lsn, .. } => commit_lsn.to_string(),
            TxnRecord::Message { pos, .. } => pos.to_string(),
            TxnRecord::Heartbeat { wal_end, .. } => wal_end.to_string(),
            TxnRecord::Snapshot { consistent_point, attempt, .. } => {
                format!("bootstrap at {consistent_point}, attempt {attempt}")
            }
            TxnRecord::Chunk { consistent_point, chunk, .. } => {
                format!("bootstrap at {consistent_point}, chunk {chunk}")
            }
        }
    }
}

fn decode<T: Versioned + for<'de> Deserialize<'de>>(
    bytes: &[u8],
    origin: RecordOrigin<'_>,
) -> Result<T, EnvelopeError> {
    let malformed = |reason: String| EnvelopeError::Malformed {
        topic: origin.topic.to_owned(),
        partition: origin.partition,
        offset: origin.offset,
        expected: T::NAME,
        reason,
    };
    // UTF-8 is checked once for the whole record: serde_json's byte reader checks every string on its own, which
    // was the largest single cost of decoding (`from_utf8` 9 % of apply's CPU on the pgbench backlog).
    let text =
        std::str::from_utf8(bytes).map_err(|err| malformed(format!("invalid UTF-8 at byte {}", err.valid_up_to())))?;
    // Category and place only: the message of a data error could quote row values.
    let record: T = serde_json::from_str(text).map_err(|err| {
        malformed(format!("{:?} error at line {} column {}", err.classify(), err.line(), err.column()))
    })?;
    if record.version() != ENVELOPE_VERSION {
        return Err(EnvelopeError::Version {
            topic: origin.topic.to_owned(),
            partition: origin.partition,
            pos: record.describe_pos(),
            found: record.version(),
        });
    }
    Ok(record)
}

impl RawRecord {
    pub fn decode(bytes: &[u8], origin: RecordOrigin<'_>) -> Result<Self, EnvelopeError> {
        decode(bytes, origin)
    }
}

/// The Kafka header that marks a passthrough declaration, so a reader can tell it by its headers without decoding.
pub const PASS_HEADER: &str = "pgm-pass";

impl OutRecord {
    /// The declaration that raw records `from ..= through` of one partition of `source` pass unchanged.
    pub fn pass(source: TableRef, from: Position, through: Position) -> Self {
        OutRecord { v: ENVELOPE_VERSION, pos: from, source, ops: Vec::new(), pass_through: Some(through) }
    }

    pub fn decode(bytes: &[u8], origin: RecordOrigin<'_>) -> Result<Self, EnvelopeError> {
        decode(bytes, origin)
    }
}

impl TxnRecord {
    pub fn decode(bytes: &[u8], origin: RecordOrigin<'_>) -> Result<Self, EnvelopeError> {
        decode(bytes, origin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::change::{Column, Datum};

    fn origin() -> RecordOrigin<'static> {
        RecordOrigin { topic: "pgm.raw.public.t", partition: 2, offset: 7 }
    }

    fn raw() -> RawRecord {
        RawRecord {
            v: ENVELOPE_VERSION,
            pos: Position::new(Lsn(0x16_B374_D848), 3),
            op: Op::Update,
            source: TableRef::new("public", "t"),
            xid: Some(735),
            key: vec!["id".into()],
            new: Row(vec![Column {
                name: "amount".into(),
                type_name: "numeric".into(),
                type_oid: 1700,
                value: Datum::Text("12345678901234567890.1234567890".into()),
            }]),
            old: Some(Row(vec![Column {
                name: "id".into(),
                type_name: "bigint".into(),
                type_oid: 20,
                value: Datum::Null,
            }])),
            copy: None,
        }
    }

    #[test]
    fn raw_record_has_the_documented_shape() {
        let json = serde_json::to_value(raw()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "v": 1, "pos": "00000016/B374D848:00000000000000000003", "op": "update",
                "source": {"schema": "public", "table": "t"}, "xid": 735, "key": ["id"],
                "new": [{"name": "amount", "type": "numeric", "oid": 1700, "value": "12345678901234567890.1234567890"}],
                "old": [{"name": "id", "type": "bigint", "oid": 20, "value": null}]
            })
        );
        let bytes = serde_json::to_vec(&raw()).unwrap();
        assert_eq!(RawRecord::decode(&bytes, origin()).unwrap(), raw());
    }

    #[test]
    fn txn_records_are_tagged_by_kind() {
        let commit = TxnRecord::Commit {
            v: 1,
            xid: 9,
            commit_lsn: Lsn(0x100),
            end_lsn: Lsn(0x130),
            commit_time: Some("2026-11-25 21:24:32.251444+00".into()),
            counts: vec![PartitionCount { topic: "pgm.raw.public.t".into(), partition: 1, count: 2 }],
        };
        let json = serde_json::to_value(&commit).unwrap();
        assert_eq!(json["kind"], "commit");
        assert_eq!(json["end_lsn"], "0/130");
        let back = TxnRecord::decode(&serde_json::to_vec(&commit).unwrap(), origin()).unwrap();
        assert_eq!(back, commit);
    }

    #[test]
    fn every_kind_of_txn_record_round_trips_and_a_missing_field_is_refused() {
        let records = [
            TxnRecord::Begin { v: 1, xid: 9, commit_lsn: Lsn(0x100), commit_time: None },
            TxnRecord::Commit {
                v: 1,
                xid: 9,
                commit_lsn: Lsn(0x100),
                end_lsn: Lsn(0x130),
                commit_time: Some("2026-11-25 21:24:32.251444+00".into()),
                counts: vec![],
            },
            TxnRecord::Message {
                v: 1,
                pos: Position::new(Lsn(0x100), 2),
                transactional: true,
                prefix: "pgm".into(),
                content: "marker".into(),
            },
            TxnRecord::Heartbeat { v: 1, wal_end: Lsn(0x200), sent_at_ms: 1_764_000_000_000 },
        ];
        for record in records {
            let bytes = serde_json::to_vec(&record).unwrap();
            assert_eq!(TxnRecord::decode(&bytes, origin()).unwrap(), record);
        }
        let err = TxnRecord::decode(br#"{"kind":"commit","v":1,"xid":9,"commit_lsn":"0/100","counts":[]}"#, origin())
            .unwrap_err();
        assert!(err.to_string().contains("offset 7"), "{err}");
        let err = TxnRecord::decode(br#"{"kind":"rollback","v":1}"#, origin()).unwrap_err();
        assert!(err.to_string().contains("offset 7"), "{err}");
    }

    #[test]
    fn unknown_version_and_garbage_are_refused_with_their_origin() {
        let mut record = raw();
        record.v = 2;
        let err = RawRecord::decode(&serde_json::to_vec(&record).unwrap(), origin()).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("version 2") && text.contains("pgm.raw.public.t[2]") && text.contains("16/B374D848#3"),
            "{text}"
        );

        let err = RawRecord::decode(br#"{"v":1,"pos":"secret"}"#, origin()).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("offset 7") && !text.contains("secret"), "{text}");

        let err = RawRecord::decode(b"{\"v\":1,\"pos\":\"secr\xe9t\"}", origin()).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("offset 7") && text.contains("invalid UTF-8 at byte 18") && !text.contains("secr"),
            "{text}"
        );
    }
}
