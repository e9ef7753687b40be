//! pgm-transform: rewrites each raw change for DB2's schema; any number of workers form one consumer group.
//!
//! ```text
//!   <prefix>.raw.<s>.<t> [partition p] ──▶ rules ──▶ <prefix>.out.<s>.<t> [partition p]   (1 record in → 1 out)
//!                    ▲                                          │
//!                    └──── consumer offset committed ◀──────────┘ produce acknowledged
//! ```
//!
//! The rule engine (file format, catalogs, expressions, conversions, rewrite) is the `pgm-rules` crate, shared with
//! pgm-apply; it is re-exported here. `worker` runs the consumer group (cooperative, with static membership),
//! `check`, `scaffold` and `verify` serve the operator.

pub use pgm_rules::{catalog, compile, convert, expr, rewrite, rules};

pub mod check;
pub mod metrics;
pub mod scaffold;
pub mod verify;
pub mod worker;

use clap::{Parser, Subcommand};
use pgm_common::cli::GlobalArgs;
use pgm_common::config::PipelineConfig;

#[derive(Debug, Parser)]
#[command(
    name = "pgm-transform",
    version,
    about = "Rewrites raw changes for the new schema, as one Kafka consumer group"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Consume raw topics, apply the rules, produce out topics until stopped.
    Run,
    /// Validate the rules against DB1's and DB2's catalogs and print findings with fixes.
    Check,
    /// Write a starting rules file from both catalogs. With --reverse: the fall-back rules (DB2 → DB1) drafted from
    /// the forward rules, with a TODO wherever the inverse is not mechanical.
    Scaffold,
    /// Compare every target table of DB2 with DB1 passed through the rules (counts, checksums, differing keys).
    /// Exits 1 when a table differs. Run it when both are at the same point (after cutover).
    Verify,
}

#[cfg(test)]
const HELP_SUBCOMMANDS: &[&str] = &["run", "check", "scaffold", "verify"];

/// Why the worker or a command stopped.
#[derive(Debug, thiserror::Error)]
pub enum TransformError {
    #[error(transparent)]
    Compile(#[from] pgm_rules::CompileError),
    #[error(transparent)]
    Worker(#[from] worker::WorkerError),
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    let forward = cli.global.start_forward()?;
    // scaffold --reverse drafts the fall-back rules from the forward ones: it needs no [fallback] section yet.
    let reversed = cli.global.reverse && !matches!(cli.command, Command::Scaffold);
    let config = if reversed { forward.reversed()? } else { forward.clone() };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Run => run_worker(config).await,
            Command::Check => {
                let rules = pgm_rules::load_rules(&config)?;
                let source = pgm_rules::load_catalog(&config.source).await?;
                let target = pgm_rules::load_catalog(&config.target).await?;
                let findings = check::run(&rules, &config.tables(), &source, &target);
                pgm_common::findings::report(&findings).map_err(anyhow::Error::msg)
            }
            Command::Scaffold if cli.global.reverse => {
                let rules = pgm_rules::load_rules(&forward)?;
                let db1 = pgm_rules::load_catalog(&forward.source).await?;
                let db2 = pgm_rules::load_catalog(&forward.target).await?;
                print!("{}", scaffold::draft_reverse(&rules, &forward.tables(), &db1, &db2));
                Ok(())
            }
            Command::Scaffold => {
                let source = pgm_rules::load_catalog(&config.source).await?;
                let target = pgm_rules::load_catalog(&config.target).await?;
                print!("{}", scaffold::draft(&config.tables(), &source, &target));
                Ok(())
            }
            Command::Verify => {
                let program = compile(&config).await?;
                let started = std::time::Instant::now();
                let reports = verify::run(&config, &program).await?;
                let differing = reports.iter().filter(|r| !r.equal).count();
                for report in &reports {
                    println!("{report}");
                }
                let rows: u64 = reports.iter().map(|r| r.db2_rows).sum();
                let (db1, db2) = config.names();
                println!(
                    "verify: {} of {} tables equal, {rows} rows in {db2}, {:.1} s",
                    reports.len() - differing,
                    reports.len(),
                    started.elapsed().as_secs_f64()
                );
                if differing > 0 {
                    anyhow::bail!("{differing} table(s) differ between {db2} and the transformed {db1} (listed above)");
                }
                Ok(())
            }
        }
    });
    // A blocking call still running (librdkafka's metadata request while no broker answers) does not hold the exit.
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    result
}

