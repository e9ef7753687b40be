//! The broker for tests: Apache Kafka, one KRaft node (broker and controller in one process), started by
//! `compose/kafka/broker` exactly as the local stack starts it.
//!
//! [`shared_brokers`] gives every test in a process the same broker: `PGM_TEST_BROKERS` when set, else a Kafka node
//! started on first use and killed when the test process exits. Tests keep apart by unique topic and group names. A
//! test that kills or restarts the broker starts its own [`Broker`], whose data lives in a temp dir and survives
//! [`Broker::kill`] + [`Broker::restart`] (formatted once, like the local stack's).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::Context;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;
use tempfile::TempDir;

/// `compose/kafka/broker`, the one way this project starts a Kafka node.
pub fn broker_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../compose/kafka/broker")
}

/// The Kafka version `compose/install` fetches (`KAFKA_VERSION` in compose/lib.sh).
pub fn kafka_version() -> String {
    let lib = Path::new(env!("CARGO_MANIFEST_DIR")).join("../compose/lib.sh");
    std::fs::read_to_string(lib)
        .ok()
        .and_then(|text| text.lines().find_map(|l| l.strip_prefix("KAFKA_VERSION=").map(str::to_owned)))
        .unwrap_or_else(|| "(unknown version)".to_owned())
}

/// What a test broker is started with beyond the defaults of `compose/kafka/server.properties`.
#[derive(Clone, Debug, Default)]
pub struct BrokerSetup {
    /// Properties appended to the node's config (later keys win), e.g. a SASL_SSL listener; `{port}` and
    /// `{controller_port}` are replaced by the node's ports.
    pub extra_properties: String,
    /// Arguments for the one-time storage format (e.g. `--add-scram`, to create a SCRAM user before the start).
    pub format_args: Vec<String>,
    /// librdkafka settings a client needs to reach the broker (security), for the readiness check.
    pub client: Vec<(String, String)>,
    /// The listener clients use: `{port}` is replaced by the broker's port. Default `127.0.0.1:{port}`.
    pub advertised: Option<String>,
}

fn broker_command(dir: &Path, port: u16, controller_port: u16, setup: &BrokerSetup) -> crate::Result<Command> {
    let extra = dir.join("extra.properties");
    let properties = setup
        .extra_properties
        .replace("{port}", &port.to_string())
        .replace("{controller_port}", &controller_port.to_string());
    std::fs::write(&extra, properties)?;
    let mut command = Command::new(broker_script());
    command
        .arg(dir)
        .arg(port.to_string())
        .arg(controller_port.to_string())
        .arg(&extra)
        .args(&setup.format_args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("start.log"))?);
    Ok(command)
}

/// Waits until the broker answers a metadata request with itself as a broker (a KRaft node accepts connections
/// before it serves), or fails with its log when it exits first.
fn wait_ready(port: u16, child: &mut Child, dir: &Path, setup: &BrokerSetup) -> crate::Result<()> {
    let mut client = ClientConfig::new();
    client.set("bootstrap.servers", format!("127.0.0.1:{port}")).set("log_level", "0");
    for (key, value) in &setup.client {
        client.set(key, value);
    }
    let probe: BaseConsumer = client.create()?;
    crate::wait::until_blocking(&format!("Kafka to serve on 127.0.0.1:{port}"), Duration::from_secs(90), || {
        if let Some(status) = child.try_wait()? {
            let log = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap_or_default();
            anyhow::bail!("Kafka exited ({status}) before serving:\n{}\n{}", log("start.log"), log("broker.log"));
        }
        Ok(probe.fetch_metadata(None, Duration::from_secs(1)).ok().filter(|m| !m.brokers().is_empty()).map(|_| ()))
    })
}

/// `bootstrap.servers` of the broker all tests of this process share.
pub fn shared_brokers() -> crate::Result<String> {
    static SHARED: OnceLock<Result<String, String>> = OnceLock::new();
    SHARED
        .get_or_init(|| {
            if let Ok(brokers) = std::env::var("PGM_TEST_BROKERS") {
                return Ok(brokers);
            }
            start_process_broker().map_err(|e| format!("{e:#}"))
        })
        .clone()
        .map_err(anyhow::Error::msg)
}

