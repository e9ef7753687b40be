//! The snapshot bootstrap's chunks: each is written as its own DB2 transaction, on up to `bootstrap.parallel`
//! connections at once, with its row in `pgm.bootstrap_chunks` in the same transaction.
//!
//! ```text
//!   txn: chunk{C, id, attempt, seq, counts} ──▶ done in pgm.bootstrap_chunks? skip
//!        └─▶ Reader (ordinals base+1 … of C − 1 only) ──ops──▶ writer task k: BEGIN · upserts · chunk row · COMMIT
//!   chunk 0 (the truncates) and any record that is not a chunk wait for every writer to finish first
//! ```
//!
//! Chunks carry no order among themselves (they are disjoint key ranges or tables, all copied before the stream),
//! so they may commit in any order; the stream's first transaction is applied only once all have committed. After a
//! crash apply reads the bootstrap's records again from DB2's stored offsets and skips the chunks DB2 has: a
//! chunk is written exactly once (its row's primary key would refuse a second).

use std::time::{Duration, Instant};

use pgm_common::config::PipelineConfig;
use pgm_common::envelope::{PartitionCount, TargetOp};
use pgm_common::snapshot::{chunk_base, CHUNK_ROWS};
use pgm_common::{Lsn, Position};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::metrics::ApplyMetrics;
use crate::reader::Reader;
use crate::writer::Writer;
use crate::ApplyError;

/// One chunk record of the txn topic.
pub struct ChunkRecord {
    pub consistent_point: Lsn,
    pub attempt: u32,
    pub seq: u32,
    pub chunk: u32,
    pub table: Option<String>,
    pub snapshot_lsn: Lsn,
    pub rows: u64,
    pub counts: Vec<PartitionCount>,
}

enum Item {
    Op(Position, TargetOp),
    /// Every record of the chunk was sent: commit.
    Complete,
}

pub struct Chunks {
    config: PipelineConfig,
    pipeline: String,
    metrics: ApplyMetrics,
    limit: usize,
    running: JoinSet<Result<Client, ApplyError>>,
    idle: Vec<Client>,
    pub applied: u64,
}

impl Chunks {
    pub fn new(config: &PipelineConfig, metrics: ApplyMetrics) -> Self {
        Chunks {
            config: config.clone(),
            pipeline: config.topics.prefix.clone(),
            metrics,
            limit: config.bootstrap.parallel.max(1),
            running: JoinSet::new(),
            idle: Vec::new(),
            applied: 0,
        }
    }

    /// Waits for every chunk being written; the first failure is returned.
    pub async fn finish(&mut self) -> Result<(), ApplyError> {
        while let Some(joined) = self.running.join_next().await {
            self.idle.push(joined.map_err(|e| ApplyError::Stream(format!("a chunk writer panicked: {e}")))??);
        }
        Ok(())
    }

    /// Closes the idle chunk connections (the copy is over).
    pub fn release(&mut self) {
        self.idle.clear();
    }

    async fn session(&mut self) -> Result<Client, ApplyError> {
        if let Some(client) = self.idle.pop() {
            return Ok(client);
        }
        let client = crate::connect_target(&self.config).await?;
        client.batch_execute("SET session_replication_role = replica").await.map_err(ApplyError::db)?;
        Ok(client)
    }

    /// Applies one chunk unless DB2 has it: its records are read here, its writes run on their own connection.
    pub async fn apply(
        &mut self,
        main: &Client,
        record: ChunkRecord,
        reader: &mut Reader,
        applied: Position,
        shutdown: &CancellationToken,
    ) -> Result<(), ApplyError> {
        let done = main
            .query_opt(
                "SELECT 1 FROM pgm.bootstrap_chunks WHERE pipeline = $1 AND consistent_point = $2::text::pg_lsn \
                 AND chunk = $3",
                &[&self.pipeline, &record.consistent_point.to_string(), &(record.chunk as i32)],
            )
            .await
            .map_err(ApplyError::db)?;
        if done.is_some() {
            tracing::debug!(chunk = record.chunk, "chunk applied already");
            return Ok(());
        }
        // Chunk 0 truncates what the chunks then fill: nothing else may run beside it.
        if record.chunk == 0 {
            self.finish().await?;
        }
        while self.running.len() >= self.limit {
            if let Some(joined) = self.running.join_next().await {
                self.idle.push(joined.map_err(|e| ApplyError::Stream(format!("a chunk writer panicked: {e}")))??);
            }
        }
        let client = self.session().await?;
        let (tx, rx) = mpsc::channel::<Item>(4096);
        let writer = Writer::new(self.config.apply.batch_rows, self.config.apply.on_missing_row, self.metrics.clone());
        let pipeline = self.pipeline.clone();
        let commit = Position::new(Lsn(record.consistent_point.0 - 1), Position::COMMIT);
        let base = chunk_base(record.attempt, record.seq);
        let chunk = record.chunk;
        let described = record.table.clone().unwrap_or_else(|| "(truncates)".into());
        let row = (
            record.consistent_point.to_string(),
            record.chunk as i32,
            record.attempt as i32,
            record.table.clone(),
            record.rows as i64,
            record.snapshot_lsn.to_string(),
        );
        self.running.spawn(write_chunk(client, writer, rx, pipeline, row));
        let mut cursor = reader.cursor(commit, &record.counts).await?.within(base, base + CHUNK_ROWS);
        let started = Instant::now();
        let mut sent = 0u64;
        while let Some(change) = reader.next_change(&mut cursor, applied).await? {
            for op in change.record.ops {
                if tx.send(Item::Op(change.record.pos, op)).await.is_err() {
                    // The writer failed: finish() returns its error.
                    self.finish().await?;
                    return Err(ApplyError::Stream(format!("the writer of chunk {chunk} stopped")));
                }
            }
            sent += 1;
            if sent % 4096 == 0 && shutdown.is_cancelled() {
                return Err(ApplyError::Interrupted);
            }
        }
        let _ = tx.send(Item::Complete).await;
        drop(tx);
        tracing::debug!(chunk, table = %described, records = sent, read_s = started.elapsed().as_secs_f64(), "chunk read");
        self.applied += 1;
        if record.chunk == 0 {
            self.finish().await?;
        }
        Ok(())
    }
}

