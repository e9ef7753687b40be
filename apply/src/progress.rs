//! The `pgm` schema in DB2: apply's position, Kafka offsets, control flags and the logical messages it reached.
//!
//! ```text
//! pgm.apply_progress  one row per pipeline (topics.prefix): applied position, its end LSN and commit time,
//!                     txn-topic offset, last heartbeat, paused, state, last error, updates/deletes skipped
//!                     for finding no row (on_missing_row = "warn") and the last of them
//! pgm.apply_offsets   (pipeline, topic, partition) → next offset to read
//! pgm.apply_messages  logical decoding messages apply has passed (cutover markers), in the same transaction
//! pgm.bootstrap_chunks the snapshot bootstrap's chunks DB2 holds, each written in the chunk's own transaction
//! pgm.bootstrap_plan  the plan of each bootstrap per table (chunks, estimated rows, where it starts in the txn
//!                     topic), for `pgm-apply status`
//! ```
//!
//! The position and offsets are written in the same DB2 transaction as the rows they cover, so after any crash
//! DB2's data and DB2's idea of where the stream stands agree. `pause` sets a flag that the running apply reads at
//! every transaction boundary (and every second while idle); a paused apply stays paused across restarts.

use std::collections::{BTreeMap, HashMap};

use pgm_common::{Lsn, Position};
use tokio_postgres::Client;

use crate::ApplyError;

const SCHEMA: &str = "
CREATE SCHEMA IF NOT EXISTS pgm;
CREATE TABLE IF NOT EXISTS pgm.apply_progress (
    pipeline text PRIMARY KEY,
    applied_pos text NOT NULL DEFAULT '00000000/00000000:00000000000000000000',
    applied_lsn pg_lsn NOT NULL DEFAULT '0/0',
    applied_end_lsn pg_lsn,
    applied_commit_time timestamptz,
    txn_offset bigint NOT NULL DEFAULT 0,
    heartbeat_lsn pg_lsn,
    heartbeat_at timestamptz,
    paused boolean NOT NULL DEFAULT false,
    state text NOT NULL DEFAULT 'new',
    last_error text,
    updated_at timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE pgm.apply_progress ADD COLUMN IF NOT EXISTS skipped_missing bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS last_skipped text;
CREATE TABLE IF NOT EXISTS pgm.apply_offsets (
    pipeline text NOT NULL,
    topic text NOT NULL,
    partition integer NOT NULL,
    next_offset bigint NOT NULL,
    PRIMARY KEY (pipeline, topic, partition)
);
CREATE TABLE IF NOT EXISTS pgm.bootstrap_chunks (
    pipeline text NOT NULL,
    consistent_point pg_lsn NOT NULL,
    chunk integer NOT NULL,
    attempt integer NOT NULL,
    source_table text,
    rows bigint NOT NULL,
    snapshot_lsn pg_lsn NOT NULL,
    started_at timestamptz NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (pipeline, consistent_point, chunk)
);
CREATE TABLE IF NOT EXISTS pgm.bootstrap_plan (
    pipeline text NOT NULL,
    consistent_point pg_lsn NOT NULL,
    source_table text NOT NULL,
    chunks integer NOT NULL,
    rows_estimate bigint NOT NULL,
    txn_offset bigint NOT NULL,
    PRIMARY KEY (pipeline, consistent_point, source_table)
);
CREATE TABLE IF NOT EXISTS pgm.apply_messages (
    pipeline text NOT NULL,
    pos text NOT NULL,
    transactional boolean NOT NULL,
    prefix text NOT NULL,
    content text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (pipeline, pos)
);
";

/// What DB2 says about a pipeline.
#[derive(Debug, Default)]
pub struct Stored {
    pub applied: Position,
    pub end_lsn: Option<Lsn>,
    pub commit_time: Option<String>,
    pub txn_offset: i64,
    pub offsets: HashMap<(String, i32), i64>,
    pub paused: bool,
}

/// What one DB2 transaction moves the progress to.
pub struct Advance<'a> {
    pub applied: Position,
    pub end_lsn: Option<Lsn>,
    pub commit_time: Option<&'a str>,
    pub heartbeat: Option<(Lsn, u64)>,
    /// The next offset of the txn topic.
    pub txn_offset: i64,
    /// The next offset of every out partition read so far.
    pub positions: &'a BTreeMap<(String, i32), i64>,
    /// Updates and deletes this transaction skipped for finding no row, and the last one's description.
    pub skipped: u64,
    pub last_skipped: Option<&'a str>,
}

/// What the progress row says after an advance.
pub struct AfterAdvance {
    pub paused: bool,
    pub commit_epoch: Option<f64>,
}

