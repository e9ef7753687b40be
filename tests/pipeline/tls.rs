//! TLS to PostgreSQL everywhere: capture (replication and ordinary connections), transform and apply against a
//! cluster that accepts only TLS with a SCRAM password and a client certificate, with `sslmode = verify-full` and a
//! CA made by the test; a plain connection, another CA and a wrong host name are refused.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{ensure, Context};
use pgm_common::config::{PgConfig, Secret, SslMode};
use pgm_test_support::broker::shared_brokers;
use pgm_test_support::names::unique;
use pgm_test_support::pg::{PgCluster, TlsFiles};
use pgm_test_support::stack::Running;
use pgm_test_support::wait;

const PASSWORD: &str = "s3cr3t 'pw'";
const SCHEMA: &str = "CREATE TABLE items (id int PRIMARY KEY, v text NOT NULL);";

fn tls_config(pg: &PgCluster, db: &str, host: &str, files: &TlsFiles, mode: SslMode) -> PgConfig {
    PgConfig {
        host: host.into(),
        password: Secret::new(PASSWORD),
        sslmode: mode,
        sslrootcert: Some(files.ca.clone()),
        sslcert: Some(files.cert.clone()),
        sslkey: Some(files.key.clone()),
        ..pg.pg_config(db)
    }
}