/// One chunk's DB2 transaction: its operations, then its row in `pgm.bootstrap_chunks`, then COMMIT. Without
/// [`Item::Complete`] (the reader stopped) it rolls back.
async fn write_chunk(
    client: Client,
    mut writer: Writer,
    mut rx: mpsc::Receiver<Item>,
    pipeline: String,
    (cp, chunk, attempt, table, rows, snapshot_lsn): (String, i32, i32, Option<String>, i64, String),
) -> Result<Client, ApplyError> {
    let started = chrono_now(&client).await?;
    client.batch_execute("BEGIN").await.map_err(ApplyError::db)?;
    let mut complete = false;
    while let Some(item) = rx.recv().await {
        match item {
            Item::Op(pos, op) => writer.push(&client, pos, op).await?,
            Item::Complete => {
                complete = true;
                break;
            }
        }
    }
    if !complete {
        client.batch_execute("ROLLBACK").await.map_err(ApplyError::db)?;
        return Ok(client);
    }
    writer.flush(&client).await?;
    client
        .execute(
            "INSERT INTO pgm.bootstrap_chunks (pipeline, consistent_point, chunk, attempt, source_table, rows, \
             snapshot_lsn, started_at) VALUES ($1, $2::text::pg_lsn, $3, $4, $5, $6, $7::text::pg_lsn, \
             $8::text::timestamptz)",
            &[&pipeline, &cp, &chunk, &attempt, &table, &rows, &snapshot_lsn, &started],
        )
        .await
        .map_err(ApplyError::db)?;
    client.batch_execute("COMMIT").await.map_err(ApplyError::db)?;
    Ok(client)
}

async fn chrono_now(client: &Client) -> Result<String, ApplyError> {
    let row = client.query_one("SELECT clock_timestamp()::text", &[]).await.map_err(ApplyError::db)?;
    Ok(row.get(0))
}

/// One table's side of the copy: chunks done, rows, and the span they took.
#[derive(Default, Clone)]
struct Side {
    chunks: i64,
    rows: i64,
    first_ms: Option<i64>,
    last_ms: Option<i64>,
}

impl Side {
    fn describe(&self, planned: i64, estimate: i64) -> String {
        let secs = match (self.first_ms, self.last_ms) {
            (Some(a), Some(b)) if b > a => (b - a) as f64 / 1000.0,
            _ => 0.0,
        };
        let rate = if secs > 0.0 { self.rows as f64 / secs } else { 0.0 };
        // From the estimated rows when PostgreSQL has statistics, else from the chunks done so far.
        let eta = if self.chunks >= planned {
            "done".to_owned()
        } else if rate > 0.0 && estimate > self.rows {
            format!("ETA {:.0} s", (estimate - self.rows) as f64 / rate)
        } else if secs > 0.0 && self.chunks > 0 {
            format!("ETA {:.0} s", secs / self.chunks as f64 * (planned - self.chunks) as f64)
        } else {
            "ETA unknown".to_owned()
        };
        let of = if estimate > 0 { format!(" of ~{estimate}") } else { String::new() };
        format!("{} rows{of}, {rate:.0} rows/s, chunks {}/{planned}, {eta}", self.rows, self.chunks)
    }
}

