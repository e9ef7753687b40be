//! `pgm-capture`: parses flags and hands over to the library.

use clap::Parser;

fn main() -> anyhow::Result<()> {
    let cli = pgm_capture::Cli::parse();
    pgm_capture::run(cli)
}
