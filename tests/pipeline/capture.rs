//! pgm-capture on real PostgreSQL 15 + wal2json and the broker: exact content, crashes, broker outage, idle WAL.
//!
//! The expected stream comes from a second wal2json slot created at the same moment as capture's and read with
//! SQL after the workload: the same source changes, positioned by the same rule (commit LSN, ordinal).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{ensure, Context};
use pgm_common::change::Change;
use pgm_common::envelope::{RawRecord, RecordOrigin, TxnRecord, BEGIN_AFTER_RECORDS};
use pgm_common::{wal2json, Lsn, Position};
use pgm_test_support::broker::{shared_brokers, Broker};
use pgm_test_support::kafka::{list_topics, read_all, Record};
use pgm_test_support::names::unique;
use pgm_test_support::pg::PgCluster;
use pgm_test_support::wait;
use rand::{Rng, SeedableRng};
use tempfile::TempDir;

const SCHEMA: &str = "
CREATE TABLE accounts (id int PRIMARY KEY, balance bigint NOT NULL, note text);
CREATE TABLE docs (id int PRIMARY KEY, title text, body text);
ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL;
CREATE TABLE lines (tenant int, id int, qty numeric(30,2), PRIMARY KEY (tenant, id));
CREATE TABLE untracked (id int PRIMARY KEY);
";
const TABLES: [&str; 3] = ["public.accounts", "public.docs", "public.lines"];

struct Setup {
    /// `capture.decoder`: the verifier slot is always wal2json, so with pgoutput the test compares the decoders.
    decoder: &'static str,
    pg: PgCluster,
    db: String,
    slot: String,
    prefix: String,
    brokers: String,
    dir: TempDir,
    config: PathBuf,
}

impl Setup {
    async fn new(brokers: String) -> anyhow::Result<Self> {
        Self::with_decoder(brokers, "wal2json").await
    }

    async fn with_decoder(brokers: String, decoder: &'static str) -> anyhow::Result<Self> {
        let pg = PgCluster::start()?;
        let db = pg.create_database("cap").await?;
        pg.connect(&db).await?.batch_execute(SCHEMA).await?;
        let dir = tempfile::tempdir()?;
        let slot = unique("slot");
        let prefix = unique("t");
        let config = dir.path().join("pipeline.toml");
        std::fs::write(
            &config,
            format!(
                r#"
[source]
host = "127.0.0.1"
port = {port}
user = "postgres"
dbname = "{db}"
[target]
host = "127.0.0.1"
port = {port}
user = "postgres"
dbname = "{db}"
[kafka]
brokers = "{brokers}"
[kafka.librdkafka]
"message.timeout.ms" = "600000"
[topics]
prefix = "{prefix}"
partitions = 3
[tables]
include = {tables:?}
[capture]
slot = "{slot}"
heartbeat_interval_ms = 200
metrics_addr = "127.0.0.1:0"
decoder = "{decoder}"
"#,
                port = pg.port(),
                tables = TABLES,
            ),
        )?;
        let setup = Setup { decoder, pg, db, slot, prefix, brokers, dir, config };
        // Capture's slot and the verifier's, created back to back with nothing written in between (pgoutput's
        // publication before them).
        let client = setup.pg.connect(&setup.db).await?;
        if decoder == "pgoutput" {
            client
                .batch_execute(&format!("CREATE PUBLICATION \"{}\" FOR TABLE {}", setup.slot, TABLES.join(", ")))
                .await?;
        }
        client.execute("SELECT pg_create_logical_replication_slot($1, $2)", &[&setup.slot, &decoder]).await?;
        client.execute("SELECT pg_create_logical_replication_slot($1, 'wal2json')", &[&setup.verify_slot()]).await?;
        Ok(setup)
    }

    fn verify_slot(&self) -> String {
        format!("{}_verify", self.slot)
    }

    fn start_capture(&self, attempt: usize) -> anyhow::Result<Child> {
        let log = std::fs::File::create(self.dir.path().join(format!("capture-{attempt}.log")))?;
        Ok(Command::new(env!("CARGO_BIN_EXE_pgm-test-capture"))
            .args(["--config"])
            .arg(&self.config)
            .arg("run")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?)
    }

