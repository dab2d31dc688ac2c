//! The spool: every job result is first written here, durably, and only then delivered to the
//! catalog; a delivered entry is removed. So a result survives a catalog outage of any length,
//! an agent crash between the end of a job and its report, and a restart. Entries are replayed
//! in the order they were written; the catalog API is idempotent on each entry's key (the job id,
//! or the definition and scheduled instant of a fire that ran offline), so delivering an entry
//! twice records it once.
//!
//! Layout, under `<state_dir>/spool/`: one JSON file per result named
//! `<micros>-<seq>-<kind>.json` (sortable by write time), written to a temporary name, fsynced,
//! renamed, directory fsynced. `rejected/` keeps entries the catalog refused for good, for an
//! administrator to read. `running/` (beside it, in the state directory) holds one marker per job
//! in progress, so a job interrupted by a crash is recorded as failed at the next start.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::state::{create_dir_0700, write_atomic};

/// Version of the entry format; an agent refuses to replay entries of a newer one.
pub const FORMAT: u32 = 1;

/// What makes a result's delivery idempotent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Key {
    /// A job the catalog knows (claimed, or a fire recorded before it ran).
    Job { job_id: i64, attempt: i32 },
    /// A scheduled fire that ran while the catalog was unreachable: it has no job row yet.
    Scheduled {
        def_id: i64,
        scheduled_for: DateTime<Utc>,
    },
}

impl Key {
    /// A short name for logs and file names.
    pub fn label(&self) -> String {
        match self {
            Key::Job { job_id, attempt } => format!("job {job_id} (attempt {attempt})"),
            Key::Scheduled {
                def_id,
                scheduled_for,
            } => format!(
                "DefID {def_id} fire of {}",
                scheduled_for.format("%Y-%m-%dT%H:%M:%SZ")
            ),
        }
    }
}

/// One spooled result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    pub version: u32,
    /// The API that records it: `backup` (api.report_backup / api.report_offline_backup),
    /// `restore` (api.report_restore), `verification` (api.report_verification).
    pub kind: String,
    pub key: Key,
    pub server_id: i64,
    pub agent: String,
    pub written_at: DateTime<Utc>,
    pub result: Value,
}

impl Entry {
    pub fn backup(key: Key, server_id: i64, agent: &str, result: Value) -> Entry {
        Entry::new("backup", key, server_id, agent, result)
    }

    /// `kind`: `backup`, `restore` (api.report_restore) or `verification`
    /// (api.report_verification).
    pub fn new(kind: &str, key: Key, server_id: i64, agent: &str, result: Value) -> Entry {
        Entry {
            version: FORMAT,
            kind: kind.into(),
            key,
            server_id,
            agent: agent.to_string(),
            written_at: Utc::now(),
            result,
        }
    }
}

pub fn spool_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("spool")
}

fn rejected_dir(state_dir: &Path) -> PathBuf {
    spool_dir(state_dir).join("rejected")
}

fn running_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("running")
}

static SEQ: AtomicU64 = AtomicU64::new(0);

/// Writes `e` durably and returns its path.
pub fn write(state_dir: &Path, e: &Entry) -> Result<PathBuf> {
    let dir = spool_dir(state_dir);
    create_dir_0700(&dir)?;
    let micros = Utc::now().timestamp_micros().max(0);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let path = dir.join(format!("{micros:020}-{seq:06}-{}.json", e.kind));
    write_atomic(&path, &serde_json::to_vec_pretty(e)?)
        .with_context(|| format!("spooling the result of {}", e.key.label()))?;
    Ok(path)
}

