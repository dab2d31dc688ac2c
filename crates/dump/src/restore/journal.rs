//! The write-ahead journal of a restore. Before each change to its target (the rename of an
//! existing database, the roles, the new database) the run writes what it is about to do into
//! [`RestoreSpec::journal`] (a temporary name, fsync, rename, fsync of the directory), and after
//! it the OIDs of what it made. A run that ends (succeeded, failed and undone, cancelled) marks
//! its journal ended before removing it; only the death of the process (SIGKILL, OOM killer,
//! power loss) leaves a journal that is not ended. The next start hands it to
//! [`undo_interrupted`].
//!
//! The recovery acts on OIDs, never on names alone: it drops a database or a role only when its
//! OID is the one the run recorded after making it, and renames a database back only when the
//! database under the new name is the one the run moved (its OID recorded before the rename).
//! Whatever it cannot prove was made by the run (a crash in the middle of `roles.sql` or
//! `database.sql`, anything a CLUSTER script made) becomes a line to check by hand, so a
//! journal acted on late, after the target has moved on, cannot harm what came since.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use pgbackman_db::restore::target;
use serde::{Deserialize, Serialize};

use super::RestoreSpec;
use crate::node;

const VERSION: u32 = 1;

/// The reconnection of the recovery gives up after this long at most (its statements are
/// bounded by `[nodes] statement_timeout`, see `NodeSession::bounded`).
const STEP_TIMEOUT: Duration = Duration::from_secs(30);

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
    /// (existing name, new name, OID) of a database being renamed out of the way.
    pub renaming: Option<(String, String, u32)>,
    /// Roles roles.sql is about to create (the set's roles missing on the target).
    pub creating_roles: Option<Vec<String>>,
    /// The roles it did create, with their OIDs (once roles.sql has run).
    pub created_roles: Option<BTreeMap<String, u32>>,
    /// Of the roles being created, those named in another encoding on the source: name →
    /// stored bytes (hex) they are renamed to after database.sql.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub role_bytes: BTreeMap<String, String>,
    /// The target database is being created (database sets).
    pub creating_db: bool,
    /// Its OID once created.
    pub db_oid: Option<u32>,
    /// CLUSTER/GLOBALS: the databases and roles on the target before the script ran.
    pub dbs_before: Option<BTreeSet<String>>,
    pub roles_before: Option<BTreeSet<String>>,
    /// CLUSTER/GLOBALS: the roles named in another encoding before the script (bytes in hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_roles_before: Option<BTreeSet<String>>,
    /// The run ended (its own outcome says what happened): nothing to recover.
    pub ended: bool,
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
    if !dir.is_dir() {
        crate::set::create_private_dir_all(dir)?;
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            crate::set::fsync_dir(parent)?;
        }
    }
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

