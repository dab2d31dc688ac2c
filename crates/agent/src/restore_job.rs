//! One restore job: the claimed restore definition becomes a `RestoreSpec` for
//! `pgbackman_dump::restore_set` (client tools chosen for the target's major), the lease is kept
//! alive, and the result is reported once with `api.report_restore`. Everything after the claim
//! runs without the catalog; only the report needs it (retried, idempotent on the job id).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::Utc;
use pgbackman_db::agent::ClaimedJob;
use pgbackman_db::restore::AgentRestore;
use pgbackman_dump::{
    Decompression, Journal, NodeConn, RestoreOutcome, RestoreSpec, RolePolicy, Status, restore_set,
};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::job::{AbortOnDrop, Ctx, Done, heartbeat};

/// Reads what a claimed RESTORE job needs (at claim time, like a snapshot's definition). A job
/// that cannot be read is reported failed and `None` is returned.
pub async fn prepare(ctx: &Ctx, c: &ClaimedJob) -> Option<AgentRestore> {
    match ctx
        .db("agent_restore", ctx.catalog.agent_restore(c.job_id))
        .await
    {
        Ok(r) => Some(r),
        Err(e) => {
            let now = Utc::now().to_rfc3339();
            let r = json!({"execution_status": "ERROR", "started": now, "finished": now,
                "error_step": "claim", "error_message": e.to_string()});
            report(ctx, c.job_id, c.attempt, &r).await;
            None
        }
    }
}

/// Runs the restore and reports it. A failure anywhere is the report.
pub async fn run(ctx: Arc<Ctx>, attempt: i32, r: AgentRestore, cancel: CancellationToken) -> Done {
    let progress = Arc::new(AtomicU64::new(0));
    let hb = AbortOnDrop(tokio::spawn(heartbeat(
        ctx.clone(),
        r.job_id,
        attempt,
        progress.clone(),
        cancel.clone(),
    )));
    tracing::info!(job_id = r.job_id, restore_def = r.restore_def, bck_id = r.bck_id, target = %r.target_dbname, node = %r.node_fqdn, "restore started");
    let outcome = execute(&ctx, &r, attempt, &cancel, progress).await;
    drop(hb);
    let log = log_path(&ctx, &r);
    let result = result_json(
        &r,
        &outcome,
        log.exists().then(|| log.display().to_string()),
    );
    let status = match outcome.status {
        Status::Succeeded => "SUCCEEDED",
        Status::Cancelled { .. } => "CANCELLED",
        Status::Failed { .. } => "ERROR",
    };
    report(&ctx, r.job_id, attempt, &result).await;
    Done {
        job_id: r.job_id,
        node_id: r.target_node_id,
        status,
    }
}

/// The outcome of a restore that could not start.
fn failed(job_id: i64, step: &str, message: String) -> RestoreOutcome {
    RestoreOutcome::empty(
        job_id,
        Status::Failed {
            step: step.into(),
            exit_status: None,
            message,
            stderr_tail: String::new(),
        },
    )
}

