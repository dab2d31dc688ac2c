//! Where an agent may write backup sets, and so where it may delete them: one list of roots,
//! derived here and used by both the writer (a job's set directory) and the deleter (retention,
//! forced deletions, deleted nodes).
//!
//! A node's `pgnode_backup_partition` is either relative (under the agent's `backup_dir`) or
//! absolute (a root of its own). A partition the agent could not clean is refused before
//! anything is written there, so no catalog row can ever name a set the agent cannot delete:
//! - [`check_partition_value`]: the value alone (the same rules as `api.check_backup_partition`
//!   in SQL, which refuses them when the partition is set): not empty, no `..`, not the staging
//!   area or the backup directory itself (relative), not `/` nor a system directory (absolute);
//! - [`node_dir`] adds what only the agent knows: an absolute partition may not be its
//!   `backup_dir` or `state_dir`, contain one of them, or lie inside the state or staging area.

use std::path::{Component, Path, PathBuf};

/// Directories that are never a partition, nor hold one: the system's own.
const SYSTEM: &[&str] = &[
    "/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/proc", "/run",
    "/sbin", "/sys", "/usr",
];

/// Shared top-level directories: a partition may be inside, never one of them itself.
const SHARED_TOP: &[&str] = &[
    "/home", "/media", "/mnt", "/opt", "/root", "/srv", "/tmp", "/var", "/var/lib", "/var/tmp",
];

/// The lexical form of `p`: `.` and repeated slashes dropped.
pub fn normalize(p: &Path) -> PathBuf {
    p.components().filter(|c| *c != Component::CurDir).collect()
}

/// Checks a `pgnode_backup_partition` value by itself (see the module documentation).
pub fn check_partition_value(value: &str) -> Result<(), String> {
    let refuse = |why: &str| {
        Err(format!(
            "pgnode_backup_partition \"{value}\" cannot be used: {why}"
        ))
    };
    if value.trim().is_empty() {
        return refuse("it is empty");
    }
    if value.contains('\0') {
        return refuse("it contains a NUL byte");
    }
    let p = Path::new(value);
    if p.components().any(|c| c == Component::ParentDir) {
        return refuse("it contains \"..\"");
    }
    let norm = normalize(p);
    if !p.is_absolute() {
        return match norm.components().next() {
            None => refuse("it is the backup directory itself"),
            Some(Component::Normal(first)) if first == "staging" => {
                refuse("it is in the staging area of the backup directory")
            }
            _ => Ok(()),
        };
    }
    let s = norm.to_string_lossy();
    if norm.parent().is_none() {
        return refuse("it is the root directory");
    }
    if let Some(sys) = SYSTEM
        .iter()
        .find(|d| norm == Path::new(d) || norm.starts_with(d))
    {
        return refuse(&format!("it is in the system directory {sys}"));
    }
    if SHARED_TOP.iter().any(|d| s == *d) {
        return refuse("it is a shared system directory; use a directory of its own inside it");
    }
    Ok(())
}

/// Where a node's sets go, or why the agent refuses to write (and so to delete) there.
/// `backup_dir` and `state_dir` are the agent's own directories.
pub fn node_dir(backup_dir: &Path, state_dir: &Path, partition: &str) -> Result<PathBuf, String> {
    check_partition_value(partition)?;
    let p = Path::new(partition);
    if !p.is_absolute() {
        return Ok(normalize(&backup_dir.join(p)));
    }
    let dir = normalize(p);
    let backup = normalize(backup_dir);
    let state = normalize(state_dir);
    let refuse = |why: String| {
        Err(format!(
            "pgnode_backup_partition \"{partition}\" cannot be used by this agent: {why}"
        ))
    };
    for (what, own) in [("backup_dir", &backup), ("state_dir", &state)] {
        if own.starts_with(&dir) {
            return refuse(format!(
                "it is or contains the agent's {what} {}, which it must never delete",
                own.display()
            ));
        }
    }
    if dir.starts_with(&state) {
        return refuse(format!(
            "it is inside the agent's state_dir {}",
            state.display()
        ));
    }
    if dir.starts_with(backup.join("staging")) {
        return refuse(format!(
            "it is inside the agent's staging area {}",
            backup.join("staging").display()
        ));
    }
    Ok(dir)
}

