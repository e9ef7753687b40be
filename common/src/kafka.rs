//! The one place every Kafka client is configured, so librdkafka settings, TLS and SASL are set alike everywhere.
//!
//! Security (TLS with a verified broker certificate, SASL/SCRAM) comes from `[kafka]`; [`reach`] tells a wrong
//! password, an untrusted CA or a plaintext client on a TLS listener apart from a broker that is just away.
//!
//! Producers are idempotent (`enable.idempotence`, `acks=all`); the pipeline uses no Kafka transactions — exactly-once
//! comes from positions, deduplication and the progress table in DB2 (see DESIGN.md). Consumers never auto-commit:
//! each stage commits only what the next stage has made durable.

use rdkafka::admin::AdminClient;
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::FutureProducer;

use crate::config::KafkaConfig;

/// What a client does: each gets its own defaults, and only the passthrough keys that apply to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Producer,
    Consumer,
    /// Admin requests and metadata probes (librdkafka makes them producer handles that never produce).
    Admin,
}

impl Role {
    fn defaults(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Role::Producer => PRODUCER_DEFAULTS,
            Role::Consumer => CONSUMER_DEFAULTS,
            Role::Admin => &[],
        }
    }

    /// Whether a `kafka.librdkafka` key is for this kind of client. librdkafka warns about a consumer property
    /// given to a producer (`CONFWARN … will be ignored by this producer instance`) and the other way round, on
    /// every start: each client gets only its own (librdkafka's CONFIGURATION.md marks them C and P).
    fn takes(self, key: &str) -> bool {
        match self {
            Role::Producer => !CONSUMER_ONLY.contains(&key),
            Role::Consumer => !PRODUCER_ONLY.contains(&key),
            Role::Admin => !CONSUMER_ONLY.contains(&key) && !PRODUCER_ONLY.contains(&key),
        }
    }
}

/// librdkafka's consumer-only properties (CONFIGURATION.md, librdkafka 2.12).
const CONSUMER_ONLY: &[&str] = &[
    "group.id",
    "group.instance.id",
    "partition.assignment.strategy",
    "session.timeout.ms",
    "heartbeat.interval.ms",
    "group.protocol.type",
    "group.protocol",
    "group.remote.assignor",
    "coordinator.query.interval.ms",
    "max.poll.interval.ms",
    "enable.auto.commit",
    "auto.commit.interval.ms",
    "enable.auto.offset.store",
    "queued.min.messages",
    "queued.max.messages.kbytes",
    "fetch.wait.max.ms",
    "fetch.queue.backoff.ms",
    "fetch.message.max.bytes",
    "max.partition.fetch.bytes",
    "fetch.max.bytes",
    "fetch.min.bytes",
    "fetch.error.backoff.ms",
    "offset.store.method",
    "isolation.level",
    "enable.partition.eof",
    "check.crcs",
    "auto.commit.enable",
    "auto.offset.reset",
    "offset.store.path",
    "offset.store.sync.interval.ms",
    "consume.callback.max.messages",
];

/// librdkafka's producer-only properties (CONFIGURATION.md, librdkafka 2.12).
const PRODUCER_ONLY: &[&str] = &[
    "transactional.id",
    "transaction.timeout.ms",
    "enable.idempotence",
    "enable.gapless.guarantee",
    "queue.buffering.max.messages",
    "queue.buffering.max.kbytes",
    "queue.buffering.max.ms",
    "linger.ms",
    "message.send.max.retries",
    "retries",
    "queue.buffering.backpressure.threshold",
    "compression.codec",
    "compression.type",
    "compression.level",
    "batch.num.messages",
    "batch.size",
    "delivery.report.only.error",
    "sticky.partitioning.linger.ms",
    "request.required.acks",
    "acks",
    "request.timeout.ms",
    "message.timeout.ms",
    "delivery.timeout.ms",
    "queuing.strategy",
    "produce.offset.report",
    "partitioner",
];

