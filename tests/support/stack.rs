//! The whole pipeline on throwaway servers: DB1 and DB2 (two PostgreSQL 15 clusters), the broker, and capture,
//! transform and apply as processes that a test can kill.
//!
//! ```text
//!   DB1 ──▶ pgm-capture ──▶ raw/txn ──▶ pgm-transform ──▶ out ──▶ pgm-apply ──▶ DB2
//! ```
//!
//! The services' binaries are passed in ([`Binaries`]): only test targets know their paths (`CARGO_BIN_EXE_*`).
//! A test knows the stream has drained when a logical message it wrote on DB1 after its workload
//! ([`Stack::marker`]) shows up in DB2's `pgm.apply_messages`, which apply writes in the same transaction as the rows
//! before it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use anyhow::Context;
use tempfile::TempDir;

use crate::names::unique;
use crate::pg::PgCluster;

#[derive(Clone, Copy, Debug)]
pub struct Binaries {
    pub capture: &'static str,
    pub transform: &'static str,
    pub apply: &'static str,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    Capture,
    Transform,
    Apply,
}

pub struct Options<'a> {
    /// DDL run on DB1.
    pub source_schema: &'a str,
    /// DDL run on DB2 (the same as DB1 for identity rules).
    pub target_schema: &'a str,
    /// `schema.table` names capture carries.
    pub tables: &'a [&'a str],
    /// Transform rules (TOML); none means every table passes through unchanged.
    pub rules: Option<&'a str>,
    pub partitions: i32,
    /// Extra lines for the `[apply]` section.
    pub apply: &'a str,
    /// Extra `"key" = "value"` lines for `[kafka.librdkafka]`.
    pub librdkafka: &'a str,
    /// Create capture's slot now (else the caller runs `pgm-capture slot create` when DB1 is ready).
    pub create_slot: bool,
}

/// A running service; killed (SIGKILL) when dropped.
pub struct Running {
    pub child: Child,
    pub log: PathBuf,
}

impl Running {
    pub fn kill9(&mut self) -> crate::Result<()> {
        let _ = self.child.kill();
        self.child.wait()?;
        Ok(())
    }

    /// SIGTERM, then waits for the process to end (a clean stop: a consumer leaves its group at once).
    pub fn terminate(&mut self) -> crate::Result<()> {
        let status = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status()?;
        anyhow::ensure!(status.success(), "kill -TERM {} failed", self.child.id());
        self.child.wait()?;
        Ok(())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The body of the service's `GET /healthz` (`ok`, `waiting: …`, `stopped`), at the metrics address it logged.
    pub fn healthz(&self) -> crate::Result<String> {
        self.get("/healthz")
    }

    /// The sum of every series of a counter or gauge in the service's `GET /metrics` (all labels), 0 when absent.
    pub fn metric_sum(&self, name: &str) -> crate::Result<f64> {
        let body = self.get("/metrics")?;
        Ok(body
            .lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum())
    }

    pub fn get(&self, path: &str) -> crate::Result<String> {
        use std::io::{Read, Write};
        let log = strip_ansi(&self.log());
        let addr = log
            .split("metrics=")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .context("the service has not logged its metrics address yet")?
            .to_owned();
        let mut stream = std::net::TcpStream::connect(&addr)?;
        stream.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
        stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        Ok(response.split("\r\n\r\n").nth(1).unwrap_or_default().trim().to_owned())
    }
}

/// Text without terminal colour codes (the services colour their logs).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Stack {
    pub db1: PgCluster,
    pub db2: PgCluster,
    pub db1_name: String,
    pub db2_name: String,
    pub prefix: String,
    pub brokers: String,
    pub config: PathBuf,
    pub dir: TempDir,
    bins: Binaries,
    launches: std::sync::atomic::AtomicUsize,
}

impl Stack {
    /// Two clusters with their schemas, a pipeline configuration, and capture's slot (created, not yet read).
    pub async fn new(bins: Binaries, brokers: String, options: Options<'_>) -> crate::Result<Self> {
        let db1 = PgCluster::start()?;
        let db2 = PgCluster::start()?;
        let db1_name = db1.create_database("db1").await?;
        let db2_name = db2.create_database("db2").await?;
        db1.connect(&db1_name).await?.batch_execute(options.source_schema).await?;
        db2.connect(&db2_name).await?.batch_execute(options.target_schema).await?;
        Self::assemble(bins, brokers, options, db1, db2, db1_name, db2_name)
    }

