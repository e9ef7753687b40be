//! A row far over Kafka's default record limit (about 1 MiB): a 50 MB text value and a 20 MB bytea value, inserted,
//! updated and deleted, and a 3 MB logical message, cross a broker at its defaults as records in parts (capture
//! splits, transform joins and splits its output, apply joins) and arrive on DB2 exactly. Values are compared as
//! md5 of each row's text on both sides. Each service's peak RSS is printed beside its baseline and must stay under
//! it plus three times the row's size as text (about 90 MB: bytea travels as hex in both decoders).

use std::time::Duration;

use crate::BINS;
use anyhow::ensure;
use pgm_test_support::broker::shared_brokers;
use pgm_test_support::process_usage;
use pgm_test_support::stack::{Options, Service, Stack};

const SCHEMA: &str = "CREATE TABLE blobs (id int PRIMARY KEY, body text, data bytea, note text);";
/// 50 MB of text (multi-byte characters included, so parts cut inside them; tabs, newlines, backslashes and
/// carriage returns, which apply's COPY escapes) and 20 MB of bytes.
const BIG_ROW: &str = "
    INSERT INTO blobs
    SELECT $1,
           (SELECT string_agg(md5(g::text) || 'é€' || CASE WHEN g % 1000 = 0 THEN E'\\t\\n\\\\\\r' ELSE '' END, '')
            FROM generate_series(1, 1351352) g),
           (SELECT decode(string_agg(md5((g * 7)::text), ''), 'hex') FROM generate_series(1, 1250000) g),
           'big'";

async fn row_digests(client: &tokio_postgres::Client) -> anyhow::Result<Vec<(i32, String, i64, i64)>> {
    let rows = client
        .query(
            "SELECT id, md5(b::text), coalesce(octet_length(body), -1)::bigint, coalesce(length(data), -1)::bigint
             FROM blobs AS b ORDER BY id",
            &[],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3))).collect())
}

/// The blobs table under a rule, so its rows go through transform too (raw parts → joined → out parts).
fn blobs(create_slot: bool) -> Options<'static> {
    Options {
        source_schema: SCHEMA,
        target_schema: SCHEMA,
        tables: &["public.blobs"],
        rules: Some("[[table]]\nsource = \"public.blobs\"\n[[table.target]]\ntable = \"public.blobs\"\n"),
        partitions: 2,
        apply: "",
        librdkafka: "",
        create_slot,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_over_the_record_limit_arrive_exactly_in_parts() -> anyhow::Result<()> {
    let options = blobs(true);
    // The shared broker and topics at Kafka's defaults: max.message.bytes 1048588.
    let stack = Stack::new(BINS, shared_brokers()?, options).await?;
    let services = [
        ("capture", stack.spawn(Service::Capture, &["run"])?),
        ("transform", stack.spawn(Service::Transform, &["run"])?),
        ("apply", stack.spawn(Service::Apply, &["run"])?),
    ];
    let db1 = stack.source().await?;
    db1.execute("INSERT INTO blobs VALUES (100, 'small', '\\x00ff', 'before')", &[]).await?;
    stack.marker("warm").await?;
    stack.wait_marker("warm", Duration::from_secs(60)).await?;
    let baseline: Vec<u64> =
        services.iter().map(|(_, s)| process_usage(s.child.id()).map_or(0, |(_, rss)| rss)).collect();

    db1.execute(BIG_ROW, &[&1i32]).await?;
    db1.execute(BIG_ROW, &[&2i32]).await?;
    let row_bytes: i64 =
        db1.query_one("SELECT octet_length(b::text)::bigint FROM blobs AS b WHERE id = 1", &[]).await?.get(0);
    let row_bytes = row_bytes as u64;
    db1.batch_execute(
        "BEGIN;
         UPDATE blobs SET body = upper(body), note = 'updated' WHERE id = 1;
         DELETE FROM blobs WHERE id = 2;
         SELECT pg_logical_emit_message(true, 'pgm-test', repeat('m', 3000000));
         COMMIT;",
    )
    .await?;
    stack.marker("big rows").await?;
    stack.wait_marker("big rows", Duration::from_secs(300)).await?;

    let (source, target) = (row_digests(&db1).await?, row_digests(&stack.target().await?).await?);
    ensure!(source == target, "DB2 differs from DB1:\nDB1 {source:?}\nDB2 {target:?}");
    ensure!(source.iter().any(|r| r.0 == 1 && r.2 > 50_000_000), "the big row is not on DB1 as expected: {source:?}");
    let message: i64 = stack
        .target()
        .await?
        .query_one(
            "SELECT count(*) FROM pgm.apply_messages WHERE pipeline = $1 AND content = repeat('m', 3000000)",
            &[&stack.prefix],
        )
        .await?
        .get(0);
    ensure!(message == 1, "the 3 MB logical message did not arrive whole");
    let split: String = services[0].1.get("/metrics")?;
    ensure!(
        split.lines().any(|l| l.starts_with("pgm_capture_split_records_total ") && !l.ends_with(" 0")),
        "capture sent no record in parts:\n{split}"
    );

    let mut over = Vec::new();
    for (((name, service), base), times) in services.iter().zip(&baseline).zip([3, 3, 3]) {
        let peak = process_usage(service.child.id()).map_or(0, |(_, rss)| rss);
        eprintln!(
            "{name}: peak RSS {} MiB, baseline {} MiB, row {} MB as text: {:.1}× the row over the baseline",
            peak / 1024,
            base / 1024,
            row_bytes / 1_000_000,
            (peak - base) as f64 * 1024.0 / row_bytes as f64
        );
        if peak * 1024 >= base * 1024 + times * row_bytes {
            over.push(format!("{name}: peak RSS {peak} kB is over its baseline {base} kB plus {times} times the row"));
        }
    }
    ensure!(over.is_empty(), "{}", over.join("\n"));
    Ok(())
}

/// The snapshot bootstrap carries rows as COPY text batches: a row over the record limit is one batch sent in parts,
/// and under a rule transform parses it (tabs, newlines, backslashes escaped inside a 50 MB value) and writes it
/// again. It arrives on DB2 exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bootstrap_copies_a_row_over_the_record_limit_exactly() -> anyhow::Result<()> {
    let stack = Stack::new(BINS, shared_brokers()?, blobs(false)).await?;
    let db1 = stack.source().await?;
    db1.execute(BIG_ROW, &[&1i32]).await?;
    db1.batch_execute(
        "INSERT INTO blobs SELECT g, E'small\\t' || g || E'\\n\\\\', '\\x00ff', NULL FROM generate_series(2, 2000) g",
    )
    .await?;
    let out = stack.run(Service::Capture, &["bootstrap"])?;
    ensure!(out.status.success(), "bootstrap: {}", String::from_utf8_lossy(&out.stderr));
    let _capture = stack.spawn(Service::Capture, &["run"])?;
    let _transform = stack.spawn(Service::Transform, &["run"])?;
    let _apply = stack.spawn(Service::Apply, &["run"])?;
    stack.marker("copied").await?;
    stack.wait_marker("copied", Duration::from_secs(300)).await?;
    let (source, target) = (row_digests(&db1).await?, row_digests(&stack.target().await?).await?);
    ensure!(source.len() == 2000, "DB1 holds {} rows", source.len());
    ensure!(source == target, "DB2 differs from DB1 after the bootstrap (md5 of each row's text)");
    ensure!(source[0].2 > 40_000_000, "the big row is {} bytes of text", source[0].2);
    Ok(())
}