/// Settings common to every client, then the role's defaults, then the user's `kafka.librdkafka` passthrough keys
/// that apply to the role (which win over both).
pub fn client_config(kafka: &KafkaConfig, client_id: &str, role: Role) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &kafka.brokers).set("client.id", client_id);
    for (key, value) in CLIENT_DEFAULTS.iter().chain(role.defaults()) {
        config.set(*key, *value);
    }
    config.set("security.protocol", kafka.security_protocol.as_librdkafka());
    if kafka.security_protocol.tls() {
        // Verify the broker's host name against its certificate (librdkafka's default since 2.0; set, not assumed).
        config.set("ssl.endpoint.identification.algorithm", "https");
        for (key, path) in [
            ("ssl.ca.location", &kafka.ssl_ca_location),
            ("ssl.certificate.location", &kafka.ssl_certificate_location),
            ("ssl.key.location", &kafka.ssl_key_location),
        ] {
            if let Some(path) = path {
                config.set(key, path.display().to_string());
            }
        }
    }
    if kafka.security_protocol.sasl() {
        config.set("sasl.mechanism", &kafka.sasl_mechanism);
        config.set("sasl.username", kafka.sasl_username.as_deref().unwrap_or_default());
        config.set("sasl.password", kafka.sasl_password.expose());
    }
    for (key, value) in kafka.librdkafka.iter().filter(|(key, _)| role.takes(key)) {
        config.set(key, value);
    }
    config
}

/// Every client: Nagle off, so a small request (a commit record, an offset commit, a fetch) leaves at once instead of
/// waiting for the previous one's ACK; batching is librdkafka's job (`linger.ms`), not the socket's.
pub const CLIENT_DEFAULTS: &[(&str, &str)] = &[("socket.nagle.disable", "true")];

/// Producers (capture, transform). Records are batched: the pipeline produces without waiting for each
/// acknowledgement, and ordering plus exactly-once come from idempotence and the position keys, never from one
/// record per request. The broker must serve a fetch from inside a batch exactly, as Kafka does
/// (`smoke::broker_resumes_inside_a_batch_and_counts_every_record`).
pub const PRODUCER_DEFAULTS: &[(&str, &str)] = &[
    // No duplicates, reordering or gaps on retry; a record counts as written only when every in-sync replica has it.
    // A gap (a failed batch, then a later one of the same partition written) would look like lost records to apply.
    ("enable.idempotence", "true"),
    ("acks", "all"),
    ("max.in.flight.requests.per.connection", "5"),
    // Wait up to 20 ms to fill a batch (librdkafka's default is 5): fewer, larger produce requests, and librdkafka's
    // per-partition producer loop wakes less often (it was 15 % of capture's CPU at 5 ms). 20 ms is a small part of
    // the lag budget (two produce hops). librdkafka's batch.num.messages/batch.size caps stay.
    ("linger.ms", "20"),
];

/// Consumers (transform, apply).
pub const CONSUMER_DEFAULTS: &[(&str, &str)] = &[
    // Offsets are committed by hand, only for what the next stage (or DB2) has made durable.
    ("enable.auto.commit", "false"),
    ("enable.auto.offset.store", "false"),
    ("auto.offset.reset", "earliest"),
    ("enable.partition.eof", "false"),
    // How long the broker may hold a fetch that found no data. librdkafka has one fetch in flight per broker, and a
    // partition assigned while it waits is fetched only after it returns: apply assigns partitions as transactions
    // need them, so with librdkafka's default (500 ms) each new partition could add half a second. Kafka parks an
    // idle fetch at no cost, so 100 ms costs nothing when idle.
    ("fetch.wait.max.ms", "100"),
    // When the prefetch queue is full, librdkafka waits fetch.queue.backoff.ms (default 1 s) before fetching again:
    // a consumer that drains fast stalled a second every few thousand records. Fetch again soon instead.
    ("fetch.queue.backoff.ms", "20"),
    // Bounded prefetch: 16 MiB for the whole consumer (librdkafka's default is 64 MiB), plenty for ~10 µs/change.
    ("queued.max.messages.kbytes", "16384"),
];

