//! The harness every integration test (and benchmark) stands on: real PostgreSQL clusters and a real
//! Kafka-protocol broker, unique names, and waiting with deadlines instead of sleeping.
//!
//! - [`pg::PgCluster`]: a throwaway cluster (initdb + pg_ctl) on a free loopback port in a temp dir, logical
//!   decoding on, removed on drop; optionally a physical standby of another cluster (pg_basebackup).
//! - [`broker::shared_brokers`]: one broker per test process — `PGM_TEST_BROKERS` when `.ci/run` started one, else
//!   a tansu started here and ended with the process. [`broker::Broker`] is a test's own broker, for restarts.
//! - [`names::unique`]: database, topic and group names no other test (or earlier run) uses.
//! - [`stack::Stack`]: DB1, DB2 and the three services as killable processes, with drain markers and row-by-row
//!   comparison.
//! - [`wait::until`]: poll a condition until it holds or a deadline passes, with a message saying what was awaited.

pub mod broker;
pub mod kafka;
pub mod names;
pub mod pg;
pub mod stack;
pub mod wait;

/// Every fallible harness call returns this; the error says what failed and where its log is.
pub type Result<T, E = anyhow::Error> = std::result::Result<T, E>;

/// A free TCP port on 127.0.0.1 (bound, then released: the caller binds it next).
pub fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}
