//! One restore, step by step (see the module documentation of `restore`). Every step is timed;
//! any failure, cancel or timeout after the target was touched is undone.

use std::collections::BTreeSet;
use std::fs::File;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use chrono::Utc;
use pgbackman_core::model::BackupCode;
use pgbackman_core::restore::{Feed, check_extra_restore_parameters, choose_feed, split_table};
use pgbackman_db::introspect::{self, NodeSession};
use pgbackman_db::restore::target::{self, TargetState};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::psql_error::{self, Script};
use super::{feed, journal};
#[path = "split.rs"]
mod split;
use super::{RestoreOutcome, RestoreSpec, RolePolicy, RowCountCheck};
use crate::child::{self, ChildCommand, Ended, RunLog, Stdout};
use crate::client::{parse_major, server_major, tool_version};
use crate::node;
use crate::quote::{conninfo_value, shell_join};
use crate::run::{Bounds, Stop, fail};
use crate::run::{
    CLUSTER_DUMP_FILE, CUSTOM_DUMP_FILE, DATABASE_FILE, DIRECTORY_DUMP, GLOBALS_DUMP_FILE,
    ROLES_FILE,
};
use crate::set::{self, Manifest, StagingGuard};
use crate::spec::{RowCountSource, Status};

/// The decompressed custom dump in the staging directory.
const STAGED_DUMP: &str = "dump.pgdump";
/// Bound of each statement that undoes a failed restore.
const UNDO_TIMEOUT: Duration = Duration::from_secs(60);

/// Writes into a child's stdin, counting what it wrote: (bytes, roles whose CREATE was skipped).
type Pump = Box<dyn FnOnce(File) -> std::io::Result<(u64, Vec<String>)> + Send>;

struct Exec<'a> {
    spec: &'a RestoreSpec,
    cancel: CancellationToken,
    deadline: Option<Instant>,
    log: Arc<RunLog>,
    out: RestoreOutcome,
    /// Admin connection to the target (also used to undo).
    session: Option<NodeSession>,
    written: Arc<AtomicU64>,
    // What to undo.
    renamed: Option<(String, String)>,
    touched_db: bool,
    roles_before: Option<BTreeSet<String>>,
    dbs_before: Option<BTreeSet<String>>,
    needed_roles: Vec<String>,
    force_drop: bool,
    /// What the journal says may have changed (written before each change).
    changes: journal::Changes,
}

/// Runs one restore. Never fails: the outcome says how it ended and what was undone. No child
/// outlives the run, also when this future is dropped (an undo cannot run then: a dropped
/// restore leaves its target as it was at that moment, which the log records step by step).
///
/// `progress` gets the bytes fed to the restore client so far (uncompressed), a few times a
/// second.
pub async fn restore_set(
    spec: &RestoreSpec,
    cancel: CancellationToken,
    progress: &(dyn Fn(u64) + Sync),
) -> RestoreOutcome {
    let mut x = Exec::new(spec, cancel);
    let staging = spec.staging_root.join(spec.job_id.to_string());
    let mut guard: Option<StagingGuard> = None;
    tracing::info!(job_id = spec.job_id, set = %spec.set_dir.display(), node = %spec.node_label, "restore started");
    let result = x.execute(&staging, &mut guard, progress).await;
    if let Some(g) = guard.as_mut()
        && let Err(e) = g.remove()
    {
        x.out
            .notes
            .push(format!("cannot remove {}: {e}", staging.display()));
    }
    x.out.status = match result {
        Ok(()) => Status::Succeeded,
        Err(stop) => {
            let status = match stop {
                Stop::Failed {
                    step,
                    exit_status,
                    message,
                    stderr_tail,
                } => Status::Failed {
                    step,
                    exit_status,
                    message,
                    stderr_tail,
                },
                Stop::Cancelled { step } => Status::Cancelled {
                    reason: format!("cancelled during step {step}"),
                },
            };
            x.log.event(&format!("restore stopped: {status}"));
            x.undo().await;
            status
        }
    };
    // Ended (undone or kept): marked so first, so that a journal whose removal fails is never
    // taken for an interrupted run; then removed.
    if let Some(j) = &spec.journal
        && j.path.exists()
    {
        let _ = x.journal("end", |c| c.ended = true);
        if let Err(e) = journal::remove_journal(&j.path) {
            x.out
                .notes
                .push(format!("cannot remove {}: {e}", j.path.display()));
        }
    }
    x.out.bytes_restored = x.written.load(Ordering::Relaxed);
    match &x.out.status {
        Status::Succeeded => {
            x.log.event("restore succeeded");
            tracing::info!(job_id = spec.job_id, "restore succeeded");
        }
        Status::Failed { step, message, .. } => {
            tracing::warn!(job_id = spec.job_id, step, message, "restore failed")
        }
        Status::Cancelled { reason } => {
            tracing::warn!(job_id = spec.job_id, reason, "restore cancelled")
        }
    }
    if let Err(e) = x.log.close() {
        x.out.notes.push(format!("restore log: {e}"));
    }
    drop(x.session.take());
    x.out.finished = Utc::now();
    x.out
}

