//! `pgm-capture bootstrap`: copy DB1 into the raw topics in chunks, each its own unit in Kafka, resumable after a
//! crash. The argument for why the result is exact is in docs/lifecycle.md ("The snapshot bootstrap").
//!
//! ```text
//!   attempt 1:  CREATE_REPLICATION_SLOT slot … EXPORT_SNAPSHOT ──▶ consistent point C, snapshot at C
//!   attempt k:  CREATE_REPLICATION_SLOT tmp TEMPORARY … EXPORT_SNAPSHOT ──▶ snapshot at L_k > C (the slot stays at C)
//!   txn topic:  snapshot{C, k, L_k, plan} · chunk 0 (the truncates, attempt 1 only) · chunk{id, k, seq, L_k, counts} …
//!               · commit(C − 1) once every chunk of the plan is in Kafka
//!   workers × bootstrap.parallel read chunks (a key range of a table with one integer key column, else the table);
//!   the publisher sends them one after the other: chunk seq s of attempt k has positions (C − 1, k<<56 | s<<32 | n)
//!   catch-up:   when some chunk was copied at L_k > C, the slot streams [C, max L_k) and each change to a row of such
//!               a chunk committed before its L_k is dropped (the copy holds it already)
//! ```
//!
//! The plan (the chunks and their key ranges) is made once and sent in the first attempt's `snapshot` record; a
//! resumed attempt reads the txn topic back to find the plan and the chunks already there, and copies only the
//! others. A physical slot `<slot>_bootstrap` (it retains no WAL) marks the bootstrap unfinished until the catch-up
//! is done: `pgm-capture run` refuses to stream while it exists.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{pin_mut, StreamExt};
use pgm_common::change::{Cell, Row, RowChange, RowOp, TableRef, Truncate};
use pgm_common::config::PipelineConfig;
use pgm_common::envelope::{ChunkSpec, CopyBatch, CopyColumn, RecordOrigin, TxnRecord, ENVELOPE_VERSION};
use pgm_common::snapshot::{chunk_base, KeyRange, SourceTable, CHUNK_ROWS, MAX_ATTEMPTS, MAX_CHUNKS};
use pgm_common::{kafka, Lsn, Position};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc;

use crate::metrics::CaptureMetrics;
use crate::publisher::Publisher;
use crate::walsender::Walsender;
use crate::CaptureError;

fn source_err(what: String) -> impl FnOnce(tokio_postgres::Error) -> CaptureError {
    move |source| CaptureError::Source { what, source }
}

/// The application_name of every bootstrap connection: `pgm-capture run` waits while one is on DB1.
/// (PostgreSQL keeps the first 63 bytes.)
pub fn application_name(slot: &str) -> String {
    let mut name = format!("pgm-bootstrap:{slot}");
    name.truncate(63);
    name
}

/// The name prefix of the physical slot that marks a bootstrap of `slot` as unfinished. The marker's full name
/// ends in DB1's WAL position (16 hex digits) just before the bootstrap made its slot, so a plan in the txn topic
/// older than that position is an earlier bootstrap's. (Slot names are at most 63 bytes.)
pub fn marker_prefix(slot: &str) -> String {
    let mut base = slot.to_owned();
    base.truncate(36);
    format!("{base}_bootstrap_")
}

/// The marker slot of an unfinished bootstrap of `slot`, and the WAL position its name holds.
pub async fn find_marker(client: &tokio_postgres::Client, slot: &str) -> Result<Option<(String, Lsn)>, CaptureError> {
    let prefix = marker_prefix(slot);
    let row = client
        .query_opt(
            "SELECT slot_name::text FROM pg_replication_slots WHERE left(slot_name::text, length($1)) = $1 \
             ORDER BY slot_name DESC LIMIT 1",
            &[&prefix],
        )
        .await
        .map_err(source_err("read pg_replication_slots".into()))?;
    Ok(row.map(|row| {
        let name: String = row.get(0);
        let lsn = u64::from_str_radix(&name[prefix.len()..], 16).map_or(Lsn::ZERO, Lsn);
        (name, lsn)
    }))
}

/// What `bootstrap` reports when it is done.
pub struct Summary {
    pub consistent_point: Lsn,
    /// Rows this run copied.
    pub rows: u64,
    pub tables: usize,
    pub elapsed: Duration,
    pub attempt: u32,
    /// Chunks this run copied, and chunks an earlier attempt had put in Kafka already.
    pub chunks_copied: usize,
    pub chunks_before: usize,
    /// Where the catch-up of a resumed bootstrap ended (None when every chunk came from the slot's snapshot).
    pub caught_up_to: Option<Lsn>,
}

/// One chunk to copy: its plan entry and the table it belongs to.
#[derive(Clone, Debug)]
struct Chunk {
    spec: ChunkSpec,
    table: usize,
    range: Option<KeyRange>,
}

