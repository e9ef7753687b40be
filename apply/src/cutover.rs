//! `pgm-apply cutover`: the application moves from DB1 to DB2.
//!
//! ```text
//!  t0 fence     ALTER DATABASE db1 SET default_transaction_read_only = on; end every other client session
//!  t1 fenced    every ended session is gone: nothing can commit on DB1 any more
//!  t2 marker    pg_logical_emit_message(true, 'pgm', 'cutover:<id>') commits after every write DB1 acknowledged
//!  t3 applied   apply has committed the marker to DB2 (pgm.apply_messages), so everything before it too
//!  t4 sequences every DB1 sequence's value (+ margin) set on its DB2 counterpart: DB2 takes writes
//! ```
//!
//! Write downtime = t4 − t0. On a timeout or an error before t4 the fence is lifted and cutover says so; after t4
//! DB1 stays read-only.
//!
//! With fall-back configured (`[fallback]`), cutover also creates the fall-back slot on DB2 between t3 and t4: DB1
//! is fenced and DB2 has taken no application write yet, so the slot's stream holds every write DB2 takes from then
//! on and none of those apply replayed. `pgm-apply rollback` is the same move in the other direction, on the
//! fall-back stream: fence DB2, marker through the reverse pipeline into DB1, sequences back to DB1 (only raised),
//! then DB1's fence lifted.

use std::time::{Duration, Instant};

use pgm_common::change::{quote_ident, TableRef};
use pgm_common::config::{Fence, PipelineConfig};
use tokio_postgres::Client;

use crate::progress;

/// The prefix of cutover's marker; capture must carry it (`capture.message_prefixes`).
pub const MARKER_PREFIX: &str = "pgm";

/// One sequence of DB1 and where its value goes on DB2.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SequencePlan {
    pub source: TableRef,
    /// `None`: no DB2 counterpart found (reported, not copied).
    pub target: Option<TableRef>,
    /// Why this target (owned by a renamed column, or the same name).
    pub via: String,
}

/// DB1's sequences in the configured tables' schemas and their DB2 counterparts: the sequence behind the DB2 column
/// that takes the owning column (through the rules' renames), else a DB2 sequence of the same name.
pub async fn plan_sequences(config: &PipelineConfig, db1: &Client, db2: &Client) -> anyhow::Result<Vec<SequencePlan>> {
    let program = pgm_rules::compile(config).await?;
    let tables = config.tables();
    let mut schemas: Vec<String> = tables.iter().map(|t| t.schema.clone()).collect();
    schemas.sort();
    schemas.dedup();
    let rows = db1
        .query(
            "SELECT sn.nspname::text, s.relname::text, tn.nspname::text, t.relname::text, a.attname::text
             FROM pg_class s
             JOIN pg_namespace sn ON sn.oid = s.relnamespace
             LEFT JOIN pg_depend d ON d.classid = 'pg_class'::regclass AND d.objid = s.oid
                  AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')
             LEFT JOIN pg_class t ON t.oid = d.refobjid
             LEFT JOIN pg_namespace tn ON tn.oid = t.relnamespace
             LEFT JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
             WHERE s.relkind = 'S' AND sn.nspname = ANY($1)
             ORDER BY 1, 2",
            &[&schemas],
        )
        .await?;
    let mut plans = Vec::new();
    for row in rows {
        let source = TableRef::new(row.get::<_, String>(0), row.get::<_, String>(1));
        let owner: Option<(TableRef, String)> =
            match (row.get::<_, Option<String>>(2), row.get::<_, Option<String>>(3), row.get::<_, Option<String>>(4)) {
                (Some(schema), Some(table), Some(column)) => Some((TableRef::new(schema, table), column)),
                _ => None,
            };
        let mut plan = SequencePlan { source: source.clone(), target: None, via: String::new() };
        if let Some((table, column)) = &owner {
            for (target_table, target_column) in program.column_targets(table, column) {
                let found = db2
                    .query_one("SELECT pg_get_serial_sequence($1, $2)", &[&target_table.quoted(), &target_column])
                    .await
                    .ok()
                    .and_then(|r| r.get::<_, Option<String>>(0));
                if let Some(name) = found {
                    let parsed = db2
                        .query_one(
                            "SELECT n.nspname::text, c.relname::text FROM pg_class c
                             JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = $1::text::regclass",
                            &[&name],
                        )
                        .await?;
                    plan.target = Some(TableRef::new(parsed.get::<_, String>(0), parsed.get::<_, String>(1)));
                    plan.via = format!(
                        "owned by {table}.{} → {target_table}.{}",
                        quote_ident(column),
                        quote_ident(&target_column)
                    );
                    break;
                }
            }
        }
        if plan.target.is_none() {
            let same = db2
                .query_opt(
                    "SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                     WHERE c.relkind = 'S' AND n.nspname = $1 AND c.relname = $2",
                    &[&source.schema, &source.table],
                )
                .await?;
            if same.is_some() {
                plan.target = Some(source.clone());
                plan.via = "same name".into();
            } else {
                plan.via = match &owner {
                    Some((table, column)) => format!(
                        "owned by {table}.{}, but no DB2 column taking it has a sequence and DB2 has no sequence of this name",
                        quote_ident(column)
                    ),
                    None => "DB2 has no sequence of this name".into(),
                };
            }
        }
        plans.push(plan);
    }
    Ok(plans)
}

