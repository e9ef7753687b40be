//! The rules file: how each source table becomes rows of DB2's tables. Reference: `docs/rules.md`.
//!
//! ```toml
//! unmatched = "pass"                  # tables without rules: "pass" (unchanged) or "drop"
//!
//! [[table]]
//! source = "public.customers"
//!
//! [[table.target]]                    # one or more targets: several = a split table
//! table = "public.clients"
//! keep_unlisted = false               # default true: source columns not named below pass with their own name
//! drop = ["legacy_flags"]
//! filter = 'email != ""'              # optional Rhai predicate over the source row
//! key = ["id"]                        # target key columns (default: the source key, mapped)
//! [table.target.columns]              # target column = spec
//! id = "id"                           # copy / rename
//! first_name = { expr = 'full_name.split(" ")[0]' }
//! amount = { from = "amount_cents", convert = "cents_to_numeric" }
//! origin = { const = "legacy" }
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use figment::providers::{Format, Toml};
use figment::Figment;
use pgm_common::change::TableRef;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unmatched {
    /// Carry the table unchanged (same schema, table and columns).
    #[default]
    Pass,
    /// Emit no operation for it (the out record's `ops` is empty).
    Drop,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RulesFile {
    #[serde(default)]
    pub unmatched: Unmatched,
    #[serde(default, rename = "table")]
    pub tables: Vec<TableRule>,
}

impl RulesFile {
    /// Whether `table`'s changes reach DB2 exactly as captured: no `[[table]]` rule names it and unmatched tables
    /// pass. Such tables need no transform (`transform.passthrough`).
    pub fn passes_unchanged(&self, table: &TableRef) -> bool {
        self.unmatched == Unmatched::Pass
            && !self
                .tables
                .iter()
                .any(|rule| rule.source.split_once('.').is_some_and(|(s, t)| s == table.schema && t == table.table))
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableRule {
    /// `schema.table` of DB1.
    pub source: String,
    #[serde(rename = "target")]
    pub targets: Vec<TargetRule>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetRule {
    /// `schema.table` of DB2.
    pub table: String,
    #[serde(default = "yes")]
    pub keep_unlisted: bool,
    #[serde(default)]
    pub drop: Vec<String>,
    #[serde(default)]
    pub filter: Option<String>,
    #[serde(default)]
    pub key: Option<Vec<String>>,
    #[serde(default)]
    pub columns: BTreeMap<String, ColumnSpec>,
}

fn yes() -> bool {
    true
}

impl TargetRule {
    /// Source columns that do not pass through under their own name: dropped, renamed or converted.
    pub fn hidden(&self) -> std::collections::HashSet<String> {
        let mut hidden: std::collections::HashSet<String> = self.drop.iter().cloned().collect();
        for (target, spec) in &self.columns {
            match spec {
                ColumnSpec::Copy(from) if from != target => {
                    hidden.insert(from.clone());
                }
                ColumnSpec::Convert { from, .. } => {
                    hidden.insert(from.clone());
                }
                _ => {}
            }
        }
        hidden
    }

    /// Every target column this rule writes, with the source column it copies (None when computed), given the
    /// source table's column names.
    pub fn produced<'a>(&'a self, source_columns: impl Iterator<Item = &'a str>) -> Vec<(String, Option<String>)> {
        let mut out: Vec<(String, Option<String>)> = self
            .columns
            .iter()
            .map(|(target, spec)| match spec {
                ColumnSpec::Copy(from) => (target.clone(), Some(from.clone())),
                _ => (target.clone(), None),
            })
            .collect();
        if self.keep_unlisted {
            let hidden = self.hidden();
            for name in source_columns {
                if !hidden.contains(name) && !self.columns.contains_key(name) {
                    out.push((name.to_owned(), Some(name.to_owned())));
                }
            }
        }
        out
    }
}

/// How a target column gets its value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged, deny_unknown_fields)]
pub enum ColumnSpec {
    /// `target = "source"`: copy (a rename when the names differ).
    Copy(String),
    /// A declarative conversion of one source column (Rust, not a script).
    Convert {
        from: String,
        convert: Conversion,
        /// For `json_field`: dot-separated path (`address.city`).
        #[serde(default)]
        path: Option<String>,
    },
    /// A Rhai expression over the source row's columns.
    Expr {
        expr: String,
        /// The type of the result for DB2 (`text`, `numeric`, …); guessed from the value when absent.
        #[serde(default, rename = "type")]
        type_name: Option<String>,
    },
    /// A constant (inserted rows only); `null = true` for SQL NULL.
    Const {
        #[serde(rename = "const")]
        value: Option<String>,
        #[serde(default)]
        null: bool,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Conversion {
    /// Text holding an integer → bigint.
    Int,
    /// Any value → its text.
    Text,
    /// Integer cents → numeric with two decimals, exact at any size.
    CentsToNumeric,
    /// Numeric with at most two non-zero decimals → integer cents (the inverse of `cents_to_numeric`; a value with
    /// a third decimal is an error, never rounded).
    NumericToCents,
    /// Seconds since 1970 (integer or decimal) → timestamptz in UTC.
    EpochToTimestamptz,
    /// A field of a json/jsonb value (`path`); strings unquoted, other JSON as its text, JSON null as NULL.
    JsonField,
}

#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    #[error("rules file {path} cannot be read: {source}")]
    Unreadable {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("rules file: {0}")]
    Parse(String),
    #[error("rule for {table} → {target}: {problem}")]
    Invalid { table: String, target: String, problem: String },
}

impl RulesFile {
    pub fn load(path: &Path) -> Result<Self, RulesError> {
        std::fs::metadata(path)
            .map_err(|source| RulesError::Unreadable { path: path.display().to_string(), source })?;
        Figment::new().merge(Toml::file_exact(path)).extract().map_err(|e| RulesError::Parse(e.to_string()))
    }

    pub fn from_toml_str(text: &str) -> Result<Self, RulesError> {
        Figment::new().merge(Toml::string(text)).extract().map_err(|e| RulesError::Parse(e.to_string()))
    }
}
