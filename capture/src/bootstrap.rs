//! `pgm-capture bootstrap`: copy DB1 into the raw topics as one snapshot, positioned just before the stream.
//!
//! ```text
//!   CREATE_REPLICATION_SLOT … EXPORT_SNAPSHOT ──▶ consistent point C, snapshot S (held while the copy runs)
//!   workers × bootstrap.parallel: BEGIN REPEATABLE READ; SET TRANSACTION SNAPSHOT S; SELECT chunk (ctid range)
//!        └──▶ rows ──▶ one publisher: raw topics, op "snapshot", positions (C − 1, 1…), partition = hash(key)
//!   txn topic: begin (C − 1) … commit (C − 1, counts, end C)
//! ```
//!
//! The snapshot is one source transaction at commit LSN C − 1: every change the slot streams has a commit LSN ≥ C,
//! so it sorts after every copied row, and apply (which only applies a transaction once its commit record has come)
//! shows DB2 either none of the snapshot or all of it. It starts with a truncate of every copied table, so it
//! replaces whatever DB2 held (an earlier attempt's copy included). Transform rewrites snapshot rows with the same
//! rules (as inserts; apply writes them as upserts). The commit record is sent only once every row is acknowledged.
//!
//! Crash: the exported snapshot dies with the process, so a copy cannot be resumed; `--restart` drops the slot and
//! copies again. The interrupted attempt's records stay in the topics, at positions below the new attempt's (its C is
//! later): without a commit record apply skips them; with one (killed after the commit) its copy is applied and then
//! replaced by the new attempt's truncate + copy.

use std::collections::VecDeque;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{pin_mut, StreamExt};
use pgm_common::change::{Begin, Commit, Row, RowChange, RowOp, TableRef, Truncate};
use pgm_common::config::PipelineConfig;
use pgm_common::snapshot::{PageRange, SourceTable};
use pgm_common::Lsn;
use tokio::sync::mpsc;

use crate::metrics::CaptureMetrics;
use crate::publisher::Publisher;
use crate::walsender::Walsender;
use crate::CaptureError;

/// One unit of copying: a table, or a ctid range of a large one.
#[derive(Clone, Debug)]
struct Chunk {
    table: usize,
    pages: Option<PageRange>,
}

/// Copied rows per table, shared by the workers and the progress display.
struct Progress {
    tables: Vec<SourceTable>,
    rows: Vec<AtomicU64>,
    chunks_left: Vec<AtomicU64>,
    /// When each table's first chunk started and its last one ended: its rate is over that span.
    spans: Vec<Mutex<(Option<Instant>, Option<Instant>)>>,
    started: Instant,
}

fn source_err(what: String) -> impl FnOnce(tokio_postgres::Error) -> CaptureError {
    move |source| CaptureError::Source { what, source }
}

/// The application_name of every bootstrap connection: `pgm-capture run` waits while one is on DB1, because a
/// stream started before the snapshot's commit record is in Kafka would be applied first and hide the snapshot.
/// (PostgreSQL keeps the first 63 bytes.)
pub fn application_name(slot: &str) -> String {
    let mut name = format!("pgm-bootstrap:{slot}");
    name.truncate(63);
    name
}

/// What `bootstrap` reports when it is done.
pub struct Summary {
    pub consistent_point: Lsn,
    pub rows: u64,
    pub tables: usize,
    pub elapsed: Duration,
}

