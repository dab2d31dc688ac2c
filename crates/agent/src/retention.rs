//! Deleting backup sets on this server: retention (two-phase: mark in the catalog, delete the
//! files, remove the row) and the removal of files the catalog queued (forced deletions,
//! deleted nodes). Every step is safe to interrupt: a marked row is finished at the next pass,
//! and files already gone are fine.
//!
//! Only paths strictly under one of this agent's backup roots (`crate::roots`: its `backup_dir`
//! and the absolute partitions it writes to) are ever removed, never a root itself nor the
//! staging area: a catalog row naming anything else is refused, and the refusal is a BLOCKED
//! finding of the pass (an alert, and `show_retention_plan` shows the set as blocked, with why).

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use anyhow::Result;
use pgbackman_core::roots::Roots;
use pgbackman_db::reconcile::Finding;
use pgbackman_db::retention::MarkedSet;
use tokio_util::sync::CancellationToken;

use crate::job::Ctx;
use crate::roots::deletable;

/// Removes every path (directories recursively, missing ones ignored) after checking all of
/// them: one refused path removes nothing.
pub fn delete_paths(roots: &Roots, paths: &[String]) -> Result<u64, String> {
    let checked: Vec<PathBuf> = paths
        .iter()
        .map(|p| deletable(roots, Path::new(p)))
        .collect::<Result<_, _>>()?;
    let mut removed = 0;
    for p in checked {
        let r = match std::fs::symlink_metadata(&p) {
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            Err(e) => Err(e),
            Ok(m) if m.is_dir() => std::fs::remove_dir_all(&p),
            Ok(_) => std::fs::remove_file(&p),
        };
        match r {
            Ok(()) => removed += 1,
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(format!("deleting {}: {e}", p.display())),
        }
    }
    Ok(removed)
}

async fn delete_blocking(roots: &Roots, paths: Vec<String>) -> Result<u64, String> {
    let roots = roots.clone();
    tokio::task::spawn_blocking(move || delete_paths(&roots, &paths))
        .await
        .map_err(|e| format!("deletion task failed: {e}"))?
}

/// What one retention run did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    pub deleted: usize,
    pub refused: usize,
    /// The refused deletions, as findings of the maintenance pass.
    pub blocked: Vec<Finding>,
}

impl Summary {
    fn block(&mut self, bck_id: i64, node_id: Option<i64>, dir: Option<&str>, why: String) {
        self.refused += 1;
        self.blocked.push(Finding {
            kind: "BLOCKED",
            path: dir.map_or_else(|| format!("BckID {bck_id}"), str::to_string),
            bck_id: Some(bck_id),
            node_id,
            detail: format!(
                "retention must delete BckID {bck_id}, but the agent refuses: {why}. The set stays on disk and in the catalog; \
                 move it under a backup root of this agent, or delete it by hand and then with delete_backup_definition_id --force-deletion"
            ),
        });
    }
}

/// Phases 2 and 3 of one marked set: files, then the row.
async fn finish(ctx: &Ctx, roots: &Roots, set: MarkedSet, sum: &mut Summary) -> Result<()> {
    let deleted = match set.repository_id {
        // A set in a repository: its copies' objects, then its own, the manifest first.
        Some(id) => {
            let mut r = Ok(());
            for (copy, keys) in &set.copies {
                r = delete_objects(ctx, *copy, keys).await;
                if r.is_err() {
                    break;
                }
            }
            match r {
                Ok(()) => delete_objects(ctx, id, &set.object_keys).await,
                Err(e) => Err(e),
            }
        }
        None => delete_blocking(roots, set.paths).await.map(|_| ()),
    };
    match deleted {
        Ok(_) => {
            ctx.db(
                "retention_forget",
                ctx.catalog.retention_forget(ctx.server_id, set.bck_id),
            )
            .await?;
            tracing::info!(
                bck_id = set.bck_id,
                dir = set.backup_dir.as_deref().unwrap_or("-"),
                "retention: backup deleted"
            );
            sum.deleted += 1;
        }
        Err(e) => {
            // The row stays DELETING: the next pass retries, the set is never used again.
            tracing::error!(bck_id = set.bck_id, "retention: {e}");
            sum.block(set.bck_id, None, set.backup_dir.as_deref(), e);
        }
    }
    Ok(())
}

