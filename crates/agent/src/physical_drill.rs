//! Physical restore drills (issue 12; verification level 3 of a base backup). A DRILL job of a
//! BASEBACKUP set restores, on this backup server, the base backup and the WAL after it into a
//! scratch instance (`<backup_dir>/drills/job-<JobID>`) to an LSN the catalog drew at random
//! inside the recoverable window (`api.physical_drill_plan`), with the pieces of the CLONE job:
//! `pgbackman_dump::pitr::extract` and `::recovery`, `restore_command` = `wal-get` (which
//! refuses a stored segment whose sha256 is not the ledger's, so the recovery stops instead of
//! ending early). Recovery pauses at the target; what it reached is checked, the instance is
//! promoted (a scratch instance never archives) so that `pg_amcheck --install-missing` can
//! check every database (or, without the binary, amcheck on the system catalogs and every
//! btree index of `postgres`), then stopped and removed. The time to recover (extract +
//! recovery) is what the catalog records. Journalled: an agent killed mid-drill stops and
//! removes the scratch instance at its next start ([`recover_interrupted`]).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use pgbackman_db::drill::PhysicalDrill;
use pgbackman_db::verify::VerifyJobInfo;
use pgbackman_dump::pitr::WalGetPlan;
use pgbackman_dump::pitr::recovery::{self, RecoverySpec, Target, sh_quote};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::job::Ctx;

/// How long recovery may take before the drill fails.
const RECOVERY_DEADLINE: Duration = Duration::from_secs(6 * 3600);

/// Where drills restore: `<backup_dir>/drills/job-<JobID>` (data/, the socket, server.log,
/// wal-get.json).
fn drills_dir(ctx: &Ctx) -> PathBuf {
    ctx.backup_dir().join("drills")
}

fn journal_dir(ctx: &Ctx) -> PathBuf {
    ctx.cfg.state_dir.join("drills")
}

/// What the next start needs to remove a scratch instance an agent stop left behind.
#[derive(Debug, Serialize, Deserialize)]
struct Journal {
    job_id: i64,
    dir: PathBuf,
    bin_dir: PathBuf,
}

struct Failure {
    step: &'static str,
    message: String,
    tail: Option<String>,
    /// A verdict on the backup (FAILED) rather than a drill that could not run (ERROR).
    verdict: bool,
}

fn error(step: &'static str, message: impl Into<String>) -> Failure {
    Failure {
        step,
        message: message.into(),
        tail: None,
        verdict: false,
    }
}

fn failed(step: &'static str, message: impl Into<String>, tail: Option<String>) -> Failure {
    Failure {
        step,
        message: message.into(),
        tail,
        verdict: true,
    }
}

/// Runs the drill of base backup `i.bck_id`; returns the result for `api.report_verification`.
pub async fn run(ctx: &Ctx, i: &VerifyJobInfo, cancel: &CancellationToken) -> Value {
    let started = Utc::now();
    let mut details = json!({"physical": true});
    let r = drill(ctx, i, cancel, &mut details).await;
    let mut v =
        json!({"level": 3, "started": started.to_rfc3339(), "finished": Utc::now().to_rfc3339()});
    match r {
        Ok(restore_seconds) => {
            v["state"] = json!("PASSED");
            v["restore_seconds"] = json!(restore_seconds);
        }
        Err(f) => {
            tracing::warn!(
                job_id = i.job_id,
                bck_id = i.bck_id,
                step = f.step,
                "physical restore drill: {}",
                f.message
            );
            v["state"] = json!(if cancel.is_cancelled() {
                "CANCELLED"
            } else if f.verdict {
                "FAILED"
            } else {
                "ERROR"
            });
            v["error_step"] = json!(f.step);
            v["error_message"] = json!(f.message);
            v["error_stderr_tail"] = json!(f.tail);
            if let Some(s) = details["restore_seconds"].as_f64() {
                v["restore_seconds"] = json!(s);
            }
        }
    }
    v["scratch_dbname"] = details["scratch"].clone();
    v["details"] = details;
    v
}

fn bin_dir_for(ctx: &Ctx, major: Option<&str>) -> Result<PathBuf, Failure> {
    crate::clone_job::server_bin_dir(ctx, major, "a drill").map_err(|e| error("plan", e))
}

