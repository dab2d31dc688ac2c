//! WAL retention on this server (issue 11): the WAL no kept base backup needs goes, in the
//! catalog's two phases (`sql/88_wal_retention.sql`). Per node, the catalog raises a tombstone
//! below the oldest kept base backup's start LSN (it decides, from LSNs and timelines, never
//! from file names); then this agent deletes the files below it in batches and forgets each
//! batch's rows once its files are gone. A pass stopped anywhere is resumed by the next one:
//! marked rows are listed again, files already gone are fine.

use std::collections::HashSet;

use anyhow::Result;
use pgbackman_core::roots::Roots;
use pgbackman_db::reconcile::Finding;
use pgbackman_db::wal_retention::MarkedWal;
use tokio_util::sync::CancellationToken;

use crate::job::Ctx;
use crate::retention::delete_paths;

/// Rows listed, deleted and forgotten at a time: one catalog round trip per batch, and a
/// bounded list in memory whatever the size of the ledger.
const BATCH: i32 = 2000;

/// What one WAL retention pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct WalSummary {
    /// Copies whose tombstone was raised (or confirmed) this pass.
    pub marked: usize,
    /// Ledger objects whose file was deleted and row forgotten.
    pub deleted: usize,
    /// The first refusal (a path outside the backup roots, or not removable), if any.
    pub refused: Option<String>,
    /// That refusal as a finding of the maintenance pass (an alert; show_reconciliation).
    pub blocked: Vec<Finding>,
}

pub async fn enforce(ctx: &Ctx, roots: &Roots, stop: &CancellationToken) -> Result<WalSummary> {
    let mut sum = WalSummary::default();
    for node in ctx
        .db(
            "wal_retention_nodes",
            ctx.catalog.wal_retention_nodes(ctx.server_id),
        )
        .await?
    {
        if stop.is_cancelled() {
            return Ok(sum);
        }
        let marks = ctx
            .db(
                "wal_retention_mark",
                ctx.catalog.wal_retention_mark(ctx.server_id, node),
            )
            .await?;
        for m in &marks {
            tracing::debug!(
                node_id = node,
                system_identifier = %m.system_identifier,
                below_lsn = %m.below_lsn,
                bck_id = m.bck_id,
                "WAL retention: WAL below the oldest kept base backup marked"
            );
        }
        sum.marked += marks.len();
    }
    // Objects whose file could not be deleted this pass: skipped, the rest goes on.
    let mut refused: HashSet<i64> = HashSet::new();
    while !stop.is_cancelled() {
        let batch = ctx
            .db(
                "wal_retention_marked",
                ctx.catalog.wal_retention_marked(ctx.server_id, BATCH),
            )
            .await?;
        let batch: Vec<MarkedWal> = batch
            .into_iter()
            .filter(|w| !refused.contains(&w.wal_id))
            .collect();
        if batch.is_empty() {
            break;
        }
        let results = {
            let roots = roots.clone();
            let paths: Vec<String> = batch.iter().map(|w| w.stored_path.clone()).collect();
            tokio::task::spawn_blocking(move || {
                paths
                    .iter()
                    .map(|p| delete_paths(&roots, std::slice::from_ref(p)).map(|_| ()))
                    .collect::<Vec<_>>()
            })
            .await?
        };
        let mut ids = Vec::with_capacity(batch.len());
        for (w, r) in batch.iter().zip(results) {
            match r {
                Ok(()) => ids.push(w.wal_id),
                Err(e) => {
                    // The row stays below the tombstone (no recovery window counts on it):
                    // the next pass retries.
                    tracing::error!(
                        node_id = w.node_id,
                        "WAL retention: {e}; the segment stays in the ledger, marked, until its file can be deleted"
                    );
                    refused.insert(w.wal_id);
                    if !sum.blocked.iter().any(|f| f.node_id == Some(w.node_id)) {
                        sum.blocked.push(Finding {
                            kind: "BLOCKED",
                            // One finding per node's WAL, however many files: one alert.
                            path: format!("WAL archive of NodeID {}", w.node_id),
                            bck_id: None,
                            node_id: Some(w.node_id),
                            detail: format!(
                                "WAL retention must delete WAL files of NodeID {}, but the agent refuses: {e}. Those segments \
                                 stay on disk and in the ledger, marked for deletion (the others are deleted); move the WAL \
                                 archive under a backup root of this agent, or fix the files' permissions; the next \
                                 maintenance pass retries",
                                w.node_id
                            ),
                        });
                    }
                    sum.refused.get_or_insert(e);
                }
            }
        }
        if ids.is_empty() {
            continue;
        }
        let n = ctx
            .db(
                "wal_retention_forget",
                ctx.catalog.wal_retention_forget(ctx.server_id, &ids),
            )
            .await?;
        sum.deleted += n as usize;
        if (n as usize) < ids.len() {
            // Some rows were no longer below a tombstone: never loop on them.
            break;
        }
    }
    if sum.deleted > 0 {
        tracing::info!(
            segments = sum.deleted,
            "WAL retention: WAL older than the oldest kept base backups deleted"
        );
    }
    Ok(sum)
}
