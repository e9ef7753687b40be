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

use std::time::Instant;

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
