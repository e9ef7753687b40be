//! The pipeline's one configuration file (TOML), shared by all three services, with environment overrides.
//!
//! Resolution: defaults ← the file ← `PGM__SECTION__KEY` environment variables (`PGM__KAFKA__BROKERS=…`,
//! `PGM__SOURCE__PASSWORD=…`). Unknown keys are errors, so a typo fails at start instead of being ignored. Every
//! error names the file (or variable), the key and what was expected. Passwords are [`Secret`]s: they never print.
//! The reference with every key and default is `docs/configuration.md`; `compose/pipeline.example.toml` is a
//! working example.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

use crate::change::TableRef;
use crate::topics::{TopicError, Topics};

/// Prefix of environment overrides; nesting is `__`.
pub const ENV_PREFIX: &str = "PGM__";

/// A password or other credential. Debug and Display print `***`.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The only way to the value: grep for `expose` to audit every use.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str("***")
    }
}

/// As libpq's `sslmode`: `disable`, `prefer` (TLS when the server offers it, no verification), `require` (TLS, no
/// verification), `verify-ca` (TLS, the server's certificate chains to `sslrootcert`), `verify-full` (and names the
/// host it was reached at).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    #[default]
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// A connection to PostgreSQL could not be made: its TLS setup (a setting to fix) or the server or network.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("TLS to {target}: {problem}")]
    Tls { target: String, problem: String },
    #[error("{}", describe_pg_error(.0))]
    Pg(#[from] tokio_postgres::Error),
}

impl ConnectError {
    /// Whether trying again later can help: the server is down, starting, restarting or out of connections. Not a
    /// TLS setup problem, a refused login (class 28), a missing database (3D000) or a missing password.
    pub fn is_transient(&self) -> bool {
        match self {
            ConnectError::Tls { .. } => false,
            ConnectError::Pg(error) => match error.as_db_error() {
                Some(db) => !["28", "3D"].iter().any(|class| db.code().code().starts_with(class)),
                None => !self.password_missing(),
            },
        }
    }

    /// The server asked for a password and none was configured (tokio-postgres says so only in its error's cause).
    pub fn password_missing(&self) -> bool {
        matches!(self, ConnectError::Pg(error) if error.as_db_error().is_none()
            && describe_pg_error(error).contains("password missing"))
    }
}

/// A tokio-postgres error with what its Display leaves out (`db error` alone): the server's code and message, or
/// the I/O or TLS cause. Never the DETAIL line (it can quote row values).
pub fn describe_pg_error(error: &tokio_postgres::Error) -> String {
    if let Some(db) = error.as_db_error() {
        return format!("{} {}: {}", db.severity(), db.code().code(), db.message());
    }
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    if text.contains("password missing") {
        text.push_str(
            "; the server asks for a password: set PGM__SOURCE__PASSWORD (DB1) or PGM__TARGET__PASSWORD (DB2), or \
             source.password / target.password",
        );
    }
    text
}

/// Where a PostgreSQL database is and how to log in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PgConfig {
    pub host: String,
    #[serde(default = "default_pg_port")]
    pub port: u16,
    pub user: String,
    #[serde(default)]
    pub password: Secret,
    pub dbname: String,
    #[serde(default)]
    pub sslmode: SslMode,
    /// CA certificate(s) (PEM) the server's certificate must chain to; needed by verify-ca and verify-full.
    #[serde(default)]
    pub sslrootcert: Option<PathBuf>,
    /// Client certificate (PEM) and its key, when the server asks for one (`clientcert=verify-full` in pg_hba).
    #[serde(default)]
    pub sslcert: Option<PathBuf>,
    #[serde(default)]
    pub sslkey: Option<PathBuf>,
}

fn default_pg_port() -> u16 {
    5432
}