    fn capture_logs(&self) -> String {
        let mut out = String::new();
        for entry in std::fs::read_dir(self.dir.path()).into_iter().flatten().flatten() {
            if entry.file_name().to_string_lossy().starts_with("capture-") {
                out.push_str(&std::fs::read_to_string(entry.path()).unwrap_or_default());
            }
        }
        out
    }

    async fn confirmed_flush(&self) -> anyhow::Result<Lsn> {
        let client = self.pg.connect(&self.db).await?;
        let row = client
            .query_one("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1", &[&self.slot])
            .await?;
        Ok(row.get::<_, Option<String>>(0).context("no confirmed_flush_lsn")?.parse()?)
    }

    async fn current_lsn(&self) -> anyhow::Result<Lsn> {
        let client = self.pg.connect(&self.db).await?;
        Ok(client.query_one("SELECT pg_current_wal_lsn()::text", &[]).await?.get::<_, String>(0).parse()?)
    }

    /// Waits until the slot confirmed everything written so far.
    async fn wait_drained(&self, timeout: Duration) -> anyhow::Result<()> {
        let target = self.current_lsn().await?;
        wait::until(&format!("slot {} to confirm {target}", self.slot), timeout, || async {
            Ok((self.confirmed_flush().await? >= target).then_some(()))
        })
        .await
        .with_context(|| format!("capture log:\n{}", self.capture_logs()))
    }

    /// The source stream as positions, from the verifier slot.
    async fn expected(&self) -> anyhow::Result<Expected> {
        let client = self.pg.connect(&self.db).await?;
        let mut options: Vec<String> =
            wal2json::PLUGIN_OPTIONS.iter().flat_map(|(k, v)| [format!("'{k}'"), format!("'{v}'")]).collect();
        options.push("'add-tables'".into());
        options.push(format!("'{}'", TABLES.join(",")));
        let sql = format!("SELECT data FROM pg_logical_slot_get_changes($1, NULL, NULL, {})", options.join(", "));
        let rows = client.query(&sql, &[&self.verify_slot()]).await?;
        let mut expected = Expected::default();
        let (mut commit_lsn, mut ordinal) = (Lsn::ZERO, 0u64);
        // pgoutput (PostgreSQL 15) sends no transaction without a published change; wal2json sends every one.
        let empty_sent = self.decoder == "wal2json";
        for row in rows {
            match wal2json::decode(row.get::<_, &str>(0).as_bytes())? {
                Change::Begin(b) => {
                    commit_lsn = b.commit_lsn;
                    ordinal = 0;
                }
                Change::Row(r) => {
                    ordinal += 1;
                    expected.rows.insert(Position::new(commit_lsn, ordinal), r.table.table.clone());
                }
                Change::Truncate(t) => {
                    ordinal += 1;
                    expected.rows.insert(Position::new(commit_lsn, ordinal), t.table.table.clone());
                }
                Change::Message(m) if m.transactional => ordinal += 1,
                Change::Message(_) => {}
                Change::Commit(c) => {
                    if empty_sent || ordinal > 0 {
                        expected.transactions.insert(c.commit_lsn);
                    }
                }
            }
        }
        Ok(expected)
    }

    fn read_topics(&self) -> anyhow::Result<Topics> {
        let mut raw = Vec::new();
        for topic in list_topics(&self.brokers, &format!("{}.raw.", self.prefix))? {
            raw.extend(read_all(&self.brokers, &topic)?);
        }
        let txn = read_all(&self.brokers, &format!("{}.txn", self.prefix))?;
        Ok(Topics { raw, txn })
    }
}

#[derive(Default, Debug)]
struct Expected {
    rows: BTreeMap<Position, String>,
    transactions: BTreeSet<Lsn>,
    /// Transactions the test wrote with at least BEGIN_AFTER_RECORDS tracked changes.
    long: usize,
}

struct Topics {
    raw: Vec<Record>,
    txn: Vec<Record>,
}

fn key_of(record: &Record) -> anyhow::Result<Position> {
    Ok(Position::from_key(&record.key)?)
}