/// Copied rows per table, shared by the workers and the progress display.
struct Progress {
    tables: Vec<SourceTable>,
    rows: Vec<AtomicU64>,
    chunks_total: Vec<u64>,
    chunks_left: Vec<AtomicU64>,
    /// Rows PostgreSQL estimates for the chunks still to copy (the ETA's denominator).
    estimate: Vec<u64>,
    /// When each table's first chunk started and its last one ended: its rate is over that span.
    spans: Vec<Mutex<(Option<Instant>, Option<Instant>)>>,
}

/// What the txn topic says of the latest bootstrap: its plan, the chunks in Kafka, whether it is complete there.
#[derive(Debug, Default)]
struct History {
    consistent_point: Option<Lsn>,
    plan: Vec<ChunkSpec>,
    attempts: u32,
    truncated: bool,
    /// chunk id → (attempt, snapshot LSN)
    done: HashMap<u32, (u32, Lsn)>,
    committed: bool,
}

impl History {
    fn read(&mut self, record: TxnRecord) {
        match record {
            TxnRecord::Snapshot { consistent_point, attempt, chunks, .. } => {
                if attempt == 1 && self.consistent_point != Some(consistent_point) {
                    *self = History { consistent_point: Some(consistent_point), plan: chunks, ..History::default() };
                }
                if self.consistent_point == Some(consistent_point) {
                    self.attempts = self.attempts.max(attempt);
                }
            }
            TxnRecord::Chunk { consistent_point, attempt, chunk, snapshot_lsn, .. }
                if self.consistent_point == Some(consistent_point) =>
            {
                if chunk == 0 {
                    self.truncated = true;
                } else {
                    self.done.entry(chunk).or_insert((attempt, snapshot_lsn));
                }
            }
            TxnRecord::Commit { commit_lsn, .. } if self.consistent_point.is_some_and(|c| c.0 - 1 == commit_lsn.0) => {
                self.committed = true;
            }
            _ => {}
        }
    }
}

/// Reads the txn topic from its first record to its end as of now (only a resumed bootstrap does this).
async fn read_history(config: &PipelineConfig) -> Result<History, CaptureError> {
    let topic = config.topics().txn();
    let client = kafka::client_config(&config.kafka, "pgm-capture-bootstrap", kafka::Role::Consumer);
    tokio::task::spawn_blocking(move || {
        let mut client = client;
        client.set("group.id", "pgm-capture-bootstrap").set("enable.auto.commit", "false");
        let consumer: BaseConsumer = client.create().map_err(CaptureError::Kafka)?;
        let (low, high) = consumer.fetch_watermarks(&topic, 0, Duration::from_secs(30)).map_err(CaptureError::Kafka)?;
        let mut history = History::default();
        if high <= low {
            return Ok(history);
        }
        let mut list = TopicPartitionList::new();
        list.add_partition_offset(&topic, 0, Offset::Offset(low)).map_err(CaptureError::Kafka)?;
        consumer.assign(&list).map_err(CaptureError::Kafka)?;
        // However long the topic, reading goes on while records come; 60 s without one ends it.
        let mut deadline = Instant::now() + Duration::from_secs(60);
        let mut assembler = pgm_common::parts::Assembler::default();
        loop {
            let Some(message) = consumer.poll(Duration::from_millis(500)) else {
                if Instant::now() > deadline {
                    return Err(CaptureError::Stream(format!(
                        "reading {topic} back: no record for 60 s before its end (offset {high})"
                    )));
                }
                continue;
            };
            let message = message.map_err(CaptureError::Kafka)?;
            deadline = Instant::now() + Duration::from_secs(60);
            let offset = message.offset();
            let key = message.key().unwrap_or_default();
            let assembled =
                assembler.push(key, pgm_common::parts::of_message(&message), message.payload().unwrap_or_default());
            if let Some(bytes) = assembled.bytes() {
                let origin = RecordOrigin { topic: &topic, partition: 0, offset };
                history.read(TxnRecord::decode(bytes, origin).map_err(|e| CaptureError::Stream(e.to_string()))?);
            }
            if offset + 1 >= high {
                return Ok(history);
            }
        }
    })
    .await
    .map_err(|e| CaptureError::Stream(format!("txn topic reader: {e}")))?
}

