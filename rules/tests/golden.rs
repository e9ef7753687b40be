//! Golden test: a known input through a rule set covering rename, drop, constant, computed strings, cents→numeric,
//! epoch→timestamptz, a filter (entering and leaving it) and a table split, including an update whose TOAST column
//! is absent. `golden/expected.jsonl` was reviewed line by line; regenerate with PGM_BLESS=1 only after review.

use pgm_common::change::TableRef;
use pgm_common::envelope::{OutRecord, RawRecord, RecordOrigin};
use pgm_rules::catalog::{Catalog, ColumnInfo, TableInfo};
use pgm_rules::rewrite::Program;
use pgm_rules::rules::RulesFile;

fn table(columns: &[(&str, &str, u32)], key: &[&str], replica_full: bool) -> TableInfo {
    TableInfo {
        columns: columns
            .iter()
            .map(|(name, type_name, oid)| ColumnInfo {
                name: (*name).into(),
                type_name: (*type_name).into(),
                type_oid: *oid,
                not_null: false,
                has_default: false,
            })
            .collect(),
        key: key.iter().map(|k| (*k).into()).collect(),
        replica_full,
    }
}

pub fn source_catalog() -> Catalog {
    let mut catalog = Catalog::default();
    catalog.tables.insert(
        TableRef::new("public", "customers"),
        table(
            &[
                ("id", "bigint", 20),
                ("full_name", "text", 25),
                ("email", "text", 25),
                ("legacy_flags", "text", 25),
                ("status", "text", 25),
                ("signup_epoch", "bigint", 20),
                ("bio", "text", 25),
            ],
            &["id"],
            true,
        ),
    );
    catalog.tables.insert(
        TableRef::new("public", "orders"),
        table(&[("id", "bigint", 20), ("customer_id", "bigint", 20), ("amount_cents", "bigint", 20)], &["id"], false),
    );
    catalog.tables.insert(TableRef::new("public", "audit"), table(&[("id", "integer", 23)], &["id"], false));
    catalog
}

fn program() -> Program {
    let rules = RulesFile::from_toml_str(include_str!("golden/rules.toml")).unwrap();
    Program::compile(&rules, &source_catalog()).unwrap()
}

fn inputs() -> Vec<RawRecord> {
    include_str!("golden/input.jsonl")
        .lines()
        .enumerate()
        .map(|(i, line)| {
            RawRecord::decode(line.as_bytes(), RecordOrigin { topic: "golden", partition: 0, offset: i as i64 })
                .unwrap()
        })
        .collect()
}

#[test]
fn rules_produce_exactly_the_expected_out_records() {
    let program = program();
    let outputs: Vec<String> =
        inputs().iter().map(|raw| serde_json::to_string(&program.rewrite(raw).unwrap()).unwrap()).collect();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/expected.jsonl");
    if std::env::var_os("PGM_BLESS").is_some() {
        std::fs::write(path, outputs.join("\n") + "\n").unwrap();
    }
    let expected: Vec<&str> = include_str!("golden/expected.jsonl").lines().collect();
    assert_eq!(outputs.len(), expected.len());
    for (i, (got, want)) in outputs.iter().zip(&expected).enumerate() {
        let got: OutRecord = serde_json::from_str(got).unwrap();
        let want: OutRecord = serde_json::from_str(want).unwrap();
        assert_eq!(got, want, "record {} differs", i + 1);
    }
}

#[test]
fn poison_records_name_rule_table_position_and_column_but_not_the_value() {
    let program = program();
    let mut raw = inputs().remove(0);
    for column in &mut raw.new.0 {
        if column.name == "signup_epoch" {
            column.value = pgm_common::change::Datum::Text("secret-not-a-number".into());
        }
    }
    let err = program.rewrite(&raw).unwrap_err();
    let text = err.to_string();
    assert!(text.contains(r#""public"."customers" → "public"."clients""#), "{text}");
    assert!(text.contains("0/1000000#1") && text.contains("signed_up"), "{text}");
    assert!(!text.contains("secret"), "{text}");
}

#[test]
fn an_expression_whose_inputs_are_partly_absent_asks_for_replica_identity_full() {
    let rules = RulesFile::from_toml_str(
        r#"
[[table]]
source = "public.orders"
[[table.target]]
table = "public.orders"
[table.target.columns]
label = { expr = 'customer_id.to_string() + ":" + amount_cents.to_string()' }
"#,
    )
    .unwrap();
    let program = Program::compile(&rules, &source_catalog()).unwrap();
    let mut raw = inputs().remove(7); // the update of orders
    raw.new.0.retain(|c| c.name != "amount_cents");
    let err = program.rewrite(&raw).unwrap_err().to_string();
    assert!(err.contains("amount_cents") && err.contains("REPLICA IDENTITY FULL"), "{err}");
    // All inputs absent: the computed column is left out of the update (unchanged), not an error.
    raw.new.0.retain(|c| c.name == "id");
    let out = program.rewrite(&raw).unwrap();
    assert!(out.ops[0].new.get("label") == pgm_common::change::Cell::Absent);
}

#[test]
fn rules_that_cannot_work_fail_at_start_naming_table_and_rule() {
    for (rules, expected) in [
        ("[[table]]\nsource = \"public.nope\"\n[[table.target]]\ntable = \"public.x\"\n", "does not exist in DB1"),
        ("[[table]]\nsource = \"public.orders\"\n[[table.target]]\ntable = \"public.x\"\ndrop = [\"nope\"]\n", "\"nope\""),
        (
            "[[table]]\nsource = \"public.orders\"\n[[table.target]]\ntable = \"public.x\"\n[table.target.columns]\ny = { expr = 'amount_cent + 1' }\n",
            "amount_cent",
        ),
        (
            "[[table]]\nsource = \"public.orders\"\n[[table.target]]\ntable = \"public.x\"\nkeep_unlisted = false\n[table.target.columns]\ny = \"customer_id\"\n",
            "source key column \"id\" is not mapped",
        ),
        (
            "[[table]]\nsource = \"public.orders\"\n[[table.target]]\ntable = \"public.x\"\n[table.target.columns]\ny = { from = \"nope\", convert = \"int\" }\n",
            "not a column of",
        ),
    ] {
        let parsed = RulesFile::from_toml_str(rules).unwrap();
        let err = Program::compile(&parsed, &source_catalog()).err().expect(expected).to_string();
        assert!(err.contains(expected) && err.contains("public."), "{expected}: {err}");
    }
}

/// What cutover (sequences) and verify (which tables to compare) ask the compiled rules.
#[test]
fn targets_and_column_targets_follow_renames_splits_and_drops() {
    let program = program();
    let customers = TableRef::new("public", "customers");
    assert_eq!(
        program.targets_of(&customers),
        vec![TableRef::new("public", "clients"), TableRef::new("public", "client_emails")]
    );
    // `id` passes through to clients under its own name and is copied to client_emails as client_id.
    assert_eq!(
        program.column_targets(&customers, "id"),
        vec![
            (TableRef::new("public", "clients"), "id".to_owned()),
            (TableRef::new("public", "client_emails"), "client_id".to_owned())
        ]
    );
    // Dropped and converted columns take no sequence with them.
    assert!(program.column_targets(&customers, "full_name").is_empty());
    assert!(program.column_targets(&TableRef::new("public", "orders"), "amount_cents").is_empty());
    // unmatched = "drop": a table without rules goes nowhere.
    assert!(program.targets_of(&TableRef::new("public", "audit")).is_empty());
    assert!(program.column_targets(&TableRef::new("public", "audit"), "id").is_empty());
}
