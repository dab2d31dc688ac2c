//! Verification levels of a backup set and restore drills.
//!
//! | level | check | cost |
//! |---|---|---|
//! | 1 | every file matches the manifest's size and sha256, nothing else is in the set, and the manifest matches the sha256 the catalog recorded (when given) | one read of the set |
//! | 2 | the archive's table of contents parses: `pg_restore --list` fed from in-process zstd decoding (custom format; pg_restore stops reading after the TOC) or on `dump.dir`; SQL sets (CLUSTER, GLOBALS): the zstd stream decodes to its end with its content checksum | the head of the dump |
//! | 3 | a restore drill ([`run_drill`]): level 1, then the set restored into a scratch database on a drill node, the row count of every table compared with the counts taken at backup time, the scratch database dropped | a restore |
//!
//! Levels 1 and 2 run after every backup ([`crate::run_backup`] puts a [`Verification`] in the
//! outcome) and on demand; level 1 is also the gate a restore calls before touching a target
//! ([`crate::verify_set`]).
//!
//! A drill restores the set exactly as a restore does ([`crate::restore_set`]: roles.sql with
//! the missing roles, database.sql under the scratch name, pg_restore), so its duration is a
//! measured restore time of the database. Afterwards the scratch database and the roles the
//! restore had to create are dropped: a drill leaves the drill node as it found it.

use std::collections::BTreeMap;
use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use chrono::{DateTime, Utc};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio_util::sync::CancellationToken;

use crate::child::{GRACE, TAIL_LINES};
use crate::restore::source::Source;
use crate::restore::{Decompression, RestoreSpec, RolePolicy, restore_set};

mod repository;
use crate::run::ENV_REMOVED;
use crate::set::{MANIFEST_FILE, Manifest, verify_set_with};
use crate::spec::{NodeConn, RowCountSource, Status, TableRowCounts};
pub(crate) use repository::after_upload;
pub use repository::verify_levels_in;

/// Whether a verification passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum VerifyState {
    /// Every check of the level passed.
    Passed,
    /// A check failed: the set is damaged or cannot be read.
    Failed,
}

/// The result of verification levels 1 and 2.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verification {
    /// The level reached: the failing level, or the highest level passed.
    pub level: u8,
    /// Passed or failed.
    pub state: VerifyState,
    /// Why it failed.
    pub error: Option<String>,
    /// Entries in the archive's table of contents (custom and directory format).
    pub toc_entries: Option<u64>,
    /// Seconds spent.
    pub seconds: f64,
}

impl Verification {
    fn failed(level: u8, error: String, t0: Instant) -> Verification {
        Verification {
            level,
            state: VerifyState::Failed,
            error: Some(error),
            toc_entries: None,
            seconds: t0.elapsed().as_secs_f64(),
        }
    }
}

/// Level 1 (blocking): [`crate::verify_set`], plus the manifest's own sha256 against the one the
/// catalog recorded when `manifest_sha256` is given (the manifest is the root of trust: it is
/// not listed in itself). Returns the manifest.
pub fn verify_checksums(
    dir: &Path,
    manifest_sha256: Option<&str>,
    abort: &AtomicBool,
) -> Result<Manifest, String> {
    if let Some(want) = manifest_sha256 {
        let path = dir.join(MANIFEST_FILE);
        let data = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let got = hex::encode(Sha256::digest(&data));
        if got != want {
            return Err(format!(
                "{}: sha256 {got}, the catalog recorded {want}",
                path.display()
            ));
        }
    }
    verify_set_with(dir, abort).map_err(|e| e.to_string())
}

/// Runs levels 1 and 2 on the set in `dir` with the client tools of `bin_dir` (pg_restore of a
/// major at least the dump's). None when cancelled. An encrypted set gets level 1 only (see
/// [`verify_levels_with`]).
pub async fn verify_levels(
    dir: &Path,
    bin_dir: &Path,
    manifest_sha256: Option<&str>,
    cancel: &CancellationToken,
) -> Option<Verification> {
    verify_levels_with(dir, bin_dir, manifest_sha256, &[], cancel).await
}

/// [`verify_levels`] with the identity files of an agent that may read encrypted sets
/// (crate::crypt, `[agent.encryption]`): level 2 of an encrypted set decrypts its dump with
/// them; without any, an encrypted set stops at level 1 (sha256 of the ciphertext), and an
/// identity that matches none of its keys fails level 2, naming the keys.
pub async fn verify_levels_with(
    dir: &Path,
    bin_dir: &Path,
    manifest_sha256: Option<&str>,
    identity_files: &[PathBuf],
    cancel: &CancellationToken,
) -> Option<Verification> {
    let (d, sha) = (dir.to_path_buf(), manifest_sha256.map(str::to_string));
    let level1 = move |a: &AtomicBool| verify_checksums(&d, sha.as_deref(), a);
    verify_levels_inner(dir, bin_dir, level1, identity_files, cancel).await
}