pub fn producer(kafka: &KafkaConfig, client_id: &str) -> Result<FutureProducer<ServiceContext>, KafkaError> {
    client_config(kafka, client_id, Role::Producer).create_with_context(ServiceContext)
}

/// A pipeline producer's configuration: [`PRODUCER_DEFAULTS`], and librdkafka's own record limit set to the topics'
/// (`topics.max_message_bytes`; librdkafka's default, 1000000, is below Kafka's), so that a full part passes.
pub fn producer_config(kafka: &KafkaConfig, client_id: &str, max_message_bytes: i32) -> ClientConfig {
    let mut config = client_config(kafka, client_id, Role::Producer);
    if !kafka.librdkafka.contains_key("message.max.bytes") {
        config.set("message.max.bytes", max_message_bytes.to_string());
    }
    // What librdkafka holds until Kafka acknowledges it: 64 MiB instead of its default 1 GiB, so a huge row's parts
    // are not still queued while the next huge row is decoded (capture peaked at 3.3x the row then, 2.5x without).
    // Ordinary records stay far below it (capture's 50,000 in flight are about 35 MB).
    if !kafka.librdkafka.contains_key("queue.buffering.max.kbytes") {
        config.set("queue.buffering.max.kbytes", "65536");
    }
    config
}

/// A consumer group member's configuration; create it with a context of your own for rebalance hooks.
pub fn consumer_config(kafka: &KafkaConfig, client_id: &str, group_id: &str) -> ClientConfig {
    let mut config = client_config(kafka, client_id, Role::Consumer);
    config.set("group.id", group_id);
    config
}

pub fn consumer(kafka: &KafkaConfig, client_id: &str, group_id: &str) -> Result<StreamConsumer, KafkaError> {
    consumer_config(kafka, client_id, group_id).create()
}

pub fn admin(kafka: &KafkaConfig, client_id: &str) -> Result<AdminClient<ServiceContext>, KafkaError> {
    client_config(kafka, client_id, Role::Admin).create_with_context(ServiceContext)
}

/// How often one kind of librdkafka complaint reaches the service's log. While a broker is away librdkafka reports
/// every failed connection (hundreds a minute, from each client); the service says once per backoff step what it
/// waits for, and this keeps librdkafka's own lines to one per kind and interval, with the count left out.
const LOG_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);

/// What to add to a delivery error: for a record the topic refused as too large, the setting to change (the
/// service retries, so fixing the topic is enough); nothing otherwise.
pub fn delivery_fix(error: &KafkaError, topic: &str) -> String {
    if error.rdkafka_error_code() == Some(RDKafkaErrorCode::MessageSizeTooLarge) {
        return format!(
            " (the record is larger than topic {topic} or the broker accepts: raise the topic's max.message.bytes to \
             at least topics.max_message_bytes — kafka-configs.sh --alter --entity-type topics --entity-name {topic} \
             --add-config max.message.bytes=<topics.max_message_bytes> — or lower topics.max_message_bytes to the \
             topic's, so records are cut into parts that fit; retrying until then)"
        );
    }
    String::new()
}

/// Admits a log line of kind `key` at most once per [`LOG_INTERVAL`]; `Some(n)` when admitted, `n` being how many
/// of that kind were held back since the last one.
pub fn throttled(key: &str) -> Option<u64> {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    use std::time::Instant;
    static SEEN: OnceLock<Mutex<HashMap<String, (Instant, u64)>>> = OnceLock::new();
    let mut seen = SEEN.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    match seen.get_mut(key) {
        Some((last, held)) if last.elapsed() < LOG_INTERVAL => {
            *held += 1;
            None
        }
        Some((last, held)) => {
            let admitted = *held;
            (*last, *held) = (Instant::now(), 0);
            Some(admitted)
        }
        None => {
            seen.insert(key.to_owned(), (Instant::now(), 0));
            Some(0)
        }
    }
}

