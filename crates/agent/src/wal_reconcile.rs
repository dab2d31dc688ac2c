//! WAL files lost on disk (issue 11): at each walk of the maintenance pass, the files stored for
//! each WAL archive of this server (`<node dir>/wal/node<NodeID>/<sysid>/<TLI>/`, layout in
//! `crate::wal::store`) are listed and reported to the catalog as run-length ranges per
//! incarnation and timeline; the catalog (`sql/89_wal_missing.sql`) removes the ledger rows of
//! files that are gone, so the hole shows and WAL_HOLE is raised, and records each as a MISSING
//! finding. Nothing on disk is touched. A directory that cannot be read skips its archive: an
//! unreadable (or unmounted) store must never look like a lost one.

use std::fs;
use std::io::ErrorKind;
use std::path::Path;

use anyhow::{Context, Result};
use pgbackman_db::wal_reconcile::WalDirListing;
use tokio_util::sync::CancellationToken;

use crate::job::Ctx;
use crate::wal::store::ArchiveDirs;

/// Lists and reports every WAL archive of this server; returns how many ledger rows were
/// removed because their file is gone.
pub async fn reconcile(ctx: &Ctx, stop: &CancellationToken) -> Result<usize> {
    let mut lost = 0;
    let archives = ctx
        .db(
            "agent_wal_archives",
            ctx.catalog.agent_wal_archives(ctx.server_id),
        )
        .await?;
    for a in archives.iter().filter(|a| a.status != "DELETED") {
        if stop.is_cancelled() {
            break;
        }
        let node_dir =
            match crate::roots::node_dir_for_write(&ctx.cfg_now(), &a.node_backup_partition) {
                Ok(d) => d,
                Err(why) => {
                    tracing::warn!(node_id = a.pgsql_node_id, "WAL files not checked: {why}");
                    continue;
                }
            };
        let root = ArchiveDirs::new(&node_dir, a.pgsql_node_id).root;
        // Before the listing: a row recorded later may have a file the listing missed.
        let started = chrono::Utc::now();
        let listed = {
            let root = root.clone();
            tokio::task::spawn_blocking(move || list(&root)).await?
        };
        let present = match listed {
            Ok(Some(p)) => p,
            Ok(None) => {
                tracing::debug!(node_id = a.pgsql_node_id, dir = %root.display(), "no WAL stored yet");
                continue;
            }
            Err(e) => {
                tracing::error!(
                    node_id = a.pgsql_node_id,
                    "WAL files not checked: {e:#}; fix the directory's permissions, the next maintenance pass checks again"
                );
                continue;
            }
        };
        let gone = ctx
            .db(
                "reconcile_wal_files",
                ctx.catalog.reconcile_wal_files(
                    ctx.server_id,
                    a.pgsql_node_id,
                    &root.display().to_string(),
                    started,
                    &present,
                ),
            )
            .await?;
        for g in &gone {
            tracing::error!(node_id = a.pgsql_node_id, file = %g.file_name, "{}", g.detail);
        }
        lost += gone.len();
    }
    Ok(lost)
}

/// The stored files under an archive's root, per incarnation and timeline directory; None when
/// the root does not exist (nothing is compared then).
pub fn list(root: &Path) -> Result<Option<Vec<WalDirListing>>> {
    let sysids = match fs::read_dir(root) {
        Ok(d) => d,
        // A missing root is not a loss of everything: the node directory may be on a disk that
        // is not mounted. The rows stay; --check and the receiver report the directory.
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot list {}", root.display())),
    };
    let mut out = Vec::new();
    for s in sysids {
        let s = s.with_context(|| format!("cannot list {}", root.display()))?;
        let Some(sysid) = s.file_name().to_str().and_then(|n| n.parse::<u64>().ok()) else {
            continue; // incoming/, refused/
        };
        let sdir = s.path();
        for t in fs::read_dir(&sdir).with_context(|| format!("cannot list {}", sdir.display()))? {
            let t = t.with_context(|| format!("cannot list {}", sdir.display()))?;
            let tname = t.file_name();
            let Some(tli) = tname
                .to_str()
                .filter(|n| n.len() == 8)
                .and_then(|n| u32::from_str_radix(n, 16).ok())
            else {
                continue;
            };
            out.push(list_timeline(&t.path(), sysid, tli)?);
        }
    }
    Ok(Some(out))
}

