//! One backup run, step by step: arguments, client, staging, connect, roles, database, dump
//! (+ compression and hashing, + row counts), hash, manifest, fsync, rename. Every step is
//! timed; any failure, cancel or timeout removes the staging directory and reports the step.

use std::collections::BTreeMap;
use std::fs::File;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use pgbackman_core::model::{BackupCode, NodeProfile};
use pgbackman_db::introspect::{self, NodeSession, TableRef};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::child::{self, ChildCommand, Ended, RunLog, Stdout};
use crate::client::{parse_major, server_major, tool_version};
use crate::node;
use crate::quote::{conninfo_value, shell_join};
use crate::set::{
    self, LOG_FILE, MANIFEST_FILE, MANIFEST_FORMAT, Manifest, ManifestCommand, PhaseTiming,
    StagingGuard, StreamError,
};
use crate::spec::{
    BackupOutcome, BackupSpec, DumpFormat, FileEntry, RowCountMode, RowCountSource, Status,
    TableRowCounts,
};
use crate::sqlgen;

/// File names inside a set.
pub const CUSTOM_DUMP_FILE: &str = "dump.pgdump.zst";
/// Directory-format dump inside a set.
pub const DIRECTORY_DUMP: &str = "dump.dir";
/// CLUSTER dump inside a set.
pub const CLUSTER_DUMP_FILE: &str = "cluster.sql.zst";
/// GLOBALS dump inside a set.
pub const GLOBALS_DUMP_FILE: &str = "globals.sql.zst";
/// Roles file inside a set.
pub const ROLES_FILE: &str = "roles.sql";
/// Database file inside a set.
pub const DATABASE_FILE: &str = "database.sql";

/// Environment variables never passed to a child: they would redirect a connection or carry a
/// password. PGAPPNAME, PGSSLMODE and PGPASSFILE are set from the spec instead.
pub(crate) const ENV_REMOVED: &[&str] = &[
    "PGPASSWORD",
    "PGHOST",
    "PGHOSTADDR",
    "PGPORT",
    "PGUSER",
    "PGDATABASE",
    "PGSERVICE",
    "PGSERVICEFILE",
    "PGOPTIONS",
    "PGTARGETSESSIONATTRS",
    "PGREQUIRESSL",
    "PGSSLMODE",
    "PGAPPNAME",
];

/// Exact row counts and the tables that could not be counted.
type Counted = (BTreeMap<String, i64>, Vec<String>);

/// The dump's program, its arguments after the connection options, and where its output goes.
struct DumpCommand {
    program: &'static str,
    args: Vec<String>,
    /// A file the child's stdout is streamed to through zstd at this level.
    stream_to: Option<(PathBuf, i32)>,
    /// A directory the child writes itself (directory format).
    dir_out: Option<PathBuf>,
}

/// Why a run stopped early (backups and restores alike).
pub(crate) enum Stop {
    Failed {
        step: String,
        exit_status: Option<i32>,
        message: String,
        stderr_tail: String,
    },
    Cancelled {
        step: String,
    },
}

pub(crate) fn fail(step: &str, message: impl Into<String>) -> Stop {
    Stop::Failed {
        step: step.into(),
        exit_status: None,
        message: message.into(),
        stderr_tail: String::new(),
    }
}

/// `HH:MM:SS` (hours may pass 24).
fn hms(d: Duration) -> String {
    let s = d.as_secs();
    format!("{:02}:{:02}:{:02}", s / 3600, (s / 60) % 60, s % 60)
}

/// Waits until `deadline`, or forever.
async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// What stops the steps of a run (a backup or a restore): its cancel token and its deadline.
pub(crate) struct Bounds<'a> {
    pub cancel: &'a CancellationToken,
    pub deadline: Option<Instant>,
    pub max_runtime: Option<Duration>,
}

impl Bounds<'_> {
    /// `fut`, unless the run is cancelled or out of time first.
    pub async fn guarded<T>(&self, step: &str, fut: impl Future<Output = T>) -> Result<T, Stop> {
        tokio::select! {
            biased;
            () = self.cancel.cancelled() => Err(Stop::Cancelled { step: step.into() }),
            () = until(self.deadline) => Err(self.timed_out(step)),
            v = fut => Ok(v),
        }
    }

    pub fn timed_out(&self, step: &str) -> Stop {
        let limit = self.max_runtime.unwrap_or_default();
        fail(step, format!("maximum runtime {} exceeded", hms(limit)))
    }

    /// Runs blocking work on the blocking pool, guarded; `abort` is raised when the guard fires.
    pub async fn blocking<T: Send + 'static>(
        &self,
        step: &str,
        abort: Arc<AtomicBool>,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Stop> {
        let handle = tokio::task::spawn_blocking(f);
        let r = self.guarded(step, handle).await;
        if r.is_err() {
            abort.store(true, Ordering::Relaxed);
        }
        r?.map_err(|e| fail(step, format!("internal error: {e}")))
    }
}

