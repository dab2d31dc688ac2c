//! The write-ahead journal of a restore. Before each change to its target (the rename of an
//! existing database, the roles, the new database) the run writes what it is about to do into
//! [`RestoreSpec::journal`] (a temporary name, fsync, rename, fsync of the directory). A
//! failure, cancel or timeout is undone in-process and the journal removed; only the death of
//! the process (SIGKILL, OOM killer, power loss) leaves one behind. The next start hands it to
//! [`undo_interrupted`], which connects to the target and undoes what the record says may have
//! happened, as the in-process undo would have.

use std::collections::BTreeSet;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::RestoreSpec;
use super::exec::Exec;
use crate::node;
use pgbackman_db::restore::target;

const VERSION: u32 = 1;

/// Where a restore keeps its journal, and what its caller needs back after a crash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Journal {
    /// The journal file (its parent is created 0700 when missing).
    pub path: PathBuf,
    /// Opaque to the executor, returned by [`undo_interrupted`] (the agent keeps the job's
    /// attempt here, to report the interrupted run).
    #[serde(default)]
    pub meta: serde_json::Value,
}

/// What a run may have changed on its target so far.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(super) struct Changes {
    /// (existing name, new name) of a database being renamed out of the way.
    pub renaming: Option<(String, String)>,
    /// The target database is being created (database sets).
    pub creating_db: bool,
    /// Its OID once created: a database of that name with another OID is not this run's.
    #[serde(default)]
    pub db_oid: Option<u32>,
    /// Roles on the target before roles.sql (or the cluster script) ran.
    pub roles_before: Option<BTreeSet<String>>,
    /// Databases on the target before a CLUSTER script ran.
    pub dbs_before: Option<BTreeSet<String>>,
    /// The roles of a database set.
    pub needed_roles: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Record {
    version: u32,
    started: DateTime<Utc>,
    spec: RestoreSpec,
    changes: Changes,
}

/// Writes the record durably (write to a temporary name, fsync, rename, fsync the directory).
pub(super) fn write(
    j: &Journal,
    spec: &RestoreSpec,
    started: DateTime<Utc>,
    changes: &Changes,
) -> io::Result<()> {
    let dir = j.path.parent().unwrap_or(Path::new("."));
    crate::set::create_private_dir_all(dir)?;
    let rec = Record {
        version: VERSION,
        started,
        spec: spec.clone(),
        changes: changes.clone(),
    };
    let body = serde_json::to_vec_pretty(&rec).map_err(io::Error::other)?;
    let mut tmp = j.path.clone().into_os_string();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let _ = fs::remove_file(&tmp);
    let mut f = crate::set::create_private_file(&tmp)?;
    f.write_all(&body)?;
    f.sync_all()?;
    fs::rename(&tmp, &j.path)?;
    crate::set::fsync_dir(dir)
}

