//! The capture loop: slot → decode → publish, acknowledgements → slot. It only connects the pieces:
//!
//! ```text
//!   select! (biased):
//!     1. shutdown            → stop reading, wait for every record in flight, confirm, return
//!     2. Kafka acknowledgement → flushed = end LSN of the last fully acknowledged transaction
//!     3. feedback timer      → status update (write = received, flush = apply = flushed); heartbeat when idle
//!     4. replication message → wal2json::decode → Publisher (only while fewer than MAX_IN_FLIGHT are unacknowledged)
//! ```
//!
//! A keepalive while nothing is in flight confirms the server's WAL end, so an idle DB1 (or one busy in other
//! databases) does not pile up WAL for the slot.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use pgm_common::change::Change;
use pgm_common::config::{Decoder, PipelineConfig};
use pgm_common::{pgoutput, wal2json, Lsn};
use tokio_util::sync::CancellationToken;

use crate::bootstrap::CatchUp;
use crate::metrics::CaptureMetrics;
use crate::publisher::Publisher;
use crate::walsender::{ReplicationMessage, ReplicationStream, Walsender};
use crate::CaptureError;

/// The output plugin's options for this pipeline: the decoder's required options plus table and message filters
/// (with pgoutput the publication selects the tables and capture filters the message prefixes).
/// `skipped_origins`: the replication origin ids whose transactions wal2json leaves out ([`skipped_origin_ids`]).
pub fn plugin_options(config: &PipelineConfig, skipped_origins: &[u32]) -> Vec<(String, String)> {
    if config.capture.decoder == Decoder::Pgoutput {
        return pgoutput::plugin_options(&config.publication());
    }
    let mut options: Vec<(String, String)> =
        wal2json::PLUGIN_OPTIONS.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    let tables = config.tables();
    if !tables.is_empty() {
        // wal2json's add-tables: comma-separated schema.table, with space, quote, comma, period, asterisk and
        // backslash escaped by a backslash.
        let escape = |s: &str| {
            s.chars().fold(String::new(), |mut out, c| {
                if matches!(c, ' ' | '\'' | ',' | '.' | '*' | '\\') {
                    out.push('\\');
                }
                out.push(c);
                out
            })
        };
        let list: Vec<String> = tables.iter().map(|t| format!("{}.{}", escape(&t.schema), escape(&t.table))).collect();
        options.push(("add-tables".into(), list.join(",")));
    }
    if !skipped_origins.is_empty() {
        // The other direction's apply (fall-back): its writes are never carried back.
        let list: Vec<String> = skipped_origins.iter().map(u32::to_string).collect();
        options.push(("filter-origins".into(), list.join(",")));
    }
    let prefixes: Vec<String> = config.capture.message_prefixes.iter().map(|p| p.replace(',', "\\,")).collect();
    // An empty add-msg-prefixes would carry every message; with no prefixes configured, carry none we know of.
    options.push(("add-msg-prefixes".into(), if prefixes.is_empty() { "\u{1}".into() } else { prefixes.join(",") }));
    options
}

/// The ids of the replication origins capture leaves out ([`PipelineConfig::skipped_origins`]: with fall-back, the
/// other direction's apply), each created on this database when missing. wal2json filters by id, and an origin made
/// later by that apply would get an id the running stream does not know: made here first, it keeps its id.
pub async fn skipped_origin_ids(
    client: &tokio_postgres::Client,
    config: &PipelineConfig,
) -> Result<Vec<u32>, CaptureError> {
    let mut ids = Vec::new();
    for origin in config.skipped_origins() {
        let row = client
            .query_one(
                "SELECT coalesce(pg_replication_origin_oid($1), pg_replication_origin_create($1))::int8",
                &[&origin],
            )
            .await
            .map_err(|source| CaptureError::Source {
                what: format!(
                    "create the replication origin {origin} (the fall-back direction's apply, whose writes capture \
                     leaves out) on {}: it needs a superuser, or GRANT EXECUTE ON FUNCTION \
                     pg_replication_origin_create(text) to capture's user",
                    config.source.describe()
                ),
                source,
            })?;
        ids.push(u32::try_from(row.get::<_, i64>(0)).unwrap_or(0));
    }
    Ok(ids)
}

struct Progress {
    received: Lsn,
    flushed: Lsn,
    server_end: Lsn,
    /// When the last status update went out.
    reported_at: Instant,
}

/// How long a shutdown waits for Kafka's acknowledgements before it confirms what it has and leaves.
const SHUTDOWN_DRAIN: Duration = Duration::from_millis(1500);

/// After an acknowledgement, report at most this often (besides the timer): a restart then repeats less.
const EAGER_FEEDBACK: Duration = Duration::from_millis(100);

