//! At start, the backup jobs a killed agent was in the middle of (the `running/` markers of
//! `crate::spool`). Each marker names the directory its set was to be renamed to:
//! - no set there: the agent died before the rename (its staging directory was removed at
//!   start); recorded failed, "agent stopped during the run";
//! - a set that verifies (level 1: every file against its manifest): the backup finished and
//!   only its report was lost; recorded SUCCEEDED from the manifest, with a note that the agent
//!   restarted, so retention counts and removes it like any other;
//! - a set that does not verify: removed (it is this job's own, under a backup root), recorded
//!   failed with what was wrong.
//!
//! Either way the result goes through the spool, like any report: it reaches the catalog even
//! when the catalog is down at start.

use std::path::Path;
use std::sync::atomic::AtomicBool;

use pgbackman_config::AgentSection;
use pgbackman_dump::{BackupOutcome, FileEntry, MANIFEST_FILE, Manifest, Status, Verification};
use serde_json::Value;
use sha2::Digest;

use crate::spool::Marker;

/// Spools the result of every interrupted job (see the module documentation) and logs it.
pub fn interrupted(cfg: &AgentSection) {
    match crate::spool::recover_interrupted_with(&cfg.state_dir, |m| judge(cfg, m)) {
        Ok(keys) => {
            for k in keys {
                tracing::warn!("{} was interrupted by an agent stop: recorded", k.label());
            }
        }
        Err(e) => tracing::error!("{e:#}"),
    }
}

/// The result of an interrupted job whose set reached its final directory; None when it did not.
fn judge(cfg: &AgentSection, m: &Marker) -> Option<Value> {
    let dir = m.set_dir.as_deref()?;
    if std::fs::symlink_metadata(dir).is_err() {
        return None;
    }
    let started = std::time::Instant::now();
    match pgbackman_dump::verify::verify_checksums(dir, None, &AtomicBool::new(false)) {
        Ok(manifest) => match succeeded(dir, &manifest, started) {
            Ok(v) => {
                tracing::warn!(dir = %dir.display(), "an interrupted backup left a complete set that verifies: recorded SUCCEEDED");
                Some(v)
            }
            Err(e) => Some(damaged(cfg, m, dir, &e)),
        },
        Err(e) => Some(damaged(cfg, m, dir, &e)),
    }
}

/// The set is removed (only under a backup root of this agent) and the job recorded failed.
fn damaged(cfg: &AgentSection, m: &Marker, dir: &Path, why: &str) -> Value {
    let (roots, _) = crate::roots::roots(cfg, &[]);
    let fate = match crate::roots::deletable(&roots, dir)
        .and_then(|p| std::fs::remove_dir_all(&p).map_err(|e| e.to_string()))
    {
        Ok(()) => "it was removed".to_string(),
        Err(e) => format!("it could not be removed ({e})"),
    };
    tracing::warn!(dir = %dir.display(), "an interrupted backup left a set that does not verify ({why}): {fate}");
    serde_json::json!({
        "execution_status": "ERROR",
        "started": m.started.to_rfc3339(),
        "finished": chrono::Utc::now().to_rfc3339(),
        "error_step": "agent",
        "error_message": format!(
            "agent stopped during the run; the backup set it left in {} does not verify ({why}): {fate}",
            dir.display()
        ),
    })
}

