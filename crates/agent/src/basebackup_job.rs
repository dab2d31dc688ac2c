//! A BASEBACKUP job (issue 11): the client of the node's major, `pg_basebackup` through
//! `pgbackman_dump::run_base_backup` (`-X none` when this server keeps a live WAL archive of
//! the node, else `-X fetch`: the WAL it needs inside the set), then the wait for its WAL in the
//! ledger: the backup is SUCCEEDED only once the catalog holds every segment from its start to
//! its stop LSN (F2, F4). While it waits, the job says which segments (`api.job_wait_note`,
//! `show_jobs_queue`); past the definition's `wal_wait_timeout` it fails, naming the node, the
//! missing segments and what to do (the BACKUP alert carries that message). The result is
//! reported like a logical one (spool, replay), with the physical facts in `base_backup`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use pgbackman_core::model::NodeProfile;
use pgbackman_dump::{BackupOutcome, BaseBackupSpec, NodeConn, Status, WalMethod};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::job::{Ctx, Ticket, failed};

/// Default of `wal_wait_timeout` when the cache predates it.
const WAL_WAIT_DEFAULT: Duration = Duration::from_secs(15 * 60);

/// How often the ledger is asked while waiting: soon at first (the stop segment is usually
/// archived within a second of pg_basebackup's end), then every 2 s.
const WAL_POLL_FIRST: Duration = Duration::from_millis(100);
const WAL_POLL_MAX: Duration = Duration::from_secs(2);