/// Levels 1 and 2 of a set this process has just written into `dir` (the backup itself):
/// level 1 takes the sha256 of the files in `written` as they were computed while their bytes
/// were written and fsynced, checking their sizes on disk (`set::verify_set_known`); every
/// other file is re-read. Level 2 runs as in [`verify_levels`].
pub(crate) async fn verify_after_backup(
    dir: &Path,
    bin_dir: &Path,
    written: Vec<crate::spec::FileEntry>,
    cancel: &CancellationToken,
) -> Option<Verification> {
    let d = dir.to_path_buf();
    let level1 = move |a: &AtomicBool| {
        crate::set::verify_set_known(&d, &written, a).map_err(|e| e.to_string())
    };
    verify_levels_inner(dir, bin_dir, level1, &[], cancel).await
}

async fn verify_levels_inner(
    dir: &Path,
    bin_dir: &Path,
    level1: impl FnOnce(&AtomicBool) -> Result<Manifest, String> + Send + 'static,
    identity_files: &[PathBuf],
    cancel: &CancellationToken,
) -> Option<Verification> {
    let t0 = Instant::now();
    let abort = Arc::new(AtomicBool::new(false));
    let a = Arc::clone(&abort);
    let level1 = tokio::task::spawn_blocking(move || level1(&a));
    // Level 2 reads the head of the dump while level 1 hashes the whole set: both always run,
    // and a level 1 failure wins, as when they ran one after the other. Level 2 reads the
    // manifest itself; level 1 proves (sha256 against the catalog) that it is the right one.
    let encrypted = AtomicBool::new(false);
    let level2 = async {
        match crate::set::read_manifest(dir) {
            // An encrypted set (crate::crypt): level 2 needs an identity, and the agents that
            // verify hold none; level 1 (sha256 of the ciphertext) is what they can prove.
            Ok(m) if m.encryption.is_some() && identity_files.is_empty() => {
                encrypted.store(true, Ordering::Relaxed);
                Some(Ok(None))
            }
            Ok(m) if m.encryption.is_some() => {
                let (d, m2, f) = (dir.to_path_buf(), m.clone(), identity_files.to_vec());
                match tokio::task::spawn_blocking(move || {
                    crate::crypt::identities_for_set(&d, &m2, &f)
                })
                .await
                {
                    Ok(Ok(ids)) => Some(
                        check_archive(
                            &Source::Dir(dir.to_path_buf()),
                            &m,
                            bin_dir,
                            Some(Arc::new(ids)),
                            cancel,
                        )
                        .await,
                    ),
                    Ok(Err(e)) => Some(Err(ToolError::failed(e))),
                    Err(e) => Some(Err(ToolError::failed(format!("internal error: {e}")))),
                }
            }
            Ok(m) => Some(
                check_archive(&Source::Dir(dir.to_path_buf()), &m, bin_dir, None, cancel).await,
            ),
            // Level 1 reports an unreadable manifest.
            Err(_) => None,
        }
    };
    let (level1, level2) = tokio::select! {
        r = async { tokio::join!(level1, level2) } => r,
        () = cancel.cancelled() => {
            abort.store(true, Ordering::Relaxed);
            return None;
        }
    };
    match level1 {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return Some(Verification::failed(1, e, t0)),
        Err(e) => return Some(Verification::failed(1, format!("internal error: {e}"), t0)),
    }
    if encrypted.load(Ordering::Relaxed) {
        return Some(Verification {
            level: 1,
            state: VerifyState::Passed,
            error: None,
            toc_entries: None,
            seconds: t0.elapsed().as_secs_f64(),
        });
    }
    let level2 = level2.unwrap_or_else(|| {
        Err(ToolError::failed(
            "the manifest changed during verification",
        ))
    });
    match level2 {
        Ok(toc_entries) => Some(Verification {
            level: 2,
            state: VerifyState::Passed,
            error: None,
            toc_entries,
            seconds: t0.elapsed().as_secs_f64(),
        }),
        Err(ToolError::Cancelled) => None,
        Err(ToolError::Failed {
            message,
            stderr_tail,
        }) => {
            // pg_restore's own words say what is wrong with the archive.
            let why = stderr_tail.lines().last().unwrap_or_default().trim();
            let message = if why.is_empty() {
                message
            } else {
                format!("{message}: {why}")
            };
            Some(Verification::failed(2, message, t0))
        }
    }
}

