//! A base backup (code BASEBACKUP, issue 11): `pg_basebackup -D - -Ft -X none|fetch
//! --manifest-checksums=SHA256` as a supervised child, its tar read in flight ([`tap`]: every
//! member hashed and checked against `backup_manifest`, the stream compressed with zstd and
//! hashed into `base.tar.zst`), `backup_manifest` and `backup_label` stored beside it, then
//! `backup.log`, `manifest.json`, fsync and rename like a logical set. Nodes with tablespaces
//! other than pg_default / pg_global are refused, naming them: `-D -` carries the main data
//! directory only.
//!
//! Whether the WAL from the start to the stop LSN is in the archive is the agent's question
//! (it asks the catalog's ledger): this crate never sees the catalog.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use pgbackman_core::model::{BackupCode, NodeProfile};
use pgbackman_core::wal::BackupLabel;
use pgbackman_db::introspect;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::child::{self, ChildCommand, Ended, RunLog, Stdout};
use crate::client::{parse_major, server_major, tool_version};
use crate::run::{Bounds, Stop, fail, place_set};
use crate::set::{
    self, LOG_FILE, MANIFEST_FILE, MANIFEST_FORMAT, Manifest, ManifestCommand, PhaseTiming,
    StagingGuard, StreamError,
};
use crate::spec::{BackupOutcome, FileEntry, NodeConn, Status};
use crate::verify::{Verification, VerifyState};

mod tap;

/// The tar of the data directory, through zstd.
pub const BASE_TAR_FILE: &str = "base.tar.zst";
/// pg_basebackup's manifest, as received.
pub const BACKUP_MANIFEST_FILE: &str = "backup_manifest";
/// The backup's `backup_label`, as received (also inside the tar).
pub const BACKUP_LABEL_FILE: &str = "backup_label";

/// Where the WAL a base backup needs comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WalMethod {
    /// `-X none`: the node's WAL archive holds it (the agent waits for it in the ledger).
    None,
    /// `-X fetch`: included in the tar (the node has no WAL archive on this server).
    Fetch,
}

impl WalMethod {
    fn as_str(self) -> &'static str {
        match self {
            WalMethod::None => "none",
            WalMethod::Fetch => "fetch",
        }
    }
}

/// What to back up, where to, and how.
#[derive(Debug, Clone)]
pub struct BaseBackupSpec {
    /// The job (names the staging directory).
    pub job_id: i64,
    /// Node profile (for the manifest).
    pub profile: NodeProfile,
    /// The node (a replication connection is made as its admin user).
    pub node: NodeConn,
    /// The node as people know it, for messages.
    pub node_label: String,
    /// Client programs (pg_basebackup of the node's major or newer).
    pub bin_dir: PathBuf,
    /// `--checkpoint`: `fast` or `spread`.
    pub checkpoint: String,
    /// `--max-rate`, as pg_basebackup reads it (`50M`, `1024k`, `20000`).
    pub max_rate: Option<String>,
    /// `-X none` or `-X fetch`.
    pub wal_method: WalMethod,
    /// zstd level of `base.tar.zst`.
    pub zstd_level: i32,
    /// Stop the backup after this long.
    pub max_runtime: Option<Duration>,
    /// `application_name` of its connections.
    pub application_name: String,
    /// Where sets are made (`<staging_root>/<job_id>/`), same filesystem as `final_dir`.
    pub staging_root: PathBuf,
    /// The set's directory once finished.
    pub final_dir: PathBuf,
    /// The definition as it was (into manifest.json).
    pub definition: serde_json::Value,
}

