//! The apply loop: txn records in order → one DB2 transaction per group of source transactions.
//!
//! ```text
//!   commit{counts} ──▶ BEGIN (if no group open) ──▶ merged changes ──▶ Writer (batched SQL)
//!                                                                          │
//!   group full (rows/bytes/time), stream idle, --until reached, shutdown ──▶ flush · progress + offsets
//!       · replication origin · COMMIT ──▶ consumer-group offsets to Kafka ──▶ paused? wait for resume
//! ```
//!
//! A session is one DB2 connection and one Kafka consumer, started from DB2's progress. Connection and broker
//! failures end the session and a new one starts from DB2's progress after a backoff; a statement DB2 refuses
//! stops apply (after locating it exactly: the failing group is replayed one change per statement), with nothing
//! marked applied past the last committed group.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use pgm_common::config::PipelineConfig;
use pgm_common::envelope::TxnRecord;
use pgm_common::retry::Backoff;
use pgm_common::telemetry::Health;
use pgm_common::{Lsn, Position};
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::chunks::{ChunkRecord, Chunks};
use crate::metrics::ApplyMetrics;
use crate::progress::{self, Advance};
use crate::reader::Reader;
use crate::writer::Writer;
use crate::ApplyError;

/// How long a new session waits for the previous one's DB2 backend to go away (lock, replication origin).
const TAKEOVER_WAIT: Duration = Duration::from_secs(60);

fn now_epoch() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// Runs apply until `until` is reached, shutdown, or an error that a retry cannot fix.
pub async fn run(
    config: &PipelineConfig,
    until: Option<Lsn>,
    metrics: ApplyMetrics,
    health: &Health,
    shutdown: CancellationToken,
) -> Result<(), ApplyError> {
    let mut backoff = Backoff::default();
    let mut precise = 0usize;
    loop {
        let mut session = Session::new(config, until, metrics.clone(), health.clone(), shutdown.clone(), precise);
        let started = Instant::now();
        let result = session.run().await;
        match result {
            Ok(()) => return Ok(()),
            Err(ApplyError::Interrupted) => {
                tracing::info!(
                    "shut down while waiting for the stream; nothing of an unfinished transaction was written"
                );
                return Ok(());
            }
            // A stop requested while the session waited on a broker or DB2 that is away: no failure.
            Err(error) if error.is_transient() && shutdown.is_cancelled() => {
                tracing::info!(%error, "stopped while waiting; nothing of an unfinished transaction was written");
                return Ok(());
            }
            Err(error) if error.is_transient() => {
                if session.committed_groups > 0 {
                    backoff.reset();
                }
                let wait = backoff.next_wait(started.elapsed());
                health.set_waiting(error.to_string());
                tracing::warn!(%error, retry_in_ms = wait.as_millis() as u64, "apply session ended; waiting, then resuming from DB2's progress");
                if !Backoff::sleep(wait, &shutdown).await {
                    return Ok(());
                }
            }
            Err(ApplyError::Statement(ref failure)) if !failure.single && precise == 0 => {
                precise = session.group_txns + 1;
                tracing::warn!(
                    batch = %failure.at, transactions = precise,
                    "a batched statement failed; replaying those transactions one change per statement to find it"
                );
            }
            Err(error) => {
                session.record_failure(&error).await;
                return Err(error);
            }
        }
        if session.committed_groups > 0 && precise > 0 {
            precise = precise.saturating_sub(session.precise_done);
        }
    }
}

struct Session<'a> {
    config: &'a PipelineConfig,
    pipeline: String,
    until: Option<Lsn>,
    metrics: ApplyMetrics,
    health: Health,
    shutdown: CancellationToken,
    /// Source transactions still to apply one change per statement (locating a failed batch).
    precise: usize,
    precise_done: usize,
    client: Option<Client>,
    /// Position of the last source transaction in DB2 (committed or in the open group).
    applied: Position,
    applied_end: Option<Lsn>,
    applied_time: Option<String>,
    /// Open DB2 transaction: when it began and how many source transactions it holds.
    group_started: Option<Instant>,
    group_txns: usize,
    committed_groups: u64,
    heartbeat: Option<(Lsn, u64)>,
    /// When DB2 was last known current with the source (Unix seconds): commit time applied or heartbeat reached.
    current_at: f64,
    seen_end: Lsn,
    /// The snapshot bootstrap's chunks being written on their own connections.
    chunks: Chunks,
}

enum Next {
    Continue,
    Stop,
}

