//! The Kafka-protocol broker for tests: tansu 0.6.0 (a real broker, not a mock).
//!
//! [`shared_brokers`] gives every test in a process the same broker: `PGM_TEST_BROKERS` when set, else a tansu
//! started on first use and killed when the test process exits. Tests keep apart by unique topic and group names. A
//! test that stops or restarts the broker starts its own [`Broker`].
//!
//! Every broker stores its log in sqlite (one row per record, kept across restarts). tansu's memory storage engine is
//! never used: a consumer resuming from an offset inside a multi-record batch silently skips the rest of that batch,
//! and its high watermark undercounts (`smoke::broker_resumes_inside_a_batch_and_counts_every_record` pins the
//! engine we use).

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::Context;
use tempfile::TempDir;

/// The tansu binary: `PGM_TANSU`, else `tansu` in `~/.cargo/bin` or on PATH.
pub fn tansu_binary() -> crate::Result<PathBuf> {
    if let Some(path) = std::env::var_os("PGM_TANSU") {
        return Ok(PathBuf::from(path));
    }
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
    if let Some(path) = home.map(|h| h.join("bin/tansu")).filter(|p| p.exists()) {
        return Ok(path);
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join("tansu"))
        .find(|p| p.exists());
    on_path.context(
        "tansu not found: run compose/install (it builds tansu 0.6.0 once), or set PGM_TANSU or PGM_TEST_BROKERS",
    )
}

/// tansu with its sqlite engine, the file in `dir` (so the data survives a restart).
fn broker_command(port: u16, dir: &std::path::Path) -> crate::Result<Command> {
    let url = format!("tcp://127.0.0.1:{port}");
    let mut command = Command::new(tansu_binary()?);
    command
        .arg("broker")
        .args(["--listener-url", &url, "--advertised-listener-url", &url])
        .args(["--storage-engine", "sqlite://broker.db"])
        .current_dir(dir)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("broker.log"))?);
    for var in ["STORAGE_ENGINE", "LISTENER_URL", "ADVERTISED_LISTENER_URL", "CLUSTER_ID"] {
        command.env_remove(var);
    }
    Ok(command)
}

fn wait_listening(port: u16, child: &mut Child, log: &std::path::Path) -> crate::Result<()> {
    crate::wait::until_blocking(&format!("tansu to listen on 127.0.0.1:{port}"), Duration::from_secs(30), || {
        if let Some(status) = child.try_wait()? {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            anyhow::bail!("tansu exited ({status}) before listening:\n{log}");
        }
        Ok(TcpStream::connect(("127.0.0.1", port)).ok().map(|_| ()))
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

/// Starts tansu from a thread that lives as long as the process, with the parent-death signal set: the kernel
/// kills the broker when that thread (so the test process) ends, however it ends.
fn start_process_broker() -> crate::Result<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new().name("pgm-test-broker".into()).spawn(move || {
        let started = (|| -> crate::Result<(Child, u16, TempDir)> {
            remove_dead_shared_dirs();
            let dir = tempfile::Builder::new().prefix(&shared_dir_prefix(std::process::id())).tempdir()?;
            let port = crate::free_port()?;
            let mut command = broker_command(port, dir.path())?;
            set_parent_death_signal(&mut command);
            let mut child = command.spawn().context("start tansu")?;
            wait_listening(port, &mut child, &dir.path().join("broker.log"))?;
            Ok((child, port, dir))
        })();
        match started {
            Ok((mut child, port, dir)) => {
                // The dir holds the broker's sqlite file while the process lives; a later test process removes it
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
    format!("pgm-tansu-shared-{pid}-")
}

/// Removes the shared brokers' dirs of test processes that have ended.
fn remove_dead_shared_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix("pgm-tansu-shared-").and_then(|rest| rest.split('-').next()) else {
            continue;
        };
        if pid.parse::<u32>().is_ok_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists()) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

#[allow(unsafe_code)]
fn set_parent_death_signal(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe and touches only the child's own attributes.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// A broker owned by one test, which may stop and restart it. Killed on drop.
pub struct Broker {
    dir: TempDir,
    port: u16,
    child: Option<Child>,
}

impl Broker {
    pub fn start() -> crate::Result<Self> {
        let mut broker = Broker {
            dir: tempfile::Builder::new().prefix("pgm-tansu-").tempdir()?,
            port: crate::free_port()?,
            child: None,
        };
        broker.restart()?;
        Ok(broker)
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The broker process, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the broker (SIGKILL: no clean shutdown).
    pub fn kill(&mut self) -> crate::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// Starts it again on the same port (after [`Broker::kill`], or kills it first).
    pub fn restart(&mut self) -> crate::Result<()> {
        self.kill()?;
        let mut child = broker_command(self.port, self.dir.path())?.spawn().context("start tansu")?;
        wait_listening(self.port, &mut child, &self.dir.path().join("broker.log"))?;
        self.child = Some(child);
        Ok(())
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}
