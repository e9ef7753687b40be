//! The logical replication slot on DB1: create, drop, inspect.

use pgm_common::config::PipelineConfig;
use pgm_common::pgoutput;

use crate::walsender::Walsender;
use crate::CaptureError;

/// Slot names are validated at config load (lower-case letters, digits, `_`), so they can be quoted as literals.
fn literal(slot: &str) -> String {
    format!("'{}'", slot.replace('\'', "''"))
}

/// Creates the slot (with the configured decoder's plugin) unless it exists; checks the plugin of an existing one.
/// Returns where the stream starts: the new slot's consistent point, or the existing one's confirmed position.
pub async fn ensure_exists(conn: &mut Walsender, config: &PipelineConfig) -> Result<crate::StreamStart, CaptureError> {
    let slot = config.capture.slot.as_str();
    let plugin = config.capture.decoder.plugin();
    match existing(conn, slot).await? {
        None if config.reverse => Err(CaptureError::Config(format!(
            "the fall-back slot {slot} does not exist on {}: `pgm-apply cutover` creates it (with [fallback] \
             configured) while DB1 is fenced and before DB2 takes its first write. A slot made now would miss the \
             writes DB2 took before it, so capture does not make one",
            config.source.describe()
        ))),
        None => {
            let created = conn.create_slot(slot, plugin, false).await.map_err(|e| plugin_missing(e, config))?;
            Ok(crate::StreamStart { position: created.consistent_point, created: true })
        }
        Some((found, _)) if found.as_deref() != Some(plugin) => Err(CaptureError::Config(format!(
            "slot {slot} exists with plugin {found:?}, but capture.decoder is {plugin}: set capture.decoder to the \
             slot's plugin, or drop the slot (pgm-capture slot drop) and bootstrap DB2 again, or set capture.slot to \
             another name"
        ))),
        Some((_, confirmed)) => Ok(crate::StreamStart { position: confirmed, created: false }),
    }
}

/// The slot must still be there once the stream has begun: a slot dropped behind capture's back took the changes
/// not yet in Kafka with it, and making a new one would skip them without a word.
pub async fn require_exists(conn: &mut Walsender, config: &PipelineConfig) -> Result<(), CaptureError> {
    let slot = config.capture.slot.as_str();
    match existing(conn, slot).await? {
        Some(_) => Ok(()),
        None => Err(CaptureError::Config(format!(
            "slot {slot} no longer exists on {}: it was dropped while capture ran, and the changes it held that were \
             not yet in Kafka are gone. Bootstrap DB2 again (pgm-apply reset, then pgm-capture bootstrap), or, if \
             nothing was written to the tables meanwhile, create the slot with `pgm-capture slot create`",
            config.source.describe()
        ))),
    }
}

/// The slot's plugin and confirmed position, if it exists.
async fn existing(conn: &mut Walsender, slot: &str) -> Result<Option<(Option<String>, pgm_common::Lsn)>, CaptureError> {
    let rows = conn
        .simple_query(&format!(
            "SELECT plugin, confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = {}",
            literal(slot)
        ))
        .await?;
    let Some(row) = rows.first() else { return Ok(None) };
    let confirmed = match row.get(1).cloned().flatten() {
        Some(lsn) => {
            lsn.parse().map_err(|_| CaptureError::Stream(format!("slot {slot}: confirmed_flush_lsn {lsn}")))?
        }
        None => pgm_common::Lsn::ZERO,
    };
    Ok(Some((row.first().cloned().flatten(), confirmed)))
}

/// Creating the slot failed: when its plugin is missing, say which package brings it.
fn plugin_missing(error: crate::walsender::WalsenderError, config: &PipelineConfig) -> CaptureError {
    let text = error.to_string();
    if text.contains("could not access file") || text.contains("58P01") {
        return CaptureError::Config(format!(
            "DB1 cannot load the output plugin {}: {text}; install the wal2json package of DB1's PostgreSQL version \
             (Debian: postgresql-15-wal2json), or set capture.decoder = \"pgoutput\" (built in)",
            config.capture.decoder.plugin()
        ));
    }
    error.into()
}

/// Refuses (transiently: the run loop retries) while `pgm-capture bootstrap` is copying into this slot's pipeline.
pub async fn wait_for_no_bootstrap(conn: &mut Walsender, slot: &str) -> Result<(), CaptureError> {
    let name = crate::bootstrap::application_name(slot);
    let rows = conn
        .simple_query(&format!("SELECT pid::text FROM pg_stat_activity WHERE application_name = {}", literal(&name)))
        .await?;
    match rows.first() {
        None => Ok(()),
        Some(row) => Err(CaptureError::BootstrapRunning {
            slot: slot.to_owned(),
            pid: row.first().cloned().flatten().unwrap_or_default(),
        }),
    }
}