/// What `check` says, at start: the rules compile against DB1 and fit DB2's tables. A worker must not start
/// rewriting records into a schema that cannot take them. Waits out DB1 or DB2 being away (`None` when stopped
/// meanwhile); any failed check stops the worker with every finding and its fix.
async fn preflight(
    config: &PipelineConfig,
    health: &pgm_common::telemetry::Health,
    shutdown: &tokio_util::sync::CancellationToken,
) -> anyhow::Result<Option<rewrite::Program>> {
    let rules = pgm_rules::load_rules(config)?;
    let attempt = || async {
        let source = pgm_rules::load_catalog(&config.source).await?;
        let target = pgm_rules::load_catalog(&config.target).await?;
        let findings = check::run(&rules, &config.tables(), &source, &target);
        let failed: Vec<String> =
            findings.iter().filter(|f| f.level == pgm_common::findings::Level::Fail).map(|f| f.to_string()).collect();
        if !failed.is_empty() {
            return Err(pgm_rules::CompileError::Refused(format!(
                "the rules do not fit DB1 and DB2 ({} problem(s); `pgm-transform check` shows every finding):\n{}",
                failed.len(),
                failed.join("\n")
            )));
        }
        pgm_rules::compile_with(&rules, &source)
    };
    let catalog_away = |error: &pgm_rules::CompileError| matches!(error, pgm_rules::CompileError::Catalog { source, .. } if source.is_transient());
    let result = pgm_common::retry::until_value(shutdown, attempt, catalog_away, |error, wait| {
        health.set_waiting(error.to_string());
        tracing::warn!(
            %error,
            retry_in_ms = wait.as_millis() as u64,
            "the rules are checked against DB1 and DB2 before the first record; waiting"
        )
    })
    .await;
    match result {
        Ok(program) => {
            health.clear_waiting();
            if program.is_some() {
                tracing::info!("rules checked against DB1 and DB2");
            }
            Ok(program)
        }
        Err(error) => {
            tracing::error!(%error, "transform refused to start");
            Err(error.into())
        }
    }
}

async fn run_worker(config: PipelineConfig) -> anyhow::Result<()> {
    let shutdown = tokio_util::sync::CancellationToken::new();
    pgm_common::telemetry::shutdown_on_signals(shutdown.clone());
    let metrics = metrics::TransformMetrics::default();
    let health = pgm_common::telemetry::Health::default();
    let (bound, _server) = pgm_common::telemetry::serve_metrics(
        &config.transform.metrics_addr,
        "transform.metrics_addr",
        metrics.register(),
        health.clone(),
        shutdown.clone(),
    )
    .await?;
    tracing::info!(metrics = %bound, group = %config.transform.group_id, "pgm-transform starting");
    let Some(program) = preflight(&config, &health, &shutdown).await? else {
        return Ok(());
    };
    let program = std::sync::Arc::new(program);
    pgm_common::kafka::refuse_wrong_settings(&config.kafka, &shutdown).await?;
    // Transient faults (the broker away or restarting, a delivery that timed out) start the worker again from the
    // group's committed offsets after a backoff (what it reprocesses carries the same keys); definite ones stop it.
    let result = pgm_common::retry::until_definite(
        &shutdown,
        || async {
            worker::Worker::new(&config, program.clone(), metrics.clone())?.run(health.clone(), shutdown.clone()).await
        },
        worker::WorkerError::is_transient,
        |error, wait| {
            health.set_waiting(error.to_string());
            tracing::warn!(
                %error,
                brokers = %config.kafka.brokers,
                retry_in_ms = wait.as_millis() as u64,
                "transform interrupted; starting again from the group's committed offsets"
            )
        },
    )
    .await;
    health.set_alive(false);
    shutdown.cancel();
    if let Err(error) = &result {
        tracing::error!(%error, "transform stopped");
    }
    Ok(result?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn help_lists_the_subcommands() {
        let help = Cli::try_parse_from(["pgm-transform", "--help"]).unwrap_err().to_string();
        for line in HELP_SUBCOMMANDS {
            assert!(help.contains(line), "{line} missing from:\n{help}");
        }
    }
}
