//! One job from start to report: pick the client, run the backup set (pgbackman-dump), keep the
//! lease alive, and record the result exactly once. A failure anywhere still produces a catalog
//! row saying which step failed.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use pgbackman_config::AgentSection;
use pgbackman_core::model::{BackupCode, NodeProfile};
use pgbackman_core::paths::encode_path_component;
use pgbackman_db::Catalog;
use pgbackman_db::agent::AgentDefinition;
use pgbackman_dump::{BackupOutcome, BackupSpec, DumpFormat, NodeConn, Status};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// Shared by every job of this agent.
pub struct Ctx {
    pub catalog: Catalog,
    /// The agent's file, as read at start. Values the catalog may set are in `live`.
    pub cfg: AgentSection,
    /// Backup root, job limit and client programs as they apply now (crate::effective).
    pub live: std::sync::RwLock<crate::effective::Live>,
    pub agent_name: String,
    pub server_id: i64,
    pub health: crate::health::Health,
    /// One delivery of the spool at a time (a job's own report replays the spool too).
    pub spool_lock: tokio::sync::Mutex<()>,
    /// WAL replay paused on standby nodes for their dumps (`pause_recovery_on_standby`).
    pub pauses: crate::standby::Pauses,
}

impl Ctx {
    pub fn live(&self) -> crate::effective::Live {
        self.live.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn backup_dir(&self) -> PathBuf {
        self.live
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .backup_dir
            .clone()
    }

    pub fn max_jobs(&self) -> usize {
        self.live.read().unwrap_or_else(|e| e.into_inner()).max_jobs
    }

    pub fn bin_dirs(&self) -> BTreeMap<u32, PathBuf> {
        self.live
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .bin_dirs
            .clone()
    }

    /// The file's section with the values that apply now (for code that takes a section).
    pub fn cfg_now(&self) -> AgentSection {
        let live = self.live();
        let mut c = self.cfg.clone();
        c.backup_dir = live.backup_dir;
        c.max_jobs = live.max_jobs;
        c
    }

    pub fn lease(&self) -> Duration {
        Duration::from_secs(self.cfg.lease_seconds)
    }

    /// One catalog call (`what` names it in /healthz and the log) within `[agent]
    /// catalog_timeout_seconds`. A call that is too slow or finds the catalog unreachable puts
    /// the agent in degraded or offline mode; a refusal (a server error) is the caller's.
    pub async fn db<T>(
        &self,
        what: &str,
        call: impl std::future::Future<Output = Result<T, pgbackman_db::DbError>>,
    ) -> Result<T, pgbackman_db::DbError> {
        let r = self.catalog.within(what, call).await;
        if let Err(e) = &r
            && e.is_unreachable()
        {
            self.health.call_failed(what, e);
        }
        r
    }
}

/// A job this agent owns.
#[derive(Debug, Clone)]
pub struct Ticket {
    pub job_id: i64,
    pub attempt: i32,
    pub def: AgentDefinition,
    /// Snapshot jobs: the definition fields come from the snapshot.
    pub snapshot: bool,
    /// A scheduled fire run while the catalog was unreachable: its instant (the job has no row
    /// in the catalog yet; `job_id` is a negative local id).
    pub offline_at: Option<DateTime<Utc>>,
}

impl Ticket {
    /// The key its result is recorded under.
    pub fn key(&self) -> crate::spool::Key {
        match self.offline_at {
            Some(at) => crate::spool::Key::Scheduled {
                def_id: self.def.def_id,
                scheduled_for: at,
            },
            None => crate::spool::Key::Job {
                job_id: self.job_id,
                attempt: self.attempt,
            },
        }
    }
}

#[derive(Debug)]
pub struct Done {
    pub job_id: i64,
    pub node_id: i64,
    pub status: &'static str,
}

/// Runs the job and reports it. Never panics on a failed step: the failure is the report.
pub async fn run(ctx: Arc<Ctx>, t: Ticket, cancel: CancellationToken) -> Done {
    let started = Utc::now();
    let progress = Arc::new(AtomicU64::new(0));
    // If the agent dies during the job, the marker makes the next start record it as failed.
    let marker = crate::spool::Marker {
        version: crate::spool::FORMAT,
        key: t.key(),
        server_id: ctx.server_id,
        agent: ctx.agent_name.clone(),
        started,
        local_id: t.job_id,
        set_dir: None,
    };
    if let Err(e) = crate::spool::mark_running(&ctx.cfg.state_dir, &marker) {
        tracing::warn!(job_id = t.job_id, "{e:#}");
    }
    // Aborted when dropped, so a job that panics does not keep its lease alive. A fire run
    // offline has no job row: nothing to heartbeat.
    let hb = t.offline_at.is_none().then(|| {
        AbortOnDrop(tokio::spawn(heartbeat(
            ctx.clone(),
            t.job_id,
            t.attempt,
            progress.clone(),
            cancel.clone(),
        )))
    });
    // A base backup (crate::basebackup_job) reports its physical facts too.
    let (outcome, base_backup) = if t.def.backup_code.eq_ignore_ascii_case("BASEBACKUP") {
        crate::basebackup_job::execute(&ctx, &t, &marker, &cancel, progress.clone(), started).await
    } else {
        let o = execute(&ctx, &t, &marker, &cancel, progress.clone(), started).await;
        (o, None)
    };
    drop(hb);
    let mut result = result_json(&t, &outcome);
    if let Some(bb) = base_backup {
        result["base_backup"] = bb;
    }
    let status = match outcome.status {
        Status::Succeeded => "SUCCEEDED",
        Status::Cancelled { .. } => "CANCELLED",
        Status::Failed { .. } => "ERROR",
    };
    report(&ctx, &t, result).await;
    crate::spool::clear_running(&ctx.cfg.state_dir, t.job_id);
    Done {
        job_id: t.job_id,
        node_id: t.def.pgsql_node_id,
        status,
    }
}

pub(crate) struct AbortOnDrop(pub(crate) tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Extends the lease every third of it; stops the job when the catalog says so.
pub(crate) async fn heartbeat(
    ctx: Arc<Ctx>,
    job_id: i64,
    attempt: i32,
    progress: Arc<AtomicU64>,
    cancel: CancellationToken,
) {
    let every = ctx.lease() / 3;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every.min(Duration::from_secs(2))) => {}
            _ = cancel.cancelled() => return,
        }
        let bytes = i64::try_from(progress.load(Ordering::Relaxed)).unwrap_or(i64::MAX);
        match ctx
            .db(
                "heartbeat",
                ctx.catalog.heartbeat(job_id, attempt, bytes, ctx.lease()),
            )
            .await
        {
            Ok(true) => {
                tracing::info!(job_id, "cancel requested: stopping the job");
                cancel.cancel();
                return;
            }
            Ok(false) => {}
            // The catalog may be down: the job goes on (nothing after a claim needs the catalog).
            Err(e) => tracing::warn!(job_id, "heartbeat failed: {e}"),
        }
    }
}

