//! pg-migrator against PostgreSQL's native logical replication and Debezium (PostgreSQL source + JDBC sink on Kafka
//! Connect), side by side, in one run. Prints figures; asserts nothing about time.
//!
//!   compose/bench [--quick] [--only WORKLOAD:MODE] [--replicators NAMES] [--out FILE]
//!                                             (builds the release binaries, then runs this)
//!   PGM_BENCH_SERIES=1 also prints each live run's lag second by second; PGM_BENCH_LIBRDKAFKA='"linger.ms" = "50"'
//!   adds lines to every service's `[kafka.librdkafka]`; PGM_BENCH_COLD_BROKER=1 skips the broker's warm-up;
//!   PGM_BENCH_DECODER=pgoutput sets `capture.decoder`; PGM_BENCH_KEEP=1 leaves a live run's stack and broker
//!   running when its warm-up marker does not arrive (the line `KEEP brokers=… prefix=… dir=…` says where).
//!
//! Workloads on DB1: (a) pgbench's built-in tpcb-like script (history with REPLICA IDENTITY FULL), (b) many
//! single-row transactions (pgbench with a one-INSERT script), (c) one transaction of many rows.
//! Replicators: native publication/subscription; Debezium (debezium.rs; only when compose/bench installed it);
//! pg-migrator with identity rules; pg-migrator with a rename and a computed column. Each pg-migrator and Debezium
//! run has its own Apache Kafka broker (compose/kafka/broker; a quick run's pg-migrator runs share one);
//! pg-migrator runs with the pipeline's Kafka client defaults. Then the values side by side (values.rs).
//! Modes: backlog drain (replication stopped during the load, then the catch-up is timed) and live (replication
//! running during a fixed-rate load; lag sampled every 100 ms from a ticker row DB1 updates every 100 ms).
//! Every run has fresh clusters; the end of a run is a marker row written on DB1 after the load, seen on DB2.
//! Then the initial copy of a pgbench database by native initial sync, pgcopydb and pg-migrator (bootstrap.rs).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use pgm_test_support::broker::{shared_brokers, Broker};
use pgm_test_support::pg::bin_dir;
use pgm_test_support::process_usage;
use pgm_test_support::stack::{Binaries, Options, Running, Service, Stack};
use serde_json::json;

mod bootstrap;
mod debezium;
mod values;

const BASE_SCHEMA: &str = "
CREATE TABLE singles (id bigserial PRIMARY KEY, v text NOT NULL);
CREATE TABLE big (id bigint PRIMARY KEY, v text NOT NULL);
CREATE TABLE bench_marker (id int PRIMARY KEY, at timestamptz NOT NULL);
CREATE TABLE bench_tick (id int PRIMARY KEY, at timestamptz NOT NULL);
INSERT INTO bench_tick VALUES (1, clock_timestamp());
";
const TABLES: [&str; 8] = [
    "public.pgbench_accounts",
    "public.pgbench_branches",
    "public.pgbench_tellers",
    "public.pgbench_history",
    "public.singles",
    "public.big",
    "public.bench_marker",
    "public.bench_tick",
];
const RULES: &str = r#"
unmatched = "pass"
[[table]]
source = "public.pgbench_accounts"
[[table.target]]
table = "public.accounts_v2"
[table.target.columns]
label = { expr = '"a" + aid.to_string()', type = "text" }
[[table]]
source = "public.singles"
[[table.target]]
table = "public.singles_v2"
[table.target.columns]
v_len = { expr = 'v.len()', type = "integer" }
"#;
/// DB2's side of the rules, applied after pgbench's init there (its data is deterministic, the same as DB1's).
const DB2_MIGRATION: &str = "
ALTER TABLE pgbench_accounts RENAME TO accounts_v2;
ALTER TABLE accounts_v2 ADD COLUMN label text;
UPDATE accounts_v2 SET label = 'a' || aid;
ALTER TABLE singles RENAME TO singles_v2;
ALTER TABLE singles_v2 ADD COLUMN v_len integer;
";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Workload {
    Pgbench,
    Singles,
    Big,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Replicator {
    Native,
    Debezium,
    Identity,
    Rules,
}

impl Replicator {
    /// pg-migrator's capture → transform → apply.
    fn pipeline(self) -> bool {
        matches!(self, Replicator::Identity | Replicator::Rules)
    }

    fn name(self) -> &'static str {
        match self {
            Replicator::Native => "native",
            Replicator::Debezium => "debezium",
            Replicator::Identity => "pgm identity",
            Replicator::Rules => "pgm rename+computed",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Backlog,
    Live,
    /// Live at twice the rate (pgbench, native and identity only).
    Live2x,
}

struct Sizes {
    scale: u32,
    pgbench_txns: u64,
    singles: u64,
    big_rows: u64,
    live_changes_per_s: u64,
    live_seconds: u64,
    /// How long the pipeline's idle cost is measured before a live load.
    idle_seconds: u64,
    /// pgbench transactions run through the replication before anything is measured (see `warm_up`).
    warm_up_txns: u64,
    /// pg-migrator's runs share one broker.
    shared_broker: bool,
}

fn bins() -> anyhow::Result<Binaries> {
    let dir = std::env::current_exe()?.parent().context("exe dir")?.to_owned();
    let leak = |name: &str| -> anyhow::Result<&'static str> {
        let path = dir.join(name);
        ensure!(path.exists(), "{} missing: run compose/bench (it builds the binaries)", path.display());
        Ok(Box::leak(path.display().to_string().into_boxed_str()))
    };
    Ok(Binaries {
        capture: leak("pgm-test-capture")?,
        transform: leak("pgm-test-transform")?,
        apply: leak("pgm-test-apply")?,
    })
}

fn pgbench(stack: &Stack, db1: bool, args: &[&str]) -> anyhow::Result<String> {
    let (cluster, db) = if db1 { (&stack.db1, &stack.db1_name) } else { (&stack.db2, &stack.db2_name) };
    let out = Command::new(bin_dir().join("pgbench"))
        .args(["-h", "127.0.0.1", "-p", &cluster.port().to_string(), "-U", "postgres"])
        .args(args)
        .arg(db)
        .output()?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    ensure!(out.status.success(), "pgbench {args:?} failed:\n{text}");
    Ok(text)
}

/// pgbench's "number of transactions actually processed: N".
fn processed(text: &str) -> anyhow::Result<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|v| v.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no transaction count in pgbench output:\n{text}"))
}