/// Deletes the objects of a set in repository `id` (absent ones are fine: a resumed pass).
async fn delete_objects(ctx: &Ctx, id: i64, keys: &[String]) -> Result<(), String> {
    let store = crate::repository::open(ctx, id).await?;
    for k in keys {
        store.delete(k).await.map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Finishes the sets marked earlier (an interrupted pass), then deletes what the plan deletes
/// on this server: the plan of `show_retention_plan`, from rows read now. Any catalog error
/// stops the run before another file is touched.
pub async fn enforce(ctx: &Ctx, roots: &Roots, stop: &CancellationToken) -> Result<Summary> {
    let mut sum = Summary::default();
    for set in ctx
        .db(
            "retention_marked",
            ctx.catalog.retention_marked(ctx.server_id),
        )
        .await?
    {
        if stop.is_cancelled() {
            return Ok(sum);
        }
        finish(ctx, roots, set, &mut sum).await?;
    }
    let rows = ctx
        .db(
            "retention_rows_of_server",
            ctx.catalog.retention_rows_of_server(ctx.server_id),
        )
        .await?;
    for (r, rule) in rows.plan() {
        if stop.is_cancelled() {
            break;
        }
        if !rule.deletes() || r.backup_server_id != ctx.server_id {
            continue;
        }
        // Refuse before marking, so a row pointing elsewhere is never left half-deleted.
        if let Some(dir) = &r.backup_dir
            && let Err(e) = deletable(roots, Path::new(dir))
        {
            tracing::error!(bck_id = r.bck_id, "retention: {e}");
            sum.block(r.bck_id, None, Some(dir), e);
            continue;
        }
        match ctx
            .db(
                "retention_mark",
                ctx.catalog.retention_mark(ctx.server_id, r),
            )
            .await?
        {
            Some(set) => {
                tracing::info!(bck_id = r.bck_id, rule = %rule, "retention: marked for deletion");
                finish(ctx, roots, set, &mut sum).await?;
            }
            None => {
                tracing::info!(
                    bck_id = r.bck_id,
                    "retention: the catalog changed since the plan; kept for now"
                )
            }
        }
    }
    Ok(sum)
}

/// Files of force-deleted catalog rows (delete_backup_definition_* force-deletion, expired
/// DELETED definitions) held by this server.
pub async fn forced_deletions(ctx: &Ctx, roots: &Roots, stop: &CancellationToken) -> Result<usize> {
    let mut n = 0;
    for d in ctx
        .db(
            "forced_deletions",
            ctx.catalog.forced_deletions(ctx.server_id),
        )
        .await?
    {
        if stop.is_cancelled() {
            break;
        }
        match delete_blocking(roots, d.paths).await {
            Ok(_) => {
                ctx.db(
                    "forced_deletion_done",
                    ctx.catalog.forced_deletion_done(ctx.server_id, d.del_id),
                )
                .await?;
                tracing::info!(
                    del_id = d.del_id,
                    bck_id = d.bck_id.unwrap_or_default(),
                    "forced deletion done"
                );
                n += 1;
            }
            Err(e) => {
                tracing::error!(
                    del_id = d.del_id,
                    bck_id = d.bck_id.unwrap_or_default(),
                    "forced deletion: {e}"
                )
            }
        }
    }
    Ok(n)
}

/// The directories of deleted nodes on this server (their backups were all deleted before the
/// node could be; what is left is empty directories and strays). An absolute partition is a
/// backup root: its content goes, the directory itself (perhaps a mount point) stays.
pub async fn deleted_nodes(ctx: &Ctx, roots: &Roots, stop: &CancellationToken) -> Result<usize> {
    let mut n = 0;
    for d in ctx
        .db(
            "nodes_to_delete",
            ctx.catalog.nodes_to_delete(ctx.server_id),
        )
        .await?
    {
        if stop.is_cancelled() {
            break;
        }
        let dir = match pgbackman_core::roots::node_dir(
            &ctx.backup_dir(),
            &ctx.cfg.state_dir,
            &d.backup_partition,
        ) {
            Ok(dir) => dir,
            Err(e) => {
                tracing::error!(node_id = d.node_id, "deleted node: {e}");
                continue;
            }
        };
        let r = if d.shared {
            tracing::info!(
                node_id = d.node_id,
                dir = %dir.display(),
                "deleted node: its directory is shared with another node and stays"
            );
            Ok(0)
        } else if roots.all().contains(&dir.as_path()) {
            let content: Vec<String> = std::fs::read_dir(&dir)
                .map(|rd| {
                    rd.flatten()
                        .map(|e| e.path().display().to_string())
                        .collect()
                })
                .unwrap_or_default();
            delete_blocking(roots, content).await
        } else {
            delete_blocking(roots, vec![dir.display().to_string()]).await
        };
        match r {
            Ok(_) => {
                ctx.db(
                    "node_deletion_done",
                    ctx.catalog.node_deletion_done(ctx.server_id, d.node_id),
                )
                .await?;
                tracing::info!(node_id = d.node_id, dir = %dir.display(), "deleted node: directory removed");
                n += 1;
            }
            Err(e) => tracing::error!(node_id = d.node_id, "deleted node: {e}"),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_symlink_out_of_the_backup_dir_is_refused_and_missing_files_are_fine() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("backups");
        let outside = t.path().join("outside");
        let (roots, _) = Roots::new(&root, &t.path().join("state"), []);
        std::fs::create_dir_all(root.join("n/db/set1")).unwrap();
        std::fs::create_dir_all(outside.join("keep")).unwrap();
        std::fs::write(root.join("n/db/set1/dump"), b"x").unwrap();
        std::fs::write(outside.join("keep/file"), b"x").unwrap();
        std::os::unix::fs::symlink(&outside, root.join("link")).unwrap();
        let s = |p: PathBuf| p.display().to_string();
        // Through the link: refused, nothing removed.
        let e = delete_paths(&roots, &[s(root.join("link/keep"))]).unwrap_err();
        assert!(e.contains("symbolic link"), "{e}");
        assert!(outside.join("keep/file").exists());
        // One refused path in a batch removes nothing of the batch.
        assert!(delete_paths(&roots, &[s(root.join("n/db/set1")), "/etc".into()]).is_err());
        assert!(root.join("n/db/set1/dump").exists());
        // A set, then its files again (already gone) and a path that never existed.
        let n = delete_paths(
            &roots,
            &[
                s(root.join("n/db/set1")),
                s(root.join("n/db/set1/dump")),
                s(root.join("n/db/never")),
            ],
        )
        .unwrap();
        assert_eq!(n, 1);
        assert!(!root.join("n/db/set1").exists());
        assert!(root.join("n/db").exists());
        // The link itself may go; its target stays.
        delete_paths(&roots, &[s(root.join("link"))]).unwrap();
        assert!(outside.join("keep/file").exists());
    }
}
