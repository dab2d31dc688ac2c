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

mod drill;
mod repository;
mod tool;
use crate::run::ENV_REMOVED;
use crate::set::{MANIFEST_FILE, Manifest, verify_set_with};
use crate::spec::{NodeConn, RowCountSource, Status, TableRowCounts};
pub use drill::*;
pub(crate) use repository::after_upload;
pub use repository::verify_levels_in;
use tool::*;

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
