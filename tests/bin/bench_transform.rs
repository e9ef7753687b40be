//! Benchmark of pgm-transform; prints figures, asserts nothing about time.
//!
//!   cargo run --release -p pgm-tests --bin pgm-bench-transform [-- RECORDS]
//!
//! 1. the rule engine alone: `Program::rewrite` on decoded records, one thread (records/s = per core);
//! 2. the same with JSON decode of the raw record and encode of the out record;
//! 3. the whole worker through the broker (Kafka started by the harness, or PGM_TEST_BROKERS): records/s wall
//!    clock and per CPU-second of this process.

use std::time::{Duration, Instant};

use pgm_common::change::{Column, Datum, Row, TableRef};
use pgm_common::config::PipelineConfig;
use pgm_common::envelope::{Op, RawRecord, RecordOrigin, ENVELOPE_VERSION};
use pgm_common::{kafka, Lsn, Position};
use pgm_test_support::broker::shared_brokers;
use pgm_test_support::names::unique;
use pgm_transform::catalog::{Catalog, ColumnInfo, TableInfo};
use pgm_transform::rewrite::Program;
use pgm_transform::rules::RulesFile;
use rdkafka::consumer::Consumer;
use rdkafka::producer::FutureRecord;

const SIMPLE: &str = r#"
[[table]]
source = "public.orders"
[[table.target]]
table = "public.orders_v2"
drop = ["legacy"]
[table.target.columns]
customer = "customer_id"
amount = { from = "amount_cents", convert = "cents_to_numeric" }
"#;

const WITH_EXPR: &str = r#"
[[table]]
source = "public.orders"
[[table.target]]
table = "public.orders_v2"
drop = ["legacy"]
[table.target.columns]
customer = "customer_id"
amount = { from = "amount_cents", convert = "cents_to_numeric" }
label = { expr = 'note.to_upper() + "-" + customer_id.to_string()' }
"#;

fn catalog() -> Catalog {
    let column = |name: &str, type_name: &str, oid| ColumnInfo {
        name: name.into(),
        type_name: type_name.into(),
        type_oid: oid,
        not_null: false,
        has_default: false,
    };
    let mut catalog = Catalog::default();
    catalog.tables.insert(
        TableRef::new("public", "orders"),
        TableInfo {
            columns: vec![
                column("id", "bigint", 20),
                column("customer_id", "bigint", 20),
                column("amount_cents", "bigint", 20),
                column("note", "text", 25),
                column("created_at", "timestamp with time zone", 1184),
                column("legacy", "text", 25),
            ],
            key: vec!["id".into()],
            replica_full: false,
        },
    );
    catalog
}

fn record(i: u64) -> RawRecord {
    let col = |name: &str, type_name: &str, oid, value: String| Column {
        name: name.into(),
        type_name: type_name.into(),
        type_oid: oid,
        value: Datum::Text(value),
    };
    RawRecord {
        v: ENVELOPE_VERSION,
        pos: Position::new(Lsn(0x1000_0000 + i * 64), 1),
        op: Op::Insert,
        source: TableRef::new("public", "orders"),
        xid: Some(i as u32),
        key: vec!["id".into()],
        new: Row(vec![
            col("id", "bigint", 20, i.to_string()),
            col("customer_id", "bigint", 20, (i % 1000).to_string()),
            col("amount_cents", "bigint", 20, (i * 37).to_string()),
            col("note", "text", 25, format!("order note {i}")),
            col("created_at", "timestamp with time zone", 1184, "2026-11-25 21:24:32.251444+00".into()),
            col("legacy", "text", 25, "x".into()),
        ]),
        old: None,
        copy: None,
    }
}

/// CPU seconds (user + system) this process has used.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks: f64 = fields.get(11).and_then(|u| u.parse::<f64>().ok()).unwrap_or(0.0)
        + fields.get(12).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    ticks / 100.0
}