/// The outcome of a job that failed before pgbackman-dump could start.
pub(crate) fn failed(t0: DateTime<Utc>, job_id: i64, step: &str, message: String) -> BackupOutcome {
    BackupOutcome {
        job_id,
        status: Status::Failed {
            step: step.to_string(),
            exit_status: None,
            message,
            stderr_tail: String::new(),
        },
        started: t0,
        finished: Utc::now(),
        backup_dir: None,
        files: Vec::new(),
        total_size: 0,
        dump_file: None,
        manifest_file: None,
        role_list: Vec::new(),
        client_version: None,
        server_version: None,
        server_version_num: None,
        command: Vec::new(),
        phase_timings: Vec::new(),
        database_size: None,
        table_row_counts: None,
        verification: None,
        object_prefix: None,
    }
}

async fn execute(
    ctx: &Ctx,
    t: &Ticket,
    marker: &crate::spool::Marker,
    cancel: &CancellationToken,
    progress: Arc<AtomicU64>,
    started: DateTime<Utc>,
) -> BackupOutcome {
    let d = &t.def;
    let code: BackupCode = match d.backup_code.parse() {
        Ok(c) => c,
        Err(e) => return failed(started, t.job_id, "definition", e.to_string()),
    };
    // A wrong profile must not silently dump a managed node as a standard one.
    let profile: NodeProfile = match d.node_profile.parse() {
        Ok(p) => p,
        Err(e) => return failed(started, t.job_id, "definition", e.to_string()),
    };
    let Ok(port) = u16::try_from(d.pgport) else {
        return failed(
            started,
            t.job_id,
            "definition",
            format!("port {} is not a port", d.pgport),
        );
    };
    let label = format!("{}:{}", d.node_fqdn, port);
    // The server's version decides the client: connect first (this also proves the node is up).
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
        Err(e) => return failed(started, t.job_id, "connect", e.to_string()),
    };
    let facts = match pgbackman_db::node::node_facts(node_cfg, &label).await {
        Ok(f) => f,
        Err(e) => return failed(started, t.job_id, "connect", e.to_string()),
    };
    let server_major = u32::try_from(facts.server_version_num / 10000).unwrap_or(0);
    let requested = d.client_major.and_then(|m| u32::try_from(m).ok());
    let (client_major, bin_dir) =
        match pgbackman_dump::pick_client(&ctx.bin_dirs(), server_major, requested) {
            Ok(c) => c,
            Err(e) => return failed(started, t.job_id, "client", e.to_string()),
        };
    if !code.is_cluster_wide() && !facts.databases.iter().any(|x| x == &d.dbname) {
        return failed(
            started,
            t.job_id,
            "connect",
            format!(
                "database \"{}\" does not exist on PgSQL node {label}",
                d.dbname
            ),
        );
    }
    let extra =
        match pgbackman_core::params::check_extra_dump_parameters(&d.extra_backup_parameters) {
            Ok(a) => a,
            Err(e) => return failed(started, t.job_id, "definition", e.to_string()),
        };
    // Written only where this agent can delete it again (crate::roots).
    let node_dir = match crate::roots::node_dir_for_write(&ctx.cfg_now(), &d.node_backup_partition)
    {
        Ok(dir) => dir,
        Err(e) => {
            return failed(
                started,
                t.job_id,
                "partition",
                format!(
                    "{e}; no backup of PgSQL node {label} is written there. Set another pgnode_backup_partition with update_pgsql_node_config"
                ),
            );
        }
    };
    let what = if code.is_cluster_wide() {
        code.to_string()
    } else {
        d.dbname.clone()
    };
    let set_name = format!(
        "{}-{}-{}",
        started.format("%Y%m%dT%H%M%SZ"),
        if t.offline_at.is_some() {
            // No job id yet: the catalog assigns one at replay.
            format!("offline{}", -t.job_id)
        } else {
            format!("job{}", t.job_id)
        },
        if t.snapshot {
            format!("snap{}-{code}", d.def_id)
        } else {
            format!("def{}-{code}", d.def_id)
        }
    );
    // An encrypted definition without a key fails: it is never written in plain text.
    let encryption = match &d.encryption_recipients {
        None => None,
        Some(r) if r.is_empty() => {
            return failed(
                started,
                t.job_id,
                "encryption",
                format!(
                    "backup definition {} is to be encrypted, but backup server {} has no encryption_key:                      set one (update_backup_server_config SERVER encryption_key=NAME) or name a key on the                      definition (set_definition_encryption {} NAME)",
                    d.def_id, ctx.server_id, d.def_id
                ),
            );
        }
        Some(r) => Some(pgbackman_dump::crypt::SetEncryption {
            recipients: r
                .iter()
                .map(|k| pgbackman_dump::crypt::SetRecipient {
                    name: k.name.clone(),
                    recipient: k.recipient.clone(),
                    fingerprint: k.fingerprint.clone(),
                })
                .collect(),
        }),
    };
    let spec = BackupSpec {
        job_id: t.job_id,
        code,
        profile,
        dbname: if code.is_cluster_wide() {
            String::new()
        } else {
            d.dbname.clone()
        },
        node: NodeConn {
            host: d.node_fqdn.clone(),
            port,
            user: d.admin_user.clone(),
            admin_dbname: d.admin_dbname.clone(),
            sslmode: d.sslmode.clone(),
            passfile: ctx.cfg.passfile.clone(),
            timeouts: Some(ctx.cfg.nodes.clone()),
        },
        node_label: label,
        bin_dir,
        format: if d.dump_format == "directory" {
            DumpFormat::Directory {
                jobs: u32::try_from(d.dump_jobs.max(1)).unwrap_or(1),
            }
        } else {
            DumpFormat::Custom {
                zstd_level: d.compression_level,
            }
        },
        extra_args: extra,
        lock_wait_timeout: d.lock_wait_timeout_seconds.map(Duration::from_secs_f64),
        max_runtime: d.max_runtime_seconds.map(Duration::from_secs_f64),
        application_name: "pgbackman".into(),
        staging_root: ctx.backup_dir().join("staging"),
        final_dir: node_dir.join(encode_path_component(&what)).join(set_name),
        definition: serde_json::to_value(d).unwrap_or(Value::Null),
        encryption,
    };
    let _ = client_major;
    // A restart after the set is in place records it as what it is (crate::recover).
    if let Err(e) = crate::spool::note_set_dir(&ctx.cfg.state_dir, marker, &spec.final_dir) {
        tracing::warn!(job_id = t.job_id, "{e:#}");
    }
    let p = progress.clone();
    let report_progress = move |n: u64| p.store(n, Ordering::Relaxed);
    // pause_recovery_on_standby: replay stays paused while this dump (and any other of the
    // node) runs, and at most max_recovery_pause.
    let hold = match ctx.pauses.hold(&ctx.cfg, d, port).await {
        Ok(h) => h,
        Err(message) => return failed(started, t.job_id, "recovery_pause", message),
    };
    let dump_cancel = cancel.child_token();
    let _expiry = hold.expired.clone().map(|expired| {
        let stop = dump_cancel.clone();
        AbortOnDrop(tokio::spawn(async move {
            expired.cancelled().await;
            stop.cancel();
        }))
    });
    // A definition that stores in a repository (its own, else its server's primary):
    // streamed there, nothing kept on this disk.
    let target = match d.repository_id {
        Some(id) => match crate::repository::open(ctx, id).await {
            Ok(store) => Some(pgbackman_dump::upload::StoreTarget {
                store,
                prefix: pgbackman_store::layout::set_prefix(
                    d.pgsql_node_id,
                    &format!(
                        "{}/{}",
                        encode_path_component(&what),
                        spec.final_dir
                            .file_name()
                            .map(|n| n.to_string_lossy().into_owned())
                            .unwrap_or_default()
                    ),
                ),
            }),
            Err(e) => {
                hold.release().await;
                return failed(started, t.job_id, "repository", e);
            }
        },
        None => None,
    };
    let mut outcome =
        pgbackman_dump::run_backup_to(&spec, target.as_ref(), dump_cancel, &report_progress).await;

    if hold.has_expired() && !cancel.is_cancelled() && !matches!(outcome.status, Status::Succeeded)
    {
        outcome.status = Status::Failed {
            step: "recovery_pause".into(),
            exit_status: None,
            message: format!(
                "WAL replay on standby node {}:{port} was paused for max_recovery_pause ({} s) and this dump was still running: it was stopped and replay resumed. \
                 Raise max_recovery_pause with update_pgsql_node_config, or back up this node from its primary",
                d.node_fqdn,
                hold.max.as_secs()
            ),
            stderr_tail: String::new(),
        };
    }
    hold.release().await;
    outcome
}

