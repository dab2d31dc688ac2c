//! VERIFY and DRILL jobs: levels 1 and 2 of a backup set on demand (`verify_backup`), and
//! restore drills (`run_restore_drill`, drill schedules). Like `job`, a job heartbeats its lease
//! and reports exactly once, here through `api.report_verification` (idempotent on the job id,
//! fenced by the attempt). Drill schedules are cron lines evaluated here, in the agent's time
//! zone, at every re-poll; the catalog fires each instant once (`api.queue_scheduled_drill`).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use pgbackman_core::cron::CronSchedule;
use pgbackman_db::agent::ClaimedJob;
use pgbackman_db::verify::VerifyJobInfo;
use pgbackman_dump::verify::{DrillOutcome, DrillSpec, DrillState, run_drill, scratch_dbname};
use pgbackman_dump::{NodeConn, TableRowCounts, Verification, VerifyState};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::job::{AbortOnDrop, Ctx, Done, heartbeat};

/// The job kinds run here.
pub const KINDS: &[&str] = &["VERIFY", "DRILL"];

impl crate::Runner {
    /// Starts a claimed VERIFY or DRILL job. It takes no per-node slot of the agent's own count
    /// (the catalog's claim limits DRILL jobs per drill node; VERIFY jobs only read files).
    pub(crate) fn start_verification(&mut self, c: ClaimedJob) {
        let token = self.stop.child_token();
        self.running.insert(c.job_id, (-1, token.clone()));
        tracing::info!(job_id = c.job_id, kind = %c.kind, bck_id = %c.bck_id.map_or_else(|| "-".to_string(), |b| b.to_string()), "job started");
        let job_id = c.job_id;
        let handle = self.jobs.spawn(run(self.ctx.clone(), c, token));
        self.tasks.insert(handle.id(), job_id);
    }

    /// Queues the drills whose scheduled instant has come (each instant once; an instant
    /// missed while the agent was down fires once, late).
    pub(crate) async fn queue_due_drills(&mut self) {
        queue_due_drills(&self.ctx, self.sched.tz(), Utc::now()).await;
    }
}

async fn queue_due_drills(ctx: &Ctx, tz: Tz, now: DateTime<Utc>) {
    let schedules = match ctx
        .db(
            "drill_schedules",
            ctx.catalog.drill_schedules(ctx.server_id),
        )
        .await
    {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("reading drill schedules failed: {e}");
            return;
        }
    };
    for s in schedules {
        let Some(instant) = due_instant(&s.schedule, s.last_fire, now, tz) else {
            continue;
        };
        match ctx
            .db(
                "queue_scheduled_drill",
                ctx.catalog
                    .queue_scheduled_drill(ctx.server_id, s.def_id, instant),
            )
            .await
        {
            Ok(Some(job)) => {
                tracing::info!(def_id = s.def_id, job_id = job, at = %instant, "scheduled restore drill queued")
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(def_id = s.def_id, "queueing a scheduled drill failed: {e}"),
        }
    }
}

/// The newest instant of `schedule` after `last_fire` and at or before `now`, if any.
fn due_instant(
    schedule: &str,
    last_fire: DateTime<Utc>,
    now: DateTime<Utc>,
    tz: Tz,
) -> Option<DateTime<Utc>> {
    let s = match CronSchedule::parse_line(schedule) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(schedule, "drill schedule not usable: {e}");
            return None;
        }
    };
    let at = s
        .prev_before(&(now + chrono::Duration::seconds(1)).with_timezone(&tz))?
        .with_timezone(&Utc);
    (at > last_fire).then_some(at)
}

/// Runs the job and reports it.
pub async fn run(ctx: Arc<Ctx>, c: ClaimedJob, cancel: CancellationToken) -> Done {
    let hb = AbortOnDrop(tokio::spawn(heartbeat(
        ctx.clone(),
        c.job_id,
        c.attempt,
        Arc::new(AtomicU64::new(0)),
        cancel.clone(),
    )));
    let started = Utc::now();
    let result = match job_info(&ctx, c.job_id).await {
        Ok(info) if c.kind == "DRILL" && info.backup_code == "BASEBACKUP" => {
            crate::physical_drill::run(&ctx, &info, &cancel).await
        }
        Ok(info) if c.kind == "DRILL" => drill(&ctx, &info, &cancel).await,
        Ok(info) => verify(&ctx, &info, &cancel).await,
        Err(msg) => error_result(started, "claim", msg),
    };
    drop(hb);
    let state = match result["state"].as_str() {
        Some("PASSED") => "SUCCEEDED",
        Some("CANCELLED") => "CANCELLED",
        _ => "ERROR",
    };
    report(&ctx, c.job_id, c.attempt, &result).await;
    Done {
        job_id: c.job_id,
        node_id: -1,
        status: state,
    }
}