impl<'a> Session<'a> {
    fn new(
        config: &'a PipelineConfig,
        until: Option<Lsn>,
        metrics: ApplyMetrics,
        health: Health,
        shutdown: CancellationToken,
        precise: usize,
    ) -> Self {
        let chunks = Chunks::new(config, metrics.clone());
        Session {
            config,
            pipeline: config.topics.prefix.clone(),
            until,
            metrics,
            health,
            shutdown,
            precise,
            precise_done: 0,
            client: None,
            applied: Position::default(),
            applied_end: None,
            applied_time: None,
            group_started: None,
            group_txns: 0,
            committed_groups: 0,
            heartbeat: None,
            current_at: 0.0,
            seen_end: Lsn::ZERO,
            chunks,
        }
    }

    fn client(&self) -> &Client {
        self.client.as_ref().expect("connected")
    }

    async fn connect(&mut self) -> Result<(), ApplyError> {
        let client = crate::connect_target(self.config).await?;
        let deadline = Instant::now() + TAKEOVER_WAIT;
        while !progress::try_lock(&client, &self.pipeline).await? {
            if Instant::now() >= deadline {
                let pid = progress::running_pid(&client, &self.pipeline).await?;
                return Err(ApplyError::Refused(format!(
                    "another pgm-apply runs for pipeline {:?} on DB2 (backend pid {}): stop it first",
                    self.pipeline,
                    pid.map_or("?".into(), |p| p.to_string())
                )));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let origin = self.config.apply_origin();
        client
            .execute("SELECT pg_replication_origin_create($1) WHERE pg_replication_origin_oid($1) IS NULL", &[&origin])
            .await
            .map_err(|e| origin_error(e, &origin, None))?;
        // The previous session's backend may still hold the origin for a moment after a crash.
        loop {
            match client.execute("SELECT pg_replication_origin_session_setup($1)", &[&origin]).await {
                Ok(_) => break,
                Err(e)
                    if e.code() == Some(&tokio_postgres::error::SqlState::OBJECT_IN_USE)
                        && Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => {
                    let leftovers = leftover_origins(&client, &origin).await;
                    return Err(origin_error(e, &origin, Some(leftovers)));
                }
            }
        }
        client.batch_execute("SET session_replication_role = replica").await.map_err(|e| {
            ApplyError::Refused(format!(
                "cannot SET session_replication_role = replica on DB2 ({e}): apply's user needs superuser (or, on \
                 PostgreSQL 15+, GRANT SET ON PARAMETER session_replication_role)"
            ))
        })?;
        self.client = Some(client);
        Ok(())
    }

    async fn run(&mut self) -> Result<(), ApplyError> {
        self.connect().await?;
        let stored = progress::load(self.client(), &self.pipeline).await?;
        self.applied = stored.applied;
        self.applied_end = stored.end_lsn;
        self.applied_time = stored.commit_time.clone();
        tracing::info!(pipeline = %self.pipeline, applied = %self.applied, txn_offset = stored.txn_offset, "apply starting from DB2's progress");
        if self.until_reached(self.applied.commit_lsn) {
            tracing::info!(until = ?self.until.map(|l| l.to_string()), "already applied up to --until");
            return Ok(());
        }
        if stored.paused && !self.wait_while_paused().await? {
            return Ok(());
        }
        progress::set_state(self.client(), &self.pipeline, "running", None).await?;
        let mut reader =
            Reader::open(self.config, stored.txn_offset, stored.offsets, self.health.clone(), self.shutdown.clone())
                .await?;
        if self.health.waiting_for().is_some() {
            tracing::info!("DB2 and the broker are reachable again; applying");
            self.health.clear_waiting();
        }
        let mut writer = Writer::new(self.batch_rows(), self.config.apply.on_missing_row, self.metrics.clone());
        let mut messages = Vec::new();
        let mut idle_since = Instant::now();
        loop {
            let next = if self.group_started.is_some() && self.group_full(&writer) {
                self.commit_group(&mut reader, &mut writer).await?
            } else if self.shutdown.is_cancelled() && self.group_started.is_none() {
                Next::Stop
            } else {
                let wait = if self.group_started.is_some() { Duration::ZERO } else { Duration::from_secs(1) };
                match reader.next_txn_record(wait).await? {
                    Some((record, offset)) => {
                        self.on_record(record, offset, &mut reader, &mut writer, &mut messages).await?
                    }
                    None if self.group_started.is_some() => self.commit_group(&mut reader, &mut writer).await?,
                    None if idle_since.elapsed() >= Duration::from_secs(1) => {
                        idle_since = Instant::now();
                        self.on_idle(&mut writer).await?
                    }
                    None => Next::Continue,
                }
            };
            if let Next::Stop = next {
                return Ok(());
            }
        }
    }

    /// Nothing arrived for a second with no group open: report the lag, and honour a pause.
    async fn on_idle(&mut self, writer: &mut Writer) -> Result<Next, ApplyError> {
        self.metrics.lag_seconds.set((now_epoch() - self.current_at).max(0.0));
        if progress::is_paused(self.client(), &self.pipeline).await? {
            if !self.wait_while_paused().await? {
                return Ok(Next::Stop);
            }
            writer.forget_catalog();
        }
        Ok(Next::Continue)
    }

    /// One record of the txn topic. `messages` holds the transactional messages of transactions whose commit
    /// comes later.
    async fn on_record(
        &mut self,
        record: TxnRecord,
        offset: i64,
        reader: &mut Reader,
        writer: &mut Writer,
        messages: &mut Vec<(Position, String, String)>,
    ) -> Result<Next, ApplyError> {
        // The stream's records are applied only once every bootstrap chunk before them is committed.
        if !matches!(record, TxnRecord::Begin { .. } | TxnRecord::Snapshot { .. } | TxnRecord::Chunk { .. }) {
            self.chunks.finish().await?;
            self.chunks.release();
        }
        match record {
            TxnRecord::Begin { .. } => {}
            TxnRecord::Snapshot { consistent_point, chunks, .. } => {
                if Position::new(Lsn(consistent_point.0 - 1), Position::COMMIT) > self.applied {
                    progress::record_plan(self.client(), &self.pipeline, consistent_point, offset, &chunks).await?;
                }
            }
            TxnRecord::Chunk { consistent_point, attempt, seq, chunk, table, snapshot_lsn, rows, counts, .. } => {
                if Position::new(Lsn(consistent_point.0 - 1), Position::COMMIT) <= self.applied {
                    return Ok(Next::Continue); // a bootstrap DB2 has passed
                }
                if self.group_started.is_some() {
                    if let Next::Stop = self.commit_group(reader, writer).await? {
                        return Ok(Next::Stop);
                    }
                }
                let record = ChunkRecord {
                    consistent_point,
                    attempt,
                    seq,
                    chunk,
                    table: table.map(|t| t.to_string()),
                    snapshot_lsn,
                    rows,
                    counts,
                };
                let client = self.client.as_ref().expect("connected");
                self.chunks.apply(client, record, reader, self.applied, &self.shutdown).await?;
            }
            TxnRecord::Message { pos, transactional: true, prefix, content, .. } => {
                if pos > self.applied && !messages.iter().any(|(p, _, _)| *p == pos) {
                    messages.push((pos, prefix, content));
                }
            }
            TxnRecord::Message { pos, transactional: false, prefix, content, .. } => {
                if pos > self.applied {
                    self.begin_group().await?;
                    progress::record_message(self.client(), &self.pipeline, pos, false, &prefix, &content).await?;
                }
                reader.txn_next = offset + 1;
            }
            TxnRecord::Heartbeat { wal_end, sent_at_ms, .. } => {
                self.seen_end = self.seen_end.max(wal_end);
                self.heartbeat = Some((wal_end, sent_at_ms));
                self.current_at = self.current_at.max(sent_at_ms as f64 / 1000.0);
                reader.txn_next = offset + 1;
                self.begin_group().await?;
                if self.until_reached(wal_end) {
                    self.commit_group(reader, writer).await?;
                    tracing::info!(until = %self.until.expect("set"), "--until reached (the source has moved past it)");
                    return Ok(Next::Stop);
                }
            }
            TxnRecord::Commit { commit_lsn, end_lsn, commit_time, counts, .. } => {
                let pos = Position::new(commit_lsn, Position::COMMIT);
                self.seen_end = self.seen_end.max(end_lsn);
                if pos <= self.applied {
                    messages.retain(|(p, _, _)| p.commit_lsn != commit_lsn);
                    reader.txn_next = offset + 1;
                    return Ok(Next::Continue);
                }
                if self.until.is_some_and(|until| commit_lsn > until) {
                    if self.group_started.is_some() {
                        self.commit_group(reader, writer).await?;
                    }
                    tracing::info!(until = %self.until.expect("set"), applied = %self.applied, "--until reached");
                    return Ok(Next::Stop);
                }
                let transactional: Vec<_> = messages.drain(..).filter(|(p, _, _)| p.commit_lsn == commit_lsn).collect();
                if let Next::Stop = self.apply_transaction(pos, &counts, transactional, reader, writer).await? {
                    return Ok(Next::Stop);
                }
                self.applied = pos;
                self.applied_end = Some(end_lsn);
                self.applied_time = commit_time;
                self.group_txns += 1;
                reader.txn_next = offset + 1;
                if self.precise > 0 || self.until_reached(commit_lsn) {
                    let next = self.commit_group(reader, writer).await?;
                    if self.until_reached(commit_lsn) {
                        tracing::info!(until = %self.until.expect("set"), "--until reached");
                        return Ok(Next::Stop);
                    }
                    return Ok(next);
                }
            }
        }
        Ok(Next::Continue)
    }

    /// Writes one source transaction's changes and transactional messages into the open group. `Stop` when a
    /// shutdown came inside it: the DB2 transaction is rolled back with the connection.
    async fn apply_transaction(
        &mut self,
        commit: Position,
        counts: &[pgm_common::envelope::PartitionCount],
        messages: Vec<(Position, String, String)>,
        reader: &mut Reader,
        writer: &mut Writer,
    ) -> Result<Next, ApplyError> {
        self.begin_group().await?;
        let mut cursor = reader.cursor(commit, counts).await?;
        let mut changes = 0u64;
        while let Some(change) = reader.next_change(&mut cursor, self.applied).await? {
            for op in change.record.ops {
                writer.push(self.client(), change.record.pos, op).await?;
            }
            changes += 1;
            if changes % 1024 == 0 && self.shutdown.is_cancelled() {
                tracing::info!(txn = %commit.commit_lsn, "shutdown inside a transaction: its DB2 transaction is rolled back");
                return Ok(Next::Stop);
            }
        }
        for (pos, prefix, content) in messages {
            progress::record_message(self.client(), &self.pipeline, pos, true, &prefix, &content).await?;
        }
        Ok(Next::Continue)
    }

    fn batch_rows(&self) -> usize {
        if self.precise > 0 {
            1
        } else {
            self.config.apply.batch_rows
        }
    }

    fn until_reached(&self, lsn: Lsn) -> bool {
        self.until.is_some_and(|until| lsn >= until)
    }

    fn group_full(&self, writer: &Writer) -> bool {
        let apply = &self.config.apply;
        writer.rows >= apply.group_rows
            || writer.bytes >= apply.group_bytes
            || self.group_started.is_some_and(|s| s.elapsed() >= Duration::from_millis(apply.group_ms))
    }

    async fn begin_group(&mut self) -> Result<(), ApplyError> {
        if self.group_started.is_none() {
            self.client().batch_execute("BEGIN").await.map_err(ApplyError::db)?;
            self.group_started = Some(Instant::now());
            self.group_txns = 0;
        }
        Ok(())
    }

    /// Writes what is pending with the progress, tags the transaction with the origin, commits, then tells Kafka.
    async fn commit_group(&mut self, reader: &mut Reader, writer: &mut Writer) -> Result<Next, ApplyError> {
        writer.flush(self.client()).await?;
        let positions = reader.positions();
        let after = progress::advance(
            self.client(),
            &self.pipeline,
            &Advance {
                applied: self.applied,
                end_lsn: self.applied_end,
                commit_time: self.applied_time.as_deref(),
                heartbeat: self.heartbeat,
                txn_offset: reader.txn_next,
                positions: &positions,
                skipped: writer.skipped.values().sum(),
                last_skipped: writer.last_skipped.as_deref(),
            },
        )
        .await?;
        if let Some(end) = self.applied_end {
            self.client()
                .execute(
                    "SELECT pg_replication_origin_xact_setup($1::text::pg_lsn, coalesce($2::text::timestamptz, now()))",
                    &[&end.to_string(), &self.applied_time],
                )
                .await
                .map_err(ApplyError::db)?;
        }
        tracing::debug!(applied = %self.applied, transactions = self.group_txns, rows = writer.rows, "committing group");
        let started = Instant::now();
        self.client().batch_execute("COMMIT").await.map_err(ApplyError::db)?;
        self.metrics.commit_seconds.observe(started.elapsed().as_secs_f64());
        reader.commit_to_kafka(&positions);
        for (table, skipped) in &writer.skipped {
            self.metrics.missing_rows.get_or_create(&crate::metrics::TableLabel::new(table)).inc_by(*skipped);
        }

        self.metrics.group_transactions.observe(self.group_txns as f64);
        self.metrics.transactions.inc_by(self.group_txns as u64);
        self.metrics.applied_lsn.set(self.applied.commit_lsn.0 as i64);
        if let Some(epoch) = after.commit_epoch {
            self.metrics.applied_commit_time.set(epoch);
            self.current_at = self.current_at.max(epoch);
        }
        self.metrics.lag_seconds.set((now_epoch() - self.current_at).max(0.0));
        self.metrics.lag_bytes.set(self.seen_end.bytes_since(self.applied_end.unwrap_or(Lsn::ZERO)) as i64);
        if self.precise > 0 {
            self.precise_done += self.group_txns;
            self.precise = self.precise.saturating_sub(self.group_txns);
            if self.precise == 0 {
                writer.set_batch_rows(self.config.apply.batch_rows);
                tracing::info!("the failed batch applied one change at a time without error; back to batching");
            }
        }
        self.group_started = None;
        self.group_txns = 0;
        self.heartbeat = None;
        self.committed_groups += 1;
        writer.reset_counts();
        if after.paused {
            if !self.wait_while_paused().await? {
                return Ok(Next::Stop);
            }
            writer.forget_catalog();
        }
        Ok(Next::Continue)
    }

    /// Waits for `resume`; false when shut down meanwhile.
    async fn wait_while_paused(&mut self) -> Result<bool, ApplyError> {
        progress::set_state(self.client(), &self.pipeline, "paused", None).await?;
        self.metrics.paused.set(1);
        tracing::info!(applied = %self.applied, "paused at a transaction boundary; `pgm-apply resume` continues");
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = self.shutdown.cancelled() => return Ok(false),
            }
            if !progress::is_paused(self.client(), &self.pipeline).await? {
                break;
            }
        }
        self.metrics.paused.set(0);
        progress::set_state(self.client(), &self.pipeline, "running", None).await?;
        tracing::info!("resumed; DB2's catalog is read again");
        Ok(true)
    }