fn engine(name: &str, rules: &str, records: &[RawRecord]) {
    let program = Program::compile(&RulesFile::from_toml_str(rules).unwrap(), &catalog()).unwrap();
    let start = Instant::now();
    let mut ops = 0;
    for raw in records {
        ops += program.rewrite(raw).unwrap().ops.len();
    }
    let rewrite = start.elapsed().as_secs_f64();
    let encoded: Vec<Vec<u8>> = records.iter().map(|r| serde_json::to_vec(r).unwrap()).collect();
    let start = Instant::now();
    for (i, bytes) in encoded.iter().enumerate() {
        let raw = RawRecord::decode(bytes, RecordOrigin { topic: "bench", partition: 0, offset: i as i64 }).unwrap();
        let out = program.rewrite(&raw).unwrap();
        std::hint::black_box(serde_json::to_vec(&out).unwrap());
    }
    let full = start.elapsed().as_secs_f64();
    let n = records.len() as f64;
    println!("{name:<28} rewrite only: {:>9.0} records/s/core   with JSON decode+encode: {:>9.0} records/s/core   ({ops} ops)", n / rewrite, n / full);
}

async fn worker(records: u64) -> anyhow::Result<()> {
    let brokers = shared_brokers()?;
    let prefix = unique("bench");
    let config = PipelineConfig::from_toml_str(&format!(
        "[source]\nhost = \"127.0.0.1\"\nuser = \"x\"\ndbname = \"x\"\n[target]\nhost = \"127.0.0.1\"\nuser = \"x\"\ndbname = \"x\"\n\
         [kafka]\nbrokers = \"{brokers}\"\n\
         [topics]\nprefix = \"{prefix}\"\npartitions = 4\n[tables]\ninclude = [\"public.orders\"]\n\
         [transform]\ngroup_id = \"{}\"\nmetrics_addr = \"127.0.0.1:0\"\npassthrough = false\n",
        unique("g")
    ))?;
    let raw_topic = config.topics().raw(&TableRef::new("public", "orders"))?;
    let admin = kafka::admin(&config.kafka, "bench")?;
    let out_topic = config.topics().out(&TableRef::new("public", "orders"))?;
    let topics = [&raw_topic, &out_topic]
        .map(|t| rdkafka::admin::NewTopic::new(t, 4, rdkafka::admin::TopicReplication::Fixed(1)));
    admin.create_topics(&topics, &rdkafka::admin::AdminOptions::new()).await?;
    let producer = kafka::producer(&config.kafka, "bench")?;
    let started = Instant::now();
    let mut deliveries = Vec::new();
    for i in 0..records {
        let payload = serde_json::to_vec(&record(i))?;
        let key = record(i).pos.to_key();
        loop {
            match producer
                .send_result(FutureRecord::to(&raw_topic).partition((i % 4) as i32).key(&key).payload(&payload))
            {
                Ok(d) => {
                    deliveries.push(d);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
    }
    for d in deliveries {
        d.await?.map_err(|(e, _)| e)?;
    }
    println!("produced {records} raw records in {:.1} s", started.elapsed().as_secs_f64());

    let program = std::sync::Arc::new(Program::compile(&RulesFile::from_toml_str(WITH_EXPR)?, &catalog())?);
    let metrics = pgm_transform::metrics::TransformMetrics::default();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let cpu_before = cpu_seconds();
    let started = Instant::now();
    let worker = pgm_transform::worker::Worker::new(&config, program, metrics.clone())?;
    let task = tokio::spawn(worker.run(Default::default(), shutdown.clone()));
    let consumer = kafka::consumer(&config.kafka, "bench-reader", &unique("r"))?;
    consumer.subscribe(&[&out_topic])?;
    let mut seen = 0u64;
    while seen < records {
        match tokio::time::timeout(Duration::from_secs(60), consumer.recv()).await? {
            Ok(_) => seen += 1,
            // The out topic appears when the worker makes it.
            Err(rdkafka::error::KafkaError::MessageConsumption(
                rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition,
            )) => {}
            Err(error) => return Err(error.into()),
        }
    }
    let wall = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu_before;
    shutdown.cancel();
    task.await??;
    println!(
        "whole worker through the broker: {records} records in {wall:.1} s = {:.0} records/s; {cpu:.1} CPU-s in this process (worker + reader) = {:.0} records per CPU-second",
        records as f64 / wall,
        records as f64 / cpu
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let records: u64 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let inputs: Vec<RawRecord> = (0..records.max(200_000)).map(record).collect();
    engine("rename + drop + convert", SIMPLE, &inputs);
    engine("… + one Rhai expression", WITH_EXPR, &inputs);
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(worker(records))
}