pub async fn run(config: &PipelineConfig, restart: bool) -> Result<Summary, CaptureError> {
    let started = Instant::now();
    let tables = config.tables();
    if tables.is_empty() {
        return Err(CaptureError::Config(
            "bootstrap copies the tables listed in tables.include, and the list is empty".into(),
        ));
    }
    let client = crate::slot::connect(config).await?;
    let slot = &config.capture.slot;
    let existing = client
        .query_opt("SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1", &[slot])
        .await
        .map_err(source_err("read pg_replication_slots".into()))?;
    let found_marker = find_marker(&client, slot).await?;
    let marked = found_marker.is_some();
    let (mut marker, marker_lsn) = found_marker.unwrap_or_default();
    let mut resume = false;
    if let Some(row) = existing {
        if let Some(pid) = row.get::<_, Option<i32>>(0) {
            return Err(CaptureError::Config(format!(
                "slot {slot} is in use (pid {pid}): stop pgm-capture before a bootstrap"
            )));
        }
        if restart {
            client
                .execute("SELECT pg_drop_replication_slot($1)", &[slot])
                .await
                .map_err(source_err(format!("drop slot {slot}")))?;
            tracing::info!(slot, "--restart: dropped the slot; copying everything again");
        } else if marked {
            resume = true;
        } else {
            return Err(CaptureError::Config(format!(
                "slot {slot} already exists and no bootstrap of it is unfinished: DB2 is bootstrapped already (run \
                 `pgm-capture run`). To copy everything again, run `pgm-capture bootstrap --restart` (drops the slot; \
                 the new copy replaces what DB2 holds)"
            )));
        }
    }
    if marked && !resume {
        client
            .execute("SELECT pg_drop_replication_slot($1)", &[&marker])
            .await
            .map_err(source_err(format!("drop slot {marker}")))?;
    }
    // What `check` says of DB1, before a publication, a topic or the slot is made.
    crate::check::preflight(&client, config).await?;
    crate::identity::refuse_tables_without_identity(&client, config).await?;
    crate::slot::ensure_publication(&client, config).await?;
    let mut publisher = Publisher::new(config, CaptureMetrics::default()).await?;
    let application = application_name(slot);
    let mut replication = Walsender::connect(&config.source, &application).await?;

    let mut history = History::default();
    if resume {
        history = read_history(config).await?;
        // The marker was made just before the slot: a plan older than the marker is an earlier bootstrap's, and
        // this one was interrupted before its plan reached Kafka, so nothing of it is there. Start it afresh.
        if history.consistent_point.is_none_or(|cp| cp < marker_lsn) {
            tracing::info!(slot, "the interrupted bootstrap had put nothing in Kafka: starting it afresh");
            for name in [slot.as_str(), marker.as_str()] {
                client
                    .execute("SELECT pg_drop_replication_slot($1)", &[&name])
                    .await
                    .map_err(source_err(format!("drop slot {name}")))?;
            }
            resume = false;
            history = History::default();
        }
    }
    let (history, attempt) = if resume {
        let cp = history.consistent_point.expect("checked above");
        if history.attempts >= MAX_ATTEMPTS {
            return Err(CaptureError::Config(format!(
                "the bootstrap at {cp} was resumed {MAX_ATTEMPTS} times: run `pgm-capture bootstrap --restart`"
            )));
        }
        tracing::info!(
            consistent_point = %cp,
            chunks_done = history.done.len(),
            chunks = history.plan.len(),
            attempts = history.attempts,
            "resuming the bootstrap: the chunks already in Kafka stay"
        );
        let attempt = history.attempts + 1;
        (history, attempt)
    } else {
        let now: String = client
            .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
            .await
            .map_err(source_err("read DB1's WAL position".into()))?
            .get(0);
        let now: Lsn = now.parse().map_err(|e| CaptureError::Stream(format!("pg_current_wal_insert_lsn: {e}")))?;
        marker = format!("{}{:016x}", marker_prefix(slot), now.0);
        client
            .execute("SELECT pg_create_physical_replication_slot($1)", &[&marker])
            .await
            .map_err(source_err(format!("create the marker slot {marker}")))?;
        (History::default(), 1)
    };

    // The snapshot this attempt copies in: the new slot's (attempt 1), or a temporary slot's (a resumed attempt).
    let remaining_before = if resume { history.plan.len() - history.done.len() } else { usize::MAX };
    let (cp, snapshot) = if !resume {
        let created = replication.create_slot(slot, config.capture.decoder.plugin(), true).await?;
        let name = created.snapshot_name.clone().ok_or_else(|| {
            CaptureError::Stream("CREATE_REPLICATION_SLOT … EXPORT_SNAPSHOT returned no snapshot name".into())
        })?;
        tracing::info!(slot, consistent_point = %created.consistent_point, "slot created; copying in its snapshot");
        (created.consistent_point, Some((created.consistent_point, name)))
    } else if remaining_before > 0 || !history.truncated {
        let temporary = format!("{}_r{attempt}", &slot[..slot.len().min(55)]);
        let created = replication.create_temporary_slot(&temporary, config.capture.decoder.plugin()).await?;
        let name = created.snapshot_name.clone().ok_or_else(|| {
            CaptureError::Stream("CREATE_REPLICATION_SLOT … EXPORT_SNAPSHOT returned no snapshot name".into())
        })?;
        tracing::info!(snapshot_lsn = %created.consistent_point, "copying the chunks left in a new snapshot");
        (history.consistent_point.expect("checked"), Some((created.consistent_point, name)))
    } else {
        (history.consistent_point.expect("checked"), None)
    };

    // The tables of the plan, described now (their columns cannot change while the bootstrap runs: DDL is the
    // user's, and a changed table shows as a mismatch at apply).
    let mut described = Vec::with_capacity(tables.len());
    for table in &tables {
        let found = SourceTable::describe(&client, table).await.map_err(source_err(format!("describe {table}")))?;
        let found = found.ok_or_else(|| {
            CaptureError::Config(format!("{table} is in tables.include but does not exist in DB1: fix tables.include"))
        })?;
        if found.partitioned {
            return Err(CaptureError::Config(format!(
                "{table} is a partitioned table: its rows live in its partitions, and changes are decoded under the \
                 partitions' names. List the partitions in tables.include instead"
            )));
        }
        described.push(found);
    }
    let plan = if resume { history.plan.clone() } else { make_plan(&client, config, &described).await? };
    let index_of: HashMap<TableRef, usize> = described.iter().enumerate().map(|(i, t)| (t.table.clone(), i)).collect();
    let mut chunks = VecDeque::new();
    for spec in &plan {
        let Some(&table) = index_of.get(&spec.table) else {
            return Err(CaptureError::Config(format!(
                "the bootstrap at {cp} copies {}, which is no longer in tables.include: put it back, or run \
                 `pgm-capture bootstrap --restart`",
                spec.table
            )));
        };
        if history.done.contains_key(&spec.id) {
            continue;
        }
        let range = spec.key.as_ref().map(|column| KeyRange { column: column.clone(), from: spec.from, to: spec.to });
        chunks.push_back(Chunk { spec: spec.clone(), table, range });
    }
    let copied_chunks = chunks.len();
    let progress = Arc::new(Progress {
        rows: described.iter().map(|_| AtomicU64::new(0)).collect(),
        chunks_total: (0..described.len())
            .map(|i| plan.iter().filter(|c| index_of[&c.table] == i).count() as u64)
            .collect(),
        chunks_left: (0..described.len())
            .map(|i| AtomicU64::new(chunks.iter().filter(|c| c.table == i).count() as u64))
            .collect(),
        estimate: (0..described.len())
            .map(|i| chunks.iter().filter(|c| c.table == i).map(|c| c.spec.rows_estimate).sum())
            .collect(),
        spans: described.iter().map(|_| Mutex::new((None, None))).collect(),
        tables: described,
    });

    let base_pos = Lsn(cp.0 - 1);
    let mut rows = 0;
    if let Some((snapshot_lsn, snapshot)) = &snapshot {
        let record = TxnRecord::Snapshot {
            v: ENVELOPE_VERSION,
            consistent_point: cp,
            attempt,
            snapshot_lsn: *snapshot_lsn,
            chunks: plan.clone(),
        };
        publisher.control(Position::new(base_pos, chunk_base(attempt, 0)), &record).await?;
        let mut seq = 0;
        if !history.truncated {
            // Chunk 0: the bootstrap replaces whatever DB2 holds (an earlier bootstrap's copy, or stale rows).
            publisher.open_chunk(base_pos, chunk_base(attempt, 0))?;
            for table in &progress.tables {
                publisher.truncate(Truncate { table: table.table.clone(), lsn: None }).await?;
            }
            let record = |counts| TxnRecord::Chunk {
                v: ENVELOPE_VERSION,
                consistent_point: cp,
                attempt,
                seq: 0,
                chunk: 0,
                table: None,
                snapshot_lsn: *snapshot_lsn,
                rows: 0,
                counts,
            };
            publisher.close_chunk(Position::new(base_pos, chunk_base(attempt, 0)), record).await?;
        }
        seq += 1;
        rows = copy_chunks(
            config,
            &application,
            snapshot,
            *snapshot_lsn,
            cp,
            attempt,
            seq,
            chunks,
            progress.clone(),
            &mut publisher,
        )
        .await?;
        print_final(&progress);
    }
    // The copy is complete in Kafka: apply may show DB2 the stream from here on.
    if !history.committed {
        let record = TxnRecord::Commit {
            v: ENVELOPE_VERSION,
            xid: 0,
            commit_lsn: base_pos,
            end_lsn: cp,
            commit_time: None,
            counts: Vec::new(),
        };
        publisher.control(Position::new(base_pos, Position::COMMIT), &record).await?;
    }
    // The temporary slot and its snapshot are no longer needed.
    drop(replication);

    // Chunks copied after the slot's point: catch up the stream to the newest of them, dropping what they hold.
    let mut done: BTreeMap<u32, Lsn> = history.done.iter().map(|(id, (_, lsn))| (*id, *lsn)).collect();
    if let Some((snapshot_lsn, _)) = &snapshot {
        for spec in &plan {
            done.entry(spec.id).or_insert(*snapshot_lsn);
        }
    }
    let catch_up = CatchUp::new(&plan, &done, &progress.tables, cp, application.clone());
    let caught_up_to = match catch_up {
        Some(catch_up) => {
            tracing::info!(from = %cp, until = %catch_up.until, "catching the stream up with the chunks copied later");
            let until = catch_up.until;
            let shutdown = tokio_util::sync::CancellationToken::new();
            let health = pgm_common::telemetry::Health::default();
            crate::stream::run(config, publisher, CaptureMetrics::default(), &health, shutdown, Some(catch_up)).await?;
            Some(until)
        }
        None => None,
    };
    client
        .execute("SELECT pg_drop_replication_slot($1)", &[&marker])
        .await
        .map_err(source_err(format!("drop the marker slot {marker}")))?;
    Ok(Summary {
        consistent_point: cp,
        rows,
        tables: progress.tables.len(),
        elapsed: started.elapsed(),
        attempt,
        chunks_copied: copied_chunks,
        chunks_before: plan.len() - copied_chunks,
        caught_up_to,
    })
}