/// Whether a librdkafka error only says that brokers are away (which the services wait out and report themselves).
pub fn is_transport(code: Option<RDKafkaErrorCode>) -> bool {
    matches!(
        code,
        Some(
            RDKafkaErrorCode::AllBrokersDown
                | RDKafkaErrorCode::BrokerTransportFailure
                | RDKafkaErrorCode::Resolve
                | RDKafkaErrorCode::MessageTimedOut
                | RDKafkaErrorCode::RequestTimedOut
        )
    )
}

/// librdkafka's global error, for a client context: throttled per error code ([`throttled`]); a broker being away
/// is a warning (the service waits), anything else an error.
pub fn report_client_error(error: &KafkaError, reason: &str) {
    let code = error.rdkafka_error_code();
    let Some(held) = throttled(&format!("error {code:?}")) else { return };
    if is_transport(code) {
        tracing::warn!(%error, held_back = held, "librdkafka: {reason}");
    } else {
        tracing::error!(%error, held_back = held, "librdkafka: {reason}");
    }
}

/// librdkafka's log line, for a client context: warnings and worse throttled per facility ([`throttled`]).
pub fn report_client_log(level: rdkafka::config::RDKafkaLogLevel, facility: &str, message: &str) {
    use rdkafka::config::RDKafkaLogLevel as L;
    match level {
        L::Emerg | L::Alert | L::Critical | L::Error | L::Warning => {
            let Some(held) = throttled(&format!("log {facility}")) else { return };
            if matches!(level, L::Warning) {
                tracing::warn!(facility, held_back = held, "librdkafka: {message}");
            } else {
                tracing::error!(facility, held_back = held, "librdkafka: {message}");
            }
        }
        L::Notice | L::Info => tracing::info!(facility, "librdkafka: {message}"),
        L::Debug => tracing::debug!(facility, "librdkafka: {message}"),
    }
}

/// The context of the services' plain clients: librdkafka's errors and log lines go to the service's log,
/// throttled ([`report_client_error`], [`report_client_log`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct ServiceContext;

impl ClientContext for ServiceContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, facility: &str, message: &str) {
        report_client_log(level, facility, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        report_client_error(&error, reason);
    }
}

impl rdkafka::consumer::ConsumerContext for ServiceContext {}

/// Why the brokers could not be used, and whether waiting can help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReachError {
    /// The brokers refused these settings (a password, a CA, the protocol): a person must fix the named setting.
    #[error("{0}")]
    Refused(String),
    /// No broker answered (down, starting, unreachable): waiting may help.
    #[error("{0}")]
    Unreachable(String),
}

/// What librdkafka said while the probe ran: its global errors and its connection-failure log lines (the only
/// places the reason of a TLS, SASL or protocol failure is reported). Nothing is forwarded to the service's log.
#[derive(Default)]
struct ErrorRecorder(std::sync::Mutex<Vec<(Option<RDKafkaErrorCode>, String)>>);

impl ErrorRecorder {
    fn record(&self, code: Option<RDKafkaErrorCode>, reason: &str) {
        if let Ok(mut seen) = self.0.lock() {
            seen.push((code, reason.to_owned()));
        }
    }
}

impl ClientContext for ErrorRecorder {
    fn error(&self, error: KafkaError, reason: &str) {
        self.record(error.rdkafka_error_code(), reason);
    }

    fn log(&self, _level: rdkafka::config::RDKafkaLogLevel, facility: &str, message: &str) {
        if facility == "FAIL" {
            self.record(None, message);
        }
    }
}

impl rdkafka::consumer::ConsumerContext for ErrorRecorder {}