/// Checks the topics against the source. `repeats_allowed`: after crashes the same record may appear again, but
/// always with the same key and the same value.
fn verify(expected: &Expected, topics: &Topics, repeats_allowed: bool) -> anyhow::Result<()> {
    // Raw: every key once in content, each decodes, and the set of keys is exactly the source's changes.
    let mut by_key: HashMap<Position, &Record> = HashMap::new();
    let mut per_partition: BTreeMap<(String, i32), Vec<Position>> = BTreeMap::new();
    for record in &topics.raw {
        let pos = key_of(record)?;
        let origin = RecordOrigin { topic: &record.topic, partition: record.partition, offset: record.offset };
        let raw = RawRecord::decode(&record.value, origin)?;
        ensure!(raw.pos == pos, "value position {} differs from key {}", raw.pos, pos);
        if let Some(first) = by_key.insert(pos, record) {
            ensure!(repeats_allowed, "{pos} appears twice without a crash");
            ensure!(
                first.value == record.value && first.topic == record.topic && first.partition == record.partition,
                "{pos} repeated with different content or partition"
            );
        }
        per_partition.entry((record.topic.clone(), record.partition)).or_default().push(pos);
    }
    let got: BTreeSet<Position> = by_key.keys().copied().collect();
    let want: BTreeSet<Position> = expected.rows.keys().copied().collect();
    let missing: Vec<_> = want.difference(&got).take(5).collect();
    let extra: Vec<_> = got.difference(&want).take(5).collect();
    ensure!(
        missing.is_empty() && extra.is_empty(),
        "raw keys differ: missing {missing:?}, unexpected {extra:?} ({} vs {})",
        got.len(),
        want.len()
    );
    if !repeats_allowed {
        for ((topic, partition), positions) in &per_partition {
            ensure!(positions.windows(2).all(|w| w[0] < w[1]), "{topic}[{partition}] is not in position order");
        }
    }

    // Txn: one begin and one commit per source transaction (repeats identical), counts equal what raw holds.
    let mut begins: HashMap<Lsn, &Record> = HashMap::new();
    let mut commits: HashMap<Lsn, TxnRecord> = HashMap::new();
    for record in &topics.txn {
        let origin = RecordOrigin { topic: &record.topic, partition: record.partition, offset: record.offset };
        match TxnRecord::decode(&record.value, origin)? {
            TxnRecord::Begin { commit_lsn, .. } => {
                if let Some(first) = begins.insert(commit_lsn, record) {
                    ensure!(repeats_allowed && first.value == record.value, "begin {commit_lsn} repeated");
                }
            }
            commit @ TxnRecord::Commit { commit_lsn, .. } => {
                if let Some(first) = commits.insert(commit_lsn, commit.clone()) {
                    ensure!(repeats_allowed && first == commit, "commit {commit_lsn} repeated differently");
                }
            }
            TxnRecord::Message { .. }
            | TxnRecord::Heartbeat { .. }
            | TxnRecord::Snapshot { .. }
            | TxnRecord::Chunk { .. } => {}
        }
    }
    let commit_set: BTreeSet<Lsn> = commits.keys().copied().collect();
    ensure!(
        commit_set == expected.transactions,
        "commit records: {} vs {} source transactions",
        commit_set.len(),
        expected.transactions.len()
    );
    // A begin record exactly for each transaction of at least BEGIN_AFTER_RECORDS change records.
    let long: BTreeSet<Lsn> = commits
        .values()
        .filter_map(|commit| match commit {
            TxnRecord::Commit { commit_lsn, counts, .. } => {
                (counts.iter().map(|c| c.count).sum::<u64>() >= BEGIN_AFTER_RECORDS).then_some(*commit_lsn)
            }
            _ => None,
        })
        .collect();
    let begin_set: BTreeSet<Lsn> = begins.keys().copied().collect();
    ensure!(
        begin_set == long,
        "begin records for {begin_set:?}, transactions of {BEGIN_AFTER_RECORDS}+ records: {long:?}"
    );
    ensure!(long.len() == expected.long, "{} long transactions in Kafka, {} written", long.len(), expected.long);
    let mut observed: BTreeMap<(Lsn, String, i32), u64> = BTreeMap::new();
    for (pos, record) in &by_key {
        *observed.entry((pos.commit_lsn, record.topic.clone(), record.partition)).or_default() += 1;
    }
    let mut counted: BTreeMap<(Lsn, String, i32), u64> = BTreeMap::new();
    for commit in commits.values() {
        if let TxnRecord::Commit { commit_lsn, counts, end_lsn, .. } = commit {
            ensure!(end_lsn > commit_lsn);
            for c in counts {
                counted.insert((*commit_lsn, c.topic.clone(), c.partition), c.count);
            }
        }
    }
    ensure!(observed == counted, "commit counts differ from the raw records");
    Ok(())
}

