//! The clone lifecycle on this backup server (issue 12, part E): the states the shell asked
//! for (`start_clone`, `stop_clone`, `delete_clone`, and maintenance's expiry) reached with
//! `pg_ctl` of the node's major and the clone's directory removed; at start, the clones the
//! catalog says are RUNNING kept running (or started again when their server is gone, e.g.
//! after a reboot) and said so in the log and the clone's note; in maintenance, expiry and
//! the clones' disk use. Clones are the CLONE job's (`clone_job`): `<backup_dir>/clones/<name>`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;

use chrono::Utc;
use pgbackman_db::clone_lifecycle::CloneOnDisk;
use pgbackman_dump::pitr::recovery;
use serde_json::json;

use crate::job::Ctx;

/// One pass at a time (a notification and a re-poll may both ask).
static PASS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Runs [`apply`] in the background (the main loop does not wait for pg_ctl).
pub fn spawn_apply(ctx: Arc<Ctx>) {
    tokio::spawn(async move { apply(&ctx).await });
}

/// Brings every clone whose asked-for state differs from its own to that state.
pub async fn apply(ctx: &Ctx) {
    let _g = PASS.lock().await;
    let Ok(list) = ctx
        .db(
            "agent_clone_actions",
            ctx.catalog.agent_clone_actions(ctx.server_id),
        )
        .await
    else {
        return;
    };
    for c in list {
        let want = c.desired_state.clone().unwrap_or_default();
        let (state, error, note) = match act(ctx, &c, &want).await {
            Ok(note) => (want.clone(), None, Some(note)),
            Err(e) => {
                tracing::error!(clone = %c.name, clone_id = c.clone_id, "cannot make the clone {want}: {e}");
                (want.clone(), Some(e), None)
            }
        };
        if error.is_none() {
            tracing::info!(clone = %c.name, clone_id = c.clone_id, "clone {}", state.to_lowercase());
        }
        let _ = ctx
            .db(
                "clone_action_done",
                ctx.catalog.clone_action_done(
                    ctx.server_id,
                    c.clone_id,
                    &state,
                    error.as_deref(),
                    note.as_deref(),
                ),
            )
            .await;
    }
}

/// The clone's directory: always `<backup_dir>/clones/<name>` (the catalog's name is checked
/// against a safe charset; a data_dir elsewhere is never removed).
fn clone_dir(ctx: &Ctx, c: &CloneOnDisk) -> PathBuf {
    crate::clone_job::clones_dir(ctx).join(&c.name)
}

fn bin_dir(ctx: &Ctx, c: &CloneOnDisk) -> Result<PathBuf, String> {
    let major: u32 = c
        .node_major
        .as_deref()
        .and_then(|m| m.trim().parse().ok())
        .ok_or("the clone's base backup does not say which PostgreSQL major took it")?;
    ctx.bin_dirs().get(&major).cloned().ok_or_else(|| {
        format!("no PostgreSQL {major} programs on this backup server; install postgresql-{major} or set [agent] bin_dirs")
    })
}

