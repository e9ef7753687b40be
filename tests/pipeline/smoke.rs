//! The environment works: wal2json decodes through our parser on a real server, a physical standby replays, and
//! the broker does what the pipeline relies on (idempotent produce, group consume, commit, resume from commit).

use std::time::Duration;

use pgm_common::change::{Cell, Change, RowOp};
use pgm_common::config::KafkaConfig;
use pgm_common::{kafka, wal2json, Lsn};
use pgm_test_support::broker::{shared_brokers, Broker};
use pgm_test_support::names::unique;
use pgm_test_support::pg::PgCluster;
use pgm_test_support::wait;
use rdkafka::admin::{AdminOptions, NewTopic, TopicReplication};
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::FutureRecord;

#[tokio::test]
async fn wal2json_slot_decodes_an_insert() -> anyhow::Result<()> {
    let pg = PgCluster::start()?;
    let db = pg.create_database("smoke").await?;
    let client = pg.connect(&db).await?;
    // Three round trips: a multi-statement query is one transaction, and a slot cannot be created after writes.
    client.batch_execute("CREATE TABLE orders (id bigint PRIMARY KEY, amount numeric(30,2), note text)").await?;
    client.batch_execute("SELECT pg_create_logical_replication_slot('smoke', 'wal2json')").await?;
    client.batch_execute("INSERT INTO orders VALUES (1, 1234567890123456789012345678.90, 'first')").await?;
    let options: Vec<String> =
        wal2json::PLUGIN_OPTIONS.iter().flat_map(|(k, v)| [format!("'{k}'"), format!("'{v}'")]).collect();
    let sql = format!("SELECT data FROM pg_logical_slot_get_changes('smoke', NULL, NULL, {})", options.join(", "));
    let changes: Vec<Change> = client
        .query(&sql, &[])
        .await?
        .iter()
        .map(|row| wal2json::decode(row.get::<_, &str>(0).as_bytes()))
        .collect::<Result<_, _>>()?;

    let inserts: Vec<_> = changes
        .iter()
        .filter_map(|c| match c {
            Change::Row(r) if r.op == RowOp::Insert => Some(r),
            _ => None,
        })
        .collect();
    assert_eq!(inserts.len(), 1, "{changes:?}");
    assert_eq!(inserts[0].table.table, "orders");
    assert_eq!(inserts[0].new.get("amount"), Cell::Value("1234567890123456789012345678.90"));
    assert_eq!(inserts[0].new.get("note"), Cell::Value("first"));
    assert!(matches!(changes.last(), Some(Change::Commit(c)) if c.end_lsn > c.commit_lsn));
    Ok(())
}

#[tokio::test]
async fn physical_standby_replays_the_primary() -> anyhow::Result<()> {
    let primary = PgCluster::start()?;
    let standby = PgCluster::standby_of(&primary)?;
    let client = primary.connect("postgres").await?;
    client.batch_execute("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 100)").await?;
    let lsn: Lsn = client.query_one("SELECT pg_current_wal_lsn()::text", &[]).await?.get::<_, String>(0).parse()?;
    standby.wait_replayed(lsn, Duration::from_secs(30)).await?;
    let on_standby = standby.connect("postgres").await?;
    let in_recovery: bool = on_standby.query_one("SELECT pg_is_in_recovery()", &[]).await?.get(0);
    let count: i64 = on_standby.query_one("SELECT count(*) FROM t", &[]).await?.get(0);
    assert!(in_recovery);
    assert_eq!(count, 100);
    Ok(())
}

async fn create_topic(kafka: &KafkaConfig, topic: &str, partitions: i32) -> anyhow::Result<()> {
    let admin = kafka::admin(kafka, "pgm-tests-admin")?;
    let results = admin
        .create_topics(&[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))], &AdminOptions::new())
        .await?;
    for result in results {
        result.map_err(|(topic, code)| anyhow::anyhow!("create topic {topic}: {code}"))?;
    }
    Ok(())
}

async fn produce(kafka: &KafkaConfig, topic: &str, range: std::ops::Range<u32>) -> anyhow::Result<()> {
    let producer = kafka::producer(kafka, "pgm-tests-producer")?;
    for i in range {
        let key = format!("{i:04}");
        let payload = format!("value-{i}");
        producer
            .send(FutureRecord::to(topic).key(&key).payload(&payload).partition(0), Duration::from_secs(10))
            .await
            .map_err(|(err, _)| err)?;
    }
    Ok(())
}

/// Reads `n` records of a single-partition topic with the group, committing each; returns their keys.
async fn consume(kafka: &KafkaConfig, topic: &str, group: &str, n: usize) -> anyhow::Result<Vec<String>> {
    let consumer = kafka::consumer(kafka, "pgm-tests-consumer", group)?;
    consumer.subscribe(&[topic])?;
    let mut keys = Vec::new();
    while keys.len() < n {
        let message = tokio::time::timeout(Duration::from_secs(30), consumer.recv()).await??;
        keys.push(String::from_utf8(message.key().unwrap_or_default().to_vec())?);
        consumer.commit_message(&message, CommitMode::Sync)?;
    }
    Ok(keys)
}