/// The broker's pid when it is a local Kafka node (kafka.Kafka) whose config names the port of `brokers`.
fn broker_pid(brokers: &str) -> Option<u32> {
    let port = brokers.rsplit(':').next()?;
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|entry| {
        let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read_to_string(entry.path().join("cmdline")).ok()?;
        let config = cmdline.split('\0').rfind(|a| a.ends_with("server.properties"))?;
        let listeners = std::fs::read_to_string(config).ok()?;
        (cmdline.contains("kafka.Kafka") && listeners.contains(&format!("127.0.0.1:{port}"))).then_some(pid)
    })
}

/// The broker's version as the run used it: the harness's Kafka, or one given by PGM_TEST_BROKERS.
fn broker_label() -> String {
    match std::env::var("PGM_TEST_BROKERS") {
        Ok(brokers) => format!("(external, PGM_TEST_BROKERS={brokers})"),
        Err(_) => format!("{} (one KRaft node, compose/kafka/broker)", pgm_test_support::broker::kafka_version()),
    }
}

struct Measured {
    changes: u64,
    /// Backlog: catch-up seconds (replication start → marker on DB2). Live: load seconds.
    seconds: f64,
    end_to_end_s: f64,
    lag_p50: Option<f64>,
    lag_p99: Option<f64>,
    lag_at_stop: Option<f64>,
    processes: BTreeMap<String, (f64, u64)>,
    /// Broker records and bytes the pipeline wrote in the measured window, and the seconds apply waited on DB2
    /// (its statements and commits).
    traffic: (f64, f64, f64),
    equal: Result<(), String>,
}

struct Run<'a> {
    /// Debezium's Connect worker (Debezium runs only). First: it is dropped (and its log kept) before the stack's
    /// folder, which holds its log, is removed.
    connect: Option<debezium::Connect>,
    stack: Stack,
    /// The run's own broker (a shared one accumulates every run's topics and slows down).
    broker: Option<Broker>,
    replicator: Replicator,
    workload: Workload,
    mode: Mode,
    sizes: &'a Sizes,
    /// Where logs worth keeping after the run go (Debezium's worker log).
    logs: PathBuf,
    services: Vec<(Service, Running)>,
    cpu_start: BTreeMap<String, f64>,
    /// Broker records and bytes written by the services (from their metrics), by service pid, at the mark.
    traffic_start: BTreeMap<u32, (f64, f64, f64)>,
}

