//! Chaos: the whole pipeline as processes under a live workload while kill -9 hits a random component — capture,
//! either of two transform workers, apply, the broker (restarted on its own data), DB1 or DB2 (crashed and
//! restarted) — every few seconds, each restarted at once as a supervisor would. No step needs a person. After the
//! faults the stream drains and DB2 must equal DB1 row by row.
//!
//! The suite runs 12 faults; `PGM_CHAOS_FAULTS=60` (and `PGM_CHAOS_SEED`) a long round:
//! `PGM_CHAOS_FAULTS=60 cargo test -p pgm-tests --test pipeline chaos -- --nocapture`. The faults are a shuffled mix
//! in fixed shares (of every 7: the broker, capture, apply, DB1, DB2 once each, a transform worker twice), so 60
//! faults hold 9 broker kills. The transform workers are static members (`transform.instance_id`): a restarted
//! worker takes its own partitions back. Figures are printed: faults per component, the share of the workload that
//! reached DB2 while the faults ran, the recovery after the last fault, and the drain rate of the same backlog (8 s
//! of workload with apply stopped) before and after the faults.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::BINS;
use anyhow::Context;
use pgm_test_support::broker::Broker;
use pgm_test_support::stack::{Options, Running, Service, Stack};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

const SCHEMA: &str = "
CREATE TABLE accounts (id int PRIMARY KEY, balance bigint NOT NULL, note text);
CREATE TABLE events (id bigserial PRIMARY KEY, acct int NOT NULL, delta bigint NOT NULL, at timestamptz NOT NULL);
";
const TABLES: [&str; 2] = ["public.accounts", "public.events"];
/// `events` goes through transform (a rule names it), `accounts` passes unchanged (capture → apply directly): the
/// faults hit both paths.
const RULES: &str = "[[table]]\nsource = \"public.events\"\n[[table.target]]\ntable = \"public.events\"\n";

