//! One member of the transform consumer group. It only connects the pieces:
//!
//! ```text
//!   select! (biased):
//!     1. shutdown          → stop reading, wait for outputs in flight, store and commit offsets, leave the group
//!     2. output acknowledged (in consumption order) → store input offset + 1 for its partition
//!     3. commit timer      → commit stored offsets
//!     4. raw record        → Program::rewrite → out topic, same key, same partition number
//! ```
//!
//! Offsets are stored only after the output is acknowledged, and acknowledgements are taken in consumption order,
//! so a committed offset never passes an input whose output Kafka does not hold. On revocation the stored offsets
//! are committed before the partitions go. A record the rules cannot transform stops the worker (its partition and
//! everything after it stay uncommitted); after the rule is fixed, a restart resumes at that record.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{FuturesOrdered, StreamExt};
use pgm_common::config::PipelineConfig;
use pgm_common::envelope::{OutRecord, RawRecord, RecordOrigin};
use pgm_common::kafka;
use pgm_common::parts::{self, Assembler};
use pgm_common::telemetry::Health;
use pgm_common::topic_settings::{self, TopicSetupError};
use pgm_common::Position;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::ClientContext;
use tokio_util::sync::CancellationToken;

use crate::metrics::{rule_label, PartitionLabel, TableLabel, TransformMetrics};
use crate::rewrite::Program;

/// Outputs in flight before the worker stops reading.
const MAX_IN_FLIGHT: usize = 20_000;

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("{0}")]
    Envelope(#[from] pgm_common::envelope::EnvelopeError),
    #[error("{0}; fix the rule and restart: the worker resumes at this record")]
    Rewrite(#[from] crate::rewrite::RewriteError),
    #[error(
        "output for {topic}[{partition}] offset {offset} was not acknowledged: {error}{}; its offset was not \
         committed", kafka::delivery_fix(error, &topic.replacen(".raw.", ".out.", 1))
    )]
    Delivery { topic: String, partition: i32, offset: i64, error: KafkaError },
    #[error("configuration: {0}")]
    Config(String),
}

impl WorkerError {
    /// A fault the worker rides out by starting over from the group's committed offsets (the broker away or
    /// restarting, a delivery timeout); the rest (bad records, rule errors, configuration) stop it.
    pub fn is_transient(&self) -> bool {
        match self {
            WorkerError::Kafka(error) => !matches!(error, KafkaError::ClientCreation(_) | KafkaError::Subscription(_)),
            WorkerError::Delivery { .. } => true,
            WorkerError::Envelope(_) | WorkerError::Rewrite(_) | WorkerError::Config(_) => false,
        }
    }
}

/// How long a record sent in parts may wait for its next part before health says so, and how often the log repeats it.
const PARTS_WAIT: Duration = Duration::from_secs(10);
const PARTS_REPORT: Duration = Duration::from_secs(30);

/// Commits what is stored before partitions are taken away, so the next owner starts where this one stopped.
pub struct RebalanceCommit;

impl ClientContext for RebalanceCommit {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, facility: &str, message: &str) {
        kafka::report_client_log(level, facility, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        kafka::report_client_error(&error, reason);
    }
}

impl ConsumerContext for RebalanceCommit {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(partitions) = rebalance {
            if let Err(error) = consumer.commit_consumer_state(CommitMode::Sync) {
                tracing::debug!(%error, "commit before revocation (nothing stored is fine)");
            }
            tracing::info!(partitions = partitions.count(), "partitions revoked");
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(partitions) = rebalance {
            tracing::info!(partitions = partitions.count(), "partitions assigned");
        }
    }
}

/// A table whose raw records apply takes as captured (`transform.passthrough` and the rules pass it unchanged):
/// transform writes passthrough declarations for it instead of one out record per change.
fn passes(config: &PipelineConfig, program: &Program, table: &pgm_common::change::TableRef) -> bool {
    config.transform.passthrough && program.passes_unchanged(table)
}

/// A declaration covers at most this many raw records (a restarted apply re-reads at most one declaration's range).
const PASS_MAX: u64 = 5_000;
/// Open declarations are written this often: the latency a passed-through change gains in transform.
const PASS_EVERY: Duration = Duration::from_millis(5);

/// Raw records of one partition that pass unchanged, not yet declared.
struct Pending {
    source: pgm_common::change::TableRef,
    from: Position,
    through: Position,
    /// The raw offset of the last record covered: stored once the declaration is acknowledged.
    last_offset: i64,
    records: u64,
}

type Ack = Pin<Box<dyn Future<Output = Result<(String, i32, i64), WorkerError>> + Send>>;