/// How the main dump of a set is stored, from its manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DumpKind {
    /// `dump.pgdump.zst`: pg_dump custom format through zstd.
    Custom,
    /// `dump.dir`: pg_dump directory format.
    Directory,
    /// `cluster.sql.zst` / `globals.sql.zst`: SQL text through zstd.
    Sql,
}

fn dump_kind(m: &Manifest) -> Result<DumpKind, String> {
    let name = m.dump_file.as_str();
    if name.is_empty()
        || !Path::new(name)
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)))
    {
        return Err(format!("the manifest names no valid dump file ({name:?})"));
    }
    match m.dump_format.get("kind").and_then(|k| k.as_str()) {
        Some("custom") => Ok(DumpKind::Custom),
        Some("directory") => Ok(DumpKind::Directory),
        Some("sql") => Ok(DumpKind::Sql),
        // A base backup's tar through zstd: level 2 decodes the stream to its end (checksum).
        Some("tar") => Ok(DumpKind::Sql),
        other => Err(format!("unknown dump format {other:?} in the manifest")),
    }
}

/// Opens the bytes of one file of a set as stored (on a blocking thread).
type Opener = Box<dyn FnOnce() -> io::Result<Box<dyn Read + Send>> + Send>;

/// The opener of the dump of `m` in `source`.
fn dump_opener(source: &Source, m: &Manifest) -> Opener {
    let entry = m
        .files
        .iter()
        .find(|f| f.name == m.dump_file)
        .cloned()
        .unwrap_or_else(|| crate::spec::FileEntry {
            name: m.dump_file.clone(),
            size: 0,
            sha256: String::new(),
        });
    let s = source.clone();
    Box::new(move || s.open(&entry))
}

/// Level 2. Returns the number of TOC entries (None for SQL sets).
async fn check_archive(
    source: &Source,
    m: &Manifest,
    bin_dir: &Path,
    ids: Option<Arc<crate::crypt::Identities>>,
    cancel: &CancellationToken,
) -> Result<Option<u64>, ToolError> {
    let kind = dump_kind(m).map_err(ToolError::failed)?;
    let what = source.describe(&m.dump_file);
    let tool = |args: Vec<String>| Tool {
        program: bin_dir.join("pg_restore"),
        args,
        env: Vec::new(),
        ids: ids.clone(),
    };
    let out = match (kind, source) {
        (DumpKind::Custom, _) => {
            tool(vec!["--list".into()])
                .run(Some(dump_opener(source, m)), true, cancel)
                .await?
        }
        (DumpKind::Directory, Source::Dir(dir)) => {
            tool(vec![
                "--list".into(),
                dir.join(&m.dump_file).display().to_string(),
            ])
            .run(None, true, cancel)
            .await?
        }
        (DumpKind::Directory, Source::Repository { .. }) => {
            return repository::directory_toc(source, m, bin_dir, cancel).await;
        }
        (DumpKind::Sql, _) => {
            let abort = Arc::new(AtomicBool::new(false));
            let (o, a, i) = (dump_opener(source, m), Arc::clone(&abort), ids.clone());
            let name = m.dump_file.clone();
            let h = tokio::task::spawn_blocking(move || {
                decode_to_end(crate::crypt::plain(o()?, i.as_deref(), &name)?, &a)
            });
            return tokio::select! {
                r = h => match r {
                    Ok(Ok(_)) => Ok(None),
                    Ok(Err(e)) => Err(ToolError::failed(format!("{what}: zstd: {e}"))),
                    Err(e) => Err(ToolError::failed(format!("internal error: {e}"))),
                },
                () = cancel.cancelled() => {
                    abort.store(true, Ordering::Relaxed);
                    Err(ToolError::Cancelled)
                }
            };
        }
    };
    toc_entries(&out)
}

/// The entries `pg_restore --list` printed.
fn toc_entries(out: &ToolOutput) -> Result<Option<u64>, ToolError> {
    let entries = out
        .stdout
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with(';'))
        .count() as u64;
    // An empty database has no listed entry (PostgreSQL 15 does not dump schema public), so the
    // proof that the table of contents parsed is pg_restore's own header of it.
    if entries == 0 && !out.stdout.contains("TOC Entries:") {
        return Err(ToolError::failed(
            "pg_restore --list printed no table of contents",
        ));
    }
    Ok(Some(entries))
}

