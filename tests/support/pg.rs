//! Throwaway PostgreSQL 15 clusters on loopback, one per test (a test that kills its server harms no other).
//!
//! Run as root (CI), initdb and postgres refuse to start: every server command then runs as the `postgres` user,
//! and the cluster's temp dir is handed to it. Settings: `wal_level=logical`, TCP on 127.0.0.1 only, no Unix socket,
//! `fsync=off` (a killed server loses nothing that way; only an OS crash would), trust authentication.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{bail, Context};
use pgm_common::config::{PgConfig, Secret, SslMode};
use tempfile::TempDir;

/// PostgreSQL's binaries: `PGM_PG_BIN`, else Debian's PostgreSQL 15.
pub fn bin_dir() -> PathBuf {
    std::env::var_os("PGM_PG_BIN").map_or_else(|| PathBuf::from("/usr/lib/postgresql/15/bin"), PathBuf::from)
}

/// The uid/gid server processes run as: the `postgres` user when we are root, else ourselves (None).
fn server_user() -> crate::Result<Option<(u32, u32)>> {
    static USER: OnceLock<Result<Option<(u32, u32)>, String>> = OnceLock::new();
    USER.get_or_init(|| {
        let id = |flag: &str, who: Option<&str>| -> Result<u32, String> {
            let out = Command::new("id").arg(flag).args(who).output().map_err(|e| format!("id: {e}"))?;
            if !out.status.success() {
                return Err(format!("id {flag} {who:?}: {}", String::from_utf8_lossy(&out.stderr).trim()));
            }
            String::from_utf8_lossy(&out.stdout).trim().parse().map_err(|e| format!("id output: {e}"))
        };
        if id("-u", None)? != 0 {
            return Ok(None);
        }
        let uid = id("-u", Some("postgres"))
            .map_err(|e| format!("running as root needs a postgres user ({e}); install postgresql-15"))?;
        Ok(Some((uid, id("-g", Some("postgres"))?)))
    })
    .clone()
    .map_err(anyhow::Error::msg)
}

fn server_command(program: &str) -> crate::Result<Command> {
    let path = bin_dir().join(program);
    if !path.exists() {
        bail!("{} not found: install postgresql-15 (compose/install does) or set PGM_PG_BIN", path.display());
    }
    let mut command = Command::new(path);
    if let Some((uid, gid)) = server_user()? {
        command.uid(uid).gid(gid);
    }
    command.env_remove("PGDATA").env_remove("PGPORT");
    Ok(command)
}

