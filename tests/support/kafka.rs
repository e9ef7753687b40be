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

/// Every record of `topic` up to each partition's high watermark at the time of the call, in offset order per
/// partition. Blocking: call from `block_in_place` or a plain thread.
pub fn read_all(brokers: &str, topic: &str) -> crate::Result<Vec<Record>> {
    let consumer: BaseConsumer = ClientConfig::new().set("bootstrap.servers", brokers).create()?;
    let partitions = wait_partitions(&consumer, topic, Duration::from_secs(120))?;
    let mut remaining = std::collections::HashMap::new();
    for partition in partitions {
        let (low, high) = consumer.fetch_watermarks(topic, partition, Duration::from_secs(10))?;
        if high > low {
            remaining.insert(partition, high);
        }
    }
    let mut out = Vec::new();
    if !remaining.is_empty() {
        read(brokers, topic, Duration::from_secs(120), |record| {
            if let Some(record) = record {
                if remaining.get(&record.partition).is_some_and(|high| record.offset + 1 >= *high) {
                    remaining.remove(&record.partition);
                }
                out.push(record);
            }
            !remaining.is_empty()
        })?;
    }
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

/// The topic's partitions. It may not exist yet (its producer is still starting): wait for them within `timeout`,
/// rather than assigning none and reading nothing.
fn wait_partitions(consumer: &BaseConsumer, topic: &str, timeout: Duration) -> crate::Result<Vec<i32>> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
        let found: Vec<i32> = metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .map(|t| t.partitions().iter().map(|p| p.id()).collect())
            .unwrap_or_default();
        if !found.is_empty() {
            return Ok(found);
        }
        anyhow::ensure!(std::time::Instant::now() < deadline, "topic {topic} has no partitions after {timeout:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
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
    let deadline = std::time::Instant::now() + timeout;
    let partitions = wait_partitions(&consumer, topic, timeout)?;
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
