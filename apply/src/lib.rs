//! pgm-apply: writes the transformed stream into DB2 in source commit order, exactly once in effect.
//!
//! ```text
//!   <prefix>.txn (begin, commit + counts) ──┐
//!                                           ├─▶ merge by position ──▶ batched SQL ──▶ DB2 (+ pgm.apply_progress, same txn)
//!   <prefix>.out.<s>.<t> [all partitions] ──┘                                              │
//!                                              consumer offsets committed after DB2 commit ◀┘
//! ```
//!
//! `reader` reads Kafka (txn topic, out partitions merged per transaction), `writer` turns target operations into
//! batched statements, `catalog` knows DB2's column types, `progress` owns the `pgm` schema, `service` runs the
//! loop, `metrics` names what is measured. Operator commands (pause, resume, status, reset) are below.

pub mod catalog;
pub mod chunks;
pub mod cutover;
pub mod metrics;
pub mod progress;
pub mod reader;
pub mod service;
pub mod switch;
pub mod writer;

use clap::{Parser, Subcommand};
use pgm_common::change::TableRef;
use pgm_common::cli::GlobalArgs;
use pgm_common::config::PipelineConfig;
use pgm_common::{Lsn, Position};

#[derive(Debug, Parser)]
#[command(name = "pgm-apply", version, about = "Applies the transformed change stream to DB2 in source commit order")]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply until stopped (or until --until).
    Run {
        /// Stop once every source transaction committed at or before this LSN is applied (and none after it).
        #[arg(long, env = "PGM_APPLY_UNTIL")]
        until: Option<Lsn>,
    },
    /// Pause durably: the running apply stops at its next transaction boundary, and stays paused across restarts.
    Pause,
    /// Resume a paused apply.
    Resume,
    /// Applied position, its source commit time, lag, paused state, last error.
    Status,
    /// Move the applied position back (or forward) for a deliberate replay; apply must be stopped.
    Reset {
        /// An LSN (`16/B374D848`: transactions committed at or before it count as applied) or a position key.
        #[arg(long, required_unless_present = "drop_origin")]
        to: Option<String>,
        /// Reset even when DB2 already holds changes after that position (they would be applied again).
        #[arg(long)]
        force: bool,
        /// Drop the pipeline's replication origin on DB2 (it holds one of DB2's max_replication_slots states; the
        /// next run makes it again). For a pipeline that is finished or abandoned.
        #[arg(long)]
        drop_origin: bool,
    },
    /// Standby switch: DB2 is a streaming physical standby of DB1. Create capture's slot on DB1, promote DB2 once it
    /// has replayed past the slot's consistent point, and record in DB2 where apply starts. No copy needed.
    Switch {
        /// How long to wait for DB2 to replay up to the slot's consistent point before giving up (unpromoted).
        #[arg(long, default_value_t = 60)]
        replay_timeout_s: u64,
    },
    /// Move the application to DB2: fence writes on DB1, wait until apply has applied a marker written after the
    /// fence, copy sequence values, print the timeline and the write downtime (apply must be running).
    Cutover {
        /// Check everything and print the plan (fence, sessions, sequences) without changing anything.
        #[arg(long)]
        dry_run: bool,
    },
    /// Move the application back to DB1 after a cutover with fall-back ([fallback]): fence writes on DB2, wait until
    /// the fall-back apply has committed a marker on DB1, copy sequence values back (only raising them), lift DB1's
    /// fence, print the timeline and the write downtime. The fall-back services (`--reverse`) must be running.
    Rollback {
        /// Check everything and print the plan without changing anything.
        #[arg(long)]
        dry_run: bool,
    },
}

#[cfg(test)]
const HELP_SUBCOMMANDS: &[&str] = &["run", "pause", "resume", "status", "reset", "switch", "cutover", "rollback"];

