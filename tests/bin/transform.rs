//! `pgm-transform` built inside the test package, so tests can run it as a process (and `kill -9` it).

use clap::Parser;

fn main() -> anyhow::Result<()> {
    pgm_transform::run(pgm_transform::Cli::parse())
}
