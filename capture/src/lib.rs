//! pgm-capture: the only component that reads DB1's WAL.
//!
//! ```text
//!   DB1 logical slot ──walsender (CopyBoth)──▶ wal2json v2 ──▶ Change ──▶ raw / txn records ──▶ Kafka
//!          ▲                                                                                    │
//!          └───────────── standby status update: flush = end LSN of the last durable txn ◀──────┘ acks
//! ```
//!
//! `walsender` speaks the replication protocol, `stream` runs the loop, `publisher` makes records and tracks
//! acknowledgements, `slot` and `check` serve the operator commands, `metrics` names what is measured.

pub mod acks;
pub mod bootstrap;
pub mod check;
pub mod identity;
pub mod metrics;
pub mod publisher;
pub mod slot;
pub mod stream;
pub mod walsender;

use clap::{Parser, Subcommand};
use pgm_common::cli::GlobalArgs;

#[derive(Debug, Parser)]
#[command(name = "pgm-capture", version, about = "Streams DB1's changes from a logical replication slot into Kafka")]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Stream changes from the slot into the raw and txn topics until stopped.
    Run,
    /// Check that DB1 is ready: wal_level, the decoder's plugin, free slots and senders, privileges, replica
    /// identity, values the decoder cannot carry.
    Check,
    /// Create the slot with an exported snapshot and copy every configured table in that snapshot into the raw
    /// topics (before the stream), so DB2 can start empty. Then run `pgm-capture run`.
    Bootstrap {
        /// Drop the slot (and an interrupted bootstrap's chunks) and copy everything again. Without it an interrupted
        /// bootstrap resumes: only the chunks not yet in Kafka are copied.
        #[arg(long)]
        restart: bool,
    },
    /// Create, drop or inspect the logical replication slot.
    Slot {
        #[command(subcommand)]
        action: SlotAction,
    },
}

#[derive(Debug, Subcommand)]
pub enum SlotAction {
    /// Create the slot (with capture.decoder's plugin; for pgoutput the publication first).
    Create,
    /// Drop the slot: DB1 stops retaining WAL for it.
    Drop,
    /// Show confirmed_flush_lsn, retained WAL bytes and the active pid.
    Status,
}

#[cfg(test)]
const HELP_SUBCOMMANDS: &[&str] = &["run", "check", "bootstrap", "slot"];

/// Why capture stopped. [`CaptureError::is_transient`] tells a supervisor whether a restart can help.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Walsender(#[from] walsender::WalsenderError),
    #[error("{what}: {source}")]
    Source {
        what: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("kafka: {0}")]
    Kafka(#[source] rdkafka::error::KafkaError),
    #[error("kafka did not accept the record at {pos} for {topic}[{partition}]: {error}{}; nothing after it was confirmed to the slot, a restart resumes there", pgm_common::kafka::delivery_fix(error, topic))]
    Delivery { topic: String, partition: i32, pos: pgm_common::Position, error: rdkafka::error::KafkaError },
    #[error("cannot decode the wal2json message at WAL {wal_start}: {source}")]
    Decode {
        wal_start: pgm_common::Lsn,
        #[source]
        source: pgm_common::wal2json::DecodeError,
    },
    #[error("cannot decode the pgoutput message at WAL {wal_start}: {source}")]
    Pgoutput {
        wal_start: pgm_common::Lsn,
        #[source]
        source: pgm_common::pgoutput::DecodeError,
    },
    #[error("{0}")]
    NoIdentity(String),
    #[error("{0}")]
    Publication(String),
    #[error("replication stream out of order: {0}")]
    Stream(String),
    /// DB1 is ready but has no room right now (every WAL sender busy): waiting may help.
    #[error("{0}")]
    Busy(String),
    #[error("pgm-capture bootstrap is copying for slot {slot} (DB1 pid {pid}): streaming starts once it has finished")]
    BootstrapRunning { slot: String, pid: String },
}