/// A run's status as the report fields execution_status, error_step, error_exit_status,
/// error_message and error_stderr_tail (backups and restores report them alike).
pub(crate) fn status_fields(
    s: &Status,
) -> (
    &'static str,
    Option<String>,
    Option<i32>,
    Option<String>,
    Option<String>,
) {
    match s {
        Status::Succeeded => ("SUCCEEDED", None, None, None, None),
        Status::Cancelled { reason } => (
            "CANCELLED",
            Some("cancel".to_string()),
            None,
            Some(reason.clone()),
            None,
        ),
        Status::Failed {
            step,
            exit_status,
            message,
            stderr_tail,
        } => (
            "ERROR",
            Some(step.clone()),
            *exit_status,
            Some(message.clone()),
            Some(stderr_tail.clone()),
        ),
    }
}

/// Phase timings as a JSON object (name: seconds).
pub(crate) fn timings_json(t: &[(String, f64)]) -> serde_json::Map<String, Value> {
    t.iter().map(|(k, v)| (k.clone(), json!(v))).collect()
}

/// The report in the shape api.report_backup reads.
fn result_json(t: &Ticket, o: &BackupOutcome) -> Value {
    let mut v = outcome_json(&t.def.dump_format, t.def.compression_level, o);
    // A set in a repository: where its objects are (files[].name are relative to the prefix).
    if let (Some(prefix), Some(id), Some(m)) =
        (&o.object_prefix, t.def.repository_id, v.as_object_mut())
    {
        m.insert("repository_id".into(), json!(id));
        m.insert("object_prefix".into(), json!(prefix));
    }
    // An encrypted set: the fingerprints that can read it (api.reported_encryption).
    if let (true, Some(r), Some(m)) = (
        o.status.is_success(),
        t.def
            .encryption_recipients
            .as_ref()
            .filter(|r| !r.is_empty()),
        v.as_object_mut(),
    ) {
        let fps: Vec<&str> = r.iter().map(|k| k.fingerprint.as_str()).collect();
        m.insert("encrypted_with".into(), json!(fps));
    }
    v
}

