//! Tables the rules pass unchanged skip transform (`transform.passthrough = true`): apply reads their raw
//! records, so each of their changes is one broker record. A transaction touching a transformed table and a
//! passed-through one is still applied whole, in order; turning passthrough off (and on again) loses and doubles
//! nothing.

use std::time::Duration;

use crate::BINS;
use anyhow::{ensure, Context};
use pgm_test_support::broker::shared_brokers;
use pgm_test_support::kafka::{list_topics, read_all};
use pgm_test_support::stack::{Options, Service, Stack};

const SOURCE: &str = "
CREATE TABLE accounts (id int PRIMARY KEY, cents bigint NOT NULL);
CREATE TABLE notes (id int PRIMARY KEY, account int NOT NULL, body text, at timestamptz);
";
const TARGET: &str = "
CREATE TABLE accounts (id int PRIMARY KEY, amount numeric(20,2) NOT NULL);
CREATE TABLE notes (id int PRIMARY KEY, account int NOT NULL, body text, at timestamptz);
";
/// `accounts` is transformed (cents → amount); `notes` has no rule and passes unchanged.
const RULES: &str = r#"
[[table]]
source = "public.accounts"
[[table.target]]
table = "public.accounts"
[table.target.columns]
amount = { from = "cents", convert = "cents_to_numeric" }
"#;

/// Transactions that each touch both tables: inserts, updates (one of the key), deletes.
async fn write(stack: &Stack, from: i32, to: i32) -> anyhow::Result<()> {
    let db1 = stack.source().await?;
    for i in from..to {
        db1.batch_execute(&format!(
            "BEGIN;
             INSERT INTO accounts VALUES ({i}, {i} * 101);
             INSERT INTO notes VALUES ({i}, {i}, 'note ' || {i} || E' \\u00e9\\t\"q\"', '2026-11-30 12:00:00.123456+05:30');
             UPDATE notes SET body = NULL WHERE id = {i} - 3;
             UPDATE notes SET id = id + 100000 WHERE id = {i} - 5;
             DELETE FROM notes WHERE id = {i} - 7 + 100000;
             UPDATE accounts SET cents = cents + 1 WHERE id = {i} - 1;
             COMMIT;"
        ))
        .await?;
    }
    Ok(())
}

async fn assert_db2_equals_db1(stack: &Stack) -> anyhow::Result<()> {
    let (db1, db2) = (stack.source().await?, stack.target().await?);
    let notes = "SELECT n::text FROM notes n ORDER BY id";
    let a: Vec<String> = db1.query(notes, &[]).await?.iter().map(|r| r.get(0)).collect();
    let b: Vec<String> = db2.query(notes, &[]).await?.iter().map(|r| r.get(0)).collect();
    ensure!(a == b, "notes differ: DB1 {} rows, DB2 {} rows", a.len(), b.len());
    let accounts1 = "SELECT id, (cents / 100.0)::numeric(20,2)::text FROM accounts ORDER BY id";
    let accounts2 = "SELECT id, amount::text FROM accounts ORDER BY id";
    let a: Vec<(i32, String)> = db1.query(accounts1, &[]).await?.iter().map(|r| (r.get(0), r.get(1))).collect();
    let b: Vec<(i32, String)> = db2.query(accounts2, &[]).await?.iter().map(|r| (r.get(0), r.get(1))).collect();
    ensure!(a == b, "accounts differ: DB1 {} rows, DB2 {} rows", a.len(), b.len());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_the_rules_pass_unchanged_costs_one_broker_record_per_change() -> anyhow::Result<()> {
    let options = Options {
        source_schema: SOURCE,
        target_schema: TARGET,
        tables: &["public.accounts", "public.notes"],
        rules: Some(RULES),
        partitions: 2,
        apply: "group_ms = 50",
        librdkafka: "",
        create_slot: true,
    };
    let stack = Stack::new(BINS, shared_brokers()?, options).await?;
    stack.configure("transform", "passthrough = true")?;
    let _capture = stack.spawn(Service::Capture, &["run"])?;
    let mut transform = stack.spawn(Service::Transform, &["run"])?;
    let mut apply = stack.spawn(Service::Apply, &["run"])?;
    write(&stack, 1, 61).await?;
    stack.marker("passthrough").await?;
    stack.wait_marker("passthrough", Duration::from_secs(60)).await.with_context(|| stack.logs())?;
    assert_db2_equals_db1(&stack).await.with_context(|| stack.logs())?;

    let topics = tokio::task::block_in_place(|| list_topics(&stack.brokers, &stack.prefix))?;
    let (raw_notes, out_notes) =
        (format!("{}.raw.public.notes", stack.prefix), format!("{}.out.public.notes", stack.prefix));
    ensure!(topics.contains(&format!("{}.out.public.accounts", stack.prefix)), "accounts is transformed: {topics:?}");
    ensure!(!topics.contains(&out_notes), "notes passes unchanged, yet transform wrote {out_notes}: {topics:?}");
    // 60 inserts, 57 updates, 55 key updates and 53 deletes of notes: one broker record each, in its raw topic only.
    let notes_changes: usize = 60 + 57 + 55 + 53;
    let raw = tokio::task::block_in_place(|| read_all(&stack.brokers, &raw_notes))?;
    ensure!(raw.len() == notes_changes, "{} raw records of notes, expected {notes_changes}", raw.len());

    // Passthrough off: transform carries notes again and apply reads its out topic from the start, dropping what
    // it applied already; then on again.
    for passthrough in ["false", "true"] {
        transform.kill9()?;
        apply.kill9()?;
        let env = [("PGM__TRANSFORM__PASSTHROUGH", passthrough)];
        transform = stack.spawn_with_env(Service::Transform, &["run"], &env)?;
        apply = stack.spawn_with_env(Service::Apply, &["run"], &env)?;
        let from = if passthrough == "false" { 61 } else { 121 };
        write(&stack, from, from + 60).await?;
        let label = format!("passthrough {passthrough}");
        stack.marker(&label).await?;
        stack.wait_marker(&label, Duration::from_secs(60)).await.with_context(|| stack.logs())?;
        assert_db2_equals_db1(&stack).await.with_context(|| format!("{label}\n{}", stack.logs()))?;
    }
    let topics = tokio::task::block_in_place(|| list_topics(&stack.brokers, &stack.prefix))?;
    ensure!(topics.contains(&out_notes), "with passthrough off, transform writes {out_notes}");
    Ok(())
}
