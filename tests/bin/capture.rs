//! `pgm-capture` built inside the test package, so tests can run it as a process (and `kill -9` it).

use clap::Parser;

fn main() -> anyhow::Result<()> {
    pgm_capture::run(pgm_capture::Cli::parse())
}