/// Why an apply session ended. [`ApplyError::is_transient`] tells whether a new session can help: transient faults
/// (DB2 or the broker away or restarting, a serialization failure) are retried with the services' backoff
/// (`pgm_common::retry`); every other kind stops apply with its message.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// Transient unless DB2 refused the login or the database (`ConnectError::is_transient`).
    #[error("cannot connect to DB2 {target}: {source}")]
    Connect {
        target: String,
        #[source]
        source: pgm_common::config::ConnectError,
    },
    /// DB2 answered with an error, or the connection broke. `code` is the SQLSTATE when the server answered; the
    /// message only, as DETAIL lines may quote row values. Transient for the SQLSTATE classes a new session can get
    /// past ([`is_transient_sql_state`]) and for a lost connection.
    #[error("DB2: {}{message}", code.as_deref().map(|c| format!("{c} ")).unwrap_or_default())]
    Db { code: Option<String>, message: String },
    /// A broker call failed (unreachable, restarting, a rebalance). Transient.
    #[error("Kafka: {what}: {source}")]
    Kafka {
        what: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// The consumer is not in the state apply needs (a partition queue could not be opened, a record bypassed its
    /// queue). Transient: a new session assigns everything again.
    #[error("Kafka: {0}")]
    Consumer(String),
    /// A record apply cannot read (not written by pg-migrator, or another version); it names its topic and offset.
    /// Definite.
    #[error(transparent)]
    Decode(#[from] pgm_common::envelope::EnvelopeError),
    /// The stream is not what it must be (records missing or gone from retention, a topic of another prefix).
    /// Definite: apply must not guess.
    #[error("stream: {0}")]
    Stream(String),
    /// DB2's schema does not fit the stream (a missing table or column). Definite.
    #[error("target: {0}")]
    Target(String),
    /// A precondition apply will not work around (another apply running, missing privileges). Definite.
    #[error("{0}")]
    Refused(String),
    /// DB2 refused a statement of the stream. Definite (after locating it exactly).
    #[error(transparent)]
    Statement(Box<StatementFailure>),
    /// A shutdown came while apply waited for records or a topic: the open DB2 transaction is rolled back and
    /// apply stops cleanly (a restart resumes from DB2's progress).
    #[error("shut down while waiting for the stream")]
    Interrupted,
}

/// DB2 refused a statement, or an update or delete found no row: position(s), table, key columns and the SQL error —
/// never row values.
#[derive(Debug, thiserror::Error)]
#[error("{}", self.describe())]
pub struct StatementFailure {
    pub op: String,
    pub table: TableRef,
    pub key: String,
    /// One position, or the first and last of a batch.
    pub at: String,
    pub sql_error: String,
    /// The statement wrote one change, so `at` is exact.
    pub single: bool,
    /// An update or delete found no row in DB2 (`apply.on_missing_row = "error"`, the default).
    pub missing_row: bool,
}

impl StatementFailure {
    fn describe(&self) -> String {
        let StatementFailure { op, table, key, at, sql_error, .. } = self;
        if self.missing_row {
            return format!(
                "the {op} of {table} (key {key}) at source position {at} found no row in DB2 ({sql_error}): DB2 has \
                 diverged from DB1 (rows changed or deleted on DB2 behind apply's back, or DB2 was not bootstrapped \
                 from DB1). Nothing after the last committed transaction was marked applied. Fix: bootstrap DB2 \
                 again (pgm-apply reset, then pgm-capture bootstrap), or set apply.on_missing_row = \"warn\" to skip \
                 such changes knowingly (counted in pgm_apply_missing_rows_total and by pgm-apply status)"
            );
        }
        format!(
            "DB2 refused the {op} of {table} (key {key}) at source position {at}: {sql_error}. Nothing after the last \
             committed transaction was marked applied; fix DB2 (or the rules) and restart pgm-apply to continue from \
             there"
        )
    }
}

impl ApplyError {
    pub fn db(error: tokio_postgres::Error) -> Self {
        match error.as_db_error() {
            // The message only: DETAIL lines may quote row values.
            Some(db) => ApplyError::Db { code: Some(db.code().code().to_owned()), message: db.message().to_owned() },
            None => ApplyError::Db { code: None, message: error.to_string() },
        }
    }

    /// Connection and broker trouble, and DB2 errors a retry can clear; not data or configuration errors.
    pub fn is_transient(&self) -> bool {
        match self {
            ApplyError::Connect { source, .. } => source.is_transient(),
            ApplyError::Kafka { .. } | ApplyError::Consumer(_) => true,
            ApplyError::Db { code, .. } => code.as_deref().is_none_or(is_transient_sql_state),
            ApplyError::Decode(_)
            | ApplyError::Stream(_)
            | ApplyError::Target(_)
            | ApplyError::Refused(_)
            | ApplyError::Statement(_)
            | ApplyError::Interrupted => false,
        }
    }

    fn kafka(what: impl Into<String>, source: rdkafka::error::KafkaError) -> Self {
        ApplyError::Kafka { what: what.into(), source }
    }
}

/// SQLSTATE classes a new session may get past: connection, resources, operator intervention, serialization.
pub fn is_transient_sql_state(code: &str) -> bool {
    ["08", "40", "53", "57", "58"].iter().any(|class| code.starts_with(class))
}

/// `16/B374D848` (all of that transaction applied) or a position key.
fn parse_position(text: &str) -> anyhow::Result<Position> {
    if let Ok(lsn) = text.parse::<Lsn>() {
        return Ok(Position::new(lsn, Position::COMMIT));
    }
    Position::from_key(text.as_bytes()).map_err(|e| anyhow::anyhow!("--to {text:?}: not an LSN like 16/B374D848 ({e})"))
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    let config = cli.global.start()?;
    // One thread: the reader, the writer and tokio-postgres's connection task pass every change and every DB2
    // round trip between them, which on several threads cost a wake-up across threads each time.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Run { until } => run_service(config, until).await,
            Command::Pause => {
                let client = connect(&config).await?;
                progress::set_paused(&client, &config.topics.prefix, true).await?;
                let running = progress::running_pid(&client, &config.topics.prefix).await?;
                println!(
                    "pipeline {:?} paused{}",
                    config.topics.prefix,
                    if running.is_some() { "; the running apply stops at its next transaction boundary" } else { "" }
                );
                Ok(())
            }
            Command::Resume => {
                let client = connect(&config).await?;
                progress::set_paused(&client, &config.topics.prefix, false).await?;
                println!("pipeline {:?} resumed", config.topics.prefix);
                Ok(())
            }
            Command::Status => status(&config).await,
            Command::Reset { to, force, drop_origin } => reset(&config, to.as_deref(), force, drop_origin).await,
            Command::Cutover { dry_run } => cutover::run(&config, dry_run).await,
            Command::Rollback { dry_run } => {
                if config.reverse {
                    anyhow::bail!("run rollback without --reverse: it reads the [fallback] section itself");
                }
                cutover::rollback(&config, dry_run).await
            }
            Command::Switch { replay_timeout_s } => {
                let done = switch::run(&config, std::time::Duration::from_secs(replay_timeout_s)).await?;
                println!(
                    "standby switch done in {:.1} s: slot {} consistent point {}, DB2 promoted at switch point {}; {} \
                     transaction(s) committed in between are in DB2 already and apply skips them. Start pgm-capture, \
                     pgm-transform and pgm-apply run. If DB2 used a physical slot on DB1, drop it now.",
                    done.elapsed.as_secs_f64(),
                    config.capture.slot,
                    done.consistent_point,
                    done.switch_point,
                    done.skipped
                );
                Ok(())
            }
        }
    });
    // A blocking call still running (librdkafka's metadata request while no broker answers) does not hold the exit.
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    result
}

