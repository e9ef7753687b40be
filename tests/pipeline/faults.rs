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

/// The broker is down when the services start for the first time (no slot yet) while the application writes: the
/// stream must begin when capture starts, not when the broker answers, so that no write made meanwhile is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_start_with_the_broker_down_loses_no_write() -> anyhow::Result<()> {
    let mut broker = Broker::start()?;
    let options = Options { create_slot: false, ..items_options(2, "group_ms = 50") };
    let stack = Stack::new(BINS, broker.brokers(), options).await?;
    broker.kill()?;
    let capture = stack.spawn(Service::Capture, &["run"])?;
    let transform = stack.spawn(Service::Transform, &["run"])?;
    let apply = stack.spawn(Service::Apply, &["run"])?;
    // Capture takes its place on DB1 while the broker is still down.
    let db1 = stack.source().await?;
    wait::until("capture's slot on DB1, with the broker down", Duration::from_secs(30), || async {
        let row = db1.query_opt("SELECT 1 FROM pg_replication_slots WHERE database = current_database()", &[]).await?;
        Ok(row.map(|_| ()))
    })
    .await
    .with_context(|| capture.log())?;
    // One row per transaction, from then until after the broker is back.
    let writer = {
        let db1 = stack.source().await?;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let mut id = 0;
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                id += 1;
                db1.execute("INSERT INTO items VALUES ($1::int, 'v' || $1::int)", &[&id]).await?;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            anyhow::Ok(id)
        });
        (stop, task)
    };
    wait::until("capture to report waiting for the broker", Duration::from_secs(40), || async {
        Ok(capture.healthz().ok().filter(|body| body.starts_with("waiting: ")))
    })
    .await
    .with_context(|| capture.log())?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    broker.restart()?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    writer.0.store(true, std::sync::atomic::Ordering::Relaxed);
    let written = writer.1.await??;
    stack.marker("first start").await?;
    stack.wait_marker("first start", Duration::from_secs(120)).await.with_context(|| stack.logs())?;
    stack.assert_same(&["public.items"]).await.with_context(|| stack.logs())?;
    let log = capture.log();
    ensure!(
        log.contains("replication slot created: the stream begins at this position"),
        "capture did not say where the stream begins:\n{log}"
    );
    // While the broker was away each service said so in a few lines, not one per failed connection; and no client
    // was given a setting of the other kind (the stack passes consumer settings in kafka.librdkafka).
    for (name, log) in [("capture", capture.log()), ("transform", transform.log()), ("apply", apply.log())] {
        let noise = log
            .lines()
            .filter(|l| {
                ["AllBrokersDown", "BrokerTransportFailure", "Connection refused"].iter().any(|e| l.contains(e))
            })
            .count();
        eprintln!("{name}: {noise} log lines about the absent broker");
        ensure!(noise <= 30, "{name} wrote {noise} lines about the absent broker:\n{log}");
        ensure!(!log.contains("CONFWARN"), "{name} was given a setting that is not for its kind of client:\n{log}");
    }
    eprintln!("first start with the broker down: {written} single-row transactions, all on DB2");
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
    // The broker list points at a closed port: every service waits for it.
    let dead = format!("127.0.0.1:{}", pgm_test_support::free_port()?);
    let mut waiting = Vec::new();
    for service in [Service::Capture, Service::Transform, Service::Apply] {
        let running = stack.spawn_with_env(service, &["run"], &[("PGM__KAFKA__BROKERS", dead.as_str())])?;
        waiting.push((format!("{service:?} waiting for the broker"), running));
    }
    stop_while_waiting(&mut waiting).await?;
    // DB2 is down: apply waits for it.
    stack.db2.stop()?;
    let mut waiting = vec![("Apply waiting for DB2".to_owned(), stack.spawn(Service::Apply, &["run"])?)];
    stop_while_waiting(&mut waiting).await?;
    Ok(())
}

/// Each service says it waits, then a SIGTERM stops it within a second, exiting 0: a requested stop is no failure.
async fn stop_while_waiting(waiting: &mut [(String, pgm_test_support::stack::Running)]) -> anyhow::Result<()> {
    for (what, running) in waiting.iter() {
        wait::until(&format!("{what}: /healthz says waiting"), Duration::from_secs(30), || async {
            Ok(running.healthz().ok().filter(|body| body.starts_with("waiting: ")))
        })
        .await
        .with_context(|| running.log())?;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (what, running) in waiting.iter_mut() {
        ensure!(running.child.try_wait()?.is_none(), "{what}: gave up instead of waiting:\n{}", running.log());
    }
    for (what, running) in waiting.iter_mut() {
        let took = terminate(running).await?;
        let status = running.child.wait()?;
        eprintln!("SIGTERM: {what}: stopped in {} ms, {status}", took.as_millis());
        ensure!(took < Duration::from_millis(1500), "{what}: took {took:?} to stop:\n{}", running.log());
        ensure!(status.success(), "{what}: a requested stop exited with {status}:\n{}", running.log());
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
    // Apply has read the commit record and waits for the out topic no transform made: its health says so, naming
    // the topic, the table and the service that makes it, and so does its log.
    let out_topic = format!("{}.out.public.items", stack.prefix);
    let health = wait::until("apply to report the missing out topic", Duration::from_secs(30), || async {
        Ok(apply.healthz().ok().filter(|body| body.starts_with("waiting: ")))
    })
    .await
    .with_context(|| apply.log())?;
    ensure!(
        health.contains(&out_topic) && health.contains("public.items") && health.contains("pgm-transform creates"),
        "apply's health does not say what it waits for: {health}"
    );
    ensure!(apply.log().contains(&format!("waiting for the out topic {out_topic}")), "{}", apply.log());
    // The topic appears, but the transaction's records never come: health names the transaction and the partition.
    let admin = pgm_common::kafka::admin(&pgm_common::config::KafkaConfig::new(&stack.brokers), "pgm-tests")?;
    let topic = rdkafka::admin::NewTopic::new(&out_topic, 1, rdkafka::admin::TopicReplication::Fixed(1))
        .set("retention.ms", "-1");
    for result in admin.create_topics([&topic], &rdkafka::admin::AdminOptions::new()).await? {
        result.map_err(|(topic, code)| anyhow::anyhow!("create topic {topic}: {code}"))?;
    }
    let health = wait::until("apply to report the missing records", Duration::from_secs(30), || async {
        Ok(apply.healthz().ok().filter(|body| body.contains("still needs")))
    })
    .await
    .with_context(|| apply.log())?;
    ensure!(
        health.starts_with("waiting: ") && health.contains("still needs 10 record(s)") && health.contains(&out_topic),
        "apply's health does not name the records it waits for: {health}"
    );
    ensure!(apply.child.try_wait()?.is_none(), "apply exited:\n{}", apply.log());
    let took = terminate(&mut apply).await?;
    eprintln!("SIGTERM: apply stopped in {} ms while waiting for a transaction's records", took.as_millis());
    ensure!(took < Duration::from_secs(5), "apply took {took:?} to stop:\n{}", apply.log());
    ensure!(apply.child.wait()?.success(), "a requested stop is not a failure:\n{}", apply.log());
    let rows: i64 = stack.target().await?.query_one("SELECT count(*) FROM items", &[]).await?.get(0);
    ensure!(rows == 0, "DB2 got {rows} rows of a transaction whose records never all arrived");
    Ok(())
}
