//! Finding partitions nobody consumes, so a running worker takes them over without help.
//!
//! On Kafka the coordinator expires a member that died without leaving once its session times out, and the
//! survivors get its partitions. tansu 0.6.0 expires the member but can keep the group's old assignment, with the
//! dead member as leader: the survivor keeps its own partitions and the dead member's wait for ever (measured by
//! `transform::a_surviving_worker_takes_over_every_partition_without_help`). A LeaveGroup and a new join make it
//! assign again. So each worker watches the partitions it does not hold: one with records nobody has committed,
//! whose committed offset has not moved for longer than the session timeout plus a margin, is orphaned, and the
//! worker rejoins the group as a new member. On Kafka a live owner commits every second while it has records, so
//! the watch never fires there unless something is wrong.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};

/// How much longer than the session timeout a partition may sit unconsumed before the worker rejoins.
const MARGIN: Duration = Duration::from_secs(5);
/// Each broker call of a check: short, as the check blocks the worker's loop (a SIGTERM waits for it).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);

/// Partitions this worker does not hold that have records waiting: their committed offset and since when.
pub struct OrphanWatch {
    limit: Duration,
    stalled: HashMap<(String, i32), (i64, Instant)>,
}

impl OrphanWatch {
    /// `session_timeout`: the group's `session.timeout.ms`.
    pub fn new(session_timeout: Duration) -> Self {
        OrphanWatch { limit: session_timeout + MARGIN, stalled: HashMap::new() }
    }

    /// Blocking (broker round trips): call from `block_in_place`. `subscribed` tells which topics the worker
    /// consumes. Returns a description of the orphaned partitions once any has waited past the limit.
    pub fn check<C: ConsumerContext>(
        &mut self,
        consumer: &impl Consumer<C>,
        subscribed: impl Fn(&str) -> bool,
    ) -> Result<Option<String>, KafkaError> {
        let held: HashSet<(String, i32)> =
            consumer.assignment()?.elements().iter().map(|e| (e.topic().to_owned(), e.partition())).collect();
        let metadata = consumer.fetch_metadata(None, REQUEST_TIMEOUT)?;
        let mut unheld = TopicPartitionList::new();
        for topic in metadata.topics().iter().filter(|t| subscribed(t.name())) {
            for partition in topic.partitions() {
                if !held.contains(&(topic.name().to_owned(), partition.id())) {
                    unheld.add_partition(topic.name(), partition.id());
                }
            }
        }
        if unheld.count() == 0 {
            self.stalled.clear();
            return Ok(None);
        }
        let committed = consumer.committed_offsets(unheld, REQUEST_TIMEOUT)?;
        let now = Instant::now();
        let mut waiting = HashMap::new();
        for element in committed.elements() {
            let (topic, partition) = (element.topic().to_owned(), element.partition());
            let (low, high) = consumer.fetch_watermarks(&topic, partition, REQUEST_TIMEOUT)?;
            let from = match element.offset() {
                Offset::Offset(offset) => offset,
                _ => low,
            };
            if high <= from {
                continue;
            }
            let key = (topic, partition);
            let since = match self.stalled.get(&key) {
                Some((offset, since)) if *offset == from => *since,
                _ => now,
            };
            waiting.insert(key, (from, since));
        }
        self.stalled = waiting;
        let mut orphans: Vec<String> = self
            .stalled
            .iter()
            .filter(|(_, (_, since))| now.duration_since(*since) >= self.limit)
            .map(|((topic, partition), (offset, _))| format!("{topic}[{partition}] at offset {offset}"))
            .collect();
        if orphans.is_empty() {
            return Ok(None);
        }
        orphans.sort();
        Ok(Some(format!(
            "{} partition(s) with waiting records not consumed for {} s and not held by this worker ({}): the group \
             left them unassigned; rejoining as a new member",
            orphans.len(),
            self.limit.as_secs(),
            orphans.join(", ")
        )))
    }
}

/// The group's session timeout: `session.timeout.ms` from `kafka.librdkafka`, else librdkafka's default (45 s).
pub fn session_timeout(librdkafka: &std::collections::BTreeMap<String, String>) -> Duration {
    let ms = librdkafka.get("session.timeout.ms").and_then(|v| v.parse().ok()).unwrap_or(45_000);
    Duration::from_millis(ms)
}
