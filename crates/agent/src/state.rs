//! The agent's state directory: an exclusive lock (one agent per directory) and the definition
//! cache it runs from when the catalog is unreachable. Files are written to a temporary name,
//! fsynced and renamed, so a crash leaves the old or the new version, never half of one.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use nix::fcntl::{Flock, FlockArg};
use pgbackman_db::agent::AgentDefinition;
use serde::{Deserialize, Serialize};

/// Held for the agent's lifetime; dropping it releases the lock.
pub struct StateLock {
    _lock: Flock<File>,
}

pub fn create_dir_0700(p: &Path) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(p)
        .with_context(|| format!("creating directory {}", p.display()))
}

/// Takes the state directory's lock, or says which agent holds it.
pub fn lock(state_dir: &Path) -> Result<StateLock> {
    create_dir_0700(state_dir)?;
    let path = state_dir.join("agent.lock");
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
        Ok(mut l) => {
            // Record our pid for whoever finds the lock taken.
            let _ = l.set_len(0);
            let _ = writeln!(l, "{}", std::process::id());
            Ok(StateLock { _lock: l })
        }
        Err((_, _)) => {
            let pid = fs::read_to_string(&path).unwrap_or_default();
            bail!(
                "another pgbackman-agent (pid {}) already uses state directory {}\nHINT: stop it first (systemctl stop pgbackman-agent), or give this one another state_dir",
                pid.trim(),
                state_dir.display()
            )
        }
    }
}

/// Writes `bytes` to `path` atomically and durably (0600).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp: PathBuf = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id()
    ));
    let mut f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", dir.display()))?;
    Ok(())
}

/// What the agent needs to keep firing schedules without the catalog.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Cache {
    pub format: u32,
    pub server_id: i64,
    pub server_fqdn: String,
    pub written_at: chrono::DateTime<chrono::Utc>,
    pub definitions: Vec<AgentDefinition>,
}

pub fn cache_path(state_dir: &Path) -> PathBuf {
    state_dir.join("definitions.json")
}

/// Writes the cache from borrowed definitions (no second copy of ten thousand of them).
pub fn save_cache(
    state_dir: &Path,
    server_id: i64,
    server_fqdn: &str,
    definitions: &[AgentDefinition],
) -> Result<()> {
    #[derive(Serialize)]
    struct CacheRef<'a> {
        format: u32,
        server_id: i64,
        server_fqdn: &'a str,
        written_at: chrono::DateTime<chrono::Utc>,
        definitions: &'a [AgentDefinition],
    }
    let c = CacheRef {
        format: 1,
        server_id,
        server_fqdn,
        written_at: chrono::Utc::now(),
        definitions,
    };
    write_atomic(&cache_path(state_dir), &serde_json::to_vec(&c)?)
}

pub fn load_cache(state_dir: &Path) -> Result<Option<Cache>> {
    let p = cache_path(state_dir);
    match fs::read(&p) {
        Ok(b) => Ok(Some(
            serde_json::from_slice(&b).with_context(|| format!("{} is corrupt", p.display()))?,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_agent_per_state_directory() {
        let d = tempfile::tempdir().unwrap();
        let l = lock(d.path()).unwrap();
        let e = lock(d.path()).err().unwrap().to_string();
        assert!(e.contains("already uses state directory"), "{e}");
        drop(l);
        lock(d.path()).unwrap();
    }

    #[test]
    fn cache_round_trip() {
        let d = tempfile::tempdir().unwrap();
        assert!(load_cache(d.path()).unwrap().is_none());
        save_cache(d.path(), 3, "bs", &[]).unwrap();
        assert_eq!(load_cache(d.path()).unwrap().unwrap().server_id, 3);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(cache_path(d.path()))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
    }
}
