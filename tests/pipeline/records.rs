//! The topics as a team outside pg-migrator reads them: after capture and transform were killed mid-stream, records
//! repeat, and the rule docs/records.md gives (per partition, drop a key at or below the last one taken; on the txn
//! topic, per kind of record) leaves exactly what the commit records count.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::BINS;
use anyhow::{ensure, Context};
use pgm_test_support::kafka::{list_topics, read_all, Record};
use pgm_test_support::stack::{Options, Service, Stack};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const SCHEMA: &str = "CREATE TABLE items (id int PRIMARY KEY, v text NOT NULL);
                      CREATE TABLE notes (id int PRIMARY KEY, body text);";
const RULES: &str = "[[table]]\nsource = \"public.items\"\n[[table.target]]\ntable = \"public.items\"\n\
                     [[table]]\nsource = \"public.notes\"\n[[table.target]]\ntable = \"public.notes\"\n";

/// What an outside reader keeps of one partition: records in offset order, repeats dropped by key.
#[derive(Default)]
struct Kept {
    last: Option<Vec<u8>>,
    records: Vec<Record>,
    /// Every key taken, with its value: a repeat must carry the same content.
    values: HashMap<Vec<u8>, Vec<u8>>,
    repeats: u64,
    changed_repeats: u64,
}

impl Kept {
    fn offer(&mut self, record: Record) {
        if self.last.as_ref().is_some_and(|last| record.key <= *last) {
            self.repeats += 1;
            if self.values.get(&record.key).is_some_and(|v| *v != record.value) {
                self.changed_repeats += 1;
            }
            return;
        }
        self.last = Some(record.key.clone());
        self.values.insert(record.key.clone(), record.value.clone());
        self.records.push(record);
    }
}