/// A port for the scratch instance's socket name (it listens on no TCP address; its socket
/// directory is its own), outside the clones' range.
fn scratch_port() -> u16 {
    for _ in 0..20 {
        if let Ok(l) = std::net::TcpListener::bind(("127.0.0.1", 0))
            && let Ok(a) = l.local_addr()
            && !(55432..55632).contains(&a.port())
        {
            return a.port();
        }
    }
    56999
}

async fn drill(
    ctx: &Ctx,
    i: &VerifyJobInfo,
    cancel: &CancellationToken,
    details: &mut Value,
) -> Result<f64, Failure> {
    if nix::unistd::Uid::effective().is_root() {
        return Err(error(
            "plan",
            "the agent runs as root: PostgreSQL refuses to, and the scratch instance could not read the archive as another user; \
             run the agent as its service user (packaging/pgbackman-agent.service)",
        ));
    }
    let d: PhysicalDrill = ctx
        .db(
            "physical_drill_plan",
            ctx.catalog.physical_drill_plan(ctx.server_id, i.job_id),
        )
        .await
        .map_err(|e| error("plan", e.to_string()))?;
    details["node"] = json!(d.node);
    details["target_kind"] = json!(d.target_kind);
    details["target_lsn"] = json!(d.target_lsn);
    details["window"] = json!({"from_lsn": d.window_from_lsn, "to_lsn": d.window_to_lsn});
    details["timeline"] = d.plan["timeline"].clone();
    details["wal_segments"] = d.plan["wal_segments"].clone();
    let bin_dir = bin_dir_for(ctx, d.node_major.as_deref())?;
    let set_dir = PathBuf::from(d.plan["backup_dir"].as_str().unwrap_or_default());
    if !set_dir.join(pgbackman_dump::BASE_TAR_FILE).is_file() {
        return Err(failed(
            "fetch",
            format!(
                "the base backup set {} is not on this backup server (show_reconciliation)",
                set_dir.display()
            ),
            None,
        ));
    }
    let name = format!("job-{}", i.job_id);
    details["scratch"] = json!(format!("drills/{name}"));
    let dir = drills_dir(ctx).join(&name);
    if dir.exists() {
        // A directory of this job's earlier attempt that no journal covered: not ours to keep.
        recovery::stop_immediate(&bin_dir, &dir.join("data"));
        let _ = std::fs::remove_dir_all(&dir);
    }
    let jdir = journal_dir(ctx);
    let journal = Journal {
        job_id: i.job_id,
        dir: dir.clone(),
        bin_dir: bin_dir.clone(),
    };
    let jfile = jdir.join(format!("{}.json", i.job_id));
    std::fs::create_dir_all(&jdir)
        .and_then(|()| std::fs::write(&jfile, serde_json::to_vec(&journal).unwrap_or_default()))
        .map_err(|e| {
            error(
                "fetch",
                format!("writing the journal in {}: {e}", jdir.display()),
            )
        })?;
    let r = restore_and_check(ctx, &d, &dir, &bin_dir, &set_dir, cancel, details).await;
    recovery::stop_immediate(&bin_dir, &dir.join("data"));
    let removed = match std::fs::remove_dir_all(&dir) {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
        Err(e) => {
            tracing::warn!(
                "removing the drill's scratch instance {}: {e}",
                dir.display()
            );
            false
        }
    };
    details["scratch_removed"] = json!(removed);
    if removed {
        let _ = std::fs::remove_file(&jfile);
    }
    r
}