impl CaptureError {
    pub fn is_transient(&self) -> bool {
        match self {
            CaptureError::Walsender(e) => e.is_transient(),
            CaptureError::Kafka(_)
            | CaptureError::Delivery { .. }
            | CaptureError::BootstrapRunning { .. }
            | CaptureError::Busy(_) => true,
            CaptureError::Source { source, .. } => source.as_db_error().is_none(),
            CaptureError::Config(_)
            | CaptureError::Decode { .. }
            | CaptureError::Pgoutput { .. }
            | CaptureError::NoIdentity(_)
            | CaptureError::Publication(_)
            | CaptureError::Stream(_) => false,
        }
    }
}

/// A failed ordinary connection to DB1: the server or network (transient) or its TLS settings (definite).
pub fn connect_error(
    pg: &pgm_common::config::PgConfig,
) -> impl FnOnce(pgm_common::config::ConnectError) -> CaptureError {
    let what = format!("connect to {}", pg.describe());
    let describe = pg.describe();
    move |error| match error {
        missing if missing.password_missing() => CaptureError::Config(format!(
            "DB1 {describe} asks for a password and none is configured: set PGM__SOURCE__PASSWORD (or \
             source.password in the file)"
        )),
        pgm_common::config::ConnectError::Pg(source) => CaptureError::Source { what, source },
        tls @ pgm_common::config::ConnectError::Tls { .. } => CaptureError::Config(tls.to_string()),
    }
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    let config = cli.global.start()?;
    // `run` on one thread: the stream reader, the decode/publish loop and the acknowledgements hand messages to
    // each other many thousand times a second, and on one thread that costs no wake-ups across threads (the
    // multi-threaded runtime spent 15 % of capture's CPU in its worker threads on the pgbench backlog). The
    // bootstrap's parallel copy keeps the multi-threaded runtime.
    let runtime = match cli.command {
        Command::Run => tokio::runtime::Builder::new_current_thread().enable_all().build()?,
        _ => tokio::runtime::Builder::new_multi_thread().enable_all().build()?,
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Run => run_stream(config).await,
            Command::Check => {
                let findings = check::run(&config).await?;
                pgm_common::findings::report(&findings)
                    .map_err(|failed| anyhow::anyhow!("{failed} on {}", config.source.describe()))
            }
            Command::Bootstrap { restart } => {
                let summary = bootstrap::run(&config, restart).await?;
                let resumed = if summary.attempt > 1 {
                    format!(
                        " (attempt {}: {} chunks were in Kafka already{})",
                        summary.attempt,
                        summary.chunks_before,
                        summary.caught_up_to.map_or(String::new(), |l| format!("; stream caught up to {l}"))
                    )
                } else {
                    String::new()
                };
                println!(
                    "bootstrap: {} rows of {} tables in {} chunks, {:.1} s{resumed}; slot {} starts the stream at {}: \
                     now run `pgm-capture run`",
                    summary.rows,
                    summary.tables,
                    summary.chunks_copied,
                    summary.elapsed.as_secs_f64(),
                    config.capture.slot,
                    summary.consistent_point
                );
                Ok(())
            }
            Command::Slot { action } => {
                let out = match action {
                    SlotAction::Create => slot::create(&config).await?,
                    SlotAction::Drop => slot::drop(&config).await?,
                    SlotAction::Status => slot::status(&config).await?,
                };
                println!("{out}");
                Ok(())
            }
        }
    });
    // A blocking call still running (librdkafka's metadata request while no broker answers) does not hold the exit.
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    result
}