/// Spooled entries, oldest first (temporary files of an interrupted write are skipped).
pub fn list(state_dir: &Path) -> Result<Vec<PathBuf>> {
    let dir = spool_dir(state_dir);
    let mut out = Vec::new();
    match fs::read_dir(&dir) {
        Ok(rd) => {
            for e in rd {
                let p = e?.path();
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                if p.is_file() && !name.starts_with('.') && name.ends_with(".json") {
                    out.push(p);
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    }
    out.sort();
    Ok(out)
}

pub fn read(p: &Path) -> Result<Entry> {
    let b = fs::read(p).with_context(|| format!("reading {}", p.display()))?;
    let e: Entry = serde_json::from_slice(&b)
        .with_context(|| format!("{} is not a spool entry", p.display()))?;
    if e.version > FORMAT {
        anyhow::bail!(
            "{} has format version {} (this agent reads up to {FORMAT}); a newer agent wrote it",
            p.display(),
            e.version
        );
    }
    Ok(e)
}

/// Removes a delivered entry (and makes the removal durable).
pub fn remove(p: &Path) -> Result<()> {
    fs::remove_file(p).with_context(|| format!("removing {}", p.display()))?;
    if let Some(d) = p.parent() {
        let _ = fs::File::open(d).and_then(|d| d.sync_all());
    }
    Ok(())
}

/// Moves an entry the catalog refused for good aside, with the reason beside it.
pub fn reject(state_dir: &Path, p: &Path, reason: &str) -> Result<PathBuf> {
    let dir = rejected_dir(state_dir);
    create_dir_0700(&dir)?;
    let name = p.file_name().context("spool entry without a name")?;
    let to = dir.join(name);
    fs::rename(p, &to).with_context(|| format!("moving {} to {}", p.display(), dir.display()))?;
    let mut why = to.clone().into_os_string();
    why.push(".reason");
    write_atomic(Path::new(&why), reason.as_bytes())?;
    Ok(to)
}

pub fn rejected_count(state_dir: &Path) -> usize {
    fs::read_dir(rejected_dir(state_dir))
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
                .count()
        })
        .unwrap_or(0)
}

/// A job in progress: what to record if the agent dies before it ends.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Marker {
    pub version: u32,
    pub key: Key,
    pub server_id: i64,
    pub agent: String,
    pub started: DateTime<Utc>,
    /// The local id the job runs under (the job id, or a negative id for an offline fire).
    pub local_id: i64,
    /// Where the finished set is renamed to, once the job knows it: at the next start, a
    /// complete set there is recorded as what it is (`crate::recover`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set_dir: Option<PathBuf>,
}

fn marker_path(state_dir: &Path, local_id: i64) -> PathBuf {
    running_dir(state_dir).join(format!("{local_id}.json"))
}

pub fn mark_running(state_dir: &Path, m: &Marker) -> Result<()> {
    create_dir_0700(&running_dir(state_dir))?;
    write_atomic(&marker_path(state_dir, m.local_id), &serde_json::to_vec(m)?)
}

/// Records in the job's marker where its set will be renamed to (before the run starts).
pub fn note_set_dir(state_dir: &Path, m: &Marker, set_dir: &Path) -> Result<()> {
    let m = Marker {
        set_dir: Some(set_dir.to_path_buf()),
        ..m.clone()
    };
    mark_running(state_dir, &m)
}

pub fn clear_running(state_dir: &Path, local_id: i64) {
    let _ = fs::remove_file(marker_path(state_dir, local_id));
}

/// The markers of the jobs in progress (unreadable ones skipped).
pub fn running_markers(state_dir: &Path) -> Vec<Marker> {
    fs::read_dir(running_dir(state_dir))
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| fs::read(e.path()).ok())
                .filter_map(|b| serde_json::from_slice(&b).ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Markers left by a previous run of the agent: each is a job it was running when it died.
/// They become spooled failures ("agent stopped during the run"), unless that job's own result
/// reached the spool first.
pub fn recover_interrupted(state_dir: &Path) -> Result<Vec<Key>> {
    recover_interrupted_with(state_dir, |_| None)
}

/// [`recover_interrupted`] where `judge` may give the result of an interrupted job (a set that
/// was complete when the agent died, see `crate::recover`); None spools the failure above.
pub fn recover_interrupted_with(
    state_dir: &Path,
    judge: impl Fn(&Marker) -> Option<Value>,
) -> Result<Vec<Key>> {
    let dir = running_dir(state_dir);
    let rd = match fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    let spooled: Vec<Key> = list(state_dir)?
        .iter()
        .filter_map(|p| read(p).ok())
        .map(|e| e.key)
        .collect();
    let mut out = Vec::new();
    for e in rd.flatten() {
        let p = e.path();
        let m: Marker = match fs::read(&p)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
        {
            Some(m) => m,
            None => {
                // A marker cut short by a crash during its own write: nothing ran yet.
                let _ = fs::remove_file(&p);
                continue;
            }
        };
        if !spooled.contains(&m.key) {
            let now = Utc::now().to_rfc3339();
            let result = judge(&m).unwrap_or_else(|| {
                serde_json::json!({
                    "execution_status": "ERROR",
                    "started": m.started.to_rfc3339(),
                    "finished": now,
                    "error_step": "agent",
                    "error_message": "agent stopped during the run",
                })
            });
            write(
                state_dir,
                &Entry::backup(m.key.clone(), m.server_id, &m.agent, result),
            )?;
            out.push(m.key);
        }
        fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
    }
    Ok(out)
}

/// Keys of everything spooled (a job whose result waits here is not an interrupted job).
pub fn spooled_keys(state_dir: &Path) -> Vec<Key> {
    list(state_dir)
        .unwrap_or_default()
        .iter()
        .filter_map(|p| read(p).ok())
        .map(|e| e.key)
        .collect()
}

/// Keys of the jobs running now (their markers in `running/`).
pub fn running_keys(state_dir: &Path) -> Vec<Key> {
    fs::read_dir(running_dir(state_dir))
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| fs::read(e.path()).ok())
                .filter_map(|b| serde_json::from_slice::<Marker>(&b).ok())
                .map(|m| m.key)
                .collect()
        })
        .unwrap_or_default()
}

