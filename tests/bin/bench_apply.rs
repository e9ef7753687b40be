//! Benchmark of pgm-apply; prints figures, asserts nothing about time.
//!
//!   cargo build --release -p pgm-tests --bins && target/release/pgm-bench-apply [BIG_ROWS]
//!
//! 1. Insert methods on DB2 alone, 1,000 rows per statement, values bound as text: `unnest` of text arrays (what
//!    apply uses), multi-row `VALUES`, and `COPY … FROM STDIN`.
//! 2. pgm-apply (the `pgm-test-apply` binary next to this one) draining out/txn topics prepared in the broker:
//!    20,000 single-row transactions, 100 transactions of 1,000 rows, one transaction of BIG_ROWS rows (default
//!    1,000,000). Rows/s are rows over the process's wall time, start-up included; peak RSS is VmHWM from
//!    /proc, sampled every 50 ms.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::future::try_join_all;
use pgm_common::change::{Column, Datum, Row, TableRef};
use pgm_common::config::KafkaConfig;
use pgm_common::envelope::{Op, OutRecord, PartitionCount, TargetOp, TxnRecord, ENVELOPE_VERSION};
use pgm_common::topics::Topics;
use pgm_common::{kafka, Lsn, Position};
use pgm_test_support::broker::shared_brokers;
use pgm_test_support::names::unique;
use pgm_test_support::pg::PgCluster;
use rdkafka::admin::{AdminOptions, NewTopic, TopicReplication};
use rdkafka::producer::{FutureProducer, FutureRecord};

const PARTITIONS: i32 = 4;

fn column(name: &str, type_name: &str, value: String) -> Column {
    Column { name: name.into(), type_name: type_name.into(), type_oid: 0, value: Datum::Text(value) }
}

fn row(id: u64) -> Row {
    Row(vec![
        column("id", "bigint", id.to_string()),
        column("account", "integer", (id % 997).to_string()),
        column("amount", "numeric", format!("{}.{:02}", id % 100_000, id % 100)),
        column("note", "text", format!("order {id} from the benchmark")),
        column("at", "timestamp with time zone", "2026-11-25 21:24:32.251444+00".into()),
    ])
}

const TABLE_DDL: &str = "(id bigint PRIMARY KEY, account integer, amount numeric(14,2), note text, at timestamptz)";

async fn insert_methods(db: &tokio_postgres::Client) -> anyhow::Result<()> {
    const ROWS: u64 = 200_000;
    const PER: u64 = 1_000;
    println!("insert methods, {ROWS} rows, {PER} per statement:");
    for method in ["unnest", "values", "copy"] {
        db.batch_execute(&format!("DROP TABLE IF EXISTS m; CREATE TABLE m {TABLE_DDL}")).await?;
        let started = Instant::now();
        for chunk in 0..ROWS / PER {
            let rows: Vec<Vec<String>> = (chunk * PER..(chunk + 1) * PER)
                .map(|id| row(id).0.into_iter().map(|c| c.value.as_text().unwrap_or_default().to_owned()).collect())
                .collect();
            match method {
                "unnest" => {
                    let columns: Vec<Vec<Option<&str>>> =
                        (0..5).map(|c| rows.iter().map(|r| Some(r[c].as_str())).collect()).collect();
                    let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
                        columns.iter().map(|c| c as &(dyn tokio_postgres::types::ToSql + Sync)).collect();
                    db.execute(
                        "INSERT INTO m (id, account, amount, note, at) SELECT v.n0::bigint, v.n1::integer, \
                         v.n2::numeric, v.n3::text, v.n4::timestamptz \
                         FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[]) AS v(n0, n1, n2, n3, n4)",
                        &params,
                    )
                    .await?;
                }
                "values" => {
                    let mut sql = String::from("INSERT INTO m (id, account, amount, note, at) VALUES ");
                    let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = Vec::new();
                    for (i, r) in rows.iter().enumerate() {
                        let n = i * 5;
                        if i > 0 {
                            sql.push(',');
                        }
                        sql.push_str(&format!(
                            "(${}::text::bigint, ${}::text::integer, ${}::text::numeric, ${}::text, ${}::text::timestamptz)",
                            n + 1,
                            n + 2,
                            n + 3,
                            n + 4,
                            n + 5
                        ));
                        for value in r {
                            params.push(value);
                        }
                    }
                    db.execute(sql.as_str(), &params).await?;
                }
                _ => {
                    use futures::SinkExt;
                    let sink = db.copy_in("COPY m (id, account, amount, note, at) FROM STDIN").await?;
                    let mut text = String::new();
                    for r in &rows {
                        // The benchmark's values hold no tab, newline or backslash: no escaping needed here.
                        text.push_str(&r.join("\t"));
                        text.push('\n');
                    }
                    let mut sink = std::pin::pin!(sink);
                    sink.send(bytes::Bytes::from(text)).await?;
                    sink.finish().await?;
                }
            }
        }
        let seconds = started.elapsed().as_secs_f64();
        println!("  {method:<7} {:>10.0} rows/s", ROWS as f64 / seconds);
    }
    db.batch_execute("DROP TABLE m").await?;
    Ok(())
}

