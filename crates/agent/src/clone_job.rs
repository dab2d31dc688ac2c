//! One CLONE job (issue 12): a point-in-time restore into a new instance on this backup server.
//! Phases, each timed: fetch (the plan asked for again, the set found, `wal-get.json` written),
//! extract (`pgbackman_dump::pitr::extract`), recovery (settings, start, wait for the target)
//! and check (what was reached against the target). The clone runs as the agent's own user;
//! as root the job is refused (PostgreSQL would run as another user, who cannot read the
//! archive). Journalled: a file in `<state_dir>/clones/` names the directory before anything is
//! created, so an agent killed mid-restore stops and removes the half-made clone at its next
//! start ([`recover_interrupted`]) and the job's row says so. The result reaches the catalog
//! through the spool as a "backup" report, which `api.report_backup` hands to `report_clone`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use chrono::Utc;
use pgbackman_db::agent::ClaimedJob;
use pgbackman_db::pitr::{CloneJob, PlannedWal};
use pgbackman_dump::pitr::WalGetPlan;
use pgbackman_dump::pitr::recovery::{self, RecoverySpec, Target, sh_quote};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::job::{AbortOnDrop, Ctx, Done, heartbeat};

/// How long recovery may take before the job gives up.
const RECOVERY_DEADLINE: Duration = Duration::from_secs(6 * 3600);

static CONFIG_PATH: OnceLock<Option<PathBuf>> = OnceLock::new();

/// The agent's configuration file, for the `wal-get` of its clones (set once at start).
pub fn set_config_path(p: Option<PathBuf>) {
    let _ = CONFIG_PATH.set(p.map(|p| std::path::absolute(&p).unwrap_or(p)));
}

/// The agent's configuration file, as set at start (physical drills' `wal-get` reads it too).
pub fn config_path() -> Option<PathBuf> {
    CONFIG_PATH.get().cloned().flatten()
}

/// Where clones live: `<backup_dir>/clones/<name>` (data/, the socket, server.log,
/// wal-get.json).
pub fn clones_dir(ctx: &Ctx) -> PathBuf {
    ctx.backup_dir().join("clones")
}

fn journal_dir(ctx: &Ctx) -> PathBuf {
    ctx.cfg.state_dir.join("clones")
}

/// What the next start needs to remove a half-made clone.
#[derive(Debug, Serialize, Deserialize)]
struct Journal {
    clone_id: i64,
    job_id: i64,
    attempt: i32,
    dir: PathBuf,
    bin_dir: PathBuf,
    started: chrono::DateTime<Utc>,
}

/// Reads what a claimed CLONE job needs; a job that cannot be read is reported failed.
pub async fn prepare(ctx: &Ctx, c: &ClaimedJob) -> Option<CloneJob> {
    match ctx
        .db(
            "agent_clone_job",
            ctx.catalog.agent_clone_job(ctx.server_id, c.job_id),
        )
        .await
    {
        Ok(j) => Some(j),
        Err(e) => {
            let now = Utc::now().to_rfc3339();
            let r = json!({"execution_status": "ERROR", "started": now, "finished": now,
                "error_step": "plan", "error_message": e.to_string()});
            report(ctx, c.job_id, c.attempt, r).await;
            None
        }
    }
}

struct Failure {
    step: &'static str,
    message: String,
}

fn fail(step: &'static str, message: impl Into<String>) -> Failure {
    Failure {
        step,
        message: message.into(),
    }
}

/// Runs the job and reports it.
pub async fn run(
    ctx: Arc<Ctx>,
    job_id: i64,
    attempt: i32,
    node_id: i64,
    j: CloneJob,
    cancel: CancellationToken,
) -> Done {
    let progress = Arc::new(AtomicU64::new(0));
    let hb = AbortOnDrop(tokio::spawn(heartbeat(
        ctx.clone(),
        job_id,
        attempt,
        progress.clone(),
        cancel.clone(),
    )));
    let started = Utc::now();
    let mut phases: Vec<(String, f64)> = Vec::new();
    let r = match j.op.as_deref() {
        Some(op) => {
            tracing::info!(job_id, clone = %j.name, op, "clone operation started");
            operate(&ctx, &j, op).await
        }
        None => {
            tracing::info!(job_id, clone = %j.name, port = j.port, "clone restore started");
            execute(&ctx, job_id, attempt, &j, &cancel, &progress, &mut phases).await
        }
    };
    drop(hb);
    let timings = crate::job::timings_json(&phases);
    let mut result = match r {
        Ok(v) => v,
        Err(f) => {
            tracing::warn!(job_id, clone = %j.name, step = f.step, "clone restore failed: {}", f.message);
            json!({"execution_status": if cancel.is_cancelled() { "CANCELLED" } else { "ERROR" },
                   "error_step": f.step, "error_message": f.message})
        }
    };
    result["started"] = json!(started.to_rfc3339());
    result["finished"] = json!(Utc::now().to_rfc3339());
    result["phase_timings"] = Value::Object(timings);
    let status = if result["execution_status"] == "SUCCEEDED" {
        "SUCCEEDED"
    } else {
        "ERROR"
    };
    report(&ctx, job_id, attempt, result).await;
    if j.op.is_none() {
        let _ = std::fs::remove_file(journal_dir(&ctx).join(format!("{}.json", j.clone_id)));
    }
    Done {
        job_id,
        node_id,
        status,
    }
}