fn run(mut command: Command, what: &str) -> crate::Result<Output> {
    let out = command.output().with_context(|| format!("{what}: cannot start"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

fn hand_over(path: &Path) -> crate::Result<()> {
    if let Some((uid, gid)) = server_user()? {
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).with_context(|| format!("chown {}", path.display()))?;
    }
    Ok(())
}

/// What a client needs for a cluster made by [`PgCluster::require_tls`].
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A running (or stopped) throwaway cluster. Dropping it stops the server and removes its files.
pub struct PgCluster {
    dir: TempDir,
    port: u16,
    running: bool,
}

/// Settings every test cluster gets; [`PgCluster::start_with`] adds to them.
const BASE_SETTINGS: &[(&str, &str)] = &[
    ("listen_addresses", "127.0.0.1"),
    ("unix_socket_directories", ""),
    ("wal_level", "logical"),
    ("max_replication_slots", "10"),
    ("max_wal_senders", "10"),
    ("fsync", "off"),
    ("full_page_writes", "off"),
    ("shared_buffers", "32MB"),
    ("max_connections", "50"),
    ("TimeZone", "UTC"),
    ("log_min_messages", "warning"),
    ("hot_standby", "on"),
];

impl PgCluster {
    pub fn start() -> crate::Result<Self> {
        Self::start_with(&[])
    }

    /// initdb + start with [`BASE_SETTINGS`] plus `settings` (written to postgresql.auto.conf so restarts keep them).
    pub fn start_with(settings: &[(&str, &str)]) -> crate::Result<Self> {
        let dir = tempfile::Builder::new().prefix("pgm-pg-").tempdir()?;
        hand_over(dir.path())?;
        let mut initdb = server_command("initdb")?;
        initdb.arg("-D").arg(dir.path().join("data")).args([
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-sync",
        ]);
        run(initdb, "initdb")?;
        let mut cluster = PgCluster { dir, port: crate::free_port()?, running: false };
        cluster.write_settings(BASE_SETTINGS.iter().chain(settings))?;
        cluster.start_server()?;
        Ok(cluster)
    }

    /// A streaming physical standby of `primary` (pg_basebackup -R), started and replaying.
    pub fn standby_of(primary: &PgCluster) -> crate::Result<Self> {
        let dir = tempfile::Builder::new().prefix("pgm-standby-").tempdir()?;
        hand_over(dir.path())?;
        let mut backup = server_command("pg_basebackup")?;
        backup.arg("-D").arg(dir.path().join("data")).args([
            "-h",
            "127.0.0.1",
            "-p",
            &primary.port.to_string(),
            "-U",
            "postgres",
            "-R",
            "-X",
            "stream",
            "--checkpoint=fast",
            "--no-sync",
        ]);
        run(backup, "pg_basebackup")?;
        // The port is a command-line flag, never in the copied configuration, so the standby simply gets its own.
        let mut standby = PgCluster { dir, port: crate::free_port()?, running: false };
        standby.start_server()?;
        Ok(standby)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    fn write_settings<'a>(&self, settings: impl Iterator<Item = &'a (&'a str, &'a str)>) -> crate::Result<()> {
        use std::io::Write;
        let path = self.data_dir().join("postgresql.auto.conf");
        let mut file =
            std::fs::OpenOptions::new().append(true).open(&path).with_context(|| path.display().to_string())?;
        for (key, value) in settings {
            writeln!(file, "{key} = '{}'", value.replace('\'', "''"))?;
        }
        Ok(())
    }

    fn start_server(&mut self) -> crate::Result<()> {
        let mut pg_ctl = server_command("pg_ctl")?;
        pg_ctl.arg("-D").arg(self.data_dir()).arg("-l").arg(self.log_path()).args([
            "-w",
            "-t",
            "60",
            "-o",
            &format!("-p {}", self.port),
            "start",
        ]);
        if let Err(err) = run(pg_ctl, "pg_ctl start") {
            let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
            bail!("{err}\nserver log:\n{log}");
        }
        self.running = true;
        Ok(())
    }

    fn pg_ctl_stop(&mut self, mode: &str) -> crate::Result<()> {
        let mut pg_ctl = server_command("pg_ctl")?;
        pg_ctl.arg("-D").arg(self.data_dir()).args(["-m", mode, "-w", "-t", "60", "stop"]);
        run(pg_ctl, "pg_ctl stop")?;
        self.running = false;
        Ok(())
    }

    /// Clean shutdown.
    pub fn stop(&mut self) -> crate::Result<()> {
        self.pg_ctl_stop("fast")
    }

    /// Crash: the server stops without a checkpoint, as after `kill -9` (immediate mode).
    pub fn crash(&mut self) -> crate::Result<()> {
        self.pg_ctl_stop("immediate")
    }

    /// Starts a stopped or crashed cluster on the same port.
    pub fn restart(&mut self) -> crate::Result<()> {
        if self.running {
            self.stop()?;
        }
        self.start_server()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Turns this cluster into one that accepts only TLS connections with a password (and a client certificate
    /// signed by the test CA), with a server certificate for 127.0.0.1 (not `localhost`) made by `openssl` here.
    /// Returns the CA certificate and a client certificate and key, for `sslrootcert`, `sslcert` and `sslkey`.
    pub async fn require_tls(&mut self, password: &str) -> crate::Result<TlsFiles> {
        self.connect("postgres")
            .await?
            .batch_execute(&format!("ALTER ROLE postgres PASSWORD '{}'", password.replace('\'', "''")))
            .await?;
        let data = self.data_dir();
        let certs = self.dir.path().join("certs");
        let ca = crate::certs::TestCa::new(&certs, "ca")?;
        ca.issue("server", "127.0.0.1", Some("127.0.0.1"))?;
        ca.issue("client", "postgres", None)?;
        for file in ["server.crt", "server.key", "ca.crt"] {
            let to = data.join(file);
            std::fs::copy(certs.join(file), &to)?;
            std::fs::set_permissions(&to, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
            hand_over(&to)?;
        }
        std::fs::write(
            data.join("pg_hba.conf"),
            "hostssl all         all 127.0.0.1/32 scram-sha-256 clientcert=verify-full\n\
             hostssl replication all 127.0.0.1/32 scram-sha-256 clientcert=verify-full\n",
        )?;
        self.write_settings(
            [("ssl", "on"), ("ssl_cert_file", "server.crt"), ("ssl_key_file", "server.key"), ("ssl_ca_file", "ca.crt")]
                .iter(),
        )?;
        self.restart()?;
        Ok(TlsFiles { ca: certs.join("ca.crt"), cert: certs.join("client.crt"), key: certs.join("client.key") })
    }

    /// Connection settings in the pipeline's own configuration type.
    pub fn pg_config(&self, dbname: &str) -> PgConfig {
        PgConfig {
            host: "127.0.0.1".into(),
            port: self.port,
            user: "postgres".into(),
            password: Secret::default(),
            dbname: dbname.into(),
            sslmode: SslMode::Disable,
            sslrootcert: None,
            sslcert: None,
            sslkey: None,
        }
    }

    /// `postgres://…` URL, for tools such as psql and pgbench.
    pub fn url(&self, dbname: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{dbname}", self.port)
    }

    /// A plain connection; its connection task runs on the current runtime.
    pub async fn connect(&self, dbname: &str) -> crate::Result<tokio_postgres::Client> {
        let (client, connection) = self
            .pg_config(dbname)
            .to_tokio_postgres("pgm-tests")
            .connect(tokio_postgres::NoTls)
            .await
            .with_context(|| format!("connect to {}", self.url(dbname)))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }

    /// Creates a database with a name no other test uses, and returns the name.
    pub async fn create_database(&self, prefix: &str) -> crate::Result<String> {
        let name = crate::names::unique(prefix);
        let admin = self.connect("postgres").await?;
        admin.batch_execute(&format!("CREATE DATABASE {}", pgm_common::change::quote_ident(&name))).await?;
        Ok(name)
    }

    /// Waits until a standby has replayed at least up to `lsn`.
    pub async fn wait_replayed(&self, lsn: pgm_common::Lsn, timeout: Duration) -> crate::Result<()> {
        let client = self.connect("postgres").await?;
        crate::wait::until(&format!("standby replay to reach {lsn}"), timeout, || async {
            let row = client.query_one("SELECT pg_last_wal_replay_lsn()::text", &[]).await?;
            let replayed: Option<String> = row.get(0);
            let replayed: pgm_common::Lsn = replayed.context("not a standby")?.parse()?;
            Ok((replayed >= lsn).then_some(()))
        })
        .await
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if self.running {
            let _ = self.pg_ctl_stop("immediate");
        }
    }
}
