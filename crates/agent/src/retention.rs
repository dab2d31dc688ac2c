//! Deleting backup sets on this server: retention (two-phase: mark in the catalog, delete the
//! files, remove the row) and the removal of files the catalog queued (forced deletions,
//! deleted nodes). Every step is safe to interrupt: a marked row is finished at the next pass,
//! and files already gone are fine.
//!
//! Only paths under this agent's `backup_dir` are ever removed (never the directory itself nor
//! its staging area): a catalog row naming anything else is refused and logged.

use std::io::ErrorKind;
use std::path::{Component, Path, PathBuf};

use anyhow::Result;
use pgbackman_db::retention::MarkedSet;
use tokio_util::sync::CancellationToken;

use crate::job::Ctx;

/// Checks that `p` may be removed by an agent whose backup directory is `root`: absolute,
/// without `..`, strictly below `root` and outside `root/staging`, and — where it exists — not
/// reached through a symbolic link that leads out of `root`.
pub fn checked_target(root: &Path, p: &Path) -> Result<PathBuf, String> {
    let refuse = |why: &str| {
        Err(format!(
            "refusing to delete {}: {why} (only paths under the agent's backup_dir {} are deleted)",
            p.display(),
            root.display()
        ))
    };
    if !p.is_absolute() {
        return refuse("not an absolute path");
    }
    if p.components().any(|c| c == Component::ParentDir) {
        return refuse("it contains \"..\"");
    }
    // Lexical form: components() already drops "." and repeated slashes.
    let norm: PathBuf = p.components().collect();
    let root_norm: PathBuf = root.components().collect();
    let Ok(rest) = norm.strip_prefix(&root_norm) else {
        return refuse("outside the backup directory");
    };
    match rest.components().next() {
        None => return refuse("it is the backup directory itself"),
        Some(Component::Normal(first)) if first == "staging" => {
            return refuse("it is in the staging area");
        }
        _ => {}
    }
    // Symbolic links: the parent must resolve inside the resolved root. (The last component
    // itself may be a link: removing it removes the link, never its target.)
    if let Some(parent) = norm.parent()
        && let Ok(real_parent) = parent.canonicalize()
    {
        let real_root = root.canonicalize().unwrap_or_else(|_| root_norm.clone());
        if !real_parent.starts_with(&real_root) {
            return refuse("a symbolic link leads outside the backup directory");
        }
    }
    Ok(norm)
}

/// Removes every path (directories recursively, missing ones ignored) after checking all of
/// them: one refused path removes nothing.
pub fn delete_paths(root: &Path, paths: &[String]) -> Result<u64, String> {
    let checked: Vec<PathBuf> = paths
        .iter()
        .map(|p| checked_target(root, Path::new(p)))
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

async fn delete_blocking(root: PathBuf, paths: Vec<String>) -> Result<u64, String> {
    tokio::task::spawn_blocking(move || delete_paths(&root, &paths))
        .await
        .map_err(|e| format!("deletion task failed: {e}"))?
}

/// What one retention run did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub deleted: usize,
    pub refused: usize,
}

/// Phases 2 and 3 of one marked set: files, then the row.
async fn finish(ctx: &Ctx, set: MarkedSet, sum: &mut Summary) -> Result<()> {
    match delete_blocking(ctx.cfg.backup_dir.clone(), set.paths).await {
        Ok(_) => {
            ctx.db(
                "retention_forget",
                ctx.catalog.retention_forget(ctx.server_id, set.bck_id),
            )
            .await?;
            tracing::info!(bck_id = set.bck_id, dir = ?set.backup_dir, "retention: backup deleted");
            sum.deleted += 1;
        }
        Err(e) => {
            // The row stays DELETING: the next pass retries, the set is never used again.
            tracing::error!(bck_id = set.bck_id, "retention: {e}");
            sum.refused += 1;
        }
    }
    Ok(())
}