async fn restore_and_check(
    ctx: &Ctx,
    d: &PhysicalDrill,
    dir: &Path,
    bin_dir: &Path,
    set_dir: &Path,
    cancel: &CancellationToken,
    details: &mut Value,
) -> Result<f64, Failure> {
    use std::os::unix::fs::DirBuilderExt;
    let t0 = Instant::now();
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| error("fetch", format!("creating {}: {e}", dir.display())))?;
    let data = dir.join("data");
    let plan_file = dir.join("wal-get.json");
    let wg = WalGetPlan {
        server_id: ctx.server_id,
        node_id: d.node_id,
        system_identifier: d.plan["system_identifier"]
            .as_str()
            .unwrap_or_default()
            .into(),
        config: crate::clone_job::config_path(),
        files: ["wal", "history"]
            .iter()
            .flat_map(|k| d.plan[*k].as_array().cloned().unwrap_or_default())
            .filter_map(|w| serde_json::from_value(w).ok())
            .collect(),
    };
    std::fs::write(&plan_file, serde_json::to_vec(&wg).unwrap_or_default())
        .map_err(|e| error("fetch", format!("writing {}: {e}", plan_file.display())))?;

    // extract: a set that does not match its backup_manifest is a verdict on the backup.
    let t = Instant::now();
    let (sd, dd, p) = (
        set_dir.to_path_buf(),
        data.clone(),
        Arc::new(AtomicU64::new(0)),
    );
    let extracted = tokio::task::spawn_blocking(move || {
        pgbackman_dump::pitr::extract::extract_base(&sd, &dd, &|n| p.store(n, Ordering::Relaxed))
    })
    .await
    .map_err(|e| error("extract", e.to_string()))?
    .map_err(|e| failed("extract", e.to_string(), None))?;
    details["phases"] = json!({"extract": t.elapsed().as_secs_f64()});
    details["files_checked"] = json!(extracted.checked);
    if cancel.is_cancelled() {
        return Err(error("extract", "cancelled"));
    }

    // recovery, paused at the target.
    let t = Instant::now();
    let exe = std::env::current_exe()
        .map_err(|e| error("recovery", format!("the agent's own path: {e}")))?;
    let mut restore_command = format!("{} wal-get", sh_quote(&exe.display().to_string()));
    if let Some(cfg) = &wg.config {
        restore_command.push_str(&format!(
            " --config {}",
            sh_quote(&cfg.display().to_string())
        ));
    }
    restore_command.push_str(&format!(
        " --plan {} %f %p",
        sh_quote(&plan_file.display().to_string())
    ));
    let target =
        Target::from_kind(&d.target_kind, d.target_lsn.as_deref()).map_err(|e| error("plan", e))?;
    let spec = RecoverySpec {
        data_dir: data.clone(),
        socket_dir: dir.to_path_buf(),
        log_file: dir.join("server.log"),
        port: scratch_port(),
        bin_dir: bin_dir.to_path_buf(),
        restore_command,
        target: target.clone(),
        timeline: d.plan["timeline"].to_string(),
        action: "pause".into(),
        cluster_name: format!("pgbackman_drill_{}", d.bck_id),
        user: d.admin_user.clone(),
    };
    recovery::write_settings(&spec)
        .map_err(|e| error("recovery", format!("writing the recovery settings: {e}")))?;
    recovery::start(&spec).map_err(|e| failed("recovery", e.message, Some(e.log_tail)))?;
    let reached = recovery::wait(&spec, RECOVERY_DEADLINE, cancel)
        .await
        .map_err(|e| failed("recovery", e.message, Some(e.log_tail)))?;
    let recover_secs = t0.elapsed().as_secs_f64();
    details["phases"]["recovery"] = json!(t.elapsed().as_secs_f64());
    details["restore_seconds"] = json!(recover_secs);
    let read = reached.read.clone().unwrap_or_default();
    details["reached_lsn"] = json!(read.lsn);
    details["reached_timeline"] = json!(read.timeline);
    details["reached_time"] = json!(read.last_xact.map(|t| t.to_rfc3339()));
    details["restored_size"] = json!(read.size);

    // check: the point reached, then the pages and indexes.
    let t = Instant::now();
    let note = recovery::check_reached(&target, &reached, d.plan["stop_lsn"].as_str())
        .map_err(|e| failed("check", e, recovery::log_tail(&spec.log_file, 10).into()))?;
    let lineage = d.plan["lineage"].as_array().cloned().unwrap_or_default();
    if let Some(tl) = read.timeline
        && !lineage.is_empty()
        && !lineage.iter().any(|x| x.as_i64() == Some(tl))
    {
        return Err(failed(
            "check",
            format!(
                "recovery reached timeline {:?}, which is not on the planned lineage {}",
                read.timeline, d.plan["lineage"]
            ),
            None,
        ));
    }
    details["reached"] = json!(note);
    promote(&spec)?;
    let (tool, checked) = amcheck(&spec, cancel).await?;
    details["amcheck"] = json!(tool);
    details["amcheck_checked"] = json!(checked);
    details["phases"]["check"] = json!(t.elapsed().as_secs_f64());
    tracing::info!(bck_id = d.bck_id, target = ?d.target_lsn, "physical drill: {note}; {tool} clean");
    Ok(recover_secs)
}

