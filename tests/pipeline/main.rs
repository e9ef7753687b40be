//! Integration tests on real PostgreSQL 15 + wal2json and a real Kafka-protocol broker (one test binary, so one
//! broker per run; see `support/`).

mod apply;
mod capture;
mod chaos;
mod faults;
mod fidelity;
mod lifecycle;
mod smoke;
mod tls;
mod transform;
