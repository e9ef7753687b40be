//! capture's metrics, served on `capture.metrics_addr` at `/metrics`. Labels: `table` only (never keys or values).

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

pub const RECEIVED_LSN: &str = "pgm_capture_received_lsn";
pub const FLUSHED_LSN: &str = "pgm_capture_flushed_lsn";
pub const LAG_BYTES: &str = "pgm_capture_lag_bytes";
pub const RECORDS: &str = "pgm_capture_records";
pub const BYTES: &str = "pgm_capture_bytes";
pub const TRANSACTIONS: &str = "pgm_capture_transactions";
pub const TXN_RECORDS: &str = "pgm_capture_txn_records";
pub const TXN_BYTES: &str = "pgm_capture_txn_bytes";
pub const DELIVERY_ERRORS: &str = "pgm_capture_delivery_errors";
pub const SPLIT_RECORDS: &str = "pgm_capture_split_records";
pub const LAST_FEEDBACK: &str = "pgm_capture_last_feedback_timestamp_seconds";

pub use pgm_common::telemetry::TableLabel;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_label_is_escaped() {
        let label = TableLabel::new(&pgm_common::change::TableRef::new("Sales Dept", "Order \"Items\""));
        assert_eq!(label.table, r#"Sales Dept.Order \"Items\""#);
    }
}

#[derive(Clone, Default)]
pub struct CaptureMetrics {
    /// WAL position received from the server (as a number; PostgreSQL prints it as hi/lo hex).
    pub received_lsn: Gauge,
    /// Position confirmed to the slot: everything before it is durable in Kafka.
    pub flushed_lsn: Gauge,
    /// Server WAL end minus the flushed position, in bytes.
    pub lag_bytes: Gauge,
    pub records: Family<TableLabel, Counter>,
    pub bytes: Family<TableLabel, Counter>,
    pub transactions: Counter,
    /// Records on the txn topic (begin, commit, message, heartbeat) and their bytes.
    pub txn_records: Counter,
    pub txn_bytes: Counter,
    pub delivery_errors: Counter,
    /// Records larger than the topic's record limit, sent as parts.
    pub split_records: Counter,
    pub last_feedback: Gauge<f64, AtomicU64>,
}

impl CaptureMetrics {
    pub fn register(&self) -> Arc<Mutex<Registry>> {
        let mut registry = Registry::default();
        registry.register(RECEIVED_LSN, "WAL position received from DB1", self.received_lsn.clone());
        registry.register(
            FLUSHED_LSN,
            "WAL position confirmed to the slot (durable in Kafka)",
            self.flushed_lsn.clone(),
        );
        registry.register(
            LAG_BYTES,
            "Bytes of WAL between DB1's end and the confirmed position",
            self.lag_bytes.clone(),
        );
        registry.register(RECORDS, "Raw change records published, by source table", self.records.clone());
        registry.register(BYTES, "Bytes of raw change records published, by source table", self.bytes.clone());
        registry.register(TRANSACTIONS, "Source transactions published", self.transactions.clone());
        registry.register(TXN_RECORDS, "Records published on the txn topic", self.txn_records.clone());
        registry.register(TXN_BYTES, "Bytes of records published on the txn topic", self.txn_bytes.clone());
        registry.register(DELIVERY_ERRORS, "Kafka delivery failures", self.delivery_errors.clone());
        registry.register(
            SPLIT_RECORDS,
            "Records over topics.max_message_bytes, sent as parts",
            self.split_records.clone(),
        );
        registry.register(LAST_FEEDBACK, "Unix time of the last status update sent to DB1", self.last_feedback.clone());
        Arc::new(Mutex::new(registry))
    }
}