async fn execute(
    ctx: &Ctx,
    r: &AgentRestore,
    attempt: i32,
    cancel: &CancellationToken,
    progress: Arc<AtomicU64>,
) -> RestoreOutcome {
    let Ok(port) = u16::try_from(r.pgport) else {
        return failed(
            r.job_id,
            "definition",
            format!("port {} is not a port", r.pgport),
        );
    };
    let label = format!("{}:{}", r.node_fqdn, port);
    let extra = match pgbackman_core::restore::check_extra_restore_parameters(
        &r.extra_restore_parameters,
    ) {
        Ok(a) => a,
        Err(e) => return failed(r.job_id, "definition", e.to_string()),
    };
    let decompression: Decompression = match r.decompression.parse() {
        Ok(d) => d,
        Err(e) => return failed(r.job_id, "definition", e),
    };
    // The client tools: at least the target's major and the major of the pg_dump that wrote the
    // set (a set from a newer pg_dump is refused by the executor with the reason).
    let passfile = ctx.cfg.passfile.clone();
    let env = move |k: &str| match (k, &passfile) {
        ("PGPASSFILE", Some(p)) => Some(p.display().to_string()),
        _ => std::env::var(k).ok(),
    };
    let node_cfg = match pgbackman_config::node_config_with(
        &r.node_fqdn,
        port,
        &r.admin_user,
        &r.admin_dbname,
        &r.sslmode,
        &env,
    ) {
        Ok(c) => ctx.cfg.nodes.applied(c.config),
        Err(e) => return failed(r.job_id, "connect", e.to_string()),
    };
    let facts = match pgbackman_db::node::node_facts(node_cfg, &label).await {
        Ok(f) => f,
        Err(e) => return failed(r.job_id, "connect", e.to_string()),
    };
    let target_major = u32::try_from(facts.server_version_num / 10000).unwrap_or(0);
    let dump_major = r
        .backup_pg_release
        .as_deref()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(0);
    let bin_dir =
        match pgbackman_dump::pick_client(&ctx.bin_dirs(), target_major.max(dump_major), None)
            .or_else(|_| pgbackman_dump::pick_client(&ctx.bin_dirs(), target_major, None))
        {
            Ok((_, d)) => d,
            Err(e) => return failed(r.job_id, "client", e.to_string()),
        };
    let roles = if r.is_drill {
        RolePolicy::CreateMissing
    } else {
        let create: BTreeSet<&String> = r.roles_to_restore.iter().collect();
        RolePolicy::Decided {
            create: r.roles_to_restore.clone(),
            reuse: r
                .role_list
                .iter()
                .filter(|x| !create.contains(x))
                .cloned()
                .collect(),
        }
    };
    // A set in a repository: read from its objects (its small files fetched into staging).
    let repository = match (r.repository_id, &r.object_prefix) {
        (Some(id), Some(prefix)) => match crate::repository::open(ctx, id).await {
            Ok(store) => Some(pgbackman_dump::RepositorySet {
                store,
                prefix: prefix.clone(),
            }),
            Err(e) => return failed(r.job_id, "repository", e),
        },
        _ => None,
    };
    // An encrypted set is read with the definition's `--identity` files, then this agent's
    // `[agent.encryption] identity_files` (paths; the keys are read by the restore itself).
    let mut identity_files: Vec<PathBuf> = match ctx.catalog.restore_identity_files(r.job_id).await
    {
        Ok(v) => v.into_iter().map(PathBuf::from).collect(),
        Err(e) => {
            return failed(
                r.job_id,
                "identity",
                format!("cannot read the restore's identity files from the catalog: {e}"),
            );
        }
    };
    identity_files.extend(ctx.cfg.identity_files());
    let spec = RestoreSpec {
        job_id: r.job_id,
        set_dir: PathBuf::from(&r.backup_dir),
        repository,
        node: NodeConn {
            host: r.node_fqdn.clone(),
            port,
            user: r.admin_user.clone(),
            admin_dbname: r.admin_dbname.clone(),
            sslmode: r.sslmode.clone(),
            passfile: ctx.cfg.passfile.clone(),
            timeouts: Some(ctx.cfg.nodes.clone()),
        },
        node_label: label,
        target_dbname: r.target_dbname.clone(),
        rename_existing_to: r.renamed_dbname.clone(),
        roles,
        jobs: u32::try_from(r.restore_jobs.max(1)).unwrap_or(1),
        decompression,
        extra_args: extra,
        bin_dir,
        staging_root: ctx.backup_dir().join("staging"),
        log_file: Some(log_path(ctx, r)),
        application_name: "pgbackman".into(),
        max_runtime: None,
        acknowledge_nonempty: r.acknowledge_nonempty,
        verify_checksums: true,
        compare_row_counts: r.is_drill,
        journal: Some(Journal {
            path: journal_dir(ctx).join(format!("{}.json", r.job_id)),
            meta: json!({ "attempt": attempt }),
        }),
        identity_files,
    };
    let p = progress.clone();
    let report_progress = move |n: u64| p.store(n, Ordering::Relaxed);
    restore_set(&spec, cancel.clone(), &report_progress).await
}

/// `<state_dir>/restores/`: the journals of restores in progress (see `recover_interrupted`).
pub(crate) fn journal_dir(ctx: &Ctx) -> PathBuf {
    ctx.cfg.state_dir.join("restores")
}