/// Cuts every table into chunks: key ranges of about `bootstrap.chunk_pages` heap pages when its key is one
/// integer column, else the whole table.
async fn make_plan(
    client: &tokio_postgres::Client,
    config: &PipelineConfig,
    tables: &[SourceTable],
) -> Result<Vec<ChunkSpec>, CaptureError> {
    let mut plan = Vec::new();
    for table in tables {
        let ranges = match table.integer_key() {
            Some(column) if table.pages > config.bootstrap.chunk_pages => {
                let sql = format!(
                    "SELECT min({k})::int8, max({k})::int8 FROM ONLY {}",
                    table.table.quoted(),
                    k = pgm_common::change::quote_ident(column)
                );
                let row = client
                    .query_one(sql.as_str(), &[])
                    .await
                    .map_err(source_err(format!("key bounds of {}", table.table)))?;
                match (row.get::<_, Option<i64>>(0), row.get::<_, Option<i64>>(1)) {
                    (Some(min), Some(max)) => {
                        table.key_ranges(column, min, max, config.bootstrap.chunk_pages).into_iter().map(Some).collect()
                    }
                    _ => vec![None],
                }
            }
            _ => vec![None],
        };
        let n = ranges.len() as u64;
        for range in ranges {
            if plan.len() as u32 >= MAX_CHUNKS - 1 {
                return Err(CaptureError::Config(format!(
                    "the plan has more than {} chunks: raise bootstrap.chunk_pages",
                    MAX_CHUNKS - 1
                )));
            }
            plan.push(ChunkSpec {
                id: plan.len() as u32 + 1,
                table: table.table.clone(),
                key: range.as_ref().map(|r| r.column.clone()),
                from: range.as_ref().and_then(|r| r.from),
                to: range.as_ref().and_then(|r| r.to),
                rows_estimate: table.rows_estimate / n,
            });
        }
    }
    Ok(plan)
}

