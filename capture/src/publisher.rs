//! Turns decoded changes into Kafka records and tracks which source positions are durable.
//!
//! ```text
//!   Begin  ──▶ (held) txn topic: begin record once the transaction has BEGIN_AFTER_RECORDS records (ordinal 0)
//!   Row    ──▶ raw topic of its table, partition = hash(key)  (ordinals 1, 2, …; counted per topic-partition)
//!   Truncate ▶ raw topic of its table, partition 0
//!   Message ─▶ txn topic (transactional: inside its transaction's ordinals)
//!   Commit ──▶ txn topic: commit record with the counts      (tag: end LSN)
//! ```
//!
//! Every produce is enqueued without waiting and gets a sequence number; [`crate::acks`] tracks the frontier below
//! which Kafka has acknowledged everything. A commit record's sequence number is remembered with its end LSN (a
//! *tag*): when the frontier passes it, every record of that transaction and of all earlier ones is acknowledged,
//! and the end LSN may be confirmed to the slot. Nothing is ever confirmed ahead of a record Kafka has not
//! acknowledged.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pgm_common::change::{Begin, Commit, Message, Row, RowChange, RowOp, TableRef, Truncate};
use pgm_common::config::PipelineConfig;
use pgm_common::envelope::{Op, PartitionCount, RawRecord, TxnRecord, BEGIN_AFTER_RECORDS, ENVELOPE_VERSION};
use pgm_common::topic_settings::{self, TopicSetupError};
use pgm_common::topics::Topics;
use pgm_common::{kafka, parts, Lsn, Position};
use prometheus_client::metrics::counter::Counter;
use rdkafka::admin::AdminClient;
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseRecord, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode as Code;

use crate::acks::{AckContext, Acks, Failed};
use crate::metrics::{CaptureMetrics, TableLabel};
use crate::CaptureError;

/// The largest record buffer kept between records; a larger one (a huge row) is freed after its record is sent.
const BUFFER_KEPT: usize = 1 << 20;

/// Records in flight (enqueued, not yet acknowledged) before capture stops reading from the slot.
pub const MAX_IN_FLIGHT: usize = 50_000;

struct OpenTxn {
    xid: u32,
    commit_lsn: Lsn,
    next_ordinal: u64,
    /// Records per (route index, partition).
    counts: BTreeMap<(usize, i32), u64>,
    /// Change records sent so far.
    records: u64,
    /// The begin record, until the transaction has [`BEGIN_AFTER_RECORDS`] records (never for a bootstrap chunk).
    begin: Option<TxnRecord>,
}

/// Where one source table's records go, resolved once per table rather than once per row.
struct Route {
    topic: String,
    records: Counter,
    bytes: Counter,
}

pub struct Publisher {
    producer: Arc<ThreadedProducer<AckContext>>,
    acks: Arc<Acks>,
    /// Sequence number of the next record enqueued.
    next_seq: u64,
    /// Records that complete a transaction or heartbeat: (sequence number, LSN to confirm once it is acknowledged).
    tags: VecDeque<(u64, Lsn)>,
    /// The frontier when `next_ack` last returned: a return without a tag says that room was freed.
    reported_frontier: u64,
    /// Reused for every record's JSON.
    buffer: Vec<u8>,
    /// Values longer than this go as parts (`topics.max_message_bytes` less Kafka's framing).
    part_size: usize,
    admin: Arc<AdminClient<pgm_common::kafka::ServiceContext>>,
    /// `kafka.brokers`, for the fixes error messages print.
    brokers: String,
    topic_config: pgm_common::config::TopicsConfig,
    topics: Topics,
    txn_topic: String,
    partitions: i32,
    /// Routes of the tables seen so far; with `tables.include` set, exactly those tables (others are skipped).
    route_of: HashMap<TableRef, usize>,
    routes: Vec<Route>,
    /// No `tables.include`: every table is carried and its topic made on first sight.
    all_tables: bool,
    txn: Option<OpenTxn>,
    metrics: CaptureMetrics,
}

