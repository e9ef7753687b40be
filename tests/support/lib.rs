//! The harness every integration test (and benchmark) stands on: real PostgreSQL clusters and a real
//! Apache Kafka broker, unique names, and waiting with deadlines instead of sleeping.
//!
//! - [`pg::PgCluster`]: a throwaway cluster (initdb + pg_ctl) on a free loopback port in a temp dir, logical
//!   decoding on, removed on drop; optionally a physical standby of another cluster (pg_basebackup).
//! - [`broker::shared_brokers`]: one broker per test process — `PGM_TEST_BROKERS` when set, else an Apache Kafka
//!   node started here (compose/kafka/broker) and ended with the process. [`broker::Broker`] is a test's own
//!   broker, for kill -9 and restarts on its data.
//! - [`names::unique`]: database, topic and group names no other test (or earlier run) uses.
//! - [`stack::Stack`]: DB1, DB2 and the three services as killable processes, with drain markers and row-by-row
//!   comparison.
//! - [`wait::until`]: poll a condition until it holds or a deadline passes, with a message saying what was awaited.

pub mod broker;
pub mod certs;
pub mod every_type;
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

/// CPU seconds (user + system) and peak RSS (VmHWM, kB) of a running process, from /proc; for benchmarks.
pub fn process_usage(pid: u32) -> Option<(f64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name: utime and stime are the 12th and 13th, in clock ticks (100 per second).
    let fields: Vec<&str> = stat.rsplit(')').next()?.split_whitespace().collect();
    let cpu = (fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?) / 100.0;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status.lines().find_map(|l| l.strip_prefix("VmHWM:"))?.trim().trim_end_matches(" kB").parse().ok()?;
    Some((cpu, rss))
}
