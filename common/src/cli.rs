//! Flags every binary shares. Each flag can also come from the environment (`PGM_CONFIG`, `PGM_LOG_FORMAT`).

use std::path::PathBuf;

use crate::config::{ConfigError, PipelineConfig};
use crate::telemetry::{init_tracing, LogFormat};

#[derive(Debug, Clone, clap::Args)]
pub struct GlobalArgs {
    /// The pipeline's TOML configuration file (see docs/configuration.md).
    #[arg(long, short = 'c', env = "PGM_CONFIG", global = true, default_value = "pgm.toml")]
    pub config: PathBuf,
    /// Log lines as human-readable text or JSON.
    #[arg(long, env = "PGM_LOG_FORMAT", global = true, value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
}

impl GlobalArgs {
    /// Sets up logging, then loads and validates the configuration.
    pub fn start(&self) -> Result<PipelineConfig, ConfigError> {
        init_tracing(self.log_format);
        PipelineConfig::load(&self.config)
    }
}
