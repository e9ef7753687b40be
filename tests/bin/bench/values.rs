//! Values side by side: every built-in type (the fidelity tests' columns and values, `every_type`) replicated by
//! pg-migrator (with each decoder) and by Debezium, compared per column as text (`v::text` on DB1 and DB2).
//!
//! Each column has a table of its own, `public.v_<column> (k int PRIMARY KEY, v <type>, n int)`, with two rows
//! streamed: k = 1 an ordinary value, k = 2 the type's special value (NaN, ±Infinity) or NULL; then an update of
//! `n` alone on both rows (an update that leaves `v` as it was: for a large text, an unchanged TOAST value). For
//! Debezium every table has its own sink connector (its 3.6 JDBC sink stops its task at the first row it cannot
//! write, and has no dead-letter queue for write errors), and the source skips an event it cannot convert instead of
//! stopping (`values.*` in compose/debezium/connect.properties): each column's result stands on its own.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use pgm_test_support::broker::{shared_brokers, Broker};
use pgm_test_support::every_type::{self, Column, COLUMNS};
use pgm_test_support::stack::{Options, Service, Stack};

use crate::debezium;

/// Who replicates the values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tool {
    Pgm(&'static str),
    /// `exact`: with the value-keeping modes of Debezium's docs (`exact.*` in connect.properties).
    Debezium {
        exact: bool,
    },
}

impl Tool {
    pub fn name(self) -> String {
        match self {
            Tool::Pgm(decoder) => format!("pg-migrator ({decoder})"),
            Tool::Debezium { exact: false } => "debezium (defaults)".into(),
            Tool::Debezium { exact: true } => "debezium (value modes)".into(),
        }
    }
}

fn table(column: &Column) -> String {
    format!("public.v_{}", column.plain_name())
}

fn ddl() -> String {
    let mut ddl = every_type::custom_types("public");
    for column in COLUMNS {
        ddl += &format!(
            "CREATE TABLE {} (k int PRIMARY KEY, v {}, n int NOT NULL);\n",
            table(column),
            column.ty("public")
        );
        if column.name == "doc" {
            // Out of line and uncompressed, so an update of n alone leaves an unchanged TOAST value.
            ddl += &format!("ALTER TABLE {} ALTER COLUMN v SET STORAGE EXTERNAL;\n", table(column));
        }
    }
    ddl
}

