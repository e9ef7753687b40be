//! pg-migrator's shared vocabulary. Every stage speaks in these terms:
//!
//! ```text
//!   DB1 WAL ──wal2json v2 JSON──▶ wal2json::decode ──▶ change::Change
//!                                                         │  capture assigns lsn::Position (commit LSN, ordinal)
//!                                                         ▼
//!   Kafka  <prefix>.raw.<schema>.<table>   key = Position::to_key()   value = envelope::RawRecord
//!          <prefix>.txn                    begin / commit (+ per-partition counts) / message / heartbeat
//!                                                         │  transform: rules, 1 record in → 1 record out
//!                                                         ▼
//!          <prefix>.out.<schema>.<table>   same key, same partition   value = envelope::OutRecord
//!                                                         │  apply: merge in commit order, write, progress
//!                                                         ▼
//!   DB2    target rows + pgm.progress (applied position and offsets, in the same transaction)
//!
//!   acknowledgements flow back: Kafka ack ─▶ slot flush LSN; out ack ─▶ transform offsets; DB2 commit ─▶ apply offsets
//! ```
//!
//! `config` is the one TOML file of the pipeline, `topics` names the topics, `topic_settings` creates and audits
//! them (retention that keeps the whole migration), `kafka` builds every Kafka client,
//! `telemetry` sets up logs and the `/metrics` + `/healthz` endpoint.

pub mod change;
pub mod cli;
pub mod config;
pub mod copytext;
pub mod envelope;
pub mod findings;
pub mod identity;
pub mod kafka;
pub mod lsn;
pub mod parts;
pub mod pgoutput;
pub mod pgtime;
pub mod retry;
pub mod snapshot;
pub mod telemetry;
pub mod topic_settings;
pub mod topics;
pub mod wal2json;

pub use lsn::{Lsn, Position};