/// Starts Kafka from a thread that lives as long as the process, with the parent-death signal set: the kernel
/// kills the broker when that thread (so the test process) ends, however it ends.
fn start_process_broker() -> crate::Result<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new().name("pgm-test-broker".into()).spawn(move || {
        let started = (|| -> crate::Result<(Child, u16, TempDir)> {
            remove_dead_shared_dirs();
            let dir = tempfile::Builder::new().prefix(&shared_dir_prefix(std::process::id())).tempdir()?;
            let (port, controller_port) = (crate::free_port()?, crate::free_port()?);
            let setup = BrokerSetup::default();
            let mut command = broker_command(dir.path(), port, controller_port, &setup)?;
            set_parent_death_signal(&mut command);
            let mut child = command.spawn().context("start Kafka (compose/kafka/broker)")?;
            wait_ready(port, &mut child, dir.path(), &setup)?;
            Ok((child, port, dir))
        })();
        match started {
            Ok((mut child, port, dir)) => {
                // The dir holds the broker's log segments while the process lives; a later test process removes it
                // (remove_dead_shared_dirs), as nothing runs when this one ends.
                let _dir = dir.keep();
                let _ = tx.send(Ok(format!("127.0.0.1:{port}")));
                let _ = child.wait();
            }
            Err(err) => {
                let _ = tx.send(Err(err));
            }
        }
    })?;
    rx.recv().context("broker thread ended")?
}

fn shared_dir_prefix(pid: u32) -> String {
    format!("pgm-kafka-shared-{pid}-")
}

/// Removes the shared brokers' dirs of test processes that have ended.
fn remove_dead_shared_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix("pgm-kafka-shared-").and_then(|rest| rest.split('-').next()) else {
            continue;
        };
        if pid.parse::<u32>().is_ok_and(|pid| !Path::new(&format!("/proc/{pid}")).exists()) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

#[allow(unsafe_code)]
fn set_parent_death_signal(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe and touches only the child's own attributes. The setting survives the
    // script's exec of java.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// A broker owned by one test, which may kill and restart it on its data. Killed on drop.
pub struct Broker {
    dir: TempDir,
    port: u16,
    controller_port: u16,
    setup: BrokerSetup,
    child: Option<Child>,
}

impl Broker {
    pub fn start() -> crate::Result<Self> {
        Self::start_with(BrokerSetup::default())
    }

    pub fn start_with(setup: BrokerSetup) -> crate::Result<Self> {
        let mut broker = Broker {
            dir: tempfile::Builder::new().prefix("pgm-kafka-").tempdir()?,
            port: crate::free_port()?,
            controller_port: crate::free_port()?,
            setup,
            child: None,
        };
        broker.restart()?;
        Ok(broker)
    }

    pub fn brokers(&self) -> String {
        match &self.setup.advertised {
            Some(template) => template.replace("{port}", &self.port.to_string()),
            None => format!("127.0.0.1:{}", self.port),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The node's folder (config, data, broker.log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The broker process, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the broker (SIGKILL: no clean shutdown, no flush).
    pub fn kill(&mut self) -> crate::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// Starts it again on the same ports and data (after [`Broker::kill`], or kills it first), and waits until it
    /// serves.
    pub fn restart(&mut self) -> crate::Result<()> {
        self.kill()?;
        // No parent-death signal here: it fires when the spawning *thread* ends, and a restart may run on a pooled
        // blocking thread. Drop kills the broker.
        let mut command = broker_command(self.dir.path(), self.port, self.controller_port, &self.setup)?;
        let mut child = command.spawn().context("start Kafka (compose/kafka/broker)")?;
        wait_ready(self.port, &mut child, self.dir.path(), &self.setup)?;
        self.child = Some(child);
        Ok(())
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}