/// [`result_json`] for a definition's dump format and compression level.
pub(crate) fn outcome_json(dump_format: &str, compression_level: i32, o: &BackupOutcome) -> Value {
    let dir = o.backup_dir.as_ref().map(|d| d.display().to_string());
    let path = |name: &str| {
        o.backup_dir
            .as_ref()
            .map(|d| d.join(name).display().to_string())
    };
    let file = |pred: &dyn Fn(&str) -> bool| o.files.iter().find(|f| pred(&f.name));
    let dump = o.dump_file.as_ref().and_then(|n| {
        o.files
            .iter()
            // A directory-format dump has no single file: its members are in `files`.
            .find(|f| &f.name == n)
    });
    let roles = file(&|n| n == "roles.sql");
    let dbconf = file(&|n| n == "database.sql");
    let (status, step, exit, message, tail) = status_fields(&o.status);
    let timings = timings_json(&o.phase_timings);
    json!({
        "execution_status": status,
        "procpid": std::process::id(),
        "started": o.started.to_rfc3339(),
        "finished": o.finished.to_rfc3339(),
        "backup_dir": dir,
        "dump_file": o.dump_file.as_ref().and_then(|n| path(n)),
        "dump_file_size": dump.map(|f| f.size),
        "checksum": dump.map(|f| f.sha256.clone()),
        "log_file": path("backup.log").filter(|_| o.backup_dir.is_some()),
        "roles_file": roles.and_then(|f| path(&f.name)),
        "roles_file_size": roles.map(|f| f.size),
        "dbconfig_file": dbconf.and_then(|f| path(&f.name)),
        "dbconfig_file_size": dbconf.map(|f| f.size),
        "manifest_file": o.manifest_file.as_ref().and_then(|n| path(n)),
        "total_size": o.total_size,
        "files": o.files,
        "database_size": o.database_size,
        "role_list": o.role_list,
        "client_version": o.client_version,
        "server_version": o.server_version,
        "server_major": o.server_version_num.map(|v| (v / 10000).to_string()),
        "client_major": o.client_version.as_deref().and_then(pgbackman_dump::parse_major).map(|m| m.to_string()),
        "dump_format": dump_format,
        "compression": if dump_format == "directory" { "pg_dump".to_string() } else { format!("zstd:{compression_level}") },
        "command": o.command.join(" "),
        "phase_timings": timings,
        "table_row_counts": o.table_row_counts,
        // Levels 1 and 2 run by pgbackman-dump on the set in place (crate::verify_job).
        "verification_level": o.verification.as_ref().map(|v| v.level),
        "verification_state": o.verification.as_ref().map(|v| v.state),
        "verification_error": o.verification.as_ref().and_then(|v| v.error.clone()),
        "error_step": step,
        "error_exit_status": exit,
        "error_message": message,
        "error_stderr_tail": tail,
    })
}

