//! The topics pg-migrator creates keep the whole migration (retention.ms = -1 unless `[topics]` says otherwise,
//! cleanup.policy = delete, the configured max.message.bytes and min.insync.replicas), and a topic that already
//! exists with a setting that can lose records is reported by `pgm-capture check` and refused by the services,
//! naming the topic, the setting and the fix.

use std::time::Duration;

use crate::BINS;
use anyhow::ensure;
use pgm_common::config::KafkaConfig;
use pgm_common::kafka;
use pgm_test_support::broker::shared_brokers;
use pgm_test_support::stack::{Options, Service, Stack};
use rdkafka::admin::{AdminOptions, AlterConfig, NewTopic, ResourceSpecifier, TopicReplication};

const SCHEMA: &str = "CREATE TABLE items (id int PRIMARY KEY, name text);";

/// The settings of `topic` as the broker reports them.
async fn settings(brokers: &str, topic: &str) -> anyhow::Result<Vec<(String, String)>> {
    let admin = kafka::admin(&KafkaConfig::new(brokers), "test")?;
    let described = admin.describe_configs(&[ResourceSpecifier::Topic(topic)], &AdminOptions::new()).await?;
    let mut out = Vec::new();
    for resource in described {
        let resource = resource.map_err(|code| anyhow::anyhow!("describe {topic}: {code}"))?;
        out.extend(resource.entries.into_iter().map(|e| (e.name, e.value.unwrap_or_default())));
    }
    Ok(out)
}

fn value<'a>(settings: &'a [(String, String)], name: &str) -> &'a str {
    settings.iter().find(|(n, _)| n == name).map_or("", |(_, v)| v.as_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_keep_the_migration_and_a_short_retention_is_refused_naming_topic_setting_and_fix() -> anyhow::Result<()>
{
    let brokers = shared_brokers()?;
    let options = Options {
        source_schema: SCHEMA,
        target_schema: SCHEMA,
        tables: &["public.items"],
        rules: Some("[[table]]\nsource = \"public.items\"\n[[table.target]]\ntable = \"public.items\"\n"),
        partitions: 2,
        apply: "",
        librdkafka: "",
        create_slot: true,
    };
    let stack = Stack::new(BINS, brokers.clone(), options).await?;
    stack.configure("topics", "max_message_bytes = 2000000")?;
    // Someone made the txn topic beforehand with the broker's habit of an hour's retention.
    let txn = format!("{}.txn", stack.prefix);
    let admin = kafka::admin(&KafkaConfig::new(&brokers), "test")?;
    let new = NewTopic::new(&txn, 1, TopicReplication::Fixed(1)).set("retention.ms", "3600000");
    for result in admin.create_topics(&[new], &AdminOptions::new()).await? {
        result.map_err(|(topic, code)| anyhow::anyhow!("create {topic}: {code}"))?;
    }

    // check: FAIL, naming the topic, the setting and the command that fixes it.
    let check = stack.run(Service::Capture, &["check"])?;
    let out = String::from_utf8_lossy(&check.stdout);
    ensure!(!check.status.success(), "check passed with a txn topic that deletes records after an hour:\n{out}");
    let line = out.lines().position(|l| l.contains("FAIL") && l.contains(&txn) && l.contains("retention.ms"));
    ensure!(line.is_some(), "check does not name {txn} and retention.ms:\n{out}");
    ensure!(
        out.contains(&format!("--entity-name {txn} --add-config retention.ms=-1")),
        "check gives no fix for {txn}:\n{out}"
    );

    // run: refuses to start, with the same names, and acknowledges nothing.
    let run = stack.run(Service::Capture, &["run"])?;
    let err = String::from_utf8_lossy(&run.stderr);
    ensure!(!run.status.success(), "capture ran on a txn topic that deletes records after an hour");
    ensure!(err.contains(&txn) && err.contains("retention.ms = 3600000"), "capture's error does not name them:\n{err}");

    // Fixed as the message says: the pipeline runs, and every topic it made has the migration's settings.
    // The topic also has Kafka's default record limit, below the configured 2000000: reported too.
    ensure!(
        out.contains(&format!("--entity-name {txn} --add-config max.message.bytes=2000000")),
        "check does not report {txn}'s max.message.bytes:\n{out}"
    );
    let fix =
        AlterConfig::new(ResourceSpecifier::Topic(&txn)).set("retention.ms", "-1").set("max.message.bytes", "2000000");
    for result in admin.alter_configs(&[fix], &AdminOptions::new()).await? {
        result.map_err(|(_, code)| anyhow::anyhow!("alter {txn}: {code}"))?;
    }
    let check = stack.run(Service::Capture, &["check"])?;
    ensure!(check.status.success(), "check still fails:\n{}", String::from_utf8_lossy(&check.stdout));
    let _capture = stack.spawn(Service::Capture, &["run"])?;
    let _transform = stack.spawn(Service::Transform, &["run"])?;
    let _apply = stack.spawn(Service::Apply, &["run"])?;
    stack
        .source()
        .await?
        .batch_execute("INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 50) g")
        .await?;
    stack.marker("topics made").await?;
    stack.wait_marker("topics made", Duration::from_secs(90)).await?;
    stack.assert_same(&["public.items"]).await?;
    for topic in [format!("{}.raw.public.items", stack.prefix), format!("{}.out.public.items", stack.prefix)] {
        let found = settings(&brokers, &topic).await?;
        for (name, wanted) in [
            ("retention.ms", "-1"),
            ("retention.bytes", "-1"),
            ("cleanup.policy", "delete"),
            ("max.message.bytes", "2000000"),
            ("min.insync.replicas", "1"),
        ] {
            ensure!(value(&found, name) == wanted, "{topic}: {name} = {:?}, wanted {wanted}", value(&found, name));
        }
    }
    Ok(())
}