/// What a copy worker hands the publisher for one chunk, in order.
enum Item {
    /// Rows in COPY's text format, and how many.
    Batch(String, u64),
    Done,
    Failed(CaptureError),
}

/// Bytes of COPY text per record (JSON escaping adds some; a record over the broker's limit goes in parts anyway).
const BATCH_BYTES: usize = 256 << 10;

/// Copies the chunks with `bootstrap.parallel` workers, all in `snapshot`; the publisher takes one chunk at a time
/// (in the order the workers started them) and numbers it `seq, seq + 1, …`. Returns the rows copied.
#[allow(clippy::too_many_arguments)]
async fn copy_chunks(
    config: &PipelineConfig,
    application: &str,
    snapshot: &str,
    snapshot_lsn: Lsn,
    cp: Lsn,
    attempt: u32,
    first_seq: u32,
    chunks: VecDeque<Chunk>,
    progress: Arc<Progress>,
    publisher: &mut Publisher,
) -> Result<u64, CaptureError> {
    if chunks.is_empty() {
        return Ok(0);
    }
    let workers = config.bootstrap.parallel.min(chunks.len()).max(1);
    let queue = Arc::new(Mutex::new(chunks));
    // Each worker announces a chunk as it starts it; at most one waiting per worker.
    let (started_tx, mut started_rx) = mpsc::channel::<(Chunk, mpsc::Receiver<Item>)>(workers);
    let (imported_tx, mut imported_rx) = mpsc::channel::<Result<(), CaptureError>>(workers);
    let mut handles = Vec::new();
    for worker in 0..workers {
        let (pg, application, snapshot, queue, progress, started_tx, imported_tx) = (
            config.source.clone(),
            application.to_owned(),
            snapshot.to_owned(),
            queue.clone(),
            progress.clone(),
            started_tx.clone(),
            imported_tx.clone(),
        );
        handles.push(tokio::spawn(async move {
            copy_worker(worker, pg, application, snapshot, queue, progress, started_tx, imported_tx).await
        }));
    }
    drop(started_tx);
    drop(imported_tx);
    // The replication connection that exported the snapshot must stay idle until every worker has imported it.
    for _ in 0..workers {
        match imported_rx.recv().await {
            Some(Ok(())) => {}
            Some(Err(e)) => return Err(e),
            None => break,
        }
    }
    let display = tokio::spawn(show_progress(progress.clone()));
    let base_pos = Lsn(cp.0 - 1);
    let columns: Vec<Vec<CopyColumn>> = progress.tables.iter().map(SourceTable::copy_columns).collect();
    let mut seq = first_seq;
    let mut total = 0u64;
    let result = async {
        while let Some((chunk, mut items)) = started_rx.recv().await {
            let base = chunk_base(attempt, seq);
            publisher.open_chunk(base_pos, base)?;
            let table = &progress.tables[chunk.table];
            let mut chunk_rows = 0u64;
            loop {
                match items.recv().await {
                    Some(Item::Batch(text, rows)) => {
                        if publisher.chunk_rows(base) >= CHUNK_ROWS - 2 {
                            return Err(CaptureError::Config(format!(
                                "chunk {} of {} needs more than {} records: lower bootstrap.chunk_pages",
                                chunk.spec.id,
                                table.table,
                                CHUNK_ROWS - 2
                            )));
                        }
                        let batch = CopyBatch { columns: columns[chunk.table].clone(), rows, text };
                        publisher.copy_batch(&table.table, &table.key, batch).await?;
                        progress.rows[chunk.table].fetch_add(rows, Ordering::Relaxed);
                        chunk_rows += rows;
                        total += rows;
                    }
                    Some(Item::Done) => break,
                    Some(Item::Failed(e)) => return Err(e),
                    None => {
                        return Err(CaptureError::Stream(format!(
                            "the copy of chunk {} of {} stopped before its end",
                            chunk.spec.id, table.table
                        )))
                    }
                }
            }
            let rows = chunk_rows;
            let record = |counts| TxnRecord::Chunk {
                v: ENVELOPE_VERSION,
                consistent_point: cp,
                attempt,
                seq,
                chunk: chunk.spec.id,
                table: Some(table.table.clone()),
                snapshot_lsn,
                rows,
                counts,
            };
            publisher.close_chunk(Position::new(base_pos, base), record).await?;
            if progress.chunks_left[chunk.table].fetch_sub(1, Ordering::Relaxed) == 1 {
                progress.spans[chunk.table].lock().unwrap().1 = Some(Instant::now());
            }
            tracing::debug!(chunk = chunk.spec.id, table = %table.table, rows, seq, "chunk in Kafka");
            seq += 1;
        }
        Ok(())
    }
    .await;
    display.abort();
    drop(started_rx);
    for handle in handles {
        match handle.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) if result.is_ok() => return Err(e),
            Ok(Err(_)) => {}
            Err(e) => return Err(CaptureError::Stream(format!("a copy worker panicked: {e}"))),
        }
    }
    result?;
    if progress.chunks_left.iter().any(|c| c.load(Ordering::Relaxed) > 0) {
        return Err(CaptureError::Stream("the copy stopped before every chunk was read".into()));
    }
    Ok(total)
}

