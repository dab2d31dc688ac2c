//! WAL retention on this server (issue 11): the WAL no kept base backup needs goes, in the
//! catalog's two phases (`sql/88_wal_retention.sql`). Per node, the catalog raises a tombstone
//! below the oldest kept base backup's start LSN (it decides, from LSNs and timelines, never
//! from file names); then this agent deletes the files below it in batches and forgets each
//! batch's rows once its files are gone. A pass stopped anywhere is resumed by the next one:
//! marked rows are listed again, files already gone are fine.

use anyhow::Result;
use pgbackman_core::roots::Roots;
use pgbackman_db::reconcile::Finding;
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
    /// Why the pass stopped before the end (a path refused or not removable), if it did.
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
    while !stop.is_cancelled() {
        let batch = ctx
            .db(
                "wal_retention_marked",
                ctx.catalog.wal_retention_marked(ctx.server_id, BATCH),
            )
            .await?;
        if batch.is_empty() {
            break;
        }
        let paths: Vec<String> = batch.iter().map(|w| w.stored_path.clone()).collect();
        let r = {
            let roots = roots.clone();
            tokio::task::spawn_blocking(move || delete_paths(&roots, &paths))
                .await
                .map_err(|e| format!("deletion task failed: {e}"))
                .and_then(|r| r)
        };
        if let Err(e) = r {
            // The rows stay below the tombstone (no recovery window counts on them): the
            // next pass retries; the same batch would fail again now.
            tracing::error!(
                node_id = batch[0].node_id,
                "WAL retention: {e}; the segments stay in the ledger, marked, until their files can be deleted"
            );
            sum.blocked.push(Finding {
                kind: "BLOCKED",
                // One finding per node's WAL, however many files: one alert, not one per pass.
                path: format!("WAL archive of NodeID {}", batch[0].node_id),
                bck_id: None,
                node_id: Some(batch[0].node_id),
                detail: format!(
                    "WAL retention must delete WAL files of NodeID {}, but the agent refuses: {e}. The segments stay on disk \
                     and in the ledger, marked for deletion; move the WAL archive under a backup root of this agent, or fix \
                     the file's permissions; the next maintenance pass retries",
                    batch[0].node_id
                ),
            });
            sum.refused = Some(e);
            break;
        }
        let ids: Vec<i64> = batch.iter().map(|w| w.wal_id).collect();
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
