//! Clone lifecycle additions on this backup server (issue 12, part E; stop/start/delete and
//! expiry are CLONE jobs, `clone_job`): at start, the clones the catalog says are RUNNING are
//! kept running (alive: logged) or started again when their server is gone, e.g. after a
//! reboot (logged and noted on the clone; one that cannot start is marked STOPPED with why);
//! in maintenance, the clones' disk use.
//! Clones live in `<backup_dir>/clones/<name>` (`clone_job::clones_dir`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use pgbackman_db::clone_lifecycle::CloneOnDisk;
use pgbackman_dump::pitr::recovery::{self, RecoverySpec, Target};
use serde_json::json;

use crate::job::Ctx;

/// The clone's directory: always `<backup_dir>/clones/<name>` (the catalog's name is checked
/// against a safe charset).
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

/// Starts a clone's server again with the settings it was restored with, and waits until it
/// accepts connections.
async fn start(ctx: &Ctx, c: &CloneOnDisk) -> Result<(), String> {
    let dir = clone_dir(ctx, c);
    let data = dir.join("data");
    if !data.join("PG_VERSION").is_file() {
        return Err(format!("{} holds no data directory", data.display()));
    }
    let spec = RecoverySpec {
        data_dir: data,
        socket_dir: dir.clone(),
        log_file: dir.join("server.log"),
        port: u16::try_from(c.port).map_err(|_| format!("port {}", c.port))?,
        bin_dir: bin_dir(ctx, c)?,
        restore_command: String::new(),
        target: Target::Immediate,
        timeline: String::new(),
        action: String::new(),
        cluster_name: String::new(),
        user: c.admin_user.clone(),
    };
    recovery::start(&spec).map_err(|e| e.to_string())?;
    recovery::wait_ready(&spec, Duration::from_secs(600))
        .await
        .map_err(|e| e.to_string())
}

/// At agent start: each RUNNING clone checked; one whose server is gone is started again.
pub async fn on_start(ctx: &Ctx) {
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
        let error = match start(ctx, c).await {
            Ok(()) => {
                tracing::warn!(clone = %c.name, clone_id = c.clone_id, port = c.port, "clone was not running: started again");
                None
            }
            Err(e) => {
                tracing::error!(clone = %c.name, clone_id = c.clone_id, "clone was not running and cannot be started: {e}");
                Some(e)
            }
        };
        let _ = ctx
            .db(
                "clone_started_again",
                ctx.catalog
                    .clone_started_again(ctx.server_id, c.clone_id, error.as_deref()),
            )
            .await;
    }
}

/// In maintenance: the clones' disk use.
pub async fn maintain(ctx: &Ctx) {
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
        .map(|c| json!({"clone_id": c.clone_id, "bytes": dir_size(&clone_dir(ctx, c))}))
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
