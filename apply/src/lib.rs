//! pgm-apply: writes the transformed stream into DB2 in source commit order, exactly once in effect.
//!
//! ```text
//!   <prefix>.txn (begin, commit + counts) ──┐
//!                                           ├─▶ merge by position ──▶ batched SQL ──▶ DB2 (+ pgm.progress, same txn)
//!   <prefix>.out.<s>.<t> [all partitions] ──┘                                              │
//!                                              consumer offsets committed after DB2 commit ◀┘
//! ```
//!
//! Issue #5 builds the merge and writer; this crate currently holds its command line only.

use clap::{Parser, Subcommand};
use pgm_common::cli::GlobalArgs;

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
        /// Stop after applying the transaction at this source LSN.
        #[arg(long, env = "PGM_APPLY_UNTIL")]
        until: Option<String>,
    },
    /// Pause durably at the next transaction boundary.
    Pause,
    /// Resume a paused apply.
    Resume,
    /// Applied position, its source commit time, lag, paused state, last error.
    Status,
    /// Move the applied position back for a deliberate replay.
    Reset {
        /// The position to replay from.
        #[arg(long)]
        to: String,
        /// Reset even when DB2 already holds later data.
        #[arg(long)]
        force: bool,
    },
}

#[cfg(test)]
const HELP_SUBCOMMANDS: &[&str] = &["run", "pause", "resume", "status", "reset"];

pub fn run(cli: Cli) -> anyhow::Result<()> {
    let config = cli.global.start()?;
    tracing::info!(target_db = %config.target.describe(), group = %config.apply.group_id, "configuration loaded");
    anyhow::bail!(
        "pgm-apply {:?} is not built yet (issue #5); this release only validates the configuration",
        cli.command
    )
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
}