impl Publisher {
    pub async fn new(config: &PipelineConfig, metrics: CaptureMetrics) -> Result<Self, CaptureError> {
        let mut producer_config = kafka::producer_config(&config.kafka, "pgm-capture", config.topics.max_message_bytes);
        // Bound librdkafka's queue above MAX_IN_FLIGHT so QueueFull stays an exception, not the flow control.
        if !config.kafka.librdkafka.contains_key("queue.buffering.max.messages") {
            producer_config.set("queue.buffering.max.messages", (2 * MAX_IN_FLIGHT).to_string());
        }
        let acks = Arc::new(Acks::default());
        let context = AckContext { acks: acks.clone(), delivery_errors: metrics.delivery_errors.clone() };
        let producer: ThreadedProducer<AckContext> =
            producer_config.create_with_context(context).map_err(CaptureError::Kafka)?;
        let admin = kafka::admin(&config.kafka, "pgm-capture-admin").map_err(CaptureError::Kafka)?;
        let tables = config.tables();
        let mut publisher = Publisher {
            producer: Arc::new(producer),
            acks,
            next_seq: 0,
            tags: VecDeque::new(),
            reported_frontier: 0,
            buffer: Vec::with_capacity(4096),
            part_size: parts::part_size(config.topics.max_message_bytes),
            admin: Arc::new(admin),
            brokers: config.kafka.brokers.clone(),
            topic_config: config.topics.clone(),
            topics: config.topics(),
            txn_topic: config.topics().txn(),
            partitions: config.topics.partitions,
            route_of: HashMap::new(),
            routes: Vec::new(),
            all_tables: tables.is_empty(),
            txn: None,
            metrics,
        };
        publisher.ensure_topic(&publisher.txn_topic, 1).await?;
        for table in tables {
            publisher.add_route(table).await?;
        }
        Ok(publisher)
    }

    /// Makes (or checks) the table's raw topic and registers its metrics.
    async fn add_route(&mut self, table: TableRef) -> Result<usize, CaptureError> {
        let topic = self.topics.raw(&table).map_err(|e| CaptureError::Config(e.to_string()))?;
        self.ensure_topic(&topic, self.partitions).await?;
        let label = TableLabel::new(&table);
        let route = Route {
            topic,
            records: self.metrics.records.get_or_create(&label).clone(),
            bytes: self.metrics.bytes.get_or_create(&label).clone(),
        };
        self.routes.push(route);
        self.route_of.insert(table, self.routes.len() - 1);
        Ok(self.routes.len() - 1)
    }

    /// The route of a table, or `None` when the table is not carried.
    async fn route(&mut self, table: &TableRef) -> Result<Option<usize>, CaptureError> {
        match self.route_of.get(table) {
            Some(index) => Ok(Some(*index)),
            None if self.all_tables => self.add_route(table.clone()).await.map(Some),
            None => Ok(None),
        }
    }

    /// Creates the topic with the migration's settings, or checks an existing one's partitions and settings
    /// ([`topic_settings::ensure`]). A broker that does not answer in time is a transient fault: the run loop
    /// reports it (health `waiting`) and tries again.
    async fn ensure_topic(&self, topic: &str, partitions: i32) -> Result<(), CaptureError> {
        topic_settings::ensure(&self.admin, &self.brokers, topic, partitions, &self.topic_config).await.map_err(
            |error| match error {
                TopicSetupError::Kafka(error) => CaptureError::Kafka(error),
                TopicSetupError::Definite(problem) => CaptureError::Config(problem),
            },
        )
    }

    pub fn in_flight(&self) -> usize {
        (self.next_seq - self.acks.frontier()) as usize
    }

    pub fn is_full(&self) -> bool {
        self.in_flight() >= MAX_IN_FLIGHT
    }

    /// Nothing enqueued is unacknowledged and no transaction is open: the server's WAL end may be confirmed.
    pub fn is_idle(&self) -> bool {
        self.txn.is_none() && self.in_flight() == 0
    }