async fn job_info(ctx: &Ctx, job_id: i64) -> Result<VerifyJobInfo, String> {
    let mut delay = Duration::from_millis(200);
    for _ in 0..5 {
        match ctx
            .db("verify_job_info", ctx.catalog.verify_job_info(job_id))
            .await
        {
            Ok(Some(i)) => return Ok(i),
            Ok(None) => return Err(format!("job {job_id} or its backup no longer exists")),
            Err(e) => {
                tracing::warn!(
                    job_id,
                    "reading the job failed: {e}; retrying in {}",
                    pgbackman_core::duration::human(delay)
                );
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
        }
    }
    Err("the catalog did not answer".into())
}

fn error_result(started: DateTime<Utc>, step: &str, message: String) -> Value {
    json!({"state": "ERROR", "level": 0, "started": started.to_rfc3339(), "finished": Utc::now().to_rfc3339(),
           "error_step": step, "error_message": message})
}

/// The client tools for a set written by `client_version` (and restored into a server of
/// `server_major`, for drills).
fn client_for(
    ctx: &Ctx,
    client_version: Option<&str>,
    server_major: u32,
) -> Result<PathBuf, String> {
    let archive = client_version
        .and_then(pgbackman_dump::parse_major)
        .unwrap_or(0);
    pgbackman_dump::pick_client(&ctx.bin_dirs(), archive.max(server_major), None)
        .map(|(_, d)| d)
        .map_err(|e| e.to_string())
}

/// Levels 1 and 2 of a set in a repository: every object re-read, its sha256 against what the
/// catalog recorded at backup time (the manifest's own included), then the archive's table of
/// contents from the dump object. The store not answering is an error, no verdict.
async fn verify_in_repository(
    ctx: &Ctx,
    started: DateTime<Utc>,
    i: &VerifyJobInfo,
    set: (i64, String, Value),
    cancel: &CancellationToken,
) -> Value {
    let (id, prefix, files) = set;
    let files: Vec<pgbackman_dump::FileEntry> = match serde_json::from_value(files) {
        Ok(f) => f,
        Err(e) => return error_result(started, "verify", format!("the catalog's file list: {e}")),
    };
    let store = match crate::repository::open(ctx, id).await {
        Ok(s) => s,
        Err(e) => return error_result(started, "repository", e),
    };
    let bin_dir = match client_for(ctx, i.client_version.as_deref(), 0) {
        Ok(d) => d,
        Err(e) => return error_result(started, "client", e),
    };
    let set = pgbackman_dump::RepositorySet { store, prefix };
    match pgbackman_dump::verify::verify_levels_in(&set, &files, &bin_dir, cancel).await {
        Ok(Some(v)) => verification_result(started, &v),
        Ok(None) => cancelled_result(started),
        Err(e) => error_result(started, "repository", e),
    }
}

fn cancelled_result(started: DateTime<Utc>) -> Value {
    json!({"state": "CANCELLED", "level": 0, "started": started.to_rfc3339(),
           "finished": Utc::now().to_rfc3339(), "error_step": "cancel", "error_message": "cancelled"})
}

/// The repository and key prefix of a set stored in one (None: a set in a directory).
async fn repository_of(
    ctx: &Ctx,
    i: &VerifyJobInfo,
) -> Result<Option<(i64, String, Value)>, String> {
    if i.backup_dir.is_some() {
        return Ok(None);
    }
    ctx.db("repository_set", ctx.catalog.repository_set(i.bck_id))
        .await
        .map_err(|e| e.to_string())
}

async fn verify(ctx: &Ctx, i: &VerifyJobInfo, cancel: &CancellationToken) -> Value {
    let started = Utc::now();
    match repository_of(ctx, i).await {
        Ok(Some(set)) => return verify_in_repository(ctx, started, i, set, cancel).await,
        Ok(None) => {}
        Err(e) => return error_result(started, "verify", e),
    }
    let Some(dir) = i.backup_dir.as_deref().map(PathBuf::from) else {
        return error_result(
            started,
            "verify",
            format!("BckID {} has no backup directory", i.bck_id),
        );
    };
    let bin_dir = match client_for(ctx, i.client_version.as_deref(), 0) {
        Ok(d) => d,
        Err(e) => return error_result(started, "client", e),
    };
    // An encrypted set: level 2 with this agent's identities, level 1 only without any.
    match pgbackman_dump::verify::verify_levels_with(
        &dir,
        &bin_dir,
        i.manifest_sha256.as_deref(),
        &ctx.cfg.identity_files(),
        cancel,
    )
    .await
    {
        Some(v) => verification_result(started, &v),
        None => json!({"state": "CANCELLED", "level": 0, "started": started.to_rfc3339(),
                       "finished": Utc::now().to_rfc3339(), "error_step": "cancel", "error_message": "cancelled"}),
    }
}

fn verification_result(started: DateTime<Utc>, v: &Verification) -> Value {
    json!({
        "state": match v.state { VerifyState::Passed => "PASSED", VerifyState::Failed => "FAILED" },
        "level": v.level,
        "started": started.to_rfc3339(),
        "finished": Utc::now().to_rfc3339(),
        "error_step": (v.state == VerifyState::Failed).then_some(if v.level == 1 { "checksums" } else { "archive" }),
        "error_message": v.error,
        "details": {"toc_entries": v.toc_entries, "seconds": v.seconds},
    })
}

async fn drill(ctx: &Ctx, i: &VerifyJobInfo, cancel: &CancellationToken) -> Value {
    let started = Utc::now();
    let Some(node) = &i.drill_node else {
        return error_result(started, "claim", "the drill job names no drill node".into());
    };
    // A set in a repository: restored from its objects.
    let repository = match repository_of(ctx, i).await {
        Ok(Some((id, prefix, _))) => match crate::repository::open(ctx, id).await {
            Ok(store) => Some(pgbackman_dump::RepositorySet { store, prefix }),
            Err(e) => return error_result(started, "repository", e),
        },
        Ok(None) => None,
        Err(e) => return error_result(started, "verify", e),
    };
    let dir = match (i.backup_dir.as_deref(), &repository) {
        (Some(d), _) => PathBuf::from(d),
        (None, Some(_)) => PathBuf::new(),
        (None, None) => {
            return error_result(
                started,
                "verify",
                format!("BckID {} has no backup directory", i.bck_id),
            );
        }
    };
    let Ok(port) = u16::try_from(node.port) else {
        return error_result(
            started,
            "connect",
            format!("port {} is not a port", node.port),
        );
    };
    let label = format!("{}:{}", node.fqdn, port);
    let passfile = ctx.cfg.passfile.clone();
    let env = move |k: &str| match (k, &passfile) {
        ("PGPASSFILE", Some(p)) => Some(p.display().to_string()),
        _ => std::env::var(k).ok(),
    };
    // The drill node's major decides the client as much as the archive's.
    let facts = match pgbackman_config::node_config_with(
        &node.fqdn,
        port,
        &node.admin_user,
        &node.admin_dbname,
        &node.sslmode,
        &env,
    ) {
        Ok(r) => pgbackman_db::node::node_facts(ctx.cfg.nodes.applied(r.config), &label)
            .await
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    let facts = match facts {
        Ok(f) => f,
        Err(e) => return error_result(started, "connect", format!("drill node {label}: {e}")),
    };
    let server_major = u32::try_from(facts.server_version_num / 10000).unwrap_or(0);
    let conn = NodeConn {
        host: node.fqdn.clone(),
        port,
        user: node.admin_user.clone(),
        admin_dbname: node.admin_dbname.clone(),
        sslmode: node.sslmode.clone(),
        passfile: ctx.cfg.passfile.clone(),
        timeouts: Some(ctx.cfg.nodes.clone()),
    };
    drop_leftover_scratch(ctx, &conn, &label).await;
    let bin_dir = match client_for(ctx, i.client_version.as_deref(), server_major) {
        Ok(d) => d,
        Err(e) => return error_result(started, "client", e),
    };
    let expected: Option<TableRowCounts> = i
        .table_row_counts
        .clone()
        .and_then(|v| serde_json::from_value(v).ok());
    let spec = DrillSpec {
        job_id: i.job_id,
        set_dir: dir,
        repository,
        bin_dir,
        node: conn,
        node_label: label,
        scratch_dbname: scratch_dbname(i.bck_id, i.job_id),
        application_name: "pgbackman".into(),
        jobs: 2,
        staging_root: ctx.backup_dir().join("staging"),
        expected_counts: expected,
        manifest_sha256: i.manifest_sha256.clone(),
        journal: Some(pgbackman_dump::Journal {
            path: crate::restore_job::journal_dir(ctx).join(format!("{}.json", i.job_id)),
            meta: serde_json::json!({ "drill": true }),
        }),
        identity_files: ctx.cfg.identity_files(),
    };
    drill_result(&spec, &run_drill(&spec, cancel.clone()).await)
}

/// Drops scratch databases left on the drill node by drills whose agent died mid-way (their job
/// is no longer open). Best effort: a drill goes on whatever happens here.
async fn drop_leftover_scratch(ctx: &Ctx, node: &NodeConn, label: &str) {
    let passfile = node.passfile.clone();
    let env = move |k: &str| match (k, &passfile) {
        ("PGPASSFILE", Some(p)) => Some(p.display().to_string()),
        _ => std::env::var(k).ok(),
    };
    let skip = |e: String| {
        tracing::warn!(
            node = label,
            "looking for scratch databases of interrupted drills: {e}"
        )
    };
    let cfg = match pgbackman_config::node_config_with(
        &node.host,
        node.port,
        &node.user,
        &node.admin_dbname,
        &node.sslmode,
        &env,
    ) {
        Ok(r) => ctx.cfg.nodes.applied(r.config),
        Err(e) => return skip(e.to_string()),
    };
    let session = match pgbackman_db::introspect::connect(cfg, None).await {
        Ok(s) => s,
        Err(e) => return skip(e),
    };
    let found = match pgbackman_db::verify::scratch_databases(&session.client).await {
        Ok(f) if f.is_empty() => return,
        Ok(f) => f,
        Err(e) => return skip(e),
    };
    let ids: Vec<i64> = found.iter().map(|(_, j)| *j).collect();
    let open = match ctx.db("open_jobs", ctx.catalog.open_jobs(&ids)).await {
        Ok(o) => o,
        Err(e) => return skip(e.to_string()),
    };
    for (db, job) in found.into_iter().filter(|(_, j)| !open.contains(j)) {
        match pgbackman_db::restore::target::drop_database(&session.client, &db, true).await {
            Ok(()) => tracing::warn!(
                db,
                job,
                node = label,
                "dropped the scratch database of an interrupted drill"
            ),
            Err(e) => tracing::warn!(
                db,
                job,
                node = label,
                "cannot drop the scratch database of an interrupted drill: {e}"
            ),
        }
    }
}

fn drill_result(spec: &DrillSpec, d: &DrillOutcome) -> Value {
    json!({
        "state": match d.state {
            DrillState::Passed => "PASSED",
            DrillState::Failed => "FAILED",
            DrillState::Error => "ERROR",
            DrillState::Cancelled => "CANCELLED",
        },
        "level": d.level,
        "started": d.started.to_rfc3339(),
        "finished": d.finished.to_rfc3339(),
        "restore_seconds": d.restore_seconds,
        "scratch_dbname": spec.scratch_dbname,
        "error_step": d.step,
        "error_message": d.message,
        "error_stderr_tail": d.stderr_tail,
        "details": {
            "row_counts": d.row_counts,
            "scratch_dropped": d.scratch_dropped,
            "feed": d.feed,
            "restored_size": d.restored_size,
            "roles_created": d.roles_created,
            "notes": d.notes,
            "drill_node": spec.node_label,
        },
    })
}

/// Records the result through the spool: durable first, delivered when the catalog answers
/// (idempotent on the job id, fenced by the attempt).
async fn report(ctx: &Ctx, job_id: i64, attempt: i32, result: &Value) {
    let entry = crate::spool::Entry::new(
        "verification",
        crate::spool::Key::Job { job_id, attempt },
        ctx.server_id,
        &ctx.agent_name,
        result.clone(),
    );
    crate::job::submit(ctx, entry).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drill_instants_fire_once_and_catch_up_once() {
        let t = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        let utc = chrono_tz::UTC;
        // Sundays 05:30; last fired a week ago; now Sunday 05:30:00.4 → this instant.
        let last = t("2026-11-08T05:30:00Z");
        assert_eq!(
            due_instant("30 5 * * 0", last, t("2026-11-15T05:30:00.4Z"), utc),
            Some(t("2026-11-15T05:30:00Z"))
        );
        // Already fired: nothing until next week.
        assert_eq!(
            due_instant(
                "30 5 * * 0",
                t("2026-11-15T05:30:00Z"),
                t("2026-11-16T12:00:00Z"),
                utc
            ),
            None
        );
        // Down for three weeks: only the newest instant.
        assert_eq!(
            due_instant("30 5 * * 0", last, t("2026-12-01T00:00:00Z"), utc),
            Some(t("2026-11-29T05:30:00Z"))
        );
        // In the agent's time zone.
        let oslo: Tz = "Europe/Oslo".parse().unwrap();
        assert_eq!(
            due_instant("30 5 * * 0", last, t("2026-11-15T05:00:00Z"), oslo),
            Some(t("2026-11-15T04:30:00Z"))
        );
        assert_eq!(
            due_instant("nonsense", last, t("2026-11-15T05:00:00Z"), utc),
            None
        );
    }
}