impl PgConfig {
    /// An ordinary (non-replication) connection configuration.
    pub fn to_tokio_postgres(&self, application_name: &str) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        config
            .host(&self.host)
            .port(self.port)
            .user(&self.user)
            .dbname(&self.dbname)
            .application_name(application_name)
            .ssl_mode(match self.sslmode {
                SslMode::Disable => tokio_postgres::config::SslMode::Disable,
                SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
                // Verification is the connector's part (see `tls`).
                SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => tokio_postgres::config::SslMode::Require,
            });
        if !self.password.is_empty() {
            config.password(self.password.expose());
        }
        config
    }

    /// The TLS client for this database, `None` with `sslmode = disable`: certificate checks as `sslmode` says, a
    /// client certificate when one is configured. Every connection (ordinary and replication) is made with it.
    pub fn tls(&self) -> Result<Option<openssl::ssl::SslConnector>, ConnectError> {
        use openssl::ssl::{SslConnector, SslFiletype, SslMethod, SslVerifyMode};
        if self.sslmode == SslMode::Disable {
            return Ok(None);
        }
        let problem = |problem: String| ConnectError::Tls { target: self.describe(), problem };
        let mut builder = SslConnector::builder(SslMethod::tls_client()).map_err(|e| problem(e.to_string()))?;
        match (self.sslmode, &self.sslrootcert) {
            (SslMode::VerifyCa | SslMode::VerifyFull, None) => {
                return Err(problem(format!(
                    "sslmode = {} needs sslrootcert (the CA certificate that signed the server's)",
                    self.sslmode.as_str()
                )))
            }
            (SslMode::VerifyCa | SslMode::VerifyFull, Some(ca)) => {
                builder.set_ca_file(ca).map_err(|e| problem(format!("sslrootcert {}: {e}", ca.display())))?;
                builder.set_verify(SslVerifyMode::PEER);
            }
            // prefer and require encrypt without checking who answers, as libpq does.
            _ => builder.set_verify(SslVerifyMode::NONE),
        }
        match (&self.sslcert, &self.sslkey) {
            (Some(cert), Some(key)) => {
                builder
                    .set_certificate_chain_file(cert)
                    .map_err(|e| problem(format!("sslcert {}: {e}", cert.display())))?;
                builder
                    .set_private_key_file(key, SslFiletype::PEM)
                    .map_err(|e| problem(format!("sslkey {}: {e}", key.display())))?;
                builder.check_private_key().map_err(|e| problem(format!("sslkey does not match sslcert: {e}")))?;
            }
            (None, None) => {}
            _ => return Err(problem("sslcert and sslkey go together: set both or neither".into())),
        }
        Ok(Some(builder.build()))
    }

    /// An ordinary connection, its connection task spawned on the current runtime (it ends with the client). The one
    /// connect path for ordinary connections: TLS as configured.
    pub async fn connect(&self, application_name: &str) -> Result<tokio_postgres::Client, ConnectError> {
        let config = self.to_tokio_postgres(application_name);
        match self.tls()? {
            None => {
                let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
                tokio::spawn(connection);
                Ok(client)
            }
            Some(connector) => {
                let mut tls = postgres_openssl::MakeTlsConnector::new(connector);
                if self.sslmode != SslMode::VerifyFull {
                    tls.set_callback(|connect, _| {
                        connect.set_verify_hostname(false);
                        Ok(())
                    });
                }
                let (client, connection) = config.connect(tls).await?;
                tokio::spawn(connection);
                Ok(client)
            }
        }
    }

    /// `host:port/dbname as user`, for logs and errors (never the password).
    pub fn describe(&self) -> String {
        format!("{}:{}/{} as {}", self.host, self.port, self.dbname, self.user)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// `host:port[,host:port…]` (librdkafka's `bootstrap.servers`).
    pub brokers: String,
    /// How the services talk to the brokers: `plaintext` (default), `ssl`, `sasl_plaintext` or `sasl_ssl`.
    #[serde(default)]
    pub security_protocol: SecurityProtocol,
    /// PEM file of the CA that signed the brokers' certificates (TLS). Without it, the system's trust store. The
    /// broker's host name is always verified against its certificate.
    #[serde(default)]
    pub ssl_ca_location: Option<PathBuf>,
    /// Client certificate and key (PEM), for brokers that authenticate clients by TLS (mutual TLS).
    #[serde(default)]
    pub ssl_certificate_location: Option<PathBuf>,
    #[serde(default)]
    pub ssl_key_location: Option<PathBuf>,
    /// `SCRAM-SHA-512` (default with SASL), `SCRAM-SHA-256` or `PLAIN`.
    #[serde(default = "default_sasl_mechanism")]
    pub sasl_mechanism: String,
    #[serde(default)]
    pub sasl_username: Option<String>,
    /// Best from the environment: `PGM__KAFKA__SASL_PASSWORD`. Never printed.
    #[serde(default)]
    pub sasl_password: Secret,
    /// Passed to librdkafka as is, over everything above. Values whose key contains `password` or `secret` are never
    /// printed.
    #[serde(default)]
    pub librdkafka: BTreeMap<String, String>,
}

fn default_sasl_mechanism() -> String {
    "SCRAM-SHA-512".to_owned()
}

impl KafkaConfig {
    /// Plaintext brokers, every other setting at its default.
    pub fn new(brokers: impl Into<String>) -> Self {
        KafkaConfig { brokers: brokers.into(), sasl_mechanism: default_sasl_mechanism(), ..Default::default() }
    }
}

/// librdkafka's `security.protocol`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecurityProtocol {
    #[default]
    Plaintext,
    Ssl,
    SaslPlaintext,
    SaslSsl,
}

