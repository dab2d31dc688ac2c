//! Reconciliation of the catalog with the disk, a step of each maintenance pass: the set
//! directories under this agent's backup roots against the catalog rows, both ways.
//!
//! What is safe to do automatically, and so what is only reported:
//! - A set on disk that no catalog row names (an ORPHAN) is **never deleted**: it may be a
//!   running job's (a marker in `running/`), wait in this agent's spool, belong to a job the
//!   catalog still has open, or to another server's agent sharing an absolute partition (its
//!   job is another server's) — those are skipped; a set of a fire run offline (no job id) is
//!   left alone for a day (another agent's spool may still hold its result). Any other orphan
//!   is verified (level 1) and reported, complete or damaged, with a MAINTENANCE alert: a
//!   complete one can still be restored by hand, a damaged one is for a DBA to remove.
//! - A catalog row of this server whose set directory is gone (MISSING) is reported, never
//!   forgotten: an unmounted partition looks exactly like that. When more than a few sets of one
//!   root are gone, one finding names the root instead of one per set.
//! - Blocked deletions (retention) and refused partitions come from the other steps of the pass.
//!
//! The findings replace those of the previous pass in the catalog (`api.record_reconciliation`:
//! an alert for each one seen for the first time); `show_reconciliation` lists them.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, SystemTime};

use anyhow::Result;
use pgbackman_core::roots::{Roots, is_set_name};
use pgbackman_db::reconcile::Finding;

use crate::job::Ctx;

/// How long a set of an offline fire without a catalog row is left alone.
const OFFLINE_GRACE: Duration = Duration::from_secs(24 * 3600);
/// More missing sets than this under one root become one finding about the root.
const MISSING_PER_ROOT: usize = 10;
/// How deep under a root set directories are looked for (`<partition…>/<db>/<set>`).
const MAX_DEPTH: usize = 6;
/// The daemon walks its roots and checks every row at most this often (a pass runs every few
/// minutes; a walk reads every set directory and every row of the server). `--maintenance`
/// always walks.
const WALK_EVERY: Duration = Duration::from_secs(3600);

static LAST_WALK: std::sync::Mutex<Option<std::time::Instant>> = std::sync::Mutex::new(None);

/// Whether this pass walks the roots (and so replaces the ORPHAN and MISSING findings).
pub fn walk_due() -> bool {
    let mut last = LAST_WALK.lock().unwrap_or_else(|e| e.into_inner());
    if last.is_some_and(|t| t.elapsed() < WALK_EVERY) {
        return false;
    }
    *last = Some(std::time::Instant::now());
    true
}

/// A walk that did not finish: the next pass walks again.
pub fn walk_failed() {
    *LAST_WALK.lock().unwrap_or_else(|e| e.into_inner()) = None;
}

/// The set directories under `roots` (never following a symbolic link, never in staging).
pub fn sets_on_disk(roots: &Roots) -> Vec<PathBuf> {
    let all: Vec<PathBuf> = roots.all().iter().map(|r| r.to_path_buf()).collect();
    let staging = all[0].join("staging");
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    fn walk(
        dir: &Path,
        depth: usize,
        staging: &Path,
        seen: &mut HashSet<PathBuf>,
        out: &mut Vec<PathBuf>,
    ) {
        if depth > MAX_DEPTH || dir == staging || !seen.insert(dir.to_path_buf()) {
            return;
        }
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let Ok(t) = e.file_type() else { continue };
            if !t.is_dir() {
                continue;
            }
            let p = e.path();
            if e.file_name().to_str().is_some_and(is_set_name) {
                if seen.insert(p.clone()) {
                    out.push(p);
                }
            } else {
                walk(&p, depth + 1, staging, seen, out);
            }
        }
    }
    for r in &all {
        walk(r, 0, &staging, &mut seen, &mut out);
    }
    out.sort();
    out
}

/// The job id in a set's name (0 for an offline fire, which has none yet).
fn job_of(dir: &Path) -> i64 {
    dir.file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.split('-').nth(1))
        .and_then(|j| j.strip_prefix("job"))
        .and_then(|j| j.parse().ok())
        .unwrap_or(0)
}

/// Set directories this agent is writing or has a result for: not orphans.
fn own_in_flight(ctx: &Ctx) -> HashSet<PathBuf> {
    let mut out: HashSet<PathBuf> = crate::spool::running_markers(&ctx.cfg.state_dir)
        .into_iter()
        .filter_map(|m| m.set_dir)
        .collect();
    for p in crate::spool::list(&ctx.cfg.state_dir).unwrap_or_default() {
        if let Ok(e) = crate::spool::read(&p)
            && let Some(d) = e.result["backup_dir"].as_str()
        {
            out.insert(PathBuf::from(d));
        }
    }
    out
}

