//! The one place every Kafka client is configured, so librdkafka settings, TLS and SASL are set alike everywhere.
//!
//! Producers are idempotent (`enable.idempotence`, `acks=all`); the pipeline uses no Kafka transactions — exactly-once
//! comes from positions, deduplication and the progress table in DB2 (see DESIGN.md). Consumers never auto-commit:
//! each stage commits only what the next stage has made durable.

use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::StreamConsumer;
use rdkafka::error::KafkaError;
use rdkafka::producer::FutureProducer;

use crate::config::KafkaConfig;

/// Settings common to every client, then the role's defaults, then the user's `kafka.librdkafka` passthrough
/// (which wins over both).
pub fn client_config(kafka: &KafkaConfig, client_id: &str, role_defaults: &[(&str, &str)]) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &kafka.brokers).set("client.id", client_id);
    for (key, value) in CLIENT_DEFAULTS.iter().chain(role_defaults) {
        config.set(*key, *value);
    }
    for (key, value) in &kafka.librdkafka {
        config.set(key, value);
    }
    config
}

/// Every client: Nagle off, so a small request (a commit record, an offset commit, a fetch) leaves at once instead of
/// waiting for the previous one's ACK; batching is librdkafka's job (`linger.ms`), not the socket's.
pub const CLIENT_DEFAULTS: &[(&str, &str)] = &[("socket.nagle.disable", "true")];

/// Producers (capture, transform). Records are batched: the pipeline produces without waiting for each
/// acknowledgement, and ordering plus exactly-once come from idempotence and the position keys, never from one
/// record per request. The broker must serve a fetch from inside a batch exactly (Kafka does; on tansu use the
/// sqlite engine, never its memory engine).
pub const PRODUCER_DEFAULTS: &[(&str, &str)] = &[
    // No duplicates, reordering or gaps on retry; a record counts as written only when every in-sync replica has it.
    // A gap (a failed batch, then a later one of the same partition written) would look like lost records to apply.
    // Against tansu, librdkafka's idempotent producer costs 15 µs of CPU per record (3–4 µs without it), see
    // docs/capture.md: kept, correctness first.
    ("enable.idempotence", "true"),
    ("acks", "all"),
    ("max.in.flight.requests.per.connection", "5"),
    // Wait up to 20 ms to fill a batch. librdkafka's per-partition producer loop then wakes less often (it was 15 %
    // of capture's CPU at 5 ms): pgbench backlog on tansu, capture 3.0 → 2.7 CPU-s, broker 10.8 → 9.1, drain
    // 6,593 → 7,487 changes/s, and live lag went down, not up (docs/performance.md). 20 ms is a small part of the
    // lag budget (two produce hops). librdkafka's batch.num.messages/batch.size caps stay.
    ("linger.ms", "20"),
];

/// Consumers (transform, apply).
pub const CONSUMER_DEFAULTS: &[(&str, &str)] = &[
    // Offsets are committed by hand, only for what the next stage (or DB2) has made durable.
    ("enable.auto.commit", "false"),
    ("enable.auto.offset.store", "false"),
    ("auto.offset.reset", "earliest"),
    ("enable.partition.eof", "false"),
    // How long the broker may hold a fetch that has less than fetch.min.bytes. Kafka answers at once when data is
    // there, so this only bounds how soon an idle partition's first new record is seen (a transaction's records may
    // sit in a partition that was idle); librdkafka's default is 500. tansu 0.6.0 holds *every* fetch this long
    // (half of it from 250 ms up) and runs its SQL for every assigned partition once per fetch, so the value is
    // also what an idle consumer costs it: one consumer of 17 partitions kept tansu at 82 % CPU with 20 ms, 23 %
    // with 100 ms, 10 % with 500 ms (`pgm-bench-produce`). 100 ms per hop is a small part of a 1 s lag budget.
    ("fetch.wait.max.ms", "100"),
    // When the prefetch queue is full, librdkafka waits fetch.queue.backoff.ms (default 1 s) before fetching again:
    // a consumer that drains fast stalled a second every few thousand records. Fetch again soon instead.
    ("fetch.queue.backoff.ms", "20"),
    // Bounded prefetch: 16 MiB for the whole consumer (librdkafka's default is 64 MiB), plenty for ~10 µs/change.
    ("queued.max.messages.kbytes", "16384"),
];

pub fn producer(kafka: &KafkaConfig, client_id: &str) -> Result<FutureProducer, KafkaError> {
    client_config(kafka, client_id, PRODUCER_DEFAULTS).create()
}

/// A consumer group member's configuration; create it with a context of your own for rebalance hooks.
pub fn consumer_config(kafka: &KafkaConfig, client_id: &str, group_id: &str) -> ClientConfig {
    let mut config = client_config(kafka, client_id, CONSUMER_DEFAULTS);
    config.set("group.id", group_id);
    config
}

pub fn consumer(kafka: &KafkaConfig, client_id: &str, group_id: &str) -> Result<StreamConsumer, KafkaError> {
    consumer_config(kafka, client_id, group_id).create()
}

pub fn admin(kafka: &KafkaConfig, client_id: &str) -> Result<AdminClient<DefaultClientContext>, KafkaError> {
    client_config(kafka, client_id, &[]).create()
}

/// The passthrough table for logs: values of keys that look like credentials are masked.
pub fn describe_passthrough(kafka: &KafkaConfig) -> Vec<(String, String)> {
    kafka
        .librdkafka
        .iter()
        .map(|(key, value)| {
            let secret = ["password", "secret", "key.pem", "token"].iter().any(|s| key.contains(s));
            (key.clone(), if secret { "***".to_owned() } else { value.clone() })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn kafka() -> KafkaConfig {
        KafkaConfig {
            brokers: "127.0.0.1:1".into(),
            librdkafka: BTreeMap::from([("sasl.password".into(), "hunter2".into()), ("acks".into(), "1".into())]),
        }
    }

    #[test]
    fn passthrough_wins_and_secrets_are_masked() {
        let config = client_config(&kafka(), "t", PRODUCER_DEFAULTS);
        assert_eq!(config.get("enable.idempotence"), Some("true"));
        assert_eq!(config.get("bootstrap.servers"), Some("127.0.0.1:1"));
        assert_eq!(config.get("acks"), Some("1"));
        let shown = describe_passthrough(&kafka());
        assert!(shown.contains(&("sasl.password".into(), "***".into())));
        assert!(shown.contains(&("acks".into(), "1".into())));
    }
}
