//! The Kafka side of apply: the txn topic in order, and the out-topic partitions merged per source transaction.
//!
//! ```text
//!   <prefix>.txn[0]  ── begin · message · commit{counts} · heartbeat ──▶ next_txn_record()
//!   <prefix>.out.<s>.<t>[p] ──▶ Part (one peeked head) ─┐
//!   <prefix>.out.<s>.<u>[q] ──▶ Part                    ├─▶ TxnCursor: smallest position first ──▶ next_change()
//!   …                                                   ┘
//! ```
//!
//! Partitions are assigned by hand (no group rebalancing: apply is one process) and each gets its own librdkafka
//! queue, so apply reads exactly the partition it needs next and librdkafka's bounded prefetch is the only buffer.
//! A partition holds its transactions in commit order, with repeats after a capture or transform restart (same
//! keys, same content). While collecting transaction T, a record is dropped when its position is at or below the
//! applied position or the last one taken from that partition (a repeat), or below T (a repeat of an earlier
//! transaction); a record of a later transaction while T still misses records there means records were lost, and
//! apply stops rather than guess.
//!
//! The offset stored per partition is the one after the last record consumed (taken or dropped); a peeked head is
//! not consumed, so a restart reads it again.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgm_common::config::PipelineConfig;
use pgm_common::envelope::{OutRecord, RawRecord, RecordOrigin, TxnRecord};
use pgm_common::parts::{self, Assembler};
use pgm_common::telemetry::Health;
use pgm_common::topics::Topics;
use pgm_common::{kafka, Position};
use rdkafka::consumer::stream_consumer::StreamPartitionQueue;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::ApplyError;

/// librdkafka settings apply needs over the consumer defaults (common/src/kafka.rs), under the user's passthrough.
/// Its prefetch is its only buffer: at most 4 MiB per partition queue. An offset that retention deleted must stop
/// apply, never silently skip to the earliest record.
const APPLY_CONSUMER_DEFAULTS: &[(&str, &str)] =
    &[("queued.max.messages.kbytes", "4096"), ("auto.offset.reset", "error")];

/// How long to wait for a record before logging what apply is waiting for.
const WAIT_WARNING: Duration = Duration::from_secs(30);
/// How long apply waits for a topic or a transaction's records before its health says so (`waiting: …`).
const WAIT_REPORT: Duration = Duration::from_secs(10);

type Consumer_ = StreamConsumer<kafka::ServiceContext>;
type Queue = StreamPartitionQueue<kafka::ServiceContext>;

/// An out record with its offset in its partition.
#[derive(Debug)]
pub struct Change {
    pub record: OutRecord,
    pub offset: i64,
}

struct Part {
    queue: Queue,
    head: Option<Change>,
    /// `head` came from the raw partition (a declared passthrough range), not from this out partition.
    head_raw: bool,
    /// The offset after the last record consumed; where a restart resumes. Never inside a record sent in parts, and
    /// never past a passthrough declaration whose range is not consumed yet.
    next_offset: i64,
    last_taken: Option<Position>,
    /// Joins records sent in parts (`pgm_common::parts`).
    assembler: Assembler,
    /// The declaration being followed: raw records `from ..= through` are taken from the raw partition.
    pass: Option<Pass>,
    /// The raw partition of the same number, opened at the first declaration.
    raw: Option<RawSide>,
}

/// A passthrough declaration (`OutRecord::pass_through`) and where it is in the out partition.
#[derive(Clone, Copy)]
struct Pass {
    from: Position,
    through: Position,
    offset: i64,
}

/// The raw partition behind an out partition, read only inside declared ranges.
struct RawSide {
    topic: String,
    queue: Queue,
    next_offset: i64,
    assembler: Assembler,
}

impl Part {
    fn new(queue: Queue, from: i64) -> Self {
        Part {
            queue,
            head: None,
            head_raw: false,
            next_offset: from,
            last_taken: None,
            assembler: Assembler::default(),
            pass: None,
            raw: None,
        }
    }