impl<'a> Run<'a> {
    async fn new(
        replicator: Replicator,
        workload: Workload,
        mode: Mode,
        sizes: &'a Sizes,
        logs: PathBuf,
    ) -> anyhow::Result<Run<'a>> {
        let rules = (replicator == Replicator::Rules).then_some(RULES);
        // Extra `"key" = "value"` lines for `[kafka.librdkafka]`, to try client settings without a rebuild.
        let librdkafka: &'static str =
            Box::leak(std::env::var("PGM_BENCH_LIBRDKAFKA").unwrap_or_default().into_boxed_str());
        let options = Options {
            source_schema: BASE_SCHEMA,
            target_schema: BASE_SCHEMA,
            tables: &TABLES,
            rules,
            partitions: 4,
            apply: "",
            librdkafka,
            create_slot: false,
        };
        // Native replication gets no broker: a JVM starting beside it (JIT threads, GC) would slow the baseline the
        // ratios divide by (it did: 44,898 instead of about 90,000 changes/s on the pgbench backlog).
        // A quick run's pg-migrator runs share one broker (starting a JVM per run is most of a quick run's time);
        // Debezium's topic and group names are fixed, so its runs always get their own.
        let broker = match (replicator, std::env::var("PGM_TEST_BROKERS")) {
            (Replicator::Native, _) | (_, Ok(_)) => None,
            (r, _) if r.pipeline() && sizes.shared_broker => None,
            (_, Err(_)) => Some(Broker::start()?),
        };
        let brokers = match (&broker, replicator) {
            (Some(broker), _) => broker.brokers(),
            (None, Replicator::Native) => "127.0.0.1:1".to_owned(),
            (None, _) => shared_brokers()?,
        };
        if replicator != Replicator::Native && std::env::var_os("PGM_BENCH_COLD_BROKER").is_none() {
            warm_broker(&brokers).await?;
        }
        let stack = Stack::new(bins()?, brokers, options).await?;
        stack.configure("transform", "passthrough = true")?;
        // `PGM_BENCH_DECODER=pgoutput` measures capture with the other decoder.
        if let Ok(decoder) = std::env::var("PGM_BENCH_DECODER") {
            stack.configure("capture", &format!("decoder = {decoder:?}"))?;
        }
        let scale = sizes.scale.to_string();
        for db1 in [true, false] {
            pgbench(&stack, db1, &["-i", "-q", "-s", &scale])?;
        }
        stack.source().await?.batch_execute("ALTER TABLE pgbench_history REPLICA IDENTITY FULL").await?;
        if replicator == Replicator::Rules {
            stack.target().await?.batch_execute(DB2_MIGRATION).await?;
        }
        if replicator == Replicator::Native {
            let tables = TABLES.join(", ");
            stack.source().await?.batch_execute(&format!("CREATE PUBLICATION bench FOR TABLE {tables}")).await?;
            stack
                .target()
                .await?
                .batch_execute(&format!(
                    "CREATE SUBSCRIPTION bench_sub CONNECTION 'host=127.0.0.1 port={} dbname={} user=postgres' \
                     PUBLICATION bench WITH (copy_data = false, enabled = false)",
                    stack.db1.port(),
                    stack.db1_name
                ))
                .await?;
        } else if replicator == Replicator::Debezium {
            // As for native replication, the publication is made beforehand (the source does not create it), and
            // so are the topics (one partition per table), so the warm-up covers them as it does for pg-migrator.
            let tables = TABLES.join(", ");
            stack.source().await?.batch_execute(&format!("CREATE PUBLICATION dbz_pub FOR TABLE {tables}")).await?;
            let topics: Vec<String> = TABLES.iter().map(|t| debezium::topic(t)).collect();
            create_topics(&stack.brokers, &topics).await?;
        } else {
            stack.create_slot()?;
        }
        Ok(Run {
            stack,
            broker,
            replicator,
            workload,
            mode,
            sizes,
            logs,
            services: Vec::new(),
            connect: None,
            cpu_start: BTreeMap::new(),
            traffic_start: BTreeMap::new(),
        })
    }

    /// Transform and apply of pg-migrator: consumers, idle until capture (the replication proper) runs.
    fn start_consumers(&mut self) -> anyhow::Result<()> {
        if self.replicator == Replicator::Debezium {
            let (keyed, keyless): (Vec<String>, Vec<String>) =
                TABLES.iter().map(|t| t.to_string()).partition(|t| t != "public.pgbench_history");
            let setup = debezium::Setup {
                brokers: &self.stack.brokers,
                db1: (self.stack.db1.port(), &self.stack.db1_name),
                db2: (self.stack.db2.port(), &self.stack.db2_name),
                keyed: &keyed,
                keyless: &keyless,
                values: false,
                exact: false,
                keep_log: self.logs.join(format!("debezium-{:?}-{:?}.log", self.workload, self.mode).to_lowercase()),
            };
            let connect = debezium::Connect::start(&setup, &self.stack.dir.path().join("connect"))?;
            connect.start_sinks(true)?;
            self.connect = Some(connect);
        }
        if self.replicator.pipeline() {
            for service in [Service::Transform, Service::Apply] {
                self.services.push((service, self.stack.spawn(service, &["run"])?));
            }
        }
        Ok(())
    }

    /// Native: the subscription is enabled (its walsender and apply worker start). pg-migrator: capture starts
    /// reading the slot. Debezium: the source connector starts (or resumes) and takes its slot.
    async fn start_replication(&mut self) -> anyhow::Result<()> {
        if self.replicator == Replicator::Native {
            self.stack.target().await?.batch_execute("ALTER SUBSCRIPTION bench_sub ENABLE").await?;
        } else if let Some(connect) = &mut self.connect {
            connect.start_source(&self.stack.source().await?).await?;
        } else {
            self.services.push((Service::Capture, self.stack.spawn(Service::Capture, &["run"])?));
        }
        Ok(())
    }

    /// The processes doing the replication, by name.
    async fn pids(&self) -> anyhow::Result<BTreeMap<String, u32>> {
        let mut pids = BTreeMap::new();
        if self.replicator == Replicator::Native {
            let db1 = self.stack.source().await?;
            if let Some(row) =
                db1.query_opt("SELECT pid FROM pg_stat_replication WHERE application_name = 'bench_sub'", &[]).await?
            {
                pids.insert("walsender (DB1)".into(), row.get::<_, i32>(0) as u32);
            }
            let db2 = self.stack.target().await?;
            if let Some(row) = db2
                .query_opt("SELECT pid FROM pg_stat_subscription WHERE subname = 'bench_sub' AND relid IS NULL", &[])
                .await?
            {
                pids.insert("apply worker (DB2)".into(), row.get::<_, Option<i32>>(0).unwrap_or_default() as u32);
            }
        } else {
            if let Some(connect) = &self.connect {
                pids.insert("connect".into(), connect.pid());
            }
            for (service, running) in &self.services {
                pids.insert(format!("{service:?}").to_lowercase(), running.child.id());
            }
            // The PostgreSQL processes working for the pipeline, as for native: capture's walsender on DB1 (the
            // bench's only logical slot) and apply's session on DB2.
            let db1 = self.stack.source().await?;
            let walsender = "SELECT active_pid FROM pg_replication_slots WHERE slot_type = 'logical' AND active_pid IS NOT NULL LIMIT 1";
            if let Some(row) = db1.query_opt(walsender, &[]).await? {
                pids.insert("walsender (DB1)".into(), row.get::<_, i32>(0) as u32);
            }
            if self.connect.is_none() {
                let db2 = self.stack.target().await?;
                let apply = "SELECT pid FROM pg_stat_activity WHERE application_name = 'pgm-apply' ORDER BY backend_start LIMIT 1";
                if let Some(row) = db2.query_opt(apply, &[]).await? {
                    pids.insert("apply session (DB2)".into(), row.get::<_, i32>(0) as u32);
                }
            }
            if let Some(pid) = self.broker.as_ref().and_then(Broker::pid).or_else(|| broker_pid(&self.stack.brokers)) {
                pids.insert("kafka".into(), pid);
            }
        }
        Ok(pids)
    }

    /// Records and bytes (key + value) each running service has written to the broker so far, by pid: capture's
    /// raw and txn records, transform's out records; and the seconds apply has waited on DB2 (statements, commits).
    fn traffic(&self) -> BTreeMap<u32, (f64, f64, f64)> {
        let key = pgm_common::lsn::KEY_LEN as f64;
        self.services
            .iter()
            .map(|(service, running)| {
                let sum = |name: &str| running.metric_sum(name).unwrap_or(0.0);
                let id = running.child.id();
                match service {
                    Service::Capture => {
                        let records = sum("pgm_capture_records_total") + sum("pgm_capture_txn_records_total");
                        let bytes = sum("pgm_capture_bytes_total") + sum("pgm_capture_txn_bytes_total");
                        (id, (records, bytes + records * key, 0.0))
                    }
                    Service::Transform => {
                        let records = sum("pgm_transform_records_total");
                        (id, (records, sum("pgm_transform_out_bytes_total") + records * key, 0.0))
                    }
                    Service::Apply => {
                        let waited = sum("pgm_apply_statement_seconds_sum") + sum("pgm_apply_commit_seconds_sum");
                        (id, (0.0, 0.0, waited))
                    }
                }
            })
            .collect()
    }

    /// Broker records and bytes written since the mark, and apply's seconds waiting on DB2.
    fn traffic_since_mark(&self) -> (f64, f64, f64) {
        self.traffic().into_iter().fold((0.0, 0.0, 0.0), |(r, b, w), (pid, (records, bytes, waited))| {
            let (r0, b0, w0) = self.traffic_start.get(&pid).copied().unwrap_or((0.0, 0.0, 0.0));
            (r + records - r0, b + bytes - b0, w + waited - w0)
        })
    }

    async fn mark_cpu(&mut self) -> anyhow::Result<()> {
        self.traffic_start = self.traffic();
        self.cpu_start = self
            .pids()
            .await?
            .into_iter()
            .filter_map(|(name, pid)| process_usage(pid).map(|(cpu, _)| (name, cpu)))
            .collect();
        Ok(())
    }

    async fn usage_since_mark(&self) -> anyhow::Result<BTreeMap<String, (f64, u64)>> {
        Ok(self
            .pids()
            .await?
            .into_iter()
            .filter_map(|(name, pid)| {
                let (cpu, rss) = process_usage(pid)?;
                Some((name.clone(), (cpu - self.cpu_start.get(&name).copied().unwrap_or(0.0), rss)))
            })
            .collect())
    }

    /// Runs the workload (at `rate` changes/s for `seconds` when given); returns the number of row changes.
    async fn load(&self, live: Option<(u64, u64)>) -> anyhow::Result<u64> {
        let sizes = self.sizes;
        match self.workload {
            Workload::Pgbench => {
                let args: Vec<String> = match live {
                    None => vec!["-t".into(), (sizes.pgbench_txns / 4).to_string()],
                    Some((rate, seconds)) => {
                        vec!["-R".into(), (rate / 4).to_string(), "-T".into(), seconds.to_string()]
                    }
                };
                let mut all = vec!["-n", "-c", "4", "-j", "2"];
                all.extend(args.iter().map(String::as_str));
                let out = tokio::task::block_in_place(|| pgbench(&self.stack, true, &all))?;
                Ok(processed(&out)? * 4)
            }
            Workload::Singles => {
                let script = self.stack.dir.path().join("single.sql");
                std::fs::write(&script, "INSERT INTO singles (v) VALUES ('one row, one transaction');\n")?;
                let script = script.display().to_string();
                let args: Vec<String> = match live {
                    None => vec!["-t".into(), (sizes.singles / 4).to_string()],
                    Some((rate, seconds)) => vec!["-R".into(), rate.to_string(), "-T".into(), seconds.to_string()],
                };
                let mut all = vec!["-n", "-c", "4", "-j", "2", "-f", &script];
                all.extend(args.iter().map(String::as_str));
                let out = tokio::task::block_in_place(|| pgbench(&self.stack, true, &all))?;
                processed(&out)
            }
            Workload::Big => {
                let rows = sizes.big_rows as i64;
                self.stack
                    .source()
                    .await?
                    .execute("INSERT INTO big SELECT g, md5(g::text) FROM generate_series(1, $1::bigint) g", &[&rows])
                    .await?;
                Ok(sizes.big_rows)
            }
        }
    }

    /// With `PGM_BENCH_KEEP`, leaves the run's stack and broker running (for a look at the topics when the warm-up
    /// marker did not arrive) and says where; returns the error either way.
    fn keep_on_failure(self, error: anyhow::Error) -> anyhow::Error {
        if std::env::var_os("PGM_BENCH_KEEP").is_some() {
            let (brokers, prefix) = (&self.stack.brokers, &self.stack.prefix);
            println!("KEEP brokers={brokers} prefix={prefix} dir={}", self.stack.dir.path().display());
            std::mem::forget(self);
        }
        error
    }

    /// pgbench transactions through the running replication before anything is measured, native and pg-migrator
    /// alike: a broker that has run for hours has compiled the code paths of the pipeline's produce and fetch
    /// requests; one started seconds before spends a third of its CPU in its JIT compilers while the pipeline drains
    /// (a profile in docs/performance.md). Not for Debezium: its end is judged by the workload's tables only.
    async fn warm_up(&self) -> anyhow::Result<()> {
        if self.connect.is_some() || std::env::var_os("PGM_BENCH_COLD_BROKER").is_some() {
            return Ok(());
        }
        let txns = (self.sizes.warm_up_txns / 4).to_string();
        tokio::task::block_in_place(|| pgbench(&self.stack, true, &["-n", "-c", "4", "-j", "2", "-t", &txns]))?;
        self.settle().await
    }

    /// After the warm-up, waits (at most 20 s) until the broker's CPU falls below 10 % of a CPU over a second: its
    /// JIT compilers work through what the warm-up queued (C2 and C1 were 8 % of both CPUs while DB1 was idle,
    /// docs/performance.md), which a broker that has run for hours has long done. Prints how long that took.
    async fn settle(&self) -> anyhow::Result<()> {
        let Some(pid) = self.broker.as_ref().and_then(Broker::pid).or_else(|| broker_pid(&self.stack.brokers)) else {
            return Ok(());
        };
        let started = Instant::now();
        let mut last = process_usage(pid).map_or(0.0, |(cpu, _)| cpu);
        let mut busy = f64::NAN;
        while started.elapsed() < Duration::from_secs(20) {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let now = process_usage(pid).map_or(last, |(cpu, _)| cpu);
            busy = now - last;
            last = now;
            if busy < 0.10 {
                break;
            }
        }
        println!(
            "          broker settled after the warm-up in {:.0} s (last second: {:.0} % of a CPU)",
            started.elapsed().as_secs_f64(),
            busy * 100.0
        );
        Ok(())
    }

    async fn marker(&self, id: i32) -> anyhow::Result<()> {
        self.stack.source().await?.execute("INSERT INTO bench_marker VALUES ($1, clock_timestamp())", &[&id]).await?;
        Ok(())
    }

    /// Waits until the marker is on DB2 and, for Debezium, until DB2 holds every change before it: Debezium
    /// applies each table's topic in its own order, so the marker's arrival says nothing of the other tables. Its
    /// end is when DB2's fingerprint of the workload's tables (counts and sums) equals DB1's, polled every 250 ms.
    async fn wait_marker(&self, id: i32, timeout: Duration) -> anyhow::Result<()> {
        let db2 = self.stack.target().await?;
        // Debezium gets less time than pg-migrator before its run is given up and reported as unfinished.
        let timeout = if self.connect.is_some() { timeout.min(Duration::from_secs(900)) } else { timeout };
        let deadline = Instant::now() + timeout;
        let mut checked = Instant::now();
        let logs = || match &self.connect {
            Some(connect) => connect.log_tail(),
            None => self.stack.logs(),
        };
        loop {
            if db2.query_opt("SELECT 1 FROM bench_marker WHERE id = $1", &[&id]).await?.is_some() {
                break;
            }
            ensure!(Instant::now() < deadline, "marker {id} not on DB2 after {timeout:?}:\n{}", logs());
            if let Some(connect) = self.connect.as_ref().filter(|_| checked.elapsed() > Duration::from_secs(2)) {
                let failed = connect.failures()?;
                ensure!(failed.is_empty(), "{}", failed.join("; "));
                checked = Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if let Some(connect) = &self.connect {
            let want = fingerprint(&self.stack.source().await?, self.workload).await?;
            while fingerprint(&db2, self.workload).await? != want {
                ensure!(Instant::now() < deadline, "DB2 not caught up with DB1 after {timeout:?}:\n{}", logs());
                let failed = connect.failures()?;
                ensure!(failed.is_empty(), "{}", failed.join("; "));
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
        Ok(())
    }

    /// DB2 equals DB1 for the tables the workload wrote (under the rules for the rules variant).
    async fn compare(&self) -> anyhow::Result<Result<(), String>> {
        let rules = self.replicator == Replicator::Rules;
        let checks: Vec<(&str, String, String)> = match self.workload {
            Workload::Pgbench => vec![
                (
                    "pgbench_accounts",
                    "(aid, bid, abalance, filler)".into(),
                    if rules { "accounts_v2".into() } else { "pgbench_accounts".into() },
                ),
                ("pgbench_branches", "t".into(), "pgbench_branches".into()),
                ("pgbench_tellers", "t".into(), "pgbench_tellers".into()),
                ("pgbench_history", "t".into(), "pgbench_history".into()),
            ],
            Workload::Singles => {
                vec![("singles", "(id, v)".into(), if rules { "singles_v2".into() } else { "singles".into() })]
            }
            Workload::Big => vec![("big", "t".into(), "big".into())],
        };
        let (db1, db2) = (self.stack.source().await?, self.stack.target().await?);
        for (source, projection, target) in checks {
            let sql = |table: &str| {
                format!("SELECT count(*), md5(coalesce(string_agg({projection}::text, ',' ORDER BY {projection}::text), '')) FROM {table} t")
            };
            let a = db1.query_one(&sql(source), &[]).await?;
            let b = db2.query_one(&sql(&target), &[]).await?;
            let (ca, cb): (i64, i64) = (a.get(0), b.get(0));
            if ca != cb || a.get::<_, String>(1) != b.get::<_, String>(1) {
                return Ok(Err(format!(
                    "{source}: DB1 {ca} rows, DB2 {cb} rows{}",
                    if ca == cb { ", contents differ" } else { "" }
                )));
            }
        }
        if rules && self.workload == Workload::Pgbench {
            let wrong: i64 = db2
                .query_one("SELECT count(*) FROM accounts_v2 WHERE label IS DISTINCT FROM 'a' || aid", &[])
                .await?
                .get(0);
            if wrong > 0 {
                return Ok(Err(format!("accounts_v2: {wrong} rows with a wrong computed label")));
            }
        }
        Ok(Ok(()))
    }

    /// Native: the subscription is disabled (and its walsender gone). pg-migrator: capture is killed. Debezium: the
    /// source connector is stopped (and its slot let go).
    async fn stop_replication(&mut self) -> anyhow::Result<()> {
        if self.replicator == Replicator::Native {
            self.stack.target().await?.batch_execute("ALTER SUBSCRIPTION bench_sub DISABLE").await?;
            let db1 = self.stack.source().await?;
            let deadline = Instant::now() + Duration::from_secs(30);
            while db1
                .query_opt("SELECT 1 FROM pg_stat_replication WHERE application_name = 'bench_sub'", &[])
                .await?
                .is_some()
            {
                ensure!(Instant::now() < deadline, "the subscription's walsender did not stop");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        } else if let Some(connect) = &self.connect {
            connect.stop_source(&self.stack.source().await?).await?;
        } else {
            self.services.retain(|(service, _)| *service != Service::Capture);
        }
        Ok(())
    }

    async fn backlog(mut self) -> anyhow::Result<Measured> {
        // Warm up (topics made, consumers joined, code paths hot), then stop the replication proper for the load.
        self.start_consumers()?;
        self.start_replication().await?;
        self.warm_up().await?;
        self.marker(0).await?;
        if let Err(error) = self.wait_marker(0, Duration::from_secs(120)).await {
            return Err(self.keep_on_failure(error));
        }
        self.stop_replication().await?;
        let started = Instant::now();
        let changes = self.load(None).await?;
        self.marker(1).await?;
        // The broker already runs (it took no part in the load); the replication processes start now.
        self.mark_cpu().await?;
        self.start_replication().await?;
        // The catch-up is timed from the replication connection's start (native's launcher takes up to
        // wal_retrieve_retry_interval to start a worker; that is start-up, not throughput).
        let db1 = self.stack.source().await?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while db1.query_opt("SELECT 1 FROM pg_stat_replication", &[]).await?.is_none() {
            ensure!(Instant::now() < deadline, "no replication connection on DB1 after 60 s:\n{}", self.stack.logs());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let catch_up = Instant::now();
        // Where the time goes in pg-migrator: when capture has the whole backlog acknowledged by Kafka (the slot's
        // confirmed_flush_lsn passes the marker) versus when apply has it in DB2.
        let capture_done = if !self.replicator.pipeline() {
            None
        } else {
            let target: String = db1.query_one("SELECT pg_current_wal_lsn()::text", &[]).await?.get(0);
            let db1 = self.stack.source().await?;
            Some(tokio::spawn(async move {
                loop {
                    let row = db1
                        .query_one(
                            "SELECT coalesce(bool_and(confirmed_flush_lsn >= $1::text::pg_lsn), false) FROM pg_replication_slots \
                             WHERE slot_type = 'logical'",
                            &[&target],
                        )
                        .await?;
                    if row.get::<_, bool>(0) {
                        return anyhow::Ok(catch_up.elapsed().as_secs_f64());
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }))
        };
        self.wait_marker(1, Duration::from_secs(3600)).await?;
        let seconds = catch_up.elapsed().as_secs_f64();
        if let Some(done) = capture_done {
            let capture_s = tokio::time::timeout(Duration::from_secs(30), done).await???;
            println!("          capture had the backlog in Kafka after {capture_s:.1} s of {seconds:.1} s");
        }
        let end_to_end_s = started.elapsed().as_secs_f64();
        let processes = self.usage_since_mark().await?;
        let traffic = self.traffic_since_mark();
        let equal = self.compare().await?;
        Ok(Measured {
            changes,
            seconds,
            end_to_end_s,
            lag_p50: None,
            lag_p99: None,
            lag_at_stop: None,
            processes,
            traffic,
            equal,
        })
    }

    async fn live(mut self, rate: u64, seconds: u64) -> anyhow::Result<Measured> {
        self.start_consumers()?;
        self.start_replication().await?;
        self.warm_up().await?;
        self.marker(0).await?;
        if let Err(error) = self.wait_marker(0, Duration::from_secs(120)).await {
            return Err(self.keep_on_failure(error));
        }
        if self.replicator != Replicator::Native {
            // What the pipeline (or Debezium's worker) and the broker cost while DB1 is idle (consumers polling, heartbeats).
            self.mark_cpu().await?;
            let idle_s = self.sizes.idle_seconds;
            tokio::time::sleep(Duration::from_secs(idle_s)).await;
            let idle: Vec<String> = self
                .usage_since_mark()
                .await?
                .iter()
                .map(|(n, (cpu, _))| format!("{n} {:.0} %", cpu * 100.0 / idle_s as f64))
                .collect();
            println!("          idle for {idle_s} s before the load, CPU: {}", idle.join(", "));
        }
        self.mark_cpu().await?;
        let stop = Arc::new(AtomicBool::new(false));
        let ticker = {
            let (db1, stop) = (self.stack.source().await?, stop.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    db1.execute("UPDATE bench_tick SET at = clock_timestamp() WHERE id = 1", &[]).await?;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                anyhow::Ok(())
            })
        };
        // Until the first tick of the load reaches DB2, DB2 shows the ticker's value from before the load (the
        // warm-up's time, tens of seconds old): the lag then is the time since the load started, not since that
        // value. (Measured from the old value, the first second of a run alone put the p99 at 23-28 s.)
        let load_start = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs_f64();
        let lag_sql: &'static str = Box::leak(
            format!(
                "SELECT extract(epoch FROM clock_timestamp() - greatest(at, to_timestamp({load_start:.6})))::float8 \
                 FROM bench_tick WHERE id = 1"
            )
            .into_boxed_str(),
        );
        let sampler = sample(self.stack.target().await?, lag_sql, stop.clone());
        // Where the lag is: WAL that capture has not had acknowledged by Kafka yet (the slot's confirmed_flush_lsn
        // behind DB1's WAL end), sampled like the ticker. Native has no slot of ours: no samples.
        // Native has no slot of ours, and Debezium's slot moves only with its offset flushes: no samples.
        let slot_sampler = sample(
            self.stack.source().await?,
            "SELECT max(pg_current_wal_lsn() - confirmed_flush_lsn)::float8 FROM pg_replication_slots \
             WHERE slot_type = 'logical' AND slot_name NOT LIKE 'bench_sub%' AND slot_name <> 'dbz'",
            stop.clone(),
        );
        let started = Instant::now();
        let busy_before = machine_jiffies();
        let changes = self.load(Some((rate, seconds))).await?;
        let busy_after = machine_jiffies();
        println!(
            "          machine CPU busy during the load: {:.0} % of {} CPUs",
            (busy_after.0 - busy_before.0) as f64 * 100.0 / (busy_after.1 - busy_before.1).max(1) as f64,
            std::thread::available_parallelism().map_or(0, |n| n.get())
        );
        let load_s = started.elapsed().as_secs_f64();
        stop.store(true, Ordering::Relaxed);
        ticker.await??;
        let mut slot_behind = slot_sampler.await??;
        if !slot_behind.is_empty() {
            slot_behind.sort_by(f64::total_cmp);
            let at = |p: f64| slot_behind[((slot_behind.len() as f64 - 1.0) * p).round() as usize] / 1024.0;
            println!(
                "          WAL not yet acknowledged by Kafka during the load (capture's share of the lag): p50 {:.0} KiB, p99 {:.0} KiB",
                at(0.5),
                at(0.99)
            );
        }
        let mut samples = sampler.await??;
        if std::env::var_os("PGM_BENCH_SERIES").is_some() {
            // The lag over time, the worst sample of each second (for finding where spikes come from).
            let worst: Vec<String> =
                samples.chunks(10).map(|c| format!("{:.1}", c.iter().copied().fold(0.0, f64::max))).collect();
            println!("          lag by second (worst of each, s): {}", worst.join(" "));
        }
        let stopped = Instant::now();
        self.marker(1).await?;
        self.wait_marker(1, Duration::from_secs(3600)).await?;
        let lag_at_stop = stopped.elapsed().as_secs_f64();
        let end_to_end_s = started.elapsed().as_secs_f64();
        let processes = self.usage_since_mark().await?;
        let traffic = self.traffic_since_mark();
        samples.sort_by(f64::total_cmp);
        let pct = |p: f64| samples.get(((samples.len() as f64 - 1.0) * p).round() as usize).copied();
        let equal = self.compare().await?;
        Ok(Measured {
            changes,
            seconds: load_s,
            end_to_end_s,
            lag_p50: pct(0.5),
            lag_p99: pct(0.99),
            lag_at_stop: Some(lag_at_stop),
            processes,
            traffic,
            equal,
        })
    }
}

/// Counts and sums of the tables a workload writes (its marker rows too): equal on DB1 and DB2 once every change
/// of the workload is on DB2. Cheap enough to poll (one scan of each table).
async fn fingerprint(client: &tokio_postgres::Client, workload: Workload) -> anyhow::Result<String> {
    let sql = match workload {
        Workload::Pgbench => {
            "SELECT concat_ws('/', (SELECT sum(abalance) FROM pgbench_accounts), (SELECT sum(tbalance) FROM pgbench_tellers), \
             (SELECT sum(bbalance) FROM pgbench_branches), (SELECT count(*) FROM pgbench_history), \
             (SELECT sum(delta) FROM pgbench_history), (SELECT count(*) FROM bench_marker))"
        }
        Workload::Singles => {
            "SELECT concat_ws('/', (SELECT count(*) FROM singles), (SELECT max(id) FROM singles), (SELECT count(*) FROM bench_marker))"
        }
        Workload::Big => "SELECT concat_ws('/', (SELECT count(*) FROM big), (SELECT count(*) FROM bench_marker))",
    };
    Ok(client.query_one(sql, &[]).await?.get(0))
}

/// A broker that has run for a while has its request paths compiled; a JVM started seconds ago spends most of its
/// CPU in its JIT compilers and G1 (36 % and 19 % of the broker's samples in a drain, docs/performance.md). Before a
/// run measures anything, 200,000 records of 400 bytes go through the broker and are read back, once per broker.
async fn warm_broker(brokers: &str) -> anyhow::Result<()> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    static WARMED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    if WARMED.lock().unwrap().iter().any(|b| b == brokers) {
        return Ok(());
    }
    const RECORDS: usize = 200_000;
    let topic = "bench-warmup";
    create_topics(brokers, &[topic.to_owned()]).await?;
    let brokers_owned = brokers.to_owned();
    let started = Instant::now();
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let producer: BaseProducer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &brokers_owned)
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .create()?;
        let value = vec![b'x'; 400];
        for i in 0..RECORDS {
            let key = i.to_string();
            loop {
                match producer.send(BaseRecord::to(topic).key(&key).payload(&value)) {
                    Ok(()) => break,
                    Err((rdkafka::error::KafkaError::MessageProduction(_), _)) => {
                        producer.poll(Duration::from_millis(5));
                    }
                    Err((e, _)) => return Err(e.into()),
                }
            }
            producer.poll(Duration::ZERO);
        }
        producer.flush(Duration::from_secs(60))?;
        let consumer: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &brokers_owned)
            .set("group.id", "bench-warmup")
            .set("auto.offset.reset", "earliest")
            .create()?;
        consumer.subscribe(&[topic])?;
        let mut read = 0;
        let deadline = Instant::now() + Duration::from_secs(120);
        while read < RECORDS && Instant::now() < deadline {
            if let Some(Ok(_)) = consumer.poll(Duration::from_millis(100)) {
                read += 1;
            }
        }
        ensure!(read == RECORDS, "the broker warm-up read {read} of {RECORDS} records back");
        Ok(())
    })
    .await??;
    tracing_free_log(&format!(
        "broker warmed: {RECORDS} records in and out in {:.1} s",
        started.elapsed().as_secs_f64()
    ));
    WARMED.lock().unwrap().push(brokers.to_owned());
    Ok(())
}

