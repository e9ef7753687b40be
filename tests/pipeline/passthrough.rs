//! Tables the rules pass unchanged skip the rewrite (`transform.passthrough`, on by default): transform declares in
//! the out partition which raw records pass unchanged, and apply takes those as captured, so each of their changes
//! is one broker record plus a share of a declaration. Apply follows the declarations, never its own configuration:
//! switching a table between the two paths under writes (transform restarted with other rules) loses and doubles
//! nothing, and a transaction touching a transformed table and a passed-through one is still applied whole.

use std::time::Duration;

use crate::BINS;
use anyhow::{ensure, Context};
use pgm_test_support::broker::shared_brokers;
use pgm_test_support::kafka::read_all;
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

/// Added to [`RULES`]: a rule naming `notes` that changes nothing, so transform rewrites it (one out record each).
const NOTES_REWRITTEN: &str = r#"
[[table]]
source = "public.notes"
[[table.target]]
table = "public.notes"
"#;

/// Transactions that each touch both tables: inserts, updates (one of the key), deletes.
async fn write(stack: &Stack, from: i32, to: i32) -> anyhow::Result<()> {
    let db1 = stack.source().await?;
    write_on(&db1, from, to).await
}

async fn write_on(db1: &tokio_postgres::Client, from: i32, to: i32) -> anyhow::Result<()> {
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
async fn transform_declares_passthrough_and_apply_follows_it_across_path_switches_under_writes() -> anyhow::Result<()> {
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
    let rewritten = stack.dir.path().join("rules-notes-rewritten.toml");
    std::fs::write(&rewritten, format!("{RULES}{NOTES_REWRITTEN}"))?;
    let rewritten = rewritten.display().to_string();
    let _capture = stack.spawn(Service::Capture, &["run"])?;
    let mut transform = stack.spawn(Service::Transform, &["run"])?;
    // Apply reads a configuration that says the opposite of what transform does (passthrough off, notes rewritten):
    // it must follow what transform declared in Kafka.
    let _apply = stack.spawn_with_env(
        Service::Apply,
        &["run"],
        &[("PGM__TRANSFORM__PASSTHROUGH", "false"), ("PGM__TRANSFORM__RULES", rewritten.as_str())],
    )?;
    write(&stack, 1, 61).await?;
    stack.marker("passthrough").await?;
    stack.wait_marker("passthrough", Duration::from_secs(60)).await.with_context(|| stack.logs())?;
    assert_db2_equals_db1(&stack).await.with_context(|| stack.logs())?;

    // notes passes unchanged: its out partitions hold declarations only, far fewer than its changes.
    let (raw_notes, out_notes) =
        (format!("{}.raw.public.notes", stack.prefix), format!("{}.out.public.notes", stack.prefix));
    let notes_changes: usize = 60 + 57 + 55 + 53;
    let raw = tokio::task::block_in_place(|| read_all(&stack.brokers, &raw_notes))?;
    ensure!(raw.len() == notes_changes, "{} raw records of notes, expected {notes_changes}", raw.len());
    let declarations = out_records(&stack, &out_notes)?;
    ensure!(
        declarations.iter().all(|r| r.pass_through.is_some() && r.ops.is_empty()),
        "transform wrote out records for a table the rules pass unchanged"
    );
    eprintln!("{notes_changes} changes of notes: {} declaration(s) in {out_notes}", declarations.len());
    ensure!(declarations.len() * 4 < notes_changes, "{} declarations for {notes_changes} changes", declarations.len());

    // Under a steady stream of writes, transform is restarted with the other rules, four times (stopped, and once
    // killed and given time for the group to drop it): notes moves between the two paths at whatever position each
    // transform starts from.
    let writer = {
        let db1 = stack.db1.pg_config(&stack.db1_name);
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let (client, connection) = db1.to_tokio_postgres("writer").connect(tokio_postgres::NoTls).await?;
            tokio::spawn(connection);
            let mut i = 61;
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                write_on(&client, i, i + 1).await?;
                i += 1;
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
            anyhow::Ok(i - 61)
        });
        (stop, task)
    };
    for round in 0..4 {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        if round == 2 {
            transform.kill9()?;
            tokio::time::sleep(Duration::from_secs(6)).await;
        } else {
            transform.terminate()?;
        }
        let env: &[(&str, &str)] = if round % 2 == 0 { &[("PGM__TRANSFORM__RULES", rewritten.as_str())] } else { &[] };
        transform = stack.spawn_with_env(Service::Transform, &["run"], env)?;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    writer.0.store(true, std::sync::atomic::Ordering::Relaxed);
    let written = writer.1.await??;
    stack.marker("switched").await?;
    stack.wait_marker("switched", Duration::from_secs(120)).await.with_context(|| stack.logs())?;
    assert_db2_equals_db1(&stack).await.with_context(|| stack.logs())?;
    let out = out_records(&stack, &out_notes)?;
    let (passed, rewritten): (Vec<_>, Vec<_>) = out.iter().partition(|r| r.pass_through.is_some());
    ensure!(
        !rewritten.is_empty() && passed.len() > declarations.len(),
        "both paths were used: {} declarations, {} out records",
        passed.len(),
        rewritten.len()
    );
    eprintln!(
        "{written} transactions while transform switched notes between the paths 4 times: {} declarations and {} \
         out records of notes; DB2 equals DB1 row for row",
        passed.len(),
        rewritten.len()
    );
    Ok(())
}