    /// A record at `pos` of the declared range was consumed (taken or dropped): the range ends with its last one,
    /// and the declaration itself is consumed then.
    fn consumed_raw(&mut self, pos: Position, offset: i64) {
        if let Some(raw) = &mut self.raw {
            raw.next_offset = offset + 1;
        }
        if let Some(pass) = self.pass {
            if pos >= pass.through {
                self.pass = None;
                self.next_offset = pass.offset + 1;
            }
        }
    }
}

/// One source transaction being collected: how many records each partition still owes.
pub struct TxnCursor {
    pub commit: Position,
    remaining: Vec<((String, i32), u64)>,
    /// A bootstrap chunk: only ordinals in `(lo, hi)` of the commit LSN are its records; lower ones belong to
    /// chunks before it (or to an interrupted attempt) and are passed over.
    window: Option<(u64, u64)>,
}

impl TxnCursor {
    pub fn is_done(&self) -> bool {
        self.remaining.iter().all(|(_, n)| *n == 0)
    }

    /// Restricts the cursor to one bootstrap chunk's ordinals `(lo, hi)`.
    pub fn within(mut self, lo: u64, hi: u64) -> Self {
        self.window = Some((lo, hi));
        self
    }
}

pub struct Reader {
    consumer: Arc<Consumer_>,
    topics: Topics,
    txn_topic: String,
    txn: Queue,
    /// Joins txn records sent in parts (a large logical message).
    txn_assembler: Assembler,
    /// The offset after the last txn record consumed.
    pub txn_next: i64,
    /// Looked up for every change (ahash: SipHash of the keys was 3–4 % of apply's CPU).
    parts: HashMap<(String, i32), Part, ahash::RandomState>,
    /// Offsets stored in DB2 for partitions not opened yet in this session.
    stored: HashMap<(String, i32), i64>,
    /// Set when a record reached the main queue: this session can no longer see every record in order.
    stray: Arc<AtomicBool>,
    events: tokio::task::JoinHandle<()>,
    /// Ends every wait for records or topics with [`ApplyError::Interrupted`], and shows a long one in health.
    waits: Waits,
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.events.abort();
    }
}

fn kafka_error(what: &str, error: KafkaError) -> ApplyError {
    match error {
        KafkaError::MessageConsumption(RDKafkaErrorCode::OffsetOutOfRange)
        | KafkaError::PartitionEOF(_)
        | KafkaError::MessageConsumptionFatal(_) => ApplyError::Stream(format!(
            "{what}: {error}; the records apply needs next are gone from Kafka (retention?): \
             rebuild DB2 from a new bootstrap, or restore the topics"
        )),
        other => ApplyError::kafka(what, other),
    }
}