/// `pgm-apply status`'s bootstrap lines: per table, what is in Kafka (DB1's side, from the txn topic's chunk
/// records) and what DB2 holds (`pgm.bootstrap_chunks`), for the newest bootstrap DB2 knows. Empty without one.
pub async fn status(config: &PipelineConfig, client: &Client, applied: Lsn) -> Result<Vec<String>, ApplyError> {
    let pipeline = &config.topics.prefix;
    let plan = client
        .query(
            "SELECT consistent_point::text, source_table, chunks, rows_estimate, txn_offset FROM pgm.bootstrap_plan \
             WHERE pipeline = $1 AND consistent_point = (SELECT max(consistent_point) FROM pgm.bootstrap_plan \
             WHERE pipeline = $1) ORDER BY source_table",
            &[pipeline],
        )
        .await
        .map_err(ApplyError::db)?;
    let Some(first) = plan.first() else { return Ok(Vec::new()) };
    let cp: Lsn = first.get::<_, String>(0).parse().map_err(|e| ApplyError::Stream(format!("bootstrap_plan: {e}")))?;
    let from: i64 = plan.iter().map(|r| r.get::<_, i64>(4)).min().unwrap_or(0);
    let mut db2: std::collections::HashMap<String, Side> = std::collections::HashMap::new();
    for row in client
        .query(
            "SELECT source_table, count(*), sum(rows)::int8, (extract(epoch FROM min(started_at)) * 1000)::int8, \
             (extract(epoch FROM max(applied_at)) * 1000)::int8 FROM pgm.bootstrap_chunks \
             WHERE pipeline = $1 AND consistent_point = $2::text::pg_lsn AND chunk > 0 GROUP BY source_table",
            &[pipeline, &cp.to_string()],
        )
        .await
        .map_err(ApplyError::db)?
    {
        let side = Side { chunks: row.get(1), rows: row.get(2), first_ms: row.get(3), last_ms: row.get(4) };
        db2.insert(row.get(0), side);
    }
    let done = applied.0 >= cp.0 - 1;
    let kafka = if done { Ok(Default::default()) } else { kafka_side(config, cp, from).await };
    let mut lines = vec![format!(
        "bootstrap    at {cp}: {}",
        if done { "complete on DB2 (the stream follows)" } else { "copying (per table: in Kafka | on DB2)" }
    )];
    for row in &plan {
        let table: String = row.get(1);
        let (planned, estimate): (i32, i64) = (row.get(2), row.get(3));
        let on_db2 = db2.get(&table).cloned().unwrap_or_default();
        let in_kafka = match &kafka {
            Ok(sides) => sides.get(&table).cloned().unwrap_or_default().describe(planned.into(), estimate),
            Err(e) => format!("unknown ({e})"),
        };
        let in_kafka = if done { on_db2.describe(planned.into(), estimate) } else { in_kafka };
        lines.push(format!("  {table:<36} {in_kafka} | {}", on_db2.describe(planned.into(), estimate)));
    }
    Ok(lines)
}

/// Chunks in Kafka per table, from the txn topic's chunk records of the bootstrap at `cp` (read from `from`).
async fn kafka_side(
    config: &PipelineConfig,
    cp: Lsn,
    from: i64,
) -> Result<std::collections::HashMap<String, Side>, String> {
    use pgm_common::envelope::{RecordOrigin, TxnRecord};
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    let topic = config.topics().txn();
    let mut client =
        pgm_common::kafka::client_config(&config.kafka, "pgm-apply-status", pgm_common::kafka::Role::Consumer);
    client.set("group.id", "pgm-apply-status").set("enable.auto.commit", "false");
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = client.create().map_err(|e| e.to_string())?;
        let (_, high) = consumer.fetch_watermarks(&topic, 0, Duration::from_secs(5)).map_err(|e| e.to_string())?;
        let mut sides: std::collections::HashMap<String, Side> = std::collections::HashMap::new();
        if high <= from {
            return Ok(sides);
        }
        let mut list = rdkafka::TopicPartitionList::new();
        list.add_partition_offset(&topic, 0, rdkafka::Offset::Offset(from)).map_err(|e| e.to_string())?;
        consumer.assign(&list).map_err(|e| e.to_string())?;
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            let Some(message) = consumer.poll(Duration::from_millis(500)) else { continue };
            let message = message.map_err(|e| e.to_string())?;
            let origin = RecordOrigin { topic: &topic, partition: 0, offset: message.offset() };
            if let Ok(TxnRecord::Chunk { consistent_point, table: Some(table), rows, .. }) =
                TxnRecord::decode(message.payload().unwrap_or_default(), origin)
            {
                if consistent_point == cp {
                    let at = message.timestamp().to_millis();
                    let side = sides.entry(table.to_string()).or_default();
                    side.chunks += 1;
                    side.rows += rows as i64;
                    side.first_ms = side.first_ms.or(at);
                    side.last_ms = at.or(side.last_ms);
                }
            }
            if message.offset() + 1 >= high {
                return Ok(sides);
            }
        }
        Err("the txn topic was not read within 15 s".to_owned())
    })
    .await
    .map_err(|e| e.to_string())?
}