/// Decodes a zstd file to its end (the frame checksums are checked by the decoder).
fn decode_to_end(src: impl Read, abort: &AtomicBool) -> io::Result<u64> {
    let mut d = zstd::stream::read::Decoder::new(src)?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        if abort.load(Ordering::Relaxed) {
            return Err(io::Error::new(io::ErrorKind::Interrupted, "stopped"));
        }
        match d.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => total += n as u64,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Why a tool run did not succeed.
#[derive(Debug)]
enum ToolError {
    Cancelled,
    Failed {
        message: String,
        stderr_tail: String,
    },
}

impl ToolError {
    fn failed(message: impl Into<String>) -> ToolError {
        ToolError::Failed {
            message: message.into(),
            stderr_tail: String::new(),
        }
    }
}

struct ToolOutput {
    stdout: String,
}

/// A client tool run as a supervised child: argv only, its own process group (killed as a group
/// on cancel and when dropped), connection variables removed from its environment.
struct Tool {
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    /// The stdin file is encrypted: read through these identities (crate::crypt).
    ids: Option<Arc<crate::crypt::Identities>>,
}

impl Tool {
    /// Runs the tool; `zstd_stdin` is decoded in-process and fed to its stdin (a tool that stops
    /// reading early, like `pg_restore --list`, is fine).
    async fn run(
        &self,
        zstd_stdin: Option<Opener>,
        capture_stdout: bool,
        cancel: &CancellationToken,
    ) -> Result<ToolOutput, ToolError> {
        let name = self
            .program
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        // Through the launcher, like the executor's other children: a SIGKILLed agent must not
        // leave a pg_restore --list (or a drill's restore) behind.
        let mut c = crate::launcher::command(&self.program);
        c.args(&self.args)
            .stdin(if zstd_stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(if capture_stdout {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        for k in ENV_REMOVED {
            c.env_remove(k);
        }
        for (k, v) in &self.env {
            c.env(k, v);
        }
        let mut child = c.spawn().map_err(|e| {
            ToolError::failed(format!("cannot start {}: {e}", self.program.display()))
        })?;
        let group = GroupKill(
            child
                .id()
                .and_then(|id| i32::try_from(id).ok())
                .map(Pid::from_raw),
        );
        let feeder = match (zstd_stdin, child.stdin.take()) {
            (Some(open), Some(stdin)) => {
                let fd = stdin
                    .into_owned_fd()
                    .map_err(|e| ToolError::failed(format!("pipe: {e}")))?;
                let ids = self.ids.clone();
                Some(tokio::task::spawn_blocking(move || {
                    let src = open()
                        .and_then(|r| crate::crypt::plain(r, ids.as_deref(), "the dump"))
                        .map_err(|e| e.to_string())?;
                    feed_zstd(src, File::from(fd))
                }))
            }
            _ => None,
        };
        let stdout = child.stdout.take().map(|s| tokio::spawn(read_all(s)));
        let stderr = child.stderr.take().map(|s| tokio::spawn(tail(s)));
        let status = tokio::select! {
            s = child.wait() => s.map_err(|e| ToolError::failed(format!("waiting for {name}: {e}")))?,
            () = cancel.cancelled() => {
                group.signal(Signal::SIGTERM);
                if tokio::time::timeout(GRACE, child.wait()).await.is_err() {
                    group.signal(Signal::SIGKILL);
                    let _ = child.wait().await;
                }
                return Err(ToolError::Cancelled);
            }
        };
        group.signal(Signal::SIGKILL);
        let stderr_tail = match stderr {
            Some(h) => tokio::time::timeout(GRACE, h)
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default(),
            None => String::new(),
        };
        let stdout = match stdout {
            Some(h) => h.await.unwrap_or_default(),
            None => String::new(),
        };
        let fed = match feeder {
            Some(h) => h
                .await
                .unwrap_or_else(|e| Err(format!("internal error: {e}"))),
            None => Ok(()),
        };
        if !status.success() {
            let mut message = match status.code() {
                Some(c) => format!("{name} exited with status {c}"),
                None => format!("{name} ended abnormally ({status})"),
            };
            if let Err(e) = fed {
                message.push_str(&format!(" (reading the dump: {e})"));
            }
            return Err(ToolError::Failed {
                message,
                stderr_tail,
            });
        }
        // The tool succeeded: a feeder stopped by a closed pipe only means it had read enough.
        Ok(ToolOutput { stdout })
    }
}

/// Decodes `path` (zstd) into the child's stdin. A closed pipe ends it quietly: the child may
/// stop reading once it has what it needs.
fn feed_zstd(src: impl Read, mut to: File) -> Result<(), String> {
    let mut d = zstd::stream::read::Decoder::new(src).map_err(|e| format!("zstd: {e}"))?;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = match d.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("zstd: {e}")),
        };
        match to.write_all(&buf[..n]) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(()),
            Err(e) => return Err(format!("writing to the child: {e}")),
        }
    }
}