fn bin_dir_for(ctx: &Ctx, major: Option<&str>) -> Result<PathBuf, Failure> {
    server_bin_dir(ctx, major, "a clone").map_err(|e| fail("plan", e))
}

/// The server programs of the node's major for a recovered instance (`what`: "a clone", "a
/// drill"), or why there are none and what to install.
pub(crate) fn server_bin_dir(
    ctx: &Ctx,
    major: Option<&str>,
    what: &str,
) -> Result<PathBuf, String> {
    let major: u32 = major
        .and_then(|m| m.trim().parse().ok())
        .ok_or("the base backup does not say which PostgreSQL major took it")?;
    let dir = ctx.bin_dirs().get(&major).cloned().ok_or_else(|| {
        format!(
            "no PostgreSQL {major} programs on this backup server ({what} runs with the node's major); \
             install postgresql-{major} or set [agent] bin_dirs"
        )
    })?;
    if !dir.join("pg_ctl").exists() || !dir.join("postgres").exists() {
        return Err(format!(
            "{} has no pg_ctl and postgres: {what} needs the PostgreSQL {major} server package",
            dir.display()
        ));
    }
    Ok(dir)
}

fn planned(v: &Value) -> Vec<PlannedWal> {
    ["wal", "history"]
        .iter()
        .flat_map(|k| v[*k].as_array().cloned().unwrap_or_default())
        .filter_map(|w| serde_json::from_value(w).ok())
        .collect()
}

#[allow(clippy::too_many_arguments)]
async fn execute(
    ctx: &Ctx,
    job_id: i64,
    attempt: i32,
    j: &CloneJob,
    cancel: &CancellationToken,
    progress: &Arc<AtomicU64>,
    phases: &mut Vec<(String, f64)>,
) -> Result<Value, Failure> {
    if nix::unistd::Uid::effective().is_root() {
        return Err(fail(
            "plan",
            "the agent runs as root: PostgreSQL refuses to, and the clone could not read the archive as another user; \
             run the agent as its service user (packaging/pgbackman-agent.service)",
        ));
    }
    // fetch: the plan, the set, the restore's plan file.
    let t = std::time::Instant::now();
    let plan = &j.plan;
    let bin_dir = bin_dir_for(ctx, j.node_major.as_deref())?;
    let set_dir = PathBuf::from(plan["backup_dir"].as_str().unwrap_or_default());
    if !set_dir.join(pgbackman_dump::BASE_TAR_FILE).is_file() {
        return Err(fail(
            "fetch",
            format!(
                "the base backup set {} is not on this backup server (show_reconciliation)",
                set_dir.display()
            ),
        ));
    }
    let port = u16::try_from(j.port).map_err(|_| fail("plan", format!("port {}", j.port)))?;
    if std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
        return Err(fail(
            "plan",
            format!(
                "port {port} is in use on this backup server; register the clone again with another --port"
            ),
        ));
    }
    let dir = clones_dir(ctx).join(&j.name);
    if dir.exists() {
        return Err(fail(
            "fetch",
            format!(
                "{} exists already (a clone of that name not deleted?)",
                dir.display()
            ),
        ));
    }
    let jdir = journal_dir(ctx);
    let journal = Journal {
        clone_id: j.clone_id,
        job_id,
        attempt,
        dir: dir.clone(),
        bin_dir: bin_dir.clone(),
        started: Utc::now(),
    };
    std::fs::create_dir_all(&jdir)
        .and_then(|()| {
            std::fs::write(
                jdir.join(format!("{}.json", j.clone_id)),
                serde_json::to_vec(&journal).unwrap_or_default(),
            )
        })
        .map_err(|e| {
            fail(
                "fetch",
                format!("writing the journal in {}: {e}", jdir.display()),
            )
        })?;
    let r = build(
        ctx, j, &dir, &bin_dir, &set_dir, port, cancel, progress, phases, t,
    )
    .await;
    if r.is_err() {
        recovery::stop_immediate(&bin_dir, &dir.join("data"));
        if let Err(e) = std::fs::remove_dir_all(&dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!("removing the failed clone {}: {e}", dir.display());
        }
    }
    r
}