fn keys(range: std::ops::Range<u32>) -> Vec<String> {
    range.map(|i| format!("{i:04}")).collect()
}

#[tokio::test]
async fn broker_resumes_a_group_from_its_committed_offset() -> anyhow::Result<()> {
    let kafka = KafkaConfig::new(shared_brokers()?);
    let topic = unique("smoke_topic");
    let group = unique("smoke_group");
    create_topic(&kafka, &topic, 1).await?;
    produce(&kafka, &topic, 0..10).await?;

    assert_eq!(consume(&kafka, &topic, &group, 6).await?, keys(0..6));
    // A new member of the same group starts exactly after the last commit: no record lost, none repeated.
    assert_eq!(consume(&kafka, &topic, &group, 4).await?, keys(6..10));
    // Another group starts from the beginning.
    assert_eq!(consume(&kafka, &topic, &unique("other_group"), 10).await?, keys(0..10));
    Ok(())
}

#[tokio::test]
async fn own_broker_with_sqlite_storage_keeps_records_and_offsets_across_a_kill() -> anyhow::Result<()> {
    let mut broker = Broker::start()?;
    let kafka = KafkaConfig::new(broker.brokers());
    let topic = unique("restart_topic");
    let group = unique("restart_group");
    create_topic(&kafka, &topic, 1).await?;
    produce(&kafka, &topic, 0..5).await?;
    assert_eq!(consume(&kafka, &topic, &group, 2).await?, keys(0..2));

    broker.kill()?;
    broker.restart()?;
    // The broker may need a moment before it serves the group again: retry the metadata call with a deadline.
    wait::until("restarted broker to serve metadata", Duration::from_secs(30), || async {
        let consumer = kafka::consumer(&kafka, "probe", &unique("probe"))?;
        Ok(consumer.fetch_metadata(Some(&topic), Duration::from_secs(2)).ok().map(|_| ()))
    })
    .await?;
    produce(&kafka, &topic, 5..7).await?;
    assert_eq!(consume(&kafka, &topic, &group, 5).await?, keys(2..7));
    Ok(())
}

/// The pipeline resumes consumers from committed offsets that fall inside multi-record batches (capture and transform
/// produce with linger): the broker must serve a fetch from inside a batch exactly and count every record in its
/// high watermark, as Kafka does. Pins that for the broker the harness starts (and any `PGM_TEST_BROKERS`).
#[tokio::test(flavor = "multi_thread")]
async fn broker_resumes_inside_a_batch_and_counts_every_record() -> anyhow::Result<()> {
    const RECORDS: u32 = 30_000;
    const COMMITTED: i64 = 1234;
    let kafka = KafkaConfig::new(shared_brokers()?);
    let topic = unique("batches");
    create_topic(&kafka, &topic, 1).await?;
    // The pipeline's producer defaults, lingering long enough that every request carries many records.
    let batched = KafkaConfig {
        librdkafka: [("linger.ms".to_string(), "50".to_string())].into(),
        ..KafkaConfig::new(&kafka.brokers)
    };
    let producer = kafka::producer(&batched, "p")?;
    let mut futures = Vec::new();
    for i in 0..RECORDS {
        let key = format!("{i:06}");
        futures.push(
            producer.send_result(FutureRecord::to(&topic).key(&key).payload(&key).partition(0)).map_err(|(e, _)| e)?,
        );
    }
    let mut offsets = Vec::new();
    for f in futures {
        offsets.push(f.await?.map_err(|(e, _)| e)?.offset);
    }
    assert_eq!(offsets, (0..i64::from(RECORDS)).collect::<Vec<_>>(), "each record its own offset, in order");

    let group = unique("g");
    let first = kafka::consumer(&kafka, "c1", &group)?;
    let (low, high) = first.fetch_watermarks(&topic, 0, Duration::from_secs(10))?;
    assert_eq!((low, high), (0, i64::from(RECORDS)), "the high watermark counts every record");
    let mut commit = rdkafka::TopicPartitionList::new();
    commit.add_partition_offset(&topic, 0, rdkafka::Offset::Offset(COMMITTED))?;
    first.commit(&commit, CommitMode::Sync)?;
    drop(first);

    let consumer = kafka::consumer(&kafka, "c2", &group)?;
    consumer.subscribe(&[&topic])?;
    let mut rest = Vec::new();
    while rest.len() < (i64::from(RECORDS) - COMMITTED) as usize {
        let m = tokio::time::timeout(Duration::from_secs(30), consumer.recv()).await??;
        rest.push((m.offset(), String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned()));
    }
    let expected: Vec<_> = (COMMITTED..i64::from(RECORDS)).map(|o| (o, format!("{o:06}"))).collect();
    assert!(
        rest == expected,
        "resumed at {:?}, {} records; expected offset {COMMITTED} onwards",
        rest.first(),
        rest.len()
    );
    Ok(())
}
