//! Reading whole topics back, for assertions: every record of every partition up to the high watermark.

use std::time::Duration;

use anyhow::Context;
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
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", crate::names::unique("reader"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .with_context(|| format!("topic {topic} not found"))?
        .partitions()
        .iter()
        .map(|p| p.id())
        .collect();
    let mut tpl = TopicPartitionList::new();
    for partition in &partitions {
        tpl.add_partition_offset(topic, *partition, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let mut last_message = std::time::Instant::now();
    let mut out = Vec::new();
    while last_message.elapsed() < QUIET {
        anyhow::ensure!(std::time::Instant::now() < deadline, "reading {topic} did not finish in 120 s");
        let Some(message) = consumer.poll(Duration::from_millis(100)) else { continue };
        let message = message?;
        last_message = std::time::Instant::now();
        out.push(Record {
            topic: topic.to_owned(),
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().unwrap_or_default().to_vec(),
            value: message.payload().unwrap_or_default().to_vec(),
        });
    }
    out.sort_by_key(|r| (r.partition, r.offset));
    Ok(out)
}
