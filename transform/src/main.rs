//! `pgm-transform`: parses flags and hands over to the library.

use clap::Parser;

fn main() -> anyhow::Result<()> {
    let cli = pgm_transform::Cli::parse();
    pgm_transform::run(cli)
}
