//! Debezium as the benchmark runs it: one Kafka Connect worker (standalone) with Debezium's PostgreSQL source
//! connector (DB1 → Kafka) and its JDBC sink (Kafka → DB2), configured from `compose/debezium/connect.properties`
//! (every setting, with its reason). The jars come from `compose/debezium/install` (compose/bench runs it and
//! passes the folder in `PGM_DEBEZIUM_HOME`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The folder `compose/debezium/install` filled (`worker/`, `plugins/`), when the run has one.
pub fn home() -> Option<PathBuf> {
    let home = PathBuf::from(std::env::var_os("PGM_DEBEZIUM_HOME")?);
    home.join("complete").exists().then_some(home)
}

/// Debezium's version as fetched (`DEBEZIUM_VERSION` and `CONNECT_VERSION` in compose/lib.sh).
pub fn version() -> String {
    let lib = std::fs::read_to_string(repo().join("compose/lib.sh")).unwrap_or_default();
    let get = |key: &str| lib.lines().find_map(|l| l.strip_prefix(key).map(str::to_owned)).unwrap_or_default();
    format!("Debezium {} on Kafka Connect {}", get("DEBEZIUM_VERSION="), get("CONNECT_VERSION="))
}

/// What one run replicates, and where.
pub struct Setup<'a> {
    pub brokers: &'a str,
    pub db1: (u16, &'a str),
    pub db2: (u16, &'a str),
    /// `schema.table` of the tables with a primary key (upserted and deleted by key).
    pub keyed: &'a [String],
    /// `schema.table` of the tables without one (inserted only).
    pub keyless: &'a [String],
    /// The value comparison's extra settings (`values.*`) apply.
    pub values: bool,
    /// The value-keeping modes (`exact.*`) apply too.
    pub exact: bool,
    /// Where the worker's log is copied when the worker ends (its folder is the run's, removed with it).
    pub keep_log: PathBuf,
}

/// The topic Debezium writes a table's changes to (`topic.prefix` = dbz).
pub fn topic(table: &str) -> String {
    format!("dbz.{table}")
}

/// The settings file, placeholders filled, split by part: `worker`, `source`, `sink`, `sink-keyless`.
fn settings(
    setup: &Setup,
    dir: &Path,
    home: &Path,
    rest_port: u16,
) -> anyhow::Result<BTreeMap<String, Vec<(String, String)>>> {
    let path = repo().join("compose/debezium/connect.properties");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let tables: Vec<&String> = setup.keyed.iter().chain(setup.keyless).collect();
    let list = |tables: &[&String]| tables.iter().map(|t| topic(t)).collect::<Vec<_>>().join(",");
    let fill = [
        ("@BROKERS@", setup.brokers.to_owned()),
        ("@DIR@", dir.display().to_string()),
        ("@PLUGINS@", home.join("plugins").display().to_string()),
        ("@REST_PORT@", rest_port.to_string()),
        ("@DB1_PORT@", setup.db1.0.to_string()),
        ("@DB1_NAME@", setup.db1.1.to_owned()),
        ("@DB2_PORT@", setup.db2.0.to_string()),
        ("@DB2_NAME@", setup.db2.1.to_owned()),
        // table.include.list is a list of regular expressions: the dots are escaped.
        ("@TABLES@", tables.iter().map(|t| t.replace('.', "\\.")).collect::<Vec<_>>().join(",")),
        ("@TOPICS@", list(&setup.keyed.iter().collect::<Vec<_>>())),
        ("@KEYLESS_TOPICS@", list(&setup.keyless.iter().collect::<Vec<_>>())),
    ];
    let mut parts: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let (key, value) =
            line.split_once('=').with_context(|| format!("{}: not key=value: {line}", path.display()))?;
        let (part, key) = match (key.strip_prefix("values."), key.strip_prefix("exact.")) {
            (Some(rest), _) if setup.values => rest.split_once('.'),
            (_, Some(rest)) if setup.exact => rest.split_once('.'),
            (Some(_), _) | (_, Some(_)) => continue,
            _ => key.split_once('.'),
        }
        .with_context(|| format!("{}: no part in {key}", path.display()))?;
        let value = fill.iter().fold(value.to_owned(), |v, (from, to)| v.replace(from, to));
        parts.entry(part.to_owned()).or_default().push((key.to_owned(), value));
    }
    Ok(parts)
}

/// A running Connect worker; killed when dropped.
pub struct Connect {
    child: Child,
    dir: PathBuf,
    rest_port: u16,
    parts: BTreeMap<String, Vec<(String, String)>>,
    source_created: bool,
    keep_log: PathBuf,
}

