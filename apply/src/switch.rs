//! `pgm-apply switch`: DB2 is a streaming physical standby of DB1; turn it into the logical replica the pipeline
//! feeds, with no copy (the seed's physical_logical_syncer; PostgreSQL 17's pg_createsubscriber).
//!
//! ```text
//!  1. create the logical slot on DB1            → consistent point C: the slot decodes every transaction whose
//!                                                  commit record starts at or after C, and none before
//!  2. wait until DB2 has replayed past C
//!  3. promote DB2                               → it stops after the last record it replayed; the new timeline's
//!                                                  history file records where: the switch point S (≥ C)
//!  4. DB2's progress: applied = every commit before S
//! ```
//!
//! Exact because both sides are cut at record boundaries by the same test on the commit record's start LSN: DB2 has
//! replayed every record that starts before S (and so every transaction whose commit starts before S, whole); apply
//! skips exactly the streamed transactions whose commit LSN (wal2json's `lsn`, the commit record's start) is below S,
//! and applies the rest. Transactions committing in [C, S) are both replayed and streamed: skipped. A transaction
//! open when the slot is created delays step 1 until it ends (its commit is then before C: replayed, not streamed).
//! docs/lifecycle.md compares this with the recovery_target_lsn and pause-replay variants.

use std::time::{Duration, Instant};

use pgm_common::config::PipelineConfig;
use pgm_common::{Lsn, Position};
use tokio_postgres::Client;

use crate::progress;

async fn lsn(client: &Client, sql: &str) -> anyhow::Result<Option<Lsn>> {
    let text: Option<String> = client.query_one(sql, &[]).await?.get(0);
    Ok(match text {
        Some(t) => Some(t.parse().map_err(|e| anyhow::anyhow!("{sql}: {e}"))?),
        None => None,
    })
}

/// What the switch did.
pub struct Switched {
    pub consistent_point: Lsn,
    pub switch_point: Lsn,
    /// Streamed transactions DB2 already holds (commit in [C, S)): apply skips them.
    pub skipped: i64,
    pub elapsed: Duration,
}

