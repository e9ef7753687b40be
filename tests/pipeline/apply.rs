//! pgm-apply on two real PostgreSQL 15 clusters, the broker, and the real capture and transform services:
//! row-by-row equality after a mixed workload, the prefix property, kill -9 at random moments, pause across a
//! restart, --until, reset's refusal, and a broken target that is fixed while apply waits.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::BINS;
use anyhow::{ensure, Context};
use pgm_common::envelope::{RecordOrigin, TxnRecord};
use pgm_common::Lsn;
use pgm_test_support::broker::shared_brokers;
use pgm_test_support::kafka::read_until;
use pgm_test_support::stack::{Options, Running, Service, Stack};
use pgm_test_support::wait;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio_postgres::Client;

const SCHEMA: &str = "
CREATE TABLE accounts (id bigint PRIMARY KEY, balance bigint NOT NULL, note text);
CREATE TABLE docs (id int PRIMARY KEY, title text, body text, version int NOT NULL DEFAULT 0);
ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL;
CREATE TABLE lines (tenant int, id int, qty numeric(40,12), at timestamptz, data bytea, tags text[], meta jsonb,
                    PRIMARY KEY (tenant, id));
CREATE TABLE hist (acct bigint, delta bigint, at timestamptz);
ALTER TABLE hist REPLICA IDENTITY FULL;
";
const TABLES: [&str; 4] = ["public.accounts", "public.docs", "public.lines", "public.hist"];
const ACCOUNTS: i64 = 200;
const TOTAL: i64 = ACCOUNTS * 1000;

async fn stack(apply: &str) -> anyhow::Result<Stack> {
    let options = Options {
        source_schema: SCHEMA,
        target_schema: SCHEMA,
        tables: &TABLES,
        rules: None,
        partitions: 3,
        apply,
        librdkafka: "",
        create_slot: true,
    };
    Stack::new(BINS, shared_brokers()?, options).await
}

/// The source workload, one transaction per step; every transfer keeps the sum of balances at TOTAL.
struct Workload {
    rng: StdRng,
    accounts: Vec<i64>,
    next_account: i64,
    docs: Vec<i32>,
    next_doc: i32,
    next_line: i32,
}

impl Workload {
    async fn new(db1: &Client, seed: u64) -> anyhow::Result<Self> {
        db1.batch_execute(&format!(
            "INSERT INTO accounts SELECT g, 1000, 'acct ' || g FROM generate_series(1, {ACCOUNTS}) g;
             INSERT INTO hist VALUES (0, 0, '2026-01-01 00:00:00+00'), (0, 0, '2026-01-01 00:00:00+00');"
        ))
        .await?;
        Ok(Workload {
            rng: StdRng::seed_from_u64(seed),
            accounts: (1..=ACCOUNTS).collect(),
            next_account: 1_000_000,
            docs: Vec::new(),
            next_doc: 1,
            next_line: 1,
        })
    }

    fn pick_account(&mut self) -> (usize, i64) {
        let i = self.rng.random_range(0..self.accounts.len());
        (i, self.accounts[i])
    }

    async fn transfer(&mut self, db1: &Client) -> anyhow::Result<()> {
        let (_, from) = self.pick_account();
        let (_, to) = self.pick_account();
        let amount = self.rng.random_range(1..50i64);
        db1.batch_execute(&format!(
            "BEGIN;
             UPDATE accounts SET balance = balance - {amount} WHERE id = {from};
             UPDATE accounts SET balance = balance + {amount} WHERE id = {to};
             INSERT INTO hist VALUES ({from}, -{amount}, now()), ({to}, {amount}, now());
             COMMIT;"
        ))
        .await?;
        Ok(())
    }

