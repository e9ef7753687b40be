//! `pgm-apply`: parses flags and hands over to the library.

use clap::Parser;

fn main() -> anyhow::Result<()> {
    let cli = pgm_apply::Cli::parse();
    pgm_apply::run(cli)
}
