//! The shipped example configuration stays valid.

use pgm_common::config::PipelineConfig;

#[test]
fn example_config_parses() {
    let config = PipelineConfig::from_toml_str(include_str!("../../compose/pipeline.example.toml")).unwrap();
    assert_eq!(config.source.port, 55431);
    assert_eq!(config.tables().len(), 3);
    assert_eq!(config.topics().txn(), "pgm.txn");
}