/// Creates the schema (idempotent) and the pipeline's row.
pub async fn prepare(client: &Client, pipeline: &str) -> Result<(), ApplyError> {
    // Two applies starting at once may race on CREATE … IF NOT EXISTS; a lock makes it deterministic.
    client
        .batch_execute(&format!(
            "BEGIN; SET LOCAL client_min_messages = warning; SELECT pg_advisory_xact_lock(hashtext('pgm schema')); \
             {SCHEMA} COMMIT;"
        ))
        .await
        .map_err(ApplyError::db)?;
    client
        .execute("INSERT INTO pgm.apply_progress (pipeline) VALUES ($1) ON CONFLICT DO NOTHING", &[&pipeline])
        .await
        .map_err(ApplyError::db)?;
    Ok(())
}

pub fn parse_pos(text: &str) -> Result<Position, ApplyError> {
    Position::from_key(text.as_bytes()).map_err(|e| ApplyError::Stream(format!("pgm.apply_progress.applied_pos: {e}")))
}

fn parse_lsn(text: Option<String>) -> Result<Option<Lsn>, ApplyError> {
    text.map(|t| t.parse::<Lsn>().map_err(|e| ApplyError::Stream(format!("pgm.apply_progress: {e}")))).transpose()
}

pub async fn load(client: &Client, pipeline: &str) -> Result<Stored, ApplyError> {
    let row = client
        .query_one(
            "SELECT applied_pos, applied_end_lsn::text, applied_commit_time::text, txn_offset, paused \
             FROM pgm.apply_progress WHERE pipeline = $1",
            &[&pipeline],
        )
        .await
        .map_err(ApplyError::db)?;
    let offsets = client
        .query("SELECT topic, partition, next_offset FROM pgm.apply_offsets WHERE pipeline = $1", &[&pipeline])
        .await
        .map_err(ApplyError::db)?
        .into_iter()
        .map(|r| ((r.get::<_, String>(0), r.get::<_, i32>(1)), r.get::<_, i64>(2)))
        .collect();
    Ok(Stored {
        applied: parse_pos(row.get(0))?,
        end_lsn: parse_lsn(row.get(1))?,
        commit_time: row.get(2),
        txn_offset: row.get(3),
        offsets,
        paused: row.get(4),
    })
}

/// Inside the open DB2 transaction: moves the position and offsets; returns whether a pause was requested.
pub async fn advance(client: &Client, pipeline: &str, to: &Advance<'_>) -> Result<AfterAdvance, ApplyError> {
    let (heartbeat_lsn, heartbeat_ms) = match to.heartbeat {
        Some((lsn, ms)) => (Some(lsn.to_string()), Some(ms as f64 / 1000.0)),
        None => (None, None),
    };
    let row = client
        .query_one(
            "UPDATE pgm.apply_progress SET applied_pos = $2, applied_lsn = $3::text::pg_lsn, \
                 applied_end_lsn = coalesce($4::text::pg_lsn, applied_end_lsn), \
                 applied_commit_time = coalesce($5::text::timestamptz, applied_commit_time), txn_offset = $6, \
                 heartbeat_lsn = coalesce($7::text::pg_lsn, heartbeat_lsn), \
                 heartbeat_at = coalesce(to_timestamp($8::float8), heartbeat_at), \
                 state = CASE WHEN paused THEN 'paused' ELSE 'running' END, last_error = NULL, \
                 skipped_missing = skipped_missing + $9, last_skipped = coalesce($10, last_skipped), \
                 updated_at = clock_timestamp() \
             WHERE pipeline = $1 \
             RETURNING paused, extract(epoch FROM applied_commit_time)::float8",
            &[
                &pipeline,
                &to.applied.to_key(),
                &to.applied.commit_lsn.to_string(),
                &to.end_lsn.map(|l| l.to_string()),
                &to.commit_time,
                &to.txn_offset,
                &heartbeat_lsn,
                &heartbeat_ms,
                &(to.skipped as i64),
                &to.last_skipped,
            ],
        )
        .await
        .map_err(ApplyError::db)?;
    let (topics, (partitions, offsets)): (Vec<&str>, (Vec<i32>, Vec<i64>)) =
        to.positions.iter().map(|((t, p), o)| (t.as_str(), (*p, *o))).unzip();
    client
        .execute(
            "INSERT INTO pgm.apply_offsets (pipeline, topic, partition, next_offset) \
             SELECT $1, t, p, o FROM unnest($2::text[], $3::int[], $4::bigint[]) AS v(t, p, o) \
             ON CONFLICT (pipeline, topic, partition) DO UPDATE SET next_offset = EXCLUDED.next_offset",
            &[&pipeline, &topics, &partitions, &offsets],
        )
        .await
        .map_err(ApplyError::db)?;
    Ok(AfterAdvance { paused: row.get(0), commit_epoch: row.get(1) })
}

/// Inside the open DB2 transaction: records a logical decoding message apply has reached.
pub async fn record_message(
    client: &Client,
    pipeline: &str,
    pos: Position,
    transactional: bool,
    prefix: &str,
    content: &str,
) -> Result<(), ApplyError> {
    client
        .execute(
            "INSERT INTO pgm.apply_messages (pipeline, pos, transactional, prefix, content) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT DO NOTHING",
            &[&pipeline, &pos.to_key(), &transactional, &prefix, &content],
        )
        .await
        .map_err(ApplyError::db)?;
    Ok(())
}

