//! Integration tests on real PostgreSQL 15 + wal2json and a real Kafka-protocol broker (one test binary, so one
//! broker per run; see `support/`).

mod apply;
mod capture;
mod chaos;
mod faults;
mod fidelity;
mod kafka_security;
mod kafka_topics;
mod large_rows;
mod lifecycle;
mod passthrough;
mod records;
mod smoke;
mod tls;
mod transform;

/// The services' binaries, built for this test binary (only test targets know their paths).
const BINS: pgm_test_support::stack::Binaries = pgm_test_support::stack::Binaries {
    capture: env!("CARGO_BIN_EXE_pgm-test-capture"),
    transform: env!("CARGO_BIN_EXE_pgm-test-transform"),
    apply: env!("CARGO_BIN_EXE_pgm-test-apply"),
};