/// Removes a journal (durably: the directory is fsynced).
pub fn remove_journal(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
        Ok(()) => crate::set::fsync_dir(path.parent().unwrap_or(Path::new("."))),
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
    /// What was undone, and what is left to check by hand, one line each.
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

fn did(lines: &mut Vec<String>, r: Result<(), String>, done: String, what: String) {
    lines.push(match r {
        Ok(()) => done,
        Err(e) => format!("could not {what}: {e}; do it by hand"),
    });
}

async fn timed<T>(what: &str, f: impl Future<Output = Result<T, String>>) -> Result<T, String> {
    tokio::time::timeout(STEP_TIMEOUT, f)
        .await
        .map_err(|_| format!("{what}: no answer within {}s", STEP_TIMEOUT.as_secs()))?
}

/// Undoes, on its target, what the run of the journal at `path` provably changed (see the
/// module's doc): `Ok(None)` when that run had ended (nothing to do), else what was undone and
/// what is left to check by hand. The journal is left in place: the caller removes it
/// ([`remove_journal`]) once it has recorded the outcome. Fails, changing nothing, when the
/// journal cannot be read or the target cannot be reached: try again later.
pub async fn undo_interrupted(path: &Path) -> Result<Option<Interrupted>, String> {
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
    if rec.changes.ended {
        return Ok(None);
    }
    let spec = &rec.spec;
    let label = &spec.node_label;
    let (session, _) = timed(
        "connect",
        node::connect(
            &spec.node,
            &spec.node.admin_dbname,
            &spec.application_name,
            None,
        ),
    )
    .await
    .map_err(|e| format!("cannot connect to {label}: {e}"))?;
    let c = &session.client;
    let state = session
        .bounded("reading the target", target::read_state(c))
        .await
        .map_err(|e| format!("cannot read {label}: {e}"))?;
    let force = state.server_version_num >= 130_000;
    let ch = rec.changes;
    let mut lines = Vec::new();

    // The database the run was creating: dropped only when it is the one the run made.
    let target_name = &spec.target_dbname;
    if ch.creating_db {
        let now = session
            .bounded("reading the target", target::database_oid(c, target_name))
            .await
            .map_err(|e| format!("cannot read {label}: {e}"))?;
        let moved = ch.renaming.as_ref().map(|r| r.2);
        match (now, ch.db_oid) {
            (Some(now), Some(made)) if now == made => did(
                &mut lines,
                session.bounded("dropping what the restore created", target::drop_database(c, target_name, force)).await,
                format!("dropped the partly restored database {target_name:?}"),
                format!("drop database {target_name:?}"),
            ),
            (Some(now), Some(made)) => lines.push(format!(
                    "database {target_name:?} on {label} is not the one this restore created (OID {now}, not {made}): left as it is"
                )),
            (Some(now), None) if Some(now) != moved => lines.push(format!(
                    "database {target_name:?} on {label} may have been created by this restore just before it was cut short (during database.sql): check it and drop it by hand"
                )),
            _ => {}
        }
    }
    // The roles it created: dropped only when they are the ones it made.
    match (&ch.created_roles, &ch.creating_roles) {
        (Some(made), _) => {
            let names: Vec<String> = made.keys().cloned().collect();
            let now = session
                .bounded("reading the target", target::role_oids(c, &names))
                .await
                .map_err(|e| format!("cannot read {label}: {e}"))?;
            // A role named in another encoding may have been renamed to its source bytes:
            // found by OID, and ours when it holds its UTF-8 name or those bytes.
            let oids: Vec<u32> = made.values().copied().collect();
            let by_oid = session
                .bounded("reading the target", target::role_bytes(c, &oids))
                .await
                .map_err(|e| format!("cannot read {label}: {e}"))?;
            for (name, oid) in made {
                let raw = ch.role_bytes.get(name).and_then(|h| hex::decode(h).ok());
                let ours = match (&raw, by_oid.get(oid)) {
                    (None, _) => now.get(name) == Some(oid),
                    (Some(raw), Some(b)) => b == raw || b == name.as_bytes(),
                    (Some(_), None) => false,
                };
                if ours {
                    did(
                        &mut lines,
                        session
                            .bounded(
                                "dropping what the restore created",
                                target::drop_role_oid(c, *oid),
                            )
                            .await,
                        format!("dropped role {name:?} created by this restore"),
                        format!("drop role {name:?}"),
                    );
                } else if now.contains_key(name) {
                    lines.push(format!(
                        "role {name:?} is not the one this restore created: left as it is"
                    ));
                }
            }
        }
        (None, Some(maybe)) => {
            let now = session
                .bounded("reading the target", target::existing_roles(c, maybe))
                .await
                .map_err(|e| format!("cannot read {label}: {e}"))?;
            if !now.is_empty() {
                lines.push(format!(
                        "role(s) {} may have been created by this restore just before it was cut short (during roles.sql): check them and drop them by hand",
                        now.into_iter().collect::<Vec<_>>().join(", ")
                    ));
            }
        }
        (None, None) => {}
    }
    // The database it moved out of the way: renamed back when it is still the one moved and
    // its name is free.
    if let Some((orig, new, oid)) = &ch.renaming {
        let at_new = session
            .bounded("reading the target", target::database_oid(c, new))
            .await
            .map_err(|e| format!("cannot read {label}: {e}"))?;
        let at_orig = session
            .bounded("reading the target", target::database_oid(c, orig))
            .await
            .map_err(|e| format!("cannot read {label}: {e}"))?;
        match (at_new, at_orig) {
            (Some(n), None) if n == *oid => did(
                &mut lines,
                session.bounded("renaming the database back", target::rename_database(c, new, orig)).await,
                format!("renamed database {new:?} back to {orig:?}"),
                format!("rename database {new:?} back to {orig:?}"),
            ),
            (Some(n), Some(_)) if n == *oid => lines.push(format!(
                    "database {orig:?} was renamed to {new:?} by this restore and {orig:?} is taken again: rename it back by hand"
                )),
            _ => {}
        }
    }
    // A CLUSTER or GLOBALS script: what it made cannot be told from what others made since.
    if let (Some(dbs), Some(roles)) = (&ch.dbs_before, &ch.roles_before) {
        let new_dbs: Vec<&String> = state.databases.difference(dbs).collect();
        let mut new_roles: Vec<String> = state.roles.difference(roles).cloned().collect();
        if let Some(raw) = &ch.raw_roles_before {
            new_roles.extend(
                state
                    .raw_roles
                    .keys()
                    .filter(|b| !raw.contains(&hex::encode(b)))
                    .map(|b| format!("{} (bytes {})", String::from_utf8_lossy(b), hex::encode(b))),
            );
        }
        if !new_dbs.is_empty() || !new_roles.is_empty() {
            lines.push(format!(
                    "the cluster script was cut short; databases [{}] and roles [{}] appeared on {label} since it started: check them and drop what it made by hand",
                    new_dbs.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", "),
                    new_roles.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
                ));
        }
    }
    if lines.is_empty() {
        lines.push("nothing had been changed on the target yet".into());
    }
    Ok(Some(Interrupted {
        job_id: spec.job_id,
        meta: spec
            .journal
            .as_ref()
            .map(|j| j.meta.clone())
            .unwrap_or_default(),
        started: rec.started,
        node_label: label.clone(),
        target_dbname: target_name.clone(),
        cleanup: lines,
    }))
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
        // An ended run is nothing to recover, whatever else its journal says.
        let ended = Changes {
            ended: true,
            ..c.clone()
        };
        assert!(e.contains("cannot connect to n:1"), "{e}");
        assert!(j.path.exists());
        write(&j, &spec, Utc::now(), &ended).unwrap();
        assert!(undo_interrupted(&j.path).await.unwrap().is_none());
        fs::write(&j.path, b"{\"version\": 1}").unwrap();
        assert!(
            undo_interrupted(&j.path)
                .await
                .unwrap_err()
                .contains("not a restore journal")
        );
        remove_journal(&j.path).unwrap();
        remove_journal(&j.path).unwrap();
        assert!(journals_in(&dir).unwrap().is_empty());
    }
}
