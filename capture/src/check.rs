//! `pgm-capture check`: is DB1 ready for capture? Each finding carries the SQL or setting that fixes it.

use pgm_common::config::{Decoder, PipelineConfig};
pub use pgm_common::findings::{Finding, Level};
use pgm_common::{kafka, topic_settings};

use crate::slot;
use crate::CaptureError;

fn finding(level: Level, item: impl Into<String>, detail: impl Into<String>, fix: Option<String>) -> Finding {
    Finding::new(level, item, detail, fix)
}

fn sql_err(what: &str) -> impl Fn(tokio_postgres::Error) -> CaptureError + '_ {
    move |source| CaptureError::Source { what: what.to_owned(), source }
}

pub async fn run(config: &PipelineConfig) -> Result<Vec<Finding>, CaptureError> {
    let client = slot::connect(config).await?;
    let mut findings = source(&client, config, Depth::Full).await?;
    findings.extend(kafka_topics(config).await);
    Ok(findings)
}

/// How far [`source`] looks. `run` and `bootstrap` check before they create anything, at every start, so they skip
/// the two costly looks: the plugin probe (a temporary slot waits for DB1's running transactions; creating the real
/// slot names a missing plugin just as well) and the scan of float columns for NaN (reads whole tables).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Depth {
    Full,
    Start,
}

/// What `run` and `bootstrap` check before they create a publication, a slot or a topic: the DB1 side of `check`.
/// Every failure is definite and named with its fix; only all WAL senders being busy may pass (the one of a killed
/// predecessor goes away by itself), so that is left to the retries.
pub async fn preflight(client: &tokio_postgres::Client, config: &PipelineConfig) -> Result<(), CaptureError> {
    let findings = source(client, config, Depth::Start).await?;
    let failed: Vec<&Finding> = findings.iter().filter(|f| f.level == Level::Fail).collect();
    if failed.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = failed.iter().map(|f| f.to_string()).collect();
    let problem = format!(
        "{} is not ready for capture ({} problem(s); `pgm-capture check` shows every finding):\n{}",
        config.source.describe(),
        failed.len(),
        list.join("\n")
    );
    if failed.iter().all(|f| f.item == "max_wal_senders") {
        return Err(CaptureError::Busy(problem));
    }
    Err(CaptureError::Config(problem))
}

