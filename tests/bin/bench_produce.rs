//! What one produced record costs the producing process under the pipeline's producer defaults: CPU µs per record
//! (all of librdkafka's threads included) against a fresh Kafka broker, for the defaults and for variants given as
//! `key=value` librdkafka settings. Prints figures; asserts nothing about time.
//!
//!   cargo run --release -p pgm-tests --bin pgm-bench-produce -- [RECORDS] [key=value ...]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use pgm_common::config::KafkaConfig;
use pgm_common::kafka;
use pgm_test_support::broker::Broker;
use pgm_test_support::process_usage;
use rdkafka::admin::{AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::ClientContext;
use rdkafka::producer::{BaseRecord, DeliveryResult, ProducerContext, ThreadedProducer};

struct Counting(Arc<AtomicU64>, Arc<AtomicU64>);
impl ClientContext for Counting {}
impl ProducerContext for Counting {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if result.is_ok() { &self.0 } else { &self.1 }.fetch_add(1, Ordering::Relaxed);
    }
}

/// Every partition of `topics`, each at `offset`.
fn every_partition(topics: &[(String, i32)], offset: rdkafka::Offset) -> anyhow::Result<rdkafka::TopicPartitionList> {
    let mut list = rdkafka::TopicPartitionList::new();
    for (topic, partitions) in topics {
        for p in 0..*partitions {
            list.add_partition_offset(topic, p, offset)?;
        }
    }
    Ok(list)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1).peekable();
    let records: u64 = match args.peek().and_then(|a| a.parse().ok()) {
        Some(n) => {
            args.next();
            n
        }
        None => 120_000,
    };
    let overrides: Vec<(String, String)> = args
        .map(|a| a.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())).context("key=value"))
        .collect::<Result<_, _>>()?;
    let broker = Broker::start()?;
    let mut kafka_config = KafkaConfig::new(broker.brokers());
    for (k, v) in &overrides {
        kafka_config.librdkafka.insert(k.clone(), v.clone());
    }
    // Four tables of four partitions plus the txn topic, like the pgbench benchmark.
    let topics: Vec<(String, i32)> =
        (0..4).map(|t| (format!("bench.raw.public.t{t}"), 4)).chain([("bench.txn".to_owned(), 1)]).collect();
    let admin = kafka::admin(&kafka_config, "bench-admin")?;
    let new: Vec<NewTopic> = topics.iter().map(|(t, p)| NewTopic::new(t, *p, TopicReplication::Fixed(1))).collect();
    admin.create_topics(&new, &AdminOptions::new()).await?;
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let producer: ThreadedProducer<Counting> =
        kafka::client_config(&kafka_config, "bench-produce", kafka::Role::Producer)
            .create_with_context(Counting(ok.clone(), failed.clone()))?;
    let payload = vec![b'x'; 300];
    let pid = std::process::id();
    let (cpu0, _) = process_usage(pid).context("own usage")?;
    let started = Instant::now();
    for i in 0..records {
        // Per transaction of 6 records: a begin, four rows, a commit (the txn topic gets two of six).
        let (topic, partition) = match i % 6 {
            0 | 5 => (&topics[4].0, 0),
            n => (&topics[(n - 1) as usize].0, (i / 6 % 4) as i32),
        };
        let key = format!("{i:038}");
        let mut record = BaseRecord::to(topic).partition(partition).key(&key).payload(&payload);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, returned)) => {
                    record = returned;
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
    }
    while ok.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed) < records {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    let (cpu1, rss) = process_usage(pid).context("own usage")?;
    let broker_cpu = broker.pid().and_then(process_usage).map_or(0.0, |(c, _)| c);
    println!(
        "{records} records ({} failed) in {secs:.1} s ({:.0}/s): producer {:.1} µs CPU/record, broker {:.0} µs CPU/record (whole life), peak RSS {} MiB, overrides {overrides:?}",
        failed.load(Ordering::Relaxed),
        records as f64 / secs,
        (cpu1 - cpu0) * 1e6 / records as f64,
        broker_cpu * 1e6 / records as f64,
        rss / 1024,
    );
    // The broker's cost of one idle consumer holding every partition (20 partitions of 4 topics plus the txn
    // topic): what a pipeline's consumers cost the broker while DB1 is idle.
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = kafka::client_config(&kafka_config, "bench-idle", kafka::Role::Consumer)
        .set("group.id", "bench-idle")
        .create()?;
    let assignment = every_partition(&topics, rdkafka::Offset::End)?;
    let broker_pid = broker.pid().context("broker pid")?;
    // First the broker's cost of reading every record once (what apply and transform do), then of idling.
    let reader: BaseConsumer = kafka::client_config(&kafka_config, "bench-read", kafka::Role::Consumer)
        .set("group.id", "bench-read")
        .create()?;
    let all = every_partition(&topics, rdkafka::Offset::Beginning)?;
    reader.assign(&all)?;
    let (b0, _) = process_usage(broker_pid).context("broker usage")?;
    let started = Instant::now();
    let mut read = 0u64;
    while read < records {
        if let Some(message) = reader.poll(Duration::from_millis(100)) {
            message?;
            read += 1;
        }
    }
    let (b1, _) = process_usage(broker_pid).context("broker usage")?;
    println!(
        "read back {read} records in {:.1} s: broker {:.0} µs CPU/record",
        started.elapsed().as_secs_f64(),
        (b1 - b0) * 1e6 / read as f64
    );
    drop(reader);
    consumer.assign(&assignment)?;
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        consumer.poll(Duration::from_millis(100));
    }
    let (b0, _) = process_usage(broker_pid).context("broker usage")?;
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        consumer.poll(Duration::from_millis(100));
    }
    let (b1, _) = process_usage(broker_pid).context("broker usage")?;
    println!("one idle consumer of {} partitions: broker {:.0} % CPU", assignment.count(), (b1 - b0) * 100.0 / 5.0);
    Ok(())
}