#[allow(clippy::too_many_arguments)]
async fn build(
    ctx: &Ctx,
    j: &CloneJob,
    dir: &Path,
    bin_dir: &Path,
    set_dir: &Path,
    port: u16,
    cancel: &CancellationToken,
    progress: &Arc<AtomicU64>,
    phases: &mut Vec<(String, f64)>,
    t: std::time::Instant,
) -> Result<Value, Failure> {
    use std::os::unix::fs::DirBuilderExt;
    let plan = &j.plan;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| fail("fetch", format!("creating {}: {e}", dir.display())))?;
    let data = dir.join("data");
    let _ = ctx
        .db(
            "clone_restoring",
            ctx.catalog
                .clone_restoring(ctx.server_id, j.clone_id, &data.display().to_string()),
        )
        .await;
    let plan_file = dir.join("wal-get.json");
    let wg = WalGetPlan {
        server_id: ctx.server_id,
        node_id: plan["node_id"].as_i64().unwrap_or_default(),
        system_identifier: plan["system_identifier"]
            .as_str()
            .unwrap_or_default()
            .into(),
        config: CONFIG_PATH.get().cloned().flatten(),
        files: planned(plan),
    };
    std::fs::write(&plan_file, serde_json::to_vec(&wg).unwrap_or_default())
        .map_err(|e| fail("fetch", format!("writing {}: {e}", plan_file.display())))?;
    phases.push(("fetch".into(), t.elapsed().as_secs_f64()));

    // extract
    let t = std::time::Instant::now();
    let (sd, dd, p) = (set_dir.to_path_buf(), data.clone(), progress.clone());
    let extracted = tokio::task::spawn_blocking(move || {
        pgbackman_dump::pitr::extract::extract_base(&sd, &dd, &|n| p.store(n, Ordering::Relaxed))
    })
    .await
    .map_err(|e| fail("extract", e.to_string()))?
    .map_err(|e| fail("extract", e.to_string()))?;
    phases.push(("extract".into(), t.elapsed().as_secs_f64()));
    if cancel.is_cancelled() {
        return Err(fail("extract", "cancelled"));
    }

    // recovery
    let t = std::time::Instant::now();
    let exe = std::env::current_exe()
        .map_err(|e| fail("recovery", format!("the agent's own path: {e}")))?;
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
    let target = Target::from_kind(
        j.target["kind"].as_str().unwrap_or_default(),
        j.target["value"].as_str(),
    )
    .map_err(|e| fail("plan", e))?;
    let action = j.target["action"].as_str().unwrap_or("promote").to_string();
    let spec = RecoverySpec {
        data_dir: data.clone(),
        socket_dir: dir.to_path_buf(),
        log_file: dir.join("server.log"),
        port,
        bin_dir: bin_dir.to_path_buf(),
        restore_command,
        target: target.clone(),
        timeline: plan["timeline"].to_string(),
        action: action.clone(),
        cluster_name: format!("pgbackman_clone_{}", j.name),
        user: j.admin_user.clone(),
    };
    recovery::write_settings(&spec)
        .map_err(|e| fail("recovery", format!("writing the recovery settings: {e}")))?;
    recovery::start(&spec).map_err(|e| fail("recovery", e.to_string()))?;
    let reached = recovery::wait(&spec, RECOVERY_DEADLINE, cancel)
        .await
        .map_err(|e| fail("recovery", e.to_string()))?;
    phases.push(("recovery".into(), t.elapsed().as_secs_f64()));

    // check
    let t = std::time::Instant::now();
    let note = recovery::check_reached(&target, &reached, plan["stop_lsn"].as_str())
        .map_err(|e| fail("check", e))?;
    phases.push(("check".into(), t.elapsed().as_secs_f64()));
    let read = reached.read.clone().unwrap_or_default();
    let size = read.size.unwrap_or_else(|| dir_size(&data) as i64);
    tracing::info!(clone = %j.name, state = %reached.state, "{note}");
    Ok(json!({
        "execution_status": "SUCCEEDED",
        "clone_state": if reached.state == "shut down" { "STOPPED" } else { "RUNNING" },
        "recovery_state": reached.state,
        "data_dir": data.display().to_string(),
        "conninfo": format!("host={} port={port} user={} dbname=postgres", dir.display(), j.admin_user),
        "reached_lsn": read.lsn,
        "reached_timeline": reached.new_timeline.or(read.timeline),
        "reached_time": read.last_xact.map(|t| t.to_rfc3339()),
        "size": size,
        "note": format!("{note}; {} files extracted, {} checked against backup_manifest", extracted.files, extracted.checked),
    }))
}