#[allow(clippy::too_many_arguments)]
async fn copy_worker(
    worker: usize,
    pg: pgm_common::config::PgConfig,
    application: String,
    snapshot: String,
    queue: Arc<Mutex<VecDeque<Chunk>>>,
    progress: Arc<Progress>,
    started: mpsc::Sender<(Chunk, mpsc::Receiver<Item>)>,
    imported: mpsc::Sender<Result<(), CaptureError>>,
) -> Result<(), CaptureError> {
    let import = async {
        let client = pg.connect(&application).await.map_err(crate::connect_error(&pg))?;
        client
            .batch_execute(&format!(
                "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT '{}'",
                snapshot.replace('\'', "''")
            ))
            .await
            .map_err(source_err(format!("worker {worker}: import snapshot {snapshot}")))?;
        Ok::<_, CaptureError>(client)
    };
    let client = match import.await {
        Ok(client) => {
            let _ = imported.send(Ok(())).await;
            client
        }
        Err(e) => {
            let _ = imported.send(Err(CaptureError::Stream(e.to_string()))).await;
            return Err(e);
        }
    };
    drop(imported);
    loop {
        let Some(chunk) = queue.lock().unwrap().pop_front() else { break };
        let (tx, rx) = mpsc::channel(16);
        if started.send((chunk.clone(), rx)).await.is_err() {
            return Ok(()); // the publisher stopped; it reports why
        }
        let table = &progress.tables[chunk.table];
        progress.spans[chunk.table].lock().unwrap().0.get_or_insert_with(Instant::now);
        let copied = async {
            let what = || format!("copy chunk {} of {}", chunk.spec.id, table.table);
            let stream =
                client.copy_out(table.copy_sql(chunk.range.as_ref()).as_str()).await.map_err(source_err(what()))?;
            pin_mut!(stream);
            let mut text = String::with_capacity(BATCH_BYTES + (64 << 10));
            let mut rows = 0u64;
            while let Some(data) = stream.next().await {
                let data = data.map_err(source_err(what()))?;
                // COPY escapes newlines inside values: each unescaped one ends a row.
                rows += data.iter().filter(|b| **b == b'\n').count() as u64;
                text.push_str(std::str::from_utf8(&data).map_err(|_| {
                    CaptureError::Stream(format!("{}: DB1 sent text that is not UTF-8 (client_encoding?)", what()))
                })?);
                if text.len() >= BATCH_BYTES {
                    let full = std::mem::replace(&mut text, String::with_capacity(BATCH_BYTES + (64 << 10)));
                    if tx.send(Item::Batch(full, rows)).await.is_err() {
                        return Ok(false);
                    }
                    rows = 0;
                }
            }
            if rows > 0 && tx.send(Item::Batch(text, rows)).await.is_err() {
                return Ok(false);
            }
            Ok::<_, CaptureError>(true)
        }
        .await;
        match copied {
            Ok(true) => {
                let _ = tx.send(Item::Done).await;
            }
            Ok(false) => return Ok(()),
            Err(e) => {
                let _ = tx.send(Item::Failed(CaptureError::Stream(e.to_string()))).await;
                return Err(e);
            }
        }
    }
    Ok(())
}