impl Reader {
    /// Opens the txn topic at `txn_offset`; out partitions open on first use at their stored offsets.
    pub async fn open(
        config: &PipelineConfig,
        txn_offset: i64,
        stored: HashMap<(String, i32), i64>,
        health: Health,
        shutdown: CancellationToken,
    ) -> Result<Self, ApplyError> {
        let mut client = kafka::client_config(&config.kafka, "pgm-apply", kafka::Role::Consumer);
        for (key, value) in APPLY_CONSUMER_DEFAULTS {
            if !config.kafka.librdkafka.contains_key(*key) {
                client.set(*key, *value);
            }
        }
        client.set("group.id", &config.apply.group_id);
        let consumer: Arc<Consumer_> = Arc::new(
            client
                .create_with_context(kafka::ServiceContext)
                .map_err(|e| ApplyError::kafka("cannot create the consumer", e))?,
        );
        let topics = config.topics();
        let txn_topic = topics.txn();
        let waits = Waits { topics: topics.clone(), health: health.clone(), shutdown: shutdown.clone() };
        waits.partition(&consumer, &txn_topic, 0).await?;
        // Open every partition known now in one assignment, so they all fetch at once: the txn topic, the
        // partitions DB2's progress names, and those of the configured tables' out topics that exist already.
        let existing: HashMap<String, usize> = metadata(&consumer, None)
            .await
            .map_err(|e| ApplyError::kafka("listing topics", e))?
            .topics()
            .iter()
            .map(|t| (t.name().to_owned(), t.partitions().len()))
            .collect();
        // Raw partitions open only when a declaration sends apply there.
        let mut initial: BTreeMap<(String, i32), i64> = stored
            .iter()
            .filter(|((topic, _), _)| topics.table_of_raw(topic).is_none())
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        for table in config.tables() {
            let read = topics.out(&table).map_err(|e| ApplyError::Target(format!("{table}: {e}")))?;
            for partition in 0..existing.get(&read).copied().unwrap_or(0) as i32 {
                initial.entry((read.clone(), partition)).or_insert(0);
            }
        }
        initial.insert((txn_topic.clone(), 0), txn_offset);
        let mut queues = assign(&consumer, &initial)?;
        let txn = queues.remove(&(txn_topic.clone(), 0)).expect("assigned above");
        let parts = queues
            .into_iter()
            .map(|(key, queue)| {
                let part = Part::new(queue, initial[&key]);
                (key, part)
            })
            .collect();
        // Every partition has its own queue; the main queue only serves events (errors, statistics).
        let main = consumer.clone();
        let stray = Arc::new(AtomicBool::new(false));
        let stray_seen = stray.clone();
        let events = tokio::spawn(async move {
            loop {
                match main.recv().await {
                    Ok(message) => {
                        tracing::warn!(
                            topic = message.topic(),
                            partition = message.partition(),
                            offset = message.offset(),
                            "a record arrived outside its partition queue; restarting the session to read it again"
                        );
                        stray_seen.store(true, Ordering::Relaxed);
                    }
                    // The same errors reach the client context: one line per kind and interval is enough.
                    Err(error) => {
                        if let Some(held) = kafka::throttled(&format!("consumer {:?}", error.rdkafka_error_code())) {
                            tracing::warn!(%error, held_back = held, "Kafka consumer");
                        }
                    }
                }
            }
        });
        Ok(Reader {
            consumer,
            topics,
            txn_topic,
            txn,
            txn_assembler: Assembler::default(),
            txn_next: txn_offset,
            parts,
            stored,
            stray,
            events,
            waits,
        })
    }

    /// The next txn record and its offset, or `None` when none arrives within `wait`.
    pub async fn next_txn_record(&mut self, wait: Duration) -> Result<Option<(TxnRecord, i64)>, ApplyError> {
        self.check_stray()?;
        loop {
            let message = match tokio::time::timeout(wait, self.txn.recv()).await {
                Err(_) => return Ok(None),
                Ok(message) => message.map_err(|e| kafka_error(&format!("reading {}", self.txn_topic), e))?,
            };
            let offset = message.offset();
            let origin = RecordOrigin { topic: &self.txn_topic, partition: 0, offset };
            let key = message.key().unwrap_or_default();
            let assembled =
                self.txn_assembler.push(key, parts::of_message(&message), message.payload().unwrap_or_default());
            // A part before the last: the record is not consumed until its last part (its offset is that part's).
            let Some(bytes) = assembled.bytes() else { continue };
            return Ok(Some((TxnRecord::decode(bytes, origin)?, offset)));
        }
    }

    /// Starts collecting a transaction from its commit record's counts (raw topics → their out topics).
    pub async fn cursor(
        &mut self,
        commit: Position,
        counts: &[pgm_common::envelope::PartitionCount],
    ) -> Result<TxnCursor, ApplyError> {
        let mut remaining = Vec::with_capacity(counts.len());
        for count in counts {
            let out = self.topics.out_of_raw(&count.topic).ok_or_else(|| {
                ApplyError::Stream(format!(
                    "commit record of {commit} counts records in {}, which is not a raw topic of prefix {}: \
                     is topics.prefix the one capture uses?",
                    count.topic,
                    self.topics.prefix()
                ))
            })?;
            let key = (out, count.partition);
            if !self.parts.contains_key(&key) {
                let from = self.stored.get(&key).copied().unwrap_or(0);
                let queue = open_queue(&self.consumer, &key.0, key.1, from, &self.waits).await?;
                self.parts.insert(key.clone(), Part::new(queue, from));
            }
            remaining.push((key, count.count));
        }
        Ok(TxnCursor { commit, remaining, window: None })
    }

