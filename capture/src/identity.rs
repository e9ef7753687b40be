//! Capture's guard against tables whose updates and deletes would be lost ([`pgm_common::identity`]).

use pgm_common::config::PipelineConfig;

use crate::CaptureError;

/// Refuses to start when a replicated table's updates and deletes would be lost.
pub async fn refuse_tables_without_identity(
    client: &tokio_postgres::Client,
    config: &PipelineConfig,
) -> Result<(), CaptureError> {
    let missing = pgm_common::identity::tables_without_identity(client, &config.tables()).await.map_err(|source| {
        CaptureError::Source { what: "read the replica identity of the replicated tables".into(), source }
    })?;
    match pgm_common::identity::refusal(&missing) {
        None => Ok(()),
        Some(problem) => Err(CaptureError::NoIdentity(problem)),
    }
}