/// A plain connection for the lifecycle commands (switch, cutover); errors name the command, the database and why.
async fn connect_plain(
    pg: &pgm_common::config::PgConfig,
    command: &str,
    what: &str,
) -> anyhow::Result<tokio_postgres::Client> {
    pg.connect(&format!("pgm-{command}"))
        .await
        .map_err(|e| anyhow::anyhow!("{command}: cannot connect to {what} {}: {e}", pg.describe()))
}

/// A connection to DB2 with the pipeline's `pgm` schema and progress row in place.
pub async fn connect_target(config: &PipelineConfig) -> Result<tokio_postgres::Client, ApplyError> {
    let client = config.target.connect("pgm-apply").await.map_err(|source| {
        if source.password_missing() {
            return ApplyError::Refused(format!(
                "DB2 {} asks for a password and none is configured: set PGM__TARGET__PASSWORD (or \
                     target.password in the file)",
                config.target.describe()
            ));
        }
        ApplyError::Connect { target: config.target.describe(), source }
    })?;
    if config.reverse {
        // The fall-back stream writes into DB1, which cutover left read-only for the application: its own sessions
        // write anyway.
        client
            .batch_execute("SET default_transaction_read_only = off")
            .await
            .map_err(|source| ApplyError::Connect { target: config.target.describe(), source: source.into() })?;
    }
    progress::prepare(&client, &config.topics.prefix).await?;
    Ok(client)
}