impl SecurityProtocol {
    pub fn as_librdkafka(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "plaintext",
            SecurityProtocol::Ssl => "ssl",
            SecurityProtocol::SaslPlaintext => "sasl_plaintext",
            SecurityProtocol::SaslSsl => "sasl_ssl",
        }
    }

    pub fn tls(self) -> bool {
        matches!(self, SecurityProtocol::Ssl | SecurityProtocol::SaslSsl)
    }

    pub fn sasl(self) -> bool {
        matches!(self, SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicsConfig {
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// Partitions of every raw and out topic. The txn topic always has one.
    #[serde(default = "default_partitions")]
    pub partitions: i32,
    #[serde(default = "default_replication")]
    pub replication_factor: i32,
    /// `retention.ms` of the topics pg-migrator creates: -1 keeps every record until the topics are deleted (replay
    /// from offsets needs them for the whole migration). An existing topic that keeps records for less is refused.
    #[serde(default = "default_retention_ms")]
    pub retention_ms: i64,
    /// `max.message.bytes` of the topics pg-migrator creates, and the largest record the pipeline writes: a change
    /// larger than this travels as several parts (docs/records.md). Kafka's default is 1048588.
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: i32,
    /// `min.insync.replicas` of the topics pg-migrator creates (producers use acks=all): at most the replication
    /// factor; 2 with a replication factor of 3 is the usual production choice.
    #[serde(default = "default_min_insync")]
    pub min_insync_replicas: i32,
}

fn default_retention_ms() -> i64 {
    -1
}
fn default_max_message_bytes() -> i32 {
    1_048_588
}
fn default_min_insync() -> i32 {
    1
}
fn default_prefix() -> String {
    "pgm".to_owned()
}
fn default_partitions() -> i32 {
    4
}
fn default_replication() -> i32 {
    1
}

impl Default for TopicsConfig {
    fn default() -> Self {
        TopicsConfig {
            prefix: default_prefix(),
            partitions: default_partitions(),
            replication_factor: default_replication(),
            retention_ms: default_retention_ms(),
            max_message_bytes: default_max_message_bytes(),
            min_insync_replicas: default_min_insync(),
        }
    }
}

/// Which source tables the pipeline carries, as `schema.table` (identifiers exactly as in the catalog, unquoted).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TablesConfig {
    #[serde(default)]
    pub include: Vec<String>,
}

impl TablesConfig {
    /// The included tables. A name is split at its first `.` (schemas with a dot are not supported here).
    pub fn tables(&self) -> Result<Vec<TableRef>, ConfigError> {
        self.include
            .iter()
            .map(|name| match name.split_once('.') {
                Some((schema, table)) if !schema.is_empty() && !table.is_empty() => Ok(TableRef::new(schema, table)),
                _ => Err(ConfigError::Invalid {
                    origin: "configuration".into(),
                    key: "tables.include".into(),
                    problem: format!("{name:?} is not schema.table; write it like \"public.orders\""),
                }),
            })
            .collect()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptureConfig {
    #[serde(default = "default_slot")]
    pub slot: String,
    /// Prefixes of logical decoding messages to carry (cutover markers use `pgm`).
    #[serde(default = "default_message_prefixes")]
    pub message_prefixes: Vec<String>,
    #[serde(default = "default_heartbeat_ms")]
    pub heartbeat_interval_ms: u64,
    #[serde(default = "default_capture_metrics")]
    pub metrics_addr: String,
    /// The logical decoding plugin: `wal2json` (the default) or `pgoutput` (built in; carries NaN and ±Infinity).
    #[serde(default)]
    pub decoder: Decoder,
    /// With `pgoutput`: the publication that selects the tables (capture creates it when missing). Default: the
    /// slot's name.
    #[serde(default)]
    pub publication: Option<String>,
}

/// Which output plugin decodes DB1's WAL. Both give the same change model, keys and records.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decoder {
    /// wal2json format-version 2 (the extension must be installed). Sends NaN and ±Infinity as null.
    #[default]
    Wal2json,
    /// PostgreSQL's built-in logical replication plugin, protocol version 1, text values: every value exact.
    Pgoutput,
}

impl Decoder {
    /// The plugin name for `CREATE_REPLICATION_SLOT` and `pg_create_logical_replication_slot`.
    pub fn plugin(self) -> &'static str {
        match self {
            Decoder::Wal2json => "wal2json",
            Decoder::Pgoutput => "pgoutput",
        }
    }
}

fn default_slot() -> String {
    "pgm".to_owned()
}
fn default_message_prefixes() -> Vec<String> {
    vec!["pgm".to_owned()]
}
fn default_heartbeat_ms() -> u64 {
    1000
}
fn default_capture_metrics() -> String {
    "127.0.0.1:9101".to_owned()
}

impl Default for CaptureConfig {
    fn default() -> Self {
        CaptureConfig {
            slot: default_slot(),
            message_prefixes: default_message_prefixes(),
            heartbeat_interval_ms: default_heartbeat_ms(),
            metrics_addr: default_capture_metrics(),
            decoder: Decoder::default(),
            publication: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransformConfig {
    /// The rules file (docs/rules.md), relative to the working directory. Without one, every table passes unchanged.
    #[serde(default)]
    pub rules: Option<std::path::PathBuf>,
    #[serde(default = "default_transform_group")]
    pub group_id: String,
    #[serde(default = "default_transform_metrics")]
    pub metrics_addr: String,
    /// This worker's stable name in the group (Kafka's static membership, `group.instance.id`): a worker restarted
    /// under the same name within the session timeout gets its partitions back and nobody else's move. Give each
    /// worker its own (`PGM__TRANSFORM__INSTANCE_ID=transform-1`, …); two running workers with one name fence each
    /// other. Without it the worker is a dynamic member: every start and stop reassigns partitions.
    #[serde(default)]
    pub instance_id: Option<String>,
    /// Tables the rules pass unchanged (no `[[table]]` rule, `unmatched = "pass"`) skip the rewrite: instead of one
    /// out record per change, transform writes a declaration into the out partition ("raw records from position A
    /// through B pass unchanged"), and apply takes those raw records as captured. Apply follows the declarations,
    /// never its own configuration, so a rules change moves a table between the two paths at an exact position.
    /// `false`: transform writes an out record for every change of every table.
    #[serde(default = "yes")]
    pub passthrough: bool,
}

fn yes() -> bool {
    true
}

fn default_transform_group() -> String {
    "pgm-transform".to_owned()
}
fn default_transform_metrics() -> String {
    "127.0.0.1:9102".to_owned()
}

impl Default for TransformConfig {
    fn default() -> Self {
        TransformConfig {
            rules: None,
            group_id: default_transform_group(),
            metrics_addr: default_transform_metrics(),
            instance_id: None,
            passthrough: true,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApplyConfig {
    /// Consumer group under which apply commits its offsets (for Kafka lag tools; apply seeks from DB2's progress).
    #[serde(default = "default_apply_group")]
    pub group_id: String,
    #[serde(default = "default_apply_metrics")]
    pub metrics_addr: String,
    /// Rows per SQL statement (one multi-row INSERT/UPDATE/DELETE).
    #[serde(default = "default_batch_rows")]
    pub batch_rows: usize,
    /// A DB2 transaction takes consecutive source transactions until it holds this many rows…
    #[serde(default = "default_group_rows")]
    pub group_rows: usize,
    /// …or this many bytes of row values…
    #[serde(default = "default_group_bytes")]
    pub group_bytes: usize,
    /// …or has been open this long (milliseconds). A single larger source transaction is never split. It bounds the
    /// lag a busy stream adds (pgbench at 5,000 changes/s: lag p50 2.1 s with 500 ms, 0.87 s with 50 ms).
    #[serde(default = "default_group_ms")]
    pub group_ms: u64,
    /// Replication origin that marks apply's writes in DB2's WAL; default `pgm_<topics.prefix>`.
    #[serde(default)]
    pub origin: Option<String>,
    /// An update or delete whose row is not in DB2: `error` (the default: stop, naming the change — DB2 has
    /// diverged from DB1, and going on would hide it) or `warn` (log, count, go on — as PostgreSQL's own apply does).
    #[serde(default)]
    pub on_missing_row: OnMissingRow,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnMissingRow {
    Warn,
    #[default]
    Error,
}

impl OnMissingRow {
    pub fn as_str(self) -> &'static str {
        match self {
            OnMissingRow::Warn => "warn",
            OnMissingRow::Error => "error",
        }
    }
}

fn default_apply_group() -> String {
    "pgm-apply".to_owned()
}
fn default_apply_metrics() -> String {
    "127.0.0.1:9103".to_owned()
}
fn default_batch_rows() -> usize {
    1000
}
fn default_group_rows() -> usize {
    10_000
}
fn default_group_bytes() -> usize {
    16 << 20
}
fn default_group_ms() -> u64 {
    100
}

impl Default for ApplyConfig {
    fn default() -> Self {
        ApplyConfig {
            group_id: default_apply_group(),
            metrics_addr: default_apply_metrics(),
            batch_rows: default_batch_rows(),
            group_rows: default_group_rows(),
            group_bytes: default_group_bytes(),
            group_ms: default_group_ms(),
            origin: None,
            on_missing_row: OnMissingRow::Error,
        }
    }
}

/// The whole pipeline's configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// DB1, the database being migrated away from.
    pub source: PgConfig,
    /// DB2, the database being migrated to.
    pub target: PgConfig,
    pub kafka: KafkaConfig,
    #[serde(default)]
    pub topics: TopicsConfig,
    #[serde(default)]
    pub tables: TablesConfig,
    #[serde(default)]
    pub capture: CaptureConfig,
    #[serde(default)]
    pub transform: TransformConfig,
    #[serde(default)]
    pub apply: ApplyConfig,
    #[serde(default)]
    pub bootstrap: BootstrapConfig,
    #[serde(default)]
    pub cutover: CutoverConfig,
    #[serde(default)]
    pub fallback: FallbackConfig,
    /// Set by [`PipelineConfig::reversed`]: this is the fall-back stream (DB2 → DB1), not the migration.
    #[serde(skip)]
    pub reverse: bool,
    /// In the reversed configuration: the forward apply's replication origin (its writes to DB2 are not carried back).
    #[serde(skip)]
    forward_origin: Option<String>,
}

/// Fall-back after cutover (docs/lifecycle.md): with `tables` set, cutover creates a logical slot on DB2 before DB2
/// takes its first write, and the same three services run with `--reverse` carry DB2's writes back into DB1 through
/// the reverse rules, until `pgm-apply rollback` moves the application back (or the team drops the slot).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FallbackConfig {
    /// DB2's tables the reverse stream carries, as `schema.table`. Empty (the default): no fall-back.
    #[serde(default)]
    pub tables: Vec<String>,
    /// The reverse rules file (DB2's schema → DB1's; `pgm-transform scaffold --reverse` drafts it). Without one,
    /// every table passes unchanged.
    #[serde(default)]
    pub rules: Option<PathBuf>,
    /// Topic prefix, pipeline name and origin of the reverse stream. Default: `<topics.prefix>_back`.
    #[serde(default)]
    pub topic_prefix: Option<String>,
    /// The reverse stream's logical slot on DB2. Default: `<capture.slot>_back`.
    #[serde(default)]
    pub slot: Option<String>,
}

impl FallbackConfig {
    pub fn enabled(&self) -> bool {
        !self.tables.is_empty()
    }
}

/// `pgm-capture bootstrap`: the snapshot copy of DB1 into the raw topics.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootstrapConfig {
    /// Table chunks copied at the same time (one DB1 connection each, all in the slot's exported snapshot).
    #[serde(default = "default_parallel")]
    pub parallel: usize,
    /// A table larger than this many heap pages (8 kB each) is copied in ctid ranges of this size.
    #[serde(default = "default_chunk_pages")]
    pub chunk_pages: u32,
}

fn default_parallel() -> usize {
    4
}
fn default_chunk_pages() -> u32 {
    16_384
}

impl Default for BootstrapConfig {
    fn default() -> Self {
        BootstrapConfig { parallel: default_parallel(), chunk_pages: default_chunk_pages() }
    }
}

/// How `pgm-apply cutover` stops writes on DB1.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fence {
    /// `ALTER DATABASE … SET default_transaction_read_only = on`, then end every other client session of DB1's
    /// database (a session keeps the setting it started with; a pool reconnects read-only).
    #[default]
    ReadOnly,
    /// The operator has stopped the writers already: cutover only writes its marker and waits for it.
    None,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CutoverConfig {
    #[serde(default)]
    pub fence: Fence,
    /// Give up (and lift the fence) when apply has not applied the marker within this many milliseconds.
    #[serde(default = "default_cutover_timeout")]
    pub timeout_ms: u64,
    /// Added to every sequence value copied to DB2.
    #[serde(default)]
    pub sequence_margin: i64,
    /// Refuse to fence while apply is further behind DB1 than this (milliseconds): the fence would last at least
    /// that long.
    #[serde(default = "default_cutover_max_lag")]
    pub max_lag_ms: u64,
}

fn default_cutover_max_lag() -> u64 {
    10_000
}

fn default_cutover_timeout() -> u64 {
    30_000
}

impl Default for CutoverConfig {
    fn default() -> Self {
        CutoverConfig {
            fence: Fence::default(),
            timeout_ms: default_cutover_timeout(),
            sequence_margin: 0,
            max_lag_ms: default_cutover_max_lag(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration file {path} cannot be read: {source}")]
    Unreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Parse(String),
    #[error("{origin}: key `{key}`: {problem}")]
    Invalid { origin: String, key: String, problem: String },
}

impl PipelineConfig {
    /// Loads `path`, applies `PGM__…` overrides from the process environment, validates.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::load_with_env(path, Env::prefixed(ENV_PREFIX).split("__"))
    }

    fn load_with_env(path: &Path, env: Env) -> Result<Self, ConfigError> {
        // figment silently treats a missing file as empty: check first, so the operator hears about the path.
        std::fs::metadata(path).map_err(|source| ConfigError::Unreadable { path: path.to_owned(), source })?;
        let config: PipelineConfig = Figment::new()
            .merge(Toml::file_exact(path))
            .merge(env)
            .extract()
            .map_err(|err| ConfigError::Parse(describe_figment_error(err)))?;
        config.validate(&path.display().to_string())?;
        Ok(config)
    }

    /// Parses a TOML document without file or environment (tests, embedded configs).
    pub fn from_toml_str(text: &str) -> Result<Self, ConfigError> {
        let config: PipelineConfig = Figment::new()
            .merge(Toml::string(text))
            .extract()
            .map_err(|err| ConfigError::Parse(describe_figment_error(err)))?;
        config.validate("configuration")?;
        Ok(config)
    }

    fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        let invalid = |key: &str, problem: String| ConfigError::Invalid {
            origin: origin.to_owned(),
            key: key.to_owned(),
            problem,
        };
        Topics::new(&self.topics.prefix).map_err(|e: TopicError| invalid("topics.prefix", e.to_string()))?;
        // TLS files are read now, so a wrong path fails at start and not at the first reconnect.
        for (section, pg) in [("source", &self.source), ("target", &self.target)] {
            if let Err(ConnectError::Tls { problem, .. }) = pg.tls() {
                return Err(invalid(
                    &format!("{section}.sslmode / {section}.sslrootcert / {section}.sslcert"),
                    problem,
                ));
            }
        }
        if !(1..=10_000).contains(&self.topics.partitions) {
            return Err(invalid("topics.partitions", format!("{} is not between 1 and 10000", self.topics.partitions)));
        }
        if self.topics.replication_factor < 1 {
            return Err(invalid("topics.replication_factor", "must be at least 1".into()));
        }
        if !(1..=self.topics.replication_factor).contains(&self.topics.min_insync_replicas) {
            return Err(invalid(
                "topics.min_insync_replicas",
                format!(
                    "{} is not between 1 and topics.replication_factor ({}): with acks=all no write could succeed",
                    self.topics.min_insync_replicas, self.topics.replication_factor
                ),
            ));
        }
        if self.topics.retention_ms < -1 || (0..3_600_000).contains(&self.topics.retention_ms) {
            return Err(invalid(
                "topics.retention_ms",
                format!(
                    "{} would delete records within the hour; use -1 (keep until the topics are deleted, the \
                     default) or at least the migration's whole duration",
                    self.topics.retention_ms
                ),
            ));
        }
        if self.topics.max_message_bytes < 65_536 {
            return Err(invalid(
                "topics.max_message_bytes",
                format!("{} is below 65536; Kafka's default is 1048588", self.topics.max_message_bytes),
            ));
        }
        if self.kafka.brokers.trim().is_empty() {
            return Err(invalid("kafka.brokers", "is empty; set it to host:port of at least one broker".into()));
        }
        let kafka = &self.kafka;
        if kafka.security_protocol.sasl() {
            if kafka.sasl_username.as_deref().is_none_or(str::is_empty) {
                return Err(invalid("kafka.sasl_username", "is required with a sasl_* security_protocol".into()));
            }
            if kafka.sasl_password.is_empty() {
                return Err(invalid(
                    "kafka.sasl_password",
                    "is required with a sasl_* security_protocol; set it in the file or as PGM__KAFKA__SASL_PASSWORD"
                        .into(),
                ));
            }
            if !["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"].contains(&kafka.sasl_mechanism.as_str()) {
                return Err(invalid(
                    "kafka.sasl_mechanism",
                    format!("{:?} is not SCRAM-SHA-512, SCRAM-SHA-256 or PLAIN", kafka.sasl_mechanism),
                ));
            }
        }
        for (key, path) in [
            ("kafka.ssl_ca_location", &kafka.ssl_ca_location),
            ("kafka.ssl_certificate_location", &kafka.ssl_certificate_location),
            ("kafka.ssl_key_location", &kafka.ssl_key_location),
        ] {
            if let Some(path) = path {
                if !kafka.security_protocol.tls() {
                    return Err(invalid(key, "is set but kafka.security_protocol is not ssl or sasl_ssl".into()));
                }
                std::fs::File::open(path)
                    .map_err(|e| invalid(key, format!("{} cannot be read: {e}", path.display())))?;
            }
        }
        let slot = &self.capture.slot;
        if slot.is_empty()
            || slot.len() > 63
            || !slot.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(invalid(
                "capture.slot",
                format!(
                    "{slot:?} is not a valid replication slot name (lower-case letters, digits and '_', at most 63)"
                ),
            ));
        }
        for (key, addr) in [
            ("capture.metrics_addr", &self.capture.metrics_addr),
            ("transform.metrics_addr", &self.transform.metrics_addr),
            ("apply.metrics_addr", &self.apply.metrics_addr),
        ] {
            addr.parse::<std::net::SocketAddr>()
                .map_err(|_| invalid(key, format!("{addr:?} is not ip:port, like 127.0.0.1:9101")))?;
        }
        for (key, value) in [
            ("apply.batch_rows", self.apply.batch_rows),
            ("apply.group_rows", self.apply.group_rows),
            ("apply.group_bytes", self.apply.group_bytes),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be at least 1".into()));
            }
        }
        if self.bootstrap.parallel == 0 || self.bootstrap.chunk_pages == 0 {
            return Err(invalid("bootstrap.parallel / bootstrap.chunk_pages", "must be at least 1".into()));
        }
        if self.cutover.sequence_margin < 0 {
            return Err(invalid("cutover.sequence_margin", "must not be negative".into()));
        }
        if let Some(origin) = &self.apply.origin {
            if origin.is_empty() || origin.len() > 512 {
                return Err(invalid("apply.origin", "must be 1 to 512 bytes".into()));
            }
        }
        self.tables.tables().map_err(|e| match e {
            ConfigError::Invalid { key, problem, .. } => invalid(&key, problem),
            other => other,
        })?;
        Ok(())
    }

    pub fn topics(&self) -> Topics {
        Topics::new(&self.topics.prefix).expect("validated at load")
    }

    pub fn tables(&self) -> Vec<TableRef> {
        self.tables.tables().expect("validated at load")
    }

    /// pgoutput's publication name.
    pub fn publication(&self) -> String {
        self.capture.publication.clone().unwrap_or_else(|| self.capture.slot.clone())
    }

    /// The replication origin apply tags its DB2 transactions with.
    pub fn apply_origin(&self) -> String {
        self.apply.origin.clone().unwrap_or_else(|| format!("pgm_{}", self.topics.prefix))
    }

    /// How the operator calls this stream's source and target: DB1 and DB2, or DB2 and DB1 for the fall-back stream.
    pub fn names(&self) -> (&'static str, &'static str) {
        if self.reverse {
            ("DB2", "DB1")
        } else {
            ("DB1", "DB2")
        }
    }

    /// The fall-back stream's configuration: DB2 is its source and DB1 its target; the `[fallback]` section gives
    /// its tables, rules, topic prefix and slot; consumer groups get `-back`, metrics ports move up by 10. The
    /// replication origins of the two directions are each other's: neither stream carries what the other applied.
    pub fn reversed(&self) -> Result<PipelineConfig, ConfigError> {
        if self.reverse {
            return Ok(self.clone());
        }
        if !self.fallback.enabled() {
            return Err(ConfigError::Invalid {
                origin: "configuration".into(),
                key: "fallback.tables".into(),
                problem: "is empty: list DB2's tables the fall-back stream carries back to DB1 (docs/lifecycle.md, \
                          \"Falling back\")"
                    .into(),
            });
        }
        let fallback = &self.fallback;
        let shift = |addr: &str| match addr.parse::<std::net::SocketAddr>() {
            Ok(mut a) if a.port() != 0 => {
                a.set_port(a.port().saturating_add(10));
                a.to_string()
            }
            _ => addr.to_owned(),
        };
        let mut reversed = self.clone();
        reversed.reverse = true;
        std::mem::swap(&mut reversed.source, &mut reversed.target);
        reversed.topics.prefix =
            fallback.topic_prefix.clone().unwrap_or_else(|| format!("{}_back", self.topics.prefix));
        reversed.tables = TablesConfig { include: fallback.tables.clone() };
        reversed.capture.slot = fallback.slot.clone().unwrap_or_else(|| format!("{}_back", self.capture.slot));
        reversed.capture.publication = None;
        reversed.capture.metrics_addr = shift(&self.capture.metrics_addr);
        reversed.transform.rules = fallback.rules.clone();
        reversed.transform.group_id = format!("{}-back", self.transform.group_id);
        reversed.transform.instance_id = self.transform.instance_id.as_ref().map(|id| format!("{id}-back"));
        reversed.transform.metrics_addr = shift(&self.transform.metrics_addr);
        reversed.apply.group_id = format!("{}-back", self.apply.group_id);
        reversed.apply.metrics_addr = shift(&self.apply.metrics_addr);
        reversed.apply.origin = None;
        reversed.forward_origin = Some(self.apply_origin());
        reversed.validate("configuration, [fallback] section")?;
        Ok(reversed)
    }

    /// Replication origins whose transactions capture leaves out: the other direction's apply, when fall-back is
    /// configured (so the two streams never carry each other's writes around).
    pub fn skipped_origins(&self) -> Vec<String> {
        if self.reverse {
            return self.forward_origin.iter().cloned().collect();
        }
        if !self.fallback.enabled() {
            return Vec::new();
        }
        self.reversed().map(|r| vec![r.apply_origin()]).unwrap_or_default()
    }
}

/// figment's errors already name the key and the file ("invalid type: found string "x", expected u16 for key
/// `source.port` in pipeline.toml TOML file"); drop the found value when it could be a secret or row data.
fn describe_figment_error(err: figment::Error) -> String {
    err.into_iter()
        .map(|e| {
            let key = if e.path.is_empty() { "(top level)".to_owned() } else { e.path.join(".") };
            let origin = e
                .metadata
                .as_ref()
                .map(|m| match &m.source {
                    Some(source) => format!("{} {source}", m.name),
                    None => m.name.to_string(),
                })
                .unwrap_or_else(|| "configuration".to_owned());
            let sensitive = key.contains("password") || key.contains("secret");
            let problem = match (&e.kind, sensitive) {
                (figment::error::Kind::InvalidType(_, expected), true) => format!("invalid type, expected {expected}"),
                (kind, _) => kind.to_string(),
            };
            format!("{origin}: key `{key}`: {problem}")
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[source]
host = "127.0.0.1"
user = "app"
password = "hunter2"
dbname = "shop"

[target]
host = "127.0.0.1"
port = 5433
user = "app"
dbname = "shop2"

[kafka]
brokers = "127.0.0.1:9092"
[kafka.librdkafka]
"security.protocol" = "plaintext"

[tables]
include = ["public.orders", "Sales Dept.Order Items"]
"#;

    fn write(text: &str) -> tempfile::NamedTempFile {
        let file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
        std::fs::write(file.path(), text).unwrap();
        file
    }

    fn no_env() -> Env {
        Env::prefixed("PGM_TEST_NOTHING_SET_HERE__").split("__")
    }

    #[test]
    fn minimal_file_gets_defaults() {
        let file = write(MINIMAL);
        let config = PipelineConfig::load_with_env(file.path(), no_env()).unwrap();
        assert_eq!(config.source.port, 5432);
        assert_eq!(config.target.port, 5433);
        assert_eq!(config.topics, TopicsConfig::default());
        assert_eq!(config.capture.slot, "pgm");
        assert_eq!(config.kafka.librdkafka["security.protocol"], "plaintext");
        assert_eq!(config.tables(), [TableRef::new("public", "orders"), TableRef::new("Sales Dept", "Order Items")]);
    }

    #[test]
    fn passwords_never_print() {
        let file = write(MINIMAL);
        let config = PipelineConfig::load_with_env(file.path(), no_env()).unwrap();
        assert_eq!(config.source.password.expose(), "hunter2");
        assert!(!format!("{config:?}").contains("hunter2"));
        assert!(!serde_json::to_string(&config).unwrap().contains("hunter2"));
        assert!(!config.source.describe().contains("hunter2"));
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail API fixes the closure's error type
    fn environment_overrides_the_file() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("p.toml", MINIMAL)?;
            jail.set_env("PGM__KAFKA__BROKERS", "10.0.0.1:9093");
            jail.set_env("PGM__SOURCE__PASSWORD", "from-env");
            jail.set_env("PGM__TOPICS__PARTITIONS", "8");
            let config = PipelineConfig::load(Path::new("p.toml")).map_err(|e| e.to_string())?;
            assert_eq!(config.kafka.brokers, "10.0.0.1:9093");
            assert_eq!(config.source.password.expose(), "from-env");
            assert_eq!(config.topics.partitions, 8);
            Ok(())
        });
    }

    #[test]
    fn unknown_key_is_named_with_file() {
        let file = write(&MINIMAL.replace("[kafka]", "[kafka]\nbrokerz = \"x\""));
        let err = PipelineConfig::load_with_env(file.path(), no_env()).unwrap_err().to_string();
        assert!(err.contains("brokerz"), "{err}");
        assert!(err.contains(&file.path().display().to_string()), "{err}");
    }

    #[test]
    fn wrong_type_names_key_and_expectation() {
        let file = write(&MINIMAL.replace("port = 5433", "port = \"high\""));
        let err = PipelineConfig::load_with_env(file.path(), no_env()).unwrap_err().to_string();
        assert!(err.contains("target.port") && err.contains("u16"), "{err}");
    }

    #[test]
    fn wrongly_typed_password_is_not_echoed() {
        let file = write(&MINIMAL.replace("password = \"hunter2\"", "password = [\"hunter2\"]"));
        let err = PipelineConfig::load_with_env(file.path(), no_env()).unwrap_err().to_string();
        assert!(err.contains("source.password") && !err.contains("hunter2"), "{err}");
    }

    #[test]
    fn missing_section_and_missing_file() {
        let file = write(&MINIMAL.replace("[kafka]\nbrokers = \"127.0.0.1:9092\"", "[kafka]"));
        let err = PipelineConfig::load_with_env(file.path(), no_env()).unwrap_err().to_string();
        assert!(err.contains("brokers"), "{err}");
        let err = PipelineConfig::load_with_env(Path::new("/nonexistent/pgm.toml"), no_env()).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/pgm.toml"), "{err}");
    }

    #[test]
    fn semantic_checks_name_the_key() {
        for (from, to, key) in [
            ("[tables]", "[topics]\npartitions = 0\n[tables]", "topics.partitions"),
            ("[tables]", "[topics]\nprefix = \"a b\"\n[tables]", "topics.prefix"),
            ("[tables]", "[capture]\nslot = \"Bad-Slot\"\n[tables]", "capture.slot"),
            ("\"public.orders\"", "\"orders\"", "tables.include"),
        ] {
            let err = PipelineConfig::from_toml_str(&MINIMAL.replace(from, to)).unwrap_err().to_string();
            assert!(err.contains(key), "{key}: {err}");
        }
    }
}