    async fn step(&mut self, db1: &Client, mixed: bool) -> anyhow::Result<()> {
        let choice = if mixed { self.rng.random_range(0..10) } else { self.rng.random_range(0..6) };
        match choice {
            0..=3 => self.transfer(db1).await?,
            4 => {
                // Key update: the row moves to a new key, its balance with it.
                let (i, old) = self.pick_account();
                let new = self.next_account;
                self.next_account += 1;
                db1.execute("UPDATE accounts SET id = $2 WHERE id = $1", &[&old, &new]).await?;
                self.accounts[i] = new;
            }
            5 => {
                let body: String =
                    (0..if mixed { 120_000 } else { 2_000 }).map(|_| self.rng.random_range('a'..='z')).collect();
                let id = self.next_doc;
                self.next_doc += 1;
                db1.execute("INSERT INTO docs (id, title, body) VALUES ($1, 'draft', $2)", &[&id, &body]).await?;
                self.docs.push(id);
            }
            6 if !self.docs.is_empty() => {
                // Only non-TOAST columns change: wal2json leaves the unchanged body out; apply must not touch it.
                let id = self.docs[self.rng.random_range(0..self.docs.len())];
                db1.execute(
                    "UPDATE docs SET title = 'edited ' || version, version = version + 1 WHERE id = $1",
                    &[&id],
                )
                .await?;
            }
            7 if self.docs.len() > 3 => {
                let id = self.docs.swap_remove(self.rng.random_range(0..self.docs.len()));
                db1.execute("DELETE FROM docs WHERE id = $1", &[&id]).await?;
            }
            8 => {
                let tenant = self.rng.random_range(0..3);
                let first = self.next_line;
                self.next_line += 50;
                db1.execute(
                    "INSERT INTO lines SELECT $1, g, ('12345678901234567890.' || lpad(g::text, 12, '0'))::numeric,
                            '2026-03-04 05:06:07.123456+05:30'::timestamptz + g * interval '1 minute',
                            decode(md5(g::text), 'hex') || '\\x00ff'::bytea,
                            ARRAY['a,b', 'q\"uote', NULL, g::text],
                            jsonb_build_object('g', g, 'nested', jsonb_build_array(1.50, 'x'))
                     FROM generate_series($2::int, $2::int + 49) g",
                    &[&tenant, &first],
                )
                .await?;
            }
            9 => {
                let tenant = self.rng.random_range(0..3);
                db1.batch_execute(&format!(
                    "BEGIN;
                     UPDATE lines SET qty = qty + 0.000000000001 WHERE tenant = {tenant} AND id % 7 = 0;
                     DELETE FROM lines WHERE tenant = {tenant} AND id % 11 = 0;
                     COMMIT;"
                ))
                .await?;
            }
            _ => self.transfer(db1).await?,
        }
        Ok(())
    }
}

/// Reads DB2 while apply replays: the sum of balances must always be TOTAL (or the accounts not there yet).
struct PrefixChecker {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<anyhow::Result<(u64, Vec<String>)>>,
}