    fn check_stray(&self) -> Result<(), ApplyError> {
        if self.stray.load(Ordering::Relaxed) {
            return Err(ApplyError::Consumer("a record bypassed its partition queue; starting a new session".into()));
        }
        Ok(())
    }

    /// The transaction's next change in position order, or `None` when all its counted records were taken.
    pub async fn next_change(
        &mut self,
        cursor: &mut TxnCursor,
        applied: Position,
    ) -> Result<Option<Change>, ApplyError> {
        self.check_stray()?;
        let mut best: Option<(usize, Position)> = None;
        for (index, (key, remaining)) in cursor.remaining.iter().enumerate() {
            if *remaining == 0 {
                continue;
            }
            let part = self.parts.get_mut(key).expect("opened by cursor()");
            let sides = Sides { consumer: &self.consumer, stored: &self.stored, waits: &self.waits };
            let pos = peek(part, key, cursor.commit, cursor.window, *remaining, applied, sides).await?;
            if best.is_none_or(|(_, b)| pos < b) {
                best = Some((index, pos));
            }
        }
        let Some((index, _)) = best else { return Ok(None) };
        let (key, remaining) = &mut cursor.remaining[index];
        *remaining -= 1;
        let part = self.parts.get_mut(key).expect("opened by cursor()");
        let change = part.head.take().expect("peeked");
        if part.head_raw {
            part.consumed_raw(change.record.pos, change.offset);
        } else {
            part.next_offset = change.offset + 1;
        }
        part.last_taken = Some(change.record.pos);
        Ok(Some(change))
    }

    /// Where to resume each out partition read so far, for DB2's progress table (the txn topic's is `txn_next`).
    pub fn positions(&self) -> BTreeMap<(String, i32), i64> {
        let mut positions: BTreeMap<(String, i32), i64> =
            self.parts.iter().map(|(key, part)| (key.clone(), part.next_offset)).collect();
        for ((_, partition), part) in &self.parts {
            if let Some(raw) = &part.raw {
                positions.insert((raw.topic.clone(), *partition), raw.next_offset);
            }
        }
        positions
    }

    /// Commits the positions and the txn topic's to the consumer group, for Kafka lag tools only (apply itself seeks from DB2).
    pub fn commit_to_kafka(&self, positions: &BTreeMap<(String, i32), i64>) {
        let mut list = TopicPartitionList::new();
        let txn = ((self.txn_topic.clone(), 0), self.txn_next);
        for ((topic, partition), offset) in positions.iter().chain([(&txn.0, &txn.1)]) {
            if list.add_partition_offset(topic, *partition, Offset::Offset(*offset)).is_err() {
                return;
            }
        }
        if let Err(error) = self.consumer.commit(&list, CommitMode::Async) {
            tracing::debug!(%error, "consumer-group offsets not committed (lag tools only; progress is in DB2)");
        }
    }
}

/// Assigns one partition at `from` and gives it its own queue (once its topic exists).
async fn open_queue(
    consumer: &Arc<Consumer_>,
    topic: &str,
    partition: i32,
    from: i64,
    waits: &Waits,
) -> Result<Queue, ApplyError> {
    waits.partition(consumer, topic, partition).await?;
    let key = (topic.to_owned(), partition);
    let mut queues = assign(consumer, &BTreeMap::from([(key.clone(), from)]))?;
    Ok(queues.remove(&key).expect("assigned"))
}

