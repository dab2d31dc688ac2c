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
use super::source::{self, Source};
use super::{feed, journal};
#[path = "split.rs"]
mod split;

mod clients;
mod cluster;
mod database;
mod repository;
mod role_names;
mod undo;
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
use role_names::raw_role_names;

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
    /// CLUSTER/GLOBALS: the roles named in another encoding before the script (bytes → OID).
    raw_roles_before: Option<std::collections::BTreeMap<Vec<u8>, u32>>,
    dbs_before: Option<BTreeSet<String>>,
    needed_roles: Vec<String>,
    force_drop: bool,
    /// What the journal says may have changed (written before each change).
    changes: journal::Changes,
    /// Where the set's bytes are.
    source: Source,
    /// Where the set's small files are read by psql and pg_restore: the set's directory, or
    /// the staging directory they were fetched into from a repository.
    files_dir: PathBuf,
    /// The dump's manifest entry (once the manifest was read).
    dump_entry: Option<crate::spec::FileEntry>,
    /// An encrypted set (crate::crypt): the identities that read it, checked on every
    /// encrypted file before the target is touched. None: a plain set.
    ids: Option<Arc<crate::crypt::Identities>>,
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
    tracing::info!(job_id = spec.job_id, set = %x.source.label(), node = %spec.node_label, "restore started");
    let mut result = x.execute(&staging, &mut guard, progress).await;
    if let Err(stop) = result {
        result = Err(x.recheck_object(stop).await);
    }
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
            raw_roles_before: None,
            dbs_before: None,
            needed_roles: Vec::new(),
            force_drop: false,
            changes: journal::Changes::default(),
            source: Source::new(&spec.set_dir, spec.repository.as_ref()),
            files_dir: spec.set_dir.clone(),
            dump_entry: None,
            ids: None,
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

    /// The admin session (connected before the first statement).
    fn session(&self) -> &NodeSession {
        self.session
            .as_ref()
            .expect("connected before the first change")
    }

    /// One of the executor's own statements on the target (on the admin session): within
    /// `[nodes] statement_timeout` (cancelled on the server past it; the error names the target's
    /// address, `what` and the setting) and the run's cancel and deadline. psql and pg_restore
    /// are not bounded so: a restore may take hours.
    async fn on_target<T>(
        &self,
        step: &str,
        what: &str,
        fut: impl Future<Output = Result<T, String>>,
    ) -> Result<T, Stop> {
        self.guarded(step, self.session().bounded(what, fut))
            .await?
            .map_err(|e| fail(step, e))
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
        let src = self.source.clone();
        let m = match self
            .blocking("manifest", Arc::default(), move || src.read_manifest())
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
            self.source.label(),
            m.client_version,
            m.dbname,
            m.node,
            m.started.to_rfc3339()
        ));
        self.dump_entry = m.files.iter().find(|f| f.name == m.dump_file).cloned();
        self.timed("manifest", t);

        // identity: an encrypted set is readable by the given identities, or nothing happens
        if m.encryption.is_some() {
            let t = std::time::Instant::now();
            let (source, m2, files) = (self.source.clone(), m.clone(), spec.identity_files.clone());
            let ids = self
                .blocking("identity", Arc::default(), move || {
                    // Each encrypted file's header, read where the set is (a directory or its
                    // objects): only the header is read, so no checksum verdict here.
                    crate::crypt::identities_for_set_with(&m2, &files, &|name: &str| {
                        let entry = m2.files.iter().find(|f| f.name == name).ok_or_else(|| {
                            std::io::Error::new(
                                std::io::ErrorKind::NotFound,
                                format!("{name} is not in the manifest"),
                            )
                        })?;
                        source.open(entry)
                    })
                })
                .await?
                .map_err(|e| fail("identity", e))?;
            self.log.event(&format!(
                "the set is encrypted; the identities of {} read every encrypted file",
                spec.identity_files
                    .iter()
                    .map(|f| f.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
            self.ids = Some(Arc::new(ids));
            self.timed("identity", t);
        }

        // verify
        if self.source.repository().is_some() {
            // Every object present with its size, the small files fetched and checked; the
            // dump is checked as it streams.
            let t = std::time::Instant::now();
            self.fetch_from_repository(&m, staging, guard).await?;
            self.timed("verify", t);
        } else if spec.verify_checksums {
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
            .guarded(
                "connect",
                session.bounded(
                    "reading its roles and databases",
                    target::read_state(&session.client),
                ),
            )
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

    fn prepare_staging(
        &mut self,
        staging: &Path,
        guard: &mut Option<StagingGuard>,
    ) -> Result<(), Stop> {
        // Prepared once (a set from a repository has its small files fetched there first).
        if guard.is_some() {
            return Ok(());
        }
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