/// The catch-up of a resumed bootstrap: from the slot's point C to the newest chunk's snapshot LSN, a change to a
/// row whose chunk was copied at `L` is dropped when it committed before `L` (the copy holds it) and kept after.
pub struct CatchUp {
    pub until: Lsn,
    pub application: String,
    tables: HashMap<TableRef, TableChunks>,
}

struct TableChunks {
    /// Columns of the table: an update that must become an insert needs all of them.
    columns: usize,
    /// (key range or the whole table, snapshot LSN of its copy)
    chunks: Vec<(Option<KeyRange>, Lsn)>,
}

impl CatchUp {
    fn new(
        plan: &[ChunkSpec],
        done: &BTreeMap<u32, Lsn>,
        tables: &[SourceTable],
        cp: Lsn,
        application: String,
    ) -> Option<Self> {
        let until = done.values().copied().max()?;
        if until <= cp {
            return None;
        }
        let mut out: HashMap<TableRef, TableChunks> = HashMap::new();
        for spec in plan {
            let Some(table) = tables.iter().find(|t| t.table == spec.table) else { continue };
            let entry = out
                .entry(spec.table.clone())
                .or_insert_with(|| TableChunks { columns: table.columns.len(), chunks: Vec::new() });
            let range =
                spec.key.as_ref().map(|column| KeyRange { column: column.clone(), from: spec.from, to: spec.to });
            entry.chunks.push((range, done.get(&spec.id).copied().unwrap_or(cp)));
        }
        Some(CatchUp { until, application, tables: out })
    }

    /// Whether a row's copy already holds a change committed at `commit` (its chunk was copied later).
    fn held(&self, table: &TableChunks, row: &Row, commit: Lsn) -> Result<bool, String> {
        for (range, lsn) in &table.chunks {
            let inside = match range {
                None => true,
                Some(range) => match row.get(&range.column) {
                    Cell::Value(text) => range
                        .contains(text.parse::<i64>().map_err(|_| format!("key {} is not an integer", range.column))?),
                    Cell::Null | Cell::Absent => return Err(format!("the change does not carry key {}", range.column)),
                },
            };
            if inside {
                return Ok(commit < *lsn);
            }
        }
        Ok(false)
    }