/// The directories an agent writes sets under and may delete under: its `backup_dir` and the
/// absolute partitions it accepted ([`node_dir`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roots {
    backup_dir: PathBuf,
    partitions: Vec<PathBuf>,
}

impl Roots {
    /// The roots of an agent: `backup_dir`, and each of `partitions` (absolute partition
    /// directories) that [`node_dir`] accepts. Returns the refused ones with the reason.
    pub fn new<'a>(
        backup_dir: &Path,
        state_dir: &Path,
        partitions: impl IntoIterator<Item = &'a str>,
    ) -> (Roots, Vec<(String, String)>) {
        let mut roots = Roots {
            backup_dir: normalize(backup_dir),
            partitions: Vec::new(),
        };
        let mut refused = Vec::new();
        for p in partitions {
            if !Path::new(p).is_absolute() {
                continue;
            }
            match node_dir(backup_dir, state_dir, p) {
                Ok(d) => {
                    if !roots.partitions.contains(&d) {
                        roots.partitions.push(d);
                    }
                }
                Err(e) => refused.push((p.to_string(), e)),
            }
        }
        roots.partitions.sort();
        (roots, refused)
    }

    /// The absolute partitions among the roots.
    pub fn partitions(&self) -> &[PathBuf] {
        &self.partitions
    }

    /// Every root, `backup_dir` first.
    pub fn all(&self) -> Vec<&Path> {
        std::iter::once(self.backup_dir.as_path())
            .chain(self.partitions.iter().map(PathBuf::as_path))
            .collect()
    }

    /// Whether `p` may be deleted, lexically: absolute, without `..`, strictly under a root,
    /// not a root itself, not in the staging area. Returns the normalized path and its root.
    /// (Symbolic links are the caller's to check: that needs the file system.)
    pub fn deletable(&self, p: &Path) -> Result<(PathBuf, PathBuf), String> {
        let refuse = |why: &str| {
            Err(format!(
                "refusing to delete {}: {why} (this agent deletes only under the directories it writes sets to: {})",
                p.display(),
                self.all()
                    .iter()
                    .map(|r| r.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        };
        if !p.is_absolute() {
            return refuse("not an absolute path");
        }
        if p.components().any(|c| c == Component::ParentDir) {
            return refuse("it contains \"..\"");
        }
        let norm = normalize(p);
        if self.all().iter().any(|r| *r == norm) {
            return refuse("it is a backup root itself");
        }
        if norm.starts_with(self.backup_dir.join("staging")) {
            return refuse("it is in the staging area");
        }
        // The deepest root holding it (a partition may lie inside backup_dir).
        match self
            .all()
            .into_iter()
            .filter(|r| norm.starts_with(r))
            .max_by_key(|r| r.components().count())
        {
            Some(r) => Ok((norm.clone(), r.to_path_buf())),
            None => refuse("outside every backup root of this agent"),
        }
    }
}

/// Whether `name` is a set directory's name as the agent writes them:
/// `<YYYYmmddTHHMMSSZ>-(job<id>|offline<n>)-(def|snap)<id>-<CODE>` (`crates/agent/src/job.rs`).
/// Reconciliation looks only at such directories: anything else under a root is not a set.
pub fn is_set_name(name: &str) -> bool {
    let mut parts = name.splitn(4, '-');
    let (Some(when), Some(job), Some(owner), Some(code)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let b = when.as_bytes();
    let when_ok = b.len() == 16
        && digits(&when[..8])
        && b[8] == b'T'
        && digits(&when[9..15])
        && b[15] == b'Z';
    let job_ok = job
        .strip_prefix("job")
        .or_else(|| job.strip_prefix("offline"))
        .is_some_and(digits);
    let owner_ok = owner
        .strip_prefix("def")
        .or_else(|| owner.strip_prefix("snap"))
        .is_some_and(digits);
    when_ok
        && job_ok
        && owner_ok
        && !code.is_empty()
        && code.bytes().all(|b| b.is_ascii_uppercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_names() {
        for ok in [
            "20261203T101500Z-job12-def3-FULL",
            "20261203T101500Z-offline1764756900000000-def3-CLUSTER",
            "20261203T101500Z-job7-snap2-GLOBALS",
        ] {
            assert!(is_set_name(ok), "{ok}");
        }
        for bad in [
            "",
            "staging",
            "shop",
            "20261203T101500Z-job12-def3-",
            "20261203T101500Z-jobx-def3-FULL",
            "20261203T1015Z-job12-def3-FULL",
            "20261203T101500Z-job12-def3-FULL-x",
        ] {
            assert!(!is_set_name(bad), "{bad}");
        }
    }

    #[test]
    fn partition_values() {
        for ok in [
            "pgsql_node_1",
            "nodes/a",
            "/backups",
            "/srv/pgbackman/n1",
            "/var/backups/pg",
            "/tmp/x/abs",
            "/mnt/nfs/n1",
        ] {
            assert!(check_partition_value(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            " ",
            ".",
            "./",
            "staging",
            "staging/x",
            "./staging",
            "a/../b",
            "..",
            "/",
            "//",
            "/etc",
            "/etc/pg",
            "/usr/local/x",
            "/proc/1",
            "/var",
            "/tmp",
            "/srv",
            "/home/",
            "/a/../b",
        ] {
            assert!(check_partition_value(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn an_absolute_partition_may_not_hold_or_sit_in_the_agents_own_directories() {
        let b = Path::new("/srv/pgbackman");
        let s = Path::new("/var/lib/pgbackman");
        assert_eq!(
            node_dir(b, s, "pgsql_node_1").unwrap(),
            PathBuf::from("/srv/pgbackman/pgsql_node_1")
        );
        assert_eq!(
            node_dir(b, s, "/backups/n1/").unwrap(),
            PathBuf::from("/backups/n1")
        );
        assert!(node_dir(b, s, "/srv/pgbackman/n1").is_ok());
        for bad in [
            "/srv/pgbackman",
            "/srv/pgbackman/staging/1",
            "/var/lib/pgbackman/x",
            "/var/lib/pgbackman",
        ] {
            let e = node_dir(b, s, bad).unwrap_err();
            assert!(e.contains("cannot be used"), "{bad}: {e}");
        }
        // An ancestor of the backup directory: deleting a node there would delete everything.
        let e = node_dir(Path::new("/data/t/backups"), s, "/data/t").unwrap_err();
        assert!(e.contains("contains the agent's backup_dir"), "{e}");
    }

    #[test]
    fn deletion_only_strictly_under_a_root() {
        let (r, refused) = Roots::new(
            Path::new("/srv/pgbackman"),
            Path::new("/var/lib/pgbackman"),
            [
                "pgsql_node_1",
                "/backups/n2",
                "/etc",
                "/backups/n2",
                "/srv/pgbackman",
            ],
        );
        assert_eq!(r.partitions(), &[PathBuf::from("/backups/n2")]);
        assert_eq!(refused.len(), 2, "{refused:?}");
        let ok = |p: &str| r.deletable(Path::new(p)).is_ok();
        assert!(ok("/srv/pgbackman/pgsql_node_1/shop/set"));
        assert!(ok("/backups/n2/shop/set"));
        assert!(ok("/backups/n2/./shop//set"));
        for bad in [
            "/backups/n2",
            "/backups/n2/",
            "/backups",
            "/backups/n22/x",
            "/srv/pgbackman",
            "/srv/pgbackman/staging/1",
            "/srv/pgbackman/../etc",
            "/etc/passwd",
            "rel/x",
        ] {
            assert!(!ok(bad), "{bad} accepted");
        }
        let e = r.deletable(Path::new("/etc/passwd")).unwrap_err();
        assert!(e.contains("outside every backup root"), "{e}");
        assert!(e.contains("/backups/n2"), "{e}");
    }
}