/// Runs the base backup and waits for its WAL. Returns the outcome and the `base_backup`
/// object of the report (None when pg_basebackup did not finish).
pub(crate) async fn execute(
    ctx: &Ctx,
    t: &Ticket,
    marker: &crate::spool::Marker,
    cancel: &CancellationToken,
    progress: Arc<AtomicU64>,
    started: DateTime<Utc>,
) -> (BackupOutcome, Option<Value>) {
    let d = &t.def;
    let profile: NodeProfile = match d.node_profile.parse() {
        Ok(p) => p,
        Err(e) => return (failed(started, t.job_id, "definition", e.to_string()), None),
    };
    let Ok(port) = u16::try_from(d.pgport) else {
        let m = format!("port {} is not a port", d.pgport);
        return (failed(started, t.job_id, "definition", m), None);
    };
    let label = format!("{}:{}", d.node_fqdn, port);
    let passfile = ctx.cfg.passfile.clone();
    let env = move |k: &str| match (k, &passfile) {
        ("PGPASSFILE", Some(p)) => Some(p.display().to_string()),
        _ => std::env::var(k).ok(),
    };
    let node_cfg = match pgbackman_config::node_config_with(
        &d.node_fqdn,
        port,
        &d.admin_user,
        &d.admin_dbname,
        &d.sslmode,
        &env,
    ) {
        Ok(r) => ctx.cfg.nodes.applied(r.config),
        Err(e) => return (failed(started, t.job_id, "connect", e.to_string()), None),
    };
    let facts = match pgbackman_db::node::node_facts(node_cfg, &label).await {
        Ok(f) => f,
        Err(e) => return (failed(started, t.job_id, "connect", e.to_string()), None),
    };
    let server_major = u32::try_from(facts.server_version_num / 10000).unwrap_or(0);
    let requested = d.client_major.and_then(|m| u32::try_from(m).ok());
    let bin_dir = match pgbackman_dump::pick_client(&ctx.bin_dirs(), server_major, requested) {
        Ok((_, b)) => b,
        Err(e) => return (failed(started, t.job_id, "client", e.to_string()), None),
    };
    let node_dir = match crate::roots::node_dir_for_write(&ctx.cfg_now(), &d.node_backup_partition)
    {
        Ok(dir) => dir,
        Err(e) => {
            let m = format!(
                "{e}; no backup of PgSQL node {label} is written there. Set another pgnode_backup_partition with update_pgsql_node_config"
            );
            return (failed(started, t.job_id, "partition", m), None);
        }
    };
    let wal_method = if crate::wal::has_live_archive(&ctx.cfg.state_dir, d.pgsql_node_id) {
        WalMethod::None
    } else {
        WalMethod::Fetch
    };
    let set_name = format!(
        "{}-{}-def{}-BASEBACKUP",
        started.format("%Y%m%dT%H%M%SZ"),
        match t.offline_at {
            Some(_) => format!("offline{}", -t.job_id),
            None => format!("job{}", t.job_id),
        },
        d.def_id
    );
    let spec = BaseBackupSpec {
        job_id: t.job_id,
        profile,
        node: NodeConn {
            host: d.node_fqdn.clone(),
            port,
            user: d.admin_user.clone(),
            admin_dbname: d.admin_dbname.clone(),
            sslmode: d.sslmode.clone(),
            passfile: ctx.cfg.passfile.clone(),
            timeouts: Some(ctx.cfg.nodes.clone()),
        },
        node_label: label.clone(),
        bin_dir,
        checkpoint: d.checkpoint.clone().unwrap_or_else(|| "fast".into()),
        max_rate: d.max_rate.clone(),
        wal_method,
        zstd_level: d.compression_level.clamp(1, 19),
        max_runtime: d.max_runtime_seconds.map(Duration::from_secs_f64),
        application_name: "pgbackman".into(),
        staging_root: ctx.backup_dir().join("staging"),
        final_dir: node_dir.join("BASEBACKUP").join(set_name),
        definition: serde_json::to_value(d).unwrap_or(Value::Null),
    };
    if d.repository_id.is_some() {
        // The server's primary repository: base backups do not go through the repository layer
        // yet (the catalog refuses a repository on a BASEBACKUP definition itself).
        tracing::info!(
            job_id = t.job_id,
            "base backup kept in {} (base backups are not written to repositories yet)",
            spec.final_dir.display()
        );
    }
    if let Err(e) = crate::spool::note_set_dir(&ctx.cfg.state_dir, marker, &spec.final_dir) {
        tracing::warn!(job_id = t.job_id, "{e:#}");
    }
    let p = progress.clone();
    let report_progress = move |n: u64| p.store(n, Ordering::Relaxed);
    let run = pgbackman_dump::run_base_backup(&spec, cancel.child_token(), &report_progress).await;
    let mut outcome = run.outcome;
    let Some(facts) = run.facts else {
        return (outcome, None);
    };
    let mut bb = serde_json::to_value(&facts).unwrap_or(Value::Null);
    if !outcome.status.is_success() || wal_method == WalMethod::Fetch {
        return (outcome, Some(bb));
    }

    // The WAL from start to stop in the ledger, within wal_wait_timeout.
    let wait = d
        .wal_wait_seconds
        .map(Duration::from_secs_f64)
        .unwrap_or(WAL_WAIT_DEFAULT);
    let t0 = tokio::time::Instant::now();
    let until = Utc::now() + chrono::Duration::from_std(wait).unwrap_or_default();
    bb["wal_deadline"] = json!(until.to_rfc3339());
    let mut missing: Option<Vec<String>> = None;
    let mut unreachable: Option<String> = None;
    let mut poll = WAL_POLL_FIRST;
    let mut checked_here = false;
    loop {
        match ctx
            .db(
                "base_backup_missing_wal",
                ctx.catalog.base_backup_missing_wal(
                    ctx.server_id,
                    d.pgsql_node_id,
                    &facts.system_identifier,
                    i64::from(facts.timeline),
                    &facts.start_lsn,
                    &facts.stop_lsn,
                    i32::try_from(facts.seg_size).unwrap_or(16 << 20),
                ),
            )
            .await
        {
            Ok(m) if m.is_empty() => {
                missing = Some(m);
                break;
            }
            Ok(m) => {
                if missing.as_ref() != Some(&m) && t.offline_at.is_none() {
                    let note = format!(
                        "WAL of the base backup: {} not in the archive yet ({}), until {}",
                        pgbackman_core::text::plural(m.len(), "segment", "segments"),
                        range(&m),
                        until.format("%H:%M:%S UTC")
                    );
                    let _ = ctx
                        .db(
                            "job_wait_note",
                            ctx.catalog.job_wait_note(
                                ctx.server_id,
                                t.job_id,
                                t.attempt,
                                Some(&note),
                            ),
                        )
                        .await;
                    tracing::info!(job_id = t.job_id, "{note}");
                }
                missing = Some(m);
                unreachable = None;
            }
            Err(e) => {
                // The catalog cannot say now; this server's own archive can (issue 11: a
                // catalog outage alone does not fail a base backup).
                if here(ctx, d.pgsql_node_id, &facts).is_some_and(|m| m.is_empty()) {
                    tracing::info!(
                        job_id = t.job_id,
                        "WAL of the base backup: every segment is stored on this server (the catalog did not answer: {e})"
                    );
                    missing = Some(Vec::new());
                    unreachable = None;
                    checked_here = true;
                    break;
                }
                unreachable = Some(e.to_string());
            }
        }
        if t0.elapsed() >= wait {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(poll) => poll = (poll * 2).min(WAL_POLL_MAX),
            _ = cancel.cancelled() => {
                outcome.status = Status::Cancelled { reason: "cancelled while waiting for the WAL of the base backup".into() };
                bb["missing_wal"] = json!(missing.unwrap_or_default());
                return (outcome, Some(bb));
            }
        }
    }
    if t.offline_at.is_none() {
        let _ = ctx
            .db(
                "job_wait_note",
                ctx.catalog
                    .job_wait_note(ctx.server_id, t.job_id, t.attempt, None),
            )
            .await;
    }
    if unreachable.is_some()
        && let Some(m) = here(ctx, d.pgsql_node_id, &facts)
    {
        // Still no answer at the deadline: what this server holds decides.
        checked_here = true;
        missing = Some(m);
        unreachable = None;
    }
    outcome
        .phase_timings
        .push(("wait_for_wal".into(), t0.elapsed().as_secs_f64()));
    outcome.finished = Utc::now();
    match missing {
        Some(m) if m.is_empty() && unreachable.is_none() => {
            bb["missing_wal"] = json!([]);
            if checked_here {
                bb["wal_checked"] = json!("on the backup server: the catalog did not answer");
            }
        }
        Some(m) if unreachable.is_none() => {
            outcome.status = Status::Failed {
                step: "wait_for_wal".into(),
                exit_status: None,
                message: format!(
                    "the WAL of this base backup of PgSQL node {label} did not reach the archive within {}: {} missing ({}). \
                     The set is kept but cannot be restored without them. Check the node's WAL archive (show_wal_archives: receiver state, lag), \
                     then run the definition again (run_backup_definition_now {}), or raise --wal-wait with update_backup_definition",
                    pgbackman_core::duration::human(wait),
                    pgbackman_core::text::plural(m.len(), "segment", "segments"),
                    if checked_here {
                        format!(
                            "{}; checked on this backup server, the catalog did not answer",
                            range(&m)
                        )
                    } else {
                        range(&m)
                    },
                    d.def_id
                ),
                stderr_tail: String::new(),
            };
            bb["missing_wal"] = json!(m);
        }
        _ => {
            outcome.status = Status::Failed {
                step: "wait_for_wal".into(),
                exit_status: None,
                message: format!(
                    "the catalog could not be asked whether the WAL of this base backup of PgSQL node {label} is archived ({}); \
                     it is kept but not counted as restorable. Run the definition again once the catalog answers (run_backup_definition_now {})",
                    unreachable.unwrap_or_default(),
                    d.def_id
                ),
                stderr_tail: String::new(),
            };
        }
    }
    (outcome, Some(bb))
}

/// The segments from the backup's start to its stop not stored in this server's archive of
/// the node (None: no live archive here, or facts that do not parse).
fn here(ctx: &Ctx, node_id: i64, facts: &pgbackman_dump::BaseBackupFacts) -> Option<Vec<String>> {
    use pgbackman_core::wal::{Lsn, SegmentSize};
    let start: Lsn = facts.start_lsn.parse().ok()?;
    let stop: Lsn = facts.stop_lsn.parse().ok()?;
    let size = SegmentSize::new(u64::try_from(facts.seg_size).ok()?).ok()?;
    let range = size.covering(facts.timeline, start, stop).ok()?;
    let sysid: u64 = facts.system_identifier.parse().ok()?;
    crate::wal::not_stored_here(&ctx.cfg_now(), node_id, sysid, &range)
}

/// `first … last` of a list of segment names.
fn range(names: &[String]) -> String {
    match names {
        [] => String::new(),
        [one] => one.clone(),
        [first, .., last] => format!("{first} … {last}"),
    }
}