async fn read_all(mut r: impl AsyncRead + Unpin) -> String {
    let mut v = Vec::new();
    let _ = tokio::io::AsyncReadExt::read_to_end(&mut r, &mut v).await;
    String::from_utf8_lossy(&v).into_owned()
}

async fn tail(r: impl AsyncRead + Unpin) -> String {
    let mut lines = BufReader::new(r).lines();
    let mut t: VecDeque<String> = VecDeque::new();
    while let Ok(Some(l)) = lines.next_line().await {
        if t.len() == TAIL_LINES {
            t.pop_front();
        }
        t.push_back(l);
    }
    Vec::from(t).join("\n")
}

/// Kills the child's process group when dropped.
struct GroupKill(Option<Pid>);

impl GroupKill {
    fn signal(&self, sig: Signal) {
        if let Some(p) = self.0 {
            let _ = killpg(p, sig);
        }
    }
}

impl Drop for GroupKill {
    fn drop(&mut self) {
        self.signal(Signal::SIGKILL);
    }
}

// ---- restore drills ---------------------------------------------------------------------------

/// One restore drill: everything [`run_drill`] needs, nothing from the catalog.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrillSpec {
    /// The job (for logs).
    pub job_id: i64,
    /// The backup set; ignored when `repository` is set.
    pub set_dir: PathBuf,
    /// A set stored in a repository ([`RestoreSpec::repository`]).
    #[serde(skip)]
    pub repository: Option<crate::restore::RepositorySet>,
    /// Client tools: pg_restore of a major at least the dump's and the drill node's.
    pub bin_dir: PathBuf,
    /// The drill node.
    pub node: NodeConn,
    /// The drill node as people know it.
    pub node_label: String,
    /// The scratch database: created, restored into, dropped. Must not exist.
    pub scratch_dbname: String,
    /// `application_name` of every connection.
    pub application_name: String,
    /// pg_restore `--jobs` (directory dumps, and custom dumps decoded to a file first).
    pub jobs: u32,
    /// Staging area of the restore (a custom dump may be decoded there for `--jobs`).
    pub staging_root: PathBuf,
    /// The row counts taken at backup time, as the catalog recorded them; None: the manifest's.
    pub expected_counts: Option<TableRowCounts>,
    /// The manifest's sha256 as the catalog recorded it (level 1).
    pub manifest_sha256: Option<String>,
    /// The journal of the drill's restore ([`crate::RestoreSpec::journal`]): a drill cut short
    /// by the death of its process has its scratch database and the roles it created removed at
    /// the next start.
    #[serde(default)]
    pub journal: Option<crate::Journal>,
    /// Identity files for an encrypted set (the drill server's `[agent.encryption]
    /// identity_files`, the operator's choice to trust that server); see crate::crypt.
    #[serde(default)]
    pub identity_files: Vec<PathBuf>,
}

/// How a drill ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DrillState {
    /// Restored, and every counted table has the rows it had at backup time.
    Passed,
    /// The set is damaged, does not restore, or its row counts differ: a finding about the backup.
    Failed,
    /// The drill could not run (drill node unreachable, scratch database not created): says
    /// nothing about the backup.
    Error,
    /// Cancelled.
    Cancelled,
}

/// A table whose rows differ after the restore.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RowMismatch {
    /// `schema.table`, quoted like `quote_ident`.
    pub table: String,
    /// Rows at backup time.
    pub expected: i64,
    /// Rows after the restore; None when the table is missing.
    pub restored: Option<i64>,
}

/// The row count comparison of a drill.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RowCheck {
    /// Tables compared.
    pub compared: usize,
    /// Tables that differ (all of them).
    pub mismatches: Vec<RowMismatch>,
}

/// The result of [`run_drill`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrillOutcome {
    /// How it ended.
    pub state: DrillState,
    /// The level reached: 1 when the checksums failed, else 3.
    pub level: u8,
    /// The failing step: `verify`, `row_counts`, or the step of the restore executor that
    /// failed (`connect`, `check`, `roles`, `database`, `pg_restore`, ...).
    pub step: Option<String>,
    /// What went wrong, in one line.
    pub message: Option<String>,
    /// The last lines of pg_restore's stderr.
    pub stderr_tail: Option<String>,
    /// Start.
    pub started: DateTime<Utc>,
    /// End (after the scratch database was dropped).
    pub finished: DateTime<Utc>,
    /// Seconds of the restore itself (roles, database, pg_restore, as a real restore runs
    /// them): a measured restore time of the database.
    pub restore_seconds: Option<f64>,
    /// How the dump reached pg_restore (`stream`, `file`, `directory`) and with how many jobs.
    pub feed: Option<String>,
    /// `pg_database_size` of the restored scratch database.
    pub restored_size: Option<i64>,
    /// Roles the restore had to create on the drill node (dropped again with the scratch
    /// database).
    pub roles_created: Vec<String>,
    /// The comparison; None when no exact counts exist (SCHEMA backups, estimates).
    pub row_counts: Option<RowCheck>,
    /// Whether the scratch database is gone (false: it must be dropped by hand).
    pub scratch_dropped: bool,
    /// Notes (why counts were not compared, a failed drop).
    pub notes: Vec<String>,
}