/// DB1's findings: wal_level, privileges, slots and senders, the plugin, the slot, the tables, the publication.
pub async fn source(
    client: &tokio_postgres::Client,
    config: &PipelineConfig,
    depth: Depth,
) -> Result<Vec<Finding>, CaptureError> {
    let mut findings = Vec::new();

    let wal_level: String = client.query_one("SHOW wal_level", &[]).await.map_err(sql_err("SHOW wal_level"))?.get(0);
    findings.push(if wal_level == "logical" {
        finding(Level::Ok, "wal_level", "logical", None)
    } else {
        finding(
            Level::Fail,
            "wal_level",
            format!("is {wal_level}"),
            Some("ALTER SYSTEM SET wal_level = logical; then restart PostgreSQL".into()),
        )
    });

    let role = client
        .query_one("SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user", &[])
        .await
        .map_err(sql_err("read pg_roles"))?;
    let may_replicate: bool = role.get(0);
    findings.push(if may_replicate {
        finding(Level::Ok, "REPLICATION privilege", format!("{} may replicate", config.source.user), None)
    } else {
        finding(
            Level::Fail,
            "REPLICATION privilege",
            format!("{} lacks REPLICATION", config.source.user),
            Some(format!("ALTER ROLE {} REPLICATION;", pgm_common::change::quote_ident(&config.source.user))),
        )
    });

    let limits = client
        .query_one(
            "SELECT current_setting('max_replication_slots')::int,
                    (SELECT count(*) FROM pg_replication_slots)::int,
                    current_setting('max_wal_senders')::int,
                    (SELECT count(*) FROM pg_stat_replication)::int,
                    EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)",
            &[&config.capture.slot],
        )
        .await
        .map_err(sql_err("read replication limits"))?;
    let (max_slots, slots, max_senders, senders, slot_exists): (i32, i32, i32, i32, bool) =
        (limits.get(0), limits.get(1), limits.get(2), limits.get(3), limits.get(4));
    findings.push(if slot_exists || slots < max_slots {
        finding(Level::Ok, "max_replication_slots", format!("{slots} of {max_slots} used"), None)
    } else {
        finding(
            Level::Fail,
            "max_replication_slots",
            format!("all {max_slots} slots are used"),
            Some(format!(
                "ALTER SYSTEM SET max_replication_slots = {}; then restart, or drop an unused slot",
                max_slots + 1
            )),
        )
    });
    // A snapshot bootstrap makes two more: its marker (no WAL retained), and a temporary slot when it resumes.
    if !slot_exists && slots < max_slots && max_slots - slots < 3 {
        findings.push(finding(
            Level::Warn,
            "max_replication_slots",
            format!(
                "{} slot(s) free: a snapshot bootstrap uses 3 (the stream's, a marker, a temporary one to resume an \
                 interrupted copy)",
                max_slots - slots
            ),
            Some(format!("ALTER SYSTEM SET max_replication_slots = {}; then restart", slots + 3)),
        ));
    }
    findings.push(if senders < max_senders {
        finding(Level::Ok, "max_wal_senders", format!("{senders} of {max_senders} used"), None)
    } else {
        finding(
            Level::Fail,
            "max_wal_senders",
            format!("all {max_senders} senders are used"),
            Some(format!("ALTER SYSTEM SET max_wal_senders = {}; then restart", max_senders + 1)),
        )
    });

    // The plugin loads: a temporary slot is the only test that cannot lie (needs a free slot and wal_level).
    let decoder = config.capture.decoder;
    let plugin = decoder.plugin();
    if depth == Depth::Full && wal_level == "logical" && slots < max_slots && may_replicate {
        let probe = client
            .query_one(
                "SELECT slot_name::text FROM pg_create_logical_replication_slot('pgm_check_' || pg_backend_pid(), $1, true)",
                &[&plugin],
            )
            .await;
        findings.push(match probe {
            Ok(_) => finding(Level::Ok, plugin, "output plugin loads", None),
            Err(e) => finding(
                Level::Fail,
                plugin,
                format!("cannot be loaded: {}", e.as_db_error().map_or(e.to_string(), |d| d.message().to_owned())),
                Some(match decoder {
                    Decoder::Wal2json => "install the wal2json package of this PostgreSQL version (Debian: \
                                          postgresql-15-wal2json), or set capture.decoder = \"pgoutput\" (built in)"
                        .into(),
                    Decoder::Pgoutput => "pgoutput is built into PostgreSQL 10 and later; see the server log".into(),
                }),
            ),
        });
    }

    let slot_row = client
        .query_opt(
            "SELECT plugin, database, active_pid, wal_status FROM pg_replication_slots WHERE slot_name = $1",
            &[&config.capture.slot],
        )
        .await
        .map_err(sql_err("read pg_replication_slots"))?;
    findings.push(match slot_row {
        None if config.reverse => finding(
            Level::Ok,
            format!("slot {}", config.capture.slot),
            "does not exist yet (cutover creates it, before DB2 takes writes)",
            None,
        ),
        None => {
            finding(Level::Ok, format!("slot {}", config.capture.slot), "does not exist yet (run creates it)", None)
        }
        Some(row) => {
            let plugin: Option<String> = row.get(0);
            let database: Option<String> = row.get(1);
            let wal_status: Option<String> = row.get(3);
            if plugin.as_deref() != Some(decoder.plugin()) || database.as_deref() != Some(config.source.dbname.as_str())
            {
                finding(
                    Level::Fail,
                    format!("slot {}", config.capture.slot),
                    format!("exists with plugin {plugin:?} on database {database:?} (capture.decoder is {})", decoder.plugin()),
                    Some("set capture.decoder to the slot's plugin, or pgm-capture slot drop, or set capture.slot to a new name".into()),
                )
            } else if wal_status.as_deref() == Some("lost") {
                finding(
                    Level::Fail,
                    format!("slot {}", config.capture.slot),
                    "has lost required WAL (max_slot_wal_keep_size)",
                    Some("drop the slot and bootstrap DB2 again".into()),
                )
            } else {
                let active =
                    row.get::<_, Option<i32>>(2).map_or("inactive".to_owned(), |p| format!("active (pid {p})"));
                finding(Level::Ok, format!("slot {}", config.capture.slot), format!("{}, {active}", decoder.plugin()), None)
            }
        }
    });

    for table in config.tables() {
        let row = client
            .query_opt(
                "SELECT c.relreplident::text,
                        EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary),
                        ARRAY(SELECT a.attname::text FROM pg_attribute a
                              WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
                                AND a.atttypid IN ('numeric'::regtype, 'float4'::regtype, 'float8'::regtype)
                              ORDER BY a.attnum)
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
                &[&table.schema, &table.table],
            )
            .await
            .map_err(sql_err("read pg_class"))?;
        let item = format!("table {table}");
        let Some(row) = row else {
            findings.push(finding(
                Level::Fail,
                item,
                "does not exist",
                Some("fix tables.include (schema.table, exactly as in the catalog)".into()),
            ));
            continue;
        };
        let (identity, has_pk, float_columns): (String, bool, Vec<String>) = (row.get(0), row.get(1), row.get(2));
        findings.push(match (identity.as_str(), has_pk) {
            ("d", true) => finding(Level::Ok, item.clone(), "primary key", None),
            ("f", _) => finding(Level::Ok, item.clone(), "REPLICA IDENTITY FULL", None),
            ("i", _) => finding(Level::Ok, item.clone(), "REPLICA IDENTITY USING INDEX", None),
            ("n", _) => finding(
                Level::Fail,
                item.clone(),
                "REPLICA IDENTITY NOTHING: updates and deletes cannot be captured (capture refuses to start)",
                Some(format!("ALTER TABLE {table} REPLICA IDENTITY FULL; (or DEFAULT with a primary key)")),
            ),
            _ => finding(
                Level::Fail,
                item.clone(),
                "no primary key and REPLICA IDENTITY DEFAULT: its updates and deletes cannot be decoded (capture refuses to start)",
                Some(format!("ALTER TABLE {table} ADD PRIMARY KEY (…); or ALTER TABLE {table} REPLICA IDENTITY FULL;")),
            ),
        });
        if depth == Depth::Full && !float_columns.is_empty() && decoder == Decoder::Wal2json {
            findings.push(special_floats(client, &table, &float_columns).await?);
        }
    }
    if decoder == Decoder::Pgoutput {
        findings.push(publication(client, config).await?);
    }
    Ok(findings)
}

