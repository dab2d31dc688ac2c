//! WAL objects stored but not yet in the ledger: one JSON file each in
//! `<state_dir>/wal_pending/`, written durably before the incoming file is removed, removed
//! once `api.report_wal_objects` answered `recorded` or `duplicate` (idempotent on the
//! catalog side, so a replay after a crash or an outage records each object once).

use std::path::{Path, PathBuf};

use anyhow::Result;
use pgbackman_db::wal::{Outcome, WalObject};

use crate::job::Ctx;

/// Objects sent per call.
const BATCH: usize = 200;

pub fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("wal_pending")
}

pub(super) fn file_name(o: &WalObject) -> String {
    // Unique per ledger key on this server.
    format!(
        "n{}-{}-{:08X}-{}-{}.json",
        o.node_id,
        o.system_identifier,
        o.timeline,
        o.segno.map(|s| format!("{s:016X}")).unwrap_or_default(),
        o.kind
    )
}

/// Records `o` as pending, durably.
pub fn add(state_dir: &Path, o: &WalObject) -> Result<PathBuf> {
    let d = dir(state_dir);
    crate::state::create_dir_0700(&d)?;
    let p = d.join(file_name(o));
    crate::state::write_atomic(&p, &serde_json::to_vec(o)?)?;
    Ok(p)
}

/// The pending objects, oldest file name first.
pub fn list(state_dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir(state_dir))
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "json"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Sends every pending object to the catalog, in batches, each within the catalog deadline.
/// Returns how many are still pending (the catalog did not answer).
pub async fn deliver(ctx: &Ctx) -> usize {
    let state_dir = &ctx.cfg.state_dir;
    let files = list(state_dir);
    for chunk in files.chunks(BATCH) {
        let mut batch = Vec::with_capacity(chunk.len());
        let mut paths = Vec::with_capacity(chunk.len());
        for p in chunk {
            match std::fs::read(p)
                .map_err(anyhow::Error::from)
                .and_then(|b| Ok(serde_json::from_slice::<WalObject>(&b)?))
            {
                Ok(o) => {
                    batch.push(o);
                    paths.push(p.clone());
                }
                Err(e) => {
                    tracing::error!(
                        "unreadable pending WAL report {}: {e:#}; it is skipped",
                        p.display()
                    );
                }
            }
        }
        if batch.is_empty() {
            continue;
        }
        let answer = ctx
            .db(
                "report_wal_objects",
                ctx.catalog.report_wal_objects(ctx.server_id, &batch),
            )
            .await;
        match answer {
            Ok(rows) => {
                for r in rows {
                    let Some(p) = paths.get(r.index) else {
                        continue;
                    };
                    if r.outcome == Outcome::Refused {
                        tracing::error!(
                            "the catalog refused WAL object {}: {} (WAL_CONFLICT alert raised; the stored file stays)",
                            p.display(),
                            r.detail
                        );
                    }
                    let _ = std::fs::remove_file(p);
                }
            }
            Err(e) if e.is_unreachable() => {
                tracing::debug!("WAL objects stay pending: {e}");
                return list(state_dir).len();
            }
            // The catalog answered no to the batch: one object it will never take must not
            // hold back the others. Each alone; a refused one is set aside, said in the log.
            Err(e) if batch.len() > 1 => {
                tracing::debug!("WAL batch refused ({e}); sending its objects one by one");
                for (o, p) in batch.iter().zip(&paths) {
                    match ctx
                        .db(
                            "report_wal_objects",
                            ctx.catalog
                                .report_wal_objects(ctx.server_id, std::slice::from_ref(o)),
                        )
                        .await
                    {
                        Ok(_) => {
                            let _ = std::fs::remove_file(p);
                        }
                        Err(e) if e.is_unreachable() => return list(state_dir).len(),
                        Err(e) => set_aside(state_dir, p, &e),
                    }
                }
            }
            Err(e) => set_aside(state_dir, &paths[0], &e),
        }
    }
    list(state_dir).len()
}

/// Moves a report the catalog refuses into `wal_pending/rejected/` (kept for the operator).
fn set_aside(state_dir: &Path, p: &Path, e: &pgbackman_db::DbError) {
    let dest = dir(state_dir).join("rejected");
    let moved = crate::state::create_dir_0700(&dest).and_then(|()| {
        let to = dest.join(p.file_name().unwrap_or_default());
        std::fs::rename(p, &to)?;
        Ok(to)
    });
    match moved {
        Ok(to) => tracing::error!(
            "the catalog refuses WAL report {}: {e}; kept in {} (the stored WAL file stays; fix the cause and move it back to {} to send it again)",
            p.display(),
            to.display(),
            dir(state_dir).display()
        ),
        Err(m) => tracing::error!("the catalog refuses WAL report {}: {e}; {m:#}", p.display()),
    }
}
