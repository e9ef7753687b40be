//! Initial copy side by side: native logical replication's initial sync (`CREATE SUBSCRIPTION … copy_data = true`,
//! as many sync workers as cores), pgcopydb (when Debian's package is installed), and `pgm-capture bootstrap` through
//! transform and apply, on the same pgbench database in one run. Rows/s from the start of each tool to the last row
//! on DB2; DB2 compared with DB1 after each (count and a hash of every row's text per table).

use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::ensure;
use pgm_test_support::pg::bin_dir;
use pgm_test_support::process_usage;
use pgm_test_support::stack::{Binaries, Options, Service, Stack};
use serde_json::{json, Value};

const TABLES: [&str; 3] = ["pgbench_accounts", "pgbench_branches", "pgbench_tellers"];

/// Count and the sum of a hash of every row's text, per table: a changed value changes it.
async fn fingerprint(client: &tokio_postgres::Client) -> anyhow::Result<Vec<(i64, i64)>> {
    let mut out = Vec::new();
    for table in TABLES {
        let row = client
            .query_one(&format!("SELECT count(*), coalesce(sum(hashtext(t::text)::int8), 0)::int8 FROM {table} t"), &[])
            .await?;
        out.push((row.get(0), row.get(1)));
    }
    Ok(out)
}

