//! pgm-transform: rewrites each raw change for DB2's schema; any number of workers form one consumer group.
//!
//! ```text
//!   <prefix>.raw.<s>.<t> [partition p] ──▶ rules ──▶ <prefix>.out.<s>.<t> [partition p]   (1 record in → 1 out)
//!                    ▲                                          │
//!                    └──── consumer offset committed ◀──────────┘ produce acknowledged
//! ```
//!
//! `rules` is the file format, `catalog` reads DB1/DB2, `expr` and `convert` compute values, `rewrite` applies the
//! compiled rules to one record, `worker` runs the consumer group, `check` and `scaffold` serve the operator.

pub mod catalog;
pub mod convert;
pub mod expr;
pub mod metrics;
pub mod rewrite;
pub mod rules;
pub mod worker;

use clap::{Parser, Subcommand};
use pgm_common::cli::GlobalArgs;

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
    /// Write a starting rules file from both catalogs.
    Scaffold,
}

#[cfg(test)]
const HELP_SUBCOMMANDS: &[&str] = &["run", "check", "scaffold"];

pub fn run(cli: Cli) -> anyhow::Result<()> {
    let config = cli.global.start()?;
    tracing::info!(group = %config.transform.group_id, "configuration loaded");
    anyhow::bail!(
        "pgm-transform {:?} is not built yet (issue #4); this release only validates the configuration",
        cli.command
    )
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