/// Writes `txns` transactions of `rows_per_txn` inserts as transform and capture would (out and txn records).
async fn prepare_stream(
    producer: &FutureProducer,
    kafka: &KafkaConfig,
    topics: &Topics,
    table: &TableRef,
    txns: u64,
    rows_per_txn: u64,
) -> anyhow::Result<Lsn> {
    let admin = kafka::admin(kafka, "bench-admin")?;
    let raw = topics.raw(table)?;
    let out = topics.out(table)?;
    admin
        .create_topics(
            &[
                NewTopic::new(&out, PARTITIONS, TopicReplication::Fixed(1)),
                NewTopic::new(&topics.txn(), 1, TopicReplication::Fixed(1)),
            ],
            &AdminOptions::new(),
        )
        .await?;
    let mut id = 0u64;
    let mut last = Lsn::ZERO;
    let mut pending = Vec::new();
    for t in 0..txns {
        let commit_lsn = Lsn(0x0100_0000 + t * 0x100 + id * 0x80);
        last = commit_lsn;
        let mut counts: BTreeMap<i32, u64> = BTreeMap::new();
        for ordinal in 1..=rows_per_txn {
            id += 1;
            let pos = Position::new(commit_lsn, ordinal);
            let partition = (id % PARTITIONS as u64) as i32;
            *counts.entry(partition).or_default() += 1;
            let record = OutRecord {
                v: ENVELOPE_VERSION,
                pos,
                source: table.clone(),
                ops: vec![TargetOp {
                    op: Op::Insert,
                    target: table.clone(),
                    key: vec!["id".into()],
                    new: row(id),
                    old: None,
                    copy: None,
                }],
                pass_through: None,
            };
            let payload = serde_json::to_vec(&record)?;
            let key = pos.to_key();
            pending.push(
                producer
                    .send_result(FutureRecord::to(&out).partition(partition).key(&key).payload(&payload))
                    .map_err(|(e, _)| e)?,
            );
            if pending.len() >= 20_000 {
                try_join_all(pending.drain(..))
                    .await?
                    .into_iter()
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|(e, _)| e)?;
            }
        }
        let commit = TxnRecord::Commit {
            v: ENVELOPE_VERSION,
            xid: t as u32,
            commit_lsn,
            end_lsn: Lsn(commit_lsn.0 + 0x40),
            commit_time: Some("2026-11-25 21:24:32.251444+00".into()),
            counts: counts
                .into_iter()
                .map(|(partition, count)| PartitionCount { topic: raw.clone(), partition, count })
                .collect(),
        };
        let payload = serde_json::to_vec(&commit)?;
        let key = Position::new(commit_lsn, Position::COMMIT).to_key();
        pending.push(
            producer
                .send_result(FutureRecord::to(&topics.txn()).partition(0).key(&key).payload(&payload))
                .map_err(|(e, _)| e)?,
        );
    }
    try_join_all(pending.drain(..)).await?.into_iter().collect::<Result<Vec<_>, _>>().map_err(|(e, _)| e)?;
    Ok(last)
}

