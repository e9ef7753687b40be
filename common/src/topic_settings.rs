//! The settings of the topics pg-migrator creates, and the audit of topics that already exist.
//!
//! Replay from offsets is the promise (DESIGN.md): every record must stay until the migration is over. So capture
//! (txn and raw topics) and transform (out topics) create their topics with explicit settings from `[topics]`
//! rather than the broker's defaults — `retention.ms` (-1: kept for ever by default), `retention.bytes = -1`,
//! `cleanup.policy = delete`, `max.message.bytes`, `min.insync.replicas` and the replication factor — and refuse to
//! use an existing topic whose settings can delete or compact its records, or refuse the records the pipeline
//! writes. `pgm-capture check` runs the same audit over every topic of the prefix.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use crate::config::TopicsConfig;

/// How long a creation, a config description or a metadata lookup waits for the broker.
pub const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);

/// What goes wrong when a topic is made ready.
#[derive(Debug, thiserror::Error)]
pub enum TopicSetupError {
    /// The broker is away or slow: try again.
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    /// The topic cannot serve the migration as it is; a person must change it (or the configuration).
    #[error("{0}")]
    Definite(String),
}

impl TopicSetupError {
    pub fn is_transient(&self) -> bool {
        match self {
            TopicSetupError::Kafka(error) => !matches!(error, KafkaError::ClientCreation(_)),
            TopicSetupError::Definite(_) => false,
        }
    }
}

/// One topic setting that does not fit the migration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Misfit {
    pub topic: String,
    pub setting: &'static str,
    pub found: String,
    pub wanted: String,
    /// Why it matters.
    pub risk: &'static str,
}

impl Misfit {
    /// The command that fixes it (Kafka's own tool).
    pub fn fix(&self, brokers: &str) -> String {
        format!(
            "kafka-configs.sh --bootstrap-server {brokers} --alter --entity-type topics --entity-name {} \
             --add-config {}={}",
            self.topic, self.setting, self.wanted
        )
    }
}

impl std::fmt::Display for Misfit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "topic {}: {} = {} ({}); it must be {}", self.topic, self.setting, self.found, self.risk, self.wanted)
    }
}

/// The topic-level settings a new topic gets (beside partitions and replication factor).
pub fn creation_settings(config: &TopicsConfig) -> Vec<(&'static str, String)> {
    vec![
        ("retention.ms", config.retention_ms.to_string()),
        ("retention.bytes", "-1".to_owned()),
        ("cleanup.policy", "delete".to_owned()),
        ("max.message.bytes", config.max_message_bytes.to_string()),
        ("min.insync.replicas", config.min_insync_replicas.to_string()),
    ]
}

/// Compares an existing topic's settings (name → value, as DescribeConfigs reports them) with what the migration
/// needs. Only what can lose records or refuse the pipeline's writes is reported; a longer retention is fine.
pub fn audit(topic: &str, settings: &[(String, Option<String>)], config: &TopicsConfig) -> Vec<Misfit> {
    let get = |name: &str| settings.iter().find(|(n, _)| n == name).and_then(|(_, v)| v.clone());
    let int = |name: &str| get(name).and_then(|v| v.parse::<i64>().ok());
    let misfit = |setting: &'static str, found: String, wanted: String, risk: &'static str| Misfit {
        topic: topic.to_owned(),
        setting,
        found,
        wanted,
        risk,
    };
    let mut out = Vec::new();
    if let Some(found) = int("retention.ms") {
        let short = found >= 0 && (config.retention_ms < 0 || found < config.retention_ms);
        if short {
            out.push(misfit(
                "retention.ms",
                found.to_string(),
                config.retention_ms.to_string(),
                "the broker deletes records older than that, so a replay or a stopped stage can lose them",
            ));
        }
    }
    if let Some(found) = int("retention.bytes").filter(|b| *b >= 0) {
        out.push(misfit(
            "retention.bytes",
            found.to_string(),
            "-1".to_owned(),
            "the broker deletes the oldest records once a partition is that large",
        ));
    }
    if let Some(found) = get("cleanup.policy").filter(|p| p.trim() != "delete") {
        out.push(misfit(
            "cleanup.policy",
            found,
            "delete".to_owned(),
            "compaction rewrites the log and leaves offset gaps, which apply cannot tell from lost records",
        ));
    }
    if let Some(found) = int("max.message.bytes").filter(|b| *b < i64::from(config.max_message_bytes)) {
        out.push(misfit(
            "max.message.bytes",
            found.to_string(),
            config.max_message_bytes.to_string(),
            "the broker refuses records larger than that, and the pipeline writes up to topics.max_message_bytes",
        ));
    }
    out
}

