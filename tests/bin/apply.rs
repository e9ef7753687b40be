//! `pgm-apply` built inside the test package, so tests can run it as a process (and `kill -9` it).

use clap::Parser;

fn main() -> anyhow::Result<()> {
    pgm_apply::run(pgm_apply::Cli::parse())
}