fn spawn(binary: &str, config: &Path, args: &[&str], log: &Path) -> anyhow::Result<Running> {
    let child = Command::new(binary)
        .arg("--config")
        .arg(config)
        .args(args)
        .env("RUST_LOG", "info")
        // The password only through the environment, as an operator would pass it.
        .env("PGM__SOURCE__PASSWORD", PASSWORD)
        .env("PGM__TARGET__PASSWORD", PASSWORD)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log)?)
        .spawn()?;
    Ok(Running { child, log: log.to_owned() })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_connects_over_verify_full_tls_to_a_tls_only_cluster() -> anyhow::Result<()> {
    let mut pg = PgCluster::start()?;
    let (db1, db2) = (pg.create_database("tls1").await?, pg.create_database("tls2").await?);
    pg.connect(&db1).await?.batch_execute(SCHEMA).await?;
    pg.connect(&db2).await?.batch_execute(SCHEMA).await?;
    let files = pg.require_tls(PASSWORD).await?;

    // The cluster refuses what is not TLS with a client certificate, and what does not check out.
    let source = tls_config(&pg, &db1, "127.0.0.1", &files, SslMode::VerifyFull);
    let plain = PgConfig { sslmode: SslMode::Disable, ..source.clone() };
    let refused = plain.connect("plain").await.err().context("a plain connection must be refused")?.to_string();
    ensure!(refused.contains("pg_hba.conf"), "{refused}");
    let other_ca = PgConfig { sslrootcert: Some(files.cert.clone()), ..source.clone() };
    let refused = other_ca.connect("other-ca").await.err().context("another CA must be refused")?.to_string();
    ensure!(refused.contains("certificate verify failed"), "{refused}");
    // `localhost` reaches the server, but its certificate names only 127.0.0.1: verify-full refuses, verify-ca
    // (the chain only) accepts.
    let by_name = PgConfig { host: "localhost".into(), ..source.clone() };
    let refused = by_name.connect("wrong-host").await.err().context("verify-full must check the host name")?;
    ensure!(refused.to_string().contains("certificate verify failed"), "{refused}");
    PgConfig { sslmode: SslMode::VerifyCa, ..by_name }.connect("ca-only").await.context("verify-ca by name")?;
    let no_password = PgConfig { password: Secret::default(), ..source.clone() };
    let refused = no_password.connect("no-password").await.err().context("the server asks for a password")?;
    ensure!(refused.to_string().contains("PGM__SOURCE__PASSWORD"), "{refused}");
    let db1_client = source.connect("tls-test").await.context("verify-full with the test CA")?;

    let dir = tempfile::tempdir()?;
    let config = dir.path().join("pipeline.toml");
    let prefix = unique("tls");
    let pg_section = |db: &str| {
        format!(
            "host = \"127.0.0.1\"\nport = {}\nuser = \"postgres\"\ndbname = \"{db}\"\nsslmode = \"verify-full\"\n\
             sslrootcert = {:?}\nsslcert = {:?}\nsslkey = {:?}\n",
            pg.port(),
            files.ca.display().to_string(),
            files.cert.display().to_string(),
            files.key.display().to_string()
        )
    };
    std::fs::write(
        &config,
        format!(
            "[source]\n{}[target]\n{}[kafka]\nbrokers = \"{}\"\n\
             [topics]\nprefix = \"{prefix}\"\npartitions = 1\n[tables]\ninclude = [\"public.items\"]\n\
             [capture]\nslot = \"{}\"\nmessage_prefixes = [\"pgm\", \"pgm-test\"]\nmetrics_addr = \"127.0.0.1:0\"\n\
             [transform]\ngroup_id = \"{}\"\nmetrics_addr = \"127.0.0.1:0\"\n\
             [apply]\ngroup_id = \"{}\"\nmetrics_addr = \"127.0.0.1:0\"\ngroup_ms = 50\n",
            pg_section(&db1),
            pg_section(&db2),
            shared_brokers()?,
            unique("slot"),
            unique("g"),
            unique("ga"),
        ),
    )?;
    let capture_bin = env!("CARGO_BIN_EXE_pgm-test-capture");
    let log = |name: &str| dir.path().join(format!("{name}.log"));
    let out = Command::new(capture_bin)
        .args(["--config"])
        .arg(&config)
        .args(["slot", "create"])
        .env("PGM__SOURCE__PASSWORD", PASSWORD)
        .output()?;
    ensure!(out.status.success(), "slot create over TLS: {}", String::from_utf8_lossy(&out.stderr));
    let capture = spawn(capture_bin, &config, &["run"], &log("capture"))?;
    let transform = spawn(env!("CARGO_BIN_EXE_pgm-test-transform"), &config, &["run"], &log("transform"))?;
    let apply = spawn(env!("CARGO_BIN_EXE_pgm-test-apply"), &config, &["run"], &log("apply"))?;

    db1_client.batch_execute("INSERT INTO items SELECT g, 'over tls ' || g FROM generate_series(1, 50) g").await?;
    let db2_client = tls_config(&pg, &db2, "127.0.0.1", &files, SslMode::VerifyFull).connect("tls-test").await?;
    let logs = || format!("{}\n{}\n{}", capture.log(), transform.log(), apply.log());
    wait::until("the rows on DB2", Duration::from_secs(90), || async {
        let n: i64 = db2_client.query_one("SELECT count(*) FROM items", &[]).await?.get(0);
        Ok((n == 50).then_some(()))
    })
    .await
    .with_context(logs)?;

    // Every connection of the services, the walsender included, is encrypted.
    let rows = db1_client
        .query(
            "SELECT a.application_name, a.backend_type, s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
             WHERE a.application_name LIKE 'pgm-%' ORDER BY 1",
            &[],
        )
        .await?;
    let seen: Vec<(String, String, bool)> = rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect();
    ensure!(seen.iter().all(|(_, _, ssl)| *ssl), "unencrypted connections: {seen:?}");
    for (app, kind) in
        [("pgm-capture", "walsender"), ("pgm-capture", "client backend"), ("pgm-apply", "client backend")]
    {
        ensure!(seen.iter().any(|(a, k, _)| a == app && k == kind), "no {kind} of {app} in {seen:?}");
    }
    // transform's own connections (verify reads DB1 and DB2) over the same TLS settings.
    let verify = Command::new(env!("CARGO_BIN_EXE_pgm-test-transform"))
        .arg("--config")
        .arg(&config)
        .arg("verify")
        .env("PGM__SOURCE__PASSWORD", PASSWORD)
        .env("PGM__TARGET__PASSWORD", PASSWORD)
        .output()?;
    let report = String::from_utf8_lossy(&verify.stdout);
    ensure!(verify.status.success() && report.contains("1 of 1 tables equal"), "verify over TLS: {report}");
    eprintln!("tls: {} encrypted service connections: {seen:?}", seen.len());
    drop((capture, transform, apply));

    // No DB2 password given: a definite error, so apply exits at once naming the variable to set.
    let started = std::time::Instant::now();
    let mut apply = Command::new(env!("CARGO_BIN_EXE_pgm-test-apply"))
        .arg("--config")
        .arg(&config)
        .arg("run")
        .env("PGM__SOURCE__PASSWORD", PASSWORD)
        .env_remove("PGM__TARGET__PASSWORD")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log("apply-no-password"))?)
        .spawn()?;
    let status = loop {
        if let Some(status) = apply.try_wait()? {
            break Some(status);
        }
        if started.elapsed() > Duration::from_secs(10) {
            let _ = apply.kill();
            break None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let took = started.elapsed();
    let stderr = std::fs::read_to_string(log("apply-no-password"))?;
    eprintln!("apply without DB2's password: {} ms, {status:?}", took.as_millis());
    ensure!(status.is_some_and(|s| !s.success()), "apply did not stop with an error within 10 s:\n{stderr}");
    ensure!(
        stderr.contains("PGM__TARGET__PASSWORD") && !stderr.contains("PGM__SOURCE__PASSWORD"),
        "the error does not name DB2's password variable:\n{stderr}"
    );
    Ok(())
}
