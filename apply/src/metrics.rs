//! pgm-apply's metrics. Labels: table only (bounded), never keys or values.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

pub use pgm_common::telemetry::TableLabel;

#[derive(Clone)]
pub struct ApplyMetrics {
    /// Commit LSN of the last source transaction applied, as a number.
    pub applied_lsn: Gauge,
    /// Source commit time of that transaction, Unix seconds.
    pub applied_commit_time: Gauge<f64, AtomicU64>,
    /// Now minus the newer of the applied commit time and the last heartbeat reached with nothing pending.
    pub lag_seconds: Gauge<f64, AtomicU64>,
    /// Source WAL bytes between the applied position and the newest position seen in the txn topic.
    pub lag_bytes: Gauge,
    pub transactions: Counter,
    pub rows: Family<TableLabel, Counter>,
    /// Updates and deletes whose row was not in DB2.
    pub missing_rows: Family<TableLabel, Counter>,
    pub batch_rows: Histogram,
    pub group_transactions: Histogram,
    pub statement_seconds: Histogram,
    pub commit_seconds: Histogram,
    pub paused: Gauge,
}

impl Default for ApplyMetrics {
    fn default() -> Self {
        ApplyMetrics {
            applied_lsn: Gauge::default(),
            applied_commit_time: Gauge::default(),
            lag_seconds: Gauge::default(),
            lag_bytes: Gauge::default(),
            transactions: Counter::default(),
            rows: Family::default(),
            missing_rows: Family::default(),
            batch_rows: Histogram::new(exponential_buckets(1.0, 4.0, 8)),
            group_transactions: Histogram::new(exponential_buckets(1.0, 4.0, 9)),
            statement_seconds: Histogram::new(exponential_buckets(0.0005, 4.0, 10)),
            commit_seconds: Histogram::new(exponential_buckets(0.0005, 4.0, 10)),
            paused: Gauge::default(),
        }
    }
}

impl ApplyMetrics {
    pub fn register(&self) -> Arc<Mutex<Registry>> {
        let mut r = Registry::default();
        r.register(
            "pgm_apply_applied_lsn",
            "Commit LSN of the last applied source transaction",
            self.applied_lsn.clone(),
        );
        r.register(
            "pgm_apply_applied_commit_time_seconds",
            "Source commit time of the last applied transaction (Unix time)",
            self.applied_commit_time.clone(),
        );
        r.register("pgm_apply_lag_seconds", "Time since DB2 was last current with DB1", self.lag_seconds.clone());
        r.register(
            "pgm_apply_lag_bytes",
            "Source WAL bytes not applied yet (as far as the txn topic shows)",
            self.lag_bytes.clone(),
        );
        r.register("pgm_apply_transactions", "Source transactions applied", self.transactions.clone());
        r.register("pgm_apply_rows", "Rows written to DB2, by target table", self.rows.clone());
        r.register(
            "pgm_apply_missing_rows",
            "Updates and deletes whose row was not in DB2, by target table",
            self.missing_rows.clone(),
        );
        r.register("pgm_apply_batch_rows", "Rows per SQL statement", self.batch_rows.clone());
        r.register(
            "pgm_apply_group_transactions",
            "Source transactions per DB2 transaction",
            self.group_transactions.clone(),
        );
        r.register("pgm_apply_statement_seconds", "Latency of one batched statement", self.statement_seconds.clone());
        r.register("pgm_apply_commit_seconds", "Latency of a DB2 COMMIT", self.commit_seconds.clone());
        r.register("pgm_apply_paused", "1 while apply is paused", self.paused.clone());
        Arc::new(Mutex::new(r))
    }
}
