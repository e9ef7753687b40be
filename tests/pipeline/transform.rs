//! pgm-transform on real catalogs and the broker: check and scaffold for the demo migration, and two workers in
//! one group with one killed mid-stream.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use pgm_common::change::{Column, Datum, Row, TableRef};
use pgm_common::config::KafkaConfig;
use pgm_common::envelope::{Op, OutRecord, RawRecord, RecordOrigin, ENVELOPE_VERSION};
use pgm_common::{kafka, Lsn, Position};
use pgm_test_support::broker::shared_brokers;
use pgm_test_support::kafka::read_all;
use pgm_test_support::names::unique;
use pgm_test_support::pg::PgCluster;
use rdkafka::admin::{AdminOptions, NewTopic, TopicReplication};
use rdkafka::producer::FutureRecord;

const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

fn write_config(
    dir: &Path,
    pg: &PgCluster,
    (db1, db2): (&str, &str),
    brokers: &str,
    prefix: &str,
    rules: Option<&Path>,
    tables: &[&str],
) -> anyhow::Result<PathBuf> {
    let path = dir.join(format!("{}.toml", unique("cfg")));
    let rules = rules.map(|r| format!("rules = {:?}\n", r.display().to_string())).unwrap_or_default();
    std::fs::write(
        &path,
        format!(
            "[source]\nhost = \"127.0.0.1\"\nport = {port}\nuser = \"postgres\"\ndbname = \"{db1}\"\n\
             [target]\nhost = \"127.0.0.1\"\nport = {port}\nuser = \"postgres\"\ndbname = \"{db2}\"\n\
             [kafka]\nbrokers = \"{brokers}\"\n[kafka.librdkafka]\n\"session.timeout.ms\" = \"6000\"\n\"heartbeat.interval.ms\" = \"500\"\n\
             [topics]\nprefix = \"{prefix}\"\npartitions = 4\n[tables]\ninclude = {tables:?}\n\
             [transform]\n{rules}group_id = \"{group}\"\nmetrics_addr = \"127.0.0.1:0\"\n",
            port = pg.port(),
            group = unique("tg"),
        ),
    )?;
    Ok(path)
}