/// Finishes the sets marked earlier (an interrupted pass), then deletes what the plan deletes
/// on this server: the plan of `show_retention_plan`, from rows read now. Any catalog error
/// stops the run before another file is touched.
pub async fn enforce(ctx: &Ctx, stop: &CancellationToken) -> Result<Summary> {
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
        finish(ctx, set, &mut sum).await?;
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
            && let Err(e) = checked_target(&ctx.cfg.backup_dir, Path::new(dir))
        {
            tracing::error!(bck_id = r.bck_id, "retention: {e}");
            sum.refused += 1;
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
                finish(ctx, set, &mut sum).await?;
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
pub async fn forced_deletions(ctx: &Ctx, stop: &CancellationToken) -> Result<usize> {
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
        match delete_blocking(ctx.cfg.backup_dir.clone(), d.paths).await {
            Ok(_) => {
                ctx.db(
                    "forced_deletion_done",
                    ctx.catalog.forced_deletion_done(ctx.server_id, d.del_id),
                )
                .await?;
                tracing::info!(del_id = d.del_id, bck_id = ?d.bck_id, "forced deletion done");
                n += 1;
            }
            Err(e) => {
                tracing::error!(del_id = d.del_id, bck_id = ?d.bck_id, "forced deletion: {e}")
            }
        }
    }
    Ok(n)
}

/// The directories of deleted nodes on this server (their backups were all deleted before the
/// node could be; what is left is empty directories and strays).
pub async fn deleted_nodes(ctx: &Ctx, stop: &CancellationToken) -> Result<usize> {
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
        let dir = {
            let p = PathBuf::from(&d.backup_partition);
            if p.is_absolute() {
                p
            } else {
                ctx.cfg.backup_dir.join(p)
            }
        };
        let r = if d.shared {
            tracing::info!(
                node_id = d.node_id,
                dir = %dir.display(),
                "deleted node: its directory is shared with another node and stays"
            );
            Ok(0)
        } else {
            delete_blocking(ctx.cfg.backup_dir.clone(), vec![dir.display().to_string()]).await
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
    fn only_paths_strictly_under_the_backup_dir() {
        let root = Path::new("/srv/pgbackman");
        let ok = |p: &str| checked_target(root, Path::new(p)).is_ok();
        assert!(ok(
            "/srv/pgbackman/pgsql_node_1/shop/20260101T000000Z-job1-def1-FULL"
        ));
        assert!(ok("/srv/pgbackman/./pgsql_node_1//x"));
        assert!(ok("/srv/pgbackman/pgsql_node_1"));
        for bad in [
            "/srv/pgbackman",
            "/srv/pgbackman/",
            "/srv/pgbackman/.",
            "/srv/pgbackman/staging/12",
            "/srv/pgbackman/staging",
            "/srv/pgbackman/../etc",
            "/srv/pgbackman/x/../../etc",
            "/srv/pgbackmanx/a",
            "/etc/passwd",
            "relative/path",
            "",
        ] {
            assert!(!ok(bad), "{bad:?} accepted");
        }
    }

    #[test]
    fn a_symlink_out_of_the_backup_dir_is_refused_and_missing_files_are_fine() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("backups");
        let outside = t.path().join("outside");
        std::fs::create_dir_all(root.join("n/db/set1")).unwrap();
        std::fs::create_dir_all(outside.join("keep")).unwrap();
        std::fs::write(root.join("n/db/set1/dump"), b"x").unwrap();
        std::fs::write(outside.join("keep/file"), b"x").unwrap();
        std::os::unix::fs::symlink(&outside, root.join("link")).unwrap();
        let s = |p: PathBuf| p.display().to_string();
        // Through the link: refused, nothing removed.
        let e = delete_paths(&root, &[s(root.join("link/keep"))]).unwrap_err();
        assert!(e.contains("symbolic link"), "{e}");
        assert!(outside.join("keep/file").exists());
        // One refused path in a batch removes nothing of the batch.
        assert!(delete_paths(&root, &[s(root.join("n/db/set1")), "/etc".into()]).is_err());
        assert!(root.join("n/db/set1/dump").exists());
        // A set, then its files again (already gone) and a path that never existed.
        let n = delete_paths(
            &root,
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
        delete_paths(&root, &[s(root.join("link"))]).unwrap();
        assert!(outside.join("keep/file").exists());
    }
}