impl PrefixChecker {
    async fn start(stack: &Stack) -> anyhow::Result<Self> {
        let db2 = stack.target().await?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let (mut reads, mut violations) = (0u64, Vec::new());
            while !flag.load(Ordering::Relaxed) {
                // Before apply's first commit the table may be empty; after it, the sum is fixed.
                if let Ok(row) = db2
                    .query_one(
                        "SELECT count(*), coalesce(sum(balance), 0)::bigint, \
                                (SELECT coalesce(sum(delta), 0)::bigint FROM hist) FROM accounts",
                        &[],
                    )
                    .await
                {
                    let (count, sum, deltas): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
                    if count > 0 {
                        reads += 1;
                        if sum != TOTAL || deltas != 0 || count != ACCOUNTS {
                            violations.push(format!("count {count}, sum {sum}, hist deltas {deltas}"));
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Ok((reads, violations))
        });
        Ok(PrefixChecker { stop, task })
    }

    /// Number of reads that saw the accounts; fails on any read that saw half a transaction.
    async fn finish(self) -> anyhow::Result<u64> {
        self.stop.store(true, Ordering::Relaxed);
        let (reads, violations) = self.task.await??;
        ensure!(
            violations.is_empty(),
            "DB2 showed a partial source transaction: {:?}",
            &violations[..violations.len().min(5)]
        );
        Ok(reads)
    }
}

fn start_pipeline(stack: &Stack) -> anyhow::Result<(Running, Running)> {
    Ok((stack.spawn(Service::Capture, &["run"])?, stack.spawn(Service::Transform, &["run"])?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_workload_replays_row_by_row_equal_and_never_shows_half_a_transaction() -> anyhow::Result<()> {
    let stack = stack("").await?;
    let _pipeline = start_pipeline(&stack)?;
    let _apply = stack.spawn(Service::Apply, &["run"])?;
    let db1 = stack.source().await?;
    let mut workload = Workload::new(&db1, 7).await?;
    let checker = PrefixChecker::start(&stack).await?;
    for step in 0..400 {
        if step == 200 {
            db1.batch_execute("TRUNCATE lines").await?;
        }
        // The keyless table holds two identical rows: an update and a delete must each touch exactly one.
        if step == 100 {
            db1.batch_execute("UPDATE hist SET at = at + interval '1 day' WHERE ctid = (SELECT ctid FROM hist WHERE acct = 0 LIMIT 1)").await?;
            db1.batch_execute("INSERT INTO hist VALUES (0, 0, '2026-01-01 00:00:00+00')").await?;
        }
        if step == 300 {
            db1.batch_execute("DELETE FROM hist WHERE ctid = (SELECT ctid FROM hist WHERE acct = 0 AND at = '2026-01-01 00:00:00+00' LIMIT 1)").await?;
        }
        workload.step(&db1, true).await?;
    }
    stack.marker("drained").await?;
    stack.wait_marker("drained", Duration::from_secs(180)).await?;
    let reads = checker.finish().await?;
    ensure!(reads > 10, "the prefix checker saw the accounts only {reads} times");
    stack.assert_same(&TABLES).await?;
    no_stray_records(&stack)?;

    // The TOAST column was never touched by title-only updates, and some docs were edited.
    let db2 = stack.target().await?;
    let edited: i64 =
        db2.query_one("SELECT count(*) FROM docs WHERE version > 0 AND length(body) = 120000", &[]).await?.get(0);
    ensure!(edited > 0, "no edited document with its body intact");
    // DB2's WAL marks apply's transactions with its replication origin.
    let origin: Option<String> = db2
        .query_one(
            "SELECT remote_lsn::text FROM pg_replication_origin_status s JOIN pg_replication_origin o \
             ON o.roident = s.local_id WHERE o.roname = $1",
            &[&format!("pgm_{}", stack.prefix)],
        )
        .await?
        .get(0);
    let origin: Lsn = origin.context("origin has no progress")?.parse()?;
    let applied: String = db2
        .query_one("SELECT applied_end_lsn::text FROM pgm.apply_progress WHERE pipeline = $1", &[&stack.prefix])
        .await?
        .get(0);
    ensure!(origin == applied.parse::<Lsn>()?, "origin progress {origin} differs from the applied end LSN {applied}");

    // Kafka lag tools see apply's position: its group's committed txn-topic offset follows DB2's, which is written
    // first (apply keeps running, so read Kafka's, then DB2's: 0 < Kafka's <= DB2's).
    let config = pgm_common::config::PipelineConfig::load(stack.config_path())?;
    let consumer: rdkafka::consumer::BaseConsumer =
        pgm_common::kafka::consumer_config(&config.kafka, "lag-check", &config.apply.group_id).create()?;
    let mut list = rdkafka::TopicPartitionList::new();
    list.add_partition(&format!("{}.txn", stack.prefix), 0);
    let committed = tokio::task::block_in_place(|| {
        rdkafka::consumer::Consumer::committed_offsets(&consumer, list, Duration::from_secs(10))
    })?;
    let offset = committed.elements().first().and_then(|e| e.offset().to_raw());
    let stored: i64 =
        db2.query_one("SELECT txn_offset FROM pgm.apply_progress WHERE pipeline = $1", &[&stack.prefix]).await?.get(0);
    ensure!(offset.is_some_and(|o| o > 0 && o <= stored), "committed txn offset {offset:?}, DB2 says {stored}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_killed_at_random_moments_loses_and_doubles_nothing() -> anyhow::Result<()> {
    let stack = stack("group_ms = 100").await?;
    let _pipeline = start_pipeline(&stack)?;
    let db1 = stack.source().await?;
    let mut workload = Workload::new(&db1, 11).await?;
    let done = Arc::new(AtomicBool::new(false));
    let steps = Arc::new(AtomicU64::new(0));
    let writer = {
        let (done, steps) = (done.clone(), steps.clone());
        tokio::spawn(async move {
            // About 300 transactions a second: the pipeline keeps up, so the drain stays short.
            while !done.load(Ordering::Relaxed) {
                workload.step(&db1, false).await?;
                steps.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
            anyhow::Ok(())
        })
    };
    let checker = PrefixChecker::start(&stack).await?;
    let mut rng = StdRng::seed_from_u64(3);
    let mut apply = stack.spawn(Service::Apply, &["run"])?;
    let db2 = stack.target().await?;
    let applied = || async {
        let row = db2
            .query_opt("SELECT applied_lsn::text FROM pgm.apply_progress WHERE pipeline = $1", &[&stack.prefix])
            .await?;
        anyhow::Ok(row.map(|r| r.get::<_, String>(0)).unwrap_or_default())
    };
    // The kills start once the pipeline flows (transform joined its group and made its out topics), so that each
    // interval between kills is one in which apply could make progress.
    pgm_test_support::wait::until("apply's first transaction on DB2", Duration::from_secs(60), || async {
        Ok(applied().await.ok().filter(|lsn| !lsn.is_empty() && lsn != "0/0").map(|_| ()))
    })
    .await?;
    let mut progressed = BTreeSet::new();
    for _ in 0..12 {
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..1500))).await;
        apply.kill9()?;
        progressed.insert(applied().await?);
        apply = stack.spawn(Service::Apply, &["run"])?;
    }
    done.store(true, Ordering::Relaxed);
    writer.await??;
    stack.marker("after-kills").await?;
    stack.wait_marker("after-kills", Duration::from_secs(180)).await?;
    checker.finish().await?;
    stack.assert_same(&TABLES).await?;
    no_stray_records(&stack)?;
    ensure!(
        progressed.len() >= 6,
        "apply made progress between only {} of 12 kills:\n{}",
        progressed.len(),
        stack.logs()
    );
    println!(
        "{} workload transactions, 12 kills, applied positions at kills: {}",
        steps.load(Ordering::Relaxed),
        progressed.len()
    );
    Ok(())
}

/// Apply's partitions each have their own queue from the moment they are assigned: a record on the consumer's main
/// queue would restart the session (safe, but a partition opened while records flow must not cost a restart).
fn no_stray_records(stack: &Stack) -> anyhow::Result<()> {
    let logs = stack.logs();
    let strays = logs.matches("outside its partition queue").count();
    ensure!(strays == 0, "{strays} records reached apply's main queue:\n{logs}");
    Ok(())
}

/// Commit LSNs of the first `n` transactions that wrote to the carried tables, in order, from the txn topic.
fn commit_lsns(stack: &Stack, n: usize) -> anyhow::Result<Vec<Lsn>> {
    let topic = format!("{}.txn", stack.prefix);
    let mut out: Vec<Lsn> = Vec::new();
    let mut decode_error = None;
    read_until(&stack.brokers, &topic, Duration::from_secs(60), |records| {
        let record = records.last().expect("called after each record");
        let origin = RecordOrigin { topic: &topic, partition: 0, offset: record.offset };
        match TxnRecord::decode(&record.value, origin) {
            Ok(TxnRecord::Commit { commit_lsn, counts, .. }) => {
                if !counts.is_empty() && out.last().is_none_or(|l| *l < commit_lsn) {
                    out.push(commit_lsn);
                }
            }
            Ok(_) => {}
            Err(error) => decode_error = Some(error),
        }
        out.len() >= n || decode_error.is_some()
    })?;
    if let Some(error) = decode_error {
        return Err(error.into());
    }
    Ok(out)
}

async fn account_ids(db2: &Client) -> anyhow::Result<Vec<i64>> {
    let rows = db2.query("SELECT id FROM accounts ORDER BY id", &[]).await.unwrap_or_default();
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

fn wait_exit(running: &mut Running, timeout: Duration) -> anyhow::Result<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = running.child.try_wait()? {
            return Ok(status);
        }
        ensure!(Instant::now() < deadline, "process still running after {timeout:?}:\n{}", running.log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn stdout(output: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn until_stops_exactly_and_pause_survives_a_restart() -> anyhow::Result<()> {
    let stack = stack("").await?;
    let _pipeline = start_pipeline(&stack)?;
    let db1 = stack.source().await?;
    for id in 1..=20i64 {
        db1.execute("INSERT INTO accounts VALUES ($1, 1000, 'one')", &[&id]).await?;
    }
    let commits = tokio::task::block_in_place(|| commit_lsns(&stack, 20))?;

    // --until the 7th transaction: exactly accounts 1..=7, and the process exits by itself.
    let until = commits[6].to_string();
    let mut apply = stack.spawn(Service::Apply, &["run", "--until", &until])?;
    let status = tokio::task::block_in_place(|| wait_exit(&mut apply, Duration::from_secs(60)))?;
    ensure!(status.success(), "apply --until failed:\n{}", apply.log());
    let db2 = stack.target().await?;
    ensure!(
        account_ids(&db2).await? == (1..=7).collect::<Vec<_>>(),
        "after --until {until}: {:?}",
        account_ids(&db2).await?
    );

    // Paused before start: nothing moves, across a kill -9 and a restart.
    let out = stack.run(Service::Apply, &["pause"])?;
    ensure!(out.status.success(), "{}", stdout(&out));
    let mut apply = stack.spawn(Service::Apply, &["run"])?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    ensure!(account_ids(&db2).await?.len() == 7, "a paused apply applied changes");
    let status = stack.run(Service::Apply, &["status"])?;
    ensure!(stdout(&status).contains("paused       yes"), "status:\n{}", stdout(&status));
    ensure!(stdout(&status).contains("apply connected"), "status:\n{}", stdout(&status));
    // Reset is refused while apply runs.
    let out = stack.run(Service::Apply, &["reset", "--to", &commits[2].to_string()])?;
    ensure!(!out.status.success() && stdout(&out).contains("running"), "{}", stdout(&out));
    apply.kill9()?;
    let mut apply = stack.spawn(Service::Apply, &["run"])?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    ensure!(account_ids(&db2).await?.len() == 7, "apply forgot the pause across a restart");

    let out = stack.run(Service::Apply, &["resume"])?;
    ensure!(out.status.success(), "{}", stdout(&out));
    stack.marker("resumed").await?;
    stack.wait_marker("resumed", Duration::from_secs(60)).await?;
    ensure!(account_ids(&db2).await? == (1..=20).collect::<Vec<_>>(), "after resume: {:?}", account_ids(&db2).await?);

    // Pause while running: it stops at a boundary and applies nothing more until resumed.
    stack.run(Service::Apply, &["pause"])?;
    wait::until("apply to report paused", Duration::from_secs(10), || async {
        let state: String =
            db2.query_one("SELECT state FROM pgm.apply_progress WHERE pipeline = $1", &[&stack.prefix]).await?.get(0);
        Ok((state == "paused").then_some(()))
    })
    .await?;
    db1.execute("INSERT INTO accounts VALUES (21, 1000, 'late')", &[]).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    ensure!(account_ids(&db2).await?.len() == 20, "a paused apply applied changes");
    stack.run(Service::Apply, &["resume"])?;
    stack.marker("resumed-again").await?;
    stack.wait_marker("resumed-again", Duration::from_secs(60)).await?;
    stack.assert_same(&["public.accounts"]).await?;

    // Reset to an earlier position is refused without --force once apply is stopped, and allowed with it.
    apply.kill9()?;
    let out = stack.run(Service::Apply, &["reset", "--to", &commits[2].to_string()])?;
    ensure!(!out.status.success() && stdout(&out).contains("already holds"), "{}", stdout(&out));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_target_stops_apply_with_a_clear_error_and_it_converges_after_the_fix() -> anyhow::Result<()> {
    let stack = stack("").await?;
    let pipeline = start_pipeline(&stack)?;
    let db1 = stack.source().await?;
    let db2 = stack.target().await?;
    // Transform checks its rules against DB2 at start (and would refuse the dropped column): break DB2 after that.
    pgm_test_support::wait::until("transform's start checks", Duration::from_secs(60), || async {
        Ok(pipeline.1.log().contains("rules checked against DB1 and DB2").then_some(()))
    })
    .await?;
    db2.batch_execute("ALTER TABLE accounts DROP COLUMN note").await?;
    let mut apply = stack.spawn(Service::Apply, &["run"])?;
    for id in 1..=5i64 {
        db1.execute("INSERT INTO accounts VALUES ($1, 1000, 'secret-value-7731')", &[&id]).await?;
    }
    let status = tokio::task::block_in_place(|| wait_exit(&mut apply, Duration::from_secs(60)))?;
    let log = apply.log();
    ensure!(!status.success(), "apply kept running with a dropped column:\n{log}");
    for expected in ["\"note\"", "\"public\".\"accounts\"", "source position", "add the column"] {
        ensure!(log.contains(expected), "{expected:?} missing from the error:\n{log}");
    }
    ensure!(!log.contains("secret-value"), "a row value leaked into the log:\n{log}");
    ensure!(account_ids(&db2).await?.is_empty(), "rows were applied past the failure");
    let status = stack.run(Service::Apply, &["status"])?;
    ensure!(stdout(&status).contains("failed") && stdout(&status).contains("\"note\""), "status:\n{}", stdout(&status));

    // The operator restores the column; a restart continues from the failure.
    db2.batch_execute("ALTER TABLE accounts ADD COLUMN note text").await?;
    // A constraint DB1 does not have: DB2 refuses one row of a batch; apply names exactly that change.
    db2.batch_execute("ALTER TABLE accounts ADD CONSTRAINT small_ids CHECK (id < 9)").await?;
    db1.batch_execute("INSERT INTO accounts SELECT g, 1000, 'secret-value-7731' FROM generate_series(6, 10) g").await?;
    let mut apply = stack.spawn(Service::Apply, &["run"])?;
    let status = tokio::task::block_in_place(|| wait_exit(&mut apply, Duration::from_secs(60)))?;
    let log = apply.log();
    ensure!(!status.success(), "apply ignored a constraint violation:\n{log}");
    for expected in ["small_ids", "23514", "insert of \"public\".\"accounts\"", "key id"] {
        ensure!(log.contains(expected), "{expected:?} missing from the error:\n{log}");
    }
    ensure!(!log.contains("secret-value"), "a row value leaked into the log:\n{log}");
    // The five single-row transactions before it were applied and kept; the failing one is named by position.
    ensure!(account_ids(&db2).await? == (1..=5).collect::<Vec<_>>(), "{:?}", account_ids(&db2).await?);
    let line = log.lines().find(|l| l.contains("small_ids")).unwrap_or_default().to_owned();
    ensure!(line.contains("#") && !line.contains(" .. "), "the failing change is not located exactly: {line}");

    db2.batch_execute("ALTER TABLE accounts DROP CONSTRAINT small_ids").await?;
    let apply = stack.spawn(Service::Apply, &["run"])?;
    stack.marker("fixed").await?;
    stack.wait_marker("fixed", Duration::from_secs(60)).await?;
    stack.assert_same(&TABLES).await?;

    // A row removed from DB2 by hand, then one source transaction updates it and two others: by default apply stops
    // at exactly that update (a batch is replayed change by change to find it), names table, key, position and the
    // fix, and applies nothing of the transaction.
    db2.batch_execute("DELETE FROM accounts WHERE id = 3").await?;
    let balances = || async {
        let rows = db2.query("SELECT balance::text FROM accounts WHERE id IN (2, 4) ORDER BY id", &[]).await?;
        anyhow::Ok(rows.iter().map(|r| r.get::<_, String>(0)).collect::<Vec<_>>())
    };
    let before = balances().await?;
    db1.batch_execute("UPDATE accounts SET balance = balance + 1 WHERE id IN (2, 3, 4)").await?;
    let mut apply = apply;
    let status = tokio::task::block_in_place(|| wait_exit(&mut apply, Duration::from_secs(60)))?;
    let log = apply.log();
    ensure!(!status.success(), "apply went on past an update that found no row:\n{log}");
    let line = log.lines().find(|l| l.contains("found no row in DB2") && l.contains("ERROR")).unwrap_or_default();
    for expected in ["update of \"public\".\"accounts\"", "key id", "source position", "on_missing_row", "bootstrap"] {
        ensure!(line.contains(expected), "{expected:?} missing from the error:\n{log}");
    }
    ensure!(!line.contains(" .. "), "the change is not named exactly: {line}");
    ensure!(balances().await? == before, "part of the failing transaction was applied");
    let status = stack.run(Service::Apply, &["status"])?;
    ensure!(
        stdout(&status).contains("failed") && stdout(&status).contains("found no row in DB2"),
        "status:\n{}",
        stdout(&status)
    );

    // `warn`, chosen knowingly: the update is skipped, the others applied, and the skip is counted and shown.
    let apply = stack.spawn_with_env(Service::Apply, &["run"], &[("PGM__APPLY__ON_MISSING_ROW", "warn")])?;
    stack.marker("diverged").await?;
    stack.wait_marker("diverged", Duration::from_secs(60)).await?;
    ensure!(balances().await? != before, "the other updates of the transaction were not applied");
    let log = apply.log();
    ensure!(
        log.contains("found no row in DB2 and were skipped") && !log.contains("balance = 1"),
        "the skipped update went unreported:\n{log}"
    );
    ensure!(apply.metric_sum("pgm_apply_missing_rows_total")? == 1.0, "{}", apply.get("/metrics")?);
    let status = stack.command(Service::Apply, &["status"]).env("PGM__APPLY__ON_MISSING_ROW", "warn").output()?;
    ensure!(stdout(&status).contains("skipped      1 update(s)/delete(s)"), "status:\n{}", stdout(&status));
    Ok(())
}

/// A row updated many times in one DB2 transaction (a counter, pgbench's branches) is written once with its last
/// values instead of one statement per change; updates that move the key, carry other columns (an unchanged TOAST
/// value left out), set NULLs, or are followed by a delete and a new insert keep their order. Every value equal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_updates_of_a_row_fold_into_one_statement_and_every_value_arrives() -> anyhow::Result<()> {
    let stack = stack("").await?;
    let _pipeline = start_pipeline(&stack)?;
    let db1 = stack.source().await?;
    db1.batch_execute(
        "INSERT INTO accounts SELECT g, 1000, 'acct ' || g FROM generate_series(1, 10) g;
         INSERT INTO docs VALUES (1, 'first', repeat('b', 100000), 0);
         INSERT INTO lines VALUES (1, 1, 1.5, '2026-01-01 00:00:00+00', '\\x00ff', '{a,\"b c\"}', '{\"k\": [1, null]}');",
    )
    .await?;
    let mut hot = 0u64;
    for round in 0..4 {
        let mut sql = String::from("BEGIN;");
        for i in 0..60 {
            // Hot rows: account 1 and 2, and a composite-key line, many times per transaction.
            sql.push_str(&format!("UPDATE accounts SET balance = balance + {i}, note = 'r{round} i{i}' WHERE id = 1;"));
            sql.push_str(&format!(
                "UPDATE accounts SET balance = balance - 1, note = {} WHERE id = 2;",
                if i % 3 == 0 { "NULL".to_owned() } else { format!("'n{i}'") }
            ));
            sql.push_str(&format!("UPDATE lines SET qty = qty + 0.000000000001 * {i}, tags = tags || '{i}'::text WHERE tenant = 1 AND id = 1;"));
            hot += 3;
        }
        // The key moves away and back, with updates of the moved row between.
        sql.push_str("UPDATE accounts SET id = 5000 WHERE id = 4; UPDATE accounts SET balance = 7 WHERE id = 5000;");
        sql.push_str("UPDATE accounts SET balance = 8 WHERE id = 5000; UPDATE accounts SET id = 4 WHERE id = 5000;");
        sql.push_str("UPDATE accounts SET balance = balance + 1 WHERE id = 4;");
        // Title-only updates (the TOASTed body not sent) between updates that send the body.
        sql.push_str(&format!("UPDATE docs SET title = 't{round}a', version = version + 1 WHERE id = 1;"));
        sql.push_str(&format!("UPDATE docs SET body = repeat('{round}', 90000), version = version + 1 WHERE id = 1;"));
        sql.push_str(&format!("UPDATE docs SET title = 't{round}b', version = version + 1 WHERE id = 1;"));
        // Updated, deleted, inserted again, updated.
        sql.push_str("UPDATE accounts SET balance = 1 WHERE id = 6; UPDATE accounts SET balance = 2 WHERE id = 6;");
        sql.push_str(&format!("DELETE FROM accounts WHERE id = 6; INSERT INTO accounts VALUES (6, {round}, NULL);"));
        sql.push_str("UPDATE accounts SET note = 'back' WHERE id = 6; UPDATE accounts SET note = NULL WHERE id = 6;");
        sql.push_str("COMMIT;");
        db1.batch_execute(&sql).await?;
    }
    // Apply starts on the whole backlog, so the transactions are grouped.
    let apply = stack.spawn(Service::Apply, &["run"])?;
    stack.marker("drained").await?;
    stack.wait_marker("drained", Duration::from_secs(120)).await?;
    stack.assert_same(&TABLES).await?;
    let db2 = stack.target().await?;
    let row = db2.query_one("SELECT balance, note FROM accounts WHERE id = 1", &[]).await?;
    ensure!(row.get::<_, i64>(0) == 1000 + 4 * (0..60).sum::<i64>(), "account 1's balance");
    ensure!(row.get::<_, Option<String>>(1).as_deref() == Some("r3 i59"), "account 1's note");
    let statements = apply.metric_sum("pgm_apply_statement_seconds_count")?;
    let rows = apply.metric_sum("pgm_apply_rows_total")?;
    ensure!(rows >= hot as f64, "apply counted {rows} rows for {hot} hot-row updates and more");
    ensure!(
        statements < (hot / 5) as f64,
        "{statements} statements for {hot} updates of three rows: repeated updates of a row were not folded"
    );
    Ok(())
}

/// DB2's replication states all taken by other pipelines' leftover origins: apply names the setting and the
/// origins; `pgm-apply reset --drop-origin` frees a finished pipeline's state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_replication_states_on_db2_are_named_and_reset_frees_the_pipelines_origin() -> anyhow::Result<()> {
    let stack = stack("").await?;
    let db2 = stack.target().await?;
    let limit: String = db2.query_one("SHOW max_replication_slots", &[]).await?.get(0);
    let limit: usize = limit.parse()?;
    for i in 0..limit {
        let name = format!("pgm_old_{i}");
        db2.execute("SELECT pg_replication_origin_create($1)", &[&name]).await?;
        db2.execute("SELECT pg_replication_origin_advance($1, '0/1')", &[&name]).await?;
    }
    let mut apply = stack.spawn(Service::Apply, &["run"])?;
    let status = tokio::task::block_in_place(|| wait_exit(&mut apply, Duration::from_secs(60)))?;
    let log = apply.log();
    ensure!(!status.success(), "apply started without a replication state:\n{log}");
    for expected in [format!("max_replication_slots ({limit})"), "pgm_old_0, pgm_old_1".into(), "--drop-origin".into()]
    {
        ensure!(log.contains(&expected), "{expected:?} missing from the error:\n{log}");
    }
    ensure!(!log.contains("needs superuser"), "a superuser was told to get privileges:\n{log}");

    // One leftover dropped: apply runs and holds its origin's state; once stopped, reset frees it.
    db2.execute("SELECT pg_replication_origin_drop('pgm_old_0')", &[]).await?;
    let mut apply = stack.spawn(Service::Apply, &["run"])?;
    let origin = format!("pgm_{}", stack.prefix);
    let exists = || async {
        let row = db2.query_opt("SELECT 1 FROM pg_replication_origin WHERE roname = $1", &[&origin]).await?;
        anyhow::Ok(row.is_some())
    };
    pgm_test_support::wait::until("apply's origin on DB2", Duration::from_secs(60), || async {
        Ok(exists().await?.then_some(()))
    })
    .await
    .with_context(|| apply.log())?;
    apply.kill9()?;
    let out = stack.run(Service::Apply, &["reset", "--drop-origin"])?;
    ensure!(out.status.success() && stdout(&out).contains("dropped"), "{}", stdout(&out));
    ensure!(!exists().await?, "the origin is still there after reset --drop-origin");
    Ok(())
}
