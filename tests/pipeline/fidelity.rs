//! Every value arrives exactly as it left: one table with a column of every built-in type (quoted, mixed-case,
//! non-ASCII and reserved-word names, a char(3) primary key) through the snapshot bootstrap, then inserts, updates
//! (of the key, and one leaving a TOAST column untouched) and deletes through capture → transform → apply, then
//! `pgm-transform verify`, with each decoder. Plus the char(n)/bit(n) reproduction, and tables without a replica
//! identity refused before anything is written.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::BINS;
use anyhow::{ensure, Context};
use pgm_test_support::broker::shared_brokers;
use pgm_test_support::every_type;
use pgm_test_support::stack::{Options, Running, Service, Stack};
use tokio_postgres::Client;

/// The custom types' schema (non-ASCII, with a quote).
const SCH: &str = r#""Ünï ""Sch""""#;

/// The same DDL on DB1 and DB2 (identity migration): the every-type table, a keyless copy, and the char/bit tables.
fn schema() -> &'static str {
    let ddl = format!(
        r#"CREATE SCHEMA {SCH};
{types}CREATE TABLE {TABLE} (
  "Key" char(3) PRIMARY KEY,
  {columns}
);
ALTER TABLE {TABLE} ALTER COLUMN doc SET STORAGE EXTERNAL;
CREATE TABLE {KEYLESS} (LIKE {TABLE});
ALTER TABLE {KEYLESS} REPLICA IDENTITY FULL;
CREATE TABLE public.c (id int PRIMARY KEY, ch char(5), bt bit(4));
CREATE TABLE public.ck (code char(3) PRIMARY KEY, v int);
"#,
        types = every_type::custom_types(SCH),
        columns = every_type::column_definitions(SCH),
    );
    Box::leak(ddl.into_boxed_str())
}

const TABLE: &str = r#""Ünï ""Sch"""."Order ""Items"" Ä""#;
const TABLE_INCLUDE: &str = "Ünï \"Sch\".Order \"Items\" Ä";
/// The same columns without a key (REPLICA IDENTITY FULL): rows are found by their old values.
const KEYLESS: &str = r#""Ünï ""Sch"""."keyless ""full""""#;
const INCLUDE: [&str; 4] = [TABLE_INCLUDE, "Ünï \"Sch\".keyless \"full\"", "public.c", "public.ck"];

/// Columns wal2json sends as bare JSON numbers: their NaN and ±Infinity arrive as null.
const BARE_FLOAT_COLUMNS: [&str; 4] = ["num", "num_ps", "r4", "r8"];

/// One row of every type. `special` puts NaN/±Infinity/-0 where the types allow them; otherwise ordinary values.
fn insert(key: &str, special: bool) -> String {
    format!("INSERT INTO {TABLE} VALUES ('{key}', {})", every_type::row_values(special))
}

async fn fidelity_stack(decoder: &str, bootstrap_rows: bool) -> anyhow::Result<Stack> {
    let options = Options {
        source_schema: schema(),
        target_schema: schema(),
        tables: &INCLUDE,
        rules: None,
        partitions: 2,
        apply: "group_ms = 50",
        librdkafka: "",
        create_slot: false,
    };
    let stack = Stack::new(BINS, shared_brokers()?, options).await?;
    stack.configure("capture", &format!("decoder = \"{decoder}\""))?;
    if bootstrap_rows {
        let db1 = stack.source().await?;
        db1.batch_execute(&format!("{}; {};", insert("b01", true), insert("b02", false))).await?;
        db1.batch_execute("INSERT INTO public.c VALUES (0, 'vwxyz', B'0110'); INSERT INTO public.ck VALUES ('zz', 0);")
            .await?;
    }
    Ok(stack)
}

/// `(key, column) → value as text` of every cell of the table.
async fn cells(client: &Client) -> anyhow::Result<Vec<(String, String, Option<String>)>> {
    let columns: Vec<String> = client
        .query(
            "SELECT attname::text FROM pg_attribute WHERE attrelid = $1::text::regclass AND attnum > 0 \
             AND NOT attisdropped ORDER BY attnum",
            &[&TABLE],
        )
        .await?
        .into_iter()
        .map(|r| r.get(0))
        .collect();
    let mut out = Vec::new();
    for column in &columns {
        let quoted = pgm_common::change::quote_ident(column);
        let rows = client.query(&format!("SELECT \"Key\"::text, {quoted}::text FROM {TABLE} ORDER BY 1"), &[]).await?;
        for row in rows {
            out.push((row.get(0), column.clone(), row.get(1)));
        }
    }
    out.sort();
    Ok(out)
}