impl<'a> Exec<'a> {
    fn new(spec: &'a RestoreSpec, cancel: CancellationToken) -> Self {
        Exec {
            spec,
            cancel,
            deadline: spec.max_runtime.map(|d| Instant::now() + d),
            log: Arc::new(RunLog::new(None)),
            out: RestoreOutcome {
                jobs: spec.jobs.max(1),
                ..RestoreOutcome::empty(spec.job_id, Status::Succeeded)
            },
            session: None,
            written: Arc::new(AtomicU64::new(0)),
            renamed: None,
            touched_db: false,
            roles_before: None,
            dbs_before: None,
            needed_roles: Vec::new(),
            force_drop: false,
            changes: journal::Changes::default(),
        }
    }

    /// Records in the journal (when there is one) that the next change may happen; a journal
    /// that cannot be written stops the run before that change.
    fn journal(&mut self, step: &str, f: impl FnOnce(&mut journal::Changes)) -> Result<(), Stop> {
        f(&mut self.changes);
        let Some(j) = &self.spec.journal else {
            return Ok(());
        };
        journal::write(j, self.spec, self.out.started, &self.changes).map_err(|e| {
            fail(
                step,
                format!(
                    "cannot write the restore journal {}: {e}; nothing was changed by this step",
                    j.path.display()
                ),
            )
        })
    }
    fn bounds(&self) -> Bounds<'_> {
        Bounds {
            cancel: &self.cancel,
            deadline: self.deadline,
            max_runtime: self.spec.max_runtime,
        }
    }

    async fn guarded<T>(&self, step: &str, fut: impl Future<Output = T>) -> Result<T, Stop> {
        self.bounds().guarded(step, fut).await
    }

    fn timed_out(&self, step: &str) -> Stop {
        self.bounds().timed_out(step)
    }

    async fn blocking<T: Send + 'static>(
        &self,
        step: &str,
        abort: Arc<AtomicBool>,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Stop> {
        self.bounds().blocking(step, abort, f).await
    }

    fn timed(&mut self, phase: &str, since: std::time::Instant) {
        self.out
            .phase_timings
            .push((phase.to_string(), since.elapsed().as_secs_f64()));
    }

    fn client(&self) -> &tokio_postgres::Client {
        &self
            .session
            .as_ref()
            .expect("connected before the first change")
            .client
    }

    async fn execute(
        &mut self,
        staging: &Path,
        guard: &mut Option<StagingGuard>,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<(), Stop> {
        let spec = self.spec;
        self.open_log()?;
        self.check_arguments()?;

        // manifest
        let t = std::time::Instant::now();
        let dir = spec.set_dir.clone();
        let m = match self
            .blocking("manifest", Arc::default(), move || set::read_manifest(&dir))
            .await?
        {
            Ok(m) => m,
            Err(e) => {
                self.out.checksums_failed = Some(format!("manifest: {e}"));
                return Err(fail("manifest", e.to_string()));
            }
        };
        let code: BackupCode = m
            .code
            .parse()
            .map_err(|e| fail("manifest", format!("{e}")))?;
        self.out.code = Some(m.code.clone());
        self.out.source_dbname = m.dbname.clone();
        self.out.backup_client_version = Some(m.client_version.clone());
        self.out.backup_server_version = Some(m.server_version.clone());
        self.log.event(&format!(
            "pgbackman {} job {}: restore of {} set {} ({} of {:?} on {}, {})",
            env!("CARGO_PKG_VERSION"),
            spec.job_id,
            m.code,
            spec.set_dir.display(),
            m.client_version,
            m.dbname,
            m.node,
            m.started.to_rfc3339()
        ));
        self.timed("manifest", t);

        // verify
        if spec.verify_checksums {
            let t = std::time::Instant::now();
            let dir = spec.set_dir.clone();
            if let Err(e) = self
                .blocking("verify", Arc::default(), move || set::verify_set(&dir))
                .await?
            {
                self.out.checksums_failed = Some(e.to_string());
                return Err(fail("verify", e.to_string()));
            }
            self.log.event("every file matches its manifest sha256");
            self.timed("verify", t);
        }

        // client
        let t = std::time::Instant::now();
        let dump_major = parse_major(&m.client_version).unwrap_or(0);
        let cluster = code.is_cluster_wide();
        let tools: &[&'static str] = if cluster {
            &["psql"]
        } else {
            &["pg_restore", "psql"]
        };
        for tool in tools {
            let bin = spec.bin_dir.clone();
            let tool = *tool;
            let v = self
                .blocking("client", Arc::default(), move || tool_version(&bin, tool))
                .await?
                .map_err(|e| fail("client", e.to_string()))?;
            let major = parse_major(&v).unwrap_or(0);
            if tool == tools[0] {
                self.out.client_version = Some(v.clone());
            }
            if major < dump_major {
                return Err(fail(
                    "client",
                    format!(
                        "{tool} {major} cannot read a set written by pg_dump {dump_major}: use the client tools of major {dump_major} or newer"
                    ),
                ));
            }
        }
        self.log.event(&format!(
            "client: {}",
            self.out.client_version.as_deref().unwrap_or("")
        ));
        self.timed("client", t);

        // connect
        let t = std::time::Instant::now();
        let (session, warnings) = self
            .guarded(
                "connect",
                node::connect(
                    &spec.node,
                    &spec.node.admin_dbname,
                    &spec.application_name,
                    None,
                ),
            )
            .await?
            .map_err(|e| {
                fail(
                    "connect",
                    format!(
                        "cannot connect to database {:?} on {}: {e}",
                        spec.node.admin_dbname, spec.node_label
                    ),
                )
            })?;
        for w in warnings {
            self.log.event(&format!("connect: {w}"));
            self.out.notes.push(w);
        }
        let state = self
            .guarded("connect", target::read_state(&session.client))
            .await?
            .map_err(|e| fail("connect", e))?;
        self.session = Some(session);
        self.out.target_server_version = Some(state.server_version.clone());
        self.out.target_server_version_num = Some(state.server_version_num);
        self.force_drop = state.server_version_num >= 130_000;
        self.log.event(&format!(
            "target {}: PostgreSQL {}",
            spec.node_label, state.server_version
        ));
        let tmajor = server_major(state.server_version_num);
        if tmajor < dump_major {
            return Err(fail(
                "check",
                format!(
                    "restore refused: the set was written by pg_dump {dump_major} (source PostgreSQL {}), and {} runs PostgreSQL {}, an older major; a dump only loads into its own major or a newer one: restore onto a node running PostgreSQL {dump_major} or newer",
                    m.server_version, spec.node_label, state.server_version
                ),
            ));
        }
        self.timed("connect", t);

        if cluster {
            self.restore_cluster(&m, code, &state, progress).await
        } else {
            self.restore_database(&m, code, &state, staging, guard, progress)
                .await
        }
    }

    fn open_log(&mut self) -> Result<(), Stop> {
        let Some(path) = &self.spec.log_file else {
            return Ok(());
        };
        let io = |e: std::io::Error| fail("write", format!("{}: {e}", path.display()));
        if let Some(parent) = path.parent() {
            set::create_private_dir_all(parent).map_err(io)?;
        }
        let f = match set::create_private_file(path) {
            Ok(f) => f,
            // A retried attempt of the same job appends to its log.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => std::fs::OpenOptions::new()
                .append(true)
                .open(path)
                .map_err(io)?,
            Err(e) => return Err(io(e)),
        };
        self.log = Arc::new(RunLog::new(Some(f)));
        Ok(())
    }

    fn check_arguments(&self) -> Result<(), Stop> {
        let spec = self.spec;
        let step = "arguments";
        if spec.extra_args.iter().any(|a| a == "--") {
            return Err(fail(step, "extra parameters must not contain \"--\""));
        }
        match check_extra_restore_parameters(&shell_join(&spec.extra_args)) {
            Ok(words) if words == spec.extra_args => {}
            Ok(_) => return Err(fail(step, "extra parameters do not survive re-splitting")),
            Err(e) => return Err(fail(step, e.to_string())),
        }
        if spec.jobs == 0 || spec.jobs > 64 {
            return Err(fail(
                step,
                format!("jobs {} is not within 1..64", spec.jobs),
            ));
        }
        if spec.rename_existing_to.as_deref() == Some(spec.target_dbname.as_str()) {
            return Err(fail(
                step,
                "the existing database cannot be renamed to its own name",
            ));
        }
        if spec.node.admin_dbname.is_empty() {
            return Err(fail(step, "the node's admin database is empty"));
        }
        Ok(())
    }

    /// The connection part of a child's argv and environment (as for a backup).
    fn child_command(&self, program: &str, args: Vec<String>) -> ChildCommand {
        let spec = self.spec;
        let mut cmd = ChildCommand::for_node(
            &spec.node,
            &spec.bin_dir,
            program,
            &spec.application_name,
            args,
            Stdout::Null,
        );
        if program == "pg_restore" {
            // pg_restore commits every statement on its own; waiting for each WAL flush buys
            // nothing here (a restore cut short is undone, never half-kept).
            cmd.env
                .push(("PGOPTIONS".into(), "-c synchronous_commit=off".into()));
        }
        cmd
    }

    fn psql_args(&self, dbname: &str) -> Vec<String> {
        vec![
            "--no-psqlrc".into(),
            "--quiet".into(),
            "--set=ON_ERROR_STOP=1".into(),
            format!("--dbname=dbname={}", conninfo_value(dbname)),
        ]
    }

    /// Runs one client to its end, feeding its stdin with `pump` when given. A pump that fails
    /// fails the step even when the child exited 0 (psql reading a truncated script would).
    async fn run_child(
        &mut self,
        step: &str,
        program: &str,
        args: Vec<String>,
        pump: Option<Pump>,
        progress: &(dyn Fn(u64) + Sync),
        main: bool,
    ) -> Result<Vec<String>, Stop> {
        let cmd = self.child_command(program, args);
        let argv = cmd.argv();
        if main {
            self.out.command = argv.clone();
        }
        self.log.event(&format!(
            "step {step}: {}",
            serde_json::to_string(&argv).unwrap_or_default()
        ));
        let (mut sup, _, stdin) = child::spawn_with_stdin(&cmd, &self.log, pump.is_some())
            .map_err(|e| fail(step, format!("cannot start {}: {e}", cmd.program.display())))?;
        let pump_handle = match (pump, stdin) {
            (Some(p), Some(stdin)) => {
                let fd = stdin
                    .into_owned_fd()
                    .map_err(|e| fail(step, format!("pipe: {e}")))?;
                let f = File::from(fd);
                Some(tokio::task::spawn_blocking(move || p(f)))
            }
            _ => None,
        };
        let written = Arc::clone(&self.written);
        let mut last = 0u64;
        let mut tick = move || {
            let now = written.load(Ordering::Relaxed);
            if now != last {
                last = now;
                progress(now);
            }
        };
        let ended = sup
            .wait(
                &self.cancel,
                self.deadline,
                Duration::from_millis(250),
                &mut tick,
            )
            .await;
        let stderr_tail = sup.stderr_tail().await;
        let pumped = match pump_handle {
            Some(h) => Some(
                h.await
                    .map_err(|e| fail(step, format!("internal error: {e}")))?,
            ),
            None => None,
        };
        let status = match ended {
            Ok(Ended::Exited(s)) => s,
            Ok(Ended::Cancelled) => {
                self.log.event(&format!("{step}: cancelled"));
                return Err(Stop::Cancelled { step: step.into() });
            }
            Ok(Ended::TimedOut) => {
                return Err(match self.timed_out(step) {
                    Stop::Failed { step, message, .. } => Stop::Failed {
                        step,
                        exit_status: None,
                        message,
                        stderr_tail,
                    },
                    other => other,
                });
            }
            Err(e) => return Err(fail(step, format!("waiting for {program}: {e}"))),
        };
        self.log.event(&format!("{step}: {status}"));
        if !status.success() {
            return Err(Stop::Failed {
                step: step.into(),
                exit_status: status.code(),
                message: match status.code() {
                    Some(c) => format!("{program} exited with status {c}"),
                    None => format!("{program} ended abnormally ({status})"),
                },
                stderr_tail,
            });
        }
        match pumped {
            Some(Err(e)) => Err(Stop::Failed {
                step: "decompress".into(),
                exit_status: None,
                message: format!(
                    "feeding {program} from {}: {e}",
                    self.spec.set_dir.display()
                ),
                stderr_tail,
            }),
            Some(Ok((_, skipped))) => Ok(skipped),
            None => Ok(Vec::new()),
        }
    }

    async fn restore_database(
        &mut self,
        m: &Manifest,
        code: BackupCode,
        state: &TargetState,
        staging: &Path,
        guard: &mut Option<StagingGuard>,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<(), Stop> {
        let spec = self.spec;
        let target = spec.target_dbname.clone();
        self.out.target_dbname = target.clone();
        let t = std::time::Instant::now();
        if target.is_empty() {
            return Err(fail(
                "arguments",
                format!("a {code} set needs a target database name"),
            ));
        }
        if code == BackupCode::Data {
            return Err(fail(
                "check",
                "a DATA set holds no schema and cannot be restored into a new database: restore the FULL or SCHEMA set, or load the data with pg_restore --data-only into a database that has the schema",
            ));
        }
        // The target database.
        let exists = state.databases.contains(&target);
        if exists {
            match &spec.rename_existing_to {
                None => {
                    return Err(fail(
                        "check",
                        format!(
                            "database {target:?} exists on {}: restore under another name, or have the existing one renamed out of the way",
                            spec.node_label
                        ),
                    ));
                }
                Some(new) if state.databases.contains(new) => {
                    return Err(fail(
                        "check",
                        format!(
                            "database {target:?} cannot be renamed to {new:?} on {}: that database exists too; choose another name",
                            spec.node_label
                        ),
                    ));
                }
                Some(_) => {}
            }
        }
        // The roles.
        let needed = m.role_list.clone();
        self.needed_roles = needed.clone();
        let mut now_exist = Vec::new();
        let mut now_missing = Vec::new();
        let mut reuse = Vec::new();
        for r in &needed {
            let present = state.roles.contains(r);
            if let RolePolicy::Decided {
                create,
                reuse: keep,
            } = &spec.roles
            {
                if create.contains(r) && present {
                    now_exist.push(r.clone());
                } else if keep.contains(r) && !present {
                    now_missing.push(r.clone());
                }
            }
            if present {
                reuse.push(r.clone());
            }
        }
        if let RolePolicy::Decided {
            create,
            reuse: keep,
        } = &spec.roles
            && let Some(r) = create.iter().chain(keep).find(|r| !needed.contains(r))
        {
            return Err(fail(
                "check",
                format!(
                    "role {r:?} is not one of the roles of the set ({})",
                    needed.join(", ")
                ),
            ));
        }
        if !now_exist.is_empty() || !now_missing.is_empty() {
            let mut parts = Vec::new();
            if !now_exist.is_empty() {
                parts.push(format!(
                    "{} exist(s) now on {} but was to be created",
                    now_exist.join(", "),
                    spec.node_label
                ));
            }
            if !now_missing.is_empty() {
                parts.push(format!(
                    "{} was to be reused but does not exist",
                    now_missing.join(", ")
                ));
            }
            return Err(fail(
                "check",
                format!(
                    "the roles changed since the restore was defined: {}; define the restore again to decide",
                    parts.join("; ")
                ),
            ));
        }
        self.out.roles_reused = reuse;
        // How the dump reaches pg_restore.
        let dump = spec.set_dir.join(&m.dump_file);
        let feed = match m.dump_file.as_str() {
            CUSTOM_DUMP_FILE => {
                let free = free_bytes(&spec.staging_root);
                let expected = m.database_size.and_then(|s| u64::try_from(s).ok());
                let share = m.table_row_counts.as_ref().and_then(|c| {
                    let total: i64 = c.tables.values().map(|n| (*n).max(0)).sum();
                    let max = c.tables.values().copied().max().unwrap_or(0);
                    (total > 0).then(|| max as f64 / total as f64)
                });
                let (mut feed, mut why) = choose_feed(
                    spec.decompression.as_str(),
                    spec.jobs,
                    expected,
                    free,
                    share,
                );
                let sections = spec.extra_args.iter().any(|a| {
                    a.starts_with("--section")
                        || a.starts_with("--data-only")
                        || a.starts_with("--schema-only")
                        || a == "-a"
                        || a == "-s"
                });
                if feed == Feed::Tee && sections {
                    feed = Feed::File;
                    why = "the extra parameters choose sections themselves: file instead of tee"
                        .into();
                }
                self.out.feed_reason = why;
                Some(feed)
            }
            DIRECTORY_DUMP => {
                self.out.feed_reason = "directory-format dump: read by pg_restore itself".into();
                None
            }
            other => {
                return Err(fail(
                    "manifest",
                    format!("dump file {other:?} is not a database dump this version restores"),
                ));
            }
        };
        self.out.feed = Some(feed.map_or("directory", |f| f.as_str()).to_string());
        self.out.jobs = match feed {
            Some(Feed::Stream) => 1,
            _ => spec.jobs.max(1),
        };
        self.log.event(&format!(
            "plan: database {target:?}{}, create role(s) [{}], reuse role(s) [{}], feed {} ({}), {} job(s)",
            match &spec.rename_existing_to {
                Some(n) if exists => format!(" (existing one renamed to {n:?})"),
                _ => String::new(),
            },
            needed
                .iter()
                .filter(|r| !self.out.roles_reused.contains(r))
                .cloned()
                .collect::<Vec<_>>()
                .join(", "),
            self.out.roles_reused.join(", "),
            self.out.feed.as_deref().unwrap_or(""),
            self.out.feed_reason,
            self.out.jobs
        ));
        self.timed("check", t);
        if self.cancel.is_cancelled() {
            return Err(Stop::Cancelled {
                step: "check".into(),
            });
        }

        // rename
        if exists && let Some(new) = spec.rename_existing_to.clone() {
            let t = std::time::Instant::now();
            let oid = self
                .guarded("rename", target::database_oid(self.client(), &target))
                .await?
                .map_err(|e| fail("rename", e))?
                .ok_or_else(|| fail("rename", format!("database {target:?} vanished")))?;
            let names = (target.clone(), new.clone(), oid);
            self.journal("rename", |c| c.renaming = Some(names))?;
            let r = self
                .guarded(
                    "rename",
                    target::rename_database(self.client(), &target, &new),
                )
                .await?;
            if let Err(e) = r {
                let others = target::other_sessions(self.client(), &target)
                    .await
                    .unwrap_or(0);
                return Err(fail(
                    "rename",
                    format!(
                        "cannot rename database {target:?} to {new:?} on {}: {e}{}",
                        spec.node_label,
                        if others > 0 {
                            format!(" ({others} session(s) connected: disconnect them and retry)")
                        } else {
                            String::new()
                        }
                    ),
                ));
            }
            self.renamed = Some((target.clone(), new.clone()));
            self.out.renamed_dbname = Some(new.clone());
            self.log.event(&format!(
                "renamed the existing database {target:?} to {new:?}"
            ));
            self.timed("rename", t);
        }

        // roles
        let t = std::time::Instant::now();
        self.roles_before = Some(state.roles.clone());
        let missing: Vec<String> = needed
            .iter()
            .filter(|r| !state.roles.contains(*r))
            .cloned()
            .collect();
        self.journal("roles", |c| c.creating_roles = Some(missing))?;
        let mut args = self.psql_args(&spec.node.admin_dbname);
        args.push(format!(
            "--file={}",
            spec.set_dir.join(ROLES_FILE).display()
        ));
        let script = spec.set_dir.join(ROLES_FILE);
        self.run_child("roles", "psql", args, None, progress, false)
            .await
            .map_err(|s| psql_error::explain(s, ROLES_FILE, Script::File(&script)))?;
        let after = self
            .guarded("roles", target::existing_roles(self.client(), &needed))
            .await?
            .map_err(|e| fail("roles", e))?;
        self.out.roles_created = needed
            .iter()
            .filter(|r| after.contains(*r) && !state.roles.contains(*r))
            .cloned()
            .collect();
        if let Some(r) = needed.iter().find(|r| !after.contains(*r)) {
            return Err(fail(
                "roles",
                format!("role {r:?} does not exist after roles.sql ran"),
            ));
        }
        let made = self
            .guarded(
                "roles",
                target::role_oids(self.client(), &self.out.roles_created),
            )
            .await?
            .map_err(|e| fail("roles", e))?;
        self.journal("roles", |c| c.created_roles = Some(made))?;
        self.log.event(&format!(
            "roles created: [{}]",
            self.out.roles_created.join(", ")
        ));
        self.timed("roles", t);

        // database
        let t = std::time::Instant::now();
        // Checked again right before: only a database this run creates is ever dropped.
        let again = self
            .guarded("database", target::read_state(self.client()))
            .await?
            .map_err(|e| fail("database", e))?;
        if again.databases.contains(&target) {
            return Err(fail(
                "database",
                format!(
                    "database {target:?} appeared on {} meanwhile",
                    spec.node_label
                ),
            ));
        }
        self.journal("database", |c| c.creating_db = true)?;
        self.touched_db = true;
        let mut args = self.psql_args(&spec.node.admin_dbname);
        args.push(format!("--set=dbname={target}"));
        args.push(format!(
            "--file={}",
            spec.set_dir.join(DATABASE_FILE).display()
        ));
        let script = spec.set_dir.join(DATABASE_FILE);
        self.run_child("database", "psql", args, None, progress, false)
            .await
            .map_err(|s| psql_error::explain(s, DATABASE_FILE, Script::File(&script)))?;
        // The journal names the database by OID from now on (the long part comes next).
        let oid = self
            .guarded("database", target::database_oid(self.client(), &target))
            .await?
            .map_err(|e| fail("database", e))?;
        self.journal("database", |c| c.db_oid = oid)?;
        self.timed("database", t);

        // The tee feed splits the data load of a table holding most of the rows (split.rs).
        let split = match (&m.table_row_counts, feed) {
            (Some(c), Some(Feed::Tee)) if spec.extra_args.is_empty() => {
                split_table(&c.tables, spec.jobs)
            }
            _ => None,
        };
        let mut split_done = false;
        if let Some((schema, table)) = split {
            self.prepare_staging(staging, guard)?;
            let staged = staging.join(STAGED_DUMP);
            split_done = self
                .tee_split(&dump, &staged, &target, &schema, &table, staging, progress)
                .await?;
        }

        // pg_restore
        let mut args = vec![
            format!("--dbname=dbname={}", conninfo_value(&target)),
            "--exit-on-error".into(),
            "--verbose".into(),
        ];
        let pump: Option<Pump> = match feed {
            Some(Feed::Stream) => {
                args.extend(spec.extra_args.iter().cloned());
                let written = Arc::clone(&self.written);
                let abort = Arc::new(AtomicBool::new(false));
                let src = dump.clone();
                Some(Box::new(move |f: File| {
                    feed::decode_into(&src, f, &written, &abort).map(|n| (n, Vec::new()))
                }))
            }
            Some(Feed::Tee) if split_done => None,
            Some(Feed::Tee) => {
                self.prepare_staging(staging, guard)?;
                let dst = staging.join(STAGED_DUMP);
                args.extend([
                    "--section=pre-data".to_string(),
                    "--section=data".to_string(),
                ]);
                args.extend(spec.extra_args.iter().cloned());
                let written = Arc::clone(&self.written);
                let abort = Arc::new(AtomicBool::new(false));
                let src = dump.clone();
                Some(Box::new(move |f: File| {
                    feed::decode_tee(&src, f, &dst, &written, &abort).map(|n| (n, Vec::new()))
                }))
            }
            Some(Feed::File) => {
                let t = std::time::Instant::now();
                self.prepare_staging(staging, guard)?;
                let dst = staging.join(STAGED_DUMP);
                let abort = Arc::new(AtomicBool::new(false));
                let (src, d, w, a) = (
                    dump.clone(),
                    dst.clone(),
                    Arc::clone(&self.written),
                    Arc::clone(&abort),
                );
                let n = self
                    .blocking("decompress", abort, move || {
                        feed::decode_to_file(&src, &d, &w, &a)
                    })
                    .await?
                    .map_err(|e| {
                        fail(
                            "decompress",
                            format!("{} into {}: {e}", dump.display(), dst.display()),
                        )
                    })?;
                progress(n);
                self.log
                    .event(&format!("decompressed {} bytes into {}", n, dst.display()));
                self.timed("decompress", t);
                args.push(format!("--jobs={}", spec.jobs.max(1)));
                args.extend(spec.extra_args.iter().cloned());
                args.push(dst.display().to_string());
                None
            }
            None => {
                args.push(format!("--jobs={}", spec.jobs.max(1)));
                args.extend(spec.extra_args.iter().cloned());
                args.push(dump.display().to_string());
                None
            }
        };
        if !split_done {
            let t = std::time::Instant::now();
            self.run_child("pg_restore", "pg_restore", args, pump, progress, true)
                .await?;
            self.timed("pg_restore", t);
        }
        if feed == Some(Feed::Tee) {
            let t = std::time::Instant::now();
            let mut args = vec![
                format!("--dbname=dbname={}", conninfo_value(&target)),
                "--exit-on-error".into(),
                "--verbose".into(),
                "--section=post-data".into(),
                format!("--jobs={}", spec.jobs.max(1)),
            ];
            args.extend(spec.extra_args.iter().cloned());
            args.push(staging.join(STAGED_DUMP).display().to_string());
            let first = std::mem::take(&mut self.out.command);
            self.run_child("post_data", "pg_restore", args, None, progress, true)
                .await?;
            let second = std::mem::replace(&mut self.out.command, first);
            self.out.command.push("&&".into());
            self.out.command.extend(second);
            self.timed("post_data", t);
        }

        // row counts
        if spec.compare_row_counts {
            let t = std::time::Instant::now();
            self.compare_row_counts(m, &target).await?;
            self.timed("row_counts", t);
        }

        let t = std::time::Instant::now();
        match self
            .guarded(
                "size",
                introspect::database_size(self.client(), Some(&target)),
            )
            .await?
        {
            Ok(s) => self.out.restored_size = Some(s),
            Err(e) => self
                .out
                .notes
                .push(format!("size of {target:?} unknown: {e}")),
        }
        self.timed("size", t);
        Ok(())
    }

    fn prepare_staging(
        &mut self,
        staging: &Path,
        guard: &mut Option<StagingGuard>,
    ) -> Result<(), Stop> {
        let io = |what: &str, p: &Path, e: std::io::Error| {
            fail("staging", format!("{what} {}: {e}", p.display()))
        };
        set::create_private_dir_all(&self.spec.staging_root)
            .map_err(|e| io("cannot create", &self.spec.staging_root, e))?;
        if std::fs::symlink_metadata(staging).is_ok() {
            std::fs::remove_dir_all(staging).map_err(|e| io("cannot remove", staging, e))?;
        }
        set::create_private_dir(staging).map_err(|e| io("cannot create", staging, e))?;
        *guard = Some(StagingGuard::new(staging.to_path_buf()));
        Ok(())
    }

    async fn compare_row_counts(&mut self, m: &Manifest, target: &str) -> Result<(), Stop> {
        let step = "row_counts";
        let Some(expected) = &m.table_row_counts else {
            self.out
                .notes
                .push("no row counts in the manifest: nothing compared".into());
            return Ok(());
        };
        if expected.source != RowCountSource::Snapshot {
            self.out.row_count_check = Some(RowCountCheck {
                tables: 0,
                mismatches: Default::default(),
                exact: false,
            });
            self.out
                .notes
                .push("the manifest holds estimates only: row counts not compared".into());
            return Ok(());
        }
        let (s, _) = self
            .guarded(
                step,
                node::connect(&self.spec.node, target, &self.spec.application_name, None),
            )
            .await?
            .map_err(|e| fail(step, format!("cannot connect to {target:?}: {e}")))?;
        let keys: Vec<String> = expected.tables.keys().cloned().collect();
        let counted = self
            .guarded(step, async {
                s.client
                    .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                    .await
                    .map_err(|e| e.to_string())?;
                let r = introspect::count_rows(&s.client, &keys).await;
                let _ = s.client.batch_execute("COMMIT").await;
                Ok::<_, String>(r)
            })
            .await?
            .map_err(|e| fail(step, e))?;
        let (counts, _) = counted;
        let mut mismatches = std::collections::BTreeMap::new();
        for (k, want) in &expected.tables {
            let got = counts.get(k).copied().unwrap_or(-1);
            if got != *want {
                mismatches.insert(k.clone(), (*want, got));
            }
        }
        let n = mismatches.len();
        self.out.row_count_check = Some(RowCountCheck {
            tables: expected.tables.len(),
            mismatches: mismatches.clone(),
            exact: true,
        });
        self.log.event(&format!(
            "row counts: {} table(s) compared, {n} difference(s)",
            expected.tables.len()
        ));
        if n > 0 {
            let list: Vec<String> = mismatches
                .iter()
                .take(10)
                .map(|(k, (w, g))| format!("{k}: {w} in the set, {g} restored"))
                .collect();
            return Err(fail(
                step,
                format!("{n} table(s) differ from the set: {}", list.join("; ")),
            ));
        }
        Ok(())
    }

    async fn restore_cluster(
        &mut self,
        m: &Manifest,
        code: BackupCode,
        state: &TargetState,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<(), Stop> {
        let spec = self.spec;
        let t = std::time::Instant::now();
        let expected_file = if code == BackupCode::Globals {
            GLOBALS_DUMP_FILE
        } else {
            CLUSTER_DUMP_FILE
        };
        if m.dump_file != expected_file {
            return Err(fail(
                "manifest",
                format!("a {code} set holds {expected_file}, not {:?}", m.dump_file),
            ));
        }
        let own: BTreeSet<&str> = [
            "postgres",
            "template0",
            "template1",
            spec.node.admin_dbname.as_str(),
        ]
        .into_iter()
        .collect();
        let dbs: Vec<&String> = state
            .databases
            .iter()
            .filter(|d| !own.contains(d.as_str()))
            .collect();
        let roles: Vec<&String> = state
            .roles
            .iter()
            .filter(|r| {
                !r.starts_with("pg_") && **r != state.bootstrap_superuser && **r != spec.node.user
            })
            .collect();
        if (!dbs.is_empty() || !roles.is_empty()) && !spec.acknowledge_nonempty {
            let mut what = Vec::new();
            if !dbs.is_empty() {
                what.push(format!(
                    "database(s) {}",
                    dbs.iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            if !roles.is_empty() {
                what.push(format!(
                    "role(s) {}",
                    roles
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            return Err(fail(
                "check",
                format!(
                    "the target cluster {} is not empty ({}): a {code} set restores onto an empty cluster; acknowledge explicitly (--acknowledge-nonempty) to restore onto it anyway",
                    spec.node_label,
                    what.join("; ")
                ),
            ));
        }
        self.out.feed = Some("sql".into());
        self.out.feed_reason = "pg_dumpall SQL decoded in-process into psql".into();
        self.out.jobs = 1;
        self.timed("check", t);

        let t = std::time::Instant::now();
        let (roles, dbs) = (state.roles.clone(), state.databases.clone());
        self.journal("psql", |c| {
            c.roles_before = Some(roles);
            c.dbs_before = Some(dbs);
        })?;
        self.roles_before = Some(state.roles.clone());
        self.dbs_before = Some(state.databases.clone());
        let mut args = self.psql_args(&spec.node.admin_dbname);
        args.push("--file=-".into());
        let src = spec.set_dir.join(expected_file);
        let existing = state.roles.clone();
        let written = Arc::clone(&self.written);
        let abort = Arc::new(AtomicBool::new(false));
        let pump: Pump =
            Box::new(move |f: File| feed::decode_sql_into(&src, f, &existing, &written, &abort));
        let skipped = self
            .run_child("psql", "psql", args, Some(pump), progress, true)
            .await
            .map_err(|s| {
                let script = spec.set_dir.join(expected_file);
                psql_error::explain(s, expected_file, Script::Zstd(&script))
            })?;
        self.out.roles_reused = skipped;
        let after = self
            .guarded("psql", target::read_state(self.client()))
            .await?
            .map_err(|e| fail("psql", e))?;
        self.out.roles_created = after.roles.difference(&state.roles).cloned().collect();
        self.out.databases_created = after
            .databases
            .difference(&state.databases)
            .cloned()
            .collect();
        self.log.event(&format!(
            "created role(s) [{}], database(s) [{}]",
            self.out.roles_created.join(", "),
            self.out.databases_created.join(", ")
        ));
        self.timed("psql", t);
        Ok(())
    }

    /// Undoes what a failed run changed on the target; every action and failure goes to
    /// `cleanup`. Runs after cancel too (bounded per statement), never raced against it.
    async fn undo(&mut self) {
        let touched = self.renamed.is_some() || self.touched_db || self.roles_before.is_some();
        if !touched {
            return;
        }
        let spec = self.spec;
        let alive = match &self.session {
            Some(s) => !s.client.is_closed(),
            None => false,
        };
        if !alive {
            match tokio::time::timeout(
                UNDO_TIMEOUT,
                node::connect(
                    &spec.node,
                    &spec.node.admin_dbname,
                    &spec.application_name,
                    None,
                ),
            )
            .await
            {
                Ok(Ok((s, _))) => self.session = Some(s),
                Ok(Err(e)) => {
                    self.cleanup(format!(
                        "could not reconnect to {} to undo the restore: {e}; check it by hand (see the restore log)",
                        spec.node_label
                    ));
                    return;
                }
                Err(_) => {
                    self.cleanup(format!(
                        "could not reconnect to {} to undo the restore (timeout); check it by hand",
                        spec.node_label
                    ));
                    return;
                }
            }
        }
        let state =
            match tokio::time::timeout(UNDO_TIMEOUT, target::read_state(self.client())).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    self.cleanup(format!(
                        "could not read the target to undo the restore: {e}"
                    ));
                    return;
                }
                Err(_) => {
                    self.cleanup("could not read the target to undo the restore (timeout)".into());
                    return;
                }
            };
        let force = self.force_drop;
        // Databases first (they may depend on the roles), then roles, then the rename back.
        let mut drop_dbs: Vec<String> = Vec::new();
        if let Some(before) = &self.dbs_before {
            drop_dbs.extend(state.databases.difference(before).cloned());
        } else if self.touched_db && state.databases.contains(&spec.target_dbname) {
            drop_dbs.push(spec.target_dbname.clone());
        }
        for db in drop_dbs {
            let r = tokio::time::timeout(
                UNDO_TIMEOUT,
                target::drop_database(self.client(), &db, force),
            )
            .await;
            self.report_undo(
                r,
                format!("dropped the partly restored database {db:?}"),
                format!("drop database {db:?}"),
            );
        }
        if let Some(before) = self.roles_before.clone() {
            let created: Vec<String> = if self.dbs_before.is_some() {
                state.roles.difference(&before).cloned().collect()
            } else {
                self.needed_roles
                    .iter()
                    .filter(|r| state.roles.contains(*r) && !before.contains(*r))
                    .cloned()
                    .collect()
            };
            for r in created {
                let res =
                    tokio::time::timeout(UNDO_TIMEOUT, target::drop_role(self.client(), &r)).await;
                self.report_undo(
                    res,
                    format!("dropped role {r:?} created by this restore"),
                    format!("drop role {r:?}"),
                );
            }
        }
        if let Some((orig, new)) = self.renamed.clone() {
            let r = tokio::time::timeout(
                UNDO_TIMEOUT,
                target::rename_database(self.client(), &new, &orig),
            )
            .await;
            self.report_undo(
                r,
                format!("renamed database {new:?} back to {orig:?}"),
                format!("rename database {new:?} back to {orig:?}"),
            );
            self.out.renamed_dbname = None;
        }
    }

    fn report_undo(
        &mut self,
        r: Result<Result<(), String>, tokio::time::error::Elapsed>,
        done: String,
        what: String,
    ) {
        match r {
            Ok(Ok(())) => self.cleanup(done),
            Ok(Err(e)) => self.cleanup(format!("could not {what}: {e}; do it by hand")),
            Err(_) => self.cleanup(format!("could not {what}: timeout; do it by hand")),
        }
    }

    fn cleanup(&mut self, line: String) {
        self.log.event(&format!("undo: {line}"));
        self.out.cleanup.push(line);
    }
}

/// Free bytes of the filesystem holding `dir` (or its nearest existing ancestor).
fn free_bytes(dir: &Path) -> Option<u64> {
    let mut p: PathBuf = dir.to_path_buf();
    loop {
        if p.exists() {
            let s = nix::sys::statvfs::statvfs(&p).ok()?;
            return Some(s.blocks_available() * s.fragment_size());
        }
        if !p.pop() {
            return None;
        }
    }
}