pub struct Worker {
    consumer: StreamConsumer<RebalanceCommit>,
    producer: FutureProducer<kafka::ServiceContext>,
    program: Arc<Program>,
    metrics: TransformMetrics,
    config: PipelineConfig,
    /// raw topic → out topic, made (or checked) on first sight.
    out_topics: HashMap<String, String>,
    /// Passed-through raw records per partition, waiting for their declaration.
    pending: HashMap<(String, i32), Pending>,
    /// Per raw topic: its table when the rules pass it unchanged (decided once per topic, not per record).
    passed_tables: HashMap<String, Option<pgm_common::change::TableRef>>,
    /// Records arriving in parts ([`parts`]), per partition, while a sequence is in progress.
    assembling: HashMap<(String, i32), Assembler>,
    /// Out values longer than this go as parts.
    part_size: usize,
}

impl Worker {
    pub fn new(config: &PipelineConfig, program: Arc<Program>, metrics: TransformMetrics) -> Result<Self, WorkerError> {
        let mut client = kafka::consumer_config(&config.kafka, "pgm-transform", &config.transform.group_id);
        // Raw topics appear while the worker runs (capture makes them on first sight of a table): look for them
        // every few seconds, not librdkafka's default five minutes.
        if !config.kafka.librdkafka.contains_key("topic.metadata.refresh.interval.ms") {
            client.set("topic.metadata.refresh.interval.ms", "3000");
        }
        // A rebalance moves only the partitions that change owner; the others keep being consumed meanwhile.
        if !config.kafka.librdkafka.contains_key("partition.assignment.strategy") {
            client.set("partition.assignment.strategy", "cooperative-sticky");
        }
        // Static membership: a worker killed and restarted under the same name within session.timeout.ms takes its
        // own partitions back without a rebalance (transform.instance_id).
        if let Some(instance) = &config.transform.instance_id {
            client.set("group.instance.id", instance);
        }
        let consumer: StreamConsumer<RebalanceCommit> = client.create_with_context(RebalanceCommit)?;
        let topics = config.topics();
        let tables = config.tables();
        if tables.is_empty() {
            let prefix: String =
                topics.prefix().chars().map(|c| if c == '.' { "\\.".to_owned() } else { c.to_string() }).collect();
            consumer.subscribe(&[&format!("^{prefix}\\.raw\\..*")])?;
        } else {
            let names: Vec<String> = tables
                .iter()
                .map(|t| topics.raw(t))
                .collect::<Result<_, _>>()
                .map_err(|e| WorkerError::Config(e.to_string()))?;
            let passed: Vec<String> =
                tables.iter().filter(|t| passes(config, &program, t)).map(|t| t.to_string()).collect();
            if !passed.is_empty() {
                tracing::info!(
                    tables = ?passed,
                    "the rules pass these tables unchanged: apply takes their raw records as captured, declared in \
                     the out topics (transform.passthrough)"
                );
            }
            consumer.subscribe(&names.iter().map(String::as_str).collect::<Vec<_>>())?;
        }
        let producer = kafka::producer_config(&config.kafka, "pgm-transform", config.topics.max_message_bytes)
            .create_with_context(kafka::ServiceContext)?;
        Ok(Worker {
            consumer,
            producer,
            program,
            metrics,
            config: config.clone(),
            out_topics: HashMap::new(),
            pending: HashMap::new(),
            passed_tables: HashMap::new(),
            assembling: HashMap::new(),
            part_size: parts::part_size(config.topics.max_message_bytes),
        })
    }

    async fn out_topic(
        &mut self,
        raw_topic: &str,
        source: &pgm_common::change::TableRef,
    ) -> Result<String, WorkerError> {
        if let Some(topic) = self.out_topics.get(raw_topic) {
            return Ok(topic.clone());
        }
        let topic = self.config.topics().out(source).map_err(|e| WorkerError::Config(e.to_string()))?;
        let admin = Arc::new(kafka::admin(&self.config.kafka, "pgm-transform-admin")?);
        let (brokers, partitions) = (&self.config.kafka.brokers, self.config.topics.partitions);
        topic_settings::ensure(&admin, brokers, &topic, partitions, &self.config.topics).await.map_err(|error| {
            match error {
                TopicSetupError::Kafka(error) => WorkerError::Kafka(error),
                TopicSetupError::Definite(problem) => {
                    WorkerError::Config(format!("{problem} (out topics must match their raw topics)"))
                }
            }
        })?;
        self.out_topics.insert(raw_topic.to_owned(), topic.clone());
        Ok(topic)
    }