/// The report of a set found complete, built from its manifest as the run would have made it.
fn succeeded(dir: &Path, m: &Manifest, t0: std::time::Instant) -> Result<Value, String> {
    let path = dir.join(MANIFEST_FILE);
    let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut files = m.files.clone();
    files.push(FileEntry {
        name: MANIFEST_FILE.to_string(),
        size: bytes.len() as u64,
        sha256: hex::encode(sha2::Sha256::digest(&bytes)),
    });
    let o = BackupOutcome {
        job_id: m.job_id,
        status: Status::Succeeded,
        started: m.started,
        finished: m.finished,
        backup_dir: Some(dir.to_path_buf()),
        total_size: files.iter().map(|f| f.size).sum(),
        files,
        dump_file: Some(m.dump_file.clone()),
        manifest_file: Some(MANIFEST_FILE.to_string()),
        role_list: m.role_list.clone(),
        client_version: Some(m.client_version.clone()),
        server_version: Some(m.server_version.clone()),
        server_version_num: Some(m.server_version_num),
        command: m.command.clone(),
        phase_timings: m
            .phase_timings
            .iter()
            .map(|p| (p.phase.clone(), p.seconds))
            .collect(),
        database_size: m.database_size,
        table_row_counts: m.table_row_counts.clone(),
        verification: Some(Verification {
            level: 1,
            state: pgbackman_dump::VerifyState::Passed,
            error: None,
            toc_entries: None,
            seconds: t0.elapsed().as_secs_f64(),
        }),
        object_prefix: None,
    };
    let def = &m.definition;
    let format = def["dump_format"].as_str().unwrap_or("custom");
    let level = def["compression_level"]
        .as_i64()
        .and_then(|l| i32::try_from(l).ok())
        .unwrap_or(3);
    let mut v = crate::job::outcome_json(format, level, &o);
    if let Some(e) = &m.encryption {
        // The keys that read it, from its manifest, as the run would have reported them.
        let fps: Vec<&str> = e
            .recipients
            .iter()
            .map(|r| r.fingerprint.as_str())
            .collect();
        v["encrypted_with"] = serde_json::json!(fps);
    }
    if m.code == "BASEBACKUP" {
        // Its WAL was not confirmed in the ledger before the stop: kept, not counted as
        // restorable (crate::basebackup_job).
        v["execution_status"] = Value::String("ERROR".into());
        v["error_step"] = Value::String("wait_for_wal".into());
        v["error_message"] = Value::String(format!(
            "the agent stopped while this base backup waited for its WAL in the archive; the set in {} verifies and is kept, \
             but is not counted as restorable. Run the definition again (run_backup_definition_now {})",
            dir.display(),
            def["def_id"]
        ));
        v["base_backup"] = m.dump_format["base_backup"].clone();
    }
    v["note"] = Value::String(format!(
        "the agent stopped after this set was complete and before its report; at restart the set verified \
         (level 1, every file against manifest.json) and was recorded from its manifest ({})",
        chrono::Utc::now().format("%Y-%m-%d %H:%M:%S UTC")
    ));
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_encrypted_set_found_in_place_is_recorded_with_its_keys() {
        let dir = tempfile::tempdir().unwrap();
        let m: Manifest = serde_json::from_value(serde_json::json!({
            "format": 2, "pgbackman_version": "x", "job_id": 7, "code": "FULL",
            "profile": "standard", "dbname": "shop", "node": "n:5432",
            "definition": {"dump_format": "custom", "compression_level": 3},
            "dump_format": {"kind": "custom"}, "dump_file": "dump.pgdump.zst",
            "server_version": "15", "server_version_num": 150000, "client_version": "pg_dump 15",
            "command": [], "commands": [], "files": [], "total_size": 0, "phase_timings": [],
            "role_list": [], "role_passwords": "", "database_size": null,
            "table_row_counts": null, "notes": [],
            "started": "2026-12-01T00:00:00Z", "finished": "2026-12-01T00:01:00Z",
            "encryption": {"scheme": "age", "files": ["dump.pgdump.zst"], "recipients": [
                {"fingerprint": "0123456789abcdef", "name": "site"},
                {"fingerprint": "fedcba9876543210", "name": "vault"}]}
        }))
        .unwrap();
        std::fs::write(
            dir.path().join(MANIFEST_FILE),
            serde_json::to_vec(&m).unwrap(),
        )
        .unwrap();
        let v = succeeded(dir.path(), &m, std::time::Instant::now()).unwrap();
        assert_eq!(
            v["encrypted_with"],
            serde_json::json!(["0123456789abcdef", "fedcba9876543210"])
        );
        let mut plain = m.clone();
        plain.encryption = None;
        let v = succeeded(dir.path(), &plain, std::time::Instant::now()).unwrap();
        assert!(v.get("encrypted_with").is_none());
    }
}