async fn connect(config: &PipelineConfig) -> anyhow::Result<tokio_postgres::Client> {
    Ok(connect_target(config).await?)
}

async fn run_service(config: PipelineConfig, until: Option<Lsn>) -> anyhow::Result<()> {
    let shutdown = tokio_util::sync::CancellationToken::new();
    pgm_common::telemetry::shutdown_on_signals(shutdown.clone());
    let metrics = metrics::ApplyMetrics::default();
    let health = pgm_common::telemetry::Health::default();
    let (bound, _server) = pgm_common::telemetry::serve_metrics(
        &config.apply.metrics_addr,
        "apply.metrics_addr",
        metrics.register(),
        health.clone(),
        shutdown.clone(),
    )
    .await?;
    tracing::info!(metrics = %bound, target_db = %config.target.describe(), pipeline = %config.topics.prefix, "pgm-apply starting");
    pgm_common::kafka::refuse_wrong_settings(&config.kafka, &shutdown).await?;
    let result = service::run(&config, until, metrics, &health, shutdown.clone()).await;
    health.set_alive(false);
    shutdown.cancel();
    if let Err(error) = &result {
        tracing::error!(%error, "apply stopped");
    }
    Ok(result?)
}

async fn status(config: &PipelineConfig) -> anyhow::Result<()> {
    let client = connect(config).await?;
    let pipeline = &config.topics.prefix;
    let (db1, db2) = config.names();
    if config.reverse {
        println!("direction    fall-back: {db1} → {db2} (--reverse)");
    }
    let row = client
        .query_one(
            &format!(
                "SELECT applied_lsn::text, applied_end_lsn::text, applied_commit_time::text, {}, \
                        paused, state, last_error, updated_at::text, skipped_missing, last_skipped \
                 FROM pgm.apply_progress WHERE pipeline = $1",
                progress::LAG_SECONDS_SQL
            ),
            &[pipeline],
        )
        .await?;
    let running = progress::running_pid(&client, pipeline).await?;
    let applied: String = row.get(0);
    let end: Option<String> = row.get(1);
    let commit_time: Option<String> = row.get(2);
    let lag_s: Option<f64> = row.get(3);
    // Byte lag needs DB1's current position; status still answers when DB1 is down.
    let source_lsn = source_lsn(config).await;
    let lag_bytes = match (&source_lsn, end.as_deref().and_then(|e| e.parse::<Lsn>().ok())) {
        (Ok(now), Some(end)) => format!("{} bytes ({db1} at {now})", now.bytes_since(end)),
        (Ok(now), None) => format!("unknown (nothing applied yet; {db1} at {now})"),
        (Err(e), _) => format!("unknown ({db1}: {e})"),
    };
    let state: String = row.get(5);
    let paused: bool = row.get(4);
    println!("pipeline     {pipeline}");
    println!(
        "state        {}",
        match running {
            Some(pid) => format!("{state} (apply connected, {db2} backend pid {pid})"),
            None if state == "running" || state == "paused" => format!("{state} when last seen; no apply is connected"),
            None => state,
        }
    );
    println!("paused       {}", if paused { "yes (`pgm-apply resume` continues)" } else { "no" });
    println!("applied      {applied} (end {})", end.as_deref().unwrap_or("-"));
    println!("committed    {} on {db1}", commit_time.as_deref().unwrap_or("-"));
    println!("lag          {}, {lag_bytes}", lag_s.map_or("unknown".to_owned(), |s| format!("{s:.1} s")));
    println!("last error   {}", row.get::<_, Option<String>>(6).as_deref().unwrap_or("-"));
    let skipped: i64 = row.get(8);
    if skipped > 0 || config.apply.on_missing_row == pgm_common::config::OnMissingRow::Warn {
        println!(
            "skipped      {skipped} update(s)/delete(s) that found no row in {db2} (apply.on_missing_row = {}; \
             pgm_apply_missing_rows_total); last: {}",
            config.apply.on_missing_row.as_str(),
            row.get::<_, Option<String>>(9).as_deref().unwrap_or("-")
        );
    }
    println!("updated      {}", row.get::<_, String>(7));
    let applied = applied.parse::<Lsn>().unwrap_or(Lsn::ZERO);
    for line in chunks::status(config, &client, applied).await? {
        println!("{line}");
    }
    Ok(())
}