/// The ORPHAN and MISSING findings of this pass.
pub async fn findings(ctx: &Ctx, roots: &Roots) -> Result<Vec<Finding>> {
    let r = roots.clone();
    let on_disk = tokio::task::spawn_blocking(move || sets_on_disk(&r)).await?;
    let dirs: Vec<String> = on_disk.iter().map(|p| p.display().to_string()).collect();
    let jobs: Vec<i64> = on_disk.iter().map(|p| job_of(p)).collect();
    let unknown = ctx
        .db(
            "unknown_set_dirs",
            ctx.catalog.unknown_set_dirs(&dirs, &jobs),
        )
        .await?;
    // Read after the catalog: a set reported meanwhile is in the catalog or still marked.
    let in_flight = own_in_flight(ctx);
    let mut out = Vec::new();
    for u in unknown {
        let dir = PathBuf::from(&u.dir);
        if u.job_open || in_flight.contains(&dir) {
            continue;
        }
        if u.job_server.is_some_and(|s| s != ctx.server_id) {
            continue;
        }
        let job = job_of(&dir);
        if job == 0 {
            let young = std::fs::metadata(&dir)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| SystemTime::now().duration_since(t).ok())
                .is_none_or(|age| age < OFFLINE_GRACE);
            if young {
                continue;
            }
        }
        let d = dir.clone();
        let verdict = tokio::task::spawn_blocking(move || {
            pgbackman_dump::verify::verify_checksums(&d, None, &AtomicBool::new(false))
        })
        .await?;
        let what = if job > 0 {
            format!("job {job}")
        } else {
            "a fire run while the catalog was unreachable".into()
        };
        let detail = match verdict {
            Ok(_) => format!(
                "backup set {} ({what}) is complete and verifies (level 1), but no catalog row names it, so retention never removes it. \
                 It can still be restored by hand (pg_restore on its dump); remove the directory once it is not needed. pgbackman never deletes a set it cannot account for",
                u.dir
            ),
            Err(e) => format!(
                "backup set {} ({what}) does not verify ({e}) and no catalog row names it: nothing can restore from it; remove the directory by hand",
                u.dir
            ),
        };
        out.push(Finding {
            kind: "ORPHAN",
            path: u.dir,
            bck_id: None,
            node_id: None,
            detail,
        });
    }
    out.extend(missing(ctx, roots).await?);
    Ok(out)
}

/// Rows of this server whose set directory is gone.
async fn missing(ctx: &Ctx, roots: &Roots) -> Result<Vec<Finding>> {
    let known = ctx
        .db(
            "server_set_dirs",
            ctx.catalog.server_set_dirs(ctx.server_id),
        )
        .await?;
    let roots = roots.clone();
    let gone = tokio::task::spawn_blocking(move || {
        let mut by_root: BTreeMap<String, Vec<pgbackman_db::reconcile::KnownSet>> = BTreeMap::new();
        for k in known {
            if std::fs::symlink_metadata(&k.backup_dir).is_ok() {
                continue;
            }
            let root = roots
                .deletable(Path::new(&k.backup_dir))
                .map(|(_, r)| r.display().to_string())
                .unwrap_or_default();
            by_root.entry(root).or_default().push(k);
        }
        by_root
    })
    .await?;
    let mut out = Vec::new();
    for (root, sets) in gone {
        if sets.len() > MISSING_PER_ROOT && !root.is_empty() {
            out.push(Finding {
                kind: "MISSING",
                path: root.clone(),
                bck_id: None,
                node_id: sets.first().map(|k| k.node_id),
                detail: format!(
                    "{} backup sets under {root} are gone from disk (BckID {} ...) while the catalog still lists them: \
                     is the file system mounted? Restores from them will fail; nothing is deleted from the catalog automatically",
                    sets.len(),
                    sets.iter().take(5).map(|k| k.bck_id.to_string()).collect::<Vec<_>>().join(", ")
                ),
            });
            continue;
        }
        for k in sets {
            out.push(Finding {
                kind: "MISSING",
                path: k.backup_dir.clone(),
                bck_id: Some(k.bck_id),
                node_id: Some(k.node_id),
                detail: format!(
                    "BckID {}: its backup set {} is gone from disk while the catalog still lists it; a restore from it will fail. \
                     If the files come back (a file system not mounted) nothing is to be done; the row is never removed automatically",
                    k.bck_id, k.backup_dir
                ),
            });
        }
    }
    Ok(out)
}