/// One timeline directory: segment files as ranges of their name number, the rest by name.
fn list_timeline(dir: &Path, sysid: u64, tli: u32) -> Result<WalDirListing> {
    let mut nums = Vec::new();
    let mut names = Vec::new();
    for f in fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let f = f.with_context(|| format!("cannot list {}", dir.display()))?;
        let Some(n) = f.file_name().to_str().map(str::to_string) else {
            continue;
        };
        let n = n.strip_suffix(".zst").unwrap_or(&n).to_string();
        match segment_number(&n, tli) {
            Some(x) => nums.push(x),
            None => names.push(n),
        }
    }
    nums.sort_unstable();
    names.sort();
    Ok(WalDirListing {
        sysid: sysid.to_string(),
        timeline: tli,
        ranges: ranges(&nums),
        names,
    })
}

/// The number of a segment file's name (log * 2^32 + seg) on timeline `tli`, or None.
fn segment_number(name: &str, tli: u32) -> Option<i64> {
    if name.len() != 24 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (u32::from_str_radix(&name[..8], 16).ok()? == tli)
        .then(|| i64::from_str_radix(&name[8..], 16).ok())
        .flatten()
}

/// Sorted numbers as inclusive runs of consecutive ones.
fn ranges(sorted: &[i64]) -> Vec<[i64; 2]> {
    let mut out: Vec<[i64; 2]> = Vec::new();
    for &x in sorted {
        match out.last_mut() {
            Some(r) if r[1] + 1 == x => r[1] = x,
            Some(r) if r[1] == x => {}
            _ => out.push([x, x]),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timeline_directory_is_listed_as_ranges_and_names() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("wal/node7");
        let dir = root.join("7412345678901234567/00000002");
        fs::create_dir_all(&dir).unwrap();
        fs::create_dir_all(root.join("incoming")).unwrap();
        for n in [
            "0000000200000000000000FE.zst",
            "0000000200000000000000FF.zst",
            "000000020000000100000000.zst",
            "000000020000000100000002.zst",
            "00000002.history.zst",
            "000000010000000100000003.partial.zst",
        ] {
            fs::write(dir.join(n), b"x").unwrap();
        }
        let l = list(&root).unwrap().unwrap();
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].sysid, "7412345678901234567");
        assert_eq!(l[0].timeline, 2);
        assert_eq!(
            l[0].ranges,
            [
                [0xFE, 0xFF],
                [1 << 32, 1 << 32],
                [(1 << 32) + 2, (1 << 32) + 2]
            ]
        );
        assert_eq!(
            l[0].names,
            ["000000010000000100000003.partial", "00000002.history"]
        );
        assert!(list(&t.path().join("nothing")).unwrap().is_none());
    }

    /// The listing of a year of a busy node: `cargo nextest run -p pgbackman-agent --lib
    /// listing_500000 --run-ignored only --no-capture` (500,000 empty files, removed after).
    #[test]
    #[ignore]
    fn listing_500000_stored_segments() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("wal/node1");
        let dir = root.join("7412345678901234567/00000001");
        fs::create_dir_all(&dir).unwrap();
        for s in 1..=500_000u64 {
            fs::write(
                dir.join(format!("00000001{:08X}{:08X}.zst", s / 256, s % 256)),
                b"",
            )
            .unwrap();
        }
        let t0 = std::time::Instant::now();
        let l = list(&root).unwrap().unwrap();
        let d = t0.elapsed();
        let json = serde_json::to_string(&l).unwrap().len();
        eprintln!(
            "listing 500,000 stored segments: {d:?}, {} ranges, {json} bytes of JSON",
            l[0].ranges.len()
        );
        assert_eq!(l[0].ranges.len(), 1954);
    }
}