    /// Waits for acknowledgements: `Some(Ok(Some(lsn)))` when they complete a transaction (or heartbeat) ending at
    /// `lsn`, `Some(Ok(None))` when they only freed room in flight, `None` when nothing is in flight.
    pub async fn next_ack(&mut self) -> Option<Result<Option<Lsn>, CaptureError>> {
        loop {
            if let Some(failed) = self.acks.take_failure() {
                return Some(Err(delivery_error(failed)));
            }
            // Ask for the wake-up before reading the frontier: a frontier that passes the record after this read
            // then finds the request and wakes the loop (read first, and that step could be missed).
            self.acks.wake_after(self.tags.front().map_or(u64::MAX, |&(seq, _)| seq));
            let frontier = self.acks.frontier();
            let completed = self.completed_below(frontier);
            if completed.is_some() || frontier > self.reported_frontier {
                self.reported_frontier = frontier;
                return Some(Ok(completed));
            }
            if frontier == self.next_seq {
                return None;
            }
            self.acks.woken().await;
        }
    }

    /// Drops the tags whose record is below the frontier (acknowledged, with everything before it); the LSN of the
    /// last one.
    fn completed_below(&mut self, frontier: u64) -> Option<Lsn> {
        let mut completed = None;
        while let Some(&(_, lsn)) = self.tags.front().filter(|&&(seq, _)| seq < frontier) {
            completed = Some(lsn);
            self.tags.pop_front();
        }
        completed
    }

    /// Waits for every record in flight (shutdown, the end of a bootstrap); returns the last tag's LSN.
    pub async fn drain(&mut self) -> Result<Option<Lsn>, CaptureError> {
        let mut last = None;
        loop {
            if let Some(failed) = self.acks.take_failure() {
                return Err(delivery_error(failed));
            }
            self.acks.wake_after(self.next_seq.saturating_sub(1));
            let frontier = self.acks.frontier();
            last = self.completed_below(frontier).or(last);
            if frontier == self.next_seq {
                self.reported_frontier = frontier;
                return Ok(last);
            }
            // A wake-up that comes before this await is kept by `Notify` as a permit; the timeout only bounds a
            // missed step of the frontier arithmetic, never correctness.
            let _ = tokio::time::timeout(Duration::from_millis(100), self.acks.woken()).await;
        }
    }