/// Asks the brokers for their metadata with these settings, and says what to change when they refuse them. Blocking
/// (up to `timeout`, less when `cancel` fires): call it from a blocking thread. The services call it at start and
/// stop on [`ReachError::Refused`]; [`ReachError::Unreachable`] is theirs to wait out.
pub fn reach(
    kafka: &KafkaConfig,
    timeout: std::time::Duration,
    cancel: &tokio_util::sync::CancellationToken,
) -> Result<(), ReachError> {
    let probe: BaseConsumer<ErrorRecorder> = client_config(kafka, "pgm-reach", Role::Admin)
        .create_with_context(ErrorRecorder::default())
        .map_err(|e| ReachError::Refused(format!("kafka client settings ([kafka]): {e}")))?;
    // Short attempts, so that a refusal ends the wait early.
    let started = std::time::Instant::now();
    loop {
        let error = match probe.fetch_metadata(None, std::time::Duration::from_millis(500)) {
            Ok(metadata) if !metadata.brokers().is_empty() => return Ok(()),
            Ok(_) => "the cluster reported no brokers".to_owned(),
            Err(error) => error.to_string(),
        };
        // librdkafka hands its global errors to the context only from a poll of the client's queue.
        let _ = probe.poll(std::time::Duration::ZERO);
        let seen = probe.context().0.lock().map(|e| e.clone()).unwrap_or_default();
        let verdict = explain(kafka, &error, &seen, started.elapsed());
        let done = started.elapsed() >= timeout || cancel.is_cancelled();
        if matches!(verdict, ReachError::Refused(_)) || done {
            return Err(verdict);
        }
    }
}

/// A service's first look at the brokers: stops it when they refuse its settings (wrong password, untrusted CA,
/// plaintext on a TLS listener), which no retry can mend; a broker that is only away is left to the service's
/// retries, with a warning. A shutdown ends the look within half a second.
pub async fn refuse_wrong_settings(
    kafka: &KafkaConfig,
    shutdown: &tokio_util::sync::CancellationToken,
) -> Result<(), ReachError> {
    let (probe, cancel) = (kafka.clone(), shutdown.clone());
    let result = tokio::task::spawn_blocking(move || reach(&probe, std::time::Duration::from_secs(10), &cancel))
        .await
        .unwrap_or_else(|e| Err(ReachError::Unreachable(format!("probe task: {e}"))));
    if shutdown.is_cancelled() {
        return Ok(());
    }
    match result {
        Err(ReachError::Unreachable(why)) => {
            tracing::warn!(brokers = %kafka.brokers, problem = %why, "no broker answered yet; the service waits for one");
            Ok(())
        }
        other => other,
    }
}

/// A connection the broker closed while librdkafka waited for the answer to its first request: what a TLS or SASL
/// listener does to a client that speaks plaintext.
fn dropped_at_handshake(reason: &str) -> bool {
    (reason.contains("APIVERSION_QUERY") && (reason.contains("Disconnected") || reason.contains("closed")))
        || reason.contains("security.protocol")
}