pub async fn run(config: &PipelineConfig, restart: bool) -> Result<Summary, CaptureError> {
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
    if let Some(row) = existing {
        if let Some(pid) = row.get::<_, Option<i32>>(0) {
            return Err(CaptureError::Config(format!(
                "slot {slot} is in use (pid {pid}): stop pgm-capture before a bootstrap"
            )));
        }
        if !restart {
            return Err(CaptureError::Config(format!(
                "slot {slot} already exists. If an earlier bootstrap was interrupted, run `pgm-capture bootstrap \
                 --restart` (drops the slot and copies again; the new copy replaces whatever the interrupted one left). \
                 If capture has streamed from this slot, DB2 is bootstrapped already"
            )));
        }
        client
            .execute("SELECT pg_drop_replication_slot($1)", &[slot])
            .await
            .map_err(source_err(format!("drop slot {slot}")))?;
        tracing::info!(slot, "dropped the slot of an interrupted bootstrap");
    }
    // What `check` says of DB1, before a publication, a topic or the slot is made.
    crate::check::preflight(&client, config).await?;

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
    crate::identity::refuse_tables_without_identity(&client, config).await?;
    crate::slot::ensure_publication(&client, config).await?;
    let publisher = Publisher::new(config, CaptureMetrics::default()).await?;

    // The slot and its snapshot: the replication connection stays open and idle until every worker has imported it.
    let application = application_name(slot);
    let mut replication = Walsender::connect(&config.source, &application).await?;
    let created = replication.create_slot(slot, config.capture.decoder.plugin(), true).await?;
    let snapshot = created.snapshot_name.clone().ok_or_else(|| {
        CaptureError::Stream("CREATE_REPLICATION_SLOT … EXPORT_SNAPSHOT returned no snapshot name".into())
    })?;
    let cp = created.consistent_point;
    tracing::info!(slot, consistent_point = %cp, "slot created; copying in its snapshot");

    let mut chunks = VecDeque::new();
    for (i, table) in described.iter().enumerate() {
        let ranges = if table.pages > config.bootstrap.chunk_pages {
            table.chunks(config.bootstrap.chunk_pages).into_iter().map(Some).collect()
        } else {
            vec![None]
        };
        for pages in ranges {
            chunks.push_back(Chunk { table: i, pages });
        }
    }
    let progress = Arc::new(Progress {
        rows: described.iter().map(|_| AtomicU64::new(0)).collect(),
        chunks_left: described
            .iter()
            .enumerate()
            .map(|(i, _)| AtomicU64::new(chunks.iter().filter(|c| c.table == i).count() as u64))
            .collect(),
        spans: described.iter().map(|_| Mutex::new((None, None))).collect(),
        tables: described,
        started: Instant::now(),
    });
    let queue = Arc::new(Mutex::new(chunks));
    let (rows_tx, rows_rx) = mpsc::channel::<(usize, Row)>(8192);

    // Workers import the snapshot before anything else; the replication connection must not be used until then.
    let workers = config.bootstrap.parallel.min(queue.lock().unwrap().len()).max(1);
    let (imported_tx, mut imported_rx) = mpsc::channel::<Result<(), CaptureError>>(workers);
    let mut handles = Vec::new();
    for worker in 0..workers {
        let (config, application, snapshot, queue, progress, rows_tx, imported_tx) = (
            config.source.clone(),
            application.clone(),
            snapshot.clone(),
            queue.clone(),
            progress.clone(),
            rows_tx.clone(),
            imported_tx.clone(),
        );
        handles.push(tokio::spawn(async move {
            copy_worker(worker, config, application, snapshot, queue, progress, rows_tx, imported_tx).await
        }));
    }
    drop(rows_tx);
    drop(imported_tx);
    for _ in 0..workers {
        match imported_rx.recv().await {
            Some(Ok(())) => {}
            Some(Err(e)) => return Err(e),
            None => break,
        }
    }

    let display = tokio::spawn(show_progress(progress.clone()));
    let published = publish(publisher, cp, &progress, rows_rx).await;
    display.abort();
    for handle in handles {
        match handle.await {
            Ok(result) => result?,
            Err(e) => return Err(CaptureError::Stream(format!("a copy worker panicked: {e}"))),
        }
    }
    let rows = published?;
    print_final(&progress);
    drop(replication);
    Ok(Summary { consistent_point: cp, rows, tables: progress.tables.len(), elapsed: progress.started.elapsed() })
}