/// Compares row counts at backup time with the restored ones. Tables missing after the restore
/// count as mismatches; tables only in the restore are not compared (they could not be counted
/// at backup time).
pub fn compare_row_counts(
    expected: &BTreeMap<String, i64>,
    restored: &BTreeMap<String, i64>,
) -> RowCheck {
    let mismatches = expected
        .iter()
        .filter_map(|(t, &e)| match restored.get(t) {
            Some(&r) if r == e => None,
            r => Some(RowMismatch {
                table: t.clone(),
                expected: e,
                restored: r.copied(),
            }),
        })
        .collect();
    RowCheck {
        compared: expected.len(),
        mismatches,
    }
}

/// One-line summary of mismatches (the first few).
fn mismatch_summary(c: &RowCheck) -> String {
    let shown: Vec<String> = c
        .mismatches
        .iter()
        .take(5)
        .map(|m| match m.restored {
            Some(r) => format!(
                "{}: {} rows at backup time, {r} restored",
                m.table, m.expected
            ),
            None => format!(
                "{}: {} rows at backup time, table missing after the restore",
                m.table, m.expected
            ),
        })
        .collect();
    let more = c.mismatches.len().saturating_sub(shown.len());
    format!(
        "row counts differ in {} of {} table(s): {}{}",
        c.mismatches.len(),
        c.compared,
        shown.join("; "),
        if more > 0 {
            format!("; and {more} more")
        } else {
            String::new()
        }
    )
}

struct Stop {
    state: DrillState,
    step: String,
    message: String,
    stderr_tail: Option<String>,
}

fn stop(state: DrillState, step: &str, message: impl Into<String>) -> Stop {
    Stop {
        state,
        step: step.to_string(),
        message: message.into(),
        stderr_tail: None,
    }
}

/// Runs a restore drill. Never fails: the outcome says how it ended. After a restore the
/// scratch database and the roles the restore created are dropped whatever happens (a failed
/// restore is undone by the restore executor itself).
pub async fn run_drill(spec: &DrillSpec, cancel: CancellationToken) -> DrillOutcome {
    let started = Utc::now();
    let mut out = DrillOutcome {
        state: DrillState::Passed,
        level: 3,
        step: None,
        message: None,
        stderr_tail: None,
        started,
        finished: started,
        restore_seconds: None,
        feed: None,
        restored_size: None,
        roles_created: Vec::new(),
        row_counts: None,
        scratch_dropped: true,
        notes: Vec::new(),
    };
    tracing::info!(job_id = spec.job_id, set = %Source::new(&spec.set_dir, spec.repository.as_ref()).label(), node = %spec.node_label, scratch = %spec.scratch_dbname, "restore drill started");
    let mut restored = false;
    let r = drill_steps(spec, &cancel, &mut out, &mut restored).await;
    if restored && let Err(e) = drop_scratch(spec, &out.roles_created).await {
        out.scratch_dropped = false;
        out.notes.push(format!(
                "cleaning up the drill node {} failed: {e}; drop the database {:?} (and the roles {:?}) by hand",
                spec.node_label, spec.scratch_dbname, out.roles_created
            ));
    }
    if let Err(s) = r {
        if s.step == "verify" {
            out.level = 1;
        }
        out.state = s.state;
        out.step = Some(s.step);
        out.message = Some(s.message);
        out.stderr_tail = s.stderr_tail;
    }
    out.finished = Utc::now();
    let state = match out.state {
        DrillState::Passed => "PASSED",
        DrillState::Failed => "FAILED",
        DrillState::Error => "ERROR",
        DrillState::Cancelled => "CANCELLED",
    };
    tracing::info!(
        job_id = spec.job_id,
        state,
        message = out.message.as_deref().unwrap_or(""),
        restore_time = %out
            .restore_seconds
            .map_or_else(|| "-".to_string(), pgbackman_core::duration::human_secs),
        "restore drill ended"
    );
    out
}

/// Steps of the restore executor whose failure says the set does not restore; any other step
/// (connect, client, check, staging, ...) failing is a problem of the drill node or of the
/// backup server.
const RESTORE_FINDINGS: &[&str] = &[
    "manifest",
    "roles",
    "database",
    "decompress",
    "pg_restore",
    "psql",
];