/// Turns librdkafka's reasons into the setting to change. A dropped handshake counts as a refusal only when every
/// connection failure for at least 3 s was one (a broker shutting down can drop one connection that way).
fn explain(
    kafka: &KafkaConfig,
    error: &str,
    seen: &[(Option<RDKafkaErrorCode>, String)],
    elapsed: std::time::Duration,
) -> ReachError {
    let brokers = &kafka.brokers;
    let protocol = kafka.security_protocol.as_librdkafka();
    let tls_failure = |reason: &str| reason.contains("SSL handshake failed") || reason.contains("certificate verify");
    if let Some((_, reason)) =
        seen.iter().find(|(code, reason)| *code == Some(RDKafkaErrorCode::Authentication) && !tls_failure(reason))
    {
        return ReachError::Refused(format!(
            "the brokers {brokers} refused SASL authentication as {:?} ({}): {reason}; check kafka.sasl_username \
             and kafka.sasl_password (PGM__KAFKA__SASL_PASSWORD) and kafka.sasl_mechanism",
            kafka.sasl_username.as_deref().unwrap_or_default(),
            kafka.sasl_mechanism
        ));
    }
    if let Some((_, reason)) =
        seen.iter().find(|(code, reason)| *code == Some(RDKafkaErrorCode::SSL) || tls_failure(reason))
    {
        let ca =
            kafka.ssl_ca_location.as_ref().map_or("the system's trust store".to_owned(), |p| p.display().to_string());
        return ReachError::Refused(format!(
            "TLS with {brokers} failed: {reason}; the brokers' certificate must be signed by the CA in \
             kafka.ssl_ca_location (now {ca}) and name the host in kafka.brokers"
        ));
    }
    let failures: Vec<&str> = seen.iter().filter(|(code, _)| code.is_none()).map(|(_, r)| r.as_str()).collect();
    let drops = failures.iter().filter(|r| dropped_at_handshake(r)).count();
    if drops >= 2 && drops == failures.len() && elapsed >= std::time::Duration::from_secs(3) {
        return ReachError::Refused(format!(
            "{brokers} closed every connection during the handshake ({}); the listener probably needs TLS or \
             SASL: set kafka.security_protocol (now {protocol}) to what the broker's listener expects (ssl, \
             sasl_plaintext or sasl_ssl)",
            failures[0]
        ));
    }
    let last = failures.last().map_or(error.to_owned(), |reason| (*reason).to_owned());
    ReachError::Unreachable(format!("no broker of kafka.brokers = {brokers} answered: {last}"))
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
            librdkafka: BTreeMap::from([("sasl.password".into(), "hunter2".into()), ("acks".into(), "1".into())]),
            ..KafkaConfig::new("127.0.0.1:1")
        }
    }

    #[test]
    fn passthrough_wins_and_secrets_are_masked() {
        let config = client_config(&kafka(), "t", Role::Producer);
        assert_eq!(config.get("enable.idempotence"), Some("true"));
        assert_eq!(config.get("bootstrap.servers"), Some("127.0.0.1:1"));
        assert_eq!(config.get("acks"), Some("1"));
        let shown = describe_passthrough(&kafka());
        assert!(shown.contains(&("sasl.password".into(), "***".into())));
        assert!(shown.contains(&("acks".into(), "1".into())));
    }

    #[test]
    fn a_record_too_large_for_its_topic_names_the_setting() {
        let too_large = KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge);
        let fix = delivery_fix(&too_large, "p.raw.public.docs");
        assert!(fix.contains("max.message.bytes") && fix.contains("topics.max_message_bytes"), "{fix}");
        assert!(fix.contains("--entity-name p.raw.public.docs"), "{fix}");
        assert_eq!(delivery_fix(&KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut), "t"), "");
    }

    #[test]
    fn each_client_gets_only_the_passthrough_keys_of_its_role() {
        let mut kafka = kafka();
        kafka.librdkafka.insert("session.timeout.ms".into(), "6000".into());
        kafka.librdkafka.insert("linger.ms".into(), "7".into());
        kafka.librdkafka.insert("socket.keepalive.enable".into(), "true".into());
        let producer = client_config(&kafka, "t", Role::Producer);
        assert_eq!(producer.get("session.timeout.ms"), None);
        assert_eq!(producer.get("linger.ms"), Some("7"));
        let consumer = client_config(&kafka, "t", Role::Consumer);
        assert_eq!(consumer.get("session.timeout.ms"), Some("6000"));
        assert_eq!(consumer.get("linger.ms"), None);
        let admin = client_config(&kafka, "t", Role::Admin);
        assert_eq!((admin.get("session.timeout.ms"), admin.get("linger.ms")), (None, None));
        for config in [producer, consumer, admin] {
            assert_eq!(config.get("socket.keepalive.enable"), Some("true"));
        }
    }
}