async fn source_lsn(config: &PipelineConfig) -> Result<Lsn, String> {
    let client = tokio::time::timeout(std::time::Duration::from_secs(5), config.source.connect("pgm-apply-status"))
        .await
        .map_err(|_| "no answer within 5 s".to_owned())?
        .map_err(|e| e.to_string())?;
    let row = client.query_one("SELECT pg_current_wal_lsn()::text", &[]).await.map_err(|e| e.to_string())?;
    row.get::<_, String>(0).parse::<Lsn>().map_err(|e| e.to_string())
}

async fn reset(config: &PipelineConfig, to: Option<&str>, force: bool, drop_origin: bool) -> anyhow::Result<()> {
    let to = to.map(parse_position).transpose()?;
    let client = connect(config).await?;
    let pipeline = &config.topics.prefix;
    if !progress::try_lock(&client, pipeline).await? {
        anyhow::bail!("pgm-apply is running for pipeline {pipeline:?}: stop it before a reset");
    }
    if drop_origin {
        let origin = config.apply_origin();
        let dropped = client
            .execute(
                "SELECT pg_replication_origin_drop($1) WHERE pg_replication_origin_oid($1) IS NOT NULL",
                &[&origin],
            )
            .await?;
        println!(
            "pipeline {pipeline:?}: replication origin {origin:?} {}",
            if dropped > 0 { "dropped (its replication state on DB2 is free)" } else { "did not exist" }
        );
    }
    let Some(to) = to else { return Ok(()) };
    let stored = progress::load(&client, pipeline).await?;
    if stored.applied > to && !force {
        anyhow::bail!(
            "DB2 already holds changes up to {} (after {to}); replaying from {to} would apply them twice. Restore DB2 \
             to {to} first and pass --force, or pick a later position",
            stored.applied
        );
    }
    progress::reset(&client, pipeline, to).await?;
    println!(
        "pipeline {pipeline:?}: applied position {} → {to}; the next run reads every topic from its start and skips \
         what is at or below it",
        stored.applied
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn help_lists_the_subcommands() {
        let help = Cli::try_parse_from(["pgm-apply", "--help"]).unwrap_err().to_string();
        for line in HELP_SUBCOMMANDS {
            assert!(help.contains(line), "{line} missing from:\n{help}");
        }
    }

    #[test]
    fn positions_for_reset() {
        assert_eq!(parse_position("16/B374D848").unwrap(), Position::new(Lsn(0x16_B374_D848), Position::COMMIT));
        let key = "00000016/B374D848:00000000000000000003";
        assert_eq!(parse_position(key).unwrap(), Position::new(Lsn(0x16_B374_D848), 3));
        assert!(parse_position("yesterday").is_err());
    }

    #[test]
    fn transient_errors() {
        let db = |code: Option<&str>| ApplyError::Db { code: code.map(str::to_owned), message: "m".into() };
        assert!(db(Some("57P01")).is_transient());
        assert!(db(None).is_transient());
        assert!(!db(Some("42703")).is_transient());
        assert!(db(Some("40001")).is_transient(), "a serialization failure is retried");
        assert!(!db(Some("23505")).is_transient(), "data DB2 refuses stops apply");
        assert!(!ApplyError::Target("table missing".into()).is_transient());
        assert!(ApplyError::Consumer("no queue".into()).is_transient());
        let broker = rdkafka::error::KafkaError::MetadataFetch(rdkafka::types::RDKafkaErrorCode::AllBrokersDown);
        let kafka = ApplyError::kafka("metadata of pgm.txn", broker);
        assert!(kafka.is_transient());
        assert!(std::error::Error::source(&kafka).is_some(), "the broker's error is kept as the cause");
        let tls = pgm_common::config::ConnectError::Tls { target: "db2".into(), problem: "no such file".into() };
        assert!(
            !ApplyError::Connect { target: "db2".into(), source: tls }.is_transient(),
            "a TLS setup error is definite"
        );
        assert!(!ApplyError::Stream("records missing".into()).is_transient());
    }
}
