//! `pgm-capture check`: is DB1 ready for capture? Each finding carries the SQL or setting that fixes it.

use pgm_common::config::PipelineConfig;
pub use pgm_common::findings::{Finding, Level};

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
    if wal_level == "logical" && slots < max_slots && may_replicate {
        let probe = client
            .query_one(
                "SELECT slot_name::text FROM pg_create_logical_replication_slot('pgm_check_' || pg_backend_pid(), 'wal2json', true)",
                &[],
            )
            .await;
        findings.push(match probe {
            Ok(_) => finding(Level::Ok, "wal2json", "output plugin loads", None),
            Err(e) => finding(
                Level::Fail,
                "wal2json",
                format!("cannot be loaded: {}", e.as_db_error().map_or(e.to_string(), |d| d.message().to_owned())),
                Some("install the wal2json package of this PostgreSQL version (Debian: postgresql-15-wal2json)".into()),
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
        None => {
            finding(Level::Ok, format!("slot {}", config.capture.slot), "does not exist yet (run creates it)", None)
        }
        Some(row) => {
            let plugin: Option<String> = row.get(0);
            let database: Option<String> = row.get(1);
            let wal_status: Option<String> = row.get(3);
            if plugin.as_deref() != Some("wal2json") || database.as_deref() != Some(config.source.dbname.as_str()) {
                finding(
                    Level::Fail,
                    format!("slot {}", config.capture.slot),
                    format!("exists with plugin {plugin:?} on database {database:?}"),
                    Some("pgm-capture slot drop, or set capture.slot to a new name".into()),
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
                finding(Level::Ok, format!("slot {}", config.capture.slot), format!("wal2json, {active}"), None)
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
                "REPLICA IDENTITY NOTHING: updates and deletes cannot be captured",
                Some(format!("ALTER TABLE {table} REPLICA IDENTITY FULL; (or DEFAULT with a primary key)")),
            ),
            _ => finding(
                Level::Fail,
                item.clone(),
                "no primary key: wal2json silently skips its updates and deletes",
                Some(format!("ALTER TABLE {table} ADD PRIMARY KEY (…); or ALTER TABLE {table} REPLICA IDENTITY FULL;")),
            ),
        });
        if !float_columns.is_empty() {
            findings.push(finding(
                Level::Warn,
                item,
                format!("columns {float_columns:?}: wal2json sends NaN/Infinity as null"),
                Some("make sure these columns hold no NaN or Infinity, or accept NULL for them on DB2".into()),
            ));
        }
    }
    Ok(findings)
}