pub async fn is_paused(client: &Client, pipeline: &str) -> Result<bool, ApplyError> {
    let row = client
        .query_one("SELECT paused FROM pgm.apply_progress WHERE pipeline = $1", &[&pipeline])
        .await
        .map_err(ApplyError::db)?;
    Ok(row.get(0))
}

pub async fn set_paused(client: &Client, pipeline: &str, paused: bool) -> Result<(), ApplyError> {
    client
        .execute(
            "UPDATE pgm.apply_progress SET paused = $2, updated_at = clock_timestamp() WHERE pipeline = $1",
            &[&pipeline, &paused],
        )
        .await
        .map_err(ApplyError::db)?;
    Ok(())
}

pub async fn set_state(client: &Client, pipeline: &str, state: &str, error: Option<&str>) -> Result<(), ApplyError> {
    client
        .execute(
            "UPDATE pgm.apply_progress SET state = $2, last_error = coalesce($3, last_error), \
             updated_at = clock_timestamp() WHERE pipeline = $1",
            &[&pipeline, &state, &error],
        )
        .await
        .map_err(ApplyError::db)?;
    Ok(())
}

/// The advisory lock a running apply holds for its pipeline (two int4 keys).
pub const LOCK_KEYS: &str = "hashtext('pgm-apply'), hashtext($1)";

pub async fn try_lock(client: &Client, pipeline: &str) -> Result<bool, ApplyError> {
    let row = client
        .query_one(&format!("SELECT pg_try_advisory_lock({LOCK_KEYS})"), &[&pipeline])
        .await
        .map_err(ApplyError::db)?;
    Ok(row.get(0))
}

/// The backend pid of the apply session holding the pipeline's lock, if one runs.
pub async fn running_pid(client: &Client, pipeline: &str) -> Result<Option<i32>, ApplyError> {
    let row = client
        .query_opt(
            "SELECT l.pid FROM pg_catalog.pg_locks l, (SELECT hashtext('pgm-apply') AS a, hashtext($1) AS b) k \
             WHERE l.locktype = 'advisory' AND l.granted AND l.classid::bigint = (k.a::bigint & 4294967295) \
               AND l.objid::bigint = (k.b::bigint & 4294967295) AND l.objsubid = 2 \
               AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            &[&pipeline],
        )
        .await
        .map_err(ApplyError::db)?;
    Ok(row.map(|r| r.get(0)))
}

/// Seconds since DB2 was last current with DB1, as an SQL expression over `pgm.apply_progress`: now minus the newer
/// of the applied source commit time and the last heartbeat applied. `status` shows it; cutover refuses above a bound.
pub const LAG_SECONDS_SQL: &str =
    "extract(epoch FROM clock_timestamp() - greatest(applied_commit_time, heartbeat_at))::float8";

/// Moves the applied position to `to` and forgets the offsets, so the next run reads every topic from its start
/// and skips what is at or below `to`.
pub async fn reset(client: &Client, pipeline: &str, to: Position) -> Result<(), ApplyError> {
    client.batch_execute("BEGIN").await.map_err(ApplyError::db)?;
    let result = async {
        client
            .execute(
                "UPDATE pgm.apply_progress SET applied_pos = $2, applied_lsn = $3::text::pg_lsn, applied_end_lsn = NULL, \
                 applied_commit_time = NULL, txn_offset = 0, state = 'reset', last_error = NULL, \
                 updated_at = clock_timestamp() WHERE pipeline = $1",
                &[&pipeline, &to.to_key(), &to.commit_lsn.to_string()],
            )
            .await?;
        client.execute("DELETE FROM pgm.apply_offsets WHERE pipeline = $1", &[&pipeline]).await?;
        client.batch_execute("COMMIT").await
    }
    .await;
    result.map_err(ApplyError::db)
}

/// Keeps a bootstrap's plan per table (from its first `snapshot` record) for `pgm-apply status`.
pub async fn record_plan(
    client: &Client,
    pipeline: &str,
    consistent_point: Lsn,
    txn_offset: i64,
    chunks: &[pgm_common::envelope::ChunkSpec],
) -> Result<(), ApplyError> {
    let mut tables: BTreeMap<String, (i32, i64)> = BTreeMap::new();
    for chunk in chunks {
        let entry = tables.entry(chunk.table.to_string()).or_default();
        entry.0 += 1;
        entry.1 += chunk.rows_estimate as i64;
    }
    for (table, (n, estimate)) in tables {
        client
            .execute(
                "INSERT INTO pgm.bootstrap_plan VALUES ($1, $2::text::pg_lsn, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
                &[&pipeline, &consistent_point.to_string(), &table, &n, &estimate, &txn_offset],
            )
            .await
            .map_err(ApplyError::db)?;
    }
    Ok(())
}