/// Records the result exactly once: spooled durably first, then the spool is delivered when the
/// catalog is reachable (oldest first; this result is among them). A result that cannot even be
/// spooled (disk full) goes straight to the catalog, and is logged whole if that fails too.
async fn report(ctx: &Ctx, t: &Ticket, result: Value) {
    let entry = crate::spool::Entry::backup(t.key(), ctx.server_id, &ctx.agent_name, result);
    submit(ctx, entry).await;
}

/// Records a result of any kind through the spool (see [`report`]).
pub async fn submit(ctx: &Ctx, entry: crate::spool::Entry) {
    let job_id = match entry.key {
        crate::spool::Key::Job { job_id, .. } => job_id,
        crate::spool::Key::Scheduled { .. } => 0,
    };
    match crate::spool::write(&ctx.cfg.state_dir, &entry) {
        Ok(_) => {
            ctx.health.spooled.fetch_add(1, Ordering::Relaxed);
            if ctx.health.is_online() {
                crate::replay::replay(ctx).await;
            }
        }
        Err(e) => {
            tracing::error!(job_id, "{e:#}; reporting directly");
            match crate::replay::deliver(ctx, &entry).await {
                crate::replay::Delivery::Recorded(_) | crate::replay::Delivery::Dropped => {}
                crate::replay::Delivery::Unreachable(e) | crate::replay::Delivery::Refused(e) => {
                    tracing::error!(
                        job_id,
                        "could not record the result ({e}); it is only in this log: {}",
                        entry.result
                    )
                }
            }
        }
    }
}