/// The part of a key that names the transaction (`00000016/B374D848`): its commit LSN.
fn txn_of(key: &[u8]) -> String {
    String::from_utf8_lossy(&key[..key.len().min(17)]).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outside_reader_dropping_repeats_by_key_counts_exactly_what_the_commit_records_say() -> anyhow::Result<()> {
    let options = Options {
        source_schema: SCHEMA,
        target_schema: SCHEMA,
        tables: &["public.items", "public.notes"],
        rules: Some(RULES),
        partitions: 3,
        apply: "group_ms = 50",
        librdkafka: "",
        create_slot: true,
    };
    let stack = Stack::new(BINS, pgm_test_support::broker::shared_brokers()?, options).await?;
    let mut capture = stack.spawn(Service::Capture, &["run"])?;
    let mut transform = stack.spawn(Service::Transform, &["run"])?;
    let _apply = stack.spawn(Service::Apply, &["run"])?;

    // Transactions of 1 to 4 rows over both tables, inserts, updates and deletes, until the kills are over.
    let done = Arc::new(AtomicBool::new(false));
    let transactions = Arc::new(AtomicU64::new(0));
    let writer = {
        let (done, transactions) = (done.clone(), transactions.clone());
        let db1 = stack.source().await?;
        tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(23);
            let mut id = 0i32;
            while !done.load(Ordering::Relaxed) {
                let mut sql = String::from("BEGIN;");
                for _ in 0..rng.random_range(1..=4) {
                    id += 1;
                    let old = rng.random_range(1..=id);
                    sql.push_str(&match rng.random_range(0..5) {
                        0 => format!("UPDATE items SET v = v || '+' WHERE id = {old};"),
                        1 => format!("DELETE FROM notes WHERE id = {old};"),
                        2 => format!("INSERT INTO notes VALUES ({id}, repeat('n', {}));", rng.random_range(0..200)),
                        _ => format!("INSERT INTO items VALUES ({id}, 'v{id}');"),
                    });
                }
                sql.push_str("COMMIT;");
                db1.batch_execute(&sql).await?;
                transactions.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            anyhow::Ok(())
        })
    };
    let mut rng = StdRng::seed_from_u64(5);
    for round in 0..6 {
        tokio::time::sleep(Duration::from_millis(rng.random_range(700..1500))).await;
        if round % 2 == 0 {
            capture.kill9()?;
            capture = stack.spawn(Service::Capture, &["run"])?;
        } else {
            transform.kill9()?;
            transform = stack.spawn(Service::Transform, &["run"])?;
        }
    }
    done.store(true, Ordering::Relaxed);
    writer.await??;
    stack.marker("read-back").await?;
    stack.wait_marker("read-back", Duration::from_secs(120)).await.with_context(|| stack.logs())?;
    stack.assert_same(&["public.items", "public.notes"]).await?;

    // Read every topic of the pipeline as an outside consumer, following only the documented rule.
    let brokers = stack.brokers.clone();
    let prefix = format!("{}.", stack.prefix);
    let topics = tokio::task::block_in_place(|| list_topics(&brokers, &prefix))?;
    let mut kept: BTreeMap<(String, i32), Kept> = BTreeMap::new();
    let mut txn_kinds: BTreeMap<String, Kept> = BTreeMap::new();
    for topic in &topics {
        for record in tokio::task::block_in_place(|| read_all(&brokers, topic))? {
            if topic.ends_with(".txn") {
                let value: serde_json::Value = serde_json::from_slice(&record.value)?;
                let kind = value["kind"].as_str().context("a txn record without kind")?.to_owned();
                txn_kinds.entry(kind).or_default().offer(record);
            } else {
                kept.entry((record.topic.clone(), record.partition)).or_default().offer(record);
            }
        }
    }

    // What the commit records say, per (raw topic, partition, transaction) ...
    let commits = txn_kinds.get("commit").context("no commit records")?;
    let mut expected: BTreeMap<(String, i32, String), u64> = BTreeMap::new();
    for record in &commits.records {
        let value: serde_json::Value = serde_json::from_slice(&record.value)?;
        for count in value["counts"].as_array().context("commit without counts")? {
            let topic = count["topic"].as_str().context("count without topic")?.to_owned();
            let partition = count["partition"].as_i64().context("count without partition")? as i32;
            let n = count["count"].as_u64().context("count without count")?;
            expected.insert((topic, partition, txn_of(&record.key)), n);
        }
    }
    // ... and what the raw and out topics hold once repeats are dropped (an out record per raw record).
    let raw = format!("{}raw.", prefix);
    let out = format!("{}out.", prefix);
    let mut raw_found: BTreeMap<(String, i32, String), u64> = BTreeMap::new();
    let mut out_found: BTreeMap<(String, i32, String), u64> = BTreeMap::new();
    for ((topic, partition), part) in &kept {
        for record in &part.records {
            if topic.starts_with(&raw) {
                *raw_found.entry((topic.clone(), *partition, txn_of(&record.key))).or_default() += 1;
            } else if let Some(table) = topic.strip_prefix(&out) {
                *out_found.entry((format!("{raw}{table}"), *partition, txn_of(&record.key))).or_default() += 1;
            }
        }
    }
    for (kind, part) in &txn_kinds {
        eprintln!("txn {kind}: {} kept, {} repeats", part.records.len(), part.repeats);
    }
    let repeats: u64 = kept.values().chain(txn_kinds.values()).map(|k| k.repeats).sum();
    // A heartbeat repeats its key with a later sent_at_ms while DB1 is idle (the same WAL end): the only repeat
    // whose content differs, and docs/records.md says so.
    let changed: u64 = kept
        .values()
        .chain(txn_kinds.iter().filter(|(kind, _)| *kind != "heartbeat").map(|(_, k)| k))
        .map(|k| k.changed_repeats)
        .sum();
    let txns = transactions.load(Ordering::Relaxed);
    eprintln!(
        "outside reader: {} topics, {txns} workload transactions, {} commit records kept, {} row records kept, \
         {repeats} repeats dropped ({changed} with other content, heartbeats aside)",
        topics.len(),
        commits.records.len(),
        raw_found.values().sum::<u64>()
    );
    ensure!(repeats > 0, "the kills left no repeats: this test proves nothing (kill later or write faster)");
    ensure!(changed == 0, "{changed} repeats carried other content than the record they repeat");
    ensure!(commits.records.len() > 100, "only {} commit records", commits.records.len());
    ensure!(raw_found == expected, "{}", difference("raw", &expected, &raw_found));
    ensure!(out_found == expected, "{}", difference("out", &expected, &out_found));
    Ok(())
}

fn difference(
    what: &str,
    expected: &BTreeMap<(String, i32, String), u64>,
    found: &BTreeMap<(String, i32, String), u64>,
) -> String {
    let mut lines = Vec::new();
    for key in expected.keys().chain(found.keys()) {
        let (e, f) = (expected.get(key).copied().unwrap_or(0), found.get(key).copied().unwrap_or(0));
        if e != f && lines.len() < 20 {
            lines.push(format!("{key:?}: commit says {e}, {what} topics hold {f}"));
        }
    }
    format!("{what} records differ from the commit records' counts:\n{}", lines.join("\n"))
}