/// Copies the values; returns (sequence, DB1 value, value set on DB2) per copied sequence.
async fn copy_sequences(
    plans: &[SequencePlan],
    margin: i64,
    db1: &Client,
    db2: &Client,
) -> anyhow::Result<Vec<(TableRef, TableRef, i64, i64)>> {
    let mut copied = Vec::new();
    for plan in plans {
        let Some(target) = &plan.target else { continue };
        let row = db1
            .query_one(&format!("SELECT last_value, is_called FROM {}", plan.source.quoted()), &[])
            .await
            .map_err(|e| anyhow::anyhow!("reading sequence {} on DB1: {e}", plan.source))?;
        let (last, called): (i64, bool) = (row.get(0), row.get(1));
        // The next value DB1 would hand out, so DB2 hands out nothing DB1 already did.
        let next = if called { last.saturating_add(1) } else { last };
        let wanted = next.saturating_add(margin);
        let row = db2
            .query_one(
                &format!(
                    "SELECT CASE WHEN s.last_value + (s.is_called)::int >= $1 THEN s.last_value + (s.is_called)::int
                                 ELSE setval($2::text::regclass, $1, false) END
                     FROM {} s",
                    target.quoted()
                ),
                &[&wanted, &target.quoted()],
            )
            .await
            .map_err(|e| anyhow::anyhow!("setting sequence {target} on DB2: {e}"))?;
        copied.push((plan.source.clone(), target.clone(), next, row.get::<_, i64>(0)));
    }
    Ok(copied)
}

/// Which way the application moves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Move {
    /// DB1 → DB2, on the migration's stream.
    Cutover,
    /// DB2 → DB1, on the fall-back stream (`config` is the reversed one).
    Rollback,
}

impl Move {
    fn name(self) -> &'static str {
        match self {
            Move::Cutover => "cutover",
            Move::Rollback => "rollback",
        }
    }

    fn names(self) -> Names {
        match self {
            Move::Cutover => Names { from: "DB1", to: "DB2" },
            Move::Rollback => Names { from: "DB2", to: "DB1" },
        }
    }
}

/// The two databases of a move as the operator knows them: `from` is fenced, `to` takes the writes.
struct Names {
    from: &'static str,
    to: &'static str,
}

/// What the dry run and the real run both check first.
struct Preflight {
    /// The fenced database (the stream's source).
    db1: Client,
    /// The database that takes the writes (the stream's target).
    db2: Client,
    database: String,
    sessions: i64,
    plans: Vec<SequencePlan>,
}

/// `wal_level` of the database `client` is on must be logical for a stream to start there.
async fn require_logical(client: &Client, what: &str, why: &str) -> anyhow::Result<()> {
    let level: String = client.query_one("SELECT current_setting('wal_level')", &[]).await?.get(0);
    if level != "logical" {
        anyhow::bail!(
            "{what} has wal_level = {level}: {why} needs wal_level = logical on {what}. Set it in {what}'s \
             postgresql.conf (ALTER SYSTEM SET wal_level = logical) and restart {what}, then run this again"
        );
    }
    Ok(())
}

