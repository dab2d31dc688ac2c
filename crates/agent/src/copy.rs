//! Second repository copies (issue 13), at each maintenance pass: every set of this server due
//! for a copy (`api.agent_pending_copies`: its definition or server names a copy repository
//! and it has no verified copy there) is copied object by object, the manifest last (a copy
//! without it is incomplete), then verified at level 1 (every object re-read against the
//! catalog's SHA-256) before `api.report_copy` records it VERIFIED. A failure is recorded
//! FAILED with an alert and retried at the next pass; objects an earlier attempt completed
//! with the right size are kept (objects are written once), the verification decides.

use anyhow::Result;
use futures_util::StreamExt;
use pgbackman_db::copies::PendingCopy;
use pgbackman_dump::FileEntry;
use pgbackman_dump::upload::{StoreTarget, verify_objects};
use pgbackman_store::Store;
use tokio_util::sync::CancellationToken;

use crate::job::Ctx;

/// Copies what is due; returns (verified, failed). A catalog error stops the pass.
pub async fn run(ctx: &Ctx, stop: &CancellationToken) -> Result<(usize, usize)> {
    let pending = ctx
        .db(
            "agent_pending_copies",
            ctx.catalog.agent_pending_copies(ctx.server_id),
        )
        .await?;
    let (mut ok, mut failed) = (0, 0);
    for p in pending {
        let r = tokio::select! {
            r = copy_one(ctx, &p) => r,
            () = stop.cancelled() => return Ok((ok, failed)),
        };
        match &r {
            Ok(()) => {
                ok += 1;
                tracing::info!(
                    bck_id = p.bck_id,
                    repository_id = p.copy_repository_id,
                    "copy verified"
                );
            }
            Err(e) => {
                failed += 1;
                tracing::warn!(
                    bck_id = p.bck_id,
                    repository_id = p.copy_repository_id,
                    attempts = p.attempts + 1,
                    "copy failed: {e}"
                );
            }
        }
        ctx.db(
            "report_copy",
            ctx.catalog.report_copy(
                ctx.server_id,
                p.bck_id,
                p.copy_repository_id,
                r.err().as_deref(),
            ),
        )
        .await?;
    }
    Ok((ok, failed))
}

async fn copy_one(ctx: &Ctx, p: &PendingCopy) -> Result<(), String> {
    let mut files: Vec<FileEntry> = serde_json::from_value(p.files.clone())
        .map_err(|e| format!("the catalog's file list of BckID {}: {e}", p.bck_id))?;
    // The manifest last: its presence means the copy is complete.
    files.sort_by_key(|f| f.name == pgbackman_dump::MANIFEST_FILE);
    let src = crate::repository::open(ctx, p.repository_id).await?;
    let dst = crate::repository::open(ctx, p.copy_repository_id).await?;
    for f in &files {
        copy_object(
            src.as_ref(),
            dst.as_ref(),
            &format!("{}/{}", p.object_prefix, f.name),
            f.size,
        )
        .await?;
    }
    let target = StoreTarget {
        store: dst,
        prefix: p.object_prefix.clone(),
    };
    verify_objects(&target, &files)
        .await
        .map_err(|e| format!("the copy does not verify (level 1): {e}"))
}

/// One object from `src` to `dst` under the same key, streamed; kept when an earlier attempt
/// completed it with the right size.
async fn copy_object(src: &dyn Store, dst: &dyn Store, key: &str, size: u64) -> Result<(), String> {
    match dst.size(key).await.map_err(|e| e.to_string())? {
        Some(s) if s == size => return Ok(()),
        Some(s) => {
            return Err(format!(
                "object {key} of repository {} exists with {s} bytes, the set's has {size}: remove it from that repository by hand, then the next pass copies it",
                dst.name()
            ));
        }
        None => {}
    }
    let mut r = src.read(key).await.map_err(|e| e.to_string())?;
    let mut w = dst.create(key).await.map_err(|e| e.to_string())?;
    while let Some(chunk) = r.next().await {
        let written = match chunk {
            Ok(b) => w.write(b).await,
            Err(e) => Err(e),
        };
        if let Err(e) = written {
            let _ = w.abort().await;
            return Err(e.to_string());
        }
    }
    w.finish().await.map(|_| ()).map_err(|e| e.to_string())
}