struct Run<'a> {
    spec: &'a BackupSpec,
    cancel: CancellationToken,
    deadline: Option<Instant>,
    started: DateTime<Utc>,
    log: Arc<RunLog>,
    timings: Vec<(String, f64)>,
    commands: Vec<ManifestCommand>,
    notes: Vec<String>,
    // What the outcome reports, filled as the steps go.
    client_version: Option<String>,
    server_version: Option<String>,
    server_version_num: Option<i32>,
    command: Vec<String>,
    database_size: Option<i64>,
    role_list: Vec<String>,
    role_passwords: String,
    row_counts: Option<TableRowCounts>,
    dump_file: Option<String>,
    /// Files written before the dump (roles.sql, database.sql).
    written: Vec<FileEntry>,
}

/// Runs one backup. Never fails: the outcome says how it ended. See the crate documentation for
/// the steps and the guarantees (nothing partial survives; no child outlives the run, also
/// when this future is dropped).
///
/// `progress` is called with the number of bytes of the dump written so far (compressed bytes
/// in the file for custom format and CLUSTER/GLOBALS, the size of the dump directory for
/// directory format), a few times a second while the dump runs.
pub async fn run_backup(
    spec: &BackupSpec,
    cancel: CancellationToken,
    progress: &(dyn Fn(u64) + Sync),
) -> BackupOutcome {
    let started = Utc::now();
    let deadline = spec.max_runtime.map(|d| Instant::now() + d);
    let mut run = Run {
        spec,
        cancel,
        deadline,
        started,
        log: Arc::new(RunLog::new(None)),
        timings: Vec::new(),
        commands: Vec::new(),
        notes: Vec::new(),
        client_version: None,
        server_version: None,
        server_version_num: None,
        command: Vec::new(),
        database_size: None,
        role_list: Vec::new(),
        role_passwords: String::new(),
        row_counts: None,
        dump_file: None,
        written: Vec::new(),
    };
    let staging = spec.staging_root.join(spec.job_id.to_string());
    let mut guard: Option<StagingGuard> = None;
    tracing::info!(job_id = spec.job_id, code = %spec.code, db = %spec.dbname, node = %spec.node_label, "backup started");
    let result = run.execute(&staging, &mut guard, progress).await;
    let (status, files) = match result {
        Ok(files) => (Status::Succeeded, files),
        Err(stop) => {
            if let Some(g) = guard.as_mut()
                && let Err(e) = g.remove()
            {
                tracing::error!(
                    job_id = spec.job_id,
                    "cannot remove {}: {e}",
                    staging.display()
                );
            }
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
            (status, Vec::new())
        }
    };
    // Levels 1 and 2 on the set in place (crate::verify): a set that cannot be read back is
    // known now, not at restore time.
    let verification = if status.is_success() {
        let t = std::time::Instant::now();
        let v =
            crate::verify::verify_levels(&spec.final_dir, &spec.bin_dir, None, &run.cancel).await;
        run.timed("verify", t);
        v
    } else {
        None
    };
    match &status {
        Status::Succeeded => {
            tracing::info!(job_id = spec.job_id, dir = %spec.final_dir.display(), "backup succeeded")
        }
        Status::Failed { step, message, .. } => {
            tracing::warn!(job_id = spec.job_id, step, message, "backup failed")
        }
        Status::Cancelled { reason } => {
            tracing::warn!(job_id = spec.job_id, reason, "backup cancelled")
        }
    }
    let succeeded = status.is_success();
    BackupOutcome {
        job_id: spec.job_id,
        started,
        finished: Utc::now(),
        backup_dir: succeeded.then(|| spec.final_dir.clone()),
        total_size: files.iter().map(|f| f.size).sum(),
        manifest_file: succeeded.then(|| MANIFEST_FILE.to_string()),
        dump_file: if succeeded { run.dump_file } else { None },
        files,
        status,
        role_list: run.role_list,
        client_version: run.client_version,
        server_version: run.server_version,
        server_version_num: run.server_version_num,
        command: run.command,
        phase_timings: run.timings,
        database_size: run.database_size,
        table_row_counts: if succeeded { run.row_counts } else { None },
        verification,
    }
}