/// stop_clone (a fast shutdown), start_clone (started, and ready for connections again: a
/// paused clone recovers to its target and pauses again), delete_clone (stopped at once and
/// its directory removed).
async fn operate(ctx: &Ctx, j: &CloneJob, op: &str) -> Result<Value, Failure> {
    let bin_dir = bin_dir_for(ctx, j.node_major.as_deref())?;
    let data = PathBuf::from(j.data_dir.clone().unwrap_or_default());
    let dir = data.parent().map(Path::to_path_buf).unwrap_or_default();
    // Only a directory of this agent's clones is ever touched.
    if data.as_os_str().is_empty() || dir != clones_dir(ctx).join(&j.name) {
        return Err(fail(
            op_step(op),
            format!(
                "clone {} has no directory under {}",
                j.name,
                clones_dir(ctx).display()
            ),
        ));
    }
    let port = u16::try_from(j.port).map_err(|_| fail("plan", format!("port {}", j.port)))?;
    match op {
        "stop" => {
            let d = data.clone();
            let b = bin_dir.clone();
            tokio::task::spawn_blocking(move || recovery::stop_fast(&b, &d))
                .await
                .map_err(|e| fail("stop", e.to_string()))?
                .map_err(|e| fail("stop", e))?;
            Ok(json!({"execution_status": "SUCCEEDED", "clone_state": "STOPPED"}))
        }
        "start" => {
            let spec = RecoverySpec {
                data_dir: data.clone(),
                socket_dir: dir.clone(),
                log_file: dir.join("server.log"),
                port,
                bin_dir,
                restore_command: String::new(),
                target: Target::Immediate,
                timeline: String::new(),
                action: String::new(),
                cluster_name: String::new(),
                user: j.admin_user.clone(),
            };
            recovery::start(&spec).map_err(|e| fail("start", e.to_string()))?;
            recovery::wait_ready(&spec, Duration::from_secs(600))
                .await
                .map_err(|e| fail("start", e.to_string()))?;
            Ok(json!({"execution_status": "SUCCEEDED", "clone_state": "RUNNING"}))
        }
        "delete" => {
            recovery::stop_immediate(&bin_dir, &data);
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(fail("delete", format!("removing {}: {e}", dir.display()))),
            }
            Ok(
                json!({"execution_status": "SUCCEEDED", "clone_state": "DELETED",
                      "note": format!("deleted: {} removed", dir.display())}),
            )
        }
        other => Err(fail("plan", format!("unknown clone operation {other}"))),
    }
}

fn op_step(op: &str) -> &'static str {
    match op {
        "stop" => "stop",
        "start" => "start",
        _ => "delete",
    }
}

fn dir_size(p: &Path) -> u64 {
    let mut n = 0;
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => n += dir_size(&e.path()),
                Ok(m) => n += m.len(),
                Err(_) => {}
            }
        }
    }
    n
}

async fn report(ctx: &Ctx, job_id: i64, attempt: i32, result: Value) {
    let entry = crate::spool::Entry::new(
        "backup",
        crate::spool::Key::Job { job_id, attempt },
        ctx.server_id,
        &ctx.agent_name,
        result,
    );
    crate::job::submit(ctx, entry).await;
}

/// Clones an agent was building when it died: their server stopped, their directory removed,
/// their job reported failed saying so. Runs at start, before interrupted jobs are failed.
pub async fn recover_interrupted(ctx: &Ctx) {
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
            tracing::warn!("ignoring {}: not a clone journal", path.display());
            continue;
        };
        recovery::stop_immediate(&j.bin_dir, &j.dir.join("data"));
        let removed = match std::fs::remove_dir_all(&j.dir) {
            Ok(()) => true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
            Err(e) => {
                tracing::error!("cannot remove the half-made clone {}: {e}", j.dir.display());
                false
            }
        };
        if !removed {
            continue;
        }
        tracing::warn!(
            job_id = j.job_id,
            "removed the half-made clone {} left by an agent stop",
            j.dir.display()
        );
        let r = json!({"execution_status": "ERROR", "started": j.started.to_rfc3339(),
            "finished": Utc::now().to_rfc3339(), "error_step": "agent",
            "error_message": format!("agent stopped during the restore; the half-made clone in {} was stopped and removed at its next start", j.dir.display())});
        report(ctx, j.job_id, j.attempt, r).await;
        let _ = std::fs::remove_file(&path);
    }
}