/// Streams from the slot until `shutdown` or an error. Resumes at the slot's confirmed_flush_lsn.
pub async fn run(
    config: &PipelineConfig,
    mut publisher: Publisher,
    metrics: CaptureMetrics,
    health: &pgm_common::telemetry::Health,
    shutdown: CancellationToken,
    catch_up: Option<CatchUp>,
) -> Result<(), CaptureError> {
    let application = catch_up.as_ref().map_or("pgm-capture", |c| c.application.as_str());
    let mut conn = Walsender::connect(&config.source, application).await?;
    let (system_id, server_wal) = conn.identify_system().await?;
    let timeout_ms = conn.wal_sender_timeout_ms().await?;
    let feedback_every = Duration::from_millis(if timeout_ms == 0 { 1000 } else { (timeout_ms / 2).clamp(100, 1000) });
    if catch_up.is_none() {
        crate::slot::wait_for_no_bootstrap(&mut conn, &config.capture.slot).await?;
    }
    let catalog = crate::slot::connect(config).await?;
    crate::identity::refuse_tables_without_identity(&catalog, config).await?;
    crate::slot::ensure_publication(&catalog, config).await?;
    crate::slot::require_exists(&mut conn, config).await?;
    let skipped = skipped_origin_ids(&catalog, config).await?;
    let mut decoder = StreamDecoder::new(config, catalog);
    let mut stream = conn.start_logical(&config.capture.slot, Lsn::ZERO, &plugin_options(config, &skipped)).await?;
    tracing::info!(
        slot = %config.capture.slot,
        %system_id,
        %server_wal,
        feedback_ms = feedback_every.as_millis() as u64,
        "streaming started"
    );
    health.clear_waiting();

    // server_end only ever comes from the stream: the walsender's sent position, which a heartbeat may vouch for.
    // IDENTIFY_SYSTEM's position is DB1's flush point, possibly ahead of a backlog not yet streamed.
    let mut progress =
        Progress { received: Lsn::ZERO, flushed: Lsn::ZERO, server_end: Lsn::ZERO, reported_at: Instant::now() };
    let mut feedback = tokio::time::interval(feedback_every);
    feedback.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let heartbeat_every = Duration::from_millis(config.capture.heartbeat_interval_ms.max(100));
    let mut last_heartbeat = Instant::now();
    // The commit LSN of the transaction being read (the catch-up filters by it).
    let mut commit = Lsn::ZERO;
    let mut caught_up = false;

    loop {
        if caught_up {
            let drained = publisher.drain().await?;
            if let Some(lsn) = drained {
                progress.flushed = progress.flushed.max(lsn);
            }
            send_feedback(&mut stream, &mut progress, &metrics).await?;
            tracing::info!(flushed = %progress.flushed, "the bootstrap's catch-up is done");
            return Ok(());
        }
        tokio::select! {
            biased;
            // 1. Shutdown: drain, confirm what is durable, leave.
            _ = shutdown.cancelled() => {
                tracing::info!(in_flight = publisher.in_flight(), "shutting down: waiting for Kafka acknowledgements");
                // Bounded: with the broker away, what is unacknowledged is simply streamed again after a restart.
                match tokio::time::timeout(SHUTDOWN_DRAIN, publisher.drain()).await {
                    Ok(drained) => {
                        if let Some(lsn) = drained? {
                            progress.flushed = progress.flushed.max(lsn);
                        }
                    }
                    Err(_) => tracing::warn!(
                        in_flight = publisher.in_flight(),
                        "Kafka did not acknowledge in time; stopping without confirming those records (they are sent again on restart)"
                    ),
                }
                send_feedback(&mut stream, &mut progress, &metrics).await?;
                tracing::info!(flushed = %progress.flushed, "confirmed to the slot; stopped");
                return Ok(());
            }
            // 2. Acknowledgements, in produce order.
            Some(ack) = publisher.next_ack(), if publisher.in_flight() > 0 => {
                if let Some(lsn) = ack? {
                    progress.flushed = progress.flushed.max(lsn);
                    metrics.flushed_lsn.set(progress.flushed.0 as i64);
                    if progress.reported_at.elapsed() >= EAGER_FEEDBACK {
                        send_feedback(&mut stream, &mut progress, &metrics).await?;
                    }
                }
            }
            // 3. Feedback on a timer; heartbeats while idle.
            _ = feedback.tick() => {
                if publisher.is_idle() && last_heartbeat.elapsed() >= heartbeat_every && progress.server_end > Lsn::ZERO {
                    publisher.heartbeat(progress.server_end).await?;
                    last_heartbeat = Instant::now();
                }
                send_feedback(&mut stream, &mut progress, &metrics).await?;
            }
            // 4. Input, while there is room in flight.
            message = stream.recv(), if !publisher.is_full() => {
                match message? {
                    ReplicationMessage::XLogData { wal_start, wal_end, data } => {
                        progress.received = progress.received.max(wal_start);
                        progress.server_end = progress.server_end.max(wal_end);
                        metrics.received_lsn.set(progress.received.0 as i64);
                        let changes = decoder.decode(&data, wal_start).await?;
                        // A huge row must not be held three times: its WAL message goes before it is encoded.
                        drop(data);
                        for change in changes {
                            let Some(catch_up) = &catch_up else {
                                publish(&mut publisher, change).await?;
                                continue;
                            };
                            let change = match change {
                                Change::Begin(begin) if begin.commit_lsn >= catch_up.until => {
                                    caught_up = true;
                                    break;
                                }
                                Change::Begin(begin) => {
                                    commit = begin.commit_lsn;
                                    Change::Begin(begin)
                                }
                                Change::Row(row) => match catch_up.admit(commit, row)? {
                                    Some(row) => Change::Row(row),
                                    None => continue,
                                },
                                Change::Truncate(truncate) if !catch_up.admit_truncate(commit, &truncate)? => continue,
                                other => other,
                            };
                            publish(&mut publisher, change).await?;
                        }
                    }
                    ReplicationMessage::Keepalive { wal_end, reply_requested } => {
                        progress.server_end = progress.server_end.max(wal_end);
                        if publisher.is_idle() {
                            // Every message before this keepalive is published and acknowledged.
                            progress.received = progress.received.max(wal_end);
                            progress.flushed = progress.flushed.max(wal_end);
                            metrics.flushed_lsn.set(progress.flushed.0 as i64);
                            caught_up = catch_up.as_ref().is_some_and(|c| wal_end >= c.until);
                        }
                        if reply_requested {
                            send_feedback(&mut stream, &mut progress, &metrics).await?;
                        }
                    }
                }
            }
        }
    }
}