async fn drill_steps(
    spec: &DrillSpec,
    cancel: &CancellationToken,
    out: &mut DrillOutcome,
    restored: &mut bool,
) -> Result<(), Stop> {
    let cancelled = |step: &str| stop(DrillState::Cancelled, step, "cancelled");
    // Level 1 first, against the manifest's sha256 from the catalog: a damaged set is never
    // restored.
    // From a repository: the manifest here; the restore checks every object against it as it
    // reads them (a mismatch is then a level 1 failure too).
    let manifest = match &spec.repository {
        Some(repo) => {
            repository::checked_manifest(repo, spec.manifest_sha256.as_deref(), cancel).await?
        }
        None => {
            let abort = Arc::new(AtomicBool::new(false));
            let (d, a, sha) = (
                spec.set_dir.clone(),
                Arc::clone(&abort),
                spec.manifest_sha256.clone(),
            );
            let h = tokio::task::spawn_blocking(move || verify_checksums(&d, sha.as_deref(), &a));
            tokio::select! {
                r = h => r.map_err(|e| stop(DrillState::Error, "verify", format!("internal error: {e}")))?
                    .map_err(|e| stop(DrillState::Failed, "verify", e))?,
                () = cancel.cancelled() => {
                    abort.store(true, Ordering::Relaxed);
                    return Err(cancelled("verify"));
                }
            }
        }
    };
    let label = Source::new(&spec.set_dir, spec.repository.as_ref()).label();
    let kind = dump_kind(&manifest).map_err(|e| stop(DrillState::Failed, "verify", e))?;
    if kind == DumpKind::Sql {
        return Err(stop(
            DrillState::Error,
            "verify",
            format!(
                "{label} is a {} set: drills restore one database",
                manifest.code
            ),
        ));
    }

    // The restore, exactly as a restore job runs it (roles.sql, database.sql, pg_restore), into
    // the scratch database. The executor refuses an existing database and undoes a failure.
    let rspec = RestoreSpec {
        job_id: spec.job_id,
        set_dir: spec.set_dir.clone(),
        repository: spec.repository.clone(),
        node: spec.node.clone(),
        node_label: spec.node_label.clone(),
        target_dbname: spec.scratch_dbname.clone(),
        rename_existing_to: None,
        roles: RolePolicy::CreateMissing,
        jobs: spec.jobs.max(1),
        decompression: Decompression::Auto,
        extra_args: Vec::new(),
        bin_dir: spec.bin_dir.clone(),
        staging_root: spec.staging_root.clone(),
        log_file: None,
        application_name: spec.application_name.clone(),
        max_runtime: None,
        acknowledge_nonempty: false,
        // Done above, against the catalog's sha256 of the manifest too.
        verify_checksums: false,
        // Compared below, against the counts the catalog recorded.
        compare_row_counts: false,
        journal: spec.journal.clone(),
        identity_files: spec.identity_files.clone(),
    };
    let t = Instant::now();
    let r = restore_set(&rspec, cancel.clone(), &|_| {}).await;
    out.roles_created = r.roles_created.clone();
    out.feed = r.feed.as_ref().map(|f| format!("{f} -j {}", r.jobs));
    out.restored_size = r.restored_size;
    out.notes.extend(r.notes.iter().cloned());
    match r.status {
        Status::Succeeded => {
            *restored = true;
            out.restore_seconds = Some(t.elapsed().as_secs_f64());
        }
        Status::Cancelled { .. } => return Err(cancelled("restore")),
        Status::Failed {
            step,
            message,
            stderr_tail,
            ..
        } => {
            if !r.cleanup.is_empty() {
                out.notes.push(format!(
                    "undone on the drill node: {}",
                    r.cleanup.join("; ")
                ));
            }
            // Bytes other than the manifest's, found while the restore read them: level 1.
            if let Some(e) = &r.checksums_failed {
                return Err(Stop {
                    state: DrillState::Failed,
                    step: "verify".into(),
                    message: e.clone(),
                    stderr_tail: Some(stderr_tail),
                });
            }
            let state = if RESTORE_FINDINGS.contains(&step.as_str()) {
                DrillState::Failed
            } else {
                DrillState::Error
            };
            return Err(Stop {
                state,
                step: step.clone(),
                message: format!(
                    "restoring into {:?} on {} failed at step {step}: {message}",
                    spec.scratch_dbname, spec.node_label
                ),
                stderr_tail: Some(stderr_tail),
            });
        }
    }

    // Row counts against the ones taken at backup time.
    let expected = spec
        .expected_counts
        .as_ref()
        .or(manifest.table_row_counts.as_ref());
    let Some(expected) = expected else {
        out.notes.push(format!(
            "no row counts were taken at backup time ({} backup): the restore was checked only",
            manifest.code
        ));
        return Ok(());
    };
    if expected.source != RowCountSource::Snapshot {
        out.notes
            .push("the row counts of the backup are planner estimates: not compared".into());
        return Ok(());
    }
    let (session, _) = tokio::select! {
        r = crate::node::connect(&spec.node, &spec.scratch_dbname, &spec.application_name, None) => r
            .map_err(|e| stop(DrillState::Error, "row_counts", format!("cannot connect to the scratch database: {e}")))?,
        () = cancel.cancelled() => return Err(cancelled("row_counts")),
    };
    let counted = tokio::select! {
        r = pgbackman_db::verify::count_all_tables(&session.client, crate::node::table_key) => r
            .map_err(|e| stop(DrillState::Error, "row_counts", e))?,
        () = cancel.cancelled() => return Err(cancelled("row_counts")),
    };
    drop(session);
    let (restored_counts, skipped) = counted;
    for s in skipped {
        out.notes.push(format!("row count skipped: {s}"));
    }
    let check = compare_row_counts(&expected.tables, &restored_counts);
    let failed = !check.mismatches.is_empty();
    let summary = mismatch_summary(&check);
    out.row_counts = Some(check);
    if failed {
        return Err(stop(DrillState::Failed, "row_counts", summary));
    }
    Ok(())
}