    /// Enqueues an out record, as parts when it is over the topic's record limit; the delivery futures in order.
    async fn send(
        &self,
        out_topic: &str,
        partition: i32,
        key: &[u8],
        payload: &[u8],
        (input_topic, offset): (&str, i64),
        pass: bool,
    ) -> Result<Vec<DeliveryFuture>, WorkerError> {
        let count = parts::count(payload.len(), self.part_size);
        let mut deliveries = Vec::with_capacity(count);
        for (index, slice) in parts::split(payload, self.part_size).enumerate() {
            let mut record = FutureRecord::to(out_topic).partition(partition).key(key).payload(slice);
            if let Some(headers) = parts::headers(index, count) {
                record = record.headers(headers);
            } else if pass {
                use rdkafka::message::{Header, OwnedHeaders};
                let header = Header { key: pgm_common::envelope::PASS_HEADER, value: Some("1") };
                record = record.headers(OwnedHeaders::new().insert(header));
            }
            let delivery = loop {
                match self.producer.send_result(record) {
                    Ok(delivery) => break delivery,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                        record = returned;
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    Err((error, _)) => {
                        return Err(WorkerError::Delivery { topic: input_topic.to_owned(), partition, offset, error })
                    }
                }
            };
            deliveries.push(delivery);
        }
        Ok(deliveries)
    }

    /// Writes the declaration of a partition's pending passed-through records; its acknowledgement stores the raw
    /// offset of the last one.
    async fn declare(&mut self, slot: (String, i32)) -> Result<Option<Ack>, WorkerError> {
        let Some(pending) = self.pending.remove(&slot) else { return Ok(None) };
        let (topic, partition) = slot;
        let out_topic = self.out_topic(&topic, &pending.source).await?;
        let label = TableLabel::new(&pending.source);
        self.metrics.passed.get_or_create(&label).inc_by(pending.records);
        let record = OutRecord::pass(pending.source, pending.from, pending.through);
        let payload = serde_json::to_vec(&record).expect("out records serialize");
        let offset = pending.last_offset;
        let key = pending.from.to_key();
        let deliveries = self.send(&out_topic, partition, key.as_bytes(), &payload, (&topic, offset), true).await?;
        Ok(Some(Box::pin(async move {
            for delivery in deliveries {
                match delivery.await {
                    Ok(Ok(_)) => {}
                    Ok(Err((error, _))) => return Err(WorkerError::Delivery { topic, partition, offset, error }),
                    Err(_) => {
                        return Err(WorkerError::Delivery { topic, partition, offset, error: KafkaError::Canceled })
                    }
                }
            }
            Ok((topic, partition, offset))
        })))
    }

    /// Declares every partition's pending records.
    async fn declare_all(&mut self, in_flight: &mut FuturesOrdered<Ack>) -> Result<(), WorkerError> {
        let slots: Vec<(String, i32)> = self.pending.keys().cloned().collect();
        for slot in slots {
            if let Some(ack) = self.declare(slot).await? {
                in_flight.push_back(ack);
            }
        }
        Ok(())
    }

    fn store(&self, topic: &str, partition: i32, offset: i64) {
        // librdkafka's rd_kafka_offset_store takes the offset of the last processed message and stores offset + 1
        // itself: passing offset + 1 here would skip a record on every resume.
        match self.consumer.store_offset(topic, partition, offset) {
            Ok(()) => {
                self.metrics
                    .position
                    .get_or_create(&PartitionLabel { topic: topic.to_owned(), partition })
                    .set(offset + 1);
            }
            // The partition was revoked meanwhile: its next owner reprocesses from the last commit (same keys).
            Err(error) => tracing::debug!(%error, topic, partition, "offset not stored"),
        }
    }

    /// A record whose parts stopped coming for [`PARTS_WAIT`]: what health and the log say about it.
    fn stuck_parts(&self, seen: &HashMap<(String, i32), Instant>) -> Option<String> {
        let ((topic, partition), assembler) =
            self.assembling.iter().find(|(slot, _)| seen.get(*slot).is_some_and(|at| at.elapsed() >= PARTS_WAIT))?;
        let (key, received, count) = assembler.progress()?;
        let table = self.config.topics().table_of_raw(topic).map_or_else(|| topic.clone(), |t| t.to_string());
        Some(format!(
            "the record of {table} at position {} in {topic}[{partition}] came in {count} parts; {received} arrived, \
             and no further part for {} s: is pgm-capture running? (a restarted capture sends it again from part 1; \
             parts are cut at topics.max_message_bytes)",
            String::from_utf8_lossy(key),
            seen.get(&(topic.clone(), *partition)).map_or(0, |at| at.elapsed().as_secs())
        ))
    }