/// Runs pgm-apply until `until`; returns wall seconds, peak RSS in kB and CPU seconds.
fn run_apply(config: &std::path::Path, until: Lsn) -> anyhow::Result<(f64, u64, f64)> {
    let binary = std::env::current_exe()?.with_file_name("pgm-test-apply");
    anyhow::ensure!(
        binary.exists(),
        "{} missing: build with `cargo build --release -p pgm-tests --bins`",
        binary.display()
    );
    let started = Instant::now();
    let mut child = std::process::Command::new(&binary)
        .arg("--config")
        .arg(config)
        .args(["run", "--until", &until.to_string()])
        .env("RUST_LOG", std::env::var("PGM_BENCH_LOG").unwrap_or_else(|_| "warn".into()))
        .spawn()?;
    let (mut peak, mut cpu) = (0u64, 0.0f64);
    loop {
        if let Some((used, rss)) = pgm_test_support::process_usage(child.id()) {
            cpu = used;
            peak = peak.max(rss);
        }
        if let Some(status) = child.try_wait()? {
            anyhow::ensure!(status.success(), "pgm-apply failed: {status}");
            return Ok((started.elapsed().as_secs_f64(), peak, cpu));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let big: u64 = std::env::args().nth(1).map(|a| a.parse()).transpose()?.unwrap_or(1_000_000);
    let brokers = shared_brokers()?;
    let pg = PgCluster::start()?;
    let db_name = pg.create_database("bench").await?;
    let db = pg.connect(&db_name).await?;
    insert_methods(&db).await?;

    let dir = tempfile::tempdir()?;
    let kafka = KafkaConfig::new(brokers.clone());
    let producer: FutureProducer = kafka::client_config(&kafka, "bench", kafka::Role::Producer)
        .set("queue.buffering.max.messages", "100000")
        .set("linger.ms", "20")
        .create()?;
    println!("pgm-apply (rows/s over the process's wall time, start-up included):");
    for (name, txns, rows) in [
        ("single-row transactions", 20_000u64, 1u64),
        ("1,000-row transactions", 100, 1_000),
        ("one big transaction", 1, big),
    ] {
        let prefix = unique("bench");
        let table = TableRef::new("public", unique("t"));
        db.batch_execute(&format!("CREATE TABLE {} {TABLE_DDL}", table.quoted())).await?;
        let topics = Topics::new(&prefix)?;
        let produced = Instant::now();
        let until = prepare_stream(&producer, &kafka, &topics, &table, txns, rows).await?;
        let produce_s = produced.elapsed().as_secs_f64();
        let config = dir.path().join(format!("{prefix}.toml"));
        std::fs::write(
            &config,
            format!(
                "[source]\nhost = \"127.0.0.1\"\nport = {port}\nuser = \"postgres\"\ndbname = \"{db_name}\"\n\
                 [target]\nhost = \"127.0.0.1\"\nport = {port}\nuser = \"postgres\"\ndbname = \"{db_name}\"\n\
                 [kafka]\nbrokers = \"{brokers}\"\n[kafka.librdkafka]\n{extra}\n[topics]\nprefix = \"{prefix}\"\npartitions = {PARTITIONS}\n\
                 [tables]\ninclude = [\"public.{t}\"]\n[apply]\nmetrics_addr = \"127.0.0.1:0\"\n",
                port = pg.port(),
                t = table.table,
                extra = std::env::var("PGM_BENCH_LIBRDKAFKA").unwrap_or_default(),
            ),
        )?;
        let (seconds, peak_kb, cpu) = run_apply(&config, until)?;
        let count: i64 = db.query_one(&format!("SELECT count(*) FROM {}", table.quoted()), &[]).await?.get(0);
        anyhow::ensure!(count as u64 == txns * rows, "{name}: {count} rows applied, expected {}", txns * rows);
        println!(
            "  {name:<26} {txns:>6} txns x {rows:>7} rows: {:>9.0} rows/s, {:>8.0} txns/s, {seconds:>6.1} s, apply CPU {cpu:.1} s, peak RSS {peak_kb} kB (stream prepared in {produce_s:.1} s)",
            (txns * rows) as f64 / seconds,
            txns as f64 / seconds
        );
    }
    Ok(())
}