pub async fn run(config: &PipelineConfig, replay_timeout: Duration) -> anyhow::Result<Switched> {
    let started = Instant::now();
    let db1 = crate::connect_plain(&config.source, "switch", "DB1").await?;
    let db2 = crate::connect_plain(&config.target, "switch", "DB2").await?;
    let slot = &config.capture.slot;

    // Preflight: DB2 must be a standby of this very DB1, streaming; the slot must not exist yet.
    let in_recovery: bool = db2.query_one("SELECT pg_is_in_recovery()", &[]).await?.get(0);
    if !in_recovery {
        anyhow::bail!(
            "DB2 {} is not in recovery: the standby switch needs DB2 to be a streaming physical standby of DB1 (use \
             `pgm-capture bootstrap` for an empty DB2 instead)",
            config.target.describe()
        );
    }
    let system = "SELECT system_identifier::text FROM pg_control_system()";
    let (id1, id2): (String, String) =
        (db1.query_one(system, &[]).await?.get(0), db2.query_one(system, &[]).await?.get(0));
    if id1 != id2 {
        anyhow::bail!(
            "DB2 is a standby of another cluster (system identifier {id2}, DB1 has {id1}): point target at DB1's standby"
        );
    }
    let receiving: Option<String> =
        db2.query_opt("SELECT status FROM pg_stat_wal_receiver", &[]).await?.map(|r| r.get(0));
    if receiving.as_deref() != Some("streaming") {
        anyhow::bail!(
            "DB2 is not streaming from DB1 (wal receiver: {}): fix primary_conninfo on DB2 and wait until it streams",
            receiving.as_deref().unwrap_or("none")
        );
    }
    if db1.query_opt("SELECT 1 FROM pg_replication_slots WHERE slot_name = $1", &[slot]).await?.is_some() {
        anyhow::bail!(
            "slot {slot} already exists on DB1: a switch needs a fresh slot (`pgm-capture slot drop` if it is left over)"
        );
    }

    // 1. The slot (pgoutput's publication before it). Creating it waits for the transactions running now to end.
    pgm_common::pgoutput::ensure_publication(&db1, config).await?;
    let row = db1
        .query_one(
            "SELECT lsn::text FROM pg_create_logical_replication_slot($1, $2)",
            &[slot, &config.capture.decoder.plugin()],
        )
        .await
        .map_err(|e| anyhow::anyhow!("creating slot {slot} on DB1: {e}"))?;
    let cp: Lsn = row.get::<_, String>(0).parse()?;
    tracing::info!(slot, consistent_point = %cp, "slot created; waiting for DB2 to replay past it");

    // 2. DB2 past C.
    let deadline = Instant::now() + replay_timeout;
    loop {
        let replayed = lsn(&db2, "SELECT pg_last_wal_replay_lsn()::text").await?;
        if replayed.is_some_and(|r| r >= cp) {
            break;
        }
        if Instant::now() > deadline {
            anyhow::bail!(
                "DB2 has not replayed up to the slot's consistent point {cp} within {} s (replayed {}): DB2 is not \
                 promoted; drop the slot (`pgm-capture slot drop`) and retry once DB2 keeps up",
                replay_timeout.as_secs(),
                replayed.map_or("nothing".into(), |r| r.to_string())
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // 3. Promote, then read where recovery ended.
    let promoted: bool = db2
        .query_one("SELECT pg_promote(true, 60)", &[])
        .await
        .map_err(|e| anyhow::anyhow!("promoting DB2: {e}"))?
        .get(0);
    if !promoted {
        anyhow::bail!("DB2 did not finish promotion within 60 s: see its server log");
    }
    let history = db2
        .query_one(
            "SELECT pg_read_file('pg_wal/' || name) FROM pg_ls_waldir()
             WHERE name LIKE '%.history' ORDER BY name DESC LIMIT 1",
            &[],
        )
        .await
        .map_err(|e| {
            anyhow::anyhow!("reading DB2's timeline history (needs superuser or pg_read_server_files): {e}")
        })?;
    let text: String = history.get(0);
    let s = switch_point(&text)
        .ok_or_else(|| anyhow::anyhow!("DB2's newest timeline history file has no switch point:\n{text}"))?;
    if s < cp {
        anyhow::bail!("DB2 ended recovery at {s}, before the slot's consistent point {cp}: this cannot be, stop");
    }

    // Transactions the slot will stream that DB2 already holds (for the report; peeking consumes nothing).
    let peek = match config.capture.decoder {
        pgm_common::config::Decoder::Wal2json => {
            db1.query_one(
                "SELECT count(*) FROM pg_logical_slot_peek_changes($1, $2::text::pg_lsn, NULL, 'format-version', '2')
                 WHERE data LIKE '{\"action\":\"B\"%'",
                &[slot, &s.to_string()],
            )
            .await
        }
        pgm_common::config::Decoder::Pgoutput => {
            let publication = pgm_common::change::quote_ident(&config.publication());
            db1.query_one(
                "SELECT count(*) FROM pg_logical_slot_peek_binary_changes($1, $2::text::pg_lsn, NULL,
                   'proto_version', '1', 'publication_names', $3) WHERE get_byte(data, 0) = ascii('B')",
                &[slot, &s.to_string(), &publication],
            )
            .await
        }
    };
    let skipped: i64 = peek.map(|r| r.get(0)).unwrap_or(-1);

    // 4. Where apply starts: every transaction whose commit starts before S is in DB2.
    let target = crate::connect_target(config).await?;
    let applied = Position::new(Lsn(s.0 - 1), Position::COMMIT);
    progress::reset(&target, &config.topics.prefix, applied).await?;
    Ok(Switched { consistent_point: cp, switch_point: s, skipped, elapsed: started.elapsed() })
}

/// The last switch point of a timeline history file (`1\t0/3000158\tno recovery target specified`).
pub fn switch_point(history: &str) -> Option<Lsn> {
    history.lines().rev().find_map(|line| line.split('\t').nth(1)?.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_newest_switch_point() {
        let text = "1\t0/3000158\tno recovery target specified\n\n2\t0/5A0F2E8\tno recovery target specified\n";
        assert_eq!(switch_point(text), Some(Lsn(0x5A0_F2E8)));
        assert_eq!(switch_point(""), None);
    }
}