/// Gives each partition its own queue, then adds the partitions to the assignment at the given offsets. The split
/// comes first: it marks the partition's fetch queue as routed by the application, which the fetch start of the
/// assignment leaves alone (librdkafka `rd_kafka_toppar_op_fetch_start`, `RD_KAFKA_Q_F_FWD_APP`), so no record can
/// land on the main queue in between. Should one still arrive there, the events task reports it as stray and the
/// session ends (a new one seeks from DB2's progress: nothing is skipped).
fn assign(
    consumer: &Arc<Consumer_>,
    partitions: &BTreeMap<(String, i32), i64>,
) -> Result<HashMap<(String, i32), Queue>, ApplyError> {
    let mut list = TopicPartitionList::new();
    let mut queues = HashMap::new();
    for ((topic, partition), from) in partitions {
        list.add_partition_offset(topic, *partition, Offset::Offset(*from))
            .map_err(|e| ApplyError::kafka(format!("{topic}[{partition}] offset {from}"), e))?;
        let queue = consumer.split_partition_queue(topic, *partition).ok_or_else(|| {
            ApplyError::Consumer(format!("cannot open a queue for {topic}[{partition}] (does the topic exist?)"))
        })?;
        queues.insert((topic.clone(), *partition), queue);
    }
    consumer.incremental_assign(&list).map_err(|e| ApplyError::kafka("assigning partitions", e))?;
    for ((topic, partition), from) in partitions {
        tracing::debug!(topic, partition, from, "partition opened");
    }
    Ok(queues)
}

/// The broker's metadata (a blocking librdkafka call) off the runtime's thread: apply runs on one thread.
async fn metadata(consumer: &Arc<Consumer_>, topic: Option<&str>) -> Result<rdkafka::metadata::Metadata, KafkaError> {
    let (consumer, topic) = (consumer.clone(), topic.map(str::to_owned));
    tokio::task::spawn_blocking(move || consumer.fetch_metadata(topic.as_deref(), Duration::from_secs(10)))
        .await
        .unwrap_or(Err(KafkaError::Canceled))
}

/// What apply's waits need: the topic names to explain a wait, the health to show it, the stop to end it.
struct Waits {
    topics: Topics,
    health: Health,
    shutdown: CancellationToken,
}

/// A wait that has lasted past [`WAIT_REPORT`]: health says `waiting: …` and the log says it, again every
/// [`WAIT_WARNING`]; health is cleared when the wait ends.
struct Reported<'a> {
    health: &'a Health,
    started: Instant,
    next_report: Instant,
    reported: bool,
}

impl<'a> Reported<'a> {
    fn new(health: &'a Health) -> Self {
        let started = Instant::now();
        Reported { health, started, next_report: started + WAIT_REPORT, reported: false }
    }

    /// When the wait is due a report, sets health to `what` and returns true (the caller logs).
    fn due(&mut self, what: impl FnOnce() -> String) -> bool {
        if Instant::now() < self.next_report {
            return false;
        }
        self.next_report = Instant::now() + WAIT_WARNING;
        self.health.set_waiting(what());
        self.reported = true;
        true
    }

    fn waited_s(&self) -> u64 {
        self.started.elapsed().as_secs()
    }
}

impl Drop for Reported<'_> {
    fn drop(&mut self) {
        if self.reported {
            self.health.clear_waiting();
        }
    }
}

