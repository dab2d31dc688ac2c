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

mod capture;
mod dump;
mod finish;
mod rows;
mod stop;

pub(crate) use stop::{Bounds, Stop, fail};

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
pub const ENV_REMOVED: &[&str] = &[
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
    /// See [`Manifest::role_name_bytes`].
    role_name_bytes: std::collections::BTreeMap<String, String>,
    role_passwords: String,
    row_counts: Option<TableRowCounts>,
    dump_file: Option<String>,
    /// Files written before the dump (roles.sql, database.sql).
    written: Vec<FileEntry>,
    /// The repository the set is streamed to, when not `final_dir` (crate::upload).
    target: Option<&'a crate::upload::StoreTarget>,
    /// The dump object's writer, finished once pg_dump exited 0.
    pending: crate::upload::PendingWriter,
    /// Keys uploaded so far: removed again if the run fails.
    uploaded: Vec<String>,
    /// The recipients of an encrypted set (crate::crypt), parsed by `check_arguments`.
    seal: Option<Arc<crate::crypt::Seal>>,
    /// The files of the set written encrypted.
    sealed_files: Vec<String>,
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
    run_backup_to(spec, None, cancel, progress).await
}

/// [`run_backup`], the set going to `target` (a repository) instead of `spec.final_dir` when
/// given: the dump streamed into the store, then the small files and the manifest (see
/// [`crate::upload`]). The outcome's `backup_dir` is then None; the set is at
/// `target.prefix`. A directory-format dump is written into staging first (pg_dump -Fd
/// writes files), each of its files then uploaded as an object.
pub async fn run_backup_to(
    spec: &BackupSpec,
    target: Option<&crate::upload::StoreTarget>,
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
        role_name_bytes: Default::default(),
        role_passwords: String::new(),
        row_counts: None,
        dump_file: None,
        written: Vec::new(),
        target,
        pending: Default::default(),
        uploaded: Vec::new(),
        seal: None,
        sealed_files: Vec::new(),
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
            if let Some(t) = target {
                // Nothing of a failed run stays in the repository (an unfinished upload is
                // aborted when its writer is dropped).
                run.pending.lock().await.take();
                crate::upload::remove(t, &run.uploaded).await;
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
    let verification = if let (true, Some(t)) = (status.is_success(), target) {
        // Against the repository: every object re-read (level 1), then the archive's table of
        // contents from the dump object (level 2).
        let t0 = std::time::Instant::now();
        let v = crate::verify::after_upload(t, &files, &spec.bin_dir, &run.cancel).await;
        run.timed("verify", t0);
        v
    } else if status.is_success() {
        // An encrypted set: level 1 only (the agent holds no identity; see crate::verify).
        let t = std::time::Instant::now();
        let v = crate::verify::verify_after_backup(
            &spec.final_dir,
            &spec.bin_dir,
            files.clone(),
            &run.cancel,
        )
        .await;
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
        backup_dir: (succeeded && target.is_none()).then(|| spec.final_dir.clone()),
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
        object_prefix: target.filter(|_| succeeded).map(|t| t.prefix.clone()),
    }
}

/// Renames a finished staging directory to its final place (parents created), then fsyncs the
/// parent and the staging root. Not raced against cancel or the deadline: once started, the
/// rename's outcome is the run's outcome. A set whose rename is not durable is removed again, so
/// that a set in place always means success.
pub(crate) async fn place_set(from: PathBuf, to: PathBuf, root: PathBuf) -> Result<(), Stop> {
    let (f, t) = (from.clone(), to.clone());
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
                f.display(),
                t.display()
            ),
        ));
    }
    Ok(())
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
        let log_entry = self.bounds().close_log(&self.log, staging).await?;
        files.push(log_entry);
        files.sort_by(|a, b| a.name.cmp(&b.name));
        self.timed("manifest", t);
        let manifest = self.manifest(&files, client_major, &facts);
        let manifest_entry = self.bounds().write_manifest(staging, &manifest).await?;
        files.push(manifest_entry);

        // fsync (files were synced as they were closed; now the directory)
        let t = std::time::Instant::now();
        self.bounds().fsync_staging(staging).await?;
        self.timed("fsync", t);

        if let Some(target) = self.target {
            // upload: the small files, the manifest last; then staging goes.
            let t = std::time::Instant::now();
            let mut names: Vec<String> = files
                .iter()
                .map(|f| f.name.clone())
                .filter(|n| Some(n) != self.dump_file.as_ref() && n != MANIFEST_FILE)
                .collect();
            names.push(MANIFEST_FILE.into());
            let mut uploaded = std::mem::take(&mut self.uploaded);
            let r = self
                .guarded(
                    "upload",
                    crate::upload::put_files(target, staging, &names, &mut uploaded),
                )
                .await;
            self.uploaded = uploaded;
            r?.map_err(|e| fail("upload", e.to_string()))?;
            if let Some(g) = guard.as_mut()
                && let Err(e) = g.remove()
            {
                self.log
                    .event(&format!("cannot remove {}: {e}", staging.display()));
            }
            self.timed("upload", t);
            return Ok(files);
        }

        // rename
        let t = std::time::Instant::now();
        let (from, to, root) = (
            staging.to_path_buf(),
            spec.final_dir.clone(),
            spec.staging_root.clone(),
        );
        place_set(from, to, root).await?;
        if let Some(g) = guard.as_mut() {
            g.disarm();
        }
        self.timed("rename", t);
        Ok(files)
    }

    /// Extra arguments are checked again (defence in depth: they reach pg_dump's argv) and the
    /// spec must make sense.
    fn check_arguments(&mut self) -> Result<(), Stop> {
        let spec = self.spec;
        let step = "arguments";
        if let Some(e) = &spec.encryption {
            if !spec.code.is_cluster_wide() && matches!(spec.format, DumpFormat::Directory { .. }) {
                return Err(fail(
                    step,
                    "a directory-format dump cannot be encrypted (pg_dump writes its files itself): use the custom format for encrypted definitions",
                ));
            }
            self.seal = Some(Arc::new(
                crate::crypt::Seal::new(e).map_err(|m| fail(step, m))?,
            ));
        }
        if spec.code.is_physical() {
            return Err(fail(
                step,
                "a BASEBACKUP set is made by pg_basebackup (run_base_backup), not pg_dump",
            ));
        }
        // A directory-format dump to a repository: pg_dump -Fd writes its files into staging
        // (it cannot write to a pipe), then each one is uploaded as an object.
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
        if self.target.is_none() && std::fs::symlink_metadata(&self.spec.final_dir).is_ok() {
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
            format: if spec.encryption.is_some() {
                set::MANIFEST_FORMAT_ENCRYPTED
            } else {
                MANIFEST_FORMAT
            },
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
            role_name_bytes: self.role_name_bytes.clone(),
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
            encryption: spec
                .encryption
                .as_ref()
                .map(|e| crate::crypt::ManifestEncryption {
                    scheme: "age".into(),
                    recipients: e
                        .recipients
                        .iter()
                        .map(|r| crate::crypt::ManifestRecipient {
                            fingerprint: r.fingerprint.clone(),
                            name: r.name.clone(),
                        })
                        .collect(),
                    files: self.sealed_files.clone(),
                }),
        }
    }
}