/// The physical facts of a finished base backup (the catalog's `base_backup` row).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseBackupFacts {
    /// The cluster's system identifier (u64, as text).
    pub system_identifier: String,
    /// `START TIMELINE` of backup_label.
    pub timeline: u32,
    /// `START WAL LOCATION`.
    pub start_lsn: String,
    /// End of the manifest's WAL range: the backup is consistent there.
    pub stop_lsn: String,
    /// The WAL file of the start.
    pub start_wal_file: String,
    /// When the backup started (backup_label's `START TIME` is the server's clock: kept as
    /// text in backup_label; this is the agent's).
    pub start_time: DateTime<Utc>,
    /// When pg_basebackup ended.
    pub stop_time: DateTime<Utc>,
    /// `wal_segment_size` in bytes.
    pub seg_size: i64,
    /// `none` or `fetch`.
    pub wal_method: WalMethod,
    /// Tablespaces besides pg_default / pg_global (always empty: such nodes are refused).
    pub tablespaces: Vec<String>,
    /// `PASSED`, `FAILED`, `NOT_CHECKED`.
    pub manifest_state: String,
    /// What failed or was not checked.
    pub manifest_detail: Option<String>,
    /// Members whose SHA-256 matched backup_manifest.
    pub files_checked: usize,
    /// Bytes of tar received (before zstd).
    pub tar_bytes: u64,
}

/// How a base backup ended: the outcome a logical backup has, and its physical facts once
/// pg_basebackup finished and its stream was read.
#[derive(Debug, Clone)]
pub struct BaseBackupOutcome {
    /// Status, files, timings, client and server versions (as for logical sets).
    pub outcome: BackupOutcome,
    /// Set when the tar was read to its end.
    pub facts: Option<BaseBackupFacts>,
}

/// Runs one base backup. Never fails: the outcome says how it ended. Nothing partial survives
/// (the staging directory goes on any failure) and no child outlives the run.
pub async fn run_base_backup(
    spec: &BaseBackupSpec,
    cancel: CancellationToken,
    progress: &(dyn Fn(u64) + Sync),
) -> BaseBackupOutcome {
    let started = Utc::now();
    let mut run = BaseRun {
        spec,
        bounds_deadline: spec.max_runtime.map(|d| Instant::now() + d),
        cancel,
        started,
        log: Arc::new(RunLog::new(None)),
        timings: Vec::new(),
        commands: Vec::new(),
        client_version: None,
        server_version: None,
        server_version_num: None,
        command: Vec::new(),
        facts: None,
    };
    let staging = spec.staging_root.join(spec.job_id.to_string());
    let mut guard: Option<StagingGuard> = None;
    tracing::info!(job_id = spec.job_id, node = %spec.node_label, "base backup started");
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
    let succeeded = status.is_success();
    // The in-flight check is the verification: every member against backup_manifest, every
    // stored byte hashed as written (level 1 reads the same hashes back later).
    let verification = succeeded.then_some(Verification {
        level: 1,
        state: VerifyState::Passed,
        error: None,
        toc_entries: None,
        seconds: 0.0,
    });
    match &status {
        Status::Succeeded => {
            tracing::info!(job_id = spec.job_id, dir = %spec.final_dir.display(), "base backup succeeded")
        }
        Status::Failed { step, message, .. } => {
            tracing::warn!(job_id = spec.job_id, step, message, "base backup failed")
        }
        Status::Cancelled { reason } => {
            tracing::warn!(job_id = spec.job_id, reason, "base backup cancelled")
        }
    }
    BaseBackupOutcome {
        outcome: BackupOutcome {
            job_id: spec.job_id,
            started,
            finished: Utc::now(),
            backup_dir: succeeded.then(|| spec.final_dir.clone()),
            total_size: files.iter().map(|f| f.size).sum(),
            manifest_file: succeeded.then(|| MANIFEST_FILE.to_string()),
            dump_file: succeeded.then(|| BASE_TAR_FILE.to_string()),
            files,
            status,
            role_list: Vec::new(),
            client_version: run.client_version,
            server_version: run.server_version,
            server_version_num: run.server_version_num,
            command: run.command,
            phase_timings: run.timings,
            database_size: None,
            table_row_counts: None,
            object_prefix: None,
            verification,
        },
        facts: run.facts,
    }
}

struct BaseRun<'a> {
    spec: &'a BaseBackupSpec,
    cancel: CancellationToken,
    bounds_deadline: Option<Instant>,
    started: DateTime<Utc>,
    log: Arc<RunLog>,
    timings: Vec<(String, f64)>,
    commands: Vec<ManifestCommand>,
    client_version: Option<String>,
    server_version: Option<String>,
    server_version_num: Option<i32>,
    command: Vec<String>,
    facts: Option<BaseBackupFacts>,
}