    /// Best effort: the error goes into DB2's progress row for `pgm-apply status`.
    async fn record_failure(&self, error: &ApplyError) {
        let text = error.to_string();
        let result = async {
            let client = crate::connect_target(self.config).await?;
            progress::set_state(&client, &self.pipeline, "failed", Some(&text)).await
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(error = %e, "could not record the failure in DB2");
        }
    }
}

/// Other pipelines' origins on DB2 that still hold a replication state (`pgm_%`, with progress), and the limit.
async fn leftover_origins(client: &Client, origin: &str) -> (String, Vec<String>) {
    let limit = client
        .query_one("SELECT current_setting('max_replication_slots')", &[])
        .await
        .map(|r| r.get::<_, String>(0))
        .unwrap_or_else(|_| "?".into());
    let names = client
        .query(
            "SELECT o.roname FROM pg_replication_origin o JOIN pg_replication_origin_status s ON s.local_id = o.roident \
             WHERE o.roname LIKE 'pgm\\_%' AND o.roname <> $1 ORDER BY 1",
            &[&origin],
        )
        .await
        .map(|rows| rows.iter().map(|r| r.get::<_, String>(0)).collect())
        .unwrap_or_default();
    (limit, names)
}

fn origin_error(error: tokio_postgres::Error, origin: &str, leftovers: Option<(String, Vec<String>)>) -> ApplyError {
    let message = error.as_db_error().map_or_else(|| error.to_string(), |db| db.message().to_owned());
    // 53400: every replication state slot is taken (origins with progress and replication slots share them).
    if error.code() == Some(&tokio_postgres::error::SqlState::CONFIGURATION_LIMIT_EXCEEDED) {
        let (limit, names) = leftovers.unwrap_or_else(|| ("?".into(), Vec::new()));
        let others = if names.is_empty() {
            "none of them is another pg-migrator pipeline's (pgm_*): see pg_replication_origin_status and \
             pg_replication_slots"
                .to_owned()
        } else {
            format!("{} of them belong to other pg-migrator pipelines: {}", names.len(), names.join(", "))
        };
        return ApplyError::Refused(format!(
            "DB2 has no free replication state for origin {origin:?} ({message}): its max_replication_slots ({limit}) \
             are all taken by replication slots and replication origins with progress; {others}. Drop those no \
             longer needed (`pgm-apply reset --drop-origin` with that pipeline's config, or SELECT \
             pg_replication_origin_drop('<name>') on DB2), or raise max_replication_slots on DB2 (a restart)"
        ));
    }
    ApplyError::Refused(format!(
        "cannot use replication origin {origin:?} on DB2 ({message}): apply's user needs superuser, or GRANT EXECUTE \
         on pg_replication_origin_create/_session_setup/_xact_setup; or set apply.origin"
    ))
}