/// Makes `topic` ready: creates it with [`creation_settings`], or, when it exists, checks its partition count and
/// [`audit`]s its settings. A misfit is a definite error naming the topic, the setting and the fix.
pub async fn ensure(
    admin: &Arc<AdminClient<crate::kafka::ServiceContext>>,
    brokers: &str,
    topic: &str,
    partitions: i32,
    config: &TopicsConfig,
) -> Result<(), TopicSetupError> {
    let settings = creation_settings(config);
    let mut new = NewTopic::new(topic, partitions, TopicReplication::Fixed(config.replication_factor));
    for (key, value) in &settings {
        new = new.set(key, value);
    }
    let options = AdminOptions::new().operation_timeout(Some(ADMIN_TIMEOUT)).request_timeout(Some(ADMIN_TIMEOUT));
    let mut existed = false;
    for result in admin.create_topics(&[new], &options).await? {
        match result {
            Ok(_) => {}
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => existed = true,
            // The broker is away or slow: transient, the caller tries again.
            Err((
                _,
                code @ (RDKafkaErrorCode::OperationTimedOut
                | RDKafkaErrorCode::RequestTimedOut
                | RDKafkaErrorCode::BrokerNotAvailable
                | RDKafkaErrorCode::NotController
                | RDKafkaErrorCode::BrokerTransportFailure
                | RDKafkaErrorCode::AllBrokersDown),
            )) => return Err(KafkaError::AdminOp(code).into()),
            Err((topic, code)) => {
                return Err(TopicSetupError::Definite(format!(
                    "cannot create topic {topic}: {code}; check topics.replication_factor ({}), \
                     topics.min_insync_replicas ({}) and topics.max_message_bytes ({}) against the broker's limits, \
                     and the principal's CREATE permission",
                    config.replication_factor, config.min_insync_replicas, config.max_message_bytes
                )))
            }
        }
    }
    // A topic just created reaches the broker's metadata a moment later (KRaft propagates it): look until it shows
    // partitions, within ADMIN_TIMEOUT. fetch_metadata blocks: off the runtime, so a shutdown does not wait for it.
    let deadline = std::time::Instant::now() + ADMIN_TIMEOUT;
    let found = loop {
        let (client, name) = (admin.clone(), topic.to_owned());
        let metadata = tokio::task::spawn_blocking(move || client.inner().fetch_metadata(Some(&name), ADMIN_TIMEOUT))
            .await
            .map_err(|_| KafkaError::Canceled)??;
        let found = metadata.topics().iter().find(|t| t.name() == topic).map_or(0, |t| t.partitions().len());
        if found > 0 {
            break found;
        }
        if std::time::Instant::now() >= deadline {
            // Not a definite fault: the broker may be catching up; the caller tries again.
            return Err(KafkaError::AdminOp(RDKafkaErrorCode::UnknownTopicOrPartition).into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    if found != partitions as usize {
        return Err(TopicSetupError::Definite(format!(
            "topic {topic} has {found} partitions but the configuration says {partitions} (topics.partitions; the \
             txn topic always has 1): set topics.partitions to {found}, or use a new topics.prefix"
        )));
    }
    if existed {
        let misfits = describe_and_audit(admin, topic, config).await?;
        if let Some(first) = misfits.first() {
            let all: Vec<String> = misfits.iter().map(ToString::to_string).collect();
            return Err(TopicSetupError::Definite(format!(
                "{}; fix: {} (or set [topics] to match and use a new topics.prefix)",
                all.join("; "),
                first.fix(brokers)
            )));
        }
    }
    Ok(())
}

/// The [`audit`] of an existing topic, its settings read from the broker.
pub async fn describe_and_audit(
    admin: &AdminClient<crate::kafka::ServiceContext>,
    topic: &str,
    config: &TopicsConfig,
) -> Result<Vec<Misfit>, TopicSetupError> {
    let options = AdminOptions::new().request_timeout(Some(ADMIN_TIMEOUT));
    let described = admin.describe_configs(&[ResourceSpecifier::Topic(topic)], &options).await?;
    let mut settings = Vec::new();
    for resource in described {
        let resource = resource.map_err(|code| {
            TopicSetupError::Definite(format!(
                "cannot read the settings of topic {topic}: {code}; the principal needs DESCRIBE_CONFIGS on it"
            ))
        })?;
        settings.extend(resource.entries.into_iter().map(|e| (e.name, e.value)));
    }
    Ok(audit(topic, &settings, config))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pairs: &[(&str, &str)]) -> Vec<(String, Option<String>)> {
        pairs.iter().map(|(k, v)| (k.to_string(), Some(v.to_string()))).collect()
    }

    fn kafka_defaults() -> Vec<(String, Option<String>)> {
        settings(&[
            ("retention.ms", "604800000"),
            ("retention.bytes", "-1"),
            ("cleanup.policy", "delete"),
            ("max.message.bytes", "1048588"),
        ])
    }

    #[test]
    fn what_we_create_passes_our_own_audit() {
        let config = TopicsConfig::default();
        let created: Vec<(String, Option<String>)> =
            creation_settings(&config).into_iter().map(|(k, v)| (k.to_owned(), Some(v))).collect();
        assert_eq!(audit("p.txn", &created, &config), vec![]);
    }

    #[test]
    fn a_topic_made_with_the_brokers_defaults_is_refused_for_its_retention() {
        let found = audit("p.txn", &kafka_defaults(), &TopicsConfig::default());
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(
            (found[0].setting, found[0].found.as_str(), found[0].wanted.as_str()),
            ("retention.ms", "604800000", "-1")
        );
        let fix = found[0].fix("b:9092");
        assert!(fix.contains("--entity-name p.txn --add-config retention.ms=-1"), "{fix}");
    }

    #[test]
    fn a_configured_finite_retention_accepts_longer_and_refuses_shorter() {
        let config = TopicsConfig { retention_ms: 1_000_000_000, ..TopicsConfig::default() };
        assert_eq!(audit("t", &settings(&[("retention.ms", "-1")]), &config), vec![]);
        assert_eq!(audit("t", &settings(&[("retention.ms", "2000000000")]), &config), vec![]);
        assert_eq!(audit("t", &settings(&[("retention.ms", "3600000")]), &config).len(), 1);
    }

    #[test]
    fn size_retention_compaction_and_a_small_record_limit_are_each_named() {
        let config = TopicsConfig::default();
        let found = audit(
            "t",
            &settings(&[
                ("retention.ms", "-1"),
                ("retention.bytes", "1073741824"),
                ("cleanup.policy", "compact"),
                ("max.message.bytes", "1000"),
            ]),
            &config,
        );
        let names: Vec<&str> = found.iter().map(|m| m.setting).collect();
        assert_eq!(names, ["retention.bytes", "cleanup.policy", "max.message.bytes"]);
    }
}