/// With fall-back configured, what cutover needs on DB2 before it fences: logical WAL, a free slot, no slot of that
/// name yet, keys on the tables the fall-back stream carries, and reverse rules that compile against both catalogs.
async fn preflight_fallback(reversed: &PipelineConfig, db2: &Client) -> anyhow::Result<()> {
    require_logical(db2, "DB2", "the fall-back stream ([fallback])").await?;
    let slot = &reversed.capture.slot;
    let row = db2
        .query_one(
            "SELECT current_setting('max_replication_slots')::int - (SELECT count(*) FROM pg_replication_slots)::int,
                    EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)",
            &[slot],
        )
        .await?;
    if row.get::<_, bool>(1) {
        anyhow::bail!(
            "the fall-back slot {slot} exists on DB2 already: a slot made before cutover would carry the writes apply \
             replays. Drop it (`pgm-capture --reverse slot drop`), or set fallback.slot to another name"
        );
    }
    if row.get::<_, i32>(0) < 1 {
        anyhow::bail!(
            "DB2 has no free replication slot for the fall-back stream: raise max_replication_slots on DB2 (a \
             restart) or drop a slot DB2 does not need"
        );
    }
    let missing = pgm_common::identity::tables_without_identity(db2, &reversed.tables()).await?;
    if let Some(problem) = pgm_common::identity::refusal(&missing) {
        anyhow::bail!("fall-back stream on DB2: {problem}");
    }
    pgm_rules::compile(reversed).await.map_err(|e| {
        anyhow::anyhow!(
            "the fall-back rules ({}) do not fit: {e}; see `pgm-transform --reverse check`",
            describe_rules(reversed)
        )
    })?;
    Ok(())
}

fn describe_rules(config: &PipelineConfig) -> String {
    config.transform.rules.as_ref().map_or("none: every table passes unchanged".to_owned(), |p| p.display().to_string())
}