#[allow(clippy::too_many_arguments)]
async fn copy_worker(
    worker: usize,
    pg: pgm_common::config::PgConfig,
    application: String,
    snapshot: String,
    queue: Arc<Mutex<VecDeque<Chunk>>>,
    progress: Arc<Progress>,
    rows: mpsc::Sender<(usize, Row)>,
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
        let table = &progress.tables[chunk.table];
        progress.spans[chunk.table].lock().unwrap().0.get_or_insert_with(Instant::now);
        let sql = table.select_sql(chunk.pages);
        let stream = client
            .query_raw(sql.as_str(), std::iter::empty::<&str>())
            .await
            .map_err(source_err(format!("copy {}", table.table)))?;
        pin_mut!(stream);
        while let Some(row) = stream.next().await {
            let row = row.map_err(source_err(format!("copy {}", table.table)))?;
            if rows.send((chunk.table, table.to_row(&row))).await.is_err() {
                return Ok(()); // the publisher stopped; it reports why
            }
        }
        if progress.chunks_left[chunk.table].fetch_sub(1, Ordering::Relaxed) == 1 {
            progress.spans[chunk.table].lock().unwrap().1 = Some(Instant::now());
        }
    }
    Ok(())
}

/// One synthetic source transaction at `cp − 1` holding every copied row.
async fn publish(
    mut publisher: Publisher,
    cp: Lsn,
    progress: &Progress,
    mut rows: mpsc::Receiver<(usize, Row)>,
) -> Result<u64, CaptureError> {
    let commit_lsn = Lsn(cp.0 - 1);
    publisher.begin(Begin { xid: 0, commit_lsn, commit_time: None }).await?;
    // The snapshot replaces whatever DB2 holds: an earlier attempt that was applied, or stale rows.
    for table in &progress.tables {
        publisher.truncate(Truncate { table: table.table.clone(), lsn: None }).await?;
    }
    let mut total = 0u64;
    loop {
        if publisher.is_full() {
            if let Some(ack) = publisher.next_ack().await {
                ack?;
            }
            continue;
        }
        tokio::select! {
            biased;
            Some(ack) = publisher.next_ack(), if publisher.in_flight() > 0 => { ack?; }
            next = rows.recv() => {
                let Some((index, row)) = next else { break };
                let table = &progress.tables[index];
                let change = RowChange {
                    op: RowOp::Insert,
                    table: table.table.clone(),
                    key_columns: table.key.clone(),
                    new: row,
                    identity: None,
                    lsn: None,
                };
                publisher.snapshot_row(change).await?;
                progress.rows[index].fetch_add(1, Ordering::Relaxed);
                total += 1;
            }
        }
    }
    if progress.chunks_left.iter().any(|c| c.load(Ordering::Relaxed) > 0) {
        // A worker failed: no commit record, so nothing of this attempt is ever applied.
        return Err(CaptureError::Stream("the copy stopped before every table was read".into()));
    }
    // Every row acknowledged before the commit record is sent: records of different partitions are not delivered in
    // order, and a commit record without its rows (after a crash here) would stop apply.
    publisher.drain().await?;
    publisher.commit(Commit { xid: 0, commit_lsn, end_lsn: cp, commit_time: None }).await?;
    publisher.drain().await?;
    Ok(total)
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
    let done = progress.chunks_left[i].load(Ordering::Relaxed) == 0;
    let estimate = table.rows_estimate.max(rows);
    let eta = if done {
        "done".to_owned()
    } else if table.rows_estimate > 0 && rate > 0.0 {
        format!("ETA {:.0} s", (estimate.saturating_sub(rows)) as f64 / rate)
    } else {
        "ETA unknown".to_owned()
    };
    let of = if table.rows_estimate > 0 { format!(" of ~{}", table.rows_estimate) } else { String::new() };
    let filled = if done { 20 } else { (rows * 20).checked_div(estimate).unwrap_or(0).min(19) as usize };
    format!(
        "{:<36} [{}{}] {rows:>10} rows{of}  {rate:>9.0} rows/s  {eta}",
        table.table.to_string(),
        "#".repeat(filled),
        "-".repeat(20 - filled)
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
