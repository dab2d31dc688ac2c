//! The one list of directories this agent writes backup sets under and may delete under
//! (`pgbackman_core::roots`): its `backup_dir`, plus every absolute node partition it accepted.
//!
//! Derived in one place ([`roots`]) and used by both sides: the writer gets a node's set
//! directory from [`node_dir_for_write`] (which refuses a partition it could not clean, and
//! remembers an accepted absolute one in `<state_dir>/roots.json` before writing there); the
//! deleter checks every path with [`deletable`] against the same roots — the remembered ones
//! and those of the partitions configured now — so a set is deletable wherever it was written,
//! even after its node's partition changed.

use std::path::{Path, PathBuf};

use anyhow::Result;
use pgbackman_config::AgentSection;
use pgbackman_core::roots::{Roots, node_dir};

use crate::state::write_atomic;

fn history_path(state_dir: &Path) -> PathBuf {
    state_dir.join("roots.json")
}

/// Absolute partitions this agent has written sets to.
pub fn written(state_dir: &Path) -> Vec<String> {
    std::fs::read(history_path(state_dir))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// Adds `dir` to the written roots (durably, before anything is written there).
fn remember(state_dir: &Path, dir: &Path) -> Result<()> {
    let mut all = written(state_dir);
    let s = dir.display().to_string();
    if all.contains(&s) {
        return Ok(());
    }
    all.push(s);
    all.sort();
    write_atomic(&history_path(state_dir), &serde_json::to_vec_pretty(&all)?)
}

/// Keeps `dir` (a backup root the agent wrote to, e.g. its root_backup_partition before a
/// change) among the roots retention may delete under.
pub fn remember_root(state_dir: &Path, dir: &Path) -> Result<()> {
    remember(state_dir, dir)
}

/// The directory a node's sets go to (`<partition>/<db>/<set>`), or why this agent refuses to
/// write there (it could not delete them later). An accepted absolute partition becomes a root.
pub fn node_dir_for_write(cfg: &AgentSection, partition: &str) -> Result<PathBuf, String> {
    let dir = node_dir(&cfg.backup_dir, &cfg.state_dir, partition)?;
    if Path::new(partition).is_absolute() {
        remember(&cfg.state_dir, &dir).map_err(|e| {
            format!(
                "cannot record {} as a backup root in {}: {e:#}",
                dir.display(),
                cfg.state_dir.display()
            )
        })?;
    }
    Ok(dir)
}

/// The roots: `backup_dir`, the written ones, and `configured` partitions (those of the nodes
/// this server backs up, as the catalog has them now). Returns the refused partitions of
/// `configured` with the reason.
pub fn roots(cfg: &AgentSection, configured: &[String]) -> (Roots, Vec<(String, String)>) {
    let written = written(&cfg.state_dir);
    let (r, refused) = Roots::new(
        &cfg.backup_dir,
        &cfg.state_dir,
        written.iter().chain(configured.iter()).map(String::as_str),
    );
    let refused = refused
        .into_iter()
        .filter(|(p, _)| configured.contains(p))
        .collect();
    (r, refused)
}

/// Whether `p` may be deleted: [`Roots::deletable`], and — where it exists — not reached
/// through a symbolic link leading out of its root. (The last component may be a link:
/// removing it removes the link, never its target.)
pub fn deletable(roots: &Roots, p: &Path) -> Result<PathBuf, String> {
    let (norm, root) = roots.deletable(p)?;
    if let Some(parent) = norm.parent()
        && let Ok(real_parent) = parent.canonicalize()
    {
        let real_root = root.canonicalize().unwrap_or_else(|_| root.clone());
        if !real_parent.starts_with(&real_root) {
            return Err(format!(
                "refusing to delete {}: a symbolic link leads outside the backup root {}",
                p.display(),
                root.display()
            ));
        }
    }
    Ok(norm)
}