async fn preflight(config: &PipelineConfig, how: Move, fallback: Option<&PipelineConfig>) -> anyhow::Result<Preflight> {
    let Names { from, to } = how.names();
    let command = how.name();
    if !config.capture.message_prefixes.iter().any(|p| p == MARKER_PREFIX) {
        anyhow::bail!(
            "capture.message_prefixes does not include {MARKER_PREFIX:?}: {command}'s marker would never reach {to}. \
             Add it and restart capture"
        );
    }
    let db1 = crate::connect_plain(&config.source, command, from).await?;
    if how == Move::Rollback {
        require_logical(&db1, "DB2", "rollback's fall-back stream").await?;
    }
    let db2 = crate::connect_target(config).await?;
    if let Some(reversed) = fallback {
        preflight_fallback(reversed, &db2).await?;
        // Capture makes this origin at start when [fallback] is configured, and leaves its transactions out.
        let origin = reversed.apply_origin();
        let known: bool = db1.query_one("SELECT pg_replication_origin_oid($1) IS NOT NULL", &[&origin]).await?.get(0);
        if !known {
            anyhow::bail!(
                "DB1 has no replication origin {origin}: pgm-capture was started before [fallback] was configured, so \
                 it would carry the fall-back stream's writes to DB1 back into the migration. Restart pgm-capture, \
                 then run cutover again"
            );
        }
    }
    let pipeline = &config.topics.prefix;
    let run = if how == Move::Rollback { "pgm-apply --reverse run" } else { "pgm-apply run" };
    if progress::running_pid(&db2, pipeline).await?.is_none() {
        anyhow::bail!("no pgm-apply is running for pipeline {pipeline:?}: start it (`{run}`) before {command}");
    }
    if progress::is_paused(&db2, pipeline).await? {
        anyhow::bail!("apply is paused for pipeline {pipeline:?}: resume it first");
    }
    let lag_s: Option<f64> = db2
        .query_one(
            &format!("SELECT {} FROM pgm.apply_progress WHERE pipeline = $1", progress::LAG_SECONDS_SQL),
            &[pipeline],
        )
        .await?
        .get(0);
    let max_s = config.cutover.max_lag_ms as f64 / 1000.0;
    match lag_s {
        Some(lag) if lag <= max_s => {}
        lag => anyhow::bail!(
            "apply is {} behind {from} (cutover.max_lag_ms allows {max_s:.1} s): the fence would last at least that \
             long. Wait until `pgm-apply status` shows a small lag, then run {command} again",
            lag.map_or("an unknown time (nothing applied yet)".to_owned(), |l| format!("{l:.1} s"))
        ),
    }
    let row = db1
        .query_one(
            "SELECT current_database()::text,
                    (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)
                    OR pg_has_role(current_user, (SELECT datdba FROM pg_database WHERE datname = current_database()), 'MEMBER'),
                    (SELECT count(*) FROM pg_prepared_xacts WHERE database = current_database()),
                    (SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
                        AND backend_type = 'client backend' AND pid <> pg_backend_pid())",
            &[],
        )
        .await?;
    let database: String = row.get(0);
    if config.cutover.fence == Fence::ReadOnly && !row.get::<_, bool>(1) {
        anyhow::bail!(
            "the {from} user {} may not ALTER DATABASE {}: {command}'s read-only fence needs the database owner or a \
             superuser (or set cutover.fence = \"none\" once the writers are stopped)",
            config.source.user,
            quote_ident(&database)
        );
    }
    let prepared: i64 = row.get(2);
    if prepared > 0 {
        anyhow::bail!(
            "{from} database {} has {prepared} prepared transaction(s) (pg_prepared_xacts): they could commit after \
             the fence. COMMIT PREPARED or ROLLBACK PREPARED them first",
            quote_ident(&database)
        );
    }
    let plans = plan_sequences(config, &db1, &db2).await?;
    Ok(Preflight { db1, db2, database, sessions: row.get(3), plans })
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// `pgm-apply cutover`.
pub async fn run(config: &PipelineConfig, dry_run: bool) -> anyhow::Result<()> {
    if config.reverse {
        anyhow::bail!(
            "cutover moves the application from DB1 to DB2: run it without --reverse (to move back: rollback)"
        );
    }
    let fallback = if config.fallback.enabled() { Some(config.reversed()?) } else { None };
    execute(config, Move::Cutover, fallback.as_ref(), dry_run).await
}

/// `pgm-apply rollback`: the application moves back from DB2 to DB1 on the fall-back stream.
pub async fn rollback(config: &PipelineConfig, dry_run: bool) -> anyhow::Result<()> {
    if !config.fallback.enabled() {
        anyhow::bail!(
            "rollback needs the fall-back stream: [fallback] tables (and rules) configured before cutover, and \
             pgm-capture, pgm-transform and pgm-apply running with --reverse (docs/lifecycle.md, \"Falling back\")"
        );
    }
    execute(&config.reversed()?, Move::Rollback, None, dry_run).await
}

async fn execute(
    config: &PipelineConfig,
    how: Move,
    fallback: Option<&PipelineConfig>,
    dry_run: bool,
) -> anyhow::Result<()> {
    let Preflight { db1, db2, database, sessions, plans } = preflight(config, how, fallback).await?;
    let Names { from, to } = how.names();
    let pipeline = &config.topics.prefix;
    println!(
        "{} of pipeline {pipeline:?}: {from} {} → {to} {}",
        how.name(),
        config.source.describe(),
        config.target.describe()
    );
    match config.cutover.fence {
        Fence::ReadOnly => println!(
            "fence        read-only: ALTER DATABASE {} SET default_transaction_read_only = on, then end the {sessions} \
             other client session(s) of {from}",
            quote_ident(&database)
        ),
        Fence::None => println!("fence        none (cutover.fence = \"none\": the writers must be stopped already)"),
    }
    for plan in &plans {
        match &plan.target {
            Some(target) => println!("sequence     {} → {target} ({})", plan.source, plan.via),
            None => println!("sequence     {} → not copied: {}", plan.source, plan.via),
        }
    }
    if let Some(reversed) = fallback {
        println!(
            "fall-back    slot {} ({}) created on DB2 once the marker is applied, before DB2 takes writes; the \
             fall-back stream (pipeline {:?}, rules {}) carries DB2's writes back to DB1",
            reversed.capture.slot,
            reversed.capture.decoder.plugin(),
            reversed.topics.prefix,
            describe_rules(reversed)
        );
    }
    if how == Move::Rollback {
        println!(
            "unfence      DB1: ALTER DATABASE … RESET default_transaction_read_only once the sequences are copied"
        );
    }
    if dry_run {
        println!("dry run: apply is running and not paused; nothing was changed");
        return Ok(());
    }

    let started = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let id = format!("{}:{}:{}", how.name(), started.as_nanos(), std::process::id());
    // The fenced database's clock just before the fence: sessions that start after it are read-only (see lift_fence).
    let fenced_at: Option<std::time::SystemTime> = match config.cutover.fence {
        Fence::ReadOnly => Some(db1.query_one("SELECT clock_timestamp()", &[]).await?.get(0)),
        Fence::None => None,
    };
    let t0 = Instant::now();
    let result = async {
        if fenced_at.is_some() {
            fence(&db1, &database, from).await?;
        }
        finish(config, how, fallback, &db1, &db2, &id, &plans, t0).await
    }
    .await;
    match result {
        Ok(timeline) => {
            println!("{timeline}");
            Ok(())
        }
        Err(error) => {
            if let Some(reversed) = fallback {
                if let Err(e) = drop_slot(config, &reversed.capture.slot).await {
                    eprintln!(
                        "{} failed and dropping the fall-back slot {} on DB2 failed too ({e:#}): drop it by hand \
                         (pgm-capture --reverse slot drop) before the next cutover",
                        how.name(),
                        reversed.capture.slot
                    );
                }
            }
            if let Some(fenced_at) = fenced_at {
                match lift_fence(&config.source, &database, fenced_at, how).await {
                    Ok(ended) => eprintln!(
                        "{} failed; the fence is lifted: {from} {} accepts writes again ({ended} session(s) opened \
                         read-only during the fence were ended so they reconnect read-write)",
                        how.name(),
                        quote_ident(&database)
                    ),
                    Err(e) => eprintln!(
                        "{} failed and lifting the fence failed too ({e:#}): run ALTER DATABASE {} RESET \
                         default_transaction_read_only on {from}",
                        how.name(),
                        quote_ident(&database)
                    ),
                }
            }
            Err(error)
        }
    }
}

async fn fence(db1: &Client, database: &str, what: &str) -> anyhow::Result<()> {
    db1.batch_execute(&format!("ALTER DATABASE {} SET default_transaction_read_only = on", quote_ident(database)))
        .await
        .map_err(|e| anyhow::anyhow!("fencing {what}: {e:#}"))
}

/// Drops the fall-back slot a failed cutover made on DB2 (the stream's target), if it did.
async fn drop_slot(config: &PipelineConfig, slot: &str) -> anyhow::Result<()> {
    let db2 = crate::connect_plain(&config.target, "cutover", "DB2").await?;
    db2.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1", &[&slot])
        .await?;
    Ok(())
}

/// On a new connection (the command's own may be what failed). Sessions that connected during the fence would stay
/// read-only for their lifetime: they are ended, so the application's pool reconnects read-write. `since`: end only
/// those that started after it (None: every client session but pg-migrator's own services).
async fn lift_fence(
    pg: &pgm_common::config::PgConfig,
    database: &str,
    since: std::time::SystemTime,
    how: Move,
) -> anyhow::Result<usize> {
    let db = crate::connect_plain(pg, how.name(), how.names().from).await?;
    unfence(&db, database, Some(since)).await
}

/// Resets the database's read-only default and ends the client sessions that started under it (`since`; `None`:
/// all of them), except pg-migrator's own (`pgm-*`: they set read-write themselves).
async fn unfence(db: &Client, database: &str, since: Option<std::time::SystemTime>) -> anyhow::Result<usize> {
    // A new session starts read-only under the fence itself.
    db.batch_execute("SET default_transaction_read_only = off").await?;
    db.batch_execute(&format!("ALTER DATABASE {} RESET default_transaction_read_only", quote_ident(database))).await?;
    let since = since.unwrap_or(std::time::UNIX_EPOCH);
    let ended = db
        .query(
            "SELECT pid FROM (SELECT pid FROM pg_stat_activity WHERE datname = current_database()
                               AND backend_type = 'client backend' AND pid <> pg_backend_pid()
                               AND application_name NOT LIKE 'pgm-%'
                               AND backend_start >= $1::timestamptz OFFSET 0) s
             WHERE pg_terminate_backend(pid)",
            &[&since],
        )
        .await?;
    Ok(ended.len())
}

