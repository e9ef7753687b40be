//! The rule engine: how each source table's changes become DB2's (`rules` is the file format, `catalog` reads
//! DB1/DB2, `expr` and `convert` compute values, `rewrite` applies the compiled rules to one record).
//!
//! pgm-transform runs it on every raw record; pgm-apply uses it at cutover (which sequences map where) and to know
//! which tables pass unchanged. Stages never import each other: this crate is what they share.

pub mod catalog;
pub mod convert;
pub mod expr;
pub mod rewrite;
pub mod rules;

use pgm_common::config::PipelineConfig;

/// The rules cannot be loaded or compiled against DB1's catalog.
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error(transparent)]
    Rules(#[from] rules::RulesError),
    #[error("cannot read the catalog of {db}: {source}")]
    Catalog {
        db: String,
        #[source]
        source: pgm_common::config::ConnectError,
    },
    #[error("{0}")]
    Refused(String),
}

pub fn load_rules(config: &PipelineConfig) -> Result<rules::RulesFile, CompileError> {
    Ok(match &config.transform.rules {
        Some(path) => rules::RulesFile::load(path)?,
        None => rules::RulesFile::default(),
    })
}

pub async fn load_catalog(pg: &pgm_common::config::PgConfig) -> Result<catalog::Catalog, CompileError> {
    catalog::Catalog::load(pg).await.map_err(|source| CompileError::Catalog { db: pg.describe(), source })
}

/// Compiles the rules against DB1 and refuses filters that need old values the stream does not carry.
pub async fn compile(config: &PipelineConfig) -> Result<rewrite::Program, CompileError> {
    let rules = load_rules(config)?;
    let source =
        if rules.tables.is_empty() { catalog::Catalog::default() } else { load_catalog(&config.source).await? };
    compile_with(&rules, &source)
}

/// [`compile`] from rules and DB1's catalog already loaded.
pub fn compile_with(rules: &rules::RulesFile, source: &catalog::Catalog) -> Result<rewrite::Program, CompileError> {
    let program = rewrite::Program::compile(rules, source)?;
    let refused: Vec<String> = program
        .filters_needing_full_identity(source)
        .into_iter()
        .filter(|(table, _)| !source.tables.get(table).is_some_and(|t| t.replica_full))
        .map(|(table, rule)| format!("rule {rule}: its filter reads non-key columns, so updates must carry the old row: run ALTER TABLE {table} REPLICA IDENTITY FULL on DB1"))
        .collect();
    if !refused.is_empty() {
        return Err(CompileError::Refused(refused.join("; ")));
    }
    Ok(program)
}