    pub async fn run(mut self, health: Health, shutdown: CancellationToken) -> Result<(), WorkerError> {
        let mut in_flight: FuturesOrdered<Ack> = FuturesOrdered::new();
        let mut broker_away = false;
        // A record sent in parts whose next part has not come for PARTS_WAIT: health says so (capture died between
        // parts and has not come back; a restarted capture sends the record again from its first part).
        let mut parts_stuck = false;
        let mut parts_reported = Instant::now() - PARTS_REPORT;
        let mut part_seen: HashMap<(String, i32), Instant> = HashMap::new();
        let mut commit_timer = tokio::time::interval(Duration::from_secs(1));
        commit_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut pass_timer = tokio::time::interval(PASS_EVERY);
        pass_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let topics = self.config.topics();
        let result = loop {
            tokio::select! {
                biased;
                // 1. Shutdown: finish what is in flight, commit, leave.
                _ = shutdown.cancelled() => break Ok(()),
                // 2. Acknowledgements in consumption order.
                Some(ack) = in_flight.next(), if !in_flight.is_empty() => {
                    match ack {
                        Ok((topic, partition, offset)) => self.store(&topic, partition, offset),
                        Err(error) => break Err(error),
                    }
                }
                // 3. Commit what is stored.
                _ = commit_timer.tick() => {
                    // Back after a restart of the worker: working once the group gave it partitions.
                    if !broker_away
                        && health.waiting_for().is_some()
                        && self.consumer.assignment().is_ok_and(|a| a.count() > 0)
                    {
                        tracing::info!("partitions assigned; working again");
                        health.clear_waiting();
                    }
                    if let Err(error) = self.consumer.commit_consumer_state(CommitMode::Async) {
                        tracing::debug!(%error, "commit (nothing stored yet is fine)");
                    }
                    let stuck = self.stuck_parts(&part_seen);
                    if let Some(what) = stuck {
                        health.set_waiting(what.clone());
                        if parts_reported.elapsed() >= PARTS_REPORT {
                            parts_reported = Instant::now();
                            tracing::warn!("waiting: {what}");
                        }
                        parts_stuck = true;
                    } else if parts_stuck {
                        parts_stuck = false;
                        health.clear_waiting();
                    }
                }
                // 4. Declarations of what passed through since the last tick.
                _ = pass_timer.tick(), if !self.pending.is_empty() => {
                    if let Err(error) = self.declare_all(&mut in_flight).await {
                        break Err(error);
                    }
                }
                // 5. Input.
                message = self.consumer.recv(), if in_flight.len() < MAX_IN_FLIGHT => {
                    let message = match message {
                        Ok(message) => message,
                        // A listed raw topic capture has not created yet: librdkafka keeps looking for it.
                        Err(KafkaError::MessageConsumption(RDKafkaErrorCode::UnknownTopicOrPartition)) => {
                            tracing::info!("a configured raw topic does not exist yet (capture creates it on first use)");
                            continue;
                        }
                        // The broker is away: librdkafka reconnects by itself and rejoins with the same member.
                        Err(KafkaError::MessageConsumption(
                            code @ (RDKafkaErrorCode::BrokerTransportFailure | RDKafkaErrorCode::AllBrokersDown),
                        )) => {
                            if !broker_away {
                                tracing::warn!(%code, brokers = %self.config.kafka.brokers, "waiting for the broker");
                                health.set_waiting(format!("the broker ({code}); kafka.brokers = {}", self.config.kafka.brokers));
                                broker_away = true;
                            }
                            continue;
                        }
                        Err(error) => return Err(error.into()),
                    };
                    if broker_away || (health.waiting_for().is_some() && !parts_stuck) {
                        tracing::info!("the broker is back");
                        health.clear_waiting();
                        broker_away = false;
                    }
                    let (topic, partition, offset) = (message.topic().to_owned(), message.partition(), message.offset());
                    let origin = RecordOrigin { topic: &topic, partition, offset };
                    let key = message.key().unwrap_or_default().to_vec();
                    let payload = message.payload().unwrap_or_default();
                    let part = parts::of_message(&message);
                    if !self.passed_tables.contains_key(&topic) {
                        let table = topics.table_of_raw(&topic).filter(|t| passes(&self.config, &self.program, t));
                        self.passed_tables.insert(topic.clone(), table);
                    }
                    let passed = self.passed_tables[&topic].is_some();
                    let slot = (topic.clone(), partition);
                    // Whole records (nearly all) skip the assembler unless a sequence is open in their partition.
                    let raw = if part.is_none() && !self.assembling.contains_key(&slot) {
                        if passed { None } else { Some(RawRecord::decode(payload, origin)?) }
                    } else {
                        let assembler = self.assembling.entry(slot.clone()).or_default();
                        let assembled = assembler.push(&key, part, payload);
                        let idle = assembler.is_idle();
                        if idle {
                            self.assembling.remove(&slot);
                            part_seen.remove(&slot);
                        } else {
                            part_seen.insert(slot.clone(), Instant::now());
                        }
                        // A part before the last: nothing to write or acknowledge yet. Its offset is never stored, so
                        // a restart reads the record again from its first part.
                        let Some(bytes) = assembled.bytes() else { continue };
                        if passed { None } else { Some(RawRecord::decode(bytes, origin)?) }
                    };
                    if passed {
                        // Applied as captured: the record is not even decoded; its range is declared on the next tick.
                        let pos = Position::from_key(&key).map_err(|e| WorkerError::Config(format!(
                            "{topic}[{partition}] at offset {offset}: the key is not a position ({e}): was the raw \
                             topic written by pgm-capture?"
                        )))?;
                        drop(message);
                        let tables = &self.passed_tables;
                        let pending = self.pending.entry(slot.clone()).or_insert_with(|| Pending {
                            source: tables[&topic].clone().expect("a passed table"),
                            from: pos,
                            through: pos,
                            last_offset: offset,
                            records: 0,
                        });
                        // A restarted capture repeats positions: the range reaches the highest one seen.
                        pending.through = pending.through.max(pos);
                        pending.last_offset = offset;
                        pending.records += 1;
                        if pending.records >= PASS_MAX {
                            match self.declare(slot).await {
                                Ok(Some(ack)) => in_flight.push_back(ack),
                                Ok(None) => {}
                                Err(error) => break Err(error),
                            }
                        }
                        continue;
                    }
                    // Decoded above whenever its table is not passed through.
                    let Some(raw) = raw else { continue };
                    drop(message);
                    let label = TableLabel::new(&raw.source);
                    let out = match self.program.rewrite(&raw) {
                        Ok(out) => out,
                        Err(error) => {
                            self.metrics.errors.get_or_create(&rule_label(&error.failure().rule)).inc();
                            break Err(error.into());
                        }
                    };
                    // A huge row is held once at a time where it can be: the input goes before the output is
                    // encoded, into a buffer of about its size (growing by doubling would hold two more copies).
                    let text = raw.new.text_bytes() + raw.old.as_ref().map_or(0, pgm_common::change::Row::text_bytes);
                    let out_topic = self.out_topic(&topic, &raw.source).await?;
                    drop(raw);
                    self.metrics.records.get_or_create(&label).inc();
                    self.metrics.ops.get_or_create(&label).inc_by(out.ops.len() as u64);
                    let mut payload = Vec::with_capacity(if text > 1 << 20 { text + text / 8 + 4096 } else { 512 });
                    serde_json::to_writer(&mut payload, &out).expect("out records serialize");
                    drop(out);
                    self.metrics.out_bytes.get_or_create(&label).inc_by(payload.len() as u64);
                    let deliveries = self.send(&out_topic, partition, &key, &payload, (&topic, offset), false).await?;
                    in_flight.push_back(Box::pin(async move {
                        // The input is done when its output is: every part acknowledged.
                        for delivery in deliveries {
                            match delivery.await {
                                Ok(Ok(_)) => {}
                                Ok(Err((error, _))) => return Err(WorkerError::Delivery { topic, partition, offset, error }),
                                Err(_) => return Err(WorkerError::Delivery { topic, partition, offset, error: KafkaError::Canceled }),
                            }
                        }
                        Ok((topic, partition, offset))
                    }));
                }
            }
        };
        // A clean stop declares what passed through, so its offsets can be stored.
        if result.is_ok() {
            if let Err(error) = self.declare_all(&mut in_flight).await {
                tracing::warn!(%error, "declaration lost while stopping; its offsets stay uncommitted");
            }
        }
        // Whatever ended the loop, keep the work that Kafka acknowledged before it.
        while let Some(ack) = in_flight.next().await {
            match ack {
                Ok((topic, partition, offset)) => self.store(&topic, partition, offset),
                Err(error) => {
                    tracing::warn!(%error, "output lost while stopping; its offset stays uncommitted");
                    break;
                }
            }
        }
        if let Err(error) = self.consumer.commit_consumer_state(CommitMode::Sync) {
            tracing::debug!(%error, "final commit");
        }
        result
    }
}
