//! Reading whole topics back, for assertions: every record of every partition up to the high watermark.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

#[derive(Clone, Debug)]
pub struct Record {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
}

/// Topic names that start with `prefix`.
pub fn list_topics(brokers: &str, prefix: &str) -> crate::Result<Vec<String>> {
    let consumer: BaseConsumer = ClientConfig::new().set("bootstrap.servers", brokers).create()?;
    let metadata = consumer.fetch_metadata(None, Duration::from_secs(10))?;
    Ok(metadata.topics().iter().map(|t| t.name().to_owned()).filter(|n| n.starts_with(prefix)).collect())
}

/// How long a partition must stay silent before [`read_all`] takes it as fully read.
const QUIET: Duration = Duration::from_millis(1500);

/// Every record of `topic`, in offset order per partition. Blocking: call from `block_in_place` or a plain thread.
///
/// Reads until the topic has been quiet for [`QUIET`] rather than up to the high watermark: tansu 0.6.0 reports a
/// high watermark that undercounts multi-record batches (Kafka does not).
pub fn read_all(brokers: &str, topic: &str) -> crate::Result<Vec<Record>> {
    let mut out = Vec::new();
    let mut last_message = std::time::Instant::now();
    read(brokers, topic, Duration::from_secs(120), |record| {
        match record {
            Some(record) => {
                last_message = std::time::Instant::now();
                out.push(record);
            }
            None if last_message.elapsed() >= QUIET => return false,
            None => {}
        }
        true
    })?;
    out.sort_by_key(|r| (r.partition, r.offset));
    Ok(out)
}

/// Records of `topic` from its start until `enough` says the ones read so far suffice (for topics that are never
/// quiet, such as the txn topic with heartbeats). Blocking, like [`read_all`].
pub fn read_until(
    brokers: &str,
    topic: &str,
    timeout: Duration,
    mut enough: impl FnMut(&[Record]) -> bool,
) -> crate::Result<Vec<Record>> {
    let mut out = Vec::new();
    read(brokers, topic, timeout, |record| {
        if let Some(record) = record {
            out.push(record);
            return !enough(&out);
        }
        true
    })?;
    Ok(out)
}

/// Feeds every record (or `None` after 100 ms without one) to `more` until it returns false.
fn read(
    brokers: &str,
    topic: &str,
    timeout: Duration,
    mut more: impl FnMut(Option<Record>) -> bool,
) -> crate::Result<()> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", crate::names::unique("reader"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()?;
    // The topic may not exist yet (its producer is still starting): wait for its partitions within the deadline,
    // rather than assigning none and reading nothing.
    let deadline = std::time::Instant::now() + timeout;
    let partitions: Vec<i32> = loop {
        let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
        let found: Vec<i32> = metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .map(|t| t.partitions().iter().map(|p| p.id()).collect())
            .unwrap_or_default();
        if !found.is_empty() {
            break found;
        }
        anyhow::ensure!(std::time::Instant::now() < deadline, "topic {topic} has no partitions after {timeout:?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut tpl = TopicPartitionList::new();
    for partition in &partitions {
        tpl.add_partition_offset(topic, *partition, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    loop {
        anyhow::ensure!(std::time::Instant::now() < deadline, "reading {topic} did not finish in {timeout:?}");
        let record = match consumer.poll(Duration::from_millis(100)) {
            None => None,
            Some(message) => {
                let message = message?;
                Some(Record {
                    topic: topic.to_owned(),
                    partition: message.partition(),
                    offset: message.offset(),
                    key: message.key().unwrap_or_default().to_vec(),
                    value: message.payload().unwrap_or_default().to_vec(),
                })
            }
        };
        if !more(record) {
            return Ok(());
        }
    }
}