fn clean_env(c: &mut Command) {
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("PG") {
            c.env_remove(k);
        }
    }
    c.stdin(Stdio::null()).current_dir("/");
}

/// Ends recovery (the scratch instance archives nothing) so that amcheck can be installed.
fn promote(s: &RecoverySpec) -> Result<(), Failure> {
    let mut c = Command::new(s.bin_dir.join("pg_ctl"));
    c.arg("-D")
        .arg(&s.data_dir)
        .args(["-w", "-t", "120", "promote"]);
    clean_env(&mut c);
    let out = c
        .output()
        .map_err(|e| error("check", format!("cannot run pg_ctl promote: {e}")))?;
    if !out.status.success() {
        return Err(error(
            "check",
            format!(
                "promoting the scratch instance for amcheck failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ));
    }
    Ok(())
}

/// `pg_amcheck --all --install-missing` (heap and btree of every database), or without the
/// binary amcheck on the system catalogs and the btree indexes of `postgres`. Returns which
/// ran and what it checked.
async fn amcheck(s: &RecoverySpec, cancel: &CancellationToken) -> Result<(String, Value), Failure> {
    let bin = s.bin_dir.join("pg_amcheck");
    if !bin.exists() {
        let n = pgbackman_db::drill::amcheck_catalogs(&s.socket_dir, s.port, &s.user)
            .await
            .map_err(|e| failed("amcheck", e.to_string(), None))?;
        return Ok((
            "amcheck (no pg_amcheck: system catalogs and btree indexes of postgres)".into(),
            json!(n),
        ));
    }
    let mut c = tokio::process::Command::new(&bin);
    c.arg("-h")
        .arg(&s.socket_dir)
        .args(["-p", &s.port.to_string(), "-U", &s.user])
        .args(["--all", "--install-missing", "--no-password"])
        .stdin(Stdio::null())
        .current_dir("/")
        .kill_on_drop(true);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("PG") {
            c.env_remove(k);
        }
    }
    let out = tokio::select! {
        o = c.output() => o.map_err(|e| error("amcheck", format!("cannot run {}: {e}", bin.display())))?,
        () = cancel.cancelled() => return Err(error("amcheck", "cancelled")),
    };
    if !out.status.success() {
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let tail: Vec<&str> = text.lines().rev().take(20).collect();
        let tail = tail.into_iter().rev().collect::<Vec<_>>().join("\n");
        // 2: corruption found; anything else: pg_amcheck could not check.
        return Err(if out.status.code() == Some(2) {
            failed(
                "amcheck",
                "pg_amcheck found corruption in the restored instance",
                Some(tail),
            )
        } else {
            failed(
                "amcheck",
                format!("pg_amcheck failed ({})", out.status),
                Some(tail),
            )
        });
    }
    Ok(("pg_amcheck --all".into(), json!("every database")))
}

/// Scratch instances an agent was running a drill in when it died: stopped and removed. Runs
/// at start; the job itself is failed by the usual interrupted-job path.
pub fn recover_interrupted(ctx: &Ctx) {
    let dir = journal_dir(ctx);
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return;
    };
    for e in rd.flatten() {
        let path = e.path();
        let Ok(j) = std::fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice::<Journal>(&b).map_err(|e| e.to_string()))
        else {
            tracing::warn!("ignoring {}: not a drill journal", path.display());
            continue;
        };
        recovery::stop_immediate(&j.bin_dir, &j.dir.join("data"));
        match std::fs::remove_dir_all(&j.dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::error!(
                    "cannot remove the scratch instance {} of an interrupted drill: {e}",
                    j.dir.display()
                );
                continue;
            }
        }
        tracing::warn!(
            job_id = j.job_id,
            "removed the scratch instance {} of a drill interrupted by an agent stop",
            j.dir.display()
        );
        let _ = std::fs::remove_file(&path);
    }
}
