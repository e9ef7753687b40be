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
    /// Run as the fall-back stream: DB2 → DB1 through the `[fallback]` section (its tables, rules, topic prefix and
    /// slot). See docs/lifecycle.md, "Falling back".
    #[arg(long, global = true)]
    pub reverse: bool,
}

impl GlobalArgs {
    /// Sets up logging, then loads and validates the configuration.
    /// With `--reverse`, the configuration of the fall-back stream ([`PipelineConfig::reversed`]).
    pub fn start(&self) -> Result<PipelineConfig, ConfigError> {
        let config = self.start_forward()?;
        if self.reverse {
            config.reversed()
        } else {
            Ok(config)
        }
    }

    /// The migration's own configuration, whatever `--reverse` says (for commands that need both directions).
    pub fn start_forward(&self) -> Result<PipelineConfig, ConfigError> {
        init_tracing(self.log_format);
        PipelineConfig::load(&self.config)
    }
}