/// One random source transaction of 1–4 statements over the three tables (and sometimes an untracked one).
fn random_transaction(rng: &mut impl Rng, n: u32) -> String {
    let mut sql = String::from("BEGIN;");
    for _ in 0..rng.random_range(1..=4) {
        let id = rng.random_range(1..=40);
        sql.push_str(&match rng.random_range(0..100) {
            0..=24 => format!("INSERT INTO accounts VALUES ({id}, {n}, 'n{n}') ON CONFLICT (id) DO UPDATE SET balance = accounts.balance + 1;"),
            25..=39 => format!("UPDATE accounts SET balance = balance - 1 WHERE id = {id};"),
            40..=44 => format!("DELETE FROM accounts WHERE id = {id};"),
            45..=54 => format!(
                "INSERT INTO docs VALUES ({id}, 't{n}', (SELECT string_agg(md5(g::text || '{n}'), '') FROM generate_series(1, 100) g)) ON CONFLICT (id) DO NOTHING;"
            ),
            55..=64 => format!("UPDATE docs SET title = 'u{n}' WHERE id = {id};"),
            65..=79 => format!("INSERT INTO lines VALUES ({}, {id}, {n}.25) ON CONFLICT DO NOTHING;", id % 3),
            80..=87 => format!("UPDATE lines SET qty = qty + 1, id = id + 100 WHERE tenant = {} AND id = {id};", id % 3),
            88..=93 => format!("DELETE FROM lines WHERE tenant = {};", id % 3),
            94..=95 => "TRUNCATE lines;".to_owned(),
            96..=97 => format!("SELECT pg_logical_emit_message(true, 'pgm', 'marker {n}');"),
            _ => format!("INSERT INTO untracked VALUES ({n}) ON CONFLICT DO NOTHING;"),
        });
    }
    sql.push_str("COMMIT;");
    sql
}

async fn run_workload(pg: &PgCluster, db: &str, seed: u64, transactions: u32) -> anyhow::Result<()> {
    let client = pg.connect(db).await?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for n in 0..transactions {
        client.batch_execute(&random_transaction(&mut rng, n)).await?;
    }
    Ok(())
}

async fn read_and_verify(setup: &Setup, repeats_allowed: bool) -> anyhow::Result<(usize, usize)> {
    read_and_verify_long(setup, repeats_allowed, 0).await
}

async fn read_and_verify_long(setup: &Setup, repeats_allowed: bool, long: usize) -> anyhow::Result<(usize, usize)> {
    let mut expected = setup.expected().await?;
    expected.long = long;
    ensure!(expected.rows.len() > 100, "workload too small: {} changes", expected.rows.len());
    let topics = tokio::task::block_in_place(|| setup.read_topics())?;
    verify(&expected, &topics, repeats_allowed)?;
    Ok((expected.rows.len(), topics.raw.len()))
}