async fn pg_ctl(bin: &Path, data: &Path, args: &[&str]) -> Result<(), String> {
    let mut c = tokio::process::Command::new(bin.join("pg_ctl"));
    c.arg("-D").arg(data).args(args);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("PG") {
            c.env_remove(k);
        }
    }
    let out = c
        .stdin(Stdio::null())
        .current_dir("/")
        .output()
        .await
        .map_err(|e| format!("cannot run {}: {e}", bin.join("pg_ctl").display()))?;
    if !out.status.success() {
        return Err(format!(
            "pg_ctl {} failed ({}): {}",
            args.last().copied().unwrap_or_default(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

async fn start(ctx: &Ctx, c: &CloneOnDisk) -> Result<(), String> {
    let dir = clone_dir(ctx, c);
    let data = dir.join("data");
    if !data.join("PG_VERSION").is_file() {
        return Err(format!(
            "{} holds no data directory: delete_clone {} and register it again",
            data.display(),
            c.clone_id
        ));
    }
    let log = dir.join("server.log");
    pg_ctl(
        &bin_dir(ctx, c)?,
        &data,
        &["-l", &log.display().to_string(), "-w", "-t", "300", "start"],
    )
    .await
}

async fn act(ctx: &Ctx, c: &CloneOnDisk, want: &str) -> Result<String, String> {
    let dir = clone_dir(ctx, c);
    let data = dir.join("data");
    let running = recovery::postmaster_pid(&data);
    match want {
        "STOPPED" => {
            if running.is_some() {
                pg_ctl(
                    &bin_dir(ctx, c)?,
                    &data,
                    &["-m", "fast", "-w", "-t", "120", "stop"],
                )
                .await?;
            }
            Ok(format!(
                "stopped by stop_clone at {}",
                Utc::now().to_rfc3339()
            ))
        }
        "RUNNING" => {
            if running.is_none() {
                start(ctx, c).await?;
            }
            Ok(format!(
                "started by start_clone at {}",
                Utc::now().to_rfc3339()
            ))
        }
        "DELETED" => {
            if let Ok(bin) = bin_dir(ctx, c) {
                recovery::stop_immediate(&bin, &data);
            }
            if let Some(pid) = recovery::postmaster_pid(&data) {
                return Err(format!(
                    "its server (pid {pid}) does not stop; nothing was removed"
                ));
            }
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(format!("removing {}: {e}", dir.display())),
            }
            Ok(format!("deleted at {}", Utc::now().to_rfc3339()))
        }
        other => Err(format!("unknown clone state {other}")),
    }
}

/// At agent start: the clones the catalog says run are checked; one whose server is gone is
/// started again. Either way the log says so, and a restarted one's note too.
pub async fn on_start(ctx: &Ctx) {
    let _g = PASS.lock().await;
    let Ok(list) = ctx
        .db(
            "agent_live_clones",
            ctx.catalog.agent_live_clones(ctx.server_id),
        )
        .await
    else {
        return;
    };
    for c in list.iter().filter(|c| c.state == "RUNNING") {
        let data = clone_dir(ctx, c).join("data");
        if let Some(pid) = recovery::postmaster_pid(&data) {
            tracing::info!(clone = %c.name, clone_id = c.clone_id, port = c.port, pid, "clone still running");
            continue;
        }
        let (error, note) = match start(ctx, c).await {
            Ok(()) => {
                tracing::warn!(clone = %c.name, clone_id = c.clone_id, port = c.port, "clone was not running: started again");
                (
                    None,
                    Some(format!(
                        "its server was gone at the agent's start; started again at {}",
                        Utc::now().to_rfc3339()
                    )),
                )
            }
            Err(e) => {
                tracing::error!(clone = %c.name, clone_id = c.clone_id, "clone was not running and cannot be started: {e}");
                (
                    Some(format!(
                        "not running at the agent's start and cannot be started: {e}"
                    )),
                    None,
                )
            }
        };
        let _ = ctx
            .db(
                "clone_action_done",
                ctx.catalog.clone_action_done(
                    ctx.server_id,
                    c.clone_id,
                    "RUNNING",
                    error.as_deref(),
                    note.as_deref(),
                ),
            )
            .await;
    }
}

/// In maintenance: expiry (warnings, then deletion) and the clones' disk use.
pub async fn maintain(ctx: &Ctx) {
    match ctx
        .db("expire_clones", ctx.catalog.expire_clones(ctx.server_id))
        .await
    {
        Ok(n) if n > 0 => {
            tracing::info!(clones = n, "expired clones to delete");
            apply(ctx).await;
        }
        Ok(_) => {}
        Err(e) => tracing::warn!("clone expiry: {e}"),
    }
    let Ok(list) = ctx
        .db(
            "agent_live_clones",
            ctx.catalog.agent_live_clones(ctx.server_id),
        )
        .await
    else {
        return;
    };
    let sizes: Vec<_> = list
        .iter()
        .map(|c| {
            let d = clone_dir(ctx, c);
            json!({"clone_id": c.clone_id, "bytes": dir_size(&d)})
        })
        .collect();
    if !sizes.is_empty() {
        let _ = ctx
            .db(
                "report_clone_disk",
                ctx.catalog.report_clone_disk(ctx.server_id, &json!(sizes)),
            )
            .await;
    }
}

fn dir_size(p: &Path) -> u64 {
    let mut n = 0;
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            // Not following links (pg_tblspc): each file counted once.
            match std::fs::symlink_metadata(e.path()) {
                Ok(m) if m.is_dir() => n += dir_size(&e.path()),
                Ok(m) => n += m.len(),
                Err(_) => {}
            }
        }
    }
    n
}