/// The broker answers, and every existing topic of the prefix keeps its records for the whole migration and takes
/// the records the pipeline writes ([`topic_settings::audit`]). Topics not made yet get the right settings when
/// capture and transform create them.
async fn kafka_topics(config: &PipelineConfig) -> Vec<Finding> {
    let brokers = &config.kafka.brokers;
    let admin = match kafka::admin(&config.kafka, "pgm-capture-check") {
        Ok(admin) => admin,
        Err(error) => return vec![finding(Level::Fail, "kafka", error.to_string(), Some("fix [kafka]".into()))],
    };
    if let Err(error) =
        tokio::task::block_in_place(|| kafka::reach(&config.kafka, topic_settings::ADMIN_TIMEOUT, &Default::default()))
    {
        return vec![finding(Level::Fail, "kafka", error.to_string(), None)];
    }
    let metadata =
        match tokio::task::block_in_place(|| admin.inner().fetch_metadata(None, topic_settings::ADMIN_TIMEOUT)) {
            Ok(metadata) => metadata,
            Err(error) => return vec![finding(Level::Fail, "kafka", format!("{brokers}: {error}"), None)],
        };
    let mut findings = vec![finding(Level::Ok, "kafka", format!("{brokers} answers"), None)];
    let prefix = format!("{}.", config.topics.prefix);
    let mut names: Vec<String> =
        metadata.topics().iter().map(|t| t.name().to_owned()).filter(|n| n.starts_with(&prefix)).collect();
    names.sort();
    let mut fitting = 0;
    for topic in names {
        match topic_settings::describe_and_audit(&admin, &topic, &config.topics).await {
            Ok(misfits) if misfits.is_empty() => fitting += 1,
            Ok(misfits) => findings.extend(misfits.iter().map(|misfit| {
                finding(
                    Level::Fail,
                    format!("topic {topic}"),
                    format!("{} = {}: {}", misfit.setting, misfit.found, misfit.risk),
                    Some(misfit.fix(brokers)),
                )
            })),
            Err(error) => findings.push(finding(Level::Fail, format!("topic {topic}"), error.to_string(), None)),
        }
    }
    findings.push(finding(
        Level::Ok,
        "topic settings",
        format!("{fitting} existing topic(s) of prefix {prefix}* keep every record (retention, cleanup, record size)"),
        None,
    ));
    findings
}