async fn run_stream(config: pgm_common::config::PipelineConfig) -> anyhow::Result<()> {
    let shutdown = tokio_util::sync::CancellationToken::new();
    pgm_common::telemetry::shutdown_on_signals(shutdown.clone());
    let metrics = metrics::CaptureMetrics::default();
    let health = pgm_common::telemetry::Health::default();
    let (bound, _server) = pgm_common::telemetry::serve_metrics(
        &config.capture.metrics_addr,
        "capture.metrics_addr",
        metrics.register(),
        health.clone(),
        shutdown.clone(),
    )
    .await?;
    tracing::info!(
        metrics = %bound,
        source = %config.source.describe(),
        slot = %config.capture.slot,
        brokers = %config.kafka.brokers,
        security = config.kafka.security_protocol.as_librdkafka(),
        librdkafka = ?pgm_common::kafka::describe_passthrough(&config.kafka),
        "pgm-capture starting"
    );
    // The stream's position on DB1 comes first, before anything waits on the broker: from here on every change is
    // kept by the slot, whatever the broker does meanwhile.
    let Some(start) = take_position(&config, &health, &shutdown).await? else {
        return Ok(());
    };
    tracing::info!(
        slot = %config.capture.slot,
        position = %start.position,
        created = start.created,
        "{}",
        if start.created {
            "replication slot created: the stream begins at this position"
        } else {
            "the slot exists: the stream resumes at its confirmed position"
        }
    );
    pgm_common::kafka::refuse_wrong_settings(&config.kafka, &shutdown).await?;
    // Transient failures (DB1 restarting, the slot still held by a killed predecessor, the broker away) restart the
    // stream from the slot's confirmed position after a backoff; definite ones stop capture.
    let result = pgm_common::retry::until_definite(
        &shutdown,
        || async {
            // Making the topics waits for the broker: a shutdown meanwhile ends the attempt (nothing is in flight).
            let publisher = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Ok(()),
                publisher = publisher::Publisher::new(&config, metrics.clone()) => publisher?,
            };
            stream::run(&config, publisher, metrics.clone(), &health, shutdown.clone(), None).await
        },
        CaptureError::is_transient,
        |error, wait| {
            health.set_waiting(error.to_string());
            tracing::warn!(
                %error,
                brokers = %config.kafka.brokers,
                source = %config.source.describe(),
                retry_in_ms = wait.as_millis() as u64,
                "capture interrupted; resuming from the slot"
            )
        },
    )
    .await;
    health.set_alive(false);
    shutdown.cancel();
    if let Err(error) = &result {
        tracing::error!(%error, "capture stopped");
    }
    Ok(result?)
}

/// Where the slot starts the stream, and whether this start made it.
pub struct StreamStart {
    pub position: pgm_common::Lsn,
    pub created: bool,
}

/// Makes sure the stream has its place on DB1: the preflight (what `check` says of DB1), tables with an identity,
/// the publication (pgoutput) and the slot. Waits out DB1 being away or busy; `None` when stopped meanwhile.
async fn take_position(
    config: &pgm_common::config::PipelineConfig,
    health: &pgm_common::telemetry::Health,
    shutdown: &tokio_util::sync::CancellationToken,
) -> Result<Option<StreamStart>, CaptureError> {
    let attempt = || async {
        let mut conn = walsender::Walsender::connect(&config.source, "pgm-capture").await?;
        slot::wait_for_no_bootstrap(&mut conn, &config.capture.slot).await?;
        let client = slot::connect(config).await?;
        slot::refuse_unfinished_bootstrap(&client, &config.capture.slot).await?;
        check::preflight(&client, config).await?;
        identity::refuse_tables_without_identity(&client, config).await?;
        slot::ensure_publication(&client, config).await?;
        slot::ensure_exists(&mut conn, config).await
    };
    let result = pgm_common::retry::until_value(shutdown, attempt, CaptureError::is_transient, |error, wait| {
        health.set_waiting(format!("DB1: {error}"));
        tracing::warn!(
            %error,
            source = %config.source.describe(),
            retry_in_ms = wait.as_millis() as u64,
            "cannot take the stream's position on DB1 yet; retrying"
        )
    })
    .await;
    if let Err(error) = &result {
        tracing::error!(%error, "capture refused to start");
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn help_lists_the_subcommands() {
        let help = Cli::try_parse_from(["pgm-capture", "--help"]).unwrap_err().to_string();
        for line in HELP_SUBCOMMANDS {
            assert!(help.contains(line), "{line} missing from:\n{help}");
        }
    }
}