    /// Enqueues the record whose value is in `self.buffer`, to the table's raw topic (`route`) or the txn topic
    /// (`None`); with `tag`, its acknowledgement confirms that LSN. A value over the topic's record limit goes as
    /// consecutive parts with the same key ([`parts`]); the tag then waits for the last one.
    async fn produce(
        &mut self,
        route: Option<usize>,
        partition: i32,
        tag: Option<Lsn>,
        pos: Position,
    ) -> Result<(), CaptureError> {
        let key = pos.key_bytes();
        let topic = route.map_or(&self.txn_topic, |r| &self.routes[r].topic);
        let count = parts::count(self.buffer.len(), self.part_size);
        for (index, slice) in parts::split(&self.buffer, self.part_size).enumerate() {
            let seq = self.next_seq;
            let mut record =
                BaseRecord::with_opaque_to(topic, seq as usize).partition(partition).key(&key[..]).payload(slice);
            if let Some(headers) = parts::headers(index, count) {
                record = record.headers(headers);
            }
            loop {
                match self.producer.send(record) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(Code::QueueFull), returned)) => {
                        record = returned;
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    Err((error, _)) => {
                        return Err(CaptureError::Delivery { topic: topic.clone(), partition, pos, error })
                    }
                }
            }
            self.next_seq += 1;
        }
        if count > 1 {
            self.metrics.split_records.inc();
            tracing::debug!(topic = %topic, partition, %pos, bytes = self.buffer.len(), parts = count, "record sent in parts");
        }
        if let Some(lsn) = tag {
            self.tags.push_back((self.next_seq - 1, lsn));
        }
        // A value of hundreds of MB must not keep its buffer for the rest of the run.
        if self.buffer.capacity() > BUFFER_KEPT {
            self.buffer = Vec::with_capacity(4096);
        }
        Ok(())
    }

    async fn produce_txn(&mut self, pos: Position, record: &TxnRecord, tag: Option<Lsn>) -> Result<(), CaptureError> {
        self.buffer.clear();
        serde_json::to_writer(&mut self.buffer, record).expect("txn records serialize");
        self.metrics.txn_records.inc();
        self.metrics.txn_bytes.inc_by(self.buffer.len() as u64);
        self.produce(None, 0, tag, pos).await
    }

    pub async fn begin(&mut self, begin: Begin) -> Result<(), CaptureError> {
        if let Some(open) = &self.txn {
            return Err(CaptureError::Stream(format!(
                "begin of transaction {} at {} while transaction {} is open: the decoder lost a commit",
                begin.xid, begin.commit_lsn, open.xid
            )));
        }
        // Written only if the transaction grows long (`publish_raw`): its key and content do not depend on when.
        let record = TxnRecord::Begin {
            v: ENVELOPE_VERSION,
            xid: begin.xid,
            commit_lsn: begin.commit_lsn,
            commit_time: begin.commit_time,
        };
        self.txn = Some(OpenTxn {
            xid: begin.xid,
            commit_lsn: begin.commit_lsn,
            next_ordinal: 1,
            counts: BTreeMap::new(),
            records: 0,
            begin: Some(record),
        });
        Ok(())
    }

    /// A transaction's (or chunk's) records per topic-partition, sorted by topic name, not route index: a
    /// transaction sent again after a restart (where tables may be seen in another order) must produce the same
    /// commit record.
    fn counts(&self, txn: OpenTxn) -> Vec<PartitionCount> {
        let mut counts: Vec<PartitionCount> = txn
            .counts
            .into_iter()
            .map(|((route, partition), count)| PartitionCount {
                topic: self.routes[route].topic.clone(),
                partition,
                count,
            })
            .collect();
        counts.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        counts
    }

    /// Opens one chunk of the snapshot bootstrap: its rows (and truncates) get positions `(commit_lsn, base + 1 …)`
    /// and are counted per partition like a transaction's, without a begin record.
    pub fn open_chunk(&mut self, commit_lsn: Lsn, base: u64) -> Result<(), CaptureError> {
        if let Some(open) = &self.txn {
            return Err(CaptureError::Stream(format!(
                "a bootstrap chunk opened while transaction {} is open",
                open.xid
            )));
        }
        self.txn = Some(OpenTxn {
            xid: 0,
            commit_lsn,
            next_ordinal: base + 1,
            counts: BTreeMap::new(),
            records: 0,
            begin: None,
        });
        Ok(())
    }

    /// Rows published in the open chunk so far.
    pub fn chunk_rows(&self, base: u64) -> u64 {
        self.txn.as_ref().map_or(0, |t| t.next_ordinal - base - 1)
    }

    /// Closes the open chunk: waits until every one of its records is acknowledged, then sends its txn record
    /// (built from the counts) and waits for that too. A chunk record is never in Kafka without all its rows.
    pub async fn close_chunk(
        &mut self,
        pos: Position,
        build: impl FnOnce(Vec<PartitionCount>) -> TxnRecord,
    ) -> Result<(), CaptureError> {
        let txn = self.txn.take().ok_or_else(|| CaptureError::Stream("no bootstrap chunk is open".into()))?;
        let counts = self.counts(txn);
        self.drain().await?;
        self.produce_txn(pos, &build(counts), None).await?;
        self.drain().await?;
        Ok(())
    }

    /// A txn record outside any transaction (the bootstrap's plan), acknowledged before this returns.
    pub async fn control(&mut self, pos: Position, record: &TxnRecord) -> Result<(), CaptureError> {
        self.produce_txn(pos, record, None).await?;
        self.drain().await?;
        Ok(())
    }

    fn next_position(&mut self, what: &str) -> Result<(Position, u32), CaptureError> {
        let txn = self.txn.as_mut().ok_or_else(|| CaptureError::Stream(format!("{what} outside a transaction")))?;
        let pos = Position::new(txn.commit_lsn, txn.next_ordinal);
        txn.next_ordinal += 1;
        Ok((pos, txn.xid))
    }

    async fn publish_raw(&mut self, route: usize, record: RawRecord, partition: i32) -> Result<(), CaptureError> {
        self.buffer.clear();
        // A large row's JSON is written into a buffer of its size at once: growing by doubling would hold the old
        // and the new buffer together (two more copies of the row at the peak).
        let text = record.new.text_bytes()
            + record.old.as_ref().map_or(0, Row::text_bytes)
            + record.copy.as_ref().map_or(0, |c| c.text.len());
        if text > BUFFER_KEPT {
            self.buffer.reserve_exact(text + text / 8 + 4096);
        }
        serde_json::to_writer(&mut self.buffer, &record).expect("raw records serialize");
        let pos = record.pos;
        drop(record);
        let Route { records, bytes, .. } = &self.routes[route];
        records.inc();
        bytes.inc_by(self.buffer.len() as u64);
        self.produce(Some(route), partition, None, pos).await?;
        let txn = self.txn.as_mut().expect("checked by next_position");
        *txn.counts.entry((route, partition)).or_default() += 1;
        txn.records += 1;
        if txn.records >= BEGIN_AFTER_RECORDS {
            if let Some(begin) = txn.begin.take() {
                let at = Position::new(txn.commit_lsn, Position::BEGIN);
                self.produce_txn(at, &begin, None).await?;
            }
        }
        Ok(())
    }

    pub async fn row(&mut self, change: RowChange) -> Result<(), CaptureError> {
        let op = match change.op {
            RowOp::Insert => Op::Insert,
            RowOp::Update => Op::Update,
            RowOp::Delete => Op::Delete,
        };
        self.publish_change(change, op).await
    }

    /// Rows copied by the bootstrap in COPY's text format: op `copy`, no xid. Batches go round the partitions (a
    /// chunk is applied whole before any change of the stream, so its rows need no partition by key).
    pub async fn copy_batch(
        &mut self,
        table: &TableRef,
        key: &[String],
        batch: pgm_common::envelope::CopyBatch,
    ) -> Result<(), CaptureError> {
        let Some(route) = self.route(table).await? else { return Ok(()) };
        let (pos, _) = self.next_position("copy batch")?;
        let partition = (pos.ordinal % self.partitions as u64) as i32;
        let record = RawRecord {
            v: ENVELOPE_VERSION,
            pos,
            op: Op::Copy,
            source: table.clone(),
            xid: None,
            key: key.to_vec(),
            new: Row::default(),
            old: None,
            copy: Some(batch),
        };
        self.publish_raw(route, record, partition).await
    }

    /// A row copied by the bootstrap: op `snapshot`, no xid, partitioned like an insert of the same row.
    pub async fn snapshot_row(&mut self, change: RowChange) -> Result<(), CaptureError> {
        self.publish_change(change, Op::Snapshot).await
    }

    async fn publish_change(&mut self, change: RowChange, op: Op) -> Result<(), CaptureError> {
        let Some(route) = self.route(&change.table).await? else { return Ok(()) };
        let (pos, xid) = self.next_position("row change")?;
        let partition = partition_for(&change, self.partitions);
        let record = RawRecord {
            v: ENVELOPE_VERSION,
            pos,
            op,
            source: change.table,
            xid: (op != Op::Snapshot).then_some(xid),
            key: change.key_columns,
            new: change.new,
            old: change.identity,
            copy: None,
        };
        self.publish_raw(route, record, partition).await
    }

    pub async fn truncate(&mut self, truncate: Truncate) -> Result<(), CaptureError> {
        let Some(route) = self.route(&truncate.table).await? else { return Ok(()) };
        let (pos, xid) = self.next_position("truncate")?;
        let record = RawRecord {
            v: ENVELOPE_VERSION,
            pos,
            op: Op::Truncate,
            source: truncate.table,
            xid: Some(xid),
            key: Vec::new(),
            new: Row::default(),
            old: None,
            copy: None,
        };
        self.publish_raw(route, record, 0).await
    }

    pub async fn message(&mut self, message: Message) -> Result<(), CaptureError> {
        let pos = if message.transactional {
            self.next_position("transactional message")?.0
        } else {
            Position::new(message.lsn, Position::BEGIN)
        };
        let record = TxnRecord::Message {
            v: ENVELOPE_VERSION,
            pos,
            transactional: message.transactional,
            prefix: message.prefix,
            content: message.content,
        };
        self.produce_txn(pos, &record, None).await
    }

    pub async fn commit(&mut self, commit: Commit) -> Result<(), CaptureError> {
        let txn =
            self.txn.take().ok_or_else(|| CaptureError::Stream(format!("commit of {} without begin", commit.xid)))?;
        if txn.commit_lsn != commit.commit_lsn {
            return Err(CaptureError::Stream(format!(
                "commit at {} does not match the open transaction's commit LSN {}",
                commit.commit_lsn, txn.commit_lsn
            )));
        }
        let counts = self.counts(txn);
        let record = TxnRecord::Commit {
            v: ENVELOPE_VERSION,
            xid: commit.xid,
            commit_lsn: commit.commit_lsn,
            end_lsn: commit.end_lsn,
            commit_time: commit.commit_time,
            counts,
        };
        self.produce_txn(Position::new(commit.commit_lsn, Position::COMMIT), &record, Some(commit.end_lsn)).await?;
        self.metrics.transactions.inc();
        Ok(())
    }

    /// A heartbeat while idle: tells downstream that nothing before `wal_end` is missing.
    pub async fn heartbeat(&mut self, wal_end: Lsn) -> Result<(), CaptureError> {
        let sent_at_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let record = TxnRecord::Heartbeat { v: ENVELOPE_VERSION, wal_end, sent_at_ms };
        self.produce_txn(Position::new(wal_end, Position::BEGIN), &record, Some(wal_end)).await
    }
}