    /// The change to publish for `change` (committed at `commit`), or none when the copy holds it already.
    pub fn admit(&self, commit: Lsn, change: RowChange) -> Result<Option<RowChange>, CaptureError> {
        let Some(table) = self.tables.get(&change.table) else { return Ok(Some(change)) };
        let fail = |why: String| {
            CaptureError::Stream(format!(
                "catching up the resumed bootstrap at {commit} on {}: {why}. Run `pgm-capture bootstrap --restart` \
                 to copy again",
                change.table
            ))
        };
        let new_held = match change.op {
            RowOp::Delete => None,
            _ => Some(self.held(table, &change.new, commit).map_err(fail)?),
        };
        let old_held = match (&change.op, &change.identity) {
            (RowOp::Insert, _) => None,
            (_, Some(identity)) => Some(self.held(table, identity, commit).map_err(fail)?),
            (_, None) => new_held,
        };
        Ok(match (change.op, old_held, new_held) {
            (RowOp::Insert, _, Some(true)) | (RowOp::Delete, Some(true), _) => None,
            (RowOp::Insert, _, _) | (RowOp::Delete, _, _) => Some(change),
            (RowOp::Update, Some(true), Some(true)) => None,
            (RowOp::Update, Some(false), Some(false)) => Some(change),
            // The key moved out of a chunk copied before this change into one copied after: only the old row goes.
            (RowOp::Update, Some(false), Some(true)) => {
                Some(RowChange { op: RowOp::Delete, new: Row::default(), ..change })
            }
            // The key moved from a chunk copied after this change into one copied before: the row must be made.
            (RowOp::Update, _, _) => {
                if change.new.0.len() < table.columns {
                    return Err(fail(
                        "an update moved a row's key into a chunk copied before it, and the update does not carry \
                         every column (an unchanged TOASTed value)"
                            .into(),
                    ));
                }
                Some(RowChange { op: RowOp::Insert, identity: None, ..change })
            }
        })
    }

    /// A truncate while the table's chunks were copied at different points cannot be placed: refuse it.
    pub fn admit_truncate(&self, commit: Lsn, truncate: &Truncate) -> Result<bool, CaptureError> {
        let Some(table) = self.tables.get(&truncate.table) else { return Ok(true) };
        let held = table.chunks.iter().filter(|(_, lsn)| commit < *lsn).count();
        if held == 0 {
            return Ok(true);
        }
        if held == table.chunks.len() {
            return Ok(false);
        }
        Err(CaptureError::Stream(format!(
            "catching up the resumed bootstrap at {commit}: {} was truncated between the copies of its chunks. Run \
             `pgm-capture bootstrap --restart` to copy again",
            truncate.table
        )))
    }
}

fn line(progress: &Progress, i: usize) -> String {
    let table = &progress.tables[i];
    let rows = progress.rows[i].load(Ordering::Relaxed);
    let (first, last) = *progress.spans[i].lock().unwrap();
    let secs = match first {
        Some(first) => last.unwrap_or_else(Instant::now).duration_since(first).as_secs_f64().max(0.001),
        None => f64::INFINITY,
    };
    let rate = rows as f64 / secs;
    let left = progress.chunks_left[i].load(Ordering::Relaxed);
    let total = progress.chunks_total[i];
    let done = left == 0;
    let estimate = progress.estimate[i].max(rows);
    let eta = if done {
        "done".to_owned()
    } else if progress.estimate[i] > 0 && rate > 0.0 {
        format!("ETA {:.0} s", (estimate.saturating_sub(rows)) as f64 / rate)
    } else {
        "ETA unknown".to_owned()
    };
    let of = if progress.estimate[i] > 0 { format!(" of ~{}", progress.estimate[i]) } else { String::new() };
    let filled = if done { 20 } else { (rows * 20).checked_div(estimate).unwrap_or(0).min(19) as usize };
    format!(
        "{:<36} [{}{}] {rows:>10} rows{of}  {rate:>9.0} rows/s  chunks {}/{total}  {eta}",
        table.table.to_string(),
        "#".repeat(filled),
        "-".repeat(20 - filled),
        total - left,
    )
}

/// A table per line, redrawn on a terminal; plain log lines every 5 s otherwise.
async fn show_progress(progress: Arc<Progress>) {
    let terminal = std::io::stderr().is_terminal();
    let mut drawn = 0usize;
    loop {
        tokio::time::sleep(Duration::from_millis(if terminal { 250 } else { 5000 })).await;
        if terminal {
            let mut out = String::new();
            if drawn > 0 {
                out.push_str(&format!("\x1b[{drawn}A"));
            }
            for i in 0..progress.tables.len() {
                out.push_str(&format!("\x1b[2K{}\n", line(&progress, i)));
            }
            drawn = progress.tables.len();
            eprint!("{out}");
        } else {
            for i in 0..progress.tables.len() {
                let table: &TableRef = &progress.tables[i].table;
                tracing::info!(table = %table, progress = %line(&progress, i), "bootstrap");
            }
        }
    }
}

fn print_final(progress: &Progress) {
    for i in 0..progress.tables.len() {
        println!("{}", line(progress, i));
    }
}
