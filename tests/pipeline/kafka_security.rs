//! The services through a Kafka that has one client listener, SASL_SSL: TLS with a certificate the test's CA signed
//! (verified, host name included) and SCRAM-SHA-512 users created before the broker started. Capture, transform and
//! apply move rows through it, the password comes from the environment and never reaches a log; a wrong password,
//! an untrusted CA and a plaintext client are each refused at start with an error naming the setting to fix.

use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::BINS;
use anyhow::{ensure, Context};
use pgm_test_support::broker::{Broker, BrokerSetup};
use pgm_test_support::certs::TestCa;
use pgm_test_support::stack::{Options, Service, Stack};

const PASSWORD: &str = "pgm-Kafka-s3cret";
const SCHEMA: &str = "CREATE TABLE notes (id int PRIMARY KEY, body text, amount numeric(12,2), at timestamptz);";

/// A Kafka node whose only client listener is SASL_SSL, and the CA that signed its certificate.
fn sasl_ssl_broker(dir: &std::path::Path) -> anyhow::Result<(Broker, std::path::PathBuf)> {
    let ca = TestCa::new(dir, "ca")?;
    let (crt, key) = ca.issue("broker", "127.0.0.1", Some("127.0.0.1"))?;
    // Kafka's PEM key store: the unencrypted PKCS#8 key and the certificate in one file.
    let keystore = dir.join("broker.pem");
    std::fs::write(&keystore, std::fs::read_to_string(&key)? + &std::fs::read_to_string(&crt)?)?;
    let jaas = |user: &str, password: &str| {
        format!("org.apache.kafka.common.security.scram.ScramLoginModule required username=\"{user}\" password=\"{password}\";")
    };
    let setup = BrokerSetup {
        extra_properties: format!(
            "listeners=SASL_SSL://127.0.0.1:{{port}},CONTROLLER://127.0.0.1:{{controller_port}}\n\
             advertised.listeners=SASL_SSL://127.0.0.1:{{port}}\n\
             inter.broker.listener.name=SASL_SSL\n\
             sasl.enabled.mechanisms=SCRAM-SHA-512\n\
             sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512\n\
             listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config={}\n\
             ssl.keystore.type=PEM\n\
             ssl.keystore.location={}\n\
             ssl.truststore.type=PEM\n\
             ssl.truststore.location={}\n",
            jaas("admin", "admin-secret"),
            keystore.display(),
            ca.certificate().display()
        ),
        format_args: vec![
            "--add-scram".into(),
            "SCRAM-SHA-512=[name=admin,password=admin-secret]".into(),
            "--add-scram".into(),
            format!("SCRAM-SHA-512=[name=pgm,password={PASSWORD}]"),
        ],
        client: [
            ("security.protocol", "sasl_ssl"),
            ("sasl.mechanism", "SCRAM-SHA-512"),
            ("sasl.username", "pgm"),
            ("sasl.password", PASSWORD),
            ("ssl.ca.location", &ca.certificate().display().to_string()),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
        advertised: None,
    };
    Ok((Broker::start_with(setup)?, ca.certificate()))
}

/// The `[kafka]` security settings as environment overrides (none in the file, so a case can leave any out).
fn security_env(ca: &std::path::Path, password: &str) -> Vec<(String, String)> {
    [
        ("PGM__KAFKA__SECURITY_PROTOCOL", "sasl_ssl".to_owned()),
        ("PGM__KAFKA__SSL_CA_LOCATION", ca.display().to_string()),
        ("PGM__KAFKA__SASL_USERNAME", "pgm".to_owned()),
        ("PGM__KAFKA__SASL_PASSWORD", password.to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// Runs `pgm-transform run` with these overrides; it must exit on its own within 60 s, failing. Returns its stderr.
fn refused_start(stack: &Stack, env: &[(String, String)]) -> anyhow::Result<String> {
    let log = stack.dir.path().join("refused.log");
    let mut child = stack
        .command(Service::Transform, &["run"])
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()?;
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if started.elapsed() > Duration::from_secs(60) {
            child.kill()?;
            anyhow::bail!(
                "pgm-transform run still running 60 s after start with settings the broker refuses:\n{}",
                std::fs::read_to_string(&log)?
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stderr = std::fs::read_to_string(&log).context("the service's stderr")?;
    ensure!(!status.success(), "pgm-transform run succeeded with settings the broker refuses:\n{stderr}");
    Ok(stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_work_through_sasl_ssl_and_refuse_wrong_credentials_ca_and_plaintext() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (broker, ca) = sasl_ssl_broker(dir.path())?;
    let options = Options {
        source_schema: SCHEMA,
        target_schema: SCHEMA,
        tables: &["public.notes"],
        rules: Some("[[table]]\nsource = \"public.notes\"\n[[table.target]]\ntable = \"public.notes\"\n"),
        partitions: 2,
        apply: "",
        librdkafka: "",
        create_slot: true,
    };
    let stack = Stack::new(BINS, broker.brokers(), options).await?;
    let env = security_env(&ca, PASSWORD);
    let env_refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let _capture = stack.spawn_with_env(Service::Capture, &["run"], &env_refs)?;
    let _transform = stack.spawn_with_env(Service::Transform, &["run"], &env_refs)?;
    let _apply = stack.spawn_with_env(Service::Apply, &["run"], &env_refs)?;
    stack
        .source()
        .await?
        .batch_execute(
            "INSERT INTO notes SELECT g, repeat('ü', g), g * 1.25, '2026-12-02 10:00+00'::timestamptz + g * interval '1 s'
             FROM generate_series(1, 300) g;
             UPDATE notes SET body = NULL WHERE id % 7 = 0;
             DELETE FROM notes WHERE id % 11 = 0;",
        )
        .await?;
    stack.marker("through sasl_ssl").await?;
    stack.wait_marker("through sasl_ssl", Duration::from_secs(120)).await?;
    stack.assert_same(&["public.notes"]).await?;
    let logs = stack.logs();
    ensure!(!logs.contains(PASSWORD), "a service logged the SASL password:\n{logs}");

    // A wrong password: refused, naming the password setting.
    let wrong = refused_start(&stack, &security_env(&ca, "not-the-password"))?;
    ensure!(
        wrong.contains("kafka.sasl_password"),
        "a wrong password's error does not name kafka.sasl_password:\n{wrong}"
    );
    ensure!(!wrong.contains("not-the-password"), "the wrong password was printed:\n{wrong}");
    // A CA that did not sign the broker's certificate: refused, naming the CA setting.
    let other = TestCa::new(&dir.path().join("other"), "other-ca")?;
    let mut untrusted = security_env(&ca, PASSWORD);
    untrusted[1].1 = other.certificate().display().to_string();
    let untrusted = refused_start(&stack, &untrusted)?;
    ensure!(
        untrusted.contains("kafka.ssl_ca_location"),
        "an untrusted CA's error does not name kafka.ssl_ca_location:\n{untrusted}"
    );
    // A plaintext client on the SASL_SSL listener: refused, naming the protocol setting.
    let plaintext = refused_start(&stack, &[])?;
    ensure!(
        plaintext.contains("kafka.security_protocol"),
        "a plaintext client's error does not name kafka.security_protocol:\n{plaintext}"
    );
    eprintln!("refusals:\n--- wrong password\n{wrong}\n--- untrusted CA\n{untrusted}\n--- plaintext\n{plaintext}");
    Ok(())
}