/// Restores (and restore drills) a previous run of the agent was in the middle of when it died
/// (SIGKILL, OOM killer, power loss): each is undone on its target from its journal, by OID (the
/// database it created dropped, the roles it created dropped, a database it renamed out of the
/// way renamed back; what it cannot prove the run made becomes a line to check by hand), then a
/// restore is reported failed with those lines (a drill is recorded failed like any interrupted
/// job). A target that cannot be reached keeps its journal for the next start; the job itself
/// is then recorded failed without details.
pub async fn recover_interrupted(ctx: &Ctx) {
    let dir = journal_dir(ctx);
    let journals = match pgbackman_dump::journals_in(&dir) {
        Ok(j) => j,
        Err(e) => {
            tracing::error!("cannot read the restore journals in {}: {e}", dir.display());
            return;
        }
    };
    for path in journals {
        let i = match pgbackman_dump::undo_interrupted(&path).await {
            Ok(Some(i)) => i,
            // A run that ended, whose journal could not be removed then.
            Ok(None) => {
                if let Err(e) = pgbackman_dump::remove_journal(&path) {
                    tracing::warn!("cannot remove {}: {e}", path.display());
                }
                continue;
            }
            Err(e) => {
                tracing::error!(
                    "a restore interrupted by an agent stop could not be undone yet: {e}; {} is kept and tried again at the next start",
                    path.display()
                );
                continue;
            }
        };
        for line in &i.cleanup {
            tracing::warn!(job_id = i.job_id, target = %i.node_label, "interrupted restore: {line}");
        }
        // Drills have no restore report: they are recorded failed as interrupted jobs.
        let attempt = i
            .meta
            .get("attempt")
            .and_then(Value::as_i64)
            .and_then(|a| i32::try_from(a).ok());
        if let Some(attempt) = attempt {
            let result = json!({
                "execution_status": "ERROR",
                "started": i.started.to_rfc3339(),
                "finished": Utc::now().to_rfc3339(),
                "error_step": "agent",
                "error_message": format!(
                    "the agent stopped during the restore into {:?} on {} (killed or crashed); what the restore had changed was undone at its next start (see cleanup)",
                    i.target_dbname, i.node_label
                ),
                "cleanup": i.cleanup.join("\n"),
            });
            report(ctx, i.job_id, attempt, &result).await;
        }
        if let Err(e) = pgbackman_dump::remove_journal(&path) {
            tracing::warn!("cannot remove {}: {e}", path.display());
        }
    }
}

/// `<backup_dir>/restores/job<id>-restoredef<id>.log`: only ids in the name, nothing taken from
/// a database becomes a path.
fn log_path(ctx: &Ctx, r: &AgentRestore) -> PathBuf {
    ctx.backup_dir()
        .join("restores")
        .join(format!("job{}-restoredef{}.log", r.job_id, r.restore_def))
}

/// The report in the shape api.report_restore reads.
fn result_json(r: &AgentRestore, o: &RestoreOutcome, log: Option<String>) -> Value {
    let (status, step, exit, message, tail) = crate::job::status_fields(&o.status);
    let timings = crate::job::timings_json(&o.phase_timings);
    json!({
        "execution_status": status,
        "procpid": std::process::id(),
        "started": o.started.to_rfc3339(),
        "finished": o.finished.to_rfc3339(),
        "log_file": log,
        "renamed_dbname": o.renamed_dbname,
        "roles_created": o.roles_created,
        "roles_reused": o.roles_reused,
        "target_server_version": o.target_server_version,
        "backup_client_version": o.backup_client_version.as_deref().and_then(pgbackman_dump::parse_major).map(|m| m.to_string()),
        "client_version": o.client_version,
        "flags": {
            "jobs": o.jobs,
            "feed": o.feed,
            "feed_reason": o.feed_reason,
            "decompression": r.decompression,
            "acknowledge_nonempty": r.acknowledge_nonempty,
            "extra_restore_parameters": r.extra_restore_parameters,
            "databases_created": o.databases_created,
            "notes": o.notes,
        },
        "row_count_check": o.row_count_check,
        "command": o.command.join(" "),
        "phase_timings": timings,
        "restored_size": o.restored_size,
        "bytes_restored": o.bytes_restored,
        "cleanup": if o.cleanup.is_empty() { None } else { Some(o.cleanup.join("\n")) },
        "error_step": step,
        "error_exit_status": exit,
        "error_message": message,
        "error_stderr_tail": tail,
        // A verdict on the backup: recorded at once as a failed level-1 verification.
        "verification": o.checksums_failed.as_ref().map(|e| json!({
            "level": 1, "state": "FAILED", "error_step": "checksums", "error_message": e,
        })),
    })
}

/// Records the result through the spool: durable first, delivered when the catalog answers
/// (idempotent on the job id, fenced by the attempt).
async fn report(ctx: &Ctx, job_id: i64, attempt: i32, result: &Value) {
    let entry = crate::spool::Entry::new(
        "restore",
        crate::spool::Key::Job { job_id, attempt },
        ctx.server_id,
        &ctx.agent_name,
        result.clone(),
    );
    crate::job::submit(ctx, entry).await;
}
