//! Which produced records Kafka has acknowledged, without a future per record.
//!
//! Every record gets a sequence number when it is enqueued; librdkafka hands it back to [`AckContext::delivery`] on
//! its polling thread. Deliveries of different partitions come back in any order, so the tracker keeps the
//! *frontier*: the lowest sequence number not yet acknowledged. Everything below it is durable in Kafka, and that
//! is the only thing capture confirms to the slot (a transaction's end LSN is confirmed once the frontier passes
//! its commit record).
//!
//! ```text
//!   send(seq = 7) ─▶ librdkafka ─▶ delivery(7) ─▶ done[7] = true; frontier advances over every done seq
//!                                                └─▶ wakes the capture loop when the frontier passes `wake_at`
//! ```
//!
//! The capture loop is woken once per burst of acknowledgements that completes a transaction (or every
//! [`WAKE_EVERY`] records), not once per record: at thousands of records per second a wake-up per record was the
//! largest single cost of capture's main thread.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use prometheus_client::metrics::counter::Counter;
use rdkafka::client::ClientContext;
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{DeliveryResult, ProducerContext};
use tokio::sync::Notify;

/// The loop is woken at least every this many acknowledged records, so a transaction larger than the in-flight
/// bound (no commit record to wait for) still frees room as it is acknowledged.
pub const WAKE_EVERY: u64 = 4096;

/// A delivery that failed: the record's topic, partition and key (its position), and librdkafka's error.
#[derive(Debug)]
pub struct Failed {
    pub topic: String,
    pub partition: i32,
    pub key: Vec<u8>,
    pub error: KafkaError,
}

#[derive(Default)]
struct State {
    /// The lowest sequence number not yet acknowledged.
    frontier: u64,
    /// `done[i]`: sequence number `frontier + i` is acknowledged (it came back before an earlier one).
    done: VecDeque<bool>,
    failed: Option<Failed>,
}

/// Shared between the producer's delivery callback and the capture loop.
#[derive(Default)]
pub struct Acks {
    state: Mutex<State>,
    /// Wake the loop once the frontier is above this (the sequence number of the next record it waits for).
    wake_at: AtomicU64,
    notify: Notify,
}

impl Acks {
    fn acknowledge(&self, seq: u64) {
        {
            let mut state = self.state.lock().expect("ack state");
            let Some(index) = seq.checked_sub(state.frontier) else { return };
            let index = index as usize;
            if state.done.len() <= index {
                state.done.resize(index + 1, false);
            }
            state.done[index] = true;
            let before = state.frontier;
            while state.done.front() == Some(&true) {
                state.done.pop_front();
                state.frontier += 1;
            }
            let waited = self.wake_at.load(Ordering::Acquire);
            let passed_waited = before <= waited && state.frontier > waited;
            let passed_step = state.frontier / WAKE_EVERY != before / WAKE_EVERY;
            if !passed_waited && !passed_step {
                return;
            }
        }
        self.notify.notify_one();
    }

    fn fail(&self, failed: Failed) {
        self.state.lock().expect("ack state").failed.get_or_insert(failed);
        self.notify.notify_one();
    }

    /// Everything below the returned sequence number is acknowledged.
    pub fn frontier(&self) -> u64 {
        self.state.lock().expect("ack state").frontier
    }

    /// The first failed delivery, once.
    pub fn take_failure(&self) -> Option<Failed> {
        self.state.lock().expect("ack state").failed.take()
    }

    /// Asks for a wake-up once the record with sequence number `seq` is acknowledged, and everything before it.
    pub fn wake_after(&self, seq: u64) {
        self.wake_at.store(seq, Ordering::Release);
    }

    /// Resolves after a wake-up (one that happened since the last call counts).
    pub async fn woken(&self) {
        self.notify.notified().await;
    }
}

/// The producer's context: routes each delivery report to [`Acks`].
pub struct AckContext {
    pub acks: Arc<Acks>,
    pub delivery_errors: Counter,
}

impl ClientContext for AckContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, facility: &str, message: &str) {
        pgm_common::kafka::report_client_log(level, facility, message);
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        pgm_common::kafka::report_client_error(&error, reason);
    }
}

impl ProducerContext for AckContext {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, seq: usize) {
        match result {
            Ok(_) => self.acks.acknowledge(seq as u64),
            Err((error, message)) => {
                self.delivery_errors.inc();
                self.acks.fail(Failed {
                    topic: message.topic().to_owned(),
                    partition: message.partition(),
                    key: message.key().map(<[u8]>::to_vec).unwrap_or_default(),
                    error: error.clone(),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_frontier_passes_only_a_contiguous_prefix() {
        let acks = Acks::default();
        acks.acknowledge(2);
        acks.acknowledge(1);
        assert_eq!(acks.frontier(), 0, "record 0 is not acknowledged: nothing is durable yet");
        acks.acknowledge(0);
        assert_eq!(acks.frontier(), 3);
        acks.acknowledge(5);
        acks.acknowledge(3);
        assert_eq!(acks.frontier(), 4);
        acks.acknowledge(4);
        assert_eq!(acks.frontier(), 6);
        // A report for a record below the frontier (cannot happen; librdkafka reports each once) changes nothing.
        acks.acknowledge(1);
        assert_eq!(acks.frontier(), 6);
    }

    #[tokio::test]
    async fn the_loop_is_woken_when_the_frontier_passes_the_record_it_waits_for() {
        let acks = Arc::new(Acks::default());
        let wait = std::time::Duration::from_millis(50);
        acks.wake_after(2);
        acks.acknowledge(0);
        acks.acknowledge(1);
        assert!(tokio::time::timeout(wait, acks.woken()).await.is_err(), "record 2 is not acknowledged yet");
        acks.acknowledge(2);
        assert!(tokio::time::timeout(wait, acks.woken()).await.is_ok(), "record 2 is acknowledged: wake");
        // Without a record waited for, a wake-up every WAKE_EVERY acknowledgements (room in flight).
        acks.wake_after(u64::MAX);
        for seq in 3..WAKE_EVERY - 1 {
            acks.acknowledge(seq);
        }
        assert!(tokio::time::timeout(wait, acks.woken()).await.is_err());
        acks.acknowledge(WAKE_EVERY - 1);
        assert!(tokio::time::timeout(wait, acks.woken()).await.is_ok());
    }
}