/// Peak RSS (kB) of a process, sampled every 100 ms until `stop` (VmHWM is only readable while it runs).
fn watch_rss(pid: u32, stop: Arc<AtomicBool>) -> (Arc<AtomicU64>, Arc<AtomicU64>) {
    let (rss, cpu_ms) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let (r, c) = (rss.clone(), cpu_ms.clone());
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            match process_usage(pid) {
                Some((cpu, peak)) => {
                    r.fetch_max(peak, Ordering::Relaxed);
                    c.store((cpu * 1000.0) as u64, Ordering::Relaxed);
                }
                None => break,
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    (rss, cpu_ms)
}

fn psql(stack: &Stack, db1: bool, sql: &str) -> anyhow::Result<()> {
    let (cluster, db) = if db1 { (&stack.db1, &stack.db1_name) } else { (&stack.db2, &stack.db2_name) };
    let out = Command::new(bin_dir().join("psql"))
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &cluster.port().to_string(),
            "-U",
            "postgres",
            "-v",
            "ON_ERROR_STOP=1",
            "-qc",
            sql,
        ])
        .arg(db)
        .output()?;
    ensure!(out.status.success(), "psql {sql}: {}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}

pub async fn run(scale: u32, bins: Binaries, brokers: String) -> anyhow::Result<Value> {
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    let options = Options {
        source_schema: "",
        target_schema: "",
        tables: &["public.pgbench_accounts", "public.pgbench_branches", "public.pgbench_tellers"],
        rules: None,
        partitions: 4,
        apply: "",
        librdkafka: "",
        create_slot: false,
    };
    let stack = Stack::new(bins, brokers, options).await?;
    let started = Instant::now();
    crate::pgbench(&stack, true, &["-i", "-q", "-s", &scale.to_string()])?;
    let db1 = stack.source().await?;
    db1.batch_execute("VACUUM ANALYZE").await?;
    let rows: i64 = db1
        .query_one("SELECT (SELECT count(*) FROM pgbench_accounts) + (SELECT count(*) FROM pgbench_branches) + (SELECT count(*) FROM pgbench_tellers)", &[])
        .await?
        .get(0);
    let source = fingerprint(&db1).await?;
    println!("bootstrap: pgbench scale {scale}, {rows} rows on DB1 (made in {:.0} s)", started.elapsed().as_secs_f64());
    let schema_only = || crate::pgbench(&stack, false, &["-i", "-I", "dtp", "-s", &scale.to_string()]);
    let db2 = stack.target().await?;
    let mut results = Vec::new();
    let mut native_rate = None;

    // Native: one subscription, as many table-sync workers as cores.
    schema_only()?;
    psql(&stack, true, &format!("CREATE PUBLICATION bench_pub FOR TABLE {}", TABLES.join(", ")))?;
    psql(&stack, false, &format!("ALTER SYSTEM SET max_sync_workers_per_subscription = {cpus}"))?;
    psql(&stack, false, "SELECT pg_reload_conf()")?;
    let t = Instant::now();
    psql(
        &stack,
        false,
        &format!(
            "CREATE SUBSCRIPTION bench_sub CONNECTION 'host=127.0.0.1 port={} dbname={} user=postgres' PUBLICATION \
             bench_pub WITH (copy_data = true)",
            stack.db1.port(),
            stack.db1_name
        ),
    )?;
    loop {
        let pending: i64 = db2
            .query_one("SELECT count(*) FROM pg_subscription_rel WHERE srsubstate NOT IN ('r', 's')", &[])
            .await?
            .get(0);
        let total: i64 = db2.query_one("SELECT count(*) FROM pg_subscription_rel", &[]).await?.get(0);
        if total > 0 && pending == 0 {
            break;
        }
        ensure!(t.elapsed() < Duration::from_secs(1800), "native initial sync did not finish in 30 min");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let secs = t.elapsed().as_secs_f64();
    let equal = fingerprint(&db2).await? == source;
    psql(&stack, false, "DROP SUBSCRIPTION bench_sub")?;
    let rate = rows as f64 / secs;
    native_rate = native_rate.or(Some(rate));
    println!(
        "bootstrap native     {rows:>10} rows {secs:>7.1} s {rate:>9.0} rows/s  equal {}  ({cpus} sync workers)",
        yes(equal)
    );
    results.push(json!({"tool": "native", "rows": rows, "seconds": secs, "rows_per_second": rate, "db2_equals_db1": equal, "sync_workers": cpus}));

    // pgcopydb, when installed: clone into an empty DB2 (it makes the schema and builds indexes after the data).
    let pgcopydb = ["/usr/bin/pgcopydb", "/usr/lib/postgresql/15/bin/pgcopydb"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists());
    match pgcopydb {
        Some(pgcopydb) => {
            psql(&stack, false, &format!("DROP TABLE {}, pgbench_history", TABLES.join(", ")))?;
            let dir = tempfile::tempdir()?;
            let uri = |port: u16, db: &str| format!("postgres://postgres@127.0.0.1:{port}/{db}");
            let t = Instant::now();
            // Its own process group: pgcopydb signals its whole group when a sub-process fails.
            let out = Command::new(pgcopydb)
                .process_group(0)
                .args([
                    "clone",
                    "--no-owner",
                    "--no-acl",
                    "--table-jobs",
                    &cpus.to_string(),
                    "--index-jobs",
                    &cpus.to_string(),
                ])
                .args([
                    "--source",
                    &uri(stack.db1.port(), &stack.db1_name),
                    "--target",
                    &uri(stack.db2.port(), &stack.db2_name),
                ])
                .arg("--dir")
                .arg(dir.path())
                .env("PATH", format!("{}:{}", bin_dir().display(), std::env::var("PATH").unwrap_or_default()))
                .output()?;
            let secs = t.elapsed().as_secs_f64();
            if out.status.success() {
                let equal = fingerprint(&db2).await? == source;
                let rate = rows as f64 / secs;
                println!(
                    "bootstrap pgcopydb   {rows:>10} rows {secs:>7.1} s {rate:>9.0} rows/s  equal {}  (--table-jobs {cpus})",
                    yes(equal)
                );
                results.push(json!({"tool": "pgcopydb", "rows": rows, "seconds": secs, "rows_per_second": rate, "db2_equals_db1": equal, "ratio_to_native": native_rate.map(|n| rate / n)}));
            } else {
                let err = String::from_utf8_lossy(&out.stderr);
                let last =
                    err.lines().find(|l| l.contains(" ERROR ") || l.contains(" FATAL ")).unwrap_or_default().to_owned();
                std::fs::write(std::env::temp_dir().join("pgcopydb-bench.log"), err.as_bytes())?;
                println!("bootstrap pgcopydb   did not finish: {last}");
                results.push(json!({"tool": "pgcopydb", "finished": false, "error": last}));
            }
            psql(&stack, false, &format!("DROP TABLE IF EXISTS {}, pgbench_history CASCADE", TABLES.join(", ")))?;
            schema_only()?;
        }
        None => {
            println!("bootstrap pgcopydb   not installed (apt-get install pgcopydb): left out");
            schema_only()?;
        }
    }

    // pg-migrator: transform and apply running, then `pgm-capture bootstrap`; done when DB2 has applied the copy.
    psql(&stack, false, &format!("TRUNCATE {}", TABLES.join(", ")))?;
    stack.configure("bootstrap", &format!("parallel = {cpus}\nchunk_pages = 2048"))?;
    let stop = Arc::new(AtomicBool::new(false));
    let transform = stack.spawn(Service::Transform, &["run"])?;
    let apply = stack.spawn(Service::Apply, &["run"])?;
    let t = Instant::now();
    let capture = stack
        .command(Service::Capture, &["bootstrap"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let watched = [
        ("capture", watch_rss(capture.id(), stop.clone())),
        ("transform", watch_rss(transform.child.id(), stop.clone())),
        ("apply", watch_rss(apply.child.id(), stop.clone())),
    ];
    let out = tokio::task::spawn_blocking(move || capture.wait_with_output()).await??;
    let into_kafka = t.elapsed().as_secs_f64();
    ensure!(out.status.success(), "pgm-capture bootstrap failed:\n{}", String::from_utf8_lossy(&out.stdout));
    loop {
        let applied: Option<String> = db2
            .query_opt("SELECT applied_lsn::text FROM pgm.apply_progress", &[])
            .await
            .ok()
            .flatten()
            .map(|r| r.get(0));
        if applied.is_some_and(|a| a != "0/0") {
            break;
        }
        ensure!(
            t.elapsed() < Duration::from_secs(3600),
            "pg-migrator's bootstrap was not applied within an hour:\n{}",
            stack.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let secs = t.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let chunks: i64 = db2.query_one("SELECT count(*) - 1 FROM pgm.bootstrap_chunks", &[]).await?.get(0);
    let equal = fingerprint(&db2).await? == source;
    let rate = rows as f64 / secs;
    let ratio = native_rate.map(|n| rate / n);
    let processes: Vec<(String, f64, u64)> = watched
        .iter()
        .map(|(name, (rss, cpu))| {
            (name.to_string(), cpu.load(Ordering::Relaxed) as f64 / 1000.0, rss.load(Ordering::Relaxed))
        })
        .collect();
    println!(
        "bootstrap pgm        {rows:>10} rows {secs:>7.1} s {rate:>9.0} rows/s  equal {}  ({chunks} chunks, {cpus} at a time; \
         in Kafka after {into_kafka:.1} s)  {}  ratio pipeline/native (initial copy): {:.2}",
        yes(equal),
        processes.iter().map(|(n, cpu, rss)| format!("{n} {cpu:.1}/{:.0}", *rss as f64 / 1024.0)).collect::<Vec<_>>().join(", "),
        ratio.unwrap_or(0.0)
    );
    println!(
        "          per row: CPU µs {}",
        processes
            .iter()
            .map(|(n, cpu, _)| format!("{n} {:.1}", cpu * 1e6 / rows as f64))
            .collect::<Vec<_>>()
            .join(", ")
    );
    results.push(json!({
        "tool": "pg-migrator", "rows": rows, "seconds": secs, "seconds_into_kafka": into_kafka, "rows_per_second": rate,
        "ratio_to_native": ratio, "db2_equals_db1": equal, "chunks": chunks, "parallel": cpus,
        "processes": processes.iter().map(|(n, cpu, rss)| json!({"name": n, "cpu_seconds": cpu, "cpu_us_per_row": cpu * 1e6 / rows as f64, "peak_rss_kb": rss})).collect::<Vec<_>>(),
    }));
    drop((transform, apply));
    Ok(json!({"scale": scale, "rows": rows, "runs": results}))
}

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "NO"
    }
}
