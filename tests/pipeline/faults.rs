//! Riding out faults without a person: the whole pipeline keeps running through a broker that is not up yet when
//! the services start, and through a broker killed and restarted on its own data while rows are written.

use std::time::Duration;

use crate::BINS;
use anyhow::{ensure, Context};
use pgm_test_support::broker::Broker;
use pgm_test_support::stack::{Options, Service, Stack};
use pgm_test_support::wait;

const SCHEMA: &str = "CREATE TABLE items (id int PRIMARY KEY, v text NOT NULL);";
/// A rule naming the table, so that transform carries it whatever `transform.passthrough` says.
const RULES: &str = "[[table]]\nsource = \"public.items\"\n[[table.target]]\ntable = \"public.items\"\n";

/// One table `items`, carried through transform by a rule; the slot made at once.
fn items_options(partitions: i32, apply: &'static str) -> Options<'static> {
    Options {
        source_schema: SCHEMA,
        target_schema: SCHEMA,
        tables: &["public.items"],
        rules: Some(RULES),
        partitions,
        apply,
        librdkafka: "",
        create_slot: true,
    }
}

async fn insert(stack: &Stack, from: i32, to: i32) -> anyhow::Result<()> {
    stack
        .source()
        .await?
        .execute("INSERT INTO items SELECT g, 'v' || g FROM generate_series($1::int, $2::int) g", &[&from, &to])
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_ride_out_a_late_broker_and_a_broker_restart() -> anyhow::Result<()> {
    let mut broker = Broker::start()?;
    let options = items_options(2, "group_ms = 50");
    let stack = Stack::new(BINS, broker.brokers(), options).await?;

    // 1. The broker is not up when the services start.
    broker.kill()?;
    let mut capture = stack.spawn(Service::Capture, &["run"])?;
    let mut transform = stack.spawn(Service::Transform, &["run"])?;
    let mut apply = stack.spawn(Service::Apply, &["run"])?;
    insert(&stack, 1, 100).await?;
    // Each says on /healthz that it waits (alive: a supervisor must not restart it), and for what.
    for (name, running) in [("capture", &capture), ("transform", &transform), ("apply", &apply)] {
        wait::until(&format!("{name} to report waiting for the broker"), Duration::from_secs(40), || async {
            Ok(running.healthz().ok().filter(|body| body.starts_with("waiting: ")))
        })
        .await
        .with_context(|| running.log())?;
    }
    broker.restart()?;
    stack.marker("late broker").await?;
    stack.wait_marker("late broker", Duration::from_secs(120)).await?;
    for (name, running) in [("capture", &capture), ("transform", &transform), ("apply", &apply)] {
        wait::until(&format!("{name} to report ok once the broker is back"), Duration::from_secs(20), || async {
            Ok(running.healthz().ok().filter(|body| body == "ok"))
        })
        .await
        .with_context(|| running.log())?;
    }

    // 2. The broker is killed while rows are written, and restarted on its own data a few seconds later.
    insert(&stack, 101, 200).await?;
    broker.kill()?;
    insert(&stack, 201, 300).await?;
    tokio::time::sleep(Duration::from_secs(4)).await;
    broker.restart()?;
    insert(&stack, 301, 400).await?;
    stack.marker("restarted broker").await?;
    stack.wait_marker("restarted broker", Duration::from_secs(120)).await?;

    for (name, running) in [("capture", &mut capture), ("transform", &mut transform), ("apply", &mut apply)] {
        ensure!(running.child.try_wait()?.is_none(), "{name} exited and would need a person:\n{}", running.log());
    }
    stack.assert_same(&["public.items"]).await.with_context(|| stack.logs())?;
    let interrupted = transform.log().matches("transform interrupted").count();
    eprintln!("faults test: transform started over {interrupted} time(s); every service stayed up");
    Ok(())
}

/// Sends SIGTERM and returns how long the service took to exit.
async fn terminate(running: &mut pgm_test_support::stack::Running) -> anyhow::Result<Duration> {
    let pid = i32::try_from(running.child.id())?;
    let sent = std::time::Instant::now();
    ensure!(send_signal(pid, "TERM") == 0, "kill failed");
    let deadline = sent + Duration::from_secs(30);
    while running.child.try_wait()?.is_none() {
        ensure!(std::time::Instant::now() < deadline, "still running 30 s after SIGTERM:\n{}", running.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(sent.elapsed())
}

/// kill(1): the workspace denies unsafe code, so no libc::kill here.
fn send_signal(pid: i32, signal: &str) -> i32 {
    std::process::Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).status().map_or(-1, |s| {
        if s.success() {
            0
        } else {
            -1
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_waiting_for_an_unreachable_dependency_stop_on_sigterm() -> anyhow::Result<()> {
    let options = items_options(1, "");
    let mut stack = Stack::new(BINS, pgm_test_support::broker::shared_brokers()?, options).await?;
    // The broker list points at a closed port: capture and transform wait for it.
    let dead = format!("127.0.0.1:{}", pgm_test_support::free_port()?);
    let mut waiting = Vec::new();
    for service in [Service::Capture, Service::Transform] {
        waiting.push((service, stack.spawn_with_env(service, &["run"], &[("PGM__KAFKA__BROKERS", dead.as_str())])?));
    }
    // DB2 is down: apply waits for it.
    stack.db2.stop()?;
    waiting.push((Service::Apply, stack.spawn(Service::Apply, &["run"])?));
    tokio::time::sleep(Duration::from_secs(4)).await;
    for (service, running) in &mut waiting {
        ensure!(running.child.try_wait()?.is_none(), "{service:?} gave up instead of waiting:\n{}", running.log());
    }
    for (service, running) in &mut waiting {
        let took = terminate(running).await?;
        eprintln!("SIGTERM: {service:?} stopped in {} ms while waiting", took.as_millis());
        ensure!(took < Duration::from_secs(5), "{service:?} took {took:?} to stop:\n{}", running.log());
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_waiting_for_a_transactions_records_stops_on_sigterm_and_writes_nothing() -> anyhow::Result<()> {
    let options = items_options(1, "group_ms = 50");
    let stack = Stack::new(BINS, pgm_test_support::broker::shared_brokers()?, options).await?;
    // No transform: the commit record arrives, the out records it counts never do.
    let _capture = stack.spawn(Service::Capture, &["run"])?;
    let mut apply = stack.spawn(Service::Apply, &["run"])?;
    insert(&stack, 1, 10).await?;
    let db1 = stack.source().await?;
    let end: String = db1.query_one("SELECT pg_current_wal_lsn()::text", &[]).await?.get(0);
    wait::until("capture to have the transaction in Kafka", Duration::from_secs(60), || async {
        let row = db1
            .query_one(
                "SELECT coalesce(bool_and(confirmed_flush_lsn >= $1::text::pg_lsn), false) FROM pg_replication_slots",
                &[&end],
            )
            .await?;
        Ok(row.get::<_, bool>(0).then_some(()))
    })
    .await?;
    // Apply has read the commit record by now and waits in the out partition.
    tokio::time::sleep(Duration::from_secs(3)).await;
    ensure!(apply.child.try_wait()?.is_none(), "apply exited:\n{}", apply.log());
    let took = terminate(&mut apply).await?;
    eprintln!("SIGTERM: apply stopped in {} ms while waiting for a transaction's records", took.as_millis());
    ensure!(took < Duration::from_secs(5), "apply took {took:?} to stop:\n{}", apply.log());
    ensure!(apply.child.wait()?.success(), "a requested stop is not a failure:\n{}", apply.log());
    let rows: i64 = stack.target().await?.query_one("SELECT count(*) FROM items", &[]).await?.get(0);
    ensure!(rows == 0, "DB2 got {rows} rows of a transaction whose records never all arrived");
    Ok(())
}