/// The streamed changes: inserts of both kinds of row, an update of the key, an update leaving the TOAST column
/// untouched, an update to NaN, a delete; and the char/bit reproduction.
async fn stream_changes(db1: &Client) -> anyhow::Result<()> {
    db1.batch_execute(&format!("{}; {}; {};", insert("abc", true), insert("abd", false), insert("x", false))).await?;
    db1.batch_execute(&format!(
        "UPDATE {TABLE} SET \"Key\" = 'abe' WHERE \"Key\" = 'abd';
         UPDATE {TABLE} SET \"tëxt\" = 'changed, doc untouched' WHERE \"Key\" = 'abc';
         UPDATE {TABLE} SET r8 = 'NaN', num = '-Infinity', r4 = '-0' WHERE \"Key\" = 'abe';
         DELETE FROM {TABLE} WHERE \"Key\" = 'x';
         UPDATE {TABLE} SET \"tëxt\" = 'bootstrapped row changed' WHERE \"Key\" = 'b02';
         INSERT INTO public.c VALUES (1, 'abcde', B'1010');
         UPDATE public.c SET ch = 'hello', bt = B'0101' WHERE id = 1;
         INSERT INTO public.c VALUES (2, 'ab', B'1111');
         INSERT INTO public.ck VALUES ('abc', 1), ('abd', 2);
         UPDATE public.ck SET v = 3 WHERE code = 'abc';
         UPDATE public.ck SET code = 'abz' WHERE code = 'abd';"
    ))
    .await?;
    // The keyless table: rows that `=` cannot tell apart or cannot compare at all (json, xml, point, polygon):
    // D differs from A only by r4 = 0 against -0, B and C only by boxes of equal area; A twice. D and C come first,
    // so matching the old row with `=` would take them for A and B.
    let copy = |overrides: &str| {
        format!(
            "INSERT INTO {KEYLESS} SELECT (jsonb_populate_record(src, '{overrides}')).* FROM {TABLE} AS src WHERE \"Key\" = 'b02';"
        )
    };
    db1.batch_execute(&format!(
        "{} {} {} {} {}
         DELETE FROM {KEYLESS} WHERE ctid = (SELECT ctid FROM {KEYLESS} WHERE r4::text = '-0' AND bx ~= '(1,1),(0,0)' LIMIT 1);
         DELETE FROM {KEYLESS} WHERE bx ~= '(2,2),(0,0)';
         UPDATE {KEYLESS} SET \"tëxt\" = 'the other A' WHERE r4::text = '-0' AND bx ~= '(1,1),(0,0)';",
        copy(r#"{"r4": 0}"#),
        copy(r#"{"bx": "(4,1),(0,0)"}"#),
        copy("{}"),
        copy("{}"),
        copy(r#"{"bx": "(2,2),(0,0)"}"#),
    ))
    .await?;
    Ok(())
}

/// Runs the whole path for one decoder; returns the cells that differ between DB1 and DB2.
async fn run_pipeline(stack: &Stack) -> anyhow::Result<Vec<(String, String, Option<String>, Option<String>)>> {
    let out = stack.run(Service::Capture, &["bootstrap"])?;
    ensure!(out.status.success(), "bootstrap: {}", String::from_utf8_lossy(&out.stderr));
    let _capture = stack.spawn(Service::Capture, &["run"])?;
    let _transform = stack.spawn(Service::Transform, &["run"])?;
    let _apply = stack.spawn(Service::Apply, &["run"])?;
    let db1 = stack.source().await?;
    stream_changes(&db1).await?;
    stack.marker("fidelity").await?;
    stack.wait_marker("fidelity", Duration::from_secs(90)).await?;
    stack.assert_same(&["public.c", "public.ck"]).await.context("char/bit reproduction")?;
    stack.assert_same(&[KEYLESS]).await.context("keyless table")?;
    let keyless = Stack::rows(&stack.target().await?, KEYLESS).await?;
    ensure!(keyless.len() == 3, "D, C and the other A remain on DB2: {} rows", keyless.len());
    let db2 = stack.target().await?;
    let c: Vec<String> = Stack::rows(&db2, "public.c").await?;
    ensure!(c == ["(0,vwxyz,0110)", "(1,hello,0101)", "(2,\"ab   \",1111)"], "char(5)/bit(4) on DB2: {c:?}");
    let ck: Vec<String> = Stack::rows(&db2, "public.ck").await?;
    ensure!(ck == ["(\"zz \",0)", "(abc,3)", "(abz,2)"], "char(3) keys on DB2: {ck:?}");

    let (a, b) = (cells(&db1).await?, cells(&db2).await?);
    let keys = |cells: &[(String, String, Option<String>)]| -> BTreeSet<String> {
        cells.iter().map(|(k, _, _)| k.clone()).collect()
    };
    ensure!(keys(&a) == keys(&b), "rows: DB1 {:?}, DB2 {:?}", keys(&a), keys(&b));
    ensure!(keys(&a) == ["abc", "abe", "b01", "b02"].into_iter().map(String::from).collect(), "{:?}", keys(&a));
    ensure!(a.len() == b.len(), "cells: DB1 {}, DB2 {}", a.len(), b.len());
    Ok(a.into_iter().zip(b).filter(|(x, y)| x.2 != y.2).map(|(x, y)| (x.0, x.1, x.2, y.2)).collect())
}

/// Waits for a service to exit by itself.
async fn wait_exit(running: &mut Running, what: &str, timeout: Duration) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + timeout;
    while running.child.try_wait()?.is_none() {
        ensure!(std::time::Instant::now() < deadline, "{what}: still running after {timeout:?}:\n{}", running.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

fn verify(stack: &Stack) -> anyhow::Result<(bool, String)> {
    let out = stack.run(Service::Transform, &["verify"])?;
    Ok((
        out.status.success(),
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
    ))
}

#[tokio::test(flavor = "multi_thread")]
async fn pgoutput_carries_every_value_of_every_type_exactly() -> anyhow::Result<()> {
    let stack = fidelity_stack("pgoutput", true).await?;
    // Every value takes the passthrough path here (capture → apply, no out record); the wal2json test below takes
    // the transform path, so each type is compared on both.
    stack.configure("transform", "passthrough = true")?;
    let differing = run_pipeline(&stack).await?;
    ensure!(differing.is_empty(), "cells that differ with pgoutput (key, column, DB1, DB2): {differing:?}");
    let db1_rows = Stack::rows(&stack.source().await?, TABLE).await?;
    let db2_rows = Stack::rows(&stack.target().await?, TABLE).await?;
    ensure!(db1_rows == db2_rows, "row::text differs");
    let (ok, report) = verify(&stack)?;
    ensure!(ok && report.contains("4 of 4 tables equal"), "verify: {report}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn wal2json_is_exact_but_for_nan_and_infinity_which_check_and_verify_report() -> anyhow::Result<()> {
    let stack = fidelity_stack("wal2json", true).await?;
    let differing = run_pipeline(&stack).await?;
    // Exactly the streamed NaN/±Infinity cells of bare numeric/float columns arrive as NULL; the bootstrapped rows
    // (read as text) and every other column are exact.
    let expected: Vec<(String, String)> =
        [("abc", "num"), ("abc", "num_ps"), ("abc", "r4"), ("abc", "r8"), ("abe", "num"), ("abe", "r8")]
            .into_iter()
            .map(|(k, c)| (k.to_owned(), c.to_owned()))
            .collect();
    let got: Vec<(String, String)> = differing.iter().map(|(k, c, _, _)| (k.clone(), c.clone())).collect();
    ensure!(got == expected, "differing cells with wal2json: {differing:?}");
    for (key, column, db1, db2) in &differing {
        ensure!(BARE_FLOAT_COLUMNS.contains(&column.as_str()), "{key}.{column}");
        ensure!(
            matches!(db1.as_deref(), Some("NaN" | "Infinity" | "-Infinity")) && db2.is_none(),
            "{key}.{column}: DB1 {db1:?}, DB2 {db2:?}"
        );
    }
    // verify sees the changed values and names the rows.
    let (ok, report) = verify(&stack)?;
    ensure!(
        !ok && report.contains("DIFFERENT") && report.contains("abc") && report.contains("abe"),
        "verify: {report}"
    );
    // check fails on the table holding NaN/Infinity now and names the fix.
    let out = stack.run(Service::Capture, &["check"])?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(!out.status.success(), "check must fail:\n{text}");
    ensure!(text.contains("FAIL  table") && text.contains("capture.decoder = \"pgoutput\""), "check output:\n{text}");
    ensure!(text.contains("hold NaN or Infinity") && text.contains("r8"), "check output:\n{text}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_narrower_target_column_is_an_error_not_a_truncation() -> anyhow::Result<()> {
    let options = Options {
        source_schema: "CREATE TABLE public.n (id int PRIMARY KEY, v varchar(10), c char(6));",
        target_schema: "CREATE TABLE public.n (id int PRIMARY KEY, v varchar(3), c char(3));",
        tables: &["public.n"],
        rules: None,
        partitions: 1,
        apply: "group_ms = 50",
        librdkafka: "",
        create_slot: true,
    };
    let stack = Stack::new(BINS, shared_brokers()?, options).await?;
    let _capture = stack.spawn(Service::Capture, &["run"])?;
    let _transform = stack.spawn(Service::Transform, &["run"])?;
    let mut apply = stack.spawn(Service::Apply, &["run"])?;
    stack.source().await?.batch_execute("INSERT INTO public.n VALUES (1, 'abcdefg', 'abc')").await?;
    wait_exit(&mut apply, "apply stops on the value too long", Duration::from_secs(60)).await?;
    let log = apply.log();
    ensure!(log.contains("22001") && log.contains("\"public\".\"n\""), "apply log:\n{log}");
    let rows = Stack::rows(&stack.target().await?, "public.n").await?;
    ensure!(rows.is_empty(), "nothing truncated into DB2: {rows:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn capture_refuses_a_table_without_replica_identity_and_stops_when_one_loses_it() -> anyhow::Result<()> {
    let options = Options {
        source_schema: "CREATE TABLE public.keyed (id int PRIMARY KEY, v text);
                        CREATE TABLE public.\"Keyless\" (a int, b text);",
        target_schema: "CREATE TABLE public.keyed (id int PRIMARY KEY, v text);
                        CREATE TABLE public.\"Keyless\" (a int, b text);",
        tables: &["public.keyed", "public.Keyless"],
        rules: None,
        partitions: 1,
        apply: "",
        librdkafka: "",
        create_slot: false,
    };
    let stack = Stack::new(BINS, shared_brokers()?, options).await?;
    let db1 = stack.source().await?;
    db1.batch_execute("INSERT INTO public.\"Keyless\" VALUES (1, 'one'); INSERT INTO public.keyed VALUES (1, 'a')")
        .await?;
    for decoder in ["wal2json", "pgoutput"] {
        let mut capture_run = stack.command(Service::Capture, &["run"]);
        capture_run.env("PGM__CAPTURE__DECODER", decoder);
        let out = capture_run.output()?;
        let err = String::from_utf8_lossy(&out.stderr);
        ensure!(!out.status.success(), "{decoder}: capture run must refuse");
        ensure!(
            err.contains("\"public\".\"Keyless\"") && err.contains("REPLICA IDENTITY FULL"),
            "{decoder}: the refusal names the table and the fix:\n{err}"
        );
        let slots: i64 = db1.query_one("SELECT count(*) FROM pg_replication_slots", &[]).await?.get(0);
        let publications: i64 = db1.query_one("SELECT count(*) FROM pg_publication", &[]).await?.get(0);
        ensure!(
            slots == 0 && publications == 0,
            "{decoder}: nothing created (slots {slots}, publications {publications})"
        );
        // DB1 still takes the application's updates (a publication would make it refuse them).
        db1.batch_execute("UPDATE public.\"Keyless\" SET b = 'uno'").await?;
    }
    let bootstrap = stack.run(Service::Capture, &["bootstrap"])?;
    ensure!(
        !bootstrap.status.success() && String::from_utf8_lossy(&bootstrap.stderr).contains("\"public\".\"Keyless\""),
        "bootstrap must refuse too: {}",
        String::from_utf8_lossy(&bootstrap.stderr)
    );
    let topics = pgm_test_support::kafka::list_topics(&stack.brokers, &format!("{}.", stack.prefix))?;
    ensure!(topics.is_empty(), "nothing written to Kafka: {topics:?}");

    // With an identity, capture runs; a table that loses it while capture runs stops capture (wal2json drops
    // such changes with only a warning) before the transaction is confirmed.
    db1.batch_execute("ALTER TABLE public.\"Keyless\" REPLICA IDENTITY FULL").await?;
    stack.create_slot()?;
    let mut capture = stack.spawn(Service::Capture, &["run"])?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    ensure!(capture.child.try_wait()?.is_none(), "capture runs: {}", capture.log());
    db1.batch_execute("ALTER TABLE public.\"Keyless\" REPLICA IDENTITY NOTHING").await?;
    db1.batch_execute("UPDATE public.\"Keyless\" SET b = 'lost?'").await?;
    wait_exit(&mut capture, "capture stops on the dropped change", Duration::from_secs(30)).await?;
    let log = capture.log();
    ensure!(
        log.contains("no tuple identifier for UPDATE")
            && log.contains("Keyless")
            && log.contains("REPLICA IDENTITY FULL"),
        "capture log:\n{log}"
    );
    let confirmed: Option<String> =
        db1.query_one("SELECT confirmed_flush_lsn::text FROM pg_replication_slots", &[]).await?.get(0);
    let update_lsn: String = db1.query_one("SELECT pg_current_wal_lsn()::text", &[]).await?.get(0);
    let (confirmed, update_lsn): (pgm_common::Lsn, pgm_common::Lsn) =
        (confirmed.context("confirmed")?.parse()?, update_lsn.parse()?);
    ensure!(
        confirmed < update_lsn,
        "the transaction with the dropped change is not confirmed ({confirmed} < {update_lsn})"
    );
    Ok(())
}