/// A line for the operator on stderr (the table goes to stdout).
fn tracing_free_log(line: &str) {
    eprintln!("[bench] {line}");
}

/// Creates topics of one partition each (Debezium's layout), before its source runs.
async fn create_topics(brokers: &str, topics: &[String]) -> anyhow::Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> =
        rdkafka::ClientConfig::new().set("bootstrap.servers", brokers).create()?;
    let new: Vec<NewTopic> = topics.iter().map(|t| NewTopic::new(t, 1, TopicReplication::Fixed(1))).collect();
    for result in admin.create_topics(&new, &AdminOptions::new()).await? {
        if let Err((topic, code)) = result {
            anyhow::bail!("creating topic {topic}: {code}");
        }
    }
    Ok(())
}

/// Runs `sql` (one float8 or NULL) every 100 ms until `stop`; the non-NULL values.
fn sample(
    client: tokio_postgres::Client,
    sql: &'static str,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<anyhow::Result<Vec<f64>>> {
    tokio::spawn(async move {
        let mut samples = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            if let Some(value) = client.query_one(sql, &[]).await?.get::<_, Option<f64>>(0) {
                samples.push(value);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(samples)
    })
}

/// Busy and total jiffies of the whole machine (`/proc/stat`), for how saturated it was during a run.
fn machine_jiffies() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> =
        stat.lines().next().unwrap_or_default().split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    let total: u64 = fields.iter().take(8).sum();
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

fn ms(v: Option<f64>) -> String {
    v.map_or("-".into(), |s| format!("{:.0}", s * 1000.0))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let out = args
        .iter()
        .position(|a| a == "--out")
        .and_then(|i| args.get(i + 1))
        .map_or_else(|| PathBuf::from("bench-results.json"), PathBuf::from);
    let sizes = if quick {
        Sizes {
            scale: 1,
            pgbench_txns: 1_000,
            singles: 2_000,
            big_rows: 20_000,
            live_changes_per_s: 1_000,
            live_seconds: 3,
            idle_seconds: 1,
            warm_up_txns: 1_000,
            shared_broker: true,
        }
    } else {
        Sizes {
            scale: 10,
            pgbench_txns: 20_000,
            singles: 20_000,
            big_rows: 1_000_000,
            live_changes_per_s: 5_000,
            live_seconds: 20,
            idle_seconds: 3,
            warm_up_txns: 5_000,
            shared_broker: false,
        }
    };
    // `--only pgbench:backlog` (or any part of `workload:mode`) runs a subset.
    let only = args.iter().position(|a| a == "--only").and_then(|i| args.get(i + 1)).map(|o| o.to_lowercase());
    // `--replicators identity,rename` (parts of the names) runs some replicators only; ratios need `native`.
    let replicators_only =
        args.iter().position(|a| a == "--replicators").and_then(|i| args.get(i + 1)).map(|o| o.to_lowercase());
    let debezium = debezium::home().is_some();
    if !debezium {
        println!(
            "Debezium: not installed, its runs are left out (compose/bench installs it: compose/debezium/install)"
        );
    }
    let replicators: Vec<Replicator> =
        [Replicator::Native, Replicator::Debezium, Replicator::Identity, Replicator::Rules]
            .into_iter()
            .filter(|r| debezium || *r != Replicator::Debezium)
            .collect();
    let mut plan: Vec<(Workload, Mode, Replicator)> = Vec::new();
    for workload in [Workload::Pgbench, Workload::Singles, Workload::Big] {
        for mode in [Mode::Backlog, Mode::Live, Mode::Live2x] {
            if workload == Workload::Big && mode != Mode::Backlog {
                continue; // one transaction: there is no rate to hold
            }
            for &replicator in &replicators {
                if mode == Mode::Live2x
                    && (workload != Workload::Pgbench
                        || !matches!(replicator, Replicator::Native | Replicator::Identity))
                {
                    continue;
                }
                let name = format!("{workload:?}:{mode:?}").to_lowercase();
                let picked =
                    replicators_only.as_ref().is_none_or(|r| r.split(',').any(|r| replicator.name().contains(r)));
                if picked && only.as_ref().is_none_or(|o| name.contains(o.as_str())) {
                    plan.push((workload, mode, replicator));
                }
            }
        }
    }
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "pg-migrator vs native logical replication and Debezium — {} run, {cpus} CPUs, PostgreSQL 15 ×2, Apache Kafka {}{}",
        if quick { "quick" } else { "full" },
        broker_label(),
        if debezium { format!(", {}", debezium::version()) } else { String::new() }
    );
    println!(
        "{:<9} {:<7} {:<22} {:>9} {:>8} {:>10} {:>8} {:>8} {:>9}  {:<5}  processes (CPU s / peak RSS MiB)",
        "workload", "mode", "replicator", "changes", "secs", "changes/s", "lag p50", "lag p99", "stop lag", "equal"
    );
    // Logs worth reading after the run (Debezium's worker, one file per run), outside the repository's tracked files.
    let logs = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench-logs");
    let mut results = Vec::new();
    let mut native_rate: BTreeMap<(String, String), f64> = BTreeMap::new();
    let mut debezium_rate: BTreeMap<(String, String), f64> = BTreeMap::new();
    for (workload, mode, replicator) in plan {
        let run = Run::new(replicator, workload, mode, &sizes, logs.clone()).await?;
        let measured = match mode {
            Mode::Backlog => run.backlog().await,
            Mode::Live => run.live(sizes.live_changes_per_s, sizes.live_seconds).await,
            Mode::Live2x => run.live(2 * sizes.live_changes_per_s, sizes.live_seconds).await,
        };
        // A Debezium run that cannot finish (an error, or not caught up in time) is reported, and the run goes on.
        let measured = match measured {
            Ok(measured) => measured,
            Err(error) if replicator == Replicator::Debezium => {
                let error = format!("{error:#}");
                let first = error.lines().next().unwrap_or_default();
                println!(
                    "{:<9} {:<7} {:<22} did not finish: {first}",
                    format!("{workload:?}"),
                    format!("{mode:?}"),
                    replicator.name()
                );
                results.push(json!({
                    "workload": format!("{workload:?}"), "mode": format!("{mode:?}"), "replicator": replicator.name(),
                    "finished": false, "error": error,
                }));
                continue;
            }
            Err(error) => return Err(error),
        };
        // Backlog: the catch-up's throughput. Live: first change committed → last applied.
        let rate = match mode {
            Mode::Backlog => measured.changes as f64 / measured.seconds,
            Mode::Live | Mode::Live2x => measured.changes as f64 / measured.end_to_end_s,
        };
        let key = (format!("{workload:?}"), format!("{mode:?}"));
        match replicator {
            Replicator::Native => drop(native_rate.insert(key.clone(), rate)),
            Replicator::Debezium => drop(debezium_rate.insert(key.clone(), rate)),
            _ => {}
        }
        let ratio = native_rate.get(&key).map(|n| rate / n);
        let ratio_debezium = debezium_rate.get(&key).filter(|_| replicator.pipeline()).map(|d| rate / d);
        let processes: Vec<String> = measured
            .processes
            .iter()
            .map(|(n, (cpu, rss))| format!("{n} {cpu:.1}/{:.0}", *rss as f64 / 1024.0))
            .collect();
        println!(
            "{:<9} {:<7} {:<22} {:>9} {:>8.1} {:>10.0} {:>8} {:>8} {:>9}  {:<5}  {}{}{}",
            format!("{workload:?}"),
            format!("{mode:?}"),
            replicator.name(),
            measured.changes,
            measured.seconds,
            rate,
            ms(measured.lag_p50),
            ms(measured.lag_p99),
            ms(measured.lag_at_stop),
            if measured.equal.is_ok() { "yes" } else { "NO" },
            processes.join(", "),
            ratio.filter(|_| replicator != Replicator::Native).map_or(String::new(), |r| match replicator {
                Replicator::Debezium => format!("  ratio debezium/native: {r:.2}"),
                _ => format!("  ratio pipeline/native: {r:.2}"),
            }),
            ratio_debezium.map_or(String::new(), |r| format!(", pipeline/debezium: {r:.2}")),
        );
        let per_change = |cpu: f64| cpu * 1e6 / measured.changes.max(1) as f64;
        if replicator != Replicator::Native {
            let cpu: Vec<String> =
                measured.processes.iter().map(|(n, (cpu, _))| format!("{n} {:.0}", per_change(*cpu))).collect();
            let (records, bytes, waited) = measured.traffic;
            // Debezium's records and bytes are not counted (no metrics endpoint read here).
            let traffic = if replicator.pipeline() {
                format!(
                    "; broker records {:.2}, bytes {:.0}; apply waited on DB2 {waited:.1} s",
                    records / measured.changes.max(1) as f64,
                    bytes / measured.changes.max(1) as f64
                )
            } else {
                String::new()
            };
            println!("          per change: CPU µs {}{traffic}", cpu.join(", "));
        }
        if let Err(diff) = &measured.equal {
            println!("          DB2 differs from DB1: {diff}");
        }
        results.push(json!({
            "workload": format!("{workload:?}"), "mode": format!("{mode:?}"), "replicator": replicator.name(),
            "changes": measured.changes, "seconds": measured.seconds, "end_to_end_seconds": measured.end_to_end_s,
            "finished": true, "changes_per_second": rate, "ratio_to_native": ratio, "ratio_to_debezium": ratio_debezium,
            "lag_p50_ms": measured.lag_p50.map(|s| s * 1000.0), "lag_p99_ms": measured.lag_p99.map(|s| s * 1000.0),
            "lag_at_stop_ms": measured.lag_at_stop.map(|s| s * 1000.0),
            "db2_equals_db1": measured.equal.is_ok(), "difference": measured.equal.err(),
            "processes": measured.processes.iter().map(|(n, (cpu, rss))| json!({"name": n, "cpu_seconds": cpu, "cpu_us_per_change": per_change(*cpu), "peak_rss_kb": rss})).collect::<Vec<_>>(),
            "broker_records_per_change": replicator.pipeline().then(|| measured.traffic.0 / measured.changes.max(1) as f64),
            "broker_bytes_per_change": replicator.pipeline().then(|| measured.traffic.1 / measured.changes.max(1) as f64),
            "apply_db2_wait_seconds": replicator.pipeline().then_some(measured.traffic.2),
        }));
    }
    // The initial copy side by side (with `--only bootstrap`, or in a whole run): pgbench scale 100 (10 million
    // rows) in a full run, 10 in a quick one.
    let mut bootstrap_json = None;
    if only.as_ref().is_none_or(|o| "bootstrap".contains(o.as_str())) {
        let broker = Broker::start()?;
        let scale = if quick { 10 } else { 100 };
        bootstrap_json = Some(bootstrap::run(scale, bins()?, broker.brokers()).await?);
    }
    // Values side by side (with `--only values`, or in a whole run).
    let mut value_results = Vec::new();
    if only.as_ref().is_none_or(|o| "values".contains(o.as_str())) {
        // A quick run compares pg-migrator's exact decoder with Debezium as installed (the 5-minute budget); a full
        // run adds wal2json (pg-migrator's default decoder) and Debezium with its docs' value modes.
        let mut tools = vec![values::Tool::Pgm("pgoutput")];
        if !quick {
            tools.push(values::Tool::Pgm("wal2json"));
        }
        if debezium {
            tools.push(values::Tool::Debezium { exact: false });
            if !quick {
                tools.push(values::Tool::Debezium { exact: true });
            }
        }
        for tool in tools {
            value_results.push((tool, values::run(tool, bins()?, &logs).await?));
        }
    }
    let values_json = (!value_results.is_empty()).then(|| values::report(&value_results));
    let document = json!({
        "quick": quick, "cpus": cpus, "postgresql": "15", "broker": format!("Apache Kafka {}", broker_label()),
        "debezium": debezium.then(debezium::version),
        "sizes": {"pgbench_scale": sizes.scale, "pgbench_transactions": sizes.pgbench_txns, "singles": sizes.singles,
                  "big_rows": sizes.big_rows, "live_changes_per_s": sizes.live_changes_per_s, "live_seconds": sizes.live_seconds},
        "runs": results,
        "values": values_json,
        "bootstrap": bootstrap_json,
    });
    std::fs::write(&out, serde_json::to_string_pretty(&document)?)?;
    println!("results: {}", out.display());
    if debezium {
        println!("Debezium's worker logs: {}", logs.display());
    }
    Ok(())
}