impl BaseRun<'_> {
    fn bounds(&self) -> Bounds<'_> {
        Bounds {
            cancel: &self.cancel,
            deadline: self.bounds_deadline,
            max_runtime: self.spec.max_runtime,
        }
    }

    fn timed(&mut self, phase: &str, since: std::time::Instant) {
        self.timings
            .push((phase.to_string(), since.elapsed().as_secs_f64()));
    }

    fn check_arguments(&self) -> Result<(), Stop> {
        let spec = self.spec;
        let step = "arguments";
        if !matches!(spec.checkpoint.as_str(), "fast" | "spread") {
            return Err(fail(
                step,
                format!(
                    "checkpoint {:?} is neither fast nor spread",
                    spec.checkpoint
                ),
            ));
        }
        if let Some(r) = &spec.max_rate {
            let digits = r.trim_end_matches(['k', 'M']);
            if digits.is_empty()
                || digits.len() > 7
                || !digits.bytes().all(|b| b.is_ascii_digit())
                || r.len() > digits.len() + 1
            {
                return Err(fail(
                    step,
                    format!("maximum rate {r:?} is not a transfer rate"),
                ));
            }
        }
        if !zstd::compression_level_range().contains(&spec.zstd_level) {
            return Err(fail(
                step,
                format!("zstd level {} is out of range", spec.zstd_level),
            ));
        }
        if spec.final_dir.starts_with(&spec.staging_root) {
            return Err(fail(
                step,
                "the final directory must not be inside the staging area",
            ));
        }
        Ok(())
    }

    async fn execute(
        &mut self,
        staging: &Path,
        guard: &mut Option<StagingGuard>,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<Vec<FileEntry>, Stop> {
        let spec = self.spec;
        self.check_arguments()?;

        // client
        let t = std::time::Instant::now();
        let bin_dir = spec.bin_dir.clone();
        let version = self
            .bounds()
            .blocking("client", Arc::default(), move || {
                tool_version(&bin_dir, "pg_basebackup")
            })
            .await?
            .map_err(|e| fail("client", e.to_string()))?;
        let client_major = parse_major(&version).unwrap_or(0);
        self.client_version = Some(version);
        self.timed("client", t);

        // connect: version, system identifier, segment size, tablespaces
        let t = std::time::Instant::now();
        let (session, _warnings) = self
            .bounds()
            .guarded(
                "connect",
                crate::node::connect(
                    &spec.node,
                    &spec.node.admin_dbname,
                    &spec.application_name,
                    None,
                ),
            )
            .await?
            .map_err(|m| {
                fail(
                    "connect",
                    format!("cannot connect to {}: {m}", spec.node_label),
                )
            })?;
        let facts = self
            .bounds()
            .guarded(
                "connect",
                session.bounded(
                    "reading its version",
                    introspect::server_facts(&session.client),
                ),
            )
            .await?
            .map_err(|m| fail("connect", m))?;
        let physical = self
            .bounds()
            .guarded(
                "connect",
                session.bounded(
                    "reading its system identifier and tablespaces",
                    introspect::physical_facts(&session.client),
                ),
            )
            .await?
            .map_err(|m| fail("connect", format!("{} on {}", m, spec.node_label)))?;
        drop(session);
        self.server_version = Some(facts.version.clone());
        self.server_version_num = Some(facts.version_num);
        let smajor = server_major(facts.version_num);
        if client_major < smajor {
            return Err(fail(
                "client",
                format!(
                    "pg_basebackup {client_major} cannot back up PostgreSQL {smajor} on {}: use the client tools of major {smajor} or newer",
                    spec.node_label
                ),
            ));
        }
        if !physical.tablespaces.is_empty() {
            let names: Vec<String> = physical
                .tablespaces
                .iter()
                .map(|(n, l)| format!("{n} ({l})"))
                .collect();
            return Err(fail(
                "tablespaces",
                format!(
                    "{} has tablespaces besides pg_default and pg_global: {}; a base backup streamed to the backup server carries the main data directory only, so none was taken. \
                     Back this node up with logical definitions (FULL / CLUSTER) until base backups of nodes with tablespaces are supported",
                    spec.node_label,
                    names.join(", ")
                ),
            ));
        }
        self.timed("connect", t);

        // staging
        let t = std::time::Instant::now();
        let io = |what: &str, p: &Path, e: std::io::Error| {
            fail("staging", format!("{what} {}: {e}", p.display()))
        };
        if std::fs::symlink_metadata(&spec.final_dir).is_ok() {
            return Err(fail(
                "staging",
                format!("{} already exists", spec.final_dir.display()),
            ));
        }
        set::create_private_dir_all(&spec.staging_root)
            .map_err(|e| io("cannot create", &spec.staging_root, e))?;
        if std::fs::symlink_metadata(staging).is_ok() {
            std::fs::remove_dir_all(staging).map_err(|e| io("cannot remove", staging, e))?;
        }
        set::create_private_dir(staging).map_err(|e| io("cannot create", staging, e))?;
        *guard = Some(StagingGuard::new(staging.to_path_buf()));
        let log_path = staging.join(LOG_FILE);
        let file =
            set::create_private_file(&log_path).map_err(|e| io("cannot create", &log_path, e))?;
        self.log = Arc::new(RunLog::new(Some(file)));
        self.log.event(&format!(
            "pgbackman {} job {} BASEBACKUP of {} (PostgreSQL {}, system identifier {}); client: {}",
            env!("CARGO_PKG_VERSION"),
            spec.job_id,
            spec.node_label,
            facts.version,
            physical.system_identifier,
            self.client_version.as_deref().unwrap_or("")
        ));
        self.timed("staging", t);

        // pg_basebackup → tar reader → zstd → base.tar.zst
        let t = std::time::Instant::now();
        let step = "pg_basebackup";
        let mut args = vec![
            "--pgdata=-".to_string(),
            "--format=tar".into(),
            format!("--wal-method={}", spec.wal_method.as_str()),
            "--manifest-checksums=SHA256".into(),
            format!("--checkpoint={}", spec.checkpoint),
            format!("--label=pgbackman job {}", spec.job_id),
            "--verbose".into(),
        ];
        if let Some(r) = &spec.max_rate {
            args.push(format!("--max-rate={r}"));
        }
        let cmd = ChildCommand::for_node(
            &spec.node,
            &spec.bin_dir,
            "pg_basebackup",
            &spec.application_name,
            args,
            Stdout::Pipe,
        );
        let argv = cmd.argv();
        self.command = argv.clone();
        self.log.event(&format!(
            "step {step}: {}",
            serde_json::to_string(&argv).unwrap_or_default()
        ));
        let (mut sup, out) = child::spawn(&cmd, &self.log)
            .map_err(|e| fail(step, format!("cannot start {}: {e}", cmd.program.display())))?;
        let Some(out) = out else {
            return Err(fail(step, "pg_basebackup has no stdout pipe"));
        };
        let fd = out
            .into_owned_fd()
            .map_err(|e| fail(step, format!("pipe: {e}")))?;
        let _ = nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_SETPIPE_SZ(1 << 20));
        let input = child::Counting {
            inner: std::fs::File::from(fd),
            activity: sup.activity(),
        };
        let written = Arc::new(AtomicU64::new(0));
        let (dest, level, w) = (
            staging.join(BASE_TAR_FILE),
            spec.zstd_level,
            Arc::clone(&written),
        );
        let reader = tokio::task::spawn_blocking(move || tap::tap(input, &dest, level, w));
        let stall = spec
            .node
            .timeouts
            .clone()
            .unwrap_or_default()
            .stall
            .map(|l| l.after);
        let w = Arc::clone(&written);
        let mut last = 0u64;
        let mut tick = move || {
            let now = w.load(Ordering::Relaxed);
            if now != last {
                last = now;
                progress(now);
            }
        };
        // A reader that fails (disk full, a broken tar) stops the child at once.
        let stop_child = self.cancel.child_token();
        tokio::pin!(reader);
        let mut read_result = None;
        let ended = {
            let wait = sup.wait_watched(
                &stop_child,
                self.bounds_deadline,
                stall,
                Duration::from_millis(200),
                &mut tick,
            );
            tokio::pin!(wait);
            loop {
                tokio::select! {
                    e = &mut wait => break e,
                    r = &mut reader, if read_result.is_none() => {
                        if !matches!(r, Ok(Ok(_))) {
                            stop_child.cancel();
                        }
                        read_result = Some(r);
                    }
                }
            }
        };
        let stderr_tail = sup.stderr_tail().await;
        let read_result = match read_result {
            Some(r) => r,
            None => reader.await,
        };
        let tapped = match read_result {
            Err(e) => return Err(fail("compress", format!("internal error: {e}"))),
            Ok(Err(tap::TapError::Stream(StreamError::Write(e)))) => {
                return Err(fail(
                    "write",
                    format!("writing {}: {e}", staging.join(BASE_TAR_FILE).display()),
                ));
            }
            Ok(Err(tap::TapError::Stream(StreamError::Compress(e)))) => {
                return Err(fail("compress", format!("zstd: {e}")));
            }
            Ok(Err(e)) if matches!(ended, Ok(Ended::Exited(s)) if s.success()) => {
                let message = match e {
                    tap::TapError::Tar(m) => {
                        format!("the output of pg_basebackup is not a readable tar: {m}")
                    }
                    tap::TapError::Stream(e) => {
                        format!("reading the output of pg_basebackup: {e:?}")
                    }
                };
                return Err(Stop::Failed {
                    step: step.into(),
                    exit_status: None,
                    message,
                    stderr_tail,
                });
            }
            // The child failed or was stopped: its end says why (below).
            Ok(Err(_)) => None,
            Ok(Ok(t)) => Some(t),
        };
        let status = match ended {
            Ok(Ended::Exited(status)) => status,
            Ok(Ended::Cancelled) => return Err(Stop::Cancelled { step: step.into() }),
            Ok(Ended::TimedOut) => {
                return Err(match self.bounds().timed_out(step) {
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
            Ok(Ended::Stalled) => {
                return Err(Stop::Failed {
                    step: step.into(),
                    exit_status: None,
                    message: format!(
                        "pg_basebackup stalled: no data from {} for the stall timeout; the base backup was stopped. Check the node (a checkpoint with --checkpoint spread can take long: raise [nodes] stall_timeout then)",
                        spec.node_label
                    ),
                    stderr_tail,
                });
            }
            Err(e) => return Err(fail(step, format!("waiting for pg_basebackup: {e}"))),
        };
        self.commands.push(ManifestCommand {
            step: step.into(),
            argv,
            exit_status: status.code(),
        });
        self.log.event(&format!("{step}: {status}"));
        if !status.success() {
            return Err(Stop::Failed {
                step: step.into(),
                exit_status: status.code(),
                message: match status.code() {
                    Some(c) => format!("pg_basebackup exited with status {c}"),
                    None => format!("pg_basebackup ended abnormally ({status})"),
                },
                stderr_tail,
            });
        }
        let Some(tapped) = tapped else {
            return Err(fail(
                step,
                "the output of pg_basebackup was not read to its end",
            ));
        };
        progress(tapped.stored.0);
        self.timed(step, t);

        // manifest check (in flight: the digests are already there)
        let check = tap::check_against_manifest(&tapped);
        self.log.event(&format!(
            "backup_manifest: {} ({} files matched{})",
            check.state,
            check.files_checked,
            check
                .detail
                .as_deref()
                .map(|d| format!("; {d}"))
                .unwrap_or_default()
        ));
        if check.state == "FAILED" {
            return Err(fail(
                "manifest_check",
                format!(
                    "the base backup of {} does not match its backup_manifest: {}; nothing was kept. Run it again; if it fails again, check the node's storage",
                    spec.node_label,
                    check.detail.unwrap_or_default()
                ),
            ));
        }
        let label_bytes = tapped.kept.get("backup_label").cloned().unwrap_or_default();
        let label = BackupLabel::parse(&String::from_utf8_lossy(&label_bytes))
            .map_err(|e| fail("manifest_check", e.to_string()))?;
        let stop_lsn = check
            .manifest
            .as_ref()
            .and_then(|m| m.wal_ranges.iter().map(|r| r.end).max())
            .ok_or_else(|| fail("manifest_check", "backup_manifest has no WAL-Ranges"))?;
        if let (Some(m), Ok(node_id)) = (
            check.manifest.as_ref().and_then(|m| m.system_identifier),
            physical.system_identifier.parse::<u64>(),
        ) && m != node_id
        {
            return Err(fail(
                "manifest_check",
                format!(
                    "backup_manifest names system identifier {m}, {} says {node_id}: not the same cluster",
                    spec.node_label
                ),
            ));
        }

        // the set's other files
        let t = std::time::Instant::now();
        let mut files = vec![FileEntry {
            name: BASE_TAR_FILE.into(),
            size: tapped.stored.0,
            sha256: tapped.stored.1.clone(),
        }];
        let manifest_bytes = tapped
            .kept
            .get("backup_manifest")
            .cloned()
            .unwrap_or_default();
        let dir = staging.to_path_buf();
        let written_files = self
            .bounds()
            .blocking("write", Arc::default(), move || {
                Ok::<_, std::io::Error>(vec![
                    set::write_private_file(&dir, BACKUP_MANIFEST_FILE, &manifest_bytes)?,
                    set::write_private_file(&dir, BACKUP_LABEL_FILE, &label_bytes)?,
                ])
            })
            .await?
            .map_err(|e| fail("write", format!("{}: {e}", staging.display())))?;
        files.extend(written_files);
        self.facts = Some(BaseBackupFacts {
            system_identifier: physical.system_identifier.clone(),
            timeline: label.timeline,
            start_lsn: label.start_lsn.to_string(),
            stop_lsn: stop_lsn.to_string(),
            start_wal_file: label.start_wal_file.clone(),
            start_time: self.started,
            stop_time: Utc::now(),
            seg_size: physical.seg_size,
            wal_method: spec.wal_method,
            tablespaces: Vec::new(),
            manifest_state: check.state.to_string(),
            manifest_detail: check.detail.clone(),
            files_checked: check.files_checked,
            tar_bytes: tapped.tar_bytes,
        });
        self.log.event(&format!(
            "start {} (timeline {}), stop {}; {} bytes of tar, {} stored",
            label.start_lsn, label.timeline, stop_lsn, tapped.tar_bytes, tapped.stored.0
        ));

        // backup.log closed, manifest.json
        let log_entry = self.bounds().close_log(&self.log, staging).await?;
        files.push(log_entry);
        files.sort_by(|a, b| a.name.cmp(&b.name));
        self.timed("manifest", t);
        let manifest = self.manifest(&files, &facts);
        let entry = self.bounds().write_manifest(staging, &manifest).await?;
        files.push(entry);

        // fsync, rename
        let t = std::time::Instant::now();
        self.bounds().fsync_staging(staging).await?;
        place_set(
            staging.to_path_buf(),
            spec.final_dir.clone(),
            spec.staging_root.clone(),
        )
        .await?;
        if let Some(g) = guard.as_mut() {
            g.disarm();
        }
        self.timed("rename", t);
        Ok(files)
    }

    fn manifest(&self, files: &[FileEntry], facts: &introspect::ServerFacts) -> Manifest {
        let spec = self.spec;
        Manifest {
            format: MANIFEST_FORMAT,
            pgbackman_version: env!("CARGO_PKG_VERSION").into(),
            job_id: spec.job_id,
            code: BackupCode::BaseBackup.to_string(),
            profile: spec.profile.to_string(),
            dbname: String::new(),
            node: spec.node_label.clone(),
            definition: spec.definition.clone(),
            dump_format: serde_json::json!({
                "kind": "tar", "compression": "zstd", "level": spec.zstd_level,
                "wal_method": spec.wal_method.as_str(), "base_backup": self.facts,
            }),
            dump_file: BASE_TAR_FILE.into(),
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
            role_list: Vec::new(),
            role_name_bytes: Default::default(),
            role_passwords: "not applicable: a base backup holds the cluster's files".into(),
            database_size: None,
            table_row_counts: None,
            notes: Vec::new(),
            started: self.started,
            finished: Utc::now(),
            encryption: None,
        }
    }
}
