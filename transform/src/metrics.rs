//! pgm-transform's metrics. Labels: table, rule, topic-partition (bounded), never keys or values.
//! Label values are escaped for the Prometheus text format (prometheus-client writes them as they are).

use std::sync::{Arc, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

pub const RECORDS: &str = "pgm_transform_records";
pub const OPS: &str = "pgm_transform_target_ops";
pub const OUT_BYTES: &str = "pgm_transform_out_bytes";
pub const PASSED: &str = "pgm_transform_passed_records";
pub const ERRORS: &str = "pgm_transform_errors";
pub const POSITION: &str = "pgm_transform_committed_offset";

pub use pgm_common::telemetry::TableLabel;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuleLabel {
    /// `source → target`, as error messages name it.
    pub rule: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabel {
    pub topic: String,
    pub partition: i32,
}

#[derive(Clone, Default)]
pub struct TransformMetrics {
    pub records: Family<TableLabel, Counter>,
    pub ops: Family<TableLabel, Counter>,
    /// Bytes of out records written (values), by source table: one out record per raw record.
    pub out_bytes: Family<TableLabel, Counter>,
    /// Raw records declared as passed through (applied as captured, no out record each), by source table.
    pub passed: Family<TableLabel, Counter>,
    pub errors: Family<RuleLabel, Counter>,
    /// Next offset to read per input partition, once its output is acknowledged.
    pub position: Family<PartitionLabel, Gauge>,
}

impl TransformMetrics {
    pub fn register(&self) -> Arc<Mutex<Registry>> {
        let mut registry = Registry::default();
        registry.register(RECORDS, "Raw records transformed, by source table", self.records.clone());
        registry.register(OPS, "Target operations produced, by source table", self.ops.clone());
        registry.register(OUT_BYTES, "Bytes of out records written, by source table", self.out_bytes.clone());
        registry.register(
            PASSED,
            "Raw records declared passed through (apply takes them as captured), by source table",
            self.passed.clone(),
        );
        registry.register(ERRORS, "Records the rules could not transform, by rule", self.errors.clone());
        registry.register(POSITION, "Acknowledged position per input partition", self.position.clone());
        Arc::new(Mutex::new(registry))
    }
}

pub fn rule_label(rule: &str) -> RuleLabel {
    RuleLabel { rule: pgm_common::telemetry::label_value(rule) }
}