/// Removes the journal (a run that ended, undone or not, leaves nothing to recover).
pub(super) fn remove(j: &Journal) -> io::Result<()> {
    match fs::remove_file(&j.path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// A restore found cut short, and what was undone.
#[derive(Debug, Clone)]
pub struct Interrupted {
    /// The restore's job.
    pub job_id: i64,
    /// [`Journal::meta`] as the run wrote it.
    pub meta: serde_json::Value,
    /// When the run started.
    pub started: DateTime<Utc>,
    /// The target as people know it.
    pub node_label: String,
    /// The database the run was restoring (empty for CLUSTER and GLOBALS).
    pub target_dbname: String,
    /// What was undone, and what could not be (to do by hand), one line each.
    pub cleanup: Vec<String>,
}

/// Journals left in `dir` by runs that died (`*.json`; temporary files of a write cut short are
/// removed: nothing was changed after them).
pub fn journals_in(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for e in rd.flatten() {
        let p = e.path();
        match p.extension().and_then(|x| x.to_str()) {
            Some("json") => out.push(p),
            Some("tmp") => {
                let _ = fs::remove_file(&p);
            }
            _ => {}
        }
    }
    out.sort();
    Ok(out)
}

/// Undoes what the run of the journal at `path` may have changed on its target: the database
/// it was creating is dropped, the roles it was creating are dropped, a database it renamed out
/// of the way is renamed back. The journal is left in place (the caller removes it once it has
/// recorded the outcome). Fails, changing nothing, when the journal cannot be read or the target
/// cannot be reached: try again later.
pub async fn undo_interrupted(path: &Path) -> Result<Interrupted, String> {
    let body = fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let rec: Record = serde_json::from_slice(&body)
        .map_err(|e| format!("{}: not a restore journal: {e}", path.display()))?;
    if rec.version != VERSION {
        return Err(format!(
            "{}: journal version {} (this pgbackman reads {VERSION})",
            path.display(),
            rec.version
        ));
    }
    let spec = &rec.spec;
    let (session, _) = node::connect(
        &spec.node,
        &spec.node.admin_dbname,
        &spec.application_name,
        None,
    )
    .await
    .map_err(|e| format!("cannot connect to {}: {e}", spec.node_label))?;
    let state = target::read_state(&session.client)
        .await
        .map_err(|e| format!("cannot read {}: {e}", spec.node_label))?;
    let mut x = Exec::new(spec, CancellationToken::new());
    x.force_drop = state.server_version_num >= 130_000;
    x.session = Some(session);
    let c = rec.changes;
    // Renamed back only when the rename did happen: the new name exists. The target name is
    // freed first by the drop of the database this run was creating (undo's order).
    x.renamed = c.renaming.filter(|(_, new)| state.databases.contains(new));
    x.touched_db = c.creating_db;
    if c.creating_db
        && let Some(want) = c.db_oid
        && let Some(now) = target::database_oid(x.client(), &spec.target_dbname)
            .await
            .map_err(|e| format!("cannot read {}: {e}", spec.node_label))?
        && now != want
    {
        // Dropped and made again since (by someone else): not this run's to drop.
        x.touched_db = false;
        x.out.cleanup.push(format!(
            "database {:?} on {} is not the one this restore created (OID {now}, not {want}): left as it is",
            spec.target_dbname, spec.node_label
        ));
    }
    x.roles_before = c.roles_before;
    x.dbs_before = c.dbs_before;
    x.needed_roles = c.needed_roles;
    x.undo().await;
    if x.out.cleanup.is_empty() {
        x.out
            .cleanup
            .push("nothing had been changed on the target yet".into());
    }
    Ok(Interrupted {
        job_id: spec.job_id,
        meta: spec
            .journal
            .as_ref()
            .map(|j| j.meta.clone())
            .unwrap_or_default(),
        started: rec.started,
        node_label: spec.node_label.clone(),
        target_dbname: spec.target_dbname.clone(),
        cleanup: std::mem::take(&mut x.out.cleanup),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[tokio::test]
    async fn written_privately_listed_and_refused_when_foreign() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("restores");
        let j = Journal {
            path: dir.join("7.json"),
            meta: serde_json::json!({"attempt": 2}),
        };
        let spec: RestoreSpec = serde_json::from_value(serde_json::json!({
            "job_id": 7, "set_dir": "/nonexistent", "node": {"host": "127.0.0.1", "port": 1,
            "user": "postgres", "admin_dbname": "postgres", "sslmode": "", "passfile": null},
            "node_label": "n:1", "target_dbname": "t", "roles": {"kind": "create_missing"},
            "jobs": 1, "bin_dir": "/nonexistent", "staging_root": "/nonexistent",
            "application_name": "pgbackman"}))
        .unwrap();
        let c = Changes {
            creating_db: true,
            ..Changes::default()
        };
        write(&j, &spec, Utc::now(), &c).unwrap();
        assert_eq!(
            fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        assert_eq!(
            fs::metadata(&j.path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        fs::write(dir.join("8.json.tmp"), b"{").unwrap();
        assert_eq!(journals_in(&dir).unwrap(), vec![j.path.clone()]);
        assert!(
            !dir.join("8.json.tmp").exists(),
            "a write cut short is dropped"
        );
        // The target cannot be reached: nothing undone, the journal stays for the next start.
        let e = undo_interrupted(&j.path).await.unwrap_err();
        assert!(e.contains("cannot connect to n:1"), "{e}");
        assert!(j.path.exists());
        fs::write(&j.path, b"{\"version\": 1}").unwrap();
        assert!(
            undo_interrupted(&j.path)
                .await
                .unwrap_err()
                .contains("not a restore journal")
        );
        remove(&j).unwrap();
        remove(&j).unwrap();
        assert!(journals_in(&dir).unwrap().is_empty());
    }
}