/// wal2json sends NaN, Infinity and -Infinity of numeric, real and double precision columns as JSON null, which
/// DB2 would store as NULL. Fails when such a value is in the table now (reads the whole table once); warns otherwise,
/// since one may be written later.
async fn special_floats(
    client: &tokio_postgres::Client,
    table: &pgm_common::change::TableRef,
    columns: &[String],
) -> Result<Finding, CaptureError> {
    let tests: Vec<String> = columns
        .iter()
        .map(|c| {
            let c = pgm_common::change::quote_ident(c);
            format!("coalesce(bool_or({c} IN ('NaN', 'Infinity', '-Infinity')), false)")
        })
        .collect();
    let sql = format!("SELECT ARRAY[{}] FROM ONLY {table}", tests.join(", "));
    let found: Vec<bool> = match client.query_one(&sql, &[]).await {
        Ok(row) => row.get(0),
        Err(e) => {
            return Ok(finding(
                Level::Warn,
                format!("table {table}"),
                format!(
                    "columns {columns:?} may hold NaN/Infinity, which wal2json sends as null; cannot look: {}",
                    e.as_db_error().map_or(e.to_string(), |d| d.message().to_owned())
                ),
                Some(format!("GRANT SELECT ON {table} TO the capture user, or set capture.decoder = \"pgoutput\"")),
            ))
        }
    };
    let holding: Vec<&String> = columns.iter().zip(&found).filter(|(_, &f)| f).map(|(c, _)| c).collect();
    let fix = "set capture.decoder = \"pgoutput\" (carries every value exactly), or remove these values from DB1";
    Ok(if holding.is_empty() {
        finding(
            Level::Warn,
            format!("table {table}"),
            format!("columns {columns:?} hold no NaN/Infinity now, but wal2json would send one written later as null"),
            Some(fix.into()),
        )
    } else {
        finding(
            Level::Fail,
            format!("table {table}"),
            format!("columns {holding:?} hold NaN or Infinity: wal2json sends them as null, DB2 would store NULL"),
            Some(fix.into()),
        )
    })
}

/// pgoutput's publication: exists and covers the tables, or will be created by run/bootstrap.
async fn publication(client: &tokio_postgres::Client, config: &PipelineConfig) -> Result<Finding, CaptureError> {
    let name = config.publication();
    let item = format!("publication {}", pgm_common::change::quote_ident(&name));
    let exists = client
        .query_opt("SELECT 1 FROM pg_publication WHERE pubname = $1", &[&name])
        .await
        .map_err(sql_err("read pg_publication"))?
        .is_some();
    if !exists {
        return Ok(finding(Level::Ok, item, "does not exist yet (run, bootstrap and slot create create it)", None));
    }
    Ok(match slot::ensure_publication(client, config).await {
        Ok(()) => finding(Level::Ok, item, "publishes every operation of the configured tables", None),
        Err(CaptureError::Publication(problem) | CaptureError::NoIdentity(problem)) => {
            finding(Level::Fail, item, problem, None)
        }
        Err(other) => return Err(other),
    })
}