/// A pgbench-like writer: transfers between accounts with an event row each, some inserts and deletes. It
/// reconnects after DB1 crashes; DB1's final state is the truth the test compares against.
fn workload(
    db1: pgm_common::config::PgConfig,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let mut client: Option<tokio_postgres::Client> = None;
        while !stop.load(Ordering::Relaxed) {
            if client.as_ref().is_none_or(|c| c.is_closed()) {
                client = db1.connect("chaos-workload").await.ok();
                if client.is_none() {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            }
            let (a, b, amount) = (rng.random_range(1..=200), rng.random_range(1..=200), rng.random_range(1..100));
            let sql = match rng.random_range(0..10) {
                0 => format!("INSERT INTO accounts VALUES ({}, 0, 'new') ON CONFLICT (id) DO UPDATE SET note = 'again'", 1000 + a),
                1 => format!("DELETE FROM accounts WHERE id = {}", 1000 + a),
                _ => format!(
                    "BEGIN; UPDATE accounts SET balance = balance - {amount} WHERE id = {a};
                     UPDATE accounts SET balance = balance + {amount} WHERE id = {b};
                     INSERT INTO events (acct, delta, at) VALUES ({a}, -{amount}, now()), ({b}, {amount}, now()); COMMIT;"
                ),
            };
            match client.as_ref().expect("connected").batch_execute(&sql).await {
                Ok(()) => {
                    done.fetch_add(1, Ordering::Relaxed);
                }
                Err(_) => client = None,
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
}

/// Rows of `events` on DB1 and on DB2 (every transfer writes two).
async fn events(stack: &Stack) -> anyhow::Result<(i64, i64)> {
    let count = "SELECT count(*) FROM events";
    let db1: i64 = stack.source().await?.query_one(count, &[]).await?.get(0);
    let db2: i64 = stack.target().await?.query_one(count, &[]).await?.get(0);
    Ok((db1, db2))
}

/// A drain of DB2's backlog with the workload stopped: the rows behind, seconds until DB2 moved, seconds from then
/// until it caught up.
struct Drain {
    rows: i64,
    recovery: f64,
    catch_up: f64,
}

impl Drain {
    async fn measure(stack: &Stack, timeout: Duration) -> anyhow::Result<Drain> {
        let started = Instant::now();
        let (target, first) = events(stack).await?;
        let mut moved: Option<Instant> = None;
        loop {
            let (_, now) = events(stack).await?;
            if now > first && moved.is_none() {
                moved = Some(Instant::now());
            }
            if now >= target {
                let moved = moved.unwrap_or_else(Instant::now);
                return Ok(Drain {
                    rows: target - first,
                    recovery: moved.duration_since(started).as_secs_f64(),
                    catch_up: moved.elapsed().as_secs_f64(),
                });
            }
            anyhow::ensure!(
                started.elapsed() < timeout,
                "DB2 did not catch up in {timeout:?} ({now} of {target} events)"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn rate(&self) -> f64 {
        self.rows as f64 / self.catch_up.max(0.001)
    }
}

/// Stops apply, runs the workload for 8 s, starts apply again and times the drain of that backlog.
async fn backlog_then_drain(stack: &Stack, apply: &mut Running) -> anyhow::Result<Drain> {
    apply.kill9()?;
    let stop = Arc::new(AtomicBool::new(false));
    let writer = workload(stack.db1.pg_config(&stack.db1_name), stop.clone(), Arc::default());
    tokio::time::sleep(Duration::from_secs(8)).await;
    stop.store(true, Ordering::Relaxed);
    writer.await?;
    // Capture and transform have the backlog in Kafka by now: what is timed is the drain into DB2.
    tokio::time::sleep(Duration::from_secs(2)).await;
    *apply = stack.spawn(Service::Apply, &["run"])?;
    Drain::measure(stack, Duration::from_secs(120)).await.with_context(|| stack.logs())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_every_component_killed_at_random_and_db2_still_equals_db1() -> anyhow::Result<()> {
    let faults: usize = std::env::var("PGM_CHAOS_FAULTS").ok().and_then(|v| v.parse().ok()).unwrap_or(12);
    let mut broker = Broker::start()?;
    let options = Options {
        source_schema: SCHEMA,
        target_schema: SCHEMA,
        tables: &TABLES,
        rules: Some(RULES),
        partitions: 2,
        apply: "group_ms = 50",
        librdkafka: "",
        create_slot: true,
    };
    let mut stack = Stack::new(BINS, broker.brokers(), options).await?;
    stack.configure("transform", "passthrough = true")?;
    stack
        .source()
        .await?
        .batch_execute("INSERT INTO accounts SELECT g, 1000, 'acct' FROM generate_series(1, 200) g")
        .await?;
    let mut capture = stack.spawn(Service::Capture, &["run"])?;
    let worker = |stack: &Stack, i: usize| {
        let name = format!("transform-{i}");
        stack.spawn_with_env(Service::Transform, &["run"], &[("PGM__TRANSFORM__INSTANCE_ID", name.as_str())])
    };
    let mut transforms = [worker(&stack, 0)?, worker(&stack, 1)?];
    let mut apply = stack.spawn(Service::Apply, &["run"])?;
    stack.marker("started").await?;
    stack.wait_marker("started", Duration::from_secs(60)).await?;
    // Baseline without faults: a backlog apply drains.
    let baseline = backlog_then_drain(&stack, &mut apply).await?;

    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let writer = workload(stack.db1.pg_config(&stack.db1_name), stop.clone(), done.clone());

    let mut rng = rand::rngs::StdRng::seed_from_u64(
        std::env::var("PGM_CHAOS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(5),
    );
    const MIX: [&str; 7] = ["broker", "transform", "capture", "apply", "db1", "transform", "db2"];
    let mut schedule: Vec<&str> = (0..faults).map(|i| MIX[i % MIX.len()]).collect();
    schedule.shuffle(&mut rng);
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    let (db1_before, db2_before) = events(&stack).await?;
    let started = Instant::now();
    for victim in schedule {
        tokio::time::sleep(Duration::from_millis(rng.random_range(1000..3000))).await;
        let restart = |running: &mut Running, stack: &Stack, service: Service| -> anyhow::Result<()> {
            running.kill9()?;
            *running = stack.spawn(service, &["run"])?;
            Ok(())
        };
        match victim {
            "capture" => restart(&mut capture, &stack, Service::Capture)?,
            "transform" => {
                let i = rng.random_range(0..2);
                transforms[i].kill9()?;
                transforms[i] = worker(&stack, i)?;
            }
            "apply" => restart(&mut apply, &stack, Service::Apply)?,
            "broker" => {
                broker.kill()?;
                broker.restart()?;
            }
            "db1" => {
                stack.db1.crash()?;
                stack.db1.restart()?;
            }
            _ => {
                stack.db2.crash()?;
                stack.db2.restart()?;
            }
        }
        *counts.entry(victim).or_default() += 1;
    }
    let fault_phase = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    writer.await?;
    let written = done.load(Ordering::Relaxed);
    // How much of what DB1 took while the faults ran had reached DB2 when they ended.
    let (db1_after, db2_after) = events(&stack).await?;
    let share = (db2_after - db2_before) as f64 / (db1_after - db1_before).max(1) as f64;

    // Nobody is restarted by hand from here: the services must recover by themselves.
    let drain_started = Instant::now();
    let recovery = Drain::measure(&stack, Duration::from_secs(300)).await.with_context(|| stack.logs())?;
    stack.marker("chaos over").await?;
    stack.wait_marker("chaos over", Duration::from_secs(300)).await?;
    let drain = drain_started.elapsed();
    // The same backlog as the baseline, on the pipeline the faults left behind (topics with repeats, restarted
    // workers, a broker restarted on its data): is it slower than before?
    let after = backlog_then_drain(&stack, &mut apply).await?;
    stack.assert_same(&["public.accounts", "public.events"]).await.with_context(|| stack.logs())?;
    for (name, running) in [("capture", &mut capture), ("apply", &mut apply)] {
        anyhow::ensure!(running.child.try_wait()?.is_none(), "{name} exited:\n{}", running.log());
    }
    for running in &mut transforms {
        anyhow::ensure!(running.child.try_wait()?.is_none(), "a transform worker exited:\n{}", running.log());
    }
    eprintln!(
        "chaos: {faults} faults in {:.0} s ({counts:?}), {written} transactions written ({:.0}/s), drained in {:.1} s \
         after the last fault; DB2 equals DB1",
        fault_phase.as_secs_f64(),
        written as f64 / fault_phase.as_secs_f64(),
        drain.as_secs_f64()
    );
    eprintln!(
        "chaos load share: {} of {} event rows written during the faults ({:.0} %) were on DB2 when the last fault \
         ended",
        db2_after - db2_before,
        db1_after - db1_before,
        share * 100.0
    );
    eprintln!(
        "chaos recovery: at the last fault DB2 was {} event rows behind; it moved again after {:.1} s and caught up \
         {:.1} s later",
        recovery.rows, recovery.recovery, recovery.catch_up,
    );
    eprintln!(
        "chaos drain rate: a backlog of {} rows drained at {:.0} rows/s after the faults, {} rows at {:.0} rows/s \
         before them: ratio {:.2}",
        after.rows,
        after.rate(),
        baseline.rows,
        baseline.rate(),
        after.rate() / baseline.rate()
    );
    Ok(())
}