/// Every record of an out topic, decoded.
fn out_records(stack: &Stack, topic: &str) -> anyhow::Result<Vec<pgm_common::envelope::OutRecord>> {
    let records = tokio::task::block_in_place(|| read_all(&stack.brokers, topic))?;
    records
        .iter()
        .map(|r| {
            let origin = pgm_common::envelope::RecordOrigin { topic, partition: r.partition, offset: r.offset };
            Ok(pgm_common::envelope::OutRecord::decode(&r.value, origin)?)
        })
        .collect()
}

/// The source is written from the first moment, by four sessions at once, while capture creates the raw topics and
/// transform and apply are still joining: every passed-through change arrives, none is left out of a declaration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_from_the_first_moment_by_concurrent_sessions_all_arrive_through_passthrough() -> anyhow::Result<()> {
    const SCHEMA: &str = "
        CREATE TABLE branches (id int PRIMARY KEY, balance bigint NOT NULL);
        CREATE TABLE tellers (id int PRIMARY KEY, branch int NOT NULL, balance bigint NOT NULL);
        CREATE TABLE accounts (id int PRIMARY KEY, balance bigint NOT NULL);
        CREATE TABLE history (teller int, account int, delta bigint, at timestamptz);
        ALTER TABLE history REPLICA IDENTITY FULL;
        CREATE TABLE marker (id int PRIMARY KEY);
        CREATE TABLE idle (id int PRIMARY KEY);
        INSERT INTO branches SELECT g, 0 FROM generate_series(1, 4) g;
        INSERT INTO tellers SELECT g, g % 4 + 1, 0 FROM generate_series(1, 40) g;
        INSERT INTO accounts SELECT g, 0 FROM generate_series(1, 4000) g;
    ";
    let tables =
        ["public.branches", "public.tellers", "public.accounts", "public.history", "public.marker", "public.idle"];
    let options = Options {
        source_schema: SCHEMA,
        target_schema: SCHEMA,
        tables: &tables,
        rules: None,
        partitions: 4,
        apply: "",
        librdkafka: "",
        create_slot: true,
    };
    // A broker of its own, started now, as a fresh deployment's.
    let broker = pgm_test_support::broker::Broker::start()?;
    let stack = Stack::new(BINS, broker.brokers(), options).await?;
    let _capture = stack.spawn(Service::Capture, &["run"])?;
    let _transform = stack.spawn(Service::Transform, &["run"])?;
    let _apply = stack.spawn(Service::Apply, &["run"])?;
    let mut writers = Vec::new();
    for session in 0..4 {
        let db1 = stack.db1.pg_config(&stack.db1_name);
        writers.push(tokio::spawn(async move {
            let (client, connection) = db1.to_tokio_postgres("writer").connect(tokio_postgres::NoTls).await?;
            tokio::spawn(connection);
            for i in 0..600 {
                let (teller, account, delta) =
                    ((i * 7 + session) % 40 + 1, (i * 13 + session * 1000) % 4000 + 1, i - 300);
                client
                    .batch_execute(&format!(
                        "BEGIN;
                         UPDATE accounts SET balance = balance + {delta} WHERE id = {account};
                         UPDATE tellers SET balance = balance + {delta} WHERE id = {teller};
                         UPDATE branches SET balance = balance + {delta} WHERE id = {teller} % 4 + 1;
                         INSERT INTO history VALUES ({teller}, {account}, {delta}, clock_timestamp());
                         COMMIT;"
                    ))
                    .await?;
            }
            anyhow::Ok(())
        }));
    }
    for writer in writers {
        writer.await??;
    }
    stack.source().await?.batch_execute("INSERT INTO marker VALUES (1)").await?;
    stack.marker("all").await?;
    let arrived = stack.wait_marker("all", Duration::from_secs(120)).await;
    if arrived.is_err() {
        // Where each out topic's declarations start, against its raw topic's first records.
        let mut report = String::new();
        for table in tables {
            let out = out_records(&stack, &format!("{}.out.{table}", stack.prefix))?;
            let raw =
                tokio::task::block_in_place(|| read_all(&stack.brokers, &format!("{}.raw.{table}", stack.prefix)))?;
            let first_raw: Vec<String> = raw
                .iter()
                .take(4)
                .map(|r| format!("[{}]@{} {}", r.partition, r.offset, String::from_utf8_lossy(&r.key)))
                .collect();
            let declared: Vec<String> =
                out.iter().take(6).map(|r| format!("{} ..= {:?}", r.pos, r.pass_through)).collect();
            report.push_str(&format!("{table}: first raw records {first_raw:?}; first declarations {declared:?}\n"));
        }
        arrived.with_context(|| format!("{report}{}", stack.logs()))?;
    }
    stack.assert_same(&tables).await.with_context(|| stack.logs())?;
    Ok(())
}