    /// DB2 is a streaming physical standby of DB1 (for the standby switch): `target_schema` is not used, DB2 has
    /// DB1's database under the same name.
    pub async fn with_standby(bins: Binaries, brokers: String, options: Options<'_>) -> crate::Result<Self> {
        let db1 = PgCluster::start()?;
        let db1_name = db1.create_database("db1").await?;
        db1.connect(&db1_name).await?.batch_execute(options.source_schema).await?;
        let db2 = PgCluster::standby_of(&db1)?;
        let db2_name = db1_name.clone();
        Self::assemble(bins, brokers, options, db1, db2, db1_name, db2_name)
    }

    fn assemble(
        bins: Binaries,
        brokers: String,
        options: Options<'_>,
        db1: PgCluster,
        db2: PgCluster,
        db1_name: String,
        db2_name: String,
    ) -> crate::Result<Self> {
        let dir = tempfile::Builder::new().prefix("pgm-stack-").tempdir()?;
        let prefix = unique("p");
        let rules = match options.rules {
            Some(text) => {
                let path = dir.path().join("rules.toml");
                std::fs::write(&path, text)?;
                format!("rules = {:?}\n", path.display().to_string())
            }
            None => String::new(),
        };
        let config = dir.path().join("pipeline.toml");
        std::fs::write(
            &config,
            format!(
                r#"[source]
host = "127.0.0.1"
port = {port1}
user = "postgres"
dbname = "{db1_name}"
[target]
host = "127.0.0.1"
port = {port2}
user = "postgres"
dbname = "{db2_name}"
[kafka]
brokers = "{brokers}"
[kafka.librdkafka]
"message.timeout.ms" = "600000"
"session.timeout.ms" = "6000"
"heartbeat.interval.ms" = "500"
{librdkafka}
[topics]
prefix = "{prefix}"
partitions = {partitions}
[tables]
include = {tables:?}
[capture]
slot = "{slot}"
heartbeat_interval_ms = 200
message_prefixes = ["pgm", "pgm-test"]
metrics_addr = "127.0.0.1:0"
[transform]
{rules}group_id = "{group}"
metrics_addr = "127.0.0.1:0"
[apply]
group_id = "{group}-apply"
metrics_addr = "127.0.0.1:0"
{apply}
[bootstrap]
[fallback]
"#,
                port1 = db1.port(),
                port2 = db2.port(),
                partitions = options.partitions,
                tables = options.tables,
                slot = unique("slot"),
                group = unique("g"),
                apply = options.apply,
                librdkafka = options.librdkafka,
            ),
        )?;
        let stack =
            Stack { db1, db2, db1_name, db2_name, prefix, brokers, config, dir, bins, launches: Default::default() };
        if options.create_slot {
            stack.create_slot()?;
        }
        Ok(stack)
    }

    /// Adds `lines` to a section of the pipeline configuration (`configure("capture", "decoder = \"pgoutput\"")`),
    /// for services started after this call.
    pub fn configure(&self, section: &str, lines: &str) -> crate::Result<()> {
        let text = std::fs::read_to_string(&self.config)?;
        let header = format!("[{section}]\n");
        let at = text.find(&header).with_context(|| format!("no [{section}] in the pipeline configuration"))?;
        let mut out = text;
        out.insert_str(at + header.len(), &format!("{lines}\n"));
        std::fs::write(&self.config, out)?;
        Ok(())
    }

    pub fn create_slot(&self) -> crate::Result<()> {
        let out = self.command(Service::Capture, &["slot", "create"]).output()?;
        anyhow::ensure!(out.status.success(), "slot create: {}", String::from_utf8_lossy(&out.stderr));
        Ok(())
    }