#[allow(clippy::too_many_arguments)]
async fn finish(
    config: &PipelineConfig,
    how: Move,
    fallback: Option<&PipelineConfig>,
    db1: &Client,
    db2: &Client,
    id: &str,
    plans: &[SequencePlan],
    t0: Instant,
) -> anyhow::Result<String> {
    let Names { from, to } = how.names();
    let deadline = t0 + Duration::from_millis(config.cutover.timeout_ms);
    let mut ended = 0u64;
    if config.cutover.fence == Fence::ReadOnly {
        // Sessions opened before the fence keep read-write defaults: end them all, then wait until they are gone
        // (a backend's last commit is in the WAL before it exits).
        // Sessions that connect after the fence are read-only and are left alone.
        let rows = db1
            .query(
                "SELECT pid FROM (SELECT pid FROM pg_stat_activity WHERE datname = current_database()
                                   AND backend_type = 'client backend' AND pid <> pg_backend_pid() OFFSET 0) s
                 WHERE pg_terminate_backend(pid)",
                &[],
            )
            .await?;
        let pids: Vec<i32> = rows.iter().map(|r| r.get(0)).collect();
        ended = pids.len() as u64;
        loop {
            let left: i64 =
                db1.query_one("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1)", &[&pids]).await?.get(0);
            if left == 0 {
                break;
            }
            if Instant::now() > deadline {
                anyhow::bail!("{left} {from} session(s) did not end within cutover.timeout_ms");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    let t1 = t0.elapsed();
    // Our session started before the fence; READ WRITE says so explicitly.
    db1.batch_execute("BEGIN READ WRITE").await?;
    let marker =
        db1.query_one("SELECT pg_logical_emit_message(true, $1::text, $2::text)::text", &[&MARKER_PREFIX, &id]).await;
    let marker_lsn: String = match marker {
        Ok(row) => {
            db1.batch_execute("COMMIT").await?;
            row.get(0)
        }
        Err(e) => {
            let _ = db1.batch_execute("ROLLBACK").await;
            return Err(anyhow::anyhow!("writing the {} marker on {from}: {e}", how.name()));
        }
    };
    let t2 = t0.elapsed();
    let pipeline = &config.topics.prefix;
    loop {
        let found = db2
            .query_opt(
                "SELECT 1 FROM pgm.apply_messages WHERE pipeline = $1 AND prefix = $2 AND content = $3",
                &[pipeline, &MARKER_PREFIX, &id],
            )
            .await?;
        if found.is_some() {
            break;
        }
        if Instant::now() > deadline {
            anyhow::bail!(
                "apply did not apply the {} marker ({from} {marker_lsn}) within {} ms: see `pgm-apply{} status` and \
                 the services' logs",
                how.name(),
                config.cutover.timeout_ms,
                if how == Move::Rollback { " --reverse" } else { "" }
            );
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let t3 = t0.elapsed();
    let mut slot_line = None;
    if let Some(reversed) = fallback {
        // DB1 is fenced and its last write is on DB2; the application has not been told to write to DB2 yet.
        pgm_common::pgoutput::ensure_publication(db2, reversed)
            .await
            .map_err(|e| anyhow::anyhow!("creating the fall-back publication on DB2: {e}"))?;
        let lsn: String = db2
            .query_one(
                "SELECT lsn::text FROM pg_create_logical_replication_slot($1, $2)",
                &[&reversed.capture.slot, &reversed.capture.decoder.plugin()],
            )
            .await
            .map_err(|e| anyhow::anyhow!("creating the fall-back slot {} on DB2: {e}", reversed.capture.slot))?
            .get(0);
        slot_line = Some((t0.elapsed(), format!("fall-back slot {} created on DB2 at {lsn}", reversed.capture.slot)));
    }
    let copied = copy_sequences(plans, config.cutover.sequence_margin, db1, db2).await?;
    let t4 = t0.elapsed();
    let mut unfenced = None;
    if how == Move::Rollback {
        let database: String = db2.query_one("SELECT current_database()::text", &[]).await?.get(0);
        let ended = unfence(db2, &database, None).await.map_err(|e| {
            anyhow::anyhow!(
                "lifting DB1's fence: {e:#}; run ALTER DATABASE {} RESET default_transaction_read_only on DB1",
                quote_ident(&database)
            )
        })?;
        unfenced = Some((t0.elapsed(), ended));
    }
    let mut out = String::new();
    out.push_str("timeline (from the fence)\n");
    out.push_str(&format!("  {:>10}  fence: {from} read-only for new sessions\n", ms(Duration::ZERO)));
    out.push_str(&format!("  {:>10}  {ended} session(s) ended and gone\n", ms(t1)));
    out.push_str(&format!("  {:>10}  marker written at {from} {marker_lsn}\n", ms(t2)));
    out.push_str(&format!("  {:>10}  marker applied on {to}\n", ms(t3)));
    if let Some((at, line)) = &slot_line {
        out.push_str(&format!("  {:>10}  {line}\n", ms(*at)));
    }
    out.push_str(&format!("  {:>10}  {} sequence(s) copied\n", ms(t4), copied.len()));
    for (source, target, db1_next, db2_next) in &copied {
        out.push_str(&format!("              {from} {source} next {db1_next} → {to} {target} next {db2_next}\n"));
    }
    let end = match unfenced {
        Some((at, ended)) => {
            out.push_str(&format!(
                "  {:>10}  DB1's fence lifted ({ended} read-only session(s) ended so they reconnect read-write)\n",
                ms(at)
            ));
            at
        }
        None => t4,
    };
    out.push_str(&format!(
        "write downtime: {} ms — the application now writes to {to}; {from} stays read-only",
        end.as_millis()
    ));
    Ok(out)
}