impl Connect {
    /// Starts the worker (no connectors yet) and waits for its REST API.
    pub fn start(setup: &Setup, dir: &Path) -> anyhow::Result<Connect> {
        let home = home().context("Debezium is not installed: run compose/bench (it runs compose/debezium/install)")?;
        std::fs::create_dir_all(dir)?;
        let rest_port = pgm_test_support::free_port()?;
        let parts = settings(setup, dir, &home, rest_port)?;
        let worker: String = parts.get("worker").into_iter().flatten().map(|(k, v)| format!("{k}={v}\n")).collect();
        std::fs::write(dir.join("worker.properties"), worker)?;
        let child = Command::new("java")
            .args(["-Xms256m", "-Xmx1g", "-XX:+UseG1GC", "-Djava.awt.headless=true"])
            .arg(format!("-Dlog4j2.configurationFile={}", repo().join("compose/debezium/log4j2.properties").display()))
            .arg(format!("-Dpgm.connect.log={}", dir.join("connect.log").display()))
            .arg("-cp")
            .arg(format!("{}/*", home.join("worker").display()))
            .arg("org.apache.kafka.connect.cli.ConnectStandalone")
            .arg(dir.join("worker.properties"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("connect.stderr"))?)
            .spawn()
            .context("starting the Kafka Connect worker (java)")?;
        let mut connect = Connect {
            child,
            dir: dir.to_owned(),
            rest_port,
            parts,
            source_created: false,
            keep_log: setup.keep_log.clone(),
        };
        let deadline = Instant::now() + Duration::from_secs(90);
        while connect.rest("GET", "/connectors", None).is_err() {
            if let Some(status) = connect.child.try_wait()? {
                bail!("the Connect worker exited ({status}):\n{}", connect.log_tail());
            }
            ensure!(
                Instant::now() < deadline,
                "the Connect worker's REST API did not answer in 90 s:\n{}",
                connect.log_tail()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(connect)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last lines of the worker's log.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("connect.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let stderr = std::fs::read_to_string(self.dir.join("connect.stderr")).unwrap_or_default();
        format!("{}\n{stderr}", lines[lines.len().saturating_sub(40)..].join("\n"))
    }

    /// One REST call (curl); the response body.
    fn rest(&self, method: &str, path: &str, body: Option<&serde_json::Value>) -> anyhow::Result<String> {
        let mut curl = Command::new("curl");
        curl.args(["-sS", "-f", "--max-time", "30", "-X", method, "-H", "Content-Type: application/json"]);
        if let Some(body) = body {
            curl.args(["--data", &body.to_string()]);
        }
        let out = curl.arg(format!("http://127.0.0.1:{}{path}", self.rest_port)).output()?;
        ensure!(
            out.status.success(),
            "{method} {path}: {}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn create(&self, part: &str) -> anyhow::Result<()> {
        self.create_as(part, part, &[])
    }

    /// Creates connector `name` from the settings of `part`, some of them replaced.
    fn create_as(&self, part: &str, name: &str, overrides: &[(&str, String)]) -> anyhow::Result<()> {
        let mut config: serde_json::Map<String, serde_json::Value> =
            self.parts.get(part).into_iter().flatten().map(|(k, v)| (k.clone(), v.clone().into())).collect();
        for (key, value) in overrides {
            config.insert((*key).to_owned(), value.clone().into());
        }
        self.rest("POST", "/connectors", Some(&serde_json::json!({"name": name, "config": config})))?;
        Ok(())
    }

    /// A sink of its own for one table (`sink-<table>`, without the schema), so that its failure stops no other.
    pub fn start_sink_for(&self, table: &str) -> anyhow::Result<()> {
        let name = format!("sink-{}", table.rsplit('.').next().unwrap_or(table));
        self.create_as("sink", &name, &[("topics", topic(table))])
    }

    /// The sinks (consumers; idle until the source writes).
    pub fn start_sinks(&self, keyless: bool) -> anyhow::Result<()> {
        self.create("sink")?;
        if keyless {
            self.create("sink-keyless")?;
        }
        Ok(())
    }

    /// The source: created the first time (it makes its slot then: changes written before are not in it),
    /// resumed after [`Connect::stop_source`]. Returns when its slot on DB1 (`db1`) is in use.
    pub async fn start_source(&mut self, db1: &tokio_postgres::Client) -> anyhow::Result<()> {
        if self.source_created {
            self.rest("PUT", "/connectors/source/resume", None)?;
        } else {
            self.create("source")?;
            self.source_created = true;
        }
        self.wait_slot(db1, true).await
    }

    /// Stops the source's task (Connect's STOPPED state: the task ends, its configuration and offsets stay).
    /// Returns when its replication connection has let go of the slot.
    pub async fn stop_source(&self, db1: &tokio_postgres::Client) -> anyhow::Result<()> {
        self.rest("PUT", "/connectors/source/stop", None)?;
        self.wait_slot(db1, false).await
    }

    /// Waits until the source's slot (`slot.name` = dbz) is in use, or no longer.
    async fn wait_slot(&self, db1: &tokio_postgres::Client, active: bool) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let row =
                db1.query_opt("SELECT 1 FROM pg_replication_slots WHERE slot_name = 'dbz' AND active", &[]).await?;
            if row.is_some() == active {
                return Ok(());
            }
            let what = if active { "take up" } else { "let go of" };
            ensure!(
                Instant::now() < deadline,
                "Debezium's source did not {what} its slot in 60 s:\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Connectors or tasks that failed, each with the first lines of its error.
    pub fn failures(&self) -> anyhow::Result<Vec<String>> {
        let body: serde_json::Value = serde_json::from_str(&self.rest("GET", "/connectors?expand=status", None)?)?;
        let mut failed = Vec::new();
        for (name, info) in body.as_object().into_iter().flatten() {
            let status = &info["status"];
            let mut units = vec![(String::from("connector"), &status["connector"])];
            for task in status["tasks"].as_array().into_iter().flatten() {
                units.push((format!("task {}", task["id"]), task));
            }
            for (unit, state) in units {
                if state["state"] == "FAILED" {
                    let trace = state["trace"].as_str().unwrap_or_default();
                    // The innermost cause says what went wrong; the outer lines say only that the task stopped.
                    let cause = trace
                        .lines()
                        .rfind(|l| l.starts_with("Caused by: ") || !l.starts_with(char::is_whitespace))
                        .unwrap_or_default()
                        .trim_start_matches("Caused by: ");
                    failed.push(format!("{name} {unit} FAILED: {cause}"));
                }
            }
        }
        Ok(failed)
    }
}

impl Drop for Connect {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(parent) = self.keep_log.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        let _ = std::fs::copy(self.dir.join("connect.log"), &self.keep_log);
    }
}