/// Per column (its plain name): "exact", or what differs.
pub async fn run(
    tool: Tool,
    bins: pgm_test_support::stack::Binaries,
    logs: &Path,
) -> anyhow::Result<BTreeMap<String, String>> {
    let ddl: &'static str = Box::leak(ddl().into_boxed_str());
    let tables: Vec<String> = COLUMNS.iter().map(table).collect();
    let table_refs: &'static [&'static str] = Box::leak(
        tables
            .iter()
            .map(|t| &*Box::leak(t.clone().into_boxed_str()))
            .collect::<Vec<&'static str>>()
            .into_boxed_slice(),
    );
    let options = Options {
        source_schema: ddl,
        target_schema: ddl,
        tables: table_refs,
        rules: None,
        partitions: 1,
        apply: "",
        librdkafka: "",
        create_slot: false,
    };
    // Debezium's topic and group names are fixed (dbz.…, connect-sink-…): each Debezium run gets a broker of its
    // own, or the second would join the first one's groups and wait out its dead members.
    let broker = match tool {
        Tool::Debezium { .. } => Some(Broker::start()?),
        Tool::Pgm(_) => None,
    };
    let brokers = broker.as_ref().map_or_else(shared_brokers, |b| Ok(b.brokers()))?;
    let mut stack = Stack::new(bins, brokers, options).await?;
    let db1 = stack.source().await?;
    let mut connect = None;
    let mut services = Vec::new();
    match tool {
        Tool::Pgm(decoder) => {
            stack.configure("capture", &format!("decoder = \"{decoder}\""))?;
            stack.create_slot()?;
            for service in [Service::Capture, Service::Transform, Service::Apply] {
                services.push(stack.spawn(service, &["run"])?);
            }
        }
        Tool::Debezium { exact } => {
            // One DB2 connection per sink, and there are 65 sinks: more than the test clusters' 50 connections.
            stack.target().await?.batch_execute("ALTER SYSTEM SET max_connections = 150").await?;
            stack.db2.restart()?;
            db1.batch_execute(&format!("CREATE PUBLICATION dbz_pub FOR TABLE {}", tables.join(", "))).await?;
            let setup = debezium::Setup {
                brokers: &stack.brokers,
                db1: (stack.db1.port(), &stack.db1_name),
                db2: (stack.db2.port(), &stack.db2_name),
                keyed: &tables,
                keyless: &[],
                values: true,
                exact,
                keep_log: logs.join(format!("debezium-values{}.log", if exact { "-exact" } else { "" })),
            };
            let mut worker = debezium::Connect::start(&setup, &stack.dir.path().join("connect"))?;
            for table in &tables {
                worker.start_sink_for(table)?;
            }
            worker.start_source(&db1).await?;
            connect = Some(worker);
        }
    }
    for column in COLUMNS {
        let t = table(column);
        let special = column.special.unwrap_or("NULL");
        db1.batch_execute(&format!("INSERT INTO {t} VALUES (1, {}, 0), (2, {special}, 0)", column.value)).await?;
    }
    for column in COLUMNS {
        db1.batch_execute(&format!("UPDATE {} SET n = 1", table(column))).await?;
    }
    let db2 = stack.target().await?;
    match &connect {
        None => {
            stack.marker("values").await?;
            stack.wait_marker("values", Duration::from_secs(120)).await?;
        }
        // Each table is its own topic and sink: wait until every table has both rows updated, or until nothing
        // has moved for 10 s (a failed sink or a skipped event never arrives; the rest arrive within a second or
        // two of each other).
        Some(_) => {
            let mut last = (0, Instant::now());
            loop {
                let mut done = 0;
                for t in &tables {
                    let row = db2.query_one(&format!("SELECT count(*) FILTER (WHERE n = 1) FROM {t}"), &[]).await?;
                    done += row.get::<_, i64>(0);
                }
                if done == 2 * tables.len() as i64 {
                    break;
                }
                if done != last.0 {
                    last = (done, Instant::now());
                } else if last.1.elapsed() > Duration::from_secs(10) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    // Failed connectors by table (`v_…`), and the source's failure under "source".
    let failed: BTreeMap<String, String> = match &connect {
        Some(connect) => connect
            .failures()?
            .into_iter()
            .filter_map(|f| {
                let name = match f.strip_prefix("sink-") {
                    Some(rest) => rest.split_whitespace().next()?.to_owned(),
                    None => f.split_whitespace().next()?.to_owned(),
                };
                Some((name, f))
            })
            .collect(),
        None => BTreeMap::new(),
    };
    let mut out = BTreeMap::new();
    for column in COLUMNS {
        let t = table(column);
        let sql = format!("SELECT k, v::text, n FROM {t} ORDER BY k");
        let rows = |r: Vec<tokio_postgres::Row>| -> Vec<(i32, Option<String>, i32)> {
            r.into_iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect()
        };
        let (a, b) = (rows(db1.query(&sql, &[]).await?), rows(db2.query(&sql, &[]).await?));
        let mut problems = Vec::new();
        for (k, v, _) in &a {
            let what = if *k == 1 {
                "ordinary value"
            } else if column.special.is_some() {
                "special value"
            } else {
                "NULL"
            };
            match b.iter().find(|(k2, _, _)| k2 == k) {
                None => problems.push(format!("{what} missing")),
                Some((_, v2, n2)) if v2 != v => {
                    let shown = v2.as_deref().map_or("NULL".to_owned(), |v| {
                        let cut: String = v.chars().take(32).collect();
                        if cut.len() < v.len() {
                            format!("'{cut}…'")
                        } else {
                            format!("'{cut}'")
                        }
                    });
                    let after = if *n2 == 1 { " (after the update)" } else { "" };
                    problems.push(format!("{what} changed to {shown}{after}"))
                }
                Some((_, _, n2)) if *n2 != 1 => problems.push(format!("{what}: update missing")),
                Some(_) => {}
            }
        }
        let plain = column.plain_name();
        let mut verdict = if problems.is_empty() { "exact".to_owned() } else { problems.join("; ") };
        if let Some(failure) =
            failed.get(&format!("v_{plain}")).or(failed.get("source")).filter(|_| !problems.is_empty())
        {
            let cause: String = failure.chars().take(160).collect();
            verdict = format!("{verdict} [{cause}]");
        }
        out.insert(plain, verdict);
    }
    drop(services);
    drop(connect);
    drop(broker);
    Ok(out)
}

/// Prints the per-column table; returns it as JSON.
pub fn report(results: &[(Tool, BTreeMap<String, String>)]) -> serde_json::Value {
    println!();
    println!("values side by side: one table per column; rows: an ordinary value, the special value (NaN/±Infinity) or NULL, then an update of another column");
    let width = 34;
    print!("{:<8} {:<24}", "column", "type");
    for (tool, _) in results {
        print!(" {:<width$}", tool.name());
    }
    println!();
    let mut json = Vec::new();
    for column in COLUMNS {
        let plain = column.plain_name();
        print!("{:<8} {:<24}", plain, column.ty("public"));
        let mut entry = serde_json::Map::new();
        entry.insert("column".into(), plain.clone().into());
        entry.insert("type".into(), column.ty("public").into());
        for (tool, by_column) in results {
            let verdict = by_column.get(&plain).cloned().unwrap_or_default();
            print!(" {:<width$}", verdict);
            entry.insert(tool.name(), verdict.into());
        }
        println!();
        json.push(serde_json::Value::Object(entry));
    }
    for (tool, by_column) in results {
        let exact = by_column.values().filter(|v| *v == "exact").count();
        println!("{}: {exact} of {} columns exact", tool.name(), COLUMNS.len());
    }
    serde_json::Value::Array(json)
}