/// Drops the scratch database, then the roles the restore created (bounded: a drill node that
/// stopped answering does not hang the job).
async fn drop_scratch(spec: &DrillSpec, roles: &[String]) -> Result<(), String> {
    use pgbackman_db::restore::target::{drop_database, drop_role};
    let work = async {
        let (session, _) = crate::node::connect(
            &spec.node,
            &spec.node.admin_dbname,
            &spec.application_name,
            None,
        )
        .await?;
        drop_database(&session.client, &spec.scratch_dbname, true).await?;
        let mut failed = Vec::new();
        for r in roles {
            if let Err(e) = drop_role(&session.client, r).await {
                failed.push(format!("role {r:?}: {e}"));
            }
        }
        if failed.is_empty() {
            Ok(())
        } else {
            Err(failed.join("; "))
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(120), work)
        .await
        .map_err(|_| "timed out after 120 s".to_string())?
}

/// The name of a drill's scratch database: unique per backup and job, recognisable on the node.
pub fn scratch_dbname(bck_id: i64, job_id: i64) -> String {
    format!("pgbackman_drill_b{bck_id}_j{job_id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_count_comparison() {
        let e: BTreeMap<String, i64> = [
            ("a".to_string(), 3),
            ("b".to_string(), 0),
            ("c".to_string(), 7),
        ]
        .into();
        let r: BTreeMap<String, i64> = [
            ("a".to_string(), 3),
            ("b".to_string(), 0),
            ("c".to_string(), 7),
            ("x".to_string(), 1),
        ]
        .into();
        assert_eq!(
            compare_row_counts(&e, &r),
            RowCheck {
                compared: 3,
                mismatches: vec![]
            }
        );
        let r2: BTreeMap<String, i64> = [("a".to_string(), 4), ("b".to_string(), 0)].into();
        let c = compare_row_counts(&e, &r2);
        assert_eq!(
            c.mismatches,
            vec![
                RowMismatch {
                    table: "a".into(),
                    expected: 3,
                    restored: Some(4)
                },
                RowMismatch {
                    table: "c".into(),
                    expected: 7,
                    restored: None
                },
            ]
        );
        let s = mismatch_summary(&c);
        assert!(
            s.starts_with(
                "row counts differ in 2 of 3 table(s): a: 3 rows at backup time, 4 restored"
            ),
            "{s}"
        );
        assert!(s.contains("c: 7 rows at backup time, table missing"), "{s}");
    }

    #[test]
    fn scratch_names_are_plain_identifiers() {
        let n = scratch_dbname(12, 345);
        assert_eq!(n, "pgbackman_drill_b12_j345");
        assert!(n.len() < 63);
    }

    #[test]
    fn feeding_stops_quietly_when_the_reader_leaves() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.zst");
        let data = vec![7u8; 4 << 20];
        std::fs::write(&p, zstd::encode_all(&data[..], 3).unwrap()).unwrap();
        let (r, w) = std::io::pipe().unwrap();
        drop(r);
        let w: std::os::fd::OwnedFd = w.into();
        assert_eq!(feed_zstd(File::open(&p).unwrap(), File::from(w)), Ok(()));
    }
}