    fn binary(&self, service: Service) -> &'static str {
        match service {
            Service::Capture => self.bins.capture,
            Service::Transform => self.bins.transform,
            Service::Apply => self.bins.apply,
        }
    }

    pub fn command(&self, service: Service, args: &[&str]) -> Command {
        let mut command = Command::new(self.binary(service));
        let log = std::env::var("PGM_TEST_LOG").unwrap_or_else(|_| "info".into());
        command.arg("--config").arg(&self.config).args(args).env("RUST_LOG", log);
        command
    }

    /// Starts a service in the background, its log in the stack's directory.
    pub fn spawn(&self, service: Service, args: &[&str]) -> crate::Result<Running> {
        self.spawn_with_env(service, args, &[])
    }

    /// [`Self::spawn`] with environment overrides (`PGM__KAFKA__BROKERS`, …).
    pub fn spawn_with_env(&self, service: Service, args: &[&str], env: &[(&str, &str)]) -> crate::Result<Running> {
        let n = self.launches.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log = self.dir.path().join(format!("{service:?}-{n}.log").to_lowercase());
        let child = self
            .command(service, args)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .with_context(|| format!("start {}", self.binary(service)))?;
        Ok(Running { child, log })
    }

    /// Runs a service command to its end (apply pause/resume/status/reset, apply run --until).
    pub fn run(&self, service: Service, args: &[&str]) -> crate::Result<Output> {
        Ok(self.command(service, args).output()?)
    }

    /// All logs of the stack's services, for failure messages.
    pub fn logs(&self) -> String {
        let mut names: Vec<PathBuf> = std::fs::read_dir(self.dir.path())
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .collect();
        names.sort();
        let mut out = String::new();
        for path in names {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            out.push_str(&format!("--- {} (last {} lines)\n", path.display(), tail.len()));
            for line in tail.into_iter().rev() {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }

    pub async fn source(&self) -> crate::Result<tokio_postgres::Client> {
        self.db1.connect(&self.db1_name).await
    }

    pub async fn target(&self) -> crate::Result<tokio_postgres::Client> {
        self.db2.connect(&self.db2_name).await
    }

    /// Writes a transactional logical message on DB1 (after everything committed so far).
    pub async fn marker(&self, label: &str) -> crate::Result<()> {
        self.source().await?.execute("SELECT pg_logical_emit_message(true, 'pgm-test', $1::text)", &[&label]).await?;
        Ok(())
    }

    /// Waits until apply has committed the marker (and so everything before it) to DB2.
    pub async fn wait_marker(&self, label: &str, timeout: Duration) -> crate::Result<()> {
        let client = self.target().await?;
        crate::wait::until(&format!("marker {label:?} applied to DB2"), timeout, || async {
            let row = client
                .query_opt(
                    "SELECT 1 FROM pgm.apply_messages WHERE pipeline = $1 AND prefix = 'pgm-test' AND content = $2",
                    &[&self.prefix, &label],
                )
                .await?;
            Ok(row.map(|_| ()))
        })
        .await
        .with_context(|| format!("service logs:\n{}", self.logs()))
    }

    /// Every row of a table as text, sorted: equal lists mean equal tables, duplicates included.
    pub async fn rows(client: &tokio_postgres::Client, table: &str) -> crate::Result<Vec<String>> {
        let sql = format!("SELECT t::text FROM {table} AS t ORDER BY 1");
        Ok(client.query(&sql, &[]).await?.into_iter().map(|r| r.get(0)).collect())
    }

    /// Compares every row of each table on DB1 and DB2 and says where they differ (counts and first difference,
    /// truncated: rows may be large).
    pub async fn assert_same(&self, tables: &[&str]) -> crate::Result<()> {
        let (source, target) = (self.source().await?, self.target().await?);
        for table in tables {
            let (a, b) = (Self::rows(&source, table).await?, Self::rows(&target, table).await?);
            if a != b {
                let first = a.iter().zip(&b).position(|(x, y)| x != y).unwrap_or(a.len().min(b.len()));
                let cut = |rows: &[String]| rows.get(first).map(|r| r.chars().take(200).collect::<String>());
                anyhow::bail!(
                    "{table}: DB1 has {} rows, DB2 {}; first difference at sorted row {first}: DB1 {:?}, DB2 {:?}",
                    a.len(),
                    b.len(),
                    cut(&a),
                    cut(&b)
                );
            }
        }
        Ok(())
    }

    pub fn config_path(&self) -> &Path {
        &self.config
    }
}