fn transform(config: &Path, command: &str) -> anyhow::Result<(bool, String, String)> {
    let out =
        Command::new(env!("CARGO_BIN_EXE_pgm-test-transform")).arg("--config").arg(config).arg(command).output()?;
    Ok((out.status.success(), String::from_utf8(out.stdout)?, String::from_utf8(out.stderr)?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaffold_drafts_the_demo_migration_and_check_passes_once_todos_are_filled() -> anyhow::Result<()> {
    let pg = PgCluster::start()?;
    let db1 = pg.create_database("shop1").await?;
    let db2 = pg.create_database("shop2").await?;
    pg.connect(&db1).await?.batch_execute(&std::fs::read_to_string(format!("{REPO}/compose/shop.sql"))?).await?;
    pg.connect(&db2).await?.batch_execute(&std::fs::read_to_string(format!("{REPO}/compose/shop-v2.sql"))?).await?;
    let dir = tempfile::tempdir()?;
    let tables = ["public.customers", "public.orders", "public.order_items"];
    let rules = dir.path().join("rules.toml");
    let config = write_config(dir.path(), &pg, (&db1, &db2), "127.0.0.1:1", "p", Some(&rules), &tables)?;

    let (ok, draft, stderr) = tokio::task::block_in_place(|| transform(&config, "scaffold"))?;
    assert!(ok, "{stderr}");
    for expected in [
        "table = \"public.clients\"",
        "drop = [\"full_name\", \"legacy_flags\"]",
        "first_name = { expr = \"TODO\" }",
        "last_name = { expr = \"TODO\" }",
        "drop = [\"amount_cents\"]",
        "amount = { expr = \"TODO\" }",
    ] {
        assert!(draft.contains(expected), "{expected:?} missing from the draft:\n{draft}");
    }
    std::fs::write(&rules, &draft)?;
    let (ok, findings, _) = tokio::task::block_in_place(|| transform(&config, "check"))?;
    assert!(!ok && findings.contains("TODO"), "a draft with TODOs must not pass:\n{findings}");

    let filled = draft
        .replace(
            "first_name = { expr = \"TODO\" }",
            "first_name = { expr = 'full_name.split(\" \")[0]', type = \"text\" }",
        )
        .replace(
            "last_name = { expr = \"TODO\" }",
            "last_name = { expr = 'full_name.sub_string(full_name.index_of(\" \") + 1)', type = \"text\" }",
        )
        .replace(
            "amount = { expr = \"TODO\" }",
            "amount = { from = \"amount_cents\", convert = \"cents_to_numeric\" }",
        );
    std::fs::write(&rules, &filled)?;
    let (ok, findings, stderr) = tokio::task::block_in_place(|| transform(&config, "check"))?;
    assert!(ok, "filled draft must pass check:\n{findings}\n{stderr}\n{filled}");

    // The shipped demo rules pass too.
    std::fs::copy(format!("{REPO}/compose/shop.rules.toml"), &rules)?;
    let (ok, findings, _) = tokio::task::block_in_place(|| transform(&config, "check"))?;
    assert!(ok, "compose/shop.rules.toml must pass check:\n{findings}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_finds_each_deliberate_mistake() -> anyhow::Result<()> {
    let pg = PgCluster::start()?;
    let db1 = pg.create_database("shop1").await?;
    let db2 = pg.create_database("shop2").await?;
    pg.connect(&db1).await?.batch_execute(&std::fs::read_to_string(format!("{REPO}/compose/shop.sql"))?).await?;
    pg.connect(&db2).await?.batch_execute(&std::fs::read_to_string(format!("{REPO}/compose/shop-v2.sql"))?).await?;
    let dir = tempfile::tempdir()?;
    let rules = dir.path().join("broken.toml");
    std::fs::write(
        &rules,
        r#"
[[table]]
source = "public.customers"
[[table.target]]
table = "public.clients"
drop = ["full_name"]
[table.target.columns]
first_name = { expr = 'full_nam.split(" ")[0]' }
last_name = { const = "x" }
[[table.target]]
table = "public.clientz"

[[table]]
source = "public.orders"
[[table.target]]
table = "public.orders"
filter = "amount_cents > 0"
key = ["nope"]
"#,
    )?;
    let config = write_config(
        dir.path(),
        &pg,
        (&db1, &db2),
        "127.0.0.1:1",
        "p",
        Some(&rules),
        &["public.customers", "public.orders"],
    )?;
    let (ok, findings, _) = tokio::task::block_in_place(|| transform(&config, "check"))?;
    assert!(!ok, "{findings}");
    for expected in [
        "full_nam",                                           // unknown source column in an expression
        "target table \"public\".\"clientz\" does not exist", // missing target table
        "writes column \"legacy_flags\"",                     // a column DB2 does not have
        "NOT NULL column amount",                             // a NOT NULL target column nobody feeds
        "key column \"nope\" does not exist",                 // a key that is not in the target
        "REPLICA IDENTITY FULL",                              // a filter on non-key columns without old values
        "writes column \"amount_cents\"",                     // renamed in DB2, passed unchanged by the rule
    ] {
        assert!(findings.contains(expected), "{expected:?} missing from:\n{findings}");
    }

    // `run` makes the same checks before it reads a record: it stops at once, with the same findings.
    let mut worker = start_worker(&config, &dir.path().join("run.log"))?;
    let status = tokio::task::block_in_place(|| {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = worker.try_wait()? {
                return anyhow::Ok(Some(status));
            }
            if std::time::Instant::now() > deadline {
                worker.kill()?;
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    })?;
    let log = std::fs::read_to_string(dir.path().join("run.log"))?;
    assert!(status.is_some_and(|s| !s.success()), "run started with rules check refuses:\n{log}");
    for expected in ["writes column \"legacy_flags\"", "target table \"public\".\"clientz\" does not exist"] {
        assert!(log.contains(expected), "{expected:?} missing from run's refusal:\n{log}");
    }
    Ok(())
}

/// A cluster with a database holding `items(id bigint PRIMARY KEY, price_cents <price_type>, name text)` and the
/// target of the tests' rules, `products` (a worker checks its rules against DB2 at start; the tests use the one
/// database as DB1 and DB2).
async fn items_database(price_type: &str) -> anyhow::Result<(PgCluster, String)> {
    let pg = PgCluster::start()?;
    let db = pg.create_database("items").await?;
    let create = format!(
        "CREATE TABLE items (id bigint PRIMARY KEY, price_cents {price_type}, name text);
         CREATE TABLE products (id bigint PRIMARY KEY, price_cents {price_type}, name text, price numeric, label text);"
    );
    pg.connect(&db).await?.batch_execute(&create).await?;
    Ok((pg, db))
}

fn raw_record(i: u64) -> RawRecord {
    let text = |name: &str, type_name: &str, oid: u32, value: String| Column {
        name: name.into(),
        type_name: type_name.into(),
        type_oid: oid,
        value: Datum::Text(value),
    };
    RawRecord {
        v: ENVELOPE_VERSION,
        pos: Position::new(Lsn(0x1000_0000 + i / 4 * 64), 1 + i % 4),
        op: Op::Insert,
        source: TableRef::new("public", "items"),
        xid: Some(1000 + (i / 4) as u32),
        key: vec!["id".into()],
        new: Row(vec![
            text("id", "bigint", 20, i.to_string()),
            text("price_cents", "bigint", 20, (i * 7).to_string()),
            text("name", "text", 25, format!("item {i}")),
        ]),
        old: None,
        copy: None,
    }
}

/// The 4-partition raw topic of `public.items` and a producer with the pipeline's defaults.
async fn items_raw_topic(
    brokers: &str,
    prefix: &str,
) -> anyhow::Result<(String, rdkafka::producer::FutureProducer<kafka::ServiceContext>)> {
    let kafka_config = KafkaConfig::new(brokers.to_owned());
    let raw_topic = format!("{prefix}.raw.public.items");
    let admin = kafka::admin(&kafka_config, "tests")?;
    for result in
        admin.create_topics(&[NewTopic::new(&raw_topic, 4, TopicReplication::Fixed(1))], &AdminOptions::new()).await?
    {
        result.map_err(|(t, e)| anyhow::anyhow!("{t}: {e}"))?;
    }
    Ok((raw_topic, kafka::producer(&kafka_config, "tests")?))
}

fn start_worker(config: &Path, log: &Path) -> anyhow::Result<Child> {
    Ok(Command::new(env!("CARGO_BIN_EXE_pgm-test-transform"))
        .arg("--config")
        .arg(config)
        .arg("run")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log)?)
        .spawn()?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_one_killed_every_key_arrives_and_repeats_are_identical() -> anyhow::Result<()> {
    const RECORDS: u64 = 100_000;
    let (pg, db) = items_database("bigint").await?;
    let brokers = shared_brokers()?;
    let prefix = unique("tw");
    let dir = tempfile::tempdir()?;
    let rules = dir.path().join("rules.toml");
    std::fs::write(
        &rules,
        "[[table]]\nsource = \"public.items\"\n[[table.target]]\ntable = \"public.products\"\n[table.target.columns]\nprice = { from = \"price_cents\", convert = \"cents_to_numeric\" }\nlabel = { expr = 'name.to_upper()' }\n",
    )?;
    let config = write_config(dir.path(), &pg, (&db, &db), &brokers, &prefix, Some(&rules), &["public.items"])?;

    let (raw_topic, producer) = items_raw_topic(&brokers, &prefix).await?;
    let mut partition_of = HashMap::new();
    let mut deliveries = Vec::with_capacity(RECORDS as usize);
    for i in 0..RECORDS {
        let raw = raw_record(i);
        let key = raw.pos.to_key();
        let partition = (i % 4) as i32;
        partition_of.insert(key.clone(), partition);
        let payload = serde_json::to_vec(&raw)?;
        loop {
            match producer.send_result(FutureRecord::to(&raw_topic).partition(partition).key(&key).payload(&payload)) {
                Ok(delivery) => {
                    deliveries.push(delivery);
                    break;
                }
                Err((_, _)) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
    }
    let mut first = start_worker(&config, &dir.path().join("w1.log"))?;
    let mut second = start_worker(&config, &dir.path().join("w2.log"))?;
    for delivery in deliveries {
        delivery.await?.map_err(|(e, _)| e)?;
    }
    // Both workers are consuming by now; kill one mid-stream.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    first.kill()?;
    first.wait()?;
    // A supervisor restarts the killed worker after the session timeout (6 s here); the takeover without a restart
    // is `a_surviving_worker_takes_over_every_partition_without_help`.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let mut first = start_worker(&config, &dir.path().join("w1-restarted.log"))?;

    let out_topic = format!("{prefix}.out.public.items");
    let deadline = Instant::now() + Duration::from_secs(240);
    let (records, by_key) = loop {
        let records = tokio::task::block_in_place(|| read_all(&brokers, &out_topic)).unwrap_or_default();
        let mut by_key: HashMap<Vec<u8>, usize> = HashMap::new();
        for (index, record) in records.iter().enumerate() {
            by_key.entry(record.key.clone()).or_insert(index);
        }
        if by_key.len() as u64 >= RECORDS {
            break (records, by_key);
        }
        if Instant::now() >= deadline {
            let mut missing = [0u64; 4];
            for i in 0..RECORDS {
                if !by_key.contains_key(raw_record(i).pos.to_key().as_bytes()) {
                    missing[(i % 4) as usize] += 1;
                }
            }
            let logs: String = ["w1.log", "w2.log", "w1-restarted.log"]
                .iter()
                .map(|name| {
                    format!("--- {name}\n{}", std::fs::read_to_string(dir.path().join(name)).unwrap_or_default())
                })
                .collect();
            anyhow::bail!(
                "only {} of {RECORDS} keys arrived; missing per raw partition {missing:?}\n{logs}",
                by_key.len()
            );
        }
    };
    for worker in [&mut first, &mut second] {
        worker.kill()?;
        worker.wait()?;
    }

    let mut repeats = 0;
    for record in &records {
        let original = &records[by_key[&record.key]];
        if !std::ptr::eq(original, record) {
            repeats += 1;
            ensure!(
                original.value == record.value && original.partition == record.partition,
                "a repeat differs from its original"
            );
        }
        let key = String::from_utf8(record.key.clone())?;
        ensure!(partition_of[&key] == record.partition, "{key}: out partition differs from its raw partition");
    }
    // Spot-check the content of one record.
    let sample = records.iter().find(|r| r.key == raw_record(4242).pos.to_key().into_bytes()).context("record 4242")?;
    let out = OutRecord::decode(
        &sample.value,
        RecordOrigin { topic: &out_topic, partition: sample.partition, offset: sample.offset },
    )?;
    assert_eq!(out.ops[0].target, TableRef::new("public", "products"));
    assert_eq!(out.ops[0].new.get("price"), pgm_common::change::Cell::Value("296.94"));
    assert_eq!(out.ops[0].new.get("label"), pgm_common::change::Cell::Value("ITEM 4242"));
    eprintln!("two workers: {RECORDS} keys, {} out records ({repeats} repeats)", records.len());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_record_stops_the_worker_and_it_resumes_there_after_the_rule_is_fixed() -> anyhow::Result<()> {
    let (pg, db) = items_database("text").await?;
    let brokers = shared_brokers()?;
    let prefix = unique("tp");
    let dir = tempfile::tempdir()?;
    let rules = dir.path().join("rules.toml");
    let write_rules = |convert: &str| {
        std::fs::write(
            &rules,
            format!("[[table]]\nsource = \"public.items\"\n[[table.target]]\ntable = \"public.products\"\n[table.target.columns]\nprice = {{ from = \"price_cents\", convert = \"{convert}\" }}\n"),
        )
    };
    write_rules("cents_to_numeric")?;
    let config = write_config(dir.path(), &pg, (&db, &db), &brokers, &prefix, Some(&rules), &["public.items"])?;

    let (raw_topic, producer) = items_raw_topic(&brokers, &prefix).await?;
    for i in 0..20u64 {
        let mut raw = raw_record(i);
        if i == 10 {
            raw.new.0[1].value = Datum::Text("secret-not-cents".into());
        }
        let key = raw.pos.to_key();
        let payload = serde_json::to_vec(&raw)?;
        producer
            .send(FutureRecord::to(&raw_topic).partition(0).key(&key).payload(&payload), Duration::from_secs(10))
            .await
            .map_err(|(e, _)| e)?;
    }

    // The worker stops at record 10, naming rule, position and column, not the value.
    let output = tokio::task::block_in_place(|| {
        Command::new(env!("CARGO_BIN_EXE_pgm-test-transform")).arg("--config").arg(&config).arg("run").output()
    })?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    let poison = raw_record(10).pos;
    assert!(
        stderr.contains(&poison.to_string())
            && stderr.contains("column price")
            && stderr.contains("\"public\".\"items\" → \"public\".\"products\""),
        "{stderr}"
    );
    assert!(!stderr.contains("secret-not-cents"), "the value must not be logged:\n{stderr}");
    let out_topic = format!("{prefix}.out.public.items");
    let keys = |records: &[pgm_test_support::kafka::Record]| -> std::collections::BTreeSet<Vec<u8>> {
        records.iter().map(|r| r.key.clone()).collect()
    };
    let before: std::collections::BTreeSet<Vec<u8>> =
        (0..10).map(|i| raw_record(i).pos.to_key().into_bytes()).collect();
    let out = tokio::task::block_in_place(|| read_all(&brokers, &out_topic))?;
    assert_eq!(keys(&out), before, "exactly the records before the poison record are out");

    // Fixed rule: the worker resumes at the poison record and finishes the partition.
    write_rules("text")?;
    let mut worker = start_worker(&config, &dir.path().join("fixed.log"))?;
    let all: std::collections::BTreeSet<Vec<u8>> = (0..20).map(|i| raw_record(i).pos.to_key().into_bytes()).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = tokio::task::block_in_place(|| read_all(&brokers, &out_topic))?;
        if keys(&out) == all {
            break;
        }
        if Instant::now() >= deadline {
            let missing: Vec<String> =
                all.difference(&keys(&out)).map(|k| String::from_utf8_lossy(k).into_owned()).collect();
            anyhow::bail!(
                "after the fix {} of 20 keys are out, missing {missing:?}; worker log:\n{}",
                keys(&out).len(),
                std::fs::read_to_string(dir.path().join("fixed.log")).unwrap_or_default()
            );
        }
    }
    worker.kill()?;
    worker.wait()?;
    Ok(())
}

/// Produces raw records `range` round-robin over the 4 partitions and waits for their acknowledgements.
async fn produce_items(
    producer: &rdkafka::producer::FutureProducer<kafka::ServiceContext>,
    raw_topic: &str,
    range: std::ops::Range<u64>,
) -> anyhow::Result<()> {
    let mut deliveries = Vec::new();
    for i in range {
        let raw = raw_record(i);
        let payload = serde_json::to_vec(&raw)?;
        let key = raw.pos.to_key();
        let record = FutureRecord::to(raw_topic).partition((i % 4) as i32).key(&key).payload(&payload);
        deliveries.push(producer.send_result(record).map_err(|(e, _)| e)?);
    }
    for delivery in deliveries {
        delivery.await?.map_err(|(e, _)| e)?;
    }
    Ok(())
}

/// Waits until every record of `range` is in the out topic; how long it took.
fn wait_transformed(
    brokers: &str,
    out_topic: &str,
    range: std::ops::Range<u64>,
    logs: &Path,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let wanted: std::collections::HashSet<Vec<u8>> = range.map(|i| raw_record(i).pos.to_key().into_bytes()).collect();
    loop {
        let records = read_all(brokers, out_topic).unwrap_or_default();
        let found = records
            .iter()
            .filter(|r| wanted.contains(&r.key))
            .map(|r| &r.key)
            .collect::<std::collections::HashSet<_>>();
        if found.len() == wanted.len() {
            return Ok(started.elapsed());
        }
        if started.elapsed() > Duration::from_secs(60) {
            let logs: String = std::fs::read_dir(logs)?
                .flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
                .map(|e| {
                    format!("--- {}\n{}", e.path().display(), std::fs::read_to_string(e.path()).unwrap_or_default())
                })
                .collect();
            anyhow::bail!(
                "only {} of {} records transformed after 60 s: partitions nobody holds?\n{logs}",
                found.len(),
                wanted.len()
            );
        }
    }
}

/// A transform group's setting for `items`: a rule (so transform carries the table whatever
/// `transform.passthrough` says), a configuration, the raw topic with a producer, and the out topic's name.
struct ItemsGroup {
    _pg: PgCluster,
    dir: tempfile::TempDir,
    config: PathBuf,
    raw_topic: String,
    producer: rdkafka::producer::FutureProducer<kafka::ServiceContext>,
    out_topic: String,
}

impl ItemsGroup {
    async fn new(brokers: &str, name: &str) -> anyhow::Result<Self> {
        let (pg, db) = items_database("bigint").await?;
        let prefix = unique(name);
        let dir = tempfile::tempdir()?;
        let rules = dir.path().join("rules.toml");
        std::fs::write(
            &rules,
            "[[table]]\nsource = \"public.items\"\n[[table.target]]\ntable = \"public.products\"\n",
        )?;
        let config = write_config(dir.path(), &pg, (&db, &db), brokers, &prefix, Some(&rules), &["public.items"])?;
        let (raw_topic, producer) = items_raw_topic(brokers, &prefix).await?;
        Ok(ItemsGroup { _pg: pg, dir, config, raw_topic, producer, out_topic: format!("{prefix}.out.public.items") })
    }
}

/// However a worker died — alone, or together with the broker — the worker still running gets every partition
/// within the session timeout (6 s here) plus a margin, with nobody starting anything by hand.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_surviving_worker_takes_over_every_partition_without_help() -> anyhow::Result<()> {
    let mut broker = pgm_test_support::broker::Broker::start()?;
    let brokers = broker.brokers();
    let ItemsGroup { _pg, dir, config, raw_topic, producer, out_topic } = ItemsGroup::new(&brokers, "takeover").await?;
    let logs = dir.path();

    // Two workers share the 4 partitions.
    let mut first = start_worker(&config, &logs.join("w1.log"))?;
    let mut second = start_worker(&config, &logs.join("w2.log"))?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    produce_items(&producer, &raw_topic, 0..400).await?;
    let took = tokio::task::block_in_place(|| wait_transformed(&brokers, &out_topic, 0..400, logs))?;
    eprintln!("two workers: 400 records in {:.1} s", took.as_secs_f64());

    // 1. The first worker (the group's leader) is killed: the second takes its partitions.
    first.kill()?;
    first.wait()?;
    produce_items(&producer, &raw_topic, 400..800).await?;
    let took = tokio::task::block_in_place(|| wait_transformed(&brokers, &out_topic, 400..800, logs))?;
    eprintln!("after kill -9 of the leader: the survivor had every partition's records in {:.1} s", took.as_secs_f64());
    ensure!(took < Duration::from_secs(30), "takeover took {took:?}");

    // 2. A third worker joins; then the broker and the second worker die together, and the broker comes back on
    //    its data (a supervisor restarts the broker, nobody restarts the worker).
    let mut third = start_worker(&config, &logs.join("w3.log"))?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    produce_items(&producer, &raw_topic, 800..1200).await?;
    tokio::task::block_in_place(|| wait_transformed(&brokers, &out_topic, 800..1200, logs))?;
    second.kill()?;
    broker.kill()?;
    second.wait()?;
    broker.restart()?;
    let producer = kafka::producer(&KafkaConfig::new(brokers.clone()), "t2")?;
    produce_items(&producer, &raw_topic, 1200..1600).await?;
    let took = tokio::task::block_in_place(|| wait_transformed(&brokers, &out_topic, 1200..1600, logs))?;
    eprintln!(
        "after the broker and a worker died together: the survivor had every partition's records in {:.1} s",
        took.as_secs_f64()
    );
    ensure!(took < Duration::from_secs(30), "takeover after the broker restart took {took:?}");
    ensure!(third.try_wait()?.is_none(), "the surviving worker exited");
    third.kill()?;
    third.wait()?;
    Ok(())
}

/// Kafka's static membership (`transform.instance_id`) with the cooperative assignor: of two workers, one is killed
/// (-9) and started again under the same name within the session timeout. It takes its own partitions back, the
/// other worker's partitions never move (no revocation and no new assignment in its log), and every record of
/// before and after is transformed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_static_worker_takes_its_partitions_back_and_nobody_elses_move() -> anyhow::Result<()> {
    let brokers = shared_brokers()?;
    let ItemsGroup { _pg, dir, config, raw_topic, producer, out_topic } = ItemsGroup::new(&brokers, "static").await?;
    let logs = dir.path();
    let start = |name: &str, log: &str| -> anyhow::Result<Child> {
        Ok(Command::new(env!("CARGO_BIN_EXE_pgm-test-transform"))
            .arg("--config")
            .arg(&config)
            .arg("run")
            .env("PGM__TRANSFORM__INSTANCE_ID", name)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(logs.join(log))?)
            .spawn()?)
    };
    let lines = |log: &str, what: &str| {
        std::fs::read_to_string(logs.join(log)).unwrap_or_default().lines().filter(|l| l.contains(what)).count()
    };
    let assigned = |log: &str| lines(log, "partitions assigned");
    // Partitions a worker holds, from its log: the cooperative assignor logs what it adds and what it takes away.
    let held = |log: &str| {
        let count = |what: &str| -> i64 {
            std::fs::read_to_string(logs.join(log))
                .unwrap_or_default()
                .lines()
                .filter(|l| l.contains(what))
                .filter_map(|l| l.rsplit("partitions=").next()?.trim().parse::<i64>().ok())
                .sum()
        };
        count("partitions assigned") - count("partitions revoked")
    };

    let mut a = start("worker-a", "a1.log")?;
    let b = start("worker-b", "b.log")?;
    produce_items(&producer, &raw_topic, 0..400).await?;
    tokio::task::block_in_place(|| wait_transformed(&brokers, &out_topic, 0..400, logs))?;
    // The group has settled once both hold partitions and together all four (the second join moves some).
    pgm_test_support::wait::until("both workers holding partitions", Duration::from_secs(60), || async {
        let (ha, hb) = (held("a1.log"), held("b.log"));
        Ok((ha > 0 && hb > 0 && ha + hb == 4).then_some(()))
    })
    .await?;
    let (b_assigned, b_revoked) = (assigned("b.log"), lines("b.log", "partitions revoked"));

    a.kill()?;
    a.wait()?;
    let a = start("worker-a", "a2.log")?;
    produce_items(&producer, &raw_topic, 400..800).await?;
    let took = tokio::task::block_in_place(|| wait_transformed(&brokers, &out_topic, 400..800, logs))?;
    eprintln!("a static worker killed and restarted: every record transformed {:.1} s later", took.as_secs_f64());
    ensure!(assigned("a2.log") > 0, "the restarted worker did not get its partitions back");
    ensure!(
        assigned("b.log") == b_assigned && lines("b.log", "partitions revoked") == b_revoked,
        "the other worker's partitions moved while worker-a restarted:\n{}",
        std::fs::read_to_string(logs.join("b.log"))?
    );
    for mut worker in [a, b] {
        ensure!(worker.try_wait()?.is_none(), "a worker exited");
        worker.kill()?;
        worker.wait()?;
    }
    Ok(())
}

/// A record sent in parts whose last parts never come (capture died between them and is not back): the worker's
/// health says what it waits for, naming the table, the position and the setting, instead of `ok`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_whose_parts_stop_coming_shows_in_health_with_table_and_position() -> anyhow::Result<()> {
    let (pg, db) = items_database("bigint").await?;
    let brokers = shared_brokers()?;
    let prefix = unique("tparts");
    let dir = tempfile::tempdir()?;
    let config = write_config(dir.path(), &pg, (&db, &db), &brokers, &prefix, None, &["public.items"])?;
    let (raw_topic, producer) = items_raw_topic(&brokers, &prefix).await?;
    let raw = raw_record(7);
    let payload = serde_json::to_vec(&raw)?;
    let key = raw.pos.to_key();
    let size = payload.len().div_ceil(3);
    // Parts 1 and 2 of 3.
    for (index, slice) in payload.chunks(size).enumerate().take(2) {
        let headers = pgm_common::parts::headers(index, 3).context("a part has a header")?;
        let record = FutureRecord::to(&raw_topic).partition(0).key(&key).payload(slice).headers(headers);
        producer.send(record, Duration::from_secs(10)).await.map_err(|(e, _)| e)?;
    }
    let worker = pgm_test_support::stack::Running {
        child: start_worker(&config, &dir.path().join("worker.log"))?,
        log: dir.path().join("worker.log"),
    };
    let health =
        pgm_test_support::wait::until("the worker to report the missing part", Duration::from_secs(60), || async {
            Ok(worker.healthz().ok().filter(|body| body.starts_with("waiting: ")))
        })
        .await
        .with_context(|| worker.log())?;
    for expected in ["\"public\".\"items\"", key.as_str(), "came in 3 parts; 2 arrived", "pgm-capture"] {
        ensure!(health.contains(expected), "{expected:?} missing from the worker's health: {health}");
    }
    ensure!(worker.log().contains("waiting: the record of"), "no log line:\n{}", worker.log());
    Ok(())
}