/// The last scheduled instant this agent started for each definition, kept beside the spool:
/// while the catalog is unreachable it is the only thing that stops a restart from running an
/// instant a second time (online, the catalog's unique job index does that too).
fn fired_path(state_dir: &Path, def_id: i64) -> PathBuf {
    state_dir.join("fired").join(def_id.to_string())
}

pub fn last_fired(state_dir: &Path, def_id: i64) -> Option<DateTime<Utc>> {
    let s = fs::read_to_string(fired_path(state_dir, def_id)).ok()?;
    DateTime::parse_from_rfc3339(s.trim())
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// Written durably before the job starts: a crash after this never re-runs the instant.
pub fn record_fired(state_dir: &Path, def_id: i64, at: DateTime<Utc>) -> Result<()> {
    create_dir_0700(&state_dir.join("fired"))?;
    write_atomic(&fired_path(state_dir, def_id), at.to_rfc3339().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: i64) -> Key {
        Key::Job {
            job_id: n,
            attempt: 1,
        }
    }

    #[test]
    fn entries_come_back_in_write_order_and_go_away() {
        let d = tempfile::tempdir().unwrap();
        for n in 0..5 {
            write(
                d.path(),
                &Entry::backup(key(n), 1, "a", serde_json::json!({"n": n})),
            )
            .unwrap();
        }
        // A temporary file of an interrupted write is not an entry.
        fs::write(spool_dir(d.path()).join(".x.json.tmp-1"), b"{").unwrap();
        let l = list(d.path()).unwrap();
        assert_eq!(l.len(), 5);
        let keys: Vec<Key> = l.iter().map(|p| read(p).unwrap().key).collect();
        assert_eq!(keys, (0..5).map(key).collect::<Vec<_>>());
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(&l[0]).unwrap().permissions().mode() & 0o777,
            0o600
        );
        remove(&l[0]).unwrap();
        assert_eq!(list(d.path()).unwrap().len(), 4);
        reject(d.path(), &l[1], "refused").unwrap();
        assert_eq!(list(d.path()).unwrap().len(), 3);
        assert_eq!(rejected_count(d.path()), 1);
    }

    #[test]
    fn a_newer_format_is_not_replayed() {
        let d = tempfile::tempdir().unwrap();
        let mut e = Entry::backup(key(1), 1, "a", Value::Null);
        e.version = FORMAT + 1;
        let p = write(d.path(), &e).unwrap();
        assert!(read(&p).unwrap_err().to_string().contains("newer agent"));
    }

    #[test]
    fn interrupted_jobs_become_failures_unless_their_result_was_spooled() {
        let d = tempfile::tempdir().unwrap();
        let at = Utc::now();
        for (id, k) in [
            (
                -5,
                Key::Scheduled {
                    def_id: 3,
                    scheduled_for: at,
                },
            ),
            (7, key(7)),
        ] {
            mark_running(
                d.path(),
                &Marker {
                    version: FORMAT,
                    key: k,
                    server_id: 1,
                    agent: "a".into(),
                    started: at,
                    local_id: id,
                    set_dir: None,
                },
            )
            .unwrap();
        }
        // Job 7 finished and spooled its result, then the agent died before removing its marker.
        write(
            d.path(),
            &Entry::backup(
                key(7),
                1,
                "a",
                serde_json::json!({"execution_status": "SUCCEEDED"}),
            ),
        )
        .unwrap();
        let got = recover_interrupted(d.path()).unwrap();
        assert_eq!(
            got,
            vec![Key::Scheduled {
                def_id: 3,
                scheduled_for: at
            }]
        );
        let entries: Vec<Entry> = list(d.path())
            .unwrap()
            .iter()
            .map(|p| read(p).unwrap())
            .collect();
        assert_eq!(entries.len(), 2);
        assert_eq!(
            entries[1].result["error_message"],
            "agent stopped during the run"
        );
        assert!(recover_interrupted(d.path()).unwrap().is_empty());
    }

    #[test]
    fn the_fired_ledger_remembers_the_last_instant() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(last_fired(d.path(), 4), None);
        let at = DateTime::parse_from_rfc3339("2026-11-21T07:28:00Z")
            .unwrap()
            .with_timezone(&Utc);
        record_fired(d.path(), 4, at).unwrap();
        assert_eq!(last_fired(d.path(), 4), Some(at));
    }
}