impl Waits {
    /// librdkafka does not start fetching a partition of a topic that did not exist when it was assigned, so apply
    /// waits until the topic is there (capture creates the txn topic, transform the out topics on first sight).
    async fn partition(&self, consumer: &Arc<Consumer_>, topic: &str, partition: i32) -> Result<(), ApplyError> {
        let mut report = Reported::new(&self.health);
        loop {
            if self.shutdown.is_cancelled() {
                return Err(ApplyError::Interrupted);
            }
            // librdkafka's metadata call blocks up to its timeout while no broker answers: a stop does not wait.
            let metadata = tokio::select! {
                _ = self.shutdown.cancelled() => return Err(ApplyError::Interrupted),
                metadata = metadata(consumer, Some(topic)) => {
                    metadata.map_err(|e| ApplyError::kafka(format!("metadata of {topic}"), e))?
                }
            };
            let found = metadata
                .topics()
                .iter()
                .find(|t| t.name() == topic)
                .is_some_and(|t| t.error().is_none() && t.partitions().iter().any(|p| p.id() == partition));
            if found {
                return Ok(());
            }
            let what = || format!("{} does not exist yet", self.topics.describe(topic));
            if report.due(what) {
                tracing::warn!(topic, partition, waited_s = report.waited_s(), "waiting for {}", what());
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// What peek needs besides the partition: to open the raw partition behind it, and to report waits.
struct Sides<'a> {
    consumer: &'a Arc<Consumer_>,
    stored: &'a HashMap<(String, i32), i64>,
    waits: &'a Waits,
}

/// The next message of a queue, waiting as long as it takes (reporting a long wait), or an interruption.
async fn receive<'q, 'w>(
    queue: &'q Queue,
    waits: &'w Waits,
    report: &mut Option<Reported<'w>>,
    what: impl Fn() -> String,
    (topic, partition, commit, remaining): (&str, i32, Position, u64),
) -> Result<rdkafka::message::BorrowedMessage<'q>, ApplyError> {
    loop {
        let received = tokio::select! {
            _ = waits.shutdown.cancelled() => return Err(ApplyError::Interrupted),
            received = tokio::time::timeout(Duration::from_secs(1), queue.recv()) => received,
        };
        match received {
            Ok(message) => return message.map_err(|e| kafka_error(&format!("reading {topic}[{partition}]"), e)),
            Err(_) => {
                let report = report.get_or_insert_with(|| Reported::new(&waits.health));
                if report.due(&what) {
                    tracing::warn!(
                        topic = %topic, partition, txn = %commit.commit_lsn, missing = remaining,
                        waited_s = report.waited_s(),
                        "waiting: {}", what()
                    );
                }
            }
        }
    }
}

/// Whether a message is a passthrough declaration (its header says so).
fn is_declaration(message: &rdkafka::message::BorrowedMessage<'_>) -> bool {
    use rdkafka::message::Headers;
    message.headers().is_some_and(|h| h.iter().any(|header| header.key == pgm_common::envelope::PASS_HEADER))
}

/// Makes the partition's head the next record of the transaction and returns its position. Out records come from
/// the out partition; inside a passthrough declaration's range, the raw records come from the raw partition of the
/// same number and are applied as captured.
async fn peek(
    part: &mut Part,
    (topic, partition): &(String, i32),
    commit: Position,
    window: Option<(u64, u64)>,
    remaining: u64,
    applied: Position,
    sides: Sides<'_>,
) -> Result<Position, ApplyError> {
    let waits = sides.waits;
    // Made on the first empty receive only: this runs for every change.
    let mut report: Option<Reported> = None;
    loop {
        if part.head.is_none() {
            if let Some(pass) = part.pass {
                if part.raw.is_none() {
                    let raw_topic = waits.topics.raw_of_out(topic).ok_or_else(|| {
                        ApplyError::Stream(format!(
                            "{topic}[{partition}] declares a passthrough but is not an out topic"
                        ))
                    })?;
                    let from = sides.stored.get(&(raw_topic.clone(), *partition)).copied().unwrap_or(0);
                    let queue = open_queue(sides.consumer, &raw_topic, *partition, from, waits).await?;
                    part.raw =
                        Some(RawSide { topic: raw_topic, queue, next_offset: from, assembler: Assembler::default() });
                }
                let raw = part.raw.as_mut().expect("opened above");
                let what = || {
                    format!(
                        "transaction {} (commit LSN) still needs {remaining} record(s) from {}[{partition}] (declared \
                         passed through up to {}), after offset {}",
                        commit.commit_lsn,
                        waits.topics.describe(&raw.topic),
                        pass.through,
                        raw.next_offset
                    )
                };
                let message =
                    receive(&raw.queue, waits, &mut report, what, (&raw.topic, *partition, commit, remaining)).await?;
                let offset = message.offset();
                let key = message.key().unwrap_or_default();
                let assembled =
                    raw.assembler.push(key, parts::of_message(&message), message.payload().unwrap_or_default());
                let Some(payload) = assembled.bytes() else { continue };
                let pos = Position::from_key(key)
                    .map_err(|e| ApplyError::Stream(format!("{}[{partition}] at offset {offset}: {e}", raw.topic)))?;
                if pos > pass.through {
                    return Err(ApplyError::Stream(format!(
                        "{}[{partition}] at offset {offset}: found {pos} past the declared passthrough range {} ..= {}: \
                         raw records are missing. Nothing after the applied position {applied} was written.",
                        raw.topic, pass.from, pass.through
                    )));
                }
                // Before the range (a record the rules rewrote, or a repeat), or a bootstrap chunk's neighbour: passed
                // over without decoding.
                let neighbour = window.is_some_and(|(lo, _)| pos.commit_lsn == commit.commit_lsn && pos.ordinal <= lo);
                if pos < pass.from || neighbour {
                    part.consumed_raw(pos, offset);
                    continue;
                }
                let origin = RecordOrigin { topic: &raw.topic, partition: *partition, offset };
                let record = pgm_rules::rewrite::unchanged(RawRecord::decode(payload, origin)?);
                part.head = Some(Change { record, offset });
                part.head_raw = true;
            } else {
                let what = || {
                    format!(
                        "transaction {} (commit LSN) still needs {remaining} record(s) from {}[{partition}], after \
                         offset {}",
                        commit.commit_lsn,
                        waits.topics.describe(topic),
                        part.next_offset
                    )
                };
                let message =
                    receive(&part.queue, waits, &mut report, what, (topic, *partition, commit, remaining)).await?;
                let offset = message.offset();
                let origin = RecordOrigin { topic, partition: *partition, offset };
                let key = message.key().unwrap_or_default();
                let declaration = is_declaration(&message);
                let assembled =
                    part.assembler.push(key, parts::of_message(&message), message.payload().unwrap_or_default());
                // A part before the last: keep reading. next_offset stays before the record's first part.
                let Some(payload) = assembled.bytes() else { continue };
                // A bootstrap chunk's neighbours (other chunks, an interrupted attempt) are passed over by their key,
                // without decoding: after a restart apply reads the whole copy again to find the chunks DB2 lacks.
                // A declaration's key is only where its range starts: it is always read.
                if let (Some((lo, _)), Ok(pos), false) = (window, Position::from_key(key), declaration) {
                    if pos.commit_lsn == commit.commit_lsn && pos.ordinal <= lo {
                        part.next_offset = offset + 1;
                        continue;
                    }
                }
                let record = OutRecord::decode(payload, origin)?;
                if let Some(through) = record.pass_through {
                    let done = through < record.pos
                        || through <= applied
                        || part.last_taken.is_some_and(|last| through <= last);
                    if done {
                        // Every record it covers is applied already (a repeat of the declaration, or a restart).
                        part.next_offset = offset + 1;
                    } else {
                        part.pass = Some(Pass { from: record.pos, through, offset });
                    }
                    continue;
                }
                part.head = Some(Change { record, offset });
                part.head_raw = false;
            }
        }
        let head = part.head.as_ref().expect("filled above");
        let (pos, offset) = (head.record.pos, head.offset);
        let mut repeat = pos <= applied || part.last_taken.is_some_and(|last| pos <= last);
        if let Some((lo, hi)) = window.filter(|_| pos.commit_lsn == commit.commit_lsn) {
            if pos.ordinal >= hi {
                return Err(ApplyError::Stream(format!(
                    "{topic}[{partition}] at offset {offset}: found {pos}, a later bootstrap chunk's record, while the \
                     chunk at ordinals {lo}… still has {remaining} record(s) in this partition: records are missing \
                     from the out topic. Nothing of this chunk was written."
                )));
            }
            repeat |= pos.ordinal <= lo;
        }
        if repeat || pos.commit_lsn < commit.commit_lsn {
            part.head = None;
            if part.head_raw {
                part.consumed_raw(pos, offset);
            } else {
                part.next_offset = offset + 1;
            }
            continue;
        }
        if pos.commit_lsn > commit.commit_lsn {
            // The head came from the raw partition when a declaration passed it through: name where it was read.
            let topic = match (&part.raw, part.head_raw) {
                (Some(raw), true) => &raw.topic,
                _ => topic,
            };
            return Err(ApplyError::Stream(format!(
                "{topic}[{partition}] at offset {offset}: found {pos} while transaction {} still has {remaining} \
                 record(s) in this partition: records are missing from the out topic (was it written by something \
                 other than pgm-transform, or truncated?). Nothing after the applied position {applied} was written.",
                commit.commit_lsn
            )));
        }
        return Ok(pos);
    }
}