/// The configured decoder, with what pgoutput needs besides the bytes: DB1's catalog for relation messages, and
/// the message prefixes to carry (wal2json filters them itself).
struct StreamDecoder {
    kind: Decoder,
    pgoutput: pgoutput::Decoder,
    catalog: tokio_postgres::Client,
    prefixes: Vec<String>,
}

impl StreamDecoder {
    fn new(config: &PipelineConfig, catalog: tokio_postgres::Client) -> Self {
        StreamDecoder {
            kind: config.capture.decoder,
            pgoutput: pgoutput::Decoder::skipping_origins(config.skipped_origins()),
            catalog,
            prefixes: config.capture.message_prefixes.clone(),
        }
    }

    async fn decode(&mut self, data: &[u8], wal_start: Lsn) -> Result<Vec<Change>, CaptureError> {
        if self.kind == Decoder::Wal2json {
            return Ok(vec![wal2json::decode(data).map_err(|source| CaptureError::Decode { wal_start, source })?]);
        }
        match self.pgoutput.decode(data, wal_start).map_err(|source| CaptureError::Pgoutput { wal_start, source })? {
            pgoutput::Decoded::Changes(mut changes) => {
                changes.retain(|c| match c {
                    Change::Message(m) => self.prefixes.contains(&m.prefix),
                    _ => true,
                });
                Ok(changes)
            }
            pgoutput::Decoded::Relation(relation) => {
                let info =
                    pgoutput::relation_info(&self.catalog, &relation).await.map_err(|source| CaptureError::Source {
                        what: format!("describe {} (relation {}) in DB1's catalog", relation.table, relation.oid),
                        source,
                    })?;
                tracing::debug!(table = %relation.table, oid = relation.oid, "relation described");
                self.pgoutput.add_relation(relation, info);
                Ok(Vec::new())
            }
            pgoutput::Decoded::Nothing => Ok(Vec::new()),
        }
    }
}

async fn publish(publisher: &mut Publisher, change: Change) -> Result<(), CaptureError> {
    match change {
        Change::Begin(begin) => publisher.begin(begin).await,
        Change::Row(row) => publisher.row(row).await,
        Change::Truncate(truncate) => publisher.truncate(truncate).await,
        Change::Message(message) => publisher.message(message).await,
        Change::Commit(commit) => publisher.commit(commit).await,
    }
}

async fn send_feedback(
    stream: &mut ReplicationStream,
    progress: &mut Progress,
    metrics: &CaptureMetrics,
) -> Result<(), CaptureError> {
    let written = progress.received.max(progress.flushed);
    stream.send_status(written, progress.flushed, progress.flushed, false).await?;
    progress.reported_at = Instant::now();
    metrics.lag_bytes.set(progress.server_end.bytes_since(progress.flushed) as i64);
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
    metrics.last_feedback.set(now);
    Ok(())
}