/// Refuses (definitely) while a bootstrap of this slot is unfinished and not running: streaming before its copy is
/// complete in Kafka, or before its catch-up, would apply changes the copy already holds.
pub async fn refuse_unfinished_bootstrap(client: &tokio_postgres::Client, slot: &str) -> Result<(), CaptureError> {
    match crate::bootstrap::find_marker(client, slot).await? {
        None => Ok(()),
        Some((marker, _)) => Err(CaptureError::Config(format!(
            "the bootstrap of slot {slot} is unfinished (its marker slot {marker} exists): run `pgm-capture \
             bootstrap` again to resume it (it copies only the chunks not yet in Kafka), or `pgm-capture bootstrap \
             --restart` to copy everything again"
        ))),
    }
}

pub async fn connect(config: &PipelineConfig) -> Result<tokio_postgres::Client, CaptureError> {
    config.source.connect("pgm-capture").await.map_err(crate::connect_error(&config.source))
}

pub async fn create(config: &PipelineConfig) -> Result<String, CaptureError> {
    let client = connect(config).await?;
    crate::identity::refuse_tables_without_identity(&client, config).await?;
    ensure_publication(&client, config).await?;
    let mut conn = Walsender::connect(&config.source, "pgm-capture").await?;
    let created = conn.create_slot(&config.capture.slot, config.capture.decoder.plugin(), false).await?;
    Ok(format!(
        "slot {} ({}) created at {}",
        config.capture.slot,
        config.capture.decoder.plugin(),
        created.consistent_point
    ))
}

/// With pgoutput: the publication exists and covers the configured tables (see [`pgoutput::ensure_publication`]).
pub async fn ensure_publication(client: &tokio_postgres::Client, config: &PipelineConfig) -> Result<(), CaptureError> {
    pgoutput::ensure_publication(client, config).await.map_err(|e| match e {
        pgoutput::PublicationError::Db { what, source } => CaptureError::Source { what, source },
        pgoutput::PublicationError::Mismatch(problem) => CaptureError::Publication(problem),
    })
}

pub async fn drop(config: &PipelineConfig) -> Result<String, CaptureError> {
    let client = connect(config).await?;
    // An unfinished bootstrap's marker goes with the slot it marks.
    client
        .execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
             WHERE left(slot_name::text, length($1)) = $1",
            &[&crate::bootstrap::marker_prefix(&config.capture.slot)],
        )
        .await
        .map_err(|e| CaptureError::Source { what: "drop the bootstrap marker slot".into(), source: e })?;
    client
        .execute("SELECT pg_drop_replication_slot($1)", &[&config.capture.slot])
        .await
        .map_err(|e| CaptureError::Source { what: format!("drop slot {}", config.capture.slot), source: e })?;
    Ok(format!("slot {} dropped", config.capture.slot))
}

/// One line per fact: plugin, confirmed_flush_lsn, retained WAL bytes, active pid.
pub async fn status(config: &PipelineConfig) -> Result<String, CaptureError> {
    let client = connect(config).await?;
    let row = client
        .query_opt(
            "SELECT plugin, database, confirmed_flush_lsn::text, restart_lsn::text,
                    pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint, active_pid, wal_status
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&config.capture.slot],
        )
        .await
        .map_err(|e| CaptureError::Source { what: "read pg_replication_slots".into(), source: e })?;
    let Some(row) = row else {
        return Err(CaptureError::Config(format!(
            "slot {} does not exist on {}: create it with `pgm-capture slot create` (run creates it too)",
            config.capture.slot,
            config.source.describe()
        )));
    };
    let text = |i: usize| row.get::<_, Option<String>>(i).unwrap_or_else(|| "-".into());
    Ok(format!(
        "slot:                 {}\nplugin:               {}\ndatabase:             {}\nconfirmed_flush_lsn:  {}\nrestart_lsn:          {}\nretained_wal_bytes:   {}\nactive_pid:           {}\nwal_status:           {}",
        config.capture.slot,
        text(0),
        text(1),
        text(2),
        text(3),
        row.get::<_, Option<i64>>(4).map_or("-".into(), |b| b.to_string()),
        row.get::<_, Option<i32>>(5).map_or("-".into(), |p| p.to_string()),
        text(6),
    ))
}