fn kill(child: &mut Child) -> anyhow::Result<()> {
    child.kill()?; // SIGKILL
    child.wait()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capture_publishes_exactly_the_source_changes() -> anyhow::Result<()> {
    let setup = Setup::new(shared_brokers()?).await?;
    let mut capture = setup.start_capture(0)?;
    run_workload(&setup.pg, &setup.db, 1, 300).await?;
    // One long transaction: the only one with a begin record.
    let bulk = format!(
        "INSERT INTO accounts SELECT g, 0, 'bulk' FROM generate_series(1001, {}) g",
        1000 + BEGIN_AFTER_RECORDS + 200
    );
    setup.pg.connect(&setup.db).await?.batch_execute(&bulk).await?;
    setup.wait_drained(Duration::from_secs(60)).await?;
    kill(&mut capture)?; // heartbeats would keep the txn topic busy while reading
    let (changes, records) = read_and_verify_long(&setup, false, 1).await?;
    assert_eq!(changes, records, "no repeats without a crash");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capture_killed_five_times_loses_nothing_and_repeats_keep_their_keys() -> anyhow::Result<()> {
    killed_five_times(Setup::new(shared_brokers()?).await?).await
}

/// The same crash test with pgoutput, checked against a wal2json slot: same keys, counts and transactions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgoutput_capture_killed_five_times_loses_nothing_and_matches_wal2json() -> anyhow::Result<()> {
    killed_five_times(Setup::with_decoder(shared_brokers()?, "pgoutput").await?).await
}

async fn killed_five_times(setup: Setup) -> anyhow::Result<()> {
    // The workload runs until the fifth restart, so every kill lands while DB1 is being written.
    let kills_done = std::sync::atomic::AtomicBool::new(false);
    let workload = async {
        let client = setup.pg.connect(&setup.db).await?;
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        let mut n = 0;
        while !kills_done.load(std::sync::atomic::Ordering::SeqCst) || n < 1000 {
            client.batch_execute(&random_transaction(&mut rng, n)).await?;
            n += 1;
        }
        anyhow::Ok(n)
    };
    let kills = async {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut capture = setup.start_capture(0)?;
        for attempt in 1..=5 {
            tokio::time::sleep(Duration::from_millis(rng.random_range(200..900))).await;
            kill(&mut capture)?;
            capture = setup.start_capture(attempt)?;
        }
        kills_done.store(true, std::sync::atomic::Ordering::SeqCst);
        anyhow::Ok(capture)
    };
    let (transactions, capture) = tokio::join!(workload, kills);
    let transactions = transactions?;
    let mut capture = capture?;
    setup.wait_drained(Duration::from_secs(90)).await?;
    kill(&mut capture)?;
    let (changes, records) = read_and_verify(&setup, true).await?;
    eprintln!(
        "crash test ({}): {transactions} transactions, {changes} source changes, {records} raw records ({} repeats)",
        setup.decoder,
        records - changes
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slot_does_not_advance_while_the_broker_is_down() -> anyhow::Result<()> {
    let mut broker = Broker::start()?;
    let setup = Setup::new(broker.brokers()).await?;
    let mut capture = setup.start_capture(0)?;
    run_workload(&setup.pg, &setup.db, 3, 100).await?;
    setup.wait_drained(Duration::from_secs(60)).await?;

    broker.kill()?;
    let confirmed_before = setup.confirmed_flush().await?;
    run_workload(&setup.pg, &setup.db, 4, 100).await?;
    let written = setup.current_lsn().await?;
    // Give capture every chance to (wrongly) confirm: several feedback rounds.
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let confirmed = setup.confirmed_flush().await?;
        assert!(
            confirmed < written,
            "slot confirmed {confirmed} past unacknowledged changes (written up to {written})"
        );
    }
    eprintln!(
        "broker down: slot stayed at {} (before {confirmed_before}), writes reached {written}",
        setup.confirmed_flush().await?
    );

    broker.restart()?;
    setup.wait_drained(Duration::from_secs(120)).await?;
    kill(&mut capture)?;
    read_and_verify(&setup, true).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_source_with_writes_elsewhere_keeps_the_slot_current() -> anyhow::Result<()> {
    let setup = Setup::new(shared_brokers()?).await?;
    let mut capture = setup.start_capture(0)?;
    let other = setup.pg.create_database("busy").await?;
    let busy = setup.pg.connect(&other).await?;
    busy.batch_execute("CREATE TABLE filler (id int, pad text)").await?;
    for _ in 0..5 {
        busy.batch_execute("INSERT INTO filler SELECT g, repeat('x', 500) FROM generate_series(1, 20000) g").await?;
    }
    let written = setup.current_lsn().await?;
    // Nothing of our database changed: only keepalive acknowledgements can move the slot this far.
    setup.wait_drained(Duration::from_secs(30)).await?;
    let client = setup.pg.connect(&setup.db).await?;
    client.batch_execute("CHECKPOINT").await?;
    let retained: i64 = wait::until("restart_lsn to follow", Duration::from_secs(30), || async {
        client.batch_execute("SELECT pg_switch_wal(); CHECKPOINT").await?;
        let row = client
            .query_one(
                "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint FROM pg_replication_slots WHERE slot_name = $1",
                &[&setup.slot],
            )
            .await?;
        let retained: i64 = row.get(0);
        Ok((retained < 16 << 20).then_some(retained))
    })
    .await?;
    eprintln!("idle test: wrote up to {written} elsewhere; slot retains {retained} bytes");
    // Heartbeats were published while idle.
    kill(&mut capture)?;
    let txn = tokio::task::block_in_place(|| read_all(&setup.brokers, &format!("{}.txn", setup.prefix)))?;
    let heartbeats = txn
        .iter()
        .filter(|r| {
            matches!(
                TxnRecord::decode(&r.value, RecordOrigin { topic: "txn", partition: 0, offset: r.offset }),
                Ok(TxnRecord::Heartbeat { .. })
            )
        })
        .count();
    assert!(heartbeats > 0, "no heartbeat while idle");
    Ok(())
}

fn run_check(config: &std::path::Path) -> anyhow::Result<(bool, String)> {
    let out = Command::new(env!("CARGO_BIN_EXE_pgm-test-capture")).arg("--config").arg(config).arg("check").output()?;
    Ok((out.status.success(), String::from_utf8(out.stdout)?))
}

fn check_config(
    dir: &std::path::Path,
    port: u16,
    db: &str,
    user: &str,
    tables: &[&str],
    slot: &str,
) -> anyhow::Result<PathBuf> {
    let path = dir.join(format!("{slot}.toml"));
    // check also asks the broker (and audits the prefix's topics): the shared one answers.
    let brokers = shared_brokers()?;
    std::fs::write(
        &path,
        format!(
            "[source]\nhost = \"127.0.0.1\"\nport = {port}\nuser = \"{user}\"\ndbname = \"{db}\"\n\
             [target]\nhost = \"127.0.0.1\"\nport = {port}\nuser = \"{user}\"\ndbname = \"{db}\"\n\
             [kafka]\nbrokers = \"{brokers}\"\n[tables]\ninclude = {tables:?}\n[capture]\nslot = \"{slot}\"\n"
        ),
    )?;
    Ok(path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_each_misconfiguration_with_its_fix() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;

    // A cluster set up right passes.
    let good = PgCluster::start()?;
    let db = good.create_database("chk").await?;
    let client = good.connect(&db).await?;
    client.batch_execute(SCHEMA).await?;
    let (ok, out) = tokio::task::block_in_place(|| {
        run_check(&check_config(dir.path(), good.port(), &db, "postgres", &TABLES, "good")?)
    })?;
    assert!(ok, "{out}");
    assert!(out.contains("ok    wal2json") && !out.contains("FAIL"), "{out}");

    // The same cluster, set up wrong in every way check looks at.
    client
        .batch_execute(
            "CREATE ROLE app LOGIN;
             CREATE TABLE nokey (a int);
             CREATE TABLE nothing (id int PRIMARY KEY); ALTER TABLE nothing REPLICA IDENTITY NOTHING;
             CREATE TABLE floats (id int PRIMARY KEY, f float8);",
        )
        .await?;
    client.batch_execute("SELECT pg_create_logical_replication_slot('wrongplugin', 'test_decoding')").await?;
    let tables = ["public.nokey", "public.nothing", "public.missing", "public.floats"];
    let (ok, out) = tokio::task::block_in_place(|| {
        run_check(&check_config(dir.path(), good.port(), &db, "postgres", &tables, "wrongplugin")?)
    })?;
    assert!(!ok, "check must fail:\n{out}");
    for expected in [
        "FAIL  table \"public\".\"nokey\"",
        "REPLICA IDENTITY FULL;",
        "FAIL  table \"public\".\"nothing\"",
        "REPLICA IDENTITY NOTHING",
        "FAIL  table \"public\".\"missing\"",
        "fix tables.include",
        "WARN  table \"public\".\"floats\"",
        "FAIL  slot wrongplugin",
        "test_decoding",
    ] {
        assert!(out.contains(expected), "{expected:?} missing from:\n{out}");
    }
    // wal2json would turn a NaN or Infinity held now into NULL: that fails, naming the columns and pgoutput.
    client.batch_execute("INSERT INTO floats VALUES (1, 'NaN'), (2, '-Infinity'), (3, 1.5)").await?;
    let floats = check_config(dir.path(), good.port(), &db, "postgres", &["public.floats"], "floats")?;
    let (ok, out) = tokio::task::block_in_place(|| run_check(&floats))?;
    assert!(
        !ok && out.contains("FAIL  table \"public\".\"floats\"")
            && out.contains("[\"f\"] hold NaN or Infinity")
            && out.contains("capture.decoder = \"pgoutput\""),
        "{out}"
    );
    // pgoutput carries them: no finding for the column; its publication is reported.
    std::fs::write(&floats, std::fs::read_to_string(&floats)? + "decoder = \"pgoutput\"\n")?;
    let (ok, out) = tokio::task::block_in_place(|| run_check(&floats))?;
    assert!(ok && out.contains("ok    pgoutput") && out.contains("publication") && !out.contains("NaN"), "{out}");

    let (ok, out) = tokio::task::block_in_place(|| {
        run_check(&check_config(dir.path(), good.port(), &db, "app", &TABLES, "app_slot")?)
    })?;
    assert!(
        !ok && out.contains("FAIL  REPLICATION privilege") && out.contains("ALTER ROLE \"app\" REPLICATION;"),
        "{out}"
    );

    // wal_level below logical.
    let replica = PgCluster::start_with(&[("wal_level", "replica")])?;
    let (ok, out) = tokio::task::block_in_place(|| {
        run_check(&check_config(dir.path(), replica.port(), "postgres", "postgres", &[], "r")?)
    })?;
    assert!(!ok && out.contains("FAIL  wal_level") && out.contains("ALTER SYSTEM SET wal_level = logical"), "{out}");
    // run and bootstrap make the same checks before they create anything: no publication, no topic, no slot.
    let on_replica = replica.connect("postgres").await?;
    on_replica.batch_execute("CREATE TABLE t (id int PRIMARY KEY)").await?;
    let prefix = unique("pre");
    let config = check_config(dir.path(), replica.port(), "postgres", "postgres", &["public.t"], "r2")?;
    std::fs::write(
        &config,
        std::fs::read_to_string(&config)? + &format!("decoder = \"pgoutput\"\n[topics]\nprefix = \"{prefix}\"\n"),
    )?;
    for command in ["run", "bootstrap"] {
        let out = tokio::task::block_in_place(|| {
            Command::new(env!("CARGO_BIN_EXE_pgm-test-capture"))
                .arg("--config")
                .arg(&config)
                .arg(command)
                .stdin(Stdio::null())
                .output()
        })?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success()
                && stderr.contains("FAIL  wal_level")
                && stderr.contains("ALTER SYSTEM SET wal_level = logical"),
            "{command} on wal_level = replica:\n{stderr}"
        );
    }
    let publications: i64 = on_replica.query_one("SELECT count(*) FROM pg_publication", &[]).await?.get(0);
    let slots: i64 = on_replica.query_one("SELECT count(*) FROM pg_replication_slots", &[]).await?.get(0);
    let brokers = shared_brokers()?;
    let topics = tokio::task::block_in_place(|| list_topics(&brokers, &prefix))?;
    assert!(
        publications == 0 && slots == 0 && topics.is_empty(),
        "left behind: {publications} publication(s), {slots} slot(s), topics {topics:?}"
    );

    // No free replication slot.
    let full = PgCluster::start_with(&[("max_replication_slots", "1")])?;
    full.connect("postgres")
        .await?
        .batch_execute("SELECT pg_create_logical_replication_slot('other', 'wal2json')")
        .await?;
    let (ok, out) = tokio::task::block_in_place(|| {
        run_check(&check_config(dir.path(), full.port(), "postgres", "postgres", &[], "mine")?)
    })?;
    assert!(!ok && out.contains("FAIL  max_replication_slots") && out.contains("max_replication_slots = 2"), "{out}");
    Ok(())
}