impl Run<'_> {
    /// Races `fut` against the cancellation token and the deadline.
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
        self.timings
            .push((phase.to_string(), since.elapsed().as_secs_f64()));
    }

    fn dump_step(&self) -> &'static str {
        if self.spec.code.is_cluster_wide() {
            "pg_dumpall"
        } else {
            "pg_dump"
        }
    }

    async fn execute(
        &mut self,
        staging: &Path,
        guard: &mut Option<StagingGuard>,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<Vec<FileEntry>, Stop> {
        let spec = self.spec;
        let db_code = !spec.code.is_cluster_wide();
        self.check_arguments()?;
        if self.cancel.is_cancelled() {
            return Err(Stop::Cancelled {
                step: "arguments".into(),
            });
        }

        // client
        let t = std::time::Instant::now();
        let program = self.dump_step();
        let bin_dir = spec.bin_dir.clone();
        let version = self
            .blocking("client", Arc::default(), move || {
                tool_version(&bin_dir, program)
            })
            .await?
            .map_err(|e| fail("client", e.to_string()))?;
        let client_major = parse_major(&version).unwrap_or(0);
        self.client_version = Some(version);
        self.timed("client", t);

        // staging
        let t = std::time::Instant::now();
        self.prepare_staging(staging, guard)?;
        self.timed("staging", t);
        self.log.event(&format!(
            "pgbackman {} job {} {} of {} on {}",
            env!("CARGO_PKG_VERSION"),
            spec.job_id,
            spec.code,
            if db_code {
                format!("database {:?}", spec.dbname)
            } else {
                "the cluster".into()
            },
            spec.node_label
        ));
        self.log.event(&format!(
            "client: {}",
            self.client_version.as_deref().unwrap_or("")
        ));

        // connect
        let t = std::time::Instant::now();
        let connect_db = if db_code {
            spec.dbname.as_str()
        } else {
            spec.node.admin_dbname.as_str()
        };
        let (session, warnings) = self
            .guarded(
                "connect",
                node::connect(
                    &spec.node,
                    connect_db,
                    &spec.application_name,
                    spec.lock_wait_timeout,
                ),
            )
            .await?
            .map_err(|m| {
                fail(
                    "connect",
                    format!(
                        "cannot connect to database {connect_db:?} on {}: {m}",
                        spec.node_label
                    ),
                )
            })?;
        for w in warnings {
            self.log.event(&format!("connect: {w}"));
            self.notes.push(w);
        }
        let facts = self
            .guarded(
                "connect",
                session.bounded(
                    "reading its version",
                    introspect::server_facts(&session.client),
                ),
            )
            .await?
            .map_err(|m| fail("connect", m))?;
        self.log.event(&format!(
            "connected to {}: PostgreSQL {} ({})",
            spec.node_label, facts.version, facts.version_num
        ));
        self.server_version = Some(facts.version.clone());
        self.server_version_num = Some(facts.version_num);
        let smajor = server_major(facts.version_num);
        if client_major < smajor {
            return Err(fail(
                "client",
                format!(
                    "{program} {client_major} cannot dump PostgreSQL {smajor} on {}: use the client tools of major {smajor} or newer",
                    spec.node_label
                ),
            ));
        }
        if spec.code != BackupCode::Globals {
            let size_of = if db_code {
                Some(spec.dbname.as_str())
            } else {
                None
            };
            match self
                .guarded(
                    "connect",
                    session.bounded(
                        "reading the database size",
                        introspect::database_size(&session.client, size_of),
                    ),
                )
                .await?
            {
                Ok(size) => self.database_size = Some(size),
                Err(m) => {
                    self.log.event(&format!("database size unknown: {m}"));
                    self.notes.push(format!("database size unknown: {m}"));
                }
            }
        }
        self.timed("connect", t);

        if db_code {
            self.capture_roles_and_database(&session, staging, &facts.version)
                .await?;
        }

        // dump (timed inside: the dump, then the hash of a directory-format dump)
        let files = self.dump(&session, staging, client_major, progress).await?;
        drop(session);

        // manifest (the log is closed first: it is part of the set)
        let t = std::time::Instant::now();
        let mut files = files;
        files.append(&mut self.written);
        self.log.event("dump complete; writing the manifest");
        let log = Arc::clone(&self.log);
        let log_path = staging.join(LOG_FILE);
        let abort = Arc::new(AtomicBool::new(false));
        let a = Arc::clone(&abort);
        let log_entry = self
            .blocking("write", abort, move || {
                log.close()?;
                let (size, sha256) = set::hash_file(&log_path, &a)?;
                Ok::<_, std::io::Error>(FileEntry {
                    name: LOG_FILE.into(),
                    size,
                    sha256,
                })
            })
            .await?
            .map_err(|e| {
                fail(
                    "write",
                    format!("{}: {e}", staging.join(LOG_FILE).display()),
                )
            })?;
        files.push(log_entry);
        files.sort_by(|a, b| a.name.cmp(&b.name));
        self.timed("manifest", t);
        let manifest = self.manifest(&files, client_major, &facts);
        let text =
            serde_json::to_vec_pretty(&manifest).map_err(|e| fail("manifest", e.to_string()))?;
        let dir = staging.to_path_buf();
        let manifest_entry = self
            .blocking("manifest", Arc::default(), move || {
                set::write_private_file(&dir, MANIFEST_FILE, &text)
            })
            .await?
            .map_err(|e| {
                fail(
                    "write",
                    format!("{}: {e}", staging.join(MANIFEST_FILE).display()),
                )
            })?;
        files.push(manifest_entry);

        // fsync (files were synced as they were closed; now the directory)
        let t = std::time::Instant::now();
        let dir = staging.to_path_buf();
        self.blocking("fsync", Arc::default(), move || set::fsync_dir(&dir))
            .await?
            .map_err(|e| fail("fsync", format!("{}: {e}", staging.display())))?;
        self.timed("fsync", t);

        // rename
        let t = std::time::Instant::now();
        let (from, to, root) = (
            staging.to_path_buf(),
            spec.final_dir.clone(),
            spec.staging_root.clone(),
        );
        // Not raced against cancel or the deadline: once started, the rename's outcome is
        // the run's outcome. A set whose rename is not durable is removed again, so that a set
        // in place always means success.
        let result = tokio::task::spawn_blocking(move || {
            if let Some(parent) = to.parent() {
                set::create_private_dir_all(parent).map_err(|e| ("rename", e))?;
            }
            set::rename_no_replace(&from, &to).map_err(|e| ("rename", e))?;
            let synced = to
                .parent()
                .map_or(Ok(()), set::fsync_dir)
                .and_then(|()| set::fsync_dir(&root));
            if let Err(e) = synced {
                let _ = std::fs::remove_dir_all(&to);
                return Err(("fsync", e));
            }
            Ok(())
        })
        .await
        .unwrap_or_else(|e| {
            Err((
                "rename",
                std::io::Error::other(format!("internal error: {e}")),
            ))
        });
        if let Err((step, e)) = result {
            let hint = if e.raw_os_error() == Some(18) {
                " (the staging directory must be on the same filesystem as the backups)"
            } else {
                ""
            };
            return Err(fail(
                step,
                format!(
                    "cannot rename {} to {}: {e}{hint}",
                    staging.display(),
                    spec.final_dir.display()
                ),
            ));
        }
        if let Some(g) = guard.as_mut() {
            g.disarm();
        }
        self.timed("rename", t);
        Ok(files)
    }

    /// Extra arguments are checked again (defence in depth: they reach pg_dump's argv) and the
    /// spec must make sense.
    fn check_arguments(&self) -> Result<(), Stop> {
        let spec = self.spec;
        let step = "arguments";
        if spec.extra_args.iter().any(|a| a == "--") {
            return Err(fail(step, "extra parameters must not contain \"--\""));
        }
        match pgbackman_core::params::check_extra_dump_parameters(&shell_join(&spec.extra_args)) {
            Ok(words) if words == spec.extra_args => {}
            Ok(_) => return Err(fail(step, "extra parameters do not survive re-splitting")),
            Err(e) => return Err(fail(step, e.to_string())),
        }
        if !spec.code.is_cluster_wide() && spec.dbname.is_empty() {
            return Err(fail(
                step,
                format!("backup code {} needs a database name", spec.code),
            ));
        }
        if spec.code.is_cluster_wide() && spec.node.admin_dbname.is_empty() {
            return Err(fail(step, "the node's admin database is empty"));
        }
        match spec.format {
            DumpFormat::Custom { zstd_level } => {
                if !zstd::compression_level_range().contains(&zstd_level) {
                    return Err(fail(
                        step,
                        format!(
                            "zstd level {zstd_level} is outside {} to {}",
                            zstd::compression_level_range().start(),
                            zstd::compression_level_range().end()
                        ),
                    ));
                }
            }
            DumpFormat::Directory { jobs } => {
                if jobs == 0 {
                    return Err(fail(step, "directory format needs at least 1 job"));
                }
            }
        }
        if spec.final_dir.starts_with(&spec.staging_root) {
            return Err(fail(
                step,
                "the final directory must not be inside the staging area",
            ));
        }
        Ok(())
    }

    fn prepare_staging(
        &mut self,
        staging: &Path,
        guard: &mut Option<StagingGuard>,
    ) -> Result<(), Stop> {
        let step = "staging";
        let io = |what: &str, p: &Path, e: std::io::Error| {
            fail(step, format!("{what} {}: {e}", p.display()))
        };
        if std::fs::symlink_metadata(&self.spec.final_dir).is_ok() {
            return Err(fail(
                step,
                format!("{} already exists", self.spec.final_dir.display()),
            ));
        }
        set::create_private_dir_all(&self.spec.staging_root)
            .map_err(|e| io("cannot create", &self.spec.staging_root, e))?;
        if std::fs::symlink_metadata(staging).is_ok() {
            // Leftover of an earlier attempt of this job.
            std::fs::remove_dir_all(staging).map_err(|e| io("cannot remove", staging, e))?;
        }
        set::create_private_dir(staging).map_err(|e| io("cannot create", staging, e))?;
        *guard = Some(StagingGuard::new(staging.to_path_buf()));
        let log_path = staging.join(LOG_FILE);
        let file =
            set::create_private_file(&log_path).map_err(|e| io("cannot create", &log_path, e))?;
        self.log = Arc::new(RunLog::new(Some(file)));
        Ok(())
    }

    async fn capture_roles_and_database(
        &mut self,
        session: &NodeSession,
        staging: &Path,
        server_version: &str,
    ) -> Result<(), Stop> {
        let spec = self.spec;
        let captured = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let header = sqlgen::Header {
            dbname: &spec.dbname,
            node_label: &spec.node_label,
            server_version,
            captured: &captured,
        };
        let t = std::time::Instant::now();
        let with_passwords = spec.profile == NodeProfile::Standard;
        let roles = self
            .guarded(
                "roles",
                session.bounded(
                    "reading the roles the database needs",
                    introspect::capture_roles(&session.client, &spec.dbname, with_passwords),
                ),
            )
            .await?
            .map_err(|m| {
                fail(
                    "roles",
                    format!("reading the roles of {:?}: {m}", spec.dbname),
                )
            })?;
        self.role_list = roles.roles.iter().map(|r| r.name.clone()).collect();
        self.role_passwords = match &roles.passwords_missing {
            None => "included".into(),
            Some(why) => format!("not included: {why}"),
        };
        self.log.event(&format!(
            "roles: {} role(s), {} membership(s), passwords {}",
            roles.roles.len(),
            roles.memberships.len(),
            self.role_passwords
        ));
        let text = sqlgen::roles_sql(&roles, &header);
        self.write_small(staging, ROLES_FILE, text.into_bytes())
            .await?;
        self.timed("roles", t);

        let t = std::time::Instant::now();
        let db = self
            .guarded(
                "database",
                session.bounded(
                    "reading the database's settings and grants",
                    introspect::capture_database(&session.client, &spec.dbname),
                ),
            )
            .await?
            .map_err(|m| {
                fail(
                    "database",
                    format!("reading the definition of {:?}: {m}", spec.dbname),
                )
            })?;
        let text = sqlgen::database_sql(&db, &header);
        self.write_small(staging, DATABASE_FILE, text.into_bytes())
            .await?;
        self.log.event(&format!(
            "database: owner {:?}, {} setting(s), {} role setting(s)",
            db.owner,
            db.settings.len(),
            db.role_settings.len()
        ));
        self.timed("database", t);
        Ok(())
    }

    async fn write_small(
        &mut self,
        dir: &Path,
        name: &'static str,
        content: Vec<u8>,
    ) -> Result<(), Stop> {
        let d = dir.to_path_buf();
        let entry = self
            .blocking("write", Arc::default(), move || {
                set::write_private_file(&d, name, &content)
            })
            .await?
            .map_err(|e| fail("write", format!("{}: {e}", dir.join(name).display())))?;
        self.written.push(entry);
        Ok(())
    }

    /// The connection part of a child's argv and environment.
    fn child_command(&self, program: &str, args: Vec<String>, stdout: Stdout) -> ChildCommand {
        let spec = self.spec;
        let mut cmd = ChildCommand::for_node(
            &spec.node,
            &spec.bin_dir,
            program,
            &spec.application_name,
            args,
            stdout,
        );
        // A backend blocked on a lock notices a vanished pg_dump only when it next writes; with
        // this (PostgreSQL 14+) it checks every few seconds, so a killed dump leaves no backend.
        if self.server_version_num.is_some_and(|v| v >= 140000) {
            cmd.env.push((
                "PGOPTIONS".into(),
                "-c client_connection_check_interval=2000".into(),
            ));
        }
        cmd
    }

    /// argv (after the connection options) of the dump, where its output goes (a file streamed
    /// through zstd, or a directory written by pg_dump), and the program.
    fn dump_arguments(
        &mut self,
        staging: &Path,
        client_major: u32,
        snapshot: Option<&str>,
    ) -> DumpCommand {
        let spec = self.spec;
        let mut args: Vec<String> = Vec::new();
        let mut stream_to: Option<(PathBuf, i32)> = None;
        let mut dir_out: Option<PathBuf> = None;
        let lock_wait = spec
            .lock_wait_timeout
            .map(|d| format!("--lock-wait-timeout={}", d.as_millis().max(1)));
        let program = match spec.code {
            BackupCode::Full | BackupCode::Schema | BackupCode::Data => {
                match spec.format {
                    DumpFormat::Custom { zstd_level } => {
                        args.extend(["--format=custom".into(), "--compress=0".into()]);
                        stream_to = Some((staging.join(CUSTOM_DUMP_FILE), zstd_level));
                        self.dump_file = Some(CUSTOM_DUMP_FILE.into());
                    }
                    DumpFormat::Directory { jobs } => {
                        let out = staging.join(DIRECTORY_DUMP);
                        args.extend([
                            "--format=directory".into(),
                            format!("--jobs={jobs}"),
                            if client_major >= 16 {
                                "--compress=zstd".into()
                            } else {
                                "--compress=5".into()
                            },
                            format!("--file={}", out.display()),
                        ]);
                        dir_out = Some(out);
                        self.dump_file = Some(DIRECTORY_DUMP.into());
                    }
                }
                match spec.code {
                    BackupCode::Schema => args.push("--schema-only".into()),
                    BackupCode::Data => args.push("--data-only".into()),
                    _ => {}
                }
                args.extend(lock_wait.clone());
                if let Some(id) = snapshot {
                    args.push(format!("--snapshot={id}"));
                }
                args.push("--verbose".into());
                args.extend(spec.extra_args.iter().cloned());
                args.push(format!("--dbname=dbname={}", conninfo_value(&spec.dbname)));
                "pg_dump"
            }
            BackupCode::Cluster | BackupCode::Globals => {
                args.push(format!(
                    "--database=dbname={}",
                    conninfo_value(&spec.node.admin_dbname)
                ));
                if spec.code == BackupCode::Globals {
                    args.push("--globals-only".into());
                }
                if spec.profile == NodeProfile::Managed {
                    args.push("--no-role-passwords".into());
                }
                args.extend(lock_wait.clone());
                args.push("--verbose".into());
                args.extend(spec.extra_args.iter().cloned());
                let name = if spec.code == BackupCode::Globals {
                    GLOBALS_DUMP_FILE
                } else {
                    CLUSTER_DUMP_FILE
                };
                let level = match spec.format {
                    DumpFormat::Custom { zstd_level } => zstd_level,
                    DumpFormat::Directory { .. } => 3,
                };
                stream_to = Some((staging.join(name), level));
                self.dump_file = Some(name.into());
                "pg_dumpall"
            }
        };
        DumpCommand {
            program,
            args,
            stream_to,
            dir_out,
        }
    }

    /// The dump step: the child, its output (streamed through zstd, or a directory hashed
    /// afterwards) and, for FULL/DATA, the row counts in the dump's snapshot.
    async fn dump(
        &mut self,
        session: &NodeSession,
        staging: &Path,
        client_major: u32,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<Vec<FileEntry>, Stop> {
        let spec = self.spec;
        let step = self.dump_step();
        let started = std::time::Instant::now();
        // Row counts: tables listed (and, for exact counts, the snapshot exported) first.
        let mut snapshot = None;
        let mut tables: Vec<TableRef> = Vec::new();
        let counted_code = matches!(spec.code, BackupCode::Full | BackupCode::Data);
        let mut count_mode = if counted_code {
            RowCountMode::default()
        } else {
            RowCountMode::Off
        };
        if count_mode == RowCountMode::Exact
            && spec
                .extra_args
                .iter()
                .any(|a| a.starts_with("--serializable-deferrable") || a.starts_with("--snapshot"))
        {
            self.notes.push(
                "row counts are estimates: --serializable-deferrable or --snapshot given".into(),
            );
            count_mode = RowCountMode::Estimate;
        }
        if count_mode == RowCountMode::Exact {
            match self
                .guarded(
                    step,
                    session.bounded(
                        "exporting a snapshot",
                        introspect::export_snapshot(&session.client),
                    ),
                )
                .await?
            {
                Ok(id) => snapshot = Some(id),
                Err(m) => {
                    let note = format!("row counts are estimates: cannot export a snapshot: {m}");
                    self.log.event(&note);
                    self.notes.push(note);
                    count_mode = RowCountMode::Estimate;
                }
            }
        }
        if count_mode != RowCountMode::Off {
            match self
                .guarded(
                    step,
                    session.bounded(
                        "listing the tables",
                        introspect::list_tables(&session.client),
                    ),
                )
                .await?
            {
                Ok(t) => tables = t,
                Err(m) => {
                    let note = format!("no row counts: cannot list the tables: {m}");
                    self.log.event(&note);
                    self.notes.push(note);
                    count_mode = RowCountMode::Off;
                }
            }
        }

        let DumpCommand {
            program,
            args,
            stream_to,
            dir_out,
        } = self.dump_arguments(staging, client_major, snapshot.as_deref());
        let stdout = if stream_to.is_some() {
            Stdout::Pipe
        } else {
            Stdout::Null
        };
        let cmd = self.child_command(program, args, stdout);
        let argv = cmd.argv();
        self.command = argv.clone();
        self.log.event(&format!(
            "step {step}: {}",
            serde_json::to_string(&argv).unwrap_or_default()
        ));

        let (mut sup, child_stdout) = child::spawn(&cmd, &self.log)
            .map_err(|e| fail(step, format!("cannot start {}: {e}", cmd.program.display())))?;
        let written = Arc::new(AtomicU64::new(0));
        let writer = match (&stream_to, child_stdout) {
            (Some((dest, level)), Some(out)) => {
                let fd = out
                    .into_owned_fd()
                    .map_err(|e| fail(step, format!("pipe: {e}")))?;
                // pg_dump writes its archive 4 KiB at a time; through the default 64 KiB pipe
                // both sides wake each other every few writes. 1 MiB (the unprivileged maximum
                // by default) lets each side run longer; best effort, the default still works.
                let _ = nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_SETPIPE_SZ(1 << 20));
                let input = File::from(fd);
                let (dest, level, w) = (dest.clone(), *level, Arc::clone(&written));
                Some(tokio::task::spawn_blocking(move || {
                    set::compress_stream(input, &dest, level, w)
                }))
            }
            _ => None,
        };

        // Supervise the child while the rows are counted in the same snapshot.
        let mut last = 0u64;
        let mut last_walk = std::time::Instant::now();
        let dir_for_tick = dir_out.clone();
        let written_tick = Arc::clone(&written);
        let mut tick = move || {
            let now = match &dir_for_tick {
                Some(d) => {
                    if last_walk.elapsed() < Duration::from_secs(1) {
                        return;
                    }
                    last_walk = std::time::Instant::now();
                    set::tree_size(d)
                }
                None => written_tick.load(Ordering::Relaxed),
            };
            if now != last {
                last = now;
                progress(now);
            }
        };
        let client = &session.client;
        let count_fut = async {
            if snapshot.is_some() {
                let keys: Vec<String> = tables
                    .iter()
                    .map(|t| node::table_key(&t.schema, &t.name))
                    .collect();
                Some(introspect::count_rows(client, &keys).await)
            } else {
                None
            }
        };
        tokio::pin!(count_fut);
        let mut counted: Option<Option<Counted>> = None;
        // A writer that fails (disk full) stops the child at once rather than when it next writes.
        let stop_child = self.cancel.child_token();
        let writer_fut = async {
            match writer {
                Some(h) => Some(h.await),
                None => None,
            }
        };
        tokio::pin!(writer_fut);
        let mut written_result = None;
        let ended = {
            let wait_fut = sup.wait(
                &stop_child,
                self.deadline,
                Duration::from_millis(200),
                &mut tick,
            );
            tokio::pin!(wait_fut);
            loop {
                tokio::select! {
                    e = &mut wait_fut => break e,
                    c = &mut count_fut, if counted.is_none() => counted = Some(c),
                    w = &mut writer_fut, if written_result.is_none() => {
                        if matches!(w, Some(Ok(Err(_))) | Some(Err(_))) {
                            stop_child.cancel();
                        }
                        written_result = Some(w);
                    }
                }
            }
        };
        let stderr_tail = sup.stderr_tail().await;
        let written_result = match written_result {
            Some(w) => w,
            None => writer_fut.await,
        };
        let writer_result = match written_result {
            Some(r) => Some(r.map_err(|e| fail("compress", format!("internal error: {e}")))?),
            None => None,
        };
        let in_flight = snapshot.is_some() && counted.is_none();
        let stop_counting = || async {
            if in_flight {
                let _ = session.cancel_query().await;
            }
        };
        // The writer's own failure comes first: the child was stopped because of it.
        let stream_entry = match writer_result {
            Some(Err(e)) => {
                stop_counting().await;
                return Err(match e {
                    StreamError::Write(e) => fail(
                        "write",
                        format!(
                            "writing {}: {e}",
                            stream_to
                                .as_ref()
                                .map(|s| s.0.display().to_string())
                                .unwrap_or_default()
                        ),
                    ),
                    StreamError::Compress(e) => fail("compress", format!("zstd: {e}")),
                    StreamError::Read(e) => Stop::Failed {
                        step: step.into(),
                        exit_status: None,
                        message: format!("reading the output of {program}: {e}"),
                        stderr_tail,
                    },
                });
            }
            Some(Ok((size, sha256))) => Some((size, sha256)),
            None => None,
        };
        let status = match ended {
            Ok(Ended::Exited(status)) => status,
            Ok(Ended::Cancelled) => {
                stop_counting().await;
                self.log.event(&format!("{step}: cancelled"));
                return Err(Stop::Cancelled { step: step.into() });
            }
            Ok(Ended::TimedOut) => {
                stop_counting().await;
                self.log.event(&format!("{step}: maximum runtime exceeded"));
                return Err(match self.timed_out(step) {
                    Stop::Failed {
                        step,
                        exit_status,
                        message,
                        ..
                    } => Stop::Failed {
                        step,
                        exit_status,
                        message,
                        stderr_tail,
                    },
                    other => other,
                });
            }
            Err(e) => {
                stop_counting().await;
                return Err(fail(step, format!("waiting for {program}: {e}")));
            }
        };
        self.commands.push(ManifestCommand {
            step: step.into(),
            argv: argv.clone(),
            exit_status: status.code(),
        });
        self.log.event(&format!("{step}: {status}"));
        if !status.success() {
            stop_counting().await;
            let message = match status.code() {
                Some(c) => format!("{program} exited with status {c}"),
                None => format!("{program} ended abnormally ({status})"),
            };
            return Err(Stop::Failed {
                step: step.into(),
                exit_status: status.code(),
                message,
                stderr_tail,
            });
        }
        if let Some(err) = self.log.take_error() {
            return Err(fail(
                "write",
                format!("{}: {err}", staging.join(LOG_FILE).display()),
            ));
        }

        // Row counts not finished yet: wait (bounded by cancel and deadline).
        if snapshot.is_some() && counted.is_none() {
            match self.guarded("row_counts", &mut count_fut).await {
                Ok(c) => counted = Some(c),
                Err(stop) => {
                    let _ = session.cancel_query().await;
                    return Err(stop);
                }
            }
        }
        if snapshot.is_some() {
            let _ = introspect::end_snapshot(client).await;
        }
        match (count_mode, counted.flatten()) {
            (RowCountMode::Exact, Some((tables_counted, notes))) => {
                for n in notes {
                    self.notes.push(format!("row count skipped: {n}"));
                }
                self.row_counts = Some(TableRowCounts {
                    source: RowCountSource::Snapshot,
                    tables: tables_counted,
                });
            }
            (RowCountMode::Estimate, _) => {
                self.row_counts = Some(TableRowCounts {
                    source: RowCountSource::Estimate,
                    tables: tables
                        .iter()
                        .map(|t| (node::table_key(&t.schema, &t.name), t.estimate))
                        .collect(),
                });
            }
            _ => {}
        }

        self.timed(step, started);

        // Files of the dump.
        let mut files = Vec::new();
        if let (Some((dest, _)), Some((size, sha256))) = (&stream_to, stream_entry) {
            let name = dest
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            progress(size);
            files.push(FileEntry { name, size, sha256 });
        }
        if let Some(dir) = dir_out {
            let t = std::time::Instant::now();
            let abort = Arc::new(AtomicBool::new(false));
            let (base, a) = (staging.to_path_buf(), Arc::clone(&abort));
            let d = dir.clone();
            let entries = self
                .blocking("hash", abort, move || set::hash_tree(&base, &d, &a))
                .await?
                .map_err(|e| fail("hash", format!("{}: {e}", dir.display())))?;
            progress(entries.iter().map(|e| e.size).sum());
            files.extend(entries);
            self.timed("hash", t);
        }
        Ok(files)
    }

    fn manifest(
        &self,
        files: &[FileEntry],
        client_major: u32,
        facts: &introspect::ServerFacts,
    ) -> Manifest {
        let spec = self.spec;
        let dump_format = match (spec.code.is_cluster_wide(), spec.format) {
            (true, f) => serde_json::json!({
                "kind": "sql",
                "compression": "zstd",
                "level": match f { DumpFormat::Custom { zstd_level } => zstd_level, DumpFormat::Directory { .. } => 3 },
            }),
            (false, DumpFormat::Custom { zstd_level }) => serde_json::json!({
                "kind": "custom", "compression": "zstd", "level": zstd_level,
            }),
            (false, DumpFormat::Directory { jobs }) => serde_json::json!({
                "kind": "directory", "jobs": jobs,
                "compression": if client_major >= 16 { "zstd" } else { "gzip" },
            }),
        };
        Manifest {
            format: MANIFEST_FORMAT,
            pgbackman_version: env!("CARGO_PKG_VERSION").into(),
            job_id: spec.job_id,
            code: spec.code.to_string(),
            profile: spec.profile.to_string(),
            dbname: spec.dbname.clone(),
            node: spec.node_label.clone(),
            definition: spec.definition.clone(),
            dump_format,
            dump_file: self.dump_file.clone().unwrap_or_default(),
            server_version: facts.version.clone(),
            server_version_num: facts.version_num,
            client_version: self.client_version.clone().unwrap_or_default(),
            command: self.command.clone(),
            commands: self.commands.clone(),
            total_size: files.iter().map(|f| f.size).sum(),
            files: files.to_vec(),
            phase_timings: self
                .timings
                .iter()
                .map(|(p, s)| PhaseTiming {
                    phase: p.clone(),
                    seconds: *s,
                })
                .collect(),
            role_list: self.role_list.clone(),
            role_passwords: if spec.code.is_cluster_wide() {
                match spec.profile {
                    NodeProfile::Standard => "included (pg_dumpall)".into(),
                    NodeProfile::Managed => "not included: --no-role-passwords".into(),
                }
            } else {
                self.role_passwords.clone()
            },
            database_size: self.database_size,
            table_row_counts: self.row_counts.clone(),
            notes: self.notes.clone(),
            started: self.started,
            finished: Utc::now(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hms_format() {
        assert_eq!(hms(Duration::from_secs(600)), "00:10:00");
        assert_eq!(hms(Duration::from_secs(1)), "00:00:01");
        assert_eq!(hms(Duration::from_secs(26 * 3600 + 61)), "26:01:01");
    }
}
