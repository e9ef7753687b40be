//! Riding out faults without a person: the whole pipeline keeps running through a broker that is not up yet when
//! the services start, and through a broker killed and restarted on its own data while rows are written.

use std::time::Duration;

use anyhow::{ensure, Context};
use pgm_test_support::broker::{Broker, Storage};
use pgm_test_support::stack::{Binaries, Options, Service, Stack};

const BINS: Binaries = Binaries {
    capture: env!("CARGO_BIN_EXE_pgm-test-capture"),
    transform: env!("CARGO_BIN_EXE_pgm-test-transform"),
    apply: env!("CARGO_BIN_EXE_pgm-test-apply"),
};

const SCHEMA: &str = "CREATE TABLE items (id int PRIMARY KEY, v text NOT NULL);";

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
    let mut broker = Broker::start(Storage::Sqlite)?;
    let options = Options {
        source_schema: SCHEMA,
        target_schema: SCHEMA,
        tables: &["public.items"],
        rules: None,
        partitions: 2,
        apply: "group_ms = 50",
        librdkafka: "",
        create_slot: true,
    };
    let stack = Stack::new(BINS, broker.brokers(), options).await?;

    // 1. The broker is not up when the services start.
    broker.kill()?;
    let mut capture = stack.spawn(Service::Capture, &["run"])?;
    let mut transform = stack.spawn(Service::Transform, &["run"])?;
    let mut apply = stack.spawn(Service::Apply, &["run"])?;
    insert(&stack, 1, 100).await?;
    tokio::time::sleep(Duration::from_secs(4)).await;
    broker.restart()?;
    stack.marker("late broker").await?;
    stack.wait_marker("late broker", Duration::from_secs(120)).await?;

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