/// A failed delivery as capture's error: the record's topic, partition and position.
fn delivery_error(failed: Failed) -> CaptureError {
    let Failed { topic, partition, key, error } = failed;
    match Position::from_key(&key) {
        Ok(pos) => CaptureError::Delivery { topic, partition, pos, error },
        Err(_) => CaptureError::Stream(format!("delivery to {topic} [{partition}] failed: {error}")),
    }
}

/// Partition of a row change: a stable hash (FNV-1a 64) of its key values, so one row's history stays in one
/// partition. The key is the new row's primary key when the change carries it (insert, update — also after a key
/// change, where the row lives on), else the old identity (delete); without a primary key, every identity column.
pub fn partition_for(change: &RowChange, partitions: i32) -> i32 {
    let row = if change.new.is_empty() { change.key_row() } else { &change.new };
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            hash ^= u64::from(*b);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    };
    let mut feed_value = |value: Option<&str>| match value {
        // Length-prefixed, so ("ab","c") and ("a","bc") differ; NULL has its own marker.
        Some(text) => {
            feed(&(text.len() as u64).to_be_bytes());
            feed(text.as_bytes());
        }
        None => feed(&[0xff; 9]),
    };
    if change.key_columns.is_empty() {
        for column in row.columns() {
            feed_value(column.value.as_text());
        }
    } else {
        for name in &change.key_columns {
            let value = row.columns().iter().find(|c| &c.name == name).and_then(|c| c.value.as_text());
            feed_value(value);
        }
    }
    (hash % partitions.max(1) as u64) as i32
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgm_common::change::{Column, Datum};

    fn change(op: RowOp, new: &[(&str, &str)], old: &[(&str, &str)]) -> RowChange {
        let row = |cols: &[(&str, &str)]| {
            Row(cols
                .iter()
                .map(|(n, v)| Column {
                    name: (*n).into(),
                    type_name: "text".into(),
                    type_oid: 25,
                    value: Datum::Text((*v).into()),
                })
                .collect())
        };
        RowChange {
            op,
            table: TableRef::new("public", "t"),
            key_columns: vec!["id".into()],
            new: row(new),
            identity: (!old.is_empty()).then(|| row(old)),
            lsn: None,
        }
    }

    #[test]
    fn one_row_keeps_its_partition() {
        let insert = change(RowOp::Insert, &[("id", "7"), ("v", "a")], &[]);
        let update = change(RowOp::Update, &[("id", "7"), ("v", "b")], &[("id", "7")]);
        let delete = change(RowOp::Delete, &[], &[("id", "7")]);
        let p = partition_for(&insert, 8);
        assert_eq!(partition_for(&update, 8), p);
        assert_eq!(partition_for(&delete, 8), p);
        // Values spread over partitions.
        let spread: std::collections::HashSet<i32> =
            (0..100).map(|i| partition_for(&change(RowOp::Insert, &[("id", &i.to_string())], &[]), 8)).collect();
        assert_eq!(spread.len(), 8);
    }
}
